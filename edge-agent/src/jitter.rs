//! Small randomness without a crate: a xorshift generator for retry jitter and simulated
//! sensor noise, and the exponential reconnect back-off that cameras and MQTT links share.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// xorshift64* seeded through splitmix64. Not for cryptography: jitter and test signals only.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A fixed sequence per seed (simulated sensors replay the same noise).
    pub fn seeded(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        // Never zero: xorshift would stay at zero forever.
        Rng((z ^ (z >> 31)) | 1)
    }

    /// Seeded from the clock; `salt` separates generators started in the same nanosecond.
    pub fn from_clock(salt: u64) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Rng::seeded(nanos ^ salt.rotate_left(32))
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let r = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11; // 53 random bits
        r as f64 / (1u64 << 53) as f64
    }
}

/// Exponential reconnect back-off with random jitter: nominal delays `min`, 2·`min`, … capped
/// at `max`, each scaled by a random factor in [0.8, 1.2] so cameras (and gateways) that failed
/// together do not retry in lock-step.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    rng: Rng,
}

impl Backoff {
    /// `salt` separates generators started in the same nanosecond (e.g. the camera index).
    pub fn new(min: Duration, max: Duration, salt: u64) -> Self {
        Backoff {
            min,
            max: max.max(min),
            next: min,
            rng: Rng::from_clock(salt),
        }
    }

    /// The delay to wait now (jittered), doubling the nominal delay for next time.
    pub fn next_delay(&mut self) -> Duration {
        let nominal = self.next;
        self.next = (self.next * 2).min(self.max);
        nominal.mul_f64(0.8 + 0.4 * self.rng.unit())
    }

    /// The nominal delay the next failure will wait (before jitter).
    pub fn nominal(&self) -> Duration {
        self.next
    }

    /// Back to the shortest delay (the link has been healthy for a while).
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_sequences_repeat_and_stay_in_range() {
        let (mut a, mut b) = (Rng::seeded(42), Rng::seeded(42));
        for _ in 0..1000 {
            let x = a.unit();
            assert_eq!(x, b.unit());
            assert!((0.0..1.0).contains(&x));
        }
        assert_ne!(Rng::seeded(1).unit(), Rng::seeded(2).unit());
    }
}
