"""Randomly initialised model pairs of real sizes, for speed measurements without the weights.

Speed does not depend on weight values, so an 8B base and a 1B guidance built from their published
configs decode as fast as the real ones. Their outputs would be noise (flat distributions), which no
real pair writes, so by default each model's output is shaped by `blendin.scripted.ScriptedText`:
text that reads like English, a base that is unsure on a set share of steps, a guidance that agrees
with it at a set rate. `script=None` keeps the random outputs (the worst case: every row unsure on
every step). No file leaves the machine and nothing is downloaded: the configs are written out here,
and the tokenizers are byte-level BPE tokenizers of the real vocabulary sizes, trained on a small
built-in text and then filled up with merges of random token pairs. Two presets with different seeds
have different vocabularies that share most of the trained part, like two model families.

    from blendin.synthetic import synthetic_pair
    pair = synthetic_pair("qwen8b+llama1b", device="cuda", dtype="bfloat16")
"""

from __future__ import annotations

import json
import random
from typing import Any

import torch

from .models import LoadedModel, ModelSpec, _eos_ids, resolve_device, resolve_dtype
from .scripted import TEXT, ScriptedText, script, script_text

# The published configs (hub config.json files), reduced to what shapes the compute.
CONFIGS: dict[str, dict[str, Any]] = {  # name -> the model kind and its transformers config settings
    "llama-3.1-8b": dict(
        kind="llama",
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    ),
    "llama-3.2-1b": dict(
        kind="llama",
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    ),
    "qwen3-8b": dict(
        kind="qwen3",
        vocab_size=151936,
        hidden_size=4096,
        intermediate_size=12288,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    ),
    "tiny-llama": dict(
        kind="llama",
        vocab_size=1200,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        tie_word_embeddings=False,
    ),
    "tiny-llama-base": dict(
        kind="llama",
        vocab_size=1200,
        hidden_size=96,
        intermediate_size=192,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=24,
        tie_word_embeddings=False,
    ),
    # CPU-sized, with the compute ratio of an 8B base to a 1B guidance (about 8 to 1 per token)
    "llama-110m": dict(
        kind="llama",
        vocab_size=16000,
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=4,
        head_dim=64,
        tie_word_embeddings=False,
    ),
    "llama-14m": dict(
        kind="llama",
        vocab_size=16000,
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        tie_word_embeddings=True,
    ),
    "tiny-qwen3": dict(
        kind="qwen3",
        vocab_size=1500,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        tie_word_embeddings=False,
    ),
    # The rest of the paper's models (one entry per architecture: an instruct model and its pretrained
    # sibling share it) and the embedded pair, for their sizes (`blendin.sizing`); kinds gemma2,
    # gemma3_text and gemma3 (Gemma-3-4B, a vision-language model, with its vision tower) are not speed presets.
    "llama-3.2-3b": dict(
        kind="llama",
        vocab_size=128256,
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=28,
        num_attention_heads=24,
        num_key_value_heads=8,
        head_dim=128,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    ),
    "qwen3-1.7b": dict(
        kind="qwen3",
        vocab_size=151936,
        hidden_size=2048,
        intermediate_size=6144,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    ),
    "qwen3-4b": dict(
        kind="qwen3",
        vocab_size=151936,
        hidden_size=2560,
        intermediate_size=9728,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    ),
    "gemma-2-9b": dict(
        kind="gemma2",
        vocab_size=256000,
        hidden_size=3584,
        intermediate_size=14336,
        num_hidden_layers=42,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=256,
        sliding_window=4096,
        query_pre_attn_scalar=256,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        tie_word_embeddings=True,
    ),
    "gemma-3-1b": dict(
        kind="gemma3_text",
        vocab_size=262144,
        hidden_size=1152,
        intermediate_size=6912,
        num_hidden_layers=26,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=256,
        sliding_window=512,
        query_pre_attn_scalar=256,
        rope_theta=1000000.0,
        tie_word_embeddings=True,
    ),
    "gemma-3-4b": dict(
        kind="gemma3",
        text_config=dict(
            vocab_size=262208,
            hidden_size=2560,
            intermediate_size=10240,
            num_hidden_layers=34,
            num_attention_heads=8,
            num_key_value_heads=4,
            head_dim=256,
            sliding_window=1024,
            query_pre_attn_scalar=256,
            rope_theta=1000000.0,
        ),
        vision_config=dict(
            hidden_size=1152,
            intermediate_size=4304,
            num_hidden_layers=27,
            num_attention_heads=16,
            image_size=896,
            patch_size=14,
            vision_use_head=False,
        ),
        mm_tokens_per_image=256,
    ),
    "gemma-3-270m": dict(
        kind="gemma3_text",
        vocab_size=262144,
        hidden_size=640,
        intermediate_size=2048,
        num_hidden_layers=18,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=256,
        sliding_window=512,
        query_pre_attn_scalar=256,
        rope_theta=1000000.0,
        tie_word_embeddings=True,
    ),
    "smollm2-135m": dict(
        kind="llama",
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    ),
}
PRESETS = {  # base, guidance, tokenizer seed of each (same seed = same tokenizer)
    "llama8b+llama1b": (("llama-3.1-8b", 1), ("llama-3.2-1b", 1)),
    "qwen8b+llama1b": (("qwen3-8b", 2), ("llama-3.2-1b", 1)),
    "tiny": (("tiny-qwen3", 2), ("tiny-llama", 1)),
    "tiny-shared": (("tiny-llama-base", 1), ("tiny-llama", 1)),
    "llama110m+llama14m": (("llama-110m", 1), ("llama-14m", 1)),
}
CORPUS = """Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.
How many clips did Natalia sell altogether in April and May? Natalia sold 48/2 = 24 clips in May.
Natalia sold 48+24 = 72 clips altogether in April and May. The answer is 72.
Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting.
Weng earns 12/60 = $0.2 per minute. Working 50 minutes, she earned 0.2 x 50 = $10. The answer is 10.
You are a helpful assistant. I cannot help with that request. It is important to stay safe.
Answer the question by walking through the reasoning steps. Question: Which is heavier?
The capital of Australia is Canberra, a planned city chosen as a compromise between Sydney and Melbourne.
"""
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def synthetic_tokenizer(vocab_size: int, seed: int):
    """A byte-level BPE tokenizer with exactly `vocab_size` tokens (specials included)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    trained = Tokenizer(models.BPE())
    trained.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(  # another seed, another number of merges: words split differently
        vocab_size=min(vocab_size, 1000 + 300 * seed),
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    trained.train_from_iterator([CORPUS, TEXT] * 4, trainer)
    model = json.loads(trained.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    vocab = dict(model["vocab"])
    for special in SPECIALS:  # the specials first, as the trainer numbered them
        vocab.setdefault(special, len(vocab))
    pieces = [t for t in vocab if t not in SPECIALS]
    rng = random.Random(seed)
    while len(vocab) < vocab_size:  # fill up with merges of random pairs (valid, if rarely used, tokens)
        a, b = rng.choice(pieces), rng.choice(pieces)
        if len(a) + len(b) > 12 or a + b in vocab:
            continue
        vocab[a + b] = len(vocab)
        merges.append((a, b))
        pieces.append(a + b)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        bos_token="<|im_start|>",
        pad_token="<|endoftext|>",
        chat_template=CHATML,
    )


def model_config(name: str, **settings):
    """The transformers config of CONFIGS[name] (any of its kinds), with `settings` on top."""
    from transformers import Gemma2Config, Gemma3Config, Gemma3TextConfig, LlamaConfig, Qwen3Config

    published = dict(CONFIGS[name])
    kind = published.pop("kind")
    classes = {"llama": LlamaConfig, "qwen3": Qwen3Config, "gemma2": Gemma2Config, "gemma3_text": Gemma3TextConfig}
    return (Gemma3Config if kind == "gemma3" else classes[kind])(**published, **settings)


def build(config, device: torch.device | str, dtype: torch.dtype):
    """A randomly initialised causal LM of `config`, made on `device` in `dtype` ("meta": shapes only)."""
    from transformers import AutoModelForCausalLM

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return AutoModelForCausalLM.from_config(config)
    finally:
        torch.set_default_dtype(previous)


def synthetic_model(name: str, tokenizer, device: torch.device, dtype: torch.dtype):
    config = model_config(
        name,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        max_position_embeddings=8192,
    )
    config._attn_implementation = "sdpa"
    model = build(config, device, dtype)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def synthetic_pair(preset: str, device: str = "auto", dtype: str = "auto", rule: ScriptedText | None = ScriptedText()):
    """A `Pair` whose two models are random models of the preset's real sizes, already in memory, their
    outputs shaped by `rule` (`blendin.scripted`); rule=None keeps their own flat, random outputs."""
    from .pair import Pair, PairSpec

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    (base_name, base_seed), (guide_name, guide_seed) = PRESETS[preset]
    roles = (("base", base_name, base_seed), ("guidance", guide_name, guide_seed))
    tokenizers = {}
    for _, name, seed in roles:
        key = (seed, CONFIGS[name]["vocab_size"])
        if key not in tokenizers:
            tokenizers[key] = synthetic_tokenizer(key[1], seed)
    text = script_text(list(tokenizers.values())) if rule is not None else ""
    loaded = {}
    for role, name, seed in roles:
        tokenizer = tokenizers[(seed, CONFIGS[name]["vocab_size"])]
        model = synthetic_model(name, tokenizer, torch_device, torch_dtype)
        if rule is not None:
            script(model, tokenizer, text, rule, role)
        spec = ModelSpec(f"synthetic:{name}", prompt_format="plain" if role == "base" else "chat", name=name)
        loaded[role] = LoadedModel(spec, model, tokenizer, _eos_ids(model, tokenizer))
    pair = Pair(PairSpec(f"synthetic-{preset}", loaded["base"].spec, loaded["guidance"].spec), device, dtype)
    pair._models.update(loaded)
    return pair
