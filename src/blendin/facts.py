"""Facts about the guidance suggestion at a consulted step, derived from the two distributions.

The policies use the guidance top token, its probability, its base twin (the base token with the
same bytes) and P_b of that twin. The trace also records where the suggestion sits in the base
distribution, as the paper's vocabulary-overlap analysis (Figure 4, Table 4) defines it: its rank,
whether it lies inside the base's top-p (0.9) set, how large that set is, and how much the two
top-100 lists overlap. A guidance token without a single base twin is located by the first base
token of its spelling, as the reference code does (re-encode, take the first id), and flagged.
"""

from __future__ import annotations

import torch

TOP_P = 0.9  # the top-p set used by the vocabulary-overlap analysis (paper, Appendix A.1)
OVERLAP_K = 100  # the top-k lists BlendIn blends (paper, section 5)


def rank_in(probs: torch.Tensor, token: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """1-based rank of `token` in each row of `probs` and whether it lies in the top-p set.

    Rank counts the tokens strictly more probable (ties share the better rank); the token is in the
    top-p set when the mass strictly above it is below TOP_P (the smallest prefix reaching 0.9).
    """
    p = probs.gather(-1, token.clamp_min(0).unsqueeze(-1))
    above = probs > p
    return above.sum(-1) + 1, (probs * above).sum(-1) < TOP_P


def top_p_size(
    probs: torch.Tensor, p: float = TOP_P, exact: bool = True, top: torch.Tensor | None = None
) -> torch.Tensor:
    """Size of the smallest set of most probable tokens whose mass reaches p, per row.

    Sorting a 262k-token distribution is slow, so look at the top 256 first. exact=False stops there
    and returns -(256 + 1) for rows whose top 256 hold less than p (the caller completes them with
    `top_p_size` where it needs to; the decoding step on a CPU does, after its one copy to the host).
    exact=True completes those rows on the device (`threshold_size`), without reading anything back.
    top: the 256 largest probabilities of each row, sorted, if already known.
    """
    vocab = probs.shape[-1]
    k = min(256, vocab)
    top = (top[:, :k] if top is not None and top.shape[-1] >= k else probs.topk(k, dim=-1).values).cumsum(-1)
    reached = (top[:, -1] >= p) | (k == vocab)
    size = ((top < p).sum(-1) + 1).clamp_max(k)
    if not exact:
        return torch.where(reached, size, torch.full_like(size, -(k + 1)))
    if k == vocab:
        return size
    return torch.where(reached, size, threshold_size(probs, p))


_ABOVE_ONE = 0x3F800001  # the float32 bit pattern just above 1.0


def threshold_size(probs: torch.Tensor, p: float = TOP_P) -> torch.Tensor:
    """`top_p_size` of every row without sorting and without a host read: a fixed 31 steps of bisection
    on float32 bit patterns (which order non-negative floats as integers) find v, the largest
    probability with mass(probs >= v) >= p; the set is every token above v and enough tokens equal to
    v to reach p. Each step is one pass over the vocabulary, so it costs about 60 passes in all."""
    x = probs.float()
    rows = x.shape[0]
    lo = torch.zeros(rows, dtype=torch.int32, device=x.device)  # mass(x >= 0) = 1 >= p
    hi = torch.full_like(lo, _ABOVE_ONE)  # mass(x >= 1 + ulp) = 0 < p
    for _ in range(31):  # the range holds fewer than 2^31 patterns
        mid = (lo + hi) // 2
        threshold = mid.view(torch.float32)[:, None]
        enough = torch.where(x >= threshold, x, 0.0).sum(-1, dtype=torch.float64) >= p
        lo, hi = torch.where(enough, mid, lo), torch.where(enough, hi, mid)
    v = lo.view(torch.float32)[:, None]
    above = x > v
    missing = p - torch.where(above, x, 0.0).sum(-1, dtype=torch.float64)  # what the ties at v must add
    ties = (x == v).sum(-1)
    needed = torch.ceil(missing / v.squeeze(-1).double().clamp_min(1e-45)).long().clamp(1)
    return above.sum(-1) + torch.minimum(needed, ties)


def add_guidance_facts(step, guide_probs: torch.Tensor, exact: bool = True) -> None:
    """Fill the guidance fields of a `policies.Step` from the guidance distribution [B, Vg].

    Every row is computed with the same tensor operations (no row is picked out on the host); the
    facts of rows that did not consult the guidance are then blanked (-1, False, NaN). exact: see
    `top_p_size` (the only fact that may need a second look).
    """
    vocab = step.vocab
    consulted = step.consulted
    step.guide_probs = guide_probs
    step.guide_top_prob, step.guide_top_id = guide_probs.max(-1)
    mapped = vocab.guidance_to_base[step.guide_top_id]
    has_twin = mapped >= 0
    step.guide_top_joint = torch.where(has_twin, mapped, step.guide_top_id + step.base_size)
    pb_tg = step.base_probs.gather(-1, mapped.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    step.base_prob_of_guide_top = torch.where(has_twin, pb_tg, torch.zeros_like(pb_tg))
    # where the suggestion sits in the base distribution: its twin, else the first spelled token
    located = vocab.first_base_ids(step.guide_top_id)
    rank, in_top_p = rank_in(step.base_probs, located)
    found = located >= 0
    minus = torch.full_like(rank, -1)
    step.guide_top_rank = torch.where(consulted & has_twin, rank, minus)  # what the policies (af) use
    step.guide_top_in_base_top_p = consulted & has_twin & in_top_p
    step.located_rank = torch.where(consulted & found, rank, minus)
    step.located_in_top_p = consulted & found & in_top_p
    step.guide_top_spelled = consulted & ~has_twin & found
    sizes = top_p_size(step.base_probs, exact=exact, top=step.top("base", 256)[0])
    step.base_top_p_size = torch.where(consulted, sizes, minus)
    nan = torch.full_like(step.base_top_prob, float("nan"))
    overlap = top_k_overlap(
        step.base_probs, guide_probs, vocab, tops=(step.top("base", OVERLAP_K)[1], step.top("guide", OVERLAP_K)[1])
    )
    step.top100_overlap = torch.where(consulted, overlap, nan)


def top_k_overlap(
    base_probs: torch.Tensor,
    guide_probs: torch.Tensor,
    vocab,
    k: int = OVERLAP_K,
    tops: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Share of the base's top-k tokens that are also in the guidance's top-k (by base twin).
    tops: both top-k id lists, if already known."""
    k_b, k_g = min(k, base_probs.shape[-1]), min(k, guide_probs.shape[-1])
    base_ids, guide_top = tops or (base_probs.topk(k_b, dim=-1).indices, guide_probs.topk(k_g, dim=-1).indices)
    guide_ids = vocab.guidance_to_base[guide_top]  # -1 never matches a base id
    guide_ids = guide_ids.sort(-1).values
    at = torch.searchsorted(guide_ids, base_ids).clamp_max(k_g - 1)  # membership by sorted search
    shared = (guide_ids.gather(-1, at) == base_ids).sum(-1)
    return shared.float() / k_b
