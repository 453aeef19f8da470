"""The connector protocol: what every tool adapter implements.

A connector has no state of its own: a cursor goes in, records and a new cursor come out. The
sync engine owns links, bases and cursors; the connector only speaks its tool's API and
presents records as flat ``{remote field: value}`` dicts that the mapping engine converts.

Value shapes in ``RemoteRecord.fields`` (so one mapping engine serves every tool):
text, numbers and booleans as JSON scalars; dates and datetimes as ISO 8601 strings; an option
(status, list, section, stage, picklist) as its display name; a multi-option as a list of names;
a user as ``{"id", "name", "email", "username"}`` (any may be None); anything else as JSON.

Errors: raise the types from :mod:`bridge.errors` (re-exported here); never a bare exception
for a condition you can name. A malformed record inside a page is not an exception at all: put
it in ``Page.skipped`` so the rest of the page is still synced.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Generic, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bridge.errors import (
    AuthError,
    ConnectorError,
    FatalError,
    RateLimited,
    RetriableError,
    SkippableRecord,
    StaleVersion,
    WebhookRejected,
)

__all__ = [
    "AuthError",
    "Connector",
    "ConnectorConfig",
    "ConnectorError",
    "Cursor",
    "FatalError",
    "HistoryEntry",
    "Page",
    "RateLimit",
    "RateLimited",
    "RemoteField",
    "RemoteRecord",
    "RemoteUser",
    "RetriableError",
    "Schema",
    "SkippableRecord",
    "StaleVersion",
    "WebhookRejected",
]


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Cursor:
    """Where a pull resumes: one opaque position string per partition (board, project...)."""

    positions: Mapping[str, str] = field(default_factory=dict)

    def get(self, partition: str = "") -> str | None:
        return self.positions.get(partition)

    def advanced(self, partition: str, position: str) -> Cursor:
        """A new cursor with ``partition`` moved to ``position``."""
        return Cursor({**self.positions, partition: position})

    @property
    def empty(self) -> bool:
        return not self.positions


@dataclass(frozen=True)
class HistoryEntry:
    """One change in a tool's own history (Jira changelog, Trello action, Pipedrive flow)."""

    at: datetime
    field: str
    old: Any
    new: Any
    actor: str | None = None


@dataclass(frozen=True)
class RemoteRecord:
    """One record as a tool presents it, in the value shapes described in the module docstring.

    ``version`` identifies the revision (for duplicate dropping and optimistic writes);
    ``updated_at`` is the tool's own modification time (for ``newest_wins``); ``stamp`` is the
    canonical project id stamped into the record, if any (for idempotent creates).
    """

    ref: str
    version: str
    fields: Mapping[str, Any]
    updated_at: datetime | None = None
    updated_by: str | None = None
    url: str | None = None
    stamp: str | None = None
    deleted: bool = False
    history: tuple[HistoryEntry, ...] = ()

    def with_fields(self, **changes: Any) -> RemoteRecord:
        return replace(self, fields={**self.fields, **changes})


@dataclass(frozen=True)
class Page:
    """A batch of pulled records.

    ``cursor``, when set, is safe to store once every record of this page (and the pages before
    it) has been applied: a crash after that point resumes here, before it resumes earlier.
    ``skipped`` holds records that could not be read; the engine quarantines them.
    """

    records: Sequence[RemoteRecord]
    cursor: Cursor | None = None
    skipped: Sequence[SkippableRecord] = ()


@dataclass(frozen=True)
class RemoteField:
    """A field as the tool describes it. ``options`` lists the allowed values of an option."""

    id: str
    name: str
    type: str = "text"
    options: tuple[str, ...] = ()
    custom: bool = False
    writable: bool = True


@dataclass(frozen=True)
class RemoteUser:
    id: str
    name: str | None = None
    email: str | None = None
    username: str | None = None


@dataclass(frozen=True)
class Schema:
    """What ``discover()`` returns: the live shape a mapping is validated against."""

    fields: tuple[RemoteField, ...] = ()
    users: tuple[RemoteUser, ...] = ()
    stages: tuple[str, ...] = ()
    """The values the tool's stage-like field can take (statuses, lists, sections, stages)."""

    def resolve(self, name_or_id: str) -> list[RemoteField]:
        """Fields matching an id exactly, else by display name (case-insensitive)."""
        by_id = [f for f in self.fields if f.id == name_or_id]
        if by_id:
            return by_id
        low = name_or_id.casefold()
        return [f for f in self.fields if f.name.casefold() == low]


# --------------------------------------------------------------------------- config

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def record_or_error(write: Callable[[], RemoteRecord]) -> RemoteRecord | ConnectorError:
    """The record ``write`` returns, or the error of that record alone (stale, refused value,
    refused write), as a batch ``update_many`` reports them per record; errors that stop every
    record (auth, rate limit, network) are raised."""
    try:
        return write()
    except (AuthError, RetriableError):
        raise
    except (StaleVersion, SkippableRecord, FatalError) as exc:
        return exc


def parse_duration(value: Any) -> timedelta:
    """``30`` (seconds), ``"30s"``, ``"5m"``, ``"1h"``, ``"2d"`` -> timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    raise ValueError('must be a duration such as 30, "30s", "5m", "1h" or "2d"')


class RateLimit(BaseModel):
    """A token bucket: ``requests`` per ``per`` seconds, refilled continuously."""

    model_config = ConfigDict(extra="forbid")
    requests: int = Field(gt=0)
    per: float = Field(1.0, gt=0, description="seconds")


class ConnectorConfig(BaseModel):
    """Settings every connector has. Each connector subclasses it with ``kind: Literal[...]``."""

    model_config = ConfigDict(extra="forbid")

    kind: str
    enabled: bool = True
    mapping: Path | None = Field(None, description="mapping file; default mappings/<kind>.toml")
    interval: timedelta = Field(timedelta(minutes=5), description="poll interval")
    reconcile_interval: timedelta = Field(timedelta(hours=6), description="full census interval")
    timeout: float = Field(30.0, gt=0, description="seconds per HTTP request")
    rate_limit: RateLimit | None = None

    @field_validator("interval", "reconcile_interval", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> timedelta:
        return parse_duration(v)


C = TypeVar("C", bound=ConnectorConfig)


# --------------------------------------------------------------------------- protocol


class Connector(ABC, Generic[C]):
    """Adapter between one tool and the canonical model.

    Subclasses set ``kind`` (the entry-point name, config ``kind`` and module name: one word)
    and ``config_model``. ``name`` is the connector's name in the config (there may be two Jira
    connectors, ``jira_cloud`` and ``jira_dc``).
    """

    kind: ClassVar[str]
    config_model: ClassVar[type[ConnectorConfig]]

    def __init__(self, name: str, config: C) -> None:
        self.name = name
        self.config = config

    # -- reading

    @abstractmethod
    def check(self) -> str:
        """Verify credentials and permissions; return a one-line description of the account.

        Raises AuthError for bad credentials, FatalError for anything else that stops syncing.
        """

    @abstractmethod
    def discover(self) -> Schema:
        """Fields (with custom fields and options), stage values and users of the tool."""

    @abstractmethod
    def pull(self, cursor: Cursor, *, signpost: datetime, full: bool = False) -> Iterator[Page]:
        """Records changed since ``cursor``, page by page, oldest change first.

        ``signpost`` is the cycle's start: a cursor never advances past it, so a record changed
        during the pull is read again next time. With ``full=True`` ignore the cursor and list
        every live record (a census for reconciliation); deleted ones may then be omitted.
        """

    @abstractmethod
    def get(self, ref: str) -> RemoteRecord | None:
        """One record by ref, or None if it no longer exists."""

    @abstractmethod
    def find_by_stamp(self, stamp: str) -> RemoteRecord | None:
        """The record carrying canonical id ``stamp``, if any: makes creates idempotent."""

    # -- writing

    @abstractmethod
    def create(self, fields: Mapping[str, Any], *, stamp: str) -> RemoteRecord:
        """Create a record with these remote fields, stamped with the canonical id ``stamp``."""

    @abstractmethod
    def update(
        self, ref: str, changes: Mapping[str, Any], *, expected_version: str | None
    ) -> RemoteRecord:
        """Apply ``changes`` (remote field -> value) and return the record as it now is.

        Raises StaleVersion if the tool can tell that ``expected_version`` is no longer current.
        """

    def update_or_error(
        self, ref: str, changes: Mapping[str, Any], expected_version: str | None
    ) -> RemoteRecord | ConnectorError:
        """:meth:`update` with this record's own errors returned, not raised (see
        :func:`record_or_error`)."""
        return record_or_error(lambda: self.update(ref, changes, expected_version=expected_version))

    def archive(self, ref: str) -> None:
        """Archive or delete a record (only ever called when a mapping opts in)."""
        raise FatalError(f"{self.kind} connector cannot archive records", connector=self.name)

    def history(self, ref: str, since: datetime | None = None) -> list[HistoryEntry]:
        """The tool's own change history of a record, if it keeps one."""
        return []

    def select(self, fields: Sequence[str]) -> None:
        """Read only these remote field ids from now on (the mapping's needs).

        Called once after the mapping is loaded, so a pull asks the tool for no more than it
        needs (Jira ``fields=``, Asana ``opt_fields``, a SOQL SELECT list). Default: read all.
        """

    # -- webhooks (optional)

    def verify_webhook(self, headers: Mapping[str, str], body: bytes, url: str) -> list[str]:
        """Check a webhook delivery and return the refs it concerns (may be empty).

        ``headers`` have lower-case names; ``url`` is the callback URL as the tool called it
        (some tools sign it). Raise WebhookRejected for a forged or malformed delivery; the
        receiver answers 401 and changes nothing.
        """
        raise WebhookRejected(f"the {self.kind} connector does not receive webhooks")

    # -- lifecycle

    def close(self) -> None:
        """Release sessions and sockets."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
