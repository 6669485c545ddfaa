//! Disk mode: the dm-verity hash tree of a rootfs, one UKI per slot and
//! version, and the GPT disk image a machine installs or boots from.
//!
//! # The disk (`disk.raw`)
//!
//! A sparse raw file with a GPT (built by `sfdisk`, so no loop devices and no
//! root are needed), partitions in this order, each aligned to 1 MiB:
//!
//! | # | GPT name   | type GUID                                  | content                               | default size |
//! |---|------------|--------------------------------------------|---------------------------------------|--------------|
//! | 1 | `esp`      | ESP `C12A7328-F81F-11D2-BA4B-00A0C93EC93B`  | FAT32: systemd-boot, slot A's UKI     | 128 MiB      |
//! | 2 | `root-a`   | root x86-64 `4F68BCE3-…-FBCAF984B709`      | `rootfs.erofs`                        | 1024 MiB     |
//! | 3 | `verity-a` | root-verity x86-64 `2C7357ED-…-23D437EC2BF5` | `rootfs.verity`                     | 16 MiB       |
//! | 4 | `root-b`   | root x86-64                                | empty                                 | = root-a     |
//! | 5 | `verity-b` | root-verity x86-64                         | empty                                 | = verity-a   |
//! | 6 | `state`    | linux generic `4D21B016-…-5C16E091FD2D`    | blank, or seeded (`--config`, below)  | 2048 MiB     |
//!
//! The default root size leaves more than 2× headroom over today's ~430 MB
//! erofs; 16 MiB of verity covers a hash tree for up to ~2 GiB of data
//! (sha256, 4 KiB blocks: 32 bytes per data block plus the upper levels and
//! the superblock); [`DiskSizes::check`] refuses a verity partition too small
//! for a full root partition. Slot B gets the same sizes so any version that
//! fits slot A fits slot B.
//!
//! The ESP holds `EFI/BOOT/BOOTX64.EFI` and `EFI/systemd/systemd-bootx64.efi`
//! (both Debian's systemd-boot 252), `loader/loader.conf` with `timeout 0`
//! and no `default` line (cairn's update plan adds and removes that line, see
//! `cairn_slots::entry`), and slot A's UKI, already blessed:
//! `EFI/Linux/cairn-a-<version>.efi`.
//!
//! # STATE: blank or seeded ([`build_state_image`])
//!
//! Without a configuration tree STATE is left zeroed and `cairn-init`
//! formats it (ext4, label `cairn-state`) on first boot; the node then needs
//! its configuration from somewhere else. With one (`--config DIR`, the
//! same tree `config-initrd --tree` packs for PXE: `DIR/etc/cairn/agent.yaml`,
//! `DIR/etc/kubernetes/…`) STATE is written as the filesystem a first boot
//! would have left, so the disk boots configured: ext4 labelled
//! `cairn-state` (features pinned to what stage 1's own `mke2fs` makes,
//! [`STATE_MKE2FS_CONF`]), `etc-upper/` holding `DIR/etc`'s contents with
//! their modes (private keys stay 0600), empty `etc-work/` and `var/`, every
//! inode owned by root. Stage 1 accepts any ext4 there (it checks the
//! superblock magic, not the label) and mounts it instead of formatting.
//! It is built unprivileged (`mke2fs -d` on a file, then `debugfs` for the
//! owners) and copied into the partition; `disk.raw` is then mode 0600, as
//! it holds the node's keys.
//!
//! # The UKI ([`build_uki`])
//!
//! Debian's systemd 252 EFI stub (`linuxx64.efi.stub`) with four sections
//! added by `objcopy`, as systemd 252's documentation (and later `ukify`)
//! does it:
//!
//! - `.osrel`: the image's `os-release` (`ID=cairn`, `VERSION=<version>`,
//!   no `IMAGE_ID`/`IMAGE_VERSION`: systemd-boot sorts entries by `ID` then
//!   version, see `cairn_slots::entry`);
//! - `.cmdline`: [`uki_cmdline`];
//! - `.linux`: the kernel; `.initrd`: the initramfs.
//!
//! Section addresses: each added section starts at the next 4 KiB boundary
//! after the previous one, the first after the stub's own last section (read
//! from `objdump -h`). For Debian's 252 stub (last section `.sdmagic` at
//! 0x19100) that puts `.osrel` at 0x1a000; the classic hand-written recipe
//! (0x20000, 0x30000, 0x2000000, 0x3000000) is the same idea with fixed
//! gaps, which breaks silently once a kernel outgrows 16 MiB. Packing is
//! what `ukify` does.
//!
//! # The kernel command line
//!
//! `console=ttyS0,115200 mitigations=off panic=10 systemd.show_status=1
//! systemd.gpt_auto=0 cairn.slot=<a|b> cairn.version=<version>
//! cairn.verity=<root hash>`
//!
//! - `systemd.gpt_auto=0`: systemd's partition auto-discovery would mount
//!   the ESP on a `/boot` the read-only root does not have, and try to
//!   remount the erofs root read-write (see [`uki_cmdline`]);
//! - `cairn.slot=` selects disk mode in `cairn-init` and names the slot whose
//!   `root-<slot>`/`verity-<slot>` partitions are mounted;
//! - `cairn.version=` is what the agent reads back as the running version;
//! - `cairn.verity=` is the dm-verity root hash (64 hex digits, sha256). It
//!   is the only trusted input: salt, data block count and hash offset are
//!   read from the verity superblock on `verity-<slot>`, which cannot be
//!   changed without changing the root hash;
//! - `panic=10`: dm-verity is set up with `panic_on_corruption`, so a
//!   corrupted block panics the kernel and the machine reboots into boot
//!   counting rather than running a modified root.
//!
//! # dm-verity ([`verity_format`])
//!
//! `veritysetup format` with the defaults spelled out: format 1, sha256,
//! 4096-byte data and hash blocks, a superblock at the start of the hash
//! image (so the hash tree starts at hash block 1), a random salt.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cairn_init::disk::{STATE_LABEL, STATE_SUBDIRS};
use cairn_slots::entry::EntryName;
use cairn_slots::layout::{DiskLayout, GptSource};
use cairn_slots::{OsVersion, Slot};
use serde::{Deserialize, Serialize};

use crate::{io, run, ImageError, Result};

/// Debian's systemd 252 EFI stub (package systemd-boot-efi).
pub const EFI_STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
/// Debian's systemd-boot 252 (package systemd-boot-efi).
pub const SYSTEMD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";

// The partition types and the fresh ESP's `loader.conf` are shared with
// `cairnctl install --disk`, which writes the same layout on a node.
pub use cairn_slots::install::{
    ESP_TYPE, LINUX_DATA_TYPE, LOADER_CONF_TEXT, ROOT_VERITY_X86_64_TYPE, ROOT_X86_64_TYPE,
};

/// dm-verity block size (data and hash), bytes.
pub const VERITY_BLOCK: u64 = 4096;

const MIB: u64 = 1 << 20;

/// The host tools this module runs, with the Debian package that has them.
pub const HOST_TOOLS: &[(&str, &str)] = &[
    ("veritysetup", "cryptsetup-bin"),
    ("objcopy", "binutils"),
    ("objdump", "binutils"),
    ("sfdisk", "fdisk"),
    ("mkfs.vfat", "dosfstools"),
    ("mmd", "mtools"),
    ("mcopy", "mtools"),
];

/// The host tools a STATE seeded from `--config` also needs ([`build_state_image`]).
pub const STATE_TOOLS: &[(&str, &str)] = &[("mke2fs", "e2fsprogs"), ("debugfs", "e2fsprogs")];

/// Check that `tool` can be started; the error names its apt package.
pub fn require_tool(tool: &str) -> Result<()> {
    let package = HOST_TOOLS
        .iter()
        .chain(STATE_TOOLS)
        .find(|(t, _)| *t == tool)
        .map(|(_, p)| *p)
        .unwrap_or("?");
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
        || ["/usr/sbin", "/sbin"]
            .iter()
            .any(|d| Path::new(d).join(tool).is_file());
    if found {
        Ok(())
    } else {
        Err(ImageError::Invalid(format!(
            "{tool} is not installed: apt-get install {package} (or run image-build/scripts/install-deps.sh)"
        )))
    }
}

fn require_file(path: &str, package: &str) -> Result<()> {
    if Path::new(path).is_file() {
        Ok(())
    } else {
        Err(ImageError::Invalid(format!(
            "{path} is missing: apt-get install {package} (or run image-build/scripts/install-deps.sh)"
        )))
    }
}

/// A tool under `/usr/sbin` may not be on an unprivileged user's PATH.
fn tool(name: &str) -> Command {
    for d in ["/usr/sbin", "/sbin"] {
        let p = Path::new(d).join(name);
        if p.is_file() {
            return Command::new(p);
        }
    }
    Command::new(name)
}

/// What `veritysetup format` produced: everything needed to set the mapping
/// up again, and what stage 1 checks the superblock against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerityParams {
    /// Root hash, lowercase hex (goes on the kernel command line).
    pub root_hash: String,
    /// Salt, lowercase hex (also in the superblock).
    pub salt: String,
    /// Hash algorithm (`sha256`).
    pub hash_algorithm: String,
    /// Data block size in bytes.
    pub data_block_size: u64,
    /// Hash block size in bytes.
    pub hash_block_size: u64,
    /// Number of data blocks covered.
    pub data_blocks: u64,
    /// Hash block where the tree starts (1: block 0 is the superblock).
    pub hash_start_block: u64,
    /// Size of the hash image in bytes.
    pub hash_image_bytes: u64,
    /// The superblock's UUID.
    pub uuid: String,
}

fn field<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines().find_map(|l| {
        l.strip_prefix(key)
            .map(|v| v.trim_start_matches(':').trim())
    })
}

/// Parse `veritysetup format`'s report.
pub fn parse_veritysetup_format(out: &str) -> Result<VerityParams> {
    let get = |key: &str| {
        field(out, key).ok_or_else(|| {
            ImageError::Invalid(format!(
                "veritysetup format printed no {key:?} line (got: {out:?})"
            ))
        })
    };
    let num = |key: &str| -> Result<u64> {
        let v = get(key)?;
        v.split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| ImageError::Invalid(format!("veritysetup format: {key} {v:?}")))
    };
    let hex64 = |key: &str| -> Result<String> {
        let v = get(key)?.to_ascii_lowercase();
        if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(v)
        } else {
            Err(ImageError::Invalid(format!(
                "veritysetup format: {key} {v:?} is not 64 hex digits"
            )))
        }
    };
    Ok(VerityParams {
        root_hash: hex64("Root hash")?,
        salt: hex64("Salt")?,
        hash_algorithm: get("Hash algorithm")?.to_string(),
        data_block_size: num("Data block size")?,
        hash_block_size: num("Hash block size")?,
        data_blocks: num("Data blocks")?,
        hash_start_block: 1,
        hash_image_bytes: num("Hash device size")?,
        uuid: get("UUID")?.to_string(),
    })
}

/// `veritysetup format DATA HASH` with the defaults spelled out; `HASH` is
/// (re)created. `DATA` must be a whole number of 4 KiB blocks (erofs is).
pub fn verity_format(data: &Path, hash: &Path) -> Result<VerityParams> {
    require_tool("veritysetup")?;
    let len = std::fs::metadata(data).map_err(io(data))?.len();
    if len == 0 || len % VERITY_BLOCK != 0 {
        return Err(ImageError::Invalid(format!(
            "{} is {len} bytes, not a positive multiple of {VERITY_BLOCK}: dm-verity needs whole blocks (was it built with mkfs.erofs' default 4 KiB blocks?)",
            data.display()
        )));
    }
    if hash.exists() {
        std::fs::remove_file(hash).map_err(io(hash))?;
    }
    let out = run(tool("veritysetup")
        .arg("format")
        .arg("--format=1")
        .arg("--hash=sha256")
        .arg(format!("--data-block-size={VERITY_BLOCK}"))
        .arg(format!("--hash-block-size={VERITY_BLOCK}"))
        .arg(data)
        .arg(hash))?;
    let p = parse_veritysetup_format(&out)?;
    if p.data_blocks * p.data_block_size != len {
        return Err(ImageError::Invalid(format!(
            "veritysetup covered {} blocks of {} bytes, {} is {len} bytes",
            p.data_blocks,
            p.data_block_size,
            data.display()
        )));
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(hash, std::fs::Permissions::from_mode(0o644)).map_err(io(hash))?;
    Ok(p)
}

/// Bytes of a dm-verity hash image (superblock + tree) for `data_bytes` of
/// data with sha256 and 4 KiB blocks, as `veritysetup format` lays it out.
pub fn verity_hash_bytes(data_bytes: u64) -> u64 {
    let per_block = VERITY_BLOCK / 32; // sha256 digests per hash block
    let mut blocks = data_bytes.div_ceil(VERITY_BLOCK);
    let mut total = 1; // superblock
    loop {
        let level = blocks.div_ceil(per_block);
        total += level;
        if level <= 1 {
            break;
        }
        blocks = level;
    }
    total * VERITY_BLOCK
}

/// The kernel command line of a slot's UKI (see the module docs).
pub fn uki_cmdline(slot: Slot, version: &OsVersion, root_hash: &str) -> String {
    let mut args: Vec<String> = crate::pxe::BASE_ARGS
        .iter()
        .map(|a| a.to_string())
        .collect();
    // systemd's GPT auto-discovery must stay off on cairn's disk. Booted
    // from a UKI by systemd-boot (which sets LoaderDevicePartUUID), it
    // recognises the disk under `/` as a Discoverable Partitions disk and
    // (1) mounts its ESP through `boot.automount` on `/boot` — a directory
    // the image does not have and cannot create on its read-only root, so
    // the automount fails ("Failed to check directory /boot"); the ESP is
    // the agent's to mount when it installs a UKI, not a standing mount;
    // (2) finds root-a without the GPT read-only flag and tells
    // systemd-remount-fs to remount `/` read-write (a
    // SYSTEMD_REMOUNT_ROOT_RW=1 drop-in), which `mount` refuses on erofs
    // over dm-verity (exit 32) and fails the unit. stage 1 has already
    // found and mounted everything, so nothing is lost by turning it off.
    args.push("systemd.gpt_auto=0".into());
    args.push(format!("cairn.slot={}", slot.as_str()));
    args.push(format!("cairn.version={}", version.as_str()));
    args.push(format!("cairn.verity={root_hash}"));
    args.join(" ")
}

/// One section of a PE file as `objdump -h` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeSection {
    pub name: String,
    pub size: u64,
    pub vma: u64,
    /// Offset of the section's bytes in the file.
    pub file_offset: u64,
}

/// Parse the section table `objdump -h` prints.
pub fn parse_objdump_sections(out: &str) -> Vec<PeSection> {
    out.lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            if w.len() < 7 || w[0].parse::<u32>().is_err() {
                return None;
            }
            Some(PeSection {
                name: w[1].to_string(),
                size: u64::from_str_radix(w[2], 16).ok()?,
                vma: u64::from_str_radix(w[3], 16).ok()?,
                file_offset: u64::from_str_radix(w[5], 16).ok()?,
            })
        })
        .collect()
}

/// The sections of a PE file.
pub fn pe_sections(file: &Path) -> Result<Vec<PeSection>> {
    require_tool("objdump")?;
    let out = run(Command::new("objdump").arg("-h").arg(file))?;
    let s = parse_objdump_sections(&out);
    if s.is_empty() {
        return Err(ImageError::Invalid(format!(
            "objdump -h {} lists no sections: not a PE file?",
            file.display()
        )));
    }
    Ok(s)
}

fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

/// Where each added section goes: packed after the stub's last section,
/// each on a 4 KiB boundary. `sizes` are (name, bytes) in order.
pub fn uki_layout(stub: &[PeSection], sizes: &[(&str, u64)]) -> Vec<(String, u64)> {
    let end = stub.iter().map(|s| s.vma + s.size).max().unwrap_or(0);
    let mut at = align_up(end, 0x1000);
    sizes
        .iter()
        .map(|(name, size)| {
            let vma = at;
            at = align_up(at + size.max(&1), 0x1000);
            (name.to_string(), vma)
        })
        .collect()
}

/// Build the UKI for `slot` running `version` with dm-verity root hash
/// `root_hash` from `kernel` and `initramfs`, written to `out`. Usable for
/// any slot: the agent builds slot B's entry with it.
pub fn build_uki(
    slot: Slot,
    version: &OsVersion,
    root_hash: &str,
    kernel: &Path,
    initramfs: &Path,
    out: &Path,
) -> Result<()> {
    build_uki_with_args(slot, version, root_hash, &[], kernel, initramfs, out)
}

/// [`build_uki`] with `extra` kernel arguments after cairn's own (e.g.
/// `systemd.mask=…` or debugging switches for a test image).
pub fn build_uki_with_args(
    slot: Slot,
    version: &OsVersion,
    root_hash: &str,
    extra: &[String],
    kernel: &Path,
    initramfs: &Path,
    out: &Path,
) -> Result<()> {
    require_file(EFI_STUB, "systemd-boot-efi")?;
    require_tool("objcopy")?;
    if root_hash.len() != 64 || !root_hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ImageError::Invalid(format!(
            "dm-verity root hash {root_hash:?} is not 64 hex digits (sha256)"
        )));
    }
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = tempdir_in(dir, ".uki")?;
    let osrel = tmp.join("osrel");
    std::fs::write(&osrel, crate::rootfs::os_release(version.as_str())).map_err(io(&osrel))?;
    let cmdline = tmp.join("cmdline");
    let mut line = uki_cmdline(slot, version, root_hash);
    for a in extra {
        line.push(' ');
        line.push_str(a);
    }
    std::fs::write(&cmdline, line).map_err(io(&cmdline))?;
    let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).map_err(io(p));
    let files: [(&str, &Path); 4] = [
        (".osrel", &osrel),
        (".cmdline", &cmdline),
        (".linux", kernel),
        (".initrd", initramfs),
    ];
    let mut sizes = Vec::new();
    for (n, p) in files {
        sizes.push((n, len(p)?));
    }
    let layout = uki_layout(&pe_sections(Path::new(EFI_STUB))?, &sizes);
    let mut cmd = Command::new("objcopy");
    for ((name, path), (_, vma)) in files.iter().zip(&layout) {
        cmd.arg("--add-section")
            .arg(format!("{name}={}", path.display()))
            .arg("--change-section-vma")
            .arg(format!("{name}={vma:#x}"));
    }
    let partial = tmp.join("uki.efi");
    cmd.arg(EFI_STUB).arg(&partial);
    let res = run(&mut cmd).and_then(|_| std::fs::rename(&partial, out).map_err(io(out)));
    let _ = std::fs::remove_dir_all(&tmp);
    res
}

fn tempdir_in(dir: &Path, prefix: &str) -> Result<PathBuf> {
    for i in 0..1000u32 {
        let p = dir.join(format!("{prefix}.{}.{i}", std::process::id()));
        match std::fs::create_dir(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(ImageError::Io { path: p, source: e }),
        }
    }
    Err(ImageError::Invalid(format!(
        "cannot create a scratch directory in {}",
        dir.display()
    )))
}

/// Partition sizes of a cairn disk, in MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSizes {
    pub esp_mib: u64,
    pub root_mib: u64,
    pub verity_mib: u64,
    pub state_mib: u64,
}

impl Default for DiskSizes {
    fn default() -> Self {
        let node = cairn_slots::install::Sizes::default();
        DiskSizes {
            esp_mib: node.esp_mib,
            root_mib: node.root_mib,
            verity_mib: node.verity_mib,
            // an image file has no "rest of the disk"
            state_mib: 2048,
        }
    }
}

impl DiskSizes {
    /// Sanity rules: FAT32 needs ≥ 33 MiB; the verity partition must hold
    /// the hash tree of a completely full root partition.
    pub fn check(&self) -> Result<()> {
        if self.esp_mib < 64 {
            return Err(ImageError::Invalid(format!(
                "--esp-mib {} is too small: FAT32 wants at least 33 MiB and two UKIs (~10 MiB each) must fit; use 64 or more",
                self.esp_mib
            )));
        }
        if self.root_mib == 0 || self.state_mib < 64 {
            return Err(ImageError::Invalid(format!(
                "--root-mib {} / --state-mib {}: the root must be non-empty and state at least 64 MiB",
                self.root_mib, self.state_mib
            )));
        }
        let need = verity_hash_bytes(self.root_mib * MIB);
        if self.verity_mib * MIB < need {
            return Err(ImageError::Invalid(format!(
                "--verity-mib {} cannot hold the hash tree of a full {} MiB root ({} bytes needed); use --verity-mib {}",
                self.verity_mib,
                self.root_mib,
                need,
                need.div_ceil(MIB)
            )));
        }
        Ok(())
    }

    /// Total disk size: 1 MiB before the first partition, the partitions,
    /// 1 MiB at the end for the backup GPT.
    pub fn disk_bytes(&self) -> u64 {
        (1 + self.esp_mib + 2 * (self.root_mib + self.verity_mib) + self.state_mib + 1) * MIB
    }

    /// The `sfdisk` script for this layout.
    pub fn sfdisk_script(&self) -> String {
        let mut s = String::from("label: gpt\n");
        let rows = [
            (self.esp_mib, ESP_TYPE, "esp"),
            (self.root_mib, ROOT_X86_64_TYPE, "root-a"),
            (self.verity_mib, ROOT_VERITY_X86_64_TYPE, "verity-a"),
            (self.root_mib, ROOT_X86_64_TYPE, "root-b"),
            (self.verity_mib, ROOT_VERITY_X86_64_TYPE, "verity-b"),
            (self.state_mib, LINUX_DATA_TYPE, "state"),
        ];
        for (mib, ty, name) in rows {
            s.push_str(&format!("size={mib}MiB, type={ty}, name=\"{name}\"\n"));
        }
        s
    }
}

/// What a disk is built from: one version's artifacts.
pub struct DiskInputs<'a> {
    pub version: &'a OsVersion,
    pub kernel: &'a Path,
    pub initramfs: &'a Path,
    pub rootfs: &'a Path,
    pub sizes: DiskSizes,
    /// Output directory: `disk.raw`, `rootfs.verity`, `verity.json`, the UKI.
    pub out: &'a Path,
    /// A node configuration tree (`DIR/etc/cairn/agent.yaml`, …) to seed
    /// the STATE partition with ([`build_state_image`]); `None` leaves
    /// STATE blank for stage 1 to format.
    pub config: Option<&'a Path>,
}

/// What [`build_disk`] produced.
#[derive(Debug, Clone, Serialize)]
pub struct DiskBuilt {
    pub disk: PathBuf,
    pub verity: PathBuf,
    pub verity_params: VerityParams,
    pub uki: PathBuf,
    pub uki_name: String,
    pub sizes: DiskSizes,
    /// The configuration tree STATE was seeded from (`None`: STATE is blank).
    pub config: Option<PathBuf>,
}

/// Copy `src` to `dst` at byte `offset`, skipping all-zero 1 MiB chunks so
/// the disk file stays sparse.
pub fn copy_into(src: &Path, dst: &mut File, dst_path: &Path, offset: u64) -> Result<u64> {
    let mut f = File::open(src).map_err(io(src))?;
    let mut buf = vec![0u8; MIB as usize];
    let mut pos = 0u64;
    loop {
        let mut n = 0;
        while n < buf.len() {
            let k = f.read(&mut buf[n..]).map_err(io(src))?;
            if k == 0 {
                break;
            }
            n += k;
        }
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|b| *b != 0) {
            dst.seek(SeekFrom::Start(offset + pos))
                .map_err(io(dst_path))?;
            dst.write_all(&buf[..n]).map_err(io(dst_path))?;
        }
        pos += n as u64;
        if n < buf.len() {
            break;
        }
    }
    Ok(pos)
}

/// Make the FAT32 ESP image `esp` of `mib` MiB holding systemd-boot,
/// `loader/loader.conf` and the UKI `uki` as `EFI/Linux/<uki_name>`.
pub fn build_esp(esp: &Path, mib: u64, uki: &Path, uki_name: &str) -> Result<()> {
    for t in ["mkfs.vfat", "mmd", "mcopy"] {
        require_tool(t)?;
    }
    require_file(SYSTEMD_BOOT, "systemd-boot-efi")?;
    if esp.exists() {
        std::fs::remove_file(esp).map_err(io(esp))?;
    }
    let f = File::create(esp).map_err(io(esp))?;
    f.set_len(mib * MIB).map_err(io(esp))?;
    drop(f);
    run(tool("mkfs.vfat")
        .args(["-F", "32", "-n", "CAIRN-ESP"])
        .arg(esp))?;
    let img = esp.display().to_string();
    run(Command::new("mmd").args([
        "-i",
        &img,
        "::/EFI",
        "::/EFI/BOOT",
        "::/EFI/systemd",
        "::/EFI/Linux",
        "::/loader",
    ]))?;
    let dir = esp.parent().unwrap_or(Path::new("."));
    let conf = dir.join(".loader.conf");
    // No `default` line: cairn's update plan owns it (cairn_slots::entry).
    std::fs::write(&conf, LOADER_CONF_TEXT).map_err(io(&conf))?;
    let put = |from: &Path, to: &str| -> Result<()> {
        run(Command::new("mcopy")
            .args(["-o", "-i", &img])
            .arg(from)
            .arg(format!("::/{to}")))?;
        Ok(())
    };
    put(Path::new(SYSTEMD_BOOT), "EFI/BOOT/BOOTX64.EFI")?;
    put(Path::new(SYSTEMD_BOOT), "EFI/systemd/systemd-bootx64.efi")?;
    put(&conf, cairn_slots::esp::LOADER_CONF)?;
    put(uki, &format!("{}/{uki_name}", cairn_slots::esp::LINUX_DIR))?;
    std::fs::remove_file(&conf).map_err(io(&conf))?;
    Ok(())
}

/// The `mke2fs.conf` a seeded STATE is made with: Debian bookworm's
/// (e2fsprogs 1.47.0) defaults and ext4 feature set, which is what stage 1's
/// own first-boot `mke2fs` reads from the verified root (`/etc/mke2fs.conf`).
/// Pinned so a seeded STATE is the same kind of filesystem as a first-boot
/// one whatever the build host's e2fsprogs would pick (newer releases add
/// `orphan_file`, for example). No usage types: 4 KiB blocks at any size.
pub const STATE_MKE2FS_CONF: &str = "[defaults]
\tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
\tdefault_mntopts = acl,user_xattr
\tenable_periodic_fsck = 0
\tblocksize = 4096
\tinode_size = 256
\tinode_ratio = 16384

[fs_types]
\text4 = {
\t\tfeatures = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
\t}
";

/// Check a `--config` tree before anything is built: it must have `etc/`.
pub fn check_config_tree(config: &Path) -> Result<()> {
    for (t, _) in STATE_TOOLS {
        require_tool(t)?;
    }
    let etc = config.join("etc");
    if !etc.is_dir() {
        return Err(ImageError::Invalid(format!(
            "{} has no etc/ directory: --config takes a node configuration tree (DIR/etc/cairn/agent.yaml, DIR/etc/kubernetes/…), the same tree `cairn-image config-initrd --tree` packs",
            config.display()
        )));
    }
    Ok(())
}

/// Copy `from` into the existing directory `to` keeping modes (regular
/// files, directories, symlinks; nothing else), and record each path as
/// `rel/<name>` in `paths` for the ownership pass.
fn stage_tree(from: &Path, to: &Path, rel: &str, paths: &mut Vec<String>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut entries = std::fs::read_dir(from)
        .map_err(io(from))?
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(io(from))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let src = e.path();
        let name = e.file_name();
        let name = name
            .to_str()
            .filter(|n| !n.contains('"') && !n.chars().any(char::is_control))
            .ok_or_else(|| {
                ImageError::Invalid(format!(
                    "{}: configuration file names must be UTF-8 without quotes or control characters",
                    src.display()
                ))
            })?;
        let dst = to.join(name);
        let path = format!("{rel}/{name}");
        let meta = std::fs::symlink_metadata(&src).map_err(io(&src))?;
        let mode = std::fs::Permissions::from_mode(meta.permissions().mode() & 0o7777);
        let ft = meta.file_type();
        if ft.is_dir() {
            std::fs::create_dir(&dst).map_err(io(&dst))?;
            stage_tree(&src, &dst, &path, paths)?;
            std::fs::set_permissions(&dst, mode).map_err(io(&dst))?;
        } else if ft.is_file() {
            std::fs::copy(&src, &dst).map_err(io(&src))?;
            std::fs::set_permissions(&dst, mode).map_err(io(&dst))?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&src).map_err(io(&src))?;
            std::os::unix::fs::symlink(target, &dst).map_err(io(&dst))?;
        } else {
            return Err(ImageError::Invalid(format!(
                "{}: not a regular file, directory or symlink; a configuration tree holds only those",
                src.display()
            )));
        }
        paths.push(path);
    }
    Ok(())
}

/// Write `image` (a file of `mib` MiB, mode 0600) as the ext4 filesystem
/// stage 1 would find on STATE after a first boot of a node configured with
/// `config`: label [`STATE_LABEL`], `etc-upper/` = the contents of
/// `config/etc` (modes kept), empty `etc-work/` and `var/`, everything owned
/// by root. Unprivileged: `mke2fs -d` copies a staged tree, then `debugfs`
/// sets every inode's owner to 0:0 (`mke2fs -d` copies the builder's
/// uid/gid, and only root could `chown` the staged files).
pub fn build_state_image(config: &Path, image: &Path, mib: u64) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    check_config_tree(config)?;
    let dir = image
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let scratch = tempdir_in(dir, ".state")?;
    std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(0o700))
        .map_err(io(&scratch))?;
    let res = (|| -> Result<()> {
        let root = scratch.join("root");
        let mut paths = vec!["/".to_string()];
        let [etc_upper, ..] = STATE_SUBDIRS;
        for d in std::iter::once("").chain(STATE_SUBDIRS) {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(io(&p))?;
            // The upper dir's attributes become /etc's own.
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).map_err(io(&p))?;
            if !d.is_empty() {
                paths.push(format!("/{d}"));
            }
        }
        stage_tree(
            &config.join("etc"),
            &root.join(etc_upper),
            &format!("/{etc_upper}"),
            &mut paths,
        )?;

        let conf = scratch.join("mke2fs.conf");
        std::fs::write(&conf, STATE_MKE2FS_CONF).map_err(io(&conf))?;
        if image.exists() {
            std::fs::remove_file(image).map_err(io(image))?;
        }
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(image)
            .map_err(io(image))?;
        f.set_len(mib * MIB).map_err(io(image))?;
        drop(f);
        run(tool("mke2fs")
            .env("MKE2FS_CONFIG", &conf)
            .args(["-q", "-F", "-t", "ext4", "-L", STATE_LABEL])
            .args(["-E", "root_owner=0:0"])
            .arg("-d")
            .arg(&root)
            .arg(image))?;

        let script = scratch.join("chown.debugfs");
        let mut cmds = String::new();
        for p in &paths {
            cmds.push_str(&format!("sif \"{p}\" uid 0\nsif \"{p}\" gid 0\n"));
        }
        std::fs::write(&script, cmds).map_err(io(&script))?;
        let command = format!("debugfs -w -f {} {}", script.display(), image.display());
        let out = tool("debugfs")
            .arg("-w")
            .arg("-f")
            .arg(&script)
            .arg(image)
            .output()
            .map_err(|source| ImageError::Spawn {
                command: command.clone(),
                source,
            })?;
        // debugfs exits 0 even when a request fails; its stderr has the
        // version banner and nothing else on success.
        let stderr = String::from_utf8_lossy(&out.stderr);
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with("debugfs "))
            .collect();
        if !out.status.success() || !errors.is_empty() {
            return Err(ImageError::Command {
                command,
                status: out.status.to_string(),
                stderr: errors.join("\n"),
            });
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    if res.is_err() {
        let _ = std::fs::remove_file(image);
    }
    res
}

/// [`build_disk`] from a `cairn-image build` output directory (`vmlinuz`,
/// `initramfs.cpio.gz`, `rootfs.erofs`) into `out`; when `out` is another
/// directory, the rootfs is linked (or copied) there too, so one version's
/// update artifacts travel together.
pub fn build_disk_from_image_dir(
    version: &OsVersion,
    built_dir: &Path,
    sizes: DiskSizes,
    config: Option<&Path>,
    out: &Path,
) -> Result<DiskBuilt> {
    let rootfs = built_dir.join("rootfs.erofs");
    let disk = build_disk(&DiskInputs {
        version,
        kernel: &built_dir.join("vmlinuz"),
        initramfs: &built_dir.join("initramfs.cpio.gz"),
        rootfs: &rootfs,
        sizes,
        out,
        config,
    })?;
    if built_dir != out {
        let dst = out.join("rootfs.erofs");
        let _ = std::fs::remove_file(&dst);
        std::fs::hard_link(&rootfs, &dst)
            .or_else(|_| std::fs::copy(&rootfs, &dst).map(|_| ()))
            .map_err(io(&dst))?;
    }
    Ok(disk)
}

/// Build `disk.raw` (and `rootfs.verity`, `verity.json`, slot A's UKI)
/// in `inp.out`. Runs unprivileged.
pub fn build_disk(inp: &DiskInputs) -> Result<DiskBuilt> {
    inp.sizes.check()?;
    for (t, _) in HOST_TOOLS {
        require_tool(t)?;
    }
    if let Some(config) = inp.config {
        check_config_tree(config)?;
    }
    std::fs::create_dir_all(inp.out).map_err(io(inp.out))?;
    let rootfs_len = std::fs::metadata(inp.rootfs).map_err(io(inp.rootfs))?.len();
    if rootfs_len > inp.sizes.root_mib * MIB {
        return Err(ImageError::Invalid(format!(
            "{} is {rootfs_len} bytes, more than the {} MiB root partition: raise --root-mib",
            inp.rootfs.display(),
            inp.sizes.root_mib
        )));
    }

    // 1. dm-verity
    let verity = inp.out.join("rootfs.verity");
    log::info!("dm-verity hash tree of {}", inp.rootfs.display());
    let vp = verity_format(inp.rootfs, &verity)?;
    let vjson = inp.out.join("verity.json");
    std::fs::write(
        &vjson,
        serde_json::to_vec_pretty(&vp).map_err(|e| ImageError::Invalid(e.to_string()))?,
    )
    .map_err(io(&vjson))?;

    // 2. slot A's UKI
    let uki_name = EntryName::blessed(Slot::A, inp.version.clone()).file_name();
    let uki = inp.out.join(&uki_name);
    log::info!("UKI {}", uki.display());
    build_uki(
        Slot::A,
        inp.version,
        &vp.root_hash,
        inp.kernel,
        inp.initramfs,
        &uki,
    )?;

    // 3. the GPT
    let disk = inp.out.join("disk.raw");
    let partial = inp.out.join(".disk.raw.partial");
    if partial.exists() {
        std::fs::remove_file(&partial).map_err(io(&partial))?;
    }
    // A seeded STATE holds the node's private keys: so does the disk.
    let disk_mode = if inp.config.is_some() { 0o600 } else { 0o644 };
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(disk_mode)
        .open(&partial)
        .and_then(|f| f.set_len(inp.sizes.disk_bytes()))
        .map_err(io(&partial))?;
    let mut child = tool("sfdisk")
        .arg("--quiet")
        .arg("--no-reread")
        .arg("--no-tell-kernel")
        .arg(&partial)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ImageError::Spawn {
            command: "sfdisk".into(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(inp.sizes.sfdisk_script().as_bytes())
            .map_err(io(&partial))?;
    }
    let out = child.wait_with_output().map_err(io(&partial))?;
    if !out.status.success() {
        return Err(ImageError::Command {
            command: format!("sfdisk {}", partial.display()),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    let layout = DiskLayout::find(&GptSource::new(&partial))
        .map_err(|e| ImageError::Invalid(format!("the GPT sfdisk wrote: {e}")))?;

    // 4. contents
    let esp = inp.out.join(".esp.img");
    build_esp(&esp, layout.esp.size / MIB, &uki, &uki_name)?;
    let mut f = OpenOptions::new()
        .write(true)
        .open(&partial)
        .map_err(io(&partial))?;
    copy_into(&esp, &mut f, &partial, layout.esp.start)?;
    copy_into(inp.rootfs, &mut f, &partial, layout.root_a.start)?;
    copy_into(&verity, &mut f, &partial, layout.verity_a.start)?;
    if let Some(config) = inp.config {
        let state = inp.out.join(".state.img");
        log::info!("STATE seeded from {}", config.display());
        build_state_image(config, &state, layout.state.size / MIB)?;
        let copied = copy_into(&state, &mut f, &partial, layout.state.start);
        let _ = std::fs::remove_file(&state);
        copied?;
    }
    f.sync_all().map_err(io(&partial))?;
    drop(f);
    std::fs::remove_file(&esp).map_err(io(&esp))?;
    std::fs::rename(&partial, &disk).map_err(io(&disk))?;
    Ok(DiskBuilt {
        disk,
        verity,
        verity_params: vp,
        uki,
        uki_name,
        sizes: inp.sizes,
        config: inp.config.map(Path::to_path_buf),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STUB_OBJDUMP: &str = "
/usr/lib/systemd/boot/efi/linuxx64.efi.stub:     file format pei-x86-64

Sections:
Idx Name          Size      VMA               LMA               File off  Algn
  0 .text         0000bff0  0000000000004000  0000000000004000  00000400  2**4
                  CONTENTS, ALLOC, LOAD, READONLY, CODE
  6 .sbat         000000e2  0000000000019000  0000000000019000  00011000  2**2
                  CONTENTS, ALLOC, LOAD, READONLY, DATA
  7 .sdmagic      00000034  0000000000019100  0000000000019100  00011200  2**2
                  CONTENTS, ALLOC, LOAD, READONLY, DATA
";

    #[test]
    fn sections_pack_after_the_stub_on_page_boundaries() {
        let stub = parse_objdump_sections(STUB_OBJDUMP);
        assert_eq!(stub.len(), 3);
        assert_eq!(stub[2].name, ".sdmagic");
        assert_eq!(stub[2].file_offset, 0x11200);
        let l = uki_layout(
            &stub,
            &[
                (".osrel", 0x82),
                (".cmdline", 0x1000),
                (".linux", 0x7d_d7c0),
                (".initrd", 10),
            ],
        );
        let vmas: Vec<u64> = l.iter().map(|(_, v)| *v).collect();
        assert_eq!(vmas, [0x1a000, 0x1b000, 0x1c000, 0x7fa000]);
    }

    #[test]
    fn veritysetup_report_is_parsed_and_checked() {
        let out = "VERITY header information for h.img
UUID:            \t36ff6d3c-e156-4dea-8058-c45bfa64af90
Hash type:       \t1
Data blocks:     \t300
Data block size: \t4096
Hash blocks:     \t4
Hash block size: \t4096
Hash algorithm:  \tsha256
Salt:            \t5c4ab0029661ca518c8e0d66b2d16ca73ff144985c5c86a61a46ee5a69927165
Root hash:      \tD8100844dfc0400bad84f19fbdd82d0b0f2b4543a889fa5872d41050de4d8d77
Hash device size: \t20480 [bytes]
";
        let p = parse_veritysetup_format(out).unwrap();
        assert_eq!(
            p.root_hash,
            "d8100844dfc0400bad84f19fbdd82d0b0f2b4543a889fa5872d41050de4d8d77"
        );
        assert_eq!(p.data_blocks, 300);
        assert_eq!(p.hash_image_bytes, 20480);
        assert_eq!(p.hash_algorithm, "sha256");
        let e = parse_veritysetup_format(&out.replace("Root hash", "Roothash"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("Root hash"), "{e}");
    }

    #[test]
    fn hash_tree_size_matches_veritysetup() {
        // 300 blocks: 3 leaf hash blocks + 1 root + superblock (see above).
        assert_eq!(verity_hash_bytes(300 * 4096), 20480);
        // the 429297664-byte rootfs of 2026-11: 3391488 bytes.
        assert_eq!(verity_hash_bytes(429_297_664), 3_391_488);
    }

    #[test]
    fn sizes_are_checked() {
        DiskSizes::default().check().unwrap();
        let small_verity = DiskSizes {
            verity_mib: 4,
            ..Default::default()
        };
        let e = small_verity.check().unwrap_err().to_string();
        assert!(e.contains("--verity-mib 9"), "{e}");
        let small_esp = DiskSizes {
            esp_mib: 16,
            ..Default::default()
        };
        assert!(small_esp
            .check()
            .unwrap_err()
            .to_string()
            .contains("--esp-mib"));
        let d = DiskSizes::default();
        assert_eq!(d.disk_bytes(), (2 + 128 + 2 * 1040 + 2048) << 20);
        let script = d.sfdisk_script();
        assert!(script.starts_with("label: gpt\n"));
        assert_eq!(script.lines().count(), 7);
        assert!(script
            .contains("size=16MiB, type=2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5, name=\"verity-b\""));
    }

    #[test]
    fn missing_tool_names_its_package() {
        let e = require_tool("no-such-tool-cairn").unwrap_err().to_string();
        assert!(e.contains("no-such-tool-cairn is not installed"), "{e}");
        // a known tool that is absent would name its package:
        assert!(HOST_TOOLS.contains(&("sfdisk", "fdisk")));
        assert!(HOST_TOOLS.contains(&("veritysetup", "cryptsetup-bin")));
    }

    /// Host tools the disk tests need beyond [`HOST_TOOLS`]; a missing one
    /// fails the test with the package to install.
    fn need_test_tools() {
        for (t, pkg) in [("mdir", "mtools"), ("mtype", "mtools")] {
            let ok = Command::new(t)
                .arg("--version")
                .output()
                .map(|_| true)
                .unwrap_or(false);
            assert!(ok, "{t} is not installed: apt-get install {pkg}");
        }
    }

    fn pseudo_random(len: usize, seed: u32) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        rootfs: PathBuf,
        built: DiskBuilt,
    }

    fn build_small_disk() -> Fixture {
        build_small_disk_with(None)
    }

    fn build_small_disk_with(config: Option<&Path>) -> Fixture {
        need_test_tools();
        let dir = tempfile::tempdir().unwrap();
        let inputs = dir.path().join("in");
        std::fs::create_dir_all(&inputs).unwrap();
        let rootfs = inputs.join("rootfs.erofs");
        std::fs::write(&rootfs, pseudo_random(300 * 4096, 7)).unwrap();
        let kernel = inputs.join("vmlinuz");
        std::fs::write(&kernel, pseudo_random(100_000, 3)).unwrap();
        let initramfs = inputs.join("initramfs.cpio.gz");
        std::fs::write(&initramfs, pseudo_random(50_000, 5)).unwrap();
        let version = OsVersion::new("1.2.3").unwrap();
        let built = build_disk(&DiskInputs {
            version: &version,
            kernel: &kernel,
            initramfs: &initramfs,
            rootfs: &rootfs,
            sizes: DiskSizes {
                esp_mib: 64,
                root_mib: 8,
                verity_mib: 1,
                state_mib: 64,
            },
            out: &dir.path().join("out"),
            config,
        })
        .unwrap_or_else(|e| panic!("{e}"));
        Fixture {
            _dir: dir,
            rootfs,
            built,
        }
    }

    fn read_range(path: &Path, offset: u64, len: u64) -> Vec<u8> {
        let mut f = File::open(path).unwrap();
        f.seek(SeekFrom::Start(offset)).unwrap();
        let mut buf = vec![0u8; len as usize];
        f.read_exact(&mut buf).unwrap();
        buf
    }

    #[test]
    fn disk_has_the_layout_the_esp_and_slot_a() {
        let fx = build_small_disk();
        let b = &fx.built;
        let layout = DiskLayout::find(&GptSource::new(&b.disk)).unwrap_or_else(|e| panic!("{e}"));
        // Six named partitions, 1 MiB aligned, in order, with the configured sizes.
        let expect = [
            (&layout.esp, 1, 64),
            (&layout.root_a, 2, 8),
            (&layout.verity_a, 3, 1),
            (&layout.root_b, 4, 8),
            (&layout.verity_b, 5, 1),
            (&layout.state, 6, 64),
        ];
        let mut at = MIB;
        for (p, number, mib) in expect {
            assert_eq!(p.number, number, "{}", p.name);
            assert_eq!(p.start, at, "{} start", p.name);
            assert_eq!(p.size, mib * MIB, "{} size", p.name);
            at += mib * MIB;
        }
        assert_eq!(
            std::fs::metadata(&b.disk).unwrap().len(),
            at + MIB,
            "1 MiB for the backup GPT"
        );
        let types = run(tool("sfdisk").arg("-d").arg(&b.disk)).unwrap();
        for (name, ty) in [
            ("esp", ESP_TYPE),
            ("root-a", ROOT_X86_64_TYPE),
            ("verity-b", ROOT_VERITY_X86_64_TYPE),
            ("state", LINUX_DATA_TYPE),
        ] {
            assert!(
                types.lines().any(|l| l.contains(&format!("type={ty}"))
                    && l.contains(&format!("name=\"{name}\""))),
                "{name} should have type {ty}: {types}"
            );
        }

        // Slot A holds the rootfs and its hash tree; B and state are blank.
        let rootfs = std::fs::read(&fx.rootfs).unwrap();
        assert_eq!(
            read_range(&b.disk, layout.root_a.start, rootfs.len() as u64),
            rootfs
        );
        let verity = std::fs::read(&b.verity).unwrap();
        assert_eq!(&verity[..8], b"verity\0\0");
        assert_eq!(
            read_range(&b.disk, layout.verity_a.start, verity.len() as u64),
            verity
        );
        for p in [&layout.root_b, &layout.verity_b, &layout.state] {
            assert!(
                read_range(&b.disk, p.start, MIB).iter().all(|x| *x == 0),
                "{} must be blank",
                p.name
            );
        }

        // The ESP.
        let img = format!("{}@@{}", b.disk.display(), layout.esp.start);
        let listing = run(Command::new("mdir").args(["-/", "-b", "-i", &img, "::/"])).unwrap();
        let mut files: Vec<&str> = listing.lines().map(str::trim).collect();
        files.retain(|l| !l.ends_with('/'));
        files.sort();
        assert_eq!(
            files,
            [
                "::/EFI/BOOT/BOOTX64.EFI",
                "::/EFI/Linux/cairn-a-1.2.3.efi",
                "::/EFI/systemd/systemd-bootx64.efi",
                "::/loader/loader.conf"
            ],
            "{listing}"
        );
        let conf = run(Command::new("mtype").args(["-i", &img, "::/loader/loader.conf"])).unwrap();
        assert!(conf.lines().any(|l| l.trim() == "timeout 0"), "{conf}");
        assert!(
            !conf.lines().any(|l| l.trim_start().starts_with("default")),
            "no default line: {conf}"
        );
        let copied = b.disk.with_file_name("copied.efi");
        run(Command::new("mcopy")
            .args(["-i", &img, "::/EFI/Linux/cairn-a-1.2.3.efi"])
            .arg(&copied))
        .unwrap();
        assert_eq!(
            std::fs::read(&copied).unwrap(),
            std::fs::read(&b.uki).unwrap(),
            "the ESP holds the UKI that was built"
        );
        assert_eq!(b.uki_name, "cairn-a-1.2.3.efi");
    }

    /// `debugfs -R REQUEST image`'s stdout.
    fn debugfs(image: &Path, request: &str) -> String {
        run(tool("debugfs").arg("-R").arg(request).arg(image)).unwrap()
    }

    #[test]
    fn state_is_seeded_from_a_config_tree_as_stage_1_expects() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let cfg = tempfile::tempdir().unwrap();
        let etc = cfg.path().join("etc");
        std::fs::create_dir_all(etc.join("cairn")).unwrap();
        std::fs::create_dir_all(etc.join("kubernetes/pki")).unwrap();
        std::fs::write(etc.join("cairn/agent.yaml"), b"node: n1\n").unwrap();
        std::fs::write(etc.join("kubernetes/pki/ca.key"), b"secret\n").unwrap();
        std::fs::write(etc.join("kubernetes/pki/a name"), b"x").unwrap();
        let mode = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        mode(&etc.join("kubernetes/pki/ca.key"), 0o600);
        mode(&etc.join("kubernetes/pki"), 0o750);
        // The tree's own etc/ mode does not leak into /etc (the upper dir's
        // attributes are the merged /etc's).
        mode(&etc, 0o700);
        std::os::unix::fs::symlink("agent.yaml", etc.join("cairn/current.yaml")).unwrap();
        // Built by root or not, every file ends up owned by root.
        if running_as_root() {
            std::os::unix::fs::chown(etc.join("cairn/agent.yaml"), Some(1000), Some(1000)).unwrap();
        }

        let fx = build_small_disk_with(Some(cfg.path()));
        let b = &fx.built;
        assert_eq!(b.config.as_deref(), Some(cfg.path()));
        assert_eq!(
            std::fs::metadata(&b.disk).unwrap().mode() & 0o777,
            0o600,
            "a disk with the node's keys is private"
        );
        let layout = DiskLayout::find(&GptSource::new(&b.disk)).unwrap();
        let state = b.disk.with_file_name("state.img");
        std::fs::write(
            &state,
            read_range(&b.disk, layout.state.start, layout.state.size),
        )
        .unwrap();
        // What stage 1 looks at before mounting: an ext4 superblock.
        let head = read_range(&state, 0, 4096);
        assert_eq!(
            cairn_init::disk::classify_state(&head),
            cairn_init::disk::StateContent::Ext4
        );
        let fsck = tool("e2fsck").arg("-fn").arg(&state).output().unwrap();
        assert!(
            fsck.status.success(),
            "{}",
            String::from_utf8_lossy(&fsck.stdout)
        );
        let sb = run(tool("dumpe2fs").arg("-h").arg(&state)).unwrap();
        let sb_field = |k: &str| {
            sb.lines()
                .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
                .unwrap_or_else(|| panic!("no {k} in {sb}"))
        };
        assert_eq!(sb_field("Filesystem volume name:"), "cairn-state");
        assert_eq!(sb_field("Block size:"), "4096");
        let features = sb_field("Filesystem features:");
        for f in ["has_journal", "extent", "64bit", "metadata_csum"] {
            assert!(features.split(' ').any(|x| x == f), "{f}: {features}");
        }
        assert!(!features.contains("orphan_file"), "{features}");

        let listing = |dir: &str| -> Vec<String> {
            debugfs(&state, &format!("ls {dir}"))
                .split_whitespace()
                .filter(|w| !w.starts_with('(') && w.parse::<u64>().is_err())
                .map(str::to_string)
                .collect()
        };
        let mut top = listing("/");
        top.sort();
        assert_eq!(
            top,
            [".", "..", "etc-upper", "etc-work", "lost+found", "var"]
        );
        assert_eq!(listing("/etc-work"), [".", ".."]);
        assert_eq!(listing("/var"), [".", ".."]);
        assert_eq!(
            debugfs(&state, "cat /etc-upper/cairn/agent.yaml"),
            "node: n1\n"
        );
        let stat = |p: &str| debugfs(&state, &format!("stat \"{p}\""));
        let owner_and_mode = |p: &str| {
            let s = stat(p);
            let mode = s
                .split("Mode:")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .unwrap_or_else(|| panic!("{s}"))
                .to_string();
            let root = s.contains("User:     0   Group:     0");
            (mode, root)
        };
        for (p, m) in [
            ("/", "0755"),
            ("/etc-upper", "0755"),
            ("/etc-work", "0755"),
            ("/var", "0755"),
            ("/etc-upper/cairn/agent.yaml", "0644"),
            ("/etc-upper/kubernetes/pki", "0750"),
            ("/etc-upper/kubernetes/pki/ca.key", "0600"),
            ("/etc-upper/kubernetes/pki/a name", "0644"),
            ("/etc-upper/cairn/current.yaml", "0777"),
        ] {
            assert_eq!(owner_and_mode(p), (m.to_string(), true), "{p}");
        }
        assert!(
            stat("/etc-upper/cairn/current.yaml").contains("Fast link dest: \"agent.yaml\""),
            "{}",
            stat("/etc-upper/cairn/current.yaml")
        );
        // Nothing else is touched: slot B stays blank.
        assert!(read_range(&b.disk, layout.root_b.start, MIB)
            .iter()
            .all(|x| *x == 0));
        assert!(!b.disk.with_file_name(".state.img").exists());
    }

    fn running_as_root() -> bool {
        std::fs::metadata("/proc/self")
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
            .unwrap_or(false)
    }

    #[test]
    fn a_config_tree_without_etc_is_refused_before_building() {
        let cfg = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(cfg.path().join("cairn")).unwrap();
        let e = check_config_tree(cfg.path()).unwrap_err().to_string();
        assert!(e.contains("has no etc/ directory"), "{e}");
        let img = cfg.path().join("s.img");
        std::fs::create_dir_all(cfg.path().join("etc")).unwrap();
        let fifo = cfg.path().join("etc/fifo");
        run(Command::new("mkfifo").arg(&fifo)).unwrap();
        let e = build_state_image(cfg.path(), &img, 64)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not a regular file, directory or symlink"),
            "{e}"
        );
        assert!(!img.exists());
    }

    #[test]
    fn uki_has_the_sections_and_the_root_hash() {
        let fx = build_small_disk();
        let b = &fx.built;
        let sections = pe_sections(&b.uki).unwrap();
        let uki = std::fs::read(&b.uki).unwrap();
        let body = |name: &str| -> Vec<u8> {
            let s = sections
                .iter()
                .find(|s| s.name == name)
                .unwrap_or_else(|| panic!("no {name} section in {sections:?}"));
            uki[s.file_offset as usize..(s.file_offset + s.size) as usize].to_vec()
        };
        let cmdline = String::from_utf8(body(".cmdline")).unwrap();
        assert_eq!(
            cmdline,
            format!(
                "console=ttyS0,115200 mitigations=off panic=10 systemd.show_status=1 systemd.gpt_auto=0 cairn.slot=a cairn.version=1.2.3 cairn.verity={}",
                b.verity_params.root_hash
            )
        );
        let osrel = String::from_utf8(body(".osrel")).unwrap();
        assert!(osrel.lines().any(|l| l == "ID=cairn"), "{osrel}");
        assert!(osrel.lines().any(|l| l == "VERSION=\"1.2.3\""), "{osrel}");
        assert!(!osrel.contains("IMAGE_ID") && !osrel.contains("IMAGE_VERSION"));
        assert_eq!(body(".linux"), pseudo_random(100_000, 3));
        assert_eq!(body(".initrd"), pseudo_random(50_000, 5));
        // Added sections come after the stub's and do not overlap.
        let added: Vec<&PeSection> = sections
            .iter()
            .filter(|s| [".osrel", ".cmdline", ".linux", ".initrd"].contains(&s.name.as_str()))
            .collect();
        assert_eq!(added.len(), 4);
        let stub_end = sections
            .iter()
            .filter(|s| !added.iter().any(|a| a.name == s.name))
            .map(|s| s.vma + s.size)
            .max()
            .unwrap();
        assert!(added[0].vma >= stub_end);
        for w in added.windows(2) {
            assert!(w[0].vma + w[0].size <= w[1].vma, "{w:?} overlap");
            assert_eq!(w[1].vma % 0x1000, 0);
        }

        // build_uki for slot B names slot B.
        let out = b.uki.with_file_name("b.efi");
        let v = OsVersion::new("2.0.0").unwrap();
        let kernel = fx.rootfs.with_file_name("vmlinuz");
        let initrd = fx.rootfs.with_file_name("initramfs.cpio.gz");
        build_uki(Slot::B, &v, &"ab".repeat(32), &kernel, &initrd, &out).unwrap();
        let uki_b = std::fs::read(&out).unwrap();
        let needle = format!(
            "cairn.slot=b cairn.version=2.0.0 cairn.verity={}",
            "ab".repeat(32)
        );
        assert!(uki_b.windows(needle.len()).any(|w| w == needle.as_bytes()));
        let e = build_uki(Slot::B, &v, "abc", &kernel, &initrd, &out).unwrap_err();
        assert!(e.to_string().contains("not 64 hex digits"), "{e}");
    }

    #[test]
    fn veritysetup_verifies_the_pair_and_catches_a_flipped_byte() {
        let fx = build_small_disk();
        let b = &fx.built;
        let verify = |data: &Path| {
            tool("veritysetup")
                .arg("verify")
                .arg(data)
                .arg(&b.verity)
                .arg(&b.verity_params.root_hash)
                .output()
                .unwrap()
        };
        let ok = verify(&fx.rootfs);
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
        let copy = fx.rootfs.with_file_name("tampered.erofs");
        let mut bytes = std::fs::read(&fx.rootfs).unwrap();
        bytes[123_456] ^= 0x01;
        std::fs::write(&copy, bytes).unwrap();
        let bad = verify(&copy);
        assert!(
            !bad.status.success(),
            "a flipped byte must fail verification"
        );
        // and verity.json records the same parameters
        let json: VerityParams =
            serde_json::from_slice(&std::fs::read(b.disk.with_file_name("verity.json")).unwrap())
                .unwrap();
        assert_eq!(json, b.verity_params);
        assert_eq!(json.data_blocks, 300);
    }
}
