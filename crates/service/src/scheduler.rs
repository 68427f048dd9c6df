//! Which queued build runs next. A build starts when a worker is free (the
//! global limit) and its tenant is under its tier's concurrent-builds quota;
//! among the tenants that may start one, the tenant with the fewest builds
//! running goes first (then the oldest build), so one tenant's burst does not
//! starve the others.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use builderd_oci::RetryPolicy;
use tokio::sync::{watch, Notify};

use crate::job;
use crate::proto::builder::v1::BuildConfig;
use crate::runner::{Runner, Stop};
use crate::state::State;
use crate::store::{BuildRow, Store};
use crate::tier::Tier;

struct Running {
    tenant: String,
    stop: watch::Sender<Option<Stop>>,
}

pub struct Scheduler {
    store: Arc<Store>,
    runner: Arc<Runner>,
    workers: usize,
    max_build_time: Option<Duration>,
    running: Mutex<HashMap<String, Running>>,
    wake: Notify,
    /// Set by shutdown: nothing new starts.
    closed: AtomicBool,
    /// Told each time a run ends.
    ended: Notify,
}

/// How often the queue is looked at even when nobody says so (a build
/// queued by another process, a tenant's tier raised).
const POLL: Duration = Duration::from_secs(1);

impl Scheduler {
    pub fn new(
        store: Arc<Store>,
        runner: Arc<Runner>,
        workers: usize,
        max_build_time: Option<Duration>,
    ) -> Arc<Scheduler> {
        Arc::new(Scheduler {
            store,
            runner,
            workers: workers.max(1),
            max_build_time,
            running: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            ended: Notify::new(),
        })
    }

    /// Something changed: look at the queue now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub async fn run(self: Arc<Self>) {
        while !self.closed.load(Ordering::Relaxed) {
            self.dispatch();
            // Until something changes, the next retry is due, or the poll.
            let wait = match self.store.next_retry_ms() {
                Ok(Some(at)) => Duration::from_millis((at - crate::store::now_ms()).max(1) as u64),
                _ => POLL,
            };
            let _ = tokio::time::timeout(wait.min(POLL), self.wake.notified()).await;
        }
    }

    /// Starts as many queued builds as the limits allow.
    fn dispatch(self: &Arc<Self>) {
        let queued = match self.store.due() {
            Ok(q) => q,
            Err(e) => {
                tracing::error!(error = %e, "scheduler: reading the queue");
                return;
            }
        };
        let mut tiers: HashMap<String, Tier> = HashMap::new();
        let mut taken = vec![false; queued.len()];
        loop {
            if self.closed.load(Ordering::Relaxed) {
                return;
            }
            let per_tenant = {
                let running = self.running.lock().unwrap();
                if running.len() >= self.workers {
                    return;
                }
                let mut counts: HashMap<String, u32> = HashMap::new();
                for r in running.values() {
                    *counts.entry(r.tenant.clone()).or_default() += 1;
                }
                counts
            };
            let mut best: Option<(u32, usize)> = None;
            for (i, b) in queued.iter().enumerate() {
                if taken[i] {
                    continue;
                }
                let tier = *tiers.entry(b.tenant_id.clone()).or_insert_with(|| {
                    self.store
                        .tenant(&b.tenant_id)
                        .ok()
                        .flatten()
                        .map_or(Tier::Free, |t| t.tier)
                });
                let n = per_tenant.get(&b.tenant_id).copied().unwrap_or(0);
                if n >= tier.limits().concurrent_builds {
                    continue;
                }
                // Oldest first within the same count: `queued` is in order.
                if best.is_none_or(|(m, _)| n < m) {
                    best = Some((n, i));
                }
            }
            let Some((_, i)) = best else { return };
            taken[i] = true;
            let build = &queued[i];
            let tier_limit = tiers[&build.tenant_id].limits().build_timeout;
            let timeout = self
                .max_build_time
                .map_or(tier_limit, |cap| cap.min(tier_limit));
            self.start(build.clone(), timeout);
        }
    }

    fn start(self: &Arc<Self>, build: BuildRow, timeout: Duration) {
        let store = self.store.clone();
        match store.transition(&build.id, &[State::Queued], State::Running) {
            Ok(true) => {}
            // Cancelled (or deleted) since the queue was read.
            Ok(false) => return,
            Err(e) => {
                tracing::error!(build_id = %build.id, error = %e, "scheduler: starting a build");
                return;
            }
        }
        let (stop, stop_rx) = watch::channel(None);
        self.running.lock().unwrap().insert(
            build.id.clone(),
            Running {
                tenant: build.tenant_id.clone(),
                stop,
            },
        );
        let this = self.clone();
        tokio::spawn(async move {
            let id = build.id.clone();
            match job_of(&build, &this.runner.retry_defaults) {
                Ok(job) => {
                    let ended = this
                        .runner
                        .run(store.clone(), &build, job, timeout, stop_rx)
                        .await;
                    tracing::info!(
                        build_id = %id,
                        tenant_id = %build.tenant_id,
                        outcome = ?ended,
                        "build ended"
                    );
                }
                Err(message) => {
                    let _ = store.set_error(&id, "build", &message);
                    let _ = store.transition(&id, &State::ACTIVE, State::Failed);
                }
            }
            this.running.lock().unwrap().remove(&id);
            this.ended.notify_waiters();
            this.wake();
        });
    }

    /// Stops a running build; false when it is not running here.
    pub fn stop(&self, id: &str, why: Stop) -> bool {
        match self.running.lock().unwrap().get(id) {
            Some(r) => {
                let _ = r.stop.send(Some(why));
                true
            }
            None => false,
        }
    }

    pub fn is_running(&self, id: &str) -> bool {
        self.running.lock().unwrap().contains_key(id)
    }

    /// Waits until no build of this id runs here (after a stop).
    pub async fn wait_stopped(&self, id: &str) {
        loop {
            let ended = self.ended.notified();
            if !self.is_running(id) {
                return;
            }
            ended.await;
        }
    }

    /// Starts nothing more; lets running builds finish for up to `grace`,
    /// then stops the rest and puts them back in the queue.
    pub async fn shutdown(&self, grace: Duration) {
        self.closed.store(true, Ordering::Relaxed);
        self.wake();
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let ended = self.ended.notified();
            if self.running.lock().unwrap().is_empty() {
                return;
            }
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                break;
            }
        }
        let ids: Vec<String> = self.running.lock().unwrap().keys().cloned().collect();
        for id in &ids {
            self.stop(id, Stop::Requeue);
        }
        for id in &ids {
            self.wait_stopped(id).await;
        }
    }
}

/// The job of a stored build: its config again, with its stored credentials.
fn job_of(build: &BuildRow, retry_defaults: &RetryPolicy) -> Result<job::Job, String> {
    let config: BuildConfig = serde_json::from_str(&build.config_json)
        .map_err(|e| format!("the stored config does not parse: {e}"))?;
    job::job(&config, retry_defaults)
        .map_err(|r| format!("the stored config is refused now: {r:?}"))
}
