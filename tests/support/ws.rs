//! A well-behaved WebSocket client over `awc`.
//!
//! `awc` does not answer pings by itself, and a test that waits on HTTP or Redis would
//! not poll its sockets; so each client's connection lives in a background task that
//! answers pings at once and queues everything else for the test to read.

use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use awc::ws::{CloseCode, CloseReason, Frame, Message};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::server::Server;
use super::{next_ref, REPLY_TIMEOUT};

/// The largest frame the client accepts from the server (the server's own limits are
/// what the tests exercise, not the client's).
const CLIENT_MAX_FRAME: usize = 16 << 20;

/// What the background task saw on the connection, other than pings and pongs.
#[derive(Debug)]
enum Incoming {
    Text(String),
    Binary(Bytes),
    /// A close frame, with its code if it had one.
    Close(Option<u16>),
    /// The connection ended without a close frame, or broke.
    Ended(String),
}

/// A WebSocket session to one server, as a browser would hold it.
pub struct WsClient {
    outgoing: mpsc::UnboundedSender<Message>,
    incoming: mpsc::UnboundedReceiver<Incoming>,
    /// Frames read while looking for another one; read first by the next `recv_*`.
    pending: VecDeque<Value>,
    /// How many pings the server sent (each answered with a pong).
    pings: Rc<Cell<usize>>,
    label: String,
}

impl WsClient {
    /// Opens `GET /ws` on `server`.
    pub async fn connect(server: &Server) -> WsClient {
        Self::connect_url(&server.ws_url(), server.id()).await
    }

    /// Opens a WebSocket to `url`; `label` names the client in panic messages.
    pub async fn connect_url(url: &str, label: &str) -> WsClient {
        let (_, framed) = awc::Client::new()
            .ws(url)
            .max_frame_size(CLIENT_MAX_FRAME)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("WebSocket connect to {url}: {e}"));
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let (in_tx, in_rx) = mpsc::unbounded_channel();
        let pings = Rc::new(Cell::new(0));
        actix_web::rt::spawn(pump(framed, out_rx, in_tx, pings.clone()));
        WsClient {
            outgoing: out_tx,
            incoming: in_rx,
            pending: VecDeque::new(),
            pings,
            label: format!("client of {label} ({url})"),
        }
    }

    /// How many WebSocket pings the server has sent so far.
    pub fn pings_seen(&self) -> usize {
        self.pings.get()
    }

    /// Sends one WebSocket message as is.
    pub fn send(&self, message: Message) {
        self.outgoing
            .send(message)
            .unwrap_or_else(|_| panic!("{}: connection task has ended", self.label));
    }

    /// Sends `value` as one text frame.
    pub fn send_json(&self, value: &Value) {
        self.send_text(&value.to_string());
    }

    /// Sends one text frame.
    pub fn send_text(&self, text: &str) {
        self.send(Message::Text(text.to_owned().into()));
    }

    /// Sends one binary frame.
    pub fn send_binary(&self, data: &[u8]) {
        self.send(Message::Binary(Bytes::copy_from_slice(data)));
    }

    /// Sends a close frame (1000) and lets the connection go, as a leaving browser does.
    pub fn close(self) {
        self.send(Message::Close(Some(CloseReason::from(CloseCode::Normal))));
    }

    /// The next JSON frame, failing the test on a close, a binary frame or the timeout.
    pub async fn recv_json(&mut self, timeout: Duration) -> Value {
        if let Some(value) = self.pending.pop_front() {
            return value;
        }
        self.read_wire(timeout).await
    }

    /// The next JSON frame, or `None` when none comes within `timeout`: for a test that
    /// reads whatever arrives in a window. A close or a binary frame fails the test.
    pub async fn try_recv_json(&mut self, timeout: Duration) -> Option<Value> {
        if let Some(value) = self.pending.pop_front() {
            return Some(value);
        }
        match tokio::time::timeout(timeout, self.incoming.recv()).await {
            Ok(incoming) => Some(self.decode(incoming)),
            Err(_) => None,
        }
    }

    /// Reads frames until one satisfies `wanted`; keeps the others for later `recv_*`.
    pub async fn recv_matching(
        &mut self,
        timeout: Duration,
        what: &str,
        wanted: impl Fn(&Value) -> bool,
    ) -> Value {
        if let Some(i) = self.pending.iter().position(&wanted) {
            return self.pending.remove(i).expect("index from position");
        }
        let deadline = Instant::now() + timeout;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = match tokio::time::timeout(left, self.incoming.recv()).await {
                Ok(incoming) => self.decode(incoming),
                Err(_) => panic!(
                    "{}: no frame {what} within {timeout:?}; other frames meanwhile: {skipped:?}",
                    self.label
                ),
            };
            if wanted(&frame) {
                self.pending.extend(skipped);
                return frame;
            }
            skipped.push(frame);
        }
    }

    /// The next `event` frame of `room`, other frames kept for later.
    pub async fn recv_event(&mut self, room: &str, timeout: Duration) -> Value {
        let what = format!("`event` in room {room}");
        self.recv_matching(timeout, &what, |f| f["op"] == "event" && f["room"] == room)
            .await
    }

    /// Reads `event` frames of `room` until `wanted` holds for the envelope, *dropping*
    /// the ones before it: only for noisy rooms such as `system:events`.
    pub async fn skip_to_event(
        &mut self,
        room: &str,
        timeout: Duration,
        wanted: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = self.recv_event(room, left).await;
            if wanted(&frame["event"]) {
                return frame["event"].clone();
            }
        }
    }

    /// Sends `frame` with a fresh `ref` and returns the reply carrying that `ref`.
    pub async fn request(&mut self, mut frame: Value) -> Value {
        let reference = next_ref();
        frame["ref"] = json!(reference);
        self.send_json(&frame);
        let what = format!("replying to {frame}");
        self.recv_matching(REPLY_TIMEOUT, &what, |f| f["ref"] == reference.as_str())
            .await
    }

    /// Subscribes to `room` and waits for `subscribed` (an `error` fails the test).
    pub async fn subscribe(&mut self, room: &str) {
        let reply = self.request(json!({"op": "subscribe", "room": room})).await;
        assert_eq!(reply["op"], "subscribed", "subscribe to {room}: {reply}");
        assert_eq!(reply["room"], room, "subscribe to {room}: {reply}");
    }

    /// Unsubscribes from `room` and waits for `unsubscribed`.
    pub async fn unsubscribe(&mut self, room: &str) {
        let reply = self
            .request(json!({"op": "unsubscribe", "room": room}))
            .await;
        assert_eq!(
            reply["op"], "unsubscribed",
            "unsubscribe from {room}: {reply}"
        );
        assert_eq!(reply["room"], room, "unsubscribe from {room}: {reply}");
    }

    /// Publishes `{type, data}` to `room` and waits for `published`.
    pub async fn publish(&mut self, room: &str, kind: &str, data: Value) {
        let reply = self.try_publish(room, kind, data).await;
        assert_eq!(reply["op"], "published", "publish to {room}: {reply}");
        assert_eq!(reply["room"], room, "publish to {room}: {reply}");
    }

    /// Publishes and returns the reply, whatever it is.
    pub async fn try_publish(&mut self, room: &str, kind: &str, data: Value) -> Value {
        let event = json!({"type": kind, "data": data});
        self.request(json!({"op": "publish", "room": room, "event": event}))
            .await
    }

    /// A `ping` that must be answered by `pong`: proves the session is still open.
    pub async fn assert_alive(&mut self) {
        let reply = self.request(json!({"op": "ping"})).await;
        assert_eq!(
            reply["op"], "pong",
            "{}: ping answered by {reply}",
            self.label
        );
    }

    /// Fails if any frame arrives within `window`: only where nothing may arrive.
    pub async fn expect_no_frame(&mut self, window: Duration) {
        if let Some(frame) = self.pending.pop_front() {
            panic!("{}: expected no frame, had {frame}", self.label);
        }
        if let Ok(incoming) = tokio::time::timeout(window, self.incoming.recv()).await {
            panic!(
                "{}: expected no frame within {window:?}, got {incoming:?}",
                self.label
            );
        }
    }

    /// Reads until the close frame and returns its code (`None`: closed without one).
    /// Text frames still in flight before the close are dropped.
    pub async fn recv_close(&mut self, timeout: Duration) -> Option<u16> {
        self.pending.clear();
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.incoming.recv()).await {
                Ok(Some(Incoming::Close(code))) => return code,
                Ok(Some(Incoming::Ended(_)) | None) => return None,
                Ok(Some(_)) => continue,
                Err(_) => panic!("{}: not closed within {timeout:?}", self.label),
            }
        }
    }

    async fn read_wire(&mut self, timeout: Duration) -> Value {
        match tokio::time::timeout(timeout, self.incoming.recv()).await {
            Ok(incoming) => self.decode(incoming),
            Err(_) => panic!("{}: no frame within {timeout:?}", self.label),
        }
    }

    /// A text frame as JSON; anything else fails the test with what it was.
    fn decode(&self, incoming: Option<Incoming>) -> Value {
        match incoming {
            Some(Incoming::Text(text)) => serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: non-JSON text frame {text:?}: {e}", self.label)),
            other => panic!("{}: expected a text frame, got {other:?}", self.label),
        }
    }
}

/// Owns the connection: answers pings, sends what the test queued, forwards the rest.
async fn pump<F, E, SE>(
    framed: F,
    mut outgoing: mpsc::UnboundedReceiver<Message>,
    incoming: mpsc::UnboundedSender<Incoming>,
    pings: Rc<Cell<usize>>,
) where
    F: futures_util::Stream<Item = Result<Frame, E>> + futures_util::Sink<Message, Error = SE>,
    E: std::fmt::Display,
    SE: std::fmt::Display,
{
    let (mut sink, mut stream) = framed.split();
    loop {
        tokio::select! {
            message = outgoing.recv() => match message {
                Some(message) => {
                    if let Err(e) = sink.send(message).await {
                        let _ = incoming.send(Incoming::Ended(format!("send failed: {e}")));
                        return;
                    }
                }
                None => return,
            },
            frame = stream.next() => {
                let seen = match frame {
                    Some(Ok(Frame::Ping(payload))) => {
                        pings.set(pings.get() + 1);
                        let _ = sink.send(Message::Pong(payload)).await;
                        continue;
                    }
                    Some(Ok(Frame::Pong(_))) => continue,
                    Some(Ok(Frame::Text(text))) => {
                        Incoming::Text(String::from_utf8_lossy(&text).into_owned())
                    }
                    Some(Ok(Frame::Binary(data))) => Incoming::Binary(data),
                    Some(Ok(Frame::Continuation(_))) => {
                        Incoming::Ended("unexpected fragmented message".to_owned())
                    }
                    Some(Ok(Frame::Close(reason))) => {
                        Incoming::Close(reason.map(|r| u16::from(r.code)))
                    }
                    Some(Err(e)) => Incoming::Ended(format!("protocol error: {e}")),
                    None => Incoming::Ended("connection ended".to_owned()),
                };
                let last = matches!(seen, Incoming::Close(_) | Incoming::Ended(_));
                let _ = incoming.send(seen);
                if last {
                    return;
                }
            }
        }
    }
}
