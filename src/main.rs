//! The `switchboard` server: configuration from the environment, then
//! [`Switchboard::start`] and [`switchboard::serve`] until SIGINT or SIGTERM.
//! `switchboard token ...` prints a token for trying it with authentication on.

use std::{net::TcpListener, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};
use switchboard::{
    token::{parse_pattern, parse_ttl, TokenClaims},
    Config, Switchboard,
};

/// jemalloc, not glibc's malloc: under a steady load glibc's heap grows without bound
/// (fragmentation that `malloc_trim` cannot return), jemalloc's stays flat at the same
/// memory per connection (`bench/notes.md`, issue 8 item 16). The library leaves the
/// choice to the application that embeds it.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// How long the server waits for Redis before it starts serving anyway.
const READY_WITHIN: Duration = Duration::from_secs(3);

/// The real-time tier: with no command, the server (configured by its environment).
#[derive(Parser)]
#[command(name = "switchboard", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Prints an HS256 token signed with AUTH_JWT_SECRET (and for AUTH_JWT_AUDIENCE when
    /// set), to try the console or a client with authentication on.
    Token(TokenArgs),
}

#[derive(Args)]
struct TokenArgs {
    /// The user (`sub`).
    #[arg(long, value_parser = clap::builder::NonEmptyStringValueParser::new())]
    sub: String,
    /// Room patterns the user may subscribe to (repeat the flag or separate with commas).
    #[arg(long, value_delimiter = ',', value_parser = parse_pattern)]
    subscribe: Vec<String>,
    /// Room patterns the user may publish in.
    #[arg(long, value_delimiter = ',', value_parser = parse_pattern)]
    publish: Vec<String>,
    /// How long the token is valid: 90s, 30m, 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    ttl: Duration,
    /// The `info` claim (JSON) other members of a presence room see.
    #[arg(long, value_parser = parse_json)]
    info: Option<serde_json::Value>,
}

fn parse_json(text: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))
}

fn main() -> ExitCode {
    match Cli::parse().command {
        None => serve(),
        Some(Command::Token(args)) => token(args),
    }
}

/// `switchboard token`: the token alone on stdout, so `TOKEN=$(switchboard token ...)`.
fn token(args: TokenArgs) -> ExitCode {
    let secret = match std::env::var("AUTH_JWT_SECRET") {
        Ok(secret) if !secret.trim().is_empty() => secret,
        _ => {
            eprintln!("switchboard token: AUTH_JWT_SECRET is not set: the token is signed with the server's secret");
            return ExitCode::from(2);
        }
    };
    let mut claims = TokenClaims::new(&args.sub, args.ttl);
    claims.aud = std::env::var("AUTH_JWT_AUDIENCE")
        .ok()
        .filter(|a| !a.is_empty());
    claims.subscribe = args.subscribe;
    claims.publish = args.publish;
    claims.info = args.info;
    #[allow(clippy::print_stdout)]
    {
        println!("{}", claims.sign(secret.as_bytes()));
    }
    ExitCode::SUCCESS
}

fn serve() -> ExitCode {
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
