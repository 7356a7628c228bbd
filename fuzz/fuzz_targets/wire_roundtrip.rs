//! A payload the hub accepts is stored as the JSON `serde_json` writes for it and read back
//! from the store for the REST API (records that no longer decode are skipped there). So
//! whatever `csb_wire::decode` accepts must re-encode to JSON that decodes again, to the same
//! value.
//!
//! f64 fields (telemetry metrics, a rule event's `value`) are left out of the equality check:
//! serde_json (without its `float_roundtrip` feature) may parse a long decimal 1 ULP away from
//! the correctly rounded value, so they can drift by 1 ULP through one re-encode. f32 fields
//! (boxes, scores, fps) have no such excuse.
#![no_main]

use csb_wire::{decode, Ack, DeviceStatus, Event, Telemetry, Validate};
use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Serialize};

fn round_trip<T>(data: &[u8], what: &str, comparable: fn(T) -> T)
where
    T: DeserializeOwned + Serialize + Validate + PartialEq + std::fmt::Debug,
{
    let Ok(v) = decode::<T>(data) else { return };
    let json = serde_json::to_vec(&v)
        .unwrap_or_else(|e| panic!("accepted {what} does not serialise: {e}\n{v:?}"));
    let back = decode::<T>(&json).unwrap_or_else(|e| {
        panic!(
            "accepted {what} re-encodes to JSON that decode refuses: {e}\nre-encoded: {}",
            String::from_utf8_lossy(&json)
        )
    });
    assert_eq!(
        comparable(back),
        comparable(v),
        "accepted {what} changes when re-encoded\nre-encoded: {}",
        String::from_utf8_lossy(&json)
    );
}

fuzz_target!(|data: &[u8]| {
    round_trip::<Event>(data, "event", |mut e| {
        if let Some(r) = &mut e.rule {
            r.value = r.value.map(|_| 0.0);
        }
        e
    });
    round_trip::<Telemetry>(data, "telemetry", |mut t| {
        t.metrics.values_mut().for_each(|m| *m = 0.0);
        t
    });
    round_trip::<DeviceStatus>(data, "status", |s| s);
    round_trip::<Ack>(data, "ack", |a| a);
});
