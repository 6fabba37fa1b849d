"""Log output of every program: human-readable text, or one JSON object per line.

`--log-format json` is for log shippers (Loki, Fluent Bit, Vector): each record becomes
one line `{"time", "level", "logger", "message", ...}`, where `...` are the record's
structured fields. A progress line passes its figures as `extra={"fields": {...}}`, so a
shipper indexes `step` or `samples_per_sec` without parsing the message text; the text
format ignores them.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import Field

from trainer.atomic_files import finite_or_none

LogFormat = Annotated[
    Literal["text", "json"],
    Field(
        description="Log lines as text, or as one JSON object per line (time, level, logger, message, fields) for log shippers."
    ),
]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _jsonable(value: Any) -> Any:
    """json.dumps' fallback: numpy scalars become numbers (NaN/inf null), anything else its str()."""
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return finite_or_none(item())
        except (TypeError, ValueError):
            pass
    return str(value)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update({str(k): v for k, v in fields.items() if k not in entry})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(finite_or_none(entry), ensure_ascii=False, default=_jsonable)


def log_handler(fmt: str) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT, datefmt="%H:%M:%S"))
    return handler


def configure_logging(level: str, fmt: str = "text") -> None:
    """Replace the root logger's handlers (like basicConfig(force=True)) with one on stderr."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(log_handler(fmt))
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    # Python warnings (a library's deprecation notice) would be bare text lines among the JSON.
    logging.captureWarnings(fmt == "json")
