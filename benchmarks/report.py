# Benchmark report: reads the TensorBoard event files of a set of runs (offline; no W&B account) and writes
#   curves_steps.png     episodic return vs global policy steps, mean and a +-1 std band across seeds, one panel per env
#   curves_walltime.png  the same against wall time since the run's first log
#   returns.md/.csv      final return per (script, env): mean and std across seeds, next to the published references
#   speed.md/.csv        policy steps/s after the burn-in, gradient steps/s, wall time, peak memory, ledger check
#   runs.csv             the same numbers for every single run
#   report.md            all of it with the hardware line, the commands that produced it and the flags that differ
# Event files are read with TensorBoard's EventAccumulator. Usage: benchmarks/README.md.
#
#   python benchmarks/report.py --runs runs/benchmarks/sac_continuous__1700000000 --output benchmarks/results/sac
import csv
import glob
import json
import logging
import math
import os
import re
import shlex
import sys
from dataclasses import dataclass, field

import numpy as np
import tyro

HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass
class Args:
    runs: tuple[str, ...] = ()
    """run directories, or folders to search for them (e.g. a launcher's `--out`, whose manifest.json adds wall time,
    peak memory and the command)"""
    output: str | None = None
    """where the tables and plots go (default: `<runs>/report` when --runs names one folder)"""
    window: float = 0.1
    """final return: mean of the `charts/episodic_return` values logged in this last fraction of the policy steps"""
    burn_in_steps: int | None = None
    """speed is measured from the first log at or after this many global policy steps
    (default: the first log after training began, i.e. `charts/gradient_steps` > 0)"""
    references: tuple[str, ...] = ()
    """reference CSV files (default: every benchmarks/reference/*.csv)"""
    title: str = "Benchmark report"
    """the heading of report.md"""
    note: str = ""
    """a sentence for report.md, e.g. how loaded the machine was"""


RETURN_TAG, SPS_TAG, GRAD_TAG, EVAL_TAG = (
    "charts/episodic_return",
    "charts/SPS",
    "charts/gradient_steps",
    "eval/episodic_return",
)


@dataclass
class Run:
    run_dir: str
    config: dict
    scalars: dict  # tag -> array [k, 3] of (step, wall_time, value), sorted by step
    ledger: dict | None = None
    launch: dict = field(default_factory=dict)  # this run's manifest entry (wall time, peak memory, command)
    attempts: dict = field(default_factory=dict)  # a resumed run's event wall time -> its attempt (one event file each)

    @property
    def exp_name(self) -> str:
        return self.config.get("exp_name", "?")

    @property
    def env_id(self) -> str:
        return self.config.get("env_id", "?")

    @property
    def seed(self) -> str:
        return str(self.config.get("seed", "?"))

    @property
    def world_size(self) -> int:
        if self.ledger:
            return int(self.ledger["plan"]["world_size"])
        return int(self.config.get("world_size", self.launch.get("world_size", 1)))

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.exp_name, self.env_id, self.world_size)


# ---------------------------------------------------------------- reading runs
def find_run_dirs(paths: tuple[str, ...]) -> list[str]:
    """Directories holding TensorBoard event files (not descending into a run, nor into wandb/ copies)."""
    found = []
    for path in paths:
        for dirpath, dirnames, filenames in os.walk(path):
            if any(f.startswith("events.out.tfevents") for f in filenames):
                found.append(os.path.normpath(dirpath))
                dirnames[:] = []
            else:
                dirnames[:] = sorted(d for d in dirnames if d != "wandb")
    return sorted(set(found))


def parse_config(text: str) -> dict:
    """The `hyperparameters` text the scripts log: a markdown table `|param|value|`."""
    config = {}
    for line in text.splitlines():
        cells = line.strip().strip("|").split("|")
        if len(cells) == 2 and cells[0] not in ("param", "-"):
            config[cells[0].strip()] = cells[1].strip()
    return config


def config_from_name(run_name: str) -> dict:
    """Fallback: `{env_id}__{exp_name}__{seed}__{unix time}`."""
    parts = run_name.split("__")
    return dict(zip(("env_id", "exp_name", "seed"), parts[:3])) if len(parts) >= 4 else {}


def load_manifests(run_dir: str) -> dict:
    """The launcher's manifest entry for this run (the manifest sits two levels up: <out>/runs/<run_name>)."""
    out = os.path.dirname(os.path.dirname(os.path.abspath(run_dir)))
    path = os.path.join(out, "manifest.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        manifest = json.load(f)
    name = os.path.basename(os.path.normpath(run_dir))
    entry = next((r for r in manifest.get("runs", []) if r.get("run_name") == name), {})
    return entry | {"manifest": manifest, "manifest_path": path} if entry else {}


def load_run(run_dir: str) -> Run:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tb_logging

    # a resumed run's first event carries a purge step that drops what the killed attempt logged after its checkpoint,
    # as intended; TensorBoard warns of each purge ("Detected out of order event.step ... Purging expired events")
    tb_logging.get_logger().setLevel(logging.ERROR)

    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = {}
    for tag in tags.get("scalars", []):
        events = acc.Scalars(tag)
        arr = np.array([(e.step, e.wall_time, e.value) for e in events], dtype=np.float64).reshape(-1, 3)
        scalars[tag] = arr[np.argsort(arr[:, 0], kind="stable")]
    config = config_from_name(os.path.basename(os.path.normpath(run_dir)))
    text_tags = [t for t in tags.get("tensors", []) if t.startswith("hyperparameters")]
    if text_tags:  # the last attempt's: a resume logs its config anew (--total-steps may have grown)
        config |= parse_config(acc.Tensors(text_tags[0])[-1].tensor_proto.string_val[0].decode())
    attempts = {}
    files = sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents*")))
    for i, path in enumerate(files if len(files) > 1 else []):  # a resumed run: which attempt logged each point
        one = EventAccumulator(path, size_guidance={"scalars": 0})
        one.Reload()
        attempts |= {e.wall_time: i for tag in one.Tags()["scalars"] for e in one.Scalars(tag)}
    ledger = None
    if os.path.exists(os.path.join(run_dir, "steps.json")):
        with open(os.path.join(run_dir, "steps.json")) as f:
            ledger = json.load(f)
    return Run(run_dir, config, scalars, ledger, load_manifests(run_dir), attempts)


# ---------------------------------------------------------------- per-run numbers
def last_step(run: Run) -> float:
    steps = [a[-1, 0] for a in run.scalars.values() if len(a)]
    return max(steps) if steps else float("nan")


def final_return(run: Run, window: float) -> float:
    """Mean of the episodic returns logged in the last `window` fraction of the run's policy steps (the last logged
    value if none falls in the window; nan without episodes)."""
    series = run.scalars.get(RETURN_TAG)
    if series is None or not len(series):
        return float("nan")
    in_window = series[series[:, 0] > last_step(run) * (1 - window)]
    return float((in_window if len(in_window) else series[-1:])[:, 2].mean())


def eval_return(run: Run) -> float:
    series = run.scalars.get(EVAL_TAG)
    if series is not None and len(series):
        return float(series[-1, 2])
    if run.ledger and "eval" in run.ledger:
        return float(run.ledger["eval"]["mean_return"])
    return float("nan")


def speed(run: Run, burn_in_steps: int | None = None) -> dict:
    """Global policy steps/s and gradient steps/s between the first log after the burn-in and the last log, from the
    event wall times of `charts/SPS` and `charts/gradient_steps`. A resumed run counts the spans between logs of one
    attempt only: the time between attempts (down time, the restart) is not training."""
    sps, grad = run.scalars.get(SPS_TAG), run.scalars.get(GRAD_TAG)
    out = {"policy_sps": float("nan"), "gradient_sps": float("nan"), "burn_in_step": float("nan")}
    if sps is None or len(sps) < 2:
        return out
    if burn_in_steps is not None:
        start_step = next((s for s in sps[:, 0] if s >= burn_in_steps), None)
    elif grad is not None and len(grad):
        start_step = next((s for s, v in zip(grad[:, 0], grad[:, 2]) if v > 0), None)
    else:
        start_step = sps[0, 0]
    if start_step is None:
        return out
    window = sps[sps[:, 0] >= start_step]
    spans = [(a, b) for a, b in zip(window[:-1], window[1:]) if run.attempts.get(a[1]) == run.attempts.get(b[1])]
    seconds = sum(b[1] - a[1] for a, b in spans)
    if seconds <= 0:
        return out
    out["burn_in_step"] = float(start_step)
    out["policy_sps"] = float(sum(b[0] - a[0] for a, b in spans) / seconds)
    if grad is not None:
        g = {s: v for s, _, v in grad}
        if all(a[0] in g and b[0] in g for a, b in spans):
            out["gradient_sps"] = float(sum(g[b[0]] - g[a[0]] for a, b in spans) / seconds)
    return out


def wall_time(run: Run) -> float:
    if run.attempts:  # resumed: each attempt's first to last event (the launcher timed the first attempt only)
        walls = {}
        for wall, attempt in run.attempts.items():
            walls.setdefault(attempt, []).append(wall)
        return float(sum(max(w) - min(w) for w in walls.values()))
    if "wall_time_s" in run.launch:
        return float(run.launch["wall_time_s"])
    walls = [w for a in run.scalars.values() for w in a[:, 1]]
    return float(max(walls) - min(walls)) if walls else float("nan")


def ledger_status(run: Run) -> str:
    if not run.ledger:
        return "no ledger"
    plan, actual = run.ledger["plan"], run.ledger["actual"]
    ok = all(plan[k] == actual[k] for k in ("policy_steps", "gradient_steps"))
    return "ok" if ok else "MISMATCH"


# ---------------------------------------------------------------- references
def load_references(paths: tuple[str, ...]) -> list[dict]:
    rows = []
    for path in paths or sorted(glob.glob(os.path.join(HERE, "reference", "*.csv"))):
        with open(path, newline="") as f:
            rows += [r | {"file": os.path.basename(path)} for r in csv.DictReader(f)]
    return rows


def env_base(env_id: str) -> str:
    """`HalfCheetah-v5` -> `halfcheetah` (versions differ between our runs and the published tables)."""
    return re.sub(r"-v\d+$", "", env_id.split(":")[-1]).lower()


def find_reference(refs: list[dict], exp_name: str, env_id: str) -> dict | None:
    for r in refs:
        if r.get("script") and exp_name.startswith(r["script"]) and env_base(r["env_id"]) == env_base(env_id):
            return r
    return None


# ---------------------------------------------------------------- aggregation, tables, plots
def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population standard deviation (ddof=0) over the finite values; nan when there are none."""
    v = np.array([x for x in values if np.isfinite(x)], dtype=np.float64)
    return (float(v.mean()), float(v.std())) if len(v) else (float("nan"), float("nan"))


def fmt(x: float, digits: int = 1) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:,.{digits}f}"


def pm(m: float, s: float, digits: int = 1) -> str:
    return "n/a" if not math.isfinite(m) else f"{fmt(m, digits)} ± {fmt(s, digits)}"


def label(key: tuple[str, str, int]) -> str:
    exp_name, _, world_size = key
    return exp_name if world_size == 1 else f"{exp_name} ({world_size} processes)"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]) + "\n"


def settings_table(groups: dict[tuple, list[Run]]) -> str:
    """The settings (the scripts' flags, as logged) whose values differ between the groups, or between one group's runs:
    what a comparison compares. A group's cell lists each value its runs used; "-" where a run did not log it."""
    names = {key: f"{label(key)} on {key[1]}" for key in sorted(groups)}
    ignored = {"seed", "run_name", "resume", "exp_name", "env_id"}  # per run by design, or in the group's name
    keys = sorted({k for members in groups.values() for r in members for k in r.config} - ignored)
    values = {g: {k: sorted({str(r.config.get(k, "-")) for r in groups[g]}) for k in keys} for g in names}
    differ = [k for k in keys if len({tuple(values[g][k]) for g in names}) > 1 or any(len(values[g][k]) > 1 for g in names)]
    rows = [[f"`{k}`"] + [", ".join(values[g][k]) for g in names] for k in differ]
    if not rows:
        return "Every run used the same settings, seeds aside.\n" if len(names) > 1 else ""
    return markdown_table(["setting"] + list(names.values()), rows)


def write_csv(path: str, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["empty"])
        writer.writeheader()
        writer.writerows([{k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()} for row in rows])


def band(curves: list[np.ndarray], x_col: int, points: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Interpolate each seed's (x, return) curve on one grid over the x range that every seed covers; the mean and
    standard deviation (ddof=0) across seeds at each grid point."""
    lo = max(c[0, x_col] for c in curves)
    hi = min(c[-1, x_col] for c in curves)
    grid = np.linspace(lo, hi, points) if hi > lo else np.array([hi])
    ys = np.stack([np.interp(grid, c[:, x_col], c[:, 2]) for c in curves])
    return grid, ys.mean(0), ys.std(0)


def plot_curves(groups: dict, path: str, wall: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = sorted({key[1] for key in groups})
    cols = min(3, max(1, len(envs)))
    rows = math.ceil(len(envs) / cols) if envs else 1
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4 * rows), squeeze=False)
    for ax, env_id in zip(axes.flat, envs):
        for key in sorted(k for k in groups if k[1] == env_id):
            curves = []
            for run in groups[key]:
                c = run.scalars.get(RETURN_TAG)
                if c is None or not len(c):
                    continue
                c = c.copy()
                if wall:
                    start = min(a[0, 1] for a in run.scalars.values() if len(a))
                    c[:, 1] = (c[:, 1] - start) / 60.0
                    c = c[np.argsort(c[:, 1], kind="stable")]
                curves.append(c)
            if not curves:
                continue
            x_col = 1 if wall else 0
            x, mean, std = band(curves, x_col)
            seeds = f"{len(curves)} seed{'s' if len(curves) > 1 else ''}"
            line = ax.plot(x, mean, label=f"{label(key)} ({seeds})")[0]
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.25, linewidth=0)
            if len(curves) > 1:  # each seed thin, so a seed that runs longer than the others stays visible
                for c in curves:
                    ax.plot(c[:, x_col], c[:, 2], color=line.get_color(), alpha=0.35, linewidth=0.6)
        ax.set_title(env_id)
        ax.set_xlabel("wall time (minutes)" if wall else "global policy steps")
        ax.set_ylabel("episodic return (training)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(envs) :]:
        ax.axis("off")
    fig.suptitle("mean across seeds (where all have data) ± 1 std; thin lines: single seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def hardware_line(runs: list[Run]) -> str:
    manifests = [r.launch["manifest"] for r in runs if "manifest" in r.launch]
    if manifests:
        hw, source = manifests[0]["hardware"], "recorded by the launcher"
    else:
        sys.path.insert(0, HERE)
        from run import hardware

        hw, source = hardware(), "the machine that made this report; no launcher manifest"
    loads = [x for r in runs for x in r.launch.get("loadavg_1min", [])]
    load = f"; 1-minute load average at run start/exit: {min(loads):.1f} to {max(loads):.1f}" if loads else ""
    threads = sorted({str(r.config.get("torch_threads", "?")) for r in runs})
    worlds = sorted({r.world_size for r in runs})
    return (
        f"CPU: {hw['cpu']}, {hw['cores']} cores; GPU: {hw['gpu']}; torch {hw['torch']}; "
        f"torch threads per process: {', '.join(threads)}; world size: {', '.join(map(str, worlds))}{load} ({source})"
    )


def main(argv: list[str] | None = None) -> dict:
    args = tyro.cli(Args, args=argv, description="Tables and learning curves from TensorBoard event files.")
    run_dirs = find_run_dirs(args.runs)
    if not run_dirs:
        sys.exit(f"error: --runs: no TensorBoard event files under {', '.join(args.runs) or '(nothing given)'}")
    if args.output is None and len(args.runs) > 1:
        sys.exit(f"error: --output: give the report's folder; with {len(args.runs)} --runs folders there is no default")
    args.output = args.output or os.path.join(args.runs[0], "report")
    runs = [load_run(d) for d in run_dirs]
    empty = [r.run_dir for r in runs if not any(len(a) for a in r.scalars.values())]
    if empty:  # stopped before its first log (a failed launch): not a seed of anything
        print(f"warning: left out {len(empty)} run(s) that logged nothing: {', '.join(empty)}", file=sys.stderr)
        runs = [r for r in runs if r.run_dir not in empty]
    if not runs:
        sys.exit("error: --runs: no run logged anything")
    unfinished = [r.run_dir for r in runs if not r.ledger]
    if unfinished:  # still running, or stopped and not resumed: its numbers end at its last log
        print(f"warning: {len(unfinished)} run(s) have not finished (no steps.json; their numbers end at their last "
              f"log): {', '.join(unfinished)}", file=sys.stderr)  # fmt: skip
    os.makedirs(args.output, exist_ok=True)
    refs = load_references(args.references)

    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.key, []).append(run)
    for (exp_name, env_id, world_size), members in sorted(groups.items()):  # a group is meant as one experiment's seeds
        budgets = sorted({str(r.ledger["plan"]["policy_steps"] if r.ledger else r.config.get("total_steps")) for r in members})
        seeds = sorted(r.seed for r in members)
        if len(budgets) > 1 or len(set(seeds)) < len(seeds):
            print(f"warning: {exp_name} on {env_id} ({world_size} process(es)) mixes runs of other budgets (policy steps "
                  f"{', '.join(budgets)}) or repeats a seed (seeds {', '.join(seeds)}); its mean is not one experiment's: "
                  "give --runs the output folder of one launch per experiment", file=sys.stderr)  # fmt: skip
    per_run = []
    for run in runs:
        s = speed(run, args.burn_in_steps)
        per_run.append(
            {
                "exp_name": run.exp_name,
                "env_id": run.env_id,
                "seed": run.seed,
                "world_size": run.world_size,
                "policy_steps": int(last_step(run)) if math.isfinite(last_step(run)) else "",
                "final_return": final_return(run, args.window),
                "eval_return": eval_return(run),
                "policy_sps": s["policy_sps"],
                "gradient_sps": s["gradient_sps"],
                "speed_from_step": s["burn_in_step"],
                "wall_time_s": wall_time(run),
                "peak_rss_mb": run.launch.get("peak_rss_mb", float("nan")),
                "peak_tree_rss_mb": run.launch.get("peak_tree_rss_mb", float("nan")),
                "ledger": ledger_status(run),
                "attempts": len(set(run.attempts.values())) or 1,
                "run_dir": os.path.relpath(run.run_dir) if not os.path.relpath(run.run_dir).startswith("..") else run.run_dir,
            }
        )
    write_csv(os.path.join(args.output, "runs.csv"), per_run)

    window_text = (
        f"mean of the `{RETURN_TAG}` values logged in the last {args.window:.0%} of each run's policy steps (each value "
        "is the mean return of the episodes that ended in one logging window, over all ranks)"
    )
    returns_rows, speed_rows = [], []
    for key in sorted(groups):
        rows = [r for r in per_run if (r["exp_name"], r["env_id"], r["world_size"]) == key]
        fin, fin_std = mean_std([r["final_return"] for r in rows])
        ev, ev_std = mean_std([r["eval_return"] for r in rows])
        ref = find_reference(refs, key[0], key[1])
        returns_rows.append(
            {
                "script": key[0],
                "env_id": key[1],
                "world_size": key[2],
                "seeds": len(rows),
                "policy_steps": max((r["policy_steps"] for r in rows if r["policy_steps"] != ""), default=""),
                "final_return_mean": round(fin, 2),
                "final_return_std": round(fin_std, 2),
                "window": f"last {args.window:.0%} of policy steps",
                "eval_return_mean": round(ev, 2),
                "eval_return_std": round(ev_std, 2),
                "reference_mean": ref["mean"] if ref else "",
                "reference_std": ref["std"] if ref else "",
                "reference_env_id": ref["env_id"] if ref else "",
                "reference_budget": f"{ref['budget']} {ref['budget_unit']}" if ref else "",
                "reference_source": ref["source"] if ref else "",
            }
        )
        sps, sps_std = mean_std([r["policy_sps"] for r in rows])
        gsps, gsps_std = mean_std([r["gradient_sps"] for r in rows])
        wall, wall_std = mean_std([r["wall_time_s"] for r in rows])
        peaks = [r["peak_tree_rss_mb"] for r in rows if math.isfinite(r["peak_tree_rss_mb"])]
        speed_rows.append(
            {
                "script": key[0],
                "env_id": key[1],
                "world_size": key[2],
                "seeds": len(rows),
                "policy_sps_mean": round(sps, 1),
                "policy_sps_std": round(sps_std, 1),
                "gradient_sps_mean": round(gsps, 1),
                "gradient_sps_std": round(gsps_std, 1),
                "wall_time_s_mean": round(wall, 1),
                "wall_time_s_std": round(wall_std, 1),
                "peak_rss_mb_max": round(max(peaks), 1) if peaks else "",
                "ledger": ", ".join(sorted({r["ledger"] for r in rows})),
            }
        )
    write_csv(os.path.join(args.output, "returns.csv"), returns_rows)
    write_csv(os.path.join(args.output, "speed.csv"), speed_rows)

    returns_md = markdown_table(
        ["script", "env", "seeds", "policy steps", "final return (training)", "eval return (end of run)", "reference"],
        [
            [
                r["script"] + (f" ({r['world_size']} processes)" if r["world_size"] != 1 else ""),
                r["env_id"],
                r["seeds"],
                f"{r['policy_steps']:,}" if r["policy_steps"] != "" else "n/a",
                pm(r["final_return_mean"], r["final_return_std"]),
                pm(r["eval_return_mean"], r["eval_return_std"]),
                (
                    f"{r['reference_mean']} ± {r['reference_std']} ({r['reference_env_id']}, {r['reference_budget']}; "
                    f"{r['reference_source']})"
                    if r["reference_source"]
                    else "none published"
                ),
            ]
            for r in returns_rows
        ],
    )
    returns_md += (
        f"\nFinal return: {window_text}; ± is the standard deviation across seeds (ddof=0). Eval return: the script's "
        "`eval/episodic_return` after training (SAC: deterministic actions; Dreamer: actions sampled from the policy, "
        "as the reference evaluates).\n"
    )
    burn = (
        f"from the first log at or after {args.burn_in_steps} policy steps"
        if args.burn_in_steps is not None
        else ("from the first log after training began (`charts/gradient_steps` > 0)")
    )
    speed_md = markdown_table(
        [
            "script",
            "env",
            "world size",
            "seeds",
            "policy steps/s",
            "gradient steps/s",
            "wall time (s)",
            "peak RSS (MB)",
            "ledger",
        ],
        [
            [
                r["script"],
                r["env_id"],
                r["world_size"],
                r["seeds"],
                pm(r["policy_sps_mean"], r["policy_sps_std"]),
                pm(r["gradient_sps_mean"], r["gradient_sps_std"]),
                pm(r["wall_time_s_mean"], r["wall_time_s_std"], 0),
                fmt(r["peak_rss_mb_max"], 0) if r["peak_rss_mb_max"] != "" else "n/a",
                r["ledger"],
            ]
            for r in speed_rows
        ],
    )
    speed_md += (
        f"\nPolicy and gradient steps/s are global, {burn} to the last log, from the event wall times of `{SPS_TAG}` and "
        f"`{GRAD_TAG}`. Wall time: process start to exit (start-up and evaluation included) when a launcher manifest "
        "exists, else first to last event. Peak RSS: the largest summed resident memory of the run's process tree "
        "(sampled every 0.5 s; all torchrun processes together), max over seeds. Ledger: steps.json actual = plan. A "
        "resumed run (one event file per attempt) counts each attempt's own time between its logs, and its wall time is "
        "the sum of its attempts' first-to-last event times.\n"
    )
    with open(os.path.join(args.output, "returns.md"), "w") as f:
        f.write(returns_md)
    with open(os.path.join(args.output, "speed.md"), "w") as f:
        f.write(speed_md)
    plot_curves(groups, os.path.join(args.output, "curves_steps.png"), wall=False)
    plot_curves(groups, os.path.join(args.output, "curves_walltime.png"), wall=True)

    commands = sorted({r.launch["manifest"]["command"] for r in runs if "manifest" in r.launch})
    tags = sorted({r.launch["manifest"]["git_describe"] for r in runs if "manifest" in r.launch})
    report_cmd = shlex.join(["python", "benchmarks/report.py"] + (sys.argv[1:] if argv is None else list(argv)))
    lines = [f"# {args.title}", ""]
    if args.note:
        lines += [args.note, ""]
    lines += ["Produced by:", "", "```bash"] + commands + [report_cmd, "```", ""]
    if tags:
        lines += [f"Code version (`git describe --always --dirty`, also the runs' `WANDB_TAGS`): {', '.join(tags)}", ""]
    scripts = sorted(
        {
            (m["script_file"], m["script_sha256"][:12], m["script_uncommitted_changes"])
            for m in (r.launch["manifest"] for r in runs if "manifest" in r.launch)
            if "script_sha256" in m
        }
    )
    for file, digest, modified in scripts:
        state = {True: "with uncommitted changes", False: "as committed", None: "git state unknown"}[modified]
        lines += [f"Script: `{file}` sha256 {digest}... ({state} at launch)", ""]
    lines += [f"Hardware: {hardware_line(runs)}", ""]
    settings_md = settings_table(groups)
    lines += ["## Settings that differ", "", settings_md] if settings_md else []
    lines += ["## Final returns", "", returns_md, "## Speed", "", speed_md]
    lines += ["## Learning curves", "", "![returns vs policy steps](curves_steps.png)", ""]
    lines += ["![returns vs wall time](curves_walltime.png)", ""]
    with open(os.path.join(args.output, "report.md"), "w") as f:
        f.write("\n".join(lines))
    print(f"report: {len(runs)} run(s) in {len(groups)} group(s) -> {args.output}")
    print(returns_md)
    print(speed_md)
    return {"runs": per_run, "returns": returns_rows, "speed": speed_rows}


if __name__ == "__main__":
    main()
