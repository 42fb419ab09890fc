//! The loadgen's side of a presence read: a connection that reads a room without
//! being a member, the count polled until it says what a phase waits for, and the
//! timed rounds of reads with what they measured.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio_tungstenite::tungstenite::Message;

use super::POLL;
use crate::{
    args::PresenceArgs,
    client::{http_get, Ws},
    durable::connect_to,
    proto::{parse_presence, presence_request, PresenceFrame},
    stats::{self, Latency},
};

/// What the timed rounds measured.
#[derive(Debug, Serialize)]
pub struct TimedReads {
    /// WebSocket `presence` reads.
    pub ws_presence: Reads,
    /// WebSocket `presence_count` reads.
    pub ws_presence_count: Reads,
    /// HTTP `GET /presence/{room}` reads, each on a connection of its own (its
    /// connect timed too).
    pub http_presence: Reads,
    /// Answers that did not list (or count) every member, over all kinds.
    pub wrong_answers: u64,
}

/// One kind of read over all rounds.
#[derive(Debug, Serialize)]
pub struct Reads {
    /// From the request to the whole answer, µs.
    pub latency_us: Latency,
    /// The largest answer, bytes (the frame, or the HTTP body).
    pub bytes: u64,
    /// The fewest members an answer listed (`presence_count`: its `clients`).
    pub members: u64,
}

/// One kind of read, as the rounds go.
struct ReadTimes {
    latency: Histogram<u64>,
    bytes: u64,
    members: u64,
    wrong: u64,
}

impl ReadTimes {
    fn new() -> ReadTimes {
        ReadTimes {
            latency: stats::histogram(),
            bytes: 0,
            members: u64::MAX,
            wrong: 0,
        }
    }

    /// Records one read that took `took` for an answer of `bytes` listing
    /// `members`, where `expected` were owed.
    fn record(&mut self, took: Duration, bytes: usize, members: u64, expected: u64) {
        self.latency
            .saturating_record((took.as_micros() as u64).max(1));
        self.bytes = self.bytes.max(bytes as u64);
        self.members = self.members.min(members);
        if members != expected {
            self.wrong += 1;
        }
    }

    fn summary(&self) -> Reads {
        Reads {
            latency_us: Latency::of(&self.latency),
            bytes: self.bytes,
            members: if self.latency.is_empty() {
                0
            } else {
                self.members
            },
        }
    }
}

/// The timed rounds, each on the next server: a WebSocket `presence`, a
/// `presence_count` and a `GET /presence/{room}`, one at a time.
pub async fn time_reads(args: &PresenceArgs, readers: &mut [Reader]) -> Result<TimedReads, String> {
    let expected = args.members as u64;
    let [mut ws_presence, mut ws_count, mut http] = [(); 3].map(|()| ReadTimes::new());
    for round in 0..args.reads {
        let reader = &mut readers[round % readers.len()];
        let asked = Instant::now();
        let (bytes, answer) = reader.ask("presence").await?;
        ws_presence.record(asked.elapsed(), bytes, listed(&answer), expected);
        let asked = Instant::now();
        let (bytes, answer) = reader.ask("presence_count").await?;
        ws_count.record(asked.elapsed(), bytes, listed(&answer), expected);
        let (took, body) = http_presence(reader.server, &args.room).await?;
        http.record(took, body.len(), listed(&parse_presence(&body)), expected);
    }
    Ok(TimedReads {
        wrong_answers: ws_presence.wrong + ws_count.wrong + http.wrong,
        ws_presence: ws_presence.summary(),
        ws_presence_count: ws_count.summary(),
        http_presence: http.summary(),
    })
}

/// The members an answer lists, or counts.
fn listed(answer: &PresenceFrame) -> u64 {
    match answer {
        PresenceFrame::Members { members, .. } => *members as u64,
        PresenceFrame::Count { clients, .. } => *clients,
        PresenceFrame::Error | PresenceFrame::Other => 0,
    }
}

/// `GET /presence/{room}`, timed from the connect to the end of the body.
async fn http_presence(server: SocketAddr, room: &str) -> Result<(Duration, String), String> {
    let path = format!("/presence/{room}");
    tokio::task::spawn_blocking(move || {
        let asked = Instant::now();
        let (status, body) = http_get(server, &path)?;
        let took = asked.elapsed();
        match status {
            200 => Ok((took, body)),
            _ => Err(format!("GET {path} at {server}: {status} {body}")),
        }
    })
    .await
    .map_err(|e| format!("GET /presence: {e}"))?
}

/// Reads `presence_count` on every server every [`POLL`] until `done` (given the
/// counts) says so, or fails; past `deadline` (at once if it has passed) that is an
/// error naming the last counts and `what` was awaited.
pub async fn poll_counts(
    readers: &mut [Reader],
    deadline: Instant,
    what: &str,
    mut done: impl FnMut(&[u64]) -> Result<bool, String>,
) -> Result<(), String> {
    loop {
        let mut counts = Vec::with_capacity(readers.len());
        for reader in readers.iter_mut() {
            counts.push(listed(&reader.ask("presence_count").await?.1));
        }
        if done(&counts)? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "waiting for {what}: presence_count is {counts:?} on the servers"
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until `presence_count` on every server is 0.
pub async fn wait_empty(readers: &mut [Reader], deadline: Instant) -> Result<(), String> {
    poll_counts(readers, deadline, "an empty room", |counts| {
        Ok(counts.iter().all(|&c| c == 0))
    })
    .await
}

/// A connection that reads the room without being a member.
pub struct Reader {
    pub ws: Ws,
    server: SocketAddr,
    room: String,
    next_ref: u64,
}

impl Reader {
    pub async fn open(server: SocketAddr, room: &str, index: usize) -> Result<Reader, String> {
        Ok(Reader {
            ws: connect_to(server, index).await?,
            server,
            room: room.to_string(),
            next_ref: 0,
        })
    }

    /// Sends the read `op` and waits for its answer: the answer's bytes and what
    /// it says. A refusal is an error.
    async fn ask(&mut self, op: &str) -> Result<(usize, PresenceFrame), String> {
        self.next_ref += 1;
        let reference = self.next_ref;
        let server = self.server;
        self.ws
            .send(Message::text(presence_request(op, &self.room, reference)))
            .await
            .map_err(|e| format!("{op} at {server}: {e}"))?;
        loop {
            let text = match self.ws.next().await {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Close(_))) | None => {
                    return Err(format!("{op} at {server}: closed by the server"))
                }
                Some(Err(e)) => return Err(format!("{op} at {server}: {e}")),
                Some(Ok(_)) => continue,
            };
            match parse_presence(&text) {
                answer @ (PresenceFrame::Members {
                    reference: Some(r), ..
                }
                | PresenceFrame::Count {
                    reference: Some(r), ..
                }) if r == reference => return Ok((text.len(), answer)),
                PresenceFrame::Error => {
                    return Err(format!("{op} at {server} refused: {}", text.as_str()))
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_keep_the_largest_answer_and_the_fewest_members() {
        let mut reads = ReadTimes::new();
        reads.record(Duration::from_micros(300), 1000, 10, 10);
        reads.record(Duration::from_micros(900), 1200, 9, 10);
        let summary = reads.summary();
        assert_eq!(summary.latency_us.count, 2);
        assert_eq!((summary.bytes, summary.members, reads.wrong), (1200, 9, 1));
        assert_eq!(ReadTimes::new().summary().members, 0);
    }

    #[test]
    fn listed_counts_both_answers() {
        let members = PresenceFrame::Members {
            reference: None,
            members: 7,
        };
        let count = PresenceFrame::Count {
            reference: Some(1),
            clients: 5,
            users: 0,
        };
        assert_eq!((listed(&members), listed(&count)), (7, 5));
        assert_eq!(listed(&PresenceFrame::Error), 0);
    }
}
