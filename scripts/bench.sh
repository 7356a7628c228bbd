#!/usr/bin/env bash
# Benchmarks, each printing ratios measured side by side in one run (no timed assertions):
#   1. `edge-agent bench` against a throw-away hub (its embedded broker receives the published
#      events): raw model inferences/s vs full pipeline frames/s for 1, 2 and 4 cameras on one
#      agent (the street footage under N camera ids), and each pipeline ÷ raw ratio.
#   2. `edge-agent bench-gating` on the parking-lot clip: share of inferences motion gating skips
#      (overall and on still stretches), detections and tracks kept, rule events kept.
#   3. `cloud-hub bench-ingest`: raw broker pass-through (K MQTT publishers → embedded broker →
#      in-process counting subscriber), straight to rumqttd and through the hub's MQTT front (what
#      the front costs), vs durable hub ingest (the same publishers → front → broker → validation
#      → record log write + fsync → acks), events/s of each and durable ÷ raw.
#   (`cloud-hub bench-fleet`, a fleet of gateway connections for minutes, is run on its own.)
# Environment: BENCH_MQTT_PORT (18830), BENCH_FRAMES (300 per camera), BENCH_CAMERAS (1,2,4),
#              BENCH_GATING_CLIP (../shared/data/video/car-detection.mp4; skipped when absent),
#              BENCH_INGEST_EVENTS (200000), BENCH_INGEST_PUBLISHERS (4),
#              BENCH_INGEST_DIR (the system temp dir; put it on the hub's disk).
# Extra arguments go to the two edge-agent commands (e.g. --threads 1).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PORT=${BENCH_MQTT_PORT:-18830}
DATA=$(mktemp -d)
./target/release/cloud-hub serve --mqtt-addr "127.0.0.1:$PORT" --http-addr 127.0.0.1:0 --data-dir "$DATA" >/dev/null 2>"$DATA.log" &
HUB=$!
stop_hub() { kill -TERM "$HUB" 2>/dev/null || true; wait "$HUB" 2>/dev/null || true; }
trap 'stop_hub; rm -rf "$DATA" "$DATA.log"' EXIT
sleep 1
echo "== pipeline throughput: raw model vs live pipeline, ${BENCH_CAMERAS:-1,2,4} cameras =="
./target/release/edge-agent bench .cache/media/vtest.avi --broker "127.0.0.1:$PORT" \
  --frames "${BENCH_FRAMES:-300}" --cameras "${BENCH_CAMERAS:-1,2,4}" "$@"
stop_hub

CLIP=${BENCH_GATING_CLIP:-../shared/data/video/car-detection.mp4}
echo
echo "== motion gating: gate on vs gate off on $CLIP =="
if [ -f "$CLIP" ]; then
  ./target/release/edge-agent bench-gating "$CLIP" "$@"
else
  echo "skipped: $CLIP not found (set BENCH_GATING_CLIP)"
fi

echo
echo "== hub ingest: raw broker pass-through vs durable ingest (store + flush + acks) =="
./target/release/cloud-hub bench-ingest --events "${BENCH_INGEST_EVENTS:-200000}" \
  --publishers "${BENCH_INGEST_PUBLISHERS:-4}" ${BENCH_INGEST_DIR:+--data-dir "$BENCH_INGEST_DIR"}

echo
echo "== edge outbox: enqueue+ack cycles/s and disk bytes per live byte (${BENCH_OUTBOX_CYCLES:-1000000} cycles) =="
./target/release/edge-agent bench-outbox --cycles "${BENCH_OUTBOX_CYCLES:-1000000}"
