"""The canonical sales project: the hub every tool's records map onto.

It covers the standard tracking table of a sales-project tracking plan (DESIGN.md section 2).
Money is Decimal plus an ISO 4217 code, never float. Every datetime is timezone-aware and held
in UTC; a naive datetime is refused rather than guessed.

Field paths: mappings, merges and the event log address fields by dotted path
(``amount``, ``customer.name``, ``custom.region``). :func:`field_paths`, :func:`get_path` and
:func:`set_path` are the one place that knows how a path resolves.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import StrEnum
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    field_validator,
)


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("datetime must be timezone-aware (e.g. 2026-01-31T09:00:00+08:00)")
    return value.astimezone(UTC)


UtcDateTime = Annotated[datetime, AfterValidator(_utc)]
"""A timezone-aware datetime, normalised to UTC."""

JsonScalar = str | int | float | bool | None
CustomValue = JsonScalar | list[JsonScalar] | dict[str, JsonScalar]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_enum_values=True)


# --------------------------------------------------------------------------- enums


class Status(StrEnum):
    open = "open"
    won = "won"
    lost = "lost"
    on_hold = "on_hold"


class Level(StrEnum):
    """Ordinal level used for priority, urgency, importance, intent, complexity and risk."""

    low = "low"
    medium = "medium"
    high = "high"
    critical = "critical"


LEVEL_ORDER = {lvl.value: i for i, lvl in enumerate(Level)}


class StakeholderRole(StrEnum):
    decision_maker = "decision_maker"
    economic_buyer = "economic_buyer"
    influencer = "influencer"
    champion = "champion"
    user = "user"
    technical_buyer = "technical_buyer"
    blocker = "blocker"
    other = "other"


class Attitude(StrEnum):
    supportive = "supportive"
    neutral = "neutral"
    opposed = "opposed"
    unknown = "unknown"


class DeliverableStatus(StrEnum):
    """Ordered: a rule can ask for a deliverable at status >= submitted."""

    missing = "missing"
    draft = "draft"
    submitted = "submitted"
    approved = "approved"


DELIVERABLE_ORDER = {s.value: i for i, s in enumerate(DeliverableStatus)}


class RiskStatus(StrEnum):
    open = "open"
    mitigated = "mitigated"
    closed = "closed"


# --------------------------------------------------------------------------- value objects

_CURRENCY = re.compile(r"^[A-Z]{3}$")


class Money(_Model):
    """An amount of money. ``amount`` is a Decimal; ``currency`` an ISO 4217 code."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    amount: Decimal
    currency: str = Field(description="ISO 4217 code, e.g. USD, EUR, CNY")

    @field_validator("amount", mode="before")
    @classmethod
    def _no_float(cls, v: Any) -> Any:
        # A float has already lost cents (0.1 + 0.2); go through its shortest repr instead.
        return Decimal(repr(v)) if isinstance(v, float) else v

    @field_validator("currency")
    @classmethod
    def _iso(cls, v: str) -> str:
        v = v.strip().upper()
        if not _CURRENCY.match(v):
            raise ValueError("currency must be a 3-letter ISO 4217 code such as USD or CNY")
        return v


class Person(_Model):
    """A person in a tool. The e-mail is the identity used to match users across tools."""

    name: str | None = None
    email: str | None = None


class Customer(_Model):
    name: str
    external_id: str | None = None


class Stakeholder(_Model):
    name: str
    title: str | None = None
    role: StakeholderRole = StakeholderRole.other
    attitude: Attitude = Attitude.unknown
    email: str | None = None


class Need(_Model):
    description: str
    pain_point: bool = False
    priority: Level | None = None


class Competitor(_Model):
    name: str
    position: str | None = None
    threat: Level | None = None


class Task(_Model):
    title: str
    stage: str | None = None
    owner: Person | None = None
    start: date | None = None
    due: date | None = None
    done: bool = False
    done_at: UtcDateTime | None = None
    resources: str | None = None
    steps: str | None = None
    measure: str | None = None


class Deliverable(_Model):
    kind: str = Field(description="e.g. needs_analysis, proposal, contract_review")
    stage: str | None = None
    title: str | None = None
    status: DeliverableStatus = DeliverableStatus.missing
    link: str | None = None
    submitted_at: UtcDateTime | None = None
    approved_at: UtcDateTime | None = None


class Milestone(_Model):
    name: str
    due: date | None = None
    achieved_at: UtcDateTime | None = None


class Action(_Model):
    what: str
    at: UtcDateTime
    by: str | None = None


class NextStep(_Model):
    what: str
    owner: Person | None = None
    due: date | None = None


class Risk(_Model):
    description: str
    severity: Level = Level.medium
    likelihood: Level | None = None
    mitigation: str | None = None
    owner: Person | None = None
    status: RiskStatus = RiskStatus.open
    raised_at: UtcDateTime | None = None


class Payment(_Model):
    due: date | None = None
    amount: Money
    received_at: UtcDateTime | None = None


class Link(_Model):
    """Where this project lives in one configured connector."""

    connector: str
    ref: str
    url: str | None = None
    version: str | None = None


class Admission(_Model):
    """Whether the opportunity is a tracked sales project, under which rule version, and why."""

    tracked: bool
    rule_version: str
    reason: str
    decided_at: UtcDateTime


# --------------------------------------------------------------------------- lifecycle


class Stage(_Model):
    """A lifecycle stage. ``key`` is stable (stored, mapped, used in rules); labels translate."""

    key: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    label_en: str
    label_zh: str = Field(description="zh-CN label")
    optional: bool = False

    def label(self, lang: str) -> str:
        return self.label_zh if lang.lower().startswith("zh") else self.label_en


DEFAULT_STAGES: tuple[Stage, ...] = (
    Stage(key="lead", label_en="Lead & first contact", label_zh="线索挖掘与初步接触"),
    Stage(
        key="qualification",
        label_en="Needs confirmation & qualification",
        label_zh="需求确认与机会评估",
    ),
    Stage(key="proposal", label_en="Proposal", label_zh="方案制定与提交"),
    Stage(
        key="negotiation",
        label_en="Negotiation & contract review",
        label_zh="商务谈判与合同评审",
    ),
    Stage(key="signing", label_en="Signing & kickoff", label_zh="合同签订与项目启动"),
    Stage(
        key="delivery",
        label_en="Delivery & payment collection",
        label_zh="项目交付与回款跟踪",
        optional=True,
    ),
)


class Lifecycle(_Model):
    """The ordered stages projects move through."""

    stages: list[Stage] = Field(default_factory=lambda: list(DEFAULT_STAGES), min_length=1)

    @field_validator("stages")
    @classmethod
    def _unique(cls, stages: list[Stage]) -> list[Stage]:
        seen: set[str] = set()
        for s in stages:
            if s.key in seen:
                raise ValueError(f"stage key {s.key!r} appears twice; keys must be unique")
            seen.add(s.key)
        return stages

    @property
    def keys(self) -> list[str]:
        return [s.key for s in self.stages]

    def index(self, key: str) -> int:
        """Position of a stage; raises KeyError for an unknown key."""
        for i, s in enumerate(self.stages):
            if s.key == key:
                return i
        raise KeyError(key)

    def get(self, key: str) -> Stage:
        return self.stages[self.index(key)]


# --------------------------------------------------------------------------- the project


def new_project_id() -> str:
    """A stable canonical id. Short enough to stamp into a label or a custom field."""
    return "sb-" + uuid.uuid4().hex[:16]


class SalesProject(_Model):
    """One tracked sales opportunity, in every tool's common terms."""

    # identity
    id: str = Field(default_factory=new_project_id, description="stable canonical id")
    code: str | None = Field(None, description="project number")
    name: str
    customer: Customer | None = None
    owner: Person | None = None
    team: str | None = None
    department: str | None = None
    # lifecycle
    stage: str = Field("lead", description="key of a configured lifecycle stage")
    stage_entered_at: UtcDateTime | None = None
    status: Status = Status.open
    lost_reason: str | None = None
    # priority (drives update cadence)
    priority: Level = Level.medium
    urgency: Level | None = None
    importance: Level | None = None
    # value
    amount: Money | None = None
    probability: int | None = Field(None, ge=0, le=100, description="percent")
    expected_close_date: date | None = None
    # admission
    contract_value: Money | None = None
    intent: Level | None = None
    complexity: Level | None = None
    admission: Admission | None = None
    # people and substance
    stakeholders: list[Stakeholder] = Field(default_factory=list)
    needs: list[Need] = Field(default_factory=list)
    competitors: list[Competitor] = Field(default_factory=list)
    # work
    tasks: list[Task] = Field(default_factory=list)
    deliverables: list[Deliverable] = Field(default_factory=list)
    milestones: list[Milestone] = Field(default_factory=list)
    # progress
    description: str | None = None
    actions: list[Action] = Field(default_factory=list)
    next_steps: list[NextStep] = Field(default_factory=list)
    # risk
    risks: list[Risk] = Field(default_factory=list)
    # after the win
    payments: list[Payment] = Field(default_factory=list)
    delivery_progress: int | None = Field(None, ge=0, le=100, description="percent delivered")
    # freshness
    created_at: UtcDateTime | None = None
    updated_at: UtcDateTime | None = None
    last_meaningful_update_at: UtcDateTime | None = Field(
        None, description="last change made by a person; the bridge's own writes never count"
    )
    last_meaningful_update_by: str | None = None
    # links and custom
    links: dict[str, Link] = Field(default_factory=dict, description="connector name -> link")
    custom: dict[str, CustomValue] = Field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The JSON form stored in the database and compared by the merge."""
        return self.model_dump(mode="json")


# Fields the sync engine manages itself and mappings may never write.
ENGINE_FIELDS = frozenset(
    {
        "id",
        "links",
        "admission",
        "created_at",
        "updated_at",
        "last_meaningful_update_at",
        "last_meaningful_update_by",
    }
)


# --------------------------------------------------------------------------- field paths


class PathError(KeyError):
    """A dotted path that does not name a canonical field."""


def _unwrap_optional(tp: Any) -> Any:
    """``X | None`` -> ``X``; anything else unchanged (a list is not unwrapped)."""
    if get_origin(tp) not in (Union, UnionType):
        return tp
    args = [a for a in get_args(tp) if a is not type(None)]
    return args[0] if len(args) == 1 else tp


def path_annotation(path: str) -> Any:
    """The type annotation a dotted path resolves to. Raises PathError if it does not exist.

    ``custom.<anything>`` is always valid (custom holds mapped fields with no canonical home).
    """
    parts = path.split(".")
    model: type[BaseModel] = SalesProject
    tp: Any = None
    for i, part in enumerate(parts):
        info = model.model_fields.get(part)
        if info is None:
            raise PathError(path)
        # Keep the field's constraints (probability 0..100) with its type.
        tp = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
        if part == "custom" and model is SalesProject:
            if len(parts) == 2 and parts[1]:
                return CustomValue
            if len(parts) == 1:
                return tp
            raise PathError(path)
        inner = _unwrap_optional(tp)
        if i < len(parts) - 1:
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                model = inner
            else:
                raise PathError(path)
    return tp


def is_valid_path(path: str) -> bool:
    try:
        path_annotation(path)
    except PathError:
        return False
    return True


def field_paths() -> list[str]:
    """Every top-level and nested scalar path a mapping may target (``custom.*`` aside)."""
    out: list[str] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            inner = _unwrap_optional(info.annotation)
            out.append(prefix + name)
            if isinstance(inner, type) and issubclass(inner, BaseModel) and inner is not Money:
                walk(inner, prefix + name + ".")

    walk(SalesProject, "")
    return out


_ADAPTERS: dict[str, TypeAdapter[Any]] = {}


def path_adapter(path: str) -> TypeAdapter[Any]:
    """A cached TypeAdapter that validates a value for ``path`` (e.g. for mapping output)."""
    ad = _ADAPTERS.get(path)
    if ad is None:
        ad = TypeAdapter(path_annotation(path))
        _ADAPTERS[path] = ad
    return ad


def get_path(data: dict[str, Any], path: str) -> Any:
    """Read a dotted path from a project's JSON form; a missing step reads as None."""
    cur: Any = data
    for part in path.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """Write a dotted path into a project's JSON form, creating parents as needed."""
    parts = path.split(".")
    cur = data
    for part in parts[:-1]:
        nxt = cur.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[part] = nxt
        cur = nxt
    cur[parts[-1]] = value


def to_json_value(path: str, value: Any) -> Any:
    """Validate ``value`` for ``path`` and return its JSON form (what merges compare)."""
    ad = path_adapter(path)
    return ad.dump_python(ad.validate_python(value), mode="json")


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the canonical project, for ops staff and other tools."""
    schema = SalesProject.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://salesbridge.dev/schema/sales-project.json"
    return schema
