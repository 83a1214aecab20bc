"""Where metrics go: `metrics.jsonl` in the run directory, and Weights & Biases when enabled.

Main process only. metrics.jsonl gets every row as the trainer names it; W&B (wandb_session.py) gets
the same rows in run-page sections (train/, epoch/, val/ or test/), the ranks' step times as charts
(rank_charts.py), then the final results and the model (wandb_media.py).
W&B is optional: without the package, or when it fails, training goes on and says so once.
"""

import json
from pathlib import Path
from typing import Any

from mnist_dist.atomic import WriteFailed, write_atomically, writing
from mnist_dist.config import Config
from mnist_dist.tracking.rank_charts import RankSeries
from mnist_dist.tracking.wandb_media import log_final_results
from mnist_dist.tracking.wandb_session import WandbRun, wandb_mode, wandb_names


def drop_rows_after(path: Path, step: int) -> None:
    """A resumed run trains the steps after its checkpoint again, and a run that starts over trains
    them all: drop their rows (and a line cut short by a crash) so that metrics.jsonl keeps one row
    per step, in order. A resume on another number of processes logs a "world_size" row at its step,
    which a job resuming from that step again writes anew."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
            if row["step"] < step or row["step"] == step and row["type"] != "world_size":
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    write_atomically(path, "".join(kept))


class Tracker:
    def __init__(
        self,
        config: Config,
        run_dir: Path | None,
        enabled: bool,
        facts: dict[str, Any],
        say,
        resumed_run_id: str | None = None,
        start_step: int = 0,
    ):
        """`enabled` is the main-process flag; `run_dir` None writes no files (dry run).
        `resumed_run_id`: the W&B run of the checkpoint this job resumed from; `start_step`: its step
        (0 when the run starts from scratch).

        A failed write of metrics.jsonl does not raise here: only the main process writes it, so it
        is kept in `failure` until the ranks agree to stop (train/agreement.py), and from then on
        nothing more is written to the file.
        """
        self.config = config
        self.run_dir = run_dir
        self.metrics_path = run_dir / "metrics.jsonl" if enabled and run_dir is not None else None
        self.metrics_file = None  # opened by the first row: a job that ends before training leaves none
        self.failure: WriteFailed | None = None
        self.wandb: WandbRun | None = None
        self.resumed_run_id = resumed_run_id
        self.rank_series = RankSeries()  # the "ranks" rows, for W&B's charts (while W&B is on)
        if not enabled:
            return
        if self.metrics_path is not None:
            try:
                drop_rows_after(self.metrics_path, start_step)
            except WriteFailed as error:
                self.failure, self.metrics_path = error, None
        mode = wandb_mode(config.wandb)  # a dry run's resolved config has W&B disabled
        if mode != "disabled":
            self.wandb = WandbRun.start(config, run_dir, mode, facts, say, resumed_run_id)

    def write_row(self, row: dict[str, Any]) -> None:
        """Append one row to metrics.jsonl, flushed, so that a crash loses nothing already logged."""
        if self.metrics_path is None:
            return
        try:
            with writing(self.metrics_path):
                if self.metrics_file is None:
                    self.metrics_file = self.metrics_path.open("a")
                self.metrics_file.write(json.dumps(row) + "\n")
                self.metrics_file.flush()
        except WriteFailed as error:
            self.failure, self.metrics_path = error, None
            self.close_metrics()

    def close_metrics(self) -> None:
        if self.metrics_file is not None:
            try:
                self.metrics_file.close()
            except OSError:
                pass  # its failure is already kept: a write that failed leaves data close() tries again
            self.metrics_file = None

    def log(self, kind: str, step: int, metrics: dict[str, Any]) -> None:
        """kind: "step" (every log_every optimizer steps), "epoch", "ranks" (each rank's step times: W&B
        charts them at the next epoch row), or "world_size" (a resume on another number of processes: from,
        to). step: global optimizer step."""
        self.write_row({"type": kind, "step": step, **metrics})
        if self.wandb is None:
            return
        if kind == "ranks":  # charted with the next epoch row
            self.rank_series.add(step, metrics)
            return
        names = wandb_names(kind, metrics)
        if kind == "epoch":
            charts = lambda: names.update(self.rank_series.charts(self.wandb.wandb))  # noqa: E731
            self.wandb.attempt("drawing the per-rank charts", charts)
        self.wandb.log(names, step)

    @property
    def run_id(self) -> str | None:
        """The W&B run id that checkpoints carry (also while W&B is off, so a later resume continues it)."""
        return self.wandb.id if self.wandb is not None else self.resumed_run_id

    def summarize(self, values: dict[str, Any]) -> None:
        if self.wandb is not None:
            self.wandb.summarize(values)

    @property
    def wants_predictions(self) -> bool:
        """Whether log_results would log anything: this process has a live W&B run and a run directory.
        Only the main process can say True; the trainer shares its answer, since every rank predicts."""
        return self.wandb is not None and self.wandb.live and self.run_dir is not None

    def log_results(self, predictions, images, class_names, step: int, kept_step: int) -> None:
        """End of training (W&B only): confusion matrix and predictions table of `predictions` (the test
        split's SplitPredictions, which cover its uint8 `images` (N, C, H, W)), the figures of earlier
        evaluate.py reports, at `step`; then the kept weights (of `kept_step`) as the model artifact."""
        if self.wants_predictions:
            model_path = self.run_dir / "model.safetensors"
            log_final_results(self.wandb, predictions, images, class_names, model_path, self.config, step, kept_step)

    def close(self) -> None:
        self.close_metrics()
        if self.wandb is not None:
            self.wandb.finish()
