//! Helpers shared by the `pgrepl` binary's integration tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::process::{Command, Output};

/// The `pgrepl` binary under test.
pub fn pgrepl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pgrepl"))
}

/// Asserts that a run succeeded, showing its output if not.
pub fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "pgrepl failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}
