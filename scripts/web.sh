#!/usr/bin/env bash
# Builds the web page (cloud-hub/web) into cloud-hub/web/dist, which the hub embeds: `npm ci`
# from the lockfile when node_modules is missing or older than the lockfile (no install scripts
# run: .npmrc), then the Vite build when a source is newer than the last build.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WEB="$ROOT/cloud-hub/web"
say() { printf '\033[1m[web]\033[0m %s\n' "$*"; }
cd "$WEB"
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "installing the page's npm packages from package-lock.json"
  npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
fi
stamp=dist/index.html
if [ ! -f "$stamp" ] || [ -n "$(find src public index.html vite.config.ts tsconfig.json package-lock.json -newer "$stamp" -print -quit 2>/dev/null)" ]; then
  say "building the page"
  npm run --silent build
fi
