//! A disk-installed node for the A/B update tier: a blank disk, a PXE boot
//! with `cairn.install=/dev/vda` (SeaBIOS + iPXE), in which cairn writes
//! itself to the disk (slot A = the built version, from the update
//! repository; STATE seeded with the node's configuration) and reboots —
//! after a first attempt cut off by a power cut while root-a is written;
//! then the disk booted with OVMF + systemd-boot under TCG; a fresh TUF
//! repository with signed OS versions served over HTTP; the signed fleet
//! repository served by `git daemon`.
//!
//! The versions published for the scenario (all from the one built image,
//! so the tier builds the rootfs once):
//!
//! - [`GOOD`]: the same root filesystem under a new version, a normal update;
//! - [`BAD`]: a UKI whose command line masks `kubelet.service` — an image
//!   whose kubelet cannot start, which the health gate must catch;
//! - [`TAMPERED`]: signed, then one byte of its published rootfs flipped on
//!   the web server;
//! - [`UNSIGNED`]: named in fleet.yaml, never published.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::cluster::Cluster;
use crate::demo::NODE;
use crate::fleet::FleetRepo;
use crate::guest::{Guest, GuestSpec};
use crate::prepare::{PxeBoot, PxeDir};
use crate::servers::{free_port, GitDaemon, HttpServer};
use crate::{prepare, ui, wait_until};

/// The version on slot A of the disk image.
pub const BASE: &str = env!("CARGO_PKG_VERSION");
/// A good update.
pub const GOOD: &str = "0.2.0";
/// An update whose kubelet cannot start.
pub const BAD: &str = "0.3.0";
/// Signed, then tampered with on the server.
pub const TAMPERED: &str = "0.4.0";
/// Never published.
pub const UNSIGNED: &str = "0.9.9";

/// Generous deadlines (TCG, noisy machines).
pub const BOOT_DEADLINE: Duration = Duration::from_secs(900);
pub const UPDATE_DEADLINE: Duration = Duration::from_secs(2400);

/// A booted disk node and what serves it.
pub struct AbNode {
    pub guest: Guest,
    spec: crate::guest::GuestSpec,
    out: PathBuf,
    /// Boots in earlier lives (before a power cut).
    earlier_boots: usize,
    lives: usize,
    pub cluster: Cluster,
    pub fleet: FleetRepo,
    pub phases: BTreeMap<&'static str, f64>,
    pub tuf_www: PathBuf,
    /// The machine's disk (a raw file the host can read while it runs).
    pub disk: PathBuf,
    _http: HttpServer,
    _git: GitDaemon,
}

/// The health gate settings the scenario's fleet.yaml uses.
const UPDATE_SETTINGS: &str = "update:\n  maxUnavailable: 1\n  healthTimeout: 20m\n  drainTimeout: 5m\n  checks:\n    units: [containerd.service, kubelet.service]\n";

/// Replace `update:` … in fleet.yaml with [`UPDATE_SETTINGS`] and set
/// `os.version`.
pub fn fleet_yaml(original: &str, version: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in original.lines() {
        let top = !line.starts_with(' ') && !line.starts_with('#') && !line.is_empty();
        if top {
            skipping = line.starts_with("update:");
            if skipping {
                out.push_str(UPDATE_SETTINGS);
                continue;
            }
        }
        if skipping {
            continue;
        }
        if line.trim_start().starts_with("version:") && line.starts_with("  ") {
            out.push_str(&format!("  version: \"{version}\"\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

impl AbNode {
    /// Point fleet.yaml at `version` and push a signed commit; returns it.
    pub fn want_version(&self, version: &str) -> Result<String> {
        let p = self.fleet.work.join("fleet.yaml");
        let text = std::fs::read_to_string(&p)?;
        std::fs::write(&p, fleet_yaml(&text, version))?;
        self.fleet.commit(true, &format!("os: {version}"))
    }

    pub fn annotation(&self, key: &str) -> Result<Option<String>> {
        self.cluster.node_annotation(NODE, key)
    }

    /// Wait until the node reports `version` running from `slot` and up to date.
    pub fn wait_running(&mut self, what: &str, version: &str, slot: &str) -> Result<f64> {
        let start = Instant::now();
        wait_until(what, UPDATE_DEADLINE, || {
            self.guest.check_alive()?;
            let v = self.annotation(cairn_agent::os::ANN_OS_VERSION)?;
            let s = self.annotation(cairn_agent::os::ANN_OS_SLOT)?;
            let u = self.annotation(cairn_agent::os::ANN_OS_UPDATE)?;
            Ok((v.as_deref() == Some(version)
                && s.as_deref() == Some(slot)
                && u.as_deref().is_some_and(|u| u.starts_with("up to date")))
            .then_some(()))
        })?;
        Ok(start.elapsed().as_secs_f64())
    }

    /// The ESP as the firmware would read it now (the guest's writes
    /// reach the disk file when the guest flushes or writes back).
    pub fn esp(&self) -> Result<cairn_slots::install::EspView> {
        Ok(cairn_slots::install::view_esp(&self.disk)?)
    }

    /// Stage 1's "disk mode: slot X version V" line of this life (it is
    /// there once a boot switched root, e.g. after [`AbNode::power_on`]).
    pub fn stage1_slot_line(&mut self) -> Result<String> {
        self.guest.wait_for_line(
            "disk mode: slot",
            &["cairn-init: FATAL"],
            Duration::from_secs(5),
        )
    }

    /// How many times the guest switched root (one per boot), over all its
    /// lives.
    pub fn boots(&self) -> usize {
        self.earlier_boots + self.boots_this_life()
    }

    fn boots_this_life(&self) -> usize {
        std::fs::read(&self.guest.serial_log)
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .matches("] switching root to systemd")
                    .count()
            })
            .unwrap_or(0)
    }

    /// Cut the power: SIGKILL QEMU (the guest neither shuts down nor
    /// flushes; what the disk acknowledged stays, as on a real power cut),
    /// then power on from the same disk and firmware variables. The
    /// console continues in `serial-<n>.log`; waits for the next
    /// switch_root.
    pub fn power_cycle(&mut self) -> Result<()> {
        self.power_off();
        self.power_on()
    }

    /// The first half of [`AbNode::power_cycle`]: the disk file then holds
    /// what the guest left behind.
    pub fn power_off(&mut self) {
        self.guest.kill();
    }

    /// The second half of [`AbNode::power_cycle`].
    pub fn power_on(&mut self) -> Result<()> {
        // the dead life's boots, counted once
        self.earlier_boots += self.boots_this_life();
        self.lives += 1;
        self.spec.serial_log = self.out.join(format!("serial-{}.log", self.lives));
        eprintln!(
            "  power cut; console now {}",
            self.spec.serial_log.display()
        );
        self.guest = Guest::start(&self.spec)?;
        self.guest.wait_for_line(
            "switching root",
            &["cairn-init: FATAL", "Kernel panic"],
            BOOT_DEADLINE,
        )?;
        Ok(())
    }
}

/// Build the disk, the update repository and the fleet; boot slot A and
/// wait until the node runs [`BASE`] with the first commit applied.
pub fn boot_disk_node(out: &Path) -> Result<AbNode> {
    let repo = crate::repo_root();
    std::fs::create_dir_all(out)?;
    let mut phases = BTreeMap::new();
    let s = ui::step("host packages, Kubernetes binaries, cairn binaries, image");
    prepare::host_packages(&repo)?;
    let kube_bin = prepare::kube_binaries(&repo)?;
    let bins = prepare::guest_binaries(&repo)?;
    let key = prepare::demo_key()?;
    let image_dir = prepare::shared_image_dir();
    let demo_tuf = prepare::demo_tuf()?;
    let (_built, _) = prepare::image(
        &repo,
        &image_dir,
        BASE,
        &kube_bin,
        &bins,
        &key,
        &demo_tuf.root,
    )?;
    s.done();

    let s =
        ui::step("TUF repository: sign the base version, 0.2.0 (good), 0.3.0 (kubelet masked), 0.4.0 (to tamper)");
    let tuf = out.join("tuf");
    let www = out.join("tuf-www");
    for d in [&tuf, &www] {
        if d.exists() {
            std::fs::remove_dir_all(d)?;
        }
    }
    cairn_tuf::repository::cli::TufCommand::Init {
        repo: cairn_tuf::repository::cli::RepoArgs {
            repo: tuf.clone(),
            keys: None,
        },
        root_keys: 1,
        root_threshold: 1,
        targets_keys: 1,
        targets_threshold: 1,
        snapshot_keys: 1,
        snapshot_threshold: 1,
        timestamp_keys: 1,
        timestamp_threshold: 1,
        root_expires_days: 365,
        targets_expires_days: 90,
        snapshot_expires_days: 7,
        timestamp_expires_days: 1,
    }
    .run()
    .context("tuf init")?;
    for (v, args) in [
        (BASE, vec![]),
        (GOOD, vec![]),
        (BAD, vec!["systemd.mask=kubelet.service".to_string()]),
        (TAMPERED, vec![]),
    ] {
        let version = cairn_slots::OsVersion::new(v)?;
        cairn_image::release::release(&cairn_image::release::ReleaseInputs {
            repo: &tuf,
            keys: None,
            version: &version,
            from: &image_dir,
            extra_cmdline: &args,
            work: &out.join(format!("release-{v}")),
        })
        .with_context(|| format!("release {v}"))?;
    }
    cairn_tuf::repository::Repository::open(&tuf, None, std::time::SystemTime::now())?
        .publish(&www)?;
    tamper(&www, TAMPERED)?;
    let http = HttpServer::start(&www)?;
    phases.insert("release_s", s.done());

    let s = ui::step("fleet repository, node configuration");
    let git_base = out.join("git");
    std::fs::create_dir_all(&git_base)?;
    let fleet = FleetRepo::create(&git_base, &repo.join("gitops"), &key)?;
    let p = fleet.work.join("fleet.yaml");
    std::fs::write(&p, fleet_yaml(&std::fs::read_to_string(&p)?, BASE))?;
    let first = fleet.commit(true, "update settings for the A/B scenario")?;
    let git = GitDaemon::start(&git_base, &out.join("git-daemon.log"))?;

    let api_port = free_port()?;
    let config = out.join("config");
    let admin_kubeconfig = out.join("admin.kubeconfig");
    crate::demo::node_config(
        &config,
        &admin_kubeconfig,
        git.port,
        api_port,
        Some(cairn_agent::config::UpdateSettings {
            metadata_url: format!("http://10.0.2.2:{}/metadata", http.port),
            targets_url: format!("http://10.0.2.2:{}/targets", http.port),
            trusted_root: "/etc/cairn/tuf-root.json".into(),
        }),
    )?;
    std::fs::copy(
        www.join("metadata/1.root.json"),
        config.join("etc/cairn/tuf-root.json"),
    )?;
    std::fs::write(config.join("etc/hostname"), format!("{NODE}\n"))?;
    phases.insert("fleet_config_s", s.done());

    // The machine: a blank disk. It PXE-boots once with cairn.install=,
    // writes itself to the disk and reboots into it.
    let s =
        ui::step("PXE boot with cairn.install=/dev/vda → cairn installs itself to the blank disk");
    let disk = out.join("disk.raw");
    let _ = std::fs::remove_file(&disk);
    std::fs::File::create(&disk)?.set_len(cairn_image::disk::DiskSizes::default().disk_bytes())?;
    let PxeDir {
        dir: pxe,
        http: pxe_http,
    } = demo_tuf.pxe_dir(
        out,
        &PxeBoot {
            vmlinuz: &image_dir.join("vmlinuz"),
            initramfs: &image_dir.join("initramfs.cpio.gz"),
            rootfs_initrd: &image_dir.join("rootfs.cpio"),
            rootfs: &image_dir.join("rootfs.erofs"),
            version: BASE,
            config: &config,
            extra_args: &[
                format!("cairn.hostname={NODE}"),
                "cairn.install=/dev/vda".into(),
            ],
        },
    )?;
    let install_log = out.join("serial-install.log");
    eprintln!("  serial console: {}", install_log.display());
    let mut spec = GuestSpec::pxe(&pxe, &install_log);
    if let crate::guest::BootFrom::Pxe { disk: d, .. } = &mut spec.boot {
        *d = Some(disk.clone());
    }
    let install_fatal = ["cairn install on", "cairn-init: FATAL", "Kernel panic"];
    let mut guest = Guest::start(&spec)?;
    // The power is cut while root-a is written (it takes a minute under
    // TCG): the disk is left without a boot loader, and the next PXE boot
    // starts the install over.
    let line = guest.wait_for_line(
        "cairn install: /dev/vda: writing root-a",
        &install_fatal,
        BOOT_DEADLINE * 2,
    )?;
    guest.kill();
    println!("power cut during the install: {line}");
    let left = cairn_slots::install::inspect(&disk)?;
    anyhow::ensure!(
        left == cairn_slots::install::DiskContent::Unfinished,
        "a power cut during the install must leave an unfinished install (no boot loader), found {left:?}"
    );
    spec.serial_log = out.join("serial-install-2.log");
    eprintln!("  power cut; console now {}", spec.serial_log.display());
    let mut guest = Guest::start(&spec)?;
    let installed = guest.wait_for_line(
        "cairn install: installed",
        &install_fatal,
        BOOT_DEADLINE * 2,
    )?;
    println!("{installed}");
    phases.insert("pxe_install_s", guest.elapsed());
    guest
        .wait_exit(&["Kernel panic"], BOOT_DEADLINE)
        .context("the installed node did not reboot")?;
    drop(guest);
    drop(pxe_http);
    s.done();

    let serial = out.join("serial.log");
    eprintln!("  serial console: {}", serial.display());
    let mut spec = GuestSpec::disk(&disk, &out.join("OVMF_VARS.fd"), &serial)?;
    spec.forwards.push((api_port, 6443));
    let s = ui::step("OVMF → systemd-boot → UKI (slot A) → Kubernetes → agent");
    let mut guest = Guest::start(&spec)?;
    guest.wait_for_line(
        "switching root",
        &["cairn-init: FATAL", "Kernel panic"],
        BOOT_DEADLINE,
    )?;
    phases.insert("firmware_to_switch_root_s", guest.elapsed());
    let cluster = Cluster::connect(&admin_kubeconfig)?;
    wait_until(
        "the first commit applied on slot A",
        BOOT_DEADLINE * 2,
        || {
            guest.check_alive()?;
            let applied = cluster.node_annotation(NODE, cairn_agent::status::ANN_APPLIED)?;
            let version = cluster.node_annotation(NODE, cairn_agent::os::ANN_OS_VERSION)?;
            Ok(
                (applied.as_deref() == Some(first.as_str()) && version.as_deref() == Some(BASE))
                    .then_some(()),
            )
        },
    )?;
    phases.insert("boot_to_applied_s", guest.elapsed());
    s.done();
    Ok(AbNode {
        guest,
        spec,
        out: out.to_path_buf(),
        earlier_boots: 0,
        lives: 1,
        cluster,
        fleet,
        phases,
        tuf_www: www,
        disk,
        _http: http,
        _git: git,
    })
}

/// Flip one byte in the middle of `version`'s published rootfs.
fn tamper(www: &Path, version: &str) -> Result<()> {
    let dir = www.join("targets/cairn").join(version);
    let f = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".rootfs.erofs"))
        .with_context(|| format!("no published rootfs in {}", dir.display()))?;
    // publish may hard-link or copy: break a link before writing
    let bytes = std::fs::read(&f)?;
    std::fs::remove_file(&f)?;
    let mut evil = bytes;
    let mid = evil.len() / 2;
    evil[mid] ^= 0x55;
    std::fs::write(&f, evil)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_yaml_gets_the_scenario_settings_and_version() {
        let orig = std::fs::read_to_string(crate::repo_root().join("gitops/fleet.yaml")).unwrap();
        let out = fleet_yaml(&orig, "0.2.0");
        assert!(out.contains("  version: \"0.2.0\"\n"), "{out}");
        assert!(out.contains("units: [containerd.service, kubelet.service]"));
        assert_eq!(out.matches("update:").count(), 1, "{out}");
        assert!(!out.contains("maintenanceWindow"), "{out}");
        assert!(out.contains("values:"), "the rest is kept: {out}");
        assert_eq!(fleet_yaml(&out, "0.3.0").matches("0.3.0").count(), 1);
    }
}
