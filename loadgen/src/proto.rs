//! The two wire protocols the loadgen speaks: Switchboard's JSON frames and
//! Socket.IO v5 over Engine.IO v4 (WebSocket transport only).
//!
//! Engine.IO v4 packets are one text frame each, a digit for the type then the
//! payload: `0{..}` open, `2` ping (answered `3`), `4` message. A Socket.IO packet
//! rides in a message: `40` connect to `/`, `42[name, args..]` an event. The peer
//! server under `bench/peers/socketio` maps Switchboard's ops onto events of the same
//! names, so both protocols carry the same [`Probe`].

use std::fmt::Write as _;

use serde::Deserialize;
use serde_json::value::RawValue;

/// The measurement a publisher puts in each event's `data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Probe {
    /// Global publisher index.
    pub p: u32,
    /// Sequence number, per publisher and room, from 1 within a phase.
    pub s: u64,
    /// Scheduled send time, ns since the Unix epoch (not the actual send time, so
    /// that a late send shows up as latency: no coordinated omission).
    pub t: u64,
    /// Phase id: events of an earlier phase that arrive late are counted apart.
    pub h: u32,
    /// Index of the server the publisher is connected to.
    pub n: u32,
}

/// A frame from the server, as far as the loadgen cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// An event for `room`, with its probe when the data is one.
    Event {
        /// The room the event was published in.
        room: &'a str,
        /// The probe in `data`, `None` for events from other publishers.
        probe: Option<Probe>,
    },
    /// A subscription was confirmed.
    Subscribed,
    /// A publish was accepted.
    Published,
    /// The server refused something; the text is the frame.
    Error,
    /// Engine.IO ping: must be answered with [`Protocol::pong`].
    Ping,
    /// Engine.IO open or Socket.IO connect acknowledgement.
    Open,
    /// Anything else (pongs, unknown frames).
    Other,
}

/// Which server the loadgen talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Switchboard's `GET /ws` JSON frames.
    Switchboard,
    /// Socket.IO 4 (Engine.IO v4 / Socket.IO v5 framing).
    SocketIo,
}

#[derive(Deserialize)]
struct SbFrame<'a> {
    #[serde(borrow)]
    op: &'a str,
    #[serde(borrow, default)]
    room: Option<&'a str>,
    #[serde(default)]
    event: Option<EventBody>,
}

#[derive(Deserialize)]
struct EventBody {
    #[serde(default)]
    data: Option<Probe>,
}

#[derive(Deserialize)]
struct SioEvent<'a> {
    #[serde(borrow)]
    room: &'a str,
    event: EventBody,
}

impl Protocol {
    /// Parses `switchboard` or `socketio`.
    pub fn parse(name: &str) -> Result<Protocol, String> {
        match name {
            "switchboard" => Ok(Protocol::Switchboard),
            "socketio" => Ok(Protocol::SocketIo),
            other => Err(format!("unknown protocol {other:?}")),
        }
    }

    /// The protocol's name, as [`Protocol::parse`] takes it.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Switchboard => "switchboard",
            Protocol::SocketIo => "socketio",
        }
    }

    /// The WebSocket path and query to connect to.
    pub fn path(self) -> &'static str {
        match self {
            Protocol::Switchboard => "/ws",
            Protocol::SocketIo => "/socket.io/?EIO=4&transport=websocket",
        }
    }

    /// The frame that joins the default namespace once the transport is open.
    pub fn connect_frame(self) -> Option<&'static str> {
        match self {
            Protocol::Switchboard => None,
            Protocol::SocketIo => Some("40"),
        }
    }

    /// The answer to an Engine.IO ping.
    pub fn pong(self) -> &'static str {
        "3"
    }

    /// A subscribe request for `room`.
    pub fn subscribe(self, room: &str) -> String {
        match self {
            Protocol::Switchboard => format!(r#"{{"op":"subscribe","room":"{room}"}}"#),
            Protocol::SocketIo => format!(r#"42["subscribe","{room}"]"#),
        }
    }

    /// A publish of `probe` (plus `padding` filler bytes) in `room`.
    pub fn publish(self, room: &str, probe: &Probe, padding: &str) -> String {
        let mut frame = String::with_capacity(160 + padding.len());
        let Probe { p, s, t, h, n } = probe;
        let event = format!(
            r#"{{"type":"bench","data":{{"p":{p},"s":{s},"t":{t},"h":{h},"n":{n},"x":"{padding}"}}}}"#
        );
        // Writing to a String cannot fail.
        let _ = match self {
            Protocol::Switchboard => write!(
                frame,
                r#"{{"op":"publish","room":"{room}","event":{event}}}"#
            ),
            Protocol::SocketIo => write!(frame, r#"42["publish","{room}",{event}]"#),
        };
        frame
    }

    /// Classifies one text frame from the server.
    pub fn parse_frame(self, text: &str) -> Inbound<'_> {
        match self {
            Protocol::Switchboard => parse_switchboard(text),
            Protocol::SocketIo => parse_socketio(text),
        }
    }
}

fn parse_switchboard(text: &str) -> Inbound<'_> {
    let Ok(frame) = serde_json::from_str::<SbFrame<'_>>(text) else {
        return Inbound::Other;
    };
    match (frame.op, frame.room, frame.event) {
        ("event", Some(room), Some(event)) => Inbound::Event {
            room,
            probe: event.data,
        },
        ("subscribed", _, _) => Inbound::Subscribed,
        ("published", _, _) => Inbound::Published,
        ("error", _, _) => Inbound::Error,
        _ => Inbound::Other,
    }
}

fn parse_socketio(text: &str) -> Inbound<'_> {
    if text == "2" {
        return Inbound::Ping;
    }
    if text.starts_with('0') || text.starts_with("40") {
        return Inbound::Open;
    }
    if text.starts_with("44") {
        return Inbound::Error;
    }
    let Some(args) = text.strip_prefix("42") else {
        return Inbound::Other;
    };
    let Ok((name, payload)) = serde_json::from_str::<(&str, &RawValue)>(args) else {
        return Inbound::Other;
    };
    match name {
        "event" => match serde_json::from_str::<SioEvent<'_>>(payload.get()) {
            Ok(event) => Inbound::Event {
                room: event.room,
                probe: event.event.data,
            },
            Err(_) => Inbound::Other,
        },
        "subscribed" => Inbound::Subscribed,
        "published" => Inbound::Published,
        "error" => Inbound::Error,
        _ => Inbound::Other,
    }
}

/// A Switchboard frame of a durable room (PROTOCOL.md §7-8), as the durable
/// scenarios (`catch-up`, `storm`) read it: the positions the measured scenarios
/// do not need ([`Inbound`]) are what these are about.
#[derive(Debug, PartialEq, Eq)]
pub enum DurableFrame<'a> {
    /// `subscribed`, with the room's position and, after a `since`, whether every
    /// missed event follows.
    Subscribed {
        /// The events after this offset follow.
        offset: Option<u64>,
        /// The room's numbering.
        epoch: Option<String>,
        /// With `since`: every event after it follows.
        recovered: Option<bool>,
    },
    /// An event, with its offset when numbered.
    Event {
        /// The room it was published in.
        room: &'a str,
        /// Its place in the room's numbering.
        offset: Option<u64>,
    },
    /// A publish was accepted, at this offset.
    Published {
        /// The room it was published in.
        room: Option<&'a str>,
        /// The event's offset.
        offset: Option<u64>,
    },
    /// `gap`: the server says events were lost.
    Gap,
    /// The server refused something.
    Error,
    /// Anything else.
    Other,
}

#[derive(Deserialize)]
struct DurableSbFrame<'a> {
    #[serde(borrow)]
    op: &'a str,
    #[serde(borrow, default)]
    room: Option<&'a str>,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default)]
    epoch: Option<String>,
    #[serde(default)]
    recovered: Option<bool>,
    #[serde(default)]
    event: Option<NumberedBody>,
}

#[derive(Deserialize)]
struct NumberedBody {
    #[serde(default)]
    offset: Option<u64>,
}

/// Classifies one Switchboard text frame for the durable scenarios.
pub fn parse_durable(text: &str) -> DurableFrame<'_> {
    let Ok(frame) = serde_json::from_str::<DurableSbFrame<'_>>(text) else {
        return DurableFrame::Other;
    };
    match (frame.op, frame.room, frame.event) {
        ("event", Some(room), Some(event)) => DurableFrame::Event {
            room,
            offset: event.offset,
        },
        ("subscribed", _, _) => DurableFrame::Subscribed {
            offset: frame.offset,
            epoch: frame.epoch,
            recovered: frame.recovered,
        },
        ("published", room, _) => DurableFrame::Published {
            room,
            offset: frame.offset,
        },
        ("gap", _, _) => DurableFrame::Gap,
        ("error", _, _) => DurableFrame::Error,
        _ => DurableFrame::Other,
    }
}

/// A subscribe to `room`, recovering from `since` (offset, epoch) when given.
pub fn subscribe_since(room: &str, since: Option<(u64, &str)>) -> String {
    match since {
        Some((offset, epoch)) => format!(
            r#"{{"op":"subscribe","room":"{room}","since":{{"offset":{offset},"epoch":{}}}}}"#,
            serde_json::Value::from(epoch)
        ),
        None => Protocol::Switchboard.subscribe(room),
    }
}

/// A Switchboard answer about a presence room (PROTOCOL.md §9), as the `presence`
/// scenario reads it; the body of `GET /presence/{room}` (no `op`) reads as a
/// `presence` answer.
#[derive(Debug, PartialEq, Eq)]
pub enum PresenceFrame {
    /// A `presence` answer: how many members it lists.
    Members {
        /// The request's `ref`.
        reference: Option<u64>,
        /// Members listed.
        members: usize,
    },
    /// A `presence_count` answer.
    Count {
        /// The request's `ref`.
        reference: Option<u64>,
        /// Member sessions on every server.
        clients: u64,
        /// Distinct users among them.
        users: u64,
    },
    /// The server refused something.
    Error,
    /// Anything else (`join`, `leave`, ...).
    Other,
}

#[derive(Deserialize)]
struct PresenceSbFrame<'a> {
    #[serde(borrow, default)]
    op: Option<&'a str>,
    #[serde(default, rename = "ref")]
    reference: Option<u64>,
    /// Counted, not kept.
    #[serde(default)]
    members: Option<Vec<serde::de::IgnoredAny>>,
    #[serde(default)]
    clients: Option<u64>,
    #[serde(default)]
    users: Option<u64>,
}

/// Classifies a presence answer (a frame, or an HTTP body).
pub fn parse_presence(text: &str) -> PresenceFrame {
    let Ok(frame) = serde_json::from_str::<PresenceSbFrame<'_>>(text) else {
        return PresenceFrame::Other;
    };
    let reference = frame.reference;
    match (frame.op, frame.members, frame.clients) {
        (Some("presence") | None, Some(members), _) => PresenceFrame::Members {
            reference,
            members: members.len(),
        },
        (Some("presence_count"), _, Some(clients)) => PresenceFrame::Count {
            reference,
            clients,
            users: frame.users.unwrap_or(0),
        },
        (Some("error"), _, _) => PresenceFrame::Error,
        _ => PresenceFrame::Other,
    }
}

/// A presence read of `room`: `op` is `presence` or `presence_count`.
pub fn presence_request(op: &str, room: &str, reference: u64) -> String {
    format!(r#"{{"op":"{op}","room":"{room}","ref":{reference}}}"#)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROBE: Probe = Probe {
        p: 3,
        s: 7,
        t: 1_700_000_000_000_000_000,
        h: 2,
        n: 1,
    };

    #[test]
    fn switchboard_event_round_trip() {
        let publish = Protocol::Switchboard.publish("bench-1", &PROBE, "");
        let sent: serde_json::Value = serde_json::from_str(&publish).unwrap();
        let delivered = format!(
            r#"{{"op":"event","room":"bench-1","event":{{"type":"bench","data":{},"serverId":"s","timestamp":1}}}}"#,
            sent["event"]["data"]
        );
        assert_eq!(
            Protocol::Switchboard.parse_frame(&delivered),
            Inbound::Event {
                room: "bench-1",
                probe: Some(PROBE)
            }
        );
        assert_eq!(
            Protocol::Switchboard.parse_frame(r#"{"op":"subscribed","room":"a"}"#),
            Inbound::Subscribed
        );
    }

    #[test]
    fn durable_frames_parse_both_ways() {
        // The measured scenarios take a numbered event and the durable replies as
        // they take plain ones (extra fields ignored).
        let event = r#"{"op":"event","room":"dur:a-1","event":{"type":"bench","data":{"p":3,"s":7,"t":1700000000000000000,"h":2,"n":1,"x":""},"serverId":"s","timestamp":1,"offset":12,"epoch":"e1"}}"#;
        assert_eq!(
            Protocol::Switchboard.parse_frame(event),
            Inbound::Event {
                room: "dur:a-1",
                probe: Some(PROBE)
            }
        );
        let published = r#"{"op":"published","room":"dur:a-1","offset":12,"epoch":"e1"}"#;
        assert_eq!(
            Protocol::Switchboard.parse_frame(published),
            Inbound::Published
        );
        assert_eq!(
            parse_durable(event),
            DurableFrame::Event {
                room: "dur:a-1",
                offset: Some(12)
            }
        );
        assert_eq!(
            parse_durable(published),
            DurableFrame::Published {
                room: Some("dur:a-1"),
                offset: Some(12)
            }
        );
        assert_eq!(
            parse_durable(
                r#"{"op":"subscribed","room":"r","offset":5,"epoch":"e1","recovered":true}"#
            ),
            DurableFrame::Subscribed {
                offset: Some(5),
                epoch: Some("e1".into()),
                recovered: Some(true)
            }
        );
        assert_eq!(
            parse_durable(r#"{"op":"gap","room":"r","reason":"history_lost"}"#),
            DurableFrame::Gap
        );
        let since: serde_json::Value =
            serde_json::from_str(&subscribe_since("r", Some((5, "e\"1")))).unwrap();
        assert_eq!(since["since"]["offset"], 5);
        assert_eq!(since["since"]["epoch"], "e\"1");
    }

    #[test]
    fn presence_answers() {
        let request: serde_json::Value =
            serde_json::from_str(&presence_request("presence_count", "pres:a", 4)).unwrap();
        assert_eq!(request["op"], "presence_count");
        assert_eq!(request["ref"], 4);
        let member =
            r#"{"client":"c1","user":null,"info":{"members":[1,2]},"serverId":"s","joinedAt":1}"#;
        assert_eq!(
            parse_presence(&format!(
                r#"{{"op":"presence","room":"pres:a","members":[{member},{member}],"ref":3}}"#
            )),
            PresenceFrame::Members {
                reference: Some(3),
                members: 2
            }
        );
        assert_eq!(
            parse_presence(&format!(r#"{{"room":"pres:a","members":[{member}]}}"#)),
            PresenceFrame::Members {
                reference: None,
                members: 1
            }
        );
        assert_eq!(
            parse_presence(
                r#"{"op":"presence_count","room":"pres:a","clients":5,"users":0,"ref":9}"#
            ),
            PresenceFrame::Count {
                reference: Some(9),
                clients: 5,
                users: 0
            }
        );
        assert_eq!(
            parse_presence(&format!(
                r#"{{"op":"join","room":"pres:a","member":{member}}}"#
            )),
            PresenceFrame::Other
        );
        assert_eq!(
            parse_presence(r#"{"op":"error","code":"not_presence","message":"m","ref":1}"#),
            PresenceFrame::Error
        );
    }

    #[test]
    fn socketio_frames() {
        let p = Protocol::SocketIo;
        assert_eq!(p.parse_frame("2"), Inbound::Ping);
        assert_eq!(
            p.parse_frame(r#"0{"sid":"x","pingInterval":25000}"#),
            Inbound::Open
        );
        assert_eq!(
            p.parse_frame(r#"42["subscribed","r"]"#),
            Inbound::Subscribed
        );
        let publish = p.publish("r", &PROBE, "ab");
        assert!(publish.starts_with(r#"42["publish","r",{"type":"bench""#));
        let event = r#"42["event",{"room":"r","event":{"type":"bench","data":{"p":3,"s":7,"t":1700000000000000000,"h":2,"n":1,"x":""},"serverId":"a","timestamp":1}}]"#;
        assert_eq!(
            p.parse_frame(event),
            Inbound::Event {
                room: "r",
                probe: Some(PROBE)
            }
        );
    }
}
