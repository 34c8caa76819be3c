# SAC for continuous actions, with exact step accounting and torchrun scaling.
# Paper: Haarnoja et al. 2018, "Soft Actor-Critic Algorithms and Applications" (arXiv:1812.05905).
# Follows CleanRL's sac_continuous_action.py (defaults, networks, delayed policy updates, entropy tuning);
# docs: algos/sac_continuous.md, including the step vocabulary and the ledger ("How steps are counted").
import contextlib
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
import torch.nn as nn
import torch.nn.functional as F
import tyro
from gymnasium.vector import AutoresetMode
from tqdm import tqdm

from steprl.utils import (
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
    """the name of this experiment (the script's real file stem, also when started through the sac.py symlink)"""
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
    """if toggled, record the evaluation episodes to `runs/<run_name>/videos` (needs moviepy); --track uploads the first"""
    run_name: str | None = None
    """fixes the run directory `runs/<run_name>` (default: `{env_id}__{exp_name}__{seed}__{unix time}`)"""
    checkpoint_every: Steps = 0
    """global policy steps between checkpoints (0: no checkpoints); a final checkpoint is written when > 0"""
    keep_checkpoints: int = 2
    """how many of the newest checkpoints to keep"""
    checkpoint_buffer: bool = True
    """if toggled, checkpoints hold every rank's replay buffer (needed for an exact resume)"""
    resume: Literal["no", "auto", "yes"] = "no"
    """continue from the newest checkpoint of the run directory: `yes` requires one, `auto` starts fresh without"""
    torch_threads: int = 1
    """torch intra-op threads per process on CPU (1 is fastest for these small networks on shared cores)"""
    compile: bool = False
    """if toggled, `torch.compile` the loss functions (7-26 s of start-up on a cold cache; slower on CPU, see the page)"""
    bf16: bool = False
    """if toggled, the two 256x256 layers multiply in bfloat16 (faster on CPUs with native bf16; all else stays float32)"""
    log_every: Steps = 1000
    """global policy steps between scalar logs"""
    eval_episodes: int = 10
    """episodes of deterministic evaluation on rank 0 at the end (0: none)"""

    # Algorithm specific arguments
    env_id: str = "HalfCheetah-v5"
    """the environment id, or `module:EnvId-v0` to import a module that registers it"""
    total_steps: Steps = 1_000_000
    """global policy steps of the run (accepts 1e6)"""
    num_envs: int = 1
    """envs per process (m)"""
    async_envs: bool = False
    """if toggled, step the envs in subprocesses (AsyncVectorEnv) instead of in this process"""
    action_repeat: int = 1
    """env steps per policy step (rewards are summed; stops early at an episode end)"""
    max_episode_steps: Steps | None = None
    """policy steps after which an episode is truncated (default: only the env's own limit, in env steps)"""
    per_rank_buffer_size: Steps = 1_000_000
    """replay buffer capacity in transitions, per rank"""
    gamma: float = 0.99
    """the discount factor gamma, per policy step (one policy step is --action-repeat env steps)"""
    tau: float = 0.005
    """target smoothing coefficient, per target network update"""
    per_rank_batch_size: int = 256
    """samples per gradient step on one rank (global batch = world_size times this)"""
    learning_starts: Steps = 5_000
    """global policy steps of uniformly random actions before training (rounded up to whole iterations)"""
    replay_ratio: ExactRatio = Fraction(1)
    """global gradient steps per global policy step once training starts (exact: 0.5, 0.75, 1/3)"""
    per_rank_pretrain_steps: Steps = 0
    """if > 0, the first training iteration does exactly this many gradient steps per rank"""
    policy_lr: float = 3e-4
    """the learning rate of the policy network optimizer"""
    q_lr: float = 1e-3
    """the learning rate of the Q networks, and of the entropy temperature with --autotune (as CleanRL)"""
    policy_frequency: int = 2
    """per-rank gradient steps between policy updates; each one does this many actor updates (delayed, as TD3)"""
    target_network_frequency: int = 1
    """per-rank gradient steps between target network updates"""
    alpha: float = 0.2
    """entropy regularization coefficient, 0 or more (used with --no-autotune; autotuning starts at 1.0, as CleanRL)"""
    autotune: bool = True
    """automatic tuning of the entropy coefficient towards target entropy -|A|"""


RESUME_FLAGS = [  # a resumed run must keep these (they shape the step plan, the buffers or the update)
    "exp_name",  # a copy of the script (another experiment) must not continue this one's run
    "env_id",
    "num_envs",
    "action_repeat",
    "max_episode_steps",
    "learning_starts",
    "replay_ratio",
    "per_rank_pretrain_steps",
    "per_rank_buffer_size",
    "bf16",
    "policy_lr",  # the learning rates and the seed live in the checkpoint (optimizer and RNG states): a new value would
    "q_lr",  # be ignored while the run's config showed it
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


def make_env(env_id: str, action_repeat: int, max_episode_steps: int | None, render_mode: str | None = None):
    def thunk():
        env = gym.make(env_id, **({"render_mode": render_mode} if render_mode else {}))  # custom envs may lack the kwarg
        if not isinstance(env.observation_space, gym.spaces.Box) or len(env.observation_space.shape) != 1:
            env = gym.wrappers.FlattenObservation(env)
        return wrap_steps(env, action_repeat, max_episode_steps)

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
class ReplayBuffer:
    """One rank's transitions in preallocated tensors (FIFO). Minibatches are sampled uniformly, several in one call
    (the loop asks for up to 64 at a time)."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, device: torch.device):
        self.capacity, self.pos, self.size = capacity, 0, 0  # empty, not zeros: RAM is taken as the buffer fills
        self.obs = torch.empty((capacity, obs_dim), dtype=torch.float32, device=device)  # (only [:size] is ever read)
        self.next_obs = torch.empty((capacity, obs_dim), dtype=torch.float32, device=device)
        self.actions = torch.empty((capacity, act_dim), dtype=torch.float32, device=device)
        self.rewards = torch.empty(capacity, dtype=torch.float32, device=device)
        self.terminations = torch.empty(capacity, dtype=torch.float32, device=device)
        self.fields = ("obs", "next_obs", "actions", "rewards", "terminations")

    def add(self, *values: np.ndarray) -> None:
        n = len(values[0])
        idx = slice(self.pos, self.pos + n)
        if self.pos + n > self.capacity:  # wraps around
            idx = torch.arange(self.pos, self.pos + n) % self.capacity
        for name, value in zip(self.fields, values):
            getattr(self, name)[idx] = torch.as_tensor(value, dtype=torch.float32).to(self.obs.device)
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, n: int, batch_size: int) -> list[tuple[torch.Tensor, ...]]:
        idx = torch.randint(0, self.size, (n, batch_size), device=self.obs.device)
        return [tuple(getattr(self, name).index_select(0, i) for name in self.fields) for i in idx]  # faster than [i]

    def state_dict(self) -> dict:
        # on the CPU, a tensor over just the filled rows that shares their memory: torch.save of a slice would write the
        # whole storage, and a copy would hold the buffer twice in RAM during the save
        filled = [getattr(self, k)[: self.size] for k in self.fields]
        fields = {k: torch.from_numpy(t.numpy()) if t.device.type == "cpu" else t.cpu() for k, t in zip(self.fields, filled)}
        return {"pos": self.pos, "size": self.size} | fields

    def load_state_dict(self, state: dict) -> None:
        if state["size"] > self.capacity:
            fail("--per-rank-buffer-size", f"the checkpoint holds {state['size']} transitions per rank; use at least that")
        self.pos, self.size = state["pos"], state["size"]
        for k in self.fields:
            getattr(self, k)[: self.size] = state[k].to(self.obs.device)


# ALGO LOGIC: networks
class TwinQ(nn.Module):
    """CleanRL's two SoftQNetworks (obs+act -> 256 -> 256 -> 1, ReLU) with their weights stacked as [2, in, out],
    so both critics run as one batched matmul per layer. Initialised exactly as CleanRL's qf1 then qf2 (same seed, same
    weights)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, n: int = 2):
        super().__init__()
        sizes = [obs_dim + act_dim, hidden, hidden, 1]
        self.n = n
        critics = [[nn.Linear(i, o) for i, o in zip(sizes[:-1], sizes[1:])] for _ in range(n)]  # CleanRL's draw order
        self.weights = nn.ParameterList(torch.stack([c[j].weight.detach().T for c in critics]) for j in range(len(sizes) - 1))
        self.biases = nn.ParameterList(torch.stack([c[j].bias.detach()[None] for c in critics]) for j in range(len(sizes) - 1))

    def forward(
        self, obs: torch.Tensor, actions: torch.Tensor, detach_params=False, hidden_dtype=torch.float32
    ) -> torch.Tensor:
        """Q-values of both critics, shape [2, B]. `detach_params` lets gradients reach only the actions.
        `hidden_dtype=torch.bfloat16` (--bf16) multiplies the hidden x hidden layers in bfloat16; all else stays float32."""
        x = torch.cat([obs, actions], -1).expand(self.n, -1, -1)
        for j, (w, b) in enumerate(zip(self.weights, self.biases)):
            if detach_params:
                w, b = w.detach(), b.detach()
            if 0 < j < len(self.weights) - 1 and hidden_dtype != torch.float32:  # hidden x hidden; ReLU in float32 (faster)
                x = F.relu(torch.baddbmm(*(t.to(hidden_dtype) for t in (b, x, w))).float())
            elif j < len(self.weights) - 1:
                x = F.relu(torch.baddbmm(b, x, w))
            else:  # one output unit: multiply-and-sum, about 5x faster on CPU than a batched matmul with N = 1
                x = (x * w.mT).sum(-1, keepdim=True) + b
        return x.squeeze(-1)


LOG_STD_MAX = 2
LOG_STD_MIN = -5


class Actor(nn.Module):
    """CleanRL's actor (obs -> 256 -> 256 -> mean, log_std) with fc_mean and fc_logstd as one layer of 2 x act_dim outputs
    (initialised exactly as the two; a matmul with 6 outputs is slower than one with 12 on CPU)."""

    def __init__(self, obs_dim: int, act_dim: int, low: np.ndarray, high: np.ndarray):
        super().__init__()
        self.fc1 = nn.Linear(obs_dim, 256)
        self.fc2 = nn.Linear(256, 256)
        fc_mean, fc_logstd = nn.Linear(256, act_dim), nn.Linear(256, act_dim)
        self.fc_mean_logstd = nn.utils.skip_init(nn.Linear, 256, 2 * act_dim)  # no random draws: the critics' stay CleanRL's
        with torch.no_grad():
            self.fc_mean_logstd.weight.copy_(torch.cat([fc_mean.weight, fc_logstd.weight]))
            self.fc_mean_logstd.bias.copy_(torch.cat([fc_mean.bias, fc_logstd.bias]))
        self.register_buffer("action_scale", torch.tensor((high - low) / 2.0, dtype=torch.float32))
        self.register_buffer("action_bias", torch.tensor((high + low) / 2.0, dtype=torch.float32))

    def forward(self, x: torch.Tensor, hidden_dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.fc1(x))
        if hidden_dtype != torch.float32:  # --bf16: fc2 multiplies in bf16, as TwinQ's hidden layer; ReLU in float32
            x = F.relu(F.linear(*(t.to(hidden_dtype) for t in (x, self.fc2.weight, self.fc2.bias))).float())
        else:
            x = F.relu(self.fc2(x))
        mean, log_std = self.fc_mean_logstd(x).chunk(2, -1)
        log_std = torch.tanh(log_std)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (log_std + 1)  # From SpinUp / Denis Yarats
        return mean, log_std

    def get_action(self, x: torch.Tensor, hidden_dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterised tanh-Gaussian sample and its log-probability [B] (CleanRL also returns the deterministic
        action; here `act` gives it, and the losses skip computing it)."""
        mean, log_std = self(x, hidden_dtype)
        eps = torch.randn_like(mean)
        x_t = mean + log_std.exp() * eps
        y_t = torch.tanh(x_t)
        action = y_t * self.action_scale + self.action_bias
        log_prob = -0.5 * eps.pow(2) - log_std - 0.5 * math.log(2 * math.pi)  # Normal(mean, std).log_prob(x_t)
        log_prob = log_prob - torch.log(self.action_scale * (1 - y_t.pow(2)) + 1e-6)  # Enforcing action bound
        return action, log_prob.sum(-1)

    @torch.inference_mode()
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """Actions for the envs: get_action's sample (the same random draws) without its log-probability, or
        tanh(mean) when `deterministic`; float32 numpy in, numpy out."""
        mean, log_std = self(torch.as_tensor(obs, dtype=torch.float32, device=self.action_scale.device))
        x_t = mean if deterministic else mean + log_std.exp() * torch.randn_like(mean)
        return (torch.tanh(x_t) * self.action_scale + self.action_bias).cpu().numpy()


# ALGO LOGIC: losses, pure functions of one minibatch (so `--compile` can compile them and a test can check them)
def critic_loss(actor: Actor, qf: TwinQ, qf_target: TwinQ, data: tuple[torch.Tensor, ...], alpha: torch.Tensor, gamma: float,
                hidden_dtype=torch.float32):  # fmt: skip
    """Soft Bellman error of both critics, summed (CleanRL's qf_loss = qf1_loss + qf2_loss), and its metrics."""
    obs, next_obs, actions, rewards, terminations = data
    with torch.no_grad():
        next_actions, next_log_pi = actor.get_action(next_obs, hidden_dtype)
        qf_next_target = qf_target(next_obs, next_actions, hidden_dtype=hidden_dtype).min(0).values - alpha * next_log_pi
        next_q_value = rewards + (1 - terminations) * gamma * qf_next_target
    qf_values = qf(obs, actions, hidden_dtype=hidden_dtype)  # [2, B]
    qf_losses = (qf_values - next_q_value).pow(2).mean(1)
    qf_loss = qf_losses.sum()
    metrics = {"qf1_values": qf_values[0].mean(), "qf2_values": qf_values[1].mean(), "qf1_loss": qf_losses[0],
               "qf2_loss": qf_losses[1], "qf_loss": qf_losses.mean()}  # fmt: skip
    return qf_loss, {k: v.detach() for k, v in metrics.items()}


def actor_alpha_loss(actor: Actor, qf: TwinQ, obs: torch.Tensor, log_alpha: torch.Tensor, alpha: torch.Tensor,
                     target_entropy: float, hidden_dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Actor loss, and the entropy-temperature loss from the same log-probabilities (one actor pass, not two)."""
    pi, log_pi = actor.get_action(obs, hidden_dtype)
    min_qf_pi = qf(obs, pi, True, hidden_dtype).min(0).values  # gradients reach the actions, not the critic weights
    actor_loss = (alpha * log_pi - min_qf_pi).mean()
    alpha_loss = (-log_alpha.exp() * (log_pi.detach() + target_entropy)).mean()
    return actor_loss, alpha_loss


def compile_losses():
    """`--compile`: both loss functions through torch.compile, drawing their noise from torch's generator as in eager
    mode (inductor's own generator would give another run for the same seed)."""
    torch._inductor.config.fallback_random = True
    return torch.compile(critic_loss), torch.compile(actor_alpha_loss)


def validate(args: Args) -> None:
    """Bad input: exit 2 with the flag and the fix, before any env or process group starts (same on every rank)."""
    if not args.exp_name.strip():
        fail("--exp-name", "got an empty name; give one (it is part of the run directory's name), or omit the flag")
    for flag, value, low in [
        ("--num-envs", args.num_envs, 1),
        ("--seed", args.seed, 0),
        ("--per-rank-buffer-size", args.per_rank_buffer_size, args.num_envs),
        ("--action-repeat", args.action_repeat, 1),
        ("--per-rank-batch-size", args.per_rank_batch_size, 1),
        ("--policy-frequency", args.policy_frequency, 1),
        ("--target-network-frequency", args.target_network_frequency, 1),
        ("--keep-checkpoints", args.keep_checkpoints, 1),
        ("--torch-threads", args.torch_threads, 1),
        ("--log-every", args.log_every, 1),
        ("--total-steps", args.total_steps, 1),
        ("--learning-starts", args.learning_starts, 0),
        ("--per-rank-pretrain-steps", args.per_rank_pretrain_steps, 0),
        ("--checkpoint-every", args.checkpoint_every, 0),
        ("--eval-episodes", args.eval_episodes, 0),
    ]:
        if value < low:
            fail(flag, f"got {value}; it must be at least {low}")
    if args.seed >= 2**31:
        fail("--seed", f"got {args.seed}; it must be below 2**31 (NumPy's seeds are 32-bit, and each rank adds its rank)")
    if args.max_episode_steps is not None and args.max_episode_steps < 1:
        fail("--max-episode-steps", f"got {args.max_episode_steps}; give a positive number of policy steps, or omit it")
    if not 0 <= args.replay_ratio <= 10_000:  # gradient steps per policy step
        fail("--replay-ratio", f"got {args.replay_ratio}; use 0 (never train) or a positive ratio up to 10000, such as 1/4")
    for flag, value in [("--gamma", args.gamma), ("--tau", args.tau)]:
        if not 0 < value <= 1:
            fail(flag, f"got {value}; it must be in (0, 1]")
    for flag, value in [("--policy-lr", args.policy_lr), ("--q-lr", args.q_lr)]:
        if not 0 < value < math.inf:
            fail(flag, f"got {value}; it must be positive and finite")
    if not 0 <= args.alpha < math.inf:
        fail("--alpha", f"got {args.alpha}; it must be 0 or more, and finite")
    P = args.world_size * args.num_envs
    if args.total_steps < P:
        fail(
            "--total-steps",
            f"{args.total_steps} is less than one iteration of {P} policy steps "
            f"({args.world_size} process(es) x {args.num_envs} env(s)); use at least {P}",
        )
    check_run_dir(args.run_name, args.resume)
    if args.capture_video:
        if args.eval_episodes == 0:
            fail("--capture-video", "records the evaluation episodes; give `--eval-episodes 1` or more")
        try:
            import moviepy  # noqa: F401
        except ImportError:
            fail("--capture-video", "recording needs moviepy: `pip install moviepy`")
    check_tracking(args.track)
    if args.capture_video:
        os.environ.setdefault("MUJOCO_GL", "egl")  # headless MuJoCo rendering; must be set before mujoco is imported
    obs_space, space = check_env_id(args.env_id)
    if not isinstance(space, gym.spaces.Box):
        fail(
            "--env-id",
            f"SAC here needs a continuous (Box) action space; {args.env_id} has {space}. "
            "Use a continuous-action env such as Pendulum-v1 or HalfCheetah-v5",
        )
    if len(space.shape) != 1:
        fail("--env-id", f"SAC here needs a 1-D Box action space; {args.env_id} has shape {space.shape}. "
             "Wrap the env to flatten its actions")  # fmt: skip
    if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
        fail(
            "--env-id",
            f"SAC squashes actions with tanh and needs finite action bounds; {args.env_id} has {space}. "
            "Wrap it in a gymnasium.ActionWrapper whose action_space is a bounded Box (mapped into the env's actions)",
        )
    largest = np.abs([space.low, space.high]).max()
    if largest > np.sqrt(np.finfo(np.float32).max):  # absurd: Adam squares gradients that grow with them (less may diverge)
        fail("--env-id", f"{args.env_id}'s action bounds reach {largest:.0e}: the critics' gradients overflow float32 "
             "at that scale; wrap the env in gymnasium.wrappers.RescaleAction")  # fmt: skip
    unlimited = args.max_episode_steps is None and gym.spec(args.env_id.split(":")[-1]).max_episode_steps is None
    if args.eval_episodes and unlimited:
        warn(f"{args.env_id} has no time limit: each of the {args.eval_episodes} evaluation episodes at the end runs until "
             f"the env ends it, for at most {EVAL_STEP_CAP} policy steps; bound them with --max-episode-steps")  # fmt: skip
    step_bytes = 4 * (2 * gym.spaces.flatdim(obs_space) + space.shape[0] + 2)  # float32 obs, next_obs, action, reward, done
    check_replay_fits(args.per_rank_buffer_size, step_bytes, args.cuda)  # on the GPU with --cuda
    if args.capture_video:  # render one frame now rather than fail after training
        try:
            env = make_env(args.env_id, args.action_repeat, args.max_episode_steps, "rgb_array")()
            env.reset(seed=args.seed)
            env.render()
            env.close()
        except Exception as e:
            fail("--capture-video", f"cannot render {args.env_id} as rgb_array ({type(e).__name__}: {e})")


if __name__ == "__main__":
    interrupt_cleanly()  # first: Ctrl-C while the env is checked stops with one line too
    with contextlib.nullcontext() if is_main_process() else contextlib.redirect_stderr(io.StringIO()):
        args = tyro.cli(Args)  # under torchrun rank 0 alone prints a parse error
    args.world_size = int(os.environ.get("WORLD_SIZE", "1"))  # derived, not a flag
    validate(args)
    print_every = env_seconds("STEPRL_PRINT_EVERY", 30)  # seconds between progress lines when stderr is not a terminal

    # TRY NOT TO MODIFY: processes, run directory, plan, tracking, seeding
    rank, local_rank, world_size, device = setup_distributed(args.cuda, args.torch_threads)
    m, P = args.num_envs, world_size * args.num_envs
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
        for flag, every in cadences:
            if every % P and every != getattr(Args, flag):  # sheeprl warns alike (here not of a default nobody chose)
                warn(f"--{flag.replace('_', '-')} {every} is not a multiple of {P} policy steps per iteration; it happens at "
                     "the first iteration past each multiple")  # fmt: skip
        if plan["training_iterations"] == 0:
            warn(f"--learning-starts {args.learning_starts} covers the whole run: no training will happen")
        print(format_plan(plan, args.replay_ratio, args.per_rank_pretrain_steps, args.action_repeat), flush=True)
        print(f"run directory: {run_dir}; device: {device}; torch threads: {torch.get_num_threads()}", flush=True)
        resumed_step = checkpoint[0]["iteration"] * P if checkpoint else -1
    seed_everything(args.seed + rank, args.torch_deterministic)

    # env setup
    env_fns = [make_env(args.env_id, args.action_repeat, args.max_episode_steps) for _ in range(m)]
    vector_env = gym.vector.AsyncVectorEnv if args.async_envs else gym.vector.SyncVectorEnv
    envs = vector_env(env_fns, autoreset_mode=AutoresetMode.SAME_STEP)
    obs_dim, act_dim = envs.single_observation_space.shape[0], envs.single_action_space.shape[0]
    low, high = envs.single_action_space.low, envs.single_action_space.high
    action_rng = np.random.default_rng(args.seed + rank)  # uniform random actions of the pre-fill

    # ALGO LOGIC: networks, optimizers, buffer (parameters start identical on every rank: same seed)
    torch.manual_seed(args.seed)
    actor = Actor(obs_dim, act_dim, low, high).to(device)
    qf = TwinQ(obs_dim, act_dim).to(device)
    qf_target = TwinQ(obs_dim, act_dim).to(device)
    qf_target.load_state_dict(qf.state_dict())
    torch.manual_seed(args.seed + rank)
    q_optimizer = torch.optim.Adam(qf.parameters(), lr=args.q_lr, fused=True)  # fused: one kernel for all tensors
    target_entropy = -float(act_dim)
    log_alpha = torch.tensor(0.0, device=device, requires_grad=True)  # alpha 1 at the start; unused with --no-autotune
    # the actor and the temperature (CleanRL's q_lr) share one Adam as two parameter groups: one step call per actor
    # update; without --autotune log_alpha never gets a gradient, and Adam skips it
    actor_optimizer = torch.optim.Adam(
        [{"params": actor.parameters()}, {"params": [log_alpha], "lr": args.q_lr}], lr=args.policy_lr, fused=True
    )
    rb = ReplayBuffer(args.per_rank_buffer_size, obs_dim, act_dim, device)

    # TRY NOT TO MODIFY: counters (per rank), restored from a checkpoint when resuming
    ratio = Ratio(args.replay_ratio, m, args.per_rank_pretrain_steps)
    start_iteration, local_policy_steps, local_env_steps, local_episodes = 0, 0, 0, 0
    window = [0.0, 0.0, 0.0]  # sum of returns, sum of lengths, episodes since the last log (this rank)
    if checkpoint is not None:
        shared, local = checkpoint
        load_states({"actor": actor, "qf": qf, "qf_target": qf_target, "q_optimizer": q_optimizer,
                     "actor_optimizer": actor_optimizer, "ratio": ratio}, shared)  # fmt: skip
        with torch.no_grad():
            log_alpha.copy_(shared["log_alpha"])
        start_iteration = shared["iteration"]
        local_policy_steps, local_env_steps, local_episodes = local["policy_steps"], local["env_steps"], local["episodes"]
        window = local["window"]
        if local["buffer"] is not None:
            rb.load_state_dict(local["buffer"])
        else:
            warn("the checkpoint holds no replay buffer (--no-checkpoint-buffer): training resumes on an empty one")
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
    check_env_output(args.env_id, [obs], start_iteration * P, rank)
    alpha = log_alpha.exp().detach() if args.autotune else torch.tensor(args.alpha, device=device)
    actor_params, qf_params, qf_target_params = list(actor.parameters()), list(qf.parameters()), list(qf_target.parameters())
    if args.compile:
        critic_loss, actor_alpha_loss = compile_losses()
    hidden_dtype = torch.bfloat16 if args.bf16 else torch.float32  # of the updates; acting and evaluation use float32
    if args.bf16 and device.type == "cpu" and not getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)():
        warn("--bf16: torch finds no native bfloat16 matmul on this CPU (avx512_bf16 or AMX); it may be slower than float32")

    # ALGO LOGIC: one gradient step
    def update(data: tuple[torch.Tensor, ...], update_actor: bool, update_target: bool) -> dict[str, torch.Tensor]:
        global alpha
        qf_loss, metrics = critic_loss(actor, qf, qf_target, data, alpha, args.gamma, hidden_dtype)
        q_optimizer.zero_grad(set_to_none=False)
        qf_loss.backward()
        all_reduce_grads(qf_params, world_size)
        q_optimizer.step()
        if update_actor:
            for _ in range(args.policy_frequency):  # compensate for the delay by doing `policy_frequency` updates
                actor_loss, alpha_loss = actor_alpha_loss(actor, qf, data[0], log_alpha, alpha, target_entropy, hidden_dtype)
                actor_optimizer.zero_grad(set_to_none=False)
                (actor_loss + alpha_loss if args.autotune else actor_loss).backward()
                all_reduce_grads(actor_params + ([log_alpha] if args.autotune else []), world_size)
                actor_optimizer.step()
                metrics["actor_loss"] = actor_loss.detach()
                if args.autotune:
                    alpha = log_alpha.exp().detach()
                    metrics["alpha_loss"] = alpha_loss.detach()
        if update_target:
            with torch.no_grad():
                torch._foreach_lerp_(qf_target_params, qf_params, args.tau)
        metrics["alpha"] = alpha
        return metrics

    def save(iteration: int) -> None:
        shared = {
            "world_size": world_size,
            "iteration": iteration,
            "args": config_dict(args),
            "log_alpha": log_alpha.detach(),
            "actor": actor.state_dict(),
            "qf": qf.state_dict(),
            "qf_target": qf_target.state_dict(),
            "q_optimizer": q_optimizer.state_dict(),
            "actor_optimizer": actor_optimizer.state_dict(),
            "ratio": ratio.state_dict(),
        }
        local = {
            "policy_steps": local_policy_steps,
            "env_steps": local_env_steps,
            "episodes": local_episodes,
            "window": window,
            "rng": rng_state(),
            "action_rng": action_rng.bit_generator.state,
            "buffer": rb.state_dict() if args.checkpoint_buffer else None,
        }
        path = save_checkpoint(ckpt_dir, iteration * P, shared, local, rank, world_size, args.keep_checkpoints)
        if rank == 0:
            print(f"checkpoint: {path}", flush=True)

    # TRY NOT TO MODIFY: start the loop
    metrics, last_return = {}, float("nan")
    start_time, start_step, last_print = time.time(), start_iteration * P, time.time()  # SPS: from here, or from training
    progress = tqdm(total=N * P, initial=start_iteration * P, unit="step", disable=None if rank == 0 else True)
    for iteration in range(start_iteration + 1, N + 1):
        policy_step = iteration * P  # global policy steps once this iteration's env step is done
        if iteration == R + 1 and R > start_iteration:  # SPS leaves out the random pre-fill
            start_time, start_step = time.time(), (iteration - 1) * P

        # ALGO LOGIC: put action logic here
        if iteration <= R:
            actions = action_rng.uniform(low, high, (m, act_dim)).astype(np.float32)
        else:
            actions = actor.act(obs)
            check_env_output(args.env_id, [], policy_step, rank, actions)  # diverged: stop before the env sees it

        # TRY NOT TO MODIFY: execute the game and log data.
        next_obs, rewards, terminations, truncations, infos = envs.step(actions)
        # --- SHARED: step counting ---
        done = terminations | truncations
        local_policy_steps += m
        local_env_steps += env_steps_taken(infos, done)
        for episodic_return, episodic_length in finished_episodes(infos, done):
            window[0], window[1], window[2] = window[0] + episodic_return, window[1] + episodic_length, window[2] + 1
            local_episodes += 1
        # --- END SHARED ---

        # TRY NOT TO MODIFY: save data to replay buffer; handle `final_obs` (same-step autoreset)
        real_next_obs = next_obs.copy()
        if done.any():
            real_next_obs[done] = np.stack(infos["final_obs"][done])
        check_env_output(args.env_id, [next_obs, real_next_obs, rewards], policy_step, rank)
        rb.add(obs, real_next_obs, actions, rewards, terminations)

        # TRY NOT TO MODIFY: CRUCIAL step easy to overlook
        obs = next_obs

        # ALGO LOGIC: training, `ratio()` gradient steps per training iteration
        if iteration > R:
            todo = ratio()
            for first in range(0, todo, 64):  # 64 minibatches at a time: a large pretrain count never fills memory
                for j, data in enumerate(rb.sample(min(64, todo - first), args.per_rank_batch_size), first):
                    g = ratio.gradient_steps - todo + j + 1  # this rank's gradient step number, 1-based
                    metrics = metrics | update(data, g % args.policy_frequency == 0, g % args.target_network_frequency == 0)
                if ratio.pretrain and ratio.training_iterations == 1 and rank == 0:  # a pretrain: its count, not a frozen bar
                    done_steps = f"{min(first + 64, todo)}/{todo} gradient steps at policy step {policy_step}"
                    progress.set_postfix_str(done_steps)
                    if progress.disable and time.time() - last_print > print_every:
                        last_print = time.time()
                        print(f"training: {done_steps}", flush=True)
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

        # TRY NOT TO MODIFY: checkpoint at every multiple of --checkpoint-every global policy steps, and at the end
        every = args.checkpoint_every
        if every and (policy_step // every > (policy_step - P) // every or iteration == N):
            save(iteration)
    progress.close()
    envs.close()

    # TRY NOT TO MODIFY: the ledger (actual counters summed over ranks must equal the plan)
    checksum = sum(p.detach().double().sum().item() for p in actor_params + qf_params + [log_alpha])
    gathered = all_gather(
        {
            "env_steps": local_env_steps,
            "episodes": local_episodes,
            "policy_steps": local_policy_steps,
            "gradient_steps": ratio.gradient_steps,
            "checksum": checksum,
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
        }
        ledger = {"plan": plan, "actual": actual, "replay_ratio": str(args.replay_ratio), "action_repeat": args.action_repeat}
        errors = ledger_errors(plan, actual)
        # --- SHARED: ledger write ---
        eval_error = None if all(map(math.isfinite, actual["param_checksums"])) else (  # diverged after its last action
            "training diverged: the parameters are not finite after the last gradient step; lower the learning rates "
            "(no evaluation; the ledger is in steps.json)")  # fmt: skip
        with open(os.path.join(run_dir, "steps.json"), "w") as f:  # written before evaluation, which may fail
            json.dump(ledger, f, indent=2)
        # --- END SHARED ---

        # evaluation: deterministic actions on rank 0, not counted in the ledger's training steps
        if args.eval_episodes > 0 and eval_error is None:
            try:
                render_mode = "rgb_array" if args.capture_video else None
                eval_env = make_env(args.env_id, args.action_repeat, args.max_episode_steps, render_mode)()
                limited = args.max_episode_steps is not None or getattr(eval_env.spec, "max_episode_steps", None) is not None
                if args.capture_video:  # every episode, whole; at most 1,000 frames of an unlimited one (kept in memory)
                    eval_env = gym.wrappers.RecordVideo(eval_env, os.path.join(run_dir, "videos"), lambda _: True,
                                                        name_prefix="eval", video_length=0 if limited else 1000)  # fmt: skip
                returns, lengths = [], []
                for ep in range(args.eval_episodes):
                    eval_obs, _ = eval_env.reset(seed=args.seed + 1_000_000 + ep)
                    ep_return = 0.0
                    for length in range(1, sys.maxsize if limited else EVAL_STEP_CAP + 1):
                        action = actor.act(np.asarray(eval_obs)[None], deterministic=True)[0]  # lists too, as in training
                        eval_obs, reward, terminated, truncated, _ = eval_env.step(action)
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
        if eval_error is None and args.eval_episodes > 0 and args.capture_video and args.track:  # as CleanRL's monitor_gym
            import wandb

            try:
                video = wandb.Video(os.path.join(run_dir, "videos", "eval-episode-0.mp4"), format="mp4")
                wandb.log({"videos/eval": video, "global_step": plan["policy_steps"]})
            except Exception as e:  # the evaluation's numbers are in steps.json: a failed upload only warns
                warn(f"--track: the evaluation video did not reach W&B ({type(e).__name__}: {e})")
        # --- SHARED: run end ---
        print(json.dumps(ledger, indent=2), flush=True)
        close_tracking(writer, args.track)
        if errors:
            print("LEDGER MISMATCH (a bug in the step accounting):\n  " + "\n  ".join(errors), file=sys.stderr, flush=True)
        if eval_error:
            print(f"error: {eval_error}", file=sys.stderr, flush=True)
    teardown(final_exit_code(1 if rank == 0 and (errors or eval_error) else 0, world_size))
    # --- END SHARED ---
