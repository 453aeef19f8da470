"""The shared emulator machinery: server lifecycle, faults, rate limits, log, hooks, auth."""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Iterator

import pytest
import requests
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from bridge.emulator import Authenticator, Controls, Emulator, EmulatorServer, Exchange
from bridge.http import HttpClient, RetryPolicy


class Echo(Emulator):
    """The smallest tool: ``/ping`` answers, ``/whoami`` needs a credential."""

    name = "echo"

    def __init__(self, controls: Controls | None = None) -> None:
        super().__init__(controls=controls)
        self.auth: Authenticator[str] = Authenticator(
            bearer={"good": "ann"},
            basic={("bob", "pw"): "bob"},
            query={"key": {"k1": "kim"}},
        )

    def build_app(self) -> ASGIApp:
        async def ping(request: Request) -> Response:
            return JSONResponse({"pong": True, "q": dict(request.query_params)})

        async def empty(request: Request) -> Response:
            return Response(status_code=204)

        async def whoami(request: Request) -> Response:
            who = self.auth.authenticate(request)
            if who is None:
                status = 401 if self.auth.presented(request) else 403
                return JSONResponse({"error": "no"}, status)
            return JSONResponse({"user": who})

        return Starlette(
            routes=[
                Route("/ping", ping, methods=["GET", "POST"]),
                Route("/whoami", whoami),
                Route("/empty", empty, methods=["PUT"]),
            ]
        )


@pytest.fixture
def echo() -> Iterator[Echo]:
    with Echo() as emulator, requests.Session() as session:
        emulator.session = session  # type: ignore[attr-defined]
        yield emulator


def get(em: Echo, path: str, **kwargs: object) -> requests.Response:
    session: requests.Session = em.session  # type: ignore[attr-defined]
    return session.get(em.base_url + path, timeout=5, **kwargs)  # type: ignore[arg-type]


def test_server_binds_a_free_port_and_stops_cleanly() -> None:
    app = Starlette(routes=[Route("/", lambda r: JSONResponse({"ok": 1}))])
    server = EmulatorServer(app)
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.base_url
    with server:
        assert server.port > 0 and server.running
        assert requests.get(server.base_url + "/", timeout=5).json() == {"ok": 1}
        port = server.port
    assert not server.running
    with pytest.raises(OSError):  # nothing listens any more
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_server_on_a_fixed_port_and_a_busy_port_fails_clearly() -> None:
    app = Starlette()
    with EmulatorServer(app) as first, pytest.raises(OSError):
        EmulatorServer(app, port=first.port).start()


def test_restart_keeps_controls() -> None:
    em = Echo()
    em.controls.fail(503, 1)
    with em:
        assert requests.get(em.base_url + "/ping", timeout=5).status_code == 503
    with em:
        assert requests.get(em.base_url + "/ping", timeout=5).status_code == 200
    assert em.controls.count("GET", "/ping") == 2


def test_queued_failures_by_path_and_method_then_recovery(echo: Echo) -> None:
    c = echo.controls
    c.fail(500, 2, path="/ping", method="GET")
    c.fail(502, 1, path="/whoami")
    assert [get(echo, "/ping").status_code for _ in range(3)] == [500, 500, 200]
    assert get(echo, "/whoami", headers={"Authorization": "Bearer good"}).status_code == 502
    assert get(echo, "/whoami", headers={"Authorization": "Bearer good"}).status_code == 200
    assert c.count() == 5
    assert c.count("GET", "/ping", status=500) == 2
    assert c.count(status=502) == 1


def test_fail_forever_until_reset_and_retry_after(echo: Echo) -> None:
    echo.controls.fail(503, None, retry_after=7)
    responses = [get(echo, "/ping") for _ in range(3)]
    assert {r.status_code for r in responses} == {503}
    assert responses[0].headers["Retry-After"] == "7"
    assert responses[0].json() == {"message": "injected 503"}
    echo.controls.reset()
    assert get(echo, "/ping").status_code == 200
    assert echo.controls.count() == 1  # reset clears the log too


def test_injected_429_carries_retry_after_by_default(echo: Echo) -> None:
    echo.controls.fail(429)
    r = get(echo, "/ping")
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"


def test_delay_adds_latency_to_matching_requests(echo: Echo) -> None:
    echo.controls.delay(0.15, path="/ping")
    started = time.perf_counter()
    get(echo, "/ping")
    assert time.perf_counter() - started >= 0.15
    started = time.perf_counter()
    get(echo, "/whoami")
    assert time.perf_counter() - started < 0.15


def test_rate_limit_per_credential_window_and_headers() -> None:
    now = [100.0]
    controls = Controls(clock=lambda: now[0])
    with Echo(controls) as em, requests.Session() as s:
        controls.rate_limit(
            2, 10.0, headers=lambda limit, left, reset: {"X-Limit": str(limit), "X-Left": str(left)}
        )
        url = em.base_url + "/ping"
        ann = {"Authorization": "Bearer good"}
        statuses = [s.get(url, headers=ann, timeout=5) for _ in range(3)]
        assert [r.status_code for r in statuses] == [200, 200, 429]
        assert statuses[0].headers["X-Left"] == "1" and statuses[2].headers["X-Left"] == "0"
        assert statuses[2].headers["Retry-After"] == "10"
        # another credential has its own budget
        assert s.get(url, params={"key": "k1"}, timeout=5).status_code == 200
        now[0] += 4
        assert s.get(url, headers=ann, timeout=5).headers["Retry-After"] == "6"
        now[0] += 6
        assert s.get(url, headers=ann, timeout=5).status_code == 200


def test_http_client_honours_injected_faults_with_exact_attempts(echo: Echo) -> None:
    """The same faults drive our client's retries: two 503s and a 429, then success."""
    echo.controls.fail(503, 2, path="/ping")
    echo.controls.fail(429, 1, path="/ping", retry_after=2)
    waits: list[float] = []
    with HttpClient(
        "echo", echo.base_url, retry=RetryPolicy(max_attempts=5), sleep=waits.append
    ) as client:
        assert client.get_json("/ping") == {"pong": True, "q": {}}
    assert echo.controls.count("GET", "/ping") == 4
    assert waits[-1] == 2


def test_hooks_see_every_exchange_before_the_client_does(echo: Echo) -> None:
    seen: list[Exchange] = []
    echo.controls.on_response(seen.append)
    echo.controls.fail(500, 1)
    get(echo, "/ping", params={"a": "1"})
    r = get(echo, "/ping", params={"a": "2"}, headers={"Authorization": "Bearer good"})
    assert r.status_code == 200
    assert len(seen) == 2  # already recorded when the response was read
    first, second = seen
    assert (first.status, first.json()) == (500, {"message": "injected 500"})
    assert second.params == [("a", "2")] and second.json()["q"] == {"a": "2"}
    assert second.credential == "Bearer good"
    assert second.response_headers["content-type"] == "application/json"
    assert second.request_headers["authorization"] == "Bearer good"


def test_log_is_kept_without_bodies_when_no_hook(echo: Echo) -> None:
    get(echo, "/ping")
    (entry,) = echo.controls.log
    assert (entry.method, entry.path, entry.status, entry.body) == ("GET", "/ping", 200, b"")


@pytest.mark.parametrize(
    ("headers", "params", "expected"),
    [
        ({"Authorization": "Bearer good"}, {}, (200, "ann")),
        ({"Authorization": "Bearer bad"}, {}, (401, None)),
        ({"Authorization": "Basic " + base64.b64encode(b"bob:pw").decode()}, {}, (200, "bob")),
        ({"Authorization": "Basic " + base64.b64encode(b"bob:no").decode()}, {}, (401, None)),
        ({"Authorization": "Basic !!notbase64"}, {}, (401, None)),
        ({}, {"key": "k1"}, (200, "kim")),
        ({}, {"key": "k2"}, (401, None)),
        ({}, {}, (403, None)),
    ],
)
def test_authenticator(
    echo: Echo, headers: dict[str, str], params: dict[str, str], expected: tuple[int, str | None]
) -> None:
    r = get(echo, "/whoami", headers=headers, params=params)
    assert (r.status_code, r.json().get("user")) == expected


def test_a_bodiless_204_is_logged_before_the_client_sees_it(echo: Echo) -> None:
    """A 204 is complete once its headers arrive; the log must not trail behind it."""
    seen: list[Exchange] = []

    def slow_hook(exchange: Exchange) -> None:
        time.sleep(0.05)
        seen.append(exchange)

    echo.controls.on_response(slow_hook)
    session: requests.Session = echo.session  # type: ignore[attr-defined]
    for _ in range(3):
        assert session.put(echo.base_url + "/empty", json={"a": 1}, timeout=5).status_code == 204
        assert echo.controls.count("PUT", "/empty") == len(seen)
    assert echo.controls.count("PUT", "/empty", status=204) == 3


def test_the_credential_stays_out_of_reprs(echo: Echo) -> None:
    get(echo, "/whoami", headers={"Authorization": "Bearer good"})
    assert "good" not in repr(echo.controls.log)


def test_a_late_answer_is_lost_after_the_work_is_done(echo: Echo) -> None:
    """``delay(after=True)``: the app has answered (and done its work), the client times out."""
    echo.controls.delay(0.5, path="/ping", after=True)
    session: requests.Session = echo.session  # type: ignore[attr-defined]
    with pytest.raises(requests.ReadTimeout):
        session.post(echo.base_url + "/ping", json={}, timeout=0.1)
    assert echo.controls.count("POST", "/ping", status=200) == 1
    started = time.perf_counter()
    assert get(echo, "/whoami", headers={"Authorization": "Bearer good"}).status_code == 200
    assert time.perf_counter() - started < 0.4
