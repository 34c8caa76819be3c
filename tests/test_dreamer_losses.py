"""DreamerV3 losses not covered by test_dreamer.py: free nats on the summed KL, the replay value returns, the return
normalisation of the advantages, the image preprocessing, LaProp's second step, continuous REINFORCE, and the loss
scales of the total loss. Expected values are derived by hand (or by an independent straightforward computation
written here)."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import load_script

D = load_script("dreamer")


# ---------------------------------------------------------------- 1. free nats on the KL summed over the 32 latents
def test_free_nats_apply_to_the_kl_summed_over_the_latents():
    # every latent: posterior (0.4, 0.2, 0.2, 0.2), prior uniform over 4 classes
    # per-latent KL = 0.4 ln(0.4 / 0.25) + 3 x 0.2 ln(0.2 / 0.25) = 0.4 ln 1.6 + 0.6 ln 0.8 ~ 0.0541 nats (< 1)
    per_latent = 0.4 * math.log(1.6) + 0.6 * math.log(0.8)
    summed = D.STOCH * per_latent  # ~ 1.7317 nats (> 1)
    assert per_latent == pytest.approx(0.054115, abs=1e-6) and summed == pytest.approx(1.731690, abs=1e-6)
    post_logits = torch.log(torch.tensor([0.4, 0.2, 0.2, 0.2])).expand(2, D.STOCH, 4).clone().requires_grad_(True)
    prior_logits = torch.zeros(2, D.STOCH, 4, requires_grad=True)
    kl = D.kl_losses(torch.log_softmax(post_logits, -1), torch.log_softmax(prior_logits, -1), 1.0)
    assert kl["dyn_kl"].shape == (2,)
    assert kl["dyn_kl"].tolist() == pytest.approx([summed] * 2, rel=1e-5)
    # free nats on the sum leave 1.73 (a per-latent max(1, 0.054) would give 32, a per-latent mean would give 1)
    assert kl["dyn"].tolist() == pytest.approx([summed] * 2, rel=1e-5)
    assert kl["rep"].tolist() == pytest.approx([summed] * 2, rel=1e-5)
    # above the free nats, both losses pass gradients (to the prior and the posterior respectively)
    dyn_prior = torch.autograd.grad(kl["dyn"].sum(), prior_logits)[0]
    rep_post = torch.autograd.grad(kl["rep"].sum(), post_logits)[0]
    assert dyn_prior.abs().sum() > 0 and rep_post.abs().sum() > 0
    # an independent check of the summed KL with torch.distributions
    p = torch.distributions.Categorical(probs=torch.tensor([0.4, 0.2, 0.2, 0.2]))
    q = torch.distributions.Categorical(probs=torch.full((4,), 0.25))
    assert D.STOCH * torch.distributions.kl_divergence(p, q).item() == pytest.approx(kl["dyn"][0].item(), rel=1e-5)


# ---------------------------------------------------------------- 2. replay value returns
HORIZON, LAM = 333, 0.95


def replay_returns(reward, is_last, is_terminal, boot):
    """The call of `update` in algos/dreamer.py (REPLAY VALUE LOSS): lambda-returns along the replayed sequence with
    discount 1 - 1/horizon, continue 1 - is_terminal and lambda cut to 0 at is_last, bootstrapped with `boot`."""
    return D.lambda_return(reward[:, 1:], 1 - is_terminal[:, 1:], boot, 1 - 1 / HORIZON, LAM * (1 - is_last[:, 1:]))


def reference_replay_returns(reward, is_last, is_terminal, boot):
    """danijar/dreamerv3 agent.py `lambda_return(last, term, rew, val, boot, disc, lam)`, written independently."""
    disc = 1 - 1 / HORIZON
    live = (1 - is_terminal)[:, 1:] * disc
    cont = (1 - is_last)[:, 1:] * LAM
    interm = reward[:, 1:] + (1 - cont) * live * boot[:, 1:]
    rets = [boot[:, -1]]
    for t in reversed(range(live.shape[1])):
        rets.append(interm[:, t] + live[:, t] * cont[:, t] * rets[-1])
    return torch.stack(rets[::-1][:-1], 1)


def test_replay_value_returns_by_hand_with_an_is_last_cut_and_an_is_terminal_stop():
    # steps 0..5: step 2 ends an episode by a time limit (is_last), step 3 starts the next one, step 4 ends it by a
    # termination (is_last and is_terminal), step 5 starts another; boot = the imagined return of each step
    reward = torch.tensor([[9.0, 1.0, 2.0, 0.0, 5.0, 0.0]], dtype=torch.float64)  # reward[0] is never used
    is_last = torch.tensor([[0.0, 0.0, 1.0, 0.0, 1.0, 0.0]], dtype=torch.float64)
    is_terminal = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0, 0.0]], dtype=torch.float64)
    boot = torch.tensor([[10.0, 11.0, 12.0, 13.0, 14.0, 15.0]], dtype=torch.float64)
    g = 1 - 1 / HORIZON
    expected = [
        1 + g * ((1 - LAM) * 11 + LAM * (2 + g * 12)),  # R_0 = r_1 + g ((1 - lam) b_1 + lam R_1)
        2 + g * 12,  # R_1: step 2 is last, so the return is cut there: r_2 + g b_2 (not g R_2)
        g * ((1 - LAM) * 13 + LAM * 5),  # R_2 (crosses the episode end; `update` masks it with 1 - is_last)
        5.0,  # R_3: step 4 is terminal, so nothing after it counts: r_4 only
        g * 15,  # R_4 = r_5 + g b_5 (the last return bootstraps with b_5; masked in `update` by is_last)
    ]
    ret = replay_returns(reward, is_last, is_terminal, boot)
    assert ret.shape == (1, 5)
    assert ret[0].tolist() == pytest.approx(expected, rel=1e-12)
    assert ret[0, 1].item() != pytest.approx(2 + g * ((1 - LAM) * 12 + LAM * ret[0, 2].item()))  # the cut matters
    assert expected[1] == pytest.approx(13.963964, abs=1e-6) and expected[0] == pytest.approx(14.774277, abs=1e-6)


def test_replay_value_returns_match_the_reference_recursion_on_random_sequences():
    torch.manual_seed(0)
    B, T = 4, 9
    reward, boot = torch.randn(B, T, dtype=torch.float64), 5 * torch.randn(B, T, dtype=torch.float64)
    is_last = (torch.rand(B, T) < 0.3).double()
    is_terminal = is_last * (torch.rand(B, T) < 0.5).double()  # a termination is also an episode end
    assert is_last.sum() > is_terminal.sum() > 0
    ret = replay_returns(reward, is_last, is_terminal, boot)
    assert torch.allclose(ret, reference_replay_returns(reward, is_last, is_terminal, boot), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- 3. advantages divided by max(1, P95 - P5)
def imagined_losses(logits, reward, retnorm, actent=0.0):
    """actor_critic_losses on N trajectories of H steps with values 0 (uniform critic logits), continue 1 and
    action 0 everywhere."""
    N, H = logits.shape[:2]
    pi = torch.distributions.OneHotCategorical(logits=logits)
    action = torch.nn.functional.one_hot(torch.zeros(N, H, dtype=torch.long), 2).float()
    value_logits = torch.zeros(N, H + 1, D.BINS, requires_grad=True)
    args = D.Args(actent=actent)
    return D.actor_critic_losses(
        pi, action, value_logits, torch.zeros(N, H + 1), reward, torch.ones(N, H + 1), D.twohot_bins(), retnorm, args
    )


def frozen_norm(lo, hi):
    norm = D.ReturnNorm(rate=0.0)  # rate 0: the percentiles stay where they are set
    norm.lo.fill_(lo), norm.hi.fill_(hi)
    return norm


def test_advantages_are_divided_by_the_return_scale():
    # H = 2, rewards 1, values 0, continue 1: R_1 = 1, R_0 = 1 + 0.95 x 1 = 1.95; log pi(action 0) = ln 0.5
    reward = torch.ones(1, 3)
    loss = {}
    for lo, hi, scale in [(0.0, 0.5, 1.0), (-1.0, 1.0, 2.0), (3.0, 7.0, 4.0)]:  # max(1, 0.5) = 1; the offset lo cancels
        norm = frozen_norm(lo, hi)
        logits = torch.zeros(1, 2, 2, requires_grad=True)
        losses, out = imagined_losses(logits, reward, norm)
        assert norm.scale().item() == scale
        assert out["ret"][0].tolist() == pytest.approx([1.95, 1.0])
        assert out["adv"][0].tolist() == pytest.approx([1.95 / scale, 1.0 / scale])
        # policy loss = mean over H of -(ln 0.5) x adv = ln 2 x (1.95 + 1) / 2 / scale (no entropy bonus here)
        assert losses["policy"].item() == pytest.approx(math.log(2) * 1.475 / scale, rel=1e-6)
        losses["policy"].sum().backward()
        loss[scale] = (losses["policy"].item(), logits.grad.clone())
    for scale in (2.0, 4.0):
        assert loss[scale][0] == pytest.approx(loss[1.0][0] / scale, rel=1e-6)
        assert torch.allclose(loss[scale][1], loss[1.0][1] / scale)


def test_the_return_scale_includes_the_current_batch_of_returns():
    # rate 1: the percentiles become those of this batch before the advantages are normalised (retnorm(ret, update)
    # in the reference). H = 1: R_0 = r_1 with values 0, so the returns are 0, 1, ..., 20
    reward = torch.zeros(21, 2)
    reward[:, 1] = torch.arange(21.0)
    p5, p95 = np.percentile(np.arange(21.0), [5, 95])  # 1 and 19 (linear interpolation): scale 18
    assert (p5, p95) == (1.0, 19.0)
    norm = D.ReturnNorm(rate=1.0)
    losses, out = imagined_losses(torch.zeros(21, 1, 2, requires_grad=True), reward, norm)
    assert norm.scale().item() == pytest.approx(18.0)
    assert out["adv"][:, 0].tolist() == pytest.approx((np.arange(21.0) / 18.0).tolist(), rel=1e-6)


# ---------------------------------------------------------------- 5. image preprocessing x / 255 - 0.5
def test_images_enter_the_cnn_as_x_over_255_minus_half():
    torch.manual_seed(0)
    space = gym.spaces.Dict({"image": gym.spaces.Box(0, 255, (16, 16, 3), np.uint8)})
    enc = D.Encoder(space, units=16, depth=4)
    seen = []
    enc.cnn[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    x = torch.randint(0, 256, (2, 3, 16, 16, 3), dtype=torch.uint8)
    x[0, 0] = 0
    x[0, 1] = 255
    out = enc({"image": x})
    (cnn_in,) = seen
    assert cnn_in.shape == (6, 3, 16, 16)  # [B*T, C, H, W]
    assert torch.all(cnn_in[0] == -0.5) and torch.all(cnn_in[1] == 0.5)  # black -> -0.5, white -> +0.5
    manual = x.reshape(6, 16, 16, 3).permute(0, 3, 1, 2).double() / 255.0 - 0.5
    assert torch.allclose(cnn_in.double(), manual, atol=1e-7)
    assert torch.allclose(out, enc.cnn(manual.float()).reshape(2, 3, -1), atol=1e-6)
    raw = enc.cnn(x.reshape(6, 16, 16, 3).permute(0, 3, 1, 2).float()).reshape(2, 3, -1)
    assert not torch.allclose(out, raw, atol=1e-3)  # the preprocessing changes the output (the test can fail)


# ---------------------------------------------------------------- 6. LaProp, two steps by hand
def laprop_two_steps_by_hand(p, g1, g2, lr1, lr2, b1=0.9, b2=0.999):
    """RMS normalisation with debiasing, then momentum with debiasing (no clipping: |g| < 0.3 |p| here)."""
    nu = (1 - b2) * g1**2
    u1 = g1 / math.sqrt(nu / (1 - b2))  # = sign(g1)
    mu = (1 - b1) * u1
    p -= lr1 * mu / (1 - b1)
    nu = b2 * nu + (1 - b2) * g2**2
    u2 = g2 / math.sqrt(nu / (1 - b2**2))
    mu = b1 * mu + (1 - b1) * u2
    return p - lr2 * mu / (1 - b1**2)


@pytest.mark.parametrize("warmup", [0, 4])
def test_laprop_second_step(warmup):
    p = torch.nn.Parameter(torch.tensor([10.0], dtype=torch.float64))
    opt = D.LaProp([p], lr=0.1, agc=0.3, eps=1e-20, beta1=0.9, beta2=0.999, warmup=warmup)
    for g in (1.0, -2.0):  # |g| < 0.3 x |p| ~ 3: no clipping
        p.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
    # warm-up over 4 updates: update 0 has lr 0, update 1 has lr 0.1 x 1/4
    lr1, lr2 = (0.1, 0.1) if warmup == 0 else (0.0, 0.025)
    expected = laprop_two_steps_by_hand(10.0, 1.0, -2.0, lr1, lr2)
    assert p.item() == pytest.approx(expected, rel=1e-12)
    # by hand: nu_2 = 0.999 x 0.001 + 0.001 x 4 = 0.004999, debiased 0.004999 / 0.001999 = 2.500750;
    # u_2 = -2 / sqrt(2.500750) = -1.264722; mu_2 = 0.9 x 0.1 + 0.1 x u_2 = -0.0364722, debiased / 0.19 = -0.191959
    step2 = -0.191959
    expected_by_hand = (9.9 - 0.1 * step2) if warmup == 0 else (10.0 - 0.025 * step2)
    assert p.item() == pytest.approx(expected_by_hand, abs=1e-6)
    assert opt.state[p]["nu"].item() == pytest.approx(0.004999, rel=1e-12)
    assert opt.state[p]["mu"].item() == pytest.approx(0.09 - 0.2 / math.sqrt(0.004999 / 0.001999), rel=1e-12)


# ---------------------------------------------------------------- 7. continuous REINFORCE (bounded normal)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_continuous_reinforce_moves_the_logprob_with_the_sign_of_the_advantage(sign):
    torch.manual_seed(0)
    actor = D.Actor(feat_dim=8, units=16, act_dim=2, discrete=False, unimix=0.01)
    feat = torch.randn(3, 3, 8)  # N = 3 trajectories, H + 1 = 3 states
    action = torch.tensor([0.6, -0.4]).expand(3, 2, 2)  # the actions taken in states 0 and 1 (away from the mean ~0)
    reward = torch.full((3, 3), sign)  # values 0: advantages 1.95 and 1 (x sign)
    value_logits = torch.zeros(3, 3, D.BINS)
    args = D.Args(actent=0.0)

    def logprob():
        with torch.no_grad():
            return actor.dist(feat[:, :-1]).log_prob(action).sum().item()

    pi = actor.dist(feat[:, :-1])
    assert isinstance(pi.base_dist, torch.distributions.Normal)
    losses, out = D.actor_critic_losses(
        pi, action, value_logits, torch.zeros(3, 3), reward, torch.ones(3, 3), D.twohot_bins(), D.ReturnNorm(), args
    )
    assert torch.all(out["adv"] * sign > 0)
    # the REINFORCE loss is -weight x log pi(a) x adv averaged over H (actent 0): check against the distribution
    expected = -(pi.log_prob(action) * out["adv"]).mean(1)
    assert torch.allclose(losses["policy"], expected)
    before = logprob()
    actor.zero_grad()
    losses["policy"].sum().backward()
    assert actor.head.weight.grad.abs().sum() > 0
    with torch.no_grad():
        for param in actor.parameters():
            param -= 1e-2 * param.grad
    after = logprob()
    assert (after - before) * sign > 1e-4  # descent raises log pi(a) for a positive advantage, lowers it otherwise


# ---------------------------------------------------------------- loss scales and the total loss
def test_loss_scales_are_the_papers_and_the_total_is_the_scaled_sum_of_means():
    scales = D.loss_scales(D.Args(), ["image", "vector"])
    assert scales == {"dyn": 1.0, "rep": 0.1, "rew": 1.0, "con": 1.0, "policy": 1.0, "value": 1.0, "repval": 0.3,
                      "rec_image": 1.0, "rec_vector": 1.0}  # fmt: skip
    losses = {k: torch.full((2, 3), float(i + 1)) for i, k in enumerate(scales)}  # term i has mean i + 1
    expected = 1 + 0.1 * 2 + 3 + 4 + 5 + 6 + 0.3 * 7 + 8 + 9
    assert D.total_loss(losses, scales).item() == pytest.approx(expected)
    # each [B, T] term enters as its mean, and a term without a scale is an error rather than silently dropped
    assert D.total_loss({"rep": torch.tensor([[0.0, 2.0], [4.0, 6.0]])}, scales).item() == pytest.approx(0.3)
    with pytest.raises(KeyError):
        D.total_loss({"unscaled": torch.ones(2, 3)}, scales)
