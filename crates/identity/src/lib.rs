//! onemesh-identity (being written).
