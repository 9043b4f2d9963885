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
