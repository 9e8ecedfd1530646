from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

from eventbus import Event


class Created(Event):
    event_type = "refunds.created"
    refund_id: str
    amount: Annotated[int, AfterValidator(abs)]
