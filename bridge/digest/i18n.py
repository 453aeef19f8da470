"""What a manager reads, in ``en`` and ``zh-CN``: headings, KPI formulas, and number, money
and date formats (babel's locale data, so a Chinese reader gets 2026年11月30日 and 万).

Stage labels and rule titles are not here: they come from the lifecycle and the rule pack,
which already carry both languages.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, tzinfo
from decimal import ROUND_HALF_UP, Decimal
from typing import Final

from babel.dates import format_date
from babel.numbers import format_decimal

LANGS: Final = ("en", "zh-CN")

_EN: Final[dict[str, str]] = {
    "title": "Sales project digest",
    "subject": "Sales project digest for {teams}: {open} open violation(s), {new} new",
    "subject_quiet": "Sales project digest for {teams}",
    "intro": "{projects} project(s) in {teams}, {open_projects} open. Changes since {since}.",
    "masked_note": "Amounts are hidden for your role.",
    "compliance": "Compliance",
    "open_violations": "Open violations",
    "by_owner": "By owner",
    "by_rule": "By rule",
    "new_since": "New since the last digest",
    "resolved_since": "Resolved since the last digest",
    "escalations": "Escalated to you",
    "attention": "Projects needing attention",
    "overdue_update": "Most overdue updates",
    "slipping": "Slipping close dates",
    "stuck": "Stuck in a stage",
    "kpis": "Key figures",
    "kpi_note": "Last {days} days ({start} to {end}) against the {days} days before.",
    "previous": "before",
    "formula": "Formula",
    "stage_conversion": "Stage conversion",
    "picture": "Pipeline picture",
    "funnel": "Open projects by stage",
    "freshness": "Days since the last update (open projects)",
    "no_data": "n/a",
    "owner_none": "(no owner)",
    "idle": "{days} days without an update (cadence: {limit})",
    "idle_never": "never updated (cadence: {limit})",
    "close_passed": "close date {date} passed {days} days ago",
    "close_pushed": "close date moved from {old} to {new}",
    "in_stage": "{days} days in {stage}",
    "critical": "critical",
    "open_word": "open",
    "since": "since",
    "escalated_on": "escalated {date}",
    "resolved_on": "resolved {date}",
    "more": "… and {n} more",
    "fresh_0_7": "0-7 days",
    "fresh_8_14": "8-14 days",
    "fresh_15_30": "15-30 days",
    "fresh_31": "over 30 days",
    "fresh_never": "never",
    "footer": "Sent by salesbridge. Scope: {teams}. Counts cover only these teams' projects.",
    "kpi.win_rate": "Win rate",
    "kpi.win_rate.f": "won ÷ (won + lost), closed in the period",
    "kpi.avg_cycle": "Average sales cycle",
    "kpi.avg_cycle.f": "mean(close date − created) of projects won in the period",
    "kpi.pipeline": "Pipeline value",
    "kpi.pipeline.f": "sum of the amounts of open projects at the end of the period",
    "kpi.weighted": "Weighted pipeline",
    "kpi.weighted.f": "sum of amount × probability of open projects",
    "kpi.velocity": "Pipeline velocity",
    "kpi.velocity.f": "open qualified × win rate × average won amount ÷ average cycle (days)",
    "kpi.slippage": "Slippage",
    "kpi.slippage.f": "value of projects whose close date moved out of the period",
    "kpi.stale_rate": "Stale rate",
    "kpi.stale_rate.f": "open projects past their update cadence ÷ open tracked projects",
    "kpi.transparency": "Information transparency",
    "kpi.transparency.f": (
        "projects meeting every entry/exit criterion of their stage and updated within "
        "cadence ÷ open tracked projects"
    ),
    "kpi.conversion.f": "moved from the stage to the next ÷ entered the stage, in the period",
    "denominator": "of {n}",
    "per_day": "/day",
    "days_unit": "{n} days",
    "col.stage": "Stage",
    "col.count": "Projects",
    "col.value": "Value",
    "col.weighted": "Weighted",
}

_ZH: Final[dict[str, str]] = {
    "title": "销售项目简报",
    "subject": "{teams} 销售项目简报：{open} 项未关闭违规，新增 {new} 项",
    "subject_quiet": "{teams} 销售项目简报",
    "intro": "{teams} 共 {projects} 个项目，其中 {open_projects} 个进行中。变化自 {since} 起计。",
    "masked_note": "按您的角色，金额已隐藏。",
    "compliance": "合规情况",
    "open_violations": "未关闭违规",
    "by_owner": "按负责人",
    "by_rule": "按规则",
    "new_since": "上次简报以来新增",
    "resolved_since": "上次简报以来已解决",
    "escalations": "已升级给您",
    "attention": "需要关注的项目",
    "overdue_update": "更新逾期最久",
    "slipping": "成交日期推迟",
    "stuck": "阶段停滞",
    "kpis": "关键指标",
    "kpi_note": "最近 {days} 天（{start} 至 {end}），与之前 {days} 天对比。",
    "previous": "之前",
    "formula": "公式",
    "stage_conversion": "阶段转化率",
    "picture": "销售漏斗概览",
    "funnel": "各阶段进行中项目",
    "freshness": "距上次更新天数（进行中项目）",
    "no_data": "无数据",
    "owner_none": "（无负责人）",
    "idle": "已 {days} 天未更新（要求：{limit}）",
    "idle_never": "从未更新（要求：{limit}）",
    "close_passed": "预计成交日期 {date} 已过 {days} 天",
    "close_pushed": "预计成交日期由 {old} 推迟至 {new}",
    "in_stage": "在「{stage}」阶段已 {days} 天",
    "critical": "严重",
    "open_word": "未关闭",
    "since": "自",
    "escalated_on": "{date} 升级",
    "resolved_on": "{date} 解决",
    "more": "……另有 {n} 项",
    "fresh_0_7": "0-7 天",
    "fresh_8_14": "8-14 天",
    "fresh_15_30": "15-30 天",
    "fresh_31": "30 天以上",
    "fresh_never": "从未更新",
    "footer": "由 salesbridge 发送。范围：{teams}。统计仅包含这些团队的项目。",
    "kpi.win_rate": "赢单率",
    "kpi.win_rate.f": "赢单数 ÷（赢单数 + 丢单数），按期内关闭计",
    "kpi.avg_cycle": "平均销售周期",
    "kpi.avg_cycle.f": "期内赢单项目（成交日期 − 创建日期）的平均值",
    "kpi.pipeline": "管道金额",
    "kpi.pipeline.f": "期末进行中项目金额之和",
    "kpi.weighted": "加权管道金额",
    "kpi.weighted.f": "进行中项目 金额 × 赢单概率 之和",
    "kpi.velocity": "管道速度",
    "kpi.velocity.f": "已确认机会数 × 赢单率 × 平均赢单金额 ÷ 平均销售周期（天）",
    "kpi.slippage": "成交推迟金额",
    "kpi.slippage.f": "预计成交日期被推出本期的项目金额",
    "kpi.stale_rate": "更新逾期率",
    "kpi.stale_rate.f": "超出更新频率要求的进行中项目 ÷ 进行中的立项项目",
    "kpi.transparency": "信息透明度",
    "kpi.transparency.f": "满足本阶段全部准入/退出标准且按频率更新的项目 ÷ 进行中的立项项目",
    "kpi.conversion.f": "期内由该阶段进入下一阶段的次数 ÷ 期内进入该阶段的次数",
    "denominator": "共 {n}",
    "per_day": "/天",
    "days_unit": "{n} 天",
    "col.stage": "阶段",
    "col.count": "项目数",
    "col.value": "金额",
    "col.weighted": "加权金额",
}

_TEXTS: Final = {"en": _EN, "zh-CN": _ZH}


def norm_lang(lang: str) -> str:
    """``zh``, ``zh-CN``, ``zh_cn`` -> ``zh-CN``; anything else -> ``en``."""
    return "zh-CN" if lang.lower().startswith("zh") else "en"


def pick(text: dict[str, str], lang: str) -> str:
    """A ``{"en": ..., "zh-CN": ...}`` text in ``lang`` (English when missing)."""
    return text.get(norm_lang(lang)) or text.get("en") or next(iter(text.values()), "")


@dataclass(frozen=True)
class Fmt:
    """Words and formats of one language, dates shown in ``tz``."""

    lang: str
    tz: tzinfo

    @property
    def locale(self) -> str:
        return "zh_CN" if self.lang == "zh-CN" else "en"

    def t(self, key: str, **kw: object) -> str:
        text = _TEXTS[self.lang].get(key) or _EN[key]
        return text.format(**kw) if kw else text

    def count(self, n: int) -> str:
        return format_decimal(n, "#,##0", locale=self.locale)

    def num(self, x: float, digits: int = 1) -> str:
        pattern = "#,##0." + "0" * digits if digits else "#,##0"
        return format_decimal(x, pattern, locale=self.locale)

    def pct(self, x: float) -> str:
        return format_decimal(x * 100, "#,##0.0", locale=self.locale) + "%"

    def money(self, amount: Decimal | None, currency: str) -> str:
        """``1,234,500 USD``; in Chinese ``123.5万 USD`` from ten thousand up."""
        if amount is None:
            return self.t("no_data")
        if self.lang == "zh-CN" and abs(amount) >= 10_000:
            wan = (amount / 10_000).quantize(Decimal("0.1"), ROUND_HALF_UP)
            return f"{format_decimal(wan, '#,##0.0', locale=self.locale)}万 {currency}"
        whole = amount.quantize(Decimal(1), ROUND_HALF_UP)
        return f"{format_decimal(whole, '#,##0', locale=self.locale)} {currency}"

    def date(self, d: date | datetime | None) -> str:
        if d is None:
            return "-"
        if isinstance(d, datetime):
            d = d.astimezone(self.tz).date()
        return format_date(d, "medium", locale=self.locale)

    def days(self, n: float) -> str:
        return self.t("days_unit", n=self.num(n, 1 if n < 10 else 0))
