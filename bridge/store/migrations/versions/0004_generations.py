"""A generation counter of what push planning reads, kept by triggers (SQLite).

Push planning compares every linked project with the tool's bases, so an idle cycle grew with
the store. Triggers bump ``generations.push`` on every insert, update and delete of projects,
bases, links and conflicts, whoever writes (the service, a CLI command in another process);
the engine skips planning a tool whose last planning found nothing to push while the counter
has not moved. SQLite only: it has one writer at a time, so the counter moves in commit
order. On PostgreSQL a shared counter row would be taken by triggers in whatever order
concurrent transactions lock their rows (a deadlock risk), and a sequence is not
transactional (a reader could see a bump before the data), so no triggers are made there and
planning runs every cycle.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TABLES = ("projects", "bases", "links", "conflicts")
EVENTS = ("INSERT", "UPDATE", "DELETE")


def _trigger(table: str, event: str) -> str:
    return f"trg_{table}_{event.lower()}_push_generation"


def upgrade() -> None:
    op.create_table(
        "generations",
        sa.Column("key", sa.String(), nullable=False),
        sa.Column(
            "value",
            BIGID,
            nullable=False,
            comment="'push': bumped by triggers on every write to projects, bases, links and "
            "conflicts (SQLite); push planning is skipped while it has not moved",
        ),
        sa.PrimaryKeyConstraint("key", name="pk_generations"),
    )
    op.execute("INSERT INTO generations (key, value) VALUES ('push', 0)")
    if op.get_bind().dialect.name != "sqlite":
        return
    for table in TABLES:
        for event in EVENTS:
            op.execute(
                f"CREATE TRIGGER {_trigger(table, event)} AFTER {event} ON {table} "
                "BEGIN UPDATE generations SET value = value + 1 WHERE key = 'push'; END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for table in TABLES:
            for event in EVENTS:
                op.execute(f"DROP TRIGGER IF EXISTS {_trigger(table, event)}")
    op.drop_table("generations")
