"""The engine: one transition of one instance, decided from its stored record and committed
with everything it causes.

Three things move an instance: an event (through the saga's subscriptions, inside the SQL
store's ``Inbox`` transaction), a timeout that fires and a compensation that runs (both
through :class:`~eventbus.sagas.SagaWorker`, each in its own transaction). Every one reads the
record, runs the user's handler on a :class:`SagaStep`, and commits the new record (checking
its version), the timers it changes and the messages it publishes, together.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from eventbus.context import Context, Publisher
from eventbus.errors import ConfigurationError, PermanentError
from eventbus.event import Event
from eventbus.sagas.definition import FINAL, Handler, SagaDefinition
from eventbus.sagas.records import (
    COMPENSATE,
    COMPENSATED,
    COMPENSATING,
    COMPENSATION_FAILED,
    COMPLETED,
    RUNNING,
    TIMEOUT,
    Change,
    SagaNotFound,
    SagaNotResumable,
    SagaRecord,
    SagaStore,
    Timer,
    Transition,
)
from eventbus.sagas.step import SagaStep

__all__ = ["Engine", "call"]

log = logging.getLogger("eventbus.sagas")


class Engine:
    """Applies ``saga``'s handlers to its stored instances."""

    def __init__(self, saga: SagaDefinition[Any]) -> None:
        self.saga = saga

    @property
    def store(self) -> SagaStore:
        store = self.saga.store
        if store is None:
            raise ConfigurationError(
                f"saga {self.saga.name!r} has no store: Saga(..., store=MemorySagaStore()) "
                "for tests, or SqlSagaStore(engine, outbox=outbox)"
            )
        return store

    # ---------------------------------------------------------------- events
    async def on_event(self, event: Event, ctx: Context) -> None:
        """Handle ``event`` (delivered to the saga's subscription) for its instance."""
        saga, session, event_id = self.saga, ctx.session, ctx.envelope.id
        start = saga.starts_on.get(event.event_type)
        handler = start or saga.handlers[event.event_type][0]
        key = handler.key(event)
        record = await self.store.load(session, saga.name, key)
        if start is not None:
            if record is not None:
                log.info("saga %s: %r is started already; %s ignored", saga.name, key, event_id)
                return
            step = self._step(None, key, "started", event)
            await call(start.func, event, step)
            change = self._decide(None, step, event.event_type, event_id)
            change.record = dataclasses.replace(
                change.record, correlation_id=ctx.envelope.correlationid or event_id
            )
        else:
            chosen = self._applicable(record, key, event, ctx)
            if chosen is None or record is None:
                return
            step = await self._run(record, chosen.func, event)
            change = self._decide(record, step, event.event_type, ctx.envelope.id)
        await self.store.commit(session, change)
        for message, message_key in step.messages:
            await ctx.publish(message, key=message_key)

    def _applicable(
        self, record: SagaRecord | None, key: str, event: Event, ctx: Context
    ) -> Handler | None:
        saga, event_id = self.saga, ctx.envelope.id
        if record is None:
            if saga.on_missing == "dead_letter":
                raise SagaNotFound(saga.name, key, f" for {event.event_type} {event_id}")
            log.warning(
                "saga %s: %s %s names instance %r, which does not exist; ignored",
                saga.name, event.event_type, event_id, key,
            )  # fmt: skip
            return None
        if any(t.event_id == event_id for t in record.history):
            log.info("saga %s: %s was applied to %r already; ignored", saga.name, event_id, key)
            return None
        if record.status != RUNNING:
            log.info(
                "saga %s: %s %s arrived for %r, which is %s; ignored",
                saga.name, event.event_type, event_id, key, record.status,
            )  # fmt: skip
            return None
        for handler in saga.handlers[event.event_type]:
            if handler.when is None or record.phase in handler.when:
                return handler
        log.info(
            "saga %s: no handler of %s in phase %r of %r; ignored",
            saga.name, event.event_type, record.phase, key,
        )  # fmt: skip
        return None

    # ---------------------------------------------------------------- timers
    async def on_timer(self, bus: Publisher, timer: Timer) -> bool:
        """Fire ``timer``; False when it was gone (cancelled, or fired by another worker).

        A compensation that raises rolls its transaction back (nothing it published is
        kept); the failed attempt is then counted in a transaction of its own."""
        store = self.store
        try:
            async with store.transaction() as session:
                if not await store.claim(session, timer):
                    return False
                record = await store.load(session, timer.saga, timer.key)
                fired = await self._fire(record, timer)
                if record is not None and fired is not None:
                    change, step = fired
                    change.claimed = timer
                    await store.commit(session, change)
                    await _publish(bus, session, record, step)
                return True
        except _CompensationError as failed:
            await self._compensation_failed(timer, failed.record, failed.error)
            return True

    async def _fire(
        self, record: SagaRecord | None, timer: Timer
    ) -> tuple[Change, SagaStep[Any]] | None:
        """What ``timer`` changes (None: nothing, the instance moved on; the timer is spent)."""
        if record is None:
            return None
        if timer.kind == TIMEOUT:
            if record.status != RUNNING:
                return None
            handler = self.saga.timeout_handlers.get(timer.name)
            step = await self._run(record, handler, None, timeout=timer.name)
            return self._decide(record, step, f"timeout:{timer.name}", None), step
        if record.status != COMPENSATING or not record.compensations:
            return None
        try:
            return await self._compensate(record)
        except Exception as exc:
            raise _CompensationError(record, exc) from exc

    async def _compensate(self, record: SagaRecord) -> tuple[Change, SagaStep[Any]]:
        saga, name = self.saga, record.compensations[-1]
        func = saga.final if name == FINAL else saga.compensations.get(name)
        step = self._step(record, record.key, record.phase, None)
        if func is None:
            raise LookupError(f"saga {saga.name!r} declares no compensation {name!r}")
        await call(func, step)
        left = record.compensations[:-1]
        status = COMPENSATING if left else COMPENSATED
        schedule = [self._timer(record.key, COMPENSATE, 0.0)] if left else []
        new = self._record(record, step, status, left, f"compensate:{name}", None, None)
        new = dataclasses.replace(new, attempts=0, last_error=None)
        return Change(new, record.version, schedule), step

    async def _compensation_failed(self, timer: Timer, seen: SagaRecord, error: Exception) -> None:
        """Count a failed attempt of the compensation, in its own transaction: retry it after
        the next of ``compensation_retries``, or stop in ``compensation_failed``."""
        saga, store = self.saga, self.store
        name, attempts = seen.compensations[-1], seen.attempts + 1
        reason = f"{type(error).__name__}: {error}"
        async with store.transaction() as session:
            if not await store.claim(session, timer):
                return
            record = await store.load(session, timer.saga, timer.key)
            if record is None or record.version != seen.version:
                return  # it moved on meanwhile: the next round decides again
            retries = saga.compensation_retries
            status = COMPENSATING if attempts <= len(retries) else COMPENSATION_FAILED
            step = self._step(record, record.key, record.phase, None)
            new = self._record(
                record, step, status, record.compensations, f"compensate:{name}", None, reason
            )
            new = dataclasses.replace(new, attempts=attempts, last_error=reason)
            change = Change(new, record.version, claimed=timer)
            if status == COMPENSATING:
                change.schedule.append(self._timer(record.key, COMPENSATE, retries[attempts - 1]))
                log.warning(
                    "saga %s: compensation %s of %r failed (attempt %d of %d): %s",
                    saga.name, name, record.key, attempts, len(retries) + 1, reason,
                )  # fmt: skip
            else:
                log.error(
                    "saga %s: compensation %s of %r failed %d times and is given up: the "
                    "instance is compensation_failed; fix the cause, then resume it: %s",
                    saga.name, name, record.key, attempts, reason,
                )  # fmt: skip
            await store.commit(session, change)

    async def resume(self, key: str) -> SagaRecord:
        """Run the compensations of an instance in ``compensation_failed`` again."""
        saga, store = self.saga, self.store
        async with store.transaction() as session:
            record = await store.load(session, saga.name, key, lock=True)
            if record is None:
                raise SagaNotFound(saga.name, key)
            if record.status != COMPENSATION_FAILED:
                raise SagaNotResumable(saga.name, key, record.status)
            step = self._step(record, key, record.phase, None)
            new = self._record(
                record, step, COMPENSATING, record.compensations, "operator:resume", None, None
            )
            new = dataclasses.replace(new, attempts=0, last_error=None)
            await store.commit(
                session, Change(new, record.version, [self._timer(key, COMPENSATE, 0.0)])
            )
            return new

    # ---------------------------------------------------------------- deciding
    async def _run(
        self,
        record: SagaRecord,
        func: Callable[..., Any] | None,
        event: Event | None,
        timeout: str | None = None,
    ) -> SagaStep[Any]:
        """Run a handler; a ``PermanentError`` it raises fails the saga from the stored state
        (nothing the handler asked for is kept)."""
        step = self._step(record, record.key, record.phase, event)
        try:
            if func is None:
                step.fail(f"timeout {timeout!r} fired")
            else:
                await call(func, *([] if event is None else [event]), step)
        except PermanentError as exc:
            step = self._step(record, record.key, record.phase, event)
            step.fail(f"{type(exc).__name__}: {exc}")
        return step

    def _decide(
        self, record: SagaRecord | None, step: SagaStep[Any], cause: str, event_id: str | None
    ) -> Change:
        """The change a handler's step asks for."""
        stack = (*(record.compensations if record else ()), *step.compensations)
        schedule: list[Timer] = []
        cancel_all = step.outcome is not None
        if step.outcome == "completed":
            status, stack = COMPLETED, ()
        elif step.outcome == "failed":
            stack = ((FINAL,) if self.saga.final else ()) + stack
            status = COMPENSATING if stack else COMPENSATED
            if stack:
                schedule.append(self._timer(step.key, COMPENSATE, 0.0))
        else:
            status = RUNNING
            schedule = [self._timer(step.key, TIMEOUT, s, n) for n, s in step.timeouts.items()]
        new = self._record(record, step, status, stack, cause, event_id, step.reason)
        cancel = set(step.cancelled) | set(step.timeouts)
        return Change(new, record.version if record else None, schedule, cancel, cancel_all)

    def _record(
        self,
        record: SagaRecord | None,
        step: SagaStep[Any],
        status: str,
        compensations: tuple[str, ...],
        cause: str,
        event_id: str | None,
        error: str | None,
    ) -> SagaRecord:
        now = step.now
        entry = Transition(now, cause, event_id, status, step.phase, error)
        data = step.state.model_dump(mode="json")
        if record is None:
            return SagaRecord(
                self.saga.name, step.key, status, step.phase, data, 1, compensations,
                history=(entry,), created_at=now, updated_at=now,
                state_version=self.saga.state_version,
            )  # fmt: skip
        return dataclasses.replace(
            record, status=status, phase=step.phase, data=data, version=record.version + 1,
            compensations=compensations, history=(*record.history, entry), updated_at=now,
            state_version=self.saga.state_version,
        )  # fmt: skip

    def _step(
        self, record: SagaRecord | None, key: str, phase: str, event: Event | None
    ) -> SagaStep[Any]:
        saga = self.saga
        state = None if record is None else self.state_of(record)
        return SagaStep(
            saga=saga.name, key=key, state=state, phase=phase, event=event,
            now=saga.clock.now(), make_state=saga.new_state if record is None else None,
        )  # fmt: skip

    def state_of(self, record: SagaRecord) -> BaseModel:
        """The typed state of ``record``, upcast first if it was stored by an older version."""
        saga, data = self.saga, record.data
        if saga.upcasters is not None and record.state_version < saga.state_version:
            kind = f"saga.{saga.name}"
            states = saga.upcasters.upcast(kind, record.state_version, data, saga.state_version)
            if len(states) != 1:
                raise ConfigurationError(
                    f"the upcasters of {kind!r} made {len(states)} states of instance "
                    f"{record.key!r} out of one: a state upcaster returns exactly one"
                )
            data = states[0]
        state: BaseModel = saga.state_model.model_validate(data)
        return state

    def _timer(self, key: str, kind: str, after: float, name: str = COMPENSATE) -> Timer:
        return Timer(self.saga.name, key, kind, name, self.saga.clock.now() + after)


async def call(func: Callable[..., Any], *args: Any) -> None:
    result = func(*args)
    if inspect.isawaitable(result):
        await result


async def _publish(bus: Publisher, session: Any, record: SagaRecord, step: SagaStep[Any]) -> None:
    """A worker's publishes, staged in its transaction (SQL) or sent (memory)."""
    for message, key in step.messages:
        await bus.publish(message, key=key, session=session, correlation_id=record.correlation_id)


class _CompensationError(Exception):
    """A compensation raised: carried out of its transaction, which rolls back."""

    def __init__(self, record: SagaRecord, error: Exception) -> None:
        self.record, self.error = record, error
        super().__init__(str(error))
