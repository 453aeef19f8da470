"""Log output: human lines (default) or one JSON object per line, secrets redacted in both.

The redacting filter sits on the root handler, not on a logger, so records from other
libraries (urllib3 logs full URLs with query tokens at DEBUG) are redacted too; the JSON
formatter scrubs its whole output once more, because a traceback is not part of the message
the filter sees.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["human", "json"]
HUMAN = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else was passed in ``extra=`` and is kept.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", ...extra, "exception"?}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        from bridge.http import scrub

        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return scrub(json.dumps(out, ensure_ascii=False, default=str))


def formatter(fmt: LogFormat) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else logging.Formatter(HUMAN)


def configure_logging(level: str, fmt: LogFormat = "human") -> None:
    """One stderr handler on the root logger, redacting, in ``fmt``; ``level`` by name."""
    from bridge.http import RedactingFilter

    handler = logging.StreamHandler()
    handler.setFormatter(formatter(fmt))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.WARNING))


def set_format(fmt: LogFormat, level: str | None = None) -> None:
    """Switch the root handlers (installed by :func:`configure_logging` or the CLI) to ``fmt``;
    raise the root level to ``level`` if it is more verbose than the current one."""
    root = logging.getLogger()
    if not root.handlers:
        configure_logging(level or "warning", fmt)
        return
    for handler in root.handlers:
        handler.setFormatter(formatter(fmt))
    if level is not None:
        wanted = getattr(logging, level.upper(), logging.WARNING)
        root.setLevel(min(root.level or logging.WARNING, wanted))
