"""The Trello connector passes the contract against the emulator, and its own promises hold:
request counts, incremental pulls by board actions, stamps, custom fields, checklists, errors."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from bridge.errors import AuthError, FatalError, RateLimited, RetriableError, SkippableRecord
from connectors.base import Connector, Cursor, RateLimit, RemoteRecord, StaleVersion
from connectors.trello.connector import DEFAULT_RATE_LIMIT, TrelloConfig, TrelloConnector
from connectors.trello.emulator import TrelloEmulator
from connectors.trello.seed import SalesBoard, sales_board, seed_sales
from tests.contract import ConnectorContract, new_stamp

KEY, TOKEN = "trello-test-key-1234", "trello-test-token-5678"
FAST = RateLimit(requests=10_000, per=1.0)


@pytest.fixture(scope="module")
def emulator() -> Iterator[TrelloEmulator]:
    with TrelloEmulator(key=KEY, token=TOKEN, enforce_limits=False) as emu:
        yield emu


@pytest.fixture(scope="module")
def board(emulator: TrelloEmulator) -> SalesBoard:
    return sales_board(emulator)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRELLO_KEY", KEY)
    monkeypatch.setenv("TRELLO_TOKEN", TOKEN)


def config(emu: TrelloEmulator, *boards: str, **settings: Any) -> TrelloConfig:
    settings.setdefault("rate_limit", FAST)
    return TrelloConfig(
        base_url=f"{emu.base_url}/1",
        key="env:TRELLO_KEY",
        token="env:TRELLO_TOKEN",
        boards=list(boards),
        **settings,
    )


def remote_edit(emu: TrelloEmulator, ref: str, fields: Mapping[str, Any], actor: str) -> None:
    """Edit a card the way a person does in Trello's UI."""
    for key, value in fields.items():
        if key == "list":
            emu.move_card(ref, value, actor=actor)
        elif key in ("name", "desc", "due", "start", "dueComplete"):
            emu.edit_card(ref, actor=actor, **{key: value})
        else:
            emu.set_custom_field(ref, key, value, actor=actor)


class TestTrelloConnector(ConnectorContract):
    kind = "trello"
    editable_field = "Customer"
    editable_values = ("Acme Ltd", "Acme Ltd (APAC)")
    supports_archive = True
    keeps_history = True
    unknown_ref = "0123456789abcdef01234567"

    @pytest.fixture
    def connector(
        self, emulator: TrelloEmulator, board: SalesBoard, env: None
    ) -> Iterator[Connector[Any]]:
        with TrelloConnector("trello", config(emulator, board.board, page_size=2)) as c:
            self.emulator = emulator
            yield c

    def sample_fields(self) -> dict[str, Any]:
        return {
            "name": "Acme rollout",
            "desc": "Rollout for **Acme**.\n\nSecond paragraph.",
            "list": "Proposal",
            "due": "2026-04-01T09:30:00.000Z",
            "labels": ["Renewal"],
            "owner": {"id": None, "name": "Li Wei", "email": None, "username": "li.wei"},
            "Customer": "Acme Ltd",
            "Amount": 1200.5,
            "Probability": 40,
            "Close date": "2026-03-31T00:00:00.000Z",
            "Priority": "High",
            "Strategic": True,
            "tasks": [
                {"title": "Send proposal", "stage": "proposal", "done": False, "due": "2026-03-01"},
                {"title": "Book demo", "stage": None, "done": True, "due": None},
            ],
        }

    def remote_edit(self, connector: Connector[Any], ref: str, fields: Mapping[str, Any]) -> None:
        remote_edit(self.emulator, ref, fields, "wang.fang")

    def assert_fields_match(self, sent: Mapping[str, Any], got: Mapping[str, Any]) -> None:
        sent = dict(sent)
        owner = sent.pop("owner", None)
        if owner is not None:
            assert got["owner"]["username"] == owner["username"]
        super().assert_fields_match(sent, got)


# --------------------------------------------------------------------------- request counts


@pytest.fixture
def seeded(env: None) -> Iterator[tuple[TrelloEmulator, SalesBoard]]:
    with TrelloEmulator(key=KEY, token=TOKEN, enforce_limits=False) as emu:
        yield emu, seed_sales(emu, 12)


def pull_all(
    connector: TrelloConnector, cursor: Cursor, *, full: bool = False
) -> tuple[list[Any], list[SkippableRecord], Cursor]:
    records, skipped = [], []
    for page in connector.pull(cursor, signpost=datetime.now(UTC), full=full):
        records.extend(page.records)
        skipped.extend(page.skipped)
        cursor = page.cursor or cursor
    return records, skipped, cursor


def test_request_counts_of_full_and_incremental_pulls(
    seeded: tuple[TrelloEmulator, SalesBoard],
) -> None:
    emu, sales = seeded
    second = seed_sales(emu, 3, seed=8)
    with TrelloConnector("trello", config(emu, sales.board, second.board)) as c:
        emu.controls.reset()
        records, _, cursor = pull_all(c, Cursor(), full=True)
        assert len(records) == 15
        # per board: actions (one page: < 1000), lists, custom fields, cards
        assert emu.controls.count() == c.counter.snapshot(reset=True).total == 8
        assert emu.controls.count("GET", f"/1/boards/{sales.board}/actions") == 1

        emu.controls.reset()
        assert pull_all(c, cursor)[0] == []
        assert emu.controls.count() == 2, "no change costs one request per board"

        emu.move_card(sales.cards[0], "Delivery", actor="li.wei")
        emu.set_custom_field(sales.cards[1], "Amount", 99000, actor="wang.fang")
        emu.controls.reset()
        records, _, cursor = pull_all(c, cursor)
        assert sorted(r.ref for r in records) == sorted(sales.cards[:2])
        # actions per board + one batch: that board's custom fields and the changed cards
        assert emu.controls.count() == 2 + 1
        assert emu.controls.count("GET", "/1/batch") == 1
        assert emu.controls.count("GET", "/1/cards/") == 0
        assert pull_all(c, cursor)[0] == []


def test_an_incremental_pull_reads_changed_cards_ten_per_batch(
    seeded: tuple[TrelloEmulator, SalesBoard],
) -> None:
    """Changed cards come through GET /batch, ten routes a request (the board's custom
    fields in the first), and read exactly as GET /cards/{id} reads them; a card deleted
    since its action reads as deleted."""
    emu, sales = seeded
    with TrelloConnector("trello", config(emu, sales.board, page_size=50)) as c:
        _, _, cursor = pull_all(c, Cursor())
        changed = sales.cards[:11]
        for i, ref in enumerate(changed):
            emu.set_custom_field(ref, "Amount", 1000 + i, actor="wang.fang")
        emu.comment(changed[3], "Call booked", actor="li.wei")
        emu.move_card(changed[4], "Delivery", actor="chen.jing")
        emu.delete_card(changed[5], actor="li.wei")
        emu.controls.reset()
        records, skipped, cursor = pull_all(c, cursor)
        assert not skipped
        # actions + ceil((11 cards + custom fields) / 10) batches
        assert [(e.method, e.path) for e in emu.controls.log] == [
            ("GET", f"/1/boards/{sales.board}/actions"),
            ("GET", "/1/batch"),
            ("GET", "/1/batch"),
        ]
        assert sorted(r.ref for r in records) == sorted(changed)
        by_ref = {r.ref: r for r in records}
        assert by_ref[changed[5]].deleted
        for ref in changed:
            alone = c._read(ref)  # one GET /cards/{id}, as before batching
            assert by_ref[ref] == alone if alone is not None else by_ref[ref].deleted, ref
        assert by_ref[changed[2]].fields["Amount"] == 1002
        assert by_ref[changed[4]].fields["list"] == "Delivery"
        assert [a["what"] for a in by_ref[changed[3]].fields["comments"]][-1:] == ["Call booked"]
        assert pull_all(c, cursor)[0] == []


@pytest.mark.parametrize(
    "changes",
    [
        {"name": "Renamed deal"},
        {"list": "Negotiation", "desc": "New scope"},
        {"owner": {"username": "chen.jing"}, "labels": ["Partner"], "due": None},
        {"members": ["wang.fang", "li.wei"], "dueComplete": True},
    ],
    ids=["name", "list+desc", "owner+labels", "members"],
)
def test_an_update_of_card_attributes_costs_a_read_and_the_put(
    seeded: tuple[TrelloEmulator, SalesBoard], changes: dict[str, Any]
) -> None:
    """PUT /cards answers with the card and the nested data were read just before: no
    read-back, and the record returned is the one the next read makes (version included)."""
    emu, sales = seeded
    ref = sales.cards[4]
    with TrelloConnector("trello", config(emu, sales.board)) as c:
        before = c.get(ref)
        assert before is not None
        c.discover()  # lists, labels, members, fields: what a sync has read by then
        emu.controls.reset()
        updated = c.update(ref, dict(changes), expected_version=before.version)
        assert [(e.method, e.path) for e in emu.controls.log] == [
            ("GET", f"/1/cards/{ref}"),
            ("PUT", f"/1/cards/{ref}"),
        ]
        got = c.get(ref)
        assert got is not None
        assert updated.version == got.version != before.version
        assert updated.fields == got.fields
        assert updated.url == got.url and updated.stamp == got.stamp
        assert updated.updated_at == got.updated_at
        assert updated.updated_by is None, "the bridge's own actions are not read"


def test_update_many_reads_versions_ten_per_batch_and_puts_each_card(
    seeded: tuple[TrelloEmulator, SalesBoard],
) -> None:
    """The engine's batch push: version reads ten per GET /batch, one PUT per card. A card a
    person edited since the pull is StaleVersion and left as they made it; a gone card is
    StaleVersion; the others return the record the next read makes."""
    emu, sales = seeded
    unknown = "0123456789abcdef01234567"
    with TrelloConnector("trello", config(emu, sales.board)) as c:
        records, _, _ = pull_all(c, Cursor())
        before = {r.ref: r for r in records}
        c.discover()
        edited = sales.cards[3]
        emu.edit_card(edited, name="Their name", actor="wang.fang")
        theirs = c.get(edited)
        assert theirs is not None
        refs = [*sales.cards[:11], unknown]
        changes = {ref: {"name": f"Bridge name {i}"} for i, ref in enumerate(refs)}
        expected = {ref: (before[ref].version if ref in before else "v1") for ref in refs}
        emu.controls.reset()
        results = c.update_many(changes, expected)
        assert [(e.method, e.path.split("/")[2]) for e in emu.controls.log] == [
            ("GET", "batch"),
            *[("PUT", "cards")] * 9,
            ("GET", "batch"),
            ("PUT", "cards"),
        ]
        assert set(results) == set(refs)
        for ref in (edited, unknown):
            stale = results[ref]
            assert isinstance(stale, StaleVersion) and stale.ref == ref
        assert results[unknown].actual is None  # type: ignore[union-attr]
        assert c.get(edited) == theirs, "refused, yet changed"
        for i, ref in enumerate(refs):
            if ref in (edited, unknown):
                continue
            result = results[ref]
            assert isinstance(result, RemoteRecord), (ref, result)
            got = c.get(ref)
            assert got is not None and got.fields["name"] == f"Bridge name {i}"
            assert result.version == got.version != before[ref].version
            assert result.fields == got.fields


def test_update_many_answers_per_card_and_raises_what_stops_every_card(
    seeded: tuple[TrelloEmulator, SalesBoard],
) -> None:
    """A value a card cannot take is that card's SkippableRecord; expired credentials fail the
    whole call (the engine fails the tool for the run)."""
    emu, sales = seeded
    with TrelloConnector("trello", config(emu, sales.board)) as c:
        a, b = sales.cards[:2]
        results = c.update_many(
            {a: {"list": "No such list"}, b: {"dueComplete": True}}, {a: None, b: None}
        )
        assert isinstance(results[a], SkippableRecord)
        written = results[b]
        assert isinstance(written, RemoteRecord) and written.fields["dueComplete"] is True
        emu.expire_token(TOKEN)
        with pytest.raises(AuthError):
            c.update_many({a: {"name": "x"}, b: {"name": "y"}}, {a: None, b: None})


def test_an_update_that_writes_more_than_the_card_reads_it_back(
    seeded: tuple[TrelloEmulator, SalesBoard],
) -> None:
    """Custom fields (PUT customFields answers {}) and checklists are read back; an update
    with nothing to write is the version read alone."""
    emu, sales = seeded
    ref = sales.cards[5]
    with TrelloConnector("trello", config(emu, sales.board)) as c:
        before = c.get(ref)
        assert before is not None
        emu.controls.reset()
        updated = c.update(ref, {"name": "x", "Amount": 1234}, expected_version=before.version)
        assert [e.method for e in emu.controls.log] == ["GET", "PUT", "PUT", "GET"]
        assert updated.fields["Amount"] == 1234
        emu.controls.reset()
        same = c.update(ref, {}, expected_version=updated.version)
        assert [e.method for e in emu.controls.log] == ["GET"]
        assert same.version == updated.version


def test_an_edit_between_the_version_read_and_the_put_is_pulled(
    seeded: tuple[TrelloEmulator, SalesBoard],
) -> None:
    """A person's comment that lands between the guard's read and the PUT is not taken as
    the bridge's own: the version returned is the card without it, so the next pull, which
    sees the comment, finds a new version and reads the card as changed."""
    emu, sales = seeded
    ref = sales.cards[6]
    with TrelloConnector("trello", config(emu, sales.board)) as c:
        _, _, cursor = pull_all(c, Cursor())
        before = c.get(ref)
        assert before is not None
        original = c.http.request

        def request(method: str, path: str, **kw: Any) -> Any:
            if method == "PUT":
                emu.comment(ref, "Sneaked in", actor="chen.jing")
            return original(method, path, **kw)

        c.http.request = request  # type: ignore[method-assign]
        updated = c.update(ref, {"name": "Bridge rename"}, expected_version=before.version)
        c.http.request = original  # type: ignore[method-assign]
        records, _, _ = pull_all(c, cursor)
        (pulled,) = [r for r in records if r.ref == ref]
        assert pulled.version != updated.version
        assert [a["what"] for a in pulled.fields["comments"]][-1:] == ["Sneaked in"]


def test_actions_are_paged_with_before(seeded: tuple[TrelloEmulator, SalesBoard]) -> None:
    emu, sales = seeded
    with TrelloConnector("trello", config(emu, sales.board)) as c:
        _, _, cursor = pull_all(c, Cursor())
        for i in range(1003):
            emu.set_custom_field(sales.cards[i % 3], "Probability", i % 100, actor="li.wei")
        emu.controls.reset()
        records, _, cursor = pull_all(c, cursor)
        assert sorted(r.ref for r in records) == sorted(sales.cards[:3])
        pages = [e for e in emu.controls.log if e.path.endswith("/actions")]
        assert len(pages) == 2
        assert "before" in dict(pages[1].params)
        assert [r.fields["Probability"] for r in records if r.ref == sales.cards[0]] == [2]


def test_census_pages_through_more_than_a_thousand_actions(
    seeded: tuple[TrelloEmulator, SalesBoard],
) -> None:
    emu, sales = seeded
    for i in range(1000):
        emu.comment(sales.cards[0], f"note {i}", actor="chen.jing")
    actions = len(emu.board_actions(sales.board))
    with TrelloConnector("trello", config(emu, sales.board)) as c:
        emu.controls.reset()
        records, _, _ = pull_all(c, Cursor(), full=True)
        assert emu.controls.count() == 3 + (actions + 1000) // 1000
        first = next(r for r in records if r.ref == sales.cards[0])
        assert len(first.fields["comments"]) >= 1000
        assert first.fields["comments"][-1]["what"] == "note 999"


# --------------------------------------------------------------------------- records


def test_archived_deleted_and_moved_away_cards_read_as_deleted(
    seeded: tuple[TrelloEmulator, SalesBoard],
) -> None:
    emu, sales = seeded
    other = sales_board(emu, "Other board")
    with TrelloConnector("trello", config(emu, sales.board)) as c:
        _, _, cursor = pull_all(c, Cursor())
        emu.archive_card(sales.cards[0], actor="li.wei")
        emu.delete_card(sales.cards[1], actor="li.wei")
        emu.edit_card(sales.cards[2], idList=emu.list_named(sales.board, "Leads"), actor="li.wei")
        emu.cards[sales.cards[2]]["idBoard"] = other.board  # "Move card to board..."
        records, _, _ = pull_all(c, cursor)
        assert {r.ref: r.deleted for r in records} == dict.fromkeys(sales.cards[:3], True)
        census, _, _ = pull_all(c, Cursor(), full=True)
        assert not {r.ref for r in census} & set(sales.cards[:3])


def test_list_moves_become_history_with_their_own_times(
    seeded: tuple[TrelloEmulator, SalesBoard],
) -> None:
    emu, sales = seeded
    card = sales.cards[3]
    emu.move_card(card, "Delivery", actor="wang.fang")
    moves = [
        (a["date"], a["data"]["listBefore"]["name"], a["data"]["listAfter"]["name"])
        for a in emu.board_actions(sales.board)
        if a["type"] == "updateCard"
        and a["data"]["card"]["id"] == card
        and "listAfter" in a["data"]
    ]
    with TrelloConnector("trello", config(emu, sales.board)) as c:
        for record in (c.get(card), next(r for r in pull_all(c, Cursor())[0] if r.ref == card)):
            assert record is not None
            got = [(h.at, h.old, h.new) for h in record.history if h.field == "list" and h.old]
            assert [(at.isoformat(), o, n) for at, o, n in got] == [
                (datetime.fromisoformat(d.replace("Z", "+00:00")).isoformat(), o, n)
                for d, o, n in moves
            ]
            assert record.history[-1].actor == "wang.fang"
            assert record.updated_by == "wang.fang"


def test_every_custom_field_type_round_trips(
    emulator: TrelloEmulator, board: SalesBoard, env: None
) -> None:
    with TrelloConnector("trello", config(emulator, board.board)) as c:
        created = c.create({"name": "Types", "list": "Leads"}, stamp=new_stamp())
        assert [created.fields[k] for k in ("Amount", "Priority", "Strategic")] == [None] * 3
        values = {
            "Customer": "客户 Ltd",
            "Amount": 12000.25,
            "Probability": 75,
            "Close date": "2026-06-30",
            "Priority": "critical",
            "Strategic": False,
        }
        updated = c.update(created.ref, values, expected_version=created.version)
        assert {k: updated.fields[k] for k in values} == {
            **values,
            "Close date": "2026-06-30T00:00:00.000Z",
            "Priority": "Critical",
        }
        cleared = c.update(created.ref, dict.fromkeys(values), expected_version=None)
        assert all(cleared.fields[k] is None for k in values)
        for bad in ({"Amount": "12,5k"}, {"Priority": "Urgent"}, {"Colour": "red"}):
            with pytest.raises(SkippableRecord):
                c.update(created.ref, bad, expected_version=None)


def test_a_malformed_item_skips_only_its_card(seeded: tuple[TrelloEmulator, SalesBoard]) -> None:
    emu, sales = seeded
    emu.set_raw_item(sales.cards[4], "Amount", {"value": {"number": "twelve"}})
    with TrelloConnector("trello", config(emu, sales.board)) as c:
        for full in (True, False):
            records, skipped, _ = pull_all(c, Cursor(), full=full)
            assert len(records) == 11
            assert [s.ref for s in skipped] == [sales.cards[4]]
            assert "Amount" in skipped[0].reason
        with pytest.raises(SkippableRecord):
            c.get(sales.cards[4])


def test_stamp_marker_stays_out_of_the_description(
    emulator: TrelloEmulator, board: SalesBoard, env: None
) -> None:
    with TrelloConnector("trello", config(emulator, board.board)) as c:
        stamp = new_stamp()
        created = c.create({"name": "Stamped", "desc": "Notes"}, stamp=stamp)
        raw = emulator.cards[created.ref]["desc"]
        assert raw == f"Notes\n\n[salesbridge:{stamp}]"
        assert created.fields["desc"] == "Notes"
        assert created.fields["list"] == "Leads", "no list given: the board's first"
        updated = c.update(created.ref, {"desc": "New notes"}, expected_version=None)
        assert (updated.fields["desc"], updated.stamp) == ("New notes", stamp)
        emulator.edit_card(created.ref, desc="A person rewrote it all", actor="li.wei")
        assert c.find_by_stamp(stamp) is None
        assert c.get(created.ref) is not None


def test_owner_and_members_resolve_by_username(
    emulator: TrelloEmulator, board: SalesBoard, env: None
) -> None:
    with TrelloConnector("trello", config(emulator, board.board)) as c:
        created = c.create(
            {"name": "People", "members": ["wang.fang", "chen.jing"]}, stamp=new_stamp()
        )
        assert created.fields["owner"]["username"] == "wang.fang"
        owner = {"id": None, "name": None, "email": "li@example.com", "username": "li.wei"}
        updated = c.update(created.ref, {"owner": owner}, expected_version=None)
        assert updated.fields["members"] == ["li.wei", "chen.jing"]
        assert updated.fields["owner"] == {
            "id": emulator._member("li.wei")["id"],
            "name": "Li Wei",
            "email": None,
            "username": "li.wei",
        }
        with pytest.raises(SkippableRecord, match=r"users\.table"):
            c.update(created.ref, {"owner": {"username": "stranger"}}, expected_version=None)


def test_tasks_sync_as_checklists_and_deliverables_are_read(
    emulator: TrelloEmulator, board: SalesBoard, env: None
) -> None:
    with TrelloConnector("trello", config(emulator, board.board)) as c:
        tasks = [
            {"title": "Budget", "stage": "qualification", "done": True, "due": None},
            {"title": "Draft", "stage": "proposal", "done": False, "due": "2026-05-01"},
        ]
        created = c.create({"name": "Work", "tasks": tasks}, stamp=new_stamp())
        assert created.fields["tasks"] == tasks
        names = [
            emulator.checklists[x]["name"] for x in emulator.cards[created.ref]["idChecklists"]
        ]
        assert names == ["qualification", "proposal"]
        tasks = [
            {**tasks[1], "done": True},
            {"title": "Other", "stage": None, "done": False, "due": None},
        ]
        updated = c.update(created.ref, {"tasks": tasks}, expected_version=created.version)
        assert updated.fields["tasks"] == tasks
        checklist = emulator.add_checklist(created.ref, "Deliverables: proposal", actor="li.wei")
        emulator.add_check_item(checklist, "Proposal document", checked=True, actor="li.wei")
        got = c.get(created.ref)
        assert got is not None
        assert got.fields["deliverables"] == [
            {"kind": "proposal_document", "title": "Proposal document", "stage": "proposal",
             "status": "approved"}
        ]  # fmt: skip
        assert got.fields["tasks"] == tasks, "the deliverables checklist is not a task list"


def test_deliverables_and_comments_are_written_so_they_read_back_unchanged(
    emulator: TrelloEmulator, board: SalesBoard, env: None
) -> None:
    deliverables = [
        {"kind": "proposal", "title": "Proposal", "stage": "proposal", "status": "submitted"},
        {"kind": "contract", "title": "Contract v2", "stage": None, "status": "approved",
         "approved_at": "2026-04-01T12:00:00Z"},
        {"kind": "sow", "title": None, "stage": "signing", "status": "missing",
         "link": "https://example.com/sow?id=1&v=2", "submitted_at": "2026-03-30T08:00:00Z"},
    ]  # fmt: skip
    actions = [
        {"what": "Called Bob", "at": "2026-01-01T10:00:00Z", "by": "bob@example.com"},
        {"what": "Sent the deck", "at": "2026-01-02T11:30:00.250000Z", "by": None},
    ]
    with TrelloConnector("trello", config(emulator, board.board)) as c:
        created = c.create(
            {"name": "Both ways", "deliverables": deliverables, "comments": actions},
            stamp=new_stamp(),
        )
        assert created.fields["deliverables"] == deliverables
        assert created.fields["comments"] == actions
        names = [
            emulator.checklists[x]["name"] for x in emulator.cards[created.ref]["idChecklists"]
        ]
        assert names == ["Deliverables: proposal", "Deliverables", "Deliverables: signing"]

        c.counter.snapshot(reset=True)
        again = c.update(
            created.ref,
            {"deliverables": deliverables, "comments": actions},
            expected_version=created.version,
        )
        assert again.version == created.version
        assert c.counter.snapshot().total == 2, "read, then read back: nothing written"

        # A person ticks the submitted proposal, then takes back the contract's approval.
        xids = emulator.cards[created.ref]["idChecklists"]
        proposal = emulator.checklists[xids[0]]["checkItems"][0]["id"]
        contract = emulator.checklists[xids[1]]["checkItems"][0]["id"]
        emulator.set_check_item(created.ref, proposal, state="complete", actor="li.wei")
        emulator.set_check_item(created.ref, contract, state="incomplete", actor="li.wei")
        emulator.comment(created.ref, "Nice", actor="chen.jing")
        got = c.get(created.ref)
        assert got is not None
        assert [d["status"] for d in got.fields["deliverables"]] == [
            "approved", "submitted", "missing",
        ]  # fmt: skip

        # Back to the hub's view: the two items are re-ticked, the rest left alone.
        current = got.fields["comments"]
        assert current[:2] == actions and current[2]["by"] == "chen.jing"
        before = len(emulator.board_actions(board.board))
        back = c.update(
            created.ref,
            {"deliverables": deliverables, "comments": actions[:1]},
            expected_version=got.version,
        )
        assert back.fields["deliverables"] == deliverables
        assert back.fields["comments"] == current, "comments are never deleted"
        kinds = [a["type"] for a in emulator.board_actions(board.board)[before:]]
        assert kinds == ["updateCheckItemStateOnCard", "updateCheckItemStateOnCard"]


def test_discover_reports_lists_fields_labels_and_members(
    emulator: TrelloEmulator, board: SalesBoard, env: None
) -> None:
    with TrelloConnector("trello", config(emulator, board.board)) as c:
        schema = c.discover()
        assert schema.stages == (
            "Leads",
            "Qualifying",
            "Proposal",
            "Negotiation",
            "Signing",
            "Delivery",
        )
        types = {f.name: f.type for f in schema.fields if f.custom}
        assert types == {
            "Customer": "text", "Project number": "text", "Amount": "number",
            "Probability": "number", "Close date": "datetime", "Priority": "option",
            "Strategic": "checkbox",
        }  # fmt: skip
        assert schema.resolve("priority")[0].options == ("Low", "Medium", "High", "Critical")
        assert {u.username for u in schema.users} >= {"li.wei", "wang.fang", "chen.jing"}
        assert all(u.email is None for u in schema.users)
        assert schema.resolve("comments")[0].writable, "actions are written as new comments"
        assert not schema.resolve("created")[0].writable


# --------------------------------------------------------------------------- errors


def test_wrong_and_expired_credentials_are_auth_errors(
    emulator: TrelloEmulator, board: SalesBoard, env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRELLO_TOKEN", "not-the-token")
    with TrelloConnector("trello", config(emulator, board.board)) as c, pytest.raises(AuthError):
        c.check()
    emulator.add_token("short-lived-token", "li.wei")
    monkeypatch.setenv("TRELLO_TOKEN", "short-lived-token")
    with TrelloConnector("trello", config(emulator, board.board)) as c:
        assert "@li.wei" in c.check()
        emulator.expire_token("short-lived-token")
        with pytest.raises(AuthError, match="expired token") as info:
            list(c.pull(Cursor(), signpost=datetime.now(UTC)))
        assert "short-lived-token" not in str(info.value)


def test_credentials_never_reach_logs_or_errors(
    emulator: TrelloEmulator, board: SalesBoard, env: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    emulator.controls.fail(503, 1, path="/1/members/me")
    emulator.controls.fail(500, None, path=f"/1/boards/{board.board}/customFields")
    with TrelloConnector("trello", config(emulator, board.board)) as c:
        c.http._sleep = lambda s: None
        c.check()
        with pytest.raises(RetriableError) as info:
            c.discover()
    emulator.controls.reset()
    # Our own log lines; urllib3 and uvicorn log raw URLs at DEBUG/INFO, which is why the CLI
    # puts bridge.http.RedactingFilter on its handlers.
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("salesbridge")]
    text = "\n".join(ours) + str(info.value)
    assert KEY not in text and TOKEN not in text
    assert "key=***" in text


def test_429_is_retried_after_retry_after(
    emulator: TrelloEmulator, board: SalesBoard, env: None
) -> None:
    waits: list[float] = []
    emulator.controls.fail(429, 2, path="/1/members/me", retry_after=3)
    with TrelloConnector("trello", config(emulator, board.board)) as c:
        c.http._sleep = waits.append
        assert c.check()
    assert waits == [3, 3]
    emulator.controls.fail(429, None, path="/1/members/me")
    with TrelloConnector("trello", config(emulator, board.board)) as c:
        c.http._sleep = waits.append
        with pytest.raises(RateLimited):
            c.check()
    emulator.controls.reset()


def test_the_default_rate_limit_stays_under_trellos() -> None:
    # A bucket of C refilled at r/s allows at most C + 10 r requests in any 10 s window.
    assert (
        DEFAULT_RATE_LIMIT.requests + 10 * DEFAULT_RATE_LIMIT.requests / DEFAULT_RATE_LIMIT.per
        <= 100
    )


def test_emulator_limits_a_token_to_100_requests_per_10_seconds(env: None) -> None:
    now = [0.0]
    with TrelloEmulator(key=KEY, token=TOKEN) as emu:
        emu.controls.clock = lambda: now[0]
        board = sales_board(emu)
        with TrelloConnector("trello", config(emu, board.board)) as c:
            c.http.policy = type(c.http.policy)(max_attempts=1)
            for _ in range(100):
                c.http.get_json("members/me")
            with pytest.raises(RateLimited):
                c.http.get_json("members/me")
            last = emu.controls.log[-1]
            assert last.status == 429
            assert last.response_headers["x-rate-limit-api-token-max"] == "100"
            now[0] += 10
            assert c.http.get_json("members/me")["username"] == "salesbridge"


def test_config_checks_board_ids() -> None:
    with pytest.raises(ValueError, match="24 hex"):
        TrelloConfig.model_validate(
            {"kind": "trello", "key": "env:K", "token": "env:T", "boards": ["my-board"]}
        )
    with pytest.raises(ValueError, match="literal secret"):
        TrelloConfig.model_validate(
            {"kind": "trello", "key": "abc", "token": "env:T", "boards": ["0" * 24]}
        )


def test_an_unknown_board_is_fatal(emulator: TrelloEmulator, env: None) -> None:
    with (
        TrelloConnector("trello", config(emulator, "0123456789abcdef01234567")) as c,
        pytest.raises(FatalError, match="does not exist"),
    ):
        c.check()
