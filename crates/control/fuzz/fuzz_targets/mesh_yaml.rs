//! Fuzzes mesh.yaml parsing and validation (`onemesh_control::config::parse`): never panics, the
//! same text always gives the same answer, every error points at a line of the text, and a
//! configuration that passes refers only to what it declares.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use onemesh_control::config::{ConfigError, parse};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("mesh.yaml");
    // YAML breaks lines at LF, CR LF and a lone CR (`str::lines` does not split at a lone CR).
    let lines = text.replace("\r\n", "\n").matches(['\n', '\r']).count() + 1;
    let result = parse(file, text);
    let again = parse(file, text);
    match (&result, &again) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "parsing is deterministic"),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "errors are deterministic"),
        _ => panic!("the same text was once valid and once not"),
    }
    match result {
        Ok(mesh) => {
            for (ns, _) in mesh.workloads.keys().chain(mesh.services.keys()) {
                assert!(mesh.namespaces.contains_key(ns), "undeclared namespace {ns:?}");
            }
            for policy in &mesh.policies {
                let ns = &policy.meta.namespace;
                assert!(mesh.namespaces.contains_key(ns), "undeclared namespace {ns:?}");
                if let Some(w) = &policy.target_workload {
                    let key = (ns.clone(), w.clone());
                    assert!(mesh.workloads.contains_key(&key), "undeclared workload {key:?}");
                }
            }
            for route in &mesh.routes {
                let key = (route.meta.namespace.clone(), route.service.clone());
                assert!(mesh.services.contains_key(&key), "undeclared service {key:?}");
            }
        }
        // The end of the input (an unclosed flow collection, say) is reported on the line after
        // the last one when the text does not end with a line break.
        Err(ConfigError::Syntax { line, .. }) => {
            assert!((1..=lines + 1).contains(&line), "line {line} of {lines}")
        }
        Err(ConfigError::Invalid { errors }) => {
            assert!(!errors.is_empty(), "an invalid file names a problem");
            for e in &errors {
                assert!((1..=lines).contains(&e.line), "line {} of {lines}: {e}", e.line);
            }
        }
        Err(ConfigError::Read { .. }) => panic!("parse reads no file"),
    }
});
