"""What a Kafka record costs the driver in each CloudEvents content mode:
``python -m bench.kafkawire [--records 200] [--repeat 9]``.

Per record, through aiokafka's own (compiled) record batch: an envelope made from one
:class:`~bench.common.UserCreated`, written into a record batch and read back from the built
batch. Three ways to carry it: ``payload`` (the event's JSON alone, what the raw client's
benchmark carries: no envelope is read back), ``binary`` (eventbus's default: the payload as
the value and the ``ce_`` headers, :mod:`eventbus.brokers.kafka.records`) and ``structured``
(one ``application/cloudevents+json`` value and its content type, read with
:func:`eventbus.envelope.from_structured`, msgspec's reader when it is installed). The best
of ``--repeat`` timed runs, in microseconds per record, and the bytes per record in the
built batch. It answers whether carrying the attributes in the value instead of the headers
would make eventbus's Kafka records cheaper (``docs/benchmarks.md``).
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable
from typing import Any

from aiokafka.record.default_records import (  # type: ignore[import-untyped]
    DefaultRecordBatch,
    DefaultRecordBatchBuilder,
)

from bench.common import make_event
from eventbus.brokers.kafka.driver import Headers
from eventbus.brokers.kafka.records import read_record, record_headers
from eventbus.envelope import STRUCTURED_CONTENT_TYPE, Envelope, from_structured, to_structured
from eventbus.publishing import EnvelopeFactory

MODES = ("payload", "binary", "structured")
_STRUCTURED: Headers = [("content-type", STRUCTURED_CONTENT_TYPE.encode())]


def _record(mode: str, envelope: Envelope) -> tuple[bytes, Headers]:
    if mode == "binary":
        return envelope.data, record_headers(envelope)
    if mode == "structured":
        return to_structured(envelope), _STRUCTURED
    return envelope.data, []


def write(mode: str, records: int) -> bytes:
    """``records`` new envelopes written into one record batch, as the producer does."""
    envelopes, event = EnvelopeFactory("bench", max_message_bytes=1_000_000), make_event(1)
    builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 24)
    for offset in range(records):
        value, headers = _record(mode, envelopes(event))
        builder.append(offset, timestamp=None, key=None, value=value, headers=headers)
    return bytes(builder.build())


def read(mode: str, batch: bytes) -> None:
    """Every record of ``batch`` read back into an envelope, as the consumer does."""
    for record in DefaultRecordBatch(batch):
        if mode == "binary":
            read_record(record.headers, record.value, record.key)
        elif mode == "structured":
            from_structured(record.value)


def _best(run: Callable[[], Any], repeat: int, records: int) -> float:
    return min(timeit.repeat(run, number=1, repeat=repeat)) / records * 1e6


def measure(records: int, repeat: int) -> dict[str, dict[str, float]]:
    """Per mode: write and read µs per record (best of ``repeat``) and bytes per record."""
    results = {}
    for mode in MODES:
        batch = write(mode, records)
        results[mode] = {
            "write_us": _best(lambda: write(mode, records), repeat, records),  # noqa: B023
            "read_us": _best(lambda: read(mode, batch), repeat, records),  # noqa: B023
            "bytes": len(batch) / records,
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    print("| mode | write µs/record | read µs/record | both | bytes/record |")
    print("|---|---|---|---|---|")
    for mode, r in measure(args.records, args.repeat).items():
        both = r["write_us"] + r["read_us"]
        print(
            f"| {mode} | {r['write_us']:.2f} | {r['read_us']:.2f} | {both:.2f} | {r['bytes']:.0f} |"
        )


if __name__ == "__main__":
    main()
