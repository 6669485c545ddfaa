//! `cairn-image`: turns the mkosi root tree plus cairn's own binaries into the
//! artifacts a node boots from.
//!
//! - [`rootfs`]: the staged root tree (trimmed, cairn's units and binaries
//!   added) packed as erofs, with its sha256 recorded in the manifest;
//! - [`initramfs`]: `cairn-init` as `/init`, the modules stage 1 loads, the
//!   manifest and the trust anchors, as a newc cpio;
//! - [`oci`]: the container images pods need, built locally (no registry);
//! - [`pki`]: a cluster's certificates and kubeconfigs;
//! - [`pxe`]: the iPXE script and the per-node configuration initrd;
//! - [`disk`]: disk mode: the dm-verity hash tree, one UKI per slot and
//!   version, and the GPT disk image (`cairn-image disk`).

pub mod cli;
pub mod cpio;
pub mod disk;
pub mod initramfs;
pub mod mkosi;
pub mod oci;
pub mod pki;
pub mod pxe;
pub mod release;
pub mod rootfs;

use std::path::{Path, PathBuf};
use std::process::Command;

/// Errors name the file or command involved and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("`{command}` could not be started: {source} (is it installed? run image-build/scripts/install-deps.sh)")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate generation: {0}")]
    Pki(String),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, ImageError>;

pub(crate) fn io(path: impl AsRef<Path>) -> impl FnOnce(std::io::Error) -> ImageError {
    let path = path.as_ref().to_path_buf();
    move |source| ImageError::Io { path, source }
}

/// Run a command to completion; its stderr goes into the error on failure.
pub(crate) fn run(cmd: &mut Command) -> Result<String> {
    let command = format!("{cmd:?}");
    log::debug!("running {command}");
    let out = cmd.output().map_err(|source| ImageError::Spawn {
        command: command.clone(),
        source,
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
        return Err(ImageError::Command {
            command,
            status: out.status.to_string(),
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The checkout this tool was built from (holds `mkosi.conf` and `image-build/rootfs`).
pub fn default_repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// sha256 of a file, streamed; returns (hex, length).
pub fn sha256_file(path: &Path) -> Result<(String, u64)> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        len += n as u64;
    }
    Ok((hex::encode(h.finalize()), len))
}

/// The cache directory for expensive, reusable build inputs.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"))
        .join("cairn")
}

/// Everything [`build_image`] needs.
pub struct BuildInputs<'a> {
    pub repo_root: &'a Path,
    pub out: &'a Path,
    pub version: &'a str,
    pub kube_bin: &'a Path,
    pub init_binary: &'a Path,
    pub cairn_bins: Vec<PathBuf>,
    pub allowed_signers: &'a Path,
    /// The update repository's TUF root, baked in as the trust root for OS
    /// images (stage 2 finds it at /run/cairn/trust/tuf-root.json).
    pub tuf_root: Option<&'a Path>,
}

/// The artifacts of one image build.
pub struct Built {
    pub vmlinuz: PathBuf,
    pub initramfs: PathBuf,
    pub rootfs_image: PathBuf,
    pub rootfs_initrd: PathBuf,
    pub rootfs_sha256: String,
    pub kernel_release: String,
    pub version: String,
}

impl Built {
    pub fn summary(&self) -> serde_json::Value {
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        serde_json::json!({
            "version": self.version,
            "kernel": self.kernel_release,
            "vmlinuz": { "path": self.vmlinuz, "bytes": size(&self.vmlinuz) },
            "initramfs": { "path": self.initramfs, "bytes": size(&self.initramfs) },
            "rootfs": { "path": self.rootfs_image, "bytes": size(&self.rootfs_image), "sha256": self.rootfs_sha256 },
        })
    }
}

/// mkosi tree → staged rootfs → erofs → initramfs, all into `out`.
pub fn build_image(inp: &BuildInputs) -> Result<Built> {
    let cache = cache_dir();
    let base = mkosi::base_tree(&inp.repo_root.join("mkosi.conf"), &cache)?;
    let work = inp.out.join("work");
    let rootfs = rootfs::build(&rootfs::RootfsInputs {
        base_tree: &base,
        repo_root: inp.repo_root,
        kube_bin: inp.kube_bin,
        cairn_bins: inp.cairn_bins.clone(),
        version: inp.version,
        work: &work,
        out: inp.out,
    })?;
    let signers = std::fs::read(inp.allowed_signers).map_err(io(inp.allowed_signers))?;
    let mut trust = vec![("allowed_signers".to_string(), signers)];
    if let Some(root) = inp.tuf_root {
        trust.push((
            "tuf-root.json".into(),
            std::fs::read(root).map_err(io(root))?,
        ));
    }
    let initramfs = initramfs::build(&initramfs::InitramfsInputs {
        init_binary: inp.init_binary,
        rootfs: &rootfs,
        version: inp.version,
        trust,
        out: inp.out,
    })?;
    let rootfs_initrd = initramfs::rootfs_initrd(&rootfs, inp.out)?;
    std::fs::remove_dir_all(&work).map_err(io(&work))?;
    Ok(Built {
        vmlinuz: rootfs.vmlinuz.clone(),
        initramfs,
        rootfs_image: rootfs.image.clone(),
        rootfs_initrd,
        rootfs_sha256: rootfs.sha256.clone(),
        kernel_release: rootfs.kernel_release.clone(),
        version: inp.version.to_string(),
    })
}

/// How `cairn-image disk` gets the image it lays out: an existing build
/// directory, or a fresh build from these inputs.
#[derive(Debug, Clone, Default)]
pub struct DiskImageSource {
    pub from: Option<PathBuf>,
    pub kube_bin: Option<PathBuf>,
    pub init: Option<PathBuf>,
    pub bins: Vec<PathBuf>,
    pub allowed_signers: Option<PathBuf>,
    pub tuf_root: Option<PathBuf>,
    pub repo: Option<PathBuf>,
}

/// `cairn-image disk`: build (or reuse) the image of `version`, then the
/// GPT disk in `out`.
pub fn disk_command(
    version: &str,
    src: DiskImageSource,
    sizes: disk::DiskSizes,
    config: Option<&Path>,
    out: &Path,
) -> Result<disk::DiskBuilt> {
    let os_version = cairn_slots::OsVersion::new(version)
        .map_err(|e| ImageError::Invalid(format!("--version {version:?}: {e}")))?;
    let built_dir = match src.from {
        Some(dir) => dir,
        None => {
            let need = |o: Option<PathBuf>, flag: &str| {
                o.ok_or_else(|| ImageError::Invalid(format!("{flag} is required without --from")))
            };
            if src.bins.is_empty() {
                return Err(ImageError::Invalid(
                    "--bin is required without --from".into(),
                ));
            }
            let repo = src.repo.unwrap_or_else(default_repo_root);
            build_image(&BuildInputs {
                repo_root: &repo,
                out,
                version,
                kube_bin: &need(src.kube_bin, "--kube-bin")?,
                init_binary: &need(src.init, "--init")?,
                cairn_bins: src.bins,
                allowed_signers: &need(src.allowed_signers, "--allowed-signers")?,
                tuf_root: src.tuf_root.as_deref(),
            })?;
            out.to_path_buf()
        }
    };
    disk::build_disk_from_image_dir(&os_version, &built_dir, sizes, config, out)
}
