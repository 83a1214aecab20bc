"""Sweeps without a W&B server: the commands launch/slurm/sweep.sbatch runs for each array task, and
the summary of a sweep's runs.

    python -m mnist_dist.sweep size launch/wandb/grid.yaml          # 6: submit with --array=0-5
    python -m mnist_dist.sweep name launch/wandb/grid.yaml          # the sweep's name: its runs go to runs/<name>/
    python -m mnist_dist.sweep args launch/wandb/grid.yaml 4        # point 4 as train.py flags, one per line
    python -m mnist_dist.sweep summarize runs/grid [--json] [--plot sweep.png]

Bad input ends in one `error:` line and exit 2, as train.py's does. No torch import: each task asks
for its point in a fraction of a second.
"""

import argparse
import json
from pathlib import Path

from mnist_dist.cli import Parser  # one-line errors naming the command, as train.py's
from mnist_dist.errors import UserError, report_error
from mnist_dist.sweep.spec import read_sweep, train_flags


def build_parser() -> Parser:
    parser = Parser(prog="python -m mnist_dist.sweep", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, about in (("size", "the number of points: the array size to submit"), ("name", "the sweep's name")):
        commands.add_parser(name, help=about).add_argument("sweep_file")
    args = commands.add_parser("args", help="one point's train.py flags, one per line")
    args.add_argument("sweep_file")
    args.add_argument("index", type=int, help="the array task id, 0 to size - 1")
    summarize = commands.add_parser("summarize", help="a table of a sweep's runs, best first")
    summarize.add_argument("folder", help="the sweep folder, runs/<sweep name>")
    summarize.add_argument(
        "--json", action="store_true", help="print the rows as JSON instead of a table (the PNG is drawn all the same)"
    )
    summarize.add_argument(
        "--plot", metavar="PNG", help="where to draw the metric against each parameter (default: <folder>/sweep.png)"
    )
    return parser


def run(args: argparse.Namespace) -> None:
    if args.command == "summarize":
        summarize(Path(args.folder), args.json, args.plot)
        return
    sweep = read_sweep(args.sweep_file)
    if args.command == "size":
        print(sweep.size)
    elif args.command == "name":
        print(sweep.name)
    else:
        print("\n".join(train_flags(sweep.point(args.index))))


def summarize(folder: Path, as_json: bool, plot_path: str | None) -> None:
    """The table (or JSON) of the sweep's runs, and its PNG: where it was drawn, or why none was."""
    from mnist_dist.sweep.plot import plot, why_no_plot
    from mnist_dist.sweep.status import read_sweep_folder, show_table
    from mnist_dist.tracking.console import whole_line_console  # rich and matplotlib load only for the summary

    sweep, rows = read_sweep_folder(folder)
    no_plot = why_no_plot(sweep, rows)
    picture = None if no_plot else plot(sweep, rows, Path(plot_path) if plot_path else folder / "sweep.png")
    if as_json:
        report = {"sweep": sweep.name, "metric": sweep.metric, "plot": picture and str(picture), "no_plot": no_plot}
        print(json.dumps(report | {"runs": rows}, indent=2, default=str))  # str: a date a config.yaml holds
        return
    show_table(sweep, rows, whole_line_console())
    print(f"plot: {picture}" if picture else f"no plot: {no_plot}")


def main(argv: list[str] | None = None) -> int:
    try:
        run(build_parser().parse_args(argv))
    except UserError as error:
        report_error(error)
        return error.exit_code
    return 0
