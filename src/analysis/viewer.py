"""The token viewer: every stored output, token by token, coloured by who chose each token.

    python -m analysis.viewer [--results results] [--runs PATTERN ...] [--out DIR]

writes a static page, by default `<results>/report/viewer/index.html` (the report links to it). Open
it in any browser straight from disk: it needs no server and no network. It shows

- each sample's output with every token shaded by who chose it: the base (pale blue), the guidance
  (orange), or a blend (orange as strong as the guidance's weight alpha); a dashed box where the
  guidance was consulted but the token is the base's own top choice; optionally, the base's
  confidence u as an underline (thicker = less sure);
- on hover or keyboard focus, a token's trace: u, alpha, the base's and the guidance's top tokens
  with their probabilities, the guidance token's rank in the base distribution, whether it was spelled;
- the same item under several methods side by side (same pair, benchmark and setting; aligned by
  sample id) with prompt, gold, prediction and score, and a strip showing where the guidance acted;
- filters (benchmark, pair, methods, correct or wrong, intervention rate, a failure the detectors of
  `blendin.failures` found: buried answer, runaway, loop, another language) and sorting (by rate, or
  by the difference between two methods on the item).

Data: `data/index.js` holds the list of runs and one summary line per sample (score, rate); each
run's samples and traces are split into small files `data/<run>-<chunk>.js` that the page loads only
when it shows them, so large runs stay quick. They are scripts, not JSON, because browsers refuse
fetch() on file:// pages. Token texts are cut from the stored output with the trace's `text_offset`;
the top tokens' ids are decoded when the base model's tokenizer.json is on this machine already
(embedded pair, a local model folder, the Hugging Face cache), else the page shows ids.

`--runs` keeps the runs that match any of the patterns (shell wildcards), each tried against the run's
`pair/benchmark/run_name`, `benchmark/run_name`, run name, method, benchmark and pair:
`--runs 'gsm8k/*'`, `--runs nudging blendin`, `--runs 'smollm2_gemma3/*/*'`.
The page is built in a temporary folder and swapped in only when complete, so a failed or empty
build never replaces a good viewer.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from . import labels
from .load import load_runs, load_samples, load_tokens, sample_scores, unfinished_runs

ASSETS = Path(__file__).with_name("viewer_assets")
MARKER = ".blendin-viewer"  # marks a folder this tool wrote, so that only such a folder is ever replaced
CHUNK = 20  # samples per data file: a page of items loads a few small files, never a whole large run
# The viewer's own column titles; other methods use their label from blendin.methods.
LONG_LABEL = {"base": "Base", "guidance": "Guidance", "aligned": "Aligned", "nudging": "NUDGING", "blendin": "BlendIn"}
TRACE_FIELDS = [
    "base_top_prob",
    "base_top_id",
    "consulted",
    "applied",
    "alpha",
    "blend_prob",
    "source",
    "chosen_id",
    "override",
    "guide_top_id",
    "guide_top_prob",
    "base_prob_of_guide_top",
    "guide_top_rank",
    "guide_top_spelled",
    "text_offset",
]


class ViewerError(ValueError):
    """A results folder or --runs filter the viewer cannot use; the message says how to fix it.

    Exit codes as the other analysis commands: 2 for a bad input, 1 when there is nothing to show."""

    code = 2


# ---- which runs ----------------------------------------------------------------------------------


def _run_path(row) -> str:
    return f"{row['pair']}/{row['benchmark']}/{row['run_name']}"


def select_runs(results, runs=None) -> pd.DataFrame:
    """The finished runs under `results` that match any of the `runs` patterns (all when None).

    Raises ViewerError for a missing folder, a folder without finished runs, or a pattern that matches
    no run (listing the runs there are), so that a typo never yields an empty viewer."""
    results = Path(results)
    if not results.is_dir():
        raise ViewerError(
            f"results folder '{results}' does not exist. Fix: give the folder that holds runs/ "
            "(--results DIR, default: results), or store runs first: python -m blendin.run ..."
        )
    frame = load_runs(results)
    if frame.empty:
        unfinished = unfinished_runs(results)
        err = ViewerError(
            f"no finished runs under '{results}/runs/<pair>/<benchmark>/<run>/' (a finished run has metrics.json"
            + (f"; {len(unfinished)} unfinished run folder(s) there" if unfinished else "")
            + "). Fix: point --results at the folder that holds them, or run some first, e.g. "
            "python -m blendin.run -m benchmark=gsm8k method=base,nudging,blendin benchmark.n=10"
        )
        err.code = 1
        raise err
    if not runs:
        return frame
    keys = [
        {
            _run_path(row),
            f"{row['benchmark']}/{row['run_name']}",
            row["run_name"],
            row["method"],
            row["benchmark"],
            row["pair"],
        }
        for _, row in frame.iterrows()
    ]
    matched = [[any(fnmatch.fnmatchcase(k, p) for k in ks) for ks in keys] for p in runs]
    unmatched = [p for p, hits in zip(runs, matched) if not any(hits)]
    if unmatched:
        listing = "\n  ".join(_run_path(row) for _, row in frame.iterrows())
        raise ViewerError(
            f"--runs {' '.join(unmatched)} matches no run under '{results}'. Fix: give a shell wildcard on "
            "pair/benchmark/run_name or benchmark/run_name, a run name, a method, a benchmark or a pair; "
            f"the runs there are:\n  {listing}"
        )
    keep = [any(col) for col in zip(*matched)]
    return frame[keep].reset_index(drop=True)


# ---- token texts ---------------------------------------------------------------------------------


def token_pieces(output: str, offsets) -> tuple[list[str | None], str]:
    """Cut `output` into one piece per trace step with `text_offset` (the text's length after the step).

    A piece is None where the step lies past the stored output (tokens that spelled a stop string,
    which the output ends before). An offset can stall (a token that completes no character yet) or
    step back (a partial character resolved), so pieces are cut at the running maximum and always
    join up to the output. Returns the pieces and any text after the last step (normally "")."""
    pieces, start, end, n = [], 0, 0, len(output)
    for offset in offsets:
        end = max(end, int(offset))
        # inside the output; straddling its end (the rest spelled the stop string); or wholly past it
        pieces.append(output[start:end] if end <= n else output[start:n] if start < n else None)
        start = end
    return pieces, output[end:]


def _cache_dir() -> Path:
    # the same folder as blendin.models.cache_dir, without importing torch for it
    return Path(os.environ.get("BLENDIN_CACHE_DIR", Path.home() / ".cache" / "blendin"))


def _tokenizer_file(spec: dict) -> Path | None:
    """The base model's tokenizer.json if it is on this machine already; never converts or downloads."""
    source = str(spec.get("source") or "")
    if source.startswith("embedded:"):
        from blendin import embedded  # only here: it imports the library (and torch)

        name = source.removeprefix("embedded:")
        try:
            folder = _cache_dir() / "converted" / f"{name}-{embedded.package_version(name)}"
        except Exception:  # an embedded package that is not installed: show ids
            return None
        return folder / "tokenizer.json"
    path = Path(source).expanduser()
    if path.is_dir():
        return path / "tokenizer.json"
    if source and "/" in source and not path.exists() and not spec.get("gguf_file"):
        try:  # a hub id: only what the Hugging Face cache holds already
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(source, "tokenizer.json", revision=spec.get("revision"))
        except Exception:
            return None
        return Path(found) if isinstance(found, str) else None
    return None  # a GGUF file: its tokenizer exists only after the runner converted it


_TOKENIZERS: dict[str, tuple[object | None, str]] = {}


def base_tokenizer(config: dict) -> tuple[object | None, str]:
    """(a `tokenizers.Tokenizer` for the run's base model or None, a note saying which)."""
    spec = ((config.get("pair") or {}).get("base")) or {}
    key = json.dumps(spec, sort_keys=True, default=str)
    if key not in _TOKENIZERS:
        path = _tokenizer_file(spec)
        tokenizer, note = None, f"token ids shown: no tokenizer.json of the base model ({spec.get('source')}) here"
        if path is not None and path.is_file():
            try:
                from tokenizers import Tokenizer

                tokenizer, note = Tokenizer.from_file(str(path)), f"tokens decoded with {path}"
            except Exception as err:  # a tokenizer file this library cannot read: show ids
                note = f"token ids shown: could not read {path}: {err}"
        _TOKENIZERS[key] = (tokenizer, note)
    return _TOKENIZERS[key]


# ---- the data files ------------------------------------------------------------------------------


def _num(value, digits: int = 4):
    """A finite number rounded for the page, else None (JSON has no NaN)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return round(value, digits) if math.isfinite(value) else None


def _flag(value):
    return None if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)) else int(value)


def _text(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def _sample_trace(steps: pd.DataFrame, output: str) -> dict:
    """One sample's trace as short parallel lists (the page's format; names kept short on purpose)."""
    offsets = steps["text_offset"].tolist()
    if len(offsets) and min(offsets) >= 0:
        pieces, tail = token_pieces(output, offsets)
    else:  # an older run without text_offset: the page shows the chosen token ids instead
        pieces, tail = [None] * len(steps), output

    def ints(name: str) -> list[int]:
        return [int(v) for v in steps[name]]

    return {
        "p": pieces,
        "tail": tail,
        "has_offsets": bool(len(offsets) and min(offsets) >= 0),
        "u": [_num(v) for v in steps["base_top_prob"]],
        "b": ints("base_top_id"),
        "c": [int(bool(v)) for v in steps["consulted"]],
        "ap": [int(bool(v)) for v in steps["applied"]],
        "a": [_num(v) for v in steps["alpha"]],
        "bp": [_num(v) for v in steps["blend_prob"]],
        "s": ints("source"),
        "ch": ints("chosen_id"),
        "o": [int(bool(v)) for v in steps["override"]],
        "g": ints("guide_top_id"),
        "gp": [_num(v) for v in steps["guide_top_prob"]],
        "pg": [_num(v) for v in steps["base_prob_of_guide_top"]],
        "r": ints("guide_top_rank"),
        "sp": [_flag(v) for v in steps["guide_top_spelled"]],
    }


FAILURES = ("buried", "runaway", "loop", "foreign")  # the detectors of blendin.failures the filter offers


def failures_of(record) -> list[str]:
    """The failure detectors that flagged an output (its samples.jsonl fields; none in older runs)."""
    return [name for name in FAILURES if record.get(name) is True]


def _decode(tokenizer, ids) -> dict:
    out = {}
    for i in sorted({int(i) for i in ids if int(i) >= 0}):
        try:
            out[str(i)] = tokenizer.decode([i], skip_special_tokens=False)
        except Exception:  # an id outside the tokenizer (a model with padded logits): show the id
            continue
    return out


def _correct_at(benchmark: str) -> float:
    """The score from which an item counts as correct: half of a 0-1 score, 4 of a 1-5 judge score."""
    return 4.0 if benchmark in labels.JUDGE_SCALE_BENCHMARKS else 0.5


def _method_order(method: str) -> int:
    from blendin.methods import REGISTRY

    names = list(REGISTRY)
    return names.index(method) if method in names else len(names)


def _js(value) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def build_data(frame: pd.DataFrame, data_dir: Path, results: Path) -> dict:
    """Write one file per chunk of each run into `data_dir`; return the index (groups, runs, summaries)."""
    frame = frame.assign(_order=frame["method"].map(_method_order))
    frame = frame.sort_values(["_order", "params_key", "created_at"], kind="stable")
    groups: list[dict] = []
    runs: list[dict] = []
    order = {
        (p, b): (labels.order_benchmarks(frame["benchmark"]).index(b), labels.order_pairs(frame["pair"]).index(p))
        for p, b in zip(frame["pair"], frame["benchmark"])
    }
    keys = sorted(frame.groupby(["pair", "benchmark", "setting_key"], sort=False).groups, key=lambda k: order[k[:2]])
    for g, (pair, benchmark, setting_key) in enumerate(keys):
        members = frame[
            (frame["pair"] == pair) & (frame["benchmark"] == benchmark) & (frame["setting_key"] == setting_key)
        ]
        loaded = []
        for _, row in members.iterrows():
            samples = load_samples(row, prompts=True)
            trace = load_tokens(row, columns=["sample_id", "sample", "step", *TRACE_FIELDS])
            loaded.append((row, samples, trace))
        ids = list(dict.fromkeys(i for _, s, _ in loaded for i in (s["id"] if "id" in s else [])))
        first = members.iloc[0]
        group = {
            "pair": pair,
            "pair_label": first["pair_label"],
            "benchmark": benchmark,
            "benchmark_label": labels.benchmark_label(benchmark),
            "setting": first["setting"],
            "score_name": first["score_name"],
            "correct_at": _correct_at(benchmark),
            "ids": ids,
            "runs": [],
        }
        for row, samples, trace in loaded:
            group["runs"].append(len(runs))
            runs.append(_write_run(len(runs), g, row, samples, trace, ids, data_dir, results))
        groups.append(group)
    return {
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "results": str(results),
        "groups": groups,
        "runs": runs,
    }


def _write_run(k, g, row, samples, trace, ids, data_dir: Path, results: Path) -> dict:
    """Write run number k's chunk files; return its entry in the index (with per-item summaries)."""
    key = f"r{k}"
    config_path = Path(row["run_dir"]) / "config.yaml"
    config: dict = {}
    if config_path.is_file():
        import yaml

        config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    tokenizer, note = base_tokenizer(config)
    scores = sample_scores(row)  # per item: the mean over its sampled outputs
    # several sampled outputs per item (decoding.samples): the item's first leads, the others ride along
    others = samples[samples["sample"] > 0] if "sample" in samples else samples.iloc[0:0]
    samples = samples[samples["sample"] == 0].reset_index(drop=True) if "sample" in samples else samples
    prompts = samples["prompt_base"].fillna("").astype(str).tolist() if "prompt_base" in samples else []
    prefix = os.path.commonprefix(prompts) if len(prompts) > 1 else ""  # few-shot examples: stored once
    keyed = trace.groupby(["sample_id", "sample"], sort=False) if len(trace) else []
    by_output = {(sid, int(k)): steps.sort_values("step") for (sid, k), steps in keyed}
    position = {sid: i for i, sid in enumerate(samples["id"])} if "id" in samples else {}
    later = {sid: group.sort_values("sample") for sid, group in others.groupby("id", sort=False)}

    def output_entry(record, steps) -> dict:
        """One output of an item: its text, prediction, own score, stop reason and token trace."""
        output = _text(record.get("output"))
        tok = _sample_trace(steps if steps is not None else trace.iloc[0:0], output)
        chunk["ids"].update(tok["b"] + tok["g"] + tok["ch"])
        return {
            "output": output,
            "prediction": _text(record.get("prediction")),
            "own": _num(record.get("score")),
            "stop": _text(record.get("stop_reason")),
            "tok": tok,
        }

    summary: dict[str, list] = {"score": [], "rate": [], "steps": [], "chunk": [], "fail": []}
    chunks: dict[int, dict] = {}
    for sid in ids:
        if sid not in position:
            for name in summary:
                summary[name].append(None)
            continue
        i = position[sid]
        record = samples.iloc[i]
        steps = by_output.get((sid, 0))
        rate = _num(record.get("intervention_rate"))
        if rate is None and steps is not None and len(steps):
            rate = _num(float(steps["applied"].mean()))
        c = i // CHUNK
        chunk = chunks.setdefault(c, {"samples": {}, "ids": set()})
        chunk["samples"][sid] = {
            "prompt": prompts[i][len(prefix) :] if prompts else "",
            "gold": _text(record.get("gold")),
            "score": _num(scores.get(sid)),
            **output_entry(record, steps),
        }
        if sid in later:
            chunk["samples"][sid]["others"] = [
                output_entry(r, by_output.get((sid, int(r["sample"])))) for _, r in later[sid].iterrows()
            ]
        summary["score"].append(_num(scores.get(sid)))
        summary["rate"].append(rate)
        summary["steps"].append(0 if steps is None else len(steps))
        summary["chunk"].append(c)
        summary["fail"].append(failures_of(record))
    for c, chunk in chunks.items():
        vocab = _decode(tokenizer, chunk.pop("ids")) if tokenizer is not None else None
        body = _js({"samples": chunk["samples"], "vocab": vocab})
        (data_dir / f"{key}-{c}.js").write_text(f'BLENDIN_VIEWER_CHUNK("{key}-{c}", {body});\n', encoding="utf-8")
    method = row["method"]
    per_item = int(row["samples_per_item"])
    shown = f" ({per_item} samples per item)" if per_item > 1 else ""
    return {
        "key": key,
        "group": g,
        "method": method,
        "label": (LONG_LABEL.get(method) or labels.method_label(method)) + shown,
        "params": row["params"],
        "run": _run_path(row),
        "score": _num(row["score"]),
        "score_excluded": row["score_excluded"],
        "rate": _num(row["intervention_rate"]),
        "unit": row["intervention_unit"],
        "n_samples": int(row["n_samples"]),
        "tokens": note,
        "decoded": tokenizer is not None,
        "prompt_prefix": prefix,
        **summary,
    }


# ---- the page ------------------------------------------------------------------------------------


def _page(index: dict, back_link: bool) -> str:
    html = (ASSETS / "index.html").read_text(encoding="utf-8")
    link = '<a href="../index.html">&larr; back to the report</a>' if back_link else ""
    return html.replace("<!--BACK-->", link)


def _swap_in(built: Path, out: Path) -> None:
    """Replace `out` by the finished `built` folder: rename the old one aside, rename the new one in."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}-old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(out, old)
    try:
        os.rename(built, out)
    except OSError:
        if old is not None:
            os.rename(old, out)  # put the good viewer back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_viewer(results_dir, out_dir=None, runs=None) -> Path:
    """Build the token viewer for the runs under `results_dir`; returns the path of its index.html.

    out_dir defaults to `<results_dir>/report/viewer`. `runs` is a list of patterns (see the module
    docstring); None keeps every finished run. Raises ViewerError (with the fix) for a missing results
    folder, no runs, a pattern that matches nothing, or an `out_dir` that holds something other than
    a viewer; in every failure the viewer that was there stays as it was."""
    results = Path(results_dir)
    default_out = results / "report" / "viewer"
    out = Path(out_dir) if out_dir is not None else default_out
    frame = select_runs(results, runs)
    if out.exists() and not (out / MARKER).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise ViewerError(
            f"'{out}' exists and is not a viewer folder (no {MARKER} in it), so it is not replaced. "
            "Fix: give --out a new or empty folder, or the folder of an earlier viewer"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    built = Path(tempfile.mkdtemp(prefix=f".{out.name}-new-", dir=out.parent))
    try:
        os.chmod(built, 0o755)  # mkdtemp makes it private; a viewer is meant to be shared
        (built / "data").mkdir()
        index = build_data(frame, built / "data", results)
        (built / "data" / "index.js").write_text(f"window.BLENDIN_VIEWER = {_js(index)};\n", encoding="utf-8")
        for name in ("viewer.js", "viewer.css"):
            shutil.copyfile(ASSETS / name, built / name)
        back = out.resolve() == default_out.resolve()  # inside the report: link back to it
        (built / "index.html").write_text(_page(index, back), encoding="utf-8")
        (built / MARKER).write_text("written by python -m analysis.viewer; replaced whole on the next build\n")
        _swap_in(built, out)
    finally:
        shutil.rmtree(built, ignore_errors=True)
    return out / "index.html"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.viewer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", type=Path, default=Path("results"), help="results folder (default: results)")
    parser.add_argument(
        "--runs", nargs="+", default=None, metavar="PATTERN", help="keep only the runs matching any pattern"
    )
    parser.add_argument("--out", type=Path, default=None, help="viewer folder (default: RESULTS/report/viewer)")
    args = parser.parse_args(argv)
    try:
        path = write_viewer(args.results, args.out, args.runs)
    except ViewerError as err:
        print(f"python -m analysis.viewer: error: {err}", file=sys.stderr)
        return err.code
    print(f"[viewer] wrote {path} (open it in a browser; it works offline)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
