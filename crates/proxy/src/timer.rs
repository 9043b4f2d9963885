//! hyper's timer for HTTP/1 server connections, whose only use of it is the header read timeout.
//!
//! hyper arms that timeout anew for every request head: with its stock tokio timer that is a boxed
//! sleep registered in tokio's timer wheel and removed again as soon as the head arrives, on
//! every request (about 3 % of a proxy's instructions per request in bench/ profiles).
//! [`HeadTimer`] keeps one tokio sleep per connection instead. Each head's sleep only records its
//! deadline; the connection's tokio sleep stays armed at an earlier head's deadline and, when it
//! fires, is moved on to the deadline of the head being read then, if that one has not passed.
//! Deadlines only move later (each is "now + the timeout"), so a busy connection touches tokio's
//! timer wheel about once per timeout period instead of once per request. A head that takes
//! longer than the timeout still fails at its deadline.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};

/// A connection's one tokio sleep, made when a head's sleep is first polled.
type Armed = Arc<Mutex<Option<Pin<Box<tokio::time::Sleep>>>>>;

/// One connection's timer. Give each connection its own (a new `http1::Builder` each): a timer
/// shared by several connections would keep only the last one's wake-up.
#[derive(Debug, Default)]
pub(crate) struct HeadTimer {
    armed: Armed,
}

impl Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(self.now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(HeadSleep {
            armed: self.armed.clone(),
            deadline: tokio::time::Instant::from_std(deadline),
        })
    }

    /// tokio's clock (the same as the system's, except in tests with paused time).
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
}

/// A deadline, kept by its connection's tokio sleep.
struct HeadSleep {
    armed: Armed,
    deadline: tokio::time::Instant,
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if tokio::time::Instant::now() >= self.deadline {
            return Poll::Ready(());
        }
        let mut armed = self.armed.lock().unwrap_or_else(PoisonError::into_inner);
        let sleep = armed.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(self.deadline)));
        // Armed later than this deadline (only if the timeout was shortened): bring it forward.
        if sleep.deadline() > self.deadline {
            sleep.as_mut().reset(self.deadline);
        }
        if sleep.as_mut().poll(cx).is_ready() {
            // Fired at an earlier head's deadline: move it on to this one.
            sleep.as_mut().reset(self.deadline);
            return sleep.as_mut().poll(cx);
        }
        Poll::Pending
    }
}

impl Sleep for HeadSleep {}

#[cfg(test)]
mod tests;
