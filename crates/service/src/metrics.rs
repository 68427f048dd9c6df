//! The service's Prometheus metrics, every series named `builderd_…`.
//!
//! Counters count events in this process (Prometheus takes a restart's reset
//! in its stride); the gauges (builds in each state now, queue depth, pending
//! webhook deliveries, cache and artifact bytes) are read from the store at
//! each scrape, so they are right even for what an earlier process left.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::state::State;
use crate::store::{Result, Store};
use crate::tier::Tier;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    state: &'static str,
    source_type: String,
    tier: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetryLabels {
    cause: String,
    scope: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateTierLabels {
    state: &'static str,
    tier: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// A webhook delivery attempt's outcome.
#[derive(Clone, Copy)]
pub enum Delivery {
    Delivered,
    /// Failed; tried again later.
    Failed,
    /// Failed for the last time.
    GivenUp,
}

impl Delivery {
    const ALL: [Delivery; 3] = [Delivery::Delivered, Delivery::Failed, Delivery::GivenUp];

    fn name(self) -> &'static str {
        match self {
            Delivery::Delivered => "delivered",
            Delivery::Failed => "failed",
            Delivery::GivenUp => "given_up",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    builds: Family<BuildLabels, Counter>,
    stage_seconds: Family<StageLabels, Histogram>,
    pulled_bytes: Counter,
    cache_hits: Counter,
    cache_misses: Counter,
    retries: Family<RetryLabels, Counter>,
    deliveries: Family<OutcomeLabels, Counter>,
    current: Family<StateTierLabels, Gauge>,
    queue_depth: Gauge,
    deliveries_pending: Gauge,
    cache_bytes: Family<KindLabels, Gauge>,
    artifact_bytes: Gauge,
}

/// Stage durations from 50 ms to about 14 hours.
fn stage_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 20))
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::with_prefix("builderd");
        let m = Metrics {
            builds: Family::default(),
            stage_seconds: Family::new_with_constructor(stage_histogram),
            pulled_bytes: Counter::default(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            retries: Family::default(),
            deliveries: Family::default(),
            current: Family::default(),
            queue_depth: Gauge::default(),
            deliveries_pending: Gauge::default(),
            cache_bytes: Family::default(),
            artifact_bytes: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "builds",
            "Builds that entered each state (a build requeued or retried enters QUEUED again)",
            m.builds.clone(),
        );
        registry.register_with_unit(
            "stage_duration",
            "Time builds spent in each state before the next",
            Unit::Seconds,
            m.stage_seconds.clone(),
        );
        registry.register_with_unit(
            "pulled",
            "Layer bytes downloaded from registries (cached layers are not pulled again)",
            Unit::Bytes,
            m.pulled_bytes.clone(),
        );
        registry.register(
            "cache_hits",
            "Builds completed with an artifact from the cache",
            m.cache_hits.clone(),
        );
        registry.register(
            "cache_misses",
            "Builds the cache had no artifact for, so were built",
            m.cache_misses.clone(),
        );
        registry.register(
            "retries",
            "Retries by cause, of a registry request (scope request) or of a whole build (scope build)",
            m.retries.clone(),
        );
        registry.register(
            "webhook_deliveries",
            "Webhook delivery attempts by outcome",
            m.deliveries.clone(),
        );
        registry.register(
            "builds_current",
            "Builds in each unfinished state now, by tier",
            m.current.clone(),
        );
        registry.register(
            "queue_depth",
            "Builds waiting in QUEUED",
            m.queue_depth.clone(),
        );
        registry.register(
            "webhook_deliveries_pending",
            "Webhook deliveries not yet made nor given up",
            m.deliveries_pending.clone(),
        );
        registry.register_with_unit(
            "cache",
            "Bytes the caches hold, by kind (blob, artifact)",
            Unit::Bytes,
            m.cache_bytes.clone(),
        );
        registry.register_with_unit(
            "artifacts",
            "Bytes of the artifacts builds keep, over all tenants",
            Unit::Bytes,
            m.artifact_bytes.clone(),
        );
        // Counters with a known set of labels start at zero, so a scrape
        // before the first delivery still shows them (OpenMetrics).
        for d in Delivery::ALL {
            let _ = m
                .deliveries
                .get_or_create(&OutcomeLabels { outcome: d.name() });
        }
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Counts what the store tells of a build's move (the metrics observe
    /// the store; the store knows nothing of them).
    pub fn observe(&self, t: &crate::store::Transition) {
        self.transition(t.from, t.to, &t.source_type, &t.tier);
    }

    /// A build entered `to`, after `spent_ms` in `from` (None: it was just made).
    pub fn transition(&self, from: Option<(State, i64)>, to: State, source_type: &str, tier: &str) {
        self.builds
            .get_or_create(&BuildLabels {
                state: to.name(),
                source_type: source_type.to_string(),
                tier: tier.to_string(),
            })
            .inc();
        if let Some((from, spent_ms)) = from {
            self.stage_seconds
                .get_or_create(&StageLabels { stage: from.name() })
                .observe(spent_ms.max(0) as f64 / 1000.0);
        }
    }

    pub fn pulled(&self, bytes: u64) {
        self.pulled_bytes.inc_by(bytes);
    }

    pub fn cache_lookup(&self, hit: bool) {
        if hit {
            self.cache_hits.inc();
        } else {
            self.cache_misses.inc();
        }
    }

    pub fn retry(&self, cause: &str, scope: &str) {
        self.retries
            .get_or_create(&RetryLabels {
                cause: cause.to_string(),
                scope: scope.to_string(),
            })
            .inc();
    }

    pub fn delivery(&self, outcome: Delivery) {
        let outcome = outcome.name();
        self.deliveries
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// The OpenMetrics text, with the gauges read from `store` now.
    pub fn encode(&self, store: &Store) -> Result<String> {
        let counts = store.unfinished_counts()?;
        for state in State::unfinished() {
            for tier in Tier::ALL {
                let n = counts
                    .iter()
                    .find(|(s, t, _)| *s == state && *t == tier)
                    .map_or(0, |c| c.2);
                self.current
                    .get_or_create(&StateTierLabels {
                        state: state.name(),
                        tier: tier.name(),
                    })
                    .set(n);
            }
        }
        let queued = counts.iter().filter(|c| c.0 == State::Queued).map(|c| c.2);
        self.queue_depth.set(queued.sum());
        self.deliveries_pending.set(store.pending_deliveries()?);
        for (kind, bytes) in store.cache_bytes()? {
            self.cache_bytes
                .get_or_create(&KindLabels { kind: kind.name() })
                .set(bytes);
        }
        self.artifact_bytes.set(store.artifact_bytes()?);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        Ok(text)
    }
}
