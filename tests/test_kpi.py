"""KPIs on a small fixed data set; every expected value is worked out by hand in the comments.

Period P = [2026-02-01, 2026-03-01), previous Q = [2026-01-04, 2026-02-01). Base currency USD,
1 CNY = 0.14 USD, 1 EUR = 1.08 USD, JPY has no rate.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from bridge.digest.kpi import (
    History,
    Judgement,
    MoneyConverter,
    Period,
    _state,
    compute,
    pack_judge,
    state_at,
)
from bridge.model import Money, Person, SalesProject
from bridge.rules import Calendar, load_rules
from bridge.store import Event

STAGES = ["lead", "qualification", "proposal", "negotiation", "signing", "delivery"]
MONEY = MoneyConverter("USD", {"CNY": Decimal("0.14"), "EUR": Decimal("1.08")})
END = datetime(2026, 3, 1, tzinfo=UTC)
P = Period.ending(END, timedelta(days=28))


def d(month: int, day: int, year: int = 2026) -> datetime:
    return datetime(year, month, day, 12, tzinfo=UTC)


def proj(pid: str, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"id": pid, "name": pid, "owner": Person(email=f"{pid}@x.com")}
    return SalesProject(**(base | kw)).to_json()


def ev(pid: str, at: datetime, field: str, old: Any, new: Any) -> Event:
    return Event(
        project_id=pid, at=at, field=field, old=old, new=new, source="crm", meaningful=True
    )


def usd(n: int, cur: str = "USD") -> Money:
    return Money(amount=Decimal(n), currency=cur)


def dataset() -> list[History]:
    return [
        # A: won in P (event 02-11), created 01-01 -> cycle 41 days; 100,000 USD
        History(
            proj(
                "A",
                created_at=d(1, 1),
                status="won",
                stage="signing",
                probability=50,
                amount=usd(100_000),
                last_meaningful_update_at=d(2, 11),
            ),
            [ev("A", d(2, 11), "status", "open", "won")],
        ),
        # B: won in P (02-20), created 01-21 -> 30 days; 300,000 USD
        History(
            proj(
                "B",
                created_at=d(1, 21),
                status="won",
                stage="signing",
                probability=50,
                amount=usd(300_000),
                last_meaningful_update_at=d(2, 20),
            ),
            [ev("B", d(2, 20), "status", "open", "won")],
        ),
        # C: lost in P (02-15); in proposal at 30 %, 50,000 USD; last update 01-10
        History(
            proj(
                "C",
                created_at=d(12, 1, 2025),
                status="lost",
                stage="proposal",
                probability=30,
                amount=usd(50_000),
                last_meaningful_update_at=d(1, 10),
                custom={"complete": True},
            ),
            [ev("C", d(2, 15), "status", "open", "lost")],
        ),
        # D: lost in Q (01-20)
        History(
            proj("D", created_at=d(11, 1, 2025), status="lost", amount=usd(10_000)),
            [ev("D", d(1, 20), "status", "open", "lost")],
        ),
        # E: won in Q (01-25), created 2025-12-15 -> 41 days; 200,000 USD
        History(
            proj("E", created_at=d(12, 15, 2025), status="won", amount=usd(200_000)),
            [ev("E", d(1, 25), "status", "open", "won")],
        ),
        # F: open; created 01-10 in lead, lead->qualification 01-20 (Q), ->proposal 02-10 (P)
        History(
            proj(
                "F",
                created_at=d(1, 10),
                stage="proposal",
                probability=40,
                amount=usd(1_000_000, "CNY"),  # 140,000 USD
                last_meaningful_update_at=d(2, 25),
                custom={"complete": True},
            ),
            [
                ev("F", d(1, 20), "stage", "lead", "qualification"),
                ev("F", d(2, 10), "stage", "qualification", "proposal"),
            ],
        ),
        # G: open; created 02-05 in lead, lead->qualification 02-15; 200,000 USD at 20 %
        History(
            proj(
                "G",
                created_at=d(2, 5),
                stage="qualification",
                probability=20,
                amount=usd(200_000),
                last_meaningful_update_at=d(2, 10),
                custom={"complete": True},
            ),
            [ev("G", d(2, 15), "stage", "lead", "qualification")],
        ),
        # H: open; created 02-20 in lead; 80,000 EUR (86,400 USD) at 10 %
        History(
            proj(
                "H",
                created_at=d(2, 20),
                stage="lead",
                probability=10,
                amount=usd(80_000, "EUR"),
                last_meaningful_update_at=d(2, 28),
                custom={"complete": False},
            )
        ),
        # J: open in negotiation since long ago, in JPY (no rate), not tracked
        History(
            proj(
                "J",
                created_at=d(10, 1, 2025),
                stage="negotiation",
                amount=usd(500_000, "JPY"),
                last_meaningful_update_at=d(1, 15),
                custom={"tracked": False},
            )
        ),
        # K: on hold; close date 02-20 (in P) pushed to 04-15 (after P) on 02-12: slipped
        History(
            proj(
                "K",
                created_at=d(12, 1, 2025),
                status="on_hold",
                amount=usd(70_000),
                expected_close_date=date(2026, 4, 15),
            ),
            [ev("K", d(2, 12), "expected_close_date", "2026-02-20", "2026-04-15")],
        ),
        # L: on hold; close date 03-10 (not in P) pushed to 05-01: not slippage of P
        History(
            proj(
                "L",
                created_at=d(12, 1, 2025),
                status="on_hold",
                amount=usd(90_000),
                expected_close_date=date(2026, 5, 1),
            ),
            [ev("L", d(2, 5), "expected_close_date", "2026-03-10", "2026-05-01")],
        ),
    ]


def judge(state: Mapping[str, Any], events: Sequence[Event], at: datetime) -> Judgement:
    """A stand-in for the rule pack: stale after 14 days without an update."""
    custom = state.get("custom") or {}
    if custom.get("tracked") is False:
        return Judgement(False, False, False)
    last = datetime.fromisoformat(state["last_meaningful_update_at"].replace("Z", "+00:00"))
    stale = at - last > timedelta(days=14)
    return Judgement(True, stale, not stale and bool(custom.get("complete")))


@pytest.fixture(scope="module")
def current() -> Any:
    return compute(dataset(), P, STAGES, MONEY, judge)


@pytest.fixture(scope="module")
def previous() -> Any:
    return compute(dataset(), P.previous(), STAGES, MONEY, judge)


def test_win_rate(current: Any, previous: Any) -> None:
    # P: A and B won, C lost -> 2 / 3.  Q: E won, D lost -> 1 / 2.
    assert (current.won, current.lost) == (2, 1)
    assert current.win_rate == pytest.approx(2 / 3)
    assert (previous.won, previous.lost) == (1, 1)
    assert previous.win_rate == 0.5


def test_average_sales_cycle(current: Any, previous: Any) -> None:
    # P: A 01-01 -> 02-11 = 41 days, B 01-21 -> 02-20 = 30 days -> 35.5.  Q: E 41 days.
    assert sorted(current.cycle_days) == [30.0, 41.0]
    assert current.avg_cycle == 35.5
    assert previous.avg_cycle == 41.0


def test_pipeline_and_weighted_pipeline_by_stage(current: Any, previous: Any) -> None:
    # Open at 03-01: F proposal 140,000 (x40 % = 56,000), G qualification 200,000 (40,000),
    # H lead 86,400 (8,640); J is in JPY without a rate: left out and counted.
    assert current.pipeline == {
        "proposal": Decimal("140000"),
        "qualification": Decimal("200000"),
        "lead": Decimal("86400"),
    }
    assert current.pipeline_total == Decimal("426400")
    assert current.weighted == {
        "proposal": Decimal("56000"),
        "qualification": Decimal("40000"),
        "lead": Decimal("8640"),
    }
    assert current.weighted_total == Decimal("104640")
    assert current.unconverted == 1
    assert current.open_by_stage == {
        "lead": 1,
        "qualification": 1,
        "proposal": 1,
        "negotiation": 1,
        "signing": 0,
        "delivery": 0,
    }
    # Open at 02-01 (the log replayed backwards): F still in qualification (140,000 / 56,000),
    # A and B open in signing (100,000 / 50,000 and 300,000 / 150,000), C open in proposal
    # (50,000 / 15,000); G and H did not exist; E and D were closed.
    assert previous.pipeline == {
        "qualification": Decimal("140000"),
        "signing": Decimal("400000"),
        "proposal": Decimal("50000"),
    }
    assert previous.pipeline_total == Decimal("590000")
    assert previous.weighted_total == Decimal("271000")


def test_velocity(current: Any, previous: Any) -> None:
    # P: open qualified F, G, J = 3; 3 x 2/3 x 200,000 (mean of A, B) / 35.5 = 11,267.6...
    assert current.open_qualified == 3
    assert current.avg_won_amount == Decimal("200000")
    assert float(current.velocity) == pytest.approx(400_000 / 35.5)
    # Q: F, A, B, C, J = 5; 5 x 1/2 x 200,000 (E) / 41 = 12,195.1...
    assert previous.open_qualified == 5
    assert float(previous.velocity) == pytest.approx(500_000 / 41)


def test_stage_conversion(current: Any, previous: Any) -> None:
    # P entries: lead G (created 02-05), H (created 02-20); qualification G (02-15);
    # proposal F (02-10). Moves: lead->qualification G, qualification->proposal F.
    assert current.entered == {"lead": 2, "qualification": 1, "proposal": 1}
    assert current.conversion("lead", "qualification") == 0.5
    assert current.conversion("qualification", "proposal") == 1.0
    assert current.conversion("proposal", "negotiation") == 0.0
    assert current.conversion("negotiation", "signing") is None  # nobody entered
    # Q: F created 01-10 in lead and moved on 01-20; B created 01-21 straight in signing.
    assert previous.entered == {"lead": 1, "qualification": 1, "signing": 1}
    assert previous.conversion("lead", "qualification") == 1.0


def test_slippage(current: Any, previous: Any) -> None:
    # K's close date moved from 02-20 (inside P) to 04-15 (after P) during P; L's was not in P.
    assert (current.slipped, current.slippage) == (1, Decimal("70000"))
    assert (previous.slipped, previous.slippage) == (0, Decimal(0))


def test_stale_rate_and_transparency(current: Any, previous: Any) -> None:
    # P end: tracked open F, G, H (J untracked). G last updated 02-10, 19 days: stale.
    # Complete: F only (H is not complete, G is stale).
    assert (current.tracked_open, current.stale, current.transparent) == (3, 1, 1)
    assert current.stale_rate == pytest.approx(1 / 3)
    assert current.transparency == pytest.approx(1 / 3)
    # Q end (02-01): F last updated 01-20 (its stage move): fresh, complete. C last updated
    # 01-10: stale. A and B: the log cannot tell their last update before 02-01: left out.
    assert (previous.tracked_open, previous.stale, previous.transparent) == (2, 1, 1)
    assert previous.stale_rate == 0.5
    assert previous.transparency == 0.5


def test_state_at_undoes_later_changes() -> None:
    f = dataset()[5]
    assert state_at(f, d(1, 15))["stage"] == "lead"
    assert state_at(f, d(2, 1))["stage"] == "qualification"
    assert state_at(f, d(2, 1))["stage_entered_at"].startswith("2026-01-20")
    assert state_at(f, d(1, 1)) is None  # not created yet
    assert f.data["stage"] == "proposal"  # the history itself is untouched


def test_pack_judge_uses_the_rules_verdicts() -> None:
    pack = load_rules()
    now = datetime(2026, 3, 2, 9, tzinfo=UTC)
    judge_ = pack_judge(pack, lambda _team: Calendar())
    tracked = {
        "stage": "lead",
        "contract_value": usd(600_000),  # the default pack tracks 500,000 USD and up
        "owner": Person(name="A", email="a@x.com"),
        "created_at": now - timedelta(days=20),
    }
    fresh = proj("P1", **tracked, last_meaningful_update_at=now - timedelta(days=3))
    # lead at medium priority must be updated every two weeks
    stale = proj("P2", **tracked, last_meaningful_update_at=now - timedelta(days=30))
    small = proj("P3", contract_value=usd(1_000), last_meaningful_update_at=now)
    assert judge_(fresh, [], now) == Judgement(True, False, True)
    assert judge_(stale, [], now) == Judgement(True, True, False)
    assert judge_(small, [], now) == Judgement(False, False, False)


def test_state_at_undoes_nested_changes_without_touching_the_history() -> None:
    # _state (what compute uses) shares unchanged parts with the history instead of deep
    # copying it: a nested change undone must copy its way down, never write to the history.
    h = History(
        proj("N", created_at=d(1, 1), customer={"name": "New Co"}, custom={"tier": "gold"}),
        [
            ev("N", d(2, 10), "customer.name", "Old Co", "New Co"),
            ev("N", d(2, 12), "custom.tier", None, "gold"),
        ],
    )
    before = copy.deepcopy(h.data)
    at = d(2, 1)
    shared = _state(h, at)
    assert shared is not None
    assert shared["customer"]["name"] == "Old Co"
    assert shared["custom"] == {"tier": None}
    assert state_at(h, at) == shared
    assert h.data == before
