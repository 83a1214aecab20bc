"""What goes onto a W&B run page besides the metric rows: charts, tables, figures and the model.

Three callers, all on the main process only:
    log_final_results()  end of training (through tracking.Tracker): confusion matrix and predictions
                         table of the final model on the test set, earlier evaluate.py figures, the model
    log_evaluation()     evaluate.py's report, into the training's run or a new job_type=eval run
    log_stack_dumps()    the end of a job that wrote stack dumps (train/job.py): the folder as one artifact

None runs a model: they draw predictions computed once by `evaluation.predict_split`. Every call
into wandb goes through `WandbRun.attempt`, so a failure says one line and turns W&B off.
"""

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mnist_dist.config import Config
from mnist_dist.tracking.wandb_session import (
    STATE_FILE,
    WandbRun,
    find_state,
    import_wandb,
    init_run,
    new_run_id,
    run_arguments,
    wandb_mode,
)

if TYPE_CHECKING:  # a type only: tracking sits below evaluate (docs/ARCHITECTURE.md)
    from mnist_dist.evaluate.exact import SplitPredictions

PREDICTION_ROWS = 32  # test images in the predictions table: up to half mistakes, then the first ones
EVALUATION_METRICS = ("accuracy", "loss", "macro_precision", "macro_recall", "macro_f1", "samples")


def confusion_chart(wandb, labels: torch.Tensor, predicted: torch.Tensor, class_names, title: str):
    """wandb's confusion-matrix chart of int64 (N,) true and predicted classes."""
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
    """PNG files as wandb.Images named prefix/<file name without .png>."""
    return {f"{prefix}/{path.stem}": wandb.Image(str(path)) for path in paths}


def prediction_media(
    wandb, predictions: "SplitPredictions", images: torch.Tensor, class_names, title: str, prefix: str = ""
) -> dict[str, Any]:
    """The confusion matrix and predictions table of `predictions`, which cover the uint8 `images` (N, C, H, W)."""
    labels = predictions.labels
    return {
        f"{prefix}confusion_matrix": confusion_chart(wandb, labels, predictions.predicted, class_names, title),
        f"{prefix}predictions": prediction_table(wandb, images, labels, predictions.probabilities, class_names),
    }


def log_final_results(
    tracked: WandbRun,
    predictions: "SplitPredictions",
    images: torch.Tensor,
    class_names,
    model_path: Path,
    config: Config,
    step: int,
    kept_step: int,
) -> None:
    """End of training: the confusion matrix and predictions table of the kept model on the test set,
    the figures of earlier evaluate.py reports in the run directory (logged at `step`, the last), then
    the kept model as an artifact (aliased step-<kept_step>)."""
    wandb = tracked.wandb

    def media() -> None:
        row = prediction_media(wandb, predictions, images, class_names, "confusion matrix (test set)")
        if tracked.state_folder is not None:  # the run directory: evaluate.py reports sit in its eval*/ folders
            for folder in sorted(tracked.state_folder.glob("eval*/")):
                row.update(figure_images(wandb, sorted(folder.glob("*.png")), f"figures/{folder.name}"))
        # After every row an earlier attempt logged: wandb drops a step it already has.
        tracked.log(row, max(step, tracked.floor + 1))

    tracked.attempt("logging the final results", media)
    if model_path.is_file():
        tracked.attempt("logging the model artifact", lambda: log_model(tracked, model_path, config, kept_step))


def log_model(tracked: WandbRun, path: Path, config: Config, step: int) -> None:
    """The safetensors weights at `path` as artifact model-<run id>, aliased latest and step-<step>."""
    about = f"{config.model} trained on {config.dataset}: the weights the run kept (safetensors)"
    artifact = tracked.wandb.Artifact(f"model-{tracked.id}", type="model", description=about, metadata=config.to_dict())
    artifact.add_file(str(path), name=path.name)
    tracked.run.log_artifact(artifact, aliases=["latest", f"step-{step}"])


def log_stack_dumps(tracked: WandbRun | None, folder: Path | None) -> None:
    """The run's stack dumps (RUN/stacks: --dump-signal, a lost process, PyTorch's flight recorder) as
    one artifact, stacks-<run id>, a new version from each job that wrote any. Nothing without a live
    W&B run (W&B off, not installed, other ranks) or a `folder`; a failure says one line and never
    costs the run (WandbRun.attempt)."""
    if tracked is None or not tracked.live or folder is None:
        return

    def upload() -> None:
        about = "stack dumps of the run's processes: every thread's Python stack, the step, what it waited in"
        artifact = tracked.wandb.Artifact(f"stacks-{tracked.id}", type="stacks", description=about)
        artifact.add_dir(str(folder))
        tracked.run.log_artifact(artifact)

    tracked.attempt("uploading the stack dumps", upload)


def evaluation_run(
    config: Config, weights_path: Path, metrics: dict[str, Any], out_dir: Path, into: str, run_id: str | None, say
) -> tuple[dict[str, Any], Path | None, int]:
    """Which run evaluate.py's report goes into: wandb.init's arguments, the folder whose
    wandb_run.json the report advances (None: none) and the last step that run has logged."""
    run_dir, recorded = find_state(weights_path)
    target = run_id or recorded.get("run_id")
    if into == "train" and not target:
        say(f"W&B: no training run recorded beside {weights_path} ({STATE_FILE}); logging into a new run.")
        into = "new"
    if into != "train":
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
        return arguments, None, -1  # a run of its own: steps from 0, no state file to advance
    known = recorded if recorded.get("run_id") == target else {}  # the recorded run's project and last step
    arguments = run_arguments(config, run_dir or out_dir, target)
    arguments.update(
        project=known.get("project") or arguments["project"], entity=known.get("entity") or arguments["entity"]
    )
    for name in ("name", "group", "tags", "notes"):  # the training run has them already
        arguments.pop(name)
    return arguments, (run_dir if known else None), int(known.get("last_step", -1))


def evaluation_row(
    wandb, metrics: dict[str, Any], predictions: "SplitPredictions", images: torch.Tensor, figures: list[Path]
) -> dict[str, Any]:
    """evaluate.py's report as one row under evaluate/<dataset>-<split>/: metrics, charts, figures."""
    prefix = f"evaluate/{metrics['dataset']}-{metrics['split']}"
    title = f"confusion matrix ({metrics['dataset']}, {metrics['split']})"
    row = {f"{prefix}/{key}": metrics[key] for key in EVALUATION_METRICS}
    row.update(prediction_media(wandb, predictions, images, metrics["class_names"], title, prefix=f"{prefix}/"))
    row.update(figure_images(wandb, figures, f"{prefix}/figures"))
    return row


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
    wandb = import_wandb(say) if mode != "disabled" else None
    if wandb is None:
        return
    arguments, state_folder, floor = evaluation_run(
        config, weights_path, metrics, out_dir, into or config.wandb_eval, run_id, say
    )
    run = init_run(wandb, mode, say, **arguments)
    if run is None:
        return
    tracked = WandbRun(wandb, run, state_folder, floor, say)
    # The row is built inside the attempt: drawing it calls into wandb too. One step after the run's last.
    tracked.attempt(
        "logging the evaluation",
        lambda: tracked.log(evaluation_row(wandb, metrics, predictions, images, figures), tracked.floor + 1),
    )
    tracked.finish()
