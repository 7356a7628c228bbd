//! What the hub's MQTT front reads from any client before and after admission: the CONNECT
//! (`read_connect`, fed in pieces as it arrives), then the stream it splices to rumqttd
//! (`Splitter`: passed bytes, SUBSCRIBE/UNSUBSCRIBE read whole, DISCONNECT) and the broker's
//! stream back (`Boundaries`). Nothing may panic, however the bytes are cut, and the splitter
//! must account for every byte before a DISCONNECT exactly once, in order.
#![no_main]

use bytes::BytesMut;
use cloud_hub::ingest::mqtt::packet::{read_connect, read_subscription, Boundaries, Piece, Splitter};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks how the stream is cut into reads.
    let Some((&cut, data)) = data.split_first() else {
        return;
    };
    let step = usize::from(cut % 64) + 1;

    // CONNECT, as it trickles in.
    let mut buf = BytesMut::new();
    for chunk in data.chunks(step) {
        buf.extend_from_slice(chunk);
        match read_connect(&mut buf, 4096) {
            Ok(None) => continue,
            Ok(Some(_)) | Err(_) => break,
        }
    }

    // The client's stream after it.
    // A limit from the input, so packets over it (and the cut before them) are exercised too.
    let limit = 16 + usize::from(data.first().copied().unwrap_or(0)) * 64;
    let mut splitter = Splitter::with_limit(limit);
    let mut pieces = Vec::new();
    let mut seen = Vec::with_capacity(data.len());
    'stream: for chunk in data.chunks(step) {
        if splitter.split(chunk, &mut pieces).is_err() {
            break;
        }
        for p in &pieces {
            match p {
                Piece::Pass(r) => seen.extend_from_slice(&chunk[r.clone()]),
                Piece::Inspect(packet) => {
                    let _ = read_subscription(packet);
                    seen.extend_from_slice(packet);
                }
                Piece::Disconnect => {
                    assert_eq!(data[seen.len()] >> 4, 14, "DISCONNECT where none starts");
                    break 'stream;
                }
                Piece::Oversized(n) => {
                    assert!(*n > limit, "{n} bytes reported over a limit of {limit}");
                    break 'stream;
                }
            }
        }
    }
    assert_eq!(&data[..seen.len()], &seen[..], "bytes lost, repeated or reordered");

    // The broker's stream to a client.
    let mut b = Boundaries::default();
    for chunk in data.chunks(step) {
        if b.feed(chunk).is_err() {
            break;
        }
    }
});
