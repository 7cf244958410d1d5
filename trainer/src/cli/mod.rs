//! The `kilobyte` commands.
