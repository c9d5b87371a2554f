//! Resource limits of plugin instances.

use std::time::Duration;

/// Limits applied to every instance of a plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Cap on the linear memory of an instance, in bytes.
    pub memory_bytes: usize,
    /// Cap on the elements of each table of an instance.
    pub table_elements: usize,
    /// Longest a single batch call may run before it is interrupted.
    pub call_deadline: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 64 << 20,
            table_elements: 100_000,
            call_deadline: Duration::from_secs(30),
        }
    }
}
