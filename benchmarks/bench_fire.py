"""fire() throughput and latency per storage backend.

Prints, for each backend: fires/s from 1 process and from N processes, p50/p99
fire latency, and fire latency in sessions holding 100, 1,000 and 10,000
``andEvery`` instances. Dispatch goes to a runner that only counts, so the
numbers are the cost of fire() itself (validation, one atomic step, commit).
The configuration is the questionnaire shape: an AND-join, an ``andEvery`` task
(one instance per page) and a task with an ``unless``.

    .venv/bin/python benchmarks/bench_fire.py                      # memory, sqlite
    .venv/bin/python benchmarks/bench_fire.py --backend redis --backend postgres
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
import uuid
from typing import Any

from triggers import TriggerManager
from triggers.runners.base import BaseTaskRunner, task_runners
from triggers.storages import storage_backends

CONFIG = {
    "t_a": {"after": ["a", "b"], "run": "triggers.testing.DevNullTask"},
    "t_b": {"after": ["a"], "andEvery": "p", "run": "triggers.testing.DevNullTask"},
    "t_c": {"after": ["a", "p"], "unless": ["u"], "run": "triggers.testing.DevNullTask"},
}
#: One session's firing sequence (10 fires).
SEQUENCE = ["a", "b", "p", "p", "p", "p", "p", "p", "p", "u"]


class CountingRunner(BaseTaskRunner):
    """Counts dispatches; runs nothing."""

    dispatched = 0

    def check(self, manager: Any, task_instance: Any) -> None:
        pass

    def run(self, manager: Any, task_instance: Any) -> None:
        CountingRunner.dispatched += 1


class BenchManager(TriggerManager):
    default_task_runner_name = "bench-count"


def setup_registry() -> None:
    task_runners.register("bench-count", CountingRunner)


def options_for(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    if backend == "sqlite":
        return {"path": args.sqlite_path}
    if backend == "redis":
        return {"url": args.redis_url, "prefix": "triggers-bench"}
    if backend == "postgres":
        return {"dsn": args.postgres_dsn}
    return {}


def make_manager(backend: str, options: dict[str, Any], uid: str | None = None) -> BenchManager:
    storage = storage_backends.get(backend, uid or f"bench-{uuid.uuid4().hex}", **options)
    return BenchManager(storage)


def run_sessions(backend: str, options: dict[str, Any], sessions: int) -> list[float]:
    """Fire SEQUENCE into ``sessions`` fresh sessions; returns each fire's latency."""
    latencies = []
    managers = []
    for _ in range(sessions):
        manager = make_manager(backend, options)
        manager.update_configuration(CONFIG)
        managers.append(manager)
    for i, manager in enumerate(managers):
        for trigger in SEQUENCE:
            start = time.perf_counter()
            manager.fire(trigger, {"n": i, "payload": {"page": i, "answers": [1, 2, 3]}})
            latencies.append(time.perf_counter() - start)
    for manager in managers:
        manager.storage.delete_session()
    return latencies


def _worker(backend: str, options: dict[str, Any], sessions: int, barrier: Any, out: Any) -> None:
    setup_registry()
    # Warm up connections and caches outside the timed part.
    run_sessions(backend, options, 2)
    barrier.wait()
    start = time.perf_counter()
    latencies = run_sessions(backend, options, sessions)
    out.put((len(latencies), time.perf_counter() - start))


def throughput(backend: str, options: dict[str, Any], processes: int, sessions: int) -> float:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(processes + 1)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(backend, options, sessions, barrier, out))
        for _ in range(processes)
    ]
    for p in procs:
        p.start()
    barrier.wait()
    start = time.perf_counter()
    fires = sum(out.get(timeout=600)[0] for _ in procs)
    elapsed = time.perf_counter() - start
    for p in procs:
        p.join(60)
    return fires / elapsed


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency_at_size(backend: str, options: dict[str, Any], size: int, samples: int) -> float:
    """Median fire latency in a session already holding ``size`` andEvery instances."""
    manager = make_manager(backend, options)
    manager.update_configuration(
        {"t_every": {"after": ["start"], "andEvery": "page", "run": "triggers.testing.DevNullTask"}}
    )
    manager.fire("start")
    for i in range(size):
        manager.fire("page", {"page": i})
    latencies = []
    for i in range(samples):
        start = time.perf_counter()
        manager.fire("page", {"page": size + i})
        latencies.append(time.perf_counter() - start)
    manager.storage.delete_session()
    return statistics.median(latencies)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", action="append", choices=sorted(storage_backends.keys()))
    parser.add_argument(
        "--sessions", type=int, default=300, help="sessions per process (10 fires each)"
    )
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--sqlite-path", default=None)
    parser.add_argument(
        "--redis-url", default=os.environ.get("TRIGGERS_REDIS_URL", "redis://127.0.0.1:6379/13")
    )
    parser.add_argument(
        "--postgres-dsn",
        default=os.environ.get("TRIGGERS_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    args = parser.parse_args()
    backends = args.backend or ["memory", "sqlite"]
    sizes = [int(s) for s in args.sizes.split(",") if s]
    setup_registry()
    tmp = tempfile.TemporaryDirectory()
    if args.sqlite_path is None:
        args.sqlite_path = os.path.join(tmp.name, "bench.sqlite3")

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus; "
          f"{len(SEQUENCE)} fires per session over a 3-task configuration")
    for backend in backends:
        options = options_for(backend, args)
        run_sessions(backend, options, 5)  # warm-up
        latencies = run_sessions(backend, options, args.sessions)
        total = sum(latencies)
        print(f"\n[{backend}]")
        print(f"  1 process : {len(latencies) / total:9.0f} fires/s   "
              f"p50 {pct(latencies, 0.5) * 1e3:.3f} ms   p99 {pct(latencies, 0.99) * 1e3:.3f} ms")
        if backend != "memory" and args.processes > 1:
            one = throughput(backend, options, 1, args.sessions)
            many = throughput(backend, options, args.processes, args.sessions)
            print(f"  processes : 1 -> {one:.0f} fires/s, {args.processes} -> {many:.0f} fires/s "
                  f"({many / one:.2f}x)")
        at = {size: latency_at_size(backend, options, size, args.samples) for size in sizes}
        line = "   ".join(f"{size:>6}: {value * 1e3:.3f} ms" for size, value in at.items())
        print(f"  latency by andEvery instances in session (median): {line}")
        if len(sizes) > 1:
            print(f"  ratio {sizes[-1]} / {sizes[0]}: {at[sizes[-1]] / at[sizes[0]]:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
