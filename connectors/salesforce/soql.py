"""The subset of SOQL the Salesforce emulator answers, parsed into a small tree.

Grammar (keywords in any case)::

    query   := SELECT item ("," item)* FROM name [WHERE cond]
               [ORDER BY order ("," order)*] [LIMIT int] [OFFSET int]
    item    := path | "(" query ")"          -- a child subquery: FROM a child relationship
    order   := path [ASC | DESC] [NULLS (FIRST | LAST)]
    cond    := term (OR term)*
    term    := factor (AND factor)*
    factor  := NOT factor | "(" cond ")" | path op value | path [NOT] IN "(" value ("," value)* ")"
    op      := "=" | "!=" | "<>" | "<" | "<=" | ">" | ">=" | LIKE
    value   := 'text' | number | true | false | null | 2024-03-01
             | 2024-03-01T09:00:00[.000](Z|±hh:mm)

A ``path`` is a field or a relationship path (``Account.Name``, ``Owner.Email``). Evaluation
needs the emulator's lookups, so it is done by :func:`matches` and :func:`sort_key` with a
``get(path)`` function for one record.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

__all__ = ["Compare", "Cond", "Junction", "Not", "Order", "Query", "SoqlError", "matches", "parse"]


class SoqlError(ValueError):
    """The query is not in the subset (or not SOQL): answered as MALFORMED_QUERY."""


@dataclass(frozen=True)
class Compare:
    path: str
    op: str  # = != < <= > >= like in notin
    value: Any


@dataclass(frozen=True)
class Junction:
    op: str  # and | or
    items: tuple[Cond, ...]


@dataclass(frozen=True)
class Not:
    item: Cond


Cond = Compare | Junction | Not


@dataclass(frozen=True)
class Order:
    path: str
    descending: bool = False
    nulls_last: bool = False


@dataclass(frozen=True)
class Query:
    fields: tuple[str, ...]
    subqueries: tuple[Query, ...]
    sobject: str
    where: Cond | None = None
    order: tuple[Order, ...] = ()
    limit: int | None = None
    offset: int = 0


_TOKEN = re.compile(
    r"""\s*(?:
      (?P<str>'(?:[^'\\]|\\.)*')
    | (?P<dt>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,3})?(?:Z|[+-]\d{2}:?\d{2}))
    | (?P<date>\d{4}-\d{2}-\d{2})
    | (?P<num>-?\d+(?:\.\d+)?)
    | (?P<op><=|>=|!=|<>|=|<|>)
    | (?P<punct>[(),])
    | (?P<word>[A-Za-z_][A-Za-z0-9_.]*)
    )""",
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}
_KEYWORDS = frozenset(
    ("select", "from", "where", "and", "or", "not", "in", "like", "order", "by", "asc", "desc",
     "nulls", "first", "last", "limit", "offset", "true", "false", "null")
)  # fmt: skip


def _unquote(text: str) -> str:
    body = text[1:-1]
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), body)


def parse_datetime(text: str) -> datetime:
    """A SOQL or API datetime (``Z``, ``+0000`` or ``+00:00``) as an aware UTC datetime."""
    text = text.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    elif re.search(r"[+-]\d{4}$", text):
        text = text[:-2] + ":" + text[-2:]
    at = datetime.fromisoformat(text)
    if at.tzinfo is None:
        raise ValueError(f"{text!r} has no timezone")
    return at.astimezone(UTC)


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens: list[tuple[str, Any]] = []
        pos = 0
        text = text.strip()
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None or m.end() == pos:
                raise SoqlError(f"unexpected text at position {pos}: {text[pos : pos + 20]!r}")
            pos = m.end()
            kind = m.lastgroup
            assert kind is not None
            raw = m.group(kind)
            if kind == "str":
                self.tokens.append(("value", _unquote(raw)))
            elif kind == "dt":
                self.tokens.append(("value", parse_datetime(raw)))
            elif kind == "date":
                self.tokens.append(("value", date.fromisoformat(raw)))
            elif kind == "num":
                self.tokens.append(("value", float(raw) if "." in raw else int(raw)))
            elif kind == "word" and raw.lower() in _KEYWORDS:
                low = raw.lower()
                literal = {"true": True, "false": False, "null": None}
                if low in literal:
                    self.tokens.append(("value", literal[low]))
                else:
                    self.tokens.append(("kw", low))
            else:
                self.tokens.append((kind if kind != "punct" else raw, raw))
        self.i = 0

    # -- token helpers

    def peek(self, kind: str, value: Any = None) -> bool:
        if self.i >= len(self.tokens):
            return False
        k, v = self.tokens[self.i]
        return k == kind and (value is None or v == value)

    def take(self, kind: str, value: Any = None) -> Any:
        if not self.peek(kind, value):
            got = self.tokens[self.i][1] if self.i < len(self.tokens) else "end of query"
            raise SoqlError(f"expected {value or kind}, got {got!r}")
        self.i += 1
        return self.tokens[self.i - 1][1]

    def accept(self, kind: str, value: Any = None) -> bool:
        if self.peek(kind, value):
            self.i += 1
            return True
        return False

    # -- grammar

    def query(self) -> Query:
        self.take("kw", "select")
        fields: list[str] = []
        subs: list[Query] = []
        while True:
            if self.accept("("):
                subs.append(self.query())
                self.take(")")
            else:
                fields.append(self.take("word"))
            if not self.accept(","):
                break
        self.take("kw", "from")
        sobject = self.take("word")
        where = self.cond() if self.accept("kw", "where") else None
        order: list[Order] = []
        if self.accept("kw", "order"):
            self.take("kw", "by")
            while True:
                path = self.take("word")
                desc = self.accept("kw", "desc")
                if not desc:
                    self.accept("kw", "asc")
                nulls_last = desc
                if self.accept("kw", "nulls"):
                    nulls_last = self.accept("kw", "last")
                    if not nulls_last:
                        self.take("kw", "first")
                order.append(Order(path, desc, nulls_last))
                if not self.accept(","):
                    break
        limit = self._int() if self.accept("kw", "limit") else None
        offset = self._int() if self.accept("kw", "offset") else 0
        return Query(tuple(fields), tuple(subs), sobject, where, tuple(order), limit, offset)

    def _int(self) -> int:
        value = self.take("value")
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise SoqlError(f"expected a whole number, got {value!r}")
        return value

    def cond(self) -> Cond:
        items = [self.term()]
        while self.accept("kw", "or"):
            items.append(self.term())
        return items[0] if len(items) == 1 else Junction("or", tuple(items))

    def term(self) -> Cond:
        items = [self.factor()]
        while self.accept("kw", "and"):
            items.append(self.factor())
        return items[0] if len(items) == 1 else Junction("and", tuple(items))

    def factor(self) -> Cond:
        if self.accept("kw", "not"):
            return Not(self.factor())
        if self.accept("("):
            inner = self.cond()
            self.take(")")
            return inner
        path = self.take("word")
        negate = self.accept("kw", "not")
        if self.accept("kw", "in"):
            self.take("(")
            values = [self.take("value")]
            while self.accept(","):
                values.append(self.take("value"))
            self.take(")")
            return Compare(path, "notin" if negate else "in", tuple(values))
        if negate:
            raise SoqlError("NOT after a field must be followed by IN")
        if self.accept("kw", "like"):
            value = self.take("value")
            if not isinstance(value, str):
                raise SoqlError("LIKE needs a quoted pattern")
            return Compare(path, "like", value)
        op = self.take("op")
        return Compare(path, "!=" if op == "<>" else op, self.take("value"))


def parse(text: str) -> Query:
    """The query tree of ``text``; SoqlError if it is outside the subset."""
    p = _Parser(text)
    q = p.query()
    if p.i != len(p.tokens):
        raise SoqlError(f"unexpected {p.tokens[p.i][1]!r} after the query")
    return q


# --------------------------------------------------------------------------- evaluation

Getter = Callable[[str], Any]


def _coerce(stored: Any, literal: Any) -> Any:
    """The stored value in the literal's terms (API values are JSON: dates are text)."""
    if stored is None or literal is None:
        return stored
    try:
        if isinstance(literal, datetime):
            return parse_datetime(stored) if isinstance(stored, str) else stored
        if isinstance(literal, date):
            return date.fromisoformat(stored[:10]) if isinstance(stored, str) else stored
    except ValueError:
        return None
    if isinstance(literal, bool):
        return bool(stored)
    if isinstance(literal, int | float):
        return float(stored) if isinstance(stored, int | float) else None
    return stored


def _like(value: Any, pattern: str) -> bool:
    if not isinstance(value, str):
        return False
    regex = "".join(
        ".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern.lower()
    )
    return re.fullmatch(regex, value.lower(), re.DOTALL) is not None


def _compare(value: Any, op: str, literal: Any) -> bool:
    if op == "like":
        return _like(value, literal)
    if op in ("in", "notin"):
        hit = any(_equal(_coerce(value, lit), lit) for lit in literal)
        return hit if op == "in" else not hit
    v = _coerce(value, literal)
    if op == "=":
        return _equal(v, literal)
    if op == "!=":
        return not _equal(v, literal)
    if v is None or literal is None:
        return False
    try:
        return bool(
            {"<": v < literal, "<=": v <= literal, ">": v > literal, ">=": v >= literal}[op]
        )
    except TypeError:
        return False


def _equal(value: Any, literal: Any) -> bool:
    if isinstance(value, str) and isinstance(literal, str):
        return value.lower() == literal.lower()  # SOQL text comparison ignores case
    return bool(value == literal)


def matches(cond: Cond | None, get: Getter) -> bool:
    """Whether the record behind ``get`` satisfies ``cond``."""
    if cond is None:
        return True
    if isinstance(cond, Compare):
        return _compare(get(cond.path), cond.op, cond.value)
    if isinstance(cond, Not):
        return not matches(cond.item, get)
    if cond.op == "and":
        return all(matches(c, get) for c in cond.items)
    return any(matches(c, get) for c in cond.items)


def sort_key(value: Any) -> tuple[int, Any]:
    """A key that orders nulls apart and compares text case-insensitively."""
    if value is None:
        return (1, "")
    if isinstance(value, str):
        try:
            return (0, parse_datetime(value).isoformat()) if "T" in value else (0, value.lower())
        except ValueError:
            return (0, value.lower())
    if isinstance(value, bool):
        return (0, int(value))
    return (0, value)
