"""The sync engine: pull, map, merge per field, push; plan first, commit step by step.

One run over the configured connectors:

1. **Pull** every connector concurrently (a bounded thread pool does the network); pages come
   back through a bounded queue and are planned and committed by one thread, so store writes
   are serialised. Each page commits together with its cursor: a crash resumes at the last
   committed page, never past an unread record.
2. **Merge** each record's mapped fields three-way against the stored base (``merge.py``).
   Records equal to the base are echoes of our own writes or unchanged: no-ops.
3. **Vanished records** unlink and tombstone, unless more than the breaker's share vanish at
   once: then the connector stops with an alert until ``--force``.
4. **Push** every linked project whose hub values differ from the tool's base, and create
   projects in tools whose mapping asks for it (stamp first, search before create).

The engine knows no tool: connectors and mapping specs are handed to it.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import queue
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from bridge.errors import (
    AuthError,
    BreakerTripped,
    ConnectorError,
    FatalError,
    RetriableError,
    SkippableRecord,
    StaleVersion,
)
from bridge.mapping import MappingSpec
from bridge.model import SalesProject, get_path, new_project_id, path_adapter, set_path
from bridge.store import Store
from bridge.store.store import Event, EventRow, NewLink, StoredLink
from bridge.sync.merge import NO_BASE, Decision, Policy, merge_field
from bridge.sync.plan import KEEP_STEPS, Action, Change, Plan, Step
from connectors.base import Connector, ConnectorConfig, Cursor, Page, RemoteRecord

log = logging.getLogger("salesbridge.sync")

Progress = Callable[[str, str, int], None]
"""progress(connector, phase, count): called as pages and pushes complete."""

_DONE = object()

GC_YOUNG_THRESHOLD = 20_000
"""The collector's young-generation threshold while a run is in progress (CPython's default
is 700); see :func:`_fewer_collections`."""

_gc_lock = threading.Lock()
_gc_runs = 0
_gc_saved: tuple[int, ...] | None = None


@contextlib.contextmanager
def _fewer_collections() -> Iterator[None]:
    """Raise the cyclic collector's young threshold for the duration of a run.

    A page's objects (hundreds of projects' JSON, steps, rows) live while the page is planned
    and written, i.e. across many young collections, so they are promoted; with CPython's
    default thresholds that schedules a *full* collection every few pages, and a full
    collection walks the whole process heap, not just the page. Measured on the engine
    benchmark (10,000 records) that was about a quarter of a sync's time. With a larger young
    threshold the young generation holds a page's worth, and full collections become rare.
    Nothing is switched off: the collector still runs, only less often, and the previous
    thresholds come back when the last concurrent run ends. A process that disabled the
    collector (threshold 0) or set a larger one is left alone.
    """
    global _gc_runs, _gc_saved
    with _gc_lock:
        if _gc_runs == 0:
            current = gc.get_threshold()
            if 0 < current[0] < GC_YOUNG_THRESHOLD:
                _gc_saved = current
                gc.set_threshold(GC_YOUNG_THRESHOLD, *current[1:])
        _gc_runs += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_runs -= 1
            if _gc_runs == 0 and _gc_saved is not None:
                gc.set_threshold(*_gc_saved)
                _gc_saved = None


@dataclass
class ConnectorReport:
    status: str = "ok"
    error: str | None = None
    counts: Counter[str] = field(default_factory=Counter)


@dataclass
class SyncReport:
    dry_run: bool
    plan: Plan = field(default_factory=Plan)
    connectors: dict[str, ConnectorReport] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(r.status == "ok" for r in self.connectors.values())


class _Overlay:
    """Hub state as the plan so far would leave it; the store underneath is not touched.

    A real run executes each step as it is planned, so its overlay stays empty; a dry run
    records the steps here, so later planning (pushes) sees what the pulls would have done.
    """

    def __init__(self) -> None:
        self.projects: dict[str, dict[str, Any]] = {}
        self.bases: dict[tuple[str, str], dict[str, Any]] = {}
        self.links: dict[tuple[str, str], StoredLink | None] = {}


@dataclass
class _PageReads:
    """Store reads for one pulled page, made in a few batched queries before it is planned.

    Nothing is written while a page is planned (its steps execute after), so these equal what
    per-record reads would return. Keys absent here fall through to the store.
    """

    connector: str
    links: dict[str, StoredLink | None] = field(default_factory=dict)
    projects: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    bases: dict[str, dict[str, Any]] = field(default_factory=dict)
    pending: dict[str, set[str]] | None = None


class SyncEngine:
    """Runs sync cycles over the given connectors against one store."""

    def __init__(
        self,
        store: Store,
        connectors: Mapping[str, Connector[ConnectorConfig]],
        mappings: Mapping[str, MappingSpec],
        *,
        policy: Policy = "newest_wins",
        breaker_threshold: float = 0.2,
        max_workers: int = 4,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        missing = set(connectors) - set(mappings)
        if missing:
            raise ValueError(f"no mapping for connector(s): {', '.join(sorted(missing))}")
        self.store = store
        self.connectors = dict(connectors)
        self.mappings = dict(mappings)
        self.policy = policy
        self.breaker_threshold = breaker_threshold
        self.max_workers = max_workers
        self.clock = clock
        owners: dict[str, str] = {}
        for name, spec in self.mappings.items():
            for path in spec.owned_paths:
                owners.setdefault(path, name)
        self.owners = owners
        self._lock = threading.Lock()
        # Per tool, the store's push generation when its last planning found nothing to push
        # (with the mapping it used): while the generation stands, planning is skipped.
        self._nothing_to_push: dict[str, tuple[int, MappingSpec]] = {}

    # ------------------------------------------------------------------ public

    def run(
        self,
        only: Iterable[str] | None = None,
        *,
        dry_run: bool = False,
        force: bool = False,
        full: bool = False,
        progress: Progress | None = None,
        push_to: Iterable[str] | None = None,
        should_stop: Callable[[], bool] | None = None,
        keep_steps: bool | None = None,
    ) -> SyncReport:
        """One sync run.

        ``only`` names the connectors pulled (default: all); ``push_to`` those pushed to
        (default: the same), so a webhook for one tool can pull it alone and still carry its
        change to every other. ``full`` takes a census (reconciliation) instead of an
        incremental pull. ``should_stop`` is polled between pages and pushes: when it turns
        true the run finishes the step at hand, commits and returns (clean shutdown).

        ``keep_steps`` (default: only in a dry run) keeps every planned step, with its payload,
        in ``report.plan``; otherwise the plan keeps counts and the first
        :data:`~bridge.sync.plan.KEEP_STEPS` visible steps, so a run's memory does not grow
        with the number of records it syncs.
        """
        names = list(only) if only is not None else list(self.connectors)
        targets = list(push_to) if push_to is not None else names
        for n in [*names, *targets]:
            if n not in self.connectors:
                raise KeyError(n)
        keep_all = dry_run if keep_steps is None else keep_steps
        report = SyncReport(dry_run=dry_run, plan=Plan(keep=None if keep_all else KEEP_STEPS))
        ctx = _RunContext(self, report, dry_run, force, full, progress or (lambda *_: None))
        ctx.should_stop = should_stop or (lambda: False)
        for n in dict.fromkeys([*names, *targets]):
            report.connectors[n] = ConnectorReport()
        run_ids: dict[str, int] = {}
        if not dry_run:  # one transaction for every connector's run row
            with self.store.transaction():
                run_ids = {n: self.store.start_run(n) for n in report.connectors}
        ctx.run_ids = run_ids
        try:
            with _fewer_collections():
                ctx.pull_all(names)
                ctx.push_all(targets)
        except BaseException as exc:  # the run dies: its history must not say "ok"
            for r in report.connectors.values():
                if r.status == "ok":
                    r.status, r.error = "failed", f"interrupted: {type(exc).__name__}: {exc}"
            raise
        finally:
            if run_ids:  # one transaction for all: each costs a commit, serialised
                with self.store.transaction():
                    for n, rid in run_ids.items():
                        r = report.connectors[n]
                        self.store.finish_run(rid, r.status, dict(r.counts), r.error)  # type: ignore[arg-type]
        return report

    def resolve_conflict(
        self, conflict_id: int, take: str, value: Any = None, by: str = "ops"
    ) -> None:
        """Settle a pending conflict: ``take`` is ``hub``, ``remote`` or ``value``."""
        c = self.store.get_conflict(conflict_id)
        if not c.pending:
            raise ValueError(f"conflict {conflict_id} is already resolved ({c.resolution})")
        chosen = {"hub": c.hub_value, "remote": c.remote_value}.get(take, value)
        now = self.clock()
        with self.store.transaction():
            project = self.store.get_project(c.project_id)
            if project is not None:
                old = get_path(project, c.field)
                if old != chosen:
                    set_path(project, c.field, chosen)
                    project["updated_at"] = now.isoformat()
                    self.store.put_project(SalesProject.model_validate(project))
                    self.store.append_events(
                        [
                            Event(
                                project_id=c.project_id,
                                at=now,
                                field=c.field,
                                old=old,
                                new=chosen,
                                source="review",
                                meaningful=False,
                                actor=by,
                            )
                        ]
                    )
                if take == "remote":
                    self.store.set_bases(c.project_id, c.connector, {c.field: chosen})
            self.store.resolve_conflict(conflict_id, take, chosen, by=by)  # type: ignore[arg-type]


class _RunContext:
    """State of one run: the overlay, counters and the steps planned so far."""

    def __init__(
        self,
        engine: SyncEngine,
        report: SyncReport,
        dry_run: bool,
        force: bool,
        full: bool,
        progress: Progress,
    ) -> None:
        self.e = engine
        self.store = engine.store
        self.report = report
        self.dry_run = dry_run
        self.force = force
        self.full = full
        self.progress = progress
        self.overlay = _Overlay()
        self.run_ids: dict[str, int] = {}
        self.signpost = engine.clock()
        self.pull_failed: set[str] = set()
        # A cursor past a vanished record is saved only once that record is unlinked: a
        # breaker trip or a crash before then must see the record vanish again next run.
        self.held_cursor: dict[str, Cursor] = {}
        # The cursor the store holds for each connector, as read or last saved by this run: a
        # page with nothing to write and this very cursor needs no transaction.
        self.stored_cursor: dict[str, Cursor] = {}
        self.should_stop: Callable[[], bool] = lambda: False
        self.page: _PageReads | None = None

    # ------------------------------------------------------------------ reads through overlay

    def project(self, pid: str) -> dict[str, Any] | None:
        if pid in self.overlay.projects:
            return self.overlay.projects[pid]
        if self.page is not None and pid in self.page.projects:
            return self.page.projects[pid]
        return self.store.get_project(pid, include_tombstoned=False)

    def bases(self, pid: str, connector: str) -> dict[str, Any]:
        key = (pid, connector)
        if key in self.overlay.bases:
            return self.overlay.bases[key]
        page = self.page
        if page is not None and page.connector == connector and pid in page.bases:
            return page.bases[pid]
        return self.store.get_bases(pid, connector)

    def link(self, connector: str, ref: str) -> StoredLink | None:
        key = (connector, ref)
        if key in self.overlay.links:
            return self.overlay.links[key]
        page = self.page
        if page is not None and page.connector == connector and ref in page.links:
            return page.links[ref]
        return self.store.get_link(connector, ref)

    def _holds_another(self, connector: str, pid: str, ref: str) -> bool:
        """Whether the project has a live record in ``connector`` other than ``ref``."""
        planned = [
            lk
            for (conn, r), lk in self.overlay.links.items()
            if conn == connector and r != ref and lk is not None and lk.project_id == pid
        ]
        stored = [
            lk
            for lk in self.store.links_for_project(pid)
            if lk.connector == connector
            and lk.ref != ref
            and self.overlay.links.get((connector, lk.ref), lk) is not None
        ]
        return bool(planned or stored)

    def pending_fields(self, pid: str, connector: str) -> set[str]:
        page = self.page
        if page is not None and page.connector == connector and page.pending is not None:
            return set(page.pending.get(pid, ()))
        return {
            c.field for c in self.store.list_conflicts(True, project_id=pid, connector=connector)
        }

    def _read_page(self, name: str, page: Page) -> _PageReads:
        """Links, projects, bases and pending conflicts of a page's records, batched."""
        reads = _PageReads(name)
        refs = [r.ref for r in page.records if (name, r.ref) not in self.overlay.links]
        if refs:
            found = self.store.get_links(name, refs)
            reads.links = {ref: found.get(ref) for ref in refs}
        linked: set[str] = set()
        wanted: set[str] = set()
        for rec in page.records:
            if rec.deleted:
                continue
            key = (name, rec.ref)
            lk = self.overlay.links[key] if key in self.overlay.links else reads.links[rec.ref]
            if lk is not None and lk.live:
                if not self.full and lk.version == rec.version:
                    continue  # unchanged: nothing more is read for it
                linked.add(lk.project_id)
                wanted.add(lk.project_id)
            elif rec.stamp:
                wanted.add(rec.stamp)
        ids = [pid for pid in wanted if pid not in self.overlay.projects]
        if ids:
            got = self.store.get_projects(ids, include_tombstoned=False)
            reads.projects = {pid: got.get(pid) for pid in ids}
        ids = [pid for pid in linked if (pid, name) not in self.overlay.bases]
        if ids:
            got_bases = self.store.get_bases_many(name, ids)
            reads.bases = {pid: got_bases.get(pid, {}) for pid in ids}
        if wanted:
            reads.pending = self.store.pending_conflict_fields(name, wanted)
        return reads

    # ------------------------------------------------------------------ pull

    def pull_all(self, names: list[str]) -> None:
        pages: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=2 * max(1, len(names)))
        cursors = self.store.get_cursors(names)
        self.stored_cursor.update(cursors)

        stop = threading.Event()

        def put(item: tuple[str, Any]) -> bool:
            # If the consumer dies (a crash, an unexpected error) nobody drains the queue:
            # a plain put() would block the worker, and the pool's shutdown, forever.
            while not stop.is_set():
                try:
                    pages.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False

        def worker(name: str) -> None:
            conn = self.e.connectors[name]
            try:
                for page in conn.pull(cursors[name], signpost=self.signpost, full=self.full):
                    if not put((name, page)):
                        return
                put((name, _DONE))
            except BaseException as exc:  # handed to the consumer, which decides
                put((name, exc))

        seen: dict[str, set[str]] = {n: set() for n in names}
        vanished: dict[str, list[StoredLink]] = {n: [] for n in names}
        open_workers = len(names)
        with ThreadPoolExecutor(max_workers=min(self.e.max_workers, max(1, len(names)))) as pool:
            for n in names:
                pool.submit(worker, n)
            try:
                while open_workers:
                    name, item = pages.get()
                    if item is _DONE or isinstance(item, BaseException):
                        open_workers -= 1
                        if isinstance(item, BaseException):
                            self._pull_error(name, item)
                        else:
                            self._finish_pull(name, seen[name], vanished[name])
                        continue
                    if name in self.pull_failed:
                        continue
                    if self.should_stop():
                        self._stop_all("pull")
                        break
                    try:
                        self._apply_page(name, item, seen[name], vanished[name])
                    except ConnectorError as exc:
                        self._pull_error(name, exc)
                    self.progress(name, "pull", len(item.records))
            finally:
                stop.set()

    def _stop_all(self, phase: str) -> None:
        """Asked to stop: what is committed stays; nothing more is pulled or pushed."""
        for name, r in self.report.connectors.items():
            self.pull_failed.add(name)
            if r.status == "ok":
                r.status, r.error = "stopped", f"stopped during {phase}; resumes next run"

    def _pull_error(self, name: str, exc: BaseException) -> None:
        self.pull_failed.add(name)
        r = self.report.connectors[name]
        if isinstance(exc, BreakerTripped):
            r.status, r.error = "breaker", str(exc)
        elif isinstance(exc, ConnectorError):
            r.status, r.error = "failed", f"pull: {exc}"
        else:
            log.exception("%s: unexpected error while pulling", name, exc_info=exc)
            r.status, r.error = "failed", f"pull: unexpected {type(exc).__name__}: {exc}"
        log.warning("%s: %s", name, r.error)

    def _apply_page(
        self, name: str, page: Page, seen: set[str], vanished: list[StoredLink]
    ) -> None:
        spec = self.e.mappings[name]
        steps: list[Step] = []
        for bad in page.skipped:
            steps.append(self._quarantine_step(name, bad))
        self.page = self._read_page(name, page)
        try:
            self._plan_page(name, page, spec, steps, seen, vanished)
            reads = self.page
        finally:
            self.page = None
        self.report.plan.extend(steps)
        self._execute_pull_steps(name, steps, page, hold=bool(vanished), reads=reads)

    def _plan_page(
        self,
        name: str,
        page: Page,
        spec: MappingSpec,
        steps: list[Step],
        seen: set[str],
        vanished: list[StoredLink],
    ) -> None:
        counts = self.report.connectors[name].counts
        for rec in page.records:
            seen.add(rec.ref)
            counts["pulled"] += 1
            link = self.link(name, rec.ref)
            live = link is not None and link.live
            if rec.deleted:
                if live:
                    assert link is not None
                    vanished.append(link)
                continue
            if live and not self.full and link is not None and link.version == rec.version:
                counts["unchanged"] += 1
                continue
            if link is not None and not live and link.version == rec.version:
                # The very revision we unlinked (a read from before its archiving, within
                # this run): not a record coming back. A new revision does come back.
                counts["unchanged"] += 1
                continue
            try:
                values = spec.to_canonical(rec)
            except SkippableRecord as exc:
                steps.append(self._quarantine_step(name, exc))
                continue
            # A record that comes back after being unlinked (taken out of the archive) returns
            # to the project it left, not to a new one: that would be a second copy of the
            # project, and other tools would get second records of it.
            revive = link.project_id if link is not None and not live else None
            step = self._plan_record(name, rec, values, link if live else None, revive=revive)
            if step is not None:
                steps.append(step)

    def _quarantine_step(self, name: str, exc: SkippableRecord) -> Step:
        self.report.connectors[name].counts["quarantined"] += 1
        return Step(
            "quarantine",
            name,
            "hub",
            exc.ref,
            None,
            reason=exc.reason,
            remote_fields={"payload": exc.payload},
        )

    def _plan_record(
        self,
        name: str,
        rec: RemoteRecord,
        values: dict[str, Any],
        link: StoredLink | None,
        *,
        revive: str | None = None,
    ) -> Step | None:
        counts = self.report.connectors[name].counts
        when = rec.updated_at or self.signpost
        if link is None:
            stamped = self.project(rec.stamp) if rec.stamp else None
            bases = {}
            if stamped is None and revive is not None:
                stamped = self.project(revive)
                if stamped is None:  # tombstoned: it comes back under its own id
                    return self._plan_new_project(name, rec, values, pid=revive)
                if self._holds_another(name, revive, rec.ref):
                    stamped = None  # the project has another record here now: keep both
                else:  # what both sides agreed on when it left: a three-way merge again
                    bases = self.bases(revive, name)
            if stamped is None:
                return self._plan_new_project(name, rec, values)
            pid, hub = stamped["id"], stamped
            action: Action = "link"
        else:
            pid = link.project_id
            hub_or_none = self.project(pid)
            if hub_or_none is None:  # tombstoned project: the record comes back to life
                return self._plan_new_project(name, rec, values, pid=pid)
            hub, bases, action = hub_or_none, self.bases(pid, name), "update_project"
        pending = self.pending_fields(pid, name)
        pushed = self.e.mappings[name].pushed_paths
        # Copy on write: only the dicts on the path of a changed field are copied, never the
        # whole project (a deep copy cost more than the merge itself).
        new = dict(hub)
        copied: set[str] = set()
        changes: list[Change] = []
        conflicts: list[Decision] = []
        agreed: dict[str, Any] = {}
        # Source time of the hub's last human change: newest_wins compares tools' own clocks.
        hub_time = _parse_time(hub.get("last_meaningful_update_at"))
        policy = self._policy(name)
        for path, remote in values.items():
            if path in pending:
                continue  # waiting for a person to decide; do not raise it again
            current = get_path(hub, path)
            d = merge_field(
                path,
                current,
                remote,
                bases.get(path, NO_BASE),
                connector=name,
                owner=self.e.owners.get(path),
                policy=policy,
                remote_time=rec.updated_at,
                hub_time=hub_time,
            )
            if d.outcome == "conflict":
                conflicts.append(d)
            if d.value != current:
                _set_path_cow(new, path, d.value, copied)
                why = f"changed in {name}" if d.outcome == "take_remote" else f"conflict: {d.how}"
                changes.append(Change(path, current, d.value, why))
            if d.value == remote or path not in pushed:
                # The base is what this tool last said. For a field we never write back to
                # it, that is the tool's value even when the hub kept another: the same value
                # read again is then no news and raises no conflict again.
                agreed[path] = remote
        history = self._history(name, pid, rec, link)
        if not changes and history:
            self._stage_time(new, changes, history, when)  # history alone can date a move
        if changes:
            self._touch(new, changes, rec, when, history)
            try:
                # The stored JSON form: merges compare it with what tools read back.
                new = _stored_form(new, [c.path for c in changes], hub)
            except ValidationError as exc:
                reason = f"mapped values are invalid: {_brief(exc)}"
                return self._quarantine_step(
                    name, SkippableRecord(rec.ref, reason, payload=dict(rec.fields))
                )
            counts["updated"] += 1
        counts["conflicts"] += len(conflicts)
        return Step(
            action,
            name,
            "hub",
            rec.ref,
            pid,
            changes,
            reason=f"pulled from {name}",
            record=rec,
            project=new,
            bases=agreed,
            conflicts=conflicts,
            history=history,
        )

    def _plan_new_project(
        self, name: str, rec: RemoteRecord, values: dict[str, Any], pid: str | None = None
    ) -> Step:
        data: dict[str, Any] = {"id": pid or new_project_id()}
        for path, v in values.items():
            if v is not None:
                set_path(data, path, v)
        when = rec.updated_at or self.signpost
        data.setdefault("created_at", when.isoformat())
        changes = [
            Change(p, None, v, f"new record in {name}") for p, v in values.items() if v is not None
        ]
        history = self._history(name, data["id"], rec, None)
        self._touch(data, changes, rec, when, history)
        try:
            project = _stored_form(data, values, None)
        except ValidationError as exc:
            return self._quarantine_step(
                name,
                SkippableRecord(
                    rec.ref, f"cannot become a project: {_brief(exc)}", payload=dict(rec.fields)
                ),
            )
        self.report.connectors[name].counts["created"] += 1
        return Step(
            "create_project",
            name,
            "hub",
            rec.ref,
            project["id"],
            changes,
            reason=f"new record in {name}",
            record=rec,
            project=project,
            bases=dict(values),
            history=history,
        )

    def _touch(
        self,
        data: dict[str, Any],
        changes: list[Change],
        rec: RemoteRecord,
        when: datetime,
        history: list[Event] = (),  # type: ignore[assignment]
    ) -> None:
        """Freshness and stage bookkeeping for a hub change that came from a person.

        ``stage_entered_at`` comes from the tool's own history when it has one (the real time of
        the move, even between two polls), else from the record's modification time; a mapping
        that maps ``stage_entered_at`` itself wins over both.
        """
        data["updated_at"] = self.signpost.isoformat()
        data["last_meaningful_update_at"] = when.isoformat()
        data["last_meaningful_update_by"] = rec.updated_by
        self._stage_time(data, changes, history, when)

    @staticmethod
    def _stage_time(
        data: dict[str, Any], changes: list[Change], history: list[Event], when: datetime
    ) -> None:
        if any(c.path == "stage_entered_at" for c in changes):
            return
        moves = [e.at for e in history if e.field == "stage" and e.new == data.get("stage")]
        if moves:
            data["stage_entered_at"] = max(moves).isoformat()
        elif any(c.path == "stage" for c in changes):
            data["stage_entered_at"] = when.isoformat()

    def _history(
        self, name: str, pid: str, rec: RemoteRecord, link: StoredLink | None
    ) -> list[Event]:
        """The tool's own change history, mapped to canonical fields, not yet in the log.

        Entries older than the link's last sync were read before; a crash before that sync
        committed replays them, so what the log already holds is dropped too.
        """
        if not rec.history:
            return []
        spec = self.e.mappings[name]
        since = link.updated_at if link is not None else None
        out: list[Event] = []
        for h in rec.history:
            if since is not None and h.at <= since:
                continue
            path, new = spec.history_value(h.field, h.new)
            if path is None:
                continue
            _, old = spec.history_value(h.field, h.old)
            out.append(
                Event(
                    project_id=pid,
                    at=h.at,
                    field=path,
                    old=old,
                    new=new,
                    source=name,
                    meaningful=True,
                    actor=h.actor,
                )
            )
        if out and link is not None:
            known = {
                (e.field, e.at, repr(e.new))
                for e in self.store.events_for(pid, since=min(e.at for e in out))
            }
            out = [e for e in out if (e.field, e.at, repr(e.new)) not in known]
        return out

    def _policy(self, name: str) -> Policy:
        return self.e.mappings[name].sync.conflict_policy or self.e.policy

    def _execute_pull_steps(
        self,
        name: str,
        steps: list[Step],
        page: Page,
        *,
        hold: bool = False,
        reads: _PageReads | None = None,
    ) -> None:
        if hold and page.cursor is not None:
            self.held_cursor[name] = page.cursor
        if self.dry_run:
            for s in steps:
                self._overlay_step(name, s)
            return
        rid = self.run_ids.get(name)
        cursor = None if hold else page.cursor
        if cursor is not None and cursor == self.stored_cursor.get(name):
            cursor = None  # already stored (an idle pull's one page): not written again
        if not steps and cursor is None:
            return  # nothing to commit
        with self.store.transaction():
            if reads is not None and self._batchable(steps):
                self._store_steps(name, steps, rid, reads)
            else:
                for s in steps:
                    self._store_step(name, s, rid)
            if cursor is not None:
                self.store.save_cursor(name, cursor)
        if cursor is not None:
            self.stored_cursor[name] = cursor

    @staticmethod
    def _batchable(steps: list[Step]) -> bool:
        """A page's steps can be written kind by kind (a few statements for the whole page)
        unless a quarantined ref also synced in it, where the order of the two matters."""
        quarantined = {s.ref for s in steps if s.action == "quarantine"}
        return not quarantined or all(
            s.ref not in quarantined for s in steps if s.action != "quarantine"
        )

    def _store_steps(
        self, name: str, steps: list[Step], rid: int | None, reads: _PageReads
    ) -> None:
        """What :meth:`_store_step` writes for each step, in one batch per kind of write.

        Inside the page's transaction the outcome is the same as step by step: projects,
        then events (in step order), links, version updates, bases (merged in step order),
        conflicts and resolved quarantine entries. Bases the page read are merged here and
        written whole; only the others are read again to merge them.
        """
        st = self.store
        links = reads.links
        projects: list[dict[str, Any]] = []
        events: list[EventRow] = []
        new_links: list[NewLink] = []
        seen: dict[str, tuple[str | None, str | None]] = {}  # ref -> (version, url), last wins
        bases: dict[str, dict[str, Any]] = {}
        synced: list[str] = []
        for s in steps:
            if s.action == "quarantine":
                st.quarantine(name, s.ref or "?", s.reason, s.remote_fields.get("payload"))
                continue
            assert s.project is not None and s.project_id is not None and s.record is not None
            rec = s.record
            if s.changes or s.action == "create_project" or s.history:
                projects.append(s.project)
                events += self._step_event_rows(name, s, rid)
            if s.action in ("create_project", "link"):
                new_links.append(NewLink(s.project_id, name, rec.ref, rec.version, rec.url))
            else:
                seen[rec.ref] = (rec.version, rec.url)
            if s.bases:
                bases.setdefault(s.project_id, {}).update(s.bases)
            synced.append(rec.ref)
        st.put_projects(projects)
        st.append_event_rows(events)
        st.link_many(new_links)
        versions: dict[str, str | None] = {}
        for ref, (version, url) in seen.items():
            known = links.get(ref)
            if known is not None and known.url == url:
                versions[ref] = version
            else:  # the URL changed: written on its own
                st.update_link_version(name, ref, version, url)
        st.update_link_versions(name, versions)
        # Projects created with a new id have no bases yet: nothing to read and merge either.
        fresh = {
            s.project_id
            for s in steps
            if s.action == "create_project" and s.project_id not in reads.bases
        }
        whole = {
            pid: {**reads.bases.get(pid, {}), **b}
            for pid, b in bases.items()
            if pid in reads.bases or pid in fresh
        }
        st.set_bases_many(name, whole, replace=True)
        st.set_bases_many(name, {pid: b for pid, b in bases.items() if pid not in whole})
        for s in steps:
            for d in s.conflicts:
                assert s.project_id is not None
                cid = st.add_conflict(
                    s.project_id, name, d.path, hub=d.hub, remote=d.remote, base=d.base,
                    policy=d.how,
                )  # fmt: skip
                if d.winner is not None:
                    st.resolve_conflict(cid, d.winner, d.value, by="policy")
        if synced:
            st.resolve_quarantined(name, synced)

    def _step_events(self, name: str, s: Step, rid: int | None) -> list[Event]:
        """The events one pulled step appends: the tool's own history, then the changes its
        history did not already say (those carry the record's modification time)."""
        return [
            Event(
                project_id=pid,
                at=at,
                actor=actor,
                source=source,
                field=path,
                old=old,
                new=new,
                meaningful=meaningful,
                run_id=run,
            )
            for pid, at, actor, source, path, old, new, meaningful, run in self._step_event_rows(
                name, s, rid
            )
        ]

    def _step_event_rows(self, name: str, s: Step, rid: int | None) -> list[EventRow]:
        """:meth:`_step_events` as :data:`~bridge.store.store.EventRow` tuples, the form a
        page's events are written in (no Event object per changed field)."""
        assert s.project_id is not None and s.record is not None
        rec = s.record
        pid = s.project_id
        out: list[EventRow] = [
            (pid, e.at, e.actor, e.source, e.field, e.old, e.new, True, rid) for e in s.history
        ]
        at = rec.updated_at or self.signpost
        actor = rec.updated_by
        if out:
            covered = {e.field for e in s.history}
            out += [
                (pid, at, actor, name, c.path, c.old, c.new, True, rid)
                for c in s.changes
                if c.path not in covered  # the tool's history said it, with the real time
            ]
        else:
            out = [(pid, at, actor, name, c.path, c.old, c.new, True, rid) for c in s.changes]
        return out

    def _overlay_step(self, name: str, s: Step) -> None:
        if s.action == "quarantine" or s.project is None or s.project_id is None:
            return
        self.overlay.projects[s.project_id] = s.project
        key = (s.project_id, name)
        self.overlay.bases[key] = {**self.bases(s.project_id, name), **s.bases}
        if s.ref is not None and s.record is not None:
            now = self.signpost
            self.overlay.links[(name, s.ref)] = StoredLink(
                project_id=s.project_id,
                connector=name,
                ref=s.ref,
                version=s.record.version,
                url=s.record.url,
                created_at=now,
                updated_at=now,
                unlinked_at=None,
            )

    def _store_step(self, name: str, s: Step, rid: int | None) -> None:
        st = self.store
        if s.action == "quarantine":
            st.quarantine(name, s.ref or "?", s.reason, s.remote_fields.get("payload"))
            return
        assert s.project is not None and s.project_id is not None and s.record is not None
        rec = s.record
        if s.changes or s.action == "create_project" or s.history:
            st.put_project(s.project)
            st.append_events(self._step_events(name, s, rid))
        if s.action in ("create_project", "link"):
            st.link(s.project_id, name, rec.ref, rec.version, rec.url)
        else:
            st.update_link_version(name, rec.ref, rec.version, rec.url)
        if s.bases:
            st.set_bases(s.project_id, name, s.bases)
        for d in s.conflicts:
            cid = st.add_conflict(
                s.project_id, name, d.path, hub=d.hub, remote=d.remote, base=d.base, policy=d.how
            )
            if d.winner is not None:
                st.resolve_conflict(cid, d.winner, d.value, by="policy")
        st.resolve_quarantined(name, [rec.ref])

    def _finish_pull(self, name: str, seen: set[str], vanished: list[StoredLink]) -> None:
        if name in self.pull_failed:
            return
        if self.full:
            known = {lk.ref for lk in vanished}
            vanished.extend(
                lk
                for lk in self.store.links_for_connector(name)
                if lk.ref not in seen and lk.ref not in known
            )
        if not vanished:
            self._release_cursor(name)
            return
        linked = self.store.count_links(name)
        limit = max(1.0, self.e.breaker_threshold * linked)
        if len(vanished) > limit and not self.force:
            exc = BreakerTripped(name, len(vanished), linked, self.e.breaker_threshold)
            if not self.dry_run:
                self.store.add_alert(name, "breaker", str(exc))
            self._pull_error(name, exc)
            return
        for lk in vanished:
            step = Step(
                "unlink",
                name,
                "hub",
                lk.ref,
                lk.project_id,
                reason=f"record vanished or archived in {name}",
            )
            self.report.plan.add(step)
            self.report.connectors[name].counts["unlinked"] += 1
            if self.dry_run:
                self.overlay.links[(name, lk.ref)] = None
                self._delete_elsewhere(name, lk.project_id)
                continue
            with self.store.transaction():
                self.store.unlink(name, lk.ref)
            self._delete_elsewhere(name, lk.project_id)
            with self.store.transaction():
                if not self.store.links_for_project(lk.project_id):
                    self.store.tombstone_project(lk.project_id)
        self._release_cursor(name)
        if not self.dry_run and self.force:
            self.store.clear_alerts(name, "breaker")

    def _delete_elsewhere(self, source: str, pid: str) -> None:
        """Archive the project's records in tools whose mapping opts in (``delete_in_tool``).

        Off by default: a record vanishing in one tool is a reason to stop syncing it, not to
        destroy data in another. A tool that refuses keeps its link; the next run retries.
        """
        for other in self.store.links_for_project(pid):
            spec = self.e.mappings.get(other.connector)
            if other.connector == source or spec is None or not spec.sync.delete_in_tool:
                continue
            try:
                if not self.dry_run:
                    self.e.connectors[other.connector].archive(other.ref)
            except ConnectorError as exc:
                log.warning("%s: could not archive %s: %s", other.connector, other.ref, exc)
                continue
            self.report.connectors.setdefault(other.connector, ConnectorReport())
            self.report.connectors[other.connector].counts["archived"] += 1
            self.report.plan.add(
                Step(
                    "unlink",
                    other.connector,
                    other.connector,
                    other.ref,
                    pid,
                    reason=f"archived: the record vanished in {source} (delete_in_tool)",
                )
            )
            if self.dry_run:
                self.overlay.links[(other.connector, other.ref)] = None
                continue
            with self.store.transaction():
                self.store.unlink(other.connector, other.ref)

    def _release_cursor(self, name: str) -> None:
        held = self.held_cursor.pop(name, None)
        if held is not None and not self.dry_run and held != self.stored_cursor.get(name):
            self.store.save_cursor(name, held)
            self.stored_cursor[name] = held

    # ------------------------------------------------------------------ push

    def push_all(self, names: list[str]) -> None:
        """Plan every push on this thread (store reads only), then write to the tools
        concurrently, one worker per tool; the workers' store writes take the engine lock."""
        targets = [n for n in names if n not in self.pull_failed]
        if not targets or self.should_stop():
            return
        # Read before planning: a write that lands during planning moves it past this value,
        # so the next cycle plans again.
        generation = None if self.dry_run else self.store.push_generation()
        quiet = self.e._nothing_to_push
        plans: dict[str, list[Step]] = {}
        for n in targets:
            spec = self.e.mappings[n]
            known = quiet.get(n)
            if (
                not self.full
                and generation is not None
                and known is not None
                and known[0] == generation
                and known[1] is spec
            ):
                plans[n] = []  # nothing it reads has changed since it found nothing to do
                continue
            plans[n] = [*self._push_updates(n), *self._push_creates(n)]
            if generation is not None and not plans[n]:
                quiet[n] = (generation, spec)
            else:
                quiet.pop(n, None)
        busy = [n for n in targets if plans[n]]
        try:
            if self.dry_run:
                for n in busy:
                    for step in plans[n]:
                        self._execute_push(n, step)
                return
            if busy:
                with ThreadPoolExecutor(max_workers=min(self.e.max_workers, len(busy))) as pool:
                    for fut in [pool.submit(self._push_one_tool, n, plans[n]) for n in busy]:
                        fut.result()
        finally:
            # Added once executed: a create that found its stamped record is a push_link.
            for steps in plans.values():
                self.report.plan.extend(steps)

    def _push_one_tool(self, name: str, steps: list[Step]) -> None:
        conn = self.e.connectors[name]
        batch = getattr(conn, "update_many", None)
        updates = [s for s in steps if s.action == "push_update"]
        if callable(batch) and len(updates) > 1:
            self._push_batch(name, batch, updates)
            steps = [s for s in steps if s.action != "push_update"]
        for step in steps:
            if self.should_stop():
                self._stop_all("push")
                return
            self._execute_push(name, step)
            self.progress(name, "push", 1)

    def _push_batch(self, name: str, batch: Any, steps: list[Step]) -> None:
        """One call for many updates, where the tool can batch them (Salesforce Collections,
        Asana's batch API, or version reads of many records in one request).

        ``update_many({ref: fields}, {ref: expected version})`` returns, per ref, the record as
        written or the error for that record: StaleVersion where the record's version is no
        longer the expected one (the update is deferred to the next cycle, as for a single
        update). A whole-call failure (auth, network) fails the tool for this run.
        """
        counts = self.report.connectors[name].counts
        r = self.report.connectors[name]
        try:
            results = batch(
                {s.ref: s.remote_fields for s in steps},
                {s.ref: (s.project or {}).get("expected_version") for s in steps},
            )
        except (AuthError, RetriableError) as exc:
            r.status, r.error = "failed", f"push: {exc}"
            log.warning("%s: %s", name, r.error)
            return
        for s in steps:
            assert s.ref is not None and s.project_id is not None
            result = results.get(s.ref)
            with self.e._lock:
                if isinstance(result, RemoteRecord):
                    with self.store.transaction():
                        self.store.set_bases(s.project_id, name, s.bases)
                        self.store.update_link_version(name, s.ref, result.version, result.url)
                    counts["pushed"] += 1
                elif isinstance(result, StaleVersion):
                    counts["deferred"] += 1
                else:
                    counts["rejected"] += 1
                    self.store.quarantine(name, s.ref, f"push rejected: {result}", s.remote_fields)
        self.progress(name, "push", len(steps))

    def _push_updates(self, name: str) -> Iterable[Step]:
        """A push step for every linked project whose hub values differ from the tool's base.

        Links, projects and bases come from the store a chunk at a time (one query per 500
        links), pending conflicts in one query: a few queries per cycle, not three per linked
        project. A dry run's overlay (what its pulls would have written) takes precedence.
        """
        paths = sorted(self.e.mappings[name].pushed_paths)
        if not paths:
            return
        overlay = {ref: lk for (conn, ref), lk in self.overlay.links.items() if conn == name}
        pending = self.store.pending_conflict_fields(name)
        # Only the pushed paths of each project are read (by the database), not its JSON,
        # and only of projects where one of them differs from the base: an idle cycle reads
        # next to nothing. A dry run's overlay is not in the store: it reads them all.
        differing = not (self.overlay.projects or self.overlay.bases)
        for chunk in self.store.linked_projects(name, paths=paths, differing=differing):
            for item in chunk:
                lk = item.link
                if lk.ref in overlay:
                    continue  # planned again below, as the overlay has it
                pid = lk.project_id
                if pid in self.overlay.projects:
                    values = _values(self.overlay.projects[pid], paths)
                elif item.values is None:
                    continue  # tombstoned
                else:
                    values = item.values
                bases = self.overlay.bases.get((pid, name), item.bases)
                step = self._push_update(name, lk, values, bases, pending.get(pid, set()))
                if step is not None:
                    yield step
        for lk_or_none in overlay.values():
            if lk_or_none is None:
                continue
            hub = self.project(lk_or_none.project_id)
            if hub is None:
                continue
            bases = self.bases(lk_or_none.project_id, name)
            step = self._push_update(
                name,
                lk_or_none,
                _values(hub, paths),
                bases,
                pending.get(lk_or_none.project_id, set()),
            )
            if step is not None:
                yield step

    def _push_update(
        self,
        name: str,
        lk: StoredLink,
        values: Mapping[str, Any],
        bases: dict[str, Any],
        pending: set[str],
    ) -> Step | None:
        diffs = self._diffs(name, values, bases, pending)
        if not diffs:
            return None
        try:
            remote = self.e.mappings[name].to_remote(diffs, ref=lk.ref)
        except SkippableRecord as exc:
            return self._quarantine_step(name, exc)
        changes = [Change(p, bases.get(p), v, "changed in hub") for p, v in diffs.items()]
        return Step(
            "push_update",
            name,
            name,
            lk.ref,
            lk.project_id,
            changes,
            reason="hub differs from the tool's base",
            bases=diffs,
            remote_fields=remote,
            record=None,
            project={"expected_version": lk.version},
        )

    def _diffs(
        self, name: str, values: Mapping[str, Any], bases: dict[str, Any], pending: set[str]
    ) -> dict[str, Any]:
        """Pushed paths whose hub value (``values``: path -> value) differs from the base."""
        spec = self.e.mappings[name]
        diffs: dict[str, Any] = {}
        for path in spec.pushed_paths:
            if path in pending:
                continue
            value = values[path]
            if path in bases:
                if bases[path] != value:
                    diffs[path] = value
            elif value is not None:
                diffs[path] = value
        return diffs

    def _push_creates(self, name: str) -> Iterable[Step]:
        spec = self.e.mappings[name]
        if spec.sync.create_in_tool == "never":
            return
        # A project whose record here was deleted or archived is not created again: the
        # deletion was a person's decision in this tool (live links plus dead ones). The
        # store streams only projects that never had a link here; a dry run's overlay adds
        # the links and projects its pulls would have made.
        planned = {
            lk.project_id
            for (conn, _), lk in self.overlay.links.items()
            if conn == name and lk is not None
        }
        seen: set[str] = set()
        for stored in self.store.projects_without_link(name):
            pid = stored["id"]
            seen.add(pid)
            if pid not in planned:
                yield from self._push_create(name, spec, self.overlay.projects.get(pid, stored))
        extra = [pid for pid in self.overlay.projects if pid not in seen and pid not in planned]
        if extra:
            linked = self.store.linked_project_ids(name, extra)
            for pid in extra:
                if pid not in linked:
                    yield from self._push_create(name, spec, self.overlay.projects[pid])

    def _push_create(self, name: str, spec: MappingSpec, hub: dict[str, Any]) -> Iterable[Step]:
        if not spec.sync.wants_create(hub):
            return
        pid = hub["id"]
        values = {p: get_path(hub, p) for p in spec.pushed_paths if get_path(hub, p) is not None}
        try:
            remote = spec.to_remote(values, ref=pid)
        except SkippableRecord as exc:
            yield self._quarantine_step(name, exc)
            return
        yield Step(
            "push_create",
            name,
            name,
            None,
            pid,
            [Change(p, None, v, "create in tool") for p, v in values.items()],
            reason=f"mapping creates projects in {name}",
            bases=values,
            remote_fields=remote,
        )

    def _execute_push(self, name: str, s: Step) -> None:
        counts = self.report.connectors[name].counts
        r = self.report.connectors[name]
        if r.status != "ok":
            return  # the tool failed earlier in this run: leave the rest for the next
        if s.action == "quarantine":
            if not self.dry_run:
                with self.e._lock:
                    self.store.quarantine(
                        name, s.ref or "?", s.reason, s.remote_fields.get("payload")
                    )
            return
        if self.dry_run:
            assert s.project_id is not None
            key = (s.project_id, name)
            self.overlay.bases[key] = {**self.bases(s.project_id, name), **s.bases}
            counts["pushed" if s.action == "push_update" else "push_created"] += 1
            return
        conn = self.e.connectors[name]
        assert s.project_id is not None
        try:
            if s.action == "push_update":
                assert s.ref is not None and s.project is not None
                rec = conn.update(
                    s.ref, s.remote_fields, expected_version=s.project.get("expected_version")
                )
                with self.e._lock, self.store.transaction():
                    self.store.set_bases(s.project_id, name, s.bases)
                    self.store.update_link_version(name, s.ref, rec.version, rec.url)
                counts["pushed"] += 1
            else:
                found = conn.find_by_stamp(s.project_id)
                if found is None:
                    rec = conn.create(s.remote_fields, stamp=s.project_id)
                    counts["push_created"] += 1
                else:
                    # A create whose link was lost (crash): adopt it, push any difference next.
                    s.action = "push_link"
                    rec = found
                    counts["push_linked"] += 1
                with self.e._lock, self.store.transaction():
                    self.store.link(s.project_id, name, rec.ref, rec.version, rec.url)
                    if found is None:
                        self.store.set_bases(s.project_id, name, s.bases)
        except StaleVersion:
            counts["deferred"] += 1  # changed in the tool since the pull; merged next cycle
        except (AuthError, RetriableError) as exc:
            r.status, r.error = "failed", f"push: {exc}"
            log.warning("%s: %s", name, r.error)
        except (FatalError, SkippableRecord) as exc:
            counts["rejected"] += 1
            ref = s.ref or s.project_id
            with self.e._lock:
                self.store.quarantine(name, ref, f"push rejected: {exc}", s.remote_fields)


_FIELDS = SalesProject.model_fields
_FIELD_SET = frozenset(_FIELDS)
_REQUIRED = frozenset(n for n, f in _FIELDS.items() if f.is_required())
_NULLABLE = frozenset(n for n, f in _FIELDS.items() if f.default is None and not f.is_required())
_ENGINE_TIMES = ("created_at", "updated_at", "last_meaningful_update_at", "stage_entered_at")
_DEFAULTS: dict[str, Any] = {
    k: v for k, v in SalesProject(id="-", name="-").to_json().items() if k not in _REQUIRED
}
_EMPTY_LISTS = tuple(k for k, v in _DEFAULTS.items() if v == [])
_EMPTY_DICTS = tuple(k for k, v in _DEFAULTS.items() if v == {})
assert all(v in ([], {}) or not isinstance(v, list | dict) for v in _DEFAULTS.values())
CHECK_STORED_FORM = False
"""Tests set this: every project built without pydantic is compared with pydantic's form."""


def _stored_form(
    data: dict[str, Any], paths: Iterable[str], hub: dict[str, Any] | None
) -> dict[str, Any]:
    """``SalesProject.model_validate(data).to_json()``, skipping pydantic where it can.

    ``data`` is a new project (``hub`` None) or ``hub`` with the values at ``paths``
    replaced; the engine's own bookkeeping fields are ISO datetimes and a name. Values a
    mapping produced are already in their path's JSON form (``to_json_value``) and a stored
    hub is already in the model's, so only the top-level objects that a dotted path wrote
    into are validated (they may lack defaults), the engine's datetimes are written as
    pydantic writes them, and empty values where the model forbids them are left to pydantic.
    Anything unexpected goes through the whole model, which raises ValidationError.
    """
    fast = _fast_form(data, paths, hub)
    if fast is None or CHECK_STORED_FORM:
        slow = SalesProject.model_validate(data).to_json()
        if fast is not None:
            assert fast == slow, (fast, slow)
        return slow
    return fast


def _fast_form(
    data: dict[str, Any], paths: Iterable[str], hub: dict[str, Any] | None
) -> dict[str, Any] | None:
    if hub is None:
        if not data.keys() >= _REQUIRED or not data.keys() <= _FIELD_SET:
            return None
        out = dict(_DEFAULTS)
        for key in _EMPTY_LISTS:
            out[key] = []
        for key in _EMPTY_DICTS:
            out[key] = {}
        out.update(data)
    elif hub.keys() == _FIELD_SET and data.keys() == _FIELD_SET:
        out = data
    else:
        return None
    nested: set[str] = set()
    for path in paths:
        top, dot, _ = path.partition(".")
        if dot:
            nested.add(top)
        elif out[top] is None and top not in _NULLABLE:
            return None
    for top in nested:
        adapter = path_adapter(top)
        try:
            out[top] = adapter.dump_python(adapter.validate_python(out[top]), mode="json")
        except ValidationError:
            return None
    for key in _ENGINE_TIMES:
        value = out[key]
        if isinstance(value, str):
            text = _utc_text(value)
            if text is None:
                return None
            out[key] = text
        elif value is not None:
            return None
    by = out["last_meaningful_update_by"]
    if not (by is None or isinstance(by, str)) or not isinstance(out["name"], str):
        return None
    return out


@functools.lru_cache(maxsize=4096)
def _utc_text(value: str) -> str | None:
    """An ISO datetime as pydantic writes a UTC one (``...Z``), None if it is naive.

    Cached: a run writes the same few times (its signpost, the records' modification times,
    a stored project's own) into every project it builds; ValueError propagates as before.
    """
    when = datetime.fromisoformat(value)
    if when.tzinfo is None:
        return None
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _values(project: dict[str, Any], paths: Iterable[str]) -> dict[str, Any]:
    return {p: get_path(project, p) for p in paths}


def _set_path_cow(data: dict[str, Any], path: str, value: Any, copied: set[str]) -> None:
    """:func:`set_path` on a shallow copy of a project: every dict on the way to ``path`` is
    copied the first time it is written through (``copied`` remembers which), so the
    original project is never modified."""
    if "." not in path:
        data[path] = value
        return
    parts = path.split(".")
    cur = data
    prefix = ""
    for part in parts[:-1]:
        prefix = f"{prefix}.{part}" if prefix else part
        nxt = cur.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
        elif prefix not in copied:
            nxt = dict(nxt)
        else:
            cur = nxt
            continue
        copied.add(prefix)
        cur[part] = nxt
        cur = nxt
    cur[parts[-1]] = value


def _parse_time(v: Any) -> datetime | None:
    if isinstance(v, datetime):
        return v
    if isinstance(v, str):
        try:
            return datetime.fromisoformat(v)
        except ValueError:
            return None
    return None


def _brief(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
