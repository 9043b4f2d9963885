//! `onemesh-platform`: runs one of the five services, or the traffic generator.
fn main() {}
