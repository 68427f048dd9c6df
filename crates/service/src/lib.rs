//! builder.v1 as a service: the Connect/gRPC API, tenants and their API keys,
//! tier quotas, a durable queue in SQLite, and the runner that turns each
//! accepted build into a `builderd build` child process; and what operating
//! it takes: the artifact cache, retries, signed webhooks from an outbox,
//! Prometheus metrics, OTLP traces, health checks and retention.

pub mod proto {
    connectrpc::include_generated!();
}

mod api;
mod artifact;
mod auth;
mod cache;
mod confine;
mod front;
mod http;
mod job;
mod metrics;
mod paths;
mod retention;
mod runner;
mod scheduler;
mod sealed;
mod serve;
mod state;
mod store;
mod strict_json;
mod tier;
mod traces;
mod upload;
mod upload_rules;
mod webhook;

pub use front::Limits;
pub use job::{default_retry_policy, parse_retry_policy};
pub use runner::GitPolicy;
pub use serve::{
    cache_list, cache_prune, create_tenant, default_data_dir, new_tenant_key, revoke_tenant_key,
    rotate_operator_key, serve, tenant_keys, tenant_webhook, Options,
};
pub use store::{CacheEntry, CacheKind, KeyInfo, Webhook};
pub use tier::Tier;
