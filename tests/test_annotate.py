"""Rule annotations reach the tools through an ordinary mapped field, and leave when resolved."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from bridge.mapping import load_mapping, parse_mapping
from bridge.rules import load_rules
from bridge.rules.sweep import NOTE_FIELD, sweep
from bridge.store import Store
from bridge.sync import SyncEngine
from connectors.memory import MemoryBackend, MemoryConfig, MemoryConnector
from tests.conftest import REPO

STAGES = ["Backlog", "Qualifying", "Proposal", "Negotiation", "Signed", "Delivery"]

# The tool's mapping: the default memory mapping plus the note, pushed to "Plan note".
NOTE_MAPPING = (
    (REPO / "mappings" / "memory.toml").read_text(encoding="utf-8")
    + f"""
[fields.contract_value]
remote = "Contract value"
type = "money"
currency = "USD"
direction = "pull"

[fields.custom.{NOTE_FIELD}]
remote = "Plan note"
type = "text"
direction = "push"
"""
)


def test_violation_note_is_written_to_the_tool_and_cleared(tmp_path: Path) -> None:
    now = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
    backend = MemoryBackend(clock=lambda: now)
    cfg = MemoryConfig(stage_values=[*STAGES, "Proposal review"])
    conn = MemoryConnector("crm", cfg, backend=backend)
    spec = parse_mapping(NOTE_MAPPING, source="note.toml", connector="memory")
    plain = load_mapping(REPO / "mappings" / "memory.toml")
    assert f"custom.{NOTE_FIELD}" not in plain.pushed_paths  # off unless a mapping asks
    ref = backend.add(
        {
            "Title": "Acme rollout",
            "Status": "Proposal",
            "Outcome": "Open",
            "Priority": "High",
            "Amount": 900000,
            "Currency": "USD",
        },
        actor="li.wei@example.com",
    )
    with Store.open(f"sqlite:///{tmp_path / 's.db'}") as store:
        engine = SyncEngine(store, {"crm": conn}, {"crm": spec}, clock=lambda: now)
        assert engine.run().ok
        pid = store.get_link("crm", ref).project_id  # type: ignore[union-attr]
        before = store.get_project(pid)
        assert before is not None
        pack = load_rules(None)
        report = sweep(store, pack, now=now + timedelta(days=1), annotate_lang="en")
        note = (store.get_project(pid) or {})["custom"].get(NOTE_FIELD)
        assert note and pid in report.annotations
        assert engine.run().ok
        assert backend.entry(ref)["fields"]["Plan note"] == note  # type: ignore[index]
        after = store.get_project(pid) or {}
        # The bridge's own write is not a person's update.
        assert after["last_meaningful_update_at"] == before["last_meaningful_update_at"]
        assert not [
            e for e in store.events_for(pid) if e.field == f"custom.{NOTE_FIELD}" and e.meaningful
        ]
        # A second sweep with nothing changed writes nothing; the note is stable.
        sweep(store, pack, now=now + timedelta(days=1), annotate_lang="en")
        assert engine.run(dry_run=True).plan.rows() == []
        # The rep moves the project back to the lead stage where those rules do not apply:
        # the note clears in the hub and in the tool.
        backend.edit(ref, {"Status": "Backlog"}, actor="li.wei@example.com")
        assert engine.run().ok
        sweep(store, pack, now=now + timedelta(days=1), annotate_lang="en")
        remaining = (store.get_project(pid) or {})["custom"].get(NOTE_FIELD)
        assert remaining != note
        assert engine.run().ok
        assert backend.entry(ref)["fields"].get("Plan note") == remaining  # type: ignore[index]
