"""Word-level NUDGING, as Fei et al. (2025) published it (`method=nudging_words`).

The token-level `nudging` method swaps single tokens; the original algorithm works on WORDS, in
rounds (docs/protocols.md):

1. Draft: the guidance model continues its prompt + the output so far greedily for up to
   `draft_tokens` (16) tokens. If it ends (EOS) inside them, its whole draft is appended and
   decoding ends.
2. Nudge: the draft is split on single spaces (a leading space stays with the first word). Word 0
   is always taken. For word i = 1, 2, ..., the base model reads its prompt + output + words[:i];
   the nudge stops before word i when the base's next token is the start of " " + words[i] (the
   base agrees) or its top-1 probability is >= tau (it is confident). If nothing stops it, every
   word but the last (possibly cut) one is taken.
3. Continue: the base continues greedily, keeping its first token, up to (not including) the first
   token whose top-1 probability is < tau. Then the next round starts.

Decoding ends at the guidance's EOS, the base's EOS, a stop string, `max_new_tokens` base tokens
(checked after each change, so a nudge may overshoot by a few tokens), 150 rounds, or the same
nudge 3 rounds in a row. Everything is text, as in the reference code: each model reads its own
tokenization of the output. The intervention ratio counts WORDS (`word_intervention_rate`), beside
the token-level rate of the same output.

Batched and cached like the other methods: rows in different phases share one tick, the guidance
drafting for some rows while the base verifies or continues others, and all the words of a draft are
checked in one base forward pass (each word boundary's logits read from it), falling back to one
pass per word where the base tokenization of a prefix is not a prefix of the whole draft's.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from .engine import TRACE_COLUMNS, Generation, add_stats, check_generate_args, cut_at_stop, new_stats, schedule
from .errors import ConfigError
from .policies import SOURCE_BASE, SOURCE_GUIDANCE
from .transfer import SYNCS, Clock, on_device, to_device, to_host
from .views import Detokenizer, TailTokenizer, TokenView
from .vocab import token_bytes

DRAFT, VERIFY, CONTINUE = "draft", "verify", "continue"


@dataclass(frozen=True)
class WordNudging:
    """The parameters of word-level NUDGING (the reference code's defaults)."""

    tau: float = 0.4
    draft_tokens: int = 16
    max_rounds: int = 150
    max_repeats: int = 3
    name: str = "nudging_words"


def split_words(draft: str) -> list[str]:
    """Split on single spaces; a leading space stays with the first word (" ".join undoes it)."""
    if draft.startswith(" "):
        words = draft[1:].split(" ")
        words[0] = " " + words[0]
        return words
    return draft.split(" ")


def word_ratio(nudges: list[str], output: str) -> tuple[float, int, int]:
    """Fei et al.'s nudging ratio of one output: (ratio, nudge words, output words).

    Nudges are stripped, empty ones dropped, the final one excluded, and split on spaces; the ratio
    is their word count over the output's (split on spaces), at most 1.
    """
    kept = [n.strip() for n in nudges]
    kept = [n for n in kept if n][:-1]
    nudge_words = sum(len(n.split(" ")) for n in kept)
    words = len(output.split(" "))
    return (min(1.0, nudge_words / words) if words else 0.0), nudge_words, words


def _confidence(logits: torch.Tensor):
    """[n, 2] on the host: each row's top-1 probability and token id."""
    prob, top = torch.softmax(logits.float(), dim=-1).max(-1)
    return to_host(torch.stack([prob.double(), top.double()], dim=1))


class _WordRow:
    def __init__(self, index: int, base_tokenizer):
        self.index = index
        self.text = ""
        self.counter = TailTokenizer(base_tokenizer)  # the base tokens of the output, for the budget
        self.checked = 0  # text before this offset holds no stop string
        self.phase, self.rounds = DRAFT, 1
        self.draft: list[int] = []
        self.draft_anchor: list[int] = []
        self.words: list[str] = []
        self.verify_at, self.single = 1, False
        self.first = True
        self.cont_detok: Detokenizer | None = None  # decodes the base's own tokens while it continues
        self.cont_from = ""
        self.nudges: list[str] = []
        self.spans: list[tuple[int, int]] = []
        self.facts: dict[int, tuple[float, int]] = {}  # text offset -> base (top prob, top id) there
        self.finished, self.stop_reason = False, ""

    def candidate(self) -> str:
        """The text the base model should read now."""
        if self.phase != VERIFY:
            return self.text
        upto = self.verify_at if self.single else len(self.words)
        return self.text + " ".join(self.words[:upto])


class WordNudgingDecoder:
    """Word-level NUDGING behind the `methods.Decoder` interface (see module doc)."""

    def __init__(self, base, policy: WordNudging, guidance, vocab, use_cache: bool = True):
        if guidance is None:
            raise ConfigError("method nudging_words needs a guidance model")
        self.lead, self.policy, self.guidance, self.vocab, self.use_cache = base, policy, guidance, vocab, use_cache
        self._base_bytes: list[bytes | None] | None = None
        self.bulk_verify = True  # False checks each word in its own pass (the fallback; tests use it)
        self.stats = new_stats()
        self.clock = Clock(base.device)

    @property
    def base_bytes(self) -> list[bytes | None]:
        if self._base_bytes is None:
            self._base_bytes = token_bytes(self.lead.tokenizer)
        return self._base_bytes

    def generate(
        self, prompts, max_new_tokens: int = 256, stop_strings=(), batch_size: int = 8, on_batch=None, keys=None
    ):
        # keys (random streams) are unused: word-level NUDGING decodes greedily (`methods.Method.samples`)
        check_generate_args(max_new_tokens, batch_size)
        base_prompts = [self.lead.prompt_ids(p) for p in prompts]
        guide_prompts = [self.guidance.prompt_ids(p) for p in prompts]
        self.max_new_tokens, self.stop_strings = max_new_tokens, tuple(s for s in stop_strings if s)
        headroom = max_new_tokens + self.policy.draft_tokens + 64
        rows = min(batch_size, len(prompts))
        self.base = TokenView(
            self.lead,
            by_text=True,
            use_cache=self.use_cache,
            headroom=headroom,
            clock=self.clock,
            role="lead",
            rows=rows,
        )
        self.guide = TokenView(
            self.guidance,
            by_text=True,
            use_cache=self.use_cache,
            headroom=2 * headroom,
            clock=self.clock,
            role="guidance",
            rows=rows,
        )
        self.rows: list[_WordRow] = []
        results = [None] * len(prompts)

        def admit(indices):
            self.base.admit([base_prompts[i] for i in indices])
            self.guide.admit([guide_prompts[i] for i in indices])
            self.rows += [_WordRow(i, self.lead.tokenizer) for i in indices]

        def done(rows):
            outs = [self._result(r) for r in rows]
            for r, out in zip(rows, outs):
                results[r.index] = out
            if on_batch:
                on_batch([r.index for r in rows], outs)

        syncs = SYNCS.count
        with on_device(self.lead.device):
            schedule(
                len(prompts),
                [len(p) for p in base_prompts],
                batch_size,
                admit,
                self._tick,
                lambda: len(self.rows),
                done,
            )
        add_stats(self.stats, self.base, self.guide, SYNCS.count - syncs)
        del self.base, self.guide, self.rows  # their KV caches go now, not when the next call replaces them
        return results

    @torch.inference_mode()
    def _tick(self) -> list[_WordRow]:
        started = time.perf_counter()
        try:
            return self._advance()
        finally:
            self.clock.seconds["step"] = self.clock.seconds.get("step", 0.0) + time.perf_counter() - started

    def _advance(self) -> list[_WordRow]:
        """One tick: the drafting rows' guidance pass, then the base pass of the verifying and continuing rows."""
        self.stats["steps"] += 1
        rows = self.rows
        drafting = [i for i, r in enumerate(rows) if r.phase == DRAFT]
        if drafting:
            self.stats["guidance_steps"] += 1
            logits = self.guide.catch_up(
                drafting, texts=[r.text for r in rows], extra={i: rows[i].draft for i in drafting}
            )
            tops = to_host(logits.argmax(-1))  # one copy for every drafting row
            for i in drafting:
                self._draft(i, rows[i], int(tops[i]))
        reading = [i for i, r in enumerate(rows) if r.phase in (VERIFY, CONTINUE) and not r.finished]
        if reading:
            logits, per_row = self.base.catch_up(reading, texts=[r.candidate() for r in rows], all_logits=True)
            # the base's top token and its probability after every token it read: one copy to the host
            sizes = [len(per_row[i]) for i in reading]
            index = to_device(reading, torch.long, logits.device)
            both = _confidence(torch.cat([logits[index]] + [per_row[i] for i in reading]))
            last, fed = both[: len(reading)], np.split(both[len(reading) :], np.cumsum(sizes)[:-1])
            for k, i in enumerate(reading):
                if rows[i].phase == VERIFY:
                    self._verify(i, rows[i], last[k], fed[k])
                else:
                    self._continue(i, rows[i], last[k])
        finished = [r for r in rows if r.finished]
        if finished:
            keep = [i for i, r in enumerate(rows) if not r.finished]
            self.base.select(keep)
            self.guide.select(keep)
            self.rows = [rows[i] for i in keep]
        return finished

    # ---------------------------------------------------------------- phases
    def _draft(self, i: int, row: _WordRow, token: int) -> None:
        if not row.draft:  # the draft text is decoded after the token the guidance read last
            row.draft_anchor = (self.guide.prompts[i] + self.guide.tails[i].ids)[-1:]
        ended = token in self.guidance.eos_ids
        if not ended:
            row.draft.append(token)
        if not ended and len(row.draft) < self.policy.draft_tokens:
            return
        text = Detokenizer(self.guidance.tokenizer, row.draft_anchor).push(row.draft)
        row.draft = []
        if ended:  # the guidance ends the answer: its whole draft is the last nudge
            self._nudge(row, text)
            if not row.finished:
                self._finish(row, "eos")
            return
        row.words = split_words(text)
        row.phase, row.verify_at, row.single = VERIFY, 1, False
        if len(row.words) == 1:  # nothing to check: word 0 is always taken
            self._accept(row, 1)

    def _verify(self, i: int, row: _WordRow, last, fed) -> None:
        words, tail = row.words, self.base.tails[i]
        if row.single:  # the base read exactly text + words[:verify_at]
            j = row.verify_at
            row.single = False
            if self._base_stops(last, words[j]):
                return self._accept(row, j)
            row.verify_at = j + 1
            if row.verify_at >= len(words):
                self._accept(row, len(words) - 1)
            return
        start = self.base.fed_from.get(i, len(tail.ids))
        for j in range(row.verify_at, len(words)):
            prefix = row.text + " ".join(words[:j])
            ids = tail.peek(prefix, len(prefix))
            boundary = len(ids)
            if not self.bulk_verify or boundary - 1 < start or tail.ids[:boundary] != ids:  # no logits here
                row.verify_at, row.single = j, True
                return
            if self._base_stops(fed[boundary - 1 - start], words[j]):
                return self._accept(row, j)
        self._accept(row, len(words) - 1)

    def _base_stops(self, confidence, next_word: str) -> bool:
        """The nudge stops before `next_word` when the base is confident or agrees with its start."""
        prob, top = float(confidence[0]), int(confidence[1])
        if prob >= self.policy.tau:
            return True
        spelled = self.base_bytes[top] if top < len(self.base_bytes) else None
        return bool(spelled and (" " + next_word).encode("utf-8").startswith(spelled))

    def _accept(self, row: _WordRow, n_words: int) -> None:
        self._nudge(row, " ".join(row.words[: max(1, n_words)]))
        if row.finished:
            return
        if len(row.nudges) >= self.policy.max_repeats and len(set(row.nudges[-self.policy.max_repeats :])) == 1:
            return self._finish(row, "repeats")
        row.phase, row.first, row.cont_detok = CONTINUE, True, None

    def _nudge(self, row: _WordRow, text: str) -> None:
        start = len(row.text)
        row.text += text
        row.nudges.append(text)
        row.spans.append((start, len(row.text)))
        self._check_end(row)

    def _continue(self, i: int, row: _WordRow, confidence) -> None:
        prob, top = float(confidence[0]), int(confidence[1])
        row.facts.setdefault(len(row.text), (prob, top))
        if not row.first and prob < self.policy.tau:  # uncertain: the next round's guidance takes over
            row.rounds += 1
            if row.rounds > self.policy.max_rounds:
                return self._finish(row, "rounds")
            row.phase, row.draft = DRAFT, []
            return
        row.first = False
        if top in self.lead.eos_ids:
            return self._finish(row, "eos")
        if row.cont_detok is None:  # decode the base's tokens after the last one it read
            row.cont_detok, row.cont_from = Detokenizer(self.lead.tokenizer, self.base.stream.tokens(i)[-1:]), row.text
        row.text = row.cont_from + row.cont_detok.push([top])
        self._check_end(row)

    def _check_end(self, row: _WordRow) -> None:
        longest = max((len(s) for s in self.stop_strings), default=0)
        recent = row.text[max(0, row.checked - longest + 1) :] if self.stop_strings else ""
        row.checked = len(row.text)
        row.counter.update(row.text)
        if self.stop_strings and any(s in recent for s in self.stop_strings):
            self._finish(row, "stop_string")
        elif len(row.counter.ids) >= self.max_new_tokens:
            self._finish(row, "max_new_tokens")

    def _finish(self, row: _WordRow, reason: str) -> None:
        row.finished, row.stop_reason = True, reason

    # ---------------------------------------------------------------- result
    def _result(self, row: _WordRow) -> Generation:
        """The output, its base tokens, and a per-token trace built from the text's base tokenization."""
        enc = self.lead.tokenizer(row.text, add_special_tokens=False, return_offsets_mapping=True)
        ids, spans = list(enc["input_ids"]), enc["offset_mapping"]
        trace: dict[str, list] = {c: [] for c in TRACE_COLUMNS}
        for step, (token, (start, end)) in enumerate(zip(ids, spans)):
            nudged = any(a <= start < b for a, b in row.spans)
            prob, top = row.facts.get(start, (math.nan, -1))
            entry = dict(
                step=step,
                base_top_prob=prob,
                base_top_id=top,
                consulted=prob < self.policy.tau,
                applied=nudged,
                alpha=math.nan,
                blend_prob=math.nan,
                source=SOURCE_GUIDANCE if nudged else SOURCE_BASE,
                chosen_id=token,
                override=nudged,
                guide_top_id=-1,
                guide_top_prob=math.nan,
                base_prob_of_guide_top=math.nan,
                guide_top_rank=-1,
                guide_top_in_base_top_p=False,
                guide_top_spelled=False,
                base_top_p_size=-1,
                top100_overlap=math.nan,
                text_offset=end,
                sample_prob=math.nan,  # word-level NUDGING decodes greedily
                deferred_mass=1.0 if nudged else 0.0,  # a nudged token is the guidance's whole
                guide_eos_prob=math.nan,  # the guidance's drafts are not traced per base token
            )
            for key, value in entry.items():
                trace[key].append(value)
        text = cut_at_stop(row.text, self.stop_strings) if row.stop_reason == "stop_string" else row.text
        ratio, nudge_words, words = word_ratio(row.nudges, text)
        n_applied = sum(trace["applied"])
        return Generation(
            text,
            ids,
            len(ids),
            n_applied,
            n_applied,
            row.stop_reason,
            trace,
            n_consulted=sum(trace["consulted"]),
            extras={
                "word_intervention_rate": ratio,
                "n_nudge_words": nudge_words,
                "n_words": words,
                "n_rounds": row.rounds,
                "nudges": row.nudges,
            },
        )
