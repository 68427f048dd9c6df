//! The HTTP face: builder.v1 over Connect and gRPC (connectrpc, on one port,
//! HTTP/1.1 and HTTP/2), `grpc.health.v1`, `/healthz`, `/metrics`, and the original service's plain GET
//! forms: `GetBuildStatus/{id}` as JSON and `GetBuildArtifact/{id}` as the raw
//! image bytes (Content-Length, Range, an ETag of its sha256).

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use connectrpc::ConnectError;
use connectrpc_health::StaticChecker;
use futures::StreamExt;
use tower::ServiceExt;

use crate::api::Api;

/// The API's routes, `grpc.health.v1` among them (the whole server and
/// builder.v1 SERVING; the checker answered marks them NOT_SERVING on
/// shutdown); with `with_metrics`, `/metrics` too.
pub fn router(api: Arc<Api>, with_metrics: bool) -> (axum::Router, Arc<StaticChecker>) {
    let connect = connectrpc::Router::new().add_service(api.clone());
    let (connect, health) = connectrpc_health::install_static(
        connect,
        ["", crate::proto::builder::v1::BUILDER_SERVICE_SERVICE_NAME],
    );
    let connect = connect.into_axum_service();
    let mut routes = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/builder.v1.BuilderService/GetBuildStatus/{id}",
            get(status),
        )
        .route(
            "/builder.v1.BuilderService/GetBuildArtifact/{id}",
            get(artifact),
        )
        // A PUT is the plain upload; the gRPC and Connect calls POST.
        .route(
            "/builder.v1.BuilderService/UploadArchive",
            put(upload).fallback_service(connect.clone()),
        )
        .with_state(api.clone());
    if with_metrics {
        routes = routes.merge(metrics_router(api));
    }
    let routes = routes
        .fallback_service(connect)
        .layer(axum::middleware::from_fn(strict_requests));
    (routes, health)
}

/// The largest JSON request checked field by field (a build config is a few
/// KiB; a larger body goes on to the decoder, which bounds it).
const CHECKED_JSON: usize = 1 << 20;

/// For builder.v1 calls: a JSON request with a field its message does not
/// have is `invalid_argument` naming it (`strict_json`), and a request whose
/// Content-Type is missing or unsupported is told which ones are.
async fn strict_requests(req: Request, next: axum::middleware::Next) -> Response {
    let Some(method) = req
        .uri()
        .path()
        .strip_prefix("/builder.v1.BuilderService/")
        .map(str::to_string)
    else {
        return next.run(req).await;
    };
    let json = req.method() == http::Method::POST
        && req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.split(';').next().unwrap_or("").trim() == "application/json")
        && !req.headers().contains_key(header::CONTENT_ENCODING);
    let req = if json {
        let (parts, body) = req.into_parts();
        let bytes = match axum::body::to_bytes(body, CHECKED_JSON).await {
            Ok(b) => b,
            Err(_) => {
                return error(ConnectError::resource_exhausted(format!(
                    "the request is larger than the {CHECKED_JSON} bytes a JSON request may be"
                )))
            }
        };
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes) {
            if let Err(e) = crate::strict_json::check(&method, &value) {
                return error(ConnectError::invalid_argument(e));
            }
        }
        Request::from_parts(parts, axum::body::Body::from(bytes))
    } else {
        req
    };
    let response = next.run(req).await;
    if response.status() == StatusCode::UNSUPPORTED_MEDIA_TYPE {
        let mut r = (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "builder.v1 takes Content-Type: application/json or application/proto (Connect), \
             application/connect+json or application/connect+proto (Connect streaming), \
             application/grpc or application/grpc-web\n",
        )
            .into_response();
        r.headers_mut().extend(
            response
                .headers()
                .iter()
                .filter(|(k, _)| k.as_str().starts_with("accept"))
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        return r;
    }
    response
}

/// `/metrics` alone (for `--metrics-listen`), open to any caller: it names
/// no tenant's builds.
pub fn metrics_router(api: Arc<Api>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(metrics))
        .with_state(api)
}

async fn metrics(State(api): State<Arc<Api>>) -> Response {
    let (store, metrics) = (api.store.clone(), api.metrics.clone());
    match tokio::task::spawn_blocking(move || metrics.encode(&store)).await {
        Ok(Ok(text)) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// A Connect error as the Connect protocol writes it for unary calls.
fn error(e: ConnectError) -> Response {
    (
        e.http_status(),
        [(header::CONTENT_TYPE, "application/json")],
        e.to_json(),
    )
        .into_response()
}

/// `PUT UploadArchive` (crate::upload): the body is the archive; the answer
/// is UploadArchiveResponse as JSON.
async fn upload(State(api): State<Arc<Api>>, req: Request) -> Response {
    let received = async {
        let tenant = api.caller(req.headers())?;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let chunks = req
            .into_body()
            .into_data_stream()
            .map(|chunk| chunk.map_err(|e| e.to_string()));
        crate::upload::receive(
            &api.store,
            &api.uploads,
            &tenant,
            declared,
            Box::pin(chunks),
        )
        .await
    };
    match received.await {
        Ok(u) => match serde_json::to_vec(&crate::api::upload_answer(&u)) {
            Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
            Err(e) => error(ConnectError::internal(e.to_string())),
        },
        Err(e) => error(e),
    }
}

async fn status(State(api): State<Arc<Api>>, Path(id): Path<String>, req: Request) -> Response {
    let found = api
        .caller(req.headers())
        .and_then(|tenant| api.owned(&tenant, &id))
        .and_then(|b| api.status(&b));
    match found {
        Ok(status) => match serde_json::to_vec(&status) {
            Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
            Err(e) => error(ConnectError::internal(e.to_string())),
        },
        Err(e) => error(e),
    }
}

#[derive(serde::Deserialize)]
struct ArtifactQuery {
    #[serde(default)]
    compressed: bool,
    /// A kept layer's disk (preserve_layers), from 0.
    layer: Option<u32>,
}

async fn artifact(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    Query(q): Query<ArtifactQuery>,
    req: Request,
) -> Response {
    let found = api
        .caller(req.headers())
        .and_then(|tenant| api.owned(&tenant, &id))
        .and_then(|b| api.artifact_file(&b, q.compressed, q.layer));
    let (path, _, sha256) = match found {
        Ok(f) => f,
        Err(e) => return error(e),
    };
    let etag = format!("\"sha256:{sha256}\"");
    let not_modified = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if not_modified {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    // ServeFile does Content-Length, Range (206/416) and HEAD.
    let served =
        tower_http::services::ServeFile::new_with_mime(&path, &mime::APPLICATION_OCTET_STREAM)
            .oneshot(req)
            .await;
    let mut response = match served {
        Ok(r) => r.map(axum::body::Body::new),
        Err(e) => return error(ConnectError::internal(format!("the artifact: {e}"))),
    };
    if let Ok(v) = HeaderValue::from_str(&etag) {
        response.headers_mut().insert(header::ETAG, v);
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        response
            .headers_mut()
            .insert(header::CONTENT_DISPOSITION, v);
    }
    response
}
