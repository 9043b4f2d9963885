//! `onemesh authz explain` and `onemesh authz diff`: both ask the control plane's API.
//!
//! - `explain` asks for a decision the destination's own proxy takes on its live policy (the
//!   control plane relays the question to the proxy's control-only admin port; nothing is
//!   evaluated here), and prints it with the policy and rule that decided and, for a denial, the
//!   smallest change that would allow the call.
//! - `diff` sends the new policies (a whole mesh.yaml, or AuthorizationPolicy documents) and prints
//!   every edge whose decision would change, with the traffic it carried in the metrics window;
//!   it fails (exit code 1) when live traffic would be denied, so CI can gate a change on it.

use std::path::{Path, PathBuf};

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use serde::Deserialize;

use crate::Output;
use crate::layout::Layout;
use crate::observe::Api;

/// `onemesh authz explain`.
#[derive(Args)]
pub struct ExplainArgs {
    /// The caller: a workload (`name` or `namespace/name`), a SPIFFE id, or `unauthenticated`.
    #[arg(long)]
    from: String,
    /// The destination: a workload (`name` or `namespace/name`) and optionally `:port` (a
    /// declared port; default: the workload's first).
    #[arg(long)]
    to: String,
    /// An HTTP method (with --path): explain an HTTP request; without both, a TCP connection.
    #[arg(long)]
    method: Option<String>,
    /// An HTTP path (with --method).
    #[arg(long)]
    path: Option<String>,
}

/// `onemesh authz diff`.
#[derive(Args)]
pub struct DiffArgs {
    /// The new policies: a whole mesh.yaml (its policies replace all of today's), or files of
    /// AuthorizationPolicy documents (each replaces the policy of its name, or adds one).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// How far back traffic counts as live (e.g. 60s, 5m).
    #[arg(long, default_value = "1m")]
    window: String,
}

#[derive(Debug, Deserialize)]
struct Peer {
    id: Option<String>,
    namespace: Option<String>,
    workload: Option<String>,
}

impl Peer {
    fn show(&self) -> String {
        match (&self.namespace, &self.workload, &self.id) {
            (Some(ns), Some(w), _) => format!("{ns}/{w}"),
            (_, _, Some(id)) => id.clone(),
            _ => "unauthenticated".to_string(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct Target {
    namespace: String,
    workload: String,
    port: Option<u16>,
}

impl Target {
    fn show(&self) -> String {
        match self.port {
            Some(port) => format!("{}/{}:{port}", self.namespace, self.workload),
            None => format!("{}/{}", self.namespace, self.workload),
        }
    }
}

#[derive(Debug, Deserialize)]
struct Request {
    method: Option<String>,
    path: Option<String>,
}

#[derive(Debug, Deserialize)]
struct PolicyCheck {
    name: String,
    mode: String,
    covers_port: bool,
    admits_caller: bool,
    matches_request: bool,
}

#[derive(Debug, Deserialize)]
struct Rule {
    policy: String,
    route: Option<usize>,
}

#[derive(Debug, Deserialize)]
struct Suggestion {
    summary: String,
    yaml: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Explanation {
    from: Peer,
    to: Target,
    request: Option<Request>,
    instance: Option<String>,
    decision: String,
    policy: String,
    #[serde(default)]
    rule: Option<Rule>,
    #[serde(default)]
    policies: Vec<PolicyCheck>,
    suggestion: Option<Suggestion>,
}

/// Asks the destination's proxy, through the control plane, how it decides the call.
pub async fn explain(dir: &Path, args: &ExplainArgs, out: Output) -> anyhow::Result<bool> {
    if args.method.is_some() != args.path.is_some() {
        anyhow::bail!(
            "give --method and --path together (an HTTP request), or neither (a TCP connection)"
        );
    }
    let api = Api::locate(dir)?;
    let (to, port) = match args.to.rsplit_once(':') {
        Some((w, p)) => {
            let port = p.parse::<u16>().with_context(|| {
                format!("--to {}: `{p}` is not a port number (1-65535)", args.to)
            })?;
            (w, Some(port))
        }
        None => (args.to.as_str(), None),
    };
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("from", &caller(dir, &args.from)?);
    q.append_pair("to", &workload(dir, to)?);
    if let Some(port) = port {
        q.append_pair("port", &port.to_string());
    }
    if let (Some(method), Some(path)) = (&args.method, &args.path) {
        q.append_pair("method", &method.to_ascii_uppercase());
        q.append_pair("path", path);
    }
    let path = format!("/api/v1/authz/explain?{}", q.finish());
    let answer: serde_json::Value = api.get(&path).await?;
    if out == Output::Json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(true);
    }
    let e: Explanation = serde_json::from_value(answer)
        .context("the control plane's explanation has an unexpected shape")?;
    print!("{}", render_explanation(&e));
    Ok(true)
}

fn render_explanation(e: &Explanation) -> String {
    let mut s = String::new();
    let what = match &e.request {
        Some(Request {
            method: Some(m),
            path: Some(p),
        }) => format!("{m} {p}"),
        _ => "a TCP connection".to_string(),
    };
    s += &format!("{} → {}: {what}\n", e.from.show(), e.to.show());
    let verdict = match e.decision.as_str() {
        "allow" => format!("ALLOWED by {}", e.policy),
        "would_deny" => format!(
            "let through in audit mode: WOULD BE DENIED by {} once enforced",
            e.policy
        ),
        _ if e.policy.is_empty() => "DENIED before any policy".to_string(),
        _ => format!("DENIED by {}", e.policy),
    };
    s += &format!("decision: {verdict}");
    if let Some(instance) = &e.instance {
        s += &format!("  (asked {instance})");
    }
    s += "\n";
    if let Some(Rule {
        policy,
        route: Some(route),
    }) = &e.rule
    {
        s += &format!("rule: {policy}, route #{route}\n");
    }
    if !e.policies.is_empty() {
        let yes = |b: bool| if b { "yes" } else { "no" }.to_string();
        let rows: Vec<Vec<String>> = e
            .policies
            .iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    p.mode.clone(),
                    yes(p.covers_port),
                    yes(p.admits_caller),
                    yes(p.matches_request),
                ]
            })
            .collect();
        s += &crate::table::render(
            &[
                "POLICY",
                "MODE",
                "COVERS PORT",
                "ADMITS CALLER",
                "MATCHES REQUEST",
            ],
            &rows,
        );
    }
    if let Some(suggestion) = &e.suggestion {
        s += &format!("\nto allow it: {}\n", suggestion.summary);
        if let Some(yaml) = &suggestion.yaml {
            s += &format!("\n{}\n", yaml.trim_end());
        }
    }
    s
}

/// `--from` as the API takes it: a SPIFFE id and `unauthenticated` as given, a workload as
/// `namespace/name`.
fn caller(dir: &Path, from: &str) -> anyhow::Result<String> {
    if from.starts_with("spiffe://") || from == "unauthenticated" {
        return Ok(from.to_string());
    }
    workload(dir, from)
}

/// A workload as `namespace/name`; a bare name is looked up in the local mesh's layout.
fn workload(dir: &Path, name: &str) -> anyhow::Result<String> {
    if name.contains('/') {
        return Ok(name.to_string());
    }
    let layout = Layout::load(dir).with_context(|| {
        format!("`{name}`: give the workload as namespace/name (no local mesh to look it up in)")
    })?;
    let w = layout.workload(name)?;
    Ok(format!("{}/{}", w.namespace, w.name))
}

#[derive(Debug, Deserialize)]
struct Verdict {
    decision: String,
    policy: String,
}

#[derive(Debug, Deserialize)]
struct Change {
    from: Peer,
    to: Target,
    route: Option<RouteMatch>,
    before: Verdict,
    after: Verdict,
    rps: f64,
    requests: u64,
}

#[derive(Debug, Deserialize)]
struct RouteMatch {
    #[serde(default)]
    methods: Vec<String>,
    path_prefix: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Diff {
    changes: Vec<Change>,
    live_denials: u64,
}

/// Sends the new policies and prints what would change; false (exit 1) when live traffic would
/// be denied.
pub async fn diff(dir: &Path, args: &DiffArgs, out: Output) -> anyhow::Result<bool> {
    let (body, files) = read_files(&args.files)?;
    let api = Api::locate(dir)?;
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("window", &args.window);
    let path = format!("/api/v1/authz/diff?{}", q.finish());
    let answer: serde_json::Value = api
        .post(&path, Bytes::from(body))
        .await
        .map_err(|e| anyhow::anyhow!("{}", files.relabel(&format!("{e:#}"))))?;
    let diff: Diff = serde_json::from_value(answer.clone())
        .context("the control plane's diff has an unexpected shape")?;
    if out == Output::Json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        print!("{}", render_diff(&diff, &args.window));
    }
    Ok(diff.live_denials == 0)
}

fn render_diff(d: &Diff, window: &str) -> String {
    if d.changes.is_empty() {
        return "no decision changes: every caller keeps what it has\n".to_string();
    }
    let mut s = String::new();
    for c in &d.changes {
        let route = match &c.route {
            Some(r) => {
                let methods = if r.methods.is_empty() {
                    "*".to_string()
                } else {
                    r.methods.join(",")
                };
                format!(" {methods} {}", r.path_prefix.as_deref().unwrap_or("/"))
            }
            None => String::new(),
        };
        let traffic = if c.requests > 0 {
            format!("{:.1} requests/s", c.rps)
        } else {
            format!("no traffic in the last {window}")
        };
        let now = past(&c.before.decision);
        let then = future(&c.after.decision);
        s += &format!(
            "{} → {}{route}: {traffic} now {now} ({}), {then} by {}\n",
            c.from.show(),
            c.to.show(),
            c.before.policy,
            c.after.policy
        );
    }
    s += &format!(
        "{} change(s); {} would deny live traffic\n",
        d.changes.len(),
        d.live_denials
    );
    s
}

fn past(decision: &str) -> &'static str {
    match decision {
        "allow" => "allowed",
        "would_deny" => "let through (audit)",
        _ => "denied",
    }
}

fn future(decision: &str) -> &'static str {
    match decision {
        "allow" => "would be allowed",
        "would_deny" => "would be let through in audit mode, would-deny",
        _ => "would be DENIED",
    }
}

/// Where each file starts in the text sent, to name the file and its own line in an error.
struct Files(Vec<(PathBuf, usize)>);

impl Files {
    /// Rewrites `:<line>:` of the first line number in `message` into `<file>:<its line>:`.
    fn relabel(&self, message: &str) -> String {
        let Some((start, end, line)) = first_line_number(message) else {
            return message.to_string();
        };
        let Some((file, first)) = self.0.iter().rev().find(|(_, first)| *first <= line) else {
            return message.to_string();
        };
        // A name before the number (the API's name for the body) is replaced by the file's.
        let name_start = message[..start]
            .rfind(char::is_whitespace)
            .map_or(0, |i| i + 1);
        format!(
            "{}{}:{}{}",
            &message[..name_start],
            file.display(),
            line - first + 1,
            &message[end..]
        )
    }
}

/// The first `:<digits>:` in `s`: (start of the name before it, end, the number).
fn first_line_number(s: &str) -> Option<(usize, usize, usize)> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b':' {
            let digits = bytes[i + 1..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            if digits > 0 && bytes.get(i + 1 + digits) == Some(&b':') {
                let n = s[i + 1..i + 1 + digits].parse().ok()?;
                return Some((i, i + 1 + digits, n));
            }
        }
        i += 1;
    }
    None
}

/// The files joined into one YAML stream, and where each starts (its first line, from 1).
fn read_files(paths: &[PathBuf]) -> anyhow::Result<(String, Files)> {
    let mut body = String::new();
    let mut starts = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if !body.is_empty() {
            if !body.ends_with('\n') {
                body.push('\n');
            }
            body.push_str("---\n");
        }
        starts.push((path.clone(), body.lines().count() + 1));
        body.push_str(&text);
    }
    Ok((body, Files(starts)))
}

#[cfg(test)]
mod tests;
