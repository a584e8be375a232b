"""Decode one prompt with one method: `python -m blendin.generate [pair=P] [method=M] [method.tau=T]
[method.alpha=A] prompt="..." max_new_tokens=N`.

Prints the continuation, then ONE final line of JSON with the step statistics (n_tokens,
intervention_rate, override_rate, tokens_per_s, ...). With no overrides it runs BlendIn on the
embedded pair (SmolLM2-135M-Instruct guiding Gemma-3-270m) on a GSM8K-style example question.
Config: conf/generate.yaml. A prompt with commas or quotes needs Hydra quoting: 'prompt="a, b"'.
"""
from __future__ import annotations

import json
import time

import hydra
from omegaconf import DictConfig, OmegaConf

from .cli import call
from .errors import ConfigError
from .pair import Pair, pair_spec
from .prompts import Prompt


def run(cfg: DictConfig) -> dict:
    """Load the pair, decode the prompt, print the text; return the statistics."""
    prompt = Prompt(str(cfg.prompt), cfg.system)  # validate before any model loads
    if isinstance(cfg.max_new_tokens, bool) or not isinstance(cfg.max_new_tokens, int) or cfg.max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens={cfg.max_new_tokens!r} must be a positive integer")
    pair = Pair(pair_spec(cfg.pair), device=cfg.device, dtype=cfg.dtype)
    method = OmegaConf.to_container(cfg.method, resolve=True)
    started = time.perf_counter()
    decoder = pair.decoder(method, use_cache=cfg.use_cache)
    loaded = time.perf_counter()
    [gen] = decoder.generate([prompt], max_new_tokens=cfg.max_new_tokens, stop_strings=list(cfg.stop or []))
    elapsed = time.perf_counter() - loaded
    print(gen.text)
    stats = {
        "pair": pair.spec.name, "method": method["name"], "tau": method.get("tau"),
        "alpha": method.get("alpha"), "top_k": method.get("top_k"),
        "n_tokens": gen.n_tokens, "intervention_rate": round(gen.intervention_rate, 4),
        "override_rate": round(gen.override_rate, 4), "stop_reason": gen.stop_reason,
        "tokens_per_s": round(gen.n_tokens / elapsed, 2) if elapsed > 0 else None,
        "decode_s": round(elapsed, 3), "load_s": round(loaded - started, 3),
        "device": str(decoder.lead.device),
    }
    if decoder.vocab is not None:
        stats["vocab"] = decoder.vocab.stats()
    return stats


@hydra.main(version_base=None, config_path="../../conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    print(json.dumps(call(run, cfg)), flush=True)


if __name__ == "__main__":
    main()
