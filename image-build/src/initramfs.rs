//! The initramfs: `cairn-init` as `/init`, the kernel modules stage 1 loads
//! (with their dependencies), the image manifest and the trust anchors.
//! The rootfs image travels as a second, uncompressed initrd ([`rootfs_initrd`]);
//! Linux unpacks stacked initrds into one initramfs.

use std::io::Write;
use std::path::{Path, PathBuf};

use cairn_init::manifest::{Manifest, RootfsRef, MANIFEST_PATH};
use cairn_init::modules::ModuleIndex;

use crate::cpio::{parent_dirs, write_archive, Entry};
use crate::rootfs::Rootfs;
use crate::{io, ImageError, Result};

/// Modules stage 1 needs in PXE mode (dependencies are added automatically).
pub const STAGE1_MODULES: &[&str] = &["loop", "erofs", "overlay"];

/// Modules stage 1 loads on top of [`STAGE1_MODULES`] in disk mode: the
/// disk drivers (virtio, SCSI, NVMe, AHCI; `virtio_pci` explicitly because
/// nothing depends on it), device-mapper with dm-verity, and ext4 for STATE.
/// On the Debian 6.1 kernel all of these are modules (none is in
/// `modules.builtin`); sha256 is built in.
pub const DISK_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "sd_mod",
    "nvme",
    "ahci",
    "dm_mod",
    "dm_verity",
    "ext4",
];

/// Where the rootfs image sits inside the initramfs.
pub const ROOTFS_PATH: &str = "/cairn/rootfs.erofs";

pub struct InitramfsInputs<'a> {
    pub init_binary: &'a Path,
    pub rootfs: &'a Rootfs,
    pub version: &'a str,
    /// Files placed under `/cairn/trust/` (e.g. `allowed_signers`).
    pub trust: Vec<(String, Vec<u8>)>,
    pub out: &'a Path,
}

/// The manifest stage 1 checks the rootfs against.
pub fn manifest(rootfs: &Rootfs, version: &str) -> Manifest {
    Manifest {
        version: version.to_string(),
        kernel: rootfs.kernel_release.clone(),
        rootfs: RootfsRef {
            path: ROOTFS_PATH.to_string(),
            sha256: rootfs.sha256.clone(),
            size: rootfs.size,
            fstype: "erofs".into(),
        },
        modules: STAGE1_MODULES.iter().map(|s| s.to_string()).collect(),
        disk_modules: DISK_MODULES.iter().map(|s| s.to_string()).collect(),
    }
}

/// Build `initramfs.cpio.gz`; returns its path.
pub fn build(inp: &InitramfsInputs) -> Result<PathBuf> {
    let kver = &inp.rootfs.kernel_release;
    let moddir = inp.rootfs.staging.join("usr/lib/modules").join(kver);
    let read = |p: PathBuf| std::fs::read(&p).map_err(io(&p));
    let dep = read(moddir.join("modules.dep"))?;
    let builtin = read(moddir.join("modules.builtin"))?;
    let softdep = read(moddir.join("modules.softdep"))?;
    let alias = read(moddir.join("modules.alias"))?;
    let index = ModuleIndex::parse(
        &String::from_utf8_lossy(&dep),
        &String::from_utf8_lossy(&builtin),
    )
    .map_err(|e| ImageError::Invalid(format!("{}: {e}", moddir.display())))?
    .with_soft_deps(
        &String::from_utf8_lossy(&softdep),
        &String::from_utf8_lossy(&alias),
    );
    let wanted: Vec<String> = STAGE1_MODULES
        .iter()
        .chain(DISK_MODULES)
        .map(|s| s.to_string())
        .collect();
    let files = index
        .closure(&wanted)
        .map_err(|e| ImageError::Invalid(format!("stage-1 modules for {kver}: {e}")))?;

    let mut members: Vec<(String, Entry)> = Vec::new();
    let mut add = |e: Entry| members.push((e.name().trim_start_matches('/').to_string(), e));
    add(Entry::File {
        name: "init".into(),
        mode: 0o755,
        data: read(inp.init_binary.to_path_buf())?,
    });
    let base = format!("lib/modules/{kver}");
    add(Entry::File {
        name: format!("{base}/modules.dep"),
        mode: 0o644,
        data: dep,
    });
    add(Entry::File {
        name: format!("{base}/modules.builtin"),
        mode: 0o644,
        data: builtin,
    });
    add(Entry::File {
        name: format!("{base}/modules.softdep"),
        mode: 0o644,
        data: softdep,
    });
    // only the aliases of modules that are here
    let present: std::collections::BTreeSet<String> = files
        .iter()
        .map(|f| {
            let file = f.rsplit('/').next().unwrap_or(f);
            cairn_init::modules::normalize(file.trim_end_matches(".ko"))
        })
        .collect();
    add(Entry::File {
        name: format!("{base}/modules.alias"),
        mode: 0o644,
        data: index.aliases_for(&present).into_bytes(),
    });
    for f in &files {
        add(Entry::File {
            name: format!("{base}/{f}"),
            mode: 0o644,
            data: read(moddir.join(f))?,
        });
    }
    let m = manifest(inp.rootfs, inp.version);
    add(Entry::File {
        name: MANIFEST_PATH.into(),
        mode: 0o644,
        data: serde_json::to_vec_pretty(&m).expect("json"),
    });
    for (name, data) in &inp.trust {
        add(Entry::File {
            name: format!("cairn/trust/{name}"),
            mode: 0o644,
            data: data.clone(),
        });
    }
    for d in ["dev", "proc", "sys", "run", "sysroot", "state"] {
        add(Entry::Dir {
            name: d.into(),
            mode: 0o755,
        });
    }
    add(Entry::CharDev {
        name: "dev/console".into(),
        mode: 0o600,
        major: 5,
        minor: 1,
    });
    add(Entry::CharDev {
        name: "dev/null".into(),
        mode: 0o666,
        major: 1,
        minor: 3,
    });

    let names: Vec<String> = members.iter().map(|(n, _)| n.clone()).collect();
    let mut entries: Vec<Entry> = parent_dirs(names.iter().map(String::as_str))
        .into_iter()
        .filter(|d| !names.contains(d))
        .map(|name| Entry::Dir { name, mode: 0o755 })
        .collect();
    // directories before their contents
    members.sort_by(|a, b| a.0.cmp(&b.0));
    entries.extend(members.into_iter().map(|(_, e)| e));
    entries.sort_by_key(|e| matches!(e, Entry::Dir { .. }).then_some(0).unwrap_or(1));

    let out = inp.out.join("initramfs.cpio.gz");
    let f = std::fs::File::create(&out).map_err(io(&out))?;
    let gz = flate2::write::GzEncoder::new(f, flate2::Compression::best());
    let gz = write_archive(gz, &entries)?;
    gz.finish().map_err(io(&out))?.flush().map_err(io(&out))?;
    Ok(out)
}

/// The rootfs image wrapped as an initrd (`/cairn/rootfs.erofs`), uncompressed:
/// erofs is compressed already, and stage 1 checks its hash.
pub fn rootfs_initrd(rootfs: &Rootfs, out_dir: &Path) -> Result<PathBuf> {
    let out = out_dir.join("rootfs.cpio");
    let f = std::io::BufWriter::new(std::fs::File::create(&out).map_err(io(&out))?);
    let entries = vec![
        Entry::Dir {
            name: "cairn".into(),
            mode: 0o755,
        },
        Entry::DiskFile {
            name: ROOTFS_PATH.into(),
            mode: 0o444,
            path: rootfs.image.clone(),
        },
    ];
    let mut w = write_archive(f, &entries)?;
    w.flush().map_err(io(&out))?;
    Ok(out)
}
