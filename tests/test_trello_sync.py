"""End-to-end: the sync engine between a CRM-like memory tool and a Trello board (emulated).

Covers what a sales team does on a board (create cards, edit custom fields, drag cards between
lists, comment) and what goes wrong (conflicts, a 429 storm, an expired token, a malformed
card), through ``bridge.sync.SyncEngine`` with a real SQLite store.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from bridge.demo import STAGE_NAMES, TOOL_FIELDS
from bridge.mapping import load_mapping
from bridge.model import get_path
from bridge.store import Store
from bridge.sync import SyncEngine, SyncReport
from connectors.base import RateLimit
from connectors.memory import MemoryBackend, MemoryConfig, MemoryConnector
from connectors.trello.connector import TrelloConfig, TrelloConnector
from connectors.trello.emulator import TrelloEmulator
from connectors.trello.seed import SalesBoard, sales_board

REPO = Path(__file__).resolve().parent.parent
KEY, TOKEN = "trello-sync-key-1234", "trello-sync-token-5678"


class Sync:
    """A CRM (memory tool), a Trello board and the engine, wired as ``bridge.runtime`` does."""

    def __init__(
        self, tmp_path: Path, emu: TrelloEmulator, board: SalesBoard, *, lists: bool = False
    ) -> None:
        self.emu, self.board = emu, board
        self.crm_tool = MemoryBackend()
        crm_fields = dict(TOOL_FIELDS)
        crm_mapping = REPO / "mappings" / "memory.toml"
        if lists:  # a CRM that also keeps deliverables and actions
            crm_fields.update({"Deliverables": "json", "Actions": "json"})
            crm_mapping = tmp_path / "memory.toml"
            crm_mapping.write_text(
                (REPO / "mappings" / "memory.toml").read_text()
                + '\n[fields.deliverables]\nremote = "Deliverables"\ntype = "json"\n'
                + '\n[fields.actions]\nremote = "Actions"\ntype = "json"\n'
            )
        crm_config = MemoryConfig(fields=crm_fields, stage_values=list(STAGE_NAMES.values()))
        self.crm = MemoryConnector("crm", crm_config, backend=self.crm_tool)
        self.trello = TrelloConnector(
            "board",
            TrelloConfig(
                base_url=f"{emu.base_url}/1",
                key="env:TRELLO_KEY",
                token="env:TRELLO_TOKEN",
                boards=[board.board],
                rate_limit=RateLimit(requests=10_000, per=1.0),
            ),
        )
        self.waits: list[float] = []
        self.trello.http._sleep = self.waits.append  # retries wait without sleeping
        self.specs = {
            "crm": load_mapping(crm_mapping, self.crm.discover()),
            "board": load_mapping(REPO / "mappings" / "trello.toml", self.trello.discover()),
        }
        self.store = Store.open(f"sqlite:///{tmp_path / 'store.db'}")
        self.engine = SyncEngine(self.store, {"crm": self.crm, "board": self.trello}, self.specs)  # type: ignore[dict-item]

    def run(self, **options: Any) -> SyncReport:
        return self.engine.run(**options)

    def close(self) -> None:
        self.trello.close()
        self.store.close()

    def crm_add(self, **values: Any) -> str:
        canonical = {"stage": "lead", "customer.name": "Acme", "priority": "medium", **values}
        return self.crm_tool.add(self.specs["crm"].to_remote(canonical), actor="li.wei@example.com")

    def crm_values(self, ref: str) -> dict[str, Any]:
        record = self.crm.get(ref)
        assert record is not None
        return self.specs["crm"].to_canonical(record)

    def card_values(self, ref: str) -> dict[str, Any]:
        record = self.trello.get(ref)
        assert record is not None
        return self.specs["board"].to_canonical(record)

    def ref_in(self, connector: str, project: str) -> str:
        (ref,) = [
            lk.ref for lk in self.store.links_for_project(project) if lk.connector == connector
        ]
        return ref

    def project_of(self, connector: str, ref: str) -> str:
        link = self.store.get_link(connector, ref)
        assert link is not None and link.live
        return link.project_id


@pytest.fixture
def sync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sync]:
    monkeypatch.setenv("TRELLO_KEY", KEY)
    monkeypatch.setenv("TRELLO_TOKEN", TOKEN)
    with TrelloEmulator(key=KEY, token=TOKEN, enforce_limits=False) as emu:
        s = Sync(tmp_path, emu, sales_board(emu))
        yield s
        s.close()


@pytest.fixture
def rich(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sync]:
    """As ``sync``, with a CRM that keeps deliverables and actions too."""
    monkeypatch.setenv("TRELLO_KEY", KEY)
    monkeypatch.setenv("TRELLO_TOKEN", TOKEN)
    with TrelloEmulator(key=KEY, token=TOKEN, enforce_limits=False) as emu:
        s = Sync(tmp_path, emu, sales_board(emu), lists=True)
        yield s
        s.close()


def usd(amount: str) -> dict[str, str]:
    return {"amount": amount, "currency": "USD"}


def owner(name: str) -> dict[str, str]:
    return {"name": name.replace(".", " ").title(), "email": f"{name}@example.com"}


def assert_quiet(report: SyncReport) -> None:
    assert report.ok, {n: r.error for n, r in report.connectors.items()}
    for name, r in report.connectors.items():
        writes = {k: v for k, v in r.counts.items() if k in ("pushed", "push_created", "created")}
        assert not any(writes.values()), f"{name} still writes: {writes}"


def test_projects_flow_both_ways_and_converge(sync: Sync) -> None:
    deal = sync.crm_add(
        name="Acme rollout", stage="proposal", amount=usd("120000.50"), owner=owner("li.wei"),
        priority="high", expected_close_date="2026-06-30",
    )  # fmt: skip
    card = sync.emu.add_card(
        sync.board.lists["Qualifying"],
        "Globex data platform",
        actor="wang.fang",
        members=["wang.fang"],
        custom={"Customer": "Globex", "Amount": 56000, "Priority": "Low"},
    )
    report = sync.run()
    assert report.ok, {n: r.error for n, r in report.connectors.items()}
    assert report.connectors["board"].counts["push_created"] == 1
    assert report.connectors["crm"].counts["push_created"] == 1

    pid = sync.project_of("crm", deal)
    new_card = sync.ref_in("board", pid)
    raw = sync.emu.cards[new_card]
    assert raw["idList"] == sync.board.lists["Proposal"]
    assert raw["desc"].endswith(f"[salesbridge:{pid}]")
    got = sync.card_values(new_card)
    assert (got["stage"], got["amount"], got["owner"]) == (
        "proposal", usd("120000.5"), owner("li.wei")
    )  # fmt: skip
    assert (got["priority"], got["expected_close_date"]) == ("high", "2026-06-30")

    from_board = sync.ref_in("crm", sync.project_of("board", card))
    got = sync.crm_values(from_board)
    assert (got["name"], got["stage"], got["customer.name"]) == (
        "Globex data platform", "qualification", "Globex"
    )  # fmt: skip
    assert (got["amount"], got["priority"], got["owner"]) == (
        usd("56000"), "low", owner("wang.fang")
    )  # fmt: skip

    assert_quiet(sync.run())
    assert len(sync.emu.cards) == 2, "a second run creates nothing"


def test_moves_and_custom_field_edits_reach_the_crm(sync: Sync) -> None:
    deal = sync.crm_add(name="Initech", stage="lead", amount=usd("1000"))
    sync.run()
    pid = sync.project_of("crm", deal)
    card = sync.ref_in("board", pid)

    sync.emu.move_card(card, "Negotiation", actor="chen.jing")
    sync.emu.set_custom_field(card, "Amount", 2500.75, actor="chen.jing")
    sync.emu.set_custom_field(card, "Priority", "Critical", actor="chen.jing")
    sync.emu.set_custom_field(card, "Close date", "2026-09-30", actor="chen.jing")
    sync.emu.comment(card, "Budget approved", actor="chen.jing")
    report = sync.run()
    assert report.ok
    got = sync.crm_values(deal)
    assert (got["stage"], got["amount"], got["priority"], got["expected_close_date"]) == (
        "negotiation", usd("2500.75"), "critical", "2026-09-30"
    )  # fmt: skip
    hub = sync.store.get_project(pid)
    assert hub is not None
    assert [a["what"] for a in hub["actions"]] == ["Budget approved"]
    assert hub["last_meaningful_update_by"] == "chen.jing"
    events = [e for e in sync.store.events_for(pid) if e.field == "stage" and e.source == "board"]
    assert [(e.old, e.new, e.actor) for e in events] == [("lead", "negotiation", "chen.jing")]

    # The stage history the board itself keeps, with the move's own time.
    record = sync.trello.get(card)
    assert record is not None
    moves = [h for h in record.history if h.field == "list" and h.old]
    move = next(
        a for a in sync.emu.board_actions(sync.board.board)
        if a["type"] == "updateCard" and "listAfter" in a["data"]
    )  # fmt: skip
    assert [(h.old, h.new, h.actor) for h in moves] == [("Leads", "Negotiation", "chen.jing")]
    assert moves[0].at == datetime.fromisoformat(move["date"].replace("Z", "+00:00"))
    assert_quiet(sync.run())


def test_hub_edits_move_cards_and_set_custom_fields(sync: Sync) -> None:
    deal = sync.crm_add(name="Hooli", stage="lead", amount=usd("1000"))
    sync.run()
    card = sync.ref_in("board", sync.project_of("crm", deal))
    changes = sync.specs["crm"].to_remote(
        {"stage": "signing", "amount": usd("4200"), "probability": 80, "name": "Hooli, phase 2"}
    )
    sync.crm_tool.edit(deal, changes, actor="li.wei@example.com")
    assert sync.run().ok
    raw = sync.emu.cards[card]
    assert (raw["idList"], raw["name"]) == (sync.board.lists["Signing"], "Hooli, phase 2")
    got = sync.card_values(card)
    assert (got["amount"], got["probability"]) == (usd("4200"), 80)
    assert_quiet(sync.run())


def test_both_sides_edit_the_name_newest_wins_and_the_conflict_is_kept(sync: Sync) -> None:
    deal = sync.crm_add(name="Umbrella", stage="lead")
    sync.run()
    pid = sync.project_of("crm", deal)
    card = sync.ref_in("board", pid)
    sync.crm_tool.edit(deal, {"Title": "Umbrella (CRM)"}, actor="li.wei@example.com")
    time.sleep(0.005)  # Trello's times have milliseconds: the board's edit must be later
    sync.emu.edit_card(card, name="Umbrella (board)", actor="wang.fang")
    report = sync.run()
    assert report.ok
    conflicts = sync.store.list_conflicts(False, project_id=pid)
    assert [c.field for c in conflicts] == ["name"]
    assert {conflicts[0].hub_value, conflicts[0].remote_value} == {
        "Umbrella (CRM)",
        "Umbrella (board)",
    }
    assert sync.crm_values(deal)["name"] == sync.card_values(card)["name"]
    assert sync.card_values(card)["name"] == "Umbrella (board)", "the board's edit is newer"


def test_a_429_storm_is_waited_out(sync: Sync) -> None:
    deal = sync.crm_add(name="Stark", stage="lead")
    sync.run()
    card = sync.ref_in("board", sync.project_of("crm", deal))
    sync.emu.move_card(card, "Proposal", actor="li.wei")
    sync.emu.controls.fail(429, 4, path="/1/", retry_after=2)
    report = sync.run()
    assert report.ok
    assert sync.waits == [2, 2, 2, 2]
    assert sync.crm_values(deal)["stage"] == "proposal"

    sync.emu.edit_card(card, name="Stark Industries", actor="li.wei")
    sync.emu.controls.fail(429, None, path="/1/boards/")
    report = sync.run()
    assert report.connectors["board"].status == "failed"
    assert "429" in (report.connectors["board"].error or "")
    assert report.connectors["crm"].status == "ok"
    sync.emu.controls.reset()
    assert sync.run().ok
    assert sync.crm_values(deal)["name"] == "Stark Industries", "nothing lost in the storm"


def test_an_expired_token_stops_only_trello_and_unlinks_nothing(sync: Sync) -> None:
    deals = [sync.crm_add(name=f"Deal {i}", stage="lead") for i in range(3)]
    sync.run()
    links = len(sync.store.links_for_connector("board"))
    sync.emu.expire_token(TOKEN)
    sync.crm_tool.edit(deals[0], {"Title": "Deal 0, renamed"}, actor="li.wei@example.com")
    report = sync.run()
    assert report.connectors["board"].status == "failed"
    assert "expired token" in (report.connectors["board"].error or "")
    assert TOKEN not in (report.connectors["board"].error or "")
    assert report.connectors["crm"].status == "ok"
    assert len(sync.store.links_for_connector("board")) == links
    sync.emu.tokens[TOKEN].expired = False  # the user pasted a fresh token
    assert sync.run().ok
    card = sync.ref_in("board", sync.project_of("crm", deals[0]))
    assert sync.emu.cards[card]["name"] == "Deal 0, renamed"


def test_a_malformed_card_is_quarantined_while_the_rest_sync(sync: Sync) -> None:
    deals = [sync.crm_add(name=f"Deal {i}", stage="lead") for i in range(2)]
    sync.run()
    bad, good = (sync.ref_in("board", sync.project_of("crm", d)) for d in deals)
    sync.emu.set_raw_item(bad, "Amount", {"value": {"number": "twelve thousand"}})
    sync.emu.edit_card(bad, name="Deal 0, edited", actor="li.wei")  # an action, so it is pulled
    sync.emu.move_card(good, "Proposal", actor="li.wei")
    report = sync.run()
    assert report.connectors["board"].counts["quarantined"] == 1
    (entry,) = sync.store.list_quarantine("board")
    assert entry.ref == bad
    assert "Amount" in entry.reason and "twelve thousand" in entry.reason
    assert sync.crm_values(deals[1])["stage"] == "proposal"

    sync.emu.set_custom_field(bad, "Amount", 12000, actor="li.wei")
    assert sync.run().ok
    assert sync.store.list_quarantine("board") == []
    assert sync.crm_values(deals[0])["name"] == "Deal 0, edited"


def test_archiving_a_card_unlinks_it(sync: Sync) -> None:
    deals = [sync.crm_add(name=f"Deal {i}", stage="lead") for i in range(6)]
    sync.run()
    card = sync.ref_in("board", sync.project_of("crm", deals[0]))
    sync.emu.archive_card(card, actor="li.wei")
    report = sync.run()
    assert report.connectors["board"].counts["unlinked"] == 1
    assert sync.store.get_link("board", card) is not None
    assert not sync.store.get_link("board", card).live  # type: ignore[union-attr]
    assert sync.crm.get(deals[0]) is not None, "nothing is deleted elsewhere"
    assert len(sync.emu.cards) == 6, "and the card is not created again"
    assert get_path(sync.store.get_project(sync.project_of("crm", deals[1])) or {}, "name")


# --------------------------------------------------------------------------- deliverables, comments


def assert_nothing_planned(report: SyncReport, *, only: tuple[str, ...] = ()) -> None:
    """No echo: the read-back of what was written is no news anywhere (``only``: for these
    fields; a census also fills the pull-only fields of cards the bridge created)."""
    assert_quiet(report)
    rows = [(r["field"], r["new"]) for r in report.plan.rows()]
    assert [r for r in rows if not only or r[0] in only] == [], rows


def _items(emu: TrelloEmulator, card: str) -> dict[str, list[tuple[str, str]]]:
    """The card's checklists: name -> [(item name, state)]."""
    return {
        emu.checklists[x]["name"]: [
            (i["name"], i["state"]) for i in emu.checklists[x]["checkItems"]
        ]
        for x in emu.cards[card]["idChecklists"]
    }


def _comments(emu: TrelloEmulator, card: str) -> list[str]:
    return [
        a["data"]["text"]
        for a in emu.board_actions(emu.cards[card]["idBoard"])
        if a["type"] == "commentCard" and a["data"]["card"]["id"] == card
    ]


DELIVERABLES = [
    {"kind": "needs_analysis", "stage": "qualification", "title": "needs analysis",
     "status": "approved", "approved_at": "2026-03-02T10:00:00Z"},
    {"kind": "proposal", "stage": "proposal", "title": "Proposal", "status": "draft"},
    {"kind": "pricing_sheet", "stage": "proposal", "title": None, "status": "submitted",
     "link": "https://docs.example.com/pricing/7"},
]  # fmt: skip
ACTIONS = [
    {"what": "Kick-off call", "at": "2026-03-01T09:00:00Z", "by": "li.wei@example.com"},
    {"what": "Sent the proposal\nwith two options", "at": "2026-03-05T16:30:00Z", "by": None},
]


def test_deliverables_and_actions_are_written_back_without_echo(rich: Sync) -> None:
    deal = rich.crm_add(name="Acme", stage="proposal", deliverables=DELIVERABLES, actions=ACTIONS)
    assert rich.run().ok
    pid = rich.project_of("crm", deal)
    card = rich.ref_in("board", pid)
    assert _items(rich.emu, card) == {
        "Deliverables: qualification": [
            ("needs analysis [approved] [salesbridge: approved=2026-03-02T10:00:00Z]", "complete")
        ],
        "Deliverables: proposal": [
            ("Proposal [draft]", "incomplete"),
            ("pricing_sheet [submitted] [salesbridge: untitled; "
             "link=https://docs.example.com/pricing/7]", "incomplete"),
        ],
    }  # fmt: skip
    assert _comments(rich.emu, card) == [
        "Kick-off call\n[salesbridge: 2026-03-01T09:00:00Z by li.wei@example.com]",
        "Sent the proposal\nwith two options\n[salesbridge: 2026-03-05T16:30:00Z by ]",
    ]
    hub = rich.store.get_project(pid)
    assert hub is not None
    got = rich.card_values(card)
    assert (got["deliverables"], got["actions"]) == (hub["deliverables"], hub["actions"])
    assert_nothing_planned(rich.run())
    assert_nothing_planned(rich.run(full=True), only=("deliverables", "actions"))

    # The CRM moves the proposal on: the item is renamed, nothing is added.
    moved = [*DELIVERABLES[:1], {**DELIVERABLES[1], "status": "submitted"}, DELIVERABLES[2]]
    added = [*ACTIONS, {"what": "Pricing call", "at": "2026-03-09T08:00:00Z", "by": None}]
    changes = rich.specs["crm"].to_remote({"deliverables": moved, "actions": added})
    rich.crm_tool.edit(deal, changes, actor="li.wei@example.com")
    assert rich.run().ok
    items = _items(rich.emu, card)
    assert items["Deliverables: proposal"][0] == ("Proposal [submitted]", "incomplete")
    assert len(items) == 2 and len(items["Deliverables: proposal"]) == 2
    assert len(_comments(rich.emu, card)) == 3, "only the new action is commented"
    assert_nothing_planned(rich.run())

    # A person approves it by ticking the item, and comments.
    xid = rich.emu.cards[card]["idChecklists"][1]
    item = rich.emu.checklists[xid]["checkItems"][0]["id"]
    rich.emu.set_check_item(card, item, state="complete", actor="chen.jing")
    rich.emu.comment(card, "Customer signed off", actor="chen.jing")
    assert rich.run().ok
    crm = rich.crm_values(deal)
    assert crm["deliverables"][1]["status"] == "approved"
    assert crm["actions"][-1]["what"] == "Customer signed off"
    assert crm["actions"][-1]["by"] == "chen.jing"
    assert len(_comments(rich.emu, card)) == 4, "a person's comment is not written again"
    assert_nothing_planned(rich.run())
    assert_nothing_planned(rich.run(full=True), only=("deliverables", "actions"))


def test_a_person_made_checklist_is_kept_and_read_as_before(rich: Sync) -> None:
    card = rich.emu.add_card(rich.board.lists["Proposal"], "Globex", actor="wang.fang")
    checklist = rich.emu.add_checklist(card, "Deliverables: proposal", actor="wang.fang")
    rich.emu.add_check_item(checklist, "Proposal document", checked=True, actor="wang.fang")
    rich.emu.add_check_item(checklist, "Pricing", actor="wang.fang")
    rich.emu.comment(card, "Met the CFO", actor="wang.fang")
    assert rich.run().ok
    deal = rich.ref_in("crm", rich.project_of("board", card))
    crm = rich.crm_values(deal)
    assert [(d["kind"], d["status"]) for d in crm["deliverables"]] == [
        ("proposal_document", "approved"), ("pricing", "missing"),
    ]  # fmt: skip
    assert [(a["what"], a["by"]) for a in crm["actions"]] == [("Met the CFO", "wang.fang")]
    assert_nothing_planned(rich.run())

    # The CRM drafts the pricing: only that item changes; the person's checklist stays.
    drafted = [crm["deliverables"][0], {**crm["deliverables"][1], "status": "draft"}]
    rich.crm_tool.edit(
        deal, rich.specs["crm"].to_remote({"deliverables": drafted}), actor="li.wei@example.com"
    )
    assert rich.run().ok
    assert _items(rich.emu, card) == {
        "Deliverables: proposal": [
            ("Proposal document", "complete"), ("Pricing [draft]", "incomplete"),
        ]
    }  # fmt: skip
    assert_nothing_planned(rich.run())

    # A new deliverable ahead of the others lands ahead of them, so it reads back in order.
    nda = {"kind": "nda", "stage": "proposal", "title": "NDA", "status": "submitted"}
    rich.crm_tool.edit(
        deal,
        rich.specs["crm"].to_remote({"deliverables": [nda, *drafted]}),
        actor="li.wei@example.com",
    )
    assert rich.run().ok
    assert [n for n, _ in _items(rich.emu, card)["Deliverables: proposal"]] == [
        "NDA [submitted]", "Proposal document", "Pricing [draft]",
    ]  # fmt: skip
    got = rich.card_values(card)["deliverables"]
    assert [d["kind"] for d in got] == ["nda", "proposal_document", "pricing"]
    assert_nothing_planned(rich.run())
    assert_nothing_planned(rich.run(full=True), only=("deliverables", "actions"))

    # The CRM drops every deliverable: the items go, the checklist a person made stays.
    rich.crm_tool.edit(
        deal, rich.specs["crm"].to_remote({"deliverables": []}), actor="li.wei@example.com"
    )
    assert rich.run().ok
    assert _items(rich.emu, card) == {"Deliverables: proposal": []}
    assert_nothing_planned(rich.run())
    assert_nothing_planned(rich.run(full=True), only=("deliverables", "actions"))
