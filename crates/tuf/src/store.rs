//! The local metadata directory: trusted metadata persisted byte-for-byte
//! as received, under unversioned names (`root.json`, `timestamp.json`,
//! `snapshot.json`, `targets.json`, `<quoted role>.json`).
//!
//! Every write goes to a hidden temporary file in the same directory and is
//! renamed over the old file, so readers never see a partial file. Root,
//! timestamp and snapshot (the trust anchor and the rollback-protection
//! state) are fsynced before the rename: after a crash each is the old or
//! the new complete file. (The directory is not fsynced after each rename:
//! the next fsync's journal commit carries it, and losing the last rename to
//! a crash only means the previous trusted version is used and the update
//! is fetched again. Deletions for fast-forward recovery are fsynced.)
//! Targets metadata is not fsynced: it is a verified cache (rollback
//! protection for it lives in snapshot), and a copy lost or truncated by a
//! crash fails verification and is fetched again.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use crate::error::{Error, Result};
use crate::transport::quote;

/// The client's metadata directory.
#[derive(Debug, Clone)]
pub(crate) struct MetadataDir {
    dir: PathBuf,
}

impl MetadataDir {
    pub(crate) fn new(dir: PathBuf) -> Self {
        MetadataDir { dir }
    }

    /// Local file name of `role`'s metadata.
    pub(crate) fn file_name(role: &str) -> String {
        format!("{}.json", quote(role))
    }

    pub(crate) fn path(&self, role: &str) -> PathBuf {
        self.dir.join(Self::file_name(role))
    }

    /// The stored bytes of `role`, if present and readable.
    pub(crate) fn load(&self, role: &str) -> Option<Vec<u8>> {
        fs::read(self.path(role)).ok()
    }

    /// Write `bytes` for `role` to a temporary file, fsynced if `durable`;
    /// nothing is visible under `role`'s name until [`MetadataDir::commit`].
    pub(crate) fn stage(&self, role: &str, bytes: &[u8], durable: bool) -> Result<TempFile> {
        let mut tmp = TempFile::beside(&self.path(role))?;
        let path = tmp.path().to_path_buf();
        tmp.file()
            .write_all(bytes)
            .map_err(|e| Error::io(&path, e))?;
        if durable {
            tmp.sync()?;
        }
        Ok(tmp)
    }

    /// Rename a staged file over `role`'s file. The directory itself is
    /// fsynced once per update by [`MetadataDir::sync`]: until then a crash
    /// leaves either the old or the new (complete) file.
    pub(crate) fn commit(&self, staged: TempFile, role: &str) -> Result<()> {
        staged.rename_into(&self.path(role))
    }

    /// Atomically replace `role`'s file with `bytes`.
    pub(crate) fn persist(&self, role: &str, bytes: &[u8]) -> Result<()> {
        let staged = self.stage(role, bytes, true)?;
        self.commit(staged, role)
    }

    /// Atomically replace `role`'s file with `bytes`, without fsync (for
    /// targets metadata, a verified cache).
    pub(crate) fn persist_cache(&self, role: &str, bytes: &[u8]) -> Result<()> {
        let staged = self.stage(role, bytes, false)?;
        self.commit(staged, role)
    }

    /// Remove `role`'s file (fast-forward recovery).
    pub(crate) fn remove(&self, role: &str) -> Result<()> {
        let path = self.path(role);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    /// fsync the directory (makes renames and removals durable).
    pub(crate) fn sync(&self) -> Result<()> {
        sync_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))
    }
}

/// A temporary file beside `dest` (hidden, unique per process), removed on
/// drop unless [`TempFile::commit`] renamed it into place.
pub(crate) struct TempFile {
    path: PathBuf,
    file: Option<File>,
}

impl TempFile {
    pub(crate) fn beside(dest: &Path) -> Result<TempFile> {
        let dir = parent_dir(dest);
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut attempt = 0u32;
        loop {
            let path = dir.join(format!(".{name}.{}.{attempt}.tmp", std::process::id()));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    return Ok(TempFile {
                        path,
                        file: Some(file),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 1000 => {
                    attempt += 1
                }
                Err(e) => return Err(Error::io(path, e)),
            }
        }
    }

    pub(crate) fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("temp file is open until commit")
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// fsync the file's data.
    pub(crate) fn sync(&mut self) -> Result<()> {
        let path = self.path.clone();
        self.file().sync_all().map_err(|e| Error::io(path, e))
    }

    /// Rename over `dest` (the caller synced the data).
    pub(crate) fn rename_into(mut self, dest: &Path) -> Result<()> {
        drop(self.file.take());
        fs::rename(&self.path, dest).map_err(|e| Error::io(dest, e))?;
        self.path = PathBuf::new();
        Ok(())
    }

    /// fsync, rename over `dest`, fsync the directory.
    pub(crate) fn commit(mut self, dest: &Path) -> Result<()> {
        self.sync()?;
        self.rename_into(dest)?;
        let dir = parent_dir(dest);
        sync_dir(&dir).map_err(|e| Error::io(&dir, e))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Write `bytes` to `dest` atomically (temp file, fsync, rename, fsync dir).
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = TempFile::beside(dest)?;
    let path = tmp.path().to_path_buf();
    tmp.file()
        .write_all(bytes)
        .map_err(|e| Error::io(path, e))?;
    tmp.commit(dest)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Durable writes on a thread of their own. Each batch is written to
/// temporary files, then fsynced, then renamed in order (the first fsync's
/// journal commit carries the others' data). After a failed write later
/// batches are dropped; [`BackgroundWriter::finish`] reports the failure.
pub(crate) struct BackgroundWriter {
    tx: mpsc::Sender<Vec<(String, Vec<u8>)>>,
    handle: JoinHandle<Result<()>>,
}

impl BackgroundWriter {
    pub(crate) fn start(dir: MetadataDir) -> io::Result<BackgroundWriter> {
        let (tx, rx) = mpsc::channel::<Vec<(String, Vec<u8>)>>();
        let handle = std::thread::Builder::new()
            .name("tuf-persist".into())
            .spawn(move || {
                for batch in rx {
                    let mut staged = Vec::with_capacity(batch.len());
                    for (role, bytes) in &batch {
                        staged.push((role, dir.stage(role, bytes, false)?));
                    }
                    for (_, tmp) in &mut staged {
                        tmp.sync()?;
                    }
                    for (role, tmp) in staged {
                        dir.commit(tmp, role)?;
                    }
                }
                Ok(())
            })?;
        Ok(BackgroundWriter { tx, handle })
    }

    /// Queue a batch of `(role, bytes)` files, written in order.
    pub(crate) fn write(&self, batch: Vec<(String, Vec<u8>)>) {
        // A closed channel means the thread already failed: `finish` says so.
        let _ = self.tx.send(batch);
    }

    /// Wait until every queued file is on disk.
    pub(crate) fn finish(self) -> Result<()> {
        drop(self.tx);
        self.handle
            .join()
            .unwrap_or(Err(Error::State("metadata writer thread panicked")))
    }
}
