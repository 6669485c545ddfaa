//! Find cairn's partitions on a disk by their GPT partition names
//! (`esp`, `root-a`, `verity-a`, `root-b`, `verity-b`, `state`).
//!
//! Two sources behind one seam, [`PartitionSource`]:
//!
//! - [`GptSource`] reads the GPT straight from a block device or a disk
//!   image file (no kernel partition scan needed, works on images at build
//!   time). The parser is small and follows the UEFI specification's GPT
//!   header validation (UEFI 2.10, §5.3.2 "GPT Header"): signature,
//!   header CRC32, `MyLBA`, partition entry array CRC32; if the primary
//!   header fails it falls back to the backup header at the end of the disk.
//!   Logical block sizes 512 and 4096 are tried.
//! - [`SysfsSource`] reads `/sys/class/block/<disk>/<part>/uevent`
//!   (`PARTNAME=`, `DEVNAME=`, `PARTN=`) plus `start` and `size`. This is
//!   what stage 1 uses: it has no udev, and the kernel has already parsed
//!   the GPT.
//!
//! [`DiskLayout::find`] then insists that each of the six names occurs
//! exactly once: a missing or a duplicated name is an error, never a guess.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use crate::slot::Slot;

/// GPT partition name of the EFI system partition.
pub const ESP_LABEL: &str = "esp";
/// GPT partition name of the writable state partition.
pub const STATE_LABEL: &str = "state";

/// The largest partition entry array this parser reads (the usual one is
/// 128 entries × 128 bytes = 16 KiB).
const MAX_ENTRY_ARRAY: u64 = 1 << 20;

/// Why the partitions could not be found.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// Reading the device, image or sysfs file failed.
    #[error("reading {path} failed: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: io::Error,
    },
    /// Neither the primary nor the backup GPT header is valid.
    #[error("{path} has no valid GPT (primary: {primary}; backup: {backup}); is this the right disk? A disk that is not partitioned by cairn's installer cannot be used")]
    NoGpt {
        /// The device or image.
        path: String,
        /// Why the primary header was rejected.
        primary: String,
        /// Why the backup header was rejected.
        backup: String,
    },
    /// A sysfs `uevent` or attribute that cannot be parsed.
    #[error("{path}: {reason}")]
    Sysfs {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A required partition name is absent.
    #[error("{disk} has no partition named {label:?} (found: {found}); repartition the disk with cairn's installer")]
    Missing {
        /// The disk.
        disk: String,
        /// The missing GPT name.
        label: &'static str,
        /// The names that were found.
        found: String,
    },
    /// A required partition name occurs more than once.
    #[error("{disk} has {count} partitions named {label:?} (numbers {numbers}); refusing to guess which one is meant: rename or delete the extra ones")]
    Duplicate {
        /// The disk.
        disk: String,
        /// The GPT name.
        label: &'static str,
        /// How many there are.
        count: usize,
        /// Their partition numbers.
        numbers: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LayoutError + '_ {
    move |source| LayoutError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// One partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// 1-based partition number (`PARTN`, the index in the entry array + 1).
    pub number: u32,
    /// GPT partition name.
    pub name: String,
    /// Offset from the start of the disk, in bytes.
    pub start: u64,
    /// Size in bytes.
    pub size: u64,
    /// The partition's block device (`/dev/vda3`), when there is one; `None`
    /// for partitions of an image file.
    pub device: Option<PathBuf>,
}

impl fmt::Display for PartitionInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.device {
            Some(d) => write!(f, "{} ({})", d.display(), self.name),
            None => write!(f, "partition {} ({})", self.number, self.name),
        }
    }
}

/// Somewhere to read a disk's partition list from.
pub trait PartitionSource {
    /// The disk, for messages.
    fn describe(&self) -> String;
    /// All partitions with their names.
    fn partitions(&self) -> Result<Vec<PartitionInfo>, LayoutError>;
}

/// cairn's six partitions on one disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskLayout {
    /// `esp`.
    pub esp: PartitionInfo,
    /// `root-a`.
    pub root_a: PartitionInfo,
    /// `verity-a`.
    pub verity_a: PartitionInfo,
    /// `root-b`.
    pub root_b: PartitionInfo,
    /// `verity-b`.
    pub verity_b: PartitionInfo,
    /// `state`.
    pub state: PartitionInfo,
}

impl DiskLayout {
    /// Find the six partitions; each name must occur exactly once.
    pub fn find(source: &dyn PartitionSource) -> Result<Self, LayoutError> {
        let parts = source.partitions()?;
        let disk = source.describe();
        let pick = |label: &'static str| -> Result<PartitionInfo, LayoutError> {
            let hits: Vec<&PartitionInfo> = parts.iter().filter(|p| p.name == label).collect();
            match hits.as_slice() {
                [one] => Ok((*one).clone()),
                [] => Err(LayoutError::Missing {
                    disk: disk.clone(),
                    label,
                    found: if parts.is_empty() {
                        "no partitions".into()
                    } else {
                        parts
                            .iter()
                            .map(|p| format!("{:?}", p.name))
                            .collect::<Vec<_>>()
                            .join(", ")
                    },
                }),
                many => Err(LayoutError::Duplicate {
                    disk: disk.clone(),
                    label,
                    count: many.len(),
                    numbers: many
                        .iter()
                        .map(|p| p.number.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                }),
            }
        };
        Ok(DiskLayout {
            esp: pick(ESP_LABEL)?,
            root_a: pick(Slot::A.root_label())?,
            verity_a: pick(Slot::A.verity_label())?,
            root_b: pick(Slot::B.root_label())?,
            verity_b: pick(Slot::B.verity_label())?,
            state: pick(STATE_LABEL)?,
        })
    }

    /// The root partition of `slot`.
    pub fn root(&self, slot: Slot) -> &PartitionInfo {
        match slot {
            Slot::A => &self.root_a,
            Slot::B => &self.root_b,
        }
    }

    /// The verity partition of `slot`.
    pub fn verity(&self, slot: Slot) -> &PartitionInfo {
        match slot {
            Slot::A => &self.verity_a,
            Slot::B => &self.verity_b,
        }
    }
}

/// The block device name of partition `n` of `disk`: `/dev/vda` → `/dev/vda3`,
/// `/dev/nvme0n1` → `/dev/nvme0n1p3` (a `p` when the disk name ends in a digit).
pub fn partition_device(disk: &Path, n: u32) -> PathBuf {
    let s = disk.as_os_str().to_string_lossy();
    if s.ends_with(|c: char| c.is_ascii_digit()) {
        PathBuf::from(format!("{s}p{n}"))
    } else {
        PathBuf::from(format!("{s}{n}"))
    }
}

/// Read the GPT of a block device or an image file.
#[derive(Debug, Clone)]
pub struct GptSource {
    path: PathBuf,
}

impl GptSource {
    /// The disk or image at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        GptSource { path: path.into() }
    }
}

impl PartitionSource for GptSource {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn partitions(&self) -> Result<Vec<PartitionInfo>, LayoutError> {
        let mut f = File::open(&self.path).map_err(io_err(&self.path))?;
        let is_block = f
            .metadata()
            .map_err(io_err(&self.path))?
            .file_type()
            .is_block_device();
        let mut parts = read_gpt(&mut f, &self.describe())?;
        if is_block {
            for p in &mut parts {
                p.device = Some(partition_device(&self.path, p.number));
            }
        }
        Ok(parts)
    }
}

/// The fields of a GPT header this parser uses (UEFI 2.10 table 5-5).
#[derive(Debug, Clone, Copy)]
struct GptHeader {
    my_lba: u64,
    alternate_lba: u64,
    entries_lba: u64,
    entry_count: u32,
    entry_size: u32,
    entries_crc: u32,
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn read_at(r: &mut (impl Read + Seek), offset: u64, len: usize) -> io::Result<Vec<u8>> {
    r.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

/// Steps 1–3 of the header check: signature, header CRC32, `MyLBA`.
fn parse_header(r: &mut (impl Read + Seek), block: u64, lba: u64) -> Result<GptHeader, String> {
    let b = read_at(r, lba * block, block as usize)
        .map_err(|e| format!("cannot read LBA {lba}: {e}"))?;
    // Step 1: the signature.
    if &b[0..8] != b"EFI PART" {
        return Err(format!("no \"EFI PART\" signature at LBA {lba}"));
    }
    let header_size = le32(&b, 12) as usize;
    if header_size < 92 || header_size > block as usize {
        return Err(format!("header size {header_size} is not in 92..={block}"));
    }
    // Step 2: the header CRC32, computed with its own field zeroed.
    let stored = le32(&b, 16);
    let mut h = b[..header_size].to_vec();
    h[16..20].fill(0);
    let crc = crc32fast::hash(&h);
    if crc != stored {
        return Err(format!(
            "header CRC32 is {crc:#010x}, the header says {stored:#010x}"
        ));
    }
    // Step 3: MyLBA must be where we read it.
    let my_lba = le64(&b, 24);
    if my_lba != lba {
        return Err(format!("MyLBA is {my_lba}, read at LBA {lba}"));
    }
    let header = GptHeader {
        my_lba,
        alternate_lba: le64(&b, 32),
        entries_lba: le64(&b, 72),
        entry_count: le32(&b, 80),
        entry_size: le32(&b, 84),
        entries_crc: le32(&b, 88),
    };
    if header.entry_size < 128 || !header.entry_size.is_power_of_two() {
        return Err(format!(
            "partition entry size {} is not 128 × 2^n",
            header.entry_size
        ));
    }
    Ok(header)
}

/// Step 4: the partition entry array and its CRC32, then the entries.
fn parse_entries(
    r: &mut (impl Read + Seek),
    block: u64,
    h: &GptHeader,
) -> Result<Vec<PartitionInfo>, String> {
    let len = u64::from(h.entry_count) * u64::from(h.entry_size);
    if len > MAX_ENTRY_ARRAY {
        return Err(format!(
            "partition entry array of {len} bytes is implausibly large"
        ));
    }
    let arr = read_at(r, h.entries_lba * block, len as usize).map_err(|e| {
        format!(
            "cannot read the partition entries at LBA {}: {e}",
            h.entries_lba
        )
    })?;
    let crc = crc32fast::hash(&arr);
    if crc != h.entries_crc {
        return Err(format!(
            "partition entry array CRC32 is {crc:#010x}, the header says {:#010x}",
            h.entries_crc
        ));
    }
    let mut parts = Vec::new();
    for (i, e) in arr.chunks_exact(h.entry_size as usize).enumerate() {
        // An all-zero partition type GUID marks an unused entry.
        if e[0..16].iter().all(|b| *b == 0) {
            continue;
        }
        let first = le64(e, 32);
        let last = le64(e, 40);
        if last < first {
            return Err(format!(
                "partition {} ends (LBA {last}) before it starts (LBA {first})",
                i + 1
            ));
        }
        let units: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|u| *u != 0)
            .collect();
        parts.push(PartitionInfo {
            number: i as u32 + 1,
            name: String::from_utf16_lossy(&units),
            start: first * block,
            size: (last - first + 1) * block,
            device: None,
        });
    }
    Ok(parts)
}

/// Parse the GPT of a disk image or device (see the module docs for the
/// steps). `what` names the disk in errors.
pub fn read_gpt(r: &mut (impl Read + Seek), what: &str) -> Result<Vec<PartitionInfo>, LayoutError> {
    let disk_len = r.seek(SeekFrom::End(0)).map_err(|source| LayoutError::Io {
        path: what.to_string(),
        source,
    })?;
    let mut primary_why = Vec::new();
    let mut backup_why = Vec::new();
    for block in [512u64, 4096] {
        if disk_len < 3 * block {
            primary_why.push(format!("{block}-byte blocks: the disk is too small"));
            continue;
        }
        // Primary header at LBA 1.
        let primary = parse_header(r, block, 1);
        if let Ok(h) = &primary {
            match parse_entries(r, block, h) {
                Ok(p) => return Ok(p),
                Err(why) => primary_why.push(format!("{block}-byte blocks: {why}")),
            }
        }
        if let Err(why) = &primary {
            primary_why.push(format!("{block}-byte blocks: {why}"));
        }
        // Backup header: where the primary says, else the last LBA.
        let last_lba = disk_len / block - 1;
        let backup_lba = match &primary {
            Ok(h) if h.alternate_lba != 0 && h.alternate_lba <= last_lba => h.alternate_lba,
            _ => last_lba,
        };
        match parse_header(r, block, backup_lba).and_then(|h| {
            let p = parse_entries(r, block, &h)?;
            Ok((h, p))
        }) {
            Ok((h, p)) => {
                log::warn!(
                    "{what}: the primary GPT is damaged, using the backup at LBA {}",
                    h.my_lba
                );
                return Ok(p);
            }
            Err(why) => backup_why.push(format!("{block}-byte blocks: {why}")),
        }
    }
    Err(LayoutError::NoGpt {
        path: what.to_string(),
        primary: primary_why.join("; "),
        backup: backup_why.join("; "),
    })
}

/// Read a disk's partitions from sysfs, as the kernel parsed them.
#[derive(Debug, Clone)]
pub struct SysfsSource {
    class_block: PathBuf,
    disk: String,
    dev: PathBuf,
}

impl SysfsSource {
    /// Partitions of `disk` (e.g. `vda`) from `/sys/class/block`, devices
    /// under `/dev`.
    pub fn new(disk: &str) -> Self {
        Self::with_roots(disk, "/sys/class/block", "/dev")
    }

    /// The same with other roots (a fake sysfs tree in tests).
    pub fn with_roots(
        disk: &str,
        class_block: impl Into<PathBuf>,
        dev: impl Into<PathBuf>,
    ) -> Self {
        SysfsSource {
            class_block: class_block.into(),
            disk: disk.to_string(),
            dev: dev.into(),
        }
    }
}

/// `KEY=value` lines of a `uevent` file.
fn uevent_value<'a>(content: &'a str, key: &str) -> Option<&'a str> {
    content
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

fn read_sectors(path: &Path) -> Result<u64, LayoutError> {
    let s = fs::read_to_string(path).map_err(io_err(path))?;
    s.trim().parse::<u64>().map_err(|_| LayoutError::Sysfs {
        path: path.display().to_string(),
        reason: format!(
            "expected a number of 512-byte sectors, found {:?}",
            s.trim()
        ),
    })
}

impl PartitionSource for SysfsSource {
    fn describe(&self) -> String {
        self.dev.join(&self.disk).display().to_string()
    }

    fn partitions(&self) -> Result<Vec<PartitionInfo>, LayoutError> {
        let disk_dir = self.class_block.join(&self.disk);
        let rd = fs::read_dir(&disk_dir).map_err(io_err(&disk_dir))?;
        let mut parts = Vec::new();
        for ent in rd {
            let ent = ent.map_err(io_err(&disk_dir))?;
            let dir = ent.path();
            // A partition's directory sits inside its disk's and has a
            // `partition` attribute.
            if !dir.join("partition").is_file() {
                continue;
            }
            let uevent_path = dir.join("uevent");
            let uevent = fs::read_to_string(&uevent_path).map_err(io_err(&uevent_path))?;
            let bad = |reason: String| LayoutError::Sysfs {
                path: uevent_path.display().to_string(),
                reason,
            };
            let devname =
                uevent_value(&uevent, "DEVNAME").ok_or_else(|| bad("no DEVNAME= line".into()))?;
            let number = uevent_value(&uevent, "PARTN")
                .ok_or_else(|| bad("no PARTN= line".into()))?
                .parse::<u32>()
                .map_err(|_| bad("PARTN= is not a number".into()))?;
            // Partitions without a GPT name have no PARTNAME= line.
            let name = uevent_value(&uevent, "PARTNAME").unwrap_or("").to_string();
            parts.push(PartitionInfo {
                number,
                name,
                start: read_sectors(&dir.join("start"))? * 512,
                size: read_sectors(&dir.join("size"))? * 512,
                device: Some(self.dev.join(devname)),
            });
        }
        parts.sort_by_key(|p| p.number);
        Ok(parts)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// cairn's partition table in MiB: (name, size).
    pub const CAIRN_TABLE: [(&str, u64); 6] = [
        ("esp", 4),
        ("root-a", 8),
        ("verity-a", 1),
        ("root-b", 8),
        ("verity-b", 1),
        ("state", 2),
    ];

    /// Write a GPT (protective MBR, primary and backup header and entry
    /// array) for `parts` (name, first LBA, last LBA) into a sparse file of
    /// `blocks` 512-byte blocks. Independent of the parser under test: it
    /// builds the structures field by field from the UEFI tables.
    pub fn write_gpt(path: &Path, blocks: u64, parts: &[(&str, u64, u64)]) {
        const BS: u64 = 512;
        let f = File::create(path).unwrap();
        f.set_len(blocks * BS).unwrap();
        let mut entries = vec![0u8; 128 * 128];
        for (i, (name, first, last)) in parts.iter().enumerate() {
            let e = &mut entries[i * 128..(i + 1) * 128];
            // Linux filesystem data type GUID (any non-zero value works).
            e[0..16].copy_from_slice(&[
                0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47,
                0x7d, 0xe4,
            ]);
            e[16] = i as u8 + 1; // unique GUID
            e[32..40].copy_from_slice(&first.to_le_bytes());
            e[40..48].copy_from_slice(&last.to_le_bytes());
            for (k, u) in name.encode_utf16().enumerate() {
                e[56 + 2 * k..58 + 2 * k].copy_from_slice(&u.to_le_bytes());
            }
        }
        let entries_crc = crc32fast::hash(&entries);
        let header = |my: u64, alt: u64, entries_lba: u64| {
            let mut h = vec![0u8; 92];
            h[0..8].copy_from_slice(b"EFI PART");
            h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
            h[12..16].copy_from_slice(&92u32.to_le_bytes());
            h[24..32].copy_from_slice(&my.to_le_bytes());
            h[32..40].copy_from_slice(&alt.to_le_bytes());
            h[40..48].copy_from_slice(&34u64.to_le_bytes());
            h[48..56].copy_from_slice(&(blocks - 34).to_le_bytes());
            h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
            h[80..84].copy_from_slice(&128u32.to_le_bytes());
            h[84..88].copy_from_slice(&128u32.to_le_bytes());
            h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
            let crc = crc32fast::hash(&h);
            h[16..20].copy_from_slice(&crc.to_le_bytes());
            h
        };
        let mut f = fs::OpenOptions::new().write(true).open(path).unwrap();
        let mut put = |off: u64, data: &[u8]| {
            f.seek(SeekFrom::Start(off)).unwrap();
            f.write_all(data).unwrap();
        };
        let mut mbr = vec![0u8; 512];
        mbr[446 + 4] = 0xee;
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        put(0, &mbr);
        put(BS, &header(1, blocks - 1, 2));
        put(2 * BS, &entries);
        put((blocks - 33) * BS, &entries);
        put((blocks - 1) * BS, &header(blocks - 1, 1, blocks - 33));
    }

    /// A cairn disk image; returns (path holder, partitions as written).
    pub fn cairn_image(dir: &Path) -> (PathBuf, Vec<(String, u64, u64)>) {
        let mut lba = 2048;
        let mut parts = Vec::new();
        for (name, mib) in CAIRN_TABLE {
            let n = mib * 2048;
            parts.push((name.to_string(), lba, lba + n - 1));
            lba += n;
        }
        let blocks = lba + 2048;
        let path = dir.join("disk.img");
        let borrowed: Vec<(&str, u64, u64)> =
            parts.iter().map(|(n, a, b)| (n.as_str(), *a, *b)).collect();
        write_gpt(&path, blocks, &borrowed);
        (path, parts)
    }

    fn check_cairn_layout(layout: &DiskLayout, written: &[(String, u64, u64)]) {
        let by_name = |n: &str| written.iter().find(|p| p.0 == n).unwrap();
        for (part, name) in [
            (&layout.esp, "esp"),
            (layout.root(Slot::A), "root-a"),
            (layout.verity(Slot::A), "verity-a"),
            (layout.root(Slot::B), "root-b"),
            (layout.verity(Slot::B), "verity-b"),
            (&layout.state, "state"),
        ] {
            let (_, first, last) = by_name(name);
            assert_eq!(part.name, name);
            assert_eq!(part.start, first * 512, "{name}");
            assert_eq!(part.size, (last - first + 1) * 512, "{name}");
        }
        assert_eq!(layout.root_b.number, 4);
    }

    #[test]
    fn gpt_image_yields_the_six_partitions() {
        let d = tempfile::tempdir().unwrap();
        let (img, written) = cairn_image(d.path());
        let layout = DiskLayout::find(&GptSource::new(&img)).unwrap();
        check_cairn_layout(&layout, &written);
        assert_eq!(
            layout.esp.device, None,
            "an image file has no partition devices"
        );
    }

    #[test]
    fn damaged_primary_falls_back_to_the_backup() {
        let d = tempfile::tempdir().unwrap();
        let (img, written) = cairn_image(d.path());
        // Flip a byte of the primary partition entry array.
        let mut f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&img)
            .unwrap();
        f.seek(SeekFrom::Start(2 * 512 + 60)).unwrap();
        f.write_all(b"X").unwrap();
        drop(f);
        let layout = DiskLayout::find(&GptSource::new(&img)).unwrap();
        check_cairn_layout(&layout, &written);
    }

    #[test]
    fn no_gpt_is_an_error_naming_both_headers() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("blank.img");
        File::create(&img).unwrap().set_len(4 << 20).unwrap();
        let err = DiskLayout::find(&GptSource::new(&img)).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, LayoutError::NoGpt { .. }), "{msg}");
        assert!(
            msg.contains("blank.img") && msg.contains("EFI PART"),
            "{msg}"
        );

        // Both headers with a bad CRC.
        let (img, _) = cairn_image(d.path());
        let mut f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&img)
            .unwrap();
        let len = f.seek(SeekFrom::End(0)).unwrap();
        for off in [512 + 40, len - 512 + 40] {
            f.seek(SeekFrom::Start(off)).unwrap();
            f.write_all(&[0xff]).unwrap();
        }
        drop(f);
        let msg = DiskLayout::find(&GptSource::new(&img))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("header CRC32"), "{msg}");
    }

    #[test]
    fn missing_and_duplicate_names_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("x.img");
        write_gpt(&img, 8192, &[("esp", 2048, 4095), ("root-a", 4096, 6143)]);
        let err = DiskLayout::find(&GptSource::new(&img)).unwrap_err();
        assert!(
            matches!(
                err,
                LayoutError::Missing {
                    label: "verity-a",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("\"esp\", \"root-a\""), "{err}");

        write_gpt(
            &img,
            8192,
            &[
                ("esp", 2048, 2100),
                ("esp", 2101, 2200),
                ("root-a", 2201, 2300),
            ],
        );
        let err = DiskLayout::find(&GptSource::new(&img)).unwrap_err();
        assert!(
            matches!(&err, LayoutError::Duplicate { label: "esp", count: 2, numbers, .. } if numbers == "1, 2"),
            "{err}"
        );
    }

    #[test]
    fn sfdisk_made_image_parses_too() {
        // Interop with util-linux, when it is installed.
        let Ok(out) = std::process::Command::new("sfdisk")
            .arg("--version")
            .output()
        else {
            eprintln!("SKIPPED sfdisk_made_image_parses_too: sfdisk (util-linux) is not installed");
            return;
        };
        assert!(out.status.success());
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("sf.img");
        File::create(&img).unwrap().set_len(40 << 20).unwrap();
        let script = "label: gpt\n\
            size=4MiB, type=uefi, name=esp\n\
            size=8MiB, name=root-a\n\
            size=1MiB, name=verity-a\n\
            size=8MiB, name=root-b\n\
            size=1MiB, name=verity-b\n\
            size=2MiB, name=state\n";
        let mut child = std::process::Command::new("sfdisk")
            .arg("--quiet")
            .arg(&img)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());
        let layout = DiskLayout::find(&GptSource::new(&img)).unwrap();
        assert_eq!(
            layout.esp.start,
            1 << 20,
            "sfdisk aligns the first partition at 1 MiB"
        );
        assert_eq!(layout.root_a.size, 8 << 20);
        assert_eq!(layout.state.number, 6);
    }

    fn fake_sysfs(root: &Path, disk: &str, parts: &[(u32, &str, Option<&str>, u64, u64)]) {
        let disk_dir = root.join(disk);
        fs::create_dir_all(&disk_dir).unwrap();
        fs::write(
            disk_dir.join("uevent"),
            format!("DEVTYPE=disk\nDEVNAME={disk}\n"),
        )
        .unwrap();
        fs::create_dir_all(disk_dir.join("queue")).unwrap();
        for (n, devname, name, start, size) in parts {
            let p = disk_dir.join(devname);
            fs::create_dir_all(&p).unwrap();
            fs::write(p.join("partition"), format!("{n}\n")).unwrap();
            fs::write(p.join("start"), format!("{start}\n")).unwrap();
            fs::write(p.join("size"), format!("{size}\n")).unwrap();
            let mut ue =
                format!("MAJOR=253\nMINOR={n}\nDEVNAME={devname}\nDEVTYPE=partition\nPARTN={n}\n");
            if let Some(name) = name {
                ue.push_str(&format!("PARTNAME={name}\n"));
            }
            fs::write(p.join("uevent"), ue).unwrap();
        }
    }

    #[test]
    fn sysfs_yields_devices_by_partname() {
        let d = tempfile::tempdir().unwrap();
        let mut rows = Vec::new();
        let mut start = 2048;
        let names: Vec<String> = (1..=6).map(|n| format!("nvme0n1p{n}")).collect();
        for (i, (name, mib)) in CAIRN_TABLE.iter().enumerate() {
            rows.push((
                i as u32 + 1,
                names[i].as_str(),
                Some(*name),
                start,
                mib * 2048,
            ));
            start += mib * 2048;
        }
        rows.push((7, "nvme0n1p7", None, start, 2048));
        fake_sysfs(d.path(), "nvme0n1", &rows);
        let src = SysfsSource::with_roots("nvme0n1", d.path(), "/dev");
        let layout = DiskLayout::find(&src).unwrap();
        assert_eq!(
            layout.root_b.device.as_deref(),
            Some(Path::new("/dev/nvme0n1p4"))
        );
        assert_eq!(
            layout.verity(Slot::A).device.as_deref(),
            Some(Path::new("/dev/nvme0n1p3"))
        );
        assert_eq!(layout.esp.start, 2048 * 512);
        assert_eq!(layout.state.size, 2 << 20);
        assert_eq!(src.partitions().unwrap().len(), 7);

        // A broken uevent names the file.
        let bad = d.path().join("nvme0n1/nvme0n1p7/uevent");
        fs::write(&bad, "DEVNAME=nvme0n1p7\n").unwrap();
        let err = src.partitions().unwrap_err().to_string();
        assert!(
            err.contains("nvme0n1p7/uevent") && err.contains("PARTN"),
            "{err}"
        );
    }

    #[test]
    fn partition_device_names() {
        assert_eq!(
            partition_device(Path::new("/dev/vda"), 3),
            Path::new("/dev/vda3")
        );
        assert_eq!(
            partition_device(Path::new("/dev/nvme0n1"), 3),
            Path::new("/dev/nvme0n1p3")
        );
        assert_eq!(
            partition_device(Path::new("/dev/mmcblk0"), 1),
            Path::new("/dev/mmcblk0p1")
        );
    }
}
