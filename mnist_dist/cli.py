"""The command line and YAML files of train.py: defaults < the model's recipe < `--config FILE` < flags,
one-line errors, and `--help` with the options by topic (OPTION_GROUPS), their valid values and defaults.

No torch import here either: `python train.py --help` answers at once.
"""

import argparse
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from mnist_dist.config import CHOICES, FIELDS, Config, check_known, make_config
from mnist_dist.errors import ConfigError, did_you_mean
from mnist_dist.recipes import recipe
from mnist_dist.yaml_files import read_yaml_mapping


def load_yaml(path: str) -> dict[str, Any]:
    """The options of a `--config` file; unknown keys are errors."""
    if not Path(path).is_file():
        raise ConfigError(f"config file {path} does not exist. Pass a YAML file such as configs/lenet.yaml.")
    values = read_yaml_mapping(Path(path), fix="fix the syntax")
    check_known(list(values), path)
    return values


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and the usual exit code 2, with no usage dump."""

    @property
    def command(self) -> str:
        """How the user started this program, for "See ... --help": `python train.py` from a checkout,
        `mnist-dist-train` when installed (argparse's prog is the name in sys.argv[0])."""
        return f"python {self.prog}" if self.prog.endswith(".py") else self.prog

    def error(self, message: str):
        raise ConfigError(f"{message}. See {self.command} --help.")


class OptionGroup(NamedTuple):
    title: str
    about: str
    names: tuple[str, ...]  # Config fields, in the order --help lists them


# The topics of --help and of docs/OPTIONS.md (scripts/options_reference.py): each Config field
# in exactly one of them (a unit test checks it). Config itself keeps config.yaml's order.
OPTION_GROUPS = (
    OptionGroup(
        "data",
        "what is trained on, and how batches reach the model",
        (
            "dataset",
            "data_dir",
            "data_file",
            "download",
            "val_size",
            "augment",
            "augment_shift",
            "eval_flip",
            "loader",
            "num_workers",
            "eval_batch_size",
        ),
    ),
    OptionGroup("model", "the network and how it is run", ("model", "channels_last", "compile")),
    OptionGroup(
        "optimization",
        "one optimizer step",
        (
            "optimizer",
            "lr",
            "batch_size",
            "grad_accum_steps",
            "momentum",
            "nesterov",
            "weight_decay",
            "label_smoothing",
            "max_grad_norm",
        ),
    ),
    OptionGroup(
        "schedule",
        "how long training runs, and the learning rate along the way",
        ("epochs", "max_steps", "val_every", "early_stopping_patience", "schedule", "lr_step_epochs", "lr_gamma"),
    ),
    OptionGroup(
        "checkpoints",
        "when checkpoints are written, how many are kept, which one a run resumes from, which signals ask for one",
        ("checkpoint_every", "checkpoint_epochs", "keep_checkpoints", "resume", "stop_signals", "dump_signal"),
    ),
    OptionGroup(
        "distributed", "devices, precision and the process group", ("cpu", "mixed_precision", "collective_timeout")
    ),
    OptionGroup(
        "tracking",
        "progress lines, metrics.jsonl and Weights & Biases",
        (
            "log_every",
            "wandb",
            "wandb_project",
            "wandb_entity",
            "wandb_group",
            "wandb_tags",
            "wandb_notes",
            "wandb_eval",
            "verbose",
        ),
    ),
    OptionGroup(
        "run",
        "the config file, the run's name and folder, reproducibility, a smoke test",
        ("run_name", "run_dir", "seed", "deterministic", "dry_run"),
    ),
)
DESCRIPTION = (
    "Train an MNIST-family classifier on one or many processes. A flag given here beats the --config file, which "
    "beats the model's recipe (docs/TRAINING.md, Models and recipes), which beats the option's default."
)
# The end of --help: flags to copy, each with what it does.
EXAMPLES = (
    ("", "cnn on digits (built in: no files)"),
    ("--model lenet --lr 0.01 --epochs 3", "lenet's recipe, two values replaced"),
    ("--config configs/lenet.yaml --seed 1", "the file's options, the flag over them"),
    ("--dataset mnist --data-dir data", "MNIST, downloaded into data/ once"),
    ("--dry-run", "smoke test: one step, no files written"),
    ("--run-name first", "runs/first; run it again to resume"),
)


def examples_text(command: str) -> str:
    """The epilog of --help: EXAMPLES as `command` (python train.py, or mnist-dist-train installed)."""
    calls = [f"{command} {flags}".rstrip() for flags, _ in EXAMPLES]
    width = max(map(len, calls))
    lines = [f"  {call.ljust(width)}  # {why}" for call, (_, why) in zip(calls, EXAMPLES)]
    more = "Several processes (accelerate launch, torchrun): docs/TRAINING.md. Every option: docs/OPTIONS.md."
    return "\n".join(["examples:", *lines]) + "\n\n" + more


class HelpFormatter(argparse.HelpFormatter):
    """argparse's help, except that the lines of an indented paragraph (the examples) keep their breaks:
    other paragraphs wrap to the terminal's width as usual."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for paragraph in text.split("\n\n"):
            if "\n  " in paragraph:  # indented lines (commands) stay as written
                paragraphs.append("\n".join(indent + line for line in paragraph.splitlines()))
            else:
                paragraphs.append(super()._fill_text(paragraph, width, indent))
        return "\n\n".join(paragraphs)


def default_text(name: str) -> str:
    """ " (default: 3)" for the help of option `name`; "" when its help says the default in its own words
    (run_name's "(default: <model>-<dataset>-<date>-<time>)"), so that no default is said twice."""
    spec = FIELDS[name]
    if "default:" in spec.metadata["help"]:
        return ""
    shown = str(spec.default).lower() if isinstance(spec.default, bool) else spec.default  # YAML's true/false
    return f" (default: {shown})"


def add_option(group: argparse._ArgumentGroup, name: str) -> None:
    """The flag of one Config field: --no-x too for a bool, the valid values in place of a metavar."""
    spec = FIELDS[name]
    flag = "--" + name.replace("_", "-")
    help_text = spec.metadata["help"] + default_text(name)
    if spec.type is bool:
        group.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
    elif name in CHOICES:
        # Shown, not enforced by argparse: Config's check says more ("Did you mean 'mnist'?") and covers YAML too.
        group.add_argument(flag, metavar="{" + ",".join(CHOICES[name]) + "}", help=help_text)
    else:
        group.add_argument(flag, metavar=name.upper(), help=help_text)


def build_parser() -> Parser:
    parser = Parser(
        description=DESCRIPTION,
        usage="%(prog)s [--config FILE] [OPTION ...]",  # the groups list the options: a usage line of all is noise
        argument_default=argparse.SUPPRESS,  # only flags given on the command line override
        allow_abbrev=False,
        formatter_class=HelpFormatter,
    )
    parser.epilog = examples_text(parser.command)  # prog is known once the parser exists
    groups = {group.title: parser.add_argument_group(group.title, group.about) for group in OPTION_GROUPS}
    groups["run"].add_argument("--config", metavar="FILE", help="YAML file of options; flags given here override it")
    for group in OPTION_GROUPS:
        for name in group.names:
            add_option(groups[group.title], name)
    return parser


def parse_command_line(argv: list[str] | None = None) -> tuple[Config, dict[str, str]]:
    """Config from the command line: defaults < the model's recipe < the --config file < flags; and
    what set each option that is not a default: "recipe of lenet", the config file's path, or "flag"."""
    return layered_config(parsed_flags(build_parser(), argv))


def parsed_flags(parser: Parser, argv: list[str] | None) -> dict[str, Any]:
    """The flags given, as option: value (argparse's defaults are None: unset), an unknown one refused."""
    known, unknown = parser.parse_known_args(argv)
    if unknown:
        flags = [action.option_strings[0] for action in parser._actions if action.option_strings]
        hint = did_you_mean(unknown[0].split("=")[0], flags, quote="")
        raise ConfigError(f"unknown argument {unknown[0]}.{hint} See {parser.command} --help.")
    return vars(known)


def layered_config(flags: dict[str, Any], base: tuple[str, dict] = ("default", {})) -> tuple[Config, dict[str, str]]:
    """The Config of `flags` (with --config FILE) over the model's recipe over `base` (a command's own defaults,
    named) over the defaults, and what set each option."""
    path = flags.pop("config", None)
    from_file = load_yaml(path) if path else {}
    model = str(flags.get("model", from_file.get("model", base[1].get("model", FIELDS["model"].default))))
    values, sources = {}, {}
    for source, layer in (base, (f"recipe of {model}", recipe(model)), (path, from_file), ("flag", flags)):
        values.update(layer)
        sources.update(dict.fromkeys(layer, source))
    return make_config(values), sources


def parse_config(argv: list[str] | None = None) -> Config:
    """The Config of a command line, without what set each option (tests and scripts use it)."""
    return parse_command_line(argv)[0]


def yaml_text(config: Config) -> str:
    """The config as the YAML of a `--config` file, options in their declared order."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
