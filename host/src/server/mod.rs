//! `weir serve`: one process that hosts many tenants' pipelines on one
//! [`Engine`], each tenant isolated from the others, behind an HTTP/JSON
//! API.
//!
//! ```text
//! HTTP (axum, TLS optional) ── api ── state ── Engine (one worker pool, one plugin catalog)
//!                                      │ └── store: the data directory (tenants, tokens, plugins, pipelines)
//!                                      ├── auth: tokens, roles, throttle of failed attempts
//!                                      ├── tenant: quotas, grants, admission of a pipeline
//!                                      ├── audit: append-only log of mutating calls
//!                                      ├── versions: hot-loads, rollbacks, pinned versions
//!                                      ├── metrics: Prometheus text
//!                                      └── ui: the web UI's view of the tenants (crate::ui)
//! ```
//!
//! A tenant's pipeline is the same TOML `weir run` takes, resolved in the
//! tenant's scope: paths inside its root only ([`crate::config::Paths`]),
//! `[plugins]` naming its uploads, network addresses only where the admin
//! granted them, a checkpoint directory always (so a restart resumes it
//! exactly), and its quotas' ceilings on limits, rate and footprint.

pub mod api;
pub mod audit;
pub mod auth;
pub mod metrics;
pub mod state;
pub mod store;
pub mod tenant;
pub mod tls;
pub mod ui;
pub mod versions;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use state::ServerState;
pub use tenant::Quotas;

use crate::engine::{Engine, EngineOptions};

/// What a server call can fail with; the API maps each to its status.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The request is wrong: a malformed body, an invalid pipeline file or
    /// plugin, a bad name (400).
    #[error("{0}")]
    Invalid(String),
    /// The caller may not do this (403).
    #[error("{0}")]
    Forbidden(String),
    /// No such tenant, pipeline, plugin or token, or not the caller's (404).
    #[error("{0}")]
    NotFound(String),
    /// The object is in a state that does not allow it (409).
    #[error("{0}")]
    Conflict(String),
    /// The body is larger than allowed (413).
    #[error("{0}")]
    TooLarge(String),
    /// A tenant's quota refuses it (422).
    #[error("quota exceeded: {0}")]
    Quota(String),
    /// A running pipeline refused the change (a hot-load's candidate failed
    /// its checks, say): nothing changed (422).
    #[error("{0}")]
    Refused(String),
    /// The data directory failed (500; 507 when the disk is full).
    #[error("{what}: {source}")]
    Io {
        /// What the server was doing.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// A file of the data directory cannot be read as what it should hold.
    #[error("corrupt data directory: {0}")]
    Corrupt(String),
    /// Something inside the server failed.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServerError {
    /// An I/O error while doing `what`.
    pub fn io(what: String, source: std::io::Error) -> Self {
        Self::Io { what, source }
    }
}

/// How to run a server. Its `Debug` form leaves the admin token out.
#[derive(Clone)]
pub struct ServerOptions {
    /// The data directory.
    pub data_dir: PathBuf,
    /// Where the API listens.
    pub listen: SocketAddr,
    /// The admin's bearer token.
    pub admin_token: String,
    /// PEM certificate chain and key: serve TLS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Worker threads of the engine's pool (default: the cores).
    pub workers: Option<usize>,
    /// Quotas of a tenant created without its own.
    pub default_quotas: Quotas,
    /// Largest request body, in bytes.
    pub max_body: usize,
}

impl std::fmt::Debug for ServerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerOptions")
            .field("data_dir", &self.data_dir)
            .field("listen", &self.listen)
            .field("admin_token", &"<redacted>")
            .field("tls", &self.tls)
            .field("workers", &self.workers)
            .field("default_quotas", &self.default_quotas)
            .field("max_body", &self.max_body)
            .finish()
    }
}

/// Shortest admin token accepted.
pub const MIN_ADMIN_TOKEN: usize = 16;

/// How often tenants' disk use is measured.
const DISK_CHECK: Duration = Duration::from_secs(2);

/// A started server: where it listens, and how to stop it.
#[derive(Debug)]
pub struct Running {
    /// The address the API listens on (the port chosen when given 0).
    pub local_addr: SocketAddr,
    /// Its state (for embedding).
    pub state: Arc<ServerState>,
    ready: Arc<AtomicBool>,
    serving: tokio::task::JoinHandle<std::io::Result<()>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Running {
    /// Stops accepting calls, stops every pipeline gracefully (their
    /// desired state stays, so a restart brings them back), and returns.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        let Self {
            state,
            ready,
            serving,
            stop,
            ..
        } = self;
        ready.store(false, Ordering::Relaxed);
        let _ = stop.send(true);
        let served = serving.await;
        // The engine (its receivers' runtime) is dropped off the async threads.
        tokio::task::spawn_blocking(move || {
            state.shutdown();
            drop(state);
        })
        .await
        .map_err(|e| ServerError::Internal(e.to_string()))?;
        match served {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(ServerError::io("the API server failed".into(), error)),
            Err(error) => Err(ServerError::Internal(error.to_string())),
        }
    }
}

/// Opens the data directory, brings back its tenants and pipelines, and
/// starts serving the API. Call from inside a tokio runtime.
pub async fn start(options: ServerOptions) -> Result<Running, ServerError> {
    if options.admin_token.len() < MIN_ADMIN_TOKEN {
        return Err(ServerError::Invalid(format!(
            "the admin token must have at least {MIN_ADMIN_TOKEN} characters"
        )));
    }
    let store = store::Store::open(&options.data_dir)?;
    let engine = Engine::new(EngineOptions {
        cache_dir: Some(store.cache_dir()),
        workers: options.workers,
        state_dir: options.data_dir.join("spill"),
        ..EngineOptions::default()
    })
    .map_err(|e| ServerError::Internal(format!("cannot start the engine: {e}")))?;
    let runtime = tokio::runtime::Handle::current();
    let admin_token = options.admin_token.clone();
    let defaults = options.default_quotas.clone();
    let state = tokio::task::spawn_blocking(move || {
        ServerState::open(store, engine, &admin_token, defaults, runtime)
    })
    .await
    .map_err(|e| ServerError::Internal(e.to_string()))??;

    let ready = Arc::new(AtomicBool::new(false));
    let throttle: Arc<auth::Throttle> = Arc::default();
    let app = api::App {
        state: state.clone(),
        throttle: throttle.clone(),
        ready: ready.clone(),
    };
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let ui = crate::ui::Ui::new(
        Arc::new(ui::ServerDirectory::new(state.clone())),
        stop.subscribe(),
        options.tls.is_some(),
    )
    .with_throttle(Arc::new(move |extensions| {
        // The same count of failures by client as the API's.
        extensions
            .get::<axum::extract::ConnectInfo<tls::ClientAddr>>()
            .map_or(Duration::ZERO, |info| throttle.fail(info.0.0.ip()))
    }));
    let router = api::router(app, options.max_body).merge(ui.router());
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|e| ServerError::io(format!("cannot listen on {}", options.listen), e))?;
    let local_addr = listener
        .local_addr()
        .map_err(|e| ServerError::io("cannot read the listening address".into(), e))?;
    let until_stopped = async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    let serving = match &options.tls {
        Some((cert, key)) => {
            let listener = tls::TlsListener::new(listener, cert, key)?;
            let service = router.into_make_service_with_connect_info::<tls::ClientAddr>();
            tokio::spawn(async move {
                axum::serve(listener, service)
                    .with_graceful_shutdown(until_stopped)
                    .await
            })
        }
        None => {
            let service = router.into_make_service_with_connect_info::<tls::ClientAddr>();
            tokio::spawn(async move {
                axum::serve(listener, service)
                    .with_graceful_shutdown(until_stopped)
                    .await
            })
        }
    };
    let watcher = Arc::downgrade(&state);
    std::thread::Builder::new()
        .name("weir-quotas".into())
        .spawn(move || {
            while let Some(state) = watcher.upgrade() {
                state.enforce_disk_quotas();
                // Pipelines that ended by themselves leave their share.
                state.rebalance_cpu();
                drop(state);
                std::thread::sleep(DISK_CHECK);
            }
        })
        .map_err(|e| ServerError::io("cannot start the quota watcher".into(), e))?;
    ready.store(true, Ordering::Relaxed);
    tracing::info!(%local_addr, tls = options.tls.is_some(), data = %options.data_dir.display(), "weir serve listening");
    Ok(Running {
        local_addr,
        state,
        ready,
        serving,
        stop,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_options_debug_form_leaves_the_admin_token_out() {
        let options = ServerOptions {
            data_dir: PathBuf::from("data"),
            listen: "127.0.0.1:7600".parse().unwrap(),
            admin_token: "s3cret-admin-token-value".into(),
            tls: None,
            workers: None,
            default_quotas: Quotas::default(),
            max_body: 1 << 20,
        };
        let shown = format!("{options:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains("<redacted>") && shown.contains("127.0.0.1:7600"),
            "{shown}"
        );
    }
}
