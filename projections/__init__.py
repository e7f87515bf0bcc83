"""Read models folded from the event log, in tables beside it (SQLite backend).

Imports :mod:`eventstore` only. See :mod:`projections.runner` for the checkpoint contract.
"""

from projections.postback_log import PostbackLogProjection, list_postbacks
from projections.runner import Projection, ProjectionRunner, ProjectionStoppedError

__all__ = [
    "PostbackLogProjection",
    "Projection",
    "ProjectionRunner",
    "ProjectionStoppedError",
    "list_postbacks",
]
