//! The `switchboard` server: configuration from the environment, then
//! [`Switchboard::start`] and [`switchboard::serve`] until SIGINT or SIGTERM.

use std::{net::TcpListener, process::ExitCode, time::Duration};

use switchboard::{Config, Switchboard};

/// How long the server waits for Redis before it starts serving anyway.
const READY_WITHIN: Duration = Duration::from_secs(3);

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let listener = match TcpListener::bind((config.host.as_str(), config.port)) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!(
                "switchboard: cannot listen on {}:{}: {e}",
                config.host, config.port
            );
            return ExitCode::from(1);
        }
    };
    let address = listener
        .local_addr()
        .expect("a bound listener has an address");
    let result = actix_web::rt::System::new().block_on(async move {
        let switchboard = Switchboard::start(&config);
        switchboard.wait_ready(READY_WITHIN).await;
        // The one line on stdout: scripts and tests read the port from it.
        #[allow(clippy::print_stdout)]
        {
            println!("switchboard listening on http://{address}");
        }
        switchboard::serve(listener, switchboard, config, shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchboard: {e}");
            ExitCode::from(1)
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
