"""The vocabulary map between a byte-level BPE tokenizer and a SentencePiece-style one."""

from __future__ import annotations

import numpy as np
import pytest

from blendin import vocab as vocab_module
from blendin.vocab import build_vocab_map, token_bytes


def test_mapped_tokens_spell_the_same_bytes(cross_pair):
    vm = cross_pair.vocab
    g_bytes = token_bytes(vm.guidance_tokenizer)
    b_bytes = token_bytes(vm.base_tokenizer)
    g2b = vm.guidance_to_base.tolist()
    mapped = [g for g, b in enumerate(g2b) if b >= 0 and g_bytes[g] is not None]
    assert len(mapped) > 0.9 * len(g_bytes)
    for g in mapped:
        assert b_bytes[g2b[g]] == g_bytes[g], vm.guidance_tokenizer.convert_ids_to_tokens(g)
    # unmapped ordinary tokens really have no twin in the base vocabulary
    base_set = {b for b in b_bytes if b is not None}
    assert all(g_bytes[g] not in base_set for g, b in enumerate(g2b) if b < 0 and g_bytes[g] is not None)


def test_every_byte_maps_and_real_tokens_beat_byte_fallback(cross_pair):
    vm = cross_pair.vocab
    g_tok, b_tok = vm.guidance_tokenizer, vm.base_tokenizer
    g_bytes = token_bytes(g_tok)
    single = {g_bytes[g][0]: g for g in range(len(g_bytes)) if g_bytes[g] is not None and len(g_bytes[g]) == 1}
    assert len(single) == 256  # byte-level BPE has one token per byte
    for byte, g in single.items():
        assert vm.guidance_to_base[g] >= 0, byte
    space = b_tok.convert_ids_to_tokens(int(vm.guidance_to_base[single[ord(" ")]]))
    assert space == "\u2581"  # not '<0x20>'
    newline = b_tok.convert_ids_to_tokens(int(vm.guidance_to_base[single[ord("\n")]]))
    assert newline == "\n"
    assert b_tok.convert_ids_to_tokens(int(vm.guidance_to_base[single[0xE6]])) == "<0xE6>"


def test_special_tokens_map_by_role(cross_pair):
    vm = cross_pair.vocab
    g_tok, b_tok = vm.guidance_tokenizer, vm.base_tokenizer
    assert int(vm.guidance_to_base[g_tok.eos_token_id]) == b_tok.eos_token_id  # <|im_end|> -> <eos>
    assert int(vm.guidance_to_base[g_tok.pad_token_id]) == b_tok.pad_token_id
    assert int(vm.guidance_to_base[g_tok.bos_token_id]) == b_tok.bos_token_id


def test_guidance_only_tokens_are_spelled_with_their_bytes(cross_pair):
    vm = cross_pair.vocab
    g_bytes, b_bytes = token_bytes(vm.guidance_tokenizer), token_bytes(vm.base_tokenizer)
    unmapped = [g for g, b in enumerate(vm.guidance_to_base.tolist()) if b < 0 and g_bytes[g] is not None]
    assert unmapped, "the tiny pair should have guidance-only tokens"
    partial = 0
    for g in unmapped:
        spelled = b"".join(b_bytes[i] for i in vm.base_ids_for_guidance_token(g))
        assert spelled == g_bytes[g], vm.guidance_tokenizer.convert_ids_to_tokens(g)
        try:
            g_bytes[g].decode("utf-8")
        except UnicodeDecodeError:
            partial += 1
    assert partial > 0, "partial UTF-8 tokens exercise the byte-by-byte path"


def test_stats_and_identical_tokenizers(shared_pair, cross_pair):
    stats = cross_pair.vocab.stats()
    assert stats["identical_tokenizers"] is False
    assert stats["guidance_mapped_fraction"] == pytest.approx(
        stats["guidance_tokens_mapped"] / stats["guidance_vocab"], abs=1e-4
    )
    assert 0 < stats["base_covered_fraction"] < 1
    shared = shared_pair.vocab
    assert shared.identical and shared.stats()["guidance_mapped_fraction"] == 1.0
    eos = shared.guidance_tokenizer.eos_token_id
    assert int(shared.guidance_to_base[eos]) == eos


def test_map_is_cached_on_disk(cross_pair, tmp_path, monkeypatch):
    monkeypatch.setenv("BLENDIN_CACHE_DIR", str(tmp_path))
    base, guidance = cross_pair.model("base"), cross_pair.model("guidance")
    first = build_vocab_map(base, guidance)
    files = list((tmp_path / "vocab").glob("*.npy"))
    assert len(files) == 1

    def must_not_rebuild(*args, **kwargs):
        raise AssertionError("the cached map should have been read")

    monkeypatch.setattr(vocab_module, "build_guidance_to_base", must_not_rebuild)
    second = build_vocab_map(base, guidance)
    assert np.array_equal(first.guidance_to_base.numpy(), second.guidance_to_base.numpy())
