//! Unit tests of the request-path check: every ambiguous spelling is refused with its reason,
//! and ordinary paths pass unchanged.

use super::*;

#[test]
fn ordinary_paths_pass_unchanged() {
    for path in [
        "/",
        "",
        "*",
        "/v1/pay",
        "/v1/pay/",
        "/.well-known/openid-configuration",
        "/files/report.v2..final.pdf",
        "/a/.b/..c/...",
        "/name%20with%20spaces",
        "/caf%C3%A9",
        "/100%25",
        "/100%25zz",
        "/v1//double",
        "/%7Euser",
    ] {
        assert_eq!(check(path).map(|p| p.as_str()), Ok(path), "{path}");
    }
}

#[test]
fn every_ambiguous_spelling_is_refused_with_its_reason() {
    use AmbiguousPath::*;
    let cases = [
        ("/v1/..%2fadmin", EncodedSeparator),
        ("/v1%2Fadmin", EncodedSeparator),
        ("/v1%5cadmin", EncodedSeparator),
        ("/v1%5C..%5Cadmin", EncodedSeparator),
        ("/v1\\..\\admin", Backslash),
        ("/v1\\admin", Backslash),
        ("/v1/..;/admin", Parameter),
        ("/v1;jsessionid=1/pay", Parameter),
        ("/v1/pay;", Parameter),
        ("/v1/%2e%2e/admin", EncodedDot),
        ("/v1/%2E%2E/admin", EncodedDot),
        ("/v1/.%2e/admin", EncodedDot),
        ("/v1/a%2eb", EncodedDot),
        ("/v1/%252e%252e/admin", DoubleEncoded),
        ("/v1/%252F", DoubleEncoded),
        ("/v1/%2500", DoubleEncoded),
        ("/v1/../admin", DotSegment),
        ("/v1/./pay", DotSegment),
        ("/v1/..", DotSegment),
        ("/v1/.", DotSegment),
        ("/..", DotSegment),
        (".", DotSegment),
        ("/v1/%00/x", BadEncoding),
        ("/v1/%c0%ae%c0%ae/admin", BadEncoding),
        ("/v1/%C1%9c", BadEncoding),
        ("/v1/%", BadEncoding),
        ("/v1/%2", BadEncoding),
        ("/v1/%zz", BadEncoding),
        ("/v1/%u002e", BadEncoding),
    ];
    for (path, reason) in cases {
        assert_eq!(check(path), Err(reason), "{path}");
    }
}

#[test]
fn reasons_tell_the_client_what_to_change() {
    let text = AmbiguousPath::Parameter.to_string();
    assert!(text.contains("';'") && text.contains("query"), "{text}");
}

/// Percent-decodes valid `%XX` sequences once (what a lenient app server does).
fn decode_once(path: &str) -> Vec<u8> {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(v) = percent(b, i + 1)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// What an accepted path must satisfy: decoding it (once, or twice) and reading `\` and `;` as a
/// lenient server would gives the same segments as the raw path, none of them a dot segment.
fn accepted_path_is_unambiguous(path: &str) {
    let raw_segments = path.split('/').count();
    let once = decode_once(path);
    let twice = decode_once(&String::from_utf8_lossy(&once));
    for decoded in [&once, &twice] {
        let segments: Vec<&[u8]> = decoded.split(|c| *c == b'/').collect();
        assert_eq!(segments.len(), raw_segments, "{path:?} gains a separator");
        for s in segments {
            assert!(s != b"." && s != b"..", "{path:?} decodes to a dot segment");
            assert!(!s.contains(&b'\\') && !s.contains(&b';'), "{path:?}");
        }
    }
}

#[test]
fn random_paths_that_pass_are_read_the_same_by_a_decoding_server() {
    let alphabet = b"/.%25fFcCeE0a;\\";
    let mut rng = fastrand::Rng::with_seed(0x0a7b_u64);
    let mut accepted = 0;
    for _ in 0..200_000 {
        let len = rng.usize(1..12);
        let path: String = (0..len)
            .map(|_| char::from(alphabet[rng.usize(..alphabet.len())]))
            .collect();
        if check(&path).is_ok() {
            accepted += 1;
            accepted_path_is_unambiguous(&path);
        }
    }
    assert!(
        accepted > 1000,
        "the alphabet exercises the accepting side too ({accepted})"
    );
}
