//! What a sink plugin's function gets and returns: [`BatchInfo`] and
//! [`SinkError`].

use std::fmt;

use crate::__private::{WitBatchInfo, WriteError};

/// Which part of which batch a sink's `write` carries.
///
/// A batch written again (a retry, or a re-run after a crash in a pipeline
/// that checkpoints) has the same id and the same records, so
/// [`BatchInfo::idempotency_key`] names the write across tries: a
/// destination that keeps one result per key gets every record exactly once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchInfo {
    pipeline: String,
    sink: String,
    run: String,
    id: u64,
    time_ms: i64,
    partition: u32,
    partitions: u32,
    attempt: u32,
}

impl BatchInfo {
    /// A description of a write (for native tests of sink functions).
    pub fn new(pipeline: &str, sink: &str, id: u64, partition: u32, partitions: u32) -> Self {
        Self {
            pipeline: pipeline.to_owned(),
            sink: sink.to_owned(),
            run: String::new(),
            id,
            time_ms: 0,
            partition,
            partitions,
            attempt: 0,
        }
    }

    pub(crate) fn from_wit(info: WitBatchInfo) -> Self {
        Self {
            pipeline: info.pipeline,
            sink: info.sink,
            run: info.run,
            id: info.id,
            time_ms: info.time,
            partition: info.partition,
            partitions: info.partitions,
            attempt: info.attempt,
        }
    }

    /// The pipeline's name.
    pub fn pipeline(&self) -> &str {
        &self.pipeline
    }

    /// The sink's name in the pipeline file.
    pub fn sink(&self) -> &str {
        &self.sink
    }

    /// `run-<start ms>` in a pipeline without a checkpoint directory
    /// (batch ids start again at 0 every run there); empty when it
    /// checkpoints (batch ids go on across restarts).
    pub fn run(&self) -> &str {
        &self.run
    }

    /// The batch id: 0 for the first batch, then one more per batch.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The batch time, in milliseconds since the Unix epoch.
    pub fn time_ms(&self) -> i64 {
        self.time_ms
    }

    /// The partition these records are (0 for a sink that takes whole batches).
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// How many partitions the batch has (1 for a sink that takes whole
    /// batches). Partitions without records are not written.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// Which try of this write this is: 0 for the first.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// `pipeline/sink/batch/partition` (`pipeline/sink/run-<start ms>/batch/partition`
    /// without a checkpoint directory): the same for every try of this
    /// write, and for its re-run after a crash when the pipeline checkpoints.
    pub fn idempotency_key(&self) -> String {
        let run = if self.run.is_empty() {
            String::new()
        } else {
            format!("{}/", self.run)
        };
        format!(
            "{}/{}/{run}{}/{}",
            self.pipeline, self.sink, self.id, self.partition
        )
    }

    /// This description in a run of a pipeline without checkpoints
    /// (for native tests of sink functions).
    #[must_use]
    pub fn in_run(mut self, run: &str) -> Self {
        self.run = run.to_owned();
        self
    }
}

/// Why a sink function could not write, and whether trying again may help.
///
/// The host retries a [`SinkError::transient`] failure (up to the sink's
/// `retries`, with backoff), then applies the sink's `on-error`; a
/// [`SinkError::permanent`] one goes to `on-error` at once. `?` converts:
/// any standard error is transient (I/O mostly, but also a parse or
/// encoding error: return `SinkError::permanent(error)` for those that
/// trying again cannot mend); a [`crate::Error`] (a bad setting, a record
/// that is not text) is permanent; an [`crate::http::HttpError`] is
/// transient for a failure to connect or be answered and for 5xx, 408 and
/// 429, permanent otherwise (a denied host, an invalid request, other
/// statuses).
pub struct SinkError {
    message: String,
    transient: bool,
}

impl SinkError {
    /// A failure that may pass if the write is tried again.
    pub fn transient(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            transient: true,
        }
    }

    /// A failure that trying again will not mend.
    pub fn permanent(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            transient: false,
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// True when trying again may help.
    pub fn is_transient(&self) -> bool {
        self.transient
    }

    pub(crate) fn into_wit(self) -> WriteError {
        if self.transient {
            WriteError::Transient(self.message)
        } else {
            WriteError::Permanent(self.message)
        }
    }
}

impl fmt::Debug for SinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.transient { "transient" } else { "permanent" };
        write!(f, "{kind}: {}", self.message)
    }
}

impl fmt::Display for SinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: std::error::Error> From<E> for SinkError {
    /// Any standard error (I/O mostly): transient.
    fn from(error: E) -> Self {
        Self::transient(error)
    }
}

impl From<crate::Error> for SinkError {
    /// An SDK error (a bad setting, a record that cannot be encoded): permanent.
    fn from(error: crate::Error) -> Self {
        Self::permanent(error.message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_whether_to_retry() {
        let io: SinkError = std::io::Error::other("connection reset").into();
        assert!(io.is_transient());
        let bad: SinkError = crate::Error::msg("no url").into();
        assert!(!bad.is_transient());
        assert_eq!(bad.message(), "no url");
        assert_eq!(format!("{:?}", SinkError::permanent("x")), "permanent: x");
        let info = BatchInfo::new("p", "s", 7, 2, 4);
        assert_eq!(info.idempotency_key(), "p/s/7/2");
        assert_eq!(info.clone().in_run("run-5").idempotency_key(), "p/s/run-5/7/2");
        assert_eq!((info.partition(), info.partitions(), info.attempt()), (2, 4, 0));
    }
}
