"""benchmarks/ tools (run.py, scaling.py, dreamer_speed.py, sac_speed.py): presets that keep the flags given, stopping
by a signal, the failed run's reason, flag hints, output folders. Fake scripts keep every test to a few seconds."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import report  # noqa: E402
import run as launcher  # noqa: E402
import scaling  # noqa: E402

ENV = dict(os.environ, WANDB_MODE="disabled", PYTHONUNBUFFERED="1")

# A run that never ends by itself: it notes its pid in <cwd>/pids/ and sleeps (30 s, in case a test fails)
SLEEPER = """
import os, time
os.makedirs("pids", exist_ok=True)
open(os.path.join("pids", str(os.getpid())), "w").close()
time.sleep(30)
"""


def test_quick_preset_keeps_the_flags_given(capsys):
    launcher.main(["--dry-run", "--quick", "--workers", "1"])  # 1 is the default value: still the user's choice
    assert capsys.readouterr().out.startswith("# 2 run(s), 1 at a time\n")
    launcher.main(["--dry-run", "--quick", "--script", "algos/dreamer.py", "--seeds", "1", "2", "3", "--env-ids=Pendulum-v1"])
    commands = capsys.readouterr().out.splitlines()[1:]
    assert len(commands) == 3 and all("algos/dreamer.py --env-id Pendulum-v1 --seed" in c for c in commands)
    assert [c.split("--seed ")[1].split()[0] for c in commands] == ["1", "2", "3"]
    launcher.main(["--dry-run", "--quick", "--script", "algos/dreamer.py"])  # what was not given comes from the preset
    out = capsys.readouterr().out
    assert out.startswith("# 2 run(s), 2 at a time\n") and out.count("--env-id CartPole-v1 --seed") == 2


def test_launcher_hints_the_launcher_flag_a_mistyped_one_is_close_to(capsys):
    for typed, hint in [("--nproc", "--torchrun"), ("--env-id", "--env-ids"), ("--worker", "--workers")]:
        with pytest.raises(SystemExit):
            launcher.main(["--dry-run", typed, "2"])
        err = capsys.readouterr().err
        assert f"hint: {typed} is not a launcher flag; did you mean {hint}?" in err and "after `--`" not in err
    with pytest.raises(SystemExit):  # a script flag: where script flags go
        launcher.main(["--dry-run", "--learning-starts", "100"])
    err = capsys.readouterr().err
    assert "hint: flags for the script go after `--`" in err and "did you mean" not in err


def test_launcher_prints_the_message_of_tyros_box_for_a_failed_run(tmp_path):
    out = str(tmp_path / "bad")
    argv = ["--seeds", "1", "--out", out, "--no-report", "--", "--no-such-flag", "1"]
    result = subprocess.run(
        [sys.executable, "benchmarks/run.py", *argv], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert "\n       Unrecognized options: --no-such-flag, 1\n" in result.stdout  # not the box's border `╰───╯`


def test_error_line_prefers_the_scripts_own_line_to_torchruns(tmp_path):
    log = tmp_path / "run.log"
    log.write_text(
        "error (rank 0): --foo: bad\n"
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:\n"
        "============================================================\n"
        "  exitcode  : 2 (pid: 123)\n  error_file: <N/A>\n"
        "============================================================\n"
    )
    assert launcher.error_line(str(log)) == "error (rank 0): --foo: bad"  # not torchrun's `error_file: <N/A>`
    log.write_text(
        "warning: SIGINT: stopped; no checkpoint was written yet\nTraceback (most recent call last):\n"
        "torch.distributed.elastic.multiprocessing.api.SignalException: Process 1 got signal: 2\n"
    )
    assert launcher.error_line(str(log)) == "warning: SIGINT: stopped; no checkpoint was written yet"
    log.write_text("Traceback (most recent call last):\nValueError: x\n─────────\n")
    assert launcher.error_line(str(log)) == "ValueError: x"  # the last line that is more than decoration


def wait_for_pids(folder: str, count: int, proc: subprocess.Popen) -> list[int]:
    end = time.time() + 60
    while not (os.path.isdir(folder) and len(os.listdir(folder)) >= count):
        assert time.time() < end and proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    return [int(name) for name in os.listdir(folder)]


def kill_leftovers(pids: list[int]) -> list[int]:
    """The pids still running (killed here, so that a failing test leaves nothing behind)."""
    alive = [pid for pid in pids if os.path.exists(f"/proc/{pid}")]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    return alive


@pytest.mark.parametrize("signum, whole_group", [(signal.SIGTERM, False), (signal.SIGINT, True), (signal.SIGHUP, False)])
def test_launcher_stops_and_records_its_runs_on_a_signal(tmp_path, signum, whole_group):
    """`kill -TERM <launcher>`, Ctrl-C at the terminal (SIGINT to the whole process group), or a closed terminal
    (SIGHUP, which no longer reaches the runs, each in its own session): the running runs stop, the manifest records
    them (in a form report.py reads) and the run not started, and the launcher exits 128 + signum with one line."""
    script, out = tmp_path / "sleeper.py", str(tmp_path / "out")
    script.write_text(SLEEPER)
    argv = ["--script", str(script), "--seeds", "1", "2", "3", "--workers", "2", "--out", out, "--no-report"]
    proc = subprocess.Popen(
        [sys.executable, "benchmarks/run.py", *argv],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a shell gives a command
    )
    pids = wait_for_pids(os.path.join(out, "pids"), 2, proc)
    (os.killpg if whole_group else os.kill)(proc.pid, signum)
    _, err = proc.communicate(timeout=60)
    assert kill_leftovers(pids) == []
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum
    assert err == f"run.py: {name}: stopped 2 running run(s); finished ones are in {out}\n"
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert manifest["interrupted"] == name and [r["seed"] for r in manifest["runs"]] == [1, 2]
    assert len(manifest["not_started"]) == 1 and "__3__" in manifest["not_started"][0]  # seed 3
    entry = report.load_manifests(os.path.join(out, "runs", manifest["runs"][0]["run_name"]))
    assert entry["interrupted"] == name and entry["wall_time_s"] > 0 and entry["manifest"]["hardware"]["cores"]


def test_scaling_stops_its_torchrun_on_a_signal(tmp_path):
    script, out = tmp_path / "sleeper.py", str(tmp_path / "out")
    script.write_text(SLEEPER)
    proc = subprocess.Popen(
        [sys.executable, "benchmarks/scaling.py", "--script", str(script), "--out", out],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pids = wait_for_pids(os.path.join(out, "pids"), 1, proc)  # torchrun's worker
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert kill_leftovers(pids) == []
    assert proc.returncode == 128 + signal.SIGTERM
    assert err == f"scaling.py: SIGTERM: stopped 1 process; finished runs are in {out}\n"
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert manifest["interrupted"] == "SIGTERM" and [r["interrupted"] for r in manifest["runs"]] == ["SIGTERM"]


def test_scaling_quick_keeps_the_flags_given_and_prints_the_reason_of_a_failure(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="got 63; use an even number"):  # not B=64 from the preset
        scaling.main(["--quick", "--per-rank-batch-size", "63", "--script", str(tmp_path / "not_reached.py")])
    script, out = tmp_path / "failing.py", str(tmp_path / "out")
    script.write_text("import sys\nprint('error: --bogus: refused by the test', file=sys.stderr)\nsys.exit(2)\n")
    argv = ["--quick", "--env-id", "NoSuch-v0", "--per-rank-steps", "1000", "--script", str(script), "--out", out]
    with pytest.raises(SystemExit) as e:
        scaling.main(argv + ["--", "--bogus", "1"])
    [log] = os.listdir(os.path.join(out, "logs"))
    assert str(e.value.code) == (
        f"error: 1 process failed (exit 1); see {os.path.join(out, 'logs', log)}\n       error: --bogus: refused by the test"
    )
    command = json.load(open(os.path.join(out, "manifest.json")))["runs"][0]["command"]
    assert "--env-id NoSuch-v0" in command and "--total-steps 1000 --learning-starts 200" in command
    assert f"tables to {os.path.join(out, 'scaling')}" in capsys.readouterr().out  # under --out, not ./benchmarks/
    assert sorted(os.listdir(tmp_path)) == ["failing.py", "out"]


def test_dreamer_speed_out_flag_steps_check_and_failure_reason(tmp_path):
    tool = os.path.join(REPO, "benchmarks", "dreamer_speed.py")

    def run(*a):
        return subprocess.run([sys.executable, tool, *a], cwd=tmp_path, capture_output=True, text=True, timeout=120)

    result = run("--steps", "0")
    assert (result.returncode, result.stderr) == (2, "error: --steps: got 0; it must be at least 1\n")
    out = tmp_path / "speed"
    result = run("--presets", "huge", "--steps", "1", "--out", str(out))
    assert result.returncode == 1
    failed, reason = result.stderr.splitlines()[-2:]
    assert failed.startswith(f"huge_B16 failed; see {out}{os.sep}runs{os.sep}") and failed.endswith("huge_B16.log")
    assert reason.strip().startswith("invalid choice 'huge' for argument '--size'")
    assert sorted(os.listdir(tmp_path)) == ["speed"]  # its runs go under --out, not into ./runs or the repository's
    help_text = run("--help").stdout
    assert "gradient steps timed per preset" in help_text and "benchmarks/results/dreamer_speed/)" in help_text


def test_sac_speed_has_a_description_and_runs_the_cleanrl_loops_in_its_output_folder(tmp_path, monkeypatch):
    help_text = subprocess.run(
        [sys.executable, "benchmarks/sac_speed.py", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    ).stdout
    assert "SAC speed on CPU: steprl's gradient step and training loop" in help_text
    import sac_speed

    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(kwargs)
        return subprocess.CompletedProcess(cmd, 0, stdout="12.5\n")

    monkeypatch.setattr(sac_speed.subprocess, "run", fake_run)
    assert sac_speed.cleanrl_loop_sps_subprocess(10, 1, False, str(tmp_path)) == 12.5
    assert calls[0]["cwd"] == str(tmp_path)  # MuJoCo's MUJOCO_LOG.TXT lands there, not in the caller's directory


def test_launcher_refuses_repeated_seeds_and_records_a_command_runnable_from_its_cwd(tmp_path, capsys):
    for flag, values in [("--seeds", ["1", "1"]), ("--env-ids", ["Pendulum-v1", "Pendulum-v1"])]:
        with pytest.raises(SystemExit) as e:  # two runs of one name: the second found the first's directory taken
            launcher.main(["--dry-run", flag, *values])
        assert f"error: {flag}: {' '.join(values)} repeats a value; give each once" in str(e.value)
    launcher.main(["--dry-run", "--env-ids", "Pendulum-v1", "--seeds", "1", "--torch-threads", "2"])
    assert " OMP_NUM_THREADS=2 " in capsys.readouterr().out  # the launcher's environment, as the runs get it
    script = tmp_path / "quick.py"
    script.write_text("print('done')\n")
    run_py = os.path.join(REPO, "benchmarks", "run.py")
    argv = ["--script", str(script), "--seeds", "1", "--out", "o", "--no-report"]
    done = subprocess.run([sys.executable, run_py, *argv], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["command"].startswith(f"python {run_py} --script ")  # absolute: the cwd is outside the repo


def test_a_torchrun_run_is_stopped_with_sigint():
    """torchrun passes the signal on to its workers, which close their event files and W&B on SIGINT only."""
    sleep = [sys.executable, "-c", "import time; time.sleep(30)"]
    with launcher.children_stopped_by_signals():
        runs = [launcher.start(sleep), launcher.start(sleep + ["torch.distributed.run"])]
        try:
            assert [launcher.RUNNING[p.pid] for p in runs] == [None, signal.SIGINT]
            launcher.stop_children(signal.SIGTERM)
            assert [p.wait(timeout=30) for p in runs] == [-signal.SIGTERM, -signal.SIGINT]
            assert launcher.STOP["timer"].is_alive()
        finally:
            for p in runs:
                p.kill()
                launcher.reaped(p.pid)
    assert "timer" not in launcher.STOP  # cancelled: a later launch in this process is not killed 60 s on
