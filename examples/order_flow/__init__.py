"""The order flow, twice: as choreography and as an orchestrated saga with compensation.

``python -m examples.order_flow [--fail payment|shipment-timeout]`` runs both on the embedded
default (the in-memory bus and SQLite) and prints their timelines side by side; see
``README.md``.
"""
