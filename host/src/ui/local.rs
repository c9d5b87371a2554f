//! The UI on its own port, for a `weir run --ui`: the next free port when
//! the one asked for is taken, `/` sent to `/ui/`, the run's Prometheus
//! figures at `/metrics`, and only loopback names and IP addresses answered (no tokens here: a web page must not reach it
//! through a name pointed at 127.0.0.1).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use tokio::sync::watch;

use super::{Directory, Ui, Viewer, not_found};

/// `/metrics`: the Prometheus text of the run's pipelines and, for a
/// cluster member, its membership.
async fn metrics(directory: Arc<dyn Directory>) -> Response {
    let text = tokio::task::spawn_blocking(move || {
        let viewer = Viewer::local();
        let handles = directory
            .pipelines(&viewer)
            .into_iter()
            .filter_map(|listing| listing.handle)
            .collect();
        crate::server::metrics::render_local(handles, directory.membership(&viewer).as_ref())
    })
    .await;
    match text {
        Ok(text) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
            text,
        )
            .into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")).into_response(),
    }
}

/// Refuses a request whose `Host` is not a loopback name or address, or
/// an address of this machine: a `weir run --ui` takes no token, so a page
/// of another site must not reach it through a name that it points at
/// 127.0.0.1 (DNS rebinding).
async fn local_hosts_only(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if host_is_local(host) {
        next.run(request).await
    } else {
        (
            StatusCode::MISDIRECTED_REQUEST,
            "the web UI of `weir run` answers to loopback names and IP addresses only\n",
        )
            .into_response()
    }
}

/// Whether `host` (a `Host` header: name or address, and maybe a port) is
/// `localhost` or an IP address (never a name a DNS server chose).
fn host_is_local(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                name
            } else {
                host
            }
        }),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

/// A UI serving on its own (a `weir run --ui`).
#[derive(Debug)]
pub struct Served {
    /// Where it listens.
    pub local_addr: SocketAddr,
    _closing: watch::Sender<bool>,
    _runtime: tokio::runtime::Runtime,
}

/// Ports tried after the one asked for, when it is taken.
const NEXT_PORTS: u16 = 20;

/// Serves the UI of `directory` on `addr` (or, when its port is taken, on
/// the next free one of the [`NEXT_PORTS`] after it), with `/` sent to
/// `/ui/`, on a runtime of its own.
pub fn serve(directory: Arc<dyn Directory>, addr: SocketAddr) -> std::io::Result<Served> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("weir-ui")
        .enable_all()
        .build()?;
    let (closing, closed) = watch::channel(false);
    let scraped = directory.clone();
    let ui = Ui::new(directory, closed, false);
    let router = ui
        .router()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/metrics", get(move || metrics(scraped.clone())))
        .fallback(|| async { not_found() })
        .layer(axum::middleware::from_fn(local_hosts_only));
    let listener = runtime.block_on(async {
        let mut last = None;
        for port in (0..=NEXT_PORTS).filter_map(|i| addr.port().checked_add(i)) {
            match tokio::net::TcpListener::bind(SocketAddr::new(addr.ip(), port)).await {
                Ok(listener) => return Ok(listener),
                Err(error) if error.kind() == std::io::ErrorKind::AddrInUse && addr.port() != 0 => {
                    last = Some(error)
                }
                Err(error) => return Err(error),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no port to try")))
    })?;
    let local_addr = listener.local_addr()?;
    runtime.spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::error!(%error, "the web UI stopped serving");
        }
    });
    Ok(Served {
        local_addr,
        _closing: closing,
        _runtime: runtime,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_names_and_addresses_reach_a_local_ui() {
        for host in [
            "localhost:4040",
            "127.0.0.1:4041",
            "[::1]:4040",
            "10.0.0.5:4040",
            "LOCALHOST",
            "127.0.0.1",
        ] {
            assert!(host_is_local(host), "{host}");
        }
        for host in [
            "evil.example:4040",
            "localhost.evil.example",
            "",
            "127.0.0.1.nip.io:4040",
        ] {
            assert!(!host_is_local(host), "{host}");
        }
    }
}
