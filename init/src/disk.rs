//! Disk mode: find cairn's partitions, put dm-verity over the booted slot's
//! root, mount it, and mount (on first boot: create) the STATE partition.
//!
//! The steps, each a function over [`Sys`]:
//!
//! 1. [`find_layout`]: poll `/sys/class/block` until exactly one disk has
//!    all six GPT names (`esp`, `root-a`, `verity-a`, `root-b`, `verity-b`,
//!    `state`; [`cairn_slots::layout`]), for at most [`DISK_WAIT`]: a
//!    virtio or NVMe disk may finish probing after its module is loaded.
//!    Two cairn disks are an error, not a guess.
//! 2. [`read_superblock`]: the dm-verity superblock at the start of
//!    `verity-<slot>` (cryptsetup's on-disk format, "DMVerity" in its wiki:
//!    `verity\0\0`, version 1, hash type 1, algorithm, block sizes, data
//!    block count, salt). Only what cairn builds is accepted: format 1,
//!    sha256, 4096-byte blocks. Trusting the salt and the block count from
//!    disk is safe: changing either changes the root hash, which comes from
//!    the command line.
//! 3. [`verity_device`]: the table
//!    `0 <sectors> verity 1 <root-dev> <verity-dev> 4096 4096 <data blocks> 1 sha256 <root hash> <salt> 1 panic_on_corruption`,
//!    loaded read-only as device `root` (uuid `CAIRN-VERITY-<slot>`). The
//!    hash tree starts at hash block 1 because block 0 is the superblock.
//!    `panic_on_corruption` rather than `restart_on_corruption`: both reboot
//!    (the UKI has `panic=10`), but a panic leaves dm-verity's message about
//!    which block failed on the console, and either way systemd-boot's boot
//!    counting gets to pick the other slot on a trial boot.
//! 4. The root is mounted read-only (erofs) from `/dev/dm-N` at
//!    [`crate::boot::SYSROOT`].
//! 5. [`mount_state`]: `state` is mounted ext4 at [`STATE_DIR`]. If the
//!    partition is blank (its first MiB is zeros: the disk image leaves it
//!    so, and so does the installer), stage 1 creates the filesystem first
//!    with the verified root's own `mke2fs`, started through the root's
//!    dynamic loader ([`MKE2FS`]) because the initramfs has no libc. Data
//!    that is neither blank nor ext4 is never formatted over: that is an
//!    error saying how to reset the partition on purpose.
//!
//! [`STATE_DIR`] is inside the initramfs' `/run`, which stage 1 moves into
//! the new root, so after switch_root the state partition stays visible and
//! unmountable at `/run/cairn/state`. The layout inside it is PXE mode's:
//! `etc-upper`, `etc-work` (the `/etc` overlay) and `var` (bound on `/var`).

use std::time::Duration;

use cairn_slots::layout::{DiskLayout, LayoutError, PartitionInfo, PartitionSource};
use cairn_slots::Slot;

use crate::boot::SYSROOT;
use crate::cmdline::DiskBoot;
use crate::sys::{join, DmDevice, DmTarget, Mount, MountFlags, Sys};
use crate::InitError;

/// How long stage 1 waits for the disk's partitions to appear.
pub const DISK_WAIT: Duration = Duration::from_secs(60);
/// Poll interval while waiting.
const POLL: Duration = Duration::from_millis(100);
/// Where the STATE partition is mounted (moved with `/run` into the root).
pub const STATE_DIR: &str = "/run/cairn/state";
/// Name of the dm-verity device.
pub const DM_NAME: &str = "root";
/// The verified root's dynamic loader and `mke2fs`, used on first boot.
pub const MKE2FS: (&str, &str) = (
    "/sysroot/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
    "/sysroot/usr/sbin/mke2fs",
);
/// Library path for [`MKE2FS`] inside the mounted root.
const ROOT_LIBS: &str = "/sysroot/usr/lib/x86_64-linux-gnu";
/// Filesystem label of the state partition (stage 1 sets it when it
/// formats; it does not check it on an existing filesystem).
pub const STATE_LABEL: &str = "cairn-state";
/// The directories in a state filesystem (or PXE mode's state tmpfs): the
/// `/etc` overlay's upper and work directories and what is bound on `/var`.
/// Created when missing, so a state holding only some of them is fine.
pub const STATE_SUBDIRS: [&str; 3] = ["etc-upper", "etc-work", "var"];
/// dm-verity block size cairn uses for data and hash blocks.
pub const VERITY_BLOCK: u64 = 4096;
/// How much of the state partition must be zeros for it to count as blank.
const BLANK_PROBE: usize = 1 << 20;

/// A list of partitions as a [`PartitionSource`], so
/// [`DiskLayout::find`]'s "each name exactly once" rule applies.
struct Listed<'a> {
    disk: &'a str,
    parts: Vec<PartitionInfo>,
}

impl PartitionSource for Listed<'_> {
    fn describe(&self) -> String {
        format!("/dev/{}", self.disk)
    }
    fn partitions(&self) -> Result<Vec<PartitionInfo>, LayoutError> {
        Ok(self.parts.clone())
    }
}

/// Step 1: wait for exactly one disk with cairn's six partitions.
pub fn find_layout(sys: &mut dyn Sys, wait: Duration) -> Result<(String, DiskLayout), InitError> {
    let deadline = sys.uptime() + wait.as_secs_f64();
    loop {
        let mut found = Vec::new();
        let mut why = Vec::new();
        for disk in sys.block_disks() {
            let parts = match sys.disk_partitions(&disk) {
                Ok(p) => p,
                Err(e) => {
                    why.push(format!("{disk}: {e}"));
                    continue;
                }
            };
            match DiskLayout::find(&Listed { disk: &disk, parts }) {
                Ok(l) => found.push((disk, l)),
                Err(e) => why.push(e.to_string()),
            }
        }
        match found.len() {
            1 => return Ok(found.remove(0)),
            0 => {}
            _ => {
                let names: Vec<&str> = found.iter().map(|(d, _)| d.as_str()).collect();
                return Err(InitError::Rootfs(format!(
                    "several disks have cairn's partitions ({}); refusing to guess which one to boot: detach or wipe the extra ones",
                    names.join(", ")
                )));
            }
        }
        if sys.uptime() >= deadline {
            return Err(InitError::Rootfs(format!(
                "no disk with cairn's partitions (esp, root-a, verity-a, root-b, verity-b, state) appeared within {} s ({}); is the disk attached and its driver in the initramfs (cairn.modules=)?",
                wait.as_secs(),
                if why.is_empty() {
                    "no disks at all".to_string()
                } else {
                    why.join("; ")
                }
            )));
        }
        sys.sleep(POLL);
    }
}

/// The fields of a dm-verity superblock stage 1 uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VeritySuperblock {
    pub data_block_size: u64,
    pub hash_block_size: u64,
    pub data_blocks: u64,
    pub algorithm: String,
    /// Lowercase hex.
    pub salt: String,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl VeritySuperblock {
    /// Parse and check the 512-byte superblock read from `what`.
    pub fn parse(b: &[u8], what: &str) -> Result<VeritySuperblock, InitError> {
        let bad = |why: String| {
            InitError::Rootfs(format!(
                "{what}: {why}; the slot's verity partition is not what cairn's image build writes (rewrite the slot)"
            ))
        };
        if b.len() < 512 {
            return Err(bad(format!("superblock is {} bytes, need 512", b.len())));
        }
        // struct verity_sb: signature[8] version:u32 hash_type:u32 uuid[16]
        // algorithm[32] data_block_size:u32 hash_block_size:u32
        // data_blocks:u64 salt_size:u16 pad[6] salt[256] pad[168]
        if &b[0..8] != b"verity\0\0" {
            return Err(bad("no dm-verity superblock (signature \"verity\")".into()));
        }
        let version = le32(b, 8);
        let hash_type = le32(b, 12);
        if version != 1 || hash_type != 1 {
            return Err(bad(format!(
                "superblock version {version}, hash type {hash_type}; expected 1 and 1"
            )));
        }
        let alg_end = b[32..64].iter().position(|c| *c == 0).unwrap_or(32);
        let algorithm = String::from_utf8_lossy(&b[32..32 + alg_end]).into_owned();
        let data_block_size = u64::from(le32(b, 64));
        let hash_block_size = u64::from(le32(b, 68));
        let mut n = [0u8; 8];
        n.copy_from_slice(&b[72..80]);
        let data_blocks = u64::from_le_bytes(n);
        let salt_size = u16::from_le_bytes([b[80], b[81]]) as usize;
        if algorithm != "sha256" {
            return Err(bad(format!(
                "hash algorithm {algorithm:?}, expected sha256"
            )));
        }
        if data_block_size != VERITY_BLOCK || hash_block_size != VERITY_BLOCK {
            return Err(bad(format!(
                "block sizes {data_block_size}/{hash_block_size}, expected 4096/4096"
            )));
        }
        if data_blocks == 0 {
            return Err(bad("superblock covers 0 data blocks".into()));
        }
        if salt_size > 256 {
            return Err(bad(format!("salt size {salt_size} > 256")));
        }
        Ok(VeritySuperblock {
            data_block_size,
            hash_block_size,
            data_blocks,
            algorithm,
            salt: hex::encode(&b[88..88 + salt_size]),
        })
    }
}

fn device(p: &PartitionInfo) -> Result<String, InitError> {
    p.device
        .as_ref()
        .map(|d| d.display().to_string())
        .ok_or_else(|| {
            InitError::Rootfs(format!(
                "partition {} ({}) has no block device",
                p.number, p.name
            ))
        })
}

/// Step 2: read the slot's verity superblock.
pub fn read_superblock(
    sys: &mut dyn Sys,
    layout: &DiskLayout,
    slot: Slot,
) -> Result<VeritySuperblock, InitError> {
    let part = layout.verity(slot);
    let dev = device(part)?;
    let raw = sys.read_at(&dev, 0, 512)?;
    VeritySuperblock::parse(&raw, &format!("{dev} ({})", part.name))
}

/// Step 3: the dm-verity device for `slot` (pure: the table is data).
pub fn verity_device(
    layout: &DiskLayout,
    boot: &DiskBoot,
    sb: &VeritySuperblock,
) -> Result<DmDevice, InitError> {
    let root = layout.root(boot.slot);
    let verity = layout.verity(boot.slot);
    let data_bytes = sb.data_blocks * sb.data_block_size;
    if data_bytes > root.size {
        return Err(InitError::Rootfs(format!(
            "the verity superblock on {} covers {data_bytes} bytes, but {} is only {} bytes: the slot's partitions do not belong together (rewrite slot {})",
            verity, root, root.size, boot.slot
        )));
    }
    let params = format!(
        "1 {data} {hash} {dbs} {hbs} {blocks} 1 {alg} {root_hash} {salt} 1 panic_on_corruption",
        data = device(root)?,
        hash = device(verity)?,
        dbs = sb.data_block_size,
        hbs = sb.hash_block_size,
        blocks = sb.data_blocks,
        alg = sb.algorithm,
        root_hash = boot.root_hash,
        salt = if sb.salt.is_empty() { "-" } else { &sb.salt },
    );
    Ok(DmDevice {
        name: DM_NAME.into(),
        uuid: format!("CAIRN-VERITY-{}", boot.slot),
        read_only: true,
        targets: vec![DmTarget {
            start: 0,
            length: data_bytes / 512,
            target_type: "verity".into(),
            params,
        }],
    })
}

/// Steps 2–4: dm-verity over the slot's root, mounted read-only at
/// [`SYSROOT`]. Returns the dm device.
pub fn mount_root(
    sys: &mut dyn Sys,
    layout: &DiskLayout,
    boot: &DiskBoot,
) -> Result<String, InitError> {
    let sb = read_superblock(sys, layout, boot.slot)?;
    let dev = sys.dm_create(&verity_device(layout, boot, &sb)?)?;
    sys.mkdir_all(SYSROOT)?;
    sys.mount(&Mount {
        source: dev.clone(),
        target: SYSROOT.into(),
        fstype: Some("erofs".into()),
        flags: MountFlags {
            read_only: true,
            ..Default::default()
        },
        data: None,
    })
    .map_err(|e| {
        InitError::Rootfs(format!(
            "mounting slot {} ({dev}, dm-verity over {}) as erofs failed: {e}; a wrong cairn.verity= or a damaged slot fails here",
            boot.slot,
            layout.root(boot.slot)
        ))
    })?;
    Ok(dev)
}

/// What the start of the state partition holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateContent {
    /// An ext2/3/4 superblock.
    Ext4,
    /// All zeros: never used.
    Blank,
    /// Something else: refuse to touch it.
    Other,
}

/// Classify the first bytes of the state partition (ext4's magic 0xEF53
/// sits at byte 1080: superblock at 1024, `s_magic` at 56).
pub fn classify_state(head: &[u8]) -> StateContent {
    if head.len() >= 1082 && head[1080] == 0x53 && head[1081] == 0xef {
        StateContent::Ext4
    } else if head.iter().all(|b| *b == 0) {
        StateContent::Blank
    } else {
        StateContent::Other
    }
}

/// Step 5: mount `state` at [`STATE_DIR`], creating ext4 on a blank
/// partition first. Returns true when it was formatted.
pub fn mount_state(
    sys: &mut dyn Sys,
    layout: &DiskLayout,
    log: &mut dyn FnMut(&str),
) -> Result<bool, InitError> {
    let part = &layout.state;
    let dev = device(part)?;
    let probe = BLANK_PROBE.min(part.size as usize);
    let head = sys.read_at(&dev, 0, probe)?;
    let formatted = match classify_state(&head) {
        StateContent::Ext4 => false,
        StateContent::Blank => {
            log(&format!(
                "{dev} (state) is blank: creating ext4 (first boot)"
            ));
            let (ld, mke2fs) = MKE2FS;
            sys.run(
                ld,
                &[
                    "--library-path",
                    ROOT_LIBS,
                    mke2fs,
                    "-q",
                    "-F",
                    "-t",
                    "ext4",
                    "-L",
                    STATE_LABEL,
                    &dev,
                ],
                &[("MKE2FS_CONFIG", "/sysroot/etc/mke2fs.conf")],
            )
            .map_err(|e| {
                InitError::Rootfs(format!("creating ext4 on {dev} (state) failed: {e}"))
            })?;
            true
        }
        StateContent::Other => {
            return Err(InitError::Rootfs(format!(
                "{dev} (state) holds data that is not an ext4 filesystem; refusing to format over it. To start this node with empty state, zero its first MiB (dd if=/dev/zero of={dev} bs=1M count=1) and reboot"
            )))
        }
    };
    sys.mkdir_all(STATE_DIR)?;
    sys.mount(&Mount {
        source: dev.clone(),
        target: STATE_DIR.into(),
        fstype: Some("ext4".into()),
        flags: MountFlags::default(),
        data: None,
    })
    .map_err(|e| {
        InitError::Rootfs(format!(
            "mounting {dev} (state) as ext4 failed: {e}; run e2fsck on it from a rescue system, or zero its first MiB to start over"
        ))
    })?;
    for d in STATE_SUBDIRS {
        sys.mkdir_all(&join(STATE_DIR, d))?;
    }
    Ok(formatted)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cmdline::DiskBoot;
    use crate::sys::{Call, RecordingSys};
    use cairn_slots::OsVersion;
    use std::path::PathBuf;

    pub const HASH: &str = "4f1b8e2c9a0d3f5e6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c";
    pub const SALT: &str = "5c4ab0029661ca518c8e0d66b2d16ca73ff144985c5c86a61a46ee5a69927165";

    /// A superblock as `veritysetup format` writes it (see the hexdump in
    /// image-build's tests: same field offsets).
    pub fn superblock(data_blocks: u64, alg: &str) -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        b[0..8].copy_from_slice(b"verity\0\0");
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        b[12..16].copy_from_slice(&1u32.to_le_bytes());
        b[32..32 + alg.len()].copy_from_slice(alg.as_bytes());
        b[64..68].copy_from_slice(&4096u32.to_le_bytes());
        b[68..72].copy_from_slice(&4096u32.to_le_bytes());
        b[72..80].copy_from_slice(&data_blocks.to_le_bytes());
        b[80..82].copy_from_slice(&32u16.to_le_bytes());
        b[88..120].copy_from_slice(&hex::decode(SALT).unwrap());
        b
    }

    /// cairn's six partitions on `vda` (MiB sizes: 128, 1024, 16, 1024, 16, 2048).
    pub fn vda() -> Vec<PartitionInfo> {
        let rows = [
            ("esp", 128u64),
            ("root-a", 1024),
            ("verity-a", 16),
            ("root-b", 1024),
            ("verity-b", 16),
            ("state", 2048),
        ];
        let mut start = 1u64 << 20;
        rows.iter()
            .enumerate()
            .map(|(i, (name, mib))| {
                let p = PartitionInfo {
                    number: i as u32 + 1,
                    name: name.to_string(),
                    start,
                    size: mib << 20,
                    device: Some(PathBuf::from(format!("/dev/vda{}", i + 1))),
                };
                start += mib << 20;
                p
            })
            .collect()
    }

    pub fn boot(slot: Slot) -> DiskBoot {
        DiskBoot {
            slot,
            version: OsVersion::new("1.2.0").unwrap(),
            root_hash: HASH.into(),
        }
    }

    fn sys_with_disk() -> RecordingSys {
        let mut s = RecordingSys::default();
        s.disks.insert("vda".into(), vda());
        s
    }

    #[test]
    fn waits_for_a_late_disk() {
        let mut s = sys_with_disk();
        s.disks_visible_at = 3.0;
        let (disk, layout) = find_layout(&mut s, DISK_WAIT).unwrap();
        assert_eq!(disk, "vda");
        assert_eq!(
            layout.root(Slot::B).device,
            Some(PathBuf::from("/dev/vda4"))
        );
        assert!(
            s.clock >= 3.0 && s.clock < 3.5,
            "polled until it came: {}",
            s.clock
        );
    }

    #[test]
    fn no_disk_times_out_naming_what_was_seen() {
        let mut s = RecordingSys::default();
        let mut parts = vda();
        parts.retain(|p| p.name != "state");
        s.disks.insert("vda".into(), parts);
        let e = find_layout(&mut s, Duration::from_secs(5))
            .unwrap_err()
            .to_string();
        assert!(e.contains("within 5 s"), "{e}");
        assert!(e.contains("no partition named \"state\""), "{e}");
        assert!(s.clock >= 5.0);

        let mut empty = RecordingSys::default();
        let e = find_layout(&mut empty, Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no disks at all"), "{e}");
    }

    #[test]
    fn two_cairn_disks_are_refused() {
        let mut s = sys_with_disk();
        s.disks.insert("vdb".into(), vda());
        let e = find_layout(&mut s, DISK_WAIT).unwrap_err().to_string();
        assert!(e.contains("several disks") && e.contains("vda, vdb"), "{e}");
    }

    #[test]
    fn superblock_is_parsed_and_checked() {
        let sb = VeritySuperblock::parse(&superblock(104_809, "sha256"), "/dev/vda3").unwrap();
        assert_eq!(sb.data_blocks, 104_809);
        assert_eq!(sb.salt, SALT);
        let e = VeritySuperblock::parse(&superblock(1, "sha1"), "/dev/vda3")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/dev/vda3") && e.contains("sha1"), "{e}");
        let e = VeritySuperblock::parse(&[0u8; 512], "/dev/vda5 (verity-b)")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("verity-b") && e.contains("no dm-verity superblock"),
            "{e}"
        );
        let mut wrong_block = superblock(1, "sha256");
        wrong_block[64..68].copy_from_slice(&1024u32.to_le_bytes());
        assert!(VeritySuperblock::parse(&wrong_block, "x").is_err());
    }

    #[test]
    fn verity_table_for_slot_b() {
        let layout = DiskLayout::find(&Listed {
            disk: "vda",
            parts: vda(),
        })
        .unwrap();
        let sb = VeritySuperblock::parse(&superblock(104_809, "sha256"), "x").unwrap();
        let d = verity_device(&layout, &boot(Slot::B), &sb).unwrap();
        assert_eq!(d.name, "root");
        assert_eq!(d.uuid, "CAIRN-VERITY-b");
        assert!(d.read_only);
        assert_eq!(d.targets.len(), 1);
        let t = &d.targets[0];
        assert_eq!((t.start, t.length), (0, 104_809 * 8));
        assert_eq!(t.target_type, "verity");
        assert_eq!(
            t.params,
            format!("1 /dev/vda4 /dev/vda5 4096 4096 104809 1 sha256 {HASH} {SALT} 1 panic_on_corruption")
        );

        // A superblock claiming more data than the root partition holds.
        let huge = VeritySuperblock::parse(&superblock(1 << 30, "sha256"), "x").unwrap();
        let e = verity_device(&layout, &boot(Slot::A), &huge)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/dev/vda2 (root-a)") && e.contains("rewrite slot a"),
            "{e}"
        );
    }

    #[test]
    fn state_content_is_classified() {
        let mut ext4 = vec![0u8; 4096];
        ext4[1080] = 0x53;
        ext4[1081] = 0xef;
        assert_eq!(classify_state(&ext4), StateContent::Ext4);
        assert_eq!(classify_state(&[0u8; 4096]), StateContent::Blank);
        let mut other = vec![0u8; 4096];
        other[4000] = 1;
        assert_eq!(classify_state(&other), StateContent::Other);
    }

    #[test]
    fn existing_ext4_state_is_mounted_without_mkfs_and_other_data_is_refused() {
        let layout = DiskLayout::find(&Listed {
            disk: "vda",
            parts: vda(),
        })
        .unwrap();
        let mut s = RecordingSys::default();
        let mut ext4 = vec![0u8; 2048];
        ext4[1080] = 0x53;
        ext4[1081] = 0xef;
        s.devices.insert("/dev/vda6".into(), ext4);
        assert!(!mount_state(&mut s, &layout, &mut |_| {}).unwrap());
        assert!(!s.calls.iter().any(|c| matches!(c, Call::Run(..))));
        assert!(s.calls.iter().any(|c| matches!(c, Call::Mount(m) if m.source == "/dev/vda6" && m.target == STATE_DIR && m.fstype.as_deref() == Some("ext4"))));

        let mut s = RecordingSys::default();
        s.devices.insert("/dev/vda6".into(), b"XFSB".to_vec());
        let e = mount_state(&mut s, &layout, &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/dev/vda6 (state)") && e.contains("refusing to format"),
            "{e}"
        );
        assert!(s.calls.is_empty(), "nothing touched: {:?}", s.calls);

        let mut s = RecordingSys::default();
        s.devices.insert("/dev/vda6".into(), vec![]);
        s.run_fails = Some("mke2fs: Device size reported to be zero".into());
        let e = mount_state(&mut s, &layout, &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("creating ext4 on /dev/vda6") && e.contains("Device size"),
            "{e}"
        );
        assert!(!s.calls.iter().any(|c| matches!(c, Call::Mount(_))));
    }
}
