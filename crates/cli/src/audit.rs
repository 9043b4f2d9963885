//! `onemesh audit verify` and `onemesh audit query`: the decision log, read straight from its
//! directory (default `<state-dir>/audit`, where the local control plane writes it; in
//! Kubernetes, a copy of the control plane's volume). Verification and the format are the
//! `onemesh-audit` crate's; this module only finds the files, parses flags and prints.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::{Args, Subcommand};
use onemesh_audit::{Decision, Filter, Report, Trust, query_dir, time, verify_dir};
use onemesh_control::pki::TRUST_ANCHORS_FILE;
use onemesh_identity::TrustBundle;

use crate::Output;
use crate::layout::Layout;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check the whole chain and every checkpoint's signature; exit 1 naming the first entry
    /// that was changed, removed or reordered, or a checkpoint that is not the control plane's.
    Verify {
        /// The log's directory (default `<state-dir>/audit`).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The trust anchors the checkpoints' certificates must chain to (default
        /// `<state-dir>/trust-anchors.pem`).
        #[arg(long)]
        trust_anchors: Option<PathBuf>,
    },
    /// The records, oldest first, filtered (the newest `--limit` of those that match).
    Query(QueryArgs),
}

#[derive(Args)]
pub struct QueryArgs {
    /// The log's directory (default `<state-dir>/audit`).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Records from this time on: RFC 3339 UTC (`2026-12-04T10:00:00Z`, `2026-12-04`) or an age
    /// (`15m`, `2h`, `7d`).
    #[arg(long)]
    since: Option<String>,
    /// Records before this time (same forms as --since).
    #[arg(long)]
    until: Option<String>,
    /// The caller: a SPIFFE id, `namespace/workload`, or `unauthenticated`.
    #[arg(long)]
    from: Option<String>,
    /// The target: `namespace/workload` or `namespace`.
    #[arg(long)]
    to: Option<String>,
    /// `allow`, `deny` or `would_deny`.
    #[arg(long)]
    decision: Option<Decision>,
    /// A policy's name.
    #[arg(long)]
    policy: Option<String>,
    /// At most this many records, the newest (0: all).
    #[arg(long, default_value_t = 100)]
    limit: usize,
}

pub fn run(state_dir: &Path, command: AuditCommand, output: Output) -> anyhow::Result<bool> {
    match command {
        AuditCommand::Verify { dir, trust_anchors } => verify(
            &dir.unwrap_or_else(|| state_dir.join("audit")),
            &trust_anchors.unwrap_or_else(|| state_dir.join(TRUST_ANCHORS_FILE)),
            output,
        ),
        AuditCommand::Query(args) => query(state_dir, args, output),
    }
}

fn verify(dir: &Path, anchors: &Path, output: Output) -> anyhow::Result<bool> {
    let pem = std::fs::read_to_string(anchors).with_context(|| {
        format!(
            "cannot read the trust anchors {}: pass --trust-anchors (the mesh's trust-anchors.pem)",
            anchors.display()
        )
    })?;
    let bundle = TrustBundle::from_pem(&pem)
        .with_context(|| format!("{} holds no usable trust anchor", anchors.display()))?;
    if !dir.is_dir() {
        anyhow::bail!(
            "no decision log at {}: pass --dir (the control plane's --audit-dir)",
            dir.display()
        );
    }
    let report = verify_dir(dir, &Trust::new(bundle))?;
    if report.files.is_empty() {
        anyhow::bail!("{} holds no decision log file (audit-*.log)", dir.display());
    }
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table | Output::Wide => print!("{}", summary(dir, &report)),
    }
    Ok(report.ok())
}

/// The human form of a report.
fn summary(dir: &Path, r: &Report) -> String {
    let mut out = String::new();
    if let Some(f) = &r.failure {
        out.push_str(&format!("FAILED: {}/{}\n", dir.display(), f.message));
        out.push_str(&format!(
            "entries 1..{} before it verified ({} checkpoints)\n",
            f.after_seq, r.checkpoints
        ));
        return out;
    }
    out.push_str(&format!(
        "ok: {} files, entries {}..{} ({} records, {} decisions, {} checkpoints)\n",
        r.files.len(),
        r.first_seq,
        r.last_seq,
        r.records,
        r.decisions,
        r.checkpoints
    ));
    if r.pruned_before > 1 {
        out.push_str(&format!(
            "entries before {} were deleted by retention; the chain is verified from the checkpoint that sealed them\n",
            r.pruned_before
        ));
    }
    for signer in &r.signers {
        out.push_str(&format!("sealed by {signer}\n"));
    }
    if r.unsealed > 0 {
        out.push_str(&format!(
            "{} entries after the last checkpoint ({}) are not sealed yet: the control plane seals them within its --audit-seal-interval\n",
            r.unsealed, r.last_checkpoint
        ));
    }
    out
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// An RFC 3339 UTC time, or an age before `now_ms`.
fn parse_time(text: &str, now_ms: i64) -> anyhow::Result<i64> {
    if let Some(t) = time::parse_rfc3339(text) {
        return Ok(t);
    }
    let age = match text.strip_suffix('d').map(str::parse::<u64>) {
        Some(Ok(days)) => Some(Duration::from_secs(days.saturating_mul(86_400))),
        _ => onemesh_control::config::parse_duration(text),
    };
    let age = age.with_context(|| {
        format!("{text:?} is not a time: write 2026-12-04T10:00:00Z, 2026-12-04, or an age such as 15m, 2h or 7d")
    })?;
    Ok(now_ms.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX)))
}

/// The caller ids `--from` names.
fn callers(state_dir: &Path, from: &str) -> anyhow::Result<Vec<String>> {
    if from == "unauthenticated" {
        return Ok(vec![String::new()]);
    }
    if from.starts_with("spiffe://") {
        return Ok(vec![from.to_string()]);
    }
    let Some((ns, workload)) = from.split_once('/') else {
        anyhow::bail!("--from {from:?}: write a SPIFFE id, namespace/workload, or unauthenticated");
    };
    // The workload's identity from `onemesh up`'s layout; else its service account is taken to
    // be its name (the convention of mesh.yaml and the platform) in the default trust domain.
    if let Ok(layout) = Layout::load(state_dir)
        && let Ok(w) = layout.workload(from)
    {
        return Ok(vec![w.identity.clone()]);
    }
    Ok(vec![format!(
        "spiffe://{}/ns/{ns}/sa/{workload}",
        onemesh_identity::DEFAULT_TRUST_DOMAIN
    )])
}

fn query(state_dir: &Path, args: QueryArgs, output: Output) -> anyhow::Result<bool> {
    let dir = args.dir.unwrap_or_else(|| state_dir.join("audit"));
    if !dir.is_dir() {
        anyhow::bail!(
            "no decision log at {}: pass --dir (the control plane's --audit-dir)",
            dir.display()
        );
    }
    let now = now_ms();
    let (to_namespace, to_workload) = match args.to.as_deref().map(|t| t.split_once('/')) {
        None => (None, None),
        Some(Some((ns, w))) => (Some(ns.to_string()), Some(w.to_string())),
        Some(None) => (args.to.clone(), None),
    };
    let filter = Filter {
        since_ms: args
            .since
            .as_deref()
            .map(|t| parse_time(t, now))
            .transpose()?,
        until_ms: args
            .until
            .as_deref()
            .map(|t| parse_time(t, now))
            .transpose()?,
        callers: args
            .from
            .as_deref()
            .map(|f| callers(state_dir, f))
            .transpose()?,
        to_namespace,
        to_workload,
        decision: args.decision,
        policy: args.policy,
        limit: (args.limit > 0).then_some(args.limit),
    };
    let found = query_dir(&dir, &filter)?;
    if output == Output::Json {
        let records: Vec<serde_json::Value> = found
            .records
            .iter()
            .map(|(seq, r)| {
                let mut v = serde_json::to_value(r).unwrap_or_default();
                v["seq"] = (*seq).into();
                v
            })
            .collect();
        let out = serde_json::json!({
            "records": records,
            "left_out": found.left_out,
            "unreadable": found.unreadable,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(true);
    }
    let rows: Vec<Vec<String>> = found
        .records
        .iter()
        .map(|(seq, r)| {
            let caller = if r.caller.is_empty() {
                "unauthenticated".to_string()
            } else {
                r.caller.clone()
            };
            let request = if r.method.is_empty() {
                "-".to_string()
            } else {
                format!("{} {}", r.method, r.path)
            };
            vec![
                seq.to_string(),
                time::format_ms(r.time_ms),
                caller,
                format!("{}/{}:{}", r.namespace, r.workload, r.port),
                r.kind.clone(),
                request,
                r.decision.as_str().to_string(),
                if r.policy.is_empty() {
                    "-".to_string()
                } else {
                    r.policy.clone()
                },
                r.mode.as_str().to_string(),
                r.count.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        crate::table::render(
            &[
                "SEQ", "TIME", "FROM", "TO", "KIND", "REQUEST", "DECISION", "POLICY", "MODE",
                "COUNT"
            ],
            &rows
        )
    );
    if found.left_out > 0 {
        println!(
            "({} older matching records left out: raise --limit, or 0 for all)",
            found.left_out
        );
    }
    if found.unreadable > 0 {
        println!(
            "({} lines did not read: run `onemesh audit verify`)",
            found.unreadable
        );
    }
    Ok(true)
}

#[cfg(test)]
mod tests;
