//! `cairnctl install --disk`: a PXE-booted node writes cairn to its disk.
//!
//! The version is the one running (`/usr/lib/cairn/version`) unless one is
//! named; its bytes come from the update repository in the agent's
//! configuration and are checked against the signed targets, like an
//! update. The disk's STATE gets the configuration PXE delivered (stage 1
//! keeps it in [`KEPT_CONFIG`]) and the hostname. The writes and their
//! order are [`cairn_slots::install`]'s.
//!
//! Fleets provision with a kernel argument instead of a shell: the boot
//! script adds `cairn.install=/dev/vda`, and `cairn-install.service` runs
//! `cairnctl install --from-cmdline --reboot` before Kubernetes starts. A
//! failed install leaves the node running from PXE as before (the failure
//! is on the console and in the journal).

use std::path::{Path, PathBuf};

use cairn_slots::install::{install_fresh, FreshInstall, FreshReport, Sizes};
use cairn_slots::{OsVersion, Slot};

use super::host;
use super::images::{self, TufSettings};

/// Where stage 1 keeps the configuration tree PXE delivered.
pub const KEPT_CONFIG: &str = "/run/cairn/config/etc";
/// The running image's version.
pub const VERSION_FILE: &str = "/usr/lib/cairn/version";
/// systemd-boot in the image (package systemd-boot-efi).
pub const SYSTEMD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";
/// The kernel argument naming the disk to install to.
pub const CMDLINE_KEY: &str = "cairn.install";

/// `cairn.install=<disk>` from a kernel command line.
pub fn disk_from_cmdline(cmdline: &str) -> Option<PathBuf> {
    cmdline
        .split_ascii_whitespace()
        .find_map(|w| w.strip_prefix("cairn.install="))
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
}

/// What to install and from where.
#[derive(Debug, Clone)]
pub struct InstallRequest {
    pub disk: PathBuf,
    /// `None`: the running version.
    pub version: Option<String>,
    pub tuf: TufSettings,
    pub sizes: Sizes,
    pub force: bool,
    /// The configuration tree for STATE (default [`KEPT_CONFIG`]).
    pub config_etc: PathBuf,
}

/// Install to the disk; `say` hears one line per step.
pub fn install_disk(
    req: &InstallRequest,
    mut say: impl FnMut(String),
) -> Result<(OsVersion, FreshReport), String> {
    if let Some(b) = host::booted()? {
        return Err(format!(
            "this node runs from a disk (slot {}); `cairnctl install --disk` installs from a PXE boot — to move this node to another disk, PXE-boot it",
            b.slot
        ));
    }
    let version = match &req.version {
        Some(v) => v.clone(),
        None => std::fs::read_to_string(VERSION_FILE)
            .map(|s| s.trim().to_string())
            .map_err(|e| {
                format!(
                    "reading the running version from {VERSION_FILE}: {e}; name one with --version"
                )
            })?,
    };
    let version = OsVersion::new(&version).map_err(|e| e.to_string())?;
    for (what, p) in [("systemd-boot", SYSTEMD_BOOT)] {
        if !Path::new(p).is_file() {
            return Err(format!(
                "{what} is not in this image ({p}); build the image with systemd-boot-efi (cairn's mkosi.conf has it)"
            ));
        }
    }
    let config_etc = req.config_etc.is_dir().then_some(req.config_etc.as_path());
    if config_etc.is_none() {
        say(format!(
            "no node configuration at {} (this boot had no configuration initrd): STATE gets only the hostname",
            req.config_etc.display()
        ));
    }
    let hostname = crate::identity::read(Path::new("/")).hostname;
    say(format!(
        "checking {version} in the update repository {}",
        req.tuf.metadata_url
    ));
    let mut up = images::updater(&req.tuf)?;
    let release = images::resolve(&mut up, &version, Slot::A)?;
    let mut source = images::TufImages {
        updater: &up,
        release: &release,
    };
    let mke2fs = cairn_slots::install::find_mke2fs();
    let p = FreshInstall {
        disk: &req.disk,
        sizes: req.sizes,
        images: &release.images,
        systemd_boot: Path::new(SYSTEMD_BOOT),
        config_etc,
        hostname: Some(&hostname),
        mke2fs: &mke2fs,
        force: req.force,
    };
    let report = install_fresh(&p, &mut source, |step| {
        say(format!("{}: {}", req.disk.display(), step.describe()))
    })
    .map_err(|e| e.to_string())?;
    Ok((version, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_disk_comes_from_the_kernel_command_line() {
        assert_eq!(
            disk_from_cmdline("console=ttyS0 cairn.install=/dev/vda quiet"),
            Some(PathBuf::from("/dev/vda"))
        );
        assert_eq!(disk_from_cmdline("console=ttyS0 cairn.install="), None);
        assert_eq!(disk_from_cmdline("cairn.installer=x"), None);
    }
}
