"""Seeded sampling from each method's own distribution, reproducible whatever the batch.

Which distribution a step samples from is decided by the method's rule, as in greedy decoding
(`policies.Choice.source`): the base's softmax where the base keeps the step, the guidance's where the
rule hands the step to the guidance (NUDGING where u < tau; cap, AF, CC where their filters accept),
the blend where BlendIn blends (its top-k union, or the full shared vocabulary). The uncertainty test
u < tau always reads the base's untempered distribution, so a method consults the guidance at the same
steps whatever the temperature.

Temperature applies to the distribution the step samples from: p^(1/T), renormalised. For the base,
the guidance and every method that hands a step to one model this is exactly softmax(logits / T). For
BlendIn it tempers the blend, not each model before blending: the blend weight alpha (Eq. 3) reads the
two models' untempered confidences, and T -> 0 then gives BlendIn's greedy choice. Then top-k (keep the
k most probable tokens) and top-p (the smallest set reaching mass p), renormalised.

Cross-tokenizer pairs: a guidance token without a base twin keeps its mass and, when drawn, is spelled
with base tokens, as the greedy path does (`engine`); so the guidance's distribution is sampled as the
guidance itself would.

Reproducibility: the draw for a token is a uniform number computed from (seed, sample id, sample
index k, step) by a counter-based hash (`uniforms`): no generator state is shared between rows, so batch
size, batch composition, prompt order and resuming a killed run give the same outputs (in fp32; a
reduced precision can move a probability across the drawn threshold). The inverse CDF over the
distribution (in token order, or sorted when top-p needs it) turns it into a token.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from .errors import ConfigError
from .policies import SOURCE_BASE, SOURCE_BLEND, SOURCE_GUIDANCE, Step, joint_ids

# splitmix64's constants as signed 64-bit integers (torch has no unsigned 64-bit arithmetic)
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)
_MIX1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX2 = 0x94D049BB133111EB - (1 << 64)


@dataclass(frozen=True)
class Sampling:
    """The `decoding` settings. temperature 0 = greedy (the default: every method's argmax, as before).
    top_p 1.0 and top_k 0 switch those filters off. seed: with the sample id and index, fixes every draw.
    samples: outputs per benchmark item (the runner's business; a decoder draws one per prompt)."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    samples: int = 1

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


KEYS = ("temperature", "top_p", "top_k", "seed", "samples")


def sampling_from(cfg) -> Sampling:
    """Check a `decoding` config (dict or OmegaConf node; missing keys take the defaults) and build it."""
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(KEYS))
    if unknown:
        raise ConfigError(f"decoding has no setting {', '.join(unknown)}; its settings are {', '.join(KEYS)}")
    for key in ("temperature", "top_p"):  # 1 and 1.0 are one setting (one run name)
        if isinstance(cfg.get(key), int) and not isinstance(cfg.get(key), bool):
            cfg[key] = float(cfg[key])
    s = Sampling(**cfg)

    def bad(key, rule):
        raise ConfigError(f"decoding.{key}={getattr(s, key)!r} {rule}")

    number = (int, float)
    if isinstance(s.temperature, bool) or not isinstance(s.temperature, number) or not s.temperature >= 0:
        bad("temperature", "must be a number >= 0 (0 = greedy)")
    if isinstance(s.top_p, bool) or not isinstance(s.top_p, number) or not 0 < s.top_p <= 1:
        bad("top_p", "must be in (0, 1] (1 = off)")
    for key, low in (("top_k", 0), ("seed", 0), ("samples", 1)):
        value = getattr(s, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            bad(key, f"must be an integer >= {low}")
    if s.greedy and s.samples > 1:
        bad(
            "samples",
            "needs decoding.temperature > 0: greedy decoding gives the same output every time. "
            "Fix: decoding=sample, or decoding.temperature=0.7",
        )
    if s.greedy and (s.top_p < 1 or s.top_k > 0):
        bad("temperature", "is 0 (greedy), so top_p and top_k would do nothing: set a temperature to sample")
    return s


def stream_key(seed: int, sample_id: str, index: int) -> int:
    """The signed 64-bit key of one output's random stream: a hash of (seed, sample id, sample index)."""
    digest = hashlib.sha256(f"{seed}\x00{sample_id}\x00{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little", signed=True)


def _shift(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic: it copies the sign bit)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def uniforms(keys: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """One uniform number in [0, 1) per row: splitmix64 of (key + (step + 1) * golden), float64.
    A pure function of (key, step): the same draw whichever batch or position the row is in."""
    x = keys + (steps + 1) * _GOLDEN  # int64 arithmetic wraps around, as splitmix64's uint64 does
    x = (x ^ _shift(x, 30)) * _MIX1
    x = (x ^ _shift(x, 27)) * _MIX2
    x = x ^ _shift(x, 31)
    return _shift(x, 11).to(torch.float64) / float(1 << 53)


def _tempered_filtered(probs: torch.Tensor, sampling: Sampling):
    """(the probabilities as given, float32; tempered and filtered ones, float64, unnormalised; None, or the
    column of each entry when a filter sorted them, most probable first)."""
    raw = probs.float().clamp_min(0)
    p = raw
    if sampling.temperature != 1:
        # p^(1/T) computed as exp(log p / T) after dividing by the row maximum, which keeps it finite
        logp = torch.log(p / p.amax(-1, keepdim=True).clamp_min(1e-30))
        p = torch.exp(logp / sampling.temperature)
    p = p.to(torch.float64)  # sums over a large vocabulary in float64: the draw's thresholds stay exact
    order = None
    top_k = sampling.top_k if 0 < sampling.top_k < p.shape[-1] else 0
    if top_k or sampling.top_p < 1:
        # a stable sort: tied tokens keep their id order, whatever the kernel
        p, order = p.sort(dim=-1, descending=True, stable=True)
        if top_k:
            p, order = p[..., :top_k], order[..., :top_k]
    if sampling.top_p < 1:
        before = (p.cumsum(-1) - p) / p.sum(-1, keepdim=True)  # the mass of the tokens ahead of each
        p = torch.where(before < sampling.top_p, p, torch.zeros_like(p))
    return raw, p, order


def shape(probs: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """The distribution `draw` samples from: `probs` [R, N] tempered and filtered, renormalised, float64,
    in column order (0 where a filter removed a column)."""
    _, p, order = _tempered_filtered(probs, sampling)
    if order is not None:
        p = torch.zeros(probs.shape, dtype=p.dtype, device=p.device).scatter(-1, order, p)
    return p / p.sum(-1, keepdim=True).clamp_min(1e-300)


def dense_target(step: Step, choice, policy, sampling: Sampling) -> torch.Tensor:
    """Each row's distribution as `sample` draws from it (its source, tempered and filtered) as a vector
    over joint ids [R, base size + guidance size]: base tokens first, then guidance tokens that have no
    base twin (a guidance token with a twin puts its mass on the twin). For speculative sampling."""
    sources = getattr(policy, "sources", (SOURCE_BASE, SOURCE_GUIDANCE, SOURCE_BLEND))
    base_size = step.base_size
    guide_size = step.guide_probs.shape[-1] if step.guide_probs is not None else 0
    out = torch.zeros(
        (len(step.base_probs), base_size + guide_size), dtype=torch.float64, device=step.base_probs.device
    )
    out[:, :base_size] = shape(step.base_probs, sampling)
    if step.guide_probs is None:
        return out
    if SOURCE_GUIDANCE in sources:
        guidance = torch.arange(guide_size, device=out.device).expand_as(step.guide_probs)
        spread = torch.zeros_like(out).scatter_add_(-1, joint_ids(guidance, step), shape(step.guide_probs, sampling))
        out = torch.where((choice.source == SOURCE_GUIDANCE)[:, None], spread, out)
    if SOURCE_BLEND in sources and hasattr(policy, "distribution"):
        ids, probs = policy.distribution(step)
        shaped = shape(probs, sampling)
        spread = torch.zeros_like(out)
        if ids is None:
            spread[:, : shaped.shape[-1]] = shaped
        else:
            spread.scatter_add_(-1, ids, shaped)
        blended = (choice.source != SOURCE_BASE) & (choice.source != SOURCE_GUIDANCE)
        out = torch.where(blended[:, None], spread, out)
    return out


def draw(
    probs: torch.Tensor, u: torch.Tensor, sampling: Sampling, ids: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw one token per row from `probs` [R, N] (candidate ids `ids` [R, N], or the column index when
    None) with the uniforms `u` [R]: temper, filter, renormalise, inverse CDF.

    Returns (token ids; the drawn token's probability under the tempered, filtered distribution; its
    probability under `probs` itself). A token several columns write (two guidance tokens with one base
    twin) has the mass of all of them; each column still counts on its own in top-k and top-p, as the
    model that owns the distribution would count it."""
    raw, p, order = _tempered_filtered(probs, sampling)
    cdf = p.cumsum(-1)
    total = cdf[..., -1:]
    # the first column whose running sum passes u * total has mass (a zero adds nothing to the sum);
    # kept below the total, so that a u next to 1 rounding up cannot step past the last such column
    target = torch.minimum(u.unsqueeze(-1) * total, torch.nextafter(total, torch.zeros_like(total)))
    at = torch.searchsorted(cdf, target, right=True).clamp_max(p.shape[-1] - 1)
    column = at if order is None else order.gather(-1, at)
    token = column if ids is None else ids.gather(-1, column)
    if ids is None:
        prob = p.gather(-1, at) / total
        plain = raw.gather(-1, column)
    else:
        in_order = ids if order is None else ids.gather(-1, order)
        prob = (p * (in_order == token)).sum(-1, keepdim=True) / total
        plain = (raw * (ids == token)).sum(-1, keepdim=True)
    plain = plain / raw.sum(-1, keepdim=True).clamp_min(1e-30)
    return token.squeeze(-1), prob.squeeze(-1).to(torch.float32), plain.squeeze(-1).to(torch.float32)


def sample(
    step: Step, choice, policy, sampling: Sampling, u: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row's token drawn from the distribution its method chose this step (`Choice.source`), in the
    joint id space (a base id, or base_size + a guidance id without a base twin). Every row goes through
    the same tensor operations; a row takes the draw of its own source. Only the sources the policy can
    choose (`sources`; all three when it does not say) are drawn from. Returns what `draw` returns."""
    sources = getattr(policy, "sources", (SOURCE_BASE, SOURCE_GUIDANCE, SOURCE_BLEND))
    token, prob, plain = draw(step.base_probs, u, sampling)
    if step.guide_probs is not None:
        if SOURCE_GUIDANCE in sources:
            guidance = torch.arange(step.guide_probs.shape[-1], device=token.device).expand_as(step.guide_probs)
            drawn = draw(step.guide_probs, u, sampling, joint_ids(guidance, step))
            take = choice.source == SOURCE_GUIDANCE
            token, prob, plain = (torch.where(take, g, b) for g, b in zip(drawn, (token, prob, plain)))
        # a rule that hands a step to neither model alone (SOURCE_BLEND) samples from its `distribution`
        if SOURCE_BLEND in sources and hasattr(policy, "distribution"):
            ids, probs = policy.distribution(step)
            drawn = draw(probs, u, sampling, ids)
            blended = (choice.source != SOURCE_BASE) & (choice.source != SOURCE_GUIDANCE)
            token, prob, plain = (torch.where(blended, g, b) for g, b in zip(drawn, (token, prob, plain)))
    return token, prob, plain
