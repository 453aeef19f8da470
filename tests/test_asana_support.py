"""Shared set-up for the Asana tests (no tests here): a seeded emulator, connectors, spec checks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from openapi_core import OpenAPI
from openapi_core.exceptions import OpenAPIError
from openapi_core.testing import MockRequest, MockResponse

from bridge.emulator import Exchange
from connectors.asana.connector import AsanaConfig, AsanaConnector
from connectors.asana.emulator import AsanaEmulator, AsanaState
from connectors.asana.seed import Seeded, SeededProjects, seed, seed_projects

BOT_TOKEN = "bot-pat-0123456789"
HUMAN_TOKEN = "li-pat-0123456789"
HUMAN = "li.wei@example.com"


def strkeys(value: Any) -> Any:
    """The description as OpenAPI tools read it.

    * YAML reads status codes as ints; OpenAPI tools want strings.
    """
    if isinstance(value, dict):
        return {str(k): strkeys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [strkeys(v) for v in value]
    return value


def lift_nullable(spec: dict[str, Any]) -> dict[str, Any]:
    """Asana marks many references nullable as ``allOf: [{$ref}, {nullable: true}]`` (a task's
    ``assignee`` and ``parent``, an event's ``parent``, a custom field's ``enum_value``), and the
    live API sends ``null`` there. openapi-core applies every ``allOf`` branch to ``null``, and
    the referenced schema refuses it; so such a branch points at a nullable copy of its schema.
    This is the description's evident intent, and it is the one change made to it."""
    components = spec["components"]["schemas"]
    extra: dict[str, Any] = {}

    def nullable(schema: dict[str, Any]) -> dict[str, Any]:
        ref = schema.get("$ref")
        if isinstance(ref, str):
            name = ref.rsplit("/", 1)[-1]
            if f"{name}__nullable" not in extra:
                extra[f"{name}__nullable"] = {}
                extra[f"{name}__nullable"] = nullable(walk(components[name]))
            return {"$ref": f"#/components/schemas/{name}__nullable"}
        out = {**schema, "nullable": True}
        if isinstance(schema.get("allOf"), list):
            out["allOf"] = [nullable(b) for b in schema["allOf"]]
        return out

    def walk(value: Any) -> Any:
        if isinstance(value, list):
            return [walk(v) for v in value]
        if not isinstance(value, dict):
            return value
        out = {k: walk(v) for k, v in value.items()}
        branches = out.get("allOf")
        if isinstance(branches, list) and any(
            isinstance(b, dict) and b.get("nullable") for b in branches
        ):
            out = nullable(out)
        return out

    walked: dict[str, Any] = walk(spec)
    walked["components"]["schemas"].update(extra)
    return walked


def load_spec(shared: Path) -> OpenAPI:
    """The official Asana description (3 MB: load it once per session)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with (shared / "specs" / "asana" / "asana_oas.yaml").open("rb") as f:
        raw = yaml.load(f, Loader=loader)
    from openapi_core import Config

    return OpenAPI.from_dict(lift_nullable(strkeys(raw)), config=Config(spec_validator_cls=None))


@dataclass
class SpecCheck:
    """A response hook validating every exchange against the description."""

    spec: OpenAPI
    checked: int = 0
    undocumented: list[tuple[str, str, int]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def __call__(self, e: Exchange) -> None:
        try:
            request = MockRequest(
                "https://app.asana.com", e.method.lower(), e.path, args=dict(e.params)
            )
            content_type = e.response_headers.get("content-type", "application/json")
            response = MockResponse(e.body, status_code=e.status, content_type=content_type)
            self.spec.validate_response(request, response)
            self.checked += 1
        except OpenAPIError as exc:
            if "ResponseNotFound" in type(exc).__name__ or "Unknown response" in str(exc):
                self.undocumented.append((e.method, e.path, e.status))
                return
            cause = exc.__cause__
            self.failures.append(f"{e.method} {e.path}?{e.query} -> {e.status}: {exc} {cause}")
        except Exception as exc:  # a hook must not raise on the server thread
            self.failures.append(f"{e.method} {e.path}: {type(exc).__name__}: {exc}")


class AsanaWorld:
    """A seeded emulator on a real port, and connectors as the bot and as a person."""

    def __init__(self, tasks: int = 0, *, projects: int | None = None, **config: Any) -> None:
        self.state = AsanaState()
        self.seeded: Seeded = seed(self.state, tasks=tasks)
        self.team: SeededProjects | None = None
        """The "projects" layout's team, seeded only when ``projects`` is given."""
        if projects is not None:
            self.team = seed_projects(self.state, self.seeded, projects=projects)
        self.emulator = AsanaEmulator(
            self.state,
            tokens={BOT_TOKEN: self.seeded.bot, HUMAN_TOKEN: self.seeded.users[HUMAN]},
        )
        self.config = config
        self.connectors: list[AsanaConnector] = []

    def start(self) -> AsanaWorld:
        self.emulator.start()
        return self

    def stop(self) -> None:
        for c in self.connectors:
            c.close()
        self.emulator.stop()

    def connector(
        self, name: str = "asana", *, token: str = BOT_TOKEN, **config: Any
    ) -> AsanaConnector:
        settings: dict[str, Any] = {
            "token": "env:ASANA_TOKEN",
            "base_url": self.emulator.api_url,
            "workspace": self.seeded.workspace,
            "project": self.seeded.pipeline,
            "max_attempts": 4,
            **self.config,
            **config,
        }
        c = AsanaConnector(name, AsanaConfig.model_validate(settings), token=token)
        self.connectors.append(c)
        return c

    def projects_connector(
        self, name: str = "asana", *, token: str = BOT_TOKEN, **config: Any
    ) -> AsanaConnector:
        """A connector in the "projects" layout, on the seeded team."""
        assert self.team is not None, "world(projects=...) seeds the team"
        settings = {"layout": "projects", "project": None, "team": self.team.team, **config}
        return self.connector(name, token=token, **settings)

    def person(self) -> AsanaConnector:
        """The connector a person (Li Wei) would use: edits made 'in Asana'."""
        return self.connector("li", token=HUMAN_TOKEN)

    def field(self, name: str) -> str:
        return self.state.field_gid(name)

    def section(self, name: str) -> str:
        return self.state.section_gid(self.seeded.pipeline, name)


def world(tasks: int = 0, *, projects: int | None = None, **config: Any) -> Iterator[AsanaWorld]:
    w = AsanaWorld(tasks, projects=projects, **config).start()
    try:
        yield w
    finally:
        w.stop()


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)
