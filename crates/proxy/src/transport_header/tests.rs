//! Round-trip and rejection tests for the transport header.

use std::time::Duration;

use super::*;

fn header(protocol: Protocol, port: u16, authority: &str) -> TransportHeader {
    TransportHeader {
        protocol,
        target_port: port,
        authority: authority.to_string(),
    }
}

#[test]
fn round_trips_every_protocol() {
    for protocol in [Protocol::H2, Protocol::Http1, Protocol::Opaque] {
        let h = header(protocol, 8080, "bank.bank.svc.cluster.local:80");
        let bytes = h.encode().unwrap();
        let (decoded, used) = TransportHeader::decode(&bytes).unwrap().unwrap();
        assert_eq!(decoded, h);
        assert_eq!(used, bytes.len());
    }
}

#[test]
fn empty_authority_round_trips() {
    let h = header(Protocol::Opaque, 1, "");
    let bytes = h.encode().unwrap();
    assert_eq!(bytes.len(), FIXED_LEN);
    assert_eq!(TransportHeader::decode(&bytes).unwrap().unwrap().0, h);
}

#[test]
fn every_strict_prefix_needs_more() {
    let bytes = header(Protocol::H2, 80, "a:80").encode().unwrap();
    for n in 0..bytes.len() {
        assert!(
            TransportHeader::decode(&bytes[..n]).unwrap().is_none(),
            "prefix {n}"
        );
    }
}

#[test]
fn refuses_bad_input() {
    assert!(matches!(
        TransportHeader::decode(b"GET / HTTP/1.1"),
        Err(HeaderError::BadMagic)
    ));
    assert!(matches!(
        TransportHeader::decode(b"OMSH\x02"),
        Err(HeaderError::UnsupportedVersion(2))
    ));
    assert!(matches!(
        TransportHeader::decode(b"OMSH\x01\x09"),
        Err(HeaderError::UnknownProtocol(9))
    ));
    assert!(matches!(
        TransportHeader::decode(b"OMSH\x01\x00\x00\x00\x00\x00"),
        Err(HeaderError::ZeroPort)
    ));
    assert!(matches!(
        TransportHeader::decode(b"OMSH\x01\x00\x00\x50\xff\xff"),
        Err(HeaderError::AuthorityTooLong(65535))
    ));
    assert!(matches!(
        TransportHeader::decode(b"OMSH\x01\x00\x00\x50\x00\x01\xff"),
        Err(HeaderError::AuthorityNotUtf8)
    ));
    let long = "a".repeat(MAX_AUTHORITY_LEN + 1);
    assert!(matches!(
        header(Protocol::H2, 80, &long).encode(),
        Err(HeaderError::EncodeTooLong(_))
    ));
}

#[tokio::test]
async fn read_leaves_following_bytes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut a, mut b) = tokio::io::duplex(4096);
    let h = header(Protocol::Http1, 9000, "web:80");
    let mut bytes = h.encode().unwrap();
    bytes.extend_from_slice(b"after");
    a.write_all(&bytes).await.unwrap();
    let got = TransportHeader::read(&mut b, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(got, h);
    let mut rest = [0u8; 5];
    b.read_exact(&mut rest).await.unwrap();
    assert_eq!(&rest, b"after");
}

#[tokio::test(start_paused = true)]
async fn read_times_out_on_a_slow_peer() {
    use tokio::io::AsyncWriteExt;
    let (mut a, mut b) = tokio::io::duplex(4096);
    a.write_all(b"OMSH\x01").await.unwrap();
    let err = TransportHeader::read(&mut b, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(err, HeaderError::Timeout(_)));
}
