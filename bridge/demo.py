"""``salesbridge demo``: the whole main job on the tools' emulators, with no accounts.

It starts the emulator of every connector that exists (Jira, Trello, Asana, Salesforce,
Pipedrive) on 127.0.0.1 in this process, fills them with generated sales projects
(:mod:`bridge.demo_data`: English and Chinese names, every stage) the way people would have
made them, with their history: each record is created, walked through its stages and last
touched at the project's own times, so stage histories are real and some projects are stale.
It then writes a workspace (config with ``env:`` references to the emulators' tokens, copies of
the mapping files edited so that projects cross tools), runs a full sync, people edit a few
records in the tools, a second sync merges them, the rules are swept, and the manager's digest
(both languages) and the tracking table are written.

``--serve`` keeps the emulators up and runs the service (``salesbridge run``) on the
workspace, so records edited through an emulator's HTTP API propagate to the other tools.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.table import Table

from bridge.cli import app, console
from bridge.errors import UserError
from bridge.shipped import default_rules, mappings_dir

if TYPE_CHECKING:
    from bridge.emulator import Emulator
    from bridge.model import SalesProject
    from bridge.runtime import Runtime
    from bridge.sync import SyncReport

MAPPINGS = mappings_dir()
RULES = default_rules().parent

# The memory tool's schema (kept for the tests that build a memory CRM like the old demo's).
STAGE_NAMES = {
    "lead": "Backlog",
    "qualification": "Qualifying",
    "proposal": "Proposal",
    "negotiation": "Negotiation",
    "signing": "Signed",
    "delivery": "Delivery",
    "proposal_review": "Proposal review",  # a second status that maps to proposal
}
TOOL_FIELDS = {
    "Title": "text",
    "Project number": "text",
    "Customer": "text",
    "Customer ID": "text",
    "Owner": "user",
    "Outcome": "option",
    "Priority": "option",
    "Amount": "number",
    "Currency": "text",
    "Probability": "number",
    "Close date": "date",
    "Stage entered": "datetime",
    "Notes": "text",
    "Stakeholders": "json",
    "Region": "option",
    "Labels": "labels",
    "Created": "datetime",
    "Salesbridge ID": "text",
}

STAGES = ("lead", "qualification", "proposal", "negotiation", "signing", "delivery")
TOOLS = ("pipedrive", "salesforce", "jira", "trello", "asana")
SHARE = {"pipedrive": 0.25, "salesforce": 0.25, "jira": 0.17, "trello": 0.17, "asana": 0.16}
"""Which part of the generated projects starts in each tool."""

# Emulator-only credentials: the emulators accept exactly these, and nothing else does.
ENV = {
    "SALESBRIDGE_DEMO_JIRA_TOKEN": "demo-jira-token",
    "SALESBRIDGE_DEMO_TRELLO_KEY": "demo-trello-key",
    "SALESBRIDGE_DEMO_TRELLO_TOKEN": "demo-trello-token",
    "SALESBRIDGE_DEMO_ASANA_TOKEN": "demo-asana-pat",
    "SALESBRIDGE_DEMO_SF_PASSWORD": "demo-sf-password",
    "SALESBRIDGE_DEMO_SF_TOKEN": "demo-sf-security-token",
    "SALESBRIDGE_DEMO_SF_SECRET": "demo-sf-client-secret",
    "SALESBRIDGE_DEMO_PIPEDRIVE_TOKEN": "demo-pipedrive-token",
}
SF_USER = "integration@salesbridge-demo.example"
SF_CLIENT = "salesbridge-demo"
JIRA_BOT = "bridge@example.com"

TEAMS = {
    "east": ("East China", "华东区", ["li.wei", "zhang.min", "chen.jing", "wang.fang"]),
    "enterprise": ("Enterprise", "大客户部", ["anna.schmidt", "tom.baker", "bob.lee"]),
}
ACTION_ZH = "客户拜访"


class DemoClock:
    """One settable clock for every emulator: while seeding it reads the time history happens
    at; afterwards (``at`` None) it is the real clock."""

    def __init__(self) -> None:
        self.at: datetime | None = None

    def __call__(self) -> datetime:
        return self.at or datetime.now(UTC)


@dataclass
class Tool:
    """One running emulator and what the workspace config needs to reach it."""

    name: str
    emulator: Emulator
    settings: dict[str, Any]
    seeded: int
    refs: list[str] = field(default_factory=list)
    edit: Callable[[str, dict[str, Any]], None] | None = None
    """A person's edit of one record (ref, canonical-ish changes), for the demo's second act."""


# --------------------------------------------------------------------------- history


@dataclass(frozen=True)
class Step:
    at: datetime
    project: int
    seq: int
    kind: str  # create, stage, touch
    stage: int = 0


def timeline(projects: list[SalesProject]) -> list[Step]:
    """Every project's life as steps in time order: created in the first stage, one move per
    stage (the last when it entered its stage), last touched at its last meaningful update."""
    steps: list[Step] = []
    for i, p in enumerate(projects):
        created = p.created_at or datetime.now(UTC)
        entered = p.stage_entered_at or created
        touched = max(p.last_meaningful_update_at or entered, entered)
        n = STAGES.index(p.stage) if p.stage in STAGES else 0
        steps.append(Step(created, i, 0, "create"))
        for k in range(1, n + 1):
            steps.append(Step(created + (entered - created) * k / n, i, k, "stage", k))
        steps.append(Step(touched, i, n + 1, "touch"))
    steps.sort(key=lambda s: (s.at, s.project, s.seq))
    return steps


def _replay(clock: DemoClock, steps: list[Step], apply: Callable[[Step], None]) -> None:
    try:
        for s in steps:
            clock.at = s.at
            apply(s)
    finally:
        clock.at = None


def _local(email: str | None) -> str:
    return (email or "li.wei@example.com").split("@")[0]


def _name_of(p: SalesProject) -> str:
    return p.owner.name if p.owner and p.owner.name else "Li Wei"


def _zh(p: SalesProject) -> bool:
    return bool(re.search(r"[\u4e00-\u9fff]", p.name or ""))


def _action(p: SalesProject) -> str:
    return p.actions[0].what if p.actions else (ACTION_ZH if _zh(p) else "Customer visit")


def _provisional_close(p: SalesProject) -> date:
    base = (p.created_at or datetime.now(UTC)).date()
    return base + timedelta(days=120)


# --------------------------------------------------------------------------- the tools


def _jira(projects: list[SalesProject], clock: DemoClock) -> Tool:
    from connectors.jira.emulator import JiraEmulator, JiraUser
    from connectors.jira.seed import SALES_STAGES, add_sales_project

    em = JiraEmulator("cloud", clock=clock, token=ENV["SALESBRIDGE_DEMO_JIRA_TOKEN"])
    add_sales_project(em)
    em.add_field("Currency", "text")
    priorities = {"low": "Low", "medium": "Medium", "high": "High", "critical": "Highest"}
    keys: dict[int, str] = {}

    def user(p: SalesProject) -> JiraUser:
        email = p.owner.email if p.owner and p.owner.email else "li.wei@example.com"
        found = em.find_user(email)
        return found or em.add_user(
            JiraUser(f"557058:{_local(email)}", _name_of(p), email, _local(email), "Asia/Shanghai")
        )

    def apply(s: Step) -> None:
        p = projects[s.project]
        who = user(p)
        if s.kind == "create":
            fields: dict[str, Any] = {
                "summary": p.name,
                "Customer": p.customer.name if p.customer else None,
                "Probability": p.probability,
                "assignee": who.account_id,
                "priority": priorities[str(p.priority or "medium")],
                "labels": [p.team] if p.team else [],
                "description": "\n".join(n.description for n in p.needs) or None,
            }
            if p.amount is not None:
                fields["Amount"] = float(p.amount.amount)
                fields["Currency"] = p.amount.currency
            keys[s.project] = em.add_issue("SALES", fields, author=who)
        elif s.kind == "stage":
            em.transition_path(keys[s.project], SALES_STAGES[s.stage], author=who)
        elif p.expected_close_date is not None:
            em.edit_issue(
                keys[s.project], {"Close date": p.expected_close_date.isoformat()}, author=who
            )

    _replay(clock, timeline(projects), apply)

    def edit(ref: str, changes: dict[str, Any]) -> None:
        em.edit_issue(ref, changes, author=em.find_user("li.wei@example.com"))

    return Tool(
        "jira",
        em,
        {
            "kind": "jira",
            "url": "{base_url}",
            "deployment": "cloud",
            "email": JIRA_BOT,
            "token": "env:SALESBRIDGE_DEMO_JIRA_TOKEN",
            "jql": "project = SALES",
            "project": "SALES",
        },
        len(projects),
        [keys[i] for i in sorted(keys)],
        edit,
    )


def _trello(projects: list[SalesProject], clock: DemoClock) -> Tool:
    from connectors.trello.emulator import TrelloEmulator
    from connectors.trello.seed import CUSTOM_FIELDS, LABELS, LISTS, PEOPLE, PRIORITIES

    emu = TrelloEmulator(
        key=ENV["SALESBRIDGE_DEMO_TRELLO_KEY"],
        token=ENV["SALESBRIDGE_DEMO_TRELLO_TOKEN"],
        clock=clock,
        enforce_limits=False,
    )
    clock.at = min((p.created_at for p in projects if p.created_at), default=None)
    if clock.at is not None:
        clock.at -= timedelta(days=1)
    # The board connectors/trello/seed.py builds, with every owner as a member.
    people = dict(PEOPLE)
    for p in projects:
        people.setdefault(_local(p.owner.email if p.owner else None), _name_of(p))
    for username, full in people.items():
        emu.add_member(username, full)
    board = emu.add_board("Sales pipeline", members=people)
    lists = {n: emu.add_list(board, n) for n in LISTS}
    for fname, kind in {**CUSTOM_FIELDS, "Currency": "text"}.items():
        emu.add_custom_field(board, fname, kind, PRIORITIES if kind == "list" else ())
    for label, color in LABELS.items():
        emu.add_label(board, label, color)
    clock.at = None
    priorities = {"low": "Low", "medium": "Medium", "high": "High", "critical": "Critical"}
    cards: dict[int, str] = {}

    def member(p: SalesProject) -> str:
        return _local(p.owner.email if p.owner else None)

    def apply(s: Step) -> None:
        p = projects[s.project]
        who = member(p)
        if s.kind == "create":
            custom: dict[str, Any] = {
                "Customer": p.customer.name if p.customer else None,
                "Project number": p.code,
                "Probability": p.probability,
                "Priority": priorities[str(p.priority or "medium")],
                "Strategic": p.intent is not None and str(p.intent) in ("high", "critical"),
            }
            if p.amount is not None:
                custom["Amount"] = float(p.amount.amount)
                custom["Currency"] = p.amount.currency
            cards[s.project] = emu.add_card(
                lists[LISTS[0]],
                p.name,
                actor=who,
                desc="\n".join(n.description for n in p.needs),
                members=[who],
                custom={k: v for k, v in custom.items() if v is not None},
            )
        elif s.kind == "stage":
            emu.move_card(cards[s.project], LISTS[s.stage], actor=who)
        else:
            card = cards[s.project]
            if p.deliverables:
                checklist = emu.add_checklist(card, "Deliverables", actor=who)
                for d in p.deliverables:
                    emu.add_check_item(checklist, d.kind, checked=d.status == "approved", actor=who)
            emu.comment(card, _action(p), actor=who)
            if p.expected_close_date is not None:
                emu.set_custom_field(
                    card, "Close date", p.expected_close_date.isoformat(), actor=who
                )

    _replay(clock, timeline(projects), apply)

    def edit(ref: str, changes: dict[str, Any]) -> None:
        if "list" in changes:
            emu.move_card(ref, changes.pop("list"), actor="li.wei")
        for name, value in changes.items():
            emu.set_custom_field(ref, name, value, actor="li.wei")

    return Tool(
        "trello",
        emu,
        {
            "kind": "trello",
            "base_url": "{base_url}/1",
            "key": "env:SALESBRIDGE_DEMO_TRELLO_KEY",
            "token": "env:SALESBRIDGE_DEMO_TRELLO_TOKEN",
            "boards": [board],
        },
        len(projects),
        [cards[i] for i in sorted(cards)],
        edit,
    )


def _asana(projects: list[SalesProject], clock: DemoClock) -> Tool:
    from connectors.asana.emulator import AsanaEmulator, AsanaState, Query
    from connectors.asana.seed import SECTIONS, seed

    state = AsanaState(clock=clock)
    first = min((p.created_at for p in projects if p.created_at), default=None)
    clock.at = first - timedelta(days=1) if first else None
    seeded = seed(state, tasks=0)
    clock.at = first - timedelta(hours=1) if first else None
    currency = state.add_custom_field(
        seeded.workspace, "Currency", "text", projects=[seeded.pipeline]
    )
    clock.at = None
    f = {
        name: state.field_gid(name)
        for name in ("Customer", "Project number", "Amount", "Probability", "Close date")
    }
    priority, outcome = state.field_gid("Priority"), state.field_gid("Outcome")
    levels = {"low": "Low", "medium": "Medium", "high": "High", "critical": "Urgent"}
    outcomes = {"open": "Open", "won": "Won", "lost": "Lost", "on_hold": "On hold"}
    users = dict(seeded.users)
    tasks: dict[int, str] = {}

    def user(p: SalesProject) -> str:
        email = p.owner.email if p.owner and p.owner.email else "li.wei@example.com"
        if email not in users:
            users[email] = state.add_user(_name_of(p), email)
        return users[email]

    def q(who: str, data: dict[str, Any]) -> Query:
        return Query({}, data, who, "")

    def apply(s: Step) -> None:
        p = projects[s.project]
        who = user(p)
        if s.kind == "create":
            values: dict[str, Any] = {
                f["Customer"]: p.customer.name if p.customer else None,
                f["Project number"]: p.code,
                f["Probability"]: float(p.probability or 0),
                priority: state.option_gid(priority, levels[str(p.priority or "medium")]),
                outcome: state.option_gid(outcome, outcomes[str(p.status)]),
            }
            if p.amount is not None:
                values[f["Amount"]] = float(p.amount.amount)
                values[currency] = p.amount.currency
            _, body = state.create_task(
                q(
                    who,
                    {
                        "name": p.name,
                        "notes": "\n".join(n.description for n in p.needs),
                        "memberships": [
                            {
                                "project": seeded.pipeline,
                                "section": state.section_gid(seeded.pipeline, SECTIONS[0]),
                            }
                        ],
                        "assignee": who,
                        "custom_fields": {k: v for k, v in values.items() if v is not None},
                    },
                ),
                (),
            )
            tasks[s.project] = str(body["data"]["gid"])
        elif s.kind == "stage":
            section = state.section_gid(seeded.pipeline, SECTIONS[s.stage])
            state.add_task_to_section(q(who, {"task": tasks[s.project]}), (section,))
        else:
            gid = tasks[s.project]
            state.create_story(q(who, {"text": _action(p)}), (gid,))
            if p.expected_close_date is not None:
                close = p.expected_close_date.isoformat()
                state.update_task(
                    q(who, {"custom_fields": {f["Close date"]: {"date": close}}}), (gid,)
                )

    with state.lock:
        _replay(clock, timeline(projects), apply)
    emulator = AsanaEmulator(state, tokens={ENV["SALESBRIDGE_DEMO_ASANA_TOKEN"]: seeded.bot})

    def edit(ref: str, changes: dict[str, Any]) -> None:
        who = users["li.wei@example.com"]
        if "section" in changes:
            section = state.section_gid(seeded.pipeline, changes.pop("section"))
            emulator.request("POST", f"/sections/{section}/addTask", user=who, data={"task": ref})
        if changes:
            emulator.request("PUT", f"/tasks/{ref}", user=who, data=changes)

    return Tool(
        "asana",
        emulator,
        {
            "kind": "asana",
            "token": "env:SALESBRIDGE_DEMO_ASANA_TOKEN",
            "base_url": "{base_url}/api/1.0",
            "workspace": seeded.workspace,
            "project": seeded.pipeline,
            "plan": "paid",
        },
        len(projects),
        [tasks[i] for i in sorted(tasks)],
        edit,
    )


SF_STAGES = (
    "Prospecting",
    "Qualification",
    "Proposal/Price Quote",
    "Negotiation/Review",
    "Closed Won",
    "Closed/Won",
)
SF_ROLES = {"decision_maker": "Decision Maker", "influencer": "Influencer"}


def _salesforce(projects: list[SalesProject], clock: DemoClock) -> Tool:
    from connectors.salesforce.emulator import SalesforceEmulator, SalesforceOrg

    first = min((p.created_at for p in projects if p.created_at), default=None)
    clock.at = first - timedelta(days=1) if first else None
    org = SalesforceOrg(clock=clock)
    org.add_user(
        SF_USER,
        "salesbridge@example.com",
        "Salesbridge Integration",
        password=ENV["SALESBRIDGE_DEMO_SF_PASSWORD"],
        security_token=ENV["SALESBRIDGE_DEMO_SF_TOKEN"],
    )
    org.add_client(SF_CLIENT, ENV["SALESBRIDGE_DEMO_SF_SECRET"])
    clock.at = None
    users: dict[str, str] = {}
    accounts: dict[str, str] = {}
    opps: dict[int, str] = {}

    def owner(p: SalesProject) -> str:
        email = p.owner.email if p.owner and p.owner.email else "li.wei@example.com"
        if email not in users:
            users[email] = org.add_user(
                f"{_local(email)}@salesbridge-demo.example", email, _name_of(p)
            )
        return users[email]

    def apply(s: Step) -> None:
        p = projects[s.project]
        who = owner(p)
        if s.kind == "create":
            customer = p.customer.name if p.customer else "(no account)"
            if customer not in accounts:
                accounts[customer] = org.insert("Account", {"Name": customer}, actor=who)
            values: dict[str, Any] = {
                "Name": p.name,
                "AccountId": accounts[customer],
                "OwnerId": who,
                "StageName": SF_STAGES[0],
                "CloseDate": _provisional_close(p).isoformat(),
                "Description": "\n".join(n.description for n in p.needs) or None,
                "MainCompetitors__c": ", ".join(c.name for c in p.competitors)[:100] or None,
            }
            if p.amount is not None:
                values["Amount"] = float(p.amount.amount)
                values["CurrencyIsoCode"] = p.amount.currency
            opp = org.insert("Opportunity", values, actor=who)
            opps[s.project] = opp
            for person in p.stakeholders:
                last = person.name.split()[-1] if " " in person.name else person.name
                first_name = person.name.split()[0] if " " in person.name else None
                contact = org.insert(
                    "Contact",
                    {
                        "FirstName": first_name,
                        "LastName": last,
                        "Title": person.title,
                        "AccountId": accounts[customer],
                    },
                    actor=who,
                )
                org.insert(
                    "OpportunityContactRole",
                    {
                        "OpportunityId": opp,
                        "ContactId": contact,
                        "Role": SF_ROLES.get(str(person.role), "Other"),
                    },
                    actor=who,
                )
        elif s.kind == "stage":
            org.update("Opportunity", opps[s.project], {"StageName": SF_STAGES[s.stage]}, actor=who)
        else:
            opp = opps[s.project]
            org.insert(
                "Task",
                {
                    "WhatId": opp,
                    "Subject": _action(p),
                    "Status": "Completed",
                    "ActivityDate": clock().date().isoformat(),
                    "OwnerId": who,
                },
                actor=who,
            )
            for n in p.next_steps:
                org.insert(
                    "Task",
                    {
                        "WhatId": opp,
                        "Subject": n.what,
                        "Status": "Not Started",
                        "ActivityDate": n.due.isoformat() if n.due else None,
                        "OwnerId": who,
                    },
                    actor=who,
                )
            changes: dict[str, Any] = {}
            if p.expected_close_date is not None:
                changes["CloseDate"] = p.expected_close_date.isoformat()
            if str(p.status) == "lost":
                changes["StageName"] = "Closed Lost"
            if changes:
                org.update("Opportunity", opp, changes, actor=who)

    _replay(clock, timeline(projects), apply)
    emulator = SalesforceEmulator(org)

    def edit(ref: str, changes: dict[str, Any]) -> None:
        org.update("Opportunity", ref, changes, actor=users.get("li.wei@example.com"))

    return Tool(
        "salesforce",
        emulator,
        {
            "kind": "salesforce",
            "login_url": "{base_url}",
            "username": SF_USER,
            "password": "env:SALESBRIDGE_DEMO_SF_PASSWORD",
            "security_token": "env:SALESBRIDGE_DEMO_SF_TOKEN",
            "client_id": SF_CLIENT,
            "client_secret": "env:SALESBRIDGE_DEMO_SF_SECRET",
        },
        len(projects),
        [opps[i] for i in sorted(opps)],
        edit,
    )


PD_STAGES = (
    ("Sales pipeline", "Lead in"),
    ("Sales pipeline", "Qualified"),
    ("Sales pipeline", "Proposal made"),
    ("Sales pipeline", "Negotiations started"),
    ("Sales pipeline", "Contract signed"),
    ("Delivery", "Delivering"),
)


def _pipedrive(projects: list[SalesProject], clock: DemoClock) -> Tool:
    from connectors.pipedrive.emulator import PipedriveEmulator

    emu = PipedriveEmulator(
        seed=False, tokens={ENV["SALESBRIDGE_DEMO_PIPEDRIVE_TOKEN"]: 6}, clock=clock
    )
    levels = {"low": "Low", "medium": "Medium", "high": "High", "critical": "Urgent"}
    orgs: dict[str, int] = {}
    deals: dict[int, int] = {}
    known = {u["email"]: int(u["id"]) for u in emu.users.values()}

    def owner(p: SalesProject) -> int:
        email = p.owner.email if p.owner and p.owner.email else "li.wei@example.com"
        if email not in known:
            # The emulator has no way to invite a user: the company's users are its table.
            with emu.lock:
                uid = max(emu.users) + 1
                emu.users[uid] = {
                    "id": uid, "name": _name_of(p), "email": email, "default_currency": "USD",
                    "locale": "en_US", "timezone_name": "Asia/Shanghai", "is_admin": False,
                }  # fmt: skip
            known[email] = uid
        return known[email]

    def apply(s: Step) -> None:
        p = projects[s.project]
        who = owner(p)
        if s.kind == "create":
            customer = p.customer.name if p.customer else None
            body: dict[str, Any] = {
                "title": p.name,
                "stage_id": emu.stage_id(*PD_STAGES[0]),
                "probability": p.probability,
                "custom_fields": {
                    emu.field_key("Priority"): emu.option_id(
                        "Priority", levels[str(p.priority or "medium")]
                    ),
                    emu.field_key("Project number"): p.code,
                },
            }
            if customer:
                if customer not in orgs:
                    orgs[customer] = emu.add_organization(customer, who)
                body["org_id"] = orgs[customer]
            if p.stakeholders:
                person = p.stakeholders[0]
                body["person_id"] = emu.add_person(
                    person.name, who, org_id=body.get("org_id"), job_title=person.title
                )
            if p.amount is not None:
                body["value"] = float(p.amount.amount)
                body["currency"] = p.amount.currency
            deals[s.project] = emu.add_deal(who, **body)
        elif s.kind == "stage":
            emu.edit_deal(deals[s.project], who, stage_id=emu.stage_id(*PD_STAGES[s.stage]))
        else:
            deal = deals[s.project]
            emu.add_activity(
                deal, who, subject=_action(p), done=True, due_date=clock().date().isoformat()
            )
            for n in p.next_steps:
                emu.add_activity(
                    deal,
                    who,
                    subject=n.what,
                    done=False,
                    due_date=n.due.isoformat() if n.due else None,
                )
            changes: dict[str, Any] = {}
            if p.expected_close_date is not None:
                changes["expected_close_date"] = p.expected_close_date.isoformat()
            if str(p.status) in ("won", "lost"):
                changes["status"] = str(p.status)
                if str(p.status) == "lost":
                    changes["lost_reason"] = p.lost_reason or "price"
            if changes:
                emu.edit_deal(deal, who, **changes)

    _replay(clock, timeline(projects), apply)

    def edit(ref: str, changes: dict[str, Any]) -> None:
        if "stage" in changes:
            changes["stage_id"] = emu.stage_id(*changes.pop("stage"))
        emu.edit_deal(int(ref), known["li.wei@example.com"], **changes)

    return Tool(
        "pipedrive",
        emu,
        {
            "kind": "pipedrive",
            "token": "env:SALESBRIDGE_DEMO_PIPEDRIVE_TOKEN",
            "base_url": "{base_url}",
        },
        len(projects),
        [str(deals[i]) for i in sorted(deals)],
        edit,
    )


BUILDERS: dict[str, Callable[[list[SalesProject], DemoClock], Tool]] = {
    "pipedrive": _pipedrive,
    "salesforce": _salesforce,
    "jira": _jira,
    "trello": _trello,
    "asana": _asana,
}


def split(projects: list[SalesProject]) -> dict[str, list[SalesProject]]:
    """The generated projects, dealt out to the tools by :data:`SHARE` (in order)."""
    out: dict[str, list[SalesProject]] = {}
    start = 0
    for i, name in enumerate(TOOLS):
        end = len(projects) if i == len(TOOLS) - 1 else start + round(SHARE[name] * len(projects))
        out[name] = projects[start:end]
        start = end
    return out


@contextmanager
def tools(count: int, *, now: datetime | None = None) -> Iterator[dict[str, Tool]]:
    """Every tool's emulator, seeded and running on 127.0.0.1; stopped on exit."""
    from bridge.demo_data import DemoOptions, generate

    clock = DemoClock()
    projects = list(generate(DemoOptions(count=count, now=now or datetime.now(UTC))))
    with ExitStack() as stack:
        started: dict[str, Tool] = {}
        for name, share in split(projects).items():
            tool = BUILDERS[name](share, clock)
            tool.emulator.start()
            stack.callback(tool.emulator.stop)
            started[name] = tool
        yield started


# --------------------------------------------------------------------------- the workspace


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    return json.dumps(str(v), ensure_ascii=False)


def _edit(text: str, old: str, new: str) -> str:
    if old not in text:
        raise UserError(f"the shipped mapping changed: cannot find {old!r} to edit in a copy")
    return text.replace(old, new, 1)


MAPPING_EDITS: dict[str, list[tuple[str, str]]] = {
    # Pre-sales work on the Trello board: every project in proposal or negotiation gets a card.
    "trello": [
        (
            'create_in_tool = "all"',
            'create_in_tool = "matching"\n'
            "# salesbridge demo: proposals and negotiations get a card on the pre-sales board.\n"
            'create_when = { stage = ["proposal", "negotiation"] }',
        ),
        ('currency = "USD"', 'currency_field = "Currency"'),
        (
            '"chen.jing" = "chen.jing@example.com"',
            '"chen.jing" = "chen.jing@example.com"\n'
            '"zhang.min" = "zhang.min@example.com"\n'
            '"anna.schmidt" = "anna.schmidt@example.com"\n'
            '"tom.baker" = "tom.baker@example.com"',
        ),
    ],
    # Delivery runs in Jira: a deal being signed or delivered gets an issue.
    "jira": [
        (
            'stamp_field = "Salesbridge ID"\n',
            'stamp_field = "Salesbridge ID"\n'
            "# salesbridge demo: signed and delivering deals get a Jira issue.\n"
            'create_in_tool = "matching"\n'
            'create_when = { stage = ["signing", "delivery"] }\n',
        ),
        ('currency = "USD"', 'currency_field = "Currency"'),
    ],
    "asana": [
        ('create_in_tool = "all"', 'create_in_tool = "never"'),
        ('currency = "USD"', 'currency_field = "Currency"'),
    ],
}


def write_workspace(out: Path, running: dict[str, Tool]) -> Path:
    """Config, mapping copies (edited for the demo) and the rule pack; returns the config."""
    if not (MAPPINGS / "jira.toml").is_file():
        raise UserError(f"mapping files not found at {MAPPINGS}; reinstall salesbridge")
    if out.exists():
        shutil.rmtree(out)
    (out / "mappings").mkdir(parents=True)
    for name in running:
        text = (MAPPINGS / f"{name}.toml").read_text(encoding="utf-8")
        for old, new in MAPPING_EDITS.get(name, []):
            text = _edit(text, old, new)
        (out / "mappings" / f"{name}.toml").write_text(text, encoding="utf-8")
    lines = [
        "# Written by `salesbridge demo`: every tool is an emulator on 127.0.0.1 that lives only",
        "# as long as the demo (or `salesbridge demo --serve`) runs. Tokens are env: references;",
        "# the demo sets them in its own environment.",
        'timezone = "Asia/Shanghai"',
        'language = "en"',
        "",
        "[store]",
        'url = "sqlite:///salesbridge.db"',
        "",
        "[sync]",
        'conflict_policy = "newest_wins"',
        "max_workers = 5",
        "",
        "[service]",
        'host = "127.0.0.1"',
        "port = 0",
        "",
    ]
    for key, (label, label_zh, members) in TEAMS.items():
        emails = [f"{m}@example.com" for m in members]
        lines += [
            f"[teams.{key}]",
            f"label = {_toml_value(label)}",
            f"label_zh = {_toml_value(label_zh)}",
            'parent = "sales"',
            f"members = {_toml_value(emails)}",
            "",
        ]
    lines += [
        "[teams.sales]",
        'label = "Sales"',
        'label_zh = "销售部"',
        "",
        "[recipients.director]",
        'name = "Sales director"',
        'language = "en"',
        'teams = ["sales"]',
        "",
        "[recipients.zongjian]",
        'name = "销售总监"',
        'language = "zh-CN"',
        'teams = ["sales"]',
        "",
    ]
    for name, tool in running.items():
        lines.append(f"[connectors.{name}]")
        lines.append(f"kind = {_toml_value(tool.settings['kind'])}")
        mapping = out / "mappings" / f"{name}.toml"
        if name == "asana":
            # The Asana connector reads its mapping's field list relative to the working
            # directory, not to this file: give it the absolute path.
            lines.append(f"mapping = {_toml_value(str(mapping.resolve()))}")
        else:
            lines.append(f'mapping = "mappings/{name}.toml"')
        lines.append('interval = "30s"')
        lines.append("rate_limit = { requests = 10000, per = 1.0 }")
        for key, value in tool.settings.items():
            if key == "kind":
                continue
            if isinstance(value, str):
                value = value.replace("{base_url}", tool.emulator.base_url)
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    path = out / "salesbridge.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- the command


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Workspace folder to write.")] = Path(
        "salesbridge-demo"
    ),
    count: Annotated[int, typer.Option("--count", "-n", help="Projects to generate.")] = 240,
    serve: Annotated[
        bool, typer.Option("--serve", help="Keep the emulators up and run the service.")
    ] = False,
    port: Annotated[int, typer.Option(help="Port of the service with --serve.")] = 8787,
) -> None:
    """Run the whole job on the tools' emulators with generated data: no accounts, no setup."""
    run_demo(out, count, serve=serve, port=port)


def run_demo(out: Path, count: int = 240, *, serve: bool = False, port: int = 8787) -> DemoResult:
    """The demo (see the module docstring); returns what it did, for tests."""
    from bridge.config import load_config
    from bridge.runtime import open_runtime

    started = time.monotonic()
    say = console()
    say.print(f"[bold]salesbridge demo[/bold]: {count} generated projects, workspace {out}/")
    result = DemoResult(out)
    with tools(count) as running:
        say.print(
            f"{len(running)} emulators on 127.0.0.1, seeded with their history in "
            f"{time.monotonic() - started:.1f} s:"
        )
        for name, tool in running.items():
            say.print(f"  {name:<11} {tool.emulator.base_url:<24} {tool.seeded} projects")
        config = write_workspace(out, running)
        os.environ.update(ENV)
        loaded = load_config(config)
        with open_runtime(loaded) as rt:
            result.reports.append(rt.engine.run())
            for line in _people_edit(rt, running):
                say.print(f"  [dim]edited[/dim] {line}")
            result.reports.append(rt.engine.run())
            _summary(rt, result.reports)
            now = datetime.now(UTC)
            pack, result.violations = _rules(rt, now)
            result.files = _outputs(rt, out, pack, now)
            result.projects = rt.store.count_projects()
            result.linked = {name: rt.store.count_links(name) for name in rt.connectors}
            result.seconds = time.monotonic() - started
            say.print(f"Done in {result.seconds:.1f} s. Workspace {out.resolve()}/:")
            say.print(f"  {config.name:<16} the config (tokens are env: references)")
            say.print("  salesbridge.db   the store: salesbridge status / history / conflicts")
            say.print("  digest.html      the director's digest, English and Chinese")
            say.print("  tracker.xlsx     the tracking table, one row per project")
            if serve:
                _serve(rt, running, port)
            else:
                say.print(
                    "The emulators stop with the demo; `salesbridge demo --serve` keeps them up "
                    "and runs the service."
                )
    return result


@dataclass
class DemoResult:
    out: Path
    reports: list[SyncReport] = field(default_factory=list)
    violations: Counter[str] = field(default_factory=Counter)
    files: list[Path] = field(default_factory=list)
    projects: int = 0
    linked: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def _people_edit(rt: Runtime, running: dict[str, Tool]) -> list[str]:
    """Between two syncs, people work in their tools; one change is made in two tools at once.
    Returns what they did, in words."""
    store, done = rt.store, []

    def hub(name: str, ref: str) -> dict[str, Any] | None:
        link = store.get_link(name, ref)
        return store.get_project(link.project_id) if link else None

    def first(name: str, test: Callable[[dict[str, Any]], bool]) -> tuple[str, dict[str, Any]]:
        for ref in running[name].refs:
            data = hub(name, ref)
            if data is not None and data.get("status") == "open" and test(data):
                return ref, data
        raise LookupError(name)

    def pd_move() -> None:
        ref, data = first("pipedrive", lambda d: d.get("stage") == "qualification")
        _call(running["pipedrive"], ref, {"stage": PD_STAGES[2]})
        done.append(f"pipedrive: {data['name']} moved to proposal (a card appears on Trello)")

    def sf_amount() -> None:
        ref, data = first("salesforce", lambda d: bool(d.get("amount")))
        amount = float(data["amount"]["amount"]) * 1.25
        _call(running["salesforce"], ref, {"Amount": round(amount, 2)})
        done.append(f"salesforce: {data['name']} amount raised 25 %")

    def both() -> None:
        # The same project's close date, changed differently in the CRM and on the board.
        for link in store.links_for_connector("trello"):
            others = {lk.connector: lk for lk in store.links_for_project(link.project_id)}
            if "pipedrive" in others:
                data = store.get_project(link.project_id) or {}
                # Both dates differ from the current one: a fixed date could equal it, and an
                # edit that changes nothing is no edit (no conflict to show).
                now = date.fromisoformat(data.get("expected_close_date") or "2027-03-01")
                _call(
                    running["pipedrive"],
                    others["pipedrive"].ref,
                    {"expected_close_date": (now + timedelta(days=30)).isoformat()},
                )
                _call(
                    running["trello"],
                    link.ref,
                    {"Close date": (now + timedelta(days=44)).isoformat()},
                )
                done.append(f"pipedrive + trello: {data.get('name')} close date changed in both")
                return

    def jira_prob() -> None:
        ref, data = first("jira", lambda d: True)
        _call(running["jira"], ref, {"Probability": 55})
        done.append(f"jira: {data['name']} probability set to 55 %")

    def asana_move() -> None:
        from connectors.asana.seed import SECTIONS

        ref, data = first("asana", lambda d: d.get("stage") == "lead")
        _call(running["asana"], ref, {"section": SECTIONS[1]})
        done.append(f"asana: {data['name']} moved to qualification")

    for name, act in (
        ("pipedrive", pd_move),
        ("salesforce", sf_amount),
        ("trello", both),
        ("jira", jira_prob),
        ("asana", asana_move),
    ):
        needs = {name, "pipedrive"} if name == "trello" else {name}
        if needs <= set(running) and needs <= set(rt.connectors):
            with contextlib.suppress(LookupError):  # no record fits: nothing to show there
                act()
    return done


def _call(tool: Tool, ref: str, changes: dict[str, Any]) -> None:
    assert tool.edit is not None
    tool.edit(ref, dict(changes))


def _summary(rt: Runtime, reports: list[SyncReport]) -> None:
    """Per connector, over both runs: linked records, projects it brought into the hub,
    records the bridge created in it, updates both ways, conflicts, refused writes."""
    table = Table(
        "connector",
        "records",
        "new in hub",
        "created",
        "updated",
        "conflicts",
        "refused",
        title="Sync: two runs (people edited the tools in between)",
        box=box.SIMPLE_HEAD,
    )
    for name in rt.connectors:
        c: Counter[str] = Counter()
        for r in reports:
            if name in r.connectors:
                c.update(r.connectors[name].counts)
        table.add_row(
            name,
            str(rt.store.count_links(name)),
            str(c["created"]),
            str(c["push_created"]),
            str(c["updated"] + c["pushed"]),
            str(c["conflicts"]),
            str(c["rejected"] + c["quarantined"]),
        )
    console().print(table)
    for r in reports:
        for n, cr in r.connectors.items():
            if cr.error:
                console().print(f"[red]{n}: {cr.status}[/red] {cr.error}")


def _rules(rt: Runtime, now: datetime) -> tuple[Any, Counter[str]]:
    """Sweep the rules over the store; print the violations by rule in both languages."""
    from bridge.cli_rules import load_pack
    from bridge.rules.sweep import calendars_from_config, managers_from_config, sweep

    config = rt.loaded.config
    pack = load_pack(rt.loaded)
    report = sweep(
        rt.store,
        pack,
        now=now,
        calendars=calendars_from_config(config),
        managers=managers_from_config(config),
    )
    by_rule: Counter[str] = Counter(f.violation.rule for f in report.failing)
    titles = {f.violation.rule: f.rule for f in report.failing}
    table = Table(
        "rule",
        "open",
        box=box.SIMPLE_HEAD,
        title=f"Rules: {report.evaluated} projects checked, {report.tracked} tracked, "
        f"{len(report.failing)} open violations",
    )
    for rule, n in by_rule.most_common():
        r = titles[rule]
        table.add_row(f"{r.title_in('en')} / {r.title_in('zh-CN')}", str(n))
    console().print(table)
    for e in report.errors[:5]:
        console().print(f"[red]rule error[/red] {e.project_id} {e.rule or ''}: {e.message}")
    return pack, by_rule


DIGEST_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>salesbridge digest / 销售项目周报</title></head>
<body style="margin:0;background:#f1f5f9">
<p style="font-family:sans-serif;text-align:center;padding:8px">
<a href="#en">English</a> · <a href="#zh-CN">简体中文</a></p>
<section id="en" lang="en">{en}</section>
<hr style="border:0;border-top:4px solid #cbd5e1;margin:32px 0">
<section id="zh-CN" lang="zh-CN">{zh}</section>
</body></html>
"""
_BODY = re.compile(r"<body[^>]*>(.*)</body>", re.S | re.I)


def _body(html: str) -> str:
    m = _BODY.search(html)
    return m.group(1) if m else html


def _outputs(rt: Runtime, out: Path, pack: Any, now: datetime) -> list[Path]:
    """The director's digest in both languages and the tracking table."""
    from bridge.digest import digest_run, render_digest
    from bridge.export import export

    run = digest_run(rt.store, rt.loaded, now, pack)  # both languages share one read
    html = {
        lang: render_digest(rt.store, rt.loaded, "director", lang, now, run=run)[0]
        for lang in ("en", "zh-CN")
    }
    digest = out / "digest.html"
    digest.write_text(
        DIGEST_PAGE.format(en=_body(html["en"]), zh=_body(html["zh-CN"])), encoding="utf-8"
    )
    tracker = out / "tracker.xlsx"
    export(rt.store, rt.loaded, fmt="xlsx", out=tracker, lang="en", pack=pack)
    return [digest, tracker]


def _serve(rt: Runtime, running: dict[str, Tool], port: int) -> None:
    """Run the service on the workspace until Ctrl-C, the emulators still up."""
    import signal

    from bridge.service import Service
    from bridge.service import running as serving

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    service = Service(rt)
    say = console()
    with serving(service, host="127.0.0.1", port=port) as url:
        say.print(f"[bold]Serving[/bold]: {url}/healthz, {url}/metrics; syncs every 30 s.")
        say.print("Edit records through the emulators' APIs and watch them propagate:")
        for name, tool in running.items():
            say.print(f"  {name:<11} {tool.emulator.base_url}  {_credentials(name)}")
        say.print("Ctrl-C stops the service and the emulators.")
        while not stop.wait(0.5):
            pass
    say.print("stopped")


def _credentials(kind: str) -> str:
    """How to authenticate to the demo's emulator of ``kind`` (emulator-only credentials)."""
    return {
        "jira": f"basic auth {JIRA_BOT} : {ENV['SALESBRIDGE_DEMO_JIRA_TOKEN']}",
        "trello": f"?key={ENV['SALESBRIDGE_DEMO_TRELLO_KEY']}"
        f"&token={ENV['SALESBRIDGE_DEMO_TRELLO_TOKEN']}",
        "asana": f"Authorization: Bearer {ENV['SALESBRIDGE_DEMO_ASANA_TOKEN']}",
        "salesforce": f"OAuth password flow: {SF_USER} / "
        f"{ENV['SALESBRIDGE_DEMO_SF_PASSWORD']}{ENV['SALESBRIDGE_DEMO_SF_TOKEN']}, "
        f"client {SF_CLIENT} / {ENV['SALESBRIDGE_DEMO_SF_SECRET']}",
        "pipedrive": f"?api_token={ENV['SALESBRIDGE_DEMO_PIPEDRIVE_TOKEN']}",
    }[kind]
