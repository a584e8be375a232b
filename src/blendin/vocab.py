"""The vocabulary map between a guidance tokenizer and a base tokenizer.

Two tokens correspond when they stand for the same bytes of text. Each tokenizer writes those bytes
its own way, so every token is first normalized to its bytes:
- byte-level BPE (GPT-2, Llama-3, Qwen, SmolLM): each character stands for one byte ('Ġ' = space);
- SentencePiece style (Gemma, Llama-2): '▁' is a space and byte-fallback tokens '<0x0A>' are one byte;
- special tokens match by role (EOS<->EOS, BOS<->BOS, PAD, UNK) or else by their exact text.
Every id the guidance model treats as end-of-sequence maps to the base's EOS, so a guidance EOS that
wins a step ends generation. The map (guidance id -> base id, -1 where the base has no such token)
is built once per pair and cached on disk under `BLENDIN_CACHE_DIR/vocab/`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_FORMAT_VERSION = 1


@lru_cache(maxsize=1)
def _byte_level_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: the printable character that stands for each byte."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def _is_byte_level(tokenizer) -> bool:
    decoder = tokenizer.backend_tokenizer.decoder
    return decoder is not None and '"ByteLevel"' in decoder.__getstate__().decode("utf-8", "replace")


def special_tokens(tokenizer) -> dict[int, str]:
    """id -> text of every token the tokenizer marks as special."""
    specials = {int(i): t.content for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    for i in tokenizer.all_special_ids:
        specials.setdefault(int(i), tokenizer.convert_ids_to_tokens(int(i)))
    return specials


def token_bytes(tokenizer) -> list[bytes | None]:
    """The text bytes of every non-special token id (None for special tokens)."""
    if not hasattr(tokenizer, "backend_tokenizer"):
        raise TypeError("the vocabulary map needs a fast (tokenizers-backed) tokenizer")
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    specials = special_tokens(tokenizer)
    byte_level = _is_byte_level(tokenizer)
    table = _byte_level_decoder()
    out: list[bytes | None] = []
    for i, tok in enumerate(tokens):
        if i in specials or tok is None:
            out.append(None)
        elif byte_level:
            out.append(bytes(table[c] for c in tok) if all(c in table for c in tok) else tok.encode())
        elif m := _BYTE_FALLBACK.match(tok):
            out.append(bytes([int(m.group(1), 16)]))
        else:
            out.append(tok.replace("\u2581", " ").encode("utf-8"))
    return out


def _role_ids(tokenizer, eos_ids=()) -> dict[str, set[int]]:
    roles = {"eos": set(eos_ids), "bos": set(), "pad": set(), "unk": set()}
    for role in roles:
        tid = getattr(tokenizer, f"{role}_token_id", None)
        if tid is not None:
            roles[role].add(int(tid))
    return roles


def fingerprint(tokenizer, eos_ids=()) -> str:
    """A cheap identity of a tokenizer: size, decoder, special tokens and every 61st token."""
    n = len(tokenizer)
    parts = [
        str(n),
        tokenizer.backend_tokenizer.decoder.__getstate__().decode("utf-8", "replace")
        if tokenizer.backend_tokenizer.decoder is not None
        else "",
        json.dumps(sorted(special_tokens(tokenizer).items())),
        json.dumps(sorted(eos_ids)),
        "\x00".join(tokenizer.convert_ids_to_tokens(list(range(0, n, 61)))),
    ]
    return hashlib.sha256("\x01".join(parts).encode()).hexdigest()


@dataclass
class VocabMap:
    """guidance id -> base id (-1 where none), with what is needed to move tokens across."""

    guidance_to_base: torch.Tensor  # [guidance model vocab size] long
    base_size: int
    identical: bool  # same tokenizer: ids mean the same thing, no re-tokenization needed
    # the tokenizers: None in a map built by hand (tests), which then spells nothing
    base_tokenizer: PreTrainedTokenizerBase | None = field(repr=False)
    guidance_tokenizer: PreTrainedTokenizerBase | None = field(repr=False)
    _guidance_bytes: list[bytes | None] | None = field(default=None, repr=False)
    _base_byte_ids: dict[int, int] | None = field(default=None, repr=False)
    _identity: bool | None = field(default=None, repr=False)
    _first_table: torch.Tensor | None = field(default=None, repr=False)
    _first_host: list[int] | None = field(default=None, repr=False)
    _shared: torch.Tensor | None = field(default=None, repr=False)
    _mapped: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)
    _spelled: dict[int, list[int]] = field(default_factory=dict, repr=False)

    def to(self, device) -> "VocabMap":
        self.guidance_to_base = self.guidance_to_base.to(device)
        self._first_table = self._shared = self._mapped = None  # derived tables follow on next use
        return self

    def prepare(self) -> "VocabMap":
        """Build the derived tables now (they read the map on the host once), not in a decoding step."""
        self.first_base_ids(torch.zeros(1, dtype=torch.long, device=self.guidance_to_base.device))
        self.shared_base_mask
        if not self.is_identity and self._mapped is None:
            keep = (self.guidance_to_base >= 0).nonzero().squeeze(-1)
            self._mapped = (keep, self.guidance_to_base[keep])
        return self

    @property
    def shared_base_mask(self) -> torch.Tensor:
        """Base ids that some guidance token maps to: the shared vocabulary (built once)."""
        if self._shared is None:
            g2b = self.guidance_to_base
            mask = torch.zeros(self.base_size, dtype=torch.bool, device=g2b.device)
            mask[g2b[g2b >= 0]] = True
            self._shared = mask
        return self._shared

    @property
    def is_identity(self) -> bool:
        """Every guidance id is the same base id (same tokenizer, no end-of-turn id remapped)."""
        if self._identity is None:
            g2b = self.guidance_to_base
            self._identity = g2b.shape[0] == self.base_size and bool(
                (g2b == torch.arange(self.base_size, device=g2b.device)).all()
            )
        return self._identity

    def guidance_probs_on_base(self, guide_probs: torch.Tensor) -> torch.Tensor:
        """Move a guidance distribution [B, Vg] onto base ids [B, Vb]; unmapped mass is dropped.

        Even with one tokenizer the map is not always the identity: a guidance end-of-turn id (Llama's
        <|eot_id|>) is remapped to the base EOS, so that its mass ends the text instead of being a token.
        """
        if self.is_identity and guide_probs.shape[-1] == self.base_size:
            return guide_probs
        if self._mapped is None:
            self.prepare()
        assert self._mapped is not None, "prepare() builds it for a map that is not the identity"
        keep, twins = self._mapped  # guidance ids with a twin, and their twins
        out = torch.zeros(guide_probs.shape[0], self.base_size, dtype=guide_probs.dtype, device=guide_probs.device)
        return out.scatter_add_(1, twins.unsqueeze(0).expand(guide_probs.shape[0], -1), guide_probs[:, keep])

    def first_base_ids(self, guidance_ids: torch.Tensor) -> torch.Tensor:
        """Each guidance token's base twin, or else the first base token of its spelling (-1 if it
        spells to nothing): how the reference code locates a suggestion in the base distribution.
        A table lookup on the device (the table is built once, with one batched tokenizer call)."""
        if self._first_table is None:
            table = self.guidance_to_base.cpu().clone()
            missing = (table < 0).nonzero().squeeze(-1).tolist()
            if missing and self.base_tokenizer is not None:  # no tokenizers: a map built by hand (tests)
                for g, ids in zip(missing, self.spell(missing)):
                    table[g] = ids[0] if ids else -1
            self._first_table = table.to(self.guidance_to_base.device)
            self._first_host = table.tolist()
        return self._first_table[guidance_ids]

    def first_base_id(self, guidance_id: int) -> int:
        """`first_base_ids` of one id, read on the host (same table)."""
        if self._first_host is None:
            self.prepare()
        assert self._first_host is not None, "prepare() builds it (first_base_ids)"
        return self._first_host[guidance_id]

    def base_ids_for_guidance_token(self, guidance_id: int) -> list[int]:
        """Base ids that spell a guidance token without a single-token equivalent (by its text)."""
        if guidance_id not in self._spelled:
            self._spelled[guidance_id] = self.spell([guidance_id])[0]
        return self._spelled[guidance_id]

    def spell(self, guidance_ids: list[int]) -> list[list[int]]:
        """`base_ids_for_guidance_token` of many tokens, with one call of the base tokenizer."""
        if self._guidance_bytes is None or self._base_byte_ids is None:  # built together, on first use
            self._guidance_bytes = token_bytes(self.guidance_tokenizer)
            self._base_byte_ids = _single_byte_ids(self.base_tokenizer)
        assert self.guidance_tokenizer is not None and self.base_tokenizer is not None, "token_bytes read them"
        out: list[list[int]] = []
        texts, where = [], []
        for g in guidance_ids:
            data = self._guidance_bytes[g] if g < len(self._guidance_bytes) else None
            if data is None:  # a special token of the guidance with no base twin: spell its text
                data = (self.guidance_tokenizer.convert_ids_to_tokens(g) or "").encode()
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:  # a partial UTF-8 sequence: spell it byte by byte if the base can
                if all(b in self._base_byte_ids for b in data):
                    out.append([self._base_byte_ids[b] for b in data])
                    continue
                text = data.decode("utf-8", "replace")
            out.append([])  # filled in below, from one call of the base tokenizer
            texts.append(text)
            where.append(len(out) - 1)
        if texts:
            encoded = self.base_tokenizer(texts, add_special_tokens=False)["input_ids"]
            for i, ids in zip(where, encoded):
                out[i] = list(ids)
        return out

    def stats(self) -> dict:
        """Overlap of the two vocabularies (what users quote when choosing a pair)."""
        assert self.guidance_tokenizer is not None and self.base_tokenizer is not None, "the stats need the tokenizers"
        g2b = self.guidance_to_base
        n_guidance = min(len(self.guidance_tokenizer), g2b.shape[0])
        mapped = int((g2b[:n_guidance] >= 0).sum())
        n_base = len(self.base_tokenizer)
        covered = int(torch.unique(g2b[g2b >= 0]).numel())
        return {
            "identical_tokenizers": self.identical,
            "guidance_vocab": n_guidance,
            "base_vocab": n_base,
            "guidance_tokens_mapped": mapped,
            "guidance_mapped_fraction": round(mapped / n_guidance, 4),
            "base_tokens_covered": covered,
            "base_covered_fraction": round(covered / n_base, 4),
        }


def _single_byte_ids(tokenizer) -> dict[int, int]:
    """byte value -> a base id that is exactly that one byte (byte-fallback or byte-level tokens)."""
    out = {}
    for i, data in enumerate(token_bytes(tokenizer)):
        if data is not None and len(data) == 1 and data[0] not in out:
            out[data[0]] = i
    return out


def build_guidance_to_base(base_tok, guide_tok, guidance_size: int, base_eos=(), guidance_eos=()) -> np.ndarray:
    """The guidance id -> base id array (see module doc for the matching rules)."""
    base_index: dict[bytes, int] = {}
    base_bytes = token_bytes(base_tok)
    base_tokens = base_tok.convert_ids_to_tokens(list(range(len(base_tok))))
    # Byte-fallback tokens first, so a real token ('▁' for a space) wins over '<0x20>'.
    for fallback_pass in (True, False):
        for i, data in enumerate(base_bytes):
            if data is None or bool(_BYTE_FALLBACK.match(base_tokens[i] or "")) != fallback_pass:
                continue
            if fallback_pass or data not in base_index or _BYTE_FALLBACK.match(base_tokens[base_index[data]] or ""):
                base_index[data] = i
    base_special = {text: i for i, text in sorted(special_tokens(base_tok).items(), reverse=True)}
    base_roles = _role_ids(base_tok, base_eos)
    guide_roles = _role_ids(guide_tok, guidance_eos)

    g2b = np.full(guidance_size, -1, dtype=np.int64)
    for i, data in enumerate(token_bytes(guide_tok)[:guidance_size]):
        if data is not None:
            g2b[i] = base_index.get(data, -1)
    for i, text in special_tokens(guide_tok).items():
        if i < guidance_size:
            g2b[i] = base_special.get(text, -1)
    for role in ("bos", "pad", "unk", "eos"):  # eos last: an id that is both pad and eos ends generation
        target = _preferred(base_tok, role, base_roles[role])
        for i in guide_roles[role]:
            if target is not None and i < guidance_size:
                g2b[i] = target
    return g2b


def _preferred(tokenizer, role: str, ids: set[int]) -> int | None:
    tid = getattr(tokenizer, f"{role}_token_id", None)
    return int(tid) if tid is not None else (min(ids) if ids else None)


def same_tokenizer(a, b) -> bool:
    return len(a) == len(b) and a.get_vocab() == b.get_vocab() and special_tokens(a) == special_tokens(b)


def build_vocab_map(base, guidance, cache_root: Path | None = None) -> VocabMap:
    """The map for a pair of LoadedModels, read from the on-disk cache when it was built before."""
    from .models import cache_dir

    base_tok, guide_tok = base.tokenizer, guidance.tokenizer
    identical = same_tokenizer(base_tok, guide_tok)
    if identical:
        g2b = np.arange(guidance.vocab_size, dtype=np.int64)
        g2b[g2b >= base.vocab_size] = -1
        for i in guidance.eos_ids:  # the guidance's own end ids still end generation
            if i < guidance.vocab_size and base_tok.eos_token_id is not None:
                g2b[i] = base_tok.eos_token_id if i not in base.eos_ids else i
    else:
        key = hashlib.sha256(
            "|".join(
                [
                    str(_FORMAT_VERSION),
                    fingerprint(base_tok, base.eos_ids),
                    fingerprint(guide_tok, guidance.eos_ids),
                    str(guidance.vocab_size),
                ]
            ).encode()
        ).hexdigest()[:20]
        path = (cache_root or cache_dir() / "vocab") / f"{key}.npy"
        if path.is_file():
            g2b = np.load(path)
        else:
            g2b = build_guidance_to_base(base_tok, guide_tok, guidance.vocab_size, base.eos_ids, guidance.eos_ids)
            _atomic_save(path, g2b)
    return VocabMap(torch.from_numpy(g2b), base.vocab_size, identical, base_tok, guide_tok).to(base.device)


def _atomic_save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.stem, suffix=".npy", dir=path.parent)
    with os.fdopen(fd, "wb") as fh:
        np.save(fh, array)
    os.replace(tmp, path)
