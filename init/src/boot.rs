//! The stage-1 boot sequence: early mounts, modules, verified root, state,
//! switch_root. Each step is a function over [`Sys`], so the whole sequence
//! runs against a recording fake in unit tests.

use crate::cmdline::{Cmdline, Mode};
use crate::disk;
use crate::manifest::{Manifest, MANIFEST_PATH};
use crate::modules::ModuleIndex;
use crate::sys::{join, Mount, MountFlags, Sys};
use crate::InitError;

/// Where the new root is assembled.
pub const SYSROOT: &str = "/sysroot";
/// The writable state (tmpfs in PXE mode): `/etc` upper dir and `/var`.
pub const STATE: &str = "/state";
/// Trust anchors baked into the initramfs; handed to stage 2 in `/run/cairn/trust`.
pub const TRUST_DIR: &str = "/cairn/trust";
/// Node/cluster configuration delivered beside the image (an `etc/` tree).
pub const CONFIG_DIR: &str = "/cairn/config";
/// Where stage 2 finds the configuration tree PXE delivered (`etc/…`),
/// unchanged: `/run` moves into the new root.
pub const KEPT_CONFIG: &str = "/run/cairn/config";

fn m(source: &str, target: &str, fstype: &str, flags: MountFlags, data: Option<&str>) -> Mount {
    Mount {
        source: source.into(),
        target: target.into(),
        fstype: Some(fstype.into()),
        flags,
        data: data.map(str::to_string),
    }
}

/// The early API filesystems, applied in order by [`early_mounts`].
pub fn early_mount_table() -> Vec<Mount> {
    let secure = MountFlags {
        nosuid: true,
        nodev: true,
        noexec: true,
        ..Default::default()
    };
    vec![
        m("proc", "/proc", "proc", secure, None),
        m("sysfs", "/sys", "sysfs", secure, None),
        m(
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MountFlags {
                nosuid: true,
                ..Default::default()
            },
            Some("mode=0755"),
        ),
        m(
            "tmpfs",
            "/run",
            "tmpfs",
            MountFlags {
                nosuid: true,
                nodev: true,
                ..Default::default()
            },
            Some("mode=0755"),
        ),
    ]
}

/// Mount the table; targets that are mount points already are left alone,
/// so running it twice changes nothing.
pub fn early_mounts(sys: &mut dyn Sys) -> Result<(), InitError> {
    for mnt in early_mount_table() {
        if sys.is_mountpoint(&mnt.target) {
            continue;
        }
        sys.mkdir_all(&mnt.target)?;
        sys.mount(&mnt)?;
    }
    Ok(())
}

/// Load the manifest's modules and the command line's extras, dependencies first.
pub fn load_modules(
    sys: &mut dyn Sys,
    manifest: &Manifest,
    cmdline: &Cmdline,
) -> Result<usize, InitError> {
    let base = format!("/lib/modules/{}", manifest.kernel);
    let dep = sys.read_file(&format!("{base}/modules.dep"))?;
    let builtin = sys
        .read_file(&format!("{base}/modules.builtin"))
        .unwrap_or_default();
    let softdep = sys
        .read_file(&format!("{base}/modules.softdep"))
        .unwrap_or_default();
    let alias = sys
        .read_file(&format!("{base}/modules.alias"))
        .unwrap_or_default();
    let index = ModuleIndex::parse(
        &String::from_utf8_lossy(&dep),
        &String::from_utf8_lossy(&builtin),
    )?
    .with_soft_deps(
        &String::from_utf8_lossy(&softdep),
        &String::from_utf8_lossy(&alias),
    );
    let mut wanted = manifest.modules.clone();
    if matches!(cmdline.mode, Mode::Disk(_)) {
        wanted.extend(manifest.disk_modules.iter().cloned());
    }
    wanted.extend(cmdline.extra_modules.iter().cloned());
    let order = index.load_order(&wanted)?;
    for rel in &order {
        sys.load_module(&join(&base, rel))?;
    }
    Ok(order.len())
}

/// What the rootfs must be, and who says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsExpectation {
    /// Exact length in bytes.
    pub size: u64,
    /// Lower-case hex sha256.
    pub sha256: String,
    /// Who vouches, for messages ("the signed TUF target …").
    pub source: String,
}

/// The expectation: the signed TUF target of this version when the
/// initramfs trusts a TUF root, else the image manifest (a development
/// image built without `--tuf-root`; said on the console).
pub fn rootfs_expectation(
    sys: &mut dyn Sys,
    manifest: &Manifest,
) -> Result<RootfsExpectation, InitError> {
    Ok(match sys.signed_rootfs(&manifest.version)? {
        Some(t) => RootfsExpectation {
            size: t.length,
            sha256: t.sha256,
            source: format!(
                "the signed TUF target {} (targets v{}, root v{})",
                t.target, t.targets_version, t.root_version
            ),
        },
        None => RootfsExpectation {
            size: manifest.rootfs.size,
            sha256: manifest.rootfs.sha256.clone(),
            source: "the image manifest (no TUF root in the initramfs: not signed)".into(),
        },
    })
}

/// Check the rootfs image: exact size, then sha256.
pub fn verify_rootfs(
    sys: &mut dyn Sys,
    path: &str,
    want: &RootfsExpectation,
) -> Result<(), InitError> {
    if !sys.exists(path) {
        return Err(InitError::Rootfs(format!(
            "{path} is missing from the initramfs: was the rootfs initrd loaded by the boot script?"
        )));
    }
    let (sha, len) = sys.hash_file(path)?;
    if len != want.size {
        return Err(InitError::Rootfs(format!(
            "{path} is {len} bytes, {} says {}: truncated or wrong image",
            want.source, want.size
        )));
    }
    if !sha.eq_ignore_ascii_case(&want.sha256) {
        return Err(InitError::Rootfs(format!(
            "{path} has sha256 {sha}, {} says {}: refusing to boot a modified image",
            want.source, want.sha256
        )));
    }
    Ok(())
}

/// Mount the verified image read-only at [`SYSROOT`], the state tmpfs, the
/// `/etc` overlay and `/var`.
pub fn assemble_root(sys: &mut dyn Sys, manifest: &Manifest) -> Result<(), InitError> {
    let dev = sys.loop_attach_ro(&manifest.rootfs.path)?;
    sys.mkdir_all(SYSROOT)?;
    sys.mount(&m(
        &dev,
        SYSROOT,
        &manifest.rootfs.fstype,
        MountFlags {
            read_only: true,
            ..Default::default()
        },
        None,
    ))?;
    sys.mkdir_all(STATE)?;
    sys.mount(&m(
        "tmpfs",
        STATE,
        "tmpfs",
        MountFlags::default(),
        Some("mode=0755"),
    ))?;
    for d in disk::STATE_SUBDIRS {
        sys.mkdir_all(&join(STATE, d))?;
    }
    overlay_state(sys, STATE)
}

/// The `/etc` overlay (upper dir in `state`), `/var` bound from `state`,
/// and a tmpfs `/tmp`, over the read-only root at [`SYSROOT`]. `state`
/// holds `etc-upper`, `etc-work` and `var`.
pub fn overlay_state(sys: &mut dyn Sys, state: &str) -> Result<(), InitError> {
    let etc = join(SYSROOT, "etc");
    sys.mount(&m(
        "overlay",
        &etc,
        "overlay",
        MountFlags::default(),
        Some(&format!(
            "lowerdir={etc},upperdir={state}/etc-upper,workdir={state}/etc-work"
        )),
    ))?;
    sys.mount(&Mount {
        source: join(state, "var"),
        target: join(SYSROOT, "var"),
        fstype: None,
        flags: MountFlags {
            bind: true,
            ..Default::default()
        },
        data: None,
    })?;
    // The root is read-only: /tmp must be writable before systemd starts
    // (its sandboxing makes private /dev directories under /tmp).
    sys.mount(&m(
        "tmpfs",
        &join(SYSROOT, "tmp"),
        "tmpfs",
        MountFlags {
            nosuid: true,
            nodev: true,
            ..Default::default()
        },
        Some("mode=1777"),
    ))?;
    Ok(())
}

/// Hand configuration and trust anchors to stage 2, set the hostname.
pub fn configure(sys: &mut dyn Sys, cmdline: &Cmdline) -> Result<(), InitError> {
    let config_etc = join(CONFIG_DIR, "etc");
    if sys.exists(&config_etc) {
        sys.copy_tree(&config_etc, &join(SYSROOT, "etc"))?;
        // Kept as delivered, apart from what the node writes to /etc
        // later: `cairnctl install --disk` seeds the disk's STATE with it.
        sys.mkdir_all(KEPT_CONFIG)?;
        sys.copy_tree(&config_etc, &join(KEPT_CONFIG, "etc"))?;
    }
    if sys.exists(TRUST_DIR) {
        sys.mkdir_all("/run/cairn")?;
        sys.copy_tree(TRUST_DIR, "/run/cairn/trust")?;
    }
    if let Some(h) = &cmdline.hostname {
        sys.write_file(
            &join(SYSROOT, "etc/hostname"),
            format!("{h}\n").as_bytes(),
            0o644,
        )?;
        sys.set_hostname(h)?;
    }
    Ok(())
}

/// Move the API filesystems into the new root and switch to it.
pub fn switch_root(sys: &mut dyn Sys) -> Result<(), InitError> {
    for api in ["/dev", "/proc", "/sys", "/run"] {
        let target = join(SYSROOT, api);
        sys.mount(&Mount {
            source: api.into(),
            target,
            fstype: None,
            flags: MountFlags {
                move_: true,
                ..Default::default()
            },
            data: None,
        })?;
    }
    sys.switch_root(SYSROOT)
}

/// The whole sequence up to (not including) exec. Prints one console line per phase.
pub fn run(
    sys: &mut dyn Sys,
    raw_cmdline: &str,
    log: &mut dyn FnMut(&str),
) -> Result<Cmdline, InitError> {
    let cmdline = Cmdline::parse(raw_cmdline)?;
    let manifest = Manifest::parse(&sys.read_file(MANIFEST_PATH)?)?;
    log(&format!(
        "image {} (kernel {})",
        manifest.version, manifest.kernel
    ));
    let n = load_modules(sys, &manifest, &cmdline)?;
    log(&format!("loaded {n} modules"));
    match &cmdline.mode {
        Mode::Pxe => {
            let want = rootfs_expectation(sys, &manifest)?;
            verify_rootfs(sys, &manifest.rootfs.path, &want)?;
            log(&format!(
                "rootfs {} verified: {} bytes, sha256 {}, as {}",
                manifest.rootfs.path, want.size, want.sha256, want.source
            ));
            assemble_root(sys, &manifest)?;
        }
        Mode::Disk(boot) => {
            log(&format!(
                "disk mode: slot {} version {}",
                boot.slot, boot.version
            ));
            let (disk, layout) = disk::find_layout(sys, disk::DISK_WAIT)?;
            log(&format!(
                "disk /dev/{disk}: slot {} is {} + {}",
                boot.slot,
                layout.root(boot.slot),
                layout.verity(boot.slot)
            ));
            let dev = disk::mount_root(sys, &layout, &boot.clone())?;
            log(&format!(
                "dm-verity {dev} set up (root hash {}); erofs mounted read-only at {SYSROOT}",
                boot.root_hash
            ));
            let formatted = disk::mount_state(sys, &layout, log)?;
            log(&format!(
                "state {} mounted at {}{}",
                layout.state,
                disk::STATE_DIR,
                if formatted { " (new ext4)" } else { "" }
            ));
            overlay_state(sys, disk::STATE_DIR)?;
        }
    }
    configure(sys, &cmdline)?;
    switch_root(sys)?;
    Ok(cmdline)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{Call, RecordingSys};

    fn fake() -> RecordingSys {
        let manifest = Manifest {
            version: "0.1.0".into(),
            kernel: "6.1.0-test".into(),
            rootfs: crate::manifest::RootfsRef {
                path: "/cairn/rootfs.erofs".into(),
                sha256: "ab".repeat(32),
                size: 4096,
                fstype: "erofs".into(),
            },
            modules: vec!["erofs".into(), "loop".into()],
            disk_modules: vec!["dm_verity".into()],
        };
        let mut s = RecordingSys::default();
        s.files
            .insert(MANIFEST_PATH.into(), serde_json::to_vec(&manifest).unwrap());
        s.files.insert(
            "/lib/modules/6.1.0-test/modules.dep".into(),
            b"kernel/fs/erofs/erofs.ko: kernel/lib/lz4.ko\nkernel/lib/lz4.ko:\nkernel/drivers/block/loop.ko:\n".to_vec(),
        );
        s.files.insert("/cairn/rootfs.erofs".into(), vec![]);
        s.files
            .insert("/cairn/config/etc/cairn/agent.yaml".into(), vec![]);
        s.hash = ("ab".repeat(32), 4096);
        s
    }

    #[test]
    fn early_mounts_are_idempotent() {
        let mut s = RecordingSys::default();
        early_mounts(&mut s).unwrap();
        let first = s.calls.len();
        early_mounts(&mut s).unwrap();
        assert_eq!(s.calls.len(), first, "second run must not mount again");
        let targets: Vec<_> = s
            .calls
            .iter()
            .filter_map(|c| match c {
                Call::Mount(m) => Some(m.target.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(targets, ["/proc", "/sys", "/dev", "/run"]);
    }

    #[test]
    fn full_sequence_loads_verifies_mounts_and_switches() {
        let mut s = fake();
        let mut lines = Vec::new();
        let c = run(&mut s, "console=ttyS0 cairn.hostname=node1", &mut |l| {
            lines.push(l.to_string())
        })
        .unwrap();
        assert_eq!(c.hostname.as_deref(), Some("node1"));
        let modules: Vec<_> = s
            .calls
            .iter()
            .filter_map(|c| match c {
                Call::LoadModule(p) => Some(p.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            modules,
            [
                "/lib/modules/6.1.0-test/kernel/lib/lz4.ko",
                "/lib/modules/6.1.0-test/kernel/fs/erofs/erofs.ko",
                "/lib/modules/6.1.0-test/kernel/drivers/block/loop.ko"
            ]
        );
        // verification happens before the image is attached
        let hash_at = s
            .calls
            .iter()
            .position(|c| matches!(c, Call::Hash(_)))
            .unwrap();
        let loop_at = s
            .calls
            .iter()
            .position(|c| matches!(c, Call::LoopAttach(_)))
            .unwrap();
        assert!(hash_at < loop_at);
        let root = s
            .calls
            .iter()
            .find_map(|c| match c {
                Call::Mount(m) if m.target == SYSROOT => Some(m.clone()),
                _ => None,
            })
            .unwrap();
        assert!(root.flags.read_only);
        assert_eq!(root.fstype.as_deref(), Some("erofs"));
        let overlay = s
            .calls
            .iter()
            .find_map(|c| match c {
                Call::Mount(m) if m.target == "/sysroot/etc" => Some(m.clone()),
                _ => None,
            })
            .unwrap();
        assert!(s.calls.iter().any(|c| matches!(c, Call::Mount(m) if m.target == "/sysroot/tmp" && m.data.as_deref() == Some("mode=1777"))));
        assert_eq!(
            overlay.data.as_deref(),
            Some("lowerdir=/sysroot/etc,upperdir=/state/etc-upper,workdir=/state/etc-work")
        );
        assert!(s.calls.contains(&Call::CopyTree(
            "/cairn/config/etc".into(),
            "/sysroot/etc".into()
        )));
        assert!(s.calls.contains(&Call::CopyTree(
            "/cairn/config/etc".into(),
            "/run/cairn/config/etc".into()
        )));
        assert!(s.calls.contains(&Call::Hostname("node1".into())));
        assert_eq!(s.calls.last(), Some(&Call::SwitchRoot(SYSROOT.into())));
        assert!(lines.iter().any(|l| l.contains("verified")));
    }

    #[test]
    fn wrong_hash_refuses_before_mounting() {
        let mut s = fake();
        s.hash = ("cd".repeat(32), 4096);
        let e = run(&mut s, "", &mut |_| {}).unwrap_err();
        assert!(matches!(e, InitError::Rootfs(_)), "{e}");
        assert!(e.to_string().contains("refusing to boot a modified image"));
        assert!(!s
            .calls
            .iter()
            .any(|c| matches!(c, Call::LoopAttach(_) | Call::SwitchRoot(_))));
    }

    #[test]
    fn with_a_tuf_root_the_signed_target_decides_not_the_manifest() {
        let signed = crate::tuf::SignedRootfs {
            target: "cairn/0.1.0/rootfs.erofs".into(),
            length: 4096,
            sha256: "ef".repeat(32),
            targets_version: 7,
            root_version: 2,
        };
        // The rootfs matches the manifest but not what was signed: refused.
        let mut s = fake();
        s.signed = Some(Ok(signed.clone()));
        let e = run(&mut s, "", &mut |_| {}).unwrap_err().to_string();
        assert!(
            e.contains("the signed TUF target cairn/0.1.0/rootfs.erofs (targets v7, root v2)")
                && e.contains("refusing to boot a modified image"),
            "{e}"
        );
        assert!(!s.calls.iter().any(|c| matches!(c, Call::LoopAttach(_))));
        // It matches what was signed: booted, and the console says so.
        let mut s = fake();
        s.hash = ("ef".repeat(32), 4096);
        s.signed = Some(Ok(signed));
        let mut lines = Vec::new();
        run(&mut s, "", &mut |l| lines.push(l.to_string())).unwrap();
        assert!(
            lines
                .iter()
                .any(|l| l.contains("verified") && l.contains("signed TUF target")),
            "{lines:?}"
        );
        // Metadata that does not verify stops the boot before any hashing.
        let mut s = fake();
        s.signed = Some(Err("the TUF metadata in /cairn/tuf does not verify".into()));
        let e = run(&mut s, "", &mut |_| {}).unwrap_err().to_string();
        assert!(e.contains("does not verify"), "{e}");
        assert!(!s
            .calls
            .iter()
            .any(|c| matches!(c, Call::Hash(_) | Call::LoopAttach(_))));
    }

    #[test]
    fn wrong_size_is_reported_as_truncation() {
        let mut s = fake();
        s.hash = ("ab".repeat(32), 100);
        let e = run(&mut s, "", &mut |_| {}).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
    }

    #[test]
    fn missing_rootfs_names_the_boot_script() {
        let mut s = fake();
        s.files.remove("/cairn/rootfs.erofs");
        let e = run(&mut s, "", &mut |_| {}).unwrap_err();
        assert!(e.to_string().contains("boot script"), "{e}");
    }

    fn disk_fake() -> RecordingSys {
        let mut s = fake();
        s.files.insert(
            "/lib/modules/6.1.0-test/modules.dep".into(),
            b"kernel/fs/erofs/erofs.ko: kernel/lib/lz4.ko\nkernel/lib/lz4.ko:\nkernel/drivers/block/loop.ko:\nkernel/drivers/md/dm-verity.ko: kernel/drivers/md/dm-mod.ko\nkernel/drivers/md/dm-mod.ko:\n".to_vec(),
        );
        s.disks.insert("vda".into(), crate::disk::tests::vda());
        s.disks_visible_at = 2.0;
        s.devices.insert(
            "/dev/vda3".into(),
            crate::disk::tests::superblock(104_809, "sha256"),
        );
        s.devices.insert("/dev/vda6".into(), vec![]);
        s
    }

    fn disk_cmdline() -> String {
        format!(
            "console=ttyS0 cairn.slot=a cairn.version=1.2.0 cairn.verity={}",
            crate::disk::tests::HASH
        )
    }

    /// The effects that matter, in order, as short strings.
    fn effects(s: &RecordingSys) -> Vec<String> {
        s.calls
            .iter()
            .filter_map(|c| match c {
                Call::Mount(m) if m.flags.move_ => Some(format!("move {} {}", m.source, m.target)),
                Call::Mount(m) if m.flags.bind => Some(format!("bind {} {}", m.source, m.target)),
                Call::Mount(m) => Some(format!(
                    "mount {} {} {}{}",
                    m.fstype.as_deref().unwrap_or("-"),
                    m.source,
                    m.target,
                    if m.flags.read_only { " ro" } else { "" }
                )),
                Call::DmCreate(d) => Some(format!("dm {} {}", d.name, d.targets[0].params)),
                Call::Run(p, a) => Some(format!("run {p} {}", a.join(" "))),
                Call::LoadModule(p) => Some(format!("insmod {p}")),
                Call::SwitchRoot(r) => Some(format!("switch_root {r}")),
                Call::LoopAttach(f) => Some(format!("loop {f}")),
                Call::Hash(f) => Some(format!("hash {f}")),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn disk_mode_sequence_first_boot() {
        let mut s = disk_fake();
        let mut lines = Vec::new();
        run(&mut s, &disk_cmdline(), &mut |l| lines.push(l.to_string())).unwrap();
        let h = crate::disk::tests::HASH;
        let salt = crate::disk::tests::SALT;
        let ld = "/sysroot/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2";
        assert_eq!(
            effects(&s),
            [
                "insmod /lib/modules/6.1.0-test/kernel/lib/lz4.ko".to_string(),
                "insmod /lib/modules/6.1.0-test/kernel/fs/erofs/erofs.ko".into(),
                "insmod /lib/modules/6.1.0-test/kernel/drivers/block/loop.ko".into(),
                "insmod /lib/modules/6.1.0-test/kernel/drivers/md/dm-mod.ko".into(),
                "insmod /lib/modules/6.1.0-test/kernel/drivers/md/dm-verity.ko".into(),
                format!("dm root 1 /dev/vda2 /dev/vda3 4096 4096 104809 1 sha256 {h} {salt} 1 panic_on_corruption"),
                "mount erofs /dev/dm-0 /sysroot ro".into(),
                format!("run {ld} --library-path /sysroot/usr/lib/x86_64-linux-gnu /sysroot/usr/sbin/mke2fs -q -F -t ext4 -L cairn-state /dev/vda6"),
                "mount ext4 /dev/vda6 /run/cairn/state".into(),
                "mount overlay overlay /sysroot/etc".into(),
                "bind /run/cairn/state/var /sysroot/var".into(),
                "mount tmpfs tmpfs /sysroot/tmp".into(),
                "move /dev /sysroot/dev".into(),
                "move /proc /sysroot/proc".into(),
                "move /sys /sysroot/sys".into(),
                "move /run /sysroot/run".into(),
                "switch_root /sysroot".into(),
            ]
        );
        let overlay = s
            .calls
            .iter()
            .find_map(|c| match c {
                Call::Mount(m) if m.target == "/sysroot/etc" => m.data.clone(),
                _ => None,
            })
            .unwrap();
        assert_eq!(
            overlay,
            "lowerdir=/sysroot/etc,upperdir=/run/cairn/state/etc-upper,workdir=/run/cairn/state/etc-work"
        );
        for d in ["etc-upper", "etc-work", "var"] {
            assert!(s
                .calls
                .contains(&Call::Mkdir(format!("/run/cairn/state/{d}"))));
        }
        // No PXE-mode image check in disk mode.
        assert!(!s
            .calls
            .iter()
            .any(|c| matches!(c, Call::Hash(_) | Call::LoopAttach(_))));
        assert!(
            lines
                .iter()
                .any(|l| l.contains("dm-verity /dev/dm-0 set up")),
            "{lines:?}"
        );
        assert!(lines.iter().any(|l| l.contains("(new ext4)")), "{lines:?}");
    }

    #[test]
    fn disk_mode_errors_name_the_partition_and_stop_before_mounting() {
        // The slot's verity partition is blank.
        let mut s = disk_fake();
        s.devices.insert("/dev/vda3".into(), vec![0u8; 512]);
        let e = run(&mut s, &disk_cmdline(), &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/dev/vda3 (verity-a)") && e.contains("no dm-verity superblock"),
            "{e}"
        );
        assert!(
            !s.calls
                .iter()
                .any(|c| matches!(c, Call::DmCreate(_) | Call::Mount(_))),
            "{:?}",
            s.calls
        );

        // A missing partition.
        let mut s = disk_fake();
        s.disks
            .get_mut("vda")
            .unwrap()
            .retain(|p| p.name != "verity-b");
        let e = run(&mut s, &disk_cmdline(), &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("no partition named \"verity-b\""), "{e}");
        assert!(!s
            .calls
            .iter()
            .any(|c| matches!(c, Call::DmCreate(_) | Call::SwitchRoot(_))));

        // A bad root hash on the command line never reaches the kernel.
        let mut s = disk_fake();
        let e = run(
            &mut s,
            "cairn.slot=a cairn.version=1.2.0 cairn.verity=xyz",
            &mut |_| {},
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("cairn.verity=xyz"), "{e}");
        assert!(s.calls.is_empty());
    }

    #[test]
    fn missing_manifest_is_an_error() {
        let mut s = RecordingSys::default();
        assert!(run(&mut s, "", &mut |_| {}).is_err());
    }
}
