//! A fault-injecting TCP proxy between a server under test and its Redis.
//!
//! Killing Redis breaks every link at once and loses its state; the proxy breaks only
//! the links that go through it, and can also make them *stall*: the sockets stay
//! open but nothing flows, which is what a wedged network or a half-dead peer looks
//! like and what only a probe with a deadline can detect (PROTOCOL.md §5).

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};

/// A proxy listening on `127.0.0.1:port()` that forwards every connection to an
/// upstream port on 127.0.0.1. Stopped (every connection closed) on drop.
pub struct Proxy {
    port: u16,
    /// `true` while paused: forwarding tasks hold what they read and wait.
    paused: watch::Sender<bool>,
    /// The tasks of the live connections, so that [`Proxy::cut`] can end them.
    ///
    /// A mutex because the accept task adds to it and the test cuts from outside; it
    /// is only held to push or drain, never across an await.
    connections: Arc<Mutex<Vec<AbortHandle>>>,
    acceptor: JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy to `127.0.0.1:upstream`.
    pub async fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy listener");
        let port = listener.local_addr().expect("proxy address").port();
        let (paused, _) = watch::channel(false);
        let connections = Arc::new(Mutex::new(Vec::new()));
        let acceptor = tokio::spawn(accept(
            listener,
            upstream,
            paused.clone(),
            connections.clone(),
        ));
        Proxy {
            port,
            paused,
            connections,
            acceptor,
        }
    }

    /// The port to give the server under test instead of Redis's.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT` through the proxy.
    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops forwarding both ways; the sockets stay open (and new ones are accepted).
    pub fn pause(&self) {
        self.paused.send_replace(true);
    }

    /// Forwards again, what was held first.
    pub fn resume(&self) {
        self.paused.send_replace(false);
    }

    /// Closes every connection open through the proxy right now (both sides).
    pub fn cut(&self) -> usize {
        let handles: Vec<_> = self
            .connections
            .lock()
            .expect("proxy connections lock")
            .drain(..)
            .collect();
        for handle in &handles {
            handle.abort();
        }
        handles.iter().filter(|h| !h.is_finished()).count()
    }

    /// How many connections through the proxy are open.
    pub fn open_connections(&self) -> usize {
        let mut connections = self.connections.lock().expect("proxy connections lock");
        connections.retain(|h| !h.is_finished());
        connections.len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.cut();
    }
}

async fn accept(
    listener: TcpListener,
    upstream: u16,
    paused: watch::Sender<bool>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
) {
    while let Ok((client, _)) = listener.accept().await {
        let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
            // Upstream down: the client sees its connection closed, as with no proxy.
            continue;
        };
        let task = tokio::spawn(forward(client, server, paused.subscribe()));
        connections
            .lock()
            .expect("proxy connections lock")
            .push(task.abort_handle());
    }
}

/// Copies both ways until either side closes, then closes both.
async fn forward(client: TcpStream, server: TcpStream, paused: watch::Receiver<bool>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::select! {
        () = copy(client_read, server_write, paused.clone()) => {}
        () = copy(server_read, client_write, paused) => {}
    }
}

async fn copy(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut paused: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if paused.wait_for(|paused| !*paused).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
