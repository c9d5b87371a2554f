//! The `[cluster]` table: what a pipeline needs to run on several `weir run`
//! processes (see [`crate::cluster`]), checked when the file is read.
//!
//! A cluster pipeline reads one Kafka topic (its partitions are what the
//! consumer group spreads) and keeps its checkpoints in a store every
//! process reaches. (What the deterministic clock means there is the
//! plan's: [`crate::cluster::plan`].)

use std::time::Duration;

use toml::Spanned;

use super::file::ClusterTable;
use super::values::{duration, positive};
use super::{ClusterSpec, Paths, SourceSpec, SpecError};
use crate::checkpoint::CheckpointSettings;

/// Default of `session-timeout`.
const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// Validates `[cluster]` against the rest of the pipeline.
pub(super) fn cluster_spec(
    table: Spanned<ClusterTable>,
    sources: &[SourceSpec],
    checkpoint: Option<&CheckpointSettings>,
    paths: &Paths,
) -> Result<ClusterSpec, SpecError> {
    let at = table.span().start;
    let table = table.into_inner();
    if paths.confined() {
        return Err((
            at,
            "`[cluster]` is for `weir run` processes; a server runs a tenant's pipeline on itself".into(),
        ));
    }
    let group_id = match &table.group_id {
        Some(group) if !group.get_ref().trim().is_empty() => group.get_ref().clone(),
        Some(group) => return Err((group.span().start, "`group-id` is empty".into())),
        None => {
            return Err((
                at,
                "`[cluster]` needs `group-id`: the Kafka consumer group the processes join".into(),
            ));
        }
    };
    let partitions = positive(table.partitions.as_ref(), "partitions", 1024)?;
    let session_timeout = match &table.session_timeout {
        Some(text) => {
            let timeout = duration(text)?;
            if !(Duration::from_secs(1)..=Duration::from_secs(300)).contains(&timeout) {
                return Err((
                    text.span().start,
                    "`session-timeout` must be between 1s and 5m".into(),
                ));
            }
            timeout
        }
        None => DEFAULT_SESSION_TIMEOUT,
    };
    if checkpoint.is_none() {
        return Err((
            at,
            "a cluster needs `checkpoint-dir` in [pipeline]: a store every process reaches (a shared \
             directory, or s3://bucket/prefix), where each partition's state moves from one process to another"
                .into(),
        ));
    }
    let [source] = sources else {
        return Err((
            at,
            format!(
                "a cluster pipeline reads one Kafka source (the group spreads its partitions); this one has {}",
                sources.len()
            ),
        ));
    };
    check_source(source, at)?;
    Ok(ClusterSpec {
        group_id,
        partitions,
        session_timeout,
    })
}

#[cfg(feature = "kafka")]
fn check_source(source: &SourceSpec, at: usize) -> Result<(), SpecError> {
    use crate::source::kafka::KafkaSpec;
    let Some(kafka) = source.kind.settings::<KafkaSpec>() else {
        return Err((
            at,
            format!(
                "a cluster pipeline reads a Kafka source (the group spreads its partitions); source `{}` is not one",
                source.name
            ),
        ));
    };
    if kafka.topics.len() != 1 {
        return Err((
            at,
            format!(
                "a cluster pipeline's Kafka source reads one topic; source `{}` reads {}",
                source.name,
                kafka.topics.len()
            ),
        ));
    }
    Ok(())
}

#[cfg(not(feature = "kafka"))]
fn check_source(_: &SourceSpec, at: usize) -> Result<(), SpecError> {
    Err((
        at,
        "this weir was built without the `kafka` feature: a cluster needs Kafka".into(),
    ))
}
