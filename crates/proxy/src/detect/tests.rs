//! Unit tests for protocol detection.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncWriteExt, ReadBuf};

use super::*;

#[test]
fn classifies_http1_request_lines() {
    assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Detected::Http1));
    assert_eq!(
        classify(b"POST http://bank.bank/x?y=1 HTTP/1.0\r\nHost: a\r\n\r\n"),
        Some(Detected::Http1)
    );
    assert_eq!(classify(b"GET / HTTP/1.1\n"), Some(Detected::Http1));
}

#[test]
fn partial_input_needs_more() {
    assert_eq!(classify(b""), None);
    assert_eq!(classify(b"GE"), None);
    assert_eq!(classify(b"GET /index"), None);
    assert_eq!(classify(b"PRI * HTTP/2"), None);
}

#[test]
fn classifies_h2_preface() {
    assert_eq!(classify(H2_PREFACE), Some(Detected::Http2));
    let mut more = H2_PREFACE.to_vec();
    more.extend_from_slice(&[0, 0, 0, 4]);
    assert_eq!(classify(&more), Some(Detected::Http2));
}

#[test]
fn classifies_other_bytes_as_opaque() {
    assert_eq!(classify(b"\x16\x03\x01\x02\x00"), Some(Detected::Opaque));
    assert_eq!(classify(b"SSH-2.0-OpenSSH\r\n"), Some(Detected::Opaque));
    assert_eq!(classify(b"GET / HTTP/2.0\r\n"), Some(Detected::Opaque));
    assert_eq!(classify(b"GET /a b HTTP/1.1\r\n"), Some(Detected::Opaque));
    assert_eq!(classify(b"GET \x00\x01"), Some(Detected::Opaque));
    assert_eq!(classify(b" GET / HTTP/1.1\r\n"), Some(Detected::Opaque));
}

#[test]
fn overlong_line_is_opaque() {
    let mut line = b"GET /".to_vec();
    line.resize(MAX_DETECT_BYTES + 10, b'a');
    assert_eq!(classify(&line), Some(Detected::Opaque));
}

#[tokio::test]
async fn detect_replays_what_it_read() {
    let (mut client, mut server) = tokio::io::duplex(64 * 1024);
    client
        .write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let (found, buf) = detect(&mut server, Duration::from_secs(1), Duration::from_secs(1)).await;
    assert_eq!(found, Detected::Http1);
    assert!(buf.starts_with(b"GET /x HTTP/1.1\r\n"));
}

#[tokio::test]
async fn split_request_line_is_still_http1() {
    let (mut client, mut server) = tokio::io::duplex(64 * 1024);
    let task = tokio::spawn(async move {
        client.write_all(b"GE").await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        client.write_all(b"T / HTTP/1.1\r\n").await.unwrap();
        client
    });
    let (found, _) = detect(&mut server, Duration::from_secs(1), Duration::from_secs(1)).await;
    assert_eq!(found, Detected::Http1);
    drop(task.await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn silent_client_times_out() {
    let (_client, mut server) = tokio::io::duplex(1024);
    let (found, buf) = detect(&mut server, Duration::from_secs(1), Duration::from_secs(1)).await;
    assert_eq!(found, Detected::Timeout);
    assert!(buf.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_client_silent_past_the_first_byte_window_is_server_speaks_first() {
    let (_client, mut server) = tokio::io::duplex(1024);
    let start = tokio::time::Instant::now();
    let (found, _) = detect(
        &mut server,
        Duration::from_millis(200),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(found, Detected::Timeout);
    assert_eq!(start.elapsed(), Duration::from_millis(200));
}

#[tokio::test(start_paused = true)]
async fn a_slow_head_after_a_quick_first_byte_gets_the_whole_timeout() {
    let (mut client, mut server) = tokio::io::duplex(1024);
    let task = tokio::spawn(async move {
        client.write_all(b"GE").await.unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
        client.write_all(b"T / HTTP/1.1\r\n").await.unwrap();
        client
    });
    let (found, _) = detect(
        &mut server,
        Duration::from_millis(200),
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(found, Detected::Http1);
    drop(task.await.unwrap());
}

#[tokio::test]
async fn eof_is_opaque() {
    let (client, mut server) = tokio::io::duplex(1024);
    drop(client);
    let (found, _) = detect(&mut server, Duration::from_secs(1), Duration::from_secs(1)).await;
    assert_eq!(found, Detected::Opaque);
}

#[tokio::test(start_paused = true)]
async fn idle_client_does_not_stall_others() {
    let (_idle, mut idle_server) = tokio::io::duplex(1024);
    let (mut busy, mut busy_server) = tokio::io::duplex(1024);
    let idle = tokio::spawn(async move {
        detect(
            &mut idle_server,
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
        .await
        .0
    });
    busy.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let (found, _) = detect(
        &mut busy_server,
        Duration::from_secs(1),
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(found, Detected::Http1);
    assert!(!idle.is_finished());
    assert_eq!(idle.await.unwrap(), Detected::Timeout);
}

/// A peer whose bytes arrive in the given pieces, one per read, then EOF: how TCP may split them.
struct Pieces(VecDeque<Vec<u8>>);

impl Pieces {
    fn new<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Self {
        Pieces(pieces.into_iter().map(<[u8]>::to_vec).collect())
    }
}

impl AsyncRead for Pieces {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(mut piece) = self.0.pop_front() {
            let n = piece.len().min(buf.remaining());
            buf.put_slice(&piece[..n]);
            if n < piece.len() {
                self.0.push_front(piece.split_off(n));
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Inputs and their verdict; the first is the one the `detect` fuzz target found (a control byte
/// in the request target was seen on a partial line but not on a whole one).
fn split_cases() -> Vec<(Vec<u8>, Detected)> {
    let mut long_target = b"GET /".to_vec();
    long_target.resize(MAX_DETECT_BYTES + 100, b'a');
    long_target.extend_from_slice(b" HTTP/1.1\r\n\r\n");
    let mut h2 = H2_PREFACE.to_vec();
    h2.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    vec![
        (b"9! \x00\r HTTP/1.0\n\r\n".to_vec(), Detected::Opaque),
        (b"GET \x01 HTTP/1.1\r\n\r\n".to_vec(), Detected::Opaque),
        (b"GET /a\rb HTTP/1.1\r\n\r\n".to_vec(), Detected::Opaque),
        (b"GET /a HTTP/1.1\r\r\n\r\n".to_vec(), Detected::Opaque),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
            Detected::Http1,
        ),
        (b"POST /pay HTTP/1.0\n\n".to_vec(), Detected::Http1),
        (b"PRI * HTTP/1.1\r\n\r\n".to_vec(), Detected::Http1),
        (
            b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n".to_vec(),
            Detected::Opaque,
        ),
        (h2, Detected::Http2),
        (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
            Detected::Opaque,
        ),
        (b"SSH-2.0-OpenSSH_9.2\r\n".to_vec(), Detected::Opaque),
        (long_target, Detected::Opaque),
    ]
}

#[test]
fn no_prefix_contradicts_the_whole() {
    for (input, want) in split_cases() {
        assert_eq!(classify(&input), Some(want), "{}", input.escape_ascii());
        for end in 0..input.len() {
            if let Some(early) = classify(&input[..end]) {
                assert_eq!(
                    early,
                    want,
                    "prefix of {end} bytes of {}",
                    input.escape_ascii()
                );
            }
        }
    }
}

#[tokio::test]
async fn verdict_is_the_same_however_the_bytes_are_split() {
    let timeout = Duration::from_secs(5);
    for (input, want) in split_cases() {
        let shown = input.escape_ascii().to_string();
        let (found, _) = detect(&mut Pieces::new([&input[..]]), timeout, timeout).await;
        assert_eq!(found, want, "in one piece: {shown}");
        let (found, _) = detect(&mut Pieces::new(input.chunks(1)), timeout, timeout).await;
        assert_eq!(found, want, "byte by byte: {shown}");
        // Every two-piece split (up to the first bytes of the long input: the rest is past
        // what detection reads).
        for at in 1..input.len().min(MAX_DETECT_BYTES + 2) {
            let (head, tail) = input.split_at(at);
            let (found, buf) = detect(&mut Pieces::new([head, tail]), timeout, timeout).await;
            assert_eq!(found, want, "split at {at}: {shown}");
            assert!(input.starts_with(&buf), "replayed bytes are what was read");
        }
    }
}
