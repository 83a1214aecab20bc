"""The cnn's training step under each lever of the MFU issue, side by side: which ones raise it.

    .venv/bin/python bench/step_levers.py [--repeats 3] [--out bench/results/step_levers.json]

Every lever is a change to the reference, the step as the trainer runs it on a CPU: the cnn, batch
512 (configs/fashion-93.yaml), channels_last, SGD with nesterov momentum (fused), float32, glibc's
malloc tuned (mnist_dist/train/allocator.py), 2 threads. Each case runs in a process of its own, since the
allocator's policy and the thread count belong to a process: a fixed batch, a warm-up, then timed
bursts of steps; samples/s is the median burst. The cases go round-robin, `--repeats` times, and each
figure is the median of its repeats, so that a slow spell of this shared machine falls on every case
alike. MFU is against the float32 matmul peak measured in the same run (train/peak.py over 3 s,
before and after the cases; the higher counts). Page faults are the process's minor faults per timed
step (getrusage): the kernel mapping and zeroing fresh pages.

The compiled cases use a cache folder of this run's own, so the first repeat compiles from nothing and
the later ones find inductor's cache, as a user's second run would; "first step" gives both.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.runs import machine, write_results  # noqa: E402

REFERENCE = {"allocator": True, "channels_last": True, "batch": 512, "threads": 2}
CASES = {  # name -> what differs from REFERENCE
    "reference (the trainer's step)": {},
    "glibc malloc's defaults": {"allocator": False},
    "NCHW (contiguous) layout": {"channels_last": False},
    "batch 256": {"batch": 256},
    "batch 1024": {"batch": 1024},
    "ReLU in place": {"inplace_relu": True},
    "first conv as unfold + matmul": {"unfold_first_conv": True},
    "oneDNN off (aten's own convolutions)": {"mkldnn": False},
    "1 thread": {"threads": 1},
    "torch.compile (inductor)": {"compile": "default"},
    "torch.compile max-autotune": {"compile": "max-autotune-no-cudagraphs"},
}
WARMUP_STEPS, BURST_SAMPLES, BURSTS = 10, 10_240, 5  # a burst: 20 steps at batch 512


def unfold_conv(conv):
    """A forward for a 1-channel 3x3 convolution as im2col + one matmul, its output channels_last; the
    same weights and the same arithmetic as conv's, in another order (float rounding)."""
    import torch
    import torch.nn.functional as F

    def forward(images: torch.Tensor) -> torch.Tensor:
        n, _, height, width = images.shape
        columns = F.unfold(images, 3, padding=conv.padding, stride=conv.stride)  # (N, 9, H' * W')
        out_h, out_w = (height + 1) // 2, (width + 1) // 2
        out = columns.transpose(1, 2) @ conv.weight.view(conv.out_channels, 9).t()  # (N, H' * W', C)
        return out.view(n, out_h, out_w, conv.out_channels).permute(0, 3, 1, 2)  # (N, C, H', W') channels_last

    return forward


def worker(case: dict) -> dict:
    """Run one case in this process; what it measured."""
    settings = {**REFERENCE, **case}
    if settings["allocator"]:
        from mnist_dist.train.allocator import keep_freed_memory

        keep_freed_memory()
    import torch
    import torch.nn.functional as F

    from mnist_dist.data.datasets import INFO
    from mnist_dist.models import build_model

    torch.set_num_threads(settings["threads"])
    torch.backends.mkldnn.enabled = settings.get("mkldnn", True)
    torch.manual_seed(0)
    layout = torch.channels_last if settings["channels_last"] else torch.contiguous_format
    model = build_model("cnn", INFO["fashion-mnist"]).to(memory_format=layout)
    if settings.get("inplace_relu"):
        for module in model.modules():
            if isinstance(module, torch.nn.ReLU):
                module.inplace = True
    if settings.get("unfold_first_conv"):
        model[0].forward = unfold_conv(model[0])
    forward = torch.compile(model, mode=settings["compile"]) if settings.get("compile") else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, fused=True)
    batch = settings["batch"]
    images = torch.randn(batch, 1, 28, 28).contiguous(memory_format=layout)
    labels = torch.randint(0, 10, (batch,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(forward(images), labels, label_smoothing=0.1).backward()
        optimizer.step()

    started = time.perf_counter()
    step()
    first_step = time.perf_counter() - started
    for _ in range(WARMUP_STEPS):
        step()
    steps = max(1, BURST_SAMPLES // batch)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    speeds = []
    for _ in range(BURSTS):
        started = time.perf_counter()
        for _ in range(steps):
            step()
        speeds.append(steps * batch / (time.perf_counter() - started))
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return {
        "samples_per_second": statistics.median(speeds),
        "faults_per_step": faults / (steps * BURSTS),
        "first_step_seconds": first_step,
    }


def run_case(case: dict, cache: str) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_CONF", "LD_PRELOAD"):
        env.pop(name, None)  # each case sets its own allocator policy
    process = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(case)], env=env, capture_output=True, text=True, check=False
    )
    if process.returncode != 0:
        raise RuntimeError(f"case {case} failed:\n{process.stderr[-2000:]}")
    return json.loads(process.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench/results/step_levers.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    import torch

    from mnist_dist.data.datasets import INFO
    from mnist_dist.models import build_model
    from mnist_dist.train.flops import training_flops_per_sample
    from mnist_dist.train.peak import matmul_peak

    flops = training_flops_per_sample(build_model("cnn", INFO["fashion-mnist"]), (1, 28, 28))
    before = matmul_peak(torch.device("cpu"), torch.float32, seconds=3.0)
    results: dict[str, list[dict]] = {name: [] for name in CASES}
    with tempfile.TemporaryDirectory() as cache:
        for repeat in range(args.repeats):
            for name, case in CASES.items():
                results[name].append(run_case(case, cache))
                print(f"repeat {repeat}: {name}: {results[name][-1]['samples_per_second']:,.0f} samples/s", flush=True)
    after = matmul_peak(torch.device("cpu"), torch.float32, seconds=3.0)
    peak = max(before, after)

    rows = []
    for name, runs in results.items():
        speed = statistics.median(run["samples_per_second"] for run in runs)
        rows.append(
            {
                "case": name,
                "settings": {**REFERENCE, **CASES[name]},
                "samples_per_second": speed,
                "mfu": speed * flops / peak,
                "faults_per_step": statistics.median(run["faults_per_step"] for run in runs),
                "first_step_seconds": [run["first_step_seconds"] for run in runs],
                "runs": runs,
            }
        )
    reference = rows[0]["samples_per_second"]
    print(
        f"{machine()}, torch {torch.__version__}; cnn {flops / 1e6:.3f} MFLOP a sample; "
        f"float32 matmul peak {before / 1e9:.1f} GFLOP/s before, {after / 1e9:.1f} after"
    )
    print(f"{'case':<40} {'samples/s':>10} {'vs ref':>7} {'MFU':>6} {'faults/step':>11}  first step (s)")
    for row in rows:
        firsts = ", ".join(f"{seconds:.1f}" for seconds in row["first_step_seconds"])
        print(
            f"{row['case']:<40} {row['samples_per_second']:>10,.0f} {row['samples_per_second'] / reference:>6.2f}x "
            f"{row['mfu']:>6.1%} {row['faults_per_step']:>11,.0f}  {firsts}"
        )
    write_results(
        {
            "machine": machine(),
            "torch": torch.__version__,
            "train_flops_per_sample": flops,
            "peak_flops_per_second": peak,
            "peak_before": before,
            "peak_after": after,
            "repeats": args.repeats,
            "cases": rows,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
