//! Helpers for Chapar's cross-crate and multi-process tests.
#![forbid(unsafe_code)]

pub mod censor;
pub mod netns;
use std::path::PathBuf;
use std::process::Command;

/// Finds an external tool the tests need. When it is missing the test is
/// skipped with a loud message, except under CI (`CI` set), where a
/// missing tool is a failure: `.ci/run` installs them all.
pub fn require_tool(name: &str) -> Option<PathBuf> {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "`{name}` is not installed, and CI must not skip this test (apt-get install {name})"
        );
        eprintln!("SKIPPED: `{name}` is not installed; install it to run this test");
    }
    found
}
