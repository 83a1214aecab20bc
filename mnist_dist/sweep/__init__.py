"""Sweeps without a W&B server: a sweep file expanded into numbered points, the commands that
launch/slurm/sweep.sbatch runs for each array task (`python -m mnist_dist.sweep`), and the status
table of a sweep's runs read from their folders, with its PNG (plot.py).

May import: anything in the package (it sits at the top, with the commands). Nothing is imported
here, so `--help` answers without torch.
"""
