//! The accept loop and the per-connection HTTP/1 loop of a running sandbox.
//!
//! axum's own `serve` cannot hang up on a request without answering it, and
//! the drop fault needs exactly that. So each connection is served by hyper
//! directly, and the router's answer passes through one check: a response
//! marked [`DropConnection`] becomes an error from the service, which makes
//! hyper close the connection without writing a byte — the client sees its
//! request sent and no answer, like a real mid-flight failure.
//!
//! Shutdown is one `watch` signal: the accept loop stops, every connection
//! finishes the answer it is writing and closes, and the loop waits for them
//! (bounded, so a 10-second slow answer cannot hold a Ctrl-C hostage).

use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::{Service, service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::reply::DropConnection;

/// How long shutdown waits for answers in flight before cutting them off.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The error that makes hyper drop a connection on purpose.
#[derive(Debug)]
struct ConnectionDropped;

impl std::fmt::Display for ConnectionDropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by the sandbox (injected fault)")
    }
}

impl std::error::Error for ConnectionDropped {}

/// Serves `router` on `listener` until `shutdown` turns true (or its sender goes).
pub async fn serve(listener: TcpListener, router: Router, mut shutdown: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop_requested(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    connections.spawn(serve_connection(stream, router.clone(), shutdown.clone()));
                }
                Err(err) => {
                    // Typically "too many open files": back off instead of spinning.
                    tracing::warn!("sandbox cannot accept a connection: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
        // Reap finished connections so the set does not grow with every client.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "sandbox shutdown: {} connection(s) still busy after {DRAIN_TIMEOUT:?}; closing them",
            connections.len()
        );
        connections.shutdown().await;
    }
}

async fn serve_connection(stream: TcpStream, router: Router, mut shutdown: watch::Receiver<bool>) {
    // Answers are small; without this, Nagle holds each one back waiting for an ACK.
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!("sandbox cannot set TCP_NODELAY: {err}");
    }
    let router = TowerToHyperService::new(router);
    let service = service_fn(move |request: Request<Incoming>| {
        let answer = router.call(request);
        async move {
            let response = match answer.await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            if response.extensions().get::<DropConnection>().is_some() {
                return Err(ConnectionDropped);
            }
            Ok(response)
        }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        // hyper's 30 s header timeout also runs while a keep-alive connection
        // idles, closing it under a client that paused; the client's next send
        // on it would then fail mid-request and look like an uncertain delivery.
        // Loopback test clients are trusted, so idle connections stay open.
        .header_read_timeout(None)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = stop_requested(&mut shutdown) => {
            // Finish the answer in progress, then close; idle connections close now.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(err) = result {
        // Dropped on purpose, or a client that hung up: neither is the sandbox's problem.
        tracing::debug!("sandbox connection ended: {err}");
    }
}

/// Resolves once shutdown is asked for, or the sender is gone (the owner is).
/// The guard `wait_for` returns is dropped here: it must not live across an await.
async fn stop_requested(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
