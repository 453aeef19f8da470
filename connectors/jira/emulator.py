"""A Jira that behaves like Jira, for tests, the demo and ops rehearsals.

Two deployments, as the connector meets them:

* ``mode="cloud"``: ``deploymentType: Cloud``, REST v3 and v2, users by ``accountId``, rich text
  as ADF in v3 (plain text in v2), search through ``/search/jql`` with ``nextPageToken`` (the old
  ``/search`` answers 410 Gone, as Cloud does since 2025);
* ``mode="dc"``: ``deploymentType: Server`` (Data Center 9.x), REST v2 only, users by
  ``name``, plain-text descriptions, search through ``/search`` with ``startAt``/``total``.

Behaviour worth knowing, because real Jira does it too: datetimes are written
``2026-01-31T09:15:00.000+0800`` in the *requesting user's* time zone, and JQL dates
(``"2026/01/31 09:15"``, ``"2026-01-31"``, ``-5m``) are read in that zone with minute precision;
``=`` is refused on text fields (use ``~``); ``!=`` and ``NOT IN`` never match an empty field;
Cloud refuses unbounded searches; every write stamps ``updated`` from the server clock and
appends a changelog entry (a comment bumps ``updated`` without one); transitions follow the
project's workflow, and a required field on a transition screen must be filled. A change of a
sub-task stamps the sub-task's ``updated``, never its parent's; ``issuetype in
subTaskIssueTypes()`` / ``standardIssueTypes()`` select by kind of issue type (the first is an
error while the site has no sub-task type, as where sub-tasks are disabled).

The state lives in memory and is driven two ways: over HTTP by the connector or the ``jira``
package, and through the Python API (``add_issue``, ``edit_issue``, ``transition``) for the
edits people make in Jira behind the bridge's back. ``connectors.jira.seed`` fills it with the
DevLake sample issues or generated sales projects.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import json
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal
from zoneinfo import ZoneInfo

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from bridge.emulator import Authenticator, Controls, Emulator

__all__ = [
    "CUSTOM_KINDS",
    "JiraEmulator",
    "JiraError",
    "JiraUser",
    "JqlError",
    "Transition",
    "Workflow",
    "format_jira_time",
    "parse_jira_time",
]

Mode = Literal["cloud", "dc"]
Json = dict[str, Any]
Clock = Callable[[], datetime]

BASE = "@@jira-base@@"
"""Stands for the server's base URL in stored JSON; replaced when a response is written."""

_PLUGIN = "com.atlassian.jira.plugin.system.customfieldtypes:"
CUSTOM_KINDS: Mapping[str, tuple[str, str, str | None]] = MappingProxyType(
    {
        # kind: (schema type, schema custom key, items)
        "text": ("string", _PLUGIN + "textfield", None),
        "textarea": ("string", _PLUGIN + "textarea", None),
        "number": ("number", _PLUGIN + "float", None),
        "date": ("date", _PLUGIN + "datepicker", None),
        "datetime": ("datetime", _PLUGIN + "datetime", None),
        "select": ("option", _PLUGIN + "select", None),
        "multiselect": ("array", _PLUGIN + "multiselect", "option"),
        "user": ("user", _PLUGIN + "userpicker", None),
        "labels": ("array", _PLUGIN + "labels", "string"),
        "url": ("string", _PLUGIN + "url", None),
    }
)
"""Custom field kinds the emulator validates, with the schema Jira reports for each."""

_CATEGORIES = {
    "new": {"id": 2, "key": "new", "colorName": "blue-gray", "name": "To Do"},
    "indeterminate": {
        "id": 4,
        "key": "indeterminate",
        "colorName": "yellow",
        "name": "In Progress",
    },
    "done": {"id": 3, "key": "done", "colorName": "green", "name": "Done"},
}
_NOT_ON_SCREEN = "Field '{}' cannot be set. It is not on the appropriate screen, or unknown."
_NO_ISSUE = "Issue does not exist or you do not have permission to see it."
_ADF_ERROR = "Operation value must be an Atlassian Document (see the Atlassian Document Format)"


# --------------------------------------------------------------------------- time


def format_jira_time(at: datetime, tz: str | ZoneInfo = "UTC") -> str:
    """``2026-01-31T09:15:00.000+0800``: how Jira writes a datetime, in zone ``tz``."""
    zone = tz if isinstance(tz, ZoneInfo) else ZoneInfo(tz)
    local = at.astimezone(zone)
    return (
        local.strftime("%Y-%m-%dT%H:%M:%S.")
        + f"{local.microsecond // 1000:03d}"
        + (local.strftime("%z"))
    )


def parse_jira_time(text: str) -> datetime:
    """The aware datetime of a Jira timestamp (``+0800``, ``+08:00`` and ``Z`` all accepted)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _parsed(value: Any) -> datetime | None:
    """A stored timestamp, or None if it is not one (a deliberately malformed record)."""
    try:
        return parse_jira_time(str(value))
    except ValueError:
        return None


def _retime(value: str, tz: str) -> str:
    """A stored timestamp shown in zone ``tz``; anything unparsable is shown as stored."""
    at = _parsed(value)
    return value if at is None else format_jira_time(at, tz)


def _system_now() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- rich text


def text_to_adf(text: str | None) -> Json | None:
    """What Jira Cloud's v3 API shows for plain text: one paragraph per blank-line block."""
    if text is None:
        return None
    content = []
    for block in re.split(r"\n{2,}", text):
        if not block:
            continue
        nodes: list[Json] = []
        for i, line in enumerate(block.split("\n")):
            if i:
                nodes.append({"type": "hardBreak"})
            if line:
                nodes.append({"type": "text", "text": line})
        content.append({"type": "paragraph", "content": nodes})
    return {"type": "doc", "version": 1, "content": content}


def adf_to_text(doc: Any) -> str | None:
    """The plain text of an ADF document (what Cloud's v2 API shows for it)."""
    if doc is None or isinstance(doc, str):
        return doc

    def walk(node: Any) -> str:
        if not isinstance(node, dict):
            return ""
        kind = node.get("type")
        if kind == "text":
            return str(node.get("text", ""))
        if kind == "hardBreak":
            return "\n"
        if kind == "mention":
            return str((node.get("attrs") or {}).get("text", ""))
        inner = "".join(walk(c) for c in node.get("content") or [])
        if kind in ("paragraph", "heading", "codeBlock", "blockquote", "listItem", "rule"):
            return inner + "\n\n"
        return inner

    return walk(doc).strip("\n")


def _is_adf(value: Any) -> bool:
    return isinstance(value, dict) and value.get("type") == "doc" and "content" in value


# --------------------------------------------------------------------------- errors


class JiraError(Exception):
    """A request Jira refuses: ``status`` with Jira's ``errorMessages`` and ``errors``."""

    def __init__(
        self,
        status: int,
        messages: Sequence[str] = (),
        errors: Mapping[str, str] | None = None,
    ) -> None:
        self.status = status
        self.messages = list(messages)
        self.errors = dict(errors or {})
        super().__init__(
            "; ".join([*self.messages, *(f"{k}: {v}" for k, v in self.errors.items())])
        )

    def body(self) -> Json:
        return {"errorMessages": self.messages, "errors": self.errors}


class JqlError(JiraError):
    def __init__(self, message: str) -> None:
        super().__init__(400, [message])


# --------------------------------------------------------------------------- directory types


@dataclass
class JiraUser:
    """A person or bot. ``username`` is the Data Center ``name`` (defaults to the account id)."""

    account_id: str
    display_name: str
    email: str | None = None
    username: str | None = None
    time_zone: str = "UTC"
    active: bool = True

    @property
    def name(self) -> str:
        return self.username or self.account_id

    def json(self, mode: Mode) -> Json:
        avatars = {
            size: f"{BASE}/secure/useravatar?size={size}&ownerId={self.name}"
            for size in ("48x48", "24x24", "16x16", "32x32")
        }
        if mode == "cloud":
            out: Json = {
                "self": f"{BASE}/rest/api/2/user?accountId={self.account_id}",
                "accountId": self.account_id,
                "accountType": "atlassian",
            }
        else:
            out = {
                "self": f"{BASE}/rest/api/2/user?username={self.name}",
                "name": self.name,
                "key": self.name,
            }
        if self.email:
            out["emailAddress"] = self.email
        out.update(
            avatarUrls=avatars,
            displayName=self.display_name,
            active=self.active,
            timeZone=self.time_zone,
        )
        return out


@dataclass(frozen=True)
class Transition:
    """A workflow transition to status ``to`` from ``sources`` (empty: from every status).

    ``screen`` lists the fields (ids or names) its screen shows; ``required`` those that must
    hold a value once the transition's own field values are applied.
    """

    id: str
    name: str
    to: str
    sources: tuple[str, ...] = ()
    screen: tuple[str, ...] = ()
    required: tuple[str, ...] = ()


@dataclass
class Workflow:
    """The statuses (by name) an issue moves through and the transitions between them."""

    name: str
    statuses: list[str]
    transitions: list[Transition]

    @property
    def initial(self) -> str:
        return self.statuses[0]

    def available(self, status: str) -> list[Transition]:
        return [t for t in self.transitions if not t.sources or status in t.sources]

    @classmethod
    def simplified(cls, name: str, statuses: Sequence[str]) -> Workflow:
        """Jira's "simplified workflow": every status reachable from every other."""
        return cls(
            name,
            list(statuses),
            [Transition(str(11 + 10 * i), s, s) for i, s in enumerate(statuses)],
        )


@dataclass
class _Project:
    raw: Json
    issue_types: list[str]
    workflow: Workflow
    screen: tuple[str, ...] | None
    required: tuple[str, ...]
    next_number: int = 1
    type_workflows: dict[str, Workflow] = field(default_factory=dict)
    """Issue type id -> its own workflow (sub-task types usually have one); else ``workflow``."""

    @property
    def key(self) -> str:
        return str(self.raw["key"])


@dataclass
class _Issue:
    id: str
    key: str
    fields: Json
    histories: list[Json] = field(default_factory=list)
    comments: list[Json] = field(default_factory=list)

    @property
    def number(self) -> int:
        return int(self.key.rpartition("-")[2])


@dataclass(frozen=True)
class _Grant:
    user: JiraUser
    write: bool


# --------------------------------------------------------------------------- emulator


class JiraEmulator(Emulator):
    """An in-memory Jira site served over HTTP; see the module docstring.

    ``users`` are the site's people (the first one owns ``token``); ``token`` is accepted as
    ``Authorization: Bearer <token>`` and as the password of HTTP basic auth (with the user's
    e-mail on Cloud, username on DC). :meth:`add_token` adds more, e.g. a read-only one.
    ``clock`` is the server clock (timezone-aware); ``server_time_zone`` the site's zone.
    """

    name = "jira"

    def __init__(
        self,
        mode: Mode = "cloud",
        *,
        clock: Clock = _system_now,
        users: Iterable[JiraUser] = (),
        token: str = "emulator-token",  # noqa: S107 - a test double's well-known token
        server_time_zone: str = "UTC",
        controls: Controls | None = None,
    ) -> None:
        if mode not in ("cloud", "dc"):
            raise ValueError(f"mode must be 'cloud' or 'dc', not {mode!r}")
        super().__init__(controls=controls or Controls(error_body=_error_body))
        self.mode: Mode = mode
        self.clock = clock
        self.server_time_zone = server_time_zone
        self._lock = threading.RLock()
        self.users: dict[str, JiraUser] = {}
        self.statuses: dict[str, Json] = {}
        self.issue_types: dict[str, Json] = {}
        self.priorities: dict[str, Json] = {}
        self.fields: dict[str, Json] = {}
        self.options: dict[str, list[Json]] = {}
        self.projects: dict[str, _Project] = {}
        self._issues: dict[str, _Issue] = {}
        self._by_key: dict[str, str] = {}
        self._auth: Authenticator[_Grant] = Authenticator()
        self._next = {"issue": 10000, "history": 10000, "comment": 10000, "field": 10000}
        self._next.update(status=10000, project=10000, issuetype=10000, option=10000)
        for user in users:
            self.add_user(user)
        if not self.users:
            self.add_user(
                JiraUser("557058:bridge-bot", "Salesbridge Bot", "bridge@example.com", "bridge")
            )
        self.add_token(token, next(iter(self.users.values())))
        self._add_defaults()

    # -- directory ---------------------------------------------------------------------

    def add_user(self, user: JiraUser) -> JiraUser:
        with self._lock:
            self.users[user.account_id] = user
            return user

    def add_token(self, token: str, user: JiraUser | str, *, write: bool = True) -> None:
        """Accept ``token`` for ``user`` (or account id); ``write=False`` makes it read-only."""
        person = self.users[user] if isinstance(user, str) else self.add_user(user)
        grant = _Grant(person, write)
        self._auth.bearer[token] = grant
        login = person.email if self.mode == "cloud" and person.email else person.name
        self._auth.basic[(login, token)] = grant

    def find_user(self, ref: Any) -> JiraUser | None:
        """A user by account id, username, e-mail or display name (JQL and write values)."""
        if isinstance(ref, dict):
            ref = ref.get("accountId") or ref.get("name") or ref.get("id")
        if not isinstance(ref, str):
            return None
        with self._lock:
            if ref in self.users:
                return self.users[ref]
            low = ref.casefold()
            for u in self.users.values():
                if low in {u.name.casefold(), (u.email or "").casefold()}:
                    return u
            for u in self.users.values():
                if u.display_name.casefold() == low:
                    return u
        return None

    def add_status(
        self,
        name: str,
        category: Literal["new", "indeterminate", "done"] = "indeterminate",
        *,
        description: str = "",
        id: str | None = None,
    ) -> Json:
        with self._lock:
            existing = self.status(name)
            if existing is not None and id is None:
                return existing
            sid = id or self._id("status")
            self.statuses[sid] = {
                "self": f"{BASE}/rest/api/2/status/{sid}",
                "description": description,
                "iconUrl": f"{BASE}/images/icons/statuses/generic.png",
                "name": name,
                "untranslatedName": name,
                "id": sid,
                "statusCategory": {
                    "self": f"{BASE}/rest/api/2/statuscategory/{_CATEGORIES[category]['id']}",
                    **_CATEGORIES[category],
                },
            }
            return self.statuses[sid]

    def status(self, ref: str) -> Json | None:
        """A status by id or name (case-insensitive; the first of equal names)."""
        with self._lock:
            if ref in self.statuses:
                return self.statuses[ref]
            low = ref.casefold()
            return next((s for s in self.statuses.values() if s["name"].casefold() == low), None)

    def add_issue_type(
        self, name: str, *, description: str = "", subtask: bool = False, id: str | None = None
    ) -> Json:
        with self._lock:
            existing = _named(self.issue_types, name)
            if existing is not None:
                return existing
            tid = id or self._id("issuetype")
            self.issue_types[tid] = {
                "self": f"{BASE}/rest/api/2/issuetype/{tid}",
                "id": tid,
                "description": description,
                "iconUrl": f"{BASE}/images/icons/issuetypes/task.svg",
                "name": name,
                "subtask": subtask,
                "hierarchyLevel": -1 if subtask else 0,
            }
            return self.issue_types[tid]

    def add_field(
        self,
        name: str,
        kind: str,
        *,
        options: Sequence[str] = (),
        id: str | None = None,
    ) -> Json:
        """Add a custom field of a :data:`CUSTOM_KINDS` kind; ``options`` for (multi)selects."""
        if kind not in CUSTOM_KINDS:
            raise ValueError(f"unknown custom field kind {kind!r}; one of {sorted(CUSTOM_KINDS)}")
        with self._lock:
            fid = id or f"customfield_{self._id('field')}"
            number = int(fid.rpartition("_")[2])
            type_, custom, items = CUSTOM_KINDS[kind]
            schema: Json = {"type": type_, "custom": custom, "customId": number}
            if items:
                schema["items"] = items
            self.fields[fid] = _field_json(fid, name, schema, custom=True)
            self.options[fid] = [
                {"self": f"{BASE}/rest/api/2/customFieldOption/{oid}", "value": v, "id": oid}
                for v in options
                for oid in [self._id("option")]
            ]
            return self.fields[fid]

    def field_id(self, ref: str) -> str | None:
        """A field's id from its id, JQL clause name (``cf[10010]``) or name."""
        with self._lock:
            if ref in self.fields:
                return ref
            low = ref.casefold()
            m = re.fullmatch(r"cf\[(\d+)\]", low)
            if m and f"customfield_{m.group(1)}" in self.fields:
                return f"customfield_{m.group(1)}"
            for fid, f in self.fields.items():
                if low == f["name"].casefold() or low in (c.casefold() for c in f["clauseNames"]):
                    return fid
        return None

    def add_project(
        self,
        key: str,
        name: str,
        *,
        issue_types: Sequence[str] = ("Task",),
        workflow: Workflow | None = None,
        screen: Sequence[str] | None = None,
        required: Sequence[str] = (),
        lead: str | None = None,
        id: str | None = None,
    ) -> Json:
        """Add a project. ``screen`` lists the custom fields (ids or names) its create and edit
        screens show (None: all); ``required`` the custom fields a create must fill."""
        with self._lock:
            workflow = workflow or Workflow.simplified(
                f"Software Simplified Workflow for Project {key}", ["To Do", "In Progress", "Done"]
            )
            self._add_statuses_of(workflow)
            types = [self.add_issue_type(t)["id"] for t in issue_types]
            pid = id or self._id("project")
            owner = self.users.get(lead or "") or next(iter(self.users.values()))
            raw = {
                "expand": "description,lead,issueTypes,url,projectKeys,permissions,insight",
                "self": f"{BASE}/rest/api/2/project/{pid}",
                "id": pid,
                "key": key,
                "name": name,
                "avatarUrls": _avatars("project", pid),
                "projectTypeKey": "software",
                "simplified": False,
                "style": "classic",
                "isPrivate": False,
                "properties": {},
                "_lead": owner.account_id,
            }
            resolve = self._resolve_field
            self.projects[key] = _Project(
                raw,
                types,
                workflow,
                None if screen is None else tuple(resolve(f) for f in screen),
                tuple(resolve(f) for f in required),
            )
            return raw

    def add_subtask_type(
        self, project: str, name: str = "Sub-task", *, workflow: Workflow | None = None
    ) -> Json:
        """Let ``project`` have sub-tasks of issue type ``name`` (``subtask: true``), with their
        own ``workflow`` (default: To Do / In Progress / Done, every status from every other)."""
        with self._lock:
            proj = self.project(project)
            if proj is None:
                raise KeyError(f"no project {project!r}")
            workflow = workflow or Workflow.simplified(
                f"Sub-task Workflow for Project {proj.key}", ["To Do", "In Progress", "Done"]
            )
            self._add_statuses_of(workflow)
            kind = self.add_issue_type(name, subtask=True, description="The sub-task of the issue")
            if kind["id"] not in proj.issue_types:
                proj.issue_types.append(kind["id"])
            proj.type_workflows[kind["id"]] = workflow
            return kind

    def _add_statuses_of(self, workflow: Workflow) -> None:
        """Create the workflow's statuses this site lacks: the first in the "new" category, the
        last "done", the others "indeterminate" (as Jira's simplified workflows have them)."""
        for i, s in enumerate(workflow.statuses):
            if self.status(s) is None:
                last = i == len(workflow.statuses) - 1
                self.add_status(s, "new" if i == 0 else "done" if last else "indeterminate")

    def _workflow_of(self, issue: _Issue) -> Workflow:
        proj = self._project_of(issue)
        return proj.type_workflows.get(str(issue.fields["issuetype"]["id"]), proj.workflow)

    def _resolve_field(self, ref: str) -> str:
        fid = self.field_id(ref)
        if fid is None:
            raise ValueError(f"no field {ref!r}")
        return fid

    def project(self, ref: Any) -> _Project | None:
        if isinstance(ref, dict):
            ref = ref.get("key") or ref.get("id")
        with self._lock:
            if ref in self.projects:
                return self.projects[ref]
            for p in self.projects.values():
                if ref in (p.raw["id"], p.raw["name"]) or str(ref).casefold() == p.key.casefold():
                    return p
        return None

    def _id(self, kind: str) -> str:
        with self._lock:
            self._next[kind] += 1
            return str(self._next[kind])

    def _add_defaults(self) -> None:
        for fid, name, schema, nav in _SYSTEM_FIELDS:
            schema = {**schema, "system": fid}
            self.fields[fid] = _field_json(fid, name, schema, custom=False, navigable=nav)
        # Jira lists "Parent" without a schema: it is no value type of its own.
        self.fields["parent"] = _field_json("parent", "Parent", {}, custom=False)
        del self.fields["parent"]["schema"]
        for pid, pname in enumerate(["Highest", "High", "Medium", "Low", "Lowest"], start=1):
            self.priorities[str(pid)] = {
                "self": f"{BASE}/rest/api/2/priority/{pid}",
                "statusColor": ["#d04437", "#f15C75", "#f79232", "#707070", "#999999"][pid - 1],
                "description": f"{pname} priority",
                "iconUrl": f"{BASE}/images/icons/priorities/{pname.lower()}.svg",
                "name": pname,
                "id": str(pid),
            }
        self.resolutions = {
            "10000": {
                "self": f"{BASE}/rest/api/2/resolution/10000",
                "id": "10000",
                "description": "Work has been completed on this issue.",
                "name": "Done",
            }
        }

    # -- issues: the Python API ----------------------------------------------------------

    def add_issue(
        self,
        project: str,
        fields: Mapping[str, Any],
        *,
        issue_type: str | None = None,
        status: str | None = None,
        author: str | JiraUser | None = None,
        created: datetime | None = None,
    ) -> str:
        """Create an issue as a person would in Jira; return its key.

        ``fields`` may use field names or ids and plain values (``{"Amount": 1200}``, a select
        by its value, a user by account id or username, a description as text).
        """
        proj = self.project(project)
        if proj is None:
            raise KeyError(f"no project {project!r}")
        values = {
            self._resolve_field(k): self._plain_value(self._resolve_field(k), v)
            for k, v in fields.items()
        }
        values["project"] = {"key": proj.key}
        values.setdefault("issuetype", {"id": self._issue_type_id(proj, issue_type)})
        if isinstance(values.get("parent"), str):  # a parent by key, as people name it
            values["parent"] = {"key": values["parent"]}
        user = self._author(author)
        with self._lock:
            issue = self._create(values, user, "2", created=created)
            if status is not None:
                self.transition_path(issue.key, status, author=user)
            return issue.key

    def edit_issue(
        self, key: str, fields: Mapping[str, Any], *, author: str | JiraUser | None = None
    ) -> None:
        """Edit an issue as a person would in Jira (out of the bridge's sight).

        Values as for :meth:`add_issue`; a ``status`` entry moves the issue through the
        workflow's available transition to that status.
        """
        user = self._author(author)
        with self._lock:
            issue = self._get(key)
            values = dict(fields)
            status = values.pop("status", None)
            plain = {
                self._resolve_field(k): self._plain_value(self._resolve_field(k), v)
                for k, v in values.items()
            }
            if plain:
                self._edit(issue, plain, {}, user, "2", screen=False)
            if status is not None:
                self.transition(key, status, author=user)

    def transition(
        self,
        key: str,
        status: str,
        *,
        author: str | JiraUser | None = None,
        fields: Mapping[str, Any] | None = None,
    ) -> None:
        """Move an issue to ``status`` through an available transition (ValueError if none)."""
        user = self._author(author)
        with self._lock:
            issue = self._get(key)
            workflow = self._workflow_of(issue)
            target = self.status(status)
            current = issue.fields["status"]["name"]
            options = [
                t
                for t in workflow.available(current)
                if target is not None and t.to.casefold() == target["name"].casefold()
            ]
            if not options:
                reachable = sorted({t.to for t in workflow.available(current)})
                raise ValueError(
                    f"{key}: no transition from {current!r} to {status!r}; available: {reachable}"
                )
            values = {
                self._resolve_field(k): self._plain_value(self._resolve_field(k), v)
                for k, v in (fields or {}).items()
            }
            self._do_transition(issue, options[0], values, {}, user, "2")

    def transition_path(
        self, key: str, status: str, *, author: str | JiraUser | None = None
    ) -> None:
        """Walk the shortest chain of transitions to ``status``, one changelog entry per step,
        skipping required-field checks (a seeding shortcut, not something a person can do)."""
        user = self._author(author)
        with self._lock:
            issue = self._get(key)
            workflow = self._workflow_of(issue)
            path = _path(workflow, issue.fields["status"]["name"], status)
            if path is None:
                raise ValueError(f"{key}: {status!r} is not reachable in {workflow.name}")
            for t in path:
                self._do_transition(issue, t, {}, {}, user, "2", check_required=False)

    def load_devlake(self, directory: Path) -> list[str]:
        """Load DevLake's captured Jira Cloud tables (see :mod:`connectors.jira.seed`)."""
        from connectors.jira.seed import load_devlake

        return load_devlake(self, directory)

    def seed_sales(self, count: int = 24, *, seed: int = 7) -> list[str]:
        """Add the SALES project and ``count`` generated sales projects (see the seed module)."""
        from connectors.jira.seed import seed_sales

        return seed_sales(self, count, seed=seed)

    def issue(self, key: str, *, api: str = "3") -> Json:
        """The issue as ``GET /rest/api/{api}/issue/{key}?expand=changelog`` shows it."""
        with self._lock:
            issue = self._get(key)
            user = next(iter(self.users.values()))
            out = self._render_issue(issue, api, user, ["*all"], {"changelog"})
        return _rebase(out, self._origin())

    def keys(self) -> list[str]:
        with self._lock:
            return sorted(self._by_key, key=_key_order)

    def delete_issue(self, key: str) -> None:
        with self._lock:
            issue = self._get(key)
            children = [
                c
                for c in self._issues.values()
                if isinstance(c.fields.get("parent"), dict)
                and str(c.fields["parent"].get("id")) == issue.id
            ]
            for gone in [issue, *children]:  # as Jira does, a parent goes with its sub-tasks
                del self._issues[gone.id], self._by_key[gone.key]

    def _origin(self) -> str:
        return self._server.base_url if self._server is not None else "http://jira.invalid"

    def _author(self, author: str | JiraUser | None) -> JiraUser:
        if isinstance(author, JiraUser):
            return self.users.setdefault(author.account_id, author)
        if author is None:
            return next(iter(self.users.values()))
        found = self.find_user(author)
        if found is None:
            raise KeyError(f"no user {author!r}")
        return found

    def _plain_value(self, fid: str, value: Any) -> Any:
        """A Python-API value in REST form (v2): options by value, users by id."""
        kind = self._kind(fid)
        if value is None:
            return None
        if kind in ("select", "priority", "resolution") and isinstance(value, str):
            return {"value": value} if kind == "select" else {"name": value}
        if kind == "multiselect" and isinstance(value, list):
            return [{"value": v} if isinstance(v, str) else v for v in value]
        if kind in ("user",) and isinstance(value, str):
            user = self.find_user(value)
            ref = user.account_id if user else value
            return (
                {"accountId": ref}
                if self.mode == "cloud"
                else {"name": user.name if user else value}
            )
        if kind == "issuetype" and isinstance(value, str):
            return {"name": value}
        if kind in ("datetime",) and isinstance(value, datetime):
            return format_jira_time(value)
        if kind in ("date",) and isinstance(value, date):
            return value.isoformat()
        if _is_adf(value):
            return adf_to_text(value)
        return value

    # -- issue internals -------------------------------------------------------------------

    def _get(self, ref: str) -> _Issue:
        issue = self._issues.get(ref) or self._issues.get(self._by_key.get(ref.upper(), ""))
        if issue is None:
            raise JiraError(404, [_NO_ISSUE])
        return issue

    def _project_of(self, issue: _Issue) -> _Project:
        proj = self.project(issue.fields["project"]["key"])
        if proj is None:  # an issue loaded without its project: give it one
            raw = issue.fields["project"]
            self.projects[raw["key"]] = proj = _Project(
                {**raw, "_lead": next(iter(self.users))},
                [],
                Workflow.simplified(
                    f"Workflow for {raw['key']}", [s["name"] for s in self.statuses.values()]
                ),
                None,
                (),
            )
        return proj

    def _issue_type_id(self, proj: _Project, name: str | None) -> str:
        if name is None:
            return proj.issue_types[0]
        found = _named(self.issue_types, name)
        if found is None:
            raise KeyError(f"no issue type {name!r}")
        return str(found["id"])

    def _now(self) -> datetime:
        now = self.clock()
        if now.tzinfo is None:
            raise ValueError("the emulator clock must return timezone-aware datetimes")
        return now.replace(microsecond=now.microsecond // 1000 * 1000)

    def _stamp(self, at: datetime | None = None) -> str:
        return format_jira_time(at or self._now(), self.server_time_zone)

    def _create(
        self, values: Json, user: JiraUser, api: str, *, created: datetime | None = None
    ) -> _Issue:
        errors: dict[str, str] = {}
        proj = self.project(values.get("project") or {})
        if proj is None:
            errors["project"] = "Specify a valid project ID or key"
            raise JiraError(400, [], errors)
        itype = values.get("issuetype") or {}
        type_json = self.issue_types.get(str(itype.get("id", ""))) or _named(
            self.issue_types, str(itype.get("name", ""))
        )
        if type_json is None or type_json["id"] not in proj.issue_types:
            raise JiraError(400, [], {"issuetype": "Specify an issue type"})
        parent = self._parent_of_new(values.get("parent"), type_json, proj)
        if not values.get("summary"):
            errors["summary"] = "You must specify a summary of the issue."
        for fid in proj.required:
            if values.get(fid) in (None, "", []):
                errors[fid] = f"{self.fields[fid]['name']} is required."
        if errors:
            raise JiraError(400, [], errors)
        at = created or self._now()
        number = proj.next_number
        while f"{proj.key}-{number}" in self._by_key:
            number += 1
        proj.next_number = number + 1
        iid = self._id("issue")
        while iid in self._issues:
            iid = self._id("issue")
        workflow = proj.type_workflows.get(str(type_json["id"]), proj.workflow)
        status = self.status(workflow.initial)
        assert status is not None
        person = user.json(self.mode)
        fields: Json = {
            "project": _project_ref(proj.raw),
            "issuetype": copy.deepcopy(type_json),
            "status": copy.deepcopy(status),
            "created": self._stamp(at),
            "updated": self._stamp(at),
            "statuscategorychangedate": self._stamp(at),
            "creator": person,
            "reporter": person,
            "assignee": None,
            "priority": copy.deepcopy(self.priorities["3"]),
            "labels": [],
            "description": None,
            "resolution": None,
            "resolutiondate": None,
            "duedate": None,
            "summary": None,
            "environment": None,
            **_empty_extras(f"{proj.key}-{number}"),
        }
        if parent is not None:
            fields["parent"] = {"id": parent.id, "key": parent.key}
        issue = _Issue(iid, f"{proj.key}-{number}", fields)
        rest = {k: v for k, v in values.items() if k not in ("project", "issuetype", "parent")}
        self._apply(issue, rest, {}, api, screen=self._screen(proj), creating=True)
        self._issues[iid] = issue
        self._by_key[issue.key] = iid
        return issue

    def _parent_of_new(self, ref: Any, type_json: Json, proj: _Project) -> _Issue | None:
        """The parent a new issue names (``{"key"}`` or ``{"id"}``), checked as Jira does: a
        sub-task needs one in its own project, another issue type takes none."""
        if not type_json.get("subtask"):
            if ref:
                raise JiraError(
                    400,
                    [],
                    {"parent": "Given parent issue does not belong to appropriate hierarchy."},
                )
            return None
        wanted = ref.get("key") or ref.get("id") if isinstance(ref, dict) else None
        if not wanted:
            raise JiraError(
                400,
                [],
                {"parent": "Issue type is a sub-task but parent issue key or id not specified."},
            )
        try:
            parent = self._get(str(wanted))
        except JiraError:
            raise JiraError(400, [], {"parent": "Could not find issue by id or key."}) from None
        kind = self.issue_types.get(str(parent.fields["issuetype"].get("id")), {})
        if kind.get("subtask") or parent.fields.get("parent"):
            raise JiraError(400, [], {"parent": "A sub-task cannot be the parent of a sub-task."})
        if parent.fields["project"]["key"] != proj.key:
            raise JiraError(
                400, [], {"parent": "The parent issue must be in the project of the sub-task."}
            )
        return parent

    def _link(self, issue: _Issue) -> Json:
        """An issue as ``subtasks`` and ``parent`` show it: id, key, self and four fields."""
        f = issue.fields
        return {
            "id": issue.id,
            "key": issue.key,
            "self": f"{BASE}/rest/api/2/issue/{issue.id}",
            "fields": {
                "summary": f.get("summary"),
                "status": copy.deepcopy(f.get("status")),
                "priority": copy.deepcopy(f.get("priority")),
                "issuetype": copy.deepcopy(f.get("issuetype")),
            },
        }

    def _subtasks_of(self, issue: _Issue) -> list[Json]:
        """The issue's sub-tasks as they are now, in creation order; entries loaded with the
        issue whose sub-task the emulator does not hold stay as loaded."""
        found = {
            str(s.get("id")): copy.deepcopy(s)
            for s in issue.fields.get("subtasks") or []
            if isinstance(s, dict) and str(s.get("id")) not in self._issues
        }
        for child in self._issues.values():
            parent = child.fields.get("parent")
            if isinstance(parent, dict) and str(parent.get("id")) == issue.id:
                found[child.id] = self._link(child)
        return [found[k] for k in sorted(found, key=lambda k: (len(k), k))]

    def _screen(self, proj: _Project) -> set[str]:
        custom = [f for f in self.fields if self.fields[f]["custom"]]
        on_screen = custom if proj.screen is None else proj.screen
        return set(_EDITABLE) | set(on_screen)

    def _edit(
        self,
        issue: _Issue,
        values: Json,
        update: Json,
        user: JiraUser,
        api: str,
        *,
        screen: bool = True,
    ) -> None:
        allowed = self._screen(self._project_of(issue)) if screen else set(self.fields)
        items = self._apply(issue, values, update, api, screen=allowed)
        if items:
            self._record(issue, user, items)

    def _record(self, issue: _Issue, user: JiraUser, items: list[Json]) -> None:
        now = self._stamp()
        issue.fields["updated"] = now
        issue.histories.append(
            {
                "id": self._id("history"),
                "author": user.json(self.mode),
                "created": now,
                "items": items,
            }
        )

    def _apply(
        self,
        issue: _Issue,
        values: Json,
        update: Json,
        api: str,
        *,
        screen: set[str],
        creating: bool = False,
    ) -> list[Json]:
        """Validate and apply field values and ``update`` verbs; return changelog items."""
        errors: dict[str, str] = {}
        changes: Json = {}
        for ref, value in values.items():
            fid = self.field_id(ref) if ref not in self.fields else ref
            if fid is None or fid not in screen:
                errors[ref] = _NOT_ON_SCREEN.format(ref)
                continue
            try:
                changes[fid] = self._convert(fid, value, api, creating=creating)
            except ValueError as exc:
                errors[fid] = str(exc)
        for ref, ops in (update or {}).items():
            fid = self.field_id(ref) if ref not in self.fields else ref
            if ref == "comment":
                continue  # handled by the caller (transitions)
            if fid is None or fid not in screen or not isinstance(ops, list):
                errors[ref] = _NOT_ON_SCREEN.format(ref)
                continue
            current = copy.deepcopy(changes.get(fid, issue.fields.get(fid)))
            try:
                for op in ops:
                    current = self._verb(fid, current, op, api)
                changes[fid] = current
            except ValueError as exc:
                errors[fid] = str(exc)
        if errors:
            raise JiraError(400, [], errors)
        items = []
        for fid, new in changes.items():
            old = issue.fields.get(fid)
            if _same(old, new):
                continue
            issue.fields[fid] = new
            if not creating:
                items.append(self._item(fid, old, new))
        return items

    def _verb(self, fid: str, current: Any, op: Any, api: str) -> Any:
        if not isinstance(op, dict) or len(op) != 1:
            raise ValueError("Operation must be an object with one of set, add, remove")
        ((verb, value),) = op.items()
        if verb == "set":
            return self._convert(fid, value, api)
        kind = self._kind(fid)
        if kind not in ("labels", "multiselect") or verb not in ("add", "remove"):
            raise ValueError(f"Field does not support update '{verb}'")
        items = list(current or [])
        item = self._convert(fid, [value], api)[0]
        if verb == "add" and not any(_same(item, i) for i in items):
            items.append(item)
        if verb == "remove":
            items = [i for i in items if not _same(item, i)]
        return items

    def _kind(self, fid: str) -> str:
        f = self.fields.get(fid)
        if f is None:
            return "unknown"
        schema = f.get("schema") or {}
        if f["custom"]:
            for kind, (_, custom, _) in CUSTOM_KINDS.items():
                if schema.get("custom") == custom:
                    return kind
            return "raw"
        return _SYSTEM_KINDS.get(fid, "raw")

    def _convert(self, fid: str, value: Any, api: str, *, creating: bool = False) -> Any:
        """A REST write value checked and turned into the stored form (ValueError: Jira's text)."""
        kind = self._kind(fid)
        name = self.fields[fid]["name"]
        if value is None or (value == [] and kind in ("labels", "multiselect")):
            if fid == "summary":
                raise ValueError("You must specify a summary of the issue.")
            return [] if kind in ("labels", "multiselect") else None
        if kind in ("text", "url", "summary"):
            if not isinstance(value, str):
                raise ValueError("Operation value must be a string")
            limit = 255
            if len(value) > limit:
                raise ValueError(
                    "Summary must be less than 255 characters."
                    if fid == "summary"
                    else "The entered text is too long. It exceeds the allowed limit of "
                    f"{limit} characters."
                )
            return value
        if kind == "textarea":
            if self.mode == "cloud" and api == "3":
                if not _is_adf(value):
                    raise ValueError(_ADF_ERROR)
                return copy.deepcopy(value)
            if not isinstance(value, str):
                raise ValueError("Operation value must be a string")
            return value
        if kind == "number":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError("Operation value must be a number")
            return float(value)
        if kind in ("date", "duedate"):
            if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
                raise ValueError(
                    'Invalid date format. Please enter the date in the format "d/MMM/yy".'
                )
            try:
                date.fromisoformat(value)
            except ValueError:
                raise ValueError(
                    'Invalid date format. Please enter the date in the format "d/MMM/yy".'
                ) from None
            return value
        if kind == "datetime":
            try:
                return self._stamp(parse_jira_time(str(value)))
            except ValueError:
                raise ValueError(
                    'Invalid date format. Please enter the date in the format "d/MMM/yy h:mm a".'
                ) from None
        if kind == "select":
            return self._option(fid, value)
        if kind == "multiselect":
            if not isinstance(value, list):
                raise ValueError("Operation value must be an array")
            return [self._option(fid, v) for v in value]
        if kind == "labels":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError("Operation value must be an array of strings")
            for v in value:
                if not v or " " in v:
                    raise ValueError(f"The label '{v}' contains spaces which is invalid.")
            return list(value)
        if kind == "user":
            user = self._user_value(value)
            if user is None:
                raise ValueError(
                    "Specified user does not exist or you do not have required permissions"
                    if self.mode == "cloud"
                    else f"User '{_user_ref(value)}' does not exist."
                )
            return user.json(self.mode)
        if kind == "priority":
            found = self._named_ref(self.priorities, value)
            if found is None:
                raise ValueError(f"Specify a valid value for {name}")
            return copy.deepcopy(found)
        if kind == "resolution":
            found = self._named_ref(self.resolutions, value)
            if found is None:
                raise ValueError(f"Specify a valid value for {name}")
            return copy.deepcopy(found)
        if kind == "raw":
            return copy.deepcopy(value)
        raise ValueError(_NOT_ON_SCREEN.format(fid))

    def _user_value(self, value: Any) -> JiraUser | None:
        if not isinstance(value, dict):
            return None
        if self.mode == "cloud":
            ref = value.get("accountId") or value.get("id")
            return self.users.get(ref) if isinstance(ref, str) else None
        ref = value.get("name")
        return self.find_user(ref) if isinstance(ref, str) else None

    def _option(self, fid: str, value: Any) -> Json:
        if not isinstance(value, dict) or not ({"id", "value"} & value.keys()):
            raise ValueError("Could not find valid 'id' or 'value' in the Parent Option object.")
        for opt in self.options.get(fid, []):
            if opt["id"] == str(value.get("id")) or opt["value"] == value.get("value"):
                return dict(opt)
        shown = value.get("value", value.get("id"))
        raise ValueError(f"Option value '{shown}' is not valid")

    @staticmethod
    def _named_ref(table: Mapping[str, Json], value: Any) -> Json | None:
        if not isinstance(value, dict):
            return None
        if "id" in value:
            return table.get(str(value["id"]))
        return _named(table, str(value.get("name", "")))

    def _item(self, fid: str, old: Any, new: Any) -> Json:
        """A changelog item as Jira writes it (Cloud adds ``fieldId``, and account ids)."""
        f = self.fields[fid]
        kind = self._kind(fid)
        ids = (None, None)
        if kind in ("select", "priority", "resolution", "status", "issuetype"):
            ids = (_get(old, "id"), _get(new, "id"))
        elif kind == "user":
            key = "accountId" if self.mode == "cloud" else "name"
            ids = (_get(old, key), _get(new, key))
        elif kind in ("date", "duedate", "datetime"):
            ids = (old, new)
        item: Json = {
            "field": fid if not f["custom"] else f["name"],
            "fieldtype": "custom" if f["custom"] else "jira",
        }
        if self.mode == "cloud":
            item["fieldId"] = fid
        item.update(
            {"from": ids[0], "fromString": _display(old), "to": ids[1], "toString": _display(new)}
        )
        if kind == "user" and self.mode == "cloud":  # as the captured Cloud changelogs have
            item.update(tmpFromAccountId=ids[0], tmpToAccountId=ids[1])
        return item

    def _do_transition(
        self,
        issue: _Issue,
        transition: Transition,
        values: Json,
        update: Json,
        user: JiraUser,
        api: str,
        *,
        check_required: bool = True,
    ) -> None:
        screen = {self._resolve_field(f) for f in transition.screen} | {"resolution"}
        before = copy.deepcopy(issue.fields)
        items = self._apply(issue, values, update, api, screen=screen)
        missing = {
            fid: f"{self.fields[fid]['name']} is required."
            for fid in map(self._resolve_field, transition.required)
            if issue.fields.get(fid) in (None, "", [])
        }
        if missing and check_required:
            issue.fields = before
            raise JiraError(400, [], missing)
        old = issue.fields["status"]
        new = self.status(transition.to)
        assert new is not None
        if old["id"] != new["id"]:
            issue.fields["status"] = copy.deepcopy(new)
            items.append(self._item("status", old, new))
            now = self._stamp()
            was, now_cat = old["statusCategory"]["key"], new["statusCategory"]["key"]
            if was != now_cat:
                issue.fields["statuscategorychangedate"] = now
            if now_cat == "done" and issue.fields.get("resolution") is None:
                issue.fields["resolution"] = copy.deepcopy(self.resolutions["10000"])
                issue.fields["resolutiondate"] = now
                items.append(self._item("resolution", None, issue.fields["resolution"]))
            elif now_cat != "done" and issue.fields.get("resolution") is not None:
                items.append(self._item("resolution", issue.fields["resolution"], None))
                issue.fields["resolution"] = issue.fields["resolutiondate"] = None
        comment = (update or {}).get("comment")
        if comment:
            for op in comment:
                body = (op.get("add") or {}).get("body") if isinstance(op, dict) else None
                if body is not None:
                    self._add_comment(issue, body, user, api)
        if items:
            self._record(issue, user, items)

    def _add_comment(self, issue: _Issue, body: Any, user: JiraUser, api: str) -> Json:
        if self.mode == "cloud" and api == "3" and not _is_adf(body):
            raise JiraError(400, [], {"comment": _ADF_ERROR})
        if not (isinstance(body, str) and body.strip()) and not _is_adf(body):
            raise JiraError(400, [], {"comment": "Comment body can not be empty!"})
        cid = self._id("comment")
        now = self._stamp()
        person = user.json(self.mode)
        comment = {
            "self": f"{BASE}/rest/api/2/issue/{issue.id}/comment/{cid}",
            "id": cid,
            "author": person,
            "body": body,
            "updateAuthor": person,
            "created": now,
            "updated": now,
            "jsdPublic": True,
        }
        issue.comments.append(comment)
        issue.fields["updated"] = now
        return comment

    # -- rendering ------------------------------------------------------------------------

    def _render_issue(
        self,
        issue: _Issue,
        api: str,
        user: JiraUser,
        wanted: Sequence[str],
        expand: set[str],
    ) -> Json:
        out: Json = {
            "expand": "renderedFields,names,schema,operations,editmeta,changelog,"
            "versionedRepresentations",
            "id": issue.id,
            "self": f"{BASE}/rest/api/{api}/issue/{issue.id}",
            "key": issue.key,
        }
        chosen = self._chosen_fields(wanted)
        if chosen is not None:
            out["fields"] = {
                fid: self._render_value(fid, issue, api, user)
                for fid in self._field_order(issue)
                if fid in chosen
            }
        if "names" in expand and chosen is not None:
            out["names"] = {f: self.fields[f]["name"] for f in out["fields"] if f in self.fields}
        if "schema" in expand and chosen is not None:
            out["schema"] = {
                f: self.fields[f]["schema"]
                for f in out["fields"]
                if f in self.fields and "schema" in self.fields[f]
            }
        if "transitions" in expand:
            out["transitions"] = self._render_transitions(issue, api, user, fields=False)
        if "editmeta" in expand:
            out["editmeta"] = self._editmeta(issue, api)
        if "changelog" in expand:
            histories = [self._render_history(h, user) for h in issue.histories]
            if self.mode == "cloud":  # Cloud: newest first, at most 100
                histories = histories[::-1][:100]
            out["changelog"] = {
                "startAt": 0,
                "maxResults": len(histories),
                "total": len(issue.histories),
                "histories": histories,
            }
        return out

    def _field_order(self, issue: _Issue) -> list[str]:
        present = list(issue.fields)
        extra = [f for f in self.fields if f not in issue.fields and f not in _VIRTUAL]
        return present + extra + ["comment"]

    def _chosen_fields(self, wanted: Sequence[str]) -> set[str] | None:
        """Which field ids a ``fields`` parameter selects; None means "no fields object"."""
        names = [w.strip() for item in wanted for w in item.split(",") if w.strip()]
        if not names or names == ["id"]:
            return None
        chosen: set[str] = set()
        for n in names:
            if n == "*all":
                chosen |= set(self.fields) | {"comment"}
            elif n == "*navigable":
                chosen |= {f for f, d in self.fields.items() if d.get("navigable", True)}
            elif not n.startswith("-"):
                fid = self.field_id(n) if n not in self.fields else n
                if fid is not None:
                    chosen.add(fid)
                elif n == "comment":
                    chosen.add("comment")
        for n in names:
            if n.startswith("-"):
                chosen.discard(self.field_id(n[1:]) or n[1:])
        return chosen

    def _render_value(self, fid: str, issue: _Issue, api: str, user: JiraUser) -> Any:
        if fid == "comment":
            comments = [self._render_comment(c, api, user) for c in issue.comments]
            return {
                "comments": comments,
                "self": f"{BASE}/rest/api/{api}/issue/{issue.id}/comment",
                "maxResults": len(comments),
                "total": len(comments),
                "startAt": 0,
            }
        if fid == "subtasks":
            return self._subtasks_of(issue)
        value = issue.fields.get(fid)
        if fid == "parent" and isinstance(value, dict) and str(value.get("id")) in self._issues:
            return self._link(self._issues[str(value["id"])])
        kind = self._kind(fid)
        if kind == "textarea" or fid == "environment":
            return self._rich(value, api)
        if isinstance(value, str) and (kind == "datetime" or fid in _DATETIME_FIELDS):
            return _retime(value, user.time_zone)
        return copy.deepcopy(value)

    def _rich(self, value: Any, api: str) -> Any:
        """Rich text as an API version shows it: v3 gives ADF (a stored document as stored),
        v2 and Data Center give text."""
        if not self._adf(api):
            return adf_to_text(value)
        return copy.deepcopy(value) if _is_adf(value) else text_to_adf(value)

    def _adf(self, api: str) -> bool:
        return self.mode == "cloud" and api == "3"

    def _render_comment(self, comment: Json, api: str, user: JiraUser) -> Json:
        out = copy.deepcopy(comment)
        body = comment.get("body")
        out["body"] = self._rich(body, api)
        for key in ("created", "updated"):
            if isinstance(out.get(key), str):
                out[key] = _retime(out[key], user.time_zone)
        if self.mode == "dc":
            out.pop("jsdPublic", None)
        return out

    def _render_history(self, history: Json, user: JiraUser) -> Json:
        out = copy.deepcopy(history)
        out["created"] = _retime(history["created"], user.time_zone)
        return out

    def _render_transitions(
        self, issue: _Issue, api: str, user: JiraUser, *, fields: bool, only: str | None = None
    ) -> list[Json]:
        current = issue.fields["status"]["name"]
        out = []
        for t in self._workflow_of(issue).available(current):
            if only is not None and t.id != only:
                continue
            to = self.status(t.to)
            entry: Json = {
                "id": t.id,
                "name": t.name,
                "to": copy.deepcopy(to),
                "hasScreen": bool(t.screen),
                "isGlobal": not t.sources,
                "isInitial": False,
                "isAvailable": True,
                "isConditional": False,
                "isLooped": False,
            }
            if fields:
                entry["fields"] = {
                    fid: self._field_meta(fid, fid in map(self._resolve_field, t.required))
                    for fid in map(self._resolve_field, t.screen)
                }
            out.append(entry)
        return out

    def _field_meta(self, fid: str, required: bool, *, paged: bool = False) -> Json:
        f = self.fields[fid]
        kind = self._kind(fid)
        ops = ["set"]
        if kind in ("labels", "multiselect"):
            ops = ["add", "set", "remove"]
        meta: Json = {
            "required": required,
            "schema": f["schema"],
            "name": f["name"],
            "key": fid,
            "operations": ops,
        }
        if paged:  # the per-issue-type createmeta pages name the field once more
            meta["fieldId"] = fid
        meta["hasDefaultValue"] = False
        if kind in ("select", "multiselect"):
            meta["allowedValues"] = copy.deepcopy(self.options.get(fid, []))
        elif kind == "priority":
            meta["allowedValues"] = list(self.priorities.values())
        elif kind == "user":
            meta["autoCompleteUrl"] = f"{BASE}/rest/api/2/user/search?query="
        return meta

    def _editmeta(self, issue: _Issue, api: str) -> Json:
        proj = self._project_of(issue)
        screen = self._screen(proj)
        return {
            "fields": {
                fid: self._field_meta(fid, fid == "summary")
                for fid in self.fields
                if fid in screen and self._kind(fid) not in ("raw", "unknown")
            }
        }

    def _create_fields(self, proj: _Project, type_id: str, *, paged: bool) -> list[Json]:
        screen = self._screen(proj) | {"project", "issuetype"}
        out = []
        for fid in self.fields:
            if fid in screen and self._kind(fid) not in ("raw", "unknown"):
                required = fid in ("summary", "project", "issuetype") or fid in proj.required
                meta = self._field_meta(fid, required, paged=paged)
                if fid == "issuetype":
                    meta["allowedValues"] = [self.issue_types[type_id]]
                if fid == "project":
                    meta["allowedValues"] = [_project_ref(proj.raw)]
                out.append(meta)
        return out

    def _project_json(self, proj: _Project, expand: set[str]) -> Json:
        raw = {k: copy.deepcopy(v) for k, v in proj.raw.items() if not k.startswith("_")}
        raw["issueTypes"] = [self.issue_types[t] for t in proj.issue_types if t in self.issue_types]
        lead = self.users.get(str(proj.raw.get("_lead")))
        if lead is not None and ("lead" in expand or self.mode == "dc"):
            raw["lead"] = lead.json(self.mode)
        return raw

    # -- searching --------------------------------------------------------------------------

    def search(self, jql: str, user: JiraUser | None = None) -> list[_Issue]:
        """The issues ``jql`` selects, in its order (JqlError with Jira's message if invalid)."""
        user = user or next(iter(self.users.values()))
        query = parse_jql(jql)
        with self._lock:
            ctx = _Context(self, user)
            if query.where is not None:
                ctx.check_functions(query.where)
            hits = [
                i for i in self._issues.values() if query.where is None or query.where.eval(i, ctx)
            ]
            order = query.order or [("key", True)]  # Jira's default: newest key first
            for name, desc in reversed(order):
                keyf = ctx.sort_key(name)
                hits.sort(key=keyf, reverse=desc)
            return hits

    # -- HTTP -------------------------------------------------------------------------------

    def build_app(self) -> ASGIApp:
        r = "/rest/api/{api}"
        i = r + "/issue/{key}"
        routes = [
            Route(r + "/serverInfo", self._h(self._server_info, auth=False)),
            Route(r + "/myself", self._h(self._myself)),
            Route(r + "/field", self._h(self._fields)),
            Route(r + "/search/jql", self._h(self._search_jql), methods=["GET", "POST"]),
            Route(r + "/search", self._h(self._search), methods=["GET", "POST"]),
            Route(r + "/search/approximate-count", self._h(self._count), methods=["POST"]),
            Route(r + "/issue", self._h(self._create_issue, write=True), methods=["POST"]),
            Route(r + "/issue/createmeta", self._h(self._createmeta)),
            Route(r + "/issue/createmeta/{project}/issuetypes", self._h(self._createmeta_types)),
            Route(
                r + "/issue/createmeta/{project}/issuetypes/{type}",
                self._h(self._createmeta_fields),
            ),
            Route(i, self._h(self._get_issue)),
            Route(i, self._h(self._edit_issue, write=True), methods=["PUT"]),
            Route(i + "/changelog", self._h(self._changelog)),
            Route(i + "/transitions", self._h(self._transitions)),
            Route(i + "/transitions", self._h(self._post_transition, write=True), methods=["POST"]),
            Route(i + "/comment", self._h(self._comments)),
            Route(i + "/comment", self._h(self._post_comment, write=True), methods=["POST"]),
            Route(i + "/editmeta", self._h(self._editmeta_route)),
            Route(r + "/user/search", self._h(self._user_search)),
            Route(r + "/user/assignable/search", self._h(self._assignable_search)),
            Route(r + "/users/search", self._h(self._users_search)),
            Route(r + "/users", self._h(self._users_search)),
            Route(r + "/user", self._h(self._user)),
            Route(r + "/status", self._h(self._status_list)),
            Route(r + "/project", self._h(self._projects)),
            Route(r + "/project/{project}", self._h(self._project_route)),
            Route(r + "/issuetype", self._h(self._issue_types)),
            Route(r + "/priority", self._h(self._priorities)),
        ]
        return Starlette(routes=routes)

    def _h(
        self,
        handler: Callable[[Request, str, JiraUser], Any],
        *,
        auth: bool = True,
        write: bool = False,
    ) -> Callable[[Request], Any]:
        """Wrap a handler: API version, authentication, permission, errors, JSON and base URL."""

        async def endpoint(request: Request) -> Response:
            base = str(request.base_url).rstrip("/")
            api = request.path_params["api"]
            if api == "latest":
                api = "2"
            if api not in (("2", "3") if self.mode == "cloud" else ("2",)):
                return _json({"errorMessages": ["Not found"], "errors": {}}, base, 404)
            grant = self._auth.authenticate(request)
            if grant is None and (auth or self._auth.presented(request)):
                headers = {"WWW-Authenticate": 'Basic realm="protected-area"'}
                if self.mode == "dc":
                    headers["X-Seraph-LoginReason"] = "AUTHENTICATED_FAILED"
                return Response(
                    "Client must be authenticated to access this resource.",
                    401,
                    headers,
                    media_type="text/plain",
                )
            user = grant.user if grant else next(iter(self.users.values()))
            try:
                if write and grant is not None and not grant.write:
                    raise JiraError(
                        403, ["You do not have permission to edit issues in this project."]
                    )
                try:
                    request.state.body = await _body(request)
                except ClientDisconnect:  # the client gave up before sending its body
                    return Response(status_code=400)
                with self._lock:
                    result = handler(request, api, user)
            except JiraError as exc:
                return _json(exc.body(), base, exc.status)
            if isinstance(result, Response):
                return result
            status = 200
            if isinstance(result, tuple):
                result, status = result
            if result is None:
                return Response(status_code=204)
            return _json(result, base, status)

        return endpoint

    # handlers: (request, api, user) -> JSON | (JSON, status) | None (204) | Response

    def _server_info(self, request: Request, api: str, user: JiraUser) -> Json:
        cloud = self.mode == "cloud"
        version = "1001.0.0-SNAPSHOT" if cloud else "9.12.2"
        return {
            "baseUrl": BASE,
            "displayUrl": BASE,
            "version": version,
            "versionNumbers": [1001, 0, 0] if cloud else [9, 12, 2],
            "deploymentType": "Cloud" if cloud else "Server",
            "buildNumber": 100280 if cloud else 9120002,
            "buildDate": "2026-01-05T00:00:00.000+0000",
            "serverTime": format_jira_time(self._now(), self.server_time_zone),
            "scmInfo": "57a0ca5b4a0bb0ac5f3fee4764acb1c14e4d7e71",
            "serverTitle": "Jira",
            "serverTimeZone": self.server_time_zone,
        }

    def _myself(self, request: Request, api: str, user: JiraUser) -> Json:
        out = user.json(self.mode)
        out["locale"] = "en_US"
        out["groups"] = {"size": 1, "items": []}
        out["applicationRoles"] = {"size": 1, "items": []}
        out["expand"] = "groups,applicationRoles"
        return out

    def _fields(self, request: Request, api: str, user: JiraUser) -> list[Json]:
        return [copy.deepcopy(f) for f in self.fields.values()]

    def _search_params(self, request: Request) -> Json:
        if request.method == "POST":
            body = request.state.body
            if not isinstance(body, dict):
                raise JiraError(400, ["Request body must be a JSON object."])
            return body
        q = request.query_params
        params: Json = {k: q[k] for k in q}
        params["fields"] = q.getlist("fields")
        return params

    def _search_jql(self, request: Request, api: str, user: JiraUser) -> Json:
        if self.mode != "cloud":
            raise JiraError(404, ["Not found"])
        p = self._search_params(request)
        jql = str(p.get("jql") or "")
        query = parse_jql(jql)
        if query.where is None:
            raise JiraError(
                400,
                [
                    "Unbounded JQL queries are not allowed here. Please add a search restriction "
                    "to your query."
                ],
            )
        wanted = _as_list(p.get("fields")) or ["id"]
        limit = _int(p.get("maxResults"), 50, "maxResults")
        only_ids = all(w in ("id", "key") for w in wanted)
        limit = max(1, min(limit, 5000 if only_ids else 100))
        digest = hashlib.sha256(jql.encode()).hexdigest()[:16]
        offset = 0
        if p.get("nextPageToken"):
            offset = _read_token(str(p["nextPageToken"]), digest)
        hits = self.search(jql, user)
        page = hits[offset : offset + limit]
        expand = set(_as_list(p.get("expand")))
        if only_ids and not expand:  # the default: ids (and keys if asked) only
            issues = [{"id": x.id, **({"key": x.key} if "key" in wanted else {})} for x in page]
        else:
            issues = [self._render_issue(x, api, user, wanted, expand) for x in page]
        out: Json = {"issues": issues}
        if offset + limit < len(hits):
            out["nextPageToken"] = _token(offset + limit, digest)
        out["isLast"] = offset + limit >= len(hits)
        if "names" in expand:
            out["names"] = {f: d["name"] for f, d in self.fields.items()}
        if "schema" in expand:
            out["schema"] = {f: d["schema"] for f, d in self.fields.items() if "schema" in d}
        return out

    def _count(self, request: Request, api: str, user: JiraUser) -> Json:
        if self.mode != "cloud":
            raise JiraError(404, ["Not found"])
        jql = str(self._search_params(request).get("jql") or "")
        if parse_jql(jql).where is None:
            raise JiraError(
                400,
                [
                    "Unbounded JQL queries are not allowed here. Please add a "
                    "search restriction to your query."
                ],
            )
        return {"count": len(self.search(jql, user))}

    def _search(self, request: Request, api: str, user: JiraUser) -> Json:
        if self.mode == "cloud":
            raise JiraError(
                410,
                [
                    "The requested API has been removed. Please migrate to the "
                    "/rest/api/3/search/jql API. A full migration guideline is available at "
                    "https://developer.atlassian.com/changelog/#CHANGE-2046"
                ],
            )
        p = self._search_params(request)
        jql = str(p.get("jql") or "")
        start = max(0, _int(p.get("startAt"), 0, "startAt"))
        limit = max(0, min(_int(p.get("maxResults"), 50, "maxResults"), 1000))
        wanted = _as_list(p.get("fields")) or ["*navigable"]
        expand = set(_as_list(p.get("expand")))
        hits = self.search(jql, user)
        page = hits[start : start + limit]
        return {
            "expand": "schema,names",
            "startAt": start,
            "maxResults": limit,
            "total": len(hits),
            "issues": [self._render_issue(x, api, user, wanted, expand) for x in page],
        }

    def _get_issue(self, request: Request, api: str, user: JiraUser) -> Json:
        issue = self._get(request.path_params["key"])
        q = request.query_params
        wanted = q.getlist("fields") or ["*all"]
        expand = set(_as_list(q.get("expand")))
        return self._render_issue(issue, api, user, wanted, expand)

    def _create_issue(self, request: Request, api: str, user: JiraUser) -> tuple[Json, int]:
        body = request.state.body
        if not isinstance(body, dict) or not isinstance(body.get("fields", {}), dict):
            raise JiraError(400, ["Request body must contain 'fields' as a JSON object."])
        values = dict(body.get("fields") or {})
        if body.get("update"):
            for ref, ops in body["update"].items():
                for op in ops if isinstance(ops, list) else []:
                    if isinstance(op, dict) and "set" in op:
                        values[ref] = op["set"]
        issue = self._create(values, user, api)
        return {
            "id": issue.id,
            "key": issue.key,
            "self": f"{BASE}/rest/api/{api}/issue/{issue.id}",
        }, 201

    def _edit_issue(self, request: Request, api: str, user: JiraUser) -> Json | None:
        issue = self._get(request.path_params["key"])
        body = request.state.body
        if not isinstance(body, dict):
            raise JiraError(400, ["Can not deserialize the request body."])
        self._edit(issue, dict(body.get("fields") or {}), dict(body.get("update") or {}), user, api)
        # Cloud only: "returnIssue" answers 200 with the issue in GET issue's form (every
        # field, ``expand`` as GET issue takes it). Data Center has no such parameter: 204.
        if self.mode == "cloud" and request.query_params.get("returnIssue") == "true":
            expand = set(_as_list(request.query_params.get("expand")))
            return self._render_issue(issue, api, user, ["*all"], expand)
        return None

    def _changelog(self, request: Request, api: str, user: JiraUser) -> Json:
        if self.mode != "cloud":
            raise JiraError(404, ["Not found"])
        issue = self._get(request.path_params["key"])
        q = request.query_params
        start = max(0, _int(q.get("startAt"), 0, "startAt"))
        limit = max(1, min(_int(q.get("maxResults"), 100, "maxResults"), 100))
        values = [self._render_history(h, user) for h in issue.histories[start : start + limit]]
        base = f"{BASE}/rest/api/{api}/issue/{issue.key}/changelog"
        out: Json = {
            "self": f"{base}?maxResults={limit}&startAt={start}",
            "maxResults": limit,
            "startAt": start,
            "total": len(issue.histories),
            "isLast": start + limit >= len(issue.histories),
            "values": values,
        }
        if not out["isLast"]:
            out["nextPage"] = f"{base}?maxResults={limit}&startAt={start + limit}"
        return out

    def _transitions(self, request: Request, api: str, user: JiraUser) -> Json:
        issue = self._get(request.path_params["key"])
        q = request.query_params
        expand = set(_as_list(q.get("expand")))
        transitions = self._render_transitions(
            issue, api, user, fields="transitions.fields" in expand, only=q.get("transitionId")
        )
        return {"expand": "transitions", "transitions": transitions}

    def _post_transition(self, request: Request, api: str, user: JiraUser) -> None:
        issue = self._get(request.path_params["key"])
        body = request.state.body
        tid = (
            str(((body or {}).get("transition") or {}).get("id", ""))
            if isinstance(body, dict)
            else ""
        )
        available = self._workflow_of(issue).available(issue.fields["status"]["name"])
        match = [t for t in available if t.id == tid]
        if not match:
            raise JiraError(400, [f"Transition id '{tid}' is not valid for this issue."])
        self._do_transition(
            issue,
            match[0],
            dict(body.get("fields") or {}),
            dict(body.get("update") or {}),
            user,
            api,
        )

    def _comments(self, request: Request, api: str, user: JiraUser) -> Json:
        issue = self._get(request.path_params["key"])
        q = request.query_params
        start = max(0, _int(q.get("startAt"), 0, "startAt"))
        limit = max(1, min(_int(q.get("maxResults"), 5000, "maxResults"), 5000))
        ordered = issue.comments[::-1] if q.get("orderBy", "").startswith("-") else issue.comments
        page = ordered[start : start + limit]
        return {
            "startAt": start,
            "maxResults": limit,
            "total": len(issue.comments),
            "comments": [self._render_comment(c, api, user) for c in page],
        }

    def _post_comment(self, request: Request, api: str, user: JiraUser) -> tuple[Json, int]:
        issue = self._get(request.path_params["key"])
        body = request.state.body
        comment = self._add_comment(
            issue, (body or {}).get("body") if isinstance(body, dict) else None, user, api
        )
        return self._render_comment(comment, api, user), 201

    def _editmeta_route(self, request: Request, api: str, user: JiraUser) -> Json:
        return self._editmeta(self._get(request.path_params["key"]), api)

    def _createmeta(self, request: Request, api: str, user: JiraUser) -> Json:
        if self.mode != "cloud":
            raise JiraError(404, ["Not found"])  # removed in Data Center 9.0
        q = request.query_params
        keys = {k for v in q.getlist("projectKeys") for k in v.split(",") if k}
        ids = {k for v in q.getlist("projectIds") for k in v.split(",") if k}
        type_names = {k for v in q.getlist("issuetypeNames") for k in v.split(",") if k}
        type_ids = {k for v in q.getlist("issuetypeIds") for k in v.split(",") if k}
        with_fields = "projects.issuetypes.fields" in (q.get("expand") or "")
        projects = []
        for proj in self.projects.values():
            if (keys or ids) and proj.key not in keys and proj.raw["id"] not in ids:
                continue
            types = []
            for tid in proj.issue_types:
                t = self.issue_types[tid]
                if (type_names or type_ids) and t["name"] not in type_names and tid not in type_ids:
                    continue
                entry = {**copy.deepcopy(t), "expand": "fields"}
                if with_fields:
                    entry["fields"] = {
                        m["key"]: m for m in self._create_fields(proj, tid, paged=False)
                    }
                types.append(entry)
            projects.append(
                {
                    "expand": "issuetypes",
                    "self": proj.raw["self"],
                    "id": proj.raw["id"],
                    "key": proj.key,
                    "name": proj.raw["name"],
                    "avatarUrls": proj.raw["avatarUrls"],
                    "issuetypes": types,
                }
            )
        return {"expand": "projects", "projects": projects}

    def _paged(self, request: Request, items: list[Json], key: str) -> Json:
        q = request.query_params
        start = max(0, _int(q.get("startAt"), 0, "startAt"))
        limit = max(1, min(_int(q.get("maxResults"), 50, "maxResults"), 200))
        page = items[start : start + limit]
        out: Json = {"maxResults": limit, "startAt": start, "total": len(items)}
        if self.mode == "dc":
            out["isLast"] = start + limit >= len(items)
        out[key] = page
        return out

    def _createmeta_types(self, request: Request, api: str, user: JiraUser) -> Json:
        proj = self.project(request.path_params["project"])
        if proj is None:
            raise JiraError(404, ["No project could be found with key or id."])
        types = [copy.deepcopy(self.issue_types[t]) for t in proj.issue_types]
        return self._paged(request, types, "issueTypes" if self.mode == "cloud" else "values")

    def _createmeta_fields(self, request: Request, api: str, user: JiraUser) -> Json:
        proj = self.project(request.path_params["project"])
        tid = request.path_params["type"]
        if proj is None or tid not in proj.issue_types:
            raise JiraError(404, ["No project or issue type could be found."])
        fields = self._create_fields(proj, tid, paged=True)
        return self._paged(request, fields, "fields" if self.mode == "cloud" else "values")

    def _user_search(self, request: Request, api: str, user: JiraUser) -> list[Json]:
        q = request.query_params
        if self.mode == "cloud":
            if "accountId" in q:
                found = self.users.get(q["accountId"])
                return [found.json(self.mode)] if found else []
            term = q.get("query")
        else:
            term = q.get("username") or q.get("query")
        if term is None:
            raise JiraError(
                400,
                ["The query parameter 'query' is required."]
                if self.mode == "cloud"
                else ["The username query parameter was not provided"],
            )
        low = term.casefold()
        hits = [
            u
            for u in self.users.values()
            if low in u.display_name.casefold()
            or low in (u.email or "").casefold()
            or low in u.name.casefold()
            or term == "."
            or term == ""
        ]
        start = max(0, _int(q.get("startAt"), 0, "startAt"))
        limit = max(1, min(_int(q.get("maxResults"), 50, "maxResults"), 1000))
        return [u.json(self.mode) for u in hits[start : start + limit]]

    def _users_search(self, request: Request, api: str, user: JiraUser) -> list[Json]:
        """Cloud's ``/users/search`` (and ``/users``): every account, active or not, a page
        at a time (``startAt``, ``maxResults`` up to 1000). Data Center has no such list."""
        if self.mode != "cloud":
            raise JiraError(404, ["Not found"])
        q = request.query_params
        start = max(0, _int(q.get("startAt"), 0, "startAt"))
        limit = max(0, min(_int(q.get("maxResults"), 50, "maxResults"), 1000))
        people = list(self.users.values())
        return [u.json(self.mode) for u in people[start : start + limit]]

    def _assignable_search(self, request: Request, api: str, user: JiraUser) -> list[Json]:
        """The active users who can be assigned issues of ``project`` (or of ``issueKey``),
        filtered by ``query`` (Cloud) or ``username`` (both), a page at a time."""
        q = request.query_params
        proj = None
        if q.get("issueKey") or q.get("issueId"):
            proj = self._project_of(self._get(q.get("issueKey") or q.get("issueId") or ""))
        elif q.get("project"):
            proj = self.project(q["project"])
            if proj is None:
                raise JiraError(404, [f"Project '{q['project']}' not found."])
        if proj is None:
            raise JiraError(
                400,
                ["A project, issue key or issue id is required."]
                if self.mode == "cloud"
                else ["The parameters 'project', 'issueKey' or 'issueId' must be provided."],
            )
        term = (q.get("query") if self.mode == "cloud" else None) or q.get("username") or ""
        low = term.casefold()
        hits = [
            u
            for u in self.users.values()
            if u.active
            and (
                term in ("", ".")
                or low in u.display_name.casefold()
                or low in (u.email or "").casefold()
                or low in u.name.casefold()
            )
        ]
        start = max(0, _int(q.get("startAt"), 0, "startAt"))
        limit = max(0, min(_int(q.get("maxResults"), 50, "maxResults"), 1000))
        return [u.json(self.mode) for u in hits[start : start + limit]]

    def _user(self, request: Request, api: str, user: JiraUser) -> Json:
        q = request.query_params
        ref = q.get("accountId") if self.mode == "cloud" else (q.get("username") or q.get("key"))
        found = self.users.get(ref or "") if self.mode == "cloud" else self.find_user(ref)
        if found is None:
            raise JiraError(
                404, ["Specified user does not exist or you do not have required permissions"]
            )
        return found.json(self.mode)

    def _status_list(self, request: Request, api: str, user: JiraUser) -> list[Json]:
        return [copy.deepcopy(s) for s in self.statuses.values()]

    def _projects(self, request: Request, api: str, user: JiraUser) -> list[Json]:
        expand = set(_as_list(request.query_params.get("expand")))
        return [self._project_json(p, expand) for p in self.projects.values()]

    def _project_route(self, request: Request, api: str, user: JiraUser) -> Json:
        proj = self.project(request.path_params["project"])
        if proj is None:
            raise JiraError(
                404,
                ["No project could be found with key '{}'.".format(request.path_params["project"])],
            )
        return self._project_json(
            proj, set(_as_list(request.query_params.get("expand"))) | {"lead"}
        )

    def _issue_types(self, request: Request, api: str, user: JiraUser) -> list[Json]:
        return [copy.deepcopy(t) for t in self.issue_types.values()]

    def _priorities(self, request: Request, api: str, user: JiraUser) -> list[Json]:
        return [copy.deepcopy(p) for p in self.priorities.values()]

    # -- convenience ------------------------------------------------------------------------

    def rate_limit(self, requests: int, per: float = 1.0) -> None:
        """Throttle every credential to ``requests`` per ``per`` seconds, with Jira's headers."""

        def headers(limit: int, remaining: int, reset_in: float) -> dict[str, str]:
            reset = format_jira_time(self._now() + timedelta(seconds=reset_in), "UTC")
            out = {
                "X-RateLimit-Limit": str(limit),
                "X-RateLimit-Remaining": str(remaining),
                "X-RateLimit-Reset": reset.replace("+0000", "Z"),
            }
            if remaining == 0:
                out["RateLimit-Reason"] = "jira-burst-based"
            return out

        self.controls.rate_limit(requests, per, headers=headers)


# --------------------------------------------------------------------------- module helpers

_SYSTEM_FIELDS: list[tuple[str, str, Json, bool]] = [
    ("summary", "Summary", {"type": "string", "system": "summary"}, True),
    ("description", "Description", {"type": "string", "system": "description"}, True),
    ("issuetype", "Issue Type", {"type": "issuetype", "system": "issuetype"}, True),
    ("project", "Project", {"type": "project", "system": "project"}, True),
    ("status", "Status", {"type": "status", "system": "status"}, True),
    ("priority", "Priority", {"type": "priority", "system": "priority"}, True),
    ("assignee", "Assignee", {"type": "user", "system": "assignee"}, True),
    ("reporter", "Reporter", {"type": "user", "system": "reporter"}, True),
    ("creator", "Creator", {"type": "user", "system": "creator"}, True),
    ("labels", "Labels", {"type": "array", "items": "string", "system": "labels"}, True),
    ("created", "Created", {"type": "datetime", "system": "created"}, True),
    ("updated", "Updated", {"type": "datetime", "system": "updated"}, True),
    ("duedate", "Due date", {"type": "date", "system": "duedate"}, True),
    ("resolution", "Resolution", {"type": "resolution", "system": "resolution"}, True),
    ("resolutiondate", "Resolved", {"type": "datetime", "system": "resolutiondate"}, True),
    (
        "statuscategorychangedate",
        "Status Category Changed",
        {"type": "datetime", "system": "statuscategorychangedate"},
        True,
    ),
    ("environment", "Environment", {"type": "string", "system": "environment"}, True),
    ("comment", "Comment", {"type": "comments-page", "system": "comment"}, False),
    ("components", "Components", {"type": "array", "items": "component"}, True),
    ("fixVersions", "Fix versions", {"type": "array", "items": "version"}, True),
    ("versions", "Affects versions", {"type": "array", "items": "version"}, True),
    ("attachment", "Attachment", {"type": "array", "items": "attachment"}, False),
    ("issuelinks", "Linked Issues", {"type": "array", "items": "issuelinks"}, True),
    ("subtasks", "Sub-tasks", {"type": "array", "items": "issuelinks"}, True),
    ("votes", "Votes", {"type": "votes"}, True),
    ("watches", "Watchers", {"type": "watches"}, True),
    ("worklog", "Log Work", {"type": "array", "items": "worklog"}, False),
    ("timetracking", "Time tracking", {"type": "timetracking"}, False),
    ("progress", "Progress", {"type": "progress"}, True),
    ("aggregateprogress", "Σ Progress", {"type": "progress"}, True),
    ("timespent", "Time Spent", {"type": "number"}, True),
    ("timeestimate", "Remaining Estimate", {"type": "number"}, True),
    ("timeoriginalestimate", "Original estimate", {"type": "number"}, True),
    ("aggregatetimespent", "Σ Time Spent", {"type": "number"}, True),
    ("aggregatetimeestimate", "Σ Remaining Estimate", {"type": "number"}, True),
    ("aggregatetimeoriginalestimate", "Σ Original Estimate", {"type": "number"}, True),
    ("workratio", "Work Ratio", {"type": "number"}, True),
    ("lastViewed", "Last Viewed", {"type": "datetime"}, True),
]
_SYSTEM_KINDS = {
    "summary": "summary",
    "description": "textarea",
    "environment": "textarea",
    "issuetype": "issuetype",
    "project": "project",
    "status": "status",
    "priority": "priority",
    "assignee": "user",
    "reporter": "user",
    "creator": "user",
    "labels": "labels",
    "created": "datetime",
    "updated": "datetime",
    "resolutiondate": "datetime",
    "statuscategorychangedate": "datetime",
    "duedate": "duedate",
    "resolution": "resolution",
}
_EDITABLE = (
    "summary",
    "description",
    "environment",
    "priority",
    "assignee",
    "reporter",
    "labels",
    "duedate",
)
_DATETIME_FIELDS = frozenset(
    {"created", "updated", "resolutiondate", "statuscategorychangedate", "lastViewed"}
)
_VIRTUAL = frozenset({"comment", "parent"})
"""Fields an issue shows only when it has them (a comment list is added to every issue)."""
_JQL_NAMES = {
    "issuekey": "key",
    "type": "issuetype",
    "resolved": "resolutiondate",
    "due": "duedate",
    "createddate": "created",
    "updateddate": "updated",
}


def _field_json(fid: str, name: str, schema: Json, *, custom: bool, navigable: bool = True) -> Json:
    clauses = [fid]
    if custom:
        number = fid.rpartition("_")[2]
        clauses = [f"cf[{number}]", name]
    elif fid in ("issuetype", "resolutiondate", "duedate", "created", "updated"):
        clauses.extend(k for k, v in _JQL_NAMES.items() if v == fid)
    out: Json = {
        "id": fid,
        "key": fid,
        "name": name,
        "custom": custom,
        "orderable": fid not in ("status", "created", "updated", "creator", "resolutiondate"),
        "navigable": navigable,
        "searchable": True,
        "clauseNames": clauses,
        "schema": schema,
    }
    return out


def _empty_extras(key: str) -> Json:
    """The fields every Jira issue carries even when nobody uses them."""
    nothing = {"progress": 0, "total": 0}
    return {
        **{f: [] for f in ("components", "fixVersions", "versions", "issuelinks", "subtasks")},
        "attachment": [],
        "votes": {"self": f"{BASE}/rest/api/2/issue/{key}/votes", "votes": 0, "hasVoted": False},
        "watches": {
            "self": f"{BASE}/rest/api/2/issue/{key}/watchers",
            "watchCount": 1,
            "isWatching": True,
        },
        "worklog": {"startAt": 0, "maxResults": 20, "total": 0, "worklogs": []},
        "timetracking": {},
        "progress": dict(nothing),
        "aggregateprogress": dict(nothing),
        **dict.fromkeys(
            (
                "timespent",
                "timeestimate",
                "timeoriginalestimate",
                "aggregatetimespent",
                "aggregatetimeestimate",
                "aggregatetimeoriginalestimate",
                "lastViewed",
            )
        ),
        "workratio": -1,
    }


def _avatars(kind: str, ident: str) -> dict[str, str]:
    return {
        size: f"{BASE}/secure/{kind}avatar?size={label}&pid={ident}"
        for size, label in (
            ("48x48", "large"),
            ("24x24", "small"),
            ("16x16", "xsmall"),
            ("32x32", "medium"),
        )
    }


def _project_ref(raw: Json) -> Json:
    keep = ("self", "id", "key", "name", "projectTypeKey", "simplified", "avatarUrls")
    return {k: copy.deepcopy(raw[k]) for k in keep if k in raw}


def _named(table: Mapping[str, Json], name: str) -> Json | None:
    low = name.casefold()
    for item in table.values():
        if str(item.get("name", "")).casefold() == low or item.get("id") == name:
            return item
    for item in table.values():
        if str(item.get("untranslatedName", "")).casefold() == low:
            return item
    return None


def _get(value: Any, key: str) -> Any:
    return value.get(key) if isinstance(value, dict) else None


def _user_ref(value: Any) -> str:
    return str(_get(value, "name") or _get(value, "accountId") or value)


def _display(value: Any) -> str | None:
    """How a changelog shows a value (``fromString``/``toString``)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else str(value)
    if isinstance(value, list):
        return " ".join(_display(v) or "" for v in value) if value else ""
    if _is_adf(value):
        return adf_to_text(value)
    if isinstance(value, dict):
        for key in ("displayName", "value", "name", "key"):
            if key in value:
                return str(value[key])
        return json.dumps(value)
    return str(value)


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _key_order(key: str) -> tuple[str, int]:
    project, _, number = key.rpartition("-")
    return project, int(number) if number.isdigit() else 0


def _path(workflow: Workflow, start: str, target: str) -> list[Transition] | None:
    """The shortest chain of transitions from ``start`` to ``target`` (breadth first)."""
    low = target.casefold()
    frontier: list[tuple[str, list[Transition]]] = [(start, [])]
    seen = {start.casefold()}
    while frontier:
        status, path = frontier.pop(0)
        if status.casefold() == low:
            return path
        for t in workflow.available(status):
            if t.to.casefold() not in seen:
                seen.add(t.to.casefold())
                frontier.append((t.to, [*path, t]))
    return None


def _rebase(value: Json, base: str) -> Json:
    out: Json = json.loads(json.dumps(value).replace(BASE, base))
    return out


def _json(content: Any, base: str, status: int = 200) -> Response:
    text = json.dumps(content, ensure_ascii=False, separators=(",", ":")).replace(BASE, base)
    return Response(text, status, media_type="application/json;charset=UTF-8")


def _error_body(status: int, message: str) -> tuple[bytes, str]:
    return json.dumps({"errorMessages": [message], "errors": {}}).encode(), "application/json"


async def _body(request: Request) -> Any:
    if request.method not in ("POST", "PUT"):
        return None
    raw = await request.body()
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise JiraError(400, ["Unexpected character in the request body: not JSON."]) from None


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    return [p.strip() for item in items for p in str(item).split(",") if p.strip()]


def _int(value: Any, default: int, name: str) -> int:
    if value in (None, ""):
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise JiraError(400, [f"The value '{value}' is not a valid number for {name}."]) from None


def _token(offset: int, digest: str) -> str:
    raw = json.dumps({"o": offset, "q": digest}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _read_token(token: str, digest: str) -> int:
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if data["q"] != digest:
            raise ValueError
        return int(data["o"])
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise JiraError(400, ["The provided next page token is invalid or expired."]) from None


# --------------------------------------------------------------------------- JQL

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<op>!=|>=|<=|!~|=|>|<|~)
      | (?P<punct>[(),])
      | (?P<word>[^\s=!<>~(),"']+)
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "in", "is", "empty", "null", "order", "by", "asc", "desc"}


@dataclass(frozen=True)
class _Tok:
    kind: str  # str | op | punct | word
    text: str
    pos: int

    def kw(self, *words: str) -> bool:
        return self.kind == "word" and self.text.casefold() in words


@dataclass(frozen=True)
class _Value:
    text: str
    quoted: bool = False
    func: str | None = None
    args: tuple[str, ...] = ()


class _Node:
    def eval(self, issue: _Issue, ctx: _Context) -> bool:
        raise NotImplementedError


@dataclass(frozen=True)
class _Bool(_Node):
    op: str
    parts: tuple[_Node, ...]

    def eval(self, issue: _Issue, ctx: _Context) -> bool:
        if self.op == "not":
            return not self.parts[0].eval(issue, ctx)
        results = (p.eval(issue, ctx) for p in self.parts)
        return all(results) if self.op == "and" else any(results)


@dataclass(frozen=True)
class _Clause(_Node):
    field: str
    op: str  # = != > >= < <= ~ !~ in "not in" is "is not"
    values: tuple[_Value, ...]

    def eval(self, issue: _Issue, ctx: _Context) -> bool:
        return ctx.match(issue, self)


@dataclass(frozen=True)
class Jql:
    where: _Node | None
    order: list[tuple[str, bool]]  # (field, descending)


def _tokens(text: str) -> list[_Tok]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise JqlError(
                f"Error in the JQL Query: The character '{text[pos]}' is a reserved "
                f"JQL character. (line 1, character {pos + 1})"
            )
        kind = m.lastgroup or "word"
        out.append(_Tok(kind, m.group(kind), m.start(kind)))
        pos = m.end()
    return out


def _unquote(token: str) -> str:
    return re.sub(r"\\(.)", r"\1", token[1:-1])


def parse_jql(text: str) -> Jql:
    """Parse the JQL subset the emulator understands (raises JqlError as Jira words it)."""
    toks = _tokens(text)
    pos = 0

    def peek() -> _Tok | None:
        return toks[pos] if pos < len(toks) else None

    def take() -> _Tok:
        nonlocal pos
        if pos >= len(toks):
            raise JqlError(
                "Error in the JQL Query: The query ended unexpectedly. (line 1, "
                f"character {len(text) + 1})"
            )
        pos += 1
        return toks[pos - 1]

    def fail(tok: _Tok, expected: str) -> JqlError:
        return JqlError(
            f"Error in the JQL Query: Expecting {expected} but got '{tok.text}'. "
            f"(line 1, character {tok.pos + 1})"
        )

    def or_expr() -> _Node:
        parts = [and_expr()]
        while (t := peek()) is not None and t.kw("or"):
            take()
            parts.append(and_expr())
        return parts[0] if len(parts) == 1 else _Bool("or", tuple(parts))

    def and_expr() -> _Node:
        parts = [not_expr()]
        while (t := peek()) is not None and t.kw("and"):
            take()
            parts.append(not_expr())
        return parts[0] if len(parts) == 1 else _Bool("and", tuple(parts))

    def not_expr() -> _Node:
        t = take()
        if t.kw("not"):
            return _Bool("not", (not_expr(),))
        if t.text == "(" and t.kind == "punct":
            inner = or_expr()
            close = take()
            if close.text != ")":
                raise fail(close, "')'")
            return inner
        if t.kind not in ("word", "str") or (t.kind == "word" and t.text.casefold() in _KEYWORDS):
            raise fail(t, "a field name")
        name = _unquote(t.text) if t.kind == "str" else t.text
        op_tok = take()
        if op_tok.kind == "op":
            return _Clause(name, op_tok.text, (value(),))
        if op_tok.kw("in"):
            return _Clause(name, "in", values())
        if op_tok.kw("not"):
            nxt = take()
            if not nxt.kw("in"):
                raise fail(nxt, "'in'")
            return _Clause(name, "not in", values())
        if op_tok.kw("is"):
            negate = (t2 := peek()) is not None and t2.kw("not")
            if negate:
                take()
            empty = take()
            if not empty.kw("empty", "null"):
                raise fail(empty, "EMPTY or NULL")
            return _Clause(name, "is not" if negate else "is", ())
        raise fail(op_tok, "operator")

    def value() -> _Value:
        t = take()
        if t.kind == "str":
            return _Value(_unquote(t.text), quoted=True)
        if t.kind != "word" or t.text.casefold() in ("and", "or", "order"):
            raise fail(t, "either a value, 'EMPTY' or a function")
        if (n := peek()) is not None and n.text == "(":
            take()
            args: list[str] = []
            while (a := take()).text != ")":
                if a.text != ",":
                    args.append(_unquote(a.text) if a.kind == "str" else a.text)
            return _Value(t.text, func=t.text.casefold(), args=tuple(args))
        if t.kw("empty", "null"):
            return _Value(t.text, func="empty")
        return _Value(t.text)

    def values() -> tuple[_Value, ...]:
        """``(a, b, ...)``, or a function that returns a list: ``subTaskIssueTypes()``."""
        f = peek()
        if f is not None and f.kind == "word" and pos + 1 < len(toks) and toks[pos + 1].text == "(":
            return (value(),)
        t = take()
        if t.text != "(":
            raise fail(t, "'('")
        out = [value()]
        while (t := take()).text == ",":
            out.append(value())
        if t.text != ")":
            raise fail(t, "')'")
        return tuple(out)

    where: _Node | None = None
    if peek() is not None and not peek().kw("order"):  # type: ignore[union-attr]
        where = or_expr()
    order: list[tuple[str, bool]] = []
    if (t := peek()) is not None:
        if not t.kw("order"):
            raise fail(t, "either 'OR' or 'AND'")
        take()
        if not take().kw("by"):
            raise fail(toks[pos - 1], "'by'")
        while True:
            f = take()
            name = _unquote(f.text) if f.kind == "str" else f.text
            desc = False
            if (d := peek()) is not None and d.kw("asc", "desc"):
                desc = take().text.casefold() == "desc"
            order.append((name, desc))
            if (c := peek()) is None:
                break
            if c.text != ",":
                raise fail(c, "','")
            take()
    return Jql(where, order)


_ISSUE_TYPE_FUNCTIONS = {
    "subtaskissuetypes": "subTaskIssueTypes",
    "standardissuetypes": "standardIssueTypes",
}
_PERIOD = re.compile(r"^([+-])?\s*((?:\d+\s*[wdhm]\s*)+)$", re.I)
_DATE_FORMATS = ("%Y/%m/%d %H:%M", "%Y-%m-%d %H:%M", "%Y/%m/%d", "%Y-%m-%d")
_DATE_HELP = (
    "Valid formats include: 'yyyy/MM/dd HH:mm', 'yyyy-MM-dd HH:mm', 'yyyy/MM/dd', "
    "'yyyy-MM-dd', or a period format e.g. '-5d', '4w 2d'."
)


class _Context:
    """Evaluates clauses for one search: field lookup, user time zone, value coercion."""

    def __init__(self, emulator: JiraEmulator, user: JiraUser) -> None:
        self.em = emulator
        self.user = user
        self.zone = ZoneInfo(user.time_zone)
        self.now = emulator._now()
        self._fields: dict[str, str] = {}

    def field(self, name: str) -> str:
        low = _JQL_NAMES.get(name.casefold(), name.casefold())
        if low in ("key", "id", "text", "statuscategory"):
            return low
        if low not in self._fields:
            fid = self.em.field_id(low)
            if fid is None or (fid.startswith("customfield_") and low == fid):
                raise JqlError(
                    f"Field '{name}' does not exist or you do not have permission to view it."
                )
            self._fields[low] = fid
        return self._fields[low]

    def kind(self, fid: str) -> str:
        if fid in ("key", "id", "text", "statuscategory"):
            return fid
        return self.em._kind(fid)

    def check_functions(self, node: _Node) -> None:
        """Run every function of the query once: Jira validates them before searching, so an
        invalid one is an error even where no issue would be compared."""
        if isinstance(node, _Bool):
            for part in node.parts:
                self.check_functions(part)
        elif isinstance(node, _Clause):
            for v in node.values:
                if v.func not in (None, "empty"):
                    fid = self.field(node.field)
                    self._coerce(v, fid, self.kind(fid))

    # -- matching

    def match(self, issue: _Issue, clause: _Clause) -> bool:
        fid = self.field(clause.field)
        kind = self.kind(fid)
        op = clause.op
        self._check_operator(clause, fid, kind)
        actual = self._actual(issue, fid, kind)
        if op in ("is", "is not"):
            empty = actual in (None, "", [])
            return empty if op == "is" else not empty
        if kind in ("textarea", "text", "summary", "url", "textall"):
            return self._text(actual, clause.values[0].text) == (op == "~")
        wanted = [self._coerce(v, fid, kind) for v in clause.values]
        if op in ("=", "in", "!=", "not in"):
            positive = op in ("=", "in")
            if any(w is _EMPTY for w in wanted):
                empty = actual in (None, "", [])
                if positive and empty:
                    return True
                wanted = [w for w in wanted if w is not _EMPTY]
                if not positive and empty:
                    return False
            if actual in (None, "", []):
                return False
            values = actual if isinstance(actual, list) else [actual]
            hit = any(self._equal(a, w, kind) for a in values for w in wanted)
            return hit if positive else not hit
        if actual in (None, "", []):
            return False
        target = wanted[0]
        if target is _EMPTY:
            return False
        a, b = self._comparable(actual, kind), self._comparable(target, kind)
        if a is None or b is None:
            return False
        return bool({">": a > b, ">=": a >= b, "<": a < b, "<=": a <= b}[op])

    def _check_operator(self, clause: _Clause, fid: str, kind: str) -> None:
        op = clause.op
        text_kinds = ("textarea", "text", "summary", "url", "textall")
        ordered = ("number", "date", "duedate", "datetime", "key", "id")
        allowed = {"is", "is not"}
        if kind in text_kinds:
            allowed |= {"~", "!~"}
        else:
            allowed |= {"=", "!=", "in", "not in"}
        if kind in ordered:
            allowed |= {">", ">=", "<", "<="}
        if op not in allowed:
            raise JqlError(
                f"The operator '{op.upper()}' is not supported by the '{clause.field}' field."
            )

    def _actual(self, issue: _Issue, fid: str, kind: str) -> Any:
        if fid == "key":
            return issue.key
        if fid == "id":
            return int(issue.id)
        if fid == "text":
            parts = [issue.fields.get("summary"), adf_to_text(issue.fields.get("description"))]
            return " ".join(p for p in parts if p)
        if fid == "statuscategory":
            return issue.fields["status"]["statusCategory"]
        value = issue.fields.get(fid)
        if kind == "textarea":
            return adf_to_text(value)
        return value

    @staticmethod
    def _text(actual: Any, query: str) -> bool:
        """Jira's ``~``: every word (``*`` a prefix wildcard) present; quoted: the phrase."""
        if not isinstance(actual, str):
            return False
        words = re.findall(r"\w+", actual.casefold())
        q = query.strip()
        if len(q) >= 2 and q[0] == q[-1] == '"':
            phrase = re.findall(r"\w+", q.casefold())
            n = len(phrase)
            return n > 0 and any(words[i : i + n] == phrase for i in range(len(words) - n + 1))
        for term in re.findall(r"[\w*]+", q.casefold()):
            if term.endswith("*"):
                if not any(w.startswith(term.rstrip("*")) for w in words):
                    return False
            elif term not in words:
                return False
        return True

    def _coerce(self, v: _Value, fid: str, kind: str) -> Any:
        if v.func == "empty":
            return _EMPTY
        if v.func is not None:
            if v.func == "currentuser":
                return self.user
            if v.func == "now":
                return self.now
            if v.func in _ISSUE_TYPE_FUNCTIONS:
                return self._issue_type_function(v, fid)
            if v.func in ("startofday", "endofday"):
                day = self.now.astimezone(self.zone).replace(
                    hour=0, minute=0, second=0, microsecond=0
                )
                return day if v.func == "startofday" else day + timedelta(days=1, milliseconds=-1)
            raise JqlError(f"Unable to find JQL function '{v.text}()'.")
        if kind in ("date", "duedate", "datetime"):
            return self._date(v.text, fid)
        if kind == "number":
            try:
                return float(v.text)
            except ValueError:
                raise JqlError(
                    f"The value '{v.text}' is not a valid number for field "
                    f"'{self.em.fields[fid]['name']}'."
                ) from None
        if kind == "user":
            user = self.em.find_user(v.text)
            if user is None:
                raise JqlError(
                    f"The value '{v.text}' does not exist for the field "
                    f"'{self.em.fields[fid]['name'].lower()}'."
                )
            return user
        if kind in ("project", "status", "issuetype", "priority", "resolution"):
            ids = self._ids(kind, v.text)
            if not ids:
                raise JqlError(f"The value '{v.text}' does not exist for the field '{kind}'.")
            return ids
        if kind == "key" and not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*-\d+", v.text):
            raise JqlError(f"The issue key '{v.text}' for field 'key' is invalid.")
        if kind == "key" and v.text.upper() not in self.em._by_key:
            # Jira validates the keys a query names: a deleted issue's key is an error.
            raise JqlError(f"An issue with key '{v.text}' does not exist for field 'key'.")
        if kind == "id":
            return int(v.text) if v.text.isdigit() else v.text
        return v.text

    def _issue_type_function(self, v: _Value, fid: str) -> frozenset[str]:
        """``subTaskIssueTypes()`` / ``standardIssueTypes()``: the ids of the issue types that
        are (are not) sub-task types. As in Jira, the first is refused while the site has
        sub-tasks disabled (here: while no sub-task issue type exists)."""
        name = _ISSUE_TYPE_FUNCTIONS[v.func or ""]
        if fid != "issuetype":
            field = self.em.fields.get(fid, {}).get("name", fid)
            raise JqlError(
                f"A value provided by the function '{name}' is invalid for the field "
                f"'{str(field).lower()}'."
            )
        subtask = v.func == "subtaskissuetypes"
        types = self.em.issue_types
        if subtask and not any(t.get("subtask") for t in types.values()):
            raise JqlError(f"Function '{name}' is invalid as sub-tasks are currently disabled.")
        return frozenset(i for i, t in types.items() if bool(t.get("subtask")) == subtask)

    def _ids(self, kind: str, text: str) -> frozenset[str]:
        """The ids of the statuses (issue types, projects...) a JQL value names."""
        em = self.em
        low = text.casefold()
        if kind == "project":
            return frozenset(
                str(p.raw["id"])
                for p in em.projects.values()
                if low in (p.key.casefold(), str(p.raw["name"]).casefold(), str(p.raw["id"]))
            )
        table = {
            "status": em.statuses,
            "issuetype": em.issue_types,
            "priority": em.priorities,
            "resolution": em.resolutions,
        }[kind]
        return frozenset(
            ident
            for ident, item in table.items()
            if low == ident
            or low in (str(item.get(k, "")).casefold() for k in ("name", "untranslatedName"))
        )

    def _date(self, text: str, fid: str) -> datetime:
        s = text.strip()
        if re.fullmatch(r"-?\d{10,}", s):
            return datetime.fromtimestamp(int(s) / 1000, UTC)
        m = _PERIOD.match(s)
        if m:
            delta = timedelta()
            for amount, unit in re.findall(r"(\d+)\s*([wdhm])", m.group(2).lower()):
                delta += timedelta(
                    **{{"w": "weeks", "d": "days", "h": "hours", "m": "minutes"}[unit]: int(amount)}
                )
            at = self.now - delta if m.group(1) == "-" else self.now + delta
            return at.replace(second=0, microsecond=0)
        for fmt in _DATE_FORMATS:
            try:
                return datetime.strptime(s, fmt).replace(tzinfo=self.zone)
            except ValueError:
                continue
        raise JqlError(
            f"Date value '{text}' for field '{self.em.fields[fid]['name'].lower()}' "
            f"is invalid. {_DATE_HELP}"
        )

    def _equal(self, actual: Any, wanted: Any, kind: str) -> bool:
        if kind == "datetime":  # JQL has minute precision: "=" means "in that minute"
            a, w = self._comparable(actual, kind), self._comparable(wanted, kind)
            if a is None or w is None:
                return False
            return bool(a.replace(second=0, microsecond=0) == w.replace(second=0, microsecond=0))
        if kind in ("date", "duedate"):
            return bool(self._comparable(actual, kind) == self._comparable(wanted, kind))
        if kind == "number":
            return bool(float(actual) == wanted)
        if kind == "user":
            ident = "accountId" if self.em.mode == "cloud" else "name"
            return isinstance(actual, dict) and actual.get(ident) == (
                wanted.account_id if self.em.mode == "cloud" else wanted.name
            )
        if kind in ("key",):
            return str(actual).upper() == str(wanted).upper()
        if kind == "id":
            return bool(actual == wanted)
        if kind == "labels":
            return str(actual) == str(wanted)
        if isinstance(wanted, frozenset):  # a name stands for every object of that name
            return isinstance(actual, dict) and str(actual.get("id")) in wanted
        w = str(wanted).casefold()
        if isinstance(actual, dict):
            names = [actual.get(k) for k in ("id", "key", "name", "value", "untranslatedName")]
            return any(isinstance(n, str) and n.casefold() == w for n in names)
        return str(actual).casefold() == w

    def _comparable(self, value: Any, kind: str) -> Any:
        """A value in comparable form; None if a stored value is malformed."""
        if kind in ("date", "duedate"):
            if isinstance(value, datetime):
                return value.astimezone(self.zone).date()
            try:
                return date.fromisoformat(str(value)[:10])
            except ValueError:
                return None
        if kind == "datetime":
            return value if isinstance(value, datetime) else _parsed(value)
        if kind == "number":
            return float(value)
        if kind == "key":
            return _key_order(str(value))
        return value

    # -- ordering

    def sort_key(self, name: str) -> Callable[[_Issue], Any]:
        fid = self.field(name)
        kind = self.kind(fid)
        positions = {sid: i for i, sid in enumerate(self.em.statuses)}

        def key(issue: _Issue) -> Any:
            value = self._actual(issue, fid, kind)
            if value in (None, "", []):
                return (1, "")
            if kind == "key":
                return (0, _key_order(str(value)))
            if kind == "id":
                return (0, value)
            if kind == "status":  # Jira orders statuses by their position in the status list
                return (0, positions.get(str(value.get("id")), len(positions)))
            if kind in ("datetime",):
                at = _parsed(value)
                return (0, at.timestamp()) if at is not None else (1, "")
            if kind in ("date", "duedate", "number"):
                comparable = self._comparable(value, kind)
                return (0, comparable) if comparable is not None else (1, "")
            if kind == "priority":
                return (0, -int(value.get("id", 0)))
            if isinstance(value, dict):
                return (
                    0,
                    str(
                        value.get("displayName")
                        or value.get("value")
                        or value.get("name")
                        or value.get("key")
                    ).casefold(),
                )
            if isinstance(value, list):
                return (0, " ".join(map(str, value)).casefold())
            return (0, str(value).casefold())

        return key


_EMPTY = object()
