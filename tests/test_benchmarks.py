"""benchmarks/: the report on event files with known values, the launcher end to end (--quick), the scaling table."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import report  # noqa: E402
import run as launcher  # noqa: E402
import scaling  # noqa: E402

ENV = dict(os.environ, WANDB_MODE="disabled", PYTHONUNBUFFERED="1")


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_run(root, exp_name, env_id, seed, speed, return_scale, eval_return, ledger_ok=True, **settings):
    """A fake run: logs every 100 policy steps to 1000; training (gradient steps) starts after step 300.
    Wall time: 100 steps/s in the random phase, then `speed` policy steps/s and 2*speed gradient steps/s."""
    from torch.utils.tensorboard import SummaryWriter

    run_name = f"{env_id}__{exp_name}__{seed}__1700000000"
    run_dir = os.path.join(root, "runs", run_name)
    writer = SummaryWriter(run_dir)
    table = "\n".join(
        f"|{k}|{v}|"
        for k, v in (dict(exp_name=exp_name, seed=seed, env_id=env_id, torch_threads=1, world_size=1) | settings).items()
    )
    writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{table}", walltime=1000.0)
    for step in range(100, 1001, 100):
        wall = 1000.0 + min(step, 300) / 100 + max(step - 300, 0) / speed
        writer.add_scalar("charts/episodic_return", step * return_scale, step, walltime=wall)
        writer.add_scalar("charts/gradient_steps", 2 * max(step - 300, 0), step, walltime=wall)
        writer.add_scalar("charts/SPS", 123.0, step, walltime=wall)
    writer.add_scalar("eval/episodic_return", eval_return, 1000, walltime=wall + 1)
    writer.close()
    plan = {"world_size": 1, "policy_steps": 1000, "gradient_steps": 1400}
    actual = {"policy_steps": 1000, "gradient_steps": 1400 if ledger_ok else 1399}
    with open(os.path.join(run_dir, "steps.json"), "w") as f:
        json.dump({"plan": plan, "actual": actual}, f)
    return run_name


def test_report_numbers_and_plots(tmp_path):
    root = str(tmp_path / "bench")
    names = [
        write_run(root, "sac_continuous", "HalfCheetah-v5", 1, speed=20.0, return_scale=0.1, eval_return=300.0),
        write_run(
            root, "sac_continuous", "HalfCheetah-v5", 2, speed=10.0, return_scale=0.2, eval_return=500.0, ledger_ok=False
        ),
        write_run(root, "dreamer", "CartPole-v1", 1, speed=50.0, return_scale=0.5, eval_return=7.0),
    ]
    manifest = {
        "command": "python benchmarks/run.py --test",
        "git_describe": "abc1234",
        "hardware": {"cpu": "Test CPU", "cores": 2, "gpu": "none", "torch": "x"},
        "runs": [{"run_name": n, "wall_time_s": 100.0 + i, "peak_tree_rss_mb": 400.0 + 10 * i} for i, n in enumerate(names)],
    }
    with open(os.path.join(root, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    ref = tmp_path / "ref.csv"
    ref.write_text(
        "script,algo,env_id,mean,std,seeds,budget,budget_unit,metric,source,url\n"
        "sac_continuous,SAC,HalfCheetah-v4,9000.5,100.25,3,1000000,policy steps,training return,TestSource,http://x\n"
    )
    out = str(tmp_path / "report")
    report.main(["--runs", root, "--output", out, "--window", "0.2", "--references", str(ref)])

    returns = {r["env_id"]: r for r in read_csv(os.path.join(out, "returns.csv"))}
    cheetah = returns["HalfCheetah-v5"]
    # last 20% of 1000 steps: the logs at 900 and 1000. Seed 1: (90+100)/2 = 95; seed 2: (180+200)/2 = 190
    assert cheetah["seeds"] == "2" and cheetah["policy_steps"] == "1000"
    assert float(cheetah["final_return_mean"]) == pytest.approx(142.5)
    assert float(cheetah["final_return_std"]) == pytest.approx(47.5)  # population std of (95, 190)
    assert float(cheetah["eval_return_mean"]) == pytest.approx(400.0)
    assert float(cheetah["eval_return_std"]) == pytest.approx(100.0)
    assert cheetah["reference_mean"] == "9000.5" and cheetah["reference_env_id"] == "HalfCheetah-v4"
    assert returns["CartPole-v1"]["reference_source"] == ""  # a reference only matches its own script and env
    assert float(returns["CartPole-v1"]["final_return_mean"]) == pytest.approx(475.0)

    speed = {r["env_id"]: r for r in read_csv(os.path.join(out, "speed.csv"))}
    # from step 300 (training began) to 1000: 700 policy steps and 1400 gradient steps in 700/speed seconds
    assert float(speed["HalfCheetah-v5"]["policy_sps_mean"]) == pytest.approx(15.0)
    assert float(speed["HalfCheetah-v5"]["policy_sps_std"]) == pytest.approx(5.0)
    assert float(speed["HalfCheetah-v5"]["gradient_sps_mean"]) == pytest.approx(30.0)
    assert float(speed["CartPole-v1"]["gradient_sps_mean"]) == pytest.approx(100.0)
    assert float(speed["HalfCheetah-v5"]["wall_time_s_mean"]) == pytest.approx(100.5)  # from the manifest
    assert float(speed["HalfCheetah-v5"]["peak_rss_mb_max"]) == pytest.approx(410.0)
    assert speed["HalfCheetah-v5"]["ledger"] == "MISMATCH, ok" and speed["CartPole-v1"]["ledger"] == "ok"

    text = open(os.path.join(out, "report.md")).read()
    assert "9000.5 ± 100.25" in text and "142.5 ± 47.5" in text and "15.0 ± 5.0" in text
    assert "Test CPU, 2 cores" in text and "python benchmarks/run.py --test" in text and "abc1234" in text
    assert "last 20%" in text
    for png in ("curves_steps.png", "curves_walltime.png"):
        with open(os.path.join(out, png), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        assert os.path.getsize(os.path.join(out, png)) > 10_000
    assert len(read_csv(os.path.join(out, "runs.csv"))) == 3


def test_burn_in_steps_override(tmp_path):
    root = str(tmp_path)
    write_run(root, "sac_continuous", "Pendulum-v1", 1, speed=20.0, return_scale=1.0, eval_return=0.0)
    run = report.load_run(report.find_run_dirs((root,))[0])
    assert run.exp_name == "sac_continuous" and run.env_id == "Pendulum-v1" and run.seed == "1"
    assert report.speed(run)["policy_sps"] == pytest.approx(20.0)
    # from step 100: 900 steps in 200/100 + 700/20 seconds
    assert report.speed(run, burn_in_steps=100)["policy_sps"] == pytest.approx(900 / (2.0 + 35.0))
    assert report.final_return(run, 0.05) == pytest.approx(1000.0)


def test_a_group_that_mixes_experiments_is_warned_about(tmp_path, capsys):
    """Runs of two launches in one folder (here seed 1 twice) would be averaged as one experiment's seeds."""
    root = str(tmp_path / "bench")
    write_run(os.path.join(root, "a"), "sac_continuous", "Pendulum-v1", 1, speed=20.0, return_scale=0.1, eval_return=1.0)
    write_run(os.path.join(root, "b"), "sac_continuous", "Pendulum-v1", 2, speed=20.0, return_scale=0.1, eval_return=1.0)
    report.main(["--runs", root, "--output", str(tmp_path / "one")])
    assert "warning" not in capsys.readouterr().err
    write_run(os.path.join(root, "c"), "sac_continuous", "Pendulum-v1", 1, speed=20.0, return_scale=0.1, eval_return=1.0)
    report.main(["--runs", root, "--output", str(tmp_path / "two")])
    assert (
        "warning: sac_continuous on Pendulum-v1 (1 process(es)) mixes runs of other budgets (policy steps 1000) or "
        "repeats a seed (seeds 1, 1, 2)" in capsys.readouterr().err
    )


def test_report_lists_the_settings_that_differ(tmp_path):
    """A comparison's report says what it compares: the flags whose values differ between groups, or within one."""
    root = str(tmp_path / "bench")
    common = dict(speed=20.0, return_scale=0.1, eval_return=1.0, gamma=0.99)
    write_run(root, "sac_continuous", "Pendulum-v1", 1, q_lr=0.001, tau=0.005, **common)
    write_run(root, "sac_continuous", "Pendulum-v1", 2, q_lr=0.001, tau=0.005, **common)
    write_run(root, "sac_myidea", "Pendulum-v1", 1, q_lr=0.0003, tau=0.005, **common)
    write_run(root, "sac_myidea", "Pendulum-v1", 2, q_lr=0.0003, tau=0.01, **common)
    report.main(["--runs", root])  # the default --output: <runs>/report
    text = open(os.path.join(root, "report", "report.md")).read()
    table = text.split("## Settings that differ")[1].split("##")[0]
    assert "| setting | sac_continuous on Pendulum-v1 | sac_myidea on Pendulum-v1 |" in table
    assert "| `q_lr` | 0.001 | 0.0003 |" in table and "| `tau` | 0.005 | 0.005, 0.01 |" in table
    assert "gamma" not in table and "seed" not in table and "torch_threads" not in table

    same = str(tmp_path / "same")
    write_run(same, "sac_continuous", "Pendulum-v1", 1, q_lr=0.001, **common)
    write_run(same, "sac_continuous", "Pendulum-v1", 2, q_lr=0.001, **common)
    report.main(["--runs", same])
    assert "## Settings that differ" not in open(os.path.join(same, "report", "report.md")).read()


def test_report_output_defaults_to_the_runs_folder_and_needs_one_for_several(tmp_path, capsys):
    write_run(str(tmp_path / "a"), "sac_continuous", "Pendulum-v1", 1, speed=20.0, return_scale=0.1, eval_return=1.0)
    write_run(str(tmp_path / "b"), "sac_continuous", "Pendulum-v1", 2, speed=20.0, return_scale=0.1, eval_return=1.0)
    with pytest.raises(SystemExit) as e:
        report.main(["--runs", str(tmp_path / "a"), str(tmp_path / "b")])
    assert "--output: give the report's folder; with 2 --runs folders there is no default" in str(e.value)
    report.main(["--runs", str(tmp_path / "a"), str(tmp_path / "b"), "--output", str(tmp_path / "both")])
    assert len(read_csv(os.path.join(tmp_path, "both", "runs.csv"))) == 2


def test_report_is_quiet_about_the_purge_of_a_resumed_run(tmp_path, caplog):
    """A resume reopens the event file with a purge step (the killed attempt's steps after its checkpoint are logged
    again); TensorBoard's reader warns of each such purge, which the report does not pass on."""
    from torch.utils.tensorboard import SummaryWriter

    run_dir = os.path.join(tmp_path, "runs", write_run(str(tmp_path), "sac_continuous", "Pendulum-v1", 1, 20.0, 0.1, 1.0))
    writer = SummaryWriter(run_dir, purge_step=500)
    for step in range(500, 1001, 100):
        writer.add_scalar("charts/episodic_return", -step, step)
    writer.close()
    run = report.load_run(run_dir)
    assert "Purging" not in caplog.text
    assert run.scalars["charts/episodic_return"][:, 2].tolist() == [10, 20, 30, 40, -500, -600, -700, -800, -900, -1000]


def test_a_resumed_run_counts_its_attempts_not_the_time_between(tmp_path):
    """A run killed after its checkpoint at step 400 and resumed an hour later with a larger --total-steps: one event
    file per attempt. Speed and wall time count each attempt's own span, and the config is the last attempt's."""
    from torch.utils.tensorboard import SummaryWriter

    run_dir = str(tmp_path / "runs" / "r")
    table = "|param|value|\n|-|-|\n|exp_name|sac_continuous|\n|env_id|Pendulum-v1|\n|seed|1|\n|total_steps|{}|"
    for total, purge, first_wall, steps, rate in ((600, None, 1000.0, (100, 600), 10), (800, 401, 5000.0, (500, 900), 20)):
        writer = SummaryWriter(run_dir, purge_step=purge)
        writer.add_text("hyperparameters", table.format(total), walltime=first_wall)
        for step in range(*steps, 100):  # the first attempt logs up to step 500, beyond its last checkpoint (400)
            wall = first_wall + (step - steps[0] + 100) / rate
            writer.add_scalar("charts/SPS", 1.0, step, walltime=wall)
            writer.add_scalar("charts/gradient_steps", 2 * step, step, walltime=wall)
        writer.close()
    run = report.load_run(run_dir)
    assert run.config["total_steps"] == "800" and len(set(run.attempts.values())) == 2
    assert [s for s, _, _ in run.scalars["charts/SPS"]] == [100, 200, 300, 400, 500, 600, 700, 800]  # 500 logged again
    # attempt 1: 100 -> 400 in 30 s; attempt 2: 500 -> 800 in 15 s; not 400 -> 500, which spans the hour between them
    assert report.speed(run)["policy_sps"] == pytest.approx(600 / 45)
    assert report.speed(run)["gradient_sps"] == pytest.approx(1200 / 45)
    assert report.wall_time(run) == pytest.approx(40 + 15)  # each attempt's first to last event (the first's to 500)


def test_runs_that_logged_nothing_are_left_out_and_unfinished_ones_named(tmp_path, capsys):
    from torch.utils.tensorboard import SummaryWriter

    root = str(tmp_path / "bench")
    write_run(root, "sac_continuous", "Pendulum-v1", 1, speed=20.0, return_scale=0.1, eval_return=1.0)
    name = write_run(root, "sac_continuous", "Pendulum-v1", 2, speed=20.0, return_scale=0.1, eval_return=1.0)
    os.remove(os.path.join(root, "runs", name, "steps.json"))  # stopped, not resumed
    failed = SummaryWriter(os.path.join(root, "runs", "Pendulum-v1__sac_continuous__3__1700000000"))
    failed.add_text("hyperparameters", "|param|value|\n|-|-|\n|seed|3|")  # killed before its first log
    failed.close()
    result = report.main(["--runs", root])
    err = capsys.readouterr().err
    assert "warning: left out 1 run(s) that logged nothing:" in err and "__3__" in err.split("left out")[1].splitlines()[0]
    assert "warning: 1 run(s) have not finished (no steps.json; their numbers end at their last log):" in err
    assert [r["seeds"] for r in result["returns"]] == [2]


def test_band_mean_and_std_across_seeds():
    a = np.array([[0, 0, 0.0], [10, 0, 10.0]])
    b = np.array([[0, 0, 2.0], [10, 0, 12.0], [20, 0, 22.0]])
    x, mean, std = report.band([a, b], x_col=0, points=3)
    assert list(x) == [0, 5, 10]  # only where every seed has data
    assert list(mean) == [1.0, 6.0, 11.0]
    assert list(std) == [1.0, 1.0, 1.0]


def test_launcher_dry_run_commands(capsys):
    launcher.main(
        ["--dry-run", "--env-ids", "Pendulum-v1", "--seeds", "3", "--torchrun", "2", "--track", "--", "--num-envs", "2"]
    )
    out = capsys.readouterr().out
    assert "torch.distributed.run --standalone --nproc-per-node=2" in out
    assert "--env-id Pendulum-v1 --seed 3 --run-name Pendulum-v1__sac_continuous__3__" in out
    assert "--track" in out and out.rstrip().endswith("--num-envs 2)")
    assert f"WANDB_TAGS={launcher.git_describe()}" in out


def test_an_uncommitted_copy_of_a_script_is_tagged_dirty(tmp_path, capsys):
    """The documented workflow copies a script and launches the copy before committing it: `git describe --dirty` and
    `git diff` ignore untracked files, so the launcher checks that the script is tracked."""
    config = ["-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    git = lambda *a: subprocess.run(["git", *config, *a], cwd=tmp_path, check=True)  # noqa: E731
    git("init", "-q")
    (tmp_path / "committed.py").write_text("print(1)\n")
    git("add", "committed.py")
    git("commit", "-qm", "one")
    (tmp_path / "copy.py").write_text("print(1)\n")
    assert launcher.script_version(str(tmp_path / "committed.py"))["script_uncommitted_changes"] is False
    assert launcher.script_version(str(tmp_path / "copy.py"))["script_uncommitted_changes"] is True
    launcher.main(["--dry-run", "--script", str(tmp_path / "copy.py"), "--env-ids", "Pendulum-v1", "--seeds", "1"])
    assert f"WANDB_TAGS={launcher.git_describe(str(tmp_path))}-dirty " in capsys.readouterr().out
    assert launcher.code_version(str(tmp_path / "copy.py"))[0].endswith("-dirty")  # what scaling.py tags its runs with


def test_launcher_records_a_failed_run(tmp_path, capsys):
    out = str(tmp_path / "bad")
    result = subprocess.run(
        [sys.executable, "benchmarks/run.py", "--env-ids", "NoSuchEnv-v0", "--seeds", "1", "--out", out, "--no-report"],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert manifest["runs"][0]["returncode"] == 2
    assert "--env-id" in open(os.path.join(out, manifest["runs"][0]["log"])).read()
    assert "       error: --env-id: unknown environment 'NoSuchEnv-v0'" in result.stdout  # the reason, not only in the log
    with pytest.raises(SystemExit):  # a script flag without `--`: tyro's box, then where such flags go
        launcher.main(["--dry-run", "--learning-starts", "100"])
    assert "hint: flags for the script go after `--`" in capsys.readouterr().err
    for flag in ("--seed", "--run-name=mine"):  # the launcher's own per-run flags cannot go to the script
        with pytest.raises(SystemExit, match=f"error: {flag.split('=')[0]} after `--`: the launcher sets it for each run"):
            launcher.main(["--dry-run", "--env-ids", "Pendulum-v1", "--", flag, "3"])


def test_quick_preset_end_to_end(tmp_path):
    out = str(tmp_path / "quick")
    result = subprocess.run(
        [sys.executable, "benchmarks/run.py", "--quick", "--out", out, "--report-title", "Quick check"],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert manifest["git_describe"] == launcher.git_describe() != "unknown"
    assert manifest["script_file"] == "algos/sac_continuous.py" and len(manifest["script_sha256"]) == 64
    assert [(r["env_id"], r["seed"], r["returncode"]) for r in manifest["runs"]] == [
        ("Pendulum-v1", 1, 0),
        ("Pendulum-v1", 2, 0),
    ]
    for r in manifest["runs"]:
        assert r["wall_time_s"] > 0 and r["peak_rss_mb"] > 50 and r["peak_tree_rss_mb"] >= r["peak_rss_mb"] - 1
        assert os.path.exists(os.path.join(out, r["run_dir"], "steps.json")) and len(r["loadavg_1min"]) == 2
    rows = read_csv(os.path.join(out, "report", "returns.csv"))
    assert [(r["script"], r["env_id"], r["seeds"], r["policy_steps"]) for r in rows] == [
        ("sac_continuous", "Pendulum-v1", "2", "400")
    ]
    speed = read_csv(os.path.join(out, "report", "speed.csv"))[0]
    assert float(speed["policy_sps_mean"]) > 0 and float(speed["gradient_sps_mean"]) > 0 and speed["ledger"] == "ok"
    for png in ("curves_steps.png", "curves_walltime.png"):
        assert os.path.getsize(os.path.join(out, "report", png)) > 10_000
    text = open(os.path.join(out, "report", "report.md")).read()
    assert text.startswith("# Quick check") and "python benchmarks/run.py --quick" in text and "load average" in text


def test_scaling_table_ratios(tmp_path):
    rows = [
        dict(config=name, world_size=n, per_rank_batch_size=256 // div, global_policy_steps=3000 * sx, policy_sps=sps,
             gradient_sps=gsps, wall_time_s=wall, peak_tree_rss_mb=500.0, ledger="ok")
        for (name, n, sx, _, div), sps, gsps, wall in zip(scaling.CONFIGS, [100, 150, 180], [50, 90, 60], [60.0, 80.0, 40.0])
    ]  # fmt: skip
    args = scaling.Args(output=str(tmp_path))
    manifest = {"command": "python benchmarks/scaling.py", "git_describe": "x", "hardware": launcher.hardware()}
    scaling.write_tables(args, rows, manifest, "sac_continuous")
    table = {r["config"]: r for r in read_csv(os.path.join(tmp_path, "scaling.csv"))}
    assert float(table["2 processes, same per-rank work"]["policy_sps_ratio"]) == pytest.approx(1.5)
    assert float(table["2 processes, same per-rank work"]["gradient_sps_ratio"]) == pytest.approx(1.8)
    assert float(table["2 processes, same global work"]["wall_time_speedup"]) == pytest.approx(1.5)
    assert table["2 processes, same global work"]["per_rank_batch_size"] == "128"
    assert "| 2 processes, same global work | 2 | 128 | 3,000 |" in open(os.path.join(tmp_path, "scaling.md")).read()


FAKE_SCRIPT = """
import json, os, sys
from torch.utils.tensorboard import SummaryWriter

flags = dict(zip(sys.argv[1::2], sys.argv[2::2]))
world_size, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
total, starts, every = int(flags["--total-steps"]), int(flags["--learning-starts"]), int(flags["--log-every"])
if rank == 0:  # logs as if it ran 100 policy steps/s per process, one global gradient step per policy step
    run_dir = os.path.join("runs", flags["--run-name"])
    writer = SummaryWriter(run_dir)
    config = {"exp_name": "fake_algo", "env_id": flags["--env-id"], "seed": flags["--seed"], "world_size": world_size}
    writer.add_text("hyperparameters", "|param|value|\\n|-|-|\\n" + "\\n".join(f"|{k}|{v}|" for k, v in config.items()))
    for step in range(every, total + 1, every):
        wall = 1000.0 + step / (100.0 * world_size)
        writer.add_scalar("charts/SPS", 1.0, step, walltime=wall)
        writer.add_scalar("charts/gradient_steps", max(step - starts, 0), step, walltime=wall)
        writer.add_scalar("charts/episodic_return", float(flags["--per-rank-batch-size"]), step, walltime=wall)
    writer.close()
    counts = {"world_size": world_size, "policy_steps": total, "gradient_steps": total - starts}
    json.dump({"plan": counts, "actual": counts}, open(os.path.join(run_dir, "steps.json"), "w"))
"""


def test_scaling_end_to_end_under_torchrun(tmp_path):
    script = tmp_path / "fake_algo.py"
    script.write_text(FAKE_SCRIPT)
    out, output = str(tmp_path / "raw"), str(tmp_path / "table")
    argv = ["--script", str(script), "--env-id", "Fake-v0", "--per-rank-steps", "1000", "--learning-starts", "200"]
    argv += ["--log-every", "100", "--out", out, "--output", output]
    rows = scaling.main(argv)
    assert [(r["config"], r["world_size"], r["per_rank_batch_size"], r["global_policy_steps"]) for r in rows] == [
        ("1 process", 1, 256, 1000),
        ("2 processes, same per-rank work", 2, 256, 2000),
        ("2 processes, same global work", 2, 128, 1000),
    ]
    assert [round(r["policy_sps"], 6) for r in rows] == [100.0, 200.0, 200.0]
    assert [round(r["gradient_sps"], 6) for r in rows] == [100.0, 200.0, 200.0]
    table = {r["config"]: r for r in read_csv(os.path.join(output, "scaling.csv"))}
    assert float(table["2 processes, same per-rank work"]["policy_sps_ratio"]) == pytest.approx(2.0)
    assert float(table["2 processes, same global work"]["gradient_sps_ratio"]) == pytest.approx(2.0)
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    commands = [r["command"] for r in manifest["runs"]]
    assert all("torch.distributed.run --standalone" in c for c in commands)
    assert (
        "--nproc-per-node=2" in commands[2] and "--total-steps 1000" in commands[2] and "--learning-starts 200" in commands[2]
    )
    assert "--total-steps 2000 --learning-starts 400 --per-rank-batch-size 256" in commands[1]
    text = open(os.path.join(output, "scaling.md")).read()
    assert "| 2 processes, same per-rank work | 2 | 256 | 2,000 | 200.0 | 200.0 | 2.00 | 2.00 |" in text
    assert "load average" in text and "sha256" in text
