"""Rule sweeps: evaluate every project in the store and record what changed.

A sweep reads projects page by page with their event logs, evaluates the pack, and then, per
project, in one transaction per page:

* records the admission decision on the project when it changed (``SalesProject.admission``,
  plus a ``meaningful=False`` event so the change is in the log but never counts as a person's
  update);
* opens each failed rule as a violation keyed by (rule, project, period): raised once, its
  evidence refreshed while it stays open; an open violation of the same rule with an older
  period (an earlier stale gap, an earlier trigger) is resolved;
* resolves the open violations whose rule now passes or no longer applies, and those of rules
  the pack no longer has;
* escalates violations open longer than their rule's ``escalate_after`` (to the managers of
  the project's team, as the report says).

A rule that fails to evaluate on a project is reported and leaves that project's violations
of that rule as they were; an unexpected error on one project is reported and the sweep goes
on with the others.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bridge.rules.calendar import Calendar
from bridge.rules.engine import LANGS, Evaluation, Rule, RuleResult, text_in
from bridge.rules.loader import RulePack
from bridge.store.store import Event, Store, Violation

__all__ = [
    "AdmissionChange",
    "Escalation",
    "Finding",
    "RuleError",
    "SweepReport",
    "calendars_from_config",
    "managers_from_config",
    "sweep",
]

log = logging.getLogger(__name__)
SOURCE = "rules"
ACTOR = "salesbridge-rules"


@dataclass(frozen=True, slots=True)
class RuleError:
    """A rule (or, with ``rule`` None, the whole evaluation) failed on one project."""

    project_id: str
    rule: str | None
    message: str


@dataclass(frozen=True, slots=True)
class Escalation:
    violation: Violation
    managers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Finding:
    """An open violation and what to say about it, in every language (the texts are kept
    rather than the evaluation, so a sweep of a large portfolio stays small in memory)."""

    violation: Violation
    rule: Rule
    message: Mapping[str, str]
    annotation: Mapping[str, str] | None

    def describe(self, lang: str) -> str:
        """``title: message`` in ``lang`` (the title alone when the message is the title)."""
        title = text_in(self.rule.title, lang)
        msg = text_in(self.message, lang)
        return title if msg == title else f"{title}: {msg}"


@dataclass(frozen=True, slots=True)
class AdmissionChange:
    project_id: str
    old: Mapping[str, Any] | None
    new: Mapping[str, Any]


@dataclass
class SweepReport:
    """What a sweep found and did. ``failing`` is every violation open after the sweep (of the
    projects swept); ``annotations`` the short texts of those whose rule annotates, per project,
    for the write-back to the tools."""

    now: datetime
    evaluated: int = 0
    tracked: int = 0
    opened: list[Violation] = field(default_factory=list)
    resolved: list[Violation] = field(default_factory=list)
    escalated: list[Escalation] = field(default_factory=list)
    errors: list[RuleError] = field(default_factory=list)
    admissions: list[AdmissionChange] = field(default_factory=list)
    failing: list[Finding] = field(default_factory=list)
    annotations: dict[str, list[Finding]] = field(default_factory=dict)

    def as_json(self, lang: str = "en") -> dict[str, Any]:
        def v(x: Violation) -> dict[str, Any]:
            return {
                "rule": x.rule,
                "project": x.project_id,
                "period": x.period,
                "severity": x.severity,
                "owner": x.owner,
                "status": x.status,
                "opened_at": x.opened_at.isoformat(),
                "escalated_at": x.escalated_at.isoformat() if x.escalated_at else None,
                "evidence": x.evidence,
            }

        return {
            "now": self.now.isoformat(),
            "evaluated": self.evaluated,
            "tracked": self.tracked,
            "opened": [v(x) for x in self.opened],
            "resolved": [v(x) for x in self.resolved],
            "escalated": [{**v(e.violation), "managers": list(e.managers)} for e in self.escalated],
            "errors": [
                {"project": e.project_id, "rule": e.rule, "message": e.message} for e in self.errors
            ],
            "admissions": [
                {"project": a.project_id, "old": a.old, "new": a.new} for a in self.admissions
            ],
            "violations": [
                {
                    **v(f.violation),
                    "title": f.rule.title_in(lang),
                    "message": text_in(f.message, lang),
                }
                for f in self.failing
            ],
            "annotations": {
                pid: [text_in(f.annotation, lang) for f in fs if f.annotation]
                for pid, fs in self.annotations.items()
            },
        }


# --------------------------------------------------------------------------- config helpers


def calendars_from_config(config: Any) -> Callable[[str | None], Calendar]:
    """Team name -> its calendar (timezone and holidays; the top-level timezone for a team
    without one or a project without a team). ``config`` is a :class:`bridge.config.Config`."""
    default = Calendar.of(config.timezone)
    cals: dict[str, Calendar] = {
        name: Calendar.of(team.timezone or config.timezone, team.holidays)
        for name, team in config.teams.items()
    }
    return lambda team: cals.get(team or "", default)


def managers_from_config(config: Any) -> dict[str, tuple[str, ...]]:
    """Team name -> the recipients with role ``manager`` who see it (the config has no
    manager field on a team; recipients with that role are the escalation targets)."""
    out: dict[str, list[str]] = defaultdict(list)
    for key, rec in config.recipients.items():
        if rec.role == "manager":
            for team in rec.teams:
                out[team].append(rec.email or key)
    return {k: tuple(v) for k, v in out.items()}


# --------------------------------------------------------------------------- the sweep


def _pages(
    store: Store, project_ids: Sequence[str] | None, size: int
) -> Iterator[list[dict[str, Any]]]:
    if project_ids is not None:
        ids = list(dict.fromkeys(project_ids))
        for i in range(0, len(ids), size):
            found = store.get_projects(ids[i : i + size], include_tombstoned=False)
            yield [found[x] for x in ids[i : i + size] if x in found]
        return
    page: list[dict[str, Any]] = []
    for data in store.list_projects(page_size=size):
        page.append(data)
        if len(page) >= size:
            yield page
            page = []
    if page:
        yield page


def _admission_changed(old: Any, new: Mapping[str, Any]) -> bool:
    if not isinstance(old, dict):
        return True
    return any(old.get(k) != new[k] for k in ("tracked", "rule_version", "reason"))


def _stored_evidence(result: RuleResult) -> dict[str, Any]:
    return {
        **result.evidence,
        "message": {lang: result.message(lang) for lang in LANGS},
    }


def sweep(
    store: Store,
    pack: RulePack,
    *,
    now: datetime | None = None,
    calendars: Callable[[str | None], Calendar] | None = None,
    managers: Mapping[str, Sequence[str]] | None = None,
    project_ids: Sequence[str] | None = None,
    page_size: int = 500,
    record_admission: bool = True,
    annotate_lang: str | None = None,
) -> SweepReport:
    """Evaluate the store's projects (all live ones, or ``project_ids``) and record
    violations, resolutions, escalations and admission decisions. See the module docstring.

    With ``annotate_lang``, the short texts of failing rules that annotate are written to the
    project's ``custom.salesbridge_note`` (cleared when none fail). A mapping that pushes that
    field carries the note into the tool, where reps work; no default mapping does (off by
    default). The write is the bridge's own: it never counts as a person's update.
    """
    now = (now or datetime.now(UTC)).astimezone(UTC)
    cal_of = calendars or (lambda _team: Calendar())
    managers = managers or {}
    report = SweepReport(now=now)
    known_rules = set(pack.rule_ids)
    open_now: dict[str, list[Violation]] = defaultdict(list)
    if project_ids is None:
        for viol in store.list_violations(open_only=True):
            open_now[viol.project_id].append(viol)
    else:
        for pid in dict.fromkeys(project_ids):
            open_now[pid] = store.list_violations(open_only=True, project_id=pid)

    for page in _pages(store, project_ids, page_size):
        ids = [str(p["id"]) for p in page]
        logs = store.events_for_projects(ids)
        evaluations: list[tuple[dict[str, Any], Evaluation]] = []
        for data in page:
            pid = str(data["id"])
            try:
                ev = pack.evaluate(data, logs.get(pid, ()), now, cal_of(data.get("team")))
            except Exception as exc:  # a bug or bad data in one project must not stop the rest
                log.exception("rules: evaluating project %s failed", pid)
                report.errors.append(RuleError(pid, None, f"{type(exc).__name__}: {exc}"))
                continue
            evaluations.append((data, ev))
        with store.transaction():
            if record_admission:
                _record_admissions(store, evaluations, now, report)
            if annotate_lang is not None:
                _record_notes(store, evaluations, now, annotate_lang)
            for _data, ev in evaluations:
                report.evaluated += 1
                report.tracked += ev.admission.tracked
                if ev.admission.error:
                    report.errors.append(RuleError(ev.project_id, "admission", ev.admission.error))
                _record(store, ev, open_now.pop(ev.project_id, []), known_rules, managers, report)
    # Projects that were not evaluated (tombstoned, gone) keep their violations only when
    # they were asked for by id; a full sweep resolves what belongs to vanished projects.
    if project_ids is None:
        with store.transaction():
            for stale in open_now.values():
                for viol in stale:
                    if store.resolve_violation(
                        viol.rule, viol.project_id, period=viol.period, at=now
                    ):
                        report.resolved.append(viol)
    return report


def _record_admissions(
    store: Store,
    evaluations: Sequence[tuple[dict[str, Any], Evaluation]],
    now: datetime,
    report: SweepReport,
) -> None:
    changed = {
        ev.project_id: ev.admission.as_admission(now)
        for data, ev in evaluations
        if _admission_changed(data.get("admission"), ev.admission.as_admission(now))
    }
    if not changed:
        return
    # Re-read inside the transaction, so a sync that wrote the project since the page was
    # read is not undone: only the admission (an engine field no mapping writes) changes.
    fresh = store.get_projects(list(changed))
    events = []
    updated = []
    for pid, new in changed.items():
        data = fresh.get(pid)
        if data is None:
            continue
        old = data.get("admission")
        data["admission"] = new
        updated.append(data)
        events.append(
            Event(
                project_id=pid,
                at=now,
                field="admission",
                old=old,
                new=new,
                source=SOURCE,
                meaningful=False,
                actor=ACTOR,
            )
        )
        report.admissions.append(AdmissionChange(pid, old, new))
    store.put_projects(updated)
    store.append_events(events)


NOTE_FIELD = "salesbridge_note"
"""``custom.salesbridge_note``: what the plan asks of a project, for the tools (annotate)."""


def _record_notes(
    store: Store,
    evaluations: Sequence[tuple[dict[str, Any], Evaluation]],
    now: datetime,
    lang: str,
) -> None:
    wanted: dict[str, str | None] = {}
    for data, ev in evaluations:
        text = "\n".join(ev.annotations(lang)) or None
        if (data.get("custom") or {}).get(NOTE_FIELD) != text:
            wanted[ev.project_id] = text
    if not wanted:
        return
    fresh = store.get_projects(list(wanted))  # re-read: never undo a sync's write
    updated: list[dict[str, Any]] = []
    events: list[Event] = []
    for pid, text in wanted.items():
        row = fresh.get(pid)
        if row is None:
            continue
        custom = dict(row.get("custom") or {})
        old = custom.get(NOTE_FIELD)
        if text is None:
            custom.pop(NOTE_FIELD, None)
        else:
            custom[NOTE_FIELD] = text
        data["custom"] = custom
        updated.append(data)
        events.append(
            Event(
                project_id=pid,
                at=now,
                field=f"custom.{NOTE_FIELD}",
                old=old,
                new=text,
                source=SOURCE,
                meaningful=False,
                actor=ACTOR,
            )
        )
    store.put_projects(updated)
    store.append_events(events)


def _record(
    store: Store,
    ev: Evaluation,
    open_list: Iterable[Violation],
    known_rules: set[str],
    managers: Mapping[str, Sequence[str]],
    report: SweepReport,
) -> None:
    now = ev.now
    open_by_rule: dict[str, list[Violation]] = defaultdict(list)
    for viol in open_list:
        open_by_rule[viol.rule].append(viol)
    for rule_id in [r for r in open_by_rule if r not in known_rules]:
        for viol in open_by_rule.pop(rule_id):
            if store.resolve_violation(viol.rule, viol.project_id, period=viol.period, at=now):
                report.resolved.append(viol)
    annotated: list[Finding] = []
    for result in ev.results:
        rule = result.rule
        current = open_by_rule.get(rule.id, [])
        if result.outcome == "error":
            report.errors.append(RuleError(ev.project_id, rule.id, result.why))
            continue
        if result.outcome != "fail":
            for viol in current:
                if store.resolve_violation(rule.id, ev.project_id, period=viol.period, at=now):
                    report.resolved.append(viol)
            continue
        evidence = _stored_evidence(result)
        same = next((x for x in current if x.period == result.period), None)
        if (
            same is not None
            and same.severity == rule.severity
            and same.owner == ev.owner
            and same.evidence == evidence
        ):
            viol = same  # nothing new to write
        else:
            viol, opened = store.open_violation(
                rule.id,
                ev.project_id,
                period=result.period,
                severity=rule.severity,
                owner=ev.owner,
                evidence=evidence,
                at=now,
            )
            if opened:
                report.opened.append(viol)
        for older in current:
            if older.period != result.period and store.resolve_violation(
                rule.id, ev.project_id, period=older.period, at=now
            ):
                report.resolved.append(older)
        limit = rule.escalate_after
        if (
            viol.status == "open"
            and limit is not None
            and now - viol.opened_at >= limit
            and store.escalate_violation(rule.id, ev.project_id, period=viol.period, at=now)
        ):
            viol = store.get_violation(viol.id)
            report.escalated.append(Escalation(viol, tuple(managers.get(ev.team or "", ()))))
        note = None
        if rule.annotate:
            note = {lang: result.annotation(lang) or "" for lang in LANGS}
        finding = Finding(viol, rule, evidence["message"], note)
        report.failing.append(finding)
        if note is not None:
            annotated.append(finding)
    if annotated:
        report.annotations[ev.project_id] = annotated
