"""What one provider request gets back over HTTP, and the faults that can be injected.

Four kinds process the request, then spoil the answer: ``slow`` sends it after an extra
delay, ``lost_answer`` drops the connection instead (the ambiguous case), ``trickle``
sends it one byte every ``delay`` seconds (1 s unless given), status line and headers
included, and ``oversize`` follows it with ``size`` bytes of blanks (64 MiB unless
given), all announced in its Content-Length. Every other kind answers without
processing the request.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..provider import protocol

FAULT_KINDS = frozenset({"http500", "http503", "http408", "http429", "html", "garbage", "empty", "drop", "ko", "slow",
                         "lost_answer", "trickle", "oversize"})
#: The faults that still let the request be processed.
PROCESSED = frozenset({"slow", "lost_answer", "trickle", "oversize"})
#: Blanks after an ``oversize`` answer unless the fault says how many: past both caps' defaults.
OVERSIZE = 64 << 20
#: What a flaky provider does to a send and to the two reads that settle a doubt: answers
#: lost before or after it committed, 5xx, 408, 429, KO, garbage, a hang (bench/ soaks).
FLAKY = {
    "SENDSMS": ("drop", "lost_answer", "http500", "http503", "http408", "http429", "garbage", "slow"),
    "SMSSTATUS": ("drop", "http503", "garbage", "ko", "slow"),
    "SMSHISTORY": ("drop", "http503", "garbage", "ko"),
}

_HTML_500 = b"<html><head><title>500 Internal Server Error</title></head><body><h1>Oops</h1></body></html>"
_HTML_PAGE = b"<!DOCTYPE html><html><head><title>Maintenance</title></head><body><p>En maintenance</p></body></html>"


@dataclass(frozen=True)
class Reply:
    """What the HTTP layer must do for one provider request."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    delay: float = 0.0  # seconds to wait before answering (latency, plus a "slow" fault)
    drop: bool = False  # close the connection without any answer
    headers: tuple[tuple[str, str], ...] = ()
    trickle: float = 0.0  # seconds between two bytes of the answer (0: all at once)
    pad: int = 0  # blanks sent after the body


@dataclass(frozen=True)
class Fault:
    kind: str
    delay: float
    code: str
    message: str
    size: int = 0


def processed_reply(fault: Fault | None, body: bytes, latency: float) -> Reply:
    """The answer to a request that was processed, as a fault of :data:`PROCESSED` spoils it."""
    if fault is None:
        return Reply(body=body, delay=latency)
    if fault.kind == "lost_answer":
        return Reply(drop=True, delay=latency)
    if fault.kind == "trickle":
        return Reply(body=body, delay=latency, trickle=fault.delay or 1.0)
    if fault.kind == "oversize":
        return Reply(body=body, delay=latency, pad=fault.size or OVERSIZE)
    return Reply(body=body, delay=latency + fault.delay)  # "slow"


def fault_reply(fault: Fault, latency: float) -> Reply:
    """The faults that answer without processing the request."""
    if fault.kind in ("http500", "http503"):
        return Reply(int(fault.kind[4:]), _HTML_500, "text/html; charset=utf-8", latency)
    if fault.kind == "http408":
        return Reply(408, b"request timeout\n", delay=latency)
    if fault.kind == "http429":  # the fault's delay is the Retry-After it announces
        return Reply(429, b"too many requests\n", delay=latency, headers=(("Retry-After", f"{fault.delay:g}"),))
    if fault.kind == "html":
        return Reply(200, _HTML_PAGE, "text/html; charset=utf-8", latency)
    if fault.kind == "garbage":  # never starts with OK/KO, rarely valid UTF-8
        return Reply(200, b"\xff\xfe" + os.urandom(30), "application/octet-stream", latency)
    if fault.kind == "empty":
        return Reply(200, b"", delay=latency)
    if fault.kind == "ko":
        return Reply(200, protocol.encode_ko(fault.code, fault.message).encode(), delay=latency)
    return Reply(drop=True, delay=latency)  # "drop"
