//! The HTTP/JSON API under `/v1`, plus `/metrics`, `/healthz` and `/readyz`.
//!
//! Every route but the health checks takes `Authorization: Bearer <token>`.
//! No token or a bad one: 401 (answers slowed down after repeated failures
//! from one address). A token without the right: 403. Another tenant's
//! objects: 404, as if they did not exist. Every error is a JSON object
//! `{"error": "..."}` with a 4xx status, or 500 for the server's own faults
//! (507 for a full disk). Every mutating call is written to the audit log,
//! refused ones too. The calls that block (deploys compile plugins, stops
//! wait for the end) run on tokio's blocking threads.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::{Deserialize, Serialize};

use super::ServerError;
use super::audit::AuditEntry;
use super::auth::{Principal, Role, Throttle, TokenRecord};
use super::metrics;
use super::state::{PipelineView, PluginRecord, ServerState, TenantChange, TenantView};
use super::tls::ClientAddr;
use super::versions::{RollbackBody, RollbackReport, SwapBody};
use crate::pipeline::{BatchDetail, CheckpointRecord, PipelineEvent, PipelineMetrics, SwapReport};

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct App {
    /// The server's state.
    pub state: Arc<ServerState>,
    /// Failed authentications per client.
    pub throttle: Arc<Throttle>,
    /// False while the server starts or shuts down.
    pub ready: Arc<AtomicBool>,
}

/// The API's routes; bodies larger than `max_body` bytes are refused with 413.
pub fn router(app: App, max_body: usize) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi))
        .route("/metrics", get(prometheus))
        .route("/v1/whoami", get(whoami))
        .route("/v1/audit", get(audit))
        .route("/v1/tenants", get(list_tenants).post(create_tenant))
        .route(
            "/v1/tenants/{tenant}",
            get(get_tenant).patch(change_tenant).delete(delete_tenant),
        )
        .route("/v1/tenants/{tenant}/tokens", get(list_tokens).post(create_token))
        .route(
            "/v1/tenants/{tenant}/tokens/{id}",
            axum::routing::delete(revoke_token),
        )
        .route("/v1/tenants/{tenant}/plugins", get(list_plugins))
        .route(
            "/v1/tenants/{tenant}/plugins/{plugin}",
            put(put_plugin).get(get_plugin).delete(delete_plugin),
        )
        .route(
            "/v1/tenants/{tenant}/files/{*path}",
            put(put_file).delete(delete_file),
        )
        .route("/v1/tenants/{tenant}/pipelines", get(list_pipelines).post(deploy))
        .route(
            "/v1/tenants/{tenant}/pipelines/{pipeline}",
            get(get_pipeline).delete(delete_pipeline),
        )
        .route(
            "/v1/tenants/{tenant}/pipelines/{pipeline}/metrics",
            get(pipeline_metrics),
        )
        .route(
            "/v1/tenants/{tenant}/pipelines/{pipeline}/events",
            get(pipeline_events),
        )
        .route(
            "/v1/tenants/{tenant}/pipelines/{pipeline}/batches",
            get(pipeline_batches),
        )
        .route(
            "/v1/tenants/{tenant}/pipelines/{pipeline}/checkpoints",
            get(pipeline_checkpoints),
        )
        .route(
            "/v1/tenants/{tenant}/pipelines/{pipeline}/file",
            get(pipeline_file),
        )
        .route(
            "/v1/tenants/{tenant}/pipelines/{pipeline}/history",
            get(plugin_history),
        )
        .route(
            "/v1/tenants/{tenant}/pipelines/{pipeline}/stages/{stage}/swap",
            post(swap),
        )
        .route(
            "/v1/tenants/{tenant}/pipelines/{pipeline}/stages/{stage}/rollback",
            post(roll_back),
        )
        .route(
            "/v1/tenants/{tenant}/pipelines/{pipeline}/stages/{stage}/promote",
            post(promote),
        )
        .route(
            "/v1/tenants/{tenant}/pipelines/{pipeline}/{action}",
            post(control),
        )
        .fallback(|uri: axum::http::Uri| async move {
            if uri.path().starts_with("/ui/") {
                crate::ui::not_found()
            } else {
                ApiError::NotFound("no such route".into()).into_response()
            }
        })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn(close_after_refused_body))
        .with_state(app)
}

/// Closes the connection after a 4xx answer to a request with a body: the
/// body may be unread (refused before it was, or too large), and a client
/// that reused the connection would send its next request into it.
async fn close_after_refused_body(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let headers = request.headers();
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v != "0");
    let mut response = next.run(request).await;
    if has_body && response.status().is_client_error() {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// An error answered to a caller.
#[derive(Debug)]
pub enum ApiError {
    /// No token, or one the server does not know.
    Unauthorized,
    /// The route exists, not with this method.
    MethodNotAllowed,
    /// No such route.
    NotFound(String),
    /// What the server's operation said.
    Server(ServerError),
}

impl From<ServerError> for ApiError {
    fn from(error: ServerError) -> Self {
        Self::Server(error)
    }
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            Self::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "missing or unknown token: send `Authorization: Bearer <token>`".to_owned(),
            ),
            Self::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "this route does not take that method".to_owned(),
            ),
            Self::NotFound(message) => (StatusCode::NOT_FOUND, message),
            Self::Server(error) => (status_of(&error), error.to_string()),
        };
        let mut response = (status, Json(ErrorBody { error: message })).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

fn status_of(error: &ServerError) -> StatusCode {
    match error {
        ServerError::Invalid(_) => StatusCode::BAD_REQUEST,
        ServerError::Forbidden(_) => StatusCode::FORBIDDEN,
        ServerError::NotFound(_) => StatusCode::NOT_FOUND,
        ServerError::Conflict(_) => StatusCode::CONFLICT,
        ServerError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        ServerError::Quota(_) | ServerError::Refused(_) => StatusCode::UNPROCESSABLE_ENTITY,
        ServerError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => {
            StatusCode::INSUFFICIENT_STORAGE
        }
        ServerError::Io { .. } | ServerError::Corrupt(_) | ServerError::Internal(_) => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

/// The authenticated caller of a route.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl FromRequestParts<App> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim);
        if let Some(principal) = token.and_then(|token| app.state.authenticate(token)) {
            return Ok(Self(principal));
        }
        let client = parts
            .extensions
            .get::<ConnectInfo<ClientAddr>>()
            .map(|ConnectInfo(ClientAddr(addr))| addr.ip());
        let method = parts.method.clone();
        if method != axum::http::Method::GET && method != axum::http::Method::HEAD {
            // A refused change is audited too.
            let state = app.state.clone();
            let (who, action) = (
                format!(
                    "unauthenticated {}",
                    client.map_or("?".to_owned(), |c| c.to_string())
                ),
                format!("{method} {}", parts.uri.path()),
            );
            tokio::task::spawn_blocking(move || {
                state.audit_refused(&who, &action, "missing or unknown token")
            });
        }
        if let Some(client) = client {
            let delay = app.throttle.fail(client);
            if !delay.is_zero() {
                tracing::warn!(%client, ?delay, "repeated failed authentication; answering slowly");
                tokio::time::sleep(delay).await;
            }
        }
        Err(ApiError::Unauthorized)
    }
}

type Answer<T> = Result<Json<T>, ApiError>;

/// Runs a blocking server call on tokio's blocking threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ServerError> + Send + 'static,
) -> Result<T, ServerError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|error| ServerError::Internal(format!("the call failed inside the server: {error}")))?
}

/// Runs `f` (given the tenant's name) on a blocking thread once `allowed`,
/// and audits its result there: a change is audited even when the caller
/// goes away before its answer. `plugin` names the plugin SHA-256 the entry
/// carries, if any.
async fn audited<T: Send + 'static>(
    app: &App,
    caller: &Caller,
    tenant: Option<String>,
    action: String,
    allowed: Result<(), ServerError>,
    plugin: impl FnOnce(&Result<T, ServerError>) -> Option<String> + Send + 'static,
    f: impl FnOnce(&ServerState, &str) -> Result<T, ServerError> + Send + 'static,
) -> Result<T, ApiError> {
    let (state, who) = (app.state.clone(), caller.0.clone());
    blocking(move || {
        let result = allowed.and_then(|()| f(&state, tenant.as_deref().unwrap_or_default()));
        // A change of what runs changes how the tenants share the pool.
        state.rebalance_cpu();
        state.audit(&who, tenant.as_deref(), &action, plugin(&result), &result);
        result
    })
    .await
    .map_err(ApiError::from)
}

/// Authorizes (for an operator), runs and audits a mutating call on `tenant`.
async fn mutate<T: Send + 'static>(
    app: &App,
    caller: &Caller,
    tenant: String,
    action: String,
    f: impl FnOnce(&ServerState, &str) -> Result<T, ServerError> + Send + 'static,
) -> Result<T, ApiError> {
    let allowed = app.state.authorize(&caller.0, &tenant, true);
    audited(app, caller, Some(tenant), action, allowed, |_| None, f).await
}

/// Authorizes and audits an admin-only mutating call on `tenant`.
async fn admin_mutate<T: Send + 'static>(
    app: &App,
    caller: &Caller,
    tenant: String,
    action: String,
    f: impl FnOnce(&ServerState, &str) -> Result<T, ServerError> + Send + 'static,
) -> Result<T, ApiError> {
    let allowed = admin_only_on(caller, &tenant);
    audited(app, caller, Some(tenant), action, allowed, |_| None, f).await
}

fn admin_only(caller: &Caller) -> Result<(), ServerError> {
    match caller.0 {
        Principal::Admin => Ok(()),
        Principal::Tenant { .. } => Err(ServerError::Forbidden("only the admin may do this".into())),
    }
}

/// Like [`admin_only`] for a call on tenant `tenant`: another tenant's
/// token is told it does not exist.
fn admin_only_on(caller: &Caller, tenant: &str) -> Result<(), ServerError> {
    match &caller.0 {
        Principal::Tenant { tenant: own, .. } if own != tenant => {
            Err(ServerError::NotFound(format!("no tenant `{tenant}`")))
        }
        _ => admin_only(caller),
    }
}

fn read(app: &App, caller: &Caller, tenant: &str) -> Result<(), ApiError> {
    app.state
        .authorize(&caller.0, tenant, false)
        .map_err(ApiError::from)
}

fn body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ServerError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ServerError::TooLarge(format!("the request body is too large: {rejection}"))
        } else {
            ServerError::Invalid(format!("cannot read the request body: {rejection}"))
        }
    })
}

fn json_body<T: serde::de::DeserializeOwned>(raw: Result<Bytes, BytesRejection>) -> Result<T, ServerError> {
    let bytes = body(raw)?;
    serde_json::from_slice(&bytes)
        .map_err(|error| ServerError::Invalid(format!("invalid JSON body: {error}")))
}

fn text_body(raw: Result<Bytes, BytesRejection>) -> Result<String, ServerError> {
    let bytes = body(raw)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| ServerError::Invalid("the body is not UTF-8 text".into()))
}

/// This API described as OpenAPI 3 (`host/openapi.json`, kept true by a test).
async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("../../openapi.json"),
    )
        .into_response()
}

async fn readyz(State(app): State<App>) -> Response {
    if app.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn prometheus(caller: Caller, State(app): State<App>) -> Result<Response, ApiError> {
    admin_only(&caller)?;
    let text = metrics::render(&app.state);
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response())
}

/// Who a token is.
#[derive(Debug, Serialize)]
struct WhoAmI {
    admin: bool,
    tenant: Option<String>,
    role: Option<Role>,
}

async fn whoami(caller: Caller) -> Json<WhoAmI> {
    Json(match caller.0 {
        Principal::Admin => WhoAmI {
            admin: true,
            tenant: None,
            role: None,
        },
        Principal::Tenant { tenant, role, .. } => WhoAmI {
            admin: false,
            tenant: Some(tenant),
            role: Some(role),
        },
    })
}

#[derive(Debug, Deserialize)]
struct AuditQuery {
    tenant: Option<String>,
    limit: Option<usize>,
}

async fn audit(
    caller: Caller,
    State(app): State<App>,
    Query(query): Query<AuditQuery>,
) -> Answer<Vec<AuditEntry>> {
    admin_only(&caller)?;
    let state = app.state.clone();
    let entries =
        blocking(move || state.audit_entries(query.tenant.as_deref(), query.limit.unwrap_or(1000))).await?;
    Ok(Json(entries))
}

async fn list_tenants(caller: Caller, State(app): State<App>) -> Answer<Vec<TenantView>> {
    admin_only(&caller)?;
    Ok(Json(app.state.list_tenants()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTenant {
    name: String,
    quotas: Option<serde_json::Value>,
    allowed_addresses: Option<Vec<String>>,
}

async fn create_tenant(
    caller: Caller,
    State(app): State<App>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<TenantView>), ApiError> {
    let new = json_body::<NewTenant>(raw);
    let name = new.as_ref().ok().map(|new| new.name.clone());
    let action = match &name {
        Some(name) => format!("create tenant {name}"),
        None => "create tenant".to_owned(),
    };
    let allowed = admin_only(&caller);
    let view = audited(
        &app,
        &caller,
        name,
        action,
        allowed,
        |_| None,
        move |state, _| {
            let new = new?;
            let change = TenantChange {
                quotas: new.quotas,
                allowed_addresses: new.allowed_addresses,
            };
            state.create_tenant(&new.name, change)
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(view)))
}

async fn get_tenant(
    caller: Caller,
    State(app): State<App>,
    Path(tenant): Path<String>,
) -> Answer<TenantView> {
    read(&app, &caller, &tenant)?;
    Ok(Json(app.state.get_tenant(&tenant)?))
}

async fn change_tenant(
    caller: Caller,
    State(app): State<App>,
    Path(tenant): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Answer<TenantView> {
    let change = json_body::<TenantChange>(raw);
    let action = format!("change tenant {tenant}");
    let view = admin_mutate(&app, &caller, tenant, action, move |state, name| {
        state.change_tenant(name, change?)
    })
    .await?;
    Ok(Json(view))
}

async fn delete_tenant(
    caller: Caller,
    State(app): State<App>,
    Path(tenant): Path<String>,
) -> Result<StatusCode, ApiError> {
    let action = format!("delete tenant {tenant}");
    admin_mutate(&app, &caller, tenant, action, move |state, name| {
        state.delete_tenant(name)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    role: Role,
}

/// A token as the API shows it: its id, role and age, never its hash.
#[derive(Debug, Serialize)]
struct TokenView {
    id: String,
    role: Role,
    created_ms: i64,
}

impl From<TokenRecord> for TokenView {
    fn from(record: TokenRecord) -> Self {
        Self {
            id: record.id,
            role: record.role,
            created_ms: record.created_ms,
        }
    }
}

/// A token just made: the only time it is shown.
#[derive(Debug, Serialize)]
struct CreatedToken {
    #[serde(flatten)]
    view: TokenView,
    token: String,
}

async fn create_token(
    caller: Caller,
    State(app): State<App>,
    Path(tenant): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let new = json_body::<NewToken>(raw);
    let (record, token) = mutate(
        &app,
        &caller,
        tenant,
        "create token".into(),
        move |state, name| state.create_token(name, new?.role),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            view: record.into(),
            token,
        }),
    ))
}

async fn list_tokens(
    caller: Caller,
    State(app): State<App>,
    Path(tenant): Path<String>,
) -> Answer<Vec<TokenView>> {
    // Token ids and roles are an operator's business.
    app.state.authorize(&caller.0, &tenant, true)?;
    let tokens = app.state.list_tokens(&tenant)?;
    Ok(Json(tokens.into_iter().map(TokenView::from).collect()))
}

async fn revoke_token(
    caller: Caller,
    State(app): State<App>,
    Path((tenant, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    mutate(
        &app,
        &caller,
        tenant,
        format!("revoke token {id}"),
        move |state, name| state.revoke_token(name, &id),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_plugins(
    caller: Caller,
    State(app): State<App>,
    Path(tenant): Path<String>,
) -> Answer<BTreeMap<String, PluginRecord>> {
    read(&app, &caller, &tenant)?;
    Ok(Json(app.state.list_plugins(&tenant)?))
}

async fn get_plugin(
    caller: Caller,
    State(app): State<App>,
    Path((tenant, plugin)): Path<(String, String)>,
) -> Answer<PluginRecord> {
    read(&app, &caller, &tenant)?;
    let mut plugins = app.state.list_plugins(&tenant)?;
    plugins
        .remove(&plugin)
        .map(Json)
        .ok_or_else(|| ServerError::NotFound(format!("no plugin `{plugin}`")).into())
}

async fn put_plugin(
    caller: Caller,
    State(app): State<App>,
    Path((tenant, plugin)): Path<(String, String)>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<PluginRecord>), ApiError> {
    let bytes = body(raw);
    let sha256 = bytes.as_ref().ok().map(|b| super::auth::sha256_hex(b));
    let action = format!("upload plugin {plugin}");
    let allowed = app.state.authorize(&caller.0, &tenant, true);
    let record = audited(
        &app,
        &caller,
        Some(tenant),
        action,
        allowed,
        |_| sha256,
        move |state, name| state.put_plugin(name, &plugin, &bytes?),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(record)))
}

async fn delete_plugin(
    caller: Caller,
    State(app): State<App>,
    Path((tenant, plugin)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    mutate(
        &app,
        &caller,
        tenant,
        format!("delete plugin {plugin}"),
        move |state, name| state.delete_plugin(name, &plugin),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_pipelines(
    caller: Caller,
    State(app): State<App>,
    Path(tenant): Path<String>,
) -> Answer<Vec<PipelineView>> {
    read(&app, &caller, &tenant)?;
    Ok(Json(app.state.list_pipelines(&tenant)?))
}

async fn deploy(
    caller: Caller,
    State(app): State<App>,
    Path(tenant): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<PipelineView>), ApiError> {
    let text = text_body(raw);
    // For the audit log: the pipeline's name as written, when it parses.
    let pipeline = text
        .as_ref()
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .and_then(|file| file.get("pipeline")?.get("name")?.as_str().map(str::to_owned));
    let action = match &pipeline {
        Some(name) => format!("deploy pipeline {name}"),
        None => "deploy pipeline".to_owned(),
    };
    let allowed = app.state.authorize(&caller.0, &tenant, true);
    let view = audited(
        &app,
        &caller,
        Some(tenant),
        action,
        allowed,
        |result| result.as_ref().ok().and_then(PipelineView::plugin_sha256s),
        move |state, name| state.deploy(name, &text?),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(view)))
}

async fn get_pipeline(
    caller: Caller,
    State(app): State<App>,
    Path((tenant, pipeline)): Path<(String, String)>,
) -> Answer<PipelineView> {
    read(&app, &caller, &tenant)?;
    Ok(Json(app.state.pipeline(&tenant, &pipeline)?))
}

async fn pipeline_metrics(
    caller: Caller,
    State(app): State<App>,
    Path((tenant, pipeline)): Path<(String, String)>,
) -> Answer<Option<PipelineMetrics>> {
    read(&app, &caller, &tenant)?;
    Ok(Json(app.state.pipeline_metrics(&tenant, &pipeline)?))
}

async fn pipeline_events(
    caller: Caller,
    State(app): State<App>,
    Path((tenant, pipeline)): Path<(String, String)>,
) -> Answer<Vec<PipelineEvent>> {
    read(&app, &caller, &tenant)?;
    Ok(Json(app.state.pipeline_events(&tenant, &pipeline)?))
}

/// `GET .../batches?limit=N`: the recent batches (the last `N`, default
/// all kept), oldest first, each with what every stage did in it.
async fn pipeline_batches(
    caller: Caller,
    State(app): State<App>,
    Path((tenant, pipeline)): Path<(String, String)>,
    Query(query): Query<LimitQuery>,
) -> Answer<Vec<BatchDetail>> {
    read(&app, &caller, &tenant)?;
    let limit = query.limit.unwrap_or(usize::MAX);
    Ok(Json(app.state.pipeline_batches(&tenant, &pipeline, limit)?))
}

#[derive(Debug, Deserialize)]
struct LimitQuery {
    limit: Option<usize>,
}

/// `GET .../checkpoints`: the last checkpoints of the run, oldest first.
async fn pipeline_checkpoints(
    caller: Caller,
    State(app): State<App>,
    Path((tenant, pipeline)): Path<(String, String)>,
) -> Answer<Vec<CheckpointRecord>> {
    read(&app, &caller, &tenant)?;
    Ok(Json(app.state.pipeline_checkpoints(&tenant, &pipeline)?))
}

async fn pipeline_file(
    caller: Caller,
    State(app): State<App>,
    Path((tenant, pipeline)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    read(&app, &caller, &tenant)?;
    let text = app.state.pipeline_file(&tenant, &pipeline)?;
    Ok(([(header::CONTENT_TYPE, "application/toml")], text).into_response())
}

async fn control(
    caller: Caller,
    State(app): State<App>,
    Path((tenant, pipeline, action)): Path<(String, String, String)>,
) -> Answer<PipelineView> {
    let audited = format!("{action} pipeline {pipeline}");
    let view = mutate(&app, &caller, tenant, audited, move |state, name| {
        match action.as_str() {
            "start" => state.start_pipeline(name, &pipeline),
            "stop" => state.stop_pipeline(name, &pipeline),
            "pause" => state.pause_pipeline(name, &pipeline, true),
            "resume" => state.pause_pipeline(name, &pipeline, false),
            other => Err(ServerError::NotFound(format!(
                "no action `{other}` (expected start, stop, pause or resume)"
            ))),
        }
    })
    .await?;
    Ok(Json(view))
}

/// A change of the version a stage's plugin runs (swap, promote,
/// rollback): its JSON body (an empty one is the default), authorized for
/// an operator, run, and audited with the SHA-256 of the version it leaves
/// running.
async fn version_change<B, T>(
    app: &App,
    caller: &Caller,
    tenant: String,
    action: String,
    raw: Result<Bytes, BytesRejection>,
    running: fn(&T) -> String,
    f: impl FnOnce(&ServerState, &str, B, String) -> Result<T, ServerError> + Send + 'static,
) -> Answer<T>
where
    B: serde::de::DeserializeOwned + Default + Send + 'static,
    T: Send + 'static,
{
    let body = match &raw {
        Ok(bytes) if bytes.is_empty() => Ok(B::default()),
        _ => json_body::<B>(raw),
    };
    let by = caller.0.who();
    let allowed = app.state.authorize(&caller.0, &tenant, true);
    let done = audited(
        app,
        caller,
        Some(tenant),
        action,
        allowed,
        move |result: &Result<T, ServerError>| result.as_ref().ok().map(running),
        move |state, name| f(state, name, body?, by),
    )
    .await?;
    Ok(Json(done))
}

/// `POST .../stages/{stage}/swap`: hot-loads another version of the
/// stage's plugin (JSON [`SwapBody`]); 422 with the reason when the
/// candidate is refused.
async fn swap(
    caller: Caller,
    State(app): State<App>,
    Path((tenant, pipeline, stage)): Path<(String, String, String)>,
    raw: Result<Bytes, BytesRejection>,
) -> Answer<SwapReport> {
    let action = format!("swap pipeline {pipeline} stage {stage}");
    let running = |report: &SwapReport| report.to.clone();
    version_change(
        &app,
        &caller,
        tenant,
        action,
        raw,
        running,
        move |state, name, body: SwapBody, by| state.swap(name, &pipeline, &stage, body, by),
    )
    .await
}

/// `POST .../stages/{stage}/rollback`: returns the stage's plugin to its
/// previous version (JSON [`RollbackBody`], may be empty).
async fn roll_back(
    caller: Caller,
    State(app): State<App>,
    Path((tenant, pipeline, stage)): Path<(String, String, String)>,
    raw: Result<Bytes, BytesRejection>,
) -> Answer<RollbackReport> {
    let action = format!("roll back pipeline {pipeline} stage {stage}");
    let running = |report: &RollbackReport| report.to.clone();
    version_change(
        &app,
        &caller,
        tenant,
        action,
        raw,
        running,
        move |state, name, body: RollbackBody, by| state.roll_back(name, &pipeline, &stage, body, by),
    )
    .await
}

/// `POST .../stages/{stage}/promote`: swaps in the stage's candidate in
/// shadow (JSON body `{"plugin": ...}`, may be empty).
async fn promote(
    caller: Caller,
    State(app): State<App>,
    Path((tenant, pipeline, stage)): Path<(String, String, String)>,
    raw: Result<Bytes, BytesRejection>,
) -> Answer<SwapReport> {
    let action = format!("promote pipeline {pipeline} stage {stage}");
    let running = |report: &SwapReport| report.to.clone();
    version_change(
        &app,
        &caller,
        tenant,
        action,
        raw,
        running,
        move |state, name, body: RollbackBody, by| state.promote(name, &pipeline, &stage, body, by),
    )
    .await
}

/// `GET .../history`: each stage plugin's last versions.
async fn plugin_history(
    caller: Caller,
    State(app): State<App>,
    Path((tenant, pipeline)): Path<(String, String)>,
) -> Answer<std::collections::BTreeMap<String, Vec<crate::pipeline::VersionRecord>>> {
    read(&app, &caller, &tenant)?;
    Ok(Json(app.state.plugin_history(&tenant, &pipeline)?))
}

/// `PUT /v1/tenants/{t}/files/{path}`: writes the body as the file `path`
/// of the tenant's root (an input for its `files` sources), atomically.
async fn put_file(
    caller: Caller,
    State(app): State<App>,
    Path((tenant, path)): Path<(String, String)>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<super::state::FileRecord>), ApiError> {
    let bytes = body(raw);
    let record = mutate(
        &app,
        &caller,
        tenant,
        format!("write file {path}"),
        move |state, name| state.put_file(name, &path, &bytes?),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(record)))
}

/// `DELETE /v1/tenants/{t}/files/{path}`: removes a file of the tenant's root.
async fn delete_file(
    caller: Caller,
    State(app): State<App>,
    Path((tenant, path)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    mutate(
        &app,
        &caller,
        tenant,
        format!("delete file {path}"),
        move |state, name| state.delete_file(name, &path),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_pipeline(
    caller: Caller,
    State(app): State<App>,
    Path((tenant, pipeline)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    mutate(
        &app,
        &caller,
        tenant,
        format!("delete pipeline {pipeline}"),
        move |state, name| state.delete_pipeline(name, &pipeline),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// (path, method) of every route [`super::router`] declares, read from
    /// this file's source.
    fn declared() -> BTreeSet<(String, String)> {
        let source = include_str!("api.rs");
        let start = source.find("pub fn router(").expect("the router");
        let end = start + source[start..].find(".fallback(").expect("its fallback");
        let mut routes = BTreeSet::new();
        for call in source[start..end].split(".route(").skip(1) {
            let path = call.split('"').nth(1).expect("a path").replace("{*", "{");
            for method in ["get", "post", "put", "patch", "delete"] {
                if call.contains(&format!("{method}(")) {
                    routes.insert((path.clone(), method.to_owned()));
                }
            }
        }
        routes
    }

    /// (path, method) of every operation of `host/openapi.json`.
    fn documented() -> BTreeSet<(String, String)> {
        let spec: serde_json::Value =
            serde_json::from_str(include_str!("../../openapi.json")).expect("openapi.json is JSON");
        let mut routes = BTreeSet::new();
        for (path, item) in spec["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("a path item").keys() {
                if method != "parameters" {
                    routes.insert((path.clone(), method.clone()));
                }
            }
        }
        routes
    }

    #[test]
    fn the_openapi_file_documents_every_route_and_no_other() {
        let (declared, documented) = (declared(), documented());
        assert!(declared.len() > 20, "{declared:?}");
        let undocumented: Vec<_> = declared.difference(&documented).collect();
        let stale: Vec<_> = documented.difference(&declared).collect();
        assert!(
            undocumented.is_empty() && stale.is_empty(),
            "host/openapi.json is out of date: undocumented {undocumented:?}, no such route {stale:?}"
        );
    }
}
