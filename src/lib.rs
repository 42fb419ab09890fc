//! Switchboard: the real-time tier of an Actix application that runs on more than
//! one server. A service publishes a typed event in a room; Redis pub/sub carries it
//! to every server; each server hands it to its in-process actors and to its WebSocket
//! clients in that room.
//!
//! This crate is the HTTP side: configuration, the WebSocket session actor, the wire
//! format and the routes. The actors that do not depend on HTTP (broker, Redis links,
//! peers) are in [`switchboard_actors`], re-exported as [`actors`].
//!
//! # Layout
//!
//! - `config.rs`: [`Config`] from the environment (PROTOCOL.md §4), with its
//!   sub-configs; loaded once in `main`.
//! - `server.rs`: [`Switchboard`] (starts the broker and the peers, mounts the routes
//!   into any Actix `App` with [`Switchboard::configure`], drains with
//!   [`Switchboard::shutdown`]), and [`serve`] / [`run`] (the whole server on a
//!   listener until a shutdown future resolves, then the drain).
//! - `state.rs`: the [`State`] the routes and sessions share, with its
//!   [`ConnectionCounters`] and the [`PublishGate`] that bounds publishes in flight.
//! - `http.rs`: `POST /publish/{room}`, `GET /history/{room}`, `GET /health`,
//!   `GET /health/live`, `GET /stats`, `POST /stats/reset`, and the `GET /ws` upgrade.
//! - `metrics/`: `GET /metrics` and the server's [`Metrics`]: a Prometheus
//!   registry read mostly from the statistics above at scrape time, with counters
//!   that never go down across `POST /stats/reset`.
//! - `session/`: [`Session`], one actor per WebSocket client, with its [`Access`]
//!   (`mod.rs`: frames, heartbeat, closing; `ops.rs`: what each client op does;
//!   `durable.rs`: the `history` op and the paced replay of a recovery; `replay.rs`:
//!   `Replays`, a pure type saying what a recovery sends next). Accepts `Delivery`,
//!   `Evicted` and `Gap` from the broker and the client's frames as a stream. Its
//!   rooms are a pure state machine, `SessionRooms` (`rooms.rs`).
//! - `wire.rs`: client frames parsed into [`wire::ClientOp`]; server frames encoded.
//! - `outbound.rs`: the bounded per-connection queue and the response body that
//!   drains it; `inbound.rs`: client frames off the request payload, size-checked;
//!   `failing.rs`: how a connection the server failed ends (payload kept unread,
//!   write side shut down after the close frame, reset within a second);
//!   `socket.rs`: the socket operations those need (reset, shut down, duplicate), by
//!   the [`ConnectionSocket`] recorded at accept.
//! - `auth.rs`: [`Authenticator`] (HS256 JWTs) and the [`Grant`] a token gives, with
//!   its room [`Pattern`]s; `rate.rs`: the per-connection [`PublishBudget`].
//! - `error.rs`: [`Error`], with the WebSocket code and HTTP status of each refusal.
//! - `console.rs`: `GET /` (the console page), `GET /console.js` and
//!   `GET /switchboard.js` (the browser client), files of `src/console/` compiled into
//!   the binary; left out with `CONSOLE=off`.
//! - `token.rs`: [`token::TokenClaims`], what `switchboard token` signs so people can
//!   try the console with authentication on.
//! - `memory.rs`: hands freed memory back to the operating system once a minute
//!   (glibc's `malloc_trim`).

mod auth;
mod config;
mod console;
mod error;
mod failing;
pub mod filter;
mod http;
mod inbound;
mod memory;
mod metrics;
mod outbound;
mod rate;
mod rooms;
mod server;
mod session;
mod socket;
mod state;
pub mod token;
pub mod wire;

pub use auth::{AuthError, Authenticator, Grant};
pub use config::{Config, ConfigError, Limits, Secret, SecurityConfig, SessionConfig};
pub use error::{Error, ErrorCode};
pub use metrics::{Metrics, ResetGuard};
pub use rate::{PublishBudget, Spend};
pub use server::{run, serve, Switchboard};
pub use session::{Access, Session};
pub use state::{Admission, ClientIds, ConnectionCounters, ConnectionSocket, PublishGate, State};
pub use switchboard_actors as actors;
pub use switchboard_actors::Pattern;

/// The README's Rust examples, compiled as doctests so they cannot rot unseen
/// (`cargo test --doc`).
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
