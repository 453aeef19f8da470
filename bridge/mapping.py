"""Mapping files: which remote field feeds which canonical field, and how each value converts.

Ops staff write one TOML file per connector (``mappings/<kind>.toml``; the format is described in
``docs/mappings.md`` and shown, key by key, in ``mappings/memory.toml``). :func:`load_mapping`
reads it, checks it against the canonical model and, when given one, the tool's discovered
:class:`~connectors.base.Schema`, and compiles it into a :class:`MappingSpec`:

* every mistake in the file is collected and raised once as a :class:`~bridge.errors.UserError`
  whose problems name the file, the ``[section] key`` and the fix;
* each ``[fields.<path>]`` section becomes a :class:`FieldRule` holding two precompiled
  converters, so the per-record work in :meth:`MappingSpec.to_canonical` and
  :meth:`MappingSpec.to_remote` is a dict lookup and a small function call per field;
* a value that cannot be converted (an option missing from the value map, a date that is not a
  date) raises :class:`~bridge.errors.SkippableRecord` naming the field and the value, so the
  engine quarantines that one record and goes on.

Canonical values are JSON values, exactly what :func:`bridge.model.to_json_value` returns for
the path: money as ``{"amount": "<decimal>", "currency": "USD"}``, dates as ``YYYY-MM-DD``,
datetimes in UTC ending in ``Z``, persons as ``{"name", "email"}``.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
import tomllib
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, tzinfo
from decimal import Decimal, InvalidOperation
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Union, get_args, get_origin
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator
from pydantic.fields import FieldInfo

from bridge.errors import Problem, SkippableRecord, UserError
from bridge.model import (
    DEFAULT_STAGES,
    ENGINE_FIELDS,
    Money,
    PathError,
    Person,
    SalesProject,
    field_paths,
    is_valid_path,
    path_adapter,
    path_annotation,
)
from connectors.base import RemoteField, RemoteRecord, Schema

__all__ = [
    "Direction",
    "FieldRule",
    "FieldType",
    "MappingSpec",
    "SyncSettings",
    "UserMatching",
    "load_mapping",
    "parse_mapping",
]

FieldType = Literal[
    "text", "number", "integer", "money", "date", "datetime", "enum", "bool", "list", "user", "json"
]
Direction = Literal["pull", "push", "both"]
ConflictPolicy = Literal["newest_wins", "review"]
CreateMode = Literal["never", "all", "matching"]
UserMatch = Literal["email", "table"]

# --------------------------------------------------------------------------- compiled mapping


class _Unmappable(Exception):
    """One value that cannot be converted; becomes part of a SkippableRecord's reason."""


PullFn = Callable[[Mapping[str, Any]], Any]
PushFn = Callable[[Any, dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class FieldRule:
    """One compiled ``[fields.<path>]`` section.

    ``remote`` is the field as written in the file; ``remote_id`` the id it resolved to in the
    schema (the same text when no schema was given). ``pull`` reads the record's fields and
    returns the canonical JSON value; ``push`` writes a canonical JSON value into a dict of
    remote changes. Both raise ``_Unmappable`` for a value they cannot convert.
    """

    path: str
    section: str
    remote: str
    remote_id: str
    type: FieldType
    direction: Direction
    owns: bool
    currency_field_id: str | None
    pull: PullFn = field(repr=False, compare=False)
    push: PushFn = field(repr=False, compare=False)

    @property
    def pulls(self) -> bool:
        return self.direction != "push"

    @property
    def pushes(self) -> bool:
        return self.direction != "pull"


@dataclass(frozen=True)
class SyncSettings:
    """The ``[sync]`` section. ``stamp_field`` is the resolved remote field id, if set."""

    conflict_policy: ConflictPolicy | None = None
    create_in_tool: CreateMode = "never"
    create_when: tuple[tuple[str, frozenset[Any]], ...] = ()
    delete_in_tool: bool = False
    stamp_field: str | None = None

    def wants_create(self, project: Mapping[str, Any]) -> bool:
        """Whether a hub project (its JSON form) not yet in this tool should be created there."""
        if self.create_in_tool == "all":
            return True
        if self.create_in_tool == "never":
            return False
        return all(_read(project, path) in allowed for path, allowed in self.create_when)


@dataclass(frozen=True)
class UserMatching:
    """The ``[users]`` section: ``table`` maps a remote username or id to an e-mail."""

    match: UserMatch = "email"
    table: Mapping[str, str] = field(default_factory=dict)


class MappingSpec:
    """A loaded, checked and compiled mapping file. Immutable; safe to share between threads."""

    def __init__(
        self,
        *,
        source: str,
        connector: str,
        sync: SyncSettings,
        users: UserMatching,
        rules: Iterable[FieldRule],
    ) -> None:
        self.source = source
        self.connector = connector
        self.sync = sync
        self.users = users
        self.rules: tuple[FieldRule, ...] = tuple(rules)
        self._by_path = {r.path: r for r in self.rules}
        self._by_remote: dict[str, FieldRule] = {}
        for r in self.rules:
            if r.pulls:
                self._by_remote.setdefault(r.remote_id, r)
                self._by_remote.setdefault(r.remote.casefold(), r)
        self._pullers = tuple(
            (r.path, r.pull, f"{r.path} (remote field {_q(r.remote)})")
            for r in self.rules
            if r.pulls
        )
        self._pushers = tuple(
            (r.path, r.push, f"{r.path} (remote field {_q(r.remote)})")
            for r in self.rules
            if r.pushes
        )
        self.pulled_paths: frozenset[str] = frozenset(r.path for r in self.rules if r.pulls)
        self.pushed_paths: frozenset[str] = frozenset(r.path for r in self.rules if r.pushes)
        self.owned_paths: frozenset[str] = frozenset(r.path for r in self.rules if r.owns)
        needed: dict[str, None] = {}
        for r in self.rules:
            needed[r.remote_id] = None
            if r.currency_field_id:
                needed[r.currency_field_id] = None
        if sync.stamp_field:
            needed[sync.stamp_field] = None
        self.remote_fields_needed: tuple[str, ...] = tuple(needed)
        """Remote field ids the mapping reads or writes (for e.g. Jira's ``fields=``)."""

    def __repr__(self) -> str:
        return (
            f"MappingSpec({self.source!r}, connector={self.connector!r}, {len(self.rules)} fields)"
        )

    def history_value(self, remote_field: str, value: Any) -> tuple[str | None, Any]:
        """(canonical path, canonical value) for one value in a tool's own history.

        ``remote_field`` is the field as the history names it (its id or its display name).
        (None, None) when the mapping does not pull that field or the value does not convert
        (an option since removed from the value map): history is evidence, never a reason to
        quarantine a record.
        """
        rule = self._by_remote.get(remote_field) or self._by_remote.get(remote_field.casefold())
        if rule is None:
            return None, None
        try:
            return rule.path, rule.pull({rule.remote_id: value})
        except _Unmappable:
            return None, None

    def rule(self, path: str) -> FieldRule:
        """The rule for a canonical path; KeyError if the file does not map it."""
        return self._by_path[path]

    def to_canonical(self, record: RemoteRecord) -> dict[str, Any]:
        """Canonical JSON values, keyed by dotted path, for every pulled field of ``record``.

        A field missing from ``record.fields`` reads as empty (its ``default``, else empty).
        Raises SkippableRecord naming every field whose value could not be converted.
        """
        fields = record.fields
        out: dict[str, Any] = {}
        errors: list[str] | None = None
        for path, pull, label in self._pullers:
            try:
                out[path] = pull(fields)
            except _Unmappable as exc:
                errors = errors or []
                errors.append(f"{label}: {exc}")
        if errors:
            raise SkippableRecord(record.ref, "; ".join(errors), payload=dict(fields))
        return out

    def to_remote(self, values: Mapping[str, Any], *, ref: str = "") -> dict[str, Any]:
        """Remote field values for the pushed paths present in ``values`` (canonical JSON).

        Keys are resolved remote field ids. A path absent from ``values`` is left alone; a
        ``None`` value clears the remote field. Raises SkippableRecord (with ``ref``) naming
        every value this tool cannot hold.
        """
        out: dict[str, Any] = {}
        errors: list[str] | None = None
        for path, push, label in self._pushers:
            if path in values:
                try:
                    push(values[path], out)
                except _Unmappable as exc:
                    errors = errors or []
                    errors.append(f"{label}: {exc}")
        if errors:
            raise SkippableRecord(ref, "; ".join(errors), payload=dict(values))
        return out


# --------------------------------------------------------------------------- loading


def load_mapping(
    path: Path,
    schema: Schema | None = None,
    *,
    lifecycle_keys: list[str] | None = None,
    connector: str | None = None,
) -> MappingSpec:
    """Read, check and compile a mapping file.

    ``schema`` (from the connector's ``discover()``) turns on the checks against the live tool:
    remote fields exist and are unambiguous, options are all mapped, pushed fields are writable.
    ``lifecycle_keys`` are the configured stage keys (default: the standard lifecycle).
    ``connector``, when given, must equal the file's ``connector``.
    Raises UserError listing every problem found.
    """
    source = str(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise UserError(
            [
                Problem(
                    source,
                    "",
                    "file not found; create it (see docs/mappings.md) or correct "
                    "the connector's `mapping =` setting",
                )
            ]
        ) from None
    except UnicodeDecodeError as exc:
        raise UserError(
            [Problem(source, "", f"not UTF-8 text (byte {exc.start}); save the file as UTF-8")]
        ) from None
    return parse_mapping(
        text, source=source, schema=schema, lifecycle_keys=lifecycle_keys, connector=connector
    )


def parse_mapping(
    text: str,
    *,
    source: str = "<mapping>",
    schema: Schema | None = None,
    lifecycle_keys: list[str] | None = None,
    connector: str | None = None,
) -> MappingSpec:
    """Like :func:`load_mapping`, for TOML text already in hand; ``source`` names it in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError([_syntax_problem(source, exc)]) from None
    keys = list(lifecycle_keys) if lifecycle_keys is not None else [s.key for s in DEFAULT_STAGES]
    return _Loader(source, schema, keys, connector).load(data)


_TOML_POS = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def _syntax_problem(source: str, exc: tomllib.TOMLDecodeError) -> Problem:
    msg = str(exc)
    m = _TOML_POS.search(msg)
    where = f"line {m.group(1)}, column {m.group(2)}" if m else "end of file"
    detail = msg[: m.start()] if m else msg
    return Problem(
        source,
        where,
        f"TOML syntax error: {detail}. Check that line: text values need double quotes "
        '(remote = "Status"), section names go in [brackets], and each key is written once.',
    )


# -- the file's structure, checked by pydantic (extra="forbid" catches typos at every level)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _TopModel(_Strict):
    connector: str = Field(min_length=1)
    version: Literal[1]
    assume_timezone: str | None = None
    sync: dict[str, Any] = Field(default_factory=dict)
    users: dict[str, Any] = Field(default_factory=dict)
    fields: dict[str, Any] = Field(default_factory=dict)


class _SyncModel(_Strict):
    conflict_policy: ConflictPolicy | None = None
    create_in_tool: CreateMode | None = None
    create_when: dict[str, list[Any]] | None = None
    delete_in_tool: bool = False
    stamp_field: str | None = Field(None, min_length=1)

    @field_validator("create_when", mode="before")
    @classmethod
    def _one_value_is_a_list(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: x if isinstance(x, list) else [x] for k, x in v.items()}
        return v


class _UsersModel(_Strict):
    match: UserMatch = "email"
    table: dict[str, str] = Field(default_factory=dict)


class _FieldModel(_Strict):
    remote: str = Field(min_length=1)
    type: FieldType | None = None
    direction: Direction = "both"
    owns: bool = False
    default: Any = None
    values: dict[str, Any] | None = None
    push_value: dict[str, Any] | None = None
    currency: str | None = None
    currency_field: str | None = Field(None, min_length=1)
    assume_timezone: str | None = None


_FIELD_KEYS = frozenset(_FieldModel.model_fields)
_SECTIONS: dict[str, type[BaseModel]] = {
    "[sync]": _SyncModel,
    "[users]": _UsersModel,
    "a [fields.<field>] section": _FieldModel,
}

_EXAMPLES = {
    "connector": 'connector = "jira"',
    "version": "version = 1",
    "remote": 'remote = "Status"  (the field\'s display name or id in the tool)',
}

# -- canonical field shapes


@dataclass(frozen=True)
class _Shape:
    """What a canonical path holds, in the terms the checks and messages need."""

    kind: str
    nullable: bool
    label: str
    domain: tuple[str, ...] | None = None


_KIND_LABEL = {
    "text": "text",
    "int": "a whole number",
    "number": "a number",
    "bool": "true or false",
    "date": "a date",
    "datetime": "a date and time",
    "money": "an amount of money with its currency",
    "person": "a person (name and e-mail)",
    "list": "a list of values",
    "table": "a table of values",
    "any": "any value",
}

# mapping type -> canonical kinds it can fill ("any" is custom.*, which takes every type)
_FITS: dict[str, frozenset[str]] = {
    "text": frozenset({"text"}),
    "number": frozenset({"int", "number"}),
    "integer": frozenset({"int", "number"}),
    "money": frozenset({"money"}),
    "date": frozenset({"date"}),
    "datetime": frozenset({"datetime"}),
    "enum": frozenset({"enum", "text"}),
    "bool": frozenset({"bool"}),
    "list": frozenset({"list"}),
    "user": frozenset({"person"}),
    "json": frozenset(_KIND_LABEL) | {"enum", "records", "record"},  # raw, checked by the model
}

_INFER: dict[str, FieldType] = {
    "text": "text",
    "int": "integer",
    "number": "number",
    "bool": "bool",
    "date": "date",
    "datetime": "datetime",
    "money": "money",
    "person": "user",
    "enum": "enum",
    "list": "list",
    "records": "json",
    "record": "json",
    "table": "json",
    "any": "json",
}


def _remote_groups() -> dict[str, tuple[str, frozenset[str]]]:
    """What a connector's ``RemoteField.type`` may say -> (what it holds, mapping types that fit).

    Remote types not listed here are not checked.
    """
    groups: dict[str, tuple[str, frozenset[str]]] = {}
    for label, names, fits in (
        (
            "text",
            "string text textarea richtext html url email phone id reference",
            "text enum number integer money date datetime bool json",
        ),
        (
            "a number",
            "number float double decimal int integer percent numeric",
            "number integer money text json",
        ),
        ("an amount of money", "currency money", "money number text json"),
        ("a date", "date", "date datetime text json"),
        ("a date and time", "datetime date-time timestamp", "datetime date text json"),
        (
            "one option",
            "option enum picklist select dropdown status stage list section priority",
            "enum text bool json",
        ),
        (
            "several options",
            "options multi multiselect multipicklist labels tags array checklist",
            "list json",
        ),
        ("a user", "user person member owner assignee", "user json"),
        ("true or false", "bool boolean checkbox", "bool text json"),
        ("any JSON value", "json object any", " ".join(_FITS)),
    ):
        for name in names.split():
            groups[name] = (label, frozenset(fits.split()))
    return groups


_REMOTE_GROUPS: Final = _remote_groups()

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_TRUE = frozenset({"true", "yes", "y", "1", "on", "x", "checked"})
_FALSE = frozenset({"false", "no", "n", "0", "off", "", "unchecked"})
_MISSING: Final = object()
_ONE: Final = Decimal(1)
_REQUIRED: Final = object()


class _Loader:
    """Checks one mapping file, collecting problems, and compiles it."""

    def __init__(
        self, source: str, schema: Schema | None, lifecycle: list[str], connector: str | None
    ) -> None:
        self.source = source
        self.schema = schema
        self.lifecycle = lifecycle
        self.expected_connector = connector
        self.problems: list[Problem] = []
        self.default_tz: tzinfo | None = None
        self.users = UserMatching()

    # -- reporting

    def problem(self, where: str, message: str) -> None:
        self.problems.append(Problem(self.source, where, message))

    def pydantic(
        self, exc: ValidationError, section: tuple[str, ...], model: type[BaseModel]
    ) -> None:
        for err in exc.errors():
            loc = tuple(str(p) for p in err["loc"])
            key = loc[-1] if loc else ""
            where = _where(section + loc[:-1], key)
            typ = err["type"]
            got = err.get("input")
            if typ == "extra_forbidden":
                allowed = sorted(model.model_fields) if len(loc) == 1 else []
                close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
                home = [n for n, m in _SECTIONS.items() if m is not model and key in m.model_fields]
                if close:
                    hint = f"did you mean `{close[0]}`?"
                elif home:
                    hint = f"`{key}` is a key of {home[0]}: move it under that section's line"
                else:
                    hint = f"the keys allowed here are: {', '.join(allowed)}"
                msg = f"unknown key `{key}`; {hint}"
            elif typ == "missing":
                msg = f"required key is missing; add it, e.g. {_EXAMPLES.get(key, key + ' = ...')}"
            elif typ == "literal_error":
                msg = (
                    f"{_toml(got)} is not allowed; use one of {err.get('ctx', {}).get('expected')}"
                )
            elif typ == "bool_type":
                msg = f"{_toml(got)} is not true or false; write true or false without quotes"
            elif typ == "string_type":
                msg = f'{_toml(got)} is not text; write it in double quotes, e.g. {key} = "..."'
            elif typ == "string_too_short":
                msg = "must not be empty"
            elif typ == "dict_type":
                msg = f"{_toml(got)} is not a table; write it as a [section] of `key = value` rows"
            elif typ == "list_type":
                msg = f'{_toml(got)} is not a list; write it in square brackets, e.g. ["won"]'
            else:
                msg = err["msg"]
            self.problems.append(Problem(self.source, where, msg))

    # -- the file

    def load(self, data: dict[str, Any]) -> MappingSpec:
        top: _TopModel | None = None
        try:
            top = _TopModel.model_validate(data)
        except ValidationError as exc:
            self.pydantic(exc, (), _TopModel)
        if top and self.expected_connector and top.connector != self.expected_connector:
            self.problem(
                "connector",
                f"this file is for the {_q(top.connector)} connector but is used by "
                f"{_q(self.expected_connector)}; point that connector at its own mapping file "
                f'or write connector = "{self.expected_connector}"',
            )
        tz = data.get("assume_timezone")
        if isinstance(tz, str):
            self.default_tz = self.timezone(tz, "assume_timezone")
        users_raw = data.get("users", {})
        if isinstance(users_raw, dict):
            self.users = self.load_users(users_raw)
        rules: list[FieldRule] = []
        fields_raw = data.get("fields", {})
        if isinstance(fields_raw, dict):
            seen: dict[str, str] = {}
            for keys, table in self.flatten(fields_raw, ()):
                section = _where(("fields", *keys))
                path = ".".join(keys)
                if path in seen:
                    self.problem(
                        section,
                        f"{path} is mapped twice (also in {seen[path]}); keep one of the two",
                    )
                    continue
                seen[path] = section
                rule = self.compile_field(keys, table)
                if rule is not None:
                    rules.append(rule)
            self.check_push_targets(rules)
        sync = SyncSettings()
        sync_raw = data.get("sync", {})
        if isinstance(sync_raw, dict):
            sync = self.load_sync(sync_raw, rules)
        if self.problems:
            raise UserError(self.problems)
        assert top is not None
        return MappingSpec(
            source=self.source, connector=top.connector, sync=sync, users=self.users, rules=rules
        )

    def flatten(
        self, table: dict[str, Any], keys: tuple[str, ...]
    ) -> Iterable[tuple[tuple[str, ...], dict[str, Any]]]:
        """Field sections: ``[fields.customer.name]`` and ``[fields."customer.name"]`` alike."""
        for key, value in table.items():
            sub = (*keys, key)
            if not isinstance(value, dict):
                self.problem(
                    _where(("fields", *keys), key),
                    f"`{key}` must be a section: write [fields.{'.'.join(_tk(k) for k in sub)}] "
                    f'with remote = "..." under it',
                )
            elif (
                not value
                or "remote" in value
                or any(k in _FIELD_KEYS or not isinstance(v, dict) for k, v in value.items())
            ):
                yield sub, value
            else:
                yield from self.flatten(value, sub)

    def timezone(self, name: str, where: str) -> tzinfo | None:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            close = difflib.get_close_matches(name, sorted(available_timezones()), n=1)
            hint = f"did you mean {_q(close[0])}?" if close else 'e.g. "Asia/Shanghai" or "UTC"'
            self.problem(where, f"{_q(name)} is not a timezone name (IANA); {hint}")
            return None

    # -- [users]

    def load_users(self, raw: dict[str, Any]) -> UserMatching:
        try:
            users = _UsersModel.model_validate(raw)
        except ValidationError as exc:
            self.pydantic(exc, ("users",), _UsersModel)
            return UserMatching()
        for key, email in users.table.items():
            if not _EMAIL.match(email.strip()):
                self.problem(
                    _where(("users", "table"), key),
                    f"{_q(email)} is not an e-mail address; write the person's e-mail, "
                    f'e.g. {_tk(key)} = "{key if "@" not in key else "name"}@example.com"',
                )
        if users.match == "table" and not users.table:
            self.problem(
                _where(("users",), "match"),
                'match = "table" needs a [users.table] section with one row per person, '
                'e.g. "jdoe" = "jane.doe@example.com"; or use match = "email"',
            )
        return UserMatching(users.match, {k: v.strip().lower() for k, v in users.table.items()})

    # -- [sync]

    def load_sync(self, raw: dict[str, Any], rules: list[FieldRule]) -> SyncSettings:
        try:
            spec = _SyncModel.model_validate(raw)
        except ValidationError as exc:
            self.pydantic(exc, ("sync",), _SyncModel)
            return SyncSettings()
        mode: CreateMode = spec.create_in_tool or ("matching" if spec.create_when else "never")
        if spec.create_when is not None and mode != "matching":
            self.problem(
                _where(("sync",), "create_when"),
                f'create_in_tool = "{mode}" and create_when contradict each other; remove '
                'create_in_tool (or set it to "matching") to create only matching projects',
            )
        if mode == "matching" and not spec.create_when:
            self.problem(
                _where(("sync",), "create_in_tool"),
                'create_in_tool = "matching" needs [sync.create_when], e.g. status = ["won"]',
            )
        when: list[tuple[str, frozenset[Any]]] = []
        for path, wanted in (spec.create_when or {}).items():
            where = _where(("sync", "create_when"), path)
            if path in _SyncModel.model_fields:
                self.problem(where, _misplaced(path, ("sync", "create_when")))
                continue
            shape = self.target(path, where)
            if shape is None:
                continue
            allowed: set[Any] = set()
            for value in wanted:
                ok, canon = self.canonical(path, shape, value, where)
                if ok:
                    allowed.add(canon)
            when.append((path, frozenset(allowed)))
        stamp: str | None = None
        if spec.stamp_field:
            where = _where(("sync",), "stamp_field")
            rf = self.remote(spec.stamp_field, where)
            stamp = rf.id if rf else spec.stamp_field
            if rf and not rf.writable:
                self.problem(
                    where,
                    f"the tool does not let us write {_q(rf.name)}; choose a writable text field "
                    "to hold the canonical id",
                )
            for r in rules:
                if r.pushes and r.remote_id == stamp:
                    self.problem(
                        where,
                        f"{_q(spec.stamp_field)} is also written by {r.section}; the stamp needs "
                        "a field of its own",
                    )
        return SyncSettings(
            conflict_policy=spec.conflict_policy,
            create_in_tool=mode,
            create_when=tuple(when),
            delete_in_tool=spec.delete_in_tool,
            stamp_field=stamp,
        )

    # -- canonical side

    def target(self, path: str, where: str) -> _Shape | None:
        """The shape of a canonical path a mapping may write, or None after a problem."""
        root = path.split(".")[0]
        if root in ENGINE_FIELDS:
            self.problem(
                where,
                f"{path} is managed by the sync engine and cannot be mapped; remove this "
                f"section (to keep the tool's value anyway, map it to custom.{root})",
            )
            return None
        inside = _container_of(path)
        if inside is not None:
            self.problem(
                where,
                f"{path} lies inside {inside}, which is mapped as a whole: write "
                f'[fields.{inside}] with type = "{_INFER[_shape(inside, self.lifecycle).kind]}"',
            )
            return None
        if not is_valid_path(path) or path == "custom":
            choices = [p for p in field_paths() if _mappable(p)]
            close = difflib.get_close_matches(path, choices, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}? " if close else ""
            last = path.rsplit(".", 1)[-1] or "name"
            self.problem(
                where,
                f"{path or '(empty)'} is not a field of the canonical sales project; {hint}"
                "a field with no canonical home goes under custom, e.g. "
                f"[fields.custom.{_tk(last)}]",
            )
            return None
        return _shape(path, self.lifecycle)

    def canonical(self, path: str, shape: _Shape, value: Any, where: str) -> tuple[bool, Any]:
        """Validate a canonical value written in the file; report a problem if it is invalid."""
        if shape.domain is not None:
            text = value if isinstance(value, str) else None
            if text not in shape.domain:
                close = difflib.get_close_matches(str(value), shape.domain, n=1)
                hint = f"did you mean {_q(close[0])}? " if close else ""
                what = "a lifecycle stage" if path == "stage" else f"a valid {path}"
                self.problem(
                    where,
                    f"{_toml(value)} is not {what}; {hint}use one of {', '.join(shape.domain)}",
                )
                return False, None
            return True, text
        try:
            return True, _json_value(_adapter(path), value)
        except ValidationError as exc:
            self.problem(
                where,
                f"{_toml(value)} is not valid for {path} ({shape.label}): {exc.errors()[0]['msg']}",
            )
            return False, None

    # -- remote side

    def remote(self, name: str, where: str) -> RemoteField | None:
        """Resolve a remote field through the schema; None without a schema or after a problem."""
        if self.schema is None:
            return None
        found = self.schema.resolve(name)
        if len(found) == 1:
            return found[0]
        if not found:
            names = [f.name for f in self.schema.fields] + [f.id for f in self.schema.fields]
            close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
            hint = f"did you mean {_q(close[0])}? " if close else ""
            listing = (
                f"its fields are: {_qs(f.name for f in self.schema.fields)}"
                if len(self.schema.fields) <= 40
                else "`salesbridge mappings preview <connector>` shows them on real records"
            )
            self.problem(
                where,
                f"the tool has no field {_q(name)}; {hint}fields are matched by id or by display "
                f"name, ignoring case; {listing}",
            )
        else:
            ids = ", ".join(_q(f.id) for f in found)
            self.problem(
                where,
                f"{len(found)} fields of the tool are named {_q(name)} (ids {ids}); write the id "
                f"of the one you mean, e.g. remote = {_q(found[0].id)}",
            )
        return None

    # -- one [fields.<path>] section

    def compile_field(self, keys: tuple[str, ...], table: dict[str, Any]) -> FieldRule | None:
        sec = ("fields", *keys)
        path = ".".join(keys)
        section = _where(sec)
        shape = self.target(path, section)
        try:
            spec = _FieldModel.model_validate(table)
        except ValidationError as exc:
            self.pydantic(exc, sec, _FieldModel)
            return None
        if shape is None:
            return None
        before = len(self.problems)

        def at(key: str) -> str:
            return _where(sec, key)

        ftype: FieldType = spec.type or _INFER[shape.kind]
        pulls, pushes = spec.direction != "push", spec.direction != "pull"
        if shape.kind != "any" and shape.kind not in _FITS[ftype]:
            fitting = [t for t, kinds in _FITS.items() if shape.kind in kinds and t != "json"]
            use = " or ".join(f'type = "{t}"' for t in fitting or ["json"])
            self.problem(
                at("type"),
                f'type = "{ftype}" does not fit {path}, which holds {shape.label}; use {use}',
            )
            return None  # every other check would only restate this one
        rf = self.remote(spec.remote, at("remote"))
        if rf is not None:
            group = _REMOTE_GROUPS.get(rf.type.lower())
            if group and ftype not in group[1]:
                self.problem(
                    at("type"),
                    f'the tool\'s field {_q(rf.name)} holds {group[0]}, but type = "{ftype}"; '
                    f"map it as {' or '.join(sorted(group[1] - {'json'}))}, or choose another "
                    "field",
                )
            if pushes and not rf.writable:
                self.problem(
                    at("direction"),
                    f"the tool does not let us write {_q(rf.name)}, so it can only be read: "
                    'set direction = "pull"',
                )
        if spec.owns and not pulls:
            self.problem(
                at("owns"),
                "owns = true means this tool wins conflicts on the field, but with direction = "
                '"push" the tool\'s value is never read; set direction = "both" or remove owns',
            )
        if spec.default is not None and not pulls:
            self.problem(
                at("default"),
                'default fills in empty values read from the tool; with direction = "push" '
                "nothing is read: remove default",
            )
        for key, allowed_for in (
            ("values", ("enum",)),
            ("push_value", ("enum",)),
            ("currency", ("money",)),
            ("currency_field", ("money",)),
            ("assume_timezone", ("date", "datetime")),
        ):
            if getattr(spec, key) is not None and ftype not in allowed_for:
                kinds = " or ".join(f'type = "{t}"' for t in allowed_for)
                self.problem(
                    at(key), f'{key} only applies to {kinds}, not type = "{ftype}"; remove it'
                )
        tz = self.default_tz
        if spec.assume_timezone is not None:
            tz = self.timezone(spec.assume_timezone, at("assume_timezone"))
        rid = rf.id if rf else spec.remote
        ctx = _Ctx(path, sec, section, rf.name if rf else spec.remote, shape, tz)

        if ftype == "money":
            currency, currency_id = self.money_options(spec, at, pushes)
            if spec.default is not None:
                try:
                    _decimal(_toml_native(spec.default))
                except _Unmappable as exc:
                    self.problem(at("default"), f"{exc}; write the amount as a number, e.g. 0")
            if len(self.problems) > before:
                return None
            pull = _money_pull(ctx, rid, currency, currency_id, spec.default)
            push = _money_push(ctx, rid, currency, currency_id)
        else:
            currency_id = None
            conv, unconv, empty = self.converters(ctx, spec, ftype, rf, pulls, pushes)
            if len(self.problems) > before:
                return None
            pull = _pull(ctx, rid, conv, _adapter(path) if ftype in _VALIDATED else None, empty)
            push = _push(rid, unconv)
        return FieldRule(
            path=path,
            section=section,
            remote=spec.remote,
            remote_id=rid,
            type=ftype,
            direction=spec.direction,
            owns=spec.owns,
            currency_field_id=currency_id,
            pull=pull,
            push=push,
        )

    def converters(
        self,
        ctx: _Ctx,
        spec: _FieldModel,
        ftype: FieldType,
        rf: RemoteField | None,
        pulls: bool,
        pushes: bool,
    ) -> tuple[Callable[[Any], Any], Callable[[Any], Any], Any]:
        """(pull converter, push converter, what an empty remote value reads as)."""
        at = f"{ctx.section} default"
        default = _toml_native(spec.default)
        if ftype == "enum":
            enum_default: Any = _MISSING
            if default is not None:
                _ok, enum_default = self.canonical(ctx.path, ctx.shape, default, at)
            maps = self.enum_maps(ctx, spec, rf, pulls, pushes, enum_default)
            if maps is None:
                return _identity, _identity, None
            conv = _enum_pull(ctx, maps, enum_default)
            empty = enum_default if default is not None else self.empty_value(ctx, ftype)
            return conv, _enum_push(ctx, maps), empty
        if ftype == "user":
            empty = self.empty_value(ctx, ftype)
            if default is not None:
                if isinstance(default, str) and _EMAIL.match(default.strip()):
                    empty = {"name": None, "email": default.strip().lower()}
                else:
                    self.problem(
                        at,
                        f"{_toml(default)} is not an e-mail address; the default "
                        'person is written as an e-mail, e.g. "sales@example.com"',
                    )
            return self.user_pull(), self.user_push(), empty
        conv = _CONVERTERS[ftype](ctx)
        if default is None:
            return conv, _identity, self.empty_value(ctx, ftype)
        adapter = _adapter(ctx.path) if ftype in _VALIDATED else None
        try:
            return conv, _identity, _finish(ctx, conv(default), adapter, default)
        except _Unmappable as exc:
            self.problem(at, f"{_toml(default)} is not usable as default: {exc}")
            return conv, _identity, None

    @staticmethod
    def empty_value(ctx: _Ctx, ftype: FieldType) -> Any:
        """What an empty remote value reads as when there is no default (_REQUIRED: refuse)."""
        kind = ctx.shape.kind
        if kind in ("list", "records") or ftype == "list":
            return []
        if ctx.shape.nullable or kind == "any":
            return None
        if kind == "table":
            return {}
        return _REQUIRED

    def money_options(
        self, spec: _FieldModel, at: Callable[[str], str], pushes: bool
    ) -> tuple[str | None, str | None]:
        currency: str | None = None
        field_id: str | None = None
        if spec.currency is not None and spec.currency_field is not None:
            self.problem(
                at("currency_field"),
                "set either currency (one fixed currency) or currency_field (the tool's "
                "currency field), not both",
            )
        elif spec.currency is None and spec.currency_field is None:
            self.problem(
                at("currency"),
                'type = "money" needs its currency: currency = "USD" when every amount is in one '
                'currency, or currency_field = "<the tool\'s currency field>"',
            )
        if spec.currency is not None:
            code = spec.currency.strip().upper()
            if _CURRENCY.match(code):
                currency = code
            else:
                self.problem(
                    at("currency"),
                    f"{_q(spec.currency)} is not a 3-letter ISO 4217 currency code; write e.g. "
                    'currency = "USD", "EUR" or "CNY"',
                )
        if spec.currency_field is not None:
            rf = self.remote(spec.currency_field, at("currency_field"))
            field_id = rf.id if rf else spec.currency_field
            if rf is not None and pushes and not rf.writable:
                self.problem(
                    at("currency_field"),
                    f'the tool does not let us write {_q(rf.name)}; set direction = "pull"',
                )
        return currency, field_id

    def enum_maps(
        self,
        ctx: _Ctx,
        spec: _FieldModel,
        rf: RemoteField | None,
        pulls: bool,
        pushes: bool,
        default: Any,
    ) -> _EnumMaps | None:
        """Check the value map of an enum field and build its forward and reverse maps."""
        before = len(self.problems)
        sec = ctx.keys
        shape, path = ctx.shape, ctx.path
        options: tuple[str, ...] | None = None
        if path == "stage" and self.schema is not None and self.schema.stages:
            options = tuple(self.schema.stages)
        elif rf is not None and rf.options:
            options = rf.options
        folded_options = {o.casefold(): o for o in options or ()}
        forward: dict[str, Any] | None = None
        if spec.values is not None:
            forward = {}
            if not spec.values:
                self.problem(
                    _where(sec, "values"),
                    "the value map is empty; add one row per "
                    'option of the tool, e.g. "In Progress" = "proposal"',
                )
            for option, target in spec.values.items():
                where = _where((*sec, "values"), option)
                if option in _FIELD_KEYS and option.casefold() not in folded_options:
                    self.problem(where, _misplaced(option, (*sec, "values")))
                    continue
                if options is not None and option.casefold() not in folded_options:
                    close = difflib.get_close_matches(option, options, n=1)
                    hint = f"did you mean {_q(close[0])}? " if close else ""
                    self.problem(
                        where,
                        f"the tool has no option {_q(option)} for {_q(ctx.remote)}; {hint}"
                        f"its options are: {_qs(options)}",
                    )
                    continue
                ok, canon = self.canonical(path, shape, target, where)
                if ok:
                    forward[option] = canon
        elif shape.domain is not None:
            forward = {d: d for d in shape.domain}
        rows_ok = len(self.problems) == before  # else the missing rows may just be misspelt
        if (
            forward is not None
            and pulls
            and options is not None
            and spec.default is None
            and rows_ok
        ):
            folded = {k.casefold() for k in forward}
            missing = [o for o in options if o.casefold() not in folded]
            if missing:
                example = "<stage>" if path == "stage" else "<value>"
                self.problem(
                    _where(sec, "values"),
                    f"no row for the tool's option(s) {_qs(missing)}; add a row for each to "
                    f"{_where((*sec, 'values'))}, e.g. {_q(missing[0])} = "
                    f'"{example}", or set default = "..." in {_where(sec)} for options you '
                    "do not map",
                )
        reverse: dict[Any, str] | None = None
        if pushes and len(self.problems) == before:  # a broken value map cannot be reversed
            reverse = self.enum_reverse(ctx, spec, forward, options)
            if pulls and forward is not None and reverse and len(self.problems) == before:
                self.check_read_back(ctx, spec, forward, reverse, default)
        if len(self.problems) > before:
            return None
        return _EnumMaps(
            forward=forward,
            folded=None if forward is None else _fold(forward),
            reverse=reverse,
        )

    def enum_reverse(
        self,
        ctx: _Ctx,
        spec: _FieldModel,
        forward: dict[str, Any] | None,
        options: tuple[str, ...] | None,
    ) -> dict[Any, str] | None:
        shape, path, sec = ctx.shape, ctx.path, ctx.keys
        chosen: dict[Any, str] = {}
        for canon_key, option in (spec.push_value or {}).items():
            where = _where((*sec, "push_value"), canon_key)
            ok, canon = self.canonical(path, shape, canon_key, where)
            if not ok:
                continue
            if not isinstance(option, str):
                self.problem(
                    where, f"{_toml(option)} is not text; write the tool's option in double quotes"
                )
            elif options is not None and option not in options:
                close = difflib.get_close_matches(option, options, n=1)
                hint = f"did you mean {_q(close[0])}? " if close else ""
                self.problem(
                    where,
                    f"the tool has no option {_q(option)}; {hint}its options are: {_qs(options)}",
                )
            else:
                chosen[canon] = option
        if forward is None:
            return chosen or None  # passthrough: canonical text is written as it is
        reverse: dict[Any, str] = {}
        by_target: dict[Any, list[str]] = {}
        for option, canon in forward.items():
            by_target.setdefault(canon, []).append(option)
        identity = spec.values is None
        unclear: set[Any] = set()
        for canon, opts in by_target.items():
            if canon in chosen:
                continue
            if identity:
                match = [o for o in options or () if o.casefold() == str(canon).casefold()]
                if match or options is None:
                    reverse[canon] = match[0] if match else opts[0]
            elif len(opts) == 1:
                reverse[canon] = opts[0]
            else:
                unclear.add(canon)
                self.problem(
                    _where(sec, "push_value"),
                    f"{_q(canon)} is the target of {_qs(opts)}, so it is unclear which option to "
                    f"write when pushing; add {_where((*sec, 'push_value'), str(canon))} = "
                    f"{_q(opts[0])}",
                )
        reverse.update(chosen)
        if shape.domain is not None:
            missing = [d for d in shape.domain if d not in reverse and d not in unclear]
            if missing:
                self.problem(
                    _where(sec, "push_value"),
                    f"no option of the tool to write for {_qs(missing)}; add rows to "
                    f"{_where((*sec, 'push_value'))} such as "
                    f'{_tk(missing[0])} = "<option of the tool>", or set direction = "pull"',
                )
        return reverse

    def check_read_back(
        self,
        ctx: _Ctx,
        spec: _FieldModel,
        forward: dict[str, Any],
        reverse: dict[Any, str],
        default: Any,
    ) -> None:
        """Every pushed option must read back as the value pushed.

        Otherwise the bridge's own write would come back as a change made in the tool (the
        merge compares canonical values with the base), and the hub would move.
        """
        folded = _fold(forward)
        for canon, option in reverse.items():
            back = forward.get(option, folded.get(option.casefold(), default))
            if back == canon:
                continue
            if canon in (spec.push_value or {}):
                where = _where((*ctx.keys, "push_value"), str(canon))
            else:
                where = _where(ctx.keys, "push_value")
            reads = "is not in the value map" if back is _MISSING else f"reads back as {_q(back)}"
            self.problem(
                where,
                f"pushing {_q(canon)} writes {_q(option)}, which {reads}: the next sync would "
                f"take the bridge's own write for a change made in the tool. Write an option "
                f'that reads back as {_q(canon)}, or set direction = "pull"',
            )

    def user_pull(self) -> Callable[[Any], Any]:
        table = self.users.table
        by_table = self.users.match == "table"
        known = {u.id: u.email.lower() for u in self.schema.users if u.email} if self.schema else {}

        def conv(value: Any) -> Any:
            if isinstance(value, str):
                user: Mapping[str, Any] = {"email": value} if "@" in value else {"username": value}
            elif isinstance(value, Mapping):
                user = value
            else:
                raise _Unmappable(f"{_show(value)} is not a user")
            uid, username, email = user.get("id"), user.get("username"), user.get("email")
            name = user.get("name")
            if not (uid or username or email or name):
                return None  # {"id": None, ...}: nobody
            found = (username and table.get(str(username))) or (uid and table.get(str(uid)))
            if not by_table:
                found = found or (email and str(email).strip().lower()) or known.get(str(uid))
            return {"name": name, "email": found or None}

        return conv

    def user_push(self) -> Callable[[Any], Any]:
        reverse: dict[str, str] = {}
        for key, email in self.users.table.items():
            reverse.setdefault(email, key)  # one person, two accounts: the first row wins
        users = self.schema.users if self.schema else ()
        by_email = {u.email.lower(): u for u in users if u.email}
        by_key = {k: u for u in users for k in (u.username, u.id) if k}

        def unconv(person: Any) -> Any:
            if person is None:
                return None
            email = person.get("email")
            key = reverse.get(email) if email else None
            u = (by_email.get(email) if email else None) or (by_key.get(key) if key else None)
            return {
                "id": u.id if u else None,
                "name": person.get("name"),
                "email": email,
                "username": key or (u.username if u else None),
            }

        return unconv

    def check_push_targets(self, rules: list[FieldRule]) -> None:
        writers: dict[str, FieldRule] = {}
        for r in rules:
            if not r.pushes:
                continue
            first = writers.setdefault(r.remote_id, r)
            if first is not r:
                self.problem(
                    f"{r.section} remote",
                    f"{_q(r.remote)} is already written by {first.section}; two fields cannot "
                    'both push to one remote field: set direction = "pull" on one of them',
                )


# --------------------------------------------------------------------------- converters


@dataclass(frozen=True)
class _Ctx:
    """What a converter needs to know to explain itself."""

    path: str
    keys: tuple[str, ...]  # ("fields", "customer", "name"): the section as written
    section: str  # the same, rendered: [fields.customer.name]
    remote: str
    shape: _Shape
    tz: tzinfo | None


@dataclass(frozen=True)
class _EnumMaps:
    forward: dict[str, Any] | None  # remote option -> canonical; None: pass text through
    folded: dict[str, Any] | None  # casefolded option -> canonical
    reverse: dict[Any, str] | None  # canonical -> remote option; None: write as it is


# Types whose converters cannot guarantee the canonical JSON form on their own (constraints such
# as 0 <= probability <= 100, Decimal formatting, nested models): their output goes through the
# path's TypeAdapter. The others already produce exactly what to_json_value would.
_VALIDATED = frozenset({"number", "integer", "json"})
_SCALARS = (str, int, float, bool)


def _identity(value: Any) -> Any:
    return value


def _pull(
    ctx: _Ctx,
    rid: str,
    conv: Callable[[Any], Any],
    adapter: TypeAdapter[Any] | None,
    empty: Any,
) -> PullFn:
    mutable = isinstance(empty, list | dict)

    def pull(fields: Mapping[str, Any]) -> Any:
        raw = fields.get(rid)
        if raw is None:
            value = None
        elif type(raw) is str:  # the common case, without _is_empty's call
            value = conv(raw) if raw.strip() else None
        else:
            value = None if _is_empty(raw) else conv(raw)
        if value is None:
            if empty is _REQUIRED:
                raise _Unmappable(
                    f"is empty, and {ctx.path} cannot be empty; set default = ... in "
                    f"{ctx.section} to use a value instead"
                )
            return copy.deepcopy(empty) if mutable else empty
        return value if adapter is None else _finish(ctx, value, adapter, raw)

    return pull


def _finish(ctx: _Ctx, value: Any, adapter: TypeAdapter[Any] | None, raw: Any) -> Any:
    if adapter is None:
        return value
    try:
        return adapter.dump_python(adapter.validate_python(value), mode="json")
    except ValidationError as exc:
        raise _Unmappable(
            f"{_show(raw)} is not valid for {ctx.path}: {exc.errors()[0]['msg']}"
        ) from None


def _push(rid: str, unconv: Callable[[Any], Any]) -> PushFn:
    def push(value: Any, out: dict[str, Any]) -> None:
        out[rid] = unconv(value)

    return push


def _is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, list | tuple | dict):
        return not value
    return False


def _text(ctx: _Ctx) -> Callable[[Any], Any]:
    def conv(value: Any) -> Any:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float | Decimal):
            return str(value)
        raise _Unmappable(f"{_show(value)} is not text")

    return conv


def _decimal(value: Any) -> Decimal:
    if isinstance(value, bool):
        raise _Unmappable(f"{_show(value)} is not a number")
    if isinstance(value, Decimal):
        d = value
    elif isinstance(value, int):
        d = Decimal(value)
    elif isinstance(value, float):
        d = Decimal(repr(value))  # the shortest repr, never the binary float's expansion
    elif isinstance(value, str):
        try:
            d = Decimal(value.strip())
        except InvalidOperation:
            raise _Unmappable(f"{_show(value)} is not a number") from None
    else:
        raise _Unmappable(f"{_show(value)} is not a number")
    if not d.is_finite():
        raise _Unmappable(f"{_show(value)} is not a number")
    return d


def _plain_number(d: Decimal) -> int | float:
    return int(d) if d == d.to_integral_value() else float(d)


def _number(ctx: _Ctx) -> Callable[[Any], Any]:
    def conv(value: Any) -> Any:
        return _plain_number(_decimal(value))

    return conv


def _integer(ctx: _Ctx) -> Callable[[Any], Any]:
    def conv(value: Any) -> Any:
        d = _decimal(value)
        if d != d.to_integral_value():
            raise _Unmappable(f"{_show(value)} is not a whole number")
        return int(d)

    return conv


def _money_text(d: Decimal) -> str:
    """The canonical text of an amount: what Money's JSON form holds, without trailing zeros.

    "12000.50" and 12000.5 are the same money; one text for both keeps tools from flapping.
    """
    d = d.normalize()
    return str(d.quantize(_ONE) if d.as_tuple().exponent > 0 else d)  # type: ignore[operator]


def _money_pull(
    ctx: _Ctx,
    rid: str,
    currency: str | None,
    currency_id: str | None,
    default: Any,
) -> PullFn:
    required = not (ctx.shape.nullable or ctx.shape.kind == "any")

    def pull(fields: Mapping[str, Any]) -> Any:
        raw = fields.get(rid)
        if _is_empty(raw):
            if default is None:
                if required:
                    raise _Unmappable(
                        f"is empty, and {ctx.path} cannot be empty; set default "
                        f"= 0 in {ctx.section} to use a value instead"
                    )
                return None
            raw = default
        amount = _decimal(raw)
        if currency is not None:
            code = currency
        else:
            given = fields.get(currency_id or "")
            if _is_empty(given):
                raise _Unmappable(f"amount {_show(raw)} has no currency in {_q(currency_id)}")
            code = str(given).strip().upper()
            if not _CURRENCY.match(code):
                raise _Unmappable(
                    f"currency {_show(given)} in {_q(currency_id)} is not a 3-letter ISO 4217 code"
                )
        return {"amount": _money_text(amount), "currency": code}

    return pull


def _money_push(ctx: _Ctx, rid: str, currency: str | None, currency_id: str | None) -> PushFn:
    def push(value: Any, out: dict[str, Any]) -> None:
        if value is None:
            out[rid] = None
            return
        if not isinstance(value, Mapping):
            raise _Unmappable(f"{_show(value)} is not an amount of money")
        amount, code = _decimal(value.get("amount")), value.get("currency")
        if currency is not None and code != currency:
            raise _Unmappable(
                f"{value['amount']} {code}: the tool's field holds {currency} amounts only"
            )
        out[rid] = _plain_number(amount)
        if currency_id is not None:
            if out.get(currency_id, code) != code:
                raise _Unmappable(
                    f"{_q(currency_id)} would need both {out[currency_id]} and {code}"
                )
            out[currency_id] = code

    return push


def _epoch_ms(value: float, tz: tzinfo) -> datetime:
    try:
        return datetime.fromtimestamp(value / 1000, tz)
    except (OverflowError, OSError, ValueError):
        raise _Unmappable(f"{_show(value)} is not a time in epoch milliseconds") from None


def _date(ctx: _Ctx) -> Callable[[Any], Any]:
    tz = ctx.tz or UTC

    def conv(value: Any) -> Any:
        if isinstance(value, datetime):
            return value.date().isoformat()
        if isinstance(value, date):
            return value.isoformat()
        if isinstance(value, int | float) and not isinstance(value, bool):
            return _epoch_ms(value, tz).date().isoformat()
        if isinstance(value, str):
            text = value.strip()
            try:
                if len(text) <= 10:
                    return date.fromisoformat(text).isoformat()
                return datetime.fromisoformat(text).date().isoformat()  # the date as written
            except ValueError:
                pass
            if text.isdigit():
                return _epoch_ms(int(text), tz).date().isoformat()
        raise _Unmappable(f"{_show(value)} is not a date (expected e.g. 2026-03-31)")

    return conv


def _datetime(ctx: _Ctx) -> Callable[[Any], Any]:
    tz = ctx.tz

    def conv(value: Any) -> Any:
        if isinstance(value, datetime):
            dt = value
        elif isinstance(value, date):
            dt = datetime(value.year, value.month, value.day)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            dt = _epoch_ms(value, UTC)
        elif isinstance(value, str):
            text = value.strip()
            try:
                dt = datetime.fromisoformat(text)
            except ValueError:
                if not text.isdigit():
                    raise _Unmappable(
                        f"{_show(value)} is not a date and time (expected e.g. "
                        "2026-03-31T09:30:00+08:00)"
                    ) from None
                dt = _epoch_ms(int(text), UTC)
        else:
            raise _Unmappable(f"{_show(value)} is not a date and time")
        if dt.tzinfo is None or dt.utcoffset() is None:
            if tz is None:
                raise _Unmappable(
                    f'{_show(value)} has no timezone; add assume_timezone = "<zone>" '
                    f'(e.g. "Asia/Shanghai") to {ctx.section} if the tool writes local times'
                )
            dt = dt.replace(tzinfo=tz)
        return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")

    return conv


def _bool(ctx: _Ctx) -> Callable[[Any], Any]:
    def conv(value: Any) -> Any:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str):
            low = value.strip().casefold()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
        raise _Unmappable(f"{_show(value)} is not true or false")

    return conv


def _list(ctx: _Ctx) -> Callable[[Any], Any]:
    def conv(value: Any) -> Any:
        items = list(value) if isinstance(value, list | tuple) else [value]
        for item in items:
            if not isinstance(item, _SCALARS):
                raise _Unmappable(f"{_show(value)} is not a list of plain values")
        return items

    return conv


def _json(ctx: _Ctx) -> Callable[[Any], Any]:
    return _identity


_CONVERTERS: dict[str, Callable[[_Ctx], Callable[[Any], Any]]] = {
    "text": _text,
    "number": _number,
    "integer": _integer,
    "date": _date,
    "datetime": _datetime,
    "bool": _bool,
    "list": _list,
    "json": _json,
}


def _fold(forward: dict[str, Any]) -> dict[str, Any]:
    folded: dict[str, Any] = {}
    for option, canon in forward.items():
        folded.setdefault(option.casefold(), canon)
    return folded


def _enum_pull(ctx: _Ctx, maps: _EnumMaps, default: Any) -> Callable[[Any], Any]:
    forward, folded = maps.forward, maps.folded
    if forward is None or folded is None:
        return _text(ctx)
    has_default = default is not _MISSING
    table = f"[{ctx.section[1:-1]}.values]" if ctx.section.startswith("[") else ctx.section

    def conv(value: Any) -> Any:
        key = value if isinstance(value, str) else str(value)
        hit = forward.get(key, _MISSING)
        if hit is _MISSING:
            hit = folded.get(key.casefold(), _MISSING)
        if hit is not _MISSING:
            return hit
        if has_default:
            return default
        raise _Unmappable(
            f'{_show(value)} has no row in {table}; add {_q(key)} = "..." there, or set '
            f"default in {ctx.section}"
        )

    return conv


def _enum_push(ctx: _Ctx, maps: _EnumMaps) -> Callable[[Any], Any]:
    reverse = maps.reverse
    if reverse is None:
        return _identity

    def unconv(value: Any) -> Any:
        if value is None:
            return None
        option = reverse.get(value)
        if option is None:
            if maps.forward is None:
                return value
            raise _Unmappable(
                f"{_show(value)} has no option of the tool to write; add it to "
                f"the push_value table of {ctx.section}"
            )
        return option

    return unconv


# --------------------------------------------------------------------------- helpers


def _bare(tp: Any) -> Any:
    """The type inside ``Annotated[...]`` (constraints and validators ride along there)."""
    return get_args(tp)[0] if get_origin(tp) is Annotated else tp


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) in (Union, types.UnionType):
        args = get_args(tp)
        rest = [a for a in args if a is not type(None)]
        nullable = len(rest) < len(args)
        return (rest[0] if len(rest) == 1 else Any), nullable
    return tp, False


def _shape(path: str, lifecycle: list[str]) -> _Shape:
    if path.startswith("custom."):
        return _Shape("any", True, _KIND_LABEL["any"])
    tp, nullable = _strip_optional(_bare(path_annotation(path)))
    tp = _bare(tp)
    if path == "stage":
        keys = tuple(lifecycle)
        return _Shape("enum", nullable, f"a lifecycle stage ({', '.join(keys)})", keys)
    origin = get_origin(tp)
    if origin is list:
        item = get_args(tp)[0]
        if isinstance(item, type) and issubclass(item, BaseModel):
            return _Shape("records", nullable, f"a list of {item.__name__} entries")
        return _Shape("list", nullable, _KIND_LABEL["list"])
    if origin is dict:
        return _Shape("table", nullable, _KIND_LABEL["table"])
    if isinstance(tp, type):
        if issubclass(tp, Enum):
            domain = tuple(str(m.value) for m in tp)
            return _Shape("enum", nullable, f"one of {', '.join(domain)}", domain)
        for cls, kind in (
            (bool, "bool"),
            (datetime, "datetime"),
            (date, "date"),
            (Money, "money"),
            (Person, "person"),
            (int, "int"),
            (float, "number"),
            (Decimal, "number"),
            (str, "text"),
        ):
            if issubclass(tp, cls):
                return _Shape(kind, nullable, _KIND_LABEL[kind])
        if issubclass(tp, BaseModel):
            return _Shape("record", nullable, f"a {tp.__name__} (a group of fields)")
    return _Shape("any", nullable, _KIND_LABEL["any"])


def _adapter(path: str) -> TypeAdapter[Any]:
    """``path_adapter(path)`` plus the field's constraints (0 <= probability <= 100).

    path_adapter validates the annotation only; the ``Field(ge=..., le=...)`` metadata lives on
    the FieldInfo. Built once per load, never per record.
    """
    info = _field_info(path)
    if info is None or not info.metadata:
        return path_adapter(path)
    return TypeAdapter(Annotated[info.annotation, *info.metadata])  # type: ignore[arg-type]


def _field_info(path: str) -> FieldInfo | None:
    if path.startswith("custom."):
        return None
    model: type[BaseModel] = SalesProject
    parts = path.split(".")
    for part in parts[:-1]:
        inner, _ = _strip_optional(model.model_fields[part].annotation)
        if not (isinstance(inner, type) and issubclass(inner, BaseModel)):
            return None
        model = inner
    return model.model_fields.get(parts[-1])


def _container_of(path: str) -> str | None:
    """The list, table or money field a path reaches inside, if any (``tasks.title`` -> tasks)."""
    if path.startswith("custom."):
        return None
    parts = path.split(".")
    for i in range(1, len(parts)):
        prefix = ".".join(parts[:i])
        try:
            tp, _ = _strip_optional(_bare(path_annotation(prefix)))
        except PathError:
            return None
        if get_origin(tp) in (list, dict) or tp is Money:
            return prefix
    return None


def _mappable(path: str) -> bool:
    return path.split(".")[0] not in ENGINE_FIELDS and _container_of(path) is None


def _json_value(adapter: TypeAdapter[Any], value: Any) -> Any:
    return adapter.dump_python(adapter.validate_python(_toml_native(value)), mode="json")


def _toml_native(value: Any) -> Any:
    """TOML dates and times (unquoted 2026-03-31) as the ISO text a tool would send."""
    if isinstance(value, date | datetime):
        return value.isoformat()
    return value


def _read(data: Mapping[str, Any], path: str) -> Any:
    cur: Any = data
    for part in path.split("."):
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(part)
    return cur


def _misplaced(key: str, table: tuple[str, ...]) -> str:
    return (
        f"`{key}` belongs to {_where(table[:-1])} but sits under {_where(table)}: in TOML, every "
        f"key after a [section] line belongs to that section; move `{key}` above the "
        f"{_where(table)} line"
    )


def _tk(key: str) -> str:
    """A key as it is written in TOML: bare when it can be, else quoted."""
    return key if _BARE_KEY.match(key) else json.dumps(key, ensure_ascii=False)


def _where(section: tuple[str, ...], key: str | None = None) -> str:
    """``[fields.stage.values] "In Progress"``: the section and key a problem is about."""
    head = "[" + ".".join(_tk(k) for k in section) + "]" if section else ""
    if key is None:
        return head
    return f"{head} {_tk(key)}" if head else _tk(key)


def _q(text: object) -> str:
    return json.dumps(str(text), ensure_ascii=False)


def _qs(items: Iterable[object]) -> str:
    return ", ".join(_q(i) for i in items)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value, ensure_ascii=False, default=str)


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 80 else text[:77] + "..."
