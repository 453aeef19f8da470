"""Mapping files: loading, checking (every problem at once) and converting values both ways."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.errors import SkippableRecord, UserError
from bridge.mapping import MappingSpec, load_mapping, parse_mapping
from bridge.model import SalesProject, set_path, to_json_value
from connectors.base import RemoteField, RemoteRecord, RemoteUser, Schema

REPO = Path(__file__).resolve().parent.parent
MEMORY_TOML = REPO / "mappings" / "memory.toml"
BAD = Path(__file__).parent / "data" / "mappings"

STATUSES = (
    "Backlog",
    "Qualifying",
    "Proposal",
    "Proposal review",
    "Negotiation",
    "Signed",
    "Delivery",
)


def memory_schema(*, extra: tuple[RemoteField, ...] = ()) -> Schema:
    """What the in-memory tool's discover() reports for the fields mappings/memory.toml uses."""
    return Schema(
        fields=(
            RemoteField("title", "Title"),
            RemoteField("cf_100", "Project number", custom=True),
            RemoteField("customer", "Customer"),
            RemoteField("customer_id", "Customer ID", writable=False),
            RemoteField("owner", "Owner", "user"),
            RemoteField("status", "Status", "status", options=STATUSES),
            RemoteField("outcome", "Outcome", "option", options=("Open", "Won", "Lost", "On hold")),
            RemoteField("priority", "Priority", "priority", ("Low", "Medium", "High", "Urgent")),
            RemoteField("amount", "Amount", "number"),
            RemoteField("currency", "Currency", "text"),
            RemoteField("probability", "Probability", "percent"),
            RemoteField("close_date", "Close date", "date"),
            RemoteField("stage_entered", "Stage entered", "datetime"),
            RemoteField("notes", "Notes", "textarea"),
            RemoteField("stakeholders", "Stakeholders", "json"),
            RemoteField("cf_200", "Region", "option", ("EMEA", "APAC", "AMER"), custom=True),
            RemoteField("labels", "Labels", "labels"),
            RemoteField("created", "Created", "datetime", writable=False),
            RemoteField("sb_id", "Salesbridge ID"),
            *extra,
        ),
        users=(
            RemoteUser("u1", "Jane Doe", "jane.doe@example.com", "jdoe"),
            RemoteUser("u2", "Bob Lee", None, "blee"),  # the tool hides Bob's e-mail
        ),
        stages=STATUSES,
    )


SCHEMA = memory_schema()

REMOTE: dict[str, Any] = {
    "title": "ACME rollout",
    "cf_100": "P-2026-007",
    "customer": "ACME Corp",
    "customer_id": "C-1",
    "owner": {"id": "u1", "name": "Jane Doe", "email": "jane.doe@example.com", "username": "jdoe"},
    "status": "Proposal review",
    "outcome": "Won",
    "priority": "Urgent",
    "amount": 12000.5,
    "currency": "EUR",
    "probability": 60,
    "close_date": "2026-03-31",
    "stage_entered": "2026-01-31T01:00:00Z",
    "notes": "Pilot first",
    "stakeholders": [
        {
            "name": "Li Wei",
            "title": "CIO",
            "role": "champion",
            "attitude": "supportive",
            "email": "li.wei@acme.example",
        }
    ],
    "cf_200": "EMEA",
    "labels": ["pilot", "cloud"],
    "created": "2025-12-01T08:00:00Z",
    "sb_id": "sb-0123456789abcdef",
}


def record(**changes: Any) -> RemoteRecord:
    return RemoteRecord(ref="R-1", version="1", fields={**REMOTE, **changes})


@pytest.fixture(scope="module")
def spec() -> MappingSpec:
    return load_mapping(MEMORY_TOML, SCHEMA)


def problems_of(path: Path, schema: Schema | None = SCHEMA) -> list[tuple[str, str, str]]:
    with pytest.raises(UserError) as caught:
        load_mapping(path, schema)
    return [(p.file, p.key, p.message) for p in caught.value.problems]


# --------------------------------------------------------------------------- the example file


def test_memory_mapping_loads_against_the_schema(spec: MappingSpec) -> None:
    assert spec.connector == "memory"
    assert spec.sync.conflict_policy == "newest_wins"
    assert spec.sync.create_in_tool == "all"
    assert spec.sync.delete_in_tool is False
    assert spec.sync.stamp_field == "sb_id"  # resolved from its display name
    assert spec.owned_paths == {"stage"}
    assert "customer.external_id" in spec.pulled_paths
    assert "customer.external_id" not in spec.pushed_paths
    assert "custom.created" not in spec.pushed_paths
    assert spec.rule("code").remote_id == "cf_100"
    assert spec.rule("code").type == "text"  # inferred from the canonical field
    assert set(spec.remote_fields_needed) == set(REMOTE)


def test_memory_mapping_loads_without_a_schema() -> None:
    spec = load_mapping(MEMORY_TOML)
    assert spec.rule("amount").remote_id == "Amount"
    assert spec.sync.stamp_field == "Salesbridge ID"


def test_to_canonical_gives_canonical_json(spec: MappingSpec) -> None:
    values = spec.to_canonical(record())
    assert values == {
        "name": "ACME rollout",
        "code": "P-2026-007",
        "customer.name": "ACME Corp",
        "customer.external_id": "C-1",
        "owner": {"name": "Jane Doe", "email": "jane.doe@example.com"},
        "stage": "proposal",
        "status": "won",
        "priority": "critical",
        "amount": {"amount": "12000.5", "currency": "EUR"},
        "probability": 60,
        "expected_close_date": "2026-03-31",
        "stage_entered_at": "2026-01-31T01:00:00Z",
        "description": "Pilot first",
        "stakeholders": REMOTE["stakeholders"],
        "custom.region": "EMEA",
        "custom.labels": ["pilot", "cloud"],
        "custom.created": "2025-12-01T08:00:00Z",
    }
    for path, value in values.items():
        assert to_json_value(path, value) == value, path
    project: dict[str, Any] = {"name": "x"}
    for path, value in values.items():
        set_path(project, path, value)
    SalesProject.model_validate(project)


def test_round_trip_of_both_direction_fields(spec: MappingSpec) -> None:
    pushed = spec.to_remote(spec.to_canonical(record()))
    both = {r.remote_id for r in spec.rules if r.direction == "both"} | {"currency"}
    # "Proposal review" and "Proposal" are both `proposal`; push_value says to write "Proposal".
    expected = {k: v for k, v in REMOTE.items() if k in both} | {"status": "Proposal"}
    assert pushed == expected
    assert isinstance(pushed["amount"], float)
    assert Decimal(repr(pushed["amount"])) == Decimal("12000.5")


def test_round_trip_exact_for_every_stage(spec: MappingSpec) -> None:
    for status in ("Backlog", "Qualifying", "Proposal", "Negotiation", "Signed", "Delivery"):
        assert spec.to_remote(spec.to_canonical(record(status=status)))["status"] == status


def test_user_matched_through_the_users_table(spec: MappingSpec) -> None:
    bob = {"id": "u2", "name": "Bob Lee", "email": None, "username": "blee"}
    values = spec.to_canonical(record(owner=bob))
    assert values["owner"] == {"name": "Bob Lee", "email": "bob.lee@example.com"}
    assert spec.to_remote(values)["owner"] == {**bob, "email": "bob.lee@example.com"}


def test_user_e_mail_is_lower_cased_and_unknown_users_keep_their_name(spec: MappingSpec) -> None:
    loud = {"id": "u9", "name": "Ann", "email": "Ann.Smith@Example.COM", "username": "ann"}
    assert spec.to_canonical(record(owner=loud))["owner"] == {
        "name": "Ann",
        "email": "ann.smith@example.com",
    }
    stranger = {"id": "u8", "name": "Nobody", "email": None, "username": "nobody"}
    assert spec.to_canonical(record(owner=stranger))["owner"] == {"name": "Nobody", "email": None}
    nobody = {"id": None, "name": None, "email": None, "username": None}
    assert spec.to_canonical(record(owner=nobody))["owner"] is None
    pushed = spec.to_remote({"owner": {"name": "Ann", "email": "ann.smith@example.com"}})
    assert pushed["owner"] == {
        "id": None,
        "name": "Ann",
        "email": "ann.smith@example.com",
        "username": None,
    }


def test_users_match_table_ignores_the_tools_e_mails(tmp_path: Path) -> None:
    text = MEMORY_TOML.read_text().replace('match = "email"', 'match = "table"')
    spec = parse_mapping(text, source="table.toml", schema=SCHEMA)
    assert spec.users.match == "table"
    jane = REMOTE["owner"]
    assert spec.to_canonical(record())["owner"] == {"name": jane["name"], "email": None}


def test_nested_and_quoted_sections_are_the_same(spec: MappingSpec) -> None:
    assert spec.rule("customer.name").section == "[fields.customer.name]"
    assert spec.rule("customer.external_id").section == '[fields."customer.external_id"]'


def test_value_maps_match_options_ignoring_case(spec: MappingSpec) -> None:
    assert spec.to_canonical(record(status="proposal REVIEW"))["stage"] == "proposal"


def test_defaults_fill_empty_values(spec: MappingSpec) -> None:
    values = spec.to_canonical(record(outcome=None, priority="", customer="  ", labels=[]))
    assert values["status"] == "open"
    assert values["priority"] == "medium"
    assert values["customer.name"] == "(no customer)"
    assert values["custom.labels"] == []
    # an enum default also covers options missing from the value map
    assert spec.to_canonical(record(priority="Someday"))["priority"] == "medium"


def test_fields_missing_from_the_record_read_as_empty(spec: MappingSpec) -> None:
    fields = {k: v for k, v in REMOTE.items() if k not in ("amount", "close_date")}
    values = spec.to_canonical(RemoteRecord("R-2", "1", fields))
    assert values["amount"] is None
    assert values["expected_close_date"] is None


@pytest.mark.parametrize(
    ("remote", "canonical"),
    [
        ("2026-03-31", "2026-03-31"),
        ("2026-03-31T23:30:00+08:00", "2026-03-31"),  # the date as written, not shifted to UTC
        ("2026-03-31T10:00:00Z", "2026-03-31"),
        (1774915200000, "2026-03-31"),  # epoch milliseconds
        ("1774915200000", "2026-03-31"),
    ],
)
def test_dates(spec: MappingSpec, remote: Any, canonical: str) -> None:
    assert spec.to_canonical(record(close_date=remote))["expected_close_date"] == canonical


@pytest.mark.parametrize(
    ("remote", "canonical"),
    [
        ("2026-01-31T09:00:00+08:00", "2026-01-31T01:00:00Z"),
        ("2026-01-31T09:00:00.000+0800", "2026-01-31T01:00:00Z"),  # Jira's form
        ("2026-01-31T01:00:00.250Z", "2026-01-31T01:00:00.250000Z"),
        (1769821200000, "2026-01-31T01:00:00Z"),
    ],
)
def test_datetimes_end_in_utc(spec: MappingSpec, remote: Any, canonical: str) -> None:
    assert spec.to_canonical(record(stage_entered=remote))["stage_entered_at"] == canonical
    assert to_json_value("stage_entered_at", canonical) == canonical


def test_naive_datetimes_need_assume_timezone(spec: MappingSpec) -> None:
    with pytest.raises(SkippableRecord) as caught:
        spec.to_canonical(record(stage_entered="2026-01-31 09:00"))
    assert "stage_entered_at" in caught.value.reason
    assert '"2026-01-31 09:00" has no timezone' in caught.value.reason
    assert "assume_timezone" in caught.value.reason
    text = MEMORY_TOML.read_text().replace(
        '# assume_timezone = "Asia/Shanghai"', 'assume_timezone = "Asia/Shanghai"'
    )
    shanghai = parse_mapping(text, schema=SCHEMA)
    values = shanghai.to_canonical(record(stage_entered="2026-01-31 09:00"))
    assert values["stage_entered_at"] == "2026-01-31T01:00:00Z"


@pytest.mark.parametrize(
    ("amount", "canonical"),
    [
        (12000, "12000"),
        ("12000.50", "12000.5"),  # one canonical text, whatever the tool's formatting
        (0.1, "0.1"),  # through the float's repr, never its binary expansion
        (1234567.89, "1234567.89"),
        (Decimal("1E+3"), "1000"),
    ],
)
def test_money_is_decimal_text(spec: MappingSpec, amount: Any, canonical: str) -> None:
    values = spec.to_canonical(record(amount=amount, currency="cny"))
    assert values["amount"] == {"amount": canonical, "currency": "CNY"}


@given(st.decimals(min_value=-(10**12), max_value=10**12, places=2, allow_nan=False))
def test_money_round_trip_is_stable(amount: Decimal) -> None:
    spec = load_mapping(MEMORY_TOML, SCHEMA)
    first = spec.to_canonical(record(amount=str(amount)))
    pushed = spec.to_remote(first)
    again = spec.to_canonical(record(amount=pushed["amount"], currency=pushed["currency"]))
    assert again["amount"] == first["amount"]
    assert Decimal(again["amount"]["amount"]) == amount


def test_push_of_a_cleared_value(spec: MappingSpec) -> None:
    assert spec.to_remote({"amount": None, "owner": None, "stage": None}) == {
        "amount": None,
        "owner": None,
        "status": None,
    }
    assert spec.to_remote({"not.mapped": 1}) == {}


def test_create_when(tmp_path: Path) -> None:
    text = (
        MEMORY_TOML.read_text()
        .replace('create_in_tool = "all"', "")
        .replace('# [sync.create_when]\n# status = ["won"]', '[sync.create_when]\nstatus = ["won"]')
    )
    assert '\n[sync.create_when]\nstatus = ["won"]' in text
    spec = parse_mapping(text, schema=SCHEMA)
    assert spec.sync.create_in_tool == "matching"
    assert spec.sync.wants_create({"status": "won", "stage": "signing"})
    assert not spec.sync.wants_create({"status": "open", "stage": "signing"})


def test_connector_must_match_when_given() -> None:
    with pytest.raises(UserError) as caught:
        load_mapping(MEMORY_TOML, SCHEMA, connector="jira")
    [problem] = caught.value.problems
    assert problem.key == "connector"
    assert 'connector = "jira"' in problem.message


def test_custom_lifecycle_keys() -> None:
    with pytest.raises(UserError) as caught:
        load_mapping(MEMORY_TOML, SCHEMA, lifecycle_keys=["lead", "proposal", "signing"])
    keys = {p.key for p in caught.value.problems}
    assert "[fields.stage.values] Qualifying" in keys
    assert all("not a lifecycle stage" in p.message for p in caught.value.problems)


def test_missing_file() -> None:
    with pytest.raises(UserError) as caught:
        load_mapping(BAD / "no_such_file.toml")
    assert "file not found" in str(caught.value)


# --------------------------------------------------------------------------- conversion failures


@pytest.mark.parametrize(
    ("changes", "fragments"),
    [
        ({"status": "Blocked"}, ["stage", '"Blocked" has no row in [fields.stage.values]']),
        ({"close_date": "next week"}, ["expected_close_date", '"next week" is not a date']),
        ({"amount": "12k"}, ["amount", '"12k" is not a number']),
        ({"amount": 5, "currency": None}, ["amount", "has no currency"]),
        ({"amount": 5, "currency": "euro"}, ["amount", '"euro"', "ISO 4217"]),
        ({"probability": 150}, ["probability", "150", "less than or equal to 100"]),
        ({"probability": 45.5}, ["probability", "45.5 is not a whole number"]),
        ({"title": None}, ["name", "cannot be empty", "set default"]),
        ({"labels": [{"a": 1}]}, ["custom.labels", "not a list of plain values"]),
        ({"owner": 42}, ["owner", "42 is not a user"]),
        ({"stakeholders": [{"role": "champion"}]}, ["stakeholders", "Field required"]),
    ],
)
def test_unconvertible_values_skip_the_record(
    spec: MappingSpec, changes: dict[str, Any], fragments: list[str]
) -> None:
    with pytest.raises(SkippableRecord) as caught:
        spec.to_canonical(record(**changes))
    assert caught.value.ref == "R-1"
    for fragment in fragments:
        assert fragment in caught.value.reason


def test_every_bad_field_of_a_record_is_named(spec: MappingSpec) -> None:
    with pytest.raises(SkippableRecord) as caught:
        spec.to_canonical(record(status="Blocked", close_date="soon"))
    assert 'stage (remote field "Status")' in caught.value.reason
    assert 'expected_close_date (remote field "Close date")' in caught.value.reason


def test_push_refuses_a_currency_the_field_cannot_hold(tmp_path: Path) -> None:
    text = MEMORY_TOML.read_text().replace('currency_field = "Currency"', 'currency = "USD"')
    spec = parse_mapping(text, schema=SCHEMA)
    assert spec.to_remote({"amount": {"amount": "10", "currency": "USD"}}) == {"amount": 10}
    with pytest.raises(SkippableRecord) as caught:
        spec.to_remote({"amount": {"amount": "10", "currency": "EUR"}}, ref="sb-1")
    assert caught.value.ref == "sb-1"
    assert "amount" in caught.value.reason
    assert "USD amounts only" in caught.value.reason


# --------------------------------------------------------------------------- bad files

DUPLICATE_REGION = RemoteField("cf_201", "region", "option", ("North", "South"), custom=True)

BAD_FILES: list[tuple[str, str, str]] = [
    ("syntax_error.toml", "line 5, column 10", "TOML syntax error"),
    ("unknown_top_key.toml", "conflict_policy", "`conflict_policy` is a key of [sync]"),
    ("unknown_canonical_field.toml", "[fields.ammount]", "did you mean amount?"),
    ("engine_field.toml", "[fields.created_at]", "managed by the sync engine"),
    ("unknown_remote_field.toml", "[fields.amount] remote", 'did you mean "Amount"?'),
    ("ambiguous_remote_name.toml", "[fields.custom.region] remote", 'remote = "cf_200"'),
    ("stage_values_incomplete.toml", "[fields.stage] values", '"Signed", "Delivery"'),
    (
        "stage_value_not_lifecycle.toml",
        '[fields.stage.values] "Proposal review"',
        '"closing" is not a lifecycle stage',
    ),
    ("money_on_probability.toml", "[fields.probability] type", 'use type = "number" or'),
    ("bad_direction.toml", "[fields.name] direction", "'pull', 'push' or 'both'"),
    ("users_table_not_email.toml", "[users.table] jdoe", '"jane.doe" is not an e-mail address'),
    ("currency_not_iso.toml", "[fields.amount] currency", 'write e.g. currency = "USD"'),
    ("currency_and_currency_field.toml", "[fields.amount] currency_field", "not both"),
    (
        "remote_type_mismatch.toml",
        "[fields.contract_value] type",
        'holds a date, but type = "money"',
    ),
    ("push_to_read_only.toml", "[fields.custom.created] direction", 'set direction = "pull"'),
    ("pushed_twice.toml", "[fields.description] remote", "already written by [fields.name]"),
    (
        "push_ambiguous.toml",
        "[fields.stage] push_value",
        '[fields.stage.push_value] proposal = "Proposal"',
    ),
    ("status_value_invalid.toml", "[fields.status.values] Won", '"victory" is not a valid status'),
    ("field_key_typo.toml", "[fields.amount] curency", "did you mean `currency`?"),
    (
        "mapped_twice.toml",
        '[fields."customer.name"]',
        "mapped twice (also in [fields.customer.name])",
    ),
    (
        "inside_a_list.toml",
        "[fields.stakeholders.name]",
        'write [fields.stakeholders] with type = "json"',
    ),
    ("unknown_option.toml", "[fields.priority.values] Hihg", 'did you mean "High"?'),
    (
        "bad_timezone.toml",
        "[fields.stage_entered_at] assume_timezone",
        'did you mean "Asia/Shanghai"?',
    ),
    ("owns_push_only.toml", "[fields.name] owns", 'set direction = "both" or remove owns'),
    ("create_when_bad_value.toml", "[sync.create_when] status", '"closed" is not a valid status'),
    (
        "push_value_reads_back_differently.toml",
        "[fields.status.push_value] on_hold",
        'pushing "on_hold" writes "Open", which reads back as "open"',
    ),
    (
        "key_after_subtable.toml",
        "[fields.stage.values] default",
        "move `default` above the [fields.stage.values] line",
    ),
]


@pytest.mark.parametrize(("name", "key", "fix"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_mapping_file(name: str, key: str, fix: str) -> None:
    schema = memory_schema(extra=(DUPLICATE_REGION,)) if "ambiguous_remote" in name else SCHEMA
    problems = problems_of(BAD / name, schema)
    assert problems, name
    file, where, message = problems[0]
    assert file == str(BAD / name)
    assert where == key
    assert fix in message
    assert len(problems) == 1, problems


def test_every_bad_file_is_tested() -> None:
    assert {p.name for p in BAD.glob("*.toml")} == {b[0] for b in BAD_FILES} | {
        "three_problems.toml"
    }


def test_all_problems_are_reported_at_once() -> None:
    problems = problems_of(BAD / "three_problems.toml")
    assert [(key, message.split(";")[0]) for _, key, message in problems] == [
        ("[users.table] jdoe", '"jane at example.com" is not an e-mail address'),
        ("[fields.name] direction", '"both ways" is not allowed'),
        ("[sync] conflict_polcy", "unknown key `conflict_polcy`"),
    ]
    assert "did you mean `conflict_policy`?" in problems[2][2]


def test_user_error_text_names_file_and_key_per_problem() -> None:
    with pytest.raises(UserError) as caught:
        load_mapping(BAD / "three_problems.toml", SCHEMA)
    lines = str(caught.value).splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"{BAD / 'three_problems.toml'}: [users.table] jdoe <- ")


def test_schema_checks_are_skipped_without_a_schema() -> None:
    spec = load_mapping(BAD / "unknown_remote_field.toml")
    assert spec.rule("amount").remote_id == "Amout"


def test_a_canonical_field_with_an_unknown_name_suggests_custom() -> None:
    with pytest.raises(UserError) as caught:
        parse_mapping('connector = "memory"\nversion = 1\n[fields.region]\nremote = "Region"\n')
    assert "[fields.custom.region]" in caught.value.problems[0].message


def test_rules_are_immutable(spec: MappingSpec) -> None:
    with pytest.raises(AttributeError):
        spec.rule("amount").path = "x"  # type: ignore[misc]


def test_the_guides_example_loads() -> None:
    guide = (REPO / "docs" / "mappings.md").read_text(encoding="utf-8")
    example = guide.split("```toml\n", 1)[1].split("```", 1)[0]
    spec = parse_mapping(example, source="docs/mappings.md")
    assert spec.sync.create_in_tool == "matching"
    assert spec.sync.wants_create({"status": "won"})
    assert spec.rule("stage").owns
