//! MQTT topics come from the broker (any client can publish anywhere the broker allows).
//! `Topic::parse` must never panic; a topic it accepts must be canonical: `Display` gives back
//! the very same string, which parses to the same `Topic`.
#![no_main]

use csb_wire::Topic;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // MQTT topic names are UTF-8 strings; the client library hands us `String`s.
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(t) = Topic::parse(s) else { return };
    let shown = t.to_string();
    assert_eq!(shown, s, "accepted topic is not canonical");
    let again = Topic::parse(&shown).expect("Display output of a parsed topic must parse");
    assert_eq!(again, t, "Topic -> Display -> parse changed it");
    // The same levels through the checked constructor.
    let built = Topic::new(t.site.clone(), t.device.clone(), t.channel)
        .expect("levels of a parsed topic must pass Topic::new");
    assert_eq!(built, t);
});
