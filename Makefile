# The two commands a newcomer needs: `make demo` and `make test`. Both run the idempotent setup
# first (Debian packages, ONNX Runtime, model, footage), so a fresh Debian/Ubuntu machine needs
# nothing else but Rust.

CARGO ?= cargo
# Tests and demo share one release build: one cold compile instead of two.
PROFILE_FLAGS := --release

.PHONY: setup web build demo test test-web bench lint schemas openapi schemathesis fuzz clean-data

setup:
	@bash scripts/setup.sh

# The web page (cloud-hub/web: Vue + ECharts, Vite) into cloud-hub/web/dist, which the hub embeds:
# built before the hub. See scripts/web.sh.
web: setup
	@bash scripts/web.sh

build: setup web
	$(CARGO) build $(PROFILE_FLAGS) --workspace --bins

demo: build
	@bash scripts/demo.sh

test: build
	$(CARGO) test $(PROFILE_FLAGS) --workspace
	@$(MAKE) --no-print-directory test-web

# The page in Debian's Chromium (node --test + playwright-core) against a real hub fed by a real
# edge agent on the street footage; screenshots in cloud-hub/web/test-artifacts/.
test-web: build
	cd cloud-hub/web && CSB_BIN_DIR=$(CURDIR)/target/release CSB_WEB_EMBEDDED=1 npm test

# Raw model vs full pipeline speed for 1, 2 and 4 cameras, against a real hub's broker started
# for the purpose; then motion gating on vs off on the parking-lot clip; then hub ingest, raw
# broker vs durable (store + acks). See scripts/bench.sh.
bench: build
	@bash scripts/bench.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy $(PROFILE_FLAGS) --workspace --all-targets -- -D warnings

# Regenerate schemas/*.json from the wire types.
schemas:
	UPDATE_SCHEMAS=1 $(CARGO) test -p csb-wire committed_schemas_match_types

# Regenerate docs/openapi.json from the code (the HTTP API's OpenAPI 3.1 document; a test fails
# while the committed one is stale).
openapi:
	$(CARGO) run $(PROFILE_FLAGS) -q -p cloud-hub -- openapi --out docs/openapi.json

# Schemathesis against a real hub process (county model, some data), every operation, auth off
# and on. See scripts/schemathesis.sh.
schemathesis: build
	@bash scripts/schemathesis.sh

# cargo-fuzz targets for payloads, topics, the MQTT front's stream reading and both config files,
# FUZZ_SECONDS each (nightly; installs cargo-fuzz if missing). Fails naming the target and crash
# input. See scripts/fuzz.sh.
FUZZ_SECONDS ?= 20
fuzz: setup
	@bash scripts/fuzz.sh $(FUZZ_SECONDS)

clean-data:
	rm -rf .cache/demo
