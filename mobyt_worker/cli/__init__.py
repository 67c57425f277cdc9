"""The ``mobyt`` command (``mobyt = "mobyt_worker.cli:main"``)."""

from .main import COMMANDS, main

__all__ = ["COMMANDS", "main"]
