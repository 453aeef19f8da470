"""A Hypothesis state machine over the sync engine (after vdirsyncer's).

Two or three in-memory tools are linked to the same projects. People edit records in every
tool; syncs run with injected failures (in pulls, in pushes, after a write whose response is
lost) and crashes (the run dies mid-way and a fresh engine takes over the same store and
tools). After every clean cycle the invariants hold: the tools converge, no edit is lost
without a recorded conflict, every project has exactly one record per tool, and the bases
equal what the tools hold.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from bridge.errors import RetriableError
from bridge.store import Store
from bridge.sync import SyncReport
from tests.test_sync_engine import Bridge

# 200 examples take two to three minutes on two busy cores: more than the default limit.
pytestmark = pytest.mark.timeout(900)

settings.register_profile(
    "ci",
    max_examples=int(os.environ.get("SB_EXAMPLES", "200")),
    stateful_step_count=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
if os.environ.get("CI"):
    settings.load_profile("ci")

EDITS: dict[str, list[Any]] = {
    "name": ["Alpha", "Beta", "Gamma"],
    "description": [None, "call back", "sent quote", "waiting"],
    "priority": ["low", "high", "critical"],
    "probability": [10, 50, 90],
    "stage": ["qualification", "proposal", "negotiation"],
}
MAX_RECORDS = 4


class Crash(Exception):
    """The process dies: an exception the engine does not handle."""


_template: Path | None = None


def fresh_db(folder: Path) -> str:
    """A migrated SQLite store, copied from a template migrated once per session."""
    global _template
    if _template is None or not _template.exists():
        _template = Path(tempfile.mkdtemp(prefix="sb-template-")) / "store.db"
        Store.open(f"sqlite:///{_template}").close()
    shutil.copy(_template, folder / "store.db")
    return f"sqlite:///{folder / 'store.db'}"


class SyncMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp(prefix="sb-machine-"))
        self.bridge: Bridge | None = None
        # (tool, ref, path) -> values written by people since the last clean cycle, in order
        self.edits: dict[tuple[str, str, str], list[Any]] = {}

    @property
    def b(self) -> Bridge:
        assert self.bridge is not None
        return self.bridge

    @initialize(tools=st.integers(2, 3), seeds=st.integers(1, 3))
    def setup(self, tools: int, seeds: int) -> None:
        names = tuple(f"t{i}" for i in range(tools))
        # One worker: tools are pulled one after the other, so a failing example replays
        # exactly (Hypothesis needs that to shrink it).
        self.bridge = Bridge(fresh_db(self.folder), names, page_size=2, max_workers=1)
        self.names = names
        for i in range(seeds):
            self.b.add(names[0], name=f"Deal {i}")

    def teardown(self) -> None:
        if self.bridge is not None:
            self.bridge.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    # -- people

    def _refs(self, tool: str) -> list[str]:
        return sorted(self.b.live_records(tool))

    @rule(tool=st.integers(0, 2), name=st.sampled_from(EDITS["name"]))
    def create(self, tool: int, name: str) -> None:
        t = self.names[tool % len(self.names)]
        if sum(len(self._refs(n)) for n in self.names) >= MAX_RECORDS * len(self.names):
            return
        self.b.add(t, name=name)

    @rule(
        tool=st.integers(0, 2),
        pick=st.integers(0, MAX_RECORDS * 3),
        edit=st.sampled_from(sorted(EDITS)).flatmap(
            lambda p: st.tuples(st.just(p), st.sampled_from(EDITS[p]))
        ),
    )
    def edit(self, tool: int, pick: int, edit: tuple[str, Any]) -> None:
        t = self.names[tool % len(self.names)]
        refs = self._refs(t)
        if not refs:
            return
        ref = refs[pick % len(refs)]
        path, value = edit
        unchanged = self.b.values(t, ref)[path] == value
        self.b.edit(t, ref, actor=f"person@{t}.example.com", **{path: value})
        if unchanged and (t, ref, path) not in self.edits:
            # Saving the value a field already has (clearing an empty description) changes
            # nothing a sync could lose: the record gets a new version, nothing to keep.
            return
        self.edits.setdefault((t, ref, path), []).append(value)

    # -- syncs

    @rule(
        tool=st.integers(0, 2),
        operation=st.sampled_from(["pull", "page", "find_by_stamp", "create", "update"]),
        crash=st.booleans(),
        after_write=st.booleans(),
        times=st.integers(1, 2),
        die_after=st.none() | st.integers(1, 8),
    )
    def sync_with_failures(
        self,
        tool: int,
        operation: Any,
        crash: bool,
        after_write: bool,
        times: int,
        die_after: int | None,
    ) -> None:
        t = self.names[tool % len(self.names)]
        error: BaseException = Crash(operation) if crash else RetriableError("injected")
        after = after_write and operation in ("create", "update")
        self.b.backends[t].inject_fault(operation, error, times=times, after_write=after)
        calls: list[str] = []

        def progress(name: str, phase: str, count: int) -> None:
            calls.append(phase)
            if die_after is not None and len(calls) >= die_after:
                raise Crash("killed mid-run")

        try:
            self.b.sync(progress=progress)
        except Crash:
            self.b.engine = self.b.new_engine()  # a restarted process
        finally:
            for backend in self.b.backends.values():
                backend.clear_faults()

    @rule(full=st.booleans())
    def sync_clean(self, full: bool) -> None:
        report = self.b.sync(full=full)
        assert report.ok, report.connectors
        assert not any(r.counts["deferred"] for r in report.connectors.values())
        self.check_clean_cycle(report)
        self.edits.clear()

    # -- invariants

    @invariant()
    def one_record_per_project_per_tool(self) -> None:
        """Never a duplicate: stamps unique, and no project held by two records of a tool."""
        if self.bridge is None:
            return
        for t in self.names:
            holder: dict[str, str] = {}
            linked = {lk.ref: lk.project_id for lk in self.b.store.links_for_connector(t)}
            for ref, entry in self.b.live_records(t).items():
                pid = linked.get(ref, entry["stamp"])
                if pid is None:
                    continue  # made by a person, not synced yet
                assert pid not in holder, f"{t}: {ref} and {holder[pid]} both hold {pid}"
                holder[pid] = ref

    def check_clean_cycle(self, report: SyncReport) -> None:
        self.b.assert_converged()
        conflicts = self.b.store.list_conflicts(False)
        by_project: dict[str, dict[str, list[tuple[str, Any]]]] = {}
        for (t, ref, path), values in self.edits.items():
            if ref not in self.b.live_records(t):
                continue
            pid = self.b.project_of(t, ref)
            by_project.setdefault(pid, {}).setdefault(path, []).append((t, values[-1]))
        for pid, fields in by_project.items():
            hub = self.b.hub(pid)
            for path, last in fields.items():
                final = hub[path]
                if len(last) == 1:
                    assert final == last[0][1], (pid, path, last, final)  # not lost
                    continue
                for t, value in last:
                    if value == final:
                        continue
                    # Overridden: it must show as a recorded conflict, or have reached the
                    # hub before a later edit replaced it.
                    recorded = any(
                        c.project_id == pid
                        and c.field == path
                        and value in (c.hub_value, c.remote_value)
                        for c in conflicts
                    )
                    seen = any(e.new == value for e in self.b.store.events_for(pid, field=path))
                    assert recorded or seen, (pid, path, t, value, final)


@pytest.fixture(autouse=True)
def check_stored_form(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every project the engine builds without pydantic is compared with pydantic's form."""
    monkeypatch.setattr("bridge.sync.engine.CHECK_STORED_FORM", True)


SyncMachine.TestCase.settings = settings.get_profile("ci")
TestSyncMachine = SyncMachine.TestCase
