"""GET /metrics and what it reports (SPEC 8.3): see instruments.py for the metrics."""

from loyalty.metrics.instruments import (
    WEBHOOK_DELIVERIES,
    WEBHOOK_FAILURES,
    webhook_attempts,
)

__all__ = ["WEBHOOK_DELIVERIES", "WEBHOOK_FAILURES", "webhook_attempts"]
