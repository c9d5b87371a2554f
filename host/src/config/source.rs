//! `[[source]]` tables: what a source kind provides, and the parser that
//! hands each table to its kind.
//!
//! A source kind is one type, in its receiver's file under `source/`, that
//! implements [`SourceType`] (its `type` name, its keys, its parser) and
//! [`SourceConfig`] (the settings it parsed, which build the receiver); it
//! is registered by one line in [`crate::source::TYPES`]. A Kafka source is
//! `source/kafka.rs`, its `pub mod` line and that registration line.

use std::any::Any;
use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use toml::Spanned;

use super::file::SourceTable;
use super::settings::{Key, KindContext, KindDefaults, KindEntry, Schema, Settings};
use super::values::{positive, stream_name};
use super::{ClockMode, LineIndex, Paths, SourceSpec, SpecError};
use crate::checkpoint::CheckpointLocation;
use crate::source::rate::{DEFAULT_MIN_RATE, RateSpec};
use crate::source::{Source, TYPES};

/// The validated settings of one kind of source.
pub trait SourceConfig: fmt::Debug + Send + Sync + Any {
    /// The receiver these settings describe.
    fn build(&self) -> Box<dyn Source>;

    /// What it reaches besides files. Default: [`super::Reach::Undeclared`],
    /// which a server refuses: a kind that reaches only files says so.
    fn reach(&self) -> super::Reach {
        super::Reach::Undeclared
    }

    /// Why this source cannot run without `checkpoint-dir`, as the message
    /// of the error. Default: it can.
    fn needs_checkpoints(&self) -> Option<&'static str> {
        None
    }

    /// True when the receiver keeps a write-ahead log in the checkpoint
    /// directory (appended per block, so it must be a local directory).
    /// Default: it does not.
    fn write_ahead_log(&self) -> bool {
        false
    }

    /// True when every batch holds a fixed part of this source, as
    /// `clock = "deterministic"` requires. Default: it does not.
    fn fixed_batches(&self) -> bool {
        false
    }

    /// Why this source never runs out of input (so `--available-now` would
    /// never end), as the start of the error's message: "is ...". Default:
    /// it runs out.
    fn endless(&self) -> Option<&'static str> {
        None
    }
}

/// A kind of source: its name, its keys and its parser.
pub trait SourceType: SourceConfig + Sized {
    /// Its name in `type = "..."`.
    const NAME: &'static str;
    /// Every key it accepts besides `name` and `type`.
    const KEYS: &'static [Key];

    /// Reads its keys (only [`Self::KEYS`] are present) into its settings.
    fn parse(settings: &Settings, cx: &KindContext<'_>) -> Result<Self, SpecError>;
}

/// A registered source kind.
pub type SourceEntry = KindEntry<SourceKind>;

impl SourceEntry {
    /// The entry of kind `T`.
    pub const fn of<T: SourceType>() -> Self {
        Self {
            name: T::NAME,
            keys: T::KEYS,
            parse: |settings, cx| T::parse(settings, cx).map(|config| SourceKind(Arc::new(config))),
        }
    }
}

/// What a source reads: the settings of its kind.
#[derive(Debug, Clone)]
pub struct SourceKind(Arc<dyn SourceConfig>);

impl SourceKind {
    /// A source of the kind `config` is the settings of (one the engine
    /// composes itself, such as a cluster's repartition reader).
    pub fn new(config: impl SourceConfig) -> Self {
        Self(Arc::new(config))
    }

    /// The settings, if the source is of kind `T`.
    pub fn settings<T: SourceConfig>(&self) -> Option<&T> {
        let config: &dyn Any = self.0.as_ref();
        config.downcast_ref()
    }
}

impl Deref for SourceKind {
    type Target = dyn SourceConfig;

    fn deref(&self) -> &Self::Target {
        self.0.as_ref()
    }
}

/// The keys a `[[source]]` table may hold: its own and every kind's.
pub(super) fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        Schema::new(
            "SourceTable",
            &[
                Key::text("name"),
                Key::text("type"),
                Key::integer("max-rate"),
                Key::boolean("backpressure"),
                Key::integer("backpressure-min-rate"),
                Key::integer("backpressure-initial-rate"),
            ],
            &["name", "type"],
            TYPES.iter().map(|kind| kind.keys),
        )
    })
}

/// Validates one `[[source]]` table; returns its offset with it.
pub(super) fn source_spec(
    table: Spanned<SourceTable>,
    paths: &Paths,
    ids_prefix: Option<&str>,
    defaults: &KindDefaults<'_>,
    lines: &LineIndex,
) -> Result<(usize, SourceSpec), SpecError> {
    let offset = table.span().start;
    let table = table.into_inner();
    let name = stream_name(&table.name)?;
    let kind_name = table.kind.get_ref().as_str();
    let kind = KindEntry::parse_table(
        TYPES,
        "source",
        kind_name,
        table.kind.span().start,
        &table.settings,
        schema(),
        &KindContext {
            offset,
            paths,
            ids_prefix,
            plugins: defaults.plugins,
            limits: defaults.limits,
        },
    )?;
    Ok((
        offset,
        SourceSpec {
            name,
            kind,
            rate: rate_spec(&table)?,
            line: lines.line_of(offset),
        },
    ))
}

/// The keys every source kind accepts: `max-rate`, `backpressure`,
/// `backpressure-min-rate` and `backpressure-initial-rate`.
fn rate_spec(table: &SourceTable) -> Result<RateSpec, SpecError> {
    /// A rate above this is a mistake (a million times the fastest source).
    const MOST: usize = 1 << 40;
    let max_rate = positive(table.max_rate.as_ref(), "max-rate", MOST)?.map(|r| r as u64);
    let backpressure = table.backpressure.as_ref().is_some_and(|b| *b.get_ref());
    let min_rate = positive(
        table.backpressure_min_rate.as_ref(),
        "backpressure-min-rate",
        MOST,
    )?;
    let initial_rate = positive(
        table.backpressure_initial_rate.as_ref(),
        "backpressure-initial-rate",
        MOST,
    )?;
    if !backpressure
        && let Some((key, at)) = [
            ("backpressure-min-rate", &table.backpressure_min_rate),
            ("backpressure-initial-rate", &table.backpressure_initial_rate),
        ]
        .into_iter()
        .find_map(|(key, value)| Some((key, value.as_ref()?.span().start)))
    {
        return Err((at, format!("`{key}` needs `backpressure = true`")));
    }
    let backpressure_min_rate = backpressure.then(|| min_rate.map_or(DEFAULT_MIN_RATE, |m| m as u64));
    if let (Some(min), Some(max), Some(at)) = (backpressure_min_rate, max_rate, &table.backpressure_min_rate)
        && min > max
    {
        return Err((
            at.span().start,
            format!(
                "backpressure-min-rate ({min}) is above max-rate ({max}): backpressure sets rates between the two"
            ),
        ));
    }
    Ok(RateSpec {
        max_rate,
        backpressure_min_rate,
        backpressure_initial_rate: initial_rate.map(|r| r as u64),
    })
}

/// The checks of sources against the pipeline: sources that need
/// checkpoints, then, under deterministic time, sources without fixed batches.
pub(super) fn check_sources(
    sources: &[(usize, SourceSpec)],
    clock: ClockMode,
    checkpoint: Option<&CheckpointLocation>,
) -> Result<(), SpecError> {
    if let Some(location) = checkpoint
        && location.directory().is_none()
        && let Some((offset, source)) = sources.iter().find(|(_, source)| source.kind.write_ahead_log())
    {
        return Err((
            *offset,
            format!(
                "source `{}` keeps a write-ahead log in the checkpoint directory, appended as lines arrive, which object storage ({location}) cannot do: give the pipeline a local checkpoint-dir",
                source.name
            ),
        ));
    }
    if checkpoint.is_none()
        && let Some((offset, reason)) = sources
            .iter()
            .find_map(|(offset, source)| Some((*offset, source.kind.needs_checkpoints()?)))
    {
        return Err((offset, reason.to_owned()));
    }
    if matches!(clock, ClockMode::Deterministic { .. })
        && let Some((offset, source)) = sources
            .iter()
            .find(|(_, source)| source.rate.backpressure_min_rate.is_some())
    {
        return Err((
            *offset,
            format!(
                "source `{}` cannot use `backpressure` under clock = \"deterministic\": each batch holds a fixed part of every source whatever the processing takes; `max-rate` paces a source there",
                source.name
            ),
        ));
    }
    if matches!(clock, ClockMode::Deterministic { .. })
        && let Some((offset, source)) = sources.iter().find(|(_, source)| !source.kind.fixed_batches())
    {
        return Err((
            *offset,
            format!(
                "source `{}` cannot run under clock = \"deterministic\": each batch must hold a fixed part of every source; use a files source with `max-files-per-batch` or a generator with `records-per-batch` (and no `rate`)",
                source.name
            ),
        ));
    }
    Ok(())
}
