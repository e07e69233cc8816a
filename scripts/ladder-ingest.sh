#!/usr/bin/env bash
# Where the durable ingest figure goes: the load benchmark (scripts/bench-ingest.sh) on a
# throwaway build of this checkout with bench/ladder.patch applied, whose environment switches
# take one part of the durable path away at a time. Single rounds, the variants alternating
# (this VM drifts by tens of percent within minutes), then each variant's median ratio.
#
#   scripts/ladder-ingest.sh [CYCLES] [VARIANTS...]
#
# Variants (default: all but pipe): null (the writer thread answers without storing, no
# projector), off (SQLite, synchronous=OFF, no projector), normal (synchronous=NORMAL, no
# projector), noproj (the shipped FULL log, no projector), offproj (synchronous=OFF with the
# projector), full (the shipped server), pipe (synchronous=NORMAL commits, a second thread
# fdatasyncs the WAL before the replies). Only `full` and `noproj` are durable; the others
# are bounds, not configurations.
#
# The patched build goes to target/ladder (its own target directory: a full build, several
# minutes, once); the checkout's own build is not touched. The patch was made against
# crates/log/src/writer.rs and crates/projections/src/runner.rs (remade 2026-12-08); when those
# change, `patch` stops here and the patch needs refreshing (see its switches in the diff).
set -euo pipefail
cycles=${1:-3}
shift || true
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(null off normal noproj offproj full)
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

src=target/ladder/src
rm -rf "$src"
mkdir -p "$src"
git archive HEAD | tar -x -C "$src"
(cd "$src" && patch -s -p1 < "$root/bench/ladder.patch")
cargo build --release -q --manifest-path "$src/Cargo.toml" --target-dir target/ladder -p verdict
bin=$root/target/ladder/release/verdict
if [ -z "${CEILING:-}" ]; then
  cargo build --release -q -p verdict-ingress --example ceiling
  export CEILING=target/release/examples/ceiling
fi

switches() {
  case $1 in
    null) echo "VERDICT_EXP_NULL=1 VERDICT_EXP_NOPROJ=1" ;;
    off) echo "VERDICT_EXP_SYNC=OFF VERDICT_EXP_NOPROJ=1" ;;
    normal) echo "VERDICT_EXP_SYNC=NORMAL VERDICT_EXP_NOPROJ=1" ;;
    noproj) echo "VERDICT_EXP_NOPROJ=1" ;;
    offproj) echo "VERDICT_EXP_SYNC=OFF" ;;
    full) echo "" ;;
    pipe) echo "VERDICT_EXP_SYNC=NORMAL VERDICT_EXP_PIPE=1" ;;
    *) echo "unknown variant: $1" >&2; exit 2 ;;
  esac
}
work=$(mktemp -d "$root/target/ladder.XXXXXX")
trap 'rm -rf "$work"' EXIT
for v in "${variants[@]}"; do
  printf '#!/bin/sh\n%s exec %s "$@"\n' "$(switches "$v")" "$bin" > "$work/$v"
  chmod +x "$work/$v"
done

echo "# variant ceiling_req/s durable_req/s durable_p99_ms ratio"
for _ in $(seq 1 "$cycles"); do
  for v in "${variants[@]}"; do
    # The null variant stores nothing, so the script's closing `log verify` has nothing to
    # check; the figures are printed before it.
    out=$(VERDICT=$work/$v scripts/bench-ingest.sh 32 10 1 2>&1 || true)
    line=$(echo "$out" | awk '$2 == "ceiling" {c=$3} $2 == "durable" {d=$3; p=$5} /ratio durable/ {r=$NF} END {if (r != "") print c, d, p, r}')
    [ -n "$line" ] || { echo "$out" >&2; echo "a run of $v failed" >&2; exit 1; }
    echo "$v $line" | tee -a "$work/results"
  done
done
median() { sort -n | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }
for v in "${variants[@]}"; do
  printf "%-8s median ratio %s, durable p99 %s ms\n" "$v" \
    "$(awk -v v="$v" '$1 == v {print $5}' "$work/results" | median)" \
    "$(awk -v v="$v" '$1 == v {print $4}' "$work/results" | median)"
done
