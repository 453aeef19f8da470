"""The standard project tracking table, exported as xlsx or csv.

One row per live project in scope (all, or one team and the teams nested under it): basic
info, stage, task completion per stage, people, needs, competitors, actions and next steps,
risks and mitigations, expected close date and amount, last update and the open violations.
Headers are in ``en`` or ``zh-CN``. The xlsx has a frozen header, filters, sized columns and
real dates (in the config's timezone, which Excel cannot store); the csv is UTF-8 with a BOM
so that Excel opens Chinese text correctly.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, tzinfo
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from bridge.config import LoadedConfig
from bridge.digest.i18n import norm_lang, pick
from bridge.digest.scope import Scope
from bridge.errors import UserError
from bridge.model import Lifecycle
from bridge.store import Store, Violation

__all__ = ["Column", "Table", "export", "tracking_table", "write_csv", "write_xlsx"]

Format = Literal["xlsx", "csv"]
Cell = str | int | Decimal | date | datetime | None


@dataclass(frozen=True, slots=True)
class Column:
    key: str
    title: str
    kind: str = "text"
    """``text``, ``date``, ``datetime``, ``money`` or ``int``: how xlsx formats the cells."""
    width: int = 18


@dataclass(frozen=True, slots=True)
class Table:
    columns: list[Column]
    rows: list[list[Cell]]


_TITLES: dict[str, dict[str, str]] = {
    "name": {"en": "Project", "zh-CN": "项目名称"},
    "code": {"en": "Code", "zh-CN": "项目编号"},
    "customer": {"en": "Customer", "zh-CN": "客户"},
    "owner": {"en": "Owner", "zh-CN": "负责人"},
    "team": {"en": "Team", "zh-CN": "团队"},
    "stage": {"en": "Stage", "zh-CN": "当前阶段"},
    "status": {"en": "Status", "zh-CN": "状态"},
    "tasks": {"en": "Tasks done: {stage}", "zh-CN": "任务完成：{stage}"},
    "decision_makers": {"en": "Decision makers", "zh-CN": "决策人"},
    "influencers": {"en": "Influencers", "zh-CN": "影响者"},
    "needs": {"en": "Customer needs", "zh-CN": "客户需求"},
    "competitors": {"en": "Competitors", "zh-CN": "竞争对手"},
    "actions": {"en": "Actions taken", "zh-CN": "已采取行动"},
    "next_steps": {"en": "Next steps", "zh-CN": "下一步计划"},
    "risks": {"en": "Risks and mitigations", "zh-CN": "风险与应对措施"},
    "close_date": {"en": "Expected close date", "zh-CN": "预计成交日期"},
    "amount": {"en": "Amount", "zh-CN": "金额"},
    "currency": {"en": "Currency", "zh-CN": "币种"},
    "probability": {"en": "Probability %", "zh-CN": "赢单概率 %"},
    "last_update": {"en": "Last update", "zh-CN": "最后更新时间"},
    "violation_count": {"en": "Open violations", "zh-CN": "未关闭违规数"},
    "violations": {"en": "Violations", "zh-CN": "违规明细"},
}
_STATUS = {
    "open": {"en": "open", "zh-CN": "进行中"},
    "won": {"en": "won", "zh-CN": "赢单"},
    "lost": {"en": "lost", "zh-CN": "丢单"},
    "on_hold": {"en": "on hold", "zh-CN": "暂停"},
}
_DECIDERS = ("decision_maker", "economic_buyer")
_INFLUENCERS = ("influencer", "champion", "technical_buyer")


def _person(p: Any) -> str:
    if not isinstance(p, Mapping):
        return ""
    return str(p.get("name") or p.get("email") or "")


def _dt(value: Any, tz: tzinfo) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    # Spreadsheets have no time zones: show the local wall-clock time.
    return parsed.astimezone(tz).replace(tzinfo=None, microsecond=0)


def _lines(items: Sequence[str]) -> str:
    return "\n".join(i for i in items if i)


def _stakeholders(data: Mapping[str, Any], roles: tuple[str, ...]) -> str:
    out = []
    for s in data.get("stakeholders") or []:
        if s.get("role") in roles:
            title = f" ({s['title']})" if s.get("title") else ""
            out.append(f"{s.get('name', '')}{title}")
    return _lines(out)


def _tasks(data: Mapping[str, Any], stage: str) -> str:
    tasks = [t for t in data.get("tasks") or [] if t.get("stage") == stage]
    if not tasks:
        return ""
    return f"{sum(1 for t in tasks if t.get('done'))}/{len(tasks)}"


def tracking_table(
    projects: Sequence[Mapping[str, Any]],
    violations: Mapping[str, Sequence[Violation]],
    *,
    lifecycle: Lifecycle,
    lang: str = "en",
    tz: tzinfo | None = None,
    rule_title: Any = None,
) -> Table:
    """The tracking table of ``projects``; ``violations`` are the open ones by project id,
    ``rule_title(rule_id, lang)`` names a rule (its id when None)."""
    lg = norm_lang(lang)
    zone = tz or ZoneInfo("UTC")

    def title(key: str, **kw: str) -> str:
        return pick(_TITLES[key], lg).format(**kw)

    columns = [
        Column("name", title("name"), width=36),
        Column("code", title("code"), width=14),
        Column("customer", title("customer"), width=26),
        Column("owner", title("owner"), width=16),
        Column("team", title("team"), width=12),
        Column("stage", title("stage"), width=22),
        Column("status", title("status"), width=10),
        *(
            Column(f"tasks.{s.key}", title("tasks", stage=s.label(lg)), width=12)
            for s in lifecycle.stages
        ),
        Column("decision_makers", title("decision_makers"), width=24),
        Column("influencers", title("influencers"), width=24),
        Column("needs", title("needs"), width=32),
        Column("competitors", title("competitors"), width=22),
        Column("actions", title("actions"), width=36),
        Column("next_steps", title("next_steps"), width=36),
        Column("risks", title("risks"), width=40),
        Column("close_date", title("close_date"), kind="date", width=14),
        Column("amount", title("amount"), kind="money", width=16),
        Column("currency", title("currency"), width=9),
        Column("probability", title("probability"), kind="int", width=10),
        Column("last_update", title("last_update"), kind="datetime", width=18),
        Column("violation_count", title("violation_count"), kind="int", width=10),
        Column("violations", title("violations"), width=44),
    ]
    rows: list[list[Cell]] = []
    for data in projects:
        pid = str(data["id"])
        stage = str(data.get("stage") or "")
        try:
            stage_label = lifecycle.get(stage).label(lg)
        except KeyError:
            stage_label = stage
        amount = data.get("amount") or {}
        opened = violations.get(pid, ())
        close = data.get("expected_close_date")
        row: list[Cell] = [
            str(data.get("name") or ""),
            data.get("code"),
            (data.get("customer") or {}).get("name"),
            _person(data.get("owner")),
            data.get("team"),
            stage_label,
            pick(_STATUS.get(str(data.get("status")), {"en": str(data.get("status"))}), lg),
            *(_tasks(data, s.key) for s in lifecycle.stages),
            _stakeholders(data, _DECIDERS),
            _stakeholders(data, _INFLUENCERS),
            _lines([n.get("description", "") for n in data.get("needs") or []]),
            _lines([c.get("name", "") for c in data.get("competitors") or []]),
            _lines(
                [
                    f"{str(a.get('at', ''))[:10]} {a.get('what', '')}"
                    for a in data.get("actions") or []
                ]
            ),
            _lines(
                [
                    " · ".join(
                        x for x in (n.get("what", ""), _person(n.get("owner")), n.get("due")) if x
                    )
                    for n in data.get("next_steps") or []
                ]
            ),
            _lines(
                [
                    f"[{r.get('severity', '')}] {r.get('description', '')}"
                    + (f" → {r['mitigation']}" if r.get("mitigation") else "")
                    for r in data.get("risks") or []
                    if r.get("status", "open") == "open"
                ]
            ),
            date.fromisoformat(str(close)) if close else None,
            Decimal(str(amount["amount"])) if amount.get("amount") is not None else None,
            amount.get("currency"),
            data.get("probability"),
            _dt(data.get("last_meaningful_update_at"), zone),
            len(opened),
            _lines(
                [
                    (rule_title(v.rule, lg) if rule_title else v.rule)
                    + (" !" if v.severity == "critical" else "")
                    for v in opened
                ]
            ),
        ]
        rows.append(row)
    return Table(columns, rows)


def write_xlsx(table: Table, out: Path | io.BytesIO, *, sheet: str = "Projects") -> None:
    """An xlsx with a frozen, filtered header, sized columns and typed cells."""
    from openpyxl import Workbook
    from openpyxl.styles import Alignment, Font, PatternFill
    from openpyxl.utils import get_column_letter

    wb = Workbook()
    ws = wb.active
    ws.title = sheet
    ws.append([c.title for c in table.columns])
    for cell in ws[1]:
        cell.font = Font(bold=True, color="FFFFFF")
        cell.fill = PatternFill("solid", fgColor="1F4E79")
        cell.alignment = Alignment(vertical="center", wrap_text=True)
    formats = {
        "date": "yyyy-mm-dd",
        "datetime": "yyyy-mm-dd hh:mm",
        "money": "#,##0.00",
        "int": "0",
    }
    for row in table.rows:
        ws.append([float(v) if isinstance(v, Decimal) else v for v in row])
        r = ws.max_row
        for i, col in enumerate(table.columns, start=1):
            cell = ws.cell(row=r, column=i)
            if col.kind in formats:
                cell.number_format = formats[col.kind]
            elif isinstance(cell.value, str) and "\n" in cell.value:
                cell.alignment = Alignment(wrap_text=True, vertical="top")
    for i, col in enumerate(table.columns, start=1):
        ws.column_dimensions[get_column_letter(i)].width = col.width
    ws.freeze_panes = "B2"
    last = get_column_letter(len(table.columns))
    ws.auto_filter.ref = f"A1:{last}{max(ws.max_row, 1)}"
    wb.save(out)


def write_csv(table: Table, out: Path | io.StringIO) -> None:
    """UTF-8 with a BOM (Excel's cue for UTF-8), dates as ISO 8601."""

    def cell(v: Cell) -> str:
        if v is None:
            return ""
        if isinstance(v, datetime):
            return v.strftime("%Y-%m-%d %H:%M")
        if isinstance(v, date):
            return v.isoformat()
        return str(v)

    def write(f: Any) -> None:
        w = csv.writer(f)
        w.writerow([c.title for c in table.columns])
        for row in table.rows:
            w.writerow([cell(v) for v in row])

    if isinstance(out, Path):
        with out.open("w", encoding="utf-8-sig", newline="") as f:
            write(f)
    else:
        out.write("\ufeff")
        write(out)


def export(
    store: Store,
    loaded: LoadedConfig,
    *,
    fmt: Format,
    out: Path,
    team: str | None = None,
    lang: str | None = None,
    pack: Any = None,
) -> int:
    """Write the tracking table of every live project (or ``team``'s, nested teams
    included) to ``out``; returns the number of rows."""
    config = loaded.config
    if team is not None and team not in config.teams:
        known = ", ".join(config.teams) or "none configured"
        raise UserError(f"--team {team!r} is not a team in the config (known: {known})")
    scope = Scope(config, [team]) if team is not None else None
    projects = [p for p in store.list_projects() if scope is None or scope.contains(p)]
    projects.sort(key=lambda p: (str(p.get("code") or ""), str(p.get("name") or "")))
    ids = {str(p["id"]) for p in projects}
    by_project: dict[str, list[Violation]] = defaultdict(list)
    for v in store.list_violations(open_only=True):
        if v.project_id in ids:
            by_project[v.project_id].append(v)

    def rule_title(rule: str, lg: str) -> str:
        if pack is None:
            return rule
        try:
            return str(pack.rule(rule).title_in(lg))
        except KeyError:
            return rule

    table = tracking_table(
        projects,
        by_project,
        lifecycle=config.lifecycle,
        lang=lang or config.language,
        tz=ZoneInfo(config.timezone),
        rule_title=rule_title,
    )
    if fmt == "xlsx":
        write_xlsx(table, out)
    else:
        write_csv(table, out)
    return len(table.rows)
