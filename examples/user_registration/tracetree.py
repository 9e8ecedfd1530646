"""Print the spans of one flow as a tree, to see the hops an event made.

A handler's span is not a child of the producer's: it *links* to it (the messaging
conventions' default, since one message may be consumed by many groups at different times).
The tree follows both, parent and link, so the hops of one registration read top down.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan


def print_trace_tree(spans: Sequence[ReadableSpan], root: ReadableSpan) -> None:
    children: dict[int, list[ReadableSpan]] = defaultdict(list)
    for span in spans:
        above = _above(span)
        if above is not None:
            children[above].append(span)
    _print(root, children, 0, root.start_time or 0)


def flow_root(spans: Sequence[ReadableSpan], event_id: str) -> ReadableSpan:
    """The first span that sent the event ``event_id``."""
    return next(
        span
        for span in sorted(spans, key=lambda s: s.start_time or 0)
        if (span.attributes or {}).get("messaging.message.id") == event_id
    )


def _above(span: ReadableSpan) -> int | None:
    if span.parent is not None:
        return span.parent.span_id
    if span.links:
        return span.links[0].context.span_id
    return None


def _print(
    span: ReadableSpan, children: dict[int, list[ReadableSpan]], depth: int, t0: int
) -> None:
    attributes = span.attributes or {}
    took = ((span.end_time or 0) - (span.start_time or 0)) / 1e6
    at = ((span.start_time or 0) - t0) / 1e6
    detail = attributes.get("messaging.consumer.group.name")
    status = "" if span.status.is_ok else f"  ✗ {attributes.get('error.type', 'error')}"
    group = f"  group={detail}" if detail else ""
    print(f"  {'    ' * depth}{span.name}{group}  +{at:.1f} ms, {took:.1f} ms{status}")
    context = span.get_span_context()
    assert context is not None
    for child in sorted(children.get(context.span_id, []), key=lambda s: s.start_time or 0):
        _print(child, children, depth + 1, t0)
