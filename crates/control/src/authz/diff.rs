//! diff (in progress).
