"""The optimised SAC update (stacked twin critics, closed-form log-probabilities, no critic weight gradients in the
actor loss, one actor pass for alpha) computes the same losses and gradients as a straightforward CleanRL-style
update with two separate critics and torch.distributions, on the same batch and the same noise."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import load_script

sac = load_script("sac_continuous")
OBS, ACT, B = 5, 3, 64


class SoftQNetwork(nn.Module):
    """One critic as CleanRL writes it: three nn.Linear layers."""

    def __init__(self, w: list[torch.Tensor], b: list[torch.Tensor]):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = (nn.Linear(wi.shape[0], wi.shape[1]) for wi in w)
        with torch.no_grad():
            for layer, wi, bi in zip((self.fc1, self.fc2, self.fc3), w, b):
                layer.weight.copy_(wi.T)
                layer.bias.copy_(bi.reshape(-1))

    def forward(self, x, a):
        x = torch.cat([x, a], 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x))))).view(-1)


def split(qf):
    """Two SoftQNetworks holding the same weights as the stacked TwinQ."""
    return [SoftQNetwork([w[i] for w in qf.weights], [b[i] for b in qf.biases]) for i in range(2)]


def reference_action(actor, x, eps):
    mean, log_std = actor(x)
    std = log_std.exp()
    normal = torch.distributions.Normal(mean, std)
    x_t = mean + std * eps
    y_t = torch.tanh(x_t)
    log_prob = normal.log_prob(x_t) - torch.log(actor.action_scale * (1 - y_t.pow(2)) + 1e-6)
    return y_t * actor.action_scale + actor.action_bias, log_prob.sum(1)


def setup():
    torch.manual_seed(0)
    low, high = np.array([-1.0, -2.0, 0.0]), np.array([1.0, 2.0, 3.0])
    actor, qf, qf_target = sac.Actor(OBS, ACT, low, high), sac.TwinQ(OBS, ACT), sac.TwinQ(OBS, ACT)
    data = (torch.randn(B, OBS), torch.randn(B, OBS), torch.rand(B, ACT), torch.randn(B), (torch.rand(B) < 0.2).float())
    return actor, qf, qf_target, data


def test_twin_q_matches_two_separate_critics():
    actor, qf, _, data = setup()
    q = qf(data[0], data[2])
    q1, q2 = split(qf)
    assert q.shape == (2, B)
    torch.testing.assert_close(q[0], q1(data[0], data[2]))
    torch.testing.assert_close(q[1], q2(data[0], data[2]))


def test_critic_loss_and_gradients_match_reference():
    actor, qf, qf_target, (obs, next_obs, actions, rewards, terms) = setup()
    alpha, gamma = torch.tensor(0.3), 0.99
    torch.manual_seed(1)
    loss, metrics = sac.critic_loss(actor, qf, qf_target, (obs, next_obs, actions, rewards, terms), alpha, gamma)
    loss.backward()

    torch.manual_seed(1)
    eps = torch.randn(B, ACT)
    q1, q2 = split(qf)
    q1_t, q2_t = split(qf_target)
    with torch.no_grad():
        next_a, next_log_pi = reference_action(actor, next_obs, eps)
        target = torch.min(q1_t(next_obs, next_a), q2_t(next_obs, next_a)) - alpha * next_log_pi
        next_q = rewards + (1 - terms) * gamma * target
    qf1_loss = F.mse_loss(q1(obs, actions), next_q)
    qf2_loss = F.mse_loss(q2(obs, actions), next_q)
    (qf1_loss + qf2_loss).backward()

    torch.testing.assert_close(metrics["qf1_loss"], qf1_loss.detach())
    torch.testing.assert_close(metrics["qf2_loss"], qf2_loss.detach())
    torch.testing.assert_close(loss.detach(), (qf1_loss + qf2_loss).detach())
    for i, ref in enumerate((q1, q2)):
        for j, layer in enumerate((ref.fc1, ref.fc2, ref.fc3)):
            torch.testing.assert_close(qf.weights[j].grad[i], layer.weight.grad.T)
            torch.testing.assert_close(qf.biases[j].grad[i].reshape(-1), layer.bias.grad)
    assert all(p.grad is None for p in actor.parameters())  # the target is computed without the actor's graph


def test_actor_and_alpha_losses_and_gradients_match_reference():
    actor, qf, _, (obs, *_rest) = setup()
    log_alpha = torch.tensor(-0.5, requires_grad=True)
    alpha, target_entropy = log_alpha.exp().detach(), -float(ACT)
    torch.manual_seed(2)
    actor_loss, alpha_loss = sac.actor_alpha_loss(actor, qf, obs, log_alpha, alpha, target_entropy)
    (actor_loss + alpha_loss).backward()
    grads = [p.grad.clone() for p in actor.parameters()]
    assert all(p.grad is None for p in qf.parameters())  # no wasted critic weight gradients

    actor.zero_grad()
    ref_log_alpha = torch.tensor(-0.5, requires_grad=True)
    torch.manual_seed(2)
    eps = torch.randn(B, ACT)
    q1, q2 = split(qf)
    pi, log_pi = reference_action(actor, obs, eps)
    ref_actor_loss = (alpha * log_pi - torch.min(q1(obs, pi), q2(obs, pi))).mean()
    ref_alpha_loss = (-ref_log_alpha.exp() * (log_pi.detach() + target_entropy)).mean()
    ref_actor_loss.backward()
    ref_alpha_loss.backward()

    torch.testing.assert_close(actor_loss.detach(), ref_actor_loss.detach())
    torch.testing.assert_close(alpha_loss.detach(), ref_alpha_loss.detach())
    torch.testing.assert_close(log_alpha.grad, ref_log_alpha.grad)
    for g, p in zip(grads, actor.parameters()):
        torch.testing.assert_close(g, p.grad)


def test_action_bounds_and_acting_path():
    actor, _, _, (obs, *_rest) = setup()
    low, high = torch.tensor([-1.0, -2.0, 0.0]), torch.tensor([1.0, 2.0, 3.0])
    torch.manual_seed(1)
    action, log_prob = actor.get_action(obs)
    assert ((action >= low) & (action <= high)).all() and log_prob.shape == (B,)
    torch.manual_seed(1)
    acted = actor.act(obs.numpy())  # the envs' actions: get_action's sample, same random draws, no log-probability
    assert isinstance(acted, np.ndarray) and acted.dtype == np.float32
    np.testing.assert_array_equal(acted, action.detach().numpy())
    mean, _ = actor(obs)
    greedy = actor.act(obs.numpy(), deterministic=True)
    np.testing.assert_array_equal(greedy, actor.act(obs.numpy(), deterministic=True))  # noise-free
    torch.testing.assert_close(torch.from_numpy(greedy), torch.tanh(mean.detach()) * actor.action_scale + actor.action_bias)
    assert ((torch.from_numpy(greedy) >= low) & (torch.from_numpy(greedy) <= high)).all()


def test_replay_buffer_wraps_around_and_round_trips():
    rb = sac.ReplayBuffer(5, 2, 1, torch.device("cpu"))
    for i in range(4):  # 8 transitions into 5 slots: the oldest 3 are overwritten
        rb.add(np.full((2, 2), i), np.full((2, 2), i + 0.5), np.full((2, 1), i), np.full(2, i), np.zeros(2))
    assert rb.obs[:, 0].tolist() == [2, 3, 3, 1, 2] and (rb.pos, rb.size) == (3, 5)
    copy = sac.ReplayBuffer(5, 2, 1, torch.device("cpu"))
    copy.load_state_dict(rb.state_dict())
    for name in rb.fields:
        assert torch.equal(getattr(copy, name), getattr(rb, name))
    assert (copy.pos, copy.size) == (3, 5)
    assert rb.state_dict()["obs"].data_ptr() == rb.obs.data_ptr()  # full: saved as it is, no second copy in memory
    part = sac.ReplayBuffer(5, 2, 1, torch.device("cpu"))
    part.add(np.ones((2, 2)), np.ones((2, 2)), np.ones((2, 1)), np.ones(2), np.zeros(2))
    state = part.state_dict()  # partly full: only the stored rows, in the buffer's own memory (no second copy in RAM)
    assert all(state[k].untyped_storage().nbytes() == getattr(part, k)[:2].nbytes for k in part.fields)
    assert all(state[k].data_ptr() == getattr(part, k).data_ptr() for k in part.fields)
    batches = rb.sample(3, 4)
    assert len(batches) == 3 and batches[0][0].shape == (4, 2)
    assert torch.equal(batches[0][1], batches[0][0] + 0.5)  # rows stay aligned across fields


def test_replay_buffer_takes_ram_as_it_fills_not_at_start():
    """A 1M-step buffer of 64-float observations reserves about 520 MB; a short run must not pay for all of it."""
    rss = lambda: int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")  # noqa: E731
    before = rss()
    rb = sac.ReplayBuffer(1_000_000, 64, 6, torch.device("cpu"))
    rb.add(np.ones((1000, 64)), np.ones((1000, 64)), np.ones((1000, 6)), np.ones(1000), np.zeros(1000))
    assert rss() - before < 64 * 2**20
    assert all(bool((batch[0] == 1).all()) for batch in rb.sample(4, 256))  # only stored rows are drawn


def losses_and_grads(hidden_dtype: torch.dtype, losses=(sac.critic_loss, sac.actor_alpha_loss)):
    critic_loss, actor_alpha_loss = losses
    actor, qf, qf_target, data = setup()
    log_alpha = torch.tensor(-0.5, requires_grad=True)
    torch.manual_seed(1)
    qf_loss, _ = critic_loss(actor, qf, qf_target, data, torch.tensor(0.3), 0.99, hidden_dtype)
    qf_loss.backward()
    actor_loss, alpha_loss = actor_alpha_loss(actor, qf, data[0], log_alpha, torch.tensor(0.3), -3.0, hidden_dtype)
    (actor_loss + alpha_loss).backward()
    params = list(qf.parameters()) + list(actor.parameters()) + [log_alpha]
    return [qf_loss.detach(), actor_loss.detach(), alpha_loss.detach()], [p.grad for p in params]


def test_compiled_losses_draw_the_same_noise_and_match_eager():
    """--compile is a speed option only: the compiled losses take their noise from torch's generator, as eager mode
    does, so the same seed gives the same losses and gradients (to float rounding of the fused kernels)."""
    eager_losses, eager_grads = losses_and_grads(torch.float32)
    compiled_losses, compiled_grads = losses_and_grads(torch.float32, sac.compile_losses())
    for a, b in zip(eager_losses + eager_grads, compiled_losses + compiled_grads):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_bf16_hidden_layers_stay_close_to_float32():
    """--bf16 multiplies the 256x256 layers of the actor and of both critics in bfloat16: their outputs, the losses
    and the gradients move by bf16 rounding only."""
    actor, qf, _, (obs, _, actions, *_rest) = setup()
    for run in (lambda dtype: actor(obs, dtype)[0], lambda dtype: qf(obs, actions, hidden_dtype=dtype)):
        out32, out16 = run(torch.float32), run(torch.bfloat16)
        assert out16.dtype == torch.float32 and not torch.equal(out16, out32)  # the bf16 path ran, output in float32
        torch.testing.assert_close(out16, out32, rtol=2e-2, atol=2e-3)
    losses32, grads32 = losses_and_grads(torch.float32)
    losses16, grads16 = losses_and_grads(torch.bfloat16)
    for a, b in zip(losses32, losses16):
        assert not torch.equal(a, b)
        torch.testing.assert_close(b, a, rtol=2e-2, atol=1e-3)
    for a, b in zip(grads32, grads16):
        assert (b - a).norm() <= 0.1 * a.norm() + 1e-6  # measured: at most 5% (the critics' first layer)


def test_networks_initialise_as_cleanrl_for_the_same_seed():
    """fc_mean_logstd holds CleanRL's fc_mean and fc_logstd, drawn in the same order; building the actor consumes exactly
    CleanRL's random numbers, and TwinQ draws qf1's layers, then qf2's: the same weights as CleanRL for the same seed."""
    torch.manual_seed(5)
    actor = sac.Actor(OBS, ACT, -np.ones(ACT), np.ones(ACT))
    after_actor = torch.get_rng_state()
    qf = sac.TwinQ(OBS, ACT)
    after_critics = torch.get_rng_state()
    torch.manual_seed(5)
    fc1, fc2, fc_mean, fc_logstd = nn.Linear(OBS, 256), nn.Linear(256, 256), nn.Linear(256, ACT), nn.Linear(256, ACT)
    assert torch.equal(torch.get_rng_state(), after_actor)
    assert torch.equal(actor.fc1.weight, fc1.weight) and torch.equal(actor.fc2.weight, fc2.weight)
    assert torch.equal(actor.fc_mean_logstd.weight, torch.cat([fc_mean.weight, fc_logstd.weight]))
    assert torch.equal(actor.fc_mean_logstd.bias, torch.cat([fc_mean.bias, fc_logstd.bias]))
    qf1, qf2 = [[nn.Linear(OBS + ACT, 256), nn.Linear(256, 256), nn.Linear(256, 1)] for _ in range(2)]  # CleanRL's order
    assert torch.equal(torch.get_rng_state(), after_critics)
    for j in range(3):
        for k, layer in enumerate((qf1[j], qf2[j])):
            assert torch.equal(qf.weights[j][k], layer.weight.T) and torch.equal(qf.biases[j][k, 0], layer.bias)


FAULTS = """
import resource, sys, numpy as np, torch
from conftest import load_script
torch.set_num_threads(1)
if sys.argv[1] == "keep":  # as the scripts start (no torchrun: no process group)
    from steprl.utils import setup_distributed
    setup_distributed(False, 1)
sac = load_script("sac_continuous")
actor, qf, qf_target = sac.Actor(17, 6, -np.ones(6), np.ones(6)), sac.TwinQ(17, 6), sac.TwinQ(17, 6)
data = (torch.randn(256, 17), torch.randn(256, 17), torch.rand(256, 6), torch.randn(256), torch.zeros(256))
def losses_backward():
    sac.critic_loss(actor, qf, qf_target, data, torch.tensor(0.2), 0.99)[0].backward()
    sum(sac.actor_alpha_loss(actor, qf, data[0], torch.tensor(0.0, requires_grad=True), torch.tensor(0.2), -6.0)).backward()
for _ in range(5):
    losses_backward()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    losses_backward()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="keep_freed_memory tunes glibc's malloc")
def test_keep_freed_memory_stops_the_page_faults_of_each_update():
    """setup_distributed keeps freed blocks in the heap: without it, glibc maps every large temporary of the losses'
    forward and backward afresh (about 450 page faults per call of this loop; each costs microseconds on a VM)."""
    faults = {}
    for mode in ("default", "keep"):
        proc = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, cwd=Path(__file__).parent)
        assert proc.returncode == 0, proc.stderr[-2000:]
        faults[mode] = float(proc.stdout.split()[-1])
    assert faults["default"] > 100 and faults["keep"] < faults["default"] / 5, faults
