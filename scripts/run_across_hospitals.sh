#!/usr/bin/env bash
# One machine, four hospitals and an aggregator as separate processes (TLS + node authentication),
# then the same protocol in process: the two final models must agree.
#   scripts/run_across_hospitals.sh [PROTOCOL] [ROUNDS]      (default: ckks-fedavg 2)
# A DP protocol (e.g. dp-distributed-ckks) charges each site's ledger in its kit (KIT/ledger/) against the budget
# of scripts/heart-federation.toml; with secure noise the two models then differ by the noise, not by the engine.
set -euo pipefail
PROTOCOL=${1:-ckks-fedavg}
ROUNDS=${2:-2}
WORK=${WORK:-$(mktemp -d /tmp/secure-fl-demo.XXXXXX)}
SFL=${SFL:-secure-fl}
here=$(cd "$(dirname "$0")" && pwd)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

$SFL provision "$here/heart-federation.toml" --out "$WORK/kits"
for s in cleveland hungary va-long-beach switzerland; do
  $SFL site approve "$WORK/kits/sites/$s" "$PROTOCOL"            # each site's data officer, once per spec
done
$SFL aggregator start "$WORK/kits/aggregator" > "$WORK/aggregator.log" 2>&1 & pids+=($!)
until grep -q "listening on" "$WORK/aggregator.log"; do sleep 1; done   # SuperLink up, sites registered
port=9100
for s in cleveland hungary va-long-beach switzerland; do
  port=$((port + 1))
  $SFL site start "$WORK/kits/sites/$s" --runtime-port $port > "$WORK/$s.log" 2>&1 & pids+=($!)
done
$SFL deploy run heart-protocols --federation "$WORK/kits/aggregator" --protocol "$PROTOCOL" --rounds "$ROUNDS" --out "$WORK/deployed"
$SFL run heart-protocols --protocol "$PROTOCOL" --rounds "$ROUNDS" --seeds 0 --out "$WORK/local" --quiet
"${PYTHON:-$(dirname "$(command -v "$SFL")")/python}" - "$WORK" "$PROTOCOL" <<'PY'
import sys, torch
work, protocol = sys.argv[1], sys.argv[2]
flat = lambda sd: torch.cat([v.reshape(-1) for v in sd.values()])
a = flat(torch.load(f"{work}/deployed/heart-protocols/{protocol}/seed0/model.pt"))  # both state_dicts (+ model.json)
b = flat(torch.load(f"{work}/local/heart-protocols/latest/{protocol}/seed0/model.pt"))
print(f"largest difference between the deployed and the in-process model: {float((a - b).abs().max()):.2e}")
PY
