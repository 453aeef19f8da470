"""The Salesforce connector on the emulator: the contract, auth, errors, pulls, batch writes.

Request counts are read twice: from the connector's own HTTP counter (every attempt, the
login included) and from the emulator's request log.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from bridge.errors import AuthError, FatalError, RateLimited, SkippableRecord, StaleVersion
from bridge.mapping import MappingSpec, load_mapping
from connectors.base import Connector, Cursor, RemoteRecord
from connectors.memory import SteppingClock
from connectors.salesforce.connector import SalesforceConfig, SalesforceConnector
from connectors.salesforce.emulator import (
    CONTACT_ROLES,
    SalesforceEmulator,
    SalesforceOrg,
    ValidationRule,
)
from tests.contract import ConnectorContract, new_stamp

REPO = Path(__file__).resolve().parent.parent
MAPPING = REPO / "mappings" / "salesforce.toml"
START = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
SYNC_USER = "sync@acme.example"
FIELDS = ("Name", "StageName", "CloseDate", "Amount", "CurrencyIsoCode", "Description")
ENV = {"SF_TEST_PASSWORD": "s3cret-pw", "SF_TEST_TOKEN": "TOKEN123", "SF_TEST_SECRET": "csecret"}


@pytest.fixture
def salesforce_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The credentials the test configs refer to (``env:SF_TEST_...``)."""
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)


def make_org(clock: Any = None) -> SalesforceOrg:
    """An org with an integration user, a connected app and two sales reps."""
    org = SalesforceOrg(clock=clock or SteppingClock(START))
    org.add_user(
        SYNC_USER, SYNC_USER, "Sync Bot", password=ENV["SF_TEST_PASSWORD"],
        security_token=ENV["SF_TEST_TOKEN"],
    )  # fmt: skip
    org.add_user("li.wei@acme.example", "li.wei@example.com", "Li Wei")
    org.add_user("bob@acme.example", "bob.lee@example.com", "Bob Lee")
    org.add_client("salesbridge-app", ENV["SF_TEST_SECRET"])
    return org


def config(emulator: SalesforceEmulator, **settings: Any) -> SalesforceConfig:
    return SalesforceConfig.model_validate(
        {
            "kind": "salesforce",
            "login_url": emulator.base_url,
            "username": SYNC_USER,
            "password": "env:SF_TEST_PASSWORD",
            "security_token": "env:SF_TEST_TOKEN",
            "client_id": "salesbridge-app",
            "client_secret": "env:SF_TEST_SECRET",
            **settings,
        }
    )


def connect(emulator: SalesforceEmulator, **settings: Any) -> SalesforceConnector:
    """A connector whose retries wait for nothing (the waits are recorded in ``.waits``)."""
    waits: list[float] = []
    connector = SalesforceConnector("crm", config(emulator, **settings), sleep=waits.append)
    connector.waits = waits  # type: ignore[attr-defined]
    return connector


@contextmanager
def running(org: SalesforceOrg, **options: Any) -> Iterator[SalesforceEmulator]:
    options.setdefault("min_batch_size", 1)
    with SalesforceEmulator(org, **options) as emulator:
        yield emulator


def opportunity(**values: Any) -> dict[str, Any]:
    return {"Name": "Acme rollout", "StageName": "Prospecting", "CloseDate": "2024-06-30", **values}


def spec_for(connector: SalesforceConnector) -> MappingSpec:
    spec = load_mapping(MAPPING, connector.discover(), connector="salesforce")
    connector.select(spec.remote_fields_needed)
    return spec


# --------------------------------------------------------------------------- the contract


@pytest.mark.usefixtures("salesforce_env")
class TestSalesforceConnector(ConnectorContract):
    kind = "salesforce"
    editable_field = "StageName"
    editable_values = ("Prospecting", "Negotiation/Review")
    keeps_history = True
    unknown_ref = "006999999999999AAA"
    clock_resolution = 0.0  # the org's clock steps a second per write

    @pytest.fixture
    def connector(self) -> Iterator[Connector[Any]]:
        self.org = make_org()
        with running(self.org) as emulator, connect(emulator, page_size=2) as connector:
            connector.select(FIELDS)
            yield connector

    def sample_fields(self) -> dict[str, Any]:
        return {
            "Name": "Acme rollout", "StageName": "Prospecting", "CloseDate": "2024-06-30",
            "Amount": 1200.5, "CurrencyIsoCode": "EUR", "Description": 'He said "ok" ⁰⁴⁵',
        }  # fmt: skip

    def remote_edit(self, connector: Connector[Any], ref: str, fields: Mapping[str, Any]) -> None:
        self.org.update("Opportunity", ref, fields, actor=self.org.user_id("li.wei@acme.example"))

    def server_now(self, connector: Connector[Any]) -> datetime:
        return self.org.clock()  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def org() -> SalesforceOrg:
    return make_org()


@pytest.fixture
def emulator(org: SalesforceOrg) -> Iterator[SalesforceEmulator]:
    with running(org) as emulator:
        yield emulator


@pytest.fixture
def crm(emulator: SalesforceEmulator, salesforce_env: None) -> Iterator[SalesforceConnector]:
    with connect(emulator, page_size=2) as connector:
        connector.select(FIELDS)
        yield connector


def pull_all(
    connector: SalesforceConnector, cursor: Cursor, signpost: datetime, *, full: bool = False
) -> tuple[list[RemoteRecord], Cursor]:
    records: list[RemoteRecord] = []
    for page in connector.pull(cursor, signpost=signpost, full=full):
        records.extend(page.records)
        cursor = page.cursor or cursor
    return records, cursor


# --------------------------------------------------------------------------- request counts


def test_an_incremental_pull_without_changes_costs_one_query(
    org: SalesforceOrg, emulator: SalesforceEmulator, salesforce_env: None
) -> None:
    crm = connect(emulator)  # default batch size: the overlap's re-reads fit one response
    crm.select(FIELDS)
    for i in range(5):
        org.insert("Opportunity", opportunity(Name=f"Deal {i}"))
    records, cursor = pull_all(crm, Cursor(), org.clock())
    assert len(records) == 5
    emulator.controls.reset()
    crm.http.counter.snapshot(reset=True)

    again, _ = pull_all(crm, cursor, org.clock() + timedelta(hours=1))
    assert crm.http.counter.snapshot().total == 1
    assert emulator.controls.count() == 1
    assert emulator.controls.count("GET", "/services/data/v59.0/queryAll") == 1
    assert {r.version for r in again} <= {r.version for r in records}  # the overlap re-reads


def test_500_changed_projects_are_written_in_9_requests(
    org: SalesforceOrg, emulator: SalesforceEmulator, crm: SalesforceConnector
) -> None:
    """Per 200 records: a query of their versions, the collections PATCH, a query reading
    them back (their new versions)."""
    spec = spec_for(crm)
    refs = [
        org.insert("Opportunity", opportunity(Name=f"Deal {i}", Amount=100.0)) for i in range(500)
    ]
    changes = {
        ref: spec.to_remote(
            {"amount": {"amount": f"{1000 + i}.5", "currency": "EUR"}, "stage": "negotiation"},
            ref=ref,
        )
        for i, ref in enumerate(refs)
    }
    expected = {ref: (org.get("Opportunity", ref) or {})["SystemModstamp"] for ref in refs}
    emulator.controls.reset()
    crm.http.counter.snapshot(reset=True)

    results = crm.update_many(changes, expected)

    assert emulator.controls.count() == 9
    assert emulator.controls.count("PATCH", "/services/data/v59.0/composite/sobjects") == 3
    assert emulator.controls.count("GET", "/services/data/v59.0/query") == 6
    assert crm.http.counter.snapshot().total == 9
    assert all(isinstance(r, RemoteRecord) for r in results.values()), results
    stored = org.get("Opportunity", refs[499])
    assert stored is not None
    assert (stored["Amount"], stored["CurrencyIsoCode"], stored["StageName"]) == (
        1499.5, "EUR", "Negotiation/Review",
    )  # fmt: skip
    last = results[refs[499]]
    assert isinstance(last, RemoteRecord)
    assert last.version == crm.get(refs[499]).version  # type: ignore[union-attr]


def test_a_batch_update_leaves_a_record_edited_since_the_pull_alone(
    org: SalesforceOrg, emulator: SalesforceEmulator, crm: SalesforceConnector
) -> None:
    """The lost update the collections write used to make: a person's edit between the
    bridge's pull and its push is kept; that record is StaleVersion, the others are written."""
    spec = spec_for(crm)
    refs = [org.insert("Opportunity", opportunity(Name=f"Deal {i}")) for i in range(3)]
    pulled = {ref: crm.get(ref) for ref in refs}
    org.update(
        "Opportunity", refs[1], {"StageName": "Closed Lost"},
        actor=org.user_id("li.wei@acme.example"),
    )  # fmt: skip
    emulator.controls.reset()

    results = crm.update_many(
        {ref: spec.to_remote({"stage": "negotiation"}) for ref in refs},
        {ref: record.version for ref, record in pulled.items() if record is not None},
    )

    assert emulator.controls.count() == 3  # versions, PATCH of two, read-back
    stale = results[refs[1]]
    assert isinstance(stale, StaleVersion)
    assert stale.expected == pulled[refs[1]].version  # type: ignore[union-attr]
    assert (org.get("Opportunity", refs[1]) or {})["StageName"] == "Closed Lost"
    for ref in (refs[0], refs[2]):
        written = results[ref]
        assert isinstance(written, RemoteRecord)
        assert (org.get("Opportunity", ref) or {})["StageName"] == "Negotiation/Review"
        assert written.version == crm.get(ref).version  # type: ignore[union-attr]


# --------------------------------------------------------------------------- writes


def test_create_is_an_upsert_on_the_external_id(
    org: SalesforceOrg, crm: SalesforceConnector
) -> None:
    stamp = new_stamp()
    first = crm.create(opportunity(), stamp=stamp)
    again = crm.create(opportunity(Amount=5.0), stamp=stamp)  # a retried create after a crash
    assert again.ref == first.ref
    assert again.fields["Amount"] == 5.0
    stamped = [r for r in org.records["Opportunity"].values() if r["Canonical_Id__c"] == stamp]
    assert len(stamped) == 1


def test_create_many_upserts_in_collections(org: SalesforceOrg, crm: SalesforceConnector) -> None:
    items = {new_stamp(): opportunity(Name=f"Deal {i}") for i in range(3)}
    items["bad"] = opportunity(StageName="No such stage")
    results = crm.create_many(items)
    created = {k: v for k, v in results.items() if isinstance(v, RemoteRecord)}
    assert len(created) == 3
    assert all(r.stamp == k for k, r in created.items())
    assert isinstance(results["bad"], SkippableRecord)
    assert "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST" in results["bad"].reason
    assert {k: v.ref for k, v in crm.create_many(items).items() if isinstance(v, RemoteRecord)} == {
        k: v.ref for k, v in created.items()
    }, "a repeated batch creates nothing new"


def test_owner_is_written_by_email_and_the_account_by_name(
    org: SalesforceOrg, crm: SalesforceConnector
) -> None:
    spec = spec_for(crm)
    made = crm.create(opportunity(), stamp=new_stamp())
    remote = spec.to_remote(
        {"owner": {"name": "Bob Lee", "email": "bob.lee@example.com"}, "customer.name": "Globex"}
    )
    updated = crm.update(made.ref, remote, expected_version=made.version)
    assert updated.fields["OwnerId"]["email"] == "bob.lee@example.com"
    assert updated.fields["Account.Name"] == "Globex"
    accounts = [a for a in org.records["Account"].values() if a["Name"] == "Globex"]
    assert len(accounts) == 1
    unknown = spec.to_remote({"owner": {"name": "Nobody", "email": "nobody@example.com"}})
    with pytest.raises(SkippableRecord, match=r"no active Salesforce user .*nobody@example\.com"):
        crm.update(made.ref, unknown, expected_version=None)


def test_a_validation_rule_refusing_a_stage_change_is_a_skippable_record(
    org: SalesforceOrg, crm: SalesforceConnector
) -> None:
    org.add_validation_rule(
        ValidationRule(
            "Opportunity",
            "Closed_Won_needs_amount",
            "A won opportunity needs an amount.",
            lambda old, new: new["StageName"] == "Closed Won" and not new["Amount"],
            field="Amount",
        )
    )
    made = crm.create(opportunity(), stamp=new_stamp())
    with pytest.raises(SkippableRecord) as refused:
        crm.update(made.ref, {"StageName": "Closed Won"}, expected_version=made.version)
    assert "FIELD_CUSTOM_VALIDATION_EXCEPTION" in refused.value.reason
    assert "A won opportunity needs an amount." in refused.value.reason
    got = crm.get(made.ref)
    assert got is not None
    assert got.fields["StageName"] == "Prospecting"
    results = crm.update_many({made.ref: {"StageName": "Closed Won"}})
    assert isinstance(results[made.ref], SkippableRecord)
    assert "FIELD_CUSTOM_VALIDATION_EXCEPTION" in str(results[made.ref])


def test_an_update_of_a_deleted_record_is_stale(
    org: SalesforceOrg, crm: SalesforceConnector
) -> None:
    made = crm.create(opportunity(), stamp=new_stamp())
    org.delete("Opportunity", made.ref)
    with pytest.raises(StaleVersion) as stale:
        crm.update(made.ref, {"Name": "x"}, expected_version=made.version)
    assert stale.value.actual is None
    assert isinstance(crm.update_many({made.ref: {"Name": "x"}})[made.ref], StaleVersion)


# --------------------------------------------------------------------------- pulls


def test_pull_pages_by_next_records_url_and_reads_deletions(
    org: SalesforceOrg, emulator: SalesforceEmulator, crm: SalesforceConnector
) -> None:
    refs = [org.insert("Opportunity", opportunity(Name=f"Deal {i}")) for i in range(5)]
    pages = list(crm.pull(Cursor(), signpost=org.clock()))
    assert [len(p.records) for p in pages] == [2, 2, 1]
    assert emulator.controls.count("GET", "/services/data/v59.0/queryAll") == 3  # 1 + 2 more
    cursor = pages[-1].cursor
    assert cursor is not None
    org.delete("Opportunity", refs[0])
    records, _ = pull_all(crm, cursor, org.clock())
    assert [(r.ref, r.deleted) for r in records if r.deleted] == [(refs[0], True)]
    census, _ = pull_all(crm, Cursor(), org.clock(), full=True)
    assert refs[0] not in {r.ref for r in census}


def test_only_the_mapped_fields_are_selected(
    emulator: SalesforceEmulator, crm: SalesforceConnector, org: SalesforceOrg
) -> None:
    spec_for(crm)
    emulator.controls.reset()
    pull_all(crm, Cursor(), org.clock())
    query = dict(emulator.controls.log[0].params)["q"]
    selected = query.rpartition(" FROM Opportunity ")[0]
    assert "StageName" in selected and "Region__c" in selected
    for unmapped in ("LeadSource", "TrackingNumber__c", "ExpectedRevenue", "Fiscal"):
        assert unmapped not in selected


def test_cursor_times_are_aware_and_capped_at_the_signpost(
    org: SalesforceOrg, crm: SalesforceConnector
) -> None:
    org.insert("Opportunity", opportunity())
    signpost = org.clock() - timedelta(hours=1)
    _, cursor = pull_all(crm, Cursor(), signpost)
    assert datetime.fromisoformat(cursor.positions[""]) == signpost
    with pytest.raises(ValueError, match="timezone-aware"):
        list(crm.pull(cursor, signpost=datetime(2024, 1, 1)))


def test_stakeholders_and_tasks_are_read_from_child_records(
    org: SalesforceOrg, crm: SalesforceConnector
) -> None:
    spec = spec_for(crm)
    ref = org.insert("Opportunity", opportunity())
    contact = org.insert("Contact", {"FirstName": "Mei", "LastName": "Chen", "Title": "CFO",
                                     "Email": "mei@globex.example"})  # fmt: skip
    org.insert("OpportunityContactRole", {"OpportunityId": ref, "ContactId": contact,
                                          "Role": "Economic Buyer", "IsPrimary": True})  # fmt: skip
    owner = org.user_id("li.wei@acme.example")
    org.insert("Task", {"WhatId": ref, "Subject": "Discovery call", "Status": "Completed",
                        "OwnerId": owner})  # fmt: skip
    org.insert("Task", {"WhatId": ref, "Subject": "Send proposal", "ActivityDate": "2024-04-02",
                        "OwnerId": owner})  # fmt: skip
    record = crm.get(ref)
    assert record is not None
    values = spec.to_canonical(record)
    assert values["stakeholders"] == [
        {"name": "Mei Chen", "title": "CFO", "email": "mei@globex.example",
         "role": "economic_buyer", "attitude": "unknown"}
    ]  # fmt: skip
    assert [a["what"] for a in values["actions"]] == ["Discovery call"]
    assert values["actions"][0]["by"] == "li.wei@example.com"
    assert values["next_steps"] == [
        {"what": "Send proposal", "owner": {"name": "Li Wei", "email": "li.wei@example.com"},
         "due": "2024-04-02"}
    ]  # fmt: skip


def test_history_has_stage_changes_with_their_real_times(
    org: SalesforceOrg, crm: SalesforceConnector
) -> None:
    ref = org.insert("Opportunity", opportunity())
    li = org.user_id("li.wei@acme.example")
    org.update("Opportunity", ref, {"StageName": "Qualification"}, actor=li)
    org.update("Opportunity", ref, {"CloseDate": "2024-09-30"}, actor=li)
    stored = org.get("Opportunity", ref)
    assert stored is not None
    entries = crm.history(ref)
    stages = [(e.old, e.new, e.actor) for e in entries if e.field == "StageName"]
    assert stages == [(None, "Prospecting", "admin@acme.example"),
                      ("Prospecting", "Qualification", "li.wei@example.com")]  # fmt: skip
    pushes = [(e.old, e.new) for e in entries if e.field == "CloseDate"]
    assert pushes[-1] == ("2024-06-30", "2024-09-30")
    assert all(e.at.tzinfo is not None for e in entries)
    assert entries[-1].at == datetime.fromisoformat(
        stored["LastModifiedDate"].replace("+0000", "+00:00")
    )


# --------------------------------------------------------------------------- auth and faults


def test_an_expired_session_logs_in_again_once(
    org: SalesforceOrg, emulator: SalesforceEmulator, crm: SalesforceConnector
) -> None:
    made = crm.create(opportunity(), stamp=new_stamp())
    org.expire_sessions()
    assert crm.get(made.ref) is not None
    assert emulator.controls.count("POST", "/services/oauth2/token") == 2
    assert emulator.controls.count(status=401) == 1


def test_an_expired_access_token_is_an_auth_error(
    org: SalesforceOrg, emulator: SalesforceEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SF_TEST_ACCESS", org.issue_token(SYNC_USER))
    settings = {"access_token": "env:SF_TEST_ACCESS", "instance_url": emulator.base_url}
    cfg = SalesforceConfig.model_validate({"kind": "salesforce", **settings})
    with SalesforceConnector("crm", cfg) as crm:
        assert "as an access token" in crm.check()
        org.expire_sessions()
        with pytest.raises(AuthError, match="renew access_token"):
            crm.check()


def test_wrong_credentials_are_an_auth_error(
    emulator: SalesforceEmulator, salesforce_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SF_TEST_PASSWORD", "wrong")
    with connect(emulator) as crm, pytest.raises(AuthError, match="authentication failure"):
        crm.check()
    assert ENV["SF_TEST_SECRET"] not in repr(crm.http.counter.snapshot())


def test_429_and_503_are_retried_and_counted(
    org: SalesforceOrg, emulator: SalesforceEmulator, crm: SalesforceConnector
) -> None:
    org.insert("Opportunity", opportunity())
    crm.check()
    emulator.controls.fail(429, path="/services/data/v59.0/queryAll", retry_after=3)
    emulator.controls.fail(503, path="/services/data/v59.0/queryAll")
    records, _ = pull_all(crm, Cursor(), org.clock())
    assert len(records) == 1
    stats = crm.http.counter.snapshot()
    assert (stats.rate_limited, stats.by_class.get("5xx")) == (1, 1)
    assert crm.waits[0] == 3  # type: ignore[attr-defined]


def test_request_limit_exceeded_is_rate_limited(
    emulator: SalesforceEmulator, crm: SalesforceConnector
) -> None:
    crm.check()
    emulator.controls.fail(403, path="/services/data/v59.0/query", message=(
        "REQUEST_LIMIT_EXCEEDED: TotalRequests Limit exceeded."))  # fmt: skip
    with pytest.raises(RateLimited, match="REQUEST_LIMIT_EXCEEDED"):
        crm.get("006000000000001AAA")


def test_a_post_is_not_retried_on_5xx(
    emulator: SalesforceEmulator, crm: SalesforceConnector
) -> None:
    crm.check()
    emulator.controls.fail(503, path="/services/data/v59.0/sobjects/Account", method="POST")
    with pytest.raises(Exception, match="503"):
        crm.update_many({"006000000000001AAA": {"Account.Name": "Initech"}})
    assert emulator.controls.count("POST", "/services/data/v59.0/sobjects/Account") == 1


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"login_url": "http://login.example.com"}, "https://"),
        ({"username": None}, "access_token and instance_url"),
        ({"access_token": "env:X", "instance_url": None}, "instance_url"),
        ({"password": "hunter2"}, "literal secret"),
    ],
)
def test_bad_configs_say_what_to_fix(settings: dict[str, Any], message: str) -> None:
    base = {
        "kind": "salesforce", "login_url": "https://acme.my.salesforce.com",
        "username": "u", "password": "env:P", "client_id": "c", "client_secret": "env:S",
    }  # fmt: skip
    with pytest.raises(ValueError, match=message):
        SalesforceConfig.model_validate({**base, **settings})


# --------------------------------------------------------------------------- writing children

CHILD_FIELDS = ("Name", "OpportunityContactRoles", "Tasks.Completed", "Tasks.Open")


def writes(emulator: SalesforceEmulator) -> int:
    return sum(emulator.controls.count(m) for m in ("POST", "PATCH", "DELETE"))


def test_stakeholders_are_written_as_contacts_and_roles(
    org: SalesforceOrg, emulator: SalesforceEmulator, crm: SalesforceConnector
) -> None:
    spec = spec_for(crm)
    account = org.insert("Account", {"Name": "Globex"})
    ref = org.insert("Opportunity", opportunity(AccountId=account))
    mei = org.insert("Contact", {"FirstName": "Mei", "LastName": "Chen", "Title": "CFO",
                                 "Email": "mei@globex.example"})  # fmt: skip
    org.insert("OpportunityContactRole", {"OpportunityId": ref, "ContactId": mei,
                                          "Role": "Economic Buyer"})  # fmt: skip
    sam = org.insert("Contact", {"FirstName": "Sam", "LastName": "Ortiz",
                                 "Email": "Sam@Globex.example"})  # fmt: skip
    wanted: list[dict[str, Any]] = [
        {"name": "Sam Ortiz", "title": "CTO", "role": "decision_maker", "attitude": "unknown",
         "email": "sam@globex.example"},
        {"name": "Ana Maria Lima", "title": None, "role": "technical_buyer",
         "attitude": "unknown", "email": "ana@globex.example"},
        {"name": "Kim", "title": None, "role": "other", "attitude": "unknown", "email": None},
    ]  # fmt: skip
    record = crm.update(ref, spec.to_remote({"stakeholders": wanted}), expected_version=None)
    assert spec.to_canonical(record)["stakeholders"] == wanted

    # Sam was found by e-mail (any case) and given the title; Ana and Kim were created under
    # the opportunity's account; Mei lost her role here but is still a contact.
    roles = [r for r in org.records["OpportunityContactRole"].values() if not r["IsDeleted"]]
    assert sorted(r["ContactId"] for r in roles if r["ContactId"] in (sam, mei)) == [sam]
    assert org.records["Contact"][sam]["Title"] == "CTO"
    assert not org.records["Contact"][mei]["IsDeleted"]
    (ana,) = [c for c in org.records["Contact"].values() if c["Email"] == "ana@globex.example"]
    assert (ana["FirstName"], ana["LastName"], ana["AccountId"]) == ("Ana Maria", "Lima", account)

    # Written again: nothing to do. A changed role is one PATCH.
    before = writes(emulator)
    crm.update(ref, spec.to_remote({"stakeholders": wanted}), expected_version=None)
    assert writes(emulator) == before
    wanted[0]["role"] = "champion"
    record = crm.update(ref, spec.to_remote({"stakeholders": wanted}), expected_version=None)
    assert spec.to_canonical(record)["stakeholders"] == wanted
    assert writes(emulator) == before + 1

    # A new order reads back as written (roles out of place are made again, contacts kept).
    wanted.reverse()
    record = crm.update(ref, spec.to_remote({"stakeholders": wanted}), expected_version=None)
    assert spec.to_canonical(record)["stakeholders"] == wanted
    assert len([c for c in org.records["Contact"].values() if not c["IsDeleted"]]) == 4


def test_next_steps_and_actions_are_written_as_tasks_and_read_back_unchanged(
    org: SalesforceOrg, emulator: SalesforceEmulator, crm: SalesforceConnector
) -> None:
    spec = spec_for(crm)
    ref = org.insert("Opportunity", opportunity())
    li = org.user_id("li.wei@acme.example")
    org.insert("Task", {"WhatId": ref, "Subject": "Kick-off", "ActivityDate": "2024-03-20",
                        "OwnerId": li})  # fmt: skip
    org.insert("Task", {"WhatId": ref, "Subject": "Old plan", "OwnerId": li})
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
    changes = spec.to_remote({"next_steps": steps, "actions": actions})
    record = crm.update(ref, changes, expected_version=None)
    values = spec.to_canonical(record)
    assert (values["next_steps"], values["actions"]) == (steps, actions)
    tasks = [t for t in org.records["Task"].values() if not t["IsDeleted"]]
    assert sorted(t["Subject"] for t in tasks if t["Status"] == "Completed") == [
        "Demo", "Discovery call",
    ]  # fmt: skip
    assert "Old plan" not in {t["Subject"] for t in tasks}
    (proposal,) = [t for t in tasks if t["Subject"] == "Send proposal"]
    assert (proposal["OwnerId"], proposal["IsClosed"]) == (li, False)

    before = writes(emulator)
    crm.update(ref, changes, expected_version=None)
    assert writes(emulator) == before, "the same lists written again change nothing"

    # A person reassigns a task in Salesforce: the marker no longer speaks for it.
    org.update("Task", proposal["Id"], {"OwnerId": org.user_id("bob@acme.example")})
    reread = crm.get(ref)
    assert reread is not None
    assert spec.to_canonical(reread)["next_steps"][1]["owner"] == {
        "name": "Bob Lee", "email": "bob.lee@example.com",
    }  # fmt: skip


def test_child_lists_in_batch_writes_and_creates(
    org: SalesforceOrg, crm: SalesforceConnector
) -> None:
    spec = spec_for(crm)
    refs = [org.insert("Opportunity", opportunity(Name=f"Deal {i}")) for i in range(2)]
    step = {"what": "Call back", "owner": None, "due": "2024-05-01"}
    result = crm.update_many({
        refs[0]: spec.to_remote({"next_steps": [step]}),
        refs[1]: spec.to_remote({"name": "Renamed", "next_steps": [step]}),
    })  # fmt: skip
    assert all(isinstance(r, RemoteRecord) for r in result.values()), result
    for ref in refs:
        got = crm.get(ref)
        assert got is not None and spec.to_canonical(got)["next_steps"] == [step]
    stamp = new_stamp()
    person = {"name": "Jo Park", "title": "COO", "role": "economic_buyer", "attitude": "unknown",
              "email": "jo@initech.example"}  # fmt: skip
    fields = spec.to_remote({"name": "New deal", "stage": "lead", "stakeholders": [person],
                             "expected_close_date": "2024-09-30"})  # fmt: skip
    created = crm.create(fields, stamp=stamp)
    assert spec.to_canonical(created)["stakeholders"] == [person]


# --------------------------------------------------------------------------- roles and attitudes

MEI = {"name": "Mei Chen", "title": "CFO", "role": "blocker", "attitude": "supportive",
       "email": "mei@globex.example"}  # fmt: skip


def test_an_org_lacking_the_attitude_field_or_a_role_value_is_refused_saying_what_to_add(
    org: SalesforceOrg, emulator: SalesforceEmulator, crm: SalesforceConnector
) -> None:
    org.delete_field("OpportunityContactRole", "Attitude__c")
    ref = org.insert("Opportunity", opportunity())
    spec = spec_for(crm)  # the mapping still loads: discover() reports no problem itself

    with pytest.raises(FatalError) as pulled:
        pull_all(crm, Cursor(), org.clock())
    text = str(pulled.value)
    assert "OpportunityContactRole has no field 'Attitude__c' (attitude_field)" in text
    assert "Setup > Object Manager > Opportunity Contact Role" in text
    assert 'attitude_field = ""' in text
    assert 'turn those roles into "other" and attitudes into "unknown"' in text

    # A write of stakeholders fails before anything is written; check() says the same.
    before = writes(emulator)
    with pytest.raises(FatalError, match="Attitude__c"):
        crm.update(ref, spec.to_remote({"stakeholders": [MEI]}), expected_version=None)
    assert writes(emulator) == before
    assert "OpportunityContactRole has no field 'Attitude__c'" in crm.check()

    # A Role picklist without a value for blocker: named, with the row contact_roles needs.
    standard = [v for v in CONTACT_ROLES if v != "Blocker"]
    org.set_picklist("OpportunityContactRole", "Role", standard)
    crm.discover()
    with pytest.raises(FatalError) as pulled:
        pull_all(crm, Cursor(), org.clock())
    text = str(pulled.value)
    assert "OpportunityContactRole.Role has no picklist value that contact_roles maps to " \
        "blocker: add \"Blocker\" to the Role picklist" in text  # fmt: skip
    assert '"Blocker" = "blocker"' in text and "contact_roles = {}" in text
    assert "Attitude__c" in text, "every problem at once"

    # A mapping without stakeholders needs neither.
    crm.select(FIELDS)
    records, _ = pull_all(crm, Cursor(), org.clock())
    assert [r.ref for r in records] == [ref]


def test_an_attitude_picklist_lacking_a_value_is_refused_and_its_values_read_in_words(
    org: SalesforceOrg, emulator: SalesforceEmulator, salesforce_env: None
) -> None:
    org.set_picklist("OpportunityContactRole", "Attitude__c", ["Supportive", "Neutral"])
    with connect(emulator) as crm:
        crm.discover()
        assert (
            "OpportunityContactRole.Attitude__c (attitude_field) has no picklist value for "
            'opposed: add "Opposed" to it'
        ) in crm.check()
    # Labels are read in words, any case; "Unknown" may be missing (an empty value reads so).
    org.set_picklist("OpportunityContactRole", "Attitude__c", ["SUPPORTIVE", "neutral", "Opposed"])
    with connect(emulator) as crm:
        spec = spec_for(crm)
        ref = org.insert("Opportunity", opportunity())
        people = [MEI, {**MEI, "name": "Jo Park", "email": "jo@globex.example",
                        "attitude": "unknown"}]  # fmt: skip
        record = crm.update(ref, spec.to_remote({"stakeholders": people}), expected_version=None)
        assert spec.to_canonical(record)["stakeholders"] == people
        held = {
            r["ContactId"]: r["Attitude__c"] for r in org.records["OpportunityContactRole"].values()
        }
        assert sorted(held.values(), key=str) == [None, "SUPPORTIVE"]


def test_without_an_attitude_field_attitudes_read_unknown_and_are_never_written(
    org: SalesforceOrg, emulator: SalesforceEmulator, salesforce_env: None
) -> None:
    account = org.insert("Account", {"Name": "Globex"})
    ref = org.insert("Opportunity", opportunity(AccountId=account))
    mei = org.insert("Contact", {"FirstName": "Mei", "LastName": "Chen", "Title": "CFO",
                                 "Email": "mei@globex.example"})  # fmt: skip
    role = org.insert("OpportunityContactRole", {
        "OpportunityId": ref, "ContactId": mei, "Role": "Blocker", "Attitude__c": "Opposed",
    })  # fmt: skip
    with connect(emulator, attitude_field="") as crm:
        spec = spec_for(crm)
        record = crm.get(ref)
        assert record is not None
        assert spec.to_canonical(record)["stakeholders"] == [{**MEI, "attitude": "unknown"}]

        jo = {"name": "Jo Park", "title": None, "role": "champion", "attitude": "opposed",
              "email": "jo@globex.example"}  # fmt: skip
        before = writes(emulator)
        record = crm.update(ref, spec.to_remote({"stakeholders": [MEI, jo]}), expected_version=None)
        assert writes(emulator) == before + 2, "Jo's contact and role; Mei's attitude is not kept"
        assert spec.to_canonical(record)["stakeholders"] == [
            {**MEI, "attitude": "unknown"}, {**jo, "attitude": "unknown"},
        ]  # fmt: skip
        assert org.records["OpportunityContactRole"][role]["Attitude__c"] == "Opposed"
        (new,) = [r for r in org.records["OpportunityContactRole"].values() if r["Id"] != role]
        assert (new["Role"], new["Attitude__c"]) == ("Executive Sponsor", None)

    # An org without the field at all: never queried, never written.
    org.delete_field("OpportunityContactRole", "Attitude__c")
    with connect(emulator, attitude_field="") as crm:
        spec = spec_for(crm)
        records, _ = pull_all(crm, Cursor(), org.clock())
        (got,) = [spec.to_canonical(r)["stakeholders"] for r in records]
        assert [p["attitude"] for p in got] == ["unknown", "unknown"]
        crm.update(ref, spec.to_remote({"stakeholders": [jo]}), expected_version=None)
        assert "attitude" not in crm.check()


def test_contact_roles_name_stakeholder_roles(emulator: SalesforceEmulator) -> None:
    with pytest.raises(ValidationError, match="'sponsor': not a stakeholder role"):
        config(emulator, contact_roles={"Executive Sponsor": "sponsor"})
