//! ULIDs in JSON without a heap string each: `ulid`'s own `Deserialize` reads every id into a
//! fresh `String` first. For an ack of 256 ids (every edge decodes every ack) that was ~40 % of
//! decoding it; for an event's one id it is lost in noise. The same input is accepted, as the
//! same ids; a wrong JSON type now says "expected a ULID string" rather than "a string".

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use ulid::Ulid;

struct One;

impl<'de> Visitor<'de> for One {
    type Value = Ulid;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a ULID string")
    }

    // serde_json hands over the string in place (borrowed from the input, or from its scratch
    // buffer when it had escapes), so nothing is allocated.
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Ulid, E> {
        Ulid::from_string(s).map_err(E::custom)
    }
}

/// `#[serde(deserialize_with = "crate::ulid_text::one")]`
pub fn one<'de, D: Deserializer<'de>>(d: D) -> Result<Ulid, D::Error> {
    d.deserialize_str(One)
}

struct Many;

impl<'de> Visitor<'de> for Many {
    type Value = Vec<Ulid>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of ULID strings")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Ulid>, A::Error> {
        // The hint comes from the input; cap it so a hostile length cannot reserve much.
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(Text(id)) = seq.next_element()? {
            out.push(id);
        }
        Ok(out)
    }
}

/// One element of [`many`].
struct Text(Ulid);

impl<'de> serde::Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        one(d).map(Text)
    }
}

/// `#[serde(deserialize_with = "crate::ulid_text::many")]`
pub fn many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Ulid>, D::Error> {
    d.deserialize_seq(Many)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    struct Probe {
        #[serde(deserialize_with = "one")]
        id: Ulid,
        #[serde(default, deserialize_with = "many")]
        ids: Vec<Ulid>,
    }

    /// The same ids, and the same verdicts, as `ulid`'s own `Deserialize`.
    #[test]
    fn agrees_with_the_ulid_crate() {
        #[derive(Debug, Deserialize)]
        struct Reference {
            id: Ulid,
            #[serde(default)]
            ids: Vec<Ulid>,
        }
        let a = Ulid::new();
        let b = Ulid::new();
        let inputs = [
            format!(r#"{{"id":"{a}","ids":["{a}","{b}"]}}"#),
            format!(r#"{{"id":"{}"}}"#, a.to_string().to_lowercase()),
            // An escaped character: serde_json unescapes into its scratch buffer.
            format!(r#"{{"id":"\u0030{}"}}"#, &a.to_string()[1..]),
            r#"{"id":"01ARZ3NDEKTSV4RRFFQ69G5FA"}"#.to_string(),
            r#"{"id":"01ARZ3NDEKTSV4RRFFQ69G5FAVX"}"#.to_string(),
            r#"{"id":"01ARZ3NDEKTSV4RRFFQ69G5FAU"}"#.to_string(),
            r#"{"id":"81ARZ3NDEKTSV4RRFFQ69G5FAV"}"#.to_string(),
            r#"{"id":5}"#.to_string(),
            format!(r#"{{"id":"{a}","ids":"{b}"}}"#),
            format!(r#"{{"id":"{a}","ids":["{b}",7]}}"#),
        ];
        for input in inputs {
            let ours = serde_json::from_str::<Probe>(&input);
            let theirs = serde_json::from_str::<Reference>(&input);
            match (&ours, &theirs) {
                (Ok(o), Ok(t)) => assert_eq!((o.id, &o.ids), (t.id, &t.ids), "{input}"),
                (Err(_), Err(_)) => {}
                _ => panic!("{input}: ours {ours:?}, ulid's {theirs:?}"),
            }
        }
        let p: Probe =
            serde_json::from_str(&format!(r#"{{"id":"{a}","ids":["{a}","{b}"]}}"#)).unwrap();
        assert_eq!((p.id, p.ids), (a, vec![a, b]));
    }

    #[test]
    fn errors_say_what_was_wrong() {
        let e = serde_json::from_str::<Probe>(r#"{"id":"01ARZ3NDEKTSV4RRFFQ69G5FA"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("length"), "{e}");
        let e = serde_json::from_str::<Probe>(r#"{"id":5}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected a ULID string"), "{e}");
    }
}
