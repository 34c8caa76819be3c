"""The inlined action-repeat wrapper and the env-step counting of a same-step-autoreset vector env."""

import gymnasium as gym
import numpy as np
import steprl_testenvs  # noqa: F401  (registers Countdown-v0)
from conftest import load_script
from gymnasium.vector import AutoresetMode

sac = load_script("sac_continuous")


def one_episode(env: gym.Env) -> tuple[int, int, float, dict]:
    """Run one episode with zero actions; (policy steps, env steps, summed reward, last info)."""
    env.reset(seed=0)
    policy_steps = env_steps = 0
    total = 0.0
    while True:
        _, reward, terminated, truncated, info = env.step(np.zeros(env.action_space.shape, np.float32))
        policy_steps += 1
        env_steps += info["env_steps"]
        total += reward
        if terminated or truncated:
            return policy_steps, env_steps, total, info


def test_pendulum_repeat_3_registered_limit():
    env = sac.wrap_steps(gym.make("Pendulum-v1"), action_repeat=3, max_episode_steps=None)
    policy_steps, env_steps, _, info = one_episode(env)
    assert (policy_steps, env_steps) == (67, 200)
    assert info[sac.EPISODE_KEY]["l"] == 67  # episode length is counted in policy steps


def test_pendulum_repeat_3_policy_step_limit():
    env = sac.wrap_steps(gym.make("Pendulum-v1"), action_repeat=3, max_episode_steps=50)
    policy_steps, env_steps, _, info = one_episode(env)
    assert (policy_steps, env_steps) == (50, 150)
    assert info[sac.EPISODE_KEY]["l"] == 50


def test_termination_inside_a_repeat_stops_early_and_sums_only_steps_taken():
    env = sac.wrap_steps(gym.make("Countdown-v0", terminate_at=129), action_repeat=4, max_episode_steps=None)
    policy_steps, env_steps, total, info = one_episode(env)
    assert (policy_steps, env_steps) == (33, 129)
    assert total == sum(range(1, 130))  # rewards 1..129: nothing after the terminal step
    assert info["env_steps"] == 1  # the last policy step took a single env step (129 = 32 * 4 + 1)
    assert info[sac.EPISODE_KEY]["r"] == sum(range(1, 130))


def test_repeat_sums_rewards_of_each_policy_step():
    env = sac.wrap_steps(gym.make("Countdown-v0", terminate_at=100), action_repeat=4, max_episode_steps=None)
    env.reset(seed=0)
    rewards = [env.step(np.zeros(1, np.float32))[1] for _ in range(2)]
    assert rewards == [1 + 2 + 3 + 4, 5 + 6 + 7 + 8]


def test_vector_env_counts_env_steps_and_episodes_with_same_step_autoreset():
    # Two envs ending at different times (129 and 10 env steps), repeat 4: each iteration is one policy step per env.
    fns = [
        lambda: sac.wrap_steps(gym.make("Countdown-v0", terminate_at=129), 4, None),
        lambda: sac.wrap_steps(gym.make("Countdown-v0", terminate_at=10), 4, None),
    ]
    envs = gym.vector.SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
    envs.reset(seed=0)
    env_steps, episodes = 0, []
    for _ in range(33):
        _, _, term, trunc, infos = envs.step(np.zeros((2, 1), np.float32))
        done = term | trunc
        env_steps += sac.env_steps_taken(infos, done)
        episodes += sac.finished_episodes(infos, done)
    # env 0: one episode of 33 policy / 129 env steps. env 1: episodes of 3 policy / 10 env steps (4+4+2),
    # 11 of them in 33 iterations: 110 env steps.
    assert env_steps == 129 + 110
    assert sorted(length for _, length in episodes) == [3] * 11 + [33]
    assert sorted(ret for ret, _ in episodes)[-1] == sum(range(1, 130))


def test_all_envs_ending_together_still_counts():
    fns = [lambda: sac.wrap_steps(gym.make("Countdown-v0", terminate_at=3), 2, None) for _ in range(2)]
    envs = gym.vector.SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
    envs.reset(seed=0)
    counts = []
    for _ in range(4):
        _, _, term, trunc, infos = envs.step(np.zeros((2, 1), np.float32))
        counts.append(sac.env_steps_taken(infos, term | trunc))
    assert counts == [4, 2, 4, 2]
