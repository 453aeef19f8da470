"""The KPIs of DESIGN.md section 6, computed over a period from projects and their event logs.

Every figure keeps its numerator and denominator, so a digest can state both. A period is
``[start, end)``; the previous equal period is the same length just before it. Figures that
describe a moment (pipeline, stale rate, transparency) are taken at the period's end, on the
projects as they were then: the event log is replayed backwards (each later change undone)
to rebuild that state.

Definitions (``P`` = the period):

* win rate = won ÷ (won + lost), projects whose last close in ``P`` was won / lost. A close is
  a ``status`` event to won or lost; a project closed with no such event in its log closes at
  its expected close date (or its last update, when that is earlier).
* average sales cycle = mean(close − created) in days, of the projects won in ``P``.
* stage conversion s→s+1 = moves s→s+1 in ``P`` ÷ entries into s in ``P`` (a project created
  in ``P`` enters its first stage).
* pipeline and weighted pipeline by stage = Σ amount and Σ amount × probability of the open
  projects at the end of ``P`` (in the rule pack's base currency; an amount in a currency
  without a rate is left out and counted in ``unconverted``).
* velocity = open qualified (open, past the first stage) × win rate × average won amount ÷
  average cycle days, per day.
* slippage = Σ amount of projects whose expected close date was in ``P`` and was moved past
  its end during ``P``.
* stale rate = open tracked projects past their update cadence ÷ open tracked projects
  (a project whose last update before the moment the log cannot tell is left out).
* transparency = open tracked projects meeting every entry/exit criterion of their stage and
  within cadence ÷ open tracked projects.

"Tracked" and "within cadence" are the rule pack's own verdicts (admission, ``cadence_ok``,
entry/exit rules), passed in as a :data:`Judge`, so the digest and the rules never disagree.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from bridge.store import Event

__all__ = [
    "Figures",
    "History",
    "Judge",
    "Judgement",
    "MoneyConverter",
    "Period",
    "Share",
    "closures",
    "compute",
    "freshness_known",
    "pack_judge",
    "share",
    "state_at",
]


@dataclass(frozen=True, slots=True)
class History:
    """A project's current canonical JSON and its event log, oldest first."""

    data: Mapping[str, Any]
    events: Sequence[Event] = ()


@dataclass(frozen=True, slots=True)
class Period:
    start: datetime
    end: datetime

    @classmethod
    def ending(cls, end: datetime, length: timedelta) -> Period:
        return cls(end - length, end)

    def previous(self) -> Period:
        return Period(self.start - (self.end - self.start), self.start)

    def __contains__(self, at: datetime) -> bool:
        return self.start <= at < self.end


@dataclass(frozen=True, slots=True)
class Judgement:
    tracked: bool
    stale: bool
    complete: bool


Judge = Callable[[Mapping[str, Any], Sequence[Event], datetime], Judgement]
"""(project state, its events up to the moment, the moment) -> the rules' verdict."""


@dataclass(frozen=True, slots=True)
class MoneyConverter:
    """Amounts into one currency: ``fx`` maps a currency to its value in ``base``."""

    base: str
    fx: Mapping[str, Decimal] = field(default_factory=dict)

    def __call__(self, money: Any) -> Decimal | None:
        if not isinstance(money, Mapping) or money.get("amount") is None:
            return None
        amount = Decimal(str(money["amount"]))
        cur = str(money.get("currency") or "")
        if cur == self.base:
            return amount
        rate = self.fx.get(cur)
        return None if rate is None else amount * rate


def _dt(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _date(value: Any) -> date | None:
    if value is None or value == "":
        return None
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def state_at(history: History, at: datetime) -> dict[str, Any] | None:
    """The project as it was at ``at`` (None if it did not exist yet): every change logged
    after ``at`` is undone, newest first, and the freshness fields are taken from the log."""
    state = _state(history, at)
    return None if state is None else copy.deepcopy(state)


def _set(state: dict[str, Any], path: str, value: Any, fresh: set[int]) -> None:
    """``set_path`` on a copy-on-write state: every dict on the way is copied once (``fresh``
    holds the ids of the copies), so the history's own JSON is never written to."""
    parts = path.split(".")
    cur = state
    for part in parts[:-1]:
        nxt = cur.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
        elif id(nxt) not in fresh:
            nxt = dict(nxt)
        fresh.add(id(nxt))
        cur[part] = nxt
        cur = nxt
    cur[parts[-1]] = value


def _state(history: History, at: datetime) -> dict[str, Any] | None:
    """:func:`state_at` without the deep copy: what is unchanged is shared with the history,
    so the result is only to be read (the KPIs and the rules' verdict read it)."""
    data = history.data
    created = _dt(data.get("created_at"))
    if created is not None and created > at:
        return None
    state = dict(data)
    later = [e for e in history.events if e.at > at]
    fresh = {id(state)}
    for e in reversed(later):
        _set(state, e.field, e.old, fresh)
    last = _dt(state.get("last_meaningful_update_at"))
    if last is None or last > at:
        seen = [e.at for e in history.events if e.meaningful and e.at <= at]
        state["last_meaningful_update_at"] = _iso(max(seen)) if seen else _iso(created)
    if any(e.field == "stage" for e in later):
        moves = [e.at for e in history.events if e.field == "stage" and e.at <= at]
        state["stage_entered_at"] = _iso(max(moves)) if moves else _iso(created)
    return state


def freshness_known(history: History, at: datetime) -> bool:
    """Whether the log tells when the project was last updated as of ``at`` (it does not when
    the bridge first saw the project after ``at``)."""
    last = _dt(history.data.get("last_meaningful_update_at"))
    if last is not None and last <= at:
        return True
    return any(e.meaningful and e.at <= at for e in history.events)


def closures(history: History) -> list[tuple[datetime, str]]:
    """When the project was won or lost: its ``status`` events, else (closed now, no event)
    its expected close date at noon UTC, or its last update if that came earlier."""
    out = [
        (e.at, str(e.new))
        for e in history.events
        if e.field == "status" and e.new in ("won", "lost")
    ]
    status = history.data.get("status")
    if not out and status in ("won", "lost"):
        day = _date(history.data.get("expected_close_date"))
        updated = _dt(history.data.get("updated_at"))
        at = datetime.combine(day, time(12), UTC) if day is not None else updated
        if at is not None and updated is not None and at > updated:
            at = updated  # closed before its expected date: at the latest when last updated
        if at is not None:
            out.append((at, str(status)))
    return out


@dataclass
class Figures:
    """Every KPI of one period, with what it was computed from."""

    period: Period
    won: int = 0
    lost: int = 0
    cycle_days: list[float] = field(default_factory=list)
    won_amounts: list[Decimal] = field(default_factory=list)
    open_qualified: int = 0
    open_by_stage: dict[str, int] = field(default_factory=dict)
    pipeline: dict[str, Decimal] = field(default_factory=dict)
    weighted: dict[str, Decimal] = field(default_factory=dict)
    unconverted: int = 0
    slippage: Decimal = Decimal(0)
    slipped: int = 0
    entered: dict[str, int] = field(default_factory=dict)
    moved: dict[tuple[str, str], int] = field(default_factory=dict)
    tracked_open: int = 0
    stale: int = 0
    transparent: int = 0

    @property
    def closed(self) -> int:
        return self.won + self.lost

    @property
    def win_rate(self) -> float | None:
        return self.won / self.closed if self.closed else None

    @property
    def avg_cycle(self) -> float | None:
        return sum(self.cycle_days) / len(self.cycle_days) if self.cycle_days else None

    @property
    def avg_won_amount(self) -> Decimal | None:
        if not self.won_amounts:
            return None
        return sum(self.won_amounts, Decimal(0)) / len(self.won_amounts)

    @property
    def velocity(self) -> Decimal | None:
        rate, cycle, avg = self.win_rate, self.avg_cycle, self.avg_won_amount
        if rate is None or not cycle or avg is None:
            return None
        return Decimal(self.open_qualified) * Decimal(repr(rate)) * avg / Decimal(repr(cycle))

    @property
    def pipeline_total(self) -> Decimal:
        return sum(self.pipeline.values(), Decimal(0))

    @property
    def weighted_total(self) -> Decimal:
        return sum(self.weighted.values(), Decimal(0))

    @property
    def open_count(self) -> int:
        return sum(self.open_by_stage.values())

    @property
    def stale_rate(self) -> float | None:
        return self.stale / self.tracked_open if self.tracked_open else None

    @property
    def transparency(self) -> float | None:
        return self.transparent / self.tracked_open if self.tracked_open else None

    def conversion(self, stage: str, nxt: str) -> float | None:
        n = self.entered.get(stage, 0)
        return self.moved.get((stage, nxt), 0) / n if n else None

    def add(self, s: Share) -> None:
        """Count one project's :class:`Share` in (in the order of the projects, so that sums
        of floats come out the same however the shares were computed)."""
        if s.won:
            self.won += 1
            if s.cycle_days is not None:
                self.cycle_days.append(s.cycle_days)
            if s.won_amount is not None:
                self.won_amounts.append(s.won_amount)
        elif s.lost:
            self.lost += 1
        entered = self.entered
        for st in s.entered:
            entered[st] = entered.get(st, 0) + 1
        moved = self.moved
        for key in s.moved:
            moved[key] = moved.get(key, 0) + 1
        if s.slippage is not None:
            self.slipped += 1
            self.slippage += s.slippage
        stage = s.open_stage
        if stage is not None:
            self.open_by_stage[stage] = self.open_by_stage.get(stage, 0) + 1
            self.open_qualified += s.qualified
            self.unconverted += s.unconverted
            if s.pipeline is not None and s.weighted is not None:
                self.pipeline[stage] = self.pipeline.get(stage, Decimal(0)) + s.pipeline
                self.weighted[stage] = self.weighted.get(stage, Decimal(0)) + s.weighted
        v = s.verdict
        if v is not None and v.tracked:
            self.tracked_open += 1
            self.stale += v.stale
            self.transparent += v.complete


@dataclass(frozen=True, slots=True)
class Share:
    """One project's part in the figures of one period: :func:`share` computes it once, and
    the figures of any set of projects are the sum of their shares (:meth:`Figures.add`), so a
    digest run computes each project once for every recipient whose scope holds it."""

    won: bool = False
    lost: bool = False
    cycle_days: float | None = None
    won_amount: Decimal | None = None
    entered: tuple[str, ...] = ()
    """Stages entered in the period, in the order of the log (a stage may repeat)."""
    moved: tuple[tuple[str, str], ...] = ()
    slippage: Decimal | None = None
    """The amount that slipped (0 without a convertible amount); None: nothing slipped."""
    open_stage: str | None = None
    """The lifecycle stage the project was open in at the period's end (None: not open then,
    or in a stage the lifecycle does not know)."""
    qualified: bool = False
    pipeline: Decimal | None = None
    weighted: Decimal | None = None
    unconverted: bool = False
    verdict: Judgement | None = None
    """The rules' verdict at the period's end, for an open project whose freshness is known."""


def share(
    h: History,
    period: Period,
    index: Mapping[str, int],
    money: MoneyConverter,
    judge: Judge | None = None,
) -> Share:
    """``h``'s part in the KPIs of ``period`` (see the module docstring)."""
    won = lost = False
    cycle: float | None = None
    won_amount: Decimal | None = None
    # closes
    inside = [c for c in closures(h) if c[0] in period]
    if inside:
        at, status = max(inside)
        if status == "won":
            won = True
            created = _dt(h.data.get("created_at"))
            if created is not None:
                cycle = (at - created).total_seconds() / 86400
            won_amount = money(h.data.get("amount"))
        else:
            lost = True
    # stage flow
    entered: list[str] = []
    moved: list[tuple[str, str]] = []
    stage_events = [e for e in h.events if e.field == "stage"]
    created = _dt(h.data.get("created_at"))
    if created is not None and created in period:
        first = str(stage_events[0].old) if stage_events else h.data.get("stage")
        if first in index:
            entered.append(str(first))
    for e in stage_events:
        if e.at not in period:
            continue
        if e.new in index:
            entered.append(str(e.new))
        if e.old in index and e.new in index and index[str(e.new)] == index[str(e.old)] + 1:
            moved.append((str(e.old), str(e.new)))
    # slippage
    start_day, end_day = period.start.date(), period.end.date()
    slipped = False
    for e in h.events:
        if e.field != "expected_close_date" or e.at not in period:
            continue
        old, new = _date(e.old), _date(e.new)
        if old is not None and new is not None and start_day <= old <= end_day < new:
            slipped = True
    slippage = (money(h.data.get("amount")) or Decimal(0)) if slipped else None
    flow = Share(won, lost, cycle, won_amount, tuple(entered), tuple(moved), slippage)
    # the moment at the end of the period
    state = _state(h, period.end)
    if state is None or state.get("status") != "open":
        return flow
    stage = str(state.get("stage"))
    open_stage = None
    qualified = unconverted = False
    pipeline = weighted = None
    if stage in index:
        open_stage = stage
        qualified = index[stage] >= 1
        amount = money(state.get("amount"))
        if amount is None and state.get("amount") is not None:
            unconverted = True
        elif amount is not None:
            pipeline = amount
            weighted = amount * (Decimal(state.get("probability") or 0) / 100)
    verdict = None
    if judge is not None and freshness_known(h, period.end):
        verdict = judge(state, [e for e in h.events if e.at <= period.end], period.end)
    return Share(
        won,
        lost,
        cycle,
        won_amount,
        flow.entered,
        flow.moved,
        slippage,
        open_stage,
        qualified,
        pipeline,
        weighted,
        unconverted,
        verdict,
    )


def compute(
    histories: Sequence[History],
    period: Period,
    stages: Sequence[str],
    money: MoneyConverter,
    judge: Judge | None = None,
) -> Figures:
    """The KPIs of ``period`` over ``histories`` (see the module docstring)."""
    index = {s: i for i, s in enumerate(stages)}
    fig = Figures(period=period, open_by_stage=dict.fromkeys(stages, 0))
    for h in histories:
        fig.add(share(h, period, index, money, judge))
    return fig


def pack_judge(pack: Any, calendar_of: Callable[[str | None], Any]) -> Judge:
    """A :data:`Judge` from a rule pack: tracked by its admission, stale when ``cadence_ok``
    is false, complete when no entry or exit rule fails and the cadence holds."""

    def judge(state: Mapping[str, Any], events: Sequence[Event], at: datetime) -> Judgement:
        ev = pack.evaluate(state, events, at, calendar_of(state.get("team")))
        if not ev.admission.tracked:
            return Judgement(False, False, False)
        stale = ev.facts.get("cadence_ok") is False
        gaps = any(r.outcome == "fail" and r.rule.kind in ("entry", "exit") for r in ev.results)
        return Judgement(True, stale, not stale and not gaps)

    return judge
