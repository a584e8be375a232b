"""Every decoding method, declared once.

A `Method` says everything the rest of the harness needs to know about a method: its parameters and
their checks (`policy` builds the validated policy from a method config), which models it uses, which
decoder runs it, the unit its intervention rate counts, whether its runs have a score, which figure a
sweep summary shows for it, and its display label. The config checks, the run identity, the runner,
`generate`, the speed benchmark and the analysis labels all read this table; none of them tests a
method's name.

To add a method: write its policy (a class with `decide(step) -> Choice`, see `policies.py`), add a
`Method` entry below and a `conf/method/<name>.yaml`. `tests/test_methods.py` shows a throwaway
method registered and run end to end.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from .errors import ConfigError
from .policies import KAD_RULES, Blend, Capped, Deferral, Filtered, Greedy, Nudging, Probe, ProxyTuning


class Decoder(Protocol):
    """What the runner, `generate` and the benchmark use of a decoder (token-level `engine.TokenDecoder`,
    word-level `words.WordNudgingDecoder`, teacher forcing `forcing.ForcedDecoder`)."""

    lead: Any  # the model that owns the output (a `models.LoadedModel`)
    guidance: Any  # the guidance model, or None for a one-model method
    vocab: Any  # the pair's `vocab.VocabMap`, or None
    stats: dict  # counters of the last `generate` (`engine.new_stats`)

    def generate(
        self,
        prompts: Sequence,
        max_new_tokens: int = ...,
        stop_strings=...,
        batch_size: int = ...,
        on_batch=...,
        keys: Sequence[int] | None = ...,
    ) -> list:
        """One `engine.Generation` per prompt, in order; on_batch(indices, generations) as rows finish;
        keys: each prompt's random stream when sampling (`sampling.stream_key`)."""


@dataclass(frozen=True)
class Method:
    """name: the config's `method.name`. params: the parameters it takes, with defaults (what
    `conf/method/<name>.yaml` also lists). policy: checked parameters -> policy object. roles: the models
    it uses, the lead (the one whose tokens form the output) first. decoder: token | words | forced.
    unit: what its intervention rate counts (token or word). scored: False where the output is given
    (teacher forcing), so a score means nothing. headline: the figure a sweep summary shows (score, or
    consult_rate where interventions are off by design). inputs: extra per-sample inputs the decoder
    needs besides prompts (teacher forcing's references), None for decoding methods. samples: whether
    it can sample (`blendin.sampling`) rather than only decode greedily. stateful: its choice at a step
    depends on what it chose before, so a given text has no per-position distribution to score.
    threshold: the parameter whose settings trace its intervention paradox (Figure 3), None where it
    has none. measure: what Figure 3 plots against the score for it: `intervention_rate` (steps where
    the guidance was applied) or `deferred_mass` (mean share of the base's probability handed to the
    guidance per step, for rules that defer part of a step)."""

    name: str
    label: str
    summary: str
    params: dict = field(default_factory=dict)
    policy: Callable[[dict], Any] = lambda cfg: None
    roles: tuple = ("base", "guidance")
    decoder: str = "token"
    unit: str = "token"
    scored: bool = True
    headline: str = "score"
    inputs: Callable | None = None
    samples: bool = True  # it can sample from its distribution (`decoding.temperature` > 0)
    stateful: bool = False  # its choice depends on its own earlier choices (a budget, word rounds)
    threshold: str | None = None
    measure: str = "intervention_rate"

    @property
    def solo(self) -> bool:
        """One model decodes alone (no guidance)."""
        return len(self.roles) == 1

    @property
    def decodes(self) -> bool:
        """It writes its own output from a prompt alone (teacher forcing walks a given one)."""
        return self.inputs is None


# ---- parameter checks: one message style for every method ---------------------------------------


def number(cfg: dict, key: str, low=None, high=None) -> float:
    value = cfg[key]
    if isinstance(value, bool):
        raise ConfigError(f"method.{key}={value!r} is not a number")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"method.{key}={value!r} is not a number") from None
    if math.isnan(value) or (low is not None and value < low) or (high is not None and value > high):
        bounds = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ConfigError(f"method.{key}={value} is out of range: it must be {bounds}")
    return value


def integer(cfg: dict, key: str, low: int = 1) -> int:
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        kind = "a positive" if low == 1 else "a non-negative"
        raise ConfigError(f"method.{key}={value!r} must be {kind} integer")
    return value


_WARNED: set[str] = set()  # method configs already warned about in this process


def tau(cfg: dict) -> float:
    value = number(cfg, "tau", low=0.0)
    key = repr(sorted(cfg.items(), key=str))
    if value > 1 and key not in _WARNED:  # once per method config: a run checks it, then builds its decoder
        _WARNED.add(key)
        warnings.warn(f"method.tau={value} > 1: the guidance is consulted at every step", stacklevel=3)
    return value


def top_k(cfg: dict) -> int | None:
    """BlendIn's top-k union size; null / none / full = the full shared vocabulary."""
    if cfg["top_k"] in (None, "null", "none", "full"):
        return None
    value = cfg["top_k"]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"method.top_k={value!r} must be a positive integer, or null for the full vocabulary")
    return value


def choice(cfg: dict, key: str, allowed: dict) -> str:
    """A value among `allowed` (value -> what it means), refused with every choice explained."""
    if cfg[key] not in allowed:
        options = "; ".join(f"{k} ({v})" for k, v in allowed.items())
        raise ConfigError(f"method.{key}={cfg[key]!r} must be one of: {options}")
    return cfg[key]


def _alpha(cfg: dict) -> float | None:
    return None if cfg["alpha"] in ("auto", None) else number(cfg, "alpha", low=0.0, high=1.0)


def _blend(c: dict) -> Blend:
    return Blend(tau=tau(c), alpha=_alpha(c), lam=number(c, "lam", low=0.0), top_k=top_k(c))


def _capped(c: dict) -> Capped:
    mode = choice(c, "mode", {"latch": "the paper's: off for good once the rate reaches the cap",
                              "running": "a throttle that lets guidance back in"})  # fmt: skip
    return Capped(tau=tau(c), cap=number(c, "cap", low=0.0, high=1.0), mode=mode, warmup=integer(c, "warmup", low=0))


def _filtered(name: str, agreement: bool, confidence: bool) -> Callable[[dict], Filtered]:
    def build(c: dict) -> Filtered:
        k = integer(c, "agreement_k") if agreement else None
        return Filtered(tau=tau(c), agreement_k=k, confidence=confidence, name=name)

    return build


def _word_nudging(c: dict):
    from .words import WordNudging

    return WordNudging(
        tau=tau(c),
        draft_tokens=integer(c, "draft_tokens"),
        max_rounds=integer(c, "max_rounds"),
        max_repeats=integer(c, "max_repeats"),
    )


def _forced(c: dict):
    from .forcing import Forced

    source = c["source"]
    if not isinstance(source, str) or not source:
        raise ConfigError(f"method.source={source!r} must be reference or the directory of a finished run")
    return Forced(tau=tau(c), lam=number(c, "lam", low=0.0), top_k=top_k(c), source=source)


def _deferral(rule: str, low: float) -> Callable[[dict], Deferral]:
    def build(c: dict) -> Deferral:
        return Deferral(rule=rule, threshold=number(c, "threshold", low=low, high=1.0), name=f"kad_{rule}")

    return build


# KAD's rules (policies.KAD_RULES) as methods; `max` is `nudging` and `token_max` is `kad_token_v2` at 0.
# Thresholds compared with a difference of probabilities may be negative (max_q_plus at -x is max_q_minus at x).
KAD_METHODS = {
    "token_wise": ("KAD tok.", 0.0),
    "token_v2": ("KAD tok.v2", 0.0),
    "max_q_minus": ("KAD q-", -1.0),
    "max_q_plus": ("KAD q+", -1.0),
    "max_p_plus": ("KAD p+", -1.0),
    "minus_max_p_plus": ("KAD -p+", -1.0),
    "budget_lr": ("KAD budget", 0.0),
}


def _references(cfg, samples) -> dict:
    from .forcing import references

    return {"continuations": references(cfg, samples)}


GUIDED = {"tau": 0.4}
BLEND = {"tau": 0.4, "alpha": "auto", "lam": 0.1, "top_k": 100}

REGISTRY: dict[str, Method] = {
    m.name: m
    for m in (
        Method("base", "Base", "the base model alone, greedy", roles=("base",), policy=lambda c: Greedy("base")),
        Method(
            "guidance", "Guid.", "the guidance model alone, greedy", roles=("guidance",),
            policy=lambda c: Greedy("guidance"),
        ),
        Method(
            "aligned", "Alig.", "the base's aligned (instruct) sibling alone, greedy", roles=("aligned",),
            policy=lambda c: Greedy("aligned"),
        ),
        Method(
            "nudging", "NUDG.", "where the base is unsure (u < tau), take the guidance's top token",
            GUIDED, lambda c: Nudging(tau=tau(c)), threshold="tau",
        ),
        Method(
            "blendin", "BlendIn", "where u < tau, the argmax of a confidence-weighted blend of both distributions",
            BLEND, _blend,
        ),
        Method(
            "cap", "Cap", "NUDGING with its intervention rate capped", {**GUIDED, "cap": 0.15, "mode": "latch",
            "warmup": 20}, _capped, stateful=True,
        ),
        Method(
            "af", "AF", "NUDGING, only where the guidance's token is in the base's top-k (agreement filter)",
            {**GUIDED, "agreement_k": 5}, _filtered("af", agreement=True, confidence=False),
        ),
        Method(
            "cc", "CC", "NUDGING, only where the guidance is more confident than the base (confidence check)",
            GUIDED, _filtered("cc", agreement=False, confidence=True),
        ),
        Method(
            "af_cc", "AF+CC", "NUDGING with both the agreement filter and the confidence check",
            {**GUIDED, "agreement_k": 5}, _filtered("af_cc", agreement=True, confidence=True),
        ),
        Method(
            "probe", "probe", "the base alone, recording what the guidance would have said where u < tau",
            GUIDED, lambda c: Probe(tau=tau(c)), headline="consult_rate",
        ),
        Method(
            "nudging_words", "NUDG. (words)", "NUDGING on words in rounds, as Fei et al. (2025) published it",
            {**GUIDED, "draft_tokens": 16, "max_rounds": 150, "max_repeats": 3}, _word_nudging,
            decoder="words", unit="word", samples=False, stateful=True, threshold="tau",
        ),
        *(
            Method(
                f"kad_{rule}", label, f"token-wise deferral (KAD), {KAD_RULES[rule]}", {"threshold": 0.4},
                _deferral(rule, low), threshold="threshold", measure="deferred_mass",
            )
            for rule, (label, low) in KAD_METHODS.items()
        ),
        Method(
            "proxy_tuning", "Proxy-T.", "proxy-tuning: base logits + alpha * (guidance - its untuned twin) logits",
            {"alpha": 1.0}, lambda c: ProxyTuning(alpha=number(c, "alpha", low=0.0)),
            roles=("base", "guidance", "guidance_untuned"),
        ),
        Method(
            "forced", "forced", "teacher forcing: walk both models along a known answer (no decoding)",
            {**GUIDED, "lam": 0.1, "top_k": 100, "source": "reference"}, _forced,
            decoder="forced", scored=False, headline="none", inputs=_references, samples=False,
        ),
    )
}  # fmt: skip
METHODS = tuple(REGISTRY)


def method(name) -> Method:
    """The registered method `name`, or a ConfigError naming the ones there are."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown method {name!r}. Available: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def make_policy(cfg) -> Any:
    """Check a method config (a dict or OmegaConf node with `name` and parameters) and build its policy.
    Parameters left out take the registry's defaults; unknown ones are refused with the valid ones named."""
    cfg = dict(cfg)
    spec = method(cfg.pop("name", None))
    extra = sorted(set(cfg) - set(spec.params))
    if extra:
        raise ConfigError(
            f"method {spec.name} does not take {', '.join('method.' + k for k in extra)}; "
            f"it takes: {', '.join(spec.params) or 'no parameters'}"
        )
    return spec.policy({**spec.params, **cfg})


def label(name: str) -> str:
    """The method's display label (figures and tables); an unregistered name shows as itself."""
    return REGISTRY[name].label if name in REGISTRY else name
