//! The multi-process end-to-end tests live in `tests/` (one binary each): real `cloud-hub` and
//! `edge-agent` processes over real MQTT and HTTP. What they use to start and drive those
//! processes (hub and agent process builders, agent config files, MQTT clients, payload
//! builders, HTTP polling) is in `csb-test-support` (`test-support/`), shared with the hub's
//! own tests and the fuzz targets; this library is empty on purpose.
