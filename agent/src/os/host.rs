//! What the OS update flow needs from the machine: what booted, the cairn
//! disk and its ESP, systemd (unit states, reboot) over D-Bus.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use cairn_slots::layout::{DiskLayout, PartitionSource, SysfsSource};
use cairn_slots::Booted;

/// `/proc/cmdline` and the boot id → what runs, or `None` when this boot is
/// not a disk boot (PXE mode: the boot server decides the OS version).
pub fn booted() -> Result<Option<Booted>, String> {
    let cmdline = std::fs::read_to_string("/proc/cmdline")
        .map_err(|e| format!("reading /proc/cmdline: {e}"))?;
    if !cmdline
        .split_ascii_whitespace()
        .any(|w| w.starts_with("cairn.slot="))
    {
        return Ok(None);
    }
    Booted::from_cmdline(&cmdline, &boot_id()?)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// `/proc/sys/kernel/random/boot_id`.
pub fn boot_id() -> Result<String, String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .map_err(|e| format!("reading the boot id: {e}"))
}

/// When this boot started, seconds since the epoch (`btime` in `/proc/stat`).
pub fn boot_time_unix() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    btime(&stat)
}

fn btime(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// Seconds since the epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The one disk that has cairn's six partitions (`/sys/class/block`).
pub fn find_disk(class_block: &Path, dev: &Path) -> Result<(String, DiskLayout), String> {
    let mut found = Vec::new();
    let mut why = Vec::new();
    let rd = std::fs::read_dir(class_block)
        .map_err(|e| format!("reading {}: {e}", class_block.display()))?;
    let mut names: Vec<String> = rd
        .flatten()
        .filter(|e| !e.path().join("partition").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("loop") && !n.starts_with("dm-") && !n.starts_with("ram"))
        .collect();
    names.sort();
    for name in names {
        let src = SysfsSource::with_roots(&name, class_block, dev);
        match DiskLayout::find(&src) {
            Ok(l) => found.push((name, l)),
            Err(e) => why.push(format!("{}: {e}", src.describe())),
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(format!(
            "no disk has cairn's partitions ({})",
            if why.is_empty() {
                "no disks".into()
            } else {
                why.join("; ")
            }
        )),
        _ => Err(format!(
            "several disks have cairn's partitions ({}); refusing to guess",
            found
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Where the agent mounts the ESP.
pub const ESP_MOUNT: &str = "/run/cairn/esp";

/// Is something mounted at `target` (from `/proc/self/mountinfo`)?
fn mounted_at(mountinfo: &str, target: &str) -> bool {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| m == target)
}

/// Mount the ESP (vfat) at [`ESP_MOUNT`] unless it already is; returns the
/// mount point. Owner-only permissions, no devices, no set-uid, no exec.
pub fn mount_esp(layout: &DiskLayout) -> Result<PathBuf, String> {
    let target = PathBuf::from(ESP_MOUNT);
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if mounted_at(&info, ESP_MOUNT) {
        return Ok(target);
    }
    let dev = layout
        .esp
        .device
        .clone()
        .ok_or_else(|| "the ESP has no block device".to_string())?;
    std::fs::create_dir_all(&target).map_err(|e| format!("creating {}: {e}", target.display()))?;
    let c = |s: &str| CString::new(s).map_err(|e| e.to_string());
    let (src, tgt, fstype, data) = (
        c(&dev.to_string_lossy())?,
        c(ESP_MOUNT)?,
        c("vfat")?,
        c("umask=0077,shortname=mixed,errors=remount-ro")?,
    );
    // SAFETY: all pointers are valid NUL-terminated strings for the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            fstype.as_ptr(),
            // dirsync: vfat writes a renamed file's directory entry (its
            // size and first cluster) inside rename(), not at writeback
            // (see cairn_slots::esp)
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_DIRSYNC,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(format!(
            "mounting the ESP {} on {ESP_MOUNT}: {}",
            dev.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(target)
}

/// A systemd unit as the health gate sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitState {
    pub load: String,
    pub active: String,
    pub sub: String,
    /// Restarts since it was started (services only).
    pub restarts: u32,
}

/// Restarts after which a unit counts as crash-looping.
pub const MAX_RESTARTS: u32 = 5;

impl UnitState {
    /// `Ok(true)` healthy, `Ok(false)` not yet, `Err` broken.
    pub fn verdict(&self, name: &str) -> Result<bool, String> {
        if self.load != "loaded" {
            return Err(format!("{name} is {} (it cannot start)", self.load));
        }
        if self.active == "failed" {
            return Err(format!("{name} failed ({})", self.sub));
        }
        if self.restarts >= MAX_RESTARTS {
            return Err(format!(
                "{name} restarted {} times (crash loop)",
                self.restarts
            ));
        }
        Ok(self.active == "active")
    }
}

/// systemd and logind on the system bus.
pub struct Systemd {
    conn: zbus::Connection,
}

const SD_DEST: &str = "org.freedesktop.systemd1";
const SD_PATH: &str = "/org/freedesktop/systemd1";
const SD_MANAGER: &str = "org.freedesktop.systemd1.Manager";

impl Systemd {
    pub async fn connect() -> Result<Systemd, String> {
        let conn = zbus::Connection::system()
            .await
            .map_err(|e| format!("connecting to the system D-Bus: {e}"))?;
        Ok(Systemd { conn })
    }

    async fn proxy(
        &self,
        dest: &'static str,
        path: zbus::zvariant::OwnedObjectPath,
        iface: &'static str,
    ) -> Result<zbus::Proxy<'static>, String> {
        zbus::Proxy::new(&self.conn, dest, path, iface)
            .await
            .map_err(|e| format!("D-Bus proxy {iface}: {e}"))
    }

    /// Load state, active state and restart count of `unit`.
    pub async fn unit(&self, unit: &str) -> Result<UnitState, String> {
        let manager = self.proxy(SD_DEST, path(SD_PATH)?, SD_MANAGER).await?;
        let obj: zbus::zvariant::OwnedObjectPath = manager
            .call("LoadUnit", &(unit,))
            .await
            .map_err(|e| format!("systemd LoadUnit {unit}: {e}"))?;
        let u = self
            .proxy(SD_DEST, obj.clone(), "org.freedesktop.systemd1.Unit")
            .await?;
        let prop = |name: &'static str| {
            let u = &u;
            async move {
                u.get_property::<String>(name)
                    .await
                    .map_err(|e| format!("{unit} {name}: {e}"))
            }
        };
        let (load, active, sub) = (
            prop("LoadState").await?,
            prop("ActiveState").await?,
            prop("SubState").await?,
        );
        let restarts = if unit.ends_with(".service") && load == "loaded" {
            let s = self
                .proxy(SD_DEST, obj, "org.freedesktop.systemd1.Service")
                .await?;
            s.get_property::<u32>("NRestarts").await.unwrap_or(0)
        } else {
            0
        };
        Ok(UnitState {
            load,
            active,
            sub,
            restarts,
        })
    }

    /// Reboot through logind (which honours shutdown inhibitors), falling
    /// back to starting `reboot.target` as `systemctl reboot` does.
    pub async fn reboot(&self) -> Result<(), String> {
        let logind = self
            .proxy(
                "org.freedesktop.login1",
                path("/org/freedesktop/login1")?,
                "org.freedesktop.login1.Manager",
            )
            .await;
        if let Ok(l) = logind {
            match l.call::<_, _, ()>("Reboot", &(false,)).await {
                Ok(()) => return Ok(()),
                Err(e) => log::warn!("logind Reboot: {e}; asking systemd directly"),
            }
        }
        let manager = self.proxy(SD_DEST, path(SD_PATH)?, SD_MANAGER).await?;
        let _job: zbus::zvariant::OwnedObjectPath = manager
            .call("StartUnit", &("reboot.target", "replace-irreversibly"))
            .await
            .map_err(|e| format!("systemd StartUnit reboot.target: {e}"))?;
        Ok(())
    }
}

/// Last resort when the system bus is not there: `systemctl reboot` talks
/// to PID 1 over its private socket. `no_block` returns as soon as the job
/// is queued (for a caller that is itself a unit the reboot stops).
pub fn systemctl_reboot(no_block: bool) -> Result<(), String> {
    let args: &[&str] = if no_block {
        &["--no-block", "reboot"]
    } else {
        &["reboot"]
    };
    let shown = format!("systemctl {}", args.join(" "));
    let st = std::process::Command::new("systemctl")
        .args(args)
        .status()
        .map_err(|e| format!("{shown}: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("{shown}: {st}"))
    }
}

fn path(p: &str) -> Result<zbus::zvariant::OwnedObjectPath, String> {
    zbus::zvariant::OwnedObjectPath::try_from(p).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_verdicts() {
        let u = |load: &str, active: &str, restarts| UnitState {
            load: load.into(),
            active: active.into(),
            sub: "x".into(),
            restarts,
        };
        assert_eq!(u("loaded", "active", 0).verdict("k"), Ok(true));
        assert_eq!(u("loaded", "activating", 1).verdict("k"), Ok(false));
        assert!(u("masked", "inactive", 0)
            .verdict("kubelet.service")
            .unwrap_err()
            .contains("kubelet.service is masked"));
        assert!(u("not-found", "inactive", 0).verdict("k").is_err());
        assert!(u("loaded", "failed", 0).verdict("k").is_err());
        assert!(u("loaded", "activating", 5)
            .verdict("k")
            .unwrap_err()
            .contains("crash loop"));
    }

    #[test]
    fn btime_and_mountinfo() {
        assert_eq!(
            btime("cpu 1 2\nbtime 1795908600\nprocesses 3\n"),
            Some(1795908600)
        );
        assert_eq!(btime("cpu 1\n"), None);
        let mi = "36 35 98:0 / /run/cairn/esp rw,nosuid - vfat /dev/vda1 rw\n";
        assert!(mounted_at(mi, "/run/cairn/esp"));
        assert!(!mounted_at(mi, "/run/cairn"));
    }

    #[test]
    fn finds_the_one_cairn_disk_in_sysfs() {
        let d = tempfile::tempdir().unwrap();
        let cb = d.path().join("class/block");
        let names = ["esp", "root-a", "verity-a", "root-b", "verity-b", "state"];
        let disk = |disk: &str, names: &[&str]| {
            std::fs::create_dir_all(cb.join(disk)).unwrap();
            for (i, n) in names.iter().enumerate() {
                let p = cb.join(disk).join(format!("{disk}{}", i + 1));
                std::fs::create_dir_all(&p).unwrap();
                std::fs::write(p.join("partition"), format!("{}\n", i + 1)).unwrap();
                std::fs::write(
                    p.join("uevent"),
                    format!("DEVNAME={disk}{}\nPARTN={}\nPARTNAME={n}\n", i + 1, i + 1),
                )
                .unwrap();
                std::fs::write(p.join("start"), "2048\n").unwrap();
                std::fs::write(p.join("size"), "2048\n").unwrap();
                // partitions also appear at the top level of /sys/class/block
                std::fs::create_dir_all(cb.join(format!("{disk}{}", i + 1))).unwrap();
                std::fs::write(cb.join(format!("{disk}{}", i + 1)).join("partition"), "1").unwrap();
            }
        };
        disk("vda", &names);
        disk("vdb", &["data"]);
        let (name, l) = find_disk(&cb, Path::new("/dev")).unwrap();
        assert_eq!(name, "vda");
        assert_eq!(l.esp.device.as_deref(), Some(Path::new("/dev/vda1")));
        disk("vdc", &names);
        let e = find_disk(&cb, Path::new("/dev")).unwrap_err();
        assert!(e.contains("vda, vdc"), "{e}");
    }
}
