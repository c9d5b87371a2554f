//! One HTTP request, tried again while the failure may pass: what the HTTP
//! and Elasticsearch sinks share.
//!
//! A request that fails to connect, times out, or is answered 408, 429 or
//! 5xx is tried again with backoff (100 ms doubling to 5 s, or what
//! `Retry-After` says) until `retry_for` has passed; any other answer is
//! final.

use std::time::{Duration, Instant};

/// How a request is retried.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retry {
    /// One try's time limit (for messages; the client enforces it).
    pub timeout: Duration,
    /// How long to keep trying.
    pub retry_for: Duration,
}

/// Why a request failed for good: what to say, and whether it was retried.
#[derive(Debug)]
pub(crate) struct Failed {
    /// `answered 400 Bad Request: ...`, `timed out after 30s`, ...
    pub message: String,
}

impl Retry {
    /// Sends the request `make` builds until it is answered 2xx (its body
    /// is returned) or fails for good. `what` names it in logs and errors
    /// (`POST http://...`).
    pub(crate) fn send(
        &self,
        what: &str,
        make: impl Fn() -> reqwest::blocking::RequestBuilder,
    ) -> Result<String, Failed> {
        let deadline = Instant::now() + self.retry_for;
        let mut backoff = Duration::from_millis(100);
        loop {
            let (retry, message, wait) = match make().send() {
                Ok(answer) if answer.status().is_success() => {
                    return answer.text().map_err(|error| Failed {
                        message: format!("{what}: cannot read the answer: {}", chain(&error)),
                    });
                }
                Ok(answer) => {
                    let status = answer.status();
                    let wait = answer
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let text = answer.text().unwrap_or_default();
                    let excerpt: String = text.chars().take(200).collect();
                    let retry = status.is_server_error() || matches!(status.as_u16(), 408 | 429);
                    (retry, format!("answered {status}: {}", excerpt.trim()), wait)
                }
                Err(error) if error.is_timeout() => (
                    true,
                    format!("timed out after {}", humantime::format_duration(self.timeout)),
                    None,
                ),
                Err(error) => (true, format!("failed: {}", chain(&error)), None),
            };
            if !retry || Instant::now() >= deadline {
                let retried = if retry {
                    format!(" (retried for {})", humantime::format_duration(self.retry_for))
                } else {
                    String::new()
                };
                return Err(Failed {
                    message: format!("{what} {message}{retried}"),
                });
            }
            tracing::warn!(%what, "{message}; retrying");
            let pause = wait.map_or(backoff, |wait| wait.max(Duration::from_millis(100)));
            std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

/// An error and its causes, `: `-separated (reqwest's own text leaves out
/// the cause, such as "connection refused").
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// A blocking client with `timeout` per request, trusting the public roots
/// and the PEM certificates in `ca_file`.
pub(crate) fn client(
    timeout: Duration,
    ca_file: Option<&std::path::Path>,
    connections: usize,
) -> Result<reqwest::blocking::Client, String> {
    let mut builder = reqwest::blocking::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        // A redirect would turn a POST into a bodiless GET: a 3xx is an answer.
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(connections);
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read ca-file {}: {e}", path.display()))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("ca-file {} holds no PEM certificate: {e}", path.display()))?;
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder
        .build()
        .map_err(|e| format!("cannot make an HTTP client: {e}"))
}

/// `host:port` of an `http://` or `https://` URL.
pub(crate) fn address_of(url: &str) -> Result<String, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("invalid url {url:?}: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("url {url:?} is not http:// or https://"));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| format!("url {url:?} has no host"))?;
    let port = parsed
        .port_or_known_default()
        .ok_or_else(|| format!("url {url:?} has no port"))?;
    Ok(format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_comes_from_the_url() {
        assert_eq!(address_of("http://127.0.0.1:8080/in").unwrap(), "127.0.0.1:8080");
        assert_eq!(address_of("https://example.com/x").unwrap(), "example.com:443");
        assert_eq!(address_of("http://example.com").unwrap(), "example.com:80");
        assert!(address_of("ftp://example.com").unwrap_err().contains("not http"));
        assert!(address_of("nope").unwrap_err().contains("invalid url"));
    }
}
