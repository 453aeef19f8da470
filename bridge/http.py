"""The one HTTP client every connector uses, so they all fail, retry, throttle and redact alike.

A connector builds one :class:`HttpClient` (usually with :meth:`HttpClient.from_config`) and calls
:meth:`~HttpClient.request` or :meth:`~HttpClient.get_json`. The client:

* sends explicit connect/read timeouts, so a silent server never hangs a sync cycle;
* throttles with a thread-safe :class:`TokenBucket` before every attempt (retries included), so
  we stay under a tool's published limit instead of discovering it through 429s;
* retries 429, 500/502/503/504, timeouts and connection errors with tenacity, honouring
  ``Retry-After`` (delta-seconds or HTTP-date, capped) and otherwise backing off exponentially
  with jitter. Only idempotent methods are retried on 5xx and network errors, because a POST
  that timed out may have been applied; a 429 is retried for every method, because a server
  that says "too many requests" has refused the request without processing it;
* maps what is left to :mod:`bridge.errors`: 429 -> RateLimited, 5xx/network -> RetriableError,
  401/403 -> AuthError, other 4xx -> FatalError. Statuses a caller handles itself (404 -> None,
  Asana's 412 sync-token reset...) are passed in ``expect`` and returned, not raised;
* counts every attempt in a :class:`RequestCounter` that benchmarks and metrics read;
* attaches credentials from an :class:`Auth`, registering each value with
  :func:`bridge.secrets.register_secret`, and scrubs secrets from every log line and error.
"""

from __future__ import annotations

import base64
import email.utils
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import parse_qsl, quote, quote_plus, urljoin, urlsplit

import requests
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from bridge import __version__
from bridge.errors import AuthError, FatalError, RateLimited, RetriableError
from bridge.secrets import redact, register_secret

if TYPE_CHECKING:
    from connectors.base import ConnectorConfig, RateLimit

__all__ = [
    "IDEMPOTENT_METHODS",
    "RETRY_STATUSES",
    "Auth",
    "HttpClient",
    "RedactingFilter",
    "RequestCounter",
    "RequestStats",
    "RetryPolicy",
    "TokenBucket",
    "parse_retry_after",
    "scrub",
]

log = logging.getLogger("salesbridge.http")

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
CONNECT_TIMEOUT = 10.0
"""Upper bound on the connect timeout: a TCP handshake that takes longer is a dead host."""

# Query parameters that carry credentials in some API (Trello key/token, OAuth, signed URLs):
# redacted by name even if the value was never registered.
_SECRET_PARAM = re.compile(
    r"(?i)([?&;](?:[\w.-]*(?:key|token|secret|password|passwd|signature|sig)|auth)=)[^&#\s'\"]*"
)
_URL_USERINFO = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^/\s:@]+:)[^/\s@]+@")


def scrub(text: str) -> str:
    """``text`` without registered secrets, credential-like query values and URL passwords."""
    text = redact(text)
    text = _SECRET_PARAM.sub(r"\1***", text)
    return _URL_USERINFO.sub(r"\1***@", text)


class RedactingFilter(logging.Filter):
    """Scrubs each record's message; install it on *handlers* to cover other libraries' logs.

    urllib3 logs request lines (query strings included) at DEBUG; this module never logs a raw
    URL itself, but a handler that receives urllib3's records needs this filter.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


# --------------------------------------------------------------------------- credentials


def _register(value: str) -> None:
    # Register the encoded forms too: requests and urllib3 put them in URLs and error texts.
    for form in {value, quote(value, safe=""), quote_plus(value)}:
        register_secret(form)


@dataclass(frozen=True, repr=False)
class Auth:
    """Headers and query parameters carrying credentials, sent only to the base URL's origin.

    Every value is registered as a secret on creation, so it is redacted wherever it would
    otherwise be printed. Combine with ``+`` (e.g. a Trello key and token as query params).
    """

    headers: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for value in (*self.headers.values(), *self.params.values()):
            _register(value)
            scheme, _, credentials = value.partition(" ")
            if credentials and scheme.isalpha():
                _register(credentials)  # "Bearer abc": "abc" is the secret

    @classmethod
    def bearer(cls, token: str) -> Auth:
        return cls(headers={"Authorization": f"Bearer {token}"})

    @classmethod
    def basic(cls, username: str, password: str) -> Auth:
        _register(password)
        encoded = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        return cls(headers={"Authorization": f"Basic {encoded}"})

    @classmethod
    def header(cls, name: str, value: str) -> Auth:
        return cls(headers={name: value})

    @classmethod
    def query(cls, **params: str) -> Auth:
        """Credentials as query parameters, as Trello wants (``key=...&token=...``)."""
        return cls(params=params)

    def __add__(self, other: Auth) -> Auth:
        return Auth({**self.headers, **other.headers}, {**self.params, **other.params})

    def __repr__(self) -> str:
        return f"Auth(headers={sorted(self.headers)}, params={sorted(self.params)})"


# --------------------------------------------------------------------------- throttling


class TokenBucket:
    """``requests`` tokens per ``per`` seconds, refilled continuously, burst up to ``requests``.

    A caller takes its token at once and, if the bucket was empty, sleeps for its place in the
    queue outside the lock: callers are served in arrival order and no wait is lost to races.
    """

    def __init__(
        self,
        requests: int,
        per: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if requests <= 0 or per <= 0:
            raise ValueError("a rate limit needs requests > 0 and per > 0")
        self.capacity = float(requests)
        self.rate = requests / per
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = self.capacity
        self._last = clock()

    @classmethod
    def from_limit(
        cls,
        limit: RateLimit,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> TokenBucket:
        return cls(limit.requests, limit.per, clock=clock, sleep=sleep)

    def acquire(self) -> float:
        """Take one token, sleeping until it is due; return the seconds waited."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= 1
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
        return wait


# --------------------------------------------------------------------------- counting


@dataclass(frozen=True)
class RequestStats:
    """Attempts made (retries included): ``total == sum(by_class.values()) + failed``."""

    total: int = 0
    by_class: Mapping[str, int] = field(default_factory=dict)
    """Responses by status class: ``{"2xx": 10, "5xx": 2}``."""
    rate_limited: int = 0
    """Responses with status 429 (also counted in ``by_class["4xx"]``)."""
    failed: int = 0
    """Attempts that got no response: timeouts, refused or reset connections."""


class RequestCounter:
    """Thread-safe tally of one connector's HTTP attempts; read it with :meth:`snapshot`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats = RequestStats()

    def record(self, status: int | None) -> None:
        with self._lock:
            s = self._stats
            by_class = dict(s.by_class)
            if status is not None:
                key = f"{status // 100}xx"
                by_class[key] = by_class.get(key, 0) + 1
            self._stats = RequestStats(
                total=s.total + 1,
                by_class=by_class,
                rate_limited=s.rate_limited + (status == 429),
                failed=s.failed + (status is None),
            )

    def snapshot(self, *, reset: bool = False) -> RequestStats:
        """The counts so far; with ``reset=True`` start again from zero in the same step."""
        with self._lock:
            stats = self._stats
            if reset:
                self._stats = RequestStats()
            return stats


# --------------------------------------------------------------------------- retrying


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try. Waits are in seconds; every wait is capped at ``max_wait``."""

    max_attempts: int = 5
    max_wait: float = 60.0
    """Cap on any single wait, including one a server asks for in ``Retry-After``."""
    backoff: float = 0.5
    """Multiplier of the exponential backoff (full jitter) used without ``Retry-After``."""


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP-date), or None.

    ``now`` is the wall-clock time (epoch seconds) an HTTP-date is measured from.
    """
    if not value or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if math.isfinite(seconds) else None


# --------------------------------------------------------------------------- the client


class HttpClient:
    """A requests session for one connector with timeouts, throttling, retries and redaction.

    ``sleep`` and ``clock`` are injectable so tests can observe waits without sleeping.
    ``auth`` may be replaced at any time (e.g. after an OAuth token refresh).
    """

    def __init__(
        self,
        connector: str,
        base_url: str,
        *,
        auth: Auth | None = None,
        timeout: float | tuple[float, float] = 30.0,
        rate_limit: RateLimit | TokenBucket | None = None,
        retry: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
        counter: RequestCounter | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.connector = connector
        self.base_url = base_url.rstrip("/") + "/"
        self.auth = auth or Auth()
        self.timeout: tuple[float, float] = (
            timeout if isinstance(timeout, tuple) else (min(timeout, CONNECT_TIMEOUT), timeout)
        )
        if rate_limit is None or isinstance(rate_limit, TokenBucket):
            self.bucket = rate_limit
        else:
            self.bucket = TokenBucket.from_limit(rate_limit, clock=clock, sleep=sleep)
        self.policy = retry or RetryPolicy()
        self.counter = counter or RequestCounter()
        self._sleep = sleep
        self._backoff = wait_random_exponential(multiplier=self.policy.backoff)
        self._origin = _origin(self.base_url)
        self.session = requests.Session()
        self.session.headers.update(
            {"User-Agent": f"salesbridge/{__version__}", "Accept": "application/json"}
        )
        self.session.headers.update(headers or {})

    @classmethod
    def from_config(
        cls, connector: str, base_url: str, config: ConnectorConfig, **kwargs: Any
    ) -> HttpClient:
        """A client with the timeout and rate limit every connector config carries."""
        kwargs.setdefault("timeout", config.timeout)
        kwargs.setdefault("rate_limit", config.rate_limit)
        return cls(connector, base_url, **kwargs)

    # -- public calls

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        expect: tuple[int, ...] = (),
        retry: bool | None = None,
        timeout: float | tuple[float, float] | None = None,
    ) -> requests.Response:
        """Send a request to ``path`` (relative to the base URL, or absolute) and return it.

        A status below 400 or listed in ``expect`` is returned; anything else is raised as a
        :mod:`bridge.errors` type once retries are spent. ``retry=None`` retries 5xx and network
        errors only for idempotent methods; ``retry=True`` opts a POST/PATCH in (the caller
        knows it is safe, e.g. it carries an idempotency key); ``retry=False`` makes one attempt.
        """
        method = method.upper()
        url = self._url(path)
        safe = retry if retry is not None else method in IDEMPOTENT_METHODS
        retrying = Retrying(
            stop=stop_after_attempt(self.policy.max_attempts if retry is not False else 1),
            wait=self._wait,
            retry=retry_if_exception(
                lambda e: isinstance(e, RateLimited) or (safe and isinstance(e, RetriableError))
            ),
            sleep=self._sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )
        send: dict[str, Any] = {
            "params": self._params(url, params),
            "json": json,
            "data": data,
            "headers": {**self._auth_headers(url), **(headers or {})},
            "timeout": timeout if timeout is not None else self.timeout,
        }
        full = requests.PreparedRequest()
        full.prepare_url(url, send["params"])  # what is sent, for log lines and errors
        where = f"{self.connector}: {method} {scrub(full.url or url)}"
        for attempt in retrying:
            with attempt:
                response = self._attempt(method, url, where, send, expect, safe)
        return response

    def get_json(
        self, path: str, *, params: Mapping[str, Any] | None = None, expect: tuple[int, ...] = ()
    ) -> Any:
        """GET and decode JSON; an empty body or an ``expect``-ed error (say 404) gives None."""
        response = self.request("GET", path, params=params, expect=expect)
        if response.status_code >= 400 or not response.content:
            return None
        return self.decode_json(response)

    def decode_json(self, response: requests.Response) -> Any:
        """The response body as JSON, or FatalError saying what came back instead."""
        try:
            return response.json()
        except ValueError:
            raise FatalError(
                f"{self.connector}: {response.request.method} {scrub(response.url)} returned "
                f"{response.status_code} with a body that is not JSON "
                f"(Content-Type {response.headers.get('Content-Type', 'missing')}): "
                f"{_excerpt(response)}",
                connector=self.connector,
                status=response.status_code,
            ) from None

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals

    def _url(self, path: str) -> str:
        if urlsplit(path).scheme in ("http", "https"):
            return path  # e.g. a "next" link from a paginated response
        return urljoin(self.base_url, path.lstrip("/"))

    def _same_origin(self, url: str) -> bool:
        # Credentials go only to the configured host, as requests does on redirects: a
        # "next" link pointing elsewhere must not receive our token.
        return _origin(url) == self._origin

    def _auth_headers(self, url: str) -> dict[str, str]:
        return dict(self.auth.headers) if self._same_origin(url) else {}

    def _params(self, url: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
        merged = dict(params or {})
        if self._same_origin(url):
            present = {k for k, _ in parse_qsl(urlsplit(url).query)}
            merged.update({k: v for k, v in self.auth.params.items() if k not in present})
        return merged

    def _attempt(
        self,
        method: str,
        url: str,
        where: str,
        send: dict[str, Any],
        expect: tuple[int, ...],
        safe: bool,
    ) -> requests.Response:
        if self.bucket is not None:
            self.bucket.acquire()
        unsafe = (
            "" if safe else f" (not retried: {method} may have been applied; retry=True opts in)"
        )
        started = time.perf_counter()
        try:
            response = self.session.request(method, url, **send)
        except (
            requests.Timeout,
            requests.ConnectionError,
            requests.exceptions.ChunkedEncodingError,
        ) as exc:
            self.counter.record(None)
            log.debug("%s -> %s in %.0f ms", where, type(exc).__name__, _ms(started))
            # "from None": the original exception's text holds the raw URL with query secrets.
            raise RetriableError(
                f"{where} failed: {type(exc).__name__}: {scrub(str(exc))[:300]}{unsafe}",
                connector=self.connector,
            ) from None
        except requests.RequestException as exc:
            self.counter.record(None)
            raise FatalError(
                f"{where} failed: {type(exc).__name__}: {scrub(str(exc))[:300]}",
                connector=self.connector,
            ) from None
        status = response.status_code
        self.counter.record(status)
        log.debug("%s -> %s in %.0f ms", where, status, _ms(started))
        if status < 400 or status in expect:
            return response
        message = f"{where} -> {status} {response.reason}: {_excerpt(response)}"
        if status in RETRY_STATUSES:
            wait = parse_retry_after(response.headers.get("Retry-After"))
            if status == 429:
                raise RateLimited(
                    message, connector=self.connector, status=status, retry_after=wait
                )
            raise RetriableError(
                message + unsafe, connector=self.connector, status=status, retry_after=wait
            )
        if status in (401, 403):
            raise AuthError(
                f"{message} (check the connector's credentials and their permissions)",
                connector=self.connector,
                status=status,
            )
        raise FatalError(message, connector=self.connector, status=status)

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RetriableError) and exc.retry_after is not None:
            return min(exc.retry_after, self.policy.max_wait)
        return min(float(self._backoff(state)), self.policy.max_wait)

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "%s; attempt %d of %d, retrying in %.1f s",
            exc,  # already scrubbed when the error was built
            state.attempt_number,
            self.policy.max_attempts,
            wait,
        )


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower().rpartition("@")[2]


def _excerpt(response: requests.Response, limit: int = 200) -> str:
    # Scrub the whole body before cutting: a secret cut in half would escape redaction.
    text = " ".join(scrub(response.text).split())
    if not text:
        return "(empty body)"
    return text if len(text) <= limit else text[:limit] + "..."


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000
