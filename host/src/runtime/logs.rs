//! The log budget of a plugin stage.
//!
//! A plugin writes to the host's log through `weir:plugin/log`. Each message
//! is cut to [`MAX_LOG_MESSAGE`] bytes, and a stage's messages, over all its
//! instances and workers, pass through one [`LogBudget`]: two token buckets,
//! one of messages and one of bytes, each refilled at its per-second rate
//! ([`Limits::log_messages_per_second`], [`Limits::log_bytes_per_second`])
//! and holding at most one second's worth. A message that finds either
//! bucket short is dropped and counted; the first drop is reported once as
//! a warning, then at most every [`WARN_EVERY`]. The rates are per second of
//! wall time, not per batch, so what one stage can write to a disk does not
//! grow with a shorter batch interval.
//!
//! (Measured before the budget: a plugin logging 100,000 messages of 64 KiB
//! made `weir` write 428 MB to stderr.)

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::limits::Limits;

/// Longest log message kept from a plugin, in bytes; the rest is cut.
pub const MAX_LOG_MESSAGE: usize = 4096;

/// How often a stage that keeps dropping messages says so again.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// What the budget decided about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Write it.
    Write,
    /// Drop it (counted).
    Drop,
    /// Drop it (counted) and warn, with the count of messages dropped so far.
    DropAndWarn(u64),
}

/// The log budget of one stage, shared by all its instances.
#[derive(Debug, Default)]
pub struct LogBudget {
    buckets: Mutex<Buckets>,
    dropped: AtomicU64,
}

#[derive(Debug, Default)]
struct Buckets {
    /// Messages that may be written now.
    messages: f64,
    /// Bytes that may be written now.
    bytes: f64,
    /// When the buckets were last refilled (`None`: never, they start full).
    refilled: Option<Instant>,
    /// When a drop was last reported.
    warned: Option<Instant>,
}

impl LogBudget {
    /// Messages dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Takes a message of `bytes` bytes from the budget `limits` set, at `now`.
    pub fn admit(&self, bytes: usize, limits: &Limits, now: Instant) -> Admission {
        let message_rate = limits.log_messages_per_second as f64;
        let byte_rate = limits.log_bytes_per_second as f64;
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        match buckets.refilled {
            None => {
                buckets.messages = message_rate;
                buckets.bytes = byte_rate;
            }
            Some(last) => {
                let seconds = now.saturating_duration_since(last).as_secs_f64();
                buckets.messages = (buckets.messages + seconds * message_rate).min(message_rate);
                buckets.bytes = (buckets.bytes + seconds * byte_rate).min(byte_rate);
            }
        }
        buckets.refilled = Some(now);
        // A message longer than a whole second's bytes costs a full bucket,
        // so that it can pass at all.
        let cost = (bytes as f64).min(byte_rate);
        if buckets.messages >= 1.0 && buckets.bytes >= cost {
            buckets.messages -= 1.0;
            buckets.bytes -= cost;
            return Admission::Write;
        }
        let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        let warn = buckets
            .warned
            .is_none_or(|at| now.saturating_duration_since(at) >= WARN_EVERY);
        if warn {
            buckets.warned = Some(now);
            Admission::DropAndWarn(dropped)
        } else {
            Admission::Drop
        }
    }
}

/// `message` cut to at most [`MAX_LOG_MESSAGE`] bytes (at a character
/// boundary, marked with `…`).
pub fn cut(mut message: String) -> String {
    if message.len() > MAX_LOG_MESSAGE {
        let mut cut = MAX_LOG_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push('…');
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(messages: u64, bytes: u64) -> Limits {
        Limits {
            log_messages_per_second: messages,
            log_bytes_per_second: bytes,
            ..Limits::default()
        }
    }

    #[test]
    fn a_burst_of_one_second_then_the_rate() {
        let budget = LogBudget::default();
        let limits = limits(10, 1 << 20);
        let start = Instant::now();
        let written = (0..100)
            .filter(|_| budget.admit(10, &limits, start) == Admission::Write)
            .count();
        assert_eq!(written, 10);
        assert_eq!(budget.dropped(), 90);
        // Half a second later: five more.
        let later = start + Duration::from_millis(500);
        let written = (0..100)
            .filter(|_| budget.admit(10, &limits, later) == Admission::Write)
            .count();
        assert_eq!(written, 5);
        assert_eq!(budget.dropped(), 185);
    }

    #[test]
    fn bytes_are_budgeted_too() {
        let budget = LogBudget::default();
        let limits = limits(1_000, 10_000);
        let now = Instant::now();
        let written = (0..100)
            .filter(|_| budget.admit(4_000, &limits, now) == Admission::Write)
            .count();
        assert_eq!(written, 2);
        // A message longer than a second's bytes still passes once the bucket is full.
        let budget = LogBudget::default();
        assert_eq!(budget.admit(50_000, &limits, now), Admission::Write);
        assert_ne!(budget.admit(1, &limits, now), Admission::Write);
    }

    #[test]
    fn drops_are_reported_once_per_period() {
        let budget = LogBudget::default();
        let limits = limits(1, 1 << 20);
        let now = Instant::now();
        assert_eq!(budget.admit(1, &limits, now), Admission::Write);
        assert_eq!(budget.admit(1, &limits, now), Admission::DropAndWarn(1));
        assert_eq!(budget.admit(1, &limits, now), Admission::Drop);
        let later = now + WARN_EVERY;
        assert_eq!(budget.admit(1, &limits, later), Admission::Write);
        assert_eq!(budget.admit(1, &limits, later), Admission::DropAndWarn(3));
    }

    #[test]
    fn zero_turns_the_log_off() {
        let budget = LogBudget::default();
        let limits = limits(0, 1 << 20);
        let now = Instant::now();
        assert_ne!(budget.admit(1, &limits, now), Admission::Write);
        assert_ne!(
            budget.admit(1, &limits, now + Duration::from_secs(5)),
            Admission::Write
        );
        assert_eq!(budget.dropped(), 2);
    }

    #[test]
    fn the_instances_of_a_stage_share_one_budget() {
        use std::path::Path;
        use std::sync::Arc;

        use crate::record::Batch;
        use crate::runtime::{InstanceLabel, InstanceUsage, Runtime, Sandbox, TransformInstance};

        let runtime = Runtime::new(None).unwrap();
        let plugin = runtime
            .load_plugin(Path::new(weir_tests::plugins::CHATTY))
            .unwrap();
        let usage = Arc::new(InstanceUsage::default());
        let label = InstanceLabel {
            usage: usage.clone(),
            ..InstanceLabel::default()
        };
        let sandbox = Arc::new(Sandbox {
            limits: limits(10, 1 << 20),
            ..Sandbox::default()
        });
        // Messages count only when the log would show them: give this thread a log.
        let subscriber = tracing_subscriber::fmt().with_writer(std::io::sink).finish();
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..2 {
                let mut instance = TransformInstance::start(&plugin, &[], label.clone(), &sandbox).unwrap();
                let mut batch = Batch::new();
                batch.push(None, b"log 30 20", 0);
                let (_, output) = instance.transform(batch);
                output.unwrap();
            }
        });
        // 60 messages, a burst of 10 (and a message per 100 ms of the test).
        let dropped = usage.logs.dropped();
        assert!((40..=50).contains(&dropped), "{dropped} dropped");
    }

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        assert_eq!(cut("short".into()), "short");
        let long = "é".repeat(MAX_LOG_MESSAGE);
        let cut = cut(long);
        assert!(cut.len() <= MAX_LOG_MESSAGE + '…'.len_utf8());
        assert!(cut.ends_with('…'));
    }
}
