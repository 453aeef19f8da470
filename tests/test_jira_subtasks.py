"""Sub-tasks read as the parent's tasks or deliverables reach the hub at the next incremental
pull, not only at the next census.

Jira stamps ``updated`` on the sub-task a person changes, never on its parent, so the parent
does not match ``updated >= <cursor>``. With ``subtasks_as`` set, an incremental pull also asks
for the sub-tasks updated in its window (``issuetype in subTaskIssueTypes()``), re-reads the
parents of those whose parent is not in the same page (``(<jql>) AND key in (...)``, which keeps
the configured scope), and yields the parents; a sub-task is never a record of its own.
Everything runs over real HTTP against the emulator.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bridge.sync import SyncReport
from connectors.base import Cursor, RemoteRecord
from connectors.jira.connector import JiraConnector, _project_clause
from connectors.jira.emulator import JiraEmulator, JqlError
from connectors.jira.seed import add_sales_project
from tests.test_jira_connector import ALICE, make_connector, make_emulator, pull_all
from tests.test_jira_e2e import REPO, Bridge

SCOPED = 'project = SALES AND issuetype = "Sales Project"'


class Clock:
    """The emulator's clock: a day ago, moved on by hand, so that a change can be made long
    after the cursor's overlap window (the engine's signpost is the real time)."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)  # every write a distinct `updated`
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def emulator(mode: str, clock: Clock) -> JiraEmulator:
    em = JiraEmulator(mode, clock=clock)  # type: ignore[arg-type]
    em.add_user(ALICE)
    add_sales_project(em)
    em.add_subtask_type("SALES")
    return em


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["cloud", "dc"])
def em(request: pytest.FixtureRequest, clock: Clock) -> Iterator[JiraEmulator]:
    with emulator(request.param, clock) as em:
        yield em


def search_path(em: JiraEmulator) -> str:
    return "/rest/api/3/search/jql" if em.mode == "cloud" else "/rest/api/2/search"


def deal_with_deliverables(em: JiraEmulator, summary: str = "Acme rollout") -> tuple[str, str]:
    """A sales project with two sub-tasks; returns (parent key, first sub-task key)."""
    key = em.add_issue("SALES", {"summary": summary, "Customer": "Acme"}, author=ALICE)
    first = em.add_issue("SALES", {"summary": "Proposal", "parent": key}, issue_type="Sub-task")
    em.add_issue("SALES", {"summary": "Contract", "parent": key}, issue_type="Sub-task")
    return key, first


def statuses(record: Any) -> dict[str, str]:
    return {d["title"]: d["status"] for d in record.fields["subtasks"]}


# --------------------------------------------------------------------------- the emulator


def test_a_sub_task_change_does_not_touch_its_parent(em: JiraEmulator) -> None:
    """As in Jira: an edit, a transition or a comment of a sub-task stamps the sub-task's
    ``updated`` and changelog only; the parent's stay as they were."""
    key, sub = deal_with_deliverables(em)
    before = em.issue(key)["fields"]
    em.edit_issue(sub, {"summary": "Proposal v2"}, author=ALICE)
    em.transition(sub, "Done", author=ALICE)
    after = em.issue(key)["fields"]
    assert after["updated"] == before["updated"]
    assert [s["fields"]["status"]["name"] for s in after["subtasks"]] == ["Done", "To Do"]
    assert em.issue(sub)["fields"]["updated"] >= before["updated"]


def test_sub_task_issue_type_functions(em: JiraEmulator) -> None:
    key, sub = deal_with_deliverables(em)
    subs = [i.key for i in em.search("issuetype in subTaskIssueTypes() ORDER BY key ASC")]
    std = {i.key for i in em.search("project = SALES AND issuetype in standardIssueTypes()")}
    assert sub in subs and key not in subs and len(subs) == 2
    assert key in std and sub not in std
    assert {i.key for i in em.search("project = SALES AND issuetype not in subTaskIssueTypes()")} \
        == std  # fmt: skip
    with pytest.raises(JqlError, match="nosuch"):
        em.search("issuetype in nosuchFunction()")


def test_sub_task_functions_are_refused_where_sub_tasks_are_disabled() -> None:
    with make_emulator("cloud") as plain, pytest.raises(JqlError, match="sub-tasks"):
        plain.search("project = SALES AND issuetype in subTaskIssueTypes()")


# --------------------------------------------------------------------------- the connector


def settled(em: JiraEmulator, clock: Clock, connector: JiraConnector) -> Cursor:
    """The cursor after a first pull and a later one that only saw a newer deal, an hour
    later: the issues made before lie far behind its overlap window, as on a quiet site."""
    _, cursor, _ = pull_all(connector)
    clock.advance(minutes=30)
    em.add_issue("SALES", {"summary": "a later deal"}, author=ALICE)
    _, cursor, _ = pull_all(connector, cursor)
    clock.advance(hours=1)
    return cursor


def changed(records: list[RemoteRecord], known: dict[str, str]) -> list[RemoteRecord]:
    """The records of a pull the engine would not drop (a version it does not know yet)."""
    return [r for r in records if known.get(r.ref) != r.version]


@pytest.mark.parametrize("shape", ["deliverables", "tasks"])
def test_a_sub_task_moved_to_done_is_pulled_at_the_next_incremental_pull(
    em: JiraEmulator, clock: Clock, shape: str
) -> None:
    key, sub = deal_with_deliverables(em)
    connector = make_connector(em, subtasks_as=shape, jql=SCOPED, page_size=100)
    record = connector.get(key)
    assert record is not None
    cursor = settled(em, clock, connector)
    em.transition(sub, "Done", author=ALICE)
    connector.counter.snapshot(reset=True)
    records, cursor, _ = pull_all(connector, cursor)
    assert connector.counter.snapshot().total == 2, "the search, then one re-read of parents"
    assert sub not in {r.ref for r in records}, "a sub-task is no record"
    (parent,) = [r for r in records if r.ref == key]
    assert parent.version != record.version, "a new version: the engine does not drop it"
    if shape == "deliverables":
        assert statuses(parent) == {"Proposal": "approved", "Contract": "missing"}
    else:
        assert parent.fields["subtasks"][0] == {"title": "Proposal", "done": True}
    assert parent.updated_at is not None and record.updated_at is not None
    assert parent.updated_at > record.updated_at, "the time of the sub-task's change"
    assert parent.updated_by == "alice@example.com", "who moved the sub-task"
    assert parent.version == connector.get(key).version  # type: ignore[union-attr]
    assert parent.version in {r.version for r in pull_all(connector, full=True)[0]}

    connector.counter.snapshot(reset=True)
    again, _, _ = pull_all(connector, cursor)
    assert changed(again, {r.ref: r.version for r in records}) == [], "re-read: as known"
    assert connector.counter.snapshot().total == 1, "the cursor knows the parent was read"


def test_before_the_fix_only_a_census_saw_it(em: JiraEmulator, clock: Clock) -> None:
    """What a pull without ``subtasks_as`` still does: the parent's ``updated`` did not move,
    so the incremental pull does not find it; only a full pull does."""
    key, sub = deal_with_deliverables(em)
    connector = make_connector(em, jql=SCOPED, page_size=100)
    cursor = settled(em, clock, connector)
    em.transition(sub, "Done", author=ALICE)
    records, _, _ = pull_all(connector, cursor)
    assert key not in {r.ref for r in records}
    assert key in {r.ref for r in pull_all(connector, full=True)[0]}


def test_a_quiet_incremental_pull_with_sub_tasks_costs_one_request(
    em: JiraEmulator, clock: Clock
) -> None:
    for i in range(3):
        deal_with_deliverables(em, f"deal {i}")
    connector = make_connector(em, subtasks_as="deliverables", jql=SCOPED, page_size=100)
    cursor = settled(em, clock, connector)
    connector.counter.snapshot(reset=True)
    searches = em.controls.count("GET", search_path(em))
    records, again, _ = pull_all(connector, cursor)
    assert connector.counter.snapshot().total == 1
    assert em.controls.count("GET", search_path(em)) == searches + 1
    assert again == cursor and [r.fields["summary"] for r in records] == ["a later deal"]


def test_a_parent_in_the_same_page_is_not_read_again(em: JiraEmulator, clock: Clock) -> None:
    key, sub = deal_with_deliverables(em)
    connector = make_connector(em, subtasks_as="deliverables", jql=SCOPED, page_size=100)
    cursor = settled(em, clock, connector)
    em.transition(sub, "Done", author=ALICE)
    em.edit_issue(key, {"summary": "Acme rollout, phase 2"}, author=ALICE)
    connector.counter.snapshot(reset=True)
    records, _, _ = pull_all(connector, cursor)
    assert connector.counter.snapshot().total == 1
    (parent,) = [r for r in records if r.ref == key]
    assert parent.fields["summary"] == "Acme rollout, phase 2"
    assert statuses(parent)["Proposal"] == "approved"


def test_a_sub_task_of_a_parent_outside_the_jql_yields_nothing(
    em: JiraEmulator, clock: Clock
) -> None:
    inside, _ = deal_with_deliverables(em, "in scope")
    outside = em.add_issue("SALES", {"summary": "a bug", "labels": ["other"]},
                           issue_type="Sales Project")  # fmt: skip
    stray = em.add_issue("SALES", {"summary": "Fix", "parent": outside}, issue_type="Sub-task")
    jql = SCOPED + " AND labels is EMPTY"
    connector = make_connector(em, subtasks_as="deliverables", jql=jql, page_size=100)
    records, _, _ = pull_all(connector)
    assert [r.ref for r in records] == [inside]
    cursor = settled(em, clock, connector)
    em.transition(stray, "Done", author=ALICE)
    connector.counter.snapshot(reset=True)
    records, after, _ = pull_all(connector, cursor)
    assert [r.fields["summary"] for r in records] == ["a later deal"], "no bug, no sub-task"
    assert connector.counter.snapshot().total == 2, "its parent was looked for, not found"
    at = datetime.fromisoformat(str(after.get("")))
    assert at > datetime.fromisoformat(str(cursor.get(""))), "past the stray sub-task"
    records, _, _ = pull_all(connector, after)
    assert outside not in {r.ref for r in records}


def test_sub_tasks_are_never_records_of_their_own(em: JiraEmulator, clock: Clock) -> None:
    """Even with a JQL that selects them (``project = SALES``): they are their parent's."""
    key, sub = deal_with_deliverables(em)
    connector = make_connector(em, subtasks_as="deliverables", page_size=100)
    records, _, _ = pull_all(connector, full=True)
    assert [r.ref for r in records] == [key]
    cursor = settled(em, clock, connector)
    em.transition(sub, "Done", author=ALICE)
    records, _, _ = pull_all(connector, cursor)
    assert sub not in {r.ref for r in records} and key in {r.ref for r in records}


def test_the_cursor_moves_past_the_sub_tasks_read(em: JiraEmulator, clock: Clock) -> None:
    _, sub = deal_with_deliverables(em)
    connector = make_connector(em, subtasks_as="deliverables", jql=SCOPED, page_size=100)
    cursor = settled(em, clock, connector)
    em.transition(sub, "Done", author=ALICE)
    _, cursor, _ = pull_all(connector, cursor)
    at = datetime.fromisoformat(str(cursor.get("")))
    changed = datetime.fromisoformat(em.issue(sub)["fields"]["updated"])
    assert at == changed.replace(microsecond=changed.microsecond // 1000 * 1000)


def test_many_parents_are_re_read_100_a_search(em: JiraEmulator, clock: Clock) -> None:
    subs = [deal_with_deliverables(em, f"deal {i}")[1] for i in range(101)]
    connector = make_connector(em, subtasks_as="deliverables", jql=SCOPED, page_size=500)
    cursor = settled(em, clock, connector)
    for sub in subs:
        em.transition(sub, "Done", author=ALICE)
    connector.counter.snapshot(reset=True)
    records, _, _ = pull_all(connector, cursor)
    parents = [r for r in records if r.fields["subtasks"]]
    assert len({r.ref for r in parents}) == 101
    assert all(statuses(r)["Proposal"] == "approved" for r in parents)
    # Data Center: one page of 102 (the later deal first), then 100 + 1 parents re-read.
    # Cloud caps a page at 100: the later deal and 99 sub-tasks (99 parents re-read), then 2.
    assert connector.counter.snapshot().total == {"dc": 1 + 2, "cloud": 2 + 2}[em.mode]


def test_a_version_from_before_sub_tasks_counted_still_guards_writes(em: JiraEmulator) -> None:
    """Links stored before versions carried the sub-tasks' state hold the bare ``updated``:
    a write expecting one is checked against the issue's ``updated`` alone."""
    key, _ = deal_with_deliverables(em)
    connector = make_connector(em, subtasks_as="deliverables", jql=SCOPED)
    record = connector.get(key)
    assert record is not None and "#" in record.version
    bare = record.version.split("#")[0]
    updated = connector.update(key, {"summary": "renamed"}, expected_version=bare)
    assert updated.fields["summary"] == "renamed"


# --------------------------------------------------------------------------- through the engine


DELIVERABLES = '\n[fields.deliverables]\nremote = "subtasks"\ntype = "json"\n'
# The emulator lists every status of the site as the stages (it has no per-project status
# list), the sub-tasks' To Do / In Progress / Done among them: read those as no stage change.
STAGE_DEFAULT = ('type = "enum"\n', 'type = "enum"\ndefault = "lead"\n')


@pytest.fixture(params=["cloud", "dc"])
def bridge(request: pytest.FixtureRequest, clock: Clock, tmp_path: Path) -> Iterator[Bridge]:
    with emulator(request.param, clock) as em:
        text = (REPO / "mappings" / "jira.toml").read_text(encoding="utf-8") + DELIVERABLES
        text = text.replace(*STAGE_DEFAULT, 1)
        b = Bridge(em, tmp_path / "store.db", jira_mapping=text, jql=SCOPED,
                   subtasks_as="deliverables")  # fmt: skip
        try:
            yield b
        finally:
            b.close()


def ok(report: SyncReport) -> None:
    assert report.ok, {n: (r.status, r.error) for n, r in report.connectors.items()}


def test_a_deliverable_done_in_jira_reaches_the_hub_at_the_next_incremental_sync(
    bridge: Bridge, clock: Clock
) -> None:
    b = bridge
    key, sub = deal_with_deliverables(b.em)
    ok(b.sync())
    pid = b.project_of("jira", key)
    hub = b.store.get_project(pid)
    assert hub is not None
    assert {d["title"]: d["status"] for d in hub["deliverables"]} == {
        "Proposal": "missing",
        "Contract": "missing",
    }
    clock.advance(minutes=30)  # a later deal moves the cursor far past the parent
    b.em.add_issue("SALES", {"summary": "a later deal", "Customer": "Initech"}, author=ALICE)
    ok(b.sync())
    clock.advance(hours=1)
    b.em.transition(sub, "Done", author=ALICE)
    searches = b.em.controls.count("GET", search_path(b.em))
    ok(b.sync())  # incremental: no census
    hub = b.store.get_project(pid)
    assert hub is not None
    assert {d["title"]: d["status"] for d in hub["deliverables"]} == {
        "Proposal": "approved",
        "Contract": "missing",
    }
    assert b.em.controls.count("GET", search_path(b.em)) - searches == 2, "pull, parent"
    assert b.em.issue(key)["fields"]["updated"] < b.em.issue(sub)["fields"]["updated"]

    searches = b.em.controls.count("GET", search_path(b.em))
    report = b.sync()
    ok(report)
    assert b.em.controls.count("GET", search_path(b.em)) - searches == 1, "quiet again"
    assert not report.connectors["jira"].counts.get("pushed")


@pytest.mark.parametrize(
    ("jql", "clause"),
    [
        ("project = SALES", "project = SALES"),
        ('project = SALES AND issuetype = "Sales Project"', "project = SALES"),
        ('(issuetype = "Sales Project" AND project in (SALES, EU))', "project in (SALES, EU)"),
        ('summary ~ "project = X" AND project = "SALES"', 'project = "SALES"'),
        ("project = SALES OR labels = deal", None),
        ("NOT project = SALES", None),
        ("project != SALES AND labels = deal", None),
        ('issuetype = "Sales Project"', None),
    ],
)
def test_the_sub_tasks_watched_are_bounded_by_the_jqls_project(
    jql: str, clause: str | None
) -> None:
    assert _project_clause(jql) == clause
