//! The syscalls stage 1 makes, behind a seam.
//!
//! [`RealSys`] talks to the kernel; [`RecordingSys`] records what would have
//! been done so the boot plan can be unit-tested without root.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::InitError;

/// A mount request: the table entries of [`crate::boot`] are these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub source: String,
    pub target: String,
    pub fstype: Option<String>,
    pub flags: MountFlags,
    pub data: Option<String>,
}

/// The mount flags stage 1 uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MountFlags {
    pub read_only: bool,
    pub nosuid: bool,
    pub nodev: bool,
    pub noexec: bool,
    pub bind: bool,
    pub move_: bool,
}

/// One line of a device-mapper table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmTarget {
    /// First sector (512 bytes) of the mapped device this target covers.
    pub start: u64,
    /// Length in 512-byte sectors.
    pub length: u64,
    /// Target type, e.g. `verity`.
    pub target_type: String,
    /// The target's parameters (the rest of a `dmsetup` table line).
    pub params: String,
}

/// A device-mapper device to create and activate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmDevice {
    /// Name (`/dev/mapper/<name>` with udev; stage 1 has none).
    pub name: String,
    /// DM UUID, for stage 2 tools (`dmsetup info`).
    pub uuid: String,
    /// Load the table read-only.
    pub read_only: bool,
    pub targets: Vec<DmTarget>,
}

/// Every effect stage 1 has on the machine.
pub trait Sys {
    /// Mount; an already-mounted target with the same source counts as done.
    fn mount(&mut self, m: &Mount) -> Result<(), InitError>;
    fn is_mountpoint(&mut self, path: &str) -> bool;
    fn mkdir_all(&mut self, path: &str) -> Result<(), InitError>;
    fn write_file(&mut self, path: &str, contents: &[u8], mode: u32) -> Result<(), InitError>;
    fn read_file(&mut self, path: &str) -> Result<Vec<u8>, InitError>;
    /// Copy a directory tree (files, dirs, symlinks; modes kept).
    fn copy_tree(&mut self, from: &str, to: &str) -> Result<(), InitError>;
    fn exists(&mut self, path: &str) -> bool;
    /// `finit_module` on a module file; "already loaded" counts as success.
    fn load_module(&mut self, path: &str) -> Result<(), InitError>;
    /// Attach a file read-only to a free loop device and return the device path.
    fn loop_attach_ro(&mut self, file: &str) -> Result<String, InitError>;
    /// sha256 and length of a file, streamed.
    fn hash_file(&mut self, path: &str) -> Result<(String, u64), InitError>;
    /// The rootfs target the update repository signed for `version`
    /// ([`crate::tuf`]), or `None` when the initramfs trusts no TUF root.
    fn signed_rootfs(
        &mut self,
        version: &str,
    ) -> Result<Option<crate::tuf::SignedRootfs>, InitError>;
    fn set_hostname(&mut self, name: &str) -> Result<(), InitError>;
    /// Make `new_root` the root: move-mount it onto `/`, chroot, chdir.
    fn switch_root(&mut self, new_root: &str) -> Result<(), InitError>;
    /// Replace this process with `program` (PID 1 stays PID 1). Returns only on failure.
    fn exec(&mut self, program: &str, args: &[&str]) -> InitError;
    /// Seconds since the kernel started, for the console timeline and
    /// deadlines.
    fn uptime(&mut self) -> f64;
    /// Wait a little (device polling).
    fn sleep(&mut self, d: std::time::Duration);
    /// Names of whole disks the kernel knows (`vda`, `nvme0n1`), not
    /// partitions, loop, ram or device-mapper devices.
    fn block_disks(&mut self) -> Vec<String>;
    /// The partitions of `disk` as the kernel parsed them (sysfs).
    fn disk_partitions(&mut self, disk: &str)
        -> Result<Vec<cairn_slots::PartitionInfo>, InitError>;
    /// Read `len` bytes at `offset` of a file or block device.
    fn read_at(&mut self, path: &str, offset: u64, len: usize) -> Result<Vec<u8>, InitError>;
    /// Create a device-mapper device, load its table and activate it
    /// (`DM_DEV_CREATE`, `DM_TABLE_LOAD`, `DM_DEV_SUSPEND` to resume);
    /// returns the block device (`/dev/dm-N`).
    fn dm_create(&mut self, dev: &DmDevice) -> Result<String, InitError>;
    /// Run a program to completion; a non-zero exit is an error that
    /// carries its output.
    fn run(&mut self, program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<(), InitError>;
}

/// The real kernel.
pub struct RealSys;

fn io_err(what: &str, path: &str, e: impl std::fmt::Display) -> InitError {
    InitError::Sys(format!("{what} {path}: {e}"))
}

impl Sys for RealSys {
    fn mount(&mut self, m: &Mount) -> Result<(), InitError> {
        use nix::mount::MsFlags;
        let mut flags = MsFlags::empty();
        let f = m.flags;
        if f.read_only {
            flags |= MsFlags::MS_RDONLY;
        }
        if f.nosuid {
            flags |= MsFlags::MS_NOSUID;
        }
        if f.nodev {
            flags |= MsFlags::MS_NODEV;
        }
        if f.noexec {
            flags |= MsFlags::MS_NOEXEC;
        }
        if f.bind {
            flags |= MsFlags::MS_BIND;
        }
        if f.move_ {
            flags |= MsFlags::MS_MOVE;
        }
        nix::mount::mount(
            Some(m.source.as_str()),
            m.target.as_str(),
            m.fstype.as_deref(),
            flags,
            m.data.as_deref(),
        )
        .map_err(|e| {
            io_err(
                &format!(
                    "mount {} ({}) on",
                    m.source,
                    m.fstype.as_deref().unwrap_or("no fstype")
                ),
                &m.target,
                e,
            )
        })
    }

    fn is_mountpoint(&mut self, path: &str) -> bool {
        let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
            return false;
        };
        info.lines()
            .any(|l| l.split(' ').nth(4).is_some_and(|mp| mp == path))
    }

    fn mkdir_all(&mut self, path: &str) -> Result<(), InitError> {
        fs::create_dir_all(path).map_err(|e| io_err("create directory", path, e))
    }

    fn write_file(&mut self, path: &str, contents: &[u8], mode: u32) -> Result<(), InitError> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)
            .map_err(|e| io_err("write", path, e))?;
        std::io::Write::write_all(&mut f, contents).map_err(|e| io_err("write", path, e))
    }

    fn read_file(&mut self, path: &str) -> Result<Vec<u8>, InitError> {
        fs::read(path).map_err(|e| io_err("read", path, e))
    }

    fn copy_tree(&mut self, from: &str, to: &str) -> Result<(), InitError> {
        copy_tree(Path::new(from), Path::new(to))
    }

    fn exists(&mut self, path: &str) -> bool {
        Path::new(path).exists()
    }

    fn load_module(&mut self, path: &str) -> Result<(), InitError> {
        let f = File::open(path).map_err(|e| io_err("open module", path, e))?;
        match nix::kmod::finit_module(&f, c"", nix::kmod::ModuleInitFlags::empty()) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
            Err(e) => Err(io_err("load module", path, e)),
        }
    }

    fn loop_attach_ro(&mut self, file: &str) -> Result<String, InitError> {
        loopdev::attach_ro(file)
    }

    fn hash_file(&mut self, path: &str) -> Result<(String, u64), InitError> {
        use sha2::{Digest, Sha256};
        let mut f = File::open(path).map_err(|e| io_err("open", path, e))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut len = 0u64;
        loop {
            let n = f.read(&mut buf).map_err(|e| io_err("read", path, e))?;
            if n == 0 {
                break;
            }
            len += n as u64;
            h.update(&buf[..n]);
        }
        Ok((hex::encode(h.finalize()), len))
    }

    fn signed_rootfs(
        &mut self,
        version: &str,
    ) -> Result<Option<crate::tuf::SignedRootfs>, InitError> {
        let (root, metadata, work) = crate::tuf::default_paths();
        if !root.exists() {
            return Ok(None);
        }
        crate::tuf::signed_rootfs(
            &root,
            &metadata,
            &work,
            version,
            std::time::SystemTime::now(),
        )
        .map(Some)
    }
    fn set_hostname(&mut self, name: &str) -> Result<(), InitError> {
        nix::unistd::sethostname(name).map_err(|e| io_err("sethostname", name, e))
    }

    fn switch_root(&mut self, new_root: &str) -> Result<(), InitError> {
        use nix::mount::MsFlags;
        nix::unistd::chdir(new_root).map_err(|e| io_err("chdir", new_root, e))?;
        nix::mount::mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
            .map_err(|e| io_err("move mount onto /", new_root, e))?;
        nix::unistd::chroot(".").map_err(|e| io_err("chroot", new_root, e))?;
        nix::unistd::chdir("/").map_err(|e| io_err("chdir", "/", e))
    }

    fn exec(&mut self, program: &str, args: &[&str]) -> InitError {
        let prog = match CString::new(program) {
            Ok(p) => p,
            Err(e) => return io_err("exec", program, e),
        };
        let mut argv = vec![prog.clone()];
        for a in args {
            match CString::new(*a) {
                Ok(a) => argv.push(a),
                Err(e) => return io_err("exec", program, e),
            }
        }
        match nix::unistd::execv(&prog, &argv) {
            Ok(never) => match never {},
            Err(e) => io_err("exec", program, e),
        }
    }

    fn uptime(&mut self) -> f64 {
        fs::read_to_string("/proc/uptime")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0)
    }

    fn sleep(&mut self, d: std::time::Duration) {
        std::thread::sleep(d)
    }

    fn block_disks(&mut self) -> Vec<String> {
        let Ok(rd) = fs::read_dir("/sys/class/block") else {
            return Vec::new();
        };
        let mut disks: Vec<String> = rd
            .flatten()
            .filter(|e| !e.path().join("partition").exists())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| {
                !["loop", "ram", "dm-", "zram", "nbd", "sr", "md"]
                    .iter()
                    .any(|p| n.starts_with(p))
            })
            .collect();
        disks.sort();
        disks
    }

    fn disk_partitions(
        &mut self,
        disk: &str,
    ) -> Result<Vec<cairn_slots::PartitionInfo>, InitError> {
        use cairn_slots::layout::PartitionSource;
        cairn_slots::layout::SysfsSource::new(disk)
            .partitions()
            .map_err(|e| InitError::Sys(e.to_string()))
    }

    fn read_at(&mut self, path: &str, offset: u64, len: usize) -> Result<Vec<u8>, InitError> {
        use std::os::unix::fs::FileExt;
        let f = File::open(path).map_err(|e| io_err("open", path, e))?;
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, offset)
            .map_err(|e| io_err(&format!("read {len} bytes at {offset} of"), path, e))?;
        Ok(buf)
    }

    fn dm_create(&mut self, dev: &DmDevice) -> Result<String, InitError> {
        dm::create(dev)
    }

    fn run(&mut self, program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<(), InitError> {
        let out = std::process::Command::new(program)
            .args(args)
            .env_clear()
            .envs(env.iter().copied())
            .output()
            .map_err(|e| io_err("start", program, e))?;
        if out.status.success() {
            return Ok(());
        }
        let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stdout));
        Err(InitError::Sys(format!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            text.trim()
        )))
    }
}

mod dm {
    //! Device-mapper through its ioctls (`linux/dm-ioctl.h`, interface
    //! version 4), no libdevmapper or dmsetup needed.
    //!
    //! The `devicemapper` crate (Stratis) was considered: its `-sys` crate
    //! generates these bindings with bindgen at build time (libclang and
    //! libdevmapper headers on the build host) and pulls in another `nix`;
    //! three ioctls with two plain structs are less to trust.
    use super::*;

    /// `struct dm_ioctl` (312 bytes).
    #[repr(C)]
    struct DmIoctl {
        version: [u32; 3],
        data_size: u32,
        data_start: u32,
        target_count: u32,
        open_count: i32,
        flags: u32,
        event_nr: u32,
        padding: u32,
        dev: u64,
        name: [u8; 128],
        uuid: [u8; 129],
        data: [u8; 7],
    }

    /// `struct dm_target_spec` (40 bytes); the parameter string follows it.
    #[repr(C)]
    struct DmTargetSpec {
        sector_start: u64,
        length: u64,
        status: i32,
        next: u32,
        target_type: [u8; 16],
    }

    const _: () = assert!(std::mem::size_of::<DmIoctl>() == 312);
    const _: () = assert!(std::mem::size_of::<DmTargetSpec>() == 40);

    /// `_IOWR(0xfd, nr, struct dm_ioctl)`.
    const fn iowr(nr: u64) -> libc::c_ulong {
        ((3u64 << 30) | ((std::mem::size_of::<DmIoctl>() as u64) << 16) | (0xfd << 8) | nr)
            as libc::c_ulong
    }
    const DM_DEV_CREATE: libc::c_ulong = iowr(3);
    const DM_DEV_SUSPEND: libc::c_ulong = iowr(6);
    const DM_TABLE_LOAD: libc::c_ulong = iowr(9);
    const DM_READONLY_FLAG: u32 = 1 << 0;
    const CONTROL: &str = "/dev/mapper/control";

    fn header(name: &str, uuid: &str, data_size: usize) -> Result<DmIoctl, InitError> {
        if name.len() >= 128 || uuid.len() >= 129 {
            return Err(InitError::Sys(format!(
                "device-mapper name {name:?} or uuid {uuid:?} is too long"
            )));
        }
        let mut h = DmIoctl {
            version: [4, 0, 0],
            data_size: data_size as u32,
            data_start: std::mem::size_of::<DmIoctl>() as u32,
            target_count: 0,
            open_count: 0,
            flags: 0,
            event_nr: 0,
            padding: 0,
            dev: 0,
            name: [0; 128],
            uuid: [0; 129],
            data: [0; 7],
        };
        h.name[..name.len()].copy_from_slice(name.as_bytes());
        h.uuid[..uuid.len()].copy_from_slice(uuid.as_bytes());
        Ok(h)
    }

    /// The `DM_TABLE_LOAD` buffer: header, then each target spec followed by
    /// its NUL-terminated parameters padded to 8 bytes; `next` is the offset
    /// from one spec to the next.
    fn table_buffer(dev: &DmDevice) -> Result<Vec<u8>, InitError> {
        let mut body = Vec::new();
        for t in &dev.targets {
            if t.target_type.len() >= 16 {
                return Err(InitError::Sys(format!(
                    "device-mapper target type {:?} is too long",
                    t.target_type
                )));
            }
            let mut params = t.params.clone().into_bytes();
            params.push(0);
            let spec_len = std::mem::size_of::<DmTargetSpec>();
            params.resize((spec_len + params.len()).next_multiple_of(8) - spec_len, 0);
            let mut tt = [0u8; 16];
            tt[..t.target_type.len()].copy_from_slice(t.target_type.as_bytes());
            let spec = DmTargetSpec {
                sector_start: t.start,
                length: t.length,
                status: 0,
                next: (std::mem::size_of::<DmTargetSpec>() + params.len()) as u32,
                target_type: tt,
            };
            // SAFETY: DmTargetSpec is repr(C) plain data without padding
            // (8+8+4+4+16 bytes); viewing it as bytes reads initialised memory.
            let raw = unsafe {
                std::slice::from_raw_parts(
                    &spec as *const DmTargetSpec as *const u8,
                    std::mem::size_of::<DmTargetSpec>(),
                )
            };
            body.extend_from_slice(raw);
            body.extend_from_slice(&params);
        }
        let total = std::mem::size_of::<DmIoctl>() + body.len();
        // After DM_DEV_CREATE the device is looked up by name; the kernel
        // refuses requests that name it by both name and uuid.
        let mut h = header(&dev.name, "", total)?;
        h.target_count = dev.targets.len() as u32;
        if dev.read_only {
            h.flags |= DM_READONLY_FLAG;
        }
        let mut buf = Vec::with_capacity(total);
        // SAFETY: DmIoctl is repr(C) plain data whose fields tile its 312
        // bytes exactly (no padding); viewing it as bytes is sound.
        let raw = unsafe {
            std::slice::from_raw_parts(
                &h as *const DmIoctl as *const u8,
                std::mem::size_of::<DmIoctl>(),
            )
        };
        buf.extend_from_slice(raw);
        buf.extend_from_slice(&body);
        Ok(buf)
    }

    fn ioctl(
        ctl: &File,
        req: libc::c_ulong,
        buf: &mut [u8],
        what: &str,
        name: &str,
    ) -> Result<(), InitError> {
        // Every request used here is _IOWR on a struct dm_ioctl; the kernel
        // reads and writes at most data_size bytes with copy_from_user /
        // copy_to_user, so alignment does not matter.
        // SAFETY: `buf` starts with a dm_ioctl whose data_size equals buf.len(), and it is exclusively borrowed for the call.
        let rc = unsafe { libc::ioctl(ctl.as_raw_fd(), req, buf.as_mut_ptr()) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            return Err(InitError::Sys(format!(
                "device-mapper {what} for {name:?} failed: {e} (the kernel log says why: dmesg | grep device-mapper)"
            )));
        }
        Ok(())
    }

    fn header_bytes(h: &DmIoctl) -> Vec<u8> {
        // SAFETY: as in table_buffer: plain repr(C) data without padding.
        unsafe {
            std::slice::from_raw_parts(
                h as *const DmIoctl as *const u8,
                std::mem::size_of::<DmIoctl>(),
            )
        }
        .to_vec()
    }

    /// `dev` field of struct dm_ioctl after DM_DEV_CREATE: the kernel's
    /// `huge_encode_dev`, i.e. minor bits 0-7 and 20-39, major bits 8-19.
    pub fn minor_of(dev: u64) -> u64 {
        (dev & 0xff) | ((dev >> 12) & !0xff)
    }

    pub fn create(dev: &DmDevice) -> Result<String, InitError> {
        let ctl = OpenOptions::new()
            .read(true)
            .write(true)
            .open(CONTROL)
            .map_err(|e| io_err("open", &format!("{CONTROL} (is dm_mod loaded?)"), e))?;
        let mut create = header_bytes(&header(
            &dev.name,
            &dev.uuid,
            std::mem::size_of::<DmIoctl>(),
        )?);
        ioctl(&ctl, DM_DEV_CREATE, &mut create, "DM_DEV_CREATE", &dev.name)?;
        let mut devno = [0u8; 8];
        devno.copy_from_slice(&create[40..48]);
        let minor = minor_of(u64::from_ne_bytes(devno));

        let mut load = table_buffer(dev)?;
        ioctl(&ctl, DM_TABLE_LOAD, &mut load, "DM_TABLE_LOAD", &dev.name)?;
        // DM_DEV_SUSPEND without DM_SUSPEND_FLAG resumes the device, which
        // swaps the loaded table in and makes the device usable.
        let mut resume = header_bytes(&header(&dev.name, "", std::mem::size_of::<DmIoctl>())?);
        ioctl(
            &ctl,
            DM_DEV_SUSPEND,
            &mut resume,
            "resume (DM_DEV_SUSPEND)",
            &dev.name,
        )?;
        Ok(format!("/dev/dm-{minor}"))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn ioctl_numbers_match_the_header() {
            // From linux/dm-ioctl.h on x86-64.
            assert_eq!(DM_DEV_CREATE, 0xc138fd03);
            assert_eq!(DM_DEV_SUSPEND, 0xc138fd06);
            assert_eq!(DM_TABLE_LOAD, 0xc138fd09);
        }

        #[test]
        fn table_buffer_layout() {
            let dev = DmDevice {
                name: "root".into(),
                uuid: "CAIRN-VERITY-a".into(),
                read_only: true,
                targets: vec![DmTarget {
                    start: 0,
                    length: 2400,
                    target_type: "verity".into(),
                    params: "1 /dev/vda2 /dev/vda3".into(),
                }],
            };
            let b = table_buffer(&dev).unwrap();
            let u32_at = |o: usize| u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
            assert_eq!(u32_at(0), 4, "interface major version");
            assert_eq!(u32_at(12) as usize, b.len(), "data_size");
            assert_eq!(u32_at(16), 312, "data_start");
            assert_eq!(u32_at(20), 1, "target_count");
            assert_eq!(u32_at(28) & DM_READONLY_FLAG, DM_READONLY_FLAG);
            assert_eq!(&b[48..53], b"root\0");
            // Lookups after DM_DEV_CREATE name the device by name only: the
            // kernel rejects "name and uuid" with EINVAL.
            assert!(b[176..305].iter().all(|c| *c == 0), "no uuid in TABLE_LOAD");
            let spec = 312;
            assert_eq!(
                u64::from_ne_bytes(b[spec + 8..spec + 16].try_into().unwrap()),
                2400
            );
            assert_eq!(&b[spec + 24..spec + 31], b"verity\0");
            let params = &b[spec + 40..];
            assert!(params.starts_with(b"1 /dev/vda2 /dev/vda3\0"));
            assert_eq!(b.len() % 8, 0);
        }

        #[test]
        fn dev_numbers_decode_like_the_kernel() {
            // huge_encode_dev(MKDEV(254, 0)) and MKDEV(254, 300)
            assert_eq!(minor_of(254 << 8), 0);
            let enc = (300u64 & 0xff) | (254 << 8) | ((300u64 & !0xff) << 12);
            assert_eq!(minor_of(enc), 300);
        }
    }
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), InitError> {
    use std::os::unix::fs::PermissionsExt;
    let meta =
        fs::symlink_metadata(from).map_err(|e| io_err("stat", &from.display().to_string(), e))?;
    if meta.file_type().is_symlink() {
        let target =
            fs::read_link(from).map_err(|e| io_err("readlink", &from.display().to_string(), e))?;
        let _ = fs::remove_file(to);
        std::os::unix::fs::symlink(target, to)
            .map_err(|e| io_err("symlink", &to.display().to_string(), e))?;
    } else if meta.is_dir() {
        fs::create_dir_all(to)
            .map_err(|e| io_err("create directory", &to.display().to_string(), e))?;
        fs::set_permissions(to, fs::Permissions::from_mode(meta.permissions().mode()))
            .map_err(|e| io_err("chmod", &to.display().to_string(), e))?;
        let entries = fs::read_dir(from)
            .map_err(|e| io_err("read directory", &from.display().to_string(), e))?;
        for entry in entries {
            let entry =
                entry.map_err(|e| io_err("read directory", &from.display().to_string(), e))?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
    } else {
        fs::copy(from, to).map_err(|e| io_err("copy to", &to.display().to_string(), e))?;
        fs::set_permissions(to, fs::Permissions::from_mode(meta.permissions().mode()))
            .map_err(|e| io_err("chmod", &to.display().to_string(), e))?;
    }
    Ok(())
}

mod loopdev {
    //! Loop devices through their ioctls (`loop(4)`), no losetup needed.
    use super::*;

    const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
    const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
    const LO_FLAGS_READ_ONLY: u32 = 1;

    #[repr(C)]
    struct LoopInfo64 {
        lo_device: u64,
        lo_inode: u64,
        lo_rdevice: u64,
        lo_offset: u64,
        lo_sizelimit: u64,
        lo_number: u32,
        lo_encrypt_type: u32,
        lo_encrypt_key_size: u32,
        lo_flags: u32,
        lo_file_name: [u8; 64],
        lo_crypt_name: [u8; 64],
        lo_encrypt_key: [u8; 32],
        lo_init: [u64; 2],
    }

    #[repr(C)]
    struct LoopConfig {
        fd: u32,
        block_size: u32,
        info: LoopInfo64,
        reserved: [u64; 8],
    }

    pub fn attach_ro(file: &str) -> Result<String, InitError> {
        let ctl = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/loop-control")
            .map_err(|e| io_err("open", "/dev/loop-control (is the loop module loaded?)", e))?;
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(io_err(
                "LOOP_CTL_GET_FREE",
                "/dev/loop-control",
                std::io::Error::last_os_error(),
            ));
        }
        let dev = format!("/dev/loop{n}");
        let backing = File::open(file).map_err(|e| io_err("open", file, e))?;
        let loopdev = OpenOptions::new()
            .read(true)
            .open(&dev)
            .map_err(|e| io_err("open", &dev, e))?;
        // SAFETY: LoopConfig is plain old data; all-zero is a valid value.
        let mut cfg: LoopConfig = unsafe { std::mem::zeroed() };
        cfg.fd = backing.as_raw_fd() as u32;
        // No LO_FLAGS_AUTOCLEAR: it detaches the device when this function
        // closes its fd, before anything is mounted from it.
        cfg.info.lo_flags = LO_FLAGS_READ_ONLY;
        let name = file.as_bytes();
        let n = name.len().min(63);
        cfg.info.lo_file_name[..n].copy_from_slice(&name[..n]);
        // SAFETY: LOOP_CONFIGURE reads a struct loop_config from the pointer,
        // which lives for the duration of the call; the fds are open.
        let rc = unsafe {
            libc::ioctl(
                loopdev.as_raw_fd(),
                LOOP_CONFIGURE,
                &cfg as *const LoopConfig,
            )
        };
        if rc < 0 {
            return Err(io_err(
                "LOOP_CONFIGURE",
                &dev,
                std::io::Error::last_os_error(),
            ));
        }
        Ok(dev)
    }
}

/// One recorded effect.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    Mount(Mount),
    Mkdir(String),
    Write(String, Vec<u8>),
    CopyTree(String, String),
    LoadModule(String),
    LoopAttach(String),
    Hash(String),
    Hostname(String),
    SwitchRoot(String),
    Exec(String),
    DmCreate(DmDevice),
    Run(String, Vec<String>),
}

/// A fake kernel that records calls; files it "has" come from `files`.
#[derive(Debug, Default)]
pub struct RecordingSys {
    pub calls: Vec<Call>,
    pub files: std::collections::BTreeMap<String, Vec<u8>>,
    pub mounted: Vec<String>,
    /// (sha256, len) reported for any hashed file.
    pub hash: (String, u64),
    /// Seconds since "boot"; [`Sys::sleep`] advances it.
    pub clock: f64,
    /// Whole disks and their partitions.
    pub disks: std::collections::BTreeMap<String, Vec<cairn_slots::PartitionInfo>>,
    /// Disks are invisible before this `clock` value (a late driver probe).
    pub disks_visible_at: f64,
    /// Contents of block devices for [`Sys::read_at`] (zeros past the end).
    pub devices: std::collections::BTreeMap<String, Vec<u8>>,
    /// When set, [`Sys::run`] fails with this message.
    pub run_fails: Option<String>,
    /// What [`Sys::signed_rootfs`] returns (`Err`: its message).
    pub signed: Option<Result<crate::tuf::SignedRootfs, String>>,
}

impl Sys for RecordingSys {
    fn mount(&mut self, m: &Mount) -> Result<(), InitError> {
        self.mounted.push(m.target.clone());
        self.calls.push(Call::Mount(m.clone()));
        Ok(())
    }
    fn is_mountpoint(&mut self, path: &str) -> bool {
        self.mounted.iter().any(|m| m == path)
    }
    fn mkdir_all(&mut self, path: &str) -> Result<(), InitError> {
        self.calls.push(Call::Mkdir(path.into()));
        Ok(())
    }
    fn write_file(&mut self, path: &str, contents: &[u8], _mode: u32) -> Result<(), InitError> {
        self.calls.push(Call::Write(path.into(), contents.to_vec()));
        Ok(())
    }
    fn read_file(&mut self, path: &str) -> Result<Vec<u8>, InitError> {
        self.files
            .get(path)
            .cloned()
            .ok_or_else(|| io_err("read", path, "no such file"))
    }
    fn copy_tree(&mut self, from: &str, to: &str) -> Result<(), InitError> {
        self.calls.push(Call::CopyTree(from.into(), to.into()));
        Ok(())
    }
    fn exists(&mut self, path: &str) -> bool {
        self.files.contains_key(path)
            || self
                .files
                .keys()
                .any(|k| k.starts_with(&format!("{path}/")))
    }
    fn load_module(&mut self, path: &str) -> Result<(), InitError> {
        self.calls.push(Call::LoadModule(path.into()));
        Ok(())
    }
    fn loop_attach_ro(&mut self, file: &str) -> Result<String, InitError> {
        self.calls.push(Call::LoopAttach(file.into()));
        Ok("/dev/loop0".into())
    }
    fn hash_file(&mut self, path: &str) -> Result<(String, u64), InitError> {
        self.calls.push(Call::Hash(path.into()));
        Ok(self.hash.clone())
    }
    fn signed_rootfs(
        &mut self,
        _version: &str,
    ) -> Result<Option<crate::tuf::SignedRootfs>, InitError> {
        match &self.signed {
            None => Ok(None),
            Some(Ok(s)) => Ok(Some(s.clone())),
            Some(Err(m)) => Err(InitError::Rootfs(m.clone())),
        }
    }
    fn set_hostname(&mut self, name: &str) -> Result<(), InitError> {
        self.calls.push(Call::Hostname(name.into()));
        Ok(())
    }
    fn switch_root(&mut self, new_root: &str) -> Result<(), InitError> {
        self.calls.push(Call::SwitchRoot(new_root.into()));
        Ok(())
    }
    fn exec(&mut self, program: &str, _args: &[&str]) -> InitError {
        self.calls.push(Call::Exec(program.into()));
        InitError::Sys(format!("recorded exec of {program}"))
    }
    fn uptime(&mut self) -> f64 {
        self.clock
    }
    fn sleep(&mut self, d: std::time::Duration) {
        self.clock += d.as_secs_f64();
    }
    fn block_disks(&mut self) -> Vec<String> {
        if self.clock < self.disks_visible_at {
            return Vec::new();
        }
        self.disks.keys().cloned().collect()
    }
    fn disk_partitions(
        &mut self,
        disk: &str,
    ) -> Result<Vec<cairn_slots::PartitionInfo>, InitError> {
        self.disks
            .get(disk)
            .cloned()
            .ok_or_else(|| io_err("read partitions of", disk, "no such disk"))
    }
    fn read_at(&mut self, path: &str, offset: u64, len: usize) -> Result<Vec<u8>, InitError> {
        let dev = self
            .devices
            .get(path)
            .ok_or_else(|| io_err("open", path, "no such device"))?;
        let mut out = vec![0u8; len];
        let start = (offset as usize).min(dev.len());
        let end = (start + len).min(dev.len());
        out[..end - start].copy_from_slice(&dev[start..end]);
        Ok(out)
    }
    fn dm_create(&mut self, dev: &DmDevice) -> Result<String, InitError> {
        self.calls.push(Call::DmCreate(dev.clone()));
        Ok("/dev/dm-0".into())
    }
    fn run(
        &mut self,
        program: &str,
        args: &[&str],
        _env: &[(&str, &str)],
    ) -> Result<(), InitError> {
        self.calls.push(Call::Run(
            program.into(),
            args.iter().map(|a| a.to_string()).collect(),
        ));
        match &self.run_fails {
            Some(m) => Err(InitError::Sys(m.clone())),
            None => Ok(()),
        }
    }
}

/// Path helper used by the boot plan.
pub fn join(a: &str, b: &str) -> String {
    let p: PathBuf = Path::new(a).join(b.trim_start_matches('/'));
    p.display().to_string()
}
