"""DreamerV3 components with hand-computed numbers (issue 3). The script is imported from its path; its `__main__`
block does not run."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import load_script

D = load_script("dreamer")


def vec_space(n=4):
    return gym.spaces.Dict({"vector": gym.spaces.Box(-np.inf, np.inf, (n,), np.float32)})


def img_space(size=64):
    return gym.spaces.Dict({"image": gym.spaces.Box(0, 255, (size, size, 3), np.uint8)})


# ---------------------------------------------------------------- symlog, two-hot, critic/reward outputs
def test_symlog_symexp():
    x = torch.tensor([-1e6, -100.0, -1.0, 0.0, 0.5, 3.0, 1e4], dtype=torch.float64)
    assert torch.allclose(D.symexp(D.symlog(x)), x, rtol=1e-12)
    assert D.symlog(torch.tensor(-100.0)).item() == pytest.approx(-4.615121, abs=1e-6)


def test_bins_are_raw_space_symmetric_and_255():
    bins = D.twohot_bins()
    assert len(bins) == 255 and bins[127] == 0 and torch.equal(bins, -bins.flip(0))
    assert bins[-1].item() == pytest.approx(np.expm1(20.0), rel=1e-5)  # symexp(20): raw space, not symlog space


def test_twohot_of_one():
    bins = D.twohot_bins()
    w = D.twohot(torch.tensor([1.0]), bins)[0]
    nz = torch.nonzero(w).flatten()
    assert nz.tolist() == [131, 132]
    assert bins[nz].tolist() == pytest.approx([0.877463, 1.197678], abs=1e-6)
    assert w[nz].tolist() == pytest.approx([0.617329, 0.382671], abs=1e-6)
    assert (w * bins).sum().item() == pytest.approx(1.0, abs=1e-6)
    assert D.twohot_mean(torch.log(w), bins).item() == pytest.approx(1.0, abs=1e-6)  # decodes back


def test_twohot_clips_outside_the_bins_and_loss_is_cross_entropy():
    bins = D.twohot_bins()
    w = D.twohot(torch.tensor([1e12, -1e12]), bins)
    assert w[0, -1] == 1 and w[1, 0] == 1
    logits = torch.randn(3, 255)
    y = torch.tensor([0.3, -5.0, 40.0])
    expected = -(D.twohot(y, bins) * torch.log_softmax(logits, -1)).sum(-1)
    assert torch.allclose(D.twohot_loss(logits, y, bins), expected)


def test_uniform_logits_decode_to_exactly_zero():
    bins = D.twohot_bins()
    logits = torch.zeros(5, 255)
    assert torch.all(D.twohot_mean(logits, bins) == 0.0)
    naive = (logits.softmax(-1) * bins).sum(-1)  # the left-to-right sum leaves a rounding residue
    assert not torch.all(naive == 0.0)


def test_reward_and_critic_output_layers_are_zero_initialised_so_predictions_start_at_zero():
    torch.manual_seed(0)
    agent = D.Agent(vec_space(), 2, True, "tiny", 0.01)
    feat = torch.randn(7, D.SIZES["tiny"]["deter"] + D.STOCH * D.SIZES["tiny"]["classes"])
    for head in (agent.reward, agent.critic):
        assert torch.all(head.net[-1].weight == 0) and torch.all(head.net[-1].bias == 0)
        assert torch.all(D.twohot_mean(head(feat), agent.bins) == 0.0)
    assert agent.cont.net[-1].weight.abs().sum() > 0  # the continue head is not zero-initialised (outscale 1)


def test_init_std_uses_the_full_fan_in_also_for_block_linear():
    # The reference draws truncated normals scaled to std 1/sqrt(fan_in), and the fan-in of a [groups, in/g, out/g]
    # block kernel counts every group: BlockLinear(512, 512, 8) has std 1/sqrt(512), not 1/sqrt(64).
    torch.manual_seed(0)
    block = D.BlockLinear(512, 512, 8).weight
    dense = D.linear(300, 200).weight
    assert abs(block.std().item() * math.sqrt(512) - 1) < 0.03 and block.abs().max() <= 2 * 1.1368 / math.sqrt(512)
    assert abs(dense.std().item() * math.sqrt(300) - 1) < 0.03


# ---------------------------------------------------------------- return normalisation, lambda-returns
def test_percentiles_and_one_ema_step_from_zero():
    x = torch.arange(100.0)
    q = torch.quantile(x, torch.tensor([0.05, 0.95]))
    assert q.tolist() == pytest.approx([4.95, 94.05])
    norm = D.ReturnNorm()
    norm.update(x)
    assert norm.lo.item() == pytest.approx(0.0495) and norm.hi.item() == pytest.approx(0.9405)
    assert norm.scale().item() == 1.0  # max(1, 0.891): no debiasing
    for _ in range(2000):
        norm.update(x)
    assert norm.scale().item() == pytest.approx(89.1, rel=1e-3)


def test_lambda_returns_by_hand():
    values = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    rewards = torch.tensor([[1.0, 0.0, 2.0]])
    ret = D.lambda_return(rewards, torch.ones(1, 3), values, 0.9, 0.5)
    assert ret[0].tolist() == pytest.approx([2.80675, 3.015, 4.7])
    # termination at the second state: its continue flag is 0, so nothing after it is bootstrapped
    ret = D.lambda_return(rewards, torch.tensor([[1.0, 0.0, 1.0]]), values, 0.9, 0.5)
    assert ret[0].tolist() == pytest.approx([1.45, 0.0, 4.7])


def test_lambda_returns_stay_on_the_values_device():
    """A float lam (the actor-critic's --lam) must be made on the values' device: a CPU [B, H] tensor mixed with CUDA
    ones fails. The `meta` device stands in for a GPU here (it refuses CPU tensors the same way)."""
    values, rewards = torch.zeros(2, 4, device="meta"), torch.zeros(2, 3, device="meta")
    ret = D.lambda_return(rewards, torch.ones(2, 3, device="meta"), values, 0.9, 0.5)
    assert ret.device.type == "meta" and ret.shape == (2, 3)


def test_continue_target():
    t = D.continue_target(torch.tensor([False, True]), 333)
    assert t.tolist() == pytest.approx([1 - 1 / 333, 0.0])


# ---------------------------------------------------------------- KL losses
def latent_logprobs(logits):
    return torch.log(D.unimix_probs(logits, 0.01))


def test_kl_below_free_nats_gives_loss_one_and_zero_gradient():
    torch.manual_seed(0)
    post = torch.zeros(2, 32, 4, requires_grad=True)
    prior = (0.01 * torch.randn(2, 32, 4)).requires_grad_(True)
    kl = D.kl_losses(latent_logprobs(post), latent_logprobs(prior), 1.0)
    assert torch.all(kl["dyn_kl"] < 1) and torch.all(kl["dyn_kl"] > 0)
    assert torch.all(kl["dyn"] == 1.0) and torch.all(kl["rep"] == 1.0)
    (kl["dyn"].sum() + kl["rep"].sum()).backward()
    assert torch.all(post.grad == 0) and torch.all(prior.grad == 0)


def test_dynamics_gradient_reaches_only_the_prior_and_representation_only_the_posterior():
    torch.manual_seed(0)
    post = (3 * torch.randn(2, 32, 4)).requires_grad_(True)
    prior = (3 * torch.randn(2, 32, 4)).requires_grad_(True)
    kl = D.kl_losses(latent_logprobs(post), latent_logprobs(prior), 1.0)
    assert torch.all(kl["dyn_kl"] > 1)
    dyn_post, dyn_prior = torch.autograd.grad(kl["dyn"].sum(), [post, prior], allow_unused=True)
    assert (dyn_post is None or torch.all(dyn_post == 0)) and dyn_prior.abs().sum() > 0
    rep_post, rep_prior = torch.autograd.grad(kl["rep"].sum(), [post, prior], allow_unused=True)
    assert rep_post.abs().sum() > 0 and (rep_prior is None or torch.all(rep_prior == 0))
    assert torch.allclose(kl["dyn_kl"], kl["rep_kl"])  # same value, different gradients


def test_unimix_probabilities():
    logits = torch.tensor([[100.0, -100.0, -100.0, -100.0], [0.0, 0.0, 0.0, 0.0]])
    p = D.unimix_probs(logits, 0.01)
    assert torch.allclose(p.sum(-1), torch.ones(2))
    assert p.min().item() == pytest.approx(0.01 / 4)
    assert p[0, 0].item() == pytest.approx(1 - 0.01 + 0.01 / 4)


def test_straight_through_onehot_samples():
    torch.manual_seed(0)
    logits = torch.randn(1000, 4, requires_grad=True)
    probs = D.unimix_probs(logits, 0.01)
    z = D.sample_onehot(probs)
    assert torch.allclose(z.detach(), torch.nn.functional.one_hot(z.detach().argmax(-1), 4).float(), atol=1e-6)
    (z * torch.arange(4.0)).sum().backward()
    assert logits.grad.abs().sum() > 0  # gradients pass straight through the sample
    counts = torch.bincount(D.sample_index(torch.tensor([[0.7, 0.2, 0.1]]).expand(20000, 3)), minlength=3) / 20000
    assert counts.tolist() == pytest.approx([0.7, 0.2, 0.1], abs=0.02)


# ---------------------------------------------------------------- RSSM, encoder, decoder
def test_rssm_block_gru_and_separate_input_projections():
    rssm = D.RSSM(act_dim=3, embed_dim=10, deter=64, hidden=16, classes=4, unimix=0.01)
    assert rssm.gru.weight.shape == (8, 64 // 8, 3 * 64 // 8)  # 8 blocks, 3 gates
    assert rssm.dynhid.weight.shape == (8, 64 // 8 + 3 * 16, 64 // 8)
    assert [m[0].in_features for m in rssm.dynin] == [64, 32 * 4, 3]  # deter, stoch, action projected separately


def test_is_first_makes_prior_and_posterior_independent_of_the_carried_state():
    torch.manual_seed(0)
    rssm = D.RSSM(act_dim=2, embed_dim=6, deter=32, hidden=16, classes=4, unimix=0.01)
    embed = torch.randn(3, 6)
    first = torch.tensor([True, True, False])
    outs = []
    for scale in (0.0, 5.0):
        deter, stoch = scale * torch.randn(3, 32), scale * torch.rand(3, 32, 4)
        d, _, post = rssm.obs_step(deter, stoch, scale * torch.randn(3, 2), embed, first)
        outs.append((d, post, rssm.prior(d)))
    (d0, post0, prior0), (d1, post1, prior1) = outs
    assert torch.equal(d0[:2], d1[:2]) and torch.equal(post0[:2], post1[:2]) and torch.equal(prior0[:2], prior1[:2])
    assert not torch.allclose(d0[2], d1[2])  # without is_first the carried state matters


def test_observe_feeds_the_action_of_step_t_at_step_t():
    torch.manual_seed(0)
    rssm = D.RSSM(act_dim=2, embed_dim=6, deter=32, hidden=16, classes=4, unimix=0.01)
    embed, first = torch.randn(1, 3, 6), torch.tensor([[True, False, False]])
    a = torch.randn(1, 3, 2)
    torch.manual_seed(1)
    d1 = rssm.observe(embed, a, first)[0]
    b = a.clone()
    b[0, 2] += 1.0  # the action stored with obs 2 (executed between obs 1 and obs 2)
    torch.manual_seed(1)
    d2 = rssm.observe(embed, b, first)[0]
    assert torch.equal(d1[0, :2], d2[0, :2]) and not torch.allclose(d1[0, 2], d2[0, 2])


def test_encoder_cnn_stages_down_to_4x4_and_mlp_symlog():
    enc = D.Encoder(img_space(64), units=32, depth=4)
    assert len(enc.cnn) == 4 and enc.out_dim == 16 * 16  # 64 -> 32 -> 16 -> 8 -> 4, channels 8, 12, 16, 16
    stage = enc.cnn[0]
    assert stage.conv.kernel_size == (5, 5) and isinstance(stage.norm, D.RMSNorm)
    x = torch.randint(0, 255, (2, 3, 64, 64, 3), dtype=torch.uint8)
    assert enc({"image": x}).shape == (2, 3, 256)
    venc = D.Encoder(vec_space(3), units=16, depth=4)
    big = {"vector": torch.tensor([[1e6, -1e6, 0.0]])}
    assert torch.isfinite(venc(big)).all()
    first = venc.mlp[0]
    expected = first(D.symlog(big["vector"]))
    assert torch.allclose(venc.mlp[:1](D.symlog(big["vector"])), expected)


@pytest.mark.parametrize("size", [8, 1024])  # --image-size accepts every power of two from 8
def test_encoder_and_decoder_reach_4x4_at_every_image_size(size):
    enc = D.Encoder(img_space(size), units=8, depth=1)
    assert len(enc.cnn) == int(np.log2(size)) - 2 and enc.out_dim == 16 * min(len(enc.cnn) + 1, 4)
    assert enc({"image": torch.zeros(1, 1, size, size, 3, dtype=torch.uint8)}).shape == (1, 1, enc.out_dim)
    dec = D.Decoder(img_space(size), feat_dim=8, units=8, depth=1)
    assert dec(torch.zeros(1, 1, 8))["image"].shape == (1, 1, size, size, 3)


def test_decoder_outputs_and_reconstruction_loss():
    space = gym.spaces.Dict({"image": img_space(16)["image"], "vector": vec_space(3)["vector"]})
    dec = D.Decoder(space, feat_dim=20, units=16, depth=4)
    out = dec(torch.randn(2, 5, 20))
    assert out["image"].shape == (2, 5, 16, 16, 3) and out["vector"].shape == (2, 5, 3)
    assert out["image"].min() >= 0 and out["image"].max() <= 1  # sigmoid
    target = torch.tensor([[[100.0, -100.0, 0.0]]])
    assert D.recon_loss(D.symlog(target), target).item() == pytest.approx(0.0, abs=1e-10)  # symlog space
    assert D.recon_loss(torch.zeros(1, 1, 3), target).item() == pytest.approx(2 * np.log(101) ** 2, rel=1e-5)  # summed
    img = torch.full((1, 1, 2, 2, 1), 255, dtype=torch.uint8)
    assert D.recon_loss(torch.zeros(1, 1, 2, 2, 1), img).item() == pytest.approx(4.0)  # /255, summed over pixels


def test_image_decoder_normalises_each_4x4_position_over_its_channels():
    """As the reference's decoder (its norm acts on the last axis of the 4 x 4 x C map): scaling one position's
    projection leaves the whole normalised map unchanged (RMSNorm is scale-free per position); a norm over the whole
    map would change every position."""
    dec = D.Decoder(img_space(16), feat_dim=8, units=8, depth=2)
    c, seen = dec.last_channels, []
    dec.cnn.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].detach().clone()))
    with torch.no_grad():
        dec.space.weight.zero_()
        dec.space.bias.copy_(torch.linspace(-1, 1, 16 * c))
        dec(torch.zeros(1, 8))
        dec.space.bias[:c] *= 100  # position (0, 0): the first C outputs, channels last
        dec(torch.zeros(1, 8))
    assert seen[0].shape == (1, c, 4, 4) and dec.space_norm.scale.shape == (c,)
    assert torch.allclose(seen[0], seen[1], atol=1e-5)
    assert not torch.allclose(seen[0][0, :, 0, 1], seen[0][0, :, 0, 0])  # positions differ: the layout is 4 x 4 x C


# ---------------------------------------------------------------- actor, optimiser, presets
def test_actor_distributions():
    torch.manual_seed(0)
    actor = D.Actor(feat_dim=8, units=16, act_dim=3, discrete=False, unimix=0.01)
    assert actor.head.weight.abs().max() < 0.01 * 3 / np.sqrt(16)  # output scale 0.01
    with torch.no_grad():
        actor.head.weight.normal_(0, 100)
    dist = actor.dist(torch.randn(500, 8))
    std = dist.base_dist.scale
    assert std.min() >= 0.1 and std.max() <= 1.0 and dist.base_dist.loc.abs().max() <= 1
    disc = D.Actor(feat_dim=8, units=16, act_dim=4, discrete=True, unimix=0.01)
    with torch.no_grad():
        disc.head.weight.normal_(0, 100)
    probs = disc.dist(torch.randn(500, 8)).probs
    assert probs.min() >= 0.01 / 4 - 1e-7 and torch.allclose(probs.sum(-1), torch.ones(500))
    a = disc.sample(torch.randn(5, 8))
    assert torch.equal(a.sum(-1), torch.ones(5)) and set(a.flatten().tolist()) <= {0.0, 1.0}


def test_laprop_warmup_agc_and_first_step():
    p = torch.nn.Parameter(torch.ones(4))
    opt = D.LaProp([p], lr=0.1, agc=0.3, eps=1e-20, beta1=0.9, beta2=0.999, warmup=2)
    p.grad = torch.full((4,), 100.0)
    opt.step()  # update 0 of the warm-up has learning rate 0
    assert torch.equal(p.detach(), torch.ones(4))
    # AGC: the gradient norm 200 is clipped to 0.3 x |p| = 0.6, i.e. 0.3 per element, before the second moment
    assert opt.state[p]["nu"].tolist() == pytest.approx([0.001 * 0.09] * 4, rel=1e-5)
    q = torch.nn.Parameter(torch.ones(4))
    opt = D.LaProp([q], lr=0.1, agc=0.3, eps=1e-20, beta1=0.9, beta2=0.999, warmup=0)
    q.grad = torch.tensor([1e-3, -2.0, 5.0, 0.0])
    opt.step()  # LaProp's first step: g / rms(g) = sign(g), debiased momentum -> lr * sign(g)
    assert q.detach().tolist() == pytest.approx([0.9, 1.1, 0.9, 1.0], abs=1e-6)


def test_sizes_presets_and_parameter_counts():
    assert list(D.SIZES) == ["tiny", "size1m", "size12m", "size25m", "size50m", "size100m", "size200m"]
    counts = [D.parameter_counts(img_space(64), 18, True, s)["total"] for s in D.SIZES]
    assert counts == sorted(counts)
    assert 1.5e8 < counts[-1] < 2.5e8  # size200m: about two hundred million parameters with images


# ---------------------------------------------------------------- replay
def fill(rb, steps_per_env):
    """Env i's stored obs k holds 1000 * i + k; every 5th step starts an episode."""
    for i in range(rb.num_envs):
        for k in range(steps_per_env):
            rb.add(i, {"vector": np.full(4, 1000 * i + k, np.float32), "is_first": k % 5 == 0, "reward": k})


def test_replay_windows_are_consecutive_cross_episodes_and_start_from_is_first():
    torch.manual_seed(0)
    rb = D.SequenceReplay(capacity=30, num_envs=2, obs_space=vec_space(), act_dim=2)
    fill(rb, 40)  # FIFO: each env keeps its last 30 steps (10..39)
    assert rb.size == [30, 30] and rb.added == 80
    (batch,) = rb.sample(1, 500, 8)
    v = batch["vector"][..., 0]
    assert torch.all(v[:, 1:] - v[:, :-1] == 1)  # consecutive steps of one env
    assert set((v[:, 0] // 1000).tolist()) == {0, 1} and (v % 1000).min() >= 10 and (v % 1000).max() <= 39
    assert torch.all(batch["is_first"][:, 0])  # every window starts from the zero state
    inner = batch["is_first"][:, 1:]
    assert torch.equal(inner, ((v[:, 1:] % 1000) % 5 == 0))  # episode starts inside a window stay marked
    assert inner.any()


def test_replay_state_round_trip():
    rb = D.SequenceReplay(capacity=30, num_envs=2, obs_space=vec_space(), act_dim=2)
    fill(rb, 12)
    state = rb.state_dict()
    other = D.SequenceReplay(capacity=30, num_envs=2, obs_space=vec_space(), act_dim=2)
    other.load_state_dict(state)
    assert other.pos == rb.pos and other.size == rb.size and other.added == rb.added
    n = max(rb.size)  # the stored steps (the rest of the storage is never written or read)
    assert all(torch.equal(other.data[k][:, :n], rb.data[k][:, :n]) for k in rb.data)
    for k in rb.data:  # per env, only what is stored, in the replay's own memory: no second copy of it in RAM
        assert [(t.data_ptr(), t.untyped_storage().nbytes()) for t in state[k]] == [
            (rb.data[k][i].data_ptr(), rb.data[k][i, : rb.size[i]].nbytes) for i in range(2)
        ]
    fill(rb, 40)  # full: saved as it is
    assert all(rb.state_dict()[k][1].data_ptr() == rb.data[k][1].data_ptr() for k in rb.data)


# ---------------------------------------------------------------- behaviour: actor-critic losses, slow critic, defaults
def test_paper_defaults():
    a = D.Args()
    assert (a.learning_rate, a.adam_eps, a.agc, a.warmup, a.beta1, a.beta2) == (4e-5, 1e-20, 0.3, 1000, 0.9, 0.999)
    assert (a.per_rank_batch_size, a.per_rank_sequence_length, a.imag_horizon, a.lam, a.horizon) == (16, 64, 15, 0.95, 333)
    assert (a.actent, a.slow_critic_rate, a.free_nats, a.unimix) == (3e-4, 0.02, 1.0, 0.01)
    assert (a.dyn_scale, a.rep_scale, a.repval_scale) == (1.0, 0.1, 0.3)
    assert (D.STOCH, D.BLOCKS, D.BINS) == (32, 8, 255)


def behaviour(logits, slow_value, con, reward=None, peaked=False):
    N, H = logits.shape[0], logits.shape[1]
    bins = D.twohot_bins()
    pi = torch.distributions.OneHotCategorical(logits=logits)
    action = torch.nn.functional.one_hot(torch.zeros(N, H, dtype=torch.long), 2).float()  # always action 0
    value_logits = torch.zeros(N, H + 1, 255)
    value_logits[..., 127] = 5.0 if peaked else 0.0  # value 0 either way (bin 127 is 0)
    value_logits.requires_grad_(True)
    reward = torch.ones(N, H + 1) if reward is None else reward
    args = D.Args()
    losses, out = D.actor_critic_losses(pi, action, value_logits, slow_value, reward, con, bins, D.ReturnNorm(), args)
    return losses, out, value_logits


def test_reinforce_raises_the_logprob_of_actions_with_positive_advantage_and_weights_by_continue():
    logits = torch.zeros(1, 2, 2, requires_grad=True)
    losses, out, _ = behaviour(logits, torch.zeros(1, 3), torch.tensor([[1.0, 1.0, 1.0]]))
    assert torch.all(out["adv"] > 0)  # rewards 1, values 0
    losses["policy"].sum().backward()
    assert torch.all(logits.grad[0, :, 0] < 0) and torch.all(logits.grad[0, :, 1] > 0)  # descent raises action 0
    # a zero continue probability at state 1 stops everything after it: weights cumprod(continue) = [1, 0, 0]
    logits = torch.zeros(1, 2, 2, requires_grad=True)
    losses, out, _ = behaviour(logits, torch.zeros(1, 3), torch.tensor([[1.0, 0.0, 1.0]]))
    assert out["weight"][0].tolist() == [1.0, 0.0, 0.0]
    losses["policy"].sum().backward()
    assert logits.grad[0, 0].abs().sum() > 0 and torch.all(logits.grad[0, 1] == 0)


def test_entropy_bonus_and_slow_critic_regulariser():
    logits = torch.tensor([[[2.0, -2.0]]], requires_grad=True)
    reward = torch.zeros(1, 2)
    losses, out, _ = behaviour(logits, torch.zeros(1, 2), torch.ones(1, 2), reward)
    assert torch.all(out["adv"] == 0)
    losses["policy"].sum().backward()
    assert logits.grad[0, 0, 0] > 0  # with zero advantage only the entropy bonus acts: it flattens the policy
    base, _, _ = behaviour(torch.zeros(1, 1, 2), torch.zeros(1, 2), torch.ones(1, 2), reward, peaked=True)
    reg, _, value_logits = behaviour(torch.zeros(1, 1, 2), torch.full((1, 2), 5.0), torch.ones(1, 2), reward, peaked=True)
    assert reg["value"].item() > base["value"].item()  # the slow critic's prediction is a second two-hot target
    reg["value"].sum().backward()
    assert value_logits.grad[0, 0].abs().sum() > 0 and torch.all(value_logits.grad[0, 1] == 0)  # last state: no loss


def test_slow_critic_ema():
    fast, slow = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    with torch.no_grad():
        fast.weight.fill_(1.0), slow.weight.fill_(0.0)
    D.ema_(slow, fast, 0.02)
    assert torch.allclose(slow.weight, torch.full((2, 2), 0.02))
    D.ema_(slow, fast, 0.02)
    assert torch.allclose(slow.weight, torch.full((2, 2), 0.02 + 0.98 * 0.02))
