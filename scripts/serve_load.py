"""Load check of `blendin.serve` on loopback: many concurrent clients, bounded in count and time.

    python scripts/serve_load.py                   # 64 clients, 256 requests, 32 new tokens, embedded pair, BlendIn
    python scripts/serve_load.py --requests 32 --clients 8 --max-tokens 8      # a quick look

1. Offline: the engine decodes the prompts itself (`TokenDecoder.generate`, greedy, float32, the
   server's batch size): the reference outputs and the offline throughput.
2. Clean load: `--clients` clients send the `--requests` chat requests; each answer must be the
   offline output of its prompt. Throughput (completion tokens / wall time) and latency p50 / p99.
3. Chaos: the same requests again with more clients than the server has places and queue (503s,
   retried after Retry-After), a quarter of them abandoned at a random moment (streams closed after
   a random number of pieces, others timed out), and malformed requests mixed in (each must get a
   4xx). Every answered request must still be its offline output; afterwards the server must hold
   no row and no queued request, its counts must add up, and its memory must be back where it was.

Prints one table (Markdown) and exits 1 if any check failed. Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STOP = ["\nQuestion:"]
SYSTEM = "Answer the question by walking through the reasoning steps."
RETRIES = 3600  # 503 answers one request may get before it counts as lost


def prompts(n: int) -> list[str]:
    """n distinct questions of varied length (ragged rows), the same on every run."""
    rng = random.Random(0)
    names = ["Natalia", "Tom", "Aisha", "Kenji", "Maria", "Olu", "Lena", "Ravi"]
    things = ["apples", "clips", "books", "marbles", "stamps", "pencils", "shells", "cards"]
    out = []
    for i in range(n):
        a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 9)
        who, what = names[i % len(names)], things[(i // len(names)) % len(things)]
        extra = " She counts them twice to be sure, and writes the total down." * (i % 3)
        out.append(
            f"Question: {who} has {a} {what} and buys {b} more, then gives away a {c}th of them.{extra} "
            f"How many {what} does {who} have now? (case {i})"
        )
    return out


def offline(args, questions: list[str]) -> tuple[list[str], float, int]:
    """The engine alone on the same prompts: (texts, seconds, completion tokens)."""
    import torch

    from blendin.pair import Pair, pair_spec
    from blendin.prompts import Prompt
    from blendin.serve import settings

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = settings(f"method={args.method}", "device=cpu")
    pair = Pair(pair_spec(cfg["pair"]), device="cpu")
    decoder = pair.decoder(cfg["method"])
    decoder.generate([Prompt("warm up", SYSTEM)], max_new_tokens=2)
    started = time.perf_counter()
    gens = decoder.generate(
        [Prompt(q, SYSTEM) for q in questions],
        max_new_tokens=args.max_tokens,
        stop_strings=STOP,
        batch_size=args.batch_size,
    )
    seconds = time.perf_counter() - started
    texts, tokens = [g.text for g in gens], sum(len(g.token_ids) for g in gens)
    return texts, seconds, tokens


def start_server(args, port: int) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "blendin.serve", f"method={args.method}", f"port={port}", "device=cpu",
        f"batch_size={args.batch_size}", f"max_queue={args.max_queue}", f"max_tokens_limit={args.max_tokens}",
        "max_context=1024",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    """The requests of one phase, with what came back."""

    def __init__(self, url: str, model: str, max_tokens: int):
        self.url, self.model, self.max_tokens = url, model, max_tokens
        self.latencies: list[float] = []
        self.answers: dict[int, str] = {}
        self.tokens = 0
        self.busy = 0  # 503 answers (each retried)
        self.abandoned = 0
        self.bad_answered = 0  # malformed requests answered with a 4xx naming the problem
        self.wrong: list[str] = []

    def body(self, question: str, stream: bool = False) -> dict:
        return {
            "model": self.model,
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
            "max_tokens": self.max_tokens,
            "stop": STOP,
            "temperature": 0,
            "stream": stream,
        }

    async def ask(self, session, index: int, question: str) -> None:
        """One request until it is answered (503: wait Retry-After and send it again)."""
        started = time.perf_counter()
        for _ in range(RETRIES):
            async with session.post(self.url + "/v1/chat/completions", json=self.body(question)) as r:
                if r.status == 503:
                    self.busy += 1
                    await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                    continue
                out = await r.json()
                if r.status != 200:
                    self.wrong.append(f"request {index}: HTTP {r.status} {out}")
                    return
                break
        else:
            self.wrong.append(f"request {index}: still 503 after {RETRIES} tries")
            return
        self.latencies.append(time.perf_counter() - started)
        self.answers[index] = out["choices"][0]["message"]["content"]
        self.tokens += out["usage"]["completion_tokens"]

    async def abandon(self, session, question: str, rng: random.Random) -> None:
        """A client that leaves: a stream closed after a few pieces, or a request that times out."""
        import aiohttp

        self.abandoned += 1
        if rng.random() < 0.5:
            pieces = rng.randint(1, 6)
            for _ in range(RETRIES):
                async with session.post(self.url + "/v1/chat/completions", json=self.body(question, True)) as r:
                    if r.status == 503:
                        await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                        continue
                    async for line in r.content:
                        pieces -= line.startswith(b"data: ")
                        if pieces <= 0:
                            break  # leave with the stream open: the connection closes under it
                    return
        try:
            timeout = aiohttp.ClientTimeout(total=rng.uniform(0.05, 3.0))
            async with session.post(self.url + "/v1/chat/completions", json=self.body(question), timeout=timeout) as r:
                await r.read()
        except asyncio.TimeoutError:
            pass

    async def malformed(self, session, rng: random.Random) -> None:
        """A request the server must refuse with a 4xx that names what is wrong."""
        good = self.body("What is 2 + 2?")
        bad = rng.choice(
            [
                ({**good, "colour": "blue"}, "colour"),
                ({**good, "n": 1000}, "n"),
                ({**good, "max_tokens": self.max_tokens + 1}, "max_tokens"),
                ({**good, "messages": [{"role": "user", "content": "word " * 3000}]}, "messages"),
                ({**good, "messages": []}, "messages"),
                ({**good, "temperature": "hot"}, "temperature"),
                ({**good, "blendin": {"tau": -2}}, "blendin.tau"),
                ("{not json", None),
            ]
        )
        data = bad[0] if isinstance(bad[0], str) else json.dumps(bad[0])
        # a prompt too long is found when the engine takes the request: a full queue answers first
        for _ in range(RETRIES):
            async with session.post(
                self.url + "/v1/chat/completions", data=data, headers={"Content-Type": "application/json"}
            ) as r:
                out = await r.json()
                if r.status != 503:
                    break
            await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
        if 400 <= r.status < 500 and out["error"]["param"] == bad[1]:
            self.bad_answered += 1
        else:
            self.wrong.append(f"malformed request {bad[1]}: HTTP {r.status} {out}")


async def phase(url: str, model: str, args, questions: list[str], clients: int, chaos: bool) -> tuple:
    """Send every question (and, with chaos, abandoned and malformed requests) from `clients` workers."""
    import aiohttp

    rng = random.Random(1)
    client = Client(url, model, args.max_tokens)
    jobs: list[tuple] = [("ask", i, q) for i, q in enumerate(questions)]
    if chaos:
        jobs += [("abandon", -1, rng.choice(questions)) for _ in range(len(questions) // 4)]
        jobs += [("malformed", -1, "") for _ in range(len(questions) // 8)]
        rng.shuffle(jobs)
    queue: asyncio.Queue = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)

    async def worker(session) -> None:
        while not queue.empty():
            kind, index, question = queue.get_nowait()
            if kind == "ask":
                await client.ask(session, index, question)
            elif kind == "abandon":
                await client.abandon(session, question, rng)
            else:
                await client.malformed(session, rng)

    async def watch() -> None:  # progress on standard error, and a look at the server when it seems stuck
        while True:
            await asyncio.sleep(30)
            print(f"  {len(client.answers)} answered, {queue.qsize()} to send; server: {health(url)}", file=sys.stderr)

    watcher = asyncio.get_running_loop().create_task(watch())
    connector = aiohttp.TCPConnector(limit=clients + 8, force_close=chaos)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(clients)))
    watcher.cancel()
    return client, time.perf_counter() - started


def health(url: str) -> dict:
    import urllib.request

    with urllib.request.urlopen(url + "/health", timeout=30) as r:
        return json.loads(r.read())


def settle(url: str, timeout: float = 120) -> dict:
    """The server's /health once it holds no row (or after `timeout` s), read again a moment later: an idle
    engine hands freed memory back to the system first."""
    end = time.time() + timeout
    while time.time() < end:
        state = health(url)
        if (state["active_rows"], state["waiting_rows"], state["batches"], state["scoring"]) == (0, 0, 0, 0):
            break
        time.sleep(0.2)
    time.sleep(2)
    return health(url)


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16, help="the server's and the offline engine's")
    parser.add_argument(
        "--max-queue", type=int, default=64, help="rows the server lets wait (chaos sends more clients)"
    )
    parser.add_argument("--method", default="blendin")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one request may take at most")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads of the offline engine and the server (0: torch's default; "
        "1 on a machine other jobs share: spinning threads of several processes slow each other down)",
    )
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    questions = prompts(args.requests)

    print(f"offline: {len(questions)} prompts, {args.max_tokens} new tokens, batch {args.batch_size}", file=sys.stderr)
    want, offline_s, offline_tokens = offline(args, questions)

    port = free_port()
    server = start_server(args, port)
    url, model = f"http://127.0.0.1:{port}", f"smollm2_gemma3/{args.method}"
    checks: list[tuple[str, bool, str]] = []
    try:
        for _ in range(600):
            if server.poll() is not None:
                raise SystemExit(f"the server exited: {server.stderr.read()[-2000:] if server.stderr else ''}")
            try:
                health(url)
                break
            except OSError:
                time.sleep(0.5)
        asyncio.run(phase(url, model, args, questions[:2], 2, chaos=False))  # warm up
        start = settle(url)
        print(f"clean: {args.clients} clients, {args.requests} requests", file=sys.stderr)
        clean, clean_s = asyncio.run(phase(url, model, args, questions, args.clients, chaos=False))
        after_clean = settle(url)
        chaos_clients = args.batch_size + args.max_queue + args.clients // 2
        print(f"chaos: {chaos_clients} clients, abandoned and malformed requests mixed in", file=sys.stderr)
        chaos, chaos_s = asyncio.run(phase(url, model, args, questions, chaos_clients, chaos=True))
        end = settle(url)
    finally:
        server.terminate()
        server.wait(timeout=60)

    def same(client: Client) -> int:
        return sum(client.answers.get(i) == text for i, text in enumerate(want))

    served_rate, offline_rate = clean.tokens / clean_s, offline_tokens / offline_s
    checks += [
        ("clean: every request answered", len(clean.answers) == len(questions) and not clean.wrong,
         f"{len(clean.answers)} / {len(questions)}"),
        ("clean: outputs identical to offline", same(clean) == len(questions), f"{same(clean)} / {len(questions)}"),
        ("chaos: every kept request answered", len(chaos.answers) == len(questions) and not chaos.wrong,
         f"{len(chaos.answers)} / {len(questions)}"),
        ("chaos: outputs identical to offline", same(chaos) == len(questions), f"{same(chaos)} / {len(questions)}"),
        ("chaos: malformed requests refused (4xx, field named)", chaos.bad_answered == args.requests // 8,
         f"{chaos.bad_answered} / {args.requests // 8}"),
        ("chaos: no row or request left in the engine",
         (end["active_rows"], end["waiting_rows"], end["batches"], end["scoring"]) == (0, 0, 0, 0),
         f"active {end['active_rows']}, waiting {end['waiting_rows']}, batches {end['batches']}"),
        ("chaos: every request taken finished, was cancelled or refused; none failed",
         end["requests"] == end["finished"] + end["cancelled"] + end["refused"] and end["failed"] == 0,
         f"{end['requests']} taken = {end['finished']} finished + {end['cancelled']} cancelled + "
         f"{end['refused']} refused (prompt too long); {end['failed']} failed"),
        ("chaos: memory back to its start (idle RSS within 5% of the warmed-up server's)",
         end["rss_mb"] <= 1.05 * start["rss_mb"],
         f"{start['rss_mb']:.0f} MiB after warm-up, {after_clean['rss_mb']:.0f} after clean, "
         f"{end['rss_mb']:.0f} after chaos"),
    ]  # fmt: skip
    rows = [
        ("offline engine (TokenDecoder.generate)", f"{offline_tokens}", f"{offline_s:.1f}", f"{offline_rate:.1f}",
         "", ""),
        ("server, clean load", f"{clean.tokens}", f"{clean_s:.1f}", f"{served_rate:.1f}",
         f"{percentile(clean.latencies, 0.5):.1f}", f"{percentile(clean.latencies, 0.99):.1f}"),
        ("server, chaos (kept requests)", f"{chaos.tokens}", f"{chaos_s:.1f}", f"{chaos.tokens / chaos_s:.1f}",
         f"{percentile(chaos.latencies, 0.5):.1f}", f"{percentile(chaos.latencies, 0.99):.1f}"),
    ]  # fmt: skip
    print(f"\nserve_load: {args.requests} requests, {args.clients} clients (chaos {chaos_clients}), "
          f"{args.max_tokens} new tokens, method {args.method}, batch {args.batch_size}, queue {args.max_queue}, "
          f"greedy float32 on {os.cpu_count()} CPU cores, torch threads {args.threads or 'default'}\n")  # fmt: skip
    print("| run | completion tokens | wall s | tokens/s | latency p50 s | latency p99 s |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nserver / offline throughput: {served_rate / offline_rate:.2f}; chaos: {chaos.busy} answers 503 "
          f"(retried), {chaos.abandoned} requests abandoned, {args.requests // 8} malformed\n")  # fmt: skip
    print("| check | result | measured |")
    print("|---|---|---|")
    for name, ok, detail in checks:
        print(f"| {name} | {'pass' if ok else 'FAIL'} | {detail} |")
    for problem in (clean.wrong + chaos.wrong)[:10]:
        print("problem:", problem)
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
