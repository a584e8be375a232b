"""The OpenAI-compatible server (`blendin.serve`): served outputs are the engine's own outputs for the
same prompts (decoded offline, one request at a time), whatever shares a batch; clients that leave
free their rows; a full queue answers 503; bad requests get a 4xx naming the field; a row that raises
fails its request alone; log-probabilities are the method's own (`blendin.likelihood`).

Tiny local models serve in a thread of the test process (`serve.Background`); the tests marked
`real` start `python -m blendin.serve` on the embedded pair and drive it with real clients: the
`openai` package, lm-eval's `local-completions` and Inspect AI.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from blendin.engine import _Batch
from blendin.errors import ConfigError
from blendin.likelihood import Item, plain_guide_context, score
from blendin.lm_eval import _AsRead
from blendin.methods import REGISTRY, Method
from blendin.policies import Nudging
from blendin.prompts import Prompt, encode_as_is
from blendin.sampling import Sampling, stream_key
from blendin.serve import Background, check, settings

MODEL = "tiny_cross/blendin"
METHOD = {"name": "blendin", "tau": 0.4, "alpha": "auto", "lam": 0.1, "top_k": 100}
PROMPTS = [
    "Question: What is 12 plus 30?",
    "The quick brown fox",
    "Instruction: Write a short poem about the sea.",
    "Natalia sold 48 clips in April",
    "Safety first: never share",
]


def tiny_settings(model_dirs, *overrides: str) -> dict:
    cfg = settings("port=0", "device=cpu", "method=blendin", "max_tokens_limit=24", "max_tokens=12", *overrides)
    cfg["pair"] = {
        "name": "tiny_cross",
        "base": {"source": model_dirs["cross_base"]},
        "guidance": {"source": model_dirs["cross_guidance"]},
    }
    return cfg


@pytest.fixture(scope="module")
def server(model_dirs, cross_pair):
    """A server on the tiny two-tokenizer pair: 4 rows at a time, contexts cut to 64 tokens."""
    srv = Background(tiny_settings(model_dirs, "batch_size=4", "max_queue=32", "max_context=64"), cross_pair)
    yield srv
    srv.close()


def post(srv, path: str, body: dict, **kwargs) -> requests.Response:
    return requests.post(srv.url + path, json=body, timeout=kwargs.pop("timeout", 120), **kwargs)


def offline(pair, prompt, max_tokens: int, stop=(), temperature=0.0, top_p=1.0, seed=0, n=1, method=METHOD):
    """The same outputs decoded by the engine alone: a completion's text is continued as it is
    (lm-eval's reading, `_AsRead`), a chat prompt as `blendin.generate` renders it."""
    sampling = Sampling() if temperature == 0 else Sampling(temperature=temperature, top_p=top_p)
    source = pair if isinstance(prompt, Prompt) else _AsRead(pair)
    decoder = source.decoder(method, sampling=sampling)
    prompt = prompt if isinstance(prompt, Prompt) else Prompt(prompt)
    keys = [stream_key(seed, "", k) for k in range(n)]
    return decoder.generate([prompt] * n, max_new_tokens=max_tokens, stop_strings=list(stop), keys=keys)


def health(srv) -> dict:
    return requests.get(srv.url + "/health", timeout=30).json()


def settled(srv, timeout: float = 60) -> dict:
    """/health once no row decodes or waits (the engine got through what it was given)."""
    end = time.time() + timeout
    while time.time() < end:
        state = health(srv)
        if state["active_rows"] == 0 and state["waiting_rows"] == 0 and state["batches"] == 0:
            return state
        time.sleep(0.05)
    raise AssertionError(f"rows still held after {timeout} s: {health(srv)}")


def test_concurrent_requests_get_the_engines_own_outputs(server, cross_pair):
    """Greedy and sampled, completions and chat, different budgets, stop strings, seeds and a tau
    override, sent at once: each answer is what the engine writes for that request alone."""
    cases = [
        ({"prompt": PROMPTS[0], "max_tokens": 12, "stop": ["e"]}, {}),
        ({"prompt": PROMPTS[1], "max_tokens": 16, "temperature": 0.8, "seed": 3, "n": 2}, {}),
        ({"prompt": PROMPTS[2], "max_tokens": 20, "temperature": 0.8, "top_p": 0.9, "seed": 5, "stop": ["a "]}, {}),
        ({"prompt": PROMPTS[3], "max_tokens": 9, "blendin": {"tau": 0.2}}, {"tau": 0.2}),
        ({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPTS[4]}],
          "max_tokens": 10}, {}),
    ]  # fmt: skip

    def ask(body):
        path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
        return post(server, path, {"model": MODEL, **body})

    with ThreadPoolExecutor(len(cases)) as pool:
        answers = list(pool.map(ask, [body for body, _ in cases]))
    for (body, override), answer in zip(cases, answers):
        assert answer.status_code == 200, answer.text
        out = answer.json()
        if "messages" in body:
            prompt = Prompt(body["messages"][1]["content"], "Be brief.")
            texts = [c["message"]["content"] for c in out["choices"]]
        else:
            prompt = body["prompt"]
            texts = [c["text"] for c in out["choices"]]
        want = offline(
            cross_pair, prompt, body["max_tokens"], body.get("stop", ()), body.get("temperature", 0.0),
            body.get("top_p", 1.0), body.get("seed", 0), body.get("n", 1), {**METHOD, **override},
        )  # fmt: skip
        assert texts == [g.text for g in want]
        for c, g in zip(out["choices"], want):
            facts = c["blendin"]
            assert facts["steps"] == g.n_tokens and facts["applied"] == g.n_applied
            assert [t["source"] for t in facts["tokens"]] == [
                {0: "base", 1: "guidance", 2: "blend"}[s] for s in g.trace["source"]
            ]
            assert c["finish_reason"] == ("length" if g.stop_reason == "max_new_tokens" else "stop")
        assert out["usage"]["completion_tokens"] == sum(len(g.token_ids) for g in want)
    state = settled(server)
    assert state["failed"] == 0


def sse(response) -> list:
    """The data of each server-sent event."""
    events = []
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("data: "):
            events.append(line[6:] if line[6:] == "[DONE]" else json.loads(line[6:]))
    return events


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_a_stream_adds_up_to_the_whole_answer(server, path):
    """Streamed pieces concatenate to the non-streamed text (a stop string is never half sent); each
    choice's last chunk has its finish reason and who chose each token; usage comes when asked for."""
    body = {"model": MODEL, "max_tokens": 20, "stop": ["an", "e t"], "n": 2, "temperature": 0.9, "seed": 11}
    body |= {"prompt": PROMPTS[2]} if "chat" not in path else {"messages": [{"role": "user", "content": PROMPTS[2]}]}
    whole = post(server, path, body).json()
    with requests.post(
        server.url + path, json={**body, "stream": True, "stream_options": {"include_usage": True}}, stream=True
    ) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        events = sse(r)
    assert events[-1] == "[DONE]" and events[-2]["usage"] == whole["usage"]
    for choice in whole["choices"]:
        index = choice["index"]
        mine = [e["choices"][0] for e in events[:-2] if e["choices"][0]["index"] == index]
        if "chat" in path:
            assert mine[0]["delta"] == {"role": "assistant", "content": ""}
            text = "".join(c["delta"].get("content") or "" for c in mine)
            assert text == choice["message"]["content"]
        else:
            assert "".join(c["text"] for c in mine) == choice["text"]
        assert mine[-1]["finish_reason"] == choice["finish_reason"]
        assert mine[-1]["blendin"] == choice["blendin"]


def long_prompt(pair, tokens: int) -> str:
    """A prompt whose greedy output runs `tokens` tokens without an end (no EOS): a row that only a
    disconnect can end early."""
    for prompt in PROMPTS:
        [gen] = offline(pair, prompt, tokens)
        if gen.stop_reason == "max_new_tokens":
            return prompt
    raise AssertionError("every prompt ends early")


def test_a_client_that_leaves_frees_its_row(model_dirs, cross_pair):
    """A streaming client that closes after the first piece, and a waiting client that times out: both
    rows leave at the next step, long before their 900 tokens; the engine is left empty."""
    srv = Background(tiny_settings(model_dirs, "batch_size=2", "max_tokens_limit=900", "max_tokens=900"), cross_pair)
    try:
        prompt = long_prompt(cross_pair, 200)
        body = {"model": MODEL, "prompt": prompt, "max_tokens": 900}
        with requests.post(srv.url + "/v1/completions", json={**body, "stream": True}, stream=True) as r:
            assert r.status_code == 200, r.text
            for line in r.iter_lines():
                if line.startswith(b"data: "):
                    break  # the first piece came: leave
        with pytest.raises(requests.exceptions.ReadTimeout):
            requests.post(srv.url + "/v1/completions", json=body, timeout=1.0)
        state = settled(srv, timeout=30)
        assert state["cancelled"] == 2 and state["finished"] == 0
        assert state["steps"] < 800  # the rows left early
        done = post(srv, "/v1/completions", {**body, "max_tokens": 3})  # and the server serves on
        assert done.status_code == 200 and done.json()["choices"][0]["blendin"]["steps"] == 3
    finally:
        srv.close()


def test_a_full_queue_answers_503_with_retry_after(model_dirs, cross_pair):
    srv = Background(
        tiny_settings(model_dirs, "batch_size=1", "max_queue=1", "max_tokens_limit=400", "retry_after=3"), cross_pair
    )
    try:
        body = {"model": MODEL, "prompt": long_prompt(cross_pair, 200), "max_tokens": 200}
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: post(srv, "/v1/completions", body), range(4)))
        busy = [a for a in answers if a.status_code == 503]
        assert busy and all(a.headers["Retry-After"] == "3" for a in busy)
        assert "busy" in busy[0].json()["error"]["message"]
        served = [a for a in answers if a.status_code == 200]
        assert served and len(served) + len(busy) == 4
        assert settled(srv)["rejected"] == len(busy)
    finally:
        srv.close()


BAD = [
    ({"foo": 1}, 400, "foo"),
    ({"n": 9}, 400, "n"),
    ({"n": 0}, 400, "n"),
    ({"max_tokens": 25}, 400, "max_tokens"),
    ({"max_tokens": "5"}, 400, "max_tokens"),
    ({"temperature": -1}, 400, "temperature"),
    ({"top_p": 0}, 400, "top_p"),
    ({"seed": 1.5}, 400, "seed"),
    ({"stop": [1]}, 400, "stop"),
    ({"logprobs": 6}, 400, "logprobs"),
    ({"prompt": []}, 400, "prompt"),
    ({"prompt": [[1, 2], "a"]}, 400, "prompt"),
    ({"prompt": [10**6]}, 400, "prompt"),
    ({"prompt": "word " * 80}, 400, "prompt"),  # longer than the 64-token context
    ({"prompt": "word " * 15, "max_tokens": 20}, 400, "max_tokens"),  # fits, but not with 20 more
    ({"blendin": {"tau": -1}}, 400, "blendin.tau"),
    ({"blendin": {"nope": 1}}, 400, "blendin.nope"),
    ({"blendin": {"name": "nudging"}}, 400, "blendin.name"),
    ({"presence_penalty": 0.5}, 400, "presence_penalty"),
    ({"stream": True, "logprobs": 1}, 400, "logprobs"),
    ({"model": "gpt-4"}, 404, "model"),
]


@pytest.mark.parametrize("change,status,param", BAD, ids=[str(b[0])[:40] for b in BAD])
def test_a_bad_request_gets_a_4xx_naming_the_field(server, change, status, param):
    body = {"model": MODEL, "prompt": PROMPTS[0], "max_tokens": 4} | change
    answer = post(server, "/v1/completions", body)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["param"] == param and error["message"]
    assert "Traceback" not in answer.text


def test_bad_chat_messages_and_bodies_are_refused(server):
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    for messages in (turns, [], [{"role": "system", "content": "x"}], [{"role": "user", "content": 5}]):
        answer = post(server, "/v1/chat/completions", {"model": MODEL, "messages": messages})
        assert answer.status_code == 400 and answer.json()["error"]["param"].startswith("messages"), answer.text
    raw = requests.post(server.url + "/v1/completions", data=b"{not json", timeout=30)
    assert raw.status_code == 400 and "not valid JSON" in raw.json()["error"]["message"]
    assert requests.get(server.url + "/v1/nothing", timeout=30).status_code == 404
    assert settled(server)["active_rows"] == 0


def test_a_row_that_raises_fails_its_request_alone(server, cross_pair, monkeypatch):
    """The batch that holds a row whose step raises is decoded again row by row: that request gets a
    500 naming the error; the others get the outputs they would have had."""
    poisoned = encode_as_is(cross_pair.model("base").tokenizer, PROMPTS[1])
    record = _Batch._record

    def faulty(self, values):
        if any(list(p) == poisoned for p in self.lead.prompts):
            raise RuntimeError("injected fault")
        return record(self, values)

    monkeypatch.setattr(_Batch, "_record", faulty)
    before = health(server)["failed"]
    with ThreadPoolExecutor(4) as pool:
        answers = list(
            pool.map(lambda p: post(server, "/v1/completions", {"model": MODEL, "prompt": p, "max_tokens": 8}), PROMPTS)
        )
    for prompt, answer in zip(PROMPTS, answers):
        if prompt == PROMPTS[1]:
            assert answer.status_code == 500 and "injected fault" in answer.json()["error"]["message"]
        else:
            assert answer.status_code == 200, answer.text
            assert answer.json()["choices"][0]["text"] == offline(cross_pair, prompt, 8)[0].text
    state = settled(server)
    assert state["failed"] == before + 1


def test_logprobs_and_echo_are_the_methods_own(server, cross_pair):
    """Without echo: the output's tokens scored as decoded (the guidance behind its chat template);
    with echo and max_tokens 0: every token after the first scored as text with no question. Both
    equal `likelihood.score`; greedy tokens are their position's most probable token."""
    base, guidance, vocab = cross_pair.model("base"), cross_pair.model("guidance"), cross_pair.vocab
    policy = _AsRead(cross_pair).decoder(METHOD).policy
    out = post(server, "/v1/completions", {"model": MODEL, "prompt": PROMPTS[0], "max_tokens": 10, "logprobs": 3})
    choice = out.json()["choices"][0]
    lp = choice["logprobs"]
    [gen] = offline(cross_pair, PROMPTS[0], 10)
    lead_ids = encode_as_is(base.tokenizer, PROMPTS[0])
    guide_ids = guidance.prompt_ids(Prompt(PROMPTS[0]))
    [(total, greedy)] = score([Item(tuple(lead_ids), tuple(gen.token_ids), tuple(guide_ids))], policy, base, guidance,
                              vocab, floor=-23.025850929940457)  # fmt: skip
    assert len(lp["tokens"]) == len(gen.token_ids)
    assert sum(lp["token_logprobs"]) == pytest.approx(total, abs=1e-4)
    assert all(len(top) <= 3 for top in lp["top_logprobs"])
    if greedy:
        assert all(v == max(top.values()) for v, top in zip(lp["token_logprobs"], lp["top_logprobs"]))

    echo = post(server, "/v1/completions",
                {"model": MODEL, "prompt": lead_ids, "max_tokens": 0, "echo": True, "logprobs": 1})  # fmt: skip
    lp = echo.json()["choices"][0]["logprobs"]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    guide = plain_guide_context(base.tokenizer, guidance.tokenizer, vocab.identical, lead_ids[:1])
    [(total, _)] = score([Item(tuple(lead_ids[:1]), tuple(lead_ids[1:]), guide)], policy, base, guidance, vocab,
                         floor=-23.025850929940457)  # fmt: skip
    assert sum(lp["token_logprobs"][1:]) == pytest.approx(total, abs=1e-4)
    assert echo.json()["choices"][0]["text"] == base.tokenizer.decode(lead_ids, skip_special_tokens=True)


def test_proxy_tuning_scores_with_its_third_model(model_dirs):
    """Proxy-tuning reads the guidance's untuned twin too: the server's log-probabilities of its output
    are `likelihood.score` with the twin."""
    from conftest import make_pair

    pair = make_pair(model_dirs, "cross", untuned=True)
    cfg = tiny_settings(model_dirs, "method=proxy_tuning")
    cfg["pair"]["guidance_untuned"] = {"source": model_dirs["untuned"]}
    srv = Background(cfg, pair)
    try:
        body = {"model": "tiny_cross/proxy_tuning", "prompt": PROMPTS[0], "max_tokens": 6, "logprobs": 2}
        answer = post(srv, "/v1/completions", body)
    finally:
        srv.close()
    assert answer.status_code == 200, answer.text
    lp = answer.json()["choices"][0]["logprobs"]
    [gen] = offline(pair, PROMPTS[0], 6, method={"name": "proxy_tuning"})
    base, guidance = pair.model("base"), pair.model("guidance")
    item = Item(tuple(encode_as_is(base.tokenizer, PROMPTS[0])), tuple(gen.token_ids),
                tuple(guidance.prompt_ids(Prompt(PROMPTS[0]))))  # fmt: skip
    policy = _AsRead(pair).decoder({"name": "proxy_tuning"}).policy
    [(total, _)] = score([item], policy, base, guidance, pair.vocab, floor=-23.025850929940457,
                         untuned=pair.model("guidance_untuned"))  # fmt: skip
    assert sum(lp["token_logprobs"]) == pytest.approx(total, abs=1e-4)


def test_an_api_key_guards_the_api_but_not_health(model_dirs, cross_pair):
    srv = Background(tiny_settings(model_dirs, "api_key=sesame"), cross_pair)
    try:
        body = {"model": MODEL, "prompt": "a", "max_tokens": 2}
        assert post(srv, "/v1/completions", body).status_code == 401
        assert post(srv, "/v1/completions", body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert post(srv, "/v1/completions", body, headers={"Authorization": "Bearer sesame"}).status_code == 200
        assert requests.get(srv.url + "/health", timeout=30).status_code == 200
    finally:
        srv.close()


def test_a_greedy_only_method_asked_to_sample_is_refused(model_dirs, cross_pair, monkeypatch):
    spec = Method("greedy_nudging", "G", "NUDGING that cannot sample", {"tau": 0.4},
                  lambda c: Nudging(tau=c["tau"]), samples=False)  # fmt: skip
    monkeypatch.setitem(REGISTRY, "greedy_nudging", spec)
    cfg = tiny_settings(model_dirs)
    cfg["method"] = {"name": "greedy_nudging", "tau": 0.4}
    srv = Background(cfg, cross_pair)
    try:
        body = {"model": "tiny_cross/greedy_nudging", "prompt": "a", "max_tokens": 2}
        answer = post(srv, "/v1/completions", {**body, "temperature": 0.7})
        assert answer.status_code == 400 and answer.json()["error"]["param"] == "temperature"
        assert post(srv, "/v1/completions", body).status_code == 200
    finally:
        srv.close()


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["method=nudging_words"], "cannot be served"),
        (["method=forced"], "cannot be served"),
        (["port=70000"], "port=70000"),
        (["max_tokens=300"], "max_tokens=300"),
        (["+colour=blue"], "no setting colour"),
        (["top_p=0"], "top_p=0"),
        (["method=proxy_tuning"], "needs pair.guidance_untuned"),
        (["compile=cudagraphs"], "not offered by the server"),
    ],
)
def test_bad_settings_are_refused_before_any_model_loads(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check(settings(*overrides))


def test_the_command_line_error_is_one_line():
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    command = [sys.executable, "-m", "blendin.serve", "method=nudging_words"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: method nudging_words")
    assert "Traceback" not in done.stderr


# ---- the embedded pair, real clients ---------------------------------------------------------------

REAL_MODEL = "smollm2_gemma3/blendin"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def real_server(tmp_path_factory):
    """`python -m blendin.serve` on the embedded pair (BlendIn, tau 0.4), as a user starts it."""
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "BLENDIN_API_KEY": "test-key"}
    command = [sys.executable, "-m", "blendin.serve", f"port={port}", "device=cpu", "max_tokens_limit=64"]
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if process.poll() is not None:
                raise AssertionError(f"the server exited: {log.read_text()[-3000:]}")
            try:
                if requests.get(url + "/health", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=60)


@pytest.mark.real
def test_the_openai_client_completes_chats_and_streams(real_server, real_pair):
    from openai import OpenAI

    client = OpenAI(base_url=real_server + "/v1", api_key="test-key")
    [model] = client.models.list().data
    assert model.id == REAL_MODEL
    question = "Question: Tom has 3 apples and buys 4 more. How many apples does he have?"
    stop = ["\nQuestion:"]

    done = client.completions.create(model=REAL_MODEL, prompt=question, max_tokens=16, stop=stop)
    method = settings()["method"]
    assert done.choices[0].text == offline(real_pair, question, 16, stop, method=method)[0].text
    assert done.usage.completion_tokens > 0 and done.model_extra is not None

    chat = client.chat.completions.create(
        model=REAL_MODEL, messages=[{"role": "user", "content": question}], max_tokens=16, stop=stop
    )
    reply = chat.choices[0].message.content
    assert reply == offline(real_pair, Prompt(question), 16, stop, method=method)[0].text
    facts = chat.choices[0].model_extra["blendin"]
    assert facts["steps"] == len(facts["tokens"]) and 0 <= facts["intervention_rate"] <= 1
    assert chat.usage.model_extra["guidance_prompt_tokens"] > 0

    pieces = client.chat.completions.create(
        model=REAL_MODEL, messages=[{"role": "user", "content": question}], max_tokens=16, stop=stop, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in pieces if c.choices) == reply


TASK_DOCS = {
    "gen": [{"question": "Tom has 3 apples and buys 4 more. How many apples does he have?", "answer": "7"},
            {"question": "What is the capital of France?", "answer": "Paris"}],
    "mc": [{"question": "What color is the sky on a clear day?", "choices": ["blue", "green"], "answer": 0},
           {"question": "How many legs does a dog have?", "choices": ["four", "two", "six"], "answer": 0}],
    "text": [{"text": "The sea is wide and deep and blue."}, {"text": "Natalia sold 48 clips in April."}],
}  # fmt: skip


def _lm_eval_tasks(folder: Path) -> Path:
    """A generative, a multiple-choice and a perplexity task over JSON Lines files (lm-eval's YAML)."""
    for name, rows in TASK_DOCS.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = "dataset_path: json\ntest_split: test\ndataset_kwargs:\n  data_files:\n    test: {}\n"
    question = "doc_to_text: \"Question: {{question}}\\nAnswer:\"\n"
    (folder / "serve_gen.yaml").write_text(
        "task: serve_gen\n" + data.format(folder / "gen.jsonl") + question
        + "output_type: generate_until\ndoc_to_target: \"{{answer}}\"\n"
        "generation_kwargs:\n  until: [\"\\n\", \"Question:\"]\n  max_gen_toks: 12\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n"
    )  # fmt: skip
    (folder / "serve_mc.yaml").write_text(
        "task: serve_mc\n" + data.format(folder / "mc.jsonl") + question
        + "output_type: multiple_choice\ndoc_to_choice: \"{{choices}}\"\ndoc_to_target: \"{{answer}}\"\n"
        "metric_list:\n  - metric: acc\n"
    )  # fmt: skip
    (folder / "serve_text.yaml").write_text(
        "task: serve_text\n" + data.format(folder / "text.jsonl")
        + "output_type: loglikelihood_rolling\ndoc_to_text: \"\"\ndoc_to_target: \"{{text}}\"\n"
        "metric_list:\n  - metric: word_perplexity\n"
    )  # fmt: skip
    return folder


@pytest.mark.real
def test_lm_eval_local_completions_matches_the_in_process_model(tmp_path, real_pair):
    """lm-eval's `local-completions` against the server gives what `--model blendin` gives in-process:
    the same generations, and (where both read the text the same way: the base alone, and BlendIn's
    rolling log-likelihoods) the same log-likelihoods within 1e-4. For BlendIn on a multiple-choice
    task the server scores the whole text with no question (docs/serve.md), which is checked against
    `likelihood.score` of the same text instead."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from blendin.lm_eval import GuidedLM

    manager = TaskManager(include_path=str(_lm_eval_tasks(tmp_path)))
    tokenizer = str(real_pair.model("base").tokenizer.name_or_path)

    def samples(run, task):
        return sorted(run["samples"][task], key=lambda s: s["doc_id"])

    for method, tasks in (("blendin", ["serve_gen", "serve_text", "serve_mc"]), ("base", ["serve_mc"])):
        cfg = settings("port=0", "device=cpu", f"method={method}", "max_tokens_limit=32")
        srv = Background(cfg, real_pair)
        try:
            remote = lm_eval.simple_evaluate(
                model="local-completions",
                model_args=f"model=smollm2_gemma3/{method},base_url={srv.url}/v1/completions,tokenizer={tokenizer},"
                "tokenizer_backend=huggingface,add_bos_token=True,max_retries=1",
                tasks=tasks, task_manager=manager, log_samples=True,
            )  # fmt: skip
        finally:
            srv.close()
        local = lm_eval.simple_evaluate(
            model=GuidedLM(pair=real_pair, method=method, batch_size=4),
            tasks=tasks, task_manager=manager, log_samples=True,
        )  # fmt: skip
        for task in tasks:
            assert len(samples(remote, task)) == len(samples(local, task)) == len(TASK_DOCS[task.split("_")[1]])
            for ours, theirs in zip(samples(remote, task), samples(local, task)):
                if task == "serve_gen":
                    assert ours["resps"] == theirs["resps"] and ours["resps"][0][0]
                elif task == "serve_text" or method == "base":
                    for x, y in zip(ours["resps"], theirs["resps"]):
                        value_x = x[0][0] if isinstance(x[0], (list, tuple)) else x[0]
                        value_y = y[0][0] if isinstance(y[0], (list, tuple)) else y[0]
                        assert float(value_x) == pytest.approx(float(value_y), abs=1e-4)
                    if task == "serve_mc":
                        assert [r[0][1] for r in ours["resps"]] == [r[0][1] for r in theirs["resps"]]  # is_greedy
        if method == "blendin":  # multiple choice: the whole text scored with no question
            lm = GuidedLM(pair=real_pair, method="blendin")
            for sample in samples(remote, "serve_mc"):
                for arguments, resp in zip(sample["arguments"], sample["resps"]):
                    context, continuation = arguments[0], arguments[1]
                    whole = lm.lead.tokenizer.encode(context + continuation)
                    part = lm.lead.tokenizer.encode(context)
                    guide = plain_guide_context(lm.lead.tokenizer, lm.guidance.tokenizer, lm.vocab.identical, whole[:1])
                    items = [Item(tuple(whole[:1]), tuple(ids[1:]), guide) for ids in (whole, part)]
                    [(all_, _), (ctx, _)] = score(items, lm.policy, lm.lead, lm.guidance, lm.vocab, floor=lm.floor)
                    assert float(resp[0][0]) == pytest.approx(all_ - ctx, abs=1e-4)


@pytest.mark.real
def test_inspect_ai_runs_a_task_through_the_server(real_server, tmp_path, monkeypatch):
    from inspect_ai import Task, eval
    from inspect_ai.dataset import Sample
    from inspect_ai.scorer import includes
    from inspect_ai.solver import generate

    monkeypatch.setenv("BLENDIN_BASE_URL", real_server + "/v1")
    monkeypatch.setenv("BLENDIN_API_KEY", "test-key")
    task = Task(
        dataset=[Sample(input="What is 2 + 2?", target="4"), Sample(input="Name a color of the sky.", target="blue")],
        solver=generate(),
        scorer=includes(),
    )
    [log] = eval(task, model=f"openai-api/blendin/{REAL_MODEL}", max_tokens=16, log_dir=str(tmp_path),
                 display="none", temperature=0.0)  # fmt: skip
    assert log.status == "success", log.error
    assert len(log.samples) == 2 and all(s.output.completion for s in log.samples)
    assert log.results.scores[0].metrics["accuracy"].value in (0.0, 0.5, 1.0)


def test_server_threads_do_not_leak(server):
    """Every test above left the engine empty (module server)."""
    assert settled(server)["active_rows"] == 0
    assert threading.active_count() < 50
