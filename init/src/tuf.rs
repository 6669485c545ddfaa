//! PXE mode's trust: the rootfs must be the signed TUF target of this
//! image's version.
//!
//! The image build bakes the update repository's root metadata into the
//! initramfs ([`TRUSTED_ROOT`]); the boot script loads the repository's
//! current metadata as one more initrd (members under [`METADATA_DIR`],
//! `cairn-image tuf-initrd`). Stage 1 runs the same TUF client the agent
//! uses (cairn-tuf, spec section 5: root rotation, thresholds, versions,
//! expiry, snapshot and targets hashes) over those files, finds the target
//! `cairn/<version>/rootfs.erofs`, and hands its signed length and sha256 to
//! the rootfs check. Anything that does not verify stops the boot.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use cairn_tuf::{Config, FilesystemTransport, Updater};

use crate::InitError;

/// The update repository's root metadata, baked into the initramfs.
pub const TRUSTED_ROOT: &str = "/cairn/trust/tuf-root.json";
/// Where the metadata initrd puts the repository's metadata.
pub const METADATA_DIR: &str = "/cairn/tuf";
/// Where the client keeps the metadata it has verified (a tmpfs).
pub const WORK_DIR: &str = "/run/cairn/tuf";

/// What the repository signed for the rootfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRootfs {
    /// The target path (`cairn/<version>/rootfs.erofs`).
    pub target: String,
    /// Signed length in bytes.
    pub length: u64,
    /// Signed lower-case hex sha256.
    pub sha256: String,
    /// Version of the targets metadata that signed it.
    pub targets_version: u64,
    /// Version of the trusted root after any rotations.
    pub root_version: u64,
}

/// Verify the metadata under `metadata` against `trusted_root` at time
/// `now`, keeping verified metadata in `work`, and return the signed
/// rootfs target of `version`. Errors name the file and what to do.
pub fn signed_rootfs(
    trusted_root: &Path,
    metadata: &Path,
    work: &Path,
    version: &str,
    now: SystemTime,
) -> Result<SignedRootfs, InitError> {
    let fail = |m: String| InitError::Rootfs(m);
    if !metadata.join("timestamp.json").is_file() {
        return Err(fail(format!(
            "the initramfs trusts a TUF root ({}) but no TUF metadata was loaded ({}/timestamp.json is missing): add `initrd <base>/tuf.cpio` (made by `cairn-image tuf-initrd`) to the boot script",
            trusted_root.display(),
            metadata.display()
        )));
    }
    std::fs::create_dir_all(work).map_err(|e| fail(format!("creating {}: {e}", work.display())))?;
    std::fs::copy(trusted_root, work.join("root.json")).map_err(|e| {
        fail(format!(
            "copying the trusted root {} to {}: {e}",
            trusted_root.display(),
            work.display()
        ))
    })?;
    let config = Config {
        metadata_dir: work.to_path_buf(),
        metadata_base_url: metadata.display().to_string(),
        targets_base_url: metadata.display().to_string(),
        start_time: now,
        ..Config::default()
    };
    let refused = |e: cairn_tuf::Error| {
        fail(format!(
            "the TUF metadata in {} does not verify against the trusted root {}: {e}; refusing to boot (publish fresh metadata with `cairn-image tuf publish` and rebuild the boot files)",
            metadata.display(),
            trusted_root.display()
        ))
    };
    let mut updater = Updater::new(config, FilesystemTransport).map_err(refused)?;
    updater.refresh().map_err(refused)?;
    let os_version = cairn_slots::OsVersion::new(version)
        .map_err(|e| fail(format!("image version {version:?}: {e}")))?;
    let target =
        cairn_slots::release::target_name(&os_version, cairn_slots::release::Artifact::Root);
    let info = updater
        .get_target_info(&target)
        .map_err(refused)?
        .ok_or_else(|| {
            fail(format!(
                "OS version {version} is not signed by the update repository (no target {target} in the TUF metadata from {}): release it with `cairn-image release`",
                metadata.display()
            ))
        })?;
    let sha256 = info
        .hashes()
        .get("sha256")
        .cloned()
        .ok_or_else(|| fail(format!("TUF target {target} has no sha256 hash")))?;
    let targets_version = updater
        .trusted_targets("targets")
        .map(|t| t.common.version)
        .unwrap_or(0);
    Ok(SignedRootfs {
        target,
        length: info.length(),
        sha256,
        targets_version,
        root_version: updater.trusted_root().common.version,
    })
}

/// The paths stage 1 uses.
pub fn default_paths() -> (PathBuf, PathBuf, PathBuf) {
    (
        PathBuf::from(TRUSTED_ROOT),
        PathBuf::from(METADATA_DIR),
        PathBuf::from(WORK_DIR),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_tuf::repository::{InitOptions, Repository, TargetName};
    use std::time::{Duration, SystemTime};

    /// A signed repository with `rootfs` as version 0.1.0's root target,
    /// published; returns (published metadata dir, its trusted root).
    fn repo(dir: &Path, rootfs: &[u8]) -> (PathBuf, PathBuf) {
        let now = SystemTime::now();
        let src = dir.join("repo");
        let mut r = Repository::init(&src, None, &InitOptions::default(), now).unwrap();
        let file = dir.join("rootfs.erofs");
        std::fs::write(&file, rootfs).unwrap();
        r.add_target_file(
            &TargetName::new("cairn/0.1.0/rootfs.erofs").unwrap(),
            &file,
            None,
        )
        .unwrap();
        r.sign(&[]).unwrap();
        let www = dir.join("www");
        r.publish(&www).unwrap();
        (www.join("metadata"), www.join("metadata/1.root.json"))
    }

    #[test]
    fn the_signed_target_of_the_version_is_found() {
        let d = tempfile::tempdir().unwrap();
        let (md, root) = repo(d.path(), b"erofs bytes");
        let s = signed_rootfs(
            &root,
            &md,
            &d.path().join("work"),
            "0.1.0",
            SystemTime::now(),
        )
        .unwrap();
        assert_eq!(s.target, "cairn/0.1.0/rootfs.erofs");
        assert_eq!(s.length, 11);
        use sha2::Digest as _;
        assert_eq!(s.sha256, hex::encode(sha2::Sha256::digest(b"erofs bytes")));
        assert_eq!(s.targets_version, 2, "init signs v1, the release v2");
        assert_eq!(s.root_version, 1);
    }

    #[test]
    fn unsigned_versions_foreign_roots_expiry_and_missing_metadata_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let (md, root) = repo(d.path(), b"erofs bytes");
        let work = d.path().join("work");
        let now = SystemTime::now();

        let e = signed_rootfs(&root, &md, &work, "0.2.0", now)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("0.2.0 is not signed") && e.contains("cairn/0.2.0/rootfs.erofs"),
            "{e}"
        );

        // Metadata of another repository (other keys) against our root.
        let other = tempfile::tempdir().unwrap();
        let (other_md, _) = repo(other.path(), b"erofs bytes");
        let e = signed_rootfs(&root, &other_md, &work, "0.1.0", now)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("does not verify against the trusted root"),
            "{e}"
        );

        // The timestamp (1 day) has expired a week from now.
        let later = now + Duration::from_secs(7 * 86_400);
        let e = signed_rootfs(&root, &md, &work, "0.1.0", later)
            .unwrap_err()
            .to_string();
        assert!(e.contains("expired"), "{e}");

        let e = signed_rootfs(&root, &d.path().join("none"), &work, "0.1.0", now)
            .unwrap_err()
            .to_string();
        assert!(e.contains("tuf.cpio") && e.contains("boot script"), "{e}");
    }
}
