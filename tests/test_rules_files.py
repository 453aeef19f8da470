"""Rule files as ops staff write them: every mistake is reported at once with the file, the
[section] key and the fix; the default pack and its fixtures load and pass."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.errors import UserError
from bridge.rules import default_pack_path, load_rules, parse_rules
from bridge.rules.fixtures import run_fixtures
from tests.conftest import REPO

BAD = Path(__file__).parent / "data" / "rules"
TITLE = 'title = { en = "T", "zh-CN" = "标题" }'

BAD_FILES = [
    ("syntax_error.toml", "line 3, column 9", "TOML syntax error"),
    ("unknown_top_key.toml", "rule", "did you mean `rules`?"),
    ("missing_format.toml", "format", "add it, e.g. format = 1"),
    ("cel_syntax.toml", "[rules.stale] check", "syntax error at column 16"),
    ("unknown_fact.toml", "[rules.stale] check", "did you mean `idle_days`?"),
    ("unknown_deliverable_kind.toml", "[rules.proposal_ready] check", "did you mean `proposal`?"),
    ("type_error.toml", "[rules.late_stage] check", "Compare like with like"),
    ("not_a_condition.toml", "[rules.stale] check", "not true or false"),
    ("missing_zh_title.toml", "[rules.stale] title", 'add "zh-CN" = "..."'),
    ("bad_severity.toml", "[rules.stale] severity", "did you mean `warning`?"),
    ("unknown_stage.toml", "[stages.qualfication]", "did you mean `qualification`?"),
    ("bad_gap.toml", "[cadence.max_gap.negotiation] high", "write daily, weekly"),
    ("bad_priority.toml", "[cadence.max_gap.negotiation] urgent", "use low, medium, high"),
    ("bad_duration.toml", "[triggers.stage_changed] update_within", '"24h", "3d" or "2w"'),
    ("unknown_counter.toml", "[rules.slipping] check", "did you mean `close_date_pushed`?"),
    ("bad_change.toml", "[counters.close_date_pushed] change", "did you mean `later`?"),
    ("unknown_rule_key.toml", "[rules.stale] chekc", "did you mean `check`?"),
    ("unknown_placeholder.toml", "[rules.stale] message", "unknown placeholder {idle}"),
    ("unknown_field.toml", "[counters.pushed] field", "did you mean `expected_close_date`?"),
    ("admission_missing_track.toml", "[admission.rules.big] track", "e.g. track = true"),
]


@pytest.mark.parametrize(("name", "key", "fix"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_rule_file(name: str, key: str, fix: str) -> None:
    path = BAD / name
    with pytest.raises(UserError) as info:
        load_rules([path])
    problems = info.value.problems
    assert any(p.file == str(path) and p.key == key and fix in p.message for p in problems), (
        "\n".join(map(str, problems))
    )


def test_every_bad_file_is_tested() -> None:
    tested = {b[0] for b in BAD_FILES} | {"three_problems.toml"}
    assert {p.name for p in BAD.glob("*.toml")} == tested


def test_every_problem_in_a_file_is_reported_at_once() -> None:
    with pytest.raises(UserError) as info:
        load_rules([BAD / "three_problems.toml"])
    keys = [p.key for p in info.value.problems]
    assert keys == ["[rules.one] check", "[rules.two] severity", "[rules.three] title"]


def test_a_name_defined_in_two_files_names_both() -> None:
    one = ("one.toml", f'format = 1\n[rules.stale]\ncheck = "idle_days < 14"\n{TITLE}\n')
    two = ("two.toml", f'format = 1\n[rules.stale]\ncheck = "idle_days < 30"\n{TITLE}\n')
    with pytest.raises(UserError) as info:
        parse_rules([one, two])
    [problem] = info.value.problems
    assert problem.file == "two.toml" and problem.key == "[rules.stale]"
    assert "already defined in one.toml" in problem.message


def test_settings_in_two_files() -> None:
    one = ("one.toml", 'format = 1\n[settings]\nseverity = "info"\n')
    two = ("two.toml", 'format = 1\n[settings]\nseverity = "critical"\n')
    with pytest.raises(UserError, match=r"two.toml: \[settings\] <- .*already defined in one"):
        parse_rules([one, two])


def test_files_merge_into_one_pack() -> None:
    base = (
        "base.toml",
        'format = 1\n[counters.pushed]\nfield = "expected_close_date"\nchange = "later"\n'
        'window = "90d"\n',
    )
    team = ("team.toml", f'format = 1\n[rules.slipping]\ncheck = "count.pushed < 2"\n{TITLE}\n')
    assert parse_rules([base, team]).rule_ids == ["slipping"]


def test_missing_file_names_the_config_setting(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"file not found; correct the path in the config"):
        load_rules([tmp_path / "nope.toml"])


def test_stage_names_come_from_the_configured_lifecycle() -> None:
    from bridge.model import Lifecycle, Stage

    lc = Lifecycle(
        stages=[
            Stage(key="open", label_en="Open", label_zh="开"),
            Stage(key="won", label_en="Won", label_zh="赢"),
        ]
    )
    ok = f'format = 1\n[stages.open.exit.owner]\ncheck = "has_owner"\n{TITLE}\n'
    assert parse_rules([("x.toml", ok)], lifecycle=lc).rule_ids == ["open.exit.owner"]
    with pytest.raises(UserError, match="the stages are: open, won"):
        parse_rules([("x.toml", ok.replace("open.exit", "lead.exit"))], lifecycle=lc)


def test_default_pack_loads_and_has_every_stage() -> None:
    pack = load_rules()
    assert pack.sources == (str(default_pack_path()),)
    ids = pack.rule_ids
    for rid in (
        "qualification.exit.needs_analysis_approved",
        "qualification.exit.budget_range",
        "qualification.exit.decision_maker",
        "proposal.exit.proposal_submitted",
        "proposal.exit.customer_first_review",
        "negotiation.exit.contract_review_done",
        "cadence",
        "trigger.stage_changed",
        "trigger.amount_changed",
        "trigger.close_date_slipped",
        "trigger.high_risk_raised",
    ):
        assert rid in ids
    assert {r.stage for r in pack.rules if r.stage} == {
        "lead",
        "qualification",
        "proposal",
        "negotiation",
        "signing",
        "delivery",
    }
    for r in pack.rules:
        assert r.title["en"] and r.title["zh-CN"], r.id


def test_default_pack_fixtures_pass() -> None:
    report = run_fixtures(REPO / "rules" / "tests" / "default.tests.toml")
    assert len(report.cases) >= 10
    assert report.ok, [(c.name, c.mismatches) for c in report.cases if not c.ok]


def test_fixture_mismatch_and_bad_fixture_are_reported(tmp_path: Path) -> None:
    rules = tmp_path / "r.toml"
    rules.write_text(f'format = 1\n[rules.owner]\ncheck = "has_owner"\n{TITLE}\n', encoding="utf-8")
    fx = tmp_path / "t.json"
    fx.write_text(
        '{"rules": ["r.toml"], "now": "2026-03-30T09:00:00Z", "cases": ['
        '{"name": "no owner", "project": {"name": "x"}, "expect": {"pass": ["owner"]}}]}',
        encoding="utf-8",
    )
    report = run_fixtures(fx)
    assert not report.ok
    assert report.cases[0].mismatches == ["owner: expected pass, got fail (not has_owner)"]
    fx.write_text(
        '{"rules": ["r.toml"], "cases": [{"name": "x", "project": {"name": "x", "stage": 3},'
        ' "expect": {"fail": ["ownr"]}}]}',
        encoding="utf-8",
    )
    with pytest.raises(UserError) as info:
        run_fixtures(fx)
    got = {p.key: p.message for p in info.value.problems}
    assert "did you mean `owner`?" in got["[[cases]] (case 1) expect.fail"]
    assert "set now = " in got["[[cases]] (case 1) now"]
    assert "[[cases]] (case 1) project.stage" in got


def test_the_ops_guide_lists_every_fact_and_default_rule() -> None:
    from bridge.rules import FACTS

    guide = (REPO / "docs" / "rules.md").read_text(encoding="utf-8")
    for name in FACTS:
        assert f"| `{name}` |" in guide, name
    for rule in load_rules().rules:
        assert f"| `{rule.id}` |" in guide, rule.id
        assert rule.title["zh-CN"] in guide, rule.id
