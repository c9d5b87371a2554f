//! The Elasticsearch / OpenSearch sink (`type = "elasticsearch"`): each
//! batch indexed through the `_bulk` API, one document per record, its id
//! derived from the record (`{key}` by default; `{key}@{window}` for a
//! window stage's output), so a batch written again after a crash
//! overwrites the same documents: idempotent, effectively exactly once.
//! A batch goes in bulk requests of `records-per-request` documents, up to
//! `concurrency` of them at once.
//!
//! Indexes are templates (`{pipeline}`, `{sink}`, `{date}`: one per day of
//! batch time, as `logs-YYYY.MM.DD`). A bulk request that fails to connect,
//! times out or is answered 429 / 5xx is tried again ([`super::retrying`]);
//! items answered 429 are sent again, the other failed items (a mapping
//! conflict, say) fail the run (`on-error = "fail"`) or are indexed into
//! the dead-letter index with the reason (`"dead-letter"`).

use std::time::{Duration, Instant};

use super::retrying::Retry;
use super::template::{Field, Template, Values};
use super::{BatchInfo, Sink, SinkContext, SinkError};
use crate::config::{Key, KindContext, Reach, Settings, SinkConfig, SinkSpec, SinkType, SpecError};
use crate::failpoint::crash_point;
use crate::record::{Partition, RecordRef};

const INDEX_FIELDS: [Field; 3] = [Field::Pipeline, Field::Sink, Field::Date];
const ID_FIELDS: [Field; 5] = [
    Field::Key,
    Field::Pipeline,
    Field::Sink,
    Field::Batch,
    Field::Window,
];

/// What a document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentFormat {
    /// `{"key", "value", "timestamp"}` (and `"window"`), as the files sink's `jsonl`.
    Record,
    /// The record's value, a JSON object.
    Json,
}

/// Settings of the Elasticsearch sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElasticsearchSpec {
    /// The cluster's base URL.
    pub url: String,
    /// `host:port` of the URL.
    pub address: String,
    /// The index of each document.
    pub index: Template,
    /// Its id; `None`: `{key}`, or `{key}@{window}` for a window stage's output.
    pub id: Option<Template>,
    /// What a document is.
    pub format: DocumentFormat,
    /// Documents per bulk request.
    pub records_per_request: usize,
    /// Bulk requests in flight at once.
    pub concurrency: usize,
    /// One request's time limit.
    pub timeout: Duration,
    /// How long a request (or a document answered 429) is retried.
    pub retry_for: Duration,
    /// User and password for basic authentication.
    pub credentials: Option<(String, String)>,
    /// PEM certificates to trust besides the public ones.
    pub ca_file: Option<std::path::PathBuf>,
    /// Where documents the cluster refuses go; `None`: they fail the run.
    pub dead_letter_index: Option<Template>,
}

impl SinkType for ElasticsearchSpec {
    const NAME: &'static str = "elasticsearch";
    const KEYS: &'static [Key] = &[
        Key::text("url"),
        Key::text("index"),
        Key::text("id"),
        Key::text("format"),
        Key::integer("records-per-request"),
        Key::integer("concurrency"),
        Key::text("timeout"),
        Key::text("retry-for"),
        Key::text("username"),
        Key::text("password"),
        Key::text("ca-file"),
        Key::text("on-error"),
        Key::text("dead-letter-index"),
    ];

    fn parse(settings: &Settings, cx: &KindContext<'_>) -> Result<Self, SpecError> {
        let context = "an `elasticsearch` sink";
        let url = crate::config::required(settings.text("url"), "url", cx.offset, context)?;
        let at = |key: &str| settings.text(key).map_or(cx.offset, |t| t.span().start);
        let address = super::retrying::address_of(url).map_err(|message| (at("url"), message))?;
        let template = |key: &str, fields: &[Field]| -> Result<Option<Template>, SpecError> {
            settings
                .text(key)
                .map(|text| Template::parse(text.get_ref(), fields).map_err(|e| (text.span().start, e)))
                .transpose()
        };
        let index = template("index", &INDEX_FIELDS)?
            .unwrap_or_else(|| Template::parse("{pipeline}", &INDEX_FIELDS).expect("a valid default"));
        let format = match settings.text("format").map(|t| t.get_ref().as_str()) {
            None | Some("record") => DocumentFormat::Record,
            Some("json") => DocumentFormat::Json,
            Some(other) => {
                return Err((
                    at("format"),
                    format!("unknown format `{other}` (expected record or json)"),
                ));
            }
        };
        let dead_letter_index = match settings.text("on-error").map(|t| t.get_ref().as_str()) {
            None | Some("fail") => None,
            Some("dead-letter") => Some(template("dead-letter-index", &INDEX_FIELDS)?.unwrap_or_else(|| {
                Template::parse("{pipeline}-dead-letters", &INDEX_FIELDS).expect("a valid default")
            })),
            Some(other) => {
                return Err((
                    at("on-error"),
                    format!("unknown on-error `{other}` (expected fail or dead-letter)"),
                ));
            }
        };
        let credentials = match (settings.text("username"), settings.text("password")) {
            (Some(user), Some(password)) => Some((user.get_ref().clone(), password.get_ref().clone())),
            (None, None) => None,
            _ => return Err((cx.offset, "`username` and `password` go together".to_owned())),
        };
        let records_per_request = match settings.integer("records-per-request") {
            None => 1_000,
            Some(n) if (1..=1_000_000).contains(n.get_ref()) => *n.get_ref() as usize,
            Some(n) => {
                return Err((
                    n.span().start,
                    "`records-per-request` must be between 1 and 1000000".to_owned(),
                ));
            }
        };
        let duration =
            |key: &str, default: Duration| settings.text(key).map_or(Ok(default), crate::config::duration);
        Ok(Self {
            url: url.trim_end_matches('/').to_owned(),
            address,
            index,
            id: template("id", &ID_FIELDS)?,
            format,
            records_per_request,
            concurrency: match settings.integer("concurrency") {
                None => 1,
                Some(n) if (1..=64).contains(n.get_ref()) => *n.get_ref() as usize,
                Some(n) => {
                    return Err((
                        n.span().start,
                        "`concurrency` must be between 1 and 64".to_owned(),
                    ));
                }
            },
            timeout: duration("timeout", Duration::from_secs(30))?,
            retry_for: duration("retry-for", Duration::from_secs(60))?,
            credentials,
            ca_file: match settings.text("ca-file") {
                Some(path) => Some(cx.dir(path.get_ref(), "ca-file")?.path().to_owned()),
                None => None,
            },
            dead_letter_index,
        })
    }
}

impl SinkConfig for ElasticsearchSpec {
    fn reach(&self) -> Reach {
        Reach::Network(vec![self.address.clone()])
    }

    fn build(&self, spec: &SinkSpec, cx: &SinkContext<'_>) -> Box<dyn Sink> {
        let default_id = if cx.window_ms.is_some() {
            "{key}@{window}"
        } else {
            "{key}"
        };
        let id = self
            .id
            .clone()
            .unwrap_or_else(|| Template::parse(default_id, &ID_FIELDS).expect("a valid default"));
        Box::new(ElasticsearchSink {
            spec: self.clone(),
            id,
            name: spec.name.clone(),
            pipeline: cx.pipeline.to_owned(),
            window_ms: cx.window_ms,
            client: None,
            run: (!cx.checkpointed).then(|| format!("r{}-", crate::source::now_ms())),
        })
    }
}

/// Indexes batches into Elasticsearch.
pub struct ElasticsearchSink {
    spec: ElasticsearchSpec,
    id: Template,
    name: String,
    pipeline: String,
    window_ms: Option<i64>,
    client: Option<reqwest::blocking::Client>,
    /// Without a checkpoint, batch ids start again at 0 every run: the ids
    /// made from positions then start with the run's start.
    run: Option<String>,
}

/// One document to index.
struct Document {
    index: String,
    id: String,
    source: String,
}

/// A document the cluster refused, and why.
struct Refused {
    document: Document,
    status: u64,
    reason: String,
}

impl ElasticsearchSink {
    fn error(&self, message: String) -> SinkError {
        SinkError {
            sink: self.name.clone(),
            message,
            superseded: false,
        }
    }

    /// The document of `record`, the `n`th of batch `batch`.
    fn document(&self, batch: BatchInfo, n: usize, record: RecordRef<'_>) -> Result<Document, String> {
        let window_start = self.window_ms.map(|length| record.timestamp + 1 - length);
        let values = Values {
            pipeline: &self.pipeline,
            sink: &self.name,
            batch: batch.id,
            batch_time_ms: batch.time_ms,
            key: record.key.unwrap_or_default(),
            value: record.value,
            window_start,
        };
        let mut buffer = Vec::new();
        self.spec.index.render(&mut buffer, &values);
        let index = String::from_utf8_lossy(&buffer).to_lowercase();
        // A record without a key, under an id made from keys: its place in
        // the batch (the same when the batch is written again).
        let id = if record.key.is_none() && self.id.uses(Field::Key) {
            format!("{}b{}-{n}", self.run.as_deref().unwrap_or_default(), batch.id)
        } else {
            self.id.render(&mut buffer, &values);
            String::from_utf8_lossy(&buffer).into_owned()
        };
        let source = match self.spec.format {
            DocumentFormat::Record => {
                let mut line = Vec::new();
                super::files::write_json(&mut line, record, self.window_ms).map_err(|e| e.to_string())?;
                line.pop();
                String::from_utf8(line).map_err(|e| e.to_string())?
            }
            DocumentFormat::Json => match serde_json::from_slice::<serde_json::Value>(record.value) {
                Ok(value @ serde_json::Value::Object(_)) => value.to_string(),
                _ => {
                    return Err(format!(
                        "the value of the record of key {:?} is not a JSON object (format = \"json\")",
                        String::from_utf8_lossy(record.key.unwrap_or_default())
                    ));
                }
            },
        };
        Ok(Document { index, id, source })
    }

    /// Sends one bulk request of `chunk`; sorts its documents into those
    /// answered 429 (`again`) and those refused for good.
    fn bulk(
        &self,
        client: &reqwest::blocking::Client,
        chunk: Vec<Document>,
        again: &mut Vec<Document>,
        refused: &mut Vec<Refused>,
    ) -> Result<(), String> {
        let retry = Retry {
            timeout: self.spec.timeout,
            retry_for: self.spec.retry_for,
        };
        let url = format!("{}/_bulk", self.spec.url);
        let what = format!("POST {url}");
        let mut body = String::new();
        for document in &chunk {
            let action = serde_json::json!({"index": {"_index": document.index, "_id": document.id}});
            body.push_str(&action.to_string());
            body.push('\n');
            body.push_str(&document.source);
            body.push('\n');
        }
        let answer = retry
            .send(&what, || {
                let request = client
                    .post(&url)
                    .header("content-type", "application/x-ndjson")
                    .body(body.clone());
                match &self.spec.credentials {
                    Some((user, password)) => request.basic_auth(user, Some(password)),
                    None => request,
                }
            })
            .map_err(|failed| failed.message)?;
        crash_point("es-bulk-sent");
        let answer: serde_json::Value =
            serde_json::from_str(&answer).map_err(|e| format!("{what}: the answer is not JSON: {e}"))?;
        let items = answer["items"].as_array().cloned().unwrap_or_default();
        if items.len() != chunk.len() {
            return Err(format!(
                "{what}: the answer lists {} items for {} documents",
                items.len(),
                chunk.len()
            ));
        }
        for (document, item) in chunk.into_iter().zip(items) {
            let result = item
                .as_object()
                .and_then(|o| o.values().next())
                .cloned()
                .unwrap_or_default();
            let status = result["status"].as_u64().unwrap_or(0);
            match status {
                200..=299 => {}
                // Too many requests, or a shard not ready: sent again.
                429 | 500..=599 => again.push(document),
                _ => refused.push(Refused {
                    document,
                    status,
                    reason: result["error"]["reason"]
                        .as_str()
                        .or_else(|| result["error"]["type"].as_str())
                        .unwrap_or("refused")
                        .to_owned(),
                }),
            }
        }
        Ok(())
    }

    /// Indexes `documents` (one bulk request each `records-per-request`, up
    /// to `concurrency` at once); returns those refused for good. Documents
    /// answered 429 are sent again until `retry-for` has passed.
    fn index(&self, documents: Vec<Document>) -> Result<Vec<Refused>, String> {
        let client = self.client.as_ref().expect("opened");
        let mut refused = Vec::new();
        let mut pending = documents;
        let deadline = Instant::now() + self.spec.retry_for;
        let mut backoff = Duration::from_millis(100);
        while !pending.is_empty() {
            let mut chunks = std::collections::VecDeque::new();
            let mut rest = pending.into_iter().peekable();
            while rest.peek().is_some() {
                chunks.push_back(
                    rest.by_ref()
                        .take(self.spec.records_per_request)
                        .collect::<Vec<_>>(),
                );
            }
            let queue = std::sync::Mutex::new(chunks);
            let sorted = std::sync::Mutex::new((Vec::new(), Vec::new(), None::<String>));
            let workers = self
                .spec
                .concurrency
                .min(queue.lock().unwrap_or_else(|e| e.into_inner()).len());
            std::thread::scope(|scope| {
                for _ in 0..workers {
                    scope.spawn(|| {
                        let (mut again, mut failed) = (Vec::new(), Vec::new());
                        let mut error = None;
                        while error.is_none() {
                            let Some(chunk) = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front()
                            else {
                                break;
                            };
                            error = self.bulk(client, chunk, &mut again, &mut failed).err();
                        }
                        let mut sorted = sorted.lock().unwrap_or_else(|e| e.into_inner());
                        sorted.0.append(&mut again);
                        sorted.1.append(&mut failed);
                        if sorted.2.is_none() {
                            sorted.2 = error;
                        }
                    });
                }
            });
            let (again, mut failed, error) = sorted.into_inner().unwrap_or_else(|e| e.into_inner());
            if let Some(error) = error {
                return Err(error);
            }
            refused.append(&mut failed);
            if !again.is_empty() {
                if Instant::now() >= deadline {
                    return Err(format!(
                        "POST {}/_bulk: {} documents still answered 429 Too Many Requests after {}",
                        self.spec.url,
                        again.len(),
                        humantime::format_duration(self.spec.retry_for)
                    ));
                }
                tracing::warn!(sink = %self.name, documents = again.len(), "documents answered 429: sending them again");
                std::thread::sleep(backoff.min(deadline.saturating_duration_since(Instant::now())));
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            pending = again;
        }
        Ok(refused)
    }
}

impl Sink for ElasticsearchSink {
    fn open(&mut self) -> Result<(), SinkError> {
        let client = super::retrying::client(
            self.spec.timeout,
            self.spec.ca_file.as_deref(),
            self.spec.concurrency,
        )
        .map_err(|m| self.error(m))?;
        self.client = Some(client);
        Ok(())
    }

    fn write(&mut self, batch: BatchInfo, partitions: &[Partition]) -> Result<(), SinkError> {
        if self.client.is_none() {
            self.open()?;
        }
        let mut documents = Vec::new();
        let mut unusable = Vec::new();
        for (n, record) in partitions
            .iter()
            .flatten()
            .flat_map(crate::record::Batch::iter)
            .enumerate()
        {
            match self.document(batch, n, record) {
                Ok(document) => documents.push(document),
                Err(reason) => unusable.push((record_text(record), reason)),
            }
        }
        // Two records of a batch with one id: the later one is the document
        // (whatever order the bulk requests go in).
        let mut last = std::collections::HashMap::new();
        for (at, document) in documents.iter().enumerate() {
            last.insert((document.index.clone(), document.id.clone()), at);
        }
        if last.len() < documents.len() {
            let mut at = 0;
            documents.retain(|document| {
                let keep = last[&(document.index.clone(), document.id.clone())] == at;
                at += 1;
                keep
            });
        }
        if documents.is_empty() && unusable.is_empty() {
            return Ok(());
        }
        let refused = self
            .index(documents)
            .map_err(|m| self.error(format!("batch {}: {m}", batch.id)))?;
        if refused.is_empty() && unusable.is_empty() {
            return Ok(());
        }
        let Some(dead_letters) = &self.spec.dead_letter_index else {
            let first = refused
                .first()
                .map(|r| {
                    format!(
                        "document `{}` of index `{}`: {} {}",
                        r.document.id, r.document.index, r.status, r.reason
                    )
                })
                .or_else(|| unusable.first().map(|(_, reason)| reason.clone()))
                .unwrap_or_default();
            return Err(self.error(format!(
                "batch {}: {} document(s) refused; the first: {first}",
                batch.id,
                refused.len() + unusable.len()
            )));
        };
        let values = Values {
            pipeline: &self.pipeline,
            sink: &self.name,
            batch: batch.id,
            batch_time_ms: batch.time_ms,
            key: &[],
            value: &[],
            window_start: None,
        };
        let mut buffer = Vec::new();
        dead_letters.render(&mut buffer, &values);
        let index = String::from_utf8_lossy(&buffer).to_lowercase();
        let mut letters: Vec<Document> = refused
            .iter()
            .map(|r| Document {
                index: index.clone(),
                id: format!("{}/{}", r.document.index, r.document.id),
                source: serde_json::json!({
                    "index": r.document.index,
                    "id": r.document.id,
                    "status": r.status,
                    "reason": r.reason,
                    "batch": batch.id,
                    "document": r.document.source,
                })
                .to_string(),
            })
            .collect();
        for (n, (record, reason)) in unusable.iter().enumerate() {
            letters.push(Document {
                index: index.clone(),
                id: format!(
                    "unusable/{}{}/{n}",
                    self.run.as_deref().unwrap_or_default(),
                    batch.id
                ),
                source: serde_json::json!({"reason": reason, "batch": batch.id, "record": record})
                    .to_string(),
            });
        }
        let count = letters.len();
        let again = self
            .index(letters)
            .map_err(|m| self.error(format!("batch {}: the dead letters: {m}", batch.id)))?;
        if let Some(r) = again.first() {
            return Err(self.error(format!(
                "batch {}: the dead-letter index `{index}` refused a document too: {} {}",
                batch.id, r.status, r.reason
            )));
        }
        tracing::warn!(sink = %self.name, batch = batch.id, count, %index, "documents refused: written to the dead-letter index");
        Ok(())
    }
}

/// A record as text, for a dead letter.
fn record_text(record: RecordRef<'_>) -> String {
    let mut line = Vec::new();
    let _ = super::files::write_json(&mut line, record, None);
    String::from_utf8_lossy(&line).trim_end().to_owned()
}
