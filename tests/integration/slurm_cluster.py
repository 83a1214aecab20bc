"""A real one-node SLURM cluster for tests: munged, slurmctld and slurmd, all state in one folder.

Built from Debian's `slurm-wlm` and `munge` packages (SLURM 22.05). The daemons run in the
foreground as children of the test process, each with its own socket, ports, spool and logs, so
they never touch a system SLURM or munge; `stop()` ends exactly those daemons, and then any job
process they left behind (with proctrack/linuxproc a job's processes are not in a cgroup and can
outlive slurmd).

    cluster = SlurmCluster(tmp_path).start()
    job = cluster.sbatch(["launch/slurm/cpu.sbatch", "--dataset", "digits"], ["--ntasks=2"], cwd=REPO)
    cluster.wait_for_job(job, {"COMPLETED"})
    cluster.stop()
"""

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
from helpers import free_port, skip_unless_required

PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "sinfo")
FINISHED = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
}
# The node has 2 CPUs whatever the machine has (fewer if it has fewer): the smallest node a user
# meets, on which the CPU job scripts must start as written (a larger request pends for ever).
NODE_CPUS = min(2, os.cpu_count() or 1)
# Why a pending job can never start on this cluster (its request is larger than the node).
NEVER_STARTS = {"PartitionConfig", "PartitionNodeLimit", "BadConstraints"}
# Marks every process of this cluster (daemons, job steps, training processes) in its environment.
MARKER = "MNIST_DIST_TEST_SLURM"


def skip_or_fail(reason: str) -> None:
    """Skip, unless CI asked for these tests (MNIST_DIST_REQUIRE_SLURM=1): then fail."""
    skip_unless_required(reason, "MNIST_DIST_REQUIRE_SLURM")


def missing_programs() -> list[str]:
    return [name for name in PROGRAMS if shutil.which(name) is None and not Path("/usr/sbin", name).exists()]


def program(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def memory_mb() -> int:
    return psutil.virtual_memory().total // 2**20


class SlurmCluster:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.conf = self.folder / "slurm.conf"
        self.host = socket.gethostname().split(".")[0]  # what slurmd calls this node
        self.daemons: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "SLURM_CONF": str(self.conf), MARKER: str(self.folder)}

    def start(self, timeout: float = 60) -> "SlurmCluster":
        try:
            self._start_munge()
            self._write_conf()
            self._spawn("slurmctld", [program("slurmctld"), "-D", "-i", "-f", str(self.conf)])
            self._wait(lambda: self._succeeds("scontrol", "ping"), timeout, "slurmctld to answer")
            self._spawn("slurmd", [program("slurmd"), "-D", "-N", self.host, "-f", str(self.conf)])
            self._wait(lambda: self.node_state() == "idle", timeout, f"node {self.host} to be idle")
        except BaseException:
            self.stop()
            raise
        return self

    def _start_munge(self) -> None:
        munge = self.folder / "munge"
        munge.mkdir(mode=0o700, parents=True)
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.socket = munge / "munge.socket"
        self._spawn(
            "munged",
            [
                program("munged"),
                "--foreground",
                "--force",
                f"--socket={self.socket}",
                f"--key-file={key}",
                f"--pid-file={munge / 'munged.pid'}",
                f"--log-file={munge / 'munged.log'}",
                f"--seed-file={munge / 'munged.seed'}",
            ],
        )
        self._wait(self.socket.exists, 20, "munged's socket")

    def _write_conf(self) -> None:
        for name in ("state", "spool", "log"):
            (self.folder / name).mkdir()
        log = self.folder / "log"
        self.conf.write_text(f"""\
ClusterName=mnisttest
# Job ids, and so the job scripts' rendezvous ports, differ from another test cluster's.
FirstJobId={random.randint(1, 9000)}
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job waits cred_expire seconds before it may run again (default 120).
AuthInfo=socket={self.socket},cred_expire=10
StateSaveLocation={self.folder / "state"}
SlurmdSpoolDir={self.folder / "spool"}
SlurmctldPidFile={self.folder / "slurmctld.pid"}
SlurmdPidFile={self.folder / "slurmd.pid"}
SlurmctldLogFile={log / "slurmctld.log"}
SlurmdLogFile={log / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
MailProg=/bin/true
KillWait=10
# Schedule pending jobs (a requeued one, once its wait is over) within a second or two.
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={NODE_CPUS} RealMemory={memory_mb() * 9 // 10} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")

    def _spawn(self, name: str, command: list[str]) -> None:
        log = (self.folder / f"{name}.out").open("w")
        self.daemons[name] = subprocess.Popen(
            command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for name, daemon in self.daemons.items():
                if daemon.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited with {daemon.returncode} while waiting for {what}:\n{self.logs()}"
                    )
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}:\n{self.logs()}")
            time.sleep(0.2)

    def _succeeds(self, *command: str) -> bool:
        return subprocess.run(command, env=self.env, capture_output=True).returncode == 0

    def logs(self) -> str:
        parts = []
        for path in sorted(self.folder.glob("*.out")) + sorted((self.folder / "log").glob("*.log")):
            parts.append(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-30:]))
        return "\n".join(parts)

    def command(self, *command: str, timeout: float = 30) -> str:
        result = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} exited {result.returncode}: {result.stderr.strip()}")
        return result.stdout

    def node_state(self) -> str:
        result = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=self.env, capture_output=True, text=True)
        return result.stdout.strip()

    def sbatch(self, command: list[str], options: list[str], cwd: Path, env: dict | None = None) -> int:
        """Submit `sbatch OPTIONS SCRIPT ARGS...` from cwd; returns the job id."""
        environment = {**self.env, **(env or {})}
        result = subprocess.run(
            ["sbatch", "--parsable", *options, *map(str, command)],
            cwd=cwd,
            env=environment,
            capture_output=True,
            text=True,
            timeout=30,
        )
        if result.returncode != 0:
            raise RuntimeError(f"sbatch exited {result.returncode}: {result.stderr.strip()}")
        return int(result.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """scontrol's record of the job: JobState, Restarts, ExitCode, ..."""
        line = self.command("scontrol", "show", "job", "-o", str(job_id))
        return dict(re.findall(r"(\w+)=(\S*)", line))

    def wait_for_job(self, job_id: int, states: set[str], timeout: float = 120, poll: float = 0.5) -> dict[str, str]:
        """Wait until the job reaches one of `states`; a finished job in another state is an error."""
        deadline = time.monotonic() + timeout
        while True:
            record = self.job(job_id)
            if record["JobState"] in states:
                return record
            if record["JobState"] == "PENDING" and record.get("Reason") in NEVER_STARTS:
                raise AssertionError(
                    f"job {job_id} can never start on this {NODE_CPUS}-CPU node: PENDING ({record['Reason']})"
                )
            if record["JobState"] in FINISHED:
                raise AssertionError(
                    f"job {job_id} ended {record['JobState']} (exit {record.get('ExitCode')}), not {states}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"job {job_id} still {record['JobState']} ({record.get('Reason')}) after {timeout} s, not {states}"
                )
            time.sleep(poll)

    def stop(self) -> None:
        """Cancel every job, stop the daemons this object started (by pid), then their leftovers."""
        if "slurmctld" in self.daemons and self.daemons["slurmctld"].poll() is None:
            subprocess.run(["scancel", "--full", "--user", "root"], env=self.env, capture_output=True, timeout=30)
            subprocess.run(["scancel", "--user", "root"], env=self.env, capture_output=True, timeout=30)
        for name in ("slurmd", "slurmctld", "munged"):
            daemon = self.daemons.pop(name, None)
            if daemon is not None and daemon.poll() is None:
                daemon.terminate()
                try:
                    daemon.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait()
        leftovers = leftover_processes(str(self.folder))
        for process in leftovers:
            try:
                process.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass
        psutil.wait_procs(leftovers, timeout=10)


def leftover_processes(marker: str) -> list[psutil.Process]:
    """Processes (other than this one) whose environment says they belong to the cluster `marker`."""
    found = []
    for process in psutil.process_iter():
        try:
            if (
                process.pid != os.getpid()
                and process.status() != psutil.STATUS_ZOMBIE
                and process.environ().get(MARKER) == marker
            ):
                found.append(process)
        except psutil.Error:
            pass
    return found
