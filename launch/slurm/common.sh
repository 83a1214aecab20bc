# shellcheck shell=bash
# Sourced by the job scripts in this folder (`source launch/slurm/common.sh "$@"`): the run name,
# the rendezvous address, and preemption with requeue. Not a job script itself.
#
# Preemption, and the warning before the time limit, step by step (STOP_SIGNAL is USR1 unless
# changed, see below):
#   1. `#SBATCH --signal=B:USR1@120` makes SLURM send USR1 to the batch shell 120 s before it
#      stops the job (`scancel --signal=USR1 --batch JOB` does the same at once).
#   2. on_stop_signal (below) notes it and forwards it to the `srun` of the training step, which
#      passes it to every process of the step, on every node.
#   3. The training processes finish their step, agree to stop (within 10 steps), write a
#      checkpoint and exit with code 3 (train.py gets --stop-signals STOP_SIGNAL,TERM,INT).
#      torchrun passes SIGTERM, SIGINT and SIGHUP on to its workers (SIGQUIT is the dump signal, see
#      "Stack dumps" below), but SIGUSR1 would
#      kill torchrun itself (Python's default action), and its workers with it, mid-step. So the
#      GPU scripts start torchrun with the signal ignored (`trap ''` survives exec; the workers
#      inherit it until train.py installs its own handler): the workers get it straight from srun
#      and checkpoint while torchrun waits for them. (torchrun's --signals-to-handle SIGUSR1 would
#      instead shut the workers down itself, and kill them after --shutdown-timeout or as soon
#      as a second USR1 arrives.)
#   4. The step has ended after the signal, so `scontrol requeue $SLURM_JOB_ID` puts the job back
#      in the queue (an array task has its own job id: only that task is requeued). It starts again
#      with the same job id (SLURM_RESTART_COUNT + 1), running the script from the top, after
#      SLURM's cred_expire wait (120 s by default). The run name slurm-<job id> is the same, so
#      `--resume auto` continues from the checkpoint; the W&B run id is the same too; and the log
#      (--open-mode=append) holds both runs.
# `scancel` and the time limit send SIGTERM: the training processes checkpoint and exit 3 as
# well, but the job is not requeued (submit it again with the same --run-name to continue).
#
# The stop signal. NCCL and some container runtimes use SIGUSR1 themselves (submitit moved to USR2
# for this reason). One variable chooses it: SBATCH_SIGNAL, which sbatch reads in place of the
# script's `#SBATCH --signal` line and which the job inherits, so the forwarding, the ignoring in
# torchrun and train.py's --stop-signals all follow it:
#   SBATCH_SIGNAL=B:USR2@120 sbatch launch/slurm/cpu.sbatch ...
# Without it, the script's own #SBATCH --signal line decides.
signal_spec="${SBATCH_SIGNAL:-$(sed -n 's/^#SBATCH --signal=//p' "$0" | head -n 1)}"
signal_spec="${signal_spec#*:}"  # B:USR2@120 -> USR2@120 (B: only the batch shell, R: reservation)
STOP_SIGNAL="${signal_spec%@*}"
STOP_SIGNAL="${STOP_SIGNAL#SIG}"
export STOP_SIGNAL="${STOP_SIGNAL:-USR1}"
if [[ $STOP_SIGNAL != USR1 && $STOP_SIGNAL != USR2 ]]; then
    # TERM is what scancel and the time limit send, which this script must not requeue on.
    echo "error: the stop signal must be USR1 or USR2, not '$STOP_SIGNAL': set SBATCH_SIGNAL=B:USR2@120 or fix #SBATCH --signal" >&2
    exit 2
fi

# Stack dumps (docs/CHECKPOINTS.md, "Stack dumps"): DUMP_SIGNAL (QUIT unless set; USR1, USR2 or HUP,
# not the stop signal) makes every training process write its threads' stacks and its step to
# runs/<name>/stacks/ and train on. Send it to the job's steps, where the training processes are:
#   scancel --signal=QUIT <job id>
# Not with --batch or --full: srun ends the step on SIGQUIT. torchrun's agent would take it as a stop
# of the whole job (it forwards it, then kills its workers after 30 s), so the GPU scripts start
# torchrun with it ignored (`trap ''`) and left out of the signals it handles (PET_SIGNALS_TO_HANDLE,
# its --signals-to-handle); the workers get it straight from SLURM, as the stop signal.
export DUMP_SIGNAL="${DUMP_SIGNAL:-QUIT}"
DUMP_SIGNAL="${DUMP_SIGNAL#SIG}"
if [[ ! $DUMP_SIGNAL =~ ^(QUIT|USR1|USR2|HUP)$ || $DUMP_SIGNAL == "$STOP_SIGNAL" ]]; then
    echo "error: DUMP_SIGNAL must be QUIT, USR1, USR2 or HUP and not the stop signal ($STOP_SIGNAL), not '$DUMP_SIGNAL': unset it or set DUMP_SIGNAL=QUIT" >&2
    exit 2
fi
handled=SIGTERM,SIGINT,SIGHUP,SIGQUIT  # torchrun's default --signals-to-handle, less the dump signal
handled="${handled/SIG$DUMP_SIGNAL/}"
handled="${handled//,,/,}"
handled="${handled#,}"
export PET_SIGNALS_TO_HANDLE="${handled%,}"
# train.py's signal options: the stop signals and the dump signal.
# shellcheck disable=SC2034  # used by the job scripts
STOP_ARGS=(--stop-signals "$STOP_SIGNAL,TERM,INT" --dump-signal "$DUMP_SIGNAL")

# In a container without SLURM's commands the job cannot requeue itself; it can still be resumed.
can_requeue=1
if ! command -v scontrol >/dev/null; then
    can_requeue=0
    echo "warning: scontrol is not in this job's environment (a container?): after $STOP_SIGNAL the job cannot requeue itself; the run stays resumable by submitting it again" >&2
fi

step_pid=""   # the training step's srun, once started
preempted=0   # the stop signal arrived
caught=0      # a trapped signal interrupted `wait`

on_stop_signal() {
    caught=1
    preempted=1
    echo "$(date -Is) $STOP_SIGNAL (preemption): asking the training processes to checkpoint and stop"
    if [[ -n $step_pid ]]; then
        kill -s "$STOP_SIGNAL" "$step_pid" 2>/dev/null || true
    fi
}

on_term() {
    # SLURM signals the training processes too. Staying alive until they exit lets them
    # checkpoint (within KillWait); the job would end, and kill them, with the batch shell.
    caught=1
    echo "$(date -Is) SIGTERM (cancelled, out of time or requeued): waiting for the training processes"
}

trap on_stop_signal "$STOP_SIGNAL"
trap on_term TERM

if [[ ! -x .venv/bin/python ]]; then
    echo "error: $PWD has no .venv: set it up first (bash scripts/setup.sh), on a filesystem every node sees" >&2
    exit 2
fi

# train.py's arguments: first a run name from the job id, which a requeued job keeps, so that it
# finds its checkpoints in runs/slurm-<job id>; a --run-name or --run-dir of yours comes later
# and wins.
# shellcheck disable=SC2034  # used by the job scripts
TRAINING_ARGS=("${STOP_ARGS[@]}" --run-name "slurm-${SLURM_JOB_ID}" "$@")
# What to submit again to continue, when the job cannot requeue itself (sweep.sbatch changes it).
RESUME_HINT="submit again with --run-name slurm-$SLURM_JOB_ID"

# One W&B run per job, continued after a requeue; set WANDB_RUN_ID yourself to choose it.
export WANDB_RUN_ID="${WANDB_RUN_ID:-${SLURM_CLUSTER_NAME:-slurm}-${SLURM_JOB_ID}}"
export WANDB_RESUME="${WANDB_RESUME:-allow}"

# Rendezvous: the job's first node hosts it, on a port chosen from the job id (jobs sharing a
# node differ; a requeued job reuses its port, its old processes being gone).
if ((can_requeue)); then
    mapfile -t JOB_NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
else
    JOB_NODES=("${SLURMD_NODENAME:-localhost}")  # right on one node; several need scontrol (or set MASTER_ADDR)
fi
export MASTER_ADDR="${MASTER_ADDR:-${JOB_NODES[0]}}"
export MASTER_PORT="$((20000 + SLURM_JOB_ID % 10000))"

# srun needs --cpus-per-task spelled out: since SLURM 22.05 a step no longer inherits the
# job's value and would give each task 1 CPU.
SRUN_CPUS=()
if [[ -n ${SLURM_CPUS_PER_TASK:-} ]]; then
    # shellcheck disable=SC2034  # used by the job scripts
    SRUN_CPUS=(--cpus-per-task="$SLURM_CPUS_PER_TASK")
fi

# PyTorch's NCCL flight recorder, for the GPU scripts (torch 2.14's names; gloo reads none of them):
#   TORCH_FR_BUFFER_SIZE=2000      each rank keeps a ring of its last 2000 collective events (what, on
#                                  which group, sizes, state: scheduled, started, completed); 0 turns
#                                  the recorder off. Older name: TORCH_NCCL_TRACE_BUFFER_SIZE.
#   TORCH_NCCL_DUMP_ON_TIMEOUT=1   when a collective times out (or NCCL fails), each rank writes that
#                                  ring to a file before the process ends.
#   TORCH_FR_DUMP_TEMP_FILE        the file's prefix, + the rank; train.py points it into the run
#                                  folder, runs/<name>/stacks/flight-recorder/nccl_trace_rank_<rank>,
#                                  unless you set it (older name: TORCH_NCCL_DEBUG_INFO_TEMP_FILE).
# `torchfrtrace runs/<name>/stacks/flight-recorder` then says which rank never joined which collective.
flight_recorder_on() {
    export TORCH_FR_BUFFER_SIZE="${TORCH_FR_BUFFER_SIZE:-2000}"
    export TORCH_NCCL_DUMP_ON_TIMEOUT="${TORCH_NCCL_DUMP_ON_TIMEOUT:-1}"
}

# For torchrun: one process per GPU of the node (or NPROC_PER_NODE), each with its share of the
# task's cores.
set_processes_per_node() {
    export NPROC_PER_NODE="${NPROC_PER_NODE:-${SLURM_GPUS_ON_NODE:-}}"
    if [[ -z $NPROC_PER_NODE || $NPROC_PER_NODE == 0 ]]; then
        echo "error: this job has no GPUs: request them with --gpus-per-node, or set NPROC_PER_NODE" >&2
        exit 2
    fi
    local threads=$((${SLURM_CPUS_PER_TASK:-1} / NPROC_PER_NODE))
    export OMP_NUM_THREADS=$((threads > 0 ? threads : 1))
}

# Run the training step (the command in "$@") in the background, so that the traps run while it
# does, and end the job: 0 when training finished; after the stop signal, requeue; else the step's status.
run_training_step() {
    echo "$(date -Is) job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST: train.py ${TRAINING_ARGS[*]}"
    "$@" &
    step_pid=$!
    local status
    while :; do
        caught=0
        status=0
        wait "$step_pid" || status=$?
        # A trapped signal makes `wait` return early (status > 128): wait on for the real status.
        ((status > 128 && caught)) || break
    done
    step_pid=""
    if ((status == 0)); then
        echo "$(date -Is) training finished"
        exit 0
    fi
    if ((preempted && !can_requeue)); then
        echo "error: cannot requeue job $SLURM_JOB_ID: scontrol is not in this job's environment; the run is resumable: $RESUME_HINT" >&2
    elif ((preempted)); then
        echo "$(date -Is) training step ended (exit $status) after $STOP_SIGNAL: requeueing job $SLURM_JOB_ID"
        if scontrol requeue "$SLURM_JOB_ID"; then
            exit 0
        fi
        echo "error: scontrol requeue failed; $RESUME_HINT to resume" >&2
    fi
    echo "$(date -Is) training step exited with $status" >&2
    exit "$status"
}
