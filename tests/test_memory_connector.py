"""The memory connector passes the contract, in process and on a file, and injects faults."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bridge.errors import FatalError, RetriableError, SkippableRecord, StaleVersion
from connectors.base import Connector, Cursor
from connectors.memory import MemoryBackend, MemoryConfig, MemoryConnector, SteppingClock
from tests.contract import ConnectorContract, new_stamp

START = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)


class TestMemoryConnector(ConnectorContract):
    kind = "memory"
    editable_field = "title"
    editable_values = ("Acme rollout", "Acme rollout, phase 2")
    supports_archive = True
    keeps_history = True
    clock_resolution = 0.0

    @pytest.fixture
    def connector(self) -> Iterator[Connector[Any]]:
        backend = MemoryBackend(clock=SteppingClock(START))
        with MemoryConnector("memory", MemoryConfig(page_size=2), backend=backend) as connector:
            yield connector

    def sample_fields(self) -> dict[str, Any]:
        owner = {"id": "u1", "name": "Li Wei", "email": "li@example.com", "username": "liwei"}
        return {"title": "Acme rollout", "status": "proposal", "amount": 1200.5, "owner": owner}

    def remote_edit(self, connector: Connector[Any], ref: str, fields: Mapping[str, Any]) -> None:
        assert isinstance(connector, MemoryConnector)
        connector.backend.edit(ref, fields, actor="alice")

    def server_now(self, connector: Connector[Any]) -> datetime:
        assert isinstance(connector, MemoryConnector)
        return connector.backend.clock()


class TestMemoryConnectorOnFile(TestMemoryConnector):
    @pytest.fixture
    def connector(self, tmp_path: Path) -> Iterator[Connector[Any]]:
        config = MemoryConfig(page_size=2, path=tmp_path / "remote.json")
        backend = MemoryBackend(config.path, clock=SteppingClock(START))
        with MemoryConnector("memory", config, backend=backend) as connector:
            yield connector


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def backend() -> MemoryBackend:
    return MemoryBackend(clock=SteppingClock(START))


def connect(backend: MemoryBackend, **settings: Any) -> MemoryConnector:
    return MemoryConnector("memory", MemoryConfig(**settings), backend=backend)


def pull_all(
    connector: MemoryConnector, cursor: Cursor, signpost: datetime, *, full: bool = False
) -> tuple[list[Any], list[SkippableRecord], Cursor]:
    records, skipped = [], []
    for page in connector.pull(cursor, signpost=signpost, full=full):
        records.extend(page.records)
        skipped.extend(page.skipped)
        cursor = page.cursor or cursor
    return records, skipped, cursor


# --------------------------------------------------------------------------- file backend


def test_two_connectors_on_one_file_see_one_tool(tmp_path: Path) -> None:
    config = MemoryConfig(path=tmp_path / "remote.json")
    first, second = MemoryConnector("a", config), MemoryConnector("b", config)
    created = first.create({"title": "Acme"}, stamp="p-1")
    found = second.find_by_stamp("p-1")
    assert found is not None
    assert found == created
    updated = second.update(created.ref, {"title": "Acme 2"}, expected_version=created.version)
    assert first.get(created.ref) == updated
    stored = json.loads((tmp_path / "remote.json").read_text())
    assert stored["records"][created.ref]["fields"] == {"title": "Acme 2"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["remote.json", "remote.json.lock"]


def test_another_process_writing_loses_no_write(tmp_path: Path) -> None:
    path, n = tmp_path / "remote.json", 60
    script = textwrap.dedent(f"""
        from pathlib import Path
        from connectors.memory import MemoryBackend
        backend = MemoryBackend(Path({str(path)!r}))
        print("ready", flush=True)
        for i in range({n}):
            backend.add({{"title": f"child {{i}}"}}, actor="child")
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    here = MemoryBackend(path)
    reader = MemoryConnector("memory", MemoryConfig(path=path))
    seen: set[str] = set()
    cursor = Cursor()
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n"
        for i in range(n):
            here.add({"title": f"parent {i}"}, actor="parent")
            records, _, cursor = pull_all(reader, cursor, datetime.now(UTC))
            seen |= {r.ref for r in records}
    finally:
        assert child.wait(timeout=60) == 0
        if child.stdout:
            child.stdout.close()
    records, _, _ = pull_all(reader, cursor, datetime.now(UTC))
    seen |= {r.ref for r in records}
    titles = sorted(e["fields"]["title"] for e in here.records().values())
    assert titles == sorted([f"child {i}" for i in range(n)] + [f"parent {i}" for i in range(n)])
    assert seen == set(here.records()), "an incremental reader missed a concurrent write"


def test_a_file_that_is_not_memory_data_is_fatal(tmp_path: Path) -> None:
    path = tmp_path / "remote.json"
    path.write_text('{"records": ["nope"]}')
    with pytest.raises(FatalError, match="does not hold"):
        MemoryConnector("memory", MemoryConfig(path=path)).check()


# --------------------------------------------------------------------------- faults


def test_a_fault_before_the_write_leaves_nothing_behind(backend: MemoryBackend) -> None:
    connector = connect(backend)
    backend.inject_fault("create", RetriableError("503"), times=2)
    for _ in range(2):
        with pytest.raises(RetriableError):
            connector.create({"title": "Acme"}, stamp="p-1")
    assert connector.find_by_stamp("p-1") is None
    assert connector.create({"title": "Acme"}, stamp="p-1").stamp == "p-1"
    assert backend.calls["create"] == 3


def test_a_fault_after_the_write_keeps_the_write(backend: MemoryBackend) -> None:
    connector = connect(backend)
    backend.inject_fault("create", lambda: RetriableError("response lost"), after_write=True)
    with pytest.raises(RetriableError, match="response lost"):
        connector.create({"title": "Acme"}, stamp="p-1")
    created = connector.find_by_stamp("p-1")  # what an idempotent create looks for
    assert created is not None

    backend.inject_fault("update", RetriableError("response lost"), after_write=True)
    with pytest.raises(RetriableError):
        connector.update(created.ref, {"title": "Acme 2"}, expected_version=created.version)
    after = connector.get(created.ref)
    assert after is not None
    assert after.fields["title"] == "Acme 2"
    assert connector.update(created.ref, {"title": "Acme 3"}, expected_version=after.version)


def test_a_fault_can_break_a_pull_between_pages(backend: MemoryBackend) -> None:
    connector = connect(backend, page_size=1)
    for i in range(3):
        backend.add({"title": str(i)})
    backend.inject_fault("pull", RetriableError("502"))
    with pytest.raises(RetriableError):
        list(connector.pull(Cursor(), signpost=backend.clock()))
    pages = connector.pull(Cursor(), signpost=backend.clock())
    first = next(pages)
    backend.inject_fault("page", RetriableError("timeout"))
    with pytest.raises(RetriableError):
        next(pages)
    records, _, _ = pull_all(connector, first.cursor or Cursor(), backend.clock())
    assert [r.fields["title"] for r in records] == ["1", "2"]
    records, _, _ = pull_all(connector, Cursor(), backend.clock())
    assert [r.fields["title"] for r in records] == ["0", "1", "2"]


def test_faults_after_a_read_are_refused(backend: MemoryBackend) -> None:
    with pytest.raises(ValueError, match="after_write"):
        backend.inject_fault("get", RetriableError("x"), after_write=True)
    backend.inject_fault("get", RetriableError("x"))
    backend.clear_faults()
    assert connect(backend).get("MEM-1") is None


# --------------------------------------------------------------------------- pulls


def test_a_malformed_record_is_skipped_and_the_rest_still_pulled(backend: MemoryBackend) -> None:
    connector = connect(backend)
    good = backend.add({"title": "good"})
    bad = backend.add_raw(["not", "a", "mapping"])
    also_good = backend.add({"title": "also good"})
    for full in (False, True):
        records, skipped, _ = pull_all(connector, Cursor(), backend.clock(), full=full)
        assert [r.ref for r in records] == [good, also_good]
        assert [(s.ref, s.payload) for s in skipped] == [(bad, ["not", "a", "mapping"])]
        assert "not a mapping" in skipped[0].reason
    with pytest.raises(SkippableRecord):
        connector.get(bad)
    with pytest.raises(SkippableRecord):
        connector.update(bad, {"title": "x"}, expected_version=None)


def test_pull_is_ordered_paged_and_capped_at_the_signpost(backend: MemoryBackend) -> None:
    connector = connect(backend, page_size=2)
    made = [backend.add({"title": str(i)}) for i in range(3)]
    signpost = backend.clock()
    made.append(backend.add({"title": "after the signpost"}))
    pages = list(connector.pull(Cursor(), signpost=signpost))
    assert [[r.ref for r in p.records] for p in pages] == [made[:2], made[2:]]
    times = [r.updated_at for p in pages for r in p.records]
    assert times == sorted(times)
    positions = [datetime.fromisoformat(p.cursor.positions[""]) for p in pages if p.cursor]
    assert positions == [pages[0].records[-1].updated_at, signpost]
    records, _, _ = pull_all(connector, pages[-1].cursor or Cursor(), backend.clock())
    assert [r.ref for r in records] == [made[3]]


def test_deletions_show_in_incremental_pulls_only(backend: MemoryBackend) -> None:
    connector = connect(backend)
    ref = backend.add({"title": "Acme"}, stamp="p-1")
    _, _, cursor = pull_all(connector, Cursor(), backend.clock())
    backend.delete(ref, actor="alice")
    records, _, _ = pull_all(connector, cursor, backend.clock())
    assert [(r.ref, r.deleted, r.version, r.updated_by) for r in records] == [
        (ref, True, "2", "alice")
    ]
    assert pull_all(connector, Cursor(), backend.clock(), full=True)[0] == []
    assert connector.get(ref) is None
    assert connector.find_by_stamp("p-1") is None


def test_partitions_have_their_own_cursor_positions(backend: MemoryBackend) -> None:
    connector = connect(backend, partitions=["sales", "delivery"])
    sales = backend.add({"title": "s"}, partition="sales")
    delivery = backend.add({"title": "d"}, partition="delivery")
    backend.add({"title": "elsewhere"}, partition="other board")
    records, _, cursor = pull_all(connector, Cursor(), backend.clock())
    assert [r.ref for r in records] == [sales, delivery]
    assert set(cursor.positions) == {"sales", "delivery"}
    assert connector.create({"title": "new"}, stamp="p-1").ref in {
        r.ref for r in pull_all(connector, cursor, backend.clock())[0]
    }


def test_a_foreign_cursor_is_fatal(backend: MemoryBackend) -> None:
    with pytest.raises(FatalError, match="cursor"):
        list(connect(backend).pull(Cursor({"": "page-token-7"}), signpost=backend.clock()))


def test_server_time_never_repeats_even_when_the_clock_stands_still() -> None:
    backend = MemoryBackend(clock=lambda: START)
    first, second = backend.add({"n": 1}), backend.add({"n": 2})
    backend.edit(first, {"n": 3})
    times = [datetime.fromisoformat(backend.records()[r]["updated_at"]) for r in (second, first)]
    assert times == [START + timedelta(microseconds=1), START + timedelta(microseconds=2)]


# --------------------------------------------------------------------------- the rest


def test_update_against_a_deleted_record_is_stale(backend: MemoryBackend) -> None:
    connector = connect(backend)
    created = connector.create({"title": "Acme"}, stamp="p-1")
    backend.delete(created.ref)
    with pytest.raises(StaleVersion) as stale:
        connector.update(created.ref, {"title": "x"}, expected_version=created.version)
    assert (stale.value.expected, stale.value.actual) == (created.version, None)


def test_history_records_who_changed_what(backend: MemoryBackend) -> None:
    connector = connect(backend)
    ref = backend.add({"status": "lead", "title": "Acme"})
    backend.edit(ref, {"status": "proposal", "title": "Acme"}, actor="alice")
    edited_at = backend.records()[ref]["updated_at"]
    connector.update(ref, {"status": "negotiation"}, expected_version="2")
    entries = connector.history(ref)
    assert [(h.field, h.old, h.new, h.actor) for h in entries] == [
        ("status", "lead", "proposal", "alice"),
        ("status", "proposal", "negotiation", "salesbridge"),
    ]
    assert entries[0].at == datetime.fromisoformat(edited_at)
    assert connector.history(ref, since=entries[1].at) == entries[1:]


def test_discover_reports_fields_stages_and_users(backend: MemoryBackend) -> None:
    connector = connect(backend, stage_values=["Lead", "Won"])
    owner = {"id": "u7", "name": "Wang Fang", "email": None, "username": None}
    ref = backend.add({"title": "Acme", "amount": None, "owner": owner, "tags": ["a"]})
    backend.add({"amount": 10, "done": False})
    backend.edit(ref, {"title": "Acme 2"}, actor="alice")
    schema = connector.discover()
    assert {f.id: f.type for f in schema.fields} == {
        "amount": "number", "done": "boolean", "owner": "user", "status": "option",
        "tags": "multi", "title": "text",
    }  # fmt: skip
    assert schema.resolve("status")[0].options == ("Lead", "Won") == schema.stages
    assert {u.id for u in schema.users} == {"alice", "salesbridge", "u7"}
    assert "2 records" in connector.check()


def test_config_kind_and_defaults() -> None:
    config = MemoryConfig.model_validate({"kind": "memory", "interval": "1m"})
    assert (config.page_size, config.partitions, config.path) == (50, [""], None)
    with pytest.raises(ValueError, match="page_size"):
        MemoryConfig.model_validate({"kind": "memory", "page_size": 0})
    with pytest.raises(ValueError, match="kind"):
        MemoryConfig.model_validate({"kind": "jira"})


def test_stamps_are_not_unique_in_the_tool(backend: MemoryBackend) -> None:
    """A tool does not refuse a second record with the same stamp: the engine must look first."""
    connector = connect(backend)
    first = connector.create({"title": "a"}, stamp=(stamp := new_stamp()))
    second = connector.create({"title": "a"}, stamp=stamp)
    assert first.ref != second.ref
    assert connector.find_by_stamp(stamp) == first
