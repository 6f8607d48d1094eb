//! End-to-end tests live in `tests/` of this crate; they start the real binaries.
