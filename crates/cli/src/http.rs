//! A minimal HTTP/1.1 GET for the CLI's own calls to proxies' admin servers and to the dashboard
//! API on loopback: one connection per call, a timeout on everything.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// GETs `http://{addr}{path}` and returns the status and body as text.
pub async fn get(
    addr: &str,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<(StatusCode, String)> {
    tokio::time::timeout(timeout, get_inner(addr, path))
        .await
        .with_context(|| format!("http://{addr}{path} did not answer within {timeout:?}"))?
}

async fn get_inner(addr: &str, path: &str) -> anyhow::Result<(StatusCode, String)> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, addr)
        .body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
