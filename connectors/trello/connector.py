"""The Trello connector: cards of the configured boards as records, lists as stages.

**Transport.** Plain requests through :class:`~bridge.http.HttpClient` (timeouts, retries, the
token bucket, error mapping, redaction); the ``key`` and ``token`` go as query parameters, as
Trello wants, registered as secrets. The default rate limit, a bucket of 9 refilled at 9 per
second, allows at most 99 requests in any 10 s: under Trello's 100 per 10 s per token.

**Records.** A card's ``fields`` are keyed by id; ``discover()`` gives each its display name:

=================  ============  ====================================================
id                 display name  value
=================  ============  ====================================================
``name``           Name          text
``desc``           Description   text, without the stamp marker (below)
``list``           List          the list's name: the stage
``due``, ``start`` Due, Start    Trello's date-time text, or None
``dueComplete``    Due complete  bool
``labels``         Labels        label names (a nameless label by its colour)
``owner``          Owner         the card's first member, as a user (Trello never gives
                                 e-mails: the mapping's ``[users.table]`` maps usernames)
``members``        Members       usernames
``tasks``          Tasks         check items of the checklists named after a stage key
                                 (or "Tasks": no stage): ``{title, stage, done, due}``
``deliverables``   Deliverables  check items of checklists named "Deliverables[: stage]":
                                 ``{kind, title, stage, status}`` (see *Deliverables*)
``comments``       Comments      ``{what, at, by}`` (canonical actions), by time; a
                                 comment the bridge wrote ends in a marker line
                                 ``[salesbridge: <at> by <by>]`` giving both
``created``        Created       the card's creation time (from its id)
(display name)     (same)        each custom field: text, number, date (date-time
                                 text), checkbox (bool) or list (the option's text)
=================  ============  ====================================================

A closed (archived) card, a deleted one or one moved to another board reads as
``deleted=True``. ``version`` is a hash of what the record shows, so activity that changes
nothing we read (a cover, a vote) is not a new version. ``history`` holds the card's actions that
changed a field (list moves with their own time and member, renames, due dates, custom fields,
archiving).

**Pulling.** The cursor holds, per board, the id of the last board action read. An incremental
pull asks ``GET /boards/{id}/actions?since=<id>`` (newest first, 1000 a page, paged with
``before=``); with no news that is the whole pull: **one request per board**. Otherwise the
changed cards, with their nested custom field items, checklists, members and actions, ten per
``GET /batch`` request (Trello's batch of GET routes), the board's custom field definitions
riding in the first: ``1 + ceil((C + 1) / 10)`` requests for C changed cards (per page of
``page_size`` cards). A list renamed or a
custom field redefined changes cards without card actions, so such an action turns the pull
into a census of the board. A census (``full=True``, or no cursor yet) reads the board's
actions (all pages, for history, comments and the cursor), lists, custom fields and open cards
with nested data: ``3 + ceil((A + 1) / 1000)`` requests for A actions.

**Writing.** Trello has no conditional writes, so ``update(expected_version=...)`` reads the
card first (one request) and refuses with StaleVersion if it changed. Card attributes go in one
``PUT /cards/{id}``, custom fields in one ``PUT /cards/{id}/customFields``, tasks as checklist
edits, deliverables as check item edits, actions as new comments; the card is then read
back, except when the card's attributes were all that changed: the PUT answers with the card
and the rest was read just before, so such an update costs two requests (version read, PUT).
:meth:`~TrelloConnector.update_many` (the engine's batch push) reads the versions of ten cards
per ``GET /batch`` and then writes each card as ``update`` does: K cards of which only the
attributes changed cost ``K + ceil(K / 10)`` requests.
**Stamps** are a marker line ``[salesbridge:<id>]`` at the end
of the description: it needs no set-up on the board (a custom field needs one defined on every
board), people see it, and ``find_by_stamp`` finds it with one ``GET /boards/{id}/cards`` per
board (Trello's search index lags behind writes, which is exactly when an interrupted create is
looked for). A person deleting the marker unlinks nothing (the link is kept by card id), but a
copied card carries it too; the original (older) card wins.

**Deliverables.** A check item holds a name and complete/incomplete; a deliverable has four
statuses. The bridge writes a deliverable as an item named ``<title> [<status>]`` (its kind
when it has no title), complete iff approved, in the checklist "Deliverables: <stage>" (plain
"Deliverables" without a stage). What the name cannot say (a kind that is not the title's slug,
no title, a link, submitted/approved times) goes in a trailing ``[salesbridge: key=value; ...]``
so the item reads back as exactly the deliverable written. Reading: a ticked item is approved
whatever its name says (a person approved it); an unticked one has the status in its name,
except that an unticked "[approved]" (a person took the approval back) is submitted; an item
without a status reads missing. Writes change only items that do not already read as wanted:
create the missing, rename or (un)tick the changed, delete items the hub no longer has; a
checklist is never deleted.

**Comments** are only ever added, never edited or deleted: an action the card does not show
yet (same text and time) becomes a comment ``<what>`` + ``\n[salesbridge: <at> by <by>]``,
which reads back as that action, not as the bridge's account commenting now. Comments without
the marker read with Trello's own time and author.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from functools import partial
from typing import Any, ClassVar, Literal
from urllib.parse import urlencode

from pydantic import Field, field_validator

from bridge.http import Auth, HttpClient, RequestCounter
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
from connectors.trello.emulator import parse_trello_time, trello_time, webhook_signature

__all__ = ["DEFAULT_RATE_LIMIT", "TrelloConfig", "TrelloConnector"]

Json = dict[str, Any]
DEFAULT_RATE_LIMIT = RateLimit(requests=9, per=1.0)
ACTIONS_PAGE = 1000
_ID = re.compile(r"^[0-9a-fA-F]{24}$")
_MARKER = re.compile(r"\s*\[salesbridge:([^\]\s]+)\]")
_COMMENT_MARK = re.compile(r"\n\[salesbridge: (\S+) by (.*)\]\Z")
_ITEM_MARK = re.compile(r"\s*\[salesbridge: ([^\]]*)\]\Z")
_ITEM_STATUS = re.compile(r"\s*[\[(](missing|draft|submitted|approved)[\])]\Z", re.IGNORECASE)
_EXTRAS = {"link": "link", "submitted": "submitted_at", "approved": "approved_at"}
"""Marker keys of a deliverable item -> the deliverable's keys."""
_CARD = {
    "fields": "all",
    "customFieldItems": "true",
    "checklists": "all",
    "members": "true",
    "member_fields": "fullName,username",
}
_CARD_READ = {**_CARD, "list": "true", "actions": "all", "actions_limit": str(ACTIONS_PAGE)}
"""A card with everything its record is made of (GET /cards/{id})."""
BATCH_URLS = 10
"""Routes per ``GET /batch`` (Trello's maximum)."""
_BUILTIN = (
    RemoteField("name", "Name"),
    RemoteField("desc", "Description"),
    RemoteField("list", "List", "list"),
    RemoteField("due", "Due", "datetime"),
    RemoteField("start", "Start", "datetime"),
    RemoteField("dueComplete", "Due complete", "checkbox"),
    RemoteField("labels", "Labels", "labels"),
    RemoteField("owner", "Owner", "member"),
    RemoteField("members", "Members", "multi"),
    RemoteField("tasks", "Tasks", "json"),
    RemoteField("deliverables", "Deliverables", "json"),
    RemoteField("comments", "Comments", "json"),
    RemoteField("created", "Created", "datetime", writable=False),
)
_FIELD_TYPES = {"text": "text", "number": "number", "date": "datetime", "checkbox": "checkbox"}
_VALUE_KEY = {"checkbox": "checked"}
"""Where an item's value sits, when not under the field's type: ``{"checked": "true"}``."""
_SCHEMA_ACTIONS = frozenset({"updateCustomField", "deleteCustomField", "createCustomField"})
_CARD_ATTRS = {"name", "desc", "list", "due", "start", "dueComplete", "labels", "owner", "members"}
_LISTS = ("tasks", "deliverables", "comments")
"""Fields written as checklist and comment edits once the card exists."""
_NESTED = frozenset({"actions", "checklists", "customFieldItems", "list", "members"})
"""What GET /cards/{id} nests on request and PUT /cards/{id} does not answer with."""


class TrelloConfig(ConnectorConfig):
    """Boards on one Trello account: ``key`` and ``token`` are ``env:`` references."""

    kind: Literal["trello"] = "trello"
    base_url: str = Field("https://api.trello.com/1", description="API root (an emulator's /1)")
    key: Secret = Field(description='the API key: "env:TRELLO_KEY"')
    token: Secret = Field(description='a token of the account that syncs: "env:TRELLO_TOKEN"')
    boards: list[str] = Field(min_length=1, description="ids of the boards synced")
    create_list: str | None = Field(
        None, description="list new cards go to when a record names none (default: the first)"
    )
    deliverables_checklist: str = Field(
        "Deliverables", description='checklists named so (or "<this>: <stage>") hold deliverables'
    )
    page_size: int = Field(50, gt=0, le=1000, description="cards per pulled page")
    webhook_secret: Secret | None = Field(
        None, description="the application's secret, to verify X-Trello-Webhook signatures"
    )

    @field_validator("boards")
    @classmethod
    def _board_ids(cls, boards: list[str]) -> list[str]:
        bad = [b for b in boards if not _ID.match(b)]
        if bad:
            raise ValueError(f"board ids are 24 hex digits (see the board's JSON), not {bad}")
        return boards


@dataclass
class _Board:
    """A board's definitions, read once per pull or write and dropped after."""

    lists: dict[str, str] = field(default_factory=dict)
    fields: dict[str, Json] = field(default_factory=dict)
    labels: dict[str, Json] = field(default_factory=dict)
    members: dict[str, Json] = field(default_factory=dict)


class TrelloConnector(Connector[TrelloConfig]):
    kind: ClassVar[str] = "trello"
    config_model: ClassVar[type[ConnectorConfig]] = TrelloConfig

    def __init__(
        self, name: str, config: TrelloConfig, *, counter: RequestCounter | None = None
    ) -> None:
        super().__init__(name, config)
        self.counter = counter or RequestCounter()
        self._client: HttpClient | None = None
        self._meta: dict[tuple[str, str], Any] = {}

    @property
    def http(self) -> HttpClient:
        """The HTTP client, built on first use (that is when the secrets are read)."""
        if self._client is None:
            auth = Auth.query(key=self.config.key.reveal(), token=self.config.token.reveal())
            self._client = HttpClient.from_config(
                self.name,
                self.config.base_url,
                self.config,
                auth=auth,
                rate_limit=self.config.rate_limit or DEFAULT_RATE_LIMIT,
                counter=self.counter,
            )
        return self._client

    # ------------------------------------------------------------------ reading

    def check(self) -> str:
        me = self.http.get_json("members/me", params={"fields": "username,fullName"})
        names = []
        for board in self.config.boards:
            found = self.http.get_json(f"boards/{board}", params={"fields": "name"}, expect=(404,))
            if found is None:
                raise FatalError(
                    f"board {board} does not exist or @{me['username']} is not a member of it",
                    connector=self.name,
                )
            names.append(repr(found["name"]))
        return f"trello {self.name!r} as @{me['username']}: boards {', '.join(names)}"

    def discover(self) -> Schema:
        self._meta.clear()
        lists: dict[str, None] = {}
        labels: dict[str, None] = {}
        users: dict[str, RemoteUser] = {}
        custom: dict[str, RemoteField] = {}
        for board in self.config.boards:
            lists.update(dict.fromkeys(self._lists(board, "open").values()))
            labels.update(dict.fromkeys(_label_name(x) for x in self._labels(board).values()))
            for m in self._members(board).values():
                users[m["id"]] = RemoteUser(m["id"], m.get("fullName"), None, m.get("username"))
            for f in self._fields(board).values():
                kind = _FIELD_TYPES.get(f["type"], "option")
                options = tuple(o["value"]["text"] for o in f.get("options") or ())
                custom[f["name"]] = RemoteField(f["name"], f["name"], kind, options, custom=True)
        stages = tuple(lists)
        builtin = [
            RemoteField(f.id, f.name, f.type, stages, writable=f.writable)
            if f.id == "list"
            else RemoteField(f.id, f.name, f.type, tuple(labels))
            if f.id == "labels"
            else f
            for f in _BUILTIN
        ]
        taken = {k.casefold() for f in _BUILTIN for k in (f.id, f.name)}
        extra = [f for f in custom.values() if f.name.casefold() not in taken]
        return Schema(tuple(builtin + extra), tuple(users.values()), stages)

    def pull(self, cursor: Cursor, *, signpost: datetime, full: bool = False) -> Iterator[Page]:
        self._meta.clear()
        current = cursor
        for board in self.config.boards:
            position = cursor.get(board)
            pages = (
                self._census(board, current, signpost)
                if full or position is None
                else self._changes(board, position, current, signpost)
            )
            for page in pages:
                current = page.cursor or current
                yield page

    def get(self, ref: str) -> RemoteRecord | None:
        record = self._read(ref)
        return None if record is None or record.deleted else record

    def find_by_stamp(self, stamp: str) -> RemoteRecord | None:
        for board in self.config.boards:
            cards = self.http.get_json(f"boards/{board}/cards", params={"fields": "desc,closed"})
            found = sorted(c["id"] for c in cards if _stamp_of(c.get("desc") or "") == stamp)
            if found:
                return self.get(found[0])
        return None

    def history(self, ref: str, since: datetime | None = None) -> list[HistoryEntry]:
        record = self._read(ref)
        entries = list(record.history) if record else []
        return [h for h in entries if since is None or h.at >= since]

    # ------------------------------------------------------------------ writing

    def create(self, fields: Mapping[str, Any], *, stamp: str) -> RemoteRecord:
        board = self.config.boards[0]
        fields = dict(fields)
        list_name = fields.pop("list", None) or self.config.create_list
        lists = self._lists(board, "open")
        list_id = self._list_id(board, list_name, stamp) if list_name else next(iter(lists), None)
        if list_id is None:
            raise FatalError(f"board {board} has no open list to create cards in")
        desc = _with_stamp(fields.pop("desc", "") or "", stamp)
        params = {"idList": list_id, "desc": desc, "pos": "bottom"}
        params.update(self._card_params(board, stamp, fields, current_members=[]))
        lists = {k: fields.pop(k) for k in _LISTS if k in fields}
        custom = self._custom_items(board, stamp, fields)
        card = self.http.decode_json(self.http.request("POST", "cards", params=params))
        if custom:
            self._put_custom(card["id"], custom)
        self._write_lists({**card, "checklists": []}, {k: v for k, v in lists.items() if v}, {})
        return self._written(card["id"])

    def update(
        self, ref: str, changes: Mapping[str, Any], *, expected_version: str | None
    ) -> RemoteRecord:
        card = self._raw(ref) if _ID.match(ref) else None
        return self._update(ref, card, changes, expected_version)

    def update_many(
        self,
        changes: Mapping[str, Mapping[str, Any]],
        expected_versions: Mapping[str, str | None] | None = None,
    ) -> dict[str, RemoteRecord | ConnectorError]:
        """Update many cards: their version reads go ten to a ``GET /batch``, then each card
        is written as :meth:`update` writes it (Trello has no batch write).

        Cards are read and written ten at a time, so a card's write follows its read by at
        most ten writes. Returns, per ref, the record as written or that card's error
        (StaleVersion: changed since ``expected_versions[ref]``, or gone; SkippableRecord or
        FatalError: refused). Auth, rate-limit and network failures are raised.
        """
        expected = expected_versions or {}
        out: dict[str, RemoteRecord | ConnectorError] = {}
        refs = list(changes)
        for i in range(0, len(refs), BATCH_URLS):
            chunk = refs[i : i + BATCH_URLS]
            cards = self._raw_many([r for r in chunk if _ID.match(r)])
            for ref in chunk:
                card, want = cards.get(ref), expected.get(ref)
                out[ref] = record_or_error(partial(self._update, ref, card, changes[ref], want))
        return out

    def _update(
        self,
        ref: str,
        card: Json | None,
        changes: Mapping[str, Any],
        expected_version: str | None,
    ) -> RemoteRecord:
        """Write ``changes`` to the card as ``card`` (None: gone) was just read."""
        current = None if card is None else self._record(card, card.get("actions", [])[::-1])
        if current is None or current.deleted:
            raise StaleVersion(ref, expected_version, None, connector=self.name)
        if expected_version is not None and current.version != expected_version:
            raise StaleVersion(ref, expected_version, current.version, connector=self.name)
        assert card is not None
        board, changes = card["idBoard"], dict(changes)
        params: Json = {}
        if "desc" in changes:
            params["desc"] = _with_stamp(changes.pop("desc") or "", current.stamp)
        if "list" in changes:
            params["idList"] = self._list_id(board, changes.pop("list"), ref)
        params.update(self._card_params(board, ref, changes, card.get("idMembers") or []))
        lists = {k: changes.pop(k) or [] for k in _LISTS if k in changes}
        custom = self._custom_items(board, ref, changes)
        answer: Any = None
        if params:
            answer = self.http.decode_json(self.http.request("PUT", f"cards/{ref}", params=params))
        if custom:
            self._put_custom(ref, custom)
        self._write_lists(card, lists, current.fields)
        if not custom and not lists:
            if not params:
                return current  # nothing to write
            if isinstance(answer, dict) and answer.get("id") == ref:
                return self._after_put(card, answer)
        return self._written(ref)

    def archive(self, ref: str) -> None:
        """Close (archive) the card, as people do in Trello; a gone card is left alone."""
        if _ID.match(ref):
            self.http.request("PUT", f"cards/{ref}", params={"closed": "true"}, expect=(404,))

    # ------------------------------------------------------------------ webhooks

    def register_webhooks(self, callback_url: str, description: str = "salesbridge") -> list[str]:
        """Watch every configured board (Trello checks the URL with a HEAD first); idempotent.

        Returns the webhook ids. Deliveries name the card in ``action.data.card.id``: sync that
        ref. Trello retries failed deliveries only a few times, so polling stays on.
        """
        token = self.config.token.reveal()
        existing = {
            (h["idModel"], h["callbackURL"]): h["id"]
            for h in self.http.get_json(f"tokens/{token}/webhooks")
        }
        ids = []
        for board in self.config.boards:
            if (board, callback_url) not in existing:
                params = {"callbackURL": callback_url, "idModel": board, "description": description}
                hook = self.http.decode_json(self.http.request("POST", "webhooks/", params=params))
                existing[(board, callback_url)] = hook["id"]
            ids.append(existing[(board, callback_url)])
        return ids

    def list_webhooks(self) -> list[Json]:
        """The webhooks of the syncing token (every model, every callback URL)."""
        token = self.config.token.reveal()
        hooks: list[Json] = self.http.get_json(f"tokens/{token}/webhooks") or []
        return hooks

    def remove_webhook(self, webhook_id: str) -> bool:
        """Delete a webhook; False if Trello did not know it."""
        response = self.http.request("DELETE", f"webhooks/{webhook_id}", expect=(400, 404))
        return response.status_code < 400

    def verify_webhook(self, headers: Mapping[str, str], body: bytes, url: str) -> list[str]:
        """The card a delivery concerns, once ``X-Trello-Webhook`` proves it came from Trello
        (base64 HMAC-SHA1 of body + callback URL, keyed with the application secret)."""
        signature = headers.get("x-trello-webhook")
        if self.config.webhook_secret is None:
            raise WebhookRejected(f"{self.name}: set webhook_secret to receive Trello webhooks")
        expected = webhook_signature(body, url, self.config.webhook_secret.reveal())
        if not signature or not hmac.compare_digest(expected, signature):
            raise WebhookRejected(f"{self.name}: the X-Trello-Webhook signature does not match")
        try:
            card = json.loads(body)["action"]["data"].get("card") or {}
        except (ValueError, KeyError, TypeError, AttributeError):
            raise WebhookRejected(f"{self.name}: the delivery is not a Trello action") from None
        return [card["id"]] if isinstance(card.get("id"), str) else []

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # ------------------------------------------------------------------ pulls

    def _census(self, board: str, current: Cursor, signpost: datetime) -> Iterator[Page]:
        actions = self._actions(board, None)
        position = _position(actions, signpost) or trello_time(signpost)
        by_card = _by_card(actions)
        lists = self._lists(board, "all")
        self._fields(board)
        params = {**_CARD, "filter": "open"}
        cards = self.http.get_json(f"boards/{board}/cards", params=params)
        cards.sort(key=lambda c: (c.get("dateLastActivity") or "", c["id"]))
        size = self.config.page_size
        chunks = [cards[i : i + size] for i in range(0, len(cards), size)] or [[]]
        for n, chunk in enumerate(chunks, 1):
            records, skipped = [], []
            for card in chunk:
                card.setdefault("list", {"name": lists.get(card["idList"])})
                try:
                    records.append(self._record(card, by_card.get(card["id"], [])))
                except SkippableRecord as exc:
                    skipped.append(exc)
            last = n == len(chunks)
            yield Page(records, current.advanced(board, position) if last else None, skipped)

    def _changes(
        self, board: str, since: str, current: Cursor, signpost: datetime
    ) -> Iterator[Page]:
        actions = self._actions(board, since)
        if not actions:
            return
        if any(_schema_change(a) for a in actions):
            yield from self._census(board, current, signpost)
            return
        last_action = {card: acts[-1] for card, acts in _by_card(actions).items()}
        order = sorted(last_action, key=lambda c: (last_action[c]["date"], last_action[c]["id"]))
        size = self.config.page_size
        for i in range(0, len(order), size):
            chunk = order[i : i + size]
            records, skipped = [], []
            cards = self._raw_many([r for r in chunk if _ID.match(r)], board=board)
            for ref in chunk:
                card = cards.get(ref)
                try:
                    records.append(
                        _gone(ref)
                        if card is None
                        else self._record(card, card.get("actions", [])[::-1])
                    )
                except SkippableRecord as exc:
                    skipped.append(exc)
            done = actions if i + size >= len(order) else _upto(actions, last_action[chunk[-1]])
            position = _position(done, signpost)
            yield Page(records, current.advanced(board, position) if position else None, skipped)

    def _actions(self, board: str, since: str | None) -> list[Json]:
        """The board's actions after ``since`` (all without), oldest first."""
        params: Json = {"limit": ACTIONS_PAGE, "memberCreator_fields": "username,fullName"}
        if since:
            params["since"] = since
        found: list[Json] = []
        while True:
            page = self.http.get_json(f"boards/{board}/actions", params=params)
            found.extend(page)
            if len(page) < ACTIONS_PAGE:
                return found[::-1]
            params["before"] = page[-1]["id"]

    # ------------------------------------------------------------------ records

    def _raw(self, ref: str) -> Json | None:
        card = self.http.get_json(f"cards/{ref}", params=_CARD_READ, expect=(400, 404))
        return card if isinstance(card, dict) else None

    def _raw_many(self, refs: list[str], *, board: str | None = None) -> dict[str, Json | None]:
        """Cards as :meth:`_raw` reads them (None: gone), ten per ``GET /batch``. With
        ``board`` and its custom fields not yet read, their definitions come in the first
        batch (a record needs them): no request of their own."""
        urls = [_card_route(ref) for ref in refs]
        key = None if board is None or (board, "fields") in self._meta else (board, "fields")
        if key is not None and refs:
            urls.insert(0, f"/boards/{board}/customFields")
        answers = self._batch(urls)
        if key is not None and refs:
            status, definitions = answers.pop(0)
            if status != 200 or not isinstance(definitions, list):
                raise FatalError(
                    f"GET /boards/{board}/customFields answered {status} in a batch",
                    connector=self.name,
                    status=status,
                )
            self._meta[key] = definitions
        return {
            ref: body if status == 200 and isinstance(body, dict) else None
            for ref, (status, body) in zip(refs, answers, strict=True)
        }

    def _batch(self, routes: list[str]) -> list[tuple[int, Any]]:
        """GETs through ``GET /batch``, ten per request: (status, body) per route, in order.

        400 and 404 are answers (an unknown or malformed id); any other failure of a route
        fails the call as it would have alone (auth, rate limit, server error).
        """
        out: list[tuple[int, Any]] = []
        for i in range(0, len(routes), BATCH_URLS):
            chunk = routes[i : i + BATCH_URLS]
            answer = self.http.get_json("batch", params={"urls": ",".join(chunk)})
            if not isinstance(answer, list) or len(answer) != len(chunk):
                raise FatalError(
                    f"GET /batch for {len(chunk)} routes answered {str(answer)[:200]}",
                    connector=self.name,
                )
            for route, item in zip(chunk, answer, strict=True):
                status, body = _batch_answer(item)
                if status >= 400 and status not in (400, 404):
                    where = f"{self.name}: GET {route.split('?')[0]} -> {status} in a batch"
                    if status in (401, 403):
                        raise AuthError(where, connector=self.name, status=status)
                    if status == 429:
                        raise RateLimited(where, connector=self.name, status=status)
                    if status >= 500:
                        raise RetriableError(where, connector=self.name, status=status)
                    raise FatalError(f"{where}: {body}", connector=self.name, status=status)
                out.append((status, body))
        return out

    def _read(self, ref: str) -> RemoteRecord | None:
        card = self._raw(ref) if _ID.match(ref) else None
        return None if card is None else self._record(card, card.get("actions", [])[::-1])

    def _after_put(self, before: Json, answer: Json) -> RemoteRecord:
        """The card after a ``PUT /cards/{id}`` that was the update's only write.

        Trello answers the PUT with the card's attributes; what it leaves out (custom field
        items, checklists, comments, members' names) was read just before the write and the
        PUT changed none of it, so the record is known without reading the card back. Its
        version is the one the next pull computes, unless someone else changed the card in
        between: then the versions differ and that pull reads the card as changed, which it
        is (a read-back would have taken their change as the bridge's own). ``history`` is the
        card's history before the write and ``updated_by`` is None: the bridge's own actions
        are not read (the engine keeps only the version and URL of what an update returns).
        """
        card = {**before, **{k: v for k, v in answer.items() if k not in _NESTED}}
        board = card["idBoard"]
        if card.get("idList") != before.get("idList"):
            lists = self._lists(board, "open")  # the list was just chosen from these
            name = lists.get(card["idList"]) or self._lists(board, "all").get(card["idList"])
            card["list"] = {"id": card["idList"], "name": name}
        ids = card.get("idMembers") or []
        if ids != (before.get("idMembers") or []):
            known = {m["id"]: m for m in before.get("members") or []}
            if any(m not in known for m in ids):
                known.update(self._members(board))  # cached: the write resolved them there
            card["members"] = [known[m] for m in ids if m in known]
        return replace(self._record(card, before.get("actions", [])[::-1]), updated_by=None)

    def _written(self, ref: str) -> RemoteRecord:
        record = self.get(ref)
        if record is None:
            raise FatalError(f"card {ref} vanished right after it was written", connector=self.name)
        return record

    def _record(self, card: Json, actions: list[Json]) -> RemoteRecord:
        """The card as a record; ``actions`` are its own, oldest first."""
        ref, board = card["id"], card["idBoard"]
        if board not in self.config.boards:
            return _gone(ref)
        desc = card.get("desc") or ""
        members = {m["id"]: m for m in card.get("members") or []}
        owner = members.get((card.get("idMembers") or [None])[0] or "")
        values: Json = {
            "name": card.get("name") or "",
            "desc": _MARKER.sub("", desc).rstrip() if _stamp_of(desc) else desc,
            "list": (card.get("list") or {}).get("name"),
            "due": card.get("due"),
            "start": card.get("start"),
            "dueComplete": bool(card.get("dueComplete")),
            "labels": [_label_name(x) for x in card.get("labels") or []],
            "owner": _user(owner) if owner else None,
            "members": [
                members[m].get("username") for m in card.get("idMembers") or [] if m in members
            ],
            "created": trello_time(datetime.fromtimestamp(int(ref[:8], 16), UTC)),
            "comments": _comments(actions),
            **self._checklists(card.get("checklists") or []),
        }
        items = {i.get("idCustomField"): i for i in card.get("customFieldItems") or []}
        problems = []
        for fid, definition in self._fields(board).items():
            try:
                values.setdefault(definition["name"], _decode(definition, items.get(fid)))
            except ValueError as exc:
                problems.append(f"custom field {definition['name']!r}: {exc}")
        if problems:
            raise SkippableRecord(ref, "; ".join(problems), connector=self.name, payload=card)
        stamp = _stamp_of(desc)
        closed = bool(card.get("closed"))
        options = {
            o["id"]: o["value"]["text"]
            for f in self._fields(board).values()
            for o in f.get("options") or ()
        }
        digest = json.dumps([values, stamp, closed], sort_keys=True, default=str)
        return RemoteRecord(
            ref=ref,
            version=hashlib.sha256(digest.encode()).hexdigest()[:16],
            fields=values,
            updated_at=parse_trello_time(card["dateLastActivity"])
            if card.get("dateLastActivity")
            else None,
            updated_by=_actor(actions[-1]) if actions else None,
            url=card.get("url") or card.get("shortUrl"),
            stamp=stamp,
            deleted=closed,
            history=tuple(
                replace(h, old=options.get(h.old, h.old), new=options.get(h.new, h.new))
                for a in actions
                for h in _history(a)
            ),
        )

    def _checklists(self, checklists: list[Json]) -> Json:
        prefix = self.config.deliverables_checklist.casefold()
        tasks, deliverables = [], []
        for checklist in sorted(checklists, key=lambda c: c.get("pos") or 0):
            name = (checklist.get("name") or "").strip()
            items = sorted(checklist.get("checkItems") or [], key=lambda i: i.get("pos") or 0)
            if name.casefold().startswith(prefix):
                stage = _stage(name[len(prefix) :].strip(" :-·"))
                deliverables += [_deliverable(i, stage) for i in items]
            else:
                stage = None if name.casefold() == "tasks" else _stage(name)
                tasks += [
                    {
                        "title": i["name"],
                        "stage": stage,
                        "done": i.get("state") == "complete",
                        "due": (i.get("due") or "")[:10] or None,
                    }
                    for i in items
                ]
        return {"tasks": tasks, "deliverables": deliverables}

    # ------------------------------------------------------------------ writes

    def _card_params(
        self, board: str, ref: str, fields: Json, current_members: list[str]
    ) -> dict[str, str]:
        """PUT/POST /cards parameters for the card attributes in ``fields`` (popped)."""
        params: dict[str, str] = {}
        if "name" in fields:
            params["name"] = str(fields.pop("name") or "")
        for key in ("due", "start"):
            if key in fields:
                params[key] = _when(fields.pop(key), ref, key)
        if "dueComplete" in fields:
            params["dueComplete"] = "true" if fields.pop("dueComplete") else "false"
        if "labels" in fields:
            ids = [self._label_id(board, str(n)) for n in fields.pop("labels") or []]
            params["idLabels"] = ",".join(ids)
        members = list(current_members)
        if "members" in fields:
            members = [self._member_id(board, u, ref) for u in fields.pop("members") or []]
        if "owner" in fields:
            owner = fields.pop("owner")
            rest = members[1:] if members and current_members == members else members
            head = [self._member_id(board, owner, ref)] if owner else []
            members = head + [m for m in rest if m not in head]
        if members != current_members:
            params["idMembers"] = ",".join(members)
        return params

    def _custom_items(self, board: str, ref: str, fields: Json) -> list[Json]:
        by_name = {f["name"].casefold(): f for f in self._fields(board).values()}
        items = []
        for key, value in list(fields.items()):
            definition = by_name.get(key.casefold())
            if definition is None:
                what = "cannot be written" if key in {f.id for f in _BUILTIN} else "is not a field"
                raise SkippableRecord(
                    ref,
                    f"{key!r} {what} on board {board}",
                    connector=self.name,
                    payload=dict(fields),
                )
            try:
                items.append({"idCustomField": definition["id"], **_encode(definition, value)})
            except ValueError as exc:
                raise SkippableRecord(
                    ref, f"custom field {key!r}: {exc}", connector=self.name, payload=value
                ) from None
        return items

    def _put_custom(self, ref: str, items: list[Json]) -> None:
        self.http.request("PUT", f"cards/{ref}/customFields", json={"customFieldItems": items})

    def _write_lists(self, card: Json, lists: Json, current: Mapping[str, Any]) -> None:
        """Write tasks, deliverables and comments (``lists``) to a card read as ``current``."""
        if "tasks" in lists:
            self._write_tasks(card, lists["tasks"])
        if "deliverables" in lists:
            self._write_deliverables(card, lists["deliverables"])
        if "comments" in lists:
            self._write_comments(card["id"], lists["comments"], current.get("comments") or [])

    def _write_comments(self, ref: str, wanted: list[Json], current: list[Json]) -> None:
        """Add the actions the card does not show yet as comments (never edit or delete one)."""
        have = Counter(_action_key(a) for a in current)
        for action in wanted:
            key = _action_key(action)
            if have[key] > 0:
                have[key] -= 1
                continue
            text = _comment_text(action)
            self.http.request("POST", f"cards/{ref}/actions/comments", json={"text": text})

    def _write_deliverables(self, card: Json, wanted: list[Json]) -> None:
        """Make the deliverable checklists read as ``wanted``: keep the items that already do,
        rename or (un)tick those of the same deliverable, add the missing, delete the rest."""
        prefix = self.config.deliverables_checklist
        wanted = [_deliverable_shape(d) for d in wanted]
        checklists = [
            c
            for c in sorted(card.get("checklists") or [], key=lambda c: c.get("pos") or 0)
            if (c.get("name") or "").strip().casefold().startswith(prefix.casefold())
        ]
        have: list[tuple[Json, Json, Json]] = []  # (checklist, item, as it reads)
        for checklist in checklists:
            stage = _stage((checklist.get("name") or "").strip()[len(prefix) :].strip(" :-·"))
            for item in sorted(checklist.get("checkItems") or [], key=lambda i: i.get("pos") or 0):
                have.append((checklist, item, _deliverable(item, stage)))
        if [h[2] for h in have] == wanted:
            return
        placed: dict[int, int] = {}  # wanted index -> have index
        for i, d in enumerate(wanted):  # items that already read as wanted stay as they are
            used = set(placed.values())
            j = next((j for j, h in enumerate(have) if h[2] == d and j not in used), None)
            if j is not None:
                placed[i] = j
        for i, d in enumerate(wanted):  # the same deliverable in another state: edit the item
            if i in placed:
                continue
            j = next(
                (
                    j
                    for j, h in enumerate(have)
                    if j not in placed.values()
                    and _stage(h[2]["stage"] or "") == _stage(d["stage"] or "")
                    and (h[2]["kind"], h[2]["title"]) == (d["kind"], d["title"])
                ),
                None,
            )
            if j is None:
                continue
            placed[i] = j
            _, item, _ = have[j]
            name, state = _item_name(d), "complete" if d["status"] == "approved" else "incomplete"
            params = {k: v for k, v in (("name", name), ("state", state)) if item.get(k) != v}
            if params:
                path = f"cards/{card['id']}/checkItem/{item['id']}"
                self.http.request("PUT", path, params=params)
        for j, (checklist, item, _) in enumerate(have):
            if j not in placed.values():
                self.http.request("DELETE", f"checklists/{checklist['id']}/checkItems/{item['id']}")
        targets: dict[str | None, str] = {}
        for checklist in checklists:
            name = (checklist.get("name") or "").strip()[len(prefix) :].strip(" :-·")
            targets.setdefault(_stage(name), checklist["id"])
        where = {
            i: (have[j][0]["id"], float(have[j][1].get("pos") or 0)) for i, j in placed.items()
        }
        for i, d in enumerate(wanted):
            if i in placed:
                continue
            stage = _stage(d["stage"] or "")
            if stage not in targets:
                name = f"{prefix}: {d['stage']}" if d["stage"] else prefix
                created = self.http.decode_json(
                    self.http.request(
                        "POST", "checklists", params={"idCard": card["id"], "name": name}
                    )
                )
                targets[stage] = created["id"]
            params = {
                "name": _item_name(d),
                "checked": "true" if d["status"] == "approved" else "false",
                "pos": _between(where, i, targets[stage]),
            }
            path = f"checklists/{targets[stage]}/checkItems"
            item = self.http.decode_json(self.http.request("POST", path, params=params))
            where[i] = (targets[stage], float(item.get("pos") or 0))

    def _write_tasks(self, card: Json, tasks: list[Json]) -> None:
        """Make the card's task checklists hold exactly ``tasks`` (by title, per stage)."""
        prefix = self.config.deliverables_checklist.casefold()
        wanted: dict[str, list[Json]] = defaultdict(list)
        for task in tasks:
            wanted[task.get("stage") or "Tasks"].append(task)
        for checklist in card.get("checklists") or []:
            name = (checklist.get("name") or "").strip()
            if name.casefold().startswith(prefix):
                continue
            key = next((k for k in wanted if _stage(k) == _stage(name)), None)
            if key is None:
                self.http.request("DELETE", f"checklists/{checklist['id']}")
                continue
            self._write_items(card["id"], checklist, wanted.pop(key))
        for name, items in wanted.items():
            created = self.http.decode_json(
                self.http.request("POST", "checklists", params={"idCard": card["id"], "name": name})
            )
            self._write_items(card["id"], {**created, "checkItems": []}, items)

    def _write_items(self, card: str, checklist: Json, tasks: list[Json]) -> None:
        have = {i["name"]: i for i in checklist.get("checkItems") or []}
        for task in tasks:
            state = "complete" if task.get("done") else "incomplete"
            due = f"{task['due']}T00:00:00.000Z" if task.get("due") else None
            item = have.pop(str(task.get("title")), None)
            if item is None:
                params = {
                    "name": str(task.get("title")),
                    "checked": str(state == "complete").lower(),
                }
                if due:
                    params["due"] = due
                self.http.request("POST", f"checklists/{checklist['id']}/checkItems", params=params)
            elif item.get("state") != state or (item.get("due") or None) != due:
                params = {"state": state, "due": due or "null"}
                self.http.request("PUT", f"cards/{card}/checkItem/{item['id']}", params=params)
        for item in have.values():
            self.http.request("DELETE", f"checklists/{checklist['id']}/checkItems/{item['id']}")

    # ------------------------------------------------------------------ board definitions

    def _cached(self, board: str, what: str, path: str, params: Json | None = None) -> Any:
        key = (board, what)
        if key not in self._meta:
            self._meta[key] = self.http.get_json(f"boards/{board}/{path}", params=params)
        return self._meta[key]

    def _lists(self, board: str, which: Literal["open", "all"]) -> dict[str, str]:
        found = self._cached(board, f"lists-{which}", "lists", {"filter": which})
        return {x["id"]: x["name"] for x in found}

    def _fields(self, board: str) -> dict[str, Json]:
        return {f["id"]: f for f in self._cached(board, "fields", "customFields")}

    def _labels(self, board: str) -> dict[str, Json]:
        return {x["id"]: x for x in self._cached(board, "labels", "labels")}

    def _members(self, board: str) -> dict[str, Json]:
        return {m["id"]: m for m in self._cached(board, "members", "members")}

    def _list_id(self, board: str, name: Any, ref: str) -> str:
        for lid, lname in self._lists(board, "open").items():
            if lname.casefold() == str(name).casefold():
                return lid
        raise SkippableRecord(
            ref, f"board {board} has no open list {name!r}", connector=self.name, payload=name
        )

    def _label_id(self, board: str, name: str) -> str:
        for lid, label in self._labels(board).items():
            if _label_name(label).casefold() == name.casefold():
                return lid
        params = {"idBoard": board, "name": name, "color": "null"}
        label = self.http.decode_json(self.http.request("POST", "labels", params=params))
        self._meta.pop((board, "labels"), None)
        return str(label["id"])

    def _member_id(self, board: str, user: Any, ref: str) -> str:
        keys = [user] if isinstance(user, str) else [user.get("id"), user.get("username")]
        for mid, member in self._members(board).items():
            if mid in keys or member.get("username") in keys:
                return mid
        raise SkippableRecord(
            ref,
            f"no member of board {board} is {user!r}: add the person to the board, or map "
            "their e-mail to their Trello username in the mapping's [users.table]",
            connector=self.name,
            payload=user,
        )


# --------------------------------------------------------------------------- helpers


def _card_route(ref: str) -> str:
    """The ``GET /batch`` route reading a card as :meth:`TrelloConnector._raw` does. The routes
    are joined with commas, so commas inside one (``member_fields``) are escaped."""
    return f"/cards/{ref}?{urlencode(_CARD_READ)}"


def _batch_answer(item: Any) -> tuple[int, Any]:
    """(status, body) of one ``GET /batch`` answer: ``{"200": body}``, ``{"404": "text"}``,
    or an error object with a ``statusCode``."""
    if isinstance(item, dict):
        if len(item) == 1:
            ((key, body),) = item.items()
            if str(key).isdigit():
                return int(key), body
        code = item.get("statusCode")
        if isinstance(code, int):
            return code, item
    raise FatalError(f"GET /batch answered a route with {str(item)[:200]}")


def _gone(ref: str) -> RemoteRecord:
    return RemoteRecord(ref=ref, version="gone", fields={}, deleted=True)


def _stamp_of(desc: str) -> str | None:
    found = _MARKER.findall(desc)
    return found[-1] if found else None


def _with_stamp(desc: str, stamp: str | None) -> str:
    desc = _MARKER.sub("", desc).rstrip()
    return f"{desc}\n\n[salesbridge:{stamp}]".lstrip() if stamp else desc


def _label_name(label: Json) -> str:
    return str(label.get("name") or label.get("color") or "")


def _user(member: Json) -> Json:
    return {
        "id": member["id"],
        "name": member.get("fullName"),
        "email": None,
        "username": member.get("username"),
    }


def _actor(action: Json) -> str | None:
    creator = action.get("memberCreator") or {}
    return creator.get("username") or action.get("idMemberCreator")


def _comments(actions: list[Json]) -> list[Json]:
    """The card's comments as canonical actions, by time (a bridge comment by its marker's)."""
    found = []
    for action in actions:
        if action.get("type") != "commentCard":
            continue
        text = str((action.get("data") or {}).get("text") or "")
        mark = _COMMENT_MARK.search(text)
        if mark:
            what, at, by = text[: mark.start()], mark.group(1), mark.group(2) or None
        else:
            what, at, by = text, action["date"], _actor(action)
        found.append(({"what": what, "at": at, "by": by}, _instant(at) or _instant(action["date"])))
    found.sort(key=lambda x: x[1] or datetime.min.replace(tzinfo=UTC))
    return [a for a, _ in found]


def _comment_text(action: Mapping[str, Any]) -> str:
    at = action.get("at")
    at = at.isoformat() if isinstance(at, datetime) else str(at)
    return f"{action.get('what') or ''}\n[salesbridge: {at} by {action.get('by') or ''}]"


def _instant(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        return parse_trello_time(str(value))
    except ValueError:
        return None


def _action_key(action: Mapping[str, Any]) -> tuple[Any, Any]:
    at = action.get("at")
    return action.get("what"), _instant(at) or at


def _deliverable(item: Json, stage: str | None) -> Json:
    """A check item of a deliverables checklist as a canonical deliverable."""
    text = str(item.get("name") or "")
    extras: dict[str, str] = {}
    mark = _ITEM_MARK.search(text)
    if mark:
        text = text[: mark.start()]
        for part in mark.group(1).split("; "):
            key, _, value = part.partition("=")
            extras[key.strip()] = value
    written = _ITEM_STATUS.search(text)
    if written:
        text = text[: written.start()]
    text = text.strip()
    status = written.group(1).lower() if written else "missing"
    if item.get("state") == "complete":
        status = "approved"
    elif status == "approved":
        status = "submitted"  # a person took the approval back
    found: Json = {
        "kind": extras.get("kind") or _stage(text) or "deliverable",
        "title": None if "untitled" in extras else text,
        "stage": stage,
        "status": status,
    }
    for key, canonical in _EXTRAS.items():
        if extras.get(key):
            found[canonical] = extras[key]
    return found


def _deliverable_shape(d: Mapping[str, Any]) -> Json:
    """A canonical deliverable as :func:`_deliverable` reads it back (None values dropped)."""
    out: Json = {
        "kind": str(d.get("kind") or "deliverable"),
        "title": d.get("title") or None,
        "stage": d.get("stage") or None,
        "status": str(d.get("status") or "missing"),
    }
    for canonical in _EXTRAS.values():
        value = d.get(canonical)
        if value:
            out[canonical] = value.isoformat() if isinstance(value, datetime) else str(value)
    return out


def _between(where: dict[int, tuple[str, float]], i: int, checklist: str) -> str:
    """The ``pos`` that puts wanted item ``i`` after the wanted items before it and before
    those after it, in the same checklist (``where``: index -> (checklist, pos))."""
    before = [p for k, (x, p) in where.items() if x == checklist and k < i]
    after = [p for k, (x, p) in where.items() if x == checklist and k > i]
    if not after or (before and max(before) >= min(after)):
        return "bottom"
    return repr((max(before, default=0.0) + min(after)) / 2)


def _item_name(d: Json) -> str:
    """The check item name that reads back as deliverable ``d`` (see _deliverable)."""
    text = d["title"] or d["kind"]
    extras = []
    if (_stage(text) or "deliverable") != d["kind"]:
        extras.append(f"kind={d['kind']}")
    if d["title"] is None:
        extras.append("untitled")
    extras += [f"{key}={d[canonical]}" for key, canonical in _EXTRAS.items() if canonical in d]
    name = f"{text} [{d['status']}]"
    return f"{name} [salesbridge: {'; '.join(extras)}]" if extras else name


def _stage(name: str) -> str | None:
    slug = re.sub(r"[\s\-]+", "_", name.strip().casefold())
    return slug or None


def _when(value: Any, ref: str, key: str) -> str:
    """A due/start value as Trello's date-time text ("null" clears)."""
    if value is None or value == "":
        return "null"
    try:
        if isinstance(value, date) and not isinstance(value, datetime):
            return f"{value.isoformat()}T00:00:00.000Z"
        text = str(value)
        if len(text) == 10:
            return f"{date.fromisoformat(text).isoformat()}T00:00:00.000Z"
        return trello_time(parse_trello_time(text))
    except ValueError:
        raise SkippableRecord(ref, f"{key} {value!r} is not a date or date-time") from None


def _decode(definition: Json, item: Json | None) -> Any:
    """A customFieldItem's value; ValueError for one its field cannot hold."""
    if item is None:
        return None
    kind = definition["type"]
    if kind == "list":
        options = {o["id"]: o["value"]["text"] for o in definition.get("options") or ()}
        if item.get("idValue") not in options:
            raise ValueError(f"option {item.get('idValue')!r} no longer exists")
        return options[item["idValue"]]
    value = item.get("value")
    raw = value.get(_VALUE_KEY.get(kind, kind)) if isinstance(value, dict) else None
    if not isinstance(raw, str):
        raise ValueError(f"{value!r} is not a {kind} value")
    if kind == "number":
        number = float(raw)
        if not math.isfinite(number):
            raise ValueError(f"{raw!r} is not a number")
        return int(number) if number.is_integer() and abs(number) < 2**53 else number
    if kind == "checkbox":
        return raw == "true"
    if kind == "date":
        return trello_time(parse_trello_time(raw))
    return raw


def _encode(definition: Json, value: Any) -> Json:
    """The customFieldItems entry setting ``value`` (None clears the field)."""
    kind = definition["type"]
    if kind == "list":
        if value is None or value == "":
            return {"idValue": ""}
        for option in definition.get("options") or ():
            if option["value"]["text"].casefold() == str(value).casefold():
                return {"idValue": option["id"]}
        raise ValueError(f"{value!r} is not one of its options")
    if value is None or value == "":
        return {"value": ""}
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(f"{value!r} is not a number")
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"{value!r} is not a number")
        return {"value": {"number": str(value)}}
    if kind == "checkbox":
        return {"value": {"checked": "true" if value else "false"}}
    if kind == "date":
        return {"value": {"date": _when(value, "", "date")}}
    return {"value": {"text": str(value)}}


def _history(action: Json) -> list[HistoryEntry]:
    """The field changes one card action records."""
    data, kind = action.get("data") or {}, action.get("type")
    at, who = parse_trello_time(action["date"]), _actor(action)
    if kind in ("createCard", "copyCard", "convertToCardFromCheckItem", "moveCardToBoard"):
        return [HistoryEntry(at, "list", None, (data.get("list") or {}).get("name"), who)]
    if kind == "updateCard" and "listAfter" in data:
        before, after = data.get("listBefore") or {}, data["listAfter"]
        return [HistoryEntry(at, "list", before.get("name"), after.get("name"), who)]
    if kind == "updateCard":
        card = data.get("card") or {}
        return [
            HistoryEntry(at, key, old, card.get(key), who)
            for key, old in (data.get("old") or {}).items()
            if key in ("name", "due", "start", "closed", "dueComplete")
        ]
    if kind == "updateCustomFieldItem":
        definition = data.get("customField") or {}
        item = data.get("customFieldItem") or {}
        key = _VALUE_KEY.get(definition.get("type", ""), definition.get("type", ""))
        new = (item.get("value") or {}).get(key, item.get("idValue"))
        old = ((data.get("old") or {}).get("value") or {}).get(key)
        return [HistoryEntry(at, definition.get("name", "?"), old, new, who)]
    return []


def _by_card(actions: list[Json]) -> dict[str, list[Json]]:
    found: dict[str, list[Json]] = defaultdict(list)
    for action in actions:
        card = (action.get("data") or {}).get("card")
        if isinstance(card, dict) and card.get("id"):
            found[card["id"]].append(action)
    return found


def _upto(actions: list[Json], last: Json) -> list[Json]:
    return actions[: actions.index(last) + 1]


def _position(actions: list[Json], signpost: datetime) -> str | None:
    """The id of the newest of ``actions`` (oldest first) at or before the signpost."""
    for action in reversed(actions):
        if parse_trello_time(action["date"]) <= signpost:
            return str(action["id"])
    return None


def _schema_change(action: Json) -> bool:
    """An action that changes cards' fields without a card action: a list renamed, a custom
    field redefined."""
    if action.get("type") in _SCHEMA_ACTIONS:
        return True
    return action.get("type") == "updateList" and "name" in (action["data"].get("old") or {})
