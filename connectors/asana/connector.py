"""The Asana connector: a pipeline project's tasks are sales projects, its sections the stages.

That is the default ``layout = "tasks"``; ``layout = "projects"`` makes every project of a team
(or of the workspace, by name prefix) a sales project with its tasks as the project's tasks:
see :mod:`connectors.asana.projects` and ``mappings/asana-projects.toml``.

Reads and writes go through the official ``asana`` client (v5), whose HTTP layer is replaced by
ours: :class:`_Transport` stands in for the client's urllib3 ``RESTClientObject`` and sends every
call through :class:`bridge.http.HttpClient`, so Asana gets the same retries (429 honouring
``Retry-After``, 5xx only for idempotent calls), rate limit, timeouts, request counter and
redaction as every other tool, and the client's own urllib3 retries are never used.

Pulls. The events endpoint is the primary path and is called directly (the client's event
iterator does not hand back its sync token): a cursor holds the project's sync token; an
incremental pull with nothing new costs exactly one request. A missing or expired token (412)
starts a census: the 412 carries the new token, then the project's tasks are listed
(``limit=100`` pages, ``opt_fields`` limited to what is read). Changed tasks named by events are
fetched through the batch API, ten per request. ``incremental = "modified_since"`` polls
``GET /tasks?modified_since=`` instead. It is also the automatic fallback, for one pull at a
time and logged on ``salesbridge.asana``, when the events endpoint fails in a way that will not
heal: 403/404 for the project's events, a 412 without a new token, or 412s
``fallback_after_412s`` pulls in a row (where a census each time would be the cost). The next
pull tries events again; after a fallback a fresh token is followed by ``modified_since`` since
the last pull rather than a census. Deleted tasks are not seen by ``modified_since``: the
periodic full census (``reconcile_interval``) catches them.

A record's fields are keyed by display name: ``Name``, ``Notes``, ``Section``, ``Assignee``,
``Due date``, ``Start date``, ``Completed``, ``Created``, ``Subtasks`` (a list of canonical
tasks), ``Comments`` (a list of canonical actions) and every custom field by its name. Its
version is the latest ``modified_at`` of the task and (when read) its subtasks; Asana cannot
refuse a write against an old version, so an update reads the task, its subtasks and stories
first and raises StaleVersion itself. :meth:`AsanaConnector.update_many` (the engine's batch
push; ``update`` is the same for one task) does it through the batch API: the reads ten per
request, then section moves and the PUTs ten per request, whose answers are the records (no
read-back): ``ceil(3K / 10) + ceil(K / 10)`` requests for K tasks, plus the moves'.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import asana
import requests
from pydantic import Field, model_validator

from bridge.http import Auth, HttpClient, RequestCounter, RetryPolicy
from bridge.secrets import Secret
from connectors.base import (
    AuthError,
    Connector,
    ConnectorConfig,
    ConnectorError,
    Cursor,
    FatalError,
    Page,
    RateLimit,
    RateLimited,
    RemoteField,
    RemoteRecord,
    RemoteUser,
    RetriableError,
    Schema,
    SkippableRecord,
    StaleVersion,
    WebhookRejected,
    record_or_error,
)

if TYPE_CHECKING:
    from connectors.asana.projects import ProjectsLayout

Json = dict[str, Any]
BATCH = 10
MAX_PAGE = 100

NAME, NOTES, SECTION, ASSIGNEE = "Name", "Notes", "Section", "Assignee"
DUE, START, COMPLETED, CREATED = "Due date", "Start date", "Completed", "Created"
SUBTASKS, COMMENTS = "Subtasks", "Comments"

# Built-in remote fields: (RemoteField type, writable, opt_fields needed to read it).
BUILTIN: dict[str, tuple[str, bool, tuple[str, ...]]] = {
    NAME: ("text", True, ("name",)),
    NOTES: ("text", True, ("notes",)),
    SECTION: ("section", True, ("memberships.project.gid", "memberships.section.name")),
    ASSIGNEE: ("user", True, ("assignee.name", "assignee.email")),
    DUE: ("date", True, ("due_on",)),
    START: ("date", True, ("start_on",)),
    COMPLETED: ("boolean", True, ("completed",)),
    CREATED: ("datetime", False, ("created_at",)),
    SUBTASKS: ("json", True, ()),
    COMMENTS: ("json", True, ()),
}
_ALWAYS = ("modified_at", "permalink_url", "parent.gid", "memberships.project.gid")
_CUSTOM = (
    "custom_fields.name",
    "custom_fields.type",
    "custom_fields.display_value",
    "custom_fields.text_value",
    "custom_fields.number_value",
    "custom_fields.date_value.date",
    "custom_fields.enum_value.name",
    "custom_fields.multi_enum_values.name",
    "custom_fields.people_value.name",
    "custom_fields.people_value.email",
)
_SUB_FIELDS = "name,completed,completed_at,due_on,start_on,modified_at,assignee.name,assignee.email"
_STORY_FIELDS = "text,type,resource_subtype,created_at,created_by.name,created_by.email"
_MARK = re.compile(r"\n\[salesbridge: (\S+) by (.*)\]\Z")
_RATE = {"free": 150, "paid": 1500}

log = logging.getLogger("salesbridge.asana")


class _NoEvents(Exception):
    """The events endpoint refused in a way a retry will not heal (403, 404, a 412 loop)."""


class AsanaConfig(ConnectorConfig):
    kind: Literal["asana"] = "asana"
    token: Secret = Field(description='personal access token, e.g. "env:ASANA_TOKEN"')
    base_url: str = Field("https://app.asana.com/api/1.0", description="API root")
    workspace: str = Field(description="workspace gid")
    layout: Literal["tasks", "projects"] = Field(
        "tasks",
        description='"tasks": one pipeline project, a task per sales project, sections as '
        'stages; "projects": an Asana project per sales project, its tasks as its tasks',
    )
    project: str | None = Field(
        None, description='"tasks" layout: gid of the pipeline project whose tasks are synced'
    )
    team: str | None = Field(
        None,
        description='"projects" layout: gid of the team whose projects are synced (default: '
        "the workspace's projects)",
    )
    project_prefix: str = Field(
        "",
        description='"projects" layout: only projects whose name starts with this are synced; '
        "the prefix is not part of the Name field and is added to projects the bridge creates",
    )
    plan: Literal["free", "paid"] = Field(
        "free", description="sets the default rate limit: 150 (free) or 1500 (paid) per minute"
    )
    incremental: Literal["events", "modified_since"] = Field(
        "events", description="events with sync tokens (default), or modified_since polling"
    )
    page_size: int = Field(MAX_PAGE, ge=1, le=MAX_PAGE, description="tasks per listed page")
    stamp_field: str = Field(
        "Salesbridge ID", description="custom text field holding the canonical project id"
    )
    read: list[str] | None = Field(
        None,
        description="remote fields to read; default: the ones the mapping file names, else all",
    )
    overlap: timedelta = Field(
        timedelta(seconds=1), description="modified_since re-reads this much before the cursor"
    )
    max_attempts: int = Field(5, ge=1, description="attempts per request (429/5xx)")
    fallback_after_412s: int = Field(
        3,
        ge=1,
        description="consecutive pulls answered 412 (expired sync token) after which a pull "
        "uses modified_since instead of a full census",
    )

    @model_validator(mode="after")
    def _layout_needs(self) -> AsanaConfig:
        if self.layout == "tasks" and not self.project:
            raise ValueError('layout "tasks" needs project (the pipeline project\'s gid)')
        if self.layout == "projects" and self.project:
            raise ValueError(
                'layout "projects" syncs every project of the team or workspace: drop project '
                "(use team or project_prefix to choose the projects)"
            )
        return self

    @property
    def pipeline(self) -> str:
        """The pipeline project ("tasks" layout)."""
        if not self.project:
            raise FatalError('the Asana "projects" layout has no pipeline project')
        return self.project


@dataclass
class _Meta:
    """The project's sections and custom fields and the workspace's users, loaded once."""

    sections: dict[str, str] = field(default_factory=dict)  # name -> gid
    fields: dict[str, Json] = field(default_factory=dict)  # name -> definition
    users: list[Json] = field(default_factory=list)


@dataclass
class _Position:
    """A cursor position: the events sync token, its time, and records to read again."""

    sync: str | None = None
    at: str | None = None
    recheck: list[str] = field(default_factory=list)
    expired: int = 0
    """Consecutive pulls whose token the events endpoint refused with 412."""

    @classmethod
    def parse(cls, text: str | None) -> _Position:
        if not text:
            return cls()
        try:
            raw = json.loads(text)
            return cls(
                raw.get("sync"),
                raw.get("at"),
                list(raw.get("recheck", [])),
                int(raw.get("expired", 0)),
            )
        except (ValueError, AttributeError, TypeError):
            raise FatalError(f"cursor position {text!r} is not an Asana cursor") from None

    def dump(self) -> str:
        out: Json = {"sync": self.sync, "at": self.at, "recheck": self.recheck}
        if self.expired:
            out["expired"] = self.expired
        return json.dumps(out)


class _Response:
    """What the asana client expects back from its REST layer."""

    def __init__(self, response: requests.Response) -> None:
        self.status = response.status_code
        self.reason = response.reason
        self.data = response.content
        self._headers = response.headers

    def getheaders(self) -> Mapping[str, str]:
        return self._headers

    def getheader(self, name: str, default: str | None = None) -> str | None:
        return self._headers.get(name, default)


class _Transport:
    """Stands in for ``asana.rest.RESTClientObject``: every call goes through our HttpClient."""

    def __init__(self, http: HttpClient) -> None:
        self.http = http

    def request(
        self,
        method: str,
        url: str,
        query_params: Any = None,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
        post_params: Any = None,
        _preload_content: bool = True,
        _request_timeout: Any = None,
    ) -> _Response:
        keep = {k: v for k, v in (headers or {}).items() if k.lower() != "authorization"}
        retry = None
        if url.endswith("/batch") and isinstance(body, dict):
            actions = body.get("data", {}).get("actions", [])
            retry = all(a.get("method") == "get" for a in actions) or None
        response = self.http.request(
            method,
            url,
            params=query_params or None,
            json=body if method not in ("GET", "HEAD") else None,
            headers=keep,
            retry=retry,
            timeout=_request_timeout,
        )
        return _Response(response)

    def __getattr__(self, method: str) -> Any:
        if method not in ("GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"):
            raise AttributeError(method)
        return lambda url, **kw: self.request(method, url, **kw)


class _NoPool:
    def close(self) -> None:
        pass

    def join(self) -> None:
        pass


class _ApiClient(asana.ApiClient):  # type: ignore[misc]
    """The asana client without its idle thread pool (we never make async calls)."""

    @property
    def pool(self) -> _NoPool:
        return _NoPool()

    @pool.setter
    def pool(self, value: Any) -> None:
        value.terminate()
        value.join()


class AsanaConnector(Connector[AsanaConfig]):
    """Tasks of one Asana project as sales projects. See the module docstring."""

    kind: ClassVar[str] = "asana"
    config_model: ClassVar[type[ConnectorConfig]] = AsanaConfig

    def __init__(self, name: str, config: AsanaConfig, *, token: str | None = None) -> None:
        super().__init__(name, config)
        self._token = token
        self._http: HttpClient | None = None
        self._client: Any = None
        self._meta: _Meta | None = None
        self._me: Json | None = None
        self._read: frozenset[str] | None = None
        self._layout: ProjectsLayout | None = None
        self.requests = RequestCounter()
        """Every HTTP attempt this connector made (retries included)."""
        self.fallbacks: list[tuple[str, str]] = []
        """(resource, why) for each pull that fell back from events to modified_since."""

    # ------------------------------------------------------------------ plumbing

    @property
    def http(self) -> HttpClient:
        if self._http is None:
            limit = self.config.rate_limit or RateLimit(requests=_RATE[self.config.plan], per=60)
            token = self._token if self._token is not None else self.config.token.reveal()
            self._http = HttpClient(
                self.name,
                self.config.base_url,
                auth=Auth.bearer(token),
                timeout=self.config.timeout,
                rate_limit=limit,
                retry=RetryPolicy(max_attempts=self.config.max_attempts),
                counter=self.requests,
            )
        return self._http

    @property
    def client(self) -> Any:
        """One asana ApiClient for the connector's life, speaking through :class:`_Transport`."""
        if self._client is None:
            configuration = asana.Configuration()
            configuration.host = self.config.base_url.rstrip("/")
            configuration.retry_strategy = False  # ours retries; urllib3 is never used
            configuration.return_page_iterator = False  # we page ourselves, page = commit
            client = _ApiClient(configuration)
            client.rest_client = _Transport(self.http)
            self._client = client
        return self._client

    def api(self, name: str) -> Any:
        return getattr(asana, name)(self.client)

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
        self._http = None
        self._client = None

    @property
    def needs(self) -> frozenset[str]:
        """Remote fields to read: ``read`` from the config, else the mapping's, else all."""
        if self._read is None:
            wanted = self.config.read
            if wanted is None and self.config.mapping is not None:
                wanted = _mapping_remotes(self.config.mapping)
            if wanted is None:
                self._read = frozenset()  # empty: everything
            else:
                self._read = frozenset(w.casefold() for w in [*wanted, self.config.stamp_field])
        return self._read

    def wants(self, remote: str) -> bool:
        return not self.needs or remote.casefold() in self.needs

    def opt_fields(self) -> str:
        found: list[str] = list(_ALWAYS)
        for name, (_, _, opts) in BUILTIN.items():
            if self.wants(name):
                found += opts
        found += _CUSTOM
        if self.wants(SUBTASKS):
            found.append("subtasks.gid")  # so a subtask event finds its parent's record
        return ",".join(dict.fromkeys(found))

    def meta(self, *, refresh: bool = False) -> _Meta:
        """Sections and custom fields of the pipeline project ("tasks" layout) or the
        workspace's custom fields ("projects" layout), and the workspace's users."""
        if self._meta is None or refresh:
            opts = {"limit": MAX_PAGE}
            definition = "name,type,enum_options.name,enum_options.enabled,precision"
            if self.layout is not None:
                users = self._users()
                found = self._all(
                    lambda o: self.api("CustomFieldsApi").get_custom_fields_for_workspace(
                        self.config.workspace,
                        {**opts, **o, "opt_fields": definition},
                        full_payload=True,
                    )
                )
                by_name: dict[str, Json] = {}
                for f in found:
                    by_name.setdefault(f["name"], f)
                self._meta = _Meta({}, by_name, users)
                return self._meta
            sections = self._all(
                lambda o: self.api("SectionsApi").get_sections_for_project(
                    self.config.pipeline, {**opts, **o, "opt_fields": "name"}, full_payload=True
                )
            )
            settings = self._all(
                lambda o: self.api("CustomFieldSettingsApi").get_custom_field_settings_for_project(
                    self.config.pipeline,
                    {
                        **opts,
                        **o,
                        "opt_fields": "custom_field.name,custom_field.type,"
                        "custom_field.enum_options.name,custom_field.enum_options.enabled,"
                        "custom_field.precision",
                    },
                    full_payload=True,
                )
            )
            self._meta = _Meta(
                {s["name"]: s["gid"] for s in sections},
                {s["custom_field"]["name"]: s["custom_field"] for s in settings},
                self._users(),
            )
        return self._meta

    def _users(self) -> list[Json]:
        return self._all(
            lambda o: self.api("UsersApi").get_users_for_workspace(
                self.config.workspace,
                {"limit": MAX_PAGE, **o, "opt_fields": "name,email"},
                full_payload=True,
            )
        )

    @property
    def layout(self) -> ProjectsLayout | None:
        """The "projects" layout's reader and writer; None in the "tasks" layout."""
        if self.config.layout != "projects":
            return None
        if self._layout is None:
            from connectors.asana.projects import ProjectsLayout

            self._layout = ProjectsLayout(self)
        return self._layout

    def _all(self, call: Any) -> list[Json]:
        """Every item of a paginated listing (metadata only; records are paged by pull)."""
        items: list[Json] = []
        offset: str | None = None
        while True:
            page = call({"offset": offset} if offset else {})
            items += page.get("data") or []
            offset = (page.get("next_page") or {}).get("offset")
            if not offset:
                return items

    # ------------------------------------------------------------------ reading

    def check(self) -> str:
        me = _data(self.api("UsersApi").get_user("me", {"opt_fields": "name,email"}))
        self._me = me
        if self.layout is not None:
            return f"asana connector {self.name!r} as {me.get('name')} <{me.get('email')}>: " + (
                f"{self.layout.describe()} ({self.config.plan} plan)"
            )
        project = _data(
            self.api("ProjectsApi").get_project(
                self.config.pipeline, {"opt_fields": "name,workspace.gid"}
            )
        )
        if (project.get("workspace") or {}).get("gid") not in (None, self.config.workspace):
            raise FatalError(
                f"project {self.config.pipeline} is not in workspace {self.config.workspace}",
                connector=self.name,
            )
        return (
            f"asana connector {self.name!r} as {me.get('name')} <{me.get('email')}>: "
            f"project {project.get('name')!r} ({self.config.plan} plan)"
        )

    def discover(self) -> Schema:
        if self.layout is not None:
            return self.layout.discover()
        meta = self.meta(refresh=True)
        stages = tuple(meta.sections)
        found = [
            RemoteField(n, n, t, options=stages if n == SECTION else (), writable=w)
            for n, (t, w, _) in BUILTIN.items()
        ]
        kinds = {"multi_enum": "multiselect", "enum": "enum", "people": "people"}
        for name, f in meta.fields.items():
            options = tuple(o["name"] for o in f.get("enum_options") or () if o.get("enabled"))
            kind = str(f.get("type") or "text")
            kind = kinds.get(kind, kind)
            found.append(RemoteField(name, name, kind, options=options, custom=True))
        users = tuple(RemoteUser(u["gid"], u.get("name"), u.get("email")) for u in meta.users)
        return Schema(fields=tuple(found), users=users, stages=stages)

    def pull(self, cursor: Cursor, *, signpost: datetime, full: bool = False) -> Iterator[Page]:
        if self.layout is not None:
            yield from self.layout.pull(cursor, signpost=signpost, full=full)
            return
        part = self.config.pipeline
        position = _Position.parse(cursor.get(part))
        if self.config.incremental == "modified_since":
            yield from self._pull_since(cursor, position, signpost, full)
            return
        if full or position.sync is None:
            try:
                token = self.fresh_token(part)
            except _NoEvents as exc:
                self.fall_back(part, str(exc))
                yield from self._pull_since(cursor, position, signpost, full)
                return
            if full or position.at is None:
                yield from self._census(cursor, token, signpost)
            else:  # the last pull fell back: changes since then, then events again
                yield from self._pull_since(cursor, position, signpost, False, token=token)
            return
        token = position.sync
        recheck = list(position.recheck)
        while True:
            try:
                status, body = self.events(part, token)
            except _NoEvents as exc:
                self.fall_back(part, str(exc))
                yield from self._pull_since(cursor, position, signpost, False)
                return
            if status == 412:
                fresh, expired = body.get("sync"), position.expired + 1
                if not fresh or expired >= self.config.fallback_after_412s:
                    why = (
                        "412 without a new sync token"
                        if not fresh
                        else f"412 (expired sync token) {expired} pulls in a row"
                    )
                    self.fall_back(part, why)
                    yield from self._pull_since(
                        cursor, position, signpost, full, token=fresh, expired=expired
                    )
                    return
                yield from self._census(cursor, str(fresh), signpost, expired=expired)
                return
            changed, deleted = _changed(body.get("data") or [])
            gids = list(dict.fromkeys([*recheck, *changed]))
            recheck = []
            records, skipped = self._fetch(gids, deleted=deleted)
            token = str(body["sync"])
            again = _after(records, signpost)
            at = min(datetime.now(UTC), signpost)
            position = _Position(token, _iso(at), again)
            yield Page(_oldest_first(records), cursor.advanced(part, position.dump()), skipped)
            if not body.get("has_more"):
                return

    def events(self, resource: str, token: str | None) -> tuple[int, Json]:
        """One events request: (200, events) or (412, body with the new token). Raises
        _NoEvents where retrying will not help: 403 or 404 for the resource's events."""
        params = {"resource": resource}
        if token is not None:
            params |= {"sync": token, "opt_fields": _EVENT_FIELDS}
        response = self.http.request("GET", "events", params=params, expect=(403, 404, 412))
        status = response.status_code
        if status in (403, 404):
            raise _NoEvents(f"events for {resource} answered {status} {response.reason}")
        body = self.http.decode_json(response)
        if not isinstance(body, dict) or (status == 200 and not body.get("sync")):
            raise _NoEvents(f"events for {resource} answered {status} without a sync token")
        return status, body

    def fresh_token(self, resource: str) -> str:
        """A new sync token: asking without one answers 412 with it (one request)."""
        status, body = self.events(resource, None)
        if status != 412 or not body.get("sync"):
            raise _NoEvents(f"events for {resource} did not hand out a sync token ({status})")
        return str(body["sync"])

    def fall_back(self, resource: str, why: str) -> None:
        """Log that a pull uses ``modified_since`` because the events endpoint will not heal."""
        self.fallbacks.append((resource, why))
        log.warning("%s: %s; pulling %s with modified_since this time", self.name, why, resource)

    def _census(
        self, cursor: Cursor, token: str, signpost: datetime, *, expired: int = 0
    ) -> Iterator[Page]:
        """Every live task of the project, page by page; the last page stores ``token``."""
        at = _iso(min(datetime.now(UTC), signpost))
        for records, skipped, last in self._listing({}):
            pos = _Position(token, at, _after(records, signpost), expired).dump() if last else None
            yield Page(
                records, cursor.advanced(self.config.pipeline, pos) if pos else None, skipped
            )

    def _pull_since(
        self,
        cursor: Cursor,
        position: _Position,
        signpost: datetime,
        full: bool,
        *,
        token: str | None = None,
        expired: int = 0,
    ) -> Iterator[Page]:
        """Tasks modified since the position's time (all with ``full`` or no time). ``token``,
        if given, is stored so the next pull uses events again."""
        since = None if full or position.at is None else _parse(position.at) - self.config.overlap
        extra = {} if since is None else {"modified_since": _iso(since)}
        newest = None if since is None else _parse(str(position.at))
        recheck = set(position.recheck)
        for records, skipped, last in self._listing(extra):
            for r in records:
                recheck.discard(r.ref)
                if r.updated_at and (newest is None or r.updated_at > newest):
                    newest = r.updated_at
            if last and recheck:
                more, bad = self._fetch(sorted(recheck))
                records, skipped = [*records, *more], [*skipped, *bad]
            pos = None
            if last:
                at = min(newest or signpost, signpost)
                pos = _Position(token, _iso(at), [], expired).dump()
            yield Page(
                records, cursor.advanced(self.config.pipeline, pos) if pos else None, skipped
            )

    def _listing(self, extra: Json) -> Iterator[tuple[list[RemoteRecord], list[Any], bool]]:
        offset: str | None = None
        tasks = self.api("TasksApi")
        while True:
            opts: Json = {
                "project": self.config.pipeline,
                "limit": self.config.page_size,
                "opt_fields": self.opt_fields(),
                **extra,
            }
            if offset:
                opts["offset"] = offset
            page = tasks.get_tasks(opts, full_payload=True)
            offset = (page.get("next_page") or {}).get("offset")
            raw = [t for t in page.get("data") or [] if not (t.get("parent") or {}).get("gid")]
            records, skipped = self._records(raw)
            yield _oldest_first(records), skipped, not offset
            if not offset:
                return

    def get(self, ref: str) -> RemoteRecord | None:
        if not ref.isdigit():
            return None
        if self.layout is not None:
            return self.layout.get(ref)
        records, skipped = self._fetch([ref])
        if skipped:
            raise skipped[0]
        found = [r for r in records if r.ref == ref and not r.deleted]
        return found[0] if found else None

    def find_by_stamp(self, stamp: str) -> RemoteRecord | None:
        """Scans the project (Asana's task search by custom field is a premium feature)."""
        if self.layout is not None:
            return self.layout.find_by_stamp(stamp)
        for records, _, _ in self._listing({}):
            for r in records:
                if r.stamp == stamp:
                    return r
        return None

    # ------------------------------------------------------------------ fetching records

    def _fetch(
        self, gids: Sequence[str], *, deleted: Iterable[str] = ()
    ) -> tuple[list[RemoteRecord], list[SkippableRecord]]:
        """Records of these tasks through the batch API; a subtask stands for its parent."""
        gone = set(deleted)
        tasks: dict[str, Json] = {}
        todo = [g for g in dict.fromkeys(gids) if g not in gone]
        missing: list[str] = []
        while todo:
            calls = [(f"/tasks/{g}", {"opt_fields": self.opt_fields()}) for g in todo]
            todo = []
            for path, status, body in self._batch_get(calls):
                gid = path.rsplit("/", 1)[-1]
                if status == 404:
                    missing.append(gid)
                    continue
                task = body["data"]
                parent = (task.get("parent") or {}).get("gid")
                if parent:
                    if parent not in tasks and parent not in gone and parent not in todo:
                        todo.append(parent)
                    continue
                if not self._in_project(task):
                    missing.append(gid)  # left the project: out of the sync's sight
                    continue
                tasks[gid] = task
        records, skipped = self._records(list(tasks.values()))
        for gid in [*gone, *missing]:
            if gid not in tasks:
                records.append(RemoteRecord(gid, "deleted", {}, deleted=True))
        return records, skipped

    def _in_project(self, task: Json) -> bool:
        projects = {(m.get("project") or {}).get("gid") for m in task.get("memberships") or []}
        return self.config.pipeline in projects

    def _batch_get(self, calls: Sequence[tuple[str, Json]]) -> list[tuple[str, int, Json]]:
        """GETs through ``POST /batch``, ten per request: (path, status, body) in call order."""
        actions = []
        for path, params in calls:
            paging = ("opt_fields", "limit", "offset")
            data = {k: v for k, v in params.items() if k not in paging}
            options: Json = {"fields": params["opt_fields"].split(",")}
            for key in ("limit", "offset"):
                if key in params:
                    options[key] = params[key]
            actions.append(
                {"relative_path": path, "method": "get", "data": data, "options": options}
            )
        out: list[tuple[str, int, Json]] = []
        for (path, _), (status, body) in zip(calls, self._batch(actions), strict=True):
            if status in (401, 403):
                raise AuthError(
                    f"{self.name}: GET {path} -> {status} in a batch",
                    connector=self.name,
                    status=status,
                )
            if status >= 400 and status != 404:
                raise FatalError(
                    f"{self.name}: GET {path} -> {status} in a batch: {body}",
                    connector=self.name,
                    status=status,
                )
            out.append((path, status, body))
        return out

    def _batch(self, actions: Sequence[Json]) -> list[tuple[int, Json]]:
        """Actions through ``POST /batch``, ten per request: (status, body) of each, in order.

        Asana runs a request's actions in parallel and in no set order: actions that depend
        on each other go in separate calls."""
        out: list[tuple[int, Json]] = []
        batch = self.api("BatchAPIApi")
        for i in range(0, len(actions), BATCH):
            chunk = list(actions[i : i + BATCH])
            results = _data(batch.create_batch_request({"data": {"actions": chunk}}, {}))
            for result in results:
                out.append((int(result.get("status_code", 0)), result.get("body") or {}))
            if len(results) != len(chunk):
                raise FatalError(
                    f"{self.name}: a batch of {len(chunk)} actions answered {len(results)}",
                    connector=self.name,
                )
        return out

    def _records(self, tasks: list[Json]) -> tuple[list[RemoteRecord], list[SkippableRecord]]:
        calls = [c for t in tasks for c in self._child_calls(str(t["gid"]))]
        children = self._children(self._batch_get(calls) if calls else [])
        records: list[RemoteRecord] = []
        skipped: list[SkippableRecord] = []
        for t in tasks:
            built = self._built(t, children)
            (skipped if isinstance(built, SkippableRecord) else records).append(built)  # type: ignore[arg-type]
        return records, skipped

    def _child_calls(self, gid: str) -> list[tuple[str, Json]]:
        """The reads a task's record needs besides the task: subtasks, stories (if wanted)."""
        calls: list[tuple[str, Json]] = []
        if self.wants(SUBTASKS):
            calls.append((f"/tasks/{gid}/subtasks", {"opt_fields": _SUB_FIELDS, "limit": MAX_PAGE}))
        if self.wants(COMMENTS):
            calls.append(
                (f"/tasks/{gid}/stories", {"opt_fields": _STORY_FIELDS, "limit": MAX_PAGE})
            )
        return calls

    @staticmethod
    def _children(answers: Iterable[tuple[str, int, Json]]) -> dict[tuple[str, str], list[Json]]:
        """(gid, "subtasks" | "stories") -> items, from the answers to :meth:`_child_calls`."""
        found: dict[tuple[str, str], list[Json]] = {}
        for path, status, body in answers:
            _, _, gid, kind = path.split("/")
            found[(gid, kind)] = (body.get("data") or []) if status < 400 else []
        return found

    def _built(
        self, task: Json, children: Mapping[tuple[str, str], list[Json]]
    ) -> RemoteRecord | SkippableRecord:
        gid = str(task.get("gid", "?"))
        try:
            return self._record(
                task, children.get((gid, "subtasks")), children.get((gid, "stories"))
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            return SkippableRecord(
                gid,
                f"malformed task: {type(exc).__name__}: {exc}",
                connector=self.name,
                payload=task,
            )

    def _record(
        self, task: Json, subtasks: list[Json] | None, stories: list[Json] | None
    ) -> RemoteRecord:
        fields: Json = {}
        if self.wants(NAME):
            fields[NAME] = _text(task["name"])
        if self.wants(NOTES):
            fields[NOTES] = _text(task.get("notes") or "")
        if self.wants(SECTION):
            fields[SECTION] = next(
                (
                    (m.get("section") or {}).get("name")
                    for m in task["memberships"]
                    if (m.get("project") or {}).get("gid") == self.config.pipeline
                ),
                None,
            )
        if self.wants(ASSIGNEE):
            fields[ASSIGNEE] = _user(task.get("assignee"))
        if self.wants(DUE):
            fields[DUE] = task.get("due_on")
        if self.wants(START):
            fields[START] = task.get("start_on")
        if self.wants(COMPLETED):
            fields[COMPLETED] = bool(task.get("completed"))
        if self.wants(CREATED):
            fields[CREATED] = task.get("created_at")
        stamp = None
        for cf in task.get("custom_fields") or []:
            name = cf["name"]
            value = _custom_value(cf)
            if name == self.config.stamp_field:
                stamp = value or None
            if self.wants(name):
                fields[name] = value
        version = _parse(task["modified_at"])
        if subtasks is not None:
            fields[SUBTASKS] = [_subtask(s) for s in subtasks]
            for s in subtasks:
                version = max(version, _parse(s["modified_at"]))
        if stories is not None:
            fields[COMMENTS] = [
                _action(s) for s in stories if s.get("resource_subtype") == "comment_added"
            ]
        return RemoteRecord(
            ref=str(task["gid"]),
            version=_iso(version),
            fields=fields,
            updated_at=version,
            url=task.get("permalink_url"),
            stamp=stamp,
        )

    # ------------------------------------------------------------------ writing

    def create(self, fields: Mapping[str, Any], *, stamp: str) -> RemoteRecord:
        if self.layout is not None:
            return self.layout.create(fields, stamp=stamp)
        meta = self.meta()
        body, after = self._changes(fields, meta, ref=stamp)
        stamp_field = meta.fields.get(self.config.stamp_field)
        if stamp_field is None:
            raise FatalError(
                f"project {self.config.pipeline} has no custom field "
                f"{self.config.stamp_field!r} to stamp records with; add a text field of that "
                "name to the project or set stamp_field",
                connector=self.name,
            )
        body.setdefault("custom_fields", {})[stamp_field["gid"]] = stamp
        section = body.pop("_section", None)
        membership: Json = {"project": self.config.pipeline}
        if section is not None:
            membership["section"] = section
        body["memberships"] = [membership]
        created = _data(self.api("TasksApi").create_task({"data": body}, {"opt_fields": "gid"}))
        ref = str(created["gid"])
        after(ref, [])
        return self._written(ref)

    def update(
        self, ref: str, changes: Mapping[str, Any], *, expected_version: str | None
    ) -> RemoteRecord:
        if self.layout is not None:
            return self.layout.update(ref, changes, expected_version=expected_version)
        result = self._update_tasks({ref: changes}, {ref: expected_version})[ref]
        if isinstance(result, ConnectorError):
            raise result
        return result

    def update_many(
        self,
        changes: Mapping[str, Mapping[str, Any]],
        expected_versions: Mapping[str, str | None] | None = None,
    ) -> dict[str, RemoteRecord | ConnectorError]:
        """Update many tasks through the batch API (the engine's batch hook).

        Returns, per ref, the record as written or that task's error: StaleVersion (changed
        since ``expected_versions[ref]``, or gone: nothing was written), SkippableRecord or
        FatalError (refused). Auth, rate-limit and network failures are raised. See
        :meth:`_update_tasks` for the requests; the "projects" layout updates one by one.
        """
        expected = expected_versions or {}
        if self.layout is None:
            return self._update_tasks(changes, expected)
        out: dict[str, RemoteRecord | ConnectorError] = {}
        layout = self.layout
        for ref, fields in changes.items():
            want = expected.get(ref)
            out[ref] = record_or_error(partial(layout.update, ref, fields, expected_version=want))
        return out

    def _update_tasks(
        self, changes: Mapping[str, Mapping[str, Any]], expected: Mapping[str, str | None]
    ) -> dict[str, RemoteRecord | ConnectorError]:
        """Asana cannot refuse a write against an old version, so each task is read first: the
        task, its subtasks and its stories (what the version and the comments come from), ten
        reads per batch request. A task whose version is not the expected one is StaleVersion
        and not written. Then, ten actions per batch request: section moves (``addTask``),
        then each task's ``PUT`` (or, for a move alone, a ``GET``), in separate requests as
        Asana runs a batch's actions in no set order. The PUT answers with the task, and the
        subtasks and stories were read just before, so the record is known without a
        read-back: K tasks cost ``ceil(3K / 10) + ceil(K / 10)`` requests (+ the moves').
        Subtasks and comments that differ from the task's are written one request each and
        those tasks read back (ten reads per batch).

        Someone else's change between the read and the write shows in the PUT's answer as a
        field this update did not write: that record is returned with the version read before
        the write, so the next pull finds a new version and reads the task as changed.
        """
        meta = self.meta()
        out: dict[str, RemoteRecord | ConnectorError] = {}
        plans: dict[str, tuple[Json, Any]] = {}
        for ref, fields in changes.items():
            if not ref.isdigit():
                out[ref] = StaleVersion(ref, expected.get(ref), None, connector=self.name)
                continue
            try:
                plans[ref] = self._changes(fields, meta, ref=ref)
            except SkippableRecord as exc:
                out[ref] = exc
        # The tasks as they are now (task, subtasks, stories), ten reads per request.
        calls: list[tuple[str, Json]] = []
        for ref in plans:
            calls += [(f"/tasks/{ref}", {"opt_fields": self.opt_fields()}), *self._child_calls(ref)]
        answers = self._batch_get(calls) if calls else []
        tasks = {
            p.split("/")[2]: b.get("data") for p, st, b in answers if p.count("/") == 2 and st < 400
        }
        children = self._children(a for a in answers if a[0].count("/") == 3)
        current: dict[str, RemoteRecord] = {}
        for ref in plans:
            task = tasks.get(ref)
            if not isinstance(task, dict) or (task.get("parent") or {}).get("gid"):
                task = None  # gone, or a subtask: not a record (as get() has it)
            elif not self._in_project(task):
                task = None
            now = None if task is None else self._built(task, children)
            if isinstance(now, SkippableRecord):
                out[ref] = now
            elif now is None or (expected.get(ref) is not None and now.version != expected[ref]):
                actual = None if now is None else now.version
                out[ref] = StaleVersion(ref, expected.get(ref), actual, connector=self.name)
            else:
                current[ref] = now
        # Section moves, then the PUTs (a move alone: a GET for the new modified_at).
        moves: dict[str, str] = {}
        for ref, now in current.items():
            section = plans[ref][0].pop("_section", None)
            if section is not None and now.fields.get(SECTION) != _section_name(meta, section):
                moves[ref] = section
        moved = self._batch(
            [
                {"relative_path": f"/sections/{s}/addTask", "method": "post", "data": {"task": r}}
                for r, s in moves.items()
            ]
        )
        for (ref, section), (status, body) in zip(moves.items(), moved, strict=True):
            if status >= 400:
                out[ref] = self._action_error(f"POST /sections/{section}/addTask", status, body)
                del current[ref]
        opt = self.opt_fields().split(",")
        sends: list[tuple[str, Json]] = []
        for ref in current:
            body = plans[ref][0]
            if body or ref in moves:
                path, method = f"/tasks/{ref}", "put" if body else "get"
                action: Json = {"relative_path": path, "method": method, "data": body}
                sends.append((ref, {**action, "options": {"fields": opt}}))
        answered: dict[str, Json] = {}
        for (ref, action), (status, body) in zip(
            sends, self._batch([a for _, a in sends]), strict=True
        ):
            if status == 404:  # deleted since the read: the next pull sees it gone
                out[ref] = StaleVersion(ref, expected.get(ref), None, connector=self.name)
                del current[ref]
            elif status >= 400:
                what = f"{action['method'].upper()} /tasks/{ref}"
                out[ref] = self._action_error(what, status, body)
                del current[ref]
            else:
                answered[ref] = body.get("data") or {}
        # Subtasks and comments, then those tasks read back.
        again: list[str] = []
        for ref, now in current.items():
            if self._writes_children(changes[ref], now):
                try:
                    plans[ref][1](ref, now.fields.get(COMMENTS) or [])
                except AuthError:
                    raise
                except FatalError as exc:
                    out[ref] = exc
                    continue
                again.append(ref)
            elif ref in answered:
                out[ref] = self._answered(answered[ref], now, children, changes[ref], ref in moves)
            else:
                out[ref] = now  # nothing to write
        if again:
            records, skipped = self._fetch(again)
            found: dict[str, RemoteRecord | ConnectorError] = {
                r.ref: r for r in records if not r.deleted
            }
            found.update({s.ref: s for s in skipped})
            for ref in again:
                out[ref] = found.get(ref) or FatalError(
                    f"task {ref} vanished right after it was written", connector=self.name
                )
        return {ref: out[ref] for ref in changes}

    def _answered(
        self,
        task: Json,
        before: RemoteRecord,
        children: Mapping[tuple[str, str], list[Json]],
        written: Mapping[str, Any],
        moved: bool,
    ) -> RemoteRecord | ConnectorError:
        """The record after a write, from the task the write answered with and the subtasks
        and stories read before it (the write changed neither)."""
        after = self._built(task, children)
        if isinstance(after, SkippableRecord):
            return after
        mine = {_canonical_name(k) for k in written} | ({SECTION} if moved else set())
        keys = (set(after.fields) | set(before.fields)) - mine - {SUBTASKS, COMMENTS}
        if any(after.fields.get(k) != before.fields.get(k) for k in keys):
            # Someone else changed the task between the read and the write: the version read
            # before, so that the next pull reads the task as changed.
            return replace(after, version=before.version)
        return after

    def _writes_children(self, fields: Mapping[str, Any], now: RemoteRecord) -> bool:
        """Whether ``fields`` change the task's subtasks or add comments."""
        for key, value in fields.items():
            name = _canonical_name(key)
            if name == SUBTASKS and [dict(x) for x in value or []] != now.fields.get(SUBTASKS):
                return True
            if name == COMMENTS:
                have = {_action_key(a) for a in now.fields.get(COMMENTS) or []}
                if any(_action_key(a) not in have for a in value or []):
                    return True
        return False

    def _action_error(self, what: str, status: int, body: Json) -> ConnectorError:
        """The error of one write in a batch; what stops every write is raised."""
        where = f"{self.name}: {what} -> {status} in a batch: {str(body)[:200]}"
        if status in (401, 403):
            raise AuthError(where, connector=self.name, status=status)
        if status == 429:
            raise RateLimited(where, connector=self.name, status=status)
        if status >= 500 or status < 100:
            raise RetriableError(where, connector=self.name, status=status)
        return FatalError(where, connector=self.name, status=status)

    def _written(self, ref: str) -> RemoteRecord:
        record = self.get(ref)
        if record is None:
            raise FatalError(f"task {ref} vanished right after it was written", connector=self.name)
        return record

    def archive(self, ref: str) -> None:
        """Delete the task (Asana keeps it in the trash for 30 days); idempotent. In the
        "projects" layout: archive the project."""
        if self.layout is not None:
            self.layout.archive(ref)
            return
        try:
            self.api("TasksApi").delete_task(ref)
        except FatalError as exc:
            if exc.status != 404:
                raise

    # ------------------------------------------------------------------ webhooks

    webhook_secrets: tuple[str, ...] = ()
    """Secrets Asana sent in ``X-Hook-Secret`` handshakes; the service keeps them in its store
    and sets them here before verifying a delivery."""

    def register_webhook(self, target: str) -> Json:
        if self.layout is not None:
            raise FatalError(
                f"{self.name}: in the projects layout Asana would need one webhook per project; "
                "salesbridge polls events on each project instead",
                connector=self.name,
            )
        """Watch the project: Asana calls ``target`` with an ``X-Hook-Secret`` handshake first,
        which the running service must answer. Idempotent: an active webhook on the project
        with the same target is returned instead of a second one."""
        for hook in self.list_webhooks():
            if hook.get("target") == target and hook.get("active", True):
                return hook
        body = {"data": {"resource": self.config.pipeline, "target": target}}
        response = self.http.request("POST", "webhooks", json=body, retry=False)
        hook = _data(self.http.decode_json(response))
        if not isinstance(hook, dict):
            raise FatalError(f"{self.name}: creating the webhook answered {hook!r}")
        return hook

    def list_webhooks(self) -> list[Json]:
        """The workspace's webhooks on the synced project."""
        params = {"workspace": self.config.workspace, "limit": str(MAX_PAGE)}
        if self.layout is None:
            params["resource"] = self.config.pipeline
        hooks: list[Json] = []
        while True:
            body = self.http.get_json("webhooks", params=params) or {}
            hooks += [
                h
                for h in body.get("data") or []
                if self.layout is not None
                or (h.get("resource") or {}).get("gid") in (None, self.config.pipeline)
            ]
            offset = (body.get("next_page") or {}).get("offset")
            if not offset:
                return hooks
            params = {**params, "offset": offset}

    def remove_webhook(self, webhook_id: str) -> bool:
        """Delete a webhook; False if Asana did not know it."""
        response = self.http.request("DELETE", f"webhooks/{webhook_id}", expect=(404,))
        return response.status_code < 400

    @staticmethod
    def webhook_handshake(headers: Mapping[str, str]) -> str | None:
        """The secret of Asana's handshake (echo it back in ``X-Hook-Secret``), if it is one."""
        secret = headers.get("x-hook-secret")
        return secret or None

    def verify_webhook(self, headers: Mapping[str, str], body: bytes, url: str) -> list[str]:
        """The tasks a delivery concerns, once ``X-Hook-Signature`` (hex HMAC-SHA256 of the body,
        keyed with a handshake's secret) proves it came from Asana."""
        if not self.webhook_secrets:
            raise WebhookRejected(
                f"{self.name}: no Asana webhook handshake was recorded; run "
                f"`salesbridge webhooks register {self.name}` while the service runs"
            )
        signature = headers.get("x-hook-signature") or ""
        if not any(
            hmac.compare_digest(hmac.new(s.encode(), body, hashlib.sha256).hexdigest(), signature)
            for s in self.webhook_secrets
        ):
            raise WebhookRejected(f"{self.name}: the X-Hook-Signature does not match")
        try:
            events = json.loads(body)["events"]
            refs: list[str] = []
            kind = "task" if self.layout is None else "project"
            for event in events:
                for key in ("resource", "parent"):
                    item = event.get(key) or {}
                    if item.get("resource_type") == kind and item.get("gid") not in refs:
                        refs.append(str(item["gid"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise WebhookRejected(f"{self.name}: the delivery is not a list of events") from None
        return refs

    def _changes(self, fields: Mapping[str, Any], meta: _Meta, *, ref: str) -> tuple[Json, Any]:
        """(task body, a function writing subtasks and comments once the task exists)."""
        body: Json = {}
        custom: Json = {}
        problems: list[str] = []
        subtasks: list[Json] | None = None
        comments: list[Json] | None = None
        for key, value in fields.items():
            name = _canonical_name(key)
            if name == NAME:
                body["name"] = value or ""
            elif name == NOTES:
                body["notes"] = value or ""
            elif name == DUE:
                body["due_on"] = value
            elif name == START:
                body["start_on"] = value
            elif name == COMPLETED:
                body["completed"] = bool(value)
            elif name == ASSIGNEE:
                body["assignee"] = self._user_gid(value, meta)
            elif name == SECTION:
                if value is None:
                    continue
                gid = meta.sections.get(value) or self.meta(refresh=True).sections.get(value)
                if gid is None:
                    problems.append(f"{SECTION}: project has no section {value!r}")
                else:
                    body["_section"] = gid
            elif name == SUBTASKS:
                subtasks = list(value or [])
            elif name == COMMENTS:
                comments = list(value or [])
            elif name == CREATED:
                problems.append(f"{CREATED} is read-only")
            elif key in meta.fields:
                try:
                    custom[meta.fields[key]["gid"]] = _custom_write(
                        meta.fields[key], value, self, meta
                    )
                except ValueError as exc:
                    problems.append(f"{key}: {exc}")
            else:
                problems.append(f"{key!r} is not a field of project {self.config.pipeline}")
        if problems:
            raise SkippableRecord(
                ref, "; ".join(problems), connector=self.name, payload=dict(fields)
            )
        if custom:
            body["custom_fields"] = custom

        def after(gid: str, old_comments: list[Json]) -> None:
            if subtasks is not None:
                self._write_subtasks(gid, subtasks, meta)
            if comments is not None:
                self._write_comments(gid, comments, old_comments)

        return body, after

    def _write_subtasks(self, gid: str, wanted: list[Json], meta: _Meta) -> None:
        """Make the task's subtasks equal ``wanted`` (canonical tasks), matched by title."""
        tasks = self.api("TasksApi")
        current = (
            tasks.get_subtasks_for_task(
                gid, {"opt_fields": _SUB_FIELDS, "limit": MAX_PAGE}, full_payload=True
            ).get("data")
            or []
        )
        self.reconcile_tasks(
            current,
            wanted,
            meta,
            lambda body: tasks.create_subtask_for_task({"data": body}, gid, {"opt_fields": "gid"}),
        )

    def reconcile_tasks(
        self, current: list[Json], wanted: list[Json], meta: _Meta, create: Any
    ) -> None:
        """Make a list of Asana tasks equal ``wanted`` (canonical tasks), matched by title:
        ``create(body)`` adds one, changed ones are updated, the rest deleted."""
        tasks = self.api("TasksApi")
        by_title = {s["name"]: s for s in current}
        for item in wanted:
            owner = item.get("owner")
            body = {
                "name": item["title"],
                "completed": bool(item.get("done")),
                "due_on": item.get("due"),
                "assignee": self._user_gid(owner, meta),
            }
            old = by_title.pop(item["title"], None)
            if old is None:
                create(body)
                continue
            was = _subtask(old)
            same_owner = ((was["owner"] or {}).get("email") or "").lower() == (
                (owner or {}).get("email") or ""
            ).lower()
            if (was["done"], was["due"]) != (body["completed"], body["due_on"]) or not same_owner:
                tasks.update_task({"data": body}, old["gid"], {"opt_fields": "gid"})
        for old in by_title.values():
            tasks.delete_task(old["gid"])

    def _write_comments(self, gid: str, wanted: list[Json], current: list[Json]) -> None:
        """Add the actions not yet on the task as comments (comments are never removed)."""
        have = {_action_key(a) for a in current}
        stories = self.api("StoriesApi")
        for action in wanted:
            if _action_key(action) in have:
                continue
            text = f"{action['what']}\n[salesbridge: {action['at']} by {action.get('by') or ''}]"
            stories.create_story_for_task({"data": {"text": text}}, gid, {"opt_fields": "gid"})

    def _user_gid(self, person: Any, meta: _Meta) -> str | None:
        if person is None:
            return None
        if isinstance(person, str):
            person = {"email": person}
        uid, email = person.get("id"), (person.get("email") or "").lower()
        for u in meta.users:
            if u["gid"] == uid or (email and (u.get("email") or "").lower() == email):
                return str(u["gid"])
        if email:
            return email  # Asana accepts an e-mail for a user
        return None


# ----------------------------------------------------------------------------- value shapes

_EVENT_FIELDS = "resource.resource_type,action,parent.resource_type,created_at,user.email"


def _data(body: Any) -> Any:
    """The ``data`` of a response body (the client returns whole bodies, paging off)."""
    if not isinstance(body, dict) or "data" not in body:
        raise FatalError(f"unexpected Asana response: {str(body)[:200]}")
    return body["data"]


def _changed(events: list[Json]) -> tuple[list[str], list[str]]:
    """Task gids to fetch again and task gids deleted, in event order."""
    changed: list[str] = []
    deleted: list[str] = []
    for e in events:
        resource = e.get("resource") or {}
        parent = e.get("parent") or {}
        kind = resource.get("resource_type")
        if kind == "task":
            if e.get("action") == "deleted":
                deleted.append(resource["gid"])
            else:
                changed.append(resource["gid"])
            if parent.get("resource_type") == "task":
                changed.append(parent["gid"])
        elif kind == "story" and parent.get("resource_type") == "task":
            changed.append(parent["gid"])
    return changed, deleted


def _after(records: Iterable[RemoteRecord], signpost: datetime) -> list[str]:
    """Refs changed after the signpost: the next pull reads them again."""
    return [r.ref for r in records if r.updated_at is not None and r.updated_at > signpost]


def _oldest_first(records: list[RemoteRecord]) -> list[RemoteRecord]:
    far = datetime.min.replace(tzinfo=UTC)
    return sorted(records, key=lambda r: (r.updated_at or far, r.ref))


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse(text: str) -> datetime:
    at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {value!r}")
    return value


def _user(value: Any) -> Json | None:
    if not value:
        return None
    return {
        "id": value.get("gid"),
        "name": value.get("name"),
        "email": value.get("email"),
        "username": None,
    }


def _custom_value(cf: Json) -> Any:
    kind = cf.get("type")
    if kind == "text":
        return cf.get("text_value")
    if kind == "number":
        return cf.get("number_value")
    if kind == "date":
        return (cf.get("date_value") or {}).get("date")
    if kind == "enum":
        return (cf.get("enum_value") or {}).get("name")
    if kind == "multi_enum":
        return [o["name"] for o in cf.get("multi_enum_values") or []]
    if kind == "people":  # e-mails: custom values hold no objects, and e-mails identify people
        return [u.get("email") or u.get("name") for u in cf.get("people_value") or []]
    return cf.get("display_value")


def _custom_write(f: Json, value: Any, conn: AsanaConnector, meta: _Meta) -> Any:
    kind = f.get("type")
    if value is None:
        return None
    if kind == "text":
        return str(value)
    if kind == "number":
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not a number")
        return float(value)
    if kind == "date":
        return {"date": str(value)[:10]}
    options = {o["name"]: o["gid"] for o in f.get("enum_options") or []}
    if kind == "enum":
        if value not in options:
            raise ValueError(f"{value!r} is not an option (options: {', '.join(options)})")
        return options[value]
    if kind == "multi_enum":
        values = value if isinstance(value, list) else [value]
        unknown = [v for v in values if v not in options]
        if unknown:
            raise ValueError(f"{unknown!r} are not options (options: {', '.join(options)})")
        return [options[v] for v in values]
    if kind == "people":
        people = value if isinstance(value, list) else [value]
        return [g for g in (conn._user_gid(p, meta) for p in people) if g]
    raise ValueError(f"fields of type {kind!r} are not written")


def _subtask(s: Json) -> Json:
    owner = s.get("assignee")
    person = None
    if isinstance(owner, dict):
        person = {"name": owner.get("name"), "email": owner.get("email")}
    return {
        "title": s["name"],
        "done": bool(s.get("completed")),
        "due": s.get("due_on"),
        "owner": person,
    }


def _action(story: Json) -> Json:
    text = str(story.get("text") or "")
    mark = _MARK.search(text)
    if mark:
        return {"what": text[: mark.start()], "at": mark.group(1), "by": mark.group(2) or None}
    by = story.get("created_by") or {}
    return {"what": text, "at": story["created_at"], "by": by.get("email") or by.get("name")}


def _action_key(action: Json) -> tuple[Any, Any]:
    at = action.get("at")
    try:
        return action.get("what"), _parse(at) if isinstance(at, str) else at
    except ValueError:
        return action.get("what"), at


def _section_name(meta: _Meta, gid: str) -> str | None:
    return next((n for n, g in meta.sections.items() if g == gid), None)


def _canonical_name(key: str) -> str:
    low = key.casefold()
    return next((n for n in BUILTIN if n.casefold() == low), key)


def _mapping_remotes(path: Any) -> list[str] | None:
    """The remote fields a mapping file names (read without validating: that is load_mapping's
    job), so pulls request no more than the mapping uses."""
    try:
        with open(path, "rb") as f:  # noqa: PTH123
            raw = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        return None
    found: list[str] = []

    def walk(table: Any) -> None:
        if isinstance(table, dict):
            for key in ("remote", "currency_field"):
                if isinstance(table.get(key), str):
                    found.append(table[key])
            for value in table.values():
                walk(value)

    walk(raw.get("fields", {}))
    stamp = (raw.get("sync") or {}).get("stamp_field")
    if isinstance(stamp, str):
        found.append(stamp)
    return found
