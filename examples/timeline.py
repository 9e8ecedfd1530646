"""A readable timeline of what each service did, shared by the example apps.

Every line gives the time since the run started, the service, what happened, and the first
characters of the flow's correlation id, so the lines of one registration or one order can be
followed across services (every event published while handling another carries its
``correlationid`` on).
"""

from __future__ import annotations

import sys
import time

from eventbus import Context, Envelope

_START = time.monotonic()
_WIDTH = 9


def say(service: str, text: str, flow: Context | Envelope | str | None = None) -> None:
    """Print one line of the timeline; ``flow`` is the context, envelope or id it belongs to."""
    elapsed = time.monotonic() - _START
    line = f"{elapsed:7.3f}s  [{service:<{_WIDTH}}] {text}{_flow(flow)}"
    print(line, file=sys.stdout, flush=True)


def _flow(flow: Context | Envelope | str | None) -> str:
    if flow is None:
        return ""
    if isinstance(flow, Context):
        flow = flow.envelope
    if isinstance(flow, Envelope):
        flow = flow.correlationid or flow.id
    return f"   (flow {flow[:8]})"
