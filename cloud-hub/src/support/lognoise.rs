//! Keeps rumqttd's reports of normal client comings and goings out of the hub's log.
//!
//! rumqttd 0.20 logs every ordinary disconnect at ERROR (`router-drop`, `disconnected` with an
//! I/O error, `no-connection id N is already gone`, …). A county's gateways come and go all day,
//! so those lines would bury real faults. This layer drops exactly those messages — unless the
//! operator asked for rumqttd's debug output (`RUST_LOG=…,rumqttd=debug`) — and lets every other
//! rumqttd warning and error through. The MQTT front counts disconnects itself (`/metrics`).

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// rumqttd messages that describe a normal disconnect (matched on the start of the message).
const NORMAL: &[&str] = &[
    "router-drop",
    "connection-stop",
    "no-connection id",
    "Connection is already disconnected",
];

/// See the module docs. `show` keeps the noise (rumqttd debug logging was asked for).
#[derive(Debug, Clone, Copy)]
pub struct RumqttdNoise {
    show: bool,
}

impl RumqttdNoise {
    /// `log_filter`: the `RUST_LOG`-style directives in force; rumqttd at debug or trace keeps
    /// the noise.
    pub fn new(log_filter: &str) -> Self {
        let show = log_filter.split(',').any(|d| {
            let d = d.trim().to_ascii_lowercase();
            d.starts_with("rumqttd") && (d.ends_with("=debug") || d.ends_with("=trace"))
        });
        RumqttdNoise { show }
    }

    /// Whether an event of rumqttd's with this message and `error` field is a normal disconnect.
    pub fn is_noise(message: &str, error: &str) -> bool {
        if NORMAL.iter().any(|m| message.starts_with(m)) {
            return true;
        }
        // `disconnected` with an I/O error: the peer reset, closed or went away. Protocol
        // errors (a malformed packet) stay visible.
        message == "disconnected" && error.contains("Io(")
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    error: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        use fmt::Write as _;
        match field.name() {
            "message" => {
                let _ = write!(self.message, "{value:?}");
            }
            "error" | "reason" => {
                let _ = write!(self.error, "{value:?}");
            }
            _ => {}
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message.push_str(value),
            "error" | "reason" => self.error.push_str(value),
            _ => {}
        }
    }
}

impl<S: Subscriber> Layer<S> for RumqttdNoise {
    fn event_enabled(&self, event: &Event<'_>, _cx: Context<'_, S>) -> bool {
        let meta = event.metadata();
        if self.show || !meta.target().starts_with("rumqttd") || *meta.level() > Level::WARN {
            return true;
        }
        let mut f = Fields::default();
        event.record(&mut f);
        !Self::is_noise(&f.message, &f.error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_disconnects_are_noise_faults_are_not() {
        assert!(RumqttdNoise::is_noise("router-drop", "Send(..)"));
        assert!(RumqttdNoise::is_noise(
            "no-connection id 7 is already gone",
            ""
        ));
        assert!(RumqttdNoise::is_noise(
            "disconnected",
            "Network(Io(Kind(UnexpectedEof)))"
        ));
        assert!(!RumqttdNoise::is_noise(
            "disconnected",
            "Network(Protocol(MalformedPacket))"
        ));
        assert!(!RumqttdNoise::is_noise("Failed to read from commitlog", ""));
        assert!(!RumqttdNoise::is_noise("no space for new connection", ""));
    }

    #[test]
    fn rumqttd_debug_keeps_the_noise() {
        assert!(!RumqttdNoise::new("info,rumqttd=warn").show);
        assert!(RumqttdNoise::new("info, rumqttd=debug").show);
        assert!(RumqttdNoise::new("rumqttd::router=TRACE").show);
    }

    /// Through a real subscriber: what reaches the log.
    #[test]
    fn the_layer_drops_noise_and_keeps_the_rest() {
        use std::sync::{Arc, Mutex};
        use tracing_subscriber::layer::SubscriberExt;

        #[derive(Clone, Default)]
        struct Seen(Arc<Mutex<Vec<String>>>);
        impl<S: Subscriber> Layer<S> for Seen {
            fn on_event(&self, event: &Event<'_>, _cx: Context<'_, S>) {
                let mut f = Fields::default();
                event.record(&mut f);
                self.0.lock().unwrap().push(f.message);
            }
        }
        let seen = Seen::default();
        let subscriber = tracing_subscriber::registry()
            .with(RumqttdNoise::new("info"))
            .with(seen.clone());
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(target: "rumqttd::server::broker", error = "Send(..)", "router-drop");
            tracing::error!(target: "rumqttd::router::routing", "no-connection id 3 is already gone");
            tracing::error!(target: "rumqttd::router::routing", "Failed to read from commitlog");
            tracing::error!(target: "cloud_hub", "router-drop");
        });
        assert_eq!(
            *seen.0.lock().unwrap(),
            ["Failed to read from commitlog", "router-drop"]
        );
    }
}
