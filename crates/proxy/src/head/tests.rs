//! Unit tests for the first-request head check.

use super::*;

#[test]
fn complete_heads() {
    let h = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody";
    assert_eq!(check(h, 8192), Head::Complete(h.len() - 4));
}

#[test]
fn partial_heads() {
    assert_eq!(check(b"GET / HTTP/1.1\r\nHost: a\r\n", 8192), Head::Partial);
    assert_eq!(check(b"GE", 8192), Head::Partial);
}

#[test]
fn oversized_heads() {
    let mut h = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
    h.extend(std::iter::repeat_n(b'a', 9000));
    assert_eq!(check(&h, 8192), Head::TooLarge);
    h.extend_from_slice(b"\r\n\r\n");
    assert_eq!(check(&h, 8192), Head::TooLarge);
    let mut many = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..200 {
        many.extend_from_slice(format!("h{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(check(&many, 1 << 20), Head::TooLarge);
}

#[test]
fn malformed_heads() {
    assert_eq!(
        check(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", 8192),
        Head::Malformed
    );
    assert_eq!(check(b"\x00\x01\x02\r\n\r\n", 8192), Head::Malformed);
    assert_eq!(
        check(
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            8192
        ),
        Head::Malformed
    );
    assert_eq!(
        check(
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            8192
        ),
        Head::Malformed
    );
    assert_eq!(
        check(b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n", 8192),
        Head::Malformed
    );
}

#[tokio::test(start_paused = true)]
async fn slow_head_times_out() {
    let (mut client, mut server) = tokio::io::duplex(1024);
    use tokio::io::AsyncWriteExt;
    client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let mut buf = BytesMut::new();
    let r = read_first(&mut server, &mut buf, Duration::from_secs(1), 8192).await;
    assert_eq!(r, Err(Refusal::Timeout));
}
