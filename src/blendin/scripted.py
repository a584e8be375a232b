"""Outputs for randomly initialised models that read like text: the synthetic pairs' next-token rule.

Random weights give flat distributions: every row is unsure on every step, the guidance runs on all
of them, and two tokenizers emit byte noise that re-tokenization cannot follow. A speed measurement
on such a pair measures the worst case, not what guided decoding costs. `ScriptedText` replaces each
model's output logits (after the real forward, which still runs in full) with a distribution chosen
by a cheap rule on the device, from the token just read:

- the top token continues a built-in English text (`TEXT`), so outputs have words, spaces and
  punctuation and a second tokenizer re-synchronises at word boundaries as it does on real text. The
  text is cut down to words whose tokens (in both of a pair's tokenizers) appear once, so that each
  token has one successor and the text runs for hundreds of tokens before it repeats; a prompt starts
  it at a place of its own (a hash of the prompt's tokens), so rows write different texts;
- the base is unsure (top-1 probability 0.22 to 0.38) on a share `unsure` of the tokens it reads, and
  confident (0.45 to 0.98) elsewhere; its runner-up is the token after next (a word skipped), six
  more tokens of the text share most of the rest, and a little is spread over the whole vocabulary;
- the guidance agrees with the base's top token on a share `agree` of the steps where the base is
  unsure, and `agree_confident` elsewhere; where it disagrees its top token is the base's runner-up.

Every choice is a hash of (seed, the token's text), so the same seed gives the same text, and two
models with different tokenizers make the same choice where their last tokens spell the same text.
No host work: the rule is a few tables indexed on the device.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from .vocab import token_bytes

TEXT = """The river town wakes before the sun. Bakers light their ovens at four, and by five the first
carts roll over the old stone bridge toward the market square. Maria sells apples, pears and honey from
her family's orchard; her brother Tomas counts coins and writes every sale into a small green notebook.
Last Tuesday they sold 48 jars of honey, then half as many on Wednesday, which made 72 jars for both days.
Across the square, a teacher named Mr. Okafor leads twenty children through a lesson on fractions. He
draws a circle, cuts it into eight slices, and asks how much remains after three are eaten. Five eighths,
answers a quiet girl near the window. Outside, clouds gather over distant hills, and the wind carries
the smell of rain. Farmers glance upward, hurry their horses, and cover baskets with canvas. Inside the
library, an old clerk sorts letters by date. Some came from sailors who crossed cold northern seas;
others from students writing home about examinations, loneliness, friendship and cheap bread. History
lives in such paper: not in kings or battles, but in ordinary worries carefully recorded. When the storm
finally breaks, water rushes down gutters into the swollen river. Children press faces against glass,
delighted. A carpenter repairs a leaking roof while his apprentice holds the ladder steady. Is it safe?
Probably, though nobody truly knows. By evening the streets shine like mirrors, lamps flicker, and
neighbours share soup, stories and opinions about tomorrow's weather. Science explains storms through
pressure, temperature and moisture: warm air rises, cools, condenses into droplets, and falls again.
Yet people still watch the sky with wonder, as their grandparents did. Good questions deserve patient
answers. Why does ice float? Because water expands when it freezes, so solid ice is less dense than
liquid water. How far away is lightning? Count seconds between flash and thunder, then divide by three
for kilometres. What makes bread rise? Yeast eats sugar, releasing carbon dioxide that forms tiny
bubbles inside dough. Every answer opens another question, and curiosity rarely ends. A careful reader
checks each claim, compares sources, and admits uncertainty whenever evidence looks thin. Mathematics
rewards similar habits: write assumptions clearly, test simple cases first, and verify results
independently. Suppose a train travels 60 miles during 1.5 hours; its average speed equals 40 miles per
hour. If a rectangle measures 7 centimetres by 4, its area is 28 square centimetres and its perimeter
22. Such exercises seem dull, perhaps, yet they build confidence. Meanwhile, at the harbour, fishermen
mend nets, gulls argue over scraps, and a ferry whistle echoes against cliffs. Tourists photograph
lighthouses, buy postcards, and ask directions to museums. One museum displays ancient coins, pottery,
maps, and a telescope once used by astronomers studying Jupiter's moons. Another celebrates music:
violins, drums, flutes, pianos, recordings of folk songs sung by grandmothers. Visitors leave humming
melodies they cannot name. Later, under bright stars, an astronomer explains that light from some
galaxies began travelling millions of years ago, long before humans existed. Listeners fall silent,
thinking about time, distance, and their own brief lives. Kindness matters more than cleverness,
someone whispers. Perhaps both matter. Tomorrow brings new work: planting seeds, fixing engines,
teaching algebra, cooking dinner, writing letters, healing patients, building bridges, and helping
strangers find their way home."""

OTHERS = 6  # further candidates with a little mass each
BACKGROUND = 0.01  # of the mass off the candidates, spread over the whole vocabulary


@dataclass(frozen=True)
class ScriptedText:
    """The rule's settings: `unsure`, the share of read tokens after which the base is unsure;
    `agree`, where it is unsure, the share at which the guidance's top token is the base's;
    `agree_confident`, the same where the base is confident; `seed`, which choices are made."""

    unsure: float = 0.2
    agree: float = 0.5
    agree_confident: float = 0.9
    seed: int = 0

    def __post_init__(self):
        for name in ("unsure", "agree", "agree_confident"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"ScriptedText.{name}={value} must lie in [0, 1]")

    def hash(self, kind: str, text: bytes) -> float:
        """A uniform number in [0, 1) for (seed, kind, a token's text): the same in every process."""
        digest = hashlib.blake2b(text, digest_size=8, key=f"{self.seed}:{kind}".encode()).digest()
        return int.from_bytes(digest, "little") / 2**64


def script_text(tokenizers) -> str:
    """The built-in text cut down to the words whose tokens, in every one of `tokenizers`, have not
    appeared before: each token of the result occurs once, so it has exactly one successor."""
    seen: list[set[int]] = [set() for _ in tokenizers]
    kept: list[str] = []
    for word in TEXT.split():
        piece = " " + word  # the first word too: the text runs on from its end to its start
        ids = [tok(piece, add_special_tokens=False)["input_ids"] for tok in tokenizers]
        if all(len(set(i)) == len(i) and not seen_k & set(i) for i, seen_k in zip(ids, seen)):
            kept.append(piece)
            for i, seen_k in zip(ids, seen):
                seen_k.update(i)
    return "".join(kept)


class ScriptedModel:
    """One model's tables: for each token it may read, its candidates for the next token and their
    log-probabilities, [V, 2 + OTHERS] each, and the log-probability of every other token."""

    def __init__(self, tokenizer, text: str, rule: ScriptedText, role: str, vocab_size: int):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        n = len(ids)
        where = {t: i for i, t in enumerate(ids)}
        texts = token_bytes(tokenizer)
        texts += [None] * (vocab_size - len(texts))
        width = 2 + OTHERS
        candidates = np.zeros((vocab_size, width), dtype=np.int64)
        probs = np.zeros((vocab_size, width), dtype=np.float64)
        rest = np.zeros(vocab_size, dtype=np.float64)
        for token in range(vocab_size):
            spelled = texts[token]
            key = spelled if spelled is not None else f"<special {token}>".encode()
            h = {kind: rule.hash(kind, key) for kind in ("start", "unsure", "agree", "p", "others")}
            at = where.get(token)
            at = at if at is not None else int(h["start"] * n) - 1  # outside the text: a start of its own
            nxt, skip = ids[(at + 1) % n], ids[(at + 2) % n]  # the next token, and the one after it
            unsure = h["unsure"] < rule.unsure
            if role == "base":
                top = 0.22 + 0.16 * h["p"] if unsure else 0.45 + 0.53 * h["p"]
                first, second = nxt, skip
            else:
                agrees = h["agree"] < (rule.agree if unsure else rule.agree_confident)
                top = 0.5 + 0.45 * h["p"]
                first, second = (nxt, skip) if agrees else (skip, nxt)
            step = 1 + int(h["others"] * (n - 1))
            others = [ids[(at + 3 + k * step) % n] for k in range(OTHERS * 2)]
            others = [t for t in dict.fromkeys(others) if t not in (first, second)][:OTHERS]
            row = [first, second] + others
            second = min(0.6 * top, 0.5 * (1 - top))  # always below the top token
            share = (1 - top - second) * (1 - BACKGROUND) / max(1, len(others))  # below both (6 others)
            mass = [top, second] + [share] * len(others)
            unused = next(t for t in range(width + 1) if t not in row)  # padding: a token with no mass of its own
            candidates[token] = row + [unused] * (width - len(row))
            probs[token, : len(row)] = mass
            rest[token] = 1.0 - sum(mass)
        self.text = text
        self.text_ids = torch.tensor(ids)
        self.pad_id = tokenizer.pad_token_id
        self.candidates = torch.from_numpy(candidates)
        # candidates' log-probabilities; the rest of the mass spread over the whole vocabulary
        background = rest / vocab_size
        self.log_background = torch.from_numpy(np.log(background))
        self.log_probs = torch.from_numpy(np.log(np.where(probs > 0, probs + background[:, None], 1e-300)))
        self.padding = torch.from_numpy(probs == 0)

    def to(self, device: torch.device) -> "ScriptedModel":
        for name in ("text_ids", "candidates", "log_background", "log_probs", "padding"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def read(self, ids: torch.Tensor, positions: torch.Tensor | None, keep: int) -> torch.Tensor:
        """The tokens whose next-token distributions a forward returns [B, keep]: the last `keep` tokens
        read, except that a prompt (a chunk that starts its row at position 0) starts the text at a place
        of its own, from a hash of all its tokens, so that prompts with the same last token still write
        different texts (padding left out, so the batch changes nothing). A one-token chunk is read as
        it is: decode steps then cost a table lookup, as in transformers' own `generate`, which the
        benchmarks compare with."""
        read = ids[:, ids.shape[1] - keep :]
        if positions is None or ids.shape[1] == 1:
            return read
        n = self.text_ids.shape[0]
        real = torch.where(ids == self.pad_id, torch.zeros_like(ids), ids)
        start = (real * 2654435761 + real * real).sum(-1).remainder(n)
        prompt = (positions == 0).any(-1)
        last = torch.where(prompt, self.text_ids[(start - 1).remainder(n)], read[:, -1])
        return torch.cat([read[:, :-1], last[:, None]], dim=1)

    def logits(self, read: torch.Tensor, vocab_size: int, dtype: torch.dtype) -> torch.Tensor:
        """Next-token logits [B, Q, V] after each token of `read` [B, Q]: log-probabilities (the softmax
        of these is the scripted distribution)."""
        out = self.log_background[read].to(dtype)[..., None].expand(*read.shape, vocab_size).contiguous()
        values = torch.where(self.padding[read], out.gather(-1, self.candidates[read]), self.log_probs[read].to(dtype))
        return out.scatter_(-1, self.candidates[read], values)


def script(model, tokenizer, text: str, rule: ScriptedText, role: str) -> ScriptedModel:
    """Replace `model`'s output logits with the scripted ones (a forward hook: the forward itself runs
    in full, so the compute, the memory and the KV cache are those of the real model)."""
    vocab_size = model.config.get_text_config().vocab_size
    tables = ScriptedModel(tokenizer, text, rule, role, vocab_size).to(next(model.parameters()).device)

    def hook(module, args, kwargs, output):
        ids = kwargs.get("input_ids", args[0] if args else None)
        read = tables.read(ids, kwargs.get("position_ids"), output.logits.shape[1])
        output.logits = tables.logits(read, vocab_size, output.logits.dtype)
        return output

    model.register_forward_hook(hook, with_kwargs=True)
    model._blendin_script = tables
    return tables


def describe(pair, prompts, max_new_tokens: int = 64, tau: float = 0.4) -> dict:
    """What a pair's outputs look like, measured on a greedy decode with the `probe` method (the
    base's own text, the guidance consulted where the base is unsure): the share of steps where the
    base is unsure, where it is unsure the share at which the guidance's top token is the base's own,
    and the share of U+FFFD (replacement) characters in the text."""
    decoder = pair.decoder({"name": "probe", "tau": tau})
    outs = decoder.generate(prompts, max_new_tokens=max_new_tokens, batch_size=len(prompts))
    steps = sum(o.n_tokens for o in outs)
    consulted = [(g, b) for o in outs for c, g, b in zip(o.trace["consulted"], o.trace["guide_top_id"],
                                                          o.trace["base_top_id"]) if c]  # fmt: skip
    text = "".join(o.text for o in outs)
    return {
        "unsure_share": round(len(consulted) / max(1, steps), 3),
        "guidance_agrees_where_unsure": round(sum(g == b for g, b in consulted) / len(consulted), 3)
        if consulted
        else math.nan,
        "replacement_char_share": round(text.count("\ufffd") / max(1, len(text)), 4),
        "distinct_texts": len({o.text for o in outs}),
        "example": outs[0].text[:160],
    }
