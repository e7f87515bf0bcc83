"""Ending the background tasks the service runs beside itself (runner, outbox, child)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any


async def reap(task: asyncio.Task[Any], log: logging.Logger, failed: str) -> None:
    """Cancel ``task`` unless it has ended, wait for it, and log with ``failed`` (rather
    than raise) an exception it ended with: shutting down goes on regardless."""
    if not task.done():
        task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    except Exception:
        log.exception(failed)
