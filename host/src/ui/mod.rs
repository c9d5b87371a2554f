//! The web UI: the page a person keeps open next to running pipelines, as
//! Spark's streaming UI is for its jobs.
//!
//! ```text
//! /ui/                              pipelines (and, for the admin, tenants), live
//! /ui/{tenant}/{pipeline}           charts, batches, stages, plugins, checkpoints, dead letters, live
//! /ui/{tenant}/{pipeline}/batches/{id}   one batch: what each stage did
//! /ui/login, /ui/logout             a server's token, kept in an HttpOnly cookie
//! ```
//!
//! Pages are rendered on the server (maud), charts as SVG ([`chart`]); a
//! page's live stream ([`live`]) sends its sections again as the run moves
//! on, and a small script swaps them in. Nothing is fetched from outside:
//! the stylesheet and the script are compiled into the binary.
//!
//! What is shown comes from a [`Directory`]: a `weir run --ui` shows its
//! own pipelines to whoever reaches its (loopback) address; `weir serve`
//! shows a tenant's token only its tenant's pipelines (another tenant's
//! pages answer 404), and the admin's every tenant's. Buttons that change a
//! pipeline are shown to operators only, ask for confirmation, and are
//! checked again on the server; they are posted with a header a form of
//! another site cannot send, and the login cookie is `SameSite=Strict`.

pub mod chart;
pub mod directory;
pub mod format;
pub mod live;
pub mod local;
pub mod pages;
pub mod pipeline;
pub mod session;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::Markup;
use serde::Deserialize;
use tokio::sync::watch;

pub use directory::{
    Action, Directory, HeldPartition, Listing, LocalDirectory, Membership, MembershipBoard, TenantRow, Viewer,
};
pub use local::{Served, serve};
use session::{CallViewer, PageViewer};

/// The cookie that holds a server's token for the UI.
pub const COOKIE: &str = "weir_ui";

/// The header every change posted by the UI's script carries.
pub const ACTION_HEADER: &str = "x-weir-ui";

const STYLE: &str = include_str!("assets/weir.css");
const SCRIPT: &str = include_str!("assets/weir.js");

/// A failed authentication waits at least this long.
const FAILED_LOGIN_DELAY: std::time::Duration = std::time::Duration::from_millis(500);

/// What the UI's handlers share.
#[derive(Clone)]
pub struct Ui {
    directory: Arc<dyn Directory>,
    closing: watch::Receiver<bool>,
    /// Mark the login cookie `Secure` (the server speaks TLS).
    secure: bool,
    /// How long to hold an answer to a failed authentication (the
    /// server's throttle, by client); none by default.
    throttle: Option<Throttle>,
    /// Live streams open now, at most [`MAX_STREAMS`].
    streams: Arc<tokio::sync::Semaphore>,
}

/// Slows down the answer to a failed authentication: given the request's
/// extensions (its client's address), how long to wait.
pub type Throttle = Arc<dyn Fn(&axum::http::Extensions) -> std::time::Duration + Send + Sync>;

/// Live streams a UI serves at once; past it, a page is told to reload later.
pub const MAX_STREAMS: usize = 256;

impl std::fmt::Debug for Ui {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ui")
            .field("secure", &self.secure)
            .finish_non_exhaustive()
    }
}

impl Ui {
    /// A UI over `directory`; its live streams end when `closing` turns
    /// true. `secure`: the login cookie is sent over TLS only.
    pub fn new(directory: Arc<dyn Directory>, closing: watch::Receiver<bool>, secure: bool) -> Self {
        Self {
            directory,
            closing,
            secure,
            throttle: None,
            streams: Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS)),
        }
    }

    /// Holds every answer to a failed authentication for as long as
    /// `throttle` says (the API's throttle of failures by client).
    pub fn with_throttle(mut self, throttle: Throttle) -> Self {
        self.throttle = Some(throttle);
        self
    }

    /// Waits as the throttle says after a failed authentication.
    async fn failed_authentication(&self, extensions: &axum::http::Extensions) {
        let delay = self.throttle.as_ref().map_or(FAILED_LOGIN_DELAY, |throttle| {
            throttle(extensions).max(FAILED_LOGIN_DELAY)
        });
        tokio::time::sleep(delay).await;
    }

    /// A place for one more live stream, unless [`MAX_STREAMS`] are open.
    fn stream_permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, UiError> {
        self.streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| UiError::Busy(format!("{MAX_STREAMS} live pages are open: try again later")))
    }

    /// The UI's routes, all under `/ui` (without a fallback: see [`not_found`]).
    pub fn router<S>(self) -> Router<S> {
        Router::new()
            .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
            .route("/ui/", get(list))
            .route("/ui/live", get(list_live))
            .route("/ui/login", get(session::login_form).post(session::login))
            .route("/ui/logout", post(session::logout))
            .route("/ui/assets/weir.css", get(style))
            .route("/ui/assets/weir.js", get(script))
            .route("/ui/{tenant}/{pipeline}", get(pipeline_page))
            .route("/ui/{tenant}/{pipeline}/live", get(pipeline_live))
            .route("/ui/{tenant}/{pipeline}/batches/{batch}", get(batch_page))
            .route("/ui/{tenant}/{pipeline}/actions/{action}", post(control))
            .route("/ui/{tenant}/{pipeline}/stages/{stage}/rollback", post(roll_back))
            .layer(DefaultBodyLimit::max(16 << 10))
            .with_state(self)
    }
}

/// A UI answer that is not a page: an error, with its status.
#[derive(Debug)]
pub enum UiError {
    /// No valid token: pages go to the login form, the rest answer 401.
    LoggedOut {
        /// Whether a page was asked for (then redirect).
        page: bool,
    },
    /// No such pipeline or batch, or not the viewer's.
    NotFound(Option<Viewer>, String),
    /// The viewer may not do this.
    Forbidden(String),
    /// The request is wrong, or the pipeline refused it.
    Refused(String),
    /// Too many live pages are open.
    Busy(String),
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        match self {
            Self::LoggedOut { page: true } => Redirect::to("/ui/login").into_response(),
            Self::LoggedOut { page: false } => (StatusCode::UNAUTHORIZED, "log in first\n").into_response(),
            Self::NotFound(viewer, message) => (
                StatusCode::NOT_FOUND,
                Html(pages::error(viewer.as_ref(), "Not found", &message).into_string()),
            )
                .into_response(),
            Self::Forbidden(message) => (StatusCode::FORBIDDEN, message).into_response(),
            Self::Refused(message) => (StatusCode::UNPROCESSABLE_ENTITY, message).into_response(),
            Self::Busy(message) => (StatusCode::SERVICE_UNAVAILABLE, message).into_response(),
        }
    }
}

fn page(markup: Markup) -> Response {
    let mut response = Html(markup.into_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// `listing` of `tenant`/`name`, if `viewer` may see it.
fn find(ui: &Ui, viewer: &Viewer, tenant: &str, name: &str) -> Result<Listing, UiError> {
    ui.directory
        .pipelines(viewer)
        .into_iter()
        .find(|l| l.tenant_segment() == tenant && l.name == name)
        .ok_or_else(|| UiError::NotFound(Some(viewer.clone()), format!("No pipeline `{name}` here.")))
}

async fn list(State(ui): State<Ui>, PageViewer(viewer): PageViewer) -> Response {
    let markup = tokio::task::spawn_blocking(move || {
        let listings = ui.directory.pipelines(&viewer);
        let tenants = ui.directory.tenants(&viewer);
        let membership = ui.directory.membership(&viewer);
        pages::list(&viewer, &listings, &tenants, membership.as_ref())
    })
    .await
    .unwrap_or_else(|error| pages::error(None, "Internal error", &error.to_string()));
    page(markup)
}

async fn list_live(State(ui): State<Ui>, CallViewer(viewer): CallViewer) -> Result<Response, UiError> {
    let permit = ui.stream_permit()?;
    let directory = ui.directory.clone();
    let render: live::Render = Arc::new(move || {
        // A token revoked meanwhile ends the stream.
        let viewer = directory.viewer(viewer.token.as_deref())?;
        let listings = directory.pipelines(&viewer);
        let tenants = directory.tenants(&viewer);
        let membership = directory.membership(&viewer);
        Some(pages::list_sections(
            &viewer,
            &listings,
            &tenants,
            membership.as_ref(),
        ))
    });
    Ok(live::stream(render, ui.closing.clone(), permit).into_response())
}

async fn pipeline_page(
    State(ui): State<Ui>,
    PageViewer(viewer): PageViewer,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<Response, UiError> {
    let markup = tokio::task::spawn_blocking(move || {
        let listing = find(&ui, &viewer, &tenant, &name)?;
        let snapshot = pipeline::Snapshot::of(&listing);
        Ok::<_, UiError>(pages::pipeline_page(&listing, &viewer, snapshot.as_ref()))
    })
    .await
    .map_err(|error| UiError::Refused(error.to_string()))??;
    Ok(page(markup))
}

async fn pipeline_live(
    State(ui): State<Ui>,
    CallViewer(viewer): CallViewer,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<Response, UiError> {
    let permit = ui.stream_permit()?;
    let (found, viewer, tenant, name) = {
        let ui = ui.clone();
        tokio::task::spawn_blocking(move || {
            let found = find(&ui, &viewer, &tenant, &name).map(drop);
            (found, viewer, tenant, name)
        })
        .await
        .map_err(|error| UiError::Refused(error.to_string()))?
    };
    found?;
    let directory = ui.directory.clone();
    let render: live::Render = Arc::new(move || {
        let viewer = directory.viewer(viewer.token.as_deref())?;
        let listing = directory
            .pipelines(&viewer)
            .into_iter()
            .find(|l| l.tenant_segment() == tenant && l.name == name)?;
        let snapshot = pipeline::Snapshot::of(&listing);
        Some(pipeline::sections(&listing, &viewer, snapshot.as_ref()))
    });
    Ok(live::stream(render, ui.closing.clone(), permit).into_response())
}

async fn batch_page(
    State(ui): State<Ui>,
    PageViewer(viewer): PageViewer,
    Path((tenant, name, batch)): Path<(String, String, String)>,
) -> Result<Response, UiError> {
    let markup = tokio::task::spawn_blocking(move || {
        let listing = find(&ui, &viewer, &tenant, &name)?;
        let id: u64 = batch
            .parse()
            .map_err(|_| UiError::NotFound(Some(viewer.clone()), format!("`{batch}` is not a batch id.")))?;
        let detail = listing.handle.as_ref().and_then(|h| h.batch(id)).ok_or_else(|| {
            UiError::NotFound(
                Some(viewer.clone()),
                format!(
                    "Batch #{id} of `{name}` is not among the {} kept.",
                    crate::pipeline::live::RECENT_BATCHES
                ),
            )
        })?;
        Ok::<_, UiError>(pages::batch_page(&listing, &viewer, &detail))
    })
    .await
    .map_err(|error| UiError::Refused(error.to_string()))??;
    Ok(page(markup))
}

/// Checks a change posted by the UI: an operator, through the UI's script.
fn may_change(viewer: &Viewer, headers: &HeaderMap) -> Result<(), UiError> {
    if headers.get(ACTION_HEADER).is_none() {
        return Err(UiError::Forbidden(format!(
            "changes are posted by the UI's script (with the `{ACTION_HEADER}` header)"
        )));
    }
    if !viewer.may_operate {
        return Err(UiError::Forbidden(
            "a viewer's token may not change pipelines".into(),
        ));
    }
    Ok(())
}

async fn apply(
    ui: Ui,
    viewer: Viewer,
    tenant: String,
    name: String,
    action: Action,
) -> Result<Response, UiError> {
    tokio::task::spawn_blocking(move || {
        let listing = find(&ui, &viewer, &tenant, &name)?;
        ui.directory
            .control(&viewer, &listing, &action)
            .map_err(UiError::Refused)?;
        Ok((
            StatusCode::OK,
            format!("{} pipeline {name}: done\n", action.describe()),
        )
            .into_response())
    })
    .await
    .map_err(|error| UiError::Refused(error.to_string()))?
}

async fn control(
    State(ui): State<Ui>,
    CallViewer(viewer): CallViewer,
    headers: HeaderMap,
    Path((tenant, name, action)): Path<(String, String, String)>,
) -> Result<Response, UiError> {
    may_change(&viewer, &headers)?;
    let action = match action.as_str() {
        "pause" => Action::Pause,
        "resume" => Action::Resume,
        "stop" => Action::Stop,
        other => return Err(UiError::Refused(format!("no action `{other}`"))),
    };
    apply(ui, viewer, tenant, name, action).await
}

#[derive(Debug, Deserialize)]
struct PluginQuery {
    plugin: Option<String>,
}

async fn roll_back(
    State(ui): State<Ui>,
    CallViewer(viewer): CallViewer,
    headers: HeaderMap,
    Path((tenant, name, stage)): Path<(String, String, String)>,
    Query(query): Query<PluginQuery>,
) -> Result<Response, UiError> {
    may_change(&viewer, &headers)?;
    let action = Action::RollBack {
        stage,
        plugin: query.plugin,
    };
    apply(ui, viewer, tenant, name, action).await
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// The answer to a path under `/ui` that is no page (the fallback of
/// whoever serves the UI's routes).
pub fn not_found() -> Response {
    UiError::NotFound(None, "No such page.".into()).into_response()
}
