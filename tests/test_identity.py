"""What identifies a run: the prompt hash checked on resume, the session environment, pinned
chat-template dates, and the end-of-turn remap of a shared tokenizer's full-vocabulary blend."""

from __future__ import annotations

import json

import pytest
import torch

from blendin.errors import ConfigError
from blendin.identity import begin_session, session_summary
from blendin.methods import make_policy

FP32 = {"device": "cpu", "dtype": "torch.float32", "batch_size": 8, "torch_version": "t", "transformers_version": "x"}


def test_a_resume_with_other_prompts_is_refused(tmp_path):
    begin_session(tmp_path, "aaa", FP32, resuming=False)
    with pytest.raises(ConfigError, match="rendered prompts differ"):
        begin_session(tmp_path, "bbb", FP32, resuming=True)
    begin_session(tmp_path, "bbb", FP32, resuming=False)  # a fresh start (nothing decoded yet) may change them
    assert json.loads((tmp_path / "identity.json").read_text())["prompts_sha256"] == "bbb"


def test_sessions_are_recorded_and_reduced_precision_refuses_another_batch_size(tmp_path):
    begin_session(tmp_path, "p", FP32, resuming=False)
    begin_session(tmp_path, "p", dict(FP32, batch_size=2), resuming=True)  # float32: allowed, recorded
    summary = session_summary(tmp_path)
    assert summary["n_sessions"] == 2 and summary["mixed_environment"] and summary["batch_size"] == 8
    bf16 = dict(FP32, dtype="torch.bfloat16")
    other = tmp_path / "bf16"
    begin_session(other, "p", bf16, resuming=False)
    with pytest.raises(ConfigError, match="batch_size=8 in torch.bfloat16"):
        begin_session(other, "p", dict(bf16, batch_size=32), resuming=True)


def test_llama_chat_templates_get_a_pinned_date():
    from pathlib import Path

    from omegaconf import OmegaConf
    from transformers import PreTrainedTokenizerFast

    from blendin.prompts import Prompt, render_text

    conf = Path(__file__).resolve().parents[1] / "conf" / "model"
    for name in ("llama-3.2-1b-instruct", "llama-3.2-3b-instruct", "llama-3.1-8b-instruct"):
        assert OmegaConf.load(conf / f"{name}.yaml").chat_template_kwargs.date_string == "26 Jul 2024"
    from conftest import _byte_level_tokenizer

    tok: PreTrainedTokenizerFast = _byte_level_tokenizer()
    # the shape of Llama-3.2's template: today's date unless date_string is given
    tok.chat_template = (
        "{% if not date_string is defined %}{% set date_string = strftime_now('%d %b %Y') %}"
        "{% endif %}Today Date: {{ date_string }}\n{{ messages[-1]['content'] }}"
    )
    pinned = render_text(Prompt("hi"), tok, "chat", "llama", {"date_string": "26 Jul 2024"})
    assert "Today Date: 26 Jul 2024" in pinned
    from datetime import datetime

    assert datetime.now().strftime("%d %b %Y") in render_text(Prompt("hi"), tok, "chat", "llama", {})


def test_full_vocabulary_blend_with_one_tokenizer_still_remaps_end_of_turn():
    """Llama's <|eot_id|> (guidance id 3 here) maps to the base EOS (0); the full-vocabulary blend used to
    skip the map when the tokenizers were the same, and emitted <|eot_id|> as a token."""
    from test_policies import make_step

    step = make_step([[0.3, 0.3, 0.2, 0.2]], [[0.02, 0.03, 0.05, 0.9]], g2b=[0, 1, 2, 0])
    step.vocab.identical = True
    choice = make_policy({"name": "blendin", "alpha": 1.0, "top_k": None}).decide(step)
    assert choice.token.item() == 0
    assert step.vocab.guidance_probs_on_base(torch.tensor([[0.02, 0.03, 0.05, 0.9]])).tolist()[0][0] == pytest.approx(
        0.92
    )
