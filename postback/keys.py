"""Typed keys of the aiohttp application (resources are created in ``cleanup_ctx``)."""

from __future__ import annotations

from aiohttp import web

from eventstore.base import EventStore
from postback.config import Config
from postback.directory import Directory
from postback.metrics import Metrics
from postback.service import PartnerService

CONFIG = web.AppKey("config", Config)
STORE = web.AppKey("store", EventStore)
DIRECTORY = web.AppKey("directory", Directory)
PARTNERS = web.AppKey("partners", PartnerService)
METRICS = web.AppKey("metrics", Metrics)
