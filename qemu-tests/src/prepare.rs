//! Everything the guest needs, built or fetched once and cached.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

fn run(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("starting {shown}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(30).collect();
        bail!(
            "{shown} failed ({}):\n{}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// apt packages (QEMU from bookworm-backports, mkosi, etcd, Go…).
pub fn host_packages(repo: &Path) -> Result<()> {
    run(Command::new("bash").arg(repo.join("image-build/scripts/install-deps.sh")))?;
    Ok(())
}

/// The pinned Kubernetes binaries' directory (built once per machine).
pub fn kube_binaries(repo: &Path) -> Result<PathBuf> {
    let out = run(Command::new("bash").arg(repo.join("image-build/scripts/kubernetes.sh")))?;
    let dir = out.lines().last().map(str::trim).unwrap_or_default();
    if dir.is_empty() || !Path::new(dir).is_dir() {
        bail!("kubernetes.sh printed no binary directory (got {out:?})");
    }
    Ok(PathBuf::from(dir))
}

/// cairn's binaries for the guest.
pub struct GuestBinaries {
    pub init: PathBuf,
    pub agent: PathBuf,
    pub cairnctl: PathBuf,
}

/// Linker flags of the agent and cairnctl as the image ships them.
pub const GUEST_AGENT_RUSTFLAGS: &str = "-C link-arg=-Wl,-z,pack-relative-relocs";

/// Build the guest binaries in their own target dir (so this never waits
/// on the cargo lock of the build that is running us).
pub fn guest_binaries(repo: &Path) -> Result<GuestBinaries> {
    let target = repo.join("target/guest");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // The agent and cairnctl: PIE with packed relative relocations
    // (DT_RELR, glibc >= 2.36): the loader reads ~20 KiB of relocations
    // instead of 1.4 MiB of .rela.dyn, a resident-set saving measured by
    // the agent-rss tier. `--target` keeps the flag off proc macros; its
    // own target dir keeps it from invalidating stage 1's build.
    let agent_target = repo.join("target/guest-relr");
    run(Command::new(&cargo)
        .current_dir(repo)
        .env("CARGO_TARGET_DIR", &agent_target)
        .env("RUSTFLAGS", GUEST_AGENT_RUSTFLAGS)
        .args([
            "build",
            "--profile",
            "guest",
            "--locked",
            "-p",
            "cairn-agent",
            "--target",
            "x86_64-unknown-linux-gnu",
        ]))?;
    // stage 1 is PID 1 in an initramfs without a libc: link it statically
    run(Command::new(&cargo)
        .current_dir(repo)
        .env("CARGO_TARGET_DIR", &target)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .args([
            "build",
            "--profile",
            "guest",
            "--locked",
            "-p",
            "cairn-init",
            "--target",
            "x86_64-unknown-linux-gnu",
        ]))?;
    Ok(GuestBinaries {
        init: target.join("x86_64-unknown-linux-gnu/guest/cairn-init"),
        agent: agent_target.join("x86_64-unknown-linux-gnu/guest/cairn-agent"),
        cairnctl: agent_target.join("x86_64-unknown-linux-gnu/guest/cairnctl"),
    })
}

/// The demo signing key (generated once per machine, never committed) and
/// an allowed_signers file that trusts it for git.
pub struct DemoKey {
    pub private_key: PathBuf,
    pub allowed_signers: PathBuf,
    pub principal: String,
}

pub fn demo_key() -> Result<DemoKey> {
    let dir = cairn_image::cache_dir().join("demo-key");
    std::fs::create_dir_all(&dir)?;
    let key = dir.join("id_ed25519");
    let principal = "cairn-demo@example.invalid".to_string();
    if !key.exists() {
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", &principal, "-f"])
            .arg(&key))?;
    }
    let public = std::fs::read_to_string(dir.join("id_ed25519.pub"))?;
    let allowed = dir.join("allowed_signers");
    let mut parts = public.split_whitespace();
    let (kt, kb) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    std::fs::write(
        &allowed,
        format!("{principal} namespaces=\"git\" {kt} {kb}\n"),
    )?;
    Ok(DemoKey {
        private_key: key,
        allowed_signers: allowed,
        principal,
    })
}

/// The demo's update repository (TUF), made once per machine: its root is
/// baked into the image's initramfs, and PXE boots verify the rootfs
/// against what it signs.
pub struct DemoTuf {
    /// The repository working directory (keys under `repo/keys`).
    pub repo: PathBuf,
    /// Its current root metadata (what the image trusts).
    pub root: PathBuf,
}

/// A PXE directory `out/pxe` served over HTTP for one node.
pub struct PxeDir {
    /// The directory.
    pub dir: PathBuf,
    /// Its server (stops when dropped).
    pub http: crate::servers::HttpServer,
}

/// What goes into a [`PxeDir`].
pub struct PxeBoot<'a> {
    /// Kernel, stage-1 initramfs and rootfs initrd.
    pub vmlinuz: &'a Path,
    pub initramfs: &'a Path,
    pub rootfs_initrd: &'a Path,
    /// The rootfs image the demo update repository signs as `version`.
    pub rootfs: &'a Path,
    pub version: &'a str,
    /// The node's configuration tree (becomes `config.cpio`).
    pub config: &'a Path,
    /// Kernel arguments besides the PXE ones.
    pub extra_args: &'a [String],
}

impl DemoTuf {
    /// Sign `b.rootfs` as `b.version` in the demo update repository, and
    /// lay out a PXE directory whose `tuf.cpio` carries that metadata
    /// (stage 1 checks the rootfs against it), the node configuration and
    /// `boot.ipxe`; serve it over HTTP.
    pub fn pxe_dir(&self, out: &Path, b: &PxeBoot) -> Result<PxeDir> {
        let dir = out.join("pxe");
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        for (name, src) in [
            ("vmlinuz", b.vmlinuz),
            ("initramfs.cpio.gz", b.initramfs),
            ("rootfs.cpio", b.rootfs_initrd),
        ] {
            std::os::unix::fs::symlink(std::fs::canonicalize(src)?, dir.join(name))?;
        }
        let version = cairn_slots::OsVersion::new(b.version)?;
        cairn_image::release::sign_rootfs(&self.repo, None, &version, b.rootfs)
            .context("signing the rootfs in the demo TUF repository")?;
        let www = out.join("demo-tuf-www");
        if www.exists() {
            std::fs::remove_dir_all(&www)?;
        }
        cairn_tuf::repository::Repository::open(&self.repo, None, std::time::SystemTime::now())?
            .publish(&www)?;
        cairn_image::pxe::tuf_initrd(&www.join("metadata"), &dir.join("tuf.cpio"))?;
        cairn_image::pxe::config_initrd(b.config, &dir.join("config.cpio"))?;
        let http = crate::servers::HttpServer::start(&dir)?;
        std::fs::write(
            dir.join("boot.ipxe"),
            cairn_image::pxe::ipxe_script(&cairn_image::pxe::BootScript {
                base_url: &format!("http://10.0.2.2:{}", http.port),
                version: b.version,
                config_initrd: "config.cpio",
                tuf_initrd: Some("tuf.cpio"),
                extra_args: b.extra_args,
            }),
        )?;
        Ok(PxeDir { dir, http })
    }
}

pub fn demo_tuf() -> Result<DemoTuf> {
    let repo = cairn_image::cache_dir().join("demo-tuf");
    let root = repo.join("metadata/root.json");
    if !root.exists() {
        if repo.exists() {
            std::fs::remove_dir_all(&repo)?;
        }
        let days = cairn_tuf::repository::ExpiryDays {
            root: 3650,
            targets: 365,
            snapshot: 30,
            timestamp: 7,
        };
        cairn_tuf::repository::Repository::init(
            &repo,
            None,
            &cairn_tuf::repository::InitOptions {
                expiry: days,
                ..Default::default()
            },
            std::time::SystemTime::now(),
        )
        .context("creating the demo TUF repository")?;
    }
    Ok(DemoTuf { repo, root })
}

/// A fingerprint over the files an image is built from.
fn fingerprint(paths: &[PathBuf], extra: &str) -> Result<String> {
    let mut all = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut stack = vec![p.clone()];
            while let Some(d) = stack.pop() {
                let mut entries: Vec<_> =
                    std::fs::read_dir(&d)?.flatten().map(|e| e.path()).collect();
                entries.sort();
                for e in entries {
                    if e.is_dir() {
                        stack.push(e);
                    } else {
                        all.push(e);
                    }
                }
            }
        } else {
            all.push(p.clone());
        }
    }
    all.sort();
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(extra.as_bytes());
    for f in all {
        let (sha, _) = cairn_image::sha256_file(&f)?;
        h.update(format!("{} {sha}\n", f.display()).as_bytes());
    }
    Ok(hex::encode(h.finalize()))
}

/// Where the QEMU tiers and the demo keep the built image (shared, so it is
/// built once per change).
pub fn shared_image_dir() -> PathBuf {
    crate::repo_root().join("out/image")
}

/// Build the image into `out`, or reuse the one there when nothing it is
/// built from has changed.
pub fn image(
    repo: &Path,
    out: &Path,
    version: &str,
    kube_bin: &Path,
    bins: &GuestBinaries,
    key: &DemoKey,
    tuf_root: &Path,
) -> Result<(cairn_image::Built, bool)> {
    let inputs = vec![
        tuf_root.to_path_buf(),
        repo.join("mkosi.conf"),
        repo.join("image-build/rootfs"),
        repo.join("image-build/oci"),
        repo.join("policies"),
        kube_bin.to_path_buf(),
        bins.init.clone(),
        bins.agent.clone(),
        bins.cairnctl.clone(),
        key.allowed_signers.clone(),
    ];
    let fp = fingerprint(&inputs, version)?;
    let stamp = out.join("fingerprint");
    let built = |out: &Path| cairn_image::Built {
        vmlinuz: out.join("vmlinuz"),
        initramfs: out.join("initramfs.cpio.gz"),
        rootfs_image: out.join("rootfs.erofs"),
        rootfs_initrd: out.join("rootfs.cpio"),
        rootfs_sha256: String::new(),
        kernel_release: String::new(),
        version: version.to_string(),
    };
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(fp.as_str()) {
        let b = built(out);
        if [&b.vmlinuz, &b.initramfs, &b.rootfs_initrd]
            .iter()
            .all(|p| p.exists())
        {
            return Ok((b, true));
        }
    }
    let _ = std::fs::remove_file(&stamp);
    std::fs::create_dir_all(out)?;
    let b = cairn_image::build_image(&cairn_image::BuildInputs {
        repo_root: repo,
        out,
        version,
        kube_bin,
        init_binary: &bins.init,
        cairn_bins: vec![bins.agent.clone(), bins.cairnctl.clone()],
        allowed_signers: &key.allowed_signers,
        tuf_root: Some(tuf_root),
    })?;
    std::fs::write(&stamp, &fp)?;
    Ok((b, false))
}
