//! Network boot: the iPXE script and the per-node configuration initrd.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::cpio::{parent_dirs, write_archive, Entry};
use crate::{io, Result};

/// What the boot script loads and passes on.
pub struct BootScript<'a> {
    /// Base URL the artifacts are served from (HTTP; TFTP is too slow for the rootfs).
    pub base_url: &'a str,
    pub version: &'a str,
    /// File name of the node's configuration initrd under `base_url`.
    pub config_initrd: &'a str,
    /// File name of the TUF metadata initrd ([`tuf_initrd`]) under
    /// `base_url`: required when the initramfs trusts a TUF root.
    pub tuf_initrd: Option<&'a str>,
    /// Extra kernel arguments (e.g. `cairn.hostname=node1`).
    pub extra_args: &'a [String],
}

/// Kernel arguments every cairn boot gets.
pub const BASE_ARGS: &[&str] = &[
    "console=ttyS0,115200",
    "mitigations=off",
    "panic=10",
    "systemd.show_status=1",
];

/// The iPXE script text.
pub fn ipxe_script(s: &BootScript) -> String {
    let base = s.base_url.trim_end_matches('/');
    let mut args: Vec<String> = BASE_ARGS.iter().map(|a| a.to_string()).collect();
    args.extend(s.extra_args.iter().cloned());
    let tuf = s
        .tuf_initrd
        .map(|t| format!("initrd {base}/{t}\n"))
        .unwrap_or_default();
    format!(
        "#!ipxe\necho cairn {version}: loading kernel, initramfs, rootfs, TUF metadata and configuration\nkernel {base}/vmlinuz {args}\ninitrd {base}/initramfs.cpio.gz\ninitrd {base}/rootfs.cpio\n{tuf}initrd {base}/{config}\nboot\n",
        version = s.version,
        args = args.join(" "),
        config = s.config_initrd
    )
}

/// Pack a published TUF repository's metadata directory (`DIR/metadata`
/// of `cairn-image tuf publish`: `N.root.json`, `timestamp.json`, the
/// versioned snapshot and targets) as an initrd with members under
/// `cairn/tuf/`, where stage 1 verifies the PXE rootfs against it. Only
/// `*.json` files directly in the directory are taken; a directory without
/// `timestamp.json` is refused.
pub fn tuf_initrd(metadata: &Path, out: &Path) -> Result<PathBuf> {
    if !metadata.join("timestamp.json").is_file() {
        return Err(crate::ImageError::Invalid(format!(
            "{} has no timestamp.json: pass the metadata directory of a published TUF repository (`cairn-image tuf publish --out WWW` writes WWW/metadata)",
            metadata.display()
        )));
    }
    let mut names = Vec::new();
    for e in std::fs::read_dir(metadata).map_err(io(metadata))? {
        let e = e.map_err(io(metadata))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".json") && e.file_type().map_err(io(metadata))?.is_file() {
            names.push(name);
        }
    }
    names.sort();
    let mut entries = vec![
        Entry::Dir {
            name: "cairn".into(),
            mode: 0o755,
        },
        Entry::Dir {
            name: "cairn/tuf".into(),
            mode: 0o755,
        },
    ];
    for name in names {
        let path = metadata.join(&name);
        entries.push(Entry::File {
            name: format!("cairn/tuf/{name}"),
            mode: 0o644,
            data: std::fs::read(&path).map_err(io(&path))?,
        });
    }
    let f = std::fs::File::create(out).map_err(io(out))?;
    let mut w = write_archive(std::io::BufWriter::new(f), &entries)?;
    w.flush().map_err(io(out))?;
    Ok(out.to_path_buf())
}

/// Pack a directory holding an `etc/` tree as the configuration initrd
/// (members under `cairn/config/`). Modes are kept; owners are root.
pub fn config_initrd(tree: &Path, out: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let mut files = Vec::new();
    for e in walkdir::WalkDir::new(tree).sort_by_file_name() {
        let e = e.map_err(|e| crate::ImageError::Io {
            path: tree.to_path_buf(),
            source: e.into(),
        })?;
        if e.file_type().is_file() {
            let rel = e
                .path()
                .strip_prefix(tree)
                .expect("under tree")
                .display()
                .to_string();
            let mode = e.metadata().map_err(|er| crate::ImageError::Io {
                path: e.path().to_path_buf(),
                source: er.into(),
            })?;
            files.push((
                format!("cairn/config/{rel}"),
                mode.permissions().mode() & 0o7777,
                std::fs::read(e.path()).map_err(io(e.path()))?,
            ));
        }
    }
    let mut entries: Vec<Entry> = parent_dirs(files.iter().map(|(n, _, _)| n.as_str()))
        .into_iter()
        .map(|name| Entry::Dir { name, mode: 0o755 })
        .collect();
    entries.extend(
        files
            .into_iter()
            .map(|(name, mode, data)| Entry::File { name, mode, data }),
    );
    let f = std::fs::File::create(out).map_err(io(out))?;
    let mut w = write_archive(std::io::BufWriter::new(f), &entries)?;
    w.flush().map_err(io(out))?;
    Ok(out.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_loads_three_initrds_over_http_and_passes_args() {
        let s = ipxe_script(&BootScript {
            base_url: "http://10.0.2.2:8080/",
            version: "0.1.0",
            config_initrd: "config-node1.cpio",
            tuf_initrd: Some("tuf.cpio"),
            extra_args: &["cairn.hostname=node1".into()],
        });
        assert!(s.starts_with("#!ipxe\n"));
        assert!(s.contains("kernel http://10.0.2.2:8080/vmlinuz console=ttyS0,115200"));
        assert!(s.contains("cairn.hostname=node1"));
        let initrds: Vec<&str> = s.lines().filter(|l| l.starts_with("initrd ")).collect();
        assert_eq!(
            initrds,
            [
                "initrd http://10.0.2.2:8080/initramfs.cpio.gz",
                "initrd http://10.0.2.2:8080/rootfs.cpio",
                "initrd http://10.0.2.2:8080/tuf.cpio",
                "initrd http://10.0.2.2:8080/config-node1.cpio"
            ]
        );
        assert!(s.trim_end().ends_with("boot"));
    }

    #[test]
    fn tuf_initrd_takes_the_metadata_files_under_cairn_tuf() {
        let d = tempfile::tempdir().unwrap();
        let md = d.path().join("metadata");
        assert!(tuf_initrd(&md, &d.path().join("x.cpio"))
            .unwrap_err()
            .to_string()
            .contains("tuf publish"));
        std::fs::create_dir_all(md.join("sub")).unwrap();
        for f in ["1.root.json", "timestamp.json", "3.snapshot.json", "README"] {
            std::fs::write(md.join(f), f.as_bytes()).unwrap();
        }
        let out = tuf_initrd(&md, &d.path().join("tuf.cpio")).unwrap();
        let bytes = std::fs::read(out).unwrap();
        let mut r = cpio::NewcReader::new(&bytes[..]).unwrap();
        let mut seen = Vec::new();
        while !r.entry().is_trailer() {
            seen.push(r.entry().name().to_string());
            r = cpio::NewcReader::new(r.finish().unwrap()).unwrap();
        }
        assert_eq!(
            seen,
            [
                "cairn",
                "cairn/tuf",
                "cairn/tuf/1.root.json",
                "cairn/tuf/3.snapshot.json",
                "cairn/tuf/timestamp.json"
            ]
        );
    }

    #[test]
    fn config_initrd_keeps_modes_under_cairn_config() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("tree");
        std::fs::create_dir_all(tree.join("etc/cairn")).unwrap();
        std::fs::write(tree.join("etc/cairn/secret"), b"s").unwrap();
        std::fs::set_permissions(
            tree.join("etc/cairn/secret"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let out = config_initrd(&tree, &d.path().join("c.cpio")).unwrap();
        let bytes = std::fs::read(out).unwrap();
        let mut r = cpio::NewcReader::new(&bytes[..]).unwrap();
        let mut seen = Vec::new();
        while !r.entry().is_trailer() {
            seen.push((r.entry().name().to_string(), r.entry().mode()));
            r = cpio::NewcReader::new(r.finish().unwrap()).unwrap();
        }
        assert!(
            seen.contains(&("cairn/config/etc/cairn/secret".into(), 0o100600)),
            "{seen:?}"
        );
        assert_eq!(seen[0].0, "cairn");
    }
}
