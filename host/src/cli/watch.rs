//! `weir run --watch-plugins`: the developer's edit-build-see loop. Every
//! plugin file a running pipeline declares is watched (polled); when one is
//! replaced (a build's atomic rename, or a copy), every stage that uses it
//! hot-loads the new component at its next batch boundary, with the checks
//! of any hot-load. A refused version is reported and left alone until the
//! file changes again.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use weir::engine::{PipelineHandle, SwapRequest};
use weir::pipeline::{RollbackRule, Rollout};

/// How often the files are looked at.
const POLL: Duration = Duration::from_millis(200);

/// One plugin file of one pipeline.
struct Watched {
    handle: PipelineHandle,
    /// The plugin's name in the pipeline file.
    plugin: String,
    /// The stages that run it.
    stages: Vec<String>,
    path: PathBuf,
    /// The file's identity and size when last read (inode, mtime, length).
    seen: Option<(u64, i64, i64, u64)>,
    /// Hex SHA-256 of the content last read.
    sha256: String,
}

/// What to watch of one started pipeline: its plugins' names and files.
pub struct WatchList {
    handle: PipelineHandle,
    plugins: BTreeMap<String, (PathBuf, Vec<String>)>,
}

impl WatchList {
    /// The plugins of `spec` (name → file and the stages using it), for `handle`.
    pub fn new(handle: PipelineHandle, spec: &weir::config::PipelineSpec) -> Self {
        let mut plugins: BTreeMap<String, (PathBuf, Vec<String>)> = BTreeMap::new();
        for stage in &spec.stages {
            for name in stage.op.plugins() {
                if let Some(path) = spec.plugins.get(&name) {
                    let entry = plugins.entry(name).or_insert_with(|| (path.clone(), Vec::new()));
                    entry.1.push(stage.name.clone());
                }
            }
        }
        Self { handle, plugins }
    }
}

fn identity(path: &std::path::Path) -> Option<(u64, i64, i64, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.ino(), meta.mtime(), meta.mtime_nsec(), meta.len()))
}

/// Watches the plugin files of `lists` on a thread of its own until every
/// pipeline has ended; `say` reports each swap and refusal.
pub fn spawn(lists: Vec<WatchList>, say: fn(&str)) -> std::io::Result<std::thread::JoinHandle<()>> {
    let mut watched: Vec<Watched> = lists
        .into_iter()
        .flat_map(|list| {
            let handle = list.handle;
            list.plugins
                .into_iter()
                .map(move |(plugin, (path, stages))| Watched {
                    handle: handle.clone(),
                    seen: identity(&path),
                    sha256: std::fs::read(&path)
                        .map(|bytes| weir::runtime::content_hash(&bytes))
                        .unwrap_or_default(),
                    plugin,
                    stages,
                    path,
                })
        })
        .collect();
    std::thread::Builder::new()
        .name("weir-watch-plugins".into())
        .spawn(move || {
            while !watched.iter().all(|w| w.handle.status().state.is_final()) {
                std::thread::sleep(POLL);
                for watch in &mut watched {
                    look(watch, say);
                }
            }
        })
}

/// Swaps `watch`'s plugin in when its file changed.
fn look(watch: &mut Watched, say: fn(&str)) {
    let now = identity(&watch.path);
    if now.is_none() || now == watch.seen || watch.handle.status().state.is_final() {
        return;
    }
    watch.seen = now;
    let Ok(component) = std::fs::read(&watch.path) else {
        return;
    };
    let sha256 = weir::runtime::content_hash(&component);
    if sha256 == watch.sha256 {
        return;
    }
    watch.sha256 = sha256.clone();
    for stage in &watch.stages {
        let request = SwapRequest {
            stage: stage.clone(),
            plugin: Some(watch.plugin.clone()),
            component: component.clone(),
            path: watch.path.clone(),
            config: None,
            rule: RollbackRule::default(),
            mode: Rollout::Immediate,
            by: Some("--watch-plugins".into()),
        };
        let pipeline = watch.handle.name();
        match watch.handle.swap(request) {
            Ok(report) => say(&format!(
                "{pipeline}: stage `{stage}` hot-loaded {} (version {}, {}) after batch {}",
                watch.path.display(),
                report.version,
                &report.to[..12],
                report.after_batch.map_or("-".to_owned(), |b| b.to_string())
            )),
            Err(error) => say(&format!(
                "{pipeline}: stage `{stage}` kept its plugin; {} was not hot-loaded: {error}",
                watch.path.display()
            )),
        }
    }
}
