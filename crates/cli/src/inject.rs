//! `onemesh inject [FILE|-]` and `onemesh uninject [FILE|-]`: the control plane's injection,
//! offline, on multi-document YAML (as `linkerd inject` does): `onemesh inject app.yaml |
//! kubectl apply -f -`.
//!
//! The pod templates of Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs and
//! CronJobs (and of the items of a `List`) go through `onemesh_control::inject`, the very code the
//! admission webhook runs, with the same defaults as `onemesh install`; every other document is
//! printed unchanged. The workload name the proxy reports is the object's name (a Deployment's
//! pods report `web` as the control plane names them); a CronJob's pods read their Job's name from
//! their `batch.kubernetes.io/job-name` label. Injecting an injected object changes nothing, and
//! `uninject` restores the object as it was (probes included).
//!
//! The output is YAML without the input's comments or key order (keys sorted); documents that
//! are not pod-bearing are re-printed the same way.

use std::io::Read as _;
use std::path::PathBuf;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use onemesh_control::inject::{self, InjectConfig, Outcome, Workload};
use serde_json::Value;

/// `onemesh inject` / `onemesh uninject` flags.
#[derive(clap::Args, Debug)]
pub struct InjectArgs {
    /// The YAML to read (one or more documents); `-` or nothing: standard input.
    pub file: Option<PathBuf>,
    /// The proxy's image (it also runs the init step), as `onemesh install --proxy-image`.
    #[arg(long, default_value = concat!("onemesh/proxy:v", env!("CARGO_PKG_VERSION")))]
    pub proxy_image: String,
    /// The mesh's trust domain, as `onemesh install --trust-domain`.
    #[arg(long, default_value = onemesh_identity::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// The control plane's namespace.
    #[arg(long, default_value = "onemesh")]
    pub control_namespace: String,
}

impl InjectArgs {
    /// The injector's settings: `install`'s defaults with these flags.
    pub fn config(&self) -> InjectConfig {
        InjectConfig {
            proxy_image: self.proxy_image.clone(),
            trust_domain: self.trust_domain.clone(),
            control_namespace: self.control_namespace.clone(),
            ..InjectConfig::default()
        }
    }

    fn read(&self) -> anyhow::Result<String> {
        match self.file.as_deref() {
            None => stdin(),
            Some(p) if p.as_os_str() == "-" => stdin(),
            Some(p) => {
                std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
            }
        }
    }
}

fn stdin() -> anyhow::Result<String> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("cannot read standard input")?;
    Ok(text)
}

/// Which way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Inject,
    Uninject,
}

/// Runs the command: prints the YAML, and a note per object on standard error.
pub fn run(args: &InjectArgs, direction: Direction) -> anyhow::Result<bool> {
    let text = args.read()?;
    let (out, notes) = transform(&text, direction, &args.config())?;
    for note in notes {
        eprintln!("{note}");
    }
    print!("{out}");
    Ok(true)
}

/// The pure part: YAML in, YAML and notes (`deployment/web injected`) out.
pub fn transform(
    text: &str,
    direction: Direction,
    config: &InjectConfig,
) -> anyhow::Result<(String, Vec<String>)> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(text).context("the input is not valid YAML")?;
    let mut out = String::new();
    let mut notes = Vec::new();
    let mut first = true;
    for (i, mut doc) in docs.into_iter().enumerate() {
        if doc.is_null() {
            continue;
        }
        object(&mut doc, direction, config, &mut notes)
            .with_context(|| format!("document {} ({})", i + 1, describe(&doc)))?;
        if !first {
            out.push_str("---\n");
        }
        first = false;
        let yaml = serde_saphyr::to_string(&doc).context("cannot print the YAML")?;
        out.push_str(&yaml);
        if !yaml.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok((out, notes))
}

/// `deployment/web` (or `document` when it has no kind or name).
fn describe(doc: &Value) -> String {
    let kind = doc["kind"].as_str().unwrap_or("object").to_lowercase();
    match doc["metadata"]["name"].as_str() {
        Some(name) => format!("{kind}/{name}"),
        None => kind,
    }
}

/// One object (a `List`'s items each in turn).
fn object(
    doc: &mut Value,
    direction: Direction,
    config: &InjectConfig,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    let kind = doc["kind"].as_str().unwrap_or_default().to_string();
    let name = doc["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (pointer, workload) = match kind.as_str() {
        "List" => {
            if let Some(items) = doc.get_mut("items").and_then(Value::as_array_mut) {
                for (i, item) in items.iter_mut().enumerate() {
                    object(item, direction, config, notes)
                        .with_context(|| format!("item {} ({})", i + 1, describe(item)))?;
                }
            }
            return Ok(());
        }
        "Pod" => {
            let pod: Pod =
                serde_json::from_value(doc.clone()).context("not a valid Pod: check its fields")?;
            ("", Workload::of_pod(&pod))
        }
        "Deployment" | "StatefulSet" | "DaemonSet" | "Job" => {
            ("/spec/template", Workload::Name(name.clone()))
        }
        "ReplicaSet" => {
            // A Deployment's ReplicaSet: the Deployment's name, as the control plane names it.
            let hash = doc
                .pointer("/spec/template/metadata/labels/pod-template-hash")
                .and_then(Value::as_str);
            let workload = hash
                .and_then(|h| name.strip_suffix(&format!("-{h}")))
                .unwrap_or(&name)
                .to_string();
            ("/spec/template", Workload::Name(workload))
        }
        "CronJob" => ("/spec/jobTemplate/spec/template", Workload::JobNameLabel),
        _ => return Ok(()),
    };
    let Some(template) = doc.pointer_mut(pointer) else {
        bail!("it has no pod template at {pointer}: is it complete?");
    };
    let had_metadata = template.get("metadata").is_some();
    let mut meta: ObjectMeta = match template.get("metadata") {
        Some(m) => serde_json::from_value(m.clone()).context("its pod metadata is not valid")?,
        None => ObjectMeta::default(),
    };
    let Some(spec) = template.get("spec") else {
        bail!("it has no pod spec at {pointer}/spec");
    };
    let mut spec: PodSpec =
        serde_json::from_value(spec.clone()).context("its pod spec is not valid")?;
    let what = format!("{}/{name}", kind.to_lowercase());
    let changed = match direction {
        Direction::Inject => match inject::inject(&mut meta, &mut spec, &workload, config)? {
            Outcome::Injected => {
                notes.push(format!("{what} injected"));
                true
            }
            Outcome::AlreadyInjected => {
                notes.push(format!("{what} already injected"));
                false
            }
            Outcome::Skipped(why) => {
                notes.push(format!("{what} skipped: {why}"));
                false
            }
        },
        Direction::Uninject => {
            let changed = inject::uninject(&mut meta, &mut spec)?;
            notes.push(format!(
                "{what} {}",
                if changed {
                    "uninjected"
                } else {
                    "not injected"
                }
            ));
            changed
        }
    };
    if changed {
        let Some(obj) = template.as_object_mut() else {
            bail!("its pod template is not a mapping");
        };
        let meta = serde_json::to_value(&meta).context("cannot print the pod metadata")?;
        // No metadata before and none after (uninject): leave no empty mapping behind.
        if meta.as_object().is_some_and(|m| m.is_empty()) && !had_metadata {
            obj.remove("metadata");
        } else {
            obj.insert("metadata".to_string(), meta);
        }
        obj.insert(
            "spec".to_string(),
            serde_json::to_value(&spec).context("cannot print the pod spec")?,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests;
