#!/usr/bin/env bash
# Runs the hub and one edge agent on the street footage until Ctrl-C, then stops both cleanly.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BIN="$ROOT/target/release"
MQTT_ADDR=${MQTT_ADDR:-127.0.0.1:1883}
HTTP_ADDR=${HTTP_ADDR:-127.0.0.1:8080}
DATA_DIR=${DATA_DIR:-$ROOT/.cache/demo/hub}
LOG_DIR="$ROOT/.cache/demo"
mkdir -p "$LOG_DIR"

hub_pid="" agent_pid=""
stop() {
  # Whatever happens to our terminal or pipe (Ctrl-C also kills a `| tee`), the children must
  # still be stopped: no exit on errors here, and writes to a closed stdout are ignored.
  set +e
  trap '' PIPE
  trap - INT TERM EXIT HUP
  { echo; echo "[demo] stopping…"; } 2>/dev/null
  [ -n "$agent_pid" ] && kill -TERM "$agent_pid" 2>/dev/null || true
  [ -n "$agent_pid" ] && wait "$agent_pid" 2>/dev/null || true
  [ -n "$hub_pid" ] && kill -TERM "$hub_pid" 2>/dev/null || true
  [ -n "$hub_pid" ] && wait "$hub_pid" 2>/dev/null || true
  echo "[demo] stopped. Logs: $LOG_DIR/{hub,agent}.log" 2>/dev/null
}
# After a signal, stop and exit (not back into the watch loop below, which would report the
# stopped processes as a crash).
trap 'stop; exit 130' INT
trap 'stop; exit 143' TERM
trap 'stop; exit 129' HUP
trap stop EXIT

# setsid: Ctrl-C reaches only this script, which then stops the agent first and the hub last,
# so the agent's goodbye (offline status) still reaches the broker.
setsid "$BIN/cloud-hub" serve --mqtt-addr "$MQTT_ADDR" --http-addr "$HTTP_ADDR" --data-dir "$DATA_DIR" \
  > "$LOG_DIR/hub.out" 2> "$LOG_DIR/hub.log" &
hub_pid=$!
for _ in $(seq 1 100); do
  grep -q '^cloud-hub ready' "$LOG_DIR/hub.out" 2>/dev/null && break
  kill -0 "$hub_pid" 2>/dev/null || { cat "$LOG_DIR/hub.log" >&2; echo "[demo] hub failed to start" >&2; exit 1; }
  sleep 0.1
done
grep -q '^cloud-hub ready' "$LOG_DIR/hub.out" || { echo "[demo] hub not ready after 10 s" >&2; exit 1; }

sed "s|^broker = .*|broker = \"$MQTT_ADDR\"|" configs/demo.toml > "$LOG_DIR/agent.toml"
sed -i -e "s|^uri = \"../.cache/media/vtest.avi\"|uri = \"$ROOT/.cache/media/vtest.avi\"|" \
       -e "s|^dir = \"../.cache/demo/outbox\"|dir = \"$LOG_DIR/outbox\"|" \
       -e "s|^url = .*|url = \"http://$HTTP_ADDR\"|" "$LOG_DIR/agent.toml"
setsid "$BIN/edge-agent" run --config "$LOG_DIR/agent.toml" 2> "$LOG_DIR/agent.log" &
agent_pid=$!

cat <<MSG

  城市超脑 City Super Brain — demo running (Ctrl-C to stop)

  Events (REST)    http://$HTTP_ADDR/api/v1/events
  Persons only     http://$HTTP_ADDR/api/v1/events?class=person&limit=5
  Rule events      http://$HTTP_ADDR/api/v1/events?kind=rule&limit=10
  Waterlogging     http://$HTTP_ADDR/api/v1/events?event_type=waterlogging   (simulated sensor, starts ~1 min in)
  Water level      http://$HTTP_ADDR/api/v1/telemetry?source=wl-underpass-01&limit=5
  Evidence         http://$HTTP_ADDR/api/v1/events/<event id>/snapshot   (illegal parking starts ~10 s in)
  Health           http://$HTTP_ADDR/api/v1/health
  Metrics          http://$HTTP_ADDR/metrics
  MQTT broker      mqtt://$MQTT_ADDR      try: mosquitto_sub -h ${MQTT_ADDR%:*} -p ${MQTT_ADDR##*:} -t 'csb/#' -v
  Logs             $LOG_DIR/hub.log  $LOG_DIR/agent.log

MSG
while kill -0 "$hub_pid" 2>/dev/null && kill -0 "$agent_pid" 2>/dev/null; do sleep 1; done
echo "[demo] a process exited unexpectedly; see the logs" >&2
exit 1
