"""The Trello emulator's action index: cards and pages of actions are served from it (not by
scanning the whole log), so what they show must be exactly what a scan of the log shows, for
any interleaving of boards, cards and action kinds, and whatever way actions reach the log."""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from connectors.trello.emulator import TrelloEmulator, _at, _board_of, _card_of, _kinds
from connectors.trello.seed import seed_sales

KEY, TOKEN = "emulator-key", "emulator-token"


class Clock:
    def __init__(self) -> None:
        self.at = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.at += timedelta(milliseconds=1500)
        return self.at


@pytest.fixture
def emu() -> Iterator[TrelloEmulator]:
    emulator = TrelloEmulator(clock=Clock(), enforce_limits=False)
    with emulator:
        yield emulator


def churn(emu: TrelloEmulator, rnd: random.Random, boards: list[Any], steps: int) -> None:
    """People's edits on cards of several boards, interleaved at random."""
    for _ in range(steps):
        sales = rnd.choice(boards)
        card = rnd.choice(sales.cards)
        what = rnd.random()
        if what < 0.35:
            emu.comment(card, f"note {rnd.random():.3f}", actor="li.wei")
        elif what < 0.6:
            emu.move_card(card, rnd.choice(list(sales.lists)), actor="wang.fang")
        elif what < 0.8:
            emu.set_custom_field(card, "Probability", rnd.choice([10, 25, 50]), actor="chen.jing")
        else:
            emu.edit_card(card, name=f"renamed {rnd.random():.3f}", actor="li.wei")


def scanned_page(emu: TrelloEmulator, board: str, params: dict[str, str]) -> list[Any]:
    """GET /boards/{id}/actions as a scan of the whole log computes it (the reference)."""
    limit, page = int(params.get("limit", 50)), int(params.get("page", 0))
    kinds = _kinds(params.get("filter", "all"))
    found = [
        (i, a)
        for i, a in enumerate(emu.actions)
        if _board_of(a) == board and (kinds is None or a["type"] in kinds)
    ]
    for name, keep in (("since", lambda i, p: i > p), ("before", lambda i, p: i < p)):
        if name in params:
            value = params[name]
            pos = next((i for i, a in enumerate(emu.actions) if a["id"] == value), None)
            if pos is not None:
                found = [(i, a) for i, a in found if keep(i, pos)]
            else:
                at = datetime.fromtimestamp(int(value[:8], 16), UTC)
                found = [
                    (i, a) for i, a in found if (_at(a) > at if name == "since" else _at(a) < at)
                ]
    newest_first = [a for _, a in reversed(found)]
    return newest_first[page * limit : (page + 1) * limit]


def test_action_pages_are_those_a_scan_of_the_log_gives(emu: TrelloEmulator) -> None:
    rnd = random.Random(5)
    boards = [seed_sales(emu, 6, seed=1), seed_sales(emu, 5, seed=2)]
    churn(emu, rnd, boards, 120)
    for sales in boards:
        ids = [a["id"] for a in emu.actions if _board_of(a) == sales.board]
        other = [a["id"] for a in emu.actions if _board_of(a) != sales.board]
        for _ in range(40):
            params: dict[str, str] = {"limit": str(rnd.choice([1, 7, 50, 1000]))}
            if rnd.random() < 0.3:
                params["page"] = str(rnd.randint(0, 3))
            if rnd.random() < 0.5:
                params["since"] = rnd.choice(ids + other)
            if rnd.random() < 0.5:
                params["before"] = rnd.choice(ids + other)
            if rnd.random() < 0.3:
                params["filter"] = rnd.choice(["commentCard", "updateCard,commentCard", "all"])
            got = emu._actions_page(emu.boards[sales.board], params)
            assert got == scanned_page(emu, sales.board, params), params


def test_cards_show_their_own_actions_and_comment_counts(emu: TrelloEmulator) -> None:
    rnd = random.Random(9)
    boards = [seed_sales(emu, 5, seed=3), seed_sales(emu, 4, seed=4)]
    churn(emu, rnd, boards, 80)
    for card_id in [c for sales in boards for c in sales.cards]:
        own = [a for a in emu.actions if _card_of(a) == card_id]
        shown = emu._card_json(
            emu.cards[card_id], {"actions": "all", "actions_limit": "1000", "fields": "badges"}
        )
        assert shown["actions"] == own[::-1], "newest first, this card's only"
        comments = [a for a in own if a["type"] == "commentCard"]
        assert shown["badges"]["comments"] == len(comments)
        only = emu._card_json(emu.cards[card_id], {"actions": "commentCard", "actions_limit": "2"})
        assert only["actions"] == comments[::-1][:2]


def test_actions_appended_outside_the_edit_methods_are_indexed(emu: TrelloEmulator) -> None:
    """An export loaded after the log was indexed, or a log replaced wholesale, is still
    served exactly: the index catches up with (or rebuilds from) the log it finds."""
    sales = seed_sales(emu, 3)
    card = sales.cards[0]
    before = emu._card_json(emu.cards[card], {"fields": "badges"})["badges"]["comments"]
    foreign = copy.deepcopy(next(a for a in emu.actions if a["type"] == "commentCard"))
    foreign["id"] = "5f00000000000000000000ff"
    foreign["data"]["card"] = {"id": card, "name": "x"}
    emu.actions.append(foreign)
    assert emu._card_json(emu.cards[card], {"fields": "badges"})["badges"]["comments"] == (
        before + 1
    )
    page = emu._actions_page(emu.boards[sales.board], {"before": foreign["id"], "limit": "1000"})
    assert page == scanned_page(emu, sales.board, {"before": foreign["id"], "limit": "1000"})
    emu.actions = [a for a in emu.actions if a["id"] != foreign["id"]]  # replaced
    assert emu._card_json(emu.cards[card], {"fields": "badges"})["badges"]["comments"] == before
    assert emu._actions_page(emu.boards[sales.board], {"since": foreign["id"]}) == scanned_page(
        emu, sales.board, {"since": foreign["id"]}
    )


def test_card_numbers_are_never_reused(emu: TrelloEmulator) -> None:
    """idShort counts up per board, as Trello's does: a deleted card's number is not given
    again (counting the board's cards would have)."""
    sales = seed_sales(emu, 3)
    numbers = [emu.cards[c]["idShort"] for c in sales.cards]
    assert numbers == [1, 2, 3]
    emu.delete_card(sales.cards[1])
    new = emu.add_card(sales.lists["Leads"], "after a delete")
    assert emu.cards[new]["idShort"] == 4
    other = seed_sales(emu, 1, seed=2)
    assert emu.cards[other.cards[0]]["idShort"] == 1, "numbered per board"


def test_answers_are_encoded_before_the_state_moves_on(emu: TrelloEmulator) -> None:
    """Answers share values with the emulator's state (no deep copies): they are encoded
    under the lock, so what a request returns is the state at its time, and changing a
    card afterwards does not change an answer already given."""
    sales = seed_sales(emu, 2)
    card = sales.cards[0]
    url = f"{emu.base_url}/1/cards/{card}"
    params = {"key": KEY, "token": TOKEN, "checklists": "all", "customFieldItems": "true"}
    first = requests.get(url, params=params, timeout=10)
    assert first.status_code == 200
    assert first.headers["content-type"] == "application/json"
    body = first.json()
    emu.edit_card(card, name="changed later")
    item = body["checklists"][0]["checkItems"][0]
    emu.set_check_item(
        card, item["id"], state="complete" if item["state"] != "complete" else "incomplete"
    )
    assert body["name"] != "changed later"
    again = requests.get(url, params=params, timeout=10).json()
    assert again["name"] == "changed later"
    assert again["checklists"][0]["checkItems"][0]["state"] != item["state"]
    shown = emu.card(card)
    shown["checklists"][0]["checkItems"][0]["name"] = "mutated by a test"
    assert emu.card(card)["checklists"][0]["checkItems"][0]["name"] != "mutated by a test", (
        "card() hands out a copy"
    )
