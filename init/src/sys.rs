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
    fn set_hostname(&mut self, name: &str) -> Result<(), InitError>;
    /// Make `new_root` the root: move-mount it onto `/`, chroot, chdir.
    fn switch_root(&mut self, new_root: &str) -> Result<(), InitError>;
    /// Replace this process with `program` (PID 1 stays PID 1). Returns only on failure.
    fn exec(&mut self, program: &str, args: &[&str]) -> InitError;
    /// Seconds since the kernel started, for the console timeline.
    fn uptime(&mut self) -> f64;
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
}

/// A fake kernel that records calls; files it "has" come from `files`.
#[derive(Debug, Default)]
pub struct RecordingSys {
    pub calls: Vec<Call>,
    pub files: std::collections::BTreeMap<String, Vec<u8>>,
    pub mounted: Vec<String>,
    /// (sha256, len) reported for any hashed file.
    pub hash: (String, u64),
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
        1.5
    }
}

/// Path helper used by the boot plan.
pub fn join(a: &str, b: &str) -> String {
    let p: PathBuf = Path::new(a).join(b.trim_start_matches('/'));
    p.display().to_string()
}
