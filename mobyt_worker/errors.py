"""One error hierarchy for the whole package.

Every error the package raises derives from :class:`MobytError`. Callers decide what
to do from the class alone: :class:`InvalidInput` and :class:`ProviderRejected` are
permanent (never retried), :class:`ProviderUnavailable` and its subclasses are
transient (retried with backoff). ``ambiguous`` tells whether a request may have
reached the provider, which matters for SENDSMS: an ambiguous send is resolved by
asking SMSSTATUS, never by sending again blindly.

Each error's ``args`` are its constructor arguments and ``str()`` formats them, so an
error survives Celery's JSON result backend as the same class with the same fields
(``exc_message`` is the argument list), for Python callers and any other consumer.

No error text ever contains the Mobyt password or the webhook token.
"""

from __future__ import annotations


class MobytError(Exception):
    """Root of every error raised by mobyt_worker."""

    retryable: bool = False


class ConfigError(MobytError):
    """A configuration variable is missing or malformed; names the variable."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(variable, message)
        self.variable = variable
        self.message = message

    def __str__(self) -> str:
        return f"{self.variable}: {self.message}"


class InvalidInput(MobytError, ValueError):
    """A send/cancel/query argument is invalid; refused before any HTTP call."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(field, message)
        self.field = field
        self.message = message

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class RecipientOptedOut(InvalidInput):
    """A recipient sent STOP; sending to it again would be billed and blacklisted."""


class OrderNotFound(MobytError, LookupError):
    """No order with this id is tracked."""

    def __init__(self, order_id: str) -> None:
        super().__init__(order_id)
        self.order_id = order_id

    def __str__(self) -> str:
        return f"order_id: no tracked order {self.order_id!r}"


class OrderNotCancellable(MobytError):
    """The order exists but is not (or no longer) a scheduled send."""

    def __init__(self, order_id: str, reason: str) -> None:
        super().__init__(order_id, reason)
        self.order_id = order_id
        self.reason = reason

    def __str__(self) -> str:
        return f"order {self.order_id!r} cannot be cancelled: {self.reason}"


class OrderNotResendable(MobytError):
    """An operator's resend was refused: the order is not in doubt (or an attempt is in flight)."""

    def __init__(self, order_id: str, reason: str) -> None:
        super().__init__(order_id, reason)
        self.order_id = order_id
        self.reason = reason

    def __str__(self) -> str:
        return f"order {self.order_id!r} cannot be resent: {self.reason}"


class ProviderError(MobytError):
    """Anything that went wrong talking to Mobyt."""

    code: str = ""
    ambiguous: bool = False

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message, code)
        self.message = message
        self.code = code

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}" if self.code else self.message


class ProviderRejected(ProviderError):
    """Mobyt answered ``KO|code|message``: the request was refused, never retried."""


class ProviderUnavailable(ProviderError):
    """A transient failure: retried with backoff and jitter.

    ``ambiguous`` is True when the request may have been processed by the provider
    (it left this machine and no clear answer came back).
    """

    retryable = True
    ambiguous = True


class ProviderConnectError(ProviderUnavailable):
    """The connection could not be opened: the request never left this machine."""

    ambiguous = False


class ProviderTimeout(ProviderUnavailable):
    """The request left but no answer came in time."""


class ProviderTooSlow(ProviderTimeout):
    """The answer was still arriving at the call's deadline (``MOBYT_CALL_DEADLINE``): a
    provider that trickles it may not hold a worker thread longer. It was cut, and the
    request may have been processed."""


class ProviderDisconnected(ProviderUnavailable):
    """The connection dropped after the request was sent."""


class ProviderServerError(ProviderUnavailable):
    """Mobyt answered with an HTTP 5xx status (it may have processed the request)."""


class ProviderThrottled(ProviderUnavailable):
    """HTTP 408, 425 or 429: the provider says it did not process the request; try again
    after ``retry_after`` seconds when it said so (``Retry-After``)."""

    ambiguous = False

    def __init__(self, message: str, code: str = "", retry_after: float | None = None) -> None:
        super().__init__(message, code)
        self.args = (message, code, retry_after)
        self.retry_after = retry_after


class ProviderBadResponse(ProviderUnavailable):
    """The answer is not in the wire format: an HTML page, garbage, a truncated table."""


class ProviderEmptyResponse(ProviderBadResponse):
    """The answer had an empty body."""


class ProviderAnswerTooLarge(ProviderBadResponse):
    """The answer grew past its cap (``MOBYT_MAX_ANSWER_BYTES``, ``MOBYT_MAX_PAGE_BYTES``
    for history and inbox pages) and was cut unread: memory stays bounded. The request
    may have been processed."""


class NotReplicated(MobytError):
    """Fewer Redis replicas than MOBYT_REDIS_WAIT_REPLICAS acknowledged a write in time: a
    failover could lose it, so nothing that depends on it was done. Retried."""

    retryable = True

    def __init__(self, acknowledged: int, wanted: int) -> None:
        super().__init__(acknowledged, wanted)
        self.acknowledged = acknowledged
        self.wanted = wanted

    def __str__(self) -> str:
        return f"{self.acknowledged} of {self.wanted} Redis replicas acknowledged the write in time"


#: Provider text kept in Redis, results and logs is cut to this many characters.
PROVIDER_TEXT_MAX = 200


def scrub(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` without any of ``secrets`` (a provider may echo the form it was sent), bounded."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text if len(text) <= PROVIDER_TEXT_MAX else text[:PROVIDER_TEXT_MAX - 1] + "…"
