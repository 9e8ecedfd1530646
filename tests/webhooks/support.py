"""Small helpers shared by the webhook tests."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from typing import Any

from eventbus import Envelope


def event(event_type: str = "order.placed", **data: Any) -> Envelope:
    """An envelope as the bus would hand it to the intake."""
    return Envelope(
        id=str(uuid.uuid4()),
        type=event_type,
        source="shop",
        data=json.dumps(data or {"order": 1}).encode(),
        time=datetime.now(timezone.utc),
    )
