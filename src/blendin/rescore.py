"""Score a stored run again without decoding: `python -m blendin.rescore RUN_DIR [--judge openai|local|none]
[--judge-model M] [--judge-base-url URL]`.

Reads the run's config.yaml and samples.jsonl, scores every stored output with the benchmark's
current scorers (and the judge, if given), and rewrites samples.jsonl and metrics.json atomically.
Use it after fixing a scorer, with a new judge, or when a judge was down during the run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from omegaconf import OmegaConf

from .cli import CONF_DIR, call
from .errors import ConfigError
from .judges import make_judge
from .run import finish, load_benchmark
from .runspec import describe
from .store import RunStore, output_key

_JUDGES = CONF_DIR / "judge"


def rescore(run_dir: Path, judge_cfg: dict | None = None) -> dict:
    store = RunStore(run_dir)
    config_path = store.path / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(f"{store.path} is not a run directory (no config.yaml)")
    cfg = OmegaConf.load(config_path)
    benchmark = load_benchmark(cfg.benchmark)
    stored = {output_key(r) for r in store.samples()}
    per_item = describe(cfg).sampling.samples
    wanted = [(s, k) for s in benchmark.samples(cfg.benchmark.n) for k in range(per_item)]
    outputs = [(s, k) for s, k in wanted if (s.id, k) in stored]
    missing = len(wanted) - len(outputs)
    if missing:
        raise ConfigError(f"{store.path} lacks {missing} decoded outputs: finish it with its blendin.run command first")
    if judge_cfg is not None:
        cfg.judge = judge_cfg
    previous = json.loads(store.metrics_path.read_text()) if store.finished else {}
    with store.lock():
        return finish(
            store, benchmark, outputs, make_judge(cfg.get("judge")), cfg, reused_from=previous.get("reused_from")
        )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m blendin.rescore", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--judge", choices=["none", "openai", "local"], help="default: the judge the run used")
    parser.add_argument("--judge-model")
    parser.add_argument("--judge-base-url")
    args = parser.parse_args(argv)
    judge_cfg = None
    if args.judge:
        judge_cfg = OmegaConf.to_container(OmegaConf.load(_JUDGES / f"{args.judge}.yaml"), resolve=True)
        judge_cfg.update({k: v for k, v in (("model", args.judge_model), ("base_url", args.judge_base_url)) if v})
    metrics = call(rescore, args.run_dir, judge_cfg)
    print(json.dumps({k: metrics.get(k) for k in ("benchmark", "method", "score", "score_name", "ci95", "judge")}))


if __name__ == "__main__":
    main()
