"""Keeping a model in step with the shared continuation, at a cost that does not grow with its length.

- `Detokenizer`: the text of a growing list of token ids, decoding only a short trailing window per
  step. It always equals `tokenizer.decode(ids)` of the whole continuation (decoded after the
  prompt's last token, so that a leading space survives decoders that strip one at the start).
- `TailTokenizer`: `tokenizer(text)` of a growing text, re-tokenizing only a trailing window. The
  window starts a few tokens before the changed text, and its result is used only when it
  reproduces the old tokens at its start (then the tokenization has re-synchronised, as with a
  pre-token boundary); otherwise the whole text is tokenized again. Tests compare it with full
  tokenization at every step, on the tiny and the real tokenizers.
- `TokenView`: one model's `CachedStream` following each row's continuation, by ids (same tokenizer)
  or by text (different tokenizers: the text is re-tokenized and the stream cropped to the longest
  common prefix, as transformers' assisted generation does across tokenizers).
"""

from __future__ import annotations

import re
from bisect import bisect_right
from typing import Sequence

import torch

from .streams import CachedStream, RecomputeStream

REPLACEMENT = "\ufffd"
_BYTE_TOKEN = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


def make_stream(
    model,
    use_cache: bool,
    headroom: int = 256,
    clock=None,
    role: str = "model",
    compile: str = "none",
    rows: int = 1,
    cache=None,
):
    if not use_cache:
        return RecomputeStream(model.model, model.pad_id)
    return CachedStream(
        model.model, model.pad_id, headroom=headroom, clock=clock, role=role, compile=compile, rows=rows, cache=cache
    )


def byte_fallback_ids(tokenizer) -> frozenset[int]:
    """Ids of byte-fallback tokens (<0x0A>...), computed once per tokenizer.

    A run of them is decoded as one byte string: if it is not valid UTF-8, EVERY byte of the run
    becomes U+FFFD, so text decoded from a run that may still grow can change retroactively.
    """
    cached = getattr(tokenizer, "_blendin_byte_fallback_ids", None)
    if cached is None:
        cached = frozenset(i for t, i in tokenizer.get_vocab().items() if _BYTE_TOKEN.match(t))
        tokenizer._blendin_byte_fallback_ids = cached
    return cached


class Detokenizer:
    """Incremental `decode`: `push(ids)` returns the whole text so far, decoding a short window."""

    def __init__(self, tokenizer, anchor: Sequence[int], context: int = 4):
        self.tokenizer, self.context = tokenizer, context
        self.backend = getattr(tokenizer, "backend_tokenizer", None)
        self.byte_ids = byte_fallback_ids(tokenizer)
        self.ids = list(anchor)
        self.n_anchor = len(anchor)
        self.head = len(anchor)  # ids[n_anchor:head] decode to `stable`, which no later token can change
        self.stable = ""
        self.text = ""

    def _decode(self, ids) -> str:
        if self.backend is not None:  # the Rust decoder itself: what decode() calls, without its overhead
            return self.backend.decode(ids, skip_special_tokens=False)
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def push(self, new_ids: Sequence[int]) -> str:
        self.ids.extend(new_ids)
        start = max(0, self.head - self.context)
        before = self._decode(self.ids[start : self.head])
        window = self._decode(self.ids[start:])
        if window.startswith(before):
            tail = window[len(before) :]
        else:  # a decoder that is not local here: decode everything (always exact)
            tail = self._full()[len(self.stable) :]
        self.text = self.stable + tail
        # a text that ends inside a character (a partial UTF-8 sequence) or inside a run of
        # byte-fallback tokens may still change
        if tail and not tail.endswith(REPLACEMENT) and self.ids[-1] not in self.byte_ids:
            self.stable, self.head = self.text, len(self.ids)
        return self.text

    def _full(self) -> str:
        both = self._decode(self.ids)
        head = self._decode(self.ids[: self.n_anchor])
        if both.startswith(head):
            return both[len(head) :]
        return self._decode(self.ids[self.n_anchor :])

    @property
    def stable_length(self) -> int:
        """Characters at the start of `text` that no later token can change."""
        return len(self.stable)


class TailTokenizer:
    """Incremental `tokenizer(text)["input_ids"]` for a text that changes only near its end."""

    def __init__(self, tokenizer, context: int = 6, check: int = 3):
        self.tokenizer, self.context, self.check = tokenizer, context, check
        self.text = ""
        self.ids: list[int] = []
        self.starts: list[int] = []  # character offset of each token in `text`
        self.ends: list[int] = []

    def update(self, text: str, stable: int | None = None) -> int:
        """Tokenize the new `text`, whose first `stable` characters equal the old text's; return the
        index of the first id that may differ from before (ids before it are unchanged)."""
        return TailTokenizer.update_all([self], [text], None if stable is None else [stable])[0]

    @staticmethod
    def update_all(
        tails: Sequence["TailTokenizer"], texts: Sequence[str], stables: Sequence[int | None] | None = None
    ) -> list[int]:
        """`update` of many TailTokenizers of one tokenizer, with one batched tokenizer call."""
        firsts: dict[int, int] = {}  # tail index -> its first changed id (every tail gets one)
        plans, windows = [], []
        for k, (tail, text) in enumerate(zip(tails, texts)):
            if text == tail.text:
                firsts[k] = len(tail.ids)
                continue
            first, offset = tail._plan(text, stables[k] if stables is not None else None)
            plans.append((k, first, offset))
            windows.append(text[offset:])
        if windows:
            encoded = _tokenize_many(tails[0].tokenizer, windows)
            redo = []  # windows that did not re-synchronise: the whole text, again in one call
            for (k, first, offset), enc in zip(plans, encoded):
                merged = tails[k]._merge(texts[k], first, offset, enc)
                if merged is None:  # next time this row looks further back (long pre-tokens)
                    redo.append(k)
                    tails[k].context = min(2 * tails[k].context, 96)
                else:
                    firsts[k] = tails[k]._set(texts[k], merged, first)
            for k, enc in zip(redo, _tokenize_many(tails[0].tokenizer, [texts[k] for k in redo]) if redo else []):
                firsts[k] = tails[k]._set(texts[k], tails[k]._merge(texts[k], 0, 0, enc), 0)
        return [firsts[k] for k in range(len(tails))]

    def peek(self, text: str, stable: int | None = None) -> list[int]:
        """tokenizer(text) ids without changing the state (e.g. for a prefix of the current text)."""
        if text == self.text:
            return self.ids
        first, offset = self._plan(text, stable)
        merged = self._merge(text, first, offset, _tokenize_many(self.tokenizer, [text[offset:]])[0])
        return merged[0] if merged else _tokenize_many(self.tokenizer, [text])[0][0]

    def _plan(self, text: str, stable: int | None) -> tuple[int, int]:
        """(first old token to re-tokenize, its character offset): a few tokens before the change."""
        if stable is None or stable > min(len(text), len(self.text)) or text[:stable] != self.text[:stable]:
            stable = _shared_prefix(self.text, text)
        done = bisect_right(self.ends, stable)  # old tokens that end inside the unchanged text
        first = max(0, done - self.context)
        self._done = done
        return first, (self.starts[first] if first > 0 else 0)

    def _merge(self, text, first, offset, encoded):
        """(ids, starts, ends) from the tokenization of text[offset:], which starts at old token
        `first`; None when a window (first > 0) did not re-synchronise with the old tokens."""
        ids, spans = encoded
        starts, ends = [s + offset for s, _ in spans], [e + offset for _, e in spans]
        if first == 0:
            return ids, starts, ends
        agree = min(self.check, self._done - first - 1)  # the last of them may still merge with new text
        if (
            agree >= 1
            and ids[:agree] == self.ids[first : first + agree]
            and starts[:agree] == self.starts[first : first + agree]
        ):
            return self.ids[:first] + ids, self.starts[:first] + starts, self.ends[:first] + ends
        return None

    def _set(self, text, merged, same: int) -> int:
        """Take the new tokenization, whose first `same` ids are the old ones; return the index of
        the first id that differs from before."""
        ids, self.starts, self.ends = merged
        old, n = self.ids, min(len(self.ids), len(ids))
        while same < n and old[same] == ids[same]:
            same += 1
        self.ids, self.text = ids, text
        return same


def _tokenize_many(tokenizer, texts: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """(ids, character spans) of each text, as `tokenizer(text, add_special_tokens=False)` gives them,
    in one call of the Rust tokenizer."""
    encodings = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    return list(zip(encodings["input_ids"], encodings["offset_mapping"]))


def _shared_prefix(old: str, new: str) -> int:
    """Length of the common prefix of two texts (fast when one extends the other)."""
    if new.startswith(old):
        return len(old)
    if old.startswith(new):
        return len(new)
    return _common_prefix_length(old, new)


def _common_prefix_length(a: Sequence, b: Sequence) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class TokenView:
    """A model that reads the shared continuation of each row behind its own prompt.

    by_text=False: the continuation is given as this model's own ids (same tokenizer).
    by_text=True: it is given as text and tokenized with this model's tokenizer (`TailTokenizer`).
    Rows are admitted with their prompts and leave with `select`, in step with the decoder's batch.
    """

    def __init__(
        self,
        model,
        by_text: bool,
        use_cache: bool = True,
        headroom: int = 256,
        clock=None,
        role: str = "model",
        compile: str = "none",
        rows: int = 1,
        cache=None,
    ):
        """rows: the rows planned to decode together (the batch size): the KV cache is planned for them.
        cache: an empty `streams.RowCache` to decode into (kept from an earlier decode: CUDA graphs)."""
        self.model, self.by_text, self.use_cache = model, by_text, use_cache
        self.stream = make_stream(model, use_cache, headroom, clock, role, compile, rows, cache)
        self.longest = 0  # the longest row (prompt + continuation) this view has read
        self.prompts: list[list[int]] = []
        self.tails: list[TailTokenizer] = []
        self.synced: list[int] = []  # continuation tokens known to be in the stream as the target has them
        self.forward_passes = 0

    def __len__(self) -> int:
        return len(self.prompts)

    def admit(self, prompts: list[list[int]]) -> torch.Tensor:
        """Prefill new rows (placed after the current ones); return the logits of every row [B, V]."""
        self.stream.admit(prompts)
        self.longest = max([self.longest] + [len(p) for p in prompts])
        self.forward_passes += 1
        self.prompts += [list(p) for p in prompts]
        self.tails += [TailTokenizer(self.model.tokenizer) for _ in prompts]
        self.synced += [0] * len(prompts)
        return self.stream.logits

    def select(self, keep: list[int]) -> None:
        self.stream.select(keep)
        self.prompts = [self.prompts[i] for i in keep]
        self.tails = [self.tails[i] for i in keep]
        self.synced = [self.synced[i] for i in keep]

    @property
    def logits(self) -> torch.Tensor:
        return self.stream.logits

    def catch_up(
        self,
        rows: Sequence[int],
        ids: Sequence[Sequence[int]] | None = None,
        texts: Sequence[str] | None = None,
        stables: Sequence[int] | None = None,
        all_logits: bool = False,
        extra: dict[int, Sequence[int]] | None = None,
        tail: torch.Tensor | None = None,
    ):
        """Bring `rows` up to date with their continuation; return next-token logits of every row
        (and with all_logits, per row, the logits after each token fed now).

        ids[r] (same tokenizer) or texts[r] with stables[r] (its first characters known unchanged):
        row r's continuation. extra[r]: tokens to read after it (a draft being written, one token
        more each call); what the stream already holds of them is kept. tail [B, K]: device tokens
        every row reads after its continuation in the same forward (`CachedStream.step`); the return
        is then [B, K + 1, V].
        """
        new: list[list[int]] = [[] for _ in self.prompts]
        drop = [0] * len(self.prompts)
        self.fed_from = {}  # row -> continuation index of the first token fed now (for all_logits)
        if self.by_text:  # every row's text tokenized with one tokenizer call
            assert texts is not None, "a view by text reads the continuations as texts"
            changed = TailTokenizer.update_all(
                [self.tails[r] for r in rows],
                [texts[r] for r in rows],
                [stables[r] for r in rows] if stables is not None else None,
            )
        for k, r in enumerate(rows):
            want: Sequence[int]
            if self.by_text:
                want, first_new = self.tails[r].ids, changed[k]
            else:
                assert ids is not None, "a view by ids reads the continuations as ids"
                want, first_new = ids[r], self.synced[r]
            draft: Sequence[int] = extra.get(r, ()) if extra else ()  # empty: no draft
            have = self.stream.tokens(r)
            start = len(self.prompts[r])
            common = min(self.synced[r], first_new, len(have) - start)
            total = len(want) + len(draft)
            while (
                common < total
                and start + common < len(have)
                and have[start + common] == (want[common] if common < len(want) else draft[common - len(want)])
            ):
                common += 1
            new[r] = list(want[common:]) + list(draft[max(0, common - len(want)) :])
            drop[r] = len(have) - start - common
            self.fed_from[r] = common
            self.synced[r] = len(want)
            self.longest = max(self.longest, start + total)
        if tail is not None:
            self.forward_passes += 1
            logits = self.stream.step(new, drop, tail=tail)
            read = max(len(self.stream.tokens(r)) for r in range(len(new))) + tail.shape[1]
            self.longest = max(self.longest, read)
            return logits
        if not any(new) and not any(drop):
            return (
                (self.stream.logits, [self.stream.logits[i:i] for i in range(len(new))])
                if all_logits
                else self.stream.logits
            )
        self.forward_passes += 1
        return self.stream.step(new, drop, all_logits=all_logits)

    def follow(self, rows, tail: torch.Tensor | None = None) -> torch.Tensor:
        """`catch_up` every row of a decoding batch (`engine._Row`s): by their ids, or by their text."""
        every = range(len(rows))
        if self.by_text:
            return self.catch_up(
                every, texts=[r.detok.text for r in rows], stables=[r.detok.stable_length for r in rows], tail=tail
            )
        return self.catch_up(every, ids=[r.ids for r in rows], tail=tail)

    def tensors(self) -> list[torch.Tensor]:
        return self.stream.tensors() if hasattr(self.stream, "tensors") else []

    def speculate(self, ids: torch.Tensor) -> None:
        """Feed every row one token from the device before the host knows it (`CachedStream.speculate`);
        the next `catch_up` keeps it where the continuation has it and crops it elsewhere."""
        self.forward_passes += 1
        self.stream.speculate(ids)

    def commit(self, ids: list[list[int]]) -> None:
        """The tokens each row read from the device (`speculate`, a tail), as the host now knows them."""
        self.stream.commit(ids)
        self.longest = max(self.longest, max(len(self.stream.tokens(r)) for r in range(len(self.prompts))))

    def append(self, rows: Sequence[int], tokens: Sequence[Sequence[int]]) -> torch.Tensor:
        """Feed extra tokens to `rows` beyond their continuation (a draft); the next `catch_up`
        keeps those that the continuation turns out to contain and crops the rest."""
        new: list[list[int]] = [[] for _ in self.prompts]
        for r, toks in zip(rows, tokens):
            new[r] = list(toks)
        self.forward_passes += 1
        return self.stream.step(new)

    def continuation(self, row: int) -> list[int]:
        """The ids this model has read after its prompt (drafted tokens included)."""
        return self.stream.tokens(row)[len(self.prompts[row]) :]
