"""bridge.http against a real HTTP server on 127.0.0.1: retries, throttling, errors, redaction."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from bridge.errors import AuthError, FatalError, RateLimited, RetriableError
from bridge.http import (
    Auth,
    HttpClient,
    RedactingFilter,
    RequestCounter,
    RequestStats,
    RetryPolicy,
    TokenBucket,
    parse_retry_after,
    scrub,
)
from connectors.base import ConnectorConfig, RateLimit

# --------------------------------------------------------------------------- a scripted server


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class Reply:
    status: int = 200
    body: Any = field(default_factory=lambda: {"ok": True})
    """A dict/list (sent as JSON), a str, or a callable of the request giving a str."""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class Server:
    """Answers each request with the next scripted Reply (then 200 ``{"ok": true}``)."""

    def __init__(self) -> None:
        self.replies: deque[Reply] = deque()
        self.seen: list[Seen] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                seen = Seen(self.command, self.path, dict(self.headers))
                with server._lock:
                    server.seen.append(seen)
                    reply = server.replies.popleft() if server.replies else Reply()
                if reply.delay:
                    server.stop.wait(reply.delay)
                body = reply.body(seen) if callable(reply.body) else reply.body
                raw = (body if isinstance(body, str) else json.dumps(body)).encode()
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Quiet(ThreadingHTTPServer):
            daemon_threads = False  # server_close() joins every handler thread
            block_on_close = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that timed out closed its socket: expected here

        self.httpd = Quiet(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,))
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def script(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    yield srv
    srv.close()


@pytest.fixture
def other_server() -> Iterator[Server]:
    srv = Server()
    yield srv
    srv.close()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def make_client(server: Server, sleeps: list[float]) -> Iterator[Callable[..., HttpClient]]:
    """Clients on ``server`` whose waits are recorded in ``sleeps`` instead of slept."""
    clients: list[HttpClient] = []

    def make(**kwargs: Any) -> HttpClient:
        kwargs.setdefault("sleep", sleeps.append)
        kwargs.setdefault("timeout", 5.0)
        client = HttpClient("test", kwargs.pop("base_url", server.url + "/api"), **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# --------------------------------------------------------------------------- retries


def test_503_twice_then_200_succeeds_with_three_requests_counted(server, make_client, sleeps):
    server.script(Reply(503), Reply(503), Reply(200, {"n": 1}))
    client = make_client()
    assert client.get_json("items", params={"q": "x"}) == {"n": 1}
    assert [s.path for s in server.seen] == ["/api/items?q=x"] * 3
    assert client.counter.snapshot() == RequestStats(
        total=3, by_class={"5xx": 2, "2xx": 1}, rate_limited=0, failed=0
    )
    # Exponential backoff with full jitter: up to 0.5 s, then up to 1 s.
    assert len(sleeps) == 2
    assert 0 <= sleeps[0] <= 0.5 and 0 <= sleeps[1] <= 1.0


def test_retry_after_on_503_is_honoured_too(server, make_client, sleeps):
    server.script(Reply(503, "", {"Retry-After": "1"}), Reply(204, ""))
    assert make_client().get_json("items") is None
    assert sleeps == [1.0]


def test_429_retry_after_seconds_is_waited_exactly(server, make_client, sleeps):
    server.script(Reply(429, "slow down", {"Retry-After": "2"}), Reply(200, [1]))
    client = make_client()
    assert client.get_json("/items") == [1]
    assert sleeps == [2.0]
    assert client.counter.snapshot().rate_limited == 1


def test_429_retry_after_http_date_is_waited_until_then(server, make_client, sleeps):
    at = formatdate(time.time() + 30, usegmt=True)
    server.script(Reply(429, "", {"Retry-After": at}), Reply(200))
    make_client().get_json("items")
    (wait,) = sleeps
    assert 28 <= wait <= 30  # an HTTP-date has whole seconds


def test_retry_after_is_capped_and_rate_limited_after_exhaustion(server, make_client, sleeps):
    server.script(*[Reply(429, "no", {"Retry-After": "3600"})] * 2)
    client = make_client(retry=RetryPolicy(max_attempts=2, max_wait=10))
    with pytest.raises(RateLimited) as info:
        client.get_json("items")
    assert sleeps == [10.0]
    assert info.value.status == 429
    assert info.value.retry_after == 3600
    assert info.value.connector == "test"


def test_post_is_not_retried_on_503_unless_asked(server, make_client, sleeps):
    client = make_client()
    server.script(Reply(503))
    with pytest.raises(RetriableError) as info:
        client.request("POST", "items", json={"a": 1})
    assert not isinstance(info.value, RateLimited)
    assert info.value.status == 503
    assert "retry=True" in str(info.value)
    assert len(server.seen) == 1 and sleeps == []

    server.script(Reply(503), Reply(201, {"id": 7}))
    response = client.request("POST", "items", json={"a": 1}, retry=True)
    assert response.status_code == 201 and response.json() == {"id": 7}
    assert len(server.seen) == 3


def test_post_is_retried_on_429(server, make_client, sleeps):
    server.script(Reply(429, "", {"Retry-After": "1"}), Reply(201))
    response = make_client().request("POST", "items", json={})
    assert response.status_code == 201
    assert [s.method for s in server.seen] == ["POST", "POST"]
    assert sleeps == [1.0]


def test_retry_false_makes_one_attempt(server, make_client):
    server.script(Reply(503))
    with pytest.raises(RetriableError):
        make_client().request("GET", "items", retry=False)
    assert len(server.seen) == 1


def test_read_timeout_is_retried_then_retriable(server, make_client, sleeps):
    server.script(Reply(delay=5), Reply(delay=5))
    client = make_client(timeout=(1.0, 0.2), retry=RetryPolicy(max_attempts=2))
    with pytest.raises(RetriableError, match="ReadTimeout") as info:
        client.get_json("slow")
    assert info.value.status is None
    assert len(server.seen) == 2 and len(sleeps) == 1
    assert client.counter.snapshot() == RequestStats(total=2, failed=2)


def test_connection_refused_is_retriable(make_client, sleeps):
    client = make_client(
        base_url=f"http://127.0.0.1:{closed_port()}", retry=RetryPolicy(max_attempts=3)
    )
    with pytest.raises(RetriableError, match="ConnectionError"):
        client.get_json("items")
    assert len(sleeps) == 2
    assert client.counter.snapshot() == RequestStats(total=3, failed=3)


# --------------------------------------------------------------------------- error mapping


@pytest.mark.parametrize("status", [401, 403])
def test_401_and_403_are_auth_errors_without_retry(server, make_client, status):
    server.script(Reply(status, {"error": "bad token"}))
    with pytest.raises(AuthError) as info:
        make_client().get_json("me")
    assert info.value.status == status
    assert len(server.seen) == 1


def test_404_is_fatal_with_excerpt_unless_expected(server, make_client):
    client = make_client()
    server.script(Reply(404, {"errorMessages": ["Issue does not exist"]}))
    with pytest.raises(FatalError) as info:
        client.get_json("issue/X-1")
    assert type(info.value) is FatalError
    assert info.value.status == 404
    assert "Issue does not exist" in str(info.value)

    server.script(Reply(404), Reply(412, {"sync": "new-token"}))
    assert client.get_json("issue/X-1", expect=(404,)) is None
    response = client.request("GET", "events", expect=(412,))
    assert response.status_code == 412 and response.json() == {"sync": "new-token"}


def test_non_json_body_is_fatal(server, make_client):
    server.script(Reply(200, "<html>maintenance</html>", {"Content-Type": "text/html"}))
    with pytest.raises(FatalError, match=r"not JSON \(Content-Type text/html\)"):
        make_client().get_json("items")


def test_absolute_urls_are_accepted_and_credentials_stay_on_our_origin(
    server, other_server, make_client
):
    client = make_client(auth=Auth.bearer("origin-test-token") + Auth.query(key="origin-key"))
    client.get_json(server.url + "/api/items?page=2")
    client.get_json(other_server.url + "/elsewhere")
    (ours,) = server.seen
    assert ours.path == "/api/items?page=2&key=origin-key"
    assert ours.headers["Authorization"] == "Bearer origin-test-token"
    (theirs,) = other_server.seen
    assert theirs.path == "/elsewhere"
    assert "Authorization" not in theirs.headers


# --------------------------------------------------------------------------- rate limiting


class FakeTime:
    """A clock that only moves when someone sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_rate_limit_throttles_requests_on_the_injected_clock(server, make_client):
    fake = FakeTime()
    client = make_client(
        rate_limit=RateLimit(requests=5, per=0.5), clock=fake.clock, sleep=fake.sleep
    )
    for _ in range(12):
        client.get_json("items")
    assert len(server.seen) == 12
    # A burst of 5, then one token per 0.1 s: 7 waits of 0.1 s.
    assert fake.sleeps == pytest.approx([0.1] * 7)
    assert fake.now == pytest.approx((12 - 5) * 0.1)


def test_rate_limit_holds_in_real_time(server):
    with HttpClient("test", server.url, rate_limit=RateLimit(requests=5, per=0.5)) as client:
        started = time.monotonic()
        for _ in range(8):
            client.get_json("items")
        assert time.monotonic() - started >= 0.3 - 0.01


def test_token_bucket_loses_no_wait_under_threads():
    """With a frozen clock every acquisition reserves its own slot, whatever the interleaving."""
    waits: list[float] = []
    bucket = TokenBucket(5, 1.0, clock=lambda: 0.0, sleep=lambda s: None)

    def worker() -> None:
        for _ in range(5):
            waits.append(bucket.acquire())

    threads = [threading.Thread(target=worker) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(waits) == pytest.approx([0.0] * 5 + [k / 5 for k in range(1, 96)])


def test_from_config_takes_timeout_and_rate_limit():
    config = ConnectorConfig(kind="x", timeout=7, rate_limit=RateLimit(requests=3, per=2))
    with HttpClient.from_config("x", "http://127.0.0.1:9", config) as client:
        assert client.timeout == (7.0, 7.0)
        assert client.bucket is not None and client.bucket.rate == pytest.approx(1.5)


# --------------------------------------------------------------------------- secrets


def test_no_secret_in_logs_or_errors_after_failing_authenticated_requests(
    server, make_client, caplog
):
    token, qtoken, qkey = (f"sekrit-{name}-{uuid.uuid4().hex}" for name in ("hdr", "qt", "qk"))
    secrets = (token, qtoken, qkey)

    def echo(seen: Seen) -> str:  # a careless server echoing credentials in its error body
        return f"denied {seen.headers.get('Authorization')} for {seen.path}"

    auth = Auth.bearer(token) + Auth.query(token=qtoken, apiId=qkey)
    assert not any(s in repr(auth) for s in secrets)
    client = make_client(auth=auth, retry=RetryPolicy(max_attempts=2))
    refused = make_client(
        auth=auth, base_url=f"http://127.0.0.1:{closed_port()}", retry=RetryPolicy(max_attempts=2)
    )
    caplog.set_level(logging.DEBUG)
    errors: list[Exception] = []

    server.script(Reply(401, echo))
    with pytest.raises(AuthError) as auth_error:
        client.get_json("me", params={"q": 1})
    errors.append(auth_error.value)
    server.script(Reply(500, echo), Reply(500, echo))
    with pytest.raises(RetriableError) as server_error:
        client.get_json("items")
    errors.append(server_error.value)
    with pytest.raises(RetriableError) as network_error:
        refused.get_json("items")
    errors.append(network_error.value)

    assert token in server.seen[0].headers["Authorization"]  # the secrets were really sent
    assert qtoken in server.seen[0].path and qkey in server.seen[0].path
    assert "/api/me?q=1&token=***&apiId=*** -> 401 Unauthorized: denied ***" in str(
        auth_error.value
    )
    for exc in errors:
        shown = str(exc) + repr(exc) + "".join(traceback.format_exception(exc))
        assert not any(s in shown for s in secrets), shown
    ours = [r for r in caplog.records if r.name == "salesbridge.http"]
    assert any(r.levelno == logging.WARNING for r in ours)  # retries are logged
    assert any(r.levelno == logging.DEBUG for r in ours)  # and each request
    for record in ours:
        assert not any(s in record.getMessage() for s in secrets), record.getMessage()
    # Other libraries (urllib3 logs request lines at DEBUG) are covered by the handler filter.
    for record in caplog.records:
        RedactingFilter().filter(record)
        assert not any(s in record.getMessage() for s in secrets), record.getMessage()


def test_scrub_covers_registered_values_query_names_and_url_passwords():
    Auth.basic("ann", "pa ss/word+1")
    assert scrub("u=pa ss/word+1 q=pa%20ss%2Fword%2B1") == "u=*** q=***"
    assert scrub("https://x/y?a=1&access_token=abc&b=2") == "https://x/y?a=1&access_token=***&b=2"
    assert scrub("https://ann:hunter2@host/p") == "https://ann:***@host/p"


# --------------------------------------------------------------------------- parts


def test_parse_retry_after():
    now = 1_700_000_000.0
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after(formatdate(now + 42, usegmt=True), now=now) == 42.0
    assert parse_retry_after(formatdate(now - 42, usegmt=True), now=now) == 0.0
    assert parse_retry_after("-3") == 0.0
    for bad in (None, "", "soon", "nan"):
        assert parse_retry_after(bad) is None


def test_counter_snapshot_and_reset_are_exact():
    counter = RequestCounter()
    for status in (200, 201, 404, 429, 429, 503, None):
        counter.record(status)
    assert counter.snapshot(reset=True) == RequestStats(
        total=7, by_class={"2xx": 2, "4xx": 3, "5xx": 1}, rate_limited=2, failed=1
    )
    assert counter.snapshot() == RequestStats()


def test_counter_is_shared_and_thread_safe(server, make_client):
    counter = RequestCounter()
    client = make_client(counter=counter)
    threads = [
        threading.Thread(target=lambda: [client.get_json("items") for _ in range(5)])
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counter.snapshot() == RequestStats(total=20, by_class={"2xx": 20})
