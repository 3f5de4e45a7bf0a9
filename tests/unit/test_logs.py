"""Structured logs: JSON lines a pipeline can parse, carrying the request id; the access
log samples by its ratio (a fake draw makes it deterministic) and never skips a 5xx."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import datetime

import pytest

from surge.config_observe import LogsConfig
from surge.core.context import RequestContext
from surge.observe.access_log import AccessLog
from surge.observe.logs import JsonFormatter, TextFormatter, configure_logging


def emit(formatter: logging.Formatter, call) -> str:
    """Run `call(logger)` and return what `formatter` wrote for it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger("surge.test.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        call(logger)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def test_a_json_line_has_time_level_logger_message_and_the_extra_fields():
    out = emit(JsonFormatter(), lambda log: log.info(
        "served %s", "digits", extra={"request_id": "r-1", "endpoint": "digits", "rows": 3}
    ))  # fmt: skip
    line = json.loads(out)
    assert line["message"] == "served digits" and line["level"] == "INFO"
    assert line["logger"] == "surge.test.logs"
    assert (line["request_id"], line["endpoint"], line["rows"]) == ("r-1", "digits", 3)
    assert datetime.fromisoformat(line["time"]).utcoffset().total_seconds() == 0


def test_an_exception_is_one_json_line_with_its_traceback_in_exc():
    def fail(log: logging.Logger) -> None:
        try:
            raise ValueError("bad row")
        except ValueError:
            log.exception("batch failed", extra={"request_id": "r-2"})

    out = emit(JsonFormatter(), fail)
    assert out.count("\n") == 1  # the traceback is escaped inside the one line
    line = json.loads(out)
    assert line["request_id"] == "r-2" and line["level"] == "ERROR"
    assert "ValueError: bad row" in line["exc"]


def test_an_odd_extra_value_does_not_cost_the_line():
    out = emit(JsonFormatter(), lambda log: log.warning("x", extra={"path": object()}))
    assert json.loads(out)["path"].startswith("<object")


def test_text_lines_keep_the_classic_format_and_append_the_fields():
    out = emit(TextFormatter(), lambda log: log.info("hello", extra={"request_id": "r-3"}))
    assert "INFO surge.test.logs: hello request_id=r-3" in out


@pytest.fixture
def root_handlers() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("root_handlers")
def test_configure_logging_is_idempotent_and_leaves_other_handlers_alone():
    root = logging.getLogger()
    foreign = logging.NullHandler()
    root.addHandler(foreign)
    configure_logging("warning")
    configure_logging("debug", "text")
    assert foreign in root.handlers
    ours = [h for h in root.handlers if isinstance(h.formatter, (JsonFormatter, TextFormatter))]
    assert len(ours) == 1 and isinstance(ours[0].formatter, TextFormatter)
    assert root.level == logging.DEBUG
    with pytest.raises(ValueError, match="log format"):
        configure_logging("info", "xml")


def finished(status: int = 200, request_id: str = "r-1") -> RequestContext:
    ctx = RequestContext(request_id, "digits", deadline=10.0, received=1.0)
    ctx.stamps = {"received": 1.0, "responded": 1.0125}
    ctx.status = status
    ctx.tenant = "acme"
    ctx.runs.append({"model": "digits@1", "role": "live"})
    return ctx


class Draws:
    """A fake rng: returns the given draws in turn and counts the calls."""

    def __init__(self, *values: float) -> None:
        self.values = list(values)
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return self.values.pop(0)


def access_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "surge.access"]


def test_the_access_log_samples_by_its_ratio(caplog):
    caplog.set_level(logging.INFO, logger="surge.access")
    access = AccessLog(LogsConfig(access_log_sample=0.5), rng=Draws(0.1, 0.7, 0.49, 0.5))
    for n in range(4):
        access.maybe_log(finished(request_id=f"r-{n}"))
    assert [r.request_id for r in access_lines(caplog)] == ["r-0", "r-2"]
    line = access_lines(caplog)[0]
    assert (line.endpoint, line.status, line.tenant) == ("digits", 200, "acme")
    assert line.model == "digits@1"
    assert line.total_ms == pytest.approx(12.5)
    assert line.levelno == logging.INFO


def test_at_the_default_sample_nothing_is_logged_and_no_draw_is_made(caplog):
    caplog.set_level(logging.INFO, logger="surge.access")
    draws = Draws()
    access = AccessLog(LogsConfig(), rng=draws)
    for status in (200, 400, 404, 429):
        access.maybe_log(finished(status))
    assert access_lines(caplog) == [] and draws.calls == 0


@pytest.mark.parametrize("sample", [0.0, 0.5])
def test_a_5xx_is_always_logged(caplog, sample):
    caplog.set_level(logging.INFO, logger="surge.access")
    access = AccessLog(LogsConfig(access_log_sample=sample), rng=Draws(0.99))
    ctx = finished(503)
    ctx.error = "overloaded"
    access.maybe_log(ctx)
    [line] = access_lines(caplog)
    assert (line.status, line.error, line.request_id) == (503, "overloaded", "r-1")
    assert line.levelno == logging.WARNING


def test_an_access_line_renders_as_json_with_its_fields():
    ctx = finished(500)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    access_logger = logging.getLogger("surge.access")
    access_logger.addHandler(handler)
    try:
        AccessLog(LogsConfig()).maybe_log(ctx)
    finally:
        access_logger.removeHandler(handler)
    line = json.loads(stream.getvalue())
    assert line["logger"] == "surge.access" and line["request_id"] == "r-1"
    assert line["status"] == 500 and line["model"] == "digits@1"
