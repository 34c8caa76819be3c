"""Gradient steps per second of algos/dreamer.py at every size preset on this machine (the full update, CartPole-v1
observations, 1 process, 1 torch thread). The learning curves come from benchmarks/run.py (see algos/dreamer.md).

    python benchmarks/dreamer_speed.py --presets tiny size1m --steps 2   # writes benchmarks/results/dreamer_speed/
    python benchmarks/dreamer_speed.py --presets tiny --steps 1 --out /tmp/dspeed   # a quick check elsewhere

The tables (speed.csv, speed.md) go to --out (by default the committed benchmarks/results/dreamer_speed/); the runs
and their logs to `<out>/runs/<unix time>/` (git ignores every `runs/` folder). Everything offline.
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import error_line  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "algos" / "dreamer.py"
RESULTS = ROOT / "benchmarks" / "results"


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
        raise SystemExit(f"{run_name} failed; see {log}\n       {error_line(str(log))}")
    return json.loads((out / "runs" / run_name / "steps.json").read_text()), time.time() - start


def speed(presets: list[str], steps: int, res: Path) -> None:
    out = res / "runs" / str(int(time.time()))  # a new directory per call
    out.mkdir(parents=True, exist_ok=True)
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
    p.add_argument("--presets", nargs="+", default=["tiny", "size1m", "size12m", "size25m", "size50m", "size100m", "size200m"],
                   help="algos/dreamer.py's --size presets to time (default: all of them)")  # fmt: skip
    p.add_argument("--steps", type=int, default=3, help="gradient steps timed per preset, at least 1 (default: 3)")
    p.add_argument("--out", default=str(RESULTS / "dreamer_speed"),
                   help="where speed.csv and speed.md go, the runs in <out>/runs/ (default: the committed "
                   "benchmarks/results/dreamer_speed/)")  # fmt: skip
    ns = p.parse_args()
    if ns.steps < 1:  # the speed is time / steps
        print(f"error: --steps: got {ns.steps}; it must be at least 1", file=sys.stderr)
        sys.exit(2)
    speed(ns.presets, ns.steps, Path(ns.out).resolve())
