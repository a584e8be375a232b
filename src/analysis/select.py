"""Choosing which stored runs an artefact uses, without ever mixing settings silently.

Several runs can share (pair, benchmark, method): another tau, a 100-sample subset and the full set,
another protocol. Each artefact therefore picks ONE setting per benchmark (`choose_settings`: the
setting with the most runs among the ones it needs, unless the user names one with `--n` or
`--protocol`), keeps the newest run of each (pair, benchmark, method, parameters) in it, and writes
a note for everything it left out. Units are checked with `require_one_unit`.
"""

from __future__ import annotations

import pandas as pd


class UnitMixError(ValueError):
    """Raised when rates of different units (token- and word-level) would share one fit or column."""


def require_one_unit(units, what: str) -> str:
    """The single intervention unit of `units`, or a clear error naming the mix."""
    found = sorted(set(pd.Series(list(units)).dropna().astype(str)))
    if len(found) > 1:
        raise UnitMixError(
            f"{what} mixes intervention rates of different units ({', '.join(found)}): "
            "token-level and word-level rates are not comparable; fit or tabulate each unit "
            "separately (group by intervention_unit)"
        )
    return found[0] if found else "token"


def excluded_notes(frame: pd.DataFrame) -> list[str]:
    """One note per reason a stored score was left out, with the runs it concerns."""
    notes = []
    for reason, runs in frame[frame["score_excluded"] != ""].groupby("score_excluded", sort=True):
        where = ", ".join(sorted(set(runs["pair"] + "/" + runs["benchmark"] + "/" + runs["method"])))
        notes.append(f"left out {len(runs)} run(s) ({where}): {reason}")
    return notes


def filter_runs(frame: pd.DataFrame, n: str | None = None, protocol: str | None = None) -> pd.DataFrame:
    """Runs with subset size `n` (e.g. "100", "full") and protocol name `protocol`, when given."""
    keep = pd.Series(True, index=frame.index)
    if n is not None:
        keep &= frame["n_spec"].astype(str) == str(n)
    if protocol is not None:
        keep &= frame["protocol"] == protocol
    return frame[keep]


def _rank(group: pd.DataFrame, prefer_full: bool | None) -> tuple:
    """Order of preference of one setting: most runs, then subset vs full set, then larger n, newest."""
    n_spec = str(group["n_spec"].iloc[0])
    is_full = n_spec == "full"
    size = pd.to_numeric(group["n_samples"], errors="coerce").max()
    full_pref = 0 if prefer_full is None else (1 if is_full == prefer_full else 0)
    return (len(group), full_pref, size, group["created_at"].max())


def _key(row, by):
    return tuple(row[c] for c in by) if isinstance(by, (list, tuple)) else row[by]


def choose_settings(runs: pd.DataFrame, prefer_full: bool | None = False, by: str | list = "benchmark") -> dict:
    """For each value of `by` (a column, or a list of columns), the setting_key with the most runs
    (ties: see `_rank`)."""
    chosen = {}
    for value, group in runs.groupby(by, sort=False):
        ranked = sorted(
            group.groupby("setting_key", sort=False), key=lambda kv: _rank(kv[1], prefer_full), reverse=True
        )
        chosen[value] = ranked[0][0]
    return chosen


def in_chosen_settings(
    runs: pd.DataFrame, chosen: dict, by: str | list = "benchmark", notes: list | None = None, what: str = ""
) -> pd.DataFrame:
    """The runs of each benchmark's (or `by` group's) chosen setting; a note for each setting left out."""
    if runs.empty:
        return runs
    keys = runs.apply(lambda r: _key(r, by), axis=1)
    keep = pd.Series([chosen.get(k) == s for k, s in zip(keys, runs["setting_key"])], index=runs.index)
    if notes is not None:
        left_out = runs[~keep].assign(_key=keys[~keep])
        for (value, setting), left in left_out.groupby(["_key", "setting"], sort=True):
            used = runs[keep & (keys == value)]["setting"]
            notes.append(
                f"{what}{_name(value)}: left out {len(left)} run(s) in another setting [{setting}]"
                f"; used [{used.iloc[0] if len(used) else 'none'}]"
            )
    return runs[keep]


def newest(runs: pd.DataFrame, keys: list[str], notes: list | None = None, what: str = "") -> pd.DataFrame:
    """One run per `keys` (the newest by created_at); a note when older duplicates were dropped."""
    if runs.empty:
        return runs
    ordered = runs.sort_values("created_at", kind="stable")
    last = ordered.drop_duplicates(keys, keep="last")
    if notes is not None and len(last) < len(runs):
        dup = ordered[ordered.duplicated(keys, keep="last")]
        notes.append(
            f"{what}{len(dup)} older duplicate run(s) of the same cell and setting left out "
            f"(kept the newest): {', '.join(dup['run_name'].head(5))}{' ...' if len(dup) > 5 else ''}"
        )
    return last.sort_index()


def _name(value) -> str:
    return "/".join(value) if isinstance(value, tuple) else value


def describe_chosen(runs: pd.DataFrame, chosen: dict[str, str]) -> list[str]:
    """'benchmark: setting' lines for the settings `choose_settings` picked."""
    text = dict(zip(runs["setting_key"], runs["setting"]))
    return [f"{_name(value)}: {text[key]}" for value, key in sorted(chosen.items())]


def setting_label(run) -> str:
    """A run's setting as a short line for readers ('our protocol, 12 items (seed 0), 128 new tokens, stop
    strings, no LLM judge'); the full `setting` string, protocol options included, goes to the notes."""
    protocol = {"ours": "our protocol", "reference": "the paper's reference protocol"}.get(
        run["protocol"], f"protocol {run['protocol']}"
    )
    items = "full test set" if str(run["n_spec"]) == "full" else f"{run['n_spec']} items (seed {run['seed']})"
    split = "" if run["split"] == "test" else f", {run['split']} split"
    stop = "stop strings" if run["stop"] not in ("", "[]") else "no stop strings"
    judge = "no LLM judge" if run["judge"] in ("", "none", None) else f"judge {run['judge']}"
    return f"{protocol}, {items}{split}, {run['max_new_tokens']} new tokens, {stop}, {judge}"


def setting_labels(frame: pd.DataFrame | None) -> dict[str, str]:
    """{full setting string: `setting_label`} of the runs of `frame`."""
    return {} if frame is None or frame.empty else dict(zip(frame["setting"], frame.apply(setting_label, axis=1)))


def with_short_settings(line: str, frame: pd.DataFrame | None) -> str:
    """`line` with every full setting string of `frame`'s runs replaced by its short label (for figure footers)."""
    for setting, label in setting_labels(frame).items():
        line = line.replace(setting, label)
    return line


def short_settings(lines: list[str], frame: pd.DataFrame | None = None) -> str:
    """The distinct settings of 'benchmark: setting' lines (for figure footers): as `setting_label` lines when
    `frame` holds their runs, else without their stop strings."""
    label = setting_labels(frame)
    settings = {line.split(": ", 1)[-1] for line in lines}
    short = sorted({label.get(s, s.split(", stop=")[0]) for s in settings})
    return "; ".join(short) if short else "no runs"
