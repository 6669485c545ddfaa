//! `cairn-image release`: sign one OS version into the TUF repository as
//! the four targets nodes install from (`cairn_slots::release`): the erofs
//! root, its dm-verity hash tree, and a UKI per slot whose command line
//! carries the slot, the version and the verity root hash.
//!
//! Input is a `cairn-image build` output directory (`vmlinuz`,
//! `initramfs.cpio.gz`, `rootfs.erofs`). The hash tree is computed here
//! (`veritysetup format`, a fresh salt), so the root hash in both UKIs and
//! in every target's signed `custom.verity_root_hash` is the one of the
//! published tree. Targets are staged and signed (targets, snapshot,
//! timestamp) in one step; `cairn-image tuf publish` then copies the
//! repository to the web server.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use cairn_slots::release::{all_artifacts, target_name, Artifact};
use cairn_slots::{OsVersion, Slot};
use cairn_tuf::repository::{image_custom, Repository, TargetName};
use cairn_tuf::ImageMetadata;

use crate::disk::{build_uki_with_args, verity_format};
use crate::{io, ImageError, Result};

/// What [`release`] needs.
pub struct ReleaseInputs<'a> {
    /// The TUF repository working directory (`cairn-image tuf init`).
    pub repo: &'a Path,
    /// Its private keys (default `repo/keys`).
    pub keys: Option<&'a Path>,
    /// The version being published.
    pub version: &'a OsVersion,
    /// A `cairn-image build` output directory of that version.
    pub from: &'a Path,
    /// Kernel arguments appended to both UKIs' command lines.
    pub extra_cmdline: &'a [String],
    /// Scratch directory for the hash tree and the UKIs (kept: they are the
    /// published files).
    pub work: &'a Path,
}

/// What was signed.
#[derive(Debug, Clone)]
pub struct Released {
    /// Target names, in [`all_artifacts`] order.
    pub targets: Vec<String>,
    /// The dm-verity root hash in every UKI.
    pub verity_root_hash: String,
    /// The artifact files as signed.
    pub files: Vec<PathBuf>,
}

/// `cairn-image release`: parse the version, default the work directory to
/// `FROM/release-VERSION`, release.
pub fn release_command(
    repo: &Path,
    keys: Option<&Path>,
    from: &Path,
    version: &str,
    kernel_args: &[String],
    work: Option<&Path>,
) -> Result<Released> {
    let v = OsVersion::new(version)
        .map_err(|e| ImageError::Invalid(format!("--version {version:?}: {e}")))?;
    let default_work = from.join(format!("release-{version}"));
    release(&ReleaseInputs {
        repo,
        keys,
        version: &v,
        from,
        extra_cmdline: kernel_args,
        work: work.unwrap_or(&default_work),
    })
}

/// Build the hash tree and both UKIs, add the four targets, sign.
pub fn release(inp: &ReleaseInputs) -> Result<Released> {
    let rootfs = inp.from.join("rootfs.erofs");
    let kernel = inp.from.join("vmlinuz");
    let initramfs = inp.from.join("initramfs.cpio.gz");
    for f in [&rootfs, &kernel, &initramfs] {
        if !f.is_file() {
            return Err(ImageError::Invalid(format!(
                "{} is missing: --from must be a `cairn-image build` output directory",
                f.display()
            )));
        }
    }
    std::fs::create_dir_all(inp.work).map_err(io(inp.work))?;
    let verity = inp.work.join("rootfs.verity");
    let vp = verity_format(&rootfs, &verity)?;
    let uki = |slot: Slot| inp.work.join(Artifact::Uki(slot).file_name());
    for slot in [Slot::A, Slot::B] {
        build_uki_with_args(
            slot,
            inp.version,
            &vp.root_hash,
            inp.extra_cmdline,
            &kernel,
            &initramfs,
            &uki(slot),
        )?;
    }
    let mut repo = Repository::open(inp.repo, inp.keys, SystemTime::now())
        .map_err(|e| ImageError::Invalid(format!("TUF repository {}: {e}", inp.repo.display())))?;
    let custom = image_custom(&ImageMetadata {
        version: Some(inp.version.as_str().to_string()),
        verity_root_hash: Some(vp.root_hash.clone()),
        ..Default::default()
    });
    let mut targets = Vec::new();
    let mut files = Vec::new();
    for a in all_artifacts() {
        let file = match a {
            Artifact::Root => rootfs.clone(),
            Artifact::Verity => verity.clone(),
            Artifact::Uki(slot) => uki(slot),
        };
        let name = target_name(inp.version, a);
        let tn = TargetName::new(&name).map_err(|e| ImageError::Invalid(e.to_string()))?;
        repo.add_target_file(&tn, &file, Some(custom.clone()))
            .map_err(|e| ImageError::Invalid(format!("adding {name}: {e}")))?;
        targets.push(name);
        files.push(file);
    }
    repo.sign(&[])
        .map_err(|e| ImageError::Invalid(format!("signing: {e}")))?;
    Ok(Released {
        targets,
        verity_root_hash: vp.root_hash,
        files,
    })
}

/// Sign only `version`'s root filesystem target, as an entry (the repository
/// does not store the file). For PXE fleets: the rootfs travels inside
/// `rootfs.cpio` from the boot server and stage 1 checks it against this
/// target; an A/B update to the version still needs a full [`release`].
/// Returns the target name.
pub fn sign_rootfs(
    repo: &Path,
    keys: Option<&Path>,
    version: &OsVersion,
    rootfs: &Path,
) -> Result<String> {
    let (sha256, len) = crate::sha256_file(rootfs)?;
    let mut r = Repository::open(repo, keys, SystemTime::now())
        .map_err(|e| ImageError::Invalid(format!("TUF repository {}: {e}", repo.display())))?;
    let name = target_name(version, Artifact::Root);
    let tn = TargetName::new(&name).map_err(|e| ImageError::Invalid(e.to_string()))?;
    let custom = image_custom(&ImageMetadata {
        version: Some(version.as_str().to_string()),
        ..Default::default()
    });
    r.add_target_entry(&tn, len, &sha256, Some(custom))
        .map_err(|e| ImageError::Invalid(format!("adding {name}: {e}")))?;
    r.sign(&[])
        .map_err(|e| ImageError::Invalid(format!("signing: {e}")))?;
    Ok(name)
}
