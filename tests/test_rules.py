"""The rule engine's vocabulary, each item at a fixed time (time-machine), with its edge cases:
DST changes in Berlin, business days across holidays, projects with no events, and updates
made by the bridge itself."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import time_machine

from bridge.model import DELIVERABLE_ORDER, ENGINE_FIELDS, LEVEL_ORDER, Admission, SalesProject
from bridge.rules import Calendar, RulePack, load_rules, parse_rules
from bridge.rules.calendar import parse_gap
from bridge.rules.engine import Evaluation
from bridge.rules.facts import (
    ABSENT,
    ROLES,
    Detail,
    FactPlan,
    _cadence,
    _date,
    _dt,
    _empty,
    derive,
    freeze,
    milestone_key,
)
from bridge.store.store import Event

BERLIN = ZoneInfo("Europe/Berlin")
SHANGHAI = ZoneInfo("Asia/Shanghai")
TITLE = 'title = { en = "T", "zh-CN" = "标题" }'


def berlin(*args: int) -> datetime:
    return datetime(*args, tzinfo=BERLIN)  # type: ignore[misc]


@pytest.fixture(scope="module")
def default_pack() -> RulePack:
    return load_rules()


def pack(body: str) -> RulePack:
    return parse_rules([("test.toml", "format = 1\n" + body)])


def project(**fields: Any) -> SalesProject:
    base: dict[str, Any] = {
        "id": "sb-test",
        "name": "Test project",
        "owner": {"name": "Li Wei", "email": "li.wei@example.com"},
        "team": "east",
        "intent": "high",
        "complexity": "high",
    }
    base.update(fields)
    return SalesProject.model_validate(base)


def event(at: datetime, field: str, old: Any = None, new: Any = None, **kw: Any) -> Event:
    return Event(
        project_id="sb-test",
        at=at.astimezone(UTC),
        field=field,
        old=old,
        new=new,
        source=kw.pop("source", "crm"),
        meaningful=kw.pop("meaningful", True),
        actor=kw.pop("actor", "li.wei@example.com"),
    )


def outcome(ev: Evaluation, rule_id: str) -> str:
    return next(r.outcome for r in ev.results if r.rule.id == rule_id)


@pytest.fixture
def monday_in_berlin() -> Iterator[datetime]:
    """Monday 30 March 2026, 09:00 in Berlin: the day after the spring DST change."""
    now = berlin(2026, 3, 30, 9, 0)
    with time_machine.travel(now, tick=False):
        yield now


# --------------------------------------------------------------------------- calendar


def test_business_days_skip_weekends_and_holidays() -> None:
    cal = Calendar.of("Europe/Berlin", [date(2026, 4, 3), date(2026, 4, 6)])  # Easter
    assert cal.business_days(date(2026, 4, 2), date(2026, 4, 7)) == 1  # Thu -> Tue: Tue only
    assert Calendar.of("Europe/Berlin").business_days(date(2026, 4, 2), date(2026, 4, 7)) == 3
    assert cal.business_days(date(2026, 4, 7), date(2026, 4, 2)) == -1
    assert cal.business_days(date(2026, 4, 4), date(2026, 4, 6)) == 0  # Sat -> Easter Monday
    assert cal.add_business_days(date(2026, 4, 2), 1) == date(2026, 4, 7)
    # a holiday on a Saturday changes nothing
    sat = Calendar.of("UTC", [date(2026, 4, 4)])
    assert sat.business_days(date(2026, 4, 3), date(2026, 4, 6)) == 1


def test_calendar_days_follow_the_wall_clock_across_spring_dst() -> None:
    cal = Calendar.of("Europe/Berlin")
    before = berlin(2026, 3, 28, 23, 30)  # Saturday
    after = berlin(2026, 3, 29, 23, 30)  # Sunday, only 23 hours later
    assert after.astimezone(UTC) - before.astimezone(UTC) == timedelta(hours=23)
    assert cal.days_between(before, after) == 1
    assert (after.astimezone(UTC) - before.astimezone(UTC)).days == 0  # what UTC would say


def test_calendar_days_follow_the_wall_clock_across_autumn_dst() -> None:
    cal = Calendar.of("Europe/Berlin")
    start = datetime(2026, 10, 24, 22, 30, tzinfo=UTC)  # Sunday 25 Oct, 00:30 CEST
    end = datetime(2026, 10, 25, 22, 45, tzinfo=UTC)  # Sunday 25 Oct, 23:45 CET
    assert end - start > timedelta(hours=24)
    assert cal.days_between(start, end) == 0  # the same day in Berlin
    assert Calendar.of("UTC").days_between(start, end) == 1


def test_gaps_and_durations() -> None:
    assert parse_gap("daily").unit == "bd"
    assert parse_gap("weekly").amount == 7
    assert parse_gap("2w").amount == 14
    assert parse_gap("36h").describe() == "36 hours"
    with pytest.raises(ValueError, match="not a gap"):
        parse_gap("fortnightly")


# --------------------------------------------------------------------------- admission


def test_admission_tracks_large_contracts_and_strategic_deals(default_pack: RulePack) -> None:
    now = datetime(2026, 3, 30, 9, tzinfo=UTC)
    big = project(intent="low", contract_value={"amount": "4000000", "currency": "CNY"})
    ev = default_pack.evaluate(big, [], now)
    assert ev.admission.tracked
    assert ev.admission.rule == "large_contract"
    assert ev.admission.rule_version == "2026.1"
    assert "500,000" in ev.admission.reason_in("en")
    assert "50 万" in ev.admission.reason_in("zh-CN")
    # The decision is what SalesProject.admission holds.
    adm = Admission.model_validate(ev.admission.as_admission(now))
    assert adm.tracked and adm.rule_version == "2026.1" and adm.decided_at == now
    assert adm.reason.startswith("large_contract: ")

    strategic = project(intent="high", complexity="medium")
    assert default_pack.evaluate(strategic, [], now).admission.rule == "strategic"

    small = project(intent="medium", complexity="high", contract_value=None)
    dropped = default_pack.evaluate(small, [], now)
    assert not dropped.admission.tracked
    assert dropped.admission.reason_in("en") == "below the tracking thresholds"
    assert all(r.outcome == "skip" for r in dropped.results)


def test_admission_rule_that_cannot_decide_is_passed_over() -> None:
    p = pack(
        """
[admission]
version = "v2"
otherwise = "drop"
[admission.rules.region]
when = 'custom.region == "EMEA"'
track = true
reason = { en = "EMEA", "zh-CN" = "欧洲" }
[admission.rules.big]
when = "contract_value != null && contract_value >= 100.0"
track = true
reason = { en = "big", "zh-CN" = "大" }
"""
    )
    now = datetime(2026, 3, 30, tzinfo=UTC)
    ev = p.evaluate(project(contract_value={"amount": "500", "currency": "USD"}), [], now)
    assert ev.admission.tracked and ev.admission.rule == "big"
    ev = p.evaluate(project(), [], now)
    assert not ev.admission.tracked
    assert ev.admission.error is not None and "region" in ev.admission.error


# --------------------------------------------------------------------------- stage criteria


def test_leaving_qualification_needs_analysis_budget_and_decision_maker(
    default_pack: RulePack, monday_in_berlin: datetime
) -> None:
    rules = (
        "qualification.exit.needs_analysis_approved",
        "qualification.exit.budget_range",
        "qualification.exit.decision_maker",
    )
    in_qualification = project(stage="qualification")
    ev = default_pack.evaluate(in_qualification)
    assert [outcome(ev, r) for r in rules] == ["skip"] * 3  # still in the stage

    bare = project(
        stage="proposal", deliverables=[{"kind": "needs_analysis", "status": "submitted"}]
    )
    ev = default_pack.evaluate(bare)
    assert [outcome(ev, r) for r in rules] == ["fail"] * 3
    failed = {r.rule.id: r for r in ev.violations}
    analysis = failed["qualification.exit.needs_analysis_approved"]
    assert analysis.evidence["deliverable.needs_analysis"] == "submitted"
    assert analysis.message("en") == (
        "Needs analysis is submitted, it must be approved before the proposal"
    )
    assert analysis.rule.severity == "critical"

    ready = project(
        stage="proposal",
        deliverables=[{"kind": "needs_analysis", "status": "approved"}],
        custom={"budget_range": "1-2M CNY"},
        stakeholders=[{"name": "王总", "role": "decision_maker"}],
    )
    ev = default_pack.evaluate(ready)
    assert [outcome(ev, r) for r in rules] == ["pass"] * 3


def test_leaving_proposal_needs_submission_and_first_review(
    default_pack: RulePack, monday_in_berlin: datetime
) -> None:
    rules = ("proposal.exit.proposal_submitted", "proposal.exit.customer_first_review")
    draft = project(stage="negotiation", deliverables=[{"kind": "proposal", "status": "draft"}])
    assert [outcome(default_pack.evaluate(draft), r) for r in rules] == ["fail", "fail"]
    done = project(
        stage="negotiation",
        deliverables=[{"kind": "proposal", "status": "submitted"}],
        milestones=[{"name": "Customer review", "achieved_at": "2026-03-20T10:00:00Z"}],
    )
    assert [outcome(default_pack.evaluate(done), r) for r in rules] == ["pass", "pass"]
    planned = project(
        stage="negotiation",
        deliverables=[{"kind": "proposal", "status": "approved"}],
        milestones=[{"name": "Customer review", "due": "2026-04-20"}],  # not achieved yet
    )
    assert [outcome(default_pack.evaluate(planned), r) for r in rules] == ["pass", "fail"]


def test_contract_review_is_done_before_signing(
    default_pack: RulePack, monday_in_berlin: datetime
) -> None:
    rule = "negotiation.exit.contract_review_done"
    negotiating = project(stage="negotiation")
    assert outcome(default_pack.evaluate(negotiating), rule) == "skip"
    explained = default_pack.evaluate(negotiating, explain=True)
    why = next(r.why for r in explained.results if r.rule.id == rule)
    assert "the check would fail" in why
    signing = project(
        stage="signing", deliverables=[{"kind": "contract_review", "status": "draft"}]
    )
    assert outcome(default_pack.evaluate(signing), rule) == "fail"
    reviewed = project(
        stage="signing", deliverables=[{"kind": "contract_review", "status": "approved"}]
    )
    assert outcome(default_pack.evaluate(reviewed), rule) == "pass"


# --------------------------------------------------------------------------- evidence

EVIDENCE = """
[settings]
deliverable_kinds = ["proposal"]
[checklists.bant]
title = { en = "BANT", "zh-CN" = "BANT" }
items.budget = "has_budget"
items.authority = "stakeholders.decision_maker >= 1"
items.need = "pain_points >= 1"
items.timeline = "days_to_close != null"
[rules.proposal_submitted]
check = "deliverable.proposal >= SUBMITTED"
%s
[rules.two_influencers]
check = "stakeholders.influencer >= 2"
%s
[rules.qualified]
check = "checklist.bant >= 3"
%s
""".replace("%s", TITLE)


@pytest.mark.parametrize(
    ("deliverables", "expected"),
    [
        ([], "fail"),  # no deliverable of the kind at all
        ([{"kind": "proposal", "status": "missing"}], "fail"),
        ([{"kind": "proposal", "status": "draft"}], "fail"),
        ([{"kind": "proposal", "status": "submitted"}], "pass"),
        ([{"kind": "proposal", "status": "approved"}], "pass"),
        # the best of several deliverables of one kind counts
        (
            [{"kind": "proposal", "status": "draft"}, {"kind": "proposal", "status": "approved"}],
            "pass",
        ),
    ],
)
def test_deliverable_at_status_or_better(deliverables: list[dict[str, str]], expected: str) -> None:
    with time_machine.travel(datetime(2026, 3, 30, 9, tzinfo=UTC), tick=False):
        ev = pack(EVIDENCE).evaluate(project(deliverables=deliverables))
    assert outcome(ev, "proposal_submitted") == expected


def test_stakeholder_role_count_and_k_of_n_checklist() -> None:
    p = pack(EVIDENCE)
    now = datetime(2026, 3, 30, 9, tzinfo=UTC)
    one = project(stakeholders=[{"name": "A", "role": "influencer"}])
    two = project(
        stakeholders=[{"name": "A", "role": "influencer"}, {"name": "B", "role": "influencer"}]
    )
    assert outcome(p.evaluate(one, [], now), "two_influencers") == "fail"
    assert outcome(p.evaluate(two, [], now), "two_influencers") == "pass"

    two_of_four = project(
        custom={"budget": "1M"}, stakeholders=[{"name": "王总", "role": "decision_maker"}]
    )
    ev = p.evaluate(two_of_four, [], now)
    assert ev.facts["checklist"] == {"bant": 2}
    assert outcome(ev, "qualified") == "fail"
    assert ev.violations[-1].evidence == {"checklist.bant": 2}
    three = project(
        custom={"budget": "1M"},
        stakeholders=[{"name": "王总", "role": "decision_maker"}],
        expected_close_date="2026-06-30",
    )
    assert outcome(p.evaluate(three, [], now), "qualified") == "pass"


# --------------------------------------------------------------------------- lifecycle

LIFECYCLE = """
[rules.no_skips]
check = "size(skipped_stages) == 0"
%s
[rules.forward_only]
check = "!moved_backwards"
%s
[rules.not_stuck]
check = "days_in_stage == null || days_in_stage <= 30"
%s
[rules.fresh_in_proposal]
when = 'stage == "proposal"'
check = "entered.proposal <= 7 && entered.qualification >= 0"
%s
""".replace("%s", TITLE)


def test_entered_skipped_backwards_and_time_in_stage(monday_in_berlin: datetime) -> None:
    p = pack(LIFECYCLE)
    walked = [
        event(berlin(2026, 3, 1, 10), "stage", "lead", "qualification"),
        event(berlin(2026, 3, 25, 10), "stage", "qualification", "proposal"),
    ]
    ev = p.evaluate(project(stage="proposal"), walked)
    assert ev.facts["entered"]["proposal"] == 5
    assert ev.facts["entered"]["qualification"] == 29
    assert ev.facts["days_in_stage"] == 5
    assert ev.facts["business_days_in_stage"] == 3  # Thu 26, Fri 27, Mon 30
    assert [r.rule.id for r in ev.violations] == []

    jumped = [event(berlin(2026, 3, 25, 10), "stage", "lead", "negotiation")]
    ev = p.evaluate(project(stage="negotiation"), jumped)
    assert ev.facts["skipped_stages"] == ["qualification", "proposal"]
    assert outcome(ev, "no_skips") == "fail"
    # the optional delivery stage can be skipped
    to_delivery = [event(berlin(2026, 3, 25), "stage", "signing", "delivery")]
    assert p.evaluate(project(stage="delivery"), to_delivery).facts["skipped_stages"] == []
    won_directly = [event(berlin(2026, 3, 25), "stage", "negotiation", "delivery")]
    assert p.evaluate(project(stage="delivery"), won_directly).facts["skipped_stages"] == [
        "signing"
    ]

    back = [*walked, event(berlin(2026, 3, 27, 10), "stage", "proposal", "qualification")]
    ev = p.evaluate(project(stage="qualification"), back)
    assert ev.facts["moved_backwards"] and ev.facts["backward_moves"] == 1
    assert ev.facts["previous_stage"] == "proposal"
    assert outcome(ev, "forward_only") == "fail"

    old = project(stage="proposal", stage_entered_at=berlin(2026, 2, 1, 9))  # no events
    ev = p.evaluate(old)
    assert ev.facts["days_in_stage"] == 57
    assert outcome(ev, "not_stuck") == "fail"
    assert outcome(ev, "fresh_in_proposal") == "fail"  # entered long ago, never qualified


# --------------------------------------------------------------------------- time

TIME = """
[counters.close_date_pushed]
field = "expected_close_date"
change = "later"
window = "90d"
[rules.idle]
check = "idle_days == null || idle_days <= 7"
message = { en = "idle for {idle_days} days", "zh-CN" = "{idle_days} 天未更新" }
%s
[rules.idle_business]
check = "business_idle_days != null && business_idle_days <= 2"
%s
[rules.slipping]
check = "count.close_date_pushed < 2"
%s
[rules.closing_soon]
check = "days_to_close == null || days_to_close >= 14"
%s
[rules.overdue]
check = "overdue_tasks == 0 && overdue_milestones == 0"
%s
[rules.next_step]
check = "next_steps_without_owner == 0 && next_steps_without_due == 0"
%s
[rules.risks]
check = "risks_without_mitigation == 0"
%s
""".replace("%s", TITLE)


def test_idle_counts_only_a_persons_changes(monday_in_berlin: datetime) -> None:
    p = pack(TIME)
    person = event(berlin(2026, 3, 20, 10), "amount", {"amount": "1"}, {"amount": "2"})
    bridge = event(berlin(2026, 3, 30, 8), "custom.sync_note", None, "x", meaningful=False)
    engine = event(berlin(2026, 3, 30, 8, 30), "updated_at", None, "2026-03-30T06:30:00Z")
    links = event(berlin(2026, 3, 30, 8, 40), "links.jira", None, {"ref": "S-1"})
    ev = p.evaluate(project(), [person, bridge, engine, links])
    assert ev.facts["idle_days"] == 10
    assert ev.facts["business_idle_days"] == 6  # 23..27 and 30 March
    assert ev.detail.last_update == person.at
    assert outcome(ev, "idle") == "fail"
    assert ev.violations[0].message("en") == "idle for 10 days"
    assert ev.violations[0].message("zh-CN") == "10 天未更新"
    # a person's change does reset it
    ev = p.evaluate(project(), [person, event(berlin(2026, 3, 30, 8), "next_steps", [], [])])
    assert ev.facts["idle_days"] == 0


def test_a_project_with_no_events(monday_in_berlin: datetime) -> None:
    p = pack(TIME)
    recorded = project(last_meaningful_update_at=berlin(2026, 3, 27, 18))  # Friday evening
    ev = p.evaluate(recorded, [])
    assert ev.facts["idle_days"] == 3 and ev.facts["business_idle_days"] == 1
    assert ev.facts["stage_changes"] == 0 and ev.facts["count"] == {"close_date_pushed": 0}
    assert outcome(ev, "idle") == "pass"
    created = project(created_at=berlin(2026, 3, 2, 9))
    assert p.evaluate(created, []).facts["idle_days"] == 28
    nothing = project()
    ev = p.evaluate(nothing, [])
    assert ev.facts["idle_days"] is None and ev.facts["days_in_stage"] is None
    assert outcome(ev, "idle") == "pass"
    assert outcome(ev, "idle_business") == "fail"


def test_idle_days_across_the_spring_dst_change() -> None:
    p = pack(TIME)
    last = berlin(2026, 3, 28, 23, 30)  # Saturday night
    with time_machine.travel(berlin(2026, 3, 29, 23, 30), tick=False):  # 23 hours later
        ev = p.evaluate(project(last_meaningful_update_at=last), [], team=Calendar.of(BERLIN))
    assert ev.facts["idle_days"] == 1
    assert ev.facts["idle_hours"] == 23
    assert ev.facts["business_idle_days"] == 0  # Sunday


def test_idle_days_across_the_autumn_dst_change() -> None:
    p = pack(TIME)
    last = datetime(2026, 10, 24, 22, 30, tzinfo=UTC)  # Sunday 00:30 CEST
    with time_machine.travel(datetime(2026, 10, 25, 22, 45, tzinfo=UTC), tick=False):
        in_berlin = p.evaluate(
            project(last_meaningful_update_at=last), [], team=Calendar.of("Europe/Berlin")
        )
        in_shanghai = p.evaluate(
            project(last_meaningful_update_at=last), [], team=Calendar.of("Asia/Shanghai")
        )
    assert in_berlin.facts["idle_days"] == 0  # 25 hours, one Berlin day
    assert in_berlin.facts["idle_hours"] == 24
    assert in_shanghai.facts["idle_days"] == 1  # 06:30 Sunday -> 06:45 Monday in Shanghai
    assert in_shanghai.facts["business_idle_days"] == 1


def test_business_idle_days_across_a_holiday() -> None:
    p = pack(TIME)
    easter = Calendar.of("Europe/Berlin", [date(2026, 4, 3), date(2026, 4, 6)])
    thursday = project(last_meaningful_update_at=berlin(2026, 4, 2, 16))
    with time_machine.travel(berlin(2026, 4, 7, 9), tick=False):  # Tuesday after Easter
        ev = p.evaluate(thursday, [], team=easter)
        plain = p.evaluate(thursday, [], team=Calendar.of("Europe/Berlin"))
    assert ev.facts["idle_days"] == 5
    assert ev.facts["business_idle_days"] == 1
    assert outcome(ev, "idle_business") == "pass"
    assert plain.facts["business_idle_days"] == 3
    assert outcome(plain, "idle_business") == "fail"


def test_close_date_pushed_twice_in_90_days(monday_in_berlin: datetime) -> None:
    p = pack(TIME)
    pushes = [
        event(berlin(2025, 12, 1, 9), "expected_close_date", "2026-01-31", "2026-02-28"),  # >90d
        event(berlin(2026, 2, 2, 9), "expected_close_date", "2026-02-28", "2026-04-30"),
        event(berlin(2026, 3, 2, 9), "expected_close_date", "2026-04-30", "2026-03-31"),  # in
        event(berlin(2026, 3, 9, 9), "expected_close_date", "2026-03-31", "2026-06-30"),
        event(
            berlin(2026, 3, 10, 9),
            "expected_close_date",
            "2026-06-30",
            "2026-07-31",
            meaningful=False,
        ),
    ]
    ev = p.evaluate(project(), pushes[:3])
    assert ev.facts["count"]["close_date_pushed"] == 1
    assert outcome(ev, "slipping") == "pass"
    ev = p.evaluate(project(), pushes)
    assert ev.facts["count"]["close_date_pushed"] == 2
    assert outcome(ev, "slipping") == "fail"
    assert ev.violations[-1].evidence == {"count.close_date_pushed": 2}


def test_days_until_date_overdue_work_next_steps_and_risks(monday_in_berlin: datetime) -> None:
    p = pack(TIME)
    clean = project(
        expected_close_date="2026-05-30",
        tasks=[{"title": "Demo", "due": "2026-03-27", "done": True}],
        milestones=[{"name": "Kickoff", "due": "2026-04-01"}],
        next_steps=[{"what": "Call", "owner": {"email": "a@example.com"}, "due": "2026-04-02"}],
        risks=[{"description": "Budget", "severity": "high", "mitigation": "Sponsor"}],
        last_meaningful_update_at=berlin(2026, 3, 30, 8),
    )
    ev = p.evaluate(clean)
    assert ev.facts["days_to_close"] == 61
    assert ev.violations == []
    messy = project(
        expected_close_date="2026-04-09",
        tasks=[{"title": "Demo", "due": "2026-03-27"}, {"title": "Quote", "due": "2026-03-30"}],
        milestones=[{"name": "Kickoff", "due": "2026-03-29"}],
        next_steps=[{"what": "Call"}, {"what": "Mail", "owner": {"email": "a@example.com"}}],
        risks=[
            {"description": "Budget", "severity": "high"},
            {"description": "Closed one", "status": "closed"},
        ],
        last_meaningful_update_at=berlin(2026, 3, 30, 8),
    )
    ev = p.evaluate(messy)
    f = ev.facts
    assert f["days_to_close"] == 10 and f["business_days_to_close"] == 8
    assert (f["overdue_tasks"], f["overdue_milestones"], f["open_tasks"]) == (1, 1, 2)
    assert (f["next_steps_without_owner"], f["next_steps_without_due"]) == (1, 2)
    assert (f["risks_without_mitigation"], f["high_risks_without_mitigation"]) == (1, 1)
    assert {r.rule.id for r in ev.violations} == {
        "closing_soon",
        "overdue",
        "next_step",
        "risks",
    }


# --------------------------------------------------------------------------- cadence

CADENCE = """
[cadence]
default = "monthly"
evidence = ["cadence_limit", "idle_days", "business_idle_days"]
[cadence.max_gap]
lead = { low = "monthly", high = "weekly" }
negotiation = { high = "daily", medium = "3bd", low = "36h" }
"""


@pytest.mark.parametrize(
    ("stage", "priority", "last_update", "expected"),
    [
        ("negotiation", "high", berlin(2026, 3, 27, 17), "pass"),  # Fri -> Mon: 1 business day
        ("negotiation", "high", berlin(2026, 3, 26, 17), "fail"),  # Thu -> Mon: 2
        ("negotiation", "medium", berlin(2026, 3, 25, 9), "pass"),  # Wed -> Mon: 3
        ("negotiation", "low", berlin(2026, 3, 28, 20), "pass"),  # 36 hours
        ("negotiation", "low", berlin(2026, 3, 28, 20, 59), "pass"),
        ("negotiation", "low", berlin(2026, 3, 28, 19), "fail"),  # 37 hours
        ("lead", "low", berlin(2026, 3, 1, 9), "pass"),  # 29 days, monthly
        ("lead", "low", berlin(2026, 2, 27, 9), "fail"),  # 31 days
        ("lead", "high", berlin(2026, 3, 23, 9), "pass"),  # 7 days, weekly
        ("lead", "high", berlin(2026, 3, 22, 9), "fail"),
        ("proposal", "medium", berlin(2026, 3, 2, 9), "pass"),  # no row: the default
    ],
)
def test_cadence_table(
    stage: str, priority: str, last_update: datetime, expected: str, monday_in_berlin: datetime
) -> None:
    p = project(stage=stage, priority=priority, last_meaningful_update_at=last_update)
    ev = pack(CADENCE).evaluate(p, [], team=Calendar.of("Europe/Berlin"))
    assert outcome(ev, "cadence") == expected


def test_cadence_violation_evidence_period_and_since(monday_in_berlin: datetime) -> None:
    last = berlin(2026, 3, 26, 17)
    p = project(stage="negotiation", priority="high", last_meaningful_update_at=last)
    ev = pack(CADENCE).evaluate(p, [], team=Calendar.of("Europe/Berlin"))
    [result] = ev.violations
    assert result.period == last.astimezone(UTC).isoformat()  # one violation per silence
    assert result.since == berlin(2026, 3, 30, 0, 0).astimezone(UTC)  # 2nd business day
    assert result.evidence["cadence_limit"] == "1 business day"
    assert result.evidence["business_idle_days"] == 2
    assert result.evidence["idle_days"] == 4
    assert result.evidence["cadence_ok"] is False


def test_default_cadence_negotiation_high_daily_and_lead_low_monthly(
    default_pack: RulePack, monday_in_berlin: datetime
) -> None:
    cal = Calendar.of("Europe/Berlin")
    hot = project(
        stage="negotiation", priority="high", last_meaningful_update_at=berlin(2026, 3, 26, 9)
    )
    assert outcome(default_pack.evaluate(hot, [], team=cal), "cadence") == "fail"
    cold = project(stage="lead", priority="low", last_meaningful_update_at=berlin(2026, 3, 6, 9))
    assert outcome(default_pack.evaluate(cold, [], team=cal), "cadence") == "pass"


# --------------------------------------------------------------------------- triggers

TRIGGERS = """
[triggers.stage_changed]
field = "stage"
update_within = "24h"
%s
[triggers.amount_changed]
field = "amount"
change = "pct"
min_pct = 20
update_within = "48h"
%s
[triggers.close_date_slipped]
field = "expected_close_date"
change = "later"
update_within = "48h"
%s
[triggers.high_risk_raised]
field = "risks"
change = "risk_raised"
min_severity = "high"
update_within = "24h"
%s
""".replace("%s", TITLE)


def test_stage_change_demands_an_update_within_24_hours(monday_in_berlin: datetime) -> None:
    p = pack(TRIGGERS)
    moved = event(berlin(2026, 3, 29, 8), "stage", "lead", "qualification")
    ev = p.evaluate(project(stage="qualification"), [moved])
    assert outcome(ev, "trigger.stage_changed") == "fail"
    result = ev.violations[0]
    assert result.period == moved.at.isoformat()
    assert result.since == moved.at + timedelta(hours=24)
    recent = event(berlin(2026, 3, 29, 10), "stage", "lead", "qualification")
    assert outcome(p.evaluate(project(), [recent]), "trigger.stage_changed") == "pass"  # 23h
    answered = [moved, event(berlin(2026, 3, 29, 20), "next_steps", [], [{"what": "x"}])]
    assert outcome(p.evaluate(project(), answered), "trigger.stage_changed") == "pass"
    by_bridge = [moved, event(berlin(2026, 3, 29, 20), "custom.x", None, 1, meaningful=False)]
    assert outcome(p.evaluate(project(), by_bridge), "trigger.stage_changed") == "fail"


def test_amount_change_over_20_percent(monday_in_berlin: datetime) -> None:
    p = pack(TRIGGERS)
    at = berlin(2026, 3, 27, 9)
    small = event(
        at,
        "amount",
        {"amount": "100000", "currency": "USD"},
        {"amount": "115000", "currency": "USD"},
    )
    big = event(
        at,
        "amount",
        {"amount": "100000", "currency": "USD"},
        {"amount": "75000", "currency": "USD"},
    )
    assert outcome(p.evaluate(project(), [small]), "trigger.amount_changed") == "pass"
    assert outcome(p.evaluate(project(), [big]), "trigger.amount_changed") == "fail"


def test_close_date_slipped_and_high_risk_raised(monday_in_berlin: datetime) -> None:
    p = pack(TRIGGERS)
    at = berlin(2026, 3, 27, 9)
    earlier = event(at, "expected_close_date", "2026-06-30", "2026-05-31")
    later = event(at, "expected_close_date", "2026-05-31", "2026-06-30")
    assert outcome(p.evaluate(project(), [earlier]), "trigger.close_date_slipped") == "pass"
    assert outcome(p.evaluate(project(), [later]), "trigger.close_date_slipped") == "fail"
    medium = [{"description": "Delay", "severity": "medium"}]
    high = [*medium, {"description": "Budget cut", "severity": "high"}]
    raised = event(at, "risks", medium, high)
    merely_medium = event(at, "risks", [], medium)
    assert outcome(p.evaluate(project(), [merely_medium]), "trigger.high_risk_raised") == "pass"
    assert outcome(p.evaluate(project(), [raised]), "trigger.high_risk_raised") == "fail"
    unchanged = event(at, "risks", high, [*high, {"description": "x", "severity": "low"}])
    assert outcome(p.evaluate(project(), [unchanged]), "trigger.high_risk_raised") == "pass"


# --------------------------------------------------------------------------- outcomes


def test_annotation_text_in_both_languages(
    default_pack: RulePack, monday_in_berlin: datetime
) -> None:
    p = project(stage="signing", priority="high", last_meaningful_update_at=berlin(2026, 3, 20, 9))
    ev = default_pack.evaluate(p, [], team=Calendar.of("Europe/Berlin"))
    assert "Contract review missing" in ev.annotations("en")
    assert "缺少合同评审" in ev.annotations("zh-CN")
    assert "Update overdue" in ev.annotations("en")
    # rules that do not annotate give no text
    assert all(r.annotation("en") is None for r in ev.violations if not r.rule.annotate)


def test_a_rule_that_throws_on_one_project_does_not_stop_the_others() -> None:
    p = pack(
        """
[rules.emea]
check = 'custom.region == "EMEA"'
%s
[rules.closing]
check = "days_to_close > 0"
%s
[rules.owner]
check = "has_owner"
%s
""".replace("%s", TITLE)
    )
    now = datetime(2026, 3, 30, tzinfo=UTC)
    good = p.evaluate(project(custom={"region": "EMEA"}, expected_close_date="2026-04-30"), [], now)
    assert [r.outcome for r in good.results] == ["pass", "pass", "pass"]
    bad = p.evaluate(project(owner=None), [], now)  # no region, no close date
    assert [r.outcome for r in bad.results] == ["error", "error", "fail"]
    assert "has(custom.region)" in bad.results[0].why
    assert "null" in bad.results[1].why
    again = p.evaluate(
        project(custom={"region": "APAC"}, expected_close_date="2026-04-30"), [], now
    )
    assert [r.outcome for r in again.results] == ["fail", "pass", "pass"]


def test_memo_keeps_types_apart() -> None:
    """1, 1.0 and true are different values in CEL; the results cache must not mix them."""
    p = pack('[rules.flag]\ncheck = "custom.flag == true"\n' + TITLE)
    now = datetime(2026, 3, 30, tzinfo=UTC)
    assert p.evaluate(project(custom={"flag": True}), [], now).results[0].outcome == "pass"
    assert p.evaluate(project(custom={"flag": 1}), [], now).results[0].outcome == "fail"
    assert p.evaluate(project(custom={"flag": True}), [], now).results[0].outcome == "pass"


def test_evaluate_uses_the_current_time_when_none_is_given(default_pack: RulePack) -> None:
    with time_machine.travel(datetime(2026, 7, 1, 12, tzinfo=UTC), tick=False):
        ev = default_pack.evaluate(project(created_at=datetime(2026, 6, 1, 12, tzinfo=UTC)))
    assert ev.now == datetime(2026, 7, 1, 12, tzinfo=UTC)
    assert ev.facts["idle_days"] == 30


def test_module_level_evaluate_uses_the_default_pack() -> None:
    from bridge.rules import evaluate

    now = datetime(2026, 3, 30, 9, tzinfo=UTC)
    ev = evaluate(project(stage="signing"), [], now, Calendar.of("Asia/Shanghai"))
    assert ev.admission.tracked
    assert "negotiation.exit.contract_review_done" in {r.rule.id for r in ev.violations}
    assert ev.project_id == "sb-test" and ev.owner == "li.wei@example.com" and ev.team == "east"


@pytest.mark.parametrize(
    ("spec", "old", "new", "counted"),
    [
        ('field = "description"\nchange = "any"', "a", "b", True),
        ('field = "description"\nchange = "set"', None, "b", True),
        ('field = "description"\nchange = "set"', "a", "b", False),
        ('field = "description"\nchange = "cleared"', "a", "", True),
        ('field = "status"\nchange = "to"\nvalue = "lost"', "open", "lost", True),
        ('field = "status"\nchange = "to"\nvalue = "lost"', "lost", "open", False),
        ('field = "status"\nchange = "from"\nvalue = "lost"', "lost", "open", True),
        ('field = "probability"\nchange = "increase"', 20, 40, True),
        ('field = "probability"\nchange = "decrease"', 20, 40, False),
        (
            'field = "amount"\nchange = "pct"\nmin_pct = 20',
            {"amount": "100"},
            {"amount": "80"},
            True,
        ),
        (
            'field = "amount"\nchange = "pct"\nmin_pct = 20',
            {"amount": "100"},
            {"amount": "81"},
            False,
        ),
        ('field = "expected_close_date"\nchange = "earlier"', "2026-05-01", "2026-04-01", True),
        ('field = "customer"\nchange = "any"', None, "x", True),  # customer.name is in customer
    ],
)
def test_kinds_of_change(spec: str, old: Any, new: Any, counted: bool) -> None:
    p = pack(f'[counters.c]\n{spec}\nwindow = "30d"\n')
    field = "customer.name" if '"customer"' in spec else spec.split('"')[1]
    now = datetime(2026, 3, 30, 9, tzinfo=UTC)
    ev = p.evaluate(project(), [event(now - timedelta(days=1), field, old, new)], now)
    assert ev.facts["count"]["c"] == int(counted)


def test_chinese_messages_use_stage_labels_and_chinese_units(
    default_pack: RulePack, monday_in_berlin: datetime
) -> None:
    p = project(
        stage="negotiation",
        priority="high",
        stage_entered_at=berlin(2026, 1, 2, 9),
        last_meaningful_update_at=berlin(2026, 3, 20, 9),
    )
    ev = default_pack.evaluate(p, [], team=Calendar.of("Europe/Berlin"))
    failed = {r.rule.id: r for r in ev.violations}
    assert failed["stuck_in_stage"].message("zh-CN") == "已在 商务谈判与合同评审 阶段停留 87 天"
    assert failed["stuck_in_stage"].message("en") == "In negotiation for 87 days"
    assert "要求每 1 个工作日更新一次" in failed["cadence"].message("zh-CN")
    assert "need one every 1 business day" in failed["cadence"].message("en")


# --------------------------------------------------------------------------- the fast path
# derive() was rewritten for speed (issue #12: caches on the plan and the calendar, watchers
# grouped per event field, flat entries copied in a loop) and Evaluator._check walks prepared
# rows. reference_derive below is the implementation before that rewrite, kept verbatim as
# the oracle (only its per-plan cache of event-field watchers is computed inline), with the
# money helper of the time. Both must agree on every fact, every detail and every outcome.


def _reference_money(v: Any, plan: FactPlan) -> tuple[float | None, str]:
    if not isinstance(v, dict):
        return None, ""
    cur = v.get("currency") or ""
    try:
        amt = float(v.get("amount"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None, cur
    if plan.base_currency is None or cur == plan.base_currency:
        return amt, cur
    rate = plan.fx.get(cur)
    return (None, cur) if rate is None else (amt * float(rate), cur)


def reference_derive(
    project: Mapping[str, Any],
    events: Sequence[Event],
    now: datetime,
    cal: Calendar,
    plan: FactPlan,
) -> tuple[dict[str, Any], Detail]:
    """Every fact of :data:`FACTS` (checklists aside: they are expressions) for one project.

    ``project`` is the canonical JSON form; ``events`` its event log, oldest first. Entries of
    the map facts in :data:`FLATTENED` are also stored under ``<fact>.<key>``.
    """
    facts: dict[str, Any] = {}
    detail = Detail()
    tz = cal.tz
    today = now.astimezone(tz).date()
    stages = plan.stages
    index = plan.index
    get = project.get

    # -- project
    stage = get("stage") or "lead"
    status = get("status") or "open"
    priority = get("priority") or "medium"
    facts["stage"] = stage
    facts["stage_index"] = index.get(stage, -1)
    facts["status"] = status
    facts["is_open"] = status == "open"
    facts["priority"] = LEVEL_ORDER.get(priority, -1)
    facts["urgency"] = LEVEL_ORDER.get(get("urgency") or "", -1)
    facts["importance"] = LEVEL_ORDER.get(get("importance") or "", -1)
    facts["intent"] = LEVEL_ORDER.get(get("intent") or "", -1)
    facts["complexity"] = LEVEL_ORDER.get(get("complexity") or "", -1)
    amount, currency = _reference_money(get("amount"), plan)
    contract = get("contract_value")
    facts["amount"] = amount
    facts["contract_value"] = _reference_money(contract, plan)[0] if contract else amount
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
    facts["pain_points"] = sum(1 for n in needs if n.get("pain_point"))
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
        supportive += attitude == "supportive"
        opposed += attitude == "opposed"
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
    windows = {name: now - span for name, (_c, span) in plan.counters.items()}
    latest_trigger: dict[str, Event] = {}
    for e in events:
        f = e.field
        at = e.at
        if at > now:
            continue  # the log may run ahead of an explicit `now` (tests, replays)
        engine_field = f.split(".")[0] in ENGINE_FIELDS
        seen = plan.watchers(f)
        if e.meaningful and not engine_field and (last_update is None or at > last_update):
            last_update, last_update_by = at, e.actor
        if f == "stage":
            new, old = e.new, e.old
            if isinstance(new, str):
                entered_at[new] = at
            moves += 1
            last_move = e
            i_old = index.get(old) if isinstance(old, str) else None
            i_new = index.get(new) if isinstance(new, str) else None
            if i_old is not None and i_new is not None:
                if i_new < i_old:
                    backward += 1
                else:
                    for k in stages[i_old + 1 : i_new]:
                        if k not in plan.optional_stages and k not in skipped:
                            skipped.append(k)
        if seen:
            for name, change in seen:
                if change.meaningful_only and not e.meaningful:
                    continue
                if change.change != "any" and not change.matches(e):
                    continue
                if name.startswith("trigger:"):
                    latest_trigger[name[8:]] = e
                elif at >= windows[name]:
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
            overdue_tasks += due is not None and due < today
    facts["open_tasks"] = open_tasks
    facts["overdue_tasks"] = overdue_tasks
    facts["overdue_milestones"] = overdue_milestones
    steps = get("next_steps") or ()
    facts["next_steps"] = len(steps)
    no_owner = no_due = overdue_steps = 0
    for st in steps:
        o = st.get("owner")
        no_owner += not (isinstance(o, dict) and (o.get("email") or o.get("name")))
        due = _date(st.get("due"))
        no_due += due is None
        overdue_steps += due is not None and due < today
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
        if LEVEL_ORDER.get(r.get("severity") or "medium", 1) >= 2:
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
    for trig in plan.triggers:
        ev = latest_trigger.get(trig.id)
        late = False
        if ev is not None:
            answered = last_update is not None and last_update > ev.at
            due_at = ev.at + trig.within
            late = not answered and now > due_at
            if late:
                detail.triggers[trig.id] = (ev, due_at)
        overdue[trig.id] = late
    facts["trigger_overdue"] = overdue
    for name, pairs in plan.flat_names:
        m = facts[name]
        if name == "custom":  # free-form values: frozen, and an absent key is not null
            for k, flat_name in pairs:
                facts[flat_name] = freeze(m.get(k, ABSENT))
        else:
            for k, flat_name in pairs:
                facts[flat_name] = m.get(k)
    for name in plan.frozen_lists:
        facts["#" + name] = tuple(facts[name])
    return facts, detail


VARIED_PACK = (
    """
[settings]
deliverable_kinds = ["proposal", "contract"]

[admission]
version = "t"
otherwise = "track"

[counters.owner_set]
field = "owner"
change = "set"
window = "30d"

[counters.owner_cleared]
field = "owner"
change = "cleared"
window = "30d"

[counters.lost]
field = "status"
change = "to"
value = "lost"
window = "60d"

[counters.reopened]
field = "status"
change = "from"
value = "lost"
window = "60d"

[counters.up]
field = "probability"
change = "increase"
window = "90d"

[counters.down]
field = "amount"
change = "decrease"
window = "90d"
meaningful_only = false

[counters.pulled_in]
field = "expected_close_date"
change = "earlier"
window = "90d"

[counters.customer_edits]
field = "customer"
window = "14d"

[rules.custom_read]
check = 'has(custom.budget) || custom.tier == "gold"'
"""
    + TITLE
    + """
[rules.counted]
check = "count.owner_set + count.owner_cleared + count.lost + count.reopened + count.up """
    + """+ count.down + count.pulled_in + count.customer_edits < 3"
"""
    + TITLE
    + TRIGGERS
)


def _logged(
    pid: str, at: datetime, field: str, old: Any, new: Any, meaningful: bool = True
) -> Event:
    return Event(
        project_id=pid,
        at=at,
        field=field,
        old=old,
        new=new,
        source="crm" if meaningful else "hub",
        meaningful=meaningful,
        actor="rep@example.com" if meaningful else "salesbridge",
    )


def _varied_world() -> Iterator[tuple[dict[str, Any], list[Event], datetime, Calendar]]:
    """Generated projects with event logs: stage walks (skips, steps back, unknown and non-text
    stages), people's and the bridge's edits of watched and unwatched fields, events after
    ``now``, odd custom values and currencies, in four calendars around a DST change and
    holidays."""
    import random

    from bridge.demo_data import DemoOptions, generate
    from bridge.model import DEFAULT_STAGES

    stages = [s.key for s in DEFAULT_STAGES]
    cals = [
        Calendar(),
        Calendar.of("Asia/Shanghai", [date(2026, 10, 1), date(2026, 10, 2)]),
        Calendar.of("Europe/Berlin", [date(2026, 3, 30), date(2026, 12, 25)]),
        Calendar.of("America/New_York", [date(2026, 11, 26)]),
    ]
    nows = [datetime(2026, 3, 29, 1, 30, tzinfo=UTC), datetime(2026, 11, 27, 9, tzinfo=UTC)]
    customs: list[dict[str, Any]] = [
        {},
        {"budget": "1M", "success_metrics": 1.0, "tier": "gold"},
        {"budget_min": "1", "budget_max": "", "decision_process": None, "tier": True},
        {"budget_range": [1, 2], "decision_criteria": {"a": 1}, "tier": 3},
        {"success_metrics": True, "decision_process": 1, "budget": 0.0, "tier": [1, "x"]},
    ]
    for seed, now in ((3, nows[0]), (11, nows[1])):
        rnd = random.Random(seed)
        for i, p in enumerate(generate(DemoOptions(count=250, seed=seed, now=now))):
            d = p.to_json()
            d["id"] = f"sb-{seed}-{i}"
            d["custom"] = customs[i % len(customs)]
            if i % 9 == 0:
                d.pop("last_meaningful_update_at", None)
            if i % 11 == 0:
                d["expected_close_date"] = None
            if i % 13 == 0:
                d["stage_entered_at"] = None
                d["amount"] = {"amount": "12", "currency": "JPY"}
            if i % 17 == 0:
                d["status"] = "on_hold"
            at = datetime.fromisoformat(d["created_at"].replace("Z", "+00:00"))
            log: list[tuple[datetime, str, Any, Any, bool]] = []
            cur = 0
            for _ in range(rnd.randint(0, 14)):
                at = at + timedelta(hours=rnd.randint(1, 400))
                k = rnd.random()
                if k < 0.3:
                    nxt = max(0, min(len(stages) - 1, cur + rnd.choice([1, 1, 2, 3, -1])))
                    old: Any = stages[cur] if rnd.random() > 0.03 else None
                    new: Any = stages[nxt] if rnd.random() > 0.03 else 7
                    log.append((at, "stage", old, new, rnd.random() > 0.1))
                    cur = nxt
                elif k < 0.4:
                    a, b = rnd.choice([("100", "130"), ("100", "70"), ("0", "5"), ("x", "1")])
                    log.append(
                        (at, "amount", {"amount": a, "currency": "USD"}, {"amount": b}, True)
                    )
                elif k < 0.5:
                    a, b = rnd.choice([("2026-04-01", "2026-05-01"), ("2026-05-01", "2026-04-01")])
                    new = rnd.choice([b, None, "not a date"])
                    log.append((at, "expected_close_date", a, new, True))
                elif k < 0.55:
                    risk = {"description": "r", "severity": rnd.choice(["low", "high"])}
                    log.append((at, "risks", [], [risk], True))
                elif k < 0.6:
                    old, new = rnd.choice([None, {"email": "a@b"}]), rnd.choice([None, "x"])
                    log.append((at, "owner", old, new, True))
                elif k < 0.65:
                    old, new = rnd.choice(["open", "lost"]), rnd.choice(["open", "lost"])
                    log.append((at, "status", old, new, True))
                elif k < 0.7:
                    log.append((at, "probability", rnd.randint(0, 100), rnd.randint(0, 100), True))
                elif k < 0.75:
                    log.append((at, "customer.name", "A", "B", True))
                elif k < 0.8:
                    log.append((at, "links.jira", None, "x", True))  # the engine's own field
                else:
                    field = rnd.choice(["description", "custom.note"])
                    log.append((at, field, "", "x", rnd.random() > 0.4))
            if rnd.random() < 0.1:  # ahead of now: ignored
                log.append((now + timedelta(hours=3), "stage", stages[cur], "lead", True))
            if i % 5 == 0:  # on the edges of the counters' windows
                days = (14, 30, 60, 90)[i // 5 % 4]
                edge = now - timedelta(days=days)
                log.append((edge, "stage", "lead", "qualification", True))
                log.append((edge, "expected_close_date", "2026-04-01", "2026-05-01", True))
                log.append((edge, "status", "open", "lost", True))
                log.append((edge, "customer.name", "A", "B", True))
                log.sort(key=lambda row: row[0])
            if i % 7 == 0:  # triggers due exactly now, nothing after them
                log = [row for row in log if row[0] < now - timedelta(days=3)]
                d.pop("last_meaningful_update_at", None)
                log.append(
                    (now - timedelta(hours=48), "amount", {"amount": "1"}, {"amount": "2"}, True)
                )
                log.append((now - timedelta(hours=24), "stage", "lead", "qualification", True))
            events = [_logged(d["id"], *row) for row in log]
            yield d, events, now, cals[(i + seed) % len(cals)]


@pytest.mark.parametrize("which", ["default", "varied"])
def test_fast_fact_derivation_matches_the_reference(which: str) -> None:
    from bridge.rules import engine

    rules = load_rules() if which == "default" else pack(VARIED_PACK)
    reference = load_rules() if which == "default" else pack(VARIED_PACK)
    checked = failed = 0
    for d, events, now, cal in _varied_world():
        facts, detail = derive(d, events, now, cal, rules.plan)
        want_facts, want_detail = reference_derive(d, events, now, cal, reference.plan)
        assert facts == want_facts, d["id"]
        assert list(facts) == list(want_facts), d["id"]  # same order, for explain output
        assert detail == want_detail, d["id"]
        got = rules.evaluate(d, events, now, cal)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(engine, "derive", reference_derive)
            want = reference.evaluate(d, events, now, cal)
        assert got.admission == want.admission
        assert [
            (r.rule.id, r.outcome, dict(r.evidence), r.period, r.since, r.why) for r in got.results
        ] == [
            (r.rule.id, r.outcome, dict(r.evidence), r.period, r.since, r.why) for r in want.results
        ], d["id"]
        checked += 1
        failed += len(got.violations)
    assert checked == 500 and failed > 100  # the data set exercises the rules


def test_business_day_memo_gives_what_counting_gives() -> None:
    cal = Calendar.of("Europe/Berlin", [date(2026, 4, 3), date(2026, 4, 6), date(2026, 5, 2)])
    days = [date(2026, 3, 20) + timedelta(days=i) for i in range(60)]
    for a in days:
        for b in days[::7]:
            assert cal.business_days(a, b) == cal._business_days(a, b)
            assert cal.business_days(a, b) == cal.business_days(a, b)  # from the memo
        for n in range(12):
            assert cal.add_business_days(a, n) == cal._add_business_days(a, n)
