"""The Asana connector's "projects" layout (an Asana project per sales project) on the emulator,
and the automatic fallback from events to ``modified_since`` in both layouts."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bridge.errors import SkippableRecord
from bridge.sync import SyncReport
from connectors.asana.connector import AsanaConfig, AsanaConnector
from connectors.base import Connector, Cursor, Page
from tests.contract import ConnectorContract, new_stamp
from tests.test_asana_support import HUMAN, AsanaWorld, world
from tests.test_asana_sync import Duo

OWNER = {"id": None, "name": "Li Wei", "email": HUMAN, "username": None}
EVENTS = "/api/1.0/events"


class TestAsanaProjectsLayout(ConnectorContract):
    kind = "asana"
    editable_field = "Name"
    editable_values = ("Acme rollout", "Acme rollout, phase 2")
    supports_archive = True
    unknown_ref = "1999999999999999"

    @pytest.fixture
    def asana(self) -> Iterator[AsanaWorld]:
        yield from world(projects=2)

    @pytest.fixture
    def connector(self, asana: AsanaWorld) -> Iterator[Connector[Any]]:
        with asana.projects_connector(page_size=3) as connector:
            yield connector

    def sample_fields(self) -> dict[str, Any]:
        return {
            "Name": "Acme rollout",
            "Stage": "Proposal",
            "Notes": "From the CRM",
            "Amount": 1200.5,
            "Priority": "High",
            "Region": ["APAC", "EMEA"],
            "Close date": "2026-03-31",
            "Due date": "2026-04-30",
            "Team": [HUMAN],
            "Owner": OWNER,
            "Tasks": [
                {"title": "Kick-off", "done": True, "due": "2026-01-10", "owner": None},
                {"title": "Go-live", "done": False, "due": None, "owner": None},
            ],
        }

    def remote_edit(self, connector: Connector[Any], ref: str, fields: Mapping[str, Any]) -> None:
        assert isinstance(connector, AsanaConnector)
        with AsanaConnector("li", connector.config, token="li-pat-0123456789") as person:
            person.update(ref, fields, expected_version=None)

    def assert_fields_match(self, sent: Mapping[str, Any], got: Mapping[str, Any]) -> None:
        for key, value in sent.items():
            if key == "Owner":
                assert got[key]["email"] == value["email"]
            else:
                assert got.get(key) == value, f"{key}: sent {value!r}, got {got.get(key)!r}"


# --------------------------------------------------------------------------- helpers


def pull_all(
    connector: AsanaConnector, cursor: Cursor, *, full: bool = False
) -> tuple[list[Page], Cursor]:
    pages = list(connector.pull(cursor, signpost=datetime.now(UTC), full=full))
    for p in pages:
        cursor = p.cursor or cursor
    return pages, cursor


def records(pages: list[Page]) -> dict[str, Any]:
    return {r.ref: r for p in pages for r in p.records}


@pytest.fixture
def asana() -> Iterator[AsanaWorld]:
    yield from world(tasks=3, projects=4)


def team_projects(asana: AsanaWorld) -> list[str]:
    assert asana.team is not None
    return asana.team.projects


# --------------------------------------------------------------------------- config


def test_each_layout_names_what_it_needs() -> None:
    base = {"kind": "asana", "token": "env:T", "workspace": "1"}
    assert AsanaConfig.model_validate({**base, "project": "2"}).layout == "tasks"
    with pytest.raises(ValueError, match='layout "tasks" needs project'):
        AsanaConfig.model_validate(base)
    cfg = AsanaConfig.model_validate({**base, "layout": "projects", "team": "3"})
    assert (cfg.layout, cfg.team, cfg.project) == ("projects", "3", None)
    with pytest.raises(ValueError, match="drop project"):
        AsanaConfig.model_validate({**base, "layout": "projects", "project": "2"})


# --------------------------------------------------------------------------- reading


def test_a_project_is_a_record_with_its_tasks_and_custom_fields(asana: AsanaWorld) -> None:
    c = asana.projects_connector()
    assert "projects of team 'Customer projects'" in c.check()
    schema = c.discover()
    assert schema.stages == ("Leads", "Qualified", "Proposal", "Negotiation", "Signed", "Delivery")
    assert {"Owner", "Tasks", "Stage", "Amount"} <= {f.id for f in schema.fields}
    pages, _ = pull_all(c, Cursor())
    got = records(pages)
    assert set(got) == set(team_projects(asana))  # neither the pipeline nor "Stuff to buy"
    gid = team_projects(asana)[1]
    st = asana.state
    rec = got[gid]
    assert rec.fields["Name"] == st.projects[gid]["name"]
    assert rec.fields["Stage"] in schema.stages
    assert rec.fields["Owner"]["email"] == st.users[st.projects[gid]["owner"]]["email"]
    assert [t["title"] for t in rec.fields["Tasks"]] == [
        st.tasks[t]["name"] for t in st.projects[gid]["tasks"]
    ]
    assert rec.fields["Due date"] == st.projects[gid]["due_on"]


def test_a_census_and_a_quiet_pull_cost(asana: AsanaWorld) -> None:
    """4 projects: 1 listing + 4 events (412: a token each) + 1 batch of projects + 1 batch of
    their tasks; then a quiet pull is the listing and one events request per project."""
    c = asana.projects_connector()
    controls = asana.emulator.controls
    controls.reset()
    _, cursor = pull_all(c, Cursor())
    assert controls.count("GET", EVENTS, status=412) == 4
    assert controls.count("GET", "/api/1.0/teams") == 1
    assert controls.count("POST", "/api/1.0/batch") == 2
    assert controls.count() == 7
    controls.reset()
    pages, again = pull_all(c, cursor)
    assert not [r for p in pages for r in p.records]
    assert controls.count() == 5 == 1 + controls.count("GET", EVENTS, status=200)
    assert set(again.positions) == set(team_projects(asana))


def test_changes_inside_a_project_are_seen_by_its_events(asana: AsanaWorld) -> None:
    c, person = (
        asana.projects_connector(),
        asana.projects_connector("li", token="li-pat-0123456789"),
    )
    _, cursor = pull_all(c, Cursor())
    edited, tasked, other = team_projects(asana)[:3]
    person.update(edited, {"Stage": "Signed", "Amount": 99.0}, expected_version=None)
    user = asana.seeded.users[HUMAN]
    asana.emulator.request(
        "POST", "/tasks", user=user, data={"name": "Security review", "projects": [tasked]}
    )
    pages, cursor = pull_all(c, cursor)
    got = records(pages)
    assert set(got) == {edited, tasked}
    assert (got[edited].fields["Stage"], got[edited].fields["Amount"]) == ("Signed", 99.0)
    assert "Security review" in [t["title"] for t in got[tasked].fields["Tasks"]]
    assert other not in got


def test_new_and_archived_projects(asana: AsanaWorld) -> None:
    c = asana.projects_connector()
    _, cursor = pull_all(c, Cursor())
    assert asana.team is not None
    user = asana.seeded.users[HUMAN]
    new = asana.emulator.request(
        "POST",
        "/projects",
        user=user,
        data={"workspace": asana.seeded.workspace, "team": asana.team.team, "name": "Hooli"},
    )["data"]["gid"]
    gone = team_projects(asana)[0]
    asana.emulator.request("PUT", f"/projects/{gone}", user=user, data={"archived": True})
    pages, cursor = pull_all(c, cursor)
    got = records(pages)
    assert set(got) == {new, gone}
    assert got[gone].deleted and not got[new].deleted
    assert got[new].fields["Name"] == "Hooli"
    assert gone not in cursor.positions and new in cursor.positions


def test_a_name_prefix_chooses_the_workspace_projects(asana: AsanaWorld) -> None:
    c = asana.projects_connector(team=None, project_prefix="SP: ")
    rec = c.create({"Name": "Initech pilot", "Stage": "Leads"}, stamp=new_stamp())
    assert asana.state.projects[rec.ref]["name"] == "SP: Initech pilot"
    assert rec.fields["Name"] == "Initech pilot"
    pages, _ = pull_all(c, Cursor(), full=True)
    assert set(records(pages)) == {rec.ref}  # the team's projects are not named "SP: ..."


def test_tasks_are_written_by_title(asana: AsanaWorld) -> None:
    c = asana.projects_connector()
    rec = c.create(
        {
            "Name": "Globex",
            "Tasks": [
                {"title": "Demo", "done": False, "due": None, "owner": None},
                {"title": "Quote", "done": False, "due": None, "owner": None},
            ],
        },
        stamp=new_stamp(),
    )
    after = c.update(
        rec.ref,
        {
            "Tasks": [
                {"title": "Demo", "done": True, "due": "2026-02-01", "owner": {"email": HUMAN}},
                {"title": "Contract", "done": False, "due": None, "owner": None},
            ]
        },
        expected_version=rec.version,
    )
    assert [(t["title"], t["done"], t["due"]) for t in after.fields["Tasks"]] == [
        ("Demo", True, "2026-02-01"),
        ("Contract", False, None),
    ]
    assert after.fields["Tasks"][0]["owner"]["email"] == HUMAN
    assert after.version != rec.version


def test_writes_the_workspace_cannot_hold_are_refused_per_record(asana: AsanaWorld) -> None:
    c = asana.projects_connector()
    ref = team_projects(asana)[0]
    with pytest.raises(SkippableRecord, match="not an option"):
        c.update(ref, {"Stage": "Blocked"}, expected_version=None)
    with pytest.raises(SkippableRecord, match="not a field"):
        c.update(ref, {"Section": "Leads"}, expected_version=None)


def test_modified_since_mode_never_asks_for_events(asana: AsanaWorld) -> None:
    c = asana.projects_connector(incremental="modified_since")
    person = asana.projects_connector("li", token="li-pat-0123456789")
    _, cursor = pull_all(c, Cursor())
    ref = team_projects(asana)[2]
    person.update(ref, {"Name": "Renamed"}, expected_version=None)
    pages, _ = pull_all(c, cursor)
    assert set(records(pages)) == {ref}
    assert asana.emulator.controls.count("GET", EVENTS) == 0


# --------------------------------------------------------------------------- automatic fallback


def test_events_refused_for_a_project_fall_back_to_modified_since(
    asana: AsanaWorld, caplog: pytest.LogCaptureFixture
) -> None:
    c = asana.projects_connector()
    person = asana.projects_connector("li", token="li-pat-0123456789")
    _, cursor = pull_all(c, Cursor())
    edited, tasked = team_projects(asana)[:2]
    person.update(edited, {"Amount": 7.0}, expected_version=None)
    user = asana.seeded.users[HUMAN]
    task = asana.state.projects[tasked]["tasks"][0]
    asana.emulator.request("PUT", f"/tasks/{task}", user=user, data={"completed": True})
    asana.emulator.controls.fail(403, times=None, path=EVENTS)
    with caplog.at_level(logging.WARNING, logger="salesbridge.asana"):
        pages, cursor = pull_all(c, cursor)
    got = records(pages)
    assert set(got) == {edited, tasked}  # the project's own change, and a task's
    assert got[edited].fields["Amount"] == 7.0
    assert "modified_since" in caplog.text and "403" in caplog.text
    assert len(c.fallbacks) == 1
    listing = [e for e in asana.emulator.controls.log if e.path.endswith("/batch")]
    assert listing  # the modified_since checks went through the batch API
    # healed: the next pull asks for fresh tokens and reads what changed since the fallback
    asana.emulator.controls.reset()
    person.update(edited, {"Amount": 8.0}, expected_version=None)
    pages, _ = pull_all(c, cursor)
    healed = records(pages)
    assert healed[edited].fields["Amount"] == 8.0
    for ref, rec in healed.items():  # the overlap may read a change of the last second again
        assert ref == edited or rec.version == got[ref].version
    assert asana.emulator.controls.count("GET", EVENTS, status=412) == 4


def test_events_refused_in_the_tasks_layout_fall_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    for w in world(tasks=5):
        c, person = w.connector(), w.person()
        _, cursor = pull_all(c, Cursor())
        person.update(w.seeded.tasks[1], {"Name": "Renamed"}, expected_version=None)
        w.emulator.controls.fail(404, times=None, path=EVENTS)
        with caplog.at_level(logging.WARNING, logger="salesbridge.asana"):
            pages, cursor = pull_all(c, cursor)
        got = records(pages)
        assert got[w.seeded.tasks[1]].fields["Name"] == "Renamed"
        assert "404" in caplog.text and "modified_since" in caplog.text
        listing = [e for e in w.emulator.controls.log if e.path == "/api/1.0/tasks"]
        assert "modified_since" in dict(listing[-1].params)


def test_a_412_loop_falls_back_to_modified_since_instead_of_a_census(
    caplog: pytest.LogCaptureFixture,
) -> None:
    for w in world(tasks=5, fallback_after_412s=2):
        c, person = w.connector(), w.person()
        _, cursor = pull_all(c, Cursor())
        w.state.expire_sync_tokens()
        pages, cursor = pull_all(c, cursor)  # first 412: a census, as always
        assert len(records(pages)) == 5
        w.state.expire_sync_tokens()
        person.update(w.seeded.tasks[3], {"Name": "Renamed"}, expected_version=None)
        w.emulator.controls.reset()
        with caplog.at_level(logging.WARNING, logger="salesbridge.asana"):
            pages, cursor = pull_all(c, cursor)  # the second in a row: modified_since
        assert set(records(pages)) == {w.seeded.tasks[3]}
        assert "412" in caplog.text and "2 pulls in a row" in caplog.text
        listing = [e for e in w.emulator.controls.log if e.path == "/api/1.0/tasks"]
        assert "modified_since" in dict(listing[0].params)
        w.emulator.controls.reset()
        pages, _ = pull_all(c, cursor)  # the 412 brought a token: events again
        assert [p.records for p in pages] == [[]]
        assert w.emulator.controls.count() == 1


# --------------------------------------------------------------------------- end to end


PROJECTS_MAPPING = Path(__file__).resolve().parent.parent / "mappings" / "asana-projects.toml"
USD = {"amount": "1200", "currency": "USD"}


@pytest.fixture
def duo(tmp_path: Path) -> Iterator[Duo]:
    for w in world(projects=2):
        d = Duo(
            f"sqlite:///{tmp_path / 'store.db'}", w, mapping=PROJECTS_MAPPING, layout="projects"
        )
        yield d
        d.close()


def ok(report: SyncReport) -> SyncReport:
    assert report.ok, {n: r.error for n, r in report.connectors.items()}
    return report


def test_sync_projects_both_ways_through_the_engine(duo: Duo) -> None:
    st = duo.asana.state
    assert duo.asana.team is not None
    seeded = duo.asana.team.projects
    ref = duo.crm_add(name="Acme rollout", stage="proposal", amount=USD, priority="high",
                      owner={"name": "Li Wei", "email": HUMAN})  # fmt: skip
    ok(duo.sync())
    # the CRM's project is an Asana project in the team, stamped, with its stage as "Stage"
    project = duo.twin("crm", ref, "asana")
    assert st.projects[project]["team"] == duo.asana.team.team
    got = duo.asana_values(project)
    assert (got["name"], got["stage"], got["priority"]) == ("Acme rollout", "proposal", "high")
    assert got["amount"] == USD and got["owner"]["email"] == HUMAN
    record = duo.tool.get(project)
    assert record is not None and record.stamp == duo.project_of("crm", ref)
    # Asana's own projects reached the CRM, with their tasks in the hub
    for gid in seeded:
        crm = duo.crm_values(duo.twin("asana", gid, "crm"))
        assert crm["name"] == st.projects[gid]["name"]
        hub = duo.store.get_project(duo.project_of("asana", gid))
        assert hub is not None
        assert [t["title"] for t in hub["tasks"]] == [
            st.tasks[t]["name"] for t in st.projects[gid]["tasks"]
        ]
    ok(duo.sync())
    duo.assert_converged()

    # a stage change in Asana (the project's Stage field) and a new task reach the CRM
    duo.asana_edit(project, Stage="Negotiation")
    user = duo.asana.seeded.users[HUMAN]
    duo.asana.emulator.request(
        "POST", "/tasks", user=user, data={"name": "Legal review", "projects": [project]}
    )
    ok(duo.sync())
    assert duo.crm_values(ref)["stage"] == "negotiation"
    hub = duo.store.get_project(duo.project_of("crm", ref))
    assert hub is not None and [t["title"] for t in hub["tasks"]] == ["Legal review"]
    # a stage change in the CRM moves the Asana project's Stage
    duo.crm_edit(ref, stage="signing")
    ok(duo.sync())
    stage = st.field_gid("Stage")
    assert st.projects[project]["values"][stage] == st.option_gid(stage, "Signed")
    ok(duo.sync())
    duo.assert_converged()

    # a quiet cycle: the team listing and one events request per project, nothing read
    controls = duo.asana.emulator.controls
    controls.reset()
    ok(duo.sync())
    assert controls.count() == 1 + 3
    assert controls.count("GET", "/api/1.0/events") == 3


def test_webhook_deliveries_name_projects_and_registration_is_refused(asana: AsanaWorld) -> None:
    from bridge.errors import FatalError
    from connectors.asana.emulator import sign

    c = asana.projects_connector()
    c.webhook_secrets = ("s3cret",)
    gid, task = team_projects(asana)[1], "1999"
    event = {
        "action": "changed",
        "resource": {"gid": task, "resource_type": "task"},
        "parent": {"gid": gid, "resource_type": "project"},
    }
    body = json.dumps({"events": [event]}).encode()
    refs = c.verify_webhook({"x-hook-signature": sign("s3cret", body)}, body, "https://x/")
    assert refs == [gid]
    with pytest.raises(FatalError, match="one webhook per project"):
        c.register_webhook("https://example.com/webhooks/asana")
