//! The supervisor: an engine's pipelines by id, with the rules that keep
//! them apart — one running pipeline per name, one per checkpoint directory.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use super::handle::{PipelineHandle, PipelineId};
use crate::checkpoint::CheckpointLocation;
use crate::error::EngineError;
use crate::pipeline::StopMode;

/// The pipelines of one engine.
#[derive(Debug, Default)]
pub struct Supervisor {
    pipelines: Mutex<BTreeMap<PipelineId, PipelineHandle>>,
}

/// Where a pipeline checkpoints, in a comparable form: a directory's
/// canonical path where it exists; a store's address, bucket and prefix.
fn comparable(location: &CheckpointLocation) -> String {
    match location {
        CheckpointLocation::Directory(dir) => dir
            .canonicalize()
            .unwrap_or_else(|_| dir.to_owned())
            .display()
            .to_string(),
        #[cfg(feature = "object-store")]
        CheckpointLocation::Objects(target) => format!("{} at {}", target.url(), target.address()),
    }
}

impl Supervisor {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<PipelineId, PipelineHandle>> {
        self.pipelines.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a pipeline about to start, refused while another running
    /// pipeline has its name or its checkpoint directory; an ended pipeline
    /// of the same name is forgotten.
    pub(crate) fn register(&self, handle: &PipelineHandle) -> Result<(), EngineError> {
        let (name, checkpoint) = (handle.name(), handle.checkpoint_location());
        let mut pipelines = self.lock();
        for other in pipelines.values() {
            if other.status().state.is_final() {
                continue;
            }
            if other.name() == name && other.namespace() == handle.namespace() {
                return Err(EngineError::Plan {
                    location: format!("pipeline `{name}`"),
                    message: format!(
                        "a pipeline named `{name}` is already running ({}): pipeline names are unique per engine; rename one of them in its [pipeline] table",
                        other.id()
                    ),
                });
            }
            if let (Some(mine), Some(theirs)) = (checkpoint, other.checkpoint_location())
                && comparable(mine) == comparable(theirs)
            {
                return Err(EngineError::Plan {
                    location: format!("pipeline `{name}`"),
                    message: format!(
                        "its checkpoint directory {mine} is already used by the running pipeline `{}`: give each pipeline its own",
                        other.name()
                    ),
                });
            }
        }
        pipelines.retain(|_, other| other.name() != name || other.namespace() != handle.namespace());
        pipelines.insert(handle.id(), handle.clone());
        Ok(())
    }

    /// The pipeline with id `id`.
    pub fn get(&self, id: PipelineId) -> Option<PipelineHandle> {
        self.lock().get(&id).cloned()
    }

    /// The newest pipeline named `name`.
    pub fn by_name(&self, name: &str) -> Option<PipelineHandle> {
        self.lock()
            .values()
            .rev()
            .find(|handle| handle.name() == name)
            .cloned()
    }

    /// Every pipeline, oldest first.
    pub fn list(&self) -> Vec<PipelineHandle> {
        self.lock().values().cloned().collect()
    }

    /// Forgets an ended pipeline; returns it (`None` if there is none with
    /// that id, or it is still running).
    pub fn remove(&self, id: PipelineId) -> Option<PipelineHandle> {
        let mut pipelines = self.lock();
        if pipelines.get(&id)?.status().state.is_final() {
            pipelines.remove(&id)
        } else {
            None
        }
    }

    /// Asks every pipeline to stop.
    pub fn stop_all(&self, mode: StopMode) {
        for handle in self.list() {
            handle.stop(mode);
        }
    }
}
