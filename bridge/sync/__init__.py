"""The sync engine: pull, map, three-way merge per field, push (see engine.py)."""

from bridge.sync.engine import ConnectorReport, SyncEngine, SyncReport
from bridge.sync.merge import Decision, merge_field
from bridge.sync.plan import Change, Plan, Step

__all__ = [
    "Change",
    "ConnectorReport",
    "Decision",
    "Plan",
    "Step",
    "SyncEngine",
    "SyncReport",
    "merge_field",
]
