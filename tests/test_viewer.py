"""The token viewer (analysis.viewer): its data, its refusals, and the page in a real headless browser.

The store is synthetic (tests/synthetic_store.py) with hand-made traces whose every value is known:
GSM8K under base, NUDGING and BlendIn on one pair whose base tokenizer is a tiny local tokenizer.json
(so top tokens are decoded), plus one XSTest run. The browser tests drive Debian's chromium through
selenium; without it they skip and say how to install it (`make install` does, through apt-get).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from synthetic_store import write_run

from analysis import viewer
from analysis.load import load_runs, load_tokens

PAIR = "llama1b_llama8b"
IDS = ["gsm8k-0", "gsm8k-1", "gsm8k-2"]
PIECES = ["The", " answer", " is", " 4", "2", "."]
STOP_PIECES = ["\n\nQuestion", ":"]  # steps that spelled the stop string: past the stored output
CONSULTED = {1: (12, 0.62, 3, False), 3: (7, 0.55, 1, True)}  # step -> guidance top id, its prob, rank, spelled
ALPHA = {1: 0.3, 3: 0.8}


def make_trace(sid: str, method: str, cut: bool) -> tuple[pd.DataFrame, str]:
    """One sample's trace and output: base steps choose token 5 + step, steps 1 and 3 are uncertain."""
    pieces = PIECES + (STOP_PIECES if cut else [])
    output = "".join(PIECES)
    rows, offset = [], 0
    for step, piece in enumerate(pieces):
        offset += len(piece)
        guided = method != "base" and step in CONSULTED
        gid, gprob, rank, spelled = CONSULTED.get(step, (-1, np.nan, -1, False))
        base_id = 5 + step
        # NUDGING takes the guidance's token (step 3: the same as the base's); BlendIn blends with ALPHA
        chosen = gid if guided and step == 1 else base_id
        rows.append(
            dict(
                sample_id=sid,
                step=step,
                base_top_prob=0.25 + 0.05 * step if step in CONSULTED else 0.9,
                base_top_id=base_id,
                consulted=guided,
                applied=guided,
                alpha=ALPHA[step] if guided and method == "blendin" else np.nan,
                blend_prob=0.4 if guided and method == "blendin" else np.nan,
                source=(2 if method == "blendin" else 1) if guided else 0,
                chosen_id=chosen,
                override=chosen != base_id,
                guide_top_id=gid if guided else -1,
                guide_top_prob=gprob if guided else np.nan,
                base_prob_of_guide_top=0.05 if guided else np.nan,
                guide_top_rank=rank if guided else -1,
                guide_top_in_base_top_p=guided,
                guide_top_spelled=bool(spelled) if guided else False,
                base_top_p_size=4 if guided else -1,
                top100_overlap=0.5 if guided else np.nan,
                text_offset=offset,
            )
        )
    return pd.DataFrame(rows), output


def write_tokenizer(folder: Path) -> None:
    """A word-level tokenizer.json whose id i decodes to 'w<i>', in a folder that looks like a model."""
    from tokenizers import Tokenizer, models

    folder.mkdir(parents=True)
    Tokenizer(models.WordLevel({f"w{i}": i for i in range(40)}, unk_token="w0")).save(str(folder / "tokenizer.json"))
    (folder / "config.json").write_text("{}")


def build_store(results: Path) -> Path:
    tokenizer = results.parent / "tiny_base"
    write_tokenizer(tokenizer)
    scores = {"base": [0.0, 0.0, 1.0], "nudging": [1.0, 0.0, 1.0], "blendin": [1.0, 1.0, 0.0]}
    for method, method_scores in scores.items():
        frames, outputs = zip(*(make_trace(sid, method, cut=i == 0) for i, sid in enumerate(IDS)))
        run = write_run(
            results,
            PAIR,
            "gsm8k",
            method,
            method_scores,
            ids=IDS,
            tokens=pd.concat(frames, ignore_index=True),
            outputs=list(outputs),
            rate=0.0 if method == "base" else 2 / 6,
        )
        config = yaml.safe_load((run / "config.yaml").read_text())
        config["pair"]["base"]["source"] = str(tokenizer)
        (run / "config.yaml").write_text(yaml.safe_dump(config))
        if method == "blendin":  # what the failure detectors found in BlendIn's outputs
            flags = {"gsm8k-0": {"loop": True}, "gsm8k-1": {"loop": False}, "gsm8k-2": {"buried": True}}
            lines = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
            (run / "samples.jsonl").write_text("".join(json.dumps({**r, **flags[r["id"]]}) + "\n" for r in lines))
    # XSTest: no text_offset stored (an older run) and a base model whose tokenizer is not here
    write_run(results, PAIR, "xstest", "nudging", [1.0, 0.0], ids=["xstest-0", "xstest-1"], rate=0.5)
    return results


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return build_store(tmp_path_factory.mktemp("viewer") / "results")


@pytest.fixture(scope="module")
def page(store) -> Path:
    return viewer.write_viewer(store)


def read_js(path: Path, prefix: str):
    text = path.read_text(encoding="utf-8")
    assert text.startswith(prefix)
    return json.loads(text[len(prefix) :].rstrip().rstrip(";").rstrip(")"))


def index_of(page: Path) -> dict:
    return read_js(page.parent / "data" / "index.js", "window.BLENDIN_VIEWER = ")


def chunk_of(page: Path, key: str) -> dict:
    path = page.parent / "data" / f"{key}.js"
    return read_js(path, f'BLENDIN_VIEWER_CHUNK("{key}", ')


# ---- the data, without a browser -----------------------------------------------------------------


def test_token_pieces_join_up_to_the_output():
    assert viewer.token_pieces("The answer", [3, 10]) == (["The", " answer"], "")
    # a stalled offset (a token completing no character yet) gives "", steps past the output None
    assert viewer.token_pieces("abc", [1, 1, 3, 5, 7]) == (["a", "", "bc", None, None], "")
    assert viewer.token_pieces("abcdef", [2, 8]) == (["ab", "cdef"], "")  # straddles the stop string
    assert viewer.token_pieces("abc", [1]) == (["a"], "bc")


def test_default_location_pieces_and_decoded_tokens(store, page):
    assert page == store / "report" / "viewer" / "index.html"
    index = index_of(page)
    assert [g["benchmark"] for g in index["groups"]] == ["gsm8k", "xstest"]
    gsm8k = index["groups"][0]
    assert [index["runs"][k]["method"] for k in gsm8k["runs"]] == ["base", "nudging", "blendin"]
    nudging = index["runs"][gsm8k["runs"][1]]
    assert nudging["score"] == [1.0, 0.0, 1.0] and nudging["decoded"]
    sample = chunk_of(page, f"{nudging['key']}-0")["samples"]["gsm8k-0"]
    assert sample["tok"]["p"] == PIECES + [None, None]  # the stop string's steps lie past the output
    vocab = chunk_of(page, f"{nudging['key']}-0")["vocab"]
    assert vocab["12"] == "w12" and vocab["5"] == "w5"
    xstest = index["runs"][index["groups"][1]["runs"][0]]
    assert not xstest["decoded"] and "token ids shown" in xstest["tokens"]


def test_top_tokens_decoded_like_the_model_tokenizer(model_dirs, tmp_path):
    """With a saved model folder as the base (conftest's SentencePiece-style tokenizer, '▁' spaces and
    byte fallback), every id on the page reads as the model's own tokenizer decodes it."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dirs["cross_base"])
    trace, output = make_trace("gsm8k-0", "nudging", cut=False)
    ids = tokenizer("Question: What is 12 plus 30? Answer: 42.")["input_ids"][: len(trace)]
    trace["base_top_id"] = trace["chosen_id"] = ids
    run = write_run(
        tmp_path / "results", PAIR, "gsm8k", "nudging", [1.0], ids=["gsm8k-0"], tokens=trace, outputs=[output]
    )
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["pair"]["base"]["source"] = model_dirs["cross_base"]
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    page = viewer.write_viewer(tmp_path / "results")
    vocab = chunk_of(page, "r0-0")["vocab"]
    assert {int(i): text for i, text in vocab.items() if int(i) in ids} == {i: tokenizer.decode([i]) for i in ids}


def test_missing_results_folder_fails_loudly(tmp_path, capsys):
    assert viewer.main(["--results", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "does not exist" in err and "Fix:" in err


def test_results_without_runs_fail_loudly(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    assert viewer.main(["--results", str(tmp_path)]) == 1  # nothing to show (2: a bad input)
    err = capsys.readouterr().err
    assert "no finished runs" in err and "python -m blendin.run" in err
    assert not (tmp_path / "report").exists()


def test_runs_filter_that_matches_nothing_lists_the_runs(store, tmp_path, capsys):
    assert viewer.main(["--results", str(store), "--runs", "gsm8k/*", "nudgin", "--out", str(tmp_path / "v")]) == 2
    err = capsys.readouterr().err
    assert "--runs nudgin matches no run" in err
    assert f"{PAIR}/gsm8k/" in err and f"{PAIR}/xstest/" in err
    assert not (tmp_path / "v").exists()
    # patterns match on pair/benchmark/run, run name, method, benchmark or pair
    kept = index_of(viewer.write_viewer(store, tmp_path / "v", runs=["xstest"]))
    assert [g["benchmark"] for g in kept["groups"]] == ["xstest"]


def test_a_failed_build_never_replaces_a_good_viewer(store, tmp_path, monkeypatch):
    out = tmp_path / "viewer"
    viewer.write_viewer(store, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(viewer.ViewerError, match="matches no run"):
        viewer.write_viewer(store, out, runs=["no-such-run"])

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(viewer, "build_data", broken)
    with pytest.raises(RuntimeError):
        viewer.write_viewer(store, out)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["viewer"]  # no half-built folder left behind


def test_refuses_to_replace_a_folder_that_is_not_a_viewer(store, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(viewer.ViewerError, match="not a viewer folder"):
        viewer.write_viewer(store, tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


# ---- the page in headless chromium ---------------------------------------------------------------

INSTALL = "Fix: make install (scripts/install_browser.sh), or as root: apt-get install -y chromium chromium-driver"


@pytest.fixture(scope="module")
def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip(f"selenium is not installed: pip install -e '.[test]'. {INSTALL}")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        pytest.skip(f"no headless browser: chromium and chromedriver are not on PATH. {INSTALL}")
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must never download a driver
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        driver = webdriver.Chrome(service=Service(driver_path), options=options)
    except Exception as err:  # installed but broken (say a chromedriver of another version): fail, do not hide it
        pytest.fail(f"headless chromium ({binary}, {driver_path}) did not start: {err}. {INSTALL}")
    yield driver
    driver.quit()


def open_page(browser, page: Path):
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(page.as_uri())
    wait_for_items(browser)
    return WebDriverWait


def wait_for_items(browser, count: int | None = None):
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(driver):
        status = driver.find_element("id", "status")
        shown = status.get_attribute("data-count")
        return shown is not None and status.text.startswith("Items") and (count is None or int(shown) == count)

    WebDriverWait(browser, 10).until(ready)


def severe(browser) -> list:
    return [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


def test_page_loads_without_console_errors(browser, page):
    open_page(browser, page)
    assert severe(browser) == []
    assert len(browser.find_elements("css selector", "article.item")) == 3
    # base, NUDGING and BlendIn side by side for every item
    assert len(browser.find_elements("css selector", "article.item .col")) == 9


def test_one_token_element_per_trace_row(browser, page, store):
    open_page(browser, page)
    index = browser.execute_script("return window.BLENDIN_VIEWER")
    runs = load_runs(store)
    checked = 0
    for box in browser.find_elements("css selector", ".text[data-run]"):
        run = index["runs"][int(box.get_attribute("data-run"))]
        row = runs[runs["run_dir"].str.endswith(run["run"].split("/")[-1])].iloc[0]
        trace = load_tokens(row)
        expected = int((trace["sample_id"] == box.get_attribute("data-sample")).sum())
        assert len(box.find_elements("css selector", ".tok")) == expected
        checked += 1
    assert checked == 9
    # the text of the pieces is the stored output, and the stop string's steps are marked as cut
    first = browser.find_element("css selector", '.text[data-sample="gsm8k-0"]')
    tokens = first.find_elements("css selector", ".tok")
    assert "".join(t.get_attribute("textContent") for t in tokens[: len(PIECES)]) == "".join(PIECES)
    assert all("cut" in t.get_attribute("class") for t in tokens[len(PIECES) :])
    assert severe(browser) == []


def tip_fields(browser) -> dict:
    tip = browser.find_element("id", "tip")
    assert tip.is_displayed()
    return {dd.get_attribute("data-f"): dd.text for dd in tip.find_elements("css selector", "dd")}


def test_hover_and_focus_show_the_trace_values(browser, page):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    open_page(browser, page)
    index = browser.execute_script("return window.BLENDIN_VIEWER")
    blendin = next(r["key"] for r in index["runs"] if r["method"] == "blendin")
    box = browser.find_element("css selector", f'.col[data-run="{blendin}"] .text[data-sample="gsm8k-1"]')
    tokens = box.find_elements("css selector", ".tok")
    ActionChains(browser).move_to_element(tokens[1]).perform()  # step 1: a blend with alpha 0.3
    fields = tip_fields(browser)
    assert fields["u"] == "0.300" and fields["alpha"] == "0.300"
    assert fields["base_top"] == '"w6" (id 6), p 0.300'
    assert fields["guide_top"] == '"w12" (id 12), p 0.620'
    assert fields["rank"].startswith("3 (base p 0.050)") and fields["spelled"] == "no"
    assert "kept" not in tokens[1].get_attribute("class")  # the blend changed the token
    assert "kept" in tokens[3].get_attribute("class")  # ...and kept the base's own top token at step 3
    # keyboard: focus a token, move with the arrow key to step 3 (spelled, rank 1)
    ActionChains(browser).move_to_element(browser.find_element("css selector", "h1")).perform()  # hover ends
    browser.execute_script("arguments[0].focus()", tokens[2])
    tokens[2].send_keys(Keys.ARROW_RIGHT)
    assert browser.switch_to.active_element == tokens[3]
    fields = tip_fields(browser)
    assert fields["u"] == "0.400" and fields["alpha"] == "0.800"
    assert fields["rank"].startswith("1 ") and fields["spelled"] == "yes"
    tokens[3].send_keys(Keys.ESCAPE)
    assert not browser.find_element("id", "tip").is_displayed()
    assert severe(browser) == []


def test_filters_change_what_is_shown(browser, page):
    from selenium.webdriver.support.ui import Select

    open_page(browser, page)

    def shown():
        return [a.get_attribute("data-id") for a in browser.find_elements("css selector", "article.item")]

    assert shown() == IDS
    Select(browser.find_element("id", "f-outcome")).select_by_value("wrong")  # wrong under BlendIn
    wait_for_items(browser, 1)
    assert shown() == ["gsm8k-2"]
    Select(browser.find_element("id", "f-outcome")).select_by_value("any")
    Select(browser.find_element("id", "f-sort")).select_by_value("score-diff")  # BlendIn minus NUDGING
    wait_for_items(browser, 3)
    assert shown() == ["gsm8k-1", "gsm8k-0", "gsm8k-2"]
    rate = browser.find_element("id", "f-rate-min")
    rate.clear()
    rate.send_keys("0.5\t")  # BlendIn's rate is 1/3 on every item
    wait_for_items(browser, 0)
    assert shown() == []
    Select(browser.find_element("id", "f-benchmark")).select_by_value("xstest")
    wait_for_items(browser, 2)
    assert shown() == ["xstest-0", "xstest-1"]
    # a run without text_offset shows one element per step, labelled with the chosen token id
    assert len(browser.find_elements("css selector", '.text[data-sample="xstest-0"] .tok.idtok')) == 6
    assert severe(browser) == []


def test_the_failure_filter_shows_the_outputs_a_detector_flagged(browser, page):
    from selenium.webdriver.support.ui import Select

    runs = index_of(page)["runs"]
    blendin = next(k for k, r in enumerate(runs) if r["method"] == "blendin" and r["run"].split("/")[1] == "gsm8k")
    assert runs[blendin]["fail"] == [["loop"], [], ["buried"]]
    assert all(flags == [] for r in runs if r["method"] == "base" for flags in r["fail"])  # none stored: none shown
    open_page(browser, page)
    Select(browser.find_element("id", "f-ref")).select_by_value(str(blendin))

    def shown():
        return [a.get_attribute("data-id") for a in browser.find_elements("css selector", "article.item")]

    for failure, ids in (("buried", ["gsm8k-2"]), ("loop", ["gsm8k-0"]), ("none", ["gsm8k-1"]), ("any", IDS)):
        Select(browser.find_element("id", "f-failure")).select_by_value(failure)
        wait_for_items(browser, len(ids))
        assert shown() == ids, failure
    assert severe(browser) == []


def sampled_store(results: Path) -> Path:
    """A BlendIn run with two sampled outputs per item: output 1 stops after three pieces."""
    frames, outputs = zip(*(make_trace(sid, "blendin", cut=False) for sid in IDS[:2]))
    run = write_run(
        results, PAIR, "gsm8k", "blendin", [1.0, 0.0], ids=IDS[:2], tokens=pd.concat(frames), outputs=list(outputs)
    )
    records = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    trace = pd.read_parquet(run / "tokens.parquet").assign(sample=0)
    later = [{**r, "sample": 1, "output": "".join(PIECES[:3]), "score": 0.0, "prediction": "n/a"} for r in records]
    short = trace[trace["step"] < 3].assign(sample=1)
    lines = [{**r, "sample": 0} for r in records] + later
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    pd.concat([trace, short], ignore_index=True).to_parquet(run / "tokens.parquet", index=False)
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**metrics, "samples_per_item": 2}))
    return results


def test_each_sampled_output_of_an_item_can_be_picked(browser, tmp_path):
    page = viewer.write_viewer(sampled_store(tmp_path / "results"))
    open_page(browser, page)
    column = browser.find_element("css selector", 'article.item[data-id="gsm8k-0"] .col')
    assert "2 samples per item" in column.find_element("css selector", "h3").text
    assert [b.text for b in column.find_elements("css selector", "button.pick")] == ["0", "1"]
    assert len(column.find_elements("css selector", ".tok")) == len(PIECES)
    column.find_element("css selector", 'button.pick[data-pick="1"]').click()
    wait_for_items(browser)
    column = browser.find_element("css selector", 'article.item[data-id="gsm8k-0"] .col')
    tokens = column.find_elements("css selector", ".tok")
    assert "".join(t.get_attribute("textContent") for t in tokens) == "".join(PIECES[:3])
    assert "on" in column.find_element("css selector", 'button.pick[data-pick="1"]').get_attribute("class")
    assert "score 0" in column.find_element("css selector", ".meta").text  # the picked output's own score
    assert severe(browser) == []
