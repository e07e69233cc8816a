#!/usr/bin/env bash
# Latency from a webhook's 200 to the sink receiving the decision, at a fixed rate.
# verdict-deliverybench starts its own sink and `verdict serve` (policy config/policies/kyc.toml,
# a temporary log), sends signed SEON session_finished deliveries open-loop (each a new session)
# and prints percentiles of (sink receipt - 200 received), plus the webhook's own latency.
#
#   scripts/bench-delivery.sh [RATE] [SECONDS] [ROUNDS]
set -euo pipefail
rate=${1:-1000}
secs=${2:-20}
rounds=${3:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --release -q -p verdict -p verdict-loadgen
for i in $(seq 1 "$rounds"); do
  echo "round $i: $rate/s for ${secs}s"
  target/release/verdict-deliverybench --verdict target/release/verdict \
    --policy config/policies/kyc.toml --rate "$rate" --duration "$secs"
done
