"""Rule files: reading, checking (every problem at once, as file / [section] key / fix) and
compiling them into a :class:`RulePack`.

The format is described for ops staff in ``docs/rules.md``; ``rules/default.toml`` is the
standard plan and a complete example. Several files can make one pack (``[rules] files`` in
the config): named things (rules, checklists, counters, triggers, stage criteria) are merged
and must be unique across the files; ``[settings]``, ``[admission]`` and ``[cadence]`` may be
written in one file only.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, Literal

import cel
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bridge.errors import Problem, UserError
from bridge.model import DEFAULT_STAGES, LEVEL_ORDER, Lifecycle
from bridge.rules.calendar import Calendar, Gap, parse_duration, parse_gap
from bridge.rules.engine import (
    LANGS,
    AdmissionDecision,
    AdmissionRule,
    Checklist,
    Evaluator,
    Expr,
    Reads,
    Rule,
    analyse,
)
from bridge.rules.facts import CHANGES, FACTS, ROLES, Change, FactPlan, Trigger, derive
from bridge.store.store import Event

__all__ = ["SEVERITIES", "RulePack", "default_pack_path", "evaluate", "load_rules", "parse_rules"]

SEVERITIES: Final = ("info", "warning", "critical")
PERIODS: Final = ("none", "stage", "last_update", "trigger")
_ID = re.compile(r"^[a-z][a-z0-9_]*$")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_STATUSES: Final = ("open", "won", "lost", "on_hold")
_DETAIL_PLACEHOLDERS: Final = frozenset({"since"})


def default_pack_path() -> Path:
    """The shipped ``rules/default.toml``: the standard plan every team starts from."""
    from bridge.shipped import default_rules

    return default_rules()


# --------------------------------------------------------------------------- the pack


class RulePack(Evaluator):
    """A loaded, checked and compiled set of rule files.

    ``pack.evaluate(project, events, now, team)`` evaluates one project (see
    :class:`~bridge.rules.engine.Evaluator`). Compile once and reuse: each expression keeps a
    bounded memo of its results, which is what makes large sweeps fast.
    """

    def __init__(
        self,
        *,
        sources: Sequence[str],
        name: str,
        lifecycle: Lifecycle,
        escalate_after: timedelta | None,
        evaluator: Evaluator,
    ) -> None:
        super().__init__(
            evaluator.plan,
            evaluator.checklists,
            evaluator.admission_rules,
            evaluator.admission_version,
            evaluator.otherwise,
            evaluator.rules,
        )
        self.sources = tuple(sources)
        self.name = name
        self.lifecycle = lifecycle
        self.escalate_after = escalate_after
        self._by_id = {r.id: r for r in self.rules}

    def __repr__(self) -> str:
        return f"RulePack({self.name!r}, {len(self.rules)} rules from {', '.join(self.sources)})"

    def rule(self, rule_id: str) -> Rule:
        """The rule with this id; KeyError if the pack has none."""
        return self._by_id[rule_id]

    @property
    def rule_ids(self) -> list[str]:
        return [r.id for r in self.rules]


# --------------------------------------------------------------------------- file structure


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Top(_Strict):
    format: Literal[1]
    name: str | None = None
    settings: dict[str, Any] | None = None
    admission: dict[str, Any] | None = None
    checklists: dict[str, Any] = Field(default_factory=dict)
    counters: dict[str, Any] = Field(default_factory=dict)
    stages: dict[str, Any] = Field(default_factory=dict)
    cadence: dict[str, Any] | None = None
    triggers: dict[str, Any] = Field(default_factory=dict)
    rules: dict[str, Any] = Field(default_factory=dict)


class _Settings(_Strict):
    base_currency: str | None = None
    fx: dict[str, float | int] = Field(default_factory=dict)
    escalate_after: str | None = None
    severity: str = "warning"
    statuses: list[str] = Field(default_factory=lambda: ["open"])
    deliverable_kinds: list[str] = Field(default_factory=list)


class _Options(_Strict):
    """What every kind of rule may say."""

    title: dict[str, str]
    message: dict[str, str] | None = None
    severity: str | None = None
    when: str | None = None
    statuses: list[str] | None = None
    period: str | None = None
    escalate_after: str | None = None
    annotate: bool = False
    note: dict[str, str] | None = None
    evidence: list[str] = Field(default_factory=list)


class _Rule(_Options):
    check: str


class _Stage(_Strict):
    deliverables: list[str] = Field(default_factory=list)
    entry: dict[str, Any] = Field(default_factory=dict)
    exit: dict[str, Any] = Field(default_factory=dict)


class _Match(_Strict):
    field: str = Field(min_length=1)
    change: str = "any"
    value: Any = None
    min_pct: float | int = 0
    min_severity: str = "high"
    meaningful_only: bool = True


class _Counter(_Match):
    window: str


class _Trigger(_Match, _Options):
    update_within: str


class _Cadence(_Options):
    title: dict[str, str] = Field(
        default_factory=lambda: {
            "en": "Updated within the cadence for its stage and priority",
            "zh-CN": "按阶段与优先级规定的频率更新",
        }
    )
    default: str | None = None
    max_gap: dict[str, Any] = Field(default_factory=dict)


class _Checklist(_Strict):
    title: dict[str, str]
    items: dict[str, str] = Field(min_length=1)


class _AdmissionRule(_Strict):
    when: str
    track: bool
    reason: dict[str, str]


class _Admission(_Strict):
    version: str = Field(min_length=1)
    otherwise: Literal["track", "drop"] = "drop"
    otherwise_reason: dict[str, str] = Field(
        default_factory=lambda: {
            "en": "no admission rule matched",
            "zh-CN": "不符合任何立项条件",
        }
    )
    rules: dict[str, Any] = Field(default_factory=dict)


_EXAMPLES: Final = {
    "format": "format = 1",
    "check": 'check = "deliverable.proposal >= SUBMITTED"',
    "title": 'title = { en = "Proposal submitted", "zh-CN" = "方案已提交" }',
    "when": 'when = "contract_value != null && contract_value >= 500000.0"',
    "track": "track = true",
    "reason": 'reason = { en = "Large contract", "zh-CN" = "大额合同" }',
    "items": 'items = { budget = "has_budget", authority = "stakeholders.decision_maker >= 1" }',
    "window": 'window = "90d"',
    "update_within": 'update_within = "24h"',
    "version": 'version = "2026.1"',
    "field": 'field = "expected_close_date"',
}


def _where(section: Sequence[str], key: str = "") -> str:
    head = f"[{'.'.join(section)}]" if section else ""
    return f"{head} {key}".strip()


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _close(word: str, choices: Iterable[str]) -> str:
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean `{found[0]}`? " if found else ""


# --------------------------------------------------------------------------- sample facts

_SAMPLE_NOW = datetime(2026, 6, 15, 9, 0, tzinfo=UTC)
_SAMPLE_PROJECT: Final[dict[str, Any]] = {
    "id": "sb-sample",
    "name": "sample",
    "stage": "proposal",
    "status": "open",
    "priority": "high",
    "urgency": "medium",
    "importance": "medium",
    "intent": "high",
    "complexity": "medium",
    "amount": {"amount": "100000", "currency": "USD"},
    "contract_value": {"amount": "100000", "currency": "USD"},
    "probability": 40,
    "expected_close_date": "2026-07-31",
    "owner": {"name": "A", "email": "a@example.com"},
    "team": "east",
    "stage_entered_at": "2026-06-01T09:00:00Z",
    "created_at": "2026-05-01T09:00:00Z",
    "last_meaningful_update_at": "2026-06-10T09:00:00Z",
}


def _sample_facts(plan: FactPlan) -> dict[str, Any]:
    """Facts of a typical project with every nullable fact set, for checking expressions."""
    sample = dict(_SAMPLE_PROJECT)
    if plan.base_currency:
        for k in ("amount", "contract_value"):
            sample[k] = {"amount": "100000", "currency": plan.base_currency}
    events = [
        Event(
            project_id="sb-sample",
            at=datetime(2026, 6, 1, 9, tzinfo=UTC),
            field="stage",
            old="qualification",
            new="proposal",
            source="sample",
            meaningful=True,
        )
    ]
    facts, _ = derive(sample, events, _SAMPLE_NOW, Calendar(), plan)
    facts["checklist"] = {}
    return facts


# --------------------------------------------------------------------------- the loader


@dataclass
class _Doc:
    source: str
    top: _Top
    raw: dict[str, Any]


@dataclass
class _Decl:
    """Names declared across all files, for checking references in expressions."""

    kinds: dict[str, None] = field(default_factory=dict)
    counters: dict[str, str] = field(default_factory=dict)  # name -> file
    checklists: dict[str, str] = field(default_factory=dict)
    triggers: dict[str, str] = field(default_factory=dict)
    rule_ids: dict[str, str] = field(default_factory=dict)


class _Loader:
    def __init__(self, lifecycle: Lifecycle) -> None:
        self.lifecycle = lifecycle
        self.stages = lifecycle.keys
        self.problems: list[Problem] = []
        self.source = ""
        self.decl = _Decl()
        self.settings = _Settings()
        self.settings_from: str | None = None
        self.sample: dict[str, Any] = {}
        self.pack_escalate: timedelta | None = None
        self.stage_labels = {st.key: st.label_zh for st in lifecycle.stages}

    # -- reporting

    def problem(self, where: str, message: str) -> None:
        self.problems.append(Problem(self.source, where, message))

    def pydantic(
        self, exc: ValidationError, section: tuple[str, ...], model: type[BaseModel]
    ) -> None:
        for err in exc.errors():
            loc = tuple(str(p) for p in err["loc"])
            key = loc[0] if loc else ""
            where = _where(section, ".".join(loc))
            typ = err["type"]
            got = err.get("input")
            if typ == "extra_forbidden":
                allowed = sorted(model.model_fields)
                msg = (
                    f"unknown key `{key}`; {_close(key, allowed)}"
                    f"the keys allowed here are: {', '.join(allowed)}"
                )
            elif typ == "missing":
                msg = f"required key is missing; add it, e.g. {_EXAMPLES.get(key, key + ' = ...')}"
            elif typ == "literal_error":
                expected = err.get("ctx", {}).get("expected")
                msg = f"{_toml(got)} is not allowed; use {expected}"
            elif typ == "bool_type":
                msg = f"{_toml(got)} is not true or false; write true or false without quotes"
            elif typ == "string_type":
                msg = f'{_toml(got)} is not text; write it in double quotes, e.g. {key} = "..."'
            elif typ == "string_too_short":
                msg = "must not be empty; write a value"
            elif typ in ("dict_type", "model_type"):
                msg = f"{_toml(got)} is not a table; write it as a [section] or {{ key = value }}"
            elif typ == "list_type":
                msg = f'{_toml(got)} is not a list; write it in square brackets, e.g. ["open"]'
            elif typ in ("float_type", "int_type"):
                msg = f"{_toml(got)} is not a number; write it without quotes, e.g. 0.14"
            elif typ == "too_short":
                msg = "must not be empty; add at least one entry"
            else:
                msg = f"{err['msg']}; fix the value"
            self.problems.append(Problem(self.source, where, msg))

    def validate(
        self, model: type[BaseModel], data: Any, section: tuple[str, ...]
    ) -> Any:  # returns an instance of model or None
        if not isinstance(data, dict):
            self.problem(
                _where(section),
                f"{_toml(data)} is not a table; write it as a [{'.'.join(section)}] section",
            )
            return None
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            self.pydantic(exc, section, model)
            return None

    # -- small value checks

    def texts(self, value: Mapping[str, str] | None, where: str, what: str) -> dict[str, str]:
        if value is None:
            return {}
        out = {}
        for lang, text in value.items():
            if lang not in LANGS:
                self.problem(
                    where,
                    f"unknown language `{lang}` in {what}; {_close(lang, LANGS)}write "
                    f'en = "..." and "zh-CN" = "..."',
                )
            elif not text.strip():
                self.problem(where, f"the {lang} {what} is empty; write the text")
            else:
                out[lang] = text
        for lang in LANGS:
            if lang not in value:
                q = f'"{lang}"' if "-" in lang else lang
                self.problem(
                    where,
                    f"the {what} has no {lang} text; every text a manager reads exists in "
                    f'en and zh-CN: add {q} = "..."',
                )
        return out

    def duration(self, text: str | None, where: str) -> timedelta | None:
        if text is None:
            return None
        try:
            return parse_duration(text)
        except ValueError as exc:
            self.problem(where, str(exc))
            return None

    def severity(self, value: str | None, where: str) -> str:
        sev = value or self.settings.severity
        if sev not in SEVERITIES:
            self.problem(
                where,
                f"{_toml(sev)} is not a severity; {_close(sev, SEVERITIES)}"
                f"use one of {', '.join(SEVERITIES)}",
            )
            return "warning"
        return sev

    def statuses(self, value: list[str] | None, where: str) -> frozenset[str]:
        items = value if value is not None else self.settings.statuses
        for s in items:
            if s not in _STATUSES:
                self.problem(
                    where,
                    f"{_toml(s)} is not a project status; {_close(s, _STATUSES)}"
                    f"use some of {', '.join(_STATUSES)}",
                )
        return frozenset(items)

    def stage_key(self, key: str, where: str) -> bool:
        if key in self.stages:
            return True
        self.problem(
            where,
            f"`{key}` is not a stage of the lifecycle; {_close(key, self.stages)}"
            f"the stages are: {', '.join(self.stages)}",
        )
        return False

    def rule_id(self, rid: str, where: str) -> bool:
        if _ID.match(rid):
            return True
        self.problem(
            where,
            f"`{rid}` is not a valid name; use lower-case letters, digits and _ "
            "starting with a letter, e.g. proposal_submitted",
        )
        return False

    # -- expressions

    def allowed_keys(self) -> dict[str, Sequence[str]]:
        return {
            "deliverable": list(self.decl.kinds),
            "stakeholders": ROLES,
            "entered": self.stages,
            "count": list(self.decl.counters),
            "checklist": list(self.decl.checklists),
            "trigger_overdue": list(self.decl.triggers),
        }

    def expr(self, source: str, where: str, *, in_checklist: bool = False) -> Expr | None:
        """Compile and check one expression; None (with problems recorded) if it is wrong."""
        if not source.strip():
            self.problem(where, 'the expression is empty; write a condition, e.g. "idle_days > 14"')
            return None
        try:
            cel.compile(source)
        except ValueError as exc:
            self.problem(where, _syntax(str(exc)))
            return None
        rewritten, bound, used = analyse(source)
        program = cel.compile(rewritten)
        variables = [v for v in program.variables() if v not in bound]
        bad = False
        for v in variables:
            if v not in FACTS:
                self.problem(
                    where,
                    f"unknown name `{v}` in {_toml(source)}; {_close(v, [*FACTS, 'HIGH'])}"
                    "an expression can use the facts listed in docs/rules.md "
                    "(stage, idle_days, deliverable.<kind>...) and the ranks LOW..CRITICAL, "
                    "MISSING..APPROVED",
                )
                bad = True
        if in_checklist and "checklist" in variables:
            self.problem(where, "a checklist item cannot use `checklist`; use the facts instead")
            bad = True
        allowed = self.allowed_keys()
        for v in variables:
            keys = used.get(v)
            if v in allowed and keys:
                for k in sorted(keys):
                    if k not in allowed[v]:
                        self.problem(where, _unknown_key(v, k, allowed[v]))
                        bad = True
        if bad:
            return None
        try:
            value = program.execute({n: self.sample[n] for n in variables})
        except KeyError:
            value = True  # custom.<key> absent from the sample: decided per project
        except Exception as exc:
            text = str(exc).split(". CEL does not coerce")[0]
            self.problem(
                where,
                f"cannot be evaluated: {text}. Compare like with like: numbers with numbers "
                '(idle_days > 14), text with quoted text (stage == "proposal"), ranks with '
                "ranks (priority >= HIGH); write decimals for money (contract_value >= 1.0e6)",
            )
            return None
        if not isinstance(value, bool):
            self.problem(
                where,
                f"gives {_toml(value)}, not true or false; turn it into a condition, "
                "e.g. idle_days > 14",
            )
            return None
        whole = tuple(v for v in variables if used.get(v) is None)
        keyed = tuple(
            (v, k) for v in variables if (ks := used.get(v)) is not None for k in sorted(ks)
        )
        return Expr(source, where, program, Reads(whole, keyed))

    def placeholders(self, texts: Mapping[str, str], where: str) -> None:
        allowed = self.allowed_keys()
        for text in texts.values():
            for name in _PLACEHOLDER.findall(text):
                head, _, key = name.partition(".")
                if name in _DETAIL_PLACEHOLDERS:
                    continue
                if head not in FACTS:
                    self.problem(
                        where,
                        f"unknown placeholder {{{name}}}; {_close(head, FACTS)}a placeholder "
                        "names a fact, e.g. {idle_days} or {count.close_date_pushed}",
                    )
                elif key and head in allowed and key not in allowed[head]:
                    self.problem(where, _unknown_key(head, key, allowed[head]))

    # -- loading

    def read(self, source: str, data: dict[str, Any]) -> _Doc | None:
        self.source = source
        top: _Top | None = None
        try:
            top = _Top.model_validate(data)
        except ValidationError as exc:
            self.pydantic(exc, (), _Top)
            # Go on with what is valid, so the sections' problems are reported too.
            fixed = {k: v for k, v in data.items() if k in _Top.model_fields}
            fixed["format"] = 1
            try:
                top = _Top.model_validate(fixed)
            except ValidationError:
                return None
        return _Doc(source, top, data)

    def declare(self, doc: _Doc) -> None:
        """First pass: settings and every name expressions may refer to."""
        self.source = doc.source
        top = doc.top
        if top.settings is not None:
            if self.settings_from is not None:
                self.problem("[settings]", _twice("settings", self.settings_from))
            else:
                s = self.validate(_Settings, top.settings, ("settings",))
                if s is not None:
                    self.settings = s
                    self.settings_from = doc.source
                    for k in s.deliverable_kinds:
                        self.decl.kinds[k] = None
        for raw in top.stages.values():
            if isinstance(raw, dict):
                for k in raw.get("deliverables") or ():
                    if isinstance(k, str):
                        self.decl.kinds[k] = None
        for kind, names in (
            ("counters", self.decl.counters),
            ("checklists", self.decl.checklists),
            ("triggers", self.decl.triggers),
        ):
            for name in getattr(top, kind):
                if name in names:
                    self.problem(f"[{kind}.{name}]", _twice(f"{kind}.{name}", names[name]))
                elif self.rule_id(name, f"[{kind}.{name}]"):
                    names[name] = doc.source

    def build(self, docs: Sequence[_Doc]) -> Evaluator:
        s = self.settings
        self.source = self.settings_from or (docs[0].source if docs else "")
        base = s.base_currency
        if base is not None and not re.match(r"^[A-Z]{3}$", base):
            self.problem("[settings] base_currency", f"{_toml(base)} is not an ISO code like USD")
        fx = {}
        for cur, rate in s.fx.items():
            if not re.match(r"^[A-Z]{3}$", cur) or rate <= 0:
                self.problem(
                    f"[settings.fx] {cur}",
                    "write an ISO currency code and a positive rate to the base currency, "
                    "e.g. CNY = 0.14",
                )
            fx[cur] = Decimal(repr(float(rate)))
        if fx and base is None:
            self.problem("[settings] base_currency", "[settings.fx] needs a base_currency; add it")
        self.statuses(s.statuses, "[settings] statuses")
        self.severity(s.severity, "[settings] severity")
        self.pack_escalate = self.duration(s.escalate_after, "[settings] escalate_after")

        counters: dict[str, tuple[Change, timedelta]] = {}
        triggers_raw: list[tuple[str, _Trigger, str]] = []
        cadence_doc: tuple[str, _Cadence] | None = None
        admission_doc: tuple[str, _Admission] | None = None
        for doc in docs:
            self.source = doc.source
            for name, raw in doc.top.counters.items():
                c = self.validate(_Counter, raw, ("counters", name))
                if c is None:
                    continue
                change = self.change(c, ("counters", name))
                span = self.duration(c.window, _where(("counters", name), "window"))
                if change is not None and span is not None:
                    counters[name] = (change, span)
            for name, raw in doc.top.triggers.items():
                t = self.validate(_Trigger, raw, ("triggers", name))
                if t is not None:
                    triggers_raw.append((name, t, doc.source))
            if doc.top.cadence is not None:
                if cadence_doc is not None:
                    self.problem("[cadence]", _twice("cadence", cadence_doc[0]))
                else:
                    cad = self.validate(_Cadence, doc.top.cadence, ("cadence",))
                    if cad is not None:
                        cadence_doc = (doc.source, cad)
            if doc.top.admission is not None:
                if admission_doc is not None:
                    self.problem("[admission]", _twice("admission", admission_doc[0]))
                else:
                    adm = self.validate(_Admission, doc.top.admission, ("admission",))
                    if adm is not None:
                        admission_doc = (doc.source, adm)

        triggers: list[Trigger] = []
        for name, t, source in triggers_raw:
            self.source = source
            change = self.change(t, ("triggers", name))
            within = self.duration(t.update_within, _where(("triggers", name), "update_within"))
            if change is not None and within is not None:
                triggers.append(Trigger(name, change, within))

        cadence: dict[str, dict[str, Gap]] = {}
        cadence_default: Gap | None = None
        if cadence_doc is not None:
            self.source, cad = cadence_doc
            if cad.default is not None:
                cadence_default = self.gap(cad.default, "[cadence] default")
            for stage, row in cad.max_gap.items():
                where = f"[cadence.max_gap] {stage}"
                if not self.stage_key(stage, where):
                    continue
                if not isinstance(row, dict):
                    self.problem(
                        where,
                        f"{_toml(row)} is not a table; write the gap per priority, e.g. "
                        f'{stage} = {{ low = "monthly", high = "weekly" }}',
                    )
                    continue
                cadence[stage] = {}
                for prio, text in row.items():
                    w = f"[cadence.max_gap.{stage}] {prio}"
                    if prio not in LEVEL_ORDER:
                        self.problem(
                            w,
                            f"`{prio}` is not a priority; {_close(prio, LEVEL_ORDER)}"
                            f"use {', '.join(LEVEL_ORDER)}",
                        )
                        continue
                    if not isinstance(text, str):
                        self.problem(w, f'{_toml(text)} is not a gap; write e.g. "weekly" or "3bd"')
                        continue
                    g = self.gap(text, w)
                    if g is not None:
                        cadence[stage][prio] = g

        optional = frozenset(st.key for st in self.lifecycle.stages if st.optional)
        plan = FactPlan(
            stages=tuple(self.stages),
            optional_stages=optional,
            deliverable_kinds=tuple(self.decl.kinds),
            counters=counters,
            triggers=tuple(triggers),
            cadence=cadence,
            cadence_default=cadence_default,
            base_currency=base,
            fx=fx,
        )
        self.sample = _sample_facts(plan)

        checklists: list[Checklist] = []
        for doc in docs:
            self.source = doc.source
            for name, raw in doc.top.checklists.items():
                c = self.validate(_Checklist, raw, ("checklists", name))
                if c is None:
                    continue
                title = self.texts(c.title, _where(("checklists", name), "title"), "title")
                items = []
                for item, src in c.items.items():
                    e = self.expr(src, f"[checklists.{name}.items] {item}", in_checklist=True)
                    if e is not None:
                        items.append((item, e))
                checklists.append(Checklist(name, title, tuple(items)))

        admission: list[AdmissionRule] = []
        version = "none"
        otherwise = AdmissionDecision(True, "none", None, {"en": "no admission rules"})
        if admission_doc is not None:
            self.source, adm = admission_doc
            version = adm.version
            reason = self.texts(adm.otherwise_reason, "[admission] otherwise_reason", "reason")
            otherwise = AdmissionDecision(adm.otherwise == "track", version, None, reason)
            for rid, raw in adm.rules.items():
                sec: tuple[str, ...] = ("admission", "rules", rid)
                a = self.validate(_AdmissionRule, raw, sec)
                if a is None or not self.rule_id(rid, _where(sec)):
                    continue
                e = self.expr(a.when, _where(sec, "when"))
                r = self.texts(a.reason, _where(sec, "reason"), "reason")
                if e is not None:
                    admission.append(AdmissionRule(rid, e, a.track, r))

        rules: list[Rule] = []
        for doc in docs:
            self.source = doc.source
            for stage, raw in doc.top.stages.items():
                if not self.stage_key(stage, f"[stages.{stage}]"):
                    continue
                st = self.validate(_Stage, raw, ("stages", stage))
                if st is None:
                    continue
                i = self.stages.index(stage)
                for side, table in (("entry", st.entry), ("exit", st.exit)):
                    gate = f"stage_index >= {i}" if side == "entry" else f"stage_index > {i}"
                    for rid, rraw in table.items():
                        sec = ("stages", stage, side, rid)
                        if not self.rule_id(rid, _where(sec)):
                            continue
                        r = self.validate(_Rule, rraw, sec)
                        if r is not None:
                            full = f"{stage}.{side}.{rid}"
                            rules.extend(self.rule(full, side, r, sec, gate=gate, stage=stage))
            for rid, raw in doc.top.rules.items():
                sec = ("rules", rid)
                if not self.rule_id(rid, _where(sec)):
                    continue
                r = self.validate(_Rule, raw, sec)
                if r is not None:
                    rules.extend(self.rule(rid, "rule", r, sec))
        if cadence_doc is not None:
            self.source, cad = cadence_doc
            rules.extend(self.rule("cadence", "cadence", cad, ("cadence",), check="cadence_ok"))
        for name, t, source in triggers_raw:
            self.source = source
            if name in {tr.id for tr in triggers}:
                rules.extend(
                    self.rule(
                        f"trigger.{name}",
                        "trigger",
                        t,
                        ("triggers", name),
                        check=f"!trigger_overdue.{name}",
                    )
                )
        # Store flat only the map entries that expressions read (their memo keys).
        read: dict[str, dict[str, None]] = {}
        lists: dict[str, None] = {}
        exprs = [e for c in checklists for _, e in c.items]
        exprs += [a.when for a in admission]
        exprs += [x for r in rules for x in (r.check, r.when) if x is not None]
        for e in exprs:
            for m, k in e.reads.keyed:
                read.setdefault(m, {})[k] = None
            lists.update((n, None) for n in e.reads.whole if FACTS[n].shape == "list")
        plan = replace(
            plan, flat={m: tuple(ks) for m, ks in read.items()}, frozen_lists=tuple(lists)
        )
        return Evaluator(plan, checklists, admission, version, otherwise, rules)

    def change(self, m: _Match, section: tuple[str, ...]) -> Change | None:
        ok = True
        if m.change not in CHANGES:
            self.problem(
                _where(section, "change"),
                f"{_toml(m.change)} is not a kind of change; {_close(m.change, CHANGES)}"
                f"use one of {', '.join(CHANGES)}",
            )
            ok = False
        if m.change in ("to", "from") and m.value is None:
            self.problem(
                _where(section, "value"),
                f'change = "{m.change}" needs the value to compare with; add value = "..."',
            )
            ok = False
        if m.change == "pct" and m.min_pct <= 0:
            self.problem(
                _where(section, "min_pct"),
                'change = "pct" needs a positive min_pct, e.g. min_pct = 20 (percent)',
            )
            ok = False
        if m.min_severity not in LEVEL_ORDER:
            self.problem(
                _where(section, "min_severity"),
                f"{_toml(m.min_severity)} is not a level; use {', '.join(LEVEL_ORDER)}",
            )
            ok = False
        root = m.field.split(".")[0]
        from bridge.model import SalesProject

        if root not in SalesProject.model_fields:
            self.problem(
                _where(section, "field"),
                f"`{m.field}` is not a field of the sales project; "
                f"{_close(root, SalesProject.model_fields)}see `salesbridge schema`",
            )
            ok = False
        if not ok:
            return None
        return Change(
            field=m.field,
            change=m.change,
            value=m.value,
            min_pct=float(m.min_pct),
            min_severity=LEVEL_ORDER.get(m.min_severity, 2),
            meaningful_only=m.meaningful_only,
        )

    def gap(self, text: str, where: str) -> Gap | None:
        try:
            return parse_gap(text)
        except ValueError as exc:
            self.problem(where, str(exc))
            return None

    def rule(
        self,
        rid: str,
        kind: str,
        r: _Options,
        section: tuple[str, ...],
        *,
        gate: str | None = None,
        stage: str | None = None,
        check: str | None = None,
    ) -> list[Rule]:
        if rid in self.decl.rule_ids:
            self.problem(_where(section), _twice(rid, self.decl.rule_ids[rid], what="rule"))
            return []
        self.decl.rule_ids[rid] = self.source
        title = self.texts(r.title, _where(section, "title"), "title")
        message = self.texts(r.message, _where(section, "message"), "message") or title
        self.placeholders(message, _where(section, "message"))
        note = None
        if r.note is not None:
            note = self.texts(r.note, _where(section, "note"), "note")
            self.placeholders(note, _where(section, "note"))
        severity = self.severity(r.severity, _where(section, "severity"))
        statuses = self.statuses(r.statuses, _where(section, "statuses"))
        default_period = {"cadence": "last_update", "trigger": "trigger"}.get(kind, "none")
        period = r.period or default_period
        if period not in PERIODS or (
            period in ("last_update", "trigger") and period != default_period
        ):
            fits = [p for p in PERIODS if p not in ("last_update", "trigger")]
            if default_period != "none":
                fits.append(default_period)
            self.problem(
                _where(section, "period"),
                f"{_toml(period)} is not a period for this rule; use one of {', '.join(fits)}",
            )
        escalate: timedelta | None
        if r.escalate_after == "never":
            escalate = None
        else:
            escalate = self.duration(r.escalate_after, _where(section, "escalate_after"))
            if escalate is None and r.escalate_after is None:
                escalate = self.pack_escalate
        for name in r.evidence:
            if name.split(".")[0] not in FACTS:
                self.problem(
                    _where(section, "evidence"),
                    f"`{name}` is not a fact; {_close(name, FACTS)}list facts from docs/rules.md",
                )
        if r.annotate and note is None:
            note = title
        check_src = check if check is not None else getattr(r, "check", "")
        check_expr = self.expr(check_src, _where(section, "check"))
        when_src = r.when
        if gate is not None:
            when_src = gate if when_src is None else f"{gate} && ({when_src})"
        when_expr = None
        if when_src is not None:
            when_expr = self.expr(when_src, _where(section, "when"))
            if when_expr is None:
                return []
        if check_expr is None:
            return []
        return [
            Rule(
                id=rid,
                kind=kind,
                title=title,
                message=message,
                severity=severity,
                check=check_expr,
                when=when_expr,
                statuses=statuses,
                period=period,
                escalate_after=escalate,
                annotate=r.annotate,
                note=note,
                evidence=tuple(r.evidence),
                stage=stage,
                source=self.source,
                section=_where(section),
                stage_labels=self.stage_labels,
            )
        ]


def _twice(name: str, first: str, *, what: str = "section") -> str:
    return (
        f"the {what} `{name}` is already defined in {first}; keep one of them "
        "(names are unique across the rule files of a pack)"
    )


def _unknown_key(fact: str, key: str, allowed: Sequence[str]) -> str:
    what = {
        "deliverable": (
            "deliverable kind",
            "declare it in [settings] deliverable_kinds or a stage's deliverables",
        ),
        "stakeholders": ("stakeholder role", "roles are fixed by the sales-project model"),
        "entered": ("stage", "stages come from the config's [lifecycle]"),
        "count": ("counter", "define it as a [counters.<name>] section"),
        "checklist": ("checklist", "define it as a [checklists.<name>] section"),
        "trigger_overdue": ("trigger", "define it as a [triggers.<name>] section"),
    }[fact]
    listed = ", ".join(allowed) or "none yet"
    return (
        f"`{fact}.{key}`: no {what[0]} named `{key}`; {_close(key, allowed)}"
        f"known: {listed} ({what[1]})"
    )


_SYNTAX = re.compile(r"ERROR: <input>:(\d+):(\d+): Syntax error: ([^\n]*)")


def _syntax(text: str) -> str:
    m = _SYNTAX.search(text)
    if not m:
        return f"not a valid expression: {text}"
    detail = re.sub(r" expecting \{.*\}$", "", m.group(3))
    return (
        f"syntax error at column {m.group(2)}: {detail}. Expressions use CEL: && || ! for "
        'and/or/not, == for equals, double quotes for text ("proposal")'
    )


# --------------------------------------------------------------------------- entry points


def _syntax_problem(source: str, exc: tomllib.TOMLDecodeError) -> Problem:
    msg = str(exc)
    m = re.search(r"\s*\(at line (\d+), column (\d+)\)$", msg)
    where = f"line {m.group(1)}, column {m.group(2)}" if m else "end of file"
    detail = msg[: m.start()] if m else msg
    return Problem(
        source,
        where,
        f"TOML syntax error: {detail}. Check that line: text values need double quotes "
        '(check = "idle_days > 14"), section names go in [brackets], and each key is '
        "written once.",
    )


def parse_rules(
    texts: Sequence[tuple[str, str]], *, lifecycle: Lifecycle | None = None
) -> RulePack:
    """Like :func:`load_rules`, for ``(source name, TOML text)`` pairs already in hand."""
    lc = lifecycle or Lifecycle(stages=list(DEFAULT_STAGES))
    loader = _Loader(lc)
    docs: list[_Doc] = []
    syntax: list[Problem] = []
    for source, text in texts:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            syntax.append(_syntax_problem(source, exc))
            continue
        doc = loader.read(source, data)
        if doc is not None:
            docs.append(doc)
    if syntax:
        raise UserError(syntax + loader.problems)
    for doc in docs:
        loader.declare(doc)
    evaluator = loader.build(docs)
    if loader.problems:
        raise UserError(loader.problems)
    names = [d.top.name for d in docs if d.top.name]
    return RulePack(
        sources=[s for s, _ in texts],
        name=names[0] if names else "rules",
        lifecycle=lc,
        escalate_after=loader.pack_escalate,
        evaluator=evaluator,
    )


def load_rules(
    paths: Sequence[Path] | Path | None = None, *, lifecycle: Lifecycle | None = None
) -> RulePack:
    """Read, check and compile rule files into one pack (none given: the default pack).

    ``lifecycle`` is the configured one (default: the standard six stages). Raises UserError
    listing every problem in every file.
    """
    if paths is None:
        paths = [default_pack_path()]
    elif isinstance(paths, Path):
        paths = [paths]
    texts: list[tuple[str, str]] = []
    problems: list[Problem] = []
    for p in paths:
        try:
            texts.append((str(p), p.read_bytes().decode("utf-8")))
        except FileNotFoundError:
            problems.append(
                Problem(
                    str(p),
                    "",
                    "file not found; correct the path in the config's [rules] files, or "
                    "leave files empty to use the default pack",
                )
            )
        except UnicodeDecodeError as exc:
            problems.append(
                Problem(str(p), "", f"not UTF-8 text (byte {exc.start}); save the file as UTF-8")
            )
        except OSError as exc:
            problems.append(Problem(str(p), "", f"cannot read the file: {exc.strerror}"))
    if problems:
        raise UserError(problems)
    return parse_rules(texts, lifecycle=lifecycle)


def evaluate(
    project: Any,
    events: Sequence[Event] = (),
    now: datetime | None = None,
    team: Calendar | None = None,
    *,
    pack: RulePack | None = None,
) -> Any:
    """Evaluate one project with ``pack`` (default: the default pack, loaded for this call).

    A convenience for one-off checks; in a loop, load the pack once and call
    ``pack.evaluate(project, events, now, team)``, which also keeps its results cache warm.
    Returns an :class:`~bridge.rules.engine.Evaluation`.
    """
    return (pack or load_rules()).evaluate(project, events, now, team)
