"""Decoding speed: every method against transformers' own `generate`, on the same prompts, same run.

    python -m blendin.bench                                  # the embedded pair, CPU-sized grid
    python -m blendin.bench --batch-sizes 1 32 --lengths 64 512 --synthetic llama8b+llama1b  # a GPU
    python -m blendin.bench --ragged gsm8k --n 32            # real items: EOS and stop strings active

Fixed-length mode: every row decodes exactly `length` new tokens (EOS ends nothing), so every method
does the same work. Rows: `hf_generate` (transformers' greedy `generate` of the base alone: the
reference), then our `base`, `guidance`, `nudging`, `blendin` (top-100), `blendin_full` (the whole
shared vocabulary), `cap`, `af_cc`. For each: tokens/s, time ratio to the reference and to our
`base`, peak memory, and guidance forward passes per generated token.

Ragged mode (`--ragged BENCHMARK`): decodes a real subset with EOS and stop strings active (rows
finish at different steps), then the same prompts at a fixed length equal to the ragged run's mean
output length, and reports seconds per token of the two: finished rows leave the batch and new
prompts take their place, so the ratio should stay near 1.

`--synthetic` builds randomly initialised models of real sizes from their published configs
(speed does not depend on weight values), with locally built tokenizers of the real vocabulary
sizes: `llama8b+llama1b` (one tokenizer), `qwen8b+llama1b` (two tokenizers), or `tiny` and
`tiny-shared` (CPU-sized). Their outputs read like text, with the base unsure on `--unsure` of the
steps and the guidance agreeing with it there at `--agree` (`blendin.scripted`); `--flat` keeps the
random models' flat outputs instead (every row unsure on every step: the worst case). The table's
header then says what the text was like (share of unsure steps, agreement, replacement characters).
Results go to results/bench/<name>-<time>.json and .md.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .cli import CONF_DIR, call
from .errors import ConfigError
from .methods import REGISTRY
from .prompts import Prompt
from .sampling import Sampling
from .synthetic import PRESETS

if TYPE_CHECKING:
    from .engine import Generation

SYSTEM = "Answer the question by walking through the reasoning steps."
QUESTIONS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?",
    "Betty is saving money for a new wallet which costs $100. She has only half of the money she needs. "
    "How much more money does Betty need?",
    "James writes a 3-page letter to 2 different friends twice a week. How many pages does he write a year?",
    "What is the capital of Australia, and why is it not Sydney?",
    "Which is heavier, a kilogram of feathers or a kilogram of iron?",
    "A train travels 60 miles in 1.5 hours. What is its average speed in miles per hour?",
    "If a rectangle is 7 cm long and 4 cm wide, what are its area and perimeter?",
]
# Each registered method that decodes, at its registry defaults; plus BlendIn over the full vocabulary.
METHODS = {name: {"name": name, **m.params} for name, m in REGISTRY.items() if m.decodes and "aligned" not in m.roles}
METHODS["blendin_full"] = {**METHODS["blendin"], "top_k": None}
# probe and af/cc cost what nudging costs; word-level NUDGING ends at the guidance's EOS, not at a fixed length
DEFAULT_METHODS = ["base", "guidance", "nudging", "blendin", "blendin_full", "cap", "af_cc"]


def prompts(n: int) -> list[Prompt]:
    return [Prompt(f"Question: {q}", SYSTEM) for q in (QUESTIONS * (n // len(QUESTIONS) + 1))[:n]]


class Peak:
    """Peak memory of a block: GPU allocations, or the process's peak resident memory on Linux."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            try:  # writing 5 to clear_refs resets VmHWM, the peak resident set size
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.start
        self.mb = torch.cuda.max_memory_allocated() / 2**20 if self.cuda else _vm_hwm_mb()
        self.reserved_mb = torch.cuda.max_memory_reserved() / 2**20 if self.cuda else None


def _vm_hwm_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def never_stop(decoder) -> None:
    """Equal work for every method: EOS does not end a row, only the length does."""
    decoder.lead = dataclasses.replace(decoder.lead, eos_ids=frozenset())


def hf_generate(model, items: list[Prompt], batch_size: int, length: int, static: bool = False) -> int:
    """transformers' greedy generate of the base alone, left-padded batches sorted by length.
    static=True: with its static cache, which transformers compiles on a GPU (`hf_static` row)."""
    ids = sorted((model.prompt_ids(p) for p in items), key=len)
    total = 0
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        width = max(len(c) for c in chunk)
        pad = model.pad_id
        input_ids = torch.tensor([[pad] * (width - len(c)) + c for c in chunk], device=model.device)
        mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in chunk], device=model.device)
        with torch.inference_mode():
            out = model.model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=length,
                min_new_tokens=length,
                do_sample=False,
                pad_token_id=pad,
                **({"cache_implementation": "static"} if static else {}),
            )
        total += (out.shape[1] - width) * len(chunk)
    return total


def measure(label, run, device) -> dict:
    run(warmup=True)
    with Peak(device) as peak:
        tokens, extra = run(warmup=False)
    return {
        "row": label,
        "tokens": tokens,
        "seconds": round(peak.seconds, 3),
        "tokens_per_s": round(tokens / peak.seconds, 2),
        "peak_mb": round(peak.mb, 1) if peak.mb else None,
        **({"reserved_mb": round(peak.reserved_mb, 1)} if peak.reserved_mb else {}),
        **extra,
    }


def fixed_length_rows(
    pair, methods, batch_sizes, lengths, n, variants=({},), hf_static=False, n_batch1: int | None = None, on_row=None
) -> list[dict]:
    """Every method at every (length, batch size), once per engine variant (a dict of `Pair.decoder`
    settings: compile, guidance_schedule, overlap), beside transformers' generate. Each row decodes n
    prompts (n_batch1 at batch size 1, where a GPU is slowest per token)."""
    device = pair.model("base").device
    base = pair.model("base")
    rows = []
    for length in lengths:
        for batch_size in batch_sizes:
            items = prompts(n_batch1 if batch_size == 1 and n_batch1 else n)
            references = [("hf_generate", False)] + ([("hf_static", True)] if hf_static else [])
            for label, static in references:

                def reference(warmup, static=static):
                    k = 1 if warmup else length
                    return hf_generate(base, items[:batch_size] if warmup else items, batch_size, k, static), {}

                try:
                    rows.append(
                        {
                            "method": label,
                            "batch_size": batch_size,
                            "length": length,
                            **measure(label, reference, device),
                        }
                    )
                except Exception as err:  # noqa: BLE001 - a reference that cannot run here is reported, not fatal
                    print(f"{label}: not measured ({type(err).__name__}: {err})", flush=True)
                    continue
                print(_line(rows[-1]), flush=True)
            for variant in variants:
                for name in methods:
                    try:
                        decoder = pair.decoder(METHODS[name], **variant)
                    except ConfigError as err:
                        print(f"{name} [{variant_label(variant)}]: not measured ({err})", flush=True)
                        continue
                    never_stop(decoder)
                    decoder.clock.enabled = True  # time each forward pass

                    def ours(warmup, decoder=decoder):
                        before, clock = dict(decoder.stats), decoder.clock.totals()
                        outs = decoder.generate(
                            items[:batch_size] if warmup else items,
                            max_new_tokens=2 if warmup else length,
                            batch_size=batch_size,
                        )
                        tokens = sum(o.n_tokens for o in outs)
                        return tokens, {
                            **where_time_goes(decoder, before, clock, tokens, batch_size),
                            "intervention_rate": round(sum(o.intervention_rate for o in outs) / len(outs), 4),
                        }

                    try:
                        measured = measure(name, ours, device)
                    except Exception as err:  # noqa: BLE001 - one variant that cannot run here must not lose the rest
                        print(
                            f"{name} [{variant_label(variant)}]: not measured ({type(err).__name__}: {err})", flush=True
                        )
                        continue
                    rows.append(
                        {
                            "method": name,
                            "variant": variant_label(variant),
                            "batch_size": batch_size,
                            "length": length,
                            **measured,
                        }
                    )
                    if device.type == "cuda" and not variant.get("speculate"):  # a round reads more than a step
                        rows[-1]["bandwidth_fraction"] = bandwidth_fraction(pair, rows[-1], items, length)
                    print(_line(rows[-1]), flush=True)
                    if on_row:
                        on_row(rows)
    return _ratios(rows)


def variant_label(variant: dict) -> str:
    shown = {k: (f"T={v.temperature:g}" if k == "sampling" else v) for k, v in variant.items()}
    return ", ".join(f"{k}={v}" for k, v in shown.items()) or "default"


# Peak memory bandwidth (bytes/s) by device name, for the fraction of the bandwidth limit a step reaches.
PEAK_BANDWIDTH = {
    "H200": 4.8e12,
    "H100 NVL": 3.9e12,
    "H100 PCIe": 2.0e12,
    "H100": 3.35e12,
    "A100-SXM4-80GB": 2.04e12,
    "A100 80GB PCIe": 1.94e12,
    "A100": 1.56e12,
    "L40S": 0.864e12,
    "A10G": 0.6e12,
}


def peak_bandwidth(device) -> float | None:
    name = torch.cuda.get_device_name(device)
    return next((bw for key, bw in PEAK_BANDWIDTH.items() if key in name), None)


def bytes_read_per_step(loaded, batch_size: int, mean_columns: float) -> float:
    """What one decode step must read from memory at least: the weights (an untied input embedding is
    only looked up, so it is left out) and every row's keys and values."""
    from .memory import kv_bytes_per_token

    model = loaded.model
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    embedding, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    if embedding.data_ptr() != head.data_ptr():
        weights -= embedding.numel() * embedding.element_size()
    return weights + kv_bytes_per_token(model) * batch_size * mean_columns


def bandwidth_fraction(pair, row: dict, items, length: int) -> float | None:
    """(bytes a step must read) / (step time x peak bandwidth): 1.0 is the memory-bound limit."""
    device = pair.model("base").device
    peak = peak_bandwidth(device)
    if peak is None or not row.get("ms_per_step"):
        return None
    batch = row["batch_size"]
    total = 0.0
    roles = REGISTRY[METHODS[row["method"]]["name"]].roles if row["method"] in METHODS else ("base",)
    for role, share in zip(roles, (1.0, row.get("steps_with_guidance", 0.0))):
        if share <= 0:
            continue
        loaded = pair.model(role)
        prompt = sum(len(loaded.prompt_ids(p)) for p in items) / len(items)
        total += share * bytes_read_per_step(loaded, batch, prompt + length / 2)
    return round(total / (row["ms_per_step"] / 1000 * peak), 3)


def where_time_goes(decoder, before: dict, clock_before: dict, tokens: int, batch_size: int) -> dict:
    """Per decoding step: each model's forward time, the rest (host work and the step's own tensor
    work), copies to the host, and the widest attention mask over the longest row read."""
    stats, clock = decoder.stats, decoder.clock.totals()
    steps = max(1, stats["steps"] - before["steps"])
    spent = {k: clock.get(k, 0.0) - clock_before.get(k, 0.0) for k in set(clock) | set(clock_before)}
    passes = stats["guidance_passes"] - before["guidance_passes"]
    per_step = {k: round(1000 * spent.get(k, 0.0) / steps, 3) for k in ("lead_forward", "guidance_forward", "step")}
    forwards = per_step["lead_forward"] + per_step["guidance_forward"]
    proposed = stats.get("drafts_proposed", 0) - before.get("drafts_proposed", 0)
    speculative = {}
    if proposed:  # speculative rounds: how many drafts the rule kept, and where the guidance's view cut a block
        speculative = {
            "draft_acceptance": round((stats["drafts_accepted"] - before.get("drafts_accepted", 0)) / proposed, 3),
            "blocks_cut": stats.get("blocks_cut", 0) - before.get("blocks_cut", 0),
        }
    return {
        "base_passes_per_token": round((stats["lead_passes"] - before["lead_passes"]) / max(1, tokens), 4),
        **speculative,
        "guidance_passes_per_token": round(passes / max(1, tokens), 4),
        "steps_with_guidance": round((stats["guidance_steps"] - before.get("guidance_steps", 0)) / steps, 3),
        "ms_per_step": per_step["step"],
        "base_forward_ms": per_step["lead_forward"],
        "guidance_forward_ms": per_step["guidance_forward"],
        "other_ms": round(max(0.0, per_step["step"] - forwards), 3),
        "syncs_per_step": round((stats["syncs"] - before["syncs"]) / steps, 2),
        "widest_mask_over_longest_row": round(stats["widest_mask"] / max(1, stats["longest_row"]), 3),
    }


def identity_rows(pair, methods, batch_sizes, length, n) -> list[dict]:
    """Do outputs depend on the batch size? Same prompts, smallest vs largest batch (float32 should
    give the same tokens; bf16 may not, since batch shapes change the reduction order)."""
    items = prompts(n)
    rows = []
    for name in methods:
        decoder = pair.decoder(METHODS[name])
        small, large = min(batch_sizes), max(batch_sizes)
        a = decoder.generate(items, max_new_tokens=length, batch_size=small)
        b = decoder.generate(items, max_new_tokens=length, batch_size=large)
        same = [x.token_ids == y.token_ids for x, y in zip(a, b)]
        shared = [_common(x.token_ids, y.token_ids) / max(1, len(x.token_ids)) for x, y in zip(a, b)]
        rows.append(
            {
                "method": name,
                "mode": "identity",
                "batch_sizes": [small, large],
                "length": length,
                "identical_outputs": round(sum(same) / len(same), 3),
                "mean_shared_prefix": round(sum(shared) / len(shared), 3),
            }
        )
        print(f"{name:>12} batch {small} vs {large}: {sum(same)}/{len(same)} outputs identical", flush=True)
    return rows


def _common(a, b) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _ratios(rows) -> list[dict]:
    """Time per token relative to the reference and to our base, same batch size and length."""

    def per_token(r):
        return r["seconds"] / r["tokens"]

    for r in rows:
        same = [x for x in rows if x["batch_size"] == r["batch_size"] and x.get("length") == r.get("length")]
        ref = next((x for x in same if x["method"] == "hf_generate"), None)
        base = next(
            (x for x in same if x["method"] == "base" and x.get("variant") == r.get("variant", "default")), None
        ) or next((x for x in same if x["method"] == "base"), None)
        r["time_vs_hf_generate"] = round(per_token(r) / per_token(ref), 3) if ref else None
        r["time_vs_base"] = round(per_token(r) / per_token(base), 3) if base else None
        if "speculate=" in (r.get("variant") or ""):  # against step-by-step decoding: the base, the same method
            # the step-by-step variant: the same settings but speculate (e.g. "compile=none" for
            # "compile=none, speculate=4")
            step = ", ".join(p for p in r["variant"].split(", ") if not p.startswith("speculate=")) or "default"
            plain = {x["method"]: x for x in same if x.get("variant", "default") == step}
            for key, other in (
                ("time_vs_step_base", plain.get("base")),
                ("time_vs_step_method", plain.get(r["method"])),
            ):
                r[key] = round(per_token(r) / per_token(other), 3) if other else None
    by_method: dict[tuple, list[dict]] = {}  # (method, variant, batch size) -> its rows
    for r in rows:
        by_method.setdefault((r["method"], r.get("variant"), r["batch_size"]), []).append(r)
    for group in by_method.values():  # per-token cost at the longest length vs the shortest
        group.sort(key=lambda r: r.get("length") or 0)
        for r in group:
            r["per_token_vs_shortest"] = round(per_token(r) / per_token(group[0]), 3)
    return rows


def ragged_rows(pair, cfg, benchmark_name, methods, batch_size, n, max_new_tokens=None) -> list[dict]:
    from .run import load_benchmark

    cfg_benchmark = cfg.benchmark
    cfg_benchmark.n = n
    if max_new_tokens:
        cfg_benchmark.max_new_tokens = max_new_tokens
    samples = load_benchmark(cfg_benchmark).samples(n)
    items = [s.prompt for s in samples]
    stop = list(cfg_benchmark.get("stop") or [])
    device = pair.model("base").device
    rows = []
    for name in methods:
        decoder = pair.decoder(METHODS[name])
        outs: list[Generation] = []

        def ragged(warmup):
            got = decoder.generate(
                items[:batch_size] if warmup else items,
                stop_strings=stop,
                batch_size=batch_size,
                max_new_tokens=2 if warmup else cfg_benchmark.max_new_tokens,
            )
            if not warmup:
                outs[:] = got
            return sum(o.n_tokens for o in got), {}

        real = measure(name, ragged, device)
        mean_len = max(1, round(real["tokens"] / len(items)))
        fixed_decoder = pair.decoder(METHODS[name])
        never_stop(fixed_decoder)

        def fixed(warmup):
            got = fixed_decoder.generate(
                items[:batch_size] if warmup else items, batch_size=batch_size, max_new_tokens=2 if warmup else mean_len
            )
            return sum(o.n_tokens for o in got), {}

        same = measure(name, fixed, device)
        lengths = sorted(o.n_tokens for o in outs)
        rows.append(
            {
                "method": name,
                "batch_size": batch_size,
                "mode": "ragged",
                "benchmark": benchmark_name,
                "n": len(items),
                "tokens": real["tokens"],
                "seconds": real["seconds"],
                "tokens_per_s": real["tokens_per_s"],
                "min_len": lengths[0],
                "max_len": lengths[-1],
                "fixed_length": mean_len,
                "fixed_tokens_per_s": same["tokens_per_s"],
                "ragged_vs_fixed_time_per_token": round(same["tokens_per_s"] / real["tokens_per_s"], 3),
            }
        )
        print(
            f"{name:>12} ragged {real['tokens_per_s']:8.1f} tok/s (lengths {lengths[0]}-{lengths[-1]}), fixed "
            f"{same['tokens_per_s']:8.1f} tok/s: ratio {rows[-1]['ragged_vs_fixed_time_per_token']}",
            flush=True,
        )
    return rows


def _line(r) -> str:
    return (
        f"{r['method']:>12} batch {r['batch_size']:>3} length {r['length']:>4}: {r['tokens_per_s']:9.1f} tok/s, "
        f"peak {r['peak_mb']} MB"
        + (f", guidance passes/token {r['guidance_passes_per_token']}" if "guidance_passes_per_token" in r else "")
    )


def markdown(rows, meta) -> str:
    lines = [
        f"# Decoding speed: {meta['pair']} on {meta['device_name']}",
        "",
        f"{meta['created_at']}; torch {meta['torch']}, transformers {meta['transformers']}, "
        f"dtype {meta['dtype']}, "
        f"{meta['threads']} CPU threads. Fixed-length rows decode exactly `length` tokens per prompt "
        f"({meta['n_prompts']} prompts"
        + (f", {meta['n_batch1']} at batch 1" if meta.get("n_batch1") else "")
        + "); ratios are time per token.",
        "",
    ]
    text = meta.get("synthetic_text")
    if text:
        lines += [
            f"Synthetic text (greedy, 8 prompts x 64 tokens): the base unsure on {text['unsure_share']} of the "
            f"steps, the guidance's top token the base's on {text['guidance_agrees_where_unsure']} of those, "
            f"{text['replacement_char_share']} of the characters U+FFFD; e.g. \"{text['example'][:100]}\"",
            "",
        ]
    fixed = [r for r in rows if r.get("mode") is None]
    variants = len({r.get("variant") for r in fixed if r.get("variant")}) > 1

    def label(r):
        return f"{r['method']} [{r['variant']}]" if variants and r.get("variant") else r["method"]

    if fixed:
        lines += [
            "| method | batch | length | tokens/s | time vs hf_generate | time vs our base | per token vs "
            "shortest length | peak MB | base passes / token | guidance passes / token | steps with a "
            "guidance pass | drafts kept | intervention rate |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in fixed:
            lines.append(
                f"| {label(r)} | {r['batch_size']} | {r['length']} | {r['tokens_per_s']} | "
                f"{r['time_vs_hf_generate']} | {r['time_vs_base']} | {r['per_token_vs_shortest']} | "
                f"{r['peak_mb']} | {r.get('base_passes_per_token', '-')} | {r.get('guidance_passes_per_token', '-')} | "
                f"{r.get('steps_with_guidance', '-')} | {r.get('draft_acceptance', '-')} | "
                f"{r.get('intervention_rate', '-')} |"
            )
    speculative = [r for r in fixed if "time_vs_step_base" in r]
    if speculative:
        lines += [
            "",
            "Speculative rounds against step-by-step decoding in this run (time per token; base passes per "
            "output token; the share of drafts the rule kept; blocks cut where the guidance would read the "
            "text otherwise than it drafted it):",
            "",
            "| method | batch | length | time vs base step by step | time vs the method step by step | "
            "base passes / token | drafts kept | blocks cut |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in speculative:
            lines.append(
                f"| {label(r)} | {r['batch_size']} | {r['length']} | {r['time_vs_step_base']} | "
                f"{r['time_vs_step_method']} | {r.get('base_passes_per_token', '-')} | "
                f"{r.get('draft_acceptance', '-')} | {r.get('blocks_cut', '-')} |"
            )
    timed = [r for r in fixed if "ms_per_step" in r]
    if timed:
        cuda = any("bandwidth_fraction" in r for r in timed)
        lines += [
            "",
            "Where a step's time goes (ms per decoding step; forwards as the device ran them; `other` = "
            "the step's wall time minus both forwards: the host's work and the step's own tensor work, "
            "0 where it ran beside the forwards; syncs = copies to the host per step"
            + (
                "; bandwidth = bytes a step must read (weights, keys and values) over step time x the "
                "device's peak bandwidth"
                if cuda
                else ""
            )
            + "):",
            "",
            "| method | batch | length | ms per step | base forward | guidance forward | other | syncs / step | "
            "widest mask / longest row |" + (" fraction of bandwidth limit | reserved MB |" if cuda else ""),
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if cuda else ""),
        ]
        for r in timed:
            lines.append(
                f"| {label(r)} | {r['batch_size']} | {r['length']} | {r['ms_per_step']} | "
                f"{r['base_forward_ms']} | {r['guidance_forward_ms']} | {r['other_ms']} | "
                f"{r['syncs_per_step']} | {r['widest_mask_over_longest_row']} |"
                + (f" {r.get('bandwidth_fraction')} | {r.get('reserved_mb')} |" if cuda else "")
            )
    ragged = [r for r in rows if r.get("mode") == "ragged"]
    if ragged:
        lines += [
            "",
            "| method | batch | benchmark | n | output lengths | tokens/s ragged | tokens/s fixed length | "
            "ragged / fixed time per token |",
            "|---|---:|---|---:|---|---:|---:|---:|",
        ]
        for r in ragged:
            lines.append(
                f"| {r['method']} | {r['batch_size']} | {r['benchmark']} | {r['n']} | {r['min_len']}-"
                f"{r['max_len']} (mean {r['fixed_length']}) | {r['tokens_per_s']} | "
                f"{r['fixed_tokens_per_s']} | "
                f"{r['ragged_vs_fixed_time_per_token']} |"
            )
    identity = [r for r in rows if r.get("mode") == "identity"]
    if identity:
        lines += [
            "",
            f"Outputs at batch {identity[0]['batch_sizes'][0]} vs {identity[0]['batch_sizes'][1]} "
            f"({meta['dtype']}, {identity[0]['length']} tokens, EOS active):",
            "",
            "| method | identical outputs | mean shared prefix |",
            "|---|---:|---:|",
        ]
        for r in identity:
            lines.append(f"| {r['method']} | {r['identical_outputs']} | {r['mean_shared_prefix']} |")
    return "\n".join(lines) + "\n"


def build_pair(args):
    from hydra import compose, initialize_config_dir

    from .pair import Pair, pair_spec

    overrides = [f"pair={args.pair}"] + ([f"benchmark={args.ragged}"] if args.ragged else [])
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(config_name="config", overrides=overrides)
    if args.synthetic:
        from .scripted import ScriptedText
        from .synthetic import synthetic_pair

        cfg.pair.name = f"synthetic-{args.synthetic}" + ("-flat" if args.flat else "")
        rule = None if args.flat else ScriptedText(unsure=args.unsure, agree=args.agree)
        return synthetic_pair(args.synthetic, args.device, args.dtype, rule), cfg
    if args.tp > 1:  # torchrun --nproc-per-node T -m blendin.bench --tp T: the base split over T processes
        from omegaconf import OmegaConf

        from . import parallel
        from .checks import check_placement

        plain = OmegaConf.to_container(cfg, resolve=True)
        check_placement(dict(plain, parallel={"tp": args.tp}, device=args.device), "base")
        if parallel.place().world != args.tp:
            raise ConfigError(f"--tp {args.tp} needs exactly {args.tp} processes: torchrun --nproc-per-node {args.tp}")
        parallel.setup(args.tp, device=args.device)
        return Pair(pair_spec(cfg.pair), parallel.local_device(args.device), args.dtype, tp=args.tp), cfg
    return Pair(pair_spec(cfg.pair), args.device, args.dtype), cfg


def run(args) -> Path:
    from .store import atomic_write_json, atomic_write_text

    if args.threads:
        torch.set_num_threads(args.threads)
    pair, cfg = build_pair(args)
    device = pair.model("base").device
    import transformers

    meta = {
        "pair": cfg.pair.name,
        "device": str(device),
        "dtype": str(pair.model("base").model.dtype),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "n_prompts": args.n,
        "n_batch1": args.n_batch1,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python -m blendin.bench"] + sys.argv[1:]),
    }
    if args.synthetic:  # what the synthetic pair's text is like (a greedy decode of the bench's prompts)
        from .scripted import describe

        meta["synthetic_text"] = describe(pair, prompts(8), max_new_tokens=64)
        print(f"synthetic text: {meta['synthetic_text']}", flush=True)
    out = Path(args.out)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    stem = f"{'ragged' if args.ragged else 'speed'}-{cfg.pair.name}-{device.type}-{stamp}"

    from .parallel import ranks

    meta["tp"] = args.tp

    def save(rows) -> str:  # after every row: a run stopped by a time limit keeps what it measured
        text = markdown(rows, meta)
        if ranks().main:  # under --tp every process measures the same rows; rank 0 writes them
            atomic_write_json(out / f"{stem}.json", {"meta": meta, "rows": rows})
            atomic_write_text(out / f"{stem}.md", text)
        return text

    rows = []
    if args.ragged:
        rows += ragged_rows(pair, cfg, args.ragged, args.methods, args.batch_sizes[-1], args.n, args.max_new_tokens)
    else:
        variants = [
            {
                k: v
                for k, v in (
                    ("compile", c),
                    ("guidance_schedule", g),
                    ("overlap", o),
                    ("sampling", Sampling(temperature=t) if t else None),
                    ("speculate", k if k else None),
                )
                if v is not None
            }
            for c in args.compile
            for g in args.schedule
            for o in args.overlap
            for t in args.temperature
            for k in args.speculate
        ]
        hf_static = args.hf_static if args.hf_static is not None else device.type == "cuda"
        rows += fixed_length_rows(
            pair,
            args.methods,
            args.batch_sizes,
            args.lengths,
            args.n,
            variants,
            hf_static,
            args.n_batch1,
            on_row=lambda done: save(_ratios([dict(r) for r in done])),
        )
        if args.identity and len(set(args.batch_sizes)) > 1:
            rows += identity_rows(
                pair,
                [m for m in ("base", "nudging", "blendin") if m in args.methods],
                args.batch_sizes,
                min(args.lengths),
                args.n,
            )
    text = save(rows)
    if ranks().main:
        print("\n" + text + f"\nstored {out / stem}.json and .md")
    return out / f"{stem}.json"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m blendin.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pair", default="smollm2_gemma3", help="a pair of conf/pair/ (default: the embedded one)")
    parser.add_argument(
        "--synthetic",
        choices=list(PRESETS),
        help="random models of real sizes instead of --pair (for GPU speed without weights); "
        "llama110m+llama14m: CPU-sized, with a 1B guidance's share of an 8B base's compute",
    )
    parser.add_argument(
        "--flat",
        action="store_true",
        help="--synthetic: keep the random models' flat outputs (every row unsure on every step: the worst case)",
    )
    parser.add_argument(
        "--unsure", type=float, default=0.2, help="--synthetic: share of steps where the base is unsure (0.2)"
    )
    parser.add_argument(
        "--agree",
        type=float,
        default=0.5,
        help="--synthetic: where the base is unsure, how often the guidance's top token is the base's (0.5)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=DEFAULT_METHODS,
        choices=list(METHODS),
        help="nudging_words may be added; its rows end at the guidance's EOS, not at a fixed length",
    )
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=None, help="default: 1 8 on a CPU, 1 32 on a GPU")
    parser.add_argument("--lengths", nargs="+", type=int, default=[64, 512], help="new tokens per prompt")
    parser.add_argument("--n", type=int, default=None, help="prompts per row (default: the largest batch size)")
    parser.add_argument("--n-batch1", type=int, default=None, help="prompts per row at batch size 1 (default: --n)")
    parser.add_argument("--ragged", metavar="BENCHMARK", help="decode a real subset with EOS and stop strings active")
    parser.add_argument(
        "--max-new-tokens", type=int, default=None, help="ragged mode: the budget per item (default: the benchmark's)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--identity",
        action="store_true",
        help="also compare outputs at the smallest and largest batch size (same tokens?)",
    )
    parser.add_argument(
        "--compile",
        nargs="+",
        default=["none"],
        choices=["none", "compile", "cudagraphs"],
        help="how decode steps run; several values: rows for each (compare them in one run)",
    )
    parser.add_argument(
        "--schedule",
        nargs="+",
        default=[None],
        choices=["lazy", "every"],
        help="when the guidance runs (default: the device's default); several values: rows for each",
    )
    parser.add_argument(
        "--overlap",
        nargs="+",
        default=[None],
        type=lambda v: {"on": True, "off": False}[v],
        metavar="on|off",
        help="feed each step's tokens before the host reads them (default: on CUDA)",
    )
    parser.add_argument(
        "--temperature",
        nargs="+",
        type=float,
        default=[0.0],
        help="0 = greedy (default); > 0 samples from each method's distribution (blendin.sampling); several "
        "values: rows for each (the cost of sampling next to greedy in one run)",
    )
    parser.add_argument(
        "--speculate",
        nargs="+",
        type=int,
        default=[0],
        metavar="K",
        help="0 = step by step (default); K = speculative rounds of K drafts (blendin.speculation); several "
        "values: rows for each, with base passes per token and the share of drafts kept",
    )
    parser.add_argument(
        "--hf-static",
        dest="hf_static",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time transformers' static-cache generate (compiled by transformers on a GPU; default: on a GPU)",
    )
    parser.add_argument(
        "--tp",
        type=int,
        default=1,
        help="split the base over this many processes: torchrun --nproc-per-node TP -m blendin.bench --tp TP",
    )
    parser.add_argument("--out", default="results/bench")
    args = parser.parse_args(argv)
    if args.tp > 1 and args.synthetic:
        parser.error("--tp splits a pair's saved models (--pair); --synthetic models are built in memory")
    if args.batch_sizes is None:
        args.batch_sizes = [1, 32] if torch.cuda.is_available() and args.device != "cpu" else [1, 8]
    args.n = args.n or max(args.batch_sizes)
    call(run, args)


if __name__ == "__main__":
    main()
