"""The Pipedrive connector on the Pipedrive emulator: the contract, then what is its own.

Pipedrive's clock has whole seconds; the emulator's clock here steps one second per reading,
so every change gets its own time without the tests sleeping.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bridge.emulator import EmulatorServer
from bridge.errors import (
    AuthError,
    FatalError,
    RateLimited,
    RetriableError,
    SkippableRecord,
    StaleVersion,
)
from bridge.http import Auth, HttpClient, RetryPolicy
from connectors.base import Connector, Cursor, Page, RemoteRecord
from connectors.memory import SteppingClock
from connectors.pipedrive.connector import PipedriveConfig, PipedriveConnector
from connectors.pipedrive.emulator import API_TOKEN, PipedriveEmulator
from tests.contract import ConnectorContract, new_stamp

START = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
TOKEN_VAR = "SALESBRIDGE_TEST_PIPEDRIVE_TOKEN"
PROPOSAL = "Sales pipeline / Proposal made"


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(TOKEN_VAR, API_TOKEN)
    return API_TOKEN


@pytest.fixture
def emulator() -> Iterator[PipedriveEmulator]:
    with PipedriveEmulator(seed=False, clock=SteppingClock(START)) as emu:
        yield emu


def make_connector(
    emu: PipedriveEmulator, *, sleeps: list[float] | None = None, **settings: Any
) -> PipedriveConnector:
    config = PipedriveConfig(token=f"env:{TOKEN_VAR}", base_url=emu.base_url, **settings)
    http = None
    if sleeps is not None:
        http = HttpClient(
            "pipedrive",
            emu.base_url,
            auth=Auth.header("x-api-token", API_TOKEN),
            retry=RetryPolicy(max_attempts=5),
            sleep=sleeps.append,
        )
    return PipedriveConnector("pipedrive", config, http=http)


def remote_edit(emu: PipedriveEmulator, conn: PipedriveConnector, ref: str, **fields: Any) -> None:
    """A person edits the deal in Pipedrive (user 2, Jane Doe), in the connector's field terms."""
    body = conn._body(conn._metadata(), fields, ref=ref)
    emu.edit_deal(int(ref), user_id=2, **body)


class TestPipedriveConnector(ConnectorContract):
    kind = "pipedrive"
    editable_field = "title"
    editable_values = ("Acme rollout", "Acme rollout, phase 2")
    supports_archive = True
    keeps_history = True
    unknown_ref = "999999"
    clock_resolution = 0.0

    @pytest.fixture
    def connector(self, emulator: PipedriveEmulator, token: str) -> Iterator[Connector[Any]]:
        self.emu = emulator
        with make_connector(emulator, page_size=2) as connector:
            yield connector

    def sample_fields(self) -> dict[str, Any]:
        owner = {"id": "3", "name": "Li Wei", "email": "li.wei@example.com", "username": None}
        return {
            "title": "Acme rollout",
            "stage": PROPOSAL,
            "value": 1200.5,
            "currency": "EUR",
            "probability": 40,
            "expected_close_date": "2026-03-31",
            "owner": owner,
            "organization": "Acme Ltd",
            "Region": "APAC",
            "Products": ["Platform", "Support"],
        }

    def remote_edit(self, connector: Connector[Any], ref: str, fields: Mapping[str, Any]) -> None:
        assert isinstance(connector, PipedriveConnector)
        remote_edit(self.emu, connector, ref, **fields)

    def server_now(self, connector: Connector[Any]) -> datetime:
        return self.emu.clock()

    def cursor_time(self, position: str) -> datetime | None:
        return super().cursor_time(position.partition("|")[0])

    def assert_fields_match(self, sent: Mapping[str, Any], got: Mapping[str, Any]) -> None:
        resolved = {(self.emu.field_key(k) if k[0].isupper() else k): v for k, v in sent.items()}
        super().assert_fields_match(resolved, got)


# --------------------------------------------------------------------------- config, auth


def test_config_refuses_a_literal_token_and_a_page_over_500() -> None:
    with pytest.raises(ValueError, match="environment variable"):
        PipedriveConfig.model_validate({"token": "0123456789abcdef"})
    with pytest.raises(ValueError, match="page_size"):
        PipedriveConfig.model_validate({"token": "env:X", "page_size": 501})
    config = PipedriveConfig.model_validate({"token": "env:X", "metadata_ttl": "1m"})
    assert (config.page_size, config.metadata_ttl) == (500, timedelta(minutes=1))


def test_a_bad_token_is_an_auth_error(
    emulator: PipedriveEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_VAR, "not-the-token")
    with make_connector(emulator) as conn, pytest.raises(AuthError) as refused:
        conn.check()
    assert refused.value.status == 401
    assert "not-the-token" not in str(refused.value)
    assert emulator.controls.count(status=401) == 1, "a 401 is not retried"


def test_the_token_travels_in_a_header_never_in_a_url(
    emulator: PipedriveEmulator, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    headers: list[Mapping[str, str]] = []
    emulator.controls.on_response(lambda e: headers.append(e.request_headers))
    caplog.set_level(logging.DEBUG)
    with make_connector(emulator) as conn:
        conn.check()
        conn.create({"title": "Acme"}, stamp=new_stamp())
    assert headers
    assert all(h.get("x-api-token") == token for h in headers)
    assert all(token not in e.query for e in emulator.controls.log)
    assert token not in caplog.text


# --------------------------------------------------------------------------- pulls


def test_no_change_incremental_pull_costs_one_request(
    emulator: PipedriveEmulator, token: str
) -> None:
    with make_connector(emulator) as conn:
        for i in range(3):
            conn.create({"title": f"Deal {i}", "stage": PROPOSAL}, stamp=new_stamp())
        records, cursor = pull_all(conn, Cursor(), emulator.clock())
        assert len(records) == 3
        emulator.controls.reset()
        again, _cursor2 = pull_all(conn, cursor, emulator.clock())
        assert again == []
        assert [(e.method, e.path) for e in emulator.controls.log] == [("GET", "/api/v2/deals")]
        query = dict(emulator.controls.log[0].params)
        assert query["limit"] == "500"
        assert query["sort_by"] == "update_time"
        assert query["updated_since"].endswith("Z")


def test_full_pull_request_counts(emulator: PipedriveEmulator, token: str) -> None:
    """A census of 1,001 deals: 3 deal pages (500 each), one activity listing, one
    organizations and one persons request per 100 ids of each deal page, metadata once. The
    deals' only participant is their contact person: no participants request."""
    orgs = [emulator.add_organization(f"Org {i}") for i in range(3)]
    person = emulator.add_person("Wang Fang", emails=[{"value": "wang@example.com"}])
    for i in range(1001):
        deal = emulator.add_deal(title=f"Deal {i}", org_id=orgs[i % 3], person_id=person)
        if i % 250 == 0:
            emulator.add_activity(deal, subject="Call", done=i % 500 == 0)
    with make_connector(emulator) as conn:
        records, _ = pull_all(conn, Cursor(), emulator.clock(), full=True)
        assert len(records) == 1001
        c = emulator.controls
        assert c.count("GET", "/api/v2/deals") == 3
        assert c.count("GET", "/api/v2/activities") == 1
        assert c.count("GET", "/api/v2/organizations") == 3
        assert c.count("GET", "/api/v2/persons") == 3
        metadata = c.count("GET", "/v1/users") + c.count("GET", "/api/v2/pipelines")
        metadata += c.count("GET", "/api/v2/stages") + c.count("GET", "/api/v2/dealFields")
        metadata += c.count("GET", "/api/v2/personFields")
        assert metadata == 5
        assert c.count() == 3 + 1 + 3 + 3 + 5
        acted = [r for r in records if r.fields["actions"] or r.fields["next_steps"]]
        assert len(acted) == 5
        c.reset()
        records, _ = pull_all(conn, Cursor(), emulator.clock(), full=True)
        assert c.count() == 3 + 1 + 3 + 3, "metadata is cached between pulls"


def test_incremental_pull_fetches_activities_per_changed_deal(
    emulator: PipedriveEmulator, token: str
) -> None:
    deals = [emulator.add_deal(title=f"Deal {i}") for i in range(4)]
    with make_connector(emulator) as conn:
        _, cursor = pull_all(conn, Cursor(), emulator.clock())
        emulator.add_activity(deals[1], subject="Send the proposal", due_date="2024-04-01")
        emulator.controls.reset()
        records, cursor = pull_all(conn, cursor, emulator.clock())
        assert [r.ref for r in records] == [str(deals[1])]
        assert records[0].fields["next_steps"] == [
            {
                "what": "Send the proposal",
                "owner": {"name": "John Doe", "email": "john@pipedrive.com"},
                "due": "2024-04-01",
            }
        ]
        assert [e.path for e in emulator.controls.log] == ["/api/v2/deals", "/api/v2/activities"]


def test_an_activity_added_to_the_last_deal_read_is_not_dropped(
    emulator: PipedriveEmulator, token: str
) -> None:
    """The cursor keeps the deals read at its second to drop them when listed again; the same
    deal listed later with unchanged data (an activity changed only its time) is new."""
    deal = emulator.add_deal(title="Acme")
    with make_connector(emulator) as conn:
        _, cursor = pull_all(conn, Cursor(), emulator.clock())
        assert f"|{deal}:" in (cursor.get("") or ""), "the deal is the cursor's boundary"
        emulator.add_activity(deal, subject="Call back", due_date="2024-04-01")
        records, _ = pull_all(conn, cursor, emulator.clock())
        assert [[n["what"] for n in r.fields["next_steps"]] for r in records] == [["Call back"]]


def test_pipelines_setting_pulls_one_partition_per_pipeline(
    emulator: PipedriveEmulator, token: str
) -> None:
    sales = emulator.add_deal(
        title="Sale", stage_id=emulator.stage_id("Sales pipeline", "Qualified")
    )
    emulator.add_deal(title="Rollout", stage_id=emulator.stage_id("Delivery", "Onboarding"))
    with make_connector(emulator, pipelines=["Sales pipeline"]) as conn:
        records, cursor = pull_all(conn, Cursor(), emulator.clock())
        assert [r.ref for r in records] == [str(sales)]
        assert list(cursor.positions) == ["pipeline:1"]
        assert conn.discover().stages[0] == "Sales pipeline / Lead in"
        assert all(s.startswith("Sales pipeline") for s in conn.discover().stages)
        with pytest.raises(SkippableRecord, match="not a stage"):
            conn.create({"title": "x", "stage": "Delivery / Onboarding"}, stamp=new_stamp())


def test_a_malformed_deal_is_skipped_and_the_rest_pulled(
    emulator: PipedriveEmulator, token: str
) -> None:
    good = emulator.add_deal(title="good")
    bad = emulator.add_deal(title="bad")
    also = emulator.add_deal(title="also good")
    emulator.corrupt_deal(bad, custom_fields={emulator.field_key("Region"): 9999})
    with make_connector(emulator) as conn:
        for full in (False, True):
            pages = list(conn.pull(Cursor(), signpost=emulator.clock(), full=full))
            assert [r.ref for p in pages for r in p.records] == [str(good), str(also)]
            skipped = [s for p in pages for s in p.skipped]
            assert [s.ref for s in skipped] == [str(bad)]
            assert "Region: option id 9999 no longer exists" in skipped[0].reason
            assert isinstance(skipped[0].payload, dict)
        with pytest.raises(SkippableRecord):
            conn.get(str(bad))


def test_a_stage_added_in_pipedrive_is_picked_up(emulator: PipedriveEmulator, token: str) -> None:
    with make_connector(emulator) as conn:
        conn.check()
        with emulator.lock:
            emulator.stages[99] = {**emulator.stages[1], "id": 99, "name": "Demo scheduled"}
        deal = emulator.add_deal(title="Demo", stage_id=99)
        got = conn.get(str(deal))
        assert got is not None
        assert got.fields["stage"] == "Sales pipeline / Demo scheduled"


# --------------------------------------------------------------------------- errors


def test_a_429_storm_is_waited_out_with_retry_after(
    emulator: PipedriveEmulator, token: str
) -> None:
    sleeps: list[float] = []
    emulator.add_deal(title="Acme")
    with make_connector(emulator, sleeps=sleeps) as conn:
        conn.check()
        emulator.controls.fail(429, times=3, path="/api/v2/deals", retry_after=2)
        records, _ = pull_all(conn, Cursor(), emulator.clock())
        assert len(records) == 1
        assert sleeps == [2, 2, 2]
        emulator.controls.fail(429, times=None, path="/api/v2/deals")
        with pytest.raises(RateLimited):
            pull_all(conn, Cursor(), emulator.clock())


def test_the_rate_limit_carries_pipedrive_headers(emulator: PipedriveEmulator, token: str) -> None:
    sleeps: list[float] = []
    emulator.rate_limit(2, per=60)
    with make_connector(emulator, sleeps=sleeps) as conn, pytest.raises(RateLimited):
        conn.check()
    limited = [e for e in emulator.controls.log if e.status == 429]
    assert limited
    headers = limited[0].response_headers
    assert headers["x-ratelimit-limit"] == "2"
    assert headers["x-ratelimit-remaining"] == "0"
    assert int(headers["retry-after"]) >= 1
    assert sleeps, "the client waited before each retry"


def test_5xx_is_retried_for_reads_not_for_creates(emulator: PipedriveEmulator, token: str) -> None:
    sleeps: list[float] = []
    with make_connector(emulator, sleeps=sleeps) as conn:
        conn.check()
        emulator.controls.fail(503, times=2, path="/api/v2/deals")
        assert pull_all(conn, Cursor(), emulator.clock())[0] == []
        emulator.controls.fail(502, times=1, path="/api/v2/deals", method="POST")
        with pytest.raises(RetriableError):
            conn.create({"title": "Acme"}, stamp=(stamp := new_stamp()))
        assert conn.find_by_stamp(stamp) is None
        assert conn.create({"title": "Acme"}, stamp=stamp).stamp == stamp


def test_an_update_of_a_deleted_deal_is_stale(emulator: PipedriveEmulator, token: str) -> None:
    with make_connector(emulator) as conn:
        created = conn.create({"title": "Acme"}, stamp=new_stamp())
        emulator.delete_deal(int(created.ref))
        with pytest.raises(StaleVersion) as stale:
            conn.update(created.ref, {"title": "x"}, expected_version=created.version)
        assert stale.value.actual is None


def test_a_batch_of_edits_reads_the_versions_of_100_deals_a_request(
    emulator: PipedriveEmulator, token: str
) -> None:
    """update_many: one ``GET /api/v2/deals?ids=`` per 100 deals (with the participant count
    the version includes), then one PATCH each."""
    with make_connector(emulator) as conn:
        created = [conn.create({"title": f"Deal {i}"}, stamp=new_stamp()) for i in range(102)]
        emulator.controls.reset()
        results = conn.update_many(
            {c.ref: {"title": f"Renamed {c.ref}"} for c in created},
            {c.ref: c.version for c in created},
        )
        c = emulator.controls
        assert c.count() == 102 + 2
        assert c.count("GET", "/api/v2/deals") == 2
        listings = [dict(e.params) for e in c.log if e.method == "GET"]
        assert [len(q["ids"].split(",")) for q in listings] == [100, 2]
        assert all(q["include_fields"] == "participants_count" for q in listings)
        for ref in (created[0].ref, created[101].ref):
            result = results[ref]
            assert isinstance(result, RemoteRecord), result
            got = conn.get(ref)
            assert got is not None
            assert (result.version, result.fields["title"]) == (got.version, f"Renamed {ref}")


def test_a_batch_leaves_a_deal_changed_since_the_pull_alone(
    emulator: PipedriveEmulator, token: str
) -> None:
    """A person's edit, or a participant they added (it moves the count in the version),
    makes that deal StaleVersion: not written. A deleted deal takes update(): StaleVersion."""
    with make_connector(emulator) as conn:
        created = [conn.create({"title": f"Deal {i}"}, stamp=new_stamp()) for i in range(4)]
        edited, joined, gone, kept = (c.ref for c in created)
        remote_edit(emulator, conn, edited, title="Jane's title")
        emulator.add_participant(int(joined), emulator.add_person("Wang Fang"), user_id=2)
        emulator.delete_deal(int(gone))
        emulator.controls.reset()
        results = conn.update_many(
            {c.ref: {"title": "bridge"} for c in created}, {c.ref: c.version for c in created}
        )
        for ref in (edited, joined, gone):
            assert isinstance(results[ref], StaleVersion), (ref, results[ref])
        assert results[gone].actual is None  # type: ignore[union-attr]
        patched = [e.path for e in emulator.controls.log if e.method == "PATCH"]
        assert patched == [f"/api/v2/deals/{kept}"]
        assert emulator.deals[int(edited)]["title"] == "Jane's title"
        assert emulator.deals[int(joined)]["title"] == "Deal 1"
        assert isinstance(results[kept], RemoteRecord)


def test_values_pipedrive_refuses_are_skippable(emulator: PipedriveEmulator, token: str) -> None:
    with make_connector(emulator) as conn:
        created = conn.create({"title": "Acme"}, stamp=new_stamp())
        with pytest.raises(SkippableRecord, match="not one of its options"):
            conn.update(created.ref, {"Region": "Mars"}, expected_version=None)
        with pytest.raises(SkippableRecord, match="not a Pipedrive user"):
            conn.update(created.ref, {"owner": {"email": "nobody@x.org"}}, expected_version=None)


def test_creating_without_the_stamp_field_says_how_to_fix_it(token: str) -> None:
    with PipedriveEmulator(seed=False) as emu, make_connector(emu, stamp_field="Bridge key") as c:
        assert "no 'Bridge key' deal field" in c.check()
        with pytest.raises(Exception, match="add a text deal field"):
            c.create({"title": "Acme"}, stamp=new_stamp())


# --------------------------------------------------------------------------- history


def test_history_is_the_deal_flow_with_stage_names_and_real_times(
    emulator: PipedriveEmulator, token: str
) -> None:
    with make_connector(emulator) as conn:
        deal = emulator.add_deal(
            title="Acme", stage_id=emulator.stage_id("Sales pipeline", "Lead in")
        )
        clock = emulator.clock
        assert isinstance(clock, SteppingClock)
        moved_at = clock.now + timedelta(seconds=1)
        emulator.edit_deal(
            deal, user_id=2, stage_id=emulator.stage_id("Sales pipeline", "Qualified")
        )
        emulator.edit_deal(deal, user_id=3, status="won")
        entries = conn.history(str(deal))
        assert [(h.field, h.old, h.new, h.actor) for h in entries] == [
            (
                "stage",
                "Sales pipeline / Lead in",
                "Sales pipeline / Qualified",
                "jane@pipedrive.com",
            ),
            ("status", "open", "won", "li.wei@example.com"),
        ]
        assert entries[0].at == moved_at
        assert conn.history(str(deal), since=entries[1].at) == entries[1:]
        assert conn.history("999999") == []


# --------------------------------------------------------------------------- webhooks


def test_webhooks_register_list_deliver_with_basic_auth_and_remove(
    emulator: PipedriveEmulator, token: str
) -> None:
    received: list[tuple[bool, str | None]] = []
    done = threading.Event()

    async def receive(request: Request) -> JSONResponse:
        ok = PipedriveConnector.webhook_authorized(
            request.headers.get("authorization"), "bridge", "s3cret-hook"
        )
        received.append((ok, PipedriveConnector.webhook_ref(await request.json())))
        done.set()
        return JSONResponse({}, status_code=200 if ok else 401)

    receiver = EmulatorServer(Starlette(routes=[Route("/hook", receive, methods=["POST"])]))
    with receiver, make_connector(emulator) as conn:
        hook = conn.register_webhook(
            f"{receiver.base_url}/hook", username="bridge", password="s3cret-hook"
        )
        assert [h["id"] for h in conn.list_webhooks()] == [hook["id"]]
        deal = conn.create({"title": "Acme"}, stamp=new_stamp())
        emulator.flush_webhooks()
        assert done.wait(5)
        assert received == [(True, deal.ref)]
        assert conn.list_webhooks()[0]["last_http_status"] == 200
        assert conn.remove_webhook(hook["id"]) is True
        assert conn.remove_webhook(hook["id"]) is False
        assert conn.list_webhooks() == []
    assert not PipedriveConnector.webhook_authorized("Basic Zm9vOmJhcg==", "bridge", "x")
    assert not PipedriveConnector.webhook_authorized(None, "bridge", "x")


# --------------------------------------------------------------------------- helpers


def pull_all(
    conn: PipedriveConnector, cursor: Cursor, signpost: datetime, *, full: bool = False
) -> tuple[list[RemoteRecord], Cursor]:
    records: list[RemoteRecord] = []
    pages: list[Page] = list(conn.pull(cursor, signpost=signpost, full=full))
    for page in pages:
        records.extend(page.records)
        cursor = page.cursor or cursor
    return records, cursor


# --------------------------------------------------------------------------- writing activities


def activity_writes(emu: PipedriveEmulator) -> int:
    return sum(emu.controls.count(m, "/api/v2/activities") for m in ("POST", "PATCH", "DELETE"))


def test_next_steps_and_actions_are_written_as_activities_and_read_back_unchanged(
    emulator: PipedriveEmulator, token: str
) -> None:
    with make_connector(emulator) as conn:
        deal = emulator.add_deal(
            title="Acme", stage_id=emulator.stage_id("Sales pipeline", "Lead in")
        )
        emulator.add_activity(
            deal, user_id=3, subject="Kick-off", due_date="2024-03-20", owner_id=3
        )
        emulator.add_activity(deal, user_id=3, subject="Old plan", owner_id=3)
        steps = [
            {"what": "Kick-off", "owner": {"name": "Li Wei", "email": "li.wei@example.com"},
             "due": "2024-03-20"},
            {"what": "Send proposal", "owner": {"name": "Li W.", "email": "li.wei@example.com"},
             "due": "2024-04-02"},
            {"what": "Legal review", "owner": {"name": "Pat", "email": "pat@partner.example"},
             "due": None},
            {"what": "Follow up", "owner": None, "due": "2024-04-09"},
        ]  # fmt: skip
        actions = [
            {"what": "Discovery call", "at": "2024-02-20T10:30:00Z", "by": "li.wei@example.com"},
            {"what": "Demo", "at": "2024-02-27T15:00:00Z", "by": "someone@elsewhere.example"},
        ]
        changes = {"next_steps": steps, "actions": actions}
        record = conn.update(str(deal), changes, expected_version=None)
        assert (record.fields["next_steps"], record.fields["actions"]) == (steps, actions)
        live = [a for a in emulator.activities.values() if not a["is_deleted"]]
        assert "Old plan" not in {a["subject"] for a in live}
        (proposal,) = [a for a in live if a["subject"] == "Send proposal"]
        assert (proposal["owner_id"], proposal["done"]) == (3, False)
        assert sorted(a["subject"] for a in live if a["done"]) == ["Demo", "Discovery call"]

        before = activity_writes(emulator)
        again = conn.update(str(deal), changes, expected_version=record.version)
        assert activity_writes(emulator) == before, "the same lists written again change nothing"
        assert again.version == record.version

        # A new order reads back as written; a person reassigning an activity is seen.
        steps.reverse()
        record = conn.update(str(deal), {"next_steps": steps}, expected_version=None)
        assert record.fields["next_steps"] == steps
        (proposal,) = [
            a for a in emulator.activities.values()
            if a["subject"] == "Send proposal" and not a["is_deleted"]
        ]  # fmt: skip
        emulator.edit_activity(proposal["id"], user_id=2, owner_id=2)
        got = conn.get(str(deal))
        assert got is not None
        owners = {s["what"]: s["owner"] for s in got.fields["next_steps"]}
        assert owners["Send proposal"] == {"name": "Jane Doe", "email": "jane@pipedrive.com"}


def test_a_deal_created_with_next_steps_has_them(emulator: PipedriveEmulator, token: str) -> None:
    emulator.add_deal_field("Salesbridge ID", "varchar")
    with make_connector(emulator) as conn:
        step = {"what": "Call back", "owner": None, "due": "2024-05-01"}
        created = conn.create(
            {"title": "New", "stage": "Sales pipeline / Lead in", "next_steps": [step]},
            stamp="prj-0001",
        )
        assert created.fields["next_steps"] == [step]
        assert created.stamp == "prj-0001"


# --------------------------------------------------------------------------- stakeholders

ROLE, ATTITUDE = "Deal role", "Attitude"


def person_with(emu: PipedriveEmulator, name: str, email: str | None = None, **extra: Any) -> int:
    """A person in Pipedrive; ``role`` / ``attitude`` given as option labels."""
    custom = {}
    for field, key in ((ROLE, "role"), (ATTITUDE, "attitude")):
        if key in extra:
            custom[emu.person_field_key(field)] = emu.person_option_id(field, extra.pop(key))
    emails = [{"value": email, "primary": True}] if email else []
    return emu.add_person(name, emails=emails, custom_fields=custom, **extra)


def stakeholder(name: str, email: str | None = None, title: str | None = None,
                role: str = "other", attitude: str = "unknown") -> dict[str, Any]:  # fmt: skip
    return {"name": name, "title": title, "role": role, "attitude": attitude, "email": email}


def test_participants_read_as_stakeholders_contact_person_first(
    emulator: PipedriveEmulator, token: str
) -> None:
    org = emulator.add_organization("Acme Ltd")
    wang = person_with(emulator, "Wang Fang", "wang@acme.example", job_title="CIO", org_id=org,
                       role="Decision maker", attitude="Supportive")  # fmt: skip
    ana = person_with(emulator, "Ana Lima", "ana@acme.example", role="Economic buyer")
    bo = person_with(emulator, "Bo Chen", attitude="Opposed")
    busy = emulator.add_deal(title="Busy", org_id=org)
    emulator.add_participant(busy, ana)
    emulator.add_participant(busy, wang)
    emulator.add_participant(busy, bo)
    emulator.edit_deal(busy, person_id=wang)  # the contact reads first, wherever it was added
    alone = emulator.add_deal(title="Alone", person_id=ana)
    nobody = emulator.add_deal(title="Nobody")
    with make_connector(emulator) as conn:
        conn.check()
        emulator.controls.reset()
        records, _ = pull_all(conn, Cursor(), emulator.clock(), full=True)
        got = {r.ref: r.fields["stakeholders"] for r in records}
        assert got[str(busy)] == [
            stakeholder("Wang Fang", "wang@acme.example", "CIO", "decision_maker", "supportive"),
            stakeholder("Ana Lima", "ana@acme.example", role="economic_buyer"),
            stakeholder("Bo Chen", attitude="opposed"),
        ]
        ana_only = stakeholder("Ana Lima", "ana@acme.example", role="economic_buyer")
        assert got[str(alone)] == [ana_only]
        assert got[str(nobody)] == []
        # Only the deal with people besides its contact person costs a participants request.
        c = emulator.controls
        assert [e.path for e in c.log if "participants" in e.path] == [
            f"/v1/deals/{busy}/participants"
        ]
        assert dict(c.log[0].params)["include_fields"] == "participants_count"
        assert c.count("GET", "/api/v2/persons") == 1


def test_a_participant_added_in_pipedrive_is_an_incremental_change(
    emulator: PipedriveEmulator, token: str
) -> None:
    deal = emulator.add_deal(title="Acme", person_id=person_with(emulator, "Wang Fang"))
    with make_connector(emulator) as conn:
        _, cursor = pull_all(conn, Cursor(), emulator.clock())
        emulator.add_participant(deal, person_with(emulator, "Ana Lima", role="Champion"))
        records, cursor = pull_all(conn, cursor, emulator.clock())
        assert [[s["name"] for s in r.fields["stakeholders"]] for r in records] == [
            ["Wang Fang", "Ana Lima"]
        ]
        emulator.remove_participant(deal, emulator.participants_of(deal)[1])
        records, _ = pull_all(conn, cursor, emulator.clock())
        assert [[s["name"] for s in r.fields["stakeholders"]] for r in records] == [["Wang Fang"]]


def test_stakeholders_are_written_as_participants_and_read_back_unchanged(
    emulator: PipedriveEmulator, token: str
) -> None:
    org = emulator.add_organization("Acme Ltd")
    wang = person_with(emulator, "Wang Fang", "wang@acme.example", org_id=org, job_title="CIO")
    known = person_with(emulator, "Ana Lima", "ANA@acme.example", job_title="CFO")
    deal = emulator.add_deal(title="Acme", org_id=org, person_id=wang)
    people = [
        stakeholder("Wang Fang", "wang@acme.example", "CIO", "decision_maker", "supportive"),
        stakeholder("Ana Lima", "ana@acme.example", "CFO", "economic_buyer", "neutral"),
        stakeholder("Bo Chen", None, "Engineer", "user"),
        stakeholder("Cai Yun", "cai@partner.example", None, "blocker", "opposed"),
    ]
    with make_connector(emulator) as conn:
        record = conn.update(str(deal), {"stakeholders": people}, expected_version=None)
        assert record.fields["stakeholders"] == people
        got = conn.get(str(deal))
        assert got is not None and got.fields["stakeholders"] == people
        assert got.version == record.version
        # Ana was found by e-mail (no second Ana); Bo and Cai are new, in the deal's org.
        assert sum(p["name"] == "Ana Lima" for p in emulator.persons.values()) == 1
        ids = emulator.participants_of(deal)
        assert ids[:2] == [wang, known]
        bo, cai = (emulator.person(i) for i in ids[2:])
        assert (bo["name"], bo["org_id"], bo["job_title"]) == ("Bo Chen", org, "Engineer")
        role = emulator.person_field_key(ROLE)
        assert cai["custom_fields"][role] == emulator.person_option_id(ROLE, "Blocker")
        assert emulator.person(wang)["custom_fields"][role] == emulator.person_option_id(
            ROLE, "Decision maker"
        )

        # Written again: nothing changes, not even the version.
        log = len(emulator.controls.log)
        again = conn.update(str(deal), {"stakeholders": people}, expected_version=record.version)
        writes = [e for e in emulator.controls.log[log:] if e.method != "GET"]
        assert writes == [] and again.version == record.version

        # Bo leaves, Cai moves ahead of Ana, Wang's title changes; Cai becomes the contact.
        people = [people[3], {**people[0], "title": "CEO"}, people[1]]
        record = conn.update(str(deal), {"stakeholders": people}, expected_version=again.version)
        assert record.fields["stakeholders"] == people
        assert emulator.deal(deal)["person_id"] == cai["id"]
        assert emulator.person(wang)["job_title"] == "CEO"
        assert emulator.persons[bo["id"]]["is_deleted"] is False, "a person is never deleted"
        assert [s["name"] for s in conn.get(str(deal)).fields["stakeholders"]] == [  # type: ignore[union-attr]
            "Cai Yun", "Wang Fang", "Ana Lima"
        ]  # fmt: skip

        record = conn.update(str(deal), {"stakeholders": []}, expected_version=record.version)
        assert record.fields["stakeholders"] == []
        assert emulator.deal(deal)["person_id"] is None
        assert emulator.participants_of(deal) == []


def test_a_deal_created_with_stakeholders_has_them(emulator: PipedriveEmulator, token: str) -> None:
    people = [stakeholder("Wang Fang", "wang@acme.example", "CIO", "champion", "supportive"),
              stakeholder("Ana Lima", "ana@acme.example", None, "influencer")]  # fmt: skip
    with make_connector(emulator) as conn:
        created = conn.create(
            {"title": "New", "organization": "Acme Ltd", "stakeholders": people}, stamp=new_stamp()
        )
        assert created.fields["stakeholders"] == people
        deal = emulator.deal(int(created.ref))
        assert emulator.persons[deal["person_id"]]["org_id"] == deal["org_id"]
        got = conn.get(created.ref)
        assert got is not None and got.version == created.version


def test_a_stale_stakeholders_write_changes_nothing(
    emulator: PipedriveEmulator, token: str
) -> None:
    deal = emulator.add_deal(title="Acme", person_id=person_with(emulator, "Wang Fang"))
    with make_connector(emulator) as conn:
        before = conn.get(str(deal))
        assert before is not None
        emulator.edit_deal(deal, user_id=2, title="Acme, renamed")
        persons = len(emulator.persons)
        with pytest.raises(StaleVersion):
            conn.update(
                str(deal),
                {"stakeholders": [stakeholder("Ana Lima", "ana@acme.example")]},
                expected_version=before.version,
            )
        assert len(emulator.persons) == persons
        assert len(emulator.participants_of(deal)) == 1


def test_a_missing_role_field_fails_with_advice_unless_turned_off(
    emulator: PipedriveEmulator, token: str
) -> None:
    ana = person_with(emulator, "Ana Lima", attitude="Supportive")
    deal = emulator.add_deal(title="Acme", person_id=ana)
    emulator.remove_person_field(ROLE)
    with make_connector(emulator) as conn:
        assert "Deal role" in conn.check()
        with pytest.raises(FatalError, match=r"role_field = 'Deal role'.*Data fields > Person"):
            pull_all(conn, Cursor(), emulator.clock(), full=True)
        with pytest.raises(FatalError, match="role_field"):
            conn.update(str(deal), {"stakeholders": []}, expected_version=None)
        assert emulator.participants_of(deal) == [ana], "refused before writing anything"
    with make_connector(emulator, role_field="") as conn:
        records, _ = pull_all(conn, Cursor(), emulator.clock(), full=True)
        assert records[0].fields["stakeholders"] == [stakeholder("Ana Lima", attitude="supportive")]
        wanted = [stakeholder("Ana Lima", role="champion", attitude="neutral")]
        written = conn.update(str(deal), {"stakeholders": wanted}, expected_version=None)
        assert written.fields["stakeholders"] == [stakeholder("Ana Lima", attitude="neutral")]


def test_a_mapping_without_stakeholders_reads_no_people(
    emulator: PipedriveEmulator, token: str
) -> None:
    emulator.add_deal(title="Acme", person_id=person_with(emulator, "Wang Fang"))
    emulator.remove_person_field(ROLE)  # not needed: not required either
    with make_connector(emulator) as conn:
        conn.select(["title", "stage"])
        records, _ = pull_all(conn, Cursor(), emulator.clock(), full=True)
        assert "stakeholders" not in records[0].fields
        assert emulator.controls.count("GET", "/api/v2/persons") == 0
        assert emulator.controls.count("GET", "/api/v2/personFields") == 0


def test_a_push_is_the_version_read_and_the_patch(emulator: PipedriveEmulator, token: str) -> None:
    """The PATCH answer carries the new version; organization, people and activities of the
    record returned are read only when looked at."""
    org = emulator.add_organization("Acme Ltd")
    deal = emulator.add_deal(title="Acme", org_id=org, person_id=person_with(emulator, "Wang"))
    emulator.add_activity(deal, subject="Call", due_date="2024-04-01")
    with make_connector(emulator) as conn:
        before = conn.get(str(deal))
        assert before is not None
        emulator.controls.reset()
        record = conn.update(str(deal), {"title": "Acme 2"}, expected_version=before.version)
        assert [(e.method, e.path) for e in emulator.controls.log] == [
            ("GET", f"/api/v2/deals/{deal}"),
            ("PATCH", f"/api/v2/deals/{deal}"),
        ]
        assert record.fields["title"] == "Acme 2"
        assert emulator.controls.count() == 2, "the deal's own fields need no read"
        assert record.fields["organization"] == "Acme Ltd"
        got = conn.get(str(deal))
        assert got is not None
        assert (record.version, dict(record.fields)) == (got.version, dict(got.fields))
        assert copy.deepcopy(record.fields) == got.fields
        with pytest.raises(StaleVersion):
            conn.update(str(deal), {"title": "Acme 3"}, expected_version=before.version)


def test_a_role_the_field_has_no_option_for_is_skipped_before_any_write(
    emulator: PipedriveEmulator, token: str
) -> None:
    emulator.remove_person_field(ROLE)
    emulator.add_person_field(ROLE, "enum", ["Champion", "Other"])
    deal = emulator.add_deal(title="Acme")
    people = [stakeholder("Ana Lima", "ana@acme.example", role="champion"),
              stakeholder("Cai Yun", "cai@acme.example", role="blocker")]  # fmt: skip
    with make_connector(emulator) as conn:
        with pytest.raises(SkippableRecord, match="'Deal role' has no option for role 'blocker'"):
            conn.update(str(deal), {"stakeholders": people}, expected_version=None)
        assert emulator.persons == {} and emulator.participants_of(deal) == []
        record = conn.update(str(deal), {"stakeholders": people[:1]}, expected_version=None)
        assert record.fields["stakeholders"] == people[:1]


def test_without_participants_only_the_contact_person_is_read_and_written(
    emulator: PipedriveEmulator, token: str
) -> None:
    deal = emulator.add_deal(title="Acme", person_id=person_with(emulator, "Wang Fang"))
    ana = person_with(emulator, "Ana Lima")
    emulator.add_participant(deal, ana)
    with make_connector(emulator, participants=False) as conn:
        records, _ = pull_all(conn, Cursor(), emulator.clock(), full=True)
        assert [s["name"] for s in records[0].fields["stakeholders"]] == ["Wang Fang"]
        assert emulator.controls.count("GET", f"/v1/deals/{deal}/participants") == 0
        two = [stakeholder("Wang Fang"), stakeholder("Bo Chen")]
        with pytest.raises(SkippableRecord, match="`participants` is off"):
            conn.update(str(deal), {"stakeholders": two}, expected_version=None)
        record = conn.update(str(deal), {"stakeholders": two[1:]}, expected_version=None)
        assert record.fields["stakeholders"] == two[1:]
        bo = emulator.deal(deal)["person_id"]
        assert emulator.participants_of(deal)[1:] == [ana, bo], "participants left as they were"


def test_a_census_reads_participants_again_only_for_deals_that_changed(
    emulator: PipedriveEmulator, token: str
) -> None:
    deals = [emulator.add_deal(title=f"Deal {i}", person_id=person_with(emulator, f"P{i}"))
             for i in range(3)]  # fmt: skip
    for deal in deals:
        emulator.add_participant(deal, person_with(emulator, f"Other {deal}"))
    with make_connector(emulator) as conn:
        pull_all(conn, Cursor(), emulator.clock(), full=True)
        parts = [e for e in emulator.controls.log if e.path.endswith("/participants")]
        assert len(parts) == 3
        emulator.controls.reset()
        records, _ = pull_all(conn, Cursor(), emulator.clock(), full=True)
        assert [e for e in emulator.controls.log if e.path.endswith("/participants")] == []
        assert all(len(r.fields["stakeholders"]) == 2 for r in records)
        emulator.add_participant(deals[1], person_with(emulator, "Newcomer"))
        emulator.controls.reset()
        records, _ = pull_all(conn, Cursor(), emulator.clock(), full=True)
        assert [e.path for e in emulator.controls.log if e.path.endswith("/participants")] == [
            f"/v1/deals/{deals[1]}/participants"
        ]
        got = {r.ref: [s["name"] for s in r.fields["stakeholders"]] for r in records}
        assert got[str(deals[1])] == ["P1", f"Other {deals[1]}", "Newcomer"]
