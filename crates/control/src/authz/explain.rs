//! explain (in progress).
