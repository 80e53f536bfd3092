"""A small stand-in for the KFP API server (v2beta1 REST), for the CLI tests.

A real HTTP server on 127.0.0.1 (a free port) that implements the endpoints ``kfp.Client`` uses
for submitting runs and managing recurring runs, keeps their state in memory, and records every
request (method, path, query, headers, JSON body) so tests can assert what the CLI sent.
Runs move through ``run_states`` (one state per GET), so ``--wait`` can be tested; listings come
in pages of at most ``PAGE_LIMIT``.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

API = "/apis/v2beta1"
#: Largest page the fake returns, whatever was asked for, so callers must follow next_page_token.
PAGE_LIMIT = 5


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names in lower case
    body: Any


@dataclass
class State:
    experiments: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    recurring: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: States a run reports on successive GETs; the last one repeats.
    run_states: list[str] = field(default_factory=lambda: ["SUCCEEDED"])
    gets: dict[str, int] = field(default_factory=dict)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _matches(item: dict[str, Any], filter_json: str | None) -> bool:
    """The EQUALS-on-display_name predicates kfp.Client sends; other filters match all."""
    if not filter_json:
        return True
    for predicate in json.loads(filter_json).get("predicates", []):
        wanted = predicate.get("stringValue", predicate.get("string_value"))
        if predicate.get("key") == "display_name" and item.get("display_name") != wanted:
            return False
    return True


class FakeKfp:
    def __init__(self) -> None:
        self.state = State()
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def sent(self, method: str, path: str) -> list[Request]:
        """Recorded requests with this method and path (below /apis/v2beta1)."""
        return [r for r in self.requests if r.method == method and r.path == API + path]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _serve(self, method: str) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                with fake._lock:
                    fake.requests.append(Request(method, url.path, query, {k.lower(): v for k, v in self.headers.items()}, body))
                    status, payload = fake._route(method, url.path, query, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def do_DELETE(self) -> None:
                self._serve("DELETE")

        return Handler

    def _route(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        s = self.state
        rest = path.removeprefix(API)
        if method == "GET" and rest == "/healthz":
            return 200, {"multi_user": False}
        if rest == "/experiments":
            if method == "POST":
                experiment = {**body, "experiment_id": str(uuid.uuid4()), "created_at": _now()}
                s.experiments[experiment["experiment_id"]] = experiment
                return 200, experiment
            found = [e for e in s.experiments.values() if _matches(e, query.get("filter"))]
            return 200, {"experiments": found, "total_size": len(found)}
        if rest == "/runs" and method == "POST":
            run = {**body, "run_id": str(uuid.uuid4()), "state": "PENDING", "created_at": _now()}
            s.runs[run["run_id"]] = run
            return 200, run
        if rest.startswith("/runs/") and method == "GET":
            run_id = rest.removeprefix("/runs/")
            if run_id not in s.runs:
                return 404, {"error": f"run {run_id} not found", "code": 5}
            n = s.gets.get(run_id, 0)
            s.gets[run_id] = n + 1
            state = s.run_states[min(n, len(s.run_states) - 1)]
            error = {"message": "step baseline-trainer failed", "code": 2} if state == "FAILED" else None
            return 200, {**s.runs[run_id], "state": state, "error": error}
        if rest == "/recurringruns":
            if method == "POST":
                job = {**body, "recurring_run_id": str(uuid.uuid4()), "created_at": _now(), "status": "ENABLED"}
                s.recurring[job["recurring_run_id"]] = job
                return 200, job
            items = [j for j in s.recurring.values() if _matches(j, query.get("filter"))]
            start = int(query.get("page_token") or 0)
            size = min(int(query.get("page_size") or 10), PAGE_LIMIT)
            page = items[start : start + size]
            token = str(start + size) if start + size < len(items) else ""
            return 200, {"recurringRuns": page, "total_size": len(items), "next_page_token": token}
        if rest.startswith("/recurringruns/") and method == "DELETE":
            s.recurring.pop(rest.removeprefix("/recurringruns/"), None)
            return 200, {}
        return 404, {"error": f"not implemented by the fake: {method} {path}", "code": 12}
