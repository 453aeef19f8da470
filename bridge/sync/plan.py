"""What a sync intends to write, before it writes it.

The engine turns every pulled page and every push into :class:`Step` objects first; a real run
then executes them, a dry run prints them. Both go through the same planning code, so a dry
run shows exactly what a real run then does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from connectors.base import RemoteRecord

Action = Literal[
    "create_project",  # a record no project knows yet becomes a new project in the hub
    "update_project",  # pulled changes applied to the hub
    "link",  # a record is attached to an existing project (stamp match)
    "unlink",  # a record vanished or was archived in its tool
    "conflict",  # both sides changed a field differently (carried inside update steps)
    "quarantine",  # a record that cannot be mapped, or a push the tool rejected
    "push_update",  # hub changes written to a tool
    "push_create",  # a project created in a tool (idempotent, stamped)
    "push_link",  # a stamped record found in a tool instead of creating a second one
]


@dataclass(frozen=True, slots=True)
class Change:
    path: str
    old: Any
    new: Any
    reason: str = ""


@dataclass(slots=True)
class Step:
    """One unit of work, executed and committed on its own (a pulled page's steps together)."""

    action: Action
    connector: str
    target: str
    """Where the write lands: ``hub`` or the connector's name."""
    ref: str | None
    project_id: str | None
    changes: list[Change] = field(default_factory=list)
    reason: str = ""
    # Execution payload (not printed).
    record: RemoteRecord | None = None
    project: dict[str, Any] | None = None
    bases: dict[str, Any] = field(default_factory=dict)
    conflicts: list[Any] = field(default_factory=list)
    remote_fields: dict[str, Any] = field(default_factory=dict)
    history: list[Any] = field(default_factory=list)
    """Events from the tool's own history (real times), written with the step."""

    def rows(self) -> list[dict[str, Any]]:
        """Flat rows for the dry-run table: one per field written, or one for the step."""
        base = {
            "action": self.action,
            "target": self.target,
            "connector": self.connector,
            "ref": self.ref,
            "project": self.project_id,
        }
        if not self.changes:
            return [{**base, "field": None, "old": None, "new": None, "reason": self.reason}]
        return [
            {**base, "field": c.path, "old": c.old, "new": c.new, "reason": c.reason or self.reason}
            for c in self.changes
        ]


@dataclass
class Plan:
    steps: list[Step] = field(default_factory=list)

    def visible(self) -> list[Step]:
        """Steps that write something a person would call a change.

        Bookkeeping (a new version of a record whose content we already hold, e.g. the echo of
        our own write) is executed but not shown.
        """
        return [
            s
            for s in self.steps
            if s.changes or s.conflicts or s.action not in ("update_project", "link")
        ]

    def rows(self) -> list[dict[str, Any]]:
        return [row for s in self.visible() for row in s.rows()]
