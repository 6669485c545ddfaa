//! Repository tooling: keys, staging, signing and publishing a TUF
//! repository of cairn OS images (behind `cairn-image tuf ...`).
//!
//! A repository is a working directory:
//!
//! ```text
//! REPO/config.json            expiry periods per role (days)
//! REPO/metadata/              everything clients see:
//!     N.root.json, root.json  every root version, and the latest unversioned
//!     N.targets.json, targets.json, N.snapshot.json, snapshot.json, timestamp.json
//! REPO/targets/<dir>/<sha256>.<name>   target files (consistent snapshots)
//! REPO/staged/targets.json    the next targets `signed` body (add-target), until `sign`
//! KEYS/<role>-<keyid16>.pem   ed25519 private keys, PKCS#8 PEM, mode 0600
//!                             (KEYS defaults to REPO/keys; never published)
//! ```
//!
//! Every signing operation checks first that enough keys are present for
//! the role's threshold, that the trusted root has not expired, and that the
//! metadata the new file refers to exists and has not expired
//! ([`RepoError::MissingKeys`], [`RepoError::ExpiredRole`],
//! [`RepoError::MissingRole`]). Private keys are only read from and written
//! to key files; nothing prints them.

#[cfg(feature = "tools")]
pub mod cli;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use ed25519_dalek::Signer as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::canonical::to_canonical_vec;
use crate::crypto::key_id;
use crate::metadata::{format_expiry, parse_expiry, TOP_LEVEL_ROLES};
use crate::store::write_atomic;
use crate::ImageMetadata;

/// The `spec_version` this tooling writes.
pub const SPEC_VERSION: &str = "1.0.31";

/// Errors of the repository tooling.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A repository file is not what this tool wrote.
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// `init` on a directory that already holds a repository.
    #[error("{0} already holds a TUF repository")]
    AlreadyInitialised(PathBuf),
    /// Fewer private keys than the role's threshold are available.
    #[error("cannot sign {role}: {have} of its keys found in {keys_dir}, threshold is {need}")]
    MissingKeys {
        /// The role.
        role: String,
        /// Keys found.
        have: usize,
        /// Threshold.
        need: u64,
        /// Where keys were looked for.
        keys_dir: PathBuf,
    },
    /// Metadata a signature would depend on has expired.
    #[error("refusing to sign: {role} expired at {expires} (re-sign {role} first)")]
    ExpiredRole {
        /// The expired role.
        role: String,
        /// Its `expires`.
        expires: String,
    },
    /// Metadata a signature would depend on does not exist.
    #[error("refusing to sign: no {role} metadata in the repository")]
    MissingRole {
        /// The missing role.
        role: String,
    },
    /// Not a role this command can sign.
    #[error("unknown role {0:?} (root, targets, snapshot or timestamp)")]
    UnknownRole(String),
    /// A target name that would be unsafe as a path.
    #[error("invalid target name {name:?}: {reason}")]
    InvalidTargetName {
        /// The name given.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// Thresholds and key counts that cannot work.
    #[error("invalid {role} keys: {reason}")]
    InvalidThreshold {
        /// The role.
        role: String,
        /// Why.
        reason: String,
    },
    /// Nothing to publish into.
    #[error("publish target {0} is inside the repository")]
    PublishIntoRepo(PathBuf),
}

type Result<T, E = RepoError> = std::result::Result<T, E>;

fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> RepoError {
    let path = path.into();
    move |source| RepoError::Io { path, source }
}

fn corrupt(path: &Path, reason: impl Into<String>) -> RepoError {
    RepoError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn tuf_err(e: crate::Error) -> RepoError {
    match e {
        crate::Error::Io { path, source } => RepoError::Io { path, source },
        e => RepoError::Corrupt {
            path: PathBuf::new(),
            reason: e.to_string(),
        },
    }
}

/// A validated target name: relative, `/`-separated, no empty, `.` or `..`
/// segments, no backslashes or control characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TargetName(String);

impl TargetName {
    /// Validate `name`.
    pub fn new(name: &str) -> Result<TargetName> {
        let bad = |reason| RepoError::InvalidTargetName {
            name: name.to_string(),
            reason,
        };
        if name.is_empty() {
            return Err(bad("empty"));
        }
        if name.starts_with('/') {
            return Err(bad("absolute path"));
        }
        if name.chars().any(|c| c == '\\' || c.is_control()) {
            return Err(bad("backslash or control character"));
        }
        if name
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Err(bad("empty, '.' or '..' path segment"));
        }
        Ok(TargetName(name.to_string()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Expiry periods in days, per role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpiryDays {
    /// Root (default 365).
    pub root: u32,
    /// Targets (default 90).
    pub targets: u32,
    /// Snapshot (default 7).
    pub snapshot: u32,
    /// Timestamp (default 1).
    pub timestamp: u32,
}

impl Default for ExpiryDays {
    fn default() -> Self {
        ExpiryDays {
            root: 365,
            targets: 90,
            snapshot: 7,
            timestamp: 1,
        }
    }
}

impl ExpiryDays {
    fn for_role(&self, role: &str) -> u32 {
        match role {
            "root" => self.root,
            "targets" => self.targets,
            "snapshot" => self.snapshot,
            _ => self.timestamp,
        }
    }
}

/// How many keys a role gets and how many must sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySpec {
    /// Keys generated.
    pub keys: u32,
    /// Signatures required.
    pub threshold: u32,
}

impl Default for KeySpec {
    fn default() -> Self {
        KeySpec {
            keys: 1,
            threshold: 1,
        }
    }
}

/// Options for [`Repository::init`].
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    /// Root keys.
    pub root: KeySpec,
    /// Targets keys.
    pub targets: KeySpec,
    /// Snapshot keys.
    pub snapshot: KeySpec,
    /// Timestamp keys.
    pub timestamp: KeySpec,
    /// Expiry periods.
    pub expiry: ExpiryDays,
}

/// Options for [`Repository::rotate_key`].
#[derive(Debug, Clone, Default)]
pub struct RotateOptions {
    /// Key ids to remove from the role; empty means all of its current keys.
    pub remove: Vec<String>,
    /// New keys to generate; `None` means as many as were removed (at least 1).
    pub add: Option<u32>,
    /// New threshold; `None` keeps the current one.
    pub threshold: Option<u32>,
}

/// What a signing operation wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// Role signed.
    pub role: String,
    /// Its new version.
    pub version: u64,
}

/// An ed25519 signing key with its TUF key id. Debug shows the id only.
struct RepoKey {
    keyid: String,
    key: ed25519_dalek::SigningKey,
}

impl std::fmt::Debug for RepoKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RepoKey({})", self.keyid)
    }
}

impl RepoKey {
    fn generate() -> Result<RepoKey> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| RepoError::Io {
            path: PathBuf::from("getrandom"),
            source: std::io::Error::other(e.to_string()),
        })?;
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        seed.fill(0);
        Ok(Self::from_key(key))
    }

    fn from_key(key: ed25519_dalek::SigningKey) -> RepoKey {
        let keyid = key_id(
            "ed25519",
            "ed25519",
            &hex::encode(key.verifying_key().as_bytes()),
        );
        RepoKey { keyid, key }
    }

    fn public_json(&self) -> Value {
        json!({
            "keytype": "ed25519",
            "scheme": "ed25519",
            "keyval": {"public": hex::encode(self.key.verifying_key().as_bytes())},
        })
    }

    fn save(&self, dir: &Path, role: &str) -> Result<PathBuf> {
        let path = dir.join(format!("{role}-{}.pem", &self.keyid[..16]));
        let pem = self
            .key
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .map_err(|e| corrupt(&path, format!("cannot encode key: {e}")))?;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(&path))?;
        f.write_all(pem.as_bytes()).map_err(io_err(&path))?;
        f.sync_all().map_err(io_err(&path))?;
        Ok(path)
    }

    fn load(path: &Path) -> Result<RepoKey> {
        let text = fs::read_to_string(path).map_err(io_err(path))?;
        let key = ed25519_dalek::SigningKey::from_pkcs8_pem(&text)
            .map_err(|_| corrupt(path, "not an ed25519 PKCS#8 PEM private key"))?;
        Ok(Self::from_key(key))
    }

    fn sign(&self, canonical: &[u8]) -> Value {
        json!({"keyid": self.keyid, "sig": hex::encode(self.key.sign(canonical).to_bytes())})
    }
}

/// Sign a `signed` body with `keys`: the metadata file bytes. Root is
/// indented for people reviewing key changes; the others are compact
/// (targets with thousands of entries is a third smaller, and parses faster).
fn sign_metadata(signed: &Value, keys: &[&RepoKey]) -> Vec<u8> {
    let canonical = to_canonical_vec(signed).expect("metadata built here has no floats");
    let sigs: Vec<Value> = keys.iter().map(|k| k.sign(&canonical)).collect();
    let doc = json!({"signed": signed, "signatures": sigs});
    let mut out = if signed["_type"] == "root" {
        serde_json::to_vec_pretty(&doc)
    } else {
        serde_json::to_vec(&doc)
    }
    .expect("JSON values serialise");
    out.push(b'\n');
    out
}

/// A repository working directory opened for signing.
#[derive(Debug)]
pub struct Repository {
    dir: PathBuf,
    keys_dir: PathBuf,
    now: i64,
    expiry: ExpiryDays,
    keys: BTreeMap<String, RepoKey>,
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Repository {
    /// Create a repository: generate keys, write and sign root, targets,
    /// snapshot and timestamp version 1. `keys_dir` defaults to `dir/keys`.
    pub fn init(
        dir: &Path,
        keys_dir: Option<&Path>,
        opts: &InitOptions,
        now: SystemTime,
    ) -> Result<Repository> {
        if dir.join("metadata").join("root.json").exists() {
            return Err(RepoError::AlreadyInitialised(dir.to_path_buf()));
        }
        let keys_dir = keys_dir
            .map(Path::to_path_buf)
            .unwrap_or_else(|| dir.join("keys"));
        for d in [dir.join("metadata"), dir.join("targets"), keys_dir.clone()] {
            fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        fs::set_permissions(&keys_dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err(&keys_dir))?;
        let cfg = dir.join("config.json");
        let mut cfg_bytes = serde_json::to_vec_pretty(&json!({"expiry_days": opts.expiry}))
            .expect("config serialises");
        cfg_bytes.push(b'\n');
        write_atomic(&cfg, &cfg_bytes).map_err(tuf_err)?;

        let mut repo = Repository {
            dir: dir.to_path_buf(),
            keys_dir,
            now: unix(now),
            expiry: opts.expiry,
            keys: BTreeMap::new(),
        };
        let mut keys = Map::new();
        let mut roles = Map::new();
        for (role, spec) in [
            ("root", opts.root),
            ("targets", opts.targets),
            ("snapshot", opts.snapshot),
            ("timestamp", opts.timestamp),
        ] {
            check_spec(role, spec.keys, spec.threshold)?;
            let mut ids = Vec::new();
            for _ in 0..spec.keys {
                let k = RepoKey::generate()?;
                k.save(&repo.keys_dir, role)?;
                keys.insert(k.keyid.clone(), k.public_json());
                ids.push(k.keyid.clone());
                repo.keys.insert(k.keyid.clone(), k);
            }
            roles.insert(
                role.to_string(),
                json!({"keyids": ids, "threshold": spec.threshold}),
            );
        }
        let root = json!({
            "_type": "root",
            "spec_version": SPEC_VERSION,
            "version": 1,
            "expires": repo.expires("root"),
            "consistent_snapshot": true,
            "keys": keys,
            "roles": roles,
        });
        repo.write_root(&root, &[])?;
        let targets = json!({
            "_type": "targets",
            "spec_version": SPEC_VERSION,
            "version": 0,
            "expires": repo.expires("targets"),
            "targets": {},
        });
        repo.write_staged_targets(&targets)?;
        repo.sign(&[])?;
        Ok(repo)
    }

    /// Open an existing repository. `keys_dir` defaults to `dir/keys`.
    pub fn open(dir: &Path, keys_dir: Option<&Path>, now: SystemTime) -> Result<Repository> {
        let cfg_path = dir.join("config.json");
        let cfg: Value = read_json(&cfg_path)?;
        let expiry: ExpiryDays = serde_json::from_value(cfg["expiry_days"].clone())
            .map_err(|e| corrupt(&cfg_path, e.to_string()))?;
        let keys_dir = keys_dir
            .map(Path::to_path_buf)
            .unwrap_or_else(|| dir.join("keys"));
        let mut keys = BTreeMap::new();
        if let Ok(entries) = fs::read_dir(&keys_dir) {
            for entry in entries {
                let path = entry.map_err(io_err(&keys_dir))?.path();
                if path.extension().is_some_and(|e| e == "pem") {
                    let k = RepoKey::load(&path)?;
                    keys.insert(k.keyid.clone(), k);
                }
            }
        }
        Ok(Repository {
            dir: dir.to_path_buf(),
            keys_dir,
            now: unix(now),
            expiry,
            keys,
        })
    }

    fn metadata_dir(&self) -> PathBuf {
        self.dir.join("metadata")
    }

    fn staged_path(&self) -> PathBuf {
        self.dir.join("staged").join("targets.json")
    }

    fn expires(&self, role: &str) -> String {
        format_expiry(self.now + i64::from(self.expiry.for_role(role)) * 86_400)
    }

    /// The current `signed` body of a top-level role, if published.
    fn current(&self, role: &str) -> Result<Option<Value>> {
        let path = self.metadata_dir().join(format!("{role}.json"));
        if !path.exists() {
            return Ok(None);
        }
        let doc: Value = read_json(&path)?;
        Ok(Some(doc["signed"].clone()))
    }

    fn require(&self, role: &str) -> Result<Value> {
        self.current(role)?.ok_or_else(|| RepoError::MissingRole {
            role: role.to_string(),
        })
    }

    fn check_not_expired(&self, role: &str, signed: &Value) -> Result<()> {
        let expires = signed["expires"].as_str().unwrap_or("");
        match parse_expiry(expires) {
            Some(t) if t > self.now => Ok(()),
            _ => Err(RepoError::ExpiredRole {
                role: role.to_string(),
                expires: expires.to_string(),
            }),
        }
    }

    /// Keys available for `role` under `root`, at least its threshold.
    fn signers<'a>(&'a self, root: &Value, role: &str) -> Result<Vec<&'a RepoKey>> {
        let r = &root["roles"][role];
        let need = r["threshold"].as_u64().unwrap_or(1);
        let have: Vec<&RepoKey> = r["keyids"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|id| id.as_str().and_then(|id| self.keys.get(id)))
            .collect();
        if (have.len() as u64) < need {
            return Err(RepoError::MissingKeys {
                role: role.to_string(),
                have: have.len(),
                need,
                keys_dir: self.keys_dir.clone(),
            });
        }
        Ok(have)
    }

    fn write_root(&self, signed: &Value, extra_signers: &[&RepoKey]) -> Result<Signed> {
        let mut signers = self.signers(signed, "root")?;
        for k in extra_signers {
            if !signers.iter().any(|s| s.keyid == k.keyid) {
                signers.push(k);
            }
        }
        let bytes = sign_metadata(signed, &signers);
        let version = signed["version"].as_u64().unwrap_or(1);
        let md = self.metadata_dir();
        write_atomic(&md.join(format!("{version}.root.json")), &bytes).map_err(tuf_err)?;
        write_atomic(&md.join("root.json"), &bytes).map_err(tuf_err)?;
        Ok(Signed {
            role: "root".into(),
            version,
        })
    }

    fn write_staged_targets(&self, signed: &Value) -> Result<()> {
        let path = self.staged_path();
        let dir = path.parent().expect("staged path has a parent");
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let bytes = serde_json::to_vec_pretty(signed).expect("JSON values serialise");
        write_atomic(&path, &bytes).map_err(tuf_err)
    }

    fn staged_targets(&self) -> Result<Value> {
        let path = self.staged_path();
        if path.exists() {
            return read_json(&path);
        }
        self.require("targets")
    }

    /// Copy `file` into the repository as target `name` and stage its entry
    /// (length, sha256, `custom`) for the next targets version.
    pub fn add_target_file(
        &mut self,
        name: &TargetName,
        file: &Path,
        custom: Option<Value>,
    ) -> Result<()> {
        let bytes = fs::read(file).map_err(io_err(file))?;
        let digest = hex::encode(Sha256::digest(&bytes));
        let stored = self.target_store_path(name, &digest);
        if let Some(parent) = stored.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        write_atomic(&stored, &bytes).map_err(tuf_err)?;
        self.add_target_entry(name, bytes.len() as u64, &digest, custom)
    }

    /// Stage a target entry without a file (the file is stored elsewhere).
    pub fn add_target_entry(
        &mut self,
        name: &TargetName,
        length: u64,
        sha256: &str,
        custom: Option<Value>,
    ) -> Result<()> {
        let mut staged = self.staged_targets()?;
        let mut entry = json!({"length": length, "hashes": {"sha256": sha256}});
        if let Some(c) = custom {
            entry["custom"] = c;
        }
        staged["targets"][name.as_str()] = entry;
        self.write_staged_targets(&staged)
    }

    /// Stage many entries at once (one staged-file write).
    pub fn add_target_entries(
        &mut self,
        entries: impl IntoIterator<Item = (TargetName, u64, String, Option<Value>)>,
    ) -> Result<()> {
        let mut staged = self.staged_targets()?;
        for (name, length, sha256, custom) in entries {
            let mut entry = json!({"length": length, "hashes": {"sha256": sha256}});
            if let Some(c) = custom {
                entry["custom"] = c;
            }
            staged["targets"][name.as_str()] = entry;
        }
        self.write_staged_targets(&staged)
    }

    fn target_store_path(&self, name: &TargetName, sha256: &str) -> PathBuf {
        let (dir, base) = match name.as_str().rsplit_once('/') {
            Some((d, b)) => (Some(d), b),
            None => (None, name.as_str()),
        };
        let mut p = self.dir.join("targets");
        if let Some(d) = dir {
            p = p.join(d);
        }
        p.join(format!("{sha256}.{base}"))
    }

    /// Sign roles. With `roles` empty: staged targets (if any), then a new
    /// snapshot and timestamp. Naming a role re-signs it with a new version
    /// and expiry; targets is always followed by snapshot and timestamp,
    /// snapshot by timestamp.
    pub fn sign(&mut self, roles: &[&str]) -> Result<Vec<Signed>> {
        for r in roles {
            if !TOP_LEVEL_ROLES.contains(r) {
                return Err(RepoError::UnknownRole(r.to_string()));
            }
        }
        let mut out = Vec::new();
        if roles.contains(&"root") {
            out.push(self.resign_root()?);
        }
        let root = self.require("root")?;
        self.check_not_expired("root", &root)?;
        let staged = self.staged_path().exists();
        let do_targets = staged || roles.contains(&"targets");
        let do_snapshot = do_targets || roles.is_empty() || roles.contains(&"snapshot");
        let do_timestamp = do_snapshot || roles.contains(&"timestamp");
        // Check every needed key before writing anything.
        for (role, needed) in [
            ("targets", do_targets),
            ("snapshot", do_snapshot),
            ("timestamp", do_timestamp),
        ] {
            if needed {
                self.signers(&root, role)?;
            }
        }
        if do_targets {
            out.push(self.sign_targets(&root)?);
        }
        if do_snapshot {
            out.push(self.sign_snapshot(&root)?);
        }
        if do_timestamp {
            out.push(self.sign_timestamp(&root)?);
        }
        Ok(out)
    }

    /// A new timestamp version with a fresh expiry (the online key's job).
    pub fn refresh_timestamp(&mut self) -> Result<Signed> {
        let root = self.require("root")?;
        self.check_not_expired("root", &root)?;
        self.sign_timestamp(&root)
    }

    fn resign_root(&mut self) -> Result<Signed> {
        let mut root = self.require("root")?;
        let v = root["version"].as_u64().unwrap_or(1) + 1;
        root["version"] = json!(v);
        root["expires"] = json!(self.expires("root"));
        // Same keys: the old root's threshold is met by the same signers.
        self.write_root(&root, &[])
    }

    fn sign_targets(&mut self, root: &Value) -> Result<Signed> {
        let mut signed = self.staged_targets()?;
        let current = self.current("targets")?;
        let v = current
            .as_ref()
            .and_then(|c| c["version"].as_u64())
            .unwrap_or(0)
            + 1;
        signed["version"] = json!(v);
        signed["expires"] = json!(self.expires("targets"));
        signed["spec_version"] = json!(SPEC_VERSION);
        let keys = self.signers(root, "targets")?;
        let bytes = sign_metadata(&signed, &keys);
        let md = self.metadata_dir();
        write_atomic(&md.join(format!("{v}.targets.json")), &bytes).map_err(tuf_err)?;
        write_atomic(&md.join("targets.json"), &bytes).map_err(tuf_err)?;
        let staged = self.staged_path();
        if staged.exists() {
            fs::remove_file(&staged).map_err(io_err(&staged))?;
        }
        Ok(Signed {
            role: "targets".into(),
            version: v,
        })
    }

    fn sign_snapshot(&mut self, root: &Value) -> Result<Signed> {
        let targets = self.require("targets")?;
        self.check_not_expired("targets", &targets)?;
        let v = self
            .current("snapshot")?
            .and_then(|c| c["version"].as_u64())
            .unwrap_or(0)
            + 1;
        let signed = json!({
            "_type": "snapshot",
            "spec_version": SPEC_VERSION,
            "version": v,
            "expires": self.expires("snapshot"),
            "meta": {"targets.json": {"version": targets["version"]}},
        });
        let keys = self.signers(root, "snapshot")?;
        let bytes = sign_metadata(&signed, &keys);
        let md = self.metadata_dir();
        write_atomic(&md.join(format!("{v}.snapshot.json")), &bytes).map_err(tuf_err)?;
        write_atomic(&md.join("snapshot.json"), &bytes).map_err(tuf_err)?;
        Ok(Signed {
            role: "snapshot".into(),
            version: v,
        })
    }

    fn sign_timestamp(&mut self, root: &Value) -> Result<Signed> {
        let snap_path = self.metadata_dir().join("snapshot.json");
        let snapshot = self.require("snapshot")?;
        self.check_not_expired("snapshot", &snapshot)?;
        let snap_bytes = fs::read(&snap_path).map_err(io_err(&snap_path))?;
        let v = self
            .current("timestamp")?
            .and_then(|c| c["version"].as_u64())
            .unwrap_or(0)
            + 1;
        let signed = json!({
            "_type": "timestamp",
            "spec_version": SPEC_VERSION,
            "version": v,
            "expires": self.expires("timestamp"),
            "meta": {"snapshot.json": {
                "version": snapshot["version"],
                "length": snap_bytes.len(),
                "hashes": {"sha256": hex::encode(Sha256::digest(&snap_bytes))},
            }},
        });
        let keys = self.signers(root, "timestamp")?;
        let bytes = sign_metadata(&signed, &keys);
        write_atomic(&self.metadata_dir().join("timestamp.json"), &bytes).map_err(tuf_err)?;
        Ok(Signed {
            role: "timestamp".into(),
            version: v,
        })
    }

    /// Rotate `role`'s keys through a new root version that clients holding
    /// the old root accept: it is signed by a threshold of the old root keys
    /// and of the new ones. Rotating timestamp/snapshot/targets keys also
    /// re-signs that role (and the ones that follow it) with the new keys.
    /// Rotated-out key files are left in place.
    pub fn rotate_key(&mut self, role: &str, opts: &RotateOptions) -> Result<Vec<Signed>> {
        if !TOP_LEVEL_ROLES.contains(&role) {
            return Err(RepoError::UnknownRole(role.to_string()));
        }
        let old_root = self.require("root")?;
        // The old root's signers must be present before anything changes.
        let old_signers: Vec<String> = self
            .signers(&old_root, "root")?
            .iter()
            .map(|k| k.keyid.clone())
            .collect();
        let mut root = old_root.clone();
        let current: Vec<String> = root["roles"][role]["keyids"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        let remove: BTreeSet<String> = if opts.remove.is_empty() {
            current.iter().cloned().collect()
        } else {
            opts.remove.iter().cloned().collect()
        };
        let add = opts.add.unwrap_or((remove.len() as u32).max(1));
        let mut ids: Vec<String> = current
            .into_iter()
            .filter(|id| !remove.contains(id))
            .collect();
        let threshold = opts
            .threshold
            .unwrap_or(root["roles"][role]["threshold"].as_u64().unwrap_or(1) as u32);
        check_spec(role, ids.len() as u32 + add, threshold)?;
        let mut new_keys = Vec::new();
        for _ in 0..add {
            let k = RepoKey::generate()?;
            root["keys"][&k.keyid] = k.public_json();
            ids.push(k.keyid.clone());
            new_keys.push(k);
        }
        root["roles"][role] = json!({"keyids": ids, "threshold": threshold});
        // Drop keys no role uses any more.
        let used: BTreeSet<String> = TOP_LEVEL_ROLES
            .iter()
            .flat_map(|r| {
                root["roles"][*r]["keyids"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect::<Vec<_>>()
            })
            .collect();
        if let Some(keys) = root["keys"].as_object_mut() {
            keys.retain(|id, _| used.contains(id));
        }
        let v = root["version"].as_u64().unwrap_or(1) + 1;
        root["version"] = json!(v);
        root["expires"] = json!(self.expires("root"));
        // Save new keys only now that the new root is decided.
        for k in new_keys {
            k.save(&self.keys_dir, role)?;
            self.keys.insert(k.keyid.clone(), k);
        }
        let old: Vec<&RepoKey> = old_signers
            .iter()
            .filter_map(|id| self.keys.get(id))
            .collect();
        let mut out = vec![self.write_root(&root, &old)?];
        match role {
            "targets" => out.extend(self.sign(&["targets"])?),
            "snapshot" => out.extend(self.sign(&["snapshot"])?),
            "timestamp" => out.push(self.refresh_timestamp()?),
            _ => {}
        }
        Ok(out)
    }

    /// Copy the published view (`metadata/` and `targets/`) into `out`:
    /// targets first, then metadata with `timestamp.json` last, each file
    /// replaced atomically, so a client reading `out` meanwhile never sees
    /// metadata that points at missing files.
    pub fn publish(&self, out: &Path) -> Result<Vec<PathBuf>> {
        let out_abs = fs::canonicalize(out).unwrap_or_else(|_| out.to_path_buf());
        let repo_abs = fs::canonicalize(&self.dir).unwrap_or_else(|_| self.dir.clone());
        if out_abs.starts_with(&repo_abs) {
            return Err(RepoError::PublishIntoRepo(out.to_path_buf()));
        }
        let mut written = Vec::new();
        copy_tree(
            &self.dir.join("targets"),
            &out.join("targets"),
            &mut written,
            &|_| true,
        )?;
        let md = self.metadata_dir();
        let last = |p: &Path| p.file_name().is_some_and(|n| n == "timestamp.json");
        copy_tree(&md, &out.join("metadata"), &mut written, &|p| !last(p))?;
        copy_tree(&md, &out.join("metadata"), &mut written, &last)?;
        Ok(written)
    }
}

fn check_spec(role: &str, keys: u32, threshold: u32) -> Result<()> {
    if threshold == 0 || keys < threshold {
        return Err(RepoError::InvalidThreshold {
            role: role.to_string(),
            reason: format!("{keys} key(s) cannot meet threshold {threshold}"),
        });
    }
    Ok(())
}

fn read_json(path: &Path) -> Result<Value> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    serde_json::from_slice(&bytes).map_err(|e| corrupt(path, e.to_string()))
}

fn copy_tree(
    from: &Path,
    to: &Path,
    written: &mut Vec<PathBuf>,
    filter: &dyn Fn(&Path) -> bool,
) -> Result<()> {
    fs::create_dir_all(to).map_err(io_err(to))?;
    let mut entries: Vec<_> = fs::read_dir(from)
        .map_err(io_err(from))?
        .collect::<std::result::Result<_, _>>()
        .map_err(io_err(from))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let src = e.path();
        let dst = to.join(e.file_name());
        let ty = e.file_type().map_err(io_err(&src))?;
        if ty.is_dir() {
            copy_tree(&src, &dst, written, filter)?;
        } else if ty.is_file() && filter(&src) {
            let bytes = fs::read(&src).map_err(io_err(&src))?;
            write_atomic(&dst, &bytes).map_err(tuf_err)?;
            written.push(dst);
        }
    }
    Ok(())
}

/// The `custom` object for an OS image target.
pub fn image_custom(meta: &ImageMetadata) -> Value {
    serde_json::to_value(meta).expect("image metadata serialises")
}
