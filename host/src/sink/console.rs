//! The console sink, like Spark's `print()`: for every batch a header with
//! the batch id, time, stream and record count, then the first `max-records` records
//! (`key<TAB>value`, or the value alone for records without a key; records
//! of a window stage are followed by their window, `[start, end)`).

use std::io::Write;

use super::{BatchInfo, Sink, SinkContext, SinkError};
use crate::config::{Key, KindContext, Settings, SinkConfig, SinkSpec, SinkType, SpecError, non_negative};
use crate::record::{Batch, Partition, partition_len};

/// Settings of the console sink (`type = "console"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsoleSpec {
    /// Records shown per batch.
    pub max_records: usize,
}

impl SinkType for ConsoleSpec {
    const NAME: &'static str = "console";
    const KEYS: &'static [Key] = &[Key::integer("max-records")];

    fn parse(settings: &Settings, _: &KindContext<'_>) -> Result<Self, SpecError> {
        Ok(Self {
            max_records: non_negative(settings.integer("max-records"), "max-records")?
                .map_or(10, |n| n as usize),
        })
    }
}

impl SinkConfig for ConsoleSpec {
    fn reach(&self) -> crate::config::Reach {
        crate::config::Reach::Process("standard output")
    }

    fn build(&self, spec: &SinkSpec, cx: &SinkContext<'_>) -> Box<dyn Sink> {
        Box::new(
            ConsoleSink::stdout(self.max_records)
                .with_windows(cx.window_ms)
                .with_stream(&spec.input),
        )
    }
}

/// Prints batches to a writer (standard output by default).
pub struct ConsoleSink {
    max_records: usize,
    out: Box<dyn Write + Send>,
    window_ms: Option<i64>,
    stream: Option<String>,
}

impl ConsoleSink {
    /// Prints to standard output.
    pub fn stdout(max_records: usize) -> Self {
        Self::new(max_records, Box::new(std::io::stdout()))
    }

    /// Prints to `out`.
    pub fn new(max_records: usize, out: Box<dyn Write + Send>) -> Self {
        Self {
            max_records,
            out,
            window_ms: None,
            stream: None,
        }
    }

    /// Names the stream in each header (useful when several console sinks print).
    pub fn with_stream(mut self, stream: impl Into<String>) -> Self {
        self.stream = Some(stream.into());
        self
    }

    /// Shows each record's window of length `window_ms` (for streams
    /// produced by a window stage).
    pub fn with_windows(mut self, window_ms: Option<i64>) -> Self {
        self.window_ms = window_ms;
        self
    }
}

/// Formats a batch time as RFC 3339 with milliseconds.
pub fn format_time(time_ms: i64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(time_ms.max(0) as u64);
    humantime::format_rfc3339_millis(time).to_string()
}

impl Sink for ConsoleSink {
    fn write(&mut self, batch: BatchInfo, partitions: &[Partition]) -> Result<(), SinkError> {
        let total: usize = partitions.iter().map(|p| partition_len(p)).sum();
        let mut text = String::new();
        text.push_str("-------------------------------------------\n");
        let stream = self
            .stream
            .as_ref()
            .map(|name| format!("  Stream: {name}"))
            .unwrap_or_default();
        text.push_str(&format!(
            "Batch: {}  Time: {}{stream}  Records: {total}\n",
            batch.id,
            format_time(batch.time_ms)
        ));
        text.push_str("-------------------------------------------\n");
        for record in partitions
            .iter()
            .flatten()
            .flat_map(Batch::iter)
            .take(self.max_records)
        {
            if let Some(key) = record.key {
                text.push_str(&String::from_utf8_lossy(key));
                text.push('\t');
            }
            text.push_str(&String::from_utf8_lossy(record.value));
            if let Some(length) = self.window_ms {
                let end = record.timestamp + 1;
                text.push_str(&format!(
                    "\t[{}, {})",
                    format_time(end - length),
                    format_time(end)
                ));
            }
            text.push('\n');
        }
        if total > self.max_records {
            text.push_str(&format!("... ({} more)\n", total - self.max_records));
        }
        text.push('\n');
        // A closed stdout (e.g. `weir run ... | head`) is not worth failing the pipeline for.
        let _ = self
            .out
            .write_all(text.as_bytes())
            .and_then(|()| self.out.flush());
        Ok(())
    }
}
