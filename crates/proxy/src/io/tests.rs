//! Unit tests of the I/O helpers.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::time::Duration;

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

/// A running splice, its client end, its app end and its counters.
type Spliced = (
    tokio::task::JoinHandle<Result<(u64, u64), SpliceError>>,
    tokio::io::DuplexStream,
    tokio::io::DuplexStream,
    ByteCounters,
);

/// A splice between two in-memory pipes, with the far ends handed back.
fn spliced(idle: Duration) -> Spliced {
    let (mut accepted, client) = tokio::io::duplex(1024);
    let (mut upstream, app) = tokio::io::duplex(1024);
    let counters = ByteCounters::default();
    let c = counters.clone();
    let task = tokio::spawn(async move { splice(&mut accepted, &mut upstream, &c, idle).await });
    (task, client, app, counters)
}

#[tokio::test(start_paused = true)]
async fn a_quiet_splice_is_closed_after_the_idle_timeout() {
    use tokio::io::AsyncReadExt;
    let idle = Duration::from_secs(3600);
    let (task, mut client, mut app, counters) = spliced(idle);
    client.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    app.read_exact(&mut buf).await.unwrap();
    assert_eq!(counters.read.get(), 4, "bytes are counted as they move");
    // Traffic every 40 minutes keeps it open past the first hour.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(40 * 60)).await;
        app.write_all(b"pong").await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
    }
    assert!(!task.is_finished(), "closed while bytes were moving");
    let quiet_since = tokio::time::Instant::now();
    let result = task.await.unwrap();
    assert!(
        matches!(result, Err(SpliceError::Idle(d)) if d == idle),
        "{result:?}"
    );
    let waited = quiet_since.elapsed();
    assert!(
        waited >= idle && waited < idle + Duration::from_secs(1),
        "closed after {waited:?} of quiet"
    );
    assert_eq!(counters.write.get(), 12);
    // both ends see the close
    assert_eq!(client.read(&mut buf).await.unwrap(), 0);
    assert_eq!(app.read(&mut buf).await.unwrap(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_splice_that_ends_before_the_timeout_returns_its_byte_counts() {
    use tokio::io::AsyncReadExt;
    let (task, mut client, mut app, counters) = spliced(Duration::from_secs(60));
    client.write_all(b"bye").await.unwrap();
    client.shutdown().await.unwrap();
    let mut got = Vec::new();
    app.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"bye");
    app.shutdown().await.unwrap();
    assert_eq!(task.await.unwrap().unwrap(), (3, 0));
    assert_eq!(counters.read.get(), 3);
}
