"""Seed data for the Asana emulator: the spec's own examples plus generated sales projects.

There is no real Asana export among the shared samples, so the emulator's data is built from
two sources, and says so:

* the example values of the official OpenAPI description (``asana_oas.yaml``): the user
  "Greg Sanchez", the workspace "My Company Workspace", the project "Stuff to buy", the section
  "Next Actions", the enum options "Low"/"High" of a "Priority" field, the story text
  "marked today". They are copied here as literals (reading the 3 MB file at run time would
  make the demo depend on it);
* generated data: a "Sales pipeline" project whose sections are the lifecycle stages, custom
  fields of every type the connector maps (text, number, date, enum, multi-enum, people) and
  ``n`` tasks with subtasks and comments, from a seeded random generator (reproducible);
* for the "projects" layout (:func:`seed_projects`): a team "Customer projects" whose projects
  are sales projects, each with the same custom fields plus a "Stage" enum (the stages named
  like the pipeline's sections), an owner, a due date and a few tasks.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import date, timedelta

from connectors.asana.emulator import AsanaState, Query

SECTIONS = ("Leads", "Qualified", "Proposal", "Negotiation", "Signed", "Delivery")
"""The pipeline project's sections, in lifecycle order (mappings/asana.toml maps them)."""

FIELDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "Customer": ("text", ()),
    "Project number": ("text", ()),
    "Amount": ("number", ()),
    "Probability": ("number", ()),
    "Close date": ("date", ()),
    "Priority": ("enum", ("Low", "Medium", "High", "Urgent")),
    "Outcome": ("enum", ("Open", "Won", "Lost", "On hold")),
    "Region": ("multi_enum", ("APAC", "EMEA", "Americas")),
    "Team": ("people", ()),
    "Salesbridge ID": ("text", ()),
}

SPEC_USER = ("Greg Sanchez", "gsanchez@example.com")
SPEC_EXAMPLES = {
    "workspace": "My Company Workspace",
    "project": "Stuff to buy",
    "section": "Next Actions",
    "story": "marked today",
}

_PEOPLE = (
    ("Li Wei", "li.wei@example.com"),
    ("Wang Fang", "wang.fang@example.com"),
    ("Bob Lee", "bob.lee@example.com"),
    ("Ana Souza", "ana.souza@example.com"),
)
_CUSTOMERS = ("Acme", "Globex", "Initech", "Umbrella", "Hooli", "Stark Industries", "Wayne Corp")
_WHAT = ("rollout", "renewal", "pilot", "expansion", "migration", "upgrade")


@dataclass
class Seeded:
    """Gids of what :func:`seed` made."""

    workspace: str
    pipeline: str
    other_project: str
    bot: str
    users: dict[str, str] = field(default_factory=dict)
    """e-mail -> user gid"""
    tasks: list[str] = field(default_factory=list)


def seed(state: AsanaState, *, tasks: int = 0, rng_seed: int = 7) -> Seeded:
    """Populate ``state``: workspace, users, the pipeline project and ``tasks`` generated tasks."""
    rng = random.Random(rng_seed)  # noqa: S311 - reproducible demo data, not secrets
    with state.lock:
        # Seeded history happened over the last day, a second per change, so server time is
        # not pushed ahead of the clock by hundreds of changes in one millisecond.
        clock, tick = state.clock, iter(range(10**9))
        start = clock() - timedelta(days=1)
        state.clock = lambda: start + timedelta(seconds=next(tick))
        try:
            return _seed(state, rng, tasks)
        finally:
            state.clock = clock


def _seed(state: AsanaState, rng: random.Random, tasks: int) -> Seeded:
    ws = state.add_workspace(SPEC_EXAMPLES["workspace"])
    users = {SPEC_USER[1]: state.add_user(*SPEC_USER)}
    for name, email in _PEOPLE:
        users[email] = state.add_user(name, email)
    bot = state.add_user("Salesbridge Bot", "salesbridge@example.com")
    other = state.add_project(ws, SPEC_EXAMPLES["project"])
    state.add_section(other, SPEC_EXAMPLES["section"])
    pipeline = state.add_project(ws, "Sales pipeline")
    for name in SECTIONS:
        state.add_section(pipeline, name)
    for name, (kind, options) in FIELDS.items():
        precision = 0 if name == "Probability" else 2
        state.add_custom_field(
            ws, name, kind, options=options, precision=precision, projects=[pipeline]
        )
    # The spec's example options, on the unrelated project only.
    state.add_custom_field(ws, "Development priority", "enum", options=("Low", "High"))
    seeded = Seeded(ws, pipeline, other, bot, users)
    owners = [users[e] for _, e in _PEOPLE]
    for i in range(tasks):
        seeded.tasks.append(_task(state, seeded, rng, i, owners))
    return seeded


def _task(state: AsanaState, s: Seeded, rng: random.Random, i: int, owners: list[str]) -> str:
    f = {name: state.field_gid(name) for name in FIELDS}
    customer = rng.choice(_CUSTOMERS)
    section = state.section_gid(s.pipeline, rng.choice(SECTIONS))
    close = date(2026, 1, 1) + timedelta(days=rng.randrange(0, 365))
    values = {
        f["Customer"]: customer,
        f["Project number"]: f"SP-{1000 + i}",
        f["Amount"]: float(rng.randrange(5, 500) * 1000),
        f["Probability"]: float(rng.choice((10, 25, 50, 75, 90))),
        f["Close date"]: {"date": close.isoformat()},
        f["Priority"]: state.option_gid(f["Priority"], rng.choice(("Low", "Medium", "High"))),
        f["Outcome"]: state.option_gid(f["Outcome"], "Open"),
        f["Region"]: [state.option_gid(f["Region"], rng.choice(("APAC", "EMEA", "Americas")))],
        f["Team"]: rng.sample(owners, 2),
    }
    owner = rng.choice(owners)
    _, body = state.create_task(
        _query(
            owner,
            {
                "name": f"{customer} {rng.choice(_WHAT)}",
                "notes": "Generated by the Asana emulator's seed.",
                "memberships": [{"project": s.pipeline, "section": section}],
                "assignee": owner,
                "due_on": close.isoformat(),
                "custom_fields": values,
            },
        ),
        (),
    )
    gid = str(body["data"]["gid"])
    for title in ("Discovery call", "Send proposal")[: rng.randrange(0, 3)]:
        state.create_subtask(_query(owner, {"name": title, "assignee": owner}), (gid,))
    if rng.random() < 0.5:
        state.create_story(_query(owner, {"text": SPEC_EXAMPLES["story"]}), (gid,))
    return gid


def _query(user: str, data: dict[str, object]) -> Query:
    return Query({}, dict(data), user, "")


STAGE_FIELD = "Stage"
"""The project custom field (enum) holding a sales project's stage in the "projects" layout."""


@dataclass
class SeededProjects:
    """Gids of what :func:`seed_projects` made."""

    team: str
    projects: list[str] = field(default_factory=list)


def seed_projects(
    state: AsanaState, seeded: Seeded, *, projects: int = 0, rng_seed: int = 11
) -> SeededProjects:
    """A team whose ``projects`` projects are sales projects ("projects" layout), after
    :func:`seed` made the workspace, users and custom fields."""
    rng = random.Random(rng_seed)  # noqa: S311 - reproducible demo data, not secrets
    with state.lock:
        clock, tick = state.clock, iter(range(10**9))
        start = clock() - timedelta(hours=12)
        state.clock = lambda: start + timedelta(seconds=next(tick))
        try:
            team = state.add_team(seeded.workspace, "Customer projects")
            state.add_custom_field(seeded.workspace, STAGE_FIELD, "enum", options=SECTIONS)
            out = SeededProjects(team)
            owners = [seeded.users[e] for _, e in _PEOPLE]
            for i in range(projects):
                out.projects.append(_project(state, seeded, team, rng, i, owners))
            return out
        finally:
            state.clock = clock


def _project(
    state: AsanaState, s: Seeded, team: str, rng: random.Random, i: int, owners: list[str]
) -> str:
    names = [*FIELDS, STAGE_FIELD]
    f = {name: state.field_gid(name) for name in names}
    customer = rng.choice(_CUSTOMERS)
    close = date(2026, 1, 1) + timedelta(days=rng.randrange(0, 365))
    owner = rng.choice(owners)
    gid = state.add_project(s.workspace, f"{customer} {rng.choice(_WHAT)}", team=team)
    p = state.projects[gid]
    p["settings"] = [f[n] for n in names]
    p["notes"] = "Generated by the Asana emulator's seed."
    p["owner"] = owner
    p["due_on"] = close.isoformat()
    p["values"] = {
        f["Customer"]: customer,
        f["Project number"]: f"CP-{2000 + i}",
        f["Amount"]: float(rng.randrange(5, 500) * 1000),
        f["Probability"]: float(rng.choice((10, 25, 50, 75, 90))),
        f["Close date"]: close.isoformat(),  # stored values: dates as strings
        f["Priority"]: state.option_gid(f["Priority"], rng.choice(("Low", "Medium", "High"))),
        f["Outcome"]: state.option_gid(f["Outcome"], "Open"),
        f["Region"]: [state.option_gid(f["Region"], rng.choice(("APAC", "EMEA", "Americas")))],
        f["Team"]: rng.sample(owners, 2),
        f[STAGE_FIELD]: state.option_gid(f[STAGE_FIELD], rng.choice(SECTIONS)),
    }
    for title in ("Kick-off", "Design review", "Go-live")[: rng.randrange(0, 4)]:
        state.create_task(
            _query(
                owner,
                {"name": title, "assignee": owner, "memberships": [{"project": gid}]},
            ),
            (),
        )
    return gid
