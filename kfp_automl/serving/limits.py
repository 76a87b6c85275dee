"""The limits each serving worker puts on slow and greedy clients (applied by http_limits.py).

Kept apart from http_limits.py, which imports uvicorn, so the command line reads the
defaults without importing the server.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServerLimits:
    """The limits of one worker process (the defaults are ServiceArgs' and `serve`'s)."""

    header_timeout_s: float = 10.0
    body_idle_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections: int = 1000
    keep_alive_s: float = 75.0

    def __post_init__(self) -> None:
        for name in ("header_timeout_s", "body_idle_timeout_s", "body_timeout_s", "keep_alive_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be over 0, got {getattr(self, name)}")
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {self.max_connections}")
