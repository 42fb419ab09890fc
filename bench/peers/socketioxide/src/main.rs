//! The socketioxide peer for scripts/bench.sh: the same server as
//! `bench/peers/socketio/server.js`, in Rust, over socketioxide-redis so that two
//! nodes share rooms through Redis.
//!
//!   42["subscribe", room]            -> socket.join(room), emit "subscribed" room
//!   42["publish", room, {type,data}] -> io.to(room).emit("event", {room, event}),
//!                                       emit "published" room
//!   POST /publish/:room {type,data}   -> the same, answered {"ok":true}
//!
//! Env: PORT (0 picks a free one), REDIS_URL. Prints the same ready line as
//! Switchboard once the adapter is subscribed and the port is bound.

use std::{
    marker::PhantomData,
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use axum::{
    body::Bytes,
    extract::Path,
    http::{header, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::any,
    Router,
};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;
use socketioxide::{
    adapter::Emitter,
    extract::{Data, SocketRef},
    handler::{FromMessage, FromMessageParts},
    socket::Socket,
    ParserError, SocketIo, TransportType,
};
use socketioxide_redis::{
    drivers::redis::redis_client as redis, RedisAdapter, RedisAdapterConfig, RedisAdapterCtr,
};
use tokio::sync::mpsc;

type Adapter = RedisAdapter<Emitter>;

/// `socketioxide_<pid>`, like the Node peer's `socketio_<pid>`.
fn server_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| format!("socketioxide_{}", std::process::id()))
}

/// What is broadcast: `{room, event: {type, data, serverId, timestamp}}`. A `type` or
/// `data` missing from the published event is left out, as JSON.stringify leaves out
/// `undefined` in the Node peer.
#[derive(Serialize)]
struct Envelope<'a> {
    room: &'a str,
    event: Stamped<'a>,
}

#[derive(Serialize)]
struct Stamped<'a> {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a Value>,
    #[serde(rename = "serverId")]
    server_id: &'static str,
    /// Milliseconds since the Unix epoch, as Date.now().
    timestamp: u64,
}

/// io.to(room).emit("event", envelope): to this node's sockets in the room and, through
/// Redis, to the other nodes'. socketioxide-redis awaits the Redis PUBLISH before the
/// local delivery.
async fn broadcast(io: &SocketIo<Adapter>, room: &str, event: &Value) {
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let envelope = Envelope {
        room,
        event: Stamped {
            kind: event.get("type"),
            data: event.get("data"),
            server_id: server_id(),
            timestamp,
        },
    };
    if let Err(e) = io.to(room.to_owned()).emit("event", &envelope).await {
        // One line per 10,000 failures: a Redis outage must not flood stderr.
        static FAILED: AtomicU64 = AtomicU64::new(0);
        if FAILED
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(10_000)
        {
            eprintln!("socketioxide peer: broadcast to {room:?} failed: {e}");
        }
    }
}

/// One client request, run by the socket's own queue task.
enum Op {
    Subscribe(String),
    Publish(String, Value),
}

/// The sending end of a socket's queue, kept in the socket's extensions.
#[derive(Clone)]
struct Queue(mpsc::UnboundedSender<Op>);

/// The arguments of an event that becomes an [`Op`].
trait IntoOp: DeserializeOwned {
    fn into_op(self) -> Op;
}

impl IntoOp for String {
    fn into_op(self) -> Op {
        Op::Subscribe(self)
    }
}

impl IntoOp for (String, Value) {
    fn into_op(self) -> Op {
        Op::Publish(self.0, self.1)
    }
}

/// An extractor that decodes the event's arguments and queues them as an [`Op`].
///
/// Why in an extractor: socketioxide spawns one task per incoming event, so two
/// publishes of one socket could run out of order (each awaits a Redis PUBLISH), where
/// the Node peer handles them one after the other. Extractors run synchronously in the
/// socket's read loop before that spawn, i.e. in arrival order; the queue task then
/// runs the socket's ops strictly in that order, as the loadgen's sequence checks need.
struct Queued<T>(PhantomData<T>);

impl<T: IntoOp> FromMessage<Adapter> for Queued<T> {
    type Error = ParserError;

    fn from_message(
        s: std::sync::Arc<Socket<Adapter>>,
        mut v: socketioxide::handler::Value,
        ack_id: Option<i64>,
    ) -> Result<Self, ParserError> {
        // A malformed event (e.g. a room that is not a string) is dropped here.
        let Data(args) = Data::<T>::from_message_parts(&s, &mut v, &ack_id)?;
        if let Some(Queue(tx)) = s.extensions.get::<Queue>() {
            // Fails only once the socket is gone.
            let _ = tx.send(args.into_op());
        }
        Ok(Queued(PhantomData))
    }
}

/// Runs one socket's ops in order until the socket disconnects.
async fn run_queue(
    socket: SocketRef<Adapter>,
    io: SocketIo<Adapter>,
    mut rx: mpsc::UnboundedReceiver<Op>,
) {
    while let Some(op) = rx.recv().await {
        // Emit errors (socket closed) are ignored, as socket.emit does in Node.
        match op {
            Op::Subscribe(room) => {
                socket.join(room.clone());
                let _ = socket.emit("subscribed", &room);
            }
            Op::Publish(room, event) => {
                broadcast(&io, &room, &event).await;
                let _ = socket.emit("published", &room);
            }
        }
    }
}

async fn on_connect(socket: SocketRef<Adapter>, io: SocketIo<Adapter>) {
    let (tx, rx) = mpsc::unbounded_channel();
    socket.extensions.insert(Queue(tx));
    // The queue task holds the socket: dropping the sender on disconnect ends it.
    socket.on_disconnect(async |socket: SocketRef<Adapter>| {
        socket.extensions.remove::<Queue>();
    });
    socket.on("subscribe", async |_: Queued<String>| {});
    socket.on("publish", async |_: Queued<(String, Value)>| {});
    tokio::spawn(run_queue(socket, io, rx));
}

/// Node's `/^\/publish\/([A-Za-z0-9_:.-]{1,200})$/` on the whole request URL.
fn valid_room(room: &str) -> bool {
    (1..=200).contains(&room.len())
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_:.-".contains(&b))
}

/// POST /publish/:room with the event as the JSON body. Like the Node peer: anything
/// but a POST to a valid room without a query is 404, a body that is not JSON (or is
/// `null`, where Node's `event.type` throws) is 400.
async fn http_publish(
    io: SocketIo<Adapter>,
    method: Method,
    uri: Uri,
    Path(room): Path<String>,
    body: Bytes,
) -> Response {
    if method != Method::POST || uri.query().is_some() || !valid_room(&room) {
        return StatusCode::NOT_FOUND.into_response();
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(event) if !event.is_null() => {
            broadcast(&io, &room, &event).await;
            (
                [(header::CONTENT_TYPE, "application/json")],
                r#"{"ok":true}"#,
            )
                .into_response()
        }
        _ => (StatusCode::BAD_REQUEST, r#"{"ok":false}"#).into_response(),
    }
}

/// REDIS_URL (default `redis://127.0.0.1:6379`, as node-redis) with `protocol=resp3`
/// added: the redis driver of socketioxide-redis receives pub/sub messages as RESP3
/// pushes on its one multiplexed connection, and does not work over RESP2.
fn redis_url() -> String {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    if url.contains("protocol=") {
        url
    } else if url.contains('?') {
        format!("{url}&protocol=resp3")
    } else {
        format!("{url}?protocol=resp3")
    }
}

// One thread, like one Node process: the bench runs two nodes of each peer on a
// 2-core machine.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = redis::Client::open(redis_url())?;
    // The adapter's driver hands each Redis message to the adapter through a bounded
    // channel and drops it when that is full (1,024 by default): a burst of publishes
    // while this node is busy fanning out would lose events that @socket.io/redis-adapter
    // would only deliver late. tokio's channel allocates as it fills, so a high bound
    // costs nothing until used.
    let config = RedisAdapterConfig::new().with_stream_buffer(1 << 20);
    let adapter = RedisAdapterCtr::new_with_redis_config(&client, config).await?;

    let (layer, io) = SocketIo::builder()
        .with_adapter::<Adapter>(adapter)
        // Socket.IO's server options in the Node peer: websocket only, and its default
        // maxHttpBufferSize of 1e6 bytes for one message (also the handshake's maxPayload).
        .transports([TransportType::Websocket])
        .ws_max_message_size(1_000_000)
        .max_payload(1_000_000)
        // socketioxide drops an emit when a socket already has this many packets queued
        // (128 by default); Node's ws buffers without bound, so a slow reader only gets
        // its events late. Allocated as it fills, like the stream buffer above.
        .max_buffer_size(1 << 20)
        .build_layer();
    // Resolves once the adapter has subscribed to its Redis channels.
    io.ns("/", on_connect).await?;

    let publish_io = io.clone();
    let app = Router::new()
        .route(
            "/publish/{room}",
            any(move |method, uri, room, body| {
                http_publish(publish_io.clone(), method, uri, room, body)
            }),
        )
        .fallback(|| async { StatusCode::NOT_FOUND })
        .layer(layer);

    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!(
        "switchboard listening on http://127.0.0.1:{}",
        listener.local_addr()?.port()
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        served = axum::serve(listener, app) => served?,
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    // As the Node peer on SIGTERM/SIGINT: close the sockets, exit 0.
    io.close().await;
    Ok(())
}
