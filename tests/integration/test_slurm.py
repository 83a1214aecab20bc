"""The SLURM job scripts in launch/slurm/ on a real one-node SLURM cluster.

The module starts munged, slurmctld and slurmd from Debian's `munge` and `slurm-wlm` packages in a
temporary folder (slurm_cluster.py), submits the scripts with `sbatch` exactly as a user would,
from the repository root, and stops every daemon it started at the end. Without the packages (or
without root) the tests skip and say why; with MNIST_DIST_REQUIRE_SLURM=1 (CI) they fail instead.

Preemption is simulated as SLURM does it before a time limit or a preemption: USR1 to the job.
The requeued job must resume from the checkpoint and end with exactly the weights of an
uninterrupted job (--deterministic, the same seed and world size).
"""

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from helpers import REPO, assert_same_weights, deterministic_args, metrics_rows, summary
from slurm_cluster import FINISHED, SlurmCluster, skip_or_fail

SCRIPTS = REPO / "launch" / "slurm"
# 240 optimizer steps of 2 x 32 samples inside the first epoch, a checkpoint every 40: about 5 s of
# training on 2 cores, after about 10 s of start-up.
ARGS = deterministic_args(240, "--checkpoint-every", "40")
WEIGHTS_DIFFER = "weights differ from the uninterrupted job"


class Job:
    """One sbatch submission of a script in launch/slurm/, with its run dir and log: options None
    submits the script as written (no sbatch option), its log where its #SBATCH --output puts it."""

    def __init__(
        self, cluster: SlurmCluster, script: str, folder: Path, data_dir: Path, options=None, extra=(), env=None
    ):
        self.cluster = cluster
        self.run_dir = folder / "run"
        command = [f"launch/slurm/{script}", *ARGS, "--data-dir", data_dir, "--run-dir", self.run_dir, *extra]
        # Unbuffered: the log shows how far a job got. No W&B account: offline or disabled only.
        environment = {"PYTHONUNBUFFERED": "1", "WANDB_API_KEY": "", **(env or {})}
        if options is not None:
            options = [f"--output={folder / 'job.out'}", *options]
        self.id = cluster.sbatch(command, options or [], cwd=REPO, env=environment)
        self.log = Path(cluster.job(self.id)["StdOut"])  # with sbatch's %x and %j filled in

    def wait_for_file(self, path: Path, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        next_check = 0.0
        while not path.exists():
            now = time.monotonic()
            if now > deadline:
                pytest.fail(f"{path} did not appear in {timeout} s; job log:\n{self.output()}")
            if now > next_check:  # scontrol costs a round trip: ask about once a second
                state = self.cluster.job(self.id)["JobState"]
                assert state not in FINISHED, f"job {self.id} is {state}:\n{self.output()}"
                next_check = now + 1
            time.sleep(0.05)

    def wait_until_completed(self, timeout: float = 150) -> dict[str, str]:
        try:
            return self.cluster.wait_for_job(self.id, {"COMPLETED"}, timeout)
        except (AssertionError, TimeoutError) as error:
            pytest.fail(f"{error}\njob log:\n{self.output()}\n{self.cluster.logs()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else "(no log)"

    def summary(self) -> dict:
        return summary(self.run_dir)


@pytest.fixture(scope="module")
def uninterrupted(cluster, data_dir, tmp_path_factory) -> Job:
    """cpu.sbatch as written (2 tasks x 1 CPU, its log in slurm-logs/), not interrupted: the
    reference for the preempted jobs, which ask for 2 tasks x 1 CPU themselves."""
    job = Job(cluster, "cpu.sbatch", tmp_path_factory.mktemp("uninterrupted"), data_dir)
    try:
        job.wait_until_completed()
        yield job
    finally:
        job.log.unlink(missing_ok=True)  # the log is in the repository's slurm-logs/: leave it as it was


def test_job_scripts_pass_bash_n_and_shellcheck():
    scripts = sorted(SCRIPTS.glob("*.sbatch")) + [SCRIPTS / "common.sh"]
    assert len(scripts) == 6
    for script in scripts:
        result = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
        assert result.returncode == 0, f"bash -n {script.name}: {result.stderr}"
    if shutil.which("shellcheck") is None:
        skip_or_fail("bash -n passed; shellcheck is not installed (apt-get install shellcheck)")
    # -x follows `source launch/slurm/common.sh`, resolved from the repository root.
    result = subprocess.run(
        ["shellcheck", "-x", *(str(s.relative_to(REPO)) for s in scripts)], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


def test_every_job_script_logs_into_the_kept_slurm_logs_folder():
    # sbatch does not create the --output folder: a job whose folder is missing fails with no log.
    outputs = {
        script.name: re.findall(r"^#SBATCH --output=(.*)$", script.read_text(), re.M)
        for script in SCRIPTS.glob("*.sbatch")
    }
    assert all(len(found) == 1 and found[0].startswith("slurm-logs/") for found in outputs.values()), outputs
    assert (REPO / "slurm-logs").is_dir()


def test_cpu_sbatch_as_written_starts_on_a_two_cpu_node_and_logs_in_slurm_logs(uninterrupted):
    # No sbatch option: the #SBATCH lines alone must fit the smallest node (a larger request stays
    # PENDING (PartitionConfig), which the wait reports at once), and the log must land in the ignored
    # slurm-logs/ folder, not in the repository root.
    job = uninterrupted
    assert job.log.parent == REPO / "slurm-logs" and job.log.name == f"mnist-cpu-{job.id}.out"
    assert subprocess.run(["git", "check-ignore", "-q", job.log], cwd=REPO).returncode == 0, "log not in .gitignore"
    summary = job.summary()
    assert summary["world_size"] == 2 and summary["steps"] == 240
    assert summary["test_accuracy"] > 0.5
    assert (job.run_dir / "model.safetensors").is_file()
    rows = metrics_rows(job.run_dir)
    assert {row["type"] for row in rows} == {"step", "epoch", "ranks"}
    # The default run name comes from the job id, which a requeued job keeps.
    assert f"run_name: slurm-{job.id}" in (job.run_dir / "config.yaml").read_text()
    assert "training finished" in job.output()


def preempt_and_resume(cluster, job, uninterrupted, target: str) -> str:
    """USR1 (scancel --full: every process, --batch: the batch shell) once the job has a checkpoint;
    the job must checkpoint, requeue once, resume, and end with the uninterrupted run's weights."""
    job.wait_for_file(job.run_dir / "checkpoints" / "step-000040" / "COMPLETE")
    cluster.command("scancel", "--signal=USR1", target, str(job.id))
    record = job.wait_until_completed()
    log = job.output()
    assert record["Restarts"] == "1", log
    assert re.search(r"stopped by SIGUSR1 after step \d+: checkpoint .* written", log), log
    assert f"resumed from {job.run_dir / 'checkpoints'}/step-" in log
    assert job.summary()["world_size"] == 2
    assert_same_weights(job.run_dir, uninterrupted.run_dir, WEIGHTS_DIFFER)
    return log


def test_usr1_to_the_job_checkpoints_requeues_and_resumes_to_identical_weights(
    cluster, uninterrupted, data_dir, tmp_path
):
    job = Job(cluster, "cpu.sbatch", tmp_path, data_dir, ["--ntasks=2", "--cpus-per-task=1"])
    # What SLURM does before a preemption or the time limit (#SBATCH --signal), at once: USR1
    # to the batch shell and to every process of the job.
    log = preempt_and_resume(cluster, job, uninterrupted, "--full")
    assert f"requeueing job {job.id}" in log
    assert f"job {job.id} (restart 1)" in log  # --open-mode=append: both runs in one log


def test_torchrun_script_passes_usr1_to_its_workers_and_resumes_the_same_wandb_run(
    cluster, uninterrupted, data_dir, tmp_path
):
    # multi_node.sbatch on this one node, 2 CPU processes instead of GPUs. USR1 goes to the batch
    # shell only, as `#SBATCH --signal=B:USR1@120` sends it: the script must forward it to the
    # workers, and torchrun (which USR1 would kill) must survive it.
    job = Job(
        cluster,
        "multi_node.sbatch",
        tmp_path,
        data_dir,
        ["--nodes=1", "--gpus-per-node=0", "--cpus-per-task=2"],
        ["--wandb", "offline"],
        env={"NPROC_PER_NODE": "2"},
    )
    log = preempt_and_resume(cluster, job, uninterrupted, "--batch")
    assert "exitcode  : 3" in log  # torchrun outlived USR1 and saw its workers stop after the checkpoint
    # Both runs of the job logged to one W&B run, whose id comes from the job id.
    offline_runs = sorted((job.run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 2, offline_runs
    assert all(path.name.endswith(f"-mnisttest-{job.id}") for path in offline_runs), offline_runs


def test_single_node_script_runs_one_torchrun_process_per_device(cluster, uninterrupted, data_dir, tmp_path):
    # 2 CPU processes stand in for the GPUs this test cluster does not have.
    job = Job(
        cluster,
        "single_node.sbatch",
        tmp_path,
        data_dir,
        ["--gpus-per-node=0", "--cpus-per-task=2"],
        env={"NPROC_PER_NODE": "2"},
    )
    job.wait_until_completed()
    assert job.summary()["world_size"] == 2
    assert_same_weights(job.run_dir, uninterrupted.run_dir, WEIGHTS_DIFFER)


def test_gpu_script_without_gpus_fails_with_a_clear_message(cluster, data_dir, tmp_path):
    job = Job(cluster, "single_node.sbatch", tmp_path, data_dir, ["--gpus-per-node=0", "--cpus-per-task=1"])
    record = cluster.wait_for_job(job.id, {"FAILED"}, timeout=60)
    assert record["ExitCode"] == "2:0"
    assert "error: this job has no GPUs: request them with --gpus-per-node, or set NPROC_PER_NODE" in job.output()


def test_an_error_of_every_rank_under_srun_is_said_once(cluster, data_dir, tmp_path):
    # srun starts the 2 tasks itself (cpu.sbatch): whichever meets the bad option first says it, and
    # --kill-on-bad-exit ending the other cannot swallow the line (errors.report_error, issue 26).
    job = Job(cluster, "cpu.sbatch", tmp_path, data_dir, extra=["--optimizer", "sgdd"])
    try:
        record = cluster.wait_for_job(job.id, {"FAILED"}, timeout=90)
        # srun returns its tasks' highest exit code (128 + the signal of one that a signal ended): 2 when both
        # tasks met the option, 143 when --kill-on-bad-exit's SIGTERM ended the slower one first (a loaded machine).
        assert record["ExitCode"] in ("2:0", "143:0"), job.output()
        lines = [line for line in job.output().splitlines() if line.startswith("error: ")]
        assert len(lines) == 1 and "unknown optimizer 'sgdd'" in lines[0], job.output()
    finally:
        job.log.unlink(missing_ok=True)  # the repository's slurm-logs/ keeps no test's log


def test_a_job_of_two_tasks_stopped_and_submitted_again_with_one_task_resumes(cluster, data_dir, tmp_path):
    # USR1 to the job's steps only, not to the batch shell, which would requeue the job: the 2 tasks checkpoint
    # and exit 3 and the job ends; the same run submitted again on 1 task keeps the global batch
    # (2 x 32 -> 1 x 64) and goes on from there.
    for folder in ("first", "second"):
        (tmp_path / folder).mkdir()  # sbatch does not make its --output folder
    first = Job(cluster, "cpu.sbatch", tmp_path / "first", data_dir, ["--ntasks=2", "--cpus-per-task=1"])
    first.wait_for_file(first.run_dir / "checkpoints" / "step-000040" / "COMPLETE")
    cluster.command("scancel", "--signal=USR1", str(first.id))
    cluster.wait_for_job(first.id, {"FAILED"}, timeout=90)
    assert re.search(r"stopped by SIGUSR1 after step \d+: checkpoint .* written", first.output()), first.output()
    step = int((first.run_dir / "checkpoints" / "latest").read_text().strip().removeprefix("step-"))
    options = ["--ntasks=1", "--cpus-per-task=1"]
    second = Job(cluster, "cpu.sbatch", tmp_path / "second", data_dir, options, ["--run-dir", first.run_dir])
    second.wait_until_completed()
    assert f"from 2 processes to 1 at step {step})" in second.output(), second.output()
    summary = json.loads((first.run_dir / "summary.json").read_text())
    assert summary["world_size"] == 1 and summary["steps"] == 240
    assert summary["world_size_changes"] == [{"step": step, "from": 2, "to": 1}]
