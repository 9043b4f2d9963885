//! Tap: live request metadata for the control plane (see `docs/proxy.md`).
//!
//! WIP.

pub mod mask;
