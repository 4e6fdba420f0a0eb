#!/usr/bin/env bash
# The app-server benchmark (sys.ping vs Redis PING, gate.check through the
# cluster vs the raw mysql crate) now lives in scripts/bench; this runs
# those two sections of it. Knobs: DUR (seconds per gate.check run),
# WORKERS (app-server workers); see scripts/bench --help.
exec "$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/scripts/bench" ping gate "$@"
