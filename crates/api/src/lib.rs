//! onemesh-api (being written).
