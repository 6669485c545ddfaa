//! A QEMU guest under TCG: serial console to a file, waited on by lines,
//! killed with its whole process group when dropped.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How to boot a guest.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    pub memory_mib: u32,
    pub cpus: u32,
    /// Directory QEMU's TFTP serves, and the file DHCP names as bootfile.
    pub tftp_dir: PathBuf,
    pub bootfile: String,
    pub mac: String,
    /// (host port on 127.0.0.1, guest port)
    pub forwards: Vec<(u16, u16)>,
    pub serial_log: PathBuf,
}

impl GuestSpec {
    pub fn pxe(tftp_dir: &Path, serial_log: &Path) -> GuestSpec {
        GuestSpec {
            memory_mib: 3072,
            cpus: 2,
            tftp_dir: tftp_dir.to_path_buf(),
            bootfile: "boot.ipxe".into(),
            mac: "52:54:00:12:34:56".into(),
            forwards: Vec::new(),
            serial_log: serial_log.to_path_buf(),
        }
    }

    /// The QEMU command line (no IO: unit-tested).
    pub fn args(&self) -> Vec<String> {
        let mut net = format!(
            "user,id=n0,tftp={},bootfile={}",
            self.tftp_dir.display(),
            self.bootfile
        );
        for (h, g) in &self.forwards {
            net.push_str(&format!(",hostfwd=tcp:127.0.0.1:{h}-:{g}"));
        }
        vec![
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
            "-no-reboot".into(),
            "-netdev".into(),
            net,
            "-device".into(),
            format!("virtio-net-pci,netdev=n0,mac={}", self.mac),
            "-boot".into(),
            "n".into(),
            "-serial".into(),
            format!("file:{}", self.serial_log.display()),
            "-device".into(),
            "virtio-rng-pci".into(),
        ]
    }
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

    /// Fail if QEMU has exited (it was started with -no-reboot: a reboot is an exit).
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

    /// Wait for a console line containing `needle`; returns the line. Fails
    /// early if a line contains one of `fatal` or QEMU exits.
    pub fn wait_for_line(
        &mut self,
        needle: &str,
        fatal: &[&str],
        timeout: Duration,
    ) -> Result<String> {
        let start = Instant::now();
        loop {
            let text = std::fs::read(&self.serial_log).unwrap_or_default();
            let text = String::from_utf8_lossy(&text);
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

impl Drop for Guest {
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
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
    }
}
