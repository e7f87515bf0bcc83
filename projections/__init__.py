"""Read models folded from the event log, in an SQLite file of their own or in PostgreSQL.

Imports :mod:`eventstore` only. See :mod:`projections.runner` for the checkpoint contract,
:mod:`projections.database` for the databases and the portable SQL every projection writes,
and docs/projections.md.
"""

from projections.goal_stats import GoalStatsProjection
from projections.postback_log import PostbackLogProjection, list_postbacks
from projections.runner import Projection, ProjectionRunner, ProjectionStoppedError

__all__ = [
    "GoalStatsProjection",
    "PostbackLogProjection",
    "Projection",
    "ProjectionRunner",
    "ProjectionStoppedError",
    "list_postbacks",
]
