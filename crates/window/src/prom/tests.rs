//! The text parser: samples, labels, escapes, special values, and errors with line numbers.

use super::*;

#[test]
fn reads_samples_labels_and_special_values() {
    let text = "# HELP request_total Requests.\n# TYPE request_total counter\n\
        request_total{direction=\"outbound\",dst_workload=\"pg\"} 12\n\
        response_latency_seconds_bucket{le=\"+Inf\",x=\"a\\\"b\\\\c\\nd\"} 7\n\
        \n\
        tcp_open_connections 3 1700000000\n\
        odd{ a = \"1\" , } -Inf\r\n";
    let samples = parse(text).unwrap();
    assert_eq!(samples.len(), 4);
    assert_eq!(samples[0].name, "request_total");
    assert_eq!(samples[0].label("dst_workload").as_deref(), Some("pg"));
    assert_eq!(samples[0].label("nope"), None);
    assert_eq!(samples[0].value, 12.0);
    assert_eq!(samples[0].line, 3);
    assert_eq!(samples[1].label("le").as_deref(), Some("+Inf"));
    assert_eq!(samples[1].label("x").as_deref(), Some("a\"b\\c\nd"));
    assert!(matches!(samples[1].label("le"), Some(Cow::Borrowed(_))));
    assert_eq!(samples[2].value, 3.0);
    assert_eq!(samples[2].label_text(), "");
    assert_eq!(samples[3].label("a").as_deref(), Some("1"));
    assert_eq!(samples[3].value, f64::NEG_INFINITY);
    let pairs: Vec<_> = samples[0].labels().map(|(k, v)| (k, v.raw())).collect();
    assert_eq!(pairs, [("direction", "outbound"), ("dst_workload", "pg")]);
}

#[test]
fn nan_and_exemplars_are_read() {
    let samples = parse("a NaN\nb{x=\"1\"} 2 # {trace_id=\"t\"} 1.0\nc 1 123 # {} 1\n").unwrap();
    assert!(samples[0].value.is_nan());
    assert_eq!(samples[1].value, 2.0);
    assert_eq!(samples[2].value, 1.0);
}

fn kind_of(text: &str) -> (usize, ParseErrorKind) {
    let err = parse(text).unwrap_err();
    (err.line, err.kind)
}

#[test]
fn errors_name_the_line_and_the_fault() {
    use ParseErrorKind::*;
    assert_eq!(kind_of("ok 1\nbroken{a=b} 1\n"), (2, Unquoted));
    assert_eq!(kind_of("# c\n\nx{a=\"1\"} notanumber"), (3, BadValue));
    assert_eq!(kind_of("x{a=\"1\"}"), (1, NoValue));
    assert_eq!(kind_of("x"), (1, NoValue));
    assert_eq!(kind_of("9x 1"), (1, BadName));
    assert_eq!(kind_of("x{9a=\"1\"} 1"), (1, BadLabelName));
    assert_eq!(kind_of("x{a} 1"), (1, NoEquals));
    assert_eq!(kind_of("x{a=\"1} 1"), (1, Unterminated));
    assert_eq!(kind_of("x{a=\"1\" 1"), (1, BadSeparator));
    assert_eq!(kind_of("x{a=\"1\""), (1, Unterminated));
    assert_eq!(kind_of("x{a=\"\\q\"} 1"), (1, BadEscape));
    assert_eq!(kind_of("x 1 12.5"), (1, BadTimestamp));
    assert_eq!(kind_of("x 1 12 junk"), (1, Trailing));
    assert_eq!(kind_of("x inf"), (1, BadValue));
    let err = parse("a 1\nb 2\nc{\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "metrics line 3: unterminated label value or label set"
    );
}

#[test]
fn huge_label_values_are_read_without_copying() {
    let big = "v".repeat(1 << 20);
    let text = format!("x{{a=\"{big}\"}} 1\n");
    let samples = parse(&text).unwrap();
    let value = samples[0].label("a").unwrap();
    assert!(matches!(value, Cow::Borrowed(_)));
    assert_eq!(value.len(), 1 << 20);
}

#[test]
fn lines_with_many_labels_are_walked_again() {
    let labels: Vec<String> = (0..20).map(|i| format!("k{i}=\"v{i}\"")).collect();
    let text = format!("x{{{}}} 1\n", labels.join(","));
    let samples = parse(&text).unwrap();
    let got: Vec<_> = samples[0].labels().map(|(k, v)| (k, v.raw())).collect();
    assert_eq!(got.len(), 20);
    assert_eq!(got[0], ("k0", "v0"));
    assert_eq!(got[19], ("k19", "v19"));
    assert_eq!(samples[0].label("k15").as_deref(), Some("v15"));
}
