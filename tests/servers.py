"""Real servers for tests, bound to 127.0.0.1 on free ports and stopped afterwards.

- ``S3rver``: the npm ``s3rver`` S3 server (installed by ``make test-servers``), or a real MinIO
  when ``MAMMO_TEST_MINIO_ENDPOINT``/``_ACCESS_KEY``/``_SECRET_KEY`` are set (``minio_from_env``).
- ``MotoS3``: moto's S3 server (its own virtual environment, made by ``make test-servers``):
  in memory, any credentials, and it enforces conditional writes (``If-None-Match``/``If-Match``).
- ``Pushgateway``: Debian's ``prometheus-pushgateway`` binary.
- ``FaultProxy``: a TCP proxy in front of an S3 endpoint that fails the way networks and servers
  do (goes down mid-transfer, answers 503 SlowDown) and logs the HTTP request lines it forwards,
  so tests can count transfers.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from minio import Minio
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
S3RVER_BIN = REPO / ".cache" / "s3rver" / "node_modules" / ".bin" / "s3rver"
MOTO_PYTHON = REPO / ".cache" / "moto-server" / "bin" / "python"
HOST = "127.0.0.1"

#: Talks to the test servers directly: ``urlopen``'s global opener caches whatever proxy
#: variables were set when it was first used (a test may set a refusing proxy on purpose).
_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _wait_until(
    ready: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, log: Path
) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        if ready():
            return
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{what} not ready after 30 s: {log.read_text()[-2000:]}")


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


class _Process:
    """A server binary run in the background, its output in a log file."""

    def __init__(self, args: list[str], log: Path, what: str, ready: Callable[[], bool]) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        _wait_until(ready, self.proc, what, log)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass(frozen=True)
class S3Endpoint:
    endpoint: str  # host:port
    access_key: str
    secret_key: str
    secure: bool = False

    @property
    def host(self) -> str:
        return self.endpoint.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])

    def client(self) -> Minio:
        """A plain minio client for test setup and for tampering behind the store's back."""
        return Minio(self.endpoint, self.access_key, self.secret_key, secure=self.secure)


@dataclass(frozen=True)
class S3Env:
    """A test's bucket on the S3 server; the ``s3_env`` fixture points ``MINIO_*`` at it."""

    server: S3Endpoint
    bucket: str

    @property
    def uri(self) -> str:
        """``s3://<bucket>``: the storage root of this test."""
        return f"s3://{self.bucket}"


def minio_from_env() -> S3Endpoint | None:
    """A real MinIO given by ``MAMMO_TEST_MINIO_*``, or None to use s3rver."""
    endpoint = os.environ.get("MAMMO_TEST_MINIO_ENDPOINT")
    if not endpoint:
        return None
    return S3Endpoint(
        endpoint,
        os.environ["MAMMO_TEST_MINIO_ACCESS_KEY"],
        os.environ["MAMMO_TEST_MINIO_SECRET_KEY"],
        secure=os.environ.get("MAMMO_TEST_MINIO_SECURE", "false").lower() == "true",
    )


class S3rver:
    """``s3rver -d <dir> -a 127.0.0.1 -p <port> --silent``; keys are ``S3RVER``/``S3RVER``."""

    def __init__(self, data_dir: Path) -> None:
        if not S3RVER_BIN.exists():
            raise RuntimeError(f"s3rver is not installed at {S3RVER_BIN}: run `make test-servers`")
        port = free_port()
        data_dir.mkdir(parents=True, exist_ok=True)
        self._args = [str(S3RVER_BIN), "-d", str(data_dir), "-a", HOST, "-p", str(port), "--silent"]
        self._log, self._port, self.restarts = data_dir.parent / "s3rver.log", port, 0
        self._process = _Process(self._args, self._log, "s3rver", lambda: _port_open(port))
        self.endpoint = S3Endpoint(f"{HOST}:{port}", "S3RVER", "S3RVER")

    def ensure_running(self) -> None:
        """Start it again, on its port and data, if it died. s3rver 3.7.1 crashes on an unhandled
        ENOENT when a PUT races the removal of the folder that a DELETE just emptied (the lock
        tests' six processes can do that): the test it happened in fails, the next ones get a
        server. The crash's log is kept beside the new one."""
        if self._process.proc.poll() is None:
            return
        self.restarts += 1
        self._log.rename(self._log.with_suffix(f".crashed-{self.restarts}.log"))
        self._process = _Process(self._args, self._log, "s3rver", lambda: _port_open(self._port))

    def stop(self) -> None:
        self._process.stop()


class MotoS3:
    """``python -m moto.server -H 127.0.0.1 -p <port>`` from moto's own environment."""

    def __init__(self, log: Path) -> None:
        if not MOTO_PYTHON.exists():
            raise RuntimeError(f"moto's server is not installed at {MOTO_PYTHON.parent.parent}: run `make test-servers`")
        port = free_port()
        self._process = _Process([str(MOTO_PYTHON), "-m", "moto.server", "-H", HOST, "-p", str(port)], log,
                                 "moto server", lambda: _port_open(port))
        self.endpoint = S3Endpoint(f"{HOST}:{port}", "moto-test-key", "moto-test-secret")

    def stop(self) -> None:
        self._process.stop()


def empty_and_remove_bucket(client: Minio, bucket: str) -> None:
    # One by one: s3rver's batch delete races with itself removing empty folders.
    for obj in client.list_objects(bucket, recursive=True):
        client.remove_object(bucket, str(obj.object_name))
    client.remove_bucket(bucket)


def pushgateway_binary() -> str:
    found = shutil.which("prometheus-pushgateway") or (
        "/usr/bin/prometheus-pushgateway"
        if Path("/usr/bin/prometheus-pushgateway").exists()
        else None
    )
    if found is None:
        raise RuntimeError("prometheus-pushgateway is not installed: run `make test-servers`")
    return found


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


class Pushgateway:
    """``web_config``: a ``--web.config.file`` (e.g. basic auth users); readiness is then
    checked by the port alone."""

    def __init__(self, work_dir: Path, web_config: Path | None = None) -> None:
        port = free_port()
        self.port = port
        self.url = f"http://{HOST}:{port}"
        # No persistence: Debian's build defaults to /var/lib/prometheus/pushgateway.data, which
        # every gateway (and every test session) would share and leave behind.
        args = [pushgateway_binary(), f"--web.listen-address={HOST}:{port}", "--persistence.file="]
        if web_config is not None:
            args.append(f"--web.config.file={web_config}")
        ready = self._ready if web_config is None else (lambda: _port_open(port))
        self._process = _Process(args, work_dir / "pushgateway.log", "pushgateway", ready)

    def _ready(self) -> bool:
        try:
            with _direct.open(f"{self.url}/-/ready", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def samples(self, **labels: str) -> list[Sample]:
        """Series the gateway exposes on ``/metrics`` whose labels include ``labels``."""
        with _direct.open(f"{self.url}/metrics", timeout=5) as response:
            text = response.read().decode()
        found = []
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if all(s.labels.get(k) == v for k, v in labels.items()):
                    found.append(Sample(s.name, dict(s.labels), s.value))
        return found

    def stop(self) -> None:
        self._process.stop()


_REQUEST_LINE = re.compile(rb"(GET|PUT|POST|HEAD|DELETE) (\S+) HTTP/1\.1\r\n")
_SLOWDOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><Resource>/</Resource>"
    b"<RequestId>fault-proxy</RequestId></Error>"
)


class FaultProxy:
    """Forwards TCP from ``endpoint`` to an upstream S3 server, failing on demand.

    ``down()`` stops listening and resets open connections (a crashed server), ``up()`` listens
    again on the same port. ``cut_after(n, direction)`` goes down once ``n`` more bytes have
    passed in that direction ("download": server to client, "upload": client to server).
    ``slow_down(n)`` answers the next ``n`` requests with HTTP 503 SlowDown. ``requests``
    holds the request lines seen, e.g. ``"GET /bucket/key"``.
    """

    def __init__(self, upstream: S3Endpoint) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.endpoint = f"{HOST}:{self.port}"
        self.requests: list[str] = []
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._cut: dict[str, int] = {}
        self._slowdowns = 0
        self.up()

    # --- control ------------------------------------------------------------------------

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, self.port))
        listener.listen(64)
        listener.settimeout(0.1)
        self._listener = listener
        threading.Thread(target=self._accept_loop, args=(listener,), daemon=True).start()

    def down(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, set()
            self._cut.clear()
        if listener is not None:
            listener.close()
        for conn in conns:
            _reset(conn)

    def cut_after(self, nbytes: int, direction: str = "download") -> None:
        with self._lock:
            self._cut[direction] = nbytes

    def slow_down(self, requests: int) -> None:
        """Answer the next ``requests`` requests with 503 SlowDown (one per new connection;
        open keep-alive connections are dropped so the client has to reconnect)."""
        with self._lock:
            self._slowdowns = requests
            conns, self._conns = self._conns, set()
        for conn in conns:
            _reset(conn)

    def close(self) -> None:
        self.down()

    # --- forwarding ---------------------------------------------------------------------

    def _accept_loop(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            with self._lock:
                slow = self._slowdowns > 0
                self._slowdowns -= 1 if slow else 0
            target = self._answer_slowdown if slow else self._forward
            threading.Thread(target=target, args=(client,), daemon=True).start()

    def _answer_slowdown(self, client: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = client.recv(65536)
            if not chunk:
                break
            data += chunk
        self._log_requests(data)
        head = (
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\n"
            f"Content-Length: {len(_SLOWDOWN_BODY)}\r\nConnection: close\r\n\r\n"
        )
        client.sendall(head.encode() + _SLOWDOWN_BODY)
        client.close()

    def _forward(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection((self.upstream.host, self.upstream.port))
        except OSError:
            _reset(client)
            return
        with self._lock:
            if self._listener is None:
                _reset(client)
                server.close()
                return
            self._conns.update({client, server})
        threading.Thread(target=self._pump, args=(client, server, "upload"), daemon=True).start()
        self._pump(server, client, "download")

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        scan = b""
        while True:
            try:
                chunk = src.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                _reset(src)
                _reset(dst)
                return
            if direction == "upload":
                scan = self._log_requests(scan + chunk)
            with self._lock:
                budget = self._cut.get(direction)
                if budget is not None:
                    self._cut[direction] = budget - len(chunk)
            if budget is not None and budget <= len(chunk):
                try:
                    dst.sendall(chunk[: max(budget, 0)])
                except OSError:
                    pass
                self.down()
                return
            try:
                dst.sendall(chunk)
            except OSError:
                _reset(src)
                _reset(dst)
                return

    def _log_requests(self, data: bytes) -> bytes:
        """Record complete request lines in ``data``; return the tail still to be scanned."""
        end = 0
        for match in _REQUEST_LINE.finditer(data):
            path = match.group(2).decode(errors="replace")
            with self._lock:
                self.requests.append(f"{match.group(1).decode()} {path}")
            end = match.end()
        return data[end:][-4096:]


def _reset(sock: socket.socket) -> None:
    """Close with RST, as a crashed peer would."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
