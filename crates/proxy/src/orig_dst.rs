//! The original destination of a connection redirected by iptables (`SO_ORIGINAL_DST`).
//!
//! A direct connection (no NAT) has no original destination: the getsockopt fails (or, with
//! conntrack loaded, returns the listener's own address); both mean "not redirected", and the
//! caller falls back to Host-based routing.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use tokio::net::TcpStream;

/// The original destination, if the connection was redirected to us.
pub fn original_dst(tcp: &TcpStream) -> Option<SocketAddr> {
    let addr = nix::sys::socket::getsockopt(tcp, nix::sys::socket::sockopt::OriginalDst).ok()?;
    let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
    let port = u16::from_be(addr.sin_port);
    let dst = SocketAddr::V4(SocketAddrV4::new(ip, port));
    match tcp.local_addr() {
        Ok(local) if local == dst => None,
        _ if port == 0 => None,
        _ => Some(dst),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn direct_connection_has_no_original_destination() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move { TcpStream::connect(addr).await.unwrap() });
        let (server, _) = listener.accept().await.unwrap();
        assert_eq!(original_dst(&server), None);
        drop(client.await.unwrap());
    }
}
