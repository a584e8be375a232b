"""Token streams: one model decoding a batch of rows that grow by different amounts.

Each step a row may append any number of tokens (0 when nothing changed, several when a
guidance-only token is spelled in base tokens, or when a re-tokenized text view changes) and may
discard some of its latest tokens (a text view cropped to the longest common prefix).

`CachedStream` keeps one batched KV cache (`RowCache`) in which every row is left-aligned: row i's
tokens fill columns 0 .. len_i - 1, so a column is a position, there are no holes, and the widest
attention mask is the longest real row. A step writes each row's new tokens at its own next columns
(a scatter: rows that feed fewer tokens than the widest pad the chunk on the left and write the
padding past their end, where no real query looks). The masks are built on the device from the row
lengths, so a step copies only its chunk and the lengths to the device, in one transfer. The
buffer's capacity is planned once (longest prompt + the budget the caller gives as `headroom`) and
grows only if a row outruns the plan.

Rows come and go: `select` keeps some rows (finished rows leave the batch and stop costing compute)
and `merge` adds the rows of another stream (new prompts, prefilled on their own, several at once).
Each is one copy of the used columns.

Sliding-window layers (Gemma-2/3, Mistral) see the last W positions, which are the last W columns
of the row. `RecomputeStream` has the same interface and recomputes every row from scratch each
step; it is the reference the tests hold the cached stream to.
"""

from __future__ import annotations

import inspect

import torch
from transformers.cache_utils import Cache, DynamicLayer

from .errors import ConfigError
from .transfer import to_device


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of rows of different lengths, padded on the left."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
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
    device = visible.device  # query q sits in column K - Q + q
    own[torch.arange(queries, device=device), torch.arange(keys - queries, keys, device=device)] = True
    masks = {}
    for kind, seen in kinds.items():
        seen = (seen | (own[None] & ~seen.any(-1, keepdim=True)))[:, None]  # [B, 1, Q, K]
        if additive_dtype is not None:  # eager attention adds the mask to the scores
            seen = torch.zeros(seen.shape, dtype=additive_dtype, device=seen.device).masked_fill(
                ~seen, torch.finfo(additive_dtype).min
            )
        masks[kind] = seen
    if window is None:
        return masks["full_attention"]
    per_layer_type = getattr(model.config.get_text_config(), "layer_types", None) is not None
    return masks if per_layer_type else masks["sliding_attention"]


def cache_argument(model) -> str:
    """The forward's name for the KV cache: `cache` (transformers >= 5.24), else `past_key_values`."""
    name = getattr(model, "_blendin_cache_argument", None)
    if name is None:
        name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        model._blendin_cache_argument = name
    return name


COMPILE_MODES = ("none", "compile", "cudagraphs")
WIDTH_BUCKET = 256  # cudagraphs: attended widths are rounded up to a multiple of this (fewer graphs to record)


def check_compile(mode: str, device: torch.device) -> str:
    """The compile mode, if it is one and can run on `device`; else a ConfigError naming the fix."""
    if mode not in COMPILE_MODES:
        raise ConfigError(
            f"compile={mode!r} must be one of {', '.join(COMPILE_MODES)} (none: eager; compile: "
            "torch.compile; cudagraphs: CUDA graphs through torch.compile, GPU only)"
        )
    if mode == "cudagraphs" and device.type != "cuda":
        raise ConfigError(
            "compile=cudagraphs needs a CUDA device. Fix: compile=compile (torch.compile, any device) or compile=none"
        )
    return mode


def decode_forward(model, mode: str):
    """What runs a decode step (every row feeds one token): the model itself (`none`), the model
    through `torch.compile` with dynamic shapes (`compile`: one graph for every batch size and
    width), or the same captured as CUDA graphs (`cudagraphs`: torch.compile's reduce-overhead mode,
    one graph per batch size and width bucket). Prefill and steps that feed several tokens to a row
    stay eager. Compiled once per model and process."""
    if mode == "none":
        return model
    compiled = model.__dict__.setdefault("_blendin_compiled", {})
    if mode not in compiled:
        options = {"mode": "reduce-overhead"} if mode == "cudagraphs" else {}
        compiled[mode] = torch.compile(model, dynamic=True, **options)
    return compiled[mode]


class RowLayer(DynamicLayer):
    """One layer's keys and values, [rows, heads, capacity, dim], zero-filled (masked columns must
    hold finite numbers). Each forward writes its new tokens at the columns the cache says
    (`RowCache.write_columns`) and returns the first `RowCache.width` columns for attention."""

    def __init__(self, owner: "RowCache"):
        super().__init__()
        self.owner = owner

    def lazy_initialization(self, key_states, value_states) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        rows, heads, capacity = key_states.shape[0], key_states.shape[1], self.owner.capacity
        self._k = key_states.new_zeros((rows, heads, capacity, key_states.shape[-1]))
        self._v = value_states.new_zeros((rows, heads, capacity, value_states.shape[-1]))
        self.owner.mark_static(self._k, self._v)
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        where = self.owner.write_columns[:, None, :, None]
        self._k.scatter_(2, where.expand_as(key_states), key_states)
        self._v.scatter_(2, where.expand_as(value_states), value_states)
        width = self.owner.key_columns.shape[0]  # a shape, not an int: compiled steps see a symbol
        self.keys, self.values = self._k[:, :, :width], self._v[:, :, :width]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        # layers are created by a forward, and `CachedStream._forward` sets the columns before each one
        assert self.owner.key_columns is not None, "no forward has set the key columns yet"
        return self.owner.key_columns.shape[0]

    def relayout(
        self,
        rows: torch.Tensor | None,
        width: int,
        capacity: int,
        below: "RowLayer | None" = None,
        below_width: int = 0,
    ) -> None:
        """A fresh buffer of `capacity` columns holding the first `width` columns of `rows` (None: all
        rows), then, if given, the rows of `below` (its first `below_width` columns). One copy."""
        parts = [(self._k, self._v, rows, width)] + ([(below._k, below._v, None, below_width)] if below else [])
        total = sum(k.shape[0] if r is None else r.shape[0] for k, _, r, _ in parts)
        k_new = self._k.new_zeros((total, self._k.shape[1], capacity, self._k.shape[-1]))
        v_new = self._v.new_zeros((total, self._v.shape[1], capacity, self._v.shape[-1]))
        at = 0
        for k, v, r, w in parts:
            k, v = (k, v) if r is None else (k[r], v[r])
            k_new[at : at + k.shape[0], :, :w] = k[:, :, :w]
            v_new[at : at + v.shape[0], :, :w] = v[:, :, :w]
            at += k.shape[0]
        self._k, self._v = k_new, v_new
        self.owner.mark_static(k_new, v_new)


class RowCache(Cache):
    """The cache of a `CachedStream`: its layers and what the next forward writes and reads."""

    def __init__(self, capacity: int, static: bool = False):
        super().__init__(layer_class_to_replicate=lambda: RowLayer(self))
        self.capacity, self.static = capacity, static
        self.key_columns: torch.Tensor | None = None  # arange(width): the columns the next forward attends to
        self.write_columns: torch.Tensor | None = None  # [B, Q]: where it writes its new keys and values

    def mark_static(self, *buffers: torch.Tensor) -> None:
        """CUDA graphs (compile=cudagraphs) replay on fixed addresses: tell torch.compile that these
        buffers, written in place by every step, keep theirs (a re-layout makes new ones: re-recorded)."""
        if self.static:
            for buffer in buffers:
                torch._dynamo.mark_static_address(buffer)

    def tensors(self) -> list[torch.Tensor]:
        return [t for layer in self.layers if layer.is_initialized for t in (layer._k, layer._v)]

    def relayout(
        self,
        rows: torch.Tensor | None,
        width: int,
        capacity: int,
        below: "RowCache | None" = None,
        below_width: int = 0,
    ) -> None:
        for i, layer in enumerate(self.layers):
            if layer.is_initialized:
                layer.relayout(rows, width, capacity, below.layers[i] if below else None, below_width)
        self.capacity = capacity


class CachedStream:
    """One model + one batched KV cache over ragged rows (see module doc)."""

    logits: torch.Tensor | None  # each row's next-token logits [B, V]; None until a token was fed (`start`)

    def __init__(self, model, pad_id: int, headroom: int = 256, clock=None, role: str = "model", compile: str = "none"):
        """headroom: columns planned beyond the longest prompt; clock: a `transfer.Clock` that times
        the forward passes under "<role>_forward" ("<role>_prefill" for prompts); compile: how decode
        steps run (`decode_forward`)."""
        self.model, self.pad_id, self.headroom, self.clock, self.role = model, pad_id, headroom, clock, role
        self.compile = compile
        self.decode_model = decode_forward(model, compile)
        self.device = next(model.parameters()).device
        attention = model.config._attn_implementation
        if attention not in ("sdpa", "eager"):
            raise ConfigError(
                f"{type(model).__name__} is loaded with attn_implementation={attention}, which takes no "
                "custom attention masks (rows of different lengths share one cache). "
                "Fix: load it with attn_implementation='sdpa' (the default) or 'eager'"
            )
        self.additive_dtype = next(model.parameters()).dtype if attention == "eager" else None
        self.cache_argument = cache_argument(model)
        self.rows: list[list[int]] = []
        self.cache = RowCache(0, static=compile == "cudagraphs")
        self.widest = 0  # the widest attention mask passed to the model so far (columns)
        self.forward_passes = 0
        self.prefilling = False

    def __len__(self) -> int:
        return len(self.rows)

    def tokens(self, row: int) -> list[int]:
        return self.rows[row]

    def tensors(self) -> list[torch.Tensor]:
        """The device tensors this stream holds (its logits and cache buffers)."""
        return ([self.logits] if self.logits is not None else []) + self.cache.tensors()

    def start(self, prompts: list[list[int]]) -> torch.Tensor:
        """Feed the prompts; return each row's next-token logits [B, V]."""
        self.rows = [[] for _ in prompts]
        self.cache = RowCache(max(len(p) for p in prompts) + self.headroom, static=self.compile == "cudagraphs")
        self.logits = None
        self.prefilling = True
        try:
            return self.step(prompts)
        finally:
            self.prefilling = False

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
                del self.rows[i][-drop[i] :]
        counts = [len(n) for n in new]
        queries = max(counts, default=0)
        if queries == 0:
            if not all_logits:
                return self.logits
            assert self.logits is not None, "per-row logits need a fed token (prompts are not empty)"
            return self.logits, [self.logits[i:i, :] for i in range(len(new))]
        lengths = [len(r) for r in self.rows]
        self._reserve(max(lengths) + queries)
        # One host-to-device copy: each row's new tokens right-aligned in the chunk (so the chunk's
        # last position is every fed row's last token), then its length and count.
        packed = [[self.pad_id] * (queries - c) + n + [length, c] for n, c, length in zip(new, counts, lengths)]
        packed = to_device(packed, torch.long, self.device)
        ids, length, count = packed[:, :queries], packed[:, queries : queries + 1], packed[:, queries + 1 :]
        j = torch.arange(queries, device=self.device)[None, :]
        first = queries - count  # chunk index of a row's first real token
        # a real token lands right after the row's tokens; a padding slot further on, where no real
        # query looks: columns are positions, and no row has holes
        columns = torch.where(j >= first, length + j - first, length + count + j)
        for row, n in zip(self.rows, new):
            row.extend(n)
        logits = self._forward(ids, columns, max(n + c for n, c in zip(lengths, counts)), keep=0 if all_logits else 1)
        last = logits[:, -1].float()
        if self.logits is None or all(counts):
            self.logits = last
        else:  # rows that read nothing keep their logits
            self.logits = torch.where(
                to_device([c > 0 for c in counts], torch.bool, self.device)[:, None], last, self.logits
            )
        if not all_logits:
            return self.logits
        per_row = [logits[i, queries - c + r :].float() for i, (c, r) in enumerate(zip(counts, refed))]
        return self.logits, per_row

    @torch.inference_mode()
    def speculate(self, ids: torch.Tensor) -> None:
        """Feed every row one token that is still on the device (a step's choice, before the host has
        read it); `commit` then records the tokens in the rows. The forward is queued at once, so on
        a GPU it runs while the host works through the step's results."""
        lengths = [len(r) for r in self.rows]
        self._reserve(max(lengths) + 1)
        columns = to_device(lengths, torch.long, self.device)[:, None]
        self.logits = self._forward(ids[:, None], columns, max(lengths) + 1, keep=1)[:, -1].float()

    def commit(self, ids: list[int]) -> None:
        """The tokens `speculate` fed, as the host now knows them."""
        for row, token in zip(self.rows, ids):
            row.append(token)

    def _reserve(self, columns: int) -> None:
        if columns > self.cache.capacity:  # past the plan: grow once, by half again
            used = max(len(r) for r in self.rows)
            self.cache.relayout(None, used, max(columns, self.cache.capacity * 3 // 2))

    def _forward(self, ids: torch.Tensor, columns: torch.Tensor, width: int, keep: int) -> torch.Tensor:
        """One forward pass writing the chunk `ids` [B, Q] at `columns` [B, Q] and attending to the first
        `width` columns (each query sees the columns up to its own; sliding windows in positions)."""
        if self.compile == "cudagraphs" and ids.shape[1] == 1:  # few distinct shapes: few graphs to capture
            width = min(-(-width // WIDTH_BUCKET) * WIDTH_BUCKET, self.cache.capacity)
        keys = torch.arange(width, device=self.device)
        self.cache.write_columns, self.cache.key_columns = columns, keys
        visible = keys[None, None, :] <= columns[:, :, None]
        masks = attention_masks(
            self.model, visible, columns, keys[None, :].expand(len(columns), -1), self.additive_dtype
        )
        self.widest = max(self.widest, width)
        self.forward_passes += 1
        started = self.clock.start() if self.clock else None
        model = self.decode_model if ids.shape[1] == 1 else self.model
        out = model(
            input_ids=ids,
            attention_mask=masks,
            position_ids=columns,
            use_cache=True,
            logits_to_keep=keep,
            **{self.cache_argument: self.cache},
        )
        if self.clock:
            self.clock.stop(f"{self.role}_{'prefill' if self.prefilling else 'forward'}", started)
        return out.logits

    def select(self, keep: list[int]) -> None:
        """Keep only the rows `keep`, in that order (the others leave the batch)."""
        if keep == list(range(len(self.rows))):
            return
        if not keep:  # every row left: the next merge starts the stream afresh
            self.rows = []
            return
        self.rows = [self.rows[i] for i in keep]
        index = to_device(keep, torch.long, self.device)
        assert self.logits is not None, "the stream has rows, so it was fed"
        self.logits = self.logits[index]
        self.cache.relayout(index, max(len(r) for r in self.rows), self.cache.capacity)

    def merge(self, other: "CachedStream") -> None:
        """Add the rows of `other` (prompts prefilled on their own) below this stream's rows."""
        if not self.rows:
            self.rows, self.cache, self.logits = other.rows, other.cache, other.logits
            return
        width = max(len(r) for r in self.rows)
        capacity = max(self.cache.capacity, other.cache.capacity)  # each side's plan already holds its rows
        self.cache.relayout(None, width, capacity, other.cache, max(len(r) for r in other.rows))
        self.rows += other.rows
        self.logits = torch.cat([self.logits, other.logits])


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
                del self.rows[i][-drop[i] :]
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
            per_row.append(full[0].reshape(len(n), -1))
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
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask,
            position_ids=_positions(mask),
            use_cache=False,
            logits_to_keep=keep,
        )
        return out.logits[:, -1, :].float() if keep == 1 else out.logits[:, -keep:, :].float()
