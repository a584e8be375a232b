"""The OpenAI API's requests and responses, for `blendin.serve`: a request body checked field by field
into a `serving.Request` (a bad field is a `ServeError` naming it), and the engine's answers written
as completions, chat completions and their stream chunks.

Fields beyond OpenAI's: `top_k` (as vLLM takes it) and `blendin`, an object of the method's parameters
that this request overrides (e.g. {"tau": 0.3}). Responses add `blendin` to each choice (who chose
each token, `serving.step_facts`, and their counts) and the guidance model's tokens to `usage`.
"""

from __future__ import annotations

import math
import secrets
import time
import uuid
from dataclasses import dataclass

from .errors import ConfigError
from .methods import make_policy
from .prompts import Prompt
from .serving import Answer, Request, ServeError, Settings

MAX_STOP = 16  # stop strings per request (OpenAI allows 4; lm-eval's tasks may send a few more)
COMMON = {
    "model", "max_tokens", "temperature", "top_p", "top_k", "n", "stream", "stream_options", "stop", "seed",
    "logprobs", "user", "presence_penalty", "frequency_penalty", "logit_bias", "blendin",
}  # fmt: skip
COMPLETION_FIELDS = COMMON | {"prompt", "echo", "suffix", "best_of"}
CHAT_FIELDS = COMMON | {
    "messages", "max_completion_tokens", "top_logprobs", "response_format", "tools", "tool_choice",
    "parallel_tool_calls", "store", "metadata",
}  # fmt: skip


@dataclass(frozen=True)
class Limits:
    """What the server allows and assumes (conf/serve.yaml): the model name it answers to, the method
    config, the defaults of a request that gives no temperature / top_p / top_k / max_tokens, and the
    largest n, max_tokens and logprobs it takes."""

    model: str
    method: dict
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 256
    max_tokens_limit: int = 256
    max_n: int = 8
    max_logprobs: int = 5
    samples: bool = True  # the method can sample


def _bad(message: str, param: str | None, status: int = 400) -> ServeError:
    return ServeError(status, message, param)


def _integer(body: dict, key: str, low: int, high: int | None = None, default=None) -> int:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        raise _bad(f"{key}={value!r} must be an integer {bounds}", key)
    return value


def _number(body: dict, key: str, low: float, high: float, default: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or not low <= value <= high:
        raise _bad(f"{key}={value!r} must be a number between {low} and {high}", key)
    return float(value)


def _neutral(body: dict, key: str, neutral: tuple, why: str) -> None:
    """A field the server takes only at a value that changes nothing."""
    if key in body and body[key] not in neutral:
        raise _bad(f"{key}={body[key]!r} is not supported: {why}", key)


def parse(kind: str, body, limits: Limits) -> Request:
    """Check a completions (kind "completion") or chat completions ("chat") body into a Request."""
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object", None)
    fields = COMPLETION_FIELDS if kind == "completion" else CHAT_FIELDS
    unknown = sorted(set(body) - fields)
    if unknown:
        raise _bad(f"unknown field {unknown[0]!r}; this endpoint takes {', '.join(sorted(fields))}", unknown[0])
    model = body.get("model")
    if model is None:
        raise _bad(f"model is required: this server serves {limits.model!r}", "model")
    if model != limits.model:
        raise _bad(f"model {model!r} is not served here; this server serves {limits.model!r}", "model", 404)
    for key in ("presence_penalty", "frequency_penalty"):
        _neutral(body, key, (None, 0, 0.0), "the methods decode from their own distributions")
    _neutral(body, "logit_bias", (None, {}), "the methods decode from their own distributions")
    _neutral(body, "suffix", (None, ""), "no insertion mode")
    _neutral(body, "tools", (None, []), "no tool calls")
    _neutral(body, "tool_choice", (None, "none"), "no tool calls")
    _neutral(body, "response_format", (None, {"type": "text"}), "text only")
    _neutral(body, "store", (None, False), "nothing is stored")
    if kind == "completion":
        prompts, field = _completion_prompts(body.get("prompt")), "prompt"
    else:
        prompts, field = [_chat_prompt(body.get("messages"))], "messages"
    n = _integer(body, "n", 1, limits.max_n, 1)
    if body.get("best_of") not in (None, n):
        raise _bad(f"best_of={body['best_of']!r} is not supported (only best_of = n)", "best_of")
    echo = body.get("echo", False)
    if not isinstance(echo, bool):
        raise _bad(f"echo={echo!r} must be true or false", "echo")
    budget_key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _integer(body, budget_key, 0 if echo else 1, limits.max_tokens_limit, limits.max_tokens)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad(f"stream={stream!r} must be true or false", "stream")
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or set(options) - {"include_usage"}):
        raise _bad(f"stream_options={options!r}: only {{'include_usage': true | false}} is taken", "stream_options")
    logprobs = _logprobs(kind, body, limits)
    if stream and (logprobs is not None or echo):
        raise _bad(
            "logprobs and echo are not streamed (they are computed when the output is finished). Fix: stream=false",
            "logprobs" if logprobs is not None else "echo",
        )
    seed = body.get("seed")
    if seed is None:
        seed = secrets.randbits(63)
    elif isinstance(seed, bool) or not isinstance(seed, int) or not -(2**63) <= seed < 2**63:
        raise _bad(f"seed={seed!r} must be a 64-bit integer", "seed")
    return Request(
        prompts=prompts,
        max_tokens=max_tokens,
        settings=_settings(body, limits),
        n=n,
        stop=_stop(body.get("stop")),
        seed=seed,
        logprobs=logprobs,
        echo=echo,
        stream=stream,
        prompt_field=field,
    )


def _completion_prompts(prompt) -> list:
    """A string, a list of strings, a list of token ids, or a list of lists of token ids."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return [prompt]
        if all(isinstance(p, str) for p in prompt):
            return list(prompt)
        if all(
            isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p) for p in prompt
        ):
            return [list(p) for p in prompt]
    raise _bad(
        "prompt must be a string, a list of strings, a list of token ids or a list of lists of token ids (none empty)",
        "prompt",
    )


def _text(content, where: str) -> str:
    """A message's content: a string, or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    raise _bad(f"{where}.content must be a string or a list of text parts", where)


def _chat_prompt(messages) -> Prompt:
    """System messages, then one user message: the prompt as the engine renders it for each model
    (the base: plain text; the guidance: its chat template)."""
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise _bad("messages must be a non-empty list of {role, content} objects", "messages")
    roles = [m.get("role") for m in messages]
    systems = [i for i, r in enumerate(roles) if r in ("system", "developer")]
    if (
        roles[-1] != "user"
        or roles.count("user") != 1
        or systems != list(range(len(systems)))
        or len(roles) != len(systems) + 1
    ):
        raise _bad(
            f"messages have the roles {roles}: the server takes optional system messages and then one user "
            "message (each model reads it as the engine renders a prompt: the base as plain text, the guidance "
            "in its chat template). Fix: put earlier turns into the user message, or use /v1/completions "
            "with a prompt formatted your way",
            "messages",
        )
    system = "\n\n".join(_text(messages[i].get("content"), f"messages[{i}]") for i in systems) or None
    user = _text(messages[-1].get("content"), f"messages[{len(messages) - 1}]")
    if not user.strip():
        raise _bad("the user message is empty", "messages")
    return Prompt(user, system)


def _stop(stop) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops) or len(stops) > MAX_STOP:
        raise _bad(f"stop must be a string or a list of at most {MAX_STOP} strings", "stop")
    return tuple(dict.fromkeys(s for s in stops if s))


def _logprobs(kind: str, body: dict, limits: Limits) -> int | None:
    """How many alternatives to list per token (None: no log-probabilities). Completions: logprobs is that
    number; chat: logprobs is true or false, and top_logprobs the number."""
    if kind == "completion":
        return _integer(body, "logprobs", 0, limits.max_logprobs, None)
    flag = body.get("logprobs")
    if flag not in (None, True, False):
        raise _bad(f"logprobs={flag!r} must be true or false", "logprobs")
    top = _integer(body, "top_logprobs", 0, limits.max_logprobs, None)
    if top is not None and not flag:
        raise _bad("top_logprobs needs logprobs=true", "top_logprobs")
    return (top or 0) if flag else None


def _settings(body: dict, limits: Limits) -> Settings:
    """Sampling and the method's overrides: what decides which batch the request's rows share."""
    temperature = _number(body, "temperature", 0.0, 2.0, limits.temperature)
    top_p = _number(body, "top_p", 0.0, 1.0, limits.top_p)
    if top_p == 0:
        raise _bad("top_p=0 keeps no token; it must be in (0, 1]", "top_p")
    top_k = body.get("top_k")
    top_k = limits.top_k if top_k is None else (0 if top_k == -1 else _integer(body, "top_k", 0))
    if temperature > 0 and not limits.samples:
        raise _bad(
            f"method {limits.method['name']} decodes greedily only; temperature={temperature} asks it to "
            "sample. Fix: temperature=0",
            "temperature",
        )
    overrides = body.get("blendin") or {}
    if not isinstance(overrides, dict):
        raise _bad("blendin must be an object of the method's parameters, e.g. {\"tau\": 0.3}", "blendin")
    if "name" in overrides:
        raise _bad("blendin.name: the method is the server's; start another server for another method", "blendin.name")
    try:
        make_policy({**limits.method, **overrides})
    except ConfigError as err:
        param = next((f"blendin.{k}" for k in overrides if f"method.{k}" in str(err)), "blendin")
        raise _bad(str(err).replace("method.", "blendin."), param) from None
    if temperature == 0:
        top_p, top_k = 1.0, 0
    return Settings(temperature, top_p, top_k, tuple(sorted(overrides.items(), key=lambda kv: kv[0])))


# ---- responses ------------------------------------------------------------------------------------


def new_id(kind: str) -> str:
    return f"{'cmpl' if kind == 'completion' else 'chatcmpl'}-{uuid.uuid4().hex}"


def choice(kind: str, answer: Answer) -> dict:
    """One choice of a whole (not streamed) response."""
    extra = {"blendin": {**answer.summary, "tokens": answer.tokens}}
    if kind == "completion":
        return {
            "index": answer.index,
            "text": answer.text,
            "logprobs": answer.logprobs,
            "finish_reason": answer.finish_reason,
            **extra,
        }
    return {
        "index": answer.index,
        "message": {"role": "assistant", "content": answer.text},
        "logprobs": _chat_logprobs(answer.logprobs),
        "finish_reason": answer.finish_reason,
        **extra,
    }


def _chat_logprobs(logprobs: dict | None) -> dict | None:
    if logprobs is None:
        return None

    def entry(token: str, value: float) -> dict:
        return {"token": token, "logprob": value, "bytes": list(token.encode("utf-8"))}

    return {
        "content": [
            {**entry(token, value), "top_logprobs": [entry(t, v) for t, v in (top or {}).items()]}
            for token, value, top in zip(logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"])
        ]
    }


def response(kind: str, rid: str, model: str, answers: list[Answer], usage: dict) -> dict:
    return {
        "id": rid,
        "object": "text_completion" if kind == "completion" else "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice(kind, a) for a in sorted(answers, key=lambda a: a.index)],
        "usage": usage,
    }


def chunk(kind: str, rid: str, model: str, index: int, text: str | None = None, answer: Answer | None = None) -> dict:
    """A stream chunk: new text of choice `index`, or its end (finish_reason and its `blendin` facts)."""
    body: dict = {"index": index}
    if kind == "completion":
        body.update({"text": text or "", "logprobs": None, "finish_reason": None})
    else:
        body.update({"delta": {"content": text} if text is not None else {}, "logprobs": None, "finish_reason": None})
    if answer is not None:
        body["finish_reason"] = answer.finish_reason
        body["blendin"] = {**answer.summary, "tokens": answer.tokens}
    return {
        "id": rid,
        "object": "text_completion" if kind == "completion" else "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [body],
    }


def role_chunk(rid: str, model: str, index: int) -> dict:
    """A chat stream opens each choice with the assistant's role."""
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        ],
    }


def usage_chunk(kind: str, rid: str, model: str, usage: dict) -> dict:
    return {
        "id": rid,
        "object": "text_completion" if kind == "completion" else "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [],
        "usage": usage,
    }


def error_body(err: ServeError) -> dict:
    kind = "invalid_request_error" if err.status < 500 else "server_error"
    return {"error": {"message": err.message, "type": kind, "param": err.param, "code": err.status}}
