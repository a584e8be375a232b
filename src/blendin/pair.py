"""A model pair (base, guidance, optional aligned sibling and untuned guidance twin) and the decoder
each method needs.

Models load on first use, so a `base` run never loads the guidance model, and a process that runs
several methods on one pair loads each model once.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import OmegaConf

from .engine import TokenDecoder
from .errors import ConfigError
from .forcing import ForcedDecoder
from .methods import Decoder, make_policy
from .methods import method as method_spec
from .models import LoadedModel, ModelSpec, load_model
from .parallel import split_roles
from .sampling import Sampling
from .speculation import SpeculativeDecoder, check_speculate
from .vocab import VocabMap, build_vocab_map
from .words import WordNudgingDecoder


@dataclass(frozen=True)
class PairSpec:
    name: str
    base: ModelSpec
    guidance: ModelSpec
    aligned: ModelSpec | None = None
    guidance_untuned: ModelSpec | None = None  # the guidance before its tuning (proxy-tuning's third model)


# What a method that needs an optional role says when the pair lacks it (checked before anything loads).
OPTIONAL_ROLES = {
    "aligned": "Fix: set pair.aligned.source (or model@pair.aligned=<name>) to the base model's instruct sibling",
    "guidance_untuned": "Fix: set pair.guidance_untuned.source (or model@pair.guidance_untuned=<name>) to the "
    "guidance model before its tuning (the same tokenizer, e.g. the base checkpoint an instruct model was tuned from)",
}


def missing_role(method_name: str, roles, pair_cfg) -> str | None:
    """The error for a method whose roles include an optional model the pair config does not name, else None."""
    for role in roles:
        if role in OPTIONAL_ROLES and not (pair_cfg or {}).get(role):
            pair = (pair_cfg or {}).get("name")
            return f"method={method_name} needs pair.{role}, and pair {pair} has none. {OPTIONAL_ROLES[role]}"
    return None


def _model_spec(cfg, role: str, default_format: str, pair: str) -> ModelSpec:
    if cfg is None or not cfg.get("source"):
        raise ConfigError(
            f"pair {pair} has no {role} model: set pair.{role}.source "
            "(a hub id, a local directory, a .gguf file or embedded:<name>)"
        )
    known = {"source", "gguf_file", "revision", "prompt_format", "name", "chat_template_kwargs", "device"}
    extra = sorted(set(cfg) - known)
    if extra:
        raise ConfigError(f"pair.{role} has unknown keys {extra}; known keys: {sorted(known)}")
    values = {k: _plain(cfg.get(k)) for k in known if cfg.get(k) is not None}
    values.setdefault("prompt_format", default_format)
    return ModelSpec(**values)


def _plain(value):
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def pair_spec(cfg) -> PairSpec:
    """Validate a `pair` config node (or dict) into a PairSpec."""
    name = cfg.get("name") or "pair"
    aligned, untuned = cfg.get("aligned"), cfg.get("guidance_untuned")
    guidance = _model_spec(cfg.get("guidance"), "guidance", "chat", name)
    return PairSpec(
        name=name,
        base=_model_spec(cfg.get("base"), "base", "plain", name),
        guidance=guidance,
        aligned=_model_spec(aligned, "aligned", "chat", name) if aligned else None,
        # the twin reads exactly what the guidance reads: its prompt format unless the pair says otherwise
        guidance_untuned=_model_spec(untuned, "guidance_untuned", guidance.prompt_format, name) if untuned else None,
    )


class Pair:
    """device, dtype: where and in what precision the models run (a model's own `device` wins).
    tp, guidance: split the base and aligned models (and the guidance and its untuned twin with
    guidance="split") over this process's tensor-parallel group of `tp` processes (`blendin.parallel`)."""

    def __init__(self, spec: PairSpec, device: str = "auto", dtype: str = "auto", tp: int = 1, guidance: str = "whole"):
        self.spec, self.device, self.dtype = spec, device, dtype
        self.split = split_roles(("base", "guidance", "aligned", "guidance_untuned"), tp, guidance)
        self.tp = tp
        self._models: dict[str, LoadedModel] = {}
        self._vocab: VocabMap | None = None

    def model(self, role: str) -> LoadedModel:
        if role not in self._models:
            spec = getattr(self.spec, role)
            if spec is None:
                raise ConfigError(
                    f"a method needs pair.{role}, and pair {self.spec.name} names none. {OPTIONAL_ROLES[role]}"
                )
            tp = self.tp if role in self.split else 1
            self._models[role] = load_model(spec, spec.device or self.device, self.dtype, tp=tp)
            if role == "guidance_untuned":
                _check_twin(self._models[role], self.model("guidance"), self.spec.name)
        return self._models[role]

    @property
    def vocab(self) -> VocabMap:
        if self._vocab is None:
            self._vocab = build_vocab_map(self.model("base"), self.model("guidance"))
        return self._vocab

    def decoder(
        self,
        method,
        use_cache: bool = True,
        base_view: str = "ids",
        guidance_schedule: str = "auto",
        compile: str = "none",
        overlap: bool | None = None,
        sampling: Sampling | None = None,
        speculate: int = 0,
    ) -> Decoder:
        """The decoder for a method config (dict or OmegaConf node with `name` and its parameters).

        base_view: "ids" (ours) or "text" (the base re-reads the tokenized text each step, as the
        reference code's servers did). Word-level NUDGING always works on text.
        guidance_schedule: when the guidance model runs (`engine.resolve_schedule`); outputs are the same.
        compile: how decode steps run (none, compile, cudagraphs; `streams.decode_forward`).
        overlap: the host's work beside the next forward (`engine.TokenDecoder`; None = on CUDA).
        sampling: the `decoding` settings (`sampling.Sampling`); None = greedy.
        speculate: 0 = step by step; K = the guidance drafts up to K tokens that the base checks in one
            pass (`speculation`): the same outputs, fewer base passes. A one-model method led by the base
            drafts with the pair's guidance model.
        """
        spec = method_spec(dict(method).get("name"))
        policy = make_policy(method)
        if sampling is not None and not sampling.greedy and not spec.samples:
            raise ConfigError(f"method {spec.name} decodes greedily only ({spec.summary}); it cannot sample")
        problem = missing_role(spec.name, spec.roles, {"name": self.spec.name, **vars(self.spec)})
        if problem:
            raise ConfigError(problem)
        check_speculate(speculate)
        if speculate and (spec.decoder != "token" or spec.roles[0] != "base" or len(spec.roles) > 2):
            raise ConfigError(
                f"method {spec.name} cannot speculate: speculative decoding checks the guidance's drafts with "
                "the base, one token-level step at a time. Fix: speculate=0"
            )
        lead = self.model(spec.roles[0])
        drafter = speculate and spec.solo  # the guidance drafts for the base alone; it never steers
        guidance = self.model("guidance") if not spec.solo or drafter else None
        untuned = self.model(spec.roles[2]) if len(spec.roles) > 2 else None
        vocab = self.vocab if guidance is not None else None
        if spec.decoder == "forced":
            return ForcedDecoder(lead, policy, guidance, vocab)
        if spec.decoder == "words":
            return WordNudgingDecoder(lead, policy, guidance, vocab, use_cache)
        settings: dict = dict(
            use_cache=use_cache,
            base_view=base_view,
            guidance_schedule=guidance_schedule,
            compile=compile,
            overlap=overlap,
            sampling=sampling,
            untuned=untuned,
        )
        if speculate:
            return SpeculativeDecoder(lead, policy, guidance, vocab, speculate, **settings)
        return TokenDecoder(lead, policy, guidance, vocab, **settings)


def _check_twin(untuned: LoadedModel, guidance: LoadedModel, pair: str) -> None:
    """Proxy-tuning subtracts the twin's logits from the guidance's token by token: one vocabulary."""
    from .vocab import same_tokenizer

    if not same_tokenizer(untuned.tokenizer, guidance.tokenizer) or untuned.vocab_size != guidance.vocab_size:
        raise ConfigError(
            f"pair {pair}: pair.guidance_untuned ({untuned.spec.source}) has another tokenizer or vocabulary size "
            f"than the guidance ({guidance.spec.source}); proxy-tuning compares their logits token by token. "
            "Fix: name the checkpoint the guidance was tuned from"
        )
