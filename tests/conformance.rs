//! WebSocket conformance at the frame level (RFC 6455 §5, §7.4), over a raw TCP
//! socket: frames no client library would send. Each protocol violation must close
//! the connection with the right code: 1002 (protocol error), 1007 (text that is not
//! UTF-8) or 1009 (too big, PROTOCOL.md §2); and a frame that only *declares* a huge
//! payload must not make the server's memory grow.

mod support;

use std::time::{Duration, Instant};

use support::raw_ws::{
    encode_frame, frame_head, OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT,
};
use support::{RawFrame, RawWs, Server, ServerBuilder, REPLY_TIMEOUT};

const FIN: u8 = 0x80;
const RSV1: u8 = 0x40;
const RSV2: u8 = 0x20;
const RSV3: u8 = 0x10;
const PROTOCOL_ERROR: u16 = 1002;
const INVALID_DATA: u16 = 1007;
const TOO_BIG: u16 = 1009;
const POLICY: u16 = 1008;
/// How long the server gets to close after a violation: it should be at once.
const CLOSE_WITHIN: Duration = Duration::from_secs(3);

async fn server(test: &str) -> Server {
    ServerBuilder::new()
        .id(&format!("A-conf-{test}"))
        .spawn()
        .await
}

/// Sends `bytes` on a fresh connection and returns the close code the server answers
/// with (`None`: it ended the connection without a close frame) and how long it took.
async fn close_code_after(server: &Server, bytes: &[u8]) -> (Option<u16>, Duration) {
    let mut raw = RawWs::connect(server, None).await;
    let sent = Instant::now();
    // A write error is fine: the server may have closed already.
    let _ = raw.send_raw(bytes).await;
    let code = raw.read_until_close(CLOSE_WITHIN).await;
    (code, sent.elapsed())
}

/// Checks that each of `cases` (a name, the bytes) is closed with `expected`; every
/// outcome is printed first, so a failure shows all of them.
async fn assert_closes(server: &Server, expected: u16, cases: &[(&str, Vec<u8>)]) {
    let mut wrong = Vec::new();
    for (name, bytes) in cases {
        let (code, took) = close_code_after(server, bytes).await;
        eprintln!("conformance: {name}: close code {code:?} after {took:?} (expected {expected})");
        if code != Some(expected) {
            wrong.push(format!("{name}: {code:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "expected close {expected}, got: {}",
        wrong.join("; ")
    );
}

/// A `ping` op whose `pong` proves the session parses frames again.
const PING_OP: &str = r#"{"op":"ping","ref":"alive"}"#;

#[actix_web::test]
async fn an_unmasked_client_frame_closes_with_1002() {
    let a = server("unmasked").await;
    assert_closes(
        &a,
        PROTOCOL_ERROR,
        &[
            (
                "unmasked text",
                encode_frame(FIN | OP_TEXT, false, PING_OP.as_bytes()),
            ),
            ("unmasked ping", encode_frame(FIN | OP_PING, false, b"")),
        ],
    )
    .await;
}

#[actix_web::test]
async fn reserved_bits_close_with_1002() {
    let a = server("rsv").await;
    let text = PING_OP.as_bytes();
    assert_closes(
        &a,
        PROTOCOL_ERROR,
        &[
            (
                "RSV1 on text",
                encode_frame(FIN | RSV1 | OP_TEXT, true, text),
            ),
            (
                "RSV2 on text",
                encode_frame(FIN | RSV2 | OP_TEXT, true, text),
            ),
            (
                "RSV3 on text",
                encode_frame(FIN | RSV3 | OP_TEXT, true, text),
            ),
            (
                "RSV1 on ping",
                encode_frame(FIN | RSV1 | OP_PING, true, b""),
            ),
        ],
    )
    .await;
}

#[actix_web::test]
async fn unknown_opcodes_close_with_1002() {
    let a = server("opcode").await;
    let cases: Vec<(String, Vec<u8>)> = [0x3u8, 0x7, 0xB, 0xF]
        .iter()
        .map(|op| {
            (
                format!("opcode {op:#x}"),
                encode_frame(FIN | op, true, b"x"),
            )
        })
        .collect();
    let cases: Vec<(&str, Vec<u8>)> = cases.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    assert_closes(&a, PROTOCOL_ERROR, &cases).await;
}

#[actix_web::test]
async fn fragmented_and_oversized_control_frames_close_with_1002() {
    let a = server("control").await;
    let long = [b'p'; 126];
    assert_closes(
        &a,
        PROTOCOL_ERROR,
        &[
            ("ping without FIN", encode_frame(OP_PING, true, b"x")),
            ("pong without FIN", encode_frame(OP_PONG, true, b"x")),
            (
                "close without FIN",
                encode_frame(OP_CLOSE, true, &[0x03, 0xE8]),
            ),
            (
                "ping of 126 bytes",
                encode_frame(FIN | OP_PING, true, &long),
            ),
            (
                "pong of 126 bytes",
                encode_frame(FIN | OP_PONG, true, &long),
            ),
            ("close of 126 bytes", {
                let mut payload = vec![0x03, 0xE8];
                payload.extend_from_slice(&long[..124]);
                encode_frame(FIN | OP_CLOSE, true, &payload)
            }),
        ],
    )
    .await;
}

#[actix_web::test]
async fn continuation_frames_out_of_order_close_with_1002() {
    let a = server("continuation").await;
    let mut interleaved = encode_frame(OP_TEXT, true, b"{\"op\":");
    interleaved.extend(encode_frame(FIN | OP_TEXT, true, PING_OP.as_bytes()));
    assert_closes(
        &a,
        PROTOCOL_ERROR,
        &[
            (
                "continuation with nothing to continue",
                encode_frame(FIN | OP_CONTINUATION, true, b"x"),
            ),
            ("a new text frame inside a fragmented one", interleaved),
        ],
    )
    .await;
}

/// The positive side: a ping between the fragments of a message is answered and the
/// message still goes through (RFC 6455 §5.4: control frames may be interleaved).
#[actix_web::test]
async fn a_ping_between_fragments_is_answered_and_the_message_completes() {
    let a = server("interleaved-ping").await;
    let mut raw = RawWs::connect(&a, None).await;
    let (head, tail) = PING_OP.split_at(10);
    let mut bytes = encode_frame(OP_TEXT, true, head.as_bytes());
    bytes.extend(encode_frame(FIN | OP_PING, true, b"hi"));
    bytes.extend(encode_frame(FIN | OP_CONTINUATION, true, tail.as_bytes()));
    raw.send_raw(&bytes).await.expect("send the fragments");
    let pong = raw.read_frame(REPLY_TIMEOUT).await;
    assert!(
        matches!(&pong, RawFrame::Frame { opcode: OP_PONG, payload } if payload == b"hi"),
        "expected the pong first, got {pong:?}"
    );
    let reply = raw
        .read_json_matching(REPLY_TIMEOUT, |f| f["ref"] == "alive")
        .await;
    assert_eq!(reply["op"], "pong", "{reply}");
}

#[actix_web::test]
async fn text_that_is_not_utf8_closes_with_1007() {
    let a = server("utf8").await;
    let mut split = encode_frame(OP_TEXT, true, b"{\"op\":\"ping\",\"x\":\"\xE2\x82");
    split.extend(encode_frame(FIN | OP_CONTINUATION, true, b"\xFF\"}"));
    assert_closes(
        &a,
        INVALID_DATA,
        &[
            (
                "lone continuation byte",
                encode_frame(FIN | OP_TEXT, true, b"{\"op\":\"\x80\"}"),
            ),
            (
                "overlong encoding",
                encode_frame(FIN | OP_TEXT, true, b"\xC0\xAF"),
            ),
            (
                "UTF-16 surrogate",
                encode_frame(FIN | OP_TEXT, true, b"\xED\xA0\x80"),
            ),
            ("bad sequence across fragments", split),
        ],
    )
    .await;
}

/// A code the client may not send (RFC 6455 §7.4.1, §7.4.2): reserved, never on the
/// wire (1005, 1006, 1015) or out of range; and close payloads that are malformed.
/// (actix-http 3.20's codec refuses these before the session sees them.)
#[actix_web::test]
async fn a_close_with_a_code_a_client_may_not_send_closes_with_1002() {
    let a = server("bad-close").await;
    let cases: Vec<(String, Vec<u8>)> = [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000]
        .iter()
        .map(|code| {
            let frame = encode_frame(FIN | OP_CLOSE, true, &code.to_be_bytes());
            (format!("close {code}"), frame)
        })
        .chain([(
            "close with a 1-byte payload".to_owned(),
            encode_frame(FIN | OP_CLOSE, true, &[0x03]),
        )])
        .collect();
    let cases: Vec<(&str, Vec<u8>)> = cases.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    assert_closes(&a, PROTOCOL_ERROR, &cases).await;
}

/// A close whose reason is not UTF-8 fails the connection (RFC 6455 §8.1). Which code
/// is not pinned down: Autobahn (case 7.5.1) accepts 1002 or 1007; actix-http refuses
/// the payload as a protocol error, so the server answers 1002.
#[actix_web::test]
async fn a_close_whose_reason_is_not_utf8_closes_with_1002_or_1007() {
    let a = server("close-reason").await;
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"bye \xFF");
    let frame = encode_frame(FIN | OP_CLOSE, true, &payload);
    let (code, took) = close_code_after(&a, &frame).await;
    eprintln!("conformance: close 1000 with a reason that is not UTF-8: {code:?} after {took:?}");
    assert!(
        matches!(code, Some(PROTOCOL_ERROR | INVALID_DATA)),
        "answered {code:?}"
    );
}

/// Valid closes are answered with a close (the same code, or 1000 for none).
#[actix_web::test]
async fn a_valid_close_is_answered_with_a_close() {
    let a = server("good-close").await;
    for (code, expected) in [
        (Some(1000u16), 1000u16),
        (Some(1001), 1001),
        (Some(3000), 3000),
        (Some(4999), 4999),
        (None, 1000),
    ] {
        let payload = code
            .map(u16::to_be_bytes)
            .map(Vec::from)
            .unwrap_or_default();
        let (answer, took) =
            close_code_after(&a, &encode_frame(FIN | OP_CLOSE, true, &payload)).await;
        eprintln!("conformance: close {code:?}: answered {answer:?} after {took:?}");
        assert_eq!(answer, Some(expected), "close {code:?}");
    }
}

/// The declared length is read from the header (src/inbound.rs): a frame declaring
/// 1 GiB is refused with 1009 right after its header, whatever trickles in after it,
/// and nothing of it is buffered.
#[actix_web::test]
async fn a_frame_declaring_one_gib_closes_with_1009_after_its_header_and_memory_stays_flat() {
    let a = server("gib").await;
    let mut cases = Vec::new();
    cases.push(("text frame", frame_head(FIN | OP_TEXT, true, 1 << 30)));
    let mut fragmented = encode_frame(OP_TEXT, true, b"{\"op\":");
    fragmented.extend(frame_head(FIN | OP_CONTINUATION, true, 1 << 30));
    cases.push(("continuation frame", fragmented));
    cases.push(("binary frame", frame_head(FIN | OP_BINARY, true, 1 << 30)));
    let mut results = Vec::new();
    for (name, head) in cases {
        results.push((name, declare_and_trickle(&a, &head).await));
    }
    for (name, (code, took, rss_before, rss_after)) in &results {
        eprintln!(
            "conformance: 1 GiB {name}: close {code:?} after {took:?}; RSS {rss_before} -> \
             {rss_after} KiB"
        );
    }
    for (name, (code, took, rss_before, rss_after)) in results {
        assert_eq!(code, Some(TOO_BIG), "1 GiB {name}");
        assert!(
            took < Duration::from_secs(1),
            "1 GiB {name}: closed after {took:?}"
        );
        assert!(
            rss_after < rss_before + 8 * 1024,
            "1 GiB {name}: RSS {rss_before} -> {rss_after} KiB"
        );
    }
}

/// A connection the server failed reads nothing more (PROTOCOL.md §2): a client that
/// fails its connection and then writes as fast as it can gets its close frame, the
/// end of the stream, a reset within a second, and is stopped by full TCP buffers,
/// not read and discarded at line rate. For 1009 (a 1 GiB header), 1002 (an unmasked
/// frame), 1007 (text that is not UTF-8) and 1008 (a first frame that is not `auth`),
/// with a client that reads meanwhile and one that does not.
#[actix_web::test]
async fn a_failed_connection_reads_nothing_more_and_ends_within_a_second() {
    let open = server("fail-stops-reading").await;
    let secured = ServerBuilder::new()
        .id("A-conf-fail-auth")
        .env("AUTH_JWT_SECRET", "conformance-secret")
        .spawn()
        .await;
    let cases = [
        (
            &open,
            TOO_BIG,
            "1 GiB text frame",
            frame_head(FIN | OP_TEXT, true, 1 << 30),
        ),
        (
            &open,
            PROTOCOL_ERROR,
            "unmasked frame",
            encode_frame(FIN | OP_TEXT, false, b"{}"),
        ),
        (
            &open,
            INVALID_DATA,
            "text that is not UTF-8",
            encode_frame(FIN | OP_TEXT, true, &[0xff, 0xfe]),
        ),
        (
            &secured,
            POLICY,
            "a first frame that is not auth",
            encode_frame(FIN | OP_TEXT, true, PING_OP.as_bytes()),
        ),
    ];
    for (server, expected, name, head) in cases {
        for reading in [true, false] {
            let what = format!(
                "{name}, client {}",
                if reading { "reading" } else { "not reading" }
            );
            let mut raw = RawWs::connect(server, None).await;
            let sent = Instant::now();
            raw.send_raw(&head).await.expect("send the first frame");
            let flood = raw
                .flood(&[b'a'; 256 * 1024], reading, Duration::from_secs(10))
                .await;
            let gone = sent.elapsed();
            // What the server sent is still in this client's buffer after the reset.
            let code = match flood.close {
                Some((code, _)) => Some(code),
                None => raw.read_until_close(REPLY_TIMEOUT).await,
            };
            eprintln!(
                "conformance: {what}: {flood:?}; close {code:?}; reset {gone:?} after the frame"
            );
            assert_eq!(code, Some(expected), "{what}");
            assert!(
                flood.write_failed.is_some(),
                "{what}: the connection stayed open"
            );
            assert!(
                gone < Duration::from_secs(1),
                "{what}: reset {gone:?} after the frame"
            );
            assert!(
                flood.written < MOST_TAKEN,
                "{what}: the server took {} bytes after failing the connection",
                flood.written
            );
        }
    }
    let mut alive = RawWs::connect(&open, None).await;
    alive.send_text(PING_OP).await;
    assert!(
        alive.read_frame(REPLY_TIMEOUT).await.json().is_some(),
        "the server serves on"
    );
}

/// Loopback's socket buffers on both sides hold a few MiB at most; a server that goes
/// on reading takes gigabytes in a second.
const MOST_TAKEN: u64 = 32 << 20;

/// Sends `head`, then up to 16 MiB of payload in 256 KiB pieces while watching for
/// the close; returns the close code, the time from the header to it, and RSS around.
async fn declare_and_trickle(server: &Server, head: &[u8]) -> (Option<u16>, Duration, u64, u64) {
    const PIECE: usize = 256 * 1024;
    const MOST: usize = 16 << 20;
    let rss_before = server.rss_kib();
    let mut raw = RawWs::connect(server, None).await;
    raw.send_raw(head).await.expect("send the header");
    let sent = Instant::now();
    let piece = vec![b'a'; PIECE];
    let mut trickled = 0;
    let code = loop {
        match raw.try_read_frame(Duration::from_millis(10)).await {
            Some(RawFrame::Eof) => break None,
            Some(
                frame @ RawFrame::Frame {
                    opcode: OP_CLOSE, ..
                },
            ) => break frame.close_code(),
            Some(RawFrame::Frame { .. }) | None => {}
        }
        // A write the server does not take (it stopped reading) must not hang the test.
        let write = tokio::time::timeout(Duration::from_millis(50), raw.send_raw(&piece));
        if trickled < MOST && matches!(write.await, Ok(Ok(()))) {
            trickled += PIECE;
        }
        assert!(
            sent.elapsed() < CLOSE_WITHIN,
            "not closed after {trickled} bytes"
        );
    };
    let took = sent.elapsed();
    (code, took, rss_before, server.rss_kib())
}
