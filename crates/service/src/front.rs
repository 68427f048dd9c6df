//! The server's front door: accepts connections up to a limit and serves
//! each over HTTP/1.1 or HTTP/2 (prior knowledge, as gRPC clients speak it)
//! with a deadline for a request's head, so a client that connects and sends
//! nothing, or half a request, holds a connection for seconds, not for ever.
//!
//! axum's own `serve` sets neither; hyper does both once asked, except for
//! the first bytes of a connection, which hyper-util's protocol detection
//! waits for without a deadline: that wait is ours (`protocol`).

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt;

/// Bounds on what clients may hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections open at once; past it, new ones wait in the kernel's
    /// backlog until one closes.
    pub max_connections: usize,
    /// How long a client has to send a request's head, from the moment the
    /// server waits for one (on a new connection, or an idle kept-alive one).
    pub header_timeout: Duration,
}

/// What every HTTP/2 client connection gets: pings after this long without
/// a frame, and the connection dropped when a ping goes unanswered this long.
const H2_KEEPALIVE: Duration = Duration::from_secs(30);

/// HTTP/2 connections open with this (RFC 9113 section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves `routes` on `listener` until `stop` turns true; then lets the
/// requests under way finish for up to `drain`.
pub async fn serve(
    listener: TcpListener,
    routes: axum::Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("never closed"),
            () = stopped(&mut stop) => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, say: wait a moment rather than spin.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => break,
        };
        let _ = stream.set_nodelay(true);
        let routes = routes.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let Some(http2) = protocol(&stream, limits.header_timeout).await else {
                return;
            };
            let service = hyper::service::service_fn(move |req| routes.clone().oneshot(req));
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(H2_KEEPALIVE)
                .keep_alive_timeout(H2_KEEPALIVE);
            let builder = if http2 {
                builder.http2_only()
            } else {
                builder.http1_only()
            };
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            let _ = watcher.watch(conn.into_owned()).await;
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(drain, graceful.shutdown()).await;
}

/// Waits until `stop` turns true (the guard `wait_for` answers is dropped
/// here: it must not live across an await).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Waits (up to `timeout`) for enough of the connection's first bytes to
/// tell HTTP/2 with prior knowledge from HTTP/1; None when the client sent
/// too little in time or went away.
async fn protocol(stream: &TcpStream, timeout: Duration) -> Option<bool> {
    let detect = async {
        let mut buf = [0u8; H2_PREFACE.len()];
        loop {
            let n = stream.peek(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            if buf[..n] != H2_PREFACE[..n] {
                return Some(false);
            }
            if n == H2_PREFACE.len() {
                return Some(true);
            }
            // A prefix of the preface: wait for more.
            stream.readable().await.ok()?;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(timeout, detect).await.ok().flatten()
}
