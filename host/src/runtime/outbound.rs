//! What a plugin may reach on the network: the `wasi:http` hooks that send
//! only to the hosts its stage allows ([`HttpAllowList`]), and the
//! `wasi:sockets` check that lets it connect only to the addresses its stage
//! allows ([`socket_check`]).
//!
//! Both deny everything when nothing is granted, which is every transform
//! stage: only sink plugins can be granted hosts and addresses.
//!
//! A plugin blocked in a host call (a request, a socket) is not
//! interrupted by its call deadline's epoch ticks: a request gives up by
//! itself within the deadline (connect, handshake and response head
//! together, and each wait for response body bytes), but the waits of an
//! `allow-connect` socket are the operating system's: a connect to an
//! address that never answers (about two minutes), a read or a write while
//! the peer keeps the connection open but silent (no limit).

use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi_http::{RequestOptions, WasiBody, WasiHttpHooks};

/// `host:port` of an authority as `wasi:http` sees it (the port implied by
/// the scheme when it names none), lower-cased.
fn authority_of(uri: &http::Uri) -> Option<String> {
    let authority = uri.authority()?;
    let port = authority
        .port_u16()
        .unwrap_or(if uri.scheme() == Some(&http::uri::Scheme::HTTPS) {
            443
        } else {
            80
        });
    Some(format!("{}:{port}", authority.host().to_ascii_lowercase()))
}

/// The `wasi:http` hooks of one instance: requests go out only to the
/// hosts of its allow-list, each with timeouts no longer than the stage's
/// call deadline (a call blocked on the network is not interrupted by the
/// deadline's epoch ticks, so the request must give up by itself).
#[derive(Debug, Clone, Default)]
pub struct HttpAllowList {
    /// `host:port`, lower-cased.
    allowed: Arc<[String]>,
    /// The longest any phase of a request may take.
    timeout: Duration,
}

impl HttpAllowList {
    /// Hooks sending only to `allowed` (`host:port` each), within `timeout`.
    pub fn new(allowed: &[String], timeout: Duration) -> Self {
        Self {
            allowed: allowed.iter().map(|a| a.to_ascii_lowercase()).collect(),
            timeout,
        }
    }

    /// True when a request to `uri` may go out.
    fn allows(&self, uri: &http::Uri) -> bool {
        authority_of(uri).is_some_and(|authority| self.allowed.contains(&authority))
    }
}

/// What `send_request` returns: the response and a future that ends with
/// its body, or why there is none.
type Sent = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<WasiBody>,
                Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for HttpAllowList {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _body_done: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Sent {
        if !self.allows(request.uri()) {
            tracing::warn!(
                uri = %request.uri(),
                "a plugin's HTTP request was denied: its host is not in the sink's allow-http"
            );
            return Box::new(std::future::ready(Err(
                wasmtime_wasi_http::Error::HttpRequestDenied,
            )));
        }
        let cap = |asked: Option<Duration>| Some(asked.map_or(self.timeout, |asked| asked.min(self.timeout)));
        let options = options.unwrap_or_default();
        let options = RequestOptions {
            connect_timeout: cap(options.connect_timeout),
            first_byte_timeout: cap(options.first_byte_timeout),
            between_bytes_timeout: cap(options.between_bytes_timeout),
        };
        let whole = self.timeout;
        Box::new(async move {
            use http_body_util::BodyExt;
            // Connect, TLS handshake and the response's head together within
            // the deadline too (each phase's own timeout could add up).
            let sent = tokio::time::timeout(
                whole,
                wasmtime_wasi_http::default_send_request(request, Some(options)),
            )
            .await
            .map_err(|_| wasmtime_wasi_http::Error::ConnectionReadTimeout)??;
            let (response, io) = sent;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

/// The `wasi:sockets` address check of an instance allowed to connect to
/// `allowed` (`host:port` each, resolved now, when the instance is
/// created): TCP connections to those addresses, and the implicit bind to
/// a wildcard address a connect makes; no listening, no UDP, nothing else.
/// A name that does not resolve is logged and left out (a connection to
/// it is refused like any other). Plugins get no name lookup of their own
/// (a lookup is a message to any name server): they connect by address.
pub fn socket_check(
    allowed: &[String],
) -> impl Fn(SocketAddr, SocketAddrUse) -> Pin<Box<dyn Future<Output = bool> + Send + Sync>> + Send + Sync + 'static
{
    let resolved: Arc<[SocketAddr]> = allowed
        .iter()
        .flat_map(|address| match address.to_socket_addrs() {
            Ok(addresses) => addresses.collect(),
            Err(error) => {
                tracing::warn!(%address, "an allow-connect address does not resolve ({error}); connections to it are refused");
                Vec::new()
            }
        })
        .collect();
    move |address, usage| {
        let allowed = match usage {
            SocketAddrUse::TcpConnect => resolved.contains(&address),
            SocketAddrUse::TcpBind => address.ip().is_unspecified() && address.port() == 0,
            _ => false,
        };
        Box::pin(std::future::ready(allowed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allowed_authorities_pass() {
        let hooks = HttpAllowList::new(
            &["Example.com:443".into(), "127.0.0.1:8080".into()],
            Duration::from_secs(1),
        );
        let uri = |text: &str| text.parse::<http::Uri>().unwrap();
        assert!(hooks.allows(&uri("https://example.com/x")));
        assert!(hooks.allows(&uri("http://127.0.0.1:8080/counts")));
        assert!(
            !hooks.allows(&uri("http://example.com/x")),
            "port 80 is another address"
        );
        assert!(!hooks.allows(&uri("http://127.0.0.1:8081/")));
        assert!(!hooks.allows(&uri("/relative")));
        assert!(!HttpAllowList::default().allows(&uri("http://127.0.0.1:8080/")));
    }
}
