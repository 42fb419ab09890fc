//! The HTTP endpoints (PROTOCOL.md §3) and the WebSocket upgrade.

use std::sync::Arc;

use actix::{Actor, AsyncContext};
use actix_web::{
    http::{header, StatusCode},
    web::{self, Data, Path},
    HttpRequest, HttpResponse,
};
use bytes::BytesMut;
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{json, value::RawValue};
use switchboard_actors::{
    durable::{Epoch, IdempotencyKey, Published, Since},
    presence::ReadPresence,
    stages::STAGES,
    GetHealth, GetPeers, GetStats, HealthStatus, PeerList, Publish, ReadHistory, ResetStats,
};

use crate::{
    outbound::Outbound,
    session::{Access, Session},
    wire, ConnectionSocket, Error, State,
};

/// Mounts `/ws`, `/publish/{room}`, `/history/{room}`, `/health`, `/health/live`,
/// `/stats`, `/stats/reset` and `/metrics`, and the console's routes unless `CONSOLE=off`.
pub fn routes(cfg: &mut web::ServiceConfig, state: Arc<State>) {
    if state.console {
        crate::console::routes(cfg);
    }
    cfg.app_data(Data::from(state))
        .route("/ws", web::get().to(websocket))
        .route("/publish/{room}", web::post().to(publish))
        .route("/history/{room}", web::get().to(history))
        .route("/presence/{room}", web::get().to(presence))
        .route("/health", web::get().to(health))
        .route("/health/live", web::get().to(live))
        .route("/stats", web::get().to(stats))
        .route("/stats/reset", web::post().to(reset_stats))
        .route("/metrics", web::get().to(crate::metrics::serve));
}

/// The bearer token of a request, if it has one. The scheme is case-insensitive
/// (RFC 7235 §2.1): `bearer`, `BEARER` and `Bearer` all work.
fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

/// `SERVICE_TOKEN`, when set, guards the endpoints that change things.
pub(crate) fn check_service_token(req: &HttpRequest, state: &State) -> Result<(), Error> {
    match &state.session.security.service_token {
        Some(token) if !bearer(req).is_some_and(|given| token.matches(given)) => Err(
            Error::Unauthorized("this endpoint needs Authorization: Bearer <SERVICE_TOKEN>".into()),
        ),
        _ => Ok(()),
    }
}

/// The upgrade's checks (PROTOCOL.md §6): the browser's origin, and the token in the
/// `Authorization` header when there is one.
fn upgrade_access(req: &HttpRequest, state: &State) -> Result<Access, Error> {
    let security = &state.session.security;
    let origin = req.headers().get(header::ORIGIN);
    if let (Some(allowed), Some(origin)) = (&security.allowed_origins, origin) {
        let origin = origin.to_str().unwrap_or_default().trim_end_matches('/');
        if !allowed.iter().any(|a| a == origin) {
            log::info!(
                "{}: refused a WebSocket from origin {origin:?}",
                state.server_id
            );
            return Err(Error::NotAllowed("origin not allowed".into()));
        }
    }
    let Some(authenticator) = &security.jwt else {
        return Ok(Access::Open);
    };
    match bearer(req) {
        None => Ok(Access::Pending),
        Some(token) => match authenticator.verify(token) {
            Ok(grant) => Ok(Access::Granted(grant)),
            Err(e) => {
                log::info!("{}: refused a WebSocket upgrade: {e}", state.server_id);
                Err(Error::Unauthorized(e.to_string()))
            }
        },
    }
}

async fn websocket(
    req: HttpRequest,
    payload: web::Payload,
    state: Data<State>,
) -> actix_web::Result<HttpResponse> {
    let access = match upgrade_access(&req, &state) {
        Ok(access) => access,
        Err(refused) => return Ok(refusal(&refused)),
    };
    let mut response = actix_web_actors::ws::handshake(&req)?;
    let limits = &state.session.limits;
    let socket = req.conn_data::<ConnectionSocket>().map(|s| s.0);
    let (out, body) = Outbound::new(limits.outbound_bytes, limits.outbound_frames, socket);
    let frames = crate::inbound::InboundFrames::new(payload, limits.frame_bytes, out.parking());
    Session::create(|ctx| {
        ctx.add_stream(frames);
        Session::new(state.into_inner(), out, access)
    });
    Ok(response.streaming(body))
}

pub(crate) fn refusal(error: &Error) -> HttpResponse {
    let status = StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    HttpResponse::build(status).json(json!({"ok": false, "error": error.to_string()}))
}

/// Reads a body of at most `limit` bytes; a longer one is refused as soon as it
/// passes the limit (413, in the same JSON as every other refusal).
async fn read_body(mut payload: web::Payload, limit: usize) -> Result<BytesMut, Error> {
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| Error::BadFrame(format!("the body did not arrive: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(Error::TooLarge {
                size: body.len() + chunk.len(),
                limit,
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

async fn publish(
    req: HttpRequest,
    room: Path<String>,
    payload: web::Payload,
    state: Data<State>,
) -> HttpResponse {
    if let Err(e) = check_service_token(&req, &state) {
        return refusal(&e);
    }
    // The room first, so a refused room is told so whatever the body.
    match wire::room(&room) {
        Ok(checked) if checked.is_system() => {
            return refusal(&Error::NotAllowed(format!(
                "{checked} belongs to the servers"
            )))
        }
        Ok(_) => {}
        Err(e) => return refusal(&e),
    }
    let body = match read_body(payload, state.session.limits.event_bytes).await {
        Ok(body) => body,
        Err(e) => return refusal(&e),
    };
    let event: Box<RawValue> = match serde_json::from_slice(&body) {
        Ok(event) => event,
        Err(e) => return refusal(&Error::BadFrame(format!("the body is not JSON: {e}"))),
    };
    let (room, event) = match wire::new_event(&room, &event, state.session.limits.event_bytes) {
        Ok(checked) => checked,
        Err(error) => return refusal(&error),
    };
    let key = match idempotency_key(&req) {
        Ok(key) => key,
        Err(error) => return refusal(&error),
    };
    let answer = match state.publish(Publish { room, event, key }) {
        Ok(answer) => answer,
        Err(refused) => return refusal(&refused),
    };
    match answer.await {
        Ok(Published { position: None }) => HttpResponse::Ok().json(json!({"ok": true})),
        Ok(Published {
            position: Some(position),
        }) => HttpResponse::Ok().json(json!({
            "ok": true,
            "offset": position.offset,
            "epoch": position.epoch.as_str(),
        })),
        Err(e) => refusal(&Error::PublishFailed(e.to_string())),
    }
}

/// The `Idempotency-Key` header, when there is one (PROTOCOL.md §7).
fn idempotency_key(req: &HttpRequest) -> Result<Option<IdempotencyKey>, Error> {
    let Some(value) = req.headers().get("idempotency-key") else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| Error::BadFrame("Idempotency-Key is not ASCII".into()))?;
    IdempotencyKey::new(text)
        .map(Some)
        .map_err(|e| Error::BadFrame(format!("Idempotency-Key: {e}")))
}

/// `GET /history/{room}?since=5&epoch=...&limit=100` (PROTOCOL.md §7).
async fn history(req: HttpRequest, room: Path<String>, state: Data<State>) -> HttpResponse {
    let room = match wire::room(&room) {
        Ok(room) => room,
        Err(e) => return refusal(&e),
    };
    if let Err(e) = check_reader(&req, &state, &room) {
        return refusal(&e);
    }
    let query = match HistoryQuery::parse(req.query_string(), state.session.history_size) {
        Ok(query) => query,
        Err(e) => return refusal(&e),
    };
    let read = ReadHistory {
        room: room.clone(),
        since: query.since,
        limit: query.limit,
    };
    state.metrics.history_read();
    let history = match state.broker.send(read).await {
        Ok(Ok(history)) => history,
        Ok(Err(e)) => return refusal(&Error::from_read(&room, e, "history read")),
        Err(_) => return HttpResponse::ServiceUnavailable().finish(),
    };
    let answer = wire::HistoryAnswer::new(
        room.as_str(),
        &history,
        state.session.limits.outbound_bytes / 2,
    );
    HttpResponse::Ok().json(answer)
}

/// `GET /presence/{room}` (PROTOCOL.md §9): the room's members on every server.
async fn presence(req: HttpRequest, room: Path<String>, state: Data<State>) -> HttpResponse {
    let room = match wire::room(&room) {
        Ok(room) => room,
        Err(e) => return refusal(&e),
    };
    if let Err(e) = check_reader(&req, &state, &room) {
        return refusal(&e);
    }
    match state.broker.send(ReadPresence { room: room.clone() }).await {
        Ok(Ok(members)) => {
            HttpResponse::Ok().json(wire::PresenceAnswer::new(room.as_str(), &members))
        }
        Ok(Err(e)) => refusal(&Error::from_read(&room, e, "presence read")),
        Err(_) => HttpResponse::ServiceUnavailable().finish(),
    }
}

/// HTTP reads with authentication on need `SERVICE_TOKEN` or a user's JWT that may
/// subscribe to the room (PROTOCOL.md §7).
fn check_reader(
    req: &HttpRequest,
    state: &State,
    room: &switchboard_actors::Room,
) -> Result<(), Error> {
    let security = &state.session.security;
    let service = security.service_token.as_ref();
    let given = bearer(req);
    if service.is_some_and(|t| given.is_some_and(|g| t.matches(g))) {
        return Ok(());
    }
    match (&security.jwt, service) {
        (None, None) => Ok(()),
        (None, Some(_)) => Err(Error::Unauthorized(
            "this endpoint needs Authorization: Bearer <SERVICE_TOKEN>".into(),
        )),
        (Some(jwt), _) => {
            let token = given.ok_or_else(|| {
                Error::Unauthorized("this endpoint needs Authorization: Bearer <token>".into())
            })?;
            let grant = jwt
                .verify(token)
                .map_err(|e| Error::Unauthorized(e.to_string()))?;
            if grant.may_subscribe(room) {
                Ok(())
            } else {
                Err(Error::NotAllowed(format!(
                    "this token may not subscribe to {room}"
                )))
            }
        }
    }
}

/// The query of `GET /history`: `since` and `epoch` together or neither; `limit`
/// 1 to `HISTORY_SIZE`, 100 by default.
struct HistoryQuery {
    since: Option<Since>,
    limit: usize,
}

impl HistoryQuery {
    const DEFAULT_LIMIT: usize = 100;

    fn parse(query: &str, history_size: usize) -> Result<HistoryQuery, Error> {
        let (mut since, mut epoch, mut limit) = (None, None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value)?;
            match name {
                "since" => since = Some(value),
                "epoch" => epoch = Some(value),
                "limit" => limit = Some(value),
                other => {
                    return Err(Error::BadFrame(format!(
                        "unknown query parameter {other:?} (since, epoch, limit)"
                    )))
                }
            }
        }
        let since = match (since, epoch) {
            (None, None) => None,
            (Some(offset), Some(epoch)) => Some(Since {
                offset: offset.parse().map_err(|_| {
                    Error::BadFrame("`since` must be a non-negative integer".into())
                })?,
                epoch: Epoch::new(&epoch).map_err(|e| Error::BadFrame(format!("`epoch`: {e}")))?,
            }),
            _ => {
                return Err(Error::BadFrame(
                    "`since` and `epoch` go together, or neither".into(),
                ))
            }
        };
        let limit = match limit {
            None => Self::DEFAULT_LIMIT.min(history_size),
            Some(text) => wire::history_limit(text.parse().ok(), history_size)?,
        };
        Ok(HistoryQuery { since, limit })
    }
}

/// Decodes `%XX` escapes and `+` of a query value.
fn percent_decode(value: &str) -> Result<String, Error> {
    let bad = || Error::BadFrame("a query value is not valid percent-encoded UTF-8".into());
    let mut bytes = Vec::with_capacity(value.len());
    let mut input = value.bytes();
    while let Some(b) = input.next() {
        match b {
            b'%' => {
                let hex = [input.next().ok_or_else(bad)?, input.next().ok_or_else(bad)?];
                let hex = std::str::from_utf8(&hex).map_err(|_| bad())?;
                bytes.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            }
            b'+' => bytes.push(b' '),
            b => bytes.push(b),
        }
    }
    String::from_utf8(bytes).map_err(|_| bad())
}

/// `GET /health`: the seed's status, the backplane and the live peers.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Health {
    #[serde(flatten)]
    status: HealthStatus,
    peers: Vec<switchboard_actors::PeerInfo>,
    duplicate_server_id: bool,
    /// Whether clients must authenticate (`AUTH_JWT_SECRET`): the console asks for a
    /// token before it connects.
    auth: bool,
}

async fn health(state: Data<State>) -> HttpResponse {
    let (status, peers) = (state.broker.send(GetHealth), state.peers.send(GetPeers));
    let (Ok(mut status), Ok(peers)) = (status.await, peers.await) else {
        log::warn!(
            "{}: /health: the broker or the peers actor is gone",
            state.server_id
        );
        return HttpResponse::ServiceUnavailable()
            .json(json!({"isHealthy": false, "error": "shutting down"}));
    };
    let PeerList {
        peers,
        duplicate_id,
    } = peers;
    status.is_healthy &= !duplicate_id;
    let code = if status.is_healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    HttpResponse::build(code).json(Health {
        status,
        peers,
        duplicate_server_id: duplicate_id,
        auth: state.session.security.jwt.is_some(),
    })
}

async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({"ok": true}))
}

async fn stats(state: Data<State>) -> HttpResponse {
    let Ok(stats) = state.broker.send(GetStats).await else {
        return HttpResponse::ServiceUnavailable().finish();
    };
    HttpResponse::Ok().json(json!({
        "publisher": stats.publisher,
        "subscriber": stats.subscriber,
        "connections": state.counters.snapshot(&state.publishes),
        "stages": STAGES.snapshot(),
    }))
}

async fn reset_stats(req: HttpRequest, state: Data<State>) -> HttpResponse {
    if let Err(e) = check_service_token(&req, &state) {
        return refusal(&e);
    }
    let metrics = state.metrics.before_reset(&state).await;
    let _ = state.broker.send(ResetStats).await;
    state.counters.reset();
    state.publishes.reset();
    STAGES.reset();
    metrics.finish();
    HttpResponse::NoContent().finish()
}
