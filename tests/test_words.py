"""Word-level NUDGING (`method=nudging_words`) against a naive string-level implementation of the
same algorithm (docs/protocols.md): every query re-tokenizes the text and runs a full
forward pass, as the reference code's text servers do. Same and different tokenizers."""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPTS, make_pair

from blendin.prompts import Prompt, render_ids
from blendin.words import split_words, word_ratio

TAU, MAX_NEW, DRAFT = 0.4, 60, 16


class Naive:
    """Fei et al.'s rounds, written the slow obvious way."""

    def __init__(self, pair, tau=TAU, max_new_tokens=MAX_NEW, stop=(), max_rounds=150, max_repeats=3):
        self.base, self.guide = pair.model("base"), pair.model("guidance")
        self.tau, self.max_new, self.stop, self.max_rounds, self.max_repeats = (
            tau,
            max_new_tokens,
            stop,
            max_rounds,
            max_repeats,
        )

    def ids(self, model, prompt_ids, text):
        return prompt_ids + model.tokenizer(text, add_special_tokens=False)["input_ids"]

    def logits(self, model, ids):
        with torch.no_grad():
            return model.model(torch.tensor([ids])).logits[0, -1].float()

    def decode_after(self, model, anchor, ids):
        tok = model.tokenizer
        both = tok.decode(anchor + ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        head = tok.decode(anchor, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        return both[len(head) :] if both.startswith(head) else tok.decode(ids, skip_special_tokens=False)

    def ended(self, text):
        if any(s in text for s in self.stop):
            return "stop_string"
        if len(self.base.tokenizer(text, add_special_tokens=False)["input_ids"]) >= self.max_new:
            return "max_new_tokens"
        return None

    def agrees(self, token, word):
        piece = self.decode_after(self.base, [], [token])
        spelled = self.base.tokenizer.convert_ids_to_tokens(token)
        if token in self.base.tokenizer.all_special_ids or not piece:
            return False
        from blendin.vocab import token_bytes

        data = token_bytes(self.base.tokenizer)[token]
        return bool(data) and (" " + word).encode().startswith(data) and spelled is not None

    def run(self, prompt: str):
        pb = render_ids(Prompt(prompt), self.base.tokenizer, "plain")
        pg = render_ids(Prompt(prompt), self.guide.tokenizer, self.guide.spec.prompt_format)
        text, nudges, rounds = "", [], 1
        while True:
            g_ids = self.ids(self.guide, pg, text)
            draft, eos = [], False
            while len(draft) < DRAFT:
                token = int(self.logits(self.guide, g_ids + draft).argmax())
                if token in self.guide.eos_ids:
                    eos = True
                    break
                draft.append(token)
            draft_text = self.decode_after(self.guide, g_ids[-1:], draft)
            if eos:
                text += draft_text
                nudges.append(draft_text)
                return text, nudges, self.ended(text) or "eos"
            words = split_words(draft_text)
            take = max(1, len(words) - 1)
            for i in range(1, len(words)):
                probs = torch.softmax(self.logits(self.base, self.ids(self.base, pb, text + " ".join(words[:i]))), -1)
                if float(probs.max()) >= self.tau or self.agrees(int(probs.argmax()), words[i]):
                    take = i
                    break
            nudge = " ".join(words[:take])
            text += nudge
            nudges.append(nudge)
            if reason := self.ended(text):
                return text, nudges, reason
            if len(nudges) >= self.max_repeats and len(set(nudges[-self.max_repeats :])) == 1:
                return text, nudges, "repeats"
            start, anchor, kept, first = text, self.ids(self.base, pb, text)[-1:], [], True
            while True:
                probs = torch.softmax(self.logits(self.base, self.ids(self.base, pb, text)), -1)
                if not first and float(probs.max()) < self.tau:
                    break
                first = False
                token = int(probs.argmax())
                if token in self.base.eos_ids:
                    return text, nudges, "eos"
                kept.append(token)
                text = start + self.decode_after(self.base, anchor, kept)
                if reason := self.ended(text):
                    return text, nudges, reason
            rounds += 1
            if rounds > self.max_rounds:
                return text, nudges, "rounds"


def test_split_and_ratio_by_hand():
    assert split_words(" The cat sat") == [" The", "cat", "sat"]
    assert split_words("x  y") == ["x", "", "y"] and " ".join(split_words(" a b")) == " a b"
    # nudges " The cat", "sat on", " the" (final one excluded) -> 2 + 2 words of 6
    ratio, nudged, words = word_ratio([" The cat", "", "sat on", " the"], "The cat sat on the mat")
    assert (ratio, nudged, words) == (pytest.approx(4 / 6), 4, 6)
    assert word_ratio(["a b c d e f g"] * 3, "a b")[0] == 1.0  # capped at 1


def wordy_pair(model_dirs, kind):
    """A tiny pair whose models favour word-starting tokens, so that drafts hold many words
    (random models otherwise write long space-free strings) and the base sometimes agrees."""
    pair = make_pair(model_dirs, kind)
    for role, amount in (("guidance", 4.0), ("base", 2.0)):
        model = pair.model(role)
        starts = [i for t, i in model.tokenizer.get_vocab().items() if t.startswith(("\u0120", "\u2581"))]
        bias = torch.zeros(model.model.lm_head.weight.shape[0])
        bias[starts] = amount
        model.model.lm_head.register_forward_hook(lambda module, inputs, out, bias=bias: out + bias)
    return pair


@pytest.fixture(scope="module")
def wordy_pairs(model_dirs):
    return {kind: wordy_pair(model_dirs, kind) for kind in ("shared", "cross")}


@pytest.mark.parametrize("kind", ["shared", "cross"])
def test_word_nudging_matches_the_naive_string_level_algorithm(kind, wordy_pairs):
    pair = wordy_pairs[kind]
    decoder = pair.decoder({"name": "nudging_words", "tau": TAU})
    prompts = [Prompt(p) for p in PROMPTS]
    for batch_size, bulk in ((1, True), (len(PROMPTS), True), (len(PROMPTS), False)):
        decoder.bulk_verify = bulk
        outs = decoder.generate(prompts, max_new_tokens=MAX_NEW, batch_size=batch_size)
        naive = Naive(pair)
        for prompt, out in zip(PROMPTS, outs):
            text, nudges, reason = naive.run(prompt)
            assert (out.text, out.extras["nudges"], out.stop_reason) == (text, nudges, reason), (kind, prompt)
            assert out.token_ids == pair.model("base").tokenizer(text, add_special_tokens=False)["input_ids"]
            words = len(text.split(" "))
            counted = [n.strip() for n in nudges if n.strip()][:-1]
            assert out.extras["word_intervention_rate"] == pytest.approx(
                min(1.0, sum(len(n.split(" ")) for n in counted) / words)
            )
    nudges = [n for o in outs for n in o.extras["nudges"]]
    assert len(nudges) > 3 * len(outs), "the test should see several rounds"
    assert sum(len(n.split()) > 1 for n in nudges) > 3, "and nudges of several words (checked word by word)"
    assert any(o.n_applied < o.n_tokens for o in outs), "and base tokens between nudges"


def test_word_nudging_stops_at_stop_strings_and_cached_equals_recompute(wordy_pairs):
    cross_pair = wordy_pairs["cross"]
    prompts = [Prompt(p) for p in PROMPTS]
    cached = cross_pair.decoder({"name": "nudging_words"}).generate(prompts, max_new_tokens=MAX_NEW)
    fresh = cross_pair.decoder({"name": "nudging_words"}, use_cache=False).generate(prompts, max_new_tokens=MAX_NEW)
    assert [o.text for o in cached] == [o.text for o in fresh]
    full = cached[1].text
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    [cut] = cross_pair.decoder({"name": "nudging_words"}).generate(
        [prompts[1]], max_new_tokens=MAX_NEW, stop_strings=[stop]
    )
    assert cut.stop_reason == "stop_string" and stop not in cut.text and full.startswith(cut.text)
    text, _, reason = Naive(cross_pair, stop=(stop,)).run(PROMPTS[1])
    assert reason == "stop_string" and text.startswith(cut.text)
