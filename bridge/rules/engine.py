"""The evaluator: a compiled rule pack applied to one project at a time.

Two layers. :func:`bridge.rules.facts.derive` computes the documented facts of a project once;
then each rule's CEL expressions (compiled once, at load) combine them. A CEL program is a pure
function of the facts it reads, so each compiled expression remembers its result per distinct
combination of those facts (``stage``, ``priority``, ``deliverable.proposal``...): across a
portfolio most projects share them, and the expression library is only called for new ones.
That cache lives in the pack object (no global state) and is bounded.

Outcome of one rule on one project: ``pass``, ``fail`` (a violation), ``skip`` (the rule does
not apply: its ``when`` is false, the status is not checked, or the project is not tracked) or
``error`` (the expression failed on this project's values; reported, the other rules go on).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any, Final, Literal

from bridge.model import DELIVERABLE_ORDER, LEVEL_ORDER, SalesProject
from bridge.rules.calendar import Calendar
from bridge.rules.facts import (
    ABSENT,
    CONSTANTS,
    FACTS,
    FLATTENED,
    Detail,
    FactPlan,
    derive,
    freeze,
)
from bridge.store.store import Event

__all__ = [
    "LANGS",
    "AdmissionDecision",
    "AdmissionRule",
    "Checklist",
    "Evaluation",
    "Expr",
    "Outcome",
    "Rule",
    "RuleResult",
]

LANGS: Final = ("en", "zh-CN")
Outcome = Literal["pass", "fail", "skip", "error"]
Text = Mapping[str, str]
"""A text in every language of :data:`LANGS`."""

_MEMO_LIMIT = 200_000
_UTC: Final = Calendar()
"""The calendar of a project whose team has none (shared: it keeps a memo of counts)."""
_TOKENS = re.compile(
    r'"""(?:.|\n)*?"""|\'\'\'(?:.|\n)*?\'\'\'|"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\''
    r"|[A-Za-z_][A-Za-z0-9_]*"
)
_COMPREHENSION = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_]\w*)\s*,")
_KEYED = re.compile(r'\s*(?:\.\s*([A-Za-z_]\w*)|\[\s*"([^"\\]*)"\s*\]|\[\s*\'([^\'\\]*)\'\s*\])')


def text_in(text: Text, lang: str) -> str:
    """``text`` in ``lang`` (``zh``, ``zh-CN``... all read the Chinese text), else English."""
    if lang.lower().startswith("zh"):
        return text.get("zh-CN") or text.get("en", "")
    return text.get("en", "")


# --------------------------------------------------------------------------- expressions


class ExprError(Exception):
    """An expression failed on one project's facts."""


@dataclass(frozen=True, slots=True)
class Reads:
    """What an expression reads: whole facts, and single keys of map facts."""

    whole: tuple[str, ...]
    keyed: tuple[tuple[str, str], ...]

    def names(self) -> tuple[str, ...]:
        seen = dict.fromkeys(self.whole)
        seen.update(dict.fromkeys(k for k, _ in self.keyed))
        return tuple(seen)

    def labels(self) -> list[str]:
        return [*self.whole, *(f"{f}.{k}" for f, k in self.keyed)]


def analyse(source: str) -> tuple[str, set[str], dict[str, set[str] | None]]:
    """Rewrite rank constants (``HIGH`` -> ``2``) and find the identifiers an expression uses.

    Returns the rewritten source, the names bound by comprehensions (``x`` in
    ``list.exists(x, ...)``), and per identifier the keys it is read with
    (``deliverable.proposal`` -> {"proposal"}), or None when it is also used whole.
    """
    out: list[str] = []
    pos = 0
    used: dict[str, set[str] | None] = {}
    for m in _TOKENS.finditer(source):
        tok = m.group(0)
        if tok[0] in "\"'":
            continue
        before = source[: m.start()].rstrip()
        if before.endswith("."):
            continue  # a field name: custom.HIGH is not the constant
        if tok in CONSTANTS:
            out.append(source[pos : m.start()])
            out.append(str(CONSTANTS[tok]))
            pos = m.end()
            continue
        if tok in ("true", "false", "null", "in", "has", "size", "int", "double", "string"):
            continue
        k = _KEYED.match(source, m.end())
        if k and source[k.end() :].lstrip().startswith("("):
            k = None  # a method call: x.exists(...) reads x whole
        if k and not source[m.end() :].lstrip().startswith("("):
            key = k.group(1) or k.group(2) or k.group(3) or ""
            prev = used.get(tok, set())
            if prev is not None:
                prev.add(key)
                used[tok] = prev
        else:
            used[tok] = None
    out.append(source[pos:])
    bound = set(_COMPREHENSION.findall(source))
    return "".join(out), bound, used


class Expr:
    """A compiled CEL expression with its memo. ``where`` names it in the file."""

    __slots__ = ("_key", "_memo", "key_names", "names", "program", "reads", "source", "where")

    def __init__(self, source: str, where: str, program: Any, reads: Reads) -> None:
        self.source = source
        self.where = where
        self.program = program
        self.reads = reads
        self.names = reads.names()
        self._memo: dict[Any, Any] = {}
        self.key_names = self._flat_names()
        """The flat fact names whose values make the memo key (None: computed the slow way)."""
        self._key = self._key_function()

    def _flat_names(self) -> tuple[str, ...] | None:
        out: list[str] = []
        for n in self.reads.whole:
            shape = FACTS[n].shape
            if shape == "scalar":
                out.append(n)
            elif shape == "list":
                out.append("#" + n)
            else:
                return None
        for m, k in self.reads.keyed:
            if m not in FLATTENED and m != "checklist":
                return None
            out.append(f"{m}.{k}")
        return tuple(out)

    def _key_function(self) -> Callable[[Mapping[str, Any]], Any]:
        """The memo key: the values the expression reads, taken as cheaply as possible."""
        names = self.key_names
        if names is not None:
            if not names:
                return lambda f: ()
            # Fact types are fixed per name (never 1 here and true there; custom values are
            # stored frozen), so the raw values are a sound key, taken by a C itemgetter.
            return itemgetter(*names)
        whole, keyed = self.reads.whole, self.reads.keyed
        return lambda f: (
            tuple(freeze(f[n]) for n in whole)
            + tuple(freeze(f[m].get(k, ABSENT)) for m, k in keyed)
        )

    def __repr__(self) -> str:
        return f"Expr({self.source!r})"

    def run(self, facts: Mapping[str, Any]) -> Any:
        """The expression's value on ``facts``; an ExprError when CEL refuses (returned, not
        raised: the hot loop checks with ``is True`` / ``is False``)."""
        key = self._key(facts)
        hit = self._memo.get(key, ABSENT)
        if hit is ABSENT:
            hit = self._compute(facts, key)
        return hit

    def _compute(self, facts: Mapping[str, Any], key: Any) -> Any:
        try:
            value = self.program.execute({n: facts[n] for n in self.names})
        except Exception as exc:  # the library raises TypeError, KeyError, RuntimeError...
            value = ExprError(_runtime_message(exc))
        if len(self._memo) >= _MEMO_LIMIT:
            self._memo.clear()
        self._memo[key] = value
        return value

    def test(self, facts: Mapping[str, Any]) -> bool:
        """True or False; raises ExprError when it fails or is not a condition."""
        value = self.run(facts)
        if value is True or value is False:
            return value
        if isinstance(value, ExprError):
            raise value
        raise ExprError(f"gave {value!r}, not true or false")

    def evidence(self, facts: Mapping[str, Any]) -> dict[str, Any]:
        """The values this expression read, ranks spelled out (``deliverable.proposal: draft``)."""
        out: dict[str, Any] = {}
        for name in self.reads.whole:
            out[name] = readable(name, facts.get(name))
        for name, key in self.reads.keyed:
            m = facts.get(name)
            out[f"{name}.{key}"] = readable(name, m.get(key) if isinstance(m, dict) else None)
        return out


_LEVEL_NAMES = {v: k for k, v in LEVEL_ORDER.items()}
_STATUS_NAMES = {v: k for k, v in DELIVERABLE_ORDER.items()}


def readable(name: str, value: Any) -> Any:
    """A fact value as a person reads it: ranks by name, -1 as "unset"."""
    fact = FACTS.get(name)
    if fact is None or fact.rank is None:
        return value
    names = _LEVEL_NAMES if fact.rank == "level" else _STATUS_NAMES
    if isinstance(value, dict):
        return {k: names.get(v, "unset") for k, v in value.items()}
    if isinstance(value, int) and not isinstance(value, bool):
        return names.get(value, "unset")
    return value


def _runtime_message(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return (
            f"no key {exc.args[0]!r} in this project's values; guard optional keys with "
            f"has(), e.g. has(custom.{exc.args[0]})"
        )
    text = str(exc).split(". CEL does not coerce")[0]
    if "No such overload" in text:
        text += " (a fact is probably null here: guard it with `x != null && ...`)"
    return text


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True, slots=True)
class Rule:
    """One compiled rule. ``kind``: rule, entry, exit, cadence or trigger."""

    id: str
    kind: str
    title: Text
    message: Text
    severity: str
    check: Expr
    when: Expr | None = None
    statuses: frozenset[str] = frozenset({"open"})
    period: str = "none"
    escalate_after: timedelta | None = None
    annotate: bool = False
    note: Text | None = None
    evidence: tuple[str, ...] = ()
    stage: str | None = None
    source: str = ""
    section: str = ""
    stage_labels: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    """Stage key -> zh-CN label, for messages in Chinese (shared by the pack's rules)."""

    def title_in(self, lang: str) -> str:
        return text_in(self.title, lang)


@dataclass(frozen=True, slots=True)
class Checklist:
    """A k-of-n checklist: ``checklist.<name>`` counts the items that hold."""

    name: str
    title: Text
    items: tuple[tuple[str, Expr], ...]


@dataclass(frozen=True, slots=True)
class AdmissionRule:
    id: str
    when: Expr
    track: bool
    reason: Text


@dataclass(frozen=True, slots=True)
class AdmissionDecision:
    """Whether the project is a tracked sales project, by which rule of which version."""

    tracked: bool
    rule_version: str
    rule: str | None
    reason: Text
    error: str | None = None

    def reason_in(self, lang: str) -> str:
        return text_in(self.reason, lang)

    def as_admission(self, decided_at: datetime) -> dict[str, Any]:
        """The ``SalesProject.admission`` JSON value for this decision (reason in English)."""
        reason = text_in(self.reason, "en")
        if self.rule:
            reason = f"{self.rule}: {reason}"
        return {
            "tracked": self.tracked,
            "rule_version": self.rule_version,
            "reason": reason,
            "decided_at": decided_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        }


@dataclass(slots=True)
class RuleResult:
    """One rule on one project.

    ``evidence`` holds the values that decided the outcome; ``period`` is the part of the
    violation key that lets the same rule fail again later as a new violation (a new stale
    gap, a new trigger); ``since`` is when the condition started, when known.
    """

    rule: Rule
    outcome: Outcome
    evidence: Mapping[str, Any] = field(default_factory=dict)
    period: str = ""
    since: datetime | None = None
    why: str = ""
    facts: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def failed(self) -> bool:
        return self.outcome == "fail"

    def message(self, lang: str = "en") -> str:
        """The rule's message in ``lang`` with its ``{placeholders}`` filled in."""
        return fill(
            text_in(self.rule.message, lang),
            self.facts,
            self.evidence,
            lang,
            self.rule.stage_labels,
        )

    def annotation(self, lang: str = "en") -> str | None:
        """The short text to write back to the project's records, if the rule annotates."""
        if not (self.failed and self.rule.annotate):
            return None
        text = text_in(self.rule.note or self.rule.title, lang)
        return fill(text, self.facts, self.evidence, lang, self.rule.stage_labels)


_PLACEHOLDER = re.compile(r"\{([A-Za-z_][\w.]*)\}")


_GAP_TEXT = re.compile(r"^(\d+) (business day|day|hour)s?$")
_GAP_ZH = {"business day": "个工作日", "day": "天", "hour": "小时"}


def _localized(name: str, value: Any, labels: Mapping[str, str]) -> Any:
    """A fact value as a Chinese reader reads it: stage labels, gaps in Chinese units."""
    if name in ("stage", "previous_stage") and isinstance(value, str):
        return labels.get(value, value)
    if name == "skipped_stages" and isinstance(value, list):
        return [labels.get(v, v) for v in value]
    if name == "cadence_limit" and isinstance(value, str):
        m = _GAP_TEXT.match(value)
        if m:
            return f"{m.group(1)} {_GAP_ZH[m.group(2)]}"
    return value


def fill(
    template: str,
    facts: Mapping[str, Any],
    extra: Mapping[str, Any],
    lang: str = "en",
    stage_labels: Mapping[str, str] | None = None,
) -> str:
    """Replace ``{fact}`` / ``{fact.key}`` with the project's values (ranks by name; in
    Chinese, stages by their zh-CN label and gaps in Chinese units)."""
    chinese = lang.lower().startswith("zh")

    def one(m: re.Match[str]) -> str:
        name = m.group(1)
        if name in extra:
            value = extra[name]
        else:
            head, _, key = name.partition(".")
            value = facts.get(head)
            if key:
                value = value.get(key) if isinstance(value, dict) else None
            value = readable(head, value)
        if chinese:
            value = _localized(name, value, stage_labels or {})
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:,.0f}"
        if isinstance(value, list):
            return ", ".join(str(v) for v in value) or "-"
        return str(value)

    return _PLACEHOLDER.sub(one, template)


@dataclass(slots=True)
class Evaluation:
    """Everything the pack says about one project at ``now``."""

    project_id: str
    owner: str | None
    team: str | None
    now: datetime
    admission: AdmissionDecision
    results: tuple[RuleResult, ...]
    facts: Mapping[str, Any]
    detail: Detail

    @property
    def violations(self) -> list[RuleResult]:
        return [r for r in self.results if r.outcome == "fail"]

    @property
    def errors(self) -> list[RuleResult]:
        return [r for r in self.results if r.outcome == "error"]

    def annotations(self, lang: str = "en") -> list[str]:
        """Short texts of the failed rules that annotate, for the write-back to the tools."""
        return [t for r in self.results if (t := r.annotation(lang))]


# --------------------------------------------------------------------------- the evaluator


_Row = tuple[
    int,
    Rule,
    frozenset[str],
    "Expr | None",
    Callable[[Mapping[str, Any]], Any],
    dict[Any, Any],
    Expr,
    Callable[[Mapping[str, Any]], Any],
    dict[Any, Any],
]


def _no_key(_facts: Mapping[str, Any]) -> Any:
    return ()


class Evaluator:
    """Applies checklists, admission and rules. Built by the loader; see ``RulePack``."""

    def __init__(
        self,
        plan: FactPlan,
        checklists: Sequence[Checklist],
        admission: Sequence[AdmissionRule],
        admission_version: str,
        otherwise: AdmissionDecision,
        rules: Sequence[Rule],
    ) -> None:
        self.plan = plan
        self.checklists = tuple(checklists)
        self.admission_rules = tuple(admission)
        self.admission_version = admission_version
        self.otherwise = otherwise
        self.rules = tuple(rules)
        # Outcomes that carry nothing project-specific are shared between evaluations.
        self._untracked = tuple(
            RuleResult(r, "skip", why="not a tracked project (admission)") for r in self.rules
        )
        self._passed = tuple(RuleResult(r, "pass", why=r.check.source) for r in self.rules)
        self._skipped = tuple(
            RuleResult(
                r,
                "skip",
                why=f"does not apply: {r.when.source}" if r.when else "does not apply",
            )
            for r in self.rules
        )
        self._wrong_status = tuple(
            RuleResult(r, "skip", why=f"only {', '.join(sorted(r.statuses))} projects")
            for r in self.rules
        )
        # Each admission rule's decision (immutable, the same for every project it admits).
        self._admissions = tuple(
            (a, AdmissionDecision(a.track, admission_version, a.id, a.reason))
            for a in self.admission_rules
        )
        # The hot loop's view of each rule: everything it touches, unpacked once.
        self._rows: tuple[_Row, ...] = tuple(
            (
                i,
                r,
                r.statuses,
                r.when,
                r.when._key if r.when is not None else _no_key,
                r.when._memo if r.when is not None else {},
                r.check,
                r.check._key,
                r.check._memo,
            )
            for i, r in enumerate(self.rules)
        )
        # A checklist's count is a pure function of what its items read: one memo per list.
        self._lists: list[tuple[str, str, tuple[Expr, ...], Any, dict[Any, int]]] = []
        for cl in self.checklists:
            exprs = tuple(e for _, e in cl.items)
            names: dict[str, None] = {}
            for e in exprs:
                if e.key_names is None:
                    names = {}
                    break
                names.update(dict.fromkeys(e.key_names))
            key = itemgetter(*names) if names else None
            self._lists.append((cl.name, "checklist." + cl.name, exprs, key, {}))

    def evaluate(
        self,
        project: SalesProject | Mapping[str, Any],
        events: Iterable[Event] = (),
        now: datetime | None = None,
        team: Calendar | None = None,
        *,
        explain: bool = False,
    ) -> Evaluation:
        """Evaluate one project (its model or canonical JSON) with its event log.

        ``now`` defaults to the current time; ``team`` is the team's calendar (UTC, no
        holidays when None). With ``explain`` every result carries its evidence, and rules
        that do not apply still say whether their check would pass.
        """
        data = project.to_json() if isinstance(project, SalesProject) else project
        now = (now or datetime.now(UTC)).astimezone(UTC)
        cal = team or _UTC
        evs = events if type(events) is list or isinstance(events, Sequence) else list(events)
        facts, detail = derive(data, evs, now, cal, self.plan)
        checklist: dict[str, int] = {}
        facts["checklist"] = checklist
        for name, flat, exprs, key, memo in self._lists:
            k = key(facts) if key is not None else None
            n = memo.get(k) if k is not None else None
            if n is None:
                # an item that cannot be decided does not count
                n = sum(e.run(facts) is True for e in exprs)
                if k is not None:
                    if len(memo) >= _MEMO_LIMIT:
                        memo.clear()
                    memo[k] = n
            checklist[name] = n
            facts[flat] = n
        admission = self.admit(facts)
        if not admission.tracked:
            results: Sequence[RuleResult] = self._untracked
        elif explain:
            results = [self._explain(r, facts, detail) for r in self.rules]
        else:
            results = self._check(facts, detail)
        owner = facts["owner"] or None
        return Evaluation(
            project_id=str(data.get("id") or ""),
            owner=owner,
            team=facts["team"] or None,
            now=now,
            admission=admission,
            results=tuple(results),
            facts=facts,
            detail=detail,
        )

    def admit(self, facts: Mapping[str, Any]) -> AdmissionDecision:
        """The first admission rule that holds decides; one that fails on this project is
        passed over (and named in the decision's ``error`` if nothing else decides)."""
        error = None
        for a, decided in self._admissions:
            value = a.when.run(facts)
            if value is True:
                return decided
            if value is not False:
                error = f"{a.when.where}: {value}"
        if error is None:
            return self.otherwise
        o = self.otherwise
        return AdmissionDecision(o.tracked, o.rule_version, o.rule, o.reason, error=error)

    def _check(self, facts: dict[str, Any], detail: Detail) -> list[RuleResult]:
        """The hot loop: shared results for passes and skips, new ones for the rest.

        ``Expr.run`` is inlined (key, memo lookup, compute on a miss) over rows prepared at
        construction (:attr:`_rows`): this loop runs once per rule per project."""
        out: list[RuleResult] = []
        append = out.append
        status = facts["status"]
        absent = ABSENT
        passed, skipped, wrong_status = self._passed, self._skipped, self._wrong_status
        for i, rule, statuses, when, wkey, wmemo, check, ckey, cmemo in self._rows:
            if status not in statuses:
                append(wrong_status[i])
                continue
            if when is not None:
                k = wkey(facts)
                w = wmemo.get(k, absent)
                if w is absent:
                    w = when._compute(facts, k)
                if w is False:
                    append(skipped[i])
                    continue
                if w is not True:
                    append(self._error(rule, when, w, facts))
                    continue
            k = ckey(facts)
            ok = cmemo.get(k, absent)
            if ok is absent:
                ok = check._compute(facts, k)
            if ok is True:
                append(passed[i])
            elif ok is False:
                append(self._fail(rule, facts, detail))
            else:
                append(self._error(rule, check, ok, facts))
        return out

    def _error(self, rule: Rule, expr: Expr, value: Any, facts: dict[str, Any]) -> RuleResult:
        why = str(value) if isinstance(value, ExprError) else f"gave {value!r}, not true or false"
        return RuleResult(
            rule, "error", expr.evidence(facts), why=f"{expr.where}: {why}", facts=facts
        )

    def _fail(self, rule: Rule, facts: dict[str, Any], detail: Detail) -> RuleResult:
        evidence = rule.check.evidence(facts)
        for name in rule.evidence:
            evidence[name] = readable(name, facts.get(name))
        period, since = self._period(rule, facts, detail)
        if since is not None:
            evidence["since"] = since.isoformat()
        return RuleResult(
            rule, "fail", evidence, period, since, why=f"not {rule.check.source}", facts=facts
        )

    def _explain(self, rule: Rule, facts: dict[str, Any], detail: Detail) -> RuleResult:
        if facts["status"] not in rule.statuses:
            r = self._wrong_status[self.rules.index(rule)]
            return RuleResult(
                rule, "skip", why=f"status is {facts['status']}: {r.why}", facts=facts
            )
        if rule.when is not None:
            w = rule.when.run(facts)
            if w is not True and w is not False:
                return self._error(rule, rule.when, w, facts)
            if w is False:
                evidence = rule.when.evidence(facts)
                ok = rule.check.run(facts)
                would = "pass" if ok is True else "fail" if ok is False else "fail with an error"
                why = f"does not apply: {rule.when.source} (the check would {would})"
                return RuleResult(rule, "skip", evidence, why=why, facts=facts)
        ok = rule.check.run(facts)
        if ok is False:
            return self._fail(rule, facts, detail)
        if ok is not True:
            return self._error(rule, rule.check, ok, facts)
        evidence = rule.check.evidence(facts)
        for name in rule.evidence:
            evidence[name] = readable(name, facts.get(name))
        return RuleResult(rule, "pass", evidence, why=rule.check.source, facts=facts)

    def _period(
        self, rule: Rule, facts: Mapping[str, Any], detail: Detail
    ) -> tuple[str, datetime | None]:
        since: datetime | None = None
        if rule.kind == "cadence":
            since = detail.cadence_since
        elif rule.kind == "trigger":
            hit = detail.triggers.get(rule.id.removeprefix("trigger."))
            if hit is not None:
                since = hit[1]
        elif rule.kind in ("entry", "exit"):
            since = detail.stage_entered
        p = rule.period
        if p == "none":
            return "", since
        if p == "last_update":
            lu = detail.last_update
            return ("never" if lu is None else lu.isoformat()), since
        if p == "trigger":
            hit = detail.triggers.get(rule.id.removeprefix("trigger."))
            return ("" if hit is None else hit[0].at.isoformat()), since
        # stage: one violation per visit of a stage
        se = detail.stage_entered
        return f"{facts['stage']}@{'' if se is None else se.date().isoformat()}", since
