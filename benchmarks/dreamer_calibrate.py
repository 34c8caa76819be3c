"""Calibrate algos/dreamer.py on this machine: (1) the `tiny` preset on CartPole-v1, several seeds one after another,
episodic return against policy steps and wall time; (2) gradient steps per second of every size preset.

    python benchmarks/dreamer_calibrate.py learn --seeds 1 2 3            # writes benchmarks/results/dreamer_cartpole/
    python benchmarks/dreamer_calibrate.py speed --presets tiny size1m    # writes benchmarks/results/dreamer_speed/

Runs go to runs/benchmarks/dreamer_* (not committed); the tables (CSV + markdown) are committed. Everything offline.
"""

import argparse
import csv
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "algos" / "dreamer.py"
RESULTS = ROOT / "benchmarks" / "results"

# the calibrated CartPole-v1 command (tiny preset); see algos/dreamer.md for why these flags differ from the defaults
LEARN = ["--env-id", "CartPole-v1", "--size", "tiny", "--total-steps", "6000", "--learning-starts", "512",
         "--per-rank-sequence-length", "32", "--replay-ratio", "1/4", "--learning-rate", "3e-4", "--warmup", "100",
         "--log-every", "500", "--eval-episodes", "10", "--torch-threads", "1"]  # fmt: skip


def hardware() -> str:
    cpu = "unknown CPU"
    if os.path.exists("/proc/cpuinfo"):
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        cpu = f"{names[0]} ({len(names)} logical cores)" if names else cpu
    import torch

    return f"{cpu}, {platform.system()} {platform.release()}, Python {platform.python_version()}, torch {torch.__version__}"


def run(args: list[str], run_name: str, out: Path) -> tuple[dict, float]:
    start = time.time()
    log = out / f"{run_name}.log"
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, str(SCRIPT), *args, "--run-name", run_name], cwd=out, stdout=f, stderr=f)
    if proc.returncode != 0:
        raise SystemExit(f"{run_name} failed; see {log}")
    return json.loads((out / "runs" / run_name / "steps.json").read_text()), time.time() - start


def curve(run_dir: Path) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars("charts/episodic_return")]


def learn(seeds: list[int], extra: list[str]) -> None:
    out = ROOT / "runs" / "benchmarks" / "dreamer_cartpole"
    res = RESULTS / "dreamer_cartpole"
    out.mkdir(parents=True, exist_ok=True), res.mkdir(parents=True, exist_ok=True)
    rows, summary = [], []
    for seed in seeds:
        name = f"seed{seed}"
        led, wall = run(LEARN + extra + ["--seed", str(seed)], name, out)
        for step, ret in curve(out / "runs" / name):
            rows.append({"seed": seed, "policy_step": step, "episodic_return": round(ret, 2)})
        summary.append({"seed": seed, "wall_seconds": round(wall), "gradient_steps": led["actual"]["gradient_steps"],
                        "gradient_steps_per_second": round(led["timing"]["gradient_steps_per_second"], 3),
                        "final_window_return": rows[-1]["episodic_return"],
                        "eval_mean_return": round(led["eval"]["mean_return"], 1)})  # fmt: skip
        print(summary[-1], flush=True)
    with open(res / "returns.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["seed", "policy_step", "episodic_return"])
        w.writeheader(), w.writerows(rows)
    steps = sorted({r["policy_step"] for r in rows})
    table = ["| policy steps | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---" * (len(seeds) + 1) + "|"]
    for step in steps:
        vals = [next((r["episodic_return"] for r in rows if r["seed"] == s and r["policy_step"] == step), "") for s in seeds]
        table.append(f"| {step} | " + " | ".join(str(v) for v in vals) + " |")
    keys = list(summary[0])
    text = [
        "# DreamerV3 `tiny` on CartPole-v1 (calibration)",
        "",
        f"Hardware: {hardware()}; one run at a time, 1 torch thread (the machine was shared with other jobs).",
        "",
        "Command: `python algos/dreamer.py " + " ".join(LEARN + extra) + " --seed S`",
        "",
        "Episodic return (mean over the episodes that ended in each 500-step logging window):",
        "",
        *table,
        "",
        "| " + " | ".join(keys) + " |",
        "|---" * len(keys) + "|",
        *["| " + " | ".join(str(s[k]) for k in keys) + " |" for s in summary],
        "",
    ]
    (res / "report.md").write_text("\n".join(text))
    print("\n".join(text))


def speed(presets: list[str], steps: int) -> None:
    out = ROOT / "runs" / "benchmarks" / "dreamer_speed"
    res = RESULTS / "dreamer_speed"
    out.mkdir(parents=True, exist_ok=True), res.mkdir(parents=True, exist_ok=True)
    rows = []
    for preset in presets:
        big = preset in ("size50m", "size100m", "size200m")
        B, T = (2, 64) if big else (16, 64)
        args = ["--env-id", "CartPole-v1", "--size", preset, "--per-rank-batch-size", str(B), "--per-rank-sequence-length",
                str(T), "--total-steps", str(T + 1), "--learning-starts", str(T), "--replay-ratio", "0",
                "--per-rank-pretrain-steps", str(steps), "--eval-episodes", "0", "--torch-threads", "1"]  # fmt: skip
        led, wall = run(args, f"{preset}_B{B}", out)
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # MB, the largest child so far
        params = next(
            line for line in (out / f"{preset}_B{B}.log").read_text().splitlines() if line.startswith(f"{preset}:")
        ).split()[1]
        rows.append({"preset": preset, "parameters (CartPole)": params, "batch": f"{B} x {T}", "gradient_steps": steps,
                     "seconds_per_gradient_step": round(led["timing"]["train_seconds"] / steps, 2),
                     "gradient_steps_per_second": round(led["timing"]["gradient_steps_per_second"], 3),
                     "max_rss_mb_so_far": round(rss)})  # fmt: skip
        print(rows[-1], flush=True)
    with open(res / "speed.csv", "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader(), w.writerows(rows)
    keys = list(rows[0])
    text = [
        "# DreamerV3 gradient steps per second per size preset (CPU)",
        "",
        f"Hardware: {hardware()}; 1 torch thread, 1 process, CartPole-v1 observations (vector), the full update "
        "(world model + imagination of H=15 from every posterior state + actor-critic + replay value loss).",
        "",
        "| " + " | ".join(keys) + " |",
        "|---" * len(keys) + "|",
        *["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows],
        "",
    ]
    (res / "speed.md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    a = sub.add_parser("learn")
    a.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    a.add_argument("extra", nargs="*", help="more flags for the script (after --)")
    b = sub.add_parser("speed")
    b.add_argument("--presets", nargs="+", default=["tiny", "size1m", "size12m", "size25m", "size50m", "size100m", "size200m"])
    b.add_argument("--steps", type=int, default=3, help="gradient steps timed per preset")
    ns = p.parse_args()
    learn(ns.seeds, ns.extra) if ns.mode == "learn" else speed(ns.presets, ns.steps)
