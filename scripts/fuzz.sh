#!/usr/bin/env bash
# Fuzzes everything that parses outside input (fuzz/, cargo-fuzz + libFuzzer): MQTT payloads
# (wire_payloads, wire_roundtrip), topics (topic), the MQTT front's reading of client streams
# (mqtt_front) and the agent and hub config files (agent_config, hub_config). Each target runs SECONDS (default 20), starting from its committed
# seeds in fuzz/corpus/<target>/ plus what earlier runs found (fuzz/work/<target>/, ignored by
# git). Exits non-zero if any target crashes (panic, abort, stack overflow, timeout, OOM), naming
# the target and the saved crash input (fuzz/artifacts/<target>/crash-…).
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]        (no TARGET: all of `cargo fuzz list`)
# Environment: FUZZ_SKIP="t1 t2" (targets to leave out), FUZZ_TOOLCHAIN (nightly).
# Needs the nightly toolchain; installs cargo-fuzz from crates.io if missing.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
say() { printf '\033[1m[fuzz]\033[0m %s\n' "$*"; }
die() { printf '[fuzz] ERROR: %s\n' "$*" >&2; exit 2; }

SECONDS_PER_TARGET=${1:-20}
shift || true
[[ "$SECONDS_PER_TARGET" =~ ^[0-9]+$ ]] && [ "$SECONDS_PER_TARGET" -gt 0 ] \
  || die "SECONDS must be a positive whole number, got '$SECONDS_PER_TARGET'"
TOOLCHAIN=${FUZZ_TOOLCHAIN:-nightly}

# ---------- tools ----------
command -v rustup >/dev/null || die "rustup not found (cargo-fuzz needs a nightly toolchain)"
if ! rustup run "$TOOLCHAIN" rustc --version >/dev/null 2>&1; then
  say "installing the $TOOLCHAIN toolchain"
  rustup toolchain install "$TOOLCHAIN" --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  say "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

# The code under test is safe Rust: panics, aborts, stack overflows, hangs and memory blow-ups
# are what can go wrong, and they need no sanitizer. Without one, builds and runs are faster.
FUZZ=(cargo "+$TOOLCHAIN" fuzz)
FLAGS=(--sanitizer none)

if [ "$#" -gt 0 ]; then
  TARGETS=("$@")
else
  mapfile -t TARGETS < <("${FUZZ[@]}" list)
fi
for skip in ${FUZZ_SKIP:-}; do
  for i in "${!TARGETS[@]}"; do [ "${TARGETS[$i]}" = "$skip" ] && unset 'TARGETS[i]'; done
done
TARGETS=("${TARGETS[@]}")
[ "${#TARGETS[@]}" -gt 0 ] || die "no fuzz targets to run"

say "building ${TARGETS[*]} (first build compiles the whole dependency tree: several minutes)"
t0=$(date +%s)
for t in "${TARGETS[@]}"; do "${FUZZ[@]}" build "${FLAGS[@]}" "$t"; done
say "built in $(( $(date +%s) - t0 )) s"

# ---------- run ----------
# The config targets write each input to a file (the loaders take a path): keep those on a RAM
# disk where there is one, in a directory of our own.
SCRATCH=$(mktemp -d -p "$([ -d /dev/shm ] && echo /dev/shm || echo "${TMPDIR:-/tmp}")" csb-fuzz.XXXXXX)
trap 'rm -rf "$SCRATCH"' EXIT
failed=()
for t in "${TARGETS[@]}"; do
  work="fuzz/work/$t"
  seeds="fuzz/corpus/$t"
  log="fuzz/work/$t.log"
  mkdir -p "$work" "$seeds" "fuzz/artifacts/$t"
  args=(-max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
  case "$t" in
    wire_*) args+=(-dict=fuzz/dict/json.dict) ;;
    *_config) args+=(-dict=fuzz/dict/toml.dict) ;;
  esac
  say "$t: ${SECONDS_PER_TARGET} s (seeds $seeds, log $log)"
  # New inputs go to the first directory ($work); the seeds stay as committed.
  if TMPDIR="$SCRATCH" "${FUZZ[@]}" run "${FLAGS[@]}" "$t" "$work" "$seeds" -- "${args[@]}" \
       >"$log" 2>&1; then
    grep -E '^Done [0-9]+ runs' "$log" | sed "s/^/[fuzz] $t: /" || true
  else
    failed+=("$t")
    crash=$(grep -oE 'Test unit written to [^ ]+' "$log" | tail -1 | sed 's/Test unit written to //')
    printf '\n[fuzz] CRASH in target %s\n' "$t" >&2
    grep -E -A6 "panicked at|ERROR: libFuzzer|SUMMARY: libFuzzer|stack overflow|out-of-memory" \
      "$log" | head -30 >&2 || tail -30 "$log" >&2
    if [ -n "$crash" ]; then
      printf '[fuzz] crash input: %s\n[fuzz] reproduce: cargo +%s fuzz run --sanitizer none %s %s\n\n' \
        "$crash" "$TOOLCHAIN" "$t" "$crash" >&2
    else
      printf '[fuzz] no crash input saved; full log: %s\n\n' "$log" >&2
    fi
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  printf '[fuzz] FAILED: %s (crash inputs under fuzz/artifacts/)\n' "${failed[*]}" >&2
  exit 1
fi
say "no crashes in ${TARGETS[*]}"
