//! cairn's QEMU harness.
//!
//! - [`prepare`]: host packages, the pinned Kubernetes binaries, cairn's guest
//!   binaries and the image, each step idempotent and cached;
//! - [`fleet`]: a local fleet repository signed with a demo SSH key, served
//!   by a real `git daemon`;
//! - [`servers`]: the HTTP server iPXE loads the artifacts from;
//! - [`guest`]: a QEMU guest with its serial console captured to a file,
//!   waited on by console lines, killed with its process group;
//! - [`cluster`]: the host's view of the node's API server (waits on facts);
//! - [`ab`]: a disk-installed node, a TUF update repository and the A/B
//!   update scenario's versions;
//! - [`demo`]: the whole walking skeleton, used by the `demo` command and
//!   by the slow-tier test;
//! - [`runner`]: the test command's tiers.

pub mod ab;
pub mod agent_rss;
pub mod cluster;
pub mod demo;
pub mod fleet;
pub mod guest;
pub mod prepare;
pub mod runner;
pub mod servers;
pub mod ui;

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The repository checkout this harness belongs to.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("qemu-tests lives in the repo")
        .to_path_buf()
}

/// Poll `f` until it returns `Some`, or fail after `timeout` with `what`.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    let mut last_err = None;
    loop {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if start.elapsed() > timeout {
            anyhow::bail!(
                "timed out after {:?} waiting for {what}{}",
                timeout,
                last_err
                    .map(|e| format!(" (last error: {e:#})"))
                    .unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The fleet repository's current commit.
pub fn fleet_head(f: &fleet::FleetRepo) -> anyhow::Result<String> {
    let out = std::process::Command::new("git")
        .current_dir(&f.work)
        .args(["rev-parse", "HEAD"])
        .output()?;
    anyhow::ensure!(out.status.success(), "git rev-parse failed");
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
