"""The state store's tables, as SQLAlchemy Core ``Table`` objects (the schema at Alembic head).

The migrations in ``migrations/versions`` create exactly this schema; a test compares the two on
every backend, so a change here without a migration (or the reverse) fails the suite. Write the
migration by hand or with ``alembic -c bridge/store/alembic.ini revision --autogenerate``.

Conventions: every datetime column is :class:`UtcDateTime` (timezone-aware UTC in Python, UTC
on disk); every JSON column is :data:`JSONType` (JSONB on PostgreSQL). No column holds a secret.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect

if TYPE_CHECKING:
    from sqlalchemy.sql.type_api import _BindProcessorType, _ResultProcessorType


def to_utc(value: datetime) -> datetime:
    """``value`` in UTC; a naive datetime is refused rather than guessed."""
    if not isinstance(value, datetime):
        raise TypeError(f"expected a datetime, got {type(value).__name__}")
    if value.tzinfo is UTC:
        return value
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value.isoformat()} (the store needs tz-aware)")
    return value.astimezone(UTC)


def sqlite_datetime(value: datetime | None) -> str | None:
    """How a datetime is written in SQLite: naive UTC, ``YYYY-MM-DD HH:MM:SS.ffffff`` (the
    SQLAlchemy format, so text order is time order)."""
    if value is None:
        return None
    return to_utc(value).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def sqlite_datetime_result(value: str | None) -> datetime | None:
    if value is None:
        return None
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """A timezone-aware datetime, stored in UTC.

    SQLite has no time zones: the value is written as naive UTC text and UTC is re-attached on
    read (with the C ``fromisoformat``, which is faster than SQLAlchemy's generic parser).
    PostgreSQL stores ``timestamptz``; what it returns is converted to UTC. A naive datetime
    is refused rather than guessed.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else to_utc(value)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def bind_processor(self, dialect: Dialect) -> _BindProcessorType[datetime] | None:
        if dialect.name == "sqlite":
            return sqlite_datetime
        return super().bind_processor(dialect)

    def result_processor(
        self, dialect: Dialect, coltype: object
    ) -> _ResultProcessorType[datetime] | None:
        if dialect.name == "sqlite":
            return sqlite_datetime_result
        return super().result_processor(dialect, coltype)


JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
"""JSON column type: JSON text on SQLite, JSONB on PostgreSQL."""

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
"""An auto-increment id: BIGINT on PostgreSQL, INTEGER (the rowid alias) on SQLite."""

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

RUN_STATUSES = ("running", "ok", "failed", "breaker")
RESOLUTIONS = ("pending", "hub", "remote", "value")
VIOLATION_STATUSES = ("open", "escalated", "resolved")
VIOLATION_ACTIONS = ("opened", "escalated", "resolved", "reopened")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _fk_project(**kw: Any) -> sa.ForeignKey:
    return sa.ForeignKey("projects.id", ondelete="CASCADE", **kw)


projects = sa.Table(
    "projects",
    metadata,
    sa.Column("id", sa.String(), primary_key=True, comment="canonical project id"),
    sa.Column("data", JSONType, nullable=False, comment="SalesProject.to_json()"),
    sa.Column("stage", sa.String(), nullable=False),
    sa.Column("owner", sa.String(), nullable=True, comment="owner e-mail, lower case"),
    sa.Column("team", sa.String(), nullable=True),
    sa.Column("status", sa.String(), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=True),
    sa.Column("tombstoned_at", UtcDateTime(), nullable=True),
    sa.Index(None, "stage"),
    sa.Index(None, "owner"),
    sa.Index(None, "team"),
    sa.Index(None, "status"),
    sa.Index(None, "updated_at"),
)

links = sa.Table(
    "links",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("project_id", sa.String(), _fk_project(), nullable=False),
    sa.Column("connector", sa.String(), nullable=False),
    sa.Column("ref", sa.String(), nullable=False),
    sa.Column("version", sa.String(), nullable=True),
    sa.Column("url", sa.String(), nullable=True),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    sa.Column("unlinked_at", UtcDateTime(), nullable=True, comment="tombstone"),
    sa.UniqueConstraint("connector", "ref"),
    sa.Index(None, "project_id"),
    # A project has at most one live link per connector (SalesProject.links is keyed by it).
    sa.Index(
        "uq_links_live_project_connector",
        "project_id",
        "connector",
        unique=True,
        sqlite_where=sa.text("unlinked_at IS NULL"),
        postgresql_where=sa.text("unlinked_at IS NULL"),
    ),
)

bases = sa.Table(
    "bases",
    metadata,
    sa.Column("project_id", sa.String(), _fk_project(), primary_key=True),
    sa.Column("connector", sa.String(), primary_key=True),
    sa.Column("fields", JSONType, nullable=False, comment="{field path: last agreed value (JSON)}"),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
)

cursors = sa.Table(
    "cursors",
    metadata,
    sa.Column("connector", sa.String(), primary_key=True),
    sa.Column("partition", sa.String(), primary_key=True),
    sa.Column("position", sa.String(), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
)

sync_runs = sa.Table(
    "sync_runs",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("connector", sa.String(), nullable=False),
    sa.Column("started_at", UtcDateTime(), nullable=False),
    sa.Column("finished_at", UtcDateTime(), nullable=True),
    sa.Column("status", sa.String(), nullable=False),
    sa.Column("counts", JSONType, nullable=False),
    sa.Column("error", sa.Text(), nullable=True),
    sa.CheckConstraint(_in("status", RUN_STATUSES), name="status"),
    sa.Index(None, "connector", "started_at"),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("project_id", sa.String(), _fk_project(), nullable=False),
    sa.Column("at", UtcDateTime(), nullable=False),
    sa.Column("actor", sa.String(), nullable=True),
    sa.Column("source", sa.String(), nullable=False, comment="connector name, 'hub', 'rules'..."),
    sa.Column("field", sa.String(), nullable=False, comment="dotted field path"),
    sa.Column("old", JSONType, nullable=True),
    sa.Column("new", JSONType, nullable=True),
    sa.Column("meaningful", sa.Boolean(), nullable=False),
    sa.Column(
        "run_id",
        BigId,
        sa.ForeignKey("sync_runs.id", ondelete="SET NULL"),
        nullable=True,
    ),
    sa.Index(None, "project_id", "at"),
)

conflicts = sa.Table(
    "conflicts",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("project_id", sa.String(), _fk_project(), nullable=False),
    sa.Column("connector", sa.String(), nullable=False),
    sa.Column("field", sa.String(), nullable=False),
    sa.Column("hub_value", JSONType, nullable=True),
    sa.Column("remote_value", JSONType, nullable=True),
    sa.Column("base_value", JSONType, nullable=True),
    sa.Column("resolution", sa.String(), nullable=False),
    sa.Column("resolved_value", JSONType, nullable=True),
    sa.Column("policy", sa.String(), nullable=True),
    sa.Column("detected_at", UtcDateTime(), nullable=False),
    sa.Column("resolved_at", UtcDateTime(), nullable=True),
    sa.Column("resolved_by", sa.String(), nullable=True),
    sa.CheckConstraint(_in("resolution", RESOLUTIONS), name="resolution"),
    sa.Index(None, "project_id"),
    # One pending conflict per (project, connector, field): re-detection updates it.
    sa.Index(
        "uq_conflicts_pending",
        "project_id",
        "connector",
        "field",
        unique=True,
        sqlite_where=sa.text("resolution = 'pending'"),
        postgresql_where=sa.text("resolution = 'pending'"),
    ),
)

quarantine = sa.Table(
    "quarantine",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("connector", sa.String(), nullable=False),
    sa.Column("ref", sa.String(), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("payload", JSONType, nullable=True),
    sa.Column("first_seen", UtcDateTime(), nullable=False),
    sa.Column("last_seen", UtcDateTime(), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("resolved_at", UtcDateTime(), nullable=True),
    # One unresolved entry per record: quarantining it again bumps ``attempts``.
    sa.Index(
        "uq_quarantine_unresolved",
        "connector",
        "ref",
        unique=True,
        sqlite_where=sa.text("resolved_at IS NULL"),
        postgresql_where=sa.text("resolved_at IS NULL"),
    ),
)

violations = sa.Table(
    "violations",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("rule", sa.String(), nullable=False),
    sa.Column("project_id", sa.String(), _fk_project(), nullable=False),
    sa.Column("period", sa.String(), nullable=False, comment="'' when the rule has no period"),
    sa.Column("severity", sa.String(), nullable=False),
    sa.Column("owner", sa.String(), nullable=True),
    sa.Column("evidence", JSONType, nullable=True),
    sa.Column("opened_at", UtcDateTime(), nullable=False),
    sa.Column("escalated_at", UtcDateTime(), nullable=True),
    sa.Column("resolved_at", UtcDateTime(), nullable=True),
    # added in 0002 (backfilled from escalated_at / resolved_at)
    sa.Column("status", sa.String(), nullable=False, server_default="open"),
    sa.UniqueConstraint("rule", "project_id", "period"),
    sa.Index(None, "project_id"),
    sa.Index(None, "status"),
)

violation_history = sa.Table(
    "violation_history",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column(
        "violation_id",
        sa.Integer(),
        sa.ForeignKey("violations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("at", UtcDateTime(), nullable=False),
    sa.Column("action", sa.String(), nullable=False, comment="opened/escalated/resolved/reopened"),
    sa.Column("severity", sa.String(), nullable=True),
    sa.Index(None, "violation_id", "at"),
)

alerts = sa.Table(
    "alerts",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("connector", sa.String(), nullable=False),
    sa.Column("kind", sa.String(), nullable=False, comment="e.g. breaker, auth"),
    sa.Column("message", sa.Text(), nullable=False),
    sa.Column("at", UtcDateTime(), nullable=False),
    sa.Column("cleared_at", UtcDateTime(), nullable=True),
    sa.Index(None, "connector", "cleared_at"),
)

generations = sa.Table(
    "generations",
    metadata,
    sa.Column("key", sa.String(), primary_key=True),
    sa.Column(
        "value",
        BigId,
        nullable=False,
        comment="'push': bumped by triggers on every write to projects, bases, links and "
        "conflicts (SQLite); push planning is skipped while it has not moved",
    ),
)

meta = sa.Table(
    "meta",
    metadata,
    sa.Column("key", sa.String(), primary_key=True),
    sa.Column("value", JSONType, nullable=True),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
)

digests = sa.Table(
    "digests",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("recipient", sa.String(), nullable=False, comment="[recipients.<key>]"),
    sa.Column("lang", sa.String(), nullable=False),
    sa.Column("sent_at", UtcDateTime(), nullable=False),
    sa.Column("since", UtcDateTime(), nullable=True, comment="what changed is counted from here"),
    sa.Column("status", sa.String(), nullable=False, comment="sent/partial/failed"),
    sa.Column("subject", sa.Text(), nullable=False),
    sa.Column("deliveries", JSONType, nullable=False, comment="[{channel, ok, error}]"),
    sa.Column("content", JSONType, nullable=False, comment="the digest content model"),
    sa.Index(None, "recipient", "sent_at"),
)
