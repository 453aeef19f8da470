"""The rule engine: rule packs (TOML files ops staff edit) checked against every project.

::

    pack = load_rules([Path("rules/default.toml")])      # checked: UserError names file/key/fix
    result = pack.evaluate(project, events, now, Calendar.of("Europe/Berlin", holidays))
    result.admission.tracked, [r.rule.id for r in result.violations]
    report = bridge.rules.sweep.sweep(store, pack, now=now, calendars=calendars)

Layers: :mod:`~bridge.rules.facts` derives a fixed set of facts per project (idle days in the
team's timezone, deliverable statuses, stakeholder counts, event counts in windows...);
:mod:`~bridge.rules.engine` runs the pack's CEL expressions over them;
:mod:`~bridge.rules.loader` reads and checks the files; :mod:`~bridge.rules.sweep` records
the outcomes in the store (open, escalate, resolve); :mod:`~bridge.rules.fixtures` runs ops
staff's fixture tests (``salesbridge rules test``).
"""

from bridge.rules.calendar import Calendar, Gap, parse_duration, parse_gap
from bridge.rules.engine import (
    LANGS,
    AdmissionDecision,
    Evaluation,
    Rule,
    RuleResult,
)
from bridge.rules.facts import CONSTANTS, FACTS, Fact
from bridge.rules.loader import (
    SEVERITIES,
    RulePack,
    default_pack_path,
    evaluate,
    load_rules,
    parse_rules,
)

__all__ = [
    "CONSTANTS",
    "FACTS",
    "LANGS",
    "SEVERITIES",
    "AdmissionDecision",
    "Calendar",
    "Evaluation",
    "Fact",
    "Gap",
    "Rule",
    "RulePack",
    "RuleResult",
    "default_pack_path",
    "evaluate",
    "load_rules",
    "parse_duration",
    "parse_gap",
    "parse_rules",
]
