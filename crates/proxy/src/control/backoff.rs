//! Jittered exponential backoff for reopening control-plane streams: [`super::MIN_BACKOFF`]
//! doubling up to [`super::MAX_BACKOFF`], each delay drawn from 80–100 % of the current step so
//! that proxies cut off together do not all come back in the same instant.

use std::time::Duration;

use super::{MAX_BACKOFF, MIN_BACKOFF};

/// The delays between attempts of one stream.
#[derive(Clone, Debug)]
pub struct Backoff {
    step: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Backoff {
    /// Starts at [`MIN_BACKOFF`].
    pub fn new() -> Self {
        Backoff { step: MIN_BACKOFF }
    }

    /// Back to [`MIN_BACKOFF`] (after a stream delivered something).
    pub fn reset(&mut self) {
        self.step = MIN_BACKOFF;
    }

    /// The next delay, between 80 % and 100 % of the current step (never above [`MAX_BACKOFF`]);
    /// the step then doubles.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (step * 2).min(MAX_BACKOFF);
        let fifth = (step / 5).as_millis() as u64;
        step - Duration::from_millis(fastrand::u64(0..=fifth))
    }
}
