//! `[[sink]]` tables: what a sink kind provides, and the parser that hands
//! each table to its kind.
//!
//! A sink kind is one type, in its file under `sink/`, that implements
//! [`SinkType`] (its `type` name, its keys, its parser) and [`SinkConfig`]
//! (the settings it parsed, which build the sink); it is registered by one
//! line in [`crate::sink::TYPES`].

use std::any::Any;
use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use toml::Spanned;

use super::file::SinkTable;
use super::settings::{Key, KindContext, KindDefaults, KindEntry, Schema, Settings};
use super::{LineIndex, Paths, SinkSpec, SpecError};
use crate::sink::{Sink, SinkContext, TYPES};

/// The validated settings of one kind of sink.
pub trait SinkConfig: fmt::Debug + Send + Sync + Any {
    /// The sink these settings describe, for `spec` (its name and input
    /// stream) in the place `cx` describes.
    fn build(&self, spec: &SinkSpec, cx: &SinkContext<'_>) -> Box<dyn Sink>;

    /// What it reaches besides files. Default: [`super::Reach::Undeclared`],
    /// which a server refuses: a kind that reaches only files says so.
    fn reach(&self) -> super::Reach {
        super::Reach::Undeclared
    }

    /// For a sink written as a plugin: the plugin it runs, its instances'
    /// limits and how many it may hold at once (what a server loads, and
    /// counts against a tenant's quotas). Default: none.
    fn plugin(&self) -> Option<SinkPlugin<'_>> {
        None
    }

    /// True for a sink that must see each batch after the pipeline's other
    /// sinks have written it (a sink written as a plugin). Default: false.
    fn after_other_sinks(&self) -> bool {
        false
    }
}

/// The plugin a sink written as a plugin runs.
#[derive(Debug, Clone, Copy)]
pub struct SinkPlugin<'a> {
    /// Its name in `[plugins]`.
    pub name: &'a str,
    /// Its instances' limits.
    pub limits: &'a crate::runtime::Limits,
    /// The most instances it holds at once.
    pub instances: usize,
}

/// A kind of sink: its name, its keys and its parser.
pub trait SinkType: SinkConfig + Sized {
    /// Its name in `type = "..."`.
    const NAME: &'static str;
    /// Every key it accepts besides `name`, `input` and `type`.
    const KEYS: &'static [Key];

    /// Reads its keys (only [`Self::KEYS`] are present) into its settings.
    fn parse(settings: &Settings, cx: &KindContext<'_>) -> Result<Self, SpecError>;
}

/// A registered sink kind.
pub type SinkEntry = KindEntry<SinkKind>;

impl SinkEntry {
    /// The entry of kind `T`.
    pub const fn of<T: SinkType>() -> Self {
        Self {
            name: T::NAME,
            keys: T::KEYS,
            parse: |settings, cx| T::parse(settings, cx).map(|config| SinkKind(Arc::new(config))),
        }
    }
}

/// Where a sink writes: the settings of its kind.
#[derive(Debug, Clone)]
pub struct SinkKind(Arc<dyn SinkConfig>);

impl SinkKind {
    /// A sink of the kind `config` is the settings of (one the engine
    /// composes itself, such as a cluster's repartition writer).
    pub fn new(config: impl SinkConfig) -> Self {
        Self(Arc::new(config))
    }

    /// The settings, if the sink is of kind `T`.
    pub fn settings<T: SinkConfig>(&self) -> Option<&T> {
        let config: &dyn Any = self.0.as_ref();
        config.downcast_ref()
    }
}

impl Deref for SinkKind {
    type Target = dyn SinkConfig;

    fn deref(&self) -> &Self::Target {
        self.0.as_ref()
    }
}

/// The keys a `[[sink]]` table may hold: its own and every kind's.
pub(super) fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        Schema::new(
            "SinkTable",
            &[Key::text("name"), Key::text("input"), Key::text("type")],
            &["input", "type"],
            TYPES.iter().map(|kind| kind.keys),
        )
    })
}

/// Validates one `[[sink]]` table; returns its offset with it.
pub(super) fn sink_spec(
    table: Spanned<SinkTable>,
    paths: &Paths,
    ids_prefix: Option<&str>,
    defaults: &KindDefaults<'_>,
    lines: &LineIndex,
) -> Result<(usize, SinkSpec), SpecError> {
    let offset = table.span().start;
    let table = table.into_inner();
    let kind_name = table.kind.get_ref().as_str();
    let kind = KindEntry::parse_table(
        TYPES,
        "sink",
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
    let input = table.input.get_ref().clone();
    let name = match &table.name {
        Some(name) => name.get_ref().clone(),
        None => format!("{kind_name}-{input}"),
    };
    Ok((
        offset,
        SinkSpec {
            name,
            input,
            kind,
            line: lines.line_of(offset),
        },
    ))
}
