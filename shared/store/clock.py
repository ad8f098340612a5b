"""Timestamps: stored as Unix seconds (float, ms precision), shown as ISO 8601 UTC."""
from __future__ import annotations

import time
from datetime import datetime, timezone


def now() -> float:
    return round(time.time(), 3)


def iso_utc(timestamp: float | None) -> str | None:
    """1764097384.5 -> '2025-11-25T19:03:04.500Z'; None stays None."""
    if timestamp is None:
        return None
    moment = datetime.fromtimestamp(timestamp, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
