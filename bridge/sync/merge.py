"""Per-field three-way merge: the rule that decides every field of every pulled record.

Pure functions over JSON values; no store, no connector. The three inputs are the hub's value,
the tool's value and the *base* (what both agreed on at the last sync).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

Outcome = Literal["same", "keep_hub", "take_remote", "conflict"]
Side = Literal["hub", "remote"]
Policy = Literal["newest_wins", "review"]

NO_BASE: Any = object()
"""Marks a field that has no base yet (never agreed)."""


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one field. For a conflict, ``winner`` is the side that was kept
    (None while it waits for review) and ``how`` says why."""

    path: str
    outcome: Outcome
    hub: Any
    remote: Any
    base: Any
    winner: Side | None = None
    how: str = ""

    @property
    def value(self) -> Any:
        """The value the hub holds after this decision."""
        if self.outcome == "take_remote" or self.winner == "remote":
            return self.remote
        return self.hub


def merge_field(
    path: str,
    hub: Any,
    remote: Any,
    base: Any = NO_BASE,
    *,
    connector: str,
    owner: str | None,
    policy: Policy,
    remote_time: datetime | None,
    hub_time: datetime | None,
) -> Decision:
    """Decide one field.

    - equal values: nothing to do;
    - only the tool changed it (hub equals base): take the tool's value;
    - only the hub changed it (tool equals base): keep the hub's (a push will follow);
    - no base yet (first sight): an empty side yields to the other;
    - both changed differently: a conflict, won by the field's owner (``owner`` names the
      connector whose mapping says ``owns = true``), else by ``policy``: ``newest_wins``
      compares the tools' own timestamps (ties keep the hub); ``review`` keeps the hub and
      leaves the conflict pending.
    """
    if hub == remote:
        return Decision(path, "same", hub, remote, base)
    has_base = base is not NO_BASE
    if has_base:
        if remote == base:
            return Decision(path, "keep_hub", hub, remote, base)
        if hub == base:
            return Decision(path, "take_remote", hub, remote, base)
    else:
        # First sight: an empty side (None, "", [], {}) has nothing to say. A record the bridge
        # created in a tool reads back empty on a field only another tool fills (comments as
        # actions, say); that must never wipe the hub.
        base = None
        if _empty(hub):
            return Decision(path, "take_remote", hub, remote, base)
        if _empty(remote):
            return Decision(path, "keep_hub", hub, remote, base)
    if owner is not None:
        winner: Side = "remote" if owner == connector else "hub"
        return Decision(path, "conflict", hub, remote, base, winner, f"owned by {owner}")
    if policy == "review":
        return Decision(path, "conflict", hub, remote, base, None, "queued for review")
    if remote_time is not None and (hub_time is None or remote_time > hub_time):
        return Decision(path, "conflict", hub, remote, base, "remote", "newest wins: tool")
    return Decision(path, "conflict", hub, remote, base, "hub", "newest wins: hub")


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}
