"""A guided pair as an OpenAI-compatible server: `python -m blendin.serve [pair=P] [method=M ...]
[port=8000] [host=127.0.0.1]` (and `blendin-serve`). Config: conf/serve.yaml; docs/serve.md.

Endpoints: POST /v1/completions and /v1/chat/completions (streamed as server-sent events with
"stream": true), GET /v1/models and /health. One engine thread decodes every request
(`blendin.serving`); this module is the HTTP side (aiohttp): it checks each request
(`blendin.openai_api`), hands it to the engine, and writes what the engine answers. A client that
disconnects frees its rows at the engine's next step; a full queue answers 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import sys
import time

import hydra
from omegaconf import DictConfig, OmegaConf

from .checks import check_device, check_engine, check_pair, check_protocol
from .cli import call, refuse_unknown_keys
from .errors import ConfigError
from .methods import make_policy
from .methods import method as method_spec
from .openai_api import Limits, chunk, error_body, new_id, parse, response, role_chunk, usage_chunk
from .pair import Pair, missing_role, pair_spec
from .serving import Job, QueueFull, ServeEngine, ServeError, check_servable

log = logging.getLogger(__name__)

SETTINGS = (
    "pair", "method", "host", "port", "api_key", "model_name", "batch_size", "max_queue", "retry_after",
    "max_tokens", "max_tokens_limit", "max_context", "max_n", "max_logprobs", "temperature", "top_p", "top_k",
    "floor", "device", "dtype", "base_view", "guidance_schedule", "compile",
)  # fmt: skip


def _whole(key: str, value, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ConfigError(f"{key}={value!r} must be an integer {bounds}")
    return value


def check(cfg: dict) -> None:
    """Refuse a bad setting before any model loads (each message names the key and the fix)."""
    unknown = sorted(set(cfg) - set(SETTINGS) - {"hydra"})
    if unknown:
        raise ConfigError(
            f"blendin.serve has no setting {', '.join(unknown)}; its settings are {', '.join(SETTINGS)} "
            "(conf/serve.yaml)"
        )
    check_pair(cfg["pair"])
    make_policy(cfg["method"])
    spec = method_spec(cfg["method"]["name"])
    check_servable(spec)
    problem = missing_role(spec.name, spec.roles, cfg["pair"])
    if problem:
        raise ConfigError(problem)
    if not isinstance(cfg["host"], str) or not cfg["host"]:
        raise ConfigError(f"host={cfg['host']!r} must be an address to bind, e.g. 127.0.0.1 or 0.0.0.0")
    _whole("port", cfg["port"], 0, 65535)
    if cfg["api_key"] is not None and (not isinstance(cfg["api_key"], str) or not cfg["api_key"]):
        raise ConfigError("api_key must be a non-empty string, or null for none (or set BLENDIN_API_KEY)")
    _whole("batch_size", cfg["batch_size"], 1)
    _whole("max_queue", cfg["max_queue"], 1)
    _whole("retry_after", cfg["retry_after"], 1)
    _whole("max_tokens_limit", cfg["max_tokens_limit"], 1)
    if cfg["max_tokens"] is not None:
        _whole("max_tokens", cfg["max_tokens"], 1, cfg["max_tokens_limit"])
    if cfg["max_context"] is not None:
        _whole("max_context", cfg["max_context"], 2)
    _whole("max_n", cfg["max_n"], 1)
    _whole("max_logprobs", cfg["max_logprobs"], 0, 20)
    for key, low, high in (("temperature", 0.0, 2.0), ("top_p", 0.0, 1.0)):
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise ConfigError(f"{key}={value!r} must be a number between {low} and {high}")
    if cfg["top_p"] == 0:
        raise ConfigError("top_p=0 keeps no token; it must be in (0, 1]")
    _whole("top_k", cfg["top_k"], 0)
    if cfg["temperature"] > 0 and not spec.samples:
        raise ConfigError(
            f"method {spec.name} decodes greedily only; temperature={cfg['temperature']} asks it to sample"
        )
    floor = cfg["floor"]
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not -1e30 < floor <= 0:
        raise ConfigError(f"floor={floor!r} must be a finite log-probability (a number <= 0): JSON has no -inf")
    check_device(cfg["device"], cfg["dtype"])
    if cfg["compile"] == "cudagraphs":  # graphs are recorded per cache, and each server batch has caches of its own
        raise ConfigError(
            "compile=cudagraphs is not offered by the server: each new batch would record its CUDA graphs "
            "again. Fix: compile=none (the default) or compile=compile"
        )
    check_engine(cfg["compile"], cfg["guidance_schedule"], cfg["device"])
    check_protocol(None, cfg["base_view"])


def model_name(cfg: dict) -> str:
    return cfg["model_name"] or f"{cfg['pair']['name']}/{cfg['method']['name']}"


def build(cfg: dict, pair: Pair | None = None) -> tuple:
    """Load the pair (or take one already loaded) and build the engine and the web application."""
    check(cfg)
    pair = pair or Pair(pair_spec(cfg["pair"]), device=cfg["device"], dtype=cfg["dtype"])
    engine = ServeEngine(
        pair,
        cfg["method"],
        batch_size=cfg["batch_size"],
        max_queue=cfg["max_queue"],
        max_tokens_limit=cfg["max_tokens_limit"],
        max_context=cfg["max_context"],
        floor=float(cfg["floor"]),
        base_view=cfg["base_view"],
        guidance_schedule=cfg["guidance_schedule"],
        compile=cfg["compile"],
    )
    limits = Limits(
        model=model_name(cfg),
        method=dict(cfg["method"]),
        temperature=float(cfg["temperature"]),
        top_p=float(cfg["top_p"]),
        top_k=cfg["top_k"],
        max_tokens=cfg["max_tokens"] or cfg["max_tokens_limit"],
        max_tokens_limit=cfg["max_tokens_limit"],
        max_n=cfg["max_n"],
        max_logprobs=cfg["max_logprobs"],
        samples=engine.spec.samples,
    )
    return engine, app(engine, limits, cfg["api_key"], cfg["retry_after"])


def app(engine: ServeEngine, limits: Limits, api_key: str | None = None, retry_after: int = 1):
    """The aiohttp application over a started or not yet started engine (it starts with the app)."""
    from aiohttp import web

    def fail(err: ServeError, headers: dict | None = None) -> web.Response:
        return web.json_response(error_body(err), status=err.status, headers=headers)

    @web.middleware
    async def guard(request: web.Request, handler):
        """API key; JSON errors for unknown routes; no traceback ever reaches a client."""
        if api_key and request.path.startswith("/v1/"):
            if request.headers.get("Authorization", "") != f"Bearer {api_key}":
                return fail(ServeError(401, "a valid API key is needed: Authorization: Bearer <key>", None))
        try:
            return await handler(request)
        except web.HTTPException as err:
            if err.status >= 400:
                return fail(ServeError(err.status, f"{request.method} {request.path}: {err.reason}", None))
            raise
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception as err:
            log.exception("serve: %s %s failed", request.method, request.path)
            return fail(ServeError(500, f"internal error: {type(err).__name__}: {err}", None))

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "model": limits.model, **engine.status()})

    async def models(request: web.Request) -> web.Response:
        lead = engine.lead
        entry = {
            "id": limits.model,
            "object": "model",
            "created": int(started),
            "owned_by": "blendin",
            "root": str(lead.tokenizer.name_or_path),  # where the base's tokenizer is: lm-eval's tokenizer=
            "max_model_len": engine.lead_context,
            "blendin": {
                "pair": engine.pair.spec.name,
                "method": limits.method,
                "base": engine.pair.spec.base.source,
                "guidance": engine.pair.spec.guidance.source,
                "max_tokens_limit": limits.max_tokens_limit,
            },
        }
        return web.json_response({"object": "list", "data": [entry]})

    async def completions(request: web.Request) -> web.StreamResponse:
        return await serve(request, "completion")

    async def chat(request: web.Request) -> web.StreamResponse:
        return await serve(request, "chat")

    async def serve(request: web.Request, kind: str) -> web.StreamResponse:
        try:
            body = await request.json(loads=json.loads)
        except (ValueError, UnicodeDecodeError) as err:
            return fail(ServeError(400, f"the request body is not valid JSON: {err}", None))
        try:
            req = parse(kind, body, limits)
        except ServeError as err:
            return fail(err)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        job = Job(req, lambda event: loop.call_soon_threadsafe(events.put_nowait, event))
        try:
            engine.submit(job)
        except QueueFull as err:
            return fail(ServeError(503, f"the server is busy ({err}); retry after {retry_after} s", None),
                        {"Retry-After": str(retry_after)})  # fmt: skip
        rid = new_id(kind)
        try:
            first = await events.get()
            if first[0] == "error":
                return fail(first[1])
            if req.stream:
                return await stream(request, kind, rid, job, events, body)
            answers, usage = [], None
            while usage is None:
                event = await events.get()
                if event[0] == "error":
                    return fail(event[1])
                if event[0] == "answer":
                    answers.append(event[1])
                elif event[0] == "done":
                    usage = event[1]
            return web.json_response(response(kind, rid, limits.model, answers, usage))
        except (asyncio.CancelledError, ConnectionResetError):  # the client left: free its rows
            engine.cancel(job)
            raise

    async def stream(request, kind, rid, job, events, body) -> web.StreamResponse:
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await out.prepare(request)

        async def send(data) -> None:
            await out.write(f"data: {json.dumps(data) if not isinstance(data, str) else data}\n\n".encode())

        try:
            if kind == "chat":
                for index in range(len(job.request.prompts) * job.request.n):
                    await send(role_chunk(rid, limits.model, index))
            await relay(kind, rid, job, events, body, send)
        except ConnectionResetError:  # the client left mid-stream: free its rows, nothing more to write
            engine.cancel(job)
        return out

    async def relay(kind, rid, job, events, body, send) -> None:
        """The engine's events as stream chunks, until the request is done (or failed)."""
        while True:
            event = await events.get()
            if event[0] == "text":
                await send(chunk(kind, rid, limits.model, event[1], text=event[2]))
            elif event[0] == "answer":
                await send(chunk(kind, rid, limits.model, event[1].index, answer=event[1]))
            elif event[0] == "error":  # the headers went out: say it in the stream, as OpenAI does
                await send(error_body(event[1]))
                break
            elif event[0] == "done":
                if (body.get("stream_options") or {}).get("include_usage"):
                    await send(usage_chunk(kind, rid, limits.model, event[1]))
                break
        await send("[DONE]")

    async def on_startup(_app) -> None:
        if engine._thread is None:
            engine.start()

    async def on_cleanup(_app) -> None:
        engine.close()

    started = time.time()
    application = web.Application(middlewares=[guard], client_max_size=16 * 2**20)
    application.router.add_get("/health", health)
    application.router.add_get("/v1/models", models)
    application.router.add_post("/v1/completions", completions)
    application.router.add_post("/v1/chat/completions", chat)
    application.on_startup.append(on_startup)
    application.on_cleanup.append(on_cleanup)
    return application


def run(cfg: DictConfig) -> None:
    try:
        from aiohttp import web
    except ImportError:
        raise ConfigError("blendin.serve needs aiohttp. Fix: pip install 'blendin[serve]' (or aiohttp)") from None

    settings = OmegaConf.to_container(cfg, resolve=True)
    settings.pop("hydra", None)
    check(settings)  # before any model loads
    host = settings["host"]
    if not _loopback(host) and not settings["api_key"]:
        log.warning("serving on %s without an API key: anyone who reaches this address can use the models", host)
    engine, application = build(settings)
    print(
        f"blendin.serve: {model_name(settings)} on http://{host}:{settings['port']}/v1 "
        f"(pair {settings['pair']['name']}, method {settings['method']['name']}, device {engine.device})",
        file=sys.stderr,
        flush=True,
    )
    web.run_app(application, host=host, port=settings["port"], handler_cancellation=True, access_log=None, print=None)


class Background:
    """A server running in a thread of this process, for tests and notebooks:

        server = Background(cfg, pair)     # cfg: conf/serve.yaml's settings as a dict; pair: a loaded Pair
        ... requests to server.url + "/v1/completions" ...
        server.close()

    port 0 picks a free port (server.url has it)."""

    def __init__(self, cfg: dict, pair: Pair | None = None):
        import threading

        from aiohttp import web

        self.engine, application = build(cfg, pair)
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(application, handler_cancellation=True, access_log=None)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, cfg["host"], cfg["port"])
        self.loop.run_until_complete(site.start())
        port = self.runner.addresses[0][1]
        self.url = f"http://{cfg['host']}:{port}"
        self.thread = threading.Thread(target=self.loop.run_forever, name="blendin-serve-http", daemon=True)
        self.thread.start()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


def settings(*overrides: str) -> dict:
    """conf/serve.yaml composed with Hydra overrides (e.g. "method=nudging", "port=0"), as a dict."""
    from hydra import compose, initialize_config_dir

    from .cli import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(config_name="serve", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@hydra.main(version_base=None, config_path="conf", config_name="serve")
def _hydra_main(cfg: DictConfig) -> None:
    call(run, cfg)


def main() -> None:
    refuse_unknown_keys("serve", sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()
