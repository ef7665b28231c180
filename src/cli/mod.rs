//! Subcommands of the `retrace` binary that live in their own files.

pub mod eval;
