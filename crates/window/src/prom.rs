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

/// The first index at or after `$i` whose byte does not match the pattern (a macro rather than a
/// function taking a closure: the closure call per byte is what made debug builds, i.e. every
/// test, slow).
macro_rules! skip {
    ($b:expr, $i:expr, $($pat:tt)+) => {{
        let b: &[u8] = $b;
        let mut i: usize = $i;
        while i < b.len() && matches!(b[i], $($pat)+) {
            i += 1;
        }
        i
    }};
}

/// The first index at or after `$i` whose byte matches the pattern (or the end).
macro_rules! until {
    ($b:expr, $i:expr, $($pat:tt)+) => {{
        let b: &[u8] = $b;
        let mut i: usize = $i;
        while i < b.len() && !matches!(b[i], $($pat)+) {
            i += 1;
        }
        i
    }};
}

/// Byte classes for the scanners, one table load per byte (the range tests they replace cost
/// several compares per byte; label text is most of an exposition).
const NAME: u8 = 1;
const KEY: u8 = 2;
const STOP: u8 = 4;

static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        if c.is_ascii_alphanumeric() || c == b'_' {
            t[i] = NAME | KEY;
        }
        if c == b':' {
            t[i] = NAME;
        }
        if c == b'"' || c == b'\\' {
            t[i] = STOP;
        }
        i += 1;
    }
    t
};

/// The first index at or after `$i` whose byte is not of class `$class`.
macro_rules! run {
    ($b:expr, $i:expr, $class:expr) => {{
        let b: &[u8] = $b;
        let mut i: usize = $i;
        while i < b.len() && CLASS[b[i] as usize] & $class != 0 {
            i += 1;
        }
        i
    }};
}

/// One sample line, borrowed from the text.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample<'a> {
    /// The metric name (for histograms with its `_bucket`/`_sum`/`_count` suffix).
    pub name: &'a str,
    /// The label body between the braces, as written (already checked).
    body: &'a str,
    /// Where its labels are (recorded by the check).
    spans: Spans,
    /// The value (may be NaN or ±Inf: the format allows them).
    pub value: f64,
    /// 1-based line number in the text.
    pub line: usize,
}

impl<'a> Sample<'a> {
    /// The label pairs in the order written.
    pub fn labels(&self) -> Labels<'a> {
        Labels {
            body: self.body,
            spans: self.spans,
            next: 0,
            rest: self.body,
        }
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
    /// Wraps text as written between quotes (escapes unresolved).
    pub fn new(raw: &'a str) -> Self {
        RawValue(raw)
    }

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

/// The most labels of a line whose positions are recorded while it is checked; a line with more
/// is walked again by [`Labels`].
const SPANS: usize = 12;

/// Label positions in a body: `(key start, key end, value start, value end)`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Spans {
    /// How many are recorded; `OVERFLOW`: too many, walk the text.
    n: u8,
    at: [[u32; 4]; SPANS],
}

const OVERFLOW: u8 = u8::MAX;

impl Spans {
    const EMPTY: Spans = Spans {
        n: 0,
        at: [[0; 4]; SPANS],
    };

    fn push(&mut self, key: (usize, usize), value: (usize, usize)) {
        if (self.n as usize) < SPANS && value.1 <= u32::MAX as usize {
            self.at[self.n as usize] = [key.0 as u32, key.1 as u32, value.0 as u32, value.1 as u32];
            self.n += 1;
        } else {
            self.n = OVERFLOW;
        }
    }
}

/// Iterator over a checked label body: `(name, value)` pairs.
#[derive(Clone, Debug)]
pub struct Labels<'a> {
    body: &'a str,
    spans: Spans,
    next: usize,
    rest: &'a str,
}

impl<'a> Iterator for Labels<'a> {
    type Item = (&'a str, RawValue<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.spans.n != OVERFLOW {
            if self.next >= usize::from(self.spans.n) {
                return None;
            }
            let [ks, ke, vs, ve] = self.spans.at[self.next].map(|x| x as usize);
            self.next += 1;
            return Some((self.body.get(ks..ke)?, RawValue(self.body.get(vs..ve)?)));
        }
        // The body was checked when the line was read: `name = "value"` pairs, separated by
        // commas and blanks, values closed by an unescaped quote.
        let b = self.rest.as_bytes();
        let mut i = skip!(b, 0, b',' | b' ' | b'\t');
        let key_start = i;
        i = run!(b, i, KEY);
        let key_end = i;
        i = skip!(b, i, b'=' | b' ' | b'\t');
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let start = i + 1;
        let end = start + closing_quote(self.rest.get(start..)?).ok()?;
        let key = self.rest.get(key_start..key_end)?;
        let value = self.rest.get(start..end)?;
        self.rest = self.rest.get(end + 1..)?;
        Some((key, RawValue(value)))
    }
}

/// Why a line is not a valid sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    /// The metric name is empty or has a character outside `[a-zA-Z0-9_:]`.
    #[error(
        "invalid metric name (allowed: letters, digits, '_' and ':', not starting with a digit)"
    )]
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
        text,
        pos: 0,
        line: 0,
    }
}

/// Iterator returned by [`samples`].
#[derive(Clone, Debug)]
pub struct Samples<'a> {
    text: &'a str,
    pos: usize,
    line: usize,
}

impl<'a> Iterator for Samples<'a> {
    type Item = Result<Sample<'a>, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        let b = self.text.as_bytes();
        while self.pos < b.len() {
            let start = self.pos;
            // (`str::find` of one ASCII char is a word-at-a-time memchr.)
            let end = self.text[start..].find('\n').map_or(b.len(), |n| start + n);
            self.pos = end + 1;
            self.line += 1;
            // Trim blanks (and a '\r') at both ends.
            let mut s = start;
            let mut e = end;
            while s < e && matches!(b[s], b' ' | b'\t') {
                s += 1;
            }
            while e > s && matches!(b[e - 1], b' ' | b'\t' | b'\r') {
                e -= 1;
            }
            if s == e || b[s] == b'#' {
                continue;
            }
            let number = self.line;
            // Both ends are at ASCII bytes, so this is a char boundary.
            let line = self.text.get(s..e)?;
            return Some(
                parse_line(line, number).map_err(|kind| ParseError { line: number, kind }),
            );
        }
        None
    }
}

/// Parses a whole exposition into a vector (convenience for tests and small texts; the window
/// walks [`samples`] instead).
pub fn parse(text: &str) -> Result<Vec<Sample<'_>>, ParseError> {
    samples(text).collect()
}

fn parse_line(line: &str, number: usize) -> Result<Sample<'_>, ParseErrorKind> {
    let b = line.as_bytes();
    let name_end = run!(b, 0, NAME);
    if name_end == 0 || b[0].is_ascii_digit() {
        return Err(ParseErrorKind::BadName);
    }
    let name = &line[..name_end];
    let mut i = name_end;
    let mut body = "";
    let mut spans = Spans::EMPTY;
    match b.get(i) {
        Some(b'{') => {
            let len = check_labels(&line[i + 1..], &mut spans)?;
            body = &line[i + 1..i + 1 + len];
            i += len + 2;
        }
        Some(b' ' | b'\t') => {}
        None => return Err(ParseErrorKind::NoValue),
        Some(_) => return Err(ParseErrorKind::BadName),
    }
    let (value_text, next) = token(line, i);
    if value_text.is_empty() {
        return Err(ParseErrorKind::NoValue);
    }
    let value = parse_value(value_text).ok_or(ParseErrorKind::BadValue)?;
    let (ts, next) = token(line, next);
    if !ts.is_empty() && !ts.starts_with('#') {
        ts.parse::<i64>()
            .map_err(|_| ParseErrorKind::BadTimestamp)?;
        let (rest, _) = token(line, next);
        if !rest.is_empty() && !rest.starts_with('#') {
            return Err(ParseErrorKind::Trailing);
        }
    }
    Ok(Sample {
        name,
        body,
        spans,
        value,
        line: number,
    })
}

/// The blank-separated token at or after `i`, and the index after it.
fn token(line: &str, i: usize) -> (&str, usize) {
    let b = line.as_bytes();
    let start = skip!(b, i, b' ' | b'\t');
    let end = until!(b, start, b' ' | b'\t');
    (line.get(start..end).unwrap_or(""), end)
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        // Rust also reads "inf"/"infinity"/"nan" in any case: refuse those spellings.
        v if v
            .bytes()
            .any(|b| b.is_ascii_alphabetic() && b != b'e' && b != b'E') =>
        {
            None
        }
        v => v.parse().ok(),
    }
}

/// Checks a label body after `{`; returns the index of the closing `}`.
/// Records where each label is in `spans`.
fn check_labels(s: &str, spans: &mut Spans) -> Result<usize, ParseErrorKind> {
    let b = s.as_bytes();
    let mut i = 0;
    loop {
        i = skip!(b, i, b' ' | b'\t');
        match b.get(i) {
            None => return Err(ParseErrorKind::Unterminated),
            Some(b'}') => return Ok(i),
            Some(_) => {}
        }
        let key_start = i;
        i = run!(b, i, KEY);
        let key_end = i;
        if i == key_start || b[key_start].is_ascii_digit() {
            return Err(match b[key_start] {
                b'=' | b',' | b'}' => ParseErrorKind::NoEquals,
                _ => ParseErrorKind::BadLabelName,
            });
        }
        i = skip!(b, i, b' ' | b'\t');
        match b.get(i) {
            Some(b'=') => i += 1,
            None => return Err(ParseErrorKind::Unterminated),
            Some(b',' | b'}') => return Err(ParseErrorKind::NoEquals),
            Some(_) => return Err(ParseErrorKind::BadLabelName),
        }
        i = skip!(b, i, b' ' | b'\t');
        if b.get(i) != Some(&b'"') {
            return Err(ParseErrorKind::Unquoted);
        }
        i += 1;
        let value_start = i;
        i += closing_quote(&s[i..])?;
        spans.push((key_start, key_end), (value_start, i));
        i += 1;
        i = skip!(b, i, b' ' | b'\t');
        match b.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => return Ok(i),
            Some(_) => return Err(ParseErrorKind::BadSeparator),
            None => return Err(ParseErrorKind::Unterminated),
        }
    }
}

/// Index of the quote closing a label value that starts at `s[0]`.
fn closing_quote(s: &str) -> Result<usize, ParseErrorKind> {
    let b = s.as_bytes();
    let mut i = 0;
    loop {
        while i < b.len() && CLASS[b[i] as usize] & STOP == 0 {
            i += 1;
        }
        match b.get(i) {
            Some(b'"') => return Ok(i),
            None => return Err(ParseErrorKind::Unterminated),
            // A backslash.
            Some(_) => match b.get(i + 1) {
                Some(b'\\' | b'"' | b'n') => i += 2,
                Some(_) => return Err(ParseErrorKind::BadEscape),
                None => return Err(ParseErrorKind::Unterminated),
            },
        }
    }
}

#[cfg(test)]
mod tests;
