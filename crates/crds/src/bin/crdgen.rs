//! `crdgen`: prints onemesh's CustomResourceDefinitions as YAML (all of them, `---`-separated), or,
//! given a directory, writes one file per CRD there (`deploy/crds/`).
//!
//! `cargo run -p onemesh-crds --bin crdgen -- deploy/crds` regenerates the committed copies.

use std::path::PathBuf;

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let files = onemesh_crds::crd_files()?;
    match std::env::args_os().nth(1).map(PathBuf::from) {
        Some(dir) => {
            for (name, yaml) in files {
                let path = dir.join(name);
                std::fs::write(&path, yaml)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                println!("wrote {}", path.display());
            }
        }
        None => {
            let all: Vec<String> = files.into_iter().map(|(_, yaml)| yaml).collect();
            print!("{}", all.join("---\n"));
        }
    }
    Ok(())
}
