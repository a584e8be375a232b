"""Tiny local models and tokenizers, built in the test session (no network).

- `byte_tok`: a byte-level BPE tokenizer (GPT-2 / Llama-3 / SmolLM style) with a ChatML template.
- `piece_tok`: a SentencePiece-style BPE tokenizer ('▁' for spaces, <0xNN> byte fallback; Gemma style).
- `shared_pair`: Gemma-3 base + Llama guidance, both with `byte_tok` (one tokenizer).
- `cross_pair`: Gemma-3 base with `piece_tok` + Llama guidance with `byte_tok` (two tokenizers).
The Gemma-3 bases have a 36-token sliding window, so that decoding crosses it (Gemma-3-270m has 512).
Models are random but with a wide initialisation, so their distributions are peaked enough that a
threshold of 0.4 splits the steps into confident and uncertain ones.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

# Read when huggingface_hub and datasets are imported; conftest is imported before any test module
# (test_benchmarks.py, test_judge_check.py), so no test reaches for the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Question: What is 12 plus 30? Answer: 42.",
    "Natalia sold 48 clips in April and half as many in May.",
    "I cannot help with that request, sorry.",
    "Instruction: Write a short poem about the sea.\nThe sea is wide and deep and blue.",
    "Café, naïve, résumé — unicode text matters: 日本語 and emoji 🙂.",
    "def add(a, b):\n    return a + b\n",
    "Step 1: multiply 6 by 7. Step 2: the answer is 42.",
    "Safety first: never share passwords. Always be kind and helpful.",
    "Once upon a time there was a small model that guided a larger one.",
] * 20
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _byte_level_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        bos_token="<|im_start|>",
        pad_token="<|endoftext|>",
        chat_template=CHATML,
    )


def _piece_tokenizer():
    """BPE over '▁'-joined text with <0xNN> byte-fallback tokens as ordinary vocabulary entries."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    draft = Tokenizer(models.BPE(unk_token="<unk>"))
    draft.normalizer = normalizers.Replace(" ", "\u2581")
    draft.pre_tokenizer = pre_tokenizers.Split("\u2581", behavior="merged_with_next")
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False, limit_alphabet=60)
    draft.train_from_iterator(CORPUS, trainer)
    spec = json.loads(draft.to_str())
    vocab = {t: i for t, i in spec["model"]["vocab"].items()}
    for b in range(256):  # byte fallback tokens, like Gemma's
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in spec["model"]["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    tok.normalizer = draft.normalizer
    tok.pre_tokenizer = draft.pre_tokenizer
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens(specials)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>"
    )


def _gemma(vocab_size: int, seed: int, eos: int, pad: int):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    cfg = Gemma3TextConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        sliding_window=36,
        layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=1024,
        initializer_range=0.45,
        tie_word_embeddings=False,
        eos_token_id=eos,
        pad_token_id=pad,
        bos_token_id=None,
    )
    return Gemma3ForCausalLM(cfg).eval()


def _llama(vocab_size: int, seed: int, eos: int, pad: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        initializer_range=0.5,
        eos_token_id=eos,
        pad_token_id=pad,
        bos_token_id=None,
    )
    return LlamaForCausalLM(cfg).eval()


def _save(model, tokenizer, path):
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    """Saved tiny models: {'shared_base', 'shared_guidance', 'cross_base', 'cross_guidance'} -> folder."""
    root = tmp_path_factory.mktemp("tiny_models")
    byte_tok, piece_tok = _byte_level_tokenizer(), _piece_tokenizer()
    b_eos, b_pad = byte_tok.eos_token_id, byte_tok.pad_token_id
    p_eos, p_pad = piece_tok.eos_token_id, piece_tok.pad_token_id
    return {
        "shared_base": _save(_gemma(len(byte_tok), 1, b_eos, b_pad), byte_tok, root / "shared_base"),
        "shared_guidance": _save(_llama(len(byte_tok), 2, b_eos, b_pad), byte_tok, root / "shared_guidance"),
        "cross_base": _save(_gemma(len(piece_tok), 3, p_eos, p_pad), piece_tok, root / "cross_base"),
        "cross_guidance": _save(_llama(len(byte_tok), 4, b_eos, b_pad), byte_tok, root / "cross_guidance"),
        # the guidance's "untuned twin" for proxy-tuning: another model with the guidance's tokenizer
        "untuned": _save(_llama(len(byte_tok), 5, b_eos, b_pad), byte_tok, root / "untuned"),
    }


@pytest.fixture(autouse=True)
def _time_limit():
    """BLENDIN_TEST_TIMEOUT=S (scripts/gpu_check.sh sets it): a test still running after S seconds fails
    with the traceback of where it was, so that one hung test cannot use up a time-limited check."""
    seconds = int(os.environ.get("BLENDIN_TEST_TIMEOUT", "0"))
    if seconds <= 0:
        yield
        return

    def expire(signum, frame):
        raise TimeoutError(f"the test ran past BLENDIN_TEST_TIMEOUT={seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def pytest_collection_modifyitems(config, items):
    """Tests marked `slow` run only when BLENDIN_SLOW_TESTS=1 (make test-slow): they take minutes."""
    if os.environ.get("BLENDIN_SLOW_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="slow (minutes on a 2-core CPU): BLENDIN_SLOW_TESTS=1 runs it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def make_pair(model_dirs, kind: str, untuned: bool = False):
    """A tiny pair; untuned=True also names the guidance's untuned twin (proxy-tuning's third model)."""
    from blendin.pair import Pair, pair_spec

    return Pair(
        pair_spec(
            {
                "name": f"tiny_{kind}",
                "base": {"source": model_dirs[f"{kind}_base"]},
                "guidance": {"source": model_dirs[f"{kind}_guidance"]},
                **({"guidance_untuned": {"source": model_dirs["untuned"]}} if untuned else {}),
            }
        ),
        device="cpu",
    )


@pytest.fixture(scope="session")
def shared_pair(model_dirs):
    return make_pair(model_dirs, "shared")


@pytest.fixture(scope="session")
def cross_pair(model_dirs):
    return make_pair(model_dirs, "cross")


@pytest.fixture(scope="session")
def real_pair():
    """The embedded pair (SmolLM2-135M-Instruct guiding Gemma-3-270m), loaded once for every test."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from blendin.pair import Pair, pair_spec

    conf = str(Path(__file__).resolve().parents[1] / "conf")
    with initialize_config_dir(config_dir=conf, version_base=None):
        spec = OmegaConf.to_container(compose(config_name="generate", overrides=["pair=smollm2_gemma3"]).pair)
    return Pair(pair_spec(spec), device="cpu")


PROMPTS = [
    "Question: What is 12 plus 30?",
    "Instruction: Write a short poem about the sea and the sky and the wide blue world.",
    "Café 日本語",
    "The quick brown fox",
]
