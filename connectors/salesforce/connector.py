"""Salesforce Opportunities as sales projects, through simple-salesforce on our HTTP policy.

**HTTP.** simple-salesforce calls ``session.request`` for everything it does; we hand it a
:class:`_PolicySession` whose ``request`` is :meth:`bridge.http.HttpClient.request`. So every
call it makes is throttled by the connector's rate limit, timed out, counted in
``connector.http.counter`` (one count per attempt) and redacted, and 429/5xx are retried:
GETs always, PATCHes too (an update, an upsert on an external id and a collections update or
upsert give the same result when repeated), POSTs (creates) only on 429. Every other status is
handed back to simple-salesforce, which raises its own exception; :meth:`_call` maps those to
:mod:`bridge.errors`.

**Auth.** simple-salesforce builds its login URLs as ``https://{domain}.salesforce.com``, which
cannot name a My Domain URL with a port or the emulator, so the connector runs the OAuth 2.0
username-password flow itself (``POST {login_url}/services/oauth2/token``: consumer key and
secret, username, password + security token) and gives simple-salesforce the access token and
instance URL (its "direct" mode). Alternatively configure an access token and instance URL.
On ``INVALID_SESSION_ID`` the connector logs in again once and repeats the call; with a bare
access token it raises AuthError. simple-salesforce writes ``https://`` into every URL, so an
``http://`` instance URL is only accepted on a loopback host (the emulator), where a transport
adapter sends those requests over plain HTTP.

**Records.** Fields are Opportunity API names with the value shapes of :mod:`connectors.base`.
A few keys are the connector's own: ``Account.Name`` (the account, found or created by name on
writes), ``OwnerId`` (a user dict; written by e-mail), ``OpportunityContactRoles`` (stakeholders),
``Tasks.Completed`` (actions) and ``Tasks.Open`` (next steps), read through child subqueries.
The canonical id lives in an external id field (``Canonical_Id__c``), so creates are upserts
on it and can never duplicate. ``version`` is ``SystemModstamp``; ``updated_at``
``LastModifiedDate``.

**Stakeholders** are the opportunity's contact roles, in creation order: the Contact gives
``name``, ``title`` and ``email``; ``Role`` the role, through ``contact_roles`` (Role value ->
role, any case; the first row of a role is the one written). The default covers every role
with the standard values plus "Blocker", which orgs lack and add to the Role picklist.
Salesforce has no field for the attitude, so it lives in a custom picklist on
OpportunityContactRole named by ``attitude_field`` (default ``Attitude__c``; values in words,
any case: Supportive, Neutral, Opposed, Unknown). Both are resolved through the describe of
OpportunityContactRole (read by :meth:`discover`, so pulls cost no request more) and are
required while stakeholders are in use: pulls and stakeholder writes fail (FatalError), saying
what to add, when a role has no picklist value or the attitude field or one of its values is
missing, because a round trip would otherwise turn hub roles into "other" and attitudes into
"unknown"; :meth:`check` says so too. ``attitude_field = ""`` (or ``contact_roles = {}``) does
without: attitudes read "unknown" (roles "other") and are never written. The version being the
Opportunity's ``SystemModstamp`` (which a contact role's edit does not move), a role or
attitude changed in Salesforce is seen once the opportunity changes, or by a full pull.

**Pulls** are one SOQL query, paged by ``nextRecordsUrl``: ``queryAll`` (deleted records
included, as ``deleted``) ``WHERE SystemModstamp >= cursor - overlap ORDER BY SystemModstamp,
Id``, selecting only the fields in use (:meth:`select`).

**Batch writes.** :meth:`update_many` and :meth:`create_many` write up to 200 records per
request through sObject Collections. Collections check no version, so :meth:`update_many`
reads the chunk's ``SystemModstamp`` with one SOQL query first (a record edited since the
pull is StaleVersion, not written) and reads the written records back with another (their
new versions): three requests per 200 updates.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any, ClassVar, Literal, TypeVar
from urllib.parse import quote, urlsplit

import requests
from pydantic import Field, ValidationError, field_validator, model_validator
from requests.adapters import HTTPAdapter
from simple_salesforce.api import Salesforce
from simple_salesforce.exceptions import SalesforceError, SalesforceExpiredSession

from bridge.errors import ConnectorError
from bridge.http import RETRY_STATUSES, HttpClient
from bridge.model import Attitude, StakeholderRole, to_json_value
from bridge.secrets import Secret, register_secret
from connectors.base import (
    AuthError,
    Connector,
    ConnectorConfig,
    Cursor,
    FatalError,
    HistoryEntry,
    Page,
    RateLimited,
    RemoteField,
    RemoteRecord,
    RemoteUser,
    Schema,
    SkippableRecord,
    StaleVersion,
    parse_duration,
)
from connectors.lists import item_key, read_marker, reconcile, with_marker
from connectors.salesforce.soql import parse_datetime

log = logging.getLogger("salesbridge.salesforce")

T = TypeVar("T")
SOBJECT = "Opportunity"
COLLECTION_SIZE = 200
ACCOUNT, OWNER, ROLES = "Account.Name", "OwnerId", "OpportunityContactRoles"
DONE_TASKS, OPEN_TASKS = "Tasks.Completed", "Tasks.Open"
_VIRTUAL: dict[str, tuple[str, str, bool]] = {
    ACCOUNT: ("Account Name", "text", True),
    OWNER: ("Owner", "user", True),
    ROLES: ("Contact Roles", "json", True),
    DONE_TASKS: ("Completed Tasks", "json", True),
    OPEN_TASKS: ("Open Tasks", "json", True),
}
_CHILDREN = (ROLES, DONE_TASKS, OPEN_TASKS)
_ALWAYS = ("Id", "IsDeleted", "SystemModstamp", "LastModifiedDate", "LastModifiedBy.Email")
# Children are read in creation order (the order the bridge writes a list in), without the
# recycle bin (pulls are queryAll).
_ROLE_COLUMNS = "Id, Role, IsPrimary, ContactId, Contact.Name, Contact.Title, Contact.Email"
ROLE_OBJECT = "OpportunityContactRole"
_TASK_COLUMNS = (
    "Id, Subject, Status, IsClosed, ActivityDate, CompletedDateTime, LastModifiedDate, "
    "Description, OwnerId, Owner.Name, Owner.Email"
)
_CHILD_ORDER = "WHERE IsDeleted = false ORDER BY CreatedDate, Id"
_ROLE_QUERY = f"(SELECT {{columns}} FROM {ROLES} {_CHILD_ORDER})"  # noqa: S608
_TASK_QUERY = f"(SELECT {_TASK_COLUMNS} FROM Tasks {_CHILD_ORDER})"  # noqa: S608
# The last line of a Task's Description written by the bridge: what Salesforce cannot hold
# (an action's time and author, a next step's owner who is no Salesforce user), and the OwnerId
# it was written with: while the owner is unchanged the marker's values are read back.
_SF_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:?\d{2})$")
# Errors about one record's values: the record is quarantined, the rest of the sync goes on.
_RECORD_ERRORS = frozenset(
    {
        "FIELD_CUSTOM_VALIDATION_EXCEPTION", "REQUIRED_FIELD_MISSING", "STRING_TOO_LONG",
        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", "INVALID_TYPE_ON_FIELD_IN_RECORD",
        "FIELD_INTEGRITY_EXCEPTION", "INVALID_CROSS_REFERENCE_KEY", "DUPLICATE_VALUE",
        "NUMBER_OUTSIDE_VALID_RANGE", "INVALID_EMAIL_ADDRESS", "MALFORMED_ID",
        "FIELD_FILTER_VALIDATION_EXCEPTION", "CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY",
    }
)  # fmt: skip
DEFAULT_ROLES = {
    "Decision Maker": "decision_maker",
    "Economic Decision Maker": "economic_buyer",
    "Economic Buyer": "economic_buyer",
    "Executive Sponsor": "champion",
    "Influencer": "influencer",
    "Technical Buyer": "technical_buyer",
    "Evaluator": "influencer",
    "Business User": "user",
    "Blocker": "blocker",  # no standard value: add it to the org's Role picklist
    "Other": "other",
}
_SETUP = "Setup > Object Manager > Opportunity Contact Role > Fields & Relationships"
_HISTORY_FIELDS = ("StageName", "Amount", "CloseDate", "Probability")


class SalesforceConfig(ConnectorConfig):
    """``[connectors.<name>]`` with ``kind = "salesforce"``. Secrets are ``env:VAR`` references."""

    kind: Literal["salesforce"] = "salesforce"
    login_url: str = Field(
        "https://login.salesforce.com",
        description="where to log in: https://login.salesforce.com, https://test.salesforce.com "
        "(sandboxes) or your My Domain URL",
    )
    username: str | None = None
    password: Secret | None = None
    security_token: Secret | None = Field(None, description="appended to the password")
    client_id: str | None = Field(None, description="the connected app's consumer key")
    client_secret: Secret | None = Field(None, description="the connected app's consumer secret")
    access_token: Secret | None = Field(None, description="instead of a login: a session token")
    instance_url: str | None = Field(None, description="with access_token: the org's URL")
    api_version: str = Field("59.0", pattern=r"^\d+\.\d$")
    external_id_field: str = Field(
        "Canonical_Id__c",
        description="an Opportunity text field marked External ID and Unique, holding the "
        "canonical project id; creates are upserts on it",
    )
    fields: list[str] | None = Field(
        None, description="Opportunity fields to read (API names); default: every field"
    )
    page_size: int = Field(2000, ge=1, le=2000, description="records per query batch")
    overlap: timedelta = Field(
        timedelta(minutes=2), description="re-read window before the cursor (late commits)"
    )
    contact_roles: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_ROLES),
        description="OpportunityContactRole.Role value -> stakeholder role; every role needs a "
        "value in the org's picklist (the first row of a role is the one written); {} to keep "
        "roles out of Salesforce",
    )
    attitude_field: str = Field(
        "Attitude__c",
        description="picklist field on OpportunityContactRole holding a stakeholder's attitude "
        '(values Supportive, Neutral, Opposed, Unknown); "" to keep attitudes out of Salesforce',
    )

    @field_validator("contact_roles")
    @classmethod
    def _roles(cls, v: dict[str, str]) -> dict[str, str]:
        bad = sorted(set(v.values()) - set(StakeholderRole))
        if bad:
            raise ValueError(
                f"{', '.join(map(repr, bad))}: not a stakeholder role (one of "
                f"{', '.join(StakeholderRole)})"
            )
        return v

    @field_validator("overlap", mode="before")
    @classmethod
    def _overlap(cls, v: Any) -> timedelta:
        return parse_duration(v)

    @model_validator(mode="after")
    def _credentials(self) -> SalesforceConfig:
        login = (self.username, self.password, self.client_id, self.client_secret)
        if self.access_token is not None:
            if not self.instance_url:
                raise ValueError("access_token needs instance_url (the org's https:// URL)")
        elif not all(v is not None for v in login):
            raise ValueError(
                "set username, password (+ security_token), client_id and client_secret for the "
                "OAuth password flow, or access_token and instance_url"
            )
        for url in (self.login_url, self.instance_url):
            if url is not None:
                _check_url(url)
        return self


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname and _loopback(parts.hostname):
        return
    raise ValueError(f"{url!r}: Salesforce URLs are https:// (http:// only on 127.0.0.1)")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _PolicySession(requests.Session):
    """The session simple-salesforce gets: each request goes through our :class:`HttpClient`."""

    def __init__(self, http: HttpClient) -> None:
        super().__init__()
        self.http = http

    def request(  # type: ignore[override]
        self, method: str, url: str, *args: Any, **kwargs: Any
    ) -> requests.Response:
        return self.http.request(
            method,
            url,
            params=kwargs.get("params"),
            data=kwargs.get("data"),
            json=kwargs.get("json"),
            headers=kwargs.get("headers"),
            timeout=kwargs.get("timeout"),
            expect=_HANDED_BACK,
            retry=True if method.upper() == "PATCH" else None,
        )


_HANDED_BACK = tuple(s for s in range(300, 600) if s not in RETRY_STATUSES)


class _PlainHttp(HTTPAdapter):
    """Sends simple-salesforce's ``https://`` URLs for a loopback emulator over plain HTTP."""

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        if request.url and request.url.startswith("https://"):
            request.url = "http://" + request.url.removeprefix("https://")
        return super().send(request, *args, **kwargs)


_ROLE_VALUES = tuple(StakeholderRole)
_ATTITUDE_VALUES = tuple(Attitude)


def _words(label: Any) -> str:
    """A picklist value or label as a canonical value: "Economic buyer" -> "economic_buyer"."""
    return re.sub(r"[\s_-]+", "_", str(label or "").strip().casefold())


def _label(value: str) -> str:
    """A canonical value as a picklist value to add: "technical_buyer" -> "Technical Buyer"."""
    return value.replace("_", " ").title()


@dataclass(frozen=True)
class _RoleFields:
    """What an org's OpportunityContactRole can hold, from its describe.

    ``roles``: the Role value written for each stakeholder role (None: left empty, read as
    "other"); empty when ``contact_roles`` is ``{}`` (roles are then never written).
    ``attitude_field``: the attitude picklist's API name (None: attitudes are not kept), and
    ``attitudes`` the value written for each attitude. ``problems`` say what the org lacks.
    """

    read_roles: Mapping[str, str] = dataclass_field(default_factory=dict)
    roles: Mapping[str, str | None] = dataclass_field(default_factory=dict)
    attitude_field: str | None = None
    read_attitudes: Mapping[str, str] = dataclass_field(default_factory=dict)
    attitudes: Mapping[str, str | None] = dataclass_field(default_factory=dict)
    problems: tuple[str, ...] = ()

    @classmethod
    def resolve(cls, config: SalesforceConfig, fields: Iterable[Mapping[str, Any]]) -> _RoleFields:
        by_name = {str(f.get("name", "")).casefold(): f for f in fields}
        problems: list[str] = []
        read_roles: dict[str, str] = {}
        for value, role in config.contact_roles.items():
            read_roles.setdefault(value.casefold(), role)
        roles: dict[str, str | None] = {}
        if config.contact_roles:
            active = {
                str(p["value"]).casefold(): str(p["value"])
                for p in (by_name.get("role") or {}).get("picklistValues") or ()
                if p.get("active", True)
            }
            for role in _ROLE_VALUES:
                names = [n for n, r in config.contact_roles.items() if r == role]
                roles[role] = next(
                    (active[n.casefold()] for n in names if n.casefold() in active), None
                )
            lacking = [r for r in _ROLE_VALUES if roles[r] is None and r != StakeholderRole.other]
            if lacking:
                values = ", ".join(f'"{_label(r)}"' for r in lacking)
                rows = ", ".join(f'"{_label(r)}" = "{r}"' for r in lacking)
                problems.append(
                    f"{ROLE_OBJECT}.Role has no picklist value that contact_roles maps to "
                    f"{', '.join(lacking)}: add {values} to the Role picklist ({_SETUP} > Role > "
                    f"Values > New) and, unless contact_roles already names them, the rows "
                    f"{rows} to contact_roles; or set contact_roles = {{}} to keep roles out "
                    "of Salesforce"
                )
        attitude_field: str | None = None
        read_attitudes: dict[str, str] = {}
        attitudes: dict[str, str | None] = {}
        name = config.attitude_field
        if name:
            f = by_name.get(name.casefold()) or next(
                (
                    f
                    for f in by_name.values()
                    if str(f.get("label", "")).casefold() == name.casefold()
                ),
                None,
            )
            fix = (
                f'create a picklist field "Attitude" (API name Attitude__c) on Opportunity '
                f"Contact Role with the values Supportive, Neutral, Opposed and Unknown "
                f"({_SETUP} > New), editable by the integration user, and set attitude_field to "
                'its API name; or set attitude_field = "" to keep attitudes out of Salesforce'
            )
            if f is None:
                problems.append(f"{ROLE_OBJECT} has no field {name!r} (attitude_field): {fix}")
            elif f.get("type") != "picklist":
                problems.append(
                    f"{ROLE_OBJECT}.{f['name']} (attitude_field) is a {f.get('type')} field, not "
                    f"a picklist: {fix}"
                )
            elif not (f.get("createable") and f.get("updateable")):
                problems.append(
                    f"{ROLE_OBJECT}.{f['name']} (attitude_field) is read-only for the "
                    "integration user: give its profile or permission set edit access to the "
                    "field (field-level security)"
                )
            else:
                attitude_field = str(f["name"])
                for p in f.get("picklistValues") or ():
                    value = str(p["value"])
                    for text in (value, p.get("label")):
                        if _words(text) in _ATTITUDE_VALUES:
                            read_attitudes.setdefault(value, _words(text))
                            if p.get("active", True):
                                attitudes.setdefault(_words(text), value)
                            break
                missing = [a for a in _ATTITUDE_VALUES if a not in attitudes and a != "unknown"]
                attitudes.setdefault(Attitude.unknown, None)
                if missing:
                    values = ", ".join(f'"{_label(a)}"' for a in missing)
                    problems.append(
                        f"{ROLE_OBJECT}.{attitude_field} (attitude_field) has no picklist value "
                        f"for {', '.join(missing)}: add {values} to it ({_SETUP} > "
                        f"{f.get('label') or attitude_field} > Values > New)"
                    )
        return cls(read_roles, roles, attitude_field, read_attitudes, attitudes, tuple(problems))

    @property
    def columns(self) -> str:
        """The OpportunityContactRole fields a stakeholder is read from."""
        return _ROLE_COLUMNS + (f", {self.attitude_field}" if self.attitude_field else "")

    def role_of(self, value: Any) -> str:
        return self.read_roles.get(str(value or "").casefold(), StakeholderRole.other.value)

    def attitude_of(self, row: Mapping[str, Any]) -> str:
        if self.attitude_field is None:
            return Attitude.unknown.value
        value = row.get(self.attitude_field)
        found = self.read_attitudes.get(str(value)) if value else None
        if found is None and _words(value) in _ATTITUDE_VALUES:
            found = _words(value)
        return found or Attitude.unknown.value

    def body(self, wanted: Mapping[str, Any], current: Mapping[str, Any] | None) -> dict[str, Any]:
        """The fields to write for the stakeholder ``wanted``: every kept one (``current``
        None: a new contact role; empty ones left out), else those that read differently."""
        out: dict[str, Any] = {}
        keys = (("role", "Role", self.roles), ("attitude", self.attitude_field, self.attitudes))
        for key, api_name, values in keys:
            if api_name is None or not values:
                continue
            value = values.get(str(wanted[key]))
            if current is None:
                if value is not None:
                    out[api_name] = value
            elif current[key] != wanted[key]:
                out[api_name] = value
        return out


class SalesforceConnector(Connector[SalesforceConfig]):
    """Opportunities of one org. ``sleep`` is the HTTP client's (tests pass a fake)."""

    kind: ClassVar[str] = "salesforce"
    config_model: ClassVar[type[ConnectorConfig]] = SalesforceConfig

    def __init__(
        self, name: str, config: SalesforceConfig, *, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        super().__init__(name, config)
        self.http = HttpClient.from_config(name, config.login_url, config, sleep=sleep)
        self._session = _PolicySession(self.http)
        self._sf: Salesforce | None = None
        self._instance_url = ""
        self._columns: tuple[str, ...] | None = tuple(config.fields) if config.fields else None
        self._users: dict[str, RemoteUser] | None = None
        self._accounts: dict[str, str] = {}
        self._role_fields_found: _RoleFields | None = None

    # ------------------------------------------------------------------ session

    def _client(self) -> Salesforce:
        if self._sf is None:
            token, instance = self._login()
            parts = urlsplit(instance)
            if parts.scheme == "http":
                _check_url(instance)
                self.http.session.mount(f"https://{parts.netloc}/", _PlainHttp())
            self._instance_url = instance.rstrip("/")
            self._sf = Salesforce(
                session_id=token,
                instance_url=instance,
                session=self._session,
                version=self.config.api_version,
            )
        return self._sf

    def _login(self) -> tuple[str, str]:
        c = self.config
        if c.access_token is not None:
            assert c.instance_url is not None
            return c.access_token.reveal(), c.instance_url
        assert c.password and c.client_secret and c.username and c.client_id
        password = c.password.reveal() + (c.security_token.reveal() if c.security_token else "")
        response = self.http.request(
            "POST",
            c.login_url.rstrip("/") + "/services/oauth2/token",
            data={
                "grant_type": "password",
                "client_id": c.client_id,
                "client_secret": c.client_secret.reveal(),
                "username": c.username,
                "password": password,
            },
            expect=(400, 401),
            retry=True,
        )
        body = self.http.decode_json(response)
        if response.status_code != 200 or not isinstance(body, dict):
            error = body.get("error_description") or body.get("error") if body else None
            raise AuthError(
                f"{self.name}: Salesforce login as {c.username} failed: {error}; check "
                "username, password, security_token, client_id and client_secret",
                connector=self.name,
                status=response.status_code,
            )
        token, instance = body.get("access_token"), body.get("instance_url")
        if not (isinstance(token, str) and isinstance(instance, str)):
            raise AuthError(f"{self.name}: the token response lacks a token", connector=self.name)
        register_secret(token)
        return token, instance

    def _call(self, fn: Callable[[Salesforce], T], *, ref: str | None = None) -> T:
        """Run ``fn`` on the client; log in again once on INVALID_SESSION_ID; map errors."""
        for attempt in (1, 2):
            sf = self._client()
            try:
                return fn(sf)
            except SalesforceExpiredSession as exc:
                self._sf = None
                if attempt == 2 or self.config.access_token is not None:
                    raise AuthError(
                        f"{self.name}: Salesforce session expired or invalid ({_code(exc)}); "
                        + (
                            "renew access_token"
                            if self.config.access_token is not None
                            else "logging in again did not help"
                        ),
                        connector=self.name,
                        status=401,
                    ) from None
                log.info("%s: session expired; logging in again", self.name)
            except SalesforceError as exc:
                raise self._error(exc, ref) from None
        raise AssertionError("unreachable")

    def _error(self, exc: SalesforceError, ref: str | None) -> ConnectorError:
        code, message = _code(exc), _message(exc)
        text = f"{self.name}: Salesforce refused the request: {code}: {message}"
        if code == "REQUEST_LIMIT_EXCEEDED":
            return RateLimited(text, connector=self.name, status=exc.status)
        if exc.status == 412 and ref is not None:
            return StaleVersion(ref, None, None, connector=self.name)
        if code in _RECORD_ERRORS and ref is not None:
            return SkippableRecord(
                ref, f"Salesforce refused it: {code}: {message}", connector=self.name
            )
        if exc.status in (401, 403):
            return AuthError(text, connector=self.name, status=exc.status)
        return FatalError(text, connector=self.name, status=exc.status)

    # ------------------------------------------------------------------ reading

    def check(self) -> str:
        info = self._call(lambda sf: sf.restful(f"sobjects/{SOBJECT}"))
        describe = (info or {}).get("objectDescribe", {})
        can = [w for w in ("createable", "updateable") if describe.get(w)]
        who = self.config.username or "an access token"
        rights = "/".join(can) or "read-only"
        version = self.config.api_version
        note = ""
        if self._columns is None or ROLES in self._columns:
            found = self._role_fields(refresh=True)
            if found.problems:
                note = f"; {self._role_error(found.problems)}"
        return (
            f"Salesforce {self._instance_url} as {who}: {SOBJECT} {rights} (API v{version})" + note
        )

    def discover(self) -> Schema:
        """Opportunity fields by API name and label, the stage picklist and the active users."""
        describe = self._call(lambda sf: sf.restful(f"sobjects/{SOBJECT}/describe"))
        found: list[RemoteField] = []
        stages: tuple[str, ...] = ()
        for f in (describe or {}).get("fields", ()):
            name = f["name"]
            if name in (self.config.external_id_field, OWNER):
                continue
            options = tuple(p["value"] for p in f.get("picklistValues") or () if p.get("active"))
            if name == "StageName":
                stages = options
            found.append(
                RemoteField(
                    name,
                    f["label"],
                    f["type"],
                    options=options,
                    custom=bool(f.get("custom")),
                    writable=bool(f.get("createable") or f.get("updateable")),
                )
            )
        for key, (label, ftype, writable) in _VIRTUAL.items():
            found.append(RemoteField(key, label, ftype, writable=writable))
        self._role_fields(refresh=True)  # read now: pulls then cost no request more
        users = self._user_index(refresh=True)
        unique = {u.id: u for u in users.values()}
        return Schema(fields=tuple(found), users=tuple(unique.values()), stages=stages)

    def select(self, fields: Iterable[str]) -> None:
        """Read only these fields (the mapping's ``remote_fields_needed``) from now on."""
        self._columns = tuple(
            dict.fromkeys(f for f in fields if f != self.config.external_id_field)
        )

    def pull(self, cursor: Cursor, *, signpost: datetime, full: bool = False) -> Iterator[Page]:
        if signpost.tzinfo is None:
            raise ValueError(f"signpost must be timezone-aware, got {signpost!r}")
        start = None if full else _position(cursor.get())
        where = ""
        if start is not None:
            since = (start - self.config.overlap).astimezone(UTC).replace(microsecond=0)
            where = f" WHERE SystemModstamp >= {since.strftime('%Y-%m-%dT%H:%M:%SZ')}"
        # SOQL is built from field names and quoted literals only (see _quote).
        soql = f"SELECT {self._select_list()} FROM {SOBJECT}{where} ORDER BY SystemModstamp, Id"  # noqa: S608
        headers = {"Sforce-Query-Options": f"batchSize={self.config.page_size}"}
        result = self._call(lambda sf: sf.query(soql, include_deleted=not full, headers=headers))
        position = start
        while True:
            records: list[RemoteRecord] = []
            skipped: list[SkippableRecord] = []
            for raw in result.get("records", ()):
                try:
                    record = self._record(raw)
                except SkippableRecord as exc:
                    skipped.append(exc)
                    continue
                records.append(record)
                at = parse_datetime(record.version)
                position = at if position is None else max(position, at)
            cur = cursor
            if position is not None:
                cur = cursor.advanced("", _iso(min(position, signpost.astimezone(UTC))))
            yield Page(records, cur, skipped)
            cursor = cur
            if result.get("done", True):
                return
            more = result["nextRecordsUrl"]
            result = self._call(
                lambda sf, more=more: sf.query_more(more, identifier_is_url=True, headers=headers)  # type: ignore[misc]
            )

    def get(self, ref: str) -> RemoteRecord | None:
        rows = self._query_records(f"Id = {_quote(ref)}", ref=ref)
        return rows[0] if rows else None

    def find_by_stamp(self, stamp: str) -> RemoteRecord | None:
        rows = self._query_records(f"{self.config.external_id_field} = {_quote(stamp)}")
        return rows[0] if rows else None

    def history(self, ref: str, since: datetime | None = None) -> list[HistoryEntry]:
        """Stage, amount, close date and probability changes from OpportunityHistory, with the
        times Salesforce recorded them (the first row is the record's creation)."""
        soql = (
            f"SELECT {', '.join(_HISTORY_FIELDS)}, CreatedDate, CreatedBy.Email "  # noqa: S608
            f"FROM OpportunityHistory WHERE OpportunityId = {_quote(ref)} ORDER BY CreatedDate, Id"
        )
        rows = self._call(lambda sf: sf.query_all(soql)["records"])
        entries: list[HistoryEntry] = []
        previous: Mapping[str, Any] = {}
        for row in rows:
            at = parse_datetime(row["CreatedDate"])
            actor = (row.get("CreatedBy") or {}).get("Email")
            for f in _HISTORY_FIELDS:
                if row.get(f) != previous.get(f):
                    entries.append(HistoryEntry(at, f, previous.get(f), row.get(f), actor))
            previous = row
        return [e for e in entries if since is None or e.at >= since]

    # ------------------------------------------------------------------ writing

    def create(self, fields: Mapping[str, Any], *, stamp: str) -> RemoteRecord:
        """An upsert on the external id: repeating it (after a lost response) creates nothing."""
        plain, children = self._split(fields, ref=stamp)
        body = self._body(plain, ref=stamp)
        key = f"{self.config.external_id_field}/{quote(stamp, safe='')}"
        path = f"sobjects/{SOBJECT}/{key}"
        result = self._call(lambda sf: sf.restful(path, method="PATCH", json=body), ref=stamp)
        rid = (result or {}).get("id")
        if not isinstance(rid, str):
            raise FatalError(
                f"{self.name}: the upsert of {stamp} returned no id", connector=self.name
            )
        self._write_children(rid, children)
        created = self.get(rid)
        if created is None:
            raise FatalError(
                f"{self.name}: {rid} vanished right after its upsert", connector=self.name
            )
        return created

    def update(
        self, ref: str, changes: Mapping[str, Any], *, expected_version: str | None
    ) -> RemoteRecord:
        """PATCH the changed fields. With ``expected_version``, ``If-Unmodified-Since`` makes
        Salesforce refuse (412) a record modified since then, to the second."""
        plain, children = self._split(changes, ref=ref)
        body = self._body(plain, ref=ref)
        headers = {}
        if expected_version:
            at = _position(expected_version)
            assert at is not None
            headers["If-Unmodified-Since"] = format_datetime(at, usegmt=True)
        try:
            path = f"sobjects/{SOBJECT}/{quote(ref, safe='')}"
            if body:
                self._call(
                    lambda sf: sf.restful(path, method="PATCH", json=body, headers=headers),
                    ref=ref,
                )
            elif expected_version:  # only child records change: check the version by reading
                now = self.get(ref)
                if now is None or now.version != expected_version:
                    raise StaleVersion(
                        ref, expected_version, now.version if now else None, connector=self.name
                    )
            self._write_children(ref, children)
        except StaleVersion:
            now = self.get(ref)
            raise StaleVersion(
                ref, expected_version, now.version if now else None, connector=self.name
            ) from None
        except FatalError as exc:
            if exc.status == 404:
                raise StaleVersion(ref, expected_version, None, connector=self.name) from None
            raise
        updated = self.get(ref)
        if updated is None:
            raise StaleVersion(ref, expected_version, None, connector=self.name)
        return updated

    def update_many(
        self,
        changes: Mapping[str, Mapping[str, Any]],
        expected_versions: Mapping[str, str | None] | None = None,
    ) -> dict[str, RemoteRecord | ConnectorError]:
        """Update many records, 200 per sObject Collections request (``allOrNone: false``).

        The collections write checks no version, so each chunk of 200 costs three requests:
        a SOQL query of the records' ``SystemModstamp`` (a record whose version is no longer
        the expected one is StaleVersion and is not written: a person's edit since the pull
        is never overwritten), the collections PATCH, and a SOQL query reading the written
        records back (their new version is what the engine stores as the link's version).

        Returns, per ref, the record as written or the error for that record alone
        (SkippableRecord for a refused value, StaleVersion for a stale or deleted record).
        Errors that stop every record (auth, rate limit, 5xx) are raised. As with
        :meth:`update`, an edit made between the version query and the write is not seen.
        """
        expected = expected_versions or {}
        out: dict[str, RemoteRecord | ConnectorError] = {}
        todo: list[tuple[str, dict[str, Any], dict[str, Any]]] = []  # (ref, body, children)
        for ref, fields in changes.items():
            try:
                plain, children = self._split(fields, ref=ref)
                todo.append((ref, self._body(plain, ref=ref), children))
            except SkippableRecord as exc:
                out[ref] = exc
        for i in range(0, len(todo), COLLECTION_SIZE):
            chunk = todo[i : i + COLLECTION_SIZE]
            fresh = self._check_versions({ref: expected.get(ref) for ref, _, _ in chunk}, out)
            chunk = [item for item in chunk if item[0] in fresh]
            items = [
                (ref, {"attributes": {"type": SOBJECT}, "id": ref, **body})
                for ref, body, _ in chunk
                if body
            ]
            for ref, body, _ in chunk:
                if not body:  # only child records change
                    out[ref] = RemoteRecord(ref=ref, version="", fields={}, url=self._url(ref))
            self._collection("composite/sobjects", items, changes, out, upsert=False)
            self._write_children_many({ref: children for ref, _, children in chunk}, out)
            written = [ref for ref, _, _ in chunk if isinstance(out.get(ref), RemoteRecord)]
            now = {r.ref: r for r in self._records_by_id(written)}
            for ref in written:
                record = now.get(ref)
                out[ref] = (
                    record
                    if record is not None and not record.deleted
                    else StaleVersion(ref, expected.get(ref), None, connector=self.name)
                )
        return out

    def _check_versions(
        self, expected: Mapping[str, str | None], out: dict[str, RemoteRecord | ConnectorError]
    ) -> set[str]:
        """The refs whose current version is the expected one (or that expect none), read in
        one query; the others get StaleVersion in ``out``."""
        checked = [ref for ref, version in expected.items() if version]
        current: dict[str, str] = {}
        if checked:
            ids = ", ".join(_quote(ref) for ref in checked)
            soql = f"SELECT Id, SystemModstamp FROM {SOBJECT} WHERE Id IN ({ids})"  # noqa: S608
            rows = self._call(lambda sf: sf.query_all(soql)["records"])
            for row in rows:
                try:
                    current[row["Id"]] = _iso(parse_datetime(row["SystemModstamp"]))
                except (KeyError, TypeError, ValueError):
                    continue  # unreadable: stale, below
        fresh = set()
        for ref, version in expected.items():
            if not version or (ref in current and _position(current[ref]) == _position(version)):
                fresh.add(ref)
            else:
                out[ref] = StaleVersion(ref, version, current.get(ref), connector=self.name)
        return fresh

    def _records_by_id(self, refs: list[str]) -> list[RemoteRecord]:
        """The records ``refs`` as :meth:`get` reads them, in one query (deleted ones left out)."""
        if not refs:
            return []
        ids = ", ".join(_quote(ref) for ref in refs)
        soql = f"SELECT {self._select_list()} FROM {SOBJECT} WHERE Id IN ({ids})"  # noqa: S608
        rows = self._call(lambda sf: sf.query_all(soql)["records"])
        records = []
        for row in rows:
            try:
                records.append(self._record(row))
            except SkippableRecord:
                continue  # unreadable: StaleVersion for its ref; the next pull quarantines it
        return records

    def create_many(
        self, items: Mapping[str, Mapping[str, Any]]
    ) -> dict[str, RemoteRecord | ConnectorError]:
        """Create (or re-find) many records by upsert on the external id, 200 per request.

        ``items`` maps stamp -> fields; the result is keyed by stamp, as :meth:`update_many`.
        """
        out: dict[str, RemoteRecord | ConnectorError] = {}
        ext = self.config.external_id_field
        bodies: list[tuple[str, dict[str, Any]]] = []
        children: dict[str, dict[str, Any]] = {}
        for stamp, fields in items.items():
            try:
                plain, children[stamp] = self._split(fields, ref=stamp)
                body = self._body(plain, ref=stamp)
            except SkippableRecord as exc:
                out[stamp] = exc
                continue
            bodies.append((stamp, {"attributes": {"type": SOBJECT}, ext: stamp, **body}))
        self._collection(f"composite/sobjects/{SOBJECT}/{ext}", bodies, items, out, upsert=True)
        self._write_children_many(children, out)
        return out

    def _collection(
        self,
        path: str,
        items: list[tuple[str, dict[str, Any]]],
        sent: Mapping[str, Mapping[str, Any]],
        out: dict[str, RemoteRecord | ConnectorError],
        *,
        upsert: bool,
    ) -> None:
        for i in range(0, len(items), COLLECTION_SIZE):
            chunk = items[i : i + COLLECTION_SIZE]
            payload = {"allOrNone": False, "records": [body for _, body in chunk]}
            results = self._call(lambda sf, p=payload: sf.restful(path, method="PATCH", json=p))  # type: ignore[misc]
            for (key, _), result in zip(chunk, results or (), strict=True):
                if result.get("success"):
                    rid = result["id"]
                    out[key] = RemoteRecord(
                        ref=rid,
                        version="",
                        fields=dict(sent[key]),
                        url=self._url(rid),
                        stamp=key if upsert else None,
                    )
                    continue
                errors = result.get("errors") or [{}]
                code, message = errors[0].get("statusCode", "UNKNOWN"), errors[0].get("message", "")
                if code in ("ENTITY_IS_DELETED", "NOT_FOUND") and not upsert:
                    out[key] = StaleVersion(key, None, None, connector=self.name)
                else:
                    out[key] = SkippableRecord(
                        key, f"Salesforce refused it: {code}: {message}", connector=self.name
                    )

    # ------------------------------------------------------------------ child records

    def _split(
        self, fields: Mapping[str, Any], *, ref: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """(Opportunity fields, child lists checked and in canonical form)."""
        plain = {k: v for k, v in fields.items() if k not in _CHILDREN}
        if ROLES in fields:
            self._roles_in_use()  # fail before writing what could not round-trip
        children: dict[str, Any] = {}
        for key, path in (
            (ROLES, "stakeholders"),
            (DONE_TASKS, "actions"),
            (OPEN_TASKS, "next_steps"),
        ):
            if key in fields:
                try:
                    children[key] = to_json_value(path, fields[key] or [])
                except ValidationError as exc:
                    raise SkippableRecord(
                        ref,
                        f"{key}: not a list of {path}: {exc.errors()[0]['msg']}",
                        connector=self.name,
                        payload=dict(fields),
                    ) from None
        return plain, children

    def _write_children_many(
        self,
        children: Mapping[str, Mapping[str, Any]],
        out: dict[str, RemoteRecord | ConnectorError],
    ) -> None:
        for key, lists in children.items():
            result = out.get(key)
            if lists and isinstance(result, RemoteRecord):
                try:
                    self._write_children(result.ref, lists)
                except (SkippableRecord, StaleVersion) as exc:
                    out[key] = exc

    def _write_children(self, rid: str, children: Mapping[str, Any]) -> None:
        """Make the opportunity's contact roles and tasks read back as ``children`` say."""
        if ROLES in children:
            self._write_roles(rid, children[ROLES])
        if DONE_TASKS in children or OPEN_TASKS in children:
            self._write_tasks(rid, children)

    def _children(self, rid: str, sobject: str, columns: str, parent: str) -> list[dict[str, Any]]:
        soql = (
            f"SELECT {columns} FROM {sobject} WHERE {parent} = {_quote(rid)} "  # noqa: S608
            "ORDER BY CreatedDate, Id"
        )
        rows: list[dict[str, Any]] = self._call(lambda sf: sf.query_all(soql)["records"], ref=rid)
        return rows

    def _save(self, sobject: str, rid: str | None, body: Mapping[str, Any], *, ref: str) -> str:
        """Create (``rid`` None) or update one child record; return its id."""
        if rid is None:
            made = self._call(
                lambda sf: sf.restful(f"sobjects/{sobject}", method="POST", json=dict(body)),
                ref=ref,
            )
            return str((made or {}).get("id"))
        path = f"sobjects/{sobject}/{quote(rid, safe='')}"
        self._call(lambda sf: sf.restful(path, method="PATCH", json=dict(body)), ref=ref)
        return rid

    def _delete(self, sobject: str, rid: str, *, ref: str) -> None:
        path = f"sobjects/{sobject}/{quote(rid, safe='')}"
        self._call(lambda sf: sf.restful(path, method="DELETE"), ref=ref)

    def _write_roles(self, rid: str, wanted: list[dict[str, Any]]) -> None:
        """Contact roles in the order of ``wanted``: contacts found by e-mail (else by name) or
        created; roles added, changed, or removed (the Contact itself is never deleted). A
        role's Role and attitude field are written only where they differ."""
        held = self._roles_in_use()
        rows = self._children(rid, ROLE_OBJECT, held.columns, "OpportunityId")
        known: dict[str, dict[str, Any]] = {}
        for r in rows:
            contact = dict(r.get("Contact") or {})
            contact["Id"] = r["ContactId"]
            known.setdefault(r["ContactId"], contact)
        account: list[str | None] = []
        targets = [(self._contact_for(rid, w, known, account), w) for w in wanted]
        current = [(r["ContactId"], (r["Id"], r)) for r in rows]
        keep, gone, new = reconcile(current, targets, key=lambda target: target[0])
        for role_id, _ in gone:
            self._delete(ROLE_OBJECT, role_id, ref=rid)
        for (role_id, row), (_, w) in keep:
            changes = held.body(w, self._stakeholder(row))
            if changes:
                self._save(ROLE_OBJECT, role_id, changes, ref=rid)
        for contact_id, w in new:
            body = {"OpportunityId": rid, "ContactId": contact_id, **held.body(w, None)}
            self._save(ROLE_OBJECT, None, body, ref=rid)

    def _role_fields(self, *, refresh: bool = False) -> _RoleFields:
        """What OpportunityContactRole can hold (its describe, read once and by discover())."""
        if self._role_fields_found is None or refresh:
            try:
                describe = self._call(lambda sf: sf.restful(f"sobjects/{ROLE_OBJECT}/describe"))
            except (FatalError, AuthError) as exc:
                if exc.status not in (403, 404):
                    raise
                problem = (
                    f"{ROLE_OBJECT} cannot be described ({exc}): give the integration user "
                    "access to opportunity contact roles, or map no stakeholders"
                )
                self._role_fields_found = _RoleFields(problems=(problem,))
            else:
                fields = (describe or {}).get("fields", ())
                self._role_fields_found = _RoleFields.resolve(self.config, fields)
        return self._role_fields_found

    def _roles_in_use(self) -> _RoleFields:
        """The role fields; FatalError when the org cannot hold every role and attitude."""
        found = self._role_fields()
        if found.problems:
            raise FatalError(self._role_error(found.problems), connector=self.name)
        return found

    def _role_error(self, problems: Iterable[str]) -> str:
        return (
            f"{self.name}: {'; '.join(problems)} (else a round trip through Salesforce would "
            'turn those roles into "other" and attitudes into "unknown")'
        )

    def _contact_for(
        self,
        rid: str,
        person: Mapping[str, Any],
        known: dict[str, dict[str, Any]],
        account: list[str | None],
    ) -> str:
        """The Contact of a stakeholder, matched by e-mail, else by name (among contacts with
        no e-mail), created if none; its name, title and e-mail are made the stakeholder's."""
        email, name = person.get("email"), person["name"]

        def same(c: Mapping[str, Any]) -> bool:
            if email:
                return bool((c.get("Email") or "").casefold() == email.casefold())
            return bool(c.get("Name") == name and not c.get("Email"))

        contact = next((c for c in known.values() if same(c)), None)
        if contact is None:
            where = f"Email = {_quote(email)}" if email else f"Name = {_quote(name)}"
            soql = (
                f"SELECT Id, Name, Title, Email FROM Contact WHERE {where} "  # noqa: S608
                "ORDER BY CreatedDate, Id"
            )
            rows = self._call(lambda sf: sf.query_all(soql)["records"], ref=rid)
            contact = next((dict(c) for c in rows if same(c)), None)
        first, _, last = name.strip().rpartition(" ")
        names = {"FirstName": first or None, "LastName": last or name}
        if contact is None:
            if not account:
                opp = self._call(
                    lambda sf: sf.restful(f"sobjects/{SOBJECT}/{rid}?fields=AccountId"), ref=rid
                )
                account.append((opp or {}).get("AccountId"))
            body = {**names, "Title": person.get("title"), "Email": email, "AccountId": account[0]}
            cid = self._save("Contact", None, {k: v for k, v in body.items() if v}, ref=rid)
            contact = {"Id": cid, "Name": name, "Title": person.get("title"), "Email": email}
        else:
            changes: dict[str, Any] = {}
            if contact.get("Name") != name:
                changes.update(names)
            if (contact.get("Title") or None) != person.get("title"):
                changes["Title"] = person.get("title")
            if (contact.get("Email") or None) != email:
                changes["Email"] = email
            if changes:
                self._save("Contact", contact["Id"], changes, ref=rid)
                contact.update(Name=name, Title=person.get("title"), Email=email)
        known[contact["Id"]] = contact
        return str(contact["Id"])

    def _write_tasks(self, rid: str, children: Mapping[str, Any]) -> None:
        """Open Tasks for next steps, Completed Tasks for actions, matched by subject and due
        date (next steps) or subject and time (actions), in the order given."""
        rows = self._children(rid, "Task", _TASK_COLUMNS, "WhatId")
        for col, path, closed in (
            (OPEN_TASKS, "next_steps", False),
            (DONE_TASKS, "actions", True),
        ):
            if col not in children:
                continue
            mine = [t for t in rows if bool(t.get("IsClosed")) == closed]
            items = to_json_value(path, [_task_item(t) for t in mine])
            current = [(item_key(i), (t, i)) for t, i in zip(mine, items, strict=True)]
            keep, gone, new = reconcile(current, children[col], key=item_key)
            for task, _ in gone:
                self._delete("Task", task["Id"], ref=rid)
            for (task, item), w in keep:
                if item != w:
                    self._save("Task", task["Id"], self._task_body(w, task), ref=rid)
            for w in new:
                self._save("Task", None, {"WhatId": rid, **self._task_body(w, None)}, ref=rid)

    def _task_body(self, item: Mapping[str, Any], task: Mapping[str, Any] | None) -> dict[str, Any]:
        """A Task's fields for a next step (``owner``) or an action (``at``), with the marker."""
        users = self._user_index()
        if "at" in item:
            who: Any = item.get("by")
            marker: dict[str, Any] = {"at": item["at"], "by": item.get("by")}
            body: dict[str, Any] = {"Subject": item["what"], "Status": "Completed"}
            if task is None:
                body["ActivityDate"] = str(item["at"])[:10]
        else:
            who = (item.get("owner") or {}).get("email")
            marker = {"owner": item.get("owner")}
            body = {"Subject": item["what"], "ActivityDate": item.get("due")}
            if task is None:
                body["Status"] = "Not Started"
        user = users.get((who or "").lower()) if isinstance(who, str) else None
        owner = user.id if user else self._running_user()
        if owner is not None:
            body["OwnerId"] = owner
        elif task is not None:
            owner = task.get("OwnerId")
        body["Description"] = with_marker((task or {}).get("Description"), {**marker, "as": owner})
        return body

    def _running_user(self) -> str | None:
        """The integration user's id (tasks with no Salesforce owner are assigned to it)."""
        user = self._user_index().get(self.config.username or "")
        return user.id if user else None

    def _stakeholder(self, row: Mapping[str, Any]) -> dict[str, Any]:
        contact = row.get("Contact") or {}
        held = self._roles_in_use()
        return {
            "name": contact.get("Name") or "(unknown contact)",
            "title": contact.get("Title"),
            "email": contact.get("Email"),
            "role": held.role_of(row.get("Role")),
            "attitude": held.attitude_of(row),
        }

    # ------------------------------------------------------------------ helpers

    def _select_list(self) -> str:
        columns = self._columns
        if columns is None:
            columns = tuple(f.id for f in self.discover().fields)
            self._columns = columns
        out: dict[str, None] = dict.fromkeys((*_ALWAYS, self.config.external_id_field))
        for col in columns:
            if col == OWNER:
                out.update(
                    dict.fromkeys(("OwnerId", "Owner.Name", "Owner.Email", "Owner.Username"))
                )
            elif col == ROLES:
                out[_ROLE_QUERY.format(columns=self._roles_in_use().columns)] = None
            elif col in (DONE_TASKS, OPEN_TASKS):
                out[_TASK_QUERY] = None
            else:
                out[col] = None
        return ", ".join(out)

    def _query_records(self, condition: str, *, ref: str | None = None) -> list[RemoteRecord]:
        soql = f"SELECT {self._select_list()} FROM {SOBJECT} WHERE {condition} LIMIT 2"  # noqa: S608
        rows = self._call(lambda sf: sf.query(soql)["records"], ref=ref)
        return [self._record(r) for r in rows]

    def _record(self, raw: Mapping[str, Any]) -> RemoteRecord:
        rid = raw.get("Id")
        if not isinstance(rid, str):
            raise SkippableRecord(
                "?", "the record has no Id", connector=self.name, payload=dict(raw)
            )
        try:
            version = _iso(parse_datetime(raw["SystemModstamp"]))
            modified = parse_datetime(raw["LastModifiedDate"])
        except (KeyError, TypeError, ValueError):
            raise SkippableRecord(
                rid,
                "no readable SystemModstamp/LastModifiedDate",
                connector=self.name,
                payload=dict(raw),
            ) from None
        fields: dict[str, Any] = {}
        for col in self._columns or ():
            fields[col] = self._value(raw, col)
        stamp = raw.get(self.config.external_id_field)
        return RemoteRecord(
            ref=rid,
            version=version,
            fields=fields,
            updated_at=modified,
            updated_by=(raw.get("LastModifiedBy") or {}).get("Email"),
            url=self._url(rid),
            stamp=stamp if isinstance(stamp, str) else None,
            deleted=bool(raw.get("IsDeleted")),
        )

    def _value(self, raw: Mapping[str, Any], col: str) -> Any:
        if col == OWNER:
            owner = raw.get("Owner") or {}
            if not raw.get("OwnerId"):
                return None
            return {
                "id": raw["OwnerId"],
                "name": owner.get("Name"),
                "email": owner.get("Email"),
                "username": owner.get("Username"),
            }
        if col == ROLES:
            rows = (raw.get(ROLES) or {}).get("records", [])
            return [self._stakeholder(r) for r in rows]
        if col in (DONE_TASKS, OPEN_TASKS):
            tasks = (raw.get("Tasks") or {}).get("records", [])
            closed = col == DONE_TASKS
            return [_task_item(t) for t in tasks if bool(t.get("IsClosed")) == closed]
        value: Any = raw
        for part in col.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if isinstance(value, str) and _SF_TIME.match(value):
            return _iso(parse_datetime(value))
        return value

    def _body(self, fields: Mapping[str, Any], *, ref: str) -> dict[str, Any]:
        """Remote fields as the API's JSON body: names to ids, read-only keys refused."""
        body: dict[str, Any] = {}
        for key, value in fields.items():
            if key in _CHILDREN or key == self.config.external_id_field:
                continue
            if key == ACCOUNT:
                body["AccountId"] = None if value is None else self._account_id(str(value))
            elif key == OWNER:
                if value is not None:  # an opportunity always has an owner: keep it
                    body["OwnerId"] = self._user_id(value, ref, fields)
            else:
                body[key] = value
        return body

    def _account_id(self, name: str) -> str:
        """The Account named ``name``, created if there is none (accounts are customers)."""
        if name not in self._accounts:
            rows = self._call(
                lambda sf: sf.query(
                    f"SELECT Id FROM Account WHERE Name = {_quote(name)} "  # noqa: S608
                    "ORDER BY CreatedDate LIMIT 1"
                )["records"]
            )
            if rows:
                self._accounts[name] = rows[0]["Id"]
            else:
                made = self._call(
                    lambda sf: sf.restful("sobjects/Account", method="POST", json={"Name": name})
                )
                self._accounts[name] = str((made or {}).get("id"))
        return self._accounts[name]

    def _user_index(self, *, refresh: bool = False) -> dict[str, RemoteUser]:
        if self._users is None or refresh:
            soql = "SELECT Id, Name, Email, Username FROM User WHERE IsActive = true ORDER BY Id"
            rows = self._call(lambda sf: sf.query_all(soql)["records"])
            index: dict[str, RemoteUser] = {}
            for r in rows:
                user = RemoteUser(r["Id"], r.get("Name"), r.get("Email"), r.get("Username"))
                for key in (r["Id"], (r.get("Email") or "").lower(), r.get("Username")):
                    if key:
                        index.setdefault(key, user)
            self._users = index
        return self._users

    def _user_id(self, value: Any, ref: str, fields: Mapping[str, Any]) -> str:
        person = value if isinstance(value, Mapping) else {"email": value}
        users = self._user_index()
        for key in (person.get("id"), (person.get("email") or "").lower(), person.get("username")):
            if isinstance(key, str) and key in users:
                return users[key].id
        raise SkippableRecord(
            ref,
            f"no active Salesforce user with e-mail {person.get('email')!r}: add the user "
            "or a row to [users.table] in the mapping",
            connector=self.name,
            payload=dict(fields),
        )

    def _url(self, rid: str) -> str:
        return f"{self._instance_url}/lightning/r/{SOBJECT}/{rid}/view"

    def close(self) -> None:
        self._sf = None
        self._session.close()
        self.http.close()


def _task_item(t: Mapping[str, Any]) -> dict[str, Any]:
    """A Task as an action (closed) or a next step (open); the marker's values stand while the
    task keeps the owner the bridge gave it."""
    marker = read_marker(t.get("Description"))
    owner = t.get("Owner") or {}
    same = "as" in marker and marker["as"] == t.get("OwnerId")
    if t.get("IsClosed"):
        if "at" in marker:
            at = marker["at"]
        else:
            at = _iso(parse_datetime(t.get("CompletedDateTime") or t["LastModifiedDate"]))
        by = marker.get("by") if same and "at" in marker else owner.get("Email")
        return {"what": t.get("Subject") or "", "at": at, "by": by}
    who = (
        marker.get("owner")
        if same and "owner" in marker
        else {"name": owner.get("Name"), "email": owner.get("Email")}
    )
    return {"what": t.get("Subject") or "", "owner": who, "due": t.get("ActivityDate")}


def _quote(text: str) -> str:
    """A SOQL string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="milliseconds")


def _position(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return parse_datetime(value)
    except ValueError:
        raise FatalError(f"cursor position {value!r} is not a Salesforce cursor") from None


def _first_error(exc: SalesforceError) -> Mapping[str, Any]:
    content = exc.content
    if isinstance(content, list) and content and isinstance(content[0], Mapping):
        return content[0]
    return {}


def _code(exc: SalesforceError) -> str:
    return str(_first_error(exc).get("errorCode") or exc.status)


def _message(exc: SalesforceError) -> str:
    return str(_first_error(exc).get("message") or exc.content)[:300]


__all__ = ["SalesforceConfig", "SalesforceConnector"]
