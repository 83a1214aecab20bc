"""The one typed config: every option with its default, its `--help` text and its validation.

Values come from defaults < YAML file (`--config`) < command-line flags (cli.py). A Config is
valid once made and frozen: nothing changes it. Two stages of it exist, both immutable: the one
parsed from the command line, and the job's resolved one, made once by `train.job.resolve` with
`dataclasses.replace` (which validates again), whose run name and folder are filled in. Only the
resolved one has a `run_path`. This module imports no torch, so `--help` and config errors answer
at once.
"""

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnist_dist.errors import ConfigError, did_you_mean

# The names each option accepts. models.py and data/datasets.py register exactly these
# (a unit test checks it), so a typo is caught here, before torch is imported.
DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "mnist-pkl")
MODELS = ("cnn", "cnn-wide", "cnn-deep", "lenet", "linear", "mlp", "mlp-sigmoid", "mlp-wide", "cifar-mlp")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("none", "cosine", "onecycle", "step")
PRECISIONS = ("auto", "no", "fp16", "bf16")
WANDB_MODES = ("auto", "online", "offline", "disabled")
WANDB_EVAL_TARGETS = ("train", "new")
PREPARATIONS = ("auto", "none", "photo")  # evaluate.py --prepare, load_model(prepare=): data/user_images.py
LOADERS = ("auto", "resident", "dataloader")
MIRRORED = ("fashion-mnist", "cifar10")  # sets whose classes a horizontal flip keeps (a mirrored 2 is no 2)
# Signals that may ask for a checkpoint-and-stop (--stop-signals). NCCL and some container runtimes use
# SIGUSR1 themselves, hence the choice (submitit moved to USR2 for the same reason).
STOP_SIGNAL_NAMES = ("USR1", "USR2", "TERM", "INT", "HUP", "QUIT")
DUMP_SIGNALS = ("QUIT", "USR1", "USR2", "HUP", "none")  # --dump-signal: stacks written, training goes on
AT_LEAST_ONE = ("epochs", "batch_size", "eval_batch_size", "grad_accum_steps", "log_every", "lr_step_epochs")
AT_LEAST_ONE += ("keep_checkpoints", "val_every")
NOT_NEGATIVE = ("momentum", "weight_decay", "max_grad_norm", "max_steps", "early_stopping_patience", "num_workers")
NOT_NEGATIVE += ("checkpoint_every", "seed", "collective_timeout", "val_size")
# Seconds a collective waits by default: a stuck node is found in minutes, not torch's 30 (gloo) or 10 (NCCL).
# A checkpoint written to a slow shared filesystem, or an evaluation, must fit in it: the others wait.
DEFAULT_TIMEOUTS = {"cpu": 300, "cuda": 600}
RUN_NAME = re.compile(r"[A-Za-z0-9._-]+")  # a plain folder name: no path separators, no spaces
CHOICES = {
    "dataset": DATASETS,
    "model": MODELS,
    "optimizer": OPTIMIZERS,
    "schedule": SCHEDULES,
    "mixed_precision": PRECISIONS,
    "wandb": WANDB_MODES,
    "wandb_eval": WANDB_EVAL_TARGETS,
    "loader": LOADERS,
    "dump_signal": DUMP_SIGNALS,
}


def option(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Config:
    # Declared in config.yaml's order; --help lists them by topic instead (cli.OPTION_GROUPS).
    dataset: str = option("digits", "dataset to train and evaluate on (docs/TRAINING.md, Datasets)")
    data_dir: str = option("./data", "folder with dataset files in torchvision's layout; downloads go here")
    data_file: str = option("", "path to mnist.pkl.gz, read by dataset mnist-pkl only (default: none)")
    download: bool = option(True, "download missing dataset files (main process only; others wait)")
    val_size: float = option(
        0.1,
        "training samples held out to choose the model on (early stopping, the kept weights): a fraction below 1 "
        "or a count, stratified by class and chosen by --seed; 0 holds out none (mnist-pkl: its own 10,000)",
    )
    model: str = option("cnn", "model architecture (docs/TRAINING.md, Models and recipes)")
    epochs: int = option(3, "passes over the training set")
    batch_size: int = option(256, "images per optimizer step per process (global: this x processes x grad accum)")
    eval_batch_size: int = option(1000, "images per evaluation batch per process")
    lr: float = option(0.2, "learning rate (peak learning rate for onecycle)")
    optimizer: str = option("sgd", "optimizer (--momentum and --nesterov apply to sgd)")
    momentum: float = option(0.9, "SGD momentum, in [0, 1) (0 disables)")
    nesterov: bool = option(True, "Nesterov momentum for SGD")
    weight_decay: float = option(5e-4, "L2 penalty (decoupled for adamw)")
    schedule: str = option(
        "onecycle", "learning-rate schedule over all steps (step: times --lr-gamma every --lr-step-epochs)"
    )
    lr_step_epochs: int = option(1, "step schedule: epochs between decays")
    lr_gamma: float = option(0.7, "step schedule: factor applied at each decay")
    label_smoothing: float = option(0.1, "cross-entropy label smoothing, 0..1")
    grad_accum_steps: int = option(1, "batches whose gradients are summed before one optimizer step")
    max_grad_norm: float = option(0.0, "clip the global gradient norm to this value; 0 disables")
    early_stopping_patience: int = option(
        0, "stop after this many epochs without a better validation accuracy (checked at evaluations); 0: off"
    )
    val_every: int = option(1, "evaluate every this many epochs and after the last; the kept weights are among them")
    augment: bool = option(
        False,
        "augment on the device: shifts up to 2 px (digit sets), flips (Fashion-MNIST), 4 px crop + flip (CIFAR-10); "
        "each sample's draw depends on (seed, epoch, sample) only, so any number of processes sees the same images",
    )
    augment_shift: int = option(-1, "with --augment: the largest random shift, pixels each way, 0-8; -1: the dataset's")
    eval_flip: bool = option(
        False,
        "evaluate each image and its mirror image and average the logits (test-time augmentation, with --augment; "
        "the saved model does it too): " + " and ".join(MIRRORED) + " only",
    )
    seed: int = option(0, "seed for weights, shuffling and augmentation (the same on every process), 0 to 2**32 - 1")
    deterministic: bool = option(False, "use only deterministic kernels (slower; bit-reproducible runs)")
    checkpoint_every: int = option(0, "optimizer steps between checkpoints; 0: only at epoch ends")
    checkpoint_epochs: bool = option(True, "write a checkpoint at the end of every epoch")
    keep_checkpoints: int = option(2, "newest checkpoints to keep (the best by validation accuracy is kept too)")
    resume: str = option(
        "auto", "auto (the run dir's newest complete checkpoint, if any), none, or a checkpoint folder"
    )
    mixed_precision: str = option(
        "auto", "auto: bf16 on GPUs that have it, fp16 on older GPUs, off on CPU/MPS; no: full precision everywhere"
    )
    cpu: bool = option(False, "train on the CPU even when a GPU is present")
    collective_timeout: int = option(
        0,
        "seconds a process waits for the others in a collective before the job ends (exit 5, the last checkpoint "
        f"kept); 0: {DEFAULT_TIMEOUTS['cpu']} on CPUs (gloo), {DEFAULT_TIMEOUTS['cuda']} on GPUs (NCCL)",
    )
    stop_signals: str = option(
        "USR1,TERM,INT",
        "signals that ask for a checkpoint and exit 3, comma-separated, from "
        + ", ".join(STOP_SIGNAL_NAMES)
        + " (a second INT aborts); match the SLURM scripts' STOP_SIGNAL",
    )
    dump_signal: str = option(
        "QUIT", "a signal that makes a process write its threads' stacks and step to RUN/stacks/ and go on; none: off"
    )
    max_steps: int = option(0, "stop after this many optimizer steps in all; 0 means no limit")
    dry_run: bool = option(
        False, "smoke test: one optimizer step, one evaluation, no files written (no checkpoints), W&B off"
    )
    channels_last: bool = option(
        True,
        "conv models: NHWC memory layout (1.1-1.3x faster for lenet and cnn on 2 CPU cores; docs/BENCHMARKS.md)",
    )
    compile: bool = option(False, "torch.compile the model (measured slower on small CPUs; try it on GPUs)")
    loader: str = option(
        "auto", "resident (the split on the device, batches by one gather), dataloader, or auto (resident when it fits)"
    )
    num_workers: int = option(
        0, "DataLoader worker processes, dataloader path only (0: load in the training process; the data is in memory)"
    )
    log_every: int = option(50, "optimizer steps between progress lines and step metrics")
    run_name: str = option(
        "", "name of the run: letters, digits, '.', '_', '-' (default: <model>-<dataset>-<date>-<time>)"
    )
    run_dir: str = option("", "where config.yaml, metrics.jsonl and the model go (default: runs/<run name>)")
    wandb: str = option("auto", "Weights & Biases mode (auto: online with an API key, else offline)")
    wandb_project: str = option("mnist-dist", "W&B project; default: WANDB_PROJECT, else mnist-dist")
    wandb_entity: str = option("", "W&B entity (team or user); default: WANDB_ENTITY, else your default entity")
    wandb_group: str = option("", "W&B run group, to compare runs side by side; default: WANDB_RUN_GROUP, else none")
    wandb_tags: str = option("", "W&B tags, comma-separated (a,b); default: WANDB_TAGS, else none")
    wandb_notes: str = option("", "W&B notes: a line about the run; default: WANDB_NOTES, else none")
    verbose: bool = option(False, "W&B's own console output too (its banner, history and summary at the end)")
    wandb_eval: str = option(
        "train", "where evaluate.py logs to W&B: train (into this training's run) or new (a run with job_type=eval)"
    )

    def __post_init__(self) -> None:
        self._check_choices()
        self._check_numbers()
        self._check_names_and_files()

    def _check_names_and_files(self) -> None:
        if self.dump_signal in stop_signal_names(self.stop_signals):  # raises ConfigError for an unknown name
            raise ConfigError(f"--dump-signal {self.dump_signal} is a stop signal too: drop it from --stop-signals.")
        long_tags = [tag for tag in self.wandb_tags.split(",") if len(tag.strip()) > 64]
        if long_tags:
            raise ConfigError(f"W&B tags have at most 64 characters; shorten '{long_tags[0].strip()}'.")
        if self.dataset == "mnist-pkl" and not self.data_file:
            raise ConfigError("dataset mnist-pkl reads one file: pass --data-file path/to/mnist.pkl.gz.")
        if self.eval_flip and self.dataset not in MIRRORED:
            raise ConfigError(
                f"--eval-flip averages each image with its mirror image, which changes digits' classes: drop it for "
                f"{self.dataset} (it is for {' and '.join(MIRRORED)})."
            )
        if self.eval_flip and not self.augment:  # measured: 92.1% test accuracy fell to 82.6% (docs/BENCHMARKS.md)
            raise ConfigError("--eval-flip needs --augment: a model never trained on mirror images misreads them.")
        if self.data_file and self.dataset != "mnist-pkl":
            raise ConfigError(
                f"--data-file is read by dataset mnist-pkl only, not {self.dataset}: "
                "drop it, or pass --dataset mnist-pkl."
            )
        if self.run_name and (not RUN_NAME.fullmatch(self.run_name) or self.run_name in (".", "..")):
            raise ConfigError(
                f"run_name {self.run_name!r} is not a plain name: use letters, digits, '.', '_' and '-' "
                "(--run-dir chooses another folder)."
            )

    def _check_choices(self) -> None:
        for name, valid in CHOICES.items():
            value = getattr(self, name)
            if value not in valid:
                hint = did_you_mean(str(value), valid)
                raise ConfigError(f"unknown {name} '{value}'.{hint} Valid: {', '.join(valid)}.")

    def _check_numbers(self) -> None:
        for name, spec in FIELDS.items():
            if spec.type is float and not math.isfinite(getattr(self, name)):
                raise ConfigError(f"{name} must be a finite number, got {getattr(self, name)}.")
        for name in AT_LEAST_ONE:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.lr <= 0:
            raise ConfigError(f"lr must be greater than 0, got {self.lr}.")
        for name in NOT_NEGATIVE:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be 0 or more, got {getattr(self, name)}.")
        if self.seed >= 2**32:  # numpy's seeds are 32-bit
            raise ConfigError(f"seed must be below 2**32 (4294967296), got {self.seed}.")
        if not 0 <= self.momentum < 1:  # 1 or more never forgets a gradient: the steps grow without bound
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}.")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}.")
        if not 0 < self.lr_gamma <= 1:
            raise ConfigError(f"lr_gamma must be in (0, 1], got {self.lr_gamma}.")
        if self.val_size >= 1 and self.val_size != int(self.val_size):
            raise ConfigError(f"val_size must be a fraction below 1 or a whole number of samples, got {self.val_size}.")
        if not -1 <= self.augment_shift <= 8 or (self.augment_shift != -1 and not self.augment):  # 8: a third of 28
            message = f"augment_shift {self.augment_shift}: pass 0 to 8 pixels with --augment, or -1 (the dataset's)."
            raise ConfigError(message)
        if self.early_stopping_patience and not self.val_size:
            raise ConfigError(
                "early stopping chooses on the validation split, and val_size 0 holds out none: "
                "pass a --val-size (such as 0.1) or drop --early-stopping-patience."
            )

    @property
    def writes_files(self) -> bool:
        """Whether this run writes a run directory (config, metrics, checkpoints, model): all but a dry run."""
        return not self.dry_run

    @property
    def run_path(self) -> Path:
        """The run directory of a resolved config: `train.job.resolve` fills `run_dir` in, once, before
        anything is written (runs/<run name> by default). A config straight from the command line
        may have none yet, and asking it is a bug, not a user's mistake."""
        if not self.run_dir:  # not "", which Path reads as the current folder
            raise ValueError("run_path of an unresolved Config: use the one train.job.resolve returns")
        return Path(self.run_dir)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def stop_signal_names(text: str) -> tuple[str, ...]:
    """`--stop-signals` as names without the SIG prefix (`usr2, SIGTERM` -> USR2, TERM), repeats dropped."""
    names = [name.strip().upper().removeprefix("SIG") for name in text.split(",") if name.strip()]
    for name in names:
        if name not in STOP_SIGNAL_NAMES:
            hint = did_you_mean(name, STOP_SIGNAL_NAMES)
            raise ConfigError(f"unknown stop signal '{name}'.{hint} Valid: {', '.join(STOP_SIGNAL_NAMES)}.")
    if not names:
        raise ConfigError("stop_signals names no signal: pass at least one, such as --stop-signals USR1,TERM,INT.")
    return tuple(dict.fromkeys(names))


FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def _coerce(name: str, value: Any) -> Any:
    """Convert a YAML or command-line value to the field's type, or say what was expected."""
    kind = FIELDS[name].type
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
    elif kind in (int, float):
        if isinstance(value, int if kind is int else (int, float)) and not isinstance(value, bool):
            return kind(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
            try:
                return kind(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    type_name = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[kind]
    raise ConfigError(f"{name} must be {type_name}, got {value!r}.")


def check_known(keys: list[str], source: str) -> None:
    for key in keys:
        if key not in FIELDS:
            hint = did_you_mean(key, FIELDS)
            raise ConfigError(f"unknown option '{key}' in {source}.{hint} --help lists every option.")


def make_config(values: dict[str, Any]) -> Config:
    values = {key.replace("-", "_"): value for key, value in values.items()}
    check_known(list(values), "the options")
    return Config(**{name: _coerce(name, value) for name, value in values.items()})
