"""Structured logs: the task and order ids on every line, phone numbers masked, text or JSON;
in-process on a real logging handler, then in a real worker's log file."""

from __future__ import annotations

import io
import json
import logging
import threading
from typing import Iterator

import pytest

from mobyt_worker import logs
from mobyt_worker.sms import mask_number

from .conftest import PASSWORD
from .producer import bare_client, call
from .support import wait_for

NUMBERS = ["+33612345670", "0033612345671", "%2B33612345672", "0612345673"]


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger with one stream handler; switch its format with ``logs.configure``."""
    stream = io.StringIO()
    logger = logging.getLogger(f"mobyt-test-{id(stream)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(logging.StreamHandler(stream))
    yield logger, stream
    logs.clear()


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_json_lines_carry_the_task_context_and_mask_every_number(capture):
    logger, stream = capture
    logs.configure(logger, "json", secrets=["hunter2"])
    with logs.bound(task="mobyt.send_sms", task_id="t-1", order_id="ord1"):
        logger.info("sending to %s (password hunter2)", ", ".join(NUMBERS))
        try:
            raise ValueError(f"refused {NUMBERS[0]}")
        except ValueError:
            logger.exception("failed")
    logger.info("after the task")

    first, second, third = json_lines(stream.getvalue())
    assert (first["task"], first["task_id"], first["order_id"]) == ("mobyt.send_sms", "t-1", "ord1")
    assert first["level"] == "INFO" and first["message"].startswith("sending to +336*****70, 0033*****71, +336*****72")
    assert "hunter2" not in stream.getvalue() and "(password ***)" in first["message"]
    assert "ValueError: refused +336*****70" in second["exception"] and second["order_id"] == "ord1"
    assert third["task_id"] is None and third["order_id"] is None
    for number in NUMBERS:
        assert number not in stream.getvalue()
        assert number.lstrip("+%2B0")[-9:] not in stream.getvalue()


def test_text_lines_show_the_context_only_when_known(capture):
    logger, stream = capture
    logs.configure(logger, "text")
    with logs.bound(task="mobyt.poll_status", task_id="t-2", order_id="ord2"):
        logger.warning("status of %s", NUMBERS[0])
    logger.info("Task %(name)s[%(id)s] received", {"name": "mobyt.cancel", "id": "t-3"})  # as Celery logs it
    logger.info("idle")

    with_context, received, idle = stream.getvalue().splitlines()
    assert with_context.endswith("WARNING/MainProcess] mobyt.poll_status[t-2] order_id=ord2: status of +336*****70")
    assert received.endswith("INFO/MainProcess] mobyt.cancel[t-3]: Task mobyt.cancel[t-3] received")
    assert idle.endswith("INFO/MainProcess] idle")


def test_ids_dates_and_decimals_are_not_taken_for_numbers():
    text = ("task 3f2a1b9c-1234-4abc-8def-123456789012 order 0123abcdef4567890123456789abcdef stream 1732528944123-0 "
            "took 0.123456789s at 2026-03-09T12:06:36 port 6379")
    assert logs.mask_numbers(text) == text
    assert logs.mask_numbers("to +33612345670.") == f"to {mask_number('+33612345670')}."


def test_each_thread_sees_its_own_task(capture):
    logger, stream = capture
    logs.configure(logger, "json")
    barrier = threading.Barrier(8)

    def task(i: int) -> None:
        with logs.bound(task_id=f"t{i}", order_id=f"o{i}"):
            barrier.wait()
            logger.info("work %d", i)

    threads = [threading.Thread(target=task, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = json_lines(stream.getvalue())
    assert len(lines) == 8
    assert all(line["message"] == f"work {line['task_id'][1:]}" and line["order_id"] == f"o{line['task_id'][1:]}"
               for line in lines)


def test_a_real_worker_logs_each_send_with_its_ids_and_no_number_or_password(redis_url, simulator, start_process):
    worker = start_process("worker", env={"MOBYT_LOG_FORMAT": "json"})
    client = bare_client(redis_url)
    given = call(client, "mobyt.send_sms", recipients=[NUMBERS[0]], message="hello", order_id="LOGGED1")
    derived = call(client, "mobyt.send_sms", recipients=[NUMBERS[1]], message="hello")
    refused = call(client, "mobyt.send_sms", recipients=["+336123"], message="hello")
    assert given.get(timeout=20)["order_id"] == "LOGGED1"
    order_id = derived.get(timeout=20)["order_id"]
    with pytest.raises(Exception):
        refused.get(timeout=20)

    def lines_of(task_id: str) -> list[dict]:
        return [line for line in json_lines(worker.output()) if line["task_id"] == task_id]

    wait_for(lambda: all(len(lines_of(r.id)) >= 2 for r in (given, derived, refused)), timeout=10,
             what="each task's lines")  # a result may be stored before its task's last line is written
    for result, oid in ((given, "LOGGED1"), (derived, order_id)):
        received, *during = lines_of(result.id)
        assert received["message"].startswith(f"Task mobyt.send_sms[{result.id}] received")
        assert during and all(line["order_id"] == oid and line["task"] == "mobyt.send_sms" for line in during)
        assert any("succeeded" in line["message"] for line in during)
    assert any("InvalidInput" in line["message"] for line in lines_of(refused.id))
    output = worker.output()
    assert "+336*****70" in output  # the success line shows the result, masked
    for secret in (NUMBERS[0], NUMBERS[0][1:], "33612345671", PASSWORD):
        assert secret not in output
