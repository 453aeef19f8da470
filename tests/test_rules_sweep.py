"""Rule sweeps over a real store, and the ``salesbridge rules`` commands: violations raised
once per (rule, project, period), resolved when the condition clears, escalated after the
delay, admission recorded with its version and reason, rule errors isolated per project."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import time_machine
from typer.testing import CliRunner

from bridge import cli, cli_rules  # noqa: F401 - registers `rules` until bridge/cli.py imports it
from bridge.model import SalesProject
from bridge.rules import RulePack, parse_rules
from bridge.rules.sweep import sweep
from bridge.store import Store
from bridge.store.store import Event

T0 = datetime(2026, 3, 2, 9, tzinfo=UTC)  # a Monday
TITLE = 'title = { en = "Updated weekly", "zh-CN" = "每周更新" }'
PACK = f"""
format = 1
[settings]
escalate_after = "48h"
[admission]
version = "v1"
[admission.rules.big]
when = "contract_value != null && contract_value >= 1000.0"
track = true
reason = {{ en = "big", "zh-CN" = "大" }}
[rules.fresh]
check = "idle_days <= 7"
period = "none"
{TITLE}
annotate = true
note = {{ en = "Update overdue", "zh-CN" = "更新已逾期" }}
[rules.emea]
check = 'custom.region == "EMEA"'
escalate_after = "never"
title = {{ en = "EMEA only", "zh-CN" = "仅限欧洲" }}
[cadence]
default = "weekly"
"""


@pytest.fixture
def rules() -> RulePack:
    return parse_rules([("pack.toml", PACK)])


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(f"sqlite:///{tmp_path / 'sb.db'}") as s:
        yield s


def put(store: Store, pid: str, **fields: Any) -> None:
    data: dict[str, Any] = {
        "id": pid,
        "name": pid,
        "owner": {"email": f"{pid}@example.com"},
        "team": "east",
        "contract_value": {"amount": "5000", "currency": "USD"},
        "custom": {"region": "EMEA"},
        "last_meaningful_update_at": T0,
        "updated_at": T0,
    }
    data.update(fields)
    store.put_project(SalesProject.model_validate(data))


def test_violation_lifecycle_opened_once_escalated_resolved_reopened(
    store: Store, rules: RulePack
) -> None:
    put(store, "p1")
    managers = {"east": ("boss@example.com",)}
    day = timedelta(days=1)

    r = sweep(store, rules, now=T0 + 3 * day, managers=managers)
    assert r.evaluated == 1 and r.tracked == 1 and r.failing == [] and not r.errors

    r = sweep(store, rules, now=T0 + 8 * day, managers=managers)  # 8 days idle
    assert sorted(v.rule for v in r.opened) == ["cadence", "fresh"]
    fresh = next(v for v in r.opened if v.rule == "fresh")
    assert fresh.owner == "p1@example.com" and fresh.severity == "warning"
    assert fresh.evidence["idle_days"] == 8
    assert fresh.evidence["message"]["zh-CN"] == "每周更新"
    assert [x.annotation for x in r.annotations["p1"]] == [
        {"en": "Update overdue", "zh-CN": "更新已逾期"}
    ]
    assert r.as_json("zh-CN")["annotations"] == {"p1": ["更新已逾期"]}

    r = sweep(store, rules, now=T0 + 9 * day, managers=managers)  # still failing: not again
    assert r.opened == [] and len(r.failing) == 2 and r.escalated == []
    assert store.list_violations(rule="fresh")[0].evidence["idle_days"] == 9  # refreshed

    r = sweep(store, rules, now=T0 + 10 * day + timedelta(hours=1), managers=managers)
    assert sorted(e.violation.rule for e in r.escalated) == ["cadence", "fresh"]
    assert r.escalated[0].managers == ("boss@example.com",)
    assert store.list_violations(rule="fresh")[0].status == "escalated"

    # A person updates the project: both violations resolve.
    store.append_events(
        [
            Event(
                project_id="p1",
                at=T0 + 11 * day,
                field="next_steps",
                old=[],
                new=[{"what": "call"}],
                source="crm",
                meaningful=True,
            )
        ]
    )
    r = sweep(store, rules, now=T0 + 11 * day + timedelta(hours=2), managers=managers)
    assert sorted(v.rule for v in r.resolved) == ["cadence", "fresh"]
    assert store.list_violations() == []
    viol = store.list_violations(open_only=False, rule="fresh")[0]
    assert [h.action for h in store.violation_history(viol.id)] == [
        "opened",
        "escalated",
        "resolved",
    ]

    # Stale again: `fresh` (period none) reopens the same violation; the cadence gap is a
    # new period, so a new violation.
    r = sweep(store, rules, now=T0 + 20 * day, managers=managers)
    assert sorted(v.rule for v in r.opened) == ["cadence", "fresh"]
    assert [h.action for h in store.violation_history(viol.id)][-1] == "reopened"
    assert len(store.list_violations(open_only=False, rule="cadence")) == 2


def test_bridge_writes_do_not_clear_a_stale_violation(store: Store, rules: RulePack) -> None:
    put(store, "p1")
    sweep(store, rules, now=T0 + timedelta(days=9))
    store.append_events(
        [
            Event(
                project_id="p1",
                at=T0 + timedelta(days=9, hours=2),
                field="custom.sync_note",
                old=None,
                new="x",
                source="hub",
                meaningful=False,
            )
        ]
    )
    r = sweep(store, rules, now=T0 + timedelta(days=9, hours=3))
    assert r.resolved == [] and {f.violation.rule for f in r.failing} == {"fresh", "cadence"}


def test_admission_is_recorded_once_with_version_and_reason(store: Store, rules: RulePack) -> None:
    put(store, "big")
    put(store, "small", contract_value={"amount": "10", "currency": "USD"})
    now = T0 + timedelta(days=1)
    r = sweep(store, rules, now=now)
    assert {a.project_id for a in r.admissions} == {"big", "small"}
    big = store.get_project("big")
    assert big is not None
    assert big["admission"] == {
        "tracked": True,
        "rule_version": "v1",
        "reason": "big: big",
        "decided_at": "2026-03-03T09:00:00Z",
    }
    small = store.get_project("small")
    assert small is not None and small["admission"]["tracked"] is False
    [logged] = store.events_for("big", field="admission")
    assert logged.meaningful is False and logged.source == "rules"
    assert sweep(store, rules, now=now + timedelta(hours=1)).admissions == []  # unchanged
    # Admission events never count as a person's update.
    ev = rules.evaluate(big, store.events_for("big"), now + timedelta(days=1))
    assert ev.facts["idle_days"] == 2


def test_an_untracked_project_has_no_violations(store: Store, rules: RulePack) -> None:
    put(store, "p1")
    sweep(store, rules, now=T0 + timedelta(days=9))
    assert len(store.list_violations(project_id="p1")) == 2
    put(store, "p1", contract_value={"amount": "10", "currency": "USD"})
    r = sweep(store, rules, now=T0 + timedelta(days=10))
    assert len(r.resolved) == 2 and store.list_violations() == []


def test_a_rule_error_on_one_project_is_reported_and_the_others_go_on(
    store: Store, rules: RulePack
) -> None:
    put(store, "a", custom={})  # no region: the `emea` rule cannot be evaluated here
    put(store, "b", custom={"region": "APAC"})
    put(store, "c")
    r = sweep(store, rules, now=T0 + timedelta(days=1))
    assert [(e.project_id, e.rule) for e in r.errors] == [("a", "emea")]
    assert "has(custom.region)" in r.errors[0].message
    assert [(f.violation.project_id, f.violation.rule) for f in r.failing] == [("b", "emea")]
    assert r.evaluated == 3


def test_violations_of_removed_rules_and_vanished_projects_are_resolved(
    store: Store, rules: RulePack
) -> None:
    put(store, "p1")
    put(store, "p2")
    sweep(store, rules, now=T0 + timedelta(days=9))
    assert len(store.list_violations()) == 4
    smaller = parse_rules([("pack.toml", PACK.split("[rules.emea]")[0])])
    store.tombstone_project("p2")
    r = sweep(store, smaller, now=T0 + timedelta(days=9, hours=1))
    assert {(v.project_id, v.rule) for v in r.resolved} == {
        ("p1", "cadence"),
        ("p2", "cadence"),
        ("p2", "fresh"),
    }
    assert [(v.project_id, v.rule) for v in store.list_violations()] == [("p1", "fresh")]


def test_sweep_of_chosen_projects_leaves_the_others(store: Store, rules: RulePack) -> None:
    put(store, "p1")
    put(store, "p2")
    r = sweep(store, rules, now=T0 + timedelta(days=9), project_ids=["p2"])
    assert r.evaluated == 1 and {f.violation.project_id for f in r.failing} == {"p2"}


# --------------------------------------------------------------------------- CLI

runner = CliRunner()


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "pack.toml").write_text(PACK, encoding="utf-8")
    (tmp_path / "salesbridge.toml").write_text(
        'timezone = "Europe/Berlin"\nlanguage = "zh-CN"\n'
        '[store]\nurl = "sqlite:///sb.db"\n'
        '[rules]\nfiles = ["rules/pack.toml"]\n'
        '[teams.east]\ntimezone = "Asia/Shanghai"\nholidays = [2026-03-05]\n',
        encoding="utf-8",
    )
    with Store.open(f"sqlite:///{tmp_path / 'sb.db'}") as s:
        put(s, "p1")
        put(s, "p2", code="SP-2026-0002", custom={})
    return tmp_path


def run(*args: str, cwd: Path) -> Any:
    return runner.invoke(cli.app, [*args, "--config", str(cwd / "salesbridge.toml")])


def test_cli_check_records_violations_and_reports_rule_errors(workspace: Path) -> None:
    with time_machine.travel(T0 + timedelta(days=9), tick=False):
        result = run("rules", "check", "--json", cwd=workspace)
    assert result.exit_code == 1  # p2's region cannot be evaluated
    report = json.loads(result.stdout)
    assert report["evaluated"] == 2
    assert {(v["project"], v["rule"]) for v in report["violations"]} == {
        ("p1", "fresh"),
        ("p1", "cadence"),
        ("p2", "fresh"),
        ("p2", "cadence"),
    }
    assert {v["title"] for v in report["violations"]} >= {"每周更新"}  # the config's language
    assert report["errors"][0]["project"] == "p2" and report["errors"][0]["rule"] == "emea"
    with Store.open(f"sqlite:///{workspace / 'sb.db'}") as s:
        assert len(s.list_violations()) == 4
    with time_machine.travel(T0 + timedelta(days=9, hours=1), tick=False):
        again = run("rules", "check", "--project", "p1", "--lang", "en", cwd=workspace)
    assert again.exit_code == 0, again.output
    assert "0 new" in again.stdout and "Updated weekly" in again.stdout


def test_cli_explain_by_id_or_code(workspace: Path) -> None:
    with time_machine.travel(T0 + timedelta(days=9), tick=False):
        result = run("rules", "explain", "SP-2026-0002", "--json", "--lang", "en", cwd=workspace)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["project"] == "p2"
    assert data["admission"]["tracked"] is True and data["admission"]["rule"] == "big"
    by_rule = {r["rule"]: r for r in data["rules"]}
    assert by_rule["fresh"]["outcome"] == "fail"
    assert by_rule["fresh"]["evidence"]["idle_days"] == 9
    assert by_rule["fresh"]["annotation"] == "Update overdue"
    assert by_rule["emea"]["outcome"] == "error"
    with time_machine.travel(T0 + timedelta(days=9), tick=False):
        text = run("rules", "explain", "p1", cwd=workspace)
    assert text.exit_code == 0 and "FAIL" in text.stdout and "pass" in text.stdout
    missing = run("rules", "explain", "nope", cwd=workspace)
    assert missing.exit_code != 0


def test_cli_test_runs_fixtures(workspace: Path) -> None:
    fixture = workspace / "rules" / "pack.tests.toml"
    fixture.write_text(
        'rules = ["pack.toml"]\nnow = 2026-03-12T09:00:00Z\n'
        '[[cases]]\nname = "stale"\n'
        'project = { name = "x", contract_value = { amount = "5000", currency = "USD" }, '
        'custom = { region = "EMEA" }, last_meaningful_update_at = 2026-03-02T09:00:00Z }\n'
        'expect = { tracked = true, fail = ["fresh", "cadence"], only_these_fail = true }\n'
        '[[cases]]\nname = "wrong on purpose"\n'
        'project = { name = "y", contract_value = { amount = "5000", currency = "USD" }, '
        "custom = {} }\n"
        'expect = { pass = ["emea"] }\n',
        encoding="utf-8",
    )
    result = run("rules", "test", str(fixture), cwd=workspace)
    assert result.exit_code == 1
    assert "ok   stale" in result.stdout
    assert "emea: expected pass, got error" in result.stdout
    assert "1 passed, 1 failed" in result.stdout
