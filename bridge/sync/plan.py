"""What a sync intends to write, before it writes it.

The engine turns every pulled page and every push into :class:`Step` objects first; a real run
then executes them, a dry run prints them. Both go through the same planning code, so a dry
run shows exactly what a real run then does.

A dry run's :class:`Plan` keeps every step (that is what it prints). A real run's keeps counts
of everything and only the first :data:`KEEP_STEPS` visible steps, without their payload: a
full sync of 100,000 records would otherwise hold every project's JSON until the run ends.
"""

from __future__ import annotations

from collections import Counter
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


KEEP_STEPS = 1000
"""Visible steps a bounded plan (a real run's) keeps for display; the rest are only counted."""


def is_visible(step: Step) -> bool:
    """A step that writes something a person would call a change.

    Bookkeeping (a new version of a record whose content we already hold, e.g. the echo of
    our own write) is executed but not shown.
    """
    return bool(step.changes or step.conflicts or step.action not in ("update_project", "link"))


@dataclass
class Plan:
    """The steps of a run.

    ``keep=None`` (a dry run) keeps every step as planned. A number keeps at most that many
    *visible* steps, stripped of their execution payload (the project's JSON, the record, its
    history), and only counts the others: ``counts`` has every step by (action, connector),
    ``row_count`` the rows :meth:`rows` would have printed for all of them, ``omitted`` the
    visible steps not kept. Add steps with :meth:`add`.
    """

    steps: list[Step] = field(default_factory=list)
    keep: int | None = None
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    row_count: int = 0
    omitted: int = 0

    def add(self, step: Step) -> None:
        self.counts[(step.action, step.connector)] += 1
        visible = is_visible(step)
        if visible:
            self.row_count += max(1, len(step.changes))
        if self.keep is None:
            self.steps.append(step)
        elif not visible:
            return
        elif len(self.steps) < self.keep:
            self.steps.append(_light(step))
        else:
            self.omitted += 1

    def extend(self, steps: list[Step]) -> None:
        for s in steps:
            self.add(s)

    @property
    def truncated(self) -> bool:
        """True when visible steps were counted but not kept (``rows()`` shows a prefix)."""
        return self.omitted > 0

    def count(self, action: str, connector: str | None = None) -> int:
        """Steps of one action (in one connector), kept or not."""
        return sum(
            n
            for (a, c), n in self.counts.items()
            if a == action and (connector is None or c == connector)
        )

    def visible(self) -> list[Step]:
        """Kept steps that write something a person would call a change (see
        :func:`is_visible`)."""
        return [s for s in self.steps if is_visible(s)]

    def rows(self) -> list[dict[str, Any]]:
        """Rows of the kept visible steps (all of them unless :attr:`truncated`)."""
        return [row for s in self.visible() for row in s.rows()]


def _light(step: Step) -> Step:
    """What a bounded plan keeps of a step: what it prints and its conflicts, no payload."""
    return Step(
        step.action,
        step.connector,
        step.target,
        step.ref,
        step.project_id,
        list(step.changes),
        step.reason,
        conflicts=list(step.conflicts),
    )
