"""Weights & Biases sessions: one run per training job, resumable, never in the way.

Only the main process comes here (through `tracking.Tracker`, or evaluate.py through
`wandb_media.log_evaluation`), so a job of any size is one W&B run. Every call into wandb is
guarded: the first failure (no network, a bad key, a server error, the package missing) prints one
line and turns W&B off, or offline when going online failed, and training goes on. W&B never
touches what training computes (no RNG, no weights, no collectives).

The run directory keeps `wandb_run.json`: run id, project, entity and the last step logged. A job
resumed from a checkpoint continues the checkpoint's W&B run (resume="allow"); rows at steps that
run already has are not sent again, so the step axis (the global optimizer step) never goes
backwards, even when a crashed job restarts from a checkpoint older than its last logged row.
evaluate.py finds the run there to add its report. What is drawn and uploaded: wandb_media.py.
"""

import json
import netrc
import os
import secrets
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from mnist_dist.atomic import WriteFailed, write_atomically
from mnist_dist.checkpoint.layout import nearest
from mnist_dist.config import FIELDS, Config
from mnist_dist.errors import first_line

STATE_FILE = "wandb_run.json"
INIT_TIMEOUT = 60  # seconds wandb.init may take online before we go offline instead
LOGIN_TIMEOUT = 30  # seconds an interactive API-key prompt may wait for an answer
FINISH_TIMEOUT = 300  # seconds of uploading at the end; `wandb sync` uploads what is left
DESCRIBE_LIMIT = 200  # characters of an error in a one-line warning


def wandb_mode(requested: str) -> str:
    """auto: WANDB_MODE if set, else online when an API key is configured, else offline."""
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_MODE"):
        mode = {"dryrun": "offline", "run": "online"}.get(os.environ["WANDB_MODE"], os.environ["WANDB_MODE"])
        return mode if mode in ("online", "offline", "disabled") else "offline"
    if os.environ.get("WANDB_DISABLED", "").lower() in ("true", "1", "yes"):
        return "disabled"
    return "online" if has_api_key() else "offline"


def has_api_key() -> bool:
    """WANDB_API_KEY, or a key that `wandb login` saved in ~/.netrc for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return bool(netrc.netrc().authenticators(host))
    except (OSError, netrc.NetrcParseError):
        return False


def import_wandb(say: Callable[[str], None]):
    """The wandb module, or None after one line saying how to get it."""
    try:
        import wandb
    except ImportError:
        say("W&B disabled: the wandb package is not installed (pip install wandb to enable it).")
        return None
    return wandb


def new_run_id() -> str:
    """8 random base-36 characters, as wandb makes them (from `secrets`: training's RNGs stay untouched)."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def describe(error: Exception) -> str:
    """An exception as one short line: its type, and its message's first line if it has one."""
    name = type(error).__name__
    text = f"{name}: {first_line(error)}" if str(error).strip() else name
    return text if len(text) <= DESCRIBE_LIMIT else text[: DESCRIBE_LIMIT - 3] + "..."


def run_page_facts(facts: dict[str, Any]) -> dict[str, Any]:
    """The trainer's facts (device, world size, precision, versions, git commit), plus device type
    and count, nodes and GPU model."""
    device_type = str(facts.get("device", "cpu")).split(":")[0]
    world_size = int(facts.get("world_size", 1))
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    extra = {
        "device_type": device_type,
        "device_count": world_size,  # each process drives one device (a GPU, or CPU cores)
        "nodes": max(1, world_size // max(1, per_node)),
    }
    if device_type == "cuda":
        try:
            extra["device_name"] = torch.cuda.get_device_name()
        except (RuntimeError, AssertionError):  # a fact not worth failing for
            pass
    return {**facts, **extra}


SECTIONS = ("val", "test")  # an epoch's evaluation, on the validation split (or the test split without one)


def wandb_names(kind: str, row: dict[str, Any]) -> dict[str, Any]:
    """metrics.jsonl and summary.json names -> run-page sections: train/ (every log_every steps), epoch/
    (the epoch's training), val/ and test/ (evaluations: val_accuracy -> val/accuracy). `epoch`
    stays, as an alternative x axis. kind "summary": the final results, whose other keys stay."""
    if kind == "step":
        return {key if key == "epoch" else f"train/{key}": value for key, value in row.items()}
    if kind == "world_size":  # a resume on another number of processes: a chart of the processes over steps
        return {"system/world_size": row["to"]}
    if kind == "ranks":  # each rank's step times: charts of a line per rank at epoch rows (rank_charts.py)
        return {}
    names = {}
    for key, value in row.items():
        section = key.split("_", 1)[0]
        if section in SECTIONS:
            names[f"{section}/{key.split('_', 1)[1]}"] = value
        elif key == "epoch" or kind == "summary":
            names[key] = value
        else:
            names["epoch/" + key.removeprefix("epoch_")] = value
    return names


def read_state(folder: Path | None) -> dict[str, Any]:
    """The wandb_run.json in `folder`, or {} when there is none or it cannot be read."""
    try:
        state = json.loads((folder / STATE_FILE).read_text()) if folder is not None else {}
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def find_state(weights_path: Path) -> tuple[Path | None, dict[str, Any]]:
    """The training's wandb_run.json beside `weights_path` or in a folder above it (a checkpoint sits in its run)."""
    path = nearest(weights_path, STATE_FILE)
    state = read_state(path.parent) if path is not None else {}
    return (path.parent, state) if state.get("run_id") else (None, {})


def run_arguments(config: Config, folder: Path | None, run_id: str) -> dict[str, Any]:
    """wandb.init's arguments from the options. An option left empty is passed as None, so wandb
    takes WANDB_ENTITY, WANDB_RUN_GROUP, WANDB_TAGS, WANDB_NOTES, WANDB_DIR itself."""
    default_project = FIELDS["wandb_project"].default
    project = config.wandb_project
    if project == default_project:
        project = os.environ.get("WANDB_PROJECT") or default_project
    tags = [tag.strip() for tag in config.wandb_tags.split(",") if tag.strip()]
    return {
        "project": project,
        "entity": config.wandb_entity or None,
        "name": config.run_name or None,
        "group": config.wandb_group or None,
        "tags": tags or None,
        "notes": config.wandb_notes or None,
        "id": run_id,
        "resume": os.environ.get("WANDB_RESUME") or "allow",
        "dir": None if os.environ.get("WANDB_DIR") or folder is None else str(folder),
    }


def init_run(wandb, mode: str, say: Callable[[str], None], verbose: bool = False, **arguments):
    """wandb.init with bounded waits. Online trouble falls back to offline with the same run id
    (so `wandb sync` can upload it later); returns the run, or None after one line saying why.
    wandb's own console output (its banner, history and summary, sync hints) only with `verbose`:
    our one line says where the run is."""
    limits = (
        ("init_timeout", "WANDB_INIT_TIMEOUT", INIT_TIMEOUT),
        ("login_timeout", "WANDB_LOGIN_TIMEOUT", LOGIN_TIMEOUT),
        ("finish_timeout", "WANDB_FINISH_TIMEOUT", FINISH_TIMEOUT),
    )
    # A limit the user set in the environment wins: wandb reads those variables itself.
    settings = {name: value for name, variable, value in limits if variable not in os.environ}
    settings["silent"] = not verbose
    failure = None
    for attempt in [mode, "offline"] if mode == "online" else [mode]:
        try:
            run = wandb.init(mode=attempt, settings=wandb.Settings(**settings), **arguments)
            if run.disabled:  # the login prompt timed out: wandb made a run that records nothing
                run.finish()
                raise RuntimeError("no API key was given (wandb login, or set WANDB_API_KEY)")
        except Exception as error:  # W&B trouble must never cost a training run
            failure = failure or describe(error)
            try:
                wandb.teardown()  # frees the run id in wandb's service for the offline attempt
            except Exception:
                pass
            continue
        where = run.url if attempt == "online" else f"wandb sync {Path(run.dir).parent}"
        if failure:
            say(f"W&B online failed ({failure}); logging offline instead: {where}")
        else:
            say(f"W&B {attempt}: {where}")
        return run
    say(f"W&B disabled: wandb.init failed ({failure}).")
    return None


class WandbRun:
    """One W&B run, on the main process. A failed call prints one line and turns W&B off."""

    def __init__(self, wandb, run, state_folder: Path | None, floor: int, say: Callable[[str], None]):
        """`state_folder`: where wandb_run.json is kept (None: nowhere); `floor`: the last step already logged."""
        self.wandb = wandb
        self.run = run
        self.id = run.id  # kept after a failure: checkpoints still carry it, so a resume can continue the run
        self.state_folder = state_folder
        # Steps up to `floor` were logged by an earlier attempt of this job (or the server has
        # them): not again. Online, wandb would drop them with a warning each; offline, they
        # would land in the new attempt's files and upload out of order.
        self.floor = max(floor, getattr(run, "starting_step", 0) - 1)
        self.last_step = self.floor
        self.say = say

    @classmethod
    def start(
        cls, config: Config, run_dir: Path | None, mode: str, facts: dict, say, resumed_id: str | None
    ) -> "WandbRun | None":
        """The training's run: WANDB_RUN_ID, else the resumed checkpoint's run id, else a new one."""
        wandb = import_wandb(say)
        if wandb is None:
            return None
        run_id = os.environ.get("WANDB_RUN_ID") or resumed_id or new_run_id()
        saved = read_state(run_dir)
        floor = int(saved.get("last_step", -1)) if saved.get("run_id") == run_id else -1
        run = init_run(
            wandb,
            mode,
            say,
            config.verbose,
            **run_arguments(config, run_dir, run_id),
            job_type="train",
            config={**config.to_dict(), "system": run_page_facts(facts)},
        )
        if run is None:
            return None
        tracked = cls(wandb, run, run_dir, floor, say)
        tracked.save_state()
        return tracked

    @property
    def live(self) -> bool:
        """Whether the run still takes calls (no call into wandb has failed, and it is not finished)."""
        return self.run is not None

    def attempt(self, what: str, action: Callable[[], Any]) -> bool:
        """Run one call into wandb; on any error say so once and turn W&B off. True if it worked."""
        if self.run is None:
            return False
        try:
            action()
            return True
        except Exception as error:  # W&B trouble must never cost a training run
            self.say(f"W&B disabled: {what} failed ({describe(error)}); training goes on without it.")
            run, self.run = self.run, None
            try:
                run.finish(exit_code=1)
            except Exception:
                pass
            return False

    def save_state(self) -> None:
        if self.state_folder is None or self.run is None:
            return
        path = self.state_folder / STATE_FILE
        state = {"run_id": self.id, "project": self.run.project, "entity": self.run.entity, "last_step": self.last_step}
        try:
            write_atomically(path, json.dumps(state) + "\n")
        except WriteFailed:
            pass  # the next log writes it again; checkpoints carry the run id too

    def log(self, row: dict[str, Any], step: int) -> None:
        """One row at global optimizer `step`; a step an earlier attempt logged is skipped."""
        if step <= self.floor:
            return
        if self.attempt("logging", lambda: self.run.log(row, step=step)) and step > self.last_step:
            self.last_step = step
            self.save_state()

    def summarize(self, values: dict[str, Any]) -> None:
        self.attempt("writing the summary", lambda: self.run.summary.update(wandb_names("summary", values)))

    def finish(self) -> None:
        if self.run is not None:
            self.attempt("finishing the run", self.run.finish)
            self.run = None
