//! When and how patiently to try again: the retry policy of the original
//! service's build configs (`max_retries`, `backoff_strategy`, `base_delay`,
//! `max_delay`, `retry_on`), and the notice given for each retry so that the
//! build's logs and status can show every attempt and its cause.

use std::time::Duration;

/// Why a failure may pass if tried again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum RetryCause {
    /// The connection failed (refused, reset, timed out, cut off) or the
    /// registry answered 500, 502, 503 or 504.
    #[serde(rename = "NETWORK_ERROR")]
    Network,
    /// The registry answered 429 Too Many Requests.
    #[serde(rename = "REGISTRY_RATE_LIMIT")]
    RateLimit,
    /// The build machine ran short for a moment (no space left, out of memory).
    #[serde(rename = "TEMPORARY_RESOURCE_ERROR")]
    TemporaryResource,
}

impl RetryCause {
    pub const ALL: [RetryCause; 3] = [
        RetryCause::Network,
        RetryCause::TemporaryResource,
        RetryCause::RateLimit,
    ];

    /// The name the build configs use.
    pub fn name(self) -> &'static str {
        match self {
            RetryCause::Network => "NETWORK_ERROR",
            RetryCause::RateLimit => "REGISTRY_RATE_LIMIT",
            RetryCause::TemporaryResource => "TEMPORARY_RESOURCE_ERROR",
        }
    }

    pub fn parse(name: &str) -> Option<RetryCause> {
        RetryCause::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// How the wait grows from one attempt to the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backoff {
    /// base, 2 base, 4 base, ...
    Exponential,
    /// base, 2 base, 3 base, ...
    Linear,
    /// base every time.
    Fixed,
}

impl Backoff {
    pub fn name(self) -> &'static str {
        match self {
            Backoff::Exponential => "exponential",
            Backoff::Linear => "linear",
            Backoff::Fixed => "fixed",
        }
    }

    pub fn parse(name: &str) -> Option<Backoff> {
        [Backoff::Exponential, Backoff::Linear, Backoff::Fixed]
            .into_iter()
            .find(|b| b.name() == name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Tries after the first.
    pub max_retries: u32,
    pub backoff: Backoff,
    /// In whole milliseconds when serialised, as every duration here.
    #[serde(with = "millis")]
    pub base_delay: Duration,
    #[serde(with = "millis")]
    pub max_delay: Duration,
    /// Failures of other causes are final at once.
    pub retry_on: Vec<RetryCause>,
}

impl Default for RetryPolicy {
    /// What `builderd build` does unless told otherwise.
    fn default() -> Self {
        RetryPolicy {
            max_retries: 4,
            backoff: Backoff::Exponential,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            retry_on: vec![RetryCause::Network, RetryCause::RateLimit],
        }
    }
}

/// The longest a server's Retry-After is waited for.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// The most retries a policy may ask for: each is a request to someone
/// else's server and a row in the build's record.
pub const MAX_RETRIES: u32 = 10;
/// The shortest and longest wait a policy may set.
pub const MIN_DELAY: Duration = Duration::from_millis(100);
pub const MAX_DELAY: Duration = Duration::from_secs(3600);

impl RetryPolicy {
    /// Is the policy within the bounds: at most `MAX_RETRIES`, waits
    /// between `MIN_DELAY` and `MAX_DELAY`? Names the field and its bound
    /// when not.
    pub fn check(&self) -> Result<(), String> {
        if self.max_retries > MAX_RETRIES {
            return Err(format!(
                "max_retries is {}, more than the {MAX_RETRIES} allowed",
                self.max_retries
            ));
        }
        for (name, d) in [
            ("base_delay", self.base_delay),
            ("max_delay", self.max_delay),
        ] {
            if !(MIN_DELAY..=MAX_DELAY).contains(&d) {
                return Err(format!(
                    "{name} is {}, outside the allowed 100ms to 1h",
                    humanize(d)
                ));
            }
        }
        Ok(())
    }

    pub fn retries(&self, cause: RetryCause) -> bool {
        self.retry_on.contains(&cause)
    }

    /// The wait before retry number `retry` (1 for the first), with up to a
    /// quarter taken off at random so that parallel requests do not retry in
    /// step; never more than `max_delay`, unless the server asked for longer
    /// with Retry-After.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let n = retry.max(1);
        let grown = match self.backoff {
            Backoff::Exponential => self.base_delay.saturating_mul(1 << (n - 1).min(30)),
            Backoff::Linear => self.base_delay.saturating_mul(n),
            Backoff::Fixed => self.base_delay,
        }
        .min(self.max_delay);
        let jittered = grown.mul_f64(1.0 - 0.25 * random_fraction());
        match retry_after {
            Some(asked) => jittered.max(asked.min(MAX_RETRY_AFTER)),
            None => jittered,
        }
    }
}

/// Durations as whole milliseconds.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// "1.5s", "250ms": a duration as the configs write it.
fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// A number in [0, 1) that differs from call to call (for jitter only).
fn random_fraction() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// One retry, as it is about to wait.
#[derive(Clone, Debug)]
pub struct RetryNotice {
    pub cause: RetryCause,
    /// The attempt that failed (1 for the first try).
    pub attempt: u32,
    /// Attempts the policy allows in all.
    pub attempts: u32,
    pub delay: Duration,
    /// What failed and how: "registry:5000: blob sha256:…: 503 Service Unavailable".
    pub message: String,
}

impl std::fmt::Display for RetryNotice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}; retrying in {:.1} s (attempt {}/{}, {})",
            self.message,
            self.delay.as_secs_f64(),
            self.attempt + 1,
            self.attempts,
            self.cause.name()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(backoff: Backoff) -> RetryPolicy {
        RetryPolicy {
            max_retries: 5,
            backoff,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(5),
            retry_on: vec![RetryCause::Network],
        }
    }

    #[test]
    fn delays_grow_as_the_strategy_says_and_stay_under_the_cap() {
        let within = |d: Duration, full: f64| {
            let s = d.as_secs_f64();
            assert!(
                s <= full && s >= full * 0.75,
                "{s} not in [{}, {full}]",
                full * 0.75
            );
        };
        let e = policy(Backoff::Exponential);
        for (retry, full) in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (40, 5.0)] {
            within(e.delay(retry, None), full);
        }
        let l = policy(Backoff::Linear);
        for (retry, full) in [(1, 1.0), (2, 2.0), (3, 3.0), (9, 5.0)] {
            within(l.delay(retry, None), full);
        }
        within(policy(Backoff::Fixed).delay(7, None), 1.0);
        // Retry-After wins when it asks for longer.
        assert_eq!(
            e.delay(1, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert!(e.retries(RetryCause::Network) && !e.retries(RetryCause::RateLimit));
    }

    #[test]
    fn policies_are_bounded() {
        assert!(RetryPolicy::default().check().is_ok());
        let mut p = RetryPolicy {
            max_retries: 11,
            ..RetryPolicy::default()
        };
        assert!(p.check().unwrap_err().contains("max_retries is 11"));
        p.max_retries = 10;
        p.base_delay = Duration::ZERO;
        assert!(p.check().unwrap_err().contains("base_delay is 0ms"));
        p.base_delay = Duration::from_millis(100);
        p.max_delay = Duration::from_secs(7200);
        assert!(p.check().unwrap_err().contains("max_delay is 7200s"));
        p.max_delay = Duration::from_secs(3600);
        assert!(p.check().is_ok());
    }

    #[test]
    fn names_round_trip() {
        for c in RetryCause::ALL {
            assert_eq!(RetryCause::parse(c.name()), Some(c));
        }
        assert_eq!(Backoff::parse("linear"), Some(Backoff::Linear));
        assert_eq!(Backoff::parse("random"), None);
    }
}
