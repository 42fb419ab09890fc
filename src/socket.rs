//! The one place that touches a connection's socket directly.

use std::{
    os::fd::{BorrowedFd, RawFd},
    time::Duration,
};

/// Resets a TCP connection: linger 0 (so closing sends RST and frees the kernel's
/// buffers at once) and shutdown both ways (so the HTTP layer's pending write fails
/// and it drops the connection).
///
/// The caller guarantees `fd` is still the connection's socket: it only calls this
/// while the connection's response body is alive, on the worker thread that owns
/// the connection, and the connection's socket is closed only after that body is
/// dropped.
#[allow(unsafe_code)]
pub fn reset(fd: RawFd) {
    // SAFETY: see above; the fd is open and belongs to this connection for the
    // duration of this call, and the borrow does not outlive it.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let socket = socket2::SockRef::from(&fd);
    if let Err(e) = socket.set_linger(Some(Duration::ZERO)) {
        log::debug!("socket: linger 0 failed: {e}");
    }
    if let Err(e) = socket.shutdown(std::net::Shutdown::Both) {
        log::debug!("socket: shutdown failed: {e}");
    }
}

/// Shuts the write side of a TCP connection down: the peer reads what was sent, then
/// the end of the stream.
///
/// The caller guarantees `fd` is still the connection's socket, as for [`reset`].
#[allow(unsafe_code)]
pub fn shut_write(fd: RawFd) {
    // SAFETY: as in `reset`.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    if let Err(e) = socket2::SockRef::from(&fd).shutdown(std::net::Shutdown::Write) {
        log::debug!("socket: shutdown of the write side failed: {e}");
    }
}
