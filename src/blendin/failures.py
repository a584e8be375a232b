"""Detectors of how guided decoding fails, per output; their shares per run sit beside the score.

- Runaway: the output ran to `max_new_tokens` where the base alone (the same item and sample in the
  base run of the same setting, when one is stored) stopped by itself, at its end of sequence or a stop
  string. Beside it, the largest probability the guidance gave its own end of sequence at a step where
  it was read (`guide_eos_max`): where that was high, the guidance would have stopped and the rule kept
  the text going.
- Buried answer: the scorer reads a wrong answer (or none), but the output states the gold answer where
  a careful reader finds it. GSM8K: the final result of the output's own reasoning (its last "= N",
  "the answer is N", "#### N", "N in total", "so ... N" before any made-up follow-up problem) is the
  gold number, while the last number (what the scorer reads) is not. Multiple choice: the first answer
  to the asked question states the gold option (a line with the gold's text, labelled with the gold
  letter or with a letter the question does not have; a first sentence naming the gold's text; for
  numeric options the final result), and no other option, and no explicit statement of another letter.
- Loop: the output ends in repetition: the same chunk of words three or more times in a row (numbers
  and option labels ignored), its last lines or sentences copies of earlier ones (two or more, the last
  complete one among them), or a run of empty lines.
- Foreign: the output is written in another script or language than the prompt (the share of letters
  outside the prompt's script, or for Latin-script languages, their common function words).

Each detector was written after its cases in tests/labelled/ had been labelled by reading them;
tests/test_failures.py states each one's agreement with those labels.
"""

from __future__ import annotations

import re
import unicodedata

from .scoring import (
    _LETTER,
    _NUMBER,
    LETTERS,
    _answer_block,
    _mentions,
    _plain,
    _statements,
    _unlatex,
    last_number,
    parse_number,
    same_number,
)

# ---------------------------------------------------------------- runaway
STOPPED = ("eos", "stop_string")  # the ways an output ends by itself
EOS_WANTED = 0.5  # the guidance's end-of-sequence probability from which it would have stopped there


def runaway(stop_reason: str, base_stop_reason: str | None) -> bool | None:
    """Ran to the token budget where the base alone stopped; None when the base's output is not known."""
    if base_stop_reason is None:
        return None
    return stop_reason == "max_new_tokens" and base_stop_reason in STOPPED


# ---------------------------------------------------------------- buried answers
_NUM = _NUMBER.pattern
# Statements of a result: the end of a computation, an answer, a total, a conclusion.
_RESULTS = [
    re.compile(pattern)
    for pattern in (
        rf"=\s*({_NUM})(?!\s*[-+*/×x^÷]\s*\$?\d)",
        rf"(?i:\b(?:answer|result|total|sum)\b)[^.\n\d]{{0,25}}?(?i:\bis\b|\bwas\b|\bwill be\b|=|:|\bof\b)\s*({_NUM})",
        rf"####\s*({_NUM})",
        rf"\\boxed\{{\s*({_NUM})",
        rf"({_NUM})\s+(?i:in total|altogether|in all)\b",
        rf"(?i:\b(?:so|therefore|thus|hence)\b)[^.\n\d]{{0,60}}?({_NUM})",
    )
]
# A line that starts another problem (a base model going on with made-up ones): what follows is not
# the asked question's answer.
_NEXT_PROBLEM = re.compile(r"(?i)\s*(?:question|q\d*[:.]|problem|example|exercise|instruction|subject)\b")


def first_answer(output: str) -> str:
    """The output up to the first line after its first one that starts another problem."""
    lines = output.splitlines()
    for i, line in enumerate(lines[1:], 1):
        if _NEXT_PROBLEM.match(line):
            return "\n".join(lines[:i])
    return output


def final_result(text: str) -> float | None:
    """The number of the last result statement in the text (None when it states none)."""
    found = [(m.start(1), m.group(1)) for pattern in _RESULTS for m in pattern.finditer(text)]
    values = [parse_number(number) for _, number in sorted(found)]
    values = [v for v in values if v is not None]
    return values[-1] if values else None


def buried_number(output: str, gold: float) -> bool:
    """GSM8K: the output's own final result is the gold number, but its last number (the scorer's) is not."""
    if same_number(last_number(output), gold):
        return False
    return same_number(final_result(first_answer(output)), gold)


_LINE_LABEL = re.compile(
    rf"^[\s*_]*(?:(?i:(?:final |correct |the )?answer|option|choice)[\s*_]*[:\-]+[\s*_]*)?"
    rf"(?:[(\[]?({_LETTER})[)\].:][\s*_]*)?(.*)$"
)


_OPERATOR = re.compile(r"\s*[-+*/×x=÷]\s")


def buried_choice(output: str, options: list[str], gold: str, prediction: str | None) -> bool:
    """Multiple choice: the scorer's letter is not the gold, but the first answer states the gold option."""
    if prediction == gold:
        return False
    letters = LETTERS[: len(options)]
    lines = [line for line in _answer_block(first_answer(_unlatex(output))) if line.strip()]
    if any(letter != gold for _, (letter, _) in _statements(lines) if letter in letters):
        return False  # it names another option explicitly
    stating = []  # the option each line states by its text, under a letter that does not contradict it
    for line in lines:
        m = _LINE_LABEL.match(line)
        rest = _plain(m.group(2)) if m else ""
        for i, option in enumerate(options):
            text = _plain(option)
            after = rest[len(text) :]  # "20 + 21 = 41" does not state option "20"
            if m and text and rest.startswith(text) and (not after or (after[0] == " " and not _OPERATOR.match(after))):
                if m.group(1) is None or m.group(1) == letters[i] or m.group(1) not in letters:
                    stating.append(letters[i])
    if stating:  # one such line: its option; several: a list of options, no answer
        return stating == [gold]
    numbers = [parse_number(o) for o in options]
    if all(n is not None for n in numbers):  # numeric options: the final result, as for GSM8K
        result = final_result("\n".join(lines))
        return result is not None and same_number(result, numbers[letters.index(gold)] or 0.0)
    first = re.split(r"(?<=[.!?])\s+", lines[0].strip())[0] if lines else ""
    return {letters[i] for i, option in enumerate(options) if _mentions(first, option)} == {gold}


# ---------------------------------------------------------------- loops
_LABEL_START = re.compile(r"^(?:\s*(?:[A-Za-z]|\d+)[.)]\s+)+")
_WORDS = re.compile(r"\w+|[^\w\s]")
BLANK_RUN = 8  # this many line breaks in a row at the end: the text has run into emptiness
MIN_LOOP_TOKENS = 8  # a repeated chunk must cover at least this many words (or marks) at the end


def _normal(text: str, numbers: bool = True) -> str:
    """Lower case; numbers as # ("Step 2: 42 + 0 = 42." ~ "Step 3: 42 + 0 = 42.") unless numbers=False."""
    return re.sub(r"\d+(?:[.,]\d+)*", "#", text.lower()) if numbers else text.lower()


def _units(output: str) -> list[str]:
    """The output's lines and sentences, normalized, option labels dropped, empty ones left out."""
    units = []
    for line in output.splitlines():
        for sentence in re.split(r"(?<=[.!?])\s+", _LABEL_START.sub("", line).strip()):
            if sentence := _normal(sentence, numbers=False).strip():
                units.append(sentence)
    return units


def loop(output: str) -> bool:
    """The output ends in repetition (see the module doc)."""
    if re.search(r"(?:\n[ \t]*){%d,}$" % BLANK_RUN, output):
        return True
    units = _units(output)[:-1]  # the last line or sentence may be cut by the token budget
    tail = units[-6:]
    copies = [unit in units[: len(units) - len(tail) + i] for i, unit in enumerate(tail)]
    if tail and copies[-1] and sum(copies) >= 2:  # the last lines or sentences repeat earlier ones
        return True
    tokens = _WORDS.findall(_normal("\n".join(_LABEL_START.sub("", line) for line in output.splitlines())))
    for k in range(1, 41):  # the last r * k tokens are r >= 3 copies of one chunk of k tokens
        if 3 * k > len(tokens):
            break
        chunk, r = tokens[-k:], 1
        while len(tokens) >= (r + 1) * k and tokens[-(r + 1) * k : -r * k] == chunk:
            r += 1
        if r >= 3 and r * k >= MIN_LOOP_TOKENS:
            return True
    return False


# ---------------------------------------------------------------- another script or language
# The commonest function words of a few Latin-script languages (a text's language is the one whose words it uses most).
FUNCTION_WORDS = {
    "en": "the and of to is in that it for you with are this be was on as not have or but what can do they how does"
    " she he much many there an at by from his her we my your if so all will would has had were their",
    "es": "el la los las de que y en es por para con una un se lo como pero más su al del muy está sí",
    "fr": "le la les de des et est que qui une un pour dans pas avec sur ce il elle sont au du ne par à qu",
    "de": "der die das und ist nicht ein eine zu den mit sich des auf für im dem sie es wird auch ja",
    "it": "il lo gli di che è per una non sono della con del le questo ma come più anche",
    "pt": "o os de que e é um uma para com não da do em se mais como mas por são ao",
    "la": "et est sed ut in non cum ad quod qui quae sunt enim atque neque",
}
_VOCAB = {lang: set(words.split()) for lang, words in FUNCTION_WORDS.items()}
FOREIGN_SCRIPT = 0.3  # share of letters outside the prompt's script from which the text is in another one


def script(char: str) -> str:
    """The script of a letter, from its Unicode name (LATIN, CYRILLIC, CJK, HIRAGANA, ...)."""
    return unicodedata.name(char, "?").split(" ")[0]


def language(text: str) -> str | None:
    """The text's main script, and for Latin script its language by function words; None if too little text."""
    letters = [c for c in text if c.isalpha()]
    if len(letters) < 4:
        return None
    scripts: dict[str, int] = {}
    for c in letters:
        scripts[script(c)] = scripts.get(script(c), 0) + 1
    main = max(scripts, key=scripts.__getitem__)
    if main != "LATIN":
        return main
    words = re.findall(r"[^\W\d_]+", text.lower())
    hits = {lang: sum(w in vocab for w in words) for lang, vocab in _VOCAB.items()}
    distinct = {lang: len(set(words) & vocab) for lang, vocab in _VOCAB.items()}
    best = max(hits, key=hits.__getitem__)
    enough = distinct[best] >= 2 or hits[best] >= 5  # "y" twice in code is no Spanish
    return best if enough and hits[best] > hits["en"] else "en" if hits["en"] else None


def foreign(output: str, prompt: str) -> bool:
    """Written in another script or language than the prompt: most of it (its main script or Latin-script
    language differs), or a large part (a share of FOREIGN_SCRIPT of its letters in another script)."""
    home = language(prompt) or "en"
    said = language(output)
    if said is None:
        return False
    if said != home:
        return True
    home_script = "LATIN" if len(home) == 2 else home
    letters = [c for c in output if c.isalpha()]
    return sum(script(c) != home_script for c in letters) >= FOREIGN_SCRIPT * len(letters)
