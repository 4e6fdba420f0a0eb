#!/usr/bin/env bash
# gate.check and task throughput on one MariaDB and on the three-node Galera
# cluster of scripts/galera, side by side in one run, on this machine:
#
#   client/benches/galera/run.sh [SECONDS] [TASKS]    (defaults 10 and 5000; ~4 min)
#
# Each side is a whole cluster from scripts/cluster (collector, balancer,
# three app servers), kept in target/bench-galera with ports 2000 above the
# defaults, so a cluster of yours in .dsf/ is not touched; on Galera app
# server N writes through node N (DSF_CLUSTER_GALERA=1). Then:
#   client bench --op check --conns C --duration SECONDS   (C = 1 and 16)
#   task_bench throughput --tasks TASKS --threads 8 --batch 10
# `scripts/galera stop` ends the run: a Galera cluster of yours stops too.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
cd "$ROOT"
SECS=${1:-10}
TASKS=${2:-5000}
export DSF_CLUSTER_STATE=$ROOT/target/bench-galera DSF_CLUSTER_PORT_OFFSET=2000
LB=127.0.0.1:8300

cargo build --release -q -p dsf-client --bin client --example task_bench
CLIENT=$ROOT/target/release/client
BENCH=$ROOT/target/release/examples/task_bench
# gate FILE: "req/s | p99 ms | errors" of a client bench report.
gate() {
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%.0f | %.2f | %d" % (d["rps"], d["latency_ms"]["p99"], sum(d["errors"].values()) + d["unsent"]))' "$1"
}

echo "# $(date -u '+%F %T') UTC, $(nproc) cores, $(mariadbd --version 2>/dev/null | awk '{print $3}'), galera-4 $(dpkg-query -W -f='${Version}' galera-4 2>/dev/null)"
echo "| database | gate.check 1 conn req/s | p99 ms | errors | 16 conns req/s | p99 ms | errors | tasks submitted/s | worked/s |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for mode in mariadb galera; do
    scripts/cluster clean >/dev/null 2>&1 || true
    DSF_CLUSTER_GALERA=$([ "$mode" = galera ] && echo 1 || echo 0) scripts/cluster up >"$ROOT/target/bench-galera-$mode.log" 2>&1 \
        || { tail -n 20 "$ROOT/target/bench-galera-$mode.log" >&2; exit 1; }
    AUTH=(--lb "$LB" --app cli --app-secret-file "$DSF_CLUSTER_STATE/app.secret")
    row="| $mode"
    for conns in 1 16; do
        "$CLIENT" "${AUTH[@]}" bench --op check --conns "$conns" --pipeline 1 --duration "${SECS}s" \
            --keys 10000 --json >"$ROOT/target/bench-galera.json"
        row+=" | $(gate "$ROOT/target/bench-galera.json")"
    done
    out=$("$BENCH" throughput --lb "$LB" --app cli --secret-file "$DSF_CLUSTER_STATE/app.secret" \
        --tasks "$TASKS" --threads 8 --batch 10)
    row+=" | $(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print("%d | %d" % (d["submit_per_s"], d["work_per_s"]))' "$out") |"
    echo "$row"
    echo "  $mode task_bench: $out" >&2
    scripts/cluster clean >/dev/null 2>&1 || true
done
scripts/galera stop >/dev/null 2>&1 || true
