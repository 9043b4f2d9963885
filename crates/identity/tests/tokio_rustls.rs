//! The same configs over tokio-rustls on an in-memory duplex pipe: errors arrive as
//! `io::Error`s and `HandshakeFailure::from_io` must see through them.

mod common;

use std::time::Duration;

use common::*;
use onemesh_identity::{HandshakeFailure, bootstrap_client_config, peer_id};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;
use tokio_rustls::{TlsAcceptor, TlsConnector};

const LIMIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn mtls_over_tokio_rustls_carries_data_and_ids() {
    let pki = Pki::new("cluster.local");
    let client = pki.store("order", "web", pki.anchor.bundle());
    let server = pki.store("pg", "api", pki.anchor.bundle());
    let (c_io, s_io) = tokio::io::duplex(64 * 1024);
    let acceptor = TlsAcceptor::from(server.server_config(&[b"h2"]));
    let connector = TlsConnector::from(client.client_config(server.id(), &[b"h2"]));
    let server_task = tokio::spawn(async move {
        let mut tls = acceptor.accept(s_io).await.unwrap();
        let seen = peer_id(tls.get_ref().1);
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.unwrap();
        tls.write_all(&buf).await.unwrap();
        tls.flush().await.unwrap();
        seen
    });
    let mut tls = timeout(
        LIMIT,
        connector.connect(server.id().tls_server_name(), c_io),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(peer_id(tls.get_ref().1).as_ref(), Some(server.id()));
    tls.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    timeout(LIMIT, tls.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"ping");
    let seen = timeout(LIMIT, server_task).await.unwrap().unwrap();
    assert_eq!(seen.as_ref(), Some(client.id()));
}

#[tokio::test]
async fn refusals_are_classified_from_io_errors_on_both_sides() {
    let pki = Pki::new("cluster.local");
    let server = pki.store("pg", "api", pki.anchor.bundle());
    let (c_io, s_io) = tokio::io::duplex(64 * 1024);
    let acceptor = TlsAcceptor::from(server.server_config(&[]));
    // A client with no certificate (it still checks the server).
    let connector = TlsConnector::from(bootstrap_client_config(
        &pki.anchor.bundle(),
        server.id(),
        &[],
    ));
    let server_task = tokio::spawn(async move {
        match acceptor.accept(s_io).await {
            Ok(_) => panic!("the server accepted a client without a certificate"),
            Err(err) => HandshakeFailure::from_io(&err),
        }
    });
    // TLS 1.3: the client finishes its side before the server has judged its certificate, so
    // the refusal shows up as an alert on the first read.
    let client_result = async {
        let mut tls = connector
            .connect(server.id().tls_server_name(), c_io)
            .await?;
        let mut buf = [0u8; 1];
        tls.read_exact(&mut buf).await?;
        Ok::<_, std::io::Error>(())
    };
    let client_err = timeout(LIMIT, client_result).await.unwrap().unwrap_err();
    assert_eq!(
        HandshakeFailure::from_io(&client_err),
        HandshakeFailure::AlertReceived
    );
    let server_failure = timeout(LIMIT, server_task).await.unwrap().unwrap();
    assert_eq!(server_failure, HandshakeFailure::NoClientCert);
}

#[tokio::test]
async fn a_peer_that_hangs_up_is_an_io_failure() {
    let pki = Pki::new("cluster.local");
    let server = pki.store("pg", "api", pki.anchor.bundle());
    let (c_io, s_io) = tokio::io::duplex(1024);
    drop(c_io);
    let acceptor = TlsAcceptor::from(server.server_config(&[]));
    let err = timeout(LIMIT, acceptor.accept(s_io))
        .await
        .unwrap()
        .err()
        .unwrap();
    assert_eq!(HandshakeFailure::from_io(&err), HandshakeFailure::Io);
}
