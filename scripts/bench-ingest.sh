#!/usr/bin/env bash
# Durable ingest throughput and latency next to the no-storage ceiling of the same handler,
# measured in one run with verdict-loadgen (crates/loadgen: every request a distinct body,
# signed, since the seon scheme deduplicates on the body): both servers are started, the
# ceiling is measured first, then verdict (WAL, synchronous=FULL, group commit), and the ratio
# is printed.
#
#   scripts/bench-ingest.sh [CONNECTIONS] [SECONDS] [ROUNDS]
#
# Knobs: CLIENT_THREADS (default 2), THREAD_CPU=1 (CPU seconds per server thread), VERDICT=PATH (a
# verdict binary built before, for A/B runs; default: the release build of this checkout),
# CEILING=PATH (the same for the ceiling example),
# BENCH_LOG=verdict_log=trace KEEP_LOG=FILE (per-batch size and commit time).
set -euo pipefail
conns=${1:-32}
secs=${2:-10}
rounds=${3:-1}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
verdict=${VERDICT:-target/release/verdict}
loadgen=${LOADGEN:-target/release/verdict-loadgen}
[ -n "${LOADGEN:-}" ] || cargo build --release -q -p verdict-loadgen
[ -n "${VERDICT:-}" ] || cargo build --release -q -p verdict
ceiling_bin=${CEILING:-target/release/examples/ceiling}
[ -n "${CEILING:-}" ] || cargo build --release -q -p verdict-ingress --example ceiling

work=$(mktemp -d "${BENCH_DIR:-$root/target}/bench-ingest.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
[ -n "${KEEP_LOG:-}" ] && trap 'cp "$work/verdict.err" "$KEEP_LOG"; cleanup' EXIT

secret=bench-secret-0123456789
BODY="$root/fixtures/seon/session_finished_approved.json"
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

RUST_LOG=${BENCH_LOG:-warn} "$verdict" --config "$work/verdict.toml" serve \
  > "$work/verdict.out" 2> "$work/verdict.err" &
pids+=($!)
"$ceiling_bin" 127.0.0.1:0 "$secret" > "$work/ceiling.out" &
pids+=($!)
durable=$(wait_url "$work/verdict.out" "verdict listening on ")
ceiling=$(wait_url "$work/ceiling.out" "ceiling listening on ")

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
disk_bytes() { awk '/^write_bytes/ {print $2}' "/proc/$1/io"; }
measure() { # url pid -> "req/s p50 p99 p999 max errors cpu_us_per_request disk_kb_per_request"
  "$loadgen" --secret "$secret" --connections "$conns" --duration 2 --warmup 0 \
    --threads "${CLIENT_THREADS:-2}" --target "w=$1/webhooks/seon-idv" > /dev/null # warm-up
  local c0 d0 result
  c0=$(cpu_ticks "$2"); d0=$(disk_bytes "$2")
  result=$("$loadgen" --secret "$secret" --connections "$conns" --duration "$secs" --warmup 0 \
    --threads "${CLIENT_THREADS:-2}" --target "m=$1/webhooks/seon-idv")
  # loadgen: target conns requests req/s p50 p99 p99.9 max errors
  echo "$result" | awk '$1 == "m"' \
    | awk -v c="$(( $(cpu_ticks "$2") - c0 ))" -v d="$(( $(disk_bytes "$2") - d0 ))" -v hz="$(getconf CLK_TCK)" \
      '{n=$3; printf "%.0f %s %s %s %s %s %.1f %.1f\n", $4, $5, $6, $7, $8, $9, c*1e6/hz/n, d/1024/n}'
}

echo "# $(nproc) cores, $conns connections, ${secs}s per target, verdict-loadgen --threads ${CLIENT_THREADS:-2}, body $(wc -c < "$BODY") bytes (+ a unique member per request)"
echo "# cpu: server CPU (user + system) per request; disk: bytes the server wrote to disk per request"
# The disk's sync latency now (it moves a lot on a shared VM, and the durable figure with it):
# 200 synced 8 KiB writes in the benchmark's directory.
sync_us=$(dd if=/dev/zero of="$work/sync-probe" bs=8k count=200 oflag=dsync 2>&1 \
  | awk '/copied/ {for (i = 1; i <= NF; i++) if ($i == "s,") print int($(i-1) * 1e6 / 200)}')
rm -f "$work/sync-probe"
echo "# disk: ${sync_us:-?} us per synced 8 KiB write (dd oflag=dsync)"
printf "%-8s %-8s %9s %8s %8s %8s %8s %7s %8s %8s\n" round target "req/s" "p50 ms" "p99 ms" "p99.9" "max ms" errors "cpu us" "disk KB"
for r in $(seq 1 "$rounds"); do
  read -r c_rate c50 c99 c999 cmax cerr ccpu cdisk < <(measure "$ceiling" "${pids[1]}")
  read -r d_rate d50 d99 d999 dmax derr dcpu ddisk < <(measure "$durable" "${pids[0]}")
  printf "%-8s %-8s %9s %8s %8s %8s %8s %7s %8s %8s\n" "$r" ceiling "$c_rate" "$c50" "$c99" "$c999" "$cmax" "$cerr" "$ccpu" "$cdisk"
  printf "%-8s %-8s %9s %8s %8s %8s %8s %7s %8s %8s\n" "$r" durable "$d_rate" "$d50" "$d99" "$d999" "$dmax" "$derr" "$dcpu" "$ddisk"
  awk -v d="$d_rate" -v c="$c_rate" -v r="$r" 'BEGIN { printf "%-8s ratio durable/ceiling: %.2f\n", r, d / c }'
done
if [ -n "${THREAD_CPU:-}" ]; then
  for t in /proc/"${pids[0]}"/task/*; do echo "thread $(cat "$t/comm") $(awk '{print ($14+$15)/100}' "$t/stat")s"; done
fi
kill -TERM "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true
"$verdict" --config "$work/verdict.toml" log verify
