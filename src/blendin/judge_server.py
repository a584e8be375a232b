"""A small OpenAI-compatible chat-completions server over a transformers chat model.

    python -m blendin.judge_server --model embedded:smollm2-135m-instruct --port 8011

Serves POST /v1/chat/completions (greedy, whatever temperature is asked) and GET /v1/models on
127.0.0.1, so `judge=openai judge.base_url=http://127.0.0.1:8011/v1` works without vLLM. Prints
"listening on <url>" once ready. One request at a time; for real judging at scale use vLLM.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .judges import LocalJudge


def serve(model: str, host: str = "127.0.0.1", port: int = 8011, device: str = "auto") -> None:
    judge = LocalJudge(model, device=device)
    judge.chat([{"role": "user", "content": "ready?"}])  # load the model before announcing the port
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.rstrip("/") == "/v1/models":
                return self._send(200, {"object": "list", "data": [{"id": model, "object": "model"}]})
            self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self):
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self._send(404, {"error": {"message": f"no route {self.path}"}})
            try:
                request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                messages = request["messages"]
            except (ValueError, KeyError) as err:
                return self._send(400, {"error": {"message": f"bad request: {err}"}})
            with lock:  # one request at a time, with its own answer budget
                judge.max_tokens = int(request.get("max_tokens") or 256)
                text = judge.chat(messages)
            self._send(
                200,
                {
                    "id": f"chatcmpl-{time.time_ns()}",
                    "object": "chat.completion",
                    "model": model,
                    "choices": [
                        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
                    ],
                },
            )

        def _send(self, code: int, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt, *args):  # keep stdout for the "listening" line
            sys.stderr.write("judge_server: " + fmt % args + "\n")

    server = ThreadingHTTPServer((host, port), Handler)
    print(f"listening on http://{host}:{server.server_address[1]}/v1", flush=True)
    server.serve_forever()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m blendin.judge_server", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="hub id, folder, .gguf file or embedded:<name>")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8011, help="0 picks a free port")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    serve(args.model, args.host, args.port, args.device)


if __name__ == "__main__":
    main()
