//! platform (being written).
