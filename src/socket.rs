//! The one place that touches a connection's socket directly.

use std::{
    os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd},
    time::Duration,
};

/// Borrows a connection's socket from its descriptor for the length of `act`.
///
/// The caller guarantees `fd` is still the connection's socket: it only calls this
/// while the connection's response body is alive, on the worker thread that owns
/// the connection, and the connection's socket is closed only after that body is
/// dropped.
#[allow(unsafe_code)]
fn with_socket<T>(fd: RawFd, act: impl FnOnce(BorrowedFd<'_>) -> T) -> T {
    // SAFETY: see above; the fd is open and belongs to this connection for the
    // duration of this call, and the borrow does not outlive it.
    act(unsafe { BorrowedFd::borrow_raw(fd) })
}

/// Resets a TCP connection by its descriptor (see [`reset`]); the caller guarantees
/// as for [`with_socket`].
pub fn reset_raw(fd: RawFd) {
    with_socket(fd, |socket| reset(socket));
}

/// A descriptor of the connection's socket of its own, usable after the HTTP layer
/// closed its own (the socket lives until both are closed); the caller guarantees
/// as for [`with_socket`].
pub fn duplicate(fd: RawFd) -> Option<OwnedFd> {
    with_socket(fd, |socket| socket.try_clone_to_owned())
        .map_err(|e| log::debug!("socket: cannot duplicate a connection's socket: {e}"))
        .ok()
}

/// Resets a TCP connection: linger 0 (so closing sends RST and frees the kernel's
/// buffers at once) and shutdown both ways (so the HTTP layer's pending write fails
/// and it drops the connection).
pub fn reset(socket: impl AsFd) {
    let socket = socket2::SockRef::from(&socket);
    if let Err(e) = socket.set_linger(Some(Duration::ZERO)) {
        log::debug!("socket: linger 0 failed: {e}");
    }
    if let Err(e) = socket.shutdown(std::net::Shutdown::Both) {
        log::debug!("socket: shutdown failed: {e}");
    }
}

/// Shuts the write side of a TCP connection down: the peer reads what was sent, then
/// the end of the stream.
pub fn shut_write(socket: impl AsFd) {
    if let Err(e) = socket2::SockRef::from(&socket).shutdown(std::net::Shutdown::Write) {
        log::debug!("socket: shutdown of the write side failed: {e}");
    }
}
