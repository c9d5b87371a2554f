//! Crash points for the crash tests (behind the `crash-points` cargo
//! feature, on by default): once [`arm`]ed with `<point>:<n>` (the CLI passes
//! `WEIR_CRASH_AT`), the process kills itself with SIGKILL — no unwinding, no cleanup, exactly what
//! `kill -9` does — the `n`-th time it reaches `<point>` (several points
//! separated by commas). Unarmed, a crash point costs a look at an empty list.
//!
//! Points: `batch-logged` (a batch's input is in the batch log, the batch has
//! not run), `sink-commit` (a files sink wrote a batch's files, not yet
//! renamed into place), `checkpoint-state` (a checkpoint's state files are
//! written, its manifest is not), `checkpoint-compacted` (a chain of
//! incremental state was compacted into a full part, the manifest listing it
//! is not written), `checkpoint-manifest` (a checkpoint's manifest is
//! written, `LATEST` does not name it yet), `checkpoint-done` (a checkpoint
//! is complete),
//! `kafka-sent` (a Kafka sink sent a batch's records in its transaction, not
//! yet committed), `kafka-committed` (a Kafka sink committed a batch's
//! transaction; the engine has not recorded the batch as done),
//! `redis-prepared` / `redis-committed` (a Redis sink's `MULTI` built / its
//! `EXEC` answered), `http-sent` and `es-bulk-sent` (an HTTP sink's part or
//! an Elasticsearch sink's bulk request answered), `plugin-sink-wrote` (a
//! sink plugin's `write` returned success), `redis-stream-read` (a
//! Redis Streams source read entries that are in no chunk yet),
//! `swap-checked` / `swap-cut-over` (a hot-load stored its checked
//! component, not yet cut over / cut over and checkpointed). The files sink on `s3://` reaches `sink-commit` between its
//! parts and its manifest.

use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;
#[cfg(feature = "crash-points")]
use std::sync::atomic::Ordering;

#[cfg_attr(not(feature = "crash-points"), allow(dead_code))]
struct Armed {
    point: String,
    at: u64,
    hits: AtomicU64,
}

static ARMED: OnceLock<Vec<Armed>> = OnceLock::new();

/// Arms the crash points in `spec` (`<point>:<n>`, comma-separated; the
/// CLI passes `WEIR_CRASH_AT`). Only the first call counts. Without the
/// `crash-points` feature nothing is ever armed.
pub fn arm(spec: &str) {
    let armed = spec
        .split(',')
        .filter_map(|spec| {
            let (point, at) = spec.trim().split_once(':')?;
            Some(Armed {
                point: point.to_owned(),
                at: at.parse().ok()?,
                hits: AtomicU64::new(0),
            })
        })
        .collect();
    if cfg!(feature = "crash-points") {
        let _ = ARMED.set(armed);
    }
}

/// Aborts the process if `point` is armed and reached for the armed time.
#[inline]
pub fn crash_point(point: &str) {
    #[cfg(feature = "crash-points")]
    for armed in ARMED.get().map_or(&[][..], Vec::as_slice) {
        if armed.point == point && armed.hits.fetch_add(1, Ordering::Relaxed) + 1 == armed.at {
            eprintln!("crash point `{point}` reached: killing the process");
            // SAFETY: raise(3) has no preconditions; SIGKILL does not return.
            unsafe {
                libc::raise(libc::SIGKILL);
            }
            std::process::abort();
        }
    }
    #[cfg(not(feature = "crash-points"))]
    let _ = point;
}
