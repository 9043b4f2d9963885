//! Unit tests of the I/O helpers.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::*;

/// Records each write it gets.
#[derive(Default)]
struct Recorder {
    writes: Vec<Vec<u8>>,
}

impl AsyncWrite for Recorder {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.writes.push(buf.to_vec());
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn writes_between_flushes_go_out_together_and_no_buffer_stays() {
    let mut w = CoalescedWrites::new(Recorder::default());
    w.write_all(b"one ").await.unwrap();
    let n = w
        .write_vectored(&[io::IoSlice::new(b"two "), io::IoSlice::new(b"three")])
        .await
        .unwrap();
    assert_eq!(n, 9, "both slices taken whole");
    assert!(
        w.get_ref().writes.is_empty(),
        "nothing written before the flush"
    );
    w.flush().await.unwrap();
    assert_eq!(w.get_ref().writes, vec![b"one two three".to_vec()]);
    assert_eq!(
        w.buf.capacity(),
        0,
        "the buffer is released after the flush"
    );
}

#[tokio::test]
async fn a_full_buffer_is_written_out_and_large_writes_pass_straight_through() {
    let mut w = CoalescedWrites::new(Recorder::default());
    let chunk = vec![b'a'; TLS_WRITE_BUFFER / 2 + 1];
    w.write_all(&chunk).await.unwrap();
    w.write_all(&chunk).await.unwrap(); // would overflow: the first goes out first
    assert_eq!(w.get_ref().writes.len(), 1);
    let big = vec![b'b'; TLS_WRITE_BUFFER];
    w.write_all(&big).await.unwrap(); // the second chunk goes out, then the big one as is
    assert_eq!(w.get_ref().writes.len(), 3);
    assert_eq!(w.get_ref().writes[2], big);
    w.shutdown().await.unwrap();
    let total: usize = w.get_ref().writes.iter().map(Vec::len).sum();
    assert_eq!(total, 2 * chunk.len() + big.len());
}
