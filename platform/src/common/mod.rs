//! What the five services share: the SQLite handle and migrations (`db`), idempotent request
//! replay (`idem`), the upstream HTTP client (`client`), JSON errors and extractors (`api`),
//! logging and serving (`serve`), and small helpers for ids, time and hashing.
//!
//! Nothing here knows about payments; each service module owns its own tables and rules.

pub mod api;
pub mod client;
pub mod db;
pub mod idem;
pub mod serve;
#[cfg(test)]
pub mod testing;

use sha2::{Digest, Sha256};

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A fresh random id such as `ord_3f9a0c1d2e4b5a69`.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{:016x}", fastrand::u64(..))
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hash of a request body as it is serialised (field order is the struct's, so it is stable).
pub fn request_hash<T: serde::Serialize>(value: &T) -> String {
    sha256_hex(&serde_json::to_vec(value).unwrap_or_default())
}

/// The idempotency key a service sends upstream for `step` of payment `id`, e.g.
/// `card:pay_3f9a…:debit`. Deterministic, so every retry sends the same key; an id that is not
/// short printable ASCII (it came from a caller) is replaced by its hash so the key is always a
/// valid header value.
pub fn derive_key(service: &str, id: &str, step: &str) -> String {
    if !id.is_empty() && id.len() <= 100 && id.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
        format!("{service}:{id}:{step}")
    } else {
        format!("{service}:h{}:{step}", &sha256_hex(id.as_bytes())[..32])
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (month 1..=12, day 1..=31).
pub fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The UTC date `YYYY-MM-DD` of a Unix time in milliseconds.
pub fn date_of_ms(ms: i64) -> String {
    let z = ms.div_euclid(86_400_000) + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Parses `YYYY-MM-DD` into the `[start, end)` range of Unix milliseconds of that UTC day.
pub fn day_range_ms(date: &str) -> Option<(i64, i64)> {
    let mut parts = date.split('-');
    let year: i64 = parts.next()?.parse().ok()?;
    let month: i64 = parts.next()?.parse().ok()?;
    let day: i64 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let start = days_from_civil(year, month, day) * 86_400_000;
    Some((start, start + 86_400_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        assert_eq!(date_of_ms(0), "1970-01-01");
        let (start, end) = day_range_ms("2026-11-25").unwrap();
        assert_eq!(date_of_ms(start), "2026-11-25");
        assert_eq!(date_of_ms(end - 1), "2026-11-25");
        assert_eq!(date_of_ms(end), "2026-11-26");
        assert_eq!(
            date_of_ms(days_from_civil(2024, 2, 29) * 86_400_000),
            "2024-02-29"
        );
        assert!(day_range_ms("2026-13-01").is_none());
        assert!(day_range_ms("nope").is_none());
    }

    #[test]
    fn derived_keys_are_stable_header_values() {
        assert_eq!(derive_key("card", "pay_1", "debit"), "card:pay_1:debit");
        let odd = derive_key("card", "\u{c}\u{1a} x", "debit");
        assert_eq!(odd, derive_key("card", "\u{c}\u{1a} x", "debit"));
        assert!(odd.bytes().all(|b| b.is_ascii_graphic()), "{odd}");
        assert_ne!(odd, derive_key("card", "\u{c}\u{1a} y", "debit"));
        assert_ne!(derive_key("a", "b:c", "d"), derive_key("a:b", "c", "d"));
    }

    #[test]
    fn request_hash_is_stable_and_sensitive() {
        let a = request_hash(&serde_json::json!({"a": 1}));
        assert_eq!(a, request_hash(&serde_json::json!({"a": 1})));
        assert_ne!(a, request_hash(&serde_json::json!({"a": 2})));
    }
}
