"""Print the README's configuration reference (markdown tables, one per --help group) from the Config dataclass.

.venv/bin/python scripts/options_reference.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mnist_dist.cli import OPTION_GROUPS  # noqa: E402
from mnist_dist.config import CHOICES, FIELDS  # noqa: E402


def row(name: str) -> str:
    spec = FIELDS[name]
    default = spec.default
    shown = (
        str(default).lower() if isinstance(default, bool) else repr(default) if isinstance(default, str) else default
    )
    flag = "--" + name.replace("_", "-")
    if spec.type is bool:
        flag += " / --no-" + name.replace("_", "-")
    meaning = spec.metadata["help"]
    if name in CHOICES:  # --help shows them as {a,b,...}; the help text itself does not repeat them
        meaning += "; one of " + ", ".join(f"`{choice}`" for choice in CHOICES[name])
    return f"| `{flag}` | `{name}` | `{shown}` | {meaning} |"


def main() -> None:
    for group in OPTION_GROUPS:
        print(f"**{group.title}**: {group.about}\n")
        print("| flag | YAML key | default | meaning |")
        print("| --- | --- | --- | --- |")
        for name in group.names:
            print(row(name))
        print()


if __name__ == "__main__":
    main()
