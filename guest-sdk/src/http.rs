//! Outbound HTTP for sink plugins, through `wasi:http`: a small blocking
//! client.
//!
//! The host sends a request only to a host its sink allows (`allow-http =
//! ["host:port", ...]` in the pipeline file) and denies every other with
//! [`HttpError::Denied`]; each request also gives up within the sink's call
//! deadline.
//!
//! ```no_run
//! use weir_guest::http::Request;
//!
//! # fn post() -> Result<(), weir_guest::http::HttpError> {
//! let response = Request::post("http://127.0.0.1:8080/counts")
//!     .header("content-type", "application/x-ndjson")
//!     .body("{\"word\":\"weir\",\"count\":3}\n")
//!     .send()?
//!     .error_for_status()?;
//! assert!(response.status() < 300);
//! # Ok(())
//! # }
//! ```

use std::fmt;

/// An HTTP request to send.
#[derive(Debug, Clone)]
pub struct Request {
    method: Method,
    url: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

/// The method of a [`Request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `GET`.
    Get,
    /// `POST`.
    Post,
    /// `PUT`.
    Put,
    /// `DELETE`.
    Delete,
}

impl Method {
    /// `GET`, `POST`, ...
    pub fn name(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
        }
    }
}

impl Request {
    /// A request with `method` to `url` (`http://` or `https://`).
    pub fn new(method: Method, url: impl Into<String>) -> Self {
        Self {
            method,
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A `GET` of `url`.
    pub fn get(url: impl Into<String>) -> Self {
        Self::new(Method::Get, url)
    }

    /// A `POST` to `url`.
    pub fn post(url: impl Into<String>) -> Self {
        Self::new(Method::Post, url)
    }

    /// A `PUT` to `url`.
    pub fn put(url: impl Into<String>) -> Self {
        Self::new(Method::Put, url)
    }

    /// Adds a header.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl AsRef<[u8]>) -> Self {
        self.headers.push((name.into(), value.as_ref().to_vec()));
        self
    }

    /// Sets the body.
    #[must_use]
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Its method.
    pub fn method(&self) -> Method {
        self.method
    }

    /// Its URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends the request and reads the whole response. A failure to send
    /// or to be answered names the method and the URL; a denied request,
    /// the URL.
    pub fn send(self) -> Result<Response, HttpError> {
        let url = Url::parse(&self.url)?;
        let what = format!("{} {}", self.method.name(), self.url);
        let mut response = send::send(self, url).map_err(|error| match error {
            HttpError::Failed(message) => HttpError::Failed(format!("{what}: {message}")),
            other => other,
        })?;
        response.request = what;
        Ok(response)
    }
}

/// A response: its status and its whole body.
#[derive(Debug, Clone)]
pub struct Response {
    status: u16,
    body: Vec<u8>,
    /// `METHOD url`, for errors.
    request: String,
}

impl Response {
    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The response if its status is 2xx, else [`HttpError::Status`].
    pub fn error_for_status(self) -> Result<Self, HttpError> {
        if (200..300).contains(&self.status) {
            Ok(self)
        } else {
            Err(HttpError::Status {
                status: self.status,
                body: self.text().chars().take(200).collect(),
                request: self.request,
            })
        }
    }
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The host refused to send it: its host is not in the sink's `allow-http`.
    Denied(String),
    /// The URL or a header is not valid.
    Invalid(String),
    /// It could not be sent or answered (refused, timed out, reset).
    Failed(String),
    /// The server answered with a status that is not 2xx ([`Response::error_for_status`]).
    Status {
        /// The status code.
        status: u16,
        /// The start of the answer.
        body: String,
        /// `METHOD url` of the request.
        request: String,
    },
}

impl HttpError {
    /// True when trying again may help: a failure to connect or to be
    /// answered, a 5xx, 408 or 429. Not a denied host, an invalid request,
    /// or any other status (3xx, 4xx).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Failed(_) => true,
            Self::Status { status, .. } => *status >= 500 || matches!(status, 408 | 429),
            Self::Denied(_) | Self::Invalid(_) => false,
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Denied(url) => write!(
                f,
                "the request to {url} was denied: its host is not in the sink's allow-http"
            ),
            Self::Invalid(message) => write!(f, "invalid request: {message}"),
            Self::Failed(message) => write!(f, "request failed: {message}"),
            Self::Status {
                status,
                body,
                request,
            } => write!(f, "{request} answered {status}: {body}"),
        }
    }
}

impl From<HttpError> for crate::SinkError {
    fn from(error: HttpError) -> Self {
        if error.is_transient() {
            Self::transient(error)
        } else {
            Self::permanent(error)
        }
    }
}

impl From<HttpError> for crate::Error {
    fn from(error: HttpError) -> Self {
        crate::Error::msg(error)
    }
}

/// The parts of an `http(s)://authority/path?query` URL.
#[derive(Debug, PartialEq, Eq)]
struct Url {
    https: bool,
    authority: String,
    path_and_query: String,
}

impl Url {
    fn parse(url: &str) -> Result<Self, HttpError> {
        let (https, rest) = if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else {
            return Err(HttpError::Invalid(format!(
                "{url:?} is not an http:// or https:// URL"
            )));
        };
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if authority.is_empty() {
            return Err(HttpError::Invalid(format!("{url:?} names no host")));
        }
        Ok(Self {
            https,
            authority: authority.to_owned(),
            path_and_query: if path.is_empty() { "/" } else { path }.to_owned(),
        })
    }
}

#[cfg(target_arch = "wasm32")]
mod send {
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{
        ErrorCode, Fields, IncomingBody, Method as WasiMethod, OutgoingBody, OutgoingRequest, Scheme,
    };
    use wasip2::io::streams::StreamError;

    use super::{HttpError, Method, Request, Response, Url};

    /// Most bytes one `blocking-write-and-flush` may take.
    const WRITE_CHUNK: usize = 4096;

    fn failed(what: &str, error: impl std::fmt::Debug) -> HttpError {
        HttpError::Failed(format!("{what}: {error:?}"))
    }

    pub(super) fn send(mut request: Request, url: Url) -> Result<Response, HttpError> {
        // A length, not a chunked body: every server reads that.
        if !request
            .headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("content-length"))
            && (!request.body.is_empty() || request.method != Method::Get)
        {
            let length = request.body.len().to_string().into_bytes();
            request.headers.push(("content-length".to_owned(), length));
        }
        let headers = Fields::from_list(&request.headers)
            .map_err(|e| HttpError::Invalid(format!("a header is not valid: {e:?}")))?;
        let outgoing = OutgoingRequest::new(headers);
        let method = match request.method {
            Method::Get => WasiMethod::Get,
            Method::Post => WasiMethod::Post,
            Method::Put => WasiMethod::Put,
            Method::Delete => WasiMethod::Delete,
        };
        let invalid = |what: &str| HttpError::Invalid(format!("{what} of {:?}", request.url));
        outgoing.set_method(&method).map_err(|()| invalid("the method"))?;
        let scheme = if url.https { Scheme::Https } else { Scheme::Http };
        outgoing
            .set_scheme(Some(&scheme))
            .map_err(|()| invalid("the scheme"))?;
        outgoing
            .set_authority(Some(&url.authority))
            .map_err(|()| invalid("the host"))?;
        outgoing
            .set_path_with_query(Some(&url.path_and_query))
            .map_err(|()| invalid("the path"))?;
        let body = outgoing.body().map_err(|()| failed("cannot open the body", ()))?;
        let future = outgoing_handler::handle(outgoing, None).map_err(|e| match e {
            ErrorCode::HttpRequestDenied => HttpError::Denied(request.url.clone()),
            other => failed("cannot send", other),
        })?;
        // A body that cannot be written is reported after the response:
        // when the host refused the request, that says why.
        let written = (|| {
            let stream = body.write().map_err(|()| failed("cannot write the body", ()))?;
            for chunk in request.body.chunks(WRITE_CHUNK) {
                stream
                    .blocking_write_and_flush(chunk)
                    .map_err(|e| failed("cannot write the body", e))?;
            }
            Ok(())
        })();
        let finished = OutgoingBody::finish(body, None).map_err(|e| failed("cannot finish the body", e));
        future.subscribe().block();
        let response = match future.get() {
            Some(Ok(Ok(response))) => response,
            Some(Ok(Err(ErrorCode::HttpRequestDenied))) => return Err(HttpError::Denied(request.url)),
            Some(Ok(Err(error))) => return Err(failed("no answer", error)),
            Some(Err(())) | None => return Err(failed("no answer", "the response was lost")),
        };
        let status = response.status();
        // A server may answer (a 413, a 401) before it read the whole body
        // and stop reading: its answer says more than the failed write.
        if (200..300).contains(&status) {
            written?;
            finished?;
        }
        let incoming = response
            .consume()
            .map_err(|()| failed("cannot read the answer", ()))?;
        let mut bytes = Vec::new();
        {
            let stream = incoming
                .stream()
                .map_err(|()| failed("cannot read the answer", ()))?;
            loop {
                match stream.blocking_read(64 * 1024) {
                    Ok(chunk) => bytes.extend_from_slice(&chunk),
                    Err(StreamError::Closed) => break,
                    Err(error) => return Err(failed("cannot read the answer", error)),
                }
            }
        }
        drop(IncomingBody::finish(incoming));
        Ok(Response {
            status,
            body: bytes,
            request: String::new(),
        })
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod send {
    use super::{HttpError, Request, Response, Url};

    /// Natively (a unit test of a sink function) there is no host to send
    /// through.
    pub(super) fn send(request: Request, _url: Url) -> Result<Response, HttpError> {
        Err(HttpError::Failed(format!(
            "cannot send to {}: outbound HTTP needs the Weir host (the plugin runs natively)",
            request.url
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_scheme_authority_and_path() {
        let url = Url::parse("http://127.0.0.1:8080/counts?x=1").unwrap();
        assert_eq!(
            url,
            Url {
                https: false,
                authority: "127.0.0.1:8080".into(),
                path_and_query: "/counts?x=1".into()
            }
        );
        assert_eq!(Url::parse("https://example.com").unwrap().path_and_query, "/");
        assert!(matches!(Url::parse("ftp://x"), Err(HttpError::Invalid(_))));
        assert!(matches!(Url::parse("http:///x"), Err(HttpError::Invalid(_))));
    }

    #[test]
    fn status_errors_say_whether_to_retry() {
        let status = |status| {
            Response {
                status,
                body: b"no".to_vec(),
                request: "POST http://x/".into(),
            }
            .error_for_status()
        };
        assert!(status(204).is_ok());
        assert!(status(503).unwrap_err().is_transient());
        assert!(status(429).unwrap_err().is_transient());
        assert!(!status(400).unwrap_err().is_transient());
        assert!(!HttpError::Denied("http://x".into()).is_transient());
        let error: crate::SinkError = status(500).unwrap_err().into();
        assert!(error.is_transient());
        assert_eq!(error.message(), "POST http://x/ answered 500: no");
    }
}
