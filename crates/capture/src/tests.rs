//! Unit tests: rendering, port and network lists, the init command line.
