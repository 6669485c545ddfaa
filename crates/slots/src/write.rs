//! Streaming a slot image into a partition, verified twice.
//!
//! [`write_image`] copies a target of known length and SHA-256 from any
//! [`Read`] into a partition in **one pass**: a reader thread fills large
//! buffers, a hasher thread hashes them, and the calling thread writes them,
//! so reading, hashing and writing overlap. The source may not be longer or
//! shorter than declared, and must hash to the declared digest. Then the
//! partition is fsynced, its page cache dropped (`posix_fadvise
//! DONTNEED`), and the written range is read back and hashed again
//! ([`verify_written`]), which catches a device that did not store what it
//! was given.
//!
//! [`invalidate`] zeroes the first MiB of a slot's root and verity
//! partitions before anything else is written to them (erofs's superblock
//! is at 1024 bytes, the verity superblock at 0), and [`write_image`] holds
//! that first MiB of the image back in memory and writes it **last**: only
//! after the rest is on disk (fsynced) and the source's length and hash
//! checked out. A power cut or a bad download at any point before that
//! leaves the head zeroed, so a half-written slot can never be mounted; and
//! since its boot entry is removed before any of this (see
//! [`crate::plan`]) it is never chosen either.
//!
//! The partition is reached through [`BlockTarget`], implemented by
//! [`PartitionFile`] (a block device or a regular file) and by test doubles.
//! [`PartitionFile`] moves aligned whole blocks with `O_DIRECT` when the
//! device allows it: a 400 MB image then does not pass through (and evict)
//! the running node's page cache, the writer spends no CPU copying into it,
//! which leaves the CPU to the hasher, and the read-back reads the device
//! rather than a cache. Unaligned pieces (the held-back head, an image's
//! last partial block) go through the page cache and the same fsync.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::num::NonZeroU64;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::{Duration, Instant};

use sha2::Digest as _;

use crate::slot::{read_one_more, Expected, Sha256};

/// Size of one pipeline buffer.
pub const CHUNK: usize = 4 << 20;
/// Buffers in flight between reader, hasher and writer.
const BUFFERS: usize = 4;
/// How much of each slot partition [`invalidate`] zeroes.
pub const INVALIDATE_LEN: u64 = 1 << 20;

/// A partition to write a slot image into.
pub trait BlockTarget: Read + Write + Seek + Send {
    /// The partition, for messages (`/dev/vda4 (root-b)`).
    fn describe(&self) -> String;
    /// Its size in bytes, `None` when it can grow (a new regular file).
    fn capacity(&mut self) -> io::Result<Option<u64>>;
    /// Make everything written so far durable.
    fn sync(&mut self) -> io::Result<()>;
    /// Drop cached pages of `[0, len)` so the next read hits the device.
    fn drop_cache(&mut self, _len: u64) -> io::Result<()> {
        Ok(())
    }
}

/// Alignment of `O_DIRECT` transfers: buffer address, file offset and
/// length. 4 KiB covers every logical block size in use.
pub const DIRECT_ALIGN: usize = 4096;

/// A partition's block device, or a regular file standing in for one.
#[derive(Debug)]
pub struct PartitionFile {
    path: PathBuf,
    label: String,
    file: File,
    /// The same partition opened with `O_DIRECT`, if the device allows it.
    direct: Option<File>,
    /// Where the next read or write goes (both handles use positional I/O),
    /// relative to `base`.
    pos: u64,
    is_block: bool,
    /// Offset of the partition in `path` (0: the path is the partition).
    base: u64,
    /// The partition's size when it is a window of a larger file.
    limit: Option<u64>,
}

impl PartitionFile {
    /// Open `path` read-write (never truncating or creating a block
    /// device). `label` is the GPT name, for messages.
    pub fn open(path: &Path, label: &str) -> Result<Self, WriteError> {
        let err = |source| WriteError::Open {
            target: format!("{} ({label})", path.display()),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(err)?;
        let is_block = file.metadata().map_err(err)?.file_type().is_block_device();
        // tmpfs and some FUSE file systems refuse O_DIRECT; then every
        // transfer goes through the page cache.
        let direct = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
            .open(path)
            .map_err(|e| {
                log::debug!(
                    "{}: no O_DIRECT ({e}); using the page cache",
                    path.display()
                )
            })
            .ok();
        Ok(PartitionFile {
            path: path.to_path_buf(),
            label: label.to_string(),
            file,
            direct,
            pos: 0,
            is_block,
            base: 0,
            limit: None,
        })
    }

    /// Open the `size` bytes at `start` of the disk (or disk image) `path`
    /// as one partition — for writing a disk whose new partition table the
    /// kernel has not read yet. `start` must be a multiple of
    /// [`DIRECT_ALIGN`] for `O_DIRECT` transfers (cairn aligns partitions to
    /// 1 MiB).
    pub fn window(path: &Path, label: &str, start: u64, size: u64) -> Result<Self, WriteError> {
        let mut f = Self::open(path, label)?;
        f.base = start;
        f.limit = Some(size);
        Ok(f)
    }

    /// How many of `len` bytes fit before the window's end.
    fn clamp(&self, len: usize) -> usize {
        match self.limit {
            Some(limit) => len.min(usize::try_from(limit.saturating_sub(self.pos)).unwrap_or(len)),
            None => len,
        }
    }

    /// Whether aligned blocks bypass the page cache (`O_DIRECT`).
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// The direct handle and how many bytes of `buf` (a whole number of
    /// blocks) it can move at the current position, if any.
    fn direct_len(&self, addr: *const u8, len: usize) -> Option<(&File, usize)> {
        let direct = self.direct.as_ref()?;
        let n = len - len % DIRECT_ALIGN;
        let aligned = (addr as usize).is_multiple_of(DIRECT_ALIGN)
            && (self.base + self.pos).is_multiple_of(DIRECT_ALIGN as u64);
        (aligned && n > 0).then_some((direct, n))
    }
}

impl Read for PartitionFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.clamp(buf.len());
        let buf = &mut buf[..n];
        let at = self.base + self.pos;
        let n = match self.direct_len(buf.as_ptr(), buf.len()) {
            Some((direct, n)) => direct.read_at(&mut buf[..n], at)?,
            None => self.file.read_at(buf, at)?,
        };
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for PartitionFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.clamp(buf.len());
        let buf = &buf[..n];
        if buf.is_empty() {
            return Ok(0);
        }
        let at = self.base + self.pos;
        let n = match self.direct_len(buf.as_ptr(), buf.len()) {
            Some((direct, n)) => direct.write_at(&buf[..n], at)?,
            None => self.file.write_at(buf, at)?,
        };
        self.pos += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for PartitionFile {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let to = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => {
                let end = if let Some(limit) = self.limit {
                    limit
                } else if self.is_block {
                    self.file.seek(SeekFrom::End(0))?
                } else {
                    self.file.metadata()?.len()
                };
                end.checked_add_signed(d)
            }
        };
        self.pos = to.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the partition's start",
            )
        })?;
        Ok(self.pos)
    }
}

impl BlockTarget for PartitionFile {
    fn describe(&self) -> String {
        match self.limit {
            Some(_) => format!(
                "{} ({}, at {} MiB)",
                self.path.display(),
                self.label,
                self.base >> 20
            ),
            None => format!("{} ({})", self.path.display(), self.label),
        }
    }

    /// A block device's size; a regular file's current length, or `None`
    /// (unbounded) when it is empty.
    fn capacity(&mut self) -> io::Result<Option<u64>> {
        if let Some(limit) = self.limit {
            return Ok(Some(limit));
        }
        if self.is_block {
            let end = self.file.seek(SeekFrom::End(0))?;
            self.file.seek(SeekFrom::Start(0))?;
            return Ok(Some(end));
        }
        let len = self.file.metadata()?.len();
        Ok((len > 0).then_some(len))
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_all()
    }

    fn drop_cache(&mut self, len: u64) -> io::Result<()> {
        rustix::fs::fadvise(
            &self.file,
            self.base,
            NonZeroU64::new(len),
            rustix::fs::Advice::DontNeed,
        )
        .map_err(io::Error::from)
    }
}

/// A failed write, read-back or invalidation; every variant names the
/// partition.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The partition could not be opened.
    #[error("cannot open {target} for writing: {source}")]
    Open {
        /// The partition.
        target: String,
        /// The I/O error.
        source: io::Error,
    },
    /// The image does not fit.
    #[error("{target} holds {capacity} bytes but the image is {len} bytes; the disk layout is too small for this OS version, repartition with a larger slot")]
    TooSmall {
        /// The partition.
        target: String,
        /// Its size.
        capacity: u64,
        /// The image's declared length.
        len: u64,
    },
    /// Reading the source failed.
    #[error("reading the image for {target} failed after {offset} bytes: {source}; {}", if source.kind() == io::ErrorKind::InvalidData { "the download failed verification (tampered or corrupt), the slot stays invalid" } else { "the download was interrupted, retry" })]
    SourceRead {
        /// The partition being written.
        target: String,
        /// Bytes read before the failure.
        offset: u64,
        /// The I/O error.
        source: io::Error,
    },
    /// The source ended before the declared length.
    #[error("the image for {target} ended after {got} bytes, the signed target declares {expected}; the download is truncated, retry")]
    SourceTooShort {
        /// The partition being written.
        target: String,
        /// Declared length.
        expected: u64,
        /// Bytes delivered.
        got: u64,
    },
    /// The source continued past the declared length.
    #[error("the image for {target} is longer than the {expected} bytes the signed target declares; refusing it (wrong or tampered download)")]
    SourceTooLong {
        /// The partition being written.
        target: String,
        /// Declared length.
        expected: u64,
    },
    /// The streamed bytes hash to something else.
    #[error("the image written to {target} has sha256 {actual}, the signed target says {expected}; the download is corrupt or tampered, the slot stays invalid")]
    HashMismatch {
        /// The partition.
        target: String,
        /// From the target.
        expected: Sha256,
        /// What was streamed.
        actual: Sha256,
    },
    /// A write to the partition failed.
    #[error("writing {target} failed at byte {offset}: {source}; the disk may be failing")]
    DeviceWrite {
        /// The partition.
        target: String,
        /// Offset of the failed write.
        offset: u64,
        /// The I/O error.
        source: io::Error,
    },
    /// fsync failed.
    #[error("syncing {target} failed: {source}; the disk may be failing")]
    Sync {
        /// The partition.
        target: String,
        /// The I/O error.
        source: io::Error,
    },
    /// Reading back failed.
    #[error("reading {target} back failed at byte {offset}: {source}; the disk may be failing")]
    VerifyRead {
        /// The partition.
        target: String,
        /// Offset of the failed read.
        offset: u64,
        /// The I/O error.
        source: io::Error,
    },
    /// The read-back hash differs from what was written.
    #[error("{target} does not hold what was written: reading it back gives sha256 {actual}, expected {expected}; the disk is corrupting data, replace it")]
    VerifyMismatch {
        /// The partition.
        target: String,
        /// The target's digest.
        expected: Sha256,
        /// What the device returned.
        actual: Sha256,
    },
    /// Zeroing the head of a partition failed.
    #[error("invalidating {target} (zeroing its first MiB) failed: {source}")]
    Invalidate {
        /// The partition.
        target: String,
        /// The I/O error.
        source: io::Error,
    },
}

/// What a successful [`write_image`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WriteReport {
    /// Bytes written (= the declared length).
    pub bytes: u64,
    /// Time for read + hash + write + fsync.
    pub write_elapsed: Duration,
    /// Time for the read-back check.
    pub verify_elapsed: Duration,
}

impl WriteReport {
    /// Write throughput in bytes per second (including the fsync).
    pub fn write_throughput(&self) -> f64 {
        rate(self.bytes, self.write_elapsed)
    }

    /// Read-back throughput in bytes per second.
    pub fn verify_throughput(&self) -> f64 {
        rate(self.bytes, self.verify_elapsed)
    }
}

fn rate(bytes: u64, d: Duration) -> f64 {
    let s = d.as_secs_f64();
    if s > 0.0 {
        bytes as f64 / s
    } else {
        f64::INFINITY
    }
}

/// A pipeline buffer whose data starts on a [`DIRECT_ALIGN`] boundary, so
/// whole chunks can go to and from the device with `O_DIRECT`.
struct Buf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl Buf {
    fn new(len: usize) -> Self {
        let raw = vec![0u8; len + DIRECT_ALIGN];
        let start = raw.as_ptr().align_offset(DIRECT_ALIGN).min(DIRECT_ALIGN);
        Buf { raw, start, len }
    }
}

impl std::ops::Deref for Buf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }
}

impl std::ops::DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

/// How the reader stage ended badly.
enum ReadFail {
    Io(u64, io::Error),
    Short(u64),
    Long,
}

/// Reader stage: fill buffers with exactly `len` bytes of `src`, then make
/// sure nothing follows.
fn read_stage(
    src: &mut (dyn Read + Send),
    len: u64,
    free: Receiver<Buf>,
    out: SyncSender<(Buf, usize)>,
) -> Result<(), ReadFail> {
    let mut done: u64 = 0;
    while done < len {
        let Ok(mut buf) = free.recv() else {
            // The writer stopped; its error is reported there.
            return Ok(());
        };
        let want = usize::try_from((len - done).min(buf.len() as u64)).unwrap_or(buf.len());
        let mut filled = 0;
        while filled < want {
            match src.read(&mut buf[filled..want]) {
                Ok(0) => {
                    // Hand over what we have so the byte count is exact.
                    let _ = out.send((buf, filled));
                    return Err(ReadFail::Short(done + filled as u64));
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ReadFail::Io(done + filled as u64, e)),
            }
        }
        done += filled as u64;
        if out.send((buf, filled)).is_err() {
            return Ok(());
        }
    }
    match read_one_more(src) {
        Ok(true) => Err(ReadFail::Long),
        Ok(false) => Ok(()),
        Err(e) => Err(ReadFail::Io(done, e)),
    }
}

/// Hasher stage: hash every buffer and pass it on.
fn hash_stage(input: Receiver<(Buf, usize)>, out: SyncSender<(Buf, usize)>) -> Sha256 {
    let mut h = sha2::Sha256::new();
    for (buf, n) in input {
        h.update(&buf[..n]);
        if out.send((buf, n)).is_err() {
            break;
        }
    }
    Sha256(h.finalize().into())
}

/// Run reader → hasher → `sink` over exactly `len` bytes of `src`. Returns
/// the reader outcome, the digest of everything that was read, and the
/// sink's first error with the offset where it happened.
fn pump(
    src: &mut (dyn Read + Send),
    len: u64,
    mut sink: impl FnMut(&[u8]) -> io::Result<()>,
) -> (Result<(), ReadFail>, Sha256, Option<(u64, io::Error)>) {
    let (free_tx, free_rx) = sync_channel::<Buf>(BUFFERS);
    let (read_tx, read_rx) = sync_channel::<(Buf, usize)>(BUFFERS);
    let (hash_tx, hash_rx) = sync_channel::<(Buf, usize)>(BUFFERS);
    let chunk = usize::try_from(len.min(CHUNK as u64))
        .unwrap_or(CHUNK)
        .max(1);
    for _ in 0..BUFFERS {
        let _ = free_tx.send(Buf::new(chunk));
    }
    std::thread::scope(|s| {
        let reader = s.spawn(move || read_stage(src, len, free_rx, read_tx));
        let hasher = s.spawn(move || hash_stage(read_rx, hash_tx));
        let mut offset: u64 = 0;
        let mut sink_err = None;
        for (buf, n) in hash_rx.iter() {
            if let Err(e) = sink(&buf[..n]) {
                sink_err = Some((offset, e));
                break;
            }
            offset += n as u64;
            // The reader may be done already; then nobody needs it back.
            let _ = free_tx.send(buf);
        }
        // Unblock the other stages when the sink stopped early.
        drop(hash_rx);
        drop(free_tx);
        let read = reader
            .join()
            .unwrap_or_else(|_| Err(ReadFail::Io(0, io::Error::other("reader thread panicked"))));
        let digest = hasher.join().unwrap_or(Sha256([0; 32]));
        (read, digest, sink_err)
    })
}

/// Stream `expected.len` bytes of `src` into `dest` from offset 0, checking
/// length and SHA-256 on the way; fsync; write the held-back first
/// [`INVALIDATE_LEN`] bytes; fsync; read back (see the module docs). On a
/// source error the head is never written, so an invalidated partition
/// stays invalid; on a device error the caller invalidates it again.
pub fn write_image(
    src: &mut (dyn Read + Send),
    expected: &Expected,
    dest: &mut dyn BlockTarget,
) -> Result<WriteReport, WriteError> {
    let target = dest.describe();
    if let Some(capacity) = dest.capacity().map_err(|source| WriteError::Open {
        target: target.clone(),
        source,
    })? {
        if capacity < expected.len {
            return Err(WriteError::TooSmall {
                target,
                capacity,
                len: expected.len,
            });
        }
    }
    let started = Instant::now();
    // The head (where the erofs and verity superblocks live) is held back
    // and written last, so until the very last write the partition keeps
    // the zeroed head [`invalidate`] gave it.
    let head_len = usize::try_from(expected.len.min(INVALIDATE_LEN)).unwrap_or(0);
    let mut head = Vec::with_capacity(head_len);
    let (read, digest, sink_err) = {
        let dest = &mut *dest;
        let mut body_started = false;
        pump(src, expected.len, |mut buf| {
            if head.len() < head_len {
                let n = (head_len - head.len()).min(buf.len());
                head.extend_from_slice(&buf[..n]);
                buf = &buf[n..];
            }
            if buf.is_empty() {
                return Ok(());
            }
            if !body_started {
                dest.seek(SeekFrom::Start(head_len as u64))?;
                body_started = true;
            }
            dest.write_all(buf)
        })
    };
    if let Some((offset, source)) = sink_err {
        return Err(WriteError::DeviceWrite {
            target,
            offset,
            source,
        });
    }
    match read {
        Ok(()) => {}
        Err(ReadFail::Io(offset, source)) => {
            return Err(WriteError::SourceRead {
                target,
                offset,
                source,
            })
        }
        Err(ReadFail::Short(got)) => {
            return Err(WriteError::SourceTooShort {
                target,
                expected: expected.len,
                got,
            })
        }
        Err(ReadFail::Long) => {
            return Err(WriteError::SourceTooLong {
                target,
                expected: expected.len,
            })
        }
    }
    if digest != expected.sha256 {
        return Err(WriteError::HashMismatch {
            target,
            expected: expected.sha256,
            actual: digest,
        });
    }
    // Body durable first, then the head, then durable again.
    dest.flush()
        .and_then(|()| dest.sync())
        .map_err(|source| WriteError::Sync {
            target: target.clone(),
            source,
        })?;
    dest.seek(SeekFrom::Start(0))
        .and_then(|_| dest.write_all(&head))
        .map_err(|source| WriteError::DeviceWrite {
            target: target.clone(),
            offset: 0,
            source,
        })?;
    dest.flush()
        .and_then(|()| dest.sync())
        .map_err(|source| WriteError::Sync {
            target: target.clone(),
            source,
        })?;
    let write_elapsed = started.elapsed();
    let verify_elapsed = verify_written(dest, expected)?;
    let report = WriteReport {
        bytes: expected.len,
        write_elapsed,
        verify_elapsed,
    };
    log::info!(
        "wrote {} bytes to {target} at {:.1} MB/s, read back at {:.1} MB/s",
        report.bytes,
        report.write_throughput() / 1e6,
        report.verify_throughput() / 1e6
    );
    Ok(report)
}

/// Read `[0, expected.len)` of `dest` back (after dropping its cache) and
/// compare the SHA-256. Returns how long it took.
pub fn verify_written(
    dest: &mut dyn BlockTarget,
    expected: &Expected,
) -> Result<Duration, WriteError> {
    let target = dest.describe();
    let started = Instant::now();
    let read_err = |offset, source| WriteError::VerifyRead {
        target: target.clone(),
        offset,
        source,
    };
    // Best effort: a file system that cannot drop pages still verifies.
    if let Err(e) = dest.drop_cache(expected.len) {
        log::debug!("{target}: posix_fadvise(DONTNEED) failed: {e}");
    }
    dest.seek(SeekFrom::Start(0)).map_err(|e| read_err(0, e))?;
    let (read, digest, _) = {
        let mut limited = Read::take(&mut *dest, expected.len);
        pump(&mut limited, expected.len, |_| Ok(()))
    };
    match read {
        // `take` hides whatever follows the image: that is the partition's
        // tail, not part of the check.
        Ok(()) | Err(ReadFail::Long) => {}
        Err(ReadFail::Io(offset, e)) => return Err(read_err(offset, e)),
        Err(ReadFail::Short(got)) => {
            return Err(read_err(
                got,
                io::Error::new(io::ErrorKind::UnexpectedEof, "the partition ended early"),
            ))
        }
    }
    if digest != expected.sha256 {
        return Err(WriteError::VerifyMismatch {
            target,
            expected: expected.sha256,
            actual: digest,
        });
    }
    Ok(started.elapsed())
}

/// Zero the first [`INVALIDATE_LEN`] bytes (or the whole partition, if
/// smaller) of each target, then fsync it.
pub fn invalidate(targets: &mut [&mut dyn BlockTarget]) -> Result<(), WriteError> {
    for t in targets.iter_mut() {
        let target = t.describe();
        let err = |source| WriteError::Invalidate {
            target: target.clone(),
            source,
        };
        let len = match t.capacity().map_err(err)? {
            Some(c) => c.min(INVALIDATE_LEN),
            None => INVALIDATE_LEN,
        };
        t.seek(SeekFrom::Start(0)).map_err(err)?;
        let zeros = vec![0u8; len as usize];
        t.write_all(&zeros).map_err(err)?;
        t.flush().and_then(|()| t.sync()).map_err(err)?;
        log::info!("invalidated {target}: first {len} bytes zeroed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes (xorshift), so hashes are not of
    /// trivially compressible data.
    pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.extend_from_slice(&x.to_le_bytes());
        }
        v.truncate(len);
        v
    }

    fn partition(dir: &Path, size: u64) -> PathBuf {
        let p = dir.join("root-b.img");
        File::create(&p).unwrap().set_len(size).unwrap();
        p
    }

    /// Reads one byte at a time at first, to exercise partial reads.
    struct Dribble<'a>(&'a [u8], usize);
    impl Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = if self.1 < 10 { 1 } else { buf.len() }
                .min(self.0.len())
                .min(buf.len());
            self.1 += 1;
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn exact_image_is_written_and_verified() {
        let d = tempfile::tempdir().unwrap();
        let data = noise(CHUNK * 2 + 12345, 1);
        let p = partition(d.path(), 32 << 20);
        let mut dest = PartitionFile::open(&p, "root-b").unwrap();
        let report = write_image(&mut Dribble(&data, 0), &Expected::of(&data), &mut dest).unwrap();
        assert_eq!(report.bytes, data.len() as u64);
        assert!(report.write_throughput() > 0.0);
        let on_disk = std::fs::read(&p).unwrap();
        assert_eq!(&on_disk[..data.len()], &data[..]);
        assert_eq!(on_disk.len(), 32 << 20, "the partition is not truncated");
    }

    #[test]
    fn short_long_and_wrong_sources_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let data = noise(3 << 20, 2);
        let exp = Expected::of(&data);
        let p = partition(d.path(), 8 << 20);
        let mut dest = PartitionFile::open(&p, "root-b").unwrap();

        let short = &data[..data.len() - 1];
        let err = write_image(&mut &short[..], &exp, &mut dest).unwrap_err();
        assert!(
            matches!(err, WriteError::SourceTooShort { expected, got, .. } if expected == exp.len && got == exp.len - 1),
            "{err}"
        );
        assert!(err.to_string().contains("root-b.img (root-b)"), "{err}");

        let mut long = data.clone();
        long.push(0);
        let err = write_image(&mut &long[..], &exp, &mut dest).unwrap_err();
        assert!(matches!(err, WriteError::SourceTooLong { .. }), "{err}");

        let mut wrong = data.clone();
        wrong[12345] ^= 1;
        let err = write_image(&mut &wrong[..], &exp, &mut dest).unwrap_err();
        assert!(
            matches!(&err, WriteError::HashMismatch { expected, .. } if *expected == exp.sha256),
            "{err}"
        );

        let empty: &[u8] = &[];
        let err = write_image(&mut &empty[..], &exp, &mut dest).unwrap_err();
        assert!(
            matches!(err, WriteError::SourceTooShort { got: 0, .. }),
            "{err}"
        );
    }

    #[test]
    fn image_larger_than_the_partition_is_refused_before_writing() {
        let d = tempfile::tempdir().unwrap();
        let data = noise(2 << 20, 3);
        let p = partition(d.path(), 1 << 20);
        let mut dest = PartitionFile::open(&p, "root-b").unwrap();
        let err = write_image(&mut &data[..], &Expected::of(&data), &mut dest).unwrap_err();
        assert!(
            matches!(
                err,
                WriteError::TooSmall {
                    capacity: 1048576,
                    len: 2097152,
                    ..
                }
            ),
            "{err}"
        );
        assert!(std::fs::read(&p).unwrap().iter().all(|b| *b == 0));
    }

    #[test]
    fn source_read_error_is_reported_with_offset() {
        struct Broken(usize);
        impl Read for Broken {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::new(io::ErrorKind::ConnectionReset, "peer gone"));
                }
                let n = buf.len().min(self.0);
                buf[..n].fill(7);
                self.0 -= n;
                Ok(n)
            }
        }
        let d = tempfile::tempdir().unwrap();
        let p = partition(d.path(), 8 << 20);
        let mut dest = PartitionFile::open(&p, "root-b").unwrap();
        let exp = Expected::of(&[7u8; 1 << 20]);
        let err = write_image(&mut Broken(1000), &exp, &mut dest).unwrap_err();
        assert!(
            matches!(err, WriteError::SourceRead { offset: 1000, .. }),
            "{err}"
        );
    }

    /// A partition that silently corrupts one byte when it is synced, like
    /// a disk that acknowledges writes it does not keep.
    struct Rotting(PartitionFile);
    impl Read for Rotting {
        fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
            self.0.read(b)
        }
    }
    impl Write for Rotting {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.write(b)
        }
        fn flush(&mut self) -> io::Result<()> {
            self.0.flush()
        }
    }
    impl Seek for Rotting {
        fn seek(&mut self, p: SeekFrom) -> io::Result<u64> {
            self.0.seek(p)
        }
    }
    impl BlockTarget for Rotting {
        fn describe(&self) -> String {
            self.0.describe()
        }
        fn capacity(&mut self) -> io::Result<Option<u64>> {
            self.0.capacity()
        }
        fn sync(&mut self) -> io::Result<()> {
            self.0.sync()?;
            let pos = self.0.stream_position()?;
            self.0.seek(SeekFrom::Start(4097))?;
            let mut b = [0u8; 1];
            self.0.read_exact(&mut b)?;
            self.0.seek(SeekFrom::Start(4097))?;
            self.0.write_all(&[b[0] ^ 0x40])?;
            self.0.seek(SeekFrom::Start(pos))?;
            Ok(())
        }
    }

    #[test]
    fn corruption_after_write_is_caught_by_the_read_back() {
        let d = tempfile::tempdir().unwrap();
        let data = noise(1 << 20, 4);
        let p = partition(d.path(), 2 << 20);
        let mut dest = Rotting(PartitionFile::open(&p, "root-b").unwrap());
        let exp = Expected::of(&data);
        let err = write_image(&mut &data[..], &exp, &mut dest).unwrap_err();
        assert!(
            matches!(&err, WriteError::VerifyMismatch { expected, actual, .. } if *expected == exp.sha256 && *actual != exp.sha256),
            "{err}"
        );
        assert!(err.to_string().contains("does not hold what was written"));
    }

    /// Records where writes land and when syncs happen.
    struct Recording {
        inner: PartitionFile,
        events: Vec<String>,
    }
    impl Read for Recording {
        fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
            self.inner.read(b)
        }
    }
    impl Write for Recording {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let at = self.inner.stream_position()?;
            let n = self.inner.write(b)?;
            self.events.push(format!("write {at}+{n}"));
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            self.inner.flush()
        }
    }
    impl Seek for Recording {
        fn seek(&mut self, p: SeekFrom) -> io::Result<u64> {
            self.inner.seek(p)
        }
    }
    impl BlockTarget for Recording {
        fn describe(&self) -> String {
            self.inner.describe()
        }
        fn capacity(&mut self) -> io::Result<Option<u64>> {
            self.inner.capacity()
        }
        fn sync(&mut self) -> io::Result<()> {
            self.events.push("sync".into());
            self.inner.sync()
        }
    }

    #[test]
    fn the_head_is_written_last_after_the_body_is_durable() {
        let d = tempfile::tempdir().unwrap();
        let data = noise(3 << 20, 11);
        let p = partition(d.path(), 4 << 20);
        let mut dest = Recording {
            inner: PartitionFile::open(&p, "root-b").unwrap(),
            events: Vec::new(),
        };
        write_image(&mut &data[..], &Expected::of(&data), &mut dest).unwrap();
        let ev = &dest.events;
        assert_eq!(
            ev.first().map(String::as_str),
            Some("write 1048576+2097152"),
            "{ev:?}"
        );
        assert_eq!(
            ev[ev.len() - 3..],
            ["sync".to_string(), "write 0+1048576".into(), "sync".into()],
            "{ev:?}"
        );
        assert_eq!(std::fs::read(&p).unwrap()[..data.len()], data[..]);

        // An image smaller than the head is written in one piece, last.
        let small = noise(1000, 12);
        dest.events.clear();
        write_image(&mut &small[..], &Expected::of(&small), &mut dest).unwrap();
        assert_eq!(dest.events, ["sync", "write 0+1000", "sync"]);
    }

    #[test]
    fn a_failed_write_leaves_the_invalidated_head_zero() {
        let d = tempfile::tempdir().unwrap();
        let data = noise(3 << 20, 13);
        let exp = Expected::of(&data);
        let p = partition(d.path(), 4 << 20);
        let mut dest = PartitionFile::open(&p, "root-b").unwrap();
        // A download cut short, then a tampered one.
        let short = &data[..(2 << 20) + 5];
        assert!(write_image(&mut &short[..], &exp, &mut dest).is_err());
        let mut wrong = data.clone();
        wrong[(2 << 20) + 1] ^= 1;
        assert!(write_image(&mut &wrong[..], &exp, &mut dest).is_err());
        let on_disk = std::fs::read(&p).unwrap();
        assert!(
            on_disk[..1 << 20].iter().all(|b| *b == 0),
            "head must stay zero"
        );
        assert_eq!(
            on_disk[(1 << 20)..(2 << 20)],
            data[(1 << 20)..(2 << 20)],
            "the body was written"
        );
    }

    #[test]
    fn invalidate_zeroes_the_first_mib_only() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let verity = d.path().join("verity");
        std::fs::write(&root, noise(3 << 20, 5)).unwrap();
        std::fs::write(&verity, noise(4096, 6)).unwrap();
        let mut r = PartitionFile::open(&root, "root-b").unwrap();
        let mut v = PartitionFile::open(&verity, "verity-b").unwrap();
        invalidate(&mut [&mut r, &mut v]).unwrap();
        let r = std::fs::read(&root).unwrap();
        assert_eq!(r.len(), 3 << 20);
        assert!(r[..1 << 20].iter().all(|b| *b == 0));
        assert_eq!(&r[1 << 20..], &noise(3 << 20, 5)[1 << 20..]);
        let v = std::fs::read(&verity).unwrap();
        assert_eq!(v, vec![0u8; 4096], "a small partition is zeroed, not grown");
    }
}
