"""The canonical model: round-trips, money, time, lifecycle, paths and the JSON Schema."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import jsonschema
import pytest
from pydantic import ValidationError

from bridge.demo_data import DemoOptions, generate
from bridge.model import (
    DEFAULT_STAGES,
    Lifecycle,
    Money,
    PathError,
    SalesProject,
    field_paths,
    get_path,
    is_valid_path,
    json_schema,
    path_annotation,
    set_path,
    to_json_value,
)


def full_project() -> SalesProject:
    return next(iter(generate(DemoOptions(count=1, seed=3))))


def test_round_trip_through_json_keeps_every_field() -> None:
    for project in generate(DemoOptions(count=30, seed=11)):
        data = project.to_json()
        text = json.dumps(data, ensure_ascii=False)
        again = SalesProject.model_validate(json.loads(text))
        assert again == project
        assert again.to_json() == data


def test_every_field_group_of_the_tracking_table_exists() -> None:
    fields = set(SalesProject.model_fields)
    groups = {
        "identity": {"id", "code", "name", "customer", "owner", "team", "department"},
        "lifecycle": {"stage", "stage_entered_at", "status", "lost_reason"},
        "priority": {"priority", "urgency", "importance"},
        "value": {"amount", "probability", "expected_close_date"},
        "admission": {"contract_value", "intent", "complexity", "admission"},
        "people": {"stakeholders"},
        "substance": {"needs", "competitors"},
        "work": {"tasks", "deliverables", "milestones"},
        "progress": {"actions", "next_steps"},
        "risk": {"risks"},
        "after the win": {"payments", "delivery_progress"},
        "freshness": {"last_meaningful_update_at", "last_meaningful_update_by", "updated_at"},
        "links": {"links"},
        "custom": {"custom"},
    }
    for group, names in groups.items():
        assert names <= fields, f"{group}: missing {names - fields}"


def test_money_is_decimal_with_iso_currency() -> None:
    m = Money(amount=0.1, currency="cny")  # type: ignore[arg-type]
    assert m.amount == Decimal("0.1") and m.currency == "CNY"
    assert Money(amount="1234.50", currency="EUR").model_dump(mode="json") == {  # type: ignore[arg-type]
        "amount": "1234.50",
        "currency": "EUR",
    }
    with pytest.raises(ValidationError, match="ISO 4217"):
        Money(amount=Decimal(1), currency="euro")


def test_datetimes_must_be_aware_and_become_utc() -> None:
    shanghai = timezone(timedelta(hours=8))
    p = SalesProject(name="x", updated_at=datetime(2026, 3, 1, 9, 0, tzinfo=shanghai))
    assert p.updated_at == datetime(2026, 3, 1, 1, 0, tzinfo=UTC)
    assert p.updated_at is not None and p.updated_at.tzinfo == UTC
    with pytest.raises(ValidationError, match="timezone-aware"):
        SalesProject(name="x", updated_at=datetime(2026, 3, 1, 9, 0))


def test_default_lifecycle_has_six_stages_with_both_languages() -> None:
    lc = Lifecycle()
    assert lc.keys == ["lead", "qualification", "proposal", "negotiation", "signing", "delivery"]
    assert lc.get("delivery").optional and not lc.get("signing").optional
    assert lc.get("negotiation").label("zh-CN") == "商务谈判与合同评审"
    assert lc.get("negotiation").label("en") == "Negotiation & contract review"
    assert all(s.label_en and s.label_zh for s in DEFAULT_STAGES)
    with pytest.raises(KeyError):
        lc.index("won")


def test_ranges_are_enforced() -> None:
    with pytest.raises(ValidationError):
        SalesProject(name="x", probability=120)
    with pytest.raises(ValidationError):
        SalesProject(name="x", priority="extreme")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        SalesProject(name="x", unknown_field=1)  # type: ignore[call-arg]


def test_paths_resolve_into_the_model() -> None:
    assert is_valid_path("customer.name")
    assert is_valid_path("custom.region")
    assert not is_valid_path("customer.nme")
    assert not is_valid_path("amount.amount.x")
    assert not is_valid_path("stakeholders.name")  # inside a list: not a single value
    with pytest.raises(ValidationError):
        to_json_value("probability", 150)  # the field's own limits apply
    with pytest.raises(PathError):
        path_annotation("nope")
    paths = field_paths()
    assert "owner.email" in paths and "expected_close_date" in paths
    assert to_json_value("amount", {"amount": "10.00", "currency": "usd"}) == {
        "amount": "10.00",
        "currency": "USD",
    }
    assert to_json_value("expected_close_date", date(2026, 5, 1)) == "2026-05-01"
    data = full_project().to_json()
    set_path(data, "customer.name", "Acme")
    set_path(data, "custom.region", "EMEA")
    assert get_path(data, "customer.name") == "Acme"
    assert get_path(data, "custom.region") == "EMEA"
    assert get_path(data, "missing.deeper") is None
    assert SalesProject.model_validate(data).custom["region"] == "EMEA"


def test_json_schema_describes_the_model() -> None:
    schema = json_schema()
    assert schema["$schema"].endswith("2020-12/schema")
    assert schema["type"] == "object"
    assert "name" in schema["required"]
    props = schema["properties"]
    assert set(SalesProject.model_fields) == set(props)
    # A generated project validates against the schema with a real JSON Schema validator.
    for project in generate(DemoOptions(count=10)):
        jsonschema.validate(project.to_json(), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "x", "probability": 500}, schema)
