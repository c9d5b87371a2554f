//! Loaded plugins.
//!
//! A [`Plugin`] is a compiled, linked and pre-instantiated component whose
//! exports were checked against the Weir contract; it is shared by every
//! worker. Its warm instances live in [`super::instance`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use wasmtime::component::{Component, Linker};

use super::bindings::types;
use super::error::PluginError;
use super::instance::PluginInstance;
use super::limits::Sandbox;
use super::state::{InstanceLabel, PluginState};
use super::world::{CoTransformPre, ReducerPre, StatePre, TransformPre};

/// The pre-instantiated component of a sink plugin.
type SinkPre = super::bindings::sink::SinkPluginPre<PluginState>;

/// The operator a plugin implements, as it declares it: the kind shared with
/// the guest SDK (`PluginKind::Map`, `.name()`, `.interface()`).
pub use weir_abi::Kind as PluginKind;

/// The conversion from the WIT `plugin-kind` (here, where the bindings are).
pub(super) trait FromWit {
    fn from_wit(kind: types::PluginKind) -> Self;
}

impl FromWit for PluginKind {
    fn from_wit(kind: types::PluginKind) -> Self {
        match kind {
            types::PluginKind::Map => Self::Map,
            types::PluginKind::FlatMap => Self::FlatMap,
            types::PluginKind::Filter => Self::Filter,
            types::PluginKind::FilterMap => Self::FilterMap,
            types::PluginKind::MapPartitions => Self::MapPartitions,
            types::PluginKind::Reducer => Self::Reducer,
            types::PluginKind::UpdateState => Self::UpdateState,
            types::PluginKind::MapWithState => Self::MapWithState,
            types::PluginKind::TransformWith => Self::TransformWith,
        }
    }
}

/// What a plugin says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    /// The plugin's name.
    pub name: String,
    /// The plugin's version.
    pub version: String,
    /// The operator it implements.
    pub kind: PluginKind,
    /// The guest SDK version it was built with.
    pub sdk_version: String,
    /// The version of the format of its per-key state (1 unless it says).
    pub state_version: u32,
    /// The version of the `weir:plugin` contract it was built against.
    pub contract: &'static str,
    /// Whether it exports `state-migration` (converts the states of its
    /// other state versions).
    pub migrates_state: bool,
}

/// The pre-instantiated component, as the bindings of the world it exports.
pub(super) enum Pre {
    Transform(TransformPre),
    Reducer(ReducerPre),
    State(StatePre),
    CoTransform(CoTransformPre),
    Sink(SinkPre),
}

impl Pre {
    /// The first world whose exports `instance_pre` has, of the current
    /// contract or of 0.1.
    fn of(instance_pre: wasmtime::component::InstancePre<PluginState>) -> Result<Self, wasmtime::Error> {
        use super::bindings::{
            co_transform, migrating_state, packed_transform, reducer, state, transform, v0_1,
        };
        // A sink exports neither `lifecycle` nor any operator interface.
        let transform_error = match transform::TransformPluginPre::new(instance_pre.clone()) {
            Ok(pre) => return Ok(Self::Transform(TransformPre::Current(pre))),
            Err(error) => error,
        };
        type Bind = fn(wasmtime::component::InstancePre<PluginState>) -> Result<Pre, wasmtime::Error>;
        let bindings: [Bind; 10] = [
            |pre| {
                packed_transform::PackedTransformPluginPre::new(pre)
                    .map(|p| Self::Transform(TransformPre::Packed(p)))
            },
            |pre| {
                v0_1::transform::TransformPluginPre::new(pre).map(|p| Self::Transform(TransformPre::V0_1(p)))
            },
            |pre| reducer::ReducerPluginPre::new(pre).map(|p| Self::Reducer(ReducerPre::Current(p))),
            |pre| v0_1::reducer::ReducerPluginPre::new(pre).map(|p| Self::Reducer(ReducerPre::V0_1(p))),
            |pre| {
                migrating_state::MigratingStatePluginPre::new(pre)
                    .map(|p| Self::State(StatePre::Migrating(p)))
            },
            |pre| state::StatePluginPre::new(pre).map(|p| Self::State(StatePre::Current(p))),
            |pre| v0_1::state::StatePluginPre::new(pre).map(|p| Self::State(StatePre::V0_1(p))),
            |pre| {
                co_transform::CoTransformPluginPre::new(pre)
                    .map(|p| Self::CoTransform(CoTransformPre::Current(p)))
            },
            |pre| {
                v0_1::co_transform::CoTransformPluginPre::new(pre)
                    .map(|p| Self::CoTransform(CoTransformPre::V0_1(p)))
            },
            |pre| SinkPre::new(pre).map(Self::Sink),
        ];
        bindings
            .into_iter()
            .find_map(|bind| bind(instance_pre.clone()).ok())
            .ok_or(transform_error)
    }

    /// The interface this world exports (besides lifecycle).
    fn interface(&self) -> &'static str {
        match self {
            Self::Transform(_) => "transform",
            Self::Reducer(_) => "reducer",
            Self::State(_) => "keyed-state",
            Self::CoTransform(_) => "co-transform",
            Self::Sink(_) => "sink",
        }
    }

    /// The version of the `weir:plugin` contract the component was built against.
    fn contract(&self) -> &'static str {
        match self {
            Self::Transform(TransformPre::V0_1(_))
            | Self::Reducer(ReducerPre::V0_1(_))
            | Self::State(StatePre::V0_1(_))
            | Self::CoTransform(CoTransformPre::V0_1(_)) => "0.1.0",
            _ => CONTRACT_VERSION,
        }
    }

    /// True when the component exports `state-migration`.
    fn migrates_state(&self) -> bool {
        matches!(self, Self::State(StatePre::Migrating(_)))
    }
}

/// The version of the `weir:plugin` WIT package this host is written
/// against (components of 0.1.0 load too).
pub const CONTRACT_VERSION: &str = "0.2.0";

/// The versions of the `weir:plugin` contract this Weir runs plugins of.
pub const KNOWN_CONTRACTS: [&str; 2] = [CONTRACT_VERSION, "0.1.0"];

/// The names of the `weir:plugin` interfaces `component` imports or
/// exports (`weir:plugin/transform@0.2.0`, ...).
fn contract_names(component: &Component) -> Vec<String> {
    let engine = component.engine();
    let ty = component.component_type();
    let imports = ty.imports(engine).map(|(name, _)| name);
    let exports = ty.exports(engine).map(|(name, _)| name);
    imports
        .chain(exports)
        .filter(|name| name.starts_with("weir:plugin/"))
        .map(str::to_owned)
        .collect()
}

/// True when `component` exports `name`.
fn component_exports(component: &Component, name: &str) -> bool {
    component
        .component_type()
        .get_export(component.engine(), name)
        .is_some()
}

/// Why a component whose `weir:plugin` exports are `exported` (of known
/// contract versions) binds to no plugin world: none exported, or exported
/// with other types than this Weir's contract (a changed copy of the WIT).
fn unfit_exports(exported: &[&str], error: &wasmtime::Error) -> String {
    if exported.is_empty() {
        return format!(
            "it exports none of weir:plugin/transform, reducer, keyed-state, co-transform or sink ({error:#}); build it with the weir-guest SDK"
        );
    }
    format!(
        "it exports {}, but not with the types of the weir:plugin contract of that version: it was built \
         against a changed copy of the contract's WIT; build it with the weir-guest SDK of this Weir ({error:#})",
        exported.join(", ")
    )
}

/// A compiled, linked and checked component: what the engine's plugin
/// catalog shares between every pipeline that loads the same bytes.
pub struct CompiledPlugin {
    content_hash: String,
    component: Component,
    pub(super) pre: Pre,
    info: PluginInfo,
    pub(super) engine: wasmtime::Engine,
}

impl CompiledPlugin {
    /// Links `component` and checks it against the contract by instantiating
    /// it once and calling `describe`. `path` names it in errors.
    pub(crate) fn new(
        path: &Path,
        content_hash: String,
        component: Component,
        linker: &Linker<PluginState>,
    ) -> Result<Self, PluginError> {
        let contract = |message: String| PluginError::Contract {
            path: path.to_owned(),
            message,
        };
        // A component built against a contract this Weir does not know
        // fails to link or to bind below; say why, not which import failed.
        let contract_names = contract_names(&component);
        if let Some(unknown) = contract_names
            .iter()
            .filter_map(|name| name.rsplit_once('@').map(|(_, version)| version))
            .find(|version| !KNOWN_CONTRACTS.contains(version))
        {
            return Err(contract(format!(
                "it was built against version {unknown} of the weir:plugin contract; this Weir runs plugins \
                 built against {}: build it with the weir-guest SDK of this Weir (`weir plugin build`)",
                KNOWN_CONTRACTS.join(" or ")
            )));
        }
        let instance_pre = linker.instantiate_pre(&component).map_err(|e| {
            contract(format!(
                "it needs an import Weir does not provide (plugins get only weir:plugin/log and an empty WASI): {e:#}"
            ))
        })?;
        let pre = Pre::of(instance_pre).map_err(|error| {
            let exported: Vec<&str> = contract_names
                .iter()
                .map(String::as_str)
                .filter(|name| component_exports(&component, name))
                .collect();
            contract(unfit_exports(&exported, &error))
        })?;
        let engine = component.engine().clone();
        let probe = Arc::new(Plugin {
            path: path.to_owned(),
            compiled: Arc::new(Self {
                content_hash,
                component,
                pre,
                info: PluginInfo {
                    name: String::new(),
                    version: String::new(),
                    kind: PluginKind::Map,
                    sdk_version: String::new(),
                    state_version: 1,
                    contract: CONTRACT_VERSION,
                    migrates_state: false,
                },
                engine,
            }),
        });
        let probe_sandbox = Arc::new(Sandbox::default());
        let info =
            PluginInstance::instantiate(&probe, InstanceLabel::default(), &probe_sandbox)?.describe()?;
        let probe = Arc::into_inner(probe).expect("the probe instance is gone");
        let mut compiled = Arc::into_inner(probe.compiled).expect("only the probe held it");
        compiled.info = PluginInfo {
            contract: compiled.pre.contract(),
            migrates_state: compiled.pre.migrates_state(),
            ..info
        };
        if compiled.pre.interface() != compiled.info.kind.interface() {
            return Err(contract(format!(
                "it says it is a {} but exports the {} interface",
                compiled.info.kind.name(),
                compiled.pre.interface()
            )));
        }
        Ok(compiled)
    }

    /// Hex SHA-256 of the component's bytes.
    pub fn content_hash(&self) -> &str {
        &self.content_hash
    }

    /// What the plugin says about itself.
    pub fn info(&self) -> &PluginInfo {
        &self.info
    }
}

/// A plugin as one pipeline loaded it: the shared compiled form and the
/// path it was loaded from (which names it in that pipeline's errors).
pub struct Plugin {
    path: PathBuf,
    compiled: Arc<CompiledPlugin>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("path", &self.path)
            .field("info", &self.compiled.info)
            .finish_non_exhaustive()
    }
}

impl Plugin {
    /// `compiled`, as loaded from `path`.
    pub(crate) fn new(path: &Path, compiled: Arc<CompiledPlugin>) -> Self {
        Self {
            path: path.to_owned(),
            compiled,
        }
    }

    /// The component file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Hex SHA-256 of the component file.
    pub fn content_hash(&self) -> &str {
        &self.compiled.content_hash
    }

    /// What the plugin says about itself.
    pub fn info(&self) -> &PluginInfo {
        &self.compiled.info
    }

    /// The compiled component.
    pub fn component(&self) -> &Component {
        &self.compiled.component
    }

    /// The shared compiled form.
    pub fn compiled(&self) -> &Arc<CompiledPlugin> {
        &self.compiled
    }
}
