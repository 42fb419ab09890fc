//! A WebSocket client written by hand over a bare TCP stream.
//!
//! For the clients a library will not let us be: one that stops reading altogether
//! (nothing buffers on its behalf; its receive buffer is kept small), and one that
//! never answers pings.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::server::Server;

/// Continuation opcode (the second and later fragments of a message).
pub const OP_CONTINUATION: u8 = 0x0;
/// The WebSocket opcodes the tests look at.
pub const OP_TEXT: u8 = 0x1;
/// Close opcode.
pub const OP_CLOSE: u8 = 0x8;
/// Ping opcode.
pub const OP_PING: u8 = 0x9;
/// Binary opcode.
pub const OP_BINARY: u8 = 0x2;
/// Pong opcode.
pub const OP_PONG: u8 = 0xA;

/// One frame as read from the wire (server frames are never fragmented here).
#[derive(Debug)]
pub enum RawFrame {
    /// A frame: its opcode and (unmasked) payload.
    Frame { opcode: u8, payload: Vec<u8> },
    /// The server closed the TCP connection.
    Eof,
}

impl RawFrame {
    /// The close code, if this is a close frame that carries one.
    pub fn close_code(&self) -> Option<u16> {
        match self {
            RawFrame::Frame {
                opcode: OP_CLOSE,
                payload,
            } if payload.len() >= 2 => Some(u16::from_be_bytes([payload[0], payload[1]])),
            _ => None,
        }
    }

    /// The payload of a text frame as JSON.
    pub fn json(&self) -> Option<Value> {
        match self {
            RawFrame::Frame {
                opcode: OP_TEXT,
                payload,
            } => serde_json::from_slice(payload).ok(),
            _ => None,
        }
    }
}

/// A raw WebSocket session: the test decides when (and whether) anything is read.
pub struct RawWs {
    stream: TcpStream,
    /// Bytes read but not yet parsed into a frame.
    buf: Vec<u8>,
}

impl RawWs {
    /// Connects to `server`'s `/ws`, with a receive buffer of `recv_buffer` bytes if
    /// given (a small one makes "stopped reading" show up at the server quickly).
    pub async fn connect(server: &Server, recv_buffer: Option<u32>) -> RawWs {
        let socket = TcpSocket::new_v4().expect("TCP socket");
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).expect("set SO_RCVBUF");
        }
        let addr = format!("127.0.0.1:{}", server.port())
            .parse()
            .expect("socket address");
        let stream = socket
            .connect(addr)
            .await
            .expect("TCP connect to the server");
        let mut raw = RawWs {
            stream,
            buf: Vec::new(),
        };
        raw.handshake(server.port()).await;
        raw
    }

    /// The client's own TCP port (to find the connection in `/proc/net/tcp`).
    pub fn local_port(&self) -> u16 {
        self.stream.local_addr().expect("local address").port()
    }

    async fn handshake(&mut self, port: u16) {
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        self.stream
            .write_all(request.as_bytes())
            .await
            .expect("send handshake");
        let deadline = Instant::now() + Duration::from_secs(5);
        let end = loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                break end + 4;
            }
            assert!(
                self.fill(deadline).await,
                "connection closed during the handshake"
            );
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "handshake refused: {head}"
        );
        self.buf.drain(..end);
    }

    /// Sends one masked text frame (clients must mask).
    pub async fn send_text(&mut self, text: &str) {
        let frame = encode_client_frame(OP_TEXT, true, text.as_bytes());
        self.stream.write_all(&frame).await.expect("send a frame");
    }

    /// Sends one text message as several frames: a first frame, then continuations, the
    /// last one final (the frame limit counts the fragments of one message together).
    pub async fn send_fragmented_text(&mut self, parts: &[&str]) {
        for (i, part) in parts.iter().enumerate() {
            let opcode = if i == 0 { OP_TEXT } else { OP_CONTINUATION };
            let fin = i + 1 == parts.len();
            let frame = encode_client_frame(opcode, fin, part.as_bytes());
            self.stream
                .write_all(&frame)
                .await
                .expect("send a fragment");
        }
    }

    /// Reads the next frame, panicking if none arrives within `timeout`.
    pub async fn read_frame(&mut self, timeout: Duration) -> RawFrame {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(frame) = self.parse_frame() {
                return frame;
            }
            if !self.fill(deadline).await {
                return RawFrame::Eof;
            }
        }
    }

    /// Reads frames until a text frame satisfies `wanted`, ignoring pings (unanswered).
    pub async fn read_json_matching(
        &mut self,
        timeout: Duration,
        wanted: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = self.read_frame(left).await;
            if let Some(value) = frame.json().filter(|v| wanted(v)) {
                return value;
            }
            assert!(
                !matches!(frame, RawFrame::Eof),
                "connection closed while waiting"
            );
            assert!(
                frame.close_code().is_none(),
                "closed while waiting: {frame:?}"
            );
        }
    }

    /// Reads more bytes; `false` on end of stream; panics at `deadline`.
    async fn fill(&mut self, deadline: Instant) -> bool {
        self.try_fill(deadline)
            .await
            .expect("raw client: nothing read before the deadline")
    }

    /// Reads more bytes: `Some(false)` on end of stream (or a reset), `None` when
    /// nothing came before `deadline`.
    async fn try_fill(&mut self, deadline: Instant) -> Option<bool> {
        let mut chunk = [0u8; 64 * 1024];
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, self.stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => Some(false),
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Some(true)
            }
            Err(_) => None,
        }
    }

    /// Like [`RawWs::read_frame`], but `None` (instead of a panic) when no whole frame
    /// arrived within `timeout`.
    pub async fn try_read_frame(&mut self, timeout: Duration) -> Option<RawFrame> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(frame) = self.parse_frame() {
                return Some(frame);
            }
            if !self.try_fill(deadline).await? {
                return Some(RawFrame::Eof);
            }
        }
    }

    /// Reads until the server's close frame (its code: `Some`), or the end of the
    /// stream without one (`None`), skipping every other frame; panics after `timeout`.
    pub async fn read_until_close(&mut self, timeout: Duration) -> Option<u16> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_frame(left).await {
                RawFrame::Eof => return None,
                frame @ RawFrame::Frame {
                    opcode: OP_CLOSE, ..
                } => return frame.close_code(),
                RawFrame::Frame { .. } => continue,
            }
        }
    }

    /// Writes `bytes` as they are: hand-made frames, or a part of one. An error (the
    /// server closed the connection) is returned, not a panic: it may be the point.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Writes `piece` again and again, as fast as the server takes it, until a write
    /// fails (the server reset the connection) or `limit` passes; with `reading`, it
    /// reads what the server sends meanwhile (else that waits in the buffer). For a
    /// client that goes on sending after the server failed its connection.
    pub async fn flood(&mut self, piece: &[u8], reading: bool, limit: Duration) -> Flood {
        let start = Instant::now();
        let mut flood = Flood::default();
        let (mut reader, mut writer) = self.stream.split();
        let mut chunk = vec![0; 64 * 1024];
        let stop = tokio::time::sleep(limit);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                read = reader.read(&mut chunk), if reading && flood.eof.is_none() => match read {
                    Ok(0) | Err(_) => flood.eof = Some(start.elapsed()),
                    Ok(n) => {
                        self.buf.extend_from_slice(&chunk[..n]);
                        while let Some(frame) = take_frame(&mut self.buf) {
                            if let Some(code) = frame.close_code() {
                                flood.close = Some((code, start.elapsed()));
                            }
                        }
                    }
                },
                written = writer.write(piece) => match written {
                    Ok(n) => flood.written += n as u64,
                    Err(_) => {
                        flood.write_failed = Some(start.elapsed());
                        return flood;
                    }
                },
                _ = &mut stop => return flood,
            }
        }
    }

    /// Takes one whole frame off the front of the buffer, if one is there.
    fn parse_frame(&mut self) -> Option<RawFrame> {
        take_frame(&mut self.buf)
    }
}

/// What [`RawWs::flood`] saw. Times are from the start of the flood.
#[derive(Debug, Default)]
pub struct Flood {
    /// Bytes the server's TCP stack took from the client.
    pub written: u64,
    /// The server's close code and when it arrived.
    pub close: Option<(u16, Duration)>,
    /// When the stream from the server ended (its FIN, or a reset).
    pub eof: Option<Duration>,
    /// When a write failed: the server had reset the connection.
    pub write_failed: Option<Duration>,
}

/// Takes one whole frame off the front of `buf`, if one is there.
fn take_frame(buf: &mut Vec<u8>) -> Option<RawFrame> {
    let (header, len) = frame_header(buf)?;
    if buf.len() < header + len {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let payload = buf[header..header + len].to_vec();
    buf.drain(..header + len);
    Some(RawFrame::Frame { opcode, payload })
}

/// The header length and payload length of the frame at the start of `buf`, once the
/// whole header is there. Server frames are unmasked; a mask key is skipped if present.
fn frame_header(buf: &[u8]) -> Option<(usize, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let masked = buf[1] & 0x80 != 0;
    let (mut header, len) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (4, usize::from(u16::from_be_bytes([buf[2], buf[3]]))),
        127 if buf.len() >= 10 => {
            let bytes: [u8; 8] = buf[2..10].try_into().expect("eight length bytes");
            (
                10,
                usize::try_from(u64::from_be_bytes(bytes)).expect("frame fits in memory"),
            )
        }
        126 | 127 => return None,
        short => (2, usize::from(short)),
    };
    if masked {
        header += 4;
    }
    (buf.len() >= header).then_some((header, len))
}

/// The mask every frame of these clients uses (the mask only has to be present).
pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A client frame with a fixed mask (the mask only has to be present).
fn encode_client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let first = if fin { 0x80 | opcode } else { opcode };
    encode_frame(first, true, payload)
}

/// A frame with `first` as its first byte verbatim (FIN, RSV1-3 and the opcode, so a
/// test can set any of them), masked with [`MASK`] or not.
pub fn encode_frame(first: u8, masked: bool, payload: &[u8]) -> Vec<u8> {
    let mut frame = frame_head(first, masked, payload.len() as u64);
    if masked {
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    } else {
        frame.extend_from_slice(payload);
    }
    frame
}

/// A frame's header alone: the first byte, the declared payload length `len` in
/// the shortest form, and the mask key if `masked`. The payload may follow later (or
/// never), to declare what is not sent.
pub fn frame_head(first: u8, masked: bool, len: u64) -> Vec<u8> {
    let mask_bit = if masked { 0x80 } else { 0 };
    let mut head = vec![first];
    match len {
        len if len < 126 => head.push(mask_bit | len as u8),
        len if len <= u64::from(u16::MAX) => {
            head.push(mask_bit | 126);
            head.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            head.push(mask_bit | 127);
            head.extend_from_slice(&len.to_be_bytes());
        }
    }
    if masked {
        head.extend_from_slice(&MASK);
    }
    head
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
