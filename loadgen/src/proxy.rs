//! A TCP proxy to Redis whose every connection can be cut at once: a server's Redis
//! link, made to fail on cue, for the catch-up scenario.
//!
//! SIGUSR1 closes every connection through the proxy and refuses new ones (each is
//! accepted and closed at once, so the server sees a failed attempt and backs off);
//! SIGUSR2 lets connections through again. Cutting at the server's Redis URL, rather
//! than with `CLIENT KILL`, keeps the link down for as long as the scenario needs:
//! a server that loses a proven link reconnects at once, so after a `CLIENT KILL`
//! it is back before a thousand publishes could go out.

use std::net::SocketAddr;

use tokio::{
    io::copy_bidirectional,
    net::{TcpListener, TcpStream},
    signal::unix::{signal, SignalKind},
    sync::watch,
};

use crate::args::ProxyArgs;

/// Runs the `proxy` subcommand until it is killed.
pub fn run(args: &ProxyArgs) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    runtime.block_on(serve(args.listen, args.to))
}

async fn serve(listen: SocketAddr, to: SocketAddr) -> Result<(), String> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("bind {listen}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    // stdout tells the script where the proxy listens.
    #[allow(clippy::print_stdout)]
    {
        println!("proxy listening on {local}");
    }
    let (cut_tx, cut_rx) = watch::channel(false);
    let mut cut = signal(SignalKind::user_defined1()).map_err(|e| format!("SIGUSR1: {e}"))?;
    let mut restore = signal(SignalKind::user_defined2()).map_err(|e| format!("SIGUSR2: {e}"))?;
    loop {
        tokio::select! {
            _ = cut.recv() => {
                cut_tx.send_replace(true);
                eprintln!("proxy: cut");
            }
            _ = restore.recv() => {
                cut_tx.send_replace(false);
                eprintln!("proxy: restored");
            }
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                if *cut_rx.borrow() {
                    drop(client);
                    continue;
                }
                tokio::spawn(forward(client, to, cut_rx.clone()));
            }
        }
    }
}

/// Forwards one connection until either side closes it or the proxy is cut.
async fn forward(mut client: TcpStream, to: SocketAddr, mut cut: watch::Receiver<bool>) {
    let Ok(mut upstream) = TcpStream::connect(to).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    tokio::select! {
        _ = copy_bidirectional(&mut client, &mut upstream) => {}
        _ = cut.wait_for(|cut| *cut) => {}
    }
}
