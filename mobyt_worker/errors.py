"""One error hierarchy for the whole package.

Every error the package raises derives from :class:`MobytError`. Callers decide what
to do from the class alone: :class:`InvalidInput` and :class:`ProviderRejected` are
permanent (never retried), :class:`ProviderUnavailable` and its subclasses are
transient (retried with backoff). ``ambiguous`` tells whether a request may have
reached the provider, which matters for SENDSMS: an ambiguous send is resolved by
asking SMSSTATUS, never by sending again blindly.

No error text ever contains the Mobyt password or the webhook token.
"""

from __future__ import annotations


class MobytError(Exception):
    """Root of every error raised by mobyt_worker."""

    retryable: bool = False


class ConfigError(MobytError):
    """A configuration variable is missing or malformed; names the variable."""

    def __init__(self, variable: str, message: str) -> None:
        self.variable = variable
        self.message = message
        super().__init__(f"{variable}: {message}")

    def __reduce__(self):  # keep pickling/copying working with our signature
        return (type(self), (self.variable, self.message))


class InvalidInput(MobytError, ValueError):
    """A send/cancel/query argument is invalid; refused before any HTTP call."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")

    def __reduce__(self):
        return (type(self), (self.field, self.message))


class RecipientOptedOut(InvalidInput):
    """A recipient sent STOP; sending to it again would be billed and blacklisted."""


class OrderNotFound(MobytError, LookupError):
    """No order with this id is tracked."""

    def __init__(self, order_id: str) -> None:
        self.order_id = order_id
        super().__init__(f"order_id: no tracked order {order_id!r}")

    def __reduce__(self):
        return (type(self), (self.order_id,))


class OrderNotCancellable(MobytError):
    """The order exists but is not (or no longer) a scheduled send."""

    def __init__(self, order_id: str, reason: str) -> None:
        self.order_id = order_id
        self.reason = reason
        super().__init__(f"order {order_id!r} cannot be cancelled: {reason}")

    def __reduce__(self):
        return (type(self), (self.order_id, self.reason))


class ProviderError(MobytError):
    """Anything that went wrong talking to Mobyt."""

    code: str = ""
    ambiguous: bool = False

    def __init__(self, message: str, code: str = "") -> None:
        self.message = message
        self.code = code
        super().__init__(f"[{code}] {message}" if code else message)

    def __reduce__(self):
        return (type(self), (self.message, self.code))


class ProviderRejected(ProviderError):
    """Mobyt answered ``KO|code|message``: the request was refused, never retried."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message, code)


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


class ProviderDisconnected(ProviderUnavailable):
    """The connection dropped after the request was sent."""


class ProviderServerError(ProviderUnavailable):
    """Mobyt answered with an HTTP 5xx status."""


class ProviderBadResponse(ProviderUnavailable):
    """The answer is not in the wire format: an HTML page, garbage, a truncated table."""


class ProviderEmptyResponse(ProviderBadResponse):
    """The answer had an empty body."""
