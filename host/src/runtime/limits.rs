//! What a plugin instance may use: resource [`Limits`] and the
//! capabilities it is granted ([`Grants`]), together its [`Sandbox`].
//!
//! Everything is denied by default: no files, no environment, no sockets, no
//! arguments. A stage may grant read-only access to one directory (mounted at
//! [`GUEST_DATA_DIR`] through cap-std, so `..` and symlinks cannot leave it)
//! and chosen environment variables.

use std::path::PathBuf;
use std::time::Duration;

/// Where a granted directory appears inside the plugin.
pub const GUEST_DATA_DIR: &str = "/data";

/// Limits applied to every instance of a plugin stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Cap on the linear memory of an instance, in bytes.
    pub memory_bytes: usize,
    /// Cap on the elements of each table of an instance.
    pub table_elements: usize,
    /// Longest a single batch call may run before it is interrupted.
    pub call_deadline: Duration,
    /// Most output records a call may return per input record (plus 1,000).
    pub output_records_ratio: u64,
    /// Most output bytes a call may return per input byte (plus 1 MiB).
    pub output_bytes_ratio: u64,
    /// Fuel (roughly, Wasm instructions) a call may burn: deterministic
    /// accounting on top of the deadline. Off when `None`.
    pub fuel: Option<u64>,
    /// Log messages the stage's plugin may write per second, over all its
    /// instances (a burst of one second's worth); the excess is dropped and
    /// counted. 0 turns the plugin's log off.
    pub log_messages_per_second: u64,
    /// Bytes of log messages the stage's plugin may write per second, over
    /// all its instances (a burst of one second's worth).
    pub log_bytes_per_second: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 64 << 20,
            table_elements: 100_000,
            call_deadline: Duration::from_secs(10),
            output_records_ratio: 1_000,
            output_bytes_ratio: 1_000,
            fuel: None,
            log_messages_per_second: DEFAULT_LOG_MESSAGES_PER_SECOND,
            log_bytes_per_second: DEFAULT_LOG_BYTES_PER_SECOND,
        }
    }
}

/// Default of [`Limits::log_messages_per_second`].
pub const DEFAULT_LOG_MESSAGES_PER_SECOND: u64 = 100;

/// Default of [`Limits::log_bytes_per_second`]: 64 KiB.
pub const DEFAULT_LOG_BYTES_PER_SECOND: u64 = 64 << 10;

impl Limits {
    /// The default call deadline for a batch interval: ten intervals, at
    /// least one second and at most an hour.
    pub fn deadline_for_interval(interval: Duration) -> Duration {
        interval
            .checked_mul(10)
            .unwrap_or(Duration::MAX)
            .clamp(Duration::from_secs(1), Duration::from_secs(3600))
    }

    /// Most records a call with `input` records may return.
    pub fn max_output_records(&self, input: usize) -> u64 {
        (input as u64)
            .saturating_mul(self.output_records_ratio)
            .saturating_add(1_000)
    }

    /// Most data bytes a call with `input` data bytes may return.
    pub fn max_output_bytes(&self, input: usize) -> u64 {
        (input as u64)
            .saturating_mul(self.output_bytes_ratio)
            .saturating_add(1 << 20)
    }
}

/// Capabilities granted to a plugin stage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// A host directory the plugin may read, at [`GUEST_DATA_DIR`].
    pub read_dir: Option<PathBuf>,
    /// Environment variables the plugin sees.
    pub env: Vec<(String, String)>,
}

/// Limits and grants of a plugin stage's instances.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sandbox {
    /// Resource limits.
    pub limits: Limits,
    /// Capabilities.
    pub grants: Grants,
}
