"""A model pair and a decoding method as one lm-evaluation-harness model, `blendin`.

    python -m blendin.lm_eval --model blendin --tasks arc_challenge \\
        --model_args pair=smollm2_gemma3,method=blendin,tau=0.4,device=cpu

is lm-eval's own command line with the model registered; `GuidedLM(...)` also goes straight into
`lm_eval.simple_evaluate(model=...)`. `generate_until` decodes through the project's engine (many
prompts at once); `loglikelihood` and `loglikelihood_rolling` score under the method's own next-token
distribution (`blendin.likelihood`). As in the project's prompts, the base reads lm-eval's context as
plain text (as is: lm-eval's `hf` model reads the same ids) and the guidance reads it inside its chat
template. See docs/lm_eval.md.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import normalize_gen_kwargs, postprocess_generated_text, resolve_max_length
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window, simple_parse_args_string
from omegaconf import OmegaConf

from . import parallel
from .checks import check_device, check_pair, check_placement
from .cli import CONF_DIR
from .errors import BlendinError, ConfigError
from .likelihood import FLOOR, Item, plain_guide_context, score
from .memory import auto_batch_size
from .methods import REGISTRY, Decoder, make_policy
from .methods import method as method_spec
from .models import LoadedModel, resolve_device
from .pair import Pair, missing_role, pair_spec
from .parallel import place
from .prompts import Prompt, encode_as_is, prefix_id
from .sampling import Sampling, sampling_from, stream_key

HARNESS_ARGS = ("pair", "method", "base", "guidance", "aligned", "device", "dtype", "batch_size", "max_batch_size",
                "seed", "max_length", "floor", "tp", "trust_remote_code")  # fmt: skip
METHOD_ARGS = sorted({key for spec in REGISTRY.values() for key in spec.params})
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's hf model's default
log = logging.getLogger(__name__)


def settings(
    pair: str | Pair | None = None,
    method: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    batch_size: int | str = 1,
    max_batch_size: int | None = None,
    seed: int | None = None,
    max_length: int | None = None,
    floor: float = FLOOR,
    base: str | None = None,
    guidance: str | None = None,
    aligned: str | None = None,
    trust_remote_code: bool | None = None,  # lm-eval may pass it; no model code is ever run
    tp: int = 1,
    **params,
) -> dict:
    """Checked settings for these model_args (`GuidedLM`'s), so that a bad value fails here, before any
    model loads: the pair and method configs composed from the project's Hydra configs (defaults:
    conf/generate.yaml's, the embedded pair and BlendIn), the method's policy (the project's own
    checks), and the harness's own settings."""
    from hydra import compose, initialize_config_dir

    unknown = sorted(set(params) - set(METHOD_ARGS))
    if unknown:
        raise ConfigError(
            f"model_args {', '.join(unknown)} unknown; blendin takes {', '.join(HARNESS_ARGS)} and the "
            f"method's parameters ({', '.join(METHOD_ARGS)})"
        )
    overrides = []
    if isinstance(pair, str):
        names = sorted(p.stem for p in (CONF_DIR / "pair").glob("*.yaml"))
        if pair not in names:
            raise ConfigError(f"pair={pair!r} is not a pair config (conf/pair/). Available: {', '.join(names)}")
        overrides.append(f"pair={pair}")
    if method is not None:
        method_spec(method)  # the project's "unknown method" message
        overrides.append(f"method={method}")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = OmegaConf.to_container(compose(config_name="generate", overrides=overrides), resolve=True)
    for role, source in (("base", base), ("guidance", guidance), ("aligned", aligned)):
        if source is not None:  # a model given inline, like pair.base.source=... elsewhere in the project
            cfg["pair"][role] = {**(cfg["pair"].get(role) or {}), "source": str(source)}
    if isinstance(pair, Pair):  # a pair already built (and checked)
        pair_cfg = {"name": pair.spec.name, **vars(pair.spec)}
    else:
        check_pair(cfg["pair"])
        pair_cfg = cfg["pair"]
    method_cfg = {**cfg["method"], **params}
    policy = make_policy(method_cfg)
    spec = method_spec(method_cfg["name"])
    if not spec.decodes:
        raise ConfigError(
            f"method {spec.name} walks given answers ({spec.summary}); it is no language model for lm-eval. "
            "Fix: method=base, guidance, nudging, blendin, ..."
        )
    problem = missing_role(spec.name, spec.roles, pair_cfg)
    if problem:
        raise ConfigError(problem)
    for key, value, low in (("max_length", max_length, 1), ("max_batch_size", max_batch_size, 1), ("seed", seed, 0)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise ConfigError(f"{key}={value!r} must be an integer >= {low}")
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or floor > 0 or math.isnan(floor):
        raise ConfigError(f"floor={floor!r} must be a log-probability: a number <= 0, or -inf")
    if not isinstance(pair, Pair):
        check_device(device, dtype)
        resolve_device(device)  # a GPU named on a machine without one fails now, not at load
        # tensor parallel (torchrun --nproc-per-node tp): every process scores every request with its share
        # of the split models, and lm-eval reports from the first; lm-eval's default cuda:0 means each one's GPU
        check_placement(
            {"pair": cfg["pair"], "parallel": {"tp": tp}, "device": _tp_device(device, tp)}, method_cfg["name"]
        )
        if tp != place().world:
            raise ConfigError(
                f"tp={tp} with {place().world} processes: every process of an lm-eval run holds one share of the "
                "split models. Fix: tp equal to torchrun's --nproc-per-node (lm-eval's own data parallel: its "
                "accelerate launch, with tp=1)"
            )
    return {
        "pair": cfg["pair"],
        "method": method_cfg,
        "policy": policy,
        "spec": spec,
        "batch_size": _batch_size(batch_size),
        "floor": float(floor),
    }


class GuidedLM(LM):
    """An lm-eval model that decodes and scores with a pair and a method.

    pair: a pair config name (conf/pair/, default smollm2_gemma3) or a `Pair`; base / guidance /
        aligned: a model source that replaces that role's (hub id, folder, .gguf, embedded:<name>).
    method: base, guidance, nudging, blendin, cap, af, cc, af_cc, probe, nudging_words (default
        blendin), with its parameters as further model_args: tau, alpha, lam, top_k, ...
    device, dtype: as elsewhere in the project (auto: cuda + bfloat16 if a GPU is visible, else cpu +
        float32). batch_size: prompts decoded together / contexts per scoring pass (an integer or auto).
    seed: the seed of sampled generations (do_sample=True) when a request gives none.
    max_length: the context length (default: the lead model's, as lm-eval's hf model reads it); longer
        contexts lose their start.
    floor: the log-probability a scored token gets where the method's distribution gives it 0 (outside
        BlendIn's top-k union or shared vocabulary, no guidance twin); default log(1e-10), -inf for none.
    """

    def __init__(
        self,
        pair: str | Pair | None = None,
        method: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        seed: int | None = None,
        max_length: int | None = None,
        floor: float = FLOOR,
        base: str | None = None,
        guidance: str | None = None,
        aligned: str | None = None,
        trust_remote_code: bool | None = None,
        tp: int = 1,
        **params,
    ):
        super().__init__()
        checked = settings(
            pair, method, device, dtype, batch_size, max_batch_size, seed, max_length, floor, base, guidance, aligned,
            tp=tp, **params,
        )  # fmt: skip
        self.method, self.policy, self.spec = checked["method"], checked["policy"], checked["spec"]
        self.batch_size, self.max_batch_size, self.floor = checked["batch_size"], max_batch_size, checked["floor"]
        if not isinstance(pair, Pair):
            parallel.setup(tp, device=_tp_device(device, tp))
            device = parallel.local_device(_tp_device(device, tp))
        self.pair = (
            pair if isinstance(pair, Pair) else Pair(pair_spec(checked["pair"]), device=device, dtype=dtype, tp=tp)
        )
        self.seed = seed
        self.reading = _AsRead(self.pair)
        self.lead = self.reading.model(self.spec.roles[0])
        self.guidance = None if self.spec.solo else self.reading.model(self.spec.roles[1])
        self.untuned = self.reading.model(self.spec.roles[2]) if len(self.spec.roles) > 2 else None
        self.vocab = None if self.spec.solo else self.reading.vocab
        self._max_length = max_length
        self._device = self.lead.device
        self._decoders: dict[Sampling, Decoder] = {}  # one decoder per sampling setting

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> GuidedLM:
        """lm-eval's command line hands every model its --device (default cuda:0) and --batch_size
        (default 1): a value given in model_args wins, and cuda on a machine without a GPU means auto,
        as lm-eval's hf model takes it."""
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        if str(extra.get("device", "")).startswith("cuda") and not torch.cuda.is_available():
            extra.pop("device")
        return cls(**arg_dict, **extra)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> GuidedLM:
        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    # ---- what lm-eval reads ------------------------------------------------------------------------

    @property
    def max_length(self) -> int:
        return self._max_length or resolve_max_length(self.lead.model.config, self.lead.tokenizer, default=2048)

    @property
    def max_gen_toks(self) -> int:
        return DEFAULT_MAX_GEN_TOKS

    @property
    def tokenizer(self):
        """The lead model's tokenizer (the base for guided methods): the lead reads lm-eval's context as is
        (`--apply_chat_template` uses it). The lead is loaded anyway; no other model loads for it."""
        return self.lead.tokenizer

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return self.tokenizer.chat_template if chat_template else None

    def apply_chat_template(self, chat_history: list[dict], add_generation_prompt: bool = True) -> str:
        """lm-eval's `--apply_chat_template`: the context in the lead's (the base's) chat template. The
        guidance reads its own chat template anyway, around that text (see docs/lm_eval.md)."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError(
                f"--apply_chat_template: the {self.spec.roles[0]} model has no chat template. Fix: "
                "leave the flag out; the guidance already reads its own chat template"
            )
        return self.tokenizer.apply_chat_template(
            chat_history, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    # ---- generation --------------------------------------------------------------------------------

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Continuations (greedy, or sampled where the request asks: `_decoding`), decoded by the project's
        engine, many prompts at once; requests with the same stop strings, budget and sampling decode together."""
        decodings = [_decoding(req.args[1], self.max_gen_toks, self.seed) for req in requests]
        if not self.spec.samples and any(not d["sampling"].greedy for d in decodings):
            raise ConfigError(
                f"method {self.spec.name} decodes greedily only ({self.spec.summary}); these requests ask "
                "it to sample (do_sample=True). Fix: --gen_kwargs do_sample=False, or a token-level method"
            )
        groups: dict[str, list[int]] = {}
        for i, setting in enumerate(decodings):
            key = {**setting, "sampling": dataclasses.asdict(setting["sampling"])}
            groups.setdefault(json.dumps(key, sort_keys=True), []).append(i)
        keys = self._stream_keys(requests)
        texts: list[str] = [""] * len(requests)
        for indices in groups.values():
            setting = decodings[indices[0]]
            sampling = setting["sampling"]
            if sampling not in self._decoders:
                self._decoders[sampling] = self.reading.decoder(self.method, sampling=sampling)
            decoder = self._decoders[sampling]
            prompts = [Prompt(requests[i].args[0]) for i in indices]
            budget = setting["max_gen_toks"]
            self.reading.limit = max(1, self.max_length - budget)  # lm-eval's hf model keeps as much context
            if self.batch_size == "auto":
                longest = max(len(self.lead.prompt_ids(p)) for p in prompts)
                size = auto_batch_size([m for m in (self.lead, self.guidance) if m], longest, budget)
            else:
                size = self.batch_size
            size = min(size, self.max_batch_size or size)
            outs = decoder.generate(
                prompts,
                max_new_tokens=budget,
                stop_strings=setting["until"],
                batch_size=size,
                keys=[stream_key(sampling.seed, *keys[i]) for i in indices],
            )
            for i, out in zip(indices, outs):
                # as lm-eval's hf model returns it: the tokens decoded without special tokens, cut at a stop
                text = self.lead.tokenizer.decode(out.token_ids, skip_special_tokens=True)
                texts[i] = postprocess_generated_text(text, setting["until"], None)
                self.cache_hook.add_partial("generate_until", requests[i].args, texts[i])
        self.reading.limit = None  # the generation budget's context limit must not cut later scoring
        return texts

    @staticmethod
    def _stream_keys(requests) -> list[tuple[str, int]]:
        """Each request's random stream: (task/document/request id, repeat number). lm-eval repeats a
        request for several samples per document (`repeats`), so the n-th copy gets sample index n; the
        draws never depend on the batch or the order the requests come in."""
        seen: dict[str, int] = {}
        keys = []
        for position, req in enumerate(requests):
            name = f"{req.task_name}/{req.doc_id}/{req.idx}" if req.doc_id is not None else f"request/{position}"
            keys.append((name, seen.get(name, 0)))
            seen[name] = seen.get(name, 0) + 1
        return keys

    # ---- log-likelihoods ---------------------------------------------------------------------------

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """log P(continuation | context) under the method's distribution, and whether the method's own
        choice is the continuation's token at every position (`blendin.likelihood`)."""
        self._check_scorable()
        items = [self._item(*req.args) for req in requests]
        results = self._score(items, self._score_batch(items))
        for req, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", req.args, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """log P(text) in windows of max_length tokens, as lm-eval's hf model cuts them. There is no
        question here, so every model reads the text as plain text after its own BOS (no chat template)."""
        self._check_scorable()
        items, owners = [], []
        for n, req in enumerate(requests):
            tokens = encode_as_is(self.lead.tokenizer, req.args[0])
            windows = get_rolling_token_windows(tokens, prefix_id(self.lead.tokenizer), self.max_length, 1)
            for context, continuation in map(make_disjoint_window, windows):
                items.append(Item(tuple(context), tuple(continuation), self._plain_guide_context(context)))
                owners.append(n)
        totals = [0.0] * len(requests)
        for n, (logp, _) in zip(owners, self._score(items, 1)):
            totals[n] += logp
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def _score(self, items: list[Item], batch_size: int) -> list[tuple[float, bool]]:
        stats: dict[str, int] = {}
        results = score(
            items,
            self.policy,
            self.lead,
            self.guidance,
            self.vocab,
            batch_size,
            self.floor,
            stats,
            untuned=self.untuned,
        )
        if stats.get("floored"):
            log.warning(
                "method %s gives %d of %d scored tokens probability 0 (outside its candidates or without a "
                "guidance twin); they count as log p = %.2f (model_arg floor)",
                self.spec.name,
                stats["floored"],
                stats["tokens"],
                self.floor,
            )
        return results

    def _check_scorable(self) -> None:
        if not scores(self.spec):
            raise ConfigError(unscorable(self.spec))

    def _item(self, context: str, continuation: str) -> Item:
        """The lead's context and continuation ids, as lm-eval's hf model splits them for a model that
        reads the context as is (trailing spaces of the context go to the continuation; an empty
        context becomes the BOS), and what the guidance reads before the continuation."""
        lead = self.lead
        if context == "":
            cont = lead.tokenizer(continuation, add_special_tokens=False)["input_ids"]
            prefix = prefix_id(lead.tokenizer)
            ctx, cont = ([prefix], cont) if not cont or cont[0] != prefix else (cont[:1], cont[1:])
        else:
            spaces = len(context) - len(context.rstrip())
            if spaces:
                context, continuation = context[:-spaces], context[-spaces:] + continuation
            if _reads_as_is(lead):
                whole = encode_as_is(lead.tokenizer, context + continuation)
                ctx = encode_as_is(lead.tokenizer, context)
                cont = whole[len(ctx) :]
            else:  # a chat model alone (method=guidance): its chat template, then its own tokens
                ctx = _context_ids(lead, context)
                cont = lead.tokenizer(continuation, add_special_tokens=False)["input_ids"]
        ctx = ctx[-max(1, self.max_length + 1 - len(cont)) :]  # too long: the context loses its start
        guide = None if self.guidance is None else tuple(_context_ids(self.guidance, context))
        return Item(tuple(ctx), tuple(cont), guide)

    def _plain_guide_context(self, context: list[int]) -> tuple[int, ...] | None:
        """What the guidance reads before a rolling window: the base's window context as plain text."""
        if self.guidance is None or self.vocab is None:
            return None
        return plain_guide_context(self.lead.tokenizer, self.guidance.tokenizer, self.vocab.identical, context)

    def _score_batch(self, items: list[Item]) -> int:
        if self.batch_size != "auto":
            return self.batch_size
        longest = max((len(it.context) + len(it.continuation) for it in items), default=1)
        size = auto_batch_size([m for m in (self.lead, self.guidance) if m], longest, 0)
        return min(size, self.max_batch_size or size)


class _AsRead(Pair):
    """The pair as lm-eval drives it: the same loaded models, but a plain-format model (the base)
    reads lm-eval's context as is, where the project's plain prompts add a newline. `limit`: keep the
    last tokens of a longer context."""

    def __init__(self, pair: Pair):  # the wrapped pair owns and loads the models
        self.inner, self.spec, self.device, self.dtype = pair, pair.spec, pair.device, pair.dtype
        self.limit: int | None = None
        self._wrapped: dict[str, LoadedModel] = {}

    def model(self, role: str) -> LoadedModel:
        loaded = self.inner.model(role)
        if not _reads_as_is(loaded):
            return loaded
        if role not in self._wrapped:
            self._wrapped[role] = _Context(loaded.spec, loaded.model, loaded.tokenizer, loaded.eos_ids, self)
        return self._wrapped[role]

    @property
    def vocab(self):
        return self.inner.vocab


class _Context(LoadedModel):
    """A plain-format model reading lm-eval's context as is, tokenized as lm-eval's hf model does."""

    def __init__(self, spec, model, tokenizer, eos_ids, reading: _AsRead):
        super().__init__(spec, model, tokenizer, eos_ids)
        self.reading = reading

    def prompt_text(self, prompt) -> str:
        return prompt.user

    def prompt_ids(self, prompt) -> list[int]:
        ids = encode_as_is(self.tokenizer, prompt.user)
        return ids[-self.reading.limit :] if self.reading.limit else ids


def _reads_as_is(loaded: LoadedModel) -> bool:
    return loaded.spec.prompt_format == "plain"


def _context_ids(loaded: LoadedModel, context: str) -> list[int]:
    """What a model reads before a continuation: its chat template around the context (the guidance),
    or the context as is (a plain-format model); its BOS alone for an empty context."""
    if not context.strip():
        return [prefix_id(loaded.tokenizer)]
    return loaded.prompt_ids(Prompt(context))


def _decoding(gen_kwargs: dict, default_max: int, seed: int | None = None) -> dict:
    """The decoding settings of one generate_until request: its stop strings, token budget and sampling.

    The one place lm-eval's generation kwargs enter the engine. do_sample=False (lm-eval's default)
    decodes greedily and drops temperature, top_p, top_k, as transformers does. do_sample=True samples
    from the method's own distribution (`blendin.sampling`) with temperature (1.0 when not given),
    top_p, top_k and seed (the request's, else the model's seed, else 0).
    """
    kwargs = dict(normalize_gen_kwargs(dict(gen_kwargs or {}), default_max))
    until, budget = kwargs.pop("until"), kwargs.pop("max_gen_toks")
    drawn = {key: kwargs.pop(key) for key in ("temperature", "top_p", "top_k", "seed") if key in kwargs}
    sampling = Sampling()
    if kwargs.pop("do_sample", False) and drawn.get("temperature", 1.0) != 0:
        top_k = drawn.get("top_k")
        sampling = sampling_from(
            {
                "temperature": float(drawn.get("temperature", 1.0)),
                "top_p": float(1.0 if drawn.get("top_p") is None else drawn["top_p"]),
                "top_k": 0 if top_k in (None, -1) else top_k,
                "seed": drawn.get("seed", 0 if seed is None else seed),
            }
        )
    if kwargs:
        raise ConfigError(
            f"generation kwargs {sorted(kwargs)} are not supported; blendin takes until, max_gen_toks "
            "(or max_new_tokens), do_sample, temperature, top_p, top_k and seed"
        )
    if not isinstance(budget, int) or budget < 1:
        raise ConfigError(f"max_gen_toks={budget!r} must be a positive integer")
    return {"until": [s for s in until if isinstance(s, str) and s], "max_gen_toks": budget, "sampling": sampling}


def _tp_device(device: str, tp: int) -> str:
    """Under tensor parallel each process takes the GPU of its local rank: lm-eval's cuda:N means cuda."""
    return "cuda" if tp > 1 and str(device).startswith("cuda") else device


def _batch_size(value) -> int | str:
    if isinstance(value, str) and value.startswith("auto"):
        return "auto"
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"batch_size={value!r} must be a positive integer or auto")
    return value


SCORED_OUTPUTS = ("loglikelihood", "loglikelihood_rolling", "multiple_choice")  # lm-eval's output types scored
# by log-likelihood; generate_until is the other


def scores(spec) -> bool:
    """Whether a method has a next-token distribution to score log-likelihoods with."""
    return spec.decoder == "token" and not spec.stateful


def unscorable(spec, tasks: str = "") -> str:
    return (
        f"method {spec.name} has no next-token distribution to score with: its choices depend on what it "
        f"generated before (a budget or word rounds){tasks}. Fix: use it on generative tasks "
        "(output_type generate_until, e.g. gsm8k), or score with method=nudging"
    )


def usage() -> str:
    """What `python -m blendin.lm_eval --help` says before lm-eval's own options."""
    methods = ", ".join(name for name, spec in REGISTRY.items() if spec.decodes)
    return f"""usage: python -m blendin.lm_eval --model blendin --model_args KEY=VALUE,... --tasks TASKS [options]

lm-evaluation-harness (lm-eval) with the model `blendin` registered: a pair of models and a decoding
method evaluated on any lm-eval task, scored by lm-eval's own metrics (docs/lm_eval.md).

    python -m blendin.lm_eval --model blendin --tasks arc_challenge \\
        --model_args pair=smollm2_gemma3,method=blendin,tau=0.4 --batch_size 8

--model_args of the model blendin (comma-separated KEY=VALUE):
  pair                     a pair of conf/pair/ (default smollm2_gemma3)
  base, guidance, aligned  replace that model of the pair: a hub id, a folder, a .gguf file, embedded:<name>
  method                   {methods} (default blendin)
  {", ".join(METHOD_ARGS)}
                           the method's parameters (docs/methods.md); the method's config gives the rest
  device, dtype            auto (cuda + bfloat16 if a GPU is visible, else cpu + float32), or as elsewhere
  batch_size, max_batch_size, max_length, floor, seed   (docs/lm_eval.md)

Every option of `lm-eval run` below works here too; `--model hf` and lm-eval's other models as well.
"""


def main() -> None:
    """`python -m blendin.lm_eval ...`: lm-eval's command line, with the model `blendin` registered. The
    blendin model_args are checked first (before lm-eval reads its tasks or loads a model); a
    configuration error is one line, `error: ...`, exit status 2."""
    from lm_eval.__main__ import cli_evaluate

    argv = sys.argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        sys.argv = [sys.argv[0], "run", "--help"]  # lm-eval's own options: those of its run command
    try:
        args = _blendin_args(argv)
        if args is not None:
            checked = settings(**args["model_args"])
            if not scores(checked["spec"]):
                _refuse_scored_tasks(checked["spec"], args["tasks"], args["include_path"])
        cli_evaluate()
    except BlendinError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except ConnectionError as err:  # the datasets library, offline or without network: not a crash of ours
        print(
            f"error: a task's data could not be fetched ({err}). lm-eval reads each task's data from the "
            "Hugging Face hub the first time. Fix: run once where the hub can be reached (the data is then "
            "cached under $HF_HOME/datasets, by default ~/.cache/huggingface/datasets, and "
            "HF_DATASETS_OFFLINE=1 reads it from there), or give the task a local copy of its data "
            "(docs/lm_eval.md, 'Tasks without network')",
            file=sys.stderr,
        )
        sys.exit(2)


def _blendin_args(argv: list[str]) -> dict | None:
    """--model_args, --tasks and --include_path of a command line that runs --model blendin, parsed as
    lm-eval parses them; None for another model."""
    import argparse

    try:
        from lm_eval._cli.utils import MergeDictAction
    except ImportError:  # another lm-eval layout: the model checks its settings when lm-eval builds it
        return None
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--model", "-M")
    parser.add_argument("--model_args", "-a", nargs="+", action=MergeDictAction)
    parser.add_argument("--tasks", "-t", nargs="+")
    parser.add_argument("--include_path")
    known, _ = parser.parse_known_args(argv)
    if known.model != "blendin":
        return None
    tasks = [t for item in known.tasks or [] for t in item.split(",") if t]
    return {"model_args": dict(known.model_args or {}), "tasks": tasks, "include_path": known.include_path}


def _refuse_scored_tasks(spec, tasks: list[str], include_path: str | None) -> None:
    """A method without a next-token distribution, asked for tasks scored by log-likelihood: refuse now,
    from the tasks' configs, before any model loads or any data is fetched."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    scored = sorted({name for task in tasks for name, kind in _output_types(manager, task) if kind in SCORED_OUTPUTS})
    if scored:
        raise ConfigError(unscorable(spec, f"; tasks {', '.join(scored)} are scored by log-likelihood"))


def _output_types(manager, name: str, seen: frozenset = frozenset()) -> list[tuple[str, str]]:
    """(task, output type) of a task, or of every task of a group or tag, read from lm-eval's task index
    (configs only: no data). Names lm-eval does not know give nothing here (lm-eval reports them)."""
    entry = manager.task_index.get(name)
    if entry is None or name in seen:
        return []
    kind = getattr(entry.kind, "name", str(entry.kind))
    cfg = entry.cfg or {}
    if kind == "TASK":
        return [(name, cfg["output_type"])] if cfg.get("output_type") else []
    if kind == "GROUP":
        members = [m if isinstance(m, str) else m.get("task", "") for m in cfg.get("task", [])]
    else:  # a tag: every task that carries it
        members = [n for n, e in manager.task_index.items() if name in (getattr(e, "tags", None) or ())]
    return [found for member in members for found in _output_types(manager, member, seen | {name})]


if __name__ == "__main__":
    # run as a script this file is __main__: the importable module registers the model, once
    from blendin.lm_eval import main as _main

    _main()
else:
    register_model("blendin")(GuidedLM)
