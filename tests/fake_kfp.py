"""A small stand-in for the KFP API server (v2beta1 REST), for the CLI tests.

A real HTTP server on 127.0.0.1 (a free port) that implements the endpoints ``kfp.Client`` uses
for uploading pipelines and their versions (multipart uploads), submitting runs and managing
recurring runs, keeps their state in memory, and records every request (method, path, query,
headers, JSON body) so tests can assert what the CLI sent. Runs move through ``run_states`` (one
state per GET), so ``--wait`` can be tested; listings come in pages of at most ``PAGE_LIMIT``.

Multi-user Kubeflow: experiments, pipelines and recurring runs carry a namespace, and listings
with a ``namespace`` query return only that namespace's (pipelines: and the shared ones). With
``require_auth`` set to a bearer token or a cookie, requests without it are answered as Kubeflow
behind Dex answers them: a redirect to the login page (cookie) or HTTP 401 (token).
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
    pipelines: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: pipeline_version_id -> version (with its uploaded package text under "package").
    versions: dict[str, dict[str, Any]] = field(default_factory=dict)


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
    def __init__(self, require_auth: str | None = None) -> None:
        #: "Bearer <token>" or "<cookie name>=<value>": what every request must carry.
        self.require_auth = require_auth
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
                content_type = self.headers.get("Content-Type", "")
                if content_type.startswith("multipart/form-data"):
                    body: Any = _multipart(raw, content_type)
                else:
                    body = json.loads(raw) if raw else None
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                headers = {k.lower(): v for k, v in self.headers.items()}
                with fake._lock:
                    fake.requests.append(Request(method, url.path, query, headers, body))
                    if url.path.startswith("/dex/"):
                        self._html(200, "<!DOCTYPE html><html><body>Log in to Your Account</body></html>")
                        return
                    if not fake._authorized(headers):
                        if fake.require_auth and not fake.require_auth.startswith("Bearer "):
                            self.send_response(302)
                            self.send_header("Location", "/dex/auth?client_id=kubeflow-oidc-authservice")
                            self.send_header("Content-Length", "0")
                            self.end_headers()
                            return
                        status, payload = 401, {"error": "Unauthorized", "code": 16}
                    else:
                        status, payload = fake._route(method, url.path, query, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _html(self, status: int, text: str) -> None:
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/html")
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

    def _authorized(self, headers: dict[str, str]) -> bool:
        wanted = self.require_auth
        if not wanted:
            return True
        if wanted.startswith("Bearer "):
            return headers.get("authorization") == wanted
        return wanted in [c.strip() for c in headers.get("cookie", "").split(";")]

    def _route(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        s = self.state
        rest = path.removeprefix(API)
        if method == "GET" and rest == "/healthz":
            return 200, {"multi_user": self.require_auth is not None}
        if rest == "/experiments":
            if method == "POST":
                experiment = {**body, "experiment_id": str(uuid.uuid4()), "created_at": _now()}
                s.experiments[experiment["experiment_id"]] = experiment
                return 200, experiment
            found = [
                e for e in s.experiments.values()
                if _matches(e, query.get("filter")) and _in_namespace(e, query.get("namespace"))
            ]
            return 200, {"experiments": found, "total_size": len(found)}
        if rest == "/pipelines" and method == "POST":
            if any(p["display_name"] == body["display_name"] and p.get("namespace") == body.get("namespace")
                   for p in s.pipelines.values()):
                return 409, {"error": f"pipeline {body['display_name']} already exists", "code": 6}
            pipeline = {**body, "pipeline_id": str(uuid.uuid4()), "created_at": _now()}
            s.pipelines[pipeline["pipeline_id"]] = pipeline
            return 200, pipeline
        if rest == "/pipelines" and method == "GET":
            namespace = query.get("namespace")
            found = [
                p for p in s.pipelines.values()
                if _matches(p, query.get("filter")) and (not p.get("namespace") or p.get("namespace") == namespace)
            ]
            return 200, {"pipelines": found, "total_size": len(found)}
        if rest == "/pipelines/upload_version" and method == "POST":
            pipeline_id = query["pipelineid"]
            if pipeline_id not in s.pipelines:
                return 404, {"error": f"pipeline {pipeline_id} not found", "code": 5}
            if any(v["pipeline_id"] == pipeline_id and v["display_name"] == query["display_name"] for v in s.versions.values()):
                return 409, {"error": f"version {query['display_name']} already exists", "code": 6}
            version = {
                "pipeline_id": pipeline_id, "pipeline_version_id": str(uuid.uuid4()), "name": query.get("name"),
                "display_name": query["display_name"], "description": query.get("description"), "created_at": _now(),
                "package": body["uploadfile"],
            }
            s.versions[version["pipeline_version_id"]] = version
            return 200, {k: v for k, v in version.items() if k != "package"}
        if rest.startswith("/pipelines/") and rest.endswith("/versions") and method == "GET":
            pipeline_id = rest.split("/")[2]
            found = [
                {k: v for k, v in version.items() if k != "package"} for version in s.versions.values()
                if version["pipeline_id"] == pipeline_id and _matches(version, query.get("filter"))
            ]
            return 200, {"pipeline_versions": found, "total_size": len(found)}
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
            items = [
                j for j in s.recurring.values()
                if _matches(j, query.get("filter")) and _in_namespace(self._job_namespace(j), query.get("namespace"))
            ]
            start = int(query.get("page_token") or 0)
            size = min(int(query.get("page_size") or 10), PAGE_LIMIT)
            page = items[start : start + size]
            token = str(start + size) if start + size < len(items) else ""
            return 200, {"recurringRuns": page, "total_size": len(items), "next_page_token": token}
        if rest.startswith("/recurringruns/") and method == "DELETE":
            s.recurring.pop(rest.removeprefix("/recurringruns/"), None)
            return 200, {}
        return 404, {"error": f"not implemented by the fake: {method} {path}", "code": 12}

    def _job_namespace(self, item: dict[str, Any]) -> str | None:
        """A run's or recurring run's namespace: its experiment's."""
        experiment = self.state.experiments.get(item.get("experiment_id") or "", {})
        return experiment.get("namespace")

    def namespace_of(self, item: dict[str, Any]) -> str | None:
        with self._lock:
            return self._job_namespace(item)


def _in_namespace(item: dict[str, Any] | str | None, namespace: str | None) -> bool:
    """No namespace asked: everything (single-user); else only that namespace's."""
    if namespace is None:
        return True
    value = item.get("namespace") if isinstance(item, dict) else item
    return value == namespace


def _multipart(raw: bytes, content_type: str) -> dict[str, str]:
    """The fields of a multipart/form-data body (uploaded files as text)."""
    from email import policy
    from email.parser import BytesParser

    message = BytesParser(policy=policy.HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        fields[str(name)] = part.get_payload(decode=True).decode()
    return fields
