"""Tiny envs for the Dreamer tests, registered on import (`--env-id test_dreamer_envs:DotImage-v0`). They draw their
own uint8 frames, so no renderer is needed. No tests live here."""

import gymnasium as gym
import numpy as np


class EchoEnv(gym.Env):
    """obs = [the action just executed (0 after a reset), t / 10]; reward t; terminates on its 9th step. Lets a test
    check which action is stored next to which observation."""

    def __init__(self):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.array([float(action[0]), self.t / 10], np.float32), float(self.t), self.t >= 9, False, {}


def _frame(pos: float, size: int = 16) -> np.ndarray:
    frame = np.zeros((size, size, 3), np.uint8)
    col = int(np.clip(pos, 0, 0.999) * size)
    frame[size // 2 - 2 : size // 2 + 2, max(0, col - 1) : col + 2] = (255, 128, 0)
    return frame


class DotImageEnv(gym.Env):
    """A dot on a 16x16 RGB frame; Discrete(3) moves it left, stays, right; reward for being near the centre.
    Truncated after 20 steps by its registration."""

    def __init__(self, channels: int = 3):
        self.observation_space = gym.spaces.Box(0, 255, (16, 16, channels), np.uint8)
        self.action_space = gym.spaces.Discrete(3)
        self.pos, self.channels = 0.5, channels

    def _obs(self):  # other channel counts repeat the RGB channels (a frame stack of 5 channels: R, G, B, R, G)
        return np.concatenate([_frame(self.pos)] * (self.channels // 3 + 1), -1)[..., : self.channels]

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = float(self.np_random.uniform(0.1, 0.9))
        return self._obs(), {}

    def step(self, action):
        self.pos = float(np.clip(self.pos + 0.1 * (int(action) - 1), 0, 1))
        return self._obs(), 1.0 - abs(self.pos - 0.5), False, False, {}


class DotDictEnv(gym.Env):
    """Dict observations mixing an image and a vector; Box(2) actions; terminates when the dot leaves [0, 1].
    `odd=True`: the image key is 'cam/rgb', frames come as float64 (a uint8 space all the same) and the action bounds
    are +-3e38 (their width overflows float32)."""

    def __init__(self, odd: bool = False):
        self.key, self.bound = ("cam/rgb", 3e38) if odd else ("image", 1.0)
        self.observation_space = gym.spaces.Dict(
            {
                self.key: gym.spaces.Box(0, 255, (16, 16, 3), np.uint8),
                "state": gym.spaces.Box(-np.inf, np.inf, (2,), np.float32),
            }
        )
        self.action_space = gym.spaces.Box(-self.bound, self.bound, (2,), np.float32)
        self.pos, self.odd = 0.5, odd

    def _obs(self):
        frame = _frame(self.pos).astype(np.float64 if self.odd else np.uint8)
        return {self.key: frame, "state": np.array([self.pos, 1.0], np.float32)}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = float(self.np_random.uniform(0.3, 0.7))
        return self._obs(), {}

    def step(self, action):
        self.pos += 0.2 * float(action[0]) / self.bound
        return self._obs(), 1.0, not 0 <= self.pos <= 1, False, {}


gym.register("Echo-v0", entry_point=EchoEnv)
gym.register("DotImage-v0", entry_point=DotImageEnv, max_episode_steps=20)
gym.register("DotImage4-v0", entry_point=DotImageEnv, max_episode_steps=20, kwargs={"channels": 4})
gym.register("DotImage5-v0", entry_point=DotImageEnv, max_episode_steps=20, kwargs={"channels": 5})
gym.register("Empty-v0", entry_point=lambda: gym.wrappers.TransformObservation(
    DotImageEnv(), lambda obs: np.zeros(0, np.float32), gym.spaces.Box(-1, 1, (0,), np.float32)))  # fmt: skip
gym.register("DotDict-v0", entry_point=DotDictEnv, max_episode_steps=25)
gym.register("OddDict-v0", entry_point=DotDictEnv, max_episode_steps=25, kwargs={"odd": True})
