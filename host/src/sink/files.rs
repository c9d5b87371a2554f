//! The files sink: one directory per batch under the output directory, named
//! `batch-<id, zero-padded to 12 digits>`, holding one `part-<partition>` file
//! per non-empty partition. Each directory is written under a hidden
//! temporary name, synced, then renamed into place, so readers never see a
//! partial batch and a re-run of the same batch replaces it whole. Batches
//! with no records write nothing.
//!
//! Formats: `text` — `key<TAB>value` per line (the value alone without a
//! key); `jsonl` — `{"key": ..., "value": ..., "timestamp": ...}` per line,
//! with key and value as strings when they are valid UTF-8 and as arrays of
//! byte values otherwise (a missing key is `null`). Records of a window
//! stage also get `"window": {"start": ..., "end": ...}` (milliseconds, end
//! exclusive; a window's records carry its last millisecond as timestamp).

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use cap_std::fs::Dir;

use super::{BatchInfo, Sink, SinkContext, SinkError};
use crate::config::{
    DirPath, Key, KindContext, Settings, SinkConfig, SinkSpec, SinkType, SpecError, required,
};
use crate::record::{Partition, RecordRef};

/// Record formats of the files sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// `key<TAB>value` per line (just `value` without a key).
    Text,
    /// One JSON object per line: key, value, timestamp.
    Jsonl,
}

/// Where the files sink writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilesTarget {
    /// A local directory.
    Local(DirPath),
    /// S3-compatible object storage (`path = "s3://bucket/prefix"`).
    #[cfg(feature = "object-store")]
    Object(super::object_files::ObjectTarget),
}

/// Settings of the files sink (`type = "files"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilesSinkSpec {
    /// The output directory or object-storage prefix.
    pub target: FilesTarget,
    /// Record format.
    pub format: FileFormat,
}

/// The keys of an `s3://` path.
const OBJECT_KEYS: [&str; 5] = [
    "endpoint",
    "region",
    "access-key-id",
    "secret-access-key",
    "credentials",
];

impl SinkType for FilesSinkSpec {
    const NAME: &'static str = "files";
    const KEYS: &'static [Key] = &[
        Key::text("path"),
        Key::text("format"),
        Key::text("endpoint"),
        Key::text("region"),
        Key::text("access-key-id"),
        Key::text("secret-access-key"),
        Key::text("credentials"),
    ];

    fn parse(settings: &Settings, cx: &KindContext<'_>) -> Result<Self, SpecError> {
        let dir = required(settings.text("path"), "path", cx.offset, "a `files` sink")?;
        let at = settings.text("path").map_or(cx.offset, |p| p.span().start);
        let format = match settings
            .text("format")
            .map(|f| (f.get_ref().as_str(), f.span().start))
        {
            None | Some(("text", _)) => FileFormat::Text,
            Some(("jsonl", _)) => FileFormat::Jsonl,
            Some((other, at)) => {
                return Err((at, format!("unknown format `{other}` (expected text or jsonl)")));
            }
        };
        if dir.starts_with("s3://") {
            #[cfg(feature = "object-store")]
            {
                let target = super::object_files::ObjectTarget::parse(
                    dir,
                    &crate::objects::ObjectKeys::of(settings),
                    at,
                )?;
                if cx.paths.confined() && target.credentials == crate::objects::ObjectCredentials::Environment
                {
                    let at = settings.text("credentials").map_or(at, |c| c.span().start);
                    return Err((
                        at,
                        "a server's pipelines may not sign with the server's own AWS credentials (what the environment has): set access-key-id and secret-access-key, or credentials = \"anonymous\" for unsigned requests".to_owned(),
                    ));
                }
                return Ok(Self {
                    target: FilesTarget::Object(target),
                    format,
                });
            }
            #[cfg(not(feature = "object-store"))]
            return Err((
                at,
                "this weir was built without the `object-store` feature: it cannot write to s3://".to_owned(),
            ));
        }
        if let Some(key) = OBJECT_KEYS.iter().find_map(|key| settings.text(key)) {
            return Err((
                key.span().start,
                "`endpoint`, `region`, `credentials` and the access keys are for an `s3://` path".to_owned(),
            ));
        }
        Ok(Self {
            target: FilesTarget::Local(cx.dir(dir, "path")?),
            format,
        })
    }
}

impl FilesSinkSpec {
    /// The same sink writing into `relative` below its directory or prefix
    /// (a cluster task's own place, so that tasks' batch ids never meet).
    pub fn within(&self, relative: &str) -> Self {
        let target = match &self.target {
            FilesTarget::Local(dir) => FilesTarget::Local(dir.join(relative)),
            #[cfg(feature = "object-store")]
            FilesTarget::Object(target) => FilesTarget::Object(target.child(relative)),
        };
        Self {
            target,
            format: self.format,
        }
    }
}

impl SinkConfig for FilesSinkSpec {
    fn build(&self, spec: &SinkSpec, cx: &SinkContext<'_>) -> Box<dyn Sink> {
        match &self.target {
            FilesTarget::Local(dir) => Box::new(
                FilesSink::new(spec.name.clone(), dir.clone(), self.format).with_windows(cx.window_ms),
            ),
            #[cfg(feature = "object-store")]
            FilesTarget::Object(target) => Box::new(super::object_files::ObjectFilesSink::new(
                spec.name.clone(),
                target.clone(),
                self.format,
                cx.window_ms,
                cx.checkpointed,
            )),
        }
    }

    fn reach(&self) -> crate::config::Reach {
        match &self.target {
            FilesTarget::Local(_) => crate::config::Reach::Files,
            #[cfg(feature = "object-store")]
            FilesTarget::Object(target) => crate::config::Reach::Network(vec![target.address()]),
        }
    }
}

/// Writes batches as files, through the output directory opened with
/// cap-std (nothing it writes can land outside it).
pub struct FilesSink {
    name: String,
    dir: DirPath,
    opened: Option<Dir>,
    format: FileFormat,
    window_ms: Option<i64>,
}

impl FilesSink {
    /// Writes into `dir` in `format`.
    pub fn new(name: String, dir: DirPath, format: FileFormat) -> Self {
        Self {
            name,
            dir,
            opened: None,
            format,
            window_ms: None,
        }
    }

    /// Tags records with the window of length `window_ms` that ends just
    /// after their timestamp (for streams produced by a window stage).
    pub fn with_windows(mut self, window_ms: Option<i64>) -> Self {
        self.window_ms = window_ms;
        self
    }

    /// The directory of batch `id` under `dir`.
    pub fn batch_dir(dir: &Path, id: u64) -> PathBuf {
        dir.join(format!("batch-{id:012}"))
    }

    fn error(&self, message: String) -> SinkError {
        SinkError {
            sink: self.name.clone(),
            message,
            superseded: false,
        }
    }

    fn write_part(&self, file: std::fs::File, partition: &[crate::record::Batch]) -> std::io::Result<()> {
        let mut out = BufWriter::with_capacity(1 << 20, file);
        encode_partition(&mut out, self.format, self.window_ms, partition)?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    }
}

/// Writes the records of `partition` to `out` in `format` (records of a
/// window stage of length `window_ms` tagged with their window).
pub(crate) fn encode_partition(
    out: &mut impl Write,
    format: FileFormat,
    window_ms: Option<i64>,
    partition: &[crate::record::Batch],
) -> std::io::Result<()> {
    for record in partition.iter().flat_map(|chunk| chunk.iter()) {
        match format {
            FileFormat::Text => write_text(out, record)?,
            FileFormat::Jsonl => write_json(out, record, window_ms)?,
        }
    }
    Ok(())
}

fn write_text(out: &mut impl Write, record: RecordRef<'_>) -> std::io::Result<()> {
    if let Some(key) = record.key {
        out.write_all(key)?;
        out.write_all(b"\t")?;
    }
    out.write_all(record.value)?;
    out.write_all(b"\n")
}

/// Key or value bytes in `jsonl`: a string when they are UTF-8, else an
/// array of byte values.
struct JsonBytes<'a>(&'a [u8]);

impl serde::Serialize for JsonBytes<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(self.0) {
            Ok(text) => serializer.serialize_str(text),
            Err(_) => serializer.collect_seq(self.0),
        }
    }
}

/// One `jsonl` line, serialized straight from the record's bytes (no
/// allocation per record). The fields are in the order of their names, as
/// they have always been written.
#[derive(serde::Serialize)]
struct JsonRecord<'a> {
    key: Option<JsonBytes<'a>>,
    timestamp: i64,
    value: JsonBytes<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    window: Option<JsonWindow>,
}

/// A window record's window: `end` exclusive, milliseconds.
#[derive(serde::Serialize)]
struct JsonWindow {
    end: i64,
    start: i64,
}

/// Writes `record` as one `jsonl` line (also the HTTP sink's body format).
pub(crate) fn write_json(
    out: &mut impl Write,
    record: RecordRef<'_>,
    window_ms: Option<i64>,
) -> std::io::Result<()> {
    let line = JsonRecord {
        key: record.key.map(JsonBytes),
        timestamp: record.timestamp,
        value: JsonBytes(record.value),
        window: window_ms.map(|length| {
            let end = record.timestamp + 1;
            JsonWindow {
                end,
                start: end - length,
            }
        }),
    };
    serde_json::to_writer(&mut *out, &line)?;
    out.write_all(b"\n")
}

impl Sink for FilesSink {
    fn open(&mut self) -> Result<(), SinkError> {
        let opened = self.dir.open(true).map_err(|e| {
            self.error(format!(
                "cannot create the output directory {}: {e}",
                self.dir.path().display()
            ))
        })?;
        self.opened = Some(opened);
        Ok(())
    }

    fn write(&mut self, batch: BatchInfo, partitions: &[Partition]) -> Result<(), SinkError> {
        if partitions.iter().flatten().all(|chunk| chunk.is_empty()) {
            return Ok(());
        }
        let Some(dir) = &self.opened else {
            return Err(self.error("written before it was opened".into()));
        };
        let target = format!("batch-{:012}", batch.id);
        let temporary = format!(".batch-{:012}.tmp", batch.id);
        let write = || -> std::io::Result<()> {
            if dir.exists(&temporary) {
                dir.remove_dir_all(&temporary)?;
            }
            dir.create_dir(&temporary)?;
            let parts = dir.open_dir(&temporary)?;
            let extension = match self.format {
                FileFormat::Text => "txt",
                FileFormat::Jsonl => "jsonl",
            };
            for (index, partition) in partitions.iter().enumerate() {
                if partition.iter().any(|chunk| !chunk.is_empty()) {
                    let file = parts.create(format!("part-{index:05}.{extension}"))?;
                    self.write_part(file.into_std(), partition)?;
                }
            }
            // (A cap-std `Dir` is an `O_PATH` descriptor, which cannot be
            // synced: the directory is opened for reading to sync it.)
            parts.open(".")?.sync_all()?;
            crate::failpoint::crash_point("sink-commit");
            if dir.exists(&target) {
                dir.remove_dir_all(&target)?;
            }
            dir.rename(&temporary, dir, &target)?;
            dir.open(".")?.sync_all()
        };
        write().map_err(|e| {
            let _ = dir.remove_dir_all(&temporary);
            self.error(format!(
                "cannot write batch {} to {}: {e}",
                batch.id,
                self.dir.path().join(&target).display()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `jsonl` line as a `serde_json::Value` object writes it (how it
    /// was written before records were serialized straight).
    fn as_value_object(record: RecordRef<'_>, window_ms: Option<i64>) -> Vec<u8> {
        let bytes = |bytes: &[u8]| match std::str::from_utf8(bytes) {
            Ok(text) => serde_json::Value::String(text.to_owned()),
            Err(_) => serde_json::Value::Array(bytes.iter().map(|&b| b.into()).collect()),
        };
        let mut object = serde_json::json!({
            "key": record.key.map(bytes),
            "value": bytes(record.value),
            "timestamp": record.timestamp,
        });
        if let Some(length) = window_ms {
            let end = record.timestamp + 1;
            object["window"] = serde_json::json!({"start": end - length, "end": end});
        }
        let mut line = serde_json::to_vec(&object).unwrap();
        line.push(b'\n');
        line
    }

    #[test]
    fn jsonl_lines_are_byte_for_byte_what_a_json_object_writes() {
        let records = [
            (Some(&b"word"[..]), &b"42"[..], 1_700_000_000_000),
            (None, &b"no key"[..], -5),
            (Some(&b"quote \" back\\ tab\t nul\0 \xc3\xa9"[..]), &b""[..], 0),
            (Some(&[0xff, 0x00, 0x7f][..]), &[0xc3, 0x28][..], i64::MAX - 1),
        ];
        for (key, value, timestamp) in records {
            let record = RecordRef {
                key,
                value,
                timestamp,
            };
            for window_ms in [None, Some(30_000)] {
                let mut line = Vec::new();
                write_json(&mut line, record, window_ms).unwrap();
                assert_eq!(
                    String::from_utf8_lossy(&line),
                    String::from_utf8_lossy(&as_value_object(record, window_ms)),
                    "{record:?} {window_ms:?}"
                );
            }
        }
    }
}
