"""The digest archive: every digest sent (or attempted), to whom, when, and its content.

Revision ID: 0003
Revises: 0002
Create Date: 2026-01-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "digests",
        sa.Column("id", BIGID, autoincrement=True, nullable=False),
        sa.Column("recipient", sa.String(), nullable=False, comment="[recipients.<key>]"),
        sa.Column("lang", sa.String(), nullable=False),
        sa.Column("sent_at", TS, nullable=False),
        sa.Column("since", TS, nullable=True, comment="what changed is counted from here"),
        sa.Column("status", sa.String(), nullable=False, comment="sent/partial/failed"),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("deliveries", JSON, nullable=False, comment="[{channel, ok, error}]"),
        sa.Column("content", JSON, nullable=False, comment="the digest content model"),
        sa.PrimaryKeyConstraint("id", name="pk_digests"),
    )
    op.create_index("ix_digests_recipient_sent_at", "digests", ["recipient", "sent_at"])


def downgrade() -> None:
    op.drop_index("ix_digests_recipient_sent_at", table_name="digests")
    op.drop_table("digests")
