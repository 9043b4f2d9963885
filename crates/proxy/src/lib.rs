//! onemesh-proxy (being written).
