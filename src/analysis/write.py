"""Shared writers: CSV, Markdown and LaTeX tables, PNG + PDF figures, notes, number formats.

Missing values are written as missing: an empty CSV field, "n/a" in Markdown and LaTeX; never 0.
"""

from __future__ import annotations

import contextlib
import html
import math
import os
import re
import shutil
from pathlib import Path
from typing import Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

# Files only, no display. pyplot picks its backend lazily, on the first figure, so switching right after the
# import (rather than matplotlib.use before it) costs nothing and keeps the imports first.
plt.switch_backend("Agg")

MISSING = "n/a"

# Legible defaults for every figure (colourblind-friendly cycle: Okabe-Ito).
OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
plt.rcParams.update(
    {
        "font.size": 11,
        "axes.titlesize": 12,
        "axes.labelsize": 11,
        "xtick.labelsize": 10,
        "ytick.labelsize": 10,
        "legend.fontsize": 9,
        "figure.dpi": 100,
        "savefig.dpi": 200,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.prop_cycle": matplotlib.cycler(color=OKABE_ITO),
        "pdf.fonttype": 42,
    }
)


def is_missing(value) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def fmt(value, digits: int = 2) -> str:
    """A number with `digits` decimals, or n/a."""
    if is_missing(value):
        return MISSING
    if isinstance(value, (int, float)):
        return f"{value:.{digits}f}"
    return str(value)


def fmt_pct(value, digits: int = 1) -> str:
    """A fraction as a percentage ('22.2%'), or n/a."""
    return MISSING if is_missing(value) else f"{100 * value:.{digits}f}%"


def fmt_p(value) -> str:
    if is_missing(value):
        return MISSING
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def fmt_ci(mean, low, high, digits: int = 2) -> str:
    """'0.31 [0.22, 0.40]', or n/a."""
    if is_missing(mean):
        return MISSING
    if is_missing(low) or is_missing(high):
        return fmt(mean, digits)
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def min_span(ax, values, span: float, lower: float | None = None, upper: float | None = None) -> None:
    """Give a y axis at least `span` of range around its data, so that one or two nearly equal points do
    not fill the panel with a magnified axis (clipped to [lower, upper] when given)."""
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    if len(values) == 0 or np.ptp(values) >= span:
        return
    low, high = values.min() - (span - np.ptp(values)) / 2, values.max() + (span - np.ptp(values)) / 2
    if lower is not None and low < lower:
        low, high = lower, lower + span
    if upper is not None and high > upper:
        low, high = max(upper - span, lower if lower is not None else upper - span), upper
    ax.set_ylim(low, high)


@contextlib.contextmanager
def atomic(path: Path):
    """Yield a temporary path beside `path` that replaces it in one step once written (os.replace): a reader
    never sees half a file, and a write that fails leaves the file that was there untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> Path:
    with atomic(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def copy_file(source: Path, target: Path) -> Path:
    with atomic(target) as tmp:
        shutil.copyfile(source, tmp)
    return Path(target)


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    with atomic(path) as tmp:
        frame.to_csv(tmp, index=False, na_rep="", float_format="%.6g")
    return Path(path)


def _cell(value) -> str:
    if is_missing(value):
        return MISSING
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table of the frame as it is (format numbers before calling for fixed digits)."""
    if frame.empty:
        return "_(no rows)_"
    head = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = [
        "| " + " | ".join(_cell(v).replace("|", "\\|").replace("\n", " ") for v in row) + " |"
        for row in frame.itertuples(index=False)
    ]
    return "\n".join([head, rule, *body])


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "→": r"$\rightarrow$",
    "±": r"$\pm$",
    "≥": r"$\geq$",
    "≤": r"$\leq$",
    "τ": r"$\tau$",
    "α": r"$\alpha$",
    "ρ": r"$\rho$",
    "·": r"$\cdot$",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def latex_table(frame: pd.DataFrame, caption: str = "", label: str = "") -> str:
    """A booktabs tabular in a table* scaled to the text width (needs booktabs and graphicx)."""
    cols = "l" * len(frame.columns)
    lines = [
        r"\begin{table*}[t]",
        r"\centering",
        r"\resizebox{\textwidth}{!}{%",
        rf"\begin{{tabular}}{{{cols}}}",
        r"\toprule",
        " & ".join(latex_escape(c) for c in frame.columns) + r" \\",
        r"\midrule",
    ]
    for row in frame.itertuples(index=False):
        cells = [latex_escape(_cell(v)) for v in row]
        if all(c == "" for c in cells[1:]) and cells[0]:  # a section row (e.g. "Cross-family pairs")
            lines.append(rf"\multicolumn{{{len(cells)}}}{{l}}{{\textit{{{cells[0]}}}}} \\")
        else:
            lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}"]
    if caption:
        lines.append(rf"\caption{{{latex_escape(caption)}}}")
    if label:
        lines.append(rf"\label{{{label}}}")
    lines.append(r"\end{table*}")
    return "\n".join(lines) + "\n"


def write_table(
    blocks: list[tuple[str, pd.DataFrame]], out: Path, stem: str, title: str, notes: Sequence[str] = ()
) -> list[Path]:
    """Write `stem`.md and `stem`.tex: one titled block per (heading, display frame), notes below.

    The display frames hold formatted text (e.g. '0.31 [0.22, 0.40]'); the machine-readable CSV is
    written separately by the caller."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md = [f"# {title}", ""]
    tex = [
        f"% {title}",
        "% generated by python -m analysis.tables from stored runs; do not edit",
        "% needs \\usepackage{booktabs,graphicx}",
        "",
    ]
    for heading, frame in blocks:
        if heading:
            md += [f"## {heading}", ""]
        md += [markdown_table(frame), ""]
        tex.append(latex_table(frame, caption=f"{title}" + (f": {heading}" if heading else "")))
    if notes:
        md += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
        tex += [f"% note: {n}" for n in notes]
    return [write_text(out / f"{stem}.md", "\n".join(md)), write_text(out / f"{stem}.tex", "\n".join(tex) + "\n")]


def save_figure(fig, out: Path, stem: str) -> list[Path]:
    """`stem`.png (200 dpi) and `stem`.pdf, then close the figure."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    try:
        for path in paths:
            with atomic(path) as tmp:
                fig.savefig(tmp, format=path.suffix[1:], bbox_inches="tight")
    finally:
        plt.close(fig)
    return paths


def write_notes(out: Path, stem: str, title: str, settings: list[str], notes: list[str]) -> Path:
    """`stem`_notes.md: the settings the numbers came from and everything left out, for the report."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}: settings and notes", "", "Settings used:", ""]
    lines += [f"- {s}" for s in settings] or ["- (no runs)"]
    lines += ["", "Notes:", ""] + ([f"- {n}" for n in notes] or ["- none"])
    return write_text(out / f"{stem}_notes.md", "\n".join(lines) + "\n")


def report_notes(name: str, settings: list[str], notes: list[str]) -> None:
    """Print the settings line(s) and notes of a command to stdout."""
    print(f"[{name}] settings: " + (" | ".join(settings) if settings else "no runs used"))
    for n in notes:
        print(f"[{name}] note: {n}")


# ---- a small Markdown-to-HTML converter for the report (it renders only what our writers produce) ----

_HTML_STYLE = """<style>
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; max-width: 1180px; margin: 2em auto;
       padding: 0 1em; line-height: 1.45; color: #1a1a1a; }
.scroll { overflow-x: auto; max-width: 100%; margin: 0.6em 0 1.2em; }
table { border-collapse: collapse; font-size: 0.88em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
td { max-width: 36em; overflow-wrap: break-word; }
th { background: #f1f1f1; }
tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; border: 1px solid #ddd; }
figure { margin: 1em 0; } figcaption { font-size: 0.9em; color: #444; }
code { background: #f4f4f4; padding: 0 3px; overflow-wrap: anywhere; } details { margin: 0.5em 0 1em; }
h1 { border-bottom: 2px solid #333; } h2 { border-bottom: 1px solid #aaa; margin-top: 2em; }
.box { border: 2px solid #0072B2; background: #f3f8fc; border-radius: 6px; padding: 0.2em 1.2em; margin: 1em 0 1.5em; }
.stored { border-left: 4px solid #E69F00; padding-left: 1em; }
</style>"""


def anchor(heading: str) -> str:
    """The id of a heading in the HTML page (and a link target in the contents)."""
    return re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")


def _inline_plain(text: str) -> str:
    text = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)
    text = re.sub(r"(?<![\w*])\*(?![\s*])([^*]+?)(?<!\s)\*(?![\w*])", r"<em>\1</em>", text)
    text = re.sub(r"(?<![\w/])_(?![\s_])(.+?)(?<!\s)_(?![\w/])", r"<em>\1</em>", text)  # not snake_case
    return re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r'<a href="\2">\1</a>', text)


def _inline(text: str) -> str:
    """Code spans, **bold**, *italics* and [links](href); nothing is interpreted inside a code span."""
    parts = re.split(r"`([^`]+)`", html.escape(text, quote=False))
    return "".join(f"<code>{p}</code>" if i % 2 else _inline_plain(p) for i, p in enumerate(parts))


def _split_row(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [c.strip().replace("\\|", "|") for c in cells]


def markdown_to_html(text: str, title: str = "") -> str:
    """Headings, pipe tables, '- ' lists, '![caption](src)' images, raw HTML lines and paragraphs."""
    out: list[str] = []
    para: list[str] = []
    lines, i = text.splitlines(), 0

    def flush():
        if para:
            out.append(f"<p>{_inline(' '.join(para))}</p>")
            para.clear()

    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        image = re.fullmatch(r"!\[([^\]]*)\]\(([^)\s]+)\)", stripped)
        if not stripped:
            flush()
        elif stripped.startswith("#"):
            flush()
            level = min(len(stripped) - len(stripped.lstrip("#")), 6)
            text_ = stripped[level:].strip()
            out.append(f'<h{level} id="{anchor(text_)}">{_inline(text_)}</h{level}>')
        elif stripped.startswith("|"):
            flush()
            rows = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append(_split_row(lines[i]))
                i += 1
            body = [r for r in rows[1:] if not all(set(c) <= set("-: ") for c in r)]
            out.append(  # wide tables scroll inside the page column instead of overflowing it
                '<div class="scroll"><table><thead><tr>'
                + "".join(f"<th>{_inline(c)}</th>" for c in rows[0])
                + "</tr></thead><tbody>"
                + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body)
                + "</tbody></table></div>"
            )
            continue
        elif stripped.startswith("- "):
            flush()
            items = []
            while i < len(lines) and lines[i].strip().startswith("- "):
                items.append(f"<li>{_inline(lines[i].strip()[2:])}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
            continue
        elif image:
            flush()
            out.append(
                f'<figure><a href="{image.group(2)}"><img src="{image.group(2)}" '
                f'alt="{html.escape(image.group(1))}"></a><figcaption>{_inline(image.group(1))}'
                "</figcaption></figure>"
            )
        elif stripped.startswith("<"):
            flush()
            out.append(stripped)
        else:
            para.append(stripped)
        i += 1
    flush()
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title>{_HTML_STYLE}</head>\n<body>\n" + "\n".join(out) + "\n</body></html>\n"
    )
