"""A Salesforce org on 127.0.0.1: what the connector uses of the REST API, faithfully.

:class:`SalesforceOrg` holds the data and the rules: sObjects Opportunity, Account, Contact,
User, OpportunityContactRole, OpportunityHistory and Task, each with a describe (field types,
labels, picklists, references, child relationships), system fields (``CreatedDate``,
``LastModifiedDate``, ``SystemModstamp`` at millisecond precision, never repeating), the
recycle bin (``IsDeleted``), stage side effects (Probability, IsClosed, IsWon, forecast
category), an OpportunityHistory row for every stage, amount, close date or probability change,
unique external ids and validation rules. Its methods are edits people make in the org, and an
admin's schema changes (:meth:`SalesforceOrg.delete_field`, :meth:`SalesforceOrg.set_picklist`).
The org is one set up for salesbridge: OpportunityContactRole has the custom picklist
``Attitude__c`` and a "Blocker" value in its Role picklist (see ``mappings/salesforce.toml``).

:class:`SalesforceEmulator` serves it (``/services/oauth2/token``, ``/services/data/vXX.X/``):

* ``sobjects`` (describe global), ``sobjects/{T}``, ``sobjects/{T}/describe``;
* ``sobjects/{T}/{id}`` GET (``?fields=``) / PATCH (``If-Unmodified-Since`` -> 412) / DELETE,
  ``POST sobjects/{T}``, ``sobjects/{T}/{externalIdField}/{value}`` GET and PATCH (upsert);
* ``sobjects/{T}/updated`` and ``/deleted`` (``?start=&end=``);
* ``query`` / ``queryAll`` (``?q=``, the subset in :mod:`.soql`) with ``nextRecordsUrl`` paging
  (``Sforce-Query-Options: batchSize=N``);
* ``composite/sobjects`` POST (create) / PATCH (update) and
  ``composite/sobjects/{T}/{externalIdField}`` PATCH (upsert), up to 200 records, ``allOrNone``.

Errors have Salesforce's shape, ``[{"message", "errorCode", "fields"}]``: ``INVALID_SESSION_ID``
(401) for a missing, wrong or expired token, ``FIELD_CUSTOM_VALIDATION_EXCEPTION`` from a
validation rule, ``MALFORMED_QUERY``, ``INVALID_FIELD``, ``NOT_FOUND``... Faults, latency and a
request budget come from the shared :class:`~bridge.emulator.Controls`; an injected 403 or 429
is worded ``REQUEST_LIMIT_EXCEEDED``, a 5xx ``SERVER_UNAVAILABLE``/``UNKNOWN_EXCEPTION``.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import secrets
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from bridge.emulator import Authenticator, Controls, Emulator
from connectors.salesforce import soql

API_VERSION = "59.0"
MAX_COLLECTION = 200
MAX_BATCH = 2000
_MS = timedelta(milliseconds=1)

Record = dict[str, Any]
Clock = Callable[[], datetime]


def format_time(at: datetime) -> str:
    """Salesforce's datetime text: ``2024-03-01T09:00:01.000+0000``."""
    at = at.astimezone(UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}+0000"


# --------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class FieldDef:
    name: str
    label: str
    type: str = "string"
    createable: bool = True
    updateable: bool = True
    required: bool = False
    picklist: tuple[str, ...] = ()
    restricted: bool = False
    reference_to: tuple[str, ...] = ()
    relationship: str | None = None
    external_id: bool = False
    length: int = 255

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "type": self.type,
            "soapType": _SOAP_TYPES.get(self.type, "xsd:string"),
            "length": self.length if self.type in _TEXT_TYPES else 0,
            "custom": self.name.endswith("__c"),
            "createable": self.createable,
            "updateable": self.updateable,
            "nillable": not self.required and self.type != "boolean" and self.name != "Id",
            "defaultedOnCreate": not self.createable or self.type == "boolean",
            "calculated": False,
            "externalId": self.external_id,
            "unique": self.external_id,
            "idLookup": self.external_id or self.name == "Id",
            "filterable": True,
            "sortable": self.type != "textarea",
            "precision": 18
            if self.type in ("currency", "double")
            else 3
            if self.type == "percent"
            else 0,
            "scale": 2 if self.type in ("currency", "double") else 0,
            "picklistValues": [
                {"active": True, "defaultValue": False, "label": v, "validFor": None, "value": v}
                for v in self.picklist
            ],
            "restrictedPicklist": self.restricted,
            "referenceTo": list(self.reference_to),
            "relationshipName": self.relationship,
        }


_TEXT_TYPES = frozenset(
    {"string", "textarea", "picklist", "email", "phone", "url", "id", "reference"}
)
_SOAP_TYPES = {
    "id": "tns:ID",
    "reference": "tns:ID",
    "boolean": "xsd:boolean",
    "currency": "xsd:double",
    "double": "xsd:double",
    "percent": "xsd:double",
    "int": "xsd:int",
    "date": "xsd:date",
    "datetime": "xsd:dateTime",
}


@dataclass(frozen=True)
class Stage:
    """A row of OpportunityStage: what choosing the stage implies."""

    name: str
    probability: int
    closed: bool = False
    won: bool = False
    forecast: str = "Pipeline"


STAGES = (
    Stage("Prospecting", 10),
    Stage("Qualification", 10),
    Stage("Needs Analysis", 20),
    Stage("Value Proposition", 50),
    Stage("Id. Decision Makers", 60),
    Stage("Perception Analysis", 70),
    Stage("Proposal/Price Quote", 75),
    Stage("Negotiation/Review", 90, forecast="Commit"),
    Stage("Closed Won", 100, True, True, "Closed"),
    Stage("Closed Lost", 0, True, False, "Omitted"),
    # Stages the Trailhead sample data uses: an org importing it has them in its picklist.
    Stage("Assigned dynamically", 10),
    Stage("Closed/Won", 100, True, True, "Closed"),
)
CURRENCIES = ("USD", "EUR", "GBP", "CNY", "JPY")
# The standard OpportunityContactRole.Role values, and "Blocker": no standard value stands for a
# stakeholder who works against the deal, so an org synced with salesbridge adds one (admins can
# add values to the Role picklist), as this org has. Its custom picklist Attitude__c on
# OpportunityContactRole (custom fields there exist since Spring '20) holds the attitude.
CONTACT_ROLES = (
    "Business User",
    "Decision Maker",
    "Economic Buyer",
    "Economic Decision Maker",
    "Evaluator",
    "Executive Sponsor",
    "Influencer",
    "Technical Buyer",
    "Other",
    "Blocker",
)
ATTITUDES = ("Supportive", "Neutral", "Opposed", "Unknown")
TASK_STATUSES = ("Not Started", "In Progress", "Completed", "Waiting on someone else", "Deferred")


@dataclass(frozen=True)
class ObjectDef:
    name: str
    label: str
    prefix: str
    fields: tuple[FieldDef, ...]
    children: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    """Child relationship name -> (child sObject, its field pointing here)."""
    writable: bool = True

    def field(self, name: str) -> FieldDef | None:
        return self._by_name.get(name.lower())

    def relationship(self, name: str) -> FieldDef | None:
        return self._by_relationship.get(name.lower())

    @functools.cached_property
    def _by_name(self) -> dict[str, FieldDef]:
        """Fields by lower-case name (the first of a name wins, as a scan would find it)."""
        out: dict[str, FieldDef] = {}
        for f in self.fields:
            out.setdefault(f.name.lower(), f)
        return out

    @functools.cached_property
    def _by_relationship(self) -> dict[str, FieldDef]:
        out: dict[str, FieldDef] = {}
        for f in self.fields:
            if f.relationship:
                out.setdefault(f.relationship.lower(), f)
        return out


# Each field: (API name, label, type[:detail], flags). ``reference:Account,Contact/What`` points
# at those objects through relationship ``What``; ``picklist:stages`` takes the named option
# list; ``string:120`` is a length. Flags: ro (read-only), req (required), ext (external id),
# rp (restricted picklist).
_SYSTEM = (
    ("Id", "{label} ID", "id", "ro"),
    ("IsDeleted", "Deleted", "boolean", "ro"),
    ("CreatedDate", "Created Date", "datetime", "ro"),
    ("CreatedById", "Created By ID", "reference:User/CreatedBy", "ro"),
    ("LastModifiedDate", "Last Modified Date", "datetime", "ro"),
    ("LastModifiedById", "Last Modified By ID", "reference:User/LastModifiedBy", "ro"),
    ("SystemModstamp", "System Modstamp", "datetime", "ro"),
)
_OWNER = ("OwnerId", "Owner ID", "reference:User/Owner", "")
_ADDRESS = tuple(
    (f"{kind}{part}", f"{kind} {label}", "string", "")
    for kind in ("Billing", "Shipping")
    for part, label in (
        ("Street", "Street"), ("City", "City"), ("State", "State/Province"),
        ("PostalCode", "Zip/Postal Code"), ("Country", "Country"),
    )
)  # fmt: skip
_OBJECTS: dict[str, tuple[str, str, tuple[tuple[str, str, str, str], ...]]] = {
    "User": ("User", "005", (
        ("Username", "Username", "string", "req"),
        ("FirstName", "First Name", "string", ""),
        ("LastName", "Last Name", "string", "req"),
        ("Name", "Full Name", "string", "ro"),
        ("Email", "Email", "email", "req"),
        ("IsActive", "Active", "boolean", ""),
    )),
    "Account": ("Account", "001", (
        ("Name", "Account Name", "string", "req"),
        ("Type", "Account Type", "picklist:account_types", ""),
        ("Industry", "Industry", "string", ""),
        ("Phone", "Account Phone", "phone", ""),
        ("Fax", "Account Fax", "phone", ""),
        ("Website", "Website", "url", ""),
        ("Description", "Account Description", "textarea:32000", ""),
        ("NumberOfEmployees", "Employees", "int", ""),
        ("AnnualRevenue", "Annual Revenue", "currency", ""),
        *_ADDRESS,
        _OWNER,
    )),
    "Contact": ("Contact", "003", (
        ("FirstName", "First Name", "string", ""),
        ("LastName", "Last Name", "string", "req"),
        ("Name", "Full Name", "string", "ro"),
        ("Title", "Title", "string", ""),
        ("Email", "Email", "email", ""),
        ("Phone", "Business Phone", "phone", ""),
        ("AccountId", "Account ID", "reference:Account/Account", ""),
        _OWNER,
    )),
    "Opportunity": ("Opportunity", "006", (
        ("AccountId", "Account ID", "reference:Account/Account", ""),
        ("IsPrivate", "Private", "boolean", ""),
        ("Name", "Name", "string:120", "req"),
        ("Description", "Description", "textarea:32000", ""),
        ("StageName", "Stage", "picklist:stages", "req rp"),
        ("Amount", "Amount", "currency", ""),
        ("CurrencyIsoCode", "Opportunity Currency", "picklist:currencies", "rp"),
        ("Probability", "Probability (%)", "percent", ""),
        ("ExpectedRevenue", "Expected Amount", "currency", "ro"),
        ("CloseDate", "Close Date", "date", "req"),
        ("Type", "Opportunity Type", "picklist:opportunity_types", ""),
        ("NextStep", "Next Step", "string", ""),
        ("LeadSource", "Lead Source", "picklist:lead_sources", ""),
        ("IsClosed", "Closed", "boolean", "ro"),
        ("IsWon", "Won", "boolean", "ro"),
        ("ForecastCategoryName", "Forecast Category", "picklist:forecast", ""),
        _OWNER,
        ("LastStageChangeDate", "Last Stage Change Date", "datetime", "ro"),
        ("Canonical_Id__c", "Canonical Id", "string:64", "ext"),
        ("Region__c", "Region", "picklist:regions", ""),
        ("DeliveryInstallationStatus__c", "Delivery/Installation Status", "picklist:delivery", ""),
        ("TrackingNumber__c", "Tracking Number", "string:12", ""),
        ("OrderNumber__c", "Order Number", "string:8", ""),
        ("CurrentGenerators__c", "Current Generator(s)", "string:100", ""),
        ("MainCompetitors__c", "Main Competitor(s)", "string:100", ""),
    )),
    "OpportunityContactRole": ("Opportunity Contact Role", "00K", (
        ("OpportunityId", "Opportunity ID", "reference:Opportunity/Opportunity", "req"),
        ("ContactId", "Contact ID", "reference:Contact/Contact", "req"),
        ("Role", "Role", "picklist:contact_roles", ""),
        ("IsPrimary", "Primary", "boolean", ""),
        ("Attitude__c", "Attitude", "picklist:attitudes", ""),
    )),
    "OpportunityHistory": ("Opportunity History", "008", (
        ("OpportunityId", "Opportunity ID", "reference:Opportunity/Opportunity", "ro"),
        ("StageName", "Stage", "picklist:stages", "ro"),
        ("Amount", "Amount", "currency", "ro"),
        ("ExpectedRevenue", "Expected Revenue", "currency", "ro"),
        ("CloseDate", "Close Date", "date", "ro"),
        ("Probability", "Probability (%)", "percent", "ro"),
        ("ForecastCategory", "Forecast Category", "picklist:forecast", "ro"),
        ("PrevAmount", "Previous Amount", "currency", "ro"),
        ("PrevCloseDate", "Previous Close Date", "date", "ro"),
    )),
    "Task": ("Task", "00T", (
        ("WhatId", "Related To ID", "reference:Opportunity,Account/What", ""),
        ("WhoId", "Name ID", "reference:Contact/Who", ""),
        ("Subject", "Subject", "string", "req"),
        ("ActivityDate", "Due Date Only", "date", ""),
        ("Status", "Status", "picklist:task_statuses", "rp"),
        ("Priority", "Priority", "picklist:task_priorities", ""),
        ("IsClosed", "Closed", "boolean", "ro"),
        ("Description", "Description", "textarea:32000", ""),
        ("CompletedDateTime", "Completed Date/Time", "datetime", "ro"),
        _OWNER,
    )),
}  # fmt: skip
_CHILDREN = {
    "Account": {
        "Opportunities": ("Opportunity", "AccountId"),
        "Contacts": ("Contact", "AccountId"),
    },
    "Opportunity": {
        "OpportunityContactRoles": ("OpportunityContactRole", "OpportunityId"),
        "OpportunityHistories": ("OpportunityHistory", "OpportunityId"),
        "Tasks": ("Task", "WhatId"),
    },
}
_OPTIONS = {
    "currencies": CURRENCIES,
    "contact_roles": CONTACT_ROLES,
    "attitudes": ATTITUDES,
    "task_statuses": TASK_STATUSES,
    "task_priorities": ("High", "Normal", "Low"),
    "forecast": ("Omitted", "Pipeline", "Best Case", "Commit", "Closed"),
    "regions": ("EMEA", "APAC", "North America", "LATAM"),
    "delivery": ("In progress", "Yet to begin", "Completed"),
    "lead_sources": ("Web", "Phone Inquiry", "Partner Referral", "Purchased List", "Other"),
    "opportunity_types": (
        "Existing Customer - Upgrade", "Existing Customer - Replacement",
        "Existing Customer - Downgrade", "New Customer",
    ),
    "account_types": (
        "Prospect", "Customer", "Customer - Direct", "Customer - Channel", "Integrator",
        "Channel Partner / Reseller", "Installation Partner", "Technology Partner", "Partner",
        "Other",
    ),
}  # fmt: skip


def _field(
    row: tuple[str, str, str, str], label: str, options: Mapping[str, tuple[str, ...]]
) -> FieldDef:
    name, text, spec, flags = row
    kind, _, detail = spec.partition(":")
    flag = set(flags.split())
    targets, _, rel = detail.partition("/") if kind == "reference" else ("", "", "")
    return FieldDef(
        name,
        text.format(label=label),
        kind,
        createable="ro" not in flag,
        updateable="ro" not in flag,
        required="req" in flag,
        picklist=options[detail] if kind == "picklist" else (),
        restricted="rp" in flag,
        reference_to=tuple(targets.split(",")) if targets else (),
        relationship=rel or None,
        external_id="ext" in flag,
        length=int(detail) if detail.isdigit() else 255,
    )


def _schema(stage_names: tuple[str, ...]) -> dict[str, ObjectDef]:
    options = {**_OPTIONS, "stages": stage_names}
    return {
        name: ObjectDef(
            name,
            label,
            prefix,
            tuple(_field(row, label, options) for row in (*_SYSTEM, *rows)),
            _CHILDREN.get(name, {}),
            writable=name != "OpportunityHistory",
        )
        for name, (label, prefix, rows) in _OBJECTS.items()
    }


class SalesforceApiError(Exception):
    """An error the org answers with: HTTP status, Salesforce error code and message."""

    def __init__(self, status: int, code: str, message: str, fields: Iterable[str] = ()) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.fields = list(fields)

    def body(self) -> list[dict[str, Any]]:
        return [{"message": self.message, "errorCode": self.code, "fields": self.fields}]

    def save_error(self) -> dict[str, Any]:
        """The error as an entry of a SaveResult's ``errors`` (collections)."""
        return {"statusCode": self.code, "message": self.message, "fields": self.fields}


@dataclass(frozen=True)
class ValidationRule:
    """An org validation rule: ``condition(old, new)`` true means the save is refused.

    ``old`` is None on create. Like a formula on ``ISCHANGED(StageName)``, the condition sees
    both versions of the record.
    """

    sobject: str
    name: str
    message: str
    condition: Callable[[Mapping[str, Any] | None, Mapping[str, Any]], bool]
    field: str | None = None


def salesforce_error_body(status: int, message: str) -> tuple[bytes, str]:
    """An injected fault in Salesforce's words; a message ``"CODE: text"`` picks the code."""
    code, sep, rest = message.partition(": ")
    if not (sep and code.isupper() and code.replace("_", "").isalpha()):
        code, rest = _FAULT_CODES.get(status, "UNKNOWN_EXCEPTION"), message
    return json.dumps([{"message": rest, "errorCode": code}]).encode(), "application/json"


_FAULT_CODES = {
    401: "INVALID_SESSION_ID",
    403: "REQUEST_LIMIT_EXCEEDED",
    429: "REQUEST_LIMIT_EXCEEDED",
    502: "SERVER_UNAVAILABLE",
    503: "SERVER_UNAVAILABLE",
}


# --------------------------------------------------------------------------- the org


class SalesforceOrg:
    """The org's data and behaviour; thread-safe. ``clock`` is the server clock (tz-aware)."""

    def __init__(self, *, clock: Clock = lambda: datetime.now(UTC)) -> None:
        self.clock = clock
        self.stages = {s.name: s for s in STAGES}
        self.schema = _schema(tuple(self.stages))
        self.rules: list[ValidationRule] = []
        self.records: dict[str, dict[str, Record]] = {name: {} for name in self.schema}
        self.deleted_at: dict[str, str] = {}
        self.passwords: dict[str, str] = {}
        self.clients: dict[str, str] = {}
        self.tokens: dict[str, str] = {}
        self._lock = threading.RLock()
        self._seq = 0
        self._last: datetime | None = None
        self._prefixes = {o.prefix: o for o in self.schema.values() if len(o.prefix) == 3}
        self.admin = self.add_user("admin@acme.example", "admin@acme.example", "Ada Admin")
        admin = self.records["User"][self.admin]
        admin.update(CreatedById=self.admin, LastModifiedById=self.admin, OwnerId=None)

    # -- people and credentials

    def add_user(
        self,
        username: str,
        email: str,
        name: str,
        *,
        password: str | None = None,
        security_token: str = "",
    ) -> str:
        """A user; with ``password`` it can log in (password + security token, as Salesforce)."""
        first, _, last = name.rpartition(" ")
        uid = self.insert(
            "User",
            {"Username": username, "Email": email, "FirstName": first or None,
             "LastName": last, "IsActive": True},
            actor=getattr(self, "admin", None),
        )  # fmt: skip
        if password is not None:
            self.passwords[username] = password + security_token
        return uid

    def add_client(self, client_id: str, client_secret: str) -> None:
        """A connected app allowed to use the OAuth password flow."""
        self.clients[client_id] = client_secret

    def issue_token(self, username: str) -> str:
        """An access token for ``username``, as an OAuth flow would hand out."""
        uid = self.user_id(username)
        token = f"00D000000000001!AQ{secrets.token_urlsafe(24)}"
        with self._lock:
            self.tokens[token] = uid
        return token

    def expire_sessions(self) -> None:
        """Every access token stops working (a session timeout or an admin's revocation)."""
        with self._lock:
            self.tokens.clear()

    def user_id(self, username: str) -> str:
        for uid, user in self.records["User"].items():
            if user["Username"] == username:
                return uid
        raise KeyError(username)

    def add_validation_rule(self, rule: ValidationRule) -> None:
        with self._lock:
            self.rules.append(rule)

    # -- an admin's changes to the schema (Setup > Object Manager)

    def delete_field(self, sobject: str, name: str) -> None:
        """Delete a custom field: it leaves the describe, queries naming it fail, values go."""
        with self._lock:
            obj = self._object(sobject)
            fdef = obj.field(name)
            if fdef is None or not fdef.name.endswith("__c"):
                raise ValueError(f"{sobject}.{name} is no custom field")
            kept = tuple(f for f in obj.fields if f is not fdef)
            self._redefine(replace(obj, fields=kept))
            for rec in self.records[obj.name].values():
                rec.pop(fdef.name, None)

    def set_picklist(self, sobject: str, name: str, values: Iterable[str]) -> None:
        """Make ``values`` the active values of a picklist (records keep what they hold)."""
        with self._lock:
            obj = self._object(sobject)
            fdef = obj.field(name)
            if fdef is None or fdef.type != "picklist":
                raise ValueError(f"{sobject}.{name} is no picklist")
            new = replace(fdef, picklist=tuple(values))
            self._redefine(replace(obj, fields=tuple(new if f is fdef else f for f in obj.fields)))

    def _redefine(self, obj: ObjectDef) -> None:
        self.schema[obj.name] = obj
        self._prefixes[obj.prefix] = obj

    # -- edits

    def insert(self, sobject: str, values: Mapping[str, Any], *, actor: str | None = None) -> str:
        """Create a record as ``actor`` (a user id; the admin by default); return its id."""
        with self._lock:
            return self._save(self._object(sobject), None, values, actor, check_access=False)

    def update(
        self, sobject: str, rid: str, values: Mapping[str, Any], *, actor: str | None = None
    ) -> None:
        with self._lock:
            self._save(self._object(sobject), rid, values, actor, check_access=False)

    def delete(self, sobject: str, rid: str) -> None:
        """Move a record to the recycle bin (``queryAll`` and ``getDeleted`` still see it)."""
        with self._lock:
            rec = self._live(self._object(sobject), rid)
            now = self._now()
            rec["IsDeleted"] = True
            rec["SystemModstamp"] = now
            self.deleted_at[rid] = now

    def get(self, sobject: str, rid: str) -> Record | None:
        """A copy of a stored record (deleted ones too), or None."""
        with self._lock:
            found = self.records[self._object(sobject).name].get(rid)
            return copy.deepcopy(found)

    # -- the sample data

    def import_tree(self, *paths: Path) -> dict[str, str]:
        """Import sObject Tree files (``sf data import tree``); return referenceId -> Id.

        Field names are matched ignoring case, ``@Ref`` values resolve to records imported
        earlier, and values are converted to the field's type as the import would.
        """
        refs: dict[str, str] = {}
        for path in paths:
            tree = json.loads(path.read_text(encoding="utf-8"))
            for item in tree["records"]:
                attrs = item["attributes"]
                obj = self._object(attrs["type"])
                values: dict[str, Any] = {}
                for key, raw in item.items():
                    fdef = obj.field(key)
                    if key == "attributes" or fdef is None:
                        continue
                    if isinstance(raw, str) and raw.startswith("@"):
                        raw = refs[raw[1:]]
                    values[fdef.name] = _import_value(fdef, raw)
                refs[attrs["referenceId"]] = self.insert(obj.name, values)
        return refs

    # -- queries

    def query(self, text: str, *, include_deleted: bool = False) -> list[Record]:
        """Run a SOQL query (the subset in :mod:`.soql`); records shaped as the API sends them."""
        try:
            q = soql.parse(text)
        except soql.SoqlError as exc:
            raise SalesforceApiError(400, "MALFORMED_QUERY", str(exc)) from None
        with self._lock:
            return self._select(q, include_deleted, None)

    def _select(
        self,
        q: soql.Query,
        include_deleted: bool,
        source: Iterable[Record] | None = None,
        *,
        checked: bool = False,
    ) -> list[Record]:
        """The rows of ``q`` among ``source`` (default: every record of its sObject), shaped.

        ``checked``: the query's paths were already checked (a child subquery, checked once
        with its parent query rather than once per parent row).
        """
        obj = self._object(q.sobject)
        children: list[_ChildQuery] | None = None
        if not checked:
            for path in (*q.fields, *(o.path for o in q.order)):
                self._check_path(obj, path)
            children = self._children_of(obj, q)

        def wanted(rec: Record) -> bool:
            if not include_deleted and rec["IsDeleted"]:
                return False
            return soql.matches(q.where, lambda path: self._value(obj, rec, path))

        pool = self.records[obj.name].values() if source is None else source
        rows = [r for r in pool if wanted(r)]
        for order in reversed(q.order):
            rows.sort(key=functools.partial(self._order_key, obj, order=order))
        rows = rows[q.offset :]
        if q.limit is not None:
            rows = rows[: q.limit]
        if children is None:
            children = self._children_of(obj, q)
        if rows and children:
            # Each child subquery reads only the children of the row being shaped: the child
            # records are grouped by their parent once per query (in store order, as a scan
            # would meet them), not scanned once per parent row.
            for child in children:
                child.group(self.records[child.query.sobject].values())
        return [self._shape(obj, r, q, include_deleted, children) for r in rows]

    def _children_of(self, obj: ObjectDef, q: soql.Query) -> list[_ChildQuery]:
        """``q``'s child subqueries, each resolved to its relationship and checked once."""
        out: list[_ChildQuery] = []
        for sub in q.subqueries:
            rel = sub.sobject if sub.sobject in obj.children else None
            if rel is None:
                rel = next((c for c in obj.children if c.lower() == sub.sobject.lower()), None)
            if rel is None:
                raise SalesforceApiError(
                    400, "INVALID_TYPE",
                    f"Didn't understand relationship '{sub.sobject}' in FROM part of query call.",
                )  # fmt: skip
            child_type, link = obj.children[rel]
            child_q = soql.Query(sub.fields, sub.subqueries, child_type, sub.where, sub.order,
                                 sub.limit, sub.offset)  # fmt: skip
            child_obj = self._object(child_type)
            for path in (*child_q.fields, *(o.path for o in child_q.order)):
                self._check_path(child_obj, path)
            self._children_of(child_obj, child_q)  # checks grandchildren (not grouped here)
            out.append(_ChildQuery(rel, link, child_q))
        return out

    def _order_key(self, obj: ObjectDef, rec: Record, *, order: soql.Order) -> Any:
        nulls, value = soql.sort_key(self._value(obj, rec, order.path))
        if not order.nulls_last:  # sort_key puts nulls last
            nulls = 1 - nulls
        if order.descending:
            return (nulls, _Reverse(value))
        return (nulls, value)

    def _check_path(self, obj: ObjectDef, path: str) -> None:
        *rels, last = path.split(".")
        cur = obj
        for rel in rels:
            fdef = cur.relationship(rel)
            if fdef is None:
                raise SalesforceApiError(
                    400, "INVALID_FIELD",
                    f"Didn't understand relationship '{rel}' in field path. If you are "
                    f"attempting to use a custom relationship, be sure to append the '__r'.",
                )  # fmt: skip
            cur = self.schema[fdef.reference_to[0]]
        if cur.field(last) is None:
            raise SalesforceApiError(
                400, "INVALID_FIELD", f"No such column '{last}' on entity '{cur.name}'."
            )

    def _value(self, obj: ObjectDef, rec: Record | None, path: str) -> Any:
        *rels, last = path.split(".")
        for rel in rels:
            if rec is None:
                return None
            fdef = obj.relationship(rel)
            assert fdef is not None
            obj, rec = self._parent(rec.get(fdef.name))
        if rec is None:
            return None
        fdef = obj.field(last)
        return rec.get(fdef.name) if fdef else None

    def _parent(self, rid: Any) -> tuple[ObjectDef, Record | None]:
        obj = self._by_id(rid) if isinstance(rid, str) else None
        if obj is None:
            return self.schema["User"], None
        return obj, self.records[obj.name].get(rid)

    def _by_id(self, rid: str) -> ObjectDef | None:
        found = self._prefixes.get(rid[:3])
        if found is not None and found is self.schema.get(found.name):
            return found
        return next((o for o in self.schema.values() if rid.startswith(o.prefix)), None)

    def _shape(
        self,
        obj: ObjectDef,
        rec: Record,
        q: soql.Query,
        include_deleted: bool,
        children: list[_ChildQuery] | None = None,
    ) -> Record:
        out: Record = {"attributes": _attributes(obj.name, rec["Id"])}
        for path in q.fields:
            *rels, last = path.split(".")
            cur_obj, target = obj, out
            cur_rec: Record | None = rec
            for rel in rels:
                fdef = cur_obj.relationship(rel)
                assert fdef is not None and cur_rec is not None
                key = fdef.relationship or rel
                cur_obj, cur_rec = self._parent(cur_rec.get(fdef.name))
                if cur_rec is None:
                    target[key] = None
                    break
                nested = target.get(key)
                if not isinstance(nested, dict):
                    nested = target[key] = {"attributes": _attributes(cur_obj.name, cur_rec["Id"])}
                target = nested
            else:
                fdef = cur_obj.field(last)
                assert fdef is not None and cur_rec is not None
                value = cur_rec.get(fdef.name)
                target[fdef.name] = value if isinstance(value, _SCALARS) else copy.deepcopy(value)
        if children is None:
            children = self._children_of(obj, q)
        for child in children:
            mine = (
                child.groups.get(rec["Id"], ())
                if child.groups is not None
                else [r for r in self.records[child.query.sobject].values()
                      if r.get(child.link) == rec["Id"]]
            )  # fmt: skip
            found = self._select(child.query, include_deleted, mine, checked=True)
            out[child.rel] = (
                {"totalSize": len(found), "done": True, "records": found} if found else None
            )
        return out

    def updated_ids(self, sobject: str, start: datetime, end: datetime) -> list[str]:
        with self._lock:
            obj = self._object(sobject)
            return [
                rid
                for rid, rec in self.records[obj.name].items()
                if not rec["IsDeleted"]
                and start <= soql.parse_datetime(rec["SystemModstamp"]) <= end
            ]

    def deleted_ids(self, sobject: str, start: datetime, end: datetime) -> list[tuple[str, str]]:
        with self._lock:
            obj = self._object(sobject)
            return [
                (rid, self.deleted_at[rid])
                for rid, rec in self.records[obj.name].items()
                if rec["IsDeleted"] and start <= soql.parse_datetime(self.deleted_at[rid]) <= end
            ]

    # -- saving

    def _object(self, name: str) -> ObjectDef:
        low = name.lower()
        for obj in self.schema.values():
            if obj.name.lower() == low:
                return obj
        raise SalesforceApiError(404, "NOT_FOUND", f"sObject type '{name}' is not supported.")

    def _live(self, obj: ObjectDef, rid: str) -> Record:
        rec = self.records[obj.name].get(rid) if isinstance(rid, str) else None
        if rec is None:
            if isinstance(rid, str) and len(rid) in (15, 18) and rid.startswith(obj.prefix):
                raise SalesforceApiError(404, "NOT_FOUND", "The requested resource does not exist")
            raise SalesforceApiError(
                400, "MALFORMED_ID", f"{obj.name} ID: id value of incorrect type: {rid}", ["Id"]
            )
        if rec["IsDeleted"]:
            raise SalesforceApiError(404, "ENTITY_IS_DELETED", "entity is deleted")
        return rec

    def _now(self) -> str:
        now = self.clock().astimezone(UTC)
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        if self._last is not None and now <= self._last:
            now = self._last + _MS
        self._last = now
        return format_time(now)

    def _new_id(self, obj: ObjectDef) -> str:
        self._seq += 1
        return f"{obj.prefix}{self._seq:012d}AAA"

    def find_external(self, obj: ObjectDef, fdef: FieldDef, value: str) -> list[str]:
        return [
            rid
            for rid, rec in self.records[obj.name].items()
            if not rec["IsDeleted"] and rec.get(fdef.name) == value
        ]

    def _save(
        self,
        obj: ObjectDef,
        rid: str | None,
        values: Mapping[str, Any],
        actor: str | None,
        *,
        check_access: bool = True,
        unmodified_since: datetime | None = None,
    ) -> str:
        """Create (``rid`` None) or update a record, applying every rule; return its id."""
        if check_access and not obj.writable:
            raise SalesforceApiError(
                400,
                "INVALID_TYPE_FOR_OPERATION",
                f"entity type {obj.name} does not support this operation",
            )
        old = None if rid is None else self._live(obj, rid)
        if old is not None and unmodified_since is not None:
            modified = soql.parse_datetime(old["LastModifiedDate"]).replace(microsecond=0)
            if modified > unmodified_since:
                raise SalesforceApiError(
                    412, "PRECONDITION_FAILED",
                    f"The requested resource was modified at {old['LastModifiedDate']}",
                )  # fmt: skip
        new: Record = copy.deepcopy(old) if old else {f.name: None for f in obj.fields}
        for key, raw in values.items():
            fdef = obj.field(key)
            if fdef is None or fdef.name in ("attributes",):
                raise SalesforceApiError(
                    400, "INVALID_FIELD", f"No such column '{key}' on sobject of type {obj.name}"
                )
            allowed = fdef.createable if old is None else fdef.updateable
            if check_access and not allowed:
                raise SalesforceApiError(
                    400, "INVALID_FIELD_FOR_INSERT_UPDATE",
                    f"Unable to create/update fields: {fdef.name}. Please check the security "
                    "settings of this field and verify that it is read/write for your profile "
                    "or permission set.", [fdef.name],
                )  # fmt: skip
            new[fdef.name] = self._convert(fdef, raw)
        actor = actor or self.admin_id()
        self._derive(obj, old, new, values)
        for fdef in obj.fields:
            if fdef.required and fdef.createable and new.get(fdef.name) in (None, ""):
                raise SalesforceApiError(
                    400, "REQUIRED_FIELD_MISSING",
                    f"Required fields are missing: [{fdef.name}]", [fdef.name],
                )  # fmt: skip
            if fdef.external_id and new.get(fdef.name) is not None:
                clash = [r for r in self.find_external(obj, fdef, new[fdef.name]) if r != rid]
                if clash:
                    raise SalesforceApiError(
                        400, "DUPLICATE_VALUE",
                        f"duplicate value found: {fdef.name} duplicates value on record with "
                        f"id: {clash[0]}", [fdef.name],
                    )  # fmt: skip
        for rule in self.rules:
            if rule.sobject == obj.name and rule.condition(old, new):
                raise SalesforceApiError(
                    400, "FIELD_CUSTOM_VALIDATION_EXCEPTION", rule.message,
                    [rule.field] if rule.field else [],
                )  # fmt: skip
        now = self._now()
        if old is None:
            rid = self._new_id(obj)
            new.update(Id=rid, IsDeleted=False, CreatedDate=now, CreatedById=actor)
            if obj.field("OwnerId") and new.get("OwnerId") is None:
                new["OwnerId"] = actor
        new.update(LastModifiedDate=now, LastModifiedById=actor, SystemModstamp=now)
        if obj.name == "Opportunity" and (old is None or old["StageName"] != new["StageName"]):
            new["LastStageChangeDate"] = now
        assert rid is not None
        self.records[obj.name][rid] = new
        if obj.name == "Opportunity":
            self._history(old, new, actor, now)
        return rid

    def admin_id(self) -> str:
        return getattr(self, "admin", None) or ""

    def _convert(self, fdef: FieldDef, raw: Any) -> Any:
        def bad(kind: str) -> SalesforceApiError:
            return SalesforceApiError(
                400, "JSON_PARSER_ERROR" if kind == "json" else "INVALID_TYPE_ON_FIELD_IN_RECORD",
                f"{fdef.label}: value not of required type: {raw}", [fdef.name],
            )  # fmt: skip

        if raw is None or raw == "":
            return None
        t = fdef.type
        if t == "boolean":
            if not isinstance(raw, bool):
                raise bad("type")
            return raw
        if t in ("currency", "double", "percent", "int"):
            if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
                raise bad("type")
            return int(raw) if t == "int" else raw
        if not isinstance(raw, str):
            raise bad("type")
        if t == "date":
            try:
                return date.fromisoformat(raw).isoformat()
            except ValueError:
                raise bad("type") from None
        if t == "datetime":
            try:
                return format_time(soql.parse_datetime(raw))
            except ValueError:
                raise bad("type") from None
        if t == "picklist" and fdef.restricted and raw not in fdef.picklist:
            raise SalesforceApiError(
                400, "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                f"{fdef.label}: bad value for restricted picklist field: {raw}", [fdef.name],
            )  # fmt: skip
        if t == "reference":
            target = self._by_id(raw)
            if (
                target is None
                or target.name not in fdef.reference_to
                or raw not in self.records[target.name]
            ):
                raise SalesforceApiError(
                    400, "INVALID_CROSS_REFERENCE_KEY",
                    "invalid cross reference id", [fdef.name],
                )  # fmt: skip
        if len(raw) > fdef.length and fdef.type in _TEXT_TYPES:
            raise SalesforceApiError(
                400, "STRING_TOO_LONG",
                f"{fdef.label}: data value too large: {raw[:40]} (max length={fdef.length})",
                [fdef.name],
            )  # fmt: skip
        return raw

    def _derive(
        self, obj: ObjectDef, old: Record | None, new: Record, given: Mapping[str, Any]
    ) -> None:
        """Fields the org computes: names, stage implications, task completion."""
        if obj.name in ("User", "Contact"):
            new["Name"] = " ".join(p for p in (new.get("FirstName"), new.get("LastName")) if p)
        if obj.name == "Opportunity":
            stage = self.stages.get(new.get("StageName") or "")
            given_keys = {k.lower() for k in given}
            if stage and (old is None or old["StageName"] != stage.name):
                new.update(IsClosed=stage.closed, IsWon=stage.won)
                if "forecastcategoryname" not in given_keys:
                    new["ForecastCategoryName"] = stage.forecast
                if "probability" not in given_keys:
                    new["Probability"] = stage.probability
            if old is None and new.get("CurrencyIsoCode") is None:
                new["CurrencyIsoCode"] = "USD"
            amount, prob = new.get("Amount"), new.get("Probability")
            new["ExpectedRevenue"] = (
                round(amount * prob / 100, 2) if amount is not None and prob is not None else None
            )
        if obj.name == "Task":
            closed = new.get("Status") == "Completed"
            if closed and not (old and old.get("IsClosed")):
                new["CompletedDateTime"] = format_time(self.clock())
            new["IsClosed"] = closed
            if new.get("Status") is None:
                new["Status"] = "Not Started"

    def _history(self, old: Record | None, new: Record, actor: str, now: str) -> None:
        tracked = ("StageName", "Amount", "CloseDate", "Probability", "ForecastCategoryName")
        if old is not None and all(old.get(k) == new.get(k) for k in tracked):
            return
        obj = self.schema["OpportunityHistory"]
        hid = self._new_id(obj)
        self.records[obj.name][hid] = {
            "Id": hid, "IsDeleted": False, "CreatedDate": now, "CreatedById": actor,
            "LastModifiedDate": now, "LastModifiedById": actor, "SystemModstamp": now,
            "OpportunityId": new["Id"], "StageName": new["StageName"], "Amount": new["Amount"],
            "ExpectedRevenue": new["ExpectedRevenue"], "CloseDate": new["CloseDate"],
            "Probability": new["Probability"], "ForecastCategory": new["ForecastCategoryName"],
            "PrevAmount": old["Amount"] if old else None,
            "PrevCloseDate": old["CloseDate"] if old else None,
        }  # fmt: skip

    # -- what the API handlers call (as a user, with access checks)

    def api_save(
        self,
        sobject: str,
        rid: str | None,
        values: Mapping[str, Any],
        actor: str,
        *,
        unmodified_since: datetime | None = None,
    ) -> str:
        with self._lock:
            return self._save(
                self._object(sobject), rid, values, actor, unmodified_since=unmodified_since
            )

    def api_upsert(
        self, sobject: str, field_name: str, value: str, values: Mapping[str, Any], actor: str
    ) -> tuple[str, bool]:
        """Upsert on an external id field: (id, created)."""
        with self._lock:
            obj = self._object(sobject)
            fdef = obj.field(field_name)
            if fdef is None or not (fdef.external_id or fdef.name == "Id"):
                raise SalesforceApiError(
                    404, "NOT_FOUND",
                    f"Provided external ID field does not exist or is not accessible: {field_name}",
                )  # fmt: skip
            if any(k.lower() == fdef.name.lower() for k in values if values[k] != value):
                raise SalesforceApiError(
                    400, "INVALID_FIELD",
                    f"The field {fdef.name} is the external id field of this upsert; leave it "
                    "out of the body or give the same value", [fdef.name],
                )  # fmt: skip
            found = self.find_external(obj, fdef, value)
            if len(found) > 1:
                raise SalesforceApiError(300, "MULTIPLE_CHOICES", f"{len(found)} records match")
            body = {k: v for k, v in values.items() if k.lower() != fdef.name.lower()}
            if found:
                return self._save(obj, found[0], body, actor), False
            return self._save(obj, None, {**body, fdef.name: value}, actor), True

    def transaction(self) -> _Transaction:
        return _Transaction(self)


class _Transaction:
    """Roll the org back if the block raises: ``allOrNone`` collections."""

    def __init__(self, org: SalesforceOrg) -> None:
        self.org = org

    def __enter__(self) -> None:
        self.org._lock.acquire()
        # Record values are JSON scalars: a copy of each record is a copy of the org's data
        # (a deep copy of the whole org cost seconds per request at 10,000 opportunities).
        records = {name: {rid: dict(r) for rid, r in recs.items()}
                   for name, recs in self.org.records.items()}  # fmt: skip
        self.saved = (records, dict(self.org.deleted_at), self.org._seq)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is not None:
                self.org.records, self.org.deleted_at, self.org._seq = self.saved
        finally:
            self.org._lock.release()


_SCALARS = (str, int, float, bool, type(None))


@dataclass
class _ChildQuery:
    """A child subquery of one query: its relationship, the child's field naming the parent,
    and, once grouped, the child records by parent id."""

    rel: str
    link: str
    query: soql.Query
    groups: dict[Any, list[Record]] | None = None

    def group(self, records: Iterable[Record]) -> None:
        groups: dict[Any, list[Record]] = {}
        for r in records:
            groups.setdefault(r.get(self.link), []).append(r)
        self.groups = groups


class _Reverse:
    """Wraps a sort value so that ascending sorts put it in descending order."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __lt__(self, other: _Reverse) -> bool:
        return bool(other.value < self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reverse) and bool(self.value == other.value)

    def __hash__(self) -> int:
        return hash(self.value)


def _attributes(sobject: str, rid: str) -> dict[str, str]:
    return {"type": sobject, "url": f"/services/data/v{API_VERSION}/sobjects/{sobject}/{rid}"}


def _import_value(fdef: FieldDef, raw: Any) -> Any:
    """A tree-file value as the import stores it (numbers-as-text become numbers, and so on)."""
    if raw is None:
        return None
    if fdef.type in ("currency", "double", "percent") and isinstance(raw, str):
        return float(raw)
    if fdef.type == "int" and isinstance(raw, str):
        return int(raw)
    if fdef.type == "date" and isinstance(raw, str):
        return soql.parse_datetime(raw).date().isoformat() if "T" in raw else raw
    if fdef.type in _TEXT_TYPES and not isinstance(raw, str):
        return str(raw)
    return raw


def load_samples(org: SalesforceOrg, shared_dir: Path) -> dict[str, str]:
    """Import the Trailhead sample Accounts and Opportunities from ``../shared/samples``."""
    base = shared_dir / "samples" / "salesforce"
    return org.import_tree(
        base / "trailhead-apex-recipes-Accounts.json",
        base / "trailhead-apex-recipes-Opportunities.json",
    )


# --------------------------------------------------------------------------- HTTP

Handler = Callable[[Request, str], Awaitable[Response]]


class SalesforceEmulator(Emulator):
    """The org behind Salesforce's REST API. ``batch_size`` is the default query page size;
    ``min_batch_size`` the smallest ``batchSize`` honoured (Salesforce: 200; tests use less)."""

    name = "salesforce"

    def __init__(
        self,
        org: SalesforceOrg | None = None,
        *,
        controls: Controls | None = None,
        batch_size: int = MAX_BATCH,
        min_batch_size: int = 200,
    ) -> None:
        super().__init__(controls=controls or Controls(error_body=salesforce_error_body))
        self.org = org or SalesforceOrg()
        self.batch_size = batch_size
        self.min_batch_size = min_batch_size
        self._auth: Authenticator[str] = Authenticator()
        self._cursors: dict[str, tuple[list[Record], int, bool]] = {}
        self._cursor_seq = 0
        self._lock = threading.Lock()

    def build_app(self) -> ASGIApp:
        data = "/services/data/v{version}"

        def api(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
            async def endpoint(request: Request) -> Response:
                try:
                    version = request.path_params["version"]
                    if not _is_version(version):
                        raise SalesforceApiError(
                            404, "NOT_FOUND", "The requested resource does not exist"
                        )
                    self._auth.bearer = dict(self.org.tokens)
                    user = self._auth.authenticate(request)
                    if user is None:
                        raise SalesforceApiError(
                            401, "INVALID_SESSION_ID", "Session expired or invalid"
                        )
                    return await handler(request, user)
                except SalesforceApiError as exc:
                    return _json(exc.body(), exc.status)

            return endpoint

        routes = [
            Route("/services/oauth2/token", self._token, methods=["POST"]),
            Route("/services/data", self._versions, methods=["GET"]),
            Route(f"{data}/sobjects", api(self._describe_global), methods=["GET"]),
            Route(f"{data}/sobjects/{{sobject}}", api(self._sobject_root), methods=["GET", "POST"]),
            Route(f"{data}/sobjects/{{sobject}}/describe", api(self._describe), methods=["GET"]),
            Route(f"{data}/sobjects/{{sobject}}/updated", api(self._updated), methods=["GET"]),
            Route(f"{data}/sobjects/{{sobject}}/deleted", api(self._deleted), methods=["GET"]),
            Route(f"{data}/sobjects/{{sobject}}/{{rid}}", api(self._record),
                  methods=["GET", "PATCH", "DELETE"]),
            Route(f"{data}/sobjects/{{sobject}}/{{field}}/{{value}}", api(self._by_external_id),
                  methods=["GET", "PATCH"]),
            Route(f"{data}/query", api(self._query), methods=["GET"]),
            Route(f"{data}/queryAll", api(self._query), methods=["GET"]),
            Route(f"{data}/query/{{locator}}", api(self._query_more), methods=["GET"]),
            Route(f"{data}/queryAll/{{locator}}", api(self._query_more), methods=["GET"]),
            Route(f"{data}/composite/sobjects", api(self._collection), methods=["POST", "PATCH"]),
            Route(f"{data}/composite/sobjects/{{sobject}}/{{field}}", api(self._collection_upsert),
                  methods=["PATCH"]),
        ]  # fmt: skip
        app = Starlette(routes=routes)

        async def same_without_slash(scope: Scope, receive: Receive, send: Send) -> None:
            # Salesforce answers ".../query/?q=" like ".../query?q=" (simple-salesforce sends
            # both forms); a redirect would cost the client a second request.
            if scope["type"] == "http" and len(scope["path"]) > 1:
                scope = {**scope, "path": scope["path"].rstrip("/")}
            await app(scope, receive, send)

        return same_without_slash

    # -- OAuth

    async def _token(self, request: Request) -> Response:
        get = dict(parse_qsl((await request.body()).decode("utf-8", "replace")))
        if get.get("grant_type") != "password":
            return _json(
                {
                    "error": "unsupported_grant_type",
                    "error_description": "grant type not supported",
                },
                400,
            )
        if self.org.clients.get(get.get("client_id", "")) != get.get("client_secret"):
            return _json(
                {"error": "invalid_client_id", "error_description": "client identifier invalid"},
                400,
            )
        username = get.get("username", "")
        if username not in self.org.passwords or self.org.passwords[username] != get.get(
            "password"
        ):
            return _json(
                {"error": "invalid_grant", "error_description": "authentication failure"}, 400
            )
        token = self.org.issue_token(username)
        instance = str(request.base_url).rstrip("/")
        uid = self.org.user_id(username)
        return _json({
            "access_token": token,
            "instance_url": instance,
            "id": f"{instance}/id/00D000000000001AAA/{uid}",
            "token_type": "Bearer",
            "issued_at": str(int(self.org.clock().timestamp() * 1000)),
            "signature": secrets.token_urlsafe(32),
        })  # fmt: skip

    async def _versions(self, request: Request) -> Response:
        return _json(
            [
                {
                    "label": "Winter '24",
                    "url": f"/services/data/v{API_VERSION}",
                    "version": API_VERSION,
                }
            ]
        )

    # -- describe

    async def _describe_global(self, request: Request, user: str) -> Response:
        return _json({
            "encoding": "UTF-8",
            "maxBatchSize": MAX_COLLECTION,
            "sobjects": [_object_info(o) for o in self.org.schema.values()],
        })  # fmt: skip

    async def _sobject_root(self, request: Request, user: str) -> Response:
        obj = self.org._object(request.path_params["sobject"])
        if request.method == "POST":
            body = await _body(request)
            rid = self.org.api_save(obj.name, None, _strip_attributes(body), user)
            return _json({"id": rid, "success": True, "errors": []}, 201)
        return _json({"objectDescribe": _object_info(obj), "recentItems": []})

    async def _describe(self, request: Request, user: str) -> Response:
        obj = self.org._object(request.path_params["sobject"])
        info = _object_info(obj)
        info["fields"] = [f.describe() for f in obj.fields]
        info["childRelationships"] = [
            {"childSObject": child, "field": link, "relationshipName": rel, "cascadeDelete": False}
            for rel, (child, link) in obj.children.items()
        ]
        info["recordTypeInfos"] = []
        return _json(info)

    # -- records

    async def _record(self, request: Request, user: str) -> Response:
        obj = self.org._object(request.path_params["sobject"])
        rid = request.path_params["rid"]
        if request.method == "GET":
            return self._get(obj, rid, request)
        if request.method == "DELETE":
            self.org.delete(obj.name, rid)
            return Response(status_code=204)
        since = request.headers.get("if-unmodified-since")
        when = _http_date(since) if since else None
        body = await _body(request)
        self.org.api_save(obj.name, rid, _strip_attributes(body), user, unmodified_since=when)
        return Response(status_code=204)

    def _get(self, obj: ObjectDef, rid: str, request: Request) -> Response:
        with self.org._lock:
            self.org._live(obj, rid)
            wanted = request.query_params.get("fields")
            names = (
                [f.strip() for f in wanted.split(",")] if wanted else [f.name for f in obj.fields]
            )
            q = soql.Query(tuple(names), (), obj.name)
            rows = self.org._select(q, False, [self.org.records[obj.name][rid]])
        return _json(rows[0])

    async def _by_external_id(self, request: Request, user: str) -> Response:
        obj = self.org._object(request.path_params["sobject"])
        fname, value = request.path_params["field"], request.path_params["value"]
        if request.method == "GET":
            fdef = obj.field(fname)
            if fdef is None or not fdef.external_id:
                raise SalesforceApiError(404, "NOT_FOUND", "The requested resource does not exist")
            found = self.org.find_external(obj, fdef, value)
            if not found:
                raise SalesforceApiError(404, "NOT_FOUND", "The requested resource does not exist")
            if len(found) > 1:
                return _json(
                    [f"/services/data/v{API_VERSION}/sobjects/{obj.name}/{r}" for r in found], 300
                )
            return self._get(obj, found[0], request)
        body = await _body(request)
        rid, created = self.org.api_upsert(obj.name, fname, value, _strip_attributes(body), user)
        return _json(
            {"id": rid, "success": True, "errors": [], "created": created}, 201 if created else 200
        )

    async def _updated(self, request: Request, user: str) -> Response:
        start, end = _window(request)
        ids = self.org.updated_ids(request.path_params["sobject"], start, end)
        return _json({"ids": ids, "latestDateCovered": format_time(end)})

    async def _deleted(self, request: Request, user: str) -> Response:
        start, end = _window(request)
        found = self.org.deleted_ids(request.path_params["sobject"], start, end)
        return _json({
            "deletedRecords": [{"id": rid, "deletedDate": at} for rid, at in found],
            "earliestDateAvailable": format_time(start),
            "latestDateCovered": format_time(end),
        })  # fmt: skip

    # -- queries

    async def _query(self, request: Request, user: str) -> Response:
        text = request.query_params.get("q")
        if not text:
            raise SalesforceApiError(400, "MALFORMED_QUERY", "A query string has to be specified")
        include_deleted = request.url.path.rstrip("/").endswith("queryAll")
        rows = self.org.query(text, include_deleted=include_deleted)
        return self._page(rows, 0, self._batch(request), include_deleted)

    async def _query_more(self, request: Request, user: str) -> Response:
        locator = request.path_params["locator"]
        with self._lock:
            found = self._cursors.get(locator.rpartition("-")[0])
        if found is None:
            raise SalesforceApiError(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        rows, batch, include_deleted = found
        try:
            offset = int(locator.rpartition("-")[2])
        except ValueError:
            raise SalesforceApiError(
                400, "INVALID_QUERY_LOCATOR", "invalid query locator"
            ) from None
        return self._page(rows, offset, batch, include_deleted, locator.rpartition("-")[0])

    def _batch(self, request: Request) -> int:
        options = request.headers.get("sforce-query-options", "")
        for part in options.split(","):
            key, _, value = part.strip().partition("=")
            if key.lower() == "batchsize" and value.strip().isdigit():
                return max(self.min_batch_size, min(MAX_BATCH, int(value)))
        return self.batch_size

    def _page(
        self,
        rows: list[Record],
        offset: int,
        batch: int,
        include_deleted: bool,
        locator: str | None = None,
    ) -> Response:
        page = rows[offset : offset + batch]
        body: Record = {
            "totalSize": len(rows),
            "done": offset + batch >= len(rows),
            "records": page,
        }
        if not body["done"]:
            if locator is None:
                with self._lock:
                    self._cursor_seq += 1
                    locator = f"01g{self._cursor_seq:015d}"
                    self._cursors[locator] = (rows, batch, include_deleted)
            kind = "queryAll" if include_deleted else "query"
            body["nextRecordsUrl"] = (
                f"/services/data/v{API_VERSION}/{kind}/{locator}-{offset + batch}"
            )
        return _json(body)

    # -- collections

    async def _collection(self, request: Request, user: str) -> Response:
        body = await _body(request)
        records, all_or_none = _collection_body(body)

        def save(item: Record) -> str:
            attrs = item.get("attributes") or {}
            sobject = attrs.get("type") if isinstance(attrs, dict) else None
            if not sobject:
                raise SalesforceApiError(
                    400, "INVALID_TYPE", "Must specify a type in the attributes"
                )
            values = _strip_attributes(item)
            if request.method == "POST":
                if "id" in {k.lower() for k in values}:
                    raise SalesforceApiError(
                        400, "INVALID_FIELD", "cannot specify Id in an insert call", ["Id"]
                    )
                return self.org.api_save(sobject, None, values, user)
            rid = next((v for k, v in values.items() if k.lower() == "id"), None)
            if not isinstance(rid, str):
                raise SalesforceApiError(
                    400, "MISSING_ARGUMENT", "Id not specified in an update call", ["Id"]
                )
            rest = {k: v for k, v in values.items() if k.lower() != "id"}
            return self.org.api_save(sobject, rid, rest, user)

        return _json(self._run_collection(records, all_or_none, lambda item: (save(item), None)))

    async def _collection_upsert(self, request: Request, user: str) -> Response:
        body = await _body(request)
        records, all_or_none = _collection_body(body)
        obj = self.org._object(request.path_params["sobject"])
        fname = request.path_params["field"]

        def upsert(item: Record) -> tuple[str, bool | None]:
            values = _strip_attributes(item)
            key = next((v for k, v in values.items() if k.lower() == fname.lower()), None)
            if not isinstance(key, str) or not key:
                raise SalesforceApiError(400, "MISSING_ARGUMENT", f"{fname} not specified", [fname])
            return self.org.api_upsert(obj.name, fname, key, values, user)

        return _json(self._run_collection(records, all_or_none, upsert))

    def _run_collection(
        self,
        records: list[Record],
        all_or_none: bool,
        one: Callable[[Record], tuple[str, bool | None]],
    ) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        failed = False
        try:
            with self.org.transaction():
                for item in records:
                    try:
                        rid, created = one(item)
                    except SalesforceApiError as exc:
                        failed = True
                        results.append({"success": False, "errors": [exc.save_error()]})
                        continue
                    result: dict[str, Any] = {"id": rid, "success": True, "errors": []}
                    if created is not None:
                        result["created"] = created
                    results.append(result)
                if failed and all_or_none:
                    raise _RolledBack
        except _RolledBack:
            rolled = {
                "statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                "message": "Record rolled back because not all records were valid and the "
                "request was using AllOrNone header",
                "fields": [],
            }
            results = [
                r if not r["success"] else {"success": False, "errors": [rolled]} for r in results
            ]
        return results


class _RolledBack(Exception):
    pass


def _collection_body(body: Any) -> tuple[list[Record], bool]:
    records = body.get("records") if isinstance(body, dict) else None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise SalesforceApiError(400, "JSON_PARSER_ERROR", "records must be a list of objects")
    if len(records) > MAX_COLLECTION:
        raise SalesforceApiError(
            400,
            "EXCEEDED_ID_LIMIT",
            f"record limit reached. cannot submit more than {MAX_COLLECTION} records into "
            "this call",
        )
    return records, bool(body.get("allOrNone", False))


def _object_info(obj: ObjectDef) -> dict[str, Any]:
    base = f"/services/data/v{API_VERSION}/sobjects/{obj.name}"
    return {
        "name": obj.name, "label": obj.label, "labelPlural": obj.label + "s",
        "keyPrefix": obj.prefix, "custom": False, "customSetting": False,
        "activateable": False, "createable": obj.writable, "updateable": obj.writable,
        "deletable": obj.writable, "undeletable": obj.writable, "mergeable": False,
        "replicateable": True, "triggerable": obj.writable, "queryable": True,
        "retrieveable": True, "searchable": True, "layoutable": True, "feedEnabled": False,
        "mruEnabled": False, "hasSubtypes": False, "isSubtype": False,
        "dataTranslationEnabled": False, "isInterface": False, "deepCloneable": False,
        "associateEntityType": None, "associateParentEntity": None,
        "deprecatedAndHidden": False,
        "urls": {"sobject": base, "describe": f"{base}/describe", "rowTemplate": f"{base}/{{ID}}"},
    }  # fmt: skip


def _json(body: Any, status: int = 200) -> Response:
    return Response(
        json.dumps(body, ensure_ascii=False).encode(),
        status_code=status,
        media_type="application/json;charset=UTF-8",
    )


async def _body(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except ValueError:
        raise SalesforceApiError(
            400, "JSON_PARSER_ERROR", "The request body is not valid JSON"
        ) from None


def _strip_attributes(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise SalesforceApiError(400, "JSON_PARSER_ERROR", "The request body must be a JSON object")
    return {k: v for k, v in body.items() if k != "attributes"}


def _is_version(text: str) -> bool:
    major, dot, minor = text.partition(".")
    return bool(dot) and major.isdigit() and minor.isdigit()


def _http_date(text: str) -> datetime:
    from email.utils import parsedate_to_datetime

    try:
        at = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        raise SalesforceApiError(
            400, "INVALID_HEADER_TYPE", f"bad If-Unmodified-Since: {text}"
        ) from None
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC)


def _window(request: Request) -> tuple[datetime, datetime]:
    try:
        start = soql.parse_datetime(request.query_params["start"])
        end = soql.parse_datetime(request.query_params["end"])
    except (KeyError, ValueError):
        raise SalesforceApiError(
            400, "INVALID_REPLICATION_DATE", "start and end must be ISO 8601 date-times with a zone"
        ) from None
    return start, end
