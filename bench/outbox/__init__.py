"""The outbox relay benchmark: ``python -m bench.outbox`` (``scripts/bench --outbox``).

* :mod:`~bench.outbox.run` — the command: every cell, interleaved repetitions, the results;
* :mod:`~bench.outbox.trial` — one relay trial: tables, staging, relay processes, the timing;
* :mod:`~bench.outbox.worker` — one relay process (eventbus's ``OutboxRelay`` or the baseline);
* :mod:`~bench.outbox.baseline` — the hand-written relay it is compared with;
* :mod:`~bench.outbox.staging` — what staging costs the caller's transaction;
* :mod:`~bench.outbox.brokers`, :mod:`~bench.outbox.common`, :mod:`~bench.outbox.report`.
"""
