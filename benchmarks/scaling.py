# Scaling benchmark: one script under torchrun with 1 and 2 processes, measured side by side in one invocation.
#   1 process                          total T, learning starts L, per-rank batch B
#   2 processes, same per-rank work    total 2T, learning starts 2L, per-rank batch B  (each rank does what the 1 did)
#   2 processes, same global work      total T, learning starts L, per-rank batch B/2  (global batch and gradient
#                                      steps equal the 1-process run's; the work is split over 2 processes)
# Speeds are global policy steps/s and gradient steps/s after the burn-in (report.speed); the table reports them and
# their ratios to the 1-process run. The runs execute one after another. Usage: benchmarks/README.md.
#
#   python benchmarks/scaling.py --script algos/sac.py --env-id HalfCheetah-v5 --output benchmarks/results/sac_scaling
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass

import numpy as np
import tyro

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report  # noqa: E402
import run as launcher  # noqa: E402


@dataclass
class Args:
    script: str = "algos/sac.py"
    """the training script"""
    env_id: str = "HalfCheetah-v5"
    """the environment id"""
    per_rank_steps: int = 3000
    """T: global policy steps of the 1-process run (= per-rank policy steps of every run but the split one)"""
    learning_starts: int = 1000
    """L: random pre-fill of the 1-process run, in global policy steps (speed is measured after training begins)"""
    per_rank_batch_size: int = 256
    """B: samples per gradient step per rank of the 1-process run (must be even: the split run uses B/2)"""
    batch_flag: str = "--per-rank-batch-size"
    """the script's flag for B"""
    log_every: int = 250
    """global policy steps between logs (the speed is measured between logs)"""
    seed: int = 1
    """seed of every run"""
    torch_threads: int = 1
    """torch threads per process"""
    repeats: int = 1
    """how many times to measure each configuration (the table shows the mean)"""
    out: str | None = None
    """raw runs, logs and manifest (default: `runs/benchmarks/scaling__<script stem>__<unix time>`)"""
    output: str | None = None
    """where scaling.md and scaling.csv go (default: `<out>/scaling`)"""
    quick: bool = False
    """smoke-test preset: Pendulum-v1, T 400, L 200, B 64, logs every 50 (flags given explicitly win over the preset)"""
    note: str = ""
    """a sentence for scaling.md, e.g. how loaded the machine was"""


CONFIGS = [
    # name, processes, total steps factor, learning starts factor, batch divisor
    ("1 process", 1, 1, 1, 1),
    ("2 processes, same per-rank work", 2, 2, 2, 1),
    ("2 processes, same global work", 2, 1, 1, 2),
]
SCRIPT_FLAGS = {"sac_continuous": ["--eval-episodes", "0"]}  # script-specific flags that keep the measurement clean


def main(argv: list[str] | None = None) -> list[dict]:
    # SIGINT/SIGTERM stop the running torchrun (launcher.stop_children), which is recorded; then exit 128 + signum
    with launcher.children_stopped_by_signals():
        return measure(sys.argv[1:] if argv is None else argv)


def measure(argv: list[str]) -> list[dict]:
    own, extra = launcher.split_argv(argv)
    args = tyro.cli(Args, args=own, description="Policy and gradient steps/s with 1 vs 2 torchrun processes.")
    if args.quick:
        typed = launcher.given_flags(own)
        preset = dict(env_id="Pendulum-v1", per_rank_steps=400, learning_starts=200, per_rank_batch_size=64, log_every=50)
        for name, value in preset.items():
            if name not in typed:
                setattr(args, name, value)
    if args.per_rank_batch_size % 2:
        sys.exit(f"error: --per-rank-batch-size: got {args.per_rank_batch_size}; use an even number (the split run uses B/2)")
    script = launcher.resolve_script(args.script)
    stem = launcher.script_stem(script)
    out = os.path.abspath(args.out or os.path.join("runs", "benchmarks", f"scaling__{stem}__{int(time.time())}"))
    args.output = args.output or os.path.join(out, "scaling")
    os.makedirs(out, exist_ok=True)
    print(f"runs in {out}; tables to {args.output}", flush=True)
    tag, version = launcher.code_version(script)
    env = dict(os.environ, WANDB_TAGS=tag, OMP_NUM_THREADS=str(args.torch_threads), PYTHONUNBUFFERED="1")
    manifest = {
        "command": shlex.join(["python", "benchmarks/scaling.py"] + argv),
        "git_describe": tag,
        **version,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "hardware": launcher.hardware() | {"torch_threads": args.torch_threads, "workers": 1},
        "runs": [],
    }
    rows, stamp = [], int(time.time())
    for repeat in range(args.repeats):
        for name, n, steps_x, starts_x, batch_div in CONFIGS:
            run_name = f"{args.env_id}__{stem}__{args.seed}__{stamp}_{n}p_{'split' if batch_div > 1 else 'same'}_{repeat}"
            flags = [
                "--env-id", args.env_id,
                "--seed", str(args.seed),
                "--run-name", run_name,
                "--total-steps", str(args.per_rank_steps * steps_x),
                "--learning-starts", str(args.learning_starts * starts_x),
                args.batch_flag, str(args.per_rank_batch_size // batch_div),
                "--log-every", str(args.log_every),
                "--torch-threads", str(args.torch_threads),
            ] + SCRIPT_FLAGS.get(stem, []) + extra  # fmt: skip
            cmd = launcher.run_command(script, n, flags)
            print(f"[{name}] {shlex.join(cmd)}", flush=True)
            log = os.path.join(out, "logs", run_name + ".log")
            result = launcher.launch(cmd, out, env, log)
            record = {"config": name, "world_size": n, "run_name": run_name, "command": shlex.join(cmd)} | result
            manifest["runs"].append(record)
            if launcher.STOP["signum"]:  # the run carries `interrupted` too
                manifest["interrupted"] = signal.Signals(launcher.STOP["signum"]).name
            launcher.write_json(os.path.join(out, "manifest.json"), manifest)
            if launcher.STOP["signum"]:
                print(f"scaling.py: {manifest['interrupted']}: stopped {name}; finished runs are in {out}", file=sys.stderr)
                sys.exit(128 + launcher.STOP["signum"])
            if result["returncode"] != 0:  # the script's own reason under the log's path, as run.py prints it
                sys.exit(f"error: {name} failed (exit {result['returncode']}); see {log}\n       {launcher.error_line(log)}")
            data = report.load_run(os.path.join(out, "runs", run_name))
            s = report.speed(data)
            rows.append(
                {
                    "config": name,
                    "repeat": repeat,
                    "world_size": n,
                    "per_rank_batch_size": args.per_rank_batch_size // batch_div,
                    "global_policy_steps": args.per_rank_steps * steps_x,
                    "policy_sps": s["policy_sps"],
                    "gradient_sps": s["gradient_sps"],
                    "wall_time_s": result["wall_time_s"],
                    "peak_tree_rss_mb": result["peak_tree_rss_mb"],
                    "ledger": report.ledger_status(data),
                }
            )
            print(f"[{name}] policy steps/s {s['policy_sps']:.1f}, gradient steps/s {s['gradient_sps']:.1f}", flush=True)
    if launcher.STOP["signum"]:  # a stop while the last run's numbers were read: no tables, as at any other moment
        print(f"scaling.py: {signal.Signals(launcher.STOP['signum']).name}: stopped; the runs are in {out}", file=sys.stderr)
        sys.exit(128 + launcher.STOP["signum"])
    manifest["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    launcher.write_json(os.path.join(out, "manifest.json"), manifest)
    write_tables(args, rows, manifest, stem)
    return rows


def write_tables(args: Args, rows: list[dict], manifest: dict, stem: str) -> None:
    os.makedirs(args.output, exist_ok=True)
    summary = []
    for name, n, *_ in CONFIGS:
        mine = [r for r in rows if r["config"] == name]
        summary.append(
            {
                "config": name,
                "world_size": n,
                "per_rank_batch_size": mine[0]["per_rank_batch_size"],
                "global_policy_steps": mine[0]["global_policy_steps"],
                "repeats": len(mine),
                "policy_sps": float(np.mean([r["policy_sps"] for r in mine])),
                "gradient_sps": float(np.mean([r["gradient_sps"] for r in mine])),
                "wall_time_s": float(np.mean([r["wall_time_s"] for r in mine])),
                "peak_tree_rss_mb": float(max(r["peak_tree_rss_mb"] for r in mine)),
                "ledger": ", ".join(sorted({r["ledger"] for r in mine})),
            }
        )
    base = summary[0]
    for s in summary:
        s["policy_sps_ratio"] = s["policy_sps"] / base["policy_sps"]
        s["gradient_sps_ratio"] = s["gradient_sps"] / base["gradient_sps"]
        s["wall_time_speedup"] = base["wall_time_s"] / s["wall_time_s"]
    report.write_csv(os.path.join(args.output, "scaling.csv"), [{k: _round(v) for k, v in s.items()} for s in summary])
    table = report.markdown_table(
        [
            "configuration",
            "processes",
            "per-rank batch",
            "global policy steps",
            "policy steps/s",
            "gradient steps/s",
            "policy steps/s ratio",
            "gradient steps/s ratio",
            "wall time (s)",
            "peak RSS (MB)",
            "ledger",
        ],
        [
            [
                s["config"],
                s["world_size"],
                s["per_rank_batch_size"],
                f"{s['global_policy_steps']:,}",
                report.fmt(s["policy_sps"]),
                report.fmt(s["gradient_sps"]),
                f"{s['policy_sps_ratio']:.2f}",
                f"{s['gradient_sps_ratio']:.2f}",
                report.fmt(s["wall_time_s"], 0),
                report.fmt(s["peak_tree_rss_mb"], 0),
                s["ledger"],
            ]
            for s in summary
        ],
    )
    hw = manifest["hardware"]
    lines = [
        f"# Scaling: {stem} on {args.env_id}",
        "",
        "Produced by:",
        "",
        "```bash",
        manifest["command"],
        "```",
        "",
        f"Code version: {manifest['git_describe']}. Hardware: CPU: {hw['cpu']}, {hw['cores']} cores; GPU: {hw['gpu']}; "
        f"torch {hw['torch']}; torch threads per process: {args.torch_threads}; world size 1 and 2 (torchrun --standalone).",
        "",
    ]
    if args.note:
        lines += [args.note, ""]
    loads = [x for r in manifest.get("runs", []) for x in r.get("loadavg_1min", [])]
    if loads:
        lines += [f"1-minute load average at run start/exit: {min(loads):.1f} to {max(loads):.1f}.", ""]
    if "script_sha256" in manifest:
        state = {True: "with uncommitted changes", False: "as committed", None: "git state unknown"}
        lines += [
            f"Script: `{manifest['script_file']}` sha256 {manifest['script_sha256'][:12]}... "
            f"({state[manifest['script_uncommitted_changes']]} at launch)",
            "",
        ]
    lines += [
        table,
        f"Ratios are to the 1-process run (ideal: 2.00 for both 2-process rows). Speeds are global (all ranks), measured "
        f"after training began, from the event wall times of `charts/SPS` and `charts/gradient_steps`, mean of "
        f"{args.repeats} repeat(s). Wall time includes start-up (torchrun, imports, env creation) and the random pre-fill. "
        "Same per-rank work: each of the 2 ranks does what the single process does (twice the global steps, batch and "
        "gradient steps). Same global work: the same global policy steps, global batch and global gradient steps, split "
        "over 2 processes.",
        "",
    ]
    with open(os.path.join(args.output, "scaling.md"), "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines) + f"written to {os.path.join(args.output, 'scaling.md')} and scaling.csv")


def _round(v):
    return round(v, 3) if isinstance(v, float) else v


if __name__ == "__main__":
    main()
