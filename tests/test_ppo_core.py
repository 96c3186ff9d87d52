"""The PPO algorithm's tensor functions against numbers worked out by hand."""

import math

import pytest
import torch

from rlhf.ppo import core


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def close(actual, expected):
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=1e-6, rtol=1e-5)


def test_logprobs_and_entropy_use_the_temperature():
    logits = torch.tensor([[[0.0, math.log(9.0)]]])  # probs [1/10, 9/10] at T=1
    # T=2: logits / 2 = [0, ln 3] -> probs [1/4, 3/4]
    assert core.logprobs_from_logits(logits, torch.tensor([[1]]), 2.0).item() == pytest.approx(math.log(0.75))
    assert core.logprobs_from_logits(logits, torch.tensor([[0]])).item() == pytest.approx(math.log(0.1))
    # H([1/4, 3/4]) = 0.25 ln 4 + 0.75 ln(4/3) = 0.5623351
    assert core.entropy_from_logits(logits, 2.0).item() == pytest.approx(0.5623351, abs=1e-6)
    assert core.entropy_from_logits(torch.zeros(1, 1, 4)).item() == pytest.approx(math.log(4))


def test_masked_mean_var_and_whiten():
    x, mask = t([1, 2, 3], [4, 5, 6]), t([1, 1, 0], [1, 0, 0])
    assert core.masked_mean(x, mask).item() == pytest.approx(7 / 3)  # (1 + 2 + 4) / 3
    close(core.masked_mean(x, mask, dim=1), [1.5, 4.0])

    x, mask = t([1, 3, 5, 100]), t([1, 1, 1, 0])
    # mean 3; squared deviations 4, 0, 4: unbiased var 8/2 = 4 (std 2), biased 8/3
    assert core.masked_var(x, mask).item() == pytest.approx(4.0)
    assert core.masked_var(x, mask, unbiased=False).item() == pytest.approx(8 / 3)
    close(core.masked_whiten(x, mask), [[-1, 0, 1, 0]])
    close(core.masked_whiten(x, mask, shift_mean=False), [[2, 3, 4, 0]])
    with pytest.raises(ValueError, match="at least 2"):
        core.masked_var(x, t([1, 0, 0, 0]))


def test_kl_estimators():
    logp = torch.log(t(0.5, 0.2))
    ref = torch.log(t(0.25, 0.4))
    # k1 = log(p / p_ref) = [ln 2, -ln 2]
    close(core.kl_estimate(logp, ref, "k1"), [0.6931472, -0.6931472])
    # r = p_ref / p = [0.5, 2]: k3 = (r - 1) - ln r = [-0.5 + ln 2, 1 - ln 2]
    close(core.kl_estimate(logp, ref, "k3"), [0.1931472, 0.3068528])
    with pytest.raises(ValueError, match="k2"):
        core.kl_estimate(logp, ref, "k2")


def test_score_normalisation_clipping_and_missing_eos_penalty():
    scores, eos = t(3.0, -1.0, 9.0), torch.tensor([True, False, True])
    # (s - 1) / 2 = [1, -1, 4]; clip 2 -> [1, -1, 2]; minus 1.5 where no EOS -> [1, -2.5, 2]
    out = core.score_with_penalties(scores, eos, 1.5, reward_mean=1.0, reward_std=2.0, normalize=True, clip=2.0)
    close(out, [1.0, -2.5, 2.0])
    close(core.score_with_penalties(scores, eos, missing_eos_penalty=1.5), [3.0, -2.5, 9.0])
    close(core.score_with_penalties(scores, eos), [3.0, -1.0, 9.0])


def test_token_rewards_put_the_score_on_each_rows_last_token():
    scores = t(1.0, 2.0)
    mask = t([1, 1, 1], [1, 0, 0])
    logp, ref = t([-1, -1, -1], [-2, -2, -2]), t([-1.5, -1, -0.5], [-1, -3, -3])
    rewards, kl = core.token_rewards(scores, logp, ref, mask, kl_coef=0.1)
    # k1 = logp - ref: row 0 [0.5, 0, -0.5]; row 1 [-1, pad, pad]
    close(kl, [[0.5, 0, -0.5], [-1, 0, 0]])
    # -0.1 * kl, plus the score on the last real token (index 2 in row 0, index 0 in row 1)
    close(rewards, [[-0.05, 0, 0.05 + 1.0], [0.1 + 2.0, 0, 0]])


def test_gae_three_tokens():
    rewards, values = t([1.0, 0.0, 2.0]), t([0.5, 1.0, 1.5])
    # gamma 0.9, lam 0.8 (gamma * lam = 0.72), V after the last token = 0:
    # t=2: delta = 2 + 0.9*0   - 1.5 = 0.5   A2 = 0.5
    # t=1: delta = 0 + 0.9*1.5 - 1.0 = 0.35  A1 = 0.35 + 0.72*0.5  = 0.71
    # t=0: delta = 1 + 0.9*1.0 - 0.5 = 1.4   A0 = 1.4  + 0.72*0.71 = 1.9112
    adv, ret = core.gae(rewards, values, t([1, 1, 1]), gamma=0.9, lam=0.8)
    close(adv, [[1.9112, 0.71, 0.5]])
    close(ret, [[2.4112, 1.71, 2.0]])


def test_gae_stops_at_each_rows_end():
    rewards, values = t([1.0, 2.0, 9.0], [1.0, 0.0, 2.0]), t([0.5, 1.0, 7.0], [0.5, 1.0, 1.5])
    mask = t([1, 1, 0], [1, 1, 1])
    # row 0 (padding holds junk that must be ignored):
    # t=1: delta = 2 + 0.9*0   - 1.0 = 1.0   A1 = 1.0
    # t=0: delta = 1 + 0.9*1.0 - 0.5 = 1.4   A0 = 1.4 + 0.72*1.0 = 2.12
    adv, ret = core.gae(rewards, values, mask, gamma=0.9, lam=0.8)
    close(adv, [[2.12, 1.0, 0.0], [1.9112, 0.71, 0.5]])
    close(ret, [[2.62, 2.0, 0.0], [2.4112, 1.71, 2.0]])


# Three groups of k = 4 samples: ties around one outlier, a 2-2 split, and all equal.
GROUP_REWARDS = t(1.0, 1.0, 1.0, 5.0, 3.0, 1.0, 1.0, 3.0, 2.0, 2.0, 2.0, 2.0)


def test_rloo_baseline_is_the_mean_of_the_other_samples():
    # group 1: for a 1 the others average (1 + 1 + 5) / 3 = 7/3 -> -4/3; for the 5 they average 1 -> 4
    # group 2: for a 3 the others average (1 + 1 + 3) / 3 = 5/3 -> 4/3; for a 1, 7/3 -> -4/3
    # group 3: all equal -> 0
    third = 4 / 3
    close(core.rloo_advantages(GROUP_REWARDS, 4), [-third, -third, -third, 4, third, -third, -third, third, 0, 0, 0, 0])


def test_grpo_divides_by_the_group_std_unless_dr_grpo():
    # group 1: mean 2, deviations [-1, -1, -1, 3], unbiased var (1 + 1 + 1 + 9) / 3 = 4, std 2 -> dev / 2.0001
    # group 2: mean 2, deviations [1, -1, -1, 1], unbiased var 4 / 3, std 1.1547005 -> dev / 1.1548005
    # group 3: all equal -> 0 (not 0 / 0)
    a, b = 1 / 2.0001, 1 / 1.1548005
    close(core.grpo_advantages(GROUP_REWARDS, 4), [-a, -a, -a, 3 * a, b, -b, -b, b, 0, 0, 0, 0])
    close(core.grpo_advantages(GROUP_REWARDS, 4, scale=False), [-1, -1, -1, 3, 1, -1, -1, 1, 0, 0, 0, 0])


def test_group_advantages_need_whole_groups_of_at_least_two():
    with pytest.raises(ValueError, match="k=1"):
        core.rloo_advantages(t(1.0, 2.0), 1)
    with pytest.raises(ValueError, match="k=4 for 6 rows"):
        core.grpo_advantages(GROUP_REWARDS[:6], 4)


def test_sequence_advantages_go_on_every_response_token_and_not_on_padding():
    close(core.per_token(t(2.0, -1.0), t([1, 1, 1], [1, 0, 0])), [[2, 2, 2], [-1, 0, 0]])


def test_reinforce_pp_whitens_the_returns_over_the_batchs_tokens():
    rewards, mask = t([0.0, -1.0, 3.0], [1.0, 9.0, 9.0]), t([1, 1, 1], [1, 0, 0])  # padding holds junk
    # gamma 1: returns [2, 2, 3] and [1]; discounted by 0.5: 3, -1 + 1.5 = 0.5, 0 + 0.25 = 0.25
    close(core.discounted_returns(rewards, mask), [[2, 2, 3], [1, 0, 0]])
    close(core.discounted_returns(rewards, mask, gamma=0.5), [[0.25, 0.5, 3], [1, 0, 0]])
    # over the 4 tokens: mean 2, unbiased var (0 + 0 + 1 + 1) / 3 = 2/3 -> (G - 2) * sqrt(3/2)
    close(core.reinforce_pp_advantages(rewards, mask), [[0, 0, 1.2247449], [-1.2247449, 0, 0]])
    equal = core.reinforce_pp_advantages(t([0.0, 1.0], [0.0, 1.0]), t([1, 1], [1, 1]))  # every return is 1
    close(equal, [[0, 0], [0, 0]])


def test_kl_loss_is_the_token_mean_of_k3():
    logp = torch.log(t([0.5, 0.2, 0.9])).requires_grad_()
    ref, mask = torch.log(t([0.25, 0.4, 0.1])), t([1, 1, 0])
    loss = core.kl_loss(logp, ref, mask)
    # k3 as in test_kl_estimators: [0.1931472, 0.3068528] -> mean 0.25 (the padding token is left out)
    assert loss.item() == pytest.approx(0.25)
    loss.backward()
    # d k3 / d log p = 1 - r with r = p_ref / p = [0.5, 2]; halved by the mean over 2 tokens
    close(logp.grad, [[0.25, -0.5, 0.0]])


def test_clipped_policy_loss():
    # tokens: (A, ratio) = (1, 1.1) inside; (1, 1.5) clipped to 1.2; (-1, 0.5) clipped to 0.8;
    # (-1, 2.0) outside the range but the unclipped term is larger (pessimistic bound); padding.
    adv = t([1.0, 1.0, -1.0, -1.0, 100.0])
    old = torch.zeros(1, 5)
    logp = torch.log(t([1.1, 1.5, 0.5, 2.0, 3.0])).requires_grad_()
    mask = t([1, 1, 1, 1, 0])
    loss, stats = core.policy_loss(logp, old, adv, mask, clip_range=0.2)
    # max(-A r, -A clip(r)): -1.1, -1.2, 0.8, 2.0 -> mean 0.5 / 4
    assert loss.item() == pytest.approx(0.125)
    assert stats["clipfrac"].item() == pytest.approx(0.5)
    # 0.5 * mean(ln(r)^2) = 0.5 * (0.0090840 + 0.1644020 + 0.4804530 + 0.4804530) / 4
    assert stats["approx_kl"].item() == pytest.approx(0.141799, abs=1e-6)
    loss.backward()
    # d/dlogp (-A r / 4) = -A r / 4 where unclipped; 0 where the clipped term wins, and on padding
    close(logp.grad, [[-0.275, 0.0, 0.0, 0.5, 0.0]])


def test_clipped_value_loss():
    # (v, v_old, R): (1.1, 1, 2) inside; (2, 1, 2) v_clip = 1.2 larger error; (0, 1, 3) v_clip = 0.8
    # smaller error; padding.
    values, old, returns = t([1.1, 2.0, 0.0, 10.0]), t([1.0, 1.0, 1.0, 0.0]), t([2.0, 2.0, 3.0, -10.0])
    loss, stats = core.value_loss(values, old, returns, t([1, 1, 1, 0]), clip_range_value=0.2)
    # max((v - R)^2, (v_clip - R)^2) = 0.81, 0.64, 9 -> 0.5 * 10.45 / 3
    assert loss.item() == pytest.approx(0.5 * 10.45 / 3)
    assert stats["vf_clipfrac"].item() == pytest.approx(1 / 3)


def test_kl_controllers():
    fixed = core.kl_controller(0.05)
    fixed.update(100.0, 256)
    assert isinstance(fixed, core.FixedKLController) and fixed.value == 0.05

    ctl = core.kl_controller(0.1, target=6.0, horizon=10000)
    assert isinstance(ctl, core.AdaptiveKLController)
    ctl.update(torch.tensor(5.4), 1000)  # error = 5.4/6 - 1 = -0.1: 0.1 * (1 - 0.1 * 1000/10000) = 0.099
    assert ctl.value == pytest.approx(0.099)
    ctl.load_state_dict({"value": 0.1})
    ctl.update(7.5, 256)  # error = 0.25 -> clipped to 0.2: 0.1 * (1 + 0.2 * 256/10000) = 0.100512
    assert ctl.value == pytest.approx(0.100512)
    ctl.load_state_dict({"value": 0.1})
    ctl.update(0.0, 10000)  # error = -1 -> clipped to -0.2: 0.1 * 0.8
    assert ctl.value == pytest.approx(0.08)

    restored = core.kl_controller(0.1, target=6.0)
    restored.load_state_dict(ctl.state_dict())
    assert restored.value == ctl.value


def test_check_finite_names_quantity_and_step():
    core.check_finite("loss", torch.tensor([1.0, 2.0]), 3)
    with pytest.raises(FloatingPointError, match=r"step 7: policy loss is not finite"):
        core.check_finite("policy loss", torch.tensor([1.0, float("nan")]), 7)
    with pytest.raises(FloatingPointError, match="step 8: scores"):
        core.check_finite("scores", torch.tensor([float("inf")]), 8)


@pytest.mark.parametrize("start_coef", [0.01, 1.0])
def test_adaptive_kl_brings_a_toy_policy_to_the_target_kl(start_coef):
    """A softmax policy over 8 tokens chases the optimum of reward - beta * KL (pi* ~ pi_ref * exp(r / beta)) a fifth
    of the way per step, as PPO does over a few updates; the controller sets beta from the KL it measures. From a beta
    far too small (the policy runs off toward the best token) or far too large (it hardly moves), the KL settles at
    the target."""
    ref_logits = torch.linspace(1.0, -1.0, 8)
    reward = torch.linspace(-1.0, 3.0, 8)
    ref = torch.log_softmax(ref_logits, -1)
    logits = ref_logits.clone()
    target = 0.5
    ctl = core.kl_controller(start_coef, target=target, horizon=200)
    kls = []
    for _ in range(400):
        optimum = ref + reward / ctl.value
        logits = logits + 0.2 * (optimum - logits)
        logp = torch.log_softmax(logits, -1)
        kl = float((logp.exp() * (logp - ref)).sum())
        kls.append(kl)
        ctl.update(kl, n_steps=16)
    assert max(kls[:20]) > 1.5 * target or min(kls[:20]) < 0.5 * target  # it did not start at the target
    assert abs(sum(kls[-50:]) / 50 - target) < 0.05 * target, kls[-50:]
