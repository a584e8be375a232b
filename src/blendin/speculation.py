"""Speculative decoding: the guidance drafts, the base checks every draft in one pass, and the output is
what step-by-step decoding gives.

A round, for every row of the batch at once (`speculate: K`):

1. the guidance reads what the rows chose last round (dropping drafts that were not taken) and then
   drafts K tokens one at a time, greedily from its own distribution (or by sampling from it), each
   fed to it straight from the device. Only guidance tokens with a single base twin are drafted, so
   that the base can read each draft as one of its own tokens;
2. the base reads each row's new tokens and the K drafts in ONE forward pass, which gives its
   distribution at every position of the block: before the first draft and after each one;
3. at every position the method's rule decides as a step would, on the same two distributions (the
   guidance's came from drafting); a row keeps the leading drafts its rule would have chosen itself,
   then the rule's own token at the first position where it disagrees (or one token more after the
   last draft when it agrees with all of them). Rows keep different numbers of tokens;
4. one copy to the host: the trace of every kept position (exactly the step's own facts), EOS, stop
   strings and `max_new_tokens` inside the block. Both caches still hold the rejected drafts; the next
   round's reads drop them (the KV layout lets each row drop its own number of tokens).

Where the base is unsure NUDGING takes the guidance's token, so a draft is accepted there for free.

Two tokenizers: a draft is the guidance's token; the base reads its twin. The guidance's view of the
text is its own tokenization of the text; where that would differ from the drafted tokens (a word
the guidance would tokenize otherwise once more of it is written), the guidance's distribution after
the draft is not the one step-by-step decoding reads: the block is cut before the first such position
that the rule reads it at (a position where the base is unsure), and `blocks_cut` counts how often.

Sampling: the standard rule. A draft token x drawn from the guidance's (tempered, filtered) distribution
r is kept with probability min(1, t(x) / r(x)), where t is the distribution the method's rule chose at
that position (what a step would sample from); at the first rejection the token is drawn from the
residual max(0, t - r), renormalised; after K kept drafts one more is drawn from t. Every output
then has the distribution of step-by-step sampling. The draws are counter-based per row (as for
step-by-step sampling, with their own counters), so batch size and order change nothing.
"""

from __future__ import annotations

import math
import time
from dataclasses import fields

import torch

from .engine import _COLUMN, PACKED, TokenDecoder, _Batch, _Row
from .errors import ConfigError
from .facts import add_guidance_facts
from .policies import Greedy, Step
from .sampling import dense_target, draw, shape, uniforms
from .transfer import PendingCopy, to_device

# counters of a row's draws, apart from the ones step-by-step sampling uses (its step index)
_DRAFT, _ACCEPT, _RESIDUAL = 1 << 40, 2 << 40, 3 << 40


def _rows(obj, index: slice):
    """The rows `index` of a `Step` or a `Choice` (every tensor field sliced)."""
    values = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        values[f.name] = value[index] if isinstance(value, torch.Tensor) else value
    if isinstance(obj, Step):
        values["_tops"] = {}  # the top-k lists are recomputed for the rows
    return type(obj)(**values)


class SpeculativeBatch(_Batch):
    """A `_Batch` that decodes in speculative rounds (see the module doc); same rows, views and trace."""

    def __init__(self, decoder, max_new_tokens: int, stop_strings: tuple[str, ...], rows: int = 1):
        super().__init__(decoder, max_new_tokens, stop_strings, rows)
        assert self.guide is not None and decoder.vocab is not None, "the guidance drafts"
        self.k = decoder.speculate
        self.twins = decoder.vocab.guidance_to_base.to(decoder.lead.device)  # guidance id -> base id, -1 none
        self.undraftable = self.twins < 0

    @torch.inference_mode()
    def step(self) -> list[_Row]:
        d, k = self.d, self.k
        d.stats["steps"] += 1
        d.stats["guidance_steps"] += 1
        started = time.perf_counter()
        guide = self.guidance_view
        self.counts = to_device(
            [[r.n_steps, r.n_applied, int(r.latched)] for r in self.rows], torch.long, d.lead.device
        )
        keys = self.keys
        assert keys is not None, "rows were admitted before the first round"
        positions = k + 1
        # 1. the guidance catches up, then drafts k tokens from the device
        q = guide.follow(self.rows)
        guide_logits, drafts, draft_probs = [q], [], []
        for j in range(k):
            g, r = self._draft(q, keys, j)
            drafts.append(g)
            draft_probs.append(r)
            guide.speculate(g)
            q = guide.logits
            guide_logits.append(q)
        drafted = torch.stack(drafts, 1)  # [B, k] guidance ids
        base_drafts = self.twins[drafted]  # [B, k] their base twins
        # 2. the base reads the rows' new tokens and every draft in one forward: p_0 .. p_k
        base_logits = self.lead.follow(self.rows, tail=base_drafts)  # [B, k + 1, V]
        # 3. every position's decision, as a step would make it (rows position-major: index j * B + b)
        rows = len(self.rows)
        step = self._position_step(base_logits, guide_logits, rows, positions)
        choice = self._decide(step, rows, positions)
        tokens = choice.token.view(positions, rows)
        sample_prob = None
        if not d.sampling.greedy:
            tokens, sample_prob, plain = self._sample(step, choice, tokens, drafted, draft_probs, keys, rows, positions)
            choice.token = tokens.reshape(-1)
            choice.blend_prob = torch.where(choice.blend_prob.isnan(), choice.blend_prob, plain)
        agree = tokens[:k] == base_drafts.T  # [k, B]: the rule's token at j is draft j + 1
        kept = agree.long().cumprod(0).sum(0)  # leading drafts kept per row
        packed = self._pack(step, choice, sample_prob)  # [positions * B, PACKED]
        flat = torch.cat(
            [packed.reshape(-1), kept.double(), drafted.double().reshape(-1), base_drafts.double().reshape(-1)]
        )
        values = PendingCopy(flat).wait().copy()
        # 4. on the host: record each row's kept positions
        n = positions * rows * len(PACKED)
        table = values[:n].reshape(positions * rows, len(PACKED))
        self._complete_top_p(table, step.base_probs)
        table = table.reshape(positions, rows, len(PACKED))
        kept_host = values[n : n + rows].astype(int)
        drafted_host = values[n + rows : n + rows + rows * k].astype(int).reshape(rows, k).tolist()
        base_host = values[n + rows + rows * k :].astype(int).reshape(rows, k).tolist()
        cut = accepted = 0
        for b, row in enumerate(self.rows):
            before = len(guide.tails[b].ids) if guide.by_text else 0
            for j in range(kept_host[b] + 1):
                if (
                    j
                    and guide.by_text
                    and table[j, b, _COLUMN["consulted"]]
                    and not self._reads_as_drafted(b, row, before, drafted_host[b][:j])
                ):
                    cut += 1
                    break
                self._record_token(row, table[j, b])
                row.drafts[1] += j < kept_host[b]
                accepted += j < kept_host[b]
                if row.finished:
                    break
            row.drafts[0] += k
        for key, value in (("drafts_proposed", k * rows), ("drafts_accepted", accepted), ("blocks_cut", cut)):
            d.stats[key] = d.stats.get(key, 0) + value
        # the tokens both models read from the device, now known here; the next round's reads drop the
        # drafts that were not kept
        self.lead.commit(base_host)
        guide.commit(drafted_host)
        finished = [r for r in self.rows if r.finished]
        if finished:
            self._keep([i for i, r in enumerate(self.rows) if not r.finished])
        d.clock.seconds["step"] = d.clock.seconds.get("step", 0.0) + time.perf_counter() - started
        return finished

    def _reads_as_drafted(self, b: int, row: _Row, before: int, drafts: list[int]) -> bool:
        """Does the guidance's own tokenization of the row's text (the drafts written so far) read as the
        tokens it was fed (what it read at the round's start, then the drafts)?"""
        tail = self.guidance_view.tails[b]
        return tail.peek(row.detok.text, row.detok.stable_length) == tail.ids[:before] + drafts

    def _draft(self, logits: torch.Tensor, keys: torch.Tensor, j: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One draft token per row from the guidance's logits, among tokens with a base twin: its argmax,
        or a draw from its (tempered, filtered) distribution, returned as well [B, Vg]."""
        logits = logits.masked_fill(self.undraftable, -math.inf)
        sampling = self.d.sampling
        if sampling.greedy:
            return logits.argmax(-1), None
        r = shape(torch.softmax(logits, dim=-1), sampling)
        assert self.counts is not None
        counters = self.counts[:, 0] + j + _DRAFT
        token, _, _ = draw(r, uniforms(keys, counters), _unit(sampling))
        return token, r

    def _position_step(self, base_logits, guide_logits, rows: int, positions: int) -> Step:
        """The `Step` of every (position, row), position-major, with the facts a step would add."""
        d = self.d
        probs = torch.softmax(base_logits.transpose(0, 1).reshape(positions * rows, -1), dim=-1)
        top_prob, top_id = probs.max(-1)
        counts = self.counts
        assert counts is not None
        offsets = torch.arange(positions, device=probs.device).repeat_interleave(rows)
        step = Step(
            base_probs=probs,
            base_top_prob=top_prob,
            base_top_id=top_id,
            consulted=top_prob < d.policy.tau,
            n_steps=counts[:, 0].repeat(positions) + offsets,
            n_applied=counts[:, 1].repeat(positions),
            vocab=d.vocab,
            latched=counts[:, 2].bool().repeat(positions),
        )
        if d.policy.tau > 0:
            guide = torch.softmax(torch.stack(guide_logits).reshape(positions * rows, -1), dim=-1)
            add_guidance_facts(step, guide, exact=d.exact_top_p)
        return step

    def _decide(self, step: Step, rows: int, positions: int):
        """The rule at every position. A rule that reads its own history (the cap counts what it applied)
        decides one position after the other, each seeing the counts the positions before it left."""
        policy = self.d.policy if self.d.policy.tau > 0 else Greedy()
        if not getattr(policy, "history", False):
            return policy.decide(step)
        choices = []
        applied = torch.zeros(rows, dtype=torch.long, device=step.base_probs.device)
        assert step.latched is not None
        latched = step.latched[:rows].clone()
        for j in range(positions):
            part = _rows(step, slice(j * rows, (j + 1) * rows))
            part.n_applied = part.n_applied + applied
            part.latched = latched
            choice = policy.decide(part)
            applied = applied + choice.applied.long()
            if choice.latch is not None:
                latched = latched | choice.latch
            choices.append(choice)
        merged = {}
        for f in fields(choices[0]):
            values = [getattr(c, f.name) for c in choices]
            merged[f.name] = None if values[0] is None else torch.cat(values)
        return type(choices[0])(**merged)

    def _sample(self, step, choice, tokens, drafted, draft_probs, keys, rows: int, positions: int):
        """Speculative sampling (module doc): keep each draft with probability min(1, t/r), draw the first
        rejected position from the residual and the position after the last kept draft from t. Returns
        the tokens [positions, B] (a draft where kept), each token's probability under t, and its share of
        the untempered distribution its rule chose (what `blend_prob` records where the rule blended)."""
        d = self.d
        policy = d.policy if d.policy.tau > 0 else Greedy()
        base_size = step.base_size
        out = torch.empty((positions, rows), dtype=torch.long, device=tokens.device)
        prob = torch.empty((positions, rows), dtype=torch.float32, device=tokens.device)
        plain = torch.empty((positions, rows), dtype=torch.float32, device=tokens.device)
        assert self.counts is not None
        steps = self.counts[:, 0]
        for j in range(positions):  # one position at a time: a dense target is [B, joint vocabulary]
            at = slice(j * rows, (j + 1) * rows)
            t = dense_target(_rows(step, at), _rows(choice, at), policy, d.sampling)
            u = uniforms(keys, steps + j + _RESIDUAL)
            drawn_t, p_t, _ = draw(t, u, _unit(d.sampling))  # used after the last kept draft
            if j < positions - 1:
                r = torch.zeros_like(t)
                r[:, :base_size].index_add_(1, self.twins.clamp_min(0), draft_probs[j])  # drafts are base twins
                x = self.twins[drafted[:, j]]
                accept_u = uniforms(keys, steps + j + _ACCEPT)
                t_x, r_x = t.gather(1, x[:, None]).squeeze(1), r.gather(1, x[:, None]).squeeze(1)
                keep = accept_u * r_x <= t_x
                residual = (t - r).clamp_min(0)
                empty = residual.sum(-1, keepdim=True) <= 0
                residual = torch.where(empty, t, residual)
                drawn_r, _, _ = draw(residual, u, _unit(d.sampling))
                out[j] = torch.where(keep, x, drawn_r)
                prob[j] = torch.where(keep, t_x / t.sum(-1), t.gather(1, drawn_r[:, None]).squeeze(1) / t.sum(-1))
            else:
                out[j], prob[j] = drawn_t, p_t
            untempered = dense_target(_rows(step, at), _rows(choice, at), policy, _unit(d.sampling))
            plain[j] = untempered.gather(1, out[j][:, None]).squeeze(1)
        # a position after a rejection is not used; joint ids past the base vocabulary are spelled
        return out, prob.reshape(-1), plain.reshape(-1)


def _unit(sampling):
    """Drawing from a distribution already tempered and filtered: no second temperature or filter."""
    from .sampling import Sampling

    return Sampling(temperature=1.0, seed=sampling.seed)


def check_speculate(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(
            f"speculate={value!r} must be an integer >= 0 (0 = step by step; K = the guidance drafts up to K "
            "tokens that the base checks in one pass)"
        )
    return value


class SpeculativeDecoder(TokenDecoder):
    """A `TokenDecoder` that decodes in speculative rounds of `speculate` drafts (module doc): the same
    outputs (greedy) or the same distribution (sampling) as step by step. The guidance drafts, so a
    one-model method (base) needs the pair's guidance model as its drafter; it never steers."""

    def __init__(self, lead, policy, guidance, vocab, speculate: int, **settings):
        check_speculate(speculate)
        if guidance is None or vocab is None:
            raise ConfigError("speculate needs the pair's guidance model to draft tokens")
        if settings.get("use_cache") is False or settings.get("base_view", "ids") != "ids":
            raise ConfigError("speculate needs use_cache=true and base_view=ids (the base reads the drafts as ids)")
        super().__init__(lead, policy, guidance, vocab, **settings)
        self.speculate = speculate
        self.batch_class = SpeculativeBatch
