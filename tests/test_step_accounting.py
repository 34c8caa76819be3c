"""The step plan and the replay-ratio loop against the design contract's worked cases (on algos/sac_continuous.md), and
exact-arithmetic edge cases."""

from fractions import Fraction

import pytest
import tyro
from conftest import load_script

sac = load_script("sac_continuous")


def plan(total, m, n, learning_starts, ratio, pretrain=0, action_repeat=1):
    return sac.step_plan(total, m, n, learning_starts, Fraction(ratio), pretrain, action_repeat)


def loop_counts(ratio, m, pretrain, k):
    """Drive the Ratio object for k training iterations; return its per-iteration gradient steps."""
    r = sac.Ratio(Fraction(ratio), m, pretrain)
    return [r() for _ in range(k)]


def test_worked_case_1():
    p = plan(1000, 4, 2, 100, "0.5")
    assert (p["policy_steps_per_iteration"], p["iterations"], p["random_iterations"]) == (8, 125, 13)
    assert p["random_iterations"] * 8 == 104
    assert (p["training_iterations"], p["per_rank_gradient_steps"], p["gradient_steps"], p["policy_steps"]) == (
        112, 224, 448, 1000)  # fmt: skip
    assert sum(loop_counts("0.5", 4, 0, 112)) == 224


def test_worked_case_2_pretrain():
    p = plan(1000, 4, 2, 100, "0.5", pretrain=10)
    assert (p["per_rank_gradient_steps"], p["gradient_steps"]) == (232, 464)
    counts = loop_counts("0.5", 4, 10, 112)
    assert counts[0] == 10 and counts[1:] == [2] * 111 and sum(counts) == 232


def test_worked_case_3():
    p = plan(1200, 3, 2, 60, "0.25")
    assert (p["iterations"], p["random_iterations"], p["training_iterations"]) == (200, 10, 190)
    assert (p["per_rank_gradient_steps"], p["gradient_steps"]) == (142, 284)
    assert sum(loop_counts("0.25", 3, 0, 190)) == 142


def test_worked_case_4_remainder_dropped():
    p = plan(1001, 4, 2, 0, 1)
    assert (p["iterations"], p["policy_steps"], p["random_iterations"]) == (125, 1000, 0)


def test_nominal_env_steps_scale_with_action_repeat():
    assert plan(1000, 4, 2, 100, 1, action_repeat=3)["env_steps"] == 3000


@pytest.mark.parametrize("ratio", ["0.75", "1/3", "0.1", "2/7", "3", "2.5", "0"])
@pytest.mark.parametrize("m", [1, 3, 4])
@pytest.mark.parametrize("pretrain", [0, 7])
def test_loop_is_exact_after_every_iteration(ratio, m, pretrain):
    r = sac.Ratio(Fraction(ratio), m, pretrain)
    done = 0
    for k in range(1, 1001):
        done += r()
        expected = (
            pretrain + (Fraction(ratio) * m * (k - 1)).__floor__() if pretrain else (Fraction(ratio) * m * k).__floor__()
        )
        assert done == expected == r.gradient_steps, (k, done, expected)


def test_float_accumulation_would_drift_but_fraction_does_not():
    # 0.1 accumulated as a float ten times is 0.9999999999999999 and floors to 0; the loop must give 1 step.
    acc = 0.0
    for _ in range(10):
        acc += 0.1
    assert int(acc) == 0
    assert sum(loop_counts("0.1", 1, 0, 10)) == 1
    assert sum(loop_counts("1/3", 1, 0, 3000)) == 1000


def test_ratio_zero_never_trains_and_pretrain_alone_runs_once():
    assert sum(loop_counts(0, 4, 0, 50)) == 0
    assert loop_counts(0, 4, 5, 3) == [5, 0, 0]
    assert plan(1000, 4, 1, 0, 0)["gradient_steps"] == 0


def test_ratio_above_one():
    assert loop_counts("2.5", 2, 0, 4) == [5, 5, 5, 5]
    assert plan(100, 2, 1, 0, "2.5")["per_rank_gradient_steps"] == 250


def test_learning_starts_rounding_and_whole_run_random():
    assert plan(1000, 4, 2, 1, 1)["random_iterations"] == 1  # ceil(1 / 8)
    assert plan(1000, 4, 2, 8, 1)["random_iterations"] == 1
    assert plan(1000, 4, 2, 9, 1)["random_iterations"] == 2
    p = plan(100, 1, 1, 10_000, 1)
    assert (p["random_iterations"], p["training_iterations"], p["gradient_steps"]) == (100, 0, 0)


def test_ratio_state_round_trip():
    a = sac.Ratio(Fraction(1, 3), 4, 3)
    first = [a() for _ in range(10)]
    b = sac.Ratio(Fraction(1, 3), 4, 3)
    b.load_state_dict(a.state_dict())
    c = sac.Ratio(Fraction(1, 3), 4, 3)
    assert [b() for _ in range(10)] == [c() for _ in range(20)][10:] and sum(first) == a.gradient_steps


def test_ledger_errors_catch_mismatches():
    p = plan(1000, 4, 2, 100, "0.5")
    good = {"policy_steps": 1000, "env_steps": 1000, "per_rank_gradient_steps": [224, 224], "gradient_steps": 448}
    assert sac.ledger_errors(p, good) == []
    assert len(sac.ledger_errors(p, good | {"per_rank_gradient_steps": [224, 223], "gradient_steps": 447})) == 2
    assert sac.ledger_errors(p, good | {"env_steps": 1001})


def test_cli_steps_and_ratio_types():
    args = tyro.cli(sac.Args, args=["--total-steps", "1e6", "--learning-starts", "5_000", "--replay-ratio", "1/3"])
    assert args.total_steps == 1_000_000 and isinstance(args.total_steps, int)
    assert args.learning_starts == 5000 and args.replay_ratio == Fraction(1, 3)
    assert tyro.cli(sac.Args, args=["--replay-ratio", "0.75"]).replay_ratio == Fraction(3, 4)
    for script, flags in [(sac, ["--per-rank-pretrain-steps", "--per-rank-buffer-size", "--checkpoint-every"]),
                          (load_script("dreamer"), ["--per-rank-pretrain-steps", "--warmup", "--video-every"])]:  # fmt: skip
        counts = tyro.cli(script.Args, args=[a for flag in flags for a in (flag, "1e3")])  # every step count takes 1e3
        assert [getattr(counts, f[2:].replace("-", "_")) for f in flags] == [1000] * len(flags)
    with pytest.raises(SystemExit) as e:
        tyro.cli(sac.Args, args=["--total-steps", "1.5"])
    assert e.value.code == 2


def test_derived_fields_are_not_flags():
    for flag in ["--world-size", "--policy-steps-per-iteration", "--iterations"]:
        with pytest.raises(SystemExit) as e:
            tyro.cli(sac.Args, args=[flag, "3"])
        assert e.value.code == 2


def test_exp_name_defaults_to_the_real_file_stem():
    assert sac.Args().exp_name == "sac_continuous"
    short = load_script("sac")  # algos/sac.py, the symlink
    assert short.Args().exp_name == "sac_continuous"
