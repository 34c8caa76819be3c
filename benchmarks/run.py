# Benchmark launcher: one script x env ids x seeds, several runs at once, each optionally under torchrun.
# Every run gets a fixed run directory `<out>/runs/{env_id}__{exp_name}__{seed}__{unix time}` ('/' and ':' of the env
# id as '-'), a log file, its wall time and peak memory, and a line in `<out>/manifest.json`; `WANDB_TAGS` names the
# code version (`git describe`).
# The report (benchmarks/report.py) is run on `<out>` at the end. Usage: benchmarks/README.md.
#
#   python benchmarks/run.py --script algos/sac.py --env-ids Pendulum-v1 --seeds 1 2 3 --total-steps 20000
#   python benchmarks/run.py --quick                       # the whole pipeline on tiny budgets, in about a minute
#   python benchmarks/run.py --torchrun 2 ... -- --per-rank-batch-size 128   # flags after `--` go to the script
import contextlib
import dataclasses
import difflib
import json
import os
import platform
import resource
import shlex
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import tyro

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Args:
    script: str = "algos/sac.py"
    """the training script (a path; relative paths are tried from the current directory, then the repository)"""
    env_ids: tuple[str, ...] = ("Pendulum-v1",)
    """environment ids, passed as `--env-id`"""
    seeds: tuple[int, ...] = (1, 2, 3)
    """seeds, passed as `--seed`"""
    total_steps: str | None = None
    """global policy steps of each run, passed as `--total-steps` (accepts 1e6; default: the script's own)"""
    workers: int = 1
    """how many runs execute at the same time"""
    torchrun: int = 0
    """0: plain `python`; N >= 1: each run under `torchrun --standalone --nproc-per-node N` (its own free port)"""
    track: bool = False
    """if toggled, pass `--track` to each run (W&B; honours WANDB_MODE=offline)"""
    torch_threads: int = 1
    """passed as `--torch-threads` (torch threads per process)"""
    out: str | None = None
    """output directory: runs in `<out>/runs/`, logs in `<out>/logs/`, `<out>/manifest.json`
    (default: `runs/benchmarks/<script stem>__<unix time>`)"""
    report: bool = True
    """if toggled, run benchmarks/report.py on `<out>` at the end (writes `<out>/report/`)"""
    report_dir: str | None = None
    """where the report goes (default: `<out>/report`)"""
    report_title: str | None = None
    """passed to the report as `--title`"""
    report_note: str | None = None
    """passed to the report as `--note` (e.g. how loaded the machine was)"""
    quick: bool = False
    """smoke-test preset: Pendulum-v1 (CartPole-v1 for Dreamer), seeds 1 2, tiny budgets, 2 workers, then the report
    (flags given explicitly win over the preset)"""
    dry_run: bool = False
    """if toggled, print the commands and exit"""


# Tiny budgets per script stem for `--quick`; flags after `--` are appended (and win, as the last value wins).
QUICK = {
    "sac_continuous": dict(
        env_ids=("Pendulum-v1",),
        flags=["--total-steps", "400", "--learning-starts", "200", "--log-every", "50", "--eval-episodes", "1"],
    ),
    "dreamer": dict(
        env_ids=("CartPole-v1",),
        flags=["--total-steps", "400", "--learning-starts", "200", "--log-every", "50", "--eval-episodes", "1"],
    ),
}


def resolve_script(script: str) -> str:
    for candidate in (script, os.path.join(REPO, script)):
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    sys.exit(f"error: --script: {script} not found (from {os.getcwd()} or {REPO}); e.g. --script algos/sac.py")


def script_stem(path: str) -> str:
    """The script's default exp_name: the real file stem (algos/sac.py is a symlink to sac_continuous.py)."""
    return os.path.splitext(os.path.basename(os.path.realpath(path)))[0]


def git_describe(cwd: str = REPO) -> str:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=cwd, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def script_version(script: str) -> dict:
    """The script's exact content (sha256) and whether it differs from the last commit: with a shared, dirty working
    tree `git describe --dirty` alone cannot tell which code ran."""
    import hashlib

    real = os.path.realpath(script)
    with open(real, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    try:  # an untracked script (a copy not yet committed) counts as changed: `git diff` and `--dirty` ignore it
        where = dict(cwd=os.path.dirname(real), capture_output=True, timeout=10)
        tracked = subprocess.run(["git", "ls-files", "--error-unmatch", "--", real], **where).returncode  # 1: untracked
        diff = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", real], **where).returncode if tracked == 0 else tracked
        modified = {0: False, 1: True}.get(diff)
    except (OSError, subprocess.SubprocessError):
        modified = None
    return {"script_file": os.path.relpath(real, REPO), "script_sha256": digest, "script_uncommitted_changes": modified}


def code_version(script: str) -> tuple[str, dict]:
    """(the WANDB_TAGS value, script_version): `git describe --dirty`, with `-dirty` also when the script itself is
    uncommitted or untracked (a fresh copy), which `--dirty` does not see."""
    tag, version = git_describe(os.path.dirname(script)), script_version(script)
    return tag + ("-dirty" if version["script_uncommitted_changes"] and not tag.endswith("-dirty") else ""), version


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> dict:
    """The machine the runs execute on (the report prints it as the hardware line)."""
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "gpu": ", ".join(gpus) if gpus else "none",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }


def tree_pids(pid: int) -> list[int]:
    """`pid` and all its descendants, from /proc (Linux; only `pid` elsewhere)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
    return found


def tree_rss_kb(pid: int) -> int:
    """Resident memory (kB) of `pid` and all its descendants, from /proc (Linux; 0 elsewhere)."""
    total = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                total += next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
        except (OSError, ValueError):
            continue
    return total


# Stopping: every child starts in its own session, so a Ctrl-C at the terminal reaches the launcher alone, and the
# launcher stops its children itself (stop_children) and records them. RUNNING: the children not yet reaped, by pid
# (= their process group), each with the signal that stops it (None: the one the launcher got); STOP: that signal.
RUNNING: dict[int, int | None] = {}
STOP: dict = {"signum": 0}
CHILDREN = threading.RLock()  # reentrant: scaling.py starts its runs from the main thread, where the handler runs


def start(cmd: list[str], stop_with: int | None = None, **popen) -> subprocess.Popen:
    if stop_with is None and "torch.distributed.run" in cmd:  # torchrun passes the signal on to its workers, which
        stop_with = signal.SIGINT  # close their event files and W&B on SIGINT but keep SIGTERM's default (sudden death)
    with CHILDREN:
        proc = subprocess.Popen(cmd, start_new_session=True, **popen)
        RUNNING[proc.pid] = stop_with
        if STOP["signum"]:  # the launcher was stopped while this child started
            os.killpg(proc.pid, stop_with or STOP["signum"])
    return proc


def reaped(pid: int) -> None:
    with CHILDREN:
        RUNNING.pop(pid, None)


def stop_children(signum: int, frame=None) -> None:
    """SIGINT/SIGTERM handler: start no more runs and pass the signal to the running ones' process groups (the scripts
    close their event files and W&B, torchrun stops its workers); a second signal, or 60 s, kills what still runs."""
    with CHILDREN:
        first, STOP["signum"] = not STOP["signum"], STOP["signum"] or signum
        for pid, stop_with in RUNNING.items():
            if first:
                with contextlib.suppress(ProcessLookupError):  # a hang-up: the scripts stop cleanly on SIGTERM
                    os.killpg(pid, stop_with or (signal.SIGTERM if signum == getattr(signal, "SIGHUP", 0) else signum))
                continue
            for p in tree_pids(pid):  # torchrun's workers lead sessions of their own: kill each process of the tree
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
    if first:
        STOP["timer"] = threading.Timer(60, stop_children, (signal.SIGKILL,))
        STOP["timer"].daemon = True
        STOP["timer"].start()


@contextlib.contextmanager
def children_stopped_by_signals():
    """While inside: SIGINT, SIGTERM and SIGHUP stop the children (stop_children) instead of the launcher, which then
    ends itself (exit 128 + STOP["signum"]) with the children recorded."""
    STOP["signum"] = 0
    stoppers = [signal.SIGINT, signal.SIGTERM] + [signal.SIGHUP] * hasattr(signal, "SIGHUP")  # a closed terminal too
    previous = {s: signal.signal(s, stop_children) for s in stoppers}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if STOP.get("timer"):  # a later call in this process must not meet the kill meant for this one's runs
            STOP.pop("timer").cancel()


def launch(cmd: list[str], cwd: str, env: dict, log_path: str) -> dict:
    """Run `cmd` to completion with stdout+stderr in `log_path`. Returns the exit code, wall time, the peak RSS of
    its largest single process (exact, from wait4) and the peak summed RSS of its process tree (sampled each 0.5 s);
    and `interrupted` (the signal's name) when the launcher was stopped (stop_children) and the run did not succeed."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "w") as log:
        log.write("$ " + shlex.join(cmd) + "\n")
        log.flush()
        start_time, load_start = time.time(), os.getloadavg()[0]
        proc = start(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        peak_tree, done = [0], threading.Event()

        def sample():
            while not done.wait(0.5):
                peak_tree[0] = max(peak_tree[0], tree_rss_kb(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)  # the rusage of this child (and its reaped descendants) alone
        reaped(proc.pid)
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.time() - start_time
    # Linux reports ru_maxrss in kB, macOS in bytes
    peak = usage.ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)
    result = {
        "returncode": proc.returncode,
        "wall_time_s": round(wall, 3),
        "peak_rss_mb": round(peak, 1),
        "peak_tree_rss_mb": round(max(peak_tree[0] / 1024, peak), 1),
        "start_time": start_time,
        "loadavg_1min": [round(load_start, 2), round(os.getloadavg()[0], 2)],  # at start and at exit
    }
    if STOP["signum"] and proc.returncode != 0:
        result["interrupted"] = signal.Signals(STOP["signum"]).name
    return result


def error_line(log_path: str) -> str:
    """Why a run failed, from its log: the script's own error line (or the line it printed when a signal stopped it,
    rather than torchrun's traceback), else the message of tyro's box (an unknown or malformed flag; the box's last
    line is its border), else the last line that is more than decoration."""
    with open(log_path, errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
    for prefixes in (("error:", "error ("), ("warning: SIGINT", "warning: SIGTERM")):
        own = [line for line in lines if line.startswith(prefixes)]
        if own:
            return own[-1]
    decoration = "│╭╮╰╯─=- "  # tyro's boxes and torchrun's summary
    tops = [i for i, line in enumerate(lines) if line.startswith("╭")]
    if tops and lines[-1].startswith("╰"):  # tyro's message: the box's first section, down to its first rule
        message = []
        for line in lines[tops[-1] + 1 :]:
            if not line.strip(decoration):
                break
            message.append(line.strip("│ "))
        return " ".join(message)
    return next((line for line in reversed(lines) if line.strip(decoration)), "")


def run_command(script: str, torchrun: int, flags: list[str]) -> list[str]:
    if torchrun:
        # --standalone: a private rendezvous on a free local port, so concurrent torchruns never collide
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={torchrun}"]
        return launcher + [script] + flags
    return [sys.executable, script] + flags


def short(path: str) -> str:
    """`path` relative to the current directory when it lies inside it (so recorded commands stay portable)."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """Launcher flags before `--`, script flags after it."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


def given_flags(argv: list[str]) -> set[str]:
    """The flags typed in `argv`, as field names (`--env-ids` and `--env_ids=X` give `env_ids`): a preset changes only
    the flags left out, even when a typed value equals the default."""
    return {a[2:].split("=", 1)[0].replace("-", "_") for a in argv if a.startswith("--")}


# torchrun's flags (and a shorthand) typed to the launcher: its flag for them
TORCHRUN_FLAGS = {"--nproc": "--torchrun", "--nproc-per-node": "--torchrun", "--nproc_per_node": "--torchrun",
                  "--nnodes": "--torchrun", "--standalone": "--torchrun"}  # fmt: skip


def flag_hint(own: list[str]) -> str:
    """The hint under tyro's error for an unknown launcher flag: the launcher flag it is close to, if any (difflib), else
    where script flags go."""
    names = ["--help"]
    for f in dataclasses.fields(Args):
        names += [f"--{f.name.replace('_', '-')}"] + ([f"--no-{f.name.replace('_', '-')}"] if f.type is bool else [])
    for flag in (a.split("=", 1)[0] for a in own if a.startswith("--")):
        close = difflib.get_close_matches(flag, names + list(TORCHRUN_FLAGS), n=1, cutoff=0.8)
        if flag not in names and close:
            return f"hint: {flag} is not a launcher flag; did you mean {TORCHRUN_FLAGS.get(close[0], close[0])}?"
    return "hint: flags for the script go after `--`: python benchmarks/run.py ... -- --learning-starts 1000"


def main(argv: list[str] | None = None) -> dict:
    # SIGINT/SIGTERM stop the running runs (stop_children), which are recorded; then exit 128 + signum
    with children_stopped_by_signals():
        return run_all(sys.argv[1:] if argv is None else argv)


def run_all(argv: list[str]) -> dict:
    own, extra = split_argv(argv)
    try:
        args = tyro.cli(Args, args=own, description="Launch a script over env ids x seeds and report the results.")
    except SystemExit as e:  # most often a script flag given to the launcher
        if e.code == 2 and "--" not in argv:
            print(flag_hint(own), file=sys.stderr)
        raise
    for flag, own_flag in [("--env-id", "--env-ids"), ("--seed", "--seeds"), ("--run-name", "--out")]:
        if any(a == flag or a.startswith(flag + "=") for a in extra):  # every run would get the same one
            sys.exit(f"error: {flag} after `--`: the launcher sets it for each run; use run.py's {own_flag} instead")
    script = resolve_script(args.script)
    stem = script_stem(script)
    flags = []
    if args.quick:
        preset = QUICK.get(stem, QUICK["dreamer" if "dreamer" in stem else "sac_continuous"])
        typed = given_flags(own)
        for name, value in [("env_ids", preset["env_ids"]), ("seeds", (1, 2)), ("workers", 2)]:
            if name not in typed:
                setattr(args, name, value)
        flags += preset["flags"]
    if args.total_steps is not None:
        flags += ["--total-steps", args.total_steps]
    flags += ["--torch-threads", str(args.torch_threads)]
    if args.track:
        flags.append("--track")
    for flag, value in [("--workers", args.workers), ("--torch-threads", args.torch_threads)]:
        if value < 1:
            sys.exit(f"error: {flag}: got {value}; it must be at least 1")
    if args.torchrun < 0:
        sys.exit(f"error: --torchrun: got {args.torchrun}; use 0 (plain python) or a number of processes")
    for flag, values in [("--env-ids", args.env_ids), ("--seeds", args.seeds)]:
        if len(set(values)) < len(values):  # two runs of one name: the second would find the first's directory taken
            sys.exit(f"error: {flag}: {' '.join(map(str, values))} repeats a value; give each once")

    out = os.path.abspath(args.out or os.path.join("runs", "benchmarks", f"{stem}__{int(time.time())}"))
    tag, version = code_version(script)
    env = dict(os.environ, WANDB_TAGS=tag, OMP_NUM_THREADS=str(args.torch_threads), PYTHONUNBUFFERED="1")
    exp_name = extra[extra.index("--exp-name") + 1] if "--exp-name" in extra[:-1] else stem
    exp_name = next((a.split("=", 1)[1] for a in extra if a.startswith("--exp-name=")), exp_name)
    stamp = int(time.time())
    jobs = []
    for env_id in args.env_ids:
        for seed in args.seeds:
            run_name = f"{env_id.replace('/', '-').replace(':', '-')}__{exp_name}__{seed}__{stamp}"  # as the scripts name runs
            job_flags = ["--env-id", env_id, "--seed", str(seed), "--run-name", run_name] + flags + extra
            jobs.append(
                {
                    "script": os.path.relpath(script, REPO) if script.startswith(REPO) else script,
                    "exp_name": exp_name,
                    "env_id": env_id,
                    "seed": seed,
                    "world_size": max(args.torchrun, 1),
                    "run_name": run_name,
                    "run_dir": os.path.join("runs", run_name),
                    "log": os.path.join("logs", run_name + ".log"),
                    "command": shlex.join(run_command(script, args.torchrun, job_flags)),
                    "cmd": run_command(script, args.torchrun, job_flags),
                }
            )
    if args.dry_run:
        print(f"# {len(jobs)} run(s), {args.workers} at a time")
        for job in jobs:
            print(f"(cd {out} && WANDB_TAGS={tag} OMP_NUM_THREADS={args.torch_threads} {job['command']})")
        return {}

    os.makedirs(out, exist_ok=True)
    manifest = {
        "command": shlex.join(["python", short(os.path.abspath(__file__))] + argv),  # runnable from "cwd"
        "cwd": os.getcwd(),
        "git_describe": tag,
        "wandb_tags": tag,
        **version,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "hardware": hardware() | {"torch_threads": args.torch_threads, "workers": args.workers},
        "runs": [],
    }
    manifest_path = os.path.join(out, "manifest.json")
    write_json(manifest_path, manifest)
    lock = threading.Lock()
    print(f"{len(jobs)} run(s), {args.workers} at a time; output in {out}; WANDB_TAGS={tag}", flush=True)

    def execute(job: dict) -> dict | None:
        if STOP["signum"]:  # the launcher was stopped before this run began
            return None
        print(f"start  {job['run_name']}: {job['command']}", flush=True)
        result = launch(job["cmd"], out, env, os.path.join(out, job["log"]))
        record = {k: v for k, v in job.items() if k != "cmd"} | result
        status = "ok" if result["returncode"] == 0 else f"FAILED (exit {result['returncode']}, see {job['log']})"
        if "interrupted" not in result:  # a stopped launcher prints one line at the end
            print(f"finish {job['run_name']}: {status}, {result['wall_time_s']:.0f} s, {result['peak_tree_rss_mb']:.0f} MB")
        if result["returncode"] and "interrupted" not in result:  # the script's own reason, from its log
            print("       " + error_line(os.path.join(out, job["log"])))
        with lock:
            manifest["runs"].append(record)
            manifest["runs"].sort(key=lambda r: (r["env_id"], r["seed"]))
            write_json(manifest_path, manifest)
        return record

    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        records = [r for r in pool.map(execute, jobs) if r]
    manifest["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    manifest["cpu_time_s"] = round(children.ru_utime + children.ru_stime, 1)
    if STOP["signum"]:  # the runs that stopped carry `interrupted` in their entries
        manifest["interrupted"] = signal.Signals(STOP["signum"]).name
        started = {r["run_name"] for r in records}
        manifest["not_started"] = [job["run_name"] for job in jobs if job["run_name"] not in started]
    write_json(manifest_path, manifest)
    if STOP["signum"]:
        stopped = sum("interrupted" in r for r in records)
        print(f"run.py: {manifest['interrupted']}: stopped {stopped} running run(s); finished ones are in {out}",
              file=sys.stderr)  # fmt: skip
        sys.exit(128 + STOP["signum"])

    failed = [r for r in records if r["returncode"] != 0]
    if args.report and len(failed) == len(records):
        print("no run succeeded: no report", file=sys.stderr)
    elif args.report:
        report_dir = os.path.abspath(args.report_dir or os.path.join(out, "report"))
        cmd = [
            sys.executable,
            os.path.join(REPO, "benchmarks", "report.py"),
            "--runs",
            short(out),
            "--output",
            short(report_dir),
        ]
        cmd += ["--title", args.report_title] if args.report_title else []
        cmd += ["--note", args.report_note] if args.report_note else []
        print("$ " + shlex.join(cmd), flush=True)
        proc = start(cmd, stop_with=signal.SIGTERM)  # SIGTERM: the report stops without a traceback
        proc.wait()
        reaped(proc.pid)
        if STOP["signum"]:
            print(f"run.py: {signal.Signals(STOP['signum']).name}: stopped the report; the runs are in {out}",
                  file=sys.stderr)  # fmt: skip
            sys.exit(128 + STOP["signum"])
        if proc.returncode != 0:
            failed.append({"run_name": "report"})
    if failed:
        print(f"{len(failed)} failed: " + ", ".join(r["run_name"] for r in failed), file=sys.stderr)
        sys.exit(1)
    return manifest


if __name__ == "__main__":
    main()
