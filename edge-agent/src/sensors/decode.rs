//! One sensor message (JSON) → one reading, through the sensor's field mapping. Field devices
//! send what their vendor chose, so every failure names the sensor, topic and field.

use serde_json::Value;

use super::config::{to_pointer, SensorConfig};

/// Biggest sensor message read; a field device never needs more, a broken one might send more.
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// Readings timestamped further in the future than this are not trusted (device clock).
const MAX_FUTURE_MS: i64 = 5 * 60 * 1000;
/// ... or older than this.
const MAX_PAST_MS: i64 = 7 * 24 * 3600 * 1000;

/// Values of one sensor at one time.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Index of the sensor in the agent's enabled sensors.
    pub sensor: usize,
    pub ts_ms: i64,
    /// (metric, value), finite values only.
    pub values: Vec<(String, f64)>,
}

/// What became of one message.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// None when no mapped field could be read.
    pub reading: Option<Reading>,
    /// Problems, each naming the field; a partial reading keeps its good fields.
    pub problems: Vec<String>,
}

/// Reads `payload` (arrived on `topic` at `now_ms`) as sensor `idx` with config `cfg`.
pub fn decode(idx: usize, cfg: &SensorConfig, topic: &str, payload: &[u8], now_ms: i64) -> Decoded {
    let fail = |p: String| Decoded {
        reading: None,
        problems: vec![p],
    };
    if payload.len() > MAX_PAYLOAD {
        return fail(format!(
            "sensor `{}`: message on `{topic}` is {} bytes, more than {MAX_PAYLOAD}",
            cfg.id,
            payload.len()
        ));
    }
    let doc: Value = match serde_json::from_slice(payload) {
        Ok(v) => v,
        Err(e) => {
            return fail(format!(
                "sensor `{}`: message on `{topic}` is not JSON: {e}",
                cfg.id
            ))
        }
    };
    let mut problems = Vec::new();
    let mut values = Vec::new();
    for (metric, field) in &cfg.fields {
        let pointer = field.pointer();
        match doc.pointer(&pointer).map(number) {
            Some(Some(raw)) => {
                let (scale, offset) = field.linear();
                let v = raw * scale + offset;
                if v.is_finite() {
                    values.push((metric.clone(), v));
                } else {
                    problems.push(format!(
                        "sensor `{}`: field `{}` ({metric}) is not a finite number",
                        cfg.id,
                        field.path()
                    ));
                }
            }
            Some(None) => problems.push(format!(
                "sensor `{}`: field `{}` ({metric}) on `{topic}` is not a number: {}",
                cfg.id,
                field.path(),
                short(doc.pointer(&pointer).unwrap_or(&Value::Null))
            )),
            None => problems.push(format!(
                "sensor `{}`: field `{}` ({metric}) missing from the message on `{topic}`",
                cfg.id,
                field.path()
            )),
        }
    }
    let mut ts_ms = now_ms;
    if let Some(f) = &cfg.ts_field {
        match doc.pointer(&to_pointer(f)).and_then(number) {
            Some(t) if t.is_finite() => {
                // Unix seconds are < 1e11 until the year 5138; milliseconds are above.
                let ms = if t.abs() < 1e11 { t * 1000.0 } else { t } as i64;
                if (now_ms - MAX_PAST_MS..=now_ms + MAX_FUTURE_MS).contains(&ms) {
                    ts_ms = ms;
                } else {
                    problems.push(format!(
                        "sensor `{}`: time field `{f}` = {t} is not within 7 days before to 5 min \
                         after the gateway clock; arrival time used",
                        cfg.id
                    ));
                }
            }
            _ => problems.push(format!(
                "sensor `{}`: time field `{f}` missing or not a Unix time; arrival time used",
                cfg.id
            )),
        }
    }
    Decoded {
        reading: (!values.is_empty()).then_some(Reading {
            sensor: idx,
            ts_ms,
            values,
        }),
        problems,
    }
}

/// Numbers, numeric strings (`"12.5"`, common in vendor payloads) and booleans (as 1/0).
fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        _ => None,
    }
}

/// A value for an error message, cut short.
fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 40 {
        let cut = (0..=40).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
        format!("{}…", &s[..cut])
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_790_000_000_000;

    fn cfg() -> SensorConfig {
        toml::from_str(
            r#"
id = "wl-07"
kind = "mqtt"
topic = "lora/+/up"
ts_field = "ts"
fields = { water_level_cm = "data.level", battery_v = { path = "/bat_mv", scale = 0.001 } }
"#,
        )
        .unwrap()
    }

    #[test]
    fn maps_and_scales_fields() {
        let d = decode(
            3,
            &cfg(),
            "lora/wl-07/up",
            br#"{"ts": 1789999990, "data": {"level": "41.5"}, "bat_mv": 3612}"#,
            NOW,
        );
        assert!(d.problems.is_empty(), "{:?}", d.problems);
        let r = d.reading.unwrap();
        assert_eq!(r.sensor, 3);
        assert_eq!(r.ts_ms, 1_789_999_990_000, "seconds become ms");
        assert_eq!(r.values[0].0, "battery_v");
        assert!((r.values[0].1 - 3.612).abs() < 1e-9);
        assert_eq!(r.values[1], ("water_level_cm".into(), 41.5));
    }

    #[test]
    fn partial_and_bad_messages_say_what_is_wrong() {
        // One field missing: the other still counts, the problem names the missing one.
        let d = decode(
            0,
            &cfg(),
            "t",
            br#"{"ts": 1789999999000, "data": {"level": 12}}"#,
            NOW,
        );
        assert_eq!(d.reading.as_ref().unwrap().values.len(), 1);
        assert_eq!(d.reading.unwrap().ts_ms, 1_789_999_999_000);
        assert_eq!(d.problems.len(), 1);
        assert!(
            d.problems[0].contains("`/bat_mv` (battery_v) missing"),
            "{:?}",
            d.problems
        );

        let d = decode(
            0,
            &cfg(),
            "t",
            br#"{"data": {"level": [1]}, "bat_mv": null}"#,
            NOW,
        );
        assert!(d.reading.is_none());
        assert!(d
            .problems
            .iter()
            .any(|p| p.contains("data.level") && p.contains("not a number")));
        assert!(d.problems.iter().any(|p| p.contains("time field `ts`")));

        let d = decode(0, &cfg(), "lora/x/up", b"{not json", NOW);
        assert!(d.reading.is_none());
        assert!(d.problems[0].contains("not JSON") && d.problems[0].contains("lora/x/up"));

        let big = vec![b' '; MAX_PAYLOAD + 1];
        assert!(decode(0, &cfg(), "t", &big, NOW).problems[0].contains("bytes"));

        // A device clock in 1970 is not trusted: arrival time.
        let d = decode(
            0,
            &cfg(),
            "t",
            br#"{"ts": 5, "data": {"level": 1}, "bat_mv": 1}"#,
            NOW,
        );
        assert_eq!(d.reading.unwrap().ts_ms, NOW);
        assert!(d.problems[0].contains("arrival time"));
    }
}
