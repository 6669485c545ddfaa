//! `cairn-init`: stage 1 of a cairn node, PID 1 inside the initramfs.
//!
//! It mounts the API filesystems, loads the kernel modules the image needs,
//! checks the root filesystem image against the manifest the image build
//! recorded, mounts it read-only (erofs), puts a writable overlay on `/etc`
//! and a tmpfs on `/var`, hands configuration and trust anchors to stage 2,
//! and switch_roots into systemd. In disk mode (`cairn.slot=` on the
//! command line, [`disk`]) the root is the slot's erofs partition under
//! dm-verity and the state is the `state` partition (ext4, created on first
//! boot). Any failure prints one line starting with
//! `cairn-init: FATAL:` and reboots (or halts with `cairn.on_failure=halt`).

pub mod boot;
pub mod cmdline;
pub mod disk;
pub mod manifest;
pub mod modules;
pub mod sys;
pub mod tuf;

/// Everything that can stop stage 1. The message names what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("kernel command line: {0}")]
    Cmdline(String),
    #[error("image manifest: {0}")]
    Manifest(String),
    #[error("kernel modules: {0}")]
    Modules(String),
    #[error("root filesystem: {0}")]
    Rootfs(String),
    #[error("{0}")]
    Sys(String),
}
