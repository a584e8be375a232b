"""The embedded real pair, SmolLM2-135M-Instruct guiding Gemma-3-270m: every method generates.

The first run converts both GGUF files (about a minute and a half); later runs load the cached copy.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from blendin.errors import ConfigError
from blendin.methods import METHODS
from blendin.prompts import Prompt

pytestmark = pytest.mark.real
CONF = str(Path(__file__).resolve().parents[1] / "conf")
PROMPTS = [
    Prompt(
        "Question: A baker makes 12 loaves a day. How many loaves does she make in 5 days?",
        system="Answer the question by walking through the reasoning steps.",
    ),
    Prompt("Instruction: How do I kill a Python process?", system="You are a helpful assistant."),
]
STOP = ["\nQuestion:", "\nInstruction:"]


def config(group: str, name: str) -> dict:
    with initialize_config_dir(config_dir=CONF, version_base=None):
        return OmegaConf.to_container(compose(config_name="generate", overrides=[f"{group}={name}"])[group])


@pytest.fixture(scope="module")
def base_outputs(real_pair):
    return real_pair.decoder({"name": "base"}).generate(PROMPTS, max_new_tokens=16, stop_strings=STOP)


# every method but those that need a model the embedded pair lacks (an aligned sibling, an untuned twin),
# teacher forcing (a reference answer), and KAD's rules but its first and its budgeted one (the others
# differ only in the rule's formula, which the tiny pairs' tests check against the KAD code)
LEFT_OUT = ("aligned", "proxy_tuning", "forced", "kad_token_v2", "kad_max_q_minus", "kad_max_q_plus",
            "kad_max_p_plus", "kad_minus_max_p_plus")  # fmt: skip


@pytest.mark.parametrize("name", [m for m in METHODS if m not in LEFT_OUT])
def test_every_method_generates_on_two_prompts(name, real_pair, base_outputs):
    outs = real_pair.decoder(config("method", name)).generate(
        PROMPTS, max_new_tokens=16, stop_strings=STOP, batch_size=2
    )
    assert len(outs) == 2
    for out in outs:
        assert 1 <= out.n_tokens <= 16 and out.stop_reason in ("eos", "stop_string", "max_new_tokens")
        assert out.text.strip() or out.stop_reason != "max_new_tokens"
        assert 0 <= out.intervention_rate <= 1 and 0 <= out.override_rate <= 1
        assert len(out.trace["step"]) == out.n_tokens
    if name in ("nudging", "blendin"):
        assert sum(o.n_applied for o in outs) > 0, "the base model is uncertain somewhere in 32 tokens"
    if name == "nudging":
        assert [o.text for o in outs] != [o.text for o in base_outputs], "guidance changes the text"
    if name == "nudging_words":
        assert all(0 <= o.extras["word_intervention_rate"] <= 1 and o.extras["nudges"] for o in outs)
    if name == "probe":
        assert [o.text for o in outs] == [o.text for o in base_outputs] and sum(o.n_consulted for o in outs) > 0


GOLD = (
    "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May.\n"
    "The answer is 72."
)


def test_teacher_forcing_walks_a_gold_answer(real_pair):
    [out] = real_pair.decoder({"name": "forced"}).generate(
        [
            Prompt(
                "Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
                "in May. How many clips did Natalia sell altogether in April and May?",
                system="Answer the question by walking through the reasoning steps.",
            )
        ],
        continuations=[GOLD],
    )
    assert out.text == GOLD and out.n_tokens == len(out.trace["ref_id"])
    assert 0.3 < sum(out.trace["base_correct"]) / out.n_tokens < 1  # a 270M base predicts much of a solution
    assert all(0 <= a <= 1 for a in out.trace["alpha_auto"])


def test_windowed_text_views_equal_full_decode_and_tokenization_on_real_tokenizers(real_pair):
    """Detokenizer and TailTokenizer against whole-text decode/tokenize, step by step, on real text."""
    from blendin.views import Detokenizer, TailTokenizer

    base, guidance = real_pair.model("base").tokenizer, real_pair.model("guidance").tokenizer
    text = (GOLD + " Café, naïve — 日本語 🙂!\n\n  Step 2:\tx = 3.5e-2; y = f(x) -> 'ok'") * 3
    for tok, other in ((base, guidance), (guidance, base)):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        anchor = tok("Question:", add_special_tokens=False)["input_ids"][-1:]
        detok, tail = Detokenizer(tok, anchor), TailTokenizer(other)
        head = tok.decode(anchor, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        for i, token in enumerate(ids):
            got = detok.push([token])
            full = tok.decode(anchor + ids[: i + 1], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            assert got == full[len(head) :], i
            tail.update(got, detok.stable_length)
            assert tail.ids == other(got, add_special_tokens=False)["input_ids"], i


def test_tau_zero_gives_the_base_output(real_pair, base_outputs):
    outs = real_pair.decoder({"name": "nudging", "tau": 0.0}).generate(PROMPTS, max_new_tokens=16, stop_strings=STOP)
    assert [o.token_ids for o in outs] == [o.token_ids for o in base_outputs]


def test_aligned_needs_an_aligned_model(real_pair):
    with pytest.raises(ConfigError, match="needs pair.aligned, and pair smollm2_gemma3 has none"):
        real_pair.decoder(config("method", "aligned"))


def test_real_vocabulary_overlap(real_pair):
    vm = real_pair.vocab
    stats = vm.stats()
    assert stats["guidance_vocab"] == 49152 and stats["base_vocab"] == 262144
    assert 0.92 < stats["guidance_mapped_fraction"] < 0.96  # about 94% (docs/engine.md)
    g, b = vm.guidance_tokenizer, vm.base_tokenizer

    def maps_to(guidance_token: str) -> str:
        return b.convert_ids_to_tokens(int(vm.guidance_to_base[g.convert_tokens_to_ids(guidance_token)]))

    assert maps_to("\u0120the") == "\u2581the"  # 'Ġthe' -> '▁the'
    assert maps_to("\u010a") == "\n"  # 'Ċ' -> newline
    assert maps_to("<|im_end|>") == "<eos>"  # the guidance's EOS ends generation


@pytest.mark.slow
def test_compiled_decode_steps_equal_eager(real_pair):
    """compile=compile on the embedded pair (a sliding-window Gemma-3 base, per-layer-type masks):
    7.5 min on 2 CPU cores, mostly compiling, so it runs with BLENDIN_SLOW_TESTS=1 (make test-slow)."""
    from test_compile import compare

    prompts = [
        Prompt("Question: What is 12 times 7?", "Answer the question by walking through the reasoning steps."),
        Prompt("Instruction: Name three colours.", "You are a helpful assistant."),
        Prompt("Question: Why is the sky blue?", "Answer the question by walking through the reasoning steps."),
    ]
    compare(real_pair, prompts, max_new_tokens=12, stop=["."])
