"""The state store (SQLite by default, PostgreSQL by URL) and its Alembic migrations.

See :mod:`bridge.store.store` for the API and :mod:`bridge.store.schema` for the tables.
"""

from bridge.store.store import (
    Alert,
    Conflict,
    DigestRecord,
    Event,
    LinkConflict,
    LinkedProject,
    NewLink,
    NotFound,
    QuarantineEntry,
    Run,
    SchemaMismatch,
    Store,
    StoredLink,
    StoreError,
    Violation,
    ViolationChange,
    current_revision,
    downgrade,
    head_revision,
    make_engine,
    upgrade,
)

__all__ = [
    "Alert",
    "Conflict",
    "DigestRecord",
    "Event",
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
