//! What the web UI shows and may change: a [`Directory`] of pipelines,
//! seen by a [`Viewer`]. `weir run --ui` lists its own pipelines
//! ([`LocalDirectory`]); `weir serve` lists each tenant's behind its tokens
//! (`crate::server::ui`).

use crate::engine::{Engine, PipelineHandle};
use crate::pipeline::StopMode;

/// Who looks at the UI.
#[derive(Clone)]
pub struct Viewer {
    /// How the UI names them (`admin`, `tenant acme (viewer)`, `local`).
    pub name: String,
    /// The only tenant whose pipelines they see; `None`: every one.
    pub tenant: Option<String>,
    /// The server's admin (sees tenants and their quota use).
    pub admin: bool,
    /// May pause, resume, stop and roll back.
    pub may_operate: bool,
    /// The bearer token they presented, if any (never shown).
    pub token: Option<String>,
}

impl std::fmt::Debug for Viewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Viewer")
            .field("name", &self.name)
            .field("tenant", &self.tenant)
            .field("admin", &self.admin)
            .field("may_operate", &self.may_operate)
            .finish_non_exhaustive()
    }
}

impl Viewer {
    /// The person at a `weir run --ui`: sees and may change everything.
    pub fn local() -> Self {
        Self {
            name: "local".into(),
            tenant: None,
            admin: false,
            may_operate: true,
            token: None,
        }
    }
}

/// A pipeline as the UI lists it.
#[derive(Debug, Clone)]
pub struct Listing {
    /// Its tenant (`None` for a `weir run`).
    pub tenant: Option<String>,
    /// Its name.
    pub name: String,
    /// The run, when it was started.
    pub handle: Option<PipelineHandle>,
    /// What the owner should know that the run does not say (why it could
    /// not start, a quota pause, that it is meant to be stopped).
    pub note: Option<String>,
}

/// The URL segment of a listing without a tenant.
pub const LOCAL: &str = "local";

impl Listing {
    /// The tenant segment of its pages' URLs.
    pub fn tenant_segment(&self) -> &str {
        self.tenant.as_deref().unwrap_or(LOCAL)
    }

    /// Its page: `/ui/{tenant}/{name}`.
    pub fn path(&self) -> String {
        format!("/ui/{}/{}", self.tenant_segment(), self.name)
    }
}

/// A change asked for from the UI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Stop cutting batches.
    Pause,
    /// Cut batches again.
    Resume,
    /// Stop gracefully.
    Stop,
    /// Return a stage's plugin to its previous version (or give up its
    /// candidate in shadow or canary).
    RollBack {
        /// The stage.
        stage: String,
        /// The plugin within the stage, when it runs several.
        plugin: Option<String>,
    },
}

impl Action {
    /// How the audit log and messages name it.
    pub fn describe(&self) -> String {
        match self {
            Self::Pause => "pause".into(),
            Self::Resume => "resume".into(),
            Self::Stop => "stop".into(),
            Self::RollBack { stage, .. } => format!("roll back stage {stage} of"),
        }
    }
}

/// A tenant as the admin's overview shows it.
#[derive(Debug, Clone, Default)]
pub struct TenantRow {
    /// Its name.
    pub name: String,
    /// Pipelines deployed and running.
    pub pipelines: usize,
    /// Pipelines running.
    pub running: usize,
    /// Disk it holds and may hold, in bytes.
    pub disk: (u64, u64),
    /// Plugin instances its running pipelines may hold, and its quota.
    pub instances: (u64, u64),
    /// Wasm memory those may hold, and its quota, in bytes.
    pub wasm_memory: (u64, u64),
}

/// One process's share of a cluster pipeline (a `weir run` of a file with
/// `[cluster]`), as the UI and `/metrics` show it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    /// The pipeline.
    pub pipeline: String,
    /// The consumer group its processes share.
    pub group: String,
    /// The partitions the group gives this process, by segment and
    /// partition.
    pub held: Vec<HeldPartition>,
    /// Rebalances this process took part in (each assignment and each
    /// revocation that changed what it holds).
    pub rebalances: u64,
    /// When the last of them happened (milliseconds since the Unix epoch).
    pub last_rebalance_ms: Option<i64>,
    /// Kafka transactions the process committed (one per batch for all
    /// its tasks together).
    pub transactions: u64,
    /// Task batches those transactions carried.
    pub transaction_batches: u64,
    /// Transactions it aborted.
    pub transactions_aborted: u64,
}

/// A partition a cluster member holds: one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldPartition {
    /// The segment (the stages between two repartition topics).
    pub segment: String,
    /// The topic whose partition it is (the input topic, or a repartition
    /// topic).
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The task's pipeline, `<pipeline>.<segment>.<partition>`.
    pub task: String,
    /// Since when this process holds it (milliseconds since the Unix
    /// epoch).
    pub since_ms: i64,
}

/// Where a cluster member publishes its [`Membership`]; cheap to clone
/// (all clones share it).
#[derive(Debug, Clone, Default)]
pub struct MembershipBoard(std::sync::Arc<std::sync::Mutex<Membership>>);

impl MembershipBoard {
    /// Replaces what is published with `membership`.
    pub fn publish(&self, membership: Membership) {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = membership;
    }

    /// What was last published.
    pub fn read(&self) -> Membership {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// The pipelines a UI shows. One required method; the others default to a
/// `weir run`'s single local operator.
pub trait Directory: Send + Sync + 'static {
    /// The pipelines `viewer` may see, in the order to show them.
    fn pipelines(&self, viewer: &Viewer) -> Vec<Listing>;

    /// Who presents `token` (`None`: no token); `None` when nobody may look
    /// without a valid one. Default: everyone is [`Viewer::local`].
    fn viewer(&self, token: Option<&str>) -> Option<Viewer> {
        let _ = token;
        Some(Viewer::local())
    }

    /// Applies `action` to `listing` for `viewer` (who may operate).
    /// Default: straight on the pipeline's handle ([`control_handle`]).
    fn control(&self, viewer: &Viewer, listing: &Listing, action: &Action) -> Result<(), String> {
        control_handle(viewer, listing, action)
    }

    /// The tenants and their quota use, for an admin. Default: none.
    fn tenants(&self, viewer: &Viewer) -> Vec<TenantRow> {
        let _ = viewer;
        Vec::new()
    }

    /// This process's share of a cluster pipeline, when it runs one.
    /// Default: none.
    fn membership(&self, viewer: &Viewer) -> Option<Membership> {
        let _ = viewer;
        None
    }
}

/// Applies `action` for `viewer` straight on `listing`'s pipeline handle.
pub fn control_handle(viewer: &Viewer, listing: &Listing, action: &Action) -> Result<(), String> {
    let handle = listing
        .handle
        .as_ref()
        .ok_or_else(|| format!("pipeline `{}` is not running", listing.name))?;
    let result = match action {
        Action::Pause => handle.pause().map(drop),
        Action::Resume => handle.resume().map(drop),
        Action::Stop => {
            handle.stop(StopMode::Graceful);
            Ok(())
        }
        Action::RollBack { stage, plugin } => handle
            .roll_back(stage, plugin.as_deref(), Some(viewer.name.clone()))
            .map(drop),
    };
    result.map_err(|error| error.to_string())
}

/// The pipelines of one `weir run`: every pipeline its engine runs (for a
/// cluster member, a task per partition it holds, and its membership).
#[derive(Debug, Clone)]
pub struct LocalDirectory {
    engine: Engine,
    membership: Option<MembershipBoard>,
}

impl LocalDirectory {
    /// The pipelines `engine` runs.
    pub fn new(engine: Engine) -> Self {
        Self {
            engine,
            membership: None,
        }
    }

    /// Also shows the cluster membership published on `board`.
    pub fn with_membership(mut self, board: MembershipBoard) -> Self {
        self.membership = Some(board);
        self
    }
}

impl Directory for LocalDirectory {
    fn pipelines(&self, _viewer: &Viewer) -> Vec<Listing> {
        let mut handles = self.engine.supervisor().list();
        handles.sort_by_key(PipelineHandle::id);
        handles
            .into_iter()
            .map(|handle| Listing {
                tenant: None,
                name: handle.name().to_owned(),
                handle: Some(handle),
                note: None,
            })
            .collect()
    }

    fn membership(&self, _viewer: &Viewer) -> Option<Membership> {
        self.membership.as_ref().map(MembershipBoard::read)
    }

    /// A cluster member's tasks are not stopped one by one: a task's
    /// partition stays this process's until the process leaves the group.
    fn control(&self, viewer: &Viewer, listing: &Listing, action: &Action) -> Result<(), String> {
        if self.membership.is_some() && *action == Action::Stop {
            return Err(format!(
                "`{}` is a task of a cluster pipeline: it stops with its process (SIGTERM to `weir run`), \
                 and the group then gives its partition to another",
                listing.name
            ));
        }
        control_handle(viewer, listing, action)
    }
}
