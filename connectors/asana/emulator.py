"""An Asana emulator: the REST API subset the connector uses, served on 127.0.0.1.

It holds workspaces, users, projects, sections, custom fields (text, number, date, enum,
multi-enum, people) with their project settings, tasks with subtasks and stories, and answers:

* reads with ``opt_fields`` (nested paths such as ``memberships.section.name``), offset
  pagination (``limit`` 1..100, opaque ``offset`` tokens, ``next_page``) and ``modified_since``;
* writes: create/update/delete tasks, add a task to a section, subtasks, comments, custom
  field values by gid (enum options by gid, dates as ``{"date": ...}``, people by gid);
* ``GET /events`` with sync tokens: a missing, unknown or expired token answers 412 with a
  fresh token; 100 events per call with ``has_more``;
* webhooks: creation performs the ``X-Hook-Secret`` handshake against the target; deliveries
  (:meth:`AsanaEmulator.deliver_webhooks`) carry an HMAC-SHA256 ``X-Hook-Signature``;
* ``POST /batch`` (at most 10 actions, each run as its own request without re-authenticating);
* bearer personal access tokens (401 otherwise); 429/5xx through the shared
  :class:`~bridge.emulator.Controls`.

Responses are validated against the official OpenAPI description in the tests. Like the live
service, the emulator sends ``null`` for empty references (``assignee``, ``parent``,
``enum_value``), which the description marks nullable through ``allOf``. Two places where the
live service sends ``null`` but the description does not allow it follow the description: an
event without a parent omits ``parent``, a date custom field without a time omits
``date_value.date_time``. Errors have Asana's ``{"errors": [{"message", "help"}]}`` shape.

State lives in memory; every change goes through one lock. Server time is real UTC time with
millisecond resolution, bumped so that it never repeats: ``modified_at`` orders changes.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import itertools
import json
import re
import secrets
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from bridge.emulator import Authenticator, Controls, Emulator

__all__ = ["ApiError", "AsanaEmulator", "AsanaState", "asana_error_body"]

Json = dict[str, Any]
MAX_LIMIT = 100
MAX_BATCH = 10
EVENTS_PAGE = 100
HELP = "For more information on API status codes and how to handle them, read the docs on errors: https://developers.asana.com/docs/errors"
_MS = timedelta(milliseconds=1)


def asana_error_body(status: int, message: str) -> tuple[bytes, str]:
    """An injected error the way Asana words errors."""
    return json.dumps({"errors": [{"message": message, "help": HELP}]}).encode(), "application/json"


def iso(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def parse_time(text: str) -> datetime:
    at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return at if at.tzinfo else at.replace(tzinfo=UTC)


class ApiError(Exception):
    """An error response: status, message and extra top-level keys (the 412's ``sync``)."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra

    def body(self) -> Json:
        return {"errors": [{"message": self.message, "help": HELP}], **self.extra}


@dataclass
class _Token:
    resource: str
    seq: int
    issued: datetime


@dataclass
class _Webhook:
    gid: str
    resource: str
    target: str
    secret: str
    active: bool = True
    created_at: str = ""


@dataclass
class _Delivery:
    target: str
    secret: str
    body: bytes


@dataclass
class _Event:
    seq: int
    subscribers: frozenset[str]
    data: Json


@dataclass
class Query:
    """A request as a handler sees it."""

    params: Mapping[str, str]
    body: Json
    user: str
    path: str = ""

    def fields(self) -> list[str] | None:
        raw = self.params.get("opt_fields")
        return [f.strip() for f in raw.split(",") if f.strip()] if raw else None


Handler = Callable[[Query, tuple[str, ...]], "Json | tuple[int, Json]"]


class AsanaState:
    """The data of one emulated Asana domain, and the API over it (without HTTP)."""

    def __init__(
        self,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        token_ttl: timedelta = timedelta(hours=24),
    ) -> None:
        self.clock = clock
        self.token_ttl = token_ttl
        self.lock = threading.RLock()
        self._ids = itertools.count(1_200_000_000_000_001)
        self._last = datetime(2000, 1, 1, tzinfo=UTC)
        self.users: dict[str, Json] = {}
        self.workspaces: dict[str, Json] = {}
        self.teams: dict[str, Json] = {}
        self.projects: dict[str, Json] = {}
        self.sections: dict[str, Json] = {}
        self.custom_fields: dict[str, Json] = {}
        self.tasks: dict[str, Json] = {}
        self.stories: dict[str, Json] = {}
        self.webhooks: dict[str, _Webhook] = {}
        self.events: list[_Event] = []
        self.tokens: dict[str, _Token] = {}
        self.deliveries: list[_Delivery] = []
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self._route_table()

    # ------------------------------------------------------------------ bookkeeping

    def gid(self) -> str:
        return str(next(self._ids))

    def now(self) -> str:
        """Server time that never repeats (millisecond resolution, as Asana's)."""
        at = self.clock().astimezone(UTC)
        at = at.replace(microsecond=at.microsecond // 1000 * 1000)
        if at <= self._last:
            at = self._last + _MS
        self._last = at
        return iso(at)

    # ------------------------------------------------------------------ seeding helpers

    def add_user(self, name: str, email: str, gid: str | None = None) -> str:
        with self.lock:
            gid = gid or self.gid()
            self.users[gid] = {"gid": gid, "name": name, "email": email}
            for ws in self.workspaces.values():
                ws["users"].append(gid)
            return gid

    def add_workspace(self, name: str, gid: str | None = None) -> str:
        with self.lock:
            gid = gid or self.gid()
            self.workspaces[gid] = {"gid": gid, "name": name, "users": list(self.users)}
            return gid

    def add_team(self, workspace: str, name: str, gid: str | None = None) -> str:
        with self.lock:
            gid = gid or self.gid()
            self.teams[gid] = {"gid": gid, "name": name, "workspace": workspace}
            return gid

    def add_project(
        self, workspace: str, name: str, gid: str | None = None, *, team: str | None = None
    ) -> str:
        with self.lock:
            gid = gid or self.gid()
            now = self.now()
            self.projects[gid] = {
                "gid": gid,
                "name": name,
                "workspace": workspace,
                "team": team,
                "owner": None,
                "due_on": None,
                "start_on": None,
                "completed": False,
                "completed_at": None,
                "created_at": now,
                "modified_at": now,
                "archived": False,
                "notes": "",
                "settings": [],
                "sections": [],
                "tasks": [],
                "values": {},
            }
            return gid

    def add_section(self, project: str, name: str) -> str:
        with self.lock:
            gid = self.gid()
            self.sections[gid] = {
                "gid": gid,
                "name": name,
                "project": project,
                "created_at": self.now(),
            }
            self.projects[project]["sections"].append(gid)
            return gid

    def add_custom_field(
        self,
        workspace: str,
        name: str,
        type: str,
        *,
        options: Iterable[str] = (),
        precision: int = 2,
        projects: Iterable[str] = (),
    ) -> str:
        if type not in ("text", "number", "date", "enum", "multi_enum", "people"):
            raise ValueError(f"unsupported custom field type {type!r}")
        with self.lock:
            gid = self.gid()
            self.custom_fields[gid] = {
                "gid": gid,
                "name": name,
                "type": type,
                "workspace": workspace,
                "precision": precision,
                "options": [
                    {"gid": self.gid(), "name": o, "enabled": True, "color": "none"}
                    for o in options
                ],
            }
            for p in projects:
                self.projects[p]["settings"].append(gid)
            return gid

    def option_gid(self, field_gid: str, name: str) -> str:
        for o in self.custom_fields[field_gid]["options"]:
            if o["name"] == name:
                return str(o["gid"])
        raise KeyError(name)

    def field_gid(self, name: str) -> str:
        for gid, f in self.custom_fields.items():
            if f["name"] == name:
                return gid
        raise KeyError(name)

    def section_gid(self, project: str, name: str) -> str:
        for gid in self.projects[project]["sections"]:
            if self.sections[gid]["name"] == name:
                return str(gid)
        raise KeyError(name)

    # ------------------------------------------------------------------ dispatch

    def _route_table(self) -> None:
        r = self.routes
        g = r"(\d+|me)"
        table: list[tuple[str, str, Handler]] = [
            ("GET", "/users/me", self.get_me),
            ("GET", f"/users/{g}", self.get_user),
            ("GET", "/users", self.list_users),
            ("GET", f"/workspaces/{g}/users", self.list_users),
            ("GET", "/workspaces", self.list_workspaces),
            ("GET", f"/workspaces/{g}", self.get_workspace),
            ("GET", "/projects", self.list_projects),
            ("GET", f"/teams/{g}", self.get_team),
            ("GET", f"/teams/{g}/projects", self.list_team_projects),
            ("GET", f"/workspaces/{g}/projects", self.list_projects),
            ("POST", "/projects", self.create_project),
            ("GET", f"/projects/{g}", self.get_project),
            ("PUT", f"/projects/{g}", self.update_project),
            ("GET", f"/projects/{g}/sections", self.list_sections),
            ("POST", f"/projects/{g}/sections", self.create_section),
            ("GET", f"/sections/{g}", self.get_section),
            ("POST", f"/sections/{g}/addTask", self.add_task_to_section),
            ("GET", f"/projects/{g}/custom_field_settings", self.list_settings),
            ("POST", f"/projects/{g}/addCustomFieldSetting", self.add_setting),
            ("GET", f"/workspaces/{g}/custom_fields", self.list_custom_fields),
            ("POST", "/custom_fields", self.create_custom_field),
            ("GET", f"/custom_fields/{g}", self.get_custom_field),
            ("GET", "/tasks", self.list_tasks),
            ("POST", "/tasks", self.create_task),
            ("GET", f"/projects/{g}/tasks", self.list_tasks),
            ("GET", f"/sections/{g}/tasks", self.list_tasks),
            ("GET", f"/tasks/{g}", self.get_task),
            ("PUT", f"/tasks/{g}", self.update_task),
            ("DELETE", f"/tasks/{g}", self.delete_task),
            ("GET", f"/tasks/{g}/subtasks", self.list_subtasks),
            ("POST", f"/tasks/{g}/subtasks", self.create_subtask),
            ("GET", f"/tasks/{g}/stories", self.list_stories),
            ("POST", f"/tasks/{g}/stories", self.create_story),
            ("GET", "/events", self.get_events),
            ("GET", "/webhooks", self.list_webhooks),
            ("POST", "/webhooks", self.create_webhook),
            ("GET", f"/webhooks/{g}", self.get_webhook),
            ("DELETE", f"/webhooks/{g}", self.delete_webhook),
            ("POST", "/batch", self.batch),
        ]
        for method, pattern, handler in table:
            r.append((method, re.compile(f"^{pattern}$"), handler))

    def handle(
        self, method: str, path: str, params: Mapping[str, str], body: Any, user: str
    ) -> tuple[int, Json]:
        """Answer one request (path relative to ``/api/1.0``): (status, JSON body)."""
        known = False
        for m, pattern, handler in self.routes:
            match = pattern.match(path)
            if match is None:
                continue
            known = True
            if m != method:
                continue
            groups = tuple(user if x == "me" else x for x in match.groups())
            data = body.get("data", {}) if isinstance(body, dict) else {}
            try:
                with self.lock:
                    out = handler(
                        Query(params, data if isinstance(data, dict) else {}, user, path), groups
                    )
            except ApiError as exc:
                return exc.status, exc.body()
            return out if isinstance(out, tuple) else (200, out)
        if known:
            return 405, ApiError(405, f"{method} is not allowed on {path}").body()
        return 404, ApiError(404, f"No matching route for request: {method} {path}").body()

    # ------------------------------------------------------------------ output helpers

    def _need(self, table: dict[str, Json], gid: str, what: str) -> Json:
        item = table.get(gid)
        if item is None or item.get("deleted"):
            raise ApiError(404, f"{what}: Unknown object: {gid}")
        return item

    def _user_out(self, gid: str | None, q: Query | None = None) -> Json | None:
        if gid is None or gid not in self.users:
            return None
        u = self.users[gid]
        return {
            "gid": gid,
            "resource_type": "user",
            "name": u["name"],
            "email": u["email"],
            "workspaces": [self._ws_compact(w) for w in self.workspaces],
        }

    def _ws_compact(self, gid: str) -> Json:
        return {"gid": gid, "resource_type": "workspace", "name": self.workspaces[gid]["name"]}

    def _project_compact(self, gid: str) -> Json:
        return {"gid": gid, "resource_type": "project", "name": self.projects[gid]["name"]}

    def _section_compact(self, gid: str) -> Json:
        return {"gid": gid, "resource_type": "section", "name": self.sections[gid]["name"]}

    def _field_def(self, gid: str) -> Json:
        f = self.custom_fields[gid]
        out: Json = {
            "gid": gid,
            "resource_type": "custom_field",
            "name": f["name"],
            "type": f["type"],
            "resource_subtype": f["type"],
            "representation_type": f["type"],
            "enabled": True,
            "is_formula_field": False,
            "description": "",
        }
        if f["type"] in ("enum", "multi_enum"):
            out["enum_options"] = [self._option(o) for o in f["options"]]
        if f["type"] == "number":
            out["precision"] = f["precision"]
        return out

    @staticmethod
    def _option(o: Json) -> Json:
        return {
            "gid": o["gid"],
            "resource_type": "enum_option",
            **{k: o[k] for k in ("name", "enabled", "color")},
        }

    def _field_value(self, gid: str, value: Any) -> Json:
        f = self.custom_fields[gid]
        out = self._field_def(gid)
        kind = f["type"]
        display: str | None = None
        if kind == "text":
            out["text_value"] = value
            display = value
        elif kind == "number":
            out["number_value"] = value
            display = None if value is None else f"{value:.{f['precision']}f}"
        elif kind == "date":
            out["date_value"] = None if value is None else {"date": value}
            display = value
        elif kind == "enum":
            opt = next((o for o in f["options"] if o["gid"] == value), None)
            out["enum_value"] = None if opt is None else self._option(opt)
            display = None if opt is None else opt["name"]
        elif kind == "multi_enum":
            opts = [o for o in f["options"] if o["gid"] in (value or [])]
            out["multi_enum_values"] = [self._option(o) for o in opts]
            display = ", ".join(o["name"] for o in opts) or None
        elif kind == "people":
            people = [self._user_out(u) for u in value or [] if u in self.users]
            out["people_value"] = people
            display = ", ".join(str(p["name"]) for p in people if p) or None
        out["display_value"] = display
        return out

    def _task_full(self, gid: str) -> Json:
        t = self.tasks[gid]
        memberships = [
            {
                "project": self._project_compact(p),
                "section": self._section_compact(s) if s else None,
            }
            for p, s in t["memberships"]
        ]
        settings: list[str] = []
        for p, _ in t["memberships"]:
            settings += [f for f in self.projects[p]["settings"] if f not in settings]
        settings += [f for f in t["values"] if f not in settings]
        parent = self.tasks.get(t["parent"]) if t["parent"] else None
        return {
            "gid": gid,
            "resource_type": "task",
            "resource_subtype": "default_task",
            "name": t["name"],
            "notes": t["notes"],
            "completed": t["completed"],
            "completed_at": t["completed_at"],
            "created_at": t["created_at"],
            "modified_at": t["modified_at"],
            "due_on": t["due_on"],
            "due_at": None,
            "start_on": t["start_on"],
            "assignee": self._user_out(t["assignee"]),
            "custom_fields": [self._field_value(f, t["values"].get(f)) for f in settings],
            "memberships": memberships,
            "projects": [self._project_compact(p) for p, _ in t["memberships"]],
            "parent": None
            if parent is None
            else {"gid": parent["gid"], "resource_type": "task", "name": parent["name"]},
            "num_subtasks": len(self._live_subtasks(gid)),
            "workspace": self._ws_compact(t["workspace"]),
            "permalink_url": f"https://app.asana.com/0/0/{gid}",
            "tags": [],
            "followers": [],
        }

    def _live_subtasks(self, gid: str) -> list[str]:
        return [s for s in self.tasks[gid]["subtasks"] if not self.tasks[s].get("deleted")]

    def _story_full(self, gid: str) -> Json:
        s = self.stories[gid]
        return {
            "gid": gid,
            "resource_type": "story",
            "resource_subtype": "comment_added",
            "type": "comment",
            "text": s["text"],
            "created_at": s["created_at"],
            "created_by": self._user_out(s["created_by"]),
            "target": {
                "gid": s["task"],
                "resource_type": "task",
                "name": self.tasks[s["task"]]["name"],
            },
        }

    def _team_compact(self, gid: str) -> Json:
        return {"gid": gid, "resource_type": "team", "name": self.teams[gid]["name"]}

    def _project_full(self, gid: str) -> Json:
        p = self.projects[gid]
        out: Json = {
            "gid": gid,
            "resource_type": "project",
            "name": p["name"],
            "notes": p["notes"],
            "archived": p["archived"],
            "completed": p.get("completed", False),
            "completed_at": p.get("completed_at"),
            "due_on": p.get("due_on"),
            "start_on": p.get("start_on"),
            "owner": self._user_out(p.get("owner")),
            "created_at": p["created_at"],
            "modified_at": p["modified_at"],
            "workspace": self._ws_compact(p["workspace"]),
            "custom_fields": [self._field_value(f, p["values"].get(f)) for f in p["settings"]],
            "custom_field_settings": [self._setting(gid, f) for f in p["settings"]],
            "permalink_url": f"https://app.asana.com/0/{gid}/list",
        }
        if p.get("team"):
            out["team"] = self._team_compact(p["team"])
        return out

    def _setting(self, project: str, field_gid: str) -> Json:
        return {
            "gid": f"{project}{field_gid[-6:]}",
            "resource_type": "custom_field_setting",
            "custom_field": self._field_def(field_gid),
            "project": self._project_compact(project),
            "is_important": True,
        }

    @staticmethod
    def _compact(full: Json) -> Json:
        keep = ("gid", "resource_type", "name", "resource_subtype")
        return {k: full[k] for k in keep if k in full}

    def _shape(self, full: Json, q: Query, *, single: bool) -> Json:
        """``opt_fields`` applied: the gid plus the requested (nested) fields."""
        fields = q.fields()
        if fields is None:
            return full if single else self._compact(full)
        shaped: Json = _project_fields(full, fields)
        return shaped

    def _page(self, items: list[Json], q: Query) -> Json:
        """Offset pagination over already-shaped items."""
        limit_text = q.params.get("limit")
        start = 0
        if "offset" in q.params:
            start = _decode_offset(q.params["offset"], q.path)
        if limit_text is None:
            return {"data": items[start:]}
        try:
            limit = int(limit_text)
        except ValueError:
            raise ApiError(400, "limit: Not a valid integer") from None
        if not 1 <= limit <= MAX_LIMIT:
            raise ApiError(400, f"limit: Must be between 1 and {MAX_LIMIT}, got {limit}")
        chunk = items[start : start + limit]
        next_page = None
        if start + limit < len(items):
            token = _encode_offset(start + limit, q.path)
            rest = "&".join(f"{k}={v}" for k, v in q.params.items() if k != "offset")
            path = f"{q.path}?{rest}&offset={token}" if rest else f"{q.path}?offset={token}"
            next_page = {
                "offset": token,
                "path": path,
                "uri": f"https://app.asana.com/api/1.0{path}",
            }
        return {"data": chunk, "next_page": next_page}

    # ------------------------------------------------------------------ events

    def _emit(
        self,
        resource: Json,
        action: str,
        user: str | None,
        *,
        subscribers: Iterable[str],
        parent: Json | None = None,
        change: Json | None = None,
    ) -> None:
        data: Json = {
            "user": None
            if user is None
            else {"gid": user, "resource_type": "user", "name": self.users[user]["name"]},
            "resource": resource,
            "type": resource["resource_type"],
            "action": action,
            "created_at": self.now(),
        }
        if parent is not None:  # the description does not let parent be null
            data["parent"] = parent
        if change is not None:
            data["change"] = change
        subs = frozenset(subscribers)
        self.events.append(_Event(len(self.events) + 1, subs, data))
        for hook in self.webhooks.values():
            if hook.active and hook.resource in subs:
                body = json.dumps({"events": [_webhook_event(data)]}).encode()
                self.deliveries.append(_Delivery(hook.target, hook.secret, body))

    def _task_subscribers(self, gid: str) -> set[str]:
        t = self.tasks[gid]
        subs = {gid, t["workspace"]}
        subs |= {p for p, _ in t["memberships"]}
        if t["parent"]:
            subs |= self._task_subscribers(t["parent"])
        return subs

    def _task_ref(self, gid: str) -> Json:
        t = self.tasks[gid]
        return {
            "gid": gid,
            "resource_type": "task",
            "resource_subtype": "default_task",
            "name": t["name"],
        }

    def _touch_task(self, gid: str, user: str | None, changed: Iterable[str]) -> None:
        t = self.tasks[gid]
        t["modified_at"] = self.now()
        for name in changed:
            self._emit(
                self._task_ref(gid),
                "changed",
                user,
                subscribers=self._task_subscribers(gid),
                change={"field": name, "action": "changed"},
            )

    def _issue_token(self, resource: str) -> str:
        token = secrets.token_hex(16)
        self.tokens[token] = _Token(resource, len(self.events), self.clock())
        return token

    def get_events(self, q: Query, _: tuple[str, ...]) -> Json | tuple[int, Json]:
        resource = q.params.get("resource")
        if not resource:
            raise ApiError(400, "resource: Missing input")
        known = (
            resource in self.projects
            or resource in self.workspaces
            or (resource in self.tasks and not self.tasks[resource].get("deleted"))
        )
        if not known:
            raise ApiError(404, f"resource: Unknown object: {resource}")
        token = self.tokens.get(q.params.get("sync", ""))
        if (
            token is None
            or token.resource != resource
            or self.clock() - token.issued > self.token_ttl
        ):
            message = (
                "Sync token invalid or too old. If you are attempting to keep resources in sync, "
                "you must fetch the full dataset for this query now and use the new sync token "
                "for the next sync."
            )
            raise ApiError(412, message, sync=self._issue_token(resource))
        found = [e for e in self.events[token.seq :] if resource in e.subscribers]
        page = found[:EVENTS_PAGE]
        has_more = len(found) > EVENTS_PAGE
        seq = page[-1].seq if has_more else len(self.events)
        fresh = secrets.token_hex(16)
        self.tokens[fresh] = _Token(resource, seq, self.clock())
        data = [_project_fields(e.data, q.fields()) if q.fields() else e.data for e in page]
        return {"data": copy.deepcopy(data), "sync": fresh, "has_more": has_more}

    def expire_sync_tokens(self) -> None:
        """Make every sync token issued so far unknown (as after Asana's 24 hours)."""
        with self.lock:
            self.tokens.clear()

    # ------------------------------------------------------------------ users, workspaces

    def get_me(self, q: Query, g: tuple[str, ...]) -> Json:
        return {"data": self._shape(self._user_out(q.user) or {}, q, single=True)}

    def get_user(self, q: Query, g: tuple[str, ...]) -> Json:
        self._need(self.users, g[0], "user")
        return {"data": self._shape(self._user_out(g[0]) or {}, q, single=True)}

    def list_users(self, q: Query, g: tuple[str, ...]) -> Json:
        ws = g[0] if g else q.params.get("workspace")
        if ws is None:
            raise ApiError(400, "workspace: Missing input")
        members = self._need(self.workspaces, ws, "workspace")["users"]
        return self._page(
            [self._shape(self._user_out(u) or {}, q, single=False) for u in members], q
        )

    def list_workspaces(self, q: Query, _: tuple[str, ...]) -> Json:
        return self._page(
            [
                self._shape({**self._ws_compact(w), "is_organization": False}, q, single=False)
                for w in self.workspaces
            ],
            q,
        )

    def get_workspace(self, q: Query, g: tuple[str, ...]) -> Json:
        self._need(self.workspaces, g[0], "workspace")
        full = {**self._ws_compact(g[0]), "is_organization": False, "email_domains": []}
        return {"data": self._shape(full, q, single=True)}

    # ------------------------------------------------------------------ projects, sections, fields

    def list_projects(self, q: Query, g: tuple[str, ...]) -> Json:
        ws = g[0] if g else q.params.get("workspace")
        team = q.params.get("team")
        if team is not None:
            self._need(self.teams, team, "team")
        archived = q.params.get("archived")
        items = [
            self._shape(self._project_full(p), q, single=False)
            for p, v in self.projects.items()
            if (ws is None or v["workspace"] == ws)
            and (team is None or v.get("team") == team)
            and (archived is None or str(v["archived"]).lower() == archived.lower())
            and not v.get("deleted")
        ]
        return self._page(items, q)

    def get_team(self, q: Query, g: tuple[str, ...]) -> Json:
        t = self._need(self.teams, g[0], "team")
        full = {**self._team_compact(g[0]), "organization": self._ws_compact(t["workspace"])}
        return {"data": self._shape(full, q, single=True)}

    def list_team_projects(self, q: Query, g: tuple[str, ...]) -> Json:
        self._need(self.teams, g[0], "team")
        return self.list_projects(Query({**q.params, "team": g[0]}, q.body, q.user, q.path), ())

    def get_project(self, q: Query, g: tuple[str, ...]) -> Json:
        self._need(self.projects, g[0], "project")
        return {"data": self._shape(self._project_full(g[0]), q, single=True)}

    def create_project(self, q: Query, _: tuple[str, ...]) -> tuple[int, Json]:
        ws = q.body.get("workspace")
        if not ws or ws not in self.workspaces:
            raise ApiError(400, "workspace: Missing input")
        team = q.body.get("team")
        if team is not None and (team not in self.teams or self.teams[team]["workspace"] != ws):
            raise ApiError(400, f"team: Unknown object: {team}")
        gid = self.add_project(ws, str(q.body.get("name", "")), team=team)
        self._write_project(gid, q)
        return 201, {"data": self._shape(self._project_full(gid), q, single=True)}

    def update_project(self, q: Query, g: tuple[str, ...]) -> Json:
        self._need(self.projects, g[0], "project")
        self._write_project(g[0], q)
        return {"data": self._shape(self._project_full(g[0]), q, single=True)}

    def _write_project(self, gid: str, q: Query) -> None:
        p = self.projects[gid]
        for key in ("name", "notes", "archived"):
            if key in q.body:
                p[key] = q.body[key]
        for key in ("due_on", "start_on"):
            if key in q.body:
                value = q.body[key]
                if value is not None and not _is_date(value):
                    raise ApiError(400, f"{key}: Not a valid date: {value!r}")
                p[key] = value
        if "owner" in q.body:
            p["owner"] = self._user_ref(q.body["owner"], q.user, "owner")
        if "completed" in q.body:
            done = bool(q.body["completed"])
            if done != p.get("completed"):
                p["completed_at"] = self.now() if done else None
            p["completed"] = done
        if "custom_fields" in q.body:
            p["values"].update(self._field_values(q.body["custom_fields"], p["settings"]))
        p["modified_at"] = self.now()
        self._emit(self._project_compact(gid), "changed", q.user, subscribers={gid, p["workspace"]})

    def list_sections(self, q: Query, g: tuple[str, ...]) -> Json:
        p = self._need(self.projects, g[0], "project")
        items = [
            self._shape(
                {
                    **self._section_compact(s),
                    "project": self._project_compact(g[0]),
                    "created_at": self.sections[s]["created_at"],
                },
                q,
                single=False,
            )
            for s in p["sections"]
        ]
        return self._page(items, q)

    def get_section(self, q: Query, g: tuple[str, ...]) -> Json:
        s = self._need(self.sections, g[0], "section")
        full = {
            **self._section_compact(g[0]),
            "project": self._project_compact(s["project"]),
            "created_at": s["created_at"],
        }
        return {"data": self._shape(full, q, single=True)}

    def create_section(self, q: Query, g: tuple[str, ...]) -> tuple[int, Json]:
        self._need(self.projects, g[0], "project")
        name = q.body.get("name")
        if not isinstance(name, str) or not name:
            raise ApiError(400, "name: Missing input")
        gid = self.add_section(g[0], name)
        self._emit(
            self._section_compact(gid),
            "added",
            q.user,
            subscribers={g[0]},
            parent=self._project_compact(g[0]),
        )
        return 201, {"data": {**self._section_compact(gid), "project": self._project_compact(g[0])}}

    def add_task_to_section(self, q: Query, g: tuple[str, ...]) -> Json:
        s = self._need(self.sections, g[0], "section")
        task = q.body.get("task")
        if not isinstance(task, str):
            raise ApiError(400, "task: Missing input")
        t = self._need(self.tasks, task, "task")
        project = s["project"]
        others = [(p, x) for p, x in t["memberships"] if p != project]
        before = dict(t["memberships"]).get(project)
        t["memberships"] = [*others, (project, g[0])]
        if before != g[0]:
            t["modified_at"] = self.now()
            self._emit(
                self._task_ref(task),
                "added",
                q.user,
                subscribers=self._task_subscribers(task),
                parent=self._section_compact(g[0]),
            )
        return {"data": {}}

    def list_settings(self, q: Query, g: tuple[str, ...]) -> Json:
        p = self._need(self.projects, g[0], "project")
        return self._page(
            [self._shape(self._setting(g[0], f), q, single=True) for f in p["settings"]], q
        )

    def add_setting(self, q: Query, g: tuple[str, ...]) -> Json:
        p = self._need(self.projects, g[0], "project")
        f = q.body.get("custom_field")
        if not isinstance(f, str) or f not in self.custom_fields:
            raise ApiError(400, "custom_field: Unknown object")
        if f not in p["settings"]:
            p["settings"].append(f)
        return {"data": self._setting(g[0], f)}

    def list_custom_fields(self, q: Query, g: tuple[str, ...]) -> Json:
        self._need(self.workspaces, g[0], "workspace")
        items = [
            self._shape(self._field_def(f), q, single=True)
            for f, v in self.custom_fields.items()
            if v["workspace"] == g[0]
        ]
        return self._page(items, q)

    def get_custom_field(self, q: Query, g: tuple[str, ...]) -> Json:
        self._need(self.custom_fields, g[0], "custom_field")
        return {"data": self._shape(self._field_def(g[0]), q, single=True)}

    def create_custom_field(self, q: Query, _: tuple[str, ...]) -> tuple[int, Json]:
        b = q.body
        ws = b.get("workspace")
        if ws not in self.workspaces:
            raise ApiError(400, "workspace: Missing input")
        kind = b.get("resource_subtype") or b.get("type")
        if kind not in ("text", "number", "date", "enum", "multi_enum", "people"):
            raise ApiError(400, f"resource_subtype: Invalid value {kind!r}")
        options = [o.get("name", "") for o in b.get("enum_options", []) if isinstance(o, dict)]
        gid = self.add_custom_field(
            ws, str(b.get("name", "")), kind, options=options, precision=int(b.get("precision", 2))
        )
        return 201, {"data": self._field_def(gid)}

    # ------------------------------------------------------------------ tasks

    def list_tasks(self, q: Query, g: tuple[str, ...]) -> Json:
        params = dict(q.params)
        if q.path.startswith("/projects/"):
            params["project"] = g[0]
        elif q.path.startswith("/sections/"):
            params["section"] = g[0]
        project, section = params.get("project"), params.get("section")
        if (
            project is None
            and section is None
            and not ("assignee" in params and "workspace" in params)
        ):
            raise ApiError(
                400,
                "Must specify exactly one of project, tag, section, user task list, "
                "or assignee + workspace",
            )
        if project is not None:
            gids = list(self._need(self.projects, project, "project")["tasks"])
        elif section is not None:
            s = self._need(self.sections, section, "section")
            gids = [
                t
                for t in self.projects[s["project"]]["tasks"]
                if dict(self.tasks[t]["memberships"]).get(s["project"]) == section
            ]
        else:
            who = params["assignee"]
            gids = [
                t
                for t, v in self.tasks.items()
                if v["assignee"] == (q.user if who == "me" else who)
                and v["workspace"] == params["workspace"]
            ]
        since = params.get("modified_since")
        cutoff = _time_param(since, "modified_since") if since else None
        completed_since = params.get("completed_since")
        done_cut = (
            _time_param(completed_since, "completed_since")
            if completed_since and completed_since != "now"
            else None
        )
        items = []
        for t in gids:
            v = self.tasks[t]
            if v.get("deleted"):
                continue
            if cutoff is not None and parse_time(v["modified_at"]) < cutoff:
                continue
            if completed_since == "now" and v["completed"]:
                continue
            if done_cut is not None and v["completed"] and parse_time(v["completed_at"]) < done_cut:
                continue
            items.append(self._shape(self._task_full(t), q, single=False))
        return self._page(items, q)

    def get_task(self, q: Query, g: tuple[str, ...]) -> Json:
        self._need(self.tasks, g[0], "task")
        return {"data": self._shape(self._task_full(g[0]), q, single=True)}

    def create_task(
        self, q: Query, g: tuple[str, ...], *, parent: str | None = None
    ) -> tuple[int, Json]:
        b = q.body
        projects = b.get("projects") or []
        memberships = b.get("memberships") or []
        if isinstance(projects, str):
            projects = [projects]
        ws = b.get("workspace")
        pairs: list[tuple[str, str | None]] = []
        for p in projects:
            self._need(self.projects, p, "projects")
            pairs.append((p, None))
        for m in memberships:
            p, s = m.get("project"), m.get("section")
            self._need(self.projects, p, "memberships.project")
            if s is not None and self.sections.get(s, {}).get("project") != p:
                raise ApiError(400, f"memberships.section: {s} is not a section of project {p}")
            pairs = [x for x in pairs if x[0] != p] + [(p, s)]
        if parent is not None:
            ws = self.tasks[parent]["workspace"]
        elif pairs:
            ws = ws or self.projects[pairs[0][0]]["workspace"]
        if ws not in self.workspaces:
            raise ApiError(
                400, "workspace: Missing input; specify a workspace, projects or a parent"
            )
        # A task added to a project without a section lands in the project's first section.
        pairs = [(p, s if s else (self.projects[p]["sections"] or [None])[0]) for p, s in pairs]
        gid = self.gid()
        now = self.now()
        self.tasks[gid] = {
            "gid": gid,
            "name": "",
            "notes": "",
            "completed": False,
            "completed_at": None,
            "created_at": now,
            "modified_at": now,
            "due_on": None,
            "start_on": None,
            "assignee": None,
            "values": {},
            "memberships": pairs,
            "parent": parent,
            "subtasks": [],
            "stories": [],
            "workspace": ws,
        }
        for p, _ in pairs:
            self.projects[p]["tasks"].append(gid)
        if parent is not None:
            self.tasks[parent]["subtasks"].append(gid)
        try:
            self._write_task(gid, b, q.user, emit=False)
        except ApiError:
            self._drop_task(gid)
            raise
        for p, _ in pairs:
            self._emit(
                self._task_ref(gid),
                "added",
                q.user,
                subscribers=self._task_subscribers(gid),
                parent=self._project_compact(p),
            )
        if parent is not None:
            self._emit(
                self._task_ref(gid),
                "added",
                q.user,
                subscribers=self._task_subscribers(gid),
                parent=self._task_ref(parent),
            )
        return 201, {"data": self._shape(self._task_full(gid), q, single=True)}

    def _drop_task(self, gid: str) -> None:
        t = self.tasks.pop(gid)
        for p, _ in t["memberships"]:
            self.projects[p]["tasks"].remove(gid)
        if t["parent"]:
            self.tasks[t["parent"]]["subtasks"].remove(gid)

    def update_task(self, q: Query, g: tuple[str, ...]) -> Json:
        self._need(self.tasks, g[0], "task")
        self._write_task(g[0], q.body, q.user, emit=True)
        return {"data": self._shape(self._task_full(g[0]), q, single=True)}

    def _write_task(self, gid: str, b: Json, user: str, *, emit: bool) -> None:
        t = self.tasks[gid]
        new: Json = {}
        for key in ("name", "notes"):
            if key in b:
                if not isinstance(b[key], str):
                    raise ApiError(400, f"{key}: Not a string")
                new[key] = b[key]
        if "completed" in b:
            if not isinstance(b["completed"], bool):
                raise ApiError(400, "completed: Not a boolean")
            new["completed"] = b["completed"]
        for key in ("due_on", "start_on"):
            if key in b:
                value = b[key]
                if value is not None and not _is_date(value):
                    raise ApiError(400, f"{key}: Invalid date: {value!r}")
                new[key] = value
        if "assignee" in b:
            new["assignee"] = self._user_ref(b["assignee"], user, "assignee")
        settings: list[str] = []
        for p, _ in t["memberships"]:
            settings += self.projects[p]["settings"]
        values = self._field_values(
            b.get("custom_fields") or {}, settings if t["memberships"] else list(self.custom_fields)
        )
        changed = [k for k, v in new.items() if t[k] != v]
        changed += [
            self.custom_fields[f]["name"] for f, v in values.items() if t["values"].get(f) != v
        ]
        t.update(new)
        t["values"].update(values)
        if "completed" in new:
            t["completed_at"] = self.now() if new["completed"] else None
        if changed or not emit:
            t["modified_at"] = self.now()
        if emit and changed:
            self._touch_task(gid, user, changed)

    def _user_ref(self, value: Any, me: str, what: str) -> str | None:
        if value is None:
            return None
        if value == "me":
            return me
        if isinstance(value, str):
            if value in self.users:
                return value
            for gid, u in self.users.items():
                if u["email"].lower() == value.lower():
                    return gid
        raise ApiError(400, f"{what}: Not a recognized ID or email: {value!r}")

    def _field_values(self, raw: Any, allowed: list[str]) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise ApiError(400, "custom_fields: Must be an object")
        out: dict[str, Any] = {}
        for gid, value in raw.items():
            f = self.custom_fields.get(gid)
            if f is None or gid not in allowed:
                raise ApiError(
                    400, f"custom_fields: Custom field with ID {gid} is not on given object"
                )
            kind = f["type"]
            if value is None:
                out[gid] = [] if kind in ("multi_enum", "people") else None
            elif kind == "text":
                if not isinstance(value, str):
                    raise ApiError(400, f"custom_fields: text value for {gid} must be a string")
                out[gid] = value
            elif kind == "number":
                if isinstance(value, bool) or not isinstance(value, int | float | str):
                    raise ApiError(400, f"custom_fields: number value for {gid} must be a number")
                try:
                    out[gid] = round(float(value), f["precision"])
                except ValueError:
                    raise ApiError(400, f"custom_fields: {value!r} is not a number") from None
            elif kind == "date":
                date = value.get("date") if isinstance(value, dict) else None
                if not _is_date(date):
                    raise ApiError(
                        400, f'custom_fields: date value for {gid} must be {{"date": "YYYY-MM-DD"}}'
                    )
                out[gid] = date
            elif kind == "enum":
                if value not in {o["gid"] for o in f["options"]}:
                    raise ApiError(
                        400, f"custom_fields: enum option {value!r} is not an option of {gid}"
                    )
                out[gid] = value
            elif kind == "multi_enum":
                gids = {o["gid"] for o in f["options"]}
                if not isinstance(value, list) or not set(value) <= gids:
                    raise ApiError(400, f"custom_fields: {value!r} are not options of {gid}")
                out[gid] = list(value)
            elif kind == "people":
                if not isinstance(value, list) or not all(v in self.users for v in value):
                    raise ApiError(400, f"custom_fields: {value!r} are not user gids")
                out[gid] = list(value)
        return out

    def delete_task(self, q: Query, g: tuple[str, ...]) -> Json:
        t = self._need(self.tasks, g[0], "task")
        subs = self._task_subscribers(g[0])
        t["deleted"] = True
        t["modified_at"] = self.now()
        self._emit(self._task_ref(g[0]), "deleted", q.user, subscribers=subs)
        return {"data": {}}

    def list_subtasks(self, q: Query, g: tuple[str, ...]) -> Json:
        self._need(self.tasks, g[0], "task")
        return self._page(
            [self._shape(self._task_full(s), q, single=False) for s in self._live_subtasks(g[0])], q
        )

    def create_subtask(self, q: Query, g: tuple[str, ...]) -> tuple[int, Json]:
        self._need(self.tasks, g[0], "task")
        body = {k: v for k, v in q.body.items() if k not in ("projects", "memberships")}
        return self.create_task(Query(q.params, body, q.user, q.path), (), parent=g[0])

    def list_stories(self, q: Query, g: tuple[str, ...]) -> Json:
        t = self._need(self.tasks, g[0], "task")
        return self._page(
            [self._shape(self._story_full(s), q, single=False) for s in t["stories"]], q
        )

    def create_story(self, q: Query, g: tuple[str, ...]) -> tuple[int, Json]:
        t = self._need(self.tasks, g[0], "task")
        text = q.body.get("text")
        if not isinstance(text, str) or not text:
            raise ApiError(400, "text: Missing input")
        gid = self.gid()
        self.stories[gid] = {
            "gid": gid,
            "task": g[0],
            "text": text,
            "created_at": self.now(),
            "created_by": q.user,
        }
        t["stories"].append(gid)
        t["modified_at"] = self.now()  # adding a story modifies the task (Asana's docs)
        self._emit(
            {"gid": gid, "resource_type": "story", "resource_subtype": "comment_added"},
            "added",
            q.user,
            subscribers=self._task_subscribers(g[0]),
            parent=self._task_ref(g[0]),
        )
        return 201, {"data": self._shape(self._story_full(gid), q, single=True)}

    # ------------------------------------------------------------------ webhooks

    def _webhook_out(self, hook: _Webhook) -> Json:
        r = hook.resource
        name = (self.projects.get(r) or self.tasks.get(r) or self.workspaces.get(r) or {}).get(
            "name", ""
        )
        kind = "project" if r in self.projects else "task" if r in self.tasks else "workspace"
        return {
            "gid": hook.gid,
            "resource_type": "webhook",
            "active": hook.active,
            "resource": {"gid": r, "resource_type": kind, "name": name},
            "target": hook.target,
            "created_at": hook.created_at,
            "last_success_at": None,
            "last_failure_at": None,
            "last_failure_content": "",
        }

    def create_webhook(self, q: Query, _: tuple[str, ...]) -> tuple[int, Json]:
        resource, target = q.body.get("resource"), q.body.get("target")
        if resource not in self.projects and resource not in self.tasks:
            raise ApiError(400, "resource: Unknown object")
        if not isinstance(target, str) or not target.startswith(
            ("https://", "http://127.0.0.1", "http://localhost")
        ):
            raise ApiError(400, "target: must be an https URL")
        secret = secrets.token_hex(32)
        self.lock.release()  # the handshake calls out; do not hold the data while waiting
        try:
            echoed = _handshake(target, secret)
        finally:
            self.lock.acquire()
        if echoed != secret:
            raise ApiError(400, "The remote server did not respond with the handshake secret")
        hook = _Webhook(self.gid(), resource, target, secret, created_at=self.now())
        self.webhooks[hook.gid] = hook
        return 201, {"data": self._webhook_out(hook), "X-Hook-Secret": secret}

    def list_webhooks(self, q: Query, _: tuple[str, ...]) -> Json:
        return self._page([self._webhook_out(h) for h in self.webhooks.values()], q)

    def get_webhook(self, q: Query, g: tuple[str, ...]) -> Json:
        hook = self.webhooks.get(g[0])
        if hook is None:
            raise ApiError(404, f"webhook: Unknown object: {g[0]}")
        return {"data": self._webhook_out(hook)}

    def delete_webhook(self, q: Query, g: tuple[str, ...]) -> Json:
        if self.webhooks.pop(g[0], None) is None:
            raise ApiError(404, f"webhook: Unknown object: {g[0]}")
        return {"data": {}}

    # ------------------------------------------------------------------ batch

    def batch(self, q: Query, _: tuple[str, ...]) -> Json:
        actions = q.body.get("actions")
        if not isinstance(actions, list) or not actions:
            raise ApiError(400, "actions: Missing input")
        if len(actions) > MAX_BATCH:
            raise ApiError(400, f"actions: At most {MAX_BATCH} actions are allowed in a batch")
        out = []
        for action in actions:
            path = str(action.get("relative_path", ""))
            method = str(action.get("method", "get")).upper()
            data = action.get("data") or {}
            options = action.get("options") or {}
            params: dict[str, str] = {}
            body: Json = {}
            if method == "GET":
                params = {k: str(v) for k, v in data.items()}
            else:
                body = {"data": data}
            if options.get("fields"):
                params["opt_fields"] = ",".join(options["fields"])
            for key in ("limit", "offset"):
                if key in options:
                    params[key] = str(options[key])
            status, result = self.handle(method, path, params, body, q.user)
            out.append({"status_code": status, "headers": {}, "body": result})
        return {"data": out}


# ----------------------------------------------------------------------------- helpers


def _project_fields(full: Any, fields: list[str] | None) -> Any:
    """The ``opt_fields`` view of ``full``: gid plus each dotted path (lists map over items)."""
    if fields is None or not isinstance(full, dict):
        return full
    tree: dict[str, Any] = {}
    for f in fields:
        node = tree
        for part in f.split("."):
            node = node.setdefault(part, {})
    return _select(full, tree)


def _select(value: Any, tree: dict[str, Any]) -> Any:
    if isinstance(value, list):
        return [_select(v, tree) for v in value]
    if not isinstance(value, dict) or not tree:
        return (
            value
            if not isinstance(value, dict)
            else {"gid": value["gid"]}
            if "gid" in value
            else value
        )
    out = {"gid": value["gid"]} if "gid" in value else {}
    for key, sub in tree.items():
        if key in value:
            out[key] = _select(value[key], sub) if sub else _compact_ref(value[key])
    return out


def _compact_ref(value: Any) -> Any:
    """A nested resource named without sub-fields comes back compact, as Asana does."""
    if isinstance(value, list):
        return [_compact_ref(v) for v in value]
    if isinstance(value, dict) and "resource_type" in value:
        keep = ("gid", "resource_type", "name", "resource_subtype")
        return {k: value[k] for k in keep if k in value}
    return value


def _encode_offset(index: int, path: str) -> str:
    raw = json.dumps({"i": index, "p": hashlib.sha1(path.encode()).hexdigest()[:8]})  # noqa: S324
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_offset(token: str, path: str) -> int:
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        index = int(raw["i"])
        same = raw["p"] == hashlib.sha1(path.encode()).hexdigest()[:8]  # noqa: S324
    except (ValueError, KeyError, TypeError):
        raise ApiError(400, "offset: Your pagination token is invalid") from None
    if not same or index < 0:
        raise ApiError(400, "offset: Your pagination token is invalid for this request")
    return index


def _time_param(value: str, name: str) -> datetime:
    try:
        return parse_time(value)
    except ValueError:
        raise ApiError(400, f"{name}: Invalid date-time: {value!r}") from None


def _is_date(value: Any) -> bool:
    return isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value) is not None


def _webhook_event(data: Json) -> Json:
    """Webhook events name resources compactly: gid and resource_type only."""
    out = dict(data)
    for key in ("resource", "parent", "user"):
        if isinstance(out.get(key), dict):
            out[key] = {k: out[key][k] for k in ("gid", "resource_type") if k in out[key]}
    return out


def _handshake(target: str, secret: str) -> str | None:
    request = urllib.request.Request(  # noqa: S310 - targets are checked above
        target, data=b"", method="POST", headers={"X-Hook-Secret": secret}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            value: str | None = response.headers.get("X-Hook-Secret")
            return value
    except (urllib.error.URLError, OSError):
        return None


def sign(secret: str, body: bytes) -> str:
    """The ``X-Hook-Signature`` of a webhook delivery."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# ----------------------------------------------------------------------------- the server


@dataclass
class _Seed:
    workspace: str = ""
    project: str = ""
    me: str = ""
    extra: dict[str, str] = field(default_factory=dict)


class AsanaEmulator(Emulator):
    """The Asana API on a real HTTP server under ``/api/1.0``.

    ``tokens`` maps personal access tokens to user gids; :meth:`revoke` makes one fail with
    401. ``state`` is the data; tests edit it through :meth:`as_user` requests or directly.
    """

    name = "asana"

    def __init__(
        self,
        state: AsanaState | None = None,
        *,
        tokens: Mapping[str, str] | None = None,
        controls: Controls | None = None,
    ) -> None:
        super().__init__(controls=controls or Controls(error_body=asana_error_body))
        self.state = state or AsanaState()
        self.auth: Authenticator[str] = Authenticator(bearer=dict(tokens or {}))

    @property
    def api_url(self) -> str:
        """The base URL clients use (``https://app.asana.com/api/1.0`` in production)."""
        return f"{self.base_url}/api/1.0"

    def add_token(self, token: str, user: str) -> None:
        self.auth.bearer[token] = user

    def revoke(self, token: str) -> None:
        self.auth.bearer.pop(token, None)

    def request(
        self,
        method: str,
        path: str,
        *,
        user: str,
        params: Mapping[str, str] | None = None,
        data: Any = None,
    ) -> Json:
        """Make a change (or read) as ``user`` in process, as a person would in Asana's UI."""
        status, body = self.state.handle(
            method, path, dict(params or {}), {"data": data or {}}, user
        )
        if status >= 400:
            raise ApiError(status, body["errors"][0]["message"])
        return body

    def deliver_webhooks(self) -> int:
        """POST every pending webhook delivery (signed); return how many were sent."""
        with self.state.lock:
            pending, self.state.deliveries = self.state.deliveries, []
        for d in pending:
            headers = {
                "X-Hook-Signature": sign(d.secret, d.body),
                "Content-Type": "application/json",
            }
            request = urllib.request.Request(d.target, data=d.body, method="POST", headers=headers)  # noqa: S310
            try:
                with urllib.request.urlopen(request, timeout=10):  # noqa: S310
                    pass
            except (urllib.error.URLError, OSError):
                continue
        return len(pending)

    def build_app(self) -> ASGIApp:
        emulator = self

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                return
            request = Request(scope, receive)
            path = request.url.path
            if not path.startswith("/api/1.0/"):
                response = _json(404, ApiError(404, "Not found").body())
            else:
                user = emulator.auth.authenticate(request)
                if user is None:
                    response = _json(401, ApiError(401, "Not Authorized").body())
                else:
                    raw = await request.body()
                    try:
                        body = json.loads(raw) if raw else {}
                    except ValueError:
                        body = None
                    if body is None:
                        response = _json(
                            400, ApiError(400, "Could not parse request data, invalid JSON").body()
                        )
                    else:
                        params = dict(request.query_params)
                        status, out = await run_in_threadpool(
                            emulator.state.handle,
                            request.method,
                            path[len("/api/1.0") :],
                            params,
                            body,
                            user,
                        )
                        response = _json(status, out)
            await response(scope, receive, send)

        return app


def _json(status: int, body: Json) -> Response:
    return Response(
        json.dumps(body, ensure_ascii=False).encode(),
        status_code=status,
        media_type="application/json; charset=UTF-8",
    )
