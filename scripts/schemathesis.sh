#!/usr/bin/env bash
# Schemathesis against a real hub: the release `cloud-hub serve` with the county model
# (configs/county/) and some data published over MQTT (events with evidence, telemetry, device
# status, a refused message), tested from its own /api/v1/openapi.json, every operation, twice:
#   1. auth off (`[auth] http = "off"`, the default);
#   2. `[auth] http = "required"` with a viewer token, plus schemathesis's `ignored_auth` check
#      (each secured operation without or with a bad credential must answer 401/403).
# Checks: no 5xx, and every response as documented (status code, content type, headers, body
# schema). In run 2 evidence uploads are signed as a device with credentials
# (scripts/schemathesis_hooks.py), so the signed upload path is tested as well as its refusals.
# A fixed seed, no example database and a fixed example count make runs repeatable; a failure
# names the operation (`GET /api/v1/events`) and prints a curl command reproducing it.
# ST_CHECKS=all adds schemathesis's stricter checks (schema-valid data accepted, invalid data
# refused: they flag cross-parameter rules such as from < to and ids that do not exist) for
# exploring. `GET /api/v1/twin/stream`, `GET /api/v1/cases/stream` and `GET /api/v1/live` are left
# out: their 200 is an endless event stream (cloud-hub/tests/{twin,case_notify,web}.rs and the
# browser tests drive them).
#
# Schemathesis is installed from PyPI, pinned, into a virtualenv under target/ (not
# system-wide). Needs: target/release/cloud-hub (make build), python3 with venv, and
# mosquitto_pub (scripts/setup.sh installs mosquitto-clients).
# Environment: ST_EXAMPLES (max examples per operation, default 250), ST_SEED (default 20260921),
# ST_WORKERS (default 1: with 2, hypothesis's lambda-source cache, shared by the workers' threads,
# failed a run at random), ST_CHECKS, KEEP=1 keeps target/schemathesis/ (data, logs, reports).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
ST_VERSION=4.32.5
VENV="$ROOT/target/schemathesis-venv"
BIN="$ROOT/target/release/cloud-hub"
WORK="$ROOT/target/schemathesis"
EXAMPLES=${ST_EXAMPLES:-250}
SEED=${ST_SEED:-20260921}
WORKERS=${ST_WORKERS:-1}
say() { printf '\033[1m[schemathesis]\033[0m %s\n' "$*"; }
die() { printf '[schemathesis] ERROR: %s\n' "$*" >&2; exit 1; }

[ -x "$BIN" ] || die "$BIN is missing: build it first (make build)"
command -v mosquitto_pub >/dev/null || die "mosquitto_pub is missing (scripts/setup.sh installs mosquitto-clients)"
command -v curl >/dev/null || die "curl is missing"

if ! "$VENV/bin/st" --version 2>/dev/null | grep -qx "st, version $ST_VERSION"; then
  say "installing schemathesis $ST_VERSION into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$ST_VERSION"
fi

rm -rf "$WORK"
mkdir -p "$WORK"
DATA="$WORK/data"

hub_pid=""
stop_hub() {
  if [ -n "$hub_pid" ]; then
    kill -TERM "$hub_pid" 2>/dev/null || true
    wait "$hub_pid" 2>/dev/null || true
    hub_pid=""
  fi
}
cleanup() {
  stop_hub
  [ -n "${KEEP:-}" ] || rm -rf "$DATA"
}
trap cleanup EXIT

# Starts the hub with config $1; sets HTTP and MQTT_HOST/MQTT_PORT from its ready line.
start_hub() {
  local config=$1 log=$2
  setsid "$BIN" serve --config "$config" --data-dir "$DATA" --county configs/county \
    --http-addr 127.0.0.1:0 --mqtt-addr 127.0.0.1:0 > "$WORK/ready.txt" 2> "$log" &
  hub_pid=$!
  for _ in $(seq 1 200); do
    grep -q '^cloud-hub ready' "$WORK/ready.txt" 2>/dev/null && break
    kill -0 "$hub_pid" 2>/dev/null || { cat "$log" >&2; die "the hub exited at start"; }
    sleep 0.05
  done
  local line
  line=$(grep '^cloud-hub ready' "$WORK/ready.txt") || die "the hub was not ready after 10 s"
  HTTP=$(sed -E 's/.* http=([^ ]+).*/\1/' <<<"$line")
  local mqtt
  mqtt=$(sed -E 's/.* mqtt=([^ ]+).*/\1/' <<<"$line")
  MQTT_HOST=${mqtt%:*}
  MQTT_PORT=${mqtt##*:}
}

# Events (detection, rule with evidence, sensor rule), telemetry, statuses and one refused
# message, published over MQTT as gateways do, and the rule event's evidence JPEG uploaded.
seed() {
  python3 - "$MQTT_HOST" "$MQTT_PORT" "$HTTP" <<'PY'
import json, random, subprocess, sys, time, urllib.request

host, port, http = sys.argv[1], sys.argv[2], sys.argv[3]
rng = random.Random(7)
B32 = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

def ulid(ms):
    n = (ms << 80) | rng.getrandbits(80)
    return "".join(B32[(n >> (5 * i)) & 31] for i in reversed(range(26)))

def pub(site, device, channel, payload):
    body = payload if isinstance(payload, str) else json.dumps(payload)
    subprocess.run(["mosquitto_pub", "-h", host, "-p", port, "-q", "1", "-i",
                    f"seed-{rng.getrandbits(32):08x}", "-t", f"csb/v1/{site}/{device}/{channel}",
                    "-m", body], check=True)

now = int(time.time() * 1000)
frame = {"seq": 85, "pts_ms": 8400, "width": 768, "height": 576}
model = {"name": "yolox_nano", "sha256": "695e750a5d57"}
snap = ulid(now - 50_000)
cams = [("gw-demo-01", "cam-tiantang-01"), ("gw-demo-01", "cam-tiantang-02"),
        ("gw-tiantang-02", "cam-market-01")]
for i in range(12):
    dev, cam = cams[i % len(cams)]
    pub("yuexi", dev, "event", {
        "v": 1, "id": ulid(now - 60_000 + i * 1000), "site": "yuexi", "device": dev,
        "camera": cam, "kind": "detection", "ts_ms": now - 60_000 + i * 1000,
        "frame": frame, "model": model,
        "objects": [{"class_id": 0, "label": "person", "score": 0.86,
                     "box": {"x1": 562.1, "y1": 179.6, "x2": 596.6, "y2": 273.0}}]})
rule_id = ulid(now - 50_000)
pub("yuexi", "gw-demo-01", "event", {
    "v": 1, "id": rule_id, "site": "yuexi", "device": "gw-demo-01",
    "camera": "cam-tiantang-01", "kind": "rule", "ts_ms": now - 50_000,
    "frame": frame, "model": model,
    "objects": [{"class_id": 7, "label": "truck", "score": 0.768,
                 "box": {"x1": 650.8, "y1": 42.0, "x2": 724.2, "y2": 99.5}, "track_id": 4}],
    "rule": {"rule": "illegal-parking-north", "rule_type": "dwell",
             "event_type": "illegal_parking", "category": "0505", "phase": "start",
             "problem_id": ulid(now - 60_000), "zone": "no-parking-north", "track_ids": [4],
             "started_ms": now - 190_000, "duration_ms": 140_000, "snapshot": snap}})
pub("yuexi", "gw-demo-01", "event", {
    "v": 1, "id": ulid(now - 40_000), "site": "yuexi", "device": "gw-demo-01",
    "camera": "wl-underpass-01", "kind": "rule", "ts_ms": now - 40_000, "objects": [],
    "rule": {"rule": "waterlogging-underpass-01", "rule_type": "sensor_threshold",
             "event_type": "waterlogging", "category": "0406", "phase": "start",
             "problem_id": ulid(now - 41_000), "started_ms": now - 41_000,
             "duration_ms": 1000, "direction": "above", "value": 31.7,
             "metric": "water_level_cm"}})
for i in range(30):
    ts = now - 30 * 60_000 + i * 60_000
    pub("yuexi", "gw-demo-01", "telemetry", {
        "v": 1, "id": ulid(ts), "site": "yuexi", "device": "gw-demo-01",
        "source": "wl-underpass-01", "ts_ms": ts,
        "metrics": {"water_level_cm": 20.0 + i / 2, "water_level_cm.max": 21.0 + i / 2}})
    pub("yuexi", "gw-demo-01", "telemetry", {
        "v": 1, "id": ulid(ts + 1), "site": "yuexi", "device": "gw-demo-01",
        "source": "agent", "ts_ms": ts + 1, "metrics": {"cam-tiantang-01.fps": 10.0}})
for dev in ["gw-demo-01", "gw-tiantang-02", "gw-rogue-09"]:
    pub("yuexi", dev, "status", {
        "v": 1, "site": "yuexi", "device": dev, "ts_ms": now, "state": "online",
        "agent_version": "0.1.0",
        "cameras": [{"id": "cam-tiantang-01", "state": "running", "fps": 10.0}]})
pub("yuexi", "gw-demo-01", "event", "not json")
pub("yuexi", "gw-demo-01", "event", {"v": 2, "id": ulid(now), "site": "yuexi"})

jpeg = bytes([0xFF, 0xD8, 0xFF, 0xE0]) + bytes(range(256)) * 4 + bytes([0xFF, 0xD9])
req = urllib.request.Request(f"{http}/api/v1/snapshots/{snap}", data=jpeg, method="PUT",
                             headers={"Content-Type": "image/jpeg",
                                      "X-Csb-Device": "yuexi/gw-demo-01",
                                      "X-Csb-Event": rule_id})
with urllib.request.urlopen(req) as r:
    assert r.status in (200, 201), r.status

# Wait until ingest has stored all of it (a batch, then the acks).
deadline = time.time() + 20
while True:
    with urllib.request.urlopen(f"{http}/api/v1/health") as r:
        ingest = json.load(r)["ingest"]
    if ingest["events_accepted"] >= 14 and ingest["telemetry_accepted"] >= 60 \
            and ingest["rejected"] >= 2:
        break
    if time.time() > deadline:
        sys.exit(f"the hub did not store the seed data: {ingest}")
    time.sleep(0.2)
print(f"seeded: 14 events, 60 telemetry messages, 3 statuses, 2 refused, 1 snapshot")
PY
}

CHECKS=${ST_CHECKS:-not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance}

# One schemathesis run; $1 names it, $2 lists the checks, the rest are extra arguments.
run_st() {
  local name=$1 checks=$2
  shift 2
  say "run '$name' against $HTTP (max $EXAMPLES examples per operation, seed $SEED)"
  local start=$SECONDS
  set +e
  # From $WORK: schemathesis keeps its caches (.schemathesis/) in the working directory.
  (cd "$WORK" && "$VENV/bin/st" run "$HTTP/api/v1/openapi.json" \
    --checks "$checks" --phases examples,coverage,fuzzing \
    --max-examples "$EXAMPLES" --seed "$SEED" --generation-database none \
    --workers "$WORKERS" --request-timeout 15 \
    --exclude-path /api/v1/twin/stream \
    --exclude-path /api/v1/cases/stream \
    --exclude-path /api/v1/live \
    --no-color --report junit,ndjson --report-dir "$WORK/report-$name" \
    "$@") 2>&1 | tee "$WORK/$name.txt"
  local rc=${PIPESTATUS[0]}
  set -e
  say "run '$name': exit $rc in $((SECONDS - start)) s"
  return "$rc"
}

failed=0

# 1. Auth off.
printf '' > "$WORK/hub-off.toml"
start_hub "$WORK/hub-off.toml" "$WORK/hub-off.log"
seed
run_st auth-off "$CHECKS" || failed=1
# Schemathesis leaves the operation that serves the document out of a run loaded from it
# unless it is asked for by name.
run_st auth-off-document "$CHECKS" --include-path /api/v1/openapi.json || failed=1
stop_hub

# 2. Auth required, a viewer token; the same data. Uploads are signed as a device with
#    credentials by scripts/schemathesis_hooks.py.
"$BIN" token add schemathesis --role viewer --data-dir "$DATA" --token-out "$WORK/viewer.token" > /dev/null
"$BIN" device add yuexi/gw-schemathesis --data-dir "$DATA" --secret-out "$WORK/device.secret" > /dev/null
printf '[auth]\nhttp = "required"\n' > "$WORK/hub-auth.toml"
start_hub "$WORK/hub-auth.toml" "$WORK/hub-auth.log"
export PYTHONPATH="$ROOT/scripts${PYTHONPATH:+:$PYTHONPATH}" SCHEMATHESIS_HOOKS=schemathesis_hooks
export CSB_ST_DEVICE=yuexi/gw-schemathesis CSB_ST_DEVICE_SECRET
CSB_ST_DEVICE_SECRET=$(cat "$WORK/device.secret")
run_st auth-required "$CHECKS,ignored_auth" \
  -H "Authorization: Bearer $(cat "$WORK/viewer.token")" || failed=1
run_st auth-required-document "$CHECKS" --include-path /api/v1/openapi.json || failed=1
stop_hub

if [ "$failed" -ne 0 ]; then
  die "schemathesis found problems (above; reports in $WORK); KEEP=1 keeps the hub's data"
fi
say "both runs passed"
