"""The Asana connector: the contract on the emulator, request counts, pulls and writes."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from bridge.errors import AuthError, FatalError, RateLimited, SkippableRecord
from connectors.asana.connector import AsanaConfig, AsanaConnector
from connectors.base import Connector, Cursor, Page, RemoteRecord, StaleVersion
from tests.contract import ConnectorContract, new_stamp
from tests.test_asana_support import BOT_TOKEN, HUMAN, AsanaWorld, world

OWNER = {"id": None, "name": "Li Wei", "email": HUMAN, "username": None}


class TestAsanaConnector(ConnectorContract):
    kind = "asana"
    editable_field = "Name"
    editable_values = ("Acme rollout", "Acme rollout, phase 2")
    supports_archive = True
    unknown_ref = "1999999999999999"

    @pytest.fixture
    def asana(self) -> Iterator[AsanaWorld]:
        yield from world()

    @pytest.fixture
    def connector(self, asana: AsanaWorld) -> Iterator[Connector[Any]]:
        with asana.connector() as connector:
            yield connector

    def sample_fields(self) -> dict[str, Any]:
        return {
            "Name": "Acme rollout",
            "Section": "Proposal",
            "Amount": 1200.5,
            "Priority": "High",
            "Region": ["APAC", "EMEA"],
            "Close date": "2026-03-31",
            "Team": [HUMAN],
            "Assignee": OWNER,
            "Subtasks": [{"title": "Discovery call", "done": False, "due": None, "owner": None}],
            "Comments": [{"what": "Kick-off held", "at": "2026-01-05T09:00:00Z", "by": HUMAN}],
        }

    def remote_edit(self, connector: Connector[Any], ref: str, fields: Mapping[str, Any]) -> None:
        assert isinstance(connector, AsanaConnector)
        person = AsanaConnector("li", connector.config, token="li-pat-0123456789")
        with person:
            person.update(ref, fields, expected_version=None)

    def assert_fields_match(self, sent: Mapping[str, Any], got: Mapping[str, Any]) -> None:
        for key, value in sent.items():
            if key == "Assignee":
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


@pytest.fixture
def asana() -> Iterator[AsanaWorld]:
    yield from world(tasks=25)


# --------------------------------------------------------------------------- request counts


def test_a_census_costs_token_pages_and_batches(asana: AsanaWorld) -> None:
    """25 tasks, 10 per page: 1 events (412: token) + 3 listing pages + 5 batches of
    subtasks and comments (2 per task, 10 per batch)."""
    c = asana.connector(page_size=10)
    controls = asana.emulator.controls
    controls.reset()
    pages, _ = pull_all(c, Cursor())
    assert [len(p.records) for p in pages] == [10, 10, 5]
    assert [p.cursor is not None for p in pages] == [False, False, True]
    assert controls.count("GET", "/api/1.0/events") == 1
    assert controls.count("GET", "/api/1.0/tasks") == 3
    assert controls.count("POST", "/api/1.0/batch") == 5
    assert controls.count() == 9 == c.requests.snapshot().total
    assert {dict(e.params).get("limit") for e in controls.log if e.path.endswith("/tasks")} == {
        "10"
    }


def test_an_incremental_pull_with_no_change_is_one_events_request(asana: AsanaWorld) -> None:
    c = asana.connector()
    _, cursor = pull_all(c, Cursor())
    asana.emulator.controls.reset()
    before = c.requests.snapshot().total
    pages, again = pull_all(c, cursor)
    assert [p.records for p in pages] == [[]]
    assert asana.emulator.controls.count() == 1
    assert asana.emulator.controls.count("GET", "/api/1.0/events") == 1
    assert c.requests.snapshot().total - before == 1
    assert again.positions != cursor.positions  # the new sync token is stored


def test_changes_cost_one_events_request_plus_batches(asana: AsanaWorld) -> None:
    c, person = asana.connector(), asana.person()
    _, cursor = pull_all(c, Cursor())
    refs = asana.seeded.tasks[:3]
    for ref in refs:
        person.update(ref, {"Amount": 99.0}, expected_version=None)
    asana.emulator.controls.reset()
    pages, _ = pull_all(c, cursor)
    assert sorted(r.ref for p in pages for r in p.records) == sorted(refs)
    # 1 events + 1 batch for the 3 tasks + 1 batch for their 6 subtask/comment listings
    assert asana.emulator.controls.count() == 3


def test_opt_fields_are_limited_to_the_mapping(asana: AsanaWorld, tmp_path: Any) -> None:
    mapping = tmp_path / "asana.toml"
    mapping.write_text(
        'connector = "asana"\nversion = 1\n[fields.name]\nremote = "Name"\n'
        '[fields.stage]\nremote = "Section"\ntype = "enum"\n'
    )
    c = asana.connector(mapping=mapping)
    asana.emulator.controls.reset()
    pages, _ = pull_all(c, Cursor())
    listing = [e for e in asana.emulator.controls.log if e.path.endswith("/tasks")]
    fields = dict(listing[0].params)["opt_fields"].split(",")
    assert "name" in fields
    assert "memberships.section.name" in fields
    assert "notes" not in fields
    assert "assignee.email" not in fields
    assert asana.emulator.controls.count("POST", "/api/1.0/batch") == 0  # no subtasks, comments
    record = pages[0].records[0]
    assert set(record.fields) == {"Name", "Section", "Salesbridge ID"}


# --------------------------------------------------------------------------- pulls


def test_an_expired_token_starts_a_census_with_the_new_token(asana: AsanaWorld) -> None:
    c = asana.connector()
    _, cursor = pull_all(c, Cursor())
    asana.state.expire_sync_tokens()
    asana.emulator.controls.reset()
    pages, cursor = pull_all(c, cursor)
    assert sum(len(p.records) for p in pages) == 25
    assert asana.emulator.controls.count("GET", "/api/1.0/events", status=412) == 1
    assert asana.emulator.controls.count("GET", "/api/1.0/events") == 1  # 412 carried the token
    asana.emulator.controls.reset()
    pull_all(c, cursor)
    assert asana.emulator.controls.count() == 1


def test_moves_comments_subtasks_and_deletes_arrive_as_events(asana: AsanaWorld) -> None:
    c, person = asana.connector(), asana.person()
    _, cursor = pull_all(c, Cursor())
    moved, commented, parent, deleted = asana.seeded.tasks[:4]
    st, user = asana.state, asana.seeded.users[HUMAN]
    asana.emulator.request(
        "POST", f"/sections/{asana.section('Signed')}/addTask", user=user, data={"task": moved}
    )
    asana.emulator.request(
        "POST", f"/tasks/{commented}/stories", user=user, data={"text": "Called the CFO"}
    )
    sub = asana.emulator.request(
        "POST", f"/tasks/{parent}/subtasks", user=user, data={"name": "Security review"}
    )["data"]["gid"]
    asana.emulator.request("PUT", f"/tasks/{sub}", user=user, data={"completed": True})
    asana.emulator.request("DELETE", f"/tasks/{deleted}", user=user)
    pages, _ = pull_all(c, cursor)
    got = {r.ref: r for p in pages for r in p.records}
    assert set(got) == {moved, commented, parent, deleted}
    assert got[moved].fields["Section"] == "Signed"
    assert got[commented].fields["Comments"][-1]["what"] == "Called the CFO"
    assert got[commented].fields["Comments"][-1]["by"] == HUMAN
    assert {"title": "Security review", "done": True, "due": None, "owner": None} in got[
        parent
    ].fields["Subtasks"]
    assert got[deleted].deleted
    assert sub not in got and st.tasks[sub]["parent"] == parent
    del person


def test_modified_since_mode_polls_with_an_overlap(asana: AsanaWorld) -> None:
    c, person = asana.connector(incremental="modified_since"), asana.person()
    pages, cursor = pull_all(c, Cursor())
    assert sum(len(p.records) for p in pages) == 25
    person.update(asana.seeded.tasks[5], {"Name": "Renamed"}, expected_version=None)
    asana.emulator.controls.reset()
    pages, cursor = pull_all(c, cursor)
    got = {r.ref: r for p in pages for r in p.records}
    assert got[asana.seeded.tasks[5]].fields["Name"] == "Renamed"
    listing = [e for e in asana.emulator.controls.log if e.path.endswith("/tasks")]
    assert "modified_since" in dict(listing[0].params)
    assert asana.emulator.controls.count("GET", "/api/1.0/events") == 0


def test_a_malformed_task_is_skipped_and_the_rest_pulled(asana: AsanaWorld) -> None:
    c = asana.connector()
    bad = asana.seeded.tasks[2]
    asana.state.tasks[bad]["name"] = None  # no real Asana sends this; a broken proxy might
    pages, _ = pull_all(c, Cursor())
    skipped = [s for p in pages for s in p.skipped]
    assert [s.ref for s in skipped] == [bad]
    assert "malformed task" in skipped[0].reason
    assert sum(len(p.records) for p in pages) == 24


def test_a_foreign_cursor_is_fatal(asana: AsanaWorld) -> None:
    with pytest.raises(FatalError, match="not an Asana cursor"):
        pull_all(asana.connector(), Cursor({asana.seeded.pipeline: "2024-01-01T00:00:00Z"}))


# --------------------------------------------------------------------------- writes


def test_create_puts_the_task_in_its_section_with_every_field_type(asana: AsanaWorld) -> None:
    c = asana.connector()
    stamp = new_stamp()
    rec = c.create(
        {
            "Name": "Globex pilot",
            "Section": "Negotiation",
            "Amount": 5000,
            "Probability": 60,
            "Close date": "2026-06-30",
            "Priority": "Urgent",
            "Region": ["EMEA"],
            "Team": [HUMAN, "bob.lee@example.com"],
            "Customer": "Globex",
            "Assignee": {"email": "wang.fang@example.com"},
            "Completed": False,
            "Due date": "2026-06-30",
        },
        stamp=stamp,
    )
    task = asana.state.tasks[rec.ref]
    assert task["memberships"] == [(asana.seeded.pipeline, asana.section("Negotiation"))]
    values = task["values"]
    assert values[asana.field("Salesbridge ID")] == stamp
    assert values[asana.field("Priority")] == asana.state.option_gid(
        asana.field("Priority"), "Urgent"
    )
    assert values[asana.field("Close date")] == "2026-06-30"
    assert rec.fields["Team"] == [HUMAN, "bob.lee@example.com"]
    assert rec.fields["Assignee"]["email"] == "wang.fang@example.com"
    assert rec.stamp == stamp


def test_writes_the_mapping_cannot_hold_are_refused_per_record(asana: AsanaWorld) -> None:
    c = asana.connector()
    ref = asana.seeded.tasks[0]
    with pytest.raises(SkippableRecord, match="no section 'Blocked'"):
        c.update(ref, {"Section": "Blocked"}, expected_version=None)
    with pytest.raises(SkippableRecord, match="not an option"):
        c.update(ref, {"Priority": "Whenever"}, expected_version=None)


def test_subtasks_are_matched_by_title_and_comments_only_added(asana: AsanaWorld) -> None:
    c = asana.connector()
    rec = c.create(
        {
            "Name": "Hooli upgrade",
            "Subtasks": [
                {"title": "Demo", "done": False, "due": None, "owner": None},
                {"title": "Quote", "done": False, "due": None, "owner": None},
            ],
            "Comments": [{"what": "Met the buyer", "at": "2026-01-02T03:04:05Z", "by": HUMAN}],
        },
        stamp=new_stamp(),
    )
    after = c.update(
        rec.ref,
        {
            "Subtasks": [
                {"title": "Demo", "done": True, "due": "2026-02-01", "owner": {"email": HUMAN}},
                {"title": "Contract", "done": False, "due": None, "owner": None},
            ],
            "Comments": [
                {"what": "Met the buyer", "at": "2026-01-02T03:04:05.000000Z", "by": HUMAN},
                {"what": "Sent the quote", "at": "2026-01-09T10:00:00Z", "by": None},
            ],
        },
        expected_version=rec.version,
    )
    assert [(s["title"], s["done"], s["due"]) for s in after.fields["Subtasks"]] == [
        ("Demo", True, "2026-02-01"),
        ("Contract", False, None),
    ]
    assert after.fields["Subtasks"][0]["owner"]["email"] == HUMAN
    assert [(a["what"], a["at"], a["by"]) for a in after.fields["Comments"]] == [
        ("Met the buyer", "2026-01-02T03:04:05Z", HUMAN),
        ("Sent the quote", "2026-01-09T10:00:00Z", None),
    ]


# --------------------------------------------------------------------------- batch updates


def test_update_many_reads_and_writes_ten_per_batch(asana: AsanaWorld) -> None:
    """13 tasks: task, subtasks and stories read 10 to a batch (39 reads: 4 requests), then
    the 11 PUTs 10 to a batch (2 requests), no read-back. A task a person edited since the pull
    is StaleVersion and stays as they made it; an unknown task is StaleVersion; the records
    returned are what get() reads afterwards."""
    c, person = asana.connector(), asana.person()
    pages, _ = pull_all(c, Cursor())
    before = {r.ref: r for p in pages for r in p.records}
    refs = asana.seeded.tasks[:12]
    edited, unknown = refs[4], "1999999999999999"
    person.update(edited, {"Amount": 5.0}, expected_version=None)
    theirs = c.get(edited)
    assert theirs is not None
    changes = {ref: {"Name": f"Renamed {i}"} for i, ref in enumerate([*refs, unknown])}
    expected = {ref: before[ref].version if ref in before else "x" for ref in changes}
    c.meta()  # sections, fields, users: a sync has read them by then
    asana.emulator.controls.reset()
    results = c.update_many(changes, expected)
    assert asana.emulator.controls.count() == 4 + 2
    assert asana.emulator.controls.count("POST", "/api/1.0/batch") == 6
    assert set(results) == set(changes)
    for ref in (edited, unknown):
        stale = results[ref]
        assert isinstance(stale, StaleVersion) and stale.ref == ref
    assert c.get(edited) == theirs, "refused, yet written"
    for i, ref in enumerate(refs):
        if ref == edited:
            continue
        result = results[ref]
        assert isinstance(result, RemoteRecord), (ref, result)
        got = c.get(ref)
        assert got is not None and got.fields["Name"] == f"Renamed {i}"
        assert result.version == got.version != before[ref].version
        assert result.fields == got.fields and result.url == got.url


def test_update_many_moves_sections_before_the_puts(asana: AsanaWorld) -> None:
    """Moves go in a batch of their own (Asana runs a batch's actions in no set order), then
    the PUTs, or a GET for a task that only moves: its new version comes from that answer."""
    c = asana.connector()
    a, b, d = asana.seeded.tasks[:3]
    was = {r: c.get(r) for r in (a, b, d)}
    c.meta()
    asana.emulator.controls.reset()
    results = c.update_many(
        {
            a: {"Section": "Signed", "Name": "Moved and renamed"},
            b: {"Section": "Signed"},
            d: {"Name": "Renamed only", "Section": was[d].fields["Section"]},  # type: ignore[union-attr]
        },
        {r: was[r].version for r in (a, b, d)},  # type: ignore[union-attr]
    )
    # reads (9 actions), moves (2), PUTs and the GET (3)
    assert asana.emulator.controls.count("POST", "/api/1.0/batch") == 3
    assert asana.emulator.controls.count() == 3
    for ref in (a, b, d):
        result = results[ref]
        assert isinstance(result, RemoteRecord), (ref, result)
        got = c.get(ref)
        assert got is not None
        assert result.version == got.version != was[ref].version  # type: ignore[union-attr]
        assert result.fields == got.fields
    assert results[a].fields["Section"] == "Signed"  # type: ignore[union-attr]
    assert results[b].fields["Section"] == "Signed"  # type: ignore[union-attr]


def test_update_many_writes_subtasks_and_comments_then_reads_back(asana: AsanaWorld) -> None:
    """Subtasks and comments that differ are written one request each and their tasks read
    back; subtasks and comments already as wanted cost nothing."""
    c = asana.connector()
    a, b = asana.seeded.tasks[:2]
    now = {r: c.get(r) for r in (a, b)}
    wanted = [{"title": "Send the quote", "done": False, "due": None, "owner": None}]
    results = c.update_many(
        {
            a: {"Subtasks": wanted, "Name": "With a subtask"},
            b: {"Subtasks": now[b].fields["Subtasks"], "Name": "Same subtasks"},  # type: ignore[union-attr]
        },
        {r: now[r].version for r in (a, b)},  # type: ignore[union-attr]
    )
    for ref in (a, b):
        result = results[ref]
        assert isinstance(result, RemoteRecord), (ref, result)
        got = c.get(ref)
        assert got is not None and result.version == got.version
        assert result.fields == got.fields
    assert [s["title"] for s in results[a].fields["Subtasks"]] == ["Send the quote"]  # type: ignore[union-attr]


def test_update_many_returns_the_old_version_when_someone_edits_during_the_write(
    asana: AsanaWorld,
) -> None:
    """A person's change between the version read and the PUT shows in the PUT's answer as a
    field the bridge did not write: the version returned is the one read before, so the next
    pull reads the task as changed and brings the person's value."""
    c, person = asana.connector(), asana.person()
    _, cursor = pull_all(c, Cursor())
    a, b = asana.seeded.tasks[:2]
    was = {r: c.get(r) for r in (a, b)}
    original = c._batch

    def batch(actions: Any) -> Any:
        if any(x.get("method") == "put" for x in actions):
            person.update(a, {"Amount": 4321.0}, expected_version=None)
        return original(actions)

    c._batch = batch  # type: ignore[method-assign]
    results = c.update_many(
        {a: {"Name": "Bridge name a"}, b: {"Name": "Bridge name b"}},
        {r: was[r].version for r in (a, b)},  # type: ignore[union-attr]
    )
    c._batch = original  # type: ignore[method-assign]
    ra, rb = results[a], results[b]
    assert isinstance(ra, RemoteRecord) and isinstance(rb, RemoteRecord)
    assert ra.version == was[a].version  # type: ignore[union-attr]
    assert rb.version == c.get(b).version  # type: ignore[union-attr]
    pages, _ = pull_all(c, cursor)
    (pulled,) = [r for p in pages for r in p.records if r.ref == a]
    assert pulled.version != ra.version
    assert pulled.fields["Amount"] == 4321.0 and pulled.fields["Name"] == "Bridge name a"


def test_update_many_refuses_per_task_and_raises_what_stops_all(asana: AsanaWorld) -> None:
    c = asana.connector()
    a, b = asana.seeded.tasks[:2]
    results = c.update_many({a: {"Priority": "Whenever"}, b: {"Name": "Fine"}}, {a: None, b: None})
    assert isinstance(results[a], SkippableRecord)
    assert isinstance(results[b], RemoteRecord)
    asana.emulator.revoke(BOT_TOKEN)
    with pytest.raises(AuthError):
        c.update_many({a: {"Name": "x"}, b: {"Name": "y"}}, {a: None, b: None})


# --------------------------------------------------------------------------- the HTTP layer


def test_429s_are_retried_after_retry_after_and_counted(asana: AsanaWorld) -> None:
    c = asana.connector()
    asana.emulator.controls.fail(429, times=2, path="/api/1.0/batch", retry_after=0)
    assert c.get(asana.seeded.tasks[0]) is not None
    stats = c.requests.snapshot()
    assert stats.rate_limited == 2
    asana.emulator.controls.fail(429, times=None, retry_after=0)
    with pytest.raises(RateLimited):
        c.get(asana.seeded.tasks[0])


def test_5xx_is_retried_for_reads_only(asana: AsanaWorld) -> None:
    c = asana.connector()
    asana.emulator.controls.fail(503, times=1, path="/api/1.0/users/me", retry_after=0)
    assert "Salesbridge Bot" in c.check()
    asana.emulator.controls.fail(503, times=1, path="/api/1.0/tasks", method="POST")
    with pytest.raises(FatalError.__mro__[1]):  # RetriableError: a POST is not retried
        c.create({"Name": "x"}, stamp=new_stamp())
    assert asana.emulator.controls.count("POST", "/api/1.0/tasks") == 1


def test_revoked_credentials_are_an_auth_error_without_the_token(asana: AsanaWorld) -> None:
    c = asana.connector()
    c.check()
    asana.emulator.revoke("bot-pat-0123456789")
    with pytest.raises(AuthError) as refused:
        list(c.pull(Cursor(), signpost=datetime.now(UTC)))
    assert "bot-pat" not in str(refused.value)


def test_config_defaults_and_rate_limits() -> None:
    base = {"kind": "asana", "token": "env:T", "workspace": "1", "project": "2"}
    cfg = AsanaConfig.model_validate(base)
    assert (cfg.plan, cfg.incremental, cfg.page_size) == ("free", "events", 100)
    with pytest.raises(ValueError, match="page_size"):
        AsanaConfig.model_validate({**base, "page_size": 101})
    free = AsanaConnector("a", cfg, token="t")
    paid = AsanaConnector("a", AsanaConfig.model_validate({**base, "plan": "paid"}), token="t")
    assert free.http.bucket is not None and paid.http.bucket is not None
    assert free.http.bucket.rate * 60 == pytest.approx(150)
    assert paid.http.bucket.rate * 60 == pytest.approx(1500)
    free.close()
    paid.close()
