"""Fidelity of the Salesforce emulator: the official description, the client library, real data.

* sObject endpoints (``/sobjects``, ``/sobjects/{T}``, ``/sobjects/{T}/{id}``) are validated
  against Salesforce's generated OpenAPI subset in ``../shared/specs/salesforce/`` with
  openapi-core. Where the generated description contradicts the API, it is patched here, each
  patch with its reason (:data:`SPEC_EXCEPTIONS`); nothing else is relaxed.
* The subset does not describe ``query``/``queryAll``, ``describe``, ``updated``/``deleted``,
  sObject Collections, upsert by external id or the OAuth token endpoint. Those responses are
  checked against the shapes Salesforce documents (REST API Developer Guide: "Query", "Describe
  an Object", "Get Updated/Deleted Records", "sObject Collections", "OAuth 2.0 Username-Password
  Flow") by :func:`documented_shape_problems`.
* simple-salesforce, Salesforce's most used Python client, parses everything the emulator serves.
* The Trailhead sample Accounts and Opportunities load, sync, and their awkward descriptions
  come back unchanged.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from openapi_core import Config, OpenAPI
from openapi_core.contrib.requests import RequestsOpenAPIRequest, RequestsOpenAPIResponse
from requests.structures import CaseInsensitiveDict
from simple_salesforce.api import Salesforce
from simple_salesforce.exceptions import (
    SalesforceExpiredSession,
    SalesforceMalformedRequest,
    SalesforceResourceNotFound,
)

from bridge.emulator import Exchange
from bridge.mapping import load_mapping
from connectors.base import Cursor, RemoteRecord
from connectors.salesforce.connector import _PlainHttp
from connectors.salesforce.emulator import (
    SalesforceEmulator,
    SalesforceOrg,
    ValidationRule,
    load_samples,
)
from tests.contract import new_stamp
from tests.test_salesforce_connector import (
    MAPPING,
    SYNC_USER,
    connect,
    make_org,
    opportunity,
    salesforce_env,
)

__all__ = ["salesforce_env"]  # the fixture, used by name below

SPEC = "salesforce/salesforce-sobjects-oas-v59.0-opportunity-subset.json"
SPEC_EXCEPTIONS = {
    "nullable": "the generator leaves out `nullable`, while Salesforce sends null for every "
    "empty field of a record, and for associateEntityType/associateParentEntity of objects "
    "that are not associated entities",
    "date-time": "Salesforce writes datetimes as 2024-03-01T09:00:02.000+0000 (an offset "
    "without a colon), which the RFC 3339 `date-time` format rejects: checked against "
    "Salesforce's own pattern instead",
}
SF_DATETIME = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}\+0000$"
SERVER = "https://acme.my.salesforce.com/services/data/v59.0"
DATA = "/services/data/v59.0"


@pytest.fixture(scope="session")
def sobjects_spec(shared_dir: Path) -> OpenAPI:
    spec = json.loads((shared_dir / "specs" / SPEC).read_text(encoding="utf-8"))
    spec["servers"] = [{"url": SERVER}]
    schemas = spec["components"]["schemas"]
    for name, schema in schemas.items():
        if name.endswith("SObject"):
            for prop in schema["properties"].values():
                prop["nullable"] = True  # SPEC_EXCEPTIONS["nullable"]
                if prop.get("format") == "date-time":  # SPEC_EXCEPTIONS["date-time"]
                    del prop["format"]
                    prop["pattern"] = SF_DATETIME
    describes = (
        schemas["DescribeGlobalResult"]["properties"]["sobjects"]["items"],
        schemas["SObjectRootInfo"]["properties"]["objectDescribe"],
    )
    for described in describes:
        for key in ("associateEntityType", "associateParentEntity"):
            described["properties"][key]["nullable"] = True  # SPEC_EXCEPTIONS["nullable"]
    return OpenAPI.from_dict(spec, config=Config(spec_validator_cls=None))


def in_spec(exchange: Exchange) -> bool:
    path = exchange.path.removeprefix(DATA).rstrip("/")
    parts = path.split("/")[1:]
    return (
        parts[:1] == ["sobjects"]
        and len(parts) <= 3
        and (len(parts) == 1 or parts[1] in {"Opportunity", "Account", "User"})
        and not (len(parts) == 3 and parts[2] in {"describe", "updated", "deleted"})
    )


def spec_problems(spec: OpenAPI, exchange: Exchange) -> list[str]:
    path = exchange.path.removeprefix(DATA).rstrip("/")
    url = SERVER + path + (f"?{exchange.query}" if exchange.query else "")
    request = requests.Request(exchange.method, url, headers=dict(exchange.request_headers))
    response = requests.Response()
    response.status_code = exchange.status
    response._content = exchange.body
    response.headers = CaseInsensitiveDict(exchange.response_headers)
    wrapped = RequestsOpenAPIRequest(request.prepare())
    errors = list(spec.iter_response_errors(wrapped, RequestsOpenAPIResponse(response)))
    out = []
    for err in errors:
        cause = getattr(err, "__cause__", None)
        details = [
            f"{list(e.absolute_path)}: {e.message}" for e in getattr(cause, "schema_errors", [])
        ]
        out.append(f"{type(err).__name__}: {str(err)[:200]} {details[:5]}")
    return [f"{exchange.method} {exchange.path} -> {exchange.status}: {p}" for p in out]


def _is_record(rec: Any) -> bool:
    attrs = rec.get("attributes") if isinstance(rec, dict) else None
    return isinstance(attrs, dict) and isinstance(attrs.get("type"), str) and "url" in attrs


def documented_shape_problems(exchange: Exchange) -> list[str]:
    """Responses outside the OpenAPI subset, against Salesforce's documented shapes."""
    body = exchange.json()
    path = exchange.path.removeprefix(DATA).rstrip("/")
    where = f"{exchange.method} {exchange.path} -> {exchange.status}"
    if exchange.status == 204:
        return [] if not exchange.body else [f"{where}: 204 with a body"]
    if exchange.path == "/services/oauth2/token":
        keys = {"access_token", "instance_url", "id", "token_type", "issued_at", "signature"}
        ok = (
            keys <= set(body)
            if exchange.status == 200
            else {"error", "error_description"} <= set(body)
        )
        return [] if ok else [f"{where}: not an OAuth token response: {body}"]
    if exchange.status >= 400:
        ok = isinstance(body, list) and all(
            isinstance(e, dict) and isinstance(e.get("errorCode"), str) and "message" in e
            for e in body
        )
        return [] if ok else [f"{where}: not Salesforce's error list: {body}"]
    if path.startswith(("/query", "/queryAll")):
        ok = (
            isinstance(body.get("totalSize"), int)
            and isinstance(body.get("done"), bool)
            and all(_is_record(r) for r in body.get("records", [None]))
            and (body["done"] or str(body.get("nextRecordsUrl", "")).startswith(DATA))
        )
        return [] if ok else [f"{where}: not a QueryResult: {str(body)[:200]}"]
    if path.endswith("/describe"):
        fields = body.get("fields")
        ok = isinstance(fields, list) and all(
            {"name", "label", "type", "picklistValues", "referenceTo", "relationshipName",
             "createable", "updateable", "nillable", "externalId"} <= set(f)
            for f in fields
        ) and isinstance(body.get("childRelationships"), list)  # fmt: skip
        return [] if ok else [f"{where}: not a DescribeSObjectResult"]
    if path.endswith("/updated"):
        ok = isinstance(body.get("ids"), list) and "latestDateCovered" in body
        return [] if ok else [f"{where}: not a GetUpdatedResult"]
    if path.endswith("/deleted"):
        ok = isinstance(body.get("deletedRecords"), list) and "earliestDateAvailable" in body
        return [] if ok else [f"{where}: not a GetDeletedResult"]
    if path.startswith("/composite/sobjects"):
        ok = isinstance(body, list) and all(
            isinstance(r.get("success"), bool) and isinstance(r.get("errors"), list)
            and (not r["success"] or isinstance(r.get("id"), str))
            and all({"statusCode", "message", "fields"} <= set(e) for e in r["errors"])
            for r in body
        )  # fmt: skip
        return [] if ok else [f"{where}: not a list of SaveResults: {body}"]
    if exchange.method == "POST" and path.startswith("/sobjects/"):  # create, beyond the subset
        ok = {"id", "success", "errors"} <= set(body) and body["success"] is True
        return [] if ok else [f"{where}: not a SaveResult: {body}"]
    if exchange.method == "PATCH" and path.startswith("/sobjects/"):  # upsert by external id
        ok = {"id", "success", "errors", "created"} <= set(body)
        return [] if ok else [f"{where}: not an upsert result: {body}"]
    if exchange.method == "GET" and path.startswith("/sobjects/"):  # get by external id
        return [] if _is_record(body) else [f"{where}: not an sObject: {body}"]
    return [f"{where}: no documented shape known for this response"]


@pytest.fixture
def recorded(
    salesforce_env: None, shared_dir: Path
) -> Iterator[tuple[SalesforceOrg, SalesforceEmulator, list[Exchange]]]:
    org = make_org()
    load_samples(org, shared_dir)
    exchanges: list[Exchange] = []
    with SalesforceEmulator(org, batch_size=20, min_batch_size=1) as emu:
        emu.controls.on_response(exchanges.append)
        yield org, emu, exchanges


def client(emu: SalesforceEmulator, token: str) -> Salesforce:
    session = requests.Session()
    session.mount(emu.base_url.replace("http://", "https://") + "/", _PlainHttp())
    return Salesforce(session_id=token, instance_url=emu.base_url, session=session)


def test_every_response_matches_the_spec_or_the_documented_shape(
    sobjects_spec: OpenAPI,
    recorded: tuple[SalesforceOrg, SalesforceEmulator, list[Exchange]],
) -> None:
    org, emu, exchanges = recorded
    with connect(emu, page_size=20) as crm:
        crm.check()
        spec = load_mapping(MAPPING, crm.discover(), connector="salesforce")
        crm.select(spec.remote_fields_needed)
        for full in (True, False):
            list(crm.pull(Cursor(), signpost=datetime.now(UTC), full=full))
        made = crm.create(opportunity(), stamp=new_stamp())
        crm.update(made.ref, {"StageName": "Qualification"}, expected_version=made.version)
        crm.update_many({made.ref: {"Amount": 10.0}, "006999999999999AAA": {"Amount": 1.0}})
        # Stakeholders: a Contact and an OpportunityContactRole created, then the role's Role
        # and Attitude__c changed.
        person = {"name": "Mei Chen", "title": "CFO", "role": "blocker",
                  "attitude": "supportive", "email": "mei@globex.example"}  # fmt: skip
        for change in ({}, {"role": "champion", "attitude": "opposed"}):
            people = spec.to_remote({"stakeholders": [{**person, **change}]})
            crm.update(made.ref, people, expected_version=None)
        crm.history(made.ref)
        assert crm.get("006999999999999AAA") is None
    sf = client(emu, org.issue_token(SYNC_USER))
    sf.describe()
    for name in ("Opportunity", "Account", "User"):
        sf.restful(f"sobjects/{name}")
    sf.restful(f"sobjects/User/{org.user_id(SYNC_USER)}")
    account = sf.restful("sobjects/Account", method="POST", json={"Name": "Initech"})
    sf.restful(f"sobjects/Account/{account['id']}", params={"fields": "Name,Website"})
    sf.restful(f"sobjects/Account/{account['id']}", method="PATCH", json={"Website": "x.example"})
    sf.restful(f"sobjects/Account/{account['id']}", method="DELETE")
    window = {"start": "2000-01-01T00:00:00+00:00", "end": "2100-01-01T00:00:00+00:00"}
    sf.restful("sobjects/Opportunity/updated", params=window)
    sf.restful("sobjects/Opportunity/deleted", params=window)
    for bad in (
        lambda: sf.restful("sobjects/Opportunity/006999999999999AAA"),
        lambda: sf.restful("sobjects/Opportunity", method="POST", json={"Name": "no stage"}),
        lambda: sf.restful(f"sobjects/Opportunity/{made.ref}", method="PATCH", json={"Nope": 1}),
        lambda: sf.query("SELEKT Id FROM Opportunity"),
    ):
        with pytest.raises((SalesforceMalformedRequest, SalesforceResourceNotFound)):
            bad()
    requests.get(emu.base_url + DATA + "/sobjects/Opportunity", timeout=10).close()
    emu.controls.fail(503, path=DATA + "/sobjects/Opportunity/")
    requests.get(f"{emu.base_url}{DATA}/sobjects/Opportunity/{made.ref}", timeout=10).close()

    assert {e.status for e in exchanges} >= {200, 201, 204, 400, 401, 404, 503}
    checked = [e for e in exchanges if in_spec(e)]
    assert len(checked) >= 12
    ocr = f"{DATA}/sobjects/OpportunityContactRole"
    assert {(e.method, e.path[: len(ocr)]) for e in exchanges} >= {
        ("GET", ocr), ("POST", ocr), ("PATCH", ocr),
    }  # fmt: skip
    found = [p for e in checked for p in spec_problems(sobjects_spec, e)]
    found += [p for e in exchanges if not in_spec(e) for p in documented_shape_problems(e)]
    assert not found, "\n".join(found)


def test_simple_salesforce_parses_everything_served(
    recorded: tuple[SalesforceOrg, SalesforceEmulator, list[Exchange]],
) -> None:
    org, emu, _ = recorded
    sf = client(emu, org.issue_token(SYNC_USER))
    everything = sf.query_all("SELECT Id, Name, Description, Account.Name FROM Opportunity")
    assert everything["totalSize"] == 50
    first = sf.query("SELECT Id FROM Opportunity ORDER BY Name")
    assert not first["done"]
    more = sf.query_more(first["nextRecordsUrl"], identifier_is_url=True)
    assert len(first["records"]) + len(more["records"]) == 40
    assert {f["name"] for f in sf.Opportunity.describe()["fields"]} >= {"StageName", "Amount"}
    assert sf.Opportunity.metadata()["objectDescribe"]["keyPrefix"] == "006"
    stamp = new_stamp()
    assert sf.Opportunity.upsert(f"Canonical_Id__c/{stamp}", opportunity()) == 201
    assert sf.Opportunity.upsert(f"Canonical_Id__c/{stamp}", {"Amount": 3.0}) == 200
    made = sf.Opportunity.get_by_custom_id("Canonical_Id__c", stamp)
    assert sf.Opportunity.get(made["Id"])["Amount"] == 3.0
    created = sf.Account.create({"Name": "Umbrella"})
    assert created["success"]
    assert sf.Account.update(created["id"], {"Industry": "Pharma"}) == 204
    assert sf.Account.delete(created["id"]) == 204
    start, end = org.clock() - timedelta(days=1), org.clock() + timedelta(days=1)
    assert created["id"] in {d["id"] for d in sf.Account.deleted(start, end)["deletedRecords"]}
    assert made["Id"] in sf.Opportunity.updated(start, end)["ids"]
    with pytest.raises(SalesforceResourceNotFound):
        sf.Account.get(created["id"])
    org.expire_sessions()
    with pytest.raises(SalesforceExpiredSession):
        sf.query("SELECT Id FROM Opportunity")


def test_the_sample_data_syncs_and_its_awkward_descriptions_round_trip(
    shared_dir: Path, recorded: tuple[SalesforceOrg, SalesforceEmulator, list[Exchange]]
) -> None:
    _, emu, _ = recorded
    tree = json.loads(
        (shared_dir / "samples/salesforce/trailhead-apex-recipes-Opportunities.json").read_text()
    )
    wanted = {r["name"]: r["description"] for r in tree["records"]}
    with connect(emu, page_size=20) as crm:
        spec = load_mapping(MAPPING, crm.discover(), connector="salesforce")
        crm.select(spec.remote_fields_needed)
        records = [r for p in crm.pull(Cursor(), signpost=datetime.now(UTC)) for r in p.records]
        assert len(records) == 50
        values = {r.ref: spec.to_canonical(r) for r in records}
        assert {v["name"]: v["description"] for v in values.values()} == wanted
        assert {v["stage"] for v in values.values()} >= {"qualification", "negotiation", "delivery"}
        # Written back (batch and single), they come back byte for byte.
        rotated = list(values)[1:] + list(values)[:1]
        changes = {
            ref: spec.to_remote({"description": values[src]["description"]})
            for ref, src in zip(values, rotated, strict=True)
        }
        results = crm.update_many(changes)
        assert all(isinstance(r, RemoteRecord) for r in results.values())
        for ref, src in zip(values, rotated, strict=True):
            got = crm.get(ref)
            assert got is not None
            assert got.fields["Description"] == values[src]["description"]
        first = records[0]
        crm.update(first.ref, {"Description": first.fields["Description"]}, expected_version=None)
        again = crm.get(first.ref)
        assert again is not None and again.fields["Description"] == first.fields["Description"]


def test_all_or_none_collections_roll_back(
    recorded: tuple[SalesforceOrg, SalesforceEmulator, list[Exchange]],
) -> None:
    org, emu, _ = recorded
    org.add_validation_rule(
        ValidationRule("Opportunity", "no_lost", "Lost needs a reason.",
                       lambda old, new: new["StageName"] == "Closed Lost")
    )  # fmt: skip
    sf = client(emu, org.issue_token(SYNC_USER))
    ids = [r["Id"] for r in sf.query("SELECT Id FROM Opportunity LIMIT 2")["records"]]
    body = {"allOrNone": True, "records": [
        {"attributes": {"type": "Opportunity"}, "id": ids[0], "Name": "Renamed"},
        {"attributes": {"type": "Opportunity"}, "id": ids[1], "StageName": "Closed Lost"},
    ]}  # fmt: skip
    results = sf.restful("composite/sobjects", method="PATCH", json=body)
    codes = [r["errors"][0]["statusCode"] for r in results]
    assert codes == ["ALL_OR_NONE_OPERATION_ROLLED_BACK", "FIELD_CUSTOM_VALIDATION_EXCEPTION"]
    assert sf.Opportunity.get(ids[0])["Name"] != "Renamed"


# --------------------------------------------------------------------------- SOQL subset


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("Amount > 500 AND StageName = 'Prospecting'", ["big"]),
        ("Amount < 100 OR (StageName = 'Qualification' AND Amount = null)", ["none", "small"]),
        ("Account.Name LIKE 'glo%'", ["big"]),
        ("Account.Name = null", ["none", "small"]),
        ("StageName IN ('Qualification', 'Closed Won') AND NOT Name = 'none'", ["small"]),
        ("StageName NOT IN ('Qualification')", ["big"]),
        ("CloseDate >= 2024-06-01", ["big", "none"]),
        ("SystemModstamp > 2024-03-01T09:00:00.500+00:00 AND Name != 'big'", ["none", "small"]),
        ("Name = 'it\\'s'", []),
    ],
)
def test_soql_where_clauses(where: str, expected: list[str]) -> None:
    org = make_org()
    acme = org.insert("Account", {"Name": "Globex"})
    org.insert("Opportunity", opportunity(Name="big", Amount=1000.0, AccountId=acme))
    org.insert("Opportunity", opportunity(Name="small", Amount=50.0, StageName="Qualification",
                                          CloseDate="2024-05-01"))  # fmt: skip
    org.insert("Opportunity", opportunity(Name="none", StageName="Qualification"))
    rows = org.query(f"SELECT Name FROM Opportunity WHERE {where} ORDER BY Name")
    assert [r["Name"] for r in rows] == expected


def test_soql_ordering_limits_relationships_and_child_subqueries() -> None:
    org = make_org()
    acme = org.insert("Account", {"Name": "Globex"})
    for name, amount in (("a", 3.0), ("b", None), ("c", 1.0)):
        org.insert("Opportunity", opportunity(Name=name, Amount=amount, AccountId=acme))
    rows = org.query("SELECT Name FROM Opportunity ORDER BY Amount DESC NULLS LAST LIMIT 2")
    assert [r["Name"] for r in rows] == ["a", "c"]
    rows = org.query("SELECT Name FROM Opportunity ORDER BY Amount ASC NULLS FIRST OFFSET 1")
    assert [r["Name"] for r in rows] == ["c", "a"]
    (account,) = org.query(
        "SELECT Name, (SELECT Name FROM Opportunities ORDER BY Name) FROM Account"
    )
    assert [r["Name"] for r in account["Opportunities"]["records"]] == ["a", "b", "c"]
    (row,) = org.query("SELECT Account.Name, Owner.Email FROM Opportunity WHERE Name = 'a'")
    assert (row["Account"]["Name"], row["Owner"]["Email"]) == ("Globex", "admin@acme.example")
    assert row["Account"]["attributes"]["type"] == "Account"


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("SELECT FROM Opportunity", "MALFORMED_QUERY"),
        ("SELECT Id FROM Opportunity WHERE", "MALFORMED_QUERY"),
        ("SELECT Nope FROM Opportunity", "INVALID_FIELD"),
        ("SELECT Id FROM Nope", "NOT_FOUND"),
        ("SELECT Foo.Name FROM Opportunity", "INVALID_FIELD"),
        ("SELECT Id, (SELECT Id FROM Nopes) FROM Opportunity", "INVALID_TYPE"),
    ],
)
def test_soql_errors_are_salesforce_errors(query: str, code: str) -> None:
    from connectors.salesforce.emulator import SalesforceApiError

    with pytest.raises(SalesforceApiError) as err:
        make_org().query(query)
    assert err.value.code == code


def test_child_subqueries_read_exactly_each_parents_children() -> None:
    """Child rows are grouped by parent once per query (not scanned once per parent row):
    each parent still gets exactly the children a query on the child object finds for it,
    filtered, ordered and limited as the subquery says, in query and queryAll, after
    children moved between parents and some records were deleted."""
    rnd = random.Random(3)
    org = make_org()
    accounts = [org.insert("Account", {"Name": f"acct {i}"}) for i in range(3)]
    opps = [
        org.insert("Opportunity", opportunity(Name=f"opp {i % 4}", AccountId=rnd.choice(accounts)))
        for i in range(12)
    ]
    contacts = [org.insert("Contact", {"LastName": f"c{i}"}) for i in range(5)]
    tasks = []
    for i in range(60):
        what = rnd.choice(opps + accounts)
        status = rnd.choice(["Not Started", "Completed", "In Progress"])
        tasks.append(org.insert("Task", {"WhatId": what, "Subject": f"t{i % 7}", "Status": status}))
    for _ in range(20):
        org.insert(
            "OpportunityContactRole",
            {"OpportunityId": rnd.choice(opps), "ContactId": rnd.choice(contacts)},
        )
    for task in rnd.sample(tasks, 10):
        org.update("Task", task, {"WhatId": rnd.choice(opps)})  # moved to another parent
    for task in rnd.sample(tasks, 8):
        org.delete("Task", task)
    org.delete("Opportunity", opps[0])
    task_where = "Status != 'Completed'"
    task_order = "ORDER BY Subject DESC, Id LIMIT 3"
    query = (
        "SELECT Id, Name, "
        f"(SELECT Id, Subject, Owner.Email FROM Tasks WHERE {task_where} {task_order}), "
        "(SELECT Id, Contact.Name FROM OpportunityContactRoles ORDER BY CreatedDate, Id) "
        "FROM Opportunity ORDER BY Name, Id"
    )
    for include_deleted in (False, True):
        rows = org.query(query, include_deleted=include_deleted)
        assert len(rows) == 12 if include_deleted else 11
        seen = 0
        for row in rows:
            rid = row["Id"]
            tasks_of = org.query(
                f"SELECT Id, Subject, Owner.Email FROM Task WHERE WhatId = '{rid}' "
                f"AND {task_where} {task_order}",
                include_deleted=include_deleted,
            )
            roles_of = org.query(
                "SELECT Id, Contact.Name FROM OpportunityContactRole "
                f"WHERE OpportunityId = '{rid}' ORDER BY CreatedDate, Id",
                include_deleted=include_deleted,
            )
            for rel, expected in (("Tasks", tasks_of), ("OpportunityContactRoles", roles_of)):
                want = {"totalSize": len(expected), "done": True, "records": expected}
                assert row[rel] == (want if expected else None), (rid, rel)
                seen += len(expected)
        assert seen > 20, "the data gives the subqueries something to find"
    (account,) = org.query(
        f"SELECT Name, (SELECT Name FROM Opportunities ORDER BY Name, Id) FROM Account "
        f"WHERE Id = '{accounts[0]}'"
    )
    mine = [r for r in org.query("SELECT Name, AccountId FROM Opportunity ORDER BY Name, Id")
            if r["AccountId"] == accounts[0]]  # fmt: skip
    assert [r["Name"] for r in account["Opportunities"]["records"]] == [r["Name"] for r in mine]


def test_a_bad_child_subquery_is_refused_even_when_no_parent_matches() -> None:
    """Salesforce checks the whole query before running it: a subquery naming no field of
    the child object is INVALID_FIELD whether or not any parent row is found."""
    from connectors.salesforce.emulator import SalesforceApiError

    org = make_org()
    for where in ("Name = 'none'", "Name != null"):
        if where == "Name != null":
            org.insert("Opportunity", opportunity())
        with pytest.raises(SalesforceApiError) as err:
            org.query(f"SELECT Id, (SELECT Nope FROM Tasks) FROM Opportunity WHERE {where}")
        assert err.value.code == "INVALID_FIELD"


def test_field_and_relationship_lookups_ignore_case() -> None:
    obj = make_org().schema["Opportunity"]
    assert obj.field("stagename") is obj.field("StageName") is not None
    assert obj.relationship("ACCOUNT") is obj.field("AccountId")
    assert obj.field("nope") is None and obj.relationship("nope") is None


def test_contact_roles_hold_an_attitude_and_admins_change_the_schema() -> None:
    """OpportunityContactRole as an org set up for salesbridge has it: the custom picklist
    Attitude__c and a "Blocker" Role value, in the describe, in SOQL and on writes. An admin
    deleting the field or changing a picklist changes all three."""
    from connectors.salesforce.emulator import SalesforceApiError

    org = make_org()
    ocr = org.schema["OpportunityContactRole"]
    attitude, role = ocr.field("attitude__c"), ocr.field("Role")
    assert attitude is not None and role is not None
    described = attitude.describe()
    assert (described["type"], described["custom"], described["label"]) == (
        "picklist", True, "Attitude",
    )  # fmt: skip
    assert [v["value"] for v in described["picklistValues"]] == [
        "Supportive", "Neutral", "Opposed", "Unknown",
    ]  # fmt: skip
    assert "Blocker" in [v["value"] for v in role.describe()["picklistValues"]]

    opp = org.insert("Opportunity", opportunity())
    contact = org.insert("Contact", {"LastName": "Chen"})
    rid = org.insert("OpportunityContactRole", {
        "OpportunityId": opp, "ContactId": contact, "Role": "Blocker", "attitude__c": "Neutral",
    })  # fmt: skip
    org.update("OpportunityContactRole", rid, {"Attitude__c": "Opposed"})
    (row,) = org.query(
        "SELECT Id, (SELECT Role, ATTITUDE__C FROM OpportunityContactRoles) FROM Opportunity"
    )
    assert row["OpportunityContactRoles"]["records"][0] | {"attributes": None} == {
        "attributes": None, "Role": "Blocker", "Attitude__c": "Opposed",
    }  # fmt: skip

    org.set_picklist("OpportunityContactRole", "Role", ["Decision Maker", "Other"])
    values = org.schema["OpportunityContactRole"].field("Role")
    assert values is not None and values.picklist == ("Decision Maker", "Other")
    org.delete_field("OpportunityContactRole", "Attitude__c")
    assert org.schema["OpportunityContactRole"].field("Attitude__c") is None
    assert "Attitude__c" not in org.records["OpportunityContactRole"][rid]
    for bad in (
        lambda: org.query("SELECT Attitude__c FROM OpportunityContactRole"),
        lambda: org.update("OpportunityContactRole", rid, {"Attitude__c": "Neutral"}),
    ):
        with pytest.raises(SalesforceApiError) as err:
            bad()
        assert err.value.code == "INVALID_FIELD"
    with pytest.raises(ValueError, match="no custom field"):
        org.delete_field("OpportunityContactRole", "Role")
