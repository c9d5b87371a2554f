//! An HTTP receiver for the HTTP sink's tests: a real server (axum) on a
//! free loopback port that keeps every request it accepts, and that can
//! be told to fail or stall on purpose.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};

/// How the receiver answers.
#[derive(Debug, Clone, Copy)]
pub enum Behaviour {
    /// 200 to everything.
    Accept,
    /// `status` to the first `n` requests, then 200.
    FailFirst(usize, u16),
    /// `status` to everything, with the body `nope`.
    Refuse(u16),
    /// 200, after waiting this long.
    Slow(Duration),
}

/// A request the receiver accepted.
#[derive(Debug, Clone)]
pub struct Received {
    /// Its `Idempotency-Key`.
    pub key: String,
    /// Its `Weir-Batch`, `Weir-Part` and `Weir-Parts`.
    pub batch: u64,
    /// Its part.
    pub part: u64,
    /// Parts of its batch.
    pub parts: u64,
    /// Its `Content-Type`.
    pub content_type: String,
    /// Its body.
    pub body: String,
}

struct State {
    behaviour: Behaviour,
    attempts: AtomicUsize,
    accepted: Mutex<Vec<Received>>,
}

/// A running receiver; stopped when dropped.
pub struct HttpReceiver {
    state: Arc<State>,
    port: u16,
    runtime: Option<tokio::runtime::Runtime>,
}

fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

async fn receive(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let attempt = state.attempts.fetch_add(1, Ordering::SeqCst);
    match state.behaviour {
        Behaviour::FailFirst(n, status) if attempt < n => {
            return (StatusCode::from_u16(status).unwrap(), "try again");
        }
        Behaviour::Refuse(status) => return (StatusCode::from_u16(status).unwrap(), "nope"),
        Behaviour::Slow(wait) => tokio::time::sleep(wait).await,
        _ => {}
    }
    let number = |name: &str| header(&headers, name).parse().unwrap_or(u64::MAX);
    state.accepted.lock().unwrap().push(Received {
        key: header(&headers, "idempotency-key"),
        batch: number("weir-batch"),
        part: number("weir-part"),
        parts: number("weir-parts"),
        content_type: header(&headers, "content-type"),
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    (StatusCode::OK, "ok")
}

impl HttpReceiver {
    /// Starts one that answers as `behaviour` says.
    pub fn start(behaviour: Behaviour) -> Self {
        let state = Arc::new(State {
            behaviour,
            attempts: AtomicUsize::new(0),
            accepted: Mutex::default(),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let router = axum::Router::new()
            .route("/ingest", axum::routing::post(receive).put(receive))
            .with_state(state.clone());
        runtime.spawn(async move { axum::serve(listener, router).await });
        Self {
            state,
            port,
            runtime: Some(runtime),
        }
    }

    /// The URL to send to.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/ingest", self.port)
    }

    /// Its `host:port`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Requests answered so far, accepted or not.
    pub fn attempts(&self) -> usize {
        self.state.attempts.load(Ordering::SeqCst)
    }

    /// Every request accepted, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.state.accepted.lock().unwrap().clone()
    }

    /// The last body per idempotency key: what a receiver that honours the
    /// key keeps.
    pub fn by_key(&self) -> BTreeMap<String, String> {
        self.received()
            .into_iter()
            .map(|request| (request.key, request.body))
            .collect()
    }
}

impl Drop for HttpReceiver {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
