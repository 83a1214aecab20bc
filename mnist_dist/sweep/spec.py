"""A sweep file, read and expanded into numbered points: the same YAML drives `wandb sweep` (with a
W&B server) and a SLURM job array (without one, launch/slurm/sweep.sbatch).

It is W&B's format: `method` (grid or random here; bayes needs the server), `metric`, `run_cap`,
and `parameters`, each a train.py option with `values: [...]`, `value: x`, or `min`/`max` and a
`distribution` (uniform, log_uniform_values, int_uniform). Point i is a pure function of the file
and i: grid counts through the values like nested loops (the last parameter fastest); random draws
point i from a generator seeded by the sweep's name and i, so a requeued or resubmitted array task
trains the same point. Every value is checked with config.make_config, as train.py would check it.
"""

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnist_dist.config import FIELDS, make_config
from mnist_dist.errors import ConfigError, UserError, did_you_mean
from mnist_dist.yaml_files import read_yaml_mapping

# W&B's top-level keys; those the array does not use (program, command, ...) are allowed so that one
# file serves both.
SWEEP_KEYS = ("name", "description", "method", "metric", "parameters", "run_cap", "program", "command")
SWEEP_KEYS += ("project", "entity", "early_terminate")
SPEC_KEYS = ("values", "value", "min", "max", "distribution")
DISTRIBUTIONS = ("uniform", "log_uniform_values", "int_uniform")
METHODS = ("grid", "random")
METRIC_KEYS = ("name", "goal", "target")  # W&B's; its target (an early stop) is not used here
GOALS = ("maximize", "minimize")
METRIC_EXAMPLE = "{name: val/accuracy, goal: maximize}"  # val/accuracy: summary.json's val_accuracy


class SweepError(UserError):
    """A sweep file the array cannot run, or a task index outside it."""


@dataclass(frozen=True)
class Sweep:
    name: str
    method: str
    metric: str  # W&B's name, such as val/accuracy
    maximize: bool
    parameters: dict[str, dict]  # train.py option (with '-', as in the file) -> its checked spec
    size: int  # the number of points, hence array tasks

    @property
    def metric_key(self) -> str:
        """The metric's key in summary.json and metrics.jsonl: val/accuracy -> val_accuracy."""
        return self.metric.replace("/", "_")

    def point(self, index: int) -> dict[str, Any]:
        """The option values of point `index` (0 to size - 1)."""
        if not 0 <= index < self.size:
            raise SweepError(
                f"task {index} is outside sweep {self.name}, which has {self.size} points: "
                f"submit with --array=0-{self.size - 1}."
            )
        if self.method == "grid":
            return grid_point(self.parameters, index)
        generator = random.Random(f"{self.name}:{index}")  # a str seed is hashed the same in every process
        return {name: draw(spec, generator) for name, spec in self.parameters.items()}


def grid_point(parameters: dict[str, dict], index: int) -> dict[str, Any]:
    """Point `index` of the grid, as itertools.product orders them (the last parameter varies fastest)."""
    point = {}
    for name in reversed(list(parameters)):
        choices = choices_of(parameters[name])
        index, position = divmod(index, len(choices))
        point[name] = choices[position]
    return dict(reversed(point.items()))


def choices_of(spec: dict) -> list:
    return list(spec["values"]) if "values" in spec else [spec["value"]]


def draw(spec: dict, generator: random.Random) -> Any:
    if "values" in spec or "value" in spec:
        return generator.choice(choices_of(spec))
    low, high = spec["min"], spec["max"]
    if spec["distribution"] == "int_uniform":
        return generator.randint(low, high)
    if spec["distribution"] == "log_uniform_values":
        return math.exp(generator.uniform(math.log(low), math.log(high)))
    return generator.uniform(low, high)


def read_sweep(path: str | Path) -> Sweep:
    """The sweep file at `path`, checked: every problem is one SweepError naming the fix."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file {path} does not exist: pass a file like launch/wandb/sweep.yaml.")
    data = read_yaml_mapping(path, error=SweepError, fix="fix the syntax")
    for key in data:
        if key not in SWEEP_KEYS:
            raise SweepError(f"sweep file {path}: unknown key '{key}'.{did_you_mean(key, SWEEP_KEYS)}")
    method = data.get("method")
    if method not in METHODS:
        why = " needs a W&B server (wandb sweep)" if method == "bayes" else " is not a method"
        raise SweepError(f"sweep file {path}: method {method!r}{why}; a SLURM array runs method grid or random.")
    parameters = data.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        raise SweepError(f"sweep file {path}: no parameters: add a mapping of train.py option: {{values: [...]}}.")
    checked = {str(name): check_parameter(path, str(name), spec, method) for name, spec in parameters.items()}
    metric, maximize = read_metric(path, data.get("metric"))
    name = str(data.get("name") or path.stem)
    size = sweep_size(path, method, checked, data.get("run_cap"))
    return Sweep(name, method, metric, maximize, checked, size)


def read_metric(path: Path, metric: Any) -> tuple[str, bool]:
    """The sweep's metric and whether higher is better: val/accuracy, maximize when the file names none.
    A metric given needs its goal said: W&B minimizes without one, and a misspelt goal (maximise) would
    rank the worst run first."""
    where = f"sweep file {path}, metric"
    if metric is None:
        return "val/accuracy", True
    if not isinstance(metric, dict):
        named = isinstance(metric, str) and metric.isprintable()  # its text in the example: on one line
        example = f"{{name: {metric}, goal: maximize}}" if named else METRIC_EXAMPLE
        raise SweepError(f"{where}: a {type(metric).__name__}, not a mapping: write metric: {example} (or minimize).")
    for key in metric:
        if key not in METRIC_KEYS:
            hint = did_you_mean(str(key), METRIC_KEYS)
            raise SweepError(f"{where}: unknown key {key!r}.{hint} Use {', '.join(METRIC_KEYS)}.")
    name, goal = metric.get("name"), metric.get("goal")
    if not isinstance(name, str) or not name.strip() or not name.isprintable():
        what = "no name" if name is None else f"name {name!r} is not a metric's name"
        raise SweepError(f"{where}: {what}: write metric: {METRIC_EXAMPLE}.")
    if goal is None:
        raise SweepError(f"{where}: no goal (W&B would minimize {name}): add goal: maximize or goal: minimize.")
    if goal not in GOALS:
        hint = did_you_mean(str(goal), GOALS)
        raise SweepError(f"{where}: unknown goal {goal!r}.{hint} Use goal: maximize or goal: minimize.")
    return name, goal == "maximize"


def sweep_size(path: Path, method: str, parameters: dict[str, dict], run_cap: Any) -> int:
    """How many points (array tasks): the grid's product, at most run_cap; random: run_cap."""
    if run_cap is not None and (not isinstance(run_cap, int) or isinstance(run_cap, bool) or run_cap < 1):
        raise SweepError(f"sweep file {path}: run_cap must be a whole number of runs, 1 or more, got {run_cap!r}.")
    if method == "random":
        if run_cap is None:
            raise SweepError(f"sweep file {path}: method random needs run_cap, the number of runs (array tasks).")
        return run_cap
    size = math.prod(len(choices_of(spec)) for spec in parameters.values())
    return min(size, run_cap) if run_cap else size


def check_parameter(path: Path, name: str, spec: Any, method: str) -> dict:
    """One parameter's spec, with every value it can take checked as train.py would check it."""
    where = f"sweep file {path}, parameter {name}"
    option = name.replace("-", "_")
    if option not in FIELDS:
        raise SweepError(
            f"{where}: not a train.py option.{did_you_mean(option, FIELDS)} python train.py --help lists them."
        )
    if not isinstance(spec, dict) or not spec:
        raise SweepError(f"{where}: give values: [...], value: x, or min and max.")
    for key in spec:
        if key not in SPEC_KEYS:
            raise SweepError(
                f"{where}: unknown key '{key}'.{did_you_mean(str(key), SPEC_KEYS)} Use {', '.join(SPEC_KEYS)}."
            )
    if "values" in spec or "value" in spec:
        if "values" in spec and (not isinstance(spec["values"], list) or not spec["values"]):
            raise SweepError(f"{where}: values must be a non-empty list, such as values: [0.1, 0.2].")
        for value in choices_of(spec):
            check_value(where, option, value)
        return spec
    if method == "grid":
        raise SweepError(f"{where}: a grid needs values: [...] (min and max are for method random).")
    return check_range(where, option, spec)


def check_range(where: str, option: str, spec: dict) -> dict:
    if "min" not in spec or "max" not in spec:
        raise SweepError(f"{where}: give both min and max, or values: [...].")
    low, high = spec["min"], spec["max"]
    whole = isinstance(low, int) and isinstance(high, int)
    distribution = spec.get("distribution", "int_uniform" if whole else "uniform")  # W&B's default
    if distribution not in DISTRIBUTIONS:
        hint = did_you_mean(str(distribution), DISTRIBUTIONS)
        raise SweepError(f"{where}: unknown distribution '{distribution}'.{hint} Use {', '.join(DISTRIBUTIONS)}.")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or not low < high:
        raise SweepError(f"{where}: min and max must be numbers with min < max, got {low!r} and {high!r}.")
    if distribution == "log_uniform_values" and low <= 0:
        raise SweepError(f"{where}: log_uniform_values needs min > 0, got {low}.")
    if distribution == "int_uniform" and not whole:
        raise SweepError(f"{where}: int_uniform needs whole numbers, got {low!r} and {high!r}.")
    for value in (low, high):
        check_value(where, option, value)
    return {**spec, "distribution": distribution}


def check_value(where: str, option: str, value: Any) -> None:
    try:
        make_config({option: value})
    except ConfigError as problem:
        raise SweepError(f"{where}: {problem} Change the value in the sweep file.") from None


def train_flags(point: dict[str, Any]) -> list[str]:
    """The point as train.py flags: --lr 0.05, --augment / --no-augment."""
    flags = []
    for name, value in point.items():
        if isinstance(value, bool):
            flags.append(f"--{'' if value else 'no-'}{name.replace('_', '-')}")
        else:
            flags += [f"--{name.replace('_', '-')}", str(value)]
    return flags
