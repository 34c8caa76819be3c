import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALGOS = ROOT / "algos"
TESTS = Path(__file__).resolve().parent


def load_script(name: str):
    """Import an algos/ script as a module (its `__main__` block does not run)."""
    spec = importlib.util.spec_from_file_location(f"steprl_script_{name}", ALGOS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # so that inspect (and tyro's docstring lookup) can find the source
    spec.loader.exec_module(module)
    return module


def script_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    env["WANDB_MODE"] = env.get("WANDB_MODE_TESTS", "disabled")
    env["OMP_NUM_THREADS"] = "1"
    env.pop("RANK", None), env.pop("WORLD_SIZE", None), env.pop("LOCAL_RANK", None)
    return env


def command(script: str, args: list[str], nproc: int = 1, torchrun_args: tuple[str, ...] = ()) -> list[str]:
    path = str(ALGOS / script)
    if nproc == 1 and not torchrun_args:
        return [sys.executable, path, *args]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *torchrun_args]
    return [*launcher, path, *args]


def run(script: str, args: list[str], cwd: Path, nproc: int = 1, timeout: float = 240, env: dict | None = None, **kw):
    """Run a script to completion; returns the CompletedProcess (text output)."""
    return subprocess.run(
        command(script, args, nproc, **kw), cwd=cwd, env=env or script_env(), capture_output=True, text=True, timeout=timeout
    )


def run_on_terminal(script: str, args: list[str], cwd: Path, timeout: float = 240) -> tuple[int, str]:
    """Run a script with its stderr on a pseudo-terminal 160 columns wide (so its progress bar shows, as for a user at
    a terminal); returns its exit code and what that terminal showed. A script still running after `timeout` s is
    killed and the test fails."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    proc = subprocess.Popen(command(script, args), cwd=cwd, env=script_env(), stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    shown, end = b"", time.time() + timeout
    try:
        while True:
            if not select.select([master], [], [], max(0.0, end - time.time()))[0]:
                proc.kill(), proc.wait()
                raise AssertionError(f"{script} still running after {timeout} s: " + shown.decode(errors="replace")[-2000:])
            try:
                chunk = os.read(master, 4096)
            except OSError:  # Linux reports a pseudo-terminal whose other side closed as EIO
                chunk = b""
            if not chunk:  # the script closed the terminal: it ended
                break
            shown += chunk
    finally:
        os.close(master)
    return proc.wait(timeout=60), shown.decode(errors="replace")


def wait_for(predicate, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Poll `predicate` until it holds; fails on the timeout, or when `proc` ends first."""
    end = time.time() + timeout
    while not predicate():
        assert time.time() < end, "timed out"
        assert proc is None or proc.poll() is None, "process ended before the condition"
        time.sleep(0.02)


def ledger(cwd: Path, run_name: str | None = None) -> dict:
    runs = sorted((cwd / "runs").iterdir()) if run_name is None else [cwd / "runs" / run_name]
    assert len(runs) == 1, runs
    return json.loads((runs[0] / "steps.json").read_text())


def scalars(run_dir: Path, prefix: str = "losses/") -> dict[str, list[tuple[int, float]]]:
    """Every scalar under `prefix` in a run's TensorBoard events, as (step, value) lists."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"] if t.startswith(prefix)}


@pytest.fixture
def workdir(tmp_path):
    return tmp_path


def _descendants() -> dict[int, bytes]:
    """Every live process below this one, with its command line."""
    parent, cmdline = {}, {}
    for entry in os.listdir("/proc"):
        try:
            stat = open(f"/proc/{entry}/stat").read()
            cmdline[int(entry)] = open(f"/proc/{entry}/cmdline", "rb").read()
            parent[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):  # not a process, or one that just ended
            continue
    found, todo = {}, [os.getpid()]
    while todo:
        above = todo.pop()
        kids = [pid for pid, ppid in parent.items() if ppid == above]
        found.update({pid: cmdline.get(pid, b"") for pid in kids}), todo.extend(kids)
    return found


@pytest.fixture(autouse=True)
def no_leftover_processes():
    """A test that fails while a script it started still runs (a 1e6-step run waiting for a signal) must not leave it
    running through the rest of the suite on a 2-core machine: the scripts and torchruns it started, and their workers,
    are killed when it ends (not other helpers of this process, such as torch.compile's worker pool)."""
    before = _descendants()
    yield
    for pid, cmd in _descendants().items():
        if pid not in before and (str(ALGOS).encode() in cmd or b"torch.distributed.run" in cmd):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
