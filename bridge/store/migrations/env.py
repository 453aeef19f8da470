"""Alembic environment for the salesbridge state store.

The product runs migrations through :func:`bridge.store.upgrade`, which hands over an open
connection (``config.attributes["connection"]``) whose transaction it owns. A developer using
the ``alembic`` command instead gives the URL as ``-x url=...``, ``SALESBRIDGE_DB_URL`` or
``sqlalchemy.url``.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy.engine import Connection

from bridge.store.schema import UtcDateTime, metadata


def _render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Render store-specific types as plain SQLAlchemy types, so migrations stand alone."""
    if type_ == "type" and isinstance(obj, UtcDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure_and_run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        render_item=_render_item,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _run() -> None:
    config = context.config
    connection: Connection | None = config.attributes.get("connection")
    if connection is not None:
        _configure_and_run(connection)
        return

    from bridge.store.store import make_engine  # a developer's alembic command line

    url = (
        context.get_x_argument(as_dictionary=True).get("url")
        or os.environ.get("SALESBRIDGE_DB_URL")
        or config.get_main_option("sqlalchemy.url")
    )
    if not url:
        raise SystemExit("give the database URL: alembic -x url=... or SALESBRIDGE_DB_URL")
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            _configure_and_run(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; give a database URL")
_run()
