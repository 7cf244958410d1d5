//! Integration tests across kilobyte's crates live in `tests/tests/`.
