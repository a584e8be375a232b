"""The synthetic pairs the speed benchmark and the GPU check decode: random models whose outputs read
like text (`blendin.scripted`), with the share of unsure steps and the guidance's agreement they are
set to, the same text for the same seed; and the GPU check's plan fits its budget."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from blendin.bench import prompts
from blendin.scripted import ScriptedText, describe
from blendin.synthetic import synthetic_pair

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", params=["tiny", "tiny-shared"])
def scripted(request):
    return request.param, synthetic_pair(request.param, device="cpu", rule=ScriptedText(unsure=0.2, agree=0.5))


def test_scripted_pairs_write_text_with_the_set_shares(scripted):
    preset, pair = scripted
    facts = describe(pair, prompts(8), max_new_tokens=64)
    assert 0.12 <= facts["unsure_share"] <= 0.3, facts
    assert 0.3 <= facts["guidance_agrees_where_unsure"] <= 0.75, facts
    assert facts["replacement_char_share"] == 0.0, facts
    assert facts["distinct_texts"] >= 6, facts  # prompts with the same last token still write their own
    text = facts["example"]
    assert " " in text and len(re.findall(r"[A-Za-z]{3,}", text)) >= 10, text  # words, not byte noise


def test_the_scripted_distribution_is_what_the_rule_says(scripted):
    """Confident steps put at least 0.45 on the text's next token, unsure ones less than 0.4, and the
    guidance's top token is the base's where it agrees: checked on the models' own forward passes."""
    _, pair = scripted
    base, guidance = pair.model("base"), pair.model("guidance")
    [out] = pair.decoder({"name": "base"}).generate(prompts(1), max_new_tokens=48)
    ids = base.prompt_ids(prompts(1)[0]) + out.token_ids
    with torch.inference_mode():
        probs = torch.softmax(base.model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    # after the first generated token (the prompt's own start is read from a prompt-only pass)
    top = probs.max(-1).values[len(ids) - len(out.token_ids) : -1]
    assert torch.allclose(top, torch.tensor(out.trace["base_top_prob"][1:], dtype=top.dtype), atol=1e-5)
    assert ((top < 0.4) | (top >= 0.45)).all(), "no step between the unsure and the confident range"
    assert abs(probs.sum(-1) - 1).max() < 1e-4
    script = guidance.model._blendin_script
    assert script.text == base.model._blendin_script.text, "both models continue the same text"


def test_same_seed_same_text_and_another_seed_another():
    def text(seed):
        pair = synthetic_pair("tiny-shared", device="cpu", rule=ScriptedText(seed=seed))
        return [o.text for o in pair.decoder({"name": "nudging"}).generate(prompts(3), max_new_tokens=32)]

    assert text(0) == text(0)
    assert text(0) != text(1)


def test_flat_outputs_are_the_worst_case():
    """rule=None keeps the random models' own outputs: every row unsure on (nearly) every step."""
    pair = synthetic_pair("tiny-shared", device="cpu", rule=None)
    assert describe(pair, prompts(4), max_new_tokens=16)["unsure_share"] > 0.9


def test_the_gpu_checks_step_limits_fit_its_budget():
    """scripts/gpu_check.sh runs every step within its own limit; the limits add up to the budget at most,
    so that no step is skipped for lack of time when each takes what it is given."""
    script = (ROOT / "scripts" / "gpu_check.sh").read_text()
    budget = int(re.search(r"BUDGET=\$\{BUDGET:-(\d+)\}", script).group(1))
    limits = [int(n) for n in re.findall(r"^(?:step|bench) \S+ (\d+) ", script, re.MULTILINE)]
    assert len(limits) >= 7 and sum(limits) <= budget, (limits, budget)
