"""Where metrics go: `metrics.jsonl` in the run directory, and Weights & Biases when enabled.

Main process only. W&B is optional: without the package, or when it fails to start or to log,
training goes on and says so once.
"""

import json
import netrc
import os
import warnings
from pathlib import Path
from typing import Any

from mnist_dist.config import Config


def wandb_mode(requested: str) -> str:
    """auto: WANDB_MODE if set, else online when an API key is configured, else offline."""
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_MODE"):
        return {"dryrun": "offline", "run": "online"}.get(os.environ["WANDB_MODE"], os.environ["WANDB_MODE"])
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (OSError, netrc.NetrcParseError):
        pass
    return "offline"


class Tracker:
    def __init__(self, config: Config, run_dir: Path | None, enabled: bool, facts: dict[str, Any], say):
        """`enabled` is the main-process flag; `run_dir` None writes no files (dry run)."""
        self.metrics_file = None
        self.wandb_run = None
        self.say = say
        if not enabled:
            return
        if run_dir is not None:
            self.metrics_file = (run_dir / "metrics.jsonl").open("a")
        mode = "disabled" if config.dry_run else wandb_mode(config.wandb)
        if mode != "disabled":
            self.wandb_run = self._start_wandb(config, run_dir, mode, facts)

    def _start_wandb(self, config: Config, run_dir: Path | None, mode: str, facts: dict[str, Any]):
        try:
            import wandb
        except ImportError:
            self.say("W&B disabled: the wandb package is not installed (pip install wandb to enable it).")
            return None
        try:
            run = wandb.init(
                project=config.wandb_project,
                entity=config.wandb_entity or None,
                name=config.run_name,
                dir=str(run_dir) if run_dir else None,
                mode=mode,
                config={**config.to_dict(), **facts},
            )
        except Exception as error:  # W&B trouble must never cost a training run
            self.say(f"W&B disabled: wandb.init failed ({type(error).__name__}: {error}).")
            return None
        where = "wandb sync " + str(Path(run.dir).parent) if mode == "offline" else run.url
        self.say(f"W&B {mode}: {where}")
        return run

    def log(self, kind: str, step: int, metrics: dict[str, Any]) -> None:
        """kind: "step" (every log_every optimizer steps) or "epoch". step: global optimizer step."""
        if self.metrics_file is not None:
            self.metrics_file.write(json.dumps({"type": kind, "step": step, **metrics}) + "\n")
            self.metrics_file.flush()
        if self.wandb_run is not None:
            prefix = "train/" if kind == "step" else ""
            try:
                self.wandb_run.log({prefix + key: value for key, value in metrics.items()}, step=step)
            except Exception as error:
                warnings.warn(f"W&B logging failed, continuing without it: {error}")
                self.wandb_run = None

    @property
    def run_id(self) -> str | None:
        return self.wandb_run.id if self.wandb_run is not None else None

    def summarize(self, values: dict[str, Any]) -> None:
        if self.wandb_run is not None:
            self.wandb_run.summary.update(values)

    def close(self) -> None:
        if self.metrics_file is not None:
            self.metrics_file.close()
            self.metrics_file = None
        if self.wandb_run is not None:
            try:
                self.wandb_run.finish()
            except Exception as error:
                warnings.warn(f"W&B finish failed: {error}")
            self.wandb_run = None
