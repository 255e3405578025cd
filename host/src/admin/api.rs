//! The HTTP admin API: JSON over HTTP, like Kafka Connect's REST API and
//! what `pulsar-admin sources|sinks` wraps. Its OpenAPI document is served
//! at `/openapi.json`.
//!
//! Errors come back as `{"status": <code>, "error": "<one sentence>"}` with
//! the same status code: 400 a bad request (a manifest error names the
//! file, line, field and fix), 401 no or a wrong token, 404 no such
//! connector or plugin, 409 not allowed in the connector's state, 422 a
//! module swap that did not happen (the old module runs on), 500 the host.
//!
//! With a token in force every route but `/healthz` and `/readyz` needs
//! `Authorization: Bearer <token>`; a request without it is refused before
//! it reaches the daemon, so it changes nothing.
//!
//! Every request that asks for a change (create, update, pause, resume,
//! stop, start, restart, offsets reset, delete), refused or not, leaves one
//! `admin request` line in the log: the operation, the connector, the
//! caller's address and the answer's status. The daemon's own lines then
//! say what changed (the module swapped, the offsets reset to).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use utoipa::OpenApi;

use super::AdminError;
use super::daemon::{
    ConnectorInfo, ConnectorStatus, ConnectorSummary, CreateRequest, Daemon, Offsets, PluginInfo,
    ResetRequest, StateKeys, StateQuery, StateValue, SwapOutcome, Validation,
};

/// The API's OpenAPI document.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Sluice admin API",
        description = "Create, inspect, steer and delete connectors of a running `sluice serve`."
    ),
    paths(
        healthz,
        readyz,
        metrics,
        list_plugins,
        get_plugin,
        validate_config,
        list_connectors,
        create_connectors,
        get_connector,
        delete_connector,
        put_config,
        put_module,
        connector_status,
        pause,
        resume,
        stop,
        start,
        restart,
        get_offsets,
        reset_offsets,
        state_keys,
        state_value
    )
)]
pub struct ApiDoc;

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::json!({ "status": self.status(), "error": self.to_string() });
        (code, Json(body)).into_response()
    }
}

type Shared = Arc<Daemon>;
type ApiResult<T> = Result<Json<T>, AdminError>;

/// Runs an operation that changes a connector in its own task: a client
/// that hangs up mid-swap (or mid-stop) does not cut it off halfway.
async fn detached<T, F>(op: F) -> Result<T, AdminError>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T, AdminError>> + Send + 'static,
{
    tokio::spawn(op)
        .await
        .map_err(|e| AdminError::Internal(format!("the operation failed in the host: {e}")))?
}

/// A JSON body, or a 400 that says what is wrong with it.
fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, AdminError> {
    b.map(|Json(t)| t).map_err(|e| {
        AdminError::Invalid(format!("the request body is not right: {}", e.body_text()))
    })
}

/// What a call that changes a state answers.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Done {
    /// The connector.
    pub name: String,
    /// What was done.
    pub done: String,
}

fn done(name: &str, what: &str) -> Json<Done> {
    Json(Done {
        name: name.to_owned(),
        done: what.to_owned(),
    })
}

/// The router, with the token check in front when `token` is set.
pub fn router(daemon: Shared, token: Option<String>) -> Router {
    let token = Arc::new(token);
    Router::new()
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/v1/plugins", get(list_plugins))
        .route("/v1/plugins/{name}", get(get_plugin))
        .route("/v1/plugins/{name}/validate", post(validate_config))
        .route(
            "/v1/connectors",
            get(list_connectors).post(create_connectors),
        )
        .route(
            "/v1/connectors/{name}",
            get(get_connector).delete(delete_connector),
        )
        .route("/v1/connectors/{name}/config", put(put_config))
        .route("/v1/connectors/{name}/module", put(put_module))
        .route("/v1/connectors/{name}/status", get(connector_status))
        .route("/v1/connectors/{name}/pause", post(pause))
        .route("/v1/connectors/{name}/resume", post(resume))
        .route("/v1/connectors/{name}/stop", post(stop))
        .route("/v1/connectors/{name}/start", post(start))
        .route("/v1/connectors/{name}/restart", post(restart))
        .route("/v1/connectors/{name}/offsets", get(get_offsets))
        .route("/v1/connectors/{name}/offsets/reset", post(reset_offsets))
        .route("/v1/connectors/{name}/state", get(state_keys))
        .route("/v1/connectors/{name}/state/{*key}", get(state_value))
        .layer(axum::middleware::from_fn_with_state(token, require_token))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .layer(axum::middleware::from_fn(audit))
        .with_state(daemon)
}

/// The audit trail: one line for each request that asks for a change, after
/// it is answered (a 401 included), naming the caller.
async fn audit(request: Request, next: Next) -> Response {
    let Some(op) = operation(request.method(), request.uri().path()) else {
        return next.run(request).await;
    };
    let caller = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_else(|| "unknown".into());
    let connector = connector_in(request.uri().path()).unwrap_or_default();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    if response.status().is_success() {
        tracing::info!(op, connector, caller, query, status, "admin request");
    } else {
        tracing::warn!(
            op,
            connector,
            caller,
            query,
            status,
            "admin request refused"
        );
    }
    response
}

/// The change a request asks for, named as the CLI verb that sends it;
/// `None` for a request that only reads (a validation included).
fn operation(method: &Method, path: &str) -> Option<&'static str> {
    let rest = path.strip_prefix("/v1/connectors")?;
    let tail = rest
        .strip_prefix('/')
        .map(|r| r.split_once('/').map_or("", |(_, t)| t));
    Some(match (method, tail) {
        (&Method::POST, None) => "create",
        (&Method::DELETE, Some("")) => "delete",
        (&Method::PUT, Some("config")) => "update config",
        (&Method::PUT, Some("module")) => "update module",
        (&Method::POST, Some("pause")) => "pause",
        (&Method::POST, Some("resume")) => "resume",
        (&Method::POST, Some("stop")) => "stop",
        (&Method::POST, Some("start")) => "start",
        (&Method::POST, Some("restart")) => "restart",
        (&Method::POST, Some("offsets/reset")) => "offsets reset",
        _ => return None,
    })
}

/// The connector a `/v1/connectors/{name}/…` path names.
fn connector_in(path: &str) -> Option<String> {
    let name = path.strip_prefix("/v1/connectors/")?.split('/').next()?;
    Some(name.to_owned())
}

async fn require_token(
    State(token): State<Arc<Option<String>>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    if let Some(right) = token.as_ref() {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !presented.is_some_and(|p| super::access::token_matches(p, right)) {
            let body = serde_json::json!({
                "status": 401,
                "error": "a bearer token is required: send `Authorization: Bearer <token>` \
                          (the token is in the daemon's data directory, file admin.token)"
            });
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                Json(body),
            )
                .into_response();
        }
    }
    next.run(request).await
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "alive")))]
async fn healthz() -> &'static str {
    "ok\n"
}

/// Every stored connector has been brought back and the API takes changes.
#[utoipa::path(get, path = "/readyz", responses(
    (status = 200, description = "ready"), (status = 503, description = "starting or stopping")))]
async fn readyz(State(d): State<Shared>) -> (StatusCode, &'static str) {
    if d.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// Prometheus text format.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
async fn metrics(State(d): State<Shared>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        d.render_metrics(),
    )
}

/// The built-in plugins with their specs.
#[utoipa::path(get, path = "/v1/plugins", responses((status = 200, body = [PluginInfo])))]
async fn list_plugins(State(d): State<Shared>) -> ApiResult<Vec<PluginInfo>> {
    Ok(Json(d.plugins().await?))
}

/// One plugin: a built-in name, or a `.wasm` path on the daemon's machine.
#[utoipa::path(get, path = "/v1/plugins/{name}", params(("name" = String, Path, description = "plugin")),
    responses((status = 200, body = PluginInfo), (status = 404)))]
async fn get_plugin(State(d): State<Shared>, Path(name): Path<String>) -> ApiResult<PluginInfo> {
    Ok(Json(d.plugin(&name).await?))
}

/// Checks a config document against a plugin's schema.
#[utoipa::path(post, path = "/v1/plugins/{name}/validate", params(("name" = String, Path, description = "plugin")),
    request_body(content = Object, description = "the config document"),
    responses((status = 200, body = Validation)))]
async fn validate_config(
    State(d): State<Shared>,
    Path(name): Path<String>,
    config: Result<Json<serde_json::Value>, JsonRejection>,
) -> ApiResult<Validation> {
    let config = body(config)?;
    Ok(Json(d.validate(&name, &config).await?))
}

/// Every connector.
#[utoipa::path(get, path = "/v1/connectors", responses((status = 200, body = [ConnectorSummary])))]
async fn list_connectors(State(d): State<Shared>) -> ApiResult<Vec<ConnectorSummary>> {
    Ok(Json(d.list()))
}

/// Creates connectors from a manifest's text or one JSON connector, and
/// starts them.
#[utoipa::path(post, path = "/v1/connectors", request_body = CreateRequest,
    responses((status = 201, body = [String], description = "the names created"), (status = 400), (status = 409)))]
async fn create_connectors(
    State(d): State<Shared>,
    request: Result<Json<CreateRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Vec<String>>), AdminError> {
    let request = body(request)?;
    let names = detached(async move { d.create(request).await }).await?;
    Ok((StatusCode::CREATED, Json(names)))
}

/// A connector's definition.
#[utoipa::path(get, path = "/v1/connectors/{name}", params(("name" = String, Path, description = "connector")),
    responses((status = 200, body = ConnectorInfo), (status = 404)))]
async fn get_connector(
    State(d): State<Shared>,
    Path(name): Path<String>,
) -> ApiResult<ConnectorInfo> {
    Ok(Json(d.get(&name).await?))
}

/// Stops and deletes a connector, with its offsets and state.
#[utoipa::path(delete, path = "/v1/connectors/{name}", params(("name" = String, Path, description = "connector")),
    responses((status = 200, body = Done), (status = 404)))]
async fn delete_connector(State(d): State<Shared>, Path(name): Path<String>) -> ApiResult<Done> {
    let n = name.clone();
    detached(async move { d.delete(&n).await }).await?;
    Ok(done(&name, "deleted"))
}

/// Where a new config came from.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ConfigSource {
    /// The file it was read from, named in errors (the CLI sends it).
    pub file: Option<String>,
}

/// Replaces a connector's config and restarts it with it.
#[utoipa::path(put, path = "/v1/connectors/{name}/config", params(("name" = String, Path, description = "connector"), ConfigSource),
    request_body(content = Object, description = "the new [connector.config] as JSON"),
    responses((status = 200, body = ConnectorInfo), (status = 400), (status = 404)))]
async fn put_config(
    State(d): State<Shared>,
    Path(name): Path<String>,
    q: Result<Query<ConfigSource>, QueryRejection>,
    config: Result<Json<serde_json::Value>, JsonRejection>,
) -> ApiResult<ConnectorInfo> {
    let Query(q) = q.map_err(|e| AdminError::Invalid(e.body_text()))?;
    let config = body(config)?;
    Ok(Json(
        detached(async move { d.update_config(&name, config, q.file.as_deref()).await }).await?,
    ))
}

/// The new module of a connector.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ModuleRequest {
    /// A built-in plugin name or a `.wasm` path on the daemon's machine.
    pub plugin: String,
}

/// Swaps a connector's module while it runs (no loss, no duplicates); if
/// the new module fails to open, the old one runs on and this says why.
#[utoipa::path(put, path = "/v1/connectors/{name}/module", params(("name" = String, Path, description = "connector")),
    request_body = ModuleRequest,
    responses((status = 200, body = SwapOutcome), (status = 400), (status = 422, description = "the swap failed; the old module runs on")))]
async fn put_module(
    State(d): State<Shared>,
    Path(name): Path<String>,
    request: Result<Json<ModuleRequest>, JsonRejection>,
) -> ApiResult<SwapOutcome> {
    let request = body(request)?;
    Ok(Json(
        detached(async move { d.update_module(&name, &request.plugin).await }).await?,
    ))
}

/// A connector's status and that of each instance.
#[utoipa::path(get, path = "/v1/connectors/{name}/status", params(("name" = String, Path, description = "connector")),
    responses((status = 200, body = ConnectorStatus), (status = 404)))]
async fn connector_status(
    State(d): State<Shared>,
    Path(name): Path<String>,
) -> ApiResult<ConnectorStatus> {
    Ok(Json(d.status(&name)?))
}

/// Pauses a connector at its next batch boundary (instances stay open).
#[utoipa::path(post, path = "/v1/connectors/{name}/pause", params(("name" = String, Path, description = "connector")),
    responses((status = 200, body = Done), (status = 404), (status = 409)))]
async fn pause(State(d): State<Shared>, Path(name): Path<String>) -> ApiResult<Done> {
    let n = name.clone();
    detached(async move { d.pause(&n).await }).await?;
    Ok(done(&name, "paused"))
}

/// Resumes a paused connector.
#[utoipa::path(post, path = "/v1/connectors/{name}/resume", params(("name" = String, Path, description = "connector")),
    responses((status = 200, body = Done), (status = 404), (status = 409)))]
async fn resume(State(d): State<Shared>, Path(name): Path<String>) -> ApiResult<Done> {
    let n = name.clone();
    detached(async move { d.resume(&n).await }).await?;
    Ok(done(&name, "resumed"))
}

/// Stops a connector: its instances flush, commit and close.
#[utoipa::path(post, path = "/v1/connectors/{name}/stop", params(("name" = String, Path, description = "connector")),
    responses((status = 200, body = Done), (status = 404)))]
async fn stop(State(d): State<Shared>, Path(name): Path<String>) -> ApiResult<Done> {
    let n = name.clone();
    detached(async move { d.stop(&n).await }).await?;
    Ok(done(&name, "stopped"))
}

/// Starts a stopped connector from its committed position.
#[utoipa::path(post, path = "/v1/connectors/{name}/start", params(("name" = String, Path, description = "connector")),
    responses((status = 200, body = Done), (status = 404), (status = 409)))]
async fn start(State(d): State<Shared>, Path(name): Path<String>) -> ApiResult<Done> {
    let n = name.clone();
    detached(async move { d.start(&n).await }).await?;
    Ok(done(&name, "started"))
}

/// Which instance to restart.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct RestartQuery {
    /// One instance's index; all instances if absent.
    pub instance: Option<u32>,
}

/// Restarts every instance of a connector, or one.
#[utoipa::path(post, path = "/v1/connectors/{name}/restart", params(("name" = String, Path, description = "connector"), RestartQuery),
    responses((status = 200, body = Done), (status = 404), (status = 409)))]
async fn restart(
    State(d): State<Shared>,
    Path(name): Path<String>,
    q: Result<Query<RestartQuery>, QueryRejection>,
) -> ApiResult<Done> {
    let Query(q) = q.map_err(|e| AdminError::Invalid(e.body_text()))?;
    let n = name.clone();
    detached(async move { d.restart(&n, q.instance).await }).await?;
    Ok(done(&name, "restarted"))
}

/// A sink's committed offsets, or a source's stored positions.
#[utoipa::path(get, path = "/v1/connectors/{name}/offsets", params(("name" = String, Path, description = "connector")),
    responses((status = 200, body = Offsets), (status = 404)))]
async fn get_offsets(State(d): State<Shared>, Path(name): Path<String>) -> ApiResult<Offsets> {
    Ok(Json(d.offsets(&name).await?))
}

/// Resets a stopped sink's offsets to earliest, latest or a value.
#[utoipa::path(post, path = "/v1/connectors/{name}/offsets/reset", params(("name" = String, Path, description = "connector")),
    request_body = ResetRequest,
    responses((status = 200, body = Offsets), (status = 400), (status = 409, description = "the connector is not stopped")))]
async fn reset_offsets(
    State(d): State<Shared>,
    Path(name): Path<String>,
    request: Result<Json<ResetRequest>, JsonRejection>,
) -> ApiResult<Offsets> {
    let request = body(request)?;
    Ok(Json(
        detached(async move { d.reset_offsets(&name, request).await }).await?,
    ))
}

/// The keys of a connector's plugin state (queryable state).
#[utoipa::path(get, path = "/v1/connectors/{name}/state",
    params(("name" = String, Path, description = "connector"), StateQuery),
    responses((status = 200, body = StateKeys), (status = 400), (status = 404)))]
async fn state_keys(
    State(d): State<Shared>,
    Path(name): Path<String>,
    query: Result<Query<StateQuery>, QueryRejection>,
) -> ApiResult<StateKeys> {
    let Query(query) = query.map_err(|e| AdminError::Invalid(e.body_text()))?;
    Ok(Json(d.state_keys(&name, query).await?))
}

/// One value of a connector's plugin state.
#[utoipa::path(get, path = "/v1/connectors/{name}/state/{key}",
    params(("name" = String, Path, description = "connector"), ("key" = String, Path, description = "state key")),
    responses((status = 200, body = StateValue), (status = 404, description = "no such connector or key")))]
async fn state_value(
    State(d): State<Shared>,
    Path((name, key)): Path<(String, String)>,
) -> ApiResult<StateValue> {
    Ok(Json(d.state_value(&name, &key).await?))
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    daemon: Shared,
    token: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(daemon, token).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_changing_route_is_an_audited_operation() {
        let cases = [
            (Method::POST, "/v1/connectors", Some("create")),
            (Method::DELETE, "/v1/connectors/files", Some("delete")),
            (
                Method::PUT,
                "/v1/connectors/files/config",
                Some("update config"),
            ),
            (
                Method::PUT,
                "/v1/connectors/files/module",
                Some("update module"),
            ),
            (Method::POST, "/v1/connectors/files/pause", Some("pause")),
            (
                Method::POST,
                "/v1/connectors/files/restart",
                Some("restart"),
            ),
            (
                Method::POST,
                "/v1/connectors/files/offsets/reset",
                Some("offsets reset"),
            ),
            (Method::GET, "/v1/connectors/files/status", None),
            (Method::GET, "/v1/connectors", None),
            (Method::POST, "/v1/plugins/datagen/validate", None),
        ];
        for (method, path, op) in cases {
            assert_eq!(operation(&method, path), op, "{method} {path}");
        }
        assert_eq!(
            connector_in("/v1/connectors/files/pause").as_deref(),
            Some("files")
        );
        assert_eq!(connector_in("/v1/connectors"), None);
    }

    #[test]
    fn the_openapi_document_names_every_route() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for p in [
            "/v1/connectors",
            "/v1/connectors/{name}/module",
            "/v1/connectors/{name}/offsets/reset",
            "/v1/plugins/{name}/validate",
            "/metrics",
        ] {
            assert!(
                paths.contains_key(p),
                "{p} missing from the OpenAPI document"
            );
        }
    }
}
