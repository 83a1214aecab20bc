"""`python -m mnist_dist.check`: is this launch sound? Run under the launcher of a job (torchrun,
accelerate launch, srun, launch/slurm/check.sbatch), before the job: every rank as the launcher set it
and as the group formed, an all-reduce of known values at several sizes (its sums, latency and bus
bandwidth), the training shards of the dataset, the real trainer's steps on N processes against the
same steps on one, and each rank's time per step. One table, exit 0 when all hold, 1 and one line
naming the check that failed.

May import: anything in the package (it sits at the top, with the commands). Nothing is imported
here, so `--help` answers without torch.
"""
