"""Deletes: a vanished record unlinks and tombstones; other tools are touched only on opt-in."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.mapping import parse_mapping
from bridge.store import Store
from bridge.sync import SyncEngine
from connectors.memory import MemoryBackend, MemoryConfig, MemoryConnector
from tests.conftest import REPO

STAGES = [
    "Backlog",
    "Qualifying",
    "Proposal",
    "Proposal review",
    "Negotiation",
    "Signed",
    "Delivery",
]
BASE = (REPO / "mappings" / "memory.toml").read_text(encoding="utf-8")


@pytest.mark.parametrize("opt_in", [False, True])
def test_vanished_record_deletes_elsewhere_only_on_opt_in(tmp_path: Path, opt_in: bool) -> None:
    crm_b, board_b = MemoryBackend(), MemoryBackend()
    cfg = MemoryConfig(stage_values=STAGES)
    crm = MemoryConnector("crm", cfg, backend=crm_b)
    board = MemoryConnector("board", cfg, backend=board_b)
    spec = parse_mapping(BASE, source="crm.toml", connector="memory")
    board_text = BASE.replace("delete_in_tool = false", f"delete_in_tool = {str(opt_in).lower()}")
    assert ("delete_in_tool = true" in board_text) is opt_in
    board_spec = parse_mapping(board_text, source="board.toml", connector="memory")
    refs = [
        crm_b.add({"Title": f"Deal {i}", "Status": "Proposal", "Outcome": "Open"}, actor="ann")
        for i in range(6)
    ]
    with Store.open(f"sqlite:///{tmp_path / 's.db'}") as store:
        engine = SyncEngine(store, {"crm": crm, "board": board}, {"crm": spec, "board": board_spec})
        assert engine.run().ok
        assert len([e for e in board_b.records().values() if not e["deleted"]]) == 6
        pid = store.get_link("crm", refs[0]).project_id  # type: ignore[union-attr]
        crm_b.delete(refs[0], actor="ann")
        dry = engine.run(dry_run=True)
        archived = [
            r
            for r in dry.plan.rows()
            if r["target"] == "board" and r["reason"].startswith("archived")
        ]
        assert len(archived) == (1 if opt_in else 0)
        report = engine.run()
        assert report.ok, report.connectors
        live_board = [e for e in board_b.records().values() if not e["deleted"]]
        assert len(live_board) == (5 if opt_in else 6)
        assert store.get_link("crm", refs[0]).live is False  # type: ignore[union-attr]
        # Tombstoned only when no tool holds the project any more.
        assert (store.get_project(pid, include_tombstoned=False) is None) is opt_in
        assert engine.run(dry_run=True).plan.rows() == []


@pytest.mark.parametrize("elsewhere", [True, False])
def test_a_record_back_from_the_archive_returns_to_its_project(
    tmp_path: Path, elsewhere: bool
) -> None:
    """Archived, then restored: the record rejoins the project it left (live in another tool,
    or tombstoned when it was the project's only record), never a second copy of it."""
    crm_b, board_b = MemoryBackend(), MemoryBackend()
    cfg = MemoryConfig(stage_values=STAGES)
    crm = MemoryConnector("crm", cfg, backend=crm_b)
    board = MemoryConnector("board", cfg, backend=board_b)
    spec = parse_mapping(BASE, source="crm.toml", connector="memory")
    connectors = {"crm": crm, "board": board} if elsewhere else {"crm": crm}
    specs = {"crm": spec, "board": spec} if elsewhere else {"crm": spec}
    ref = crm_b.add({"Title": "Deal", "Status": "Proposal", "Outcome": "Open"}, actor="ann")
    with Store.open(f"sqlite:///{tmp_path / 's.db'}") as store:
        engine = SyncEngine(store, connectors, specs)  # type: ignore[arg-type]
        assert engine.run().ok
        pid = store.get_link("crm", ref).project_id  # type: ignore[union-attr]
        crm_b.delete(ref, actor="ann")
        assert engine.run().ok
        assert store.get_link("crm", ref).live is False  # type: ignore[union-attr]
        assert (store.get_project(pid, include_tombstoned=False) is None) is not elsewhere
        crm_b.restore(ref, actor="ann")
        crm_b.edit(ref, {"Title": "Deal (back)"}, actor="ann")
        report = engine.run()
        assert report.ok, report.connectors
        link = store.get_link("crm", ref)
        assert link is not None and link.live and link.project_id == pid
        project = store.get_project(pid, include_tombstoned=False)
        assert project is not None and project["name"] == "Deal (back)"
        assert sum(1 for _ in store.list_projects()) == 1
        assert store.list_conflicts(False) == []  # merged against the bases it left with
        if elsewhere:
            live = [e for e in board_b.records().values() if not e["deleted"]]
            assert len(live) == 1 and live[0]["fields"]["Title"] == "Deal (back)"
        assert engine.run(dry_run=True).plan.rows() == []
