"""The Jira connector: Jira Cloud (REST v3) and Jira Data Center (REST v2) issues as records.

**Transport.** The ``jira`` package (pycontribs) builds the requests (per-deployment REST paths,
search, issues, transitions, creates) and parses Jira's error bodies; every byte it sends goes
through our :class:`~bridge.http.HttpClient`. Its own retries are off (``max_retries=0``) and its
session carries a transport adapter (:class:`_ThroughHttpClient`) that hands each prepared
request to ``HttpClient.request``, so Jira traffic gets our timeouts, token bucket, retries
(429 with ``Retry-After`` for every method; 5xx and network errors only for idempotent ones),
error mapping (401/403 -> AuthError, 429 -> RateLimited, 5xx -> RetriableError), redaction and,
above all, one :class:`~bridge.http.RequestCounter` that sees every attempt. Statuses Jira answers
with a meaning (400 with ``errorMessages``, 404) are handed back to the package, which raises
``JIRAError``; :func:`_refused` turns that into our errors. Where the package would make requests
we do not want (``Issue.update`` reloads the issue; its createmeta helpers refuse Cloud) the
connector calls the same ``HttpClient`` directly.

**Reading.** Records are chosen by the configured JQL. A pull asks for
``(<jql>) AND updated >= "yyyy/MM/dd HH:mm" ORDER BY updated ASC, key ASC``: JQL dates are
read in the *searching user's* timezone (``timeZone`` of ``/myself``) at minute precision, so the
cursor (the ``updated`` of the last record read, never past the signpost) is moved back by
``overlap_seconds`` and floored to the minute; re-read records are dropped by the engine by
(ref, version). Cloud pages with ``/rest/api/3/search/jql`` and ``nextPageToken``, Data Center
with ``/rest/api/2/search`` and ``startAt``. Fixed cost: ``/myself`` and ``/field`` once per
connector instance (plus ``/serverInfo`` when the deployment is auto-detected); then a full pull
of N issues costs ceil(N / page_size) searches and an incremental pull without changes one, as
long as fewer than a page of issues were updated in the re-read window (the overlap and the
cursor's minute). More cost ceil(W / page_size) for W of them, and that is not avoidable: an
issue edited again later in the cursor's minute, after the pull, matches the same JQL as the
ones already read, and only reading it shows its new ``updated`` (JQL has no finer time).

**Sub-tasks.** With ``subtasks_as`` a sub-task is its parent's task or deliverable, never a
record: pulls add ``AND issuetype not in subTaskIssueTypes()`` to the JQL. Jira stamps
``updated`` on a sub-task that changes and leaves its parent's alone, so an incremental pull
widens its search to ``(((<jql>) AND issuetype not in subTaskIssueTypes()) OR (issuetype in
subTaskIssueTypes() AND <project clause>)) AND updated >= ...``, where the project clause is a
top-level ``project = X`` / ``project in (...)`` of the JQL when it has one (a sub-task lives in
its parent's project; without one, every sub-task of the site changed in the window is read).
A changed sub-task whose parent is not on the same page has its parent re-read, one search
``(<jql>) AND key in (...)`` per 100 parents, which drops parents outside the JQL; the parent
record takes the sub-task's change time and author when they are newer. A record's version is
then ``updated#<digest of the sub-tasks as shown>``, so the engine does not drop the re-read
parent as already seen (a stored version without ``#`` is checked against ``updated`` alone).
The cursor's ``subtasks`` partition remembers the sub-tasks handled within the re-read window,
so a quiet pull after a sub-task change is still one search. Not seen before the next census:
a sub-task deleted, or moved away from a parent (its old parent).

Offset paging can skip a record when another one, read earlier in the same pull, is edited and
moves to the end of the ordering. Such a record shows up twice in one pull; the connector then
pulls the pull's last cursor back to that record's first sighting, so the next pull re-reads
everything a shift could have hidden. (A record *leaving* the JQL mid-pull shifts silently; the
periodic full census catches what that hides.)

**Writing.** Jira has no optimistic lock, so ``update(expected_version=...)`` first reads the
issue's ``updated`` (one GET per update) and raises StaleVersion if it moved. Field changes are
sent with one ``PUT /issue``; a ``status`` change runs the workflow transitions that lead there
(see :meth:`JiraConnector._move`). The record an update returns is read back (one GET), except
on Cloud when the PUT is the update's last write: it asks ``returnIssue=true`` (changelog
expanded) and Jira answers with the issue as the edit left it, so a field edit costs two
requests (version GET, PUT). Data Center has no ``returnIssue`` (204): three. The version GET
cannot be skipped for a version known from an earlier pull: the guard is only as good as the
time between its read and the write. A batch of field edits (:meth:`JiraConnector.update_many`,
the engine's batch hook) reads the versions of 100 issues with one search instead, then PUTs
each: K + ceil(K / 100) requests on Cloud. Creates are stamped with the canonical id in a custom
field (``stamp_field``) that :meth:`~JiraConnector.find_by_stamp` searches.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import Decimal, InvalidOperation
from functools import partial
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import requests
from jira import JIRA, JIRAError
from pydantic import Field, field_validator, model_validator
from requests.adapters import BaseAdapter

from bridge.errors import UserError
from bridge.http import Auth, HttpClient, RequestCounter, RetryPolicy
from bridge.secrets import Secret
from connectors.base import (
    AuthError,
    Connector,
    ConnectorConfig,
    ConnectorError,
    Cursor,
    FatalError,
    HistoryEntry,
    Page,
    RemoteField,
    RemoteRecord,
    RemoteUser,
    Schema,
    SkippableRecord,
    StaleVersion,
    WebhookRejected,
    record_or_error,
)
from connectors.jira.adf import adf_to_markdown, markdown_to_adf

__all__ = ["JiraConfig", "JiraConnector"]

log = logging.getLogger("salesbridge.jira")

Raw = dict[str, Any]

# Statuses that mean something in Jira's answer: handed back to the jira package, not raised.
_ANSWERS = tuple(s for s in range(400, 500) if s not in (401, 403, 429))
_FORWARDED_HEADERS = frozenset({"content-type", "x-atlassian-token"})
_ORDER_BY = re.compile(r"\border\s+by\b", re.IGNORECASE)
_JQL_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|[()]|!=|[^\s()"\'=!]+|=')
_SUBTASK_TYPES = "subTaskIssueTypes()"
_HANDLED = "subtasks"  # cursor partition: the sub-tasks whose parents a pull read
_READ_ONLY = frozenset(
    {
        "created", "updated", "creator", "resolutiondate", "lastViewed", "statuscategorychangedate",
        "votes", "watches", "workratio", "progress", "aggregateprogress", "aggregatetimespent",
        "aggregatetimeestimate", "aggregatetimeoriginalestimate", "timespent", "subtasks",
        "attachment", "worklog", "issuelinks", "comment", "statusCategory", "project", "issuekey",
    }
)  # fmt: skip
_RICH_TEXT = frozenset(
    {"description", "environment", "com.atlassian.jira.plugin.system.customfieldtypes:textarea"}
)
_DELIVERABLE_STATUS = {"new": "missing", "indeterminate": "draft", "done": "approved"}
_MAX_TRANSITIONS = 20
VERSION_BATCH = 100  # issues whose versions one search reads before a batch of edits
_USER_PAGE = 1000


class JiraConfig(ConnectorConfig):
    """One Jira site. Cloud authenticates with ``email`` + API ``token`` (basic auth), Data
    Center with ``token`` alone as a personal access token (bearer)."""

    kind: Literal["jira"] = "jira"
    url: str = Field(description="site URL, e.g. https://example.atlassian.net")
    deployment: Literal["auto", "cloud", "datacenter"] = Field(
        "auto", description='"auto" asks /serverInfo once; "cloud" or "datacenter" saves that'
    )
    email: str | None = Field(None, description="Cloud: the account's e-mail (basic auth)")
    token: Secret = Field(description='API token (Cloud) or PAT (Data Center): "env:JIRA_TOKEN"')
    jql: str = Field(
        min_length=1,
        description="which issues are sales projects, e.g. project = SALES AND issuetype = "
        '"Sales Project" (no ORDER BY: pulls order by updated)',
    )
    project: str | None = Field(None, description="project key that creates go to")
    issue_type: str = Field("Sales Project", description="issue type of created issues")
    stamp_field: str = Field(
        "Salesbridge ID",
        description="text custom field (name or id) holding the canonical project id",
    )
    fields: list[str] | None = Field(
        None,
        description="fields pulls ask for (names or ids); unset: those the mapping needs "
        "(see request_fields), else every navigable field",
    )
    page_size: int = Field(
        100, ge=1, le=5000, description="issues per search page (Data Center caps at 1000)"
    )
    overlap_seconds: int = Field(
        120, ge=0, description="re-read window before the cursor (JQL has minute precision)"
    )
    comments_as_actions: bool = Field(
        False, description="pull comments as the `comment` field shaped as actions"
    )
    subtasks_as: Literal["tasks", "deliverables", "none"] = Field(
        "none",
        description="read and write sub-tasks as the `subtasks` field shaped as "
        "tasks/deliverables (writes create missing sub-tasks and move them to a done or "
        "not-done status; they never delete one); sub-tasks are then no records themselves, "
        "and a sub-task's change is pulled with its parent at the next incremental pull",
    )
    subtask_type: str = Field("Sub-task", description="issue type of the sub-tasks created")
    changelog: bool = Field(True, description="expand the changelog in pulls (stage history)")
    webhook_secret: Secret | None = Field(
        None,
        description="the secret of the site's webhook (Cloud: Settings > System > WebHooks; "
        'Data Center 10+: the same), to verify X-Hub-Signature, e.g. "env:JIRA_WEBHOOK_SECRET"',
    )

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be the site's http(s) URL, e.g. https://example.atlassian.net")
        if parts.username or parts.password:
            raise ValueError("must not carry credentials; use email and token")
        return v.strip().rstrip("/")

    @field_validator("jql")
    @classmethod
    def _jql(cls, v: str) -> str:
        if _ORDER_BY.search(v):
            raise ValueError("must not contain ORDER BY: pulls order by updated themselves")
        return v.strip()

    @model_validator(mode="after")
    def _auth(self) -> JiraConfig:
        if self.deployment == "cloud" and not self.email:
            raise ValueError("Jira Cloud needs `email` (the account's e-mail) with the API token")
        return self


# --------------------------------------------------------------------------- transport


class _ThroughHttpClient(BaseAdapter):
    """A requests transport that sends each request of the jira package through HttpClient."""

    def __init__(self, http: HttpClient) -> None:
        super().__init__()
        self.http = http

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() in _FORWARDED_HEADERS}
        return self.http.request(
            request.method or "GET",
            request.url or "",
            data=request.body,
            headers=headers,
            expect=_ANSWERS,
        )

    def close(self) -> None:
        """The HttpClient's session belongs to the connector, which closes it."""


# --------------------------------------------------------------------------- metadata


@dataclass(frozen=True)
class _Transition:
    id: str
    name: str
    to: str
    screen: Mapping[str, Raw]
    category: str = ""
    """The target status's category: ``new``, ``indeterminate`` or ``done``."""
    """Fields on the transition's screen: id -> {required, hasDefaultValue, name...}."""


@dataclass
class _Meta:
    """What a connector instance learns once: who it is, where, and Jira's fields."""

    cloud: bool
    user: Raw
    tz: tzinfo
    fields: dict[str, Raw]
    by_name: dict[str, list[str]]
    stamp_id: str | None
    """The stamp field's id; None where the site lacks it (then creating is refused)."""
    stamp_problem: str | None
    statuses: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    graph: dict[tuple[str, str, str], list[_Transition]] = field(default_factory=dict)
    accounts: dict[str, Raw | None] = field(default_factory=dict)

    def stamp(self, connector: str) -> str:
        """The stamp field's id, or FatalError saying how to create it."""
        if self.stamp_id is None:
            raise FatalError(self.stamp_problem or "no stamp field", connector=connector)
        return self.stamp_id

    def resolve(self, name_or_id: str) -> str | None:
        if name_or_id in self.fields:
            return name_or_id
        ids = self.by_name.get(name_or_id.casefold(), [])
        return ids[0] if len(ids) == 1 else None

    def schema(self, fid: str) -> Raw:
        schema = self.fields.get(fid, {}).get("schema")
        return schema if isinstance(schema, dict) else {}


# --------------------------------------------------------------------------- the connector


class JiraConnector(Connector[JiraConfig]):
    """Adapter to one Jira site. No I/O until the first call; metadata is cached per instance.

    ``counter`` counts every HTTP attempt (benchmarks read it); ``sleep`` and ``retry`` are
    passed to the HttpClient (tests observe waits without sleeping); ``environ`` is where the
    token's environment variable is read (default: the process environment).
    """

    kind: ClassVar[str] = "jira"
    config_model: ClassVar[type[ConnectorConfig]] = JiraConfig

    def __init__(
        self,
        name: str,
        config: JiraConfig,
        *,
        counter: RequestCounter | None = None,
        sleep: Callable[[float], None] = time.sleep,
        retry: RetryPolicy | None = None,
        environ: dict[str, str] | None = None,
    ) -> None:
        super().__init__(name, config)
        self.counter = counter or RequestCounter()
        self._sleep = sleep
        self._retry = retry
        self._environ = environ
        self._lock = threading.RLock()
        self._http: HttpClient | None = None
        self._client: JIRA | None = None
        self._server: Raw | None = None
        self._cached: _Meta | None = None
        self._wanted: tuple[str, ...] | None = tuple(config.fields) if config.fields else None

    # ------------------------------------------------------------------ setup

    def request_fields(self, ids: Sequence[str]) -> None:
        """Ask pulls for exactly these fields (ids or names), e.g. a mapping's
        ``remote_fields_needed``, plus what the connector itself reads."""
        self._wanted = tuple(ids)

    @property
    def api(self) -> str:
        """The REST path prefix: ``rest/api/3`` on Cloud, ``rest/api/2`` on Data Center."""
        return "rest/api/3" if self._meta().cloud else "rest/api/2"

    def _http_client(self) -> HttpClient:
        with self._lock:
            if self._http is None:
                try:
                    token = self.config.token.reveal(self._environ)
                except UserError as exc:
                    raise AuthError(f"{self.name}: {exc}", connector=self.name) from None
                auth = Auth.basic(self.config.email, token) if self.config.email else None
                kwargs: dict[str, Any] = {"counter": self.counter, "sleep": self._sleep}
                if self._retry is not None:
                    kwargs["retry"] = self._retry
                self._http = HttpClient.from_config(
                    self.name,
                    self.config.url,
                    self.config,
                    auth=auth or Auth.bearer(token),
                    **kwargs,
                )
            return self._http

    def _jira(self) -> JIRA:
        with self._lock:
            if self._client is None:
                http = self._http_client()
                cloud = self.config.deployment == "cloud"
                if self.config.deployment == "auto":
                    cloud = self._server_info().get("deploymentType") == "Cloud"
                client = JIRA(
                    server=self.config.url,
                    options={"rest_api_version": "3" if cloud else "2", "check_update": False},
                    get_server_info=False,
                    max_retries=0,
                )
                # The package has no public way to inject a session; its own is replaced at
                # the transport level, which keeps every request it builds on our HttpClient.
                adapter = _ThroughHttpClient(http)
                client._session.mount("https://", adapter)
                client._session.mount("http://", adapter)
                client.deploymentType = "Cloud" if cloud else "Server"
                self._client = client
            return self._client

    def _server_info(self) -> Raw:
        with self._lock:
            if self._server is None:
                info = self._http_client().get_json("rest/api/2/serverInfo")
                if not isinstance(info, dict):
                    raise FatalError(f"{self.name}: /serverInfo is not a JSON object")
                self._server = info
            return self._server

    def _meta(self) -> _Meta:
        with self._lock:
            if self._cached is None:
                client = self._jira()
                try:
                    me = client.myself()
                    raw_fields = client.fields()
                except JIRAError as exc:
                    raise self._refused(exc, "reading the account and fields") from None
                fields = {f["id"]: f for f in raw_fields if isinstance(f, dict) and "id" in f}
                by_name: dict[str, list[str]] = {}
                for fid, f in fields.items():
                    by_name.setdefault(str(f.get("name", "")).casefold(), []).append(fid)
                # Seed the package's name->id cache so its searches do not fetch /field again.
                client._fields_cache_value = {
                    name: fid for fid, f in fields.items() for name in f.get("clauseNames", ())
                }
                stamp = self.config.stamp_field
                stamp_ids = [stamp] if stamp in fields else by_name.get(stamp.casefold(), [])
                problem = None
                if len(stamp_ids) != 1:
                    found = "no field" if not stamp_ids else f"{len(stamp_ids)} fields"
                    problem = (
                        f"{self.name}: stamp_field {stamp!r}: Jira has {found} of that name; "
                        "create a text custom field for it (or write its id, customfield_NNNNN) "
                        "so that issues the bridge creates are recognised after a crash"
                    )
                self._cached = _Meta(
                    cloud=client.deploymentType == "Cloud",
                    user=me if isinstance(me, dict) else {},
                    tz=_zone(me.get("timeZone") if isinstance(me, dict) else None),
                    fields=fields,
                    by_name=by_name,
                    stamp_id=stamp_ids[0] if len(stamp_ids) == 1 else None,
                    stamp_problem=problem,
                )
            return self._cached

    def close(self) -> None:
        with self._lock:
            client, http = self._client, self._http
            self._client = self._http = None
            self._cached = None
            self._server = None
        if client is not None:
            client.close()  # type: ignore[no-untyped-call]
        if http is not None:
            http.close()

    # ------------------------------------------------------------------ webhooks

    def verify_webhook(self, headers: Mapping[str, str], body: bytes, url: str) -> list[str]:
        """The issue a delivery concerns, once ``X-Hub-Signature: sha256=<hex>`` (HMAC-SHA256
        of the body, keyed with ``webhook_secret``) proves it came from the site.

        Registration is done in Jira (admin UI, or ``/rest/api/3/webhook`` for Connect and
        OAuth apps; Data Center ``/rest/webhooks/1.0/webhook``) with the receiver's URL
        ``<public_url>/webhooks/<connector>`` and the same secret."""
        if self.config.webhook_secret is None:
            raise WebhookRejected(f"{self.name}: set webhook_secret to receive Jira webhooks")
        scheme, _, signature = (headers.get("x-hub-signature") or "").partition("=")
        key = self.config.webhook_secret.reveal().encode()
        expected = hmac.new(key, body, hashlib.sha256).hexdigest()
        if scheme.lower() != "sha256" or not hmac.compare_digest(expected, signature.lower()):
            raise WebhookRejected(f"{self.name}: the X-Hub-Signature does not match")
        try:
            payload = json.loads(body)
        except ValueError:
            raise WebhookRejected(f"{self.name}: the delivery is not JSON") from None
        if not isinstance(payload, dict):
            raise WebhookRejected(f"{self.name}: the delivery is not a Jira event")
        issue = payload.get("issue")
        key_ = issue.get("key") if isinstance(issue, dict) else None
        return [key_] if isinstance(key_, str) else []

    # ------------------------------------------------------------------ reading

    def check(self) -> str:
        """``Jira Cloud 1001.0.0 as jane@example.com``: serverInfo plus /myself."""
        info = self._server_info()
        me = self._meta().user
        who = me.get("emailAddress") or me.get("name") or me.get("displayName") or "?"
        kind = "Cloud" if info.get("deploymentType") == "Cloud" else "Data Center"
        return f"Jira {kind} {info.get('version', '?')} at {self.config.url} as {who}"

    def discover(self) -> Schema:
        """Every field of the site (custom ones by display name, with the options of the
        configured project and issue type), the workflow's statuses as stages, and the users
        assignable in the project."""
        meta = self._meta()
        options = self._create_options(meta)
        if "priority" not in options:  # no create screen to read it from
            data = self._http_client().get_json(f"{self.api}/priority", expect=(404,))
            names = [str(p["name"]) for p in data or [] if isinstance(p, dict) and p.get("name")]
            options["priority"] = tuple(names)
        stages = self._workflow_statuses(meta, self.config.project, self.config.issue_type)
        found: list[RemoteField] = []
        for fid, raw in meta.fields.items():
            kind = _field_type(raw)
            opts = stages if fid == "status" else options.get(fid, ())
            writable = fid not in _READ_ONLY
            if fid == "comment" and self.config.comments_as_actions:
                kind = "json"
            if fid == "subtasks" and self.config.subtasks_as != "none":
                kind = "json"
            found.append(
                RemoteField(
                    fid,
                    str(raw.get("name") or fid),
                    kind,
                    options=tuple(opts),
                    custom=bool(raw.get("custom")),
                    writable=writable
                    or fid == "status"
                    or (fid == "subtasks" and self.config.subtasks_as != "none"),
                )
            )
        return Schema(
            fields=tuple(sorted(found, key=lambda f: f.id)),
            users=self._users(meta),
            stages=stages,
        )

    def pull(self, cursor: Cursor, *, signpost: datetime, full: bool = False) -> Iterator[Page]:
        if signpost.tzinfo is None:
            raise ValueError(f"signpost must be timezone-aware, got {signpost!r}")
        meta = self._meta()
        start = _position(cursor.get(""), self.name)
        scope = self._scope()
        incremental = not full and start is not None
        # Jira stamps `updated` on a sub-task that changes, never on its parent: with sub-tasks
        # read as the parent's tasks or deliverables, an incremental pull also asks for the
        # sub-tasks changed in its window, then re-reads their parents (see _parent_records).
        watch = incremental and self.config.subtasks_as != "none"
        jql = scope
        if watch:
            changed = f"issuetype in {_SUBTASK_TYPES}"
            project = _project_clause(self.config.jql)
            jql = f"(({scope}) OR ({changed}{f' AND {project}' if project else ''}))"
        if incremental:
            assert start is not None
            since = _jql_time(start - timedelta(seconds=self.config.overlap_seconds), meta.tz)
            jql += f" AND updated >= {_quote(since)}"
        jql += " ORDER BY updated ASC, key ASC"
        fields = self._search_fields(meta)
        extra: list[str] = []
        if watch and not {"*navigable", "*all"} & set(fields):
            extra = [f for f in ("issuetype", "parent") if f not in fields]
        position = start
        first_seen: dict[str, datetime] = {}
        shifted_back_to: datetime | None = None
        # The sub-tasks whose parents were read, by the `updated` they were read at: the
        # overlap re-reads them, and their parents need no second read (a quiet pull stays
        # one search). Kept in the cursor for the window the next pull re-reads.
        handled = _handled(cursor.get(_HANDLED))
        for data in self._pages(jql, [*fields, *extra]):
            issues = data["issues"]
            records: list[RemoteRecord] = []
            skipped: list[SkippableRecord] = []
            read: list[datetime] = []  # the `updated` of every issue of the page
            changes: dict[str, tuple[datetime, str | None]] = {}  # parent -> its sub-tasks'
            for raw in issues:
                parent = _parent_key(raw) if watch else None
                if parent is not None:
                    at, by = self._sub_task_change(raw, meta)
                    if at is None:
                        changes.setdefault(parent, (signpost, None))
                        continue
                    read.append(at)
                    if handled.get(str(raw["key"])) == _iso(at):
                        continue  # its parent was read at this state of it
                    handled[str(raw["key"])] = _iso(at)
                    if parent not in changes or at > changes[parent][0]:
                        changes[parent] = (at, by)
                    continue
                try:
                    record = self._record(_without(raw, extra), meta)
                except SkippableRecord as exc:
                    skipped.append(exc)
                    continue
                assert record.updated_at is not None
                read.append(record.updated_at)
                seen = first_seen.setdefault(record.ref, record.updated_at)
                if seen != record.updated_at:  # edited mid-pull: later offsets shifted
                    shifted_back_to = min(seen, shifted_back_to or seen)
                records.append(record)
            if changes:
                on_page = {r.ref for r in records}
                missing = [key for key in changes if key not in on_page]
                records += self._parent_records(missing, fields, meta, skipped)
                records = [_changed_at(r, changes.get(r.ref)) for r in records]
            if read:
                reached = min(max(read), signpost)
                if position is None or reached > position:
                    position = reached
            if shifted_back_to is not None and position is not None:
                position = min(position, shifted_back_to)
            page_cursor = cursor.advanced("", _iso(position)) if position is not None else None
            if watch and page_cursor is not None and position is not None:
                window = position - timedelta(seconds=self.config.overlap_seconds + 60)
                kept = {k: v for k, v in handled.items() if datetime.fromisoformat(v) >= window}
                if kept or cursor.get(_HANDLED) is not None:
                    page_cursor = page_cursor.advanced(_HANDLED, json.dumps(kept, sort_keys=True))
            if issues or skipped:
                yield Page(records, page_cursor, skipped)

    def _scope(self) -> str:
        """The configured JQL; with ``subtasks_as``, without sub-tasks: a sub-task is its
        parent's task or deliverable, never a record of its own."""
        scope = f"({self.config.jql})"
        if self.config.subtasks_as != "none":
            scope += f" AND issuetype not in {_SUBTASK_TYPES}"
        return scope

    def _sub_task_change(self, raw: Raw, meta: _Meta) -> tuple[datetime | None, str | None]:
        """When a sub-task of the search changed, and who changed it (its changelog)."""
        try:
            record = self._record(raw, meta)
        except SkippableRecord:
            return None, None
        return record.updated_at, record.updated_by

    def _parent_records(
        self, keys: Sequence[str], fields: Sequence[str], meta: _Meta, skipped: list[Any]
    ) -> list[RemoteRecord]:
        """The records of the parents ``keys`` that the configured JQL selects: one search
        ``(<jql>) AND key in (...)`` per 100 (a parent outside the JQL is not found, so a
        sub-task of an issue that is no sales project yields nothing). A key Jira refuses (an
        issue deleted since) makes that chunk read one key at a time, without it."""
        out: list[RemoteRecord] = []
        scope = self._scope()
        for i in range(0, len(keys), VERSION_BATCH):
            chunk = keys[i : i + VERSION_BATCH]
            try:
                raws = self._found(f"{scope} AND key in ({', '.join(map(_quote, chunk))})", fields)
            except FatalError as exc:
                if exc.status != 400 or isinstance(exc, AuthError):
                    raise
                raws = []
                for key in chunk if len(chunk) > 1 else ():
                    try:
                        raws += self._found(f"{scope} AND key = {_quote(key)}", fields)
                    except FatalError as one:
                        if one.status != 400 or isinstance(one, AuthError):
                            raise
            for raw in raws:
                try:
                    out.append(self._record(raw, meta))
                except SkippableRecord as exc:
                    skipped.append(exc)
        return out

    def _found(self, jql: str, fields: Sequence[str]) -> list[Raw]:
        """Every issue of a search by keys (at most 100), in key order."""
        return [
            raw
            for data in self._pages(f"{jql} ORDER BY key ASC", fields, limit=VERSION_BATCH)
            for raw in data["issues"]
        ]

    def _pages(
        self,
        jql: str,
        fields: Sequence[str],
        *,
        limit: int | None = None,
        changelog: bool | None = None,
    ) -> Iterator[Raw]:
        """Each page of a search (Cloud: ``nextPageToken``; Data Center: ``startAt``)."""
        token: str | None = None
        offset = 0
        while True:
            data = self._search(
                jql, fields, token=token, offset=offset, limit=limit, changelog=changelog
            )
            issues = data.get("issues")
            if not isinstance(issues, list):
                raise FatalError(f"{self.name}: the search answered without an issue list")
            yield data
            if self._meta().cloud:
                token = data.get("nextPageToken") or None
                if not token or data.get("isLast") is True or not issues:
                    return
            else:
                offset += len(issues)
                total = data.get("total")
                if not issues or (isinstance(total, int) and offset >= total):
                    return

    def get(self, ref: str) -> RemoteRecord | None:
        meta = self._meta()
        raw = self._issue(ref, self._search_fields(meta), changelog=self.config.changelog)
        return None if raw is None else self._record(raw, meta)

    def find_by_stamp(self, stamp: str) -> RemoteRecord | None:
        """The first-created issue whose stamp field is exactly ``stamp``.

        Text fields only support JQL's ``~`` (a word search), so the phrase is searched and
        the hits are compared exactly.
        """
        meta = self._meta()
        stamp_id = meta.stamp(self.name)
        cf = stamp_id.removeprefix("customfield_")
        schema = meta.schema(stamp_id)
        text = schema.get("type") == "string" or "text" in str(schema.get("custom", ""))
        clause = f"cf[{cf}] ~ {_quote(_quote(stamp))}" if text else f"cf[{cf}] = {_quote(stamp)}"
        data = self._search(f"{clause} ORDER BY created ASC", self._search_fields(meta))
        for raw in data.get("issues") or []:
            try:
                record = self._record(raw, meta)
            except SkippableRecord:
                continue
            if record.stamp == stamp:
                return record
        return None

    def history(self, ref: str, since: datetime | None = None) -> list[HistoryEntry]:
        """The issue's changelog, oldest first (Cloud pages through ``/changelog``)."""
        meta = self._meta()
        histories: list[Any] = []
        if meta.cloud:
            offset = 0
            while True:
                response = self._http_client().request(
                    "GET",
                    f"{self.api}/issue/{ref}/changelog",
                    params={"startAt": offset, "maxResults": 100},
                    expect=(404,),
                )
                if response.status_code == 404:
                    return []
                data = self._http_client().decode_json(response)
                values = data.get("values") or []
                histories.extend(values)
                offset += len(values)
                total = data.get("total")
                if not values or data.get("isLast") or (isinstance(total, int) and offset >= total):
                    break
        else:
            raw = self._issue(ref, ["updated"], changelog=True)
            if raw is None:
                return []
            histories = (raw.get("changelog") or {}).get("histories") or []
        entries = _history(histories, meta)
        return [h for h in entries if since is None or h.at >= since]

    # ------------------------------------------------------------------ writing

    def create(self, fields: Mapping[str, Any], *, stamp: str) -> RemoteRecord:
        if not self.config.project:
            raise FatalError(
                f"{self.name}: cannot create issues: set `project` (and `issue_type`) in the "
                "connector's config",
                connector=self.name,
            )
        meta = self._meta()
        stamp_id = meta.stamp(self.name)
        changes = dict(fields)
        target = changes.pop("status", None)
        subtasks = self._pop_subtasks(changes)
        payload = self._payload(changes, meta, ref="(new issue)")
        payload.update(
            {
                "project": {"key": self.config.project},
                "issuetype": {"name": self.config.issue_type},
                stamp_id: self._to_jira(stamp_id, stamp, meta, "(new issue)"),
            }
        )
        try:
            created = self._jira().create_issue(fields=payload, prefetch=False)
        except JIRAError as exc:
            raise self._refused(exc, f"creating an issue in {self.config.project}") from None
        key = str(created.key)
        if target is not None:
            raw = self._issue(key, ["status", "project", "issuetype"])
            if raw is None:
                raise FatalError(f"{self.name}: {key} vanished right after it was created")
            self._move(key, raw, str(target), {}, meta)
        if subtasks is not None:
            self._write_subtasks(key, subtasks, meta)
        return self._written(key, meta)

    def update(
        self, ref: str, changes: Mapping[str, Any], *, expected_version: str | None
    ) -> RemoteRecord:
        """Edit fields (one PUT), then run transitions for a ``status`` change.

        With ``expected_version`` the issue is read first (one GET): Jira has no conditional
        update, so a change between that read and the write goes unnoticed for that short
        window. A deleted issue is StaleVersion with ``actual=None``. The record returned is
        the PUT's answer on Cloud when nothing is written after it, else read back.
        """
        meta = self._meta()
        changes = dict(changes)
        target = changes.pop("status", None)
        subtasks = self._pop_subtasks(changes)
        current: Raw | None = None
        if expected_version is not None or target is not None:
            current = self._issue(ref, [*self._version_fields(), "status", "project", "issuetype"])
            if current is None:
                raise StaleVersion(ref, expected_version, None, connector=self.name)
            if expected_version is not None:
                actual = self._version(current)
                if not _same_version(expected_version, actual):
                    raise StaleVersion(ref, expected_version, actual, connector=self.name)
        on_screens: set[str] = set()
        available: list[_Transition] | None = None
        if target is not None and current is not None:
            # Fields a transition screen takes (resolution...) go with the transition: an
            # edit would be refused for a field that is not on the edit screen.
            available = self._transitions(ref, current, meta)
            for t in available:
                on_screens |= set(t.screen) & set(changes)
        edit = {k: v for k, v in changes.items() if k not in on_screens}
        # When the edit is the last write (no transition, no sub-tasks), Cloud answers it with
        # the issue as it now is (returnIssue): no read-back. Data Center answers 204.
        last = target is None and subtasks is None
        if edit:
            answer = self._edit(
                ref, self._payload(edit, meta, ref), expected_version, return_issue=last
            )
            if last and answer is not None:
                return self._record(self._as_searched(answer, meta), meta)
        if target is not None and current is not None:
            screen_changes = {k: changes[k] for k in on_screens}
            used = self._move(ref, current, str(target), screen_changes, meta, available)
            rest = {k: v for k, v in screen_changes.items() if k not in used}
            if rest:
                self._edit(ref, self._payload(rest, meta, ref), expected_version)
        if subtasks is not None:
            self._write_subtasks(ref, subtasks, meta)
        return self._written(ref, meta)

    def update_many(
        self,
        changes: Mapping[str, Mapping[str, Any]],
        expected_versions: Mapping[str, str | None] | None = None,
    ) -> dict[str, RemoteRecord | ConnectorError]:
        """Many field edits: the versions of up to 100 issues read with one search, then one
        PUT per issue (on Cloud with ``returnIssue``: its answer is the record).

        An issue whose ``updated`` is no longer the expected version is StaleVersion and is not
        written; one missing from the search (deleted) too. An update with a ``status`` (a
        workflow transition) or sub-tasks takes :meth:`update`, which reads the issue anyway.
        Cost on Cloud: K + ceil(K / 100); on Data Center, which answers a PUT with 204, every
        written issue is read back as :meth:`update` does: 2K + ceil(K / 100). The guard is only
        as good as the time between the search and each PUT (Jira has no conditional write).
        Errors of one issue are returned for it; auth, rate-limit and network errors raised.
        """
        expected = expected_versions or {}
        meta = self._meta()
        out: dict[str, RemoteRecord | ConnectorError] = {}
        batched: list[str] = []
        for ref, fields in changes.items():
            workflow = "status" in fields or (
                self.config.subtasks_as != "none" and "subtasks" in fields
            )
            if workflow or not fields:
                out[ref] = self.update_or_error(ref, fields, expected.get(ref))
            else:
                batched.append(ref)
        for i in range(0, len(batched), VERSION_BATCH):
            chunk = batched[i : i + VERSION_BATCH]
            checked = [ref for ref in chunk if expected.get(ref) is not None]
            try:
                current = self._versions(checked)
            except FatalError as exc:
                if exc.status != 400 or isinstance(exc, AuthError):
                    raise
                # Jira refuses a JQL naming a deleted issue's key: each update reads its own.
                for ref in chunk:
                    out[ref] = self.update_or_error(ref, changes[ref], expected.get(ref))
                continue
            for ref in chunk:
                want = expected.get(ref)
                if want is not None and not _same_version(want, current.get(ref)):
                    out[ref] = StaleVersion(ref, want, current.get(ref), connector=self.name)
                    continue
                write = partial(self._write_searched, ref, changes[ref], want, meta)
                out[ref] = record_or_error(write)
        return out

    def _write_searched(
        self, ref: str, fields: Mapping[str, Any], want: str | None, meta: _Meta
    ) -> RemoteRecord:
        """Write an issue whose version was just checked; the answer is the record (Cloud),
        else it is read back."""
        payload = self._payload(fields, meta, ref)
        answer = self._edit(ref, payload, want, return_issue=True)
        if answer is None:
            return self._written(ref, meta)
        return self._record(self._as_searched(answer, meta), meta)

    def _versions(self, refs: Sequence[str]) -> dict[str, str | None]:
        """The current version of each of ``refs`` (at most 100) that exists: one search for
        ``key in (...)`` asking only for ``updated`` (more only if Jira pages it smaller)."""
        if not refs:
            return {}
        jql = f"key in ({', '.join(_quote(ref) for ref in refs)})"
        found: dict[str, str | None] = {}
        for data in self._pages(jql, self._version_fields(), limit=len(refs), changelog=False):
            for issue in data["issues"]:
                if isinstance(issue, dict):
                    found[str(issue.get("key"))] = self._version(issue)
        return found

    def _version_fields(self) -> list[str]:
        """What :meth:`_version` reads: ``updated``, and the sub-tasks when they are read."""
        return ["updated", *(["subtasks"] if self.config.subtasks_as != "none" else [])]

    def _version(self, issue: Raw) -> str | None:
        """The issue's version as records carry it: its ``updated``; with ``subtasks_as``,
        and sub-tasks, followed by ``#`` and a digest of the sub-tasks as the record shows them
        (their summary and status category), since a sub-task's change leaves the parent's
        ``updated`` as it was."""
        fields = issue.get("fields") or {}
        updated = _parse_time(fields.get("updated"))
        if updated is None:
            return None
        version = _iso(updated)
        if self.config.subtasks_as != "none" and fields.get("subtasks"):
            shown = json.dumps(self._subtasks(fields["subtasks"]), sort_keys=True)
            version += "#" + hashlib.sha256(shown.encode()).hexdigest()[:12]
        return version

    # ------------------------------------------------------------------ sub-tasks

    def _pop_subtasks(self, changes: dict[str, Any]) -> list[Raw] | None:
        """The wanted sub-tasks out of ``changes`` (None when they are not written)."""
        if self.config.subtasks_as == "none" or "subtasks" not in changes:
            return None
        wanted = changes.pop("subtasks")
        return [w for w in wanted or [] if isinstance(w, dict)]

    def _write_subtasks(self, ref: str, wanted: Sequence[Raw], meta: _Meta) -> None:
        """Make the issue's sub-tasks match ``wanted`` (tasks or deliverables), matched by
        summary: a missing one is created (``subtask_type``, parent ``ref``), one in the wrong
        status category is moved by a transition to a status of the right one. Sub-tasks that
        are not wanted are left alone: the bridge deletes no Jira issue."""
        parent = self._issue(ref, ["subtasks", "project"])
        if parent is None:
            raise StaleVersion(ref, None, None, connector=self.name)
        have: dict[str, Raw] = {}
        for sub in (parent.get("fields") or {}).get("subtasks") or []:
            f = sub.get("fields") or {} if isinstance(sub, dict) else {}
            have.setdefault(str(f.get("summary") or "").strip().casefold(), sub)
        project = str(((parent.get("fields") or {}).get("project") or {}).get("key") or "")
        for item in wanted:
            title = str(item.get("title") or item.get("kind") or "").strip()
            if not title:
                continue
            want = self._wanted_category(item)
            sub = have.pop(title.casefold(), None)
            if sub is None:
                key = self._create_subtask(ref, project, title)
                if want in ("new", "open"):
                    continue  # a new issue starts in its workflow's initial status
                raw = self._issue(key, ["status", "project", "issuetype"])
                if raw is None:
                    raise FatalError(f"{self.name}: {key} vanished right after it was created")
            else:
                key = str(sub.get("key"))
                raw = {
                    "key": key,
                    "fields": {**(sub.get("fields") or {}), "project": {"key": project}},
                }
            status = (raw.get("fields") or {}).get("status") or {}
            category = str((status.get("statusCategory") or {}).get("key") or "")
            if category == want or (want == "open" and category != "done"):
                continue
            self._to_category(key, raw, want, meta)

    def _wanted_category(self, item: Raw) -> str:
        """The status category a task or deliverable asks for (``open``: any but done)."""
        if self.config.subtasks_as == "tasks":
            return "done" if item.get("done") else "open"
        status = str(item.get("status") or "missing")
        return {"approved": "done", "missing": "new"}.get(status, "indeterminate")

    def _create_subtask(self, parent: str, project: str, title: str) -> str:
        fields = {
            "project": {"key": project},
            "issuetype": {"name": self.config.subtask_type},
            "parent": {"key": parent},
            "summary": title,
        }
        try:
            created = self._jira().create_issue(fields=fields, prefetch=False)
        except JIRAError as exc:
            raise self._refused(
                exc, f"creating the sub-task {title!r} of {parent} ({self.config.subtask_type!r})"
            ) from None
        return str(created.key)

    def _to_category(self, key: str, issue: Raw, want: str, meta: _Meta) -> None:
        """One transition of sub-task ``key`` to a status of category ``want`` (``open``: to
        do first, else in progress); FatalError naming the transitions if there is none."""
        available = self._transitions(key, issue, meta)
        order = ["new", "indeterminate"] if want == "open" else [want]
        ranked = sorted(
            (t for t in available if t.category in order), key=lambda t: order.index(t.category)
        )
        current = _status(issue)
        if not ranked:
            offered = ", ".join(f"{t.name!r} -> {t.to!r} ({t.category})" for t in available)
            raise FatalError(
                f"{self.name}: sub-task {key}: no transition from {current!r} to a status of "
                f"category {want!r}; transitions: {offered or 'none'}",
                connector=self.name,
            )
        step = ranked[0]
        screen = self._screen(key, step, current, {}, meta)
        try:
            self._jira().transition_issue(key, step.id, fields=screen or None)
        except JIRAError as exc:
            raise self._refused(
                exc, f"the transition {step.name!r} of {key} ({current} -> {step.to})"
            ) from None

    # ------------------------------------------------------------------ requests

    def _search(
        self,
        jql: str,
        fields: Sequence[str],
        *,
        token: str | None = None,
        offset: int = 0,
        limit: int | None = None,
        changelog: bool | None = None,
    ) -> Raw:
        client = self._jira()
        expand = (
            "changelog" if (self.config.changelog if changelog is None else changelog) else None
        )
        limit = limit or self.config.page_size
        # One comma-separated value, the documented form, not a repeated parameter.
        field_list = [",".join(fields)]
        try:
            if self._meta().cloud:
                data = client.enhanced_search_issues(
                    jql,
                    nextPageToken=token,
                    maxResults=limit,
                    fields=field_list,
                    expand=expand,
                    json_result=True,
                )
            else:
                data = client.search_issues(
                    jql,
                    startAt=offset,
                    maxResults=limit,
                    fields=field_list,
                    expand=expand,
                    json_result=True,
                )
        except JIRAError as exc:
            raise self._refused(exc, f"searching {jql!r}") from None
        if not isinstance(data, dict):
            raise FatalError(f"{self.name}: the search answered with {type(data).__name__}")
        return data

    def _issue(self, ref: str, fields: Sequence[str], *, changelog: bool = False) -> Raw | None:
        try:
            issue = self._jira().issue(
                ref, fields=",".join(fields), expand="changelog" if changelog else None
            )
        except JIRAError as exc:
            if exc.status_code == 404:
                return None
            raise self._refused(exc, f"reading {ref}") from None
        raw = issue.raw
        return raw if isinstance(raw, dict) else None

    def _written(self, ref: str, meta: _Meta) -> RemoteRecord:
        raw = self._issue(ref, self._search_fields(meta), changelog=self.config.changelog)
        if raw is None:
            raise FatalError(f"{self.name}: {ref} vanished right after it was written")
        return self._record(raw, meta)

    def _as_searched(self, raw: Raw, meta: _Meta) -> Raw:
        """An issue Jira answered with every field (``returnIssue``) narrowed to the fields a
        pull asks for, so the record is the one a pull or :meth:`get` makes of it."""
        wanted = set(self._search_fields(meta))
        fields = raw.get("fields")
        if "*all" in wanted or not isinstance(fields, dict):
            return raw
        navigable = "*navigable" in wanted

        def kept(fid: str) -> bool:
            return fid in wanted or (
                navigable and meta.fields.get(fid, {}).get("navigable") is True
            )

        return {**raw, "fields": {k: v for k, v in fields.items() if kept(k)}}

    def _edit(
        self, ref: str, payload: Raw, expected: str | None, *, return_issue: bool = False
    ) -> Raw | None:
        """PUT the fields; with ``return_issue`` on Cloud, the issue Jira answers with (the
        edit's own state, changelog expanded as pulls read it), else None."""
        http = self._http_client()
        params: dict[str, str] | None = None
        if return_issue and self._meta().cloud:
            params = {"returnIssue": "true"}
            if self.config.changelog:
                params["expand"] = "changelog"
        response = http.request(
            "PUT",
            f"{self.api}/issue/{ref}",
            params=params,
            json={"fields": payload},
            expect=_ANSWERS,
        )
        if response.status_code == 404:
            raise StaleVersion(ref, expected, None, connector=self.name)
        if response.status_code >= 400:
            body = _json_or_none(response)
            raise FatalError(
                f"{self.name}: Jira refused the edit of {ref} ({response.status_code}): "
                f"{_messages(body) or response.reason}",
                connector=self.name,
                status=response.status_code,
            )
        if params is None or response.status_code != 200:
            return None
        answer = _json_or_none(response)
        fields = answer.get("fields") if isinstance(answer, dict) else None
        if not isinstance(fields, dict) or _parse_time(fields.get("updated")) is None:
            return None  # not the issue (a Jira without returnIssue): read it back
        return answer  # type: ignore[no-any-return]

    def _refused(self, exc: JIRAError, what: str) -> FatalError:
        status = exc.status_code
        body = _json_or_none(exc.response) if exc.response is not None else None
        detail = _messages(body) or (exc.text or "").strip() or "no reason given"
        return FatalError(
            f"{self.name}: Jira refused {what} ({status}): {detail}",
            connector=self.name,
            status=status,
        )

    def _search_fields(self, meta: _Meta) -> list[str]:
        wanted: list[str] = []
        if self._wanted is None:
            wanted.append("*navigable")
        else:
            for name in self._wanted:
                fid = meta.resolve(name) or name
                wanted.append(fid)
        wanted += ["updated", *([meta.stamp_id] if meta.stamp_id else [])]
        if self.config.comments_as_actions:
            wanted.append("comment")
        if self.config.subtasks_as != "none":
            wanted.append("subtasks")
        return list(dict.fromkeys(wanted))

    # ------------------------------------------------------------------ workflow

    def _transitions(self, ref: str, issue: Raw, meta: _Meta) -> list[_Transition]:
        """Transitions available to ``issue`` now (read fresh), remembered in the graph."""
        try:
            raw = self._jira().transitions(ref, expand="transitions.fields")
        except JIRAError as exc:
            raise self._refused(exc, f"reading the transitions of {ref}") from None
        found = [
            _Transition(
                str(t.get("id")),
                str(t.get("name", "")),
                str((t.get("to") or {}).get("name", "")),
                {k: v for k, v in (t.get("fields") or {}).items() if isinstance(v, dict)},
                str(((t.get("to") or {}).get("statusCategory") or {}).get("key", "")),
            )
            for t in raw or []
            if isinstance(t, dict)
        ]
        meta.graph[(*_workflow(issue), _status(issue).casefold())] = found
        return found

    def _move(
        self,
        ref: str,
        issue: Raw,
        target: str,
        changes: Mapping[str, Any],
        meta: _Meta,
        available: list[_Transition] | None = None,
    ) -> set[str]:
        """Run the transitions that take ``issue`` to status ``target``; return the keys of
        ``changes`` that were set on transition screens.

        A direct transition is taken when there is one. Otherwise a breadth-first search runs
        over the workflow graph learnt so far (transitions read from each status any issue of
        this workflow was in); where it knows no path, the issue moves towards the nearest
        status whose transitions are unknown (never into a "done" status, which may be a dead
        end), and transitions are read again after each step.
        A target that is not a status of the workflow fails before anything moves; a target
        that cannot be reached fails naming the statuses, after returning the issue to where
        it started if the graph knows the way back.
        """
        workflow = _workflow(issue)
        start = current = _status(issue)
        want = target.casefold()
        used: set[str] = set()
        checked = False
        for _ in range(_MAX_TRANSITIONS):
            if current.casefold() == want:
                return used
            if available is None:  # read again after each step: the issue moved
                available = self._transitions(ref, issue, meta)
            path = _path(meta.graph, workflow, current, to=want)
            if path is None:
                if not checked:
                    statuses = self._workflow_statuses(meta, *workflow)
                    if statuses and want not in {s.casefold() for s in statuses}:
                        raise FatalError(
                            f"{self.name}: {ref}: {target!r} is not a status of the workflow of "
                            f"{workflow[0]} / {workflow[1]}; its statuses are "
                            f"{', '.join(map(repr, statuses))}",
                            connector=self.name,
                        )
                    checked = True
                # Explore, but never into a "done" status: those are often dead ends (Lost,
                # Closed) that an issue cannot leave.
                known = {k[2] for k in meta.graph if k[:2] == workflow}
                done = {t.to.casefold() for k, ts in meta.graph.items() if k[:2] == workflow
                        for t in ts if t.category == "done"}  # fmt: skip
                path = _path(meta.graph, workflow, current, avoid=frozenset(known | done))
            if path is None:
                self._give_up(ref, workflow, start, current, target, available, meta)
            assert path is not None
            step = path[0]
            screen = self._screen(ref, step, current, changes, meta)
            try:
                self._jira().transition_issue(ref, step.id, fields=screen or None)
            except JIRAError as exc:
                raise self._refused(
                    exc, f"the transition {step.name!r} of {ref} ({current} -> {step.to})"
                ) from None
            used |= set(screen)
            current = step.to
            issue = {**issue, "fields": {**issue["fields"], "status": {"name": current}}}
            available = None
        raise FatalError(
            f"{self.name}: {ref}: no way from {start!r} to {target!r} within "
            f"{_MAX_TRANSITIONS} transitions; it is now in {current!r}",
            connector=self.name,
        )

    def _give_up(
        self,
        ref: str,
        workflow: tuple[str, str],
        start: str,
        current: str,
        target: str,
        available: list[_Transition],
        meta: _Meta,
    ) -> None:
        where = ""
        if current.casefold() != start.casefold():
            back = _path(meta.graph, workflow, current, to=start.casefold())
            for step in back or []:
                try:
                    self._jira().transition_issue(ref, step.id)
                except JIRAError:
                    break
                current = step.to
            where = f"; it was moved back to {current!r}" if back else f"; it is in {current!r}"
        offered = ", ".join(f"{t.name!r} -> {t.to!r}" for t in available) or "none"
        raise FatalError(
            f"{self.name}: {ref}: no workflow path from {start!r} to {target!r}; transitions "
            f"from {current!r}: {offered}{where}",
            connector=self.name,
        )

    def _screen(
        self, ref: str, step: _Transition, current: str, changes: Mapping[str, Any], meta: _Meta
    ) -> Raw:
        """Values for the transition's screen from ``changes``; FatalError naming a required
        field that neither the changes nor the issue (read only in that case) fill."""
        screen: Raw = {}
        required: list[str] = []
        for fid, spec in step.screen.items():
            if fid in changes:
                screen[fid] = self._to_jira(fid, changes[fid], meta, ref)
            elif spec.get("required") and not spec.get("hasDefaultValue"):
                required.append(fid)
        if required:
            issue = self._issue(ref, required) or {}
            held = issue.get("fields") or {}
            for fid in required:
                if held.get(fid) in (None, "", [], {}):
                    spec = step.screen[fid]
                    label = spec.get("name") or meta.fields.get(fid, {}).get("name") or fid
                    raise FatalError(
                        f"{self.name}: {ref}: the transition {step.name!r} ({current} -> "
                        f"{step.to}) requires {label!r} ({fid}), which the issue does not have; "
                        "map that field so the change carries it, or give it a default in Jira",
                        connector=self.name,
                    )
        return screen

    def _workflow_statuses(
        self, meta: _Meta, project: str | None, issue_type: str
    ) -> tuple[str, ...]:
        """The statuses of the project's workflow for ``issue_type`` (every status without a
        project); cached per connector."""
        key = (project or "", issue_type.casefold())
        if key in meta.statuses:
            return meta.statuses[key]
        http = self._http_client()
        names: list[str] = []
        data = None
        if project:
            data = http.get_json(f"{self.api}/project/{project}/statuses", expect=(404,))
            types = [t for t in data or [] if isinstance(t, dict)]
            chosen = [t for t in types if str(t.get("name", "")).casefold() == key[1]] or types
            for t in chosen:
                names += [str(s.get("name")) for s in t.get("statuses") or [] if s.get("name")]
        if data is None:  # no project, or a server without per-project statuses: all of them
            data = http.get_json(f"{self.api}/status")
            names = [str(s.get("name")) for s in data or [] if isinstance(s, dict)]
        meta.statuses[key] = tuple(dict.fromkeys(names))
        return meta.statuses[key]

    # ------------------------------------------------------------------ records

    def _record(self, raw: Any, meta: _Meta) -> RemoteRecord:
        """An issue as a RemoteRecord; SkippableRecord if it lacks what every issue has."""
        ref = str(raw.get("key") or raw.get("id") or "?") if isinstance(raw, dict) else "?"
        if not isinstance(raw, dict) or not raw.get("key"):
            raise SkippableRecord(ref, "the issue has no key", connector=self.name, payload=raw)
        fields = raw.get("fields")
        if not isinstance(fields, dict):
            raise SkippableRecord(
                ref, "the issue has no fields object", connector=self.name, payload=raw
            )
        updated = _parse_time(fields.get("updated"))
        if updated is None:
            raise SkippableRecord(
                ref,
                f"`updated` is not a date-time with a timezone: {fields.get('updated')!r}",
                connector=self.name,
                payload=raw,
            )
        shaped = {fid: self._display(fid, value, meta) for fid, value in fields.items()}
        stamp = shaped.get(meta.stamp_id) if meta.stamp_id else None
        histories = (raw.get("changelog") or {}).get("histories") or []
        history = tuple(_history(histories, meta))
        recent = [h for h in history if abs((h.at - updated).total_seconds()) <= 2]
        version = self._version(raw)
        assert version is not None
        return RemoteRecord(
            ref=ref,
            version=version,
            fields=shaped,
            updated_at=updated,
            updated_by=recent[-1].actor if recent else None,
            url=f"{self.config.url}/browse/{ref}",
            stamp=str(stamp) if stamp not in (None, "") else None,
            history=history,
        )

    def _display(self, fid: str, value: Any, meta: _Meta) -> Any:
        """A Jira field value in the shapes of :mod:`connectors.base`."""
        if value is None:
            return None
        if fid == "comment" and self.config.comments_as_actions:
            return _actions(value)
        if fid == "subtasks" and self.config.subtasks_as != "none":
            return self._subtasks(value)
        schema = meta.schema(fid)
        if _is_adf(value):
            return adf_to_markdown(value)
        if schema.get("type") == "datetime" and isinstance(value, str):
            parsed = _parse_time(value)
            return parsed.isoformat(timespec="milliseconds") if parsed else value
        if schema.get("type") == "project" and isinstance(value, dict):
            return value.get("key")
        if isinstance(value, list):
            return [_item(v) for v in value]
        return _item(value)

    def _subtasks(self, value: Any) -> list[Raw]:
        out: list[Raw] = []
        for sub in value if isinstance(value, list) else []:
            f = sub.get("fields") or {} if isinstance(sub, dict) else {}
            title = str(f.get("summary") or sub.get("key") or "")
            category = ((f.get("status") or {}).get("statusCategory") or {}).get("key")
            if self.config.subtasks_as == "tasks":
                out.append({"title": title, "done": category == "done"})
            else:
                out.append(
                    {
                        "kind": _slug(title),
                        "title": title,
                        "status": _DELIVERABLE_STATUS.get(str(category), "draft"),
                        "link": f"{self.config.url}/browse/{sub.get('key')}",
                    }
                )
        return out

    # ------------------------------------------------------------------ values out

    def _payload(self, changes: Mapping[str, Any], meta: _Meta, ref: str) -> Raw:
        return {fid: self._to_jira(fid, v, meta, ref) for fid, v in changes.items()}

    def _to_jira(self, fid: str, value: Any, meta: _Meta, ref: str) -> Any:
        """A value in the shapes of :mod:`connectors.base` as Jira's REST API takes it."""
        if fid not in meta.fields:
            raise FatalError(
                f"{self.name}: {ref}: Jira has no field {fid!r}; check the mapping's remote names",
                connector=self.name,
            )
        if fid in _READ_ONLY or fid == "status":
            raise FatalError(
                f"{self.name}: {ref}: {fid!r} cannot be written through an edit"
                + (" (status changes go through transitions)" if fid == "status" else ""),
                connector=self.name,
            )
        if value is None:
            return None
        schema = meta.schema(fid)
        kind, items = schema.get("type"), schema.get("items")
        rich = schema.get("system") in _RICH_TEXT or schema.get("custom") in _RICH_TEXT
        if meta.cloud and rich and isinstance(value, str):
            return markdown_to_adf(value)
        if kind == "user":
            return self._account(value, meta, ref)
        if kind == "array":
            values = value if isinstance(value, list) else [value]
            if items == "user":
                return [self._account(v, meta, ref) for v in values]
            if items == "option":
                return [{"value": str(v)} for v in values]
            if items in ("component", "version"):
                return [{"name": str(v)} for v in values]
            return [str(v) for v in values]
        if kind in ("option", "option-with-child"):
            return {"value": str(value)}
        if kind in ("priority", "issuetype", "resolution", "securitylevel"):
            return {"name": str(value)}
        if kind == "number":
            return _number(value, fid, ref, self.name)
        if kind == "date":
            return value.isoformat() if isinstance(value, date) else str(value)[:10]
        if kind == "datetime":
            return _jira_time(value, fid, ref, self.name)
        return value

    def _account(self, person: Any, meta: _Meta, ref: str) -> Raw | None:
        """A user value (``{"id", "name", "email", "username"}`` or an e-mail) as Jira takes it:
        ``{"accountId"}`` on Cloud, ``{"name"}`` (the username) on Data Center."""
        if person is None:
            return None
        user = {"email": person} if isinstance(person, str) else dict(person)
        uid, username, email = user.get("id"), user.get("username"), user.get("email")
        if meta.cloud and uid:
            return {"accountId": str(uid)}
        if not meta.cloud and username:
            return {"name": str(username)}
        if not email:
            if not meta.cloud and uid:
                return {"name": str(uid)}
            raise FatalError(
                f"{self.name}: {ref}: cannot name a Jira user without an e-mail: {person!r}",
                connector=self.name,
            )
        found = self._user_by_email(str(email), meta)
        if found is None:
            raise FatalError(
                f"{self.name}: {ref}: no Jira user has the e-mail {email!r}; add the person to "
                "Jira or to the mapping's [users.table]",
                connector=self.name,
            )
        return {"accountId": found["accountId"]} if meta.cloud else {"name": found.get("name")}

    def _user_by_email(self, email: str, meta: _Meta) -> Raw | None:
        key = email.casefold()
        if key not in meta.accounts:
            params = {"query": email} if meta.cloud else {"username": email}
            data = self._http_client().get_json(f"{self.api}/user/search", params=params)
            hits = [u for u in data or [] if isinstance(u, dict)]
            exact = [u for u in hits if str(u.get("emailAddress", "")).casefold() == key]
            meta.accounts[key] = (exact or hits)[0] if hits else None
        return meta.accounts[key]

    # ------------------------------------------------------------------ discover helpers

    def _create_options(self, meta: _Meta) -> dict[str, tuple[str, ...]]:
        """Allowed values of option fields on the create screen of project / issue type."""
        if not self.config.project:
            return {}
        http = self._http_client()
        base = f"{self.api}/issue/createmeta/{self.config.project}/issuetypes"
        types = http.get_json(base, params={"maxResults": 200}, expect=(400, 404))
        values = (types or {}).get("values") or (types or {}).get("issueTypes") or []
        wanted = self.config.issue_type.casefold()
        chosen = [t for t in values if str(t.get("name", "")).casefold() == wanted]
        if not chosen:
            return {}
        data = http.get_json(
            f"{base}/{chosen[0]['id']}", params={"maxResults": 200}, expect=(400, 404)
        )
        options: dict[str, tuple[str, ...]] = {}
        for f in (data or {}).get("values") or (data or {}).get("fields") or []:
            allowed = [_item(v) for v in f.get("allowedValues") or []]
            names = [str(a) for a in allowed if isinstance(a, str | int | float)]
            if names and f.get("fieldId"):
                options[str(f["fieldId"])] = tuple(names)
        return options

    def _users(self, meta: _Meta) -> tuple[RemoteUser, ...]:
        """The users assignable in ``project`` (without one: every user), page by page:
        ``id`` is the accountId on Cloud and the username on Data Center."""
        params: dict[str, Any] = {"maxResults": _USER_PAGE}
        if self.config.project:
            params["project"] = self.config.project
            path = f"{self.api}/user/assignable/search"
        elif meta.cloud:
            path = f"{self.api}/users/search"
        else:
            path = f"{self.api}/user/search"
            params["username"] = "."  # Data Center's user search needs a term; "." is everyone
        found: dict[str, RemoteUser] = {}
        start = 0
        while True:
            try:
                data = self._http_client().get_json(
                    path, params={**params, "startAt": start}, expect=(400, 404)
                )
            except FatalError as exc:
                log.info("%s: users not listed (%s)", self.name, exc)
                break
            page = [u for u in data or [] if isinstance(u, dict)]
            for u in page:
                user = _user(u)
                if user["id"]:
                    found.setdefault(
                        user["id"],
                        RemoteUser(user["id"], user["name"], user["email"], user["username"]),
                    )
            start += len(page)
            # Cloud may answer short pages before the end (privacy filtering): only an
            # empty page ends its list; Data Center's pages are full until the last.
            if not page or (not meta.cloud and len(page) < _USER_PAGE):
                break
        return tuple(found.values())


# --------------------------------------------------------------------------- helpers


def _zone(name: Any) -> tzinfo:
    if isinstance(name, str) and name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            log.warning("Jira user timezone %r is unknown; JQL dates are read as UTC", name)
    return UTC


def _position(value: str | None, connector: str) -> datetime | None:
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        at = None
    if at is None or at.tzinfo is None:
        raise FatalError(
            f"{connector}: cursor position {value!r} is not a Jira connector cursor",
            connector=connector,
        )
    return at


def _jql_time(at: datetime, tz: tzinfo) -> str:
    """``yyyy/MM/dd HH:mm`` in ``tz``, floored to the minute. A wall time that a DST change
    makes ambiguous is moved back by the DST difference, so whichever reading Jira takes
    lies at or before ``at``."""
    local = at.astimezone(tz)
    other = local.replace(fold=1 - local.fold)
    gap = (local.utcoffset() or timedelta()) - (other.utcoffset() or timedelta())
    if gap:
        local = (at - abs(gap)).astimezone(tz)
    return local.strftime("%Y/%m/%d %H:%M")


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="milliseconds")


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return None
    return at if at.tzinfo is not None else None


def _handled(position: str | None) -> dict[str, str]:
    """The cursor's sub-tasks already handled: key -> the ``updated`` they were read at."""
    try:
        value = json.loads(position) if position else {}
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items() if _parse_time(v) is not None}


def _same_version(expected: str, actual: str | None) -> bool:
    """Whether the issue is still at ``expected``. A version stored before versions carried
    the sub-tasks' digest (no ``#``) is compared with the issue's ``updated`` alone."""
    if actual is None:
        return False
    return expected == actual or ("#" not in expected and expected == actual.split("#")[0])


def _parent_key(issue: Any) -> str | None:
    """The parent's key if ``issue`` is a sub-task (an issue type with ``subtask: true``; an
    epic's child has a ``parent`` too, but is no sub-task)."""
    fields = issue.get("fields") if isinstance(issue, dict) else None
    if not isinstance(fields, dict) or (fields.get("issuetype") or {}).get("subtask") is not True:
        return None
    key = (fields.get("parent") or {}).get("key")
    return str(key) if key else None


def _without(issue: Raw, fields: Sequence[str]) -> Raw:
    """``issue`` without ``fields`` (asked for only to tell sub-tasks apart)."""
    if not fields or not isinstance(issue.get("fields"), dict):
        return issue
    return {**issue, "fields": {k: v for k, v in issue["fields"].items() if k not in fields}}


def _changed_at(record: RemoteRecord, change: tuple[datetime, str | None] | None) -> RemoteRecord:
    """The record as changed at its newest sub-task change, when that is after its own
    ``updated`` (what newest-wins and the event log go by)."""
    if change is None or record.updated_at is None or change[0] <= record.updated_at:
        return record
    return replace(record, updated_at=change[0], updated_by=change[1] or record.updated_by)


def _project_clause(jql: str) -> str | None:
    """A top-level ``project = X`` / ``project in (...)`` that the JQL is ANDed with, as
    written; None if there is none (or the JQL has a top-level OR). A sub-task is always in
    its parent's project, so the clause also bounds the sub-tasks of the issues selected."""
    text = jql.strip()
    while True:
        tokens = [(m.group(), m.start()) for m in _JQL_TOKEN.finditer(text)]
        depth, parts, begin = 0, [], 0
        for tok, at in tokens:
            if tok == "(":
                depth += 1
            elif tok == ")":
                depth -= 1
            elif depth == 0 and tok.casefold() == "or":
                return None
            elif depth == 0 and tok.casefold() == "and":
                parts.append(text[begin:at].strip())
                begin = at + len(tok)
        parts.append(text[begin:].strip())
        if len(parts) == 1 and text.startswith("(") and text.endswith(")") and _closes(text):
            text = text[1:-1].strip()
            continue
        for part in parts:
            words = [m.group() for m in _JQL_TOKEN.finditer(part)]
            operator = words[1].casefold() if len(words) >= 3 else ""
            if words[0].casefold() == "project" and operator in ("=", "in"):
                return part
        return None


def _closes(text: str) -> bool:
    """Whether the ``(`` that starts ``text`` is closed by its last character."""
    depth = 0
    for m in _JQL_TOKEN.finditer(text):
        depth += {"(": 1, ")": -1}.get(m.group(), 0)
        if depth == 0:
            return m.end() == len(text)
    return False


def _status(issue: Raw) -> str:
    return str(((issue.get("fields") or {}).get("status") or {}).get("name") or "")


def _workflow(issue: Raw) -> tuple[str, str]:
    """(project key, issue type): what decides an issue's workflow."""
    f = issue.get("fields") or {}
    project = str((f.get("project") or {}).get("key") or "")
    return project, str((f.get("issuetype") or {}).get("name") or "").casefold()


def _path(
    graph: Mapping[tuple[str, str, str], list[_Transition]],
    workflow: tuple[str, str],
    start: str,
    *,
    to: str | None = None,
    avoid: frozenset[str] = frozenset(),
) -> list[_Transition] | None:
    """The shortest known transition path from ``start`` to status ``to`` (casefolded), or
    with ``to=None`` to the nearest status not in ``avoid``, breadth first; None if the known
    graph has none."""
    origin = start.casefold()
    queue: deque[tuple[str, list[_Transition]]] = deque([(origin, [])])
    seen = {origin}
    while queue:
        status, path = queue.popleft()
        for t in graph.get((*workflow, status), []):
            nxt = t.to.casefold()
            if nxt in seen:
                continue
            if nxt == to or (to is None and nxt not in avoid):
                return [*path, t]
            seen.add(nxt)
            queue.append((nxt, [*path, t]))
    return None


def _history(histories: Sequence[Any], meta: _Meta) -> list[HistoryEntry]:
    """Changelog entries as HistoryEntry, oldest first, keyed by field id where Jira gives
    one (Cloud) or the display name resolves to one (Data Center)."""
    out: list[HistoryEntry] = []
    for h in histories:
        if not isinstance(h, dict):
            continue
        at = _parse_time(h.get("created"))
        if at is None:
            continue
        actor = _actor(h.get("author"))
        for item in h.get("items") or []:
            if not isinstance(item, dict):
                continue
            name = str(item.get("field") or "")
            fid = item.get("fieldId") or meta.resolve(name) or name
            out.append(
                HistoryEntry(at, str(fid), item.get("fromString"), item.get("toString"), actor)
            )
    out.sort(key=lambda h: h.at)
    return out


def _actor(author: Any) -> str | None:
    if not isinstance(author, dict):
        return None
    for key in ("emailAddress", "name", "displayName", "accountId"):
        if author.get(key):
            return str(author[key])
    return None


def _is_adf(value: Any) -> bool:
    return isinstance(value, dict) and value.get("type") == "doc" and "content" in value


def _is_user(value: Raw) -> bool:
    return "accountId" in value or (
        "displayName" in value and any(k in value for k in ("name", "key", "emailAddress"))
    )


def _user(value: Raw) -> dict[str, Any]:
    """Cloud: id = accountId; Data Center: id = the username (``name``), which writes take
    (``key`` may differ from it, e.g. ``JIRAUSER10100``, and only where ``name`` is missing)."""
    uid = value.get("accountId") or value.get("name") or value.get("key")
    return {
        "id": str(uid) if uid else None,
        "name": value.get("displayName"),
        "email": value.get("emailAddress") or None,
        "username": value.get("name") if "accountId" not in value else None,
    }


def _item(value: Any) -> Any:
    """One value of a field: an option by its name, a user as a user dict, JSON otherwise."""
    if not isinstance(value, dict):
        return value
    if _is_adf(value):
        return adf_to_markdown(value)
    if _is_user(value):
        return _user(value)
    if "value" in value:
        child = value.get("child")
        if isinstance(child, dict) and child.get("value"):
            return f"{value['value']} / {child['value']}"
        return value["value"]
    if "name" in value:
        return value["name"]
    if "key" in value:
        return value["key"]
    return value


def _actions(value: Any) -> list[Raw]:
    comments = value.get("comments") if isinstance(value, dict) else value
    out: list[Raw] = []
    for c in comments if isinstance(comments, list) else []:
        at = _parse_time(c.get("created")) if isinstance(c, dict) else None
        if at is None:
            continue
        body = c.get("body")
        out.append(
            {
                "what": adf_to_markdown(body) if _is_adf(body) else str(body or ""),
                "at": at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
                "by": _actor(c.get("author")),
            }
        )
    return out


def _field_type(raw: Raw) -> str:
    """A /field entry's type in the words the mapping checker knows."""
    schema = raw.get("schema") if isinstance(raw.get("schema"), dict) else {}
    assert isinstance(schema, dict)
    kind, items = schema.get("type"), schema.get("items")
    custom = str(schema.get("custom", ""))
    if kind == "array":
        return {"string": "labels", "option": "multiselect", "user": "users"}.get(
            str(items), "multi"
        )
    if kind == "string":
        return "textarea" if custom.endswith(":textarea") else "string"
    if kind in ("issuetype", "resolution", "option-with-child", "securitylevel"):
        return "option"
    if kind in ("comments-page", "progress", "votes", "watches", "timetracking", "any", None):
        return "json"
    return str(kind)


def _slug(text: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", text.casefold()).strip("_") or "deliverable"


def _number(value: Any, fid: str, ref: str, connector: str) -> float | int:
    if isinstance(value, bool):
        raise FatalError(f"{connector}: {ref}: {fid} takes a number, not {value!r}")
    if isinstance(value, int | float):
        return value
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise FatalError(f"{connector}: {ref}: {fid} takes a number, not {value!r}") from None
    return int(number) if number == number.to_integral_value() else float(number)


def _jira_time(value: Any, fid: str, ref: str, connector: str) -> str:
    at = value if isinstance(value, datetime) else _parse_time(str(value).replace("Z", "+00:00"))
    if at is None or at.tzinfo is None:
        raise FatalError(f"{connector}: {ref}: {fid} takes a date-time with a timezone")
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}" + at.strftime("%z")


def _json_or_none(response: requests.Response | None) -> Any:
    if response is None:
        return None
    try:
        return response.json()
    except ValueError:
        return None


def _messages(body: Any) -> str:
    """Jira's ``errorMessages`` and per-field ``errors``, in one line."""
    if not isinstance(body, dict):
        return ""
    parts = [str(m) for m in body.get("errorMessages") or []]
    errors = body.get("errors")
    if isinstance(errors, dict):
        parts += [f"{k}: {v}" for k, v in errors.items()]
    return "; ".join(parts)
