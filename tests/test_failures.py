"""Failure detectors (`blendin.failures`) against cases labelled by reading them (tests/labelled/), and the
runaway detector's reading of the base run. `pytest -s -k agreement` prints each detector's agreement."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blendin import failures, scoring

LABELLED = Path(__file__).parent / "labelled"
PROMPT = "Question: Janet's ducks lay 16 eggs per day. She eats three for breakfast. How much does she make?"


def _read(name: str) -> list[dict]:
    return [json.loads(line) for line in (LABELLED / name).read_text().splitlines() if line.strip()]


def _agreement(rows, said, wanted, what: str, at_least: float) -> None:
    wrong = [(r, s) for r, s in zip(rows, said) if s != wanted(r)]
    share = 1 - len(wrong) / len(rows)
    listing = "\n".join(f"  label {wanted(r)}, said {s}: {r['output'][:100]!r}" for r, s in wrong)
    report = f"{what}: agrees with the labels on {len(rows) - len(wrong)}/{len(rows)} ({share:.3f})"
    print(f"{report}\n{listing}")  # pytest -s shows it
    assert share >= at_least, f"{report}\n{listing}"


def test_buried_gsm8k_answers_agreement():
    """32 outputs (14 of the embedded base model, 18 written in the styles base models write), labelled:
    is the gold the output's own final result while its last number is not?"""
    rows = _read("buried_gsm8k.jsonl")
    assert len(rows) == 32 and sum(r["label"] for r in rows) == 9
    said = [failures.buried_number(r["output"], r["gold"]) for r in rows]
    _agreement(rows, said, lambda r: r["label"], "buried GSM8K answers", 0.95)


def test_buried_multiple_choice_answers_agreement():
    """40 outputs (28 of the embedded pair from mc_outputs.jsonl, 12 written), labelled: does the first
    answer state the gold option while the extractor reads another letter or none?"""
    rows = _read("buried_mc.jsonl")
    assert len(rows) == 40
    said = [
        failures.buried_choice(r["output"], r["options"], r["gold"], scoring.extract_choice(r["output"], r["options"]))
        for r in rows
    ]
    _agreement(rows, said, lambda r: r["label"], "buried multiple-choice answers", 0.95)


def test_degeneration_agreement():
    """70 outputs (42 of the embedded pair on MC benchmarks and XSTest, 28 written): does the output end in
    a loop; is it in another script or language than the (English) prompt?"""
    rows = _read("degeneration.jsonl")
    assert len(rows) == 70
    _agreement(rows, [failures.loop(r["output"]) for r in rows], lambda r: r["loop"], "loop", 0.95)
    _agreement(rows, [failures.foreign(r["output"], PROMPT) for r in rows], lambda r: r["foreign"], "foreign", 0.95)


def test_degeneration_agreement_on_held_out_outputs():
    """20 XSTest outputs of the embedded base model (the sweep's), labelled after the detectors were written
    and without running them: the detectors were not tuned on these."""
    rows = _read("degeneration_heldout.jsonl")
    assert len(rows) == 20
    _agreement(rows, [failures.loop(r["output"]) for r in rows], lambda r: r["loop"], "loop (held out)", 0.85)
    said = [failures.foreign(r["output"], r["prompt"]) for r in rows]
    _agreement(rows, said, lambda r: r["foreign"], "foreign (held out)", 0.95)


@pytest.mark.parametrize(
    "output, gold, buried",
    [
        ("9 * 2 = 18.\n\nQuestion 2: John has 3 apples and eats 1. 3 - 1 = 2.", 18, True),
        ("9 * 2 = 18, so she earns 18.", 18, False),  # the scorer reads it
        ("She has 18 eggs? 16 + 2 = 20.", 18, False),  # 18 is not a result
        ("The answer is 18.\nThe answer is 20.", 18, False),  # the last answer wins
        ("#### 1,200\nThen 12 months pass.", 1200, True),
    ],
)
def test_buried_number_reads_the_final_result(output, gold, buried):
    assert failures.buried_number(output, gold) is buried


def test_runaway_needs_the_base_to_have_stopped():
    assert failures.runaway("max_new_tokens", "eos") is True
    assert failures.runaway("max_new_tokens", "stop_string") is True
    assert failures.runaway("max_new_tokens", "max_new_tokens") is False  # the base ran on too
    assert failures.runaway("eos", "eos") is False
    assert failures.runaway("max_new_tokens", None) is None  # no base run stored


def test_run_shares_read_the_base_run_of_the_same_setting(tmp_path):
    """A guided run's runaway share reads the base run's stop reasons, found by the base run's own name."""
    from hydra import compose, initialize_config_dir

    from blendin.identity import run_dir
    from blendin.run import base_stop_reasons, failure_shares
    from blendin.store import RunStore

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base=None):
        cfg = compose(config_name="config", overrides=[f"results_dir={tmp_path}", "method=nudging", "benchmark.n=3"])
        base = compose(config_name="config", overrides=[f"results_dir={tmp_path}", "method=base", "benchmark.n=3"])
    base_store = RunStore(run_dir(base))
    base_store.path.mkdir(parents=True)
    stops = {"a": "eos", "b": "max_new_tokens", "c": "stop_string"}
    base_store.samples_path.write_text(
        "".join(json.dumps({"id": i, "stop_reason": s}) + "\n" for i, s in stops.items())
    )
    found = base_stop_reasons(cfg, RunStore(run_dir(cfg)))
    assert found == {("a", 0): "eos", ("b", 0): "max_new_tokens", ("c", 0): "stop_string"}
    records = [
        {
            "runaway": failures.runaway("max_new_tokens", found[(i, 0)]),
            "guide_eos_max": eos,
            "loop": i == "a",
            "foreign": False,
        }
        for i, eos in (("a", 0.9), ("b", 0.8), ("c", 0.1))
    ]
    shares = failure_shares(records)
    assert shares["runaway_share"] == pytest.approx(2 / 3) and shares["n_runaway_known"] == 3
    assert shares["runaway_guide_eos_share"] == 0.5  # of the two runaway outputs, one where the guidance wanted EOS
    assert shares["loop_share"] == pytest.approx(1 / 3) and shares["foreign_share"] == 0
    assert base_stop_reasons(base, base_store) == {}  # a one-model run has no base to compare with
