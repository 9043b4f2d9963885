//! Generates the gRPC code from `proto/` with protox (a pure-Rust protobuf compiler), so a fresh
//! machine builds with cargo alone: no system `protoc`.

use std::path::Path;

const PROTOS: [&str; 5] = [
    "proto/onemesh/admin.proto",
    "proto/onemesh/audit.proto",
    "proto/onemesh/identity.proto",
    "proto/onemesh/destination.proto",
    "proto/onemesh/policy.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, [Path::new("proto")])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
