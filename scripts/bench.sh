#!/usr/bin/env bash
# Starts a throw-away hub (its embedded broker receives the published events) and runs
# `edge-agent bench` on the street footage. Prints raw model rate, pipeline rate and their ratio.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PORT=${BENCH_MQTT_PORT:-18830}
DATA=$(mktemp -d)
./target/release/cloud-hub serve --mqtt-addr "127.0.0.1:$PORT" --http-addr 127.0.0.1:0 --data-dir "$DATA" >/dev/null 2>"$DATA.log" &
HUB=$!
trap 'kill -TERM $HUB 2>/dev/null; wait $HUB 2>/dev/null; rm -rf "$DATA" "$DATA.log"' EXIT
sleep 1
./target/release/edge-agent bench .cache/media/vtest.avi --broker "127.0.0.1:$PORT" --frames "${BENCH_FRAMES:-300}" "$@"
