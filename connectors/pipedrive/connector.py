"""Pipedrive deals as sales projects, through plain requests on API v2 (v1 where v2 has none).

A record is one deal, its ref the deal id. Its fields (the keys ``discover()`` lists):

==================  =============================================================  ===========
key                 from                                                           writable
==================  =============================================================  ===========
title               ``title``                                                      yes
stage               ``stage_id`` as "<pipeline> / <stage>" (moves pipeline too)    yes
pipeline            ``pipeline_id`` as its name                                    no
value, currency     ``value``, ``currency``                                        yes
expected_close_date ``expected_close_date``                                        yes
probability         ``probability``                                                yes
status              ``status``: open, won, lost                                    yes
lost_reason         ``lost_reason``                                                yes
owner               ``owner_id`` as a user (matched by e-mail when written)        yes
organization        ``org_id`` as the organization's name (found or created)       yes
organization_id     ``org_id``                                                     no
stakeholders        the contact person, then the other participants:               yes
                    [{name, title, role, attitude, email}]
actions             done activities: [{what, at, by}]                              yes
next_steps          open activities: [{what, owner, due}]                          yes
add_time ...        ``add_time``, ``update_time``, ``stage_change_time``,          no
                    ``close_time`` (UTC)
<40-hex hash>       each custom field by its code; "Region" resolves to it by      per type
                    name. Options are labels, sets lists of labels, users users.
==================  =============================================================  ===========

Activities are read in the order they were added, and written so that they read back unchanged:
matched by subject and due date (next steps) or subject and time (actions), added, changed or
deleted in the order given (one out of place is deleted and added again after the others). What
Pipedrive cannot hold (an action's time and author, an owner who is no Pipedrive user) is kept
on the note's last line, ``[salesbridge: {...}]``, with the owner it was written for: while the
activity keeps that owner the note's values are read back.

Stakeholders are the deal's people: its contact person (``person_id``) first, then its other
participants (``GET /v1/deals/{id}/participants``) in the order they were added. A person gives
``name``, ``title`` (``job_title``) and ``email`` (the primary e-mail). Pipedrive has no field
for a stakeholder's role or attitude, so they live in two single-option *person* fields, named
by ``role_field`` (default "Deal role") and ``attitude_field`` (default "Attitude") and resolved
through ``GET /api/v2/personFields``; an option's label is the value in words, any case
("Decision maker", "Economic buyer", "Influencer", "Champion", "User", "Technical buyer",
"Blocker", "Other"; "Supportive", "Neutral", "Opposed", "Unknown"). An empty field, or a label
that is none of these, reads as "other" / "unknown". The fields are required while configured:
pulls and stakeholder writes fail (FatalError), saying how to add them, when the account lacks
one, because a round trip through Pipedrive would otherwise turn every hub role into "other",
and ``check()`` says so. A mapping without stakeholders needs neither (see ``select``). Set
``role_field = ""`` (or ``attitude_field``) to do without; the values then read as "other" /
"unknown" and are never written, so map stakeholders one way (``direction = "pull"``) or let
another tool own them. A role is per *person*, not per deal: someone who is the decision maker
on one deal and a user on another holds the last role written, and both deals read it.

Writing stakeholders makes the deal's people read back as given, in order: each is matched to
a current participant by e-mail, then by name; else found by e-mail (``GET
/api/v2/persons/search``, exact), or by name in the deal's organization when it has no e-mail;
else created in the deal's organization. A person whose name, title, e-mail, role or attitude
differs is updated (a title or e-mail the hub does not know is left as Pipedrive has it). The
first becomes the contact person; participants missing are added, those not wanted removed,
one out of place removed and added again after the others. Pulls ask the deal listing for
``participants_count`` and read the participants only of deals that have people besides the
contact person (one request per such deal: Pipedrive has no listing of participants across
deals); the connector keeps what it read, with the deal's version, and asks again only for a
deal whose version changed (a participant added or removed moves the deal's update time and
count), so a second census repeats none of these requests. A person's own edits (a new
title) do not change the deal: incremental pulls see them once the deal changes, full pulls
always (persons are read again, 100 a request). With ``participants = false`` only the
contact person is read and written; participants are left alone, and more than one
stakeholder is refused (skipped) rather than half written.

The canonical id is stamped in a text deal field (``stamp_field``, default "Salesbridge ID");
``find_by_stamp`` searches it with ``GET /api/v2/deals/search``.

Incremental pulls list ``GET /api/v2/deals?updated_since=...&sort_by=update_time`` with cursor
pagination. Pipedrive's times have whole seconds and ``updated_since`` is inclusive, so the
cursor position is ``<time>|<id>:<digest>,...``: the deals already read at that very second,
dropped before anything else is fetched for them. A pull with no change costs one request.
Deleted and archived deals leave the v2 listing: full pulls (reconciliation) find them gone.

Versions are ``<update_time>#<hash of the deal's data>`` (``participants_count`` included while
participants are read), so two edits in one second still differ. Pipedrive has no conditional
write, so an update with ``expected_version`` reads the deal first (one GET) and refuses with
StaleVersion when it changed. The PATCH answers with the deal as written, which gives the new
version: the record returned reads the deal's organization, people and activities only when
its caller looks at those fields, so a push of plain deal fields costs two requests. Writing
participants or activities moves the deal's update time, so such a write reads the deal once
more for its version. A batch of deal edits (``update_many``, the engine's batch hook) lists
the versions of 100 deals in one request (``GET /api/v2/deals?ids=...``), then PATCHes each:
K + ceil(K / 100) requests.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import hmac
import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationError, field_validator

from bridge.errors import UserError
from bridge.http import Auth, HttpClient
from bridge.model import Attitude, StakeholderRole, to_json_value
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
    RetriableError,
    Schema,
    SkippableRecord,
    StaleVersion,
    WebhookRejected,
    parse_duration,
)
from connectors.lists import item_key, read_marker, reconcile, with_marker

Row = dict[str, Any]
V2 = "api/v2/"
V1 = "v1/"
MAX_LIMIT = 500
IDS_PER_REQUEST = 100
ACTIVITY_LISTING_THRESHOLD = 20
"""More deals than this in one page: list all activities once instead of one call per deal."""

_STATUSES = ("open", "won", "lost")
_PLAIN = (
    "title",
    "value",
    "currency",
    "expected_close_date",
    "probability",
    "status",
    "lost_reason",
)
_TIMES = ("add_time", "update_time", "stage_change_time", "close_time")
_VERSIONED = (
    *_PLAIN,
    "stage_id",
    "pipeline_id",
    "owner_id",
    "org_id",
    "person_id",
    "is_deleted",
    "is_archived",
    "custom_fields",
    "participants_count",  # asked for with include_fields: participants change no other field
)
_CUSTOM_TYPES = {
    "varchar": "text",
    "text": "text",
    "varchar_auto": "text",
    "phone": "text",
    "double": "number",
    "int": "number",
    "monetary": "number",
    "enum": "option",
    "set": "multi",
    "date": "date",
    "user": "user",
}
_STANDARD: tuple[RemoteField, ...] = (
    RemoteField("title", "Title"),
    RemoteField("pipeline", "Pipeline", "option", writable=False),
    RemoteField("value", "Value", "number"),
    RemoteField("currency", "Currency"),
    RemoteField("expected_close_date", "Expected close date", "date"),
    RemoteField("probability", "Probability", "number"),
    RemoteField("status", "Status", "option", options=_STATUSES),
    RemoteField("lost_reason", "Lost reason"),
    RemoteField("owner", "Owner", "user"),
    RemoteField("organization", "Organization"),
    RemoteField("organization_id", "Organization ID", writable=False),
    RemoteField("stakeholders", "Deal people", "json"),
    RemoteField("actions", "Done activities", "json"),
    RemoteField("next_steps", "Open activities", "json"),
    RemoteField("add_time", "Deal created", "datetime", writable=False),
    RemoteField("update_time", "Update time", "datetime", writable=False),
    RemoteField("stage_change_time", "Last stage change", "datetime", writable=False),
    RemoteField("close_time", "Deal closed on", "datetime", writable=False),
)
_FLOW_FIELDS = {
    "stage_id": "stage",
    "owner_id": "owner",
    "org_id": "organization_id",
    "pipeline_id": "pipeline",
}


class PipedriveConfig(ConnectorConfig):
    """``[connectors.<name>]`` with ``kind = "pipedrive"``."""

    kind: Literal["pipedrive"] = "pipedrive"
    token: Secret = Field(description='API token, e.g. "env:PIPEDRIVE_API_TOKEN"')
    base_url: str = Field(
        "https://api.pipedrive.com",
        description="API origin: https://api.pipedrive.com or https://<company>.pipedrive.com",
    )
    page_size: int = Field(MAX_LIMIT, ge=1, le=MAX_LIMIT, description="deals per request")
    pipelines: list[str] = Field(
        default_factory=list, description="pipelines synced, by name; empty: every pipeline"
    )
    stamp_field: str = Field("Salesbridge ID", description="text deal field holding the stamp")
    persons: bool = Field(True, description="read and write the deal's people (stakeholders)")
    participants: bool = Field(
        True,
        description="stakeholders include every participant, not only the contact person (a "
        "request per deal that has others)",
    )
    role_field: str = Field(
        "Deal role",
        description='single-option person field holding a stakeholder\'s role; "" for none',
    )
    attitude_field: str = Field(
        "Attitude",
        description='single-option person field holding a stakeholder\'s attitude; "" for none',
    )
    activities: bool = Field(True, description="read activities (actions, next steps)")
    metadata_ttl: timedelta = Field(
        timedelta(minutes=10), description="how long users, stages and fields are cached"
    )
    webhook_user: str = Field(
        "salesbridge", description="basic-auth user Pipedrive sends with webhook deliveries"
    )
    webhook_password: Secret | None = Field(
        None,
        description='basic-auth password of webhook deliveries, e.g. "env:PIPEDRIVE_HOOK_PASSWORD"'
        " (unset: webhooks are refused)",
    )

    @field_validator("metadata_ttl", mode="before")
    @classmethod
    def _ttl(cls, v: Any) -> timedelta:
        return parse_duration(v)


@dataclass(frozen=True)
class _Field:
    code: str
    name: str
    type: str
    options: Mapping[int, str] = field(default_factory=dict)


@dataclass
class _Meta:
    """Users, pipelines, stages and deal fields: what turns ids into names and back."""

    loaded_at: float
    users: dict[int, Row]
    pipelines: dict[int, str]
    stages: dict[int, tuple[int, str]]
    fields: dict[str, _Field]
    person_fields: dict[str, _Field] = field(default_factory=dict)

    def stage_label(self, stage_id: int) -> str:
        pipeline_id, name = self.stages[stage_id]
        return f"{self.pipelines.get(pipeline_id, pipeline_id)} / {name}"

    def user(self, user_id: Any) -> Row | None:
        u = self.users.get(user_id) if isinstance(user_id, int) else None
        if u is None:
            return None
        return {
            "id": str(u["id"]),
            "name": u.get("name"),
            "email": u.get("email"),
            "username": None,
        }


class PipedriveConnector(Connector[PipedriveConfig]):
    """Adapter to one Pipedrive company account."""

    kind: ClassVar[str] = "pipedrive"
    config_model: ClassVar[type[ConnectorConfig]] = PipedriveConfig

    def __init__(self, name: str, config: PipedriveConfig, *, http: HttpClient | None = None):
        super().__init__(name, config)
        self._http = http
        self._meta: _Meta | None = None
        self._lock = threading.RLock()
        self._selected: frozenset[str] | None = None
        self._known_participants: dict[int, tuple[str, list[tuple[int, int]]]] = {}
        """Participants last read, by deal: (the deal's version then, participants)."""

    # ------------------------------------------------------------------ plumbing

    @property
    def http(self) -> HttpClient:
        """The HTTP client, built on first use: the token is read from the environment then."""
        with self._lock:
            if self._http is None:
                auth = Auth.header("x-api-token", self.config.token.reveal())
                self._http = HttpClient.from_config(
                    self.name, self.config.base_url, self.config, auth=auth
                )
            return self._http

    def _get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        body = self.http.get_json(path, params=params, expect=(404,))
        return None if body is None else self._data(body, path)

    def _send(self, method: str, path: str, payload: Row | None = None) -> Any:
        response = self.http.request(method, path, json=payload, expect=(404,))
        if response.status_code == 404:
            return None
        return self._data(self.http.decode_json(response), path)

    def _data(self, body: Any, path: str) -> Any:
        if not isinstance(body, dict) or body.get("success") is False:
            raise FatalError(f"{self.name}: {path} answered {str(body)[:200]}", connector=self.name)
        return body.get("data")

    def _list(self, path: str, params: Mapping[str, Any] | None = None) -> Iterator[list[Row]]:
        """Pages of a v2 list, following ``next_cursor``."""
        query = {"limit": MAX_LIMIT, **(params or {})}
        while True:
            body = self.http.get_json(V2 + path, params=query)
            rows = self._data(body, path) or []
            yield rows
            nxt = (body.get("additional_data") or {}).get("next_cursor")
            if not nxt:
                return
            query = {**query, "cursor": nxt}

    def close(self) -> None:
        with self._lock:
            if self._http is not None:
                self._http.close()

    # ------------------------------------------------------------------ metadata

    def _metadata(self, *, refresh: bool = False) -> _Meta:
        with self._lock:
            ttl = self.config.metadata_ttl.total_seconds()
            meta = self._meta
            if refresh or meta is None or time.monotonic() - meta.loaded_at > ttl:
                users = {u["id"]: u for u in self._get(V1 + "users") or ()}
                pipelines = {p["id"]: p["name"] for page in self._list("pipelines") for p in page}
                stages = {
                    s["id"]: (s["pipeline_id"], s["name"])
                    for page in self._list("stages")
                    for s in page
                    if not s.get("is_deleted")
                }
                fields = self._custom_fields("dealFields")
                person_fields = self._custom_fields("personFields") if self._people else {}
                meta = self._meta = _Meta(
                    time.monotonic(), users, pipelines, stages, fields, person_fields
                )
                self._check_pipelines(meta)
            return meta

    def _custom_fields(self, what: str) -> dict[str, _Field]:
        return {
            f["field_code"]: _Field(
                f["field_code"],
                f["field_name"],
                f["field_type"],
                {o["id"]: o["label"] for o in f.get("options") or ()},
            )
            for page in self._list(what)
            for f in page
            if f.get("is_custom_field")
        }

    @property
    def _people(self) -> bool:
        """Whether stakeholders are read and written (the setting, and the mapping's needs)."""
        return self.config.persons and (self._selected is None or "stakeholders" in self._selected)

    def select(self, fields: Sequence[str]) -> None:
        """A mapping without ``stakeholders`` reads no persons or participants."""
        self._selected = frozenset(fields)

    def _deal_params(self) -> Row:
        """What every deal read asks for: ``participants_count`` while participants are read
        (part of the version: a participant added changes no other field of the deal)."""
        return {"include_fields": "participants_count"} if self._counts_participants else {}

    @property
    def _counts_participants(self) -> bool:
        return self._people and self.config.participants

    def _people_fields(self, meta: _Meta) -> tuple[_Field | None, _Field | None]:
        """The (role, attitude) person fields; FatalError when one configured is missing."""
        found: list[_Field | None] = []
        missing: list[str] = []
        for setting, name in (
            ("role_field", self.config.role_field),
            ("attitude_field", self.config.attitude_field),
        ):
            f = _named(meta.person_fields, name) if name else None
            if name and (f is None or f.type != "enum"):
                missing.append(f"{setting} = {name!r}")
            found.append(f)
        if missing:
            raise FatalError(
                f"{self.name}: Pipedrive has no single-option person field for "
                f"{' and '.join(missing)}; add it (Company settings > Data fields > Person, "
                "options such as Decision maker, Champion... / Supportive, Neutral, Opposed) "
                'or set the setting to "" to keep roles and attitudes out of Pipedrive',
                connector=self.name,
            )
        return found[0], found[1]

    def _check_pipelines(self, meta: _Meta) -> None:
        missing = [p for p in self.config.pipelines if p not in meta.pipelines.values()]
        if missing:
            raise FatalError(
                f"{self.name}: pipeline(s) {', '.join(map(repr, missing))} not found in "
                f"Pipedrive (it has {', '.join(map(repr, meta.pipelines.values()))}); correct "
                "`pipelines` in the connector's config",
                connector=self.name,
            )

    def _pipeline_ids(self, meta: _Meta) -> list[int]:
        wanted = set(self.config.pipelines)
        return [i for i, n in meta.pipelines.items() if not wanted or n in wanted]

    def _stamp_key(self, meta: _Meta, *, required: bool) -> str | None:
        name = self.config.stamp_field.casefold()
        for f in meta.fields.values():
            if f.code == self.config.stamp_field or f.name.casefold() == name:
                return f.code
        if required:
            raise FatalError(
                f"{self.name}: Pipedrive has no deal field {self.config.stamp_field!r} for the "
                "salesbridge stamp; add a text deal field of that name (Company settings > "
                "Data fields) or set `stamp_field` to an existing one",
                connector=self.name,
            )
        return None

    # ------------------------------------------------------------------ reading

    def check(self) -> str:
        me = self._get(V1 + "users/me") or {}
        meta = self._metadata(refresh=True)
        stamp = (
            ""
            if self._stamp_key(meta, required=False)
            else (f"; no {self.config.stamp_field!r} deal field yet: creating deals will fail")
        )
        if self._people:
            try:
                self._people_fields(meta)
            except FatalError as exc:
                stamp += f"; {exc}"
        return (
            f"Pipedrive {me.get('company_name', '?')} ({me.get('company_domain', '?')}) as "
            f"{me.get('name', '?')} <{me.get('email', '?')}>: {len(meta.pipelines)} pipelines, "
            f"{len(meta.fields)} custom deal fields{stamp}"
        )

    def discover(self) -> Schema:
        meta = self._metadata(refresh=True)
        pipelines = set(self._pipeline_ids(meta))
        stages = tuple(
            meta.stage_label(sid)
            for sid, (pid, _) in sorted(meta.stages.items(), key=lambda s: (s[1][0], s[0]))
            if pid in pipelines
        )
        fields = [*_STANDARD, RemoteField("stage", "Stage", "stage", options=stages)]
        for f in meta.fields.values():
            kind = _CUSTOM_TYPES.get(f.type, "json")
            options = tuple(f.options.values())
            fields.append(
                RemoteField(
                    f.code, f.name, kind, options, custom=True, writable=f.type in _CUSTOM_TYPES
                )
            )
        users = tuple(
            RemoteUser(str(u["id"]), u.get("name"), u.get("email")) for u in meta.users.values()
        )
        return Schema(fields=tuple(fields), users=users, stages=stages)

    def pull(self, cursor: Cursor, *, signpost: datetime, full: bool = False) -> Iterator[Page]:
        signpost = signpost.astimezone(UTC)
        meta = self._metadata()
        partitions: list[tuple[str, int | None]] = [("", None)]
        if self.config.pipelines:
            partitions = [(f"pipeline:{i}", i) for i in self._pipeline_ids(meta)]
        activities: dict[int, list[Row]] | None = None
        for partition, pipeline_id in partitions:
            since, seen = (None, set()) if full else _position(cursor.get(partition), self.name)
            params: Row = {"limit": self.config.page_size, "sort_by": "update_time"}
            params.update(self._deal_params())
            if since is not None:
                params["updated_since"] = _rfc3339(since)
            if pipeline_id is not None:
                params["pipeline_id"] = pipeline_id
            at, boundary = since, set(seen)
            for deals in self._list("deals", params):
                # Dropped: only deals read before at the cursor's very second. The same deal
                # listed with a later time changed in a way its data may not show (an activity
                # or a participant added): it is read again.
                fresh = [
                    d
                    for d in deals
                    if _time(d.get("update_time")) != since or (d.get("id"), _digest(d)) not in seen
                ]
                many = full or len(fresh) > ACTIVITY_LISTING_THRESHOLD
                if many and activities is None and self.config.activities and fresh:
                    activities = self._all_activities()
                records, skipped = self._records(fresh, activities)
                for d in deals:
                    updated = _time(d.get("update_time"))
                    if updated is None or updated > signpost:
                        continue
                    if at is None or updated > at:
                        at, boundary = updated, set()
                    if updated == at:
                        boundary.add((d.get("id"), _digest(d)))
                if at is not None and (at != since or boundary != seen):
                    cursor = cursor.advanced(partition, _format_position(at, boundary))
                    since, seen = at, set(boundary)
                if records or skipped or deals:
                    yield Page(records, cursor, skipped)

    def get(self, ref: str) -> RemoteRecord | None:
        deal_id = _deal_id(ref)
        deal = None if deal_id is None else self._get(f"{V2}deals/{deal_id}", self._deal_params())
        if deal is None:
            return None
        records, skipped = self._records([deal], None)
        if skipped:
            raise skipped[0]
        return records[0]

    def find_by_stamp(self, stamp: str) -> RemoteRecord | None:
        key = self._stamp_key(self._metadata(), required=False)
        if key is None or len(stamp) < 2:
            return None
        params = {"term": stamp, "fields": "custom_fields", "exact_match": "true", "limit": 100}
        found = self._get(V2 + "deals/search", params) or {}
        ids = sorted(i["item"]["id"] for i in found.get("items", ()) if i.get("item"))
        for deal_id in ids:
            record = self.get(str(deal_id))
            if record is not None and record.stamp == stamp:
                return record
        return None

    def history(self, ref: str, since: datetime | None = None) -> list[HistoryEntry]:
        """Field changes from the deal's flow (v1), oldest first, from ``since`` on."""
        deal_id = _deal_id(ref)
        if deal_id is None:
            return []
        meta = self._metadata()
        entries: list[HistoryEntry] = []
        start = 0
        while True:
            params = {"items": "dealChange", "start": start, "limit": MAX_LIMIT}
            body = self.http.get_json(f"{V1}deals/{deal_id}/flow", params=params, expect=(404,))
            if body is None:
                return []
            for item in self._data(body, "flow") or ():
                entry = self._history_entry(meta, item)
                if entry is not None and (since is None or entry.at >= since):
                    entries.append(entry)
            more = (body.get("additional_data") or {}).get("more_items_in_collection")
            if not more:
                break
            start += MAX_LIMIT
        return sorted(entries, key=lambda e: e.at)

    # ------------------------------------------------------------------ writing

    def create(self, fields: Mapping[str, Any], *, stamp: str) -> RemoteRecord:
        meta = self._metadata()
        key = self._stamp_key(meta, required=True)
        assert key is not None
        plain, lists = _split(fields, ref=stamp, connector=self.name)
        people = self._people_to_write(lists, ref=stamp)
        body = self._body(meta, plain, ref=stamp)
        body["custom_fields"] = {**body.get("custom_fields", {}), key: stamp}
        body.setdefault("title", "(untitled)")
        wanted: list[int] = []
        if people:
            wanted = self._resolve_people(meta, None, [], people, body.get("org_id"), ref=stamp)
            body["person_id"] = wanted[0]
        deal = self._send("POST", V2 + "deals", body)
        if not isinstance(deal, dict):
            return self._written(deal, stamp)
        if len(wanted) > 1:
            self._write_participants(deal["id"], wanted, self._participants(deal["id"]))
        if lists:
            self._write_activities(meta, deal["id"], lists, ref=stamp)
        if len(wanted) > 1 or lists or self._counts_participants:  # the version's count
            deal = self._get(f"{V2}deals/{deal['id']}", self._deal_params()) or deal
        return self._written(deal, stamp)

    def update(
        self, ref: str, changes: Mapping[str, Any], *, expected_version: str | None
    ) -> RemoteRecord:
        deal_id = _deal_id(ref)
        if deal_id is None:
            raise StaleVersion(ref, expected_version, None, connector=self.name)
        meta = self._metadata()
        plain, lists = _split(changes, ref=ref, connector=self.name)
        people = self._people_to_write(lists, ref=ref)
        body = self._body(meta, plain, ref=ref)
        current = None
        if expected_version is not None or people is not None:
            current = self._get(f"{V2}deals/{deal_id}", self._deal_params())
        if expected_version is not None:
            actual = None if current is None else _version(current)
            if actual != expected_version:
                raise StaleVersion(ref, expected_version, actual, connector=self.name)
        wanted: list[int] = []
        parts: list[tuple[int, int]] = []
        if people is not None:
            if current is None:
                raise StaleVersion(ref, expected_version, None, connector=self.name)
            parts = self._participants(deal_id) if self.config.participants else []
            org_id = body.get("org_id", current.get("org_id"))
            wanted = self._resolve_people(meta, current, parts, people, org_id, ref=ref)
            primary = wanted[0] if wanted else None
            if primary != current.get("person_id"):
                body["person_id"] = primary
        deal = self._send("PATCH", f"{V2}deals/{deal_id}", body) if body else None
        if body and deal is None:
            raise StaleVersion(ref, expected_version, None, connector=self.name)
        if people is not None and self.config.participants:
            if "person_id" in body:  # a new contact person may have joined the participants
                parts = self._participants(deal_id)
            self._write_participants(deal_id, wanted, parts)
        if lists:
            self._write_activities(meta, deal_id, lists, ref=ref)
        if not body or lists or people is not None:
            deal = self._get(f"{V2}deals/{deal_id}", self._deal_params())
        elif isinstance(deal, dict) and current is not None and "participants_count" in current:
            # The PATCH answer has no count; a plain write leaves it as read just before.
            deal = {**deal, "participants_count": current["participants_count"]}
        if deal is None:
            raise StaleVersion(ref, expected_version, None, connector=self.name)
        return self._written(deal, ref)

    def update_many(
        self,
        changes: Mapping[str, Mapping[str, Any]],
        expected_versions: Mapping[str, str | None] | None = None,
    ) -> dict[str, RemoteRecord | ConnectorError]:
        """Many deal edits: the versions of up to 100 deals read with one listing
        (``GET /api/v2/deals?ids=...``, with ``participants_count`` while it is part of the
        version), then one PATCH per deal (its answer gives the new version).

        A deal whose version is no longer the expected one is StaleVersion and is not written.
        An update writing stakeholders or activities, and a deal the listing leaves out
        (deleted or archived), take :meth:`update`. Cost: K + ceil(K / 100). Errors of one
        deal are returned for it; auth, rate-limit and network errors raised. As with
        :meth:`update`, an edit between the listing and a deal's PATCH is not seen.
        """
        expected = expected_versions or {}
        out: dict[str, RemoteRecord | ConnectorError] = {}
        meta = self._metadata()
        bodies: dict[str, Row] = {}
        for ref, fields in changes.items():
            try:
                plain, lists = _split(fields, ref=ref, connector=self.name)
                if lists or _deal_id(ref) is None:
                    out[ref] = self.update_or_error(ref, fields, expected.get(ref))
                    continue
                body = self._body(meta, plain, ref=ref)
            except SkippableRecord as exc:
                out[ref] = exc
                continue
            if body:
                bodies[ref] = body
            else:
                out[ref] = self.update_or_error(ref, fields, expected.get(ref))
        refs = list(bodies)
        for i in range(0, len(refs), IDS_PER_REQUEST):
            chunk = refs[i : i + IDS_PER_REQUEST]
            checked = [ref for ref in chunk if expected.get(ref) is not None]
            current: dict[str, Row] = {}
            if checked:
                params = {"ids": ",".join(checked), "limit": IDS_PER_REQUEST}
                for rows in self._list("deals", {**params, **self._deal_params()}):
                    current.update({str(d.get("id")): d for d in rows if isinstance(d, dict)})
            for ref in chunk:
                want = expected.get(ref)
                now = current.get(ref)
                if want is not None and now is None:  # not listed: deleted or archived
                    out[ref] = self.update_or_error(ref, changes[ref], want)
                    continue
                if want is not None and now is not None and _version(now) != want:
                    out[ref] = StaleVersion(ref, want, _version(now), connector=self.name)
                    continue
                try:
                    deal = self._send("PATCH", f"{V2}deals/{ref}", bodies[ref])
                except (AuthError, RetriableError):
                    raise
                except (SkippableRecord, FatalError) as exc:
                    out[ref] = exc
                    continue
                if not isinstance(deal, dict):
                    out[ref] = StaleVersion(ref, want, None, connector=self.name)
                    continue
                if now is not None and "participants_count" in now:
                    # The PATCH answer has no count; a plain write leaves it as listed.
                    deal = {**deal, "participants_count": now["participants_count"]}
                out[ref] = self._written(deal, ref)
        return out

    def archive(self, ref: str) -> None:
        """Delete the deal (Pipedrive keeps deleted deals 30 days); unknown refs are left."""
        deal_id = _deal_id(ref)
        if deal_id is not None:
            self._send("DELETE", f"{V2}deals/{deal_id}")

    # -- webhooks (v1)

    def register_webhook(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        event_object: str = "deal",
        event_action: str = "*",
        name: str = "salesbridge",
    ) -> Row:
        """Ask Pipedrive to POST changes to ``url`` with these basic-auth credentials (default:
        ``webhook_user`` and ``webhook_password``). Idempotent: a webhook already sending the
        same events to ``url`` is returned instead of adding a second one."""
        if username is None:
            username = self.config.webhook_user
        if password is None:
            if self.config.webhook_password is None:
                raise UserError(
                    f"connectors.{self.name}.webhook_password is not set: Pipedrive deliveries "
                    "would carry no credentials the receiver can check"
                )
            password = self.config.webhook_password.reveal()
        for known in self.list_webhooks():
            if (
                known.get("subscription_url") == url
                and known.get("event_object") == event_object
                and known.get("event_action") == event_action
                and known.get("http_auth_user") in (None, username)
            ):
                return known
        payload = {
            "subscription_url": url,
            "event_action": event_action,
            "event_object": event_object,
            "name": name,
            "version": "2.0",
            "http_auth_user": username,
            "http_auth_password": password,
        }
        hook: Row = self._send("POST", V1 + "webhooks", payload)
        return hook

    def list_webhooks(self) -> list[Row]:
        return list(self._get(V1 + "webhooks") or ())

    def remove_webhook(self, webhook_id: int | str) -> bool:
        """Remove a webhook; False if Pipedrive did not know it."""
        response = self.http.request("DELETE", f"{V1}webhooks/{webhook_id}", expect=(404, 410))
        return response.status_code < 400

    def verify_webhook(self, headers: Mapping[str, str], body: bytes, url: str) -> list[str]:
        """The deal a delivery concerns, once its basic auth matches ``webhook_user`` and
        ``webhook_password`` (Pipedrive signs nothing: the credentials are the proof)."""
        if self.config.webhook_password is None:
            raise WebhookRejected(
                f"{self.name}: set webhook_password to receive Pipedrive webhooks"
            )
        if not self.webhook_authorized(
            headers.get("authorization"),
            self.config.webhook_user,
            self.config.webhook_password.reveal(),
        ):
            raise WebhookRejected(
                f"{self.name}: the delivery's basic-auth credentials do not match"
            )
        try:
            payload = json.loads(body)
        except ValueError:
            raise WebhookRejected(f"{self.name}: the delivery is not JSON") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("meta"), dict):
            raise WebhookRejected(f"{self.name}: the delivery has no meta object")
        ref = self.webhook_ref(payload)
        return [ref] if ref is not None else []

    @staticmethod
    def webhook_authorized(authorization: str | None, username: str, password: str) -> bool:
        """Whether a delivery's ``Authorization`` header carries the registered credentials."""
        scheme, _, value = (authorization or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        expected = base64.b64encode(f"{username}:{password}".encode()).decode()
        return hmac.compare_digest(value.strip().encode(), expected.encode())

    @staticmethod
    def webhook_ref(payload: Any) -> str | None:
        """The deal a delivery (v2.0 or v1.0 payload) is about, for a targeted sync."""
        meta = payload.get("meta") if isinstance(payload, dict) else None
        if not isinstance(meta, dict):
            return None
        entity = meta.get("entity") or meta.get("object")
        ref = meta.get("entity_id") or meta.get("id")
        return str(ref) if entity == "deal" and ref is not None else None

    # ------------------------------------------------------------------ deals -> records

    def _written(self, deal: Any, ref: str) -> RemoteRecord:
        """The record of a deal as a write answered it. The deal's own fields come from the
        answer; its organization, people and activities are read when first looked at."""
        if not isinstance(deal, dict):
            raise FatalError(
                f"{self.name}: deal {ref} vanished right after it was written", connector=self.name
            )
        meta = self._metadata()
        if self._unknown_ids(meta, deal):
            meta = self._metadata(refresh=True)
        record = self._record(meta, deal, None)

        def around() -> Row:
            m = self._metadata()
            return self._related(m, deal, self._around(m, [deal], None))

        return replace(record, fields=_Deferred(record.fields, self._related_keys(), around))

    def _records(
        self, deals: list[Row], activities: dict[int, list[Row]] | None
    ) -> tuple[list[RemoteRecord], list[SkippableRecord]]:
        if not deals:
            return [], []
        meta = self._metadata()
        if any(self._unknown_ids(meta, d) for d in deals):
            meta = self._metadata(refresh=True)  # a stage or option added since the last load
        around = self._around(meta, deals, activities)
        if self._unknown_options(meta, around.persons.values()):
            meta = self._metadata(refresh=True)  # a person field option added since
        records: list[RemoteRecord] = []
        skipped: list[SkippableRecord] = []
        for d in deals:
            try:
                records.append(self._record(meta, d, around))
            except SkippableRecord as exc:
                skipped.append(exc)
        return records, skipped

    def _around(
        self, meta: _Meta, deals: list[Row], activities: dict[int, list[Row]] | None
    ) -> _Around:
        """What deals name by id, read in batches: organizations, people, activities."""
        orgs = self._by_ids("organizations", {d.get("org_id") for d in deals})
        persons: dict[int, Row] = {}
        participants: dict[int, list[tuple[int, int]]] = {}
        if self._people:
            self._people_fields(meta)  # fail before reading what could not round-trip
            if self.config.participants:
                participants = {
                    d["id"]: self._participants_of(d)
                    for d in deals
                    if isinstance(d.get("id"), int) and _has_others(d)
                }
            ids = {d.get("person_id") for d in deals}
            ids.update(p for parts in participants.values() for _, p in parts)
            persons = self._by_ids("persons", ids)
        if self.config.activities and activities is None:
            activities = {}
            for d in deals:
                if isinstance(d.get("id"), int):
                    found = [a for p in self._list("activities", {"deal_id": d["id"]}) for a in p]
                    activities[d["id"]] = found
        return _Around(orgs, persons, participants, activities)

    def _participants_of(self, deal: Row) -> list[tuple[int, int]]:
        """A listed deal's participants, read again only when the deal changed since: adding
        or removing one moves the deal's update time and count, so its version tells."""
        version = _version(deal) if "participants_count" in deal else None
        with self._lock:
            known = self._known_participants.get(deal["id"])
        if version is not None and known is not None and known[0] == version:
            return known[1]
        parts = self._participants(deal["id"])
        if version is not None:
            with self._lock:
                self._known_participants[deal["id"]] = (version, parts)
        return parts

    def _participants(self, deal_id: int) -> list[tuple[int, int]]:
        """(participant id, person id) of a deal's participants, in the order added (v1)."""
        out: list[tuple[int, int]] = []
        start = 0
        while True:
            params = {"start": start, "limit": MAX_LIMIT}
            path = f"{V1}deals/{deal_id}/participants"
            body = self.http.get_json(path, params=params, expect=(404,))
            if body is None:
                return sorted(out)
            for part in self._data(body, path) or ():
                person = part.get("person_id")
                pid = person.get("value") if isinstance(person, dict) else person
                if isinstance(part.get("id"), int) and isinstance(pid, int):
                    out.append((part["id"], pid))
            if not (body.get("additional_data") or {}).get("more_items_in_collection"):
                return sorted(out)
            start += MAX_LIMIT

    def _related_keys(self) -> frozenset[str]:
        keys = {"organization"}
        if self._people:
            keys.add("stakeholders")
        if self.config.activities:
            keys.update(_LISTS)
        return frozenset(keys)

    def _unknown_options(self, meta: _Meta, persons: Iterable[Row]) -> bool:
        fields = [f for f in self._people_fields(meta) if f is not None] if self._people else []
        return any(
            isinstance(v, int) and v not in f.options
            for p in persons
            for f in fields
            if isinstance(p.get("custom_fields"), dict)
            for v in [p["custom_fields"].get(f.code)]
        )

    def _unknown_ids(self, meta: _Meta, deal: Row) -> bool:
        if deal.get("stage_id") not in meta.stages or deal.get("owner_id") not in meta.users:
            return True
        custom = deal.get("custom_fields") or {}
        return any(k not in meta.fields for k in custom if isinstance(custom, dict))

    def _by_ids(self, what: str, ids: Iterable[Any]) -> dict[int, Row]:
        wanted = sorted(i for i in ids if isinstance(i, int))
        out: dict[int, Row] = {}
        for i in range(0, len(wanted), IDS_PER_REQUEST):
            chunk = ",".join(map(str, wanted[i : i + IDS_PER_REQUEST]))
            for page in self._list(what, {"ids": chunk}):
                out.update((r["id"], r) for r in page)
        return out

    def _all_activities(self) -> dict[int, list[Row]]:
        grouped: dict[int, list[Row]] = {}
        for page in self._list("activities"):
            for a in page:
                if isinstance(a.get("deal_id"), int):
                    grouped.setdefault(a["deal_id"], []).append(a)
        return grouped

    def _record(self, meta: _Meta, deal: Row, around: _Around | None) -> RemoteRecord:
        """A deal as a record; without ``around``, its own fields only."""
        ref = str(deal.get("id"))
        problems: list[str] = []

        def bad(what: str) -> None:
            problems.append(what)

        fields: Row = {k: deal.get(k) for k in _PLAIN}
        if deal.get("status") not in _STATUSES:
            bad(f"status {deal.get('status')!r} is not open, won or lost")
        stage_id = deal.get("stage_id")
        if stage_id in meta.stages:
            fields["stage"] = meta.stage_label(stage_id)
            fields["pipeline"] = meta.pipelines.get(meta.stages[stage_id][0])
        else:
            bad(f"stage id {stage_id!r} is not a stage of any pipeline")
        fields["owner"] = meta.user(deal.get("owner_id"))
        fields["organization_id"] = str(deal["org_id"]) if deal.get("org_id") else None
        for key in _TIMES:
            at = _time(deal.get(key))
            fields[key] = at.isoformat().replace("+00:00", "Z") if at else None
        if around is not None:
            fields.update(self._related(meta, deal, around))
        custom = deal.get("custom_fields")
        stamp_key = self._stamp_key(meta, required=False)
        stamp = None
        if not isinstance(custom, dict):
            bad("custom_fields is not an object")
            custom = {}
        for key, value in custom.items():
            f = meta.fields.get(key)
            if f is None:
                bad(f"custom field {key} is not a deal field")
                continue
            try:
                fields[key] = _custom_pull(meta, f, value)
            except ValueError as exc:
                bad(str(exc))
        if stamp_key is not None:
            stamp = custom.get(stamp_key)
            if not isinstance(stamp, str | None):
                bad(f"the stamp field holds {stamp!r}, not text")
                stamp = None
        if problems:
            raise SkippableRecord(ref, "; ".join(problems), connector=self.name, payload=deal)
        return RemoteRecord(
            ref=ref,
            version=_version(deal),
            fields=fields,
            updated_at=_time(deal.get("update_time")),
            updated_by=None,
            url=f"{self.config.base_url.rstrip('/')}/deal/{ref}",
            stamp=stamp or None,
            deleted=bool(deal.get("is_deleted")),
        )

    def _related(self, meta: _Meta, deal: Row, around: _Around) -> Row:
        """The fields a deal names by id: organization, stakeholders, activities."""
        fields: Row = {}
        org = around.orgs.get(deal.get("org_id") or 0)
        fields["organization"] = org.get("name") if org else None
        if self._people:
            role, attitude = self._people_fields(meta)
            stakeholders = []
            for pid in _people_of(deal, around.participants.get(deal.get("id") or 0, ())):
                person = around.persons.get(pid)
                if person is not None:
                    stakeholders.append(_stakeholder(person, role, attitude))
            fields["stakeholders"] = stakeholders
        if self.config.activities and around.activities is not None:
            acts = around.activities.get(deal.get("id") or 0, [])
            fields["actions"], fields["next_steps"] = _activities(meta, acts)
        return fields

    def _history_entry(self, meta: _Meta, item: Row) -> HistoryEntry | None:
        if item.get("object") != "dealChange":
            return None
        data = item.get("data") or {}
        key, old, new = data.get("field_key"), data.get("old_value"), data.get("new_value")
        at = _time(data.get("log_time") or item.get("timestamp"))
        if not isinstance(key, str) or at is None:
            return None
        actor = meta.user(data.get("user_id"))
        name = _FLOW_FIELDS.get(key, key)
        if key == "stage_id":
            old, new = (meta.stage_label(v) if v in meta.stages else v for v in (old, new))
        elif key == "owner_id":
            old, new = meta.user(old), meta.user(new)
        elif key == "pipeline_id":
            old, new = (meta.pipelines.get(v, v) if isinstance(v, int) else v for v in (old, new))
        elif key in meta.fields:
            f = meta.fields[key]
            with contextlib.suppress(ValueError):
                old, new = _custom_pull(meta, f, old), _custom_pull(meta, f, new)
        by = (actor or {}).get("email") or (str(data["user_id"]) if data.get("user_id") else None)
        return HistoryEntry(at, name, old, new, by)

    # ------------------------------------------------------------------ records -> deals

    def _body(self, meta: _Meta, fields: Mapping[str, Any], *, ref: str) -> Row:
        body: Row = {}
        custom: Row = {}
        problems: list[str] = []
        by_name = {f.name.casefold(): f for f in meta.fields.values()}
        for key, value in fields.items():
            if key in _PLAIN:
                body[key] = float(value) if isinstance(value, Decimal) else value
            elif key == "stage":
                stage_id = self._stage_id(meta, value)
                if stage_id is None:
                    problems.append(f"stage {value!r} is not a stage of a synced pipeline")
                else:
                    body["stage_id"] = stage_id
            elif key == "owner":
                owner = self._user_id(meta, value)
                if owner is None:
                    problems.append(f"owner {value!r} is not a Pipedrive user")
                else:
                    body["owner_id"] = owner
            elif key == "organization":
                body["org_id"] = self._organization(value) if value else None
            elif key in meta.fields or key.casefold() in by_name:
                f = meta.fields.get(key) or by_name[key.casefold()]
                try:
                    custom[f.code] = self._custom_push(meta, f, value)
                except ValueError as exc:
                    problems.append(str(exc))
            else:
                problems.append(f"{key!r} is not a field salesbridge can write in Pipedrive")
        if problems:
            raise SkippableRecord(
                ref, "; ".join(problems), connector=self.name, payload=dict(fields)
            )
        if custom:
            body["custom_fields"] = custom
        return body

    def _people_to_write(self, lists: dict[str, list[Row]], *, ref: str) -> list[Row] | None:
        """The stakeholders to write (taken out of ``lists``), or None when not written."""
        people = lists.pop("stakeholders", None)
        why = None
        if people is not None and not self._people:
            why = "stakeholders are not written: the connector's `persons` setting is off"
        elif people and len(people) > 1 and not self.config.participants:
            # Only the contact person would read back: the others would be lost in the hub.
            why = "only one stakeholder (the contact person) is kept: `participants` is off"
        if why is not None:
            raise SkippableRecord(ref, why, connector=self.name, payload={"stakeholders": people})
        return people

    def _resolve_people(
        self,
        meta: _Meta,
        deal: Row | None,
        parts: list[tuple[int, int]],
        wanted: list[Row],
        org_id: Any,
        *,
        ref: str,
    ) -> list[int]:
        """The person ids of ``wanted`` stakeholders, in order: the deal's people matched by
        e-mail then name, else persons found by e-mail (or by name in ``org_id``), else new
        persons in ``org_id``; those that differ are updated."""
        role, attitude = self._people_fields(meta)
        current = _people_of(deal or {}, parts)
        persons = self._by_ids("persons", current)
        free = [p for p in current if p in persons]
        chosen: list[int | None] = [None] * len(wanted)
        for same in (_same_email, _same_name):
            for i, item in enumerate(wanted):
                if chosen[i] is None:
                    pid = next((p for p in free if same(persons[p], item)), None)
                    if pid is not None:
                        chosen[i] = pid
                        free.remove(pid)
        for i, item in enumerate(wanted):
            if chosen[i] is None:
                pid = self._find_person(item, org_id)
                if pid is not None and pid not in chosen:
                    chosen[i] = pid
        persons.update(self._by_ids("persons", {p for p in chosen if p not in persons}))
        plans = []  # all checked before anything is written
        for pid, item in zip(chosen, wanted, strict=True):
            person = persons.get(pid) if pid is not None else None
            plans.append((pid, person, self._person_changes(role, attitude, item, person, ref=ref)))
        out: list[int] = []
        for pid, person, changes in plans:
            if person is None:
                changes["org_id"] = org_id if isinstance(org_id, int) else None
                created = self._send("POST", V2 + "persons", changes)
                pid = int(created["id"])
            elif changes and self._send("PATCH", f"{V2}persons/{pid}", changes) is None:
                raise StaleVersion(ref, None, None, connector=self.name)  # deleted meanwhile
            assert pid is not None
            if pid not in out:
                out.append(pid)
        return out

    def _find_person(self, item: Mapping[str, Any], org_id: Any) -> int | None:
        """A person for a stakeholder the deal does not have: by e-mail (exact), else, with no
        e-mail, by name in the deal's organization."""
        email, name = item.get("email"), str(item.get("name") or "").strip()
        if email:
            params: Row = {"term": email, "fields": "email", "exact_match": "true", "limit": 10}
            check = _same_email
        elif isinstance(org_id, int) and len(name) >= 2:
            params = {"term": name, "fields": "name", "exact_match": "true", "limit": 10}
            params["organization_id"] = org_id
            check = _same_name
        else:
            return None
        found = self._get(V2 + "persons/search", params) or {}
        for hit in found.get("items", ()):
            person = dict(hit.get("item") or {})
            person["emails"] = [{"value": e} for e in person.get("emails") or ()]
            if isinstance(person.get("id"), int) and check(person, item):
                return int(person["id"])
        return None

    def _person_changes(
        self,
        role: _Field | None,
        attitude: _Field | None,
        item: Mapping[str, Any],
        person: Row | None,
        *,
        ref: str,
    ) -> Row:
        """What to send so ``person`` (None: a new one) reads back as the stakeholder ``item``.
        A title or e-mail the stakeholder lacks is left as the person has it."""
        now = _stakeholder(person or {}, role, attitude)
        body: Row = {}
        if person is None or now["name"] != item["name"]:
            body["name"] = item["name"]
        if item.get("title") and now["title"] != item["title"]:
            body["job_title"] = item["title"]
        if item.get("email") and now["email"] != item["email"]:
            others = [
                {"value": e["value"], "primary": False, "label": e.get("label") or "work"}
                for e in (person or {}).get("emails") or ()
                if e.get("value") not in (now["email"], item["email"])
            ]
            body["emails"] = [{"value": item["email"], "primary": True, "label": "work"}, *others]
        custom: Row = {}
        for f, key, default in ((role, "role", "other"), (attitude, "attitude", "unknown")):
            if f is None or now[key] == item[key]:
                continue
            options = {_canonical(label): oid for oid, label in f.options.items()}
            if item[key] in options:
                custom[f.code] = options[item[key]]
            elif item[key] == default:
                custom[f.code] = None
            else:
                raise SkippableRecord(
                    ref,
                    f"person field {f.name!r} has no option for {key} {item[key]!r}",
                    connector=self.name,
                    payload=dict(item),
                )
        if custom:
            body["custom_fields"] = custom
        return body

    def _write_participants(
        self, deal_id: int, wanted: list[int], parts: list[tuple[int, int]]
    ) -> None:
        """Make the deal's participants besides the contact person (``wanted[0]``) read back
        as ``wanted[1:]``, in order."""
        primary = wanted[0] if wanted else None
        others = [(person, part) for part, person in sorted(parts) if person != primary]
        _keep, gone, new = reconcile(others, wanted[1:], key=lambda person: person)
        for part in gone:
            self._send("DELETE", f"{V1}deals/{deal_id}/participants/{part}")
        for person in new:
            self._send("POST", f"{V1}deals/{deal_id}/participants", {"person_id": person})

    def _write_activities(
        self, meta: _Meta, deal_id: int, lists: Mapping[str, list[Row]], *, ref: str
    ) -> None:
        """Make the deal's undone (next steps) and done (actions) activities read back as
        ``lists`` say, in their order."""
        acts = [a for page in self._list("activities", {"deal_id": deal_id}) for a in page]
        acts = sorted((a for a in acts if not a.get("is_deleted")), key=lambda a: a.get("id") or 0)
        for key, done in (("next_steps", False), ("actions", True)):
            if key not in lists:
                continue
            mine = [a for a in acts if bool(a.get("done")) == done]
            items = to_json_value(key, [_activity(meta, a) for a in mine])
            now = {a["id"]: item for a, item in zip(mine, items, strict=True)}
            current = [(item_key(now[a["id"]]), a) for a in mine]
            keep, gone, new = reconcile(current, lists[key], key=item_key)
            for a in gone:
                self._send("DELETE", f"{V2}activities/{a['id']}")
            for a, item in keep:
                if now[a["id"]] != item:
                    self._send(
                        "PATCH", f"{V2}activities/{a['id']}", self._activity_body(meta, item, a)
                    )
            for item in new:
                body = {"deal_id": deal_id, **self._activity_body(meta, item, None)}
                if self._send("POST", V2 + "activities", body) is None:
                    raise StaleVersion(ref, None, None, connector=self.name)

    def _activity_body(self, meta: _Meta, item: Mapping[str, Any], old: Row | None) -> Row:
        """An activity's fields for a next step (``owner``) or an action (``at``)."""
        if "at" in item:
            who: Any = item.get("by")
            marker: Row = {"at": item["at"], "by": item.get("by")}
            body: Row = {"subject": item["what"], "done": True}
            if old is None:
                body["due_date"] = str(item["at"])[:10]
        else:
            who = (item.get("owner") or {}).get("email")
            marker = {"owner": item.get("owner")}
            body = {"subject": item["what"], "due_date": item.get("due"), "done": False}
        owner = self._user_id(meta, who) if isinstance(who, str) else None
        if owner is None:
            owner = self._my_id(meta)
        body["owner_id"] = owner
        body["note"] = with_marker((old or {}).get("note"), {**marker, "as": owner})
        return body

    def _my_id(self, meta: _Meta) -> int | None:
        with self._lock:
            if not hasattr(self, "_me"):
                me = self._get(V1 + "users/me") or {}
                self._me: int | None = me.get("id") if isinstance(me.get("id"), int) else None
            return self._me

    def _stage_id(self, meta: _Meta, label: Any) -> int | None:
        if not isinstance(label, str):
            return None
        pipelines = set(self._pipeline_ids(meta))
        wanted = label.casefold()
        for sid, (pid, _name) in meta.stages.items():
            if pid in pipelines and meta.stage_label(sid).casefold() == wanted:
                return sid
        plain = [
            s for s, (p, n) in meta.stages.items() if p in pipelines and n.casefold() == wanted
        ]
        return plain[0] if len(plain) == 1 else None

    def _user_id(self, meta: _Meta, user: Any) -> int | None:
        if isinstance(user, Mapping):
            uid, email = user.get("id"), user.get("email")
        else:
            uid, email = None, user
        if uid is not None and str(uid).isdigit() and int(uid) in meta.users:
            return int(uid)
        if isinstance(email, str):
            for u in meta.users.values():
                if str(u.get("email", "")).casefold() == email.casefold():
                    return int(u["id"])
        return None

    def _organization(self, name: Any) -> int:
        """The id of the organization named ``name``, created if Pipedrive has none."""
        text = str(name).strip()
        params = {"term": text, "fields": "name", "exact_match": "true", "limit": 10}
        found = self._get(V2 + "organizations/search", params) if len(text) >= 2 else None
        for item in (found or {}).get("items", ()):
            org = item.get("item") or {}
            if str(org.get("name", "")).casefold() == text.casefold():
                return int(org["id"])
        created = self._send("POST", V2 + "organizations", {"name": text})
        return int(created["id"])

    def _custom_push(self, meta: _Meta, f: _Field, value: Any) -> Any:
        if value is None:
            return None
        by_label = {label.casefold(): oid for oid, label in f.options.items()}
        if f.type == "enum":
            oid = by_label.get(str(value).casefold())
            if oid is None:
                raise ValueError(f"{f.name}: {value!r} is not one of its options")
            return oid
        if f.type == "set":
            labels = value if isinstance(value, list) else [value]
            ids = [by_label.get(str(v).casefold()) for v in labels]
            if None in ids:
                raise ValueError(f"{f.name}: {value!r} holds values that are not its options")
            return ids or None  # Pipedrive refuses [] for a set: null clears it
        if f.type == "user":
            uid = self._user_id(meta, value)
            if uid is None:
                raise ValueError(f"{f.name}: {value!r} is not a Pipedrive user")
            return uid
        if f.type == "monetary":
            return {"value": float(value), "currency": None}
        return float(value) if isinstance(value, Decimal) else value


# --------------------------------------------------------------------------- helpers


def _custom_pull(meta: _Meta, f: _Field, value: Any) -> Any:
    if value is None:
        return None
    if f.type == "enum":
        if value not in f.options:
            raise ValueError(f"{f.name}: option id {value!r} no longer exists")
        return f.options[value]
    if f.type == "set":
        ids = value if isinstance(value, list) else [value]
        missing = [i for i in ids if i not in f.options]
        if missing:
            raise ValueError(f"{f.name}: option id(s) {missing} no longer exist")
        return [f.options[i] for i in ids]
    if f.type == "user":
        return meta.user(value)
    if f.type == "monetary" and isinstance(value, dict):
        return value.get("value")
    return value


@dataclass(frozen=True)
class _Around:
    """What a batch of deals names by id: organizations and persons by id, participants
    ((participant id, person id), in order) and activities by deal."""

    orgs: Mapping[int, Row]
    persons: Mapping[int, Row]
    participants: Mapping[int, list[tuple[int, int]]]
    activities: Mapping[int, list[Row]] | None


class _Deferred(Mapping[str, Any]):
    """A record's fields: the deal's own at hand, the ``later`` ones read on first use.
    Copied or pickled, it is the complete dict."""

    def __init__(self, now: Mapping[str, Any], later: frozenset[str], load: Callable[[], Row]):
        self._now = {k: v for k, v in now.items() if k not in later}
        self._later = later
        self._load = load
        self._all: Row | None = None
        self._lock = threading.Lock()

    def _complete(self) -> Row:
        with self._lock:
            if self._all is None:
                self._all = {**self._now, **self._load()}
            return self._all

    def __getitem__(self, key: str) -> Any:
        if key in self._now:
            return self._now[key]
        return self._complete()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._complete())

    def __len__(self) -> int:
        return len(self._complete())

    def __repr__(self) -> str:
        return repr(self._all if self._all is not None else {**self._now, "...": "deferred"})

    def __deepcopy__(self, memo: dict[int, Any]) -> Row:
        return copy.deepcopy(self._complete(), memo)

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (self._complete(),))


def _has_others(deal: Row) -> bool:
    """Whether a deal may have participants besides its contact person (who counts in
    ``participants_count``); unknown without the count."""
    count = deal.get("participants_count")
    if not isinstance(count, int):
        return True
    return count > (1 if deal.get("person_id") else 0)


def _people_of(deal: Row, participants: Iterable[tuple[int, int]]) -> list[int]:
    """Person ids of a deal's people: the contact person, then the other participants."""
    out: list[int] = []
    for pid in [deal.get("person_id"), *(p for _, p in participants)]:
        if isinstance(pid, int) and pid not in out:
            out.append(pid)
    return out


def _named(fields: Mapping[str, _Field], name: str) -> _Field | None:
    """A custom field by code, or by name (any case)."""
    if name in fields:
        return fields[name]
    return next((f for f in fields.values() if f.name.casefold() == name.casefold()), None)


_ROLES = frozenset(r.value for r in StakeholderRole)
_ATTITUDES = frozenset(a.value for a in Attitude)


def _canonical(label: str) -> str:
    """An option label as a canonical value: "Economic buyer" -> "economic_buyer"."""
    return re.sub(r"[\s_-]+", "_", label.strip().casefold())


def _option_value(person: Row, f: _Field | None, allowed: frozenset[str], default: str) -> str:
    if f is None:
        return default
    custom = person.get("custom_fields")
    value = custom.get(f.code) if isinstance(custom, dict) else None
    label = f.options.get(value) if isinstance(value, int) else None
    found = _canonical(label) if label else default
    return found if found in allowed else default


def _primary_email(person: Row) -> str | None:
    emails = [e for e in person.get("emails") or () if isinstance(e, dict) and e.get("value")]
    primary = next((e for e in emails if e.get("primary")), emails[0] if emails else None)
    return str(primary["value"]) if primary else None


def _stakeholder(person: Row, role: _Field | None, attitude: _Field | None) -> Row:
    return {
        "name": person.get("name") or "",
        "title": person.get("job_title") or None,
        "role": _option_value(person, role, _ROLES, "other"),
        "attitude": _option_value(person, attitude, _ATTITUDES, "unknown"),
        "email": _primary_email(person),
    }


def _activities(meta: _Meta, acts: list[Row]) -> tuple[list[Row], list[Row]]:
    """(actions, next steps), each in the order the activities were added."""
    done: list[Row] = []
    todo: list[Row] = []
    for a in sorted(acts, key=lambda a: a.get("id") or 0):
        if a.get("is_deleted"):
            continue
        (done if a.get("done") else todo).append(_activity(meta, a))
    return done, todo


def _activity(meta: _Meta, a: Row) -> Row:
    """An activity as an action (done) or a next step; the note's marker stands while the
    activity keeps the owner the bridge gave it."""
    marker = read_marker(a.get("note"))
    same = "as" in marker and marker["as"] == a.get("owner_id")
    owner = meta.user(a.get("owner_id"))
    if a.get("done"):
        if "at" in marker:
            at_text = marker["at"]
        else:
            at = _time(a.get("marked_as_done_time") or a.get("update_time"))
            at_text = at.isoformat().replace("+00:00", "Z") if at else None
        by = marker.get("by") if same and "at" in marker else (owner or {}).get("email")
        return {"what": a.get("subject") or "", "at": at_text, "by": by}
    if same and "owner" in marker:
        person = marker["owner"]
    else:
        person = {"name": owner["name"], "email": owner["email"]} if owner else None
    return {"what": a.get("subject") or "", "owner": person, "due": a.get("due_date") or None}


_LISTS = ("next_steps", "actions")


def _split(
    fields: Mapping[str, Any], *, ref: str, connector: str
) -> tuple[Row, dict[str, list[Row]]]:
    """(deal fields, activity lists and stakeholders in canonical form)."""
    plain = {k: v for k, v in fields.items() if k not in (*_LISTS, "stakeholders")}
    lists: dict[str, list[Row]] = {}
    for key in (*_LISTS, "stakeholders"):
        if key in fields:
            try:
                lists[key] = to_json_value(key, fields[key] or [])
            except ValidationError as exc:
                raise SkippableRecord(
                    ref,
                    f"{key}: not a list of {key}: {exc.errors()[0]['msg']}",
                    connector=connector,
                    payload=dict(fields),
                ) from None
    return plain, lists


def _same_email(person: Row, item: Mapping[str, Any]) -> bool:
    email = str(item.get("email") or "").casefold()
    values = (str(e.get("value") or "").casefold() for e in person.get("emails") or ())
    return bool(email) and email in values


def _same_name(person: Row, item: Mapping[str, Any]) -> bool:
    name = str(item.get("name") or "").strip().casefold()
    return bool(name) and str(person.get("name") or "").strip().casefold() == name


def _digest(deal: Row) -> str:
    """A short hash of what the connector reads from a deal."""
    data = {k: deal.get(k) for k in _VERSIONED}
    digest = hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode())  # noqa: S324
    return digest.hexdigest()[:12]


def _version(deal: Row) -> str:
    return f"{deal.get('update_time')}#{_digest(deal)}"


def _time(value: Any) -> datetime | None:
    """A Pipedrive time (v2 RFC 3339, or v1 ``YYYY-MM-DD HH:MM:SS`` in UTC) as UTC."""
    if not isinstance(value, str) or not value:
        return None
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC)


def _rfc3339(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _deal_id(ref: str) -> int | None:
    return int(ref) if ref.isdigit() else None


def _format_position(at: datetime, seen: set[tuple[Any, str]]) -> str:
    """``<time>|<id>:<digest>,...``: the time read up to and the deals read at that time."""
    read = ",".join(sorted(f"{i}:{v}" for i, v in seen))
    return f"{at.isoformat()}|{read}"


def _position(value: str | None, name: str) -> tuple[datetime | None, set[tuple[Any, str]]]:
    if value is None:
        return None, set()
    text, _, read = value.partition("|")
    at = _time(text)
    if at is None:
        raise FatalError(f"cursor position {value!r} is not a Pipedrive cursor", connector=name)
    seen: set[tuple[Any, str]] = set()
    for item in filter(None, read.split(",")):
        deal_id, _, version = item.partition(":")
        seen.add((int(deal_id) if deal_id.isdigit() else deal_id, version))
    return at, seen
