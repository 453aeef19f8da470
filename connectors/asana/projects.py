"""The Asana connector's "projects" layout: an Asana project per sales project.

Which projects. The projects of one team (``team = "<gid>"``: ``GET /teams/{gid}/projects``,
how Asana organisations group projects) or, without a team, of the workspace
(``GET /projects?workspace=``), in both cases not archived and, with ``project_prefix``, only
those whose name starts with the prefix. The prefix is a marker, not data: ``Name`` is the name
without it, and the bridge adds it to the projects it creates.

A record. ``Name``, ``Notes``, ``Owner`` (the project owner, a user), ``Due date``,
``Start date``, ``Completed``, ``Created`` (read only), ``Tasks`` (the project's top-level tasks
as canonical tasks: title, done, due, owner; written by title as subtasks are in the "tasks"
layout) and every custom field of the workspace by name (the stage is a project custom field,
an enum named "Stage" by convention: an Asana project has no section, and its status updates
say how it is going, not where it is in the pipeline). Its version is the latest
``modified_at`` of the project and its tasks, with the number of tasks (a deleted task changes
no ``modified_at``).

Pulls. Every pull lists the projects in scope (one request per 100 projects) to see new and
gone ones, then for each project asks the events endpoint with the project's own sync token
(a cursor partition per project): a project is read again (through the batch API: the project
and its tasks, ten per request) only when events name it, when its token expired (412) or when
it is new. A quiet pull costs the listing plus one events request per project. Where the events
endpoint will not heal (403/404 for a project, a 412 that brings no token, or 412s
``fallback_after_412s`` pulls in a row) that project falls back to ``modified_since`` for the
pull: it is read again if the project's ``modified_at`` or any of its tasks' (``GET /tasks
?project=&modified_since=``, batched) is after the last pull; the fallback is logged. Deleted
tasks leave no ``modified_at``: the periodic full census (``reconcile_interval``) catches them.
``incremental = "modified_since"`` uses that path for every project and never asks for events.

Writes. A project is created in the team (or workspace), the custom fields it is given are
added to it (``addCustomFieldSetting``) and then set with the stamp, and its tasks written.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from connectors.asana.connector import (
    _CUSTOM,
    COMPLETED,
    CREATED,
    DUE,
    MAX_PAGE,
    NAME,
    NOTES,
    START,
    Json,
    _custom_value,
    _custom_write,
    _data,
    _iso,
    _Meta,
    _NoEvents,
    _parse,
    _Position,
    _subtask,
    _text,
    _user,
)
from connectors.base import (
    Cursor,
    FatalError,
    Page,
    RemoteField,
    RemoteRecord,
    RemoteUser,
    Schema,
    SkippableRecord,
    StaleVersion,
)

if TYPE_CHECKING:
    from connectors.asana.connector import AsanaConnector

OWNER, TASKS = "Owner", "Tasks"
STAGE = "Stage"

# Built-in remote fields of a project: (RemoteField type, writable, opt_fields to read it).
PROJECT_BUILTIN: dict[str, tuple[str, bool, tuple[str, ...]]] = {
    NAME: ("text", True, ("name",)),
    NOTES: ("text", True, ("notes",)),
    OWNER: ("user", True, ("owner.name", "owner.email")),
    DUE: ("date", True, ("due_on",)),
    START: ("date", True, ("start_on",)),
    COMPLETED: ("boolean", True, ("completed",)),
    CREATED: ("datetime", False, ("created_at",)),
    TASKS: ("json", True, ()),
}
_LISTED = "name,modified_at,archived,team.gid,custom_fields.name,custom_fields.text_value"
_ALWAYS = ("name", "modified_at", "archived", "permalink_url", "team.gid", "workspace.gid")
_TASK_FIELDS = "name,completed,due_on,modified_at,assignee.name,assignee.email,parent.gid"


class ProjectsLayout:
    """Reads and writes Asana projects as sales projects for an :class:`AsanaConnector`."""

    def __init__(self, connector: AsanaConnector) -> None:
        self.c = connector
        self.config = connector.config

    # ------------------------------------------------------------------ scope

    def describe(self) -> str:
        prefix = f" named {self.config.project_prefix!r}..." if self.config.project_prefix else ""
        if self.config.team:
            team = _data(self.c.api("TeamsApi").get_team(self.config.team, {"opt_fields": "name"}))
            return f"projects{prefix} of team {team.get('name')!r}"
        return f"projects{prefix} of workspace {self.config.workspace}"

    def in_scope(self, project: Json) -> bool:
        if project.get("archived"):
            return False
        name = project.get("name")
        if not isinstance(name, str):  # malformed: quarantined by _record unless filtered
            return not self.config.project_prefix
        if not name.startswith(self.config.project_prefix):
            return False
        if self.config.team and (project.get("team") or {}).get("gid") != self.config.team:
            return False
        ws = (project.get("workspace") or {}).get("gid")
        return ws in (None, self.config.workspace)

    def listed(self) -> list[Json]:
        """Every project in scope, with what the pull needs to decide (name, modified_at)."""
        api = self.c.api("ProjectsApi")
        opts: Json = {"limit": MAX_PAGE, "archived": False, "opt_fields": _LISTED}
        if self.config.team:
            items = self.c._all(
                lambda o: api.get_projects_for_team(
                    self.config.team, {**opts, **o}, full_payload=True
                )
            )
        else:
            items = self.c._all(
                lambda o: api.get_projects(
                    {**opts, **o, "workspace": self.config.workspace}, full_payload=True
                )
            )
        return [p for p in items if self.in_scope(p)]

    def opt_fields(self) -> str:
        found: list[str] = list(_ALWAYS)
        for name, (_, _, opts) in PROJECT_BUILTIN.items():
            if self.c.wants(name):
                found += opts
        found += _CUSTOM
        return ",".join(dict.fromkeys(found))

    # ------------------------------------------------------------------ schema

    def discover(self) -> Schema:
        meta = self.c.meta(refresh=True)
        found = [RemoteField(n, n, t, writable=w) for n, (t, w, _) in PROJECT_BUILTIN.items()]
        kinds = {"multi_enum": "multiselect", "enum": "enum", "people": "people"}
        for name, f in meta.fields.items():
            options = tuple(o["name"] for o in f.get("enum_options") or () if o.get("enabled"))
            kind = str(f.get("type") or "text")
            found.append(
                RemoteField(name, name, kinds.get(kind, kind), options=options, custom=True)
            )
        stage = meta.fields.get(STAGE) or {}
        stages = tuple(o["name"] for o in stage.get("enum_options") or () if o.get("enabled"))
        users = tuple(RemoteUser(u["gid"], u.get("name"), u.get("email")) for u in meta.users)
        return Schema(fields=tuple(found), users=users, stages=stages)

    # ------------------------------------------------------------------ pulls

    def pull(self, cursor: Cursor, *, signpost: datetime, full: bool) -> Iterator[Page]:
        at = _iso(min(datetime.now(UTC), signpost))
        listed = self.listed()
        by_gid = {p["gid"]: p for p in listed}
        positions = {k: v for k, v in cursor.positions.items() if k in by_gid}
        gone = [k for k in cursor.positions if k not in by_gid]
        size = self.config.page_size
        fell: list[str] = []
        for start in range(0, max(len(listed), 1), size):
            chunk = listed[start : start + size]
            read: list[str] = []
            check: dict[str, datetime] = {}  # gid -> modified_since
            for project in chunk:
                gid = project["gid"]
                pos = _Position.parse(cursor.get(gid))
                new, why = self._decide(gid, pos, full, read, check, at)
                if why:
                    fell.append(f"{gid}: {why}")
                positions[gid] = new
            for gid, since in check.items():
                if _parse(by_gid[gid]["modified_at"]) > since:
                    read.append(gid)
            read += self._tasks_changed([g for g in check if g not in read], check)
            records, skipped = self.read(read)
            for r in records:
                if r.updated_at is not None and r.updated_at > signpost:
                    positions[r.ref] = _Position(
                        _Position.parse(positions[r.ref]).sync, at, [r.ref]
                    ).dump()
            if start == 0:
                records += [RemoteRecord(g, "deleted", {}, deleted=True) for g in gone]
            far = datetime.min.replace(tzinfo=UTC)
            records.sort(key=lambda r: (r.updated_at or far, r.ref))
            yield Page(records, Cursor(dict(positions)), skipped)
        if fell:
            self.c.fall_back(
                f"{len(fell)} project(s)", "events unavailable (" + "; ".join(fell[:5]) + ")"
            )

    def _decide(
        self,
        gid: str,
        pos: _Position,
        full: bool,
        read: list[str],
        check: dict[str, datetime],
        at: str,
    ) -> tuple[str, str | None]:
        """How to learn whether project ``gid`` changed: appends it to ``read`` or ``check``
        (modified_since); returns its new position and why events failed, if they did."""
        since = None if pos.at is None else _parse(pos.at) - self.config.overlap

        def fallback(why: str | None, token: str | None = None, expired: int = 0) -> str:
            if full or since is None or pos.recheck:
                read.append(gid)
            else:
                check[gid] = since
            return _Position(token, at, [], expired).dump()

        if self.config.incremental == "modified_since":
            return fallback(None), None
        try:
            if full or pos.sync is None:
                token = self.c.fresh_token(gid)
                if full or since is None:
                    read.append(gid)
                else:
                    check[gid] = since  # the last pull fell back: changes since then
                return _Position(token, at).dump(), None
            token, changed = pos.sync, bool(pos.recheck)
            while True:
                status, body = self.c.events(gid, token)
                if status == 412:
                    fresh, expired = body.get("sync"), pos.expired + 1
                    if not fresh:
                        return fallback("412 without a new sync token"), "412 without a token"
                    if expired >= self.config.fallback_after_412s:
                        why = f"412 (expired sync token) {expired} pulls in a row"
                        return fallback(why, str(fresh), expired), why
                    read.append(gid)
                    return _Position(str(fresh), at, [], expired).dump(), None
                changed = changed or bool(body.get("data"))
                token = str(body["sync"])
                if not body.get("has_more"):
                    break
            if changed:
                read.append(gid)
            return _Position(token, at).dump(), None
        except _NoEvents as exc:
            return fallback(str(exc)), str(exc)

    def _tasks_changed(self, gids: list[str], since: Mapping[str, datetime]) -> list[str]:
        """Which of these projects have a task modified since their time (batched)."""
        if not gids:
            return []
        calls = [
            (
                "/tasks",
                {
                    "project": g,
                    "modified_since": _iso(since[g]),
                    "limit": 1,
                    "opt_fields": "modified_at",
                },
            )
            for g in gids
        ]
        out = []
        for (_, params), (_, status, body) in zip(calls, self.c._batch_get(calls), strict=True):
            if status < 400 and body.get("data"):
                out.append(str(params["project"]))
        return out

    # ------------------------------------------------------------------ reading records

    def read(self, gids: list[str]) -> tuple[list[RemoteRecord], list[SkippableRecord]]:
        """Records of these projects (batched); gone or out of scope ones as deleted."""
        records, skipped, _ = self._read(gids)
        return records, skipped

    def _read(
        self, gids: list[str]
    ) -> tuple[list[RemoteRecord], list[SkippableRecord], dict[str, Json]]:
        gids = list(dict.fromkeys(gids))
        if not gids:
            return [], [], {}
        calls = [(f"/projects/{g}", {"opt_fields": self.opt_fields()}) for g in gids]
        projects: dict[str, Json] = {}
        records: list[RemoteRecord] = []
        for gid, (_, status, body) in zip(gids, self.c._batch_get(calls), strict=True):
            project = body.get("data") if status < 400 else None
            if isinstance(project, dict) and self.in_scope(project):
                projects[gid] = project
            else:
                records.append(RemoteRecord(gid, "deleted", {}, deleted=True))
        tasks = self._tasks(list(projects)) if self.c.wants(TASKS) else {}
        skipped: list[SkippableRecord] = []
        for gid, project in projects.items():
            try:
                records.append(self._record(project, tasks.get(gid)))
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                skipped.append(
                    SkippableRecord(
                        gid,
                        f"malformed project: {type(exc).__name__}: {exc}",
                        connector=self.c.name,
                        payload=project,
                    )
                )
        return records, skipped, projects

    def _tasks(self, gids: list[str]) -> dict[str, list[Json]]:
        """The top-level tasks of each project, every page (batched)."""
        out: dict[str, list[Json]] = {g: [] for g in gids}
        todo: list[tuple[str, str | None]] = [(g, None) for g in gids]
        while todo:
            calls = []
            for gid, offset in todo:
                params: Json = {"project": gid, "opt_fields": _TASK_FIELDS, "limit": MAX_PAGE}
                if offset:
                    params["offset"] = offset
                calls.append(("/tasks", params))
            results = self.c._batch_get(calls)
            todo = []
            for (gid, _), (_, status, body) in zip(todo_of(calls), results, strict=True):
                if status >= 400:
                    continue
                out[gid] += [t for t in body.get("data") or [] if not (t.get("parent") or {})]
                offset = (body.get("next_page") or {}).get("offset")
                if offset:
                    todo.append((gid, str(offset)))
        return out

    def _record(self, project: Json, tasks: list[Json] | None) -> RemoteRecord:
        wants = self.c.wants
        fields: Json = {}
        if wants(NAME):
            fields[NAME] = _text(project["name"])[len(self.config.project_prefix) :]
        if wants(NOTES):
            fields[NOTES] = _text(project.get("notes") or "")
        if wants(OWNER):
            fields[OWNER] = _user(project.get("owner"))
        if wants(DUE):
            fields[DUE] = project.get("due_on")
        if wants(START):
            fields[START] = project.get("start_on")
        if wants(COMPLETED):
            fields[COMPLETED] = bool(project.get("completed"))
        if wants(CREATED):
            fields[CREATED] = project.get("created_at")
        stamp = None
        for cf in project.get("custom_fields") or []:
            name = cf["name"]
            value = _custom_value(cf)
            if name == self.config.stamp_field:
                stamp = value or None
            if wants(name):
                fields[name] = value
        latest = _parse(project["modified_at"])
        count = 0
        if tasks is not None:
            fields[TASKS] = [_subtask(t) for t in tasks]
            count = len(tasks)
            for t in tasks:
                latest = max(latest, _parse(t["modified_at"]))
        return RemoteRecord(
            ref=str(project["gid"]),
            version=f"{_iso(latest)}/{count}",
            fields=fields,
            updated_at=latest,
            url=project.get("permalink_url"),
            stamp=stamp,
        )

    def get(self, ref: str) -> RemoteRecord | None:
        records, skipped, _ = self._read([ref])
        if skipped:
            raise skipped[0]
        found = [r for r in records if r.ref == ref and not r.deleted]
        return found[0] if found else None

    def find_by_stamp(self, stamp: str) -> RemoteRecord | None:
        for project in self.listed():
            for cf in project.get("custom_fields") or []:
                if cf.get("name") == self.config.stamp_field and cf.get("text_value") == stamp:
                    return self.get(project["gid"])
        return None

    # ------------------------------------------------------------------ writing

    def create(self, fields: Mapping[str, Any], *, stamp: str) -> RemoteRecord:
        meta = self.c.meta()
        stamp_field = meta.fields.get(self.config.stamp_field)
        if stamp_field is None:
            raise FatalError(
                f"workspace {self.config.workspace} has no custom field "
                f"{self.config.stamp_field!r} to stamp projects with; create a text field of "
                "that name or set stamp_field",
                connector=self.c.name,
            )
        body, custom, tasks = self._changes(fields, meta, ref=stamp)
        body.setdefault("name", self.config.project_prefix)
        body["workspace"] = self.config.workspace
        if self.config.team:
            body["team"] = self.config.team
        api = self.c.api("ProjectsApi")
        created = _data(api.create_project({"data": body}, {"opt_fields": "gid"}))
        gid = str(created["gid"])
        custom[stamp_field["gid"]] = stamp
        self._add_settings(gid, custom, have=set())
        api.update_project({"data": {"custom_fields": custom}}, gid, {"opt_fields": "gid"})
        if tasks is not None:
            self._write_tasks(gid, tasks, meta, current=[])
        return self._written(gid)

    def update(
        self, ref: str, changes: Mapping[str, Any], *, expected_version: str | None
    ) -> RemoteRecord:
        meta = self.c.meta()
        records, skipped, raw = self._read([ref])
        if skipped:
            raise skipped[0]
        current = next((r for r in records if r.ref == ref and not r.deleted), None)
        if current is None:
            raise StaleVersion(ref, expected_version, None, connector=self.c.name)
        if expected_version is not None and current.version != expected_version:
            raise StaleVersion(ref, expected_version, current.version, connector=self.c.name)
        body, custom, tasks = self._changes(changes, meta, ref=ref)
        if custom:
            have = {cf["gid"] for cf in raw[ref].get("custom_fields") or []}
            self._add_settings(ref, custom, have=have)
            body["custom_fields"] = custom
        if body:
            self.c.api("ProjectsApi").update_project({"data": body}, ref, {"opt_fields": "gid"})
        if tasks is not None:
            self._write_tasks(ref, tasks, meta)
        return self._written(ref)

    def archive(self, ref: str) -> None:
        """Archive the project (it leaves the sync's sight; unarchiving brings it back)."""
        try:
            self.c.api("ProjectsApi").update_project(
                {"data": {"archived": True}}, ref, {"opt_fields": "gid"}
            )
        except FatalError as exc:
            if exc.status != 404:
                raise

    def _written(self, ref: str) -> RemoteRecord:
        record = self.get(ref)
        if record is None:
            raise FatalError(
                f"project {ref} vanished right after it was written", connector=self.c.name
            )
        return record

    def _add_settings(self, gid: str, custom: Mapping[str, Any], *, have: set[str]) -> None:
        """Add the workspace's custom fields to the project where it lacks them."""
        api = self.c.api("ProjectsApi")
        for field_gid in custom:
            if field_gid not in have:
                api.add_custom_field_setting_for_project(
                    {"data": {"custom_field": field_gid}}, gid, {}
                )

    def _write_tasks(
        self, gid: str, wanted: list[Json], meta: _Meta, *, current: list[Json] | None = None
    ) -> None:
        """Make the project's top-level tasks equal ``wanted``, matched by title."""
        if current is None:
            current = self._tasks([gid])[gid]
        api = self.c.api("TasksApi")
        self.c.reconcile_tasks(
            current,
            wanted,
            meta,
            lambda body: api.create_task(
                {"data": {**body, "memberships": [{"project": gid}]}}, {"opt_fields": "gid"}
            ),
        )

    def _changes(
        self, fields: Mapping[str, Any], meta: _Meta, *, ref: str
    ) -> tuple[Json, Json, list[Json] | None]:
        """(project body, custom field values by gid, the wanted tasks or None)."""
        body: Json = {}
        custom: Json = {}
        tasks: list[Json] | None = None
        problems: list[str] = []
        for key, value in fields.items():
            name = next((n for n in PROJECT_BUILTIN if n.casefold() == key.casefold()), key)
            if name == NAME:
                body["name"] = self.config.project_prefix + (value or "")
            elif name == NOTES:
                body["notes"] = value or ""
            elif name == DUE:
                body["due_on"] = value
            elif name == START:
                body["start_on"] = value
            elif name == COMPLETED:
                body["completed"] = bool(value)
            elif name == OWNER:
                body["owner"] = self.c._user_gid(value, meta)
            elif name == TASKS:
                tasks = list(value or [])
            elif name == CREATED:
                problems.append(f"{CREATED} is read-only")
            elif key in meta.fields:
                try:
                    custom[meta.fields[key]["gid"]] = _custom_write(
                        meta.fields[key], value, self.c, meta
                    )
                except ValueError as exc:
                    problems.append(f"{key}: {exc}")
            else:
                problems.append(f"{key!r} is not a field of workspace {self.config.workspace}")
        if problems:
            raise SkippableRecord(
                ref, "; ".join(problems), connector=self.c.name, payload=dict(fields)
            )
        return body, custom, tasks


def todo_of(calls: list[tuple[str, Json]]) -> list[tuple[str, Json]]:
    """The project gid of each ``/tasks?project=`` call, in order."""
    return [(str(params["project"]), params) for _, params in calls]


__all__ = ["OWNER", "PROJECT_BUILTIN", "STAGE", "TASKS", "ProjectsLayout"]
