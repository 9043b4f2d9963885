use super::*;

/// Completes `prefix` with its Luhn check digit.
fn luhn(prefix: &str) -> String {
    let digits: Vec<u32> = prefix.chars().map(|c| c.to_digit(10).unwrap()).collect();
    let mut sum = 0;
    for (i, d) in digits.iter().rev().enumerate() {
        // the check digit will be last: the prefix's last digit is doubled
        let x = if i % 2 == 0 { d * 2 } else { *d };
        sum += if x > 9 { x - 9 } else { x };
    }
    format!("{prefix}{}", (10 - sum % 10) % 10)
}

fn valid(s: &str) -> bool {
    let d: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            let x = if i % 2 == 1 { d * 2 } else { *d };
            if x > 9 { x - 9 } else { x }
        })
        .sum();
    sum.is_multiple_of(10)
}

#[test]
fn the_helper_makes_valid_numbers() {
    assert!(valid("4111111111111111"));
    assert!(valid(&luhn("411111111111111")));
    assert_eq!(luhn("411111111111111"), "4111111111111111");
    assert!(!valid("4111111111111112"));
}

#[test]
fn known_card_numbers_are_masked_keeping_the_last_four() {
    for (input, want) in [
        ("4111111111111111", "************1111"),
        ("378282246310005", "***********0005"),
        ("5555555555554444", "************4444"),
        ("4222222222222", "*********2222"),
        ("4111 1111 1111 1111", "**** **** **** 1111"),
        ("4111-1111-1111-1111", "****-****-****-1111"),
        ("4111%201111%201111%201111", "****%20****%20****%201111"),
        ("4111+1111+1111+1111", "****+****+****+1111"),
        ("4111%2D1111%2d1111%2B1111", "****%2D****%2d****%2B1111"),
        ("/v1/pay/4111111111111111/x", "/v1/pay/************1111/x"),
        (
            "/v1/pay?card=4111-1111-1111-1111&x=1",
            "/v1/pay?card=****-****-****-1111&x=1",
        ),
        ("card4111111111111111end", "card************1111end"),
        // percent-encoded digits are digits
        ("%341%311111111111111", "************1111"),
    ] {
        assert_eq!(cards(input), want, "{input}");
    }
}

#[test]
fn thirteen_to_nineteen_digits_are_masked() {
    for len in 13..=19 {
        let number = luhn(&"4".repeat(len - 1));
        assert_eq!(number.len(), len);
        let masked = cards(&number);
        assert_eq!(
            masked,
            format!("{}{}", "*".repeat(len - 4), &number[len - 4..]),
            "{number}"
        );
    }
}

#[test]
fn too_short_or_invalid_numbers_are_left_alone() {
    for input in [
        "411111111111",         // 12 digits
        "4222222222223",        // fails Luhn (and has no shorter window)
        "4111  1111 1111 1111", // two separators in a row
        "4111.1111.1111.1111",  // not a separator
        "/orders/1234/items/5678",
        "",
        "no digits at all",
        "12:34:56 2026-12-03",
    ] {
        assert_eq!(cards(input), input, "{input}");
        assert!(matches!(cards(input), Cow::Borrowed(_)), "{input}");
    }
}

#[test]
fn a_card_inside_a_longer_run_is_masked() {
    // 20+ digits: a valid 16-digit number with digits around it
    let input = format!("99{}77", "4111111111111111");
    let out = cards(&input);
    assert!(!out.contains("41111111"), "{out}");
    assert_eq!(out.len(), input.len(), "{out}");
    // and a separator-joined one inside a longer separated run
    let input = "12 4111 1111 1111 1111 34";
    let out = cards(input);
    assert!(!out.contains("4111 1111"), "{out}");
}

#[test]
fn overlapping_and_adjacent_candidates_are_all_masked() {
    let a = "4111111111111111";
    let b = "5555555555554444";
    for input in [
        format!("{a}{b}"),
        format!("{a} {b}"),
        format!("{a}-{b}"),
        format!("{a}x{b}"),
    ] {
        let out = cards(&input);
        assert!(!out.contains("41111111"), "{out}");
        assert!(!out.contains("55555555"), "{out}");
        // at most the last four of each number stay visible
        let visible = out.chars().filter(char::is_ascii_digit).count();
        assert!(visible <= 8, "{out}");
    }
}

#[test]
fn no_valid_number_keeps_more_than_four_of_its_digits_in_any_context() {
    // forged inputs: many numbers, many separators, junk around them
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let seps = [" ", "-", "+", "%20", "%2D", ""];
    for _ in 0..2000 {
        let len = 13 + (next() % 7) as usize;
        let prefix: String = (0..len - 1)
            .map(|_| char::from(b'0' + (next() % 10) as u8))
            .collect();
        let number = luhn(&prefix);
        // split into groups of 1-6 digits with a separator each
        let mut written = String::new();
        let mut rest = number.as_str();
        let sep = seps[(next() % seps.len() as u64) as usize];
        while !rest.is_empty() {
            let take = (1 + (next() % 6) as usize).min(rest.len());
            written.push_str(&rest[..take]);
            rest = &rest[take..];
            if !rest.is_empty() {
                written.push_str(sep);
            }
        }
        let input = format!("/p/a?b=x{written}y&z=é");
        let out = cards(&input);
        let digits: String = out
            .replace(sep, "")
            .chars()
            .filter(|c| c.is_ascii_digit())
            .collect();
        assert!(digits.len() <= 4, "{input} -> {out}");
        assert!(out.ends_with("y&z=é"), "{out}");
    }
}

#[test]
fn any_bytes_are_safe() {
    let mut seed = 7u64;
    for _ in 0..2000 {
        let bytes: Vec<u8> = (0..(seed % 200))
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                // mostly digits, separators and percent signs, sometimes anything
                match (seed >> 33) % 8 {
                    0..=3 => b'0' + ((seed >> 40) % 10) as u8,
                    4 => b' ',
                    5 => b'%',
                    6 => b'-',
                    _ => (seed >> 48) as u8,
                }
            })
            .collect();
        let out = text(&bytes, 64);
        assert!(out.len() <= 64);
    }
    // a lone % at the end, %3 at the end, invalid UTF-8 around a number
    assert_eq!(cards("%"), "%");
    assert_eq!(cards("4111111111111111%3"), "************1111%3");
    let mut bytes = vec![0xff, 0xfe];
    bytes.extend_from_slice(b"4111111111111111");
    bytes.push(0xc3);
    let out = text(&bytes, 1024);
    assert!(out.contains("************1111"), "{out}");
}

#[test]
fn a_huge_path_is_masked_whole_then_truncated() {
    let mut path = "/".to_string();
    for _ in 0..5000 {
        path.push_str("4111111111111111/");
    }
    let out = text(path.as_bytes(), 2048);
    assert!(out.len() <= 2048);
    assert!(!out.contains("41111"), "{}", &out[..100]);
    // and a number cut by the limit is masked before the cut, not missed
    let path = format!("{}4111111111111111", "a".repeat(2040));
    let out = text(path.as_bytes(), 2048);
    assert!(out.ends_with("********"), "{}", &out[2030..]);
}

#[test]
fn truncation_respects_characters() {
    assert_eq!(truncate("ééé".to_string(), 3), "é");
    assert_eq!(truncate("abc".to_string(), 10), "abc");
}

#[test]
fn configured_and_always_masked_headers() {
    let m = Masker::default();
    let name = |n: &'static str| HeaderName::from_static(n);
    for n in [
        "authorization",
        "cookie",
        "x-merchant-key",
        "proxy-authorization",
        "set-cookie",
    ] {
        assert_eq!(
            m.header_value(&name(n), b"secret 4111111111111111", 256),
            MASKED,
            "{n}"
        );
    }
    assert_eq!(
        m.header_value(&name("x-card"), b"4111 1111 1111 1111", 256),
        "**** **** **** 1111"
    );
    assert_eq!(
        m.header_value(&name("content-type"), b"text/plain", 256),
        "text/plain"
    );
    let long = vec![b'a'; 1000];
    assert_eq!(m.header_value(&name("x-long"), &long, 256).len(), 256);

    let m = Masker::parse(" X-Api-Key ,").unwrap();
    assert!(m.masks(&name("x-api-key")));
    assert!(m.masks(&name("set-cookie")));
    assert!(!m.masks(&name("authorization")));
    assert!(Masker::parse("bad name").is_err());
}
