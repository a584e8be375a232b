"""Bad input gets a clear error that names the problem and the fix, before any model loads where possible."""

from __future__ import annotations

import pytest

from blendin.errors import ConfigError, ModelLoadError, PromptError
from blendin.models import ModelSpec, load_model, resolve_device, resolve_dtype
from blendin.pair import Pair, pair_spec
from blendin.prompts import Prompt


@pytest.mark.parametrize("text", ["", "   ", "\n"])
def test_empty_prompt(text):
    with pytest.raises(PromptError, match="the prompt is empty"):
        Prompt(text)


@pytest.mark.parametrize(
    "source, message",
    [
        ("no-such-org/no-such-model-xyz", "could not load model 'no-such-org/no-such-model-xyz'"),
        ("embedded:no-such-model", "unknown embedded model 'embedded:no-such-model'. Available: embedded:gemma-3-270m"),
        ("/nonexistent/model.gguf", "GGUF file '/nonexistent/model.gguf' does not exist"),
    ],
)
def test_unknown_model(source, message, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=message.replace(".", r"\.")):
        load_model(ModelSpec(source), device="cpu")


def test_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(ModelLoadError, match="directory without config.json"):
        load_model(ModelSpec(str(tmp_path)), device="cpu")


def test_bad_model_settings():
    with pytest.raises(ConfigError, match="prompt_format='html'"):
        ModelSpec("x", prompt_format="html")
    with pytest.raises(ConfigError, match="model source is empty"):
        ModelSpec("")
    with pytest.raises(ConfigError, match="dtype='int3'"):
        resolve_dtype("int3", resolve_device("cpu"))
    with pytest.raises(ConfigError, match="is not a torch device"):
        resolve_device("gpu0")


def test_bad_pair_configs():
    with pytest.raises(ConfigError, match="pair p has no guidance model: set pair.guidance.source"):
        pair_spec({"name": "p", "base": {"source": "a"}})
    with pytest.raises(ConfigError, match=r"pair.base has unknown keys \['sorce'\]"):
        pair_spec({"name": "p", "base": {"sorce": "a", "source": "b"}, "guidance": {"source": "c"}})


def test_guidance_without_chat_template(model_dirs):
    # the SentencePiece-style tiny tokenizer has no chat template
    pair = Pair(
        pair_spec(
            {
                "name": "p",
                "base": {"source": model_dirs["cross_base"]},
                "guidance": {"source": model_dirs["cross_base"]},
            }
        ),
        device="cpu",
    )
    with pytest.raises(PromptError, match="chat template, but its tokenizer has none.*prompt_format=plain"):
        pair.decoder({"name": "nudging"}).generate([Prompt("hi")], max_new_tokens=2)
    plain = Pair(
        pair_spec(
            {
                "name": "p",
                "base": {"source": model_dirs["cross_base"]},
                "guidance": {"source": model_dirs["cross_base"], "prompt_format": "plain"},
            }
        ),
        device="cpu",
    )
    [out] = plain.decoder({"name": "guidance"}).generate([Prompt("hi")], max_new_tokens=2)
    assert out.n_tokens >= 1


def test_aligned_method_without_aligned_model(shared_pair):
    with pytest.raises(
        ConfigError, match="method=aligned needs pair.aligned, and pair tiny_shared has none.*pair.aligned.source"
    ):
        shared_pair.decoder({"name": "aligned"})
