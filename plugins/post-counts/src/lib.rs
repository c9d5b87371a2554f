//! Sink: POSTs each partition of each batch to `url` as JSON lines, one
//! `{"key": ..., "value": ...}` per record (word counts, say), with the
//! headers an idempotent receiver needs:
//!
//! - `Idempotency-Key: <pipeline>/<sink>/<batch>/<partition>`, the same for
//!   every try of the same write (a retry, or a re-run after a crash);
//! - `Weir-Batch`, `Weir-Part` (the partition) and `Weir-Parts`.
//!
//! A receiver that keeps the last body per key holds every record exactly
//! once. A 5xx, 408, 429 or a failure to connect is reported as transient
//! (the host retries it), any other refusal as permanent.
//!
//! Config: `url` (required), an `http://` or `https://` URL whose
//! `host:port` the sink's `allow-http` must list.

use weir_guest::http::Request;
use weir_guest::{Batch, BatchInfo, Config, Error, SinkError};

fn setup(config: &Config) -> Result<(), Error> {
    let url = config.require("url")?;
    if !url.starts_with("http://") && !url.starts_with("https://") {
        weir_guest::bail!("`url` must be an http:// or https:// URL, not {url:?}");
    }
    Ok(())
}

#[weir_guest::sink(init = setup)]
fn post(batch: &BatchInfo, records: &Batch<'_>) -> Result<(), SinkError> {
    let url = weir_guest::config().require("url")?;
    let mut body = Vec::with_capacity(records.data_len() + 24 * records.len());
    for record in records {
        // `{"key":...,"value":...}`: each string escaped by serde_json,
        // nothing allocated per record.
        body.extend_from_slice(b"{\"key\":");
        serde_json::to_writer(&mut body, &record.key_str()?).map_err(SinkError::permanent)?;
        body.extend_from_slice(b",\"value\":");
        serde_json::to_writer(&mut body, record.value_str()?).map_err(SinkError::permanent)?;
        body.extend_from_slice(b"}\n");
    }
    Request::post(url)
        .header("content-type", "application/x-ndjson")
        .header("idempotency-key", batch.idempotency_key())
        .header("weir-batch", batch.id().to_string())
        .header("weir-part", batch.partition().to_string())
        .header("weir-parts", batch.partitions().to_string())
        .body(body)
        .send()?
        .error_for_status()?;
    Ok(())
}
