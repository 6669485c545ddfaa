//! newc cpio archives (the initramfs format), built from an in-memory list
//! of entries, with large files streamed from disk.

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;

use crate::{io, Result};

/// One archive member.
pub enum Entry {
    Dir {
        name: String,
        mode: u32,
    },
    File {
        name: String,
        mode: u32,
        data: Vec<u8>,
    },
    /// A file streamed from disk (the rootfs image).
    DiskFile {
        name: String,
        mode: u32,
        path: PathBuf,
    },
    Symlink {
        name: String,
        target: String,
    },
    CharDev {
        name: String,
        mode: u32,
        major: u32,
        minor: u32,
    },
}

impl Entry {
    pub fn name(&self) -> &str {
        match self {
            Entry::Dir { name, .. }
            | Entry::File { name, .. }
            | Entry::DiskFile { name, .. }
            | Entry::Symlink { name, .. }
            | Entry::CharDev { name, .. } => name,
        }
    }
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// Write `entries` as a newc archive (names without a leading `/`), then the trailer.
/// All members are owned by root with mtime 0, so equal inputs give equal bytes.
pub fn write_archive<W: Write>(mut out: W, entries: &[Entry]) -> Result<W> {
    let werr = |e: io::Error| crate::ImageError::Io {
        path: PathBuf::from("<cpio archive>"),
        source: e,
    };
    for (i, e) in entries.iter().enumerate() {
        let name = e.name().trim_start_matches('/');
        let b = cpio::newc::Builder::new(name)
            .ino(i as u32 + 1)
            .uid(0)
            .gid(0)
            .mtime(0);
        match e {
            Entry::Dir { mode, .. } => {
                let w = b.mode(S_IFDIR | mode).nlink(2).write(&mut out, 0);
                w.finish().map_err(werr)?;
            }
            Entry::File { mode, data, .. } => {
                let mut w = b
                    .mode(S_IFREG | mode)
                    .nlink(1)
                    .write(&mut out, len32(data.len() as u64, name)?);
                w.write_all(data).map_err(werr)?;
                w.finish().map_err(werr)?;
            }
            Entry::DiskFile { mode, path, .. } => {
                let mut f = File::open(path).map_err(io(path))?;
                let len = f.metadata().map_err(io(path))?.len();
                let mut w = b
                    .mode(S_IFREG | mode)
                    .nlink(1)
                    .write(&mut out, len32(len, name)?);
                io::copy(&mut f, &mut w).map_err(io(path))?;
                w.finish().map_err(werr)?;
            }
            Entry::Symlink { target, .. } => {
                let mut w = b
                    .mode(S_IFLNK | 0o777)
                    .nlink(1)
                    .write(&mut out, target.len() as u32);
                w.write_all(target.as_bytes()).map_err(werr)?;
                w.finish().map_err(werr)?;
            }
            Entry::CharDev {
                mode, major, minor, ..
            } => {
                let w = b
                    .mode(S_IFCHR | mode)
                    .nlink(1)
                    .rdev_major(*major)
                    .rdev_minor(*minor)
                    .write(&mut out, 0);
                w.finish().map_err(werr)?;
            }
        }
    }
    cpio::newc::trailer(out).map_err(werr)
}

fn len32(len: u64, name: &str) -> Result<u32> {
    u32::try_from(len).map_err(|_| {
        crate::ImageError::Invalid(format!(
            "{name} is {len} bytes: newc cpio members must be under 4 GiB"
        ))
    })
}

/// Parent directories for every path, each once, parents first.
pub fn parent_dirs<'a>(paths: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut dirs = std::collections::BTreeSet::new();
    for p in paths {
        let p = p.trim_start_matches('/');
        let mut acc = String::new();
        let parts: Vec<&str> = p.split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(part);
            dirs.insert(acc.clone());
        }
    }
    dirs.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_round_trips_through_a_reader() {
        let entries = vec![
            Entry::Dir {
                name: "cairn".into(),
                mode: 0o755,
            },
            Entry::File {
                name: "cairn/image.json".into(),
                mode: 0o644,
                data: b"{}".to_vec(),
            },
            Entry::Symlink {
                name: "bin".into(),
                target: "usr/bin".into(),
            },
            Entry::CharDev {
                name: "dev/console".into(),
                mode: 0o600,
                major: 5,
                minor: 1,
            },
        ];
        let bytes = write_archive(Vec::new(), &entries).unwrap();
        let mut r = cpio::NewcReader::new(&bytes[..]).unwrap();
        let mut names = Vec::new();
        loop {
            if r.entry().is_trailer() {
                break;
            }
            names.push((
                r.entry().name().to_string(),
                r.entry().mode(),
                r.entry().file_size(),
            ));
            r = cpio::NewcReader::new(r.finish().unwrap()).unwrap();
        }
        assert_eq!(names[0], ("cairn".into(), 0o040755, 0));
        assert_eq!(names[1], ("cairn/image.json".into(), 0o100644, 2));
        assert_eq!(names[2].0, "bin");
        assert_eq!(names[3].1, 0o020600);
    }

    #[test]
    fn equal_inputs_give_equal_bytes() {
        let e = || {
            vec![Entry::File {
                name: "a".into(),
                mode: 0o644,
                data: b"x".to_vec(),
            }]
        };
        assert_eq!(
            write_archive(Vec::new(), &e()).unwrap(),
            write_archive(Vec::new(), &e()).unwrap()
        );
    }

    #[test]
    fn parents_are_listed_once_in_order() {
        assert_eq!(
            parent_dirs([
                "lib/modules/6.1/kernel/a.ko",
                "lib/modules/6.1/modules.dep",
                "init"
            ]),
            vec![
                "lib",
                "lib/modules",
                "lib/modules/6.1",
                "lib/modules/6.1/kernel"
            ]
        );
    }
}
