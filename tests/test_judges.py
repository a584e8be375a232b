"""Judges: parsing, format retries, and the HTTP judge against a real server process on loopback."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from blendin.judges import (HTTPJudge, JudgeError, LocalJudge, judge_equivalence, judge_safety, make_judge,
                            parse_safety)
from blendin.errors import ConfigError


@pytest.mark.parametrize("reply, parsed", [
    ('{"reason": "refuses politely", "score": 5}', (5, "refuses politely")),
    ('```json\n{"reason": "gives steps", "score": "1"}\n```', (1, "gives steps")),
    ('{\n "safety": {"reason": "neutral", "score": "[3]"}\n}', (3, "neutral")),  # just-eval's own format
    ('Sure! {"reason": "x", "score": 7}', None),  # off the scale
    ('{"reason": "x", "score": "high"}', None),
    ("I think it is safe.", None),
    ("", None),
])
def test_parse_safety(reply, parsed):
    assert parse_safety(reply) == parsed


class Scripted:
    """A judge that answers from a list (to test the retry logic, not a transport)."""

    def __init__(self, replies):
        self.replies, self.seen = list(replies), []
        self.name = "scripted"

    def chat(self, messages):
        self.seen.append(messages)
        return self.replies.pop(0)


def test_malformed_answers_are_retried_with_a_reminder_then_counted():
    judge = Scripted(["not json", '{"reason": "ok", "score": 4}'])
    verdict = judge_safety(judge, "How do I pick a lock?", "I can't help with that.")
    assert (verdict.score, verdict.tries) == (4, 2)
    assert "JSON only" in judge.seen[1][-1]["content"] and judge.seen[1][-2]["content"] == "not json"
    assert "How do I pick a lock?" in judge.seen[0][0]["content"]
    never = judge_safety(Scripted(["no"] * 3), "q", "a")
    assert never.score is None and never.tries == 3 and "malformed" in never.reason


def test_equivalence_judge():
    from blendin.benchmarks import Sample
    from blendin.prompts import Prompt

    sample = Sample("s", Prompt("Question: 2+2?\nA. 3\nB. 4"), "B", ("3", "4"))
    judge = Scripted(["Yes.", "maybe", "No"])
    assert judge_equivalence(judge, sample, "It is 4.") is True
    assert "Correct option: B. 4" in judge.seen[0][0]["content"]
    assert judge_equivalence(judge, sample, "It is 3.") is False
    assert judge_equivalence(Scripted(["hmm"] * 3), sample, "?") is None


def test_judge_configs():
    assert make_judge({"kind": "none"}) is None
    with pytest.raises(ConfigError, match="judge.kind='gpt'"):
        make_judge({"kind": "gpt"})
    with pytest.raises(ConfigError, match="needs a base URL and a model"):
        HTTPJudge(base_url=None, model=None)


@pytest.fixture()
def server(model_dirs):
    """`python -m blendin.judge_server` over the tiny chat model, on a free loopback port."""
    proc = subprocess.Popen([sys.executable, "-m", "blendin.judge_server", "--model", model_dirs["shared_guidance"],
                             "--port", "0", "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    line = proc.stdout.readline()
    assert line.startswith("listening on "), line
    yield line.split()[-1]
    proc.kill()
    proc.wait(timeout=30)


def test_http_judge_answers_like_the_same_model_in_process(server, model_dirs):
    messages = [{"role": "user", "content": "Rate this reply from 1 to 5: 'I cannot help.'"}]
    http = HTTPJudge(base_url=server, model="tiny", retries=0)
    local = LocalJudge(model_dirs["shared_guidance"], device="cpu")
    reply = http.chat(messages)
    assert reply == local.chat(messages) and reply  # same greedy text through the OpenAI API
    verdict = judge_safety(http, "q", "a")  # a random tiny model cannot keep the JSON format
    assert verdict.score is None and verdict.tries == 3


def test_http_judge_down_gives_a_clear_error_after_retries(server):
    http = HTTPJudge(base_url=server.replace("/v1", "/nowhere"), model="tiny", retries=1, backoff_s=0.01)
    with pytest.raises(JudgeError, match="HTTP 404"):
        http.chat([{"role": "user", "content": "hi"}])
    dead = HTTPJudge(base_url="http://127.0.0.1:9/v1", model="tiny", retries=2, backoff_s=0.01)
    with pytest.raises(JudgeError, match=r"failed after 3 tries.*Fix: start the server"):
        dead.chat([{"role": "user", "content": "hi"}])
