# DreamerV3 (the Nature 2025 version: Hafner et al., "Mastering diverse control tasks through world models"), with
# exact step accounting and torchrun scaling. Follows the official JAX implementation danijar/dreamerv3 (2024-2025
# code: dreamerv3/agent.py, rssm.py, embodied/jax/*) in PyTorch; docs, sources per component and every deliberate
# deviation: algos/dreamer.md. Step vocabulary and ledger: algos/dreamer.md ("How steps are counted").
import contextlib
import copy
import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import gymnasium as gym
import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import tyro
from gymnasium.vector import AutoresetMode
from tqdm import tqdm

from steprl.utils import (
    NO_RESUME,
    ExactRatio,
    Steps,
    all_gather,
    all_reduce_grads,
    all_sum,
    check_env_id,
    check_env_output,
    check_replay_fits,
    check_resume_args,
    check_run_dir,
    check_tracking,
    close_tracking,
    config_dict,
    env_seconds,
    exit_if_complete,
    fail,
    final_exit_code,
    find_checkpoint,
    interrupt_cleanly,
    is_main_process,
    load_checkpoint,
    load_states,
    resolve_run_name,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
    setup_distributed,
    setup_tracking,
    teardown,
    warn,
)


@dataclass
class Args:
    exp_name: str = os.path.basename(os.path.realpath(__file__))[: -len(".py")]
    """the name of this experiment (the script's real file stem, also when started through a symlink)"""
    seed: int = 1
    """seed of the experiment; rank r's env i is first seeded `seed + r * num_envs + i` (a resume reseeds from the RNGs)"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """if toggled and a GPU is there, rank r uses cuda:LOCAL_RANK (nccl); otherwise CPU (gloo)"""
    track: bool = False
    """if toggled, mirror TensorBoard to Weights and Biases (honours WANDB_MODE=offline)"""
    wandb_project_name: str = "steprl"
    """the W&B project"""
    wandb_entity: str | None = None
    """the W&B entity (team)"""
    capture_video: bool = False
    """if toggled (image observations only), log videos of real vs. imagined frames every `--video-every` policy steps"""
    run_name: str | None = None
    """fixes the run directory `runs/<run_name>` (default: `{env_id}__{exp_name}__{seed}__{unix time}`)"""
    checkpoint_every: Steps = 0
    """global policy steps between checkpoints (0: no checkpoints); a final checkpoint is written when > 0"""
    keep_checkpoints: int = 2
    """how many of the newest checkpoints to keep"""
    checkpoint_buffer: bool = True
    """if toggled, checkpoints hold every rank's replay buffer (without it they hold weights only: no resume of training)"""
    resume: Literal["no", "auto", "yes"] = "no"
    """continue from the newest checkpoint of the run directory: `yes` requires one, `auto` starts fresh without"""
    torch_threads: int = 1
    """torch intra-op threads per process on CPU (1 is fastest for these small networks on shared cores)"""
    log_every: Steps = 1000
    """global policy steps between scalar logs"""
    eval_episodes: int = 10
    """episodes of evaluation on rank 0 at the end, actions sampled from the policy as the reference does (0: none)"""
    video_every: Steps = 10_000
    """global policy steps between real-vs-imagined videos (with `--capture-video` and image observations)"""

    # Algorithm specific arguments
    env_id: str = "CartPole-v1"
    """the environment id, or `module:EnvId-v0` to import a module that registers it"""
    total_steps: Steps = 40_000
    """global policy steps of the run (accepts 1e6)"""
    num_envs: int = 1
    """envs per process (m)"""
    async_envs: bool = False
    """if toggled, step the envs in subprocesses (AsyncVectorEnv) instead of in this process"""
    action_repeat: int = 1
    """env steps per policy step (rewards are summed; stops early at an episode end)"""
    max_episode_steps: Steps | None = None
    """policy steps after which an episode is truncated (default: only the env's own limit, in env steps)"""
    image_size: int = 64
    """image observations are resized to image_size x image_size pixels (a power of two, at least 8)"""
    size: Literal["tiny", "size1m", "size12m", "size25m", "size50m", "size100m", "size200m"] = "tiny"
    """model size preset (the paper's sizes; `tiny` is a CPU preset for tests and laptops)"""
    per_rank_buffer_size: Steps = 1_000_000
    """replay capacity in stored steps per rank, split evenly over the rank's envs"""
    per_rank_batch_size: int = 16
    """sequences per gradient step on one rank (global batch = world_size times this)"""
    per_rank_sequence_length: int = 64
    """stored steps per training sequence (T)"""
    learning_starts: Steps = 1024
    """global policy steps of uniformly random actions before training (at least sequence length x P; whole iterations)"""
    replay_ratio: ExactRatio = Fraction(1, 8)
    """global gradient steps per global policy step once training starts (train_ratio = this x batch x length)"""
    per_rank_pretrain_steps: Steps = 0
    """if > 0, the first training iteration does exactly this many gradient steps per rank"""
    learning_rate: float = 4e-5
    """LaProp learning rate (one optimiser for world model, actor and critic)"""
    warmup: Steps = 1000
    """per-rank gradient steps of linear learning-rate warm-up from 0"""
    agc: float = 0.3
    """adaptive gradient clipping: a parameter's gradient norm is clipped to agc x max(1e-3, its norm)"""
    adam_eps: float = 1e-20
    """epsilon of the LaProp second-moment normalisation"""
    beta1: float = 0.9
    """LaProp momentum"""
    beta2: float = 0.999
    """LaProp second-moment decay"""
    imag_horizon: int = 15
    """imagined steps from every posterior state (H)"""
    horizon: float = 333
    """effective horizon in policy steps: the continue target is (1 - is_terminal) x (1 - 1/horizon)"""
    lam: float = 0.95
    """lambda of the lambda-returns"""
    actent: float = 3e-4
    """policy entropy bonus"""
    slow_critic_rate: float = 0.02
    """EMA rate of the slow critic (updated after every per-rank gradient step)"""
    free_nats: float = 1.0
    """free nats of the dynamics and representation losses (on the KL summed over the latents)"""
    dyn_scale: float = 1.0
    """scale of the dynamics loss"""
    rep_scale: float = 0.1
    """scale of the representation loss"""
    repval_scale: float = 0.3
    """scale of the replay value loss"""
    unimix: float = 0.01
    """uniform mix of the latent and discrete-actor categoricals"""


# size presets: danijar/dreamerv3 configs.yaml (size1m ... size200m); stoch 32, blocks 8 and 3-layer MLPs in all
SIZES = {
    "tiny": dict(deter=128, hidden=32, classes=4, units=32, depth=4),
    "size1m": dict(deter=512, hidden=64, classes=4, units=64, depth=4),
    "size12m": dict(deter=2048, hidden=256, classes=16, units=256, depth=16),
    "size25m": dict(deter=3072, hidden=384, classes=24, units=384, depth=24),
    "size50m": dict(deter=4096, hidden=512, classes=32, units=512, depth=32),
    "size100m": dict(deter=6144, hidden=768, classes=48, units=768, depth=48),
    "size200m": dict(deter=8192, hidden=1024, classes=64, units=1024, depth=64),
}
STOCH, BLOCKS, BINS = 32, 8, 255


RESUME_FLAGS = [  # a resumed run must keep these (step plan, buffers, networks, optimizer); --total-steps may grow
    "exp_name",  # a copy of the script (another experiment) must not continue this one's run
    "env_id",
    "num_envs",
    "action_repeat",
    "max_episode_steps",
    "learning_starts",
    "replay_ratio",
    "per_rank_pretrain_steps",
    "per_rank_buffer_size",
    "image_size",
    "size",
    "per_rank_batch_size",  # with the sequence length, the train ratio that the ledger reports for the whole run
    "per_rank_sequence_length",
    "learning_rate",  # the optimizer's settings and the seed live in the checkpoint (optimizer and RNG states): a new
    "warmup",  # value would be ignored while the run's config showed it
    "agc",
    "adam_eps",
    "beta1",
    "beta2",
    "seed",
]

# evaluation stops an episode after this many policy steps when neither the env nor --max-episode-steps limits it (instead
# of hanging on an env that never ends): Atari's usual limit, 108,000 frames at frame skip 4
EVAL_STEP_CAP = 27_000


# ALGO LOGIC: environments
# --- SHARED: action repeat ---
class ActionRepeat(gym.Wrapper):
    """Repeat each action `repeat` env steps, summing rewards; stop early when the episode terminates or truncates.
    `info["env_steps"]` is the number of env steps this policy step took."""

    def __init__(self, env: gym.Env, repeat: int):
        super().__init__(env)
        self.repeat = repeat

    def step(self, action):
        total_reward = 0.0
        for env_steps in range(1, self.repeat + 1):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total_reward += float(reward)
            if terminated or truncated:
                break
        info["env_steps"] = env_steps
        return obs, total_reward, terminated, truncated, info


EPISODE_KEY = "steprl_episode"  # not gymnasium's "episode": an env that records its own statistics keeps them


def wrap_steps(env: gym.Env, action_repeat: int, max_episode_steps: int | None) -> gym.Env:
    """The env's own TimeLimit (env steps) inside the repeat; `max_episode_steps` (policy steps) and the episode
    statistics (return and length in policy steps) outside it."""
    env = ActionRepeat(env, action_repeat)
    if max_episode_steps is not None:
        env = gym.wrappers.TimeLimit(env, max_episode_steps)
    return gym.wrappers.RecordEpisodeStatistics(env, stats_key=EPISODE_KEY)


def env_steps_taken(infos: dict, done: np.ndarray) -> int:
    """Env steps of one vector step under same-step autoreset: ended envs report theirs in `final_info`."""
    steps = np.where(done, 0, infos["env_steps"]).sum() if "env_steps" in infos else 0  # absent when all envs ended
    if done.any():
        steps += infos["final_info"]["env_steps"][done].sum()
    return int(steps)


def finished_episodes(infos: dict, done: np.ndarray) -> list[tuple[float, int]]:
    """(return, length in policy steps) of each episode that ended in this vector step."""
    if not done.any():
        return []
    ep = infos["final_info"][EPISODE_KEY]
    return [(float(ep["r"][i]), int(ep["l"][i])) for i in np.flatnonzero(done)]


# --- END SHARED ---


def is_image(space: gym.Space) -> bool:
    return isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 and len(space.shape) in (2, 3)


class DictObs(gym.ObservationWrapper):
    """Every observation as a dict: images (uint8 H x W x C, nearest-neighbour resized to size x size) and flat float32
    vectors. A plain Box becomes {"image": ...} or {"vector": ...}; a Dict keeps its keys."""

    def __init__(self, env: gym.Env, size: int):
        super().__init__(env)
        space = env.observation_space
        self.inner = (
            dict(space.spaces) if isinstance(space, gym.spaces.Dict) else {"image" if is_image(space) else "vector": space}
        )
        spaces = {}
        for k, s in self.inner.items():
            if is_image(s):
                channels = s.shape[2] if len(s.shape) == 3 else 1
                spaces[k] = gym.spaces.Box(0, 255, (size, size, channels), np.uint8)
            else:
                spaces[k] = gym.spaces.Box(-np.inf, np.inf, (gym.spaces.flatdim(s),), np.float32)
        self.observation_space = gym.spaces.Dict(spaces)
        self.size = size

    def observation(self, obs):
        obs = obs if isinstance(obs, dict) else {next(iter(self.inner)): obs}
        out = {}
        for k, s in self.inner.items():
            if is_image(s):
                x = np.asarray(obs[k], dtype=np.uint8)  # its space's dtype: a list or float64 frame is cast, as vectors are
                x = x[..., None] if x.ndim == 2 else x
                rows = np.arange(self.size) * x.shape[0] // self.size
                cols = np.arange(self.size) * x.shape[1] // self.size
                out[k] = np.ascontiguousarray(x[rows][:, cols])
            else:
                with np.errstate(over="ignore"):  # a value beyond float32 becomes inf: the script's check names the env
                    out[k] = gym.spaces.flatten(s, obs[k]).astype(np.float32)
        return out


def make_env(env_id: str, action_repeat: int, max_episode_steps: int | None, image_size: int):
    def thunk():
        env = gym.make(env_id)
        return DictObs(wrap_steps(env, action_repeat, max_episode_steps), image_size)

    return thunk


# --- SHARED: ratio ---
def planned_gradient_steps(replay_ratio: Fraction, num_envs: int, pretrain: int, k: int) -> int:
    """Per-rank gradient steps after `k` training iterations: floor(ratio * m * k), or p + floor(ratio * m * (k-1))
    with pretrain p > 0. Exact integer arithmetic; never float accumulation."""
    if k <= 0:
        return 0
    if pretrain > 0:
        return pretrain + math.floor(replay_ratio * num_envs * (k - 1))
    return math.floor(replay_ratio * num_envs * k)


class Ratio:
    """The replay-ratio loop: how many gradient steps this rank does in its next training iteration."""

    def __init__(self, replay_ratio: Fraction, num_envs: int, pretrain: int):
        self.replay_ratio, self.num_envs, self.pretrain = Fraction(replay_ratio), num_envs, pretrain
        self.training_iterations, self.gradient_steps = 0, 0

    def __call__(self) -> int:
        self.training_iterations += 1
        target = planned_gradient_steps(self.replay_ratio, self.num_envs, self.pretrain, self.training_iterations)
        todo, self.gradient_steps = target - self.gradient_steps, target
        return todo

    def state_dict(self) -> dict:
        return {"training_iterations": self.training_iterations, "gradient_steps": self.gradient_steps}

    def load_state_dict(self, state: dict) -> None:
        self.training_iterations, self.gradient_steps = state["training_iterations"], state["gradient_steps"]


# --- END SHARED ---


# --- SHARED: step counter ---
def step_plan(
    total_steps: int, num_envs: int, world_size: int, learning_starts: int, replay_ratio, pretrain: int, action_repeat: int
) -> dict:
    """Every count of the run, known before it starts (vocabulary: each script's page, "How steps are counted")."""
    P = world_size * num_envs
    N = total_steps // P
    R = min(N, -(-learning_starts // P))
    per_rank = planned_gradient_steps(Fraction(replay_ratio), num_envs, pretrain, N - R)
    return {
        "world_size": world_size,
        "num_envs": num_envs,
        "policy_steps_per_iteration": P,
        "iterations": N,
        "random_iterations": R,
        "training_iterations": N - R,
        "policy_steps": N * P,
        "env_steps": N * P * action_repeat,
        "per_rank_gradient_steps": per_rank,
        "gradient_steps": per_rank * world_size,
    }


def format_plan(plan: dict, replay_ratio, pretrain: int, action_repeat: int) -> str:
    p = plan
    return (
        f"step plan: {p['world_size']} process(es) x {p['num_envs']} env(s) = {p['policy_steps_per_iteration']} policy"
        f" steps per iteration\n  {p['iterations']} iterations per rank: {p['random_iterations']} random,"
        f" {p['training_iterations']} training\n  {p['policy_steps']} global policy steps,"
        f" {p['env_steps']} nominal env steps (action repeat {action_repeat})\n"
        f"  {p['per_rank_gradient_steps']} gradient steps per rank, {p['gradient_steps']} global"
        f" (replay ratio {replay_ratio}, pretrain {pretrain})"
    )


def ledger_errors(plan: dict, actual: dict) -> list[str]:
    """Where the counted steps differ from the plan (each is a bug)."""
    errors = [
        f"{k}: planned {plan[k]}, counted {actual[k]}" for k in ("policy_steps", "gradient_steps") if plan[k] != actual[k]
    ]
    errors += [
        f"rank {r} gradient steps: planned {plan['per_rank_gradient_steps']}, counted {g}"
        for r, g in enumerate(actual["per_rank_gradient_steps"])
        if g != plan["per_rank_gradient_steps"]
    ]
    if actual["env_steps"] > plan["env_steps"]:
        errors.append(f"env_steps: counted {actual['env_steps']} > nominal {plan['env_steps']}")
    return errors


# --- END SHARED ---


# ALGO LOGIC: replay buffer
class SequenceReplay:
    """One rank's replay: one FIFO sequence of stored steps per env. A stored step is an observation with the action
    executed *before* it (between obs t-1 and obs t; zeros at an episode start), the reward received on arriving at it,
    and the flags is_first / is_last / is_terminal. Windows of T consecutive steps are sampled uniformly over all envs
    and may cross episode boundaries (`is_first` resets the model state there)."""

    def __init__(self, capacity: int, num_envs: int, obs_space: gym.spaces.Dict, act_dim: int):
        self.capacity, self.num_envs = capacity, num_envs
        # empty, not zeros: the OS commits the memory as the buffer fills, and only written steps are ever read
        self.data = {
            k: torch.empty((num_envs, capacity, *shape), dtype=dtype) for k, (shape, dtype) in self.fields(obs_space, act_dim)
        }
        self.pos, self.size, self.added = [0] * num_envs, [0] * num_envs, 0

    @staticmethod
    def fields(obs_space: gym.spaces.Dict, act_dim: int) -> list[tuple[str, tuple[tuple, torch.dtype]]]:
        """(name, (shape, dtype)) of everything stored per step."""
        shapes = {k: (s.shape, torch.uint8 if s.dtype == np.uint8 else torch.float32) for k, s in obs_space.spaces.items()}
        shapes |= {"action": ((act_dim,), torch.float32), "reward": ((), torch.float32)}
        shapes |= {k: ((), torch.bool) for k in ("is_first", "is_last", "is_terminal")}
        return list(shapes.items())

    def add(self, i: int, step: dict) -> None:
        for k, v in self.data.items():
            v[i, self.pos[i]] = torch.as_tensor(step[k]) if k in step else 0
        self.pos[i] = (self.pos[i] + 1) % self.capacity
        self.size[i] = min(self.size[i] + 1, self.capacity)
        self.added += 1

    def mark_last(self) -> None:
        """End every env's open episode (used on resume, where the simulator restarts from a fresh reset)."""
        for i in range(self.num_envs):
            if self.size[i]:
                self.data["is_last"][i, (self.pos[i] - 1) % self.capacity] = True

    def sample(self, n: int, batch_size: int, length: int) -> list[dict[str, torch.Tensor]]:
        """`n` batches of `batch_size` windows of `length` steps, [B, T, ...], in one call."""
        starts = torch.tensor([max(0, s - length + 1) for s in self.size])
        u = torch.randint(0, int(starts.sum()), (n * batch_size,))
        env = torch.searchsorted(starts.cumsum(0), u, right=True)
        offset = u - (starts.cumsum(0) - starts)[env]
        oldest = (torch.tensor(self.pos) - torch.tensor(self.size)) % self.capacity
        idx = (oldest[env, None] + offset[:, None] + torch.arange(length)) % self.capacity
        flat = {k: v[env[:, None], idx] for k, v in self.data.items()}
        flat["is_first"][:, 0] = True  # CRUCIAL: every window starts from the zero state (no replay context)
        return [{k: v[j * batch_size : (j + 1) * batch_size] for k, v in flat.items()} for j in range(n)]

    def state_dict(self) -> dict:
        # per env, a tensor over just its filled steps that shares their memory: torch.save of a slice would write the whole
        # storage, and a copy would hold the replay twice in RAM during the save
        return {"pos": list(self.pos), "size": list(self.size), "added": self.added} | {
            k: [torch.from_numpy(v[i, : self.size[i]].numpy()) for i in range(self.num_envs)] for k, v in self.data.items()
        }

    def load_state_dict(self, state: dict) -> None:
        if max(state["size"]) > self.capacity:
            fail("--per-rank-buffer-size", f"the checkpoint holds {max(state['size'])} steps per env; use a larger buffer")
        self.pos, self.size, self.added = list(state["pos"]), list(state["size"]), state["added"]
        for k, v in self.data.items():
            for i, steps in enumerate(state[k]):  # one tensor per env (older checkpoints: one [num_envs, steps, ...] tensor)
                v[i, : len(steps)] = steps


# ALGO LOGIC: small free functions (danijar/dreamerv3 embodied/jax/nets.py and outs.py)
def symlog(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.expm1(x.abs())


def twohot_bins(n: int = BINS) -> torch.Tensor:
    """Bins stored in raw space: symexp of n points evenly spaced in [-20, 20], exactly symmetric around 0."""
    half = symexp(torch.linspace(-20.0, 0.0, (n - 1) // 2 + 1))
    return torch.cat([half, -half[:-1].flip(0)])


def twohot(y: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Weights on the two raw-space bins around y (linear interpolation), [..., n]; clipped at the outer bins."""
    n = len(bins)
    count = torch.bucketize(y.contiguous(), bins, right=True)  # number of bins <= y
    below, above = (count - 1).clamp(0, n - 1), count.clamp(0, n - 1)
    equal = below == above
    to_below = torch.where(equal, 1.0, (bins[below] - y).abs())
    to_above = torch.where(equal, 1.0, (bins[above] - y).abs())
    total = to_below + to_above
    weights = torch.zeros(*y.shape, n, dtype=y.dtype, device=y.device)
    weights.scatter_(-1, below[..., None], (to_above / total)[..., None])
    return weights.scatter_add_(-1, above[..., None], (to_below / total)[..., None])


def twohot_loss(logits: torch.Tensor, y: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    return -(twohot(y.detach(), bins) * F.log_softmax(logits, -1)).sum(-1)


def twohot_mean(logits: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Expected value with a symmetric sum (middle bin, then the mirrored halves pairwise), so uniform logits give
    exactly 0.0 instead of a float rounding residue."""
    probs, m = logits.softmax(-1), (len(bins) - 1) // 2
    lower, upper = probs[..., :m] * bins[:m], probs[..., m + 1 :] * bins[m + 1 :]
    return probs[..., m] * bins[m] + (lower.flip(-1) + upper).sum(-1)


def unimix_probs(logits: torch.Tensor, unimix: float) -> torch.Tensor:
    return (1 - unimix) * logits.softmax(-1) + unimix / logits.shape[-1]


def sample_index(probs: torch.Tensor) -> torch.Tensor:
    """Categorical samples as argmax(p / E) with E ~ Exponential(1), i.e. Gumbel-max (much faster than
    torch.multinomial for many small categoricals on CPU)."""
    noise = torch.empty(probs.shape, device=probs.device).exponential_()
    return (probs.detach() / noise).argmax(-1)


def sample_onehot(probs: torch.Tensor) -> torch.Tensor:
    """A one-hot sample with straight-through gradients to the probabilities."""
    return F.one_hot(sample_index(probs), probs.shape[-1]).to(probs.dtype) + probs - probs.detach()


def categorical_kl(p_logprobs: torch.Tensor, q_logprobs: torch.Tensor) -> torch.Tensor:
    """KL(p || q) of [..., S, K] categoricals, summed over the S latents."""
    return (p_logprobs.exp() * (p_logprobs - q_logprobs)).sum((-2, -1))


def kl_losses(post: torch.Tensor, prior: torch.Tensor, free_nats: float) -> dict[str, torch.Tensor]:
    """Dynamics loss (trains the prior towards the frozen posterior) and representation loss (the posterior towards the
    frozen prior), each max(free_nats, KL summed over the latents): below free_nats the gradient is exactly zero."""
    dyn_kl, rep_kl = categorical_kl(post.detach(), prior), categorical_kl(post, prior.detach())
    return {"dyn": dyn_kl.clamp(min=free_nats), "rep": rep_kl.clamp(min=free_nats), "dyn_kl": dyn_kl, "rep_kl": rep_kl}


def recon_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error summed over an observation's dims: images as uint8 / 255 against the sigmoid output, vectors in
    symlog space. [B, T, ...] -> [B, T]."""
    target = target.float() / 255.0 if target.dtype == torch.uint8 else symlog(target)
    return (pred - target).pow(2).flatten(2).sum(-1)


def continue_target(is_terminal: torch.Tensor, horizon: float) -> torch.Tensor:
    """The continue head's target: 0 at a real termination, else the discount 1 - 1/horizon (time-limit ends are not
    terminations)."""
    return (1 - is_terminal.float()) * (1 - 1 / horizon)


def loss_scales(args, obs_keys: list[str]) -> dict[str, float]:
    """Paper Eq. (5) and code `loss_scales`: prediction terms 1, dynamics 1, representation 0.1, replay value 0.3."""
    scales = {"dyn": args.dyn_scale, "rep": args.rep_scale, "rew": 1.0, "con": 1.0, "policy": 1.0, "value": 1.0}
    return scales | {"repval": args.repval_scale} | {f"rec_{k}": 1.0 for k in obs_keys}  # one decoder term per key


def total_loss(losses: dict[str, torch.Tensor], scales: dict[str, float]) -> torch.Tensor:
    """The one loss all modules minimise: each [B, T] term averaged, scaled and summed (a missing scale is an error)."""
    return sum(v.mean() * scales[k] for k, v in losses.items())


def lambda_return(rewards, continues, values, gamma, lam) -> torch.Tensor:
    """R_t = r_t + gamma c_t ((1 - lam_t) v_{t+1} + lam_t R_{t+1}), R_H = v_H. rewards, continues: [B, H] (step t's
    reward and continue flag); values: [B, H + 1]; lam: a float or [B, H]. Returns [B, H]."""
    lam = torch.as_tensor(lam, dtype=values.dtype, device=values.device).expand_as(rewards)
    last, out = values[:, -1], []
    for t in reversed(range(rewards.shape[1])):
        last = rewards[:, t] + gamma * continues[:, t] * ((1 - lam[:, t]) * values[:, t + 1] + lam[:, t] * last)
        out.append(last)
    return torch.stack(out[::-1], 1)


def actor_critic_losses(pi, action, value_logits, slow_value, reward, con, bins, retnorm, args, world_size: int = 1):
    """Imagined trajectories [N, H + 1] (state 0 = a posterior state) -> policy and value losses [N], averaged over
    the H steps. REINFORCE with normalised advantages and an entropy bonus; a two-hot critic on lambda-returns plus the
    slow-critic regulariser; both weighted by the cumulative continue probability. `pi` is the policy on states
    0..H-1 and `action` [N, H] the actions taken there (code: agent.py `imag_loss`)."""
    value = twohot_mean(value_logits, bins).detach()
    weight = torch.cumprod(con, 1)
    ret = lambda_return(reward[:, 1:], con[:, 1:], value, 1.0, args.lam)  # [N, H]
    retnorm.update(ret, world_size)
    adv = (ret - value[:, :-1]) / retnorm.scale()
    entropy = pi.entropy()
    policy_loss = weight[:, :-1] * -(pi.log_prob(action) * adv.detach() + args.actent * entropy)
    value_loss = twohot_loss(value_logits[:, :-1], ret, bins) + twohot_loss(value_logits[:, :-1], slow_value[:, :-1], bins)
    losses = {"policy": policy_loss.mean(1), "value": (weight[:, :-1] * value_loss).mean(1)}
    return losses, {"ret": ret, "value": value, "adv": adv, "entropy": entropy, "weight": weight}


@torch.no_grad()
def ema_(slow: nn.Module, fast: nn.Module, rate: float) -> None:
    """slow <- (1 - rate) slow + rate fast, parameter by parameter."""
    torch._foreach_lerp_(list(slow.parameters()), list(fast.parameters()), rate)


class ReturnNorm(nn.Module):
    """EMA (no debias) of the 5th and 95th return percentiles; scale = max(1, P95 - P5). Percentiles are averaged
    over ranks so the state stays identical everywhere."""

    def __init__(self, rate: float = 0.01, limit: float = 1.0):
        super().__init__()
        self.rate, self.limit = rate, limit
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))

    def update(self, x: torch.Tensor, world_size: int = 1) -> None:
        q = torch.quantile(x.detach().flatten().float(), torch.tensor([0.05, 0.95], device=x.device))
        if world_size > 1:
            dist.all_reduce(q)
            q /= world_size
        self.lo.lerp_(q[0], self.rate)
        self.hi.lerp_(q[1], self.rate)

    def scale(self) -> torch.Tensor:
        return torch.clamp(self.hi - self.lo, min=self.limit)


# ALGO LOGIC: networks (RMSNorm + SiLU everywhere; truncated-normal fan-in init; zero biases)
def init_(weight: torch.Tensor, fan_in: int, outscale: float = 1.0) -> torch.Tensor:
    std = outscale * math.sqrt(1.0 / fan_in) / 0.87962566103423978  # stddev of a normal truncated at 2 sigma
    with torch.no_grad():
        return nn.init.trunc_normal_(weight, 0.0, std, -2 * std, 2 * std) if outscale else weight.zero_()


def linear(fan_in: int, fan_out: int, outscale: float = 1.0) -> nn.Linear:
    layer = nn.Linear(fan_in, fan_out)
    init_(layer.weight, fan_in, outscale)
    nn.init.zeros_(layer.bias)
    return layer


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-4):
        super().__init__()
        self.eps, self.scale = eps, nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.scale


def mlp(fan_in: int, units: int, layers: int) -> nn.Sequential:
    return nn.Sequential(
        *[m for i in range(layers) for m in (linear(fan_in if i == 0 else units, units), RMSNorm(units), nn.SiLU())]
    )


class BlockLinear(nn.Module):
    """g independent linear maps on g groups: [N, g, fan_in/g] -> [N, g, fan_out/g]."""

    def __init__(self, fan_in: int, fan_out: int, groups: int):
        super().__init__()
        # the reference's fan-in counts all groups (its fans of a [g, i, o] kernel are g * i and g * o)
        self.weight = nn.Parameter(init_(torch.empty(groups, fan_in // groups, fan_out // groups), fan_in))
        self.bias = nn.Parameter(torch.zeros(groups, fan_out // groups))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("ngi,gio->ngo", x, self.weight) + self.bias


class ConvStage(nn.Module):
    """k5 conv, then (encoder) 2x2 max-pool or (decoder) 2x nearest upsampling before it, channel RMSNorm, SiLU."""

    def __init__(self, cin: int, cout: int, up: bool):
        super().__init__()
        self.conv, self.up, self.norm = nn.Conv2d(cin, cout, 5, padding=2), up, RMSNorm(cout)
        init_(self.conv.weight, cin * 25)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest") if self.up else x)
        x = x if self.up else F.max_pool2d(x, 2)
        return F.silu(self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))


def image_stages(image_size: int, depth: int) -> list[int]:
    """CNN channels per stage, depth x (2, 3, 4, 4, 4, ...), one stage per halving down to 4x4."""
    return [depth * min(m, 4) for m in range(2, int(math.log2(image_size)))]


class Encoder(nn.Module):
    """symlog'd vectors -> 3-layer MLP; images / 255 - 0.5 -> CNN down to 4x4. Output: the concatenated tokens."""

    def __init__(self, obs_space: gym.spaces.Dict, units: int, depth: int, layers: int = 3):
        super().__init__()
        self.vec_keys = [k for k, s in obs_space.spaces.items() if s.dtype != np.uint8]
        self.img_keys = [k for k, s in obs_space.spaces.items() if s.dtype == np.uint8]
        self.out_dim = 0
        if self.vec_keys:
            self.mlp = mlp(sum(obs_space[k].shape[0] for k in self.vec_keys), units, layers)
            self.out_dim += units
        if self.img_keys:
            size, channels = obs_space[self.img_keys[0]].shape[0], sum(obs_space[k].shape[2] for k in self.img_keys)
            chans = image_stages(size, depth)
            self.cnn = nn.Sequential(*[ConvStage(c0, c1, False) for c0, c1 in zip([channels] + chans[:-1], chans)])
            self.out_dim += chans[-1] * 16

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        tokens = []
        if self.vec_keys:
            tokens.append(self.mlp(symlog(torch.cat([obs[k] for k in self.vec_keys], -1))))
        if self.img_keys:
            x = torch.cat([obs[k] for k in self.img_keys], -1)
            lead = x.shape[:-3]
            x = (x.reshape(-1, *x.shape[-3:]).permute(0, 3, 1, 2).float() / 255.0) - 0.5
            tokens.append(self.cnn(x).reshape(*lead, -1))
        return torch.cat(tokens, -1)


class Decoder(nn.Module):
    """feat -> 3-layer MLP -> symlog vectors; feat -> linear to 4x4 -> upsampling CNN -> sigmoid images."""

    def __init__(self, obs_space: gym.spaces.Dict, feat_dim: int, units: int, depth: int, layers: int = 3):
        super().__init__()
        self.vec_keys = [k for k, s in obs_space.spaces.items() if s.dtype != np.uint8]
        self.img_keys = [k for k, s in obs_space.spaces.items() if s.dtype == np.uint8]
        if self.vec_keys:
            self.vec_dims = [obs_space[k].shape[0] for k in self.vec_keys]
            self.mlp = nn.Sequential(mlp(feat_dim, units, layers), linear(units, sum(self.vec_dims)))
        if self.img_keys:
            self.img_channels = [obs_space[k].shape[2] for k in self.img_keys]
            chans = image_stages(obs_space[self.img_keys[0]].shape[0], depth)
            self.space = linear(feat_dim, 16 * chans[-1])  # -> 4 x 4 x C, normalised over the channels of each position
            self.space_norm = RMSNorm(chans[-1])
            self.cnn = nn.Sequential(*[ConvStage(c0, c1, True) for c0, c1 in zip(chans[::-1][:-1], chans[::-1][1:])])
            self.out = nn.Conv2d(chans[0], sum(self.img_channels), 5, padding=2)
            init_(self.out.weight, chans[0] * 25)
            nn.init.zeros_(self.out.bias)
            self.last_channels = chans[-1]

    def forward(self, feat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predictions: vectors in symlog space, images in [0, 1] as H x W x C."""
        out = {}
        if self.vec_keys:
            out |= dict(zip(self.vec_keys, self.mlp(feat).split(self.vec_dims, -1)))
        if self.img_keys:
            lead = feat.shape[:-1]
            x = self.space(feat.reshape(-1, feat.shape[-1])).reshape(-1, 4, 4, self.last_channels)
            x = F.silu(self.space_norm(x)).permute(0, 3, 1, 2)
            x = torch.sigmoid(self.out(F.interpolate(self.cnn(x), scale_factor=2.0, mode="nearest")))
            x = x.permute(0, 2, 3, 1).reshape(*lead, *x.shape[-2:], x.shape[1])
            out |= dict(zip(self.img_keys, x.split(self.img_channels, -1)))
        return out


class RSSM(nn.Module):
    """Recurrent state-space model: deterministic state h (block GRU with 8 blocks and separate input projections of
    h, z and a), stochastic state z (STOCH categoricals of `classes` classes, 1% unimix, straight-through samples)."""

    def __init__(self, act_dim: int, embed_dim: int, deter: int, hidden: int, classes: int, unimix: float):
        super().__init__()
        self.deter, self.classes, self.unimix, g = deter, classes, unimix, BLOCKS
        self.dynin = nn.ModuleList(
            [nn.Sequential(linear(d, hidden), RMSNorm(hidden), nn.SiLU()) for d in (deter, STOCH * classes, act_dim)]
        )
        self.dynhid = BlockLinear(deter + 3 * hidden * g, deter, g)
        self.dynhid_norm = RMSNorm(deter)
        self.gru = BlockLinear(deter, 3 * deter, g)
        self.prior_mlp = nn.Sequential(
            *[m for i in range(2) for m in (linear(deter if i == 0 else hidden, hidden), RMSNorm(hidden), nn.SiLU())]
        )
        self.prior_logits = linear(hidden, STOCH * classes)
        self.post_mlp = nn.Sequential(linear(deter + embed_dim, hidden), RMSNorm(hidden), nn.SiLU())
        self.post_logits = linear(hidden, STOCH * classes)

    def initial(self, batch: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(batch, self.deter, device=device), torch.zeros(batch, STOCH, self.classes, device=device)

    def core(self, deter: torch.Tensor, stoch: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        N, g = deter.shape[0], BLOCKS
        action = action / action.abs().clamp(min=1).detach()
        x = torch.cat([f(v) for f, v in zip(self.dynin, (deter, stoch.reshape(N, -1), action))], -1)
        x = torch.cat([deter.reshape(N, g, -1), x[:, None].expand(N, g, x.shape[-1])], -1)
        x = F.silu(self.dynhid_norm(self.dynhid(x).reshape(N, -1)))
        reset, cand, update = self.gru(x.reshape(N, g, -1)).chunk(3, -1)
        reset, cand, update = (v.reshape(N, -1) for v in (reset, cand, update))
        cand = torch.tanh(torch.sigmoid(reset) * cand)
        update = torch.sigmoid(update - 1)
        return update * cand + (1 - update) * deter

    def logprobs(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.log(unimix_probs(logits.reshape(*logits.shape[:-1], STOCH, self.classes), self.unimix))

    def prior(self, deter: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of the prior p(z | h), [..., STOCH, classes]."""
        return self.logprobs(self.prior_logits(self.prior_mlp(deter)))

    def obs_step(self, deter, stoch, prev_action, embed, is_first):
        """One filtering step. `is_first` zeroes the carried state and the previous action first."""
        keep = (~is_first).float()[:, None]
        deter = self.core(deter * keep, stoch * keep[..., None], prev_action * keep)
        post = self.logprobs(self.post_logits(self.post_mlp(torch.cat([deter, embed], -1))))
        return deter, sample_onehot(post.exp()), post

    def img_step(self, deter, stoch, action):
        deter = self.core(deter, stoch, action)
        return deter, sample_onehot(self.prior(deter).exp())

    def observe(self, embed, prev_action, is_first):
        """Posterior over a [B, T] batch from the zero state. Returns deter [B, T, D], stoch and post/prior
        log-probabilities [B, T, STOCH, classes]."""
        B, T = is_first.shape
        deter, stoch = self.initial(B, embed.device)
        deters, stochs, posts = [], [], []
        for t in range(T):
            deter, stoch, post = self.obs_step(deter, stoch, prev_action[:, t], embed[:, t], is_first[:, t])
            deters.append(deter), stochs.append(stoch), posts.append(post)
        deter, stoch, post = torch.stack(deters, 1), torch.stack(stochs, 1), torch.stack(posts, 1)
        return deter, stoch, post, self.prior(deter)


def feat_of(deter: torch.Tensor, stoch: torch.Tensor) -> torch.Tensor:
    return torch.cat([deter, stoch.flatten(-2)], -1)


class Actor(nn.Module):
    """3-layer MLP; discrete: one-hot categorical with 1% unimix; continuous: normal with mean tanh(.) and std in
    [0.1, 1.0] (bounded normal). Output layers scaled by 0.01 at init. Actions live in [-1, 1] (or one-hot)."""

    def __init__(self, feat_dim: int, units: int, act_dim: int, discrete: bool, unimix: float):
        super().__init__()
        self.discrete, self.unimix = discrete, unimix
        self.mlp = mlp(feat_dim, units, 3)
        self.head = linear(units, act_dim if discrete else 2 * act_dim, outscale=0.01)

    def dist(self, feat: torch.Tensor):
        x = self.head(self.mlp(feat))
        if self.discrete:
            return torch.distributions.OneHotCategorical(probs=unimix_probs(x, self.unimix), validate_args=False)
        mean, std = x.chunk(2, -1)
        std = 0.9 * torch.sigmoid(std + 2.0) + 0.1
        return torch.distributions.Independent(torch.distributions.Normal(torch.tanh(mean), std, validate_args=False), 1)

    def sample(self, feat: torch.Tensor) -> torch.Tensor:
        dist = self.dist(feat)
        if not self.discrete:  # dist.sample()'s draw, but a diverged actor's NaN std gives NaN, not torch.normal's error
            mean, std = dist.base_dist.loc, dist.base_dist.scale
            with torch.no_grad():
                return torch.normal(mean, std.nan_to_num(1.0)).where(std.isfinite(), torch.nan)
        onehot = F.one_hot(sample_index(dist.probs), dist.probs.shape[-1]).float()
        return onehot.where(dist.probs.isfinite().all(-1, keepdim=True), torch.nan)  # a diverged actor's NaN shows


class Head(nn.Module):
    """MLP + a twohot (BINS logits, zero-initialised output: reward, critic) or binary (continue) output."""

    def __init__(self, feat_dim: int, units: int, layers: int, out: int, outscale: float):
        super().__init__()
        self.net = nn.Sequential(mlp(feat_dim, units, layers), linear(units, out, outscale))

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.net(feat)


class LaProp(torch.optim.Optimizer):
    """Adaptive gradient clipping (per parameter tensor), then LaProp: normalise by the debiased RMS of past gradients,
    then momentum (debiased). Linear warm-up of the learning rate from 0. (danijar/dreamerv3 embodied/jax/opt.py)"""

    def __init__(self, params, lr, agc, eps, beta1, beta2, warmup):
        super().__init__(params, dict(lr=lr, agc=agc, eps=eps, beta1=beta1, beta2=beta2, warmup=warmup))

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"], state["nu"], state["mu"] = torch.zeros(()), torch.zeros_like(p), torch.zeros_like(p)
                lr = group["lr"] * min(1.0, state["step"].item() / group["warmup"]) if group["warmup"] else group["lr"]
                state["step"] += 1
                t = state["step"].item()
                g = p.grad
                upper = group["agc"] * p.norm().clamp(min=1e-3)
                g = g / torch.clamp(g.norm() / upper, min=1.0)
                state["nu"].mul_(group["beta2"]).addcmul_(g, g, value=1 - group["beta2"])
                u = g / ((state["nu"] / (1 - group["beta2"] ** t)).sqrt() + group["eps"])
                state["mu"].mul_(group["beta1"]).add_(u, alpha=1 - group["beta1"])
                p.add_(state["mu"] / (1 - group["beta1"] ** t), alpha=-lr)


class Agent(nn.Module):
    """World model (encoder, RSSM, decoder, reward and continue heads), actor and critic, as one module so that one
    optimiser updates them all; the slow critic is a separate EMA copy."""

    def __init__(self, obs_space: gym.spaces.Dict, act_dim: int, discrete: bool, size: str, unimix: float):
        super().__init__()
        c = SIZES[size]
        self.encoder = Encoder(obs_space, c["units"], c["depth"])
        self.rssm = RSSM(act_dim, self.encoder.out_dim, c["deter"], c["hidden"], c["classes"], unimix)
        feat_dim = c["deter"] + STOCH * c["classes"]
        self.decoder = Decoder(obs_space, feat_dim, c["units"], c["depth"])
        self.reward = Head(feat_dim, c["units"], 1, BINS, outscale=0.0)
        self.cont = Head(feat_dim, c["units"], 1, 1, outscale=1.0)
        self.actor = Actor(feat_dim, c["units"], act_dim, discrete, unimix)
        self.critic = Head(feat_dim, c["units"], 3, BINS, outscale=0.0)
        self.register_buffer("bins", twohot_bins())


def parameter_counts(obs_space: gym.spaces.Dict, act_dim: int, discrete: bool, size: str) -> dict[str, int]:
    """Parameters per component, counted on the meta device (nothing is allocated)."""
    with torch.device("meta"):
        agent = Agent(obs_space, act_dim, discrete, size, 0.01)
    counts = {
        k: sum(p.numel() for p in getattr(agent, k).parameters())
        for k in ("encoder", "rssm", "decoder", "reward", "cont", "actor", "critic")
    }
    return counts | {"total": sum(counts.values())}


def validate(args: Args) -> None:
    """Bad input: exit 2 with the flag and the fix, before any env or process group starts (same on every rank)."""
    if not args.exp_name.strip():
        fail("--exp-name", "got an empty name; give one (it is part of the run directory's name), or omit the flag")
    for flag, value, low in [
        ("--num-envs", args.num_envs, 1),
        ("--seed", args.seed, 0),
        ("--action-repeat", args.action_repeat, 1),
        ("--per-rank-batch-size", args.per_rank_batch_size, 1),
        ("--per-rank-sequence-length", args.per_rank_sequence_length, 2),
        ("--per-rank-buffer-size", args.per_rank_buffer_size, 1),
        ("--imag-horizon", args.imag_horizon, 1),
        ("--keep-checkpoints", args.keep_checkpoints, 1),
        ("--torch-threads", args.torch_threads, 1),
        ("--log-every", args.log_every, 1),
        ("--video-every", args.video_every, 1),
        ("--total-steps", args.total_steps, 1),
        ("--learning-starts", args.learning_starts, 0),
        ("--per-rank-pretrain-steps", args.per_rank_pretrain_steps, 0),
        ("--checkpoint-every", args.checkpoint_every, 0),
        ("--eval-episodes", args.eval_episodes, 0),
        ("--warmup", args.warmup, 0),
    ]:
        if value < low:
            fail(flag, f"got {value}; it must be at least {low}")
    if args.seed >= 2**31:
        fail("--seed", f"got {args.seed}; it must be below 2**31 (NumPy's seeds are 32-bit, and each rank adds its rank)")
    if args.max_episode_steps is not None and args.max_episode_steps < 1:
        fail("--max-episode-steps", f"got {args.max_episode_steps}; give a positive number of policy steps, or omit it")
    if not 0 <= args.replay_ratio <= 10_000:  # gradient steps per policy step
        fail("--replay-ratio", f"got {args.replay_ratio}; use 0 (never train) or a positive ratio up to 10000, such as 1/8")
    if args.image_size < 8 or args.image_size & (args.image_size - 1):
        fail("--image-size", f"got {args.image_size}; use a power of two of at least 8, such as 64")
    for flag, value in [("--lam", args.lam), ("--slow-critic-rate", args.slow_critic_rate)]:
        if not 0 <= value <= 1:
            fail(flag, f"got {value}; it must be in [0, 1]")
    for flag, value in [("--beta1", args.beta1), ("--beta2", args.beta2), ("--unimix", args.unimix)]:
        if not 0 <= value < 1:  # the optimizer's bias correction divides by 1 - beta**t
            fail(flag, f"got {value}; it must be in [0, 1)")
    if not args.horizon > 1:
        fail("--horizon", f"got {args.horizon}; it must be greater than 1 (333 in the paper)")
    for flag, value in [("--learning-rate", args.learning_rate), ("--adam-eps", args.adam_eps)]:
        if not 0 < value < math.inf:
            fail(flag, f"got {value}; it must be positive and finite")
    nonnegative = [("--agc", args.agc), ("--actent", args.actent), ("--free-nats", args.free_nats)]
    for flag, value in nonnegative + [(f"--{k}-scale", getattr(args, f"{k}_scale")) for k in ("dyn", "rep", "repval")]:
        if not 0 <= value < math.inf:
            fail(flag, f"got {value}; it must be finite and at least 0")
    P, T = args.world_size * args.num_envs, args.per_rank_sequence_length
    if args.total_steps < P:
        fail(
            "--total-steps",
            f"{args.total_steps} is less than one iteration of {P} policy steps "
            f"({args.world_size} process(es) x {args.num_envs} env(s)); use at least {P}",
        )
    if (args.replay_ratio > 0 or args.per_rank_pretrain_steps > 0) and args.learning_starts < T * P:
        fail(
            "--learning-starts",
            f"{args.learning_starts} does not cover a sequence of {T} steps per env ({P} envs in all); "
            f"use at least {T * P} (sequence length x world size x num envs)",
        )
    if args.per_rank_buffer_size // args.num_envs < T:
        fail(
            "--per-rank-buffer-size",
            f"{args.per_rank_buffer_size} holds fewer than {T} steps per env; use at least {T * args.num_envs}",
        )
    if args.checkpoint_every and not args.checkpoint_buffer:  # a torchrun restart (--resume auto) would exit 2 too
        warn("--no-checkpoint-buffer: checkpoints will hold the weights only, and training cannot resume from them (DreamerV3 "
             "cannot train on an empty replay); only the evaluation of a finished run can")  # fmt: skip
        NO_RESUME.append("they hold no replay buffer: --no-checkpoint-buffer")
    check_run_dir(args.run_name, args.resume)
    if args.capture_video:
        try:
            import moviepy  # noqa: F401
        except ImportError:
            fail("--capture-video", "videos need moviepy: `pip install moviepy`")
    check_tracking(args.track)
    obs_space, act_space = check_env_id(args.env_id)
    if isinstance(act_space, gym.spaces.Box):
        if len(act_space.shape) != 1:
            fail("--env-id", f"Box actions must be a vector; {args.env_id} has {act_space}. Wrap the env to flatten them")
        if not (np.all(np.isfinite(act_space.low)) and np.all(np.isfinite(act_space.high))):
            fail(
                "--env-id",
                f"Box actions need finite bounds; {args.env_id} has {act_space}. "
                "Wrap it in a gymnasium.ActionWrapper whose action_space is a bounded Box (mapped into the env's actions)",
            )
    elif not isinstance(act_space, gym.spaces.Discrete):
        fail("--env-id", f"DreamerV3 here takes Discrete or Box actions; {args.env_id} has {act_space}")
    spaces = obs_space.spaces if isinstance(obs_space, gym.spaces.Dict) else {"obs": obs_space}
    for k, s in spaces.items():
        if k in ("action", "reward", "is_first", "is_last", "is_terminal"):  # the replay stores these beside the keys
            fail("--env-id", f"observation key {k!r} is a name the replay uses for its own field; rename it in a wrapper")
        if not isinstance(s, (gym.spaces.Box, gym.spaces.Discrete, gym.spaces.MultiBinary, gym.spaces.MultiDiscrete)):
            fail("--env-id", f"observation {k!r} is {s}; use Box images (H, W, C uint8), Box vectors, or a Dict of them")
        if math.prod(s.shape) == 0:  # the encoder would have no input
            fail("--env-id", f"observation {k!r} {s.shape} has no elements; drop it in a wrapper")
        if is_image(s) and len(s.shape) == 3 and s.shape[2] > 16:
            fail("--env-id", f"observation {k!r} {s.shape} looks channel-first; images must be (H, W, C) uint8")
    if args.capture_video and not any(is_image(s) for s in spaces.values()):
        fail("--capture-video", f"records real vs. imagined frames of image observations; {args.env_id} has none")
    env = make_env(args.env_id, args.action_repeat, args.max_episode_steps, args.image_size)()  # stored shapes
    act_dim = act_space.n if isinstance(act_space, gym.spaces.Discrete) else act_space.shape[0]
    stored = SequenceReplay.fields(env.observation_space, act_dim)
    if args.eval_episodes and args.max_episode_steps is None and getattr(env.spec, "max_episode_steps", None) is None:
        warn(f"{args.env_id} has no time limit: each of the {args.eval_episodes} evaluation episodes at the end runs until "
             f"the env ends it, for at most {EVAL_STEP_CAP} policy steps; bound them with --max-episode-steps")  # fmt: skip
    env.close()
    check_replay_fits(args.per_rank_buffer_size, sum(math.prod(shape) * dtype.itemsize for _, (shape, dtype) in stored))


if __name__ == "__main__":
    interrupt_cleanly()  # first: Ctrl-C while the env is checked stops with one line too
    with contextlib.nullcontext() if is_main_process() else contextlib.redirect_stderr(io.StringIO()):
        args = tyro.cli(Args)  # under torchrun rank 0 alone prints a parse error
    args.world_size = int(os.environ.get("WORLD_SIZE", "1"))  # derived, not a flag
    validate(args)
    print_every = env_seconds("STEPRL_PRINT_EVERY", 30)  # seconds between progress lines when stderr is not a terminal

    # TRY NOT TO MODIFY: processes, run directory, plan, tracking, seeding
    rank, local_rank, world_size, device = setup_distributed(args.cuda, args.torch_threads)
    m, P, B, T, H = (
        args.num_envs,
        world_size * args.num_envs,
        args.per_rank_batch_size,
        args.per_rank_sequence_length,
        args.imag_horizon,
    )
    plan = step_plan(
        args.total_steps,
        m,
        world_size,
        args.learning_starts,
        args.replay_ratio,
        args.per_rank_pretrain_steps,
        args.action_repeat,
    )
    N, R = plan["iterations"], plan["random_iterations"]
    run_name = resolve_run_name(args.run_name, f"{args.env_id}__{args.exp_name}__{args.seed}", "runs", world_size, args.resume)
    run_dir, ckpt_dir = os.path.join("runs", run_name), os.path.join("runs", run_name, "checkpoints")
    checkpoint = None
    if args.resume != "no":
        checkpoint_path = find_checkpoint(ckpt_dir, world_size)  # rank 0's choice
        if checkpoint_path:
            checkpoint = load_checkpoint(checkpoint_path, rank, world_size)
            check_resume_args(checkpoint[0]["args"], args, RESUME_FLAGS)
            if checkpoint[0]["iteration"] > N:
                fail("--total-steps", f"{checkpoint_path} is past {plan['policy_steps']} policy steps; give a larger budget")
            if checkpoint[0]["iteration"] == N:  # a finished run: done if its ledger (and evaluation) was written
                exit_if_complete(run_dir, plan["policy_steps"], args.eval_episodes, world_size)
            if checkpoint[1]["buffer"] is None and checkpoint[0]["iteration"] < N and plan["training_iterations"]:
                fail(
                    "--resume",
                    f"{checkpoint_path} holds no replay buffer (written with --no-checkpoint-buffer), and training "
                    "cannot continue from an empty replay; start a new run (the weights are in its shared.pt)",
                )
        elif args.resume == "yes":
            fail("--resume", f"no checkpoint in {ckpt_dir}; use `--resume auto` to start fresh when there is none")
    writer = None  # rank 0's TensorBoard writer
    if rank == 0:
        if args.total_steps % P:
            warn(
                f"--total-steps {args.total_steps} is not a multiple of {P} policy steps per iteration; "
                f"running {plan['policy_steps']} (the remainder {args.total_steps % P} is dropped)"
            )
        cadences = [("log_every", args.log_every), ("checkpoint_every", args.checkpoint_every)]
        cadences += [("video_every", args.video_every)] if args.capture_video else []
        for flag, every in cadences:
            if every % P and every != getattr(Args, flag):  # sheeprl warns alike (here not of a default nobody chose)
                warn(f"--{flag.replace('_', '-')} {every} is not a multiple of {P} policy steps per iteration; it happens at "
                     "the first iteration past each multiple")  # fmt: skip
        if plan["training_iterations"] == 0:
            warn(f"--learning-starts {args.learning_starts} covers the whole run: no training will happen")
        elif args.capture_video and N * P // args.video_every == R * P // args.video_every:  # videos come after training
            warn(f"--capture-video: no multiple of --video-every {args.video_every} falls in the training iterations "
                 f"(policy steps {R * P + 1}-{N * P}): no video will be recorded; lower --video-every")  # fmt: skip
        print(format_plan(plan, args.replay_ratio, args.per_rank_pretrain_steps, args.action_repeat), flush=True)
        print(f"  train ratio {float(args.replay_ratio * B * T):g} replayed steps per policy step (batch {B} x length {T})")
        print(f"run directory: {run_dir}; device: {device}; torch threads: {torch.get_num_threads()}", flush=True)
        resumed_step = checkpoint[0]["iteration"] * P if checkpoint else -1
    seed_everything(args.seed + rank, args.torch_deterministic)

    # env setup
    env_fns = [make_env(args.env_id, args.action_repeat, args.max_episode_steps, args.image_size) for _ in range(m)]
    vector_env = gym.vector.AsyncVectorEnv if args.async_envs else gym.vector.SyncVectorEnv
    envs = vector_env(env_fns, autoreset_mode=AutoresetMode.SAME_STEP)
    obs_space, act_space = envs.single_observation_space, envs.single_action_space
    discrete = isinstance(act_space, gym.spaces.Discrete)
    act_dim = int(act_space.n) if discrete else act_space.shape[0]
    action_rng = np.random.default_rng(args.seed + rank)  # uniform random actions of the pre-fill

    # ALGO LOGIC: networks, optimizer, buffer (parameters start identical on every rank: same seed)
    # OneHotCategorical's inner Categorical ignores validate_args=False: without this, a diverged (NaN) actor raises a
    # ValueError before the action check can name it. Validation only checks arguments: no value or draw changes
    torch.distributions.Distribution.set_default_validate_args(False)
    torch.manual_seed(args.seed)
    agent = Agent(obs_space, act_dim, discrete, args.size, args.unimix).to(device)
    slow_critic = copy.deepcopy(agent.critic).requires_grad_(False)
    retnorm = ReturnNorm().to(device)
    torch.manual_seed(args.seed + rank)
    params = list(agent.parameters())
    optimizer = LaProp(params, args.learning_rate, args.agc, args.adam_eps, args.beta1, args.beta2, args.warmup)
    rb = SequenceReplay(args.per_rank_buffer_size // m, m, obs_space, act_dim)
    scales = loss_scales(args, list(obs_space.spaces))
    if rank == 0:
        counts = parameter_counts(obs_space, act_dim, discrete, args.size)
        parts = ", ".join(f"{k} {v:,}" for k, v in counts.items() if k != "total")
        print(f"{args.size}: {counts['total']:,} parameters ({parts})")

    def to_env_action(a: np.ndarray) -> np.ndarray:
        if discrete:
            return a.argmax(-1) + act_space.start  # Discrete(n, start=s) takes s .. s + n - 1
        low, high = act_space.low.astype(np.float64), act_space.high.astype(np.float64)  # high - low may overflow float32
        return (low + (np.clip(a, -1, 1) + 1) / 2 * (high - low)).astype(act_space.dtype)

    def add_reset_obs(i: int, obs: dict) -> None:
        rb.add(i, {k: v[i] for k, v in obs.items()} | {"is_first": True})

    # TRY NOT TO MODIFY: counters (per rank), restored from a checkpoint when resuming
    ratio = Ratio(args.replay_ratio, m, args.per_rank_pretrain_steps)
    start_iteration, local_policy_steps, local_env_steps, local_episodes, local_starts = 0, 0, 0, 0, 0
    window = [0.0, 0.0, 0.0]  # sum of returns, sum of lengths, episodes since the last log (this rank)
    if checkpoint is not None:
        shared, local = checkpoint
        load_states(
            {"agent": agent, "slow_critic": slow_critic, "retnorm": retnorm, "optimizer": optimizer, "ratio": ratio}, shared
        )
        start_iteration = shared["iteration"]
        local_policy_steps, local_env_steps, local_episodes, local_starts, window = (
            local["policy_steps"],
            local["env_steps"],
            local["episodes"],
            local["starts"],
            local["window"],
        )
        if local["buffer"] is not None:
            rb.load_state_dict(local["buffer"])
            rb.mark_last()
        rb.added = local["stored"]
        set_rng_state(local["rng"])
        action_rng.bit_generator.state = local["action_rng"]
        if rank == 0:
            print(f"resumed from {checkpoint_path} at iteration {start_iteration} ({start_iteration * P} policy steps)")
        # CRUCIAL: the simulator state is not in the checkpoint; episodes restart from fresh, newly seeded resets
        obs, _ = envs.reset(seed=[int(s) for s in action_rng.integers(2**31, size=m)])
        del checkpoint, shared, local
    else:
        obs, _ = envs.reset(seed=[args.seed + rank * m + i for i in range(m)])
    if rank == 0:  # once the checkpoint fits: a failed resume leaves the run's event files and W&B run untouched
        writer = setup_tracking(args, run_name, run_dir, purge_step=resumed_step + 1)  # hides steps logged after it
    check_env_output(args.env_id, list(obs.values()), start_iteration * P, rank)
    if start_iteration < N:  # a resume of a finished run only evaluates: no episode starts that nothing steps from
        for i in range(m):
            add_reset_obs(i, obs)
        local_starts += m
    is_first = np.ones(m, dtype=bool)  # the current obs of each env starts an episode
    deter, stoch = agent.rssm.initial(m, device)
    prev_action = torch.zeros(m, act_dim, device=device)

    def policy(obs: dict, deter, stoch, prev_action, is_first: np.ndarray):
        """One filtering step of the RSSM on the current obs, then a sampled action ([-1, 1] or one-hot)."""
        with torch.no_grad():
            o = {k: torch.as_tensor(v, device=device) for k, v in obs.items()}
            first = torch.as_tensor(is_first, device=device)
            deter, stoch, _ = agent.rssm.obs_step(deter, stoch, prev_action, agent.encoder(o), first)
            action = agent.actor.sample(feat_of(deter, stoch))
        return action, deter, stoch

    # ALGO LOGIC: one gradient step (world model, imagination, actor-critic, replay value loss; one optimiser)
    def update(data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        data = {k: v.to(device) for k, v in data.items()}
        obs = {k: data[k] if data[k].dtype == torch.uint8 else data[k].float() for k in obs_space.spaces}
        reward, is_first = data["reward"], data["is_first"]
        is_last, is_terminal = data["is_last"].float(), data["is_terminal"].float()
        losses, metrics = {}, {}

        # WORLD MODEL
        embed = agent.encoder(obs)
        deter, stoch, post, prior = agent.rssm.observe(embed, data["action"], is_first)
        S, K = post.shape[-2:]
        assert deter.shape[:2] == (B, T) and post.shape == prior.shape == (B, T, S, K), (deter.shape, post.shape)
        kl = kl_losses(post, prior, args.free_nats)  # [B, T], summed over the latents
        losses["dyn"], losses["rep"], dyn_kl, rep_kl = kl["dyn"], kl["rep"], kl["dyn_kl"], kl["rep_kl"]
        feat = feat_of(deter, stoch)
        for k, pred in agent.decoder(feat).items():
            losses[f"rec_{k}"] = recon_loss(pred, obs[k])
        losses["rew"] = twohot_loss(agent.reward(feat), reward, agent.bins)
        con_logits = agent.cont(feat).squeeze(-1)
        losses["con"] = F.binary_cross_entropy_with_logits(
            con_logits, continue_target(is_terminal, args.horizon), reduction="none"
        )
        assert all(v.shape == (B, T) for v in losses.values()), {k: v.shape for k, v in losses.items()}

        # IMAGINATION: H steps from every posterior state (B * T starts), trajectories without gradients
        with torch.no_grad():
            img_deter, img_stoch = deter.detach().reshape(B * T, -1), stoch.detach().reshape(B * T, S, K)
            deters, stochs, actions = [img_deter], [img_stoch], []
            for _ in range(H):
                action = agent.actor.sample(feat_of(img_deter, img_stoch))
                img_deter, img_stoch = agent.rssm.img_step(img_deter, img_stoch, action)
                deters.append(img_deter), stochs.append(img_stoch), actions.append(action)
            img_feat = feat_of(torch.stack(deters, 1), torch.stack(stochs, 1))  # [B*T, H+1, F]
            img_action = torch.stack(actions, 1)  # [B*T, H, A], action t taken in state t
            img_reward = twohot_mean(agent.reward(img_feat), agent.bins)  # [B*T, H+1]
            img_con = torch.sigmoid(agent.cont(img_feat).squeeze(-1))  # continue probability, includes the discount
            slow_value = twohot_mean(slow_critic(img_feat), agent.bins)
        assert img_feat.shape[:2] == (B * T, H + 1) and img_action.shape[:2] == (B * T, H), img_feat.shape

        # ACTOR-CRITIC
        value_logits = agent.critic(img_feat)
        pi = agent.actor.dist(img_feat[:, :-1])
        ac, out = actor_critic_losses(
            pi, img_action, value_logits, slow_value, img_reward, img_con, agent.bins, retnorm, args, world_size
        )
        losses |= {k: v.reshape(B, T) for k, v in ac.items()}
        ret, value, adv, entropy = out["ret"], out["value"], out["adv"], out["entropy"]

        # REPLAY VALUE LOSS: lambda-returns along the replayed sequence, bootstrapped with the imagined returns
        boot = ret[:, 0].reshape(B, T)
        rep_ret = lambda_return(
            reward[:, 1:], 1 - is_terminal[:, 1:], boot, 1 - 1 / args.horizon, args.lam * (1 - is_last[:, 1:])
        )
        rep_logits = agent.critic(feat[:, :-1])  # gradients reach the world model too (repval_grad in the reference)
        with torch.no_grad():
            rep_slow = twohot_mean(slow_critic(feat[:, :-1]), agent.bins)
        rep_loss = twohot_loss(rep_logits, rep_ret, agent.bins) + twohot_loss(rep_logits, rep_slow, agent.bins)
        losses["repval"] = (1 - is_last[:, :-1]) * rep_loss

        loss = total_loss(losses, scales)
        optimizer.zero_grad(set_to_none=False)
        loss.backward()
        all_reduce_grads(params, world_size)
        optimizer.step()
        ema_(slow_critic, agent.critic, args.slow_critic_rate)

        metrics |= {f"{k}_loss": v.mean() for k, v in losses.items()}
        metrics |= {
            "loss": loss,
            "dyn_kl": dyn_kl.mean(),
            "rep_kl": rep_kl.mean(),
            "prior_entropy": -(prior.exp() * prior).sum((-2, -1)).mean(),
            "post_entropy": -(post.exp() * post).sum((-2, -1)).mean(),
            "return_scale": retnorm.scale(),
            "return_p5": retnorm.lo,
            "return_p95": retnorm.hi,
            "imag_return": ret.mean(),
            "imag_value": value.mean(),
            "imag_reward": img_reward.mean(),
            "imag_continue": img_con.mean(),
            "advantage": adv.mean(),
            "policy_entropy": entropy.mean(),
        }
        return {k: v.detach() for k, v in metrics.items()}

    def openloop_video(data: dict[str, torch.Tensor], n: int = 4) -> dict[str, np.ndarray]:
        """Real vs. model frames, uint8 [T, 2H, n*W, C] (real on top, n sequences side by side): posterior
        reconstructions for the first half of each window, then open-loop imagination with the replayed actions."""
        with torch.no_grad():
            data = {k: v[:n].to(device) for k, v in data.items()}
            obs = {k: data[k] if data[k].dtype == torch.uint8 else data[k].float() for k in obs_space.spaces}
            half = T // 2
            deter, stoch, _, _ = agent.rssm.observe(agent.encoder(obs), data["action"], data["is_first"])
            feats = [feat_of(deter[:, :half], stoch[:, :half])]
            d, s = deter[:, half - 1], stoch[:, half - 1]
            for t in range(half, T):
                d, s = agent.rssm.img_step(d, s, data["action"][:, t])
                feats.append(feat_of(d, s)[:, None])
            recon = agent.decoder(torch.cat(feats, 1))
        videos = {}
        for k in agent.decoder.img_keys:
            model = (recon[k].clamp(0, 1) * 255).to(torch.uint8)
            frames = torch.cat([obs[k], model], 2)  # [n, T, 2H, W, C]
            videos[k] = torch.cat(list(frames), 2).cpu().numpy()  # [T, 2H, n*W, C]
        return videos

    def write_video(key: str, video: np.ndarray, step: int) -> None:
        """TensorBoard image `videos/openloop_<key>` (frames left to right in time) and an mp4 in runs/<run>/videos."""
        # RGB (or RGBA) as RGB; other channel counts (grey, frame stacks) show their first channel in grey
        video = video[..., :3] if video.shape[-1] in (3, 4) else np.repeat(video[..., :1], 3, -1)
        writer.add_image(f"videos/openloop_{key}", np.concatenate(list(video), 1), step, dataformats="HWC")
        try:
            from moviepy import ImageSequenceClip
        except ImportError:  # moviepy < 2
            from moviepy.editor import ImageSequenceClip
        os.makedirs(os.path.join(run_dir, "videos"), exist_ok=True)
        frames = list(video)
        name = key.replace("/", "_").replace("\\", "_")  # a Dict key such as 'cam/rgb' is no directory
        path = os.path.join(run_dir, "videos", f"openloop_{name}_{step:012d}.mp4")
        ImageSequenceClip(frames, fps=10).write_videofile(path, logger=None)

    def save(iteration: int) -> None:
        shared = {
            "world_size": world_size,
            "iteration": iteration,
            "args": config_dict(args),
            "agent": agent.state_dict(),
            "slow_critic": slow_critic.state_dict(),
            "retnorm": retnorm.state_dict(),
            "optimizer": optimizer.state_dict(),
            "ratio": ratio.state_dict(),
        }
        local = {
            "policy_steps": local_policy_steps,
            "env_steps": local_env_steps,
            "episodes": local_episodes,
            "starts": local_starts,
            "window": window,
            "rng": rng_state(),
            "action_rng": action_rng.bit_generator.state,
            "buffer": rb.state_dict() if args.checkpoint_buffer else None,
            "stored": rb.added,
        }
        path = save_checkpoint(ckpt_dir, iteration * P, shared, local, rank, world_size, args.keep_checkpoints)
        if rank == 0:
            print(f"checkpoint: {path}", flush=True)

    # TRY NOT TO MODIFY: start the loop
    metrics, last_return, train_seconds = {}, float("nan"), 0.0
    start_time, start_step, last_print = time.time(), start_iteration * P, time.time()  # SPS: from here, or from training
    wall_start, start_gradient_steps = time.time(), ratio.gradient_steps
    progress = tqdm(total=N * P, initial=start_iteration * P, unit="step", disable=None if rank == 0 else True)
    for iteration in range(start_iteration + 1, N + 1):
        policy_step = iteration * P  # global policy steps once this iteration's env step is done
        if iteration == R + 1 and R > start_iteration:  # SPS leaves out the random pre-fill
            start_time, start_step = time.time(), (iteration - 1) * P

        # ALGO LOGIC: put action logic here
        if iteration <= R:
            if discrete:
                actions = np.eye(act_dim, dtype=np.float32)[action_rng.integers(act_dim, size=m)]
            else:
                actions = action_rng.uniform(-1, 1, (m, act_dim)).astype(np.float32)
        else:
            if iteration == max(R, start_iteration) + 1:
                is_first[:] = True  # the filter starts here: from the zero state, as at an episode start
            action, deter, stoch = policy(obs, deter, stoch, prev_action, is_first)
            actions = action.cpu().numpy() if discrete else np.clip(action.cpu().numpy(), -1, 1)
            check_env_output(args.env_id, [], policy_step, rank, actions)  # diverged: stop before the env sees it

        # TRY NOT TO MODIFY: execute the game and log data.
        next_obs, rewards, terminations, truncations, infos = envs.step(to_env_action(actions))
        # --- SHARED: step counting ---
        done = terminations | truncations
        local_policy_steps += m
        local_env_steps += env_steps_taken(infos, done)
        for episodic_return, episodic_length in finished_episodes(infos, done):
            window[0], window[1], window[2] = window[0] + episodic_return, window[1] + episodic_length, window[2] + 1
            local_episodes += 1
        # --- END SHARED ---

        # TRY NOT TO MODIFY: store one step per policy step; with same-step autoreset an ended episode's last obs is
        # in `final_obs` and the returned obs starts the next episode (stored as an extra is_first step)
        finals = [v for i in np.flatnonzero(done) for v in infos["final_obs"][i].values()]
        check_env_output(args.env_id, [rewards, *next_obs.values(), *finals], policy_step, rank)
        for i in range(m):
            final = infos["final_obs"][i] if done[i] else {k: v[i] for k, v in next_obs.items()}
            rb.add(i, final | {"action": actions[i], "reward": rewards[i], "is_last": done[i], "is_terminal": terminations[i]})
            if done[i]:
                add_reset_obs(i, next_obs)
                local_starts += 1

        # TRY NOT TO MODIFY: CRUCIAL step easy to overlook
        obs, is_first = next_obs, done.copy()
        prev_action = torch.as_tensor(actions, device=device)

        # ALGO LOGIC: training, `ratio()` gradient steps per training iteration
        if iteration > R:
            todo = ratio()
            train_start = time.time()
            for first in range(0, todo, 16):  # 16 batches at a time: a large pretrain count never fills memory at once
                for g, data in enumerate(rb.sample(min(16, todo - first), B, T), first + 1):
                    metrics = update(data)
                    if ratio.pretrain and ratio.training_iterations == 1 and rank == 0:  # a pretrain: counted step by step
                        done_steps = f"{g}/{todo} gradient steps at policy step {policy_step}"
                        progress.set_postfix_str(done_steps)
                        if progress.disable and time.time() - last_print > print_every:
                            last_print = time.time()
                            print(f"training: {done_steps}", flush=True)
            train_seconds += time.time() - train_start
        progress.update(P)

        # --- SHARED: logging ---
        # TRY NOT TO MODIFY: log at every multiple of --log-every global policy steps (all ranks take part)
        if policy_step // args.log_every > (policy_step - P) // args.log_every or iteration == N:
            ep_sum, len_sum, eps, env_steps = all_sum(window + [local_env_steps], world_size)
            window = [0.0, 0.0, 0.0]
            if rank == 0:
                sps = (policy_step - start_step) / (time.time() - start_time)
                gradient_steps = ratio.gradient_steps * world_size
                if eps:
                    last_return = ep_sum / eps
                    writer.add_scalar("charts/episodic_return", last_return, policy_step)
                    writer.add_scalar("charts/episodic_length", len_sum / eps, policy_step)
                writer.add_scalar("charts/env_steps", env_steps, policy_step)
                writer.add_scalar("charts/gradient_steps", gradient_steps, policy_step)
                if iteration > R:
                    writer.add_scalar("charts/replay_ratio", gradient_steps / ((iteration - R) * P), policy_step)
                writer.add_scalar("charts/SPS", sps, policy_step)
                for k, v in metrics.items():
                    writer.add_scalar(f"losses/{k}", v.item(), policy_step)
                progress.set_postfix(SPS=int(sps), ret=f"{last_return:.1f}", refresh=False)
        if rank == 0 and progress.disable and time.time() - last_print > print_every:  # stderr is a log: progress lines
            last_print = time.time()
            sps = (policy_step - start_step) / (last_print - start_time)
            print(f"policy_step={policy_step} SPS={int(sps)} episodic_return={last_return:.2f}", flush=True)
        # --- END SHARED ---

        # ALGO LOGIC: real vs. imagined frames (rank 0, image observations)
        every = args.video_every
        if (
            args.capture_video
            and rank == 0
            and agent.decoder.img_keys
            and iteration > R
            and policy_step // every > (policy_step - P) // every
        ):
            with torch.random.fork_rng([device] if device.type == "cuda" else []):  # videos leave training's draws alone
                for k, video in openloop_video(rb.sample(1, min(4, B), T)[0]).items():
                    write_video(k, video, policy_step)

        # TRY NOT TO MODIFY: checkpoint at every multiple of --checkpoint-every global policy steps, and at the end
        every = args.checkpoint_every
        if every and (policy_step // every > (policy_step - P) // every or iteration == N):
            save(iteration)
    progress.close()
    envs.close()

    # TRY NOT TO MODIFY: the ledger (actual counters summed over ranks must equal the plan)
    checksum = sum(p.detach().double().sum().item() for p in params)
    gathered = all_gather(
        {
            "env_steps": local_env_steps,
            "episodes": local_episodes,
            "policy_steps": local_policy_steps,
            "gradient_steps": ratio.gradient_steps,
            "checksum": checksum,
            "stored_steps": rb.added,
            "episode_starts": local_starts,
        },
        world_size,
    )
    if rank == 0:
        per_rank = [g["gradient_steps"] for g in gathered]
        actual = {
            "policy_steps": sum(g["policy_steps"] for g in gathered),
            "env_steps": sum(g["env_steps"] for g in gathered),
            "per_rank_gradient_steps": per_rank,
            "gradient_steps": sum(per_rank),
            "episodes": sum(g["episodes"] for g in gathered),
            "replay_ratio": sum(per_rank) / (plan["training_iterations"] * P) if plan["training_iterations"] else 0.0,
            "param_checksums": [g["checksum"] for g in gathered],
            "stored_steps": sum(g["stored_steps"] for g in gathered),
            "episode_starts": sum(g["episode_starts"] for g in gathered),
        }
        ledger = {"plan": plan, "actual": actual, "replay_ratio": str(args.replay_ratio), "action_repeat": args.action_repeat}
        ledger["train_ratio"] = float(args.replay_ratio * B * T)
        ledger["timing"] = {  # rank 0, this process only (a resumed run counts from the resume)
            "wall_seconds": time.time() - wall_start,
            "train_seconds": train_seconds,
            "gradient_steps_per_second": (ratio.gradient_steps - start_gradient_steps) / train_seconds
            if train_seconds
            else 0.0,
        }
        if start_iteration == N and os.path.exists(os.path.join(run_dir, "steps.json")):  # resumed only to evaluate
            with open(os.path.join(run_dir, "steps.json")) as f:
                trained = json.load(f)  # the ledger of the training that reached N (if its plan is this one)
            ledger["timing"] = trained["timing"] if trained.get("plan") == plan and "timing" in trained else ledger["timing"]

        errors = ledger_errors(plan, actual)
        if actual["stored_steps"] != actual["policy_steps"] + actual["episode_starts"]:
            errors.append(f"stored_steps: counted {actual['stored_steps']} != policy steps + episode starts")
        # --- SHARED: ledger write ---
        eval_error = None if all(map(math.isfinite, actual["param_checksums"])) else (  # diverged after its last action
            "training diverged: the parameters are not finite after the last gradient step; lower the learning rates "
            "(no evaluation; the ledger is in steps.json)")  # fmt: skip
        with open(os.path.join(run_dir, "steps.json"), "w") as f:  # written before evaluation, which may fail
            json.dump(ledger, f, indent=2)
        # --- END SHARED ---

        # evaluation: policy actions on rank 0, not counted in the ledger's training steps
        if args.eval_episodes > 0 and eval_error is None:
            try:
                eval_env = make_env(args.env_id, args.action_repeat, args.max_episode_steps, args.image_size)()
                returns, lengths = [], []
                limited = args.max_episode_steps is not None or getattr(eval_env.spec, "max_episode_steps", None) is not None
                for ep in range(args.eval_episodes):
                    eval_obs, _ = eval_env.reset(seed=args.seed + 1_000_000 + ep)
                    d, s = agent.rssm.initial(1, device)
                    a, first, ep_return = torch.zeros(1, act_dim, device=device), np.ones(1, dtype=bool), 0.0
                    for length in range(1, sys.maxsize if limited else EVAL_STEP_CAP + 1):
                        a, d, s = policy({k: v[None] for k, v in eval_obs.items()}, d, s, a, first)
                        a = a if discrete else a.clamp(-1, 1)  # fed back clipped, as in training
                        eval_obs, reward, terminated, truncated, _ = eval_env.step(to_env_action(a.cpu().numpy())[0])
                        first[:] = False
                        ep_return += float(reward)
                        if terminated or truncated:
                            break
                    else:
                        warn(f"evaluation episode {ep + 1} did not end in {EVAL_STEP_CAP} policy steps ({args.env_id} has "
                             "no time limit); stopped there. Bound episodes with --max-episode-steps")  # fmt: skip
                    returns.append(ep_return)
                    lengths.append(length)
                # --- SHARED: evaluation record ---
                eval_env.close()
                ledger["eval"] = {
                    "episodes": len(returns),
                    "mean_return": float(np.mean(returns)),
                    "std_return": float(np.std(returns)),
                    "mean_length": float(np.mean(lengths)),
                }
                writer.add_scalar("eval/episodic_return", ledger["eval"]["mean_return"], plan["policy_steps"])
                writer.add_scalar("eval/episodic_return_std", ledger["eval"]["std_return"], plan["policy_steps"])
                writer.add_scalar("eval/episodic_length", ledger["eval"]["mean_length"], plan["policy_steps"])
                with open(os.path.join(run_dir, "steps.json"), "w") as f:
                    json.dump(ledger, f, indent=2)
            except Exception as e:  # training and its ledger are saved; report, exit 1, and let the other ranks finish
                eval_error = f"evaluation failed ({type(e).__name__}: {e}); the training ledger is in steps.json"
        # --- END SHARED ---
        # --- SHARED: run end ---
        print(json.dumps(ledger, indent=2), flush=True)
        close_tracking(writer, args.track)
        if errors:
            print("LEDGER MISMATCH (a bug in the step accounting):\n  " + "\n  ".join(errors), file=sys.stderr, flush=True)
        if eval_error:
            print(f"error: {eval_error}", file=sys.stderr, flush=True)
    teardown(final_exit_code(1 if rank == 0 and (errors or eval_error) else 0, world_size))
    # --- END SHARED ---
