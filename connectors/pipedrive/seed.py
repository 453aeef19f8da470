"""What the Pipedrive emulator starts with: a company account in the shape the API serves.

No real Pipedrive export is among the shared samples, so this data has two sources, and every
value says which:

* **the specs' examples** (``../shared/specs/pipedrive/pipedrive-openapi-v{1,2}.yaml``): the users
  John Doe and Jane Doe (``GET /v1/users``), the "Priority" enum deal field with its Low / Medium /
  High options (``GET /api/v2/dealFields``), the "Deal Title" deal, "Organization Name" and
  "Person Name" (``GET /api/v2/deals``, ``/organizations``, ``/persons``), copied by hand. The
  spec's placeholder field code ``40characterhashforcustomfieldidentifier`` is replaced by a
  generated 40-hex hash, which is what real accounts have;
* **generated data**: the pipelines and stages, the other custom fields, and opportunities made
  by :mod:`bridge.demo_data` (deterministic for a seed).

:func:`seed_data` returns plain JSON-shaped dicts; the emulator loads them.
"""

from __future__ import annotations

import hashlib
from typing import Any

SPEC_USERS: list[dict[str, Any]] = [
    # GET /v1/users example (v1 spec), trimmed to what the emulator serves.
    {"id": 1, "name": "John Doe", "email": "john@pipedrive.com", "default_currency": "EUR",
     "locale": "et_EE", "timezone_name": "Europe/Berlin", "is_admin": True},
    {"id": 2, "name": "Jane Doe", "email": "jane@pipedrive.com", "default_currency": "EUR",
     "locale": "et_EE", "timezone_name": "Europe/Berlin", "is_admin": False},
]  # fmt: skip

GENERATED_USERS: list[dict[str, Any]] = [
    {"id": 3, "name": "Li Wei", "email": "li.wei@example.com", "default_currency": "CNY",
     "locale": "zh_CN", "timezone_name": "Asia/Shanghai", "is_admin": False},
    {"id": 4, "name": "Zhang Min", "email": "zhang.min@example.com", "default_currency": "CNY",
     "locale": "zh_CN", "timezone_name": "Asia/Shanghai", "is_admin": False},
    {"id": 5, "name": "Anna Schmidt", "email": "anna@example.com", "default_currency": "EUR",
     "locale": "de_DE", "timezone_name": "Europe/Berlin", "is_admin": False},
    {"id": 6, "name": "Salesbridge", "email": "salesbridge@example.com", "default_currency": "USD",
     "locale": "en_US", "timezone_name": "UTC", "is_admin": False},
]  # fmt: skip

# (pipeline, [(stage, deal probability)]): generated; "Sales pipeline" follows Pipedrive's
# default pipeline, renamed the way many accounts do.
PIPELINES: list[tuple[str, list[tuple[str, int]]]] = [
    (
        "Sales pipeline",
        [
            ("Lead in", 10),
            ("Qualified", 25),
            ("Proposal made", 50),
            ("Negotiations started", 75),
            ("Contract signed", 90),
        ],
    ),
    ("Delivery", [("Onboarding", 100), ("Delivering", 100)]),
]


def field_hash(name: str) -> str:
    """A stable 40-hex field code, as Pipedrive gives custom fields (generated)."""
    return hashlib.sha1(f"salesbridge-seed:{name}".encode()).hexdigest()  # noqa: S324


# (name, field_type, option labels): "Priority" and its options are the v2 dealFields example.
CUSTOM_DEAL_FIELDS: list[tuple[str, str, list[str]]] = [
    ("Priority", "enum", ["Low", "Medium", "High", "Urgent"]),  # "Urgent": generated
    ("Salesbridge ID", "varchar", []),
    ("Project number", "varchar", []),
    ("Region", "enum", ["APAC", "EMEA", "Americas"]),
    ("Products", "set", ["Platform", "Services", "Support"]),
    ("Contract value", "double", []),
    ("Kick-off date", "date", []),
]

# (name, field_type, option labels): the person fields holding a stakeholder's role and
# attitude, which Pipedrive has no standard field for; an admin adds them as the connector's
# docstring says (its `role_field` and `attitude_field` settings name them). Generated: the
# labels are the canonical roles and attitudes, written as words.
CUSTOM_PERSON_FIELDS: list[tuple[str, str, list[str]]] = [
    ("Deal role", "enum", ["Decision maker", "Economic buyer", "Influencer", "Champion", "User",
                           "Technical buyer", "Blocker", "Other"]),
    ("Attitude", "enum", ["Supportive", "Neutral", "Opposed", "Unknown"]),
]  # fmt: skip

SPEC_ORGANIZATION = {"id": 1, "name": "Organization Name", "owner_id": 1}
SPEC_PERSON = {
    "id": 1,
    "name": "Person Name",
    "first_name": "Person",
    "last_name": "Name",
    "owner_id": 1,
    "org_id": 1,
    "emails": [
        {"value": "email1@email.com", "primary": True, "label": "work"},
        {"value": "email2@email.com", "primary": False, "label": "home"},
    ],
    "job_title": "Manager",
}
SPEC_DEAL = {
    # GET /api/v2/deals example: title, value, currency, probability, close date, origin.
    "title": "Deal Title",
    "owner_id": 1,
    "person_id": 1,
    "org_id": 1,
    "value": 200,
    "currency": "USD",
    "probability": 90,
    "expected_close_date": "2021-01-01",
    "origin": "ManuallyCreated",
    "channel": 52,
    "channel_id": "Jun23 Billboards",
}

_STAGE_OF = {
    "lead": ("Sales pipeline", "Lead in"),
    "qualification": ("Sales pipeline", "Qualified"),
    "proposal": ("Sales pipeline", "Proposal made"),
    "negotiation": ("Sales pipeline", "Negotiations started"),
    "signing": ("Sales pipeline", "Contract signed"),
    "delivery": ("Delivery", "Delivering"),
}
_PRIORITY = {"low": "Low", "medium": "Medium", "high": "High", "critical": "High"}


def generated_deals(count: int, seed: int = 7) -> list[dict[str, Any]]:
    """``count`` opportunities from :mod:`bridge.demo_data`, as seed deals (generated).

    Each is ``{"deal": {...}, "pipeline", "stage", "organization", "people", "custom":
    {field name: label or value}, "activities": [...]}``; the emulator resolves names to ids.
    ``people`` are the project's stakeholders (name, email, job_title, and role and attitude as
    labels of :data:`CUSTOM_PERSON_FIELDS`, None when unknown): the first is the deal's contact
    person, the others its participants.
    """
    from bridge.demo_data import DemoOptions, generate

    users = {u["email"]: u["id"] for u in GENERATED_USERS}
    out: list[dict[str, Any]] = []
    for p in generate(DemoOptions(count=count, seed=seed)):
        pipeline, stage = _STAGE_OF.get(p.stage, _STAGE_OF["lead"])
        owner = users.get(p.owner.email if p.owner and p.owner.email else "", 3)
        deal: dict[str, Any] = {
            "title": p.name,
            "owner_id": owner,
            "status": p.status if p.status in ("open", "won", "lost") else "open",
            "expected_close_date": (
                p.expected_close_date.isoformat() if p.expected_close_date else None
            ),
            "probability": p.probability,
        }
        if p.amount is not None:
            deal["value"] = float(p.amount.amount)
            deal["currency"] = p.amount.currency
        if deal["status"] == "lost":
            deal["lost_reason"] = p.lost_reason or "Price"
        people = [
            {
                "name": s.name,
                "email": s.email,
                "job_title": s.title,
                "role": None if s.role == "other" else _label(s.role),
                "attitude": None if s.attitude == "unknown" else _label(s.attitude),
            }
            for s in p.stakeholders
        ]
        out.append(
            {
                "deal": deal,
                "pipeline": pipeline,
                "stage": stage,
                "organization": p.customer.name if p.customer else None,
                "people": people,
                "custom": {
                    "Priority": _PRIORITY.get(str(p.priority), "Medium"),
                    "Project number": p.code,
                },
                "activities": [
                    {"subject": a.what, "done": True, "due_date": a.at.date().isoformat()}
                    for a in p.actions[:2]
                ]
                + [
                    {
                        "subject": n.what,
                        "done": False,
                        "due_date": n.due.isoformat() if n.due else None,
                    }
                    for n in p.next_steps[:1]
                ],
            }
        )
    return out


def _label(value: str) -> str:
    """A canonical value as an option label: ``economic_buyer`` -> ``Economic buyer``."""
    return value.replace("_", " ").capitalize()
