"""The outbox's metrics of serve's child, exported by serve (:meth:`Metrics.relay_outbox`)."""

from __future__ import annotations

import orjson
from prometheus_client.parser import text_string_to_metric_families

from postback.metrics import Metrics


def _families(metrics: Metrics) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    found: dict[str, list[tuple[str, dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        assert family.name not in found, f"{family.name} exported twice"
        found[family.name] = [(s.name, s.labels, s.value) for s in family.samples]
    return found


def test_the_childs_outbox_metrics_replace_the_servers_own() -> None:
    child = Metrics()
    child.outbox_attempts.labels("facebook", "succeeded").inc(3)
    child.outbox_attempt_seconds.labels("facebook").observe(0.02)
    child.outbox_in_flight.set(2)
    relayed = orjson.loads(orjson.dumps(child.outbox_families()))  # as over the pipe

    server = Metrics()
    server.outbox_in_flight.set(7)  # its own outbox does not run: never shown
    server.observe_batch(3, 0.001)
    server.relay_outbox(relayed)
    exported = _families(server)
    assert (
        "postback_outbox_attempts_total",
        {"channel": "facebook", "outcome": "succeeded"},
        3.0,
    ) in exported["postback_outbox_attempts"]
    assert exported["postback_outbox_in_flight"] == [("postback_outbox_in_flight", {}, 2.0)]
    seconds = dict(
        ((s, tuple(sorted(labels.items()))), v)
        for s, labels, v in exported["postback_outbox_attempt_seconds"]
    )
    assert seconds["postback_outbox_attempt_seconds_count", (("channel", "facebook"),)] == 1.0
    assert exported["postback_append_batch_events"]  # the server's own stay

    child.outbox_in_flight.set(0)
    server.relay_outbox(child.outbox_families())  # the next report replaces the last
    assert _families(server)["postback_outbox_in_flight"] == [
        ("postback_outbox_in_flight", {}, 0.0)
    ]
