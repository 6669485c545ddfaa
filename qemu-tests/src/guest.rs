//! A QEMU guest under TCG: serial console to a file, waited on by lines,
//! killed with its whole process group when dropped.
//!
//! Two ways to boot ([`BootFrom`]): PXE (iPXE from QEMU's TFTP, started
//! with `-no-reboot` so a reboot ends QEMU and the test sees it), and disk
//! (UEFI: OVMF from pflash, a virtio-blk disk), where a reboot is part of
//! the story (an OS update reboots into the other slot), so QEMU stays up
//! across reboots and the console log holds every boot in turn
//! ([`Guest::serial_len`], [`Guest::wait_for_line_from`]).

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// OVMF's code (read-only pflash), package `ovmf`.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// The blank variable store each disk guest starts from (copied: it is written).
pub const OVMF_VARS_TEMPLATE: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// Image formats a disk guest can boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }

    /// qcow2 files start with `QFI\xfb`; anything else is raw.
    pub fn detect(head: &[u8]) -> DiskFormat {
        if head.starts_with(b"QFI\xfb") {
            DiskFormat::Qcow2
        } else {
            DiskFormat::Raw
        }
    }
}

/// Where the guest boots from.
#[derive(Debug, Clone)]
pub enum BootFrom {
    /// iPXE: QEMU's TFTP serves `tftp_dir` and DHCP names `bootfile`;
    /// `disk`: a raw virtio-blk disk the guest sees (e.g. to install to).
    Pxe {
        tftp_dir: PathBuf,
        bootfile: String,
        disk: Option<PathBuf>,
    },
    /// UEFI from a virtio-blk disk: OVMF `code` (read-only) and its
    /// variable store `vars` (written: the guest's own copy).
    Disk {
        image: PathBuf,
        format: DiskFormat,
        code: PathBuf,
        vars: PathBuf,
    },
}

/// How to boot a guest.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    pub memory_mib: u32,
    pub cpus: u32,
    pub boot: BootFrom,
    pub mac: String,
    /// (host port on 127.0.0.1, guest port)
    pub forwards: Vec<(u16, u16)>,
    pub serial_log: PathBuf,
}

/// QEMU's option syntax: a comma inside a value is written twice.
fn opt_value(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

impl GuestSpec {
    pub fn pxe(tftp_dir: &Path, serial_log: &Path) -> GuestSpec {
        GuestSpec {
            memory_mib: 3072,
            cpus: 2,
            boot: BootFrom::Pxe {
                tftp_dir: tftp_dir.to_path_buf(),
                bootfile: "boot.ipxe".into(),
                disk: None,
            },
            mac: "52:54:00:12:34:56".into(),
            forwards: Vec::new(),
            serial_log: serial_log.to_path_buf(),
        }
    }

    /// A UEFI guest booting `disk_image` (raw or qcow2, told apart by its
    /// header; the guest writes to it — give it a copy or a
    /// [`qcow2_overlay`]). `vars` becomes a fresh copy of
    /// [`OVMF_VARS_TEMPLATE`]: a new machine, no boot entries from an
    /// earlier run. Reboots stay inside QEMU.
    pub fn disk(disk_image: &Path, vars: &Path, serial_log: &Path) -> Result<GuestSpec> {
        for f in [OVMF_CODE, OVMF_VARS_TEMPLATE] {
            if !Path::new(f).is_file() {
                bail!("{f} is missing: apt-get install ovmf (or run image-build/scripts/install-deps.sh)");
            }
        }
        let mut head = [0u8; 4];
        let n = std::fs::File::open(disk_image)
            .and_then(|mut f| f.read(&mut head))
            .with_context(|| format!("reading the disk image {}", disk_image.display()))?;
        if let Some(dir) = vars.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::copy(OVMF_VARS_TEMPLATE, vars)
            .with_context(|| format!("copying {OVMF_VARS_TEMPLATE} to {}", vars.display()))?;
        Ok(GuestSpec {
            memory_mib: 3072,
            cpus: 2,
            boot: BootFrom::Disk {
                image: disk_image.to_path_buf(),
                format: DiskFormat::detect(&head[..n]),
                code: PathBuf::from(OVMF_CODE),
                vars: vars.to_path_buf(),
            },
            mac: "52:54:00:12:34:56".into(),
            forwards: Vec::new(),
            serial_log: serial_log.to_path_buf(),
        })
    }

    /// The QEMU command line (no IO: unit-tested).
    pub fn args(&self) -> Vec<String> {
        let mut net = match &self.boot {
            BootFrom::Pxe {
                tftp_dir, bootfile, ..
            } => {
                format!("user,id=n0,tftp={},bootfile={bootfile}", tftp_dir.display())
            }
            BootFrom::Disk { .. } => "user,id=n0".to_string(),
        };
        for (h, g) in &self.forwards {
            net.push_str(&format!(",hostfwd=tcp:127.0.0.1:{h}-:{g}"));
        }
        let mut a: Vec<String> = vec![
            "-accel".into(),
            "tcg,thread=multi".into(),
            "-cpu".into(),
            "max".into(),
            "-smp".into(),
            self.cpus.to_string(),
            "-m".into(),
            self.memory_mib.to_string(),
            "-nodefaults".into(),
            "-display".into(),
            "none".into(),
        ];
        match &self.boot {
            BootFrom::Pxe { disk, .. } => {
                if let Some(disk) = disk {
                    a.extend([
                        "-drive".into(),
                        format!("if=none,id=disk0,format=raw,file={}", opt_value(disk)),
                        "-device".into(),
                        "virtio-blk-pci,drive=disk0".into(),
                    ]);
                }
                a.extend([
                    "-no-reboot".into(),
                    "-netdev".into(),
                    net,
                    "-device".into(),
                    format!("virtio-net-pci,netdev=n0,mac={}", self.mac),
                    "-boot".into(),
                    "n".into(),
                ]);
            }
            BootFrom::Disk {
                image,
                format,
                code,
                vars,
            } => {
                a.extend([
                    "-drive".into(),
                    format!(
                        "if=pflash,format=raw,unit=0,readonly=on,file={}",
                        opt_value(code)
                    ),
                    "-drive".into(),
                    format!("if=pflash,format=raw,unit=1,file={}", opt_value(vars)),
                    "-drive".into(),
                    format!(
                        "if=none,id=disk0,format={},file={}",
                        format.as_str(),
                        opt_value(image)
                    ),
                    // bootindex: OVMF tries the disk first, whatever its
                    // variable store says.
                    "-device".into(),
                    "virtio-blk-pci,drive=disk0,bootindex=0".into(),
                    "-netdev".into(),
                    net,
                    // romfile=: no iPXE option ROM, so the firmware neither
                    // loads nor tries network boot.
                    "-device".into(),
                    format!("virtio-net-pci,netdev=n0,mac={},romfile=", self.mac),
                ]);
            }
        }
        a.extend([
            "-serial".into(),
            format!("file:{}", self.serial_log.display()),
            "-device".into(),
            "virtio-rng-pci".into(),
        ]);
        a
    }
}

/// The `qemu-img` arguments that create `overlay` as a qcow2 over the raw
/// `base` (no IO; `base` should be absolute: a relative backing path is
/// resolved from the overlay's directory).
pub fn qcow2_overlay_args(base: &Path, overlay: &Path) -> Vec<String> {
    vec![
        "create".into(),
        "-q".into(),
        "-f".into(),
        "qcow2".into(),
        "-b".into(),
        base.display().to_string(),
        "-F".into(),
        "raw".into(),
        overlay.display().to_string(),
    ]
}

/// Create (or replace) `overlay`, a qcow2 copy-on-write layer over the raw
/// disk image `base`, so a guest writes to the overlay and `base` stays as
/// built (it must not change while the overlay is in use).
pub fn qcow2_overlay(base: &Path, overlay: &Path) -> Result<()> {
    let base = base
        .canonicalize()
        .with_context(|| format!("the base image {}", base.display()))?;
    match std::fs::remove_file(overlay) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", overlay.display())),
    }
    let out = Command::new("qemu-img")
        .args(qcow2_overlay_args(&base, overlay))
        .output()
        .context("starting qemu-img (apt-get install qemu-utils)")?;
    if !out.status.success() {
        bail!(
            "qemu-img create {} over {} failed: {}",
            overlay.display(),
            base.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A running guest.
pub struct Guest {
    child: Child,
    pub serial_log: PathBuf,
    pub started: Instant,
}

impl Guest {
    pub fn start(spec: &GuestSpec) -> Result<Guest> {
        let _ = std::fs::remove_file(&spec.serial_log);
        std::fs::write(&spec.serial_log, b"")?;
        let stderr = std::fs::File::create(spec.serial_log.with_extension("qemu.log"))?;
        let child = Command::new("qemu-system-x86_64")
            .args(spec.args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .context("starting qemu-system-x86_64 (run image-build/scripts/install-deps.sh)")?;
        Ok(Guest {
            child,
            serial_log: spec.serial_log.clone(),
            started: Instant::now(),
        })
    }

    /// Seconds since QEMU started.
    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Wait until QEMU exits by itself (a PXE guest's reboot, with
    /// -no-reboot), failing on a console line with one of `fatal`.
    pub fn wait_exit(&mut self, fatal: &[&str], timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            let text = std::fs::read(&self.serial_log).unwrap_or_default();
            let text = String::from_utf8_lossy(&text);
            if let Some(line) = text.lines().find(|l| fatal.iter().any(|f| l.contains(f))) {
                bail!("console shows: {line}");
            }
            if start.elapsed() > timeout {
                bail!(
                    "QEMU still running after {timeout:?}; last lines:\n{}",
                    self.serial_tail(15)
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Fail if QEMU has exited. A PXE guest runs with -no-reboot, so there
    /// a reboot is an exit too; a disk guest reboots in place.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let tail = self.serial_tail(15);
            bail!("QEMU exited ({status}); last console lines:\n{tail}");
        }
        Ok(())
    }

    /// The last `n` console lines.
    pub fn serial_tail(&self, n: usize) -> String {
        let text = std::fs::read(&self.serial_log).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Bytes of console output so far: pass it to
    /// [`Guest::wait_for_line_from`] to wait only on what comes next (the
    /// next boot of a disk guest, say).
    pub fn serial_len(&self) -> u64 {
        std::fs::metadata(&self.serial_log)
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// Wait for a console line containing `needle`; returns the line. Fails
    /// early if a line contains one of `fatal` or QEMU exits.
    pub fn wait_for_line(
        &mut self,
        needle: &str,
        fatal: &[&str],
        timeout: Duration,
    ) -> Result<String> {
        self.wait_for_line_from(0, needle, fatal, timeout)
    }

    /// [`Guest::wait_for_line`] over the console output after byte
    /// `offset` only.
    pub fn wait_for_line_from(
        &mut self,
        offset: u64,
        needle: &str,
        fatal: &[&str],
        timeout: Duration,
    ) -> Result<String> {
        let start = Instant::now();
        loop {
            let text = std::fs::read(&self.serial_log).unwrap_or_default();
            let from = (offset as usize).min(text.len());
            let text = String::from_utf8_lossy(&text[from..]);
            for line in text.lines() {
                if let Some(f) = fatal.iter().find(|f| line.contains(*f)) {
                    bail!("console shows {f:?}: {line}");
                }
                if line.contains(needle) {
                    return Ok(line.to_string());
                }
            }
            self.check_alive()?;
            if start.elapsed() > timeout {
                bail!(
                    "no console line with {needle:?} after {timeout:?}; last lines:\n{}",
                    self.serial_tail(15)
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Guest {
    /// Kill QEMU at once (a power cut for the guest) and reap it.
    pub fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pgid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pxe_args_use_tcg_user_net_tftp_and_forwards() {
        let mut s = GuestSpec::pxe(Path::new("/srv/pxe"), Path::new("/tmp/serial.log"));
        s.forwards.push((16443, 6443));
        let a = s.args().join(" ");
        assert!(a.contains("-accel tcg,thread=multi"));
        assert!(a.contains(
            "user,id=n0,tftp=/srv/pxe,bootfile=boot.ipxe,hostfwd=tcp:127.0.0.1:16443-:6443"
        ));
        assert!(a.contains("virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56"));
        assert!(a.contains("-boot n"));
        assert!(a.contains("-serial file:/tmp/serial.log"));
        assert!(a.contains("-no-reboot"));
        assert!(!a.contains("virtio-blk"), "no disk unless asked: {a}");
    }

    #[test]
    fn a_pxe_guest_can_see_a_disk_to_install_to() {
        let mut s = GuestSpec::pxe(Path::new("/srv/pxe"), Path::new("/tmp/serial.log"));
        if let BootFrom::Pxe { disk, .. } = &mut s.boot {
            *disk = Some(PathBuf::from("/tmp/a,b/disk.raw"));
        }
        let a = s.args().join(" ");
        assert!(
            a.contains("-drive if=none,id=disk0,format=raw,file=/tmp/a,,b/disk.raw -device virtio-blk-pci,drive=disk0 "),
            "{a}"
        );
        // still a network boot, and no bootindex: SeaBIOS boots iPXE
        assert!(a.contains("-boot n"));
        assert!(!a.contains("bootindex"), "{a}");
    }

    #[test]
    fn pxe_args_are_unchanged() {
        let mut s = GuestSpec::pxe(Path::new("/srv/pxe"), Path::new("/tmp/serial.log"));
        s.forwards.push((16443, 6443));
        assert_eq!(
            s.args().join(" "),
            "-accel tcg,thread=multi -cpu max -smp 2 -m 3072 -nodefaults -display none \
             -no-reboot -netdev user,id=n0,tftp=/srv/pxe,bootfile=boot.ipxe,hostfwd=tcp:127.0.0.1:16443-:6443 \
             -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56 -boot n \
             -serial file:/tmp/serial.log -device virtio-rng-pci"
        );
    }

    fn disk_spec(image: &Path, format: DiskFormat) -> GuestSpec {
        let mut s = GuestSpec::pxe(Path::new("/unused"), Path::new("/tmp/serial.log"));
        s.boot = BootFrom::Disk {
            image: image.to_path_buf(),
            format,
            code: PathBuf::from(OVMF_CODE),
            vars: PathBuf::from("/tmp/run,1/vars.fd"),
        };
        s
    }

    #[test]
    fn disk_args_use_ovmf_pflash_virtio_blk_and_keep_reboots_inside() {
        let mut s = disk_spec(Path::new("/tmp/node.qcow2"), DiskFormat::Qcow2);
        s.forwards.push((16443, 6443));
        let args = s.args();
        assert_eq!(
            args.join(" "),
            "-accel tcg,thread=multi -cpu max -smp 2 -m 3072 -nodefaults -display none \
             -drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
             -drive if=pflash,format=raw,unit=1,file=/tmp/run,,1/vars.fd \
             -drive if=none,id=disk0,format=qcow2,file=/tmp/node.qcow2 \
             -device virtio-blk-pci,drive=disk0,bootindex=0 \
             -netdev user,id=n0,hostfwd=tcp:127.0.0.1:16443-:6443 \
             -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56,romfile= \
             -serial file:/tmp/serial.log -device virtio-rng-pci"
        );
        assert!(!args.iter().any(|a| a == "-no-reboot"), "{args:?}");
        assert!(!args.iter().any(|a| a == "-boot"), "{args:?}");
        assert!(!args.iter().any(|a| a.contains("tftp")), "{args:?}");
        let raw = disk_spec(Path::new("/tmp/disk.raw"), DiskFormat::Raw).args();
        assert!(raw.contains(&"if=none,id=disk0,format=raw,file=/tmp/disk.raw".to_string()));
    }

    #[test]
    fn disk_spec_detects_the_format_and_copies_fresh_vars() {
        let d = tempfile::tempdir().unwrap();
        let raw = d.path().join("disk.raw");
        std::fs::write(&raw, vec![0u8; 8192]).unwrap();
        let qcow = d.path().join("disk.qcow2");
        std::fs::write(&qcow, b"QFI\xfb\0\0\0\x03rest").unwrap();
        assert_eq!(DiskFormat::detect(b"QFI\xfb..."), DiskFormat::Qcow2);
        assert_eq!(DiskFormat::detect(b""), DiskFormat::Raw);
        if !Path::new(OVMF_VARS_TEMPLATE).is_file() {
            let e = GuestSpec::disk(&raw, &d.path().join("v.fd"), &d.path().join("s.log"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("apt-get install ovmf"), "{e}");
            return;
        }
        let vars = d.path().join("run/vars.fd");
        for (image, format) in [(&raw, DiskFormat::Raw), (&qcow, DiskFormat::Qcow2)] {
            std::fs::write(&vars, b"stale").ok();
            let s = GuestSpec::disk(image, &vars, &d.path().join("s.log")).unwrap();
            match &s.boot {
                BootFrom::Disk { format: f, .. } => assert_eq!(*f, format),
                other => panic!("{other:?}"),
            }
            assert_eq!(
                std::fs::read(&vars).unwrap(),
                std::fs::read(OVMF_VARS_TEMPLATE).unwrap()
            );
        }
        assert!(GuestSpec::disk(
            &d.path().join("missing.raw"),
            &vars,
            &d.path().join("s.log")
        )
        .unwrap_err()
        .to_string()
        .contains("missing.raw"));
    }

    #[test]
    fn overlay_args_name_the_raw_backing_file() {
        assert_eq!(
            qcow2_overlay_args(Path::new("/out/disk.raw"), Path::new("/run/node.qcow2")).join(" "),
            "create -q -f qcow2 -b /out/disk.raw -F raw /run/node.qcow2"
        );
    }

    #[test]
    fn waiting_from_an_offset_skips_an_earlier_boot() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("serial.log");
        std::fs::write(&log, "boot 1\nswitching root (a)\n").unwrap();
        let child = Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let mut g = Guest {
            child,
            serial_log: log.clone(),
            started: Instant::now(),
        };
        let first_boot = g.serial_len();
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        std::io::Write::write_all(&mut f, b"boot 2\nswitching root (b)\n").unwrap();
        let t = Duration::from_secs(5);
        assert_eq!(
            g.wait_for_line("switching root", &[], t).unwrap(),
            "switching root (a)"
        );
        assert_eq!(
            g.wait_for_line_from(first_boot, "switching root", &[], t)
                .unwrap(),
            "switching root (b)"
        );
        let e = g
            .wait_for_line_from(first_boot, "boot 1", &[], Duration::from_millis(1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no console line"), "{e}");
    }
}
