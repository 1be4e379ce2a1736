"""A local stand-in for SendGrid and Twilio, for tests, demos and benchmarks (no internet here).

It answers like the real APIs (202 + X-Message-Id; 201 + JSON with `sid`), with configurable
latency and error rate, and can be told to answer a scripted list of statuses first. It counts
every request so a test or benchmark can prove how many messages were really sent.
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import struct
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs


@dataclass
class ReceivedRequest:
    provider: str  # "sendgrid" | "twilio"
    path: str
    body: bytes
    received_at: float
    message_id: str | None = None
    status: int = 0
    # A 429's reset as an epoch (X-RateLimit-Reset, or now + Retry-After): no retry before it.
    not_before: float | None = None
    # A mail send's subject and `headers` (Message-ID, In-Reply-To, References, List-Unsubscribe).
    subject: str | None = None
    mail_headers: dict[str, str] = field(default_factory=dict)


# Answers that are not an HTTP status (recorded with these statuses, never counted as sent):
# "timeout" holds the request past the client's timeout and closes without answering (a gateway
# that never forwarded it); "reset" closes the connection at once with a TCP reset.
TIMEOUT, RESET = 598, 599


def _mail_fields(body: bytes) -> tuple[str | None, dict[str, str]]:
    try:
        payload = json.loads(body)
    except ValueError:
        return None, {}
    if not isinstance(payload, dict):
        return None, {}
    headers = payload.get("headers")
    return payload.get("subject"), dict(headers) if isinstance(headers, dict) else {}


@dataclass
class FakeProviderServer:
    host: str = "127.0.0.1"
    port: int = 0
    latency_seconds: float = 0.0
    error_rate: float = 0.0  # share of requests answered 503
    hang_seconds: float = 3.0  # how long a "timeout" answer holds the request
    requests: list[ReceivedRequest] = field(default_factory=list)
    scripted: deque = field(default_factory=deque)  # statuses to answer first, e.g. [500, 500]
    # Per recipient (email address or phone number): answers for requests that mention it.
    # An item is a status, (status, extra headers), e.g. (429, {"X-RateLimit-Reset": "..."}),
    # or "timeout" / "reset".
    scripts: dict[str, deque] = field(default_factory=dict)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the server first"
        return f"http://{self.host}:{self._server.server_address[1]}"

    def start(self) -> FakeProviderServer:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                """Quiet: tests and benchmarks print their own figures."""

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fake._handle(self, body)

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="fake-providers", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def script(self, recipient: str, answers: list) -> None:
        with self._lock:
            self.scripts[recipient] = deque(answers)

    def for_recipient(self, recipient: str) -> list[ReceivedRequest]:
        needle = recipient.encode()
        encoded = needle.replace(b"+", b"%2B")
        with self._lock:
            return [r for r in self.requests if needle in r.body or encoded in r.body]

    def sent(self, provider: str | None = None) -> list[ReceivedRequest]:
        """Requests answered with success (what a real provider would have delivered)."""
        with self._lock:
            return [r for r in self.requests if r.status < 300 and (provider is None or r.provider == provider)]

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.scripted.clear()

    def _next_answer(self, success: int, body: bytes) -> tuple[int, dict[str, str]]:
        with self._lock:
            for recipient, answers in self.scripts.items():
                if answers and (recipient.encode() in body or recipient.replace("+", "%2B").encode() in body):
                    answer = answers.popleft()
                    if isinstance(answer, str):
                        return {"timeout": TIMEOUT, "reset": RESET}[answer], {}
                    return answer if isinstance(answer, tuple) else (answer, {})
            if self.scripted:
                return self.scripted.popleft(), {}
        if self.error_rate and random.random() < self.error_rate:
            return 503, {}
        return success, {}

    def _handle(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        if self.latency_seconds:
            time.sleep(self.latency_seconds)
        path = handler.path
        if path == "/v3/mail/send":
            provider, success = "sendgrid", 202
        elif path.startswith("/2010-04-01/Accounts/") and path.endswith("/Messages.json"):
            provider, success = "twilio", 201
        else:
            self._reply(handler, 404, {"message": "not found"})
            return
        status, extra_headers = self._next_answer(success, body)
        record = ReceivedRequest(provider=provider, path=path, body=body, received_at=time.time(), status=status)
        if provider == "sendgrid":
            record.subject, record.mail_headers = _mail_fields(body)
        with self._lock:
            self.requests.append(record)
        if status in (TIMEOUT, RESET):
            self._drop(handler, hang=self.hang_seconds if status == TIMEOUT else 0.0)
            return
        if status == 429:
            extra_headers = {k: v() if callable(v) else v for k, v in extra_headers.items()}
        if provider == "sendgrid":
            if status == 202:
                record.message_id = uuid.uuid4().hex[:22]
                self._reply(handler, 202, None, {"X-Message-Id": record.message_id})
            elif status == 429:
                headers = {"X-RateLimit-Reset": str(int(time.time()) + 1), **extra_headers}
                record.not_before = float(headers["X-RateLimit-Reset"])
                self._reply(handler, 429, {"errors": [{"message": "too many requests"}]}, headers)
            else:
                self._reply(handler, status, {"errors": [{"message": f"fake error {status}", "field": None}]}, extra_headers)
        else:
            form = parse_qs(body.decode())
            if status == 201:
                record.message_id = "SM" + uuid.uuid4().hex
                self._reply(
                    handler,
                    201,
                    {
                        "sid": record.message_id,
                        "status": "queued",
                        "to": form.get("To", [""])[0],
                        "from": form.get("From", [""])[0],
                        "num_segments": "1",
                        "error_code": None,
                    },
                )
            else:
                code = 20429 if status == 429 else 20500
                if status == 429 and "Retry-After" in extra_headers:
                    record.not_before = record.received_at + float(extra_headers["Retry-After"])
                self._reply(handler, status, {"code": code, "message": f"fake error {status}", "status": status}, extra_headers)

    @staticmethod
    def _drop(handler: BaseHTTPRequestHandler, hang: float) -> None:
        """No answer: after `hang` seconds, close the connection (SO_LINGER 0: a TCP reset)."""
        if hang:
            time.sleep(hang)
        with contextlib.suppress(OSError):
            handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        handler.close_connection = True
        with contextlib.suppress(OSError):
            handler.connection.close()

    @staticmethod
    def _reply(handler: BaseHTTPRequestHandler, status: int, payload, headers: dict[str, str] | None = None) -> None:
        data = b"" if payload is None else json.dumps(payload).encode()
        handler.send_response(status)
        for name, value in (headers or {}).items():
            # A callable is evaluated when the answer goes out (e.g. a reset time "3 s from now").
            handler.send_header(name, value() if callable(value) else value)
        if data:
            handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
