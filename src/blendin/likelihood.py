"""Log-likelihoods under a decoding method's own next-token distribution, by teacher forcing.

Both models are walked along a given continuation (as `forcing.py` does) and, at each position, the
method's distribution is read off the two next-token distributions (`method_logprob`, the one place
that defines it):

- base, guidance, aligned (one model alone): that model's own distribution, on its own tokens;
- nudging, af, cc, af_cc: where the method takes the guidance's token (the base is unsure, u < tau,
  and for the filters the suggestion passes them), the guidance's distribution moved onto base tokens;
  elsewhere the base's;
- blendin: where u < tau, the renormalised blend whose argmax BlendIn emits (`policies.Blend`, the same
  weight alpha and the same top-k union or shared vocabulary); elsewhere the base's;
- probe: the base's (it never applies the guidance).
- kad_* (token-wise deferral) and proxy_tuning: the distribution the rule defines at every position
  (`policies.Deferral.distribution`, `policies.ProxyTuning.distribution`); proxy-tuning also walks the
  guidance's untuned twin along what the guidance reads.

For guided methods the continuation is the base's tokens. The guidance's probability of a base token
is that of its guidance twin (the guidance token with the same bytes; the sum where several guidance
tokens share one twin, as with end-of-turn ids). A base token with no twin has guidance probability 0,
so where the method uses the guidance alone its log-probability is -inf; the blend gives it the base's
share only. Such zeros (and tokens outside the blend's candidates) get `score`'s floor, if one is
given (docs/lm_eval.md). With a shared tokenizer the guidance reads the base's ids; with two tokenizers it reads
its own tokenization of the text before each position, as in decoding (`forcing.guidance_reads`).

Continuations that share a context are scored in one forward pass per model: the context once, each
continuation a branch after it (a tree attention mask, `streams.attention_masks`), several contexts
per batch (left-padded so that every scored position sits at the end of its row).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .facts import add_guidance_facts
from .forcing import guidance_reads
from .policies import SOURCE_BLEND, SOURCE_GUIDANCE, Blend, Step
from .prompts import prefix_id
from .streams import attention_masks
from .views import _common_prefix_length

CHUNK = 64  # positions whose full distributions are held at once (262k-token vocabularies are large)
NEG_INF = float("-inf")
FLOOR = math.log(1e-10)  # the log-probability lm-eval and the server give a token the method gives 0 (docs/lm_eval.md)


@dataclass(frozen=True)
class Item:
    """One continuation to score: the lead's ids before it and its own ids (base ids for a guided
    method), and for a guided method what the guidance reads before it."""

    context: tuple[int, ...]
    continuation: tuple[int, ...]
    guide_context: tuple[int, ...] | None = None


# ---- the method's distribution at a position -------------------------------------------------------


def method_logprob(
    policy, base_logp, ref, guide_logp=None, vocab=None, untuned_logp=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The method's log-probability of each reference token, and the token the method itself would
    choose there (joint ids, as `Choice.token`), at n positions.

    base_logp [n, Vb] and guide_logp [n, Vg]: each model's log-probabilities after what it read; ref [n]
    base ids. guide_logp None: the lead model alone (base, guidance, aligned). untuned_logp [n, Vg]: the
    guidance's untuned twin (proxy-tuning). The choice is the policy's own `decide`, so `is_greedy`
    follows exactly what decoding would emit along the reference.
    """
    top_id, step, choice = _decide(policy, base_logp, guide_logp, vocab, untuned_logp)
    base_ref = base_logp.gather(-1, ref[:, None]).squeeze(-1)
    if step is None or choice is None:
        return base_ref, top_id
    assert guide_logp is not None and step.guide_probs is not None, "a step that consulted the guidance"
    pg = step.guide_probs
    nudged = choice.applied & (choice.source == SOURCE_GUIDANCE)
    logp = torch.where(nudged, twin_logprob(guide_logp, ref, vocab), base_ref)
    blended = choice.applied & (choice.source == SOURCE_BLEND)
    if bool(blended.any()):
        if isinstance(policy, Blend):
            blend = _blend_logprob(policy, step, vocab, choice.alpha, ref, base_ref, guide_logp, pg)
        else:  # a rule with its own distribution (deferral, proxy-tuning): read ref off it
            blend = _distribution_logprob(policy, step, ref)
        logp = torch.where(blended, blend, logp)
    return logp, choice.token


def _decide(policy, base_logp, guide_logp=None, vocab=None, untuned_logp=None):
    """(the base's top token, the Step a decoder builds here, the method's Choice) at n positions; the
    Step and Choice are None where no position consults the guidance (the base keeps every token)."""
    pb = base_logp.exp()
    top_prob, top_id = pb.max(-1)
    consulted = top_prob < getattr(policy, "tau", 0.0)
    if guide_logp is None or not bool(consulted.any()):
        return top_id, None, None
    zeros = torch.zeros_like(top_id)
    step = Step(pb, top_prob, top_id, consulted, zeros, zeros, vocab=vocab)
    add_guidance_facts(step, guide_logp.exp())
    if untuned_logp is not None:  # proxy-tuning's third model
        step.untuned_probs = untuned_logp.exp()
    return top_id, step, policy.decide(step)


def method_top(
    policy, base_logp, k: int, guide_logp=None, vocab=None, untuned_logp=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most probable tokens of the method's distribution at n positions: (joint ids [n, k], their
    log-probabilities [n, k]). The distribution is the one the method draws from there, as sampling
    does (`sampling.sample`): the base's, the guidance's where the method hands it the step (a base
    token gathers the mass of its guidance twins; a guidance token without a twin is base_size + its
    id), the blend (`Blend.distribution`) where it blends."""
    base_top, base_ids = base_logp.topk(min(k, base_logp.shape[-1]), dim=-1)
    _, step, choice = _decide(policy, base_logp, guide_logp, vocab, untuned_logp)
    if step is None or choice is None:
        return base_ids, base_top
    ids, values = base_ids, base_top
    assert step.guide_probs is not None and vocab is not None, "a step that consulted the guidance"
    pg = step.guide_probs
    nudged = choice.applied & (choice.source == SOURCE_GUIDANCE)
    if bool(nudged.any()):
        unmapped = pg * (vocab.guidance_to_base < 0)  # guidance tokens without a twin, in joint ids after the base's
        joint = torch.cat([vocab.guidance_probs_on_base(pg), unmapped], dim=-1)
        g_top, g_ids = joint.topk(k, dim=-1)
        ids, values = torch.where(nudged[:, None], g_ids, ids), torch.where(nudged[:, None], g_top.log(), values)
    blended = choice.applied & (choice.source == SOURCE_BLEND)
    if bool(blended.any()):
        candidates, probs = policy.distribution(step)
        b_top, at = probs.topk(min(k, probs.shape[-1]), dim=-1)
        b_ids = at if candidates is None else candidates.gather(-1, at)
        ids, values = torch.where(blended[:, None], b_ids, ids), torch.where(blended[:, None], b_top.log(), values)
    return ids, values


def _distribution_logprob(policy, step: Step, ref) -> torch.Tensor:
    """log of the probability a policy's `distribution` gives each base token `ref` (its columns summed)."""
    ids, probs = policy.distribution(step)
    if ids is None:
        prob = probs.gather(-1, ref[:, None]).squeeze(-1)
    else:
        prob = (probs * (ids == ref[:, None])).sum(-1)
    return prob.log()


def twin_logprob(guide_logp, ref, vocab) -> torch.Tensor:
    """log P_g of each base token `ref`: the summed probability of its guidance twins, -inf if none."""
    if vocab.is_identity and guide_logp.shape[-1] == vocab.base_size:
        return guide_logp.gather(-1, ref[:, None]).squeeze(-1)
    twins = vocab.guidance_to_base[None, :] == ref[:, None]
    return guide_logp.masked_fill(~twins, NEG_INF).logsumexp(-1)


def _blend_logprob(policy, step: Step, vocab, alpha, ref, base_ref, guide_logp, pg) -> torch.Tensor:
    """log of the renormalised blend alpha * P_g + (1 - alpha) * P_b at `ref`, over the candidates
    `policies.Blend` blends: the union of both top-k lists (a token missing from a list counts 0
    there), or with top_k None the shared vocabulary. A token outside them has probability 0 (-inf)."""
    if policy.top_k is None:
        shared = vocab.shared_base_mask
        base_part = torch.where(shared[ref], base_ref, NEG_INF)
        guide_part = twin_logprob(guide_logp, ref, vocab)
        guide_mass = (pg * (vocab.guidance_to_base >= 0)).sum(-1)
        total = alpha * guide_mass + (1 - alpha) * (step.base_probs * shared).sum(-1)
    else:
        base_p, base_ids = step.top("base", min(policy.top_k, step.base_probs.shape[-1]))
        guide_p, guide_ids = step.top("guide", min(policy.top_k, pg.shape[-1]))
        base_part = torch.where((base_ids == ref[:, None]).any(-1), base_ref, NEG_INF)
        hits = vocab.guidance_to_base[guide_ids] == ref[:, None]
        guide_part = guide_logp.gather(-1, guide_ids).masked_fill(~hits, NEG_INF).logsumexp(-1)
        total = alpha * guide_p.sum(-1) + (1 - alpha) * base_p.sum(-1)
    mixed = torch.logaddexp(alpha.log() + guide_part, torch.log1p(-alpha) + base_part)
    return mixed - total.clamp_min(1e-30).log()


# ---- scoring many continuations -------------------------------------------------------------------


def score(
    items: list[Item],
    policy,
    lead,
    guidance=None,
    vocab=None,
    batch_size: int = 8,
    floor: float = NEG_INF,
    stats: dict | None = None,
    untuned=None,
) -> list[tuple[float, bool]]:
    """(log-likelihood, is_greedy) of each item under the method's distribution (`method_logprob`).

    lead: the `LoadedModel` whose tokens the continuations are (the base for guided methods); guidance
    and vocab: None for a one-model method. batch_size: contexts per forward pass. The guidance runs
    only for batches where the base is unsure somewhere (elsewhere every method is the base).
    floor: the log-probability given to a token the method's distribution gives probability 0 (-inf:
    none). stats: if given, counts scored "tokens" and "floored" ones into it. untuned: the guidance's
    untuned twin (proxy-tuning), read along what the guidance reads.
    """
    results: list[tuple[float, bool]] = [(0.0, True)] * len(items)  # an empty continuation has probability 1
    with torch.inference_mode():
        for i, base_logp, guide_logp, untuned_logp, ref in _walk(
            items, policy, lead, guidance, vocab, batch_size, untuned
        ):
            logp, choice = method_logprob(policy, base_logp, ref, guide_logp, vocab, untuned_logp)
            zero = torch.isneginf(logp)
            logp = torch.where(zero, floor, logp)
            if stats is not None:
                stats["tokens"] = stats.get("tokens", 0) + len(logp)
                stats["floored"] = stats.get("floored", 0) + int(zero.sum())
            total, greedy = results[i]
            results[i] = (total + float(logp.double().sum()), greedy and bool((choice == ref).all()))
    return results


@dataclass
class TokenScores:
    """One item's continuation scored token by token: each token's log-probability under the method's
    distribution, and per token the `top` most probable tokens there (joint ids) with theirs."""

    logprobs: list[float]
    top: list[list[tuple[int, float]]]


def token_scores(
    items: list[Item],
    policy,
    lead,
    guidance=None,
    vocab=None,
    batch_size: int = 8,
    floor: float = NEG_INF,
    top: int = 0,
    untuned=None,
) -> list[TokenScores]:
    """`score` token by token (the same log-probabilities, `method_logprob`), with each position's `top`
    most probable tokens (`method_top`). Where the scored token is among them, it carries its own
    log-probability, so that "is it the most probable?" reads the same numbers."""
    results = [TokenScores([], []) for _ in items]
    with torch.inference_mode():
        for i, base_logp, guide_logp, untuned_logp, ref in _walk(
            items, policy, lead, guidance, vocab, batch_size, untuned
        ):
            logp, _ = method_logprob(policy, base_logp, ref, guide_logp, vocab, untuned_logp)
            logp = torch.where(torch.isneginf(logp), floor, logp)
            results[i].logprobs += logp.tolist()
            if top > 0:
                ids, values = method_top(policy, base_logp, top, guide_logp, vocab, untuned_logp)
                values = torch.where(torch.isneginf(values), floor, values)
                values = torch.where(ids == ref[:, None], logp[:, None].to(values.dtype), values)
                results[i].top += [list(zip(a, b)) for a, b in zip(ids.tolist(), values.tolist())]
    return results


def plain_guide_context(base_tokenizer, guidance_tokenizer, identical: bool, context) -> tuple[int, ...]:
    """What the guidance reads before a continuation of the base ids `context` when there is no question
    (a text scored as it is, no chat template): the same ids with one tokenizer; else its own BOS and
    its tokenization of the context's text."""
    if identical:
        return tuple(context)
    text = base_tokenizer.decode(context, skip_special_tokens=True)
    return (prefix_id(guidance_tokenizer), *guidance_tokenizer(text, add_special_tokens=False)["input_ids"])


def _walk(items: list[Item], policy, lead, guidance, vocab, batch_size: int, untuned=None):
    """Yield (item index, base log-probabilities [c, Vb], guidance log-probabilities [c, Vg] or None,
    the untuned twin's [c, Vg] or None (proxy-tuning), the continuation's ids [c]) for every slice of
    CHUNK positions of every non-empty continuation, in order within each item. Continuations that
    share a context are read in one forward pass per model."""
    groups: dict[tuple, list[int]] = {}
    for i, item in enumerate(items):
        if item.continuation:
            groups.setdefault((item.context, item.guide_context), []).append(i)
    keys = sorted(groups, key=lambda k: -len(k[0]))  # like-sized contexts share a batch
    tau = getattr(policy, "tau", 0.0)
    for start in range(0, len(keys), batch_size):
        batch = [(key, [items[i].continuation for i in groups[key]]) for key in keys[start : start + batch_size]]
        order = [i for key, _ in batch for i in groups[key]]
        base_logits = _branch_logits(lead, [(key[0], conts) for key, conts in batch])
        guide_logits = untuned_logits = None
        if guidance is not None and any(_unsure(x, tau) for x in base_logits):
            guide_logits = _guidance_logits(guidance, vocab, lead.tokenizer, batch)
            if untuned is not None:  # one tokenizer with the guidance: it reads the same tokens
                untuned_logits = _guidance_logits(untuned, vocab, lead.tokenizer, batch)
        for n, i in enumerate(order):
            ref = torch.tensor(items[i].continuation, device=base_logits[n].device)
            for lo in range(0, len(ref), CHUNK):
                hi = lo + CHUNK
                base_logp = torch.log_softmax(base_logits[n][lo:hi].float(), -1)
                guide_logp = untuned_logp = None
                if guide_logits is not None:
                    guide_logp = torch.log_softmax(guide_logits[n][lo:hi].float(), -1).to(base_logp.device)
                if untuned_logits is not None:
                    untuned_logp = torch.log_softmax(untuned_logits[n][lo:hi].float(), -1).to(base_logp.device)
                yield i, base_logp, guide_logp, untuned_logp, ref[lo:hi]


def _unsure(logits: torch.Tensor, tau: float) -> bool:
    """Is the top probability below tau at some position? (softmax max = exp(max - logsumexp)). In
    slices of CHUNK positions: a long rolling window's logits in float32 at once would double their memory."""
    tops = []
    for lo in range(0, len(logits), CHUNK):
        part = logits[lo : lo + CHUNK].float()
        tops.append(part.max(-1).values - part.logsumexp(-1))
    return bool(tops) and bool((torch.cat(tops).exp() < tau).any())


def _branch_logits(model, groups: list[tuple[tuple, list[tuple]]]) -> list[torch.Tensor]:
    """Logits [len(continuation), V] before each token of each continuation: per group, the context
    once and every continuation a branch after it."""
    trees, wanted = [], []
    for context, continuations in groups:
        tree = Tree()
        last = tree.chain(context)[-1]
        trees.append(tree)
        wanted.append([[last] + tree.chain(cont[:-1], after=last) for cont in continuations])
    return _forward(model, trees, wanted)


def _guidance_logits(guidance, vocab, base_tokenizer, batch: list[tuple[tuple, list[tuple]]]) -> list[torch.Tensor]:
    """Guidance logits [len(continuation), Vg] after what it reads before each base token.
    batch: ((base context, guidance context), continuations) per group."""
    if vocab.identical:  # it reads the base's own ids
        return _branch_logits(guidance, [(key[1], conts) for key, conts in batch])
    trees: list[Tree] = []
    wanted: list[list[list[int]]] = []
    for (context, guide_context), continuations in batch:
        tree = Tree()
        prompt = tree.chain(guide_context)[-1]
        trees.append(tree)
        wanted.append([])
        for cont in continuations:
            reads = guidance_reads(base_tokenizer, guidance.tokenizer, list(context[-1:]), list(cont))
            trunk = tree.chain(reads[-1], after=prompt)  # the longest read; the others mostly share it
            nodes = []
            for read in reads:
                shared = _common_prefix_length(read, reads[-1])
                at = trunk[shared - 1] if shared else prompt
                extra = tree.chain(read[shared:], after=at)
                nodes.append(extra[-1] if extra else at)
            wanted[-1].append(nodes)
    return _forward(guidance, trees, wanted)


@dataclass
class Tree:
    """Token sequences that share prefixes, read in one forward pass: node i follows node parents[i]
    (-1: a root) and sees its ancestors and itself."""

    tokens: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)

    def chain(self, tokens, after: int = -1) -> list[int]:
        """Append `tokens` one after the other, following node `after`; return their node indices."""
        nodes = []
        for token in tokens:
            self.positions.append(self.positions[after] + 1 if after >= 0 else 0)
            self.tokens.append(int(token))
            self.parents.append(after)
            after = len(self.tokens) - 1
            nodes.append(after)
        return nodes

    def visible(self) -> np.ndarray:
        n = len(self.tokens)
        seen = np.zeros((n, n), dtype=bool)
        for i, parent in enumerate(self.parents):
            if parent >= 0:
                seen[i] = seen[parent]
            seen[i, i] = True
        return seen

    @property
    def is_chain(self) -> bool:
        return all(p == i - 1 for i, p in enumerate(self.parents))


def _forward(loaded, trees: list[Tree], wanted: list[list[list[int]]]) -> list[torch.Tensor]:
    """One forward pass over several trees, left-padded into one batch, so that the logits kept
    (`logits_to_keep`) are the last columns. Returns, per wanted node list, the logits after each node."""
    model, device = loaded.model, loaded.device
    width = max(len(t.tokens) for t in trees)
    keep = max(len(t.tokens) - min(n for nodes in w for n in nodes) for t, w in zip(trees, wanted))
    ids = torch.full((len(trees), width), loaded.pad_id, dtype=torch.long)
    pos = torch.zeros((len(trees), width), dtype=torch.long)
    kwargs = {}
    if len(trees) == 1 and trees[0].is_chain:  # one plain sequence: the model's own causal mask
        ids[0], pos[0] = torch.tensor(trees[0].tokens), torch.tensor(trees[0].positions)
    else:
        visible = np.zeros((len(trees), width, width), dtype=bool)
        for b, tree in enumerate(trees):
            pad = width - len(tree.tokens)
            ids[b, pad:], pos[b, pad:] = torch.tensor(tree.tokens), torch.tensor(tree.positions)
            visible[b, pad:, pad:] = tree.visible()
        eager = model.config._attn_implementation == "eager"
        additive = next(model.parameters()).dtype if eager else None
        pos_d = pos.to(device)
        kwargs["attention_mask"] = attention_masks(model, torch.from_numpy(visible).to(device), pos_d, pos_d, additive)
    logits = model(
        input_ids=ids.to(device), position_ids=pos.to(device), use_cache=False, logits_to_keep=keep, **kwargs
    ).logits
    out = []
    for b, (tree, w) in enumerate(zip(trees, wanted)):
        shift = keep - len(tree.tokens)  # node n sits in kept column n + shift
        out += [logits[b, [n + shift for n in nodes]] for nodes in w]
    return out
