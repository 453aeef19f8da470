"""Jira end to end: the sync engine between the Jira emulator and a memory CRM.

The CRM is the reference memory tool with the demo schema and ``mappings/memory.toml``; Jira
is the emulator (Cloud and Data Center) with the SALES project and ``mappings/jira.toml``
(creating every project). Everything runs for real: HTTP, the jira package, our HTTP layer,
a SQLite store; faults are injected by the emulator's controls.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bridge.demo import STAGE_NAMES, TOOL_FIELDS
from bridge.mapping import MappingSpec, parse_mapping
from bridge.store import Store
from bridge.sync import SyncEngine, SyncReport
from connectors.jira.emulator import JiraEmulator
from connectors.memory import MemoryBackend, MemoryConfig, MemoryConnector
from tests.test_jira_connector import ALICE, make_connector, make_emulator

REPO = Path(__file__).resolve().parent.parent


class Bridge:
    """A memory CRM and the Jira emulator, wired to one store the way ``bridge.runtime`` does."""

    def __init__(self, em: JiraEmulator, db: Path, *, jira_mapping: str | None = None,
                 jql: str = "project = SALES", **jira_settings: Any) -> None:  # fmt: skip
        self.em = em
        self.crm_backend = MemoryBackend()
        crm_config = MemoryConfig(fields=dict(TOOL_FIELDS), stage_values=list(STAGE_NAMES.values()))
        self.crm = MemoryConnector("crm", crm_config, backend=self.crm_backend)
        self.jira = make_connector(em, jql=jql, page_size=50, **jira_settings)
        memory_text = (REPO / "mappings" / "memory.toml").read_text(encoding="utf-8")
        if jira_mapping is None:
            jira_mapping = (REPO / "mappings" / "jira.toml").read_text(encoding="utf-8")
            jira_mapping = jira_mapping.replace("[sync]\n", '[sync]\ncreate_in_tool = "all"\n', 1)
        self.specs: dict[str, MappingSpec] = {
            "crm": parse_mapping(memory_text, schema=self.crm.discover(), connector="memory"),
            "jira": parse_mapping(jira_mapping, schema=self.jira.discover(), connector="jira"),
        }
        self.jira.request_fields(self.specs["jira"].remote_fields_needed)
        self.store = Store.open(f"sqlite:///{db}")
        self.engine = SyncEngine(
            self.store,
            {"crm": self.crm, "jira": self.jira},  # type: ignore[dict-item]
            self.specs,
            clock=lambda: datetime.now(UTC),
        )

    def sync(self, **options: Any) -> SyncReport:
        return self.engine.run(**options)

    def close(self) -> None:
        self.store.close()
        self.jira.close()

    # -- the tools in canonical terms

    def add_crm(self, **values: Any) -> str:
        canonical = {"stage": "lead", "customer.name": "Acme"}
        canonical.update({k.replace("__", "."): v for k, v in values.items()})
        return self.crm_backend.add(self.specs["crm"].to_remote(canonical), actor="li.wei")

    def edit_crm(self, ref: str, **values: Any) -> None:
        changes = {k.replace("__", "."): v for k, v in values.items()}
        self.crm_backend.edit(ref, self.specs["crm"].to_remote(changes), actor="li.wei")

    def crm_values(self, ref: str) -> dict[str, Any]:
        record = self.crm.get(ref)
        assert record is not None
        return self.specs["crm"].to_canonical(record)

    def jira_values(self, key: str) -> dict[str, Any]:
        record = self.jira.get(key)
        assert record is not None
        return self.specs["jira"].to_canonical(record)

    def jira_key(self, project_id: str) -> str:
        refs = [lk.ref for lk in self.store.links_for_project(project_id) if lk.connector == "jira"]
        assert len(refs) == 1, f"{project_id} has {len(refs)} Jira issues"
        return refs[0]

    def project_of(self, connector: str, ref: str) -> str:
        link = self.store.get_link(connector, ref)
        assert link is not None and link.live
        return link.project_id

    def stamped(self) -> dict[str, list[str]]:
        """Jira issues by the stamp they carry: a duplicate create shows as two keys."""
        out: dict[str, list[str]] = {}
        keys = self.em.keys()
        for key in keys:
            stamp = self.em.issue(key)["fields"].get(self.specs["jira"].sync.stamp_field or "")
            if stamp:
                out.setdefault(stamp, []).append(key)
        return out


@pytest.fixture(params=["cloud", "dc"])
def bridge(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Bridge]:
    with make_emulator(request.param) as em:
        b = Bridge(em, tmp_path / "store.db")
        try:
            yield b
        finally:
            b.close()


def assert_ok(report: SyncReport) -> None:
    assert report.ok, {n: (r.status, r.error) for n, r in report.connectors.items()}


ALICE_PERSON = {"name": "Alice Chen", "email": "alice@example.com"}


def new_deal(b: Bridge, name: str = "Acme rollout", **values: Any) -> str:
    return b.add_crm(
        name=name,
        stage=values.pop("stage", "proposal"),
        amount={"amount": "1200.50", "currency": "USD"},
        owner=ALICE_PERSON,
        expected_close_date="2026-12-31",
        description="Needs **SSO** and an audit log.\n\n- phase 1\n- phase 2",
        **values,
    )


# --------------------------------------------------------------------------- the happy path


def test_create_update_and_stage_change_flow_both_ways(bridge: Bridge) -> None:
    b = bridge
    ref = new_deal(b)
    assert_ok(b.sync())
    pid = b.project_of("crm", ref)
    key = b.jira_key(pid)
    issue = b.em.issue(key)["fields"]
    assert issue["summary"] == "Acme rollout"
    assert issue["status"]["name"] == "Proposal", "Lead -> Qualification -> Proposal"
    assert b.stamped() == {pid: [key]}
    values = b.jira_values(key)
    assert values["amount"] == {"amount": "1200.5", "currency": "USD"}
    assert values["owner"] == ALICE_PERSON
    assert values["description"] == "Needs **SSO** and an audit log.\n\n- phase 1\n- phase 2"

    # converged: another run writes nothing anywhere
    writes = b.em.controls.count("POST") + b.em.controls.count("PUT")
    report = b.sync()
    assert_ok(report)
    assert writes == b.em.controls.count("POST") + b.em.controls.count("PUT")
    assert not report.connectors["jira"].counts["pushed"]
    assert not report.connectors["crm"].counts["pushed"]

    # edited in Jira -> the CRM follows
    b.em.edit_issue(key, {"summary": "Acme rollout, phase 2", "Amount": 1500}, author=ALICE)
    assert_ok(b.sync())
    assert b.crm_values(ref)["name"] == "Acme rollout, phase 2"
    assert b.crm_values(ref)["amount"] == {"amount": "1500", "currency": "USD"}

    # stage changed in the CRM -> Jira runs the transitions; signing needs Close date on
    # its screen, which the issue already holds
    b.edit_crm(ref, stage="signing")
    assert_ok(b.sync())
    assert b.em.issue(key)["fields"]["status"]["name"] == "Signing"
    record = b.jira.get(key)
    assert record is not None
    moves = [(h.old, h.new) for h in record.history if h.field == "status"]
    assert moves[-2:] == [("Proposal", "Negotiation"), ("Negotiation", "Signing")]

    # stage changed in Jira -> the CRM follows, with the person who did it
    b.em.transition(key, "Delivery", author=ALICE)
    assert_ok(b.sync())
    assert b.crm_values(ref)["stage"] == "delivery"
    project = b.store.get_project(pid)
    assert project is not None
    assert project["last_meaningful_update_by"] == "alice@example.com"


def test_a_project_born_in_jira_reaches_the_crm(bridge: Bridge) -> None:
    b = bridge
    key = b.em.add_issue(
        "SALES", {"summary": "Born in Jira", "Customer": "Globex", "Amount": 99}, author=ALICE
    )
    assert_ok(b.sync())
    pid = b.project_of("jira", key)
    (crm_ref,) = [lk.ref for lk in b.store.links_for_project(pid) if lk.connector == "crm"]
    assert b.crm_values(crm_ref)["customer.name"] == "Globex"
    assert b.stamped() == {}, "an issue made by a person is linked, not stamped"


def test_a_conflicting_edit_is_recorded_and_converges(bridge: Bridge) -> None:
    b = bridge
    ref = new_deal(b)
    assert_ok(b.sync())
    key = b.jira_key(b.project_of("crm", ref))
    b.edit_crm(ref, name="Acme (CRM)")
    b.em.edit_issue(key, {"summary": "Acme (Jira)"}, author=ALICE)  # the later change
    report = b.sync()
    assert_ok(report)
    assert (
        report.connectors["jira"].counts["conflicts"] + report.connectors["crm"].counts["conflicts"]
        == 1
    )
    (conflict,) = b.store.list_conflicts(False)
    assert conflict.field == "name"
    assert {conflict.hub_value, conflict.remote_value} == {"Acme (CRM)", "Acme (Jira)"}
    assert_ok(b.sync())
    winner = b.crm_values(ref)["name"]
    assert winner == b.jira_values(key)["name"], "both tools agree"
    assert winner in ("Acme (CRM)", "Acme (Jira)")


# --------------------------------------------------------------------------- faults


def test_a_429_storm_and_5xx_lose_nothing_and_duplicate_nothing(bridge: Bridge) -> None:
    b = bridge
    refs = [new_deal(b, f"deal {i}", stage="lead") for i in range(3)]
    # retried within the run: a throttled and failing search, throttled creates
    b.em.controls.fail(429, times=2, path="/rest/api/", method="GET")
    b.em.controls.fail(503, times=1, path="/rest/api/", method="GET")
    b.em.controls.fail(429, times=2, path="/rest/api/", method="POST")
    assert_ok(b.sync())
    stats = b.jira.counter.snapshot()
    assert stats.rate_limited == 4
    assert stats.by_class.get("5xx") == 1
    assert sorted(len(v) for v in b.stamped().values()) == [1, 1, 1]

    # a storm longer than the retries: the Jira side of the run fails, nothing is lost
    b.edit_crm(refs[0], amount={"amount": "2000", "currency": "USD"})
    b.em.controls.fail(429, times=None, path="/rest/api/")
    report = b.sync()
    assert report.connectors["jira"].status == "failed"
    assert "429" in (report.connectors["jira"].error or "")
    b.em.controls.reset()
    assert_ok(b.sync())
    key = b.jira_key(b.project_of("crm", refs[0]))
    assert b.jira_values(key)["amount"] == {"amount": "2000", "currency": "USD"}

    # a 5xx on an edit is retried (PUT is idempotent); on a create it is not, and the next
    # run neither loses the project nor creates it twice
    b.edit_crm(refs[1], name="deal 1, renamed")
    b.em.controls.fail(503, times=1, path="/rest/api/", method="PUT")
    assert_ok(b.sync())
    assert b.jira_values(b.jira_key(b.project_of("crm", refs[1])))["name"] == "deal 1, renamed"
    late = new_deal(b, "late deal", stage="lead")
    b.em.controls.fail(502, times=1, path="/rest/api/", method="POST")
    report = b.sync()
    assert report.connectors["jira"].status == "failed"
    assert_ok(b.sync())
    assert b.stamped()[b.project_of("crm", late)] == [b.jira_key(b.project_of("crm", late))]
    assert sorted(len(v) for v in b.stamped().values()) == [1, 1, 1, 1]


def test_a_create_whose_link_was_never_committed_is_adopted_not_repeated(
    bridge: Bridge,
) -> None:
    """The issue exists in Jira with the project's stamp, but the run that created it died
    before committing the link (or its answer was lost): the next run must adopt it."""
    b = bridge
    ref = new_deal(b, stage="lead")
    assert_ok(b.sync(only=["crm"]))
    pid = b.project_of("crm", ref)
    project = b.store.get_project(pid)
    assert project is not None
    spec = b.specs["jira"]
    values = {p: v for p in spec.pushed_paths if (v := _get(project, p)) is not None}
    orphan = b.jira.create(spec.to_remote(values), stamp=pid)
    assert b.store.get_link("jira", orphan.ref) is None
    report = b.sync()
    assert_ok(report)
    assert b.stamped() == {pid: [orphan.ref]}, "adopted by its stamp, not created again"
    assert b.jira_key(pid) == orphan.ref


def test_a_create_whose_answer_is_lost_is_adopted_not_repeated(bridge: Bridge) -> None:
    """Jira applies the create, the answer comes too late: our POST is not retried (it may
    have been applied), and the next run finds the issue by its stamp."""
    b = bridge
    b.jira.config = b.jira.config.model_copy(update={"timeout": 0.5})
    b.jira.close()  # the next call builds its HTTP client with the short timeout
    ref = new_deal(b, stage="lead")
    api = "3" if b.em.mode == "cloud" else "2"
    b.em.controls.delay(1.5, path=f"/rest/api/{api}/issue", method="POST", after=True)
    report = b.sync()
    assert report.connectors["jira"].status == "failed"
    assert "not retried" in (report.connectors["jira"].error or "")
    b.em.controls.reset()
    pid = b.project_of("crm", ref)
    assert list(b.stamped()) == [pid], "the create was applied"
    assert b.store.get_link("jira", b.stamped()[pid][0]) is None, "but never linked"
    assert_ok(b.sync())
    assert b.stamped() == {pid: [b.jira_key(pid)]}, "adopted by its stamp, not created again"


def _get(project: dict[str, Any], path: str) -> Any:
    from bridge.model import get_path

    return get_path(project, path)


def test_an_expired_token_is_a_clear_error_and_changes_nothing(bridge: Bridge) -> None:
    b = bridge
    ref = new_deal(b)
    assert_ok(b.sync())
    before = b.em.controls.count("PUT") + b.em.controls.count("POST")
    cursor = b.store.get_cursor("jira")
    b.edit_crm(ref, name="changed while the token expired")
    b.jira.close()
    b.jira._environ = {
        "JIRA_TOKEN": "expired-token-7f3a9c"
    }  # never a plain word: secrets are redacted process-wide
    report = b.sync()
    jira = report.connectors["jira"]
    assert jira.status == "failed"
    assert "401" in (jira.error or "") and "credentials" in (jira.error or "")
    assert b.em.controls.count("PUT") + b.em.controls.count("POST") == before
    assert b.store.get_cursor("jira") == cursor
    assert report.connectors["crm"].status == "ok"
    # with a good token again, the change goes through
    b.jira.close()
    b.jira._environ = {"JIRA_TOKEN": "emulator-token"}
    assert_ok(b.sync())
    key = b.jira_key(b.project_of("crm", ref))
    assert b.jira_values(key)["name"] == "changed while the token expired"


def test_a_malformed_issue_is_quarantined_and_the_cycle_goes_on(bridge: Bridge) -> None:
    b = bridge
    good = b.em.add_issue("SALES", {"summary": "good one", "Customer": "Acme"}, author=ALICE)
    bad = b.em.add_issue("SALES", {"summary": "bad one", "Customer": "Acme"}, author=ALICE)
    b.em._issues[b.em._by_key[bad]].fields["updated"] = "not a time"
    report = b.sync()
    assert_ok(report)
    assert report.connectors["jira"].counts["quarantined"] == 1
    (entry,) = b.store.list_quarantine()
    assert (entry.connector, entry.ref) == ("jira", bad)
    assert "updated" in entry.reason
    assert b.store.get_link("jira", good) is not None
    assert b.store.get_link("jira", bad) is None


# --------------------------------------------------------------------------- real data


DEVLAKE_MAPPING = """
connector = "jira"
version = 1

[fields.name]
remote = "summary"
direction = "pull"

[fields.stage]
remote = "status"
type = "enum"
direction = "pull"
default = "qualification"

[fields.stage.values]
"To Do" = "lead"
"In Progress" = "proposal"
"Closed" = "delivery"
"已完成" = "delivery"

[fields.owner]
remote = "assignee"
type = "user"
direction = "pull"
"""
STAGE_OF = {"To Do": "lead", "In Progress": "proposal", "Closed": "delivery", "已完成": "delivery"}


def devlake_changelogs(shared: Path) -> dict[str, list[tuple[datetime, str, str]]]:
    """Status changes per issue key, read straight from DevLake's CSV (the test's oracle)."""
    path = shared / "samples" / "jira" / "devlake-raw-tables" / "_raw_jira_api_issues.csv"
    csv.field_size_limit(1 << 26)
    out: dict[str, list[tuple[datetime, str, str]]] = {}
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            issue = json.loads(row["data"])
            moves = [
                (datetime.fromisoformat(h["created"]), i["fromString"], i["toString"])
                for h in issue["changelog"]["histories"]
                for i in h["items"]
                if i["field"] == "status"
            ]
            out[issue["key"]] = sorted(moves)
    return out


@pytest.fixture(params=["cloud", "dc"])
def devlake(request: pytest.FixtureRequest, tmp_path: Path, shared_dir: Path) -> Iterator[Bridge]:
    em = JiraEmulator(request.param)
    em.load_devlake(shared_dir / "samples" / "jira" / "devlake-raw-tables")
    with em:
        b = Bridge(em, tmp_path / "store.db", jira_mapping=DEVLAKE_MAPPING,
                   jql="project in (EE, K5)", stamp_field="no such field")  # fmt: skip
        try:
            yield b
        finally:
            b.close()


def test_the_devlake_issues_become_projects_with_their_stage_history(
    devlake: Bridge, shared_dir: Path
) -> None:
    b = devlake
    oracle = devlake_changelogs(shared_dir)
    assert len(oracle) == 33
    report = b.sync()
    assert_ok(report)
    assert report.connectors["jira"].counts["quarantined"] == 0
    for key, moves in oracle.items():
        pid = b.project_of("jira", key)
        project = b.store.get_project(pid)
        assert project is not None
        status = b.em.issue(key)["fields"]["status"]["name"]
        assert project["stage"] == STAGE_OF.get(status, "qualification"), key
        record = b.jira.get(key)
        assert record is not None
        got = [(h.at, h.old, h.new) for h in record.history if h.field == "status"]
        assert got == moves, f"{key}: the changelog's status changes with their own times"
    # every issue reached the CRM too (its mapping creates all projects)
    assert len(b.store.links_for_connector("crm")) == len(b.store.links_for_connector("jira"))


def test_the_event_log_holds_the_changelogs_stage_history(
    devlake: Bridge, shared_dir: Path
) -> None:
    b = devlake
    oracle = devlake_changelogs(shared_dir)
    assert_ok(b.sync())
    for key, moves in oracle.items():
        if not moves:
            continue
        pid = b.project_of("jira", key)
        events = [(e.at, e.new) for e in b.store.events_for(pid) if e.field == "stage"]
        expected = [(at, STAGE_OF.get(new, "qualification")) for at, _old, new in moves]
        assert [at for at, _ in events] == [at for at, _ in expected], key
