//! Errors of plugins, classified so that callers (and later the failure
//! policies) can tell a plugin's own error from a trap or a bad component.

use std::path::PathBuf;

use crate::error::ErrorClass;

use crate::record::MalformedBatch;

/// Why a trap stopped a plugin call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrapKind {
    /// The call ran past its deadline (epoch interruption).
    Deadline,
    /// The call burned its fuel budget.
    Fuel,
    /// The plugin tried to grow its memory or tables past its limit.
    Memory,
    /// The plugin overflowed its Wasm stack (deep recursion).
    StackOverflow,
    /// The plugin panicked or reached `unreachable`.
    Panic,
    /// Any other trap (out-of-bounds access, division by zero, ...).
    Other,
}

impl TrapKind {
    /// A short name for messages and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Deadline => "deadline exceeded",
            Self::Fuel => "fuel exhausted",
            Self::Memory => "memory limit",
            Self::StackOverflow => "stack overflow",
            Self::Panic => "panic",
            Self::Other => "trap",
        }
    }

    /// Classifies an error returned by a wasmtime call.
    pub(crate) fn of(error: &wasmtime::Error) -> Self {
        let trap = error.downcast_ref::<wasmtime::Trap>().or_else(|| {
            error
                .chain()
                .find_map(|cause| cause.downcast_ref::<wasmtime::Trap>())
        });
        if let Some(trap) = trap {
            return match trap {
                wasmtime::Trap::Interrupt => Self::Deadline,
                wasmtime::Trap::OutOfFuel => Self::Fuel,
                wasmtime::Trap::StackOverflow => Self::StackOverflow,
                wasmtime::Trap::UnreachableCodeReached => Self::Panic,
                wasmtime::Trap::AllocationTooLarge => Self::Memory,
                _ => Self::Other,
            };
        }
        if error.chain().any(|cause| {
            cause
                .downcast_ref::<super::state::MemoryLimitExceeded>()
                .is_some()
        }) {
            return Self::Memory;
        }
        Self::Other
    }

    /// True when a fresh instance may succeed where this trap failed: not
    /// for fuel or stack depth, which the same input exhausts again.
    pub fn retryable(self) -> bool {
        !matches!(self, Self::Fuel | Self::StackOverflow)
    }
}

/// A short description of a wasmtime error: every cause in the chain, with
/// a Wasm backtrace cut to its first frames.
pub(crate) fn describe(error: &wasmtime::Error) -> String {
    let mut parts = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string();
        let mut lines = text.lines();
        let mut part: Vec<&str> = lines.by_ref().take(4).collect();
        if lines.next().is_some() {
            part.push("    ...");
        }
        parts.push(part.join("\n"));
    }
    // The root cause (the trap itself) first: it is what the user needs.
    parts.reverse();
    parts.join("\n")
}

/// A plugin could not be loaded or a call into it failed.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The file cannot be read.
    #[error("cannot read plugin {}: {source}", path.display())]
    Read {
        /// The plugin file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The compiled-code cache cannot be trusted (others may write it).
    #[error("{0}")]
    UntrustedCache(String),
    /// The file is not a valid WebAssembly component.
    #[error("{} is not a valid WebAssembly component: {message}", path.display())]
    Compile {
        /// The plugin file.
        path: PathBuf,
        /// The compiler's message.
        message: String,
    },
    /// The component does not fit the Weir plugin contract.
    #[error("{} is not a usable Weir plugin: {message}", path.display())]
    Contract {
        /// The plugin file.
        path: PathBuf,
        /// What is missing or wrong.
        message: String,
    },
    /// The plugin's `init` rejected its configuration.
    #[error("plugin rejected its configuration: {0}")]
    Init(String),
    /// The plugin reported that one record failed.
    #[error("record {index} failed: {message}")]
    Record {
        /// Index of the record in the input batch.
        index: u32,
        /// The plugin's message.
        message: String,
    },
    /// The plugin reported that the whole batch failed.
    #[error("{0}")]
    Batch(String),
    /// The call trapped; the instance is poisoned and must be discarded.
    #[error("{}: {message}{}{}", kind.name(), captured("stdout", stdout), captured("stderr", stderr))]
    Trap {
        /// Why.
        kind: TrapKind,
        /// wasmtime's description of the trap.
        message: String,
        /// The tail of what the plugin wrote to stdout during the call, if anything.
        stdout: String,
        /// The tail of what the plugin wrote to stderr during the call (its
        /// panic message), if anything.
        stderr: String,
    },
    /// A call returned more output than its stage's limits allow for its input.
    #[error(
        "output limit: the call returned {records} records / {bytes} bytes, more than the stage's limits allow for its input (at most {max_records} records / {max_bytes} bytes): raise `output-records-ratio` / `output-bytes-ratio` in the stage's limits"
    )]
    OutputLimit {
        /// Records returned.
        records: u64,
        /// Data bytes returned.
        bytes: u64,
        /// Records the limits allowed.
        max_records: u64,
        /// Data bytes the limits allowed.
        max_bytes: u64,
    },
    /// A call's result was larger than its copy budget
    /// ([`super::Limits::copy_budget`]): found while copying it out of the
    /// plugin, before the host allocated it. The instance is discarded.
    #[error(
        "output limit: the call returned more than {budget} bytes (records' data, ends, timestamps and flags together), {limit}"
    )]
    OutputTooLarge {
        /// The copy budget, in bytes.
        budget: u64,
        /// Which limit set the budget, and what to raise.
        limit: String,
    },
    /// A call's input cannot fit in the plugin's memory: the call is not made.
    #[error(
        "input too large: the call's input is {bytes} bytes ({records} records with their ends, timestamps and flags), more than the stage's memory limit of {limit} bytes can hold: raise `memory` in the stage's limits, or spread the input over more partitions"
    )]
    InputTooLarge {
        /// Bytes the input takes in the plugin's memory.
        bytes: u64,
        /// Records (or values) of the input.
        records: u64,
        /// The memory limit, in bytes.
        limit: u64,
    },
    /// The plugin returned data that breaks the batch contract.
    #[error(transparent)]
    Malformed(#[from] MalformedBatch),
}

/// `text` as the part of a trap's message quoting what the plugin wrote to `stream`.
fn captured(stream: &str, text: &str) -> String {
    if text.is_empty() {
        String::new()
    } else {
        format!("\nplugin {stream}:\n{text}")
    }
}

impl PluginError {
    /// True when the instance that returned this error must be discarded
    /// (after a trap, or a result that could not be copied out of it).
    pub fn poisons_instance(&self) -> bool {
        matches!(self, Self::Trap { .. } | Self::OutputTooLarge { .. })
    }

    /// What kind of failure this is.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Read { .. } => ErrorClass::Io,
            Self::UntrustedCache(_)
            | Self::Compile { .. }
            | Self::Contract { .. }
            | Self::Init(_)
            | Self::InputTooLarge { .. } => ErrorClass::UserInput,
            Self::Record { .. }
            | Self::Batch(_)
            | Self::OutputLimit { .. }
            | Self::OutputTooLarge { .. }
            | Self::Malformed(_) => ErrorClass::Plugin,
            Self::Trap { kind, .. } => ErrorClass::Trap(*kind),
        }
    }

    /// True when the same call may succeed if tried again (on a fresh
    /// instance after a trap): a batch the plugin refused as a whole, or a
    /// trap that is not bound to the input ([`TrapKind::retryable`]). A
    /// refused record, an output over the limits, an input too large for the
    /// memory or a broken batch come back the same.
    pub fn retryable(&self) -> bool {
        match self {
            Self::Batch(_) | Self::Read { .. } => true,
            Self::Trap { kind, .. } => kind.retryable(),
            _ => false,
        }
    }
}
