//! onemesh-control (being written).
