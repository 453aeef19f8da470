"""The one error taxonomy of salesbridge.

::

    SalesbridgeError
    ├── UserError            bad config, mapping or rule file, or bad CLI input. Carries a list of
    │                        Problems; printed as advice naming file, key and fix; exit code 2.
    ├── ConnectorError       something a connector met while talking to its tool
    │   ├── RetriableError   429, 5xx, timeouts, connection errors: try again later
    │   │   └── RateLimited  429 or a tool's own "request limit exceeded" (carries retry_after)
    │   ├── FatalError       the tool refuses in a way retrying will not fix: stop this
    │   │   │                connector's cycle and report it
    │   │   └── AuthError    401/403: credentials missing, wrong, expired or lacking permission
    │   ├── StaleVersion     an update's expected version no longer matches: re-read and re-merge
    │   └── SkippableRecord  one record cannot be read or mapped: quarantine it, go on
    ├── BreakerTripped       too many linked records vanished in one pull: stop until --force
    └── WebhookRejected      a delivery whose signature, secret or freshness does not check out

Sync conflicts are not exceptions: they are data (stored, listed, resolved).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input file, phrased for the person who must fix it."""

    file: str
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.key}" if self.key else self.file
        return f"{where} <- {self.message}"


class SalesbridgeError(Exception):
    """Root of every error salesbridge raises on purpose."""


class UserError(SalesbridgeError):
    """Input a person wrote is wrong. Every problem is reported at once, without a traceback."""

    def __init__(self, problems: Iterable[Problem] | str) -> None:
        if isinstance(problems, str):
            problems = [Problem("", "", problems)]
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class ConnectorError(SalesbridgeError):
    """An error met by a connector. ``connector`` names the configured connector."""

    def __init__(self, message: str, *, connector: str = "", status: int | None = None) -> None:
        self.connector = connector
        self.status = status
        super().__init__(message)


class RetriableError(ConnectorError):
    """Transient: the same call may succeed later (network, timeout, 5xx, 429)."""

    def __init__(
        self,
        message: str,
        *,
        connector: str = "",
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, connector=connector, status=status)
        self.retry_after = retry_after


class RateLimited(RetriableError):
    """The tool said to slow down (HTTP 429 or an equivalent error code)."""


class FatalError(ConnectorError):
    """Retrying will not help; the connector's cycle stops and the error is reported."""


class AuthError(FatalError):
    """Credentials are missing, wrong, expired or lack a permission."""


class StaleVersion(ConnectorError):
    """An update was made against a version the record no longer has."""

    def __init__(
        self, ref: str, expected: str | None, actual: str | None, *, connector: str = ""
    ) -> None:
        super().__init__(
            f"record {ref} changed remotely (expected version {expected}, found {actual})",
            connector=connector,
            status=409,
        )
        self.ref = ref
        self.expected = expected
        self.actual = actual


class SkippableRecord(ConnectorError):
    """One record is malformed or cannot be mapped; it is quarantined with ``reason``."""

    def __init__(
        self, ref: str, reason: str, *, connector: str = "", payload: object = None
    ) -> None:
        super().__init__(f"record {ref}: {reason}", connector=connector)
        self.ref = ref
        self.reason = reason
        self.payload = payload


class BreakerTripped(SalesbridgeError):
    """A pull would unlink more than the allowed share of a connector's records."""

    def __init__(self, connector: str, vanished: int, linked: int, threshold: float) -> None:
        self.connector = connector
        self.vanished = vanished
        self.linked = linked
        self.threshold = threshold
        self.at = datetime.now().astimezone()
        super().__init__(
            f"{connector}: {vanished} of {linked} linked records vanished in one pull "
            f"(more than {threshold:.0%}); the cycle was stopped. If this is intended, "
            f"run `salesbridge sync --connector {connector} --force`."
        )


class WebhookRejected(SalesbridgeError):
    """A webhook delivery that is forged, replayed or malformed; it changes nothing."""
