"""Tune BlendIn's alpha and tau as the paper's Appendix A.4 says, on items the test never sees.

    python -m blendin.tune [pair=P] benchmark=gsm8k [n_validation=50] [n_test=100] [max_new_tokens=256]

1. tau = 0.4, alpha in {0.3, 0.5, 0.7};
2. refine alpha by +-0.1 around the best so far;
3. best alpha, tau in {0.3, 0.4, 0.5};
then the chosen (alpha, tau) runs on the test subset, beside the default (alpha auto, tau 0.4).

Validation items: GSM8K's train split, MMLU's and ARC's validation splits; TruthfulQA, XSTest and
JustEval-Safe have one split, so their validation items are a held-out slice of it: items outside the
`n_test` test subset (same seed and subset rule; `benchmark.exclude_n`). Every trial is a normal
stored run (resumable; the report lists it). The choice, with every trial's validation score, goes
to `results/tune/<pair>/<benchmark>/choice.json` (and .md) and is printed. Ties go to the earlier
trial. Config: conf/tune.yaml.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from .cli import call, refuse_unknown_keys
from .diagnose import pair_overrides
from .errors import ConfigError

log = logging.getLogger("blendin.tune")
VALIDATION_SPLITS = {"gsm8k": "train", "mmlu": "validation", "arc_challenge": "validation"}


def validation_overrides(benchmark: str, n_validation: int, n_test: int) -> tuple[list[str], str]:
    """Overrides that choose the validation items, and a sentence saying which they are."""
    if benchmark in VALIDATION_SPLITS:
        split = VALIDATION_SPLITS[benchmark]
        return (
            [f"benchmark.split={split}", f"benchmark.n={n_validation}"],
            f"{n_validation} items of the {split} split (disjoint from the test split)",
        )
    return (
        [f"benchmark.n={n_validation}", f"benchmark.exclude_n={n_test}"],
        f"{n_validation} test-split items outside the {n_test}-item test subset ({benchmark} has one split)",
    )


def benchmark_overrides() -> list[str]:
    """The benchmark chosen on this command line, with its benchmark.* settings, for the run configs
    (the subset, split and budget settings are then set by the tuning protocol itself)."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    own = ("benchmark.n=", "benchmark.split=", "benchmark.exclude_n=", "benchmark.max_new_tokens=")
    return [f"benchmark={hydra_cfg.runtime.choices['benchmark']}"] + [
        o for o in hydra_cfg.overrides.task if o.startswith("benchmark.") and not o.startswith(own)
    ]


def tune(cfg: DictConfig) -> dict:
    from hydra import compose

    from .run import execute, run_dir
    from .store import atomic_write_json, atomic_write_text

    if not isinstance(cfg.n_test, int) or not isinstance(cfg.n_validation, int):
        raise ConfigError("n_test and n_validation must be integers (tuning needs a held-out slice of known size)")
    common = (
        pair_overrides()
        + benchmark_overrides()
        + [
            "method=blendin",
            f"benchmark.max_new_tokens={cfg.max_new_tokens}",
            f"results_dir={cfg.results_dir}",
            f"batch_size={cfg.batch_size}",
            f"device={cfg.device}",
            f"dtype={cfg.dtype}",
        ]
    )
    validation, described = validation_overrides(cfg.benchmark.name, cfg.n_validation, cfg.n_test)
    trials: list[dict] = []
    started = time.perf_counter()

    def trial(alpha, tau, step: str, on_test: bool = False) -> dict:
        items = [f"benchmark.n={cfg.n_test}"] if on_test else validation
        run_cfg = compose(
            config_name="config", overrides=common + items + [f"method.alpha={alpha}", f"method.tau={tau}"]
        )
        metrics = execute(run_cfg)
        if metrics.get("score") is None:
            raise ConfigError(
                f"{cfg.benchmark.name} runs have no score to tune on ({metrics.get('score_name')}); "
                "JustEval-Safe needs an LLM judge: add judge=openai or judge=local"
            )
        record = {
            "step": step,
            "alpha": alpha,
            "tau": tau,
            "score": metrics["score"],
            "ci95": metrics["ci95"],
            "intervention_rate": metrics["intervention_rate"],
            "n": metrics["n_samples"],
            "run_dir": str(run_dir(run_cfg)),
        }
        if not on_test:
            trials.append(record)
        log.info("%s alpha=%s tau=%s: %s = %.4f", step, alpha, tau, metrics["score_name"], metrics["score"])
        return record

    def best() -> dict:
        return max(trials, key=lambda t: t["score"])  # max keeps the first of equal scores

    for alpha in cfg.alphas:
        trial(alpha, 0.4, "1: alpha at tau 0.4")
    tried = {t["alpha"] for t in trials}
    center = best()["alpha"]
    for alpha in (round(center - cfg.refine, 2), round(center + cfg.refine, 2)):
        if 0 <= alpha <= 1 and alpha not in tried and cfg.refine > 0:
            trial(alpha, 0.4, "2: refine alpha")
    alpha = best()["alpha"]
    for tau in cfg.taus:
        if not any(t["alpha"] == alpha and t["tau"] == tau for t in trials):
            trial(alpha, tau, "3: tau at the best alpha")
    choice = best()
    test = {
        "chosen": trial(choice["alpha"], choice["tau"], "test: chosen", on_test=True),
        "default": trial("auto", 0.4, "test: default (alpha auto, tau 0.4)", on_test=True),
    }
    pair_name = compose(config_name="config", overrides=common).pair.name
    report = {
        "pair": pair_name,
        "benchmark": cfg.benchmark.name,
        "validation": described,
        "choice": {"alpha": choice["alpha"], "tau": choice["tau"], "validation_score": choice["score"]},
        "trials": trials,
        "test": test,
        "wall_time_s": round(time.perf_counter() - started, 1),
    }
    out = Path(cfg.results_dir) / "tune" / pair_name / cfg.benchmark.name
    atomic_write_json(out / "choice.json", report)
    text = markdown(report)
    atomic_write_text(out / "choice.md", text)
    print(text + f"\nstored {out / 'choice.json'}")
    return report


def markdown(report: dict) -> str:
    lines = [
        f"Tuning BlendIn on {report['pair']} / {report['benchmark']} (paper, Appendix A.4). Validation: "
        f"{report['validation']}.",
        "",
        "| step | alpha | tau | validation score | 95% CI | intervention |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for t in report["trials"]:
        lines.append(
            f"| {t['step']} | {t['alpha']} | {t['tau']} | {t['score']:.3f} | "
            f"[{t['ci95'][0]:.2f}, {t['ci95'][1]:.2f}] | {t['intervention_rate']:.3f} |"
        )
    c = report["choice"]
    lines += [
        "",
        f"Chosen: alpha {c['alpha']}, tau {c['tau']} (validation {c['validation_score']:.3f}).",
        "",
        "| on the test subset | alpha | tau | score | 95% CI | n |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for name, t in report["test"].items():
        lines.append(
            f"| {name} | {t['alpha']} | {t['tau']} | {t['score']:.3f} | [{t['ci95'][0]:.2f}, "
            f"{t['ci95'][1]:.2f}] | {t['n']} |"
        )
    return "\n".join(lines) + "\n"


@hydra.main(version_base=None, config_path="conf", config_name="tune")
def _hydra_main(cfg: DictConfig) -> None:
    call(tune, cfg)


def main() -> None:
    refuse_unknown_keys("tune", sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()
