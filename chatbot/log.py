"""Logging filters."""

from __future__ import annotations

import logging


class WarmingUpIsNoError(logging.Filter):
    """Drop django.request's ERROR for a `/readyz` that answered 503 because its process is
    still loading its models: that happens at every start, and a load balancer polling it would
    fill the log with errors. A 503 for anything else (no answer index, no database) stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        request = getattr(record, "request", None)
        return not getattr(request, "warming_up", False)
