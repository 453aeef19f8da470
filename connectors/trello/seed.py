"""A sales pipeline board for the Trello emulator: what the demo, tests and ops rehearsals use.

Lists are the default lifecycle's stages, custom fields of every Trello type hold the deal's
numbers, and cards move between lists, get comments and checklists, all through the emulator's
action log, so history and comments look as they do on a real board.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from connectors.trello.emulator import TrelloEmulator

LISTS = ("Leads", "Qualifying", "Proposal", "Negotiation", "Signing", "Delivery")
PRIORITIES = ("Low", "Medium", "High", "Critical")
CUSTOM_FIELDS = {
    "Customer": "text",
    "Project number": "text",
    "Amount": "number",
    "Probability": "number",
    "Close date": "date",
    "Priority": "list",
    "Strategic": "checkbox",
}
PEOPLE = {"li.wei": "Li Wei", "wang.fang": "Wang Fang", "chen.jing": "Chen Jing"}
LABELS = {"Renewal": "blue", "Competitive": "red", "Partner": "green"}
_CUSTOMERS = ("Acme Ltd", "Globex", "Initech", "Umbrella", "Hooli", "Stark Industries")


@dataclass
class SalesBoard:
    board: str
    lists: dict[str, str]
    cards: list[str] = field(default_factory=list)


def sales_board(emu: TrelloEmulator, name: str = "Sales pipeline") -> SalesBoard:
    """An empty pipeline board: stage lists, custom fields, labels and three sales people."""
    for username, full in PEOPLE.items():
        if not any(m.get("username") == username for m in emu.members.values()):
            emu.add_member(username, full)
    board = emu.add_board(name, members=PEOPLE)
    lists = {n: emu.add_list(board, n) for n in LISTS}
    for fname, kind in CUSTOM_FIELDS.items():
        emu.add_custom_field(board, fname, kind, PRIORITIES if kind == "list" else ())
    for label, color in LABELS.items():
        emu.add_label(board, label, color)
    return SalesBoard(board, lists)


def seed_sales(emu: TrelloEmulator, count: int = 12, *, seed: int = 7) -> SalesBoard:
    """A pipeline board with ``count`` deals that people created, moved and commented on."""
    rnd = random.Random(seed)  # noqa: S311 - sample data, not secrets
    sales = sales_board(emu)
    people = list(PEOPLE)
    for i in range(count):
        owner = rnd.choice(people)
        customer = _CUSTOMERS[i % len(_CUSTOMERS)]
        card = emu.add_card(
            sales.lists["Leads"],
            f"{customer}: {rnd.choice(['CRM rollout', 'Data platform', 'Support renewal'])}",
            actor=owner,
            desc=f"Opportunity with {customer}.",
            members=[owner],
            labels=rnd.sample(list(LABELS), rnd.randint(0, 2)),
            custom={
                "Customer": customer,
                "Project number": f"SP-{2026}-{i + 1:03d}",
                "Amount": rnd.randrange(20, 400) * 1000,
                "Probability": rnd.choice([10, 25, 50, 75]),
                "Close date": f"2026-{rnd.randint(3, 12):02d}-{rnd.randint(1, 28):02d}",
                "Priority": rnd.choice(PRIORITIES),
                "Strategic": rnd.random() < 0.3,
            },
        )
        for stage in LISTS[1 : rnd.randint(1, 5)]:
            emu.move_card(card, stage, actor=owner)
        checklist = emu.add_checklist(card, "qualification", actor=owner)
        for title in ("Confirm budget", "Identify decision maker"):
            emu.add_check_item(checklist, title, checked=rnd.random() < 0.5, actor=owner)
        if rnd.random() < 0.6:
            emu.comment(card, f"Call with {customer}: next step agreed.", actor=owner)
        sales.cards.append(card)
    return sales
