#!/usr/bin/env bash
# Hostile peers from outside, against a standalone lb-server (the same
# connection core as every server) with default limits:
#   partial  N peers each sending all but the last bytes of a 1 MiB frame:
#            the server's RSS growth (/proc/PID/status)
#   junk     N peers pipelining refused frames and never reading: how long
#            a good client's `client resolve` takes meanwhile, and how many
#            junk peers are still connected
#
#   common/benches/hostile/run.sh LB_SERVER_BIN CLIENT_BIN [PARTIAL_N=600] [JUNK_N=200]
# e.g. before/after: run it with an old build's binaries, then this one's.
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LB=$1 CLIENT=$2 PARTIAL_N=${3:-600} JUNK_N=${4:-200}
W=$(mktemp -d "${TMPDIR:-/tmp}/dsf-hostile.XXXXXX")
printf 'cli = "s3cret"\n' >"$W/keys.toml"
chmod 600 "$W/keys.toml"
ulimit -n 4096
port=$((20000 + RANDOM % 20000))
start_lb() {
    DSF_CLUSTER_SECRET=bench-cluster RUST_LOG=warn "$LB" --listen "127.0.0.1:$port" \
        --cluster-listen "127.0.0.1:$((port + 1))" --backend a=127.0.0.1:1 \
        --app-keys "$W/keys.toml" 2>>"$W/lb.log" &
    pid=$!
    for _ in $(seq 1 50); do
        (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
}
start_lb
python3 "$HERE/partial_frames.py" "$port" "$PARTIAL_N" "$pid"
kill "$pid"; wait "$pid" 2>/dev/null
port=$((port + 2))
start_lb
python3 "$HERE/junk_pipeliners.py" "$port" "$JUNK_N" "$CLIENT"
kill "$pid"; wait "$pid" 2>/dev/null
rm -rf "$W"
