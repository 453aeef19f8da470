"""Fidelity of the Jira emulator: the official spec, real captured data and the ``jira`` package.

Every response a Cloud-mode emulator sends in these tests is validated against Atlassian's Jira
Cloud platform OpenAPI description (``../shared/specs/jira/jira-platform-swagger-v3.v3.json``)
when the test ends. Exceptions, each a place where the published description and real Jira
disagree, and nothing else:

1. The document is loaded without openapi-spec-validator's check: it has 4 ``default: ''`` values
   outside their enums (noted in ``specs/SOURCES.md``); nothing we validate uses them.
2. ``format: date-time`` also accepts Jira's own offsets without a colon
   (``2021-04-01T08:52:27.109+0800``): that is what Jira Cloud sends, as DevLake's capture shows.
3. ``ChangeDetails.from/to/fromString/toString`` are nullable: Jira sends ``null`` there (see
   the captured changelogs) while the description says ``type: string`` without ``nullable``.
4. v2 responses are checked against the v3 operation at the same path: Cloud's v2 and v3 share
   their shapes, except rich text, which the v3 description types as "anything".
5. Statuses an operation does not document are checked against the ``ErrorCollection`` schema,
   which Jira uses for them: injected 429/5xx, Cloud's 410 for the removed ``/search``, and 403
   for a read-only token's transition or comment (the description lists 403 only for some
   writes).
6. A 204 must have an empty body, although the description gives it ``application/json``
   content (an empty schema): Jira sends no body, and neither does the emulator.
7. ``ChangeDetails`` may carry ``tmpFromAccountId``/``tmpToAccountId``: Jira Cloud adds them
   to user-field changes (the captured changelogs have them); the description forbids any
   property it does not list.

Data Center responses are compared, by keys and JSON types, with responses captured from a
Jira Server instance (``samples/jira/jira-server-responses-jira-ruby``).
"""

from __future__ import annotations

import base64
import itertools
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import jira
import pytest
import requests
from openapi_core import Config, OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_core.templating.responses.exceptions import ResponseNotFound
from openapi_schema_validator import OAS30Validator
from werkzeug.datastructures import Headers, ImmutableMultiDict

from bridge.emulator import Exchange
from connectors.jira.emulator import JiraEmulator, JiraUser, parse_jira_time
from connectors.jira.seed import DEVLAKE_DIR, SALES_STAGES, add_sales_project, seeded

SPEC = "specs/jira/jira-platform-swagger-v3.v3.json"
DEVLAKE = str(DEVLAKE_DIR)
SERVER_SAMPLES = "samples/jira/jira-server-responses-jira-ruby"
TOKEN = "emulator-token"
ALICE = JiraUser(
    "5b10ac8d82e05b22cc7d4ef5", "Alice Chen", "alice@example.com", "alice", "Asia/Shanghai"
)
BOB = JiraUser("5b10a2844c20165700ede21g", "Bob Stone", "bob@example.com", "bob", "UTC")


# --------------------------------------------------------------------------- spec validation


def _jira_datetime(value: str) -> bool:
    try:
        parse_jira_time(value)
    except ValueError:
        return False
    return "T" in value


@pytest.fixture(scope="session")
def openapi(shared_dir: Path) -> OpenAPI:
    spec = json.loads((shared_dir / SPEC).read_text(encoding="utf-8"))
    change = spec["components"]["schemas"]["ChangeDetails"]["properties"]
    for name in ("from", "to", "fromString", "toString"):
        change[name]["nullable"] = True  # exception 3
    for name in ("tmpFromAccountId", "tmpToAccountId"):  # exception 7
        change[name] = {"type": "string", "nullable": True}
    config = Config(
        spec_validator_cls=None,  # exception 1
        extra_format_validators={"date-time": _jira_datetime},  # exception 2
    )
    return OpenAPI.from_dict(spec, config=config)


@dataclass
class _Request:
    method: str
    path: str
    query: str
    host_url: str = "https://your-domain.atlassian.net"
    body: bytes | None = None
    content_type: str = "application/json"
    parameters: RequestParameters = field(init=False)

    def __post_init__(self) -> None:
        self.parameters = RequestParameters(
            query=ImmutableMultiDict(parse_qsl(self.query, keep_blank_values=True)),
            header=Headers(),
            cookie=ImmutableMultiDict(),
        )


@dataclass
class _Response:
    status_code: int
    data: bytes
    content_type: str
    headers: Headers


def check_against_spec(openapi: OpenAPI, exchange: Exchange) -> None:
    """Validate one Cloud response (see the module docstring for the exceptions)."""
    path = exchange.path.replace("/rest/api/2/", "/rest/api/3/", 1)  # exception 4
    content_type = exchange.response_headers.get("content-type", "")
    request = _Request(exchange.method.lower(), path, exchange.query)
    response = _Response(
        exchange.status, exchange.body, content_type, Headers(exchange.response_headers)
    )
    if exchange.status == 204:  # exception 6
        assert exchange.body == b"", exchange
        return
    try:
        openapi.validate_response(request, response)
    except ResponseNotFound:  # exception 5
        assert exchange.status in (403, 410, 429, 500, 502, 503), exchange
        error = (openapi.spec / "components" / "schemas" / "ErrorCollection").read_value()
        OAS30Validator(error).validate(exchange.json())


@dataclass
class Site:
    """A running emulator, a requests session on it and the exchanges to validate."""

    em: JiraEmulator
    session: requests.Session
    exchanges: list[Exchange]

    @property
    def url(self) -> str:
        return self.em.base_url

    def call(
        self, method: str, path: str, *, token: str = TOKEN, **kwargs: Any
    ) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
        kwargs.setdefault("timeout", 10)
        return self.session.request(method, self.url + path, headers=headers, **kwargs)

    def get(self, path: str, **kwargs: Any) -> Any:
        r = self.call("GET", path, **kwargs)
        assert r.status_code == 200, r.text
        return r.json()

    def client(self, **options: Any) -> jira.JIRA:
        return jira.JIRA(server=self.url, token_auth=TOKEN, options=options, max_retries=0)


class FixedClock:
    """The emulator's server clock: stands still until a test moves it."""

    def __init__(self, at: datetime) -> None:
        self.at = at
        self.lock = threading.Lock()

    def __call__(self) -> datetime:
        with self.lock:
            return self.at

    def advance(self, **delta: float) -> datetime:
        with self.lock:
            self.at += timedelta(**delta)
            return self.at


START = datetime(2026, 1, 31, 1, 15, 30, tzinfo=UTC)  # 09:15:30 in Shanghai


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(START)


def _site(openapi: OpenAPI, em: JiraEmulator, validate: bool = True) -> Iterator[Site]:
    exchanges: list[Exchange] = []
    em.controls.on_response(exchanges.append)
    with em, requests.Session() as session:
        yield Site(em, session, exchanges)
    if validate and em.mode == "cloud":
        failures = []
        for exchange in exchanges:
            try:
                check_against_spec(openapi, exchange)
            except Exception as exc:  # collect them all, then fail once
                failures.append(
                    f"{exchange.method} {exchange.path}?{exchange.query} "
                    f"-> {exchange.status}: {_explain(exc)}"
                )
        assert not failures, "\n".join(failures)
        assert exchanges, "nothing was validated"


def _explain(exc: BaseException) -> str:
    errors = getattr(exc.__cause__, "schema_errors", None) or [exc.__cause__ or exc]
    return "; ".join(
        str(e).split("\n\n")[0][:300] + " at " + str(getattr(e, "json_path", "")) for e in errors
    )


def sales_emulator(mode: str, clock: FixedClock) -> JiraEmulator:
    em = JiraEmulator(mode, clock=clock, users=[ALICE, BOB])  # type: ignore[arg-type]
    add_sales_project(em)
    em.add_field("Segment", "select", options=["Enterprise", "SMB"])
    em.add_field("Tags", "labels")
    em.add_token("read-only", BOB, write=False)
    return em


@pytest.fixture(params=["cloud", "dc"])
def site(request: pytest.FixtureRequest, openapi: OpenAPI, clock: FixedClock) -> Iterator[Site]:
    yield from _site(openapi, sales_emulator(request.param, clock))


@pytest.fixture
def cloud(openapi: OpenAPI, clock: FixedClock) -> Iterator[Site]:
    yield from _site(openapi, sales_emulator("cloud", clock))


@pytest.fixture
def dc(openapi: OpenAPI, clock: FixedClock) -> Iterator[Site]:
    yield from _site(openapi, sales_emulator("dc", clock))


@pytest.fixture(scope="module")
def devlake(openapi: OpenAPI, shared_dir: Path) -> Iterator[Site]:
    em = JiraEmulator("cloud", users=[ALICE])
    em.load_devlake(shared_dir / DEVLAKE)
    yield from _site(openapi, em)


def api(site: Site) -> str:
    return "/rest/api/3" if site.em.mode == "cloud" else "/rest/api/2"


def search(site: Site, jql: str, **params: Any) -> list[dict[str, Any]]:
    """Every issue ``jql`` selects, following the mode's pagination."""
    issues: list[dict[str, Any]] = []
    if site.em.mode == "cloud":
        token = None
        while True:
            page = site.get(
                "/rest/api/3/search/jql",
                params={
                    "jql": jql,
                    "fields": "summary,status,updated",
                    **params,
                    **({"nextPageToken": token} if token else {}),
                },
            )
            issues += page["issues"]
            token = page.get("nextPageToken")
            if token is None:
                assert page["isLast"] is True
                return issues
    while True:
        page = site.get(
            "/rest/api/2/search",
            params={
                "jql": jql,
                "fields": "summary,status,updated",
                "startAt": len(issues),
                **params,
            },
        )
        issues += page["issues"]
        if len(issues) >= page["total"] or not page["issues"]:
            return issues


def keys(issues: list[dict[str, Any]]) -> list[str]:
    return [i["key"] for i in issues]


# --------------------------------------------------------------------------- basics


def test_server_info_and_myself(site: Site) -> None:
    info = site.get("/rest/api/2/serverInfo")
    assert info["deploymentType"] == ("Cloud" if site.em.mode == "cloud" else "Server")
    assert info["baseUrl"] == site.url
    me = site.get(api(site) + "/myself")
    assert me["displayName"] == "Alice Chen" and me["timeZone"] == "Asia/Shanghai"
    assert me["self"].startswith(site.url + "/rest/api/2/user?")
    if site.em.mode == "cloud":
        assert me["accountId"] == ALICE.account_id and "name" not in me
    else:
        assert me["name"] == "alice" and "accountId" not in me
        assert site.call("GET", "/rest/api/3/myself").status_code == 404  # DC has no v3


def test_fields_describe_system_and_custom_fields(site: Site) -> None:
    fields = {f["name"]: f for f in site.get(api(site) + "/field")}
    amount = fields["Amount"]
    assert amount["custom"] is True and amount["id"].startswith("customfield_")
    number = int(amount["id"].rpartition("_")[2])
    assert amount["schema"] == {
        "type": "number",
        "custom": "com.atlassian.jira.plugin.system.customfieldtypes:float",
        "customId": number,
    }
    assert amount["clauseNames"] == [f"cf[{number}]", "Amount"]
    assert fields["Close date"]["schema"]["type"] == "date"
    assert fields["Segment"]["schema"]["custom"].endswith(":select")
    assert fields["Tags"]["schema"]["items"] == "string"
    assert fields["Summary"]["schema"] == {"type": "string", "system": "summary"}
    assert fields["Status"]["custom"] is False


# --------------------------------------------------------------------------- real data


def test_devlake_issues_and_changelogs_load_as_captured(devlake: Site, shared_dir: Path) -> None:
    found = search(devlake, "project in (EE, K5) ORDER BY key ASC", maxResults=10)
    assert len(found) == 36  # 33 captured issues + 3 known only from their changelogs
    captured = {i["key"] for i in found} - {"EE-13383", "EE-13954", "EE-13491"}
    assert len(captured) == 33 and {"EE-1", "K5-4"} <= captured
    ee1 = devlake.get("/rest/api/3/issue/EE-1")
    assert ee1["fields"]["updated"] == "2021-03-28T16:06:08.713+0800"  # Alice is in Shanghai
    assert ee1["fields"]["customfield_10019"] == "0|i000db:"
    assert ee1["self"] == devlake.url + "/rest/api/3/issue/10063"
    assert sum(k.startswith("customfield_") for k in ee1["fields"]) >= 110
    assert ee1["fields"]["comment"]["comments"][0]["body"]["type"] == "doc"  # v3: ADF
    v2 = devlake.get("/rest/api/2/issue/EE-1", params={"fields": "comment"})
    assert v2["fields"]["comment"]["comments"][0]["body"].startswith("[Dingding Zhang|")


def test_devlake_histories_with_real_status_changes(devlake: Site) -> None:
    total = 0
    for issue in search(devlake, "project in (EE, K5)", expand="changelog"):
        total += issue["changelog"]["total"]
    assert total == 522 + 279
    page = devlake.get(
        "/rest/api/3/search/jql",
        params={"jql": "key = EE-1", "fields": "status", "expand": "changelog"},
    )
    histories = page["issues"][0]["changelog"]["histories"]
    assert len(histories) == 25
    created = [parse_jira_time(h["created"]) for h in histories]
    assert created == sorted(created, reverse=True)  # Cloud: newest first
    moves = [
        (h["created"], i["fromString"], i["toString"])
        for h in histories
        for i in h["items"]
        if i["field"] == "status"
    ]
    assert ("2021-04-01T08:52:27.109+0800", "Closed", "已完成") not in moves
    assert any(m[2] == "已完成" for m in moves)
    # the 279 changelog-table entries, paged and oldest first, with the real timestamps
    first = devlake.get("/rest/api/3/issue/13954/changelog", params={"maxResults": 40})
    assert (first["total"], first["isLast"], len(first["values"])) == (100, False, 40)
    assert first["nextPage"].endswith("startAt=40")
    rest: list[dict[str, Any]] = []
    start = 40
    while True:
        page = devlake.get("/rest/api/3/issue/EE-13954/changelog", params={"startAt": start})
        rest += page["values"]
        start += page["maxResults"]
        if page["isLast"]:
            break
    entries = first["values"] + rest
    assert len(entries) == 100
    statuses = [
        (e["created"], i["toString"]) for e in entries for i in e["items"] if i["field"] == "status"
    ]
    assert statuses[0] == ("2021-03-05T10:14:45.316+0800", "开发中")
    assert statuses[-1] == ("2021-04-07T13:15:32.935+0800", "已完成")
    stub = devlake.get("/rest/api/3/issue/EE-13954", params={"fields": "status,updated"})
    assert stub["fields"]["status"]["name"] == "已完成"


def test_devlake_search_filters_on_real_values(devlake: Site) -> None:
    done = search(devlake, 'project = K5 AND status = "To Do"')
    assert sorted(keys(done)) == ["K5-2", "K5-3", "K5-4"]
    tagged = search(devlake, "labels = Saas AND project = EE")
    assert "EE-1" in keys(tagged)
    late = search(devlake, 'project = EE AND key <= EE-37 AND updated >= "2021-08-01"')
    assert keys(late) == ["EE-20"]
    stories = search(devlake, "project = EE AND issuetype = Story")  # by untranslated name
    assert "EE-1" in keys(stories)


# --------------------------------------------------------------------------- the jira package


def test_jira_package_reads_and_writes_cloud(cloud: Site) -> None:
    em = cloud.em
    first = em.add_issue(
        "SALES",
        {"summary": "Northwind CRM", "Amount": 1200, "Customer": "NW", "Close date": "2026-03-31"},
        author=ALICE,
    )
    client = cloud.client()
    try:
        assert client.server_info()["deploymentType"] == "Cloud"
        assert client.myself()["accountId"] == ALICE.account_id
        assert {"Amount", "Summary"} <= {f["name"] for f in client.fields()}
        found = client.enhanced_search_issues("project = SALES", maxResults=0)
        assert [i.key for i in found] == [first]
        issue = client.issue(first)
        amount = em.field_id("Amount")
        assert getattr(issue.fields, amount) == 1200
        new = client.create_issue(
            project="SALES", summary="Contoso data platform", issuetype={"name": "Sales Project"}
        )
        new.update(fields={amount: 500, "labels": ["east"]})
        assert client.issue(new.key).fields.labels == ["east"]
        names = [t["name"] for t in client.transitions(new)]
        assert names == ["Qualify"]
        client.transition_issue(new, "Qualify")
        assert client.issue(new.key).fields.status.name == "Qualification"
        client.add_comment(new.key, "Called the CIO")
        assert [c.body for c in client.comments(new.key)] == ["Called the CIO"]
        assert "summary" in client.editmeta(new.key)["fields"]
        meta = client.createmeta(projectKeys="SALES", expand="projects.issuetypes.fields")
        (project,) = meta["projects"]
        assert amount in project["issuetypes"][0]["fields"]
        history = client.issue(new.key, expand="changelog").changelog.histories
        assert [i.field for i in history[0].items] == ["status"]  # newest first
        assert {i.field for i in history[1].items} == {"Amount", "labels"}
    finally:
        client.close()


def test_jira_package_reads_and_writes_data_center(dc: Site) -> None:
    em = dc.em
    first = em.add_issue("SALES", {"summary": "Fabrikam", "Probability": 20}, author=ALICE)
    client = dc.client()
    try:
        assert client.server_info()["deploymentType"] == "Server"
        assert client.myself()["name"] == "alice"
        found = client.search_issues("project = SALES ORDER BY key", maxResults=False)
        assert [i.key for i in found] == [first]
        new = client.create_issue(
            project="SALES",
            summary="Woodgrove audit",
            issuetype={"name": "Sales Project"},
            description="Scope: *all* branches",
        )
        issue = client.issue(new.key)
        assert issue.fields.description == "Scope: *all* branches"
        assert issue.fields.reporter.name == "alice"
        issue.update(assignee={"name": "bob"})
        assert client.issue(new.key).fields.assignee.displayName == "Bob Stone"
        client.transition_issue(new, "11")
        client.add_comment(new.key, "Budget confirmed")
        assert len(client.comments(new.key)) == 1
        types = client.project_issue_types("SALES")
        assert [t.name for t in types] == ["Sales Project"]
        fields = client.project_issue_fields("SALES", types[0].id)
        assert {f.fieldId for f in fields} >= {"summary", em.field_id("Amount")}
        assert "assignee" in client.editmeta(new.key)["fields"]
        history = client.issue(new.key, expand="changelog").changelog.histories
        assert [i.field for h in history for i in h.items] == ["assignee", "status"]
        item = history[0].items[0]
        assert (item.to, item.toString) == ("bob", "Bob Stone")
    finally:
        client.close()


# --------------------------------------------------------------------------- JQL


@pytest.fixture(scope="module")
def jql_site(openapi: OpenAPI) -> Iterator[Site]:
    """Four deals, read by many queries (module-wide: the queries never write)."""
    clock = FixedClock(START)
    em = sales_emulator("cloud", clock)
    rows = [
        ("Alpha", 100, "2026-02-01", ["east"], "Enterprise", ALICE, "Lead"),
        ("Beta", 250, "2026-03-15", ["west", "vip"], "SMB", BOB, "Qualification"),
        ("Gamma", 250, None, [], None, None, "Proposal"),
        ("Delta phrase words", 900, "2026-06-30", ["east"], "Enterprise", BOB, "Negotiation"),
    ]
    for i, (name, amount, close, labels, segment, owner, stage) in enumerate(rows):
        clock.advance(hours=1)
        fields: dict[str, Any] = {
            "summary": name,
            "Amount": amount,
            "Close date": close,
            "labels": labels,
            "Segment": segment,
        }
        if owner is not None:
            fields["assignee"] = owner.account_id
        em.add_issue("SALES", fields, status=stage, author=ALICE)
        del i
    yield from _site(openapi, em)


@pytest.mark.parametrize(
    ("jql", "expected"),
    [
        ("project = SALES", ["SALES-4", "SALES-3", "SALES-2", "SALES-1"]),  # default: key DESC
        ("project = SALES ORDER BY key ASC", ["SALES-1", "SALES-2", "SALES-3", "SALES-4"]),
        ('project = "Sales Projects" AND status = Proposal', ["SALES-3"]),
        ("status != Lead ORDER BY key", ["SALES-2", "SALES-3", "SALES-4"]),
        ("status IN (Lead, Negotiation) ORDER BY key", ["SALES-1", "SALES-4"]),
        ("status NOT IN (Lead, Negotiation) ORDER BY key", ["SALES-2", "SALES-3"]),
        ("key = sales-2", ["SALES-2"]),
        ("key >= SALES-3 ORDER BY key", ["SALES-3", "SALES-4"]),
        (
            "issuetype = 'Sales Project' AND Amount > 200 ORDER BY Amount DESC, key ASC",
            ["SALES-4", "SALES-2", "SALES-3"],
        ),
        ("cf[{amount}] = 250 ORDER BY key", ["SALES-2", "SALES-3"]),
        ("Amount <= 250 AND Amount >= 250 ORDER BY key DESC", ["SALES-3", "SALES-2"]),
        ("labels = east ORDER BY key", ["SALES-1", "SALES-4"]),
        ("labels != east ORDER BY key", ["SALES-2"]),  # an empty field never matches !=
        ("labels IN (vip, nothing)", ["SALES-2"]),
        ("labels IS EMPTY", ["SALES-3"]),
        ("Segment = Enterprise ORDER BY key", ["SALES-1", "SALES-4"]),
        ("Segment != Enterprise", ["SALES-2"]),
        ("Segment IS EMPTY OR Segment = SMB ORDER BY key", ["SALES-2", "SALES-3"]),
        ('"Close date" < "2026-03-15" ', ["SALES-1"]),
        ('"Close date" >= 2026-03-15 ORDER BY "Close date" DESC', ["SALES-4", "SALES-2"]),
        (
            "(status = Lead OR status = Proposal) AND project = SALES ORDER BY key",
            ["SALES-1", "SALES-3"],
        ),
        (
            "project = SALES AND NOT (status = Lead OR labels = east) ORDER BY key",
            ["SALES-2", "SALES-3"],
        ),
        ("assignee = currentUser()", ["SALES-1"]),
        ("assignee = 'Bob Stone' ORDER BY key", ["SALES-2", "SALES-4"]),
        ("assignee IS EMPTY", ["SALES-3"]),
        ("summary ~ delta", ["SALES-4"]),
        ('summary ~ "\\"phrase words\\""', ["SALES-4"]),
        ('summary ~ "words phrase"', ["SALES-4"]),  # words, not a phrase
        ('summary ~ "\\"words phrase\\""', []),
        ("summary ~ gam*", ["SALES-3"]),
        ("project = SALES ORDER BY status DESC", ["SALES-4", "SALES-3", "SALES-2", "SALES-1"]),
        (
            "project = SALES ORDER BY Segment ASC, key DESC",
            ["SALES-4", "SALES-1", "SALES-2", "SALES-3"],
        ),
        ("project = SALES ORDER BY updated ASC", ["SALES-1", "SALES-2", "SALES-3", "SALES-4"]),
    ],
)
def test_jql_subset(jql_site: Site, jql: str, expected: list[str]) -> None:
    jql = jql.replace("{amount}", jql_site.em.field_id("Amount").rpartition("_")[2])  # type: ignore[union-attr]
    assert keys(search(jql_site, jql)) == expected


@pytest.mark.parametrize(
    ("jql", "message"),
    [
        ("summary = Alpha", "The operator '=' is not supported by the 'summary' field."),
        ("Nonsense = 1", "Field 'Nonsense' does not exist or you do not have permission"),
        ("customfield_10001 = 1", "Field 'customfield_10001' does not exist"),
        ("project = NOPE", "The value 'NOPE' does not exist for the field 'project'."),
        ("status > Lead", "The operator '>' is not supported by the 'status' field."),
        ('updated >= "yesterday"', "Date value 'yesterday' for field 'updated' is invalid."),
        ("project = SALES AND", "Error in the JQL Query: The query ended unexpectedly."),
        ("project SALES", "Expecting operator but got 'SALES'"),
        ("ORDER BY key", "Unbounded JQL queries are not allowed here."),
        ("", "Unbounded JQL queries are not allowed here."),
    ],
)
def test_jql_errors_are_jira_shaped(jql_site: Site, jql: str, message: str) -> None:
    r = jql_site.call("GET", "/rest/api/3/search/jql", params={"jql": jql})
    assert r.status_code == 400
    body = r.json()
    assert body["errors"] == {} and message in body["errorMessages"][0]


# --------------------------------------------------------------------------- time


def test_updated_is_written_in_the_users_zone_and_searched_to_the_minute(
    site: Site, clock: FixedClock
) -> None:
    key = site.em.add_issue("SALES", {"summary": "Tailspin"}, author=ALICE)  # 09:15:30 +0800
    path = f"{api(site)}/issue/{key}"
    assert site.get(path)["fields"]["updated"] == "2026-01-31T09:15:30.000+0800"
    bob = "basic " + base64.b64encode(b"bob@example.com:bobs-token").decode()
    site.em.add_token("bobs-token", BOB)
    if site.em.mode == "dc":
        bob = "basic " + base64.b64encode(b"bob:bobs-token").decode()
    as_bob = site.call("GET", path, headers={"Authorization": bob}).json()
    assert as_bob["fields"]["updated"] == "2026-01-31T01:15:30.000+0000"

    def hits(jql: str, auth: str | None = None) -> list[str]:
        endpoint = "/rest/api/3/search/jql" if site.em.mode == "cloud" else "/rest/api/2/search"
        headers = {"Authorization": auth} if auth else {}
        r = site.call("GET", endpoint, params={"jql": jql, "fields": "updated"}, headers=headers)
        assert r.status_code == 200, r.text
        return keys(r.json()["issues"])

    assert hits('project = SALES AND updated >= "2026/01/31 09:15"') == [key]
    assert hits('project = SALES AND updated > "2026/01/31 09:15"') == [key]  # 09:15:30 > 09:15
    assert hits('project = SALES AND updated >= "2026/01/31 09:16"') == []
    assert hits('project = SALES AND updated >= "2026-01-31 09:15"') == [key]
    assert hits('project = SALES AND updated = "2026/01/31 09:15"') == [key]
    assert hits('project = SALES AND updated < "2026-01-31"') == []
    assert hits('project = SALES AND updated >= "2026-01-31"') == [key]
    # the same words mean another instant for a user in another zone
    assert hits('project = SALES AND updated >= "2026/01/31 01:15"', bob) == [key]
    assert hits('project = SALES AND updated >= "2026/01/31 09:15"', bob) == []
    # relative periods count from the server clock, to the minute
    clock.advance(minutes=10)
    assert hits("project = SALES AND updated >= -10m") == [key]
    assert hits("project = SALES AND updated >= -9m") == []
    site.em.edit_issue(key, {"summary": "Tailspin Airlines"}, author=BOB)
    assert hits("project = SALES AND updated >= -1m") == [key]


# --------------------------------------------------------------------------- pagination


def test_cloud_pagination_with_next_page_token(cloud: Site) -> None:
    for n in range(23):
        cloud.em.add_issue("SALES", {"summary": f"Deal {n}"})
    seen: list[str] = []
    token = None
    pages = 0
    while True:
        params: dict[str, Any] = {"jql": "project = SALES ORDER BY key", "maxResults": 10}
        if token:
            params["nextPageToken"] = token
        page = cloud.get("/rest/api/3/search/jql", params=params)
        pages += 1
        assert "total" not in page and "startAt" not in page
        assert all(set(i) == {"id"} for i in page["issues"])  # default fields: id only
        seen += [i["id"] for i in page["issues"]]
        token = page.get("nextPageToken")
        if token is None:
            assert page["isLast"] is True
            break
        assert page["isLast"] is False
    assert (pages, len(seen), len(set(seen))) == (3, 23, 23)
    r = cloud.call(
        "GET",
        "/rest/api/3/search/jql",
        params={"jql": "project = SALES AND key = SALES-1", "nextPageToken": token or "x"},
    )
    assert r.status_code == 400
    wrong = cloud.call(
        "GET",
        "/rest/api/3/search/jql",
        params={"jql": "project = SALES", "nextPageToken": "eyJvIjogMTAsICJxIjogIjEyMyJ9"},
    )
    assert wrong.status_code == 400
    # POST works the same; maxResults above 100 is cut when fields are asked for
    body = {"jql": "project = SALES", "maxResults": 500, "fields": ["summary"]}
    page = cloud.call("POST", "/rest/api/3/search/jql", json=body).json()
    assert len(page["issues"]) == 23 and page["isLast"] is True
    # the removed endpoint answers as Cloud does now
    assert (
        cloud.call("GET", "/rest/api/3/search", params={"jql": "project = SALES"}).status_code
        == 410
    )
    assert (
        cloud.call("GET", "/rest/api/2/search", params={"jql": "project = SALES"}).status_code
        == 410
    )


def test_dc_pagination_with_start_at_and_total(dc: Site) -> None:
    for n in range(23):
        dc.em.add_issue("SALES", {"summary": f"Deal {n}"})
    page = dc.get(
        "/rest/api/2/search",
        params={"jql": "project = SALES ORDER BY key", "startAt": 20, "maxResults": 10},
    )
    assert (page["startAt"], page["maxResults"], page["total"]) == (20, 10, 23)
    assert keys(page["issues"]) == ["SALES-21", "SALES-22", "SALES-23"]
    assert "summary" in page["issues"][0]["fields"]  # default fields: *navigable
    posted = dc.call(
        "POST",
        "/rest/api/2/search",
        json={"jql": "project = SALES", "maxResults": 5, "fields": ["summary"]},
    ).json()
    assert (len(posted["issues"]), posted["total"]) == (5, 23)
    assert set(posted["issues"][0]["fields"]) == {"summary"}
    assert len(search(dc, "project = SALES", maxResults=4)) == 23
    assert (
        dc.call("GET", "/rest/api/2/search/jql", params={"jql": "project = SALES"}).status_code
        == 404
    )


# --------------------------------------------------------------------------- writes


def test_create_edit_and_changelog(site: Site, clock: FixedClock) -> None:
    em = site.em
    amount, close = em.field_id("Amount"), em.field_id("Close date")
    segment = em.field_id("Segment")
    cloud = em.mode == "cloud"
    description: Any = (
        "Pilot first"
        if not cloud
        else {
            "type": "doc",
            "version": 1,
            "content": [
                {"type": "paragraph", "content": [{"type": "text", "text": "Pilot first"}]}
            ],
        }
    )
    r = site.call(
        "POST",
        api(site) + "/issue",
        json={
            "fields": {
                "project": {"key": "SALES"},
                "issuetype": {"name": "Sales Project"},
                "summary": "Litware renewal",
                amount: 100,
                "description": description,
            }
        },
    )
    assert r.status_code == 201, r.text
    created = r.json()
    assert set(created) == {"id", "key", "self"}
    assert created["self"] == f"{site.url}{api(site)}/issue/{created['id']}"
    key = created["key"]
    clock.advance(minutes=5)
    user = {"accountId": BOB.account_id} if cloud else {"name": "bob"}
    r = site.call(
        "PUT",
        f"{api(site)}/issue/{key}",
        json={
            "fields": {
                amount: 150.5,
                close: "2026-04-30",
                segment: {"value": "SMB"},
                "assignee": user,
            },
            "update": {"labels": [{"add": "east"}, {"add": "vip"}]},
        },
    )
    assert r.status_code == 204, r.text
    issue = site.get(f"{api(site)}/issue/{key}", params={"expand": "changelog"})
    assert issue["fields"][amount] == 150.5 and issue["fields"]["labels"] == ["east", "vip"]
    assert issue["fields"]["updated"] == "2026-01-31T09:20:30.000+0800"
    assert issue["fields"]["created"] == "2026-01-31T09:15:30.000+0800"
    (entry,) = issue["changelog"]["histories"]
    assert entry["author"]["displayName"] == "Alice Chen"
    assert entry["created"] == "2026-01-31T09:20:30.000+0800"
    items = {i["field"]: i for i in entry["items"]}
    assert set(items) == {"Amount", "Close date", "Segment", "assignee", "labels"}
    assert {
        k: items["Amount"][k] for k in ("fieldtype", "from", "fromString", "to", "toString")
    } == {"fieldtype": "custom", "from": None, "fromString": "100", "to": None, "toString": "150.5"}
    assert items["Segment"]["toString"] == "SMB" and items["Segment"]["to"].isdigit()
    assert items["labels"]["toString"] == "east vip"
    assert items["assignee"]["to"] == (BOB.account_id if cloud else "bob")
    assert ("fieldId" in items["Amount"]) is cloud
    if cloud:
        assert issue["fields"]["description"]["type"] == "doc"
        v2 = site.get(f"/rest/api/2/issue/{key}", params={"fields": "description"})
        assert v2["fields"]["description"] == "Pilot first"
    # a person edits in Jira: the author is theirs, and a no-op write records nothing
    em.edit_issue(key, {"Amount": 200}, author=BOB)
    em.edit_issue(key, {"Amount": 200}, author=BOB)
    histories = site.get(f"{api(site)}/issue/{key}", params={"expand": "changelog"})["changelog"][
        "histories"
    ]
    assert len(histories) == 2
    latest = histories[0] if cloud else histories[-1]
    assert latest["author"]["displayName"] == "Bob Stone"
    assert em.issue(key)["fields"][amount] == 200


@pytest.mark.parametrize(
    ("fields", "errors"),
    [
        (
            {"customfield_99999": 1},
            {
                "customfield_99999": "Field 'customfield_99999' cannot be "
                "set. It is not on the appropriate screen, or unknown."
            },
        ),
        (
            {"status": {"name": "Proposal"}},
            {
                "status": "Field 'status' cannot be set. It is not on "
                "the appropriate screen, or unknown."
            },
        ),
        ({"Amount": "lots"}, {"Amount": "Operation value must be a number"}),
        (
            {"Close date": "31/01/2026"},
            {"Close date": 'Invalid date format. Please enter the date in the format "d/MMM/yy".'},
        ),
        ({"Segment": {"value": "Giant"}}, {"Segment": "Option value 'Giant' is not valid"}),
        (
            {"labels": ["two words"]},
            {"labels": "The label 'two words' contains spaces which is invalid."},
        ),
        ({"summary": None}, {"summary": "You must specify a summary of the issue."}),
    ],
)
def test_edit_errors_are_jira_shaped(
    site: Site, fields: dict[str, Any], errors: dict[str, str]
) -> None:
    em = site.em
    key = em.add_issue("SALES", {"summary": "Coho winery"})
    by_id = {(em.field_id(k) if k[0].isupper() else k): v for k, v in fields.items()}
    expected = {(em.field_id(k) if k[0].isupper() else k): v for k, v in errors.items()}
    r = site.call("PUT", f"{api(site)}/issue/{key}", json={"fields": by_id})
    assert r.status_code == 400
    assert r.json() == {"errorMessages": [], "errors": expected}
    assert em.issue(key)["changelog"]["total"] == 0


def test_v3_rich_text_must_be_adf(cloud: Site) -> None:
    key = cloud.em.add_issue("SALES", {"summary": "Proseware"})
    r = cloud.call("PUT", f"/rest/api/3/issue/{key}", json={"fields": {"description": "plain"}})
    assert r.status_code == 400
    assert r.json()["errors"]["description"].startswith("Operation value must be an Atlassian")
    ok = cloud.call("PUT", f"/rest/api/2/issue/{key}", json={"fields": {"description": "plain"}})
    assert ok.status_code == 204
    bad = cloud.call("POST", f"/rest/api/3/issue/{key}/comment", json={"body": "plain"})
    assert bad.status_code == 400


def test_create_requires_project_type_and_summary(site: Site) -> None:
    r = site.call(
        "POST",
        api(site) + "/issue",
        json={"fields": {"project": {"key": "SALES"}, "issuetype": {"name": "Sales Project"}}},
    )
    assert r.status_code == 400
    assert r.json()["errors"] == {"summary": "You must specify a summary of the issue."}
    r = site.call(
        "POST",
        api(site) + "/issue",
        json={
            "fields": {
                "project": {"key": "NOPE"},
                "summary": "x",
                "issuetype": {"name": "Sales Project"},
            }
        },
    )
    assert r.json()["errors"] == {"project": "Specify a valid project ID or key"}
    r = site.call(
        "POST",
        api(site) + "/issue",
        json={
            "fields": {"project": {"key": "SALES"}, "summary": "x", "issuetype": {"name": "Bug"}}
        },
    )
    assert r.json()["errors"] == {"issuetype": "Specify an issue type"}


# --------------------------------------------------------------------------- workflow


def test_workflow_transitions_screens_and_comments(site: Site, clock: FixedClock) -> None:
    em = site.em
    close = em.field_id("Close date")
    key = em.add_issue("SALES", {"summary": "Wide World Importers"}, author=ALICE)
    base = f"{api(site)}/issue/{key}"

    def available() -> dict[str, str]:
        return {t["to"]["name"]: t["id"] for t in site.get(base + "/transitions")["transitions"]}

    assert available() == {"Qualification": "11"}  # Lead -> Proposal needs Qualification first
    r = site.call("POST", base + "/transitions", json={"transition": {"id": "21"}})
    assert r.status_code == 400
    assert r.json()["errorMessages"] == ["Transition id '21' is not valid for this issue."]
    for stage in SALES_STAGES[1:4]:
        clock.advance(minutes=1)
        r = site.call(
            "POST", base + "/transitions", json={"transition": {"id": available()[stage]}}
        )
        assert r.status_code == 204, r.text
    assert set(available()) == {"Signing", "Proposal"}
    # signing asks for the close date on its screen
    screen = site.get(
        base + "/transitions", params={"expand": "transitions.fields", "transitionId": "41"}
    )["transitions"]
    assert screen[0]["hasScreen"] is True and screen[0]["fields"][close]["required"] is True
    r = site.call("POST", base + "/transitions", json={"transition": {"id": "41"}})
    assert r.status_code == 400
    assert r.json()["errors"] == {close: "Close date is required."}
    r = site.call(
        "POST",
        base + "/transitions",
        json={"transition": {"id": "41"}, "fields": {"summary": "renamed"}},
    )
    assert r.status_code == 400 and "summary" in r.json()["errors"]
    comment: Any = "Signed by the CFO"
    if em.mode == "cloud":
        comment = {
            "type": "doc",
            "version": 1,
            "content": [{"type": "paragraph", "content": [{"type": "text", "text": comment}]}],
        }
    clock.advance(minutes=1)
    r = site.call(
        "POST",
        base + "/transitions",
        json={
            "transition": {"id": "41"},
            "fields": {close: "2026-02-28"},
            "update": {"comment": [{"add": {"body": comment}}]},
        },
    )
    assert r.status_code == 204, r.text
    clock.advance(minutes=1)
    assert (
        site.call("POST", base + "/transitions", json={"transition": {"id": "51"}}).status_code
        == 204
    )
    issue = site.get(base, params={"expand": "changelog"})
    assert issue["fields"]["status"]["name"] == "Delivery"
    assert issue["fields"]["status"]["statusCategory"]["key"] == "done"
    assert issue["fields"]["resolution"]["name"] == "Done"
    assert issue["fields"]["resolutiondate"] == "2026-01-31T09:20:30.000+0800"
    moves = [
        (i["fromString"], i["toString"])
        for h in issue["changelog"]["histories"]
        for i in h["items"]
        if i["field"] == "status"
    ]
    if em.mode == "cloud":
        moves.reverse()
    assert moves == list(itertools.pairwise(SALES_STAGES))
    comments = site.get(base + "/comment")
    assert comments["total"] == 1
    text = comments["comments"][0]["body"]
    assert (
        text if isinstance(text, str) else text["content"][0]["content"][0]["text"]
    ) == "Signed by the CFO"
    # a comment bumps updated but writes no changelog entry
    clock.advance(minutes=30)
    before = issue["changelog"]["total"]
    site.call("POST", base + "/comment", json={"body": comment})
    after = site.get(base, params={"expand": "changelog", "fields": "updated"})
    assert after["changelog"]["total"] == before
    assert after["fields"]["updated"] == "2026-01-31T09:50:30.000+0800"
    with pytest.raises(ValueError, match="no transition"):
        em.transition(key, "Lead")


# --------------------------------------------------------------------------- auth and faults


def test_auth_401_and_403(site: Site) -> None:
    key = site.em.add_issue("SALES", {"summary": "Blue Yonder"})
    bad = site.call("GET", api(site) + "/myself", token="wrong")
    assert bad.status_code == 401
    assert bad.text == "Client must be authenticated to access this resource."
    basic = "Basic " + base64.b64encode(b"alice@example.com:wrong").decode()
    assert (
        site.call("GET", api(site) + "/myself", headers={"Authorization": basic}).status_code == 401
    )
    login = b"alice@example.com" if site.em.mode == "cloud" else b"alice"
    good = "Basic " + base64.b64encode(login + b":" + TOKEN.encode()).decode()
    assert (
        site.call("GET", api(site) + "/myself", headers={"Authorization": good}).status_code == 200
    )
    anonymous = requests.get(site.url + "/rest/api/2/serverInfo", timeout=5)
    assert anonymous.status_code == 200  # serverInfo is public
    assert requests.get(site.url + api(site) + "/myself", timeout=5).status_code == 401
    # a read-only token reads, and is refused every write
    assert site.call("GET", f"{api(site)}/issue/{key}", token="read-only").status_code == 200
    for method, path, body in [
        ("PUT", f"/issue/{key}", {"fields": {"summary": "x"}}),
        ("POST", "/issue", {"fields": {"summary": "x"}}),
        ("POST", f"/issue/{key}/transitions", {"transition": {"id": "11"}}),
        ("POST", f"/issue/{key}/comment", {"body": "x"}),
    ]:
        r = site.call(method, api(site) + path, token="read-only", json=body)
        assert r.status_code == 403, path
        assert r.json()["errorMessages"] == [
            "You do not have permission to edit issues in this project."
        ]
    assert site.em.issue(key)["fields"]["summary"] == "Blue Yonder"


def test_rate_limit_429_with_retry_after_and_jira_headers(site: Site) -> None:
    site.em.rate_limit(3, 60)
    results = [site.call("GET", api(site) + "/myself") for _ in range(4)]
    assert [r.status_code for r in results] == [200, 200, 200, 429]
    limited = results[-1]
    assert int(limited.headers["Retry-After"]) in range(1, 61)
    assert limited.headers["X-RateLimit-Limit"] == "3"
    assert limited.headers["X-RateLimit-Remaining"] == "0"
    assert limited.headers["RateLimit-Reason"] == "jira-burst-based"
    assert limited.json()["errorMessages"] == ["rate limit exceeded"]
    # budgets are per credential
    assert site.call("GET", api(site) + "/myself", token="read-only").status_code == 200
    assert site.em.controls.count("GET", api(site) + "/myself", status=429) == 1


def test_injected_5xx_delays_and_exact_request_counts(site: Site) -> None:
    key = site.em.add_issue("SALES", {"summary": "Adventure Works"})
    c = site.em.controls
    c.fail(503, 2, path=api(site) + "/issue", method="GET")
    c.fail(429, 1, path=api(site) + "/issue", method="PUT", retry_after=3)
    path = f"{api(site)}/issue/{key}"
    assert [site.call("GET", path).status_code for _ in range(3)] == [503, 503, 200]
    put = site.call("PUT", path, json={"fields": {"summary": "AW"}})
    assert (put.status_code, put.headers["Retry-After"]) == (429, "3")
    assert site.em.issue(key)["fields"]["summary"] == "Adventure Works"  # not applied
    assert site.call("PUT", path, json={"fields": {"summary": "AW"}}).status_code == 204
    assert c.count("GET", path) == 3 and c.count("PUT", path) == 2
    assert c.count(status=503) == 2


def test_a_create_whose_answer_is_lost_still_happened(site: Site) -> None:
    site.em.controls.delay(0.5, path=api(site) + "/issue", method="POST", after=True)
    body = {
        "fields": {
            "project": {"key": "SALES"},
            "issuetype": {"name": "Sales Project"},
            "summary": "Lost answer",
        }
    }
    with pytest.raises(requests.ReadTimeout):
        site.call("POST", api(site) + "/issue", json=body, timeout=0.1)
    assert site.em.keys() == ["SALES-1"]  # created: a retry would duplicate it


def test_jira_package_surfaces_429_and_5xx(cloud: Site) -> None:
    client = cloud.client()
    try:
        cloud.em.controls.fail(429, 1, path="/rest/api/2/myself", retry_after=1)
        with pytest.raises(jira.JIRAError) as raised:
            client.myself()
        assert raised.value.status_code == 429
        cloud.em.controls.fail(502, 1, path="/rest/api/2/field")
        with pytest.raises(jira.JIRAError) as raised:
            client.fields()
        assert raised.value.status_code == 502
        assert client.myself()["displayName"] == "Alice Chen"
    finally:
        client.close()


# --------------------------------------------------------------------------- DC shapes


def _shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return type(value).__name__


def _assert_shape(sample: Any, ours: Any, where: str = "$") -> None:
    """Every key of the captured response exists in ours with the same JSON type.

    ``null`` on either side and empty lists match anything: they say nothing about the type.
    """
    if sample is None or ours is None or sample == [] or ours == []:
        return
    if isinstance(sample, dict):
        assert isinstance(ours, dict), f"{where}: {type(ours).__name__} instead of an object"
        missing = set(sample) - set(ours)
        assert not missing, f"{where}: missing {sorted(missing)}"
        for k in sample:
            _assert_shape(sample[k], ours[k], f"{where}.{k}")
    elif isinstance(sample, list):
        assert isinstance(ours, list), where
        _assert_shape(sample[0], ours[0], where + "[0]")
    else:
        kinds = (int, float) if isinstance(sample, int | float) else type(sample)
        assert isinstance(ours, kinds), f"{where}: {ours!r} is not like {sample!r}"


def test_dc_shapes_match_captured_server_responses(dc: Site, shared_dir: Path) -> None:
    samples = shared_dir / SERVER_SAMPLES

    def sample(name: str) -> Any:
        return json.loads((samples / name).read_text(encoding="utf-8"))

    em = dc.em
    key = em.add_issue(
        "SALES",
        {
            "summary": "Sample",
            "description": "Text",
            "duedate": "2026-02-01",
            "assignee": "alice",
            "labels": ["x"],
        },
        author=ALICE,
    )
    em.transition(key, "Qualification", author=ALICE)
    site_issue = dc.get(f"/rest/api/2/issue/{key}")
    captured = sample("issue_10002.json")
    captured["fields"].pop("components")  # that site's components; ours has none configured
    _assert_shape(captured, site_issue)
    assert isinstance(site_issue["fields"]["description"], str)

    found = dc.get("/rest/api/2/search", params={"jql": "project = SALES"})
    captured_search = sample("issue.json")
    for issue in captured_search["issues"]:
        issue["fields"].pop("components", None)
    _assert_shape({k: v for k, v in captured_search.items() if k != "isLast"}, found)

    _assert_shape(sample("field.json"), dc.get("/rest/api/2/field"))
    _assert_shape(
        sample("issue_10002_transitions.json"), dc.get(f"/rest/api/2/issue/{key}/transitions")
    )
    _assert_shape(sample("status.json"), dc.get("/rest/api/2/status"))
    _assert_shape(sample("priority.json"), dc.get("/rest/api/2/priority"))
    _assert_shape(sample("issuetype.json"), dc.get("/rest/api/2/issuetype"))
    dc.call("POST", f"/rest/api/2/issue/{key}/comment", json={"body": "This is a comment."})
    _assert_shape(sample("issue_10002_comment.json"), dc.get(f"/rest/api/2/issue/{key}/comment"))
    project = sample("project_SAMPLEPROJECT.json")
    for k in ("components", "versions", "assigneeType", "roles", "description"):
        project.pop(k, None)  # project admin settings the emulator does not model
    _assert_shape(project, dc.get("/rest/api/2/project/SALES"))


# --------------------------------------------------------------------------- directory


def test_directory_endpoints(site: Site) -> None:
    a = api(site)
    statuses = site.get(a + "/status")
    assert [s["name"] for s in statuses][:6] == list(SALES_STAGES)
    assert statuses[0]["statusCategory"]["key"] == "new"
    assert statuses[-1]["statusCategory"]["key"] == "done"
    assert [t["name"] for t in site.get(a + "/issuetype")] == ["Sales Project"]
    assert [p["name"] for p in site.get(a + "/priority")][:2] == ["Highest", "High"]
    (project,) = site.get(a + "/project")
    assert project["key"] == "SALES" and project["issueTypes"][0]["name"] == "Sales Project"
    assert site.get(a + "/project/SALES")["lead"]["displayName"] == "Alice Chen"
    assert site.call("GET", a + "/project/NOPE").status_code == 404
    types = site.get(a + "/issue/createmeta/SALES/issuetypes")
    listed = types["issueTypes" if site.em.mode == "cloud" else "values"]
    assert [t["name"] for t in listed] == ["Sales Project"]
    fields = site.get(f"{a}/issue/createmeta/SALES/issuetypes/{listed[0]['id']}")
    metas = fields["fields" if site.em.mode == "cloud" else "values"]
    by_name = {m["name"]: m for m in metas}
    assert by_name["Summary"]["required"] is True and by_name["Amount"]["required"] is False
    assert [o["value"] for o in by_name["Segment"]["allowedValues"]] == ["Enterprise", "SMB"]
    legacy = site.call("GET", a + "/issue/createmeta", params={"projectKeys": "SALES"})
    assert legacy.status_code == (200 if site.em.mode == "cloud" else 404)  # gone in DC 9


def test_users_are_found_by_account_or_name(site: Site) -> None:
    a = api(site)
    if site.em.mode == "cloud":
        found = site.get(a + "/user/search", params={"query": "bob"})
        assert [u["accountId"] for u in found] == [BOB.account_id]
        one = site.get(a + "/user", params={"accountId": ALICE.account_id})
        assert one["displayName"] == "Alice Chen" and one["timeZone"] == "Asia/Shanghai"
        assert site.call("GET", a + "/user", params={"accountId": "nobody"}).status_code == 404
        assert site.call("GET", a + "/user/search").status_code == 400
    else:
        found = site.get(a + "/user/search", params={"username": "bob"})
        assert [u["name"] for u in found] == ["bob"]
        assert site.get(a + "/user", params={"username": "alice"})["emailAddress"] == (
            "alice@example.com"
        )


def test_user_lists_page_through_everyone(site: Site) -> None:
    """Cloud lists accounts with /users/search; both list assignable users of a project;
    Data Center lists everyone through /user/search?username=. (it has no /users/search)."""
    a, em = api(site), site.em
    carol = em.add_user(JiraUser("5b10a2844c20165700ede333", "Carol Gone", None, "carol"))
    carol.active = False
    everyone = ["Alice Chen", "Bob Stone", "Carol Gone"]
    assignable = site.get(a + "/user/assignable/search", params={"project": "SALES"})
    assert [u["displayName"] for u in assignable] == everyone[:2], "inactive: not assignable"
    term = {"query": "bob"} if em.mode == "cloud" else {"username": "bob"}
    found = site.get(a + "/user/assignable/search", params={"project": "SALES", **term})
    assert [u["displayName"] for u in found] == ["Bob Stone"]
    by_issue = em.add_issue("SALES", {"summary": "Assign me"})
    found = site.get(a + "/user/assignable/search", params={"issueKey": by_issue, **term})
    assert [u["displayName"] for u in found] == ["Bob Stone"]
    assert site.call("GET", a + "/user/assignable/search").status_code == 400
    missing = site.call("GET", a + "/user/assignable/search", params={"project": "NOPE"})
    assert missing.status_code == 404 and missing.json()["errorMessages"]
    if em.mode == "cloud":
        pages = [
            site.get(a + "/users/search", params={"startAt": start, "maxResults": 2})
            for start in (0, 2, 4)
        ]
        assert [[u["displayName"] for u in p] for p in pages] == [everyone[:2], everyone[2:], []]
        assert all("accountId" in u and "name" not in u for p in pages for u in p)
        assert pages[1][0]["active"] is False and "emailAddress" not in pages[1][0]
    else:
        assert site.call("GET", a + "/users/search").status_code == 404
        listed = site.get(a + "/user/search", params={"username": ".", "maxResults": 1000})
        assert [u["name"] for u in listed] == ["alice", "bob", "carol"]
        assert all("accountId" not in u for u in listed)


def test_jira_package_lists_assignable_users(cloud: Site) -> None:
    client = cloud.client()
    try:
        found = client.search_assignable_users_for_issues(query="alice", project="SALES")
        assert [u.accountId for u in found] == [ALICE.account_id]
    finally:
        client.close()


def test_sub_tasks_show_in_their_parent(site: Site, clock: FixedClock) -> None:
    """A sub-task names its parent when created; the parent's ``subtasks`` then lists it live
    (id, key, self, summary, status, priority, issue type) without changing the parent's
    ``updated``, and the sub-task's ``parent`` shows the parent the same way."""
    a, em = api(site), site.em
    kind = em.add_subtask_type("SALES")
    assert kind["subtask"] is True and kind["hierarchyLevel"] == -1
    parent = em.add_issue("SALES", {"summary": "Acme rollout"}, author=ALICE)
    before = site.get(f"{a}/issue/{parent}")["fields"]["updated"]
    assert site.get(f"{a}/issue/{parent}")["fields"]["subtasks"] == []
    clock.advance(minutes=1)
    created = site.call(
        "POST",
        a + "/issue",
        json={
            "fields": {
                "project": {"key": "SALES"},
                "issuetype": {"name": "Sub-task"},
                "parent": {"key": parent},
                "summary": "Needs analysis",
            }
        },
    )
    assert created.status_code == 201, created.text
    child = created.json()
    second = em.add_issue("SALES", {"summary": "Proposal", "parent": parent}, issue_type="Sub-task")
    shown = site.get(f"{a}/issue/{parent}")["fields"]
    assert shown["updated"] == before, "Jira does not touch a parent when a sub-task changes"
    first = shown["subtasks"][0]
    assert [s["key"] for s in shown["subtasks"]] == [child["key"], second]
    assert (first["id"], first["self"]) == (
        child["id"],
        f"{site.url}/rest/api/2/issue/{child['id']}",
    )
    assert set(first["fields"]) == {"summary", "status", "priority", "issuetype"}
    assert first["fields"]["summary"] == "Needs analysis"
    assert first["fields"]["status"]["name"] == "To Do", "sub-tasks have their own workflow"
    assert first["fields"]["issuetype"]["subtask"] is True
    sub = site.get(f"{a}/issue/{child['key']}")["fields"]
    assert sub["parent"]["key"] == parent and sub["parent"]["fields"]["summary"] == "Acme rollout"
    assert sub["subtasks"] == []
    assert "parent" not in shown, "an issue without a parent shows no parent field"

    moves = site.get(f"{a}/issue/{child['key']}/transitions")["transitions"]
    done = next(t for t in moves if t["to"]["statusCategory"]["key"] == "done")
    r = site.call(
        "POST", f"{a}/issue/{child['key']}/transitions", json={"transition": {"id": done["id"]}}
    )
    assert r.status_code == 204, r.text
    found = search(site, "project = SALES AND key = " + parent, fields="subtasks")
    status = found[0]["fields"]["subtasks"][0]["fields"]["status"]
    assert (status["name"], status["statusCategory"]["key"]) == ("Done", "done")

    def refused(fields: dict[str, Any]) -> dict[str, str]:
        body = {"project": {"key": "SALES"}, "summary": "x", **fields}
        r = site.call("POST", a + "/issue", json={"fields": body})
        assert r.status_code == 400, r.text
        errors: dict[str, str] = r.json()["errors"]
        return errors

    assert "parent" in refused({"issuetype": {"name": "Sub-task"}})
    assert "parent" in refused({"issuetype": {"name": "Sub-task"}, "parent": {"key": "SALES-999"}})
    assert "parent" in refused({"issuetype": {"name": "Sub-task"}, "parent": {"key": second}})
    assert "parent" in refused({"issuetype": {"name": "Sales Project"}, "parent": {"key": parent}})
    em.delete_issue(parent)
    assert site.call("GET", f"{a}/issue/{second}").status_code == 404, "gone with its parent"


def test_jira_package_reads_the_directory(cloud: Site) -> None:
    client = cloud.client()
    try:
        assert [u.displayName for u in client.search_users(query="alice")] == ["Alice Chen"]
        assert client.user(BOB.account_id).displayName == "Bob Stone"
        assert {s.name for s in client.statuses()} >= set(SALES_STAGES)
        assert [p.key for p in client.projects()] == ["SALES"]
        assert [t.name for t in client.issue_types()] == ["Sales Project"]
        assert client.priorities()[0].name == "Highest"
        cloud.em.add_issue("SALES", {"summary": "Counted"})
        assert client.approximate_issue_count("project = SALES") == 1
    finally:
        client.close()


def test_expand_names_and_schema(cloud: Site) -> None:
    key = cloud.em.add_issue("SALES", {"summary": "Named", "Amount": 5})
    amount = cloud.em.field_id("Amount")
    issue = cloud.get(
        f"/rest/api/3/issue/{key}", params={"fields": f"summary,{amount}", "expand": "names,schema"}
    )
    assert issue["names"] == {"summary": "Summary", amount: "Amount"}
    assert issue["schema"][amount]["type"] == "number"
    page = cloud.get(
        "/rest/api/3/search/jql", params={"jql": f"key = {key}", "fields": "summary,-summary"}
    )
    assert page["issues"][0]["fields"] == {}
    issue = cloud.get(f"/rest/api/3/issue/{key}", params={"expand": "transitions,editmeta"})
    assert [t["name"] for t in issue["transitions"]] == ["Qualify"]
    assert amount in issue["editmeta"]["fields"]


# --------------------------------------------------------------------------- seeds


def test_sales_seed_walks_each_project_through_its_stages(openapi: OpenAPI) -> None:
    em = seeded(count=12)
    assert em.keys()[:3] == ["SALES-1", "SALES-2", "SALES-3"]
    for site in _site(openapi, em):  # the responses are validated when the loop ends
        for issue in search(site, "project = SALES", expand="changelog"):
            moves = [
                (h["created"], i["toString"])
                for h in reversed(issue["changelog"]["histories"])
                for i in h["items"]
                if i["field"] == "status"
            ]
            stage = issue["fields"]["status"]["name"]
            assert [m[1] for m in moves] == list(SALES_STAGES[1 : SALES_STAGES.index(stage) + 1])
            times = [parse_jira_time(m[0]) for m in moves]
            assert times == sorted(times)
    some = em.issue("SALES-1")["fields"]
    assert some[em.field_id("Customer") or ""] and some["assignee"]["emailAddress"].endswith(
        "@example.com"
    )


def test_seeded_refuses_what_it_cannot_load(tmp_path: Path, shared_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"no _raw_jira_api_issues\.csv"):
        seeded(tmp_path)
    with pytest.raises(ValueError, match="expected a directory"):
        seeded(tmp_path / "x.json")
    assert len(seeded(shared_dir / DEVLAKE, token="t").keys()) == 36


def test_python_api_edits_like_a_person(site: Site, clock: FixedClock) -> None:
    em = site.em
    key = em.add_issue(
        "SALES", {"summary": "Alpine", "Close date": "2026-05-01"}, status="Negotiation", author=BOB
    )
    clock.advance(minutes=3)
    em.edit_issue(key, {"Amount": 42, "status": "Signing", "Segment": "SMB"}, author=ALICE)
    issue = em.issue(key)
    assert issue["fields"]["status"]["name"] == "Signing"
    assert issue["fields"][em.field_id("Segment") or ""]["value"] == "SMB"
    latest = issue["changelog"]["histories"][0 if em.mode == "cloud" else -1]
    assert latest["author"]["displayName"] == "Alice Chen"
    assert latest["items"][0]["field"] == "status"
    assert issue["self"].startswith(site.url)
    with pytest.raises(ValueError, match="no transition"):
        em.edit_issue(key, {"status": "Lead"})
    with pytest.raises(KeyError):
        em.add_issue("SALES", {"summary": "x"}, author="nobody")
    em.delete_issue(key)
    assert site.call("GET", f"{api(site)}/issue/{key}").status_code == 404
