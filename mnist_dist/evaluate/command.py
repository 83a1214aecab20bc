"""The evaluate command: a report on a trained model, `--predict` or `--export` (evaluate.py).

`parse_args` reads evaluate.py's flags; every task loads the model with `load` (trained_model.load_trained,
which checks the weights file's metadata, and says which weights a run without final ones gives).
`evaluate_checkpoint` predicts every sample of the split on every rank (the same numbers for any
world size); the main process prints the report, writes it and logs it to W&B. `classify_files`
serves `--predict`, `export_file` serves `--export`. Only the standard library and the option
lists load at the top: torch, accelerate and wandb load inside the functions that need them, so
`--help` answers at once and `--predict` never imports accelerate.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mnist_dist.cli import Parser
from mnist_dist.config import DATASETS, PREPARATIONS, WANDB_EVAL_TARGETS, WANDB_MODES, Config
from mnist_dist.errors import UserError

if TYPE_CHECKING:  # names for the annotations only; importing them here would load torch for --help
    import torch
    from accelerate import Accelerator

    from mnist_dist.data.images import DatasetInfo, ImageSet
    from mnist_dist.evaluate.exact import SplitPredictions
    from mnist_dist.evaluate.trained_model import TrainedModel

DESCRIPTION = "Evaluate a trained run on a whole split, with a visual report; or classify your own image files."


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return int(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """evaluate.py's flags, from `argv` or else sys.argv[1:]."""
    parser = Parser(description=DESCRIPTION, allow_abbrev=False)
    parser.add_argument(
        "--checkpoint", required=True, help="a run directory (runs/<name>), a checkpoint folder or a .safetensors file"
    )
    parser.add_argument(
        "--dataset", choices=DATASETS, help="dataset to evaluate on (default: the one the model was trained on)"
    )
    parser.add_argument(
        "--split",
        choices=("test", "val", "train"),
        default="test",
        help="split to evaluate: test, val (the run's held-out validation split) or train (the rest) (default: test)",
    )
    parser.add_argument(
        "--batch-size", type=positive, help="images per evaluation batch per process (default: the run's)"
    )
    parser.add_argument("--data-dir", help="folder with the dataset files (default: the run's)")
    parser.add_argument("--data-file", help="path to mnist.pkl.gz (dataset mnist-pkl only)")
    parser.add_argument(
        "--out", help="folder for metrics.json, the figures and report.md (default: eval/ beside the weights)"
    )
    add_predict_options(parser)
    parser.add_argument(
        "--export",
        metavar="PATH.pt2",
        help="write the model, its normalization included, as a torch.export program (uint8 images in, logits out)",
    )
    parser.add_argument("--wandb", choices=WANDB_MODES, help="W&B mode for the report (default: the training run's)")
    parser.add_argument(
        "--wandb-eval",
        choices=WANDB_EVAL_TARGETS,
        help="log into the training's W&B run (train) or a new job_type=eval run (new); default: the run's wandb_eval",
    )
    return check_tasks(parser, parser.parse_args(argv))


def add_predict_options(parser: Parser) -> None:
    """--predict and the options that go with it."""
    parser.add_argument(
        "--predict", nargs="+", metavar="IMAGE", help="classify these image files or folders of images instead"
    )
    parser.add_argument(
        "--prepare",
        choices=PREPARATIONS,
        help="with --predict: none takes each image as it is (it must have the dataset's size and channels), "
        "photo crops, inverts and centres it like MNIST's digits, auto (default) takes an image in the dataset's "
        "format (28x28 grayscale, light on black) as it is and prepares any other as a photo",
    )
    parser.add_argument("--json", action="store_true", help="with --predict: print the results as JSON")


def check_tasks(parser: Parser, args: argparse.Namespace) -> argparse.Namespace:
    """One task per call: a report, --predict (with or without --json and --prepare), or --export."""
    if args.export and args.predict:
        parser.error("--export and --predict are two tasks: run evaluate.py once for each")
    if args.json and not args.predict:
        parser.error("--json goes with --predict (the evaluation report is written to metrics.json)")
    if args.prepare and not args.predict:
        parser.error("--prepare goes with --predict (the report and --export take the dataset's own images)")
    return args


def load(checkpoint: str) -> TrainedModel:
    """The trained model every task starts from. Where a run has no final weights, the line that says
    which weights are used and why goes to stderr (stdout may be --json's), from the main process only."""
    from mnist_dist.evaluate.trained_model import load_trained  # torch loads from here on

    trained = load_trained(checkpoint)
    if trained.note and os.environ.get("RANK", "0") == "0":
        print(f"note: {trained.note}", file=sys.stderr, flush=True)
    return trained


def classify_files(args: argparse.Namespace) -> int:
    """`--predict`: the top classes of each image file; 0, or 2 when any file could not be classified."""
    from mnist_dist.evaluate.classify import classify  # torch loads from here on (accelerate never does)

    return classify(load(args.checkpoint), args.predict, args.json, args.prepare or "auto")


def export_file(args: argparse.Namespace) -> int:
    """`--export`: the model and its normalization as a torch.export program."""
    from mnist_dist.evaluate.export import export_program  # torch loads only from here on

    trained = load(args.checkpoint)
    export_program(trained, Path(args.export))
    info = trained.info
    print(
        f"exported {trained.weights_path} to {args.export}: torch.export.load(path).module() takes uint8 images "
        f"(N, {info.channels}, {info.height}, {info.width}) in the dataset's format, as they are (photos are not "
        "cropped or centred: docs/EVALUATION.md), and returns logits"
    )
    return 0


def default_out_dir(weights_path: Path, trained_on: str, dataset: str, split: str) -> Path:
    """eval/ beside the weights; another dataset or split gets its own folder (eval-mnist-train/). A
    checkpoint's report goes into its run's folder, under the checkpoint's name (runs/<name>/eval/step-000300/),
    never inside checkpoints/: the trainer replaces and prunes those folders, a report with them."""
    suffix = ("" if dataset == trained_on else f"-{dataset}") + ("" if split == "test" else f"-{split}")
    folder = weights_path.parent
    if folder.parent.name == "checkpoints":  # runs/<name>/checkpoints/step-000300/model.safetensors
        return folder.parent.parent / f"eval{suffix}" / folder.name
    return folder / f"eval{suffix}"


def evaluation_config(trained: Config, args: argparse.Namespace, dataset: str) -> Config:
    """The training config with this evaluation's dataset, data files and batch size where given."""
    # Precision follows this machine (auto), not the training machine: fp16 from a GPU fails on a CPU.
    overrides = {
        "mixed_precision": "auto",
        "dataset": dataset,
        "data_dir": args.data_dir,
        # The trained run's mnist.pkl.gz goes with mnist-pkl only; another dataset reads no such file.
        "data_file": args.data_file or (trained.data_file if dataset == "mnist-pkl" else ""),
        "eval_batch_size": args.batch_size,
    }
    return dataclasses.replace(trained, **{key: value for key, value in overrides.items() if value is not None})


def evaluate_checkpoint(args: argparse.Namespace) -> None:
    """Predict the whole split on every rank; the main process reports. Always ends the process group."""
    from mnist_dist.data.datasets import load_dataset_main_first
    from mnist_dist.distributed import build_accelerator, write_on_main

    trained = load(args.checkpoint)
    dataset = args.dataset or trained.config.dataset
    info = trained.check_fits(dataset)  # before any data is loaded: a mismatch fails at once
    config = evaluation_config(trained.config, args, dataset)
    accelerator = build_accelerator(config)
    try:
        data = load_dataset_main_first(config, accelerator)
        split = {"test": data.test, "val": data.val, "train": data.train}[args.split]
        if split is None:
            raise UserError(f"{trained.weights_path} was trained with --val-size 0: no validation split to evaluate.")
        predictions = predict_every_sample(trained.model, split, trained.info, config, accelerator)
        about = {
            "checkpoint": str(trained.weights_path),
            "model": config.model,
            "trained_on": trained.config.dataset,
            "dataset": dataset,
            "split": args.split,
        }
        out_dir = Path(args.out or default_out_dir(trained.weights_path, trained.config.dataset, dataset, args.split))
        # Every rank holds the whole split's predictions; the main process reports, and a failed
        # write of the report ends every rank together (no rank waits for one that has gone).
        wandb = {"into": args.wandb_eval, "mode": args.wandb}  # None: the training run's choice
        write_on_main(
            accelerator, lambda: report(trained, about, info.class_names, predictions, split.images, out_dir, **wandb)
        )
    finally:
        accelerator.end_training()  # also destroys the process group


def predict_every_sample(
    model: torch.nn.Module, split: ImageSet, trained_on: DatasetInfo, config: Config, accelerator: Accelerator
) -> SplitPredictions:
    """The per-sample predictions of the whole split, on every rank; each rank runs its own batches."""
    import torch

    from mnist_dist.data.images import Normalizer
    from mnist_dist.data.sharding import eval_shard
    from mnist_dist.evaluate.exact import predict_split

    shard = eval_shard(split, config.eval_batch_size, accelerator.process_index, accelerator.num_processes, 0)
    if config.channels_last:  # the layout the trainer evaluated in, so the numbers match its own
        model = model.to(memory_format=torch.channels_last)
    model = accelerator.prepare_model(model, evaluation_mode=True)  # device and autocast, no DDP wrapper
    # The model's inputs are normalized as in training, with its training set's mean and std.
    return predict_split(model, shard, Normalizer(trained_on, accelerator.device), accelerator)


def report(
    trained: TrainedModel,
    about: dict[str, str],
    class_names: tuple[str, ...],
    predictions: SplitPredictions,
    images: torch.Tensor,
    out_dir: Path,
    *,
    into: str | None,
    mode: str | None,
) -> None:
    """Print the report, write metrics.json, the figures and report.md into `out_dir`, log them to W&B.

    `into` and `mode` are --wandb-eval and --wandb (None: the training run's choice).
    """
    from mnist_dist.evaluate import report as eval_report
    from mnist_dist.tracking.facts import git_state
    from mnist_dist.tracking.wandb_media import log_evaluation  # imports wandb only when logging

    # The code behind the numbers: the commit that trained the weights (their metadata) and the one that
    # evaluated them ("" when not known: an older weights file, or code that no git checkout tracks).
    commits = {"trained_git_commit": trained.trained_commit, "git_commit": "", **git_state()}
    metrics = eval_report.build_metrics(predictions, class_names, {**about, **commits})
    eval_report.print_report(metrics)
    written = eval_report.write_report(metrics, predictions, images, trained, out_dir)
    print(f"report written to {out_dir}/: {', '.join(written)}")
    figures = [out_dir / name for name in written if name.endswith(".png")]
    log_evaluation(
        trained.config, trained.weights_path, metrics, predictions, images, figures, out_dir, into=into, mode=mode
    )
