//! Opening one WebSocket client: a socket bound to a chosen loopback source address
//! (so 20,000 clients do not exhaust one address's ephemeral ports), the HTTP
//! upgrade, and for Socket.IO the namespace handshake. And a plain HTTP `GET`, for
//! the servers' own reads (`/stats`, `/presence/{room}`).

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::{
    client_async_with_config,
    tungstenite::{protocol::WebSocketConfig, Message},
    WebSocketStream,
};

use crate::proto::{Inbound, Protocol};

/// An open client connection.
pub type Ws = WebSocketStream<TcpStream>;

/// How long one connection attempt, handshakes included, may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Nanoseconds since the Unix epoch: the clock every process on the machine shares.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The loopback source address for connection `index`: 127.0.0.1 to 127.0.0.250.
pub fn source_address(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 1 + (index % 250) as u8)
}

/// Small buffers: a receiving client holds a few hundred bytes at a time, and the
/// defaults (128 KiB each) times 10,000 clients would be gigabytes.
fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(16 * 1024)
        .max_message_size(Some(1 << 20))
}

/// Connects to `server` from `source` and completes the protocol's handshake.
pub async fn connect(
    server: SocketAddr,
    source: Ipv4Addr,
    protocol: Protocol,
) -> Result<Ws, String> {
    tokio::time::timeout(CONNECT_TIMEOUT, connect_inner(server, source, protocol))
        .await
        .map_err(|_| format!("connect to {server}: timed out"))?
}

async fn connect_inner(
    server: SocketAddr,
    source: Ipv4Addr,
    protocol: Protocol,
) -> Result<Ws, String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    socket
        .bind(SocketAddr::new(source.into(), 0))
        .map_err(|e| format!("bind {source}: {e}"))?;
    let stream = socket
        .connect(server)
        .await
        .map_err(|e| format!("connect to {server}: {e}"))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("nodelay: {e}"))?;
    let url = format!("ws://{server}{}", protocol.path());
    let (mut ws, _) = client_async_with_config(url, stream, Some(config()))
        .await
        .map_err(|e| format!("upgrade at {server}: {e}"))?;
    if let Some(frame) = protocol.connect_frame() {
        // Engine.IO open first, then our namespace connect and its acknowledgement.
        expect_open(&mut ws, protocol).await?;
        ws.send(Message::text(frame))
            .await
            .map_err(|e| format!("send connect: {e}"))?;
        expect_open(&mut ws, protocol).await?;
    }
    Ok(ws)
}

async fn expect_open(ws: &mut Ws, protocol: Protocol) -> Result<(), String> {
    while let Some(message) = ws.next().await {
        let message = message.map_err(|e| format!("handshake: {e}"))?;
        if let Message::Text(text) = message {
            match protocol.parse_frame(&text) {
                Inbound::Open => return Ok(()),
                Inbound::Error => return Err(format!("handshake refused: {}", text.as_str())),
                _ => {}
            }
        }
    }
    Err("closed during handshake".to_string())
}

/// A blocking `GET path` on a fresh connection to `server` (`Connection: close`, so
/// the body is whatever follows the headers until the server closes): the status
/// and the body. Two seconds to connect, five for each read.
pub fn http_get(server: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut stream = std::net::TcpStream::connect_timeout(&server, Duration::from_secs(2))
        .map_err(|e| format!("connect to {server}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| format!("read timeout: {e}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {server}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("GET {path}: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("GET {path}: {e}"))?;
    let bad = || format!("GET {path}: not an HTTP response");
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(bad)?;
    Ok((status, body.to_string()))
}
