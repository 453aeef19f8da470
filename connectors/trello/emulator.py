"""A Trello REST API (``/1``) emulator: what the Trello connector uses, faithful to the real thing.

Served by :class:`bridge.emulator.Emulator` (so faults, latency, rate limits and the request log
come from :class:`~bridge.emulator.Controls`). It keeps boards, lists, labels, members, custom
fields (text, number, date, checkbox, list) with their ``customFieldItems``, cards, checklists,
comments, webhooks and the board's **action log**, which every change appends to exactly as
Trello does (``createCard``, ``updateCard`` with ``old`` and ``listBefore``/``listAfter``,
``updateCustomFieldItem``, ``commentCard``, ``addLabelToCard``...). Actions are served newest
first with ``since``/``before`` (an action id or a date), ``limit`` (at most 1000) and ``filter``.
``GET /1/batch?urls=`` answers up to 10 of the GET routes in one request.

Trello behaviours kept on purpose: credentials are the ``key`` and ``token`` query parameters
(401 ``invalid key`` / ``invalid token`` / ``expired token`` as text/plain); malformed ids are 400
``invalid id`` and unknown ones 404; custom field item values are strings (``{"number": "42"}``,
``{"checked": "true"}``); ids are 24 hex digits whose first 8 are the creation time; 100 requests
per 10 s per token, then 429 with Trello's JSON error; webhooks check their callback with a HEAD
on registration and sign each delivery with ``X-Trello-Webhook`` (base64 HMAC-SHA1 of body +
callback URL, keyed with the application secret).

Differences from Trello: webhook deliveries are made before the write's response returns
(Trello sends them within seconds); permissions are not modelled (every valid token may read
and write every board).

People's edits are methods (:meth:`TrelloEmulator.add_card`, :meth:`~TrelloEmulator.move_card`,
:meth:`~TrelloEmulator.set_custom_field`, :meth:`~TrelloEmulator.comment`...); real data comes
in with :meth:`~TrelloEmulator.load_export` (a board's "Export as JSON") and
:meth:`~TrelloEmulator.load_devlake` (DevLake's raw API captures).
"""

from __future__ import annotations

import base64
import bisect
import copy
import csv
import hashlib
import hmac
import itertools
import json
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from bridge.emulator import Controls, Emulator

__all__ = ["TrelloEmulator", "parse_trello_time", "trello_time", "webhook_signature"]

Json = dict[str, Any]
CUSTOM_FIELD_TYPES = ("text", "number", "date", "checkbox", "list")
BATCH_URLS = 10
"""Routes one ``GET /1/batch`` may ask for."""
_ID = re.compile(r"^[0-9a-fA-F]{24}$")
_MACHINE = "5a1e5b0d9e"
_DEFAULT_CARD_FIELDS = frozenset(
    {
        "badges", "checkItemStates", "closed", "dateLastActivity", "desc", "descData", "due",
        "start", "idBoard", "idChecklists", "idLabels", "idList", "idMembers", "idShort",
        "idAttachmentCover", "manualCoverAttachment", "labels", "name", "pos", "shortUrl", "url",
    }
)  # fmt: skip
_MEMBER_FIELDS = ("id", "fullName", "username", "initials", "avatarHash", "avatarUrl")


def trello_time(at: datetime) -> str:
    """``2019-06-12T22:19:30.732Z``: Trello's form of a time (UTC, milliseconds)."""
    # isoformat truncates to milliseconds, as Trello does; it is much faster than strftime.
    return at.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def parse_trello_time(text: str) -> datetime:
    """Trello's time text (or a bare date: its midnight UTC) as an aware datetime."""
    at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def webhook_signature(body: bytes, callback_url: str, secret: str) -> str:
    """The ``X-Trello-Webhook`` header: base64(HMAC-SHA1(secret, body + callback URL))."""
    digest = hmac.new(secret.encode(), body + callback_url.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


class TrelloError(Exception):
    """An answer Trello gives as a status and a text/plain body."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


def _trello_error_body(status: int, message: str) -> tuple[bytes, str]:
    if status == 429:
        body = {"error": "API_TOKEN_LIMIT_EXCEEDED", "message": message}
        return json.dumps(body).encode(), "application/json"
    return message.encode(), "text/plain; charset=utf-8"


def _token_credential(request: Request) -> str:
    return f"token={request.query_params.get('token', '')}"


def _rate_headers(limit: int, remaining: int, reset_in: float) -> dict[str, str]:
    return {
        "x-rate-limit-api-token-interval-ms": "10000",
        "x-rate-limit-api-token-max": str(limit),
        "x-rate-limit-api-token-remaining": str(remaining),
    }


@dataclass
class _Token:
    member: str
    expired: bool = False


class TrelloEmulator(Emulator):
    """Trello's REST API for the connector, tests, the demo and ops rehearsals.

    ``key``/``token`` are the accepted credentials (the token acts as member ``username``);
    ``clock`` is the server clock; ``enforce_limits`` applies Trello's 100 requests per 10 s
    per token (tests that do not test throttling turn it off).
    """

    name = "trello"

    def __init__(
        self,
        *,
        key: str = "emulator-key",
        token: str = "emulator-token",  # noqa: S107 - the emulator's own test credential
        username: str = "salesbridge",
        app_secret: str = "emulator-app-secret",  # noqa: S107
        clock: Callable[[], datetime] | None = None,
        enforce_limits: bool = True,
        controls: Controls | None = None,
    ) -> None:
        super().__init__(
            controls=controls
            or Controls(error_body=_trello_error_body, credential=_token_credential)
        )
        self.clock = clock or (lambda: datetime.now(UTC))
        self.app_secret = app_secret
        self.keys = {key}
        self.tokens: dict[str, _Token] = {}
        self.members: dict[str, Json] = {}
        self.boards: dict[str, Json] = {}
        self.lists: dict[str, Json] = {}
        self.labels: dict[str, Json] = {}
        self.custom_fields: dict[str, Json] = {}
        self.cards: dict[str, Json] = {}
        self.items: dict[str, dict[str, Json]] = {}
        """card id -> custom field id -> customFieldItem"""
        self.checklists: dict[str, Json] = {}
        self.actions: list[Json] = []
        """The action log, oldest first; append-only (see :meth:`_action_index`)."""
        self._index = _ActionIndex(self.actions)
        self._next_short: dict[str, int] = {}
        """board id -> the idShort its next card gets (Trello never reuses one)."""
        self.webhooks: dict[str, Json] = {}
        self.deliveries: list[tuple[str, int | None]] = []
        """(callback URL, status or None) of every webhook delivery attempted."""
        self._lock = threading.RLock()
        self._counter = itertools.count(1)
        self._last: datetime | None = None
        self._outbox: list[tuple[Json, bytes, str]] = []
        self._local = threading.local()
        self.me = self.add_member(username, "Salesbridge")
        self.add_token(token, username)
        if enforce_limits:
            self.controls.rate_limit(100, 10.0, headers=_rate_headers)

    # ------------------------------------------------------------------ set-up

    def add_member(self, username: str, full_name: str | None = None) -> str:
        with self._lock:
            mid = self._new_id()
            name = full_name or username
            initials = "".join(w[0] for w in name.split()[:3]).upper()
            self.members[mid] = {
                "id": mid,
                "username": username,
                "fullName": name,
                "initials": initials,
                "avatarHash": None,
                "avatarUrl": None,
                "memberType": "normal",
                "confirmed": True,
                "url": f"https://trello.com/{username}",
            }
            return mid

    def add_token(self, token: str, member: str) -> None:
        with self._lock:
            self.tokens[token] = _Token(self._member(member)["id"])

    def expire_token(self, token: str) -> None:
        """The token stops working (revoked or past its expiry): every request gets a 401."""
        with self._lock:
            self.tokens[token].expired = True

    def add_board(self, name: str, *, members: Iterable[str] = ()) -> str:
        with self._lock:
            bid = self._new_id()
            short = _short_link(bid)
            self.boards[bid] = {
                "id": bid,
                "name": name,
                "desc": "",
                "closed": False,
                "idOrganization": None,
                "pinned": False,
                "url": f"https://trello.com/b/{short}/{_slug(name)}",
                "shortUrl": f"https://trello.com/b/{short}",
                "shortLink": short,
                "idMembers": [self.me, *(self._member(m)["id"] for m in members)],
            }
            return bid

    def add_list(self, board: str, name: str, *, closed: bool = False) -> str:
        with self._lock:
            lid = self._new_id()
            pos = 16384.0 * (1 + sum(1 for x in self.lists.values() if x["idBoard"] == board))
            self.lists[lid] = {
                "id": lid,
                "name": name,
                "closed": closed,
                "idBoard": self._board(board)["id"],
                "pos": pos,
                "subscribed": False,
                "softLimit": None,
            }
            return lid

    def add_label(self, board: str, name: str, color: str | None = None) -> str:
        with self._lock:
            lid = self._new_id()
            self.labels[lid] = {
                "id": lid,
                "idBoard": self._board(board)["id"],
                "name": name,
                "color": color,
            }
            return lid

    def add_custom_field(
        self, board: str, name: str, type: str, options: Iterable[str] = ()
    ) -> str:
        """A custom field of ``type`` text, number, date, checkbox or list (with ``options``)."""
        if type not in CUSTOM_FIELD_TYPES:
            raise ValueError(f"custom field type must be one of {CUSTOM_FIELD_TYPES}")
        with self._lock:
            fid = self._new_id()
            opts = [
                {
                    "id": self._new_id(),
                    "idCustomField": fid,
                    "value": {"text": text},
                    "color": "none",
                    "pos": 16384 * (i + 1),
                }
                for i, text in enumerate(options)
            ]
            self.custom_fields[fid] = {
                "id": fid,
                "idModel": self._board(board)["id"],
                "modelType": "board",
                "fieldGroup": hashlib.sha256(fid.encode()).hexdigest(),
                "display": {
                    "cardFront": True,
                    "name": name,
                    "pos": f"{16384 * len(self.custom_fields)},",
                },
                "name": name,
                "pos": 16384 * (len(self.custom_fields) + 1),
                "type": type,
                "options": opts,
                "isSuggestedField": False,
            }
            if type != "list":
                del self.custom_fields[fid]["options"]
            return fid

    # ------------------------------------------------------------------ people's edits

    def add_card(
        self,
        list_id: str,
        name: str,
        *,
        actor: str | None = None,
        desc: str = "",
        due: str | None = None,
        start: str | None = None,
        members: Iterable[str] = (),
        labels: Iterable[str] = (),
        custom: Mapping[str, Any] | None = None,
    ) -> str:
        """A card created in list ``list_id``; ``custom`` sets custom fields by display name."""
        with self._lock:
            lst = self._find("list", list_id)
            board = self.boards[lst["idBoard"]]
            cid = self._new_id()
            idshort = self._idshort(board["id"])
            short = _short_link(cid)
            card: Json = {
                "id": cid,
                "address": None,
                "badges": {},
                "checkItemStates": [],
                "closed": False,
                "coordinates": None,
                "creationMethod": None,
                "dateLastActivity": None,
                "desc": desc,
                "descData": {"emoji": {}},
                "due": due,
                "dueComplete": False,
                "dueReminder": None,
                "email": None,
                "idBoard": board["id"],
                "idChecklists": [],
                "idLabels": [self._label_id(board["id"], x) for x in labels],
                "idList": lst["id"],
                "idMembers": [self._member(m)["id"] for m in members],
                "idMembersVoted": [],
                "idShort": idshort,
                "idAttachmentCover": None,
                "labels": [],
                "locationName": None,
                "manualCoverAttachment": False,
                "name": name,
                "pos": 16384.0 * idshort,
                "shortLink": short,
                "shortUrl": f"https://trello.com/c/{short}",
                "start": start,
                "subscribed": False,
                "url": f"https://trello.com/c/{short}/{idshort}-{_slug(name)}",
            }
            self.cards[cid] = card
            self._act("createCard", actor, card, list=_ref_list(lst))
            for fname, value in (custom or {}).items():
                self._set_custom(card, self._field_named(board["id"], fname), value, actor)
        self._flush()
        return cid

    def edit_card(self, card_id: str, *, actor: str | None = None, **changes: Any) -> None:
        """Change card attributes as Trello's PUT /cards does: ``name``, ``desc``, ``due``,
        ``start``, ``dueComplete``, ``closed``, ``idList``, ``idMembers``, ``idLabels``, ``pos``."""
        with self._lock:
            self._edit(self._find("card", card_id), changes, actor)
        self._flush()

    def move_card(self, card_id: str, list_name: str, *, actor: str | None = None) -> None:
        """Drag the card to the list named ``list_name`` on its board."""
        with self._lock:
            card = self._find("card", card_id)
            self._edit(card, {"idList": self.list_named(card["idBoard"], list_name)}, actor)
        self._flush()

    def set_custom_field(
        self, card_id: str, name: str, value: Any, *, actor: str | None = None
    ) -> None:
        """Set a custom field by display name (None clears it); list fields take option text."""
        with self._lock:
            card = self._find("card", card_id)
            self._set_custom(card, self._field_named(card["idBoard"], name), value, actor)
        self._flush()

    def set_raw_item(self, card_id: str, name: str, item: Json) -> None:
        """Store a customFieldItem exactly as given, unchecked: data written before a field's
        type changed, or by a buggy Power-Up. No action is logged."""
        with self._lock:
            card = self._find("card", card_id)
            field = self._field_named(card["idBoard"], name)
            self.items.setdefault(card_id, {})[field["id"]] = {
                "id": self._new_id(),
                "idCustomField": field["id"],
                "idModel": card_id,
                "modelType": "card",
                **item,
            }

    def comment(self, card_id: str, text: str, *, actor: str | None = None) -> Json:
        with self._lock:
            card = self._find("card", card_id)
            action = self._act(
                "commentCard", actor, card, text=text, list=_ref_list(self.lists[card["idList"]])
            )
        self._flush()
        return action

    def add_checklist(self, card_id: str, name: str, *, actor: str | None = None) -> str:
        with self._lock:
            card = self._find("card", card_id)
            xid = self._new_id()
            count = len(card["idChecklists"])
            self.checklists[xid] = {
                "id": xid,
                "name": name,
                "idBoard": card["idBoard"],
                "idCard": card_id,
                "pos": 16384 * (count + 1),
                "checkItems": [],
            }
            card["idChecklists"].append(xid)
            self._act("addChecklistToCard", actor, card, checklist={"id": xid, "name": name})
        self._flush()
        return xid

    def add_check_item(
        self,
        checklist_id: str,
        name: str,
        *,
        checked: bool = False,
        due: str | None = None,
        pos: str | float | None = None,
        actor: str | None = None,
    ) -> str:
        """Add an item; ``pos`` as Trello takes it: "top", "bottom" (default) or a number."""
        with self._lock:
            checklist = self._find("checklist", checklist_id)
            iid = self._new_id()
            taken = [float(i["pos"]) for i in checklist["checkItems"]]
            if pos in (None, "bottom"):
                at: float = max(taken, default=0.0) + 16384
            elif pos == "top":
                at = min(taken, default=32768.0) / 2
            else:
                at = float(pos)
                if not at > 0:
                    raise TrelloError(400, "invalid value for pos")
            item = {
                "id": iid,
                "name": name,
                "nameData": None,
                "pos": int(at) if at.is_integer() else at,
                "state": "complete" if checked else "incomplete",
                "due": due,
                "dueReminder": None,
                "idMember": None,
                "idChecklist": checklist_id,
            }
            checklist["checkItems"].append(item)
            checklist["checkItems"].sort(key=lambda i: float(i["pos"]))  # as Trello lists them
            self._act(
                "createCheckItem",
                actor,
                self.cards[checklist["idCard"]],
                checklist={"id": checklist_id, "name": checklist["name"]},
                checkItem={"id": iid, "name": name, "state": item["state"]},
            )
        self._flush()
        return iid

    def set_check_item(
        self, card_id: str, item_id: str, *, actor: str | None = None, **changes: Any
    ) -> Json:
        """Change a check item's ``state`` (complete/incomplete), ``name`` or ``due``."""
        with self._lock:
            card = self._find("card", card_id)
            checklist, item = self._check_item(card, item_id)
            old = {k: item.get(k) for k in changes}
            item.update({k: v for k, v in changes.items() if k in ("state", "name", "due")})
            kind = "updateCheckItemStateOnCard" if "state" in changes else "updateCheckItem"
            self._act(
                kind,
                actor,
                card,
                checklist={"id": checklist["id"], "name": checklist["name"]},
                checkItem={"id": item_id, "name": item["name"], "state": item["state"]},
                old=old,
            )
        self._flush()
        return dict(item)

    def archive_card(self, card_id: str, *, actor: str | None = None) -> None:
        self.edit_card(card_id, closed=True, actor=actor)

    def delete_card(self, card_id: str, *, actor: str | None = None) -> None:
        with self._lock:
            card = self._find("card", card_id)
            self._act(
                "deleteCard",
                actor,
                {"id": card["id"], "idShort": card["idShort"], "shortLink": card["shortLink"]},
                board_id=card["idBoard"],
                list=_ref_list(self.lists[card["idList"]]),
            )
            del self.cards[card_id]
            self.items.pop(card_id, None)
            for xid in card["idChecklists"]:
                self.checklists.pop(xid, None)
        self._flush()

    # ------------------------------------------------------------------ lookups for tests

    def list_named(self, board: str, name: str) -> str:
        with self._lock:
            for lst in self.lists.values():
                if lst["idBoard"] == board and lst["name"].casefold() == name.casefold():
                    return str(lst["id"])
        raise KeyError(f"no list {name!r} on board {board}")

    def card(self, card_id: str) -> Json:
        """The card as GET /cards/{id}?fields=all&customFieldItems=true&checklists=all shows it."""
        with self._lock:
            return copy.deepcopy(
                self._card_json(
                    self._find("card", card_id),
                    {"fields": "all", "customFieldItems": "true", "checklists": "all"},
                )
            )

    def board_actions(self, board: str) -> list[Json]:
        with self._lock:
            log = self.actions
            return [copy.deepcopy(log[i]) for i in self._action_index().board.get(board, [])]

    # ------------------------------------------------------------------ real data

    def load_export(self, source: Path | Json) -> str:
        """Load a board's "Export as JSON" (a file or its parsed content); return the board id.

        Everything is kept as exported (unknown keys included), actions in date order, so the
        API serves what Trello served.
        """
        data: Json = (
            json.loads(source.read_text(encoding="utf-8")) if isinstance(source, Path) else source
        )
        data = copy.deepcopy(data)
        with self._lock:
            bid = data["id"]
            self._next_short.pop(bid, None)
            board = {k: v for k, v in data.items() if not isinstance(v, list) or k == "idTags"}
            board.setdefault("idMembers", [])
            for m in data.get("members", []):
                self.members.setdefault(m["id"], m)
                board["idMembers"].append(m["id"])
            board["idMembers"].append(self.me)
            self.boards[bid] = board
            for key, store in (
                ("lists", self.lists),
                ("labels", self.labels),
                ("customFields", self.custom_fields),
                ("checklists", self.checklists),
            ):
                for obj in data.get(key, []):
                    obj.setdefault("idBoard", bid)
                    store[obj["id"]] = obj
            for card in data.get("cards", []):
                items = card.pop("customFieldItems", None) or []
                self.cards[card["id"]] = card
                self.items[card["id"]] = {i["idCustomField"]: i for i in items}
            for action in sorted(data.get("actions", []), key=lambda a: (a["date"], a["id"])):
                creator = action.get("memberCreator")
                if isinstance(creator, dict) and creator.get("id") not in self.members:
                    self.members[creator["id"]] = dict(creator)
                self.actions.append(action)
            self._last = max(
                [self._last or datetime.min.replace(tzinfo=UTC)]
                + [parse_trello_time(a["date"]) for a in self.actions]
            )
        return str(bid)

    def load_devlake(self, directory: Path) -> list[str]:
        """Load DevLake's raw Trello captures (``_raw_trello_{cards,lists,labels,check_items,
        members}.csv``: one API response item per row); return the board ids."""
        csv.field_size_limit(1 << 26)
        rows: dict[str, list[tuple[str, Json]]] = {}
        for name in ("members", "lists", "labels", "check_items", "cards"):
            with (directory / f"_raw_trello_{name}.csv").open(encoding="utf-8", newline="") as f:
                rows[name] = [
                    (json.loads(r["params"])["BoardId"], json.loads(r["data"]))
                    for r in csv.DictReader(f)
                ]
        boards: list[str] = []
        with self._lock:
            for bid, _ in itertools.chain(*rows.values()):
                if bid not in self.boards:
                    boards.append(bid)
                    self.boards[bid] = {
                        "id": bid,
                        "name": f"DevLake board {len(boards)}",
                        "closed": False,
                        "url": f"https://trello.com/b/{bid[:8]}",
                        "shortUrl": f"https://trello.com/b/{bid[:8]}",
                        "idMembers": [self.me],
                    }
            for bid, member in rows["members"]:
                self.members.setdefault(member["id"], member)
                self.boards[bid]["idMembers"].append(member["id"])
            for store, key in ((self.lists, "lists"), (self.labels, "labels")):
                for bid, obj in rows[key]:
                    store[obj["id"]] = {**obj, "idBoard": bid}
            for bid, checklist in rows["check_items"]:
                self.checklists[checklist["id"]] = {**checklist, "idBoard": bid}
            for _, card in rows["cards"]:
                self.items[card["id"]] = {
                    i["idCustomField"]: i for i in card.pop("customFieldItems", None) or []
                }
                self.cards[card["id"]] = card
        return boards

    # ------------------------------------------------------------------ internals: state

    def _new_id(self) -> str:
        seconds = int(self.clock().timestamp())
        return f"{seconds:08x}{_MACHINE}{next(self._counter):06x}"

    def _now(self) -> datetime:
        """Server time in milliseconds; never before the last action's (a clock set back)."""
        now = self.clock().astimezone(UTC)
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        if self._last is not None and now < self._last:
            now = self._last
        self._last = now
        return now

    def _idshort(self, board: str) -> int:
        """The next card number on ``board``: one past the highest it ever gave (or loaded)."""
        if board not in self._next_short:
            taken = [
                int(c.get("idShort") or 0) for c in self.cards.values() if c["idBoard"] == board
            ]
            self._next_short[board] = max(taken, default=0) + 1
        number = self._next_short[board]
        self._next_short[board] = number + 1
        return number

    def _action_index(self) -> _ActionIndex:
        """The action log's index, caught up with what was appended since it was last asked."""
        if self._index.log is not self.actions or self._index.size > len(self.actions):
            self._index = _ActionIndex(self.actions)  # the log was replaced or cut: start over
        self._index.catch_up()
        return self._index

    def _find(self, kind: str, oid: str) -> Json:
        store = {
            "card": self.cards,
            "board": self.boards,
            "list": self.lists,
            "checklist": self.checklists,
            "label": self.labels,
            "customField": self.custom_fields,
            "webhook": self.webhooks,
            "member": self.members,
        }[kind]
        if not isinstance(oid, str) or not _ID.match(oid):
            raise TrelloError(400, "invalid id")
        found = store.get(oid)
        if found is None:
            raise TrelloError(404, "The requested resource was not found.")
        return found

    def _board(self, ref: str) -> Json:
        return self._find("board", ref)

    def _member(self, ref: str) -> Json:
        if ref in self.members:
            return self.members[ref]
        for m in self.members.values():
            if m.get("username") == ref:
                return m
        raise TrelloError(400, f"invalid value for idMember: {ref}")

    def _label_id(self, board: str, ref: str) -> str:
        if ref in self.labels:
            return ref
        for label in self.labels.values():
            if label["idBoard"] == board and label["name"] == ref:
                return str(label["id"])
        return self.add_label(board, ref)

    def _field_named(self, board: str, name: str) -> Json:
        for f in self.custom_fields.values():
            if f["idModel"] == board and f["name"].casefold() == name.casefold():
                return f
        raise KeyError(f"no custom field {name!r} on board {board}")

    def _check_item(self, card: Json, item_id: str) -> tuple[Json, Json]:
        for xid in card["idChecklists"]:
            checklist = self.checklists.get(xid)
            for item in checklist["checkItems"] if checklist else ():
                if item["id"] == item_id:
                    return checklist, item  # type: ignore[return-value]
        raise TrelloError(404, "The requested resource was not found.")

    def _act(
        self, kind: str, actor: str | None, card: Json, *, board_id: str | None = None, **data: Any
    ) -> Json:
        """Append an action about ``card`` to the log (and queue its webhook deliveries)."""
        creator = self._member(actor) if actor else self.members[self.me]
        bid = board_id or card["idBoard"]
        board = self.boards[bid]
        at = self._now()
        card_ref = {k: card[k] for k in ("id", "name", "idShort", "shortLink") if k in card}
        card_ref.update(data.pop("card_extra", {}))
        action = {
            "id": self._new_id(),
            "idMemberCreator": creator["id"],
            "data": {
                "card": card_ref,
                "board": {
                    "id": bid,
                    "name": board.get("name"),
                    "shortLink": board.get("shortLink"),
                },
                **data,
            },
            "appCreator": None,
            "type": kind,
            "date": trello_time(at),
            "limits": {},
            "memberCreator": {k: creator.get(k) for k in _MEMBER_FIELDS},
        }
        self.actions.append(action)
        if card.get("id") in self.cards:
            card["dateLastActivity"] = action["date"]
        self._queue_webhooks(action)
        return action

    def _edit(self, card: Json, changes: Mapping[str, Any], actor: str | None) -> None:
        """Apply PUT /cards/{id} changes, logging one action per changed attribute."""
        lst = _ref_list(self.lists[card["idList"]])
        for key, value in changes.items():
            old = card.get(key)
            if key == "idList":
                target = self._find("list", value)
                if target["idBoard"] != card["idBoard"]:
                    raise TrelloError(400, "invalid value for idList")
                if value != old:
                    card["idList"] = value
                    self._act(
                        "updateCard",
                        actor,
                        card,
                        card_extra={"idList": value},
                        old={"idList": old},
                        listBefore=lst,
                        listAfter=_ref_list(target),
                    )
                    lst = _ref_list(target)
            elif key in ("idMembers", "idLabels"):
                new = (
                    [self._member(m)["id"] for m in value]
                    if key == "idMembers"
                    else [self._label_id(card["idBoard"], x) for x in value]
                )
                card[key] = new
                self._log_set_changes(card, key, old or [], new, actor)
            elif key in ("name", "desc", "due", "start", "dueComplete", "closed", "pos"):
                if value != old:
                    card[key] = value
                    self._act(
                        "updateCard", actor, card, card_extra={key: value}, old={key: old}, list=lst
                    )
            else:
                raise TrelloError(400, f"invalid value for {key}")

    def _log_set_changes(
        self, card: Json, key: str, old: list[str], new: list[str], actor: str | None
    ) -> None:
        for gone in [x for x in old if x not in new]:
            self._set_action(card, key, gone, added=False, actor=actor)
        for added in [x for x in new if x not in old]:
            self._set_action(card, key, added, added=True, actor=actor)

    def _set_action(
        self, card: Json, key: str, oid: str, *, added: bool, actor: str | None
    ) -> None:
        if key == "idMembers":
            m = self.members[oid]
            kind = "addMemberToCard" if added else "removeMemberFromCard"
            self._act(kind, actor, card, idMember=oid, member={"id": oid, "name": m["fullName"]})
        else:
            label = self.labels[oid]
            kind = "addLabelToCard" if added else "removeLabelFromCard"
            self._act(
                kind,
                actor,
                card,
                label={"id": oid, "name": label["name"], "color": label["color"]},
                text=label["name"],
            )

    def _encode(self, field: Json, value: Any) -> Json | None:
        """A person's value for a custom field as Trello stores it; None clears the field."""
        if value is None or value == "":
            return None
        kind = field["type"]
        if kind == "list":
            for option in field["options"]:
                if option["value"]["text"].casefold() == str(value).casefold():
                    return {"idValue": option["id"]}
            raise TrelloError(400, f"invalid option for custom field {field['name']}: {value}")
        if kind == "checkbox":
            return {"value": {"checked": "true" if value else "false"}}
        if kind == "date":
            at = value if isinstance(value, datetime) else parse_trello_time(str(value))
            return {"value": {"date": trello_time(at)}}
        return {"value": {kind: str(value)}}

    def _set_custom(self, card: Json, field: Json, value: Any, actor: str | None) -> None:
        self._store_item(card, field, self._encode(field, value), actor)

    def _store_item(self, card: Json, field: Json, encoded: Json | None, actor: str | None) -> None:
        items = self.items.setdefault(card["id"], {})
        old = items.get(field["id"])
        old_value = None if old is None else {k: old[k] for k in ("value", "idValue") if k in old}
        if encoded is None:
            items.pop(field["id"], None)
            new_item: Json = {"id": None, "value": None}
        else:
            new_item = {
                "id": old["id"] if old else self._new_id(),
                "idCustomField": field["id"],
                "idModel": card["id"],
                "modelType": "card",
                **encoded,
            }
            items[field["id"]] = new_item
        if old_value == (encoded or None):
            return
        self._act(
            "updateCustomFieldItem",
            actor,
            card,
            customField={"id": field["id"], "name": field["name"], "type": field["type"]},
            customFieldItem=new_item,
            old=old_value or {"value": None},
        )

    # ------------------------------------------------------------------ internals: rendering

    def _card_json(self, card: Json, params: Mapping[str, str]) -> Json:
        """The card as the API shows it. It shares nested values with the emulator's state:
        requests serialise it under the lock (:meth:`_handle`); others copy it."""
        out = dict(card)
        out["labels"] = [
            dict(self.labels[x]) for x in card.get("idLabels") or [] if x in self.labels
        ]
        checklists = [
            self.checklists[x] for x in card.get("idChecklists") or [] if x in self.checklists
        ]
        items = [i for c in checklists for i in c["checkItems"]]
        index = self._action_index()
        comments = index.comments.get(card["id"], 0)
        badges = dict(card.get("badges") or {})
        badges.update(
            {
                "checkItems": len(items),
                "checkItemsChecked": sum(1 for i in items if i["state"] == "complete"),
                "comments": comments,
                "description": bool(card.get("desc")),
                "due": card.get("due"),
                "dueComplete": bool(card.get("dueComplete")),
                "start": card.get("start"),
            }
        )
        badges.setdefault("attachments", 0)
        badges.setdefault("votes", 0)
        out["badges"] = badges
        fields = params.get("fields")
        if fields != "all":
            keep = set(fields.split(",")) if fields else set(_DEFAULT_CARD_FIELDS)
            out = {k: v for k, v in out.items() if k in keep or k == "id"}
        if _true(params.get("customFieldItems")):
            out["customFieldItems"] = [dict(i) for i in self.items.get(card["id"], {}).values()]
        if params.get("checklists", "none") != "none":
            out["checklists"] = checklists
        if _true(params.get("members")):
            out["members"] = [
                {k: self.members[m].get(k) for k in _MEMBER_FIELDS}
                for m in card.get("idMembers") or []
                if m in self.members
            ]
        if _true(params.get("list")):
            out["list"] = dict(self.lists[card["idList"]])
        if params.get("actions"):
            limit = int(params.get("actions_limit", "50"))
            kinds = _kinds(params["actions"])
            log = self.actions
            found = [
                log[i]
                for i in reversed(index.card.get(card["id"], []))
                if kinds is None or log[i]["type"] in kinds
            ]
            out["actions"] = found[:limit]
        return out

    def _board_cards(self, board: Json, params: Mapping[str, str], filter_: str) -> list[Json]:
        if filter_ not in ("open", "closed", "all", "visible"):
            raise TrelloError(400, "invalid value for filter")
        cards = [c for c in self.cards.values() if c["idBoard"] == board["id"]]
        if filter_ in ("open", "visible"):
            cards = [c for c in cards if not c.get("closed")]
        elif filter_ == "closed":
            cards = [c for c in cards if c.get("closed")]
        cards.sort(key=lambda c: (c.get("idList", ""), c.get("pos") or 0))
        return [self._card_json(c, params) for c in cards]

    def _actions_page(self, board: Json, params: Mapping[str, str]) -> list[Json]:
        limit = _int_param(params, "limit", 50)
        if not 0 <= limit <= 1000:
            raise TrelloError(400, "invalid value for limit")
        page = _int_param(params, "page", 0)
        kinds = _kinds(params.get("filter", "all"))
        log = self.actions
        # The board's places in the log, ascending: an id bound is a slice by bisection, a
        # date bound a filter (dates follow the log's order only as far as loads keep it).
        places = self._action_index().board.get(board["id"], [])
        if "since" in params:
            pos, at = self._bound(params["since"], "since")
            if pos is not None:
                places = places[bisect.bisect_right(places, pos) :]
            else:
                places = [i for i in places if _at(log[i]) > at]
        if "before" in params:
            pos, at = self._bound(params["before"], "before")
            if pos is not None:
                places = places[: bisect.bisect_left(places, pos)]
            else:
                places = [i for i in places if _at(log[i]) < at]
        if kinds is not None:
            places = [i for i in places if log[i]["type"] in kinds]
        end = len(places) - page * limit
        chunk = [log[i] for i in reversed(places[max(0, end - limit) : max(0, end)])]
        if not _true(params.get("memberCreator", "true")):
            chunk = [{k: v for k, v in a.items() if k != "memberCreator"} for a in chunk]
        return chunk  # serialised under the lock (see _handle): no copy needed

    def _bound(self, value: str, name: str) -> tuple[int | None, datetime]:
        """An action id (its place in the log) or a date; an unknown id counts by its time."""
        if _ID.match(value):
            i = self._action_index().place.get(value)
            if i is not None:
                return i, _at(self.actions[i])
            return None, datetime.fromtimestamp(int(value[:8], 16), UTC)
        try:
            return None, parse_trello_time(value)
        except ValueError:
            raise TrelloError(400, f"invalid value for {name}") from None

    # ------------------------------------------------------------------ webhooks

    def _queue_webhooks(self, action: Json) -> None:
        data = action["data"]
        models = {
            _board_of(action),
            _card_of(action),
            (data.get("list") or data.get("listAfter") or {}).get("id"),
            action.get("idMemberCreator"),
        }
        for hook in self.webhooks.values():
            if hook["active"] and hook["idModel"] in models:
                model = self.boards.get(hook["idModel"]) or self.cards.get(hook["idModel"]) or {}
                body = json.dumps(
                    {"action": action, "model": model, "webhook": _webhook_json(hook)}
                ).encode()
                self._outbox.append((hook, body, hook["callbackURL"]))

    def _flush(self) -> None:
        """Deliver queued webhook calls (outside the lock: a receiver may call us back)."""
        if getattr(self._local, "in_request", False):
            return  # the request delivers them once it lets go of the lock
        with self._lock:
            pending, self._outbox = self._outbox, []
        for hook, body, url in pending:
            signature = webhook_signature(body, url, self.app_secret)
            request = urllib.request.Request(  # noqa: S310 - a URL registered by the test/user
                url,
                data=body,
                method="POST",
                headers={"Content-Type": "application/json", "X-Trello-Webhook": signature},
            )
            status = _call(request)
            with self._lock:
                self.deliveries.append((url, status))
                if status == 410:
                    self.webhooks.pop(hook["id"], None)
                elif status is None or status >= 300:
                    hook["consecutiveFailures"] += 1
                else:
                    hook["consecutiveFailures"] = 0

    def _register_webhook(self, params: Mapping[str, str]) -> Json:
        url, model = params.get("callbackURL"), params.get("idModel")
        if not url or not url.startswith(("http://", "https://")):
            raise TrelloError(400, "invalid value for callbackURL")
        if not model or not _ID.match(model):
            raise TrelloError(400, "invalid value for idModel")
        if model not in self.boards and model not in self.cards and model not in self.lists:
            raise TrelloError(400, "invalid value for idModel")
        status = _call(urllib.request.Request(url, method="HEAD"))  # noqa: S310
        if status != 200:
            raise TrelloError(
                400, f"URL ({url}) did not return 200 status code, got {status or 'no answer'}"
            )
        with self._lock:
            wid = self._new_id()
            self.webhooks[wid] = {
                "id": wid,
                "description": params.get("description", ""),
                "idModel": model,
                "callbackURL": url,
                "active": not params.get("active") or _true(params.get("active")),
                "consecutiveFailures": 0,
                "firstConsecutiveFailDate": None,
                "token": params["token"],
            }
            return _webhook_json(self.webhooks[wid])

    # ------------------------------------------------------------------ HTTP

    def build_app(self) -> ASGIApp:
        table = self._table()
        # What GET /1/batch dispatches to: the GET routes, matched without the /1 prefix.
        self._batchable = [
            (re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path[2:]) + "$"), handler)
            for method, path, handler in table
            if method == "GET" and path != "/1/batch"
        ]
        return Starlette(routes=[self._route(*route) for route in table])

    def _table(self) -> list[tuple[str, str, Callable[[Mapping[str, str], Json], Any]]]:
        return [
            ("GET", "/1/batch", self._get_batch),
            ("GET", "/1/members/{id}", self._get_member),
            ("GET", "/1/boards/{id}", self._get_board),
            ("GET", "/1/boards/{id}/lists", self._get_lists),
            ("GET", "/1/boards/{id}/labels", self._get_labels),
            ("GET", "/1/boards/{id}/customFields", self._get_custom_fields),
            ("GET", "/1/boards/{id}/members", self._get_board_members),
            ("GET", "/1/boards/{id}/checklists", self._get_board_checklists),
            ("GET", "/1/boards/{id}/cards", self._get_board_cards),
            ("GET", "/1/boards/{id}/cards/{filter}", self._get_board_cards),
            ("GET", "/1/boards/{id}/actions", self._get_actions),
            ("POST", "/1/cards", self._post_card),
            ("GET", "/1/cards/{id}", self._get_card),
            ("PUT", "/1/cards/{id}", self._put_card),
            ("DELETE", "/1/cards/{id}", self._delete_card),
            ("GET", "/1/cards/{id}/customFieldItems", self._get_items),
            ("PUT", "/1/cards/{id}/customField/{field}/item", self._put_item),
            ("PUT", "/1/cards/{id}/customFields", self._put_items),
            ("POST", "/1/cards/{id}/actions/comments", self._post_comment),
            ("PUT", "/1/cards/{id}/checkItem/{item}", self._put_check_item),
            ("POST", "/1/checklists", self._post_checklist),
            ("DELETE", "/1/checklists/{id}", self._delete_checklist),
            ("POST", "/1/checklists/{id}/checkItems", self._post_check_item),
            ("DELETE", "/1/checklists/{id}/checkItems/{item}", self._delete_check_item),
            ("POST", "/1/labels", self._post_label),
            ("POST", "/1/webhooks", self._post_webhook),
            ("POST", "/1/webhooks/", self._post_webhook),
            ("GET", "/1/webhooks/{id}", self._get_webhook),
            ("DELETE", "/1/webhooks/{id}", self._delete_webhook),
            ("GET", "/1/tokens/{token}/webhooks", self._get_token_webhooks),
        ]

    def _route(
        self, method: str, path: str, handler: Callable[[Mapping[str, str], Json], Any]
    ) -> Route:
        async def endpoint(request: Request) -> Response:
            params: Json = dict(request.query_params)
            denied = self._authenticate(params)
            if denied is not None:
                return PlainTextResponse(denied, status_code=401)
            try:
                body = await request.body()
                if body:
                    params.update(_body_params(body, request.headers.get("content-type", "")))
                params.update(request.path_params)
                body = await run_in_threadpool(self._handle, handler, params)
            except TrelloError as exc:
                return PlainTextResponse(exc.text, status_code=exc.status)
            return Response(body, media_type="application/json")

        return Route(path, endpoint, methods=[method])

    def _handle(self, handler: Callable[[Mapping[str, str], Json], Any], params: Json) -> bytes:
        """Run ``handler`` and serialise its answer, both under the lock: answers share
        values with the emulator's state (no deep copies), so they are encoded before any
        other request or edit can change them."""
        with self._lock:
            token = self.tokens[params["token"]]
            actor = self.members[token.member]["username"]
            self._local.in_request = True
            try:
                result = handler(params, {"actor": actor})
                body = json.dumps(
                    result, ensure_ascii=False, allow_nan=False, separators=(",", ":")
                ).encode("utf-8")
            finally:
                self._local.in_request = False
        self._flush()
        return body

    def _authenticate(self, params: Mapping[str, str]) -> str | None:
        if params.get("key") not in self.keys:
            return "invalid key"
        token = self.tokens.get(params.get("token", ""))
        if token is None:
            return "invalid token"
        if token.expired:
            return "expired token"
        return None

    # -- endpoints (called under the lock)

    def _get_member(self, p: Mapping[str, str], who: Json) -> Any:
        member = self._member(who["actor"]) if p["id"] == "me" else self._find("member", p["id"])
        return {
            **member,
            "idBoards": [
                b for b, x in self.boards.items() if member["id"] in x.get("idMembers", [])
            ],
        }

    def _get_board(self, p: Mapping[str, str], who: Json) -> Any:
        board = self._find("board", p["id"])
        return {k: v for k, v in board.items() if k != "idMembers"}

    def _get_lists(self, p: Mapping[str, str], who: Json) -> Any:
        board = self._find("board", p["id"])
        which = p.get("filter", "open")
        found = [x for x in self.lists.values() if x["idBoard"] == board["id"]]
        if which == "open":
            found = [x for x in found if not x.get("closed")]
        elif which == "closed":
            found = [x for x in found if x.get("closed")]
        return sorted(found, key=lambda x: x.get("pos") or 0)

    def _get_labels(self, p: Mapping[str, str], who: Json) -> Any:
        board = self._find("board", p["id"])
        return [x for x in self.labels.values() if x["idBoard"] == board["id"]]

    def _get_custom_fields(self, p: Mapping[str, str], who: Json) -> Any:
        board = self._find("board", p["id"])
        return [f for f in self.custom_fields.values() if f["idModel"] == board["id"]]

    def _get_board_members(self, p: Mapping[str, str], who: Json) -> Any:
        board = self._find("board", p["id"])
        ids = dict.fromkeys(board.get("idMembers", []))
        return [{k: self.members[m].get(k) for k in ("id", "fullName", "username")} for m in ids]

    def _get_board_checklists(self, p: Mapping[str, str], who: Json) -> Any:
        board = self._find("board", p["id"])
        return [c for c in self.checklists.values() if c["idBoard"] == board["id"]]

    def _get_board_cards(self, p: Mapping[str, str], who: Json) -> Any:
        return self._board_cards(self._find("board", p["id"]), p, p.get("filter", "open"))

    def _get_actions(self, p: Mapping[str, str], who: Json) -> Any:
        return self._actions_page(self._find("board", p["id"]), p)

    def _get_card(self, p: Mapping[str, str], who: Json) -> Any:
        return self._card_json(self._find("card", p["id"]), p)

    def _get_batch(self, p: Mapping[str, str], who: Json) -> Any:
        """``GET /1/batch?urls=/cards/a,/boards/b/lists``: up to 10 GET routes (without the
        version, though ``/1/...`` is accepted too), answered in order, each as an object
        whose one key is the route's status: ``{"200": <its body>}`` or ``{"404": "<text>"}``.

        ``urls`` is split at its commas; each route's own query string is then decoded on its
        own, so a comma inside a route's parameter is sent as ``%2C`` (``%252C`` on the wire).
        """
        routes = [u for u in (p.get("urls") or "").split(",") if u]
        if not routes:
            raise TrelloError(400, "invalid value for urls")
        if len(routes) > BATCH_URLS:
            raise TrelloError(400, f"invalid value for urls: at most {BATCH_URLS} routes")
        out: list[Json] = []
        for route in routes:
            parts = urlsplit(route)
            path = parts.path[2:] if parts.path.startswith("/1/") else parts.path
            params = dict(parse_qsl(parts.query, keep_blank_values=True))
            params.update(key=p["key"], token=p["token"])
            for pattern, handler in self._batchable:
                match = pattern.match(path)
                if match is None:
                    continue
                try:
                    out.append({"200": handler({**params, **match.groupdict()}, who)})
                except TrelloError as exc:
                    out.append({str(exc.status): exc.text})
                break
            else:
                out.append({"404": f"Cannot GET /1{path}"})
        return out

    def _post_card(self, p: Mapping[str, str], who: Json) -> Any:
        if not p.get("idList") or not _ID.match(p["idList"]) or p["idList"] not in self.lists:
            raise TrelloError(400, "invalid value for idList")
        cid = self.add_card(
            p["idList"],
            p.get("name", ""),
            actor=who["actor"],
            desc=p.get("desc", ""),
            due=_nullable(p.get("due")),
            start=_nullable(p.get("start")),
            members=_id_list(p.get("idMembers")),
            labels=_id_list(p.get("idLabels")),
        )
        if "dueComplete" in p:
            self.cards[cid]["dueComplete"] = _true(p["dueComplete"])
        return self._card_json(self.cards[cid], {"fields": "all"})

    def _put_card(self, p: Mapping[str, str], who: Json) -> Any:
        card = self._find("card", p["id"])
        changes: Json = {}
        for key in ("name", "desc", "pos"):
            if key in p:
                changes[key] = p[key]
        for key in ("due", "start"):
            if key in p:
                changes[key] = _nullable(p[key])
        for key in ("dueComplete", "closed"):
            if key in p:
                changes[key] = _true(p[key])
        for key in ("idMembers", "idLabels"):
            if key in p:
                changes[key] = _id_list(p[key])
        if "idList" in p:
            changes["idList"] = p["idList"]
        self._edit(card, changes, who["actor"])
        return self._card_json(card, {"fields": "all"})

    def _delete_card(self, p: Mapping[str, str], who: Json) -> Any:
        self._find("card", p["id"])
        self.delete_card(p["id"], actor=who["actor"])
        return {"limits": {}}

    def _get_items(self, p: Mapping[str, str], who: Json) -> Any:
        card = self._find("card", p["id"])
        return list(self.items.get(card["id"], {}).values())

    def _item_value(self, field: Json, body: Mapping[str, Any]) -> Json | None:
        """Check a customFieldItem body as Trello does; None clears the item."""
        if field["type"] == "list":
            value = body.get("idValue")
            if not value:
                return None
            if value not in {o["id"] for o in field["options"]}:
                raise TrelloError(400, "Invalid custom field item value.")
            return {"idValue": value}
        value = body.get("value")
        if not value:
            return None
        key = "checked" if field["type"] == "checkbox" else field["type"]
        raw = value.get(key) if isinstance(value, dict) else None
        if not isinstance(value, dict) or set(value) != {key} or raw is None:
            raise TrelloError(400, "Invalid custom field item value.")
        raw = str(raw).lower() if key == "checked" else str(raw)
        try:
            if key == "number":
                float(raw)
            elif key == "date":
                parse_trello_time(raw)
            elif key == "checked" and raw not in ("true", "false"):
                raise ValueError(raw)
        except ValueError:
            raise TrelloError(400, "Invalid custom field item value.") from None
        return {"value": {key: raw}}

    def _put_item(self, p: Mapping[str, Any], who: Json) -> Any:
        card = self._find("card", p["id"])
        field = self._find("customField", p["field"])
        if field["idModel"] != card["idBoard"]:
            raise TrelloError(400, "invalid value for idCustomField")
        self._store_item(card, field, self._item_value(field, p), who["actor"])
        return self.items.get(card["id"], {}).get(field["id"], {"id": None})

    def _put_items(self, p: Mapping[str, Any], who: Json) -> Any:
        card = self._find("card", p["id"])
        entries = p.get("customFieldItems")
        if not isinstance(entries, list):
            raise TrelloError(400, "invalid value for customFieldItems")
        checked = []
        for entry in entries:
            field = self._find("customField", entry.get("idCustomField", ""))
            if field["idModel"] != card["idBoard"]:
                raise TrelloError(400, "invalid value for idCustomField")
            checked.append((field, self._item_value(field, entry)))
        for field, value in checked:  # all or nothing
            self._store_item(card, field, value, who["actor"])
        return {}

    def _post_comment(self, p: Mapping[str, str], who: Json) -> Any:
        if not p.get("text"):
            raise TrelloError(400, "invalid value for text")
        self._find("card", p["id"])
        return self.comment(p["id"], p["text"], actor=who["actor"])

    def _post_checklist(self, p: Mapping[str, str], who: Json) -> Any:
        self._find("card", p.get("idCard", ""))
        xid = self.add_checklist(p["idCard"], p.get("name", "Checklist"), actor=who["actor"])
        return self.checklists[xid]

    def _delete_checklist(self, p: Mapping[str, str], who: Json) -> Any:
        checklist = self._find("checklist", p["id"])
        card = self.cards[checklist["idCard"]]
        card["idChecklists"].remove(checklist["id"])
        del self.checklists[checklist["id"]]
        self._act(
            "removeChecklistFromCard",
            who["actor"],
            card,
            checklist={"id": checklist["id"], "name": checklist["name"]},
        )
        return {"limits": {}}

    def _post_check_item(self, p: Mapping[str, str], who: Json) -> Any:
        checklist = self._find("checklist", p["id"])
        if not p.get("name"):
            raise TrelloError(400, "invalid value for name")
        iid = self.add_check_item(
            checklist["id"],
            p["name"],
            checked=_true(p.get("checked")),
            due=_nullable(p.get("due")),
            pos=_position_param(p.get("pos")),
            actor=who["actor"],
        )
        return next(i for i in checklist["checkItems"] if i["id"] == iid)

    def _put_check_item(self, p: Mapping[str, str], who: Json) -> Any:
        changes: Json = {k: p[k] for k in ("state", "name") if k in p}
        if "due" in p:
            changes["due"] = _nullable(p["due"])
        if changes.get("state") not in (None, "complete", "incomplete"):
            raise TrelloError(400, "invalid value for state")
        return self.set_check_item(p["id"], p["item"], actor=who["actor"], **changes)

    def _delete_check_item(self, p: Mapping[str, str], who: Json) -> Any:
        checklist = self._find("checklist", p["id"])
        card = self.cards[checklist["idCard"]]
        _, item = self._check_item(card, p["item"])
        checklist["checkItems"].remove(item)
        self._act(
            "deleteCheckItem",
            who["actor"],
            card,
            checklist={"id": checklist["id"], "name": checklist["name"]},
            checkItem={"id": item["id"], "name": item["name"], "state": item["state"]},
        )
        return {"limits": {}}

    def _post_label(self, p: Mapping[str, str], who: Json) -> Any:
        board = self._find("board", p.get("idBoard", ""))
        lid = self.add_label(board["id"], p.get("name", ""), _nullable(p.get("color")))
        return self.labels[lid]

    def _post_webhook(self, p: Mapping[str, str], who: Json) -> Any:
        # The HEAD check must not hold the lock: the callback may be served by this process.
        self._lock.release()
        try:
            return self._register_webhook(p)
        finally:
            self._lock.acquire()

    def _get_webhook(self, p: Mapping[str, str], who: Json) -> Any:
        return _webhook_json(self._find("webhook", p["id"]))

    def _delete_webhook(self, p: Mapping[str, str], who: Json) -> Any:
        self._find("webhook", p["id"])
        del self.webhooks[p["id"]]
        return {"limits": {}}

    def _get_token_webhooks(self, p: Mapping[str, str], who: Json) -> Any:
        return [_webhook_json(h) for h in self.webhooks.values() if h["token"] == p["token"]]


# --------------------------------------------------------------------------- helpers


class _ActionIndex:
    """Where each action sits in the (append-only) log: by id, by board and by card, with the
    number of comments per card, so a card or a page of actions never scans the whole log.

    Built incrementally: :meth:`catch_up` indexes what was appended since its last call, so
    actions appended by any path (people's edits, requests, :meth:`TrelloEmulator.load_export`)
    are found. Actions are never removed or rewritten in Trello's log, nor in the emulator's.
    """

    def __init__(self, log: list[Json]) -> None:
        self.log = log
        self.size = 0
        self.place: dict[str, int] = {}
        self.board: dict[str, list[int]] = {}
        self.card: dict[str, list[int]] = {}
        self.comments: dict[str, int] = {}

    def catch_up(self) -> None:
        log = self.log
        for i in range(self.size, len(log)):
            action = log[i]
            self.place.setdefault(action["id"], i)
            board, card = _board_of(action), _card_of(action)
            if board is not None:
                self.board.setdefault(board, []).append(i)
            if card is not None:
                self.card.setdefault(card, []).append(i)
                if action.get("type") == "commentCard":
                    self.comments[card] = self.comments.get(card, 0) + 1
        self.size = len(log)


def _webhook_json(hook: Json) -> Json:
    return {k: v for k, v in hook.items() if k != "token"}


def _call(request: urllib.request.Request) -> int | None:
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return None


def _ref_list(lst: Json) -> Json:
    return {"id": lst["id"], "name": lst["name"]}


def _board_of(action: Json) -> str | None:
    board = action.get("data", {}).get("board")
    return board.get("id") if isinstance(board, dict) else None


def _card_of(action: Json) -> str | None:
    card = action.get("data", {}).get("card")
    return card.get("id") if isinstance(card, dict) else None


def _at(action: Json) -> datetime:
    return parse_trello_time(action["date"])


def _kinds(value: str) -> set[str] | None:
    kinds = {k.strip() for k in value.split(",") if k.strip()}
    return None if not kinds or "all" in kinds else kinds


def _true(value: Any) -> bool:
    return str(value).lower() == "true"


def _nullable(value: str | None) -> str | None:
    return None if value in (None, "", "null") else value


def _id_list(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    return [v for v in str(value or "").split(",") if v]


def _int_param(params: Mapping[str, str], name: str, default: int) -> int:
    try:
        return int(float(params.get(name, default)))
    except ValueError:
        raise TrelloError(400, f"invalid value for {name}") from None


def _body_params(body: bytes, content_type: str) -> Json:
    if "json" in content_type:
        try:
            data = json.loads(body)
        except ValueError:
            raise TrelloError(400, "Invalid JSON") from None
        return data if isinstance(data, dict) else {}
    return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))


def _position_param(value: str | None) -> str | float | None:
    if value is None or value in ("top", "bottom"):
        return value
    try:
        return float(value)
    except ValueError:
        raise TrelloError(400, "invalid value for pos") from None


def _short_link(oid: str) -> str:
    return hashlib.sha256(oid.encode()).hexdigest()[:8]


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "card"
