"""Generated, realistic sales projects for the demo, the emulators' seeds and benchmarks.

Deterministic for a given seed. Names are in English and Chinese; projects spread over every
stage with plausible amounts, stakeholders, deliverables, risks and a share of stale ones, so the
rules and digests have something true to say.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from bridge.model import (
    DEFAULT_STAGES,
    Action,
    Competitor,
    Customer,
    Deliverable,
    Level,
    Money,
    Need,
    NextStep,
    Person,
    Risk,
    SalesProject,
    Stakeholder,
    Status,
)

CUSTOMERS_EN = [
    "Northwind Logistics",
    "Contoso Retail",
    "Fabrikam Health",
    "Adventure Works Cycles",
    "Tailspin Airlines",
    "Woodgrove Bank",
    "Litware Insurance",
    "Proseware Energy",
    "Alpine Ski House",
    "Coho Winery",
    "Wide World Importers",
    "Blue Yonder Airlines",
]
CUSTOMERS_ZH = [
    "华东电力集团",
    "上海浦江物流",
    "杭州西湖银行",
    "苏州工业园区管委会",
    "南京钢铁股份",
    "宁波港集团",
    "深圳前海科技",
    "广州白云机场",
    "成都天府软件园",
    "武汉光谷生物",
    "北京中关村医疗",
    "青岛海尔智家",
]
PRODUCTS_EN = [
    "CRM rollout",
    "Data platform",
    "Fleet telematics",
    "Billing migration",
    "Security audit",
    "Cloud migration",
    "Call-centre AI",
    "Supply-chain visibility",
]
PRODUCTS_ZH = [
    "数字化转型项目",
    "数据中台建设",
    "智慧园区平台",
    "供应链协同系统",
    "安全合规改造",
    "云迁移服务",
    "智能客服升级",
    "财务共享中心",
]
OWNERS = [
    Person(name="Li Wei", email="li.wei@example.com"),
    Person(name="Zhang Min", email="zhang.min@example.com"),
    Person(name="Anna Schmidt", email="anna.schmidt@example.com"),
    Person(name="Tom Baker", email="tom.baker@example.com"),
    Person(name="Chen Jing", email="chen.jing@example.com"),
]
TEAM_OF = {
    "li.wei@example.com": "east",
    "zhang.min@example.com": "east",
    "chen.jing@example.com": "east",
    "anna.schmidt@example.com": "enterprise",
    "tom.baker@example.com": "enterprise",
}
COMPETITORS = ["Salesforce", "SAP", "Oracle", "Kingdee 金蝶", "Yonyou 用友", "HubSpot"]
DELIVERABLE_BY_STAGE = {
    "qualification": "needs_analysis",
    "proposal": "proposal",
    "negotiation": "contract_review",
    "signing": "contract",
    "delivery": "acceptance",
}


@dataclass(frozen=True)
class DemoOptions:
    count: int = 240
    seed: int = 7
    now: datetime = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
    stale_share: float = 0.2


def generate(opts: DemoOptions = DemoOptions()) -> Iterator[SalesProject]:
    """Yield ``opts.count`` projects; the same options always give the same projects."""
    rnd = random.Random(opts.seed)  # noqa: S311 - demo data, not security
    stage_keys = [s.key for s in DEFAULT_STAGES]
    for i in range(opts.count):
        chinese = i % 2 == 0
        customer = rnd.choice(CUSTOMERS_ZH if chinese else CUSTOMERS_EN)
        product = rnd.choice(PRODUCTS_ZH if chinese else PRODUCTS_EN)
        stage_i = min(int(rnd.triangular(0, len(stage_keys), 1)), len(stage_keys) - 1)
        stage = stage_keys[stage_i]
        owner = rnd.choice(OWNERS)
        currency = "CNY" if chinese else rnd.choice(["USD", "EUR"])
        base = rnd.choice([80, 150, 300, 600, 1200, 2500]) * 1000
        amount = Decimal(base * (7 if currency == "CNY" else 1)) + Decimal(rnd.randint(0, 99) * 100)
        stale = rnd.random() < opts.stale_share
        idle_days = rnd.randint(20, 90) if stale else rnd.randint(0, 6)
        # Minutes and seconds spread by index, not drawn from rnd (that would change every
        # project after it): people do not all work on the hour, and a tool's minute-precision
        # queries (Jira's JQL) behave differently when a hundred records share one minute.
        last_update = opts.now - timedelta(
            days=idle_days, hours=rnd.randint(0, 8), minutes=(i * 37) % 60, seconds=(i * 53) % 60
        )
        created = last_update - timedelta(days=rnd.randint(10, 200))
        entered = max(created, last_update - timedelta(days=rnd.randint(0, 40)))
        priority = rnd.choices(list(Level), weights=[3, 5, 3, 1])[0]
        status = Status.open
        if stage == "delivery":
            status = Status.won
        elif rnd.random() < 0.06:
            status = Status.lost
        deliverables = []
        for j, key in enumerate(stage_keys[1 : stage_i + 1], start=1):
            kind = DELIVERABLE_BY_STAGE[key]
            done = j < stage_i or rnd.random() < 0.5
            deliverables.append(
                Deliverable(
                    kind=kind,
                    stage=key,
                    title=kind.replace("_", " "),
                    status="approved" if done else rnd.choice(["missing", "draft"]),
                    approved_at=last_update if done else None,
                )
            )
        stakeholders = []
        if stage_i >= 1 and rnd.random() < 0.8:
            stakeholders.append(
                Stakeholder(
                    name="王总" if chinese else "Dana Scully",
                    title="CIO",
                    role="decision_maker",
                    attitude=rnd.choice(["supportive", "neutral"]),
                )
            )
        if rnd.random() < 0.6:
            stakeholders.append(
                Stakeholder(
                    name="刘经理" if chinese else "Sam Carter",
                    title="IT Manager",
                    role="influencer",
                )
            )
        risks = []
        if rnd.random() < 0.4:
            risks.append(
                Risk(
                    description="预算尚未批复" if chinese else "Budget not yet approved",
                    severity=rnd.choice(list(Level)),
                    mitigation=None if rnd.random() < 0.4 else "Escalate to sponsor",
                    raised_at=last_update,
                )
            )
        yield SalesProject(
            code=f"SP-{2026}-{i + 1:04d}",
            name=f"{customer} {product}" if chinese else f"{customer} - {product}",
            customer=Customer(name=customer, external_id=f"ACC-{rnd.randint(1000, 9999)}"),
            owner=owner,
            team=TEAM_OF[owner.email or ""],
            stage=stage,
            stage_entered_at=entered,
            status=status,
            lost_reason="price" if status == Status.lost else None,
            priority=priority,
            amount=Money(amount=amount, currency=currency),
            probability=[10, 20, 40, 60, 80, 100][stage_i],
            expected_close_date=(opts.now + timedelta(days=rnd.randint(-20, 180))).date(),
            contract_value=Money(amount=amount, currency=currency),
            intent=rnd.choice(list(Level)),
            complexity=rnd.choice(list(Level)),
            stakeholders=stakeholders,
            needs=[
                Need(
                    description="统一客户视图" if chinese else "Single customer view",
                    pain_point=True,
                )
            ],
            competitors=[Competitor(name=rnd.choice(COMPETITORS), threat=rnd.choice(list(Level)))],
            deliverables=deliverables,
            actions=[
                Action(
                    what="客户拜访" if chinese else "Customer visit", at=last_update, by=owner.email
                )
            ],
            next_steps=[
                NextStep(
                    what="发送报价" if chinese else "Send the quote",
                    owner=owner if rnd.random() < 0.8 else None,
                    due=(last_update + timedelta(days=7)).date(),
                )
            ],
            risks=risks,
            created_at=created,
            updated_at=last_update,
            last_meaningful_update_at=last_update,
            last_meaningful_update_by=owner.email,
        )
