"""Settings of the ``postback`` process itself, applied once by its entry point.

Kept out of :func:`postback.cli.main` so that calling ``main`` in-process (the tests do)
leaves the caller's interpreter as it was.
"""

from __future__ import annotations

import gc
from typing import Final

GC_THRESHOLDS: Final = (50_000, 20, 20)
"""Python's cyclic collector runs after 50,000 net allocations instead of 700.

The service allocates heavily and keeps little: a batch of decoded events, the answers of
a request. With the default, collections ran so often during a rebuild that they cost
10-15 % of it (``bench/rebuild.py``: 45,000 events/s, 50,400 with these thresholds, the
same as with the collector off). Reference counting still frees almost everything at
once; only cycles wait a little longer.
"""


def tune_process() -> None:
    """Apply the process settings above (call once, at start)."""
    gc.set_threshold(*GC_THRESHOLDS)
