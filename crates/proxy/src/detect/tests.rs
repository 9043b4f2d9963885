//! Unit tests for protocol detection.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

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
    let (found, buf) = detect(&mut server, Duration::from_secs(1)).await;
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
    let (found, _) = detect(&mut server, Duration::from_secs(1)).await;
    assert_eq!(found, Detected::Http1);
    drop(task.await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn silent_client_times_out() {
    let (_client, mut server) = tokio::io::duplex(1024);
    let (found, buf) = detect(&mut server, Duration::from_secs(1)).await;
    assert_eq!(found, Detected::Timeout);
    assert!(buf.is_empty());
}

#[tokio::test]
async fn eof_is_opaque() {
    let (client, mut server) = tokio::io::duplex(1024);
    drop(client);
    let (found, _) = detect(&mut server, Duration::from_secs(1)).await;
    assert_eq!(found, Detected::Opaque);
}

#[tokio::test(start_paused = true)]
async fn idle_client_does_not_stall_others() {
    let (_idle, mut idle_server) = tokio::io::duplex(1024);
    let (mut busy, mut busy_server) = tokio::io::duplex(1024);
    let idle =
        tokio::spawn(async move { detect(&mut idle_server, Duration::from_secs(1)).await.0 });
    busy.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let (found, _) = detect(&mut busy_server, Duration::from_secs(1)).await;
    assert_eq!(found, Detected::Http1);
    assert!(!idle.is_finished());
    assert_eq!(idle.await.unwrap(), Detected::Timeout);
}
