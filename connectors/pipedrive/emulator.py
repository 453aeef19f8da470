"""A Pipedrive company account on 127.0.0.1: API v2 for deals and their metadata, v1 for the rest.

It serves what :mod:`connectors.pipedrive.connector` uses, in the shapes of Pipedrive's
official OpenAPI descriptions (``../shared/specs/pipedrive/``; the tests validate every
response against them):

* v2 (``/api/v2``): deals (list with ``updated_since``/``updated_until``, filters, sorting and
  cursor pagination up to ``limit=500``; get, create, patch, delete; search by custom field),
  pipelines, stages, dealFields with option sets, organizations and persons (list, search,
  create), activities (list, create, patch, delete);
* v1 (``/v1``): users, ``users/me``, deal flow (``dealChange`` and ``activity`` items),
  webhooks (list, add, delete) delivered as v2.0 payloads with the basic-auth credentials
  set at registration.

Auth is the ``x-api-token`` header (or the legacy ``api_token`` query parameter); a wrong or
missing token gets Pipedrive's 401 body. :meth:`PipedriveEmulator.rate_limit` sets a budget
with Pipedrive's ``x-ratelimit-*`` headers, and the shared :class:`~bridge.emulator.Controls`
inject 5xx and latency. Server time has whole seconds, as Pipedrive's has.

Methods without a leading underscore that change data (``add_deal``, ``edit_deal``...) are
people working in Pipedrive's web app, out of the bridge's sight; they share the validation,
flow and webhooks of the API. The account is seeded from the specs' examples plus generated
data (:mod:`connectors.pipedrive.seed`); pass ``seed=False`` for an empty account.
"""

from __future__ import annotations

import base64
import binascii
import copy
import heapq
import json
import queue
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, date, datetime
from typing import Any, Self

import requests
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from bridge.emulator import Controls, Emulator
from connectors.pipedrive import seed as seeds

Clock = Callable[[], datetime]
Row = dict[str, Any]

MAX_LIMIT = 500
DEFAULT_LIMIT = 100
API_TOKEN = "pd-emulator-token-0001"  # noqa: S105 - the emulator's own default test token
STATUSES = ("open", "won", "lost")
_SORTS = {"id", "update_time", "add_time", "order_nr", "due_date"}
_FIELD_TYPES = {"varchar", "text", "double", "int", "enum", "set", "date", "user", "monetary"}


def utc_now() -> datetime:
    return datetime.now(UTC)


def ts(at: datetime) -> str:
    """Pipedrive v2 time: RFC 3339, whole seconds, UTC."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def v1_ts(at: datetime) -> str:
    """Pipedrive v1 time: ``YYYY-MM-DD HH:MM:SS`` in UTC."""
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def pipedrive_error_body(status: int, message: str) -> tuple[bytes, str]:
    """How Pipedrive words an error: ``{"success": false, "error", "errorCode"}``."""
    body = {"success": False, "error": message, "errorCode": status, "error_info": _INFO}
    return json.dumps(body).encode(), "application/json"


def rate_limit_headers(limit: int, remaining: int, reset_in: float) -> dict[str, str]:
    """Pipedrive's rate-limit headers (the 2-second token-based window's view)."""
    return {
        "x-ratelimit-limit": str(limit),
        "x-ratelimit-remaining": str(remaining),
        "x-ratelimit-reset": str(max(1, round(reset_in))),
    }


def api_token(request: Request) -> str:
    """The credential a request counts against: its API token (header, else query)."""
    return request.headers.get("x-api-token") or request.query_params.get("api_token", "")


_INFO = "Please check developers.pipedrive.com for more information about Pipedrive API."


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class PipedriveEmulator(Emulator):
    """One Pipedrive company. ``tokens`` maps API tokens to user ids (default: user 6,
    "Salesbridge", holds :data:`API_TOKEN`). ``clock`` is the server clock (tz-aware)."""

    name = "pipedrive"

    def __init__(
        self,
        *,
        seed: bool = True,
        generated: int = 12,
        tokens: Mapping[str, int] | None = None,
        clock: Clock = utc_now,
        controls: Controls | None = None,
    ) -> None:
        super().__init__(
            controls=controls or Controls(error_body=pipedrive_error_body, credential=api_token)
        )
        self.clock = clock
        self.tokens = dict(tokens) if tokens is not None else {API_TOKEN: 6}
        self.lock = threading.RLock()
        self.users: dict[int, Row] = {}
        self.pipelines: dict[int, Row] = {}
        self.stages: dict[int, Row] = {}
        self.deal_fields: list[Row] = []
        self.person_fields: list[Row] = []
        self.organizations: dict[int, Row] = {}
        self.persons: dict[int, Row] = {}
        self.deals: dict[int, Row] = {}
        self.activities: dict[int, Row] = {}
        self._deal_activities: dict[int, list[int]] = {}
        """Activity ids by deal (an activity's deal never changes)."""
        self.participants: dict[int, Row] = {}
        """Deal participants by participant id (``{id, deal_id, person_id, add_time}``)."""
        self._deal_participants: dict[int, list[int]] = {}
        """Participant ids by deal, in the order added."""
        self.flow: dict[int, list[Row]] = {}
        self.webhooks: dict[int, Row] = {}
        self.deliveries: list[dict[str, Any]] = []
        """Webhook deliveries made: url, status (None: no answer), payload."""
        self._ids: dict[str, int] = {}
        self._outbox: queue.Queue[tuple[Row, Row] | None] = queue.Queue()
        self._sender: threading.Thread | None = None
        self._load_basics()
        if seed:
            self._load_seed(generated)

    # ------------------------------------------------------------------ server lifecycle

    def start(self, port: int = 0) -> Self:
        if self._sender is None:
            self._sender = threading.Thread(
                target=self._send_webhooks, name="pipedrive-webhooks", daemon=True
            )
            self._sender.start()
        return super().start(port)

    def stop(self) -> None:
        super().stop()
        if self._sender is not None:
            self._outbox.put(None)
            self._sender.join(10)
            self._sender = None

    def flush_webhooks(self) -> None:
        """Wait until every webhook queued so far has been delivered (or has failed)."""
        self._outbox.join()

    def rate_limit(self, requests: int, per: float = 2.0) -> None:
        """Allow ``requests`` per ``per`` seconds per token, with Pipedrive's headers."""
        self.controls.rate_limit(requests, per, headers=rate_limit_headers)

    # ------------------------------------------------------------------ lookups for tests

    def field_key(self, name: str) -> str:
        """The field code (40-hex hash for custom fields) of the deal field named ``name``."""
        for f in self.deal_fields:
            if f["field_name"].casefold() == name.casefold():
                return str(f["field_code"])
        raise KeyError(name)

    def option_id(self, field_name: str, label: str) -> int:
        f = self._field(self.field_key(field_name))
        for o in f.get("options") or ():
            if o["label"].casefold() == label.casefold():
                return int(o["id"])
        raise KeyError(label)

    def person_field_key(self, name: str) -> str:
        """The field code of the person field named ``name``."""
        for f in self.person_fields:
            if f["field_name"].casefold() == name.casefold():
                return str(f["field_code"])
        raise KeyError(name)

    def person_option_id(self, field_name: str, label: str) -> int:
        f = self._field(self.person_field_key(field_name), self.person_fields)
        for o in f.get("options") or ():
            if o["label"].casefold() == label.casefold():
                return int(o["id"])
        raise KeyError(label)

    def participants_of(self, deal_id: int) -> list[int]:
        """The person ids of a deal's participants, in the order they were added."""
        with self.lock:
            ids = self._deal_participants.get(deal_id, ())
            return [self.participants[i]["person_id"] for i in ids]

    def person(self, person_id: int) -> Row:
        """A copy of a person as ``GET /api/v2/persons`` serves it."""
        with self.lock:
            return copy.deepcopy(self.persons[person_id])

    def stage_id(self, pipeline: str, stage: str) -> int:
        for s in self.stages.values():
            p = self.pipelines[s["pipeline_id"]]
            if (p["name"], s["name"]) == (pipeline, stage):
                return int(s["id"])
        raise KeyError(f"{pipeline} / {stage}")

    def user_id(self, email: str) -> int:
        for u in self.users.values():
            if u["email"] == email:
                return int(u["id"])
        raise KeyError(email)

    def deal(self, deal_id: int) -> Row:
        """A copy of a deal as ``GET /api/v2/deals/{id}`` serves it (deleted ones too)."""
        with self.lock:
            return copy.deepcopy(self.deals[deal_id])

    # ------------------------------------------------------------------ people in the web app

    def add_deal(self, user_id: int = 1, **fields: Any) -> int:
        """Create a deal as user ``user_id`` would (v2 body shape); returns its id."""
        with self.lock:
            return int(self._create_deal(fields, user_id, source="app")["id"])

    def edit_deal(self, deal_id: int, user_id: int = 1, **changes: Any) -> None:
        """Change a deal as user ``user_id`` would (v2 body shape, custom fields by hash)."""
        with self.lock:
            self._update_deal(deal_id, changes, user_id, source="app")

    def delete_deal(self, deal_id: int, user_id: int = 1) -> None:
        with self.lock:
            self._delete_deal(deal_id, user_id)

    def corrupt_deal(self, deal_id: int, **raw: Any) -> None:
        """Write ``raw`` values straight into a deal, bypassing validation (as data migrated
        in, or an option deleted after it was chosen, leaves it); the deal counts as updated."""
        with self.lock:
            deal = self.deals[deal_id]
            custom = raw.pop("custom_fields", None)
            deal.update(raw)
            if custom:
                deal["custom_fields"].update(custom)
            deal["update_time"] = ts(self.clock())

    def add_activity(self, deal_id: int, user_id: int = 1, **fields: Any) -> int:
        with self.lock:
            return int(self._create_activity({**fields, "deal_id": deal_id}, user_id)["id"])

    def edit_activity(self, activity_id: int, user_id: int = 1, **changes: Any) -> None:
        with self.lock:
            self._update_activity(activity_id, changes, user_id)

    def add_organization(self, name: str, owner_id: int = 1) -> int:
        with self.lock:
            return int(self._create_org({"name": name, "owner_id": owner_id})["id"])

    def add_person(self, name: str, owner_id: int = 1, **fields: Any) -> int:
        """Create a person (v2 body shape: ``emails``, ``job_title``, ``custom_fields`` by
        field code); returns its id."""
        with self.lock:
            return int(self._create_person({"name": name, "owner_id": owner_id, **fields})["id"])

    def edit_person(self, person_id: int, **changes: Any) -> None:
        """Change a person (v2 body shape, custom fields by field code)."""
        with self.lock:
            self._update_person(person_id, changes)

    def add_participant(self, deal_id: int, person_id: int, user_id: int = 1) -> int:
        """Add a person to a deal's participants, as the deal's Participants panel does;
        returns the participant id."""
        with self.lock:
            return int(self._add_participant(deal_id, person_id, user_id)["id"])

    def remove_participant(self, deal_id: int, person_id: int, user_id: int = 1) -> None:
        """Remove a person from a deal's participants."""
        with self.lock:
            for pid in self._deal_participants.get(deal_id, ()):
                if self.participants[pid]["person_id"] == person_id:
                    self._delete_participant(deal_id, pid, user_id)
                    return
            raise KeyError(person_id)

    # ------------------------------------------------------------------ the app

    def build_app(self) -> ASGIApp:
        r = self._route
        routes = [
            r("/api/v2/deals", "GET", self._h_list_deals),
            r("/api/v2/deals", "POST", self._h_add_deal),
            r("/api/v2/deals/search", "GET", self._h_search_deals),
            r("/api/v2/deals/{id:int}", "GET", self._h_get_deal),
            r("/api/v2/deals/{id:int}", "PATCH", self._h_patch_deal),
            r("/api/v2/deals/{id:int}", "DELETE", self._h_delete_deal),
            r("/api/v2/pipelines", "GET", self._h_pipelines),
            r("/api/v2/stages", "GET", self._h_stages),
            r("/api/v2/dealFields", "GET", self._h_deal_fields),
            r("/api/v2/organizations", "GET", self._h_list_orgs),
            r("/api/v2/organizations", "POST", self._h_add_org),
            r("/api/v2/organizations/search", "GET", self._h_search_orgs),
            r("/api/v2/persons", "GET", self._h_list_persons),
            r("/api/v2/persons", "POST", self._h_add_person),
            r("/api/v2/persons/search", "GET", self._h_search_persons),
            r("/api/v2/persons/{id:int}", "PATCH", self._h_patch_person),
            r("/api/v2/personFields", "GET", self._h_person_fields),
            r("/api/v2/activities", "GET", self._h_list_activities),
            r("/api/v2/activities", "POST", self._h_add_activity),
            r("/api/v2/activities/{id:int}", "PATCH", self._h_patch_activity),
            r("/api/v2/activities/{id:int}", "DELETE", self._h_delete_activity),
            r("/v1/users", "GET", self._h_users),
            r("/v1/users/me", "GET", self._h_me),
            r("/v1/deals/{id:int}/flow", "GET", self._h_flow),
            r("/v1/deals/{id:int}/participants", "GET", self._h_participants),
            r("/v1/deals/{id:int}/participants", "POST", self._h_add_participant),
            r(
                "/v1/deals/{id:int}/participants/{pid:int}",
                "DELETE",
                self._h_delete_participant,
            ),
            r("/v1/webhooks", "GET", self._h_list_webhooks),
            r("/v1/webhooks", "POST", self._h_add_webhook),
            r("/v1/webhooks/{id:int}", "DELETE", self._h_delete_webhook),
        ]
        return Starlette(routes=routes)

    def _route(
        self, path: str, method: str, handler: Callable[[Request, int, Any], Row | tuple[int, Row]]
    ) -> Route:
        async def endpoint(request: Request) -> Response:
            user = self.tokens.get(api_token(request))
            if user is None:
                body = {"success": False, "error": "unauthorized access", "errorCode": 401}
                return JSONResponse({**body, "error_info": _INFO}, status_code=401)
            payload: Any = None
            if method in ("POST", "PATCH", "PUT"):
                raw = await request.body()
                try:
                    payload = json.loads(raw) if raw else {}
                except ValueError:
                    return _error(400, "Request body is not valid JSON")
                if not isinstance(payload, dict):
                    return _error(400, "Request body must be a JSON object")
            try:
                with self.lock:
                    out = handler(request, user, payload)
                    status, body = out if isinstance(out, tuple) else (200, out)
                    # Rendered under the lock: views share the stored rows' nested values
                    # (no copies), so they must not change while they are written out.
                    content = _render(body)
            except ApiError as exc:
                return _error(exc.status, exc.message)
            return Response(content, status_code=status, media_type="application/json")

        return Route(path, endpoint, methods=[method])

    # ------------------------------------------------------------------ handlers: deals

    def _h_list_deals(self, request: Request, user: int, _: Any) -> Row:
        q = request.query_params
        rows = [d for d in self.deals.values() if not d["is_archived"]]
        status = q.get("status")
        if status is not None and status not in (*STATUSES, "deleted"):
            raise ApiError(400, f"Invalid status: {status}")
        rows = [d for d in rows if d["is_deleted"] == (status == "deleted")]
        if status in STATUSES:
            rows = [d for d in rows if d["status"] == status]
        for name in ("owner_id", "person_id", "org_id", "pipeline_id", "stage_id"):
            if name in q:
                want = _int(q[name], name)
                rows = [d for d in rows if d.get(name) == want]
        if "ids" in q:
            wanted = {_int(x, "ids") for x in q["ids"].split(",") if x}
            rows = [d for d in rows if d["id"] in wanted]
        rows = _time_window(rows, q)
        return self._paged(rows, q, self._deal_view_for(q))

    def _h_get_deal(self, request: Request, user: int, _: Any) -> Row:
        deal = self._live_deal(request.path_params["id"])
        return {"success": True, "data": self._deal_view_for(request.query_params)(deal)}

    def _deal_view_for(self, q: Mapping[str, str]) -> Callable[[Row], Row]:
        """The deal view with the ``include_fields`` asked for (``participants_count``)."""
        wanted = set((q.get("include_fields") or "").split(","))
        if "participants_count" not in wanted:
            return _deal_view

        def view(deal: Row) -> Row:
            count = len(self._deal_participants.get(deal["id"], ()))
            return {**_deal_view(deal), "participants_count": count}

        return view

    def _h_add_deal(self, request: Request, user: int, body: Row) -> Row:
        if not isinstance(body.get("title"), str) or not body["title"].strip():
            raise ApiError(400, "Validation failed: title: Required")
        deal = self._create_deal(body, user, source="api")
        return {"success": True, "data": _deal_view(deal)}

    def _h_patch_deal(self, request: Request, user: int, body: Row) -> Row:
        deal_id = request.path_params["id"]
        self._live_deal(deal_id)
        deal = self._update_deal(deal_id, body, user, source="api")
        return {"success": True, "data": _deal_view(deal)}

    def _h_delete_deal(self, request: Request, user: int, _: Any) -> Row:
        deal_id = request.path_params["id"]
        self._live_deal(deal_id)
        self._delete_deal(deal_id, user)
        return {"success": True, "data": {"id": deal_id}}

    def _h_search_deals(self, request: Request, user: int, _: Any) -> Row:
        q = request.query_params
        term = q.get("term", "")
        if len(term) < 2:
            raise ApiError(400, "Search term must be at least 2 characters long")
        exact = q.get("exact_match") == "true"
        fields = set((q.get("fields") or "title,custom_fields,notes").split(","))
        items = []
        for d in self.deals.values():
            if d["is_deleted"] or d["is_archived"]:
                continue
            if q.get("status") and d["status"] != q["status"]:
                continue
            hits = []
            if "title" in fields and _matches(d["title"], term, exact):
                hits.append("title")
            custom = [
                str(v)
                for k, v in d["custom_fields"].items()
                if isinstance(v, str) and _field_type(self, k) in ("varchar", "text")
            ]
            found_custom = [v for v in custom if _matches(v, term, exact)]
            if "custom_fields" in fields and found_custom:
                hits.append("custom_fields")
            if not hits:
                continue
            stage = self.stages.get(d["stage_id"], {})
            org = self.organizations.get(d.get("org_id") or 0)
            person = self.persons.get(d.get("person_id") or 0)
            items.append(
                {
                    "result_score": 1.0 if exact else 0.5,
                    "item": {
                        "id": d["id"],
                        "type": "deal",
                        "title": d["title"],
                        "value": int(d["value"] or 0),
                        "currency": d["currency"],
                        "status": d["status"],
                        "visible_to": d["visible_to"],
                        "owner": {"id": d["owner_id"]},
                        "stage": {"id": d["stage_id"], "name": stage.get("name", "")},
                        "person": {"id": person["id"], "name": person["name"]} if person else None,
                        "organization": {"id": org["id"], "name": org["name"]} if org else None,
                        "custom_fields": found_custom,
                        "notes": [],
                        "is_archived": d["is_archived"],
                    },
                }
            )
        page = self._paged(items, q, lambda x: x, key=lambda x: (x["item"]["id"],))
        return {"success": True, "data": {"items": page["data"]}, **_rest(page)}

    # ------------------------------------------------------------------ handlers: metadata

    def _h_pipelines(self, request: Request, user: int, _: Any) -> Row:
        return self._paged(list(self.pipelines.values()), request.query_params, _same)

    def _h_stages(self, request: Request, user: int, _: Any) -> Row:
        rows = list(self.stages.values())
        if "pipeline_id" in request.query_params:
            want = _int(request.query_params["pipeline_id"], "pipeline_id")
            rows = [s for s in rows if s["pipeline_id"] == want]
        return self._paged(rows, request.query_params, _same)

    def _h_deal_fields(self, request: Request, user: int, _: Any) -> Row:
        rows = [{**f, "_order": i} for i, f in enumerate(self.deal_fields)]
        return self._paged(
            rows, request.query_params, _strip_order, key=lambda f: (f["_order"],), sortable=False
        )

    def _h_users(self, request: Request, user: int, _: Any) -> Row:
        return {"success": True, "data": [self._user_view(u, user) for u in self.users.values()]}

    def _h_me(self, request: Request, user: int, _: Any) -> Row:
        me = self._user_view(self.users[user], user)
        company = {
            "company_id": 7001,
            "company_name": "Salesbridge Emulated Co",
            "company_domain": "salesbridge-emulated",
            "company_country": "CN",
            "company_industry": "Software",
            "language": {"language_code": "en", "country_code": "US"},
        }
        return {"success": True, "data": {**me, **company}}

    # ------------------------------------------------------------------ handlers: contacts

    def _h_list_orgs(self, request: Request, user: int, _: Any) -> Row:
        rows = _live(self.organizations, request.query_params)
        return self._paged(_time_window(rows, request.query_params), request.query_params, _same)

    def _h_add_org(self, request: Request, user: int, body: Row) -> Row:
        if not isinstance(body.get("name"), str) or not body["name"].strip():
            raise ApiError(400, "Validation failed: name: Required")
        return {"success": True, "data": self._create_org(body)}

    def _h_search_orgs(self, request: Request, user: int, _: Any) -> Row:
        q = request.query_params
        term = q.get("term", "")
        if len(term) < 2:
            raise ApiError(400, "Search term must be at least 2 characters long")
        exact = q.get("exact_match") == "true"
        items = [
            {
                "result_score": 1.0,
                "item": {
                    "id": o["id"],
                    "type": "organization",
                    "name": o["name"],
                    "address": (o.get("address") or {}).get("value") or "",
                    "visible_to": o["visible_to"],
                    "owner": {"id": o["owner_id"]},
                    "custom_fields": [],
                    "notes": [],
                },
            }
            for o in self.organizations.values()
            if not o["is_deleted"] and _matches(o["name"], term, exact)
        ]
        page = self._paged(items, q, lambda x: x, key=lambda x: (x["item"]["id"],))
        return {"success": True, "data": {"items": page["data"]}, **_rest(page)}

    def _h_list_persons(self, request: Request, user: int, _: Any) -> Row:
        q = request.query_params
        rows = _live(self.persons, q)
        if "org_id" in q:
            rows = [p for p in rows if p.get("org_id") == _int(q["org_id"], "org_id")]
        if "deal_id" in q:
            deal = self.deals.get(_int(q["deal_id"], "deal_id"))
            rows = [p for p in rows if deal is not None and p["id"] == deal.get("person_id")]
        return self._paged(_time_window(rows, q), q, _same)

    def _h_add_person(self, request: Request, user: int, body: Row) -> Row:
        if not isinstance(body.get("name"), str) or not body["name"].strip():
            raise ApiError(400, "Validation failed: name: Required")
        return {"success": True, "data": self._create_person(body)}

    def _h_patch_person(self, request: Request, user: int, body: Row) -> Row:
        return {"success": True, "data": self._update_person(request.path_params["id"], body)}

    def _h_search_persons(self, request: Request, user: int, _: Any) -> Row:
        q = request.query_params
        term = q.get("term", "")
        if len(term) < 2:
            raise ApiError(400, "Search term must be at least 2 characters long")
        exact = q.get("exact_match") == "true"
        fields = set((q.get("fields") or "name,email,phone,notes,custom_fields").split(","))
        org_id = _int(q["organization_id"], "organization_id") if "organization_id" in q else None
        items = []
        for p in self.persons.values():
            if p["is_deleted"] or (org_id is not None and p.get("org_id") != org_id):
                continue
            emails = [e["value"] for e in p["emails"]]
            hit = ("name" in fields and _matches(p["name"], term, exact)) or (
                "email" in fields and any(_matches(e, term, exact) for e in emails)
            )
            if not hit:
                continue
            item: Row = {
                "id": p["id"],
                "type": "person",
                "name": p["name"],
                "phones": [x["value"] for x in p["phones"]],
                "emails": emails,
                "visible_to": p["visible_to"],
                "owner": {"id": p["owner_id"]},
                "custom_fields": [],
                "notes": [],
            }
            org = self.organizations.get(p.get("org_id") or 0)
            if org is not None:  # the spec's organization is an object, never null
                item["organization"] = {"id": org["id"], "name": org["name"], "address": None}
            items.append({"result_score": 1.0 if exact else 0.5, "item": item})
        page = self._paged(items, q, lambda x: x, key=lambda x: (x["item"]["id"],))
        return {"success": True, "data": {"items": page["data"]}, **_rest(page)}

    def _h_person_fields(self, request: Request, user: int, _: Any) -> Row:
        rows = [{**f, "_order": i} for i, f in enumerate(self.person_fields)]
        return self._paged(
            rows, request.query_params, _strip_order, key=lambda f: (f["_order"],), sortable=False
        )

    # ------------------------------------------------------------------ handlers: activities

    def _h_list_activities(self, request: Request, user: int, _: Any) -> Row:
        q = request.query_params
        if "deal_id" in q and "ids" not in q:  # the deal's own, through the index
            ids = self._deal_activities.get(_int(q["deal_id"], "deal_id"), ())
            rows = [a for a in map(self.activities.__getitem__, ids) if not a["is_deleted"]]
        else:
            rows = _live(self.activities, q)
        for name in ("deal_id", "owner_id", "person_id", "org_id"):
            if name in q:
                want = _int(q[name], name)
                rows = [a for a in rows if a.get(name) == want]
        if "done" in q:
            rows = [a for a in rows if a["done"] == (q["done"] in ("true", "1"))]
        return self._paged(_time_window(rows, q), q, _same)

    def _h_add_activity(self, request: Request, user: int, body: Row) -> Row:
        return {"success": True, "data": self._create_activity(body, user)}

    def _h_patch_activity(self, request: Request, user: int, body: Row) -> Row:
        activity = self._update_activity(request.path_params["id"], body, user)
        return {"success": True, "data": activity}

    def _h_delete_activity(self, request: Request, user: int, _: Any) -> Row:
        activity_id = request.path_params["id"]
        self._delete_activity(activity_id, user)
        return {"success": True, "data": {"id": activity_id}}

    # ------------------------------------------------------------------ handlers: v1

    def _h_flow(self, request: Request, user: int, _: Any) -> Row:
        q = request.query_params
        deal_id = request.path_params["id"]
        if deal_id not in self.deals:
            raise ApiError(404, "Deal not found")
        start = _int(q.get("start", "0"), "start")
        limit = min(_int(q.get("limit", str(DEFAULT_LIMIT)), "limit"), MAX_LIMIT)
        wanted = set((q.get("items") or "dealChange,activity").split(","))
        items = [
            copy.deepcopy(e)
            for e in reversed(self.flow.get(deal_id, []))  # newest first, as Pipedrive lists
            if e["object"] in wanted
        ]
        page = items[start : start + limit]
        more = start + limit < len(items)
        deal = self.deals[deal_id]
        owner = self.users.get(deal["owner_id"], {})
        related = {
            "deal": {
                str(deal_id): {
                    k: deal[k]
                    for k in (
                        "id",
                        "title",
                        "status",
                        "value",
                        "currency",
                        "stage_id",
                        "pipeline_id",
                    )
                }
            },
            "user": {
                str(u["id"]): {
                    "id": u["id"],
                    "name": u["name"],
                    "email": u["email"],
                    "has_pic": 0,
                    "pic_hash": None,
                    "active_flag": True,
                }
                for u in (owner, *(self.users.get(e["data"].get("user_id"), {}) for e in page))
                if u
            },
        }
        return {
            "success": True,
            "data": page,
            "additional_data": {"start": start, "limit": limit, "more_items_in_collection": more},
            "related_objects": related,
        }

    def _h_participants(self, request: Request, user: int, _: Any) -> Row:
        q = request.query_params
        deal_id = request.path_params["id"]
        self._live_deal(deal_id)
        start = _int(q.get("start", "0"), "start")
        limit = min(_int(q.get("limit", str(DEFAULT_LIMIT)), "limit"), MAX_LIMIT)
        ids = self._deal_participants.get(deal_id, [])
        page = [self._participant_view(self.participants[i]) for i in ids[start : start + limit]]
        more = start + limit < len(ids)
        return {
            "success": True,
            "data": page,
            "additional_data": {"start": start, "limit": limit, "more_items_in_collection": more},
        }

    def _h_add_participant(self, request: Request, user: int, body: Row) -> Row:
        deal_id = request.path_params["id"]
        self._live_deal(deal_id)
        person_id = body.get("person_id")
        if not isinstance(person_id, int) or isinstance(person_id, bool):
            raise ApiError(400, "Validation failed: person_id: Required")
        part = self._add_participant(deal_id, person_id, user)
        return {"success": True, "data": self._participant_view(part)}

    def _h_delete_participant(self, request: Request, user: int, _: Any) -> Row:
        deal_id, pid = request.path_params["id"], request.path_params["pid"]
        self._live_deal(deal_id)
        self._delete_participant(deal_id, pid, user)
        return {"success": True, "data": {"id": pid}}

    def _participant_view(self, part: Row) -> Row:
        """A participant as v1 lists it: the person twice (``person_id`` and ``person``)."""
        person = self.persons[part["person_id"]]
        deal = self.deals[part["deal_id"]]
        owner = self.users.get(person["owner_id"]) or {}
        org = self.organizations.get(person.get("org_id") or 0)
        emails = [
            {"label": e["label"], "value": e["value"], "primary": e["primary"]}
            for e in person["emails"]
        ]
        phones = [
            {"label": x.get("label", "work"), "value": x["value"], "primary": x["primary"]}
            for x in person["phones"]
        ]
        active = not person["is_deleted"]
        return {
            "id": part["id"],
            "person_id": {
                "active_flag": active,
                "name": person["name"],
                "email": emails,
                "phone": phones,
                "owner_id": person["owner_id"],
                "value": person["id"],
            },
            "add_time": part["add_time"],
            "active_flag": True,
            "related_item_data": {"deal_id": deal["id"], "title": deal["title"]},
            "person": {
                "id": person["id"],
                "company_id": 7001,
                "owner_id": {
                    "id": person["owner_id"],
                    "name": owner.get("name", ""),
                    "email": owner.get("email", ""),
                    "has_pic": 0,
                    "pic_hash": None,
                    "active_flag": True,
                    "value": person["owner_id"],
                },
                "org_id": (
                    {
                        "name": org["name"],
                        "owner_id": org["owner_id"],
                        "address": None,
                        "active_flag": not org["is_deleted"],
                        "cc_email": None,
                        "value": org["id"],
                    }
                    if org
                    else None
                ),
                "name": person["name"],
                "first_name": person["first_name"],
                "last_name": person["last_name"],
                "active_flag": active,
                "phone": phones,
                "email": emails,
                "first_char": person["name"][:1].lower(),
                "add_time": _v1_of(person["add_time"]),
                "update_time": _v1_of(person["update_time"]),
                "visible_to": str(person["visible_to"]),
                "picture_id": None,
                "label": None,
                "label_ids": list(person["label_ids"]),
                "org_name": org["name"] if org else None,
                "owner_name": owner.get("name", ""),
                "cc_email": None,
            },
            "related_item_type": "deal",
            "related_item_id": deal["id"],
        }

    def _h_list_webhooks(self, request: Request, user: int, _: Any) -> Row:
        rows = [copy.deepcopy(w) for w in self.webhooks.values()]
        return {"success": True, "status": "ok", "data": rows}

    def _h_add_webhook(self, request: Request, user: int, body: Row) -> tuple[int, Row]:
        missing = [
            k
            for k in ("subscription_url", "event_action", "event_object", "name")
            if not body.get(k)
        ]
        if missing:
            raise ApiError(400, f"Missing parameters: {', '.join(missing)}")
        if body["event_action"] not in ("create", "change", "delete", "*"):
            raise ApiError(400, "event_action must be one of create, change, delete, *")
        if not str(body["subscription_url"]).startswith(("http://", "https://")):
            raise ApiError(400, "subscription_url must be an http(s) URL")
        wid = self._next("webhook")
        hook = {
            "id": wid,
            "company_id": 7001,
            "owner_id": user,
            "user_id": body.get("user_id") or user,
            "event_action": body["event_action"],
            "event_object": body["event_object"],
            "subscription_url": body["subscription_url"],
            "version": body.get("version") or "2.0",
            "is_active": 1,
            "add_time": _iso_ms(self.clock()),
            "remove_time": None,
            "type": "general",
            "http_auth_user": body.get("http_auth_user"),
            "http_auth_password": body.get("http_auth_password"),
            "remove_reason": None,
            "last_delivery_time": None,
            "last_http_status": None,
            "admin_id": user,
            "name": body["name"],
        }
        self.webhooks[wid] = hook
        return 201, {"success": True, "status": "ok", "data": copy.deepcopy(hook)}

    def _h_delete_webhook(self, request: Request, user: int, _: Any) -> Row:
        wid = request.path_params["id"]
        if self.webhooks.pop(wid, None) is None:
            raise ApiError(404, "Webhook not found")
        return {"success": True, "status": "ok"}

    # ------------------------------------------------------------------ paging

    def _paged(
        self,
        rows: list[Row],
        q: Mapping[str, str],
        view: Callable[[Row], Row],
        *,
        key: Callable[[Row], tuple[Any, ...]] | None = None,
        sortable: bool = True,
    ) -> Row:
        """Sort, cut after the cursor and limit, as every v2 list does."""
        limit = _int(q.get("limit", str(DEFAULT_LIMIT)), "limit")
        if not 1 <= limit <= MAX_LIMIT:
            raise ApiError(400, f"limit must be between 1 and {MAX_LIMIT}")
        sort_by = q.get("sort_by", "id") if sortable else "id"
        if sort_by not in _SORTS:
            raise ApiError(400, f"Invalid sort_by: {sort_by}")
        desc = q.get("sort_direction", "asc") == "desc"
        if key is None:

            def key(r: Row) -> tuple[Any, ...]:
                return (r.get(sort_by) or "", r["id"])

        # Each row's key once; past the cursor, only the page's rows are put in order.
        keyed = [(key(r), i) for i, r in enumerate(rows)]
        if q.get("cursor"):
            after = tuple(_decode_cursor(q["cursor"]))
            try:
                keyed = [k for k in keyed if (k[0] < after if desc else k[0] > after)]
            except TypeError:
                raise ApiError(400, "Invalid cursor") from None
        pick = heapq.nlargest if desc else heapq.nsmallest
        page = pick(limit + 1, keyed)
        more = len(page) > limit
        page = page[:limit]
        next_cursor = _encode_cursor(_jsonable(page[-1][0])) if more else None
        return {
            "success": True,
            "data": [view(rows[i]) for _, i in page],
            "additional_data": {"next_cursor": next_cursor},
        }

    # ------------------------------------------------------------------ the model

    def _next(self, kind: str) -> int:
        self._ids[kind] = self._ids.get(kind, 0) + 1
        return self._ids[kind]

    def _field(self, key: str, fields: list[Row] | None = None) -> Row:
        """A deal field (or one of ``fields``) by its code."""
        for f in self.deal_fields if fields is None else fields:
            if f["field_code"] == key:
                return f
        raise KeyError(key)

    def _live_deal(self, deal_id: int) -> Row:
        deal = self.deals.get(deal_id)
        if deal is None or deal["is_deleted"]:
            raise ApiError(404, "Deal not found")
        return deal

    def _create_deal(self, body: Mapping[str, Any], user: int, *, source: str) -> Row:
        now = ts(self.clock())
        first = min(self.stages.values(), key=lambda s: (s["pipeline_id"], s["order_nr"]))
        deal: Row = {
            "id": self._next("deal"),
            "title": "",
            "creator_user_id": user,
            "owner_id": user,
            "person_id": None,
            "org_id": None,
            "pipeline_id": first["pipeline_id"],
            "stage_id": first["id"],
            "value": 0,
            "currency": self.users.get(user, {}).get("default_currency", "USD"),
            "add_time": now,
            "update_time": now,
            "stage_change_time": None,
            "is_deleted": False,
            "is_archived": False,
            "archive_time": None,
            "status": "open",
            "probability": None,
            "lost_reason": None,
            "visible_to": 3,
            "close_time": None,
            "won_time": None,
            "lost_time": None,
            "expected_close_date": None,
            "label_ids": [],
            "origin": "API" if source == "api" else "ManuallyCreated",
            "origin_id": None,
            "channel": None,
            "channel_id": None,
            "custom_fields": {
                f["field_code"]: None for f in self.deal_fields if f["is_custom_field"]
            },
        }
        changes = self._check_deal(deal, body)
        self._apply(deal, changes, now)
        self.deals[deal["id"]] = deal
        self.flow[deal["id"]] = []
        self._contact_participates(deal, now)
        self._notify("deal", "create", deal["id"], _deal_view(deal), None, user, source)
        return deal

    def _update_deal(self, deal_id: int, body: Mapping[str, Any], user: int, *, source: str) -> Row:
        deal = self._live_deal(deal_id)
        before = {**deal, "custom_fields": dict(deal["custom_fields"])}  # _apply replaces
        changes = self._check_deal(deal, body)
        now_dt = self.clock()
        now = ts(now_dt)
        self._apply(deal, changes, now)
        self._contact_participates(deal, now)
        changed = {k for k in _FLOW_KEYS if before.get(k) != deal.get(k)}
        changed |= {
            k for k, v in deal["custom_fields"].items() if before["custom_fields"].get(k) != v
        }
        if changed:
            deal["update_time"] = now
            for key in sorted(changed):
                old, new = _value_of(before, key), _value_of(deal, key)
                self._log_change(deal_id, key, old, new, user, now_dt, source)
            previous = {k: _value_of(before, k) for k in changed}
            self._notify("deal", "change", deal_id, _deal_view(deal), previous, user, source)
        return deal

    def _contact_participates(self, deal: Row, now: str) -> None:
        """The deal's contact person is one of its participants (Pipedrive counts it in
        ``participants_count``); a contact replaced stays a participant."""
        person_id = deal.get("person_id")
        ids = self._deal_participants.setdefault(deal["id"], [])
        if person_id is None or any(self.participants[i]["person_id"] == person_id for i in ids):
            return
        part: Row = {"id": self._next("participant"), "deal_id": deal["id"], "person_id": person_id}
        part["add_time"] = _v1_of(now)
        self.participants[part["id"]] = part
        ids.append(part["id"])

    def _add_participant(self, deal_id: int, person_id: int, user: int) -> Row:
        deal = self._live_deal(deal_id)
        person = self.persons.get(person_id)
        if person is None or person["is_deleted"]:
            raise ApiError(400, f"Validation failed: person_id: {person_id!r} not found")
        ids = self._deal_participants.setdefault(deal_id, [])
        if any(self.participants[i]["person_id"] == person_id for i in ids):
            raise ApiError(400, "The person is already a participant of this deal")
        now_dt = self.clock()
        part: Row = {"id": self._next("participant"), "deal_id": deal_id, "person_id": person_id}
        part["add_time"] = v1_ts(now_dt)
        self.participants[part["id"]] = part
        ids.append(part["id"])
        self._participants_touched(deal, user, now_dt)
        return part

    def _delete_participant(self, deal_id: int, participant_id: int, user: int) -> None:
        deal = self._live_deal(deal_id)
        ids = self._deal_participants.get(deal_id, [])
        if participant_id not in ids:
            raise ApiError(404, "Participant not found")
        ids.remove(participant_id)
        del self.participants[participant_id]
        self._participants_touched(deal, user, self.clock())

    def _participants_touched(self, deal: Row, user: int, at: datetime) -> None:
        """Participants are part of the deal (``participants_count``): a change moves its
        update time and is a deal change for webhooks."""
        deal["update_time"] = ts(at)
        self._notify("deal", "change", deal["id"], _deal_view(deal), {}, user, "app")

    def _delete_deal(self, deal_id: int, user: int) -> None:
        deal = self._live_deal(deal_id)
        deal["is_deleted"] = True
        deal["update_time"] = ts(self.clock())
        self._notify("deal", "delete", deal_id, _deal_view(deal), None, user, "api")

    def _check_deal(self, deal: Row, body: Mapping[str, Any]) -> Row:
        """Validated changes of ``body`` against ``deal``, or ApiError(400) naming the field."""
        out: Row = {}
        for key, value in body.items():
            if key == "custom_fields":
                if not isinstance(value, dict):
                    raise ApiError(400, "custom_fields must be an object")
                out["custom_fields"] = {k: self._check_custom(k, v) for k, v in value.items()}
            elif key in ("title", "currency", "lost_reason", "channel_id", "origin_id"):
                if value is not None and not isinstance(value, str):
                    raise ApiError(400, f"Validation failed: {key}: must be a string")
                if key == "title" and not (value or "").strip():
                    raise ApiError(400, "Validation failed: title: must not be empty")
                if key == "currency" and (value is None or len(value) != 3):
                    raise ApiError(400, "Validation failed: currency: must be a 3-letter code")
                out[key] = value
            elif key in ("value", "probability"):
                if value is not None and not _is_number(value):
                    raise ApiError(400, f"Validation failed: {key}: must be a number")
                if key == "value" and value is None:
                    value = 0
                if key == "probability" and value is not None and not 0 <= value <= 100:
                    raise ApiError(400, "Validation failed: probability: must be 0..100")
                out[key] = value
            elif key == "status":
                if value not in STATUSES:
                    raise ApiError(400, f"Validation failed: status: must be one of {STATUSES}")
                out[key] = value
            elif key == "expected_close_date":
                if value is not None:
                    _check_date(value, key)
                out[key] = value
            elif key in ("owner_id", "person_id", "org_id", "stage_id", "pipeline_id"):
                table = {
                    "owner_id": self.users,
                    "person_id": self.persons,
                    "org_id": self.organizations,
                    "stage_id": self.stages,
                    "pipeline_id": self.pipelines,
                }[key]
                if value is None and key in ("person_id", "org_id"):
                    out[key] = None
                    continue
                if not isinstance(value, int) or value not in table:
                    raise ApiError(400, f"Validation failed: {key}: {value!r} not found")
                out[key] = value
            elif key in ("visible_to", "channel", "origin"):
                out[key] = value
            elif key == "label_ids":
                out[key] = list(value or [])
            elif key in ("is_archived", "is_deleted"):
                out[key] = bool(value)
            else:
                raise ApiError(400, f"Validation failed: unknown field {key!r}")
        if "stage_id" in out:
            out["pipeline_id"] = self.stages[out["stage_id"]]["pipeline_id"]
        elif "pipeline_id" in out and out["pipeline_id"] != deal["pipeline_id"]:
            stages = [s for s in self.stages.values() if s["pipeline_id"] == out["pipeline_id"]]
            out["stage_id"] = min(stages, key=lambda s: s["order_nr"])["id"]
        return out

    def _check_custom(self, key: str, value: Any, fields: list[Row] | None = None) -> Any:
        try:
            f = self._field(key, fields)
        except KeyError:
            raise ApiError(400, f"Validation failed: unknown custom field {key}") from None
        if value is None:
            return None
        kind = f["field_type"]
        ids = {o["id"] for o in f.get("options") or ()}
        checks: dict[str, Callable[[Any], bool]] = {
            "varchar": lambda v: isinstance(v, str),
            "text": lambda v: isinstance(v, str),
            "double": _is_number,
            "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "enum": lambda v: v in ids,
            "set": lambda v: isinstance(v, list) and bool(v) and all(x in ids for x in v),
            "date": lambda v: isinstance(v, str) and _is_date(v),
            "user": lambda v: v in self.users,
            "monetary": lambda v: isinstance(v, dict) and _is_number(v.get("value")),
        }
        if not checks[kind](value):
            raise ApiError(
                400, f"Validation failed: {f['field_name']}: {value!r} is not a valid {kind}"
            )
        return value

    def _apply(self, deal: Row, changes: Row, now: str) -> None:
        custom = changes.pop("custom_fields", {})
        old_stage, old_status = deal["stage_id"], deal["status"]
        deal.update(changes)
        deal["custom_fields"].update(custom)
        if deal["stage_id"] != old_stage or deal["stage_change_time"] is None:
            deal["stage_change_time"] = now
        if deal["status"] != old_status:
            deal["close_time"] = now if deal["status"] != "open" else None
            deal["won_time"] = now if deal["status"] == "won" else None
            deal["lost_time"] = now if deal["status"] == "lost" else None
            if deal["status"] != "lost" and "lost_reason" not in changes:
                deal["lost_reason"] = None

    def _log_change(
        self, deal_id: int, key: str, old: Any, new: Any, user: int, at: datetime, source: str
    ) -> None:
        entry_id = self._next("flow")
        self.flow.setdefault(deal_id, []).append(
            {
                "object": "dealChange",
                "timestamp": v1_ts(at),
                "data": {
                    "id": entry_id,
                    "item_id": deal_id,
                    "user_id": user,
                    "field_key": key,
                    "old_value": old,
                    "new_value": new,
                    "is_bulk_update_flag": None,
                    "log_time": v1_ts(at),
                    "change_source": source,
                    "change_source_user_agent": "salesbridge-emulator",
                    "additional_data": [],
                },
            }
        )

    def _create_org(self, body: Mapping[str, Any]) -> Row:
        now = ts(self.clock())
        org: Row = {
            "id": self._next("org"),
            "name": str(body["name"]).strip(),
            "owner_id": body.get("owner_id") or 1,
            "add_time": now,
            "update_time": now,
            "is_deleted": False,
            "visible_to": body.get("visible_to") or 3,
            "label_ids": [],
            "website": body.get("website"),
            "linkedin": None,
            "industry": None,
            "annual_revenue": None,
            "employee_count": None,
            "custom_fields": {},
        }
        self.organizations[org["id"]] = org
        return org

    def _create_person(self, body: Mapping[str, Any]) -> Row:
        changes = self._check_person({k: v for k, v in body.items() if k != "id"})
        if "name" not in changes:
            raise ApiError(400, "Validation failed: name: Required")
        now = ts(self.clock())
        first, _, last = changes["name"].partition(" ")
        person: Row = {
            "id": self._next("person"),
            "name": changes["name"],
            "first_name": first,
            "last_name": last,
            "owner_id": 1,
            "org_id": None,
            "add_time": now,
            "update_time": now,
            "emails": [],
            "phones": [],
            "is_deleted": False,
            "visible_to": 3,
            "label_ids": [],
            "custom_fields": {f["field_code"]: None for f in self.person_fields},
            "job_title": "",
        }
        person["custom_fields"].update(changes.pop("custom_fields", {}))
        person.update(changes)
        self.persons[person["id"]] = person
        return person

    def _check_person(self, body: Mapping[str, Any]) -> Row:
        """Validated person changes of ``body`` (v2 shape), or ApiError(400) naming the field."""
        out: Row = {}
        for key, value in body.items():
            if key == "name":
                if not isinstance(value, str) or not value.strip():
                    raise ApiError(400, "Validation failed: name: must not be empty")
                out[key] = value.strip()
            elif key in ("emails", "phones"):
                if not isinstance(value, list) or not all(
                    isinstance(e, dict) and isinstance(e.get("value"), str) for e in value
                ):
                    raise ApiError(400, f"Validation failed: {key}: a list of {{value}} objects")
                primary = [bool(e.get("primary", False)) for e in value]
                if value and not any(primary):
                    primary[0] = True
                out[key] = [
                    {"value": e["value"], "primary": p, "label": e.get("label") or "work"}
                    for e, p in zip(value, primary, strict=True)
                ]
            elif key == "job_title":
                if value is not None and not isinstance(value, str):
                    raise ApiError(400, "Validation failed: job_title: must be a string")
                out[key] = value or ""
            elif key in ("org_id", "owner_id"):
                table: Mapping[int, Row] = self.organizations if key == "org_id" else self.users
                if value is None and key == "org_id":
                    out[key] = None
                elif not isinstance(value, int) or value not in table:
                    raise ApiError(400, f"Validation failed: {key}: {value!r} not found")
                else:
                    out[key] = value
            elif key == "custom_fields":
                if not isinstance(value, dict):
                    raise ApiError(400, "custom_fields must be an object")
                out[key] = {
                    k: self._check_custom(k, v, self.person_fields) for k, v in value.items()
                }
            elif key in ("visible_to", "label_ids", "first_name", "last_name"):
                out[key] = value
            else:
                raise ApiError(400, f"Validation failed: unknown field {key!r}")
        return out

    def _update_person(self, person_id: int, body: Mapping[str, Any]) -> Row:
        person = self.persons.get(person_id)
        if person is None or person["is_deleted"]:
            raise ApiError(404, "Person not found")
        changes = self._check_person(body)
        person["custom_fields"].update(changes.pop("custom_fields", {}))
        person.update(changes)
        if "name" in changes and not {"first_name", "last_name"} & set(changes):
            person["first_name"], _, person["last_name"] = changes["name"].partition(" ")
        person["update_time"] = ts(self.clock())
        return person

    def _create_activity(self, body: Mapping[str, Any], user: int) -> Row:
        now_dt = self.clock()
        now = ts(now_dt)
        if not isinstance(body.get("subject"), str) or not body["subject"].strip():
            raise ApiError(400, "Validation failed: subject: Required")
        deal_id = body.get("deal_id")
        if deal_id is not None and deal_id not in self.deals:
            raise ApiError(400, f"Validation failed: deal_id: {deal_id!r} not found")
        if body.get("due_date") is not None:
            _check_date(body["due_date"], "due_date")
        activity: Row = {
            "id": self._next("activity"),
            "subject": body["subject"],
            "type": body.get("type") or "task",
            "owner_id": body.get("owner_id") or user,
            "creator_user_id": user,
            "is_deleted": False,
            "add_time": now,
            "update_time": now,
            "deal_id": deal_id,
            "due_date": body.get("due_date"),
            "due_time": body.get("due_time") or "",
            "duration": body.get("duration") or "",
            "busy": bool(body.get("busy", False)),
            "done": bool(body.get("done", False)),
            "participants": [],
            "note": body.get("note") or "",
        }
        if activity["done"]:
            activity["marked_as_done_time"] = now
        self.activities[activity["id"]] = activity
        if deal_id is not None:
            self._deal_activities.setdefault(deal_id, []).append(activity["id"])
            self._activity_touched(activity, user, now_dt)
        return activity

    def _update_activity(self, activity_id: int, body: Mapping[str, Any], user: int) -> Row:
        activity = self.activities.get(activity_id)
        if activity is None or activity["is_deleted"]:
            raise ApiError(404, "Activity not found")
        now_dt = self.clock()
        for key in ("subject", "due_date", "done", "owner_id", "note", "type", "due_time"):
            if key in body:
                if key == "due_date" and body[key] is not None:
                    _check_date(body[key], key)
                activity[key] = body[key]
        if body.get("done") and not activity.get("marked_as_done_time"):
            activity["marked_as_done_time"] = ts(now_dt)
        if "done" in body and not body["done"]:
            activity.pop("marked_as_done_time", None)
        activity["update_time"] = ts(now_dt)
        if activity.get("deal_id") in self.deals:
            self._activity_touched(activity, user, now_dt)
        return activity

    def _delete_activity(self, activity_id: int, user: int) -> None:
        activity = self.activities.get(activity_id)
        if activity is None or activity["is_deleted"]:
            raise ApiError(404, "Activity not found")
        now_dt = self.clock()
        activity["is_deleted"] = True
        activity["update_time"] = ts(now_dt)
        if activity.get("deal_id") in self.deals:
            self._activity_touched(activity, user, now_dt)

    def _activity_touched(self, activity: Row, user: int, at: datetime) -> None:
        """An activity change moves its deal's update time (its next/last activity fields
        change in Pipedrive), and appears in the deal's flow."""
        deal = self.deals[activity["deal_id"]]
        deal["update_time"] = ts(at)
        self.flow.setdefault(deal["id"], []).append(
            {
                "object": "activity",
                "timestamp": v1_ts(at),
                "data": {
                    "id": activity["id"],
                    "user_id": user,
                    "done": activity["done"],
                    "type": activity["type"],
                    "subject": activity["subject"],
                    "due_date": activity["due_date"],
                    "deal_id": deal["id"],
                    "add_time": v1_ts(at),
                    "update_time": v1_ts(at),
                },
            }
        )
        self._notify("deal", "change", deal["id"], _deal_view(deal), {}, user, "app")

    def _user_view(self, u: Row, me: int) -> Row:
        return {
            "id": u["id"],
            "name": u["name"],
            "default_currency": u["default_currency"],
            "locale": u["locale"],
            "lang": 1,
            "email": u["email"],
            "phone": None,
            "activated": True,
            "last_login": "2024-01-01 00:00:00",
            "created": "2018-11-13 09:16:26",
            "modified": None,
            "has_created_company": u["id"] == 1,
            "access": [
                {
                    "app": "sales",
                    "admin": bool(u["is_admin"]),
                    "permission_set_id": "62cc4d7f-4038-4352-abf3-a8c1c822b631",
                }
            ],
            "active_flag": True,
            "timezone_name": u["timezone_name"],
            "timezone_offset": "+00:00",
            "role_id": 1,
            "icon_url": None,
            "is_you": u["id"] == me,
            "is_deleted": False,
        }

    # ------------------------------------------------------------------ webhooks

    def _notify(
        self,
        entity: str,
        action: str,
        entity_id: int,
        data: Row,
        previous: Row | None,
        user: int,
        source: str,
    ) -> None:
        for hook in self.webhooks.values():
            if hook["event_object"] not in (entity, "*"):
                continue
            if hook["event_action"] not in (action, "*"):
                continue
            payload = {
                "data": copy.deepcopy(data),
                "previous": copy.deepcopy(previous),
                "meta": {
                    "action": action,
                    "entity": entity,
                    "entity_id": str(entity_id),
                    "id": f"evt-{self._next('event')}",
                    "company_id": "7001",
                    "user_id": str(user),
                    "webhook_id": str(hook["id"]),
                    "timestamp": _iso_ms(self.clock()),
                    "version": "2.0",
                    "is_bulk_edit": False,
                    "change_source": source,
                },
            }
            self._outbox.put((copy.deepcopy(hook), payload))

    def _send_webhooks(self) -> None:
        with requests.Session() as session:
            while True:
                item = self._outbox.get()
                try:
                    if item is None:
                        return
                    hook, payload = item
                    self._deliver(session, hook, payload)
                finally:
                    self._outbox.task_done()

    def _deliver(self, session: requests.Session, hook: Row, payload: Row) -> None:
        auth = None
        if hook.get("http_auth_user"):
            auth = (hook["http_auth_user"], hook.get("http_auth_password") or "")
        status: int | None
        try:
            status = session.post(
                hook["subscription_url"], json=payload, auth=auth, timeout=5
            ).status_code
        except requests.RequestException:
            status = None
        with self.lock:
            self.deliveries.append(
                {"url": hook["subscription_url"], "status": status, "payload": payload}
            )
            live = self.webhooks.get(hook["id"])
            if live is not None:
                live["last_delivery_time"] = _iso_ms(self.clock())
                live["last_http_status"] = status

    # ------------------------------------------------------------------ seeding

    def _load_basics(self) -> None:
        for u in [*seeds.SPEC_USERS, *seeds.GENERATED_USERS]:
            self.users[u["id"]] = dict(u)
        self._ids["user"] = max(self.users)
        now = ts(self.clock())
        for order, (pname, stages) in enumerate(seeds.PIPELINES, start=1):
            pid = self._next("pipeline")
            self.pipelines[pid] = {
                "id": pid,
                "name": pname,
                "order_nr": order,
                "is_deleted": False,
                "is_deal_probability_enabled": True,
                "add_time": now,
                "update_time": now,
            }
            for s_order, (sname, probability) in enumerate(stages, start=1):
                sid = self._next("stage")
                self.stages[sid] = {
                    "id": sid,
                    "order_nr": s_order,
                    "name": sname,
                    "is_deleted": False,
                    "deal_probability": probability,
                    "pipeline_id": pid,
                    "is_deal_rot_enabled": False,
                    "days_to_rotten": None,
                    "add_time": now,
                    "update_time": now,
                }
        self.deal_fields = [_standard_field(*f) for f in _STANDARD_FIELDS]
        for name, kind, labels in seeds.CUSTOM_DEAL_FIELDS:
            self.add_deal_field(name, kind, labels)
        self.person_fields = [_person_field(*f) for f in _STANDARD_PERSON_FIELDS]
        for name, kind, labels in seeds.CUSTOM_PERSON_FIELDS:
            self.add_person_field(name, kind, labels)

    def add_deal_field(self, name: str, field_type: str, labels: Iterable[str] = ()) -> str:
        """Add a custom deal field (as an admin would); returns its 40-hex field code."""
        field = _standard_field(seeds.field_hash(name), name, field_type)
        return self._add_field(field, labels, self.deal_fields, self.deals.values())

    def add_person_field(self, name: str, field_type: str, labels: Iterable[str] = ()) -> str:
        """Add a custom person field (as an admin would); returns its 40-hex field code."""
        field = _person_field(seeds.field_hash(f"person:{name}"), name, field_type)
        return self._add_field(field, labels, self.person_fields, self.persons.values())

    def _add_field(
        self, field: Row, labels: Iterable[str], fields: list[Row], holders: Iterable[Row]
    ) -> str:
        """Add the custom ``field`` (with options from ``labels``) to ``fields``, every one of
        ``holders`` (deals or persons) holding no value yet."""
        if field["field_type"] not in _FIELD_TYPES:
            raise ValueError(f"unsupported field type {field['field_type']!r}")
        with self.lock:
            options = [
                {"id": self._next("option"), "label": label, "color": None} for label in labels
            ]
            field.update(is_custom_field=True, options=options or None)
            fields.append(field)
            for holder in holders:
                holder["custom_fields"].setdefault(field["field_code"], None)
            return str(field["field_code"])

    def remove_person_field(self, name: str) -> None:
        """Delete a custom person field (as an admin would), values and all."""
        with self.lock:
            code = self.person_field_key(name)
            self.person_fields = [f for f in self.person_fields if f["field_code"] != code]
            for person in self.persons.values():
                person["custom_fields"].pop(code, None)

    def _load_seed(self, generated: int) -> None:
        with self.lock:
            org = self._create_org(seeds.SPEC_ORGANIZATION)
            person = self._create_person({**seeds.SPEC_PERSON, "org_id": org["id"]})
            priority = self.field_key("Priority")
            self._create_deal(
                {
                    **seeds.SPEC_DEAL,
                    "org_id": org["id"],
                    "person_id": person["id"],
                    "stage_id": self.stage_id("Sales pipeline", "Qualified"),
                    "custom_fields": {priority: self.option_id("Priority", "High")},
                },
                1,
                source="app",
            )
            orgs: dict[str, int] = {}
            for item in seeds.generated_deals(generated):
                body = dict(item["deal"])
                body["stage_id"] = self.stage_id(item["pipeline"], item["stage"])
                if item["organization"]:
                    name = item["organization"]
                    if name not in orgs:
                        orgs[name] = self._create_org({"name": name})["id"]
                    body["org_id"] = orgs[name]
                people = [self._seed_person(p, body.get("org_id")) for p in item["people"]]
                if people:
                    body["person_id"] = people[0]
                custom = {}
                for fname, value in item["custom"].items():
                    if value is None:
                        continue
                    key = self.field_key(fname)
                    options = self._field(key).get("options")
                    custom[key] = self.option_id(fname, value) if options else value
                body["custom_fields"] = custom
                if body.get("status") != "lost":
                    body.pop("lost_reason", None)
                deal = self._create_deal(body, body["owner_id"], source="app")
                for person_id in people[1:]:
                    self._add_participant(deal["id"], person_id, body["owner_id"])
                for a in item["activities"]:
                    self._create_activity({**a, "deal_id": deal["id"]}, body["owner_id"])

    def _seed_person(self, p: Mapping[str, Any], org_id: int | None) -> int:
        """A generated stakeholder as a person, role and attitude in the person fields."""
        custom = {}
        for fname, key in (("Deal role", "role"), ("Attitude", "attitude")):
            if p.get(key):
                custom[self.person_field_key(fname)] = self.person_option_id(fname, p[key])
        emails = [{"value": p["email"], "primary": True}] if p.get("email") else []
        body = {"name": p["name"], "emails": emails, "job_title": p.get("job_title"),
                "org_id": org_id, "custom_fields": custom}  # fmt: skip
        return int(self._create_person(body)["id"])


# --------------------------------------------------------------------------- helpers

_FLOW_KEYS = (
    "title",
    "owner_id",
    "person_id",
    "org_id",
    "pipeline_id",
    "stage_id",
    "value",
    "currency",
    "status",
    "probability",
    "lost_reason",
    "expected_close_date",
    "visible_to",
    "label_ids",
    "is_archived",
)

# (field_code, field_name, field_type) of Pipedrive's standard deal fields
_STANDARD_FIELDS = [
    ("title", "Title", "varchar"),
    ("value", "Value", "monetary"),
    ("owner_id", "Owner", "user"),
    ("org_id", "Organization", "org"),
    ("person_id", "Contact person", "people"),
    ("pipeline_id", "Pipeline", "double"),
    ("stage_id", "Stage", "stage"),
    ("status", "Status", "status"),
    ("probability", "Probability", "double"),
    ("lost_reason", "Lost reason", "varchar"),
    ("expected_close_date", "Expected close date", "date"),
    ("add_time", "Deal created", "date"),
    ("update_time", "Update time", "date"),
    ("stage_change_time", "Last stage change", "date"),
    ("close_time", "Deal closed on", "date"),
]


# (field_code, field_name, field_type) of Pipedrive's standard person fields (a selection)
_STANDARD_PERSON_FIELDS = [
    ("name", "Name", "varchar"),
    ("org_id", "Organization", "org"),
    ("emails", "Email", "varchar"),
    ("phones", "Phone", "phone"),
    ("job_title", "Job title", "varchar"),
    ("owner_id", "Owner", "user"),
]


def _person_field(code: str, name: str, field_type: str) -> Row:
    field = _standard_field(code, name, field_type)
    field.update(description=f"The {name.lower()} of the person", subfields=None)
    return field


def _v1_of(v2_time: str) -> str:
    """A stored (v2, RFC 3339) time in v1's ``YYYY-MM-DD HH:MM:SS`` form."""
    return v2_time.replace("T", " ").removesuffix("Z")


def _standard_field(code: str, name: str, field_type: str) -> Row:
    return {
        "field_name": name,
        "field_code": code,
        "description": f"The {name.lower()} of the deal",
        "field_type": field_type,
        "options": None,
        "subfields": (
            [
                {"field_code": "value", "field_name": "Amount of Value", "field_type": "double"},
                {
                    "field_code": "currency",
                    "field_name": "Currency of Value",
                    "field_type": "varchar",
                },
            ]
            if code == "value"
            else None
        ),
        "is_custom_field": False,
        "is_optional_response_field": False,
    }


_OMITTED_WHEN_NULL = frozenset(("archive_time", "won_time", "lost_time", "expected_close_date"))


def _deal_view(deal: Row) -> Row:
    """A deal as the API serves it (a new top-level dict; nested values are shared, and
    responses are rendered under the lock)."""
    # The spec declares these non-nullable: Pipedrive omits them when they have no value.
    return {k: v for k, v in deal.items() if v is not None or k not in _OMITTED_WHEN_NULL}


def _value_of(deal: Row, key: str) -> Any:
    """A standard field's value, else a custom field's."""
    return deal.get(key) if key in _FLOW_KEYS else deal["custom_fields"].get(key)


def _strip_order(row: Row) -> Row:
    return {k: v for k, v in row.items() if k != "_order"}


def _same(row: Row) -> Row:
    return row


def _render(body: Any) -> bytes:
    """JSON as Starlette's JSONResponse writes it."""
    return json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def _rest(page: Row) -> Row:
    return {"additional_data": page["additional_data"]}


def _error(status: int, message: str) -> Response:
    body, ctype = pipedrive_error_body(status, message)
    return Response(body, status_code=status, media_type=ctype)


def _int(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ApiError(400, f"Invalid {name}: {value!r} is not an integer") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_date(value: str) -> bool:
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return len(value) == 10


def _check_date(value: Any, key: str) -> None:
    if not isinstance(value, str) or not _is_date(value):
        raise ApiError(400, f"Validation failed: {key}: {value!r} is not a YYYY-MM-DD date")


def _parse_time(value: str, name: str) -> str:
    """An RFC 3339 query time as the server's own text form, for comparison."""
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(
            400, f"Invalid {name}: expected RFC 3339, e.g. 2025-01-01T10:20:00Z"
        ) from None
    if at.tzinfo is None:
        raise ApiError(400, f"Invalid {name}: the time needs a timezone (Z)")
    return ts(at)


def _time_window(rows: list[Row], q: Mapping[str, str]) -> list[Row]:
    """``updated_since`` (inclusive) and ``updated_until`` (exclusive), as Pipedrive has them."""
    if "updated_since" in q:
        since = _parse_time(q["updated_since"], "updated_since")
        rows = [r for r in rows if r["update_time"] >= since]
    if "updated_until" in q:
        until = _parse_time(q["updated_until"], "updated_until")
        rows = [r for r in rows if r["update_time"] < until]
    return rows


def _live(table: Mapping[int, Row], q: Mapping[str, str]) -> list[Row]:
    """The rows not deleted; only those of ``ids`` (looked up, not scanned) if it is given."""
    if "ids" not in q:
        return [r for r in table.values() if not r["is_deleted"]]
    wanted = {_int(x, "ids") for x in q["ids"].split(",") if x}
    if len(wanted) > 100:
        raise ApiError(400, "ids: at most 100 ids")
    found = (table.get(i) for i in wanted)
    return [r for r in found if r is not None and not r["is_deleted"]]


def _matches(text: str, term: str, exact: bool) -> bool:
    return text.casefold() == term.casefold() if exact else term.casefold() in text.casefold()


def _field_type(emu: PipedriveEmulator, key: str) -> str:
    try:
        return str(emu._field(key)["field_type"])
    except KeyError:
        return ""


def _jsonable(key: tuple[Any, ...]) -> list[Any]:
    return [k if isinstance(k, _PLAIN_KEYS) else str(k) for k in key]


_PLAIN_KEYS = (int, str)  # a tuple: isinstance with ``int | str`` builds the union every call


def _encode_cursor(key: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> list[Any]:
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError):
        raise ApiError(400, "Invalid cursor") from None
    if not isinstance(value, list):
        raise ApiError(400, "Invalid cursor")
    return value


def _iso_ms(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
