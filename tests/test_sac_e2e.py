"""End to end through subprocesses: plain python and torchrun, ledgers against plans, rank sync, determinism,
checkpoint/resume, tracking, video, custom envs and bad input."""

import fcntl
import json
import math
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import ALGOS, command, ledger, run, run_on_terminal, scalars, script_env, wait_for

FAST = ["--env-id", "Pendulum-v1", "--per-rank-batch-size", "32", "--per-rank-buffer-size", "20000", "--no-cuda",
        "--eval-episodes", "0", "--log-every", "200"]  # fmt: skip


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc


def check_ledger_equals_plan(led: dict) -> None:
    plan, actual = led["plan"], led["actual"]
    assert actual["policy_steps"] == plan["policy_steps"]
    assert actual["gradient_steps"] == plan["gradient_steps"] == sum(actual["per_rank_gradient_steps"])
    assert actual["per_rank_gradient_steps"] == [plan["per_rank_gradient_steps"]] * plan["world_size"]


def test_single_process_ledger(workdir):
    proc = ok(run("sac.py", FAST + ["--total-steps", "600", "--num-envs", "2", "--learning-starts", "100",
                                    "--replay-ratio", "0.75"], workdir))  # fmt: skip
    led = ledger(workdir)
    assert led["plan"] == {"world_size": 1, "num_envs": 2, "policy_steps_per_iteration": 2, "iterations": 300,
                           "random_iterations": 50, "training_iterations": 250, "policy_steps": 600, "env_steps": 600,
                           "per_rank_gradient_steps": 375, "gradient_steps": 375}  # fmt: skip
    check_ledger_equals_plan(led)
    assert led["actual"]["env_steps"] == 600  # action repeat 1: one env step per policy step
    assert led["actual"]["episodes"] == 2  # Pendulum: 200-step episodes, 300 steps per env
    assert led["actual"]["replay_ratio"] == 375 / 500
    assert "step plan: 1 process(es) x 2 env(s) = 2 policy steps per iteration" in proc.stdout
    run_dir = next((workdir / "runs").iterdir())
    assert run_dir.name.startswith("Pendulum-v1__sac_continuous__1__")
    tags = scalars(run_dir, "charts/")
    assert tags["charts/gradient_steps"][-1] == (600, 375.0)
    assert tags["charts/env_steps"][-1] == (600, 600.0)
    assert tags["charts/replay_ratio"][-1] == (600, 0.75)
    assert [s for s, _ in tags["charts/episodic_return"]] == [400]  # both episodes ended at policy step 400
    assert tags["charts/episodic_length"][-1][1] == 200


def test_action_repeat_ledger_counts_actual_env_steps(workdir):
    # Countdown terminates on its 129th env step: with repeat 4 an episode is 33 policy steps and 129 env steps.
    args = FAST + ["--env-id", "steprl_testenvs:Countdown-v0", "--action-repeat", "4", "--total-steps", "66",
                   "--learning-starts", "66", "--num-envs", "1"]  # fmt: skip
    ok(run("sac.py", args, workdir))
    led = ledger(workdir)
    assert led["plan"]["env_steps"] == 264
    assert (led["actual"]["env_steps"], led["actual"]["episodes"]) == (258, 2)
    assert led["actual"]["gradient_steps"] == 0


def test_torchrun_worked_case_1_and_ranks_in_sync(workdir):
    args = FAST + ["--total-steps", "1000", "--num-envs", "4", "--learning-starts", "100", "--replay-ratio", "0.5"]
    proc = ok(run("sac.py", args + ["--max-episode-steps", "50"], workdir, nproc=2))
    led = ledger(workdir)
    keys = ("policy_steps_per_iteration", "iterations", "random_iterations", "training_iterations")
    assert [led["plan"][k] for k in keys] == [8, 125, 13, 112]
    assert (led["plan"]["per_rank_gradient_steps"], led["plan"]["gradient_steps"]) == (224, 448)
    check_ledger_equals_plan(led)
    assert led["actual"]["per_rank_gradient_steps"] == [224, 224]
    assert led["actual"]["env_steps"] == 1000 and led["actual"]["policy_steps"] == 1000
    assert led["actual"]["episodes"] == 16  # 8 envs x 125 policy steps, episodes truncated at 50 policy steps
    checksums = led["actual"]["param_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    assert proc.stdout.count("step plan:") == 1  # rank 0 alone prints


def test_torchrun_worked_case_4_one_warning(workdir):
    args = FAST + ["--total-steps", "1001", "--num-envs", "4", "--learning-starts", "1001", "--checkpoint-every", "100",
                   "--run-name", "c4"]  # fmt: skip
    proc = ok(run("sac.py", args, workdir, nproc=2))
    led = ledger(workdir, "c4")
    assert (led["plan"]["iterations"], led["actual"]["policy_steps"]) == (125, 1000)
    assert proc.stderr.count("warning: --total-steps 1001 is not a multiple of 8") == 1
    # a cadence that is not a multiple of the 8 policy steps per iteration: said once, then at the first step past each
    assert proc.stderr.count("warning: --checkpoint-every 100 is not a multiple of 8 policy steps") == 1
    assert "--log-every" not in proc.stderr  # 200 is a multiple of 8
    assert [p.name for p in sorted((workdir / "runs/c4/checkpoints").iterdir())] == ["step_000000000904", "step_000000001000"]


def test_fixed_alpha_without_autotune_zero_included(workdir):
    for alpha in ("0.05", "0"):
        ok(run("sac.py", FAST + ["--total-steps", "300", "--learning-starts", "100", "--log-every", "100", "--no-autotune",
                                 "--alpha", alpha, "--run-name", alpha], workdir))  # fmt: skip
        logged = scalars(workdir / "runs" / alpha)
        assert [v for _, v in logged["losses/alpha"]] == pytest.approx([float(alpha)] * 2)
        assert "losses/alpha_loss" not in logged
        assert all(math.isfinite(v) for _, v in logged["losses/actor_loss"] + logged["losses/qf_loss"])


def test_same_seed_same_losses_and_other_seed_differs(workdir):
    args = FAST + ["--total-steps", "400", "--learning-starts", "100", "--log-every", "50"]
    losses = []
    for seed, name, extra in [(3, "a", []), (3, "b", []), (4, "c", []), (3, "d", ["--bf16"]), (3, "e", ["--bf16"])]:
        ok(run("sac.py", args + ["--seed", str(seed), "--run-name", name] + extra, workdir))
        losses.append(scalars(workdir / "runs" / name))
    assert set(losses[0]) >= {"losses/qf1_loss", "losses/qf2_loss", "losses/actor_loss", "losses/alpha_loss", "losses/alpha"}
    assert len(losses[0]["losses/qf1_loss"]) == 6
    assert losses[0] == losses[1]
    assert losses[0]["losses/qf1_loss"] != losses[2]["losses/qf1_loss"]
    assert losses[3] == losses[4]  # --bf16 is deterministic too
    assert losses[3]["losses/qf1_loss"] != losses[0]["losses/qf1_loss"]  # and really changes the update's arithmetic


def test_two_process_runs_repeat_too(workdir):
    """Under torchrun (gloo on CPU) the same seed gives the same losses and weights as well."""
    args = FAST + ["--total-steps", "400", "--learning-starts", "100", "--log-every", "50", "--num-envs", "2"]
    for name in "ab":
        ok(run("sac.py", args + ["--run-name", name], workdir, nproc=2))
    a, b = scalars(workdir / "runs" / "a"), scalars(workdir / "runs" / "b")
    assert len(a["losses/qf1_loss"]) == 6 and a == b
    assert ledger(workdir, "a")["actual"]["param_checksums"] == ledger(workdir, "b")["actual"]["param_checksums"]


def counters(led: dict) -> dict:
    a = led["actual"]
    return {"plan": led["plan"], "policy_steps": a["policy_steps"], "env_steps": a["env_steps"],
            "per_rank": a["per_rank_gradient_steps"], "gradient_steps": a["gradient_steps"]}  # fmt: skip


def test_kill_after_checkpoint_then_resume_gives_same_counters(workdir):
    args = FAST + ["--total-steps", "1600", "--learning-starts", "100", "--checkpoint-every", "200", "--num-envs", "2"]
    ok(run("sac.py", args + ["--run-name", "full"], workdir))
    full = ledger(workdir, "full")

    proc = subprocess.Popen(command("sac.py", args + ["--run-name", "cut"]), cwd=workdir, env=script_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    ckpts = workdir / "runs" / "cut" / "checkpoints"
    wait_for(lambda: ckpts.exists() and any(not p.name.endswith(".tmp") for p in ckpts.iterdir()), 120, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (workdir / "runs" / "cut" / "steps.json").exists(), "the run finished before it was killed"

    resumed = ok(run("sac.py", args + ["--run-name", "cut", "--resume", "yes"], workdir))
    assert "resumed from" in resumed.stdout and "settings differ" not in resumed.stderr  # the same flags: nothing said
    assert counters(ledger(workdir, "cut")) == counters(full)
    assert len(list(ckpts.iterdir())) == 2  # --keep-checkpoints 2 (default)


def test_checkpoint_loads_with_weights_only(workdir):
    import torch

    ok(run("sac.py", FAST + ["--total-steps", "300", "--learning-starts", "100", "--checkpoint-every", "300",
                             "--run-name", "c"], workdir))  # fmt: skip
    (ckpt,) = (workdir / "runs" / "c" / "checkpoints").iterdir()
    shared = torch.load(ckpt / "shared.pt", weights_only=True)
    local = torch.load(ckpt / "rank0.pt", weights_only=True)
    assert shared["iteration"] == 300 and shared["ratio"] == {"training_iterations": 200, "gradient_steps": 200}
    assert local["buffer"]["size"] == 300 and local["buffer"]["obs"].shape == (300, 3)


def test_torchrun_max_restarts_resume_auto_after_a_killed_worker(workdir):
    args = FAST + ["--total-steps", "2400", "--learning-starts", "100", "--checkpoint-every", "400", "--resume", "auto"]
    proc = subprocess.Popen(command("sac.py", args, nproc=2, torchrun_args=("--max-restarts=1",)), cwd=workdir,
                            env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    runs = workdir / "runs"

    def checkpointed():
        return runs.exists() and any(any(c.name.startswith("step_") and not c.name.endswith(".tmp")
                                         for c in (r / "checkpoints").iterdir()) for r in runs.iterdir()
                                     if (r / "checkpoints").exists())  # fmt: skip

    wait_for(checkpointed, 180, proc)
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2
    os.kill(int(workers[-1]), signal.SIGKILL)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert "resumed from" in out
    (run_dir,) = runs.iterdir()  # the restarted workers found the first attempt's run directory
    led = json.loads((run_dir / "steps.json").read_text())
    check_ledger_equals_plan(led)
    assert led["actual"]["param_checksums"][0] == led["actual"]["param_checksums"][1]


def test_torchrun_restart_with_resume_no_starts_a_new_run_directory(workdir):
    args = FAST + ["--total-steps", "2400", "--learning-starts", "100"]
    proc = subprocess.Popen(command("sac.py", args, nproc=2, torchrun_args=("--max-restarts=1",)), cwd=workdir,
                            env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    runs = workdir / "runs"
    wait_for(lambda: list(runs.glob("*/events.out*")), 120, proc)  # the first attempt has logged
    time.sleep(1)
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    os.kill(int(workers[-1]), signal.SIGKILL)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    first, second = sorted(runs.iterdir())  # the first attempt's run is left as it was, not overwritten
    assert not (first / "steps.json").exists() and len(list(first.glob("events.out*"))) == 1
    check_ledger_equals_plan(json.loads((second / "steps.json").read_text()))


def test_torchrun_restart_before_the_first_checkpoint_starts_the_named_run_over(workdir):
    """`--run-name NAME --resume auto`: a worker killed before any checkpoint restarts the run from scratch in NAME (its
    launch's directory), instead of refusing a directory that holds a run without a checkpoint."""
    args = FAST + ["--total-steps", "2400", "--learning-starts", "100", "--checkpoint-every", "2400", "--run-name", "ra",
                   "--resume", "auto"]  # fmt: skip
    proc = subprocess.Popen(command("sac.py", args, nproc=2, torchrun_args=("--max-restarts=1",)), cwd=workdir,
                            env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    run_dir = workdir / "runs" / "ra"
    wait_for(lambda: any(run_dir.glob("events.out*")), 120, proc)
    time.sleep(1)
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    os.kill(int(workers[-1]), signal.SIGKILL)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert [r.name for r in (workdir / "runs").iterdir()] == ["ra"] and len(list(run_dir.glob("events.out*"))) == 2
    check_ledger_equals_plan(json.loads((run_dir / "steps.json").read_text()))
    steps = [step for step, _ in scalars(run_dir, "charts/")["charts/SPS"]]
    assert steps == sorted(set(steps))  # the first attempt's steps are hidden, not shown twice


def test_resuming_a_finished_run_only_adds_a_missing_evaluation(workdir):
    args = FAST + ["--total-steps", "300", "--learning-starts", "100", "--checkpoint-every", "300", "--run-name", "f"]
    run_dir = workdir / "runs" / "f"
    ok(run("sac.py", args, workdir))  # no evaluation (FAST)
    ok(run("sac.py", args + ["--resume", "yes", "--eval-episodes", "1"], workdir))  # the evaluation is missing: run it
    led, events = ledger(workdir, "f"), sorted(run_dir.glob("events.out*"))
    assert led["eval"]["episodes"] == 1 and led["actual"]["policy_steps"] == 300
    again = ok(run("sac.py", args + ["--resume", "yes", "--eval-episodes", "1"], workdir))  # e.g. a torchrun restart
    assert f"{os.path.join('runs', 'f')} is complete" in again.stdout
    assert sorted(run_dir.glob("events.out*")) == events and ledger(workdir, "f") == led  # nothing logged or rewritten
    assert len(scalars(run_dir, "eval/")["eval/episodic_return"]) == 1
    more = ok(run("sac.py", args + ["--resume", "yes", "--eval-episodes", "2"], workdir))  # more episodes asked: evaluate
    assert "is complete" not in more.stdout and ledger(workdir, "f")["eval"]["episodes"] == 2


def test_track_offline_writes_a_wandb_run(workdir):
    env = script_env() | {"WANDB_MODE": "offline"}
    ok(run("sac.py", FAST + ["--total-steps", "200", "--learning-starts", "100", "--track", "--run-name", "w"], workdir,
           env=env))  # fmt: skip
    wandb_dir = workdir / "runs" / "w" / "wandb"
    assert any(p.name.startswith("offline-run-") for p in wandb_dir.iterdir())
    # W&B mirrors the scalars without copying the event file into its folder (copies were re-mirrored, duplicating points)
    assert len(list((workdir / "runs" / "w").rglob("events.out.tfevents*"))) == 1


@pytest.mark.parametrize("stop", ["nan", "sigint"])
def test_a_run_that_stops_early_keeps_what_it_logged_in_tensorboard_and_wandb(workdir, stop):
    """An env's NaN (exit 1) or a Ctrl-C (exit 130) closes tracking first: the event file holds every log before the
    stop, and the offline W&B run keeps its history with the x-axis in global steps (without `wandb.finish`, offline,
    it kept none of it)."""
    env = script_env() | {"WANDB_MODE": "offline"}
    args = FAST + ["--log-every", "20", "--track", "--run-name", "t", "--learning-starts", "10"]
    args += ["--env-id", "steprl_testenvs:NanAt-v0", "--total-steps", "400"] if stop == "nan" else ["--total-steps", "1e6"]
    proc = subprocess.Popen(command("sac.py", args), cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip
    if stop == "sigint":
        wait_for(lambda: list((workdir / "runs").glob("t/events.out*")), 60, proc)
        time.sleep(3)  # a few logs of 20 steps
        proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == {"nan": 1, "sigint": 128 + signal.SIGINT}[stop] and "Traceback" not in err, err[-2000:]
    steps = [s for s, _ in scalars(workdir / "runs" / "t", "charts/")["charts/env_steps"]]
    assert steps == list(range(20, steps[-1] + 1, 20)) and steps[-1] >= (40 if stop == "nan" else 60)
    (history,) = (workdir / "runs" / "t" / "wandb").glob("offline-run-*/run-*.wandb")
    data = history.read_bytes()
    assert b"charts/env_steps" in data and data.count(b"global_step") >= len(steps), len(data)


def test_capture_video_records_every_evaluation_episode_and_with_track_puts_the_first_on_wandb(workdir):
    env = script_env() | {"WANDB_MODE": "offline"}
    args = FAST + ["--env-id", "steprl_testenvs:Countdown-v0", "--total-steps", "100", "--learning-starts", "50",
                   "--eval-episodes", "3", "--capture-video", "--track", "--run-name", "v"]  # fmt: skip
    ok(run("sac.py", args, workdir, env=env))
    videos = sorted(p.name for p in (workdir / "runs" / "v" / "videos").glob("*.mp4"))
    assert videos == [f"eval-episode-{i}.mp4" for i in range(3)]  # every episode (gymnasium's default skips the third)
    (offline,) = (workdir / "runs" / "v" / "wandb").glob("offline-run-*")
    assert len(list((offline / "files" / "media" / "videos").rglob("*.mp4"))) == 1
    assert b"videos/eval" in next(offline.glob("run-*.wandb")).read_bytes()


def test_track_under_torchrun_keeps_the_one_line_of_a_rank_whose_peer_failed(workdir):
    """wandb.init installs its own excepthook, which printed gloo's whole traceback on rank 0 before the script's one
    line ("another process of this job stopped"); rank 1's env error keeps its traceback (a bug of the env's own)."""
    env = script_env() | {"WANDB_MODE": "offline"}
    args = FAST + ["--env-id", "steprl_testenvs:RankOneFails-v0", "--total-steps", "1000", "--learning-starts", "50"]
    proc = run("sac.py", args + ["--track"], workdir, nproc=2, env=env, timeout=120)
    assert proc.returncode != 0 and "RuntimeError: rank 1's env broke" in proc.stderr
    assert "typically caused by a remote worker crashing" not in proc.stderr, proc.stderr[-3000:]


def test_track_resume_continues_the_wandb_run_and_nothing_else_joins_it(workdir):
    env = script_env() | {"WANDB_MODE": "offline"}
    args = FAST + ["--learning-starts", "100", "--track", "--checkpoint-every", "200"]

    def wandb_ids(name: str) -> set[str]:
        return {p.name.rsplit("-", 1)[1] for p in (workdir / "runs" / name / "wandb").glob("offline-run-*")}

    ok(run("sac.py", args + ["--run-name", "w", "--total-steps", "200"], workdir, env=env))
    first = wandb_ids("w")
    ok(run("sac.py", args + ["--run-name", "w", "--total-steps", "300", "--resume", "yes"], workdir, env=env))
    assert len(first) == 1 and wandb_ids("w") == first  # the resume wrote to the same W&B run
    shutil.copytree(workdir / "runs" / "w", workdir / "runs" / "fork", ignore=shutil.ignore_patterns("wandb"))
    ok(run("sac.py", args + ["--run-name", "fork", "--total-steps", "400", "--resume", "yes"], workdir, env=env))
    assert len(wandb_ids("fork")) == 1 and wandb_ids("fork") != first  # a copied run directory gets its own
    shutil.rmtree(workdir / "runs" / "w")
    ok(run("sac.py", args + ["--run-name", "w", "--total-steps", "200"], workdir, env=env))
    assert len(wandb_ids("w")) == 1 and wandb_ids("w") != first  # and so does a new run under a used name


def test_custom_env_module_syntax_eval_and_video(workdir):
    args = FAST + ["--env-id", "steprl_testenvs:Countdown-v0", "--total-steps", "100", "--learning-starts", "50",
                   "--eval-episodes", "2", "--capture-video", "--run-name", "v"]  # fmt: skip
    ok(run("sac.py", args, workdir))
    led = ledger(workdir, "v")
    assert led["eval"]["episodes"] == 2 and led["eval"]["mean_length"] == 129
    assert led["eval"]["mean_return"] == sum(range(1, 130))
    assert list((workdir / "runs" / "v" / "videos").glob("*.mp4"))
    assert scalars(workdir / "runs" / "v", "eval/")["eval/episodic_return"] == [(100, float(sum(range(1, 130))))]


BAD = [
    (["--num-envs", "0"], "--num-envs"),
    (["--total-steps", "3", "--num-envs", "4"], "--total-steps"),
    (["--env-id", "CartPole-v1"], "continuous (Box) action space"),
    (["--env-id", "HalfCheeta-v5"], "HalfCheetah-v5"),
    (["--env-id", "no_such_module:Foo-v0"], "cannot import module"),
    (["--env-id", "steprl_testenvs:Countdwn-v0"], "closest registered ids: steprl_testenvs:Countdown-v0"),  # usable ids
    (["--env-id", "steprl_testenvs:Hopper-v9"], "closest registered ids: Hopper-v5, Hopper-v4"),  # no prefix: gymnasium's
    (["--env-id", "ALE/Pong-v5"], "Atari ids are registered by ale_py: `pip install ale-py`, then `--env-id ale_py:ALE/Pong"),
    (["--replay-ratio", "-1"], "--replay-ratio"),
    (["--run-name", " "], "--run-name: ' ' must be a name or a relative path under runs/"),
    (["--gamma", "1.5"], "--gamma"),
    (["--per-rank-batch-size", "0"], "--per-rank-batch-size"),
    (["--resume", "yes"], "--run-name"),
    (["--resume", "yes", "--run-name", "nothing-here"], "no checkpoint"),
    (["--total-steps", "1.5"], "total-steps"),
    (["--world-size", "4"], "world-size"),
    (["--resume", "auto"], "`--resume auto` needs `--run-name NAME`"),
    (["--total-steps", "1e400"], "'1e400' is not a whole number of steps"),
    (["--replay-ratio", "1/0"], "'1/0' divides by zero"),
    (["--capture-video"], "--capture-video: records the evaluation episodes; give `--eval-episodes 1`"),
    (
        ["--env-id", "steprl_testenvs:MissingExtra-v0"],
        "cannot create steprl_testenvs:MissingExtra-v0: DependencyNotInstalled",
    ),  # fmt: skip
    (["--per-rank-buffer-size", "1e12"], "--per-rank-buffer-size: a full replay takes"),
    (["--per-rank-buffer-size", "3", "--num-envs", "4"], "--per-rank-buffer-size: got 3; it must be at least 4"),
    (["--seed", "-1"], "--seed: got -1"),
    (["--exp-name", ""], "--exp-name: got an empty name"),
    (["--seed", "2147483648"], "--seed: got 2147483648; it must be below 2**31"),
    (
        ["--env-id", "steprl_testenvs:NoRender-v0", "--capture-video", "--eval-episodes", "1"],
        "--capture-video: cannot render steprl_testenvs:NoRender-v0 as rgb_array (DependencyNotInstalled",
    ),  # fmt: skip
    (["--max-episode-steps", "2.5"], "--max-episode-steps"),
    (["--q-lr", "inf"], "--q-lr: got inf; it must be positive and finite"),
    (
        ["--env-id", "steprl_testenvs:WrongShape-v0"],
        "--env-id: steprl_testenvs:WrongShape-v0 returned an observation of shape (3,); its observation_space asks for (2,)",
    ),  # fmt: skip
    (["--env-id", "steprl_testenvs:OldStep-v0"], "steprl_testenvs:OldStep-v0 does not follow gymnasium's API"),
    (
        ["--env-id", "steprl_testenvs:ArrayReward-v0"],
        "ArrayReward-v0 does not follow gymnasium's API: step() must return (obs, reward, terminated, truncated, info) with a "
        "scalar reward",
    ),
    (
        ["--env-id", "steprl_testenvs:HugeBounds-v0"],
        "HugeBounds-v0's action bounds reach 1e+30: the critics' gradients overflow",
    ),
]


@pytest.mark.parametrize("bad,message", BAD, ids=[" ".join(b) for b, _ in BAD])
def test_bad_input_exits_2_with_message(workdir, bad, message):
    proc = run("sac.py", FAST + ["--total-steps", "400"] + bad, workdir, timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (workdir / "runs").exists()


@pytest.mark.parametrize("env_id,step", [("NanAt-v0", 60), ("NanFinal-v0", 60), ("NanReset-v0", 0), ("HugeReward-v0", 60)])
def test_nan_from_the_env_stops_with_one_line(workdir, env_id, step):  # a step, an episode's end, a reset, a huge reward
    args = FAST + ["--env-id", f"steprl_testenvs:{env_id}", "--total-steps", "400", "--learning-starts", "10"]
    proc = run("sac.py", args, workdir, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    message = f"error: --env-id: steprl_testenvs:{env_id} returned a non-finite observation or reward at policy step"
    assert f"{message} {step} (rank 0)" in proc.stderr
    if env_id == "NanAt-v0":  # under torchrun each rank's env breaks at its 60th step: global step 120
        proc = run("sac.py", args, workdir, nproc=2, timeout=90)
        assert proc.returncode != 0 and f"{message} 120 (rank " in proc.stderr


def test_a_bug_in_the_envs_own_code_keeps_its_traceback(workdir):
    """The start-up reset and step turn gymnasium's API complaints into one line, but not the env's own errors: their
    traceback shows the user where the bug is."""
    proc = run("sac.py", FAST + ["--env-id", "steprl_testenvs:OwnBug-v0", "--total-steps", "200"], workdir, timeout=60)
    assert proc.returncode == 1 and "does not follow gymnasium's API" not in proc.stderr
    assert "steprl_testenvs.py" in proc.stderr and "TypeError: can only concatenate str" in proc.stderr


def test_diverged_training_is_blamed_not_the_env(workdir):
    """Learning rates of 1e6 make the networks NaN within a few updates: the NaN actions, not the env, are named."""
    args = FAST + ["--total-steps", "600", "--learning-starts", "100", "--q-lr", "1e6", "--policy-lr", "1e6"]
    proc = run("sac.py", args, workdir, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "error: training diverged: the agent's actions at policy step" in proc.stderr and "--env-id" not in proc.stderr


def test_divergence_at_the_last_gradient_step_is_reported_not_evaluated(workdir):
    """No action follows the last update, so the NaN parameters are caught in the ledger: exit 1, no evaluation."""
    args = FAST + ["--total-steps", "101", "--learning-starts", "100", "--q-lr", "1e38", "--policy-lr", "1e38",
                   "--eval-episodes", "1", "--run-name", "nan"]  # fmt: skip
    proc = run("sac.py", args, workdir, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "error: training diverged: the parameters are not finite after the last gradient step" in proc.stderr  # not stdout
    assert "eval" not in ledger(workdir, "nan")


def test_bad_input_under_torchrun_stops_without_hang(workdir):
    proc = run("sac.py", FAST + ["--num-envs", "0"], workdir, nproc=2, timeout=90)
    assert proc.returncode != 0
    assert "error: --num-envs: got 0; it must be at least 1" in proc.stderr
    parse = run("sac.py", FAST + ["--replay-ratio", "abc"], workdir, nproc=2, timeout=90)  # tyro's box, from rank 0 alone
    assert parse.returncode != 0 and parse.stderr.count("'abc' is not a ratio") == 1
    timeout = run("sac.py", FAST, workdir, nproc=2, timeout=90, env=script_env() | {"STEPRL_TIMEOUT": "soon"})
    assert timeout.returncode != 0 and "error: STEPRL_TIMEOUT: got 'soon'; give a positive number of seconds" in timeout.stderr
    resume = run("sac.py", FAST + ["--resume", "yes"], workdir, nproc=2, timeout=90, torchrun_args=("--max-restarts=1",))
    assert resume.returncode != 0 and "`--resume yes` needs `--run-name NAME`" in resume.stderr
    assert not (workdir / "runs").exists()


def test_resume_auto_refuses_torchruns_shared_run_id(workdir):
    """Without --standalone or --rdzv-id every torchrun launch has the run id 'none': a restarted worker could continue
    another launch's run, so `--resume auto` without --run-name is refused there (with --standalone it works: see
    test_torchrun_max_restarts_resume_auto_after_a_killed_worker)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torchrun = [sys.executable, "-m", "torch.distributed.run", f"--master-port={port}", "--max-restarts=1"]
    cmd = [*torchrun, "--nproc_per_node=1", str(ALGOS / "sac.py"), *FAST, "--total-steps", "200", "--resume", "auto"]
    proc = subprocess.run(cmd, cwd=workdir, env=script_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "error: --resume: a restarted worker finds its run by torchrun's run id" in proc.stderr
    assert not (workdir / "runs").exists()


def test_sigint_to_the_main_process_alone_stops_its_env_workers_quietly(workdir):
    """`kill -INT <pid>` reaches the script but not its --async-envs workers, which must not print pipe errors."""
    args = FAST + ["--total-steps", "1e6", "--async-envs", "--num-envs", "2"]
    proc = subprocess.Popen(command("sac.py", args), cwd=workdir, env=script_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    wait_for(lambda: list((workdir / "runs").glob("*/events.out*")), 60, proc)
    time.sleep(1)
    proc.send_signal(signal.SIGINT)  # the main process only
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGINT, err[-2000:]
    assert "Traceback" not in err and err.count("warning: SIGINT: stopped;") == 1, err[-2000:]


@pytest.mark.parametrize("checkpoint", [True, False])
def test_sigterm_stops_with_the_resume_hint(workdir, checkpoint):
    args = FAST + ["--total-steps", "1e6", "--async-envs", "--num-envs", "2"] + (["--checkpoint-every", "200"] * checkpoint)
    proc = subprocess.Popen(command("sac.py", args), cwd=workdir, env=script_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    done = "*/checkpoints/step_*[0-9]/shared.pt" if checkpoint else "*/events.out*"  # a finished checkpoint, not a .tmp
    wait_for(lambda: list((workdir / "runs").glob(done)), 60, proc)
    time.sleep(1)
    os.killpg(proc.pid, signal.SIGTERM)  # as a scheduler does: the env worker processes get it too
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "Traceback" not in err and err.count("warning: SIGTERM: stopped;") == 1
    if checkpoint:  # the newest checkpoint and the generated run name
        (run_dir,) = (workdir / "runs").iterdir()
        newest = sorted(p.parent for p in (run_dir / "checkpoints").glob("step_*[0-9]/shared.pt"))[-1]
        hint = f"continue from {os.path.join('runs', run_dir.name, 'checkpoints', newest.name)} with the same flags and "
        assert f"{hint}`--run-name {run_dir.name} --resume yes`" in err
    else:
        assert "no checkpoint was written yet, so it cannot resume (--checkpoint-every N writes them)" in err


def test_env_without_time_limit_evaluation_stops_at_the_cap(workdir):
    args = FAST + ["--env-id", "steprl_testenvs:Endless-v0", "--total-steps", "100", "--learning-starts", "50",
                   "--eval-episodes", "1"]  # fmt: skip
    proc = ok(run("sac.py", args, workdir))
    (run_dir,) = (workdir / "runs").iterdir()  # ':' of the module syntax is not part of the directory name
    assert run_dir.name.startswith("steprl_testenvs-Endless-v0__sac_continuous__1__")
    led = ledger(workdir)
    assert led["actual"]["episodes"] == 0
    assert led["eval"]["mean_length"] == 27_000 and led["eval"]["mean_return"] == 27_000.0
    assert "evaluation episode 1 did not end in 27000 policy steps" in proc.stderr
    said_at_start = "each of the 1 evaluation episodes at the end runs until the env ends it, for at most 27000 policy steps"
    assert f"has no time limit: {said_at_start}" in proc.stderr


def test_help_works():
    for script in ["sac.py", "sac_continuous.py"]:
        proc = subprocess.run(command(script, ["--help"]), capture_output=True, text=True, env=script_env(), timeout=60)
        assert proc.returncode == 0 and "--total-steps" in proc.stdout and "--replay-ratio" in proc.stdout


def test_existing_run_name_is_not_overwritten(workdir):
    (workdir / "runs" / "taken").mkdir(parents=True)
    (workdir / "runs" / "taken" / "steps.json").write_text("{}")
    proc = run("sac.py", FAST + ["--total-steps", "100", "--run-name", "taken"], workdir, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr  # no checkpoint: `--resume yes` would not help
    assert "--run-name: runs/taken already holds a run; it has no checkpoint to continue; delete runs/taken" in proc.stderr
    assert (workdir / "runs" / "taken" / "steps.json").read_text() == "{}"
    (workdir / "runs" / "taken" / "checkpoints" / "step_000000000100").mkdir(parents=True)
    (workdir / "runs" / "taken" / "checkpoints" / "step_000000000100" / "shared.pt").write_text("")
    proc = run("sac.py", FAST + ["--total-steps", "100", "--run-name", "taken"], workdir, timeout=60)
    assert proc.returncode == 2 and "runs/taken already holds a run; continue it with `--resume yes`" in proc.stderr


def test_async_envs_ledger(workdir):
    args = FAST + ["--async-envs", "--num-envs", "2", "--total-steps", "200", "--learning-starts", "100",
                   "--env-id", "steprl_testenvs:Countdown-v0", "--action-repeat", "2"]  # fmt: skip
    ok(run("sac.py", args, workdir))
    led = ledger(workdir)
    check_ledger_equals_plan(led)
    # each env: 100 policy steps = 64 + 36 (an episode is 65 policy steps: 129 env steps with repeat 2)
    assert (led["actual"]["episodes"], led["actual"]["env_steps"]) == (2, 2 * (129 + 35 * 2))


def test_resume_rejects_changed_settings_and_a_passed_budget(workdir):
    args = FAST + ["--learning-starts", "100", "--checkpoint-every", "200", "--run-name", "r"]
    ok(run("sac.py", args + ["--total-steps", "200"], workdir))
    before = (workdir / "runs" / "r" / "steps.json").read_text()
    changed = run("sac.py", args + ["--total-steps", "400", "--resume", "yes", "--num-envs", "2"], workdir, timeout=60)
    assert changed.returncode == 2 and "Traceback" not in changed.stderr
    assert "--num-envs 1 (checkpoint) vs 2 (now)" in changed.stderr
    precision = run("sac.py", args + ["--total-steps", "400", "--resume", "yes", "--bf16"], workdir, timeout=60)
    assert precision.returncode == 2 and "--bf16 False (checkpoint) vs True (now)" in precision.stderr
    lr = run("sac.py", args + ["--total-steps", "400", "--resume", "yes", "--policy-lr", "1e-3"], workdir, timeout=60)
    assert lr.returncode == 2 and "--policy-lr 0.0003 (checkpoint) vs 0.001 (now)" in lr.stderr  # Adam's state keeps it
    shutil.copy(ALGOS / "sac_continuous.py", workdir / "sac_myidea.py")  # a copy to try an idea: another experiment
    cmd = [sys.executable, str(workdir / "sac_myidea.py"), *args, "--total-steps", "400", "--resume", "yes"]
    copy = subprocess.run(cmd, cwd=workdir, env=script_env(), capture_output=True, text=True, timeout=60)
    assert copy.returncode == 2 and "--exp-name sac_continuous (checkpoint) vs sac_myidea (now)" in copy.stderr
    assert "Resume with `--exp-name sac_continuous`, or give a copy of its script its own --run-name" in copy.stderr
    passed = run("sac.py", args + ["--total-steps", "100", "--resume", "yes"], workdir, timeout=60)
    assert passed.returncode == 2 and "is past 100 policy steps" in passed.stderr
    assert (workdir / "runs" / "r" / "steps.json").read_text() == before
    import torch  # a checkpoint of an older script version (separate fc_mean / fc_logstd heads): exit 2, no traceback

    (ckpt,) = (workdir / "runs" / "r" / "checkpoints").iterdir()
    saved = torch.load(ckpt / "shared.pt", weights_only=True)
    older = {k.replace("fc_mean_logstd", "fc_mean"): v for k, v in saved["actor"].items()}
    torch.save(saved | {"actor": older}, ckpt / "shared.pt")
    stale = run("sac.py", args + ["--total-steps", "400", "--resume", "yes"], workdir, timeout=60)
    assert stale.returncode == 2 and "Traceback" not in stale.stderr
    assert "--resume: the checkpoint's 'actor' does not fit (Error(s) in loading state_dict for Actor:" in stale.stderr
    torch.save(saved, ckpt / "shared.pt")
    longer = ok(run("sac.py", args + ["--total-steps", "400", "--resume", "yes", "--tau", "0.01"], workdir))  # continues
    assert "resumed from" in longer.stdout
    changed = "--resume: these settings differ from the checkpoint's run and apply from here on: --total-steps 200 -> 400;"
    assert f"{changed} --tau 0.005 -> 0.01\n" in longer.stderr  # a flag that may change: said, not refused
    check_ledger_equals_plan(ledger(workdir, "r"))
    assert ledger(workdir, "r")["actual"]["policy_steps"] == 400
    unsaved = ok(run("sac.py", FAST + ["--learning-starts", "100", "--run-name", "r", "--total-steps", "600", "--resume",
                                       "yes"], workdir))  # fmt: skip
    warning = "--checkpoint-every: not given, so this resumed run writes no checkpoints (its run wrote one every 200"
    assert warning in unsaved.stderr


def test_failing_evaluation_keeps_the_ledger_and_exits_1(workdir):
    args = FAST + ["--env-id", "steprl_testenvs:EvalFails-v0", "--total-steps", "200", "--learning-starts", "100",
                   "--eval-episodes", "2", "--run-name", "e"]  # fmt: skip
    proc = run("sac.py", args, workdir)
    assert proc.returncode == 1
    assert "error: evaluation failed (RuntimeError: evaluation env broke)" in proc.stderr
    led = ledger(workdir, "e")
    check_ledger_equals_plan(led)
    assert "eval" not in led


def test_env_with_its_own_episode_statistics_and_list_observations(workdir):
    """An env that wraps itself in RecordEpisodeStatistics (gymnasium's 'episode' key) keeps its statistics apart from
    the script's; one that returns lists (gymnasium only warns) is evaluated as it is trained."""
    args = FAST + ["--env-id", "steprl_testenvs:OwnStats-v0", "--action-repeat", "4", "--total-steps", "198",
                   "--num-envs", "3", "--learning-starts", "40", "--run-name", "own"]  # fmt: skip
    proc = ok(run("sac.py", args, workdir))
    assert ledger(workdir, "own")["actual"]["episodes"] == 6  # 33 policy steps (129 env steps) each, 66 per env
    assert scalars(workdir / "runs" / "own", "charts/")["charts/episodic_length"][-1][1] == 33  # policy steps, not 129
    assert "warning: --log-every 200 is not a multiple of 3" in proc.stderr  # a cadence chosen is warned about...
    args = FAST[:-2] + ["--env-id", "steprl_testenvs:ListObs-v0", "--total-steps", "60", "--learning-starts", "39",
                        "--num-envs", "3", "--eval-episodes", "1", "--max-episode-steps", "20", "--run-name", "l"]  # fmt: skip
    proc = ok(run("sac.py", args, workdir))
    assert ledger(workdir, "l")["eval"]["mean_length"] == 20
    assert "--log-every" not in proc.stderr  # ...the default (1000, not a multiple of 3) is not


def test_pretrain_ledger_with_more_gradient_steps_than_one_sampling_chunk(workdir):
    args = FAST + ["--total-steps", "300", "--num-envs", "2", "--learning-starts", "100", "--replay-ratio", "1/2",
                   "--per-rank-pretrain-steps", "150"]  # fmt: skip
    ok(run("sac.py", args, workdir))
    led = ledger(workdir)
    assert (led["plan"]["training_iterations"], led["plan"]["per_rank_gradient_steps"]) == (100, 150 + 99)
    check_ledger_equals_plan(led)
    losses = scalars(next((workdir / "runs").iterdir()))
    assert all(v == v for _, v in losses["losses/qf_loss"])  # finite (not NaN) after the 150-step pretrain


def test_custom_env_module_from_the_working_directory_without_render_mode(workdir):
    # a plain gymnasium env in the directory the user runs from (not on PYTHONPATH), whose __init__ takes no render_mode
    (workdir / "mycwdenv.py").write_text(
        "import gymnasium as gym\nimport numpy as np\n\n\nclass Plain(gym.Env):\n"
        "    def __init__(self):\n"
        "        self.observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)\n"
        "        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)\n\n"
        "    def reset(self, *, seed=None, options=None):\n"
        "        super().reset(seed=seed)\n        self.t = 0\n        return np.zeros(3, np.float32), {}\n\n"
        "    def step(self, action):\n"
        "        self.t += 1\n        return np.zeros(3, np.float32), 1.0, False, self.t >= 20, {}\n\n\n"
        "gym.register('Plain-v0', entry_point=Plain)\n"
    )
    ok(run("sac.py", FAST + ["--env-id", "mycwdenv:Plain-v0", "--total-steps", "100", "--learning-starts", "50",
                             "--eval-episodes", "1"], workdir))  # fmt: skip
    led = ledger(workdir)
    check_ledger_equals_plan(led)
    assert led["actual"]["episodes"] == 5 and led["eval"]["mean_return"] == 20.0


def test_run_directory_is_never_reused_or_escaped(workdir):
    escaped = run("sac.py", FAST + ["--total-steps", "100", "--run-name", "../out"], workdir, timeout=60)
    assert escaped.returncode == 2 and "--run-name: '../out' must be a name or a relative path under runs/" in escaped.stderr
    args = FAST + ["--total-steps", "100", "--learning-starts", "50", "--run-name", "done"]
    ok(run("sac.py", args, workdir))  # a finished run without checkpoints
    before = (workdir / "runs" / "done" / "steps.json").read_text()
    auto = run("sac.py", args + ["--resume", "auto"], workdir, timeout=60)
    assert (
        auto.returncode == 2
        and "holds a run without a checkpoint to continue; choose another --run-name, or delete runs/done to start it over"
        in auto.stderr
    )
    assert (workdir / "runs" / "done" / "steps.json").read_text() == before


def test_resume_with_another_process_count_exits_2_on_every_rank(workdir):
    args = FAST + ["--total-steps", "100", "--learning-starts", "50", "--checkpoint-every", "100", "--run-name", "one"]
    ok(run("sac.py", args, workdir))
    proc = run("sac.py", args + ["--total-steps", "200", "--resume", "yes"], workdir, nproc=2, timeout=120)
    assert proc.returncode != 0
    assert "error: --resume: runs/one/checkpoints/step_000000000100 was written by 1 process(es)" in proc.stderr
    assert "FileNotFoundError" not in proc.stderr and "rank1.pt" not in proc.stderr


def test_resume_from_a_missing_or_corrupt_checkpoint_file_exits_2_without_hang(workdir):
    """Every rank reads its own file of rank 0's chosen checkpoint, and all ranks exit 2 together with one line (on
    separate disks, or after a deleted or truncated file, a lone rank would otherwise fail with a traceback or start
    afresh while the others wait in a collective)."""
    args = FAST + ["--total-steps", "100", "--learning-starts", "50", "--checkpoint-every", "100", "--run-name", "two"]
    ok(run("sac.py", args, workdir, nproc=2, timeout=120))
    checkpoint = workdir / "runs/two/checkpoints/step_000000000100"
    os.remove(checkpoint / "rank1.pt")
    proc = run("sac.py", args + ["--total-steps", "200", "--resume", "yes"], workdir, nproc=2, timeout=120)
    assert proc.returncode != 0 and proc.stderr.count("Traceback") == 1  # torchrun's own, none of the workers
    message = "error: --resume: runs/two/checkpoints/step_000000000100: cannot read the file of rank(s) [1] (FileNotFound"
    assert message in proc.stderr
    os.truncate(checkpoint / "shared.pt", 1000)
    proc = run("sac.py", args + ["--total-steps", "200", "--resume", "yes"], workdir, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "error: --resume: cannot read runs/two/checkpoints/step_000000000100/shared.pt (" in proc.stderr
    import torch

    torch.save({"model": torch.zeros(2)}, checkpoint / "shared.pt")  # readable, but another program's
    proc = run("sac.py", args + ["--total-steps", "200", "--resume", "yes"], workdir, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "step_000000000100/shared.pt is not a checkpoint of these scripts; delete that directory" in proc.stderr


def test_unwritable_runs_and_a_failed_checkpoint_write_stop_with_one_line(workdir):
    """No traceback wall when runs/ cannot be made (here a file of that name) or a checkpoint cannot be written (here a
    1 MB file-size limit, as a full disk): one line, and no half-written `.tmp` checkpoint left behind."""
    (workdir / "runs").write_text("")
    proc = run("sac.py", FAST + ["--total-steps", "100"], workdir, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "error: runs/: cannot write runs (File exists); run from a directory you can write to" in proc.stderr
    (workdir / "runs").unlink()
    args = FAST + ["--total-steps", "400", "--learning-starts", "100", "--checkpoint-every", "200", "--run-name", "full",
                   "--log-every", "100"]  # fmt: skip
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, 2**20))  # noqa: E731  (shared.pt is about 2.5 MB)
    proc = subprocess.run(command("sac.py", args), cwd=workdir, env=script_env(), capture_output=True, text=True,
                          timeout=120, preexec_fn=limit)  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "error: rank 0 cannot write runs/full/checkpoints/step_000000000200.tmp (" in proc.stderr
    assert not list((workdir / "runs/full/checkpoints").iterdir())
    assert [step for step, _ in scalars(workdir / "runs/full", "charts/")["charts/SPS"]] == [100, 200]  # writer closed


def two_nodes(workdir, agent_args, script_args: list[str], join_timeout: int) -> tuple[list[int], str]:
    """Two torchrun agents on this machine stand for two nodes of one process each (`agent_args(port, node)`: their
    rendezvous); a short SAC run. Their exit codes and joint stderr."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = [str(ALGOS / "sac.py"), *FAST, "--total-steps", "400", *script_args]
    env = script_env() | {"STEPRL_JOIN_TIMEOUT": str(join_timeout)}
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                               *agent_args(port, n), *script], cwd=workdir, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for n in range(2)]  # fmt: skip
    stderr = "".join(node.communicate(timeout=150)[1] for node in nodes)
    return [node.returncode for node in nodes], stderr


def test_an_error_on_one_node_only_is_printed_by_that_node(workdir):
    """Rank 0 prints the errors all ranks share; one that only another node meets (here its env module fails to
    import, as on a node without a package) must not stop the job silently. Two torchrun agents on this machine stand
    for two nodes of one process each."""
    (workdir / "rankonly.py").write_text(
        "import os\nimport gymnasium as gym\n"
        "if os.environ.get('RANK') == '1':\n    raise ImportError('not installed on this node')\n"
        "gym.register('PendulumR-v0', entry_point='gymnasium.envs.classic_control.pendulum:PendulumEnv', "
        "max_episode_steps=200)\n"
    )
    # static rendezvous: node 0's agent hosts the store and runs rank 0; rank 0 waits 30 s for rank 1 (default 300 s)
    static = lambda port, n: ["--master-addr=127.0.0.1", f"--master-port={port}", f"--node-rank={n}"]  # noqa: E731
    codes, stderr = two_nodes(workdir, static, ["--env-id", "rankonly:PendulumR-v0"], join_timeout=30)
    assert all(code != 0 for code in codes)
    assert "error (rank 1): --env-id: cannot import module 'rankonly'" in stderr and "not installed on this node" in stderr
    assert "error (rank 0): not all 2 processes joined within 30 s; one failed before joining" in stderr


def test_a_node_restarted_because_another_failed_joins_the_same_attempt(workdir):
    """Two torchrun agents with c10d rendezvous stand for two nodes. Rank 1's env module fails once, before joining:
    its agent restarts it (TORCHELASTIC_RESTART_COUNT 1), and rank 0's agent restarts rank 0 only because the other
    node re-joined, without counting a restart (0). Both must still meet in one attempt and finish the run, not wait
    out the join timeout on different store prefixes."""
    (workdir / "flaky.py").write_text(
        "import os\nimport gymnasium as gym\n"
        "if os.environ.get('RANK') == '1' and not os.path.exists('failed_once'):\n"
        "    open('failed_once', 'w').close()\n    raise ImportError('a transient failure')\n"
        "gym.register('PendulumF-v0', entry_point='gymnasium.envs.classic_control.pendulum:PendulumEnv', "
        "max_episode_steps=200)\n"
    )
    rendezvous = ["--rdzv-backend=c10d", "--rdzv-id=twonodes", "--max-restarts=1", "--monitor-interval=0.5"]
    c10d = lambda port, n: [*rendezvous, f"--rdzv-endpoint=127.0.0.1:{port}"]  # noqa: E731
    codes, stderr = two_nodes(workdir, c10d, ["--env-id", "flaky:PendulumF-v0"], join_timeout=60)
    assert codes == [0, 0], stderr[-3000:]
    assert "error (rank 1): --env-id: cannot import module 'flaky'" in stderr and "not all 2" not in stderr
    check_ledger_equals_plan(ledger(workdir))


def test_an_error_of_one_rank_alone_is_printed_on_one_node_too(workdir):
    """Rank 1's env module fails to import (rank 0's does not): rank 1 is not its node's first rank, and torchrun stops
    rank 0 when rank 1 exits, so rank 1 itself must say why."""
    (workdir / "rank1only.py").write_text(
        "import os\nimport gymnasium as gym\n"
        "if os.environ.get('RANK') == '1':\n    raise ImportError('broken for rank 1')\n"
        "gym.register('PendulumR-v0', entry_point='gymnasium.envs.classic_control.pendulum:PendulumEnv', "
        "max_episode_steps=200)\n"
    )
    proc = run("sac.py", FAST + ["--env-id", "rank1only:PendulumR-v0", "--total-steps", "400"], workdir, nproc=2, timeout=90)
    assert proc.returncode != 0 and "error (rank 1): --env-id: cannot import module 'rank1only'" in proc.stderr


def test_a_run_name_in_use_by_a_running_process_is_refused(workdir):
    args = FAST + ["--total-steps", "20000", "--learning-starts", "100", "--checkpoint-every", "200", "--run-name", "busy"]
    first = subprocess.Popen(command("sac.py", args), cwd=workdir, env=script_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for(lambda: (workdir / "runs/busy/checkpoints").exists(), 120, first)  # past its start, with a checkpoint
        second = run("sac.py", args + ["--resume", "auto"], workdir, timeout=60)
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert "error: --run-name: runs/busy is in use by a process that is still running" in second.stderr
    finally:
        first.kill()
        first.wait()
    with open(workdir / "runs/busy/run.lock") as lock:  # free once that process has ended, even killed
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # under torchrun rank 0 refuses while rank 1 waits in a collective: one line from each, no traceback from rank 1
        proc = run("sac.py", args + ["--resume", "auto"], workdir, nproc=2, timeout=90)
    assert proc.returncode != 0 and proc.stderr.count("Traceback") == 1, proc.stderr[-3000:]  # torchrun's own only
    assert "error: --run-name: runs/busy is in use by a process that is still running" in proc.stderr


def test_an_evaluation_longer_than_the_collective_timeout_lets_the_other_ranks_wait(workdir):
    """Rank 0 evaluates alone while the others wait for its exit code; that wait has no time limit (here the collective
    timeout is 8 s and the evaluation takes about 13 s)."""
    args = FAST + ["--env-id", "steprl_testenvs:SlowEval-v0", "--total-steps", "200", "--learning-starts", "100",
                   "--eval-episodes", "5"]  # fmt: skip
    ok(run("sac.py", args, workdir, nproc=2, timeout=120, env=script_env() | {"STEPRL_TIMEOUT": "8"}))
    assert ledger(workdir)["eval"]["episodes"] == 5


def test_resume_after_the_env_changed_its_spaces_names_the_mismatch(workdir):
    args = FAST + ["--env-id", "steprl_testenvs:Resized-v0", "--learning-starts", "100", "--run-name", "r"]
    ok(run("sac.py", args + ["--total-steps", "200", "--checkpoint-every", "200"], workdir))
    logs = sorted((workdir / "runs" / "r").glob("events.out*"))
    resized = script_env() | {"STEPRL_TEST_OBS_SIZE": "3"}  # the user's env module now returns 3 entries, not 2
    grown = run("sac.py", args + ["--total-steps", "400", "--resume", "yes"], workdir, env=resized, timeout=60)
    assert grown.returncode == 2 and "Traceback" not in grown.stderr
    assert sorted((workdir / "runs" / "r").glob("events.out*")) == logs  # no event file (its purge step hides steps)
    assert "size mismatch for fc1.weight: copying a param with shape torch.Size([256, 2]) from checkpoint" in grown.stderr
    assert "the script or env's spaces changed; start a new run" in grown.stderr


def test_progress_lines_on_stdout_when_stderr_is_not_a_terminal(workdir):
    """A log file gets a progress line every STEPRL_PRINT_EVERY seconds (30), from rank 0 alone, whether or not a log
    (--log-every) falls in between, and a pretrain's count (here every line is due: 1 us)."""
    args = FAST + ["--total-steps", "240", "--learning-starts", "200", "--per-rank-pretrain-steps", "150"]
    proc = ok(run("sac.py", args, workdir, nproc=2, env=script_env() | {"STEPRL_PRINT_EVERY": "1e-6"}))
    assert "training: 64/150 gradient steps at policy step 202" in proc.stdout
    assert proc.stdout.count("training: 150/150 gradient steps at policy step 202\n") == 1  # rank 0 only
    assert all(proc.stdout.count(f"policy_step={step} SPS=") == 1 for step in range(2, 241, 2)), proc.stdout  # log every 200
    bad = run("sac.py", FAST, workdir, env=script_env() | {"STEPRL_PRINT_EVERY": "-1"})
    assert bad.returncode == 2 and "error: STEPRL_PRINT_EVERY: got '-1'; give a positive number of seconds" in bad.stderr


def test_a_long_pretrain_shows_its_gradient_steps_on_the_progress_bar(workdir):
    """A pretrain of many gradient steps runs inside one iteration: the bar (on a terminal) counts them, not freezes.
    Later iterations (here 80 gradient steps each, more than one sampling chunk) keep the bar's usual postfix."""
    args = FAST + ["--total-steps", "120", "--learning-starts", "100", "--per-rank-pretrain-steps", "150", "--num-envs", "2",
                   "--replay-ratio", "40"]  # fmt: skip
    code, shown = run_on_terminal("sac.py", args, workdir)
    assert code == 0, shown[-2000:]
    assert "64/150 gradient steps at policy step 102" in shown and "150/150 gradient steps at policy step 102" in shown, shown
    assert "/80 gradient steps" not in shown
