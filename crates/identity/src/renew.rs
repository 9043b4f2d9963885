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
    let Some(at) = issued
        .not_before
        .checked_add(life.mul_f64(fraction.clamp(0.0, 1.0)))
    else {
        return Duration::ZERO;
    };
    at.duration_since(now).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Issued, SpiffeId};

    fn issued(not_before: SystemTime, life: Duration) -> Issued {
        Issued {
            id: SpiffeId::new("cluster.local", "a", "b").unwrap(),
            chain: Vec::new(),
            not_before,
            not_after: not_before + life,
        }
    }

    #[test]
    fn delay_is_within_65_to_75_percent_of_life_and_jittered() {
        let now = SystemTime::now();
        let leaf = issued(now, Duration::from_secs(1000));
        let delays: Vec<Duration> = (0..500).map(|_| renewal_delay(&leaf, now)).collect();
        for d in &delays {
            assert!(
                *d >= Duration::from_secs(650) && *d <= Duration::from_secs(750),
                "{d:?}"
            );
        }
        let min = delays.iter().min().unwrap();
        let max = delays.iter().max().unwrap();
        // 500 uniform draws over 100 s spread over most of the window.
        assert!(*max - *min > Duration::from_secs(50), "{min:?}..{max:?}");
        let mean = delays.iter().sum::<Duration>() / 500;
        assert!(
            mean > Duration::from_secs(680) && mean < Duration::from_secs(720),
            "{mean:?}"
        );
    }

    #[test]
    fn delay_is_measured_from_now() {
        let start = SystemTime::now();
        let leaf = issued(start, Duration::from_secs(1000));
        let later = start + Duration::from_secs(600);
        assert_eq!(
            renewal_delay_at(&leaf, later, 0.7),
            Duration::from_secs(100)
        );
        let d = renewal_delay(&leaf, later);
        assert!(
            d >= Duration::from_secs(50) && d <= Duration::from_secs(150),
            "{d:?}"
        );
    }

    #[test]
    fn delay_is_zero_when_past() {
        let start = SystemTime::now();
        let leaf = issued(start, Duration::from_secs(1000));
        assert_eq!(
            renewal_delay(&leaf, start + Duration::from_secs(751)),
            Duration::ZERO
        );
        assert_eq!(
            renewal_delay(&leaf, start + Duration::from_secs(5000)),
            Duration::ZERO
        );
    }

    #[test]
    fn default_leaf_renews_after_about_17_hours() {
        let start = SystemTime::now();
        let leaf = issued(start, crate::DEFAULT_LEAF_LIFETIME);
        assert_eq!(
            renewal_delay_at(&leaf, start, 0.7),
            Duration::from_secs(60_480)
        );
    }
}
