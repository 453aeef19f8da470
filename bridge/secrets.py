"""Secrets are references to environment variables, never values in files.

A config file says ``token = "env:JIRA_TOKEN"``; the value is read from the environment only
when a connector needs it, and is never logged, stored or exported. :func:`known_secrets` lets
the logging and HTTP layers redact any secret that has been revealed in this process.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

from bridge.errors import UserError

_REF = re.compile(r"^env:([A-Za-z_][A-Za-z0-9_]*)$")

# Values revealed so far; redaction needs to know them. A set of strings guarded by a lock: the
# only process-wide state, and it only ever grows with values that must never be printed.
_revealed: set[str] = set()
_lock = threading.Lock()


class SecretRef:
    """A reference to a secret held in an environment variable."""

    __slots__ = ("var",)

    def __init__(self, var: str) -> None:
        self.var = var

    def reveal(self, environ: dict[str, str] | None = None) -> str:
        """The secret's value. Raises UserError naming the variable if it is not set."""
        env = os.environ if environ is None else environ
        value = env.get(self.var)
        if not value:
            raise UserError(
                f"environment variable {self.var} is not set; export it with the secret "
                f"(the config refers to it as env:{self.var})"
            )
        register_secret(value)
        return value

    def __repr__(self) -> str:
        return f"SecretRef('env:{self.var}')"

    def __str__(self) -> str:
        return f"env:{self.var}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretRef) and other.var == self.var

    def __hash__(self) -> int:
        return hash(self.var)

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            _parse, serialization=core_schema.plain_serializer_function_ser_schema(str)
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {"type": "string", "pattern": _REF.pattern, "examples": ["env:MY_TOKEN"]}


def _parse(value: Any) -> SecretRef:
    if isinstance(value, SecretRef):
        return value
    if not isinstance(value, str):
        raise ValueError('must be a reference to an environment variable, like "env:MY_TOKEN"')
    m = _REF.match(value.strip())
    if not m:
        # Never echo the value: it may be the secret itself.
        raise ValueError(
            "a literal secret is not allowed in a file; put it in an environment variable "
            'and write the reference instead, e.g. "env:MY_TOKEN"'
        )
    return SecretRef(m.group(1))


Secret = SecretRef
"""Config field type for a secret: accepts only ``"env:NAME"``."""


def register_secret(value: str) -> None:
    """Remember a secret value so that :func:`redact` removes it from text."""
    if value and len(value) >= 4:
        with _lock:
            _revealed.add(value)


def known_secrets() -> frozenset[str]:
    with _lock:
        return frozenset(_revealed)


def redact(text: str, extra: tuple[str, ...] = ()) -> str:
    """Replace every known secret (and ``extra`` ones) in ``text`` with ``***``."""
    for secret in sorted(known_secrets() | set(extra), key=len, reverse=True):
        if secret and secret in text:
            text = text.replace(secret, "***")
    return text
