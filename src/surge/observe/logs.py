"""Log set-up for the server process and each worker process.

JSON by default: one object per line (time, level, logger, message, and every field a
call passes with `extra=`, such as `request_id`), so a log pipeline can index and join
lines with receipts and traces without parsing prose. `text` keeps the classic line
for a terminal, with the extra fields appended as key=value.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            line.setdefault(key, value)  # an extra never hides the four fields above
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        # default=str: an odd extra (a Path, an enum) must not cost the line.
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = extra_fields(record)
        if not extras:
            return line
        head, newline, rest = line.partition("\n")  # keep a traceback below the fields
        fields = " ".join(f"{k}={v}" for k, v in extras.items())
        return f"{head} {fields}{newline}{rest}"


FORMATTERS = {"json": JsonFormatter, "text": TextFormatter}


class _SurgeHandler(logging.StreamHandler):
    """Marks the handler this module installed, so a second call replaces it."""


def configure_logging(level: str, fmt: str = "json") -> None:
    """Send every log line to stderr in `fmt` ("json" or "text") at `level` and above.

    Idempotent: calling again (the app factory of each worker does) swaps our handler
    and leaves handlers others installed (pytest's, an embedding app's) alone.
    """
    if fmt not in FORMATTERS:
        raise ValueError(f"log format must be one of {sorted(FORMATTERS)}, got {fmt!r}")
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _SurgeHandler):
            root.removeHandler(handler)
    handler = _SurgeHandler()
    handler.setFormatter(FORMATTERS[fmt]())
    root.addHandler(handler)
    root.setLevel(level.upper())
    # httpx logs every request at INFO: one line per upstream call is per-request logging
    # on the hot path (chat providers, upstream models). Its warnings still come through.
    logging.getLogger("httpx").setLevel(logging.WARNING)
