"""Data for the Jira emulator: real DevLake captures, and generated sales projects.

:func:`load_devlake` loads Apache DevLake's end-to-end tables (``_raw_jira_api_*.csv``, one
captured Jira Cloud response item per row, JSON in the ``data`` column) *as they are*: the 33
issues with their 110 custom fields, embedded changelogs and comments; the 53 statuses, 12
projects and 7 issue types; the users they mention. Only the site's origin
(``https://merico.atlassian.net``) is replaced by the emulator's own, so ``self`` links resolve.
Two gaps in the capture are filled, and nothing else is made up:

* the captured site's ``/field`` list is not in the tables, so each custom field is described
  from its values (a sprint list, a rank string, a number...) and named by its id;
* the 279 entries of ``_raw_jira_api_issue_changelogs.csv`` belong to three issues
  (13383, 13954, 13491) that are not among the 33; they become stub issues in project EE, keyed
  ``EE-<issue id>``, with their real histories, the status their last status change left them
  in, and ``created``/``updated`` taken from their first and last entries.

:func:`add_sales_project` sets up the project SALES the way a sales team would (issue type
"Sales Project", fields Amount, Close date, Customer, Probability, Salesbridge ID, and a stage
workflow), and :func:`seed_sales` fills it with generated projects from :mod:`bridge.demo_data`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from bridge.demo_data import DemoOptions, generate
from connectors.jira.emulator import (
    BASE,
    JiraEmulator,
    JiraUser,
    Mode,
    Transition,
    Workflow,
    _field_json,
    _Issue,
    _Project,
    parse_jira_time,
)

__all__ = [
    "DEVLAKE_DIR",
    "SALES_FIELDS",
    "SALES_STAGES",
    "add_sales_project",
    "load_devlake",
    "sales_workflow",
    "seed_sales",
    "seeded",
]

DEVLAKE_ORIGIN = "https://merico.atlassian.net"
DEVLAKE_DIR = Path("samples/jira/devlake-raw-tables")
"""Where DevLake's tables sit inside the shared directory."""
_CSV_LIMIT = 1 << 26

Json = dict[str, Any]


# --------------------------------------------------------------------------- DevLake


def _rows(path: Path) -> Iterator[Json]:
    """The ``data`` objects of one DevLake raw table, with the origin replaced."""
    if not path.exists():
        return
    csv.field_size_limit(max(csv.field_size_limit(), _CSV_LIMIT))
    with path.open(newline="", encoding="utf-8") as f:
        lines = (line for line in f if line.strip())  # _raw_jira_api_issue_fields starts blank
        for row in csv.DictReader(lines):
            data = json.loads(row["data"].replace(DEVLAKE_ORIGIN, BASE))
            yield {"data": data, "input": json.loads(row.get("input") or "null")}


def _users_in(value: Any) -> Iterator[Json]:
    if isinstance(value, dict):
        if "displayName" in value and ("accountId" in value or "self" in value):
            yield value
        for v in value.values():
            yield from _users_in(v)
    elif isinstance(value, list):
        for v in value:
            yield from _users_in(v)


def _account_id(user: Json) -> str:
    # DevLake blanked some accountIds; the self link still carries them.
    return str(user.get("accountId") or str(user.get("self", "")).rpartition("accountId=")[2])


def _infer_schema(fid: str, values: list[Any]) -> Json:
    """A custom field's schema guessed from its values (the capture lacks ``/field``)."""
    number = int(fid.rpartition("_")[2])
    sample = next((v for v in values if v not in (None, [], "")), None)
    custom, type_, items = "com.atlassian.jira.plugin.system.customfieldtypes:", "any", None
    key = "unknown"
    if (
        isinstance(sample, list)
        and sample
        and isinstance(sample[0], dict)
        and "boardId" in sample[0]
    ):
        key, type_, items = "com.pyxis.greenhopper.jira:gh-sprint", "array", "json"
    elif isinstance(sample, str) and "|" in sample and sample[:1].isdigit() and ":" in sample:
        key = "com.pyxis.greenhopper.jira:gh-lexo-rank"
    elif isinstance(sample, bool):
        key = "unknown"
    elif isinstance(sample, int | float):
        key, type_ = custom + "float", "number"
    elif isinstance(sample, str):
        key, type_ = custom + "textfield", "string"
    elif isinstance(sample, dict) and "accountId" in sample:
        key, type_ = custom + "userpicker", "user"
    elif isinstance(sample, dict) and "value" in sample:
        key, type_ = custom + "select", "option"
    elif isinstance(sample, list) and all(isinstance(v, str) for v in sample):
        key, type_, items = custom + "labels", "array", "string"
    elif isinstance(sample, list):
        type_, items = "array", "json"
    schema: Json = {"type": type_, "custom": key, "customId": number}
    if items:
        schema["items"] = items
    return schema


def load_devlake(em: JiraEmulator, directory: Path) -> list[str]:
    """Load DevLake's raw Jira tables from ``directory``; return the keys of loaded issues."""
    with em._lock:
        for row in _rows(directory / "_raw_jira_api_status.csv"):
            em.statuses[str(row["data"]["id"])] = row["data"]
        for row in _rows(directory / "_raw_jira_api_issue_types.csv"):
            em.issue_types[str(row["data"]["id"])] = row["data"]
        for row in _rows(directory / "_raw_jira_api_issue_fields.csv"):
            em.fields[row["data"]["id"]] = row["data"]
        issues = [row["data"] for row in _rows(directory / "_raw_jira_api_issues.csv")]
        changelogs: dict[str, list[Json]] = {}
        for row in _rows(directory / "_raw_jira_api_issue_changelogs.csv"):
            changelogs.setdefault(str(row["input"]["issue_id"]), []).append(row["data"])

        for user in _users_in([issues, list(changelogs.values())]):
            account = _account_id(user)
            if account and account not in em.users:
                em.add_user(
                    JiraUser(
                        account,
                        str(user["displayName"]),
                        user.get("emailAddress") or None,
                        time_zone=str(user.get("timeZone") or "UTC"),
                        active=bool(user.get("active", True)),
                    )
                )

        values: dict[str, list[Any]] = {}
        for data in issues:
            for fid, value in data["fields"].items():
                values.setdefault(fid, []).append(value)
        for fid, seen in values.items():
            if fid.startswith("customfield_") and fid not in em.fields:
                em.fields[fid] = _field_json(fid, fid, _infer_schema(fid, seen), custom=True)
                em.fields[fid]["clauseNames"] = [f"cf[{fid.rpartition('_')[2]}]"]

        statuses_of: dict[str, list[str]] = {}
        types_of: dict[str, list[str]] = {}
        for data in issues:
            project = data["fields"]["project"]["key"]
            _add_once(statuses_of.setdefault(project, []), data["fields"]["status"]["name"])
            _add_once(types_of.setdefault(project, []), str(data["fields"]["issuetype"]["id"]))
            for history in data.get("changelog", {}).get("histories", []):
                for item in history["items"]:
                    if item["field"] == "status":
                        _add_once(statuses_of[project], item["toString"])
        for row in _rows(directory / "_raw_jira_api_projects.csv"):
            raw = row["data"]
            key = raw["key"]
            names = statuses_of.get(key) or [s["name"] for s in em.statuses.values()][:3]
            em.projects[key] = _Project(
                {**raw, "_lead": next(iter(em.users))},
                types_of.get(key) or list(em.issue_types)[:1],
                Workflow.simplified(f"Software Simplified Workflow for Project {key}", names),
                None,
                (),
            )

        for data in issues:  # issues captured from another site (K5) bring their project
            raw = data["fields"]["project"]
            if raw["key"] not in em.projects:
                key = raw["key"]
                em.projects[key] = _Project(
                    {**raw, "_lead": next(iter(em.users))},
                    types_of[key],
                    Workflow.simplified(
                        f"Software Simplified Workflow for Project {key}", statuses_of[key]
                    ),
                    None,
                    (),
                )

        keys = []
        for data in issues:
            fields = dict(data["fields"])
            comments = (fields.pop("comment", None) or {}).get("comments", [])
            histories = list(reversed(data.get("changelog", {}).get("histories", [])))
            histories += changelogs.pop(str(data["id"]), [])
            _store(em, _Issue(str(data["id"]), data["key"], fields, histories, comments))
            keys.append(data["key"])
        for issue_id, histories in changelogs.items():
            keys.append(_stub(em, issue_id, histories))
        return keys


def _add_once(items: list[str], value: str) -> None:
    if value not in items:
        items.append(value)


def _store(em: JiraEmulator, issue: _Issue) -> None:
    em._issues[issue.id] = issue
    em._by_key[issue.key] = issue.id
    project = em.projects.get(issue.key.rpartition("-")[0])
    if project is not None:
        project.next_number = max(project.next_number, issue.number + 1)
    em._next["issue"] = max(em._next["issue"], int(issue.id))


def _stub(em: JiraEmulator, issue_id: str, histories: list[Json]) -> str:
    """An issue known only from its changelog (see the module docstring)."""
    histories.sort(key=lambda h: parse_jira_time(h["created"]))
    status_name = None
    for history in histories:
        for item in history["items"]:
            if item["field"] == "status":
                status_name = item["toString"]
    status = em.status(status_name or "Open") or next(iter(em.statuses.values()))
    project = em.projects.get("EE") or next(iter(em.projects.values()))
    type_id = project.issue_types[0] if project.issue_types else next(iter(em.issue_types))
    fields: Json = {
        "summary": f"Issue {issue_id} (only its changelog was captured)",
        "project": {k: project.raw[k] for k in ("self", "id", "key", "name") if k in project.raw},
        "issuetype": em.issue_types[type_id],
        "status": status,
        "created": histories[0]["created"],
        "updated": histories[-1]["created"],
        "labels": [],
        "description": None,
        "assignee": None,
        "reporter": None,
        "priority": None,
    }
    key = f"{project.key}-{issue_id}"
    _store(em, _Issue(issue_id, key, fields, histories, []))
    return key


# --------------------------------------------------------------------------- sales


SALES_STAGES = ("Lead", "Qualification", "Proposal", "Negotiation", "Signing", "Delivery")
SALES_FIELDS: Mapping[str, str] = MappingProxyType(
    {
        "Amount": "number",
        "Close date": "date",
        "Customer": "text",
        "Probability": "number",
        "Salesbridge ID": "text",
    }
)


def sales_workflow() -> Workflow:
    """One step forward or back at a time: Lead -> Proposal must pass through Qualification, and
    signing asks for the close date on its screen. (A new object per call: emulators never
    share state.)"""
    return Workflow(
        "Sales Project Workflow",
        list(SALES_STAGES),
        [
            Transition("11", "Qualify", "Qualification", ("Lead",)),
            Transition("21", "Send proposal", "Proposal", ("Qualification",)),
            Transition("31", "Start negotiation", "Negotiation", ("Proposal",)),
            Transition(
                "41",
                "Sign contract",
                "Signing",
                ("Negotiation",),
                screen=("Close date", "Amount"),
                required=("Close date",),
            ),
            Transition("51", "Start delivery", "Delivery", ("Signing",)),
            Transition("61", "Back to lead", "Lead", ("Qualification",)),
            Transition("71", "Back to qualification", "Qualification", ("Proposal",)),
            Transition("81", "Back to proposal", "Proposal", ("Negotiation",)),
            Transition("91", "Back to negotiation", "Negotiation", ("Signing",)),
        ],
    )


def add_sales_project(em: JiraEmulator, key: str = "SALES") -> None:
    """The SALES project, its fields and workflow, as a sales team's Jira admin sets them up."""
    with em._lock:
        for name, kind in SALES_FIELDS.items():
            if em.field_id(name) is None:
                em.add_field(name, kind)
        em.add_status("Lead", "new")
        for stage in SALES_STAGES[1:-1]:
            em.add_status(stage, "indeterminate")
        em.add_status("Delivery", "done")
        em.add_project(
            key, "Sales Projects", issue_types=["Sales Project"], workflow=sales_workflow()
        )


def seed_sales(
    em: JiraEmulator, count: int = 24, *, seed: int = 7, key: str = "SALES"
) -> list[str]:
    """Add ``count`` generated sales projects (with their stage histories) to project ``key``.

    Each issue is created at the project's creation time and walked through the workflow to its
    stage, one transition per stage, ending at ``stage_entered_at``; the owner is the assignee
    and the actor. The emulator's clock is used again afterwards.
    """
    if em.project(key) is None:
        add_sales_project(em, key)
    clock = em.clock
    keys = []
    try:
        for project in generate(DemoOptions(count=count, seed=seed)):
            owner = project.owner
            assert owner is not None and owner.email is not None
            user = em.find_user(owner.email) or em.add_user(
                JiraUser(
                    "557058:" + owner.email.split("@")[0],
                    owner.name or owner.email,
                    owner.email,
                    owner.email.split("@")[0],
                    "Asia/Shanghai",
                )
            )
            created = project.created_at or em.clock()
            entered = project.stage_entered_at or created
            stages = [s.casefold() for s in SALES_STAGES]
            steps = stages.index(project.stage) if project.stage in stages else 0
            em.clock = lambda at=created: at  # type: ignore[misc]
            fields: Json = {
                "summary": project.name,
                "Customer": project.customer.name if project.customer else None,
                "Amount": float(project.amount.amount) if project.amount else None,
                "Probability": project.probability,
                "Close date": (
                    project.expected_close_date.isoformat() if project.expected_close_date else None
                ),
                "assignee": user.account_id,
                "labels": [project.team] if project.team else [],
            }
            issue_key = em.add_issue(key, fields, author=user)
            for i in range(1, steps + 1):  # one transition per stage, the last at entered
                at = created + (entered - created) * i / steps
                em.clock = lambda at=at: at  # type: ignore[misc]
                em.transition(issue_key, SALES_STAGES[i], author=user)
            keys.append(issue_key)
    finally:
        em.clock = clock
    return keys


def seeded(
    seed: Path | None = None, *, mode: Mode = "cloud", count: int = 24, token: str | None = None
) -> JiraEmulator:
    """An emulator ready to serve (what ``salesbridge emulate jira --seed`` builds).

    ``seed`` is a DevLake raw-table directory (its issues are loaded as captured), or None for
    the SALES project with ``count`` generated sales projects.
    """
    em = JiraEmulator(mode) if token is None else JiraEmulator(mode, token=token)
    if seed is None:
        seed_sales(em, count)
    elif seed.is_dir():
        if not (seed / "_raw_jira_api_issues.csv").exists():
            raise ValueError(f"{seed} holds no _raw_jira_api_issues.csv (a DevLake table dump)")
        load_devlake(em, seed)
    else:
        raise ValueError(f"{seed}: expected a directory of DevLake _raw_jira_api_*.csv tables")
    return em
