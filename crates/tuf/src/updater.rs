//! The TUF 1.0 client workflow (specification section 5), one function per
//! step, in the spec's order. Step numbers refer to TUF specification
//! v1.0.x, section 5 ("Detailed client workflow").

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;
use sha2::{Digest, Sha256, Sha512};

use crate::crypto::PublicKey;
use crate::error::{Error, Result};
use crate::metadata::{Envelope, MetaFile, RoleKeys, Root, Snapshot, Targets, Timestamp};
use crate::store::{BackgroundWriter, MetadataDir, TempFile};
use crate::transport::{quote, Transport, TransportError};
use crate::ImageMetadata;

/// Byte and count caps. Defaults match python-tuf's `UpdaterConfig`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most root versions fetched in one update (spec 5.3.3 "Y").
    pub max_root_rotations: u32,
    /// Most roles visited in one target search (spec 5.6.7.1).
    pub max_delegations: u32,
    /// Cap for each `N.root.json` (spec 5.3.3 "W").
    pub root_max_length: u64,
    /// Cap for `timestamp.json` (spec 5.4.1 "X").
    pub timestamp_max_length: u64,
    /// Cap for snapshot when timestamp lists no length (spec 5.5.1 "Y").
    pub snapshot_max_length: u64,
    /// Cap for targets metadata when snapshot lists no length (spec 5.6.1 "Z").
    pub targets_max_length: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_root_rotations: 32,
            max_delegations: 32,
            root_max_length: 512_000,
            timestamp_max_length: 16_384,
            snapshot_max_length: 2_000_000,
            targets_max_length: 5_000_000,
        }
    }
}

/// Where the client keeps its trusted metadata and where it fetches from.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory holding `root.json` (required before [`Updater::new`]) and
    /// the other trusted metadata.
    pub metadata_dir: PathBuf,
    /// Base URL of the repository's metadata (`http(s)://`, `file://` or a
    /// path, depending on the transport). Used as given, plus a `/`.
    pub metadata_base_url: String,
    /// Base URL of the repository's targets.
    pub targets_base_url: String,
    /// The fixed update start time every expiry check uses (spec 5.1).
    /// Defaults to the time the `Config` was made.
    pub start_time: SystemTime,
    /// Download caps.
    pub limits: Limits,
    /// With consistent snapshots, fetch targets as `<dir>/<hash>.<name>`
    /// (default true, like python-tuf's `prefix_targets_with_hash`).
    pub prefix_targets_with_hash: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            metadata_dir: PathBuf::new(),
            metadata_base_url: String::new(),
            targets_base_url: String::new(),
            start_time: SystemTime::now(),
            limits: Limits::default(),
            prefix_targets_with_hash: true,
        }
    }
}

/// A target as signed by the role that was found responsible for it. Only
/// the updater builds these, from verified metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetInfo {
    path: String,
    length: u64,
    hashes: BTreeMap<String, String>,
    custom: Option<Value>,
    role: String,
}

impl TargetInfo {
    /// The target path (the key in `targets`).
    pub fn path(&self) -> &str {
        &self.path
    }
    /// The signed length in bytes.
    pub fn length(&self) -> u64 {
        self.length
    }
    /// The signed hashes, algorithm → lowercase hex.
    pub fn hashes(&self) -> &BTreeMap<String, String> {
        &self.hashes
    }
    /// The signed `custom` object, if any.
    pub fn custom(&self) -> Option<&Value> {
        self.custom.as_ref()
    }
    /// The role whose metadata lists this target.
    pub fn role(&self) -> &str {
        &self.role
    }
    /// cairn's image fields from `custom`, if present and well-formed.
    pub fn image_metadata(&self) -> Option<ImageMetadata> {
        serde_json::from_value(self.custom.clone()?).ok()
    }

    /// Check a local file against the signed length and every signed hash
    /// (e.g. a rootfs that stage 1 received as an initrd).
    pub fn verify_file(&self, path: &Path) -> Result<()> {
        let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
        let what = format!("target {}", self.path);
        let source = path.display().to_string();
        let mut v = StreamVerifier::new(self, &what, &source)?;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
            if n == 0 {
                break;
            }
            v.update(&buf[..n])?;
        }
        v.finish()
    }
}

/// Length and hashes checked while streaming.
struct StreamVerifier<'a> {
    info: &'a TargetInfo,
    what: &'a str,
    source: &'a str,
    total: u64,
    hashers: Vec<(String, String, Hasher)>,
}

enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    fn new(alg: &str) -> Option<Hasher> {
        match alg {
            "sha256" => Some(Hasher::Sha256(Sha256::new())),
            "sha512" => Some(Hasher::Sha512(Sha512::new())),
            _ => None,
        }
    }
    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }
    fn finish(self) -> String {
        match self {
            Hasher::Sha256(h) => hex::encode(h.finalize()),
            Hasher::Sha512(h) => hex::encode(h.finalize()),
        }
    }
}

impl<'a> StreamVerifier<'a> {
    fn new(info: &'a TargetInfo, what: &'a str, source: &'a str) -> Result<Self> {
        let hashers = info
            .hashes
            .iter()
            .map(|(alg, expected)| {
                Hasher::new(alg)
                    .map(|h| (alg.clone(), expected.clone(), h))
                    .ok_or_else(|| Error::UnsupportedHashAlgorithm {
                        what: what.to_string(),
                        algorithm: alg.clone(),
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(StreamVerifier {
            info,
            what,
            source,
            total: 0,
            hashers,
        })
    }

    fn update(&mut self, data: &[u8]) -> Result<()> {
        self.total += data.len() as u64;
        if self.total > self.info.length {
            return Err(Error::LengthExceeded {
                url: self.source.to_string(),
                max: self.info.length,
            });
        }
        for (_, _, h) in &mut self.hashers {
            h.update(data);
        }
        Ok(())
    }

    fn finish(self) -> Result<()> {
        if self.total != self.info.length {
            return Err(Error::LengthMismatch {
                what: self.what.to_string(),
                expected: self.info.length,
                actual: self.total,
            });
        }
        for (alg, expected, h) in self.hashers {
            let actual = h.finish();
            if !actual.eq_ignore_ascii_case(&expected) {
                return Err(Error::HashMismatch {
                    what: self.what.to_string(),
                    algorithm: alg,
                    expected,
                    actual,
                });
            }
        }
        Ok(())
    }
}

/// Check `bytes` against the length and hashes a meta entry lists, if any.
fn check_meta_length_and_hashes(what: &str, bytes: &[u8], meta: &MetaFile) -> Result<()> {
    if let Some(length) = meta.length {
        if bytes.len() as u64 != length {
            return Err(Error::LengthMismatch {
                what: what.to_string(),
                expected: length,
                actual: bytes.len() as u64,
            });
        }
    }
    for (alg, expected) in meta.hashes.iter().flatten() {
        let mut h = Hasher::new(alg).ok_or_else(|| Error::UnsupportedHashAlgorithm {
            what: what.to_string(),
            algorithm: alg.clone(),
        })?;
        h.update(bytes);
        let actual = h.finish();
        if !actual.eq_ignore_ascii_case(expected) {
            return Err(Error::HashMismatch {
                what: what.to_string(),
                algorithm: alg.clone(),
                expected: expected.clone(),
                actual,
            });
        }
    }
    Ok(())
}

/// Targets metadata larger than this has its signature checked on a
/// second thread.
const PARALLEL_VERIFY_BYTES: usize = 256 * 1024;

fn with_slash(base: &str) -> String {
    if base.ends_with('/') {
        base.to_string()
    } else {
        format!("{base}/")
    }
}

/// A TUF client session: one fixed start time, one refresh, any number of
/// target look-ups and downloads.
pub struct Updater<T: Transport> {
    config: Config,
    transport: T,
    /// Spec 5.1: the fixed update start time, seconds since the epoch.
    now: i64,
    dir: MetadataDir,
    root: Root,
    timestamp: Option<Timestamp>,
    snapshot: Option<Snapshot>,
    /// Trusted targets metadata by role name ("targets" and delegated roles).
    targets: HashMap<String, Targets>,
    refreshed: bool,
    refresh_failed: bool,
    /// Verified root/timestamp/snapshot files not yet handed to `writer`.
    pending: Vec<(String, Vec<u8>)>,
    /// Writes root/timestamp/snapshot during a refresh.
    writer: Option<BackgroundWriter>,
}

impl<T: Transport> std::fmt::Debug for Updater<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Updater")
            .field("metadata_dir", &self.config.metadata_dir)
            .field("root_version", &self.root.common.version)
            .field("refreshed", &self.refreshed)
            .finish()
    }
}

impl<T: Transport> Updater<T> {
    /// Start a session: record the start time and load the trusted root
    /// from `config.metadata_dir/root.json`. No network access.
    pub fn new(config: Config, transport: T) -> Result<Self> {
        let now = step_5_1_record_time(config.start_time);
        let dir = MetadataDir::new(config.metadata_dir.clone());
        let root = step_5_2_load_trusted_root(&dir)?;
        Ok(Updater {
            config,
            transport,
            now,
            dir,
            root,
            timestamp: None,
            snapshot: None,
            targets: HashMap::new(),
            refreshed: false,
            refresh_failed: false,
            pending: Vec::new(),
            writer: None,
        })
    }

    /// Update root, timestamp, snapshot and top-level targets metadata
    /// (spec 5.3–5.6.6). Each file is persisted as soon as it is verified;
    /// an error leaves everything trusted before it in place. Call once per
    /// `Updater`.
    pub fn refresh(&mut self) -> Result<()> {
        if self.refreshed {
            return Err(Error::State(
                "refresh() runs once per Updater: make a new one",
            ));
        }
        self.refreshed = true;
        let result = self.refresh_steps();
        // Wait for root/timestamp/snapshot to be on disk either way: an
        // error leaves everything verified before it persisted.
        let persisted = self.flush_durable().and_then(|()| self.finish_writer());
        let result = result.and(persisted);
        self.refresh_failed = result.is_err();
        result
    }

    fn refresh_steps(&mut self) -> Result<()> {
        let start_root = self.root.clone();
        self.step_5_3_update_root()?;
        self.step_5_3_10_check_root_freeze()?;
        self.step_5_3_11_fast_forward_recovery(&start_root)?;
        // 5.3.12: consistent_snapshot is read from the trusted root whenever
        // a URL is built (metadata_url / target_url).
        self.step_5_4_update_timestamp()?;
        self.step_5_5_update_snapshot()?;
        // Root, timestamp and snapshot go to disk while targets is fetched
        // and verified.
        self.flush_durable()?;
        self.step_5_6_update_targets("targets", None)?;
        Ok(())
    }

    /// Persist root, timestamp or snapshot: queued, then written and
    /// fsynced in order by a background thread ([`Updater::flush_durable`])
    /// while the update goes on; `refresh` returns only once they are all
    /// on disk.
    fn persist_durable(&mut self, role: &str, bytes: Vec<u8>) -> Result<()> {
        self.pending.push((role.to_string(), bytes));
        Ok(())
    }

    /// Hand the queued durable files to the writer thread as one batch
    /// (written, then fsynced, then renamed in order: one journal commit
    /// for the lot instead of one per file).
    fn flush_durable(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.pending);
        if self.writer.is_none() {
            match BackgroundWriter::start(self.dir.clone()) {
                Ok(w) => self.writer = Some(w),
                // No thread: write in place.
                Err(_) => {
                    for (role, bytes) in &batch {
                        self.dir.persist(role, bytes)?;
                    }
                    return Ok(());
                }
            }
        }
        if let Some(w) = &self.writer {
            w.write(batch);
        }
        Ok(())
    }

    fn finish_writer(&mut self) -> Result<()> {
        match self.writer.take() {
            Some(w) => w.finish(),
            None => Ok(()),
        }
    }

    /// Find `target_path`'s signed info by the delegation search of spec
    /// 5.6.7 (refreshing first if [`Updater::refresh`] was not called).
    /// `Ok(None)`: no role that may sign it lists it.
    pub fn get_target_info(&mut self, target_path: &str) -> Result<Option<TargetInfo>> {
        if !self.refreshed {
            self.refresh()?;
        }
        if self.refresh_failed {
            return Err(Error::State("the refresh failed: make a new Updater"));
        }
        self.step_5_6_7_search(target_path)
    }

    /// Download `info`'s target to `dest` (spec 5.7): fetch at most the
    /// signed length, check every signed hash while streaming into a
    /// temporary file beside `dest`, and rename it into place only after
    /// verification. On error `dest` is untouched.
    pub fn download_target(&self, info: &TargetInfo, dest: &Path) -> Result<()> {
        let mut tmp = TempFile::beside(dest)?;
        let tmp_path = tmp.path().to_path_buf();
        self.download_target_to(info, tmp.file())
            .map_err(|e| match e {
                Error::Io { source, .. } => Error::io(&tmp_path, source),
                e => e,
            })?;
        tmp.commit(dest)
    }

    /// Stream `info`'s target into `out` (e.g. an inactive slot partition),
    /// checking length while streaming and hashes at the end. The bytes in
    /// `out` must be treated as untrusted unless this returns `Ok`.
    pub fn download_target_to(&self, info: &TargetInfo, out: &mut dyn Write) -> Result<()> {
        let url = self.target_url(info);
        let what = format!("target {}", info.path);
        // Refuse unknown hash algorithms before any byte is fetched.
        let mut verifier = StreamVerifier::new(info, &what, &url)?;
        let reader = self
            .transport
            .fetch(&url)
            .map_err(|source| Error::Transport {
                url: url.clone(),
                source,
            })?;
        let mut reader = reader.take(info.length + 1);
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = reader.read(&mut buf).map_err(|e| Error::Transport {
                url: url.clone(),
                source: TransportError::Io(e),
            })?;
            if n == 0 {
                break;
            }
            verifier.update(&buf[..n])?;
            out.write_all(&buf[..n])
                .map_err(|e| Error::io(PathBuf::from(&what), e))?;
        }
        verifier.finish()
    }

    /// Open `info`'s target as a stream that enforces the signed length and
    /// checks every signed hash at the end: a read past the signed length,
    /// or the final read (end of stream) when a hash or the length does not
    /// match, fails with an [`io::Error`] that wraps the TUF [`Error`]. For
    /// callers that write the bytes somewhere themselves (an A/B slot) and
    /// must not trust them unless the stream ended cleanly.
    pub fn open_target(&self, info: &TargetInfo) -> Result<TargetReader<'_>> {
        let url = self.target_url(info);
        let what = format!("target {}", info.path);
        // Refuse unknown hash algorithms before any byte is fetched.
        StreamVerifier::new(info, &what, &url)?;
        let reader = self
            .transport
            .fetch(&url)
            .map_err(|source| Error::Transport {
                url: url.clone(),
                source,
            })?;
        Ok(TargetReader {
            inner: reader.take(info.length + 1),
            info: info.clone(),
            what,
            url,
            total: 0,
            hashers: None,
            done: false,
        })
    }

    /// Whether `path` already holds exactly `info`'s target (length and
    /// every hash match), so a download can be skipped.
    pub fn is_cached(&self, info: &TargetInfo, path: &Path) -> bool {
        path.is_file() && info.verify_file(path).is_ok()
    }

    /// The trusted root metadata.
    pub fn trusted_root(&self) -> &Root {
        &self.root
    }
    /// The trusted timestamp metadata, after a refresh.
    pub fn trusted_timestamp(&self) -> Option<&Timestamp> {
        self.timestamp.as_ref()
    }
    /// The trusted snapshot metadata, after a refresh.
    pub fn trusted_snapshot(&self) -> Option<&Snapshot> {
        self.snapshot.as_ref()
    }
    /// Trusted targets metadata of `role` ("targets" or a delegated role
    /// loaded by a search).
    pub fn trusted_targets(&self, role: &str) -> Option<&Targets> {
        self.targets.get(role)
    }

    // -- helpers -----------------------------------------------------------

    fn metadata_url(&self, role: &str, version: Option<u64>) -> String {
        let base = with_slash(&self.config.metadata_base_url);
        match version {
            Some(v) => format!("{base}{v}.{}.json", quote(role)),
            None => format!("{base}{}.json", quote(role)),
        }
    }

    fn target_url(&self, info: &TargetInfo) -> String {
        let base = with_slash(&self.config.targets_base_url);
        if self.root.consistent_snapshot && self.config.prefix_targets_with_hash {
            let hash = info
                .hashes
                .get("sha256")
                .or_else(|| info.hashes.get("sha512"))
                .or_else(|| info.hashes.values().next())
                .map(String::as_str)
                .unwrap_or_default();
            match info.path.rsplit_once('/') {
                Some((dir, name)) => format!("{base}{dir}/{hash}.{name}"),
                None => format!("{base}{hash}.{}", info.path),
            }
        } else {
            format!("{base}{}", info.path)
        }
    }

    /// Fetch `url`, reading at most `max` bytes (caps enforced while
    /// streaming: an endless response is cut at `max + 1` bytes).
    fn fetch_capped(&self, url: &str, max: u64) -> Result<Vec<u8>> {
        let reader = self
            .transport
            .fetch(url)
            .map_err(|source| Error::Transport {
                url: url.to_string(),
                source,
            })?;
        // Room for typical metadata up front (a 10k-target file would
        // otherwise be copied ~20 times while growing).
        let mut buf = Vec::with_capacity(max.min(8 << 20) as usize + 1);
        reader
            .take(max.saturating_add(1))
            .read_to_end(&mut buf)
            .map_err(|e| Error::Transport {
                url: url.to_string(),
                source: TransportError::Io(e),
            })?;
        if buf.len() as u64 > max {
            return Err(Error::LengthExceeded {
                url: url.to_string(),
                max,
            });
        }
        Ok(buf)
    }

    fn verify_top_level(&self, env: &Envelope, role: &str) -> Result<()> {
        let rk = self.root.role(role);
        env.verify_threshold(role, "root", &self.root.keys, &rk.keyids, rk.threshold)
    }

    fn is_expired(&self, expires: &crate::metadata::Expiry) -> bool {
        expires.is_expired(self.now)
    }

    fn expired(role: &str, expires: &crate::metadata::Expiry) -> Error {
        Error::Expired {
            role: role.to_string(),
            expires: expires.text.clone(),
        }
    }

    // -- 5.3 root ----------------------------------------------------------

    /// 5.3.1–5.3.9: walk `N+1.root.json` until none is found or the
    /// rotation cap is reached.
    fn step_5_3_update_root(&mut self) -> Result<()> {
        // 5.3.1: versioned root files are fetched whatever
        // consistent_snapshot says.
        for _ in 0..self.config.limits.max_root_rotations {
            // 5.3.2
            let n = self.root.common.version;
            // 5.3.3: fetch N+1 with a byte cap; absent ends the loop.
            let url = self.metadata_url("root", Some(n + 1));
            let bytes = match self.fetch_capped(&url, self.config.limits.root_max_length) {
                Ok(b) => b,
                Err(Error::Transport {
                    source: TransportError::NotFound,
                    ..
                }) => break,
                Err(e) => return Err(e),
            };
            // 5.3.4–5.3.6
            let new_root = self.verify_new_root(&bytes, n)?;
            // 5.3.8 before 5.3.7, so memory never trusts what is not on
            // its way to disk.
            self.persist_durable("root", bytes)?;
            // 5.3.7
            self.root = new_root;
            // 5.3.9: repeat.
        }
        Ok(())
    }

    /// 5.3.4–5.3.6 for `bytes`, the candidate root version N+1.
    fn verify_new_root(&self, bytes: &[u8], n: u64) -> Result<Root> {
        let env = Envelope::parse(bytes, "root")?;
        let new_root = Root::from_envelope(&env)?;
        // 5.3.4: threshold of the trusted root's keys AND of the
        // new root's own keys.
        let old = self.root.role("root");
        env.verify_threshold(
            "root",
            "trusted root",
            &self.root.keys,
            &old.keyids,
            old.threshold,
        )?;
        let new = new_root.role("root");
        env.verify_threshold(
            "root",
            "new root",
            &new_root.keys,
            &new.keyids,
            new.threshold,
        )?;
        // 5.3.5: exactly N+1.
        if new_root.common.version != n + 1 {
            return Err(Error::VersionMismatch {
                role: "root".into(),
                listed_by: format!("trusted root v{n} (next must be N+1)"),
                expected: n + 1,
                actual: new_root.common.version,
            });
        }
        // 5.3.6: intermediate root expiry does not matter.
        Ok(new_root)
    }

    /// 5.3.10: the final root must not be expired.
    fn step_5_3_10_check_root_freeze(&self) -> Result<()> {
        if self.is_expired(&self.root.common.expires) {
            return Err(Self::expired("root", &self.root.common.expires));
        }
        Ok(())
    }

    /// 5.3.11: if the timestamp or snapshot keys changed, delete the
    /// trusted timestamp and snapshot (fast-forward attack recovery).
    fn step_5_3_11_fast_forward_recovery(&mut self, start_root: &Root) -> Result<()> {
        if start_root.common.version == self.root.common.version {
            return Ok(());
        }
        let key_set = |root: &Root, role: &str| -> BTreeSet<String> {
            root.role(role)
                .keyids
                .iter()
                .map(|id| match root.keys.get(id) {
                    Some(k) => format!("{id}\n{}", k.identity()),
                    None => id.clone(),
                })
                .collect()
        };
        let rotated = ["timestamp", "snapshot"]
            .iter()
            .any(|r| key_set(start_root, r) != key_set(&self.root, r));
        if rotated {
            log::info!("timestamp/snapshot keys rotated: dropping trusted timestamp and snapshot");
            // Root versions first, then the removals, then the directory.
            self.flush_durable()?;
            self.finish_writer()?;
            self.dir.remove("timestamp")?;
            self.dir.remove("snapshot")?;
            self.dir.sync()?;
        }
        Ok(())
    }

    // -- 5.4 timestamp -----------------------------------------------------

    /// The timestamp trusted by the previous update, if it still verifies
    /// under the current root (a timestamp signed by rotated-out keys is no
    /// longer trusted; its expiry does not matter for rollback checks).
    fn previous_timestamp(&self) -> Option<Timestamp> {
        let bytes = self.dir.load("timestamp")?;
        let env = Envelope::parse(&bytes, "timestamp").ok()?;
        let ts = Timestamp::from_envelope(&env).ok()?;
        self.verify_top_level(&env, "timestamp").ok()?;
        Some(ts)
    }

    /// 5.4.1–5.4.5.
    fn step_5_4_update_timestamp(&mut self) -> Result<()> {
        let trusted = self.previous_timestamp();
        // 5.4.1: always unversioned, capped.
        let url = self.metadata_url("timestamp", None);
        let bytes = self.fetch_capped(&url, self.config.limits.timestamp_max_length)?;
        let env = Envelope::parse(&bytes, "timestamp")?;
        let new = Timestamp::from_envelope(&env)?;
        // 5.4.2
        self.verify_top_level(&env, "timestamp")?;
        // 5.4.3
        if let Some(old) = trusted {
            // 5.4.3.1
            if new.common.version < old.common.version {
                return Err(Error::Rollback {
                    role: "timestamp".into(),
                    trusted: old.common.version,
                    new: new.common.version,
                });
            }
            // Deviation (python-tuf behaviour, asserted by tuf-conformance):
            // an equal version keeps the trusted file, even if the bytes
            // differ; it must still pass the freeze check.
            if new.common.version == old.common.version {
                if self.is_expired(&old.common.expires) {
                    return Err(Self::expired("timestamp", &old.common.expires));
                }
                self.timestamp = Some(old);
                return Ok(());
            }
            // 5.4.3.2
            if new.snapshot_meta.version < old.snapshot_meta.version {
                return Err(Error::Rollback {
                    role: "snapshot".into(),
                    trusted: old.snapshot_meta.version,
                    new: new.snapshot_meta.version,
                });
            }
        }
        // 5.4.4
        if self.is_expired(&new.common.expires) {
            return Err(Self::expired("timestamp", &new.common.expires));
        }
        // 5.4.5
        self.persist_durable("timestamp", bytes)?;
        self.timestamp = Some(new);
        Ok(())
    }

    // -- 5.5 snapshot ------------------------------------------------------

    /// The snapshot trusted by the previous update, if it still verifies
    /// under the current root.
    fn previous_snapshot(&self) -> Option<Snapshot> {
        let bytes = self.dir.load("snapshot")?;
        let env = Envelope::parse(&bytes, "snapshot").ok()?;
        let snap = Snapshot::from_envelope(&env).ok()?;
        self.verify_top_level(&env, "snapshot").ok()?;
        Some(snap)
    }

    /// 5.5.1–5.5.7.
    fn step_5_5_update_snapshot(&mut self) -> Result<()> {
        let ts_meta = self
            .timestamp
            .as_ref()
            .ok_or(Error::State("snapshot update before timestamp"))?
            .snapshot_meta
            .clone();
        let trusted = self.previous_snapshot();
        // Not a spec step (python-tuf caching): the trusted snapshot is
        // already the version the new timestamp lists and is not expired,
        // so it is final as it stands.
        if let Some(old) = &trusted {
            if old.common.version == ts_meta.version && !self.is_expired(&old.common.expires) {
                self.snapshot = trusted;
                return Ok(());
            }
        }
        // 5.5.1
        let version = self.root.consistent_snapshot.then_some(ts_meta.version);
        let url = self.metadata_url("snapshot", version);
        let max = ts_meta
            .length
            .unwrap_or(self.config.limits.snapshot_max_length);
        let bytes = self.fetch_capped(&url, max)?;
        // 5.5.7 (persist) is prepared while 5.5.2–5.5.6 run.
        // 5.5.2–5.5.6
        let new = self.verify_snapshot(&bytes, &ts_meta, trusted.as_ref())?;
        // 5.5.7
        self.persist_durable("snapshot", bytes)?;
        self.snapshot = Some(new);
        Ok(())
    }

    /// 5.5.2–5.5.6.
    fn verify_snapshot(
        &self,
        bytes: &[u8],
        ts_meta: &MetaFile,
        trusted: Option<&Snapshot>,
    ) -> Result<Snapshot> {
        // 5.5.2
        check_meta_length_and_hashes("snapshot.json", bytes, ts_meta)?;
        let env = Envelope::parse(bytes, "snapshot")?;
        let new = Snapshot::from_envelope(&env)?;
        // 5.5.3
        self.verify_top_level(&env, "snapshot")?;
        // 5.5.4
        if new.common.version != ts_meta.version {
            return Err(Error::VersionMismatch {
                role: "snapshot".into(),
                listed_by: "timestamp".into(),
                expected: ts_meta.version,
                actual: new.common.version,
            });
        }
        // 5.5.5
        if let Some(old) = trusted {
            for (file, old_meta) in &old.meta {
                let Some(new_meta) = new.meta.get(file) else {
                    return Err(Error::MissingMeta {
                        file: file.clone(),
                        listed_by: format!("snapshot v{}", new.common.version),
                    });
                };
                if new_meta.version < old_meta.version {
                    return Err(Error::Rollback {
                        role: file.strip_suffix(".json").unwrap_or(file).to_string(),
                        trusted: old_meta.version,
                        new: new_meta.version,
                    });
                }
            }
        }
        // 5.5.6
        if self.is_expired(&new.common.expires) {
            return Err(Self::expired("snapshot", &new.common.expires));
        }
        Ok(new)
    }

    // -- 5.6 targets -------------------------------------------------------

    /// The keys that may sign `role`: the root's for top-level targets, the
    /// delegator's delegation otherwise.
    fn signing_keys(
        &self,
        role: &str,
        delegator: Option<&str>,
    ) -> Result<(BTreeMap<String, PublicKey>, RoleKeys, String)> {
        match delegator {
            None => Ok((
                self.root.keys.clone(),
                self.root.role("targets").clone(),
                "root".to_string(),
            )),
            Some(parent) => {
                let unknown = || Error::UnknownDelegation {
                    role: role.to_string(),
                    delegator: parent.to_string(),
                };
                let delegations = self
                    .targets
                    .get(parent)
                    .and_then(|t| t.delegations.as_ref())
                    .ok_or_else(unknown)?;
                let rk = delegations.role_keys(role).ok_or_else(unknown)?;
                Ok((delegations.keys.clone(), rk.clone(), parent.to_string()))
            }
        }
    }

    /// 5.6.1–5.6.6 for top-level targets (`delegator` None) and, with the
    /// delegator's keys, for each delegated role the search visits.
    fn step_5_6_update_targets(&mut self, role: &str, delegator: Option<&str>) -> Result<()> {
        if self.targets.contains_key(role) {
            return Ok(());
        }
        let snapshot = self
            .snapshot
            .as_ref()
            .ok_or(Error::State("targets update before snapshot"))?;
        let file = format!("{role}.json");
        let meta = snapshot
            .meta
            .get(&file)
            .cloned()
            .ok_or_else(|| Error::MissingMeta {
                file: file.clone(),
                listed_by: format!("snapshot v{}", snapshot.common.version),
            })?;
        let (keys, rk, signer) = self.signing_keys(role, delegator)?;
        // Not a spec step (python-tuf caching): a stored file that passes
        // every check below is final as it stands.
        if let Some(bytes) = self.dir.load(role) {
            if let Ok(t) = self.verify_targets(role, &file, bytes, &meta, &keys, &rk, &signer) {
                self.targets.insert(role.to_string(), t);
                return Ok(());
            }
        }
        // 5.6.1
        let version = self.root.consistent_snapshot.then_some(meta.version);
        let url = self.metadata_url(role, version);
        let max = meta.length.unwrap_or(self.config.limits.targets_max_length);
        let bytes = self.fetch_capped(&url, max)?;
        // 5.6.2–5.6.5, with 5.6.6 (persist) prepared alongside.
        // 5.6.2–5.6.5
        let t = self.verify_targets(role, &file, bytes, &meta, &keys, &rk, &signer)?;
        // 5.6.6: a verified cache, written atomically without fsync.
        self.dir.persist_cache(role, t.bytes())?;
        self.targets.insert(role.to_string(), t);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn verify_targets(
        &self,
        role: &str,
        file: &str,
        bytes: Vec<u8>,
        meta: &MetaFile,
        keys: &BTreeMap<String, PublicKey>,
        rk: &RoleKeys,
        signer: &str,
    ) -> Result<Targets> {
        // 5.6.2: hashes (and length) listed by snapshot, if any.
        check_meta_length_and_hashes(file, &bytes, meta)?;
        let large = bytes.len() > PARALLEL_VERIFY_BYTES;
        let env = Envelope::from_vec(bytes, role)?;
        // 5.6.3: signed by a threshold of the delegator's keys. For a large
        // file the signature (hashing megabytes) is checked on a second
        // thread while this one validates every target entry.
        let verify = || env.verify_threshold(role, signer, keys, &rk.keyids, rk.threshold);
        let (signed, head) = if large {
            std::thread::scope(|s| {
                let sig = s.spawn(verify);
                let head = Targets::check(&env, role);
                let signed = sig
                    .join()
                    .unwrap_or(Err(Error::State("signature thread panicked")));
                (signed, head)
            })
        } else {
            (verify(), Targets::check(&env, role))
        };
        signed?;
        let t = Targets::from_head(head?, env);
        // 5.6.4
        if t.common.version != meta.version {
            return Err(Error::VersionMismatch {
                role: role.to_string(),
                listed_by: "snapshot".into(),
                expected: meta.version,
                actual: t.common.version,
            });
        }
        // 5.6.5
        if self.is_expired(&t.common.expires) {
            return Err(Self::expired(role, &t.common.expires));
        }
        Ok(t)
    }

    /// 5.6.7: pre-order depth-first search of the delegation graph.
    fn step_5_6_7_search(&mut self, target: &str) -> Result<Option<TargetInfo>> {
        let mut stack: Vec<(String, Option<String>)> = vec![("targets".to_string(), None)];
        let mut visited: HashSet<String> = HashSet::new();
        while visited.len() <= self.config.limits.max_delegations as usize {
            let Some((role, delegator)) = stack.pop() else {
                break;
            };
            // 5.6.7.1: skip roles already visited (cycles).
            if visited.contains(&role) {
                continue;
            }
            // Each delegated role is verified against its delegator's keys.
            self.step_5_6_update_targets(&role, delegator.as_deref())?;
            let metadata = &self.targets[&role];
            // 5.6.7.1: this role lists the target: go to 5.7.
            if let Some(file) = metadata.target(target) {
                return Ok(Some(TargetInfo {
                    path: target.to_string(),
                    length: file.length,
                    hashes: file.hashes,
                    custom: file.custom,
                    role: role.clone(),
                }));
            }
            visited.insert(role.clone());
            // 5.6.7.2: delegations in order of appearance.
            if let Some(delegations) = &metadata.delegations {
                let mut children = Vec::new();
                for (child, terminating) in delegations.roles_for_target(target) {
                    children.push((child, Some(role.clone())));
                    // 5.6.7.2.2: a terminating delegation ends the search
                    // after its own subtree.
                    if terminating {
                        stack.clear();
                        break;
                    }
                }
                // 5.6.7.2.3: non-terminating delegations continue in order.
                stack.extend(children.into_iter().rev());
            }
        }
        if !stack.is_empty() {
            log::warn!(
                "target search for {target:?} stopped after {} roles (max_delegations)",
                visited.len()
            );
        }
        Ok(None)
    }
}

/// 5.1: the fixed update start time, as seconds since the epoch.
fn step_5_1_record_time(start: SystemTime) -> i64 {
    match start.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs_f64().ceil() as i64),
    }
}

/// 5.2: load the trusted root. It must parse and be signed by a threshold
/// of its own root keys (as python-tuf checks): a corrupt or unsigned
/// initial root fails before any request is made.
fn step_5_2_load_trusted_root(dir: &MetadataDir) -> Result<Root> {
    let path = dir.path("root");
    let bytes = std::fs::read(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::NoTrustedRoot { path: path.clone() }
        } else {
            Error::io(&path, e)
        }
    })?;
    let env = Envelope::parse(&bytes, "root")?;
    let root = Root::from_envelope(&env)?;
    let rk = root.role("root");
    env.verify_threshold("root", "trusted root", &root.keys, &rk.keyids, rk.threshold)?;
    Ok(root)
}

/// A target's bytes as they arrive, checked against the signed length and
/// hashes ([`Updater::open_target`]).
pub struct TargetReader<'a> {
    inner: std::io::Take<Box<dyn Read + Send + 'a>>,
    info: TargetInfo,
    what: String,
    url: String,
    total: u64,
    hashers: Option<Vec<(String, String, Hasher)>>,
    done: bool,
}

impl std::fmt::Debug for TargetReader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetReader")
            .field("target", &self.info.path)
            .field("url", &self.url)
            .field("read", &self.total)
            .finish()
    }
}

impl TargetReader<'_> {
    fn fail(e: Error) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}

impl Read for TargetReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        if self.hashers.is_none() {
            let v = StreamVerifier::new(&self.info, &self.what, &self.url).map_err(Self::fail)?;
            self.hashers = Some(v.hashers);
        }
        let n = self.inner.read(buf)?;
        let mut v = StreamVerifier {
            info: &self.info,
            what: &self.what,
            source: &self.url,
            total: self.total,
            hashers: self.hashers.take().unwrap_or_default(),
        };
        if n == 0 {
            self.done = true;
            v.finish().map_err(Self::fail)?;
            return Ok(0);
        }
        let r = v.update(&buf[..n]);
        self.total = v.total;
        self.hashers = Some(v.hashers);
        r.map_err(Self::fail)?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "tools")]
    #[test]
    fn updater_can_move_to_a_blocking_task() {
        fn assert_send<T: Send>() {}
        assert_send::<Updater<crate::transport::HttpTransport>>();
    }

    #[test]
    fn time_before_epoch_is_negative() {
        assert_eq!(step_5_1_record_time(UNIX_EPOCH), 0);
        assert_eq!(
            step_5_1_record_time(UNIX_EPOCH - std::time::Duration::from_millis(1500)),
            -2
        );
    }

    #[test]
    fn stream_verifier_refuses_unknown_algorithms() {
        let info = TargetInfo {
            path: "a".into(),
            length: 1,
            hashes: [("md5".to_string(), "00".to_string())].into(),
            custom: None,
            role: "targets".into(),
        };
        assert!(matches!(
            StreamVerifier::new(&info, "a", "u"),
            Err(Error::UnsupportedHashAlgorithm { .. })
        ));
    }
}
