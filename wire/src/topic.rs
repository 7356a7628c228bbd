//! MQTT topic layout: `csb/v1/{site}/{device}/{channel}`.
//!
//! One versioned prefix so a future v2 can run beside v1 on the same broker; site and device are
//! single topic levels so hubs can subscribe with `+` wildcards per channel.

use std::fmt;

use thiserror::Error;

/// Root of every topic; bump the version segment only on incompatible topic changes.
pub const PREFIX: &str = "csb/v1";

/// What a message on a device's topic carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Edge → hub: detection and rule events ([`crate::Event`]).
    Event,
    /// Edge → hub: sensor and device metrics ([`crate::Telemetry`]).
    Telemetry,
    /// Edge → hub, retained: online/offline state ([`crate::DeviceStatus`]); also the last will.
    Status,
    /// Hub → edge: the hub has stored these event ids durably.
    Ack,
    /// Hub → edge: commands.
    Cmd,
    /// Edge → hub: replies to commands.
    CmdReply,
}

impl Channel {
    pub const ALL: [Channel; 6] = [
        Channel::Event,
        Channel::Telemetry,
        Channel::Status,
        Channel::Ack,
        Channel::Cmd,
        Channel::CmdReply,
    ];

    /// The topic suffix for this channel (may span two levels, e.g. `cmd/reply`).
    pub fn suffix(self) -> &'static str {
        match self {
            Channel::Event => "event",
            Channel::Telemetry => "telemetry",
            Channel::Status => "status",
            Channel::Ack => "ack",
            Channel::Cmd => "cmd",
            Channel::CmdReply => "cmd/reply",
        }
    }

    /// Subscription filter matching this channel for every site and device.
    pub fn filter_all(self) -> String {
        format!("{PREFIX}/+/+/{}", self.suffix())
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.suffix())
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TopicError {
    #[error("topic `{topic}` does not start with `{PREFIX}/`")]
    Prefix { topic: String },
    #[error("topic `{topic}` has no site/device/channel levels after `{PREFIX}/`")]
    TooShort { topic: String },
    #[error("topic `{topic}` has unknown channel `{channel}`")]
    UnknownChannel { topic: String, channel: String },
    #[error("{what} `{value}` is not a valid topic level: {reason}")]
    BadLevel {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
}

/// A parsed device topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Topic {
    pub site: String,
    pub device: String,
    pub channel: Channel,
}

/// Checks that an identifier can be used as one topic level (and as a sled key part).
pub fn validate_level(what: &'static str, value: &str) -> Result<(), TopicError> {
    let reason = if value.is_empty() {
        Some("empty")
    } else if value.len() > 64 {
        Some("longer than 64 bytes")
    } else if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        Some("only ASCII letters, digits, '-', '_' and '.' are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(TopicError::BadLevel {
            what,
            value: value.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

impl Topic {
    pub fn new(
        site: impl Into<String>,
        device: impl Into<String>,
        channel: Channel,
    ) -> Result<Self, TopicError> {
        let (site, device) = (site.into(), device.into());
        validate_level("site", &site)?;
        validate_level("device", &device)?;
        Ok(Topic {
            site,
            device,
            channel,
        })
    }

    pub fn parse(topic: &str) -> Result<Self, TopicError> {
        TopicRef::parse(topic).map(|t| Topic {
            site: t.site.to_string(),
            device: t.device.to_string(),
            channel: t.channel,
        })
    }
}

/// A device topic parsed in place: [`Topic`] without copying its levels, for paths that read
/// every message's topic (the hub's ingest) and need its levels only while looking at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TopicRef<'a> {
    pub site: &'a str,
    pub device: &'a str,
    pub channel: Channel,
}

impl<'a> TopicRef<'a> {
    /// Accepts and refuses exactly what [`Topic::parse`] does.
    pub fn parse(topic: &'a str) -> Result<Self, TopicError> {
        let rest = topic
            .strip_prefix(PREFIX)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| TopicError::Prefix {
                topic: topic.to_string(),
            })?;
        let mut parts = rest.splitn(3, '/');
        let (Some(site), Some(device), Some(chan)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(TopicError::TooShort {
                topic: topic.to_string(),
            });
        };
        let channel = Channel::ALL
            .into_iter()
            .find(|c| c.suffix() == chan)
            .ok_or_else(|| TopicError::UnknownChannel {
                topic: topic.to_string(),
                channel: chan.to_string(),
            })?;
        validate_level("site", site)?;
        validate_level("device", device)?;
        Ok(TopicRef {
            site,
            device,
            channel,
        })
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}/{}/{}/{}",
            self.site,
            self.device,
            self.channel.suffix()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_channel() {
        for c in Channel::ALL {
            let t = Topic::new("yuexi", "gw-01", c).unwrap();
            let s = t.to_string();
            assert_eq!(Topic::parse(&s).unwrap(), t, "{s}");
        }
        assert_eq!(
            Topic::new("yuexi", "gw-01", Channel::CmdReply)
                .unwrap()
                .to_string(),
            "csb/v1/yuexi/gw-01/cmd/reply"
        );
    }

    #[test]
    fn parsing_in_place_agrees_with_owned_parsing() {
        for t in [
            "csb/v1/yuexi/gw-01/event",
            "csb/v1/yuexi/gw-01/cmd/reply",
            "csb/v1/a/b/nope",
            "csb/v1/a/event",
            "csb/v1/yu exi/gw-01/event",
            "csb/v1//gw-01/event",
            "other/v1/a/b/event",
            "",
        ] {
            let owned = Topic::parse(t);
            let borrowed = TopicRef::parse(t);
            match (&owned, &borrowed) {
                (Ok(o), Ok(b)) => {
                    assert_eq!((o.site.as_str(), o.device.as_str()), (b.site, b.device));
                    assert_eq!(o.channel, b.channel);
                }
                (Err(o), Err(b)) => assert_eq!(o, b, "{t}"),
                _ => panic!("{t}: {owned:?} vs {borrowed:?}"),
            }
        }
    }

    #[test]
    fn rejects_bad_topics() {
        assert!(matches!(
            Topic::parse("other/v1/a/b/event"),
            Err(TopicError::Prefix { .. })
        ));
        assert!(matches!(
            Topic::parse("csb/v1/a/event"),
            Err(TopicError::UnknownChannel { .. }) | Err(TopicError::TooShort { .. })
        ));
        assert!(matches!(
            Topic::parse("csb/v1/a/b/nope"),
            Err(TopicError::UnknownChannel { .. })
        ));
        assert!(matches!(
            Topic::new("a b", "x", Channel::Event),
            Err(TopicError::BadLevel { what: "site", .. })
        ));
        assert!(Topic::new("a", "+", Channel::Event).is_err());
        assert!(Topic::new("a", "#", Channel::Event).is_err());
    }

    #[test]
    fn filters_use_wildcards() {
        assert_eq!(Channel::Event.filter_all(), "csb/v1/+/+/event");
    }
}
