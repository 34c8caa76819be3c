"""Small gymnasium envs for the tests, registered on import so scripts can use `--env-id steprl_testenvs:Countdown-v0`."""

import os
import time

import gymnasium as gym
import numpy as np


class CountdownEnv(gym.Env):
    """Terminates on its `terminate_at`-th env step. The reward of env step t is t, so a summed reward tells exactly
    which steps ran. Renders a tiny uint8 frame without any graphics library."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, terminate_at: int = 129, render_mode: str | None = None):
        self.terminate_at, self.render_mode, self.t = terminate_at, render_mode, 0
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def _obs(self):
        return np.array([self.t / self.terminate_at, self.np_random.uniform(-1, 1)], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), float(self.t), self.t >= self.terminate_at, False, {}

    def render(self):
        frame = np.zeros((32, 32, 3), dtype=np.uint8)
        frame[:, : int(32 * self.t / self.terminate_at)] = 255
        return frame


gym.register("Countdown-v0", entry_point=CountdownEnv)


class EvalFailsEnv(CountdownEnv):
    """Countdown whose evaluation episodes (the scripts seed them from 1_000_000 on) raise, to test that a failing
    evaluation keeps the training ledger."""

    def reset(self, *, seed=None, options=None):
        if seed is not None and seed >= 1_000_000:
            raise RuntimeError("evaluation env broke")
        return super().reset(seed=seed, options=options)


def needs_missing_extra(**kwargs):
    raise gym.error.DependencyNotInstalled('this env needs an extra: `pip install "steprl-missing-extra"`')


class SlowEvalEnv(CountdownEnv):
    """Countdown whose evaluation episodes take 20 ms per env step, so an evaluation can outlast a collective's timeout."""

    def reset(self, *, seed=None, options=None):
        self.delay = 0.02 if seed is not None and seed >= 1_000_000 else 0.0
        return super().reset(seed=seed, options=options)

    def step(self, action):
        time.sleep(self.delay)
        return super().step(action)


gym.register("EvalFails-v0", entry_point=EvalFailsEnv)
gym.register("SlowEval-v0", entry_point=SlowEvalEnv)
gym.register("MissingExtra-v0", entry_point=needs_missing_extra)


class NoRenderEnv(CountdownEnv):
    """Countdown that cannot render, as an env whose rendering extra is not installed."""

    def render(self):
        raise gym.error.DependencyNotInstalled('rendering needs an extra: `pip install "steprl-missing-extra"`')


gym.register("NoRender-v0", entry_point=NoRenderEnv)


class EndlessEnv(CountdownEnv):
    """Never terminates, and is registered without a time limit: evaluation must stop it rather than hang."""

    def step(self, action):
        obs, reward, _, truncated, info = super().step(action)
        return obs, 1.0, False, truncated, info


gym.register("Endless-v0", entry_point=EndlessEnv)


class NanAtEnv(CountdownEnv):
    """Countdown whose observations turn NaN at its 60th env step (a simulator that blew up). `where="final"`: episodes
    end at step 60 and only that last observation is NaN; `where="reset"`: only the observation of a reset is NaN;
    `where="huge"`: from the 60th step the observations are float64 beyond float32's range (finite, inf once cast)."""

    def __init__(self, where: str = "step", render_mode: str | None = None):
        super().__init__(terminate_at=60 if where == "final" else 129, render_mode=render_mode)
        self.where = where

    def _obs(self):
        if self.where == "huge":
            return super()._obs().astype(np.float64) * (1e300 if self.t >= 60 else 1.0)
        bad = {"step": self.t >= 60, "final": self.t == 60, "reset": self.t == 0}[self.where]
        return super()._obs() * (np.nan if bad else 1.0)


gym.register("NanAt-v0", entry_point=NanAtEnv)


class HugeRewardEnv(CountdownEnv):
    """Countdown whose reward at its 60th env step is 1e60: finite in float64, inf once stored as float32."""

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, 1e60 if self.t == 60 else reward, terminated, truncated, info


gym.register("HugeReward-v0", entry_point=HugeRewardEnv)


class RankOneFailsEnv(CountdownEnv):
    """Countdown whose env on torchrun's rank 1 raises at its 100th env step (a bug of the env's own, on one rank)."""

    def step(self, action):
        if self.t == 99 and os.environ.get("RANK") == "1":
            raise RuntimeError("rank 1's env broke")
        return super().step(action)


gym.register("RankOneFails-v0", entry_point=RankOneFailsEnv)
gym.register("HugeBounds-v0", entry_point=lambda **kw: gym.wrappers.RescaleAction(CountdownEnv(**kw), -1e30, 1e30))


class OffApiEnv(CountdownEnv):
    """Off gymnasium's API: `bug="shape"` returns 3 numbers where its observation_space says 2; `bug="old_step"`
    returns old gym's 4-tuple from step(); `bug="own_code"` raises a TypeError in its own step(); `bug="array_reward"`
    returns its reward as an array of shape (1,); `bug="list_obs"` (not a bug: gymnasium warns) returns lists."""

    def __init__(self, bug: str, render_mode: str | None = None):
        super().__init__(render_mode=render_mode)
        self.bug = bug

    def _obs(self):
        if self.bug == "list_obs":  # allowed: gymnasium only warns, and its vector envs stack lists
            return super()._obs().tolist()
        return np.zeros(3, dtype=np.float32) if self.bug == "shape" else super()._obs()

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        if self.bug == "own_code":
            reward = "a bug of its own" + reward  # TypeError
        if self.bug == "array_reward":
            reward = np.array([reward])
        if self.bug == "old_step":
            return obs, reward, terminated or truncated, info
        return obs, reward, terminated, truncated, info


gym.register("WrongShape-v0", entry_point=OffApiEnv, kwargs={"bug": "shape"})
gym.register("OldStep-v0", entry_point=OffApiEnv, kwargs={"bug": "old_step"})
gym.register("OwnBug-v0", entry_point=OffApiEnv, kwargs={"bug": "own_code"})
gym.register("ArrayReward-v0", entry_point=OffApiEnv, kwargs={"bug": "array_reward"})
gym.register("ListObs-v0", entry_point=OffApiEnv, kwargs={"bug": "list_obs"})
# an env that records its own episode statistics under gymnasium's default key (the scripts use their own key)
gym.register("OwnStats-v0", entry_point=lambda **kw: gym.wrappers.RecordEpisodeStatistics(CountdownEnv(**kw)))
gym.register("NanFinal-v0", entry_point=NanAtEnv, kwargs={"where": "final"})
gym.register("NanReset-v0", entry_point=NanAtEnv, kwargs={"where": "reset"})
gym.register("HugeObs-v0", entry_point=NanAtEnv, kwargs={"where": "huge"})


class RewardKeyEnv(CountdownEnv):
    """Dict observations with a key named like a field Dreamer's replay stores itself ('reward')."""

    def __init__(self, render_mode: str | None = None):
        super().__init__(render_mode=render_mode)
        self.observation_space = gym.spaces.Dict({"vec": self.observation_space, "reward": gym.spaces.Box(-1, 1, (3,))})

    def _obs(self):
        return {"vec": super()._obs(), "reward": np.zeros(3, dtype=np.float32)}


gym.register("RewardKey-v0", entry_point=RewardKeyEnv)


class ResizedEnv(CountdownEnv):
    """Countdown with `STEPRL_TEST_OBS_SIZE` observation entries (default 2): a run resumed with another size is a
    checkpoint from an env whose spaces changed."""

    def __init__(self, render_mode: str | None = None):
        super().__init__(render_mode=render_mode)
        self.size = int(os.environ.get("STEPRL_TEST_OBS_SIZE", "2"))
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (self.size,), np.float32)

    def _obs(self):
        return np.resize(super()._obs(), self.size)


gym.register("Resized-v0", entry_point=ResizedEnv)
