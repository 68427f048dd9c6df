//! OpenTelemetry traces over OTLP/HTTP (JSON), when `--otlp-endpoint` names
//! a collector: one trace a build, its id the build id's 128 bits, with a
//! root span `build` from creation to the end and a child span for each
//! state it passed through (queued, running, preparing, downloading, …).
//!
//! The spans are made when the build ends, from the state changes the
//! store recorded, so they are the durable timeline and not a guess:
//! a build interrupted by a restart still gets its whole trace.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{
    Span, SpanBuilder, SpanKind, Status, TraceContextExt, TraceId, TracerProvider,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};

use crate::state::State;
use crate::store::{BuildRow, Store};

/// How long finished spans wait to go out with others.
const EXPORT_DELAY: Duration = Duration::from_secs(1);

pub struct Traces {
    provider: SdkTracerProvider,
    tracer: opentelemetry_sdk::trace::SdkTracer,
}

fn at(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

impl Traces {
    /// Exports to `endpoint` (a collector's base URL: spans go to
    /// `ENDPOINT/v1/traces`). Makes a blocking HTTP client: call it off
    /// the async runtime's threads.
    pub fn new(endpoint: &str) -> anyhow::Result<Traces> {
        let base = endpoint.trim_end_matches('/');
        let url = if base.ends_with("/v1/traces") {
            base.to_string()
        } else {
            format!("{base}/v1/traces")
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpJson)
            .with_endpoint(url)
            .build()?;
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_scheduled_delay(EXPORT_DELAY)
                    .build(),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name("builderd")
                    .build(),
            )
            .build();
        let tracer = provider.tracer("builderd");
        Ok(Traces { provider, tracer })
    }

    /// The ended build's trace.
    pub fn build_ended(&self, b: &BuildRow, source_type: &str, timeline: &[(State, i64)]) {
        let end = b.finished_ms.unwrap_or(b.updated_ms);
        let trace_id =
            b.id.strip_prefix("build_")
                .and_then(|hex| TraceId::from_hex(hex).ok())
                .unwrap_or(TraceId::INVALID);
        let mut root = SpanBuilder::from_name("build")
            .with_kind(SpanKind::Internal)
            .with_trace_id(trace_id)
            .with_start_time(at(b.created_ms))
            .with_attributes([
                KeyValue::new("builderd.build_id", b.id.clone()),
                KeyValue::new("builderd.tenant_id", b.tenant_id.clone()),
                KeyValue::new("builderd.state", b.state.name()),
                KeyValue::new("builderd.source_type", source_type.to_string()),
                KeyValue::new("builderd.cache_hit", b.cache_hit),
                KeyValue::new("builderd.attempts", b.attempts),
            ])
            .start(&self.tracer);
        if b.state != State::Completed {
            root.set_status(Status::error(
                b.error_message
                    .clone()
                    .unwrap_or_else(|| b.state.name().to_ascii_lowercase()),
            ));
        }
        let parent = Context::new().with_span(root);
        for (i, (state, from)) in timeline.iter().enumerate() {
            if state.is_terminal() {
                continue;
            }
            let to = timeline.get(i + 1).map_or(end, |next| next.1);
            let mut span = SpanBuilder::from_name(state.name().to_ascii_lowercase())
                .with_start_time(at(*from))
                .start_with_context(&self.tracer, &parent);
            span.end_with_timestamp(at(to));
        }
        parent.span().end_with_timestamp(at(end));
    }

    /// Sends what is still waiting. Blocks: call it off the runtime's threads.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "exporting the last traces");
        }
    }
}

/// Exports each build's trace when it ends: an observer of `store`'s
/// transitions (holding the store weakly, as the store holds it).
pub fn observe(traces: std::sync::Arc<Traces>, store: &std::sync::Arc<Store>) {
    let weak = std::sync::Arc::downgrade(store);
    store.observe(move |t| {
        if !t.to.is_terminal() {
            return;
        }
        let Some(store) = weak.upgrade() else { return };
        if let (Ok(Some(b)), Ok(timeline)) = (
            store.build_by_id(&t.build_id),
            store.transitions(&t.build_id),
        ) {
            traces.build_ended(&b, &t.source_type, &timeline);
        }
    });
}
