"""Token streams: one model decoding a batch of rows that grow by different amounts.

Each step a row may append any number of tokens (0 when nothing changed, several when a
guidance-only token is spelled in base tokens, or when a re-tokenized text view changes) and may
discard some of its latest tokens (a text view cropped to the longest common prefix). `CachedStream`
keeps one batched KV cache and does not re-lay it out on every step: rows that append fewer tokens
than the widest row leave masked-out *holes*, and discarded tokens are masked out too. Position ids
count only a row's real tokens, so each row computes exactly what it would alone.

Rows come and go: `select` keeps some rows (finished rows leave the batch and stop costing
compute) and `merge` adds the rows of another stream (new prompts, prefilled on their own). Both
re-lay the cache out once, packing each row's real tokens to the right.

The cache (`BufferCache`) writes keys and values into a preallocated buffer that doubles when full,
so a step copies only the new tokens: transformers' DynamicCache concatenates the whole cache on
every step, a cost that grows with the output length.

Sliding-window layers (Gemma-2/3, Mistral) must see the last W *real* tokens, not the last W cache
columns: for those models the stream keeps every column and builds the attention masks itself,
with the window measured in real positions. `RecomputeStream` has the same interface and
recomputes every row from scratch each step; it is the reference the tests hold the cached stream to.
"""
from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

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


def attention_masks(model, visible: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor, additive_dtype=None):
    """4D attention masks for any visibility pattern (padding holes, a tree of alternatives).

    visible [B, Q, K] bool: which keys each query may see; q_pos [B, Q], k_pos [B, K]: real positions.
    Sliding-window layers also drop keys W or more positions back. A query that sees nothing (a
    padding slot) sees the key in its own column so that softmax has no NaN. Returns what the model's
    forward takes as `attention_mask`: one tensor, or a dict per layer type for models that mix
    full and sliding layers. additive_dtype: for eager attention, additive float masks of that dtype.
    """
    window = sliding_window(model.config)
    kinds = {"full_attention": visible}
    if window is not None:
        kinds["sliding_attention"] = visible & (q_pos[:, :, None] - k_pos[:, None, :] < window)
    own = torch.zeros(visible.shape[1:], dtype=torch.bool, device=visible.device)
    queries, keys = visible.shape[1], visible.shape[2]
    own[torch.arange(queries), torch.arange(keys - queries, keys)] = True  # query q sits in column K - Q + q
    masks = {}
    for kind, seen in kinds.items():
        seen = (seen | (own[None] & ~seen.any(-1, keepdim=True)))[:, None]  # [B, 1, Q, K]
        if additive_dtype is not None:  # eager attention adds the mask to the scores
            seen = torch.zeros(seen.shape, dtype=additive_dtype, device=seen.device).masked_fill(
                ~seen, torch.finfo(additive_dtype).min)
        masks[kind] = seen
    if window is None:
        return masks["full_attention"]
    per_layer_type = getattr(model.config.get_text_config(), "layer_types", None) is not None
    return masks if per_layer_type else masks["sliding_attention"]


class BufferLayer(DynamicLayer):
    """One layer's keys and values in a buffer [B, H, capacity, D] that doubles when full."""

    def lazy_initialization(self, key_states, value_states) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.length = 0
        self._k = self._v = None
        self.is_initialized = True

    def _reserve(self, length: int, like_k, like_v) -> None:
        capacity = 0 if self._k is None else self._k.shape[-2]
        if length <= capacity:
            return
        capacity = max(length, 2 * capacity, 64)
        k = like_k.new_empty(like_k.shape[:-2] + (capacity, like_k.shape[-1]))
        v = like_v.new_empty(like_v.shape[:-2] + (capacity, like_v.shape[-1]))
        if self.length:
            k[..., :self.length, :] = self._k[..., :self.length, :]
            v[..., :self.length, :] = self._v[..., :self.length, :]
        self._k, self._v = k, v

    def _views(self):
        self.keys = self._k[..., :self.length, :]
        self.values = self._v[..., :self.length, :]
        return self.keys, self.values

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new = key_states.shape[-2]
        self._reserve(self.length + new, key_states, value_states)
        self._k[..., self.length:self.length + new, :] = key_states
        self._v[..., self.length:self.length + new, :] = value_states
        self.length += new
        return self._views()

    def get_seq_length(self) -> int:
        return self.length if self.is_initialized else 0

    def regather(self, columns: torch.Tensor, headroom: int) -> None:
        """Keep, for each row b, the columns `columns[b]` [B', W] (rows may repeat or drop)."""
        if not self.is_initialized or self._k is None:
            return
        rows = columns.shape[0]
        k_idx = columns[:, None, :, None].expand(rows, self._k.shape[1], columns.shape[1], self._k.shape[-1])
        source_rows = self._source_rows
        k = self._k[source_rows].gather(2, k_idx)
        v = self._v[source_rows].gather(2, k_idx.expand(-1, -1, -1, self._v.shape[-1]))
        self._k = self._v = None
        self.length = 0
        self._reserve(columns.shape[1] + headroom, k, v)
        self._k[..., :columns.shape[1], :] = k
        self._v[..., :columns.shape[1], :] = v
        self.length = columns.shape[1]
        self._views()

    def concat(self, other: "BufferLayer") -> None:
        """Append the rows of `other` (same number of columns) below this layer's rows."""
        k = torch.cat([self.keys, other.keys], dim=0)
        v = torch.cat([self.values, other.values], dim=0)
        self._k = self._v = None
        length, self.length = k.shape[-2], 0
        self._reserve(length + 64, k, v)
        self._k[..., :length, :] = k
        self._v[..., :length, :] = v
        self.length = length
        self._views()


class BufferCache(DynamicCache):
    """A DynamicCache whose layers are `BufferLayer`s (every layer keeps every column)."""

    def __init__(self):
        Cache.__init__(self, layer_class_to_replicate=BufferLayer)


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
        self.additive_dtype = next(model.parameters()).dtype if attention == "eager" else None
        self.rows: list[list[int]] = []

    def __len__(self) -> int:
        return len(self.rows)

    def _attention(self, queries: int):
        """The attention mask for the last `queries` columns: the 2D padding mask, or for sliding-window
        models the 4D masks per layer type, with the window counted in real tokens (holes skipped)."""
        if self.window is None:
            return self.mask
        real = self.mask.bool()
        positions = self.mask.cumsum(-1) - 1
        width = real.shape[1]
        q_cols = torch.arange(width - queries, width, device=self.device)
        causal = (torch.arange(width, device=self.device)[None, :] <= q_cols[:, None])[None] & real[:, None, :]
        return attention_masks(self.model, causal, positions[:, width - queries:], positions, self.additive_dtype)

    @torch.inference_mode()
    def start(self, prompts: list[list[int]]) -> torch.Tensor:
        """Feed the prompts (left-padded); return each row's next-token logits [B, V]."""
        ids, mask = _left_pad(prompts, self.pad_id)
        width = ids.shape[1]
        self.mask = mask.to(self.device)
        self.rows = [list(p) for p in prompts]  # each row's real tokens
        self.slots = [list(range(width - len(p), width)) for p in prompts]  # their cache columns
        self.cache = BufferCache()
        out = self.model(input_ids=ids.to(self.device), attention_mask=self._attention(width),
                         position_ids=_positions(self.mask),
                         past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        self.logits = out.logits[:, -1, :].float()
        return self.logits

    def tokens(self, row: int) -> list[int]:
        return self.rows[row]

    @torch.inference_mode()
    def step(self, new: list[list[int]], drop: list[int] | None = None, all_logits: bool = False):
        """Discard `drop[i]` trailing tokens of row i, append `new[i]`; return next-token logits [B, V].

        all_logits=True also returns, per row, the logits after each appended token ([len(new[i]), V]),
        e.g. to check several draft words in one pass.
        """
        drop = list(drop or [0] * len(new))
        new = [list(n) for n in new]
        refed = [0] * len(new)  # tokens re-fed so that a cropped row has fresh logits
        for i in range(len(new)):
            if drop[i] and not new[i]:  # the logits must come from a fed token: re-feed the last kept one
                drop[i] += 1
                new[i] = [self.rows[i][-drop[i]]]
                refed[i] = 1
            if drop[i]:
                self.mask[i, self.slots[i][-drop[i]:]] = 0
                del self.slots[i][-drop[i]:], self.rows[i][-drop[i]:]
        width = max((len(n) for n in new), default=0)
        if width == 0:
            return (self.logits, [self.logits[i:i, :] for i in range(len(new))]) if all_logits else self.logits
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
                         logits_to_keep=width if (all_logits or width > 1) else 1)
        fed = [i for i, n in enumerate(new) if n]
        last = torch.tensor([len(new[i]) - 1 for i in fed], device=self.device)
        self.logits = self.logits.clone()
        self.logits[fed] = out.logits[torch.tensor(fed, device=self.device), last].float()
        if not all_logits:
            return self.logits
        per_row = [out.logits[i, refed[i]:len(new[i])].float() for i in range(batch)]
        return self.logits, per_row

    def select(self, keep: list[int]) -> None:
        """Keep only the rows `keep`, in that order (the others leave the batch)."""
        if keep == list(range(len(self.rows))):
            return
        if not keep:  # every row left: the next merge starts the stream afresh
            self.rows, self.slots = [], []
            return
        self.rows = [self.rows[i] for i in keep]
        self.slots = [self.slots[i] for i in keep]
        self.logits = self.logits[torch.tensor(keep, dtype=torch.long, device=self.device)]
        self._pack(torch.tensor(keep, dtype=torch.long, device=self.device))

    def merge(self, other: "CachedStream") -> None:
        """Add the rows of `other` (prompts prefilled on their own) below this stream's rows."""
        if not self.rows:
            self.__dict__.update({k: v for k, v in other.__dict__.items()})
            return
        width = max(len(s) for s in self.slots + other.slots)
        self._pack(None, width)
        other._pack(None, width)
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.concat(theirs)
        self.mask = torch.cat([self.mask, other.mask])
        self.rows += other.rows
        self.slots += other.slots
        self.logits = torch.cat([self.logits, other.logits])

    def _pack(self, source_rows: torch.Tensor | None, width: int = 0) -> None:
        """Re-lay the cache out (one copy): each kept row's real tokens packed to the right of a cache
        `width` columns wide (at least as wide as the longest row), no holes."""
        width = max([width] + [len(s) for s in self.slots])
        columns = torch.zeros((len(self.slots), width), dtype=torch.long)
        mask = torch.zeros((len(self.slots), width), dtype=torch.long)
        for i, slots in enumerate(self.slots):
            if slots:
                columns[i, width - len(slots):] = torch.tensor(slots)
                mask[i, width - len(slots):] = 1
            self.slots[i] = list(range(width - len(slots), width))
        columns = columns.to(self.device)
        rows = source_rows if source_rows is not None else torch.arange(len(self.slots), device=self.device)
        for layer in self.cache.layers:
            layer._source_rows = rows
            layer.regather(columns, headroom=64)
        self.mask = mask.to(self.device)


class RecomputeStream:
    """Same interface as CachedStream, no cache: every step recomputes the changed rows in full."""

    def __init__(self, model, pad_id: int):
        self.model, self.pad_id = model, pad_id
        self.device = next(model.parameters()).device
        self.rows: list[list[int]] = []

    def __len__(self) -> int:
        return len(self.rows)

    def start(self, prompts: list[list[int]]) -> torch.Tensor:
        self.rows = [list(p) for p in prompts]
        self.logits = self._forward(list(range(len(prompts))))
        return self.logits

    def tokens(self, row: int) -> list[int]:
        return self.rows[row]

    def step(self, new: list[list[int]], drop: list[int] | None = None, all_logits: bool = False):
        drop = drop or [0] * len(new)
        changed = [i for i in range(len(new)) if new[i] or drop[i]]
        for i in changed:
            if drop[i]:
                del self.rows[i][-drop[i]:]
            self.rows[i].extend(new[i])
        if changed:
            self.logits = self.logits.clone()
            self.logits[changed] = self._forward(changed)
        if not all_logits:
            return self.logits
        per_row = []
        for i, n in enumerate(new):
            if not n:
                per_row.append(self.logits[i:i, :])
                continue
            full = self._forward([i], keep=len(n))
            per_row.append(full[0])
        return self.logits, per_row

    def select(self, keep: list[int]) -> None:
        self.rows = [self.rows[i] for i in keep]
        self.logits = self.logits[torch.tensor(keep, dtype=torch.long, device=self.device)]

    def merge(self, other: "RecomputeStream") -> None:
        if not self.rows:
            self.rows, self.logits = other.rows, other.logits
            return
        self.rows += other.rows
        self.logits = torch.cat([self.logits, other.logits])

    @torch.inference_mode()
    def _forward(self, which: list[int], keep: int = 1) -> torch.Tensor:
        ids, mask = _left_pad([self.rows[i] for i in which], self.pad_id)
        mask = mask.to(self.device)
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask, position_ids=_positions(mask),
                         use_cache=False, logits_to_keep=keep)
        return out.logits[:, -1, :].float() if keep == 1 else out.logits[:, -keep:, :].float()
