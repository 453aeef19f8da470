"""The Pipedrive connector on the Pipedrive emulator: the contract, then what is its own.

Pipedrive's clock has whole seconds; the emulator's clock here steps one second per reading,
so every change gets its own time without the tests sleeping.
"""

from __future__ import annotations

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
from bridge.errors import AuthError, RateLimited, RetriableError, SkippableRecord, StaleVersion
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
    organizations and one persons request per 100 ids of each deal page, metadata once."""
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
        assert metadata == 4
        assert c.count() == 3 + 1 + 3 + 3 + 4
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
