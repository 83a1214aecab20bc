"""The command line and YAML files of train.py: defaults < `--config FILE` < flags, one-line errors.

No torch import here either: `python train.py --help` answers at once.
"""

import argparse
from pathlib import Path
from typing import Any

import yaml

from mnist_dist.config import FIELDS, Config, check_known, make_config
from mnist_dist.errors import ConfigError, UserError, did_you_mean


class DuplicateKey(yaml.YAMLError):
    """A mapping that sets the same key twice (PyYAML would keep the last one silently)."""


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, refusing a mapping that sets one key twice."""

    def construct_mapping(self, node, deep=False):
        lines = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if isinstance(key, (str, int, float, bool)) and key in lines:
                raise DuplicateKey(f"{key!r} twice (lines {lines[key]} and {line})")
            lines[key] = line
        return super().construct_mapping(node, deep)


def read_yaml_mapping(path: Path, error: type[UserError] = ConfigError, fix: str = "fix the file") -> dict[str, Any]:
    """A YAML file of option: value as a dict with `_` in its keys (`batch-size` -> `batch_size`).

    Every problem is one `error` naming the file; `fix` says what to do about a damaged one.
    """
    try:
        data = yaml.load(path.read_text(), Loader=UniqueKeyLoader)  # safe_load's loader, plus one check
    except DuplicateKey as problem:
        raise error(f"config file {path} sets {problem}: keep one.") from None
    except yaml.YAMLError as problem:
        mark = getattr(problem, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise error(f"config file {path} is not valid YAML{where}: {fix}.") from None
    except (OSError, UnicodeDecodeError) as problem:
        raise error(f"config file {path} cannot be read ({problem}).") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise error(f"config file {path} must be a mapping of option: value, got {type(data).__name__}: {fix}.")
    return {str(key).replace("-", "_"): value for key, value in data.items()}


def load_yaml(path: str) -> dict[str, Any]:
    """The options of a `--config` file; unknown keys are errors."""
    if not Path(path).is_file():
        raise ConfigError(f"config file {path} does not exist. Pass a YAML file such as configs/lenet.yaml.")
    values = read_yaml_mapping(Path(path), fix="fix the syntax")
    check_known(list(values), path)
    return values


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and the usual exit code 2, with no usage dump."""

    def __init__(self, *args, script: str = "train.py", **kwargs):
        super().__init__(*args, **kwargs)
        self.script = script

    def error(self, message: str):
        raise ConfigError(f"{message}. See python {self.script} --help.")


def build_parser(description: str = "") -> argparse.ArgumentParser:
    parser = Parser(
        description=description,
        argument_default=argparse.SUPPRESS,  # only flags given on the command line override
        allow_abbrev=False,
    )
    parser.add_argument("--config", help="YAML file of options; flags given here override it")
    for name, spec in FIELDS.items():
        flag = "--" + name.replace("_", "-")
        help_text = spec.metadata["help"] + f" (default: {spec.default!r})"
        if spec.type is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            parser.add_argument(flag, help=help_text, metavar=name.upper())
    return parser


def parse_config(argv: list[str] | None = None) -> Config:
    """Config from the command line: defaults, then the --config file, then the flags."""
    parser = build_parser()
    known, unknown = parser.parse_known_args(argv)
    if unknown:
        flags = [action.option_strings[0] for action in parser._actions if action.option_strings]
        hint = did_you_mean(unknown[0].split("=")[0], flags, quote="")
        raise ConfigError(f"unknown argument {unknown[0]}.{hint} See python train.py --help.")
    args = vars(known)
    values = load_yaml(args.pop("config")) if "config" in args else {}
    values.update(args)
    return make_config(values)


def yaml_text(config: Config) -> str:
    """The config as the YAML of a `--config` file, options in their declared order."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
