"""DreamerV3 end to end through subprocesses (tiny preset, tiny batches): vector and image observations, dict
observations, discrete and continuous actions, plain python and 2-process torchrun, ledgers against plans, what the
replay stores, determinism, kill-and-resume and bad input."""

import io
import json
import os
import signal
import subprocess

import numpy as np
import pytest
import torch
from conftest import command, ledger, run, run_on_terminal, scalars, script_env, wait_for

FAST = ["--size", "tiny", "--per-rank-batch-size", "2", "--per-rank-sequence-length", "8", "--imag-horizon", "3",
        "--per-rank-buffer-size", "4000", "--no-cuda", "--eval-episodes", "0", "--log-every", "32"]  # fmt: skip
LOSSES = {"dyn_loss", "rep_loss", "rew_loss", "con_loss", "policy_loss", "value_loss", "repval_loss", "loss", "dyn_kl",
          "rep_kl", "return_scale", "policy_entropy", "prior_entropy", "post_entropy"}  # fmt: skip


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "LEDGER MISMATCH" not in proc.stderr, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def check_ledger(led: dict, num_envs: int = 1, world_size: int = 1) -> None:
    plan, actual = led["plan"], led["actual"]
    assert plan["world_size"] == world_size and plan["num_envs"] == num_envs
    assert actual["policy_steps"] == plan["policy_steps"]
    assert actual["gradient_steps"] == plan["gradient_steps"] == sum(actual["per_rank_gradient_steps"]) > 0
    assert actual["per_rank_gradient_steps"] == [plan["per_rank_gradient_steps"]] * world_size
    assert actual["env_steps"] <= plan["env_steps"]
    # one stored step per policy step, plus the first observation of every episode (initial and autoreset ones)
    assert actual["stored_steps"] == actual["policy_steps"] + actual["episode_starts"]
    assert actual["episode_starts"] == actual["episodes"] + world_size * num_envs
    assert len(set(actual["param_checksums"])) == 1  # ranks in sync


def test_cartpole_vector_discrete_ledger_losses_and_eval(workdir):
    args = ["--env-id", "CartPole-v1", "--total-steps", "96", "--learning-starts", "16", "--replay-ratio", "1/4"]
    out = ok(run("dreamer.py", FAST + args + ["--eval-episodes", "1", "--run-name", "a"], workdir))
    led = ledger(workdir, "a")
    assert led["plan"] | {"training_iterations": 80, "per_rank_gradient_steps": 20} == led["plan"]
    check_ledger(led)
    assert led["actual"]["episodes"] > 0 and led["eval"]["episodes"] == 1
    assert led["train_ratio"] == 0.25 * 2 * 8
    assert "step plan:" in out.stdout and "tiny:" in out.stdout
    tags = scalars(workdir / "runs" / "a")
    assert {f"losses/{k}" for k in LOSSES | {"rec_vector_loss"}} <= set(tags)
    charts = scalars(workdir / "runs" / "a", "charts/")
    assert {"charts/episodic_return", "charts/episodic_length", "charts/env_steps", "charts/gradient_steps",
            "charts/replay_ratio", "charts/SPS"} <= set(charts)  # fmt: skip
    assert charts["charts/gradient_steps"][-1] == (96, 20.0)


def test_pendulum_vector_continuous_two_envs_action_repeat(workdir):
    args = ["--env-id", "Pendulum-v1", "--total-steps", "160", "--learning-starts", "16", "--replay-ratio", "1/8",
            "--num-envs", "2", "--action-repeat", "2", "--max-episode-steps", "30"]  # fmt: skip
    ok(run("dreamer.py", FAST + args + ["--run-name", "p"], workdir))
    led = ledger(workdir, "p")
    check_ledger(led, num_envs=2)
    assert led["actual"]["episodes"] == 4 and led["actual"]["env_steps"] == 320  # 80 policy steps per env


@pytest.mark.parametrize("env_id,grey", [("DotImage-v0", False), ("DotImage4-v0", False), ("DotImage5-v0", True)])
def test_image_discrete_with_openloop_video(workdir, env_id, grey):  # RGB, RGBA shown as RGB, 5 channels as grey
    args = ["--env-id", f"test_dreamer_envs:{env_id}", "--image-size", "16", "--total-steps", "64",
            "--learning-starts", "16", "--replay-ratio", "1/4", "--capture-video", "--video-every", "32"]  # fmt: skip
    out = ok(run("dreamer.py", FAST + args + ["--run-name", "img"], workdir))
    assert "no video will be recorded" not in out.stderr
    check_ledger(ledger(workdir, "img"))
    assert "losses/rec_image_loss" in scalars(workdir / "runs" / "img")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(workdir / "runs" / "img"), size_guidance={"images": 0})
    acc.Reload()
    videos = acc.Images("videos/openloop_image")
    assert [v.step for v in videos] == [32, 64]
    assert (videos[0].height, videos[0].width) == (2 * 16, 8 * 2 * 16)  # real over model; 8 steps x 2 sequences
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(videos[0].encoded_image_string)))
    assert pixels.shape == (2 * 16, 8 * 2 * 16, 3)  # RGB, no alpha
    assert (pixels[..., 0] == pixels[..., 1]).all() == (pixels[..., 1] == pixels[..., 2]).all() == grey  # the dot is orange
    assert sorted(p.name for p in (workdir / "runs" / "img" / "videos").iterdir()) == [
        "openloop_image_000000000032.mp4",
        "openloop_image_000000000064.mp4",
    ]
    if env_id == "DotImage-v0":  # the videos draw replay samples and latents without changing training's random draws
        i = args.index("--capture-video")
        ok(run("dreamer.py", FAST + args[:i] + args[i + 3 :] + ["--run-name", "novid"], workdir))
        assert ledger(workdir, "novid")["actual"]["param_checksums"] == ledger(workdir, "img")["actual"]["param_checksums"]


def test_a_video_cadence_past_the_run_warns_at_the_start(workdir):
    args = ["--env-id", "test_dreamer_envs:DotImage-v0", "--image-size", "16", "--total-steps", "32",
            "--learning-starts", "16", "--replay-ratio", "1/8", "--capture-video", "--video-every", "40"]  # fmt: skip
    out = ok(run("dreamer.py", FAST + args + ["--run-name", "late"], workdir))
    assert ("warning: --capture-video: no multiple of --video-every 40 falls in the training iterations (policy steps "
            "17-32): no video will be recorded; lower --video-every") in out.stderr  # fmt: skip
    assert not (workdir / "runs" / "late" / "videos").exists()


def test_dict_observations_continuous(workdir):
    args = ["--env-id", "test_dreamer_envs:DotDict-v0", "--image-size", "16", "--total-steps", "64",
            "--learning-starts", "16", "--replay-ratio", "1/4"]  # fmt: skip
    ok(run("dreamer.py", FAST + args + ["--run-name", "dict"], workdir))
    check_ledger(ledger(workdir, "dict"))
    assert {"losses/rec_image_loss", "losses/rec_state_loss"} <= set(scalars(workdir / "runs" / "dict"))


def test_dict_with_a_slash_key_float_frames_and_huge_action_bounds(workdir):
    """'cam/rgb' names a video file, not a directory; float64 frames of a uint8 space are cast; bounds of +-3e38 give
    finite actions (their width overflows float32)."""
    args = ["--env-id", "test_dreamer_envs:OddDict-v0", "--image-size", "16", "--total-steps", "64",
            "--learning-starts", "16", "--replay-ratio", "1/4", "--capture-video", "--video-every", "32"]  # fmt: skip
    ok(run("dreamer.py", FAST + args + ["--run-name", "odd"], workdir))
    check_ledger(ledger(workdir, "odd"))
    assert sorted(p.name for p in (workdir / "runs" / "odd" / "videos").iterdir()) == [
        "openloop_cam_rgb_000000000032.mp4",
        "openloop_cam_rgb_000000000064.mp4",
    ]


def test_torchrun_two_processes_ledger_and_ranks_in_sync(workdir):
    args = ["--env-id", "CartPole-v1", "--total-steps", "130", "--learning-starts", "32", "--replay-ratio", "1/4",
            "--num-envs", "2"]  # fmt: skip
    out = ok(run("dreamer.py", FAST + args + ["--run-name", "tr"], workdir, nproc=2))
    led = ledger(workdir, "tr")
    p = led["plan"]
    assert (p["policy_steps_per_iteration"], p["iterations"], p["random_iterations"]) == (4, 32, 8)
    assert (p["per_rank_gradient_steps"], p["gradient_steps"]) == (12, 24)  # floor(1/4 * 2 * 24) per rank
    check_ledger(led, num_envs=2, world_size=2)
    assert out.stderr.count("warning: --total-steps 130") == 1


def test_same_seed_same_losses_other_seed_differs(workdir):
    args = FAST + ["--env-id", "CartPole-v1", "--total-steps", "48", "--learning-starts", "16", "--replay-ratio", "1/4",
                   "--log-every", "16"]  # fmt: skip
    losses = []
    for seed, name in [(3, "a"), (3, "b"), (4, "c")]:
        ok(run("dreamer.py", args + ["--seed", str(seed), "--run-name", name], workdir))
        losses.append(scalars(workdir / "runs" / name))
    assert len(losses[0]["losses/loss"]) == 2
    assert losses[0] == losses[1]
    assert losses[0]["losses/loss"] != losses[2]["losses/loss"]
    assert ledger(workdir, "a")["actual"]["param_checksums"] == ledger(workdir, "b")["actual"]["param_checksums"]


def counters(led: dict) -> dict:
    a = led["actual"]
    stored_ok = a["stored_steps"] == a["policy_steps"] + a["episode_starts"]
    return {"plan": led["plan"], "policy_steps": a["policy_steps"], "per_rank": a["per_rank_gradient_steps"],
            "gradient_steps": a["gradient_steps"], "stored_ok": stored_ok}  # fmt: skip


def test_kill_after_checkpoint_then_resume_gives_same_counters(workdir):
    args = FAST + ["--env-id", "CartPole-v1", "--total-steps", "320", "--learning-starts", "16", "--replay-ratio", "1/2",
                   "--checkpoint-every", "48", "--num-envs", "2"]  # fmt: skip
    ok(run("dreamer.py", args + ["--run-name", "full"], workdir))
    full = ledger(workdir, "full")

    proc = subprocess.Popen(command("dreamer.py", args + ["--run-name", "cut"]), cwd=workdir, env=script_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    ckpts = workdir / "runs" / "cut" / "checkpoints"
    wait_for(lambda: ckpts.exists() and any(not p.name.endswith(".tmp") for p in ckpts.iterdir()), 120, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (workdir / "runs" / "cut" / "steps.json").exists(), "the run finished before it was killed"

    resumed = ok(run("dreamer.py", args + ["--run-name", "cut", "--resume", "yes"], workdir))
    assert "resumed from" in resumed.stdout
    assert counters(ledger(workdir, "cut")) == counters(full)
    assert counters(full)["stored_ok"]


def test_a_resume_that_only_evaluates_keeps_the_training_ledger(workdir):
    args = FAST + ["--env-id", "CartPole-v1", "--total-steps", "64", "--learning-starts", "16", "--replay-ratio", "1/4",
                   "--checkpoint-every", "64", "--run-name", "ev"]  # fmt: skip
    ok(run("dreamer.py", args, workdir))  # no evaluation (FAST)
    trained = ledger(workdir, "ev")
    ok(run("dreamer.py", args + ["--resume", "yes", "--eval-episodes", "1"], workdir))
    evaluated = ledger(workdir, "ev")
    assert evaluated["eval"]["episodes"] == 1 and evaluated["actual"]["policy_steps"] == 64
    assert evaluated["timing"] == trained["timing"] and trained["timing"]["train_seconds"] > 0
    assert evaluated["actual"] == trained["actual"]  # the resume's fresh resets are not counted: nothing steps from them
    steps = workdir / "runs" / "ev" / "steps.json"
    steps.unlink()  # killed after the final checkpoint, before steps.json: the counts come from the checkpoint alone
    ok(run("dreamer.py", args + ["--resume", "yes", "--eval-episodes", "1"], workdir))
    assert ledger(workdir, "ev")["actual"] == trained["actual"] and ledger(workdir, "ev")["timing"]["train_seconds"] == 0
    other = trained | {"plan": trained["plan"] | {"gradient_steps": 1}, "timing": {"train_seconds": 123.0}}
    steps.write_text(json.dumps(other))  # another plan's ledger (no evaluation yet) lends no timing
    ok(run("dreamer.py", args + ["--resume", "yes", "--eval-episodes", "1"], workdir))
    assert ledger(workdir, "ev")["timing"]["train_seconds"] == 0


def stored_sequence(workdir, name: str) -> dict:
    ckpts = sorted((workdir / "runs" / name / "checkpoints").iterdir())
    buf = torch.load(ckpts[-1] / "rank0.pt", weights_only=True)["buffer"]
    assert buf["pos"] == buf["size"]  # nothing overwritten yet: index = time
    steps = {k: v for k, v in buf.items() if k not in ("pos", "size", "added")}  # one tensor per env: stacked [env, t]
    return {k: np.stack([t.numpy() for t in v]) for k, v in steps.items()} | {"size": buf["size"]}


def test_replay_stores_the_action_executed_before_each_obs_and_episode_flags(workdir):
    base = FAST + ["--env-id", "test_dreamer_envs:Echo-v0", "--total-steps", "40", "--learning-starts", "16",
                   "--replay-ratio", "1/4", "--num-envs", "2", "--checkpoint-every", "40"]  # fmt: skip
    ok(run("dreamer.py", base + ["--run-name", "echo"], workdir))
    buf = stored_sequence(workdir, "echo")
    for i in range(2):
        n = buf["size"][i]
        obs, act = buf["vector"][i, :n], buf["action"][i, :n, 0]
        first, last, term = buf["is_first"][i, :n], buf["is_last"][i, :n], buf["is_terminal"][i, :n]
        t = np.round(obs[:, 1] * 10).astype(int)
        assert np.array_equal(first, t == 0) and np.all(act[first] == 0) and np.all(buf["reward"][i, :n][first] == 0)
        np.testing.assert_allclose(act[~first], obs[~first, 0], atol=1e-6)  # the action stored with obs t led to it
        np.testing.assert_allclose(buf["reward"][i, :n], t)  # reward received on arriving at obs t
        assert np.array_equal(last, t == 9) and np.array_equal(term, t == 9)  # the final obs is stored, then a reset
        assert n == 20 + 3  # 20 policy steps + 3 episode starts (the initial reset, then one after each 9-step episode)
    # a time limit ends the episode (is_last) without a termination
    ok(run("dreamer.py", base + ["--max-episode-steps", "4", "--run-name", "trunc"], workdir))
    buf = stored_sequence(workdir, "trunc")
    t = np.round(buf["vector"][0, : buf["size"][0], 1] * 10).astype(int)
    assert np.array_equal(buf["is_last"][0, : buf["size"][0]], t == 4) and not buf["is_terminal"].any()


BAD = [
    (
        ["--learning-starts", "15"],
        "--learning-starts: 15 does not cover a sequence of 8 steps per env (2 envs in all); use at least 16",
    ),
    (["--per-rank-sequence-length", "1"], "--per-rank-sequence-length"),
    (["--image-size", "48"], "--image-size"),
    (["--replay-ratio", "-1"], "--replay-ratio"),
    (["--replay-ratio", "1e400"], "0" * 400 + "; use 0 (never train) or a positive ratio up to 10000"),  # not a traceback
    (["--lam", "1.5"], "--lam"),
    (["--per-rank-buffer-size", "10"], "--per-rank-buffer-size"),
    (["--env-id", "CartPol-v1"], "CartPole-v1"),
    (["--env-id", "no_such_module:Foo-v0"], "cannot import module"),
    (["--env-id", "Blackjack-v1"], "observation"),
    (["--total-steps", "1"], "--total-steps"),
    (["--resume", "yes"], "--run-name"),
    (["--resume", "auto"], "`--resume auto` needs `--run-name NAME`"),
    (["--seed", "-3"], "--seed: got -3"),
    (["--exp-name", " "], "--exp-name: got an empty name"),
    (["--seed", "2147483648"], "--seed: got 2147483648; it must be below 2**31"),
    (["--agc", "nan"], "--agc: got nan; it must be finite and at least 0"),
    (["--beta1", "1"], "--beta1: got 1.0; it must be in [0, 1)"),  # LaProp's bias correction would divide by zero
    (["--dyn-scale", "-1"], "--dyn-scale: got -1.0; it must be finite and at least 0"),
    (["--capture-video"], "--capture-video: records real vs. imagined frames of image observations; CartPole-v1 has none"),
    (["--env-id", "steprl_testenvs:MissingExtra-v0"], "cannot create steprl_testenvs:MissingExtra-v0: DependencyNotInstalled"),
    (["--per-rank-buffer-size", "1e12"], "--per-rank-buffer-size: a full replay takes"),
    (["--env-id", "steprl_testenvs:RewardKey-v0"], "observation key 'reward' is a name the replay uses for its own field"),
    (["--env-id", "test_dreamer_envs:Empty-v0"], "--env-id: observation 'obs' (0,) has no elements; drop it in a wrapper"),
]


@pytest.mark.parametrize("bad,message", BAD, ids=[" ".join(b) for b, _ in BAD])
def test_bad_input_exits_2_with_message(workdir, bad, message):
    proc = run(
        "dreamer.py",
        FAST + ["--env-id", "CartPole-v1", "--num-envs", "2", "--learning-starts", "16"] + bad,
        workdir,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (workdir / "runs").exists()


def test_existing_run_name_is_not_overwritten(workdir):
    (workdir / "runs" / "taken").mkdir(parents=True)
    (workdir / "runs" / "taken" / "steps.json").write_text("{}")
    proc = run("dreamer.py", FAST + ["--run-name", "taken"], workdir, timeout=60)
    assert proc.returncode == 2 and "--run-name: runs/taken already holds a run" in proc.stderr
    assert (workdir / "runs" / "taken" / "steps.json").read_text() == "{}"


@pytest.mark.parametrize(
    "env_id,step", [("NanAt-v0", 60), ("NanFinal-v0", 60), ("NanReset-v0", 0), ("HugeReward-v0", 60), ("HugeObs-v0", 60)]
)
def test_nan_from_the_env_stops_with_one_line(workdir, env_id, step):  # a step, an episode's end, a reset, huge values
    args = FAST + ["--env-id", f"steprl_testenvs:{env_id}", "--total-steps", "200", "--learning-starts", "16"]
    proc = run("dreamer.py", args, workdir, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "RuntimeWarning" not in proc.stderr, proc.stderr
    message = f"error: --env-id: steprl_testenvs:{env_id} returned a non-finite observation or reward at policy step {step} "
    assert message in proc.stderr


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_diverged_training_stops_with_one_line(workdir, env_id):
    """A learning rate of 1e30 without clipping makes the networks NaN at the first update: the next action is NaN (a
    discrete one-hot too, and a NaN std does not make torch.normal raise), and the loop names diverged training."""
    args = FAST + ["--env-id", env_id, "--total-steps", "96", "--learning-starts", "16", "--replay-ratio", "1/4",
                   "--learning-rate", "1e30", "--warmup", "0", "--agc", "0"]  # fmt: skip
    proc = run("dreamer.py", args, workdir, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "error: training diverged: the agent's actions at policy step 25 (rank 0) are not finite" in proc.stderr


def test_divergence_at_the_last_gradient_step_is_reported_not_evaluated(workdir):
    args = FAST + ["--env-id", "CartPole-v1", "--total-steps", "17", "--learning-starts", "16", "--replay-ratio", "1",
                   "--learning-rate", "1e30", "--warmup", "0", "--agc", "0", "--eval-episodes", "1"]  # fmt: skip
    args += ["--run-name", "nan"]
    proc = run("dreamer.py", args, workdir, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "error: training diverged: the parameters are not finite after the last gradient step" in proc.stderr  # not stdout
    assert "eval" not in ledger(workdir, "nan")


def test_bad_input_under_torchrun_stops_without_hang(workdir):
    proc = run("dreamer.py", FAST + ["--learning-starts", "8"], workdir, nproc=2, timeout=90)
    assert proc.returncode != 0
    assert "error: --learning-starts: 8 does not cover" in proc.stderr and "use at least 16" in proc.stderr


def test_help_works():
    proc = subprocess.run(command("dreamer.py", ["--help"]), capture_output=True, text=True, env=script_env(), timeout=60)
    assert proc.returncode == 0 and "--per-rank-sequence-length" in proc.stdout and "size200m" in proc.stdout
    assert os.path.basename(command("dreamer.py", [])[-1]) == "dreamer.py"


def test_resume_rejects_changed_settings_and_a_checkpoint_without_replay(workdir):
    args = FAST + ["--env-id", "CartPole-v1", "--learning-starts", "16", "--replay-ratio", "1/8", "--checkpoint-every", "32"]
    ok(run("dreamer.py", args + ["--total-steps", "32", "--run-name", "r"], workdir))
    changed = run("dreamer.py", args + ["--total-steps", "64", "--run-name", "r", "--resume", "yes", "--size", "size1m"],
                  workdir, timeout=60)  # fmt: skip
    assert changed.returncode == 2 and "--size tiny (checkpoint) vs size1m (now)" in changed.stderr
    lr = run("dreamer.py", args + ["--total-steps", "64", "--run-name", "r", "--resume", "yes", "--learning-rate", "1e-3"],
             workdir, timeout=60)  # fmt: skip
    assert lr.returncode == 2 and "--learning-rate 4e-05 (checkpoint) vs 0.001 (now)" in lr.stderr  # the optimizer's state
    batch = run("dreamer.py", args + ["--total-steps", "64", "--run-name", "r", "--resume", "yes", "--per-rank-batch-size",
                "4"], workdir, timeout=60)  # fmt: skip
    assert batch.returncode == 2 and "--per-rank-batch-size 2 (checkpoint) vs 4 (now)" in batch.stderr  # the train ratio
    assert "Traceback" not in changed.stderr
    import torch  # a checkpoint that does not fit this script (here: a parameter missing): exit 2, no traceback

    (ckpt,) = (workdir / "runs" / "r" / "checkpoints").iterdir()
    saved = torch.load(ckpt / "shared.pt", weights_only=True)
    torch.save(saved | {"agent": dict(list(saved["agent"].items())[1:])}, ckpt / "shared.pt")
    logs = sorted((workdir / "runs" / "r").glob("events.out*"))
    stale = run("dreamer.py", args + ["--total-steps", "64", "--run-name", "r", "--resume", "yes"], workdir, timeout=60)
    assert stale.returncode == 2 and "Traceback" not in stale.stderr
    assert sorted((workdir / "runs" / "r").glob("events.out*")) == logs  # no event file (its purge step hides steps)
    assert "--resume: the checkpoint's 'agent' does not fit (Error(s) in loading state_dict for Agent:" in stale.stderr
    assert "Missing key(s) in state_dict:" in stale.stderr  # the first mismatch, on the same line
    torch.save(saved, ckpt / "shared.pt")

    nb = ok(run("dreamer.py", args + ["--total-steps", "32", "--run-name", "nb", "--no-checkpoint-buffer"], workdir))
    assert "--no-checkpoint-buffer: checkpoints will hold the weights only, and training cannot resume" in nb.stderr
    empty = run("dreamer.py", args + ["--total-steps", "64", "--run-name", "nb", "--resume", "yes"], workdir, timeout=60)
    assert empty.returncode == 2 and "holds no replay buffer" in empty.stderr and "Traceback" not in empty.stderr
    longer = ok(run("dreamer.py", args + ["--total-steps", "64", "--run-name", "r", "--resume", "yes"], workdir))
    assert "resumed from" in longer.stdout
    plan, actual = ledger(workdir, "r")["plan"], ledger(workdir, "r")["actual"]
    assert actual["policy_steps"] == plan["policy_steps"] == 64 and actual["gradient_steps"] == plan["gradient_steps"]
    assert actual["episode_starts"] == actual["episodes"] + 2  # the first reset and the fresh reset of the resume


def test_ctrl_c_with_checkpoints_without_replay_does_not_hint_a_resume(workdir):
    """--no-checkpoint-buffer checkpoints cannot resume training: the stop line says so instead of 'continue from'."""
    args = FAST + ["--env-id", "CartPole-v1", "--total-steps", "1e6", "--learning-starts", "16", "--checkpoint-every", "16",
                   "--no-checkpoint-buffer", "--run-name", "nb"]  # fmt: skip
    proc = subprocess.Popen(command("dreamer.py", args), cwd=workdir, env=script_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    ckpts = workdir / "runs" / "nb" / "checkpoints"
    wait_for(lambda: ckpts.exists() and any(not p.name.endswith(".tmp") for p in ckpts.iterdir()), 120, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGINT and "Traceback" not in err, err[-2000:]
    assert "warning: SIGINT: stopped; its checkpoints cannot resume training (they hold no replay buffer" in err, err[-2000:]
    assert "continue from" not in err


def test_a_long_pretrain_shows_its_gradient_steps_on_the_progress_bar(workdir):
    args = FAST + ["--env-id", "CartPole-v1", "--total-steps", "20", "--learning-starts", "16",
                   "--per-rank-pretrain-steps", "20"]  # fmt: skip
    code, shown = run_on_terminal("dreamer.py", args, workdir)
    assert code == 0, shown[-2000:]
    for done in range(1, 21):  # step by step: one Dreamer gradient step can take minutes
        assert f"{done}/20 gradient steps at policy step 17" in shown, shown
    logged = ok(run("dreamer.py", args, workdir, env=script_env() | {"STEPRL_PRINT_EVERY": "1e-6"}))  # stderr not a tty
    assert all(f"training: {done}/20 gradient steps at policy step 17\n" in logged.stdout for done in range(1, 21))
    # the progress lines keep their interval between logs (--log-every 32 is more than the run)
    assert all(logged.stdout.count(f"policy_step={step} SPS=") == 1 for step in range(1, 21)), logged.stdout


def test_pretrain_ledger_with_more_gradient_steps_than_one_sampling_chunk(workdir):
    args = FAST + ["--env-id", "CartPole-v1", "--num-envs", "2", "--total-steps", "64", "--learning-starts", "16",
                   "--replay-ratio", "1/8", "--per-rank-pretrain-steps", "20"]  # fmt: skip
    ok(run("dreamer.py", args, workdir))
    led = ledger(workdir)
    assert (led["plan"]["training_iterations"], led["plan"]["per_rank_gradient_steps"]) == (24, 20 + 23 // 4)
    check_ledger(led, num_envs=2)
