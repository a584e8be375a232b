"""Token streams: one model decoding a batch of rows that grow by different amounts.

Each step a row may append any number of tokens (0 when finished or when nothing changed, several
when a guidance-only token is spelled in base tokens, or when a re-tokenized guidance view changes)
and may discard some of its latest tokens (the guidance view of a cross-tokenizer pair, cropped to
the longest common prefix). `CachedStream` keeps one batched KV cache and never re-lays it out:
rows that append fewer tokens than the widest row leave masked-out *holes*, and discarded tokens
are masked out too. Position ids count only a row's real tokens, so each row computes exactly what
it would alone. Sliding-window layers (Gemma-2/3, Mistral) must see the last W *real* tokens, not
the last W cache columns: for those models the stream keeps every column and builds the attention
masks itself, with the window measured in real positions. `RecomputeStream` has the same interface and recomputes every row from scratch each
step; it is the reference the tests hold the cached stream to.
"""
from __future__ import annotations

import torch

from .errors import ConfigError


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of rows of different lengths, padded on the left."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids, mask


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count real tokens only (as transformers' generate does for left padding)."""
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 1)


def sliding_window(config) -> int | None:
    """The attention window of a model with sliding-window layers, else None."""
    text = config.get_text_config()
    types = getattr(text, "layer_types", None)
    if types is not None:
        return text.sliding_window if "sliding_attention" in types else None
    return getattr(text, "sliding_window", None)  # one mask type for every layer (Mistral)


class CachedStream:
    """One model + one batched KV cache over ragged rows (see module doc)."""

    def __init__(self, model, pad_id: int):
        self.model, self.pad_id = model, pad_id
        self.device = next(model.parameters()).device
        self.window = sliding_window(model.config)
        attention = model.config._attn_implementation
        if self.window is not None and attention not in ("sdpa", "eager"):
            raise ConfigError(f"{type(model).__name__} has sliding-window layers and attn_implementation="
                              f"{attention}, which takes no custom attention masks. "
                              "Fix: load it with attn_implementation='sdpa' (the default) or 'eager'")
        # models with layer_types take a mask per layer type; the others (Mistral) one sliding mask
        self.per_layer_type = getattr(model.config.get_text_config(), "layer_types", None) is not None
        self.additive_dtype = next(model.parameters()).dtype if attention == "eager" else None

    def _attention(self, queries: int):
        """The attention mask for the last `queries` columns: the 2D padding mask, or for sliding-window
        models the 4D masks per layer type, with the window counted in real tokens (holes skipped)."""
        if self.window is None:
            return self.mask
        real = self.mask.bool()
        positions = self.mask.cumsum(-1) - 1
        width = real.shape[1]
        q_cols = torch.arange(width - queries, width, device=self.device)
        own = q_cols[:, None] == torch.arange(width, device=self.device)[None, :]  # [Q, S]
        full = (torch.arange(width, device=self.device)[None, :] <= q_cols[:, None])[None] & real[:, None, :]
        q_pos = positions[:, width - queries:]
        window = full & (q_pos[:, :, None] - positions[:, None, :] < self.window)
        kinds = {"full_attention": full, "sliding_attention": window} if self.per_layer_type else \
            {"sliding_attention": window}
        masks = {}
        for kind, visible in kinds.items():
            visible = visible | (own[None] & ~visible.any(-1, keepdim=True))  # a padding query sees itself (no NaN)
            visible = visible[:, None]  # [B, 1, Q, S]
            if self.additive_dtype is not None:  # eager attention adds the mask to the scores
                dtype = self.additive_dtype
                visible = torch.zeros(visible.shape, dtype=dtype, device=self.device).masked_fill(
                    ~visible, torch.finfo(dtype).min)
            masks[kind] = visible
        return masks if self.per_layer_type else masks["sliding_attention"]

    @torch.inference_mode()
    def start(self, prompts: list[list[int]]) -> torch.Tensor:
        """Feed the prompts (left-padded); return each row's next-token logits [B, V]."""
        from transformers import DynamicCache

        ids, mask = _left_pad(prompts, self.pad_id)
        width = ids.shape[1]
        self.mask = mask.to(self.device)
        self.rows = [list(p) for p in prompts]  # each row's real tokens
        self.slots = [list(range(width - len(p), width)) for p in prompts]  # their cache columns
        # sliding layers of a config-built cache drop columns beyond the window; holes need them kept
        self.cache = DynamicCache() if self.window is not None else DynamicCache(config=self.model.config)
        out = self.model(input_ids=ids.to(self.device), attention_mask=self._attention(width),
                         position_ids=_positions(self.mask),
                         past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        self.logits = out.logits[:, -1, :].float()
        return self.logits

    def tokens(self, row: int) -> list[int]:
        return self.rows[row]

    @torch.inference_mode()
    def step(self, new: list[list[int]], drop: list[int] | None = None) -> torch.Tensor:
        """Discard `drop[i]` trailing tokens of row i, append `new[i]`; return next-token logits [B, V]."""
        drop = list(drop or [0] * len(new))
        new = [list(n) for n in new]
        for i in range(len(new)):
            if drop[i] and not new[i]:  # the logits must come from a fed token: re-feed the last kept one
                drop[i] += 1
                new[i] = [self.rows[i][-drop[i]]]
            if drop[i]:
                self.mask[i, self.slots[i][-drop[i]:]] = 0
                del self.slots[i][-drop[i]:], self.rows[i][-drop[i]:]
        width = max(len(n) for n in new)
        if width == 0:
            return self.logits
        batch, start = len(new), self.mask.shape[1]
        ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
        chunk_mask = torch.zeros((batch, width), dtype=torch.long)
        positions = torch.ones((batch, width), dtype=torch.long)
        for i, n in enumerate(new):
            if n:
                ids[i, :len(n)] = torch.tensor(n, dtype=torch.long)
                chunk_mask[i, :len(n)] = 1
                positions[i, :len(n)] = torch.arange(len(self.rows[i]), len(self.rows[i]) + len(n))
                self.slots[i].extend(range(start, start + len(n)))
                self.rows[i].extend(n)
        self.mask = torch.cat([self.mask, chunk_mask.to(self.device)], dim=1)
        out = self.model(input_ids=ids.to(self.device), attention_mask=self._attention(width),
                         position_ids=positions.to(self.device), past_key_values=self.cache, use_cache=True,
                         logits_to_keep=width)
        fed = [i for i, n in enumerate(new) if n]
        last = torch.tensor([len(new[i]) - 1 for i in fed], device=self.device)
        self.logits = self.logits.clone()
        self.logits[fed] = out.logits[torch.tensor(fed, device=self.device), last].float()
        return self.logits


class RecomputeStream:
    """Same interface as CachedStream, no cache: every step recomputes the changed rows in full."""

    def __init__(self, model, pad_id: int):
        self.model, self.pad_id = model, pad_id
        self.device = next(model.parameters()).device

    def start(self, prompts: list[list[int]]) -> torch.Tensor:
        self.rows = [list(p) for p in prompts]
        self.logits = self._forward(list(range(len(prompts))))
        return self.logits

    def tokens(self, row: int) -> list[int]:
        return self.rows[row]

    def step(self, new: list[list[int]], drop: list[int] | None = None) -> torch.Tensor:
        drop = drop or [0] * len(new)
        changed = [i for i in range(len(new)) if new[i] or drop[i]]
        for i in changed:
            if drop[i]:
                del self.rows[i][-drop[i]:]
            self.rows[i].extend(new[i])
        if changed:
            self.logits = self.logits.clone()
            self.logits[changed] = self._forward(changed)
        return self.logits

    @torch.inference_mode()
    def _forward(self, which: list[int]) -> torch.Tensor:
        ids, mask = _left_pad([self.rows[i] for i in which], self.pad_id)
        mask = mask.to(self.device)
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask, position_ids=_positions(mask),
                         use_cache=False, logits_to_keep=1)
        return out.logits[:, -1, :].float()
