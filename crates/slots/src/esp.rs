//! The ESP seam: the UKIs in `EFI/Linux/` and `loader/loader.conf`.
//!
//! [`Esp`] is the small trait the plan and the post-boot actions write
//! through; [`DirEsp`] is the real one over a mounted ESP, [`MemEsp`] an
//! in-memory one with fault injection for tests. Everything that needs to
//! survive a power cut is written as temp file + fsync + rename + fsync of
//! the file under its new name + fsync of the directory. (The ESP is FAT,
//! which has no journal: this is the best a FAT file system offers, and
//! the order of the renames is what keeps the machine bootable, see
//! [`crate::plan`].)
//!
//! The fsync after the rename matters on Linux's vfat: a FAT directory
//! entry holds the file's size and first cluster, and `rename` writes the
//! new entry with size 0 (or, replacing a file, leaves the old file's
//! cluster in it) and only marks the inode dirty; fsync of the *directory*
//! does not write it. Until writeback (30 s later) a power cut leaves a
//! 0-byte entry — seen in the QEMU tier as a new slot's UKI of 0 bytes and
//! a `loader.conf` without its new `default`. The agent also mounts the
//! ESP with `dirsync`, which makes vfat write the entry inside `rename`.
//!
//! Temp files are named `.cairn-<name>.tmp`: systemd-boot skips names that
//! start with `.` and files that do not end in `.efi`, so a leftover from a
//! crash is never booted, and [`Listing`] reports it for removal.
//!
//! `loader.conf` also belongs here because cairn steers the first boot of a
//! new slot with its `default` line (see [`crate::entry`] for why).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::entry::{sd_boot::DefaultSettings, EntryError, EntryName};
use crate::slot::{copy_verified, Expected, Slot, StreamError};

/// Directory of type #2 entries, relative to the ESP root.
pub const LINUX_DIR: &str = "EFI/Linux";
/// systemd-boot's configuration file, relative to the ESP root.
pub const LOADER_CONF: &str = "loader/loader.conf";
/// Vendor GUID of systemd-boot's EFI variables.
pub const LOADER_GUID: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";

/// A failed ESP operation; every variant names the file and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum EspError {
    /// A name that could escape `EFI/Linux` or is not a plain file name.
    #[error("refusing ESP file name {name:?}: it must be a plain file name without '/', '\\' or a leading '.'")]
    BadName {
        /// The name.
        name: String,
    },
    /// An I/O error on a file or directory of the ESP.
    #[error("{op} {path} on the ESP failed: {source}; check that the ESP is mounted read-write and not full")]
    Io {
        /// What was being done ("reading", "renaming … to", …).
        op: String,
        /// The file or directory.
        path: String,
        /// The I/O error.
        source: io::Error,
    },
    /// The UKI stream did not match the signed target; nothing was installed.
    #[error("UKI {name} was not installed on the ESP: {source}; the download is corrupt or not the signed target, fetch it again")]
    Uki {
        /// The entry file name it was going to get.
        name: String,
        /// How the stream was wrong.
        source: StreamError,
    },
    /// `rename` or `remove` of a file that is not there.
    #[error("{path} does not exist on the ESP; the ESP changed behind cairn's back, run `cairnctl update status`")]
    Missing {
        /// The file.
        path: String,
    },
    /// A cairn entry file name that cannot be parsed.
    #[error(transparent)]
    Entry(#[from] EntryError),
    /// A fault injected by a test ([`MemEsp`]).
    #[error("injected fault: {0}")]
    Injected(String),
}

/// The ESP as cairn uses it. Names are file names in `EFI/Linux/`.
pub trait Esp {
    /// Where this ESP is, for messages (e.g. `/boot/efi`).
    fn describe(&self) -> String;
    /// File names in `EFI/Linux/` (regular files only, any name).
    fn list(&self) -> Result<Vec<String>, EspError>;
    /// Stream a UKI into `EFI/Linux/<name>` atomically: into a temp file,
    /// checked against `expected` (length and sha256), fsync, rename, fsync
    /// the directory. On any error nothing named `name` is created.
    fn install(
        &mut self,
        name: &str,
        src: &mut dyn Read,
        expected: &Expected,
    ) -> Result<(), EspError>;
    /// Rename `EFI/Linux/<from>` to `<to>` (replacing `<to>`), then fsync the
    /// directory.
    fn rename(&mut self, from: &str, to: &str) -> Result<(), EspError>;
    /// Remove `EFI/Linux/<name>`; removing a missing file is not an error.
    fn remove(&mut self, name: &str) -> Result<(), EspError>;
    /// Contents of `loader/loader.conf`, `None` when it does not exist.
    fn read_loader_conf(&self) -> Result<Option<String>, EspError>;
    /// Replace `loader/loader.conf` atomically.
    fn write_loader_conf(&mut self, content: &str) -> Result<(), EspError>;
}

/// The name of the temp file used while installing `name`.
pub fn temp_name(name: &str) -> String {
    format!(".cairn-{name}.tmp")
}

fn check_name(name: &str) -> Result<(), EspError> {
    if name.is_empty()
        || name.starts_with('.')
        || name.contains('/')
        || name.contains('\\')
        || name.contains('\0')
    {
        return Err(EspError::BadName {
            name: name.to_string(),
        });
    }
    Ok(())
}

/// The contents of `EFI/Linux/`, sorted out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// cairn entries, in systemd-boot's order.
    pub entries: Vec<EntryName>,
    /// `cairn-*` files that do not parse (with the reason).
    pub malformed: Vec<(String, String)>,
    /// Other `*.efi` files: another OS's UKIs. systemd-boot lists them too.
    pub foreign: Vec<String>,
    /// Leftover cairn temp files from an interrupted install.
    pub temp: Vec<String>,
}

impl Listing {
    /// Sort the file names of `EFI/Linux/`.
    pub fn from_names(names: &[String]) -> Listing {
        let mut l = Listing::default();
        for n in names {
            if n.starts_with(".cairn-") && n.ends_with(".tmp") {
                l.temp.push(n.clone());
                continue;
            }
            match EntryName::parse(n) {
                Ok(e) => l.entries.push(e),
                Err(EntryError::Malformed { reason, .. }) => l.malformed.push((n.clone(), reason)),
                Err(EntryError::NotCairn { .. }) => {
                    if !n.starts_with('.') && n.to_ascii_lowercase().ends_with(".efi") {
                        l.foreign.push(n.clone());
                    }
                }
            }
        }
        l.entries.sort();
        l.malformed.sort();
        l.foreign.sort();
        l.temp.sort();
        l
    }

    /// Entries of one slot, in systemd-boot's order.
    pub fn of_slot(&self, slot: Slot) -> Vec<&EntryName> {
        self.entries.iter().filter(|e| e.slot() == slot).collect()
    }
}

/// List and sort out `EFI/Linux/`.
pub fn listing(esp: &dyn Esp) -> Result<Listing, EspError> {
    Ok(Listing::from_names(&esp.list()?))
}

/// The `default` value of a `loader.conf`, parsed the way systemd-boot's
/// `line_get_key_value` does (whitespace-trimmed lines, `#` comments, key
/// and value split at the first blank, one pair of quotes removed, the
/// last `default` line wins).
pub fn loader_conf_default(content: &str) -> Option<String> {
    let mut found = None;
    for (key, value) in conf_pairs(content) {
        if key == "default" {
            found = Some(value.to_string());
        }
    }
    found
}

fn conf_pairs(content: &str) -> impl Iterator<Item = (&str, &str)> {
    content.split(['\n', '\r']).filter_map(|line| {
        let line = line.trim_matches([' ', '\t']);
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let (key, value) = line.split_once([' ', '\t'])?;
        let value = value.trim_start_matches([' ', '\t']);
        let value = match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            Some(v) => v,
            None => value,
        };
        Some((key, value))
    })
}

/// `loader.conf` with every `default` line removed and, if `pattern` is
/// given, `default <pattern>` appended. Other lines are kept as they are.
pub fn set_loader_conf_default(content: &str, pattern: Option<&str>) -> String {
    let mut out = String::new();
    for line in content.lines() {
        let is_default = conf_pairs(line).any(|(k, _)| k == "default");
        if !is_default {
            out.push_str(line);
            out.push('\n');
        }
    }
    if let Some(p) = pattern {
        out.push_str("default ");
        out.push_str(p);
        out.push('\n');
    }
    out
}

/// Set (or with `None` remove) the `default` line of the ESP's
/// `loader.conf`; a no-op when it already says that.
pub fn set_default(esp: &mut dyn Esp, pattern: Option<&str>) -> Result<(), EspError> {
    let current = esp.read_loader_conf()?;
    let old = current.as_deref().unwrap_or("");
    if loader_conf_default(old).as_deref() == pattern {
        return Ok(());
    }
    let new = set_loader_conf_default(old, pattern);
    log::info!(
        "loader.conf default on {}: {}",
        esp.describe(),
        pattern.unwrap_or("(none)")
    );
    esp.write_loader_conf(&new)
}

/// The selection inputs systemd-boot will see: `loader.conf`'s `default`
/// plus the EFI variables (pass [`LoaderEfiVars::default`] when they are
/// not readable, e.g. in tests).
pub fn default_settings(esp: &dyn Esp, vars: &LoaderEfiVars) -> Result<DefaultSettings, EspError> {
    let conf = esp.read_loader_conf()?;
    Ok(DefaultSettings {
        oneshot: vars.entry_oneshot.clone(),
        efi_default: vars.entry_default.clone(),
        conf_default: conf.as_deref().and_then(loader_conf_default),
        last_booted: vars.entry_last_booted.clone(),
    })
}

/// systemd-boot's EFI variables that override `loader.conf`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoaderEfiVars {
    /// `LoaderEntryOneShot`.
    pub entry_oneshot: Option<String>,
    /// `LoaderEntryDefault`.
    pub entry_default: Option<String>,
    /// `LoaderEntryLastBooted`.
    pub entry_last_booted: Option<String>,
}

impl LoaderEfiVars {
    /// True when a variable would take precedence over cairn's `loader.conf`
    /// default (the agent should clear it, e.g. `bootctl set-default ""`).
    pub fn overrides_loader_conf(&self) -> bool {
        self.entry_oneshot.is_some() || self.entry_default.is_some()
    }
}

/// Read systemd-boot's selection variables from efivarfs
/// (`/sys/firmware/efi/efivars`): 4 attribute bytes, then a UTF-16LE
/// string, NUL-terminated. A missing variable is `None`.
pub fn read_loader_efi_vars(efivars: &Path) -> Result<LoaderEfiVars, EspError> {
    let read = |name: &str| -> Result<Option<String>, EspError> {
        let path = efivars.join(format!("{name}-{LOADER_GUID}"));
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(EspError::Io {
                    op: "reading EFI variable".into(),
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        let units: Vec<u16> = bytes
            .get(4..)
            .unwrap_or(&[])
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|u| *u != 0)
            .collect();
        let s = String::from_utf16_lossy(&units);
        Ok((!s.is_empty()).then_some(s))
    };
    Ok(LoaderEfiVars {
        entry_oneshot: read("LoaderEntryOneShot")?,
        entry_default: read("LoaderEntryDefault")?,
        entry_last_booted: read("LoaderEntryLastBooted")?,
    })
}

/// A mounted ESP (its root directory, e.g. `/boot/efi`).
#[derive(Debug, Clone)]
pub struct DirEsp {
    root: PathBuf,
}

impl DirEsp {
    /// The ESP mounted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirEsp { root: root.into() }
    }

    fn linux_dir(&self) -> PathBuf {
        self.root.join(LINUX_DIR)
    }

    fn io(op: &str, path: &Path) -> impl FnOnce(io::Error) -> EspError {
        let op = op.to_string();
        let path = path.display().to_string();
        move |source| EspError::Io { op, path, source }
    }

    fn sync_dir(dir: &Path) -> Result<(), EspError> {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(Self::io("syncing directory", dir))
    }

    /// After a rename: the file's directory entry under its new name (its
    /// size and first cluster), then the directory (the old entry gone).
    fn sync_renamed(path: &Path, dir: &Path) -> Result<(), EspError> {
        File::open(path)
            .and_then(|f| f.sync_all())
            .map_err(Self::io("syncing", path))?;
        Self::sync_dir(dir)
    }

    /// Write `content` to `dir/name` via `dir/tmp`: create, write, fsync,
    /// rename, fsync the file, fsync dir.
    fn atomic_write(
        dir: &Path,
        tmp: &str,
        name: &str,
        write: impl FnOnce(&mut File) -> Result<(), EspError>,
    ) -> Result<(), EspError> {
        fs::create_dir_all(dir).map_err(Self::io("creating directory", dir))?;
        let tmp_path = dir.join(tmp);
        let path = dir.join(name);
        let result = (|| {
            let mut f = File::create(&tmp_path).map_err(Self::io("creating", &tmp_path))?;
            write(&mut f)?;
            f.sync_all().map_err(Self::io("syncing", &tmp_path))?;
            drop(f);
            fs::rename(&tmp_path, &path).map_err(|source| EspError::Io {
                op: format!("renaming {} to", tmp_path.display()),
                path: path.display().to_string(),
                source,
            })
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp_path);
            return result;
        }
        Self::sync_renamed(&path, dir)
    }
}

impl Esp for DirEsp {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn list(&self) -> Result<Vec<String>, EspError> {
        let dir = self.linux_dir();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Self::io("listing", &dir)(e)),
        };
        let mut names = Vec::new();
        for ent in rd {
            let ent = ent.map_err(Self::io("listing", &dir))?;
            let ft = ent.file_type().map_err(Self::io("listing", &dir))?;
            if ft.is_file() {
                names.push(ent.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    fn install(
        &mut self,
        name: &str,
        src: &mut dyn Read,
        expected: &Expected,
    ) -> Result<(), EspError> {
        check_name(name)?;
        let dir = self.linux_dir();
        Self::atomic_write(&dir, &temp_name(name), name, |f| {
            let mut w = io::BufWriter::with_capacity(1 << 20, &mut *f);
            copy_verified(src, &mut w, expected).map_err(|source| EspError::Uki {
                name: name.to_string(),
                source,
            })?;
            w.flush()
                .map_err(Self::io("writing", &dir.join(temp_name(name))))
        })
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<(), EspError> {
        check_name(from)?;
        check_name(to)?;
        let dir = self.linux_dir();
        let (a, b) = (dir.join(from), dir.join(to));
        match fs::rename(&a, &b) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(EspError::Missing {
                    path: a.display().to_string(),
                })
            }
            Err(source) => {
                return Err(EspError::Io {
                    op: format!("renaming {} to", a.display()),
                    path: b.display().to_string(),
                    source,
                })
            }
        }
        Self::sync_renamed(&b, &dir)
    }

    fn remove(&mut self, name: &str) -> Result<(), EspError> {
        // Temp names start with '.', so only the shape is checked here.
        if name.is_empty() || name.contains('/') || name.contains('\\') || name == ".." {
            return Err(EspError::BadName {
                name: name.to_string(),
            });
        }
        let dir = self.linux_dir();
        let path = dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => Self::sync_dir(&dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Self::io("removing", &path)(e)),
        }
    }

    fn read_loader_conf(&self) -> Result<Option<String>, EspError> {
        let path = self.root.join(LOADER_CONF);
        match fs::read_to_string(&path) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Self::io("reading", &path)(e)),
        }
    }

    fn write_loader_conf(&mut self, content: &str) -> Result<(), EspError> {
        let path = self.root.join(LOADER_CONF);
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        Self::atomic_write(&dir, ".loader.conf.cairn.tmp", "loader.conf", |f| {
            f.write_all(content.as_bytes())
                .map_err(Self::io("writing", &dir.join(".loader.conf.cairn.tmp")))
        })
    }
}

/// Where [`MemEsp`] should fail (a simulated crash or I/O error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemFault {
    /// `install` writes the temp file, then fails before the rename (as if
    /// the power went out).
    InstallBeforeRename,
    /// The next `rename` fails without renaming.
    Rename,
    /// The next `write_loader_conf` fails without writing.
    LoaderConf,
}

/// An in-memory ESP for tests, with a log of operations and one-shot
/// faults.
#[derive(Debug, Clone, Default)]
pub struct MemEsp {
    /// `EFI/Linux/` contents.
    pub files: BTreeMap<String, Vec<u8>>,
    /// `loader/loader.conf`.
    pub loader_conf: Option<String>,
    /// Operations performed, e.g. `rename a -> b`.
    pub log: Vec<String>,
    /// A fault to inject at the next matching operation.
    pub fault: Option<MemFault>,
}

impl MemEsp {
    /// An empty ESP.
    pub fn new() -> Self {
        Self::default()
    }

    /// An ESP holding these (empty) UKIs.
    pub fn with_files(names: &[&str]) -> Self {
        let mut m = Self::new();
        for n in names {
            m.files.insert((*n).to_string(), Vec::new());
        }
        m
    }

    fn take_fault(&mut self, f: MemFault) -> bool {
        if self.fault.as_ref() == Some(&f) {
            self.fault = None;
            true
        } else {
            false
        }
    }
}

impl Esp for MemEsp {
    fn describe(&self) -> String {
        "in-memory ESP".into()
    }

    fn list(&self) -> Result<Vec<String>, EspError> {
        Ok(self.files.keys().cloned().collect())
    }

    fn install(
        &mut self,
        name: &str,
        src: &mut dyn Read,
        expected: &Expected,
    ) -> Result<(), EspError> {
        check_name(name)?;
        let mut buf = Vec::new();
        copy_verified(src, &mut buf, expected).map_err(|source| EspError::Uki {
            name: name.to_string(),
            source,
        })?;
        let tmp = temp_name(name);
        self.files.insert(tmp.clone(), buf);
        if self.take_fault(MemFault::InstallBeforeRename) {
            return Err(EspError::Injected(format!("crash before renaming {tmp}")));
        }
        let data = self.files.remove(&tmp).unwrap_or_default();
        self.files.insert(name.to_string(), data);
        self.log.push(format!("install {name}"));
        Ok(())
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<(), EspError> {
        check_name(from)?;
        check_name(to)?;
        if self.take_fault(MemFault::Rename) {
            return Err(EspError::Injected(format!("rename {from} -> {to}")));
        }
        let data = self.files.remove(from).ok_or_else(|| EspError::Missing {
            path: format!("{LINUX_DIR}/{from}"),
        })?;
        self.files.insert(to.to_string(), data);
        self.log.push(format!("rename {from} -> {to}"));
        Ok(())
    }

    fn remove(&mut self, name: &str) -> Result<(), EspError> {
        if self.files.remove(name).is_some() {
            self.log.push(format!("remove {name}"));
        }
        Ok(())
    }

    fn read_loader_conf(&self) -> Result<Option<String>, EspError> {
        Ok(self.loader_conf.clone())
    }

    fn write_loader_conf(&mut self, content: &str) -> Result<(), EspError> {
        if self.take_fault(MemFault::LoaderConf) {
            return Err(EspError::Injected("write loader.conf".into()));
        }
        self.loader_conf = Some(content.to_string());
        self.log.push(format!(
            "loader.conf default {}",
            loader_conf_default(content).unwrap_or_else(|| "(none)".into())
        ));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(esp: &mut dyn Esp) {
        let uki = b"MZ fake uki".to_vec();
        let exp = Expected::of(&uki);
        esp.install("cairn-b-1.3.0+3.efi", &mut &uki[..], &exp)
            .unwrap();
        assert_eq!(esp.list().unwrap(), ["cairn-b-1.3.0+3.efi"]);

        // A stream that does not match leaves nothing behind.
        let bad = b"MZ evil uki".to_vec();
        let err = esp
            .install("cairn-a-1.2.0+3.efi", &mut &bad[..], &exp)
            .unwrap_err();
        assert!(
            matches!(&err, EspError::Uki { name, source: StreamError::HashMismatch { .. } } if name == "cairn-a-1.2.0+3.efi"),
            "{err}"
        );
        assert_eq!(esp.list().unwrap(), ["cairn-b-1.3.0+3.efi"]);

        esp.rename("cairn-b-1.3.0+3.efi", "cairn-b-1.3.0.efi")
            .unwrap();
        assert_eq!(esp.list().unwrap(), ["cairn-b-1.3.0.efi"]);
        let err = esp.rename("nope.efi", "x.efi").unwrap_err();
        assert!(matches!(err, EspError::Missing { .. }), "{err}");
        assert!(err.to_string().contains("nope.efi"));

        assert!(matches!(
            esp.rename("cairn-b-1.3.0.efi", "../x.efi"),
            Err(EspError::BadName { .. })
        ));
        assert!(matches!(
            esp.install("../../x.efi", &mut &uki[..], &exp),
            Err(EspError::BadName { .. })
        ));

        esp.remove("cairn-b-1.3.0.efi").unwrap();
        esp.remove("cairn-b-1.3.0.efi").unwrap();
        assert!(esp.list().unwrap().is_empty());

        assert_eq!(esp.read_loader_conf().unwrap(), None);
        set_default(esp, Some("cairn-b-1.3.0+[1-9]*.efi")).unwrap();
        let conf = esp.read_loader_conf().unwrap().unwrap();
        assert_eq!(
            loader_conf_default(&conf).as_deref(),
            Some("cairn-b-1.3.0+[1-9]*.efi")
        );
        set_default(esp, None).unwrap();
        let conf = esp.read_loader_conf().unwrap().unwrap();
        assert_eq!(loader_conf_default(&conf), None);
    }

    #[test]
    fn dir_esp_installs_renames_removes() {
        let d = tempfile::tempdir().unwrap();
        let mut esp = DirEsp::new(d.path());
        exercise(&mut esp);
        // No temp files were left behind by the failed install.
        let left: Vec<_> = fs::read_dir(d.path().join(LINUX_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn mem_esp_behaves_like_dir_esp() {
        let mut esp = MemEsp::new();
        exercise(&mut esp);
    }

    #[test]
    fn dir_esp_lists_only_files() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join(LINUX_DIR);
        fs::create_dir_all(dir.join("sub.efi")).unwrap();
        fs::write(dir.join("cairn-a-1.efi"), b"x").unwrap();
        assert_eq!(DirEsp::new(d.path()).list().unwrap(), ["cairn-a-1.efi"]);
        let empty = tempfile::tempdir().unwrap();
        assert!(DirEsp::new(empty.path()).list().unwrap().is_empty());
    }

    /// What a power cut would leave: the FAT image read by another reader
    /// (not through the mount), right after each call returned.
    #[test]
    #[ignore = "root tier: needs root, a loop device and a kernel with vfat (the test command runs it where the kernel has vfat)"]
    fn root_tier_vfat_holds_each_write_when_the_call_returns() {
        use std::process::Command;
        let _ = Command::new("modprobe").arg("vfat").status();
        let fss = fs::read_to_string("/proc/filesystems").unwrap_or_default();
        assert!(
            fss.lines().any(|l| l.trim_end().ends_with("\tvfat")),
            "this kernel has no vfat (Linux's FAT driver, whose rename this test is about); the QEMU A/B tier checks the same on the node's own kernel"
        );
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("esp.img");
        {
            let mut f = File::options()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&img)
                .unwrap();
            f.set_len(64 << 20).unwrap();
            fatfs::format_volume(&mut f, fatfs::FormatVolumeOptions::new()).unwrap();
        }
        let run = |cmd: &mut Command| {
            let out = cmd.output().expect("util-linux");
            assert!(
                out.status.success(),
                "{cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        let lo = crate::testloop::Loop::attach(&img, &[]);
        let mnt = d.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        // unmounted before the loop device is detached (declared after it)
        struct Unmount(PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount").arg(&self.0).status();
            }
        }
        let _unmount = Unmount(mnt.clone());
        // no dirsync: the fsyncs alone must make each step durable
        run(Command::new("mount")
            .args(["-t", "vfat", "-o", "umask=0077,shortname=mixed"])
            .arg(&lo.0)
            .arg(&mnt));
        let on_disk = |path: &str| -> Option<Vec<u8>> {
            let fs =
                fatfs::FileSystem::new(File::open(&img).unwrap(), fatfs::FsOptions::new()).unwrap();
            let mut out = Vec::new();
            let mut f = fs.root_dir().open_file(path).ok()?;
            f.read_to_end(&mut out).unwrap();
            Some(out)
        };

        let mut esp = DirEsp::new(&mnt);
        esp.write_loader_conf("timeout 0\n").unwrap();
        let conf = "timeout 0\ndefault cairn-b-1.3.0+[1-9]*.efi\n";
        esp.write_loader_conf(conf).unwrap();
        assert_eq!(
            on_disk(LOADER_CONF).as_deref(),
            Some(conf.as_bytes()),
            "loader.conf replaced"
        );
        let uki: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        esp.install("cairn-b-1.3.0+3.efi", &mut &uki[..], &Expected::of(&uki))
            .unwrap();
        let entry = on_disk("EFI/Linux/cairn-b-1.3.0+3.efi").expect("the new entry");
        assert!(entry == uki, "the new entry holds {} bytes", entry.len());
        esp.rename("cairn-b-1.3.0+3.efi", "cairn-b-1.3.0.efi")
            .unwrap();
        let blessed = on_disk("EFI/Linux/cairn-b-1.3.0.efi").expect("the renamed entry");
        assert!(
            blessed == uki,
            "the renamed entry holds {} bytes",
            blessed.len()
        );
        assert_eq!(on_disk("EFI/Linux/cairn-b-1.3.0+3.efi"), None);
    }

    #[test]
    fn injected_crash_leaves_a_temp_file_that_systemd_boot_ignores() {
        let mut esp = MemEsp::new();
        esp.fault = Some(MemFault::InstallBeforeRename);
        let uki = b"uki".to_vec();
        let err = esp
            .install("cairn-b-1.3.0+3.efi", &mut &uki[..], &Expected::of(&uki))
            .unwrap_err();
        assert!(matches!(err, EspError::Injected(_)));
        let l = listing(&esp).unwrap();
        assert!(l.entries.is_empty());
        assert_eq!(l.temp, [".cairn-cairn-b-1.3.0+3.efi.tmp"]);
    }

    #[test]
    fn listing_sorts_names_out() {
        let names: Vec<String> = [
            "cairn-a-1.2.0.efi",
            "cairn-b-1.3.0+2-1.efi",
            "cairn-b-x+y.efi",
            "debian-6.1.efi",
            ".cairn-cairn-a-2+3.efi.tmp",
            "README.txt",
        ]
        .map(String::from)
        .to_vec();
        let l = Listing::from_names(&names);
        assert_eq!(
            l.entries.iter().map(|e| e.file_name()).collect::<Vec<_>>(),
            ["cairn-b-1.3.0+2-1.efi", "cairn-a-1.2.0.efi"],
            "systemd-boot order: version 1.3.0 first"
        );
        assert_eq!(l.malformed.len(), 1);
        assert_eq!(l.malformed[0].0, "cairn-b-x+y.efi");
        assert_eq!(l.foreign, ["debian-6.1.efi"]);
        assert_eq!(l.temp, [".cairn-cairn-a-2+3.efi.tmp"]);
        assert_eq!(l.of_slot(Slot::A).len(), 1);
    }

    #[test]
    fn loader_conf_default_is_parsed_like_systemd_boot() {
        let conf =
            "timeout 3\n  # default nope\ndefault \"first\"\n\teditor no\ndefault\tsecond  \n";
        assert_eq!(loader_conf_default(conf).as_deref(), Some("second"));
        let edited = set_loader_conf_default(conf, Some("cairn-b-1+[1-9]*.efi"));
        assert_eq!(
            edited,
            "timeout 3\n  # default nope\n\teditor no\ndefault cairn-b-1+[1-9]*.efi\n"
        );
        assert_eq!(
            set_loader_conf_default(&edited, None),
            "timeout 3\n  # default nope\n\teditor no\n"
        );
        assert_eq!(loader_conf_default("defaultx y\n"), None);
    }

    #[test]
    fn efi_variables_are_read_from_efivarfs() {
        let d = tempfile::tempdir().unwrap();
        let mut bytes = vec![7, 0, 0, 0];
        for u in "cairn-a-1.efi".encode_utf16().chain([0]) {
            bytes.extend_from_slice(&u.to_le_bytes());
        }
        fs::write(
            d.path().join(format!("LoaderEntryDefault-{LOADER_GUID}")),
            bytes,
        )
        .unwrap();
        let vars = read_loader_efi_vars(d.path()).unwrap();
        assert_eq!(vars.entry_default.as_deref(), Some("cairn-a-1.efi"));
        assert_eq!(vars.entry_oneshot, None);
        assert!(vars.overrides_loader_conf());
        let esp = MemEsp::new();
        let s = default_settings(&esp, &vars).unwrap();
        assert_eq!(s.efi_default.as_deref(), Some("cairn-a-1.efi"));
    }
}
