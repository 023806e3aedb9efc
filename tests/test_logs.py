"""`--log-format json`: one JSON object per line with the fields log pipelines key on; text stays plain."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator

import pytest

from rerankd.logs import configure_logging


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


@pytest.mark.usefixtures("restore_root_logger")
def test_json_lines_carry_time_level_logger_message_and_the_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    log = logging.getLogger("rerankd.test")
    log.debug("below the level")
    log.info("loaded %s", "ce-fixture", extra={"request_id": "abc"})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2
    info, error = (json.loads(line) for line in lines)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", info["time"])
    assert (info["level"], info["logger"], info["message"]) == ("info", "rerankd.test", "loaded ce-fixture")
    assert info["request_id"] == "abc" and "exception" not in info
    assert error["level"] == "error" and "ValueError: boom" in error["exception"]


@pytest.mark.usefixtures("restore_root_logger")
def test_text_lines_are_plain(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("warning", "text")
    logging.getLogger("rerankd.test").warning("queue full")
    line = capsys.readouterr().err.strip()
    assert line.endswith("WARNING rerankd.test: queue full") and not line.startswith("{")
