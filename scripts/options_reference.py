"""Print the README's configuration reference (a markdown table) from the Config dataclass.

.venv/bin/python scripts/options_reference.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mnist_dist.config import FIELDS  # noqa: E402


def main() -> None:
    print("| flag | YAML key | default | meaning |")
    print("| --- | --- | --- | --- |")
    for name, spec in FIELDS.items():
        default = spec.default
        shown = (
            str(default).lower()
            if isinstance(default, bool)
            else repr(default)
            if isinstance(default, str)
            else str(default)
        )
        flag = "--" + name.replace("_", "-")
        if spec.type is bool:
            flag += " / --no-" + name.replace("_", "-")
        print(f"| `{flag}` | `{name}` | `{shown}` | {spec.metadata['help']} |")


if __name__ == "__main__":
    main()
