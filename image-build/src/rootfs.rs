//! The root filesystem: mkosi's tree, trimmed, plus cairn's units, binaries
//! and container images, packed as a compressed erofs image.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::oci;
use crate::{io, run, ImageError, Result};

/// What goes into the image besides the mkosi tree.
pub struct RootfsInputs<'a> {
    pub base_tree: &'a Path,
    pub repo_root: &'a Path,
    /// Directory with the pinned Kubernetes binaries.
    pub kube_bin: &'a Path,
    /// cairn's own stage-2 binaries (cairn-agent, cairnctl).
    pub cairn_bins: Vec<PathBuf>,
    pub version: &'a str,
    /// Scratch space (the staged tree lives here).
    pub work: &'a Path,
    /// Where the artifacts go.
    pub out: &'a Path,
}

/// The built root filesystem.
pub struct Rootfs {
    pub image: PathBuf,
    pub sha256: String,
    pub size: u64,
    pub kernel_release: String,
    pub vmlinuz: PathBuf,
    /// The staged tree (its `lib/modules` feeds the initramfs).
    pub staging: PathBuf,
}

/// Paths removed from the tree: not needed on a node, or replaced at boot
/// (`/var` is a fresh tmpfs or the STATE partition). `{kver}` is the kernel release.
pub const TRIM: &[&str] = &[
    "boot",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "var/cache/apt",
    "var/cache/debconf",
    "var/lib/apt/lists",
    "var/log",
    "usr/lib/modules/{kver}/kernel/sound",
    "usr/lib/modules/{kver}/kernel/drivers/gpu",
    "usr/lib/modules/{kver}/kernel/drivers/media",
    "usr/lib/modules/{kver}/kernel/drivers/staging",
    "usr/lib/modules/{kver}/kernel/drivers/infiniband",
    "usr/lib/modules/{kver}/kernel/drivers/net/wireless",
    "usr/lib/modules/{kver}/kernel/drivers/bluetooth",
    "usr/lib/modules/{kver}/kernel/drivers/iio",
    "usr/lib/modules/{kver}/kernel/drivers/input/touchscreen",
    "usr/lib/modules/{kver}/kernel/net/wireless",
    "usr/lib/modules/{kver}/kernel/net/mac80211",
    "usr/lib/modules/{kver}/kernel/net/bluetooth",
];

/// Units switched on (`unit`, `target.wants`), as `systemctl enable` would.
pub const ENABLE: &[(&str, &str)] = &[
    ("systemd-networkd.service", "multi-user.target.wants"),
    ("systemd-networkd.socket", "sockets.target.wants"),
    (
        "systemd-networkd-wait-online.service",
        "network-online.target.wants",
    ),
    ("systemd-resolved.service", "multi-user.target.wants"),
    ("etcd.service", "multi-user.target.wants"),
    ("containerd.service", "multi-user.target.wants"),
    ("cairn-images.service", "multi-user.target.wants"),
    ("kube-apiserver.service", "multi-user.target.wants"),
    ("kube-controller-manager.service", "multi-user.target.wants"),
    ("kube-scheduler.service", "multi-user.target.wants"),
    ("kubelet.service", "multi-user.target.wants"),
    ("cairn-agent.service", "multi-user.target.wants"),
    ("cairn-trial-watchdog.service", "multi-user.target.wants"),
    ("cairn-install.service", "multi-user.target.wants"),
];

/// Units masked: no login prompts on a node, nothing that expects a package manager.
pub const MASK: &[&str] = &[
    "getty@.service",
    "serial-getty@.service",
    "console-getty.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "e2scrub_all.timer",
];

/// Kubernetes binaries installed from the pinned set.
pub const KUBE_BINARIES: &[&str] = &[
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
];

fn kernel_release(tree: &Path) -> Result<String> {
    let boot = tree.join("boot");
    let mut found = Vec::new();
    for e in std::fs::read_dir(&boot).map_err(io(&boot))? {
        let name = e
            .map_err(io(&boot))?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if let Some(r) = name.strip_prefix("vmlinuz-") {
            found.push(r.to_string());
        }
    }
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(ImageError::Invalid(format!(
            "no kernel in {}: mkosi.conf must install linux-image-amd64",
            boot.display()
        ))),
        many => Err(ImageError::Invalid(format!(
            "several kernels in {} ({}): keep exactly one",
            boot.display(),
            many.join(", ")
        ))),
    }
}

fn remove(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(_) => Ok(()),
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path).map_err(io(path)),
        Ok(_) => std::fs::remove_file(path).map_err(io(path)),
    }
}

fn symlink(target: &str, link: &Path) -> Result<()> {
    if let Some(p) = link.parent() {
        std::fs::create_dir_all(p).map_err(io(p))?;
    }
    remove(link)?;
    std::os::unix::fs::symlink(target, link).map_err(io(link))
}

fn install(from: &Path, to: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(p) = to.parent() {
        std::fs::create_dir_all(p).map_err(io(p))?;
    }
    std::fs::copy(from, to).map_err(io(from))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode)).map_err(io(to))
}

pub(crate) fn os_release(version: &str) -> String {
    format!(
        "NAME=\"cairn\"\nPRETTY_NAME=\"cairn {version}\"\nID=cairn\nID_LIKE=debian\nVERSION=\"{version}\"\nVERSION_ID={version}\nHOME_URL=\"https://cairn.invalid/\"\n"
    )
}

/// Stage the tree and pack it.
pub fn build(inp: &RootfsInputs) -> Result<Rootfs> {
    let staging = inp.work.join("rootfs");
    remove(&staging)?;
    std::fs::create_dir_all(inp.work).map_err(io(inp.work))?;
    std::fs::create_dir_all(inp.out).map_err(io(inp.out))?;
    log::info!("staging the root tree in {}", staging.display());
    run(Command::new("cp")
        .arg("-a")
        .arg("--reflink=auto")
        .arg(inp.base_tree)
        .arg(&staging))?;

    let kver = kernel_release(&staging)?;
    let vmlinuz = inp.out.join("vmlinuz");
    std::fs::copy(staging.join(format!("boot/vmlinuz-{kver}")), &vmlinuz).map_err(io(&vmlinuz))?;

    for t in TRIM {
        remove(&staging.join(t.replace("{kver}", &kver)))?;
    }
    std::fs::create_dir_all(staging.join("var")).map_err(io(staging.join("var")))?;
    run(Command::new("depmod").arg("-b").arg(&staging).arg(&kver))?;

    // cairn's own files (units, configs) over the tree
    let overlay = inp.repo_root.join("image-build/rootfs");
    run(Command::new("cp")
        .arg("-a")
        .arg("--no-preserve=ownership")
        .arg(format!("{}/.", overlay.display()))
        .arg(&staging))?;

    for b in KUBE_BINARIES {
        install(
            &inp.kube_bin.join(b),
            &staging.join("usr/bin").join(b),
            0o755,
        )?;
    }
    for b in &inp.cairn_bins {
        let name = b
            .file_name()
            .ok_or_else(|| ImageError::Invalid(format!("{}: not a file", b.display())))?;
        install(b, &staging.join("usr/bin").join(name), 0o755)?;
    }

    // the baked policy set: the floor every rendered object is checked against
    let policies = staging.join("usr/share/cairn/policies");
    std::fs::create_dir_all(&policies).map_err(io(&policies))?;
    run(Command::new("cp")
        .arg("-a")
        .arg("--no-preserve=ownership")
        .arg(format!("{}/.", inp.repo_root.join("policies").display()))
        .arg(&policies))?;

    let images = staging.join("usr/share/cairn/images");
    std::fs::create_dir_all(&images).map_err(io(&images))?;
    let pause = oci::pause_image(inp.repo_root, inp.work)?;
    oci::write_docker_archive(&pause, &images.join("pause.tar"))?;
    oci::write_docker_archive(&oci::hello_image(inp.repo_root)?, &images.join("hello.tar"))?;

    let sysd = staging.join("etc/systemd/system");
    for (unit, wants) in ENABLE {
        let target = if staging.join("etc/systemd/system").join(unit).exists() {
            format!("/etc/systemd/system/{unit}")
        } else {
            format!("/usr/lib/systemd/system/{unit}")
        };
        symlink(&target, &sysd.join(wants).join(unit))?;
    }
    for unit in MASK {
        symlink("/dev/null", &sysd.join(unit))?;
    }
    let osr = staging.join("usr/lib/os-release");
    remove(&osr)?;
    std::fs::write(&osr, os_release(inp.version)).map_err(io(&osr))?;
    let version_file = staging.join("usr/lib/cairn/version");
    std::fs::create_dir_all(version_file.parent().expect("parent")).map_err(io(&version_file))?;
    std::fs::write(&version_file, format!("{}\n", inp.version)).map_err(io(&version_file))?;
    // machine-id is generated on first boot
    std::fs::write(staging.join("etc/machine-id"), b"")
        .map_err(io(staging.join("etc/machine-id")))?;

    let image = inp.out.join("rootfs.erofs");
    remove(&image)?;
    log::info!("packing {} as erofs", image.display());
    run(Command::new("mkfs.erofs")
        .arg("-zlz4hc")
        .arg("-T0")
        .arg("--quiet")
        .arg(&image)
        .arg(&staging))?;
    let (sha256, size) = crate::sha256_file(&image)?;
    Ok(Rootfs {
        image,
        sha256,
        size,
        kernel_release: kver,
        vmlinuz,
        staging,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_enabled_unit_is_shipped_or_comes_from_debian() {
        let root = crate::default_repo_root().join("image-build/rootfs");
        let ours = [
            "etcd.service",
            "cairn-images.service",
            "kube-apiserver.service",
            "kube-controller-manager.service",
            "kube-scheduler.service",
            "kubelet.service",
            "cairn-agent.service",
            "cairn-trial-watchdog.service",
        ];
        for u in ours {
            let shipped = root.join("usr/lib/systemd/system").join(u).exists()
                || root.join("etc/systemd/system").join(u).exists();
            assert!(shipped, "{u} is enabled but not in image-build/rootfs");
            assert!(
                ENABLE.iter().any(|(e, _)| *e == u),
                "{u} shipped but not enabled"
            );
        }
    }

    #[test]
    fn kernel_release_needs_exactly_one_kernel() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("boot")).unwrap();
        assert!(kernel_release(d.path()).is_err());
        std::fs::write(d.path().join("boot/vmlinuz-6.1.0-1-amd64"), b"").unwrap();
        assert_eq!(kernel_release(d.path()).unwrap(), "6.1.0-1-amd64");
        std::fs::write(d.path().join("boot/vmlinuz-6.1.0-2-amd64"), b"").unwrap();
        assert!(kernel_release(d.path())
            .unwrap_err()
            .to_string()
            .contains("several"));
    }

    #[test]
    fn os_release_names_the_version() {
        assert!(os_release("1.2.3").contains("VERSION_ID=1.2.3"));
    }
}
