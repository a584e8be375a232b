"""Analysis commands fail loudly and never destroy (issue 18, part 4).

Every bad input exits non-zero with the filter named and what is stored listed; argument types are
refused by argparse; nothing already written under --out is replaced by an empty artefact; writes are
atomic; summaries count what was computed. Every command goes through the same helper (analysis.cli),
so each check runs over all of them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from synthetic_store import binary, build_store, write_run

from analysis import calibration, heatmap, overlap, paradox, report, subset, tables, write

COMMANDS = {
    "heatmap": heatmap.main,
    "paradox": paradox.main,
    "overlap": overlap.main,
    "tables": tables.main,
    "subset": subset.main,
    "calibration": calibration.main,
    "report": report.main,
}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return build_store(tmp_path_factory.mktemp("store"))


def run(name: str, results: Path, out: Path, *extra: str) -> int:
    return COMMANDS[name](["--results", str(results), "--out", str(out), *extra])


def files(folder: Path) -> dict:
    """Every file under `folder` with its bytes."""
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()} if folder.exists() else {}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_results_folder_that_does_not_exist(name, tmp_path, capsys):
    (tmp_path / "results").mkdir()
    assert run(name, tmp_path / "resutls", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert f"python -m analysis.{name}: error: --results {tmp_path / 'resutls'}: no such folder" in err
    assert f"did you mean {tmp_path / 'results'}?" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", sorted(set(COMMANDS) - {"report"}))
def test_a_folder_without_finished_runs(name, tmp_path, capsys):
    (tmp_path / "results" / "runs" / "a_b" / "gsm8k" / "nudging-killed").mkdir(parents=True)
    assert run(name, tmp_path / "results", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "no finished run under" in err and "1 unfinished run folder(s)" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_protocol_no_run_has(name, store, tmp_path, capsys):
    assert run(name, store, tmp_path / "out", "--protocol", "foo") == 2
    err = capsys.readouterr().err
    assert "--protocol foo: no run under" in err and "stored values: ours (58 runs)" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["paradox", "tables", "report"])
def test_a_subset_size_no_run_has(name, store, tmp_path, capsys):
    assert run(name, store, tmp_path / "out", "--n", "50") == 2
    err = capsys.readouterr().err
    assert "--n 50: no run under" in err and "stored values: 20 (57 runs), full (1 run)" in err


@pytest.mark.parametrize("name", sorted(COMMANDS))
@pytest.mark.parametrize("value", ["abc", "0", "-3"])
def test_a_subset_size_that_is_not_one_is_refused_by_argparse(name, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        run(name, tmp_path, tmp_path / "out", "--n", value)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --n: invalid value '{value}': use a positive whole number of items (e.g. 100) or 'full'" in err


def test_counts_that_are_not_counts_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        paradox.main(["--results", str(tmp_path), "--permutations", "many"])
    assert exit_.value.code == 2 and "argument --permutations: invalid value 'many'" in capsys.readouterr().err


def test_filters_that_exist_apart_but_not_together(tmp_path, capsys):
    write_run(tmp_path, "a_b", "gsm8k", "nudging", binary(0.5, 4), rate=0.1)
    write_run(tmp_path, "a_b", "gsm8k", "nudging", binary(0.5, 6), rate=0.2, protocol={"name": "reference"})
    assert (
        paradox.main(
            ["--results", str(tmp_path), "--out", str(tmp_path / "out"), "--n", "4", "--protocol", "reference"]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "--n 4 --protocol reference: no run has both" in err and "ours n=4 (1 run), reference n=6 (1 run)" in err


def test_nothing_to_compute_lists_what_is_stored(tmp_path, capsys):
    write_run(tmp_path, "a_b", "gsm8k", "base", binary(0.5, 4))
    assert paradox.main(["--results", str(tmp_path), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "no NUDGING run (nudging or nudging_words) with a score" in err and "stored methods: base (1 run)" in err
    assert not (tmp_path / "out").exists()
    assert calibration.main(["--results", str(tmp_path), "--out", str(tmp_path / "out")]) == 1
    assert "no teacher-forced run (method forced)" in capsys.readouterr().err


def test_a_wrong_folder_leaves_a_good_figure_untouched(store, tmp_path, capsys):
    out = tmp_path / "analysis"
    assert paradox.main(["--results", str(store), "--out", str(out)]) == 0
    good = files(out)
    assert (out / "figure3.png") in good and (out / "paradox.csv") in good
    only_base = tmp_path / "only-base"
    write_run(only_base, "a_b", "gsm8k", "base", binary(0.5, 4))
    for argv in (
        ["--results", str(tmp_path / "resutls")],  # a typo
        ["--results", str(store), "--protocol", "foo"],  # a filter no run has
        ["--results", str(only_base)],  # nothing to compute
    ):
        assert paradox.main([*argv, "--out", str(out)]) != 0
        assert files(out) == good  # byte-identical, nothing added
    capsys.readouterr()


def test_a_failed_write_leaves_the_old_file(tmp_path):
    path = write.write_text(tmp_path / "table.csv", "good\n")
    with pytest.raises(RuntimeError), write.atomic(path) as tmp:
        tmp.write_text("half a fi")
        raise RuntimeError("disk full")
    assert path.read_text() == "good\n" and list(tmp_path.iterdir()) == [path]  # no temporary left behind


def test_summaries_count_what_was_computed(tmp_path, capsys):
    for i, pair in enumerate(["a_b", "c_d"]):
        write_run(tmp_path, pair, "gsm8k", "nudging", binary(0.5, 10), rate=0.1 * (i + 1))
        write_run(tmp_path, pair, "xstest", "nudging", binary(0.5, 10), rate=0.1 * (i + 1))
    write_run(tmp_path, "e_f", "gsm8k", "nudging", binary(0.2, 10), rate=0.4)
    assert paradox.main(["--results", str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "1 fit(s) of 2 benchmark group(s) (1 with fewer than 3 points or constant values: no fit), 5 points" in out
    assert not (tmp_path / "out" / "figure3_nudging_words.png").exists()  # no word-level points: no figure
