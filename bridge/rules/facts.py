"""Derived facts: the fixed, documented set of values Python computes once per project.

Rule expressions never walk the project or its event log themselves; they combine these facts
(``idle_days > 14``, ``deliverable.proposal >= SUBMITTED``). That keeps expressions short for
ops staff, makes every rule cheap, and gives one place where "idle", "in stage" or "business
day" is defined. :data:`FACTS` is the catalogue (name, type, meaning): the loader checks
expressions against it and ``docs/rules.md`` prints it.

Conventions: counts are ints; levels and deliverable statuses are ranks (``LOW``..``CRITICAL``
are 0..3, unset is -1; ``MISSING``..``APPROVED`` are 0..3); money is a double in the pack's
base currency; a value that cannot be known (no close date, a currency without a rate) is
``null``. Days are counted on the team's wall clock (see :mod:`bridge.rules.calendar`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Any, Final, NamedTuple

from bridge.model import DELIVERABLE_ORDER, ENGINE_FIELDS, LEVEL_ORDER, StakeholderRole
from bridge.rules.calendar import Calendar, Gap
from bridge.store.store import Event

__all__ = [
    "CONSTANTS",
    "FACTS",
    "Change",
    "Fact",
    "FactPlan",
    "Trigger",
    "derive",
    "milestone_key",
]

ROLES: Final = tuple(r.value for r in StakeholderRole)
LEVEL_NAMES: Final = tuple(LEVEL_ORDER)
STATUS_NAMES: Final = tuple(DELIVERABLE_ORDER)

CONSTANTS: Final[dict[str, int]] = {
    **{name.upper(): rank for name, rank in LEVEL_ORDER.items()},
    **{name.upper(): rank for name, rank in DELIVERABLE_ORDER.items()},
}
"""Names an expression may use for ranks: ``LOW`` .. ``CRITICAL``, ``MISSING`` .. ``APPROVED``."""


@dataclass(frozen=True, slots=True)
class Fact:
    """One derived fact. ``shape`` is scalar, map or list; ``rank`` names the rank scale
    (``level`` or ``status``) so evidence can print ``draft`` instead of 1."""

    name: str
    type: str
    doc: str
    shape: str = "scalar"
    rank: str | None = None
    group: str = "project"


def _f(
    name: str, type_: str, doc: str, *, shape: str = "scalar", rank: str | None = None, group: str
) -> Fact:
    return Fact(name, type_, doc, shape, rank, group)


FACTS: Final[dict[str, Fact]] = {
    f.name: f
    for f in (
        # project
        _f("stage", "string", 'current stage key, e.g. "proposal"', group="project"),
        _f(
            "stage_index",
            "int",
            "position of the stage in the lifecycle (lead = 0)",
            group="project",
        ),
        _f("status", "string", "open, won, lost or on_hold", group="project"),
        _f("is_open", "bool", "status is open", group="project"),
        _f("priority", "int", "priority rank (LOW..CRITICAL)", rank="level", group="project"),
        _f("urgency", "int", "urgency rank, -1 if unset", rank="level", group="project"),
        _f("importance", "int", "importance rank, -1 if unset", rank="level", group="project"),
        _f("intent", "int", "customer intent rank, -1 if unset", rank="level", group="project"),
        _f("complexity", "int", "complexity rank, -1 if unset", rank="level", group="project"),
        _f("amount", "double|null", "amount in the base currency", group="project"),
        _f(
            "contract_value",
            "double|null",
            "contract value in the base currency (the amount if unset)",
            group="project",
        ),
        _f("currency", "string", 'ISO code of the amount ("" if none)', group="project"),
        _f("probability", "int|null", "win probability in percent", group="project"),
        _f("owner", "string", 'owner\'s e-mail ("" if none)', group="project"),
        _f("has_owner", "bool", "the project has an owner with an e-mail", group="project"),
        _f("team", "string", 'team key ("" if none)', group="project"),
        _f("custom", "map", "the project's custom fields", shape="map", group="project"),
        _f(
            "has_budget",
            "bool",
            "a budget is recorded: custom budget_range or budget, or both budget_min and "
            "budget_max",
            group="project",
        ),
        _f("needs", "int", "customer needs recorded", group="project"),
        _f("pain_points", "int", "needs marked as pain points", group="project"),
        _f("competitors", "int", "competitors recorded", group="project"),
        # evidence
        _f(
            "deliverable",
            "map(string, int)",
            "best status per deliverable kind (MISSING..APPROVED); every declared kind is present",
            shape="map",
            rank="status",
            group="evidence",
        ),
        _f(
            "stakeholders",
            "map(string, int)",
            "stakeholders per role (decision_maker, economic_buyer, influencer, champion, "
            "user, technical_buyer, blocker, other); every role is present",
            shape="map",
            group="evidence",
        ),
        _f(
            "supportive_stakeholders",
            "int",
            "stakeholders whose attitude is supportive",
            group="evidence",
        ),
        _f(
            "opposed_stakeholders",
            "int",
            "stakeholders whose attitude is opposed",
            group="evidence",
        ),
        _f(
            "milestones_achieved",
            "list(string)",
            "names of achieved milestones, lower case with _ for spaces "
            '("Customer review" -> "customer_review")',
            shape="list",
            group="evidence",
        ),
        _f(
            "checklist",
            "map(string, int)",
            "items satisfied per checklist of the pack (k of n)",
            shape="map",
            group="evidence",
        ),
        # lifecycle
        _f(
            "days_in_stage",
            "int|null",
            "calendar days since entering the current stage",
            group="lifecycle",
        ),
        _f(
            "business_days_in_stage",
            "int|null",
            "business days since entering the current stage",
            group="lifecycle",
        ),
        _f(
            "hours_since_stage_change",
            "int|null",
            "hours since the last stage change in the event log",
            group="lifecycle",
        ),
        _f(
            "previous_stage",
            "string",
            'stage before the last stage change ("" if none)',
            group="lifecycle",
        ),
        _f("stage_changes", "int", "stage changes in the event log", group="lifecycle"),
        _f(
            "moved_backwards",
            "bool",
            "the last stage change went to an earlier stage",
            group="lifecycle",
        ),
        _f("backward_moves", "int", "stage changes to an earlier stage, ever", group="lifecycle"),
        _f(
            "skipped_stages",
            "list(string)",
            "required stages jumped over by forward moves, ever",
            shape="list",
            group="lifecycle",
        ),
        _f(
            "entered",
            "map(string, int)",
            "per stage: calendar days since the project last entered it (-1: never)",
            shape="map",
            group="lifecycle",
        ),
        # time
        _f(
            "idle_days",
            "int|null",
            "calendar days since the last meaningful update (a person's change)",
            group="time",
        ),
        _f(
            "business_idle_days",
            "int|null",
            "business days since the last meaningful update",
            group="time",
        ),
        _f("idle_hours", "int|null", "hours since the last meaningful update", group="time"),
        _f(
            "days_to_close", "int|null", "calendar days until the expected close date", group="time"
        ),
        _f(
            "business_days_to_close",
            "int|null",
            "business days until the expected close date",
            group="time",
        ),
        _f("open_tasks", "int", "tasks not done", group="time"),
        _f("overdue_tasks", "int", "tasks not done whose due date has passed", group="time"),
        _f(
            "overdue_milestones",
            "int",
            "milestones not achieved whose due date has passed",
            group="time",
        ),
        _f("next_steps", "int", "next steps recorded", group="time"),
        _f("next_steps_without_owner", "int", "next steps with no owner", group="time"),
        _f("next_steps_without_due", "int", "next steps with no due date", group="time"),
        _f("overdue_next_steps", "int", "next steps whose due date has passed", group="time"),
        _f("open_risks", "int", "risks with status open", group="time"),
        _f("risks_without_mitigation", "int", "open risks with no mitigation", group="time"),
        _f("high_risks", "int", "open risks of severity HIGH or CRITICAL", group="time"),
        _f(
            "high_risks_without_mitigation",
            "int",
            "open HIGH or CRITICAL risks with no mitigation",
            group="time",
        ),
        _f("overdue_payments", "int", "payments due and not received", group="time"),
        _f(
            "count",
            "map(string, int)",
            "per counter of the pack: matching events in its window",
            shape="map",
            group="time",
        ),
        # cadence
        _f(
            "cadence_limit",
            "string",
            'maximum gap for the stage and priority ("" if none)',
            group="cadence",
        ),
        _f(
            "cadence_ok",
            "bool",
            "the last meaningful update is within the cadence limit",
            group="cadence",
        ),
        _f(
            "trigger_overdue",
            "map(string, bool)",
            "per trigger of the pack: it fired and no update followed in time",
            shape="map",
            group="cadence",
        ),
    )
}


# --------------------------------------------------------------------------- value helpers

_NON_ALNUM = re.compile(r"[^0-9a-z]+")


def milestone_key(name: str) -> str:
    """How a milestone name appears in ``milestones_achieved``."""
    return _NON_ALNUM.sub("_", name.strip().lower()).strip("_")


def _dt(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    return None


def _date(value: Any) -> date | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str) and value:
        try:
            return date.fromisoformat(value[:10])
        except ValueError:
            return None
    return None


def _number(value: Any) -> float | None:
    """A number out of an event value: a Money dict, a number or numeric text. A double is
    exact enough to compare sizes and percentages of change."""
    if isinstance(value, dict):
        value = value.get("amount")
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str | list | dict) and not value)


# --------------------------------------------------------------------------- event matching

CHANGES: Final = (
    "any",
    "set",
    "cleared",
    "later",
    "earlier",
    "increase",
    "decrease",
    "pct",
    "to",
    "from",
    "risk_raised",
)


@dataclass(frozen=True, slots=True)
class Change:
    """Which events count: a change of ``field`` of kind ``change``.

    ``any`` every change; ``set`` / ``cleared`` a value appears / disappears; ``later`` /
    ``earlier`` a date moves out / in; ``increase`` / ``decrease`` a number goes up / down;
    ``pct`` a number moves by at least ``min_pct`` percent either way; ``to`` / ``from`` the
    new / old value equals ``value``; ``risk_raised`` a risk of at least ``min_severity``
    appears in the risk list. Only a person's changes count unless ``meaningful_only`` is off.
    """

    field: str
    change: str = "any"
    value: Any = None
    min_pct: float = 0.0
    min_severity: int = 2
    meaningful_only: bool = True

    def concerns(self, event_field: str) -> bool:
        return event_field == self.field or event_field.startswith(self.field + ".")

    def matches(self, e: Event) -> bool:
        if self.meaningful_only and not e.meaningful:
            return False
        c = self.change
        if c == "any":
            return True
        old, new = e.old, e.new
        if c == "set":
            return _empty(old) and not _empty(new)
        if c == "cleared":
            return not _empty(old) and _empty(new)
        if c == "to":
            return bool(new == self.value)
        if c == "from":
            return bool(old == self.value)
        if c in ("later", "earlier"):
            a, b = _date(old), _date(new)
            if a is None or b is None:
                return False
            return b > a if c == "later" else b < a
        if c == "risk_raised":
            return self._risk_raised(old, new)
        x, y = _number(old), _number(new)
        if x is None or y is None:
            return False
        if c == "increase":
            return y > x
        if c == "decrease":
            return y < x
        # pct
        if x == 0:
            return y != 0
        return abs((y - x) / x) * 100 >= self.min_pct

    def _risk_raised(self, old: Any, new: Any) -> bool:
        def serious(items: Any) -> set[str]:
            out: set[str] = set()
            for r in items if isinstance(items, list) else ([items] if items else []):
                if isinstance(r, Mapping):
                    sev = LEVEL_ORDER.get(str(r.get("severity") or "medium"), 1)
                    if sev >= self.min_severity and r.get("status", "open") == "open":
                        out.add(str(r.get("description")))
            return out

        return bool(serious(new) - serious(old))


@dataclass(frozen=True, slots=True)
class Trigger:
    """An event that demands a meaningful update within ``within``."""

    id: str
    when: Change
    within: timedelta


def _value_test(c: Change) -> Callable[[Any, Any], bool] | None:
    """:meth:`Change.matches` on an event's (old, new) values, its kind decided once (None
    for ``any``); whether the change is a person's is checked apart."""
    kind = c.change
    if kind == "any":
        return None
    if kind == "set":
        return lambda old, new: _empty(old) and not _empty(new)
    if kind == "cleared":
        return lambda old, new: not _empty(old) and _empty(new)
    if kind == "to":
        value = c.value
        return lambda _old, new: bool(new == value)
    if kind == "from":
        value = c.value
        return lambda old, _new: bool(old == value)
    if kind in ("later", "earlier"):
        later = kind == "later"
        seen: dict[tuple[str, str], bool] = {}  # dates come as text, and repeat

        def compare(old: Any, new: Any) -> bool:
            a, b = _date(old), _date(new)
            if a is None or b is None:
                return False
            return b > a if later else b < a

        def dates(old: Any, new: Any) -> bool:
            if type(old) is not str or type(new) is not str:
                return compare(old, new)
            hit = seen.get((old, new))
            if hit is None:
                hit = compare(old, new)
                if len(seen) < 20_000:
                    seen[old, new] = hit
            return hit

        return dates
    if kind == "risk_raised":
        return c._risk_raised

    def numbers(old: Any, new: Any) -> bool:
        x, y = _number(old), _number(new)
        if x is None or y is None:
            return False
        if kind == "increase":
            return y > x
        if kind == "decrease":
            return y < x
        if x == 0:
            return y != 0
        return abs((y - x) / x) * 100 >= c.min_pct

    return numbers


class Watch(NamedTuple):
    """Counters and triggers that watch one event field with one (equal) change."""

    test: Callable[[Any, Any], bool] | None
    meaningful_only: bool
    counters: tuple[str, ...]
    triggers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FactPlan:
    """What :func:`derive` needs from the lifecycle and the rule pack."""

    stages: tuple[str, ...]
    optional_stages: frozenset[str] = frozenset()
    deliverable_kinds: tuple[str, ...] = ()
    counters: Mapping[str, tuple[Change, timedelta]] = field(default_factory=dict)
    triggers: tuple[Trigger, ...] = ()
    cadence: Mapping[str, Mapping[str, Gap]] = field(default_factory=dict)
    cadence_default: Gap | None = None
    base_currency: str | None = None
    fx: Mapping[str, Decimal] = field(default_factory=dict)
    flat: Mapping[str, tuple[str, ...]] | None = None
    """Per map fact, the entries to store flat (``deliverable.proposal``); None: all. The
    loader sets it to what the pack's expressions read."""
    frozen_lists: tuple[str, ...] = ()
    """List facts read whole, also stored as tuples under ``#<name>`` (for memo keys)."""
    watch: Mapping[str, tuple[tuple[str, Change], ...]] = field(init=False, repr=False)
    """Event field -> (counter name or ``trigger:<id>``, change) that look at it."""
    index: Mapping[str, int] = field(init=False, repr=False)
    flat_names: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = field(init=False, repr=False)
    handlers: dict[str, tuple[bool, tuple[Watch, ...]]] = field(
        init=False, repr=False, default_factory=dict
    )
    """Event field -> whether it is the engine's own, and the :class:`Watch` groups that
    look at it (see :meth:`handler`)."""
    clocks: dict[tuple[datetime, tzinfo], tuple[date, dict[str, datetime]]] = field(
        init=False, repr=False, default_factory=dict
    )
    """(now, timezone) -> (today on that wall clock, each counter's window start): the same
    for every project of a sweep."""
    flat_maps: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = field(init=False, repr=False)
    """:attr:`flat_names` of the maps but ``custom`` (whose values are frozen)."""
    flat_custom: tuple[tuple[str, str], ...] = field(init=False, repr=False)
    frozen_names: tuple[tuple[str, str], ...] = field(init=False, repr=False)
    fx_float: Mapping[str, float] = field(init=False, repr=False)
    trigger_spans: tuple[tuple[str, timedelta], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", {k: i for i, k in enumerate(self.stages)})
        watch: dict[str, list[tuple[str, Change]]] = {}
        for name, (change, _span) in self.counters.items():
            watch.setdefault(change.field, []).append((name, change))
        for trig in self.triggers:
            watch.setdefault(trig.when.field, []).append(("trigger:" + trig.id, trig.when))
        object.__setattr__(self, "watch", {k: tuple(v) for k, v in watch.items()})
        keys = {
            "deliverable": self.deliverable_kinds,
            "stakeholders": ROLES,
            "entered": self.stages,
            "count": tuple(self.counters),
            "trigger_overdue": tuple(t.id for t in self.triggers),
            "custom": (),
        }
        if self.flat is not None:
            keys = {n: self.flat.get(n, ()) for n in keys}
        flat_names = tuple((n, tuple((k, f"{n}.{k}") for k in ks)) for n, ks in keys.items() if ks)
        object.__setattr__(self, "flat_names", flat_names)
        flat_maps = tuple((n, pairs) for n, pairs in flat_names if n != "custom")
        object.__setattr__(self, "flat_maps", flat_maps)
        custom = next((pairs for n, pairs in flat_names if n == "custom"), ())
        object.__setattr__(self, "flat_custom", custom)
        object.__setattr__(self, "frozen_names", tuple((n, "#" + n) for n in self.frozen_lists))
        object.__setattr__(self, "fx_float", {c: float(r) for c, r in self.fx.items()})
        object.__setattr__(self, "trigger_spans", tuple((t.id, t.within) for t in self.triggers))

    def handler(self, event_field: str) -> tuple[bool, tuple[Watch, ...]]:
        """Whether ``event_field`` is the engine's own, and what watches it, grouped by equal
        :class:`Change` (a counter and a trigger on the same change test an event once). Cached:
        a portfolio's event log names few distinct fields."""
        found = self.handlers.get(event_field)
        if found is not None:
            return found
        groups: list[tuple[Change, list[str], list[str]]] = []
        for name, change in self.watchers(event_field):
            group = next((g for g in groups if g[0] == change), None)
            if group is None:
                group = (change, [], [])
                groups.append(group)
            if name.startswith("trigger:"):
                group[2].append(name[8:])
            else:
                group[1].append(name)
        found = (
            event_field.split(".")[0] in ENGINE_FIELDS,
            tuple(
                Watch(_value_test(c), c.meaningful_only, tuple(cs), tuple(ts))
                for c, cs, ts in groups
            ),
        )
        if len(self.handlers) < 10_000:
            self.handlers[event_field] = found
        return found

    def clock(self, now: datetime, tz: tzinfo) -> tuple[date, dict[str, datetime]]:
        """Today at ``now`` on the ``tz`` wall clock, and each counter's window start."""
        found = self.clocks.get((now, tz))
        if found is None:
            today = now.astimezone(tz).date()
            windows = {name: now - span for name, (_c, span) in self.counters.items()}
            found = (today, windows)
            if len(self.clocks) >= 64:
                self.clocks.clear()
            self.clocks[now, tz] = found
        return found

    def watchers(self, event_field: str) -> tuple[tuple[str, Change], ...]:
        """What looks at ``event_field`` (``customer.name`` is seen by ``customer`` too)."""
        found = self.watch.get(event_field, ())
        if "." in event_field:
            parts = event_field.split(".")
            for i in range(1, len(parts)):
                found += self.watch.get(".".join(parts[:i]), ())
        return found


@dataclass(slots=True)
class Detail:
    """Values behind the facts that evidence and periods need but expressions do not."""

    last_update: datetime | None = None
    last_update_by: str | None = None
    stage_entered: datetime | None = None
    cadence_since: datetime | None = None
    triggers: dict[str, tuple[Event, datetime]] = field(default_factory=dict)


def _money(v: Any, plan: FactPlan) -> tuple[float | None, str]:
    """An amount in the base currency, as the double expressions compare."""
    if not isinstance(v, dict):
        return None, ""
    cur = v.get("currency") or ""
    try:
        amt = float(v.get("amount"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None, cur
    if plan.base_currency is None or cur == plan.base_currency:
        return amt, cur
    rate = plan.fx_float.get(cur)
    return (None, cur) if rate is None else (amt * rate, cur)


FLATTENED: Final = ("deliverable", "stakeholders", "entered", "count", "trigger_overdue", "custom")
ABSENT: Final = object()
"""A key that a map lacks (``has(custom.x)`` is false), as it appears in memo keys."""


def freeze(value: Any) -> Any:
    """A hashable stand-in for a value that keeps CEL's distinctions (1, 1.0, true)."""
    if isinstance(value, dict):
        return tuple((k, freeze(v)) for k, v in sorted(value.items()))
    if isinstance(value, list | tuple):
        return (list, *(freeze(v) for v in value))
    if isinstance(value, bool | float):
        return (type(value), value)
    return value


"""Map facts whose entries are also stored flat (``deliverable.proposal``), so an expression
that reads one entry is keyed on that entry alone."""


def derive(
    project: Mapping[str, Any],
    events: Sequence[Event],
    now: datetime,
    cal: Calendar,
    plan: FactPlan,
) -> tuple[dict[str, Any], Detail]:
    """Every fact of :data:`FACTS` (checklists aside: they are expressions) for one project.

    ``project`` is the canonical JSON form; ``events`` its event log, oldest first. Entries of
    the map facts in :data:`FLATTENED` are also stored under ``<fact>.<key>``.

    This runs once per project per sweep, so it is written for speed: what is the same for
    every project (today, counter windows, which counters and triggers watch an event field,
    business-day counts) is taken from caches on the plan and the calendar.
    """
    facts: dict[str, Any] = {}
    detail = Detail()
    tz = cal.tz
    today, windows = plan.clock(now, tz)
    stages = plan.stages
    index = plan.index
    get = project.get

    # -- project
    stage = get("stage") or "lead"
    status = get("status") or "open"
    priority = get("priority") or "medium"
    levels = LEVEL_ORDER
    facts["stage"] = stage
    facts["stage_index"] = index.get(stage, -1)
    facts["status"] = status
    facts["is_open"] = status == "open"
    facts["priority"] = levels.get(priority, -1)
    facts["urgency"] = levels.get(get("urgency") or "", -1)
    facts["importance"] = levels.get(get("importance") or "", -1)
    facts["intent"] = levels.get(get("intent") or "", -1)
    facts["complexity"] = levels.get(get("complexity") or "", -1)
    amount, currency = _money(get("amount"), plan)
    contract = get("contract_value")
    facts["amount"] = amount
    facts["contract_value"] = _money(contract, plan)[0] if contract else amount
    facts["currency"] = currency
    facts["probability"] = get("probability")
    owner = get("owner")
    email = owner.get("email") if isinstance(owner, dict) else None
    facts["owner"] = email or ""
    facts["has_owner"] = bool(email)
    facts["team"] = get("team") or ""
    custom = get("custom") or {}
    facts["custom"] = custom
    facts["has_budget"] = bool(custom) and (
        not _empty(custom.get("budget_range"))
        or not _empty(custom.get("budget"))
        or (not _empty(custom.get("budget_min")) and not _empty(custom.get("budget_max")))
    )
    needs = get("needs") or ()
    facts["needs"] = len(needs)
    pains = 0
    for n in needs:
        if n.get("pain_point"):
            pains += 1
    facts["pain_points"] = pains
    facts["competitors"] = len(get("competitors") or ())

    # -- evidence
    deliverable = dict.fromkeys(plan.deliverable_kinds, 0)
    for d in get("deliverables") or ():
        kind = d.get("kind")
        rank = DELIVERABLE_ORDER.get(d.get("status") or "missing", 0)
        if rank > deliverable.get(kind, -1):
            deliverable[kind] = rank
    facts["deliverable"] = deliverable
    roles = dict.fromkeys(ROLES, 0)
    supportive = opposed = 0
    for sh in get("stakeholders") or ():
        role = sh.get("role") or "other"
        roles[role] = roles.get(role, 0) + 1
        attitude = sh.get("attitude")
        if attitude == "supportive":
            supportive += 1
        elif attitude == "opposed":
            opposed += 1
    facts["stakeholders"] = roles
    facts["supportive_stakeholders"] = supportive
    facts["opposed_stakeholders"] = opposed
    achieved: list[str] = []
    overdue_milestones = 0
    for m in get("milestones") or ():
        if m.get("achieved_at"):
            achieved.append(milestone_key(str(m.get("name") or "")))
        else:
            due = _date(m.get("due"))
            overdue_milestones += due is not None and due < today
    facts["milestones_achieved"] = achieved

    # -- one pass over the event log
    last_update = _dt(get("last_meaningful_update_at"))
    last_update_by = get("last_meaningful_update_by")
    entered_at: dict[str, datetime] = {}
    moves = backward = 0
    last_move: Event | None = None
    skipped: list[str] = []
    counts = dict.fromkeys(plan.counters, 0)
    latest_trigger: dict[str, Event] = {}
    handlers = plan.handlers
    optional = plan.optional_stages
    for e in events:
        at = e.at
        if at > now:
            continue  # the log may run ahead of an explicit `now` (tests, replays)
        f = e.field
        known = handlers.get(f)
        if known is None:
            known = plan.handler(f)
        engine_field, watches = known
        meaningful = e.meaningful
        if meaningful and not engine_field and (last_update is None or at > last_update):
            last_update, last_update_by = at, e.actor
        if f == "stage":
            new, old = e.new, e.old
            moves += 1
            last_move = e
            if isinstance(new, str):
                entered_at[new] = at
                i_new = index.get(new)
                i_old = index.get(old) if isinstance(old, str) else None
                if i_old is not None and i_new is not None:
                    if i_new < i_old:
                        backward += 1
                    elif i_new > i_old + 1:
                        for k in stages[i_old + 1 : i_new]:
                            if k not in optional and k not in skipped:
                                skipped.append(k)
        for test, meaningful_only, counters, triggers in watches:
            if meaningful_only and not meaningful:
                continue
            if test is not None and not test(e.old, e.new):
                continue
            for tid in triggers:
                latest_trigger[tid] = e
            for name in counters:
                if at >= windows[name]:
                    counts[name] += 1

    # -- lifecycle
    stage_entered = entered_at.get(stage)
    if stage_entered is None:
        stage_entered = _dt(get("stage_entered_at")) or _dt(get("created_at"))
    detail.stage_entered = stage_entered
    entered = dict.fromkeys(stages, -1)
    for k, at in entered_at.items():
        entered[k] = (today - at.astimezone(tz).date()).days
    if stage_entered is None:
        facts["days_in_stage"] = facts["business_days_in_stage"] = None
    else:
        day = stage_entered.astimezone(tz).date()
        entered[stage] = facts["days_in_stage"] = (today - day).days
        facts["business_days_in_stage"] = cal.business_days(day, today)
    facts["entered"] = entered
    facts["hours_since_stage_change"] = (
        None if last_move is None else int((now - last_move.at).total_seconds() // 3600)
    )
    prev = last_move.old if last_move is not None else ""
    facts["previous_stage"] = prev = prev if isinstance(prev, str) else ""
    facts["stage_changes"] = moves
    facts["moved_backwards"] = bool(
        last_move is not None
        and isinstance(last_move.new, str)
        and index.get(last_move.new, -1) < index.get(prev, -1)
    )
    facts["backward_moves"] = backward
    facts["skipped_stages"] = skipped

    # -- time
    if last_update is None:
        last_update = _dt(get("created_at"))
    detail.last_update, detail.last_update_by = last_update, last_update_by
    if last_update is None:
        facts["idle_days"] = facts["business_idle_days"] = facts["idle_hours"] = None
        last_day = None
    else:
        last_day = last_update.astimezone(tz).date()
        facts["idle_days"] = (today - last_day).days
        facts["business_idle_days"] = cal.business_days(last_day, today)
        facts["idle_hours"] = int((now - last_update).total_seconds() // 3600)
    close = _date(get("expected_close_date"))
    if close is None:
        facts["days_to_close"] = facts["business_days_to_close"] = None
    else:
        facts["days_to_close"] = (close - today).days
        facts["business_days_to_close"] = cal.business_days(today, close)
    open_tasks = overdue_tasks = 0
    for t in get("tasks") or ():
        if not t.get("done"):
            open_tasks += 1
            due = _date(t.get("due"))
            if due is not None and due < today:
                overdue_tasks += 1
    facts["open_tasks"] = open_tasks
    facts["overdue_tasks"] = overdue_tasks
    facts["overdue_milestones"] = overdue_milestones
    steps = get("next_steps") or ()
    facts["next_steps"] = len(steps)
    no_owner = no_due = overdue_steps = 0
    for st in steps:
        o = st.get("owner")
        if not (isinstance(o, dict) and (o.get("email") or o.get("name"))):
            no_owner += 1
        due = _date(st.get("due"))
        if due is None:
            no_due += 1
        elif due < today:
            overdue_steps += 1
    facts["next_steps_without_owner"] = no_owner
    facts["next_steps_without_due"] = no_due
    facts["overdue_next_steps"] = overdue_steps
    open_risks = unmitigated = high = high_unmitigated = 0
    for r in get("risks") or ():
        if (r.get("status") or "open") != "open":
            continue
        open_risks += 1
        bare = _empty(r.get("mitigation"))
        unmitigated += bare
        if levels.get(r.get("severity") or "medium", 1) >= 2:
            high += 1
            high_unmitigated += bare
    facts["open_risks"] = open_risks
    facts["risks_without_mitigation"] = unmitigated
    facts["high_risks"] = high
    facts["high_risks_without_mitigation"] = high_unmitigated
    overdue_payments = 0
    for pay in get("payments") or ():
        due = _date(pay.get("due"))
        overdue_payments += due is not None and due < today and not pay.get("received_at")
    facts["overdue_payments"] = overdue_payments
    facts["count"] = counts

    # -- cadence
    row = plan.cadence.get(stage)
    gap = row.get(priority, plan.cadence_default) if row else plan.cadence_default
    if gap is None:
        facts["cadence_limit"] = ""
        facts["cadence_ok"] = True
    else:
        facts["cadence_limit"] = gap.describe()
        ok, detail.cadence_since = _cadence(gap, last_update, last_day, now, today, cal)
        facts["cadence_ok"] = ok
    overdue: dict[str, bool] = {}
    for tid, within in plan.trigger_spans:
        ev = latest_trigger.get(tid)
        late = False
        if ev is not None:
            answered = last_update is not None and last_update > ev.at
            due_at = ev.at + within
            late = not answered and now > due_at
            if late:
                detail.triggers[tid] = (ev, due_at)
        overdue[tid] = late
    facts["trigger_overdue"] = overdue
    # map entries stored flat
    for name, pairs in plan.flat_maps:
        m = facts[name]
        for k, flat_name in pairs:
            facts[flat_name] = m.get(k)
    for k, flat_name in plan.flat_custom:  # free-form values: frozen; absent is not null
        v = custom.get(k, ABSENT)
        t = type(v)
        facts[flat_name] = v if t is str or t is int or v is None or v is ABSENT else freeze(v)
    for name, frozen in plan.frozen_names:
        facts[frozen] = tuple(facts[name])
    return facts, detail


def _cadence(
    gap: Gap,
    last: datetime | None,
    last_day: date | None,
    now: datetime,
    today: date,
    cal: Calendar,
) -> tuple[bool, datetime | None]:
    """Whether the gap since ``last`` is within ``gap``; when not, since when it is overdue."""
    if last is None or last_day is None:
        return False, None
    if gap.unit == "h":
        since = last + timedelta(hours=gap.amount)
        return now <= since, since
    if gap.unit == "d":
        ok = (today - last_day).days <= gap.amount
        first_late = last_day + timedelta(days=gap.amount + 1)
    else:
        ok = cal.business_days(last_day, today) <= gap.amount
        first_late = cal.add_business_days(last_day, gap.amount + 1)
    if ok:
        return True, None
    return False, datetime.combine(first_late, datetime.min.time(), cal.tz).astimezone(UTC)
