"""Weights & Biases: one run per training job, a complete run page, resumable, never in the way.

Only the main process comes here (through `tracking.Tracker`), so a job of any size is one W&B
run. Every call into wandb is guarded: the first failure (no network, a bad key, a server error,
the package missing) prints one line and turns W&B off, or offline when going online failed, and
training goes on. W&B never touches what training computes (no RNG, no weights, no collectives).

The run directory keeps `wandb_run.json`: run id, project, entity and the last step logged. A job
resumed from a checkpoint continues the checkpoint's W&B run (resume="allow"); rows at steps that
run already has are not sent again, so the step axis (the global optimizer step) never goes
backwards, even when a crashed job restarts from a checkpoint older than its last logged row.
evaluate.py finds the run there to add its report (`log_evaluation`).
"""

import json
import netrc
import os
import secrets
import string
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from mnist_dist.atomic import write_atomically
from mnist_dist.config import FIELDS, Config
from mnist_dist.data.images import Normalizer
from mnist_dist.trained_run import nearest

STATE_FILE = "wandb_run.json"
INIT_TIMEOUT = 60  # seconds wandb.init may take online before we go offline instead
LOGIN_TIMEOUT = 30  # seconds an interactive API-key prompt may wait for an answer
FINISH_TIMEOUT = 300  # seconds of uploading at the end; `wandb sync` uploads what is left
PREDICTION_ROWS = 32  # test images in the predictions table: up to half mistakes, then the first ones


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


def new_run_id() -> str:
    """8 random base-36 characters, as wandb makes them (from `secrets`: training's RNGs stay untouched)."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def describe(error: Exception) -> str:
    """An exception as one short line."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def git_state() -> dict[str, Any]:
    """The commit of this code and whether it had uncommitted changes; nothing outside a git checkout."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        return {
            "git_commit": git("rev-parse", "HEAD"),
            "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        }
    except (OSError, ValueError, subprocess.SubprocessError):
        return {}


def run_page_facts(facts: dict[str, Any]) -> dict[str, Any]:
    """The trainer's facts (device, world size, precision, versions), plus device type and count,
    nodes, GPU model and the git commit of the code."""
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
    return {**facts, **extra, **git_state()}


def wandb_names(kind: str, row: dict[str, Any]) -> dict[str, Any]:
    """metrics.jsonl names -> run-page sections: train/ (every log_every steps), epoch/ (the
    epoch's training), eval/ (the epoch's evaluation). `epoch` stays, as an alternative x axis."""
    if kind == "step":
        return {key if key == "epoch" else f"train/{key}": value for key, value in row.items()}
    names = {}
    for key, value in row.items():
        if key == "epoch":
            names[key] = value
        elif key.startswith("eval_"):
            names["eval/" + key.removeprefix("eval_")] = value
        else:
            names["epoch/" + key.removeprefix("epoch_")] = value
    return names


def read_state(folder: Path | None) -> dict[str, Any]:
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


def init_run(wandb, mode: str, say: Callable[[str], None], **arguments):
    """wandb.init with bounded waits. Online trouble falls back to offline with the same run id
    (so `wandb sync` can upload it later); returns the run, or None after one line saying why."""
    limits = (
        ("init_timeout", "WANDB_INIT_TIMEOUT", INIT_TIMEOUT),
        ("login_timeout", "WANDB_LOGIN_TIMEOUT", LOGIN_TIMEOUT),
        ("finish_timeout", "WANDB_FINISH_TIMEOUT", FINISH_TIMEOUT),
    )
    settings = {name: value for name, variable, value in limits if variable not in os.environ}
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


@torch.inference_mode()
def predict(model: torch.nn.Module, images: torch.Tensor, normalize: Normalizer, batch_size: int) -> torch.Tensor:
    """Class probabilities, float32 (N, classes), of uint8 images (N, C, H, W); one process, no collectives."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        batches = [
            model(normalize(images[start : start + batch_size].to(device))).float().softmax(dim=1).cpu()
            for start in range(0, len(images), batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(batches)


def confusion_chart(wandb, labels: torch.Tensor, predicted: torch.Tensor, class_names, title: str):
    return wandb.plot.confusion_matrix(
        y_true=labels.tolist(), preds=predicted.tolist(), class_names=list(class_names), title=title
    )


def sample_indices(labels: torch.Tensor, predicted: torch.Tensor, rows: int = PREDICTION_ROWS) -> list[int]:
    """Up to rows/2 mistakes, then the first test images, in test-set order."""
    chosen = set((predicted != labels).nonzero().flatten()[: rows // 2].tolist())
    for index in range(len(labels)):
        if len(chosen) >= rows:
            break
        chosen.add(index)
    return sorted(chosen)


def prediction_table(wandb, images: torch.Tensor, labels: torch.Tensor, probabilities: torch.Tensor, class_names):
    """wandb.Table: index, image, true label, predicted label, then each class's probability."""
    predicted = probabilities.argmax(dim=1)
    table = wandb.Table(columns=["index", "image", "true", "predicted", *(f"p({name})" for name in class_names)])
    for index in sample_indices(labels, predicted):
        image = images[index]  # uint8 (C, H, W)
        pixels = image[0] if image.shape[0] == 1 else image.permute(1, 2, 0)  # (H, W) or (H, W, C)
        table.add_data(
            index,
            wandb.Image(pixels.numpy()),
            class_names[labels[index]],
            class_names[predicted[index]],
            *probabilities[index].tolist(),
        )
    return table


def figure_images(wandb, paths: list[Path], prefix: str) -> dict[str, Any]:
    return {f"{prefix}/{path.stem}": wandb.Image(str(path)) for path in paths}


class WandbRun:
    """One W&B run, on the main process. A failed call prints one line and turns W&B off."""

    def __init__(self, wandb, run, state_folder: Path | None, floor: int, say: Callable[[str], None]):
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
        try:
            import wandb
        except ImportError:
            say("W&B disabled: the wandb package is not installed (pip install wandb to enable it).")
            return None
        run_id = os.environ.get("WANDB_RUN_ID") or resumed_id or new_run_id()
        saved = read_state(run_dir)
        floor = int(saved.get("last_step", -1)) if saved.get("run_id") == run_id else -1
        run = init_run(
            wandb,
            mode,
            say,
            **run_arguments(config, run_dir, run_id),
            job_type="train",
            config={**config.to_dict(), "system": run_page_facts(facts)},
        )
        if run is None:
            return None
        tracked = cls(wandb, run, run_dir, floor, say)
        tracked.save_state()
        return tracked

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
        except OSError:
            pass  # the next log writes it again; checkpoints carry the run id too

    def log(self, row: dict[str, Any], step: int) -> None:
        if step <= self.floor:
            return
        if self.attempt("logging", lambda: self.run.log(row, step=step)) and step > self.last_step:
            self.last_step = step
            self.save_state()

    def summarize(self, values: dict[str, Any]) -> None:
        self.attempt("writing the summary", lambda: self.run.summary.update(values))

    def log_results(
        self, model, test_set, normalize: Normalizer, class_names, model_path: Path, config: Config, step: int
    ) -> None:
        """End of training: confusion matrix, predictions table and figures of the final model on
        the test set (one forward pass, this process only), then the model as an artifact."""
        if self.run is None:
            return
        wandb = self.wandb

        def media() -> None:
            probabilities = predict(model, test_set.images, normalize, config.eval_batch_size)
            labels = test_set.labels
            row = {
                "confusion_matrix": confusion_chart(
                    wandb, labels, probabilities.argmax(dim=1), class_names, "confusion matrix (test set)"
                ),
                "predictions": prediction_table(wandb, test_set.images, labels, probabilities, class_names),
            }
            if self.state_folder is not None:  # the figures of an earlier evaluate.py report, if any
                for folder in sorted(self.state_folder.glob("eval*/")):
                    row.update(figure_images(wandb, sorted(folder.glob("*.png")), f"figures/{folder.name}"))
            self.log(row, max(step, self.floor + 1))

        self.attempt("logging the final results", media)
        if model_path.is_file():
            self.attempt("logging the model artifact", lambda: self.log_model(model_path, config, step))

    def log_model(self, path: Path, config: Config, step: int) -> None:
        about = f"{config.model} trained on {config.dataset}: the final weights (safetensors)"
        artifact = self.wandb.Artifact(f"model-{self.id}", type="model", description=about, metadata=config.to_dict())
        artifact.add_file(str(path), name=path.name)
        self.run.log_artifact(artifact, aliases=["latest", f"step-{step}"])

    def finish(self) -> None:
        if self.run is not None:
            self.attempt("finishing the run", self.run.finish)
            self.run = None


def log_evaluation(
    config: Config,
    weights_path: Path,
    metrics: dict[str, Any],
    predictions,
    images: torch.Tensor,
    figures: list[Path],
    out_dir: Path,
    into: str | None = None,
    mode: str | None = None,
    run_id: str | None = None,
    say: Callable[[str], None] = print,
) -> None:
    """evaluate.py's report to W&B: into the training's run (`run_id`, else the one recorded in the
    wandb_run.json of the weights' run directory) or into a new run with job_type=eval. Main
    process only; never raises.

    `config`: the trained run's config (its wandb, wandb_eval, project... options are the defaults
    for `mode` and `into`); `metrics`: eval_report.build_metrics; `predictions`: SplitPredictions of the
    split whose uint8 `images` they cover; `figures`: the report's PNG files; `out_dir`: the report
    folder (where a new run's offline files go when the weights sit in no run directory).
    """
    mode = wandb_mode(mode or config.wandb)
    into = into or config.wandb_eval
    if mode == "disabled":
        return
    try:
        import wandb
    except ImportError:
        say("W&B disabled: the wandb package is not installed (pip install wandb to enable it).")
        return
    run_dir, recorded = find_state(weights_path)
    target = run_id or recorded.get("run_id")
    if into == "train" and not target:
        say(f"W&B: no training run recorded beside {weights_path} ({STATE_FILE}); logging into a new run.")
        into = "new"
    if into == "train":
        known = recorded if recorded.get("run_id") == target else {}  # the recorded run's project and last step
        arguments = run_arguments(config, run_dir or out_dir, target)
        arguments.update(
            project=known.get("project") or arguments["project"], entity=known.get("entity") or arguments["entity"]
        )
        for name in ("name", "group", "tags", "notes"):  # the training run has them already
            arguments.pop(name)
        state_folder, floor = (run_dir if known else None), int(known.get("last_step", -1))
    else:
        arguments = {
            **run_arguments(config, run_dir or out_dir, new_run_id()),
            "job_type": "eval",
            "name": f"{config.run_name}-eval" if config.run_name else None,
            "config": {
                **config.to_dict(),
                "training_run_id": target,
                **{key: metrics.get(key) for key in ("checkpoint", "dataset", "split")},
            },
        }
        state_folder, floor = None, -1  # a run of its own: steps from 0, no state file to advance
    run = init_run(wandb, mode, say, **arguments)
    if run is None:
        return
    tracked = WandbRun(wandb, run, state_folder, floor, say)
    prefix = f"evaluate/{metrics['dataset']}-{metrics['split']}"

    def report() -> None:
        names = metrics["class_names"]
        row = {
            f"{prefix}/{key}": metrics[key]
            for key in ("accuracy", "loss", "macro_precision", "macro_recall", "macro_f1", "samples")
        }
        row[f"{prefix}/confusion_matrix"] = confusion_chart(
            wandb,
            predictions.labels,
            predictions.predicted,
            names,
            f"confusion matrix ({metrics['dataset']}, {metrics['split']})",
        )
        row[f"{prefix}/predictions"] = prediction_table(
            wandb, images, predictions.labels, predictions.probabilities, names
        )
        row.update(figure_images(wandb, figures, f"{prefix}/figures"))
        tracked.log(row, tracked.floor + 1)

    tracked.attempt("logging the evaluation", report)
    tracked.finish()
