"""The state store: canonical projects, links, bases, cursors, the event log and the sync's
bookkeeping (conflicts, quarantine, violations, runs, alerts), on SQLite or PostgreSQL.

Everything above this module is engine-agnostic and never sees SQL. Units of work::

    store = Store.open("sqlite:///salesbridge.db")      # applies pending migrations
    with store.transaction():                          # one sync step = one transaction
        store.put_projects(projects)
        store.set_bases_many("jira", bases)
        store.save_cursor("jira", cursor)
    store.close()

A method called outside :meth:`Store.transaction` runs in a short transaction of its own.
Datetimes go in timezone-aware (a naive one is refused) and come out in UTC. JSON values are
what :meth:`SalesProject.to_json` produces; a ``Decimal`` elsewhere is stored as its string, a
datetime or date as ISO 8601. No table has a place for a secret, and free text that might echo
one (run errors, alert messages, quarantine reasons) passes through :func:`bridge.secrets.redact`.
"""

from __future__ import annotations

import json
import operator
import os
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NamedTuple, Self, TypeVar, cast

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from pydantic import BaseModel
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.compiler import SQLCompiler

from bridge.errors import SalesbridgeError
from bridge.model import SalesProject
from bridge.secrets import redact
from bridge.store import schema as t
from connectors.base import Cursor

__all__ = [
    "Alert",
    "Conflict",
    "DigestRecord",
    "Event",
    "EventRow",
    "LinkConflict",
    "LinkedProject",
    "NewLink",
    "NotFound",
    "QuarantineEntry",
    "Run",
    "SchemaMismatch",
    "Store",
    "StoreError",
    "StoredLink",
    "Violation",
    "ViolationChange",
    "current_revision",
    "downgrade",
    "head_revision",
    "make_engine",
    "upgrade",
]

MIGRATIONS_DIR = Path(__file__).parent / "migrations"  # package data, never the cwd
BUSY_TIMEOUT_MS = 30_000
_CHUNK = 500  # ids per IN (...) list
_BEGIN = "salesbridge_sqlite_begin"  # execution option: how a SQLite transaction begins
_PG_MIGRATION_LOCK = 0x5A1E5B71D6E  # pg_advisory_xact_lock key: one migrator at a time

Resolution = Literal["hub", "remote", "value"]
RunStatus = Literal["running", "ok", "failed", "breaker"]
ViolationStatus = Literal["open", "escalated", "resolved"]


# --------------------------------------------------------------------------- errors


class StoreError(SalesbridgeError):
    """The state store cannot do what was asked."""


class NotFound(StoreError, LookupError):
    """No row with that id or key."""


class LinkConflict(StoreError):
    """A link would make a record belong to two projects, or a project have two records in one
    connector."""


class SchemaMismatch(StoreError):
    """The database is not at the schema revision this salesbridge expects."""


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredLink:
    """A link row. ``unlinked_at`` set means a tombstone: the record left the project."""

    project_id: str
    connector: str
    ref: str
    version: str | None
    url: str | None
    created_at: datetime
    updated_at: datetime
    unlinked_at: datetime | None

    @property
    def live(self) -> bool:
        return self.unlinked_at is None


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkedProject:
    """A live link with its project's JSON (None if the project is tombstoned) and the
    link's connector's bases ({} if none): what push planning compares."""

    link: StoredLink
    project: dict[str, Any] | None
    bases: dict[str, Any]
    values: dict[str, Any] | None = None
    """With ``paths``: ``{path: value}`` read from the project (None if tombstoned), and
    ``project`` is None: the project's JSON is not read whole."""


class NewLink(NamedTuple):
    """One link to create (or revive) with :meth:`Store.link_many`."""

    project_id: str
    connector: str
    ref: str
    version: str | None = None
    url: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One change to a project: the event log is append-only.

    ``source`` is where the change came from (a connector name, ``hub``, ``rules``...);
    ``meaningful`` is False for the bridge's own writes and other changes that must not count
    as a person updating the project.
    """

    project_id: str
    at: datetime
    field: str
    old: Any
    new: Any
    source: str
    meaningful: bool
    actor: str | None = None
    run_id: int | None = None
    id: int | None = None


EventRow = tuple[str, datetime, str | None, str, str, Any, Any, bool, int | None]
"""An event as a tuple: (project_id, at, actor, source, field, old, new, meaningful, run_id)."""
_EVENT_KEYS = ("project_id", "at", "actor", "source", "field", "old", "new", "meaningful", "run_id")


@dataclass(frozen=True, slots=True, kw_only=True)
class Conflict:
    id: int
    project_id: str
    connector: str
    field: str
    hub_value: Any
    remote_value: Any
    base_value: Any
    resolution: str
    """``pending``, ``hub``, ``remote`` or ``value``."""
    resolved_value: Any
    policy: str | None
    detected_at: datetime
    resolved_at: datetime | None
    resolved_by: str | None

    @property
    def pending(self) -> bool:
        return self.resolution == "pending"


@dataclass(frozen=True, slots=True, kw_only=True)
class QuarantineEntry:
    id: int
    connector: str
    ref: str
    reason: str
    payload: Any
    first_seen: datetime
    last_seen: datetime
    attempts: int
    resolved_at: datetime | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Violation:
    id: int
    rule: str
    project_id: str
    period: str
    severity: str
    owner: str | None
    evidence: Any
    status: str
    """``open``, ``escalated`` or ``resolved``."""
    opened_at: datetime
    escalated_at: datetime | None
    resolved_at: datetime | None

    @property
    def is_open(self) -> bool:
        return self.status != "resolved"


@dataclass(frozen=True, slots=True, kw_only=True)
class ViolationChange:
    violation_id: int
    at: datetime
    action: str
    """``opened``, ``escalated``, ``resolved`` or ``reopened``."""
    severity: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Run:
    id: int
    connector: str
    started_at: datetime
    finished_at: datetime | None
    status: str
    counts: dict[str, int]
    error: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class DigestRecord:
    """One digest sent (or attempted): to whom, when, through which channels, and its content
    (the digest content model's JSON, from which the digest can be rendered again)."""

    id: int
    recipient: str
    lang: str
    sent_at: datetime
    since: datetime | None
    status: str
    """``sent`` (every channel), ``partial`` (some) or ``failed`` (none)."""
    subject: str
    deliveries: list[dict[str, Any]]
    content: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class Alert:
    id: int
    connector: str
    kind: str
    message: str
    at: datetime
    cleared_at: datetime | None


# --------------------------------------------------------------------------- JSON


def _json_default(o: object) -> object:
    if isinstance(o, Decimal):
        return str(o)
    if isinstance(o, datetime | date):
        return o.isoformat()
    if isinstance(o, Enum):
        return o.value
    if isinstance(o, BaseModel):
        return o.model_dump(mode="json")
    if isinstance(o, set | frozenset):
        return sorted(o, key=repr)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


_json_dumps: Callable[[Any], str] = json.JSONEncoder(
    default=_json_default, ensure_ascii=False, allow_nan=False, separators=(",", ":")
).encode
"""Compact JSON text. One reusable, configuration-only encoder: ``json.dumps`` with options
builds a new encoder per call, which costs as much as encoding a small value."""


_encode_str: Callable[[str], str] = json.encoder.encode_basestring


def _json_value(value: object) -> str:
    """:func:`_json_dumps` with a shortcut for the scalars most event values are (the same
    text, without the encoder's per-call setup)."""
    if value is None:
        return "null"
    kind = type(value)
    if kind is str:
        return _encode_str(cast(str, value))
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return int.__repr__(cast(int, value))
    return _json_dumps(value)


def _json_safe(value: object) -> Any:
    """``value`` as plain JSON, anything unknown as its repr (for quarantined payloads)."""

    def lenient(o: object) -> object:
        try:
            return _json_default(o)
        except TypeError:
            return repr(o)

    # NaN and infinities (which JSON lacks) come back as the strings "NaN", "Infinity"...
    return json.loads(json.dumps(value, default=lenient), parse_constant=str)


# --------------------------------------------------------------------------- engine


def _create_private_file(path: Path) -> None:
    """Create the database file readable by its owner only, before SQLite opens it."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _sqlite_on_connect(wal: bool) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # SQLAlchemy emits BEGIN itself (see _sqlite_on_begin): SELECTs, DDL and SAVEPOINTs
        # then really run inside the transaction, which pysqlite's legacy mode does not do.
        dbapi_connection.isolation_level = None
        cur = dbapi_connection.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if wal:
                cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = NORMAL")
            cur.execute("PRAGMA foreign_keys = ON")
        finally:
            cur.close()

    return on_connect


def _sqlite_on_begin(conn: Connection) -> None:
    # Writers take the write lock up front (IMMEDIATE): a deferred transaction that reads and
    # then writes can fail with SQLITE_BUSY at once, without waiting, when another writer won.
    mode = conn.get_execution_options().get(_BEGIN, "DEFERRED")
    conn.exec_driver_sql(f"BEGIN {mode}")


def make_engine(url: str | sa.URL) -> Engine:
    """An engine for ``url`` with the store's settings.

    SQLite (``sqlite:///path.db``): the file and its directory are created owner-only (0600 /
    0700) before the first connection; WAL, foreign keys, a busy timeout and NORMAL sync are
    set on every connection. PostgreSQL (``postgresql+psycopg://...``; a bare ``postgresql://``
    means psycopg 3). Anything else is refused.
    """
    u = sa.make_url(url)
    backend = u.get_backend_name()
    if backend == "sqlite":
        db = u.database or ""
        uri_mode = str(u.query.get("uri", "")).lower() in ("true", "1")
        memory = db in ("", ":memory:") or "mode=memory" in db or u.query.get("mode") == "memory"
        kwargs: dict[str, Any] = {}
        if memory:
            kwargs = {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
        elif not uri_mode:
            path = Path(db).expanduser().resolve()
            _create_private_file(path)
            u = u.set(database=str(path))
        engine = sa.create_engine(u, json_serializer=_json_dumps, **kwargs)
        event.listen(engine, "connect", _sqlite_on_connect(wal=not memory))
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    if backend == "postgresql":
        if u.drivername == "postgresql":
            u = u.set(drivername="postgresql+psycopg")
        return sa.create_engine(u, json_serializer=_json_dumps, pool_pre_ping=True)
    raise StoreError(
        f"unsupported database {u.render_as_string(hide_password=True)!r}: use "
        "sqlite:///path/to/file.db or postgresql+psycopg://user@host/dbname"
    )


# --------------------------------------------------------------------------- migrations


def _alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    cfg.set_main_option("path_separator", "os")
    return cfg


def head_revision() -> str:
    """The newest schema revision this salesbridge knows."""
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def _revision_of(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def _check_known(script: ScriptDirectory, current: str | None) -> None:
    if current is None:
        return
    try:
        script.get_revision(current)
    except CommandError:
        raise SchemaMismatch(
            f"the database is at schema revision {current!r}, which this salesbridge does not "
            f"know (its newest is {script.get_current_head()!r}): it was written by a newer "
            "salesbridge; upgrade salesbridge"
        ) from None


def _upgrade_engine(engine: Engine, revision: str) -> str | None:
    cfg = _alembic_config()
    script = ScriptDirectory.from_config(cfg)
    with engine.connect() as conn:
        conn = conn.execution_options(**{_BEGIN: "IMMEDIATE"})
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_MIGRATION_LOCK)))
            current = _revision_of(conn)
            _check_known(script, current)
            if current != script.get_current_head() or revision != "head":
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
            return _revision_of(conn)


def upgrade(url: str | sa.URL, revision: str = "head") -> str | None:
    """Migrate the database at ``url`` to ``revision`` (``salesbridge db upgrade``).

    Safe to run concurrently and repeatedly. Returns the revision the database is now at.
    """
    engine = make_engine(url)
    try:
        return _upgrade_engine(engine, revision)
    finally:
        engine.dispose()


def downgrade(url: str | sa.URL, revision: str) -> str | None:
    """Migrate the database at ``url`` back to ``revision`` (``base`` empties it).

    For rolling back a salesbridge upgrade; data in what the newer revisions added is lost.
    """
    engine = make_engine(url)
    try:
        cfg = _alembic_config()
        with engine.connect() as conn:
            conn = conn.execution_options(**{_BEGIN: "IMMEDIATE"})
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_MIGRATION_LOCK)))
                cfg.attributes["connection"] = conn
                command.downgrade(cfg, revision)
                return _revision_of(conn)
    finally:
        engine.dispose()


def current_revision(url: str | sa.URL) -> str | None:
    """The schema revision of the database at ``url`` (None for an empty database)."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return _revision_of(conn)
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- helpers

T = TypeVar("T")


def _chunks(items: Sequence[T], size: int = _CHUNK) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None, name: str) -> datetime | None:
    if value is not None and (value.tzinfo is None or value.utcoffset() is None):
        raise ValueError(f"{name} must be timezone-aware, got {value.isoformat()}")
    return value


def _parse_dt(value: object) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        return datetime.fromisoformat(value)
    raise ValueError(f"expected an ISO 8601 datetime, got {value!r}")


def _pg_datetime(value: datetime | None) -> datetime | None:
    return None if value is None else t.to_utc(value)


def _project_row(
    project: Mapping[str, Any] | SalesProject, dt: Callable[[datetime | None], Any]
) -> dict[str, Any]:
    data = project.to_json() if isinstance(project, SalesProject) else dict(project)
    pid = data.get("id")
    if not isinstance(pid, str) or not pid:
        raise ValueError("a project to store needs its canonical 'id'")
    owner = data.get("owner")
    email = owner.get("email") if isinstance(owner, Mapping) else None
    updated_at = _parse_dt(data.get("updated_at"))
    _aware(updated_at, f"project {pid} updated_at")
    return {
        "id": pid,
        "data": _json_dumps(data),
        "stage": data.get("stage") or "lead",
        "owner": email.strip().lower() if isinstance(email, str) and email.strip() else None,
        "team": data.get("team"),
        "status": data.get("status") or "open",
        "updated_at": dt(updated_at),
    }


def _link(row: Row[Any]) -> StoredLink:
    return StoredLink(
        project_id=row.project_id,
        connector=row.connector,
        ref=row.ref,
        version=row.version,
        url=row.url,
        created_at=row.created_at,
        updated_at=row.updated_at,
        unlinked_at=row.unlinked_at,
    )


def _event(row: Row[Any]) -> Event:
    return Event(
        id=row.id,
        project_id=row.project_id,
        at=row.at,
        field=row.field,
        old=row.old,
        new=row.new,
        source=row.source,
        meaningful=row.meaningful,
        actor=row.actor,
        run_id=row.run_id,
    )


def _conflict(row: Row[Any]) -> Conflict:
    return Conflict(**{c: getattr(row, c) for c in Conflict.__dataclass_fields__})


def _quarantine(row: Row[Any]) -> QuarantineEntry:
    return QuarantineEntry(**{c: getattr(row, c) for c in QuarantineEntry.__dataclass_fields__})


def _violation(row: Row[Any]) -> Violation:
    return Violation(**{c: getattr(row, c) for c in Violation.__dataclass_fields__})


def _run(row: Row[Any]) -> Run:
    return Run(**{c: getattr(row, c) for c in Run.__dataclass_fields__})


def _alert(row: Row[Any]) -> Alert:
    return Alert(**{c: getattr(row, c) for c in Alert.__dataclass_fields__})


def _digest(row: Row[Any]) -> DigestRecord:
    return DigestRecord(**{c: getattr(row, c) for c in DigestRecord.__dataclass_fields__})


_UNSET: Any = object()


# --------------------------------------------------------------------------- the store


class Store:
    """The state store. Create it with :meth:`Store.open`; close it with :meth:`close`.

    A Store may be shared between threads: each thread has its own current transaction.
    ``clock`` supplies "now" wherever a method's ``at`` is left out (tests pass a fake one).
    """

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] | None = None) -> None:
        self._engine = engine
        self._clock = clock or _utcnow
        self._local = threading.local()
        dialect = engine.dialect.name
        if dialect not in ("sqlite", "postgresql"):
            raise StoreError(f"unsupported database dialect {dialect!r}")
        self._dialect = dialect
        # Hot batch writes bypass SQLAlchemy's per-row parameter processing (see _bulk): the
        # values are converted here instead, exactly as the column types would.
        self._dt: Callable[[datetime | None], Any] = (
            t.sqlite_datetime if dialect == "sqlite" else _pg_datetime
        )
        self._compiled: dict[str, tuple[str, tuple[str, ...] | None]] = {}

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def open(
        cls,
        url: str | sa.URL,
        *,
        migrate: bool = True,
        clock: Callable[[], datetime] | None = None,
    ) -> Store:
        """Connect to ``url`` and apply pending migrations (``migrate=False``: only check that
        the database is already at head, raising :class:`SchemaMismatch` if not)."""
        engine = make_engine(url)
        try:
            if migrate:
                _upgrade_engine(engine, "head")
            else:
                with engine.connect() as conn:
                    current = _revision_of(conn)
                head = head_revision()
                if current != head:
                    raise SchemaMismatch(
                        f"the database is at schema revision {current!r}, not {head!r}: "
                        "run `salesbridge db upgrade`"
                    )
            return cls(engine, clock=clock)
        except BaseException:
            engine.dispose()
            raise

    def close(self) -> None:
        """Close every pooled connection."""
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._dialect

    def current_revision(self) -> str | None:
        with self._use() as conn:
            return _revision_of(conn)

    # ------------------------------------------------------------------ transactions

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """A unit of work: every store call inside commits together or not at all.

        Nested use opens a savepoint: an exception inside rolls back only the inner block.
        """
        current: Connection | None = getattr(self._local, "conn", None)
        if current is not None:
            with current.begin_nested():
                yield
            return
        with self._use(write=True):
            yield

    @property
    def in_transaction(self) -> bool:
        return getattr(self._local, "conn", None) is not None

    @contextmanager
    def _use(self, *, write: bool = False) -> Iterator[Connection]:
        """The current transaction's connection, or a new transaction for this call (which
        calls nested in it join). SQLite writers begin IMMEDIATE, readers DEFERRED."""
        current: Connection | None = getattr(self._local, "conn", None)
        if current is not None:
            yield current
            return
        with self._engine.connect() as conn:
            if write:
                conn = conn.execution_options(**{_BEGIN: "IMMEDIATE"})
            with conn.begin():
                self._local.conn = conn
                try:
                    yield conn
                finally:
                    self._local.conn = None

    def _now(self, at: datetime | None) -> datetime:
        return _aware(at, "at") or self._clock()

    def _bulk(
        self, conn: Connection, key: str, stmt: sa.ClauseElement, rows: list[dict[str, Any]]
    ) -> None:
        """``executemany`` of ``stmt`` straight through the DB-API.

        ``rows`` hold values already in database form (JSON text from :func:`_json_dumps`,
        datetimes from ``self._dt``) and all have the same keys. The SQL is compiled once per
        ``key``. On SQLite this is several times faster than SQLAlchemy's per-row processing,
        which would otherwise cost more than SQLite's own work.
        """
        if not rows:
            return
        cached = self._compiled.get(key)
        if cached is None:
            compiled = cast(
                SQLCompiler, stmt.compile(dialect=conn.dialect, column_keys=list(rows[0]))
            )
            order = tuple(compiled.positiontup or ()) if compiled.positional else None
            unbound = set(compiled.binds) - set(rows[0])
            if unbound:  # a literal in the statement: write it as sa.null() or SQL instead
                raise AssertionError(f"{key}: parameters {sorted(unbound)} have no row values")
            cached = self._compiled[key] = (compiled.string, order)
        sql, order = cached
        if order is None:
            conn.exec_driver_sql(sql, rows)
        else:
            if len(order) == 1:
                conn.exec_driver_sql(sql, [(r[order[0]],) for r in rows])
            else:
                conn.exec_driver_sql(sql, list(map(operator.itemgetter(*order), rows)))

    def _bulk_rows(
        self,
        conn: Connection,
        key: str,
        stmt: sa.ClauseElement,
        keys: tuple[str, ...],
        rows: list[tuple[Any, ...]],
    ) -> None:
        """:meth:`_bulk` for rows as tuples of values for ``keys``, in that order."""
        cached = self._compiled.get(key)
        if cached is None:
            compiled = cast(SQLCompiler, stmt.compile(dialect=conn.dialect, column_keys=keys))
            order = tuple(compiled.positiontup or ()) if compiled.positional else None
            if set(compiled.binds) - set(keys):
                raise AssertionError(f"{key}: parameters {sorted(compiled.binds)} vs {keys}")
            cached = self._compiled[key] = (compiled.string, order)
        sql, order = cached
        if order is None:
            conn.exec_driver_sql(sql, [dict(zip(keys, r, strict=True)) for r in rows])
        elif order == keys:
            conn.exec_driver_sql(sql, rows)
        else:
            pick = operator.itemgetter(*(keys.index(k) for k in order))
            conn.exec_driver_sql(sql, list(map(pick, rows)))

    def _in(self, column: sa.ColumnElement[str], values: Sequence[str]) -> sa.ColumnElement[bool]:
        """``column IN (values)``.

        On PostgreSQL the values are rendered inline (escaped by SQLAlchemy): psycopg prepares
        a statement it sees repeatedly, and the generic plan of a prepared ``IN`` list or
        ``= ANY(array)`` may scan a whole index comparing each row with every value, which is
        quadratic on a big import. Inline values get a plan made for them.
        """
        if self._dialect == "sqlite":
            return column.in_(values)
        return column.in_(sa.bindparam(None, list(values), expanding=True, literal_execute=True))

    def _insert(self, table: sa.Table) -> sqlite.Insert | postgresql.Insert:
        if self._dialect == "sqlite":
            return sqlite.insert(table)
        return postgresql.insert(table)

    # ------------------------------------------------------------------ projects

    def get_project(
        self, project_id: str, *, include_tombstoned: bool = True
    ) -> dict[str, Any] | None:
        """A project's canonical JSON, or None."""
        return self.get_projects([project_id], include_tombstoned=include_tombstoned).get(
            project_id
        )

    def get_projects(
        self, project_ids: Iterable[str], *, include_tombstoned: bool = True
    ) -> dict[str, dict[str, Any]]:
        """Canonical JSON by id for those of ``project_ids`` that exist."""
        ids = list(dict.fromkeys(project_ids))
        out: dict[str, dict[str, Any]] = {}
        p = t.projects
        with self._use() as conn:
            for chunk in _chunks(ids):
                q = sa.select(p.c.id, p.c.data).where(self._in(p.c.id, chunk))
                if not include_tombstoned:
                    q = q.where(p.c.tombstoned_at.is_(None))
                for row in conn.execute(q):
                    out[row.id] = row.data
        return out

    def put_project(self, project: Mapping[str, Any] | SalesProject) -> None:
        """Insert or replace a project (its ``to_json()`` form or the model itself)."""
        self.put_projects([project])

    def put_projects(self, projects: Iterable[Mapping[str, Any] | SalesProject]) -> int:
        """Upsert many projects in one statement; returns how many. A tombstone is kept."""
        rows = [_project_row(p, self._dt) for p in projects]
        if not rows:
            return 0
        ins = self._insert(t.projects)
        stmt = ins.on_conflict_do_update(
            index_elements=[t.projects.c.id],
            set_={
                c: ins.excluded[c]
                for c in ("data", "stage", "owner", "team", "status", "updated_at")
            },
        )
        with self._use(write=True) as conn:
            self._bulk(conn, "put_projects", stmt, rows)
        return len(rows)

    def list_projects(
        self,
        *,
        team: str | None = None,
        stage: str | None = None,
        status: str | None = None,
        owner: str | None = None,
        include_tombstoned: bool = False,
        page_size: int = 1000,
    ) -> Iterator[dict[str, Any]]:
        """Projects' canonical JSON in id order, streamed page by page (constant memory).

        Outside a transaction each page is read in its own short transaction, so a slow
        consumer holds no connection or lock between pages.
        """
        p = t.projects
        q = sa.select(p.c.id, p.c.data).order_by(p.c.id).limit(page_size)
        if team is not None:
            q = q.where(p.c.team == team)
        if stage is not None:
            q = q.where(p.c.stage == stage)
        if status is not None:
            q = q.where(p.c.status == status)
        if owner is not None:
            q = q.where(p.c.owner == owner.strip().lower())
        if not include_tombstoned:
            q = q.where(p.c.tombstoned_at.is_(None))
        yield from self._projects_by_id_pages(q, page_size)

    def _projects_by_id_pages(self, q: sa.Select[Any], page_size: int) -> Iterator[dict[str, Any]]:
        """The ``data`` of what ``q`` (ordered by project id, limited to ``page_size``) selects,
        a page at a time (keyset on the id), each page read in a short transaction of its own
        unless the caller holds one: memory stays flat whatever the number of projects."""
        p = t.projects
        last: str | None = None
        while True:
            page_q = q if last is None else q.where(p.c.id > last)
            with self._use() as conn:
                rows = conn.execute(page_q).all()
            for row in rows:
                yield row.data
            if len(rows) < page_size:
                return
            last = rows[-1].id

    def count_projects(
        self,
        *,
        team: str | None = None,
        stage: str | None = None,
        status: str | None = None,
        include_tombstoned: bool = False,
    ) -> int:
        p = t.projects
        q = sa.select(sa.func.count()).select_from(p)
        if team is not None:
            q = q.where(p.c.team == team)
        if stage is not None:
            q = q.where(p.c.stage == stage)
        if status is not None:
            q = q.where(p.c.status == status)
        if not include_tombstoned:
            q = q.where(p.c.tombstoned_at.is_(None))
        with self._use() as conn:
            return int(conn.execute(q).scalar_one())

    def tombstone_project(self, project_id: str, at: datetime | None = None) -> bool:
        """Mark a project gone (nothing is deleted). True if it was live."""
        p = t.projects
        stmt = (
            sa.update(p)
            .where(p.c.id == project_id, p.c.tombstoned_at.is_(None))
            .values(tombstoned_at=self._now(at))
        )
        with self._use(write=True) as conn:
            return conn.execute(stmt).rowcount > 0

    def restore_project(self, project_id: str) -> bool:
        """Undo a tombstone. True if the project was tombstoned."""
        p = t.projects
        stmt = (
            sa.update(p)
            .where(p.c.id == project_id, p.c.tombstoned_at.is_not(None))
            .values(tombstoned_at=None)
        )
        with self._use(write=True) as conn:
            return conn.execute(stmt).rowcount > 0

    def tombstoned_at(self, project_id: str) -> datetime | None:
        """When a project was tombstoned (None if live). Raises NotFound if it does not exist."""
        p = t.projects
        with self._use() as conn:
            row = conn.execute(sa.select(p.c.tombstoned_at).where(p.c.id == project_id)).first()
        if row is None:
            raise NotFound(f"no project {project_id!r}")
        return row.tombstoned_at  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ links

    def link(
        self,
        project_id: str,
        connector: str,
        ref: str,
        version: str | None = None,
        url: str | None = None,
        *,
        at: datetime | None = None,
    ) -> StoredLink:
        """Link a record to a project (reviving a tombstoned link of the same record).

        Raises :class:`LinkConflict` if the record is live-linked to another project or the
        project already has a different live record in this connector.
        """
        self.link_many([NewLink(project_id, connector, ref, version, url)], at=at)
        found = self.get_link(connector, ref)
        assert found is not None
        return found

    def link_many(self, new_links: Iterable[NewLink], *, at: datetime | None = None) -> int:
        """Create or revive many links at once (checked as :meth:`link` does)."""
        items = [NewLink(*n) for n in new_links]
        if not items:
            return 0
        now = self._now(at)
        lk = t.links
        by_connector: dict[str, list[NewLink]] = defaultdict(list)
        for n in items:
            by_connector[n.connector].append(n)
        with self._use(write=True) as conn:
            for connector, group in by_connector.items():
                self._check_links(conn, connector, group)
            ins = self._insert(lk)
            stmt = ins.on_conflict_do_update(
                index_elements=[lk.c.connector, lk.c.ref],
                set_={
                    "project_id": ins.excluded.project_id,
                    # linking again without a version or URL keeps the known one
                    "version": sa.func.coalesce(ins.excluded.version, lk.c.version),
                    "url": sa.func.coalesce(ins.excluded.url, lk.c.url),
                    "updated_at": ins.excluded.updated_at,
                    "unlinked_at": sa.null(),
                },
            )
            stamp = self._dt(now)
            self._bulk(
                conn,
                "link_many",
                stmt,
                [
                    {
                        "project_id": n.project_id,
                        "connector": n.connector,
                        "ref": n.ref,
                        "version": n.version,
                        "url": n.url,
                        "created_at": stamp,
                        "updated_at": stamp,
                        "unlinked_at": None,
                    }
                    for n in items
                ],
            )
            # A tombstone means "no tool holds it any more": a project linked again is live.
            p = t.projects
            for chunk in _chunks(list({n.project_id for n in items})):
                conn.execute(
                    sa.update(p)
                    .where(self._in(p.c.id, chunk), p.c.tombstoned_at.is_not(None))
                    .values(tombstoned_at=None)
                )
        return len(items)

    def _check_links(self, conn: Connection, connector: str, group: list[NewLink]) -> None:
        lk = t.links
        owner_of_ref: dict[str, str] = {}  # ref -> project, for live links
        ref_of_project: dict[str, str] = {}  # project -> ref, for live links
        refs = list({n.ref for n in group})
        pids = list({n.project_id for n in group})
        live = lk.c.unlinked_at.is_(None)
        for chunk in _chunks(refs):
            q = sa.select(lk.c.ref, lk.c.project_id).where(
                lk.c.connector == connector, self._in(lk.c.ref, chunk), live
            )
            for row in conn.execute(q):
                owner_of_ref[row.ref] = row.project_id
                ref_of_project[row.project_id] = row.ref
        for chunk in _chunks(pids):
            q = sa.select(lk.c.ref, lk.c.project_id).where(
                lk.c.connector == connector, self._in(lk.c.project_id, chunk), live
            )
            for row in conn.execute(q):
                owner_of_ref[row.ref] = row.project_id
                ref_of_project[row.project_id] = row.ref
        for n in group:
            owner = owner_of_ref.setdefault(n.ref, n.project_id)
            if owner != n.project_id:
                raise LinkConflict(
                    f"{connector} record {n.ref} is already linked to project {owner}, "
                    f"so it cannot also be linked to {n.project_id}"
                )
            ref = ref_of_project.setdefault(n.project_id, n.ref)
            if ref != n.ref:
                raise LinkConflict(
                    f"project {n.project_id} is already linked to {connector} record {ref}; "
                    f"unlink it before linking {n.ref}"
                )

    def get_link(self, connector: str, ref: str) -> StoredLink | None:
        """The link of a record, live or tombstoned (check ``.live``), or None."""
        return self.get_links(connector, [ref]).get(ref)

    def get_links(self, connector: str, refs: Iterable[str]) -> dict[str, StoredLink]:
        """Links by ref for those of ``refs`` that were ever linked (live or tombstoned)."""
        lk = t.links
        out: dict[str, StoredLink] = {}
        with self._use() as conn:
            for chunk in _chunks(list(dict.fromkeys(refs))):
                q = sa.select(lk).where(lk.c.connector == connector, self._in(lk.c.ref, chunk))
                for row in conn.execute(q):
                    out[row.ref] = _link(row)
        return out

    def links_for_project(
        self, project_id: str, *, include_unlinked: bool = False
    ) -> list[StoredLink]:
        lk = t.links
        q = sa.select(lk).where(lk.c.project_id == project_id).order_by(lk.c.connector, lk.c.id)
        if not include_unlinked:
            q = q.where(lk.c.unlinked_at.is_(None))
        with self._use() as conn:
            return [_link(r) for r in conn.execute(q)]

    def links_for_connector(
        self, connector: str, *, include_unlinked: bool = False
    ) -> list[StoredLink]:
        lk = t.links
        q = sa.select(lk).where(lk.c.connector == connector).order_by(lk.c.id)
        if not include_unlinked:
            q = q.where(lk.c.unlinked_at.is_(None))
        with self._use() as conn:
            return [_link(r) for r in conn.execute(q)]

    def count_links(self, connector: str) -> int:
        """Live links of a connector (the breaker's denominator)."""
        lk = t.links
        q = sa.select(sa.func.count()).where(
            lk.c.connector == connector, lk.c.unlinked_at.is_(None)
        )
        with self._use() as conn:
            return int(conn.execute(q).scalar_one())

    def linked_projects(
        self,
        connector: str,
        *,
        paths: Sequence[str] | None = None,
        differing: bool = False,
        chunk: int = _CHUNK,
    ) -> Iterator[list[LinkedProject]]:
        """Live links of ``connector`` with their projects and bases, in link id order.

        One query per ``chunk`` links (keyset pagination), so memory stays flat whatever the
        number of links; outside a transaction each chunk is read in a short one of its own.
        With ``paths`` (dotted field paths) only those values of each project are read, by
        the database, into ``values`` (a missing path reads as None, as :func:`get_path`
        does), instead of the whole project's JSON.

        ``differing=True`` (with ``paths``) leaves out, in the database, live projects whose
        values at ``paths`` all equal the connector's bases at those keys (a missing base
        reading as null), and tombstoned ones: what push planning would find nothing to push
        for. The comparison is of the picked JSON values, so it may keep a project whose
        values are equal in Python (1 and 1.0, keys in another order) but never drops one
        that differs.
        """
        lk, p, b = t.links, t.projects, t.bases
        wanted = list(paths) if paths is not None else None
        if differing and not wanted:
            raise ValueError("differing=True needs the paths to compare")
        data = p.c.data if wanted is None else self._json_values(p.c.data, wanted)
        q = (
            sa.select(
                lk,
                data.label("p_data"),
                p.c.tombstoned_at.label("p_tombstoned_at"),
                b.c.fields.label("b_fields"),
            )
            .select_from(
                lk.outerjoin(p, p.c.id == lk.c.project_id).outerjoin(
                    b, sa.and_(b.c.project_id == lk.c.project_id, b.c.connector == lk.c.connector)
                )
            )
            .where(lk.c.connector == connector, lk.c.unlinked_at.is_(None))
            .order_by(lk.c.id)
            .limit(chunk)
        )
        if differing and wanted:
            agreed = self._json_values(b.c.fields, wanted, keys=True)
            q = q.where(p.c.tombstoned_at.is_(None), data.is_distinct_from(agreed))
        last: int | None = None
        while True:
            page_q = q if last is None else q.where(lk.c.id > last)
            with self._use() as conn:
                rows = conn.execute(page_q).all()
            if not rows:
                return
            if wanted is None:
                yield [
                    LinkedProject(
                        link=_link(r),
                        project=r.p_data if r.p_tombstoned_at is None else None,
                        bases=dict(r.b_fields) if r.b_fields else {},
                    )
                    for r in rows
                ]
            else:
                yield [
                    LinkedProject(
                        link=_link(r),
                        project=None,
                        values=self._decode_values(wanted, r.p_data)
                        if r.p_tombstoned_at is None and r.p_data is not None
                        else None,
                        bases=dict(r.b_fields) if r.b_fields else {},
                    )
                    for r in rows
                ]
            if len(rows) < chunk:
                return
            last = rows[-1].id

    def _json_values(
        self, column: sa.ColumnElement[Any], paths: list[str], *, keys: bool = False
    ) -> sa.ColumnElement[Any]:
        """The values at ``paths`` of a JSON column as one JSON array, picked by the database
        (SQLite parses the document once for all paths). ``keys``: each path is one key of
        a flat object (bases are keyed by dotted path), not a path into nested objects."""
        if self._dialect == "sqlite":
            if any('"' in path for path in paths):
                raise ValueError(f"a field path with a double quote: {paths}")
            if keys:
                picks = [f'$."{path}"' for path in paths]
            else:
                picks = ["$" + "".join(f'."{p}"' for p in path.split(".")) for path in paths]
            # Of one path json_extract returns the SQL value itself (a string unquoted, a
            # boolean as 0 or 1); of two or more, a JSON array, which is what we want.
            if len(picks) == 1:
                picks.append(picks[0])
            return sa.func.json_extract(column, *picks, type_=sa.Text)
        if keys:
            values = [
                column.op("->")(sa.literal(path, sa.Text, literal_execute=True)) for path in paths
            ]
        else:
            values = [
                column.op("#>")(
                    sa.literal(path.split("."), postgresql.ARRAY(sa.Text), literal_execute=True)
                )
                for path in paths
            ]
        return sa.func.jsonb_build_array(*values, type_=postgresql.JSONB)

    @staticmethod
    def _decode_values(paths: list[str], raw: Any) -> dict[str, Any]:
        values = json.loads(raw) if isinstance(raw, str) else raw  # SQLite: JSON text
        return dict(zip(paths, values[: len(paths)], strict=True))

    def linked_project_ids(
        self, connector: str, project_ids: Iterable[str], *, include_unlinked: bool = True
    ) -> set[str]:
        """Those of ``project_ids`` that have a link in ``connector`` (by default live or
        tombstoned: a record deleted there once)."""
        lk = t.links
        out: set[str] = set()
        with self._use() as conn:
            for chunk in _chunks(list(dict.fromkeys(project_ids))):
                q = sa.select(lk.c.project_id).where(
                    lk.c.connector == connector, self._in(lk.c.project_id, chunk)
                )
                if not include_unlinked:
                    q = q.where(lk.c.unlinked_at.is_(None))
                out.update(conn.execute(q).scalars())
        return out

    def projects_without_link(
        self, connector: str, *, page_size: int = _CHUNK
    ) -> Iterator[dict[str, Any]]:
        """Live projects that never had a link in ``connector`` (live or tombstoned), in id
        order, streamed page by page (one query each, short transactions)."""
        p, lk = t.projects, t.links
        linked = sa.exists().where(lk.c.project_id == p.c.id, lk.c.connector == connector)
        q = (
            sa.select(p.c.id, p.c.data)
            .where(p.c.tombstoned_at.is_(None), ~linked)
            .order_by(p.c.id)
            .limit(page_size)
        )
        yield from self._projects_by_id_pages(q, page_size)

    def unlink(self, connector: str, ref: str, at: datetime | None = None) -> bool:
        """Tombstone a link. True if it was live."""
        return self.unlink_many(connector, [ref], at=at) > 0

    def unlink_many(
        self, connector: str, refs: Iterable[str], *, at: datetime | None = None
    ) -> int:
        lk = t.links
        now = self._now(at)
        n = 0
        with self._use(write=True) as conn:
            for chunk in _chunks(list(dict.fromkeys(refs))):
                stmt = (
                    sa.update(lk)
                    .where(
                        lk.c.connector == connector,
                        self._in(lk.c.ref, chunk),
                        lk.c.unlinked_at.is_(None),
                    )
                    .values(unlinked_at=now, updated_at=now)
                )
                n += conn.execute(stmt).rowcount
        return n

    def update_link_version(
        self,
        connector: str,
        ref: str,
        version: str | None,
        url: str | None = _UNSET,
        *,
        at: datetime | None = None,
    ) -> bool:
        """Record the version last seen (and the URL, if given). True if the link exists."""
        lk = t.links
        values: dict[str, Any] = {"version": version, "updated_at": self._now(at)}
        if url is not _UNSET:
            values["url"] = url
        stmt = sa.update(lk).where(lk.c.connector == connector, lk.c.ref == ref).values(**values)
        with self._use(write=True) as conn:
            return conn.execute(stmt).rowcount > 0

    def update_link_versions(
        self, connector: str, versions: Mapping[str, str | None], *, at: datetime | None = None
    ) -> None:
        """Record the last seen version of many records of one connector: ``{ref: version}``."""
        if not versions:
            return
        lk = t.links
        stmt = (
            sa.update(lk)
            .where(lk.c.connector == sa.bindparam("b_connector"), lk.c.ref == sa.bindparam("b_ref"))
            .values(version=sa.bindparam("b_version"), updated_at=sa.bindparam("b_at"))
        )
        now = self._dt(self._now(at))
        rows = [
            {"b_connector": connector, "b_ref": ref, "b_version": v, "b_at": now}
            for ref, v in versions.items()
        ]
        with self._use(write=True) as conn:
            self._bulk(conn, "update_link_versions", stmt, rows)

    # ------------------------------------------------------------------ bases

    def get_bases(self, project_id: str, connector: str) -> dict[str, Any]:
        """``{field path: last agreed value}`` for one project in one connector."""
        return self.get_bases_many(connector, [project_id]).get(project_id, {})

    def get_bases_many(
        self, connector: str, project_ids: Iterable[str]
    ) -> dict[str, dict[str, Any]]:
        """Bases of many projects in one connector; projects without any are left out."""
        b = t.bases
        out: dict[str, dict[str, Any]] = {}
        with self._use() as conn:
            for chunk in _chunks(list(dict.fromkeys(project_ids))):
                q = sa.select(b.c.project_id, b.c.fields).where(
                    b.c.connector == connector, self._in(b.c.project_id, chunk)
                )
                for row in conn.execute(q):
                    out[row.project_id] = dict(row.fields)
        return out

    def set_bases(
        self,
        project_id: str,
        connector: str,
        values: Mapping[str, Any],
        *,
        replace: bool = False,
        at: datetime | None = None,
    ) -> None:
        """Record agreed values by field path. Other paths are kept unless ``replace``."""
        self.set_bases_many(connector, {project_id: values}, replace=replace, at=at)

    def set_bases_many(
        self,
        connector: str,
        values: Mapping[str, Mapping[str, Any]],
        *,
        replace: bool = False,
        at: datetime | None = None,
    ) -> None:
        """:meth:`set_bases` for many projects of one connector: ``{project_id: {path: value}}``.

        ``replace=True`` (the whole projection is known) skips reading the current bases.
        """
        if not values:
            return
        b = t.bases
        now = self._now(at)
        with self._use(write=True) as conn:
            merged: dict[str, dict[str, Any]] = {pid: dict(v) for pid, v in values.items()}
            if not replace:
                current = self.get_bases_many(connector, list(values))
                for pid, old in current.items():
                    merged[pid] = {**old, **merged[pid]}
            ins = self._insert(b)
            stmt = ins.on_conflict_do_update(
                index_elements=[b.c.project_id, b.c.connector],
                set_={"fields": ins.excluded.fields, "updated_at": ins.excluded.updated_at},
            )
            stamp = self._dt(now)
            self._bulk(
                conn,
                "set_bases_many",
                stmt,
                [
                    {
                        "project_id": pid,
                        "connector": connector,
                        "fields": _json_dumps(v),
                        "updated_at": stamp,
                    }
                    for pid, v in merged.items()
                ],
            )

    def clear_bases(
        self,
        project_id: str,
        connector: str | None = None,
        paths: Iterable[str] | None = None,
    ) -> None:
        """Forget bases: all of a project's, one connector's, or only some paths."""
        b = t.bases
        with self._use(write=True) as conn:
            if paths is None:
                stmt = sa.delete(b).where(b.c.project_id == project_id)
                if connector is not None:
                    stmt = stmt.where(b.c.connector == connector)
                conn.execute(stmt)
                return
            drop = set(paths)
            q = sa.select(b.c.connector, b.c.fields).where(b.c.project_id == project_id)
            if connector is not None:
                q = q.where(b.c.connector == connector)
            for row in conn.execute(q).all():
                kept = {k: v for k, v in row.fields.items() if k not in drop}
                conn.execute(
                    sa.update(b)
                    .where(b.c.project_id == project_id, b.c.connector == row.connector)
                    .values(fields=kept)
                )

    # ------------------------------------------------------------------ cursors

    def get_cursor(self, connector: str) -> Cursor:
        """Where the next pull resumes (an empty cursor if never saved)."""
        c = t.cursors
        q = sa.select(c.c.partition, c.c.position).where(c.c.connector == connector)
        with self._use() as conn:
            return Cursor({row.partition: row.position for row in conn.execute(q)})

    def get_cursors(self, connectors: Iterable[str]) -> dict[str, Cursor]:
        """:meth:`get_cursor` of several connectors in one query (an empty cursor for those
        never saved)."""
        names = list(dict.fromkeys(connectors))
        positions: dict[str, dict[str, str]] = {n: {} for n in names}
        if not names:
            return {}
        c = t.cursors
        q = sa.select(c.c.connector, c.c.partition, c.c.position).where(
            self._in(c.c.connector, names)
        )
        with self._use() as conn:
            for row in conn.execute(q):
                positions[row.connector][row.partition] = row.position
        return {n: Cursor(p) for n, p in positions.items()}

    def save_cursor(self, connector: str, cursor: Cursor, *, at: datetime | None = None) -> None:
        """Store ``cursor`` as the connector's whole cursor (partitions it lacks are dropped)."""
        c = t.cursors
        now = self._now(at)
        with self._use(write=True) as conn:
            drop = sa.delete(c).where(c.c.connector == connector)
            if cursor.positions:
                drop = drop.where(c.c.partition.not_in(list(cursor.positions)))
            conn.execute(drop)
            if not cursor.positions:
                return
            ins = self._insert(c)
            stmt = ins.on_conflict_do_update(
                index_elements=[c.c.connector, c.c.partition],
                set_={"position": ins.excluded.position, "updated_at": ins.excluded.updated_at},
            )
            conn.execute(
                stmt,
                [
                    {"connector": connector, "partition": k, "position": v, "updated_at": now}
                    for k, v in cursor.positions.items()
                ],
            )

    def reset_cursor(self, connector: str) -> None:
        """Forget the cursor: the next pull starts from the beginning."""
        self.save_cursor(connector, Cursor())

    # ------------------------------------------------------------------ events

    def append_events(self, events: Iterable[Event]) -> int:
        """Append to the event log (ids are assigned by the database); returns how many."""
        return self.append_event_rows(
            (e.project_id, e.at, e.actor, e.source, e.field, e.old, e.new, e.meaningful, e.run_id)
            for e in events
        )

    def append_event_rows(self, rows: Iterable[EventRow]) -> int:
        """:meth:`append_events` for plain tuples (see :data:`EventRow`): what a bulk writer
        such as a sync of a page uses, without building an :class:`Event` per row."""
        dt = self._dt
        when: dict[datetime, Any] = {}  # a step's events mostly share one time
        out: list[tuple[Any, ...]] = []
        append = out.append
        enc = _json_value
        for pid, at, actor, source, path, old, new, meaningful, run_id in rows:
            stamp = when.get(at)
            if stamp is None:
                stamp = when[at] = dt(at)
            append(
                (
                    pid,
                    stamp,
                    actor,
                    source,
                    path,
                    "null" if old is None else enc(old),  # a created project's every event
                    "null" if new is None else enc(new),
                    meaningful is True or bool(meaningful),
                    run_id,
                )
            )
        if out:
            with self._use(write=True) as conn:
                self._bulk_rows(conn, "append_events", sa.insert(t.events), _EVENT_KEYS, out)
        return len(out)

    def events_for(
        self,
        project_id: str,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        field: str | None = None,
    ) -> list[Event]:
        """A project's events, oldest first, with ``since <= at < until``."""
        return self.events_for_projects([project_id], since=since, until=until, field=field).get(
            project_id, []
        )

    def events_for_projects(
        self,
        project_ids: Iterable[str],
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        field: str | None = None,
    ) -> dict[str, list[Event]]:
        """Events of many projects, oldest first per project (for rule sweeps)."""
        e = t.events
        out: dict[str, list[Event]] = {}
        with self._use() as conn:
            for chunk in _chunks(list(dict.fromkeys(project_ids))):
                q = sa.select(e).where(self._in(e.c.project_id, chunk)).order_by(e.c.at, e.c.id)
                if since is not None:
                    q = q.where(e.c.at >= _aware(since, "since"))
                if until is not None:
                    q = q.where(e.c.at < _aware(until, "until"))
                if field is not None:
                    q = q.where(e.c.field == field)
                for row in conn.execute(q):
                    out.setdefault(row.project_id, []).append(_event(row))
        return out

    # ------------------------------------------------------------------ conflicts

    def add_conflict(
        self,
        project_id: str,
        connector: str,
        field: str,
        *,
        hub: Any,
        remote: Any,
        base: Any,
        policy: str | None = None,
        at: datetime | None = None,
    ) -> int:
        """Record a conflict; returns its id. A pending conflict on the same (project,
        connector, field) is updated with the new values instead of duplicated."""
        cf = t.conflicts
        ins = self._insert(cf).values(
            project_id=project_id,
            connector=connector,
            field=field,
            hub_value=hub,
            remote_value=remote,
            base_value=base,
            resolution="pending",
            policy=policy,
            detected_at=self._now(at),
        )
        stmt = ins.on_conflict_do_update(
            index_elements=[cf.c.project_id, cf.c.connector, cf.c.field],
            index_where=cf.c.resolution == sa.literal_column("'pending'"),
            set_={
                "hub_value": ins.excluded.hub_value,
                "remote_value": ins.excluded.remote_value,
                "base_value": ins.excluded.base_value,
                "policy": ins.excluded.policy,
            },
        ).returning(cf.c.id)
        with self._use(write=True) as conn:
            return int(conn.execute(stmt).scalar_one())

    def push_generation(self) -> int | None:
        """A counter that moves with every write to projects, bases, links or conflicts, by
        whoever makes it (triggers, migration 0004); None where there are none (PostgreSQL).
        Push planning reads nothing else from the store, so while it stands still, a plan
        that found nothing to push would find nothing again."""
        if self._dialect != "sqlite":
            return None
        g = t.generations
        with self._use() as conn:
            row = conn.execute(sa.select(g.c.value).where(g.c.key == "push")).first()
        return None if row is None else int(row.value)

    def pending_conflict_fields(
        self, connector: str, project_ids: Iterable[str] | None = None
    ) -> dict[str, set[str]]:
        """``{project id: fields}`` with a pending conflict in ``connector``: all projects'
        (one query), or only those of ``project_ids`` (one query per chunk)."""
        cf = t.conflicts
        q = sa.select(cf.c.project_id, cf.c.field).where(
            cf.c.connector == connector, cf.c.resolution == "pending"
        )
        if project_ids is None:
            queries = [q]
        else:
            ids = list(dict.fromkeys(project_ids))
            queries = [q.where(self._in(cf.c.project_id, chunk)) for chunk in _chunks(ids)]
        out: dict[str, set[str]] = {}
        with self._use() as conn:
            for query in queries:
                for row in conn.execute(query).all():
                    out.setdefault(row.project_id, set()).add(row.field)
        return out

    def get_conflict(self, conflict_id: int) -> Conflict:
        cf = t.conflicts
        with self._use() as conn:
            row = conn.execute(sa.select(cf).where(cf.c.id == conflict_id)).first()
        if row is None:
            raise NotFound(f"no conflict #{conflict_id}")
        return _conflict(row)

    def list_conflicts(
        self,
        pending_only: bool = True,
        *,
        project_id: str | None = None,
        connector: str | None = None,
    ) -> list[Conflict]:
        cf = t.conflicts
        q = sa.select(cf).order_by(cf.c.id)
        if pending_only:
            q = q.where(cf.c.resolution == "pending")
        if project_id is not None:
            q = q.where(cf.c.project_id == project_id)
        if connector is not None:
            q = q.where(cf.c.connector == connector)
        with self._use() as conn:
            return [_conflict(r) for r in conn.execute(q)]

    def resolve_conflict(
        self,
        conflict_id: int,
        resolution: Resolution,
        value: Any = _UNSET,
        *,
        by: str | None = None,
        at: datetime | None = None,
    ) -> Conflict:
        """Settle a pending conflict: keep the ``hub`` value, take the ``remote`` one, or set
        ``value``. Raises NotFound, or StoreError if it was already resolved."""
        if resolution not in ("hub", "remote", "value"):
            raise ValueError(f"resolution must be hub, remote or value, not {resolution!r}")
        if resolution == "value" and value is _UNSET:
            raise ValueError("resolution 'value' needs the value")
        cf = t.conflicts
        with self._use(write=True) as conn:
            current = self.get_conflict(conflict_id)
            if not current.pending:
                raise StoreError(
                    f"conflict #{conflict_id} was already resolved ({current.resolution})"
                )
            if value is _UNSET:
                value = current.hub_value if resolution == "hub" else current.remote_value
            conn.execute(
                sa.update(cf)
                .where(cf.c.id == conflict_id)
                .values(
                    resolution=resolution,
                    resolved_value=value,
                    resolved_at=self._now(at),
                    resolved_by=by,
                )
            )
            return self.get_conflict(conflict_id)

    # ------------------------------------------------------------------ quarantine

    def quarantine(
        self,
        connector: str,
        ref: str,
        reason: str,
        payload: Any = None,
        *,
        at: datetime | None = None,
    ) -> int:
        """Set a record aside; returns the entry's id. Quarantining a record that is already
        in quarantine updates reason and payload and counts one more attempt."""
        q = t.quarantine
        now = self._now(at)
        ins = self._insert(q).values(
            connector=connector,
            ref=ref,
            reason=redact(reason),
            payload=_json_safe(payload),
            first_seen=now,
            last_seen=now,
            attempts=1,
        )
        stmt = ins.on_conflict_do_update(
            index_elements=[q.c.connector, q.c.ref],
            index_where=q.c.resolved_at.is_(None),
            set_={
                "reason": ins.excluded.reason,
                "payload": ins.excluded.payload,
                "last_seen": ins.excluded.last_seen,
                "attempts": q.c.attempts + 1,
            },
        ).returning(q.c.id)
        with self._use(write=True) as conn:
            return int(conn.execute(stmt).scalar_one())

    def list_quarantine(
        self, connector: str | None = None, *, include_resolved: bool = False
    ) -> list[QuarantineEntry]:
        q = t.quarantine
        s = sa.select(q).order_by(q.c.id)
        if connector is not None:
            s = s.where(q.c.connector == connector)
        if not include_resolved:
            s = s.where(q.c.resolved_at.is_(None))
        with self._use() as conn:
            return [_quarantine(r) for r in conn.execute(s)]

    def resolve_quarantine(self, entry_id: int, *, at: datetime | None = None) -> bool:
        """Mark an entry resolved. True if it was unresolved."""
        q = t.quarantine
        stmt = (
            sa.update(q)
            .where(q.c.id == entry_id, q.c.resolved_at.is_(None))
            .values(resolved_at=self._now(at))
        )
        with self._use(write=True) as conn:
            return conn.execute(stmt).rowcount > 0

    def resolve_quarantined(
        self, connector: str, refs: Iterable[str], *, at: datetime | None = None
    ) -> int:
        """Resolve the entries of records that have now synced fine; returns how many."""
        q = t.quarantine
        now = self._now(at)
        n = 0
        with self._use(write=True) as conn:
            for chunk in _chunks(list(dict.fromkeys(refs))):
                stmt = (
                    sa.update(q)
                    .where(
                        q.c.connector == connector,
                        self._in(q.c.ref, chunk),
                        q.c.resolved_at.is_(None),
                    )
                    .values(resolved_at=now)
                )
                n += conn.execute(stmt).rowcount
        return n

    # ------------------------------------------------------------------ violations

    def _violation_by_key(
        self, conn: Connection, rule: str, project_id: str, period: str
    ) -> Violation | None:
        v = t.violations
        row = conn.execute(
            sa.select(v).where(v.c.rule == rule, v.c.project_id == project_id, v.c.period == period)
        ).first()
        return None if row is None else _violation(row)

    def _history(
        self, conn: Connection, violation_id: int, at: datetime, action: str, severity: str | None
    ) -> None:
        conn.execute(
            sa.insert(t.violation_history).values(
                violation_id=violation_id, at=at, action=action, severity=severity
            )
        )

    def open_violation(
        self,
        rule: str,
        project_id: str,
        *,
        period: str = "",
        severity: str,
        owner: str | None = None,
        evidence: Any = None,
        at: datetime | None = None,
    ) -> tuple[Violation, bool]:
        """Raise a violation, idempotently by (rule, project, period).

        Returns the violation and whether it was (re)opened now: False when it was already
        open (its severity, owner and evidence are refreshed), True when it is new or had been
        resolved and is reopened. Each opening is recorded in the history.
        """
        v = t.violations
        now = self._now(at)
        ins = (
            self._insert(v)
            .values(
                rule=rule,
                project_id=project_id,
                period=period,
                severity=severity,
                owner=owner,
                evidence=evidence,
                opened_at=now,
                status="open",
            )
            .on_conflict_do_nothing(index_elements=[v.c.rule, v.c.project_id, v.c.period])
            .returning(v.c.id)
        )
        with self._use(write=True) as conn:
            new_id = conn.execute(ins).scalar()
            if new_id is not None:
                self._history(conn, new_id, now, "opened", severity)
                found = self._violation_by_key(conn, rule, project_id, period)
                assert found is not None
                return found, True
            existing = self._violation_by_key(conn, rule, project_id, period)
            assert existing is not None
            values: dict[str, Any] = {"severity": severity, "owner": owner, "evidence": evidence}
            reopened = existing.status == "resolved"
            if reopened:
                values |= {
                    "status": "open",
                    "opened_at": now,
                    "escalated_at": None,
                    "resolved_at": None,
                }
                self._history(conn, existing.id, now, "reopened", severity)
            conn.execute(sa.update(v).where(v.c.id == existing.id).values(**values))
            found = self._violation_by_key(conn, rule, project_id, period)
            assert found is not None
            return found, reopened

    def _transition(
        self,
        rule: str,
        project_id: str,
        period: str,
        at: datetime | None,
        *,
        from_statuses: tuple[str, ...],
        to_status: str,
        action: str,
        stamp: str,
    ) -> bool:
        v = t.violations
        now = self._now(at)
        with self._use(write=True) as conn:
            existing = self._violation_by_key(conn, rule, project_id, period)
            if existing is None or existing.status not in from_statuses:
                return False
            conn.execute(
                sa.update(v).where(v.c.id == existing.id).values(status=to_status, **{stamp: now})
            )
            self._history(conn, existing.id, now, action, existing.severity)
            return True

    def escalate_violation(
        self, rule: str, project_id: str, *, period: str = "", at: datetime | None = None
    ) -> bool:
        """Escalate an open violation to the manager. True if it was open (not escalated)."""
        return self._transition(
            rule,
            project_id,
            period,
            at,
            from_statuses=("open",),
            to_status="escalated",
            action="escalated",
            stamp="escalated_at",
        )

    def resolve_violation(
        self, rule: str, project_id: str, *, period: str = "", at: datetime | None = None
    ) -> bool:
        """Resolve a violation whose condition cleared. True if it was open or escalated."""
        return self._transition(
            rule,
            project_id,
            period,
            at,
            from_statuses=("open", "escalated"),
            to_status="resolved",
            action="resolved",
            stamp="resolved_at",
        )

    def get_violation(self, violation_id: int) -> Violation:
        v = t.violations
        with self._use() as conn:
            row = conn.execute(sa.select(v).where(v.c.id == violation_id)).first()
        if row is None:
            raise NotFound(f"no violation #{violation_id}")
        return _violation(row)

    def list_violations(
        self,
        open_only: bool = True,
        *,
        project_id: str | None = None,
        rule: str | None = None,
        status: ViolationStatus | None = None,
    ) -> list[Violation]:
        """Violations in id order; ``open_only`` means open or escalated."""
        v = t.violations
        q = sa.select(v).order_by(v.c.id)
        if open_only:
            q = q.where(v.c.status != "resolved")
        if status is not None:
            q = q.where(v.c.status == status)
        if project_id is not None:
            q = q.where(v.c.project_id == project_id)
        if rule is not None:
            q = q.where(v.c.rule == rule)
        with self._use() as conn:
            return [_violation(r) for r in conn.execute(q)]

    def violation_history(self, violation_id: int) -> list[ViolationChange]:
        """Every opened/escalated/resolved/reopened change of a violation, oldest first."""
        h = t.violation_history
        q = sa.select(h).where(h.c.violation_id == violation_id).order_by(h.c.at, h.c.id)
        with self._use() as conn:
            return [
                ViolationChange(
                    violation_id=r.violation_id, at=r.at, action=r.action, severity=r.severity
                )
                for r in conn.execute(q)
            ]

    # ------------------------------------------------------------------ runs

    def start_run(self, connector: str, *, at: datetime | None = None) -> int:
        """Record the start of a sync cycle; returns the run id."""
        stmt = sa.insert(t.sync_runs).values(
            connector=connector, started_at=self._now(at), status="running", counts={}
        )
        with self._use(write=True) as conn:
            pk = conn.execute(stmt).inserted_primary_key
        assert pk is not None
        return int(pk[0])

    def finish_run(
        self,
        run_id: int,
        status: RunStatus,
        counts: Mapping[str, int] | None = None,
        error: str | None = None,
        *,
        at: datetime | None = None,
    ) -> None:
        """Close a run with its outcome (``ok``, ``failed``, ``breaker``) and counts
        (pulled, created, updated, conflicts, quarantined...)."""
        if status not in t.RUN_STATUSES:
            raise ValueError(f"run status must be one of {t.RUN_STATUSES}, not {status!r}")
        r = t.sync_runs
        stmt = (
            sa.update(r)
            .where(r.c.id == run_id)
            .values(
                status=status,
                counts=dict(counts or {}),
                error=None if error is None else redact(error),
                finished_at=self._now(at),
            )
        )
        with self._use(write=True) as conn:
            if conn.execute(stmt).rowcount == 0:
                raise NotFound(f"no sync run #{run_id}")

    def get_run(self, run_id: int) -> Run:
        r = t.sync_runs
        with self._use() as conn:
            row = conn.execute(sa.select(r).where(r.c.id == run_id)).first()
        if row is None:
            raise NotFound(f"no sync run #{run_id}")
        return _run(row)

    def last_runs(self) -> dict[str, Run]:
        """The latest run of every connector that ever ran."""
        r = t.sync_runs
        latest = sa.select(sa.func.max(r.c.id)).group_by(r.c.connector).scalar_subquery()
        q = sa.select(r).where(r.c.id.in_(latest)).order_by(r.c.connector)
        with self._use() as conn:
            return {row.connector: _run(row) for row in conn.execute(q)}

    def runs(self, connector: str | None = None, *, limit: int = 50) -> list[Run]:
        """Recent runs, newest first."""
        r = t.sync_runs
        q = sa.select(r).order_by(r.c.id.desc()).limit(limit)
        if connector is not None:
            q = q.where(r.c.connector == connector)
        with self._use() as conn:
            return [_run(row) for row in conn.execute(q)]

    # ------------------------------------------------------------------ alerts

    def add_alert(
        self, connector: str, kind: str, message: str, *, at: datetime | None = None
    ) -> int:
        stmt = sa.insert(t.alerts).values(
            connector=connector, kind=kind, message=redact(message), at=self._now(at)
        )
        with self._use(write=True) as conn:
            pk = conn.execute(stmt).inserted_primary_key
        assert pk is not None
        return int(pk[0])

    def open_alerts(self, connector: str | None = None, *, kind: str | None = None) -> list[Alert]:
        a = t.alerts
        q = sa.select(a).where(a.c.cleared_at.is_(None)).order_by(a.c.id)
        if connector is not None:
            q = q.where(a.c.connector == connector)
        if kind is not None:
            q = q.where(a.c.kind == kind)
        with self._use() as conn:
            return [_alert(r) for r in conn.execute(q)]

    def clear_alerts(
        self, connector: str, kind: str | None = None, *, at: datetime | None = None
    ) -> int:
        """Clear a connector's open alerts (of one kind, or all); returns how many."""
        a = t.alerts
        stmt = (
            sa.update(a)
            .where(a.c.connector == connector, a.c.cleared_at.is_(None))
            .values(cleared_at=self._now(at))
        )
        if kind is not None:
            stmt = stmt.where(a.c.kind == kind)
        with self._use(write=True) as conn:
            return conn.execute(stmt).rowcount

    # ------------------------------------------------------------------ meta

    def get_meta(self, key: str, default: Any = None) -> Any:
        m = t.meta
        with self._use() as conn:
            row = conn.execute(sa.select(m.c.value).where(m.c.key == key)).first()
        return default if row is None else row.value

    def set_meta(self, key: str, value: Any, *, at: datetime | None = None) -> None:
        m = t.meta
        ins = self._insert(m).values(key=key, value=value, updated_at=self._now(at))
        stmt = ins.on_conflict_do_update(
            index_elements=[m.c.key],
            set_={"value": ins.excluded.value, "updated_at": ins.excluded.updated_at},
        )
        with self._use(write=True) as conn:
            conn.execute(stmt)

    # ------------------------------------------------------------------ digests

    def archive_digest(
        self,
        recipient: str,
        *,
        lang: str,
        subject: str,
        status: str,
        deliveries: Sequence[Mapping[str, Any]],
        content: Mapping[str, Any],
        since: datetime | None = None,
        at: datetime | None = None,
    ) -> int:
        """Record a digest that was sent (or whose delivery failed); returns its id. Delivery
        errors pass through :func:`bridge.secrets.redact` (a webhook URL may hold a token)."""
        rows = [
            {**d, "error": None if d.get("error") is None else redact(str(d["error"]))}
            for d in deliveries
        ]
        stmt = sa.insert(t.digests).values(
            recipient=recipient,
            lang=lang,
            sent_at=self._now(at),
            since=_aware(since, "since"),
            status=status,
            subject=subject,
            deliveries=rows,
            content=_json_safe(dict(content)),
        )
        with self._use(write=True) as conn:
            pk = conn.execute(stmt).inserted_primary_key
        assert pk is not None
        return int(pk[0])

    def get_digest(self, digest_id: int) -> DigestRecord:
        d = t.digests
        with self._use() as conn:
            row = conn.execute(sa.select(d).where(d.c.id == digest_id)).first()
        if row is None:
            raise NotFound(f"no digest #{digest_id}")
        return _digest(row)

    def last_digest(self, recipient: str, *, delivered: bool = True) -> DigestRecord | None:
        """The recipient's latest digest (with ``delivered``: the latest that reached at least
        one channel), or None."""
        d = t.digests
        q = sa.select(d).where(d.c.recipient == recipient)
        if delivered:
            q = q.where(d.c.status != "failed")
        q = q.order_by(d.c.sent_at.desc(), d.c.id.desc()).limit(1)
        with self._use() as conn:
            row = conn.execute(q).first()
        return None if row is None else _digest(row)

    def list_digests(self, recipient: str | None = None, *, limit: int = 50) -> list[DigestRecord]:
        """Archived digests, newest first."""
        d = t.digests
        q = sa.select(d).order_by(d.c.sent_at.desc(), d.c.id.desc()).limit(limit)
        if recipient is not None:
            q = q.where(d.c.recipient == recipient)
        with self._use() as conn:
            return [_digest(r) for r in conn.execute(q)]
