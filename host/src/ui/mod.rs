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
pub mod pages;
pub mod pipeline;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Form, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::Markup;
use serde::Deserialize;
use tokio::sync::watch;

pub use directory::{Action, Directory, Listing, LocalDirectory, TenantRow, Viewer};

/// The cookie that holds a server's token for the UI.
pub const COOKIE: &str = "weir_ui";

/// The header every change posted by the UI's script carries.
pub const ACTION_HEADER: &str = "x-weir-ui";

const STYLE: &str = include_str!("assets/weir.css");
const SCRIPT: &str = include_str!("assets/weir.js");

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
            .route("/ui/login", get(login_form).post(login))
            .route("/ui/logout", post(logout))
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

/// The token a request presents: `Authorization: Bearer`, or the UI's cookie.
fn presented_token(headers: &HeaderMap) -> Option<String> {
    if let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(token.trim().to_owned());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .and_then(|(_, value)| percent_decode(value))
}

/// `text` with every byte but letters, digits and `-._~` as `%XX` (a
/// cookie value that any token fits in).
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The text [`percent_encode`] made; `None` for a malformed value.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The viewer of a page (redirected to the login form without one).
struct PageViewer(Viewer);
/// The viewer of a stream or an action (401 without one).
struct CallViewer(Viewer);

/// The viewer of a request; a token presented but unknown is held back as
/// the throttle says.
async fn viewer_of(parts: &Parts, ui: &Ui) -> Option<Viewer> {
    let token = presented_token(&parts.headers);
    let viewer = ui.directory.viewer(token.as_deref());
    if viewer.is_none() && token.is_some() {
        ui.failed_authentication(&parts.extensions).await;
    }
    viewer
}

impl FromRequestParts<Ui> for PageViewer {
    type Rejection = UiError;

    async fn from_request_parts(parts: &mut Parts, ui: &Ui) -> Result<Self, Self::Rejection> {
        viewer_of(parts, ui)
            .await
            .map(Self)
            .ok_or(UiError::LoggedOut { page: true })
    }
}

impl FromRequestParts<Ui> for CallViewer {
    type Rejection = UiError;

    async fn from_request_parts(parts: &mut Parts, ui: &Ui) -> Result<Self, Self::Rejection> {
        viewer_of(parts, ui)
            .await
            .map(Self)
            .ok_or(UiError::LoggedOut { page: false })
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
        pages::list(&viewer, &listings, &tenants)
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
        Some(pages::list_sections(&viewer, &listings, &tenants))
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

async fn login_form(State(ui): State<Ui>) -> Response {
    if ui.directory.viewer(None).is_some() {
        return Redirect::to("/ui/").into_response();
    }
    page(pages::login(None))
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

/// A failed authentication waits at least this long.
const FAILED_LOGIN_DELAY: std::time::Duration = std::time::Duration::from_millis(500);

async fn login(
    State(ui): State<Ui>,
    extensions: axum::http::Extensions,
    Form(form): Form<LoginForm>,
) -> Response {
    let token = form.token.trim().to_owned();
    if token.is_empty() || ui.directory.viewer(Some(&token)).is_none() {
        ui.failed_authentication(&extensions).await;
        let mut response = page(pages::login(Some("That token is not known here.")));
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        return response;
    }
    let secure = if ui.secure { "; Secure" } else { "" };
    let cookie = format!(
        "{COOKIE}={}; Path=/ui; HttpOnly; SameSite=Strict{secure}",
        percent_encode(&token)
    );
    let mut response = Redirect::to("/ui/").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

async fn logout() -> Response {
    let mut response = Redirect::to("/ui/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("weir_ui=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    response
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

/// Refuses a request whose `Host` is not a loopback name or address, or
/// an address of this machine: a `weir run --ui` takes no token, so a page
/// of another site must not reach it through a name that it points at
/// 127.0.0.1 (DNS rebinding).
async fn local_hosts_only(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if host_is_local(host) {
        next.run(request).await
    } else {
        (
            StatusCode::MISDIRECTED_REQUEST,
            "the web UI of `weir run` answers to loopback names and IP addresses only\n",
        )
            .into_response()
    }
}

/// Whether `host` (a `Host` header: name or address, and maybe a port) is
/// `localhost` or an IP address (never a name a DNS server chose).
fn host_is_local(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                name
            } else {
                host
            }
        }),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

/// A UI serving on its own (a `weir run --ui`).
#[derive(Debug)]
pub struct Served {
    /// Where it listens.
    pub local_addr: SocketAddr,
    _closing: watch::Sender<bool>,
    _runtime: tokio::runtime::Runtime,
}

/// Ports tried after the one asked for, when it is taken.
const NEXT_PORTS: u16 = 20;

/// Serves the UI of `directory` on `addr` (or, when its port is taken, on
/// the next free one of the [`NEXT_PORTS`] after it), with `/` sent to
/// `/ui/`, on a runtime of its own.
pub fn serve(directory: Arc<dyn Directory>, addr: SocketAddr) -> std::io::Result<Served> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("weir-ui")
        .enable_all()
        .build()?;
    let (closing, closed) = watch::channel(false);
    let ui = Ui::new(directory, closed, false);
    let router = ui
        .router()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .fallback(|| async { not_found() })
        .layer(axum::middleware::from_fn(local_hosts_only));
    let listener = runtime.block_on(async {
        let mut last = None;
        for port in (0..=NEXT_PORTS).filter_map(|i| addr.port().checked_add(i)) {
            match tokio::net::TcpListener::bind(SocketAddr::new(addr.ip(), port)).await {
                Ok(listener) => return Ok(listener),
                Err(error) if error.kind() == std::io::ErrorKind::AddrInUse && addr.port() != 0 => {
                    last = Some(error)
                }
                Err(error) => return Err(error),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no port to try")))
    })?;
    let local_addr = listener.local_addr()?;
    runtime.spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::error!(%error, "the web UI stopped serving");
        }
    });
    Ok(Served {
        local_addr,
        _closing: closing,
        _runtime: runtime,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_names_and_addresses_reach_a_local_ui() {
        for host in [
            "localhost:4040",
            "127.0.0.1:4041",
            "[::1]:4040",
            "10.0.0.5:4040",
            "LOCALHOST",
            "127.0.0.1",
        ] {
            assert!(host_is_local(host), "{host}");
        }
        for host in [
            "evil.example:4040",
            "localhost.evil.example",
            "",
            "127.0.0.1.nip.io:4040",
        ] {
            assert!(!host_is_local(host), "{host}");
        }
    }

    #[test]
    fn the_token_comes_from_the_header_or_the_cookie() {
        let mut headers = HeaderMap::new();
        assert_eq!(presented_token(&headers), None);
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=b; weir_ui=weir_1_2; c=d"),
        );
        assert_eq!(presented_token(&headers).as_deref(), Some("weir_1_2"));
        let token = "a+b/c=d é";
        let cookie = format!("weir_ui={}", percent_encode(token));
        headers.insert(header::COOKIE, HeaderValue::from_str(&cookie).unwrap());
        assert_eq!(presented_token(&headers).as_deref(), Some(token));
        assert_eq!(percent_decode("%zz"), None);
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer weir_3_4"));
        assert_eq!(presented_token(&headers).as_deref(), Some("weir_3_4"));
    }
}
