//! When to renew a leaf: at 70 % of its life, jittered uniformly over 65..75 % so that a fleet
//! of proxies issued at the same moment does not renew in the same second.

use std::time::{Duration, SystemTime};

use crate::Issued;

/// Earliest point of the renewal window, as a fraction of the leaf's life.
const RENEW_FROM: f64 = 0.65;
/// Latest point of the renewal window.
const RENEW_TO: f64 = 0.75;

/// How long from `now` until `issued` should be renewed: a uniformly random point in 65..75 %
/// of its life; `Duration::ZERO` if that point is already past.
pub fn renewal_delay(issued: &Issued, now: SystemTime) -> Duration {
    let fraction = RENEW_FROM + (RENEW_TO - RENEW_FROM) * fastrand::f64();
    renewal_delay_at(issued, now, fraction)
}

/// `renewal_delay` with a fixed fraction of the leaf's life.
pub(crate) fn renewal_delay_at(issued: &Issued, now: SystemTime, fraction: f64) -> Duration {
    let life = issued.lifetime();
    let at = issued.not_before + life.mul_f64(fraction.clamp(0.0, 1.0));
    at.duration_since(now).unwrap_or(Duration::ZERO)
}
