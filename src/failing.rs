//! How a connection the server failed ends (PROTOCOL.md §2: 1002, 1007, 1008, 1009).
//!
//! The close frame is queued first (`Outbound::fail`), and then:
//! - nothing more of the client is read: the request payload is kept, unread, in
//!   [`Parking`]. The HTTP layer stops reading a payload nobody reads once its small
//!   buffer is full; a dropped one it would drain at line rate into nothing.
//! - [`SHUT_WRITE_AFTER`] later the write side is shut down: the client reads the
//!   close frame, then the end of the stream;
//! - [`FAIL_LINGER`] after the failure the connection is reset and the payload let
//!   go: the HTTP layer then reads the end and drops the connection.
//!
//! These steps run on a duplicate of the connection's socket, taken while the
//! connection is certainly alive, so they never touch a descriptor that was closed
//! and reused meanwhile, and they do not wait for the HTTP layer to poll anything (a
//! client that does not read cannot hold its failed connection open).

use std::{
    any::Any,
    cell::RefCell,
    os::fd::RawFd,
    rc::Rc,
    task::{Context, Poll, Waker},
    time::Duration,
};

use crate::socket;

/// How long the close frame gets to be written before the write side is shut down.
pub const SHUT_WRITE_AFTER: Duration = Duration::from_millis(100);

/// How long after the failure the connection is reset: the client's kernel has the
/// close frame and the end of the stream by then, and the contract's 1 s holds.
pub const FAIL_LINGER: Duration = Duration::from_millis(500);

/// A connection's request payload, kept unread once the connection failed. Shared
/// by the inbound frame stream (which parks the payload when it is dropped) and the
/// outbound queue (which says the connection failed). One worker thread: `Rc`.
#[derive(Clone, Default)]
pub struct Parking(Rc<RefCell<Parked>>);

#[derive(Default)]
struct Parked {
    failed: bool,
    payload: Option<Box<dyn Any>>,
    /// The failed connection's last step is done: the response body may end (while
    /// it lives the HTTP layer keeps the connection as it is; once it ends, the HTTP
    /// layer would drain a payload it still has).
    ended: bool,
    body: Option<Waker>,
}

impl Parking {
    /// Keeps `payload` if the connection failed; otherwise drops it.
    pub fn park(&self, payload: Box<dyn Any>) {
        let mut parked = self.0.borrow_mut();
        if parked.failed {
            parked.payload = Some(payload);
        }
    }

    /// The connection failed: a payload handed over from now on is kept.
    pub fn fail(&self) {
        self.0.borrow_mut().failed = true;
    }

    /// Whether a failed connection's response body may end; if not, the body is woken
    /// when it may.
    pub fn poll_ended(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut parked = self.0.borrow_mut();
        if parked.ended || !parked.failed {
            return Poll::Ready(());
        }
        parked.body = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Lets the payload go and the body end (the HTTP layer then reads the end of the
    /// reset connection and drops it).
    fn release(&self) {
        let mut parked = self.0.borrow_mut();
        parked.payload = None;
        parked.ended = true;
        if let Some(body) = parked.body.take() {
            body.wake();
        }
    }
}

/// Ends a failed connection (see the module doc). `socket` is the connection's
/// descriptor, which the caller guarantees is still the connection's now; without
/// one, the payload is let go at the deadline and the HTTP layer ends the rest.
pub fn end(socket: Option<RawFd>, parking: Parking) {
    let socket = socket.and_then(socket::duplicate);
    actix::spawn(async move {
        tokio::time::sleep(SHUT_WRITE_AFTER).await;
        if let Some(socket) = &socket {
            socket::shut_write(socket);
        }
        tokio::time::sleep(FAIL_LINGER - SHUT_WRITE_AFTER).await;
        if let Some(socket) = &socket {
            socket::reset(socket);
        }
        parking.release();
    });
}
