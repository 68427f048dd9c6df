//! Webhooks: each build event (build.queued, build.started,
//! build.completed, build.failed, build.cancelled, build.timeout) goes to
//! the build's webhook and to its tenant's, as JSON signed with the
//! tenant's secret.
//!
//! Deliveries are written to an outbox in the same transaction as the state
//! change that causes them (`store/outbox.rs`), so a crash loses none, and
//! are sent here, by a task of their own: a build never waits for one. A
//! delivery that fails is tried again with a growing wait, across restarts,
//! up to `MAX_ATTEMPTS` times. Each carries its id (the idempotency key) in
//! the body and in `X-Builderd-Delivery`; a receiver may see one more than
//! once (a crash between sending and recording), never with another body.
//!
//! The signature: `X-Builderd-Signature: v1=HEX`, HEX the HMAC-SHA256 under
//! the tenant's secret of `TIMESTAMP.BODY`, TIMESTAMP the Unix seconds in
//! `X-Builderd-Timestamp` (new for each attempt, so an old request cannot
//! be replayed as new).
//!
//! Webhook URLs that resolve to loopback, link-local, private or other
//! non-public addresses are refused (a webhook must not reach into the
//! server's own network) unless the operator allows them: the outbound
//! policy of `builderd-net`, checked when the URL is given and again on each
//! delivery, by the resolver the connection uses, so a name that changes its
//! address is caught too.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};

use crate::store::{Delivery, Store};

/// Tries of one delivery before it is given up.
pub const MAX_ATTEMPTS: i64 = 12;
/// The wait after the first failure, doubling to `MAX_WAIT`.
const FIRST_WAIT: Duration = Duration::from_secs(1);
const MAX_WAIT: Duration = Duration::from_secs(600);
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Deliveries sent at once, over all tenants.
const IN_FLIGHT: usize = 32;
/// Deliveries of one tenant sent at once: a tenant whose endpoint is slow
/// holds this many slots, never the others'.
const PER_TENANT: usize = 2;

/// `v1=HEX`: HMAC-SHA256 of `TIMESTAMP.BODY` under `secret`.
pub fn sign(secret: &str, timestamp: i64, body: &str) -> String {
    let mut mac =
        Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("v1={hex}")
}

/// Where webhooks may go: public addresses, unless the operator allows more.
fn policy(allow_private: bool) -> builderd_net::Outbound {
    builderd_net::Outbound::new(allow_private, "--allow-private-webhooks")
}

/// Checks a webhook URL: http or https, a host, and unless `allow_private`,
/// only public addresses for it.
pub async fn check_url(url: &str, allow_private: bool) -> Result<(), String> {
    check_address(url, allow_private, "--allow-private-webhooks").await
}

/// Checks a URL the server will fetch for a tenant (a webhook, an
/// archive): http or https, a host, and unless `allow_private` (the
/// operator's `opt_in`), only public addresses for it.
pub async fn check_address(
    url: &str,
    allow_private: bool,
    opt_in: &'static str,
) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let policy = builderd_net::Outbound::new(allow_private, opt_in);
    policy.check_url(&parsed).map_err(|e| e.to_string())?;
    let host = parsed.host_str().unwrap_or_default();
    let port = parsed.port_or_known_default().unwrap_or(80);
    policy
        .check_host(&format!("{host}:{port}"))
        .await
        .map_err(|e| format!("{url:?}: {e}"))
}

pub struct Deliverer {
    store: Arc<Store>,
    metrics: Arc<crate::metrics::Metrics>,
    client: reqwest::Client,
    policy: builderd_net::Outbound,
}

/// The deliveries being sent, and how many of each tenant's.
#[derive(Default)]
struct InFlight {
    ids: std::collections::HashSet<String>,
    per_tenant: std::collections::HashMap<String, usize>,
    /// Done with (sent, or handed back unsent for want of a slot) since
    /// the due list was last read: that list may still show them due, as
    /// it was read before their outcome was recorded.
    finished: std::collections::HashSet<String>,
}

impl InFlight {
    /// Called just before the due list is read: what finished before is in
    /// the store by then.
    fn reading_due(&mut self) {
        self.finished.clear();
    }

    /// Takes `d` to send unless it is being sent or was just sent, or its
    /// tenant has `PER_TENANT` under way.
    fn take(&mut self, d: &Delivery) -> bool {
        let n = self.per_tenant.get(&d.tenant_id).copied().unwrap_or(0);
        if n >= PER_TENANT || self.ids.contains(&d.id) || self.finished.contains(&d.id) {
            return false;
        }
        self.ids.insert(d.id.clone());
        self.per_tenant.insert(d.tenant_id.clone(), n + 1);
        true
    }

    /// `d`'s try is over and its outcome recorded.
    fn done(&mut self, d: &Delivery) {
        self.finished.insert(d.id.clone());
        if self.ids.remove(&d.id) {
            if let Some(n) = self.per_tenant.get_mut(&d.tenant_id) {
                *n -= 1;
                if *n == 0 {
                    self.per_tenant.remove(&d.tenant_id);
                }
            }
        }
    }
}

/// Why a delivery did not go: worth another try, or not.
enum Failure {
    Again(String),
    Never(String),
}

impl Deliverer {
    pub fn new(
        store: Arc<Store>,
        metrics: Arc<crate::metrics::Metrics>,
        allow_private: bool,
    ) -> anyhow::Result<Arc<Deliverer>> {
        let policy = policy(allow_private);
        let client = reqwest::Client::builder()
            .timeout(SEND_TIMEOUT)
            // A webhook is one POST: a redirect is an answer, not a place to go.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(policy.resolver())
            .user_agent(concat!("builderd/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Arc::new(Deliverer {
            store,
            metrics,
            client,
            policy,
        }))
    }

    /// Sends what is due, for ever; the store says when new deliveries
    /// wait. Each delivery goes on its own task: the loop never waits for
    /// one, only for a free slot, so a slow endpoint delays its own
    /// tenant's deliveries alone (at most `PER_TENANT` of them at a time).
    pub async fn run(self: Arc<Self>) {
        let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
        let sending: Arc<Mutex<InFlight>> = Arc::default();
        let freed = Arc::new(tokio::sync::Notify::new());
        loop {
            sending.lock().unwrap().reading_due();
            let due = self
                .store
                .due_deliveries(crate::store::now_ms(), PER_TENANT, IN_FLIGHT * 2)
                .unwrap_or_default();
            for d in due {
                if !sending.lock().unwrap().take(&d) {
                    continue;
                }
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    sending.lock().unwrap().done(&d);
                    break;
                };
                let (this, sending, freed) = (self.clone(), sending.clone(), freed.clone());
                tokio::spawn(async move {
                    this.deliver(d.clone()).await;
                    sending.lock().unwrap().done(&d);
                    drop(permit);
                    freed.notify_one();
                });
            }
            let next = self.store.next_delivery_ms().ok().flatten();
            let wait = next.map_or(Duration::from_secs(5), |at| {
                Duration::from_millis((at - crate::store::now_ms()).clamp(50, 5000) as u64)
            });
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.store.outbox_wake.notified() => {}
                _ = freed.notified() => {}
            }
        }
    }

    async fn deliver(&self, d: Delivery) {
        use crate::metrics::Delivery as Outcome;
        let result = self.send(&d).await;
        let store = &self.store;
        let (outcome, recorded) = match result {
            Ok(()) => (Outcome::Delivered, store.delivered(&d.id)),
            Err(Failure::Never(why)) => (Outcome::GivenUp, store.delivery_given_up(&d.id, &why)),
            Err(Failure::Again(why)) if d.attempts + 1 >= MAX_ATTEMPTS => (
                Outcome::GivenUp,
                store.delivery_given_up(
                    &d.id,
                    &format!("{why} (gave up after {MAX_ATTEMPTS} attempts)"),
                ),
            ),
            Err(Failure::Again(why)) => {
                let wait = FIRST_WAIT
                    .saturating_mul(1 << d.attempts.clamp(0, 20))
                    .min(MAX_WAIT);
                (
                    Outcome::Failed,
                    store.delivery_failed(
                        &d.id,
                        &why,
                        crate::store::now_ms() + wait.as_millis() as i64,
                    ),
                )
            }
        };
        if recorded.is_ok() {
            self.metrics.delivery(outcome);
        }
    }

    async fn send(&self, d: &Delivery) -> Result<(), Failure> {
        let url = reqwest::Url::parse(&d.url).map_err(|e| Failure::Never(e.to_string()))?;
        // The resolver guards names; an address written in the URL it never sees.
        self.policy
            .check_url(&url)
            .map_err(|e| Failure::Never(e.to_string()))?;
        let timestamp = crate::store::now_ms() / 1000;
        let mut req = self.client.post(url);
        for (k, v) in &d.headers {
            req = req.header(k, v);
        }
        let resp = req
            .header("Content-Type", "application/json")
            .header("X-Builderd-Event", &d.event)
            .header("X-Builderd-Delivery", &d.id)
            .header("X-Builderd-Timestamp", timestamp.to_string())
            .header("X-Builderd-Signature", sign(&d.secret, timestamp, &d.body))
            .body(d.body.clone())
            .send()
            .await
            .map_err(|e| match builderd_net::not_allowed(&e) {
                Some(refused) => Failure::Never(refused.to_string()),
                None => Failure::Again(describe(&e)),
            })?;
        let status = resp.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(Failure::Again(format!("the receiver answered {status}")))
        }
    }
}

/// An error with its causes.
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !text.contains(&s) {
            text = format!("{text}: {s}");
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_and_body() {
        // RFC 4231 test case 2's key and data, framed as we frame them; the
        // expected value from `printf '1.what do ya want for nothing?' |
        // openssl dgst -sha256 -hmac Jefe`.
        let sig = sign("Jefe", 1, "what do ya want for nothing?");
        assert_eq!(
            sig,
            "v1=a9049465ce89cfb8e9aac62333abda66f80e3403f51f57f6bae3c3a4485eca38"
        );
        assert_ne!(sig, sign("Jefe", 2, "what do ya want for nothing?"));
    }

    #[test]
    fn a_delivery_sent_after_the_due_list_was_read_is_not_sent_again() {
        let d = Delivery {
            id: "whd_1".into(),
            tenant_id: "acme".into(),
            event: "build.completed".into(),
            url: "https://example.com/hook".into(),
            headers: Vec::new(),
            body: "{}".into(),
            secret: "s".into(),
            attempts: 0,
        };
        let mut sending = InFlight::default();
        sending.reading_due();
        assert!(sending.take(&d));
        // Being sent: a list read meanwhile still shows it due.
        sending.reading_due();
        assert!(!sending.take(&d));
        // Its outcome recorded and its try over before that list is
        // walked: still not taken.
        sending.done(&d);
        assert!(!sending.take(&d));
        // A list read after that knows its outcome: due again only if the
        // store says so (a failed try, once its wait is over).
        sending.reading_due();
        assert!(sending.take(&d));
    }

    #[tokio::test]
    async fn urls_are_checked() {
        assert!(check_url("ftp://example.com/x", true).await.is_err());
        assert!(check_url("http://127.0.0.1:9/hook", false)
            .await
            .unwrap_err()
            .contains("--allow-private-webhooks"));
        // Forms of internal addresses that once passed the filter.
        for url in [
            "http://[64:ff9b::7f00:1]/hook",
            "http://[2002:7f00:1::1]/hook",
            "http://[::127.0.0.1]/hook",
            "http://[fec0::1]/hook",
            "http://[2001::1]/hook",
        ] {
            assert!(check_url(url, false).await.is_err(), "{url}");
        }
        assert!(check_url("http://[::1]:9/hook", false).await.is_err());
        assert!(check_url("http://169.254.169.254/latest", false)
            .await
            .is_err());
        assert!(check_url("http://localhost:9/hook", false).await.is_err());
        assert!(check_url("http://127.0.0.1:9/hook", true).await.is_ok());
    }
}
