//! The bounded outbound queue of one WebSocket connection, and the response body
//! that drains it into the socket.
//!
//! actix-web-actors' `WebsocketContext` queues frames without limit and runs its actor
//! only while the HTTP layer polls the response body, which it stops doing when the
//! socket is full: a client that stops reading would freeze its session and grow its
//! queue forever. So a session here is an ordinary actor that runs on its own, and its
//! frames go through this queue: the session pushes encoded frames, [`OutboundBody`]
//! hands them to the socket as it takes them, and the queue knows at every moment how
//! many bytes and frames the client has not taken. Over a limit, the session closes
//! the client (1013) instead of buffering.

use std::{
    cell::RefCell,
    collections::VecDeque,
    os::fd::RawFd,
    pin::Pin,
    rc::Rc,
    task::{Context, Poll, Waker},
};

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;
use futures_util::Stream;
use switchboard_actors::stages::{Stage, STAGES};
use tokio::time::Instant;

use crate::failing::{self, Parking};

const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// The queue is over one of its limits: the client does not keep up.
    Backlog,
    /// The frame alone is larger than the whole byte limit: no client could take it.
    FrameTooLarge,
}

/// The session's end of the queue. Session and body live on the same HTTP worker
/// thread, so they share the queue through `Rc<RefCell>`: no lock, no atomics.
pub struct Outbound {
    queue: Rc<RefCell<Queue>>,
    /// Where the request payload waits, unread, if the connection fails.
    parking: Parking,
}

/// The HTTP response body: drains the queue as the socket takes bytes.
pub struct OutboundBody {
    queue: Rc<RefCell<Queue>>,
    /// A failed connection's body ends only when `failing::end` is done with it.
    parking: Parking,
}

/// One frame waiting for the socket: its header and its payload (shared, not copied),
/// handed over as two parts.
struct Frame {
    header: Option<Bytes>,
    payload: Bytes,
    /// For a sampled event (see `switchboard_actors::stages`): when it was queued.
    queued_at: Option<Instant>,
}

impl Frame {
    /// Whether the socket has taken part of it already: then it must be finished, or
    /// the stream would be cut in the middle of a frame.
    fn started(&self) -> bool {
        self.header.is_none()
    }
}

struct Queue {
    /// Frames in order.
    frames: VecDeque<Frame>,
    /// Bytes of `frames` the socket has not taken.
    bytes: usize,
    max_bytes: usize,
    max_frames: usize,
    waker: Option<Waker>,
    /// A close frame is queued: nothing more is accepted and the body ends after it.
    closing: bool,
    /// The HTTP layer dropped the body: the connection is gone.
    body_gone: bool,
    socket: Option<RawFd>,
}

impl Outbound {
    /// A queue holding at most `max_bytes` and `max_frames` not yet taken by the
    /// socket. `socket` (the connection's file descriptor, when known) lets
    /// [`Outbound::abort`] reset a connection whose client never reads its close frame.
    pub fn new(
        max_bytes: usize,
        max_frames: usize,
        socket: Option<RawFd>,
    ) -> (Outbound, OutboundBody) {
        let queue = Rc::new(RefCell::new(Queue {
            frames: VecDeque::new(),
            bytes: 0,
            max_bytes,
            max_frames,
            waker: None,
            closing: false,
            body_gone: false,
            socket,
        }));
        let parking = Parking::default();
        (
            Outbound {
                queue: queue.clone(),
                parking: parking.clone(),
            },
            OutboundBody { queue, parking },
        )
    }

    /// The handle that keeps the request payload unread if the connection fails.
    pub fn parking(&self) -> Parking {
        self.parking.clone()
    }

    /// Queues a text frame.
    pub fn text(&self, text: ByteString) -> Result<(), Overflow> {
        self.push(OP_TEXT, text.into_bytes(), None)
    }

    /// Queues a text frame whose wait for the socket is timed (a sampled event).
    pub fn timed_text(&self, text: ByteString, queued_at: Instant) -> Result<(), Overflow> {
        self.push(OP_TEXT, text.into_bytes(), Some(queued_at))
    }

    /// Queues a ping.
    pub fn ping(&self) -> Result<(), Overflow> {
        self.push(OP_PING, Bytes::new(), None)
    }

    /// Queues a pong echoing `payload`.
    pub fn pong(&self, payload: Bytes) -> Result<(), Overflow> {
        self.push(OP_PONG, payload, None)
    }

    /// Fails the connection (PROTOCOL.md §2): what is queued and not started is
    /// dropped (the client gets the close frame next), the request payload is kept
    /// unread, and the connection is ended by [`failing::end`]: the write side shut
    /// down after the close frame, then a reset, within a second of now.
    pub fn fail(&self, code: u16, reason: &str) {
        if self.queue.borrow().closing {
            return;
        }
        self.close(code, reason, true);
        self.parking.fail();
        let queue = self.queue.borrow();
        // The body is alive, so `socket` is still this connection's (see `abort`).
        let socket = queue.socket.filter(|_| !queue.body_gone);
        failing::end(socket, self.parking.clone());
    }

    /// Queues a close frame and ends the stream after it. With `drop_backlog`, frames
    /// not yet taken by the socket are dropped first (a slow client gets its close
    /// frame next, not after a backlog it cannot read).
    pub fn close(&self, code: u16, reason: &str, drop_backlog: bool) {
        let mut queue = self.queue.borrow_mut();
        if queue.closing {
            return;
        }
        if drop_backlog {
            queue.clear();
        }
        let mut payload = BytesMut::with_capacity(2 + reason.len());
        payload.put_u16(code);
        // A close frame's payload is at most 125 bytes; cut the reason on a
        // character boundary.
        let mut end = reason.len().min(120);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        payload.put_slice(&reason.as_bytes()[..end]);
        queue.append(OP_CLOSE, payload.freeze(), None);
        queue.closing = true;
        queue.wake();
    }

    /// Bytes and frames the socket has not taken yet.
    pub fn backlog(&self) -> (usize, usize) {
        let queue = self.queue.borrow();
        (queue.bytes, queue.frames.len())
    }

    /// Resets the TCP connection if it is still open: for a client that stopped
    /// reading and would otherwise hold its connection (and its kernel buffers) open
    /// forever, since the HTTP layer has no write deadline.
    pub fn abort(&self) {
        let queue = self.queue.borrow();
        if !queue.body_gone {
            if let Some(fd) = queue.socket {
                crate::socket::reset_raw(fd);
            }
        }
    }

    fn push(&self, opcode: u8, payload: Bytes, queued_at: Option<Instant>) -> Result<(), Overflow> {
        let mut queue = self.queue.borrow_mut();
        if queue.closing || queue.body_gone {
            return Ok(());
        }
        let size = frame_len(payload.len());
        if size > queue.max_bytes {
            return Err(Overflow::FrameTooLarge);
        }
        if queue.frames.len() + 1 > queue.max_frames || queue.bytes + size > queue.max_bytes {
            return Err(Overflow::Backlog);
        }
        queue.append(opcode, payload, queued_at);
        queue.wake();
        Ok(())
    }
}

impl Queue {
    fn append(&mut self, opcode: u8, payload: Bytes, queued_at: Option<Instant>) {
        let header = header(opcode, payload.len());
        self.bytes += header.len() + payload.len();
        self.frames.push_back(Frame {
            header: Some(header),
            payload,
            queued_at,
        });
    }

    /// Drops every frame the socket has not started on.
    fn clear(&mut self) {
        let keep = usize::from(self.frames.front().is_some_and(Frame::started));
        self.frames.truncate(keep);
        self.bytes = self.frames.iter().map(|f| f.payload.len()).sum();
    }

    fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// Takes the next part as it is (a header, or a payload): the HTTP layer copies it
    /// into its own write buffer, so coalescing here would copy every byte twice.
    fn take_part(&mut self) -> Option<Bytes> {
        let front = self.frames.front_mut()?;
        if let Some(queued_at) = front.queued_at.take() {
            STAGES.record(Stage::SessionToSocket, queued_at.elapsed());
        }
        let part = match front.header.take() {
            Some(header) if !front.payload.is_empty() => header,
            Some(header) => {
                self.frames.pop_front();
                header
            }
            None => self.frames.pop_front().expect("front exists").payload,
        };
        self.bytes -= part.len();
        Some(part)
    }
}

impl Stream for OutboundBody {
    type Item = Result<Bytes, actix_web::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut queue = self.queue.borrow_mut();
        match queue.take_part() {
            Some(chunk) => Poll::Ready(Some(Ok(chunk))),
            None if queue.closing => self.parking.poll_ended(cx).map(|()| None),
            None => {
                queue.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Drop for OutboundBody {
    fn drop(&mut self) {
        let mut queue = self.queue.borrow_mut();
        queue.body_gone = true;
        queue.frames.clear();
        queue.bytes = 0;
    }
}

/// The size of a frame with a payload of `len` bytes, as the limits count it.
pub fn frame_len(len: usize) -> usize {
    len + header_len(len)
}

fn header_len(len: usize) -> usize {
    match len {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    }
}

/// A server frame header (RFC 6455 §5.2): FIN set, unmasked.
fn header(opcode: u8, len: usize) -> Bytes {
    let mut header = BytesMut::with_capacity(10);
    header.put_u8(0x80 | opcode);
    match len {
        0..=125 => header.put_u8(len as u8),
        126..=65535 => {
            header.put_u8(126);
            header.put_u16(len as u16);
        }
        _ => {
            header.put_u8(127);
            header.put_u64(len as u64);
        }
    }
    header.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{task::noop_waker_ref, StreamExt};

    fn drain(body: &mut OutboundBody) -> Vec<u8> {
        let mut out = Vec::new();
        let mut cx = Context::from_waker(noop_waker_ref());
        while let Poll::Ready(Some(Ok(chunk))) = body.poll_next_unpin(&mut cx) {
            out.extend_from_slice(&chunk);
        }
        out
    }

    #[test]
    fn headers_follow_rfc_6455() {
        assert_eq!(&header(OP_TEXT, 5)[..], &[0x81, 5]);
        assert_eq!(&header(OP_TEXT, 300)[..], &[0x81, 126, 1, 44]);
        assert_eq!(
            &header(OP_PING, 70_000)[..],
            &[0x89, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]
        );
        for len in [0, 125, 126, 65535, 65536] {
            assert_eq!(header(OP_TEXT, len).len(), header_len(len));
        }
    }

    #[test]
    fn counts_what_the_socket_has_not_taken() {
        let (out, mut body) = Outbound::new(1000, 10, None);
        out.text("hello".into()).unwrap();
        out.ping().unwrap();
        assert_eq!(out.backlog(), (7 + 2, 2));
        assert_eq!(
            drain(&mut body),
            [&[0x81, 5][..], b"hello", &[0x89, 0]].concat()
        );
        assert_eq!(out.backlog(), (0, 0));
    }

    #[test]
    fn refuses_past_either_limit() {
        let (out, _body) = Outbound::new(1000, 3, None);
        for _ in 0..3 {
            out.text("x".into()).unwrap();
        }
        assert_eq!(out.text("x".into()), Err(Overflow::Backlog));
        let (out, _body) = Outbound::new(10, 100, None);
        out.text("12345678".into()).unwrap();
        assert_eq!(out.text("1".into()), Err(Overflow::Backlog));
        let (out, _body) = Outbound::new(10, 100, None);
        assert_eq!(out.text("12345678901".into()), Err(Overflow::FrameTooLarge));
        assert_eq!(out.backlog(), (0, 0), "nothing queued, nothing lost");
    }

    #[test]
    fn close_can_drop_the_backlog_and_ends_the_body() {
        let (out, mut body) = Outbound::new(1000, 10, None);
        out.text("stale".into()).unwrap();
        out.close(1013, "slow", true);
        out.text("after".into()).unwrap();
        assert_eq!(
            drain(&mut body),
            [&[0x88, 6, 0x03, 0xF5][..], b"slow"].concat()
        );
        let mut cx = Context::from_waker(noop_waker_ref());
        assert!(matches!(body.poll_next_unpin(&mut cx), Poll::Ready(None)));
    }

    #[test]
    fn a_close_never_cuts_a_frame_the_socket_started() {
        let (out, mut body) = Outbound::new(1000, 10, None);
        out.text("first".into()).unwrap();
        out.text("second".into()).unwrap();
        let mut cx = Context::from_waker(noop_waker_ref());
        // The socket takes the first frame's header only.
        assert!(
            matches!(body.poll_next_unpin(&mut cx), Poll::Ready(Some(Ok(h))) if h[..] == [0x81, 5])
        );
        out.close(1013, "slow", true);
        assert_eq!(
            drain(&mut body),
            [&b"first"[..], &[0x88, 6, 0x03, 0xF5], b"slow"].concat(),
            "the started frame is finished, the next one dropped, then the close"
        );
    }

    #[test]
    fn dropping_the_body_marks_the_connection_gone() {
        let (out, body) = Outbound::new(1000, 10, None);
        drop(body);
        assert_eq!(
            out.text("x".into()),
            Ok(()),
            "nothing is queued for a gone client"
        );
        assert_eq!(out.backlog(), (0, 0));
    }
}
