"""What every tool emulator shares: a real HTTP server in a thread, faults, rate limits, a log.

A tool emulator (``connectors/<kind>/emulator.py``) subclasses :class:`Emulator` and builds a
Starlette app for the tool's API; this module runs it and puts :class:`ControlMiddleware` in
front of it, so every emulator fails, throttles and records the same way:

* :class:`EmulatorServer` runs any ASGI app with uvicorn on 127.0.0.1 in a background thread
  (port 0 picks a free port); :func:`serve_forever` runs one in the foreground for
  ``salesbridge emulate``;
* :class:`Controls` is what a test or benchmark turns: queued failures (``fail``), latency
  (``delay``), a per-credential request budget (``rate_limit``), the request log with exact
  counts (``count``), and response hooks (``on_response``) that see every status, header and
  body, e.g. to validate each one against the tool's OpenAPI description;
* :class:`Authenticator` reads bearer, basic and query-parameter credentials, so each emulator
  only decides what a 401 or 403 looks like in its tool.

Hooks and the log are updated *before* the last byte of a response is sent, so a client that has
read its response can rely on them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, Self, TypeVar
from urllib.parse import parse_qsl

import uvicorn
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "Authenticator",
    "Controls",
    "Emulator",
    "EmulatorServer",
    "ErrorBody",
    "Exchange",
    "json_error_body",
    "serve_forever",
]

ErrorBody = Callable[[int, str], tuple[bytes, str]]
"""(status, message) -> (body, content type): how a tool words an error it did not mean to send."""


def json_error_body(status: int, message: str) -> tuple[bytes, str]:
    """The default shape of an injected error: ``{"message": ...}``."""
    return json.dumps({"message": message}).encode(), "application/json"


@dataclass(frozen=True)
class Exchange:
    """One request the emulator answered. ``body`` is set only while a response hook is set."""

    method: str
    path: str
    query: str
    status: int
    credential: str = field(repr=False)  # a secret: never in a repr or an assertion message
    request_headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    response_headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    body: bytes = field(default=b"", repr=False)

    @property
    def params(self) -> list[tuple[str, str]]:
        return parse_qsl(self.query, keep_blank_values=True)

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class _Fault:
    status: int
    remaining: int | None
    path_prefix: str
    method: str | None
    retry_after: float | None
    message: str

    def matches(self, method: str, path: str) -> bool:
        return path.startswith(self.path_prefix) and self.method in (None, method)


@dataclass(frozen=True)
class _Delay:
    seconds: float
    path_prefix: str
    method: str | None
    after: bool


@dataclass
class _Budget:
    requests: int
    per: float
    headers: Callable[[int, int, float], Mapping[str, str]] | None
    windows: dict[str, tuple[float, int]] = field(default_factory=dict)


def _default_credential(request: Request) -> str:
    """Who a request counts against: its Authorization header, else a key/token parameter."""
    auth = request.headers.get("authorization")
    if auth:
        return auth
    for name in ("token", "key", "api_token", "access_token"):
        if name in request.query_params:
            return f"{name}={request.query_params[name]}"
    return "anonymous"


class Controls:
    """The knobs of one emulator: faults, latency, rate limit, request log and response hooks.

    Thread-safe: tests turn them from the test thread while the server thread reads them.
    ``error_body`` words injected errors the way the tool does; ``credential`` names the
    budget a request counts against; ``clock`` (monotonic seconds) drives rate-limit windows.
    """

    def __init__(
        self,
        *,
        error_body: ErrorBody = json_error_body,
        credential: Callable[[Request], str] = _default_credential,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.error_body = error_body
        self.credential = credential
        self.clock = clock
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._delays: list[_Delay] = []
        self._budget: _Budget | None = None
        self._hooks: list[Callable[[Exchange], None]] = []
        self._log: list[Exchange] = []

    # -- what tests turn

    def fail(
        self,
        status: int,
        times: int | None = 1,
        *,
        path: str = "/",
        method: str | None = None,
        retry_after: float | None = None,
        message: str | None = None,
    ) -> None:
        """Answer the next ``times`` matching requests (None: all) with ``status``.

        Matching is by path prefix and optionally method. A 429 carries ``Retry-After`` (1 s
        unless given); other statuses carry it only when ``retry_after`` is given.
        """
        if status == 429 and retry_after is None:
            retry_after = 1
        with self._lock:
            self._faults.append(
                _Fault(
                    status,
                    times,
                    path,
                    method.upper() if method else None,
                    retry_after,
                    message or f"injected {status}",
                )
            )

    def delay(
        self, seconds: float, *, path: str = "/", method: str | None = None, after: bool = False
    ) -> None:
        """Add ``seconds`` of latency to every matching request (delays add up).

        With ``after=True`` the request is handled first and only its answer is late: a client
        that times out has had its write applied and lost the answer (a lost create).
        """
        with self._lock:
            method = method.upper() if method else None
            self._delays.append(_Delay(seconds, path, method, after))

    def rate_limit(
        self,
        requests: int,
        per: float = 1.0,
        *,
        headers: Callable[[int, int, float], Mapping[str, str]] | None = None,
    ) -> None:
        """Allow ``requests`` per ``per``-second window per credential, then 429 + Retry-After.

        ``headers(limit, remaining, reset_in_seconds)`` adds the tool's own rate-limit headers
        to every response (allowed or not).
        """
        with self._lock:
            self._budget = _Budget(requests, per, headers)

    def on_response(self, hook: Callable[[Exchange], None]) -> None:
        """Call ``hook`` with every exchange, body included, before the response completes.

        Hooks run on the server thread: keep them quick and let them collect, not raise.
        """
        with self._lock:
            self._hooks.append(hook)

    def reset(self) -> None:
        """Clear faults, delays, the rate limit and the log (hooks stay)."""
        with self._lock:
            self._faults.clear()
            self._delays.clear()
            self._budget = None
            self._log.clear()

    # -- what tests read

    @property
    def log(self) -> list[Exchange]:
        with self._lock:
            return list(self._log)

    def count(
        self, method: str | None = None, path: str = "/", *, status: int | None = None
    ) -> int:
        """How many requests matched ``method``, the ``path`` prefix and ``status``."""
        return sum(
            1
            for e in self.log
            if (method is None or e.method == method.upper())
            and e.path.startswith(path)
            and (status is None or e.status == status)
        )

    # -- what the middleware asks

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    if fault.remaining is not None:
                        fault.remaining -= 1
                        if fault.remaining <= 0:
                            self._faults.remove(fault)
                    return fault
        return None

    def _delay_for(self, method: str, path: str, *, after: bool) -> float:
        with self._lock:
            return sum(
                d.seconds
                for d in self._delays
                if path.startswith(d.path_prefix)
                and d.method in (None, method)
                and d.after == after
            )

    def _spend(self, credential: str) -> tuple[bool, float, dict[str, str]]:
        """(allowed, seconds until the window resets, extra headers) for one request."""
        with self._lock:
            budget = self._budget
            if budget is None:
                return True, 0.0, {}
            now = self.clock()
            start, used = budget.windows.get(credential, (now, 0))
            if now - start >= budget.per:
                start, used = now, 0
            used += 1
            budget.windows[credential] = (start, used)
            reset_in = max(0.0, start + budget.per - now)
            remaining = max(0, budget.requests - used)
            extra = (
                dict(budget.headers(budget.requests, remaining, reset_in)) if budget.headers else {}
            )
            return used <= budget.requests, reset_in, extra

    def _record(self, exchange: Exchange) -> list[Callable[[Exchange], None]]:
        with self._lock:
            self._log.append(exchange)
            return list(self._hooks)

    @property
    def _capturing(self) -> bool:
        with self._lock:
            return bool(self._hooks)


class ControlMiddleware:
    """ASGI middleware applying one :class:`Controls` in front of a tool's app."""

    def __init__(self, app: ASGIApp, controls: Controls) -> None:
        self.app = app
        self.controls = controls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        c = self.controls
        request = Request(scope)
        method, path = request.method, request.url.path
        query = scope.get("query_string", b"").decode("latin-1")
        credential = c.credential(request)
        capture = c._capturing
        request_headers = dict(request.headers) if capture else {}
        state: dict[str, Any] = {"status": 0, "headers": {}}
        chunks: list[bytes] = []

        allowed, reset_in, extra = c._spend(credential)
        pause = c._delay_for(method, path, after=False)
        late = c._delay_for(method, path, after=True)

        async def send_wrapper(message: Message) -> None:
            # The start is held back until the body's last chunk has been recorded: a client
            # may hold a complete response as soon as the headers of a 204 leave.
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(k.lower().encode(), v.encode()) for k, v in extra.items()]
                state["start"] = {**message, "headers": headers}
                state["status"] = message["status"]
                state["headers"] = {k.decode(): v.decode() for k, v in headers}
                return
            if message["type"] == "http.response.body":
                if capture:
                    chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    exchange = Exchange(
                        method,
                        path,
                        query,
                        state["status"],
                        credential,
                        request_headers,
                        state["headers"],
                        b"".join(chunks),
                    )
                    for hook in c._record(exchange):
                        hook(exchange)
                    if late:
                        await asyncio.sleep(late)
                if "start" in state:
                    await send(state.pop("start"))
            await send(message)

        if pause:
            await asyncio.sleep(pause)
        if not allowed:
            await _error(send_wrapper, c, 429, "rate limit exceeded", max(1, math.ceil(reset_in)))
            return
        fault = c._take_fault(method, path)
        if fault is not None:
            await _error(send_wrapper, c, fault.status, fault.message, fault.retry_after)
            return
        await self.app(scope, receive, send_wrapper)


async def _error(
    send: Send, controls: Controls, status: int, message: str, retry_after: float | None
) -> None:
    body, content_type = controls.error_body(status, message)
    headers = [(b"content-type", content_type.encode()), (b"content-length", b"%d" % len(body))]
    if retry_after is not None:
        headers.append((b"retry-after", str(math.ceil(retry_after)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------- auth

P = TypeVar("P")


class Authenticator(Generic[P]):
    """Maps the credentials a request carries to a principal ``P`` (a user, a grant...).

    ``bearer`` maps ``Authorization: Bearer <token>`` values, ``basic`` maps (user, password)
    pairs, ``query`` maps query-parameter values (``{"key": {...}}`` for Trello-style keys).
    """

    def __init__(
        self,
        *,
        bearer: Mapping[str, P] | None = None,
        basic: Mapping[tuple[str, str], P] | None = None,
        query: Mapping[str, Mapping[str, P]] | None = None,
    ) -> None:
        self.bearer: dict[str, P] = dict(bearer or {})
        self.basic: dict[tuple[str, str], P] = dict(basic or {})
        self.query: dict[str, dict[str, P]] = {k: dict(v) for k, v in (query or {}).items()}

    def presented(self, request: Request) -> bool:
        """Whether the request carries any credential at all (401 vs. anonymous access)."""
        return "authorization" in request.headers or any(
            name in request.query_params for name in self.query
        )

    def authenticate(self, request: Request) -> P | None:
        """The principal behind the request's credentials, or None if they are wrong or absent."""
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer":
            return self.bearer.get(value)
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None
            return self.basic.get((user, password))
        for name, values in self.query.items():
            if name in request.query_params:
                return values.get(request.query_params[name])
        return None


# --------------------------------------------------------------------------- servers


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit this: without it, a response's headers and body leave as two
    # segments and the second waits out the client's delayed ACK (40 ms per request).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _config(app: ASGIApp) -> uvicorn.Config:
    # log_config=None: never reconfigure the host process's logging.
    return uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
        ws="none",
        http="h11",
        timeout_graceful_shutdown=2,
    )


class EmulatorServer:
    """An ASGI app served by uvicorn on ``host`` in a background thread.

    ``start()`` returns once the socket accepts connections; ``stop()`` waits for uvicorn to
    close every connection and exit. Port 0 (the default) binds a free port; ``port`` and
    ``base_url`` give the one bound.
    """

    def __init__(
        self, app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0, name: str = "emulator"
    ) -> None:
        self.app = app
        self.host = host
        self.name = name
        self._requested_port = port
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        if self._socket is None:
            raise RuntimeError(f"{self.name} is not running")
        return int(self._socket.getsockname()[1])

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 10.0) -> Self:
        if self.running:
            return self
        self._socket = _bind(self.host, self._requested_port)
        self._server = uvicorn.Server(_config(self.app))
        self._error = None
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not start: {self._error!r}")
            time.sleep(0.002)
        return self

    def _run(self) -> None:
        assert self._server is not None and self._socket is not None
        try:
            self._server.run(sockets=[self._socket])
        except BaseException as exc:  # reported by start(); never an unhandled thread error
            self._error = exc

    def stop(self, timeout: float = 10.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive() and self._server is not None:
                self._server.force_exit = True
                self._thread.join(timeout)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve_forever(
    app: ASGIApp,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    announce: Callable[[str], None] = print,
) -> None:
    """Serve ``app`` in the foreground until SIGINT/SIGTERM; ``announce`` gets the base URL.

    This is what ``salesbridge emulate KIND`` calls (uvicorn handles the signals, since this
    runs on the main thread).
    """
    sock = _bind(host, port)
    try:
        announce(f"http://{host}:{sock.getsockname()[1]}")
        uvicorn.Server(_config(app)).run(sockets=[sock])
    finally:
        sock.close()


class Emulator(ABC):
    """Base of every tool emulator: the tool's app behind :class:`Controls`, on a server.

    Subclasses implement :meth:`build_app`. ``controls`` outlives restarts, so faults can be
    queued before ``start()``.
    """

    name = "emulator"

    def __init__(self, *, controls: Controls | None = None) -> None:
        self.controls = controls or Controls()
        self._server: EmulatorServer | None = None

    @abstractmethod
    def build_app(self) -> ASGIApp:
        """The tool's API as an ASGI app (without the controls; :meth:`app` adds them)."""

    def app(self) -> ASGIApp:
        return ControlMiddleware(self.build_app(), self.controls)

    @property
    def server(self) -> EmulatorServer:
        if self._server is None:
            raise RuntimeError(f"{self.name} emulator is not running; call start()")
        return self._server

    @property
    def base_url(self) -> str:
        return self.server.base_url

    def start(self, port: int = 0) -> Self:
        if self._server is None:
            self._server = EmulatorServer(self.app(), port=port, name=f"{self.name}-emulator")
            self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def serve_forever(self, port: int = 0, announce: Callable[[str], None] = print) -> None:
        serve_forever(self.app(), port=port, announce=announce)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
