"""A small world for the digest and export tests: nested teams, recipients, projects whose
names, codes and customers are easy to spot, and the violations of a real rule sweep."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from bridge.config import LoadedConfig, load_config
from bridge.model import (
    Action,
    Competitor,
    Customer,
    Deliverable,
    Money,
    Need,
    NextStep,
    Person,
    Risk,
    SalesProject,
    Stakeholder,
    Task,
)
from bridge.rules import load_rules
from bridge.rules.sweep import calendars_from_config, managers_from_config, sweep
from bridge.store import Event, Store

NOW = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)  # Monday 09:00 in Shanghai

EAST_REP = Person(name="Wang Fang", email="wang.fang@example.com")
SH_REP = Person(name="Zhou Jie", email="zhou.jie@example.com")
WEST_REP = Person(name="Walt West", email="walt.west@example.com")

# What must never leak out of a scope: every name, code and customer of each team.
EAST_SECRETS = ("EAST-001", "Harbour Crane Upgrade", "Ningbo Port Authority")
SHANGHAI_SECRETS = ("SH-002", "Pudong Data Lake", "Lujiazui Finance Group")
WEST_SECRETS = (
    "WEST-003",
    "Desert Solar Farm",
    "Mojave Energy Coop",
    "WEST-004",
    "Canyon Fleet Telematics",
    "Red Rock Haulage",
)


def config_data(**recipients: dict[str, Any]) -> dict[str, Any]:
    return {
        "timezone": "Asia/Shanghai",
        "teams": {
            "sales": {"label": "Sales", "label_zh": "销售部"},
            "east": {"parent": "sales", "label": "East", "label_zh": "华东区"},
            "shanghai": {"parent": "east", "label": "Shanghai", "label_zh": "上海组"},
            "west": {"label": "West", "label_zh": "西部区", "members": [WEST_REP.email]},
        },
        "recipients": recipients
        or {
            "li": {
                "name": "Li Na",
                "language": "zh-CN",
                "teams": ["east"],
                "email": "li.na@example.com",
            },
            "bob": {
                "name": "Bob Stone",
                "teams": ["west"],
                "mask_amounts": True,
                "role": "sales_ops",
                "email": "bob@example.com",
            },
            "dir": {"name": "Director", "teams": ["sales"], "email": "dir@example.com"},
        },
        "smtp": {"host": "127.0.0.1", "port": 25, "security": "none", "sender": "sb@example.com"},
    }


def loaded_config(data: dict[str, Any] | None = None) -> LoadedConfig:
    return load_config(None, data=data or config_data())


def projects() -> list[SalesProject]:
    tracked: dict[str, Any] = {
        "contract_value": Money(amount=Decimal(900_000), currency="USD"),
        "created_at": NOW - timedelta(days=120),
    }
    return [
        SalesProject(
            id="sb-east1",
            code="EAST-001",
            name="Harbour Crane Upgrade",
            customer=Customer(name="Ningbo Port Authority"),
            owner=EAST_REP,
            team="east",
            stage="proposal",
            stage_entered_at=NOW - timedelta(days=75),
            priority="high",
            amount=Money(amount=Decimal("1234567"), currency="USD"),
            probability=40,
            expected_close_date=date(2026, 2, 20),
            last_meaningful_update_at=NOW - timedelta(days=40),
            stakeholders=[
                Stakeholder(name="Chen Zong", title="CEO", role="decision_maker"),
                Stakeholder(name="Liu Gong", title="CTO", role="influencer"),
            ],
            needs=[Need(description="Faster crane scheduling", pain_point=True)],
            competitors=[Competitor(name="SAP")],
            tasks=[
                Task(title="Site survey", stage="qualification", done=True),
                Task(title="Draft proposal", stage="proposal", done=True),
                Task(title="Price review", stage="proposal", done=False),
            ],
            deliverables=[Deliverable(kind="needs_analysis", status="approved")],
            actions=[Action(what="Workshop held", at=NOW - timedelta(days=40))],
            next_steps=[NextStep(what="Send the quote", owner=EAST_REP, due=date(2026, 3, 9))],
            risks=[Risk(description="Budget freeze", severity="high", mitigation="Phase it")],
            **tracked,
        ),
        SalesProject(
            id="sb-sh2",
            code="SH-002",
            name="Pudong Data Lake",
            customer=Customer(name="Lujiazui Finance Group"),
            owner=SH_REP,
            team="shanghai",
            stage="negotiation",
            stage_entered_at=NOW - timedelta(days=10),
            amount=Money(amount=Decimal("3000000"), currency="CNY"),
            probability=60,
            expected_close_date=date(2026, 4, 30),
            last_meaningful_update_at=NOW - timedelta(days=1),
            **tracked,
        ),
        SalesProject(
            id="sb-west3",
            code="WEST-003",
            name="Desert Solar Farm",
            customer=Customer(name="Mojave Energy Coop"),
            owner=WEST_REP,
            team="west",
            stage="qualification",
            stage_entered_at=NOW - timedelta(days=20),
            amount=Money(amount=Decimal("987654"), currency="USD"),
            probability=20,
            expected_close_date=date(2026, 6, 30),
            last_meaningful_update_at=NOW - timedelta(days=30),
            **tracked,
        ),
        # no team: in West's scope through its owner's membership
        SalesProject(
            id="sb-west4",
            code="WEST-004",
            name="Canyon Fleet Telematics",
            customer=Customer(name="Red Rock Haulage"),
            owner=WEST_REP,
            stage="lead",
            amount=Money(amount=Decimal("456789"), currency="USD"),
            last_meaningful_update_at=NOW - timedelta(days=2),
            **tracked,
        ),
    ]


def seed(store: Store, loaded: LoadedConfig, now: datetime = NOW) -> None:
    """Put the projects in the store, log a close-date slip on EAST-001 (six days before
    ``now``: still more than its three business days' cadence) and sweep the rules."""
    store.put_projects(projects())
    store.append_events(
        [
            Event(
                project_id="sb-east1",
                at=now - timedelta(days=6),
                field="expected_close_date",
                old="2026-02-10",
                new="2026-02-20",
                source="crm",
                meaningful=True,
            )
        ]
    )
    sweep(
        store,
        load_rules(lifecycle=loaded.config.lifecycle),
        now=now,
        calendars=calendars_from_config(loaded.config),
        managers=managers_from_config(loaded.config),
    )
