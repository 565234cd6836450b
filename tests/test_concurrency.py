"""Concurrency proof: many processes fire shuffled triggers into shared sessions.

Each firing of every session is given to one of the processes at random; all
processes start together and fire their share in a shuffled order. A runner
records every dispatch and finishes the instance at once, so cascades run
concurrently too. Afterwards the invariants of SPEC sections 4 and 8 must hold.

Size: ``TRIGGERS_STRESS_SESSIONS`` (default 12), ``TRIGGERS_STRESS_EVERY``
(firings of the andEvery trigger per session, default 4),
``TRIGGERS_STRESS_PROCESSES`` (default 8). Run bigger with e.g.
``TRIGGERS_STRESS_SESSIONS=200 TRIGGERS_STRESS_EVERY=20 pytest tests/test_concurrency.py``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import uuid
from collections import Counter

import pytest

import stress_support
from conftest import backend_options, prepare_backend
from triggers.storages import storage_backends

SESSIONS = int(os.environ.get("TRIGGERS_STRESS_SESSIONS", "12"))
EVERY = int(os.environ.get("TRIGGERS_STRESS_EVERY", "4"))
PROCESSES = int(os.environ.get("TRIGGERS_STRESS_PROCESSES", "8"))
BOUND = 120  # seconds any process may take


@pytest.fixture(params=["sqlite", "redis", "postgres"])
def shared_backend(request, tmp_path):
    prepare_backend(request.param)
    return request.param, backend_options(request.param, tmp_path)


def test_concurrent_fires_keep_every_invariant(shared_backend):
    backend, options = shared_backend
    rng = random.Random(os.environ.get("TRIGGERS_STRESS_SEED", "20261128"))
    uids = [f"stress-{uuid.uuid4().hex[:12]}" for _ in range(SESSIONS)]
    stress_support.register()

    # Configure, and complete t_never's unless set before anything else fires.
    for uid in uids:
        manager = stress_support.StressManager(storage_backends.get(backend, uid, **options))
        manager.update_configuration(stress_support.CONFIG)
        manager.fire("x", {"uid": uid})
        manager.fire("y", {"uid": uid})

    shares: list[list] = [[] for _ in range(PROCESSES)]
    for uid in uids:
        firings = [(uid, t, {"uid": uid, "t": t}) for t in ("a", "b", "c", "d", "u")]
        firings += [(uid, "e", {"uid": uid, "n": n}) for n in range(EVERY)]
        for firing in firings:
            shares[rng.randrange(PROCESSES)].append(firing)
    for share in shares:
        rng.shuffle(share)

    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=stress_support.worker, args=(backend, options, share, barrier, out))
        for share in shares
    ]
    for p in procs:
        p.start()
    try:
        results = [out.get(timeout=BOUND) for _ in procs]
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    errors = [e for _, _, errs in results for e in errs]
    assert not errors, "\n".join(errors)
    assert sum(n for _, n, _ in results) == sum(len(s) for s in shares)

    dispatched = [d for ds, _, _ in results for d in ds]
    duplicates = [d for d, n in Counter(dispatched).items() if n > 1]
    assert not duplicates, f"dispatched more than once: {duplicates}"

    for uid in uids:
        storage = storage_backends.get(backend, uid, **options)
        instances = storage.instances
        mine = Counter(name.split("#")[0] for u, name in dispatched if u == uid)
        assert mine["t_join"] == 1, (uid, mine)
        assert mine["t_chain"] == 1, (uid, mine)
        assert mine["t_every"] == EVERY, (uid, mine)
        assert mine["t_every_chain"] == EVERY, (uid, mine)
        assert mine["t_never"] == 0, (uid, mine)
        assert mine["t_race"] <= 1, (uid, mine)

        # Every andEvery firing's kwargs reached exactly one instance.
        every = [i for i in instances.values() if i.config.name == "t_every"]
        assert sorted(i.kwargs["e"]["n"] for i in every) == list(range(EVERY))
        # No trigger lost: each one is recorded as the session's latest kwargs.
        latest = storage.latest_kwargs
        for trigger in ("a", "b", "c", "d", "e", "u", "x", "y", "t_join", "t_every"):
            assert trigger in latest, (uid, trigger, sorted(latest))
        # Everything dispatched finished; nothing runnable was left behind.
        for instance in instances.values():
            assert not instance.can_run, (uid, instance.name, instance.status)
            if (uid, instance.name) in dispatched:
                assert instance.status == "finished", (uid, instance.name, instance.status)
        assert instances["t_never#0"].status == "abandoned"
        race = instances["t_race#0"]
        assert race.status == ("finished" if mine["t_race"] else "abandoned")
        storage.delete_session()
