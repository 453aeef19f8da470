"""Lists a tool holds as child records of a project's record (a CRM's activities, tasks or
contact roles), shared by the connectors that write them: turning the records the tool has
into the wanted list, and the marker the bridge leaves in a child record's text.

The marker (``[salesbridge: {...}]`` on the last line) keeps what the tool has no field for
(an action's time and author as people gave them, a next step's owner as a person) and the
user the bridge assigned the record to, so a reassignment in the tool is seen as a change.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

MARKER = re.compile(r"\n?\[salesbridge: (\{.*\})\]\s*$")

K = TypeVar("K")
T = TypeVar("T")
W = TypeVar("W")


def read_marker(text: Any) -> dict[str, Any]:
    """The marker's values in ``text`` ({} when there is none or it is not a JSON object)."""
    m = MARKER.search(text) if isinstance(text, str) else None
    if m is None:
        return {}
    try:
        found = json.loads(m.group(1))
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def with_marker(text: str | None, values: Mapping[str, Any]) -> str:
    """``text`` with its marker replaced by one holding ``values`` (people's text is kept)."""
    kept = MARKER.sub("", text or "")
    line = "[salesbridge: " + json.dumps(dict(values), sort_keys=True) + "]"
    return f"{kept}\n{line}" if kept else line


def item_key(item: Mapping[str, Any]) -> tuple[str, Any]:
    """What identifies an action (what, at) or a next step (what, due) in its list."""
    return (item["what"], item["at"] if "at" in item else item.get("due"))


def reconcile(
    current: Sequence[tuple[K, T]], wanted: Sequence[W], key: Callable[[W], K]
) -> tuple[list[tuple[T, W]], list[T], list[W]]:
    """Turn ``current`` (key, thing; in the order added) into ``wanted``: (kept thing, wanted
    item), things to delete, items to add in order. Kept ones keep their place, so one out of
    the wanted order is deleted and added again after the others: the order they are added in
    then reads back as ``wanted``."""
    keep: list[tuple[T, W]] = []
    new: list[W] = []
    gone: list[T] = []
    at = 0
    for item in wanted:
        k = key(item)
        found = None
        if not new:
            found = next((j for j in range(at, len(current)) if current[j][0] == k), None)
        if found is None:
            new.append(item)
            continue
        gone.extend(thing for _, thing in current[at:found])
        keep.append((current[found][1], item))
        at = found + 1
    gone.extend(thing for _, thing in current[at:])
    return keep, gone, new
