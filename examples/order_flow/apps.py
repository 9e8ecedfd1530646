"""The order flow with each service as its own process (``Procfile``, ``run-services``).

``ORDER_FLOW`` picks the variant (``saga``, the default, or ``choreography``) and
``ORDER_FLOW_FAIL`` what goes wrong (``payment``, ``shipment-timeout``); ``EVENTBUS_URL``,
``EVENTBUS_OPTIONS`` and ``DATABASE_URL`` as in ``settings``. The order service (with the
saga, its worker and the outbox relay) is a FastAPI app; the others are buses for
``eventbus worker run``:

    uvicorn --factory examples.order_flow.apps:orders_app
    eventbus worker run examples.order_flow.apps:inventory

``python -m examples.order_flow.apps`` creates the tables first.
"""

from __future__ import annotations

import asyncio
import os
from typing import cast

from fastapi import FastAPI

from eventbus import EventBus
from examples.order_flow.domain import Faults, Shop
from examples.order_flow.orders import Variant
from examples.order_flow.settings import make_engine
from examples.order_flow.wiring import Flow


def flow() -> Flow:
    variant = cast(Variant, os.environ.get("ORDER_FLOW", "saga"))
    if variant not in ("saga", "choreography"):
        raise ValueError(f"ORDER_FLOW must be saga or choreography, not {variant!r}")
    fail = os.environ.get("ORDER_FLOW_FAIL", "")
    faults = Faults(payment_declined=fail == "payment", shipping_silent=fail == "shipment-timeout")
    return Flow.of(variant, make_engine(variant), Shop(faults=faults))


def orders_app() -> FastAPI:
    parts = flow()
    return parts.orders_app(parts.orders_bus())


def inventory() -> EventBus:
    return flow().service_bus("inventory")


def payments() -> EventBus:
    return flow().service_bus("payments")


def shipping() -> EventBus:
    return flow().service_bus("shipping")


if __name__ == "__main__":  # ``python -m examples.order_flow.apps``: the tables, once
    asyncio.run(flow().create_tables())
