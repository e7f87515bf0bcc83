"""Every projection the service keeps, in one place (the runner, rebuild and verify use it)."""

from __future__ import annotations

from projections.deliveries import DeliveriesProjection
from projections.goal_stats import GoalStatsProjection
from projections.postback_log import PostbackLogProjection
from projections.profiles import ProfilesProjection
from projections.runner import Projection
from projections.subscribers import SubscribersProjection


def all_projections() -> list[Projection]:
    """Fresh instances of every projection, in a stable order."""
    return [
        PostbackLogProjection(),
        GoalStatsProjection(),
        SubscribersProjection(),
        ProfilesProjection(),
        DeliveriesProjection(),
    ]
