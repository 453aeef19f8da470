"""The in-memory connector: the reference implementation of the connector protocol.

It holds both halves a tool's package holds. ``MemoryBackend`` plays the remote tool: records
with a version counter, server time, stamp, tombstone, partition, last editor and change
history, plus injected faults. ``MemoryConnector`` is the adapter that speaks to it. Tests share
one backend between connectors and edit it "remotely" through its methods. With ``path`` set the
backend lives in a JSON file (replaced atomically, written under a file lock), so separate
processes, such as a CLI run killed and rerun, see the same tool.

Server time never repeats: a write in the same microsecond as the previous one, or while the
clock runs backwards, is stamped one microsecond after it. So ``updated_at`` orders changes
exactly, and a cursor position is the ``updated_at`` of the last record read.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from connectors.base import (
    Connector,
    ConnectorConfig,
    Cursor,
    FatalError,
    HistoryEntry,
    Page,
    RemoteField,
    RemoteRecord,
    RemoteUser,
    Schema,
    SkippableRecord,
    StaleVersion,
)

Clock = Callable[[], datetime]
Entry = dict[str, Any]
Operation = Literal[
    "check", "discover", "pull", "page", "get", "find_by_stamp",
    "create", "update", "archive", "history",
]  # fmt: skip
WRITES = frozenset({"create", "update", "archive"})
DEFAULT_STAGES = ("lead", "qualification", "proposal", "negotiation", "signing", "delivery")
_TICK = timedelta(microseconds=1)
_ENVELOPE = frozenset({"partition", "version", "updated_at", "updated_by", "deleted", "history"})


def utc_now() -> datetime:
    return datetime.now(UTC)


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def _aware(at: datetime, what: str) -> datetime:
    if at.tzinfo is None:
        raise ValueError(f"{what} must be timezone-aware, got {at!r}")
    return at.astimezone(UTC)


class SteppingClock:
    """A server clock for tests: every reading is ``step`` later than the one before."""

    def __init__(
        self, start: datetime | None = None, step: timedelta = timedelta(seconds=1)
    ) -> None:
        self.now = _aware(start or datetime(2024, 1, 1, tzinfo=UTC), "start")
        self.step = step

    def __call__(self) -> datetime:
        self.now += self.step
        return self.now


class MemoryConfig(ConnectorConfig):
    kind: Literal["memory"] = "memory"
    page_size: int = Field(50, gt=0, description="records per pulled page")
    path: Path | None = Field(None, description="JSON file holding the data; in-process if unset")
    partitions: list[str] = Field(
        default_factory=lambda: [""], min_length=1, description="partitions pulled (boards)"
    )
    stage_values: list[str] = Field(
        default_factory=lambda: list(DEFAULT_STAGES), description="options of the status field"
    )
    user: str = Field("salesbridge", description="the account the connector writes as")
    fields: dict[str, str] = Field(
        default_factory=dict,
        description="declared fields (name -> type), listed by discover() even while no "
        "record uses them, as a real tool lists its schema",
    )


@dataclass
class _Fault:
    operation: str
    error: BaseException | Callable[[], BaseException]
    times: int
    after_write: bool


class MemoryBackend:
    """The remote tool. Its methods are edits people make in the tool, out of the bridge's sight.

    A stored entry is JSON-shaped: ``partition, fields, stamp, version, updated_at, updated_by,
    deleted, history``. ``clock`` is the server clock (tz-aware); ``calls`` counts connector
    calls per operation.
    """

    def __init__(self, path: Path | None = None, *, clock: Clock = utc_now) -> None:
        self.path = path
        self.clock = clock
        self.calls: Counter[str] = Counter()
        self._faults: list[_Fault] = []
        self._lock = threading.RLock()
        self._state: dict[str, Any] = {"next_id": 0, "last_time": None, "records": {}}

    # -- edits made in the tool

    def add(
        self,
        fields: Mapping[str, Any],
        *,
        stamp: str | None = None,
        partition: str = "",
        actor: str | None = None,
    ) -> str:
        """Create a record; return its ref."""
        json.dumps(dict(fields))  # a real tool takes JSON: fail here, not at the next save
        return self._insert(copy.deepcopy(dict(fields)), stamp, partition, actor)

    def add_raw(self, fields: object, *, partition: str = "") -> str:
        """Create a record whose ``fields`` are anything at all: a malformed record."""
        return self._insert(copy.deepcopy(fields), None, partition, None)

    def edit(
        self,
        ref: str,
        changes: Mapping[str, Any],
        *,
        actor: str | None = None,
        expected_version: str | None = None,
    ) -> str:
        """Change fields of a live record and return its new version.

        KeyError if ``ref`` is unknown or deleted; StaleVersion if ``expected_version`` is given
        and no longer current; SkippableRecord if the record's fields are malformed.
        """
        json.dumps(dict(changes))
        with self._transaction() as state:
            entry = state["records"].get(ref)
            if entry is None or entry["deleted"]:
                raise KeyError(ref)
            if expected_version is not None and str(entry["version"]) != expected_version:
                raise StaleVersion(ref, expected_version, str(entry["version"]))
            fields = entry["fields"]
            if not isinstance(fields, dict):
                raise SkippableRecord(ref, "fields are not a mapping", payload=fields)
            at = self._tick(state)
            for key, new in copy.deepcopy(dict(changes)).items():
                old = fields.get(key)
                if old != new:
                    change = {"at": at, "field": key, "old": old, "new": new, "actor": actor}
                    entry["history"].append(change)
                fields[key] = new
            self._touch(entry, at, actor)
            return str(entry["version"])

    def delete(self, ref: str, *, actor: str | None = None) -> None:
        """Delete a record, leaving a tombstone. Unknown and deleted refs are left alone."""
        with self._transaction() as state:
            entry = state["records"].get(ref)
            if entry is not None and not entry["deleted"]:
                entry["deleted"] = True
                self._touch(entry, self._tick(state), actor)

    def restore(self, ref: str, *, actor: str | None = None) -> None:
        """Bring a deleted record back (a card taken out of the archive), as a new revision."""
        with self._transaction() as state:
            entry = state["records"].get(ref)
            if entry is not None and entry["deleted"]:
                entry["deleted"] = False
                self._touch(entry, self._tick(state), actor)

    def records(self) -> dict[str, Entry]:
        """A copy of every stored entry, deleted ones included, in creation order."""
        if self.path is not None:
            return dict(self._load()["records"])
        with self._lock:
            return copy.deepcopy(self._state["records"])

    def entry(self, ref: str) -> Entry | None:
        """A copy of one stored entry, or None."""
        if self.path is not None:
            return self.records().get(ref)
        with self._lock:
            found: Entry | None = self._state["records"].get(ref)
            return copy.deepcopy(found)

    # -- faults

    def inject_fault(
        self,
        operation: Operation,
        error: BaseException | Callable[[], BaseException],
        *,
        times: int = 1,
        after_write: bool = False,
    ) -> None:
        """Make the next ``times`` connector calls of ``operation`` raise ``error``.

        ``"pull"`` fails when a pull starts, ``"page"`` before each page. With ``after_write``
        (create, update, archive) the write takes effect and then the error is raised, as when a
        tool applied a request but its response was lost.
        """
        if after_write and operation not in WRITES:
            raise ValueError(f"after_write applies to {sorted(WRITES)}, not {operation!r}")
        if times < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._faults.append(_Fault(operation, error, times, after_write))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def fire(self, operation: Operation, *, after_write: bool = False) -> None:
        """Called by the connector around each call: count it and raise the fault due, if any."""
        with self._lock:
            if not after_write:
                self.calls[operation] += 1
            due = next(
                (
                    f
                    for f in self._faults
                    if f.operation == operation and f.after_write == after_write
                ),
                None,
            )
            if due is None:
                return
            due.times -= 1
            if due.times == 0:
                self._faults.remove(due)
        raise due.error if isinstance(due.error, BaseException) else due.error()

    # -- storage

    def _insert(self, fields: object, stamp: str | None, partition: str, actor: str | None) -> str:
        with self._transaction() as state:
            state["next_id"] += 1
            ref = f"MEM-{state['next_id']}"
            state["records"][ref] = {
                "partition": partition,
                "fields": fields,
                "stamp": stamp,
                "version": 0,
                "deleted": False,
                "history": [],
            }
            self._touch(state["records"][ref], self._tick(state), actor)
            return ref

    @staticmethod
    def _touch(entry: Entry, at: str, actor: str | None) -> None:
        entry["version"] += 1
        entry["updated_at"] = at
        entry["updated_by"] = actor

    def _tick(self, state: dict[str, Any]) -> str:
        now = _aware(self.clock(), "the backend clock's time")
        if state["last_time"] is not None:
            now = max(now, datetime.fromisoformat(state["last_time"]) + _TICK)
        state["last_time"] = _iso(now)
        return _iso(now)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[dict[str, Any]]:
        """The state to change; a file-backed one is saved if the block ends without error."""
        with self._lock:
            if self.path is None:
                yield self._state  # every change validates before it mutates
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.with_name(self.path.name + ".lock").open("a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
                state = self._load()
                yield state
                self._save(state)

    def _load(self) -> dict[str, Any]:
        assert self.path is not None
        if not self.path.exists():
            return {"next_id": 0, "last_time": None, "records": {}}
        state: dict[str, Any] = json.loads(self.path.read_text(encoding="utf-8"))
        records = state.get("records") if isinstance(state, dict) else None
        if not (
            isinstance(records, dict)
            and all(isinstance(e, dict) and e.keys() >= _ENVELOPE for e in records.values())
        ):
            raise FatalError(f"{self.path} does not hold memory connector data")
        return state

    def _save(self, state: dict[str, Any]) -> None:
        assert self.path is not None
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(state, out, ensure_ascii=False, indent=1)
                out.flush()
                os.fsync(out.fileno())
            Path(tmp).replace(self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class MemoryConnector(Connector[MemoryConfig]):
    """Adapter to a :class:`MemoryBackend`; its own one unless ``backend`` is given."""

    kind: ClassVar[str] = "memory"
    config_model: ClassVar[type[ConnectorConfig]] = MemoryConfig

    def __init__(
        self, name: str, config: MemoryConfig, *, backend: MemoryBackend | None = None
    ) -> None:
        super().__init__(name, config)
        self.backend = backend if backend is not None else MemoryBackend(config.path)

    def check(self) -> str:
        self.backend.fire("check")
        live = sum(1 for e in self.backend.records().values() if not e.get("deleted"))
        where = self.backend.path or "process memory"
        return f"memory connector {self.name!r} as {self.config.user}: {live} records in {where}"

    def discover(self) -> Schema:
        """Fields seen on live records, ``status`` with its options, and every editor seen."""
        self.backend.fire("discover")
        types: dict[str, str] = {}
        users = {self.config.user: RemoteUser(self.config.user)}
        for entry in self.backend.records().values():
            actors = [entry.get("updated_by"), *(h.get("actor") for h in entry.get("history", ()))]
            users.update((a, RemoteUser(a)) for a in actors if isinstance(a, str))
            fields = entry.get("fields")
            if entry.get("deleted") or not isinstance(fields, dict):
                continue
            for key, value in fields.items():
                if isinstance(value, dict) and isinstance(value.get("id"), str):
                    users[value["id"]] = RemoteUser(
                        value["id"], value.get("name"), value.get("email"), value.get("username")
                    )
                if not types.get(key):
                    types[key] = _type_of(value)
        stages = tuple(self.config.stage_values)
        for key, declared in self.config.fields.items():
            types[key] = declared
        found = [RemoteField(k, k, t or "text") for k, t in types.items() if k != "status"]
        found.append(RemoteField("status", "Status", "option", options=stages))
        return Schema(
            fields=tuple(sorted(found, key=lambda f: f.id)),
            users=tuple(sorted(users.values(), key=lambda u: u.id)),
            stages=stages,
        )

    def pull(self, cursor: Cursor, *, signpost: datetime, full: bool = False) -> Iterator[Page]:
        self.backend.fire("pull")
        signpost = _aware(signpost, "signpost")
        rows: dict[str, list[tuple[datetime, str, Entry]]] = {p: [] for p in self.config.partitions}
        for ref, entry in self.backend.records().items():
            if entry["partition"] in rows:
                at = datetime.fromisoformat(entry["updated_at"])
                rows[entry["partition"]].append((at, ref, entry))
        current = cursor
        for partition, found in rows.items():
            start = _position(cursor.get(partition))
            since = None if full else start
            found = sorted(r for r in found if since is None or r[0] > since)
            for i in range(0, len(found), self.config.page_size):
                self.backend.fire("page")
                chunk = found[i : i + self.config.page_size]
                records: list[RemoteRecord] = []
                skipped: list[SkippableRecord] = []
                for _, ref, entry in chunk:
                    try:
                        record = self._record(ref, entry)
                    except SkippableRecord as exc:
                        skipped.append(exc)
                        continue
                    if not (full and record.deleted):
                        records.append(record)
                reached = min(chunk[-1][0], signpost)
                if start is None or reached > start:
                    current, start = current.advanced(partition, _iso(reached)), reached
                yield Page(records, current, skipped)

    def get(self, ref: str) -> RemoteRecord | None:
        self.backend.fire("get")
        return self._read(ref)

    def find_by_stamp(self, stamp: str) -> RemoteRecord | None:
        self.backend.fire("find_by_stamp")
        for ref, entry in self.backend.records().items():
            if not entry.get("deleted") and entry.get("stamp") == stamp:
                return self._record(ref, entry)
        return None

    def create(self, fields: Mapping[str, Any], *, stamp: str) -> RemoteRecord:
        self.backend.fire("create")
        partition = self.config.partitions[0]
        ref = self.backend.add(fields, stamp=stamp, partition=partition, actor=self.config.user)
        self.backend.fire("create", after_write=True)
        return self._written(ref)

    def update(
        self, ref: str, changes: Mapping[str, Any], *, expected_version: str | None
    ) -> RemoteRecord:
        """As the protocol says; a record deleted meanwhile is StaleVersion with actual None."""
        self.backend.fire("update")
        try:
            self.backend.edit(
                ref, changes, actor=self.config.user, expected_version=expected_version
            )
        except KeyError:
            raise StaleVersion(ref, expected_version, None, connector=self.name) from None
        except StaleVersion as exc:
            raise StaleVersion(ref, exc.expected, exc.actual, connector=self.name) from None
        except SkippableRecord as exc:
            raise self._skip(ref, exc.reason, exc.payload) from None
        self.backend.fire("update", after_write=True)
        return self._written(ref)

    def archive(self, ref: str) -> None:
        """Delete the record (idempotent: a deleted or unknown ref is left alone)."""
        self.backend.fire("archive")
        self.backend.delete(ref, actor=self.config.user)
        self.backend.fire("archive", after_write=True)

    def history(self, ref: str, since: datetime | None = None) -> list[HistoryEntry]:
        """Field changes of the record, oldest first, from ``since`` on (inclusive)."""
        self.backend.fire("history")
        entry = self.backend.entry(ref)
        changes = [] if entry is None else entry.get("history", [])
        found = [
            HistoryEntry(
                datetime.fromisoformat(h["at"]), h["field"], h["old"], h["new"], h["actor"]
            )
            for h in changes
        ]
        return [h for h in found if since is None or h.at >= _aware(since, "since")]

    # -- helpers

    def _read(self, ref: str) -> RemoteRecord | None:
        entry = self.backend.entry(ref)
        record = None if entry is None else self._record(ref, entry)
        return None if record is None or record.deleted else record

    def _written(self, ref: str) -> RemoteRecord:
        record = self._read(ref)
        if record is None:
            raise FatalError(
                f"record {ref} vanished right after it was written", connector=self.name
            )
        return record

    def _skip(self, ref: str, reason: str, payload: object) -> SkippableRecord:
        return SkippableRecord(ref, reason, connector=self.name, payload=payload)

    def _record(self, ref: str, entry: Entry) -> RemoteRecord:
        """The entry as the protocol presents it; SkippableRecord if what users wrote in it
        (fields, stamp) is malformed. The rest is the backend's own bookkeeping."""
        fields, stamp, deleted = entry.get("fields"), entry.get("stamp"), entry["deleted"]
        if deleted and not isinstance(fields, dict):
            fields = {}
        if not (isinstance(fields, dict) and all(isinstance(k, str) for k in fields)):
            raise self._skip(ref, "fields are not a mapping of names to values", fields)
        if not isinstance(stamp, str | None):
            raise self._skip(ref, "the stamp is not text", stamp)
        return RemoteRecord(
            ref=ref,
            version=str(entry["version"]),
            fields=fields,
            updated_at=datetime.fromisoformat(entry["updated_at"]),
            updated_by=entry["updated_by"],
            url=f"memory:{ref}",
            stamp=stamp,
            deleted=deleted,
        )


def _position(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return _aware(datetime.fromisoformat(value), "cursor position")
    except ValueError:
        raise FatalError(f"cursor position {value!r} is not a memory connector cursor") from None


def _type_of(value: Any) -> str:
    """The field type a value suggests; "" for None (decided by another record)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "multi"
    if isinstance(value, dict) and "id" in value:
        return "user"
    return "json"
