//! Client frames off the request payload, with the frame size checked as soon as a
//! frame header declares it.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use actix_codec::Decoder;

use crate::failing::Parking;
use actix_http::ws::{Codec, Frame, ProtocolError};
use actix_web::error::PayloadError;
use bytes::{Bytes, BytesMut};
use futures_util::Stream;

/// Decodes WebSocket frames from the request payload.
///
/// actix-http's parser waits for a frame's whole declared payload before comparing
/// its length with the limit, so a frame that declares 1 GiB would be buffered as it
/// trickles in. This stream reads the declared length from the header first and
/// fails with [`ProtocolError::Overflow`] before buffering such a frame.
///
/// When the session that reads it fails the connection, the payload is handed to
/// [`Parking`] on drop instead of being dropped, so nothing more is read from the
/// client (PROTOCOL.md §2).
pub struct InboundFrames<S: 'static> {
    /// Always `Some` until dropped.
    payload: Option<S>,
    codec: Codec,
    buf: BytesMut,
    max_frame: usize,
    ended: bool,
    parking: Parking,
}

impl<S> InboundFrames<S> {
    /// Frames from `payload`, none larger than `max_frame` bytes.
    pub fn new(payload: S, max_frame: usize, parking: Parking) -> Self {
        InboundFrames {
            payload: Some(payload),
            codec: Codec::new().max_size(max_frame),
            buf: BytesMut::new(),
            max_frame,
            ended: false,
            parking,
        }
    }
}

impl<S> Drop for InboundFrames<S> {
    fn drop(&mut self) {
        if let Some(payload) = self.payload.take() {
            self.parking.park(Box::new(payload));
        }
    }
}

/// The payload length a frame header declares, once enough of it has arrived.
fn declared_len(buf: &[u8]) -> Option<u64> {
    let len = u64::from(*buf.get(1)? & 0x7f);
    match len {
        126 => Some(u64::from(u16::from_be_bytes(
            buf.get(2..4)?.try_into().ok()?,
        ))),
        127 => Some(u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?)),
        _ => Some(len),
    }
}

impl<S> Stream for InboundFrames<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Frame, ProtocolError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let payload = this.payload.as_mut().expect("the payload lives until drop");
        // Read no further than one largest frame plus its header: the payload waits
        // in the HTTP layer's bounded buffer, not here.
        while !this.ended && this.buf.len() <= this.max_frame + 14 {
            match Pin::new(&mut *payload).poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => this.buf.extend_from_slice(&chunk),
                Poll::Ready(Some(Err(e))) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(ProtocolError::Io(std::io::Error::other(
                        e.to_string(),
                    )))));
                }
                Poll::Ready(None) => this.ended = true,
                Poll::Pending => break,
            }
        }
        if declared_len(&this.buf).is_some_and(|len| len > this.max_frame as u64) {
            this.ended = true;
            this.buf.clear();
            return Poll::Ready(Some(Err(ProtocolError::Overflow)));
        }
        match this.codec.decode(&mut this.buf) {
            Ok(Some(frame)) => Poll::Ready(Some(Ok(frame))),
            Ok(None) if this.ended => Poll::Ready(None),
            Ok(None) => Poll::Pending,
            Err(e) => {
                this.ended = true;
                Poll::Ready(Some(Err(e)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_declared_lengths() {
        assert_eq!(declared_len(&[0x81]), None);
        assert_eq!(declared_len(&[0x81, 0x85]), Some(5));
        assert_eq!(declared_len(&[0x81, 0xFE, 0x01]), None);
        assert_eq!(declared_len(&[0x81, 0xFE, 0x01, 0x00]), Some(256));
        let gib = [0x81, 0xFF, 0, 0, 0, 0, 0x40, 0, 0, 0];
        assert_eq!(declared_len(&gib), Some(1 << 30));
    }
}
