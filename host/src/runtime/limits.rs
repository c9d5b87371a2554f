//! What a plugin instance may use: resource [`Limits`] and the
//! capabilities it is granted ([`Grants`]), together its [`Sandbox`].
//!
//! Everything is denied by default: no files, no environment, no sockets, no
//! arguments. A stage may grant read-only access to one directory (mounted at
//! [`GUEST_DATA_DIR`] through cap-std, so `..` and symlinks cannot leave it)
//! and chosen environment variables. A sink plugin may also be granted
//! outbound HTTP to named hosts, one writable directory (at
//! [`GUEST_OUT_DIR`]) and TCP connections to named addresses.

use std::time::Duration;

/// Where a granted directory appears inside the plugin.
pub const GUEST_DATA_DIR: &str = "/data";

/// Where a sink plugin's writable directory appears inside the plugin.
pub const GUEST_OUT_DIR: &str = "/out";

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

    /// How many bytes one call may copy out of the plugin (wasmtime's
    /// per-call "hostcall fuel", 128 MiB unless set): every list of the
    /// result counts, a record costing its data plus [`RECORD_OVERHEAD`]
    /// bytes (end offset, timestamp, flags).
    ///
    /// For a call whose output the ratios bound (`ratios`: the input's
    /// records and data bytes), what they allow; but never more than the
    /// memory limit, since an honest output sits in the plugin's memory
    /// before it is copied; plus [`COPY_SLACK`] for error messages and the
    /// like. An output within the limits is therefore always copied, and one
    /// that runs out of budget is over them: the host refuses it with its own
    /// output-limit error instead of allocating it.
    pub fn copy_budget(&self, ratios: Option<(usize, usize)>) -> CopyBudget {
        let memory = self.memory_bytes as u64;
        let (bytes, bound) = match ratios {
            Some((records, data)) => {
                let allowed = self
                    .max_output_bytes(data)
                    .saturating_add(self.max_output_records(records).saturating_mul(RECORD_OVERHEAD));
                if allowed < memory {
                    (allowed, CopyBound::Ratios { records, bytes: data })
                } else {
                    (memory, CopyBound::Memory)
                }
            }
            None => (memory, CopyBound::Memory),
        };
        CopyBudget {
            bytes: bytes.saturating_add(COPY_SLACK),
            bound,
        }
    }

    /// Bytes the plugin receives for an input of `records` records with
    /// `data` bytes of keys and values, as laid out in its memory.
    pub fn input_bytes(records: usize, data: usize) -> u64 {
        (data as u64).saturating_add((records as u64).saturating_mul(RECORD_OVERHEAD))
    }
}

/// Bytes a record costs in a batch besides its data: a 4-byte end offset,
/// an 8-byte timestamp and a flags byte.
pub const RECORD_OVERHEAD: u64 = 13;

/// Bytes a call may copy out of the plugin beyond what its output limits
/// allow: room for an error message and the result's small parts.
pub const COPY_SLACK: u64 = 1 << 20;

/// How much one call may copy out of a plugin, and what set that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyBudget {
    /// Bytes (see [`Limits::copy_budget`]).
    pub bytes: u64,
    /// The limit that set it.
    pub bound: CopyBound,
}

/// The limit behind a [`CopyBudget`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyBound {
    /// The output ratios, for an input of `records` records and `bytes` data bytes.
    Ratios {
        /// Records of the input.
        records: usize,
        /// Data bytes of the input.
        bytes: usize,
    },
    /// The memory limit.
    Memory,
}

/// Capabilities granted to a plugin stage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// A host directory the plugin may read, at [`GUEST_DATA_DIR`]
    /// (opened through cap-std from the tenant's root when confined).
    pub read_dir: Option<crate::config::DirPath>,
    /// Environment variables the plugin sees.
    pub env: Vec<(String, String)>,
    /// A host directory the plugin may read and write, at [`GUEST_OUT_DIR`]
    /// (sink plugins only; opened through cap-std like `read_dir`).
    pub write_dir: Option<crate::config::DirPath>,
    /// `host:port` of every HTTP(S) server the plugin may send requests to
    /// through `wasi:http` (sink plugins only).
    pub http: Vec<String>,
    /// `host:port` of every address the plugin may open a TCP connection to
    /// through `wasi:sockets` (sink plugins only).
    pub connect: Vec<String>,
}

/// Limits and grants of a plugin stage's instances.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sandbox {
    /// Resource limits.
    pub limits: Limits,
    /// Capabilities.
    pub grants: Grants,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_budget_is_what_the_output_limits_allow_at_most_the_memory() {
        let limits = Limits {
            memory_bytes: 512 << 20,
            output_records_ratio: 10,
            output_bytes_ratio: 100,
            ..Limits::default()
        };
        // 2 records of 10 bytes: 1 MiB + 1,000 bytes and 1,020 records.
        let budget = limits.copy_budget(Some((2, 10)));
        assert_eq!(budget.bytes, (1 << 20) + 1_000 + 1_020 * 13 + COPY_SLACK);
        assert_eq!(
            budget.bound,
            CopyBound::Ratios {
                records: 2,
                bytes: 10
            }
        );
        // An input whose ratios allow more than the memory: the memory bounds it.
        let budget = limits.copy_budget(Some((1, 10 << 20)));
        assert_eq!(budget.bytes, (512 << 20) + COPY_SLACK);
        assert_eq!(budget.bound, CopyBound::Memory);
        assert_eq!(limits.copy_budget(None).bytes, (512 << 20) + COPY_SLACK);
        assert_eq!(Limits::input_bytes(1_000, 10_000), 23_000);
    }
}
