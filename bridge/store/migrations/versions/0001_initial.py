"""Initial state store: projects, links, bases, cursors, runs, events, conflicts, quarantine,
violations, meta.

Revision ID: 0001
Revises:
Create Date: 2026-01-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Plain types only: a migration must not change when application code does.
TS = sa.DateTime(timezone=True)
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _project_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["project_id"],
        ["projects.id"],
        name=f"fk_{table}_project_id_projects",
        ondelete="CASCADE",
    )


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("id", sa.String(), nullable=False, comment="canonical project id"),
        sa.Column("data", JSON, nullable=False, comment="SalesProject.to_json()"),
        sa.Column("stage", sa.String(), nullable=False),
        sa.Column("owner", sa.String(), nullable=True, comment="owner e-mail, lower case"),
        sa.Column("team", sa.String(), nullable=True),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("updated_at", TS, nullable=True),
        sa.Column("tombstoned_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_projects"),
    )
    for col in ("stage", "owner", "team", "status", "updated_at"):
        op.create_index(f"ix_projects_{col}", "projects", [col])

    op.create_table(
        "links",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("project_id", sa.String(), nullable=False),
        sa.Column("connector", sa.String(), nullable=False),
        sa.Column("ref", sa.String(), nullable=False),
        sa.Column("version", sa.String(), nullable=True),
        sa.Column("url", sa.String(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("unlinked_at", TS, nullable=True, comment="tombstone"),
        sa.PrimaryKeyConstraint("id", name="pk_links"),
        _project_fk("links"),
        sa.UniqueConstraint("connector", "ref", name="uq_links_connector_ref"),
    )
    op.create_index("ix_links_project_id", "links", ["project_id"])
    op.create_index(
        "uq_links_live_project_connector",
        "links",
        ["project_id", "connector"],
        unique=True,
        sqlite_where=sa.text("unlinked_at IS NULL"),
        postgresql_where=sa.text("unlinked_at IS NULL"),
    )

    op.create_table(
        "bases",
        sa.Column("project_id", sa.String(), nullable=False),
        sa.Column("connector", sa.String(), nullable=False),
        sa.Column(
            "fields", JSON, nullable=False, comment="{field path: last agreed value (JSON)}"
        ),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("project_id", "connector", name="pk_bases"),
        _project_fk("bases"),
    )

    op.create_table(
        "cursors",
        sa.Column("connector", sa.String(), nullable=False),
        sa.Column("partition", sa.String(), nullable=False),
        sa.Column("position", sa.String(), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("connector", "partition", name="pk_cursors"),
    )

    op.create_table(
        "sync_runs",
        sa.Column("id", BIGID, autoincrement=True, nullable=False),
        sa.Column("connector", sa.String(), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("counts", JSON, nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_sync_runs"),
        sa.CheckConstraint(
            "status IN ('running', 'ok', 'failed', 'breaker')", name="ck_sync_runs_status"
        ),
    )
    op.create_index("ix_sync_runs_connector_started_at", "sync_runs", ["connector", "started_at"])

    op.create_table(
        "events",
        sa.Column("id", BIGID, autoincrement=True, nullable=False),
        sa.Column("project_id", sa.String(), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("actor", sa.String(), nullable=True),
        sa.Column(
            "source", sa.String(), nullable=False, comment="connector name, 'hub', 'rules'..."
        ),
        sa.Column("field", sa.String(), nullable=False, comment="dotted field path"),
        sa.Column("old", JSON, nullable=True),
        sa.Column("new", JSON, nullable=True),
        sa.Column("meaningful", sa.Boolean(), nullable=False),
        sa.Column("run_id", BIGID, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
        _project_fk("events"),
        sa.ForeignKeyConstraint(
            ["run_id"], ["sync_runs.id"], name="fk_events_run_id_sync_runs", ondelete="SET NULL"
        ),
    )
    op.create_index("ix_events_project_id_at", "events", ["project_id", "at"])

    op.create_table(
        "conflicts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("project_id", sa.String(), nullable=False),
        sa.Column("connector", sa.String(), nullable=False),
        sa.Column("field", sa.String(), nullable=False),
        sa.Column("hub_value", JSON, nullable=True),
        sa.Column("remote_value", JSON, nullable=True),
        sa.Column("base_value", JSON, nullable=True),
        sa.Column("resolution", sa.String(), nullable=False),
        sa.Column("resolved_value", JSON, nullable=True),
        sa.Column("policy", sa.String(), nullable=True),
        sa.Column("detected_at", TS, nullable=False),
        sa.Column("resolved_at", TS, nullable=True),
        sa.Column("resolved_by", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_conflicts"),
        _project_fk("conflicts"),
        sa.CheckConstraint(
            "resolution IN ('pending', 'hub', 'remote', 'value')",
            name="ck_conflicts_resolution",
        ),
    )
    op.create_index("ix_conflicts_project_id", "conflicts", ["project_id"])
    op.create_index(
        "uq_conflicts_pending",
        "conflicts",
        ["project_id", "connector", "field"],
        unique=True,
        sqlite_where=sa.text("resolution = 'pending'"),
        postgresql_where=sa.text("resolution = 'pending'"),
    )

    op.create_table(
        "quarantine",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("connector", sa.String(), nullable=False),
        sa.Column("ref", sa.String(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("payload", JSON, nullable=True),
        sa.Column("first_seen", TS, nullable=False),
        sa.Column("last_seen", TS, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("resolved_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_quarantine"),
    )
    op.create_index(
        "uq_quarantine_unresolved",
        "quarantine",
        ["connector", "ref"],
        unique=True,
        sqlite_where=sa.text("resolved_at IS NULL"),
        postgresql_where=sa.text("resolved_at IS NULL"),
    )

    op.create_table(
        "violations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("rule", sa.String(), nullable=False),
        sa.Column("project_id", sa.String(), nullable=False),
        sa.Column(
            "period", sa.String(), nullable=False, comment="'' when the rule has no period"
        ),
        sa.Column("severity", sa.String(), nullable=False),
        sa.Column("owner", sa.String(), nullable=True),
        sa.Column("evidence", JSON, nullable=True),
        sa.Column("opened_at", TS, nullable=False),
        sa.Column("escalated_at", TS, nullable=True),
        sa.Column("resolved_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_violations"),
        _project_fk("violations"),
        sa.UniqueConstraint(
            "rule", "project_id", "period", name="uq_violations_rule_project_id_period"
        ),
    )
    op.create_index("ix_violations_project_id", "violations", ["project_id"])

    op.create_table(
        "meta",
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("value", JSON, nullable=True),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_meta"),
    )


def downgrade() -> None:
    for table in (
        "meta",
        "violations",
        "quarantine",
        "conflicts",
        "events",
        "sync_runs",
        "cursors",
        "bases",
        "links",
        "projects",
    ):
        op.drop_table(table)
