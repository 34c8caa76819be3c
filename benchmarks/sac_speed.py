"""SAC speed on CPU: steprl's gradient step and training loop against a CleanRL-equivalent one, and the compute floor.

    python benchmarks/sac_speed.py                       # about 15 minutes on 2 cores
    python benchmarks/sac_speed.py --compile             # also the --compile variant (a few minutes more)

Writes `<out>/sac_speed.{md,json}` (by default the committed `benchmarks/results/speed/`). Three measurements, all at
SAC's defaults on HalfCheetah-v5 (obs 17, act 6, batch 256, 256-unit MLPs, one gradient step per policy step):
1. Gradient step (micro): the CleanRL-equivalent update (two nn.Linear critics, torch.distributions, a second actor pass
   for alpha, `.item()` per step, default Adam) against steprl's (the script's `critic_loss` / `actor_alpha_loss`, fused
   Adam, the script's update order; float32, and --bf16), interleaved so that load on a shared machine hits all alike.
   This process keeps freed memory in the heap as the scripts do (`keep_freed_memory`), CleanRL's update included:
   the micro benchmark compares the update code alone.
2. Compute floor: CleanRL's FLOPs per gradient step divided by the matmul rate measured at exactly its GEMM shapes.
3. Training loop (end to end), policy steps per second after the random pre-fill, every variant in its own process:
   `algos/sac.py` (float32, --bf16), the CleanRL-equivalent loop (numpy replay buffer, one env, the update of 1.) as
   CleanRL's script runs it (glibc's default allocator behaviour), and the same loop with steprl's allocator setting
   (`cleanrl_keep_memory`, to show that setting's share). The variants alternate, `--loop-repeats` times; each one's
   ratio to CleanRL is taken against the CleanRL run of the same repeat; the median of those ratios is reported, and
   the ratio of the medians.
The CleanRL-equivalent code here is our own restatement of CleanRL's `sac_continuous_action.py` update for timing only.
"""

import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro

ROOT = Path(__file__).resolve().parents[1]
OBS, ACT, B, H = 17, 6, 256, 256


@dataclass
class Args:
    threads: tuple[int, ...] = (1, 2)
    """torch intra-op thread counts to measure"""
    grad_steps: int = 200
    """gradient steps per timing repetition (micro benchmark)"""
    repeats: int = 9
    """interleaved repetitions per variant, each after a fresh floor measurement (the median is reported)"""
    loop_steps: int = 1500
    """training policy steps per end-to-end measurement (after a 5000-step random pre-fill, as the defaults)"""
    loop_repeats: int = 3
    """alternating repetitions of the end-to-end measurements (the median is reported)"""
    compile: bool = False
    """also measure `--compile` (torch.compile of the loss functions)"""
    out: str = str(ROOT / "benchmarks" / "results" / "speed")
    """output directory (default: the committed benchmarks/results/speed/); the CleanRL loops run in it (MuJoCo may
    leave its MUJOCO_LOG.TXT there)"""


def load_sac():
    spec = importlib.util.spec_from_file_location("sac_continuous", ROOT / "algos" / "sac_continuous.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- the CleanRL-equivalent update (reference for timing)
class SoftQNetwork(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(OBS + ACT, H), nn.Linear(H, H), nn.Linear(H, 1)

    def forward(self, x, a):
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(torch.cat([x, a], 1))))))


class CleanActor(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(OBS, H), nn.Linear(H, H)
        self.fc_mean, self.fc_logstd = nn.Linear(H, ACT), nn.Linear(H, ACT)

    def get_action(self, x):
        x = F.relu(self.fc2(F.relu(self.fc1(x))))
        mean, log_std = self.fc_mean(x), torch.tanh(self.fc_logstd(x))
        log_std = -5 + 0.5 * 7 * (log_std + 1)
        normal = torch.distributions.Normal(mean, log_std.exp())
        x_t = normal.rsample()
        y_t = torch.tanh(x_t)
        log_prob = (normal.log_prob(x_t) - torch.log(1 - y_t.pow(2) + 1e-6)).sum(1, keepdim=True)
        return y_t, log_prob, torch.tanh(mean)


def make_cleanrl_update():
    actor, qf1, qf2, qf1_t, qf2_t = CleanActor(), SoftQNetwork(), SoftQNetwork(), SoftQNetwork(), SoftQNetwork()
    qf1_t.load_state_dict(qf1.state_dict())
    qf2_t.load_state_dict(qf2.state_dict())
    q_opt = torch.optim.Adam(list(qf1.parameters()) + list(qf2.parameters()), lr=1e-3)
    a_opt = torch.optim.Adam(actor.parameters(), lr=3e-4)
    log_alpha = torch.zeros(1, requires_grad=True)
    alpha_opt = torch.optim.Adam([log_alpha], lr=1e-3)
    state = {"alpha": 1.0}

    def update(step, data):
        obs, next_obs, actions, rewards, dones = data
        with torch.no_grad():
            next_a, next_log_pi, _ = actor.get_action(next_obs)
            target = torch.min(qf1_t(next_obs, next_a), qf2_t(next_obs, next_a)) - state["alpha"] * next_log_pi
            next_q = rewards.flatten() + (1 - dones.flatten()) * 0.99 * target.view(-1)
        qf_loss = F.mse_loss(qf1(obs, actions).view(-1), next_q) + F.mse_loss(qf2(obs, actions).view(-1), next_q)
        q_opt.zero_grad()
        qf_loss.backward()
        q_opt.step()
        if step % 2 == 0:
            for _ in range(2):
                pi, log_pi, _ = actor.get_action(obs)
                actor_loss = (state["alpha"] * log_pi - torch.min(qf1(obs, pi), qf2(obs, pi))).mean()
                a_opt.zero_grad()
                actor_loss.backward()
                a_opt.step()
                with torch.no_grad():
                    _, log_pi, _ = actor.get_action(obs)
                alpha_loss = (-log_alpha.exp() * (log_pi + (-ACT))).mean()
                alpha_opt.zero_grad()
                alpha_loss.backward()
                alpha_opt.step()
                state["alpha"] = log_alpha.exp().item()
        with torch.no_grad():
            for net, target_net in ((qf1, qf1_t), (qf2, qf2_t)):
                for p, tp in zip(net.parameters(), target_net.parameters()):
                    tp.data.copy_(0.005 * p.data + 0.995 * tp.data)
        return qf_loss.item() if step % 100 == 0 else None  # CleanRL logs every 100 steps

    return update, actor


def make_steprl_update(sac, compiled: bool, bf16: bool = False):
    """The script's update, step for step (see `update()` in algos/sac_continuous.py)."""
    dtype = torch.bfloat16 if bf16 else torch.float32
    actor = sac.Actor(OBS, ACT, -np.ones(ACT), np.ones(ACT))
    qf, qf_target = sac.TwinQ(OBS, ACT), sac.TwinQ(OBS, ACT)
    qf_target.load_state_dict(qf.state_dict())
    q_opt = torch.optim.Adam(qf.parameters(), lr=1e-3, fused=True)
    log_alpha = torch.tensor(0.0, requires_grad=True)
    a_opt = torch.optim.Adam([{"params": actor.parameters()}, {"params": [log_alpha], "lr": 1e-3}], lr=3e-4, fused=True)
    critic_loss = torch.compile(sac.critic_loss) if compiled else sac.critic_loss
    actor_alpha_loss = torch.compile(sac.actor_alpha_loss) if compiled else sac.actor_alpha_loss
    qf_params, qf_target_params = list(qf.parameters()), list(qf_target.parameters())
    state = {"alpha": log_alpha.exp().detach()}

    def update(step, data):
        data = (data[0], data[1], data[2], data[3].view(-1), data[4].view(-1))
        qf_loss, metrics = critic_loss(actor, qf, qf_target, data, state["alpha"], 0.99, dtype)
        q_opt.zero_grad(set_to_none=False)
        qf_loss.backward()
        q_opt.step()
        if step % 2 == 0:
            for _ in range(2):
                actor_loss, alpha_loss = actor_alpha_loss(actor, qf, data[0], log_alpha, state["alpha"], -float(ACT), dtype)
                a_opt.zero_grad(set_to_none=False)
                (actor_loss + alpha_loss).backward()
                a_opt.step()
                state["alpha"] = log_alpha.exp().detach()
        with torch.no_grad():
            torch._foreach_lerp_(qf_target_params, qf_params, 0.005)
        return metrics

    return update, actor


def random_batch():
    return (torch.randn(B, OBS), torch.randn(B, OBS), torch.rand(B, ACT) * 2 - 1, torch.randn(B, 1), torch.zeros(B, 1))


# ---------------------------------------------------------------- compute floor
def cleanrl_gemms() -> list[tuple[int, int, int, int]]:
    """(count, M, K, N) of every matrix multiply in one CleanRL gradient step (forward and backward)."""
    critic = [(B, OBS + ACT, H), (B, H, H), (B, H, 1)]
    actor = [(B, OBS, H), (B, H, H), (B, H, ACT), (B, H, ACT)]

    def fwd(layers, n):
        return [(n, m, k, nn_) for m, k, nn_ in layers]

    def bwd(layers, n):  # input gradient and weight gradient per layer (CleanRL also computes the first layer's dX)
        return [(n, m, nn_, k) for m, k, nn_ in layers] + [(n, k, m, nn_) for m, k, nn_ in layers]

    # per gradient step: target (actor fwd + 2 target critics fwd), 2 critics fwd+bwd; every other step, 2 actor updates
    # (actor fwd, 2 critics fwd, backward through both critics and the actor) and 2 alpha passes (actor fwd):
    # on average 1 actor update and 1 alpha pass per gradient step.
    return (fwd(actor, 1) + fwd(critic, 2) + fwd(critic, 2) + bwd(critic, 2)
            + fwd(actor, 1) + fwd(critic, 2) + bwd(critic, 2) + bwd(actor, 1) + fwd(actor, 1))  # fmt: skip


def compute_floor(repeats: int) -> dict:
    gemms = cleanrl_gemms()
    flops = sum(2 * n * m * k * nn_ for n, m, k, nn_ in gemms)
    mats = [(torch.randn(m, k), torch.randn(k, nn_)) for _, m, k, nn_ in gemms]
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(20):
            for (n, *_s), (a, b) in zip(gemms, mats):
                for _ in range(n):
                    torch.mm(a, b)
        times.append((time.perf_counter() - t) / 20)
    floor = float(np.median(times))
    big = torch.randn(256, 256)
    t = time.perf_counter()
    for _ in range(200):
        torch.mm(big, big)
    square_rate = 2 * 256**3 * 200 / (time.perf_counter() - t)
    return {"cleanrl_gflop_per_step": flops / 1e9, "floor_ms": floor * 1e3, "gemm_gflops_at_these_shapes": flops / floor / 1e9,
            "gemm_gflops_256_square": square_rate / 1e9}  # fmt: skip


def time_updates(variants: dict, grad_steps: int, repeats: int) -> dict:
    """Each variant's ms per gradient step, and its ratio to the compute floor measured just before the same repetition
    (the host's matmul rate drifts by 10-30% within minutes: a floor measured once would skew every ratio)."""
    data = random_batch()
    first = {}
    for name, (update, _) in variants.items():  # warm-up; for the compiled variant this is its start-up (compilation)
        t = time.perf_counter()
        for step in range(20):
            update(step, data)
        first[name] = time.perf_counter() - t
    wall, cpu, floors = {k: [] for k in variants}, {k: [] for k in variants}, []
    for _ in range(repeats):
        floors.append(compute_floor(1)["floor_ms"])
        for name, (update, _) in variants.items():
            t, c = time.perf_counter(), time.process_time()
            for step in range(grad_steps):
                update(step, data)
            wall[name].append((time.perf_counter() - t) / grad_steps * 1e3)
            cpu[name].append((time.process_time() - c) / grad_steps * 1e3)
    x_floor = {k: [w / f for w, f in zip(wall[k], floors)] for k in variants}
    return {k: {"ms_per_step": float(np.median(wall[k])), "cpu_ms_per_step": float(np.median(cpu[k])),
                "x_floor": float(np.median(x_floor[k])), "x_floor_range": [min(x_floor[k]), max(x_floor[k])],
                "first_20_steps_s": first[k]} for k in variants}  # fmt: skip


# ---------------------------------------------------------------- end to end
def cleanrl_loop_sps(loop_steps: int) -> float:
    """CleanRL's loop shape: one env, numpy buffer, 5000 random steps, then one update per step; SPS after pre-fill."""
    update, actor = make_cleanrl_update()
    env = gym.wrappers.RecordEpisodeStatistics(gym.make("HalfCheetah-v5"))
    obs, _ = env.reset(seed=1)
    size = 5000 + loop_steps
    buf = {k: np.zeros((size, d), np.float32) for k, d in [("o", OBS), ("n", OBS), ("a", ACT), ("r", 1), ("d", 1)]}
    start = None
    for step in range(size):
        if step == 5000:
            start = time.perf_counter()
        if step < 5000:
            action = env.action_space.sample()
        else:
            with torch.no_grad():
                action = actor.get_action(torch.as_tensor(obs[None], dtype=torch.float32))[0][0].numpy()
        next_obs, reward, term, trunc, _ = env.step(action)
        for k, v in zip("onard", (obs, next_obs, action, reward, term)):
            buf[k][step] = v
        obs = env.reset()[0] if term or trunc else next_obs
        if step >= 5000:
            idx = np.random.randint(0, step + 1, B)
            update(step, tuple(torch.as_tensor(buf[k][idx]) for k in "onard"))
    return loop_steps / (time.perf_counter() - start)


def cleanrl_loop_sps_subprocess(loop_steps: int, threads: int, keep_memory: bool, cwd: str) -> float:
    """`cleanrl_loop_sps` in a fresh process in `cwd`, with glibc's default allocator behaviour unless `keep_memory`."""
    code = (f"import sys, torch; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import sac_speed; "
            f"torch.set_num_threads({threads}); "
            + ("from steprl.utils import keep_freed_memory; keep_freed_memory(); " if keep_memory else "")
            + f"print(sac_speed.cleanrl_loop_sps({loop_steps}))")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, check=True)
    return float(proc.stdout.split()[-1])


def steprl_loop_sps(loop_steps: int, threads: int, flags: list[str]) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(ROOT / "algos" / "sac.py"), "--total-steps", str(5000 + loop_steps), "--eval-episodes", "0",
               "--torch-threads", str(threads), "--log-every", str(5000 + loop_steps), "--run-name", "speed",
               "--no-cuda"] + flags  # fmt: skip
        env = dict(os.environ, WANDB_MODE="disabled")
        subprocess.run(cmd, cwd=tmp, env=env, check=True, capture_output=True)
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(os.path.join(tmp, "runs", "speed"))
        acc.Reload()
        return float(acc.Scalars("charts/SPS")[-1].value)  # policy steps/s since training began (pre-fill excluded)


def hardware() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    load = os.getloadavg()[0]
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}, no GPU; "
            f"1-minute load average at the start {load:.2f}")  # fmt: skip


def write_report(results: dict, args: Args) -> None:
    lines = ["# SAC speed on CPU (HalfCheetah-v5 defaults: batch 256, replay ratio 1, 1 env)", "",
             f"Hardware: {results['hardware']}.", "",
             f"Command: `{' '.join(['python benchmarks/sac_speed.py'] + sys.argv[1:])}`", "",
             "| threads | variant | ms / gradient step | CPU ms / gradient step | x floor | policy steps/s | vs CleanRL "
             "(min-max) | ratio of medians | first 20 gradient steps (s) |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for threads, r in results["by_threads"].items():
        for name, loop in r["loop"].items():
            u = r["update"].get(name)  # none for cleanrl_keep_memory: its update is cleanrl's
            x_floor = f"{u['x_floor']:.2f} ({u['x_floor_range'][0]:.2f}-{u['x_floor_range'][1]:.2f})" if u else ""
            update = f"{u['ms_per_step']:.2f} | {u['cpu_ms_per_step']:.2f} | {x_floor}" if u else "(as cleanrl) | | "
            first = f"{u['first_20_steps_s']:.2f}" if u else ""
            of_medians = loop["sps_median"] / r["loop"]["cleanrl"]["sps_median"]
            spread = f"{min(loop['vs_cleanrl']):.2f}-{max(loop['vs_cleanrl']):.2f}"
            lines.append(f"| {threads} | {name} | {update} | {loop['sps_median']:.1f} | {loop['vs_cleanrl_median']:.2f}x "
                         f"({spread}) | {of_medians:.2f}x | {first} |")  # fmt: skip
    lines += ["", "| threads | CleanRL GFLOP / step | GEMM GFLOP/s at its shapes | floor ms / step | GEMM GFLOP/s 256x256 |",
              "|---|---|---|---|---|"]  # fmt: skip
    for threads, r in results["by_threads"].items():
        f = r["floor"]
        lines.append(f"| {threads} | {f['cleanrl_gflop_per_step']:.3f} | {f['gemm_gflops_at_these_shapes']:.1f} | "
                     f"{f['floor_ms']:.2f} | {f['gemm_gflops_256_square']:.1f} |")  # fmt: skip
    lines += ["", "ms / gradient step: median over the interleaved repetitions of the micro benchmark (same batch, no env; "
              "this process keeps freed memory in the heap, for CleanRL's update too). x floor: each repetition's time "
              "divided by the compute floor measured just before it, median (min-max). Policy steps/s: the training loop "
              "after the 5,000-step random pre-fill, "
              "median over the alternating repeats, each variant in its own process; vs CleanRL: median (min-max) of the "
              "ratios to the CleanRL loop of the same repeat; ratio of medians: the two medians divided. "
              "cleanrl: the CleanRL-equivalent loop with glibc's default "
              "allocator behaviour, as CleanRL's script runs; cleanrl_keep_memory: the same loop with steprl's "
              "`keep_freed_memory`. First 20 gradient steps: the warm-up (with --compile, `steprl_compile`'s includes "
              "torch.compile's start-up). Floor: CleanRL's matmul FLOPs per gradient step at the matmul rate measured at "
              "exactly its shapes (the 256x256 rate is shown for reference)."]  # fmt: skip
    os.makedirs(args.out, exist_ok=True)
    Path(args.out, "sac_speed.json").write_text(json.dumps(results, indent=2))
    Path(args.out, "sac_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    args = tyro.cli(Args, description=__doc__)
    from steprl.utils import keep_freed_memory

    keep_freed_memory()  # as the scripts do (setup_distributed), for every update of the micro benchmark
    sac = load_sac()
    results = {"hardware": hardware(), "args": vars(args) | {"threads": list(args.threads)}, "by_threads": {}}
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"[{threads} thread(s)] compute floor and gradient steps...", flush=True)
        torch.manual_seed(0)
        variants = {"cleanrl": make_cleanrl_update(), "steprl": make_steprl_update(sac, False),
                    "steprl_bf16": make_steprl_update(sac, False, bf16=True)}  # fmt: skip
        if args.compile:
            variants["steprl_compile"] = make_steprl_update(sac, True)
        r = {"floor": compute_floor(args.repeats), "update": time_updates(variants, args.grad_steps, args.repeats)}
        print(f"[{threads} thread(s)] training loops...", flush=True)
        os.makedirs(args.out, exist_ok=True)  # the CleanRL loops' working directory, not the caller's
        loops = {"cleanrl": partial(cleanrl_loop_sps_subprocess, args.loop_steps, threads, False, args.out),
                 "cleanrl_keep_memory": partial(cleanrl_loop_sps_subprocess, args.loop_steps, threads, True, args.out),
                 "steprl": partial(steprl_loop_sps, args.loop_steps, threads, []),
                 "steprl_bf16": partial(steprl_loop_sps, args.loop_steps, threads, ["--bf16"])}  # fmt: skip
        if args.compile:
            loops["steprl_compile"] = partial(steprl_loop_sps, args.loop_steps, threads, ["--compile"])
        sps = {name: [] for name in loops}
        for repeat in range(args.loop_repeats):
            for name, measure in loops.items():
                sps[name].append(measure())
            print(f"  loop repeat {repeat + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in sps.items()), flush=True)
        ratios = {k: [a / b for a, b in zip(v, sps["cleanrl"])] for k, v in sps.items()}
        r["loop"] = {k: {"sps": v, "sps_median": float(np.median(v)), "vs_cleanrl": ratios[k],
                         "vs_cleanrl_median": float(np.median(ratios[k]))} for k, v in sps.items()}  # fmt: skip
        results["by_threads"][str(threads)] = r
        print(json.dumps(r, indent=2), flush=True)
        write_report(results, args)  # after every thread count, so a long run keeps what it measured
