//! Any bytes a device (or anyone else on the broker) publishes go through `csb_wire::decode`.
//! Whatever the input, every payload type must either decode or return an error: never panic,
//! never hang, never exhaust memory.
#![no_main]

use csb_wire::{decode, Ack, DeviceStatus, Event, Telemetry};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode::<Event>(data);
    let _ = decode::<Telemetry>(data);
    let _ = decode::<DeviceStatus>(data);
    let _ = decode::<Ack>(data);
});
