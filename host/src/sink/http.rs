//! The HTTP sink (`type = "http"`): each batch POSTed (or PUT) to a URL as
//! JSON lines, in parts of at most `records-per-request` records, up to
//! `concurrency` parts at a time.
//!
//! Every request carries `Idempotency-Key: <pipeline>/<sink>/<batch>/<part>`
//! (and `Weir-Batch`, `Weir-Part`, `Weir-Parts`): a batch re-run after a
//! crash sends the same parts with the same keys, so a receiver that keeps
//! the last body per key holds every record exactly once. Delivery itself
//! is at least once.
//!
//! A request that fails to connect, times out, or is answered 408, 429 or
//! 5xx is tried again ([`super::retrying`]) for up to `retry-for`; then, or
//! at once for any other answer, the part fails: `on-error = "fail"` (the default) fails the run
//! with the URL, the status and the start of the answer; `"skip"` logs it
//! and drops the part.

use std::time::Duration;

use super::{BatchInfo, Sink, SinkContext, SinkError};
use crate::config::{Key, KindContext, Reach, Settings, SinkConfig, SinkSpec, SinkType, SpecError};
use crate::failpoint::crash_point;
use crate::record::Partition;

/// What a part that cannot be delivered does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpOnError {
    /// Fail the run.
    Fail,
    /// Log it and go on without it.
    Skip,
}

/// Settings of the HTTP sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSinkSpec {
    /// Where to send.
    pub url: String,
    /// `host:port` of the URL (what a tenant needs granted).
    pub address: String,
    /// `POST` or `PUT`.
    pub method: String,
    /// Headers sent with every request.
    pub headers: Vec<(String, String)>,
    /// Records per request.
    pub records_per_request: usize,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// One request's time limit.
    pub timeout: Duration,
    /// How long a part is retried.
    pub retry_for: Duration,
    /// A PEM file of certificates to trust besides the public ones.
    pub ca_file: Option<std::path::PathBuf>,
    /// What a part that cannot be delivered does.
    pub on_error: HttpOnError,
}

impl SinkType for HttpSinkSpec {
    const NAME: &'static str = "http";
    const KEYS: &'static [Key] = &[
        Key::text("url"),
        Key::text("method"),
        Key::any("headers"),
        Key::integer("records-per-request"),
        Key::integer("concurrency"),
        Key::text("timeout"),
        Key::text("retry-for"),
        Key::text("ca-file"),
        Key::text("on-error"),
    ];

    fn parse(settings: &Settings, cx: &KindContext<'_>) -> Result<Self, SpecError> {
        let url = crate::config::required(settings.text("url"), "url", cx.offset, "an `http` sink")?;
        let at = |key: &str| settings.text(key).map_or(cx.offset, |t| t.span().start);
        let address = super::retrying::address_of(url).map_err(|message| (at("url"), message))?;
        let method = match settings.text("method").map(|m| m.get_ref().to_ascii_uppercase()) {
            None => "POST".to_owned(),
            Some(method) if method == "POST" || method == "PUT" => method,
            Some(other) => {
                return Err((
                    at("method"),
                    format!("unknown method `{other}` (expected POST or PUT)"),
                ));
            }
        };
        let mut headers = Vec::new();
        if let Some(table) = settings.any("headers") {
            let toml::Value::Table(entries) = table.get_ref() else {
                return Err((
                    table.span().start,
                    "`headers` must be a table of strings".to_owned(),
                ));
            };
            for (name, value) in entries {
                let toml::Value::String(value) = value else {
                    return Err((table.span().start, format!("header `{name}` must be a string")));
                };
                let valid = reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_ok()
                    && reqwest::header::HeaderValue::from_str(value).is_ok();
                if !valid {
                    return Err((table.span().start, format!("invalid header `{name}`")));
                }
                headers.push((name.clone(), value.clone()));
            }
        }
        let count = |key: &str, default: usize, max: usize| -> Result<usize, SpecError> {
            match settings.integer(key) {
                None => Ok(default),
                Some(n) if (1..=max as i64).contains(n.get_ref()) => Ok(*n.get_ref() as usize),
                Some(n) => Err((n.span().start, format!("`{key}` must be between 1 and {max}"))),
            }
        };
        let duration = |key: &str, default: Duration| -> Result<Duration, SpecError> {
            settings.text(key).map_or(Ok(default), crate::config::duration)
        };
        let on_error = match settings.text("on-error").map(|t| t.get_ref().as_str()) {
            None | Some("fail") => HttpOnError::Fail,
            Some("skip") => HttpOnError::Skip,
            Some(other) => {
                return Err((
                    at("on-error"),
                    format!("unknown on-error `{other}` (expected fail or skip)"),
                ));
            }
        };
        Ok(Self {
            url: url.to_owned(),
            address,
            method,
            headers,
            records_per_request: count("records-per-request", 10_000, 10_000_000)?,
            concurrency: count("concurrency", 4, 64)?,
            timeout: duration("timeout", Duration::from_secs(30))?,
            retry_for: duration("retry-for", Duration::from_secs(60))?,
            ca_file: match settings.text("ca-file") {
                Some(path) => Some(cx.dir(path.get_ref(), "ca-file")?.path().to_owned()),
                None => None,
            },
            on_error,
        })
    }
}

impl SinkConfig for HttpSinkSpec {
    fn reach(&self) -> Reach {
        Reach::Network(vec![self.address.clone()])
    }

    fn build(&self, spec: &SinkSpec, cx: &SinkContext<'_>) -> Box<dyn Sink> {
        Box::new(HttpSink {
            spec: self.clone(),
            name: spec.name.clone(),
            pipeline: cx.pipeline.to_owned(),
            window_ms: cx.window_ms,
            client: None,
            run: (!cx.checkpointed).then(|| format!("run-{}", crate::source::now_ms())),
        })
    }
}

/// Sends batches over HTTP.
pub struct HttpSink {
    spec: HttpSinkSpec,
    name: String,
    pipeline: String,
    window_ms: Option<i64>,
    client: Option<reqwest::blocking::Client>,
    /// Without a checkpoint, batch ids start again at 0 every run: the run's
    /// start then joins the idempotency key.
    run: Option<String>,
}

/// Why a part was not delivered.
struct Undelivered {
    part: usize,
    message: String,
}

impl HttpSink {
    fn error(&self, message: String) -> SinkError {
        SinkError {
            sink: self.name.clone(),
            message,
            superseded: false,
        }
    }

    /// Sends one part until it is delivered, it fails for good, or
    /// `retry-for` passes.
    fn send(
        &self,
        client: &reqwest::blocking::Client,
        batch: u64,
        (part, parts): (usize, usize),
        body: &[u8],
    ) -> Result<(), Undelivered> {
        let key = match &self.run {
            Some(run) => format!("{}/{}/{run}/{batch}/{part}", self.pipeline, self.name),
            None => format!("{}/{}/{batch}/{part}", self.pipeline, self.name),
        };
        let method =
            reqwest::Method::from_bytes(self.spec.method.as_bytes()).unwrap_or(reqwest::Method::POST);
        let retry = super::retrying::Retry {
            timeout: self.spec.timeout,
            retry_for: self.spec.retry_for,
        };
        let what = format!("{} {}", self.spec.method, self.spec.url);
        retry
            .send(&what, || {
                let mut request = client
                    .request(method.clone(), &self.spec.url)
                    .header("content-type", "application/x-ndjson")
                    .header("idempotency-key", &key)
                    .header("weir-batch", batch)
                    .header("weir-part", part)
                    .header("weir-parts", parts)
                    .body(body.to_vec());
                for (name, value) in &self.spec.headers {
                    request = request.header(name, value);
                }
                request
            })
            .map(drop)
            .map_err(|failed| Undelivered {
                part,
                message: failed.message,
            })
    }
}

impl Sink for HttpSink {
    fn open(&mut self) -> Result<(), SinkError> {
        let client = super::retrying::client(
            self.spec.timeout,
            self.spec.ca_file.as_deref(),
            self.spec.concurrency,
        )
        .map_err(|message| self.error(message))?;
        self.client = Some(client);
        Ok(())
    }

    fn write(&mut self, batch: BatchInfo, partitions: &[Partition]) -> Result<(), SinkError> {
        let records: Vec<_> = partitions
            .iter()
            .flatten()
            .flat_map(crate::record::Batch::iter)
            .collect();
        if records.is_empty() {
            return Ok(());
        }
        if self.client.is_none() {
            self.open()?;
        }
        let client = self.client.clone().expect("opened above");
        let mut bodies = Vec::new();
        for chunk in records.chunks(self.spec.records_per_request) {
            let mut body = Vec::new();
            for record in chunk {
                super::files::write_json(&mut body, *record, self.window_ms)
                    .map_err(|e| self.error(format!("cannot encode a record: {e}")))?;
            }
            bodies.push(body);
        }
        let parts = bodies.len();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let failures = std::sync::Mutex::new(Vec::new());
        let this = &*self;
        std::thread::scope(|scope| {
            for _ in 0..this.spec.concurrency.min(parts) {
                scope.spawn(|| {
                    loop {
                        let part = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(body) = bodies.get(part) else { break };
                        if let Err(failure) = this.send(&client, batch.id, (part, parts), body) {
                            failures.lock().unwrap_or_else(|e| e.into_inner()).push(failure);
                        } else {
                            crash_point("http-sent");
                        }
                    }
                });
            }
        });
        let mut failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
        failures.sort_by_key(|failure| failure.part);
        match (failures.first(), self.spec.on_error) {
            (None, _) => Ok(()),
            (Some(first), HttpOnError::Fail) => Err(self.error(format!(
                "batch {} part {} of {parts}: {}{}",
                batch.id,
                first.part,
                first.message,
                if failures.len() > 1 {
                    format!(" (and {} more part(s))", failures.len() - 1)
                } else {
                    String::new()
                }
            ))),
            (Some(_), HttpOnError::Skip) => {
                for failure in &failures {
                    tracing::error!(sink = %self.name, batch = batch.id, part = failure.part, "dropped (on-error = \"skip\"): {}", failure.message);
                }
                Ok(())
            }
        }
    }
}
