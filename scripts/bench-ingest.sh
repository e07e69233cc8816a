#!/usr/bin/env bash
# Durable ingest throughput and latency next to the no-storage ceiling of the same handler,
# measured in one run: both servers are started, the load generator measures the ceiling first,
# then verdict (WAL, synchronous=FULL, group commit), and prints the ratio.
#
#   scripts/bench-ingest.sh [CONNECTIONS] [SECONDS]
set -euo pipefail
conns=${1:-32}
secs=${2:-10}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --release -q -p verdict -p verdict-loadgen
cargo build --release -q -p verdict-ingress --example ceiling

work=$(mktemp -d "${BENCH_DIR:-$root/target}/bench-ingest.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
[ -n "${KEEP_LOG:-}" ] && trap "cp \$work/verdict.err $KEEP_LOG; cleanup" EXIT

secret=bench-secret
cat > "$work/verdict.toml" <<TOML
[server]
listen = "127.0.0.1:0"

[storage]
path = "$work/verdict.db"

[[sources]]
name = "seon-idv"
scheme = "seon"
secrets = ["$secret"]
TOML

wait_url() { # file prefix -> url
  for _ in $(seq 1 200); do
    if grep -q "$2" "$1" 2>/dev/null; then sed -n "s/^$2//p" "$1" | head -1; return; fi
    sleep 0.05
  done
  echo "server did not start: $(cat "$1")" >&2; exit 1
}

TOKIO_WORKER_THREADS=${SERVER_THREADS:-2} RUST_LOG=${BENCH_LOG:-warn} target/release/verdict --config "$work/verdict.toml" serve > "$work/verdict.out" 2> "$work/verdict.err" &
pids+=($!)
target/release/examples/ceiling 127.0.0.1:0 "$secret" > "$work/ceiling.out" &
pids+=($!)
durable=$(wait_url "$work/verdict.out" "verdict listening on ")
ceiling=$(wait_url "$work/ceiling.out" "ceiling listening on ")

echo "# $(nproc) cores, $conns connections, ${secs}s per target, body $(wc -c < fixtures/seon/session_finished_approved.json) bytes"
target/release/verdict-loadgen --threads "${LG_THREADS:-2}" --secret "$secret" --connections "$conns" --duration "$secs" \
  --target "ceiling=$ceiling/webhooks/seon-idv" \
  --target "durable=$durable/webhooks/seon-idv"
if [ -n "${THREAD_CPU:-}" ]; then for t in /proc/${pids[0]}/task/*; do echo "thread $(cat $t/comm) $(awk "{print (\$14+\$15)/100}" $t/stat)s"; done; fi
kill -TERM "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true
target/release/verdict --config "$work/verdict.toml" log verify
