"""Days, business days and durations in a team's own timezone.

A *calendar day* is a change of date on the team's wall clock: from Saturday 23:30 to Sunday
23:30 in Berlin is one day even across the spring DST change, when only 23 hours pass. A
*business day* is a Monday to Friday that is not one of the team's holidays. Counts are taken
over the half-open interval ``(start, end]``: a project updated on Friday and looked at on
Monday is 1 business day idle (Monday), 3 calendar days.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["Calendar", "Gap", "parse_duration", "parse_gap"]

_MEMO_LIMIT = 50_000
A = TypeVar("A")
B = TypeVar("B")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Calendar:
    """A team's timezone and holidays. Build one per team, once, and share it."""

    tz: tzinfo = UTC
    holidays: frozenset[date] = frozenset()
    name: str = "UTC"
    _ordinals: tuple[int, ...] = field(default=(), repr=False, compare=False)
    _counted: dict[tuple[date, date], int] = field(
        default_factory=dict, repr=False, compare=False, hash=False
    )
    """Business-day counts already taken: a portfolio asks about the same few hundred dates
    again and again (every project is measured against the same today)."""
    _added: dict[tuple[date, int], date] = field(
        default_factory=dict, repr=False, compare=False, hash=False
    )

    @classmethod
    def of(cls, timezone: str | tzinfo | None = None, holidays: Iterable[date] = ()) -> Calendar:
        """``Calendar.of("Europe/Berlin", [date(2026, 4, 3)])``; None means UTC."""
        if timezone is None:
            tz: tzinfo = UTC
            name = "UTC"
        elif isinstance(timezone, str):
            try:
                tz = ZoneInfo(timezone)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(
                    f"unknown timezone {timezone!r}; use an IANA name such as Europe/Berlin"
                ) from None
            name = timezone
        else:
            tz, name = timezone, str(timezone)
        days = frozenset(holidays)
        # Only weekday holidays change a business-day count; keep them sorted for bisect.
        ordinals = tuple(sorted(d.toordinal() for d in days if d.weekday() < 5))
        return cls(tz=tz, holidays=days, name=name, _ordinals=ordinals)

    def local_date(self, at: datetime) -> date:
        """The date on the team's wall clock at the instant ``at``."""
        return at.astimezone(self.tz).date()

    def days_between(self, start: datetime, end: datetime) -> int:
        """Calendar days from ``start`` to ``end`` on the team's wall clock (negative if
        ``end`` is earlier)."""
        return (self.local_date(end) - self.local_date(start)).days

    def is_business_day(self, d: date) -> bool:
        return d.weekday() < 5 and d not in self.holidays

    def business_days(self, start: date, end: date) -> int:
        """Business days in ``(start, end]``; negative when ``end`` is before ``start``."""
        return _memoised(self._counted, (start, end), self._business_days)

    def _business_days(self, start: date, end: date) -> int:
        if end < start:
            return -self.business_days(end, start)
        n = (end - start).days
        weeks, rest = divmod(n, 7)
        count = weeks * 5
        wd = start.weekday()
        for i in range(1, rest + 1):
            if (wd + i) % 7 < 5:
                count += 1
        if self._ordinals:
            o = self._ordinals
            count -= bisect_right(o, end.toordinal()) - bisect_right(o, start.toordinal())
        return count

    def business_days_between(self, start: datetime, end: datetime) -> int:
        """Business days from ``start`` to ``end`` on the team's wall clock."""
        return self.business_days(self.local_date(start), self.local_date(end))

    def add_business_days(self, start: date, n: int) -> date:
        """The ``n``-th business day after ``start`` (n >= 0; 0 gives ``start``)."""
        return _memoised(self._added, (start, n), self._add_business_days)

    def _add_business_days(self, start: date, n: int) -> date:
        d = start
        while n > 0:
            d += timedelta(days=1)
            if self.is_business_day(d):
                n -= 1
        return d

    def end_of_day(self, d: date) -> datetime:
        """The last instant of ``d`` on the team's wall clock, in UTC."""
        nxt = datetime.combine(d + timedelta(days=1), datetime.min.time(), self.tz)
        return (nxt - timedelta(microseconds=1)).astimezone(UTC)


# --------------------------------------------------------------------------- durations

_DURATION = re.compile(r"^\s*(\d+)\s*(h|d|w|bd)\s*$")
_UNIT_WORDS = {"h": "hour", "d": "day", "w": "week", "bd": "business day"}
NAMED_GAPS = {
    "daily": "1bd",
    "weekly": "7d",
    "biweekly": "14d",
    "monthly": "30d",
    "quarterly": "90d",
}


@dataclass(frozen=True, slots=True)
class Gap:
    """A maximum gap: ``amount`` of ``unit`` (``h`` hours, ``d`` calendar days, ``bd``
    business days). ``w`` is stored as 7 ``d``."""

    amount: int
    unit: str
    text: str
    description: str = ""

    def describe(self) -> str:
        """``1 business day``, ``7 days``, ``36 hours``."""
        if self.description:
            return self.description
        word = _UNIT_WORDS[self.unit]
        return f"{self.amount} {word}{'' if self.amount == 1 else 's'}"


def parse_gap(text: str) -> Gap:
    """``daily`` / ``weekly`` / ``biweekly`` / ``monthly`` / ``quarterly``, or ``<n>h``,
    ``<n>d``, ``<n>w``, ``<n>bd``. Raises ValueError with the accepted forms."""
    raw = text.strip().lower()
    spec = NAMED_GAPS.get(raw, raw)
    m = _DURATION.match(spec)
    if not m:
        raise ValueError(
            f"{text!r} is not a gap; write daily, weekly, biweekly, monthly, quarterly, "
            'or a number with a unit: "36h", "3d", "2w", "2bd" (business days)'
        )
    n, unit = int(m.group(1)), m.group(2)
    if unit == "w":
        n, unit = n * 7, "d"
    gap = Gap(n, unit, text)
    return Gap(n, unit, text, gap.describe())


def parse_duration(text: str) -> timedelta:
    """``<n>h``, ``<n>d`` or ``<n>w`` as a timedelta (no business days: a plain span of time)."""
    m = _DURATION.match(text.strip().lower())
    if not m or m.group(2) == "bd":
        raise ValueError(
            f'{text!r} is not a duration; write a number with a unit: "24h", "3d" or "2w"'
        )
    n, unit = int(m.group(1)), m.group(2)
    return timedelta(hours=n) if unit == "h" else timedelta(days=n * (7 if unit == "w" else 1))


def _memoised(memo: dict[tuple[A, B], R], key: tuple[A, B], compute: Callable[[A, B], R]) -> R:
    """``compute(*key)``, remembered in ``memo``; the memo is emptied when it holds
    :data:`_MEMO_LIMIT` answers, so a long-running process's memory stays bounded."""
    found = memo.get(key)
    if found is None:
        found = compute(*key)
        if len(memo) >= _MEMO_LIMIT:
            memo.clear()
        memo[key] = found
    return found
