"""The PPO algorithm for RLHF as pure tensor functions (no models, no I/O), tested against hand-derived numbers:
GAE with a critic, or the critic-free advantages of RLOO, GRPO and REINFORCE++."""

import torch

from rlhf.errors import NonFiniteError

# Follows Ziegler et al. 2019, Stiennon et al. 2020, Ouyang et al. 2022 and Huang et al. 2024 ("The N+ implementation
# details of RLHF with PPO"). Shapes: B sequences x T response tokens; `mask` [B, T] is 1 on real response tokens
# (up to and including EOS) and 0 on the padding after.


def logprobs_from_logits(logits, tokens, temperature=1.0):
    """log softmax(logits / temperature)[tokens]: the log-probs of the sampling distribution. [B, T]"""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits, temperature=1.0):
    """H = logsumexp(z) - sum_v softmax(z)_v z_v with z = logits / temperature. [B, T]"""
    z = logits.float() / temperature
    return torch.logsumexp(z, dim=-1) - (torch.softmax(z, dim=-1) * z).sum(-1)


def masked_mean(x, mask, dim=None):
    """sum(x * mask) / sum(mask), over all elements or along `dim`."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum()
    return (x * mask).sum(dim) / mask.sum(dim)


def masked_var(x, mask, unbiased=True):
    """Variance of the unmasked elements; unbiased multiplies by n / (n - 1) (Bessel)."""
    n = mask.sum()
    if n < 2:
        raise ValueError(f"masked_var needs at least 2 unmasked elements, got {int(n)}")
    var = masked_mean((x - masked_mean(x, mask)) ** 2, mask)
    return var * n / (n - 1) if unbiased else var


def masked_whiten(x, mask, shift_mean=True):
    """(x - mean) / sqrt(var + 1e-8) over the unmasked elements; shift_mean=False adds the mean back
    (only rescales, as for reward whitening). Padding positions come out 0."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(x.dtype)


def kl_estimate(logprobs, ref_logprobs, estimator="k1"):
    """Per-token estimate of KL(pi || pi_ref) from samples of pi (Schulman, "Approximating KL").

    k1 = log p - log p_ref (unbiased, can be negative);
    k3 = (r - 1) - log r with r = p_ref / p (unbiased, always >= 0, lower variance).
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}: expected 'k1' or 'k3'")


def score_with_penalties(scores, ended_with_eos, missing_eos_penalty=None, reward_mean=0.0,
                         reward_std=1.0, normalize=False, clip=None):
    """Reward-model scores [B] -> the scalar reward of each response [B].

    In order: s = (s - reward_mean) / reward_std if normalize; s = clamp(s, -clip, clip) if clip;
    s = s - missing_eos_penalty for responses that hit the length limit without EOS (subtracted
    after clipping, like TRL's `missing_eos_penalty`, so a truncated response always scores lower).
    """
    if normalize:
        scores = (scores - reward_mean) / reward_std
    if clip is not None:
        scores = scores.clamp(-clip, clip)
    if missing_eos_penalty is not None:
        scores = scores - missing_eos_penalty * (~ended_with_eos.bool()).to(scores.dtype)
    return scores


def token_rewards(scores, logprobs, ref_logprobs, mask, kl_coef, estimator="k1"):
    """r_t = -kl_coef * KL_t on every response token, + score on each row's last real token
    (Ziegler et al. 2019, eq. 2). Returns (rewards [B, T], kl [B, T]); padding positions are 0."""
    kl = kl_estimate(logprobs, ref_logprobs, estimator) * mask.to(logprobs.dtype)
    return terminal_rewards(scores, mask, logprobs.dtype) - kl_coef * kl, kl


def terminal_rewards(scores, mask, dtype=torch.float32):
    """[B, T]: each row's score on its last real token, 0 elsewhere (the rewards with no KL term)."""
    rewards = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    rewards[torch.arange(len(scores)), mask.sum(-1).long() - 1] = scores.to(dtype)
    return rewards


@torch.no_grad()
def gae(rewards, values, mask, gamma=1.0, lam=0.95):
    """Generalised advantage estimation (Schulman et al. 2016), backwards over T:

    delta_t = r_t + gamma * V_{t+1} - V_t,   A_t = delta_t + gamma * lam * A_{t+1},
    with V and A beyond each row's last real token taken as 0 (no bootstrapping past the response).
    Returns (advantages, returns = advantages + values); padding positions are 0.
    """
    mask = mask.to(values.dtype)
    rewards, values = rewards * mask, values * mask
    reversed_advantages, next_value, next_adv = [], 0.0, 0.0
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = delta + gamma * lam * next_adv
        reversed_advantages.append(next_adv)
        next_value = values[:, t]
    advantages = torch.stack(reversed_advantages[::-1], dim=1)
    return advantages * mask, (advantages + values) * mask


def discounted_returns(rewards, mask, gamma=1.0):
    """G_t = r_t + gamma * G_{t+1} within each row, 0 past its last real token: GAE with V = 0 and lambda = 1.
    [B, T]; padding positions are 0."""
    return gae(rewards, torch.zeros_like(rewards), mask, gamma, lam=1.0)[0]


def reinforce_pp_advantages(rewards, mask, gamma=1.0):
    """REINFORCE++ (Hu 2025): the per-token returns of the (KL-penalised) token rewards, whitened over all response
    tokens of the batch; the batch, not a critic or a group, is the baseline. [B, T]"""
    return masked_whiten(discounted_returns(rewards, mask, gamma), mask)


def groups_of(rewards, k):
    """Sequence rewards [B] as [B / k, k]: rows i*k .. i*k + k - 1 are the k samples of one prompt."""
    if k < 2 or len(rewards) % k:
        raise ValueError(f"group advantages need groups of k >= 2 samples filling the batch, got k={k} "
                         f"for {len(rewards)} rows")
    return rewards.reshape(-1, k)


def rloo_advantages(rewards, k):
    """RLOO (Kool et al. 2019, Ahmadian et al. 2024): each sample's sequence reward minus the mean of the other
    k - 1 samples of its prompt, an unbiased baseline that needs no critic. [B]"""
    groups = groups_of(rewards, k)
    others = (groups.sum(1, keepdim=True) - groups) / (k - 1)
    return (groups - others).reshape(-1)


def grpo_advantages(rewards, k, scale=True, eps=1e-4):
    """GRPO (Shao et al. 2024): sequence reward minus its group's mean, divided by the group's std (unbiased) + eps;
    `scale=False` keeps the centred rewards (Dr. GRPO, Liu et al. 2025: the std division biases towards groups
    that are all right or all wrong). [B]"""
    groups = groups_of(rewards, k)
    centred = groups - groups.mean(1, keepdim=True)
    if scale:
        centred = centred / (groups.std(1, keepdim=True) + eps)
    return centred.reshape(-1)


def per_token(sequence_values, mask):
    """A value per sequence [B] on every response token of its row [B, T] (0 on padding): how RLOO and GRPO credit
    a sequence's advantage to each of its tokens."""
    return sequence_values[:, None].to(mask.dtype) * mask


def policy_loss(logprobs, old_logprobs, advantages, mask, clip_range=0.2):
    """Clipped surrogate (Schulman et al. 2017): mean over tokens of
    max(-A * ratio, -A * clamp(ratio, 1 - eps, 1 + eps)), ratio = exp(log p - log p_old).

    stats: clipfrac (fraction of tokens where the clipped term is the larger one) and
    approx_kl = mean 0.5 * (log p - log p_old)^2 (KL(old || new) to second order, as in cleanRL/TRL).
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean((clipped > unclipped).float(), mask),
                 "approx_kl": masked_mean(0.5 * log_ratio ** 2, mask)}
    return loss, stats


def kl_loss(logprobs, ref_logprobs, mask):
    """GRPO's KL term (Shao et al. 2024): the token mean of the k3 estimate of KL(pi || pi_ref), for the loss
    (times kl_coef) instead of a per-token reward penalty; its gradient pulls the policy back towards the reference."""
    return masked_mean(kl_estimate(logprobs, ref_logprobs, "k3"), mask)


def value_loss(values, old_values, returns, mask, clip_range_value=0.2):
    """0.5 * mean over tokens of max((V - R)^2, (V_clip - R)^2), V_clip = V_old + clamp(V - V_old, -c, c).
    stats: vf_clipfrac (fraction of tokens where the clipped term is the larger one)."""
    clipped_values = old_values + (values - old_values).clamp(-clip_range_value, clip_range_value)
    unclipped_loss, clipped_loss = (values - returns) ** 2, (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped_loss, clipped_loss), mask)
    with torch.no_grad():
        stats = {"vf_clipfrac": masked_mean((clipped_loss > unclipped_loss).float(), mask)}
    return loss, stats


class FixedKLController:
    """A constant KL coefficient beta."""

    def __init__(self, kl_coef):
        self.value = kl_coef

    def update(self, current_kl, n_steps):
        pass

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = state["value"]


class AdaptiveKLController(FixedKLController):
    """Ziegler et al. 2019, eq. 3: e = clip(KL / target - 1, -0.2, 0.2); beta *= 1 + e * n_steps / horizon.
    Raises beta when the policy drifts further than `target` nats from the reference, lowers it otherwise."""

    def __init__(self, init_kl_coef, target, horizon):
        super().__init__(init_kl_coef)
        self.target, self.horizon = target, horizon

    def update(self, current_kl, n_steps):
        error = min(max(float(current_kl) / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_steps / self.horizon


def kl_controller(kl_coef, target=None, horizon=10000):
    """An adaptive controller when a KL `target` is set, else a fixed coefficient."""
    if target is None:
        return FixedKLController(kl_coef)
    return AdaptiveKLController(kl_coef, target, horizon)


def check_finite(name, tensor, step):
    """Stop training at the first nan/inf, naming the quantity and the step."""
    if not torch.isfinite(torch.as_tensor(tensor)).all():
        raise NonFiniteError(f"step {step}: {name} is not finite (nan/inf)")
