//! The `[pipeline]`, `[plugins]`, `[checkpoint]` and `[limits]` tables, and
//! the checks across tables: every stream read is produced, dead letters are
//! kept, stages run after their inputs.
//!
//! [`build`] turns a parsed [`PipelineFile`] into a [`PipelineSpec`],
//! handing each `[[source]]`, `[[stage]]` and `[[sink]]` to its parser and
//! resolving relative paths against the pipeline file's directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::file::{CheckpointTable, PipelineFile};
use super::graph::{Node, topological_order};
use super::settings::KindDefaults;
use super::sink::sink_spec;
use super::source::{check_sources, source_spec};
use super::stage::{StageDefaults, limits, stage_spec};
use super::values::{byte_size, duration, positive};
use super::{
    ClockMode, DEAD_LETTERS, LineIndex, Paths, PipelineSpec, Scope, SinkSpec, SourceSpec, SpecError,
    StageSpec,
};
use crate::checkpoint::{CheckpointLocation, CheckpointSettings};
use crate::runtime::Limits;
use crate::source::wal::WalSync;

/// Default of `max-batch-memory`: input a processing-time batch may gather
/// from one source in its interval (about 2.5 M lines of 70 bytes).
pub const DEFAULT_MAX_BATCH_MEMORY: usize = 256 << 20;

/// Validates `raw`; errors carry the byte offset they refer to.
pub(super) fn build(raw: PipelineFile, scope: &Scope, lines: &LineIndex) -> Result<PipelineSpec, SpecError> {
    let paths = &scope.paths;
    let table = raw.pipeline;
    if paths.confined()
        && let Err(why) = super::paths::check_name(&table.name)
    {
        return Err((0, format!("pipeline name `{}` {why}", table.name)));
    }
    let batch_interval = match &table.batch_interval {
        Some(text) => duration(text)?,
        None => Duration::from_secs(1),
    };
    let clock = match &table.clock {
        None => ClockMode::WallClock,
        Some(mode) if mode.get_ref() == "wall" => ClockMode::WallClock,
        Some(mode) if mode.get_ref() == "deterministic" => ClockMode::Deterministic {
            start_ms: table.start_time.as_ref().map_or(0, |t| *t.get_ref()),
        },
        Some(mode) => {
            return Err((
                mode.span().start,
                format!(
                    "unknown clock `{}` (expected wall or deterministic)",
                    mode.get_ref()
                ),
            ));
        }
    };
    if let (ClockMode::WallClock, Some(start)) = (clock, &table.start_time) {
        return Err((
            start.span().start,
            "`start-time` needs clock = \"deterministic\"".into(),
        ));
    }
    let checkpoint = checkpoint(
        table.checkpoint_dir.as_ref(),
        raw.checkpoint.as_ref(),
        paths,
        scope.checkpoints.as_ref().map(|base| base.join(&table.name)),
    )?;
    let default_partitions = std::thread::available_parallelism().map_or(2, |n| n.get());
    let partitions = positive(table.partitions.as_ref(), "partitions", 1024)?.unwrap_or(default_partitions);
    let queue_chunks = positive(table.queue_chunks.as_ref(), "queue-chunks", 1 << 20)?.unwrap_or(16);
    let max_batch_memory = table.max_batch_memory.as_ref().map(byte_size).transpose()?;
    let chunk_records = positive(table.chunk_records.as_ref(), "chunk-records", 1 << 24)?.unwrap_or(8192);

    let plugins = plugins(raw.plugins, scope)?;

    let default_limits = limits(
        raw.limits.as_ref(),
        Limits {
            call_deadline: Limits::deadline_for_interval(batch_interval),
            ..Limits::default()
        },
    )?;
    let kind_defaults = KindDefaults {
        plugins: &plugins,
        limits: &default_limits,
    };
    let ids_prefix = scope.ids_prefix.as_deref();
    let sources = raw
        .sources
        .into_iter()
        .map(|source| source_spec(source, paths, ids_prefix, &kind_defaults, lines))
        .collect::<Result<Vec<_>, _>>()?;
    check_sources(&sources, clock, checkpoint.as_ref().map(|c| &c.location))?;
    let defaults = StageDefaults {
        plugins: &plugins,
        batch_interval,
        limits: &default_limits,
        paths,
    };
    let stages = raw
        .stages
        .into_iter()
        .map(|stage| stage_spec(stage, &defaults, lines))
        .collect::<Result<Vec<_>, _>>()?;
    let input_offsets: Vec<usize> = stages.iter().map(|(_, input_at, _)| *input_at).collect();
    let stages: Vec<(usize, StageSpec)> = stages
        .into_iter()
        .map(|(offset, _, stage)| (offset, stage))
        .collect();
    let sinks = raw
        .sinks
        .into_iter()
        .map(|sink| sink_spec(sink, paths, ids_prefix, &kind_defaults, lines))
        .collect::<Result<Vec<_>, _>>()?;

    for (offset, name) in sources
        .iter()
        .map(|(o, s)| (*o, &s.name))
        .chain(stages.iter().map(|(o, s)| (*o, &s.name)))
    {
        if name == DEAD_LETTERS {
            return Err((
                offset,
                format!("`{DEAD_LETTERS}` is reserved for the dead-letter stream"),
            ));
        }
    }
    let dead_letters = stages.iter().any(|(_, stage)| stage.dead_letters());
    if dead_letters && !sinks.iter().any(|(_, sink)| sink.input == DEAD_LETTERS) {
        let (offset, stage) = stages
            .iter()
            .find(|(_, stage)| stage.dead_letters())
            .expect("a dead-letter stage exists");
        return Err((
            *offset,
            format!(
                "stage `{}` sends records to the dead-letter stream (on-error or late-records = \"dead-letter\") but no sink reads `{DEAD_LETTERS}`: add a [[sink]] with input = \"{DEAD_LETTERS}\" so those records are kept",
                stage.name
            ),
        ));
    }
    check_written_places(
        &sinks,
        checkpoint.as_ref().map(|c| &c.location),
        scope.checkpoints.as_deref(),
    )?;
    let order = order_stages(&sources, &stages, &input_offsets, &sinks, dead_letters)?;
    let mut slots: Vec<Option<(usize, StageSpec)>> = stages.into_iter().map(Some).collect();
    let stages = order
        .into_iter()
        .map(|index| slots[index].take().expect("each stage ordered once").1)
        .collect();

    let sources: Vec<SourceSpec> = sources.into_iter().map(|(_, source)| source).collect();
    let cluster = match raw.cluster {
        Some(table) => Some(super::cluster::cluster_spec(
            table,
            &sources,
            checkpoint.as_ref(),
            paths,
        )?),
        None => None,
    };
    Ok(PipelineSpec {
        name: table.name,
        batch_interval,
        clock,
        checkpoint,
        partitions,
        queue_chunks,
        max_batch_memory,
        chunk_records,
        plugins,
        sources,
        stages,
        sinks: sinks.into_iter().map(|(_, sink)| sink).collect(),
        cluster,
    })
}

/// A place the engine writes a pipeline's files to: a local directory or
/// a bucket's prefix.
#[derive(Clone, Copy)]
enum Written<'a> {
    Directory(&'a Path),
    #[cfg(feature = "object-store")]
    Objects(&'a crate::objects::ObjectTarget),
}

impl Written<'_> {
    /// True when one of the two holds the other (or they are the same).
    fn overlaps(self, other: Written<'_>) -> bool {
        match (self, other) {
            (Self::Directory(a), Written::Directory(b)) => a.starts_with(b) || b.starts_with(a),
            #[cfg(feature = "object-store")]
            (Self::Objects(a), Written::Objects(b)) => {
                let nested = |outer: &str, inner: &str| {
                    outer.is_empty() || inner == outer || inner.starts_with(&format!("{outer}/"))
                };
                a.address() == b.address()
                    && a.bucket == b.bucket
                    && (nested(&a.prefix, &b.prefix) || nested(&b.prefix, &a.prefix))
            }
            #[cfg(feature = "object-store")]
            _ => false,
        }
    }

    /// The place, for messages.
    fn shown(self) -> String {
        match self {
            Self::Directory(dir) => dir.display().to_string(),
            #[cfg(feature = "object-store")]
            Self::Objects(target) => target.url(),
        }
    }
}

/// Adds `place` (what `what` writes, declared at `offset`) to `owned`, or
/// refuses it where it overlaps one there.
fn claim<'a>(
    offset: usize,
    what: String,
    place: Written<'a>,
    owned: &mut Vec<(String, Written<'a>)>,
) -> Result<(), SpecError> {
    if let Some((other, at)) = owned.iter().find(|(_, other)| place.overlaps(*other)) {
        return Err((
            offset,
            format!(
                "{what} {} overlaps {other} ({}): each keeps files of its own there and would overwrite or remove the other's; give them separate places",
                place.shown(),
                at.shown()
            ),
        ));
    }
    owned.push((what, place));
    Ok(())
}

/// Refuses two places the engine writes that overlap: the checkpoint
/// location, the files sinks' directories or prefixes, and sink plugins'
/// `write-dir`s. Each keeps files of its own there and removes or replaces
/// them (a checkpoint prunes its batch log, a sink replaces a batch's
/// directory), so one would rewrite another's; and untrusted plugin code
/// would rewrite the batch log or another sink's committed output.
fn check_written_places<'a>(
    sinks: &'a [(usize, SinkSpec)],
    checkpoint: Option<&'a CheckpointLocation>,
    shared_checkpoints: Option<&'a Path>,
) -> Result<(), SpecError> {
    use crate::sink::files::{FilesSinkSpec, FilesTarget};
    use crate::sink::plugin::PluginSinkSpec;
    let mut owned: Vec<(String, Written<'a>)> = Vec::new();
    let checkpoints = "the checkpoint directory";
    match checkpoint {
        Some(CheckpointLocation::Directory(dir)) => {
            owned.push((checkpoints.to_owned(), Written::Directory(dir)))
        }
        #[cfg(feature = "object-store")]
        Some(CheckpointLocation::Objects(target)) => {
            owned.push((checkpoints.to_owned(), Written::Objects(target)))
        }
        None => {}
    }
    // In a server, every pipeline of the tenant checkpoints there.
    if let Some(dir) = shared_checkpoints {
        owned.push((checkpoints.to_owned(), Written::Directory(dir)));
    }
    for (offset, sink) in sinks {
        let place = match sink.kind.settings::<FilesSinkSpec>() {
            Some(FilesSinkSpec {
                target: FilesTarget::Local(dir),
                ..
            }) => Written::Directory(dir.path()),
            #[cfg(feature = "object-store")]
            Some(FilesSinkSpec {
                target: FilesTarget::Object(target),
                ..
            }) => Written::Objects(target),
            None => continue,
        };
        claim(*offset, format!("sink `{}`'s path", sink.name), place, &mut owned)?;
    }
    for (offset, sink) in sinks {
        let Some(dir) = sink
            .kind
            .settings::<PluginSinkSpec>()
            .and_then(|plugin| plugin.sandbox.grants.write_dir.as_ref())
        else {
            continue;
        };
        claim(
            *offset,
            format!("sink `{}`: write-dir", sink.name),
            Written::Directory(dir.path()),
            &mut owned,
        )
        .map_err(|(at, message)| {
            (
                at,
                format!("{message}: a plugin may not write where the engine does"),
            )
        })?;
    }
    Ok(())
}

/// The `[plugins]` table: plugin name → component. With a catalog (a
/// tenant's uploads in a server), a value names an upload and every upload
/// is declared under its own name too; without one, a value is a path.
fn plugins(
    table: BTreeMap<String, Spanned<String>>,
    scope: &Scope,
) -> Result<BTreeMap<String, PathBuf>, SpecError> {
    let Some(catalog) = &scope.catalog else {
        return table
            .into_iter()
            .map(|(name, path)| {
                let resolved = scope
                    .paths
                    .resolve(path.get_ref(), &format!("plugins.{name}"))
                    .map_err(|message| (path.span().start, message))?;
                Ok((name, resolved))
            })
            .collect();
    };
    let mut plugins = catalog.clone();
    for (alias, upload) in table {
        let Some(component) = catalog.get(upload.get_ref()) else {
            let known: Vec<&str> = catalog.keys().map(String::as_str).collect();
            return Err((
                upload.span().start,
                format!(
                    "`{alias}` names the plugin `{}`, which is not uploaded (uploaded: {}); upload it with `weir plugin push`",
                    upload.get_ref(),
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        };
        plugins.insert(alias, component.clone());
    }
    Ok(plugins)
}

/// `checkpoint-dir` of `[pipeline]` with the settings of `[checkpoint]`;
/// `None`: no checkpoints.
fn checkpoint(
    dir: Option<&Spanned<String>>,
    tuning: Option<&Spanned<CheckpointTable>>,
    paths: &Paths,
    default_dir: Option<PathBuf>,
) -> Result<Option<CheckpointSettings>, SpecError> {
    let location = match (dir, tuning, default_dir) {
        (Some(dir), _, _) if dir.get_ref().starts_with("s3://") => {
            objects_location(dir, tuning.map(Spanned::get_ref), paths)?
        }
        (Some(dir), _, _) => CheckpointLocation::Directory(
            paths
                .resolve(dir.get_ref(), "checkpoint-dir")
                .map_err(|message| (dir.span().start, message))?,
        ),
        (None, _, Some(default_dir)) => CheckpointLocation::Directory(default_dir),
        (None, Some(tuning), None) => {
            return Err((
                tuning.span().start,
                "[checkpoint] needs `checkpoint-dir` in [pipeline]".into(),
            ));
        }
        (None, None, None) => return Ok(None),
    };
    let tuning = tuning.map(|t| t.get_ref());
    if location.directory().is_some()
        && let Some(key) = tuning.and_then(first_object_key)
    {
        return Err((
            key.span().start,
            "`endpoint`, `region`, `credentials` and the access keys of [checkpoint] are for an `s3://` checkpoint-dir"
                .to_owned(),
        ));
    }
    Ok(Some(CheckpointSettings {
        location,
        confined_to: paths.confined().then(|| paths.base_dir().to_owned()),
        every_batches: positive(
            tuning.and_then(|t| t.every_batches.as_ref()),
            "every-batches",
            1 << 30,
        )?
        .unwrap_or(10) as u64,
        every: tuning.and_then(|t| t.every.as_ref()).map(duration).transpose()?,
        keep: positive(tuning.and_then(|t| t.keep.as_ref()), "keep", 1000)?.unwrap_or(3),
        full_every: positive(tuning.and_then(|t| t.full_every.as_ref()), "full-every", 1 << 20)?.unwrap_or(50)
            as u64,
        wal_sync: match tuning.and_then(|t| t.wal_sync.as_ref()) {
            None => WalSync::Block,
            Some(text) if text.get_ref() == "block" => WalSync::Block,
            Some(text) => WalSync::Interval(duration(text).map_err(|(at, _)| {
                (
                    at,
                    format!(
                        "wal-sync must be \"block\" or an interval such as \"100ms\", not {:?}",
                        text.get_ref()
                    ),
                )
            })?),
        },
    }))
}

/// The object-storage keys of `[checkpoint]`.
#[cfg(feature = "object-store")]
fn object_keys(table: &CheckpointTable) -> crate::objects::ObjectKeys<'_> {
    crate::objects::ObjectKeys {
        endpoint: table.endpoint.as_ref(),
        region: table.region.as_ref(),
        access_key_id: table.access_key_id.as_ref(),
        secret_access_key: table.secret_access_key.as_ref(),
        credentials: table.credentials.as_ref(),
    }
}

/// The first object-storage key `[checkpoint]` sets.
fn first_object_key(table: &CheckpointTable) -> Option<&Spanned<String>> {
    [
        &table.endpoint,
        &table.region,
        &table.access_key_id,
        &table.secret_access_key,
        &table.credentials,
    ]
    .into_iter()
    .find_map(Option::as_ref)
}

/// An `s3://` `checkpoint-dir`, with the keys of `[checkpoint]`.
fn objects_location(
    dir: &Spanned<String>,
    tuning: Option<&CheckpointTable>,
    paths: &Paths,
) -> Result<CheckpointLocation, SpecError> {
    let at = dir.span().start;
    if paths.confined() {
        return Err((
            at,
            "a server's pipelines checkpoint in their tenant's directory, not on object storage: leave out checkpoint-dir"
                .to_owned(),
        ));
    }
    #[cfg(feature = "object-store")]
    {
        let keys = tuning.map(object_keys).unwrap_or_default();
        Ok(CheckpointLocation::Objects(crate::objects::ObjectTarget::parse(
            dir.get_ref(),
            &keys,
            at,
        )?))
    }
    #[cfg(not(feature = "object-store"))]
    {
        let _ = tuning;
        Err((
            at,
            "this weir was built without the `object-store` feature: it cannot checkpoint to s3://"
                .to_owned(),
        ))
    }
}

/// Orders stages after their inputs and checks that sinks read known streams.
fn order_stages(
    sources: &[(usize, SourceSpec)],
    stages: &[(usize, StageSpec)],
    input_offsets: &[usize],
    sinks: &[(usize, SinkSpec)],
    dead_letters: bool,
) -> Result<Vec<usize>, SpecError> {
    if sources.is_empty() {
        return Err((0, "the pipeline has no [[source]]".into()));
    }
    if sinks.is_empty() {
        return Err((
            0,
            "the pipeline has no [[sink]]: add one (for example type = \"console\") so results go somewhere"
                .into(),
        ));
    }
    let source_nodes: Vec<(&str, usize)> = sources
        .iter()
        .map(|(offset, source)| (source.name.as_str(), *offset))
        .collect();
    let stage_nodes: Vec<Node<'_>> = stages
        .iter()
        .zip(input_offsets)
        .map(|((offset, stage), input_at)| Node {
            name: &stage.name,
            inputs: stage
                .inputs
                .iter()
                .map(|input| (input.as_str(), *input_at))
                .collect(),
            offset: *offset,
        })
        .collect();
    let order = topological_order(&source_nodes, &stage_nodes)?;
    for (offset, sink) in sinks {
        if sink.input == DEAD_LETTERS && !dead_letters {
            return Err((
                *offset,
                format!(
                    "sink `{}` reads `{DEAD_LETTERS}`, but no stage has on-error = \"dead-letter\"",
                    sink.name
                ),
            ));
        }
        let known = sink.input == DEAD_LETTERS
            || source_nodes.iter().any(|(name, _)| *name == sink.input)
            || stage_nodes.iter().any(|node| node.name == sink.input);
        if !known {
            return Err((
                *offset,
                format!("sink `{}` reads the unknown stream `{}`", sink.name, sink.input),
            ));
        }
    }
    Ok(order)
}
