"""blendin.sizing: the models' sizes from their published configs against the sizes their publishers
state, every model of every pair covered, and the tables of docs/gpu.md equal to what the command
prints (no number there is typed by hand)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from blendin import sizing
from blendin.cli import CONF_DIR
from blendin.synthetic import CONFIGS

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = {  # total parameters, as the publishers' model pages and keras-hub's presets state them
    "llama-3.1-8b": 8_030_261_248,
    "llama-3.2-1b-instruct": 1_235_814_400,
    "llama-3.2-3b": 3_212_749_824,
    "gemma-2-9b": 9_241_705_984,
    "gemma-3-1b-it": 999_885_952,  # keras-hub gemma3_instruct_1b
}
NON_EMBEDDING = {"qwen3-1.7b": 1.4e9, "qwen3-4b-base": 3.6e9, "qwen3-8b-base": 6.95e9}  # Qwen3 model cards


def _block(name: str) -> str:
    text = (ROOT / "docs" / "gpu.md").read_text()
    m = re.search(rf"<!-- sizing: {name} .*?-->\n(.*?)\n<!-- /sizing -->", text, re.S)
    assert m, f"docs/gpu.md has no {name} table"
    return m.group(1)


def test_every_model_of_every_pair_has_a_published_config():
    for pair in sorted(p.stem for p in (CONF_DIR / "pair").glob("*.yaml")):
        roles = sizing.pair_models(pair)
        assert {"base", "guidance"} <= set(roles), pair
        for model in roles.values():
            assert sizing.architecture(model) in CONFIGS


def test_sizes_equal_what_the_publishers_state():
    for model, params in PUBLISHED.items():
        assert sizing.size(model).parameters == params, model
    for model, params in NON_EMBEDDING.items():
        inner = sizing.meta_model(sizing.architecture(model)).inner
        emb, head = inner.get_input_embeddings().weight, inner.get_output_embeddings().weight
        rest = sizing.size(model).parameters - emb.numel() - (0 if emb is head else head.numel())
        assert rest / 1e9 == pytest.approx(params / 1e9, abs=0.05), model
    # Gemma-3-4B's language model: keras-hub's gemma3_4b_text, whose vocabulary has 64 fewer tokens
    from transformers import AutoModelForCausalLM, Gemma3TextConfig

    with torch.device("meta"):
        text = AutoModelForCausalLM.from_config(Gemma3TextConfig(**CONFIGS["gemma-3-4b"]["text_config"]))
    assert sum(p.numel() for p in text.parameters()) - 64 * 2560 == 3_880_099_328
    # KV bytes per token in bf16: 2 (keys, values) x layers x KV heads x head dim x 2 bytes
    assert sizing.size("llama-3.1-8b").kv_bytes_per_token == 2 * 32 * 8 * 128 * 2


def test_the_rows_that_fit_follow_the_memory_left():
    models = ["llama-3.1-8b", "qwen3-1.7b"]
    assert sizing.rows_that_fit(models, 16, 512) == 0  # the weights alone (18 GiB) do not fit
    small, large = sizing.rows_that_fit(models, 40, 512), sizing.rows_that_fit(models, 80, 512)
    assert 0 < small < large <= 256


def test_the_memory_table_of_the_docs_is_the_commands_output():
    assert _block("memory") == sizing.memory_table()


def test_the_grid_estimates_of_the_docs_are_the_commands_output():
    """Two of the grids, recomputed (all of them take a minute; `python -m blendin.sizing --grids`)."""
    documented = _block("grids").splitlines()
    fresh = sizing.grid_table(("paper_table3", "tau_sweep")).splitlines()
    assert documented[:2] == fresh[:2]
    for row in fresh[2:]:
        assert row in documented


@pytest.mark.real
def test_the_embedded_models_configs_are_the_converted_models():
    from blendin.models import ModelSpec, _resolve_location

    for model, name in (("gemma-3-270m", "embedded:gemma-3-270m"), ("smollm2-135m", "embedded:smollm2-135m-instruct")):
        location, _ = _resolve_location(ModelSpec(name))
        config = json.loads((Path(location) / "config.json").read_text())
        for key, value in CONFIGS[model].items():
            if key not in ("kind", "rope_theta"):  # rope settings move between config versions
                assert config[key] == pytest.approx(value, rel=1e-6), (model, key)  # GGUF stores floats in 32 bits
