#!/usr/bin/env bash
# A/B of two verdict builds on the ingest load benchmark: single rounds of
# scripts/bench-ingest.sh, alternating the builds and swapping which goes first in every other
# pair (this VM drifts by tens of percent within minutes, so only alternating runs compare),
# then the medians of each build's durable req/s, ratio and p99.
#
#   scripts/ab-ingest.sh BINARY_A BINARY_B [PAIRS] [CONNECTIONS] [SECONDS]
#
# Both binaries are used as they are (nothing is built); the ceiling is built from this
# checkout once (or CEILING=PATH).
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 BINARY_A BINARY_B [PAIRS] [CONNECTIONS] [SECONDS]" >&2; exit 2; }
a=$1 b=$2 pairs=${3:-5} conns=${4:-32} secs=${5:-10}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
for bin in "$a" "$b"; do [ -x "$bin" ] || { echo "not an executable: $bin" >&2; exit 2; }; done
if [ -z "${CEILING:-}" ]; then
  cargo build --release -q -p verdict-ingress --example ceiling
  export CEILING=target/release/examples/ceiling
fi
results=$(mktemp)
trap 'rm -f "$results"' EXIT
run() { # label binary
  local out
  out=$(VERDICT=$2 scripts/bench-ingest.sh "$conns" "$secs" 1 2>&1)
  local durable ratio
  durable=$(echo "$out" | awk '$2 == "durable" {print $3, $5}')
  ratio=$(echo "$out" | awk '/ratio durable\/ceiling/ {print $NF}')
  [ -n "$durable" ] && [ -n "$ratio" ] || { echo "$out" >&2; echo "a run failed" >&2; exit 1; }
  echo "$1 $durable $ratio" | tee -a "$results"
}
echo "# label req/s p99_ms ratio"
for i in $(seq 1 "$pairs"); do
  if [ $((i % 2)) -eq 1 ]; then run A "$a"; run B "$b"; else run B "$b"; run A "$a"; fi
done
median() { sort -n | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }
for l in A B; do
  printf "%s median: %s req/s, p99 %s ms, ratio %s (%s)\n" "$l" \
    "$(awk -v l=$l '$1 == l {print $2}' "$results" | median)" \
    "$(awk -v l=$l '$1 == l {print $3}' "$results" | median)" \
    "$(awk -v l=$l '$1 == l {print $4}' "$results" | median)" \
    "$([ $l = A ] && echo "$a" || echo "$b")"
done
