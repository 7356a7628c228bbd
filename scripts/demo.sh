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

# Security on, as in production: the broker speaks MQTT over TLS only and admits only devices
# with hub-issued credentials, whose payloads must carry their signature.
# A private CA and hub certificate, made once (never overwritten).
TLS_DIR="$LOG_DIR/tls"
if [ ! -f "$TLS_DIR/hub-cert.pem" ]; then
  "$BIN/cloud-hub" tls-cert --out-dir "$TLS_DIR" --host "${MQTT_ADDR%:*}" --host localhost > /dev/null
fi
# Fresh device credentials on every run (the old secret stops working: a rotation).
DEVICE_ID=yuexi/gw-demo-01
"$BIN/cloud-hub" device remove "$DEVICE_ID" --data-dir "$DATA_DIR" > /dev/null 2>&1 || true
"$BIN/cloud-hub" device add "$DEVICE_ID" --data-dir "$DATA_DIR" --secret-out "$LOG_DIR/device.secret" > /dev/null
# Fresh tokens for the REST API and the web page on every run, one per role: a leader (viewer),
# the command center's operator, the traffic police's handler (the demo camera's no-parking zone
# routes to them), an inspector, the duty supervisor and an admin.
issue_token() { # name role [department]
  "$BIN/cloud-hub" token revoke "$1" --data-dir "$DATA_DIR" > /dev/null 2>&1 || true
  rm -f "$LOG_DIR/$1.token"
  "$BIN/cloud-hub" token add "$1" --role "$2" ${3:+--department "$3"} --data-dir "$DATA_DIR" \
    --token-out "$LOG_DIR/$1.token" > /dev/null
  cat "$LOG_DIR/$1.token"
}
TOKEN=$(issue_token demo-viewer viewer)
OPERATOR_TOKEN=$(issue_token demo-operator operator)
HANDLER_TOKEN=$(issue_token demo-police handler traffic-police)
INSPECTOR_TOKEN=$(issue_token demo-inspector inspector)
SUPERVISOR_TOKEN=$(issue_token demo-supervisor supervisor)
ADMIN_TOKEN=$(issue_token demo-admin admin)
# The shipped governance defaults, with one change so the demo shows a case within a minute:
# illegal parking registers itself after 10 s parked instead of 2 min.
GOV_DIR="$LOG_DIR/governance"
rm -rf "$GOV_DIR" && cp -r configs/governance "$GOV_DIR"
sed -i '/^id = "illegal-parking"$/,/^min_duration_s/ s/^min_duration_s = .*/min_duration_s = 10/' \
  "$GOV_DIR/categories.toml"
"$BIN/cloud-hub" check-config --governance "$GOV_DIR" > /dev/null
cat > "$LOG_DIR/hub.toml" <<TOML
governance_dir = "$GOV_DIR"
[auth]
devices = "required"
http = "required"
[mqtt_tls]
cert_file = "$TLS_DIR/hub-cert.pem"
key_file = "$TLS_DIR/hub-key.pem"
TOML

# setsid: Ctrl-C reaches only this script, which then stops the agent first and the hub last,
# so the agent's goodbye (offline status) still reaches the broker.
setsid "$BIN/cloud-hub" serve --config "$LOG_DIR/hub.toml" --mqtt-addr "$MQTT_ADDR" \
  --http-addr "$HTTP_ADDR" --data-dir "$DATA_DIR" > "$LOG_DIR/hub.out" 2> "$LOG_DIR/hub.log" &
hub_pid=$!
for _ in $(seq 1 100); do
  grep -q '^cloud-hub ready' "$LOG_DIR/hub.out" 2>/dev/null && break
  kill -0 "$hub_pid" 2>/dev/null || { cat "$LOG_DIR/hub.log" >&2; echo "[demo] hub failed to start" >&2; exit 1; }
  sleep 0.1
done
grep -q '^cloud-hub ready' "$LOG_DIR/hub.out" || { echo "[demo] hub not ready after 10 s" >&2; exit 1; }

sed "s|^broker = .*|broker = \"$MQTT_ADDR\"\nusername = \"$DEVICE_ID\"\nsecret_file = \"$LOG_DIR/device.secret\"\nca_file = \"$TLS_DIR/ca-cert.pem\"|" \
  configs/demo.toml > "$LOG_DIR/agent.toml"
sed -i -e "s|^uri = \"../.cache/media/vtest.avi\"|uri = \"$ROOT/.cache/media/vtest.avi\"|" \
       -e "s|^dir = \"../.cache/demo/outbox\"|dir = \"$LOG_DIR/outbox\"|" \
       -e "s|^url = .*|url = \"http://$HTTP_ADDR\"|" "$LOG_DIR/agent.toml"
setsid "$BIN/edge-agent" run --config "$LOG_DIR/agent.toml" 2> "$LOG_DIR/agent.log" &
agent_pid=$!

API="curl -s -H 'Authorization: Bearer $TOKEN'"
cat <<MSG

  城市超脑 City Super Brain — demo running (Ctrl-C to stop)

  Web page         http://$HTTP_ADDR/   (驾驶舱 cockpit · 孪生地图 map · 案件 cases · 家底 inventory)
                   sign in with one of these tokens; the page shows what that role may do

  Tokens           viewer      $TOKEN   (leaders: read only)
                   operator    $OPERATOR_TOKEN   (指挥中心: register, dispatch, close)
                   handler     $HANDLER_TOKEN   (traffic police: accept, report handled)
                   inspector   $INSPECTOR_TOKEN   (监督员: report, verify)
                   supervisor  $SUPERVISOR_TOKEN   (值班长: extensions, suspend, 督办)
                   admin       $ADMIN_TOKEN
                   (also in $LOG_DIR/demo-*.token)
  Every API request but /api/v1/health needs one, e.g.:
    $API http://$HTTP_ADDR/api/v1/events?limit=5

  Events (REST)    http://$HTTP_ADDR/api/v1/events
  Persons only     http://$HTTP_ADDR/api/v1/events?class=person&limit=5
  Rule events      http://$HTTP_ADDR/api/v1/events?kind=rule&limit=10
  Waterlogging     http://$HTTP_ADDR/api/v1/events?event_type=waterlogging   (simulated sensor, starts ~1 min in)
  Water level      http://$HTTP_ADDR/api/v1/telemetry?source=wl-underpass-01&limit=5
  Evidence         http://$HTTP_ADDR/api/v1/events/<event id>/snapshot   (illegal parking starts ~10 s in)
  Cases            http://$HTTP_ADDR/api/v1/cases?open=true   (the parked van's illegal-parking case, registered
                   and dispatched to the traffic police once it has stood 10 s (2 min by default); act with
                   POST /api/v1/cases/<id>/actions {"action": "accept"} as the handler, then
                   {"action": "report_handled"}: the camera looks again (AI 核查) — the van is still
                   there, so the case comes back as 返工 with a fresh snapshot)
  Open311          http://$HTTP_ADDR/open311/v2/services.json   (citizen reporting apps; POST requests.json
                   with api_key=<operator token>)
  Evaluation       http://$HTTP_ADDR/api/v1/evaluation?from=<RFC 3339>&to=<RFC 3339>
  County (sample)  http://$HTTP_ADDR/api/v1/county   (towns, roads, zones, devices)
  Health           http://$HTTP_ADDR/api/v1/health   (open: no token)
  Metrics          http://$HTTP_ADDR/metrics
  MQTT broker      mqtts://$MQTT_ADDR   TLS only; CA $TLS_DIR/ca-cert.pem
                   device $DEVICE_ID, secret in $LOG_DIR/device.secret (issued this run)
  Logs             $LOG_DIR/hub.log  $LOG_DIR/agent.log

MSG
while kill -0 "$hub_pid" 2>/dev/null && kill -0 "$agent_pid" 2>/dev/null; do sleep 1; done
echo "[demo] a process exited unexpectedly; see the logs" >&2
exit 1
