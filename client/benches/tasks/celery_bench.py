"""Celery 5 with a Redis broker and result backend: the peer of dsf's task
service in client/benches/tasks/run.sh.

    python3 celery_bench.py throughput N POOL CONCURRENCY
        submits N no-op tasks, then starts a worker (POOL: prefork or
        threads) and times it until every result is stored.
    python3 celery_bench.py latency RATE SECONDS POOL CONCURRENCY
        starts the worker first, then submits at RATE a second; each task
        records how long after its submit it started.

task_acks_late is on (a task is acknowledged after it ran, as dsf's are
completed). CELERY_PREFETCH sets worker_prefetch_multiplier (default 4,
Celery's own). Prints one JSON object.
"""

import json
import os
import subprocess
import sys
import time

import redis
from celery import Celery

PORT = int(os.environ.get("REDIS_PORT", "26379"))
app = Celery(
    "celery_bench",
    broker=f"redis://127.0.0.1:{PORT}/0",
    backend=f"redis://127.0.0.1:{PORT}/1",
)
app.conf.update(task_acks_late=True, result_expires=3600, broker_connection_retry_on_startup=True,
                worker_prefetch_multiplier=int(os.environ.get("CELERY_PREFETCH", "4")))
_lat = redis.Redis(port=PORT, db=2)


@app.task
def noop(i):
    return None


@app.task
def stamped(sent_us):
    _lat.rpush("lat", int(time.time() * 1e6) - sent_us)
    return None


def worker(pool, conc):
    here = os.path.dirname(os.path.abspath(__file__))
    return subprocess.Popen(
        ["celery", "-A", "celery_bench", "worker", "--pool", pool, "--concurrency", str(conc),
         "-l", "warning", "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=here, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def main():
    mode = sys.argv[1]
    r = redis.Redis(port=PORT)
    for db in (0, 1, 2):
        redis.Redis(port=PORT, db=db).flushdb()
    results = redis.Redis(port=PORT, db=1)
    if mode == "throughput":
        n, pool, conc = int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
        t0 = time.monotonic()
        for i in range(n):
            noop.delay(i)
        submit_s = time.monotonic() - t0
        w = worker(pool, conc)
        t1 = time.monotonic()
        while results.dbsize() < n:
            time.sleep(0.05)
        work_s = time.monotonic() - t1
        w.terminate()
        w.wait()
        print(json.dumps({"mode": "throughput", "pool": pool, "concurrency": conc, "tasks": n,
                          "submit_per_s": round(n / submit_s), "work_per_s": round(n / work_s),
                          "end_to_end_per_s": round(n / (submit_s + work_s))}))
    elif mode == "latency":
        rate, seconds, pool, conc = float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], int(sys.argv[5])
        n = int(rate * seconds)
        w = worker(pool, conc)
        # The worker is consuming before the first task (its first result).
        stamped.delay(int(time.time() * 1e6)).get(timeout=60)
        _lat.delete("lat")
        start = time.monotonic()
        for i in range(n):
            due = start + i / rate
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            stamped.delay(int(time.time() * 1e6))
        while _lat.llen("lat") < n:
            time.sleep(0.02)
        lat = sorted(int(x) for x in _lat.lrange("lat", 0, -1))
        w.terminate()
        w.wait()
        print(json.dumps({"mode": "latency", "pool": pool, "tasks": n, "rate": rate,
                          "p50_ms": lat[len(lat) // 2] / 1000, "p99_ms": lat[int(len(lat) * 0.99)] / 1000}))


if __name__ == "__main__":
    main()
