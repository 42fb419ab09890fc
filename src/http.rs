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
    stages::STAGES, GetHealth, GetPeers, GetStats, HealthStatus, PeerList, Publish, ResetStats,
};

use crate::{
    outbound::Outbound,
    session::{Access, Session},
    wire, ConnectionSocket, Error, State,
};

/// Mounts `/ws`, `/publish/{room}`, `/health`, `/health/live`, `/stats` and
/// `/stats/reset`.
pub fn routes(cfg: &mut web::ServiceConfig, state: Arc<State>) {
    cfg.app_data(Data::from(state))
        .route("/ws", web::get().to(websocket))
        .route("/publish/{room}", web::post().to(publish))
        .route("/health", web::get().to(health))
        .route("/health/live", web::get().to(live))
        .route("/stats", web::get().to(stats))
        .route("/stats/reset", web::post().to(reset_stats));
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
fn check_service_token(req: &HttpRequest, state: &State) -> Result<(), Error> {
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

fn refusal(error: &Error) -> HttpResponse {
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
    let answer = match state.publish(Publish { room, event }) {
        Ok(answer) => answer,
        Err(refused) => return refusal(&refused),
    };
    match answer.await {
        Ok(()) => HttpResponse::Ok().json(json!({"ok": true})),
        Err(e) => refusal(&Error::PublishFailed(e.to_string())),
    }
}

/// `GET /health`: the seed's status, the backplane and the live peers.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Health {
    #[serde(flatten)]
    status: HealthStatus,
    peers: Vec<switchboard_actors::PeerInfo>,
    duplicate_server_id: bool,
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
    let _ = state.broker.send(ResetStats).await;
    state.counters.reset();
    state.publishes.reset();
    STAGES.reset();
    HttpResponse::NoContent().finish()
}
