"""Atlassian Document Format (Jira Cloud REST v3 rich text) to and from Markdown.

Jira Cloud's v3 API gives and takes rich-text fields (``description``, comments) as ADF, a JSON
tree; the canonical model holds text. :func:`adf_to_markdown` renders a document as Markdown and
:func:`markdown_to_adf` parses the Markdown it writes (and the common hand-written subset) back:

* blocks: paragraphs, headings, bullet and numbered lists (nested by indentation), code blocks
  with their language, block quotes, rules;
* inline: bold, italic, strike-through, inline code, links, hard line breaks.

Other nodes degrade to their text: a mention becomes ``@Name``, an emoji its short name, a
status lozenge its label, a card or media its URL, a table its cells' paragraphs. A document made
of the supported nodes survives ``adf -> markdown -> adf`` unchanged (up to merged text runs),
and Markdown written by :func:`adf_to_markdown` survives the other way round. Characters that
would read as Markdown syntax are escaped with a backslash, so ordinary text stays text.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["adf_to_markdown", "markdown_to_adf", "normalize_adf"]

Node = dict[str, Any]

# --------------------------------------------------------------------------- ADF -> Markdown

_INLINE_ESCAPE = re.compile(r"([\\`*\[\]~])")
_UNDERSCORE = re.compile(r"(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")
_BLOCK_START = re.compile(r"^(\s*)(#{1,6}(?=\s|$)|>|[-+*](?=\s|$)|(\d+)([.)])(?=\s|$)|`{3}|~{3})")


def adf_to_markdown(doc: Any) -> str:
    """Markdown for an ADF document (``None`` or an empty document gives ``""``).

    A value that is not an ADF document (plain text from an older API) is returned as text.
    """
    if doc is None:
        return ""
    if isinstance(doc, str):
        return doc
    if not isinstance(doc, dict):
        return str(doc)
    blocks = _blocks(doc.get("content") or [], "")
    return "\n\n".join(b for b in blocks if b is not None).strip("\n")


def _blocks(nodes: Sequence[Any], indent: str) -> list[str]:
    out: list[str] = []
    for node in nodes:
        if isinstance(node, dict):
            text = _block(node, indent)
            if text:
                out.append(text)
    return out


def _block(node: Node, indent: str) -> str | None:
    kind = node.get("type")
    content = node.get("content") or []
    attrs = node.get("attrs") or {}
    if kind == "paragraph":
        return _indent(_escape_block(_inline(content)), indent)
    if kind == "heading":
        level = attrs.get("level", 1)
        level = level if isinstance(level, int) and 1 <= level <= 6 else 1
        return indent + "#" * level + " " + _inline(content, block=False).replace("\n", " ")
    if kind in ("bulletList", "orderedList"):
        return _list(node, indent)
    if kind == "codeBlock":
        language = attrs.get("language") or ""
        code = "".join(c.get("text", "") for c in content if isinstance(c, dict))
        fence = "```"
        while fence in code:
            fence += "`"
        return _indent(f"{fence}{language}\n{code}\n{fence}", indent)
    if kind == "blockquote":
        inner = "\n\n".join(_blocks(content, ""))
        return _indent("\n".join(("> " + line).rstrip() for line in inner.split("\n")), indent)
    if kind == "rule":
        return indent + "---"
    if kind == "mediaSingle" or kind == "mediaGroup" or kind == "media":
        text = _plain(node).strip()
        return _indent(_escape_block(_escape(text)), indent) if text else None
    # Unknown or unsupported blocks (tables, panels, expands...): their text, block by block.
    if any(isinstance(c, dict) and c.get("type") in _BLOCK_TYPES for c in content):
        parts = _blocks(content, indent)
        return "\n\n".join(parts) if parts else None
    text = _inline(content) if content else _escape(_leaf_text(node))
    return _indent(_escape_block(text), indent) if text else None


_BLOCK_TYPES = frozenset(
    {
        "paragraph", "heading", "bulletList", "orderedList", "listItem", "codeBlock",
        "blockquote", "rule", "table", "tableRow", "tableCell", "tableHeader", "panel",
        "expand", "nestedExpand", "mediaSingle", "mediaGroup", "layoutSection", "layoutColumn",
        "decisionList", "decisionItem", "taskList", "taskItem",
    }
)  # fmt: skip


def _list(node: Node, indent: str) -> str:
    ordered = node.get("type") == "orderedList"
    start = (node.get("attrs") or {}).get("order", 1) if ordered else 1
    start = start if isinstance(start, int) and start >= 0 else 1
    items: list[str] = []
    for i, item in enumerate(c for c in node.get("content") or [] if isinstance(c, dict)):
        marker = f"{start + i}. " if ordered else "- "
        inner_indent = indent + " " * len(marker)
        children = item.get("content") or [] if item.get("type") == "listItem" else [item]
        parts = _blocks(children, inner_indent)
        if not parts:
            items.append(indent + marker.rstrip())
            continue
        first = parts[0][len(inner_indent) :] if parts[0].startswith(inner_indent) else parts[0]
        rest = parts[1:]
        # A paragraph followed by a nested list stays tight; other blocks get a blank line.
        text = indent + marker + first
        for part in rest:
            text += ("\n" if _ITEM_START.match(part) else "\n\n") + part
        items.append(text)
    return "\n".join(items)


def _indent(text: str, indent: str) -> str:
    if not indent:
        return text
    return "\n".join(indent + line if line else line for line in text.split("\n"))


def _escape(text: str) -> str:
    text = _INLINE_ESCAPE.sub(r"\\\1", text)
    return _UNDERSCORE.sub(r"\\_", text)


def _escape_block(text: str) -> str:
    """Escape what would start a block (``# x``, ``- x``, ``1. x``, ``> x``) on each line."""

    def fix(line: str) -> str:
        m = _BLOCK_START.match(line)
        if not m:
            return line
        lead, token = m.group(1), m.group(2)
        if m.group(3) is not None:  # "1." -> "1\."
            return lead + m.group(3) + "\\" + m.group(4) + line[m.end() :]
        return lead + "\\" + token + line[m.end() :]

    lines = text.split("\n")
    return "\n".join("\\" + line if _RULE.match(line) else fix(line) for line in lines)


def _inline(nodes: Sequence[Any], *, block: bool = True) -> str:
    """Inline nodes as Markdown. Text is written as it is where that reads back the same
    (``5 * 3``, ``[1]``, ``snake_case``), so plain text survives a round trip unchanged;
    otherwise every character that could be markup is escaped. ``block``: the caller will
    pass the text through :func:`_escape_block` (a paragraph's lines), so what must read back
    is the block-escaped form: a struck-through "~" written ``~~~~~`` would become a fence."""
    runs = _runs(nodes)
    if not all(r.get("type") in ("text", "hardBreak") for r in runs):
        return _render(runs, escape=True)  # degraded nodes cannot read back anyway
    out = ""
    for escape, em in ((False, "*"), (False, "_"), (True, "*"), (True, "_")):
        # "_" for italics where a "*" would touch a "**" ("*a***b**" is ambiguous)
        out = _render(runs, escape=escape, em=em)
        if _parse_inline(_escape_block(out) if block else out) == runs:
            break
    return out


def _render(runs: Sequence[Node], *, escape: bool, em: str = "*") -> str:
    """Runs as Markdown, opening and closing marks only where they change, so that runs
    sharing a mark share its delimiters (``**bold *and italic***``). A mark stays open while
    the runs carry it, whatever order the marks were opened in."""
    out: list[str] = []
    stack: list[Node] = []  # open marks, outermost first

    def close_to(depth: int) -> None:
        if len(stack) <= depth:
            return
        # A closer right after a blank does not close ("**a **"): close before the blank.
        blank = ""
        if out and out[-1] and out[-1][-1].isspace():
            kept = out[-1].rstrip()
            blank, out[-1] = out[-1][len(kept) :], kept
        while len(stack) > depth:
            out.append(_closer(stack.pop(), em))
        out.append(blank)

    def extent(mark: Node, start: int) -> int:
        """How many runs from ``start`` on carry ``mark``: the longest-lived opens outermost."""
        n = start
        while n < len(runs) and mark in (runs[n].get("marks") or []):
            n += 1
        return n - start

    for index, node in enumerate(runs):
        kind = node.get("type")
        if kind == "hardBreak":
            close_to(0)  # a mark left open across lines would read as a block marker
            out.append("\n")
            continue
        if kind != "text":
            close_to(0)
            out.append(_escape(_leaf_text(node)))
            continue
        text = str(node.get("text", ""))
        marks = node.get("marks") or []
        wanted = [m for m in _outer_first(marks) if m["type"] != "code"]
        keep = 0
        while keep < len(stack) and stack[keep] in wanted:
            keep += 1
        close_to(keep)
        fresh = [m for m in wanted if m not in stack]
        if not text.strip():
            fresh = []  # a mark cannot open on a blank ("** x" is no span): leave it out
        elif fresh and text[0].isspace():  # nor before one: open after the blank
            lead = text[: len(text) - len(text.lstrip())]
            out.append(_escape(lead) if escape else lead)
            text = text[len(lead) :]
        for mark in sorted(fresh, key=lambda m: -extent(m, index)):  # stable: canonical ties
            out.append(_opener(mark, em))
            stack.append(mark)
        if any(m["type"] == "code" for m in marks):
            out.append(_code(text))
        else:
            out.append(_escape(text) if escape else text)
    close_to(0)
    return "".join(out)


_OUTER = {"link": 0, "strong": 1, "em": 2, "strike": 3, "code": 4}


def _outer_first(marks: Sequence[Any]) -> list[Node]:
    known = [dict(m) for m in marks if isinstance(m, dict) and m.get("type") in _OUTER]
    return sorted(known, key=lambda m: _OUTER[m["type"]])


def _runs(nodes: Sequence[Any]) -> list[Node]:
    """Text runs merged where their marks are equal, with the blanks at a run's edges moved out
    of its emphasis (``**a **`` would not close), and children of unknown inline nodes inlined."""
    flat: list[Node] = []
    for node in nodes:
        if not isinstance(node, dict):
            continue
        if node.get("type") not in ("text", "hardBreak") and node.get("content"):
            flat.extend(_runs(node["content"]))
            continue
        if node.get("type") == "text":
            text, marks = str(node.get("text", "")), _outer_first(node.get("marks") or [])
            core = text.strip()
            if not marks or not core or any(m["type"] == "code" for m in marks):
                _append(flat, _text(text, marks))
                continue
            plain = [m for m in marks if m["type"] == "link"]
            lead, trail = text[: len(text) - len(text.lstrip())], text[len(text.rstrip()) :]
            for part, part_marks in ((lead, plain), (core, marks), (trail, plain)):
                if part:
                    _append(flat, _text(part, part_marks))
            continue
        flat.append(node)
    # A blank moved out of a mark goes back in where the runs on both sides carry it:
    # "**a** **b**" would be two spans, "**a b**" is one.
    out: list[Node] = []
    for i, node in enumerate(flat):
        if node.get("type") == "text" and not node["text"].strip() and 0 < i < len(flat) - 1:
            before, after = flat[i - 1], flat[i + 1]
            if before.get("type") == after.get("type") == "text":
                shared = [m for m in before.get("marks") or [] if m in (after.get("marks") or [])]
                if shared and not any(m["type"] == "code" for m in shared):
                    node = _text(node["text"], shared)
        _append(out, node)
    return out


def _opener(mark: Node, em: str) -> str:
    kind = mark["type"]
    if kind == "link":
        return "["
    if kind == "strong":
        return "**"
    if kind == "strike":
        return "~~"
    return em


def _closer(mark: Node, em: str) -> str:
    kind = mark["type"]
    if kind == "link":
        href = str((mark.get("attrs") or {}).get("href", ""))
        return f"]({href.replace(' ', '%20').replace(')', '%29')})"
    return {"strong": "**", "strike": "~~"}.get(kind, em)


def _code(text: str) -> str:
    fence = "`"
    while fence in text:
        fence += "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _leaf_text(node: Node) -> str:
    """The text an unsupported inline or leaf node stands for."""
    attrs = node.get("attrs") or {}
    kind = node.get("type")
    if kind == "mention":
        name = str(attrs.get("text") or attrs.get("id") or "")
        return name if name.startswith("@") else f"@{name}"
    if kind == "emoji":
        return str(attrs.get("text") or attrs.get("shortName") or "")
    if kind in ("inlineCard", "blockCard", "embedCard"):
        return str(attrs.get("url") or "")
    if kind == "status":
        return str(attrs.get("text") or "")
    if kind == "date":
        return str(attrs.get("timestamp") or "")
    if kind == "media":
        return str(attrs.get("alt") or attrs.get("url") or "")
    return str(node.get("text") or "")


def _plain(node: Any) -> str:
    if not isinstance(node, dict):
        return ""
    if node.get("content"):
        return " ".join(_plain(c) for c in node["content"])
    return _leaf_text(node)


# --------------------------------------------------------------------------- Markdown -> ADF

_HEADING = re.compile(r"^(#{1,6})(?:\s+(.*?))?(?:\s+#+)?\s*$")
_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([^`\s]*)\s*$")
_ITEM = re.compile(r"^(\s*)([-+*]|\d+[.)])(?:\s+(.*))?$")
_ITEM_START = re.compile(r"^\s*(?:[-+*]|\d+[.)])\s")
_RULE = re.compile(r"^\s*([-*_])(?:\s*\1){2,}\s*$")


def markdown_to_adf(text: str | None) -> Node:
    """An ADF document for Markdown (or plain) text. Empty text gives an empty document."""
    lines = (text or "").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return {"type": "doc", "version": 1, "content": _parse_blocks(lines)}


def _parse_blocks(lines: list[str]) -> list[Node]:
    blocks: list[Node] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        fence = _FENCE.match(line)
        if fence:
            i = _code_block(lines, i, fence, blocks)
            continue
        heading = _HEADING.match(line.strip()) if line.lstrip().startswith("#") else None
        if heading and len(line) - len(line.lstrip()) < 4:
            node: Node = {"type": "heading", "attrs": {"level": len(heading.group(1))}}
            content = _parse_inline(heading.group(2) or "")
            if content:
                node["content"] = content
            blocks.append(node)
            i += 1
            continue
        if _RULE.match(line):
            blocks.append({"type": "rule"})
            i += 1
            continue
        if line.lstrip().startswith(">"):
            quoted: list[str] = []
            while i < len(lines) and lines[i].lstrip().startswith(">"):
                stripped = lines[i].lstrip()[1:]
                quoted.append(stripped[1:] if stripped.startswith(" ") else stripped)
                i += 1
            blocks.append({"type": "blockquote", "content": _parse_blocks(quoted)})
            continue
        if _ITEM.match(line):
            i = _list_block(lines, i, blocks)
            continue
        para: list[str] = []
        while i < len(lines) and lines[i].strip() and not _starts_block(lines[i]):
            para.append(lines[i].strip() if not para else lines[i].lstrip())
            i += 1
        if not para:  # a line that starts a block but matched none of the above
            para.append(lines[i].strip())
            i += 1
        blocks.append(_paragraph("\n".join(para)))
    return blocks


def _starts_block(line: str) -> bool:
    s = line.lstrip()
    return bool(
        _FENCE.match(line)
        or (s.startswith("#") and _HEADING.match(s))
        or s.startswith(">")
        or _ITEM.match(line)
        or _RULE.match(line)
    )


def _paragraph(text: str) -> Node:
    content = _parse_inline(text)
    return {"type": "paragraph", "content": content} if content else {"type": "paragraph"}


def _code_block(lines: list[str], i: int, fence: re.Match[str], blocks: list[Node]) -> int:
    lead, marker, language = len(fence.group(1)), fence.group(2), fence.group(3)
    body: list[str] = []
    i += 1
    while i < len(lines):
        close = _FENCE.match(lines[i])
        if (
            close
            and not close.group(3)
            and close.group(2)[0] == marker[0]
            and len(close.group(2)) >= len(marker)
        ):
            i += 1
            break
        body.append(lines[i][lead:] if lines[i][:lead].strip() == "" else lines[i].lstrip())
        i += 1
    node: Node = {"type": "codeBlock"}
    if language:
        node["attrs"] = {"language": language}
    code = "\n".join(body)
    if code:
        node["content"] = [{"type": "text", "text": code}]
    blocks.append(node)
    return i


def _list_block(lines: list[str], i: int, blocks: list[Node]) -> int:
    first = _ITEM.match(lines[i])
    assert first is not None
    base = len(first.group(1))
    ordered = first.group(2)[0].isdigit()
    node: Node = {"type": "orderedList" if ordered else "bulletList", "content": []}
    if ordered:
        node["attrs"] = {"order": int(first.group(2)[:-1])}
    while i < len(lines):
        m = _ITEM.match(lines[i])
        if not m or len(m.group(1)) != base or m.group(2)[0].isdigit() != ordered:
            break
        width = base + len(m.group(2)) + 1
        item_lines = [m.group(3) or ""]
        i += 1
        while i < len(lines):
            line = lines[i]
            if not line.strip():
                # A blank line ends the item unless more indented content follows.
                nxt = next((x for x in lines[i + 1 :] if x.strip()), None)
                if nxt is not None and len(nxt) - len(nxt.lstrip()) >= width:
                    item_lines.append("")
                    i += 1
                    continue
                break
            indent = len(line) - len(line.lstrip())
            if indent >= width:
                item_lines.append(line[width:])
            elif _starts_block(line) or indent <= base:
                break
            else:  # lazy continuation of the item's paragraph
                item_lines.append(line.lstrip())
            i += 1
        children = _parse_blocks(item_lines) or [{"type": "paragraph"}]
        node["content"].append({"type": "listItem", "content": children})
        # A blank line between items of the same list does not end the list.
        j = i
        while j < len(lines) and not lines[j].strip():
            j += 1
        nxt_item = _ITEM.match(lines[j]) if j < len(lines) else None
        if nxt_item and len(nxt_item.group(1)) == base and j > i:
            i = j
    blocks.append(node)
    return i


# -- inline

_ESCAPABLE = frozenset("\\`*_{}[]()#+-.!>~|")


def _parse_inline(text: str) -> list[Node]:
    nodes: list[Node] = []
    for node in _inline_nodes(text, []):
        _append(nodes, node)
    return nodes


def _append(nodes: list[Node], node: Node) -> None:
    """Add a node, merging it into the previous text node when both carry the same marks."""
    if node.get("type") == "text" and not node.get("text"):
        return
    if (
        nodes
        and node.get("type") == "text"
        and nodes[-1].get("type") == "text"
        and nodes[-1].get("marks") == node.get("marks")
    ):
        nodes[-1] = {**nodes[-1], "text": nodes[-1]["text"] + node["text"]}
        return
    nodes.append(node)


def _text(value: str, marks: list[Node]) -> Node:
    node: Node = {"type": "text", "text": value}
    if marks:
        node["marks"] = _sorted_marks(marks)
    return node


def _sorted_marks(marks: list[Node]) -> list[Node]:
    order = {"link": 0, "strong": 1, "em": 2, "strike": 3, "code": 4}
    return sorted(marks, key=lambda m: order.get(m["type"], 9))


def _inline_nodes(text: str, marks: list[Node]) -> Iterator[Node]:
    buf: list[str] = []
    i, n = 0, len(text)

    def flush() -> Iterator[Node]:
        if buf:
            yield _text("".join(buf), marks)
            buf.clear()

    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n and text[i + 1] == "\n":
            yield from flush()
            yield {"type": "hardBreak"}
            i += 2
            continue
        if c == "\\" and i + 1 < n and text[i + 1] in _ESCAPABLE:
            buf.append(text[i + 1])
            i += 2
            continue
        if c == "\n":
            # A soft line break inside a paragraph: Jira shows it as a line break.
            yield from flush()
            yield {"type": "hardBreak"}
            i += 1
            continue
        if c == "`":
            run = len(text[i:]) - len(text[i:].lstrip("`"))
            fence = "`" * run
            end = text.find(fence, i + run)
            while end != -1 and end + run < n and text[end + run] == "`":
                end = text.find(fence, end + run + 1)
            if end != -1:
                code = text[i + run : end]
                if len(code) >= 2 and code.startswith(" ") and code.endswith(" ") and code.strip():
                    code = code[1:-1]
                yield from flush()
                yield _text(code, [*marks, {"type": "code"}])
                i = end + run
                continue
        if c == "[":
            link = _match_link(text, i)
            if link is not None:
                label, href, end = link
                yield from flush()
                yield from _inline_nodes(label, [*marks, {"type": "link", "attrs": {"href": href}}])
                i = end
                continue
        if c in "*_~":
            span = _match_emphasis(text, i)
            if span is not None:
                kind, inner, end = span
                yield from flush()
                yield from _inline_nodes(inner, [*marks, {"type": kind}])
                i = end
                continue
        buf.append(c)
        i += 1
    yield from flush()


def _match_link(text: str, i: int) -> tuple[str, str, int] | None:
    depth, j = 0, i
    while j < len(text):
        ch = text[j]
        if ch == "\\":
            j += 2
            continue
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth == 0:
                break
        j += 1
    else:
        return None
    if j + 1 >= len(text) or text[j + 1] != "(":
        return None
    close = text.find(")", j + 2)
    if close == -1:
        return None
    href = text[j + 2 : close].strip()
    if not href or " " in href:
        return None
    return text[i + 1 : j], href.replace("%20", " ").replace("%29", ")"), close + 1


def _match_emphasis(text: str, i: int) -> tuple[str, str, int] | None:
    """``(mark, inner text, end)`` for an emphasis span opening at ``i``, or None."""
    c = text[i]
    run = len(text[i:]) - len(text[i:].lstrip(c))
    if c == "~":
        if run < 2:
            return None
        delim, kind = "~~", "strike"
    elif run >= 2:  # "***x***" is strong around "*x*"
        delim, kind = c * 2, "strong"
    else:
        delim, kind = c, "em"
    start = i + len(delim)
    if start >= len(text) or text[start].isspace():
        return None
    if c == "_" and i > 0 and text[i - 1].isalnum():
        return None  # intraword underscore: snake_case is not emphasis
    end = _closes(text, start, delim)
    if end is None:
        return None
    return kind, text[start:end], end + len(delim)


def _closes(text: str, start: int, delim: str, *, nested: bool = False) -> int | None:
    """Index of the delimiter closing a span whose content starts at ``start``, or None.

    Where a run of delimiters closes two spans at once (``***``), the inner span closes first:
    an outer ``**`` takes the last two characters, an outer ``*`` the last one, and a ``**``
    nested in a ``*`` span (``nested``) the first two.
    """
    j = start
    while j < len(text):
        ch = text[j]
        if ch == "\\":
            j += 2
            continue
        if ch == "`":
            run = len(text[j:]) - len(text[j:].lstrip("`"))
            close = text.find("`" * run, j + run)
            j = close + run if close != -1 else j + run
            continue
        if ch == "[":
            link = _match_link(text, j)
            if link is not None:
                j = link[2]
                continue
        if ch == delim[0] and j > start and not text[j - 1].isspace():
            run = len(text[j:]) - len(text[j:].lstrip(ch))
            after = j + run
            if not (ch == "_" and after < len(text) and text[after].isalnum()) and run >= len(
                delim
            ):
                return j if nested else j + run - len(delim)
        if len(delim) == 1 and text.startswith(delim * 2, j):
            inner = _closes(text, j + 2, delim * 2, nested=True)
            if inner is not None:
                j = inner + 2
                continue
        j += 1
    return None


# --------------------------------------------------------------------------- comparison


def normalize_adf(doc: Any) -> Any:
    """A document in a canonical form: text runs with equal marks merged, blanks at the edge of
    a mark given to the side that renders them, marks in one order, empty attrs dropped.

    Two documents of the supported nodes that render the same Markdown normalise to the same
    value; tests compare documents through it.
    """
    if isinstance(doc, list):
        return [normalize_adf(item) for item in doc]
    if not isinstance(doc, dict):
        return doc
    out = {
        k: normalize_adf(v)
        for k, v in doc.items()
        if not (k in ("attrs", "marks", "content") and v in ({}, [], None))
    }
    if out.get("type") in ("paragraph", "heading") and "content" in out:
        out["content"] = _runs(out["content"])
    return out
