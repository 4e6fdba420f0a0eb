#!/usr/bin/env bash
# The task service beside Celery 5 (Redis broker and result backend), in
# one run, on this machine:
#
#   client/benches/tasks/run.sh [TASKS]      (default 20000; ~5 min)
#
# dsf: the local cluster of scripts/cluster (3 app servers, a balancer, a
# collector, MariaDB), started if it is not running; the SDK worker
# (`task_bench`, 8 threads, no-op handler in process) works TASKS no-op
# tasks submitted first, with claims of 10 and then of 50 (each claim's
# outcomes reported in one `task.finish`). Celery: one redis-server (no
# persistence, its default on Debian is snapshots), a worker of 8 (prefork,
# then threads), task_acks_late, Celery's default prefetch of 4 a process
# (CELERY_PREFETCH=50 measured no faster). Both: submit-to-start latency at 100
# tasks/s for 10 s with the workers waiting first.
#
# Needs redis-server (Debian) and celery[redis] (pip); installs them as root.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
cd "$ROOT"
N=${1:-20000}
HERE=$ROOT/client/benches/tasks

command -v redis-server >/dev/null || { [ "$(id -u)" -eq 0 ] && apt-get install -y -qq redis-server >/dev/null; }
python3 -c 'import celery, redis' 2>/dev/null || pip install -q 'celery[redis]==5.*'

cargo build --release -q -p dsf-client --example task_bench
scripts/cluster status >/dev/null 2>&1 || scripts/cluster up >/dev/null
BENCH="$ROOT/target/release/examples/task_bench"
ARGS=(--lb 127.0.0.1:6300 --app cli --secret-file "$ROOT/.dsf/app.secret")

redis-server --port 26379 --save '' --appendonly no --daemonize yes >/dev/null
trap 'redis-cli -p 26379 shutdown nosave >/dev/null 2>&1 || true' EXIT
for _ in $(seq 1 50); do redis-cli -p 26379 ping >/dev/null 2>&1 && break; sleep 0.1; done

echo "# $(date -u '+%F %T') UTC, $(nproc) cores, $N tasks; celery $(python3 -c 'import celery; print(celery.__version__)'), $(redis-server --version | awk '{print $3}')"
echo "dsf claims 10:  $("$BENCH" throughput "${ARGS[@]}" --tasks "$N" --threads 8 --batch 10)"
echo "dsf claims 50:  $("$BENCH" throughput "${ARGS[@]}" --tasks "$N" --threads 8 --batch 50)"
echo "celery prefork: $(cd "$HERE" && python3 celery_bench.py throughput "$N" prefork 8)"
echo "celery threads: $(cd "$HERE" && python3 celery_bench.py throughput "$N" threads 8)"
echo "dsf:            $("$BENCH" latency "${ARGS[@]}" --rate 100 --seconds 10 --threads 8)"
echo "celery prefork: $(cd "$HERE" && python3 celery_bench.py latency 100 10 prefork 8)"
echo "celery threads: $(cd "$HERE" && python3 celery_bench.py latency 100 10 threads 8)"
