"""A webhook sender in a process of its own, for the crash tests to SIGKILL.

``python -m tests.webhooks.victim DATABASE_URL PREFIX TIMEOUT LEASE``: delivers what the
store holds (loopback allowed, retries 30 s apart) until it is killed.
"""

from __future__ import annotations

import asyncio
import sys

from sqlalchemy.ext.asyncio import create_async_engine

from eventbus.webhooks import RetrySchedule, WebhookSender, WebhookStore
from tests.webhooks.conftest import LOOPBACK

SCHEDULE = RetrySchedule(delays=(0, 30), jitter=0)


async def main(url: str, prefix: str, timeout: float, lease: float) -> None:
    engine = create_async_engine(url)
    store = WebhookStore(engine, prefix=prefix)
    sender = WebhookSender(
        store, guard=LOOPBACK, schedule=SCHEDULE, timeout=timeout, lease=lease, poll_interval=0.05
    )
    await sender.start()
    print("started", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])))
