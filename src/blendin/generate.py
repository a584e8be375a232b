"""Decode one prompt with one method: `python -m blendin.generate [pair=P] [method=M] [method.tau=T]
[method.alpha=A] prompt="..." max_new_tokens=N`.

Prints the continuation, then ONE final line of JSON with the step statistics (n_tokens,
intervention_rate, override_rate, tokens_per_s, ...). With no overrides it runs BlendIn on the
embedded pair (SmolLM2-135M-Instruct guiding Gemma-3-270m) on a GSM8K-style example question.
Config: conf/generate.yaml. A prompt with commas or quotes needs Hydra quoting: 'prompt="a, b"'.
A prompt of several lines (few-shot examples) cannot pass through Hydra's override grammar: put it in
a file (`prompt_file=PATH`) or pipe it in (`prompt=-` reads standard input).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from . import parallel
from .checks import check_decoding, check_engine, check_placement, check_speculate, overlap_setting
from .cli import call, refuse_unknown_keys
from .errors import ConfigError
from .methods import make_policy
from .methods import method as method_spec
from .pair import Pair, missing_role, pair_spec
from .parallel import place
from .prompts import Prompt
from .sampling import sampling_from, stream_key


def prompt_text(cfg: DictConfig) -> str:
    """The prompt: `prompt_file` if given, standard input for `prompt=-`, else `prompt` itself."""
    if cfg.get("prompt_file"):
        path = Path(cfg.prompt_file).expanduser()
        if not path.is_file():
            raise ConfigError(f"prompt_file={cfg.prompt_file}: no such file. Fix: give the path of a text file")
        return path.read_text(encoding="utf-8")
    if str(cfg.prompt) == "-":
        return sys.stdin.read()
    return str(cfg.prompt)


SETTINGS = (
    "pair",
    "method",
    "prompt",
    "prompt_file",
    "system",
    "max_new_tokens",
    "stop",
    "device",
    "dtype",
    "use_cache",
    "base_view",
    "guidance_schedule",
    "compile",
    "overlap",
    "speculate",
    "decoding",
    "parallel",
)


def check(cfg: DictConfig) -> None:
    """Refuse, before any model loads, a setting generate does not have (Hydra's `+key=value` adds any
    key) and a method it cannot run."""
    unknown = sorted(set(cfg) - set(SETTINGS) - {"hydra"})
    if unknown:
        raise ConfigError(
            f"blendin.generate has no setting {', '.join(unknown)}; its settings are "
            f"{', '.join(SETTINGS)} (conf/generate.yaml)"
        )
    method = OmegaConf.to_container(cfg.method, resolve=True)
    make_policy(method)
    check_decoding(cfg.get("decoding"), method["name"])
    if not method_spec(method["name"]).decodes:
        raise ConfigError(
            f"method={method['name']} needs each prompt's reference answer ({method_spec(method['name']).summary}); "
            f"generate has only a prompt. Fix: python -m blendin.run method={method['name']} benchmark=gsm8k"
        )
    check_engine(
        cfg.get("compile", "none"), cfg.get("guidance_schedule", "auto"), cfg.device, cfg.get("overlap", "auto")
    )
    check_speculate(cfg.get("speculate", 0), method["name"], cfg.get("base_view", "ids"))
    problem = missing_role(method["name"], method_spec(method["name"]).roles, OmegaConf.to_container(cfg.pair))
    if problem:
        raise ConfigError(problem)
    plain = OmegaConf.to_container(cfg, resolve=True)
    check_placement(plain, method["name"])
    if (plain.get("parallel") or {}).get("tp", 1) != place().world:
        raise ConfigError(
            f"blendin.generate decodes one prompt: its {place().world} processes all split the models "
            f"(parallel.tp={place().world}); parallel.tp={(plain.get('parallel') or {}).get('tp', 1)} would leave "
            "groups with nothing to do. Fix: parallel.tp equal to --nproc-per-node"
        )


def run(cfg: DictConfig) -> dict:
    """Load the pair, decode the prompt, print the text; return the statistics."""
    check(cfg)
    prompt = Prompt(prompt_text(cfg), cfg.system)  # validate before any model loads
    if isinstance(cfg.max_new_tokens, bool) or not isinstance(cfg.max_new_tokens, int) or cfg.max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens={cfg.max_new_tokens!r} must be a positive integer")
    split = cfg.get("parallel") or {}
    parallel.setup(split.get("tp", 1), split.get("timeout_s", 60), cfg.device)
    pair = Pair(
        pair_spec(cfg.pair),
        device=parallel.local_device(cfg.device),
        dtype=cfg.dtype,
        tp=split.get("tp", 1),
        guidance=split.get("guidance", "whole"),
    )
    method = OmegaConf.to_container(cfg.method, resolve=True)
    sampling = sampling_from(cfg.get("decoding"))
    started = time.perf_counter()
    decoder = pair.decoder(
        method,
        use_cache=cfg.use_cache,
        base_view=cfg.get("base_view", "ids"),
        guidance_schedule=cfg.get("guidance_schedule", "auto"),
        compile=cfg.get("compile", "none"),
        overlap=overlap_setting(cfg.get("overlap", "auto")),
        sampling=sampling,
        speculate=cfg.get("speculate", 0),
    )
    loaded = time.perf_counter()
    # decoding.samples outputs of the one prompt, each with its own random stream (sample index k)
    keys = [stream_key(sampling.seed, "prompt", k) for k in range(sampling.samples)]
    gens = decoder.generate(
        [prompt] * sampling.samples, max_new_tokens=cfg.max_new_tokens, stop_strings=list(cfg.stop or []), keys=keys
    )
    elapsed = time.perf_counter() - loaded
    for k, gen in enumerate(gens):
        if not parallel.ranks().main:  # every process decoded the same text; rank 0 prints it
            break
        if sampling.samples > 1:
            print(f"--- sample {k}")
        print(gen.text)
    gen = gens[0]
    stats = {
        "pair": pair.spec.name,
        "method": method["name"],
        "tau": method.get("tau"),
        "alpha": method.get("alpha"),
        "top_k": method.get("top_k"),
        "n_tokens": gen.n_tokens,
        "intervention_rate": round(gen.intervention_rate, 4),
        "override_rate": round(gen.override_rate, 4),
        "stop_reason": gen.stop_reason,
        "decoding": "greedy" if sampling.greedy else dataclasses.asdict(sampling),
        "tokens_per_s": round(sum(g.n_tokens for g in gens) / elapsed, 2) if elapsed > 0 else None,
        "decode_s": round(elapsed, 3),
        "load_s": round(loaded - started, 3),
        "device": str(decoder.lead.device),
    }
    if decoder.vocab is not None:
        stats["vocab"] = decoder.vocab.stats()
    return stats


@hydra.main(version_base=None, config_path="conf", config_name="generate")
def _hydra_main(cfg: DictConfig) -> None:
    stats = call(run, cfg)
    if parallel.ranks().main:
        print(json.dumps(stats), flush=True)


def main() -> None:
    # Hydra's override grammar cannot hold a line break and its own error does not say what to do
    for arg in sys.argv[1:]:
        if "\n" in arg or "\r" in arg:
            key = arg.split("=", 1)[0]
            print(
                f"error: the value of {key} holds a line break, which Hydra's command-line grammar cannot "
                "take. Fix: put a multi-line prompt in a file and pass prompt_file=PATH, or pipe it in "
                "with prompt=- (e.g. cat prompt.txt | python -m blendin.generate prompt=-)",
                file=sys.stderr,
            )
            sys.exit(2)
    refuse_unknown_keys("generate", sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()
