"""The digest's content: what one recipient is told, before any wording or layout.

:func:`build` gathers it from the store for a recipient's scope; the result is a pydantic
model whose JSON is archived with every sent digest, so an old digest can be rendered again
exactly (in either language: every label it holds carries ``en`` and ``zh-CN``).

Masking happens here, not in the templates: with ``mask_amounts`` no amount ever enters the
model, so no rendering can leak one.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field

from bridge.config import Config, RecipientConfig
from bridge.digest import kpi
from bridge.digest.scope import Scope, team_label
from bridge.model import Lifecycle
from bridge.store import Event, Store, Violation

PERIOD = timedelta(days=28)
"""KPIs cover the last four weeks (same weekdays) against the four weeks before."""
FIRST_SINCE = timedelta(days=7)
"""Without an earlier digest, "what changed" counts from a week back."""
STUCK_DAYS = 60
TOP = 5

Text = dict[str, str]


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProjectRef(_M):
    id: str
    code: str | None = None
    name: str
    customer: str | None = None
    owner: str | None = None
    team: str | None = None
    stage: str
    stage_label: Text
    url: str | None = None


class ViolationItem(_M):
    project: ProjectRef
    rule: str
    title: Text
    message: Text
    severity: str
    status: str
    opened_at: datetime
    escalated_at: datetime | None = None
    resolved_at: datetime | None = None


class Count(_M):
    key: str
    label: Text
    open: int
    critical: int = 0


class AttentionItem(_M):
    project: ProjectRef
    kind: str
    """``overdue_update``, ``slipping`` or ``stuck``."""
    days: int | None = None
    limit: str | None = None
    old_date: date | None = None
    new_date: date | None = None


class Kpi(_M):
    key: str
    unit: str
    """``pct``, ``days`` or ``money`` (per day for velocity)."""
    value: float | None = None
    previous: float | None = None
    amount: Decimal | None = None
    """The value of a money KPI (``value`` holds the others)."""
    previous_amount: Decimal | None = None
    numerator: int | None = None
    denominator: int | None = None
    masked: bool = False


class Conversion(_M):
    stage: str
    label: Text
    next_label: Text
    moved: int
    entered: int
    rate: float | None = None
    previous: float | None = None


class StageBar(_M):
    stage: str
    label: Text
    count: int
    value: Decimal | None = None
    weighted: Decimal | None = None


class Bucket(_M):
    key: str
    count: int


class Compliance(_M):
    open_total: int = 0
    critical_total: int = 0
    by_owner: list[Count] = Field(default_factory=list)
    by_rule: list[Count] = Field(default_factory=list)
    new: list[ViolationItem] = Field(default_factory=list)
    resolved: list[ViolationItem] = Field(default_factory=list)
    escalations: list[ViolationItem] = Field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.open_total or self.new or self.resolved or self.escalations)


class Digest(_M):
    """One recipient's digest at one moment."""

    recipient: str
    recipient_name: str
    lang: str
    timezone: str
    teams: list[str]
    team_labels: Text
    generated_at: datetime
    since: datetime
    period_start: datetime
    period_end: datetime
    period_days: int
    currency: str
    masked: bool
    projects: int
    open_projects: int
    activity: int
    """Events in scope since ``since``: nothing happened when 0."""
    compliance: Compliance
    attention: list[AttentionItem] = Field(default_factory=list)
    kpis: list[Kpi] = Field(default_factory=list)
    conversion: list[Conversion] = Field(default_factory=list)
    funnel: list[StageBar] = Field(default_factory=list)
    freshness: list[Bucket] = Field(default_factory=list)

    @property
    def empty(self) -> bool:
        """Nothing to say: no open or changed violations, nothing needing attention, and no
        change to any project since the last digest."""
        return self.compliance.empty and not self.attention and self.activity == 0

    def attention_of(self, kind: str) -> list[AttentionItem]:
        return [a for a in self.attention if a.kind == kind]


# --------------------------------------------------------------------------- building


def _labels(lifecycle: Lifecycle, stage: str) -> Text:
    try:
        s = lifecycle.get(stage)
    except KeyError:
        return {"en": stage, "zh-CN": stage}
    return {"en": s.label_en, "zh-CN": s.label_zh}


def _ref(data: Mapping[str, Any], lifecycle: Lifecycle) -> ProjectRef:
    owner = data.get("owner") or {}
    customer = data.get("customer") or {}
    links = data.get("links") or {}
    url = next((ln.get("url") for ln in links.values() if ln.get("url")), None)
    stage = str(data.get("stage") or "")
    return ProjectRef(
        id=str(data["id"]),
        code=data.get("code"),
        name=str(data.get("name") or data["id"]),
        customer=customer.get("name"),
        owner=owner.get("name") or owner.get("email"),
        team=data.get("team"),
        stage=stage,
        stage_label=_labels(lifecycle, stage),
        url=url,
    )


def _title(pack: Any, rule: str) -> Text:
    try:
        r = pack.rule(rule)
    except KeyError:
        return {"en": rule, "zh-CN": rule}
    return {"en": r.title_in("en"), "zh-CN": r.title_in("zh-CN")}


def _message(v: Violation) -> Text:
    ev = v.evidence if isinstance(v.evidence, dict) else {}
    msg = ev.get("message")
    if isinstance(msg, dict):
        return {k: str(x) for k, x in msg.items() if isinstance(x, str)}
    return {}


def _item(v: Violation, ref: ProjectRef, pack: Any) -> ViolationItem:
    return ViolationItem(
        project=ref,
        rule=v.rule,
        title=_title(pack, v.rule),
        message=_message(v),
        severity=v.severity,
        status=v.status,
        opened_at=v.opened_at,
        escalated_at=v.escalated_at,
        resolved_at=v.resolved_at,
    )


def _compliance(
    violations: Sequence[Violation],
    refs: Mapping[str, ProjectRef],
    since: datetime,
    pack: Any,
    item: Callable[[Violation, ProjectRef], ViolationItem] | None = None,
) -> Compliance:
    out = Compliance()
    by_owner: dict[str, Counter[str]] = defaultdict(Counter)
    owner_label: dict[str, str] = {}
    by_rule: dict[str, Counter[str]] = defaultdict(Counter)
    severity_rank = {"critical": 0, "warning": 1, "info": 2}
    make = item or (lambda v, ref: _item(v, ref, pack))
    for v in violations:
        ref = refs[v.project_id]
        if v.is_open:
            out.open_total += 1
            crit = v.severity == "critical"
            out.critical_total += crit
            okey = (v.owner or ref.owner or "").lower()
            owner_label[okey] = ref.owner or v.owner or ""
            by_owner[okey]["open"] += 1
            by_owner[okey]["critical"] += crit
            by_rule[v.rule]["open"] += 1
            by_rule[v.rule]["critical"] += crit
            if v.opened_at >= since:
                out.new.append(make(v, ref))
            if v.status == "escalated":
                out.escalations.append(make(v, ref))
        elif v.resolved_at is not None and v.resolved_at >= since:
            out.resolved.append(make(v, ref))
    out.by_owner = sorted(
        (
            Count(key=k, label={"en": owner_label[k], "zh-CN": owner_label[k]}, **c)
            for k, c in by_owner.items()
        ),
        key=lambda c: (-c.open, -c.critical, c.label["en"]),
    )
    out.by_rule = sorted(
        (Count(key=k, label=_title(pack, k), **c) for k, c in by_rule.items()),
        key=lambda c: (-c.open, -c.critical, c.key),
    )

    def order(i: ViolationItem) -> tuple[int, datetime]:
        return (severity_rank.get(i.severity, 3), i.opened_at)

    out.new.sort(key=order)
    out.escalations.sort(key=order)
    out.resolved.sort(key=lambda i: i.resolved_at or i.opened_at, reverse=True)
    return out


def _attention(
    histories: Sequence[kpi.History],
    overdue_updates: Mapping[str, tuple[Any, Any] | None],
    refs: Mapping[str, ProjectRef],
    since: datetime,
    now: datetime,
    tz: Any,
) -> list[AttentionItem]:
    overdue: list[dict[str, Any]] = []
    slipping: list[dict[str, Any]] = []
    stuck: list[dict[str, Any]] = []
    today = now.astimezone(tz).date()
    for h in histories:
        data = h.data
        if data.get("status") != "open":
            continue
        pid = str(data["id"])
        ref = refs[pid]
        late = overdue_updates.get(pid)
        if late is not None:
            days, limit = late
            overdue.append(
                {
                    "project": ref,
                    "kind": "overdue_update",
                    "days": days,
                    "limit": str(limit or ""),
                }
            )
        close = kpi._date(data.get("expected_close_date"))
        pushed = [
            e
            for e in h.events
            if e.field == "expected_close_date"
            and e.at >= since
            and e.old is not None
            and e.new is not None
            and kpi._date(e.new) > kpi._date(e.old)  # type: ignore[operator]
        ]
        if pushed:
            last = pushed[-1]
            old, new = kpi._date(last.old), kpi._date(last.new)
            slipping.append(
                {
                    "project": ref,
                    "kind": "slipping",
                    "days": (new - old).days if old and new else None,
                    "old_date": old,
                    "new_date": new,
                }
            )
        elif close is not None and close < today:
            slipping.append(
                {
                    "project": ref,
                    "kind": "slipping",
                    "days": (today - close).days,
                    "old_date": close,
                }
            )
        entered = kpi._dt(data.get("stage_entered_at"))
        if entered is not None and data.get("stage") != "delivery":
            days = (now - entered).days
            if days > STUCK_DAYS:
                stuck.append({"project": ref, "kind": "stuck", "days": days})
    never = 10**6
    # stable sorts of the candidates, then models for the TOP of each kind only
    overdue.sort(key=lambda a: -(a["days"] if a["days"] is not None else never))
    slipping.sort(key=lambda a: -(a["days"] or 0))
    stuck.sort(key=lambda a: -(a["days"] or 0))
    return [AttentionItem(**a) for a in overdue[:TOP] + slipping[:TOP] + stuck[:TOP]]


def _freshness(histories: Sequence[kpi.History], now: datetime) -> list[Bucket]:
    counts = dict.fromkeys(("fresh_0_7", "fresh_8_14", "fresh_15_30", "fresh_31", "fresh_never"), 0)
    for h in histories:
        if h.data.get("status") != "open":
            continue
        last = kpi._dt(h.data.get("last_meaningful_update_at"))
        if last is None:
            counts["fresh_never"] += 1
            continue
        days = (now - last).days
        key = (
            "fresh_0_7"
            if days <= 7
            else "fresh_8_14"
            if days <= 14
            else "fresh_15_30"
            if days <= 30
            else "fresh_31"
        )
        counts[key] += 1
    return [Bucket(key=k, count=n) for k, n in counts.items()]


def _kpis(cur: kpi.Figures, prev: kpi.Figures, masked: bool) -> list[Kpi]:
    def money(key: str, value: Decimal | None, previous: Decimal | None, **kw: Any) -> Kpi:
        if masked:
            return Kpi(key=key, unit="money", masked=True, **kw)
        return Kpi(key=key, unit="money", amount=value, previous_amount=previous, **kw)

    return [
        Kpi(
            key="win_rate",
            unit="pct",
            value=cur.win_rate,
            previous=prev.win_rate,
            numerator=cur.won,
            denominator=cur.closed,
        ),
        Kpi(
            key="avg_cycle",
            unit="days",
            value=cur.avg_cycle,
            previous=prev.avg_cycle,
            denominator=len(cur.cycle_days),
        ),
        money("pipeline", cur.pipeline_total, prev.pipeline_total, denominator=cur.open_count),
        money("weighted", cur.weighted_total, prev.weighted_total, denominator=cur.open_count),
        money("velocity", cur.velocity, prev.velocity, denominator=cur.open_qualified),
        money("slippage", cur.slippage, prev.slippage, denominator=cur.slipped),
        Kpi(
            key="stale_rate",
            unit="pct",
            value=cur.stale_rate,
            previous=prev.stale_rate,
            numerator=cur.stale,
            denominator=cur.tracked_open,
        ),
        Kpi(
            key="transparency",
            unit="pct",
            value=cur.transparency,
            previous=prev.transparency,
            numerator=cur.transparent,
            denominator=cur.tracked_open,
        ),
    ]


def build(
    store: Store,
    config: Config,
    key: str,
    recipient: RecipientConfig,
    pack: Any,
    *,
    now: datetime,
    lang: str | None = None,
    calendar_of: Callable[[str | None], Any] | None = None,
    since: datetime | None = None,
    period: timedelta = PERIOD,
) -> Digest:
    """The digest for recipient ``key`` at ``now``; "what changed" counts from ``since``
    (default: the recipient's last delivered digest, else a week back). For several
    recipients, build them from one :class:`DigestRun`."""
    run = DigestRun(store, config, pack, now=now, calendar_of=calendar_of, period=period)
    return run.digest(key, recipient, lang=lang, since=since)


@dataclass(frozen=True, slots=True)
class _Part:
    """What every recipient with the same scope, ``since`` and timezone is told (amounts not
    yet masked: masking is per recipient)."""

    projects: int
    open_projects: int
    activity: int
    currency: str
    compliance: Compliance
    attention: list[AttentionItem]
    cur: kpi.Figures
    prev: kpi.Figures
    conversion: list[Conversion]
    freshness: list[Bucket]


class DigestRun:
    """One digest run at ``now``: what does not depend on the recipient is computed once and
    shared by every recipient and language built from it.

    Read once per run: the live projects, the violations, each project's event log (when a
    scope first needs it). Computed once per project: its reference, its evaluation by the rule
    pack at ``now`` (of which only an overdue update is kept), and its share of each period's
    KPIs (:func:`kpi.share`, which evaluates the pack on the project as it was at the period's
    end). Per scope, ``since`` and timezone: the sums of those shares, compliance, attention,
    freshness (:class:`_Part`). Per recipient: the recipient's own fields and the masking of
    amounts.

    A run is a snapshot: build it, build the digests, drop it. Projects or violations written
    to the store after its first read are not seen by it.
    """

    def __init__(
        self,
        store: Store,
        config: Config,
        pack: Any,
        *,
        now: datetime,
        calendar_of: Callable[[str | None], Any] | None = None,
        period: timedelta = PERIOD,
    ) -> None:
        self.store = store
        self.config = config
        self.pack = pack
        self.now = now.astimezone(UTC)
        self.period = period
        self.current = kpi.Period.ending(self.now, period)
        self.previous = self.current.previous()
        self._cal_of: Callable[[str | None], Any] = calendar_of or (lambda _t: None)
        self._judge = kpi.pack_judge(pack, self._cal_of)
        self._index = {s: i for i, s in enumerate(config.lifecycle.keys)}
        plan = getattr(pack, "plan", None)
        self._base: str | None = getattr(plan, "base_currency", None)
        self._fx = dict(getattr(plan, "fx", {}) or {})
        self._projects: list[dict[str, Any]] | None = None
        self._violations: list[Violation] | None = None
        self._events: dict[str, list[Event]] = {}
        self._refs: dict[str, ProjectRef] = {}
        self._items: dict[int, ViolationItem] = {}
        self._overdue: dict[str, tuple[Any, Any] | None] = {}
        self._shares: dict[tuple[str, bool, str], kpi.Share] = {}
        self._scoped: dict[Any, list[kpi.History]] = {}
        self._parts: dict[tuple[Any, datetime, str], _Part] = {}

    # ----------------------------------------------------------------- read once

    def projects(self) -> list[dict[str, Any]]:
        """Every live project (canonical JSON), in the store's order."""
        if self._projects is None:
            self._projects = list(self.store.list_projects())
        return self._projects

    def violations(self) -> list[Violation]:
        if self._violations is None:
            self._violations = self.store.list_violations(open_only=False)
        return self._violations

    def histories(self, scope: Scope) -> list[kpi.History]:
        """The scope's projects with their event logs (logs read once per project per run)."""
        key = scope.key
        found = self._scoped.get(key)
        if found is None:
            projects = [p for p in self.projects() if scope.contains(p)]
            missing = [str(p["id"]) for p in projects if str(p["id"]) not in self._events]
            if missing:
                logs = self.store.events_for_projects(missing)
                for pid in missing:
                    self._events[pid] = logs.get(pid, [])
            found = [kpi.History(p, self._events[str(p["id"])]) for p in projects]
            self._scoped[key] = found
        return found

    # ----------------------------------------------------------------- once per project

    def ref(self, data: Mapping[str, Any]) -> ProjectRef:
        pid = str(data["id"])
        ref = self._refs.get(pid)
        if ref is None:
            ref = self._refs[pid] = _ref(data, self.config.lifecycle)
        return ref

    def _item(self, v: Violation, ref: ProjectRef) -> ViolationItem:
        item = self._items.get(v.id)
        if item is None:
            item = self._items[v.id] = _item(v, ref, self.pack)
        return item

    def overdue_update(self, h: kpi.History) -> tuple[Any, Any] | None:
        """(idle days, cadence limit) when the pack, evaluated at ``now``, finds the project
        tracked and past its update cadence; else None. Only this is kept of the evaluation:
        a run holds one per project, and a whole evaluation (every fact) is large."""
        data = h.data
        pid = str(data["id"])
        if pid in self._overdue:
            return self._overdue[pid]
        ev = self.pack.evaluate(data, h.events, self.now, self._cal_of(data.get("team")))
        facts = ev.facts
        found = None
        if ev.admission.tracked and facts.get("cadence_ok") is False:
            found = (facts.get("idle_days"), facts.get("cadence_limit"))
        self._overdue[pid] = found
        return found

    def share(self, h: kpi.History, previous: bool, money: kpi.MoneyConverter) -> kpi.Share:
        key = (str(h.data["id"]), previous, money.base)
        found = self._shares.get(key)
        if found is None:
            period = self.previous if previous else self.current
            found = kpi.share(h, period, self._index, money, self._judge)
            self._shares[key] = found
        return found

    # ----------------------------------------------------------------- per scope

    def _money(self, histories: Sequence[kpi.History]) -> kpi.MoneyConverter:
        base = self._base
        if base is None:
            currencies = Counter(
                str((h.data.get("amount") or {}).get("currency"))
                for h in histories
                if h.data.get("amount")
            )
            base = currencies.most_common(1)[0][0] if currencies else "USD"
        return kpi.MoneyConverter(base, self._fx)

    def _figures(
        self, histories: Sequence[kpi.History], previous: bool, money: kpi.MoneyConverter
    ) -> kpi.Figures:
        period = self.previous if previous else self.current
        fig = kpi.Figures(period=period, open_by_stage=dict.fromkeys(self._index, 0))
        for h in histories:
            fig.add(self.share(h, previous, money))
        return fig

    def _part(self, scope: Scope, since: datetime, tzname: str) -> _Part:
        key = (scope.key, since, tzname)
        part = self._parts.get(key)
        if part is not None:
            return part
        tz = ZoneInfo(tzname)
        histories = self.histories(scope)
        refs = {str(h.data["id"]): self.ref(h.data) for h in histories}
        # compliance: the store's violations (the sweep's record) of in-scope projects only
        violations = [v for v in self.violations() if v.project_id in refs]
        compliance = _compliance(violations, refs, since, self.pack, self._item)
        overdue = {
            str(h.data["id"]): self.overdue_update(h)
            for h in histories
            if h.data.get("status") == "open"
        }
        attention = _attention(histories, overdue, refs, since, self.now, tz)
        money = self._money(histories)
        cur = self._figures(histories, False, money)
        prev = self._figures(histories, True, money)
        lifecycle = self.config.lifecycle
        conversion = []
        for s, nxt in itertools.pairwise(lifecycle.keys):
            if cur.entered.get(s, 0) or prev.entered.get(s, 0):
                conversion.append(
                    Conversion(
                        stage=s,
                        label=_labels(lifecycle, s),
                        next_label=_labels(lifecycle, nxt),
                        moved=cur.moved.get((s, nxt), 0),
                        entered=cur.entered.get(s, 0),
                        rate=cur.conversion(s, nxt),
                        previous=prev.conversion(s, nxt),
                    )
                )
        activity = sum(1 for h in histories for e in h.events if e.at >= since) + sum(
            1
            for h in histories
            if (u := kpi._dt(h.data.get("updated_at"))) is not None and u >= since
        )
        part = _Part(
            projects=len(histories),
            open_projects=sum(1 for h in histories if h.data.get("status") == "open"),
            activity=activity,
            currency=money.base,
            compliance=compliance,
            attention=attention,
            cur=cur,
            prev=prev,
            conversion=conversion,
            freshness=_freshness(histories, self.now),
        )
        self._parts[key] = part
        return part

    # ----------------------------------------------------------------- per recipient

    def digest(
        self,
        key: str,
        recipient: RecipientConfig,
        *,
        lang: str | None = None,
        since: datetime | None = None,
    ) -> Digest:
        """Recipient ``key``'s digest; "what changed" counts from ``since`` (default: the
        recipient's last delivered digest, else a week before the run's ``now``)."""
        now = self.now
        config = self.config
        tzname = recipient.timezone or config.timezone
        if since is None:
            last = self.store.last_digest(key)
            since = last.sent_at if last is not None else now - FIRST_SINCE
        scope = Scope(config, recipient.teams)
        part = self._part(scope, since, tzname)
        cur, prev = part.cur, part.prev
        masked = recipient.mask_amounts
        funnel = [
            StageBar(
                stage=s,
                label=_labels(config.lifecycle, s),
                count=cur.open_by_stage.get(s, 0),
                value=None if masked else cur.pipeline.get(s, Decimal(0)),
                weighted=None if masked else cur.weighted.get(s, Decimal(0)),
            )
            for s in config.lifecycle.keys
        ]
        return Digest(
            recipient=key,
            recipient_name=recipient.name,
            lang=lang or recipient.language,
            timezone=tzname,
            teams=sorted(scope.teams),
            team_labels={
                lg: ", ".join(team_label(config, t, lg) for t in scope.roots)
                for lg in ("en", "zh-CN")
            },
            generated_at=now,
            since=since,
            period_start=self.current.start,
            period_end=self.current.end,
            period_days=self.period.days,
            currency=part.currency,
            masked=masked,
            projects=part.projects,
            open_projects=part.open_projects,
            activity=part.activity,
            compliance=part.compliance,
            attention=part.attention,
            kpis=_kpis(cur, prev, masked),
            conversion=part.conversion,
            funnel=funnel,
            freshness=part.freshness,
        )
