"""The fake provider and the demo, used by tests, benchmarks and ``mobyt demo``."""

from .faults import FAULT_KINDS, FLAKY, Reply
from .provider import DEMO_LOGIN, DEMO_PASSWORD, FUNCTIONS, ProviderSimulator, RecordedRequest
from .rules import KO_AUTH, KO_CREDITS, KO_INJECTED, KO_INVALID, KO_MISSING, KO_NOT_CANCELLABLE, KO_UNKNOWN_ORDER
from .server import PREFIXES, SimulatorServer, serve

__all__ = [
    "DEMO_LOGIN", "DEMO_PASSWORD", "FAULT_KINDS", "FLAKY", "FUNCTIONS", "KO_AUTH", "KO_CREDITS", "KO_INJECTED", "KO_INVALID",
    "KO_MISSING", "KO_NOT_CANCELLABLE", "KO_UNKNOWN_ORDER", "PREFIXES", "ProviderSimulator", "RecordedRequest",
    "Reply", "SimulatorServer", "serve",
]  # fmt: skip
