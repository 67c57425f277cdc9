"""The fake provider and the demo, used by tests, benchmarks and ``mobyt demo``."""
