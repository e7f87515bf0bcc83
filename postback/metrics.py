"""Prometheus metrics, one registry per application (tests build many apps)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

OUTBOX_PREFIX = "postback_outbox_"
Families = list[list[Any]]
"""Metric families as plain data: ``[name, help, type, [[sample, labels, value], ...]]``."""

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
_MAX_CACHED_LABELS = 10_000  # routes x methods x statuses: a few hundred in practice


class _Relayed(Collector):
    """Metric families received from another process, exported as they were received."""

    def __init__(self) -> None:
        self.families: Families = []

    def collect(self) -> Iterator[Metric]:
        for name, documentation, kind, samples in self.families:
            family = Metric(name, documentation, kind)
            for sample, labels, value in samples:
                family.add_sample(sample, labels, value)
            yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._relayed: _Relayed | None = None
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.requests = Counter(
            "postback_http_requests",
            "HTTP requests by route and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "postback_http_request_seconds",
            "Time to answer an HTTP request",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.append_seconds = Histogram(
            "postback_append_batch_seconds",
            "Time to commit one group-commit batch of the event log",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_events = Histogram(
            "postback_append_batch_events",
            "Events per group-commit batch",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.projection_lag = Gauge(
            "postback_projection_lag_events",
            "Events of the log not yet applied by the projections",
            registry=self.registry,
        )

        self.outbox_attempts = Counter(
            "postback_outbox_attempts",
            "Outbound delivery attempts by channel and outcome (succeeded, retry, failed)",
            ["channel", "outcome"],
            registry=self.registry,
        )
        self.outbox_attempt_seconds = Histogram(
            "postback_outbox_attempt_seconds",
            "Time of one outbound delivery attempt",
            ["channel"],
            buckets=(*_LATENCY_BUCKETS, 5.0, 10.0, 30.0),
            registry=self.registry,
        )
        self.outbox_completed = Counter(
            "postback_outbox_deliveries",
            "Outbound deliveries completed, by channel and status (succeeded, failed, expired)",
            ["channel", "status"],
            registry=self.registry,
        )
        self.outbox_in_flight = Gauge(
            "postback_outbox_in_flight",
            "Outbound deliveries being sent now",
            registry=self.registry,
        )
        self.outbox_pauses = Counter(
            "postback_outbox_pauses",
            "Times a target (pixel, bot, webhook URL) was paused after failing in a row",
            ["channel"],
            registry=self.registry,
        )
        self.outbox_paused = Gauge(
            "postback_outbox_paused_targets",
            "Targets paused now, by channel",
            ["channel"],
            registry=self.registry,
        )

    def outbox_families(self) -> Families:
        """This registry's ``postback_outbox_*`` families, to relay to another process."""
        return [
            [family.name, family.documentation, family.type, [list(s[:3]) for s in family.samples]]
            for family in self.registry.collect()
            if family.name.startswith(OUTBOX_PREFIX)
        ]

    def relay_outbox(self, families: Families) -> None:
        """Export ``families`` (another process's :meth:`outbox_families`: serve's child,
        whose outbox sends) as this registry's outbox metrics, in place of its own."""
        if self._relayed is None:
            for own in (
                self.outbox_attempts,
                self.outbox_attempt_seconds,
                self.outbox_completed,
                self.outbox_in_flight,
                self.outbox_pauses,
                self.outbox_paused,
            ):
                self.registry.unregister(own)
            self._relayed = _Relayed()
            self.registry.register(self._relayed)
        self._relayed.families = families

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """One answered request: counted by route, method and status, timed by route."""
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:  # labels() takes a lock and checks its values: once per key
            children = (
                self.requests.labels(route, method, str(status)),
                self.request_seconds.labels(route),
            )
            if len(self._request_children) < _MAX_CACHED_LABELS:
                self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_batch(self, events: int, seconds: float) -> None:
        self.batch_events.observe(events)
        self.append_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
