//! A reader for the Prometheus text exposition format (0.0.4), enough for the proxies' own
//! `/metrics`: sample lines `name{label="value",...} value [timestamp]`; `# HELP`/`# TYPE`
//! lines, blank lines and a trailing OpenMetrics exemplar (`# {...} v`) are skipped.
//!
//! It runs for every proxy at every scrape, so it does not allocate: a [`Sample`] borrows its name
//! and its label body from the text, labels are walked on demand ([`Sample::labels`]) and a label
//! value is unescaped only when asked for and only if it holds an escape. Every line is checked
//! completely when it is read (names, quoting, escapes, separators, value, timestamp), so walking
//! the labels of a sample that was returned cannot fail. A caller that wants only some metrics
//! looks at [`Sample::name`] first and never walks the labels of the others.

use std::borrow::Cow;

/// One sample line, borrowed from the text.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample<'a> {
    /// The metric name (for histograms with its `_bucket`/`_sum`/`_count` suffix).
    pub name: &'a str,
    /// The label body between the braces, as written (already checked).
    body: &'a str,
    /// The value (may be NaN or ±Inf: the format allows them).
    pub value: f64,
    /// 1-based line number in the text.
    pub line: usize,
}

impl<'a> Sample<'a> {
    /// The label pairs in the order written.
    pub fn labels(&self) -> Labels<'a> {
        Labels { rest: self.body }
    }

    /// The value of label `key` (unescaped), if present.
    pub fn label(&self, key: &str) -> Option<Cow<'a, str>> {
        self.labels()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.unescape())
    }

    /// The label body as written (without the braces): with [`Sample::name`], the series' identity
    /// within one exposition.
    pub fn label_text(&self) -> &'a str {
        self.body
    }
}

/// A label value as written between the quotes (escapes not yet resolved).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawValue<'a>(&'a str);

impl<'a> RawValue<'a> {
    /// The text between the quotes, escapes included.
    pub fn raw(&self) -> &'a str {
        self.0
    }

    /// Whether the value is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value with `\\`, `\"` and `\n` resolved; borrowed when it holds no escape.
    pub fn unescape(&self) -> Cow<'a, str> {
        if !self.0.contains('\\') {
            return Cow::Borrowed(self.0);
        }
        let mut out = String::with_capacity(self.0.len());
        let mut chars = self.0.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => {}
            }
        }
        Cow::Owned(out)
    }
}

/// Iterator over a checked label body: `(name, value)` pairs.
#[derive(Clone, Debug)]
pub struct Labels<'a> {
    rest: &'a str,
}

impl<'a> Iterator for Labels<'a> {
    type Item = (&'a str, RawValue<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        let s = self.rest.trim_start_matches([',', ' ', '\t']);
        let eq = s.find('=')?;
        let key = s[..eq].trim_end();
        let after = s[eq + 1..].trim_start().strip_prefix('"')?;
        let end = closing_quote(after).ok()?;
        self.rest = &after[end + 1..];
        Some((key, RawValue(&after[..end])))
    }
}

/// Why a line is not a valid sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    /// The metric name is empty or has a character outside `[a-zA-Z0-9_:]`.
    #[error("invalid metric name (allowed: letters, digits, '_' and ':', not starting with a digit)")]
    BadName,
    /// Nothing after the name.
    #[error("no sample value after the metric name")]
    NoValue,
    /// A label name is empty or has a character outside `[a-zA-Z0-9_]`.
    #[error("invalid label name (allowed: letters, digits and '_', not starting with a digit)")]
    BadLabelName,
    /// `name` without `=value`.
    #[error("label without '='")]
    NoEquals,
    /// `name=value` without quotes.
    #[error("label value not quoted")]
    Unquoted,
    /// No closing quote (or no closing brace).
    #[error("unterminated label value or label set")]
    Unterminated,
    /// A backslash followed by something else than `\`, `"` or `n`.
    #[error("invalid escape in label value (allowed: \\\\, \\\" and \\n)")]
    BadEscape,
    /// Something else than `,` or `}` after a label value.
    #[error("expected ',' or '}}' after a label value")]
    BadSeparator,
    /// The value is not a float, `NaN`, `+Inf` or `-Inf`.
    #[error("sample value is not a number")]
    BadValue,
    /// The optional timestamp is not an integer.
    #[error("timestamp is not an integer (milliseconds)")]
    BadTimestamp,
    /// Text after the value and timestamp that is not an exemplar.
    #[error("unexpected text after the sample value")]
    Trailing,
}

/// A line that is not a valid sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("metrics line {line}: {kind}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub kind: ParseErrorKind,
}

/// The samples of an exposition, in order; stops being useful after the first error.
pub fn samples(text: &str) -> Samples<'_> {
    Samples {
        lines: text.lines(),
        line: 0,
    }
}

/// Iterator returned by [`samples`].
#[derive(Clone, Debug)]
pub struct Samples<'a> {
    lines: std::str::Lines<'a>,
    line: usize,
}

impl<'a> Iterator for Samples<'a> {
    type Item = Result<Sample<'a>, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let raw = self.lines.next()?;
            self.line += 1;
            let line = raw.trim_matches([' ', '\t']);
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let number = self.line;
            return Some(
                parse_line(line, number).map_err(|kind| ParseError { line: number, kind }),
            );
        }
    }
}

/// Parses a whole exposition into a vector (convenience for tests and small texts; the window
/// walks [`samples`] instead).
pub fn parse(text: &str) -> Result<Vec<Sample<'_>>, ParseError> {
    samples(text).collect()
}

fn parse_line(line: &str, number: usize) -> Result<Sample<'_>, ParseErrorKind> {
    let name_end = line
        .find(|c: char| c == '{' || c == ' ' || c == '\t')
        .ok_or(ParseErrorKind::NoValue)?;
    let name = &line[..name_end];
    if !valid_name(name, true) {
        return Err(ParseErrorKind::BadName);
    }
    let mut rest = &line[name_end..];
    let mut body = "";
    if let Some(after_brace) = rest.strip_prefix('{') {
        let end = check_labels(after_brace)?;
        body = &after_brace[..end];
        rest = &after_brace[end + 1..];
    }
    let mut fields = rest.split([' ', '\t']).filter(|f| !f.is_empty());
    let value_text = fields.next().ok_or(ParseErrorKind::NoValue)?;
    let value = parse_value(value_text).ok_or(ParseErrorKind::BadValue)?;
    match fields.next() {
        None => {}
        Some(f) if f.starts_with('#') => {}
        Some(ts) => {
            ts.parse::<i64>()
                .map_err(|_| ParseErrorKind::BadTimestamp)?;
            if fields.next().is_some_and(|f| !f.starts_with('#')) {
                return Err(ParseErrorKind::Trailing);
            }
        }
    }
    Ok(Sample {
        name,
        body,
        value,
        line: number,
    })
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        // Rust also reads "inf"/"infinity"/"nan" in any case: refuse those spellings.
        v if v.bytes().any(|b| b.is_ascii_alphabetic() && b != b'e' && b != b'E') => None,
        v => v.parse().ok(),
    }
}

fn valid_name(name: &str, metric: bool) -> bool {
    let mut bytes = name.bytes();
    let ok_first = |b: u8| b.is_ascii_alphabetic() || b == b'_' || (metric && b == b':');
    match bytes.next() {
        Some(b) if ok_first(b) => {}
        _ => return false,
    }
    bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || (metric && b == b':'))
}

/// Checks a label body after `{`; returns the index of the closing `}`.
fn check_labels(s: &str) -> Result<usize, ParseErrorKind> {
    let bytes = s.as_bytes();
    let mut i = 0;
    loop {
        while i < bytes.len() && matches!(bytes[i], b' ' | b'\t') {
            i += 1;
        }
        match bytes.get(i) {
            None => return Err(ParseErrorKind::Unterminated),
            Some(b'}') => return Ok(i),
            Some(_) => {}
        }
        let eq = s[i..]
            .find(['=', '}', ','])
            .filter(|&e| bytes[i + e] == b'=')
            .ok_or(ParseErrorKind::NoEquals)?;
        if !valid_name(s[i..i + eq].trim_end(), false) {
            return Err(ParseErrorKind::BadLabelName);
        }
        i += eq + 1;
        while i < bytes.len() && matches!(bytes[i], b' ' | b'\t') {
            i += 1;
        }
        if bytes.get(i) != Some(&b'"') {
            return Err(ParseErrorKind::Unquoted);
        }
        i += 1;
        i += closing_quote(&s[i..])? + 1;
        while i < bytes.len() && matches!(bytes[i], b' ' | b'\t') {
            i += 1;
        }
        match bytes.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => return Ok(i),
            Some(_) => return Err(ParseErrorKind::BadSeparator),
            None => return Err(ParseErrorKind::Unterminated),
        }
    }
}

/// Index of the quote closing a label value that starts at `s[0]`.
fn closing_quote(s: &str) -> Result<usize, ParseErrorKind> {
    let bytes = s.as_bytes();
    let mut i = 0;
    loop {
        let step = bytes[i..]
            .iter()
            .position(|&b| b == b'"' || b == b'\\')
            .ok_or(ParseErrorKind::Unterminated)?;
        i += step;
        if bytes[i] == b'"' {
            return Ok(i);
        }
        match bytes.get(i + 1) {
            Some(b'\\' | b'"' | b'n') => i += 2,
            Some(_) => return Err(ParseErrorKind::BadEscape),
            None => return Err(ParseErrorKind::Unterminated),
        }
    }
}

#[cfg(test)]
mod tests;
