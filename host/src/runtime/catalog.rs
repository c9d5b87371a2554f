//! The plugin catalog: every compiled plugin of a [`super::Runtime`], by the
//! SHA-256 of its component's bytes.
//!
//! Pipelines that load the same bytes (from any path) share one compiled,
//! linked and checked [`CompiledPlugin`]: a hit costs a hash of the file and a
//! map look-up instead of a compile (or a cache read) and a probe
//! instantiation. Entries are reference-counted: the catalog holds them
//! weakly, so a compiled plugin is released when the last pipeline using it
//! is gone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::plugin::CompiledPlugin;

/// What the catalog holds and has done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CatalogStats {
    /// Compiled plugins in use now.
    pub live: usize,
    /// Loads served by a plugin already compiled.
    pub hits: u64,
    /// Loads that compiled (or read from the on-disk cache) and checked a component.
    pub compiles: u64,
}

/// Compiled plugins by content hash and engine (plain or fuel-metering).
#[derive(Debug, Default)]
pub struct PluginCatalog {
    entries: Mutex<HashMap<(String, bool), Weak<CompiledPlugin>>>,
    hits: AtomicU64,
    compiles: AtomicU64,
}

impl PluginCatalog {
    /// The compiled plugin for `hash` on the plain (`metered = false`) or
    /// fuel-metering engine, compiling it with `compile` when none is live.
    pub fn get_or_compile<E>(
        &self,
        hash: &str,
        metered: bool,
        compile: impl FnOnce() -> Result<CompiledPlugin, E>,
    ) -> Result<Arc<CompiledPlugin>, E> {
        let key = (hash.to_owned(), metered);
        if let Some(live) = self.lock().get(&key).and_then(Weak::upgrade) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(live);
        }
        // Compiled without the lock: other loads go on meanwhile. Two
        // concurrent first loads of the same bytes both compile; the first
        // one stored wins.
        let compiled = Arc::new(compile()?);
        self.compiles.fetch_add(1, Ordering::Relaxed);
        let mut entries = self.lock();
        entries.retain(|_, entry| entry.strong_count() > 0);
        if let Some(live) = entries.get(&key).and_then(Weak::upgrade) {
            return Ok(live);
        }
        entries.insert(key, Arc::downgrade(&compiled));
        Ok(compiled)
    }

    /// Live entries, hits and compiles so far.
    pub fn stats(&self) -> CatalogStats {
        CatalogStats {
            live: self
                .lock()
                .values()
                .filter(|entry| entry.strong_count() > 0)
                .count(),
            hits: self.hits.load(Ordering::Relaxed),
            compiles: self.compiles.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, bool), Weak<CompiledPlugin>>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}
