//! The webhook outbox: deliveries written in the transaction of the state
//! change that makes them (so none is lost and none is made twice), then
//! sent, retried and recorded by `webhook::Deliverer`; and each tenant's
//! webhook and signing secret.

use rusqlite::{params, OptionalExtension, Transaction};
use serde_json::{json, Value};

use super::Store;
use super::{build_row, exec, now_ms, row, Result, StoreError, BUILD_COLUMNS};
use crate::state::State;

/// The events a webhook may be sent, one per state a build ends or starts in.
pub const EVENTS: [&str; 6] = [
    "build.queued",
    "build.started",
    "build.completed",
    "build.failed",
    "build.cancelled",
    "build.timeout",
];

/// The event a move to `to` makes, if any (a retry or a restart that puts
/// a build back in the queue makes none: it was queued already).
pub fn event_of(to: State, created: bool) -> Option<&'static str> {
    Some(match to {
        State::Queued if created => "build.queued",
        State::Running => "build.started",
        State::Completed => "build.completed",
        State::Failed => "build.failed",
        State::Cancelled => "build.cancelled",
        State::Timeout => "build.timeout",
        _ => return None,
    })
}

/// One delivery to send.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// Also the idempotency key in the body.
    pub id: String,
    pub tenant_id: String,
    pub event: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// The tenant's signing secret.
    pub secret: String,
    /// Tries so far.
    pub attempts: i64,
}

/// A webhook: where to, for which events (none: all), with which headers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Webhook {
    pub url: String,
    pub events: Vec<String>,
    pub headers: Vec<(String, String)>,
}

impl Webhook {
    fn wants(&self, event: &str) -> bool {
        !self.url.is_empty() && (self.events.is_empty() || self.events.iter().any(|e| e == event))
    }

    /// From a build config's `webhook` (proto3 JSON).
    fn of_config(w: &Value) -> Webhook {
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        Webhook {
            url: w["url"].as_str().unwrap_or_default().to_string(),
            events: strings(&w["events"]),
            headers: headers_of(&w["headers"]),
        }
    }
}

fn headers_of(v: &Value) -> Vec<(String, String)> {
    v.as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    getrandom::fill(&mut b).expect("the kernel's random source works");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A new signing secret.
pub fn new_secret() -> String {
    format!("whsec_{}", random_hex(32))
}

fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Writes the deliveries `event` of build `id` makes, inside `tx`.
pub(super) fn enqueue(tx: &Transaction, id: &str, event: &str) -> rusqlite::Result<usize> {
    let b = row(
        tx,
        &format!("SELECT {BUILD_COLUMNS} FROM builds WHERE id = ?1"),
        [id],
        build_row,
    )?;
    let (t_url, t_events, t_headers, secret): (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    ) = row(
        tx,
        "SELECT webhook_url, webhook_events, webhook_headers, webhook_secret FROM tenants WHERE id = ?1",
        [&b.tenant_id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    let config: Value = serde_json::from_str(&b.config_json).unwrap_or(Value::Null);
    let own = Webhook::of_config(&config["webhook"]);
    let tenant = Webhook {
        url: t_url.unwrap_or_default(),
        events: t_events
            .and_then(|e| serde_json::from_str(&e).ok())
            .unwrap_or_default(),
        headers: t_headers
            .and_then(|h| serde_json::from_str::<Value>(&h).ok())
            .map(|h| headers_of(&h))
            .unwrap_or_default(),
    };
    let targets: Vec<&Webhook> = [&own, &tenant]
        .into_iter()
        .filter(|w| w.wants(event))
        .collect();
    if targets.is_empty() {
        return Ok(0);
    }
    // Signed when sent; a tenant made before webhooks gets its secret now.
    if secret.is_none() {
        exec(
            tx,
            "UPDATE tenants SET webhook_secret = ?2 WHERE id = ?1",
            params![b.tenant_id, new_secret()],
        )?;
    }
    let timings: Vec<Value> = {
        let mut stmt = tx.prepare_cached(
            "SELECT state, at_ms FROM transitions WHERE build_id = ?1 ORDER BY rowid",
        )?;
        let rows = stmt.query_map([id], |r| {
            let state: String = r.get(0)?;
            let at: i64 = r.get(1)?;
            Ok(json!({"state": format!("BUILD_STATE_{state}"), "at": rfc3339(at)}))
        })?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let artifact: Value = b
        .artifact_json
        .as_deref()
        .and_then(|a| serde_json::from_str::<Value>(a).ok())
        .map_or(Value::Null, |m| {
            json!({
                "sha256": m["image"]["sha256"],
                "size_bytes": m["image"]["size_bytes"],
                "compression": m["compressed"]["format"],
                "compressed_sha256": m["compressed"]["sha256"],
                "compressed_size_bytes": m["compressed"]["size_bytes"],
                "manifest_digest": m["manifest_digest"],
            })
        });
    let error = match (&b.error_category, &b.error_message) {
        (Some(c), Some(m)) => {
            json!({"category": format!("ERROR_CATEGORY_{}", c.to_ascii_uppercase()), "message": m})
        }
        _ => Value::Null,
    };
    let now = now_ms();
    for w in &targets {
        let delivery = format!("dlv_{}", random_hex(16));
        let body = json!({
            "id": delivery,
            "event": event,
            "created_at": rfc3339(now),
            "build": {
                "build_id": b.id,
                "tenant_id": b.tenant_id,
                "state": format!("BUILD_STATE_{}", b.state.name()),
                "attempt": b.attempts,
                "created_at": rfc3339(b.created_ms),
                "started_at": b.started_ms.map(rfc3339),
                "completed_at": b.finished_ms.map(rfc3339),
                "timings": timings,
                "artifact": artifact,
                "error": error,
                "cache_hit": b.cache_hit,
            }
        });
        exec(
            tx,
            "INSERT INTO webhook_deliveries (id, build_id, tenant_id, event, url, headers_json, body, created_ms, next_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
            params![
                delivery,
                b.id,
                b.tenant_id,
                event,
                w.url,
                serde_json::to_string(&w.headers).expect("strings serialise"),
                body.to_string(),
                now
            ],
        )?;
    }
    Ok(targets.len())
}

/// A tenant's webhook columns: url, events, headers, secret.
type TenantWebhookRow = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

impl Store {
    /// Deliveries due at `now`: at most `per_tenant` of each tenant's
    /// (its oldest), taken in turns across tenants (every tenant's first,
    /// then every tenant's second…), so one tenant's backlog never fills
    /// the list; at most `limit` in all.
    pub fn due_deliveries(
        &self,
        now: i64,
        per_tenant: usize,
        limit: usize,
    ) -> Result<Vec<Delivery>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT d.id, d.event, d.url, d.headers_json, d.body, t.webhook_secret, d.attempts,
                        d.tenant_id
                 FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY tenant_id ORDER BY next_ms) AS turn
                       FROM webhook_deliveries
                       WHERE delivered_ms IS NULL AND failed_ms IS NULL AND next_ms <= ?1) d
                 JOIN tenants t ON t.id = d.tenant_id
                 WHERE d.turn <= ?2
                 ORDER BY d.turn, d.next_ms LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![now, per_tenant as i64, limit as i64], |r| {
                let headers: String = r.get(3)?;
                Ok(Delivery {
                    id: r.get(0)?,
                    tenant_id: r.get(7)?,
                    event: r.get(1)?,
                    url: r.get(2)?,
                    headers: serde_json::from_str(&headers).unwrap_or_default(),
                    body: r.get(4)?,
                    secret: r.get::<_, Option<String>>(5)?.unwrap_or_default(),
                    attempts: r.get(6)?,
                })
            })?;
            rows.collect()
        })
    }

    /// When the next pending delivery is due.
    pub fn next_delivery_ms(&self) -> Result<Option<i64>> {
        self.read(|c| {
            row(
                c,
                "SELECT MIN(next_ms) FROM webhook_deliveries WHERE delivered_ms IS NULL AND failed_ms IS NULL",
                [],
                |r| r.get(0),
            )
        })
    }

    pub fn delivered(&self, id: &str) -> Result<()> {
        exec(
            &self.conn(),
            "UPDATE webhook_deliveries SET delivered_ms = ?2, attempts = attempts + 1, last_error = NULL WHERE id = ?1",
            params![id, now_ms()],
        )?;
        Ok(())
    }

    /// A try failed; the next is due at `next_ms`.
    pub fn delivery_failed(&self, id: &str, why: &str, next_ms: i64) -> Result<()> {
        exec(
            &self.conn(),
            "UPDATE webhook_deliveries SET attempts = attempts + 1, last_error = ?2, next_ms = ?3 WHERE id = ?1",
            params![id, why, next_ms],
        )?;
        Ok(())
    }

    pub fn delivery_given_up(&self, id: &str, why: &str) -> Result<()> {
        exec(
            &self.conn(),
            "UPDATE webhook_deliveries SET attempts = attempts + 1, last_error = ?2, failed_ms = ?3 WHERE id = ?1",
            params![id, why, now_ms()],
        )?;
        Ok(())
    }

    /// A tenant's webhook and signing secret (made now if it had none).
    pub fn tenant_webhook(&self, tenant: &str) -> Result<(Webhook, String)> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let found: Option<TenantWebhookRow> = row(
            &tx,
            "SELECT webhook_url, webhook_events, webhook_headers, webhook_secret FROM tenants WHERE id = ?1",
            [tenant],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
        let Some((url, events, headers, secret)) = found else {
            return Err(StoreError::Conflict(format!("no tenant {tenant:?}")));
        };
        let secret = match secret {
            Some(s) => s,
            None => {
                let s = new_secret();
                exec(
                    &tx,
                    "UPDATE tenants SET webhook_secret = ?2 WHERE id = ?1",
                    params![tenant, s],
                )?;
                s
            }
        };
        tx.commit()?;
        Ok((
            Webhook {
                url: url.unwrap_or_default(),
                events: events
                    .and_then(|e| serde_json::from_str(&e).ok())
                    .unwrap_or_default(),
                headers: headers
                    .and_then(|h| serde_json::from_str::<Value>(&h).ok())
                    .map(|h| headers_of(&h))
                    .unwrap_or_default(),
            },
            secret,
        ))
    }

    /// Sets (or, with an empty URL, removes) a tenant's webhook; a new
    /// secret with `rotate`.
    pub fn set_tenant_webhook(&self, tenant: &str, w: &Webhook, rotate: bool) -> Result<()> {
        let headers: serde_json::Map<String, Value> = w
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        let conn = self.conn();
        let n = exec(
            &conn,
            "UPDATE tenants SET webhook_url = NULLIF(?2, ''), webhook_events = ?3, webhook_headers = ?4,
                 webhook_secret = CASE WHEN ?5 THEN ?6 ELSE webhook_secret END
             WHERE id = ?1",
            params![
                tenant,
                w.url,
                serde_json::to_string(&w.events).expect("strings serialise"),
                Value::Object(headers).to_string(),
                rotate,
                new_secret()
            ],
        )?;
        if n == 0 {
            return Err(StoreError::Conflict(format!("no tenant {tenant:?}")));
        }
        Ok(())
    }
}

/// Writes the deliveries a move to `to` makes (`created`: the build's first
/// QUEUED), inside the transaction that makes the move.
pub(super) fn on_transition(
    tx: &Transaction,
    id: &str,
    to: State,
    created: bool,
) -> rusqlite::Result<usize> {
    match event_of(to, created) {
        Some(event) => enqueue(tx, id, event),
        None => Ok(0),
    }
}
