"""``async with`` for the library's long-running parts: started on entry, stopped on exit."""

from __future__ import annotations

from types import TracebackType

from typing_extensions import Self

__all__ = ["Lifecycle"]


class Lifecycle:
    """A part that runs between ``await part.start()`` and ``await part.stop()`` — the bus, the
    outbox relay, a projection runner, the saga worker, the webhook sender — and so also as
    ``async with part:``, which stops it however the block ends."""

    __slots__ = ()

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
