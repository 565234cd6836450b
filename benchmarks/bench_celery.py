"""Trigger tasks on Celery vs plain Celery tasks: latency and throughput.

With one broker and one worker (a subprocess importing this module) per run:

(a) latency: from the ``fire()`` that completes an AND-join to the start of the
    trigger task's ``_run``, against the latency from a plain ``apply_async()``
    of an equivalent plain Celery task to the start of its body (both sides
    record ``time.time()``; one task at a time, interleaved);
(b) throughput: N trigger tasks (one session each, configured beforehand, then
    N fires as fast as possible) against N plain tasks (N ``apply_async()``),
    from the first fire / publish to the end of the last task (a plain
    sentinel task queued behind them; the worker runs one task at a time).

It also breaks the trigger task's time down (fire() in the producer; in the
worker: Celery prerun -> _run start, _run end -> postrun), to show where the
overhead goes. Prints p50/p99 and the ratios (targets: latency <= 1.3x plain,
throughput >= 0.7x plain).

    .venv/bin/python benchmarks/bench_celery.py                     # Redis broker, SQLite
    .venv/bin/python benchmarks/bench_celery.py --broker redis --broker rabbitmq \\
        --storage sqlite --storage redis -n 500 --latency-runs 200
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import task_postrun, task_prerun

from triggers.celery_support import trigger_task
from triggers.manager import TriggerManager
from triggers.runners.celery import CeleryTaskRunner
from triggers.storages import storage_backends

BROKERS = {
    "redis": "redis://127.0.0.1:6379/14",
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672//",
}
STORAGES: dict[str, dict[str, Any]] = {
    "sqlite": {},  # path filled in per run
    "redis": {"url": "redis://127.0.0.1:6379/13", "prefix": "bench-celery"},
    "postgres": {"dsn": "postgresql://postgres@127.0.0.1:5432/test"},
}

app = Celery("bench_celery")
app.conf.update(
    broker_url=os.environ.get("BENCH_BROKER", BROKERS["redis"]),
    task_default_queue=os.environ.get("BENCH_QUEUE", "bench-celery"),
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
)
OUT = os.environ.get("BENCH_OUT")  # the worker's record file

# --- what the worker records -----------------------------------------------------------
_local = threading.local()


@task_prerun.connect
def _prerun(**_: Any) -> None:
    _local.times = {"prerun": time.time()}


@task_postrun.connect
def _postrun(task: Any = None, **_: Any) -> None:
    times = getattr(_local, "times", None)
    if not times or "id" not in times or OUT is None:
        return
    times["postrun"] = time.time()
    with open(OUT, "a", encoding="utf-8") as out:
        out.write(json.dumps(times) + "\n")


def _body(kind: str, ident: str) -> None:
    """The task body both kinds share: note the start, do nothing."""
    _local.times.update(id=ident, kind=kind, start=time.time())
    _local.times["end"] = time.time()


@trigger_task(app, name="bench.trigger")
def bench_trigger(context: Any) -> dict[str, Any]:
    ident = next(v["id"] for v in context.trigger_kwargs.values() if "id" in v)
    _body("trigger", ident)
    return {}


@app.task(name="bench.plain")
def bench_plain(ident: str) -> None:
    _body("plain", ident)


# --- driver ----------------------------------------------------------------------------------
class Records:
    """Reads the worker's record file incrementally."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.seen: dict[str, dict[str, float]] = {}

    def poll(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as f:
            f.seek(self.offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind("\n") + 1]
        self.offset += len(complete.encode())
        for line in complete.splitlines():
            entry = json.loads(line)
            self.seen[entry["id"]] = entry

    def wait(self, ident: str, timeout: float = 60.0) -> dict[str, float]:
        deadline = time.monotonic() + timeout
        while ident not in self.seen:
            if time.monotonic() > deadline:
                raise TimeoutError(f"task {ident} did not run within {timeout}s")
            time.sleep(0.0002)
            self.poll()
        return self.seen[ident]


def start_worker(broker: str, queue: str, out: Path, pool: str, concurrency: int) -> Any:
    env = dict(os.environ)
    here = str(Path(__file__).resolve().parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [here, env.get("PYTHONPATH")]))
    env.update(BENCH_BROKER=broker, BENCH_QUEUE=queue, BENCH_OUT=str(out))
    hostname = f"bench-{uuid.uuid4().hex[:8]}@localhost"
    log = open(out.with_suffix(".log"), "wb")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(
        [
            sys.executable, "-m", "celery", "-A", "bench_celery", "worker",
            f"--pool={pool}", "-c", str(concurrency), "--loglevel=warning", "-n", hostname,
            "-Q", queue, "--without-gossip", "--without-mingle", "--without-heartbeat",
        ],  # fmt: skip
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while not app.control.ping(destination=[hostname], timeout=0.5):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"worker did not start; see {out.with_suffix('.log')}")
    return process


def stop_worker(process: Any) -> None:
    process.send_signal(signal.SIGQUIT)
    try:
        process.wait(timeout=3)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(value: float) -> str:
    return f"{value * 1000:7.2f} ms"


def make_manager(storage: str, options: dict[str, Any]) -> TriggerManager:
    uid = f"bench-{uuid.uuid4().hex}"
    return TriggerManager(storage_backends.get(storage, uid, **options))


def bench_latency(
    storage: str, options: dict[str, Any], records: Records, runs: int
) -> dict[str, list[float]]:
    result: dict[str, list[float]] = {
        "trigger": [], "plain": [], "fire": [], "worker_pre": [], "worker_post": [],
        "plain_pre": [],
    }  # fmt: skip
    for i in range(runs + 5):  # the first 5 warm up connections
        manager = make_manager(storage, options)
        manager.update_configuration({"t_join": {"after": ["a", "b"], "run": "bench.trigger"}})
        manager.fire("a", {})
        ident = f"lat-t-{uuid.uuid4().hex}"
        t0 = time.time()
        manager.fire("b", {"id": ident})
        fired = time.time()
        entry = records.wait(ident)
        if i >= 5:
            result["trigger"].append(entry["start"] - t0)
            result["fire"].append(fired - t0)
            result["worker_pre"].append(entry["start"] - entry["prerun"])
            result["worker_post"].append(entry["postrun"] - entry["end"])
        ident = f"lat-p-{uuid.uuid4().hex}"
        t0 = time.time()
        bench_plain.apply_async((ident,))
        entry = records.wait(ident)
        if i >= 5:
            result["plain"].append(entry["start"] - t0)
            result["plain_pre"].append(entry["start"] - entry["prerun"])
    return result


def bench_throughput(
    storage: str, options: dict[str, Any], records: Records, n: int, rounds: int
) -> dict[str, float]:
    """Median over ``rounds`` rounds (trigger batch, then plain batch) of each rate."""
    results = [_throughput_round(storage, options, records, n) for _ in range(rounds)]
    return {key: statistics.median(r[key] for r in results) for key in results[0]}


def _throughput_round(
    storage: str, options: dict[str, Any], records: Records, n: int
) -> dict[str, float]:
    run_id = uuid.uuid4().hex[:8]
    managers = []
    for _ in range(n):
        manager = make_manager(storage, options)
        manager.update_configuration({"t_one": {"after": ["go"], "run": "bench.trigger"}})
        managers.append(manager)
    out: dict[str, float] = {}

    t0 = time.time()
    for i, manager in enumerate(managers):
        manager.fire("go", {"id": f"tp-t-{run_id}-{i}"})
    fired = time.time()
    sentinel = f"tp-t-end-{uuid.uuid4().hex}"
    bench_plain.apply_async((sentinel,))
    done = records.wait(sentinel, timeout=300)["start"]
    out["trigger"] = n / (done - t0)
    out["trigger_fire_rate"] = n / (fired - t0)

    t0 = time.time()
    for i in range(n):
        bench_plain.apply_async((f"tp-p-{run_id}-{i}",))
    published = time.time()
    sentinel = f"tp-p-end-{uuid.uuid4().hex}"
    bench_plain.apply_async((sentinel,))
    done = records.wait(sentinel, timeout=300)["start"]
    out["plain"] = n / (done - t0)
    out["plain_publish_rate"] = n / (published - t0)
    missing = [i for i in range(n) if f"tp-t-{run_id}-{i}" not in records.seen]
    if missing:
        raise RuntimeError(f"{len(missing)} trigger tasks did not run, e.g. {missing[:3]}")
    return out


def run(
    broker_name: str, storage: str, n: int, runs: int, rounds: int, pool: str, concurrency: int
) -> None:
    broker = BROKERS[broker_name]
    app.conf.broker_url = broker
    app._pool = None
    app.amqp._producer_pool = None
    queue = f"bench-celery-{uuid.uuid4().hex[:8]}"
    app.conf.task_default_queue = queue
    tmp = Path(tempfile.mkdtemp(prefix="bench-celery-"))
    options = dict(STORAGES[storage])
    if storage == "sqlite":
        options["path"] = str(tmp / "bench.sqlite3")
    out = tmp / "records.jsonl"
    worker = start_worker(broker, queue, out, pool, concurrency)
    records = Records(out)
    try:
        lat = bench_latency(storage, options, records, runs)
        tp = bench_throughput(storage, options, records, n, rounds)
    finally:
        stop_worker(worker)
        from kombu import Connection

        with Connection(broker) as conn:
            conn.default_channel.queue_delete(queue)
    print(f"\n== broker={broker_name} storage={storage} worker={pool} -c {concurrency} ==")
    print(f"latency ({runs} runs)               p50        p99")
    for label, key in (
        ("plain apply_async -> start", "plain"),
        ("trigger fire -> _run start", "trigger"),
        ("  of which fire() in producer", "fire"),
        ("  worker prerun -> _run start", "worker_pre"),
        ("  worker _run end -> postrun", "worker_post"),
        ("  plain: prerun -> body start", "plain_pre"),
    ):
        print(f"  {label:32s} {ms(pct(lat[key], 0.5))} {ms(pct(lat[key], 0.99))}")
    ratio50 = pct(lat["trigger"], 0.5) / pct(lat["plain"], 0.5)
    ratio99 = pct(lat["trigger"], 0.99) / pct(lat["plain"], 0.99)
    print(f"  ratio trigger/plain: p50 {ratio50:.2f}x, p99 {ratio99:.2f}x (target <= 1.3x)")
    print(f"throughput ({n} tasks, median of {rounds} rounds)")
    plain_rate, publish_rate = tp["plain"], tp["plain_publish_rate"]
    trigger_rate, fire_rate = tp["trigger"], tp["trigger_fire_rate"]
    print(f"  plain    {plain_rate:8.0f} tasks/s (publishing alone {publish_rate:.0f}/s)")
    print(f"  trigger  {trigger_rate:8.0f} tasks/s (fire() alone {fire_rate:.0f}/s)")
    print(f"  ratio trigger/plain: {trigger_rate / plain_rate:.2f}x (target >= 0.7x)")
    worker_cost = (
        statistics.median(lat["worker_pre"])
        - statistics.median(lat["plain_pre"])
        + statistics.median(lat["worker_post"])
    )
    print(f"  worker-side framework cost per task (p50): ~{ms(worker_cost)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", action="append", choices=sorted(BROKERS))
    parser.add_argument("--storage", action="append", choices=sorted(STORAGES))
    parser.add_argument("-n", type=int, default=500, help="tasks per throughput run")
    parser.add_argument("--latency-runs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds (median)")
    parser.add_argument("--pool", default="threads", help="worker pool (threads, solo, prefork)")
    parser.add_argument("-c", "--concurrency", type=int, default=1)
    args = parser.parse_args()
    CeleryTaskRunner.celery_app = app
    for broker in args.broker or ["redis"]:
        for storage in args.storage or ["sqlite"]:
            run(
                broker, storage, args.n, args.latency_runs, args.rounds, args.pool,
                args.concurrency,
            )


if __name__ == "__main__":
    main()
