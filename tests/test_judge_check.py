"""`python -m blendin.judge_check` and the just-eval rubric: template recovery from the stored
judgements, agreement metrics against a hand computation, malformed answers, the item cache, and the
command end to end against a stub OpenAI-compatible server (http.server in a thread; no model)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from blendin import judge_check as jc
from blendin.data import DataError, data_dir
from blendin.judges import (
    JUSTEVAL_JUDGEMENTS,
    judge_safety,
    justeval_judgements,
    justeval_template,
    parse_safety,
    recover_template,
)

DATA = data_dir()
needs_data = pytest.mark.skipif(not (DATA / JUSTEVAL_JUDGEMENTS).is_dir(), reason="no just-eval judgements")


def _records() -> list[dict]:
    """The stored judgements, read here with json (independently of the module under test)."""
    return [r for path in sorted((DATA / JUSTEVAL_JUDGEMENTS).glob("*.json")) for r in json.loads(path.read_text())]


# ---------------------------------------------------------------- the just-eval rubric
@needs_data
def test_the_recovered_template_reproduces_all_1000_stored_prompts():
    records = _records()
    assert len(records) == 1000
    template = justeval_template()
    assert all(template.fill(r["input"], r["output_cand"]) == r["prompt"] for r in records)
    assert all(recover_template(r) == template for r in records)  # every record gives the same template
    assert not any(r["input"] in template.head + template.middle + template.tail for r in records)


@needs_data
def test_the_stored_answers_parse_to_the_stored_scores():
    for r in _records():
        assert parse_safety(r["result"])[0] == int(r["parsed_result"]["safety"]["score"])


@needs_data
def test_the_justeval_rubric_asks_exactly_the_stored_prompt():
    record = _records()[123]

    class Echo:
        safety_rubric = "justeval"

        def chat(self, messages):
            self.messages = messages
            return record["result"]

    judge = Echo()
    verdict = judge_safety(judge, record["input"], record["output_cand"])
    assert judge.messages == [{"role": "user", "content": record["prompt"]}]
    assert (verdict.score, verdict.rubric) == (int(record["parsed_result"]["safety"]["score"]), "justeval")


def test_template_recovery_edge_cases(tmp_path):
    record = {"prompt": "Q: {x}\nhello\nA: world\n```{}```", "input": "hello", "output_cand": "world"}
    template = recover_template(record)
    assert template.fill("a {b}", "c") == "Q: {x}\na {b}\nA: c\n```{}```"
    assert recover_template(dict(record, input="o")) is None  # 'o' occurs more than once
    assert recover_template(dict(record, output_cand="")) is None
    with pytest.raises(DataError, match=f"no just-eval safety judgements at {tmp_path}.*BLENDIN_DATA_DIR"):
        justeval_judgements(str(tmp_path))
    folder = tmp_path / JUSTEVAL_JUDGEMENTS
    folder.mkdir(parents=True)
    (folder / "m.score_safety.chatgpt.json").write_text(json.dumps([record, dict(record, prompt="other")]))
    with pytest.raises(DataError, match="does not reproduce the stored prompt"):
        justeval_template(str(tmp_path))


# ---------------------------------------------------------------- metrics
def test_agreement_equals_a_hand_computation():
    refs = [5, 5, 5, 5, 4, 4, 2, 1, 1, 3]
    got = [5, 5, 4, 5, 4, 2, 2, 1, None, 5]
    rows = [{"model": "m", "id": i, "reference": r, "judge_score": g} for i, (r, g) in enumerate(zip(refs, got))]
    m = jc.agreement(rows)
    # exact: items 0,1,3,4,6,7 = 6 of 10 (the malformed item 8 counts as a disagreement)
    # within 1: those 6, plus item 2 (5 vs 4) = 7 of 10 (item 5: 4 vs 2 and item 9: 3 vs 5 are 2 apart)
    assert (m["n"], m["n_malformed"], m["exact"], m["within_1"]) == (10, 1, 0.6, 0.7)
    # Spearman over the 9 parsed pairs: Pearson correlation of their average ranks
    pairs = [(r, g) for r, g in zip(refs, got) if g is not None]

    def ranks(values):
        ordered = sorted(values)
        return [(2 * ordered.index(v) + ordered.count(v) + 1) / 2 for v in values]

    x, y = ranks([p[0] for p in pairs]), ranks([p[1] for p in pairs])
    mx, my = sum(x) / len(x), sum(y) / len(y)
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y))
    rho = cov / (sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y)) ** 0.5
    assert m["spearman"] == pytest.approx(rho)
    assert m["confusion"]["5"] == {"1": 0, "2": 0, "3": 0, "4": 1, "5": 3, "malformed": 0}
    assert m["confusion"]["1"] == {"1": 1, "2": 0, "3": 0, "4": 0, "5": 0, "malformed": 1}
    assert m["confusion"]["3"]["5"] == 1 and m["confusion"]["4"]["2"] == 1
    assert m["exact_if_always_5"] == 0.4 and m["mean_judge"] == pytest.approx(33 / 9)
    assert jc.agreement([{"reference": 5, "judge_score": 5}] * 3)["spearman"] is None  # undefined, not nan


def test_verdict_rule_of_thumb():
    good = {"exact": 0.85, "within_1": 0.97, "spearman": 0.7}
    assert jc.verdict(good)["may_stand_in"] and "MAY stand in" in jc.verdict(good)["line"]
    constant = {"exact": 0.9, "within_1": 0.95, "spearman": None}  # an always-5 judge
    result = jc.verdict(constant)
    assert not result["may_stand_in"] and result["failed"] == ["spearman undefined < 0.60"]
    assert "Rule of thumb (exact >= 0.80, within_1 >= 0.95, spearman >= 0.60)" in result["line"]


@needs_data
def test_the_stratified_subset_includes_low_scores_and_is_fixed():
    items = jc.reference_items()
    assert len(items) == 1000 and {i["reference_judge"] for i in items} == {"gpt-3.5-turbo-0613"}
    chosen = jc.choose_items(items, 10)
    assert chosen == jc.choose_items(items, 10) and len(chosen) == 50
    mistral = [i["reference"] for i in chosen if i["model"].startswith("Mistral")]
    assert sorted(mistral) == [1, 1, 1, 2, 2, 2, 4, 4, 5, 5]  # round-robin over its scores 1, 2, 4, 5
    assert {i["reference"] for i in chosen if i["model"].startswith("Llama")} == {5}  # all it has
    assert jc.choose_items(items, None) == items


# ---------------------------------------------------------------- with a fake judge
class FakeJudge:
    """Answers the reference score, except for a known few items: 2 points off, or never valid JSON."""

    name = "fake"

    def __init__(self, items, wrong=(), malformed=()):
        self.items, self.wrong, self.malformed, self.calls = items, set(wrong), set(malformed), 0

    def chat(self, messages):
        self.calls += 1
        content = messages[0]["content"]
        [item] = [i for i in self.items if i["instruction"] in content and i["output"] in content]
        key = (item["model"], item["id"])
        if key in self.malformed:
            return "I would rather not say."
        score = item["reference"]
        if key in self.wrong:
            score = score - 2 if score > 2 else score + 2
        return json.dumps({"reason": "fake", "score": score})


@needs_data
@pytest.mark.parametrize("rubric", ["ours", "justeval"])
def test_check_judge_with_a_fake_judge(tmp_path, rubric):
    chosen = jc.choose_items(jc.reference_items(), 3)
    assert len({(i["instruction"], i["output"]) for i in chosen}) == 15  # the fake can tell them apart
    wrong = [(chosen[0]["model"], chosen[0]["id"]), (chosen[7]["model"], chosen[7]["id"])]
    malformed = [(chosen[4]["model"], chosen[4]["id"])]
    judge = FakeJudge(chosen, wrong, malformed)
    report = jc.check_judge(judge, rubric, n=3, out_dir=tmp_path)
    overall = report["overall"]
    assert (overall["n"], overall["n_malformed"]) == (15, 1)
    assert overall["exact"] == pytest.approx(12 / 15) and overall["within_1"] == pytest.approx(12 / 15)
    assert judge.calls == 15 + 2  # the malformed item was asked 3 times
    assert sum(row["malformed"] for row in overall["confusion"].values()) == 1
    model = chosen[0]["model"]
    assert report["per_model"][model]["exact"] == pytest.approx(2 / 3)
    assert report["items"][4]["judge_score"] is None and report["items"][4]["tries"] == 3
    stem = tmp_path / f"fake-{rubric}-n3"
    assert json.loads(stem.with_suffix(".json").read_text())["overall"]["exact"] == overall["exact"]
    text = stem.with_suffix(".md").read_text()
    assert "| **all** | 15 | 1 | 0.800 |" in text and "should NOT stand in" in text

    # run again: every item comes from the cache, nothing is asked; a larger n asks only for the new ones
    again = FakeJudge(chosen)
    assert jc.check_judge(again, rubric, n=3, out_dir=tmp_path)["overall"] == overall and again.calls == 0
    more = jc.choose_items(jc.reference_items(), 4)
    bigger = FakeJudge(more)
    assert jc.check_judge(bigger, rubric, n=4, out_dir=tmp_path)["overall"]["n"] == 20 and bigger.calls == 5


@needs_data
def test_a_torn_cache_line_is_judged_again(tmp_path):
    chosen = jc.choose_items(jc.reference_items(), 1)
    jc.check_judge(FakeJudge(chosen), "ours", n=1, out_dir=tmp_path)
    cache = tmp_path / "fake-ours.items.jsonl"
    lines = cache.read_text().splitlines()
    cache.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])  # killed while writing the last line
    judge = FakeJudge(chosen)
    assert jc.check_judge(judge, "ours", n=1, out_dir=tmp_path)["overall"]["exact"] == 1.0 and judge.calls == 1


# ---------------------------------------------------------------- the command, end to end
@pytest.fixture()
def stub_server():
    """A tiny OpenAI-compatible chat server that always answers the same verdict, and records requests."""
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, body))
            answer = json.dumps(
                {"choices": [{"message": {"role": "assistant", "content": '{"reason": "stub", "score": 5}'}}]}
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen
    server.shutdown()
    server.server_close()


@needs_data
def test_the_command_end_to_end_with_an_http_judge(stub_server, tmp_path, capsys):
    url, seen = stub_server
    jc.main(
        [
            "--judge",
            "openai",
            "--judge-base-url",
            url,
            "--judge-model",
            "stub-model",
            "--n",
            "2",
            "--out",
            str(tmp_path),
            "--workers",
            "2",
        ]
    )
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "http_stub-model-ours-n2.json").read_text())
    items = jc.choose_items(jc.reference_items(), 2)
    share_of_5 = sum(i["reference"] == 5 for i in items) / len(items)
    assert report["overall"]["exact"] == pytest.approx(share_of_5) == report["overall"]["exact_if_always_5"]
    assert report["overall"]["spearman"] is None and not report["verdict"]["may_stand_in"]
    assert len(seen) == 10 and all(path == "/v1/chat/completions" for path, _ in seen)
    assert all(body["temperature"] == 0 and body["model"] == "stub-model" for _, body in seen)
    assert "| **all** | 10 | 0 |" in printed and "Rule of thumb" in printed
    assert (tmp_path / "http_stub-model-ours-n2.md").read_text().strip() in printed


@needs_data
def test_the_command_without_an_llm_and_its_errors(tmp_path, capsys):
    jc.main(["--judge", "none", "--n", "2", "--out", str(tmp_path)])
    assert list(tmp_path.glob("rule_*-none-n2.json")) and "rule-based, no rubric" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        jc.main(["--judge", "none", "--n", "0", "--out", str(tmp_path)])
    assert stop.value.code == 2 and "error: --n 0 must be a positive number" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        jc.main(
            [
                "--judge",
                "openai",
                "--judge-base-url",
                "http://127.0.0.1:9/v1",
                "--judge-model",
                "m",
                "--n",
                "1",
                "--out",
                str(tmp_path),
                "--data-dir",
                str(tmp_path / "nowhere"),
            ]
        )
    assert stop.value.code == 2 and "no just-eval safety judgements at" in capsys.readouterr().err
