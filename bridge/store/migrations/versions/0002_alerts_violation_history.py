"""Alerts (breaker trips...), a violation status column and the violation history.

Existing violations get their status from escalated_at / resolved_at, and their history is
rebuilt from those timestamps, so nothing recorded before this revision is lost.

Revision ID: 0002
Revises: 0001
Create Date: 2026-01-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)
BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("connector", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False, comment="e.g. breaker, auth"),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("cleared_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_alerts"),
    )
    op.create_index("ix_alerts_connector_cleared_at", "alerts", ["connector", "cleared_at"])

    op.add_column(
        "violations", sa.Column("status", sa.String(), nullable=False, server_default="open")
    )
    op.execute(
        "UPDATE violations SET status = CASE"
        " WHEN resolved_at IS NOT NULL THEN 'resolved'"
        " WHEN escalated_at IS NOT NULL THEN 'escalated'"
        " ELSE 'open' END"
    )
    op.create_index("ix_violations_status", "violations", ["status"])

    op.create_table(
        "violation_history",
        sa.Column("id", BIGID, autoincrement=True, nullable=False),
        sa.Column("violation_id", sa.Integer(), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column(
            "action", sa.String(), nullable=False, comment="opened/escalated/resolved/reopened"
        ),
        sa.Column("severity", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_violation_history"),
        sa.ForeignKeyConstraint(
            ["violation_id"],
            ["violations.id"],
            name="fk_violation_history_violation_id_violations",
            ondelete="CASCADE",
        ),
    )
    op.create_index(
        "ix_violation_history_violation_id_at", "violation_history", ["violation_id", "at"]
    )
    for action, column in (
        ("opened", "opened_at"),
        ("escalated", "escalated_at"),
        ("resolved", "resolved_at"),
    ):
        op.execute(
            "INSERT INTO violation_history (violation_id, at, action, severity)"
            f" SELECT id, {column}, '{action}', severity FROM violations"  # noqa: S608
            f" WHERE {column} IS NOT NULL ORDER BY id"
        )


def downgrade() -> None:
    op.drop_index("ix_violation_history_violation_id_at", table_name="violation_history")
    op.drop_table("violation_history")
    with op.batch_alter_table("violations") as batch:
        batch.drop_index("ix_violations_status")
        batch.drop_column("status")
    op.drop_index("ix_alerts_connector_cleared_at", table_name="alerts")
    op.drop_table("alerts")
