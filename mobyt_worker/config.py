"""Settings read once from the environment (and an optional ``.env`` file).

Every value is validated at start-up; a bad one raises :class:`ConfigError` naming
the variable (never showing a secret's value). The password and the tokens are held in
:class:`Secret`, whose ``repr``/``str`` never show the value, and URLs are shown without
their passwords, so settings can be logged and printed safely (:meth:`Settings.shown`).

The ``.env`` file is the working directory's, or the one ``MOBYT_ENV_FILE`` names; never
a parent directory's, which may belong to another project or deployment.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Mapping, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .store.connection import parse_sentinel_url
from .errors import ConfigError

T = TypeVar("T")

#: The shortest token accepted (``MOBYT_API_TOKEN``'s, ``MOBYT_WEBHOOK_TOKEN``): 24 random
#: characters are beyond guessing, fewer may be a placeholder left in place.
MIN_TOKEN_LENGTH = 24


class Secret:
    """A string that does not print itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self):  # never pickled with its value by accident
        raise TypeError("Secret values are not serialisable")


#: Provider functions and their default paths (SPEC §2). Each is overridable by
#: ``MOBYT_PATH_<FUNCTION>`` because the provider's own document mixes /Moby/ and /Mobyt/.
DEFAULT_PATHS: dict[str, str] = {
    "SENDSMS": "/Moby/SENDSMS",
    "SMSSTATUS": "/Moby/SMSSTATUS",
    "REMOVE_DELAYED": "/Mobyt/REMOVE_DELAYED",
    "SMSHISTORY": "/Mobyt/SMSHISTORY",
    "CREDITS": "/Moby/CREDITS",
    "SRNEWMESSAGES": "/OESRs/SRNEWMESSAGES",
    "SRHISTORY": "/OESRs/SRHISTORY",
    "SRHISTORYBYID": "/OESRs/SRHISTORYBYID",
}


#: The most an SMSSTATUS row takes ("%2B" + 15 digits, the longest status, a date):
#: MOBYT_MAX_ANSWER_BYTES must hold a whole chunk's status.
STATUS_ROW_BYTES = 64


@dataclass(frozen=True)
class Settings:
    login: str = ""
    password: Secret = field(default_factory=lambda: Secret(""))
    base_url: str = "https://api.moby.fr"
    paths: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_PATHS))
    timezone: ZoneInfo = field(default_factory=lambda: ZoneInfo("Europe/Paris"))
    country: str = "FR"
    connect_timeout: float = 5.0
    read_timeout: float = 30.0  # the longest silence between two reads of an answer
    call_deadline: float = 30.0  # a whole provider call, its read retries included
    max_answer_bytes: int = 1 << 20
    max_page_bytes: int = 32 << 20  # SMSHISTORY (one day a request), SRHISTORY, SRHISTORYBYID, SRNEWMESSAGES
    pool_size: int = 64
    redis_url: str = "redis://localhost:6379/0"
    sentinel_master: str = "mymaster"
    key_prefix: str = "mobyt"
    default_sender: str | None = None
    default_message_type: str = "N"
    non_gsm: str = "transliterate"
    webhook_token: Secret = field(default_factory=lambda: Secret(""))
    worker_concurrency: int = 64
    visibility_timeout: int = 600
    shutdown_grace: float = 20.0
    task_time_limit: int = 300
    bulk_chunk_size: int = 500
    send_rate_limit: float = 0.0
    event_task: str | None = None
    event_queue: str = "celery"
    stream_maxlen: int = 100_000
    order_ttl: int = 30 * 24 * 3600
    poll_tick: float = 5.0
    poll_intervals: tuple[float, ...] = (15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
    send_retry_max: float = 60.0
    send_retry_for: float = 3600.0
    doubt_grace: float = 30.0
    doubt_limit: float = 3600.0
    clock_margin: float = 120.0
    poll_batch: int = 500
    inbox_interval: float = 30.0
    reconcile_interval: float = 300.0
    credits_interval: float = 600.0
    credit_threshold: int = 0
    log_format: str = "text"
    broker_key_prefix: str = ""
    api_tokens: tuple[Secret, ...] = ()
    api_rate_limit: int = 600
    push_rate: float = 50.0  # callbacks per second per webhook token and callback; 0: off
    heartbeat_interval: float = 10.0
    ready_provider_age: float = 900.0
    broker_url: str | None = None  # None: the Redis of REDIS_URL is the broker too
    replay_after: float = 120.0
    redis_wait_replicas: int = 0  # 0: off; see replicas.py
    redis_wait_timeout: float = 1.0

    def url_for(self, function: str) -> str:
        return self.base_url.rstrip("/") + self.paths[function]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, dotenv: bool = True) -> "Settings":
        """Build settings from ``environ`` (default: ``os.environ`` plus ``.env``).

        Variables already set win over the ``.env`` file.
        """
        if environ is None:
            env: dict[str, str] = {}
            found = _env_file(os.environ) if dotenv else None
            if found:
                from dotenv import dotenv_values

                env.update({k: v for k, v in dotenv_values(found).items() if v is not None})
            env.update(os.environ)
        else:
            env = dict(environ)
        return cls._parse(env)

    @classmethod
    def _parse(cls, env: Mapping[str, str]) -> "Settings":
        d = cls()

        def get(name: str, convert: Callable[[str], T], default: T) -> T:
            raw = env.get(name)
            if raw is None or raw.strip() == "":
                return default
            try:
                return convert(raw.strip())
            except ConfigError:
                raise
            except (ValueError, TypeError) as exc:
                raise ConfigError(name, f"invalid value ({exc})") from None

        paths = dict(DEFAULT_PATHS)
        for function in DEFAULT_PATHS:
            paths[function] = get(f"MOBYT_PATH_{function}", _path(f"MOBYT_PATH_{function}"), paths[function])

        concurrency = get("MOBYT_WORKER_CONCURRENCY", _positive(int), d.worker_concurrency)
        chunk = get("MOBYT_BULK_CHUNK_SIZE", _positive(int), d.bulk_chunk_size)
        return cls(
            login=env.get("MOBYT_LOGIN", "").strip(),
            password=Secret(env.get("MOBYT_PASSWORD", "")),
            base_url=get("MOBYT_BASE_URL", _http_url("MOBYT_BASE_URL"), d.base_url),
            paths=paths,
            timezone=get("MOBYT_TIMEZONE", _zone, d.timezone),
            country=get("MOBYT_COUNTRY", _country, d.country),
            connect_timeout=get("MOBYT_CONNECT_TIMEOUT", _positive(float), d.connect_timeout),
            read_timeout=get("MOBYT_READ_TIMEOUT", _positive(float), d.read_timeout),
            call_deadline=get("MOBYT_CALL_DEADLINE", _positive(float), d.call_deadline),
            max_answer_bytes=get("MOBYT_MAX_ANSWER_BYTES", _at_least(STATUS_ROW_BYTES * chunk), d.max_answer_bytes),
            max_page_bytes=get("MOBYT_MAX_PAGE_BYTES", _positive(int), d.max_page_bytes),
            pool_size=get("MOBYT_HTTP_POOL_SIZE", _positive(int), concurrency),  # one connection per thread
            redis_url=get("REDIS_URL", _redis_url, d.redis_url),
            sentinel_master=get("MOBYT_REDIS_SENTINEL_MASTER", str, d.sentinel_master),
            key_prefix=get("MOBYT_KEY_PREFIX", _prefix, d.key_prefix),
            default_sender=get("MOBYT_DEFAULT_SENDER", str, d.default_sender),
            default_message_type=get("MOBYT_DEFAULT_MESSAGE_TYPE", _choice("N", "L"), d.default_message_type),
            non_gsm=get("MOBYT_NON_GSM", _choice("transliterate", "reject"), d.non_gsm),
            webhook_token=_token("MOBYT_WEBHOOK_TOKEN", env.get("MOBYT_WEBHOOK_TOKEN", "")),
            worker_concurrency=concurrency,
            visibility_timeout=get("MOBYT_VISIBILITY_TIMEOUT", _positive(int), d.visibility_timeout),
            shutdown_grace=get("MOBYT_SHUTDOWN_GRACE", _positive(float), d.shutdown_grace),
            task_time_limit=get("MOBYT_TASK_TIME_LIMIT", _positive(int), d.task_time_limit),
            bulk_chunk_size=chunk,
            send_rate_limit=get("MOBYT_SEND_RATE_LIMIT", _non_negative(float), d.send_rate_limit),
            event_task=get("MOBYT_EVENT_TASK", str, d.event_task),
            event_queue=get("MOBYT_EVENT_QUEUE", str, d.event_queue),
            stream_maxlen=get("MOBYT_STREAM_MAXLEN", _positive(int), d.stream_maxlen),
            order_ttl=get("MOBYT_ORDER_TTL", _positive(int), d.order_ttl),
            poll_tick=get("MOBYT_POLL_TICK", _positive(float), d.poll_tick),
            poll_intervals=get("MOBYT_POLL_INTERVALS", _intervals, d.poll_intervals),
            send_retry_max=get("MOBYT_SEND_RETRY_MAX", _positive(float), d.send_retry_max),
            send_retry_for=get("MOBYT_SEND_RETRY_FOR", _positive(float), d.send_retry_for),
            doubt_grace=get("MOBYT_DOUBT_GRACE", _non_negative(float), d.doubt_grace),
            doubt_limit=get("MOBYT_DOUBT_LIMIT", _positive(float), d.doubt_limit),
            clock_margin=get("MOBYT_CLOCK_MARGIN", _non_negative(float), d.clock_margin),
            poll_batch=get("MOBYT_POLL_BATCH", _positive(int), d.poll_batch),
            inbox_interval=get("MOBYT_INBOX_INTERVAL", _positive(float), d.inbox_interval),
            reconcile_interval=get("MOBYT_RECONCILE_INTERVAL", _positive(float), d.reconcile_interval),
            credits_interval=get("MOBYT_CREDITS_INTERVAL", _positive(float), d.credits_interval),
            credit_threshold=get("MOBYT_CREDIT_THRESHOLD", _non_negative(int), d.credit_threshold),
            log_format=get("MOBYT_LOG_FORMAT", _choice("text", "json"), d.log_format),
            broker_key_prefix=get("MOBYT_BROKER_KEY_PREFIX", _broker_prefix, d.broker_key_prefix),
            api_tokens=_tokens("MOBYT_API_TOKEN", env.get("MOBYT_API_TOKEN", "")),
            api_rate_limit=get("MOBYT_API_RATE_LIMIT", _non_negative(int), d.api_rate_limit),
            push_rate=get("MOBYT_PUSH_RATE", _rate, d.push_rate),
            heartbeat_interval=get("MOBYT_HEARTBEAT_INTERVAL", _positive(float), d.heartbeat_interval),
            ready_provider_age=get("MOBYT_READY_PROVIDER_AGE", _positive(float), d.ready_provider_age),
            broker_url=get("MOBYT_BROKER_URL", _broker_url, d.broker_url),
            replay_after=get("MOBYT_REPLAY_AFTER", _positive(float), d.replay_after),
            redis_wait_replicas=get("MOBYT_REDIS_WAIT_REPLICAS", _non_negative(int), d.redis_wait_replicas),
            redis_wait_timeout=get("MOBYT_REDIS_WAIT_TIMEOUT", _positive(float), d.redis_wait_timeout),
        )

    def require_credentials(self) -> None:
        """Raise if the provider cannot be called with these settings."""
        if not self.login:
            raise ConfigError("MOBYT_LOGIN", "is required to call the provider")
        if not self.password:
            raise ConfigError("MOBYT_PASSWORD", "is required to call the provider")

    def shown(self) -> dict[str, object]:
        """Every setting as it may be printed (``mobyt config``, ``repr``): secrets as
        ``***``, URLs without their passwords, plain JSON types."""
        return {f.name: _shown(getattr(self, f.name)) for f in fields(self)}

    def secrets(self) -> list[str]:
        """Every secret value, for the log filters that mask them: the provider's password,
        the tokens, and the password of each host of the Redis and broker URLs."""
        urls = [self.redis_url, self.broker_url or ""]
        passwords = [urlsplit(part).password or "" for url in urls for part in url.split(";")]
        return [s for s in (self.password.reveal(), self.webhook_token.reveal(), *(t.reveal() for t in self.api_tokens),
                            *passwords, *map(unquote, passwords)) if s]

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value in self.shown().items() if name != "paths")
        return f"Settings({shown})"


def mask_url(url: str) -> str:
    """``url`` with the password of each of its hosts (``;``-separated, as Sentinel's) as ``***``."""
    return ";".join(_mask_one(part) for part in url.split(";"))


def _mask_one(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{user.partition(':')[0]}:***@{host}"))


def _shown(value: object) -> object:
    if isinstance(value, Secret):
        return "***" if value else ""
    if isinstance(value, str):
        return mask_url(value) if "://" in value else value
    if isinstance(value, ZoneInfo):
        return value.key
    if isinstance(value, frozenset):
        return sorted(_shown(v) for v in value)  # type: ignore[type-var]
    if isinstance(value, tuple):
        return [_shown(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _shown(v) for k, v in value.items()}
    return value


def _env_file(environ: Mapping[str, str]) -> Path | None:
    """The ``.env`` to read: ``MOBYT_ENV_FILE``'s, else the working directory's if there is one."""
    named = environ.get("MOBYT_ENV_FILE", "").strip()
    if named:
        if not Path(named).is_file():
            raise ConfigError("MOBYT_ENV_FILE", f"{named!r} is not a file")
        return Path(named)
    here = Path.cwd() / ".env"
    return here if here.is_file() else None


def _positive(kind: Callable[[str], T]) -> Callable[[str], T]:
    def convert(raw: str) -> T:
        value = kind(raw)
        if value <= 0:  # type: ignore[operator]
            raise ValueError("must be greater than 0")
        return value

    return convert


def _at_least(minimum: int) -> Callable[[str], int]:
    def convert(raw: str) -> int:
        value = int(raw)
        if value < minimum:
            raise ValueError(f"must be at least {minimum}: an SMSSTATUS answer has a row per recipient, "
                             f"up to MOBYT_BULK_CHUNK_SIZE of them")
        return value

    return convert


def _non_negative(kind: Callable[[str], T]) -> Callable[[str], T]:
    def convert(raw: str) -> T:
        value = kind(raw)
        if value < 0:  # type: ignore[operator]
            raise ValueError("must not be negative")
        return value

    return convert


def _rate(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value) or value < 0:
        raise ValueError("must be a number of requests per second, 0 to turn the limit off")
    return value


def _choice(*allowed: str) -> Callable[[str], str]:
    def convert(raw: str) -> str:
        for option in allowed:
            if raw.lower() == option.lower():
                return option
        raise ValueError(f"must be one of {', '.join(allowed)}")

    return convert


def _token(name: str, raw: str, which: str = "the token") -> Secret:
    """A token of at least :data:`MIN_TOKEN_LENGTH` characters (empty: none); the error never shows it."""
    value = raw.strip()
    if value and len(value) < MIN_TOKEN_LENGTH:
        raise ConfigError(name, f"{which} is shorter than {MIN_TOKEN_LENGTH} characters")
    return Secret(value)


def _tokens(name: str, raw: str) -> tuple[Secret, ...]:
    """Comma-separated, so a token can be rotated: the new one is added before the old one goes."""
    parts = [part for part in raw.split(",") if part.strip()]
    if len(parts) == 1:
        return (_token(name, parts[0]),)
    return tuple(_token(name, part, f"token {i} of {len(parts)}") for i, part in enumerate(parts, 1))


def _intervals(raw: str) -> tuple[float, ...]:
    values = tuple(float(part) for part in raw.split(","))
    if not values or any(v <= 0 for v in values):
        raise ValueError("must be a comma-separated list of positive seconds")
    return values


def _http_url(name: str) -> Callable[[str], str]:
    def convert(raw: str) -> str:
        parts = urlsplit(raw)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http:// or https:// URL")
        if parts.username or parts.password or parts.query:
            raise ValueError("must not carry credentials or a query string")
        return raw.rstrip("/")

    return convert


def _path(name: str) -> Callable[[str], str]:
    def convert(raw: str) -> str:
        if not raw.startswith("/"):
            raise ValueError("must start with /")
        return raw

    return convert


def _redis_url(raw: str) -> str:
    scheme = urlsplit(raw).scheme
    if scheme not in ("redis", "rediss", "unix", "sentinel"):
        raise ValueError("must be a redis://, rediss://, unix:// or sentinel:// URL")
    if scheme == "sentinel":
        parse_sentinel_url(raw)  # every host at start, never showing the URL
    return raw


def _broker_url(raw: str) -> str:
    """RabbitMQ (``amqp://``, ``amqps://``) or a Redis URL; credentials stay out of ``repr``."""
    parts = urlsplit(raw)
    if parts.scheme in ("amqp", "amqps"):
        if not parts.hostname:
            raise ValueError("must name a host: amqp://user:password@host:5672/vhost")
        return raw
    if parts.scheme not in ("redis", "rediss", "unix", "sentinel"):
        raise ValueError("must be an amqp://, amqps://, redis://, rediss://, unix:// or sentinel:// URL")
    return raw


def _broker_prefix(raw: str) -> str:
    if not raw.replace("_", "").replace("-", "").replace(":", "").isalnum():
        raise ValueError("must be letters, digits, '-', '_' or ':'")
    return raw


def _zone(raw: str) -> ZoneInfo:
    try:
        return ZoneInfo(raw)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {raw!r}") from None


def _country(raw: str) -> str:
    if len(raw) != 2 or not raw.isalpha():
        raise ValueError("must be a 2-letter ISO 3166 country code")
    return raw.upper()


def _prefix(raw: str) -> str:
    if not raw.replace("_", "").replace("-", "").isalnum():
        raise ValueError("must be letters, digits, '-' or '_'")
    return raw
