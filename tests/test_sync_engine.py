"""The sync engine on in-memory tools: cursors, breaker, quarantine, dry run, review, echoes.

Two memory connectors (``crm`` and ``board``) share the reference mapping and a real SQLite
store; every test edits the tools "remotely" through their backends, as people would.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event as sa_event

from bridge.demo import STAGE_NAMES, TOOL_FIELDS
from bridge.errors import RetriableError
from bridge.mapping import MappingSpec, parse_mapping
from bridge.model import get_path
from bridge.store import Store
from bridge.sync import SyncEngine, SyncReport
from connectors.memory import MemoryBackend, MemoryConfig, MemoryConnector, SteppingClock

REPO = Path(__file__).resolve().parent.parent
MAPPING = REPO / "mappings" / "memory.toml"
START = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)


def tool_config(**settings: Any) -> MemoryConfig:
    """A memory tool declaring the demo schema, so the reference mapping validates."""
    return MemoryConfig(
        fields=dict(TOOL_FIELDS), stage_values=list(STAGE_NAMES.values()), **settings
    )


def mapping_text(policy: str = "newest_wins") -> str:
    text = MAPPING.read_text(encoding="utf-8")
    return text.replace('conflict_policy = "newest_wins"', f'conflict_policy = "{policy}"')


class Bridge:
    """Tools, store and engine wired together the way ``bridge.runtime`` does."""

    def __init__(
        self,
        db_url: str,
        names: tuple[str, ...] = ("crm", "board"),
        *,
        page_size: int = 50,
        policy: str = "newest_wins",
        path: Path | None = None,
        **engine_settings: Any,
    ) -> None:
        self.clock = SteppingClock(START)
        self.engine_settings = engine_settings
        self.backends: dict[str, MemoryBackend] = {}
        self.connectors: dict[str, MemoryConnector] = {}
        self.specs: dict[str, MappingSpec] = {}
        text = mapping_text(policy)
        for n in names:
            file = None if path is None else path / f"{n}.json"
            cfg = tool_config(page_size=page_size, path=file)
            self.backends[n] = MemoryBackend(file, clock=self.clock)
            self.connectors[n] = MemoryConnector(n, cfg, backend=self.backends[n])
            self.specs[n] = parse_mapping(
                text, source=str(MAPPING), schema=self.connectors[n].discover(), connector="memory"
            )
        self.store = Store.open(db_url)
        self.engine = self.new_engine()

    def new_engine(self, **settings: Any) -> SyncEngine:
        """A fresh engine on the same store and tools (what a restarted process builds)."""
        return SyncEngine(
            self.store,
            self.connectors,  # type: ignore[arg-type]
            self.specs,
            clock=self.clock,
            **{**self.engine_settings, **settings},
        )

    def sync(self, **options: Any) -> SyncReport:
        return self.engine.run(**options)

    def close(self) -> None:
        self.store.close()

    # -- the tools, in canonical terms

    def add(self, tool: str, actor: str = "li.wei@example.com", **values: Any) -> str:
        """A record created by a person in tool ``name`` (canonical paths, ``__`` for dots)."""
        canonical = {"stage": "lead", "customer.name": "Acme"}
        canonical.update({k.replace("__", "."): v for k, v in values.items()})
        return self.backends[tool].add(self.specs[tool].to_remote(canonical), actor=actor)

    def edit(self, tool: str, ref: str, actor: str = "li.wei@example.com", **values: Any) -> None:
        changes = {k.replace("__", "."): v for k, v in values.items()}
        self.backends[tool].edit(ref, self.specs[tool].to_remote(changes), actor=actor)

    def values(self, name: str, ref: str) -> dict[str, Any]:
        """The record's fields as the mapping reads them."""
        rec = self.connectors[name].get(ref)
        assert rec is not None, f"{name}:{ref} is gone"
        return self.specs[name].to_canonical(rec)

    def project_of(self, name: str, ref: str) -> str:
        link = self.store.get_link(name, ref)
        assert link is not None and link.live, f"{name}:{ref} is not linked"
        return link.project_id

    def ref_of(self, name: str, project_id: str) -> str:
        refs = [lk.ref for lk in self.store.links_for_project(project_id) if lk.connector == name]
        assert len(refs) == 1, f"{project_id} has {len(refs)} links in {name}"
        return refs[0]

    def hub(self, project_id: str) -> dict[str, Any]:
        project = self.store.get_project(project_id)
        assert project is not None
        return project

    def live_records(self, name: str) -> dict[str, dict[str, Any]]:
        return {r: e for r, e in self.backends[name].records().items() if not e["deleted"]}

    def assert_converged(self) -> None:
        """Every live project has one record per tool, holding the hub's values; bases agree."""
        projects = list(self.store.list_projects())
        for name, spec in self.specs.items():
            shared = spec.pulled_paths & spec.pushed_paths
            owners: dict[str, str] = {}
            held = {q.ref for q in self.store.list_quarantine(name)}
            for ref in self.live_records(name).keys() - held:
                pid = self.project_of(name, ref)
                assert pid not in owners, f"{name}: {ref} and {owners[pid]} both hold {pid}"
                owners[pid] = ref
            for p in projects:
                assert p["id"] in owners, f"{p['id']} has no record in {name}"
                ref = owners[p["id"]]
                remote = self.values(name, ref)
                bases = self.store.get_bases(p["id"], name)
                pending = {c.field for c in self.store.list_conflicts(True, project_id=p["id"])}
                for path in sorted(shared - pending):
                    hub = get_path(p, path)
                    assert remote[path] == hub, (name, ref, path, remote[path], hub)
                    assert bases.get(path) == hub, (name, ref, path, bases.get(path), hub)


@pytest.fixture(autouse=True)
def check_stored_form(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every project the engine builds without pydantic is compared with pydantic's form."""
    monkeypatch.setattr("bridge.sync.engine.CHECK_STORED_FORM", True)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture
def bridge(db_url: str) -> Iterator[Bridge]:
    b = Bridge(db_url, page_size=2)
    yield b
    b.close()


def normalised_rows(report: SyncReport, created: Mapping[str, str]) -> list[str]:
    """Plan rows as sortable text; ids of projects created in the run are replaced by
    ``created[ref]`` (a dry run cannot know the id the real run will draw)."""
    rename: dict[str, str] = {}
    for s in report.plan.steps:
        if s.action == "create_project" and s.project_id and s.ref:
            rename[s.project_id] = created.get(f"{s.connector}:{s.ref}", f"{s.connector}:{s.ref}")
    rows = []
    for r in report.plan.rows():
        r = {**r, "project": rename.get(r["project"], r["project"])}
        rows.append(json.dumps(r, sort_keys=True, default=str))
    return sorted(rows)


# --------------------------------------------------------------------------- basics


def test_two_way_sync_creates_once_and_converges(bridge: Bridge) -> None:
    refs = [bridge.add("crm", name=f"Deal {i}", priority="high") for i in range(5)]
    report = bridge.sync()
    assert report.ok, report.connectors
    assert report.connectors["board"].counts["push_created"] == 5
    bridge.assert_converged()
    stamps = [e["stamp"] for e in bridge.live_records("board").values()]
    assert sorted(stamps) == sorted(bridge.project_of("crm", r) for r in refs)

    board_ref = bridge.ref_of("board", bridge.project_of("crm", refs[0]))
    bridge.edit("board", board_ref, actor="pm@example.com", description="kick-off on Monday")
    bridge.edit("crm", refs[1], priority="critical")
    assert bridge.sync().ok
    bridge.assert_converged()
    assert bridge.values("crm", refs[0])["description"] == "kick-off on Monday"
    assert (
        bridge.values("board", bridge.ref_of("board", bridge.project_of("crm", refs[1])))[
            "priority"
        ]
        == "critical"
    )
    again = bridge.sync()
    assert again.plan.rows() == []


# --------------------------------------------------------------------------- echoes


def _meaningful_events(bridge: Bridge, pid: str) -> list[Any]:
    return [e for e in bridge.store.events_for(pid) if e.meaningful]


@pytest.mark.parametrize("readback", ["lost_response", "reconcile"])
def test_own_writes_read_back_are_no_ops(bridge: Bridge, readback: str) -> None:
    """Our push comes back with a new version (its response was lost, or a full census reads
    everything): equal to the base, so no hub change, no meaningful event, no freshness bump."""
    ref = bridge.add("crm", name="Echo deal")
    assert bridge.sync().ok
    pid = bridge.project_of("crm", ref)
    board_ref = bridge.ref_of("board", pid)
    bridge.edit("board", board_ref, actor="pm@example.com", description="from the board")
    if readback == "lost_response":
        bridge.backends["crm"].inject_fault(
            "update", RetriableError("response lost"), after_write=True
        )
    first = bridge.sync()
    assert bridge.values("crm", ref)["description"] == "from the board"  # written either way
    if readback == "lost_response":
        assert first.connectors["crm"].status == "failed"
    before = bridge.hub(pid)
    events = _meaningful_events(bridge, pid)

    report = bridge.sync(full=readback == "reconcile")
    assert report.ok, report.connectors
    assert report.plan.rows() == []
    after = bridge.hub(pid)
    assert after["last_meaningful_update_at"] == before["last_meaningful_update_at"]
    assert after["last_meaningful_update_by"] == "pm@example.com"
    assert _meaningful_events(bridge, pid) == events
    bridge.assert_converged()


# --------------------------------------------------------------------------- cursor


def test_record_changed_during_the_pull_is_read_next_time(bridge: Bridge) -> None:
    """The cursor stops at the signpost: an edit made while the pull runs is not skipped."""
    refs = [bridge.add("crm", name=f"Deal {i}") for i in range(6)]
    assert bridge.sync().ok
    for ref in refs:
        bridge.edit("crm", ref, probability=10)
    edited: list[str] = []

    def progress(name: str, phase: str, count: int) -> None:
        if name == "crm" and phase == "pull" and not edited:
            # The first page (refs 0-1) is applied; edit a record it already read.
            bridge.edit("crm", refs[0], actor="anna@example.com", probability=90)
            edited.append(refs[0])

    report = bridge.sync(progress=progress)
    assert edited and report.ok
    pid = bridge.project_of("crm", refs[0])
    assert bridge.hub(pid)["probability"] == 10  # the pull read the old revision
    bridge.sync()
    assert bridge.hub(pid)["probability"] == 90
    bridge.assert_converged()


def test_records_read_again_are_dropped_by_version(bridge: Bridge) -> None:
    """Overlap: rereading records already applied (cursor reset) writes nothing."""
    for i in range(5):
        bridge.add("crm", name=f"Deal {i}")
    assert bridge.sync().ok
    bridge.store.reset_cursor("crm")
    bridge.store.reset_cursor("board")
    report = bridge.sync()
    assert report.ok
    assert report.connectors["crm"].counts["unchanged"] == 5
    assert report.connectors["board"].counts["unchanged"] == 5
    assert report.plan.rows() == []


# --------------------------------------------------------------------------- breaker


def _links(bridge: Bridge, name: str) -> list[str]:
    return sorted(lk.ref for lk in bridge.store.links_for_connector(name) if lk.live)


@pytest.mark.parametrize("full", [False, True], ids=["incremental", "reconcile"])
def test_breaker_stops_a_tool_that_lost_its_records(bridge: Bridge, full: bool) -> None:
    refs = [bridge.add("crm", name=f"Deal {i}") for i in range(10)]
    assert bridge.sync().ok
    linked = _links(bridge, "crm")
    assert linked == sorted(refs)
    for ref in refs:  # a revoked token or a wrong board looks exactly like this
        bridge.backends["crm"].delete(ref, actor="admin@example.com")
    board_before = bridge.live_records("board")

    for _ in range(2):  # the breaker holds until forced, run after run
        report = bridge.sync(full=full)
        assert report.connectors["crm"].status == "breaker", report.connectors
        assert "10 of 10" in (report.connectors["crm"].error or "")
        assert len(bridge.store.open_alerts("crm", kind="breaker")) >= 1
        assert _links(bridge, "crm") == linked
        assert len(list(bridge.store.list_projects())) == 10
        assert bridge.live_records("board") == board_before

    forced = bridge.sync(full=full, force=True)
    assert forced.connectors["crm"].status == "ok", forced.connectors
    assert forced.connectors["crm"].counts["unlinked"] == 10
    assert _links(bridge, "crm") == []
    assert bridge.store.open_alerts("crm", kind="breaker") == []
    assert bridge.live_records("board") == board_before  # nothing deleted in the other tool


def test_a_few_vanished_records_are_unlinked_without_the_breaker(bridge: Bridge) -> None:
    refs = [bridge.add("crm", name=f"Deal {i}") for i in range(10)]
    assert bridge.sync().ok
    bridge.backends["crm"].delete(refs[3])
    report = bridge.sync()
    assert report.ok, report.connectors
    assert report.connectors["crm"].counts["unlinked"] == 1
    assert refs[3] not in _links(bridge, "crm")


# --------------------------------------------------------------------------- quarantine


def test_bad_records_are_quarantined_while_the_rest_sync(bridge: Bridge) -> None:
    good = [bridge.add("crm", name=f"Deal {i}") for i in range(3)]
    malformed = bridge.backends["crm"].add_raw(["not", "a", "record"])
    unmappable = bridge.backends["crm"].add(
        {"Title": "Odd", "Customer": "Acme", "status": "No such status"}
    )
    report = bridge.sync()
    assert report.ok, report.connectors
    held = {q.ref: q.reason for q in bridge.store.list_quarantine("crm")}
    assert set(held) == {malformed, unmappable}
    assert "mapping" in held[malformed]
    assert "No such status" in held[unmappable] or "stage" in held[unmappable]
    assert len(bridge.live_records("board")) == 3
    for ref in good:
        bridge.project_of("crm", ref)

    bridge.backends["crm"].edit(unmappable, {"status": "Proposal"}, actor="anna@example.com")
    report = bridge.sync()
    assert report.ok
    assert {q.ref for q in bridge.store.list_quarantine("crm")} == {malformed}
    assert bridge.hub(bridge.project_of("crm", unmappable))["stage"] == "proposal"
    bridge.assert_converged()


def test_invalid_mapped_value_is_quarantined(bridge: Bridge) -> None:
    ref = bridge.add("crm", name="Deal")
    assert bridge.sync().ok
    bridge.backends["crm"].edit(ref, {"Probability": 250})  # maps, but no project holds it
    report = bridge.sync()
    assert [q.ref for q in bridge.store.list_quarantine("crm")] == [ref]
    assert report.connectors["crm"].counts["quarantined"] == 1
    bridge.backends["crm"].edit(ref, {"Probability": 25})
    bridge.sync()
    assert bridge.store.list_quarantine("crm") == []
    assert bridge.hub(bridge.project_of("crm", ref))["probability"] == 25


# --------------------------------------------------------------------------- dry run


def test_dry_run_shows_exactly_what_the_real_run_does(bridge: Bridge) -> None:
    refs = [bridge.add("crm", name=f"Deal {i}") for i in range(4)]
    assert bridge.sync().ok
    pids = [bridge.project_of("crm", r) for r in refs]
    bridge.edit("crm", refs[0], priority="critical")
    bridge.edit("board", bridge.ref_of("board", pids[1]), description="board notes")
    bridge.edit("crm", refs[2], description="crm says")
    bridge.edit("board", bridge.ref_of("board", pids[2]), description="board says")
    bridge.edit("crm", refs[3], stage="negotiation")
    new_ref = bridge.add("board", name="Board-born deal")
    projects_before = list(bridge.store.list_projects())
    records_before = {n: bridge.backends[n].records() for n in bridge.backends}

    dry = bridge.sync(dry_run=True)
    assert list(bridge.store.list_projects()) == projects_before
    assert {n: bridge.backends[n].records() for n in bridge.backends} == records_before
    real = bridge.sync()
    assert real.ok, real.connectors
    created = {f"board:{new_ref}": bridge.project_of("board", new_ref)}
    assert normalised_rows(dry, created) == normalised_rows(real, created)
    assert dry.plan.rows()  # not trivially equal
    bridge.assert_converged()

    assert bridge.sync(dry_run=True).plan.rows() == []


# --------------------------------------------------------------------------- review


@pytest.mark.parametrize("take", ["remote", "hub", "value"])
def test_review_conflicts_wait_for_a_person(db_url: str, take: str) -> None:
    bridge = Bridge(db_url, policy="review")
    try:
        ref = bridge.add("crm", name="Deal", description="first notes")
        assert bridge.sync().ok
        pid = bridge.project_of("crm", ref)
        board_ref = bridge.ref_of("board", pid)
        bridge.edit("crm", ref, description="crm notes")
        bridge.edit("board", board_ref, actor="pm@example.com", description="board notes")
        bridge.sync()
        pending = bridge.store.list_conflicts(True, project_id=pid)
        assert [c.field for c in pending] == ["description"]
        for _ in range(2):  # still pending: not raised again, nothing pushed over it
            bridge.sync()
            assert bridge.values("crm", ref)["description"] == "crm notes"
            assert bridge.values("board", board_ref)["description"] == "board notes"
            assert [c.id for c in bridge.store.list_conflicts(True)] == [pending[0].id]

        c = pending[0]
        expected = {"remote": c.remote_value, "hub": c.hub_value, "value": "agreed notes"}[take]
        bridge.engine.resolve_conflict(c.id, take, "agreed notes" if take == "value" else None)
        assert bridge.store.list_conflicts(True) == []
        assert bridge.hub(pid)["description"] == expected
        assert bridge.sync().ok
        assert bridge.values("crm", ref)["description"] == expected
        assert bridge.values("board", board_ref)["description"] == expected
        bridge.assert_converged()
        assert [x.resolution for x in bridge.store.list_conflicts(False)] == [take]
    finally:
        bridge.close()


def test_newest_wins_records_the_conflict(bridge: Bridge) -> None:
    ref = bridge.add("crm", name="Deal")
    assert bridge.sync().ok
    pid = bridge.project_of("crm", ref)
    bridge.edit("crm", ref, description="older")
    bridge.edit("board", bridge.ref_of("board", pid), description="newer")
    assert bridge.sync().ok
    assert bridge.hub(pid)["description"] == "newer"
    [c] = bridge.store.list_conflicts(False)
    assert (c.field, c.resolution, c.resolved_value) == ("description", c.resolution, "newer")
    assert {c.hub_value, c.remote_value} == {"older", "newer"}
    bridge.assert_converged()


# --------------------------------------------------------------------------- crash


class Crash(Exception):
    """Stands in for the process dying: not an error the engine knows how to handle."""


def test_crash_mid_pull_then_rerun_loses_nothing(db_url: str) -> None:
    bridge = Bridge(db_url, page_size=1)  # more pages than the page queue holds
    refs = [bridge.add("crm", name=f"Deal {i}") for i in range(12)]
    calls: list[int] = []

    def dies(name: str, phase: str, count: int) -> None:
        calls.append(count)
        if len(calls) == 2:
            raise Crash("killed")

    with pytest.raises(Crash):
        bridge.sync(progress=dies)  # must not hang on workers blocked on a full queue
    assert {r.status for r in bridge.store.last_runs().values()} == {"failed"}
    engine = bridge.new_engine()
    assert engine.run().ok
    bridge.engine = engine
    bridge.assert_converged()
    assert len(list(bridge.store.list_projects())) == len(refs)
    bridge.close()


def test_crash_between_create_and_link_creates_no_duplicate(bridge: Bridge) -> None:
    for i in range(3):
        bridge.add("crm", name=f"Deal {i}")
    bridge.backends["board"].inject_fault("create", Crash("killed"), after_write=True)
    with pytest.raises(Crash):
        bridge.sync()
    assert len(bridge.live_records("board")) == 1  # written, link never committed
    bridge.engine = bridge.new_engine()
    assert bridge.sync().ok
    assert len(bridge.live_records("board")) == 3
    bridge.assert_converged()


# --------------------------------------------------------------------------- CLI


def write_config(root: Path, page_size: int = 100) -> Path:
    """A workspace like ``salesbridge demo`` writes: two file-backed memory tools."""
    (root / "tools").mkdir(parents=True, exist_ok=True)
    stages = json.dumps(list(STAGE_NAMES.values()))
    fields = "{ " + ", ".join(f'"{k}" = "{v}"' for k, v in TOOL_FIELDS.items()) + " }"
    tools = "".join(
        f"""
[connectors.{n}]
kind = "memory"
mapping = "{MAPPING}"
path = "tools/{n}.json"
page_size = {page_size}
stage_values = {stages}
fields = {fields}
"""
        for n in ("crm", "board")
    )
    config = root / "salesbridge.toml"
    config.write_text(
        f'timezone = "UTC"\n\n[store]\nurl = "sqlite:///salesbridge.db"\n{tools}',
        encoding="utf-8",
    )
    return config


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def test_cli_dry_run_exits_2_with_changes_and_0_without(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    crm = MemoryBackend(tmp_path / "tools" / "crm.json")
    spec = parse_mapping(mapping_text(), source=str(MAPPING))
    for i in range(3):
        crm.add(spec.to_remote({"name": f"Deal {i}", "stage": "lead", "customer.name": "Acme"}))

    dry = cli("sync", "--dry-run", "--config", str(config))
    assert dry.returncode == 2, dry.stdout + dry.stderr
    assert "Deal 0" in dry.stdout
    assert MemoryBackend(tmp_path / "tools" / "board.json").records() == {}

    real = cli("sync", "--config", str(config))
    assert real.returncode == 0, real.stdout + real.stderr
    assert len(MemoryBackend(tmp_path / "tools" / "board.json").records()) == 3

    calm = cli("sync", "--dry-run", "--config", str(config))
    assert calm.returncode == 0, calm.stdout + calm.stderr
    assert "No changes." in calm.stdout


# --------------------------------------------------------------------------- bounded report


def test_a_real_run_keeps_counts_and_a_bounded_plan(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real run's plan counts every step but keeps only the first KEEP_STEPS visible ones,
    without their payload; a dry run (or keep_steps=True) keeps every step as planned."""
    monkeypatch.setattr("bridge.sync.engine.KEEP_STEPS", 4)
    for i in range(9):
        bridge.add("crm", name=f"Deal {i}")

    dry = bridge.sync(dry_run=True)
    assert [s.action for s in dry.plan.steps].count("create_project") == 9
    assert all(s.project is not None for s in dry.plan.steps if s.action == "create_project")
    assert not dry.plan.truncated and dry.plan.row_count == len(dry.plan.rows())

    real = bridge.sync()
    assert real.ok
    plan = real.plan
    assert len(plan.steps) == 4 and plan.truncated
    assert plan.omitted == sum(plan.counts.values()) - 4  # every step here is visible
    assert plan.count("create_project", "crm") == 9
    assert plan.count("push_create", "board") == 9
    assert plan.row_count == len(dry.plan.rows())
    for s in plan.steps:  # only what is printed; no project JSON, record or history
        assert s.project is None and s.record is None and s.history == [] and s.bases == {}
        assert s.changes
    assert plan.rows()[0]["action"] == "create_project"

    bridge.edit("crm", bridge.ref_of("crm", plan.steps[0].project_id or ""), description="x")
    kept = bridge.sync(keep_steps=True)
    assert not kept.plan.truncated
    assert [s.action for s in kept.plan.steps if s.changes] == ["update_project", "push_update"]
    assert kept.plan.steps[0].project is not None


def test_a_bounded_plan_holds_no_payload_of_bookkeeping_steps(bridge: Bridge) -> None:
    """Echoes (a new version, nothing new in it) are counted, not kept, in a real run."""
    ref = bridge.add("crm", name="Deal")
    assert bridge.sync().ok
    pid = bridge.project_of("crm", ref)
    bridge.edit("crm", ref, description="same")  # a new version...
    assert bridge.sync().ok
    bridge.backends["crm"].edit(ref, {})  # ...then one with no news
    report = bridge.sync()
    assert report.ok and report.plan.steps == [] and report.plan.rows() == []
    assert report.plan.count("update_project", "crm") == 1
    assert bridge.hub(pid)["description"] == "same"


# --------------------------------------------------------------------------- push planning


class StatementCounter:
    """Counts the SQL statements the store sends (SQLAlchemy ``before_cursor_execute``)."""

    def __init__(self, store: Store) -> None:
        self.engine = store._engine
        self.count = 0

    def _on(self, *_: Any) -> None:
        self.count += 1

    def __enter__(self) -> StatementCounter:
        sa_event.listen(self.engine, "before_cursor_execute", self._on)
        return self

    def __exit__(self, *_: Any) -> None:
        sa_event.remove(self.engine, "before_cursor_execute", self._on)


def expected_pushes(bridge: Bridge, name: str) -> dict[str, dict[str, Any]]:
    """Push planning done the slow, obvious way: every live link, its project, its bases and
    its pending conflicts read one by one; {ref: {path: value to push}}."""
    spec = bridge.specs[name]
    out: dict[str, dict[str, Any]] = {}
    for lk in bridge.store.links_for_connector(name):
        hub = bridge.store.get_project(lk.project_id, include_tombstoned=False)
        if hub is None:
            continue
        bases = bridge.store.get_bases(lk.project_id, name)
        pending = {
            c.field
            for c in bridge.store.list_conflicts(True, project_id=lk.project_id, connector=name)
        }
        diffs = {}
        for path in spec.pushed_paths - pending:
            value = get_path(hub, path)
            if (path in bases and bases[path] != value) or (path not in bases and value):
                diffs[path] = value
        if diffs:
            out[lk.ref] = diffs
    return out


def test_batched_push_planning_plans_the_same_pushes(db_url: str) -> None:
    bridge = Bridge(db_url, policy="review", page_size=7)
    try:
        refs = [bridge.add("crm", name=f"Deal {i}", probability=10) for i in range(40)]
        assert bridge.sync().ok
        # Hub changes from the CRM for some, a pending conflict for one, a tombstone for one.
        for i in range(0, 40, 3):
            bridge.edit("crm", refs[i], probability=20 + i, description=f"call {i}")
        board = {r: bridge.ref_of("board", bridge.project_of("crm", r)) for r in refs[:3]}
        bridge.edit("board", board[refs[0]], actor="pm@example.com", description="board notes")
        bridge.sync(push_to=[])  # pulls both (conflict on refs[0]); pushes nothing yet
        assert bridge.store.list_conflicts(True)
        bridge.store.tombstone_project(bridge.project_of("crm", refs[1]))
        want = {name: expected_pushes(bridge, name) for name in ("crm", "board")}
        assert want["board"] and board[refs[0]] in want["board"]

        report = bridge.sync(only=[], push_to=["crm", "board"], dry_run=True)
        got: dict[str, dict[str, dict[str, Any]]] = {"crm": {}, "board": {}}
        for s in report.plan.steps:
            assert s.action == "push_update", s
            assert s.ref is not None
            got[s.connector][s.ref] = {c.path: c.new for c in s.changes}
            assert s.bases == got[s.connector][s.ref]
        assert got == want
    finally:
        bridge.close()


def test_an_idle_cycle_costs_the_same_statements_for_10_or_120_projects(db_url: str) -> None:
    """Push planning reads links, projects, bases and conflicts in chunks: the statements of a
    cycle with nothing to do do not grow with the number of linked projects."""
    counts = []
    for n in (10, 120):
        bridge = Bridge(db_url.replace("store.db", f"store{n}.db"), page_size=50)
        try:
            for i in range(n):
                bridge.add("crm", name=f"Deal {i}")
            assert bridge.sync().ok
            assert bridge.sync().ok  # reads back the board's creates: links, no news
            with StatementCounter(bridge.store) as sql:
                report = bridge.sync()
            assert report.ok and report.plan.rows() == []
            counts.append(sql.count)
        finally:
            bridge.close()
    assert counts[0] == counts[1], counts
    assert counts[1] < 40, counts


class PlanningSpy(StatementCounter):
    """Counts the statements that read the bases table: push planning's comparison."""

    def _on(self, conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if "bases.fields" in statement:
            self.count += 1


def test_a_quiet_cycle_skips_push_planning_until_any_writer_changes_the_store(
    db_url: str,
) -> None:
    """Planning found nothing and nothing it reads has changed: the next cycle does not plan.
    A write by anyone (here a second store, as a CLI command in another process) restarts
    planning, and the change reaches both tools."""
    bridge = Bridge(db_url, page_size=50)
    other = Store.open(db_url)
    try:
        refs = [bridge.add("crm", name=f"Deal {i}") for i in range(5)]
        assert bridge.sync().ok  # creates on the board, stamps in the CRM
        with PlanningSpy(bridge.store) as spy:
            assert bridge.sync().ok  # reads them back, plans, finds nothing: remembered
        assert spy.count > 0
        with PlanningSpy(bridge.store) as spy:
            report = bridge.sync()
        assert report.ok and report.plan.rows() == [] and spy.count == 0
        with PlanningSpy(bridge.store) as spy:  # a census always plans
            assert bridge.sync(full=True).ok
        assert spy.count > 0

        pid = bridge.project_of("crm", refs[2])
        project = dict(other.get_project(pid) or {})
        project["name"] = "Renamed elsewhere"
        other.put_project(project)
        report = bridge.sync()
        assert report.ok
        assert report.connectors["crm"].counts["pushed"] == 1
        assert report.connectors["board"].counts["pushed"] == 1
        assert bridge.values("crm", refs[2])["name"] == "Renamed elsewhere"
        assert bridge.values("board", bridge.ref_of("board", pid))["name"] == "Renamed elsewhere"
        bridge.assert_converged()
    finally:
        other.close()
        bridge.close()


def test_push_generation_moves_with_what_planning_reads_only(db_url: str) -> None:
    bridge = Bridge(db_url, page_size=50)
    try:
        store = bridge.store
        ref = bridge.add("crm", name="Deal")
        assert bridge.sync().ok
        pid = bridge.project_of("crm", ref)
        g = store.push_generation()
        assert g is not None
        store.save_cursor("crm", store.get_cursor("crm"))
        store.finish_run(store.start_run("crm"), "ok", {}, None)
        assert store.push_generation() == g  # cursors and run rows are not read by planning
        store.set_bases(pid, "crm", {"name": "x"})
        g2 = store.push_generation()
        assert g2 is not None and g2 > g
        store.tombstone_project(pid)
        assert (store.push_generation() or 0) > g2
    finally:
        bridge.close()


# --------------------------------------------------------------------------- stored form


def test_projects_built_without_pydantic_equal_pydantic_form(db_url: str) -> None:
    """The demo's varied projects (people, money, lists, custom fields, nested customer),
    created and then merged: each stored project equals what pydantic makes of it (the
    autouse fixture compares every project as it is built, too)."""
    from bridge.demo_data import DemoOptions, generate
    from bridge.model import SalesProject

    bridge = Bridge(db_url, names=("crm",), page_size=40)
    try:
        spec = bridge.specs["crm"]
        refs = []
        for p in generate(DemoOptions(count=60, now=START)):
            data = p.to_json()
            values = {path: get_path(data, path) for path in spec.pushed_paths}
            remote = spec.to_remote({k: v for k, v in values.items() if v is not None})
            refs.append(bridge.backends["crm"].add(remote, actor="li.wei"))
        assert bridge.sync().connectors["crm"].counts["created"] == 60
        for i, ref in enumerate(refs):
            bridge.backends["crm"].edit(
                ref, {"Probability": i, "Notes": f"call {i}", "Customer": f"C{i}", "Region": "EU"}
            )
        assert bridge.sync().connectors["crm"].counts["updated"] == 60
        for project in bridge.store.list_projects():
            assert project == SalesProject.model_validate(project).to_json()
    finally:
        bridge.close()


# --------------------------------------------------------------------------- collector


def test_a_run_raises_the_young_gc_threshold_and_restores_it(bridge: Bridge) -> None:
    """During a run the young threshold is raised (fewer full collections of the whole heap);
    afterwards, and after a run that fails, the process's own thresholds are back."""
    import gc

    from bridge.sync import engine as engine_module

    before = gc.get_threshold()
    seen: list[tuple[int, ...]] = []
    bridge.add("crm", name="Deal")
    bridge.engine.run(progress=lambda *_: seen.append(gc.get_threshold()))
    assert seen and all(t[0] == engine_module.GC_YOUNG_THRESHOLD for t in seen), seen
    assert all(t[1:] == before[1:] for t in seen)
    assert gc.get_threshold() == before

    def boom(*_: Any) -> None:
        raise RuntimeError("boom")

    bridge.add("crm", name="Another")
    with pytest.raises(RuntimeError):
        bridge.engine.run(progress=boom)
    assert gc.get_threshold() == before

    gc.set_threshold(0, *before[1:])  # a process that switched the collector off keeps it off
    try:
        bridge.edit("crm", bridge.add("crm", name="Third"), priority="high")
        bridge.engine.run(progress=lambda *_: seen.append(gc.get_threshold()))
        assert seen[-1][0] == 0
    finally:
        gc.set_threshold(*before)


# --------------------------------------------------------------------------- fixed costs


class WriteCounter:
    """Counts the store's write transactions (``BEGIN IMMEDIATE`` on SQLite)."""

    def __init__(self, store: Store) -> None:
        self.engine = store._engine
        self.count = 0

    def _on(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("BEGIN IMMEDIATE"):
            self.count += 1

    def __enter__(self) -> WriteCounter:
        sa_event.listen(self.engine, "before_cursor_execute", self._on)
        return self

    def __exit__(self, *_: Any) -> None:
        sa_event.remove(self.engine, "before_cursor_execute", self._on)


def test_an_idle_cycle_writes_only_its_run_rows(bridge: Bridge) -> None:
    """With nothing new, a cycle over two tools commits twice (every run row started in one
    transaction, finished in another): an unchanged cursor is not written again. A change
    still commits with its cursor, and the cursor then stored is the page's."""
    for i in range(3):
        bridge.add("crm", name=f"Deal {i}")
    assert bridge.sync().ok
    assert bridge.sync().ok  # reads back the board's creates
    cursors = bridge.store.get_cursors(["crm", "board"])
    with WriteCounter(bridge.store) as writes:
        report = bridge.sync()
    assert report.ok and report.plan.rows() == []
    assert writes.count == 2, writes.count
    assert bridge.store.get_cursors(["crm", "board", "none"]) == {
        **cursors,
        "none": bridge.store.get_cursor("none"),
    }
    runs = bridge.store.runs(limit=2)
    assert {r.connector for r in runs} == {"crm", "board"}
    assert all(r.status == "ok" and r.finished_at is not None for r in runs)

    bridge.edit("crm", sorted(bridge.live_records("crm"))[0], priority="critical")
    with WriteCounter(bridge.store) as writes:
        report = bridge.sync()
    assert report.ok and report.connectors["crm"].counts["updated"] == 1
    assert writes.count > 2
    assert bridge.store.get_cursor("crm") != cursors["crm"]
    assert bridge.engine.run(dry_run=True).plan.rows() == []
