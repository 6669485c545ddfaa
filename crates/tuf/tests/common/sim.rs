//! A repository simulator (after tuf-conformance's RepositorySimulator):
//! metadata held as `signed` JSON values, published as signed bytes into a
//! file tree that a test serves through [`SimTransport`] (in memory) or the
//! HTTP test server (via [`Sim::write_to`]).

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cairn_tuf::canonical::to_canonical_vec;
use cairn_tuf::crypto::key_id;
use cairn_tuf::metadata::format_expiry;
use cairn_tuf::transport::quote;
use cairn_tuf::{Config, Limits, Transport, TransportError, Updater};
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub const BASE: &str = "sim://repo";

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn days_from_now(days: i64) -> String {
    format_expiry(unix_now() + days * 86_400)
}

static SEED: Mutex<u8> = Mutex::new(1);

pub fn new_key() -> SigningKey {
    let mut s = SEED.lock().unwrap();
    *s = s.wrapping_add(1);
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).unwrap();
    seed[0] = *s;
    SigningKey::from_bytes(&seed)
}

pub fn keyid(k: &SigningKey) -> String {
    key_id(
        "ed25519",
        "ed25519",
        &hex::encode(k.verifying_key().as_bytes()),
    )
}

pub fn public_json(k: &SigningKey) -> Value {
    json!({"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": hex::encode(k.verifying_key().as_bytes())}})
}

pub fn sign(signed: &Value, keys: &[&SigningKey]) -> Vec<u8> {
    let canonical = to_canonical_vec(signed).unwrap();
    let sigs: Vec<Value> = keys
        .iter()
        .map(|k| json!({"keyid": keyid(k), "sig": hex::encode(k.sign(&canonical).to_bytes())}))
        .collect();
    serde_json::to_vec(&json!({"signed": signed, "signatures": sigs})).unwrap()
}

/// In-memory files by path (`metadata/1.root.json`, `targets/<hash>.name`).
#[derive(Clone, Default)]
pub struct Files {
    pub map: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    pub requests: Arc<Mutex<Vec<String>>>,
    pub endless: Arc<Mutex<HashSet<String>>>,
}

pub struct SimTransport(pub Files);

struct Endless;
impl Read for Endless {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        buf.fill(b'x');
        Ok(buf.len())
    }
}

impl Transport for SimTransport {
    fn fetch(&self, url: &str) -> Result<Box<dyn Read + Send + '_>, TransportError> {
        let path = url
            .strip_prefix(BASE)
            .ok_or(TransportError::UnsupportedUrl("sim://"))?
            .trim_start_matches('/')
            .to_string();
        self.0.requests.lock().unwrap().push(path.clone());
        if self.0.endless.lock().unwrap().contains(&path) {
            return Ok(Box::new(Endless));
        }
        match self.0.map.lock().unwrap().get(&path) {
            Some(b) => Ok(Box::new(std::io::Cursor::new(b.clone()))),
            None => Err(TransportError::NotFound),
        }
    }
}

pub struct Sim {
    pub root: Value,
    pub timestamp: Value,
    pub snapshot: Value,
    /// Targets roles by name ("targets" and delegated).
    pub targets: BTreeMap<String, Value>,
    /// Signing keys by role name.
    pub signers: HashMap<String, Vec<SigningKey>>,
    pub files: Files,
    pub root_versions: Vec<Vec<u8>>,
    /// Put length and sha256 into timestamp/snapshot meta.
    pub compute_hashes: bool,
    /// Every published version of each role's bytes.
    pub published: HashMap<String, Vec<Vec<u8>>>,
}

impl Sim {
    pub fn new() -> Sim {
        let mut sim = Sim {
            root: Value::Null,
            timestamp: Value::Null,
            snapshot: Value::Null,
            targets: BTreeMap::new(),
            signers: HashMap::new(),
            files: Files::default(),
            root_versions: Vec::new(),
            compute_hashes: false,
            published: HashMap::new(),
        };
        let expires = days_from_now(30);
        let mut keys = serde_json::Map::new();
        let mut roles = serde_json::Map::new();
        for role in ["root", "timestamp", "snapshot", "targets"] {
            let k = new_key();
            keys.insert(keyid(&k), public_json(&k));
            roles.insert(role.into(), json!({"keyids": [keyid(&k)], "threshold": 1}));
            sim.signers.insert(role.into(), vec![k]);
        }
        sim.root = json!({"_type": "root", "spec_version": "1.0.31", "version": 1, "expires": expires,
            "consistent_snapshot": true, "keys": keys, "roles": roles});
        sim.targets.insert(
            "targets".into(),
            json!({"_type": "targets", "spec_version": "1.0.31", "version": 1, "expires": expires, "targets": {}}),
        );
        sim.snapshot = json!({"_type": "snapshot", "spec_version": "1.0.31", "version": 0, "expires": expires, "meta": {}});
        sim.timestamp = json!({"_type": "timestamp", "spec_version": "1.0.31", "version": 0, "expires": expires, "meta": {}});
        sim.publish_root();
        sim.publish_targets("targets");
        sim.update_snapshot();
        sim
    }

    pub fn transport(&self) -> SimTransport {
        SimTransport(self.files.clone())
    }

    pub fn put(&self, path: &str, bytes: Vec<u8>) {
        self.files
            .map
            .lock()
            .unwrap()
            .insert(path.to_string(), bytes);
    }

    pub fn get(&self, path: &str) -> Option<Vec<u8>> {
        self.files.map.lock().unwrap().get(path).cloned()
    }

    pub fn requests(&self) -> Vec<String> {
        self.files.requests.lock().unwrap().clone()
    }

    pub fn clear_requests(&self) {
        self.files.requests.lock().unwrap().clear();
    }

    pub fn keys_for(&self, role: &str) -> Vec<&SigningKey> {
        self.signers
            .get(role)
            .map(|v| v.iter().collect())
            .unwrap_or_default()
    }

    fn record(&mut self, role: &str, bytes: &[u8]) {
        self.published
            .entry(role.to_string())
            .or_default()
            .push(bytes.to_vec());
    }

    /// Sign root with the root role's signers plus `extra` and publish it as
    /// `N.root.json` (and `root.json`).
    pub fn publish_root_with(&mut self, extra: &[&SigningKey]) -> Vec<u8> {
        let mut keys = self.keys_for("root");
        keys.extend_from_slice(extra);
        let bytes = sign(&self.root, &keys);
        let v = self.root["version"].as_u64().unwrap();
        self.put(&format!("metadata/{v}.root.json"), bytes.clone());
        self.put("metadata/root.json", bytes.clone());
        self.root_versions.push(bytes.clone());
        self.record("root", &bytes);
        bytes
    }

    pub fn publish_root(&mut self) -> Vec<u8> {
        self.publish_root_with(&[])
    }

    /// Bump root's version and publish it signed by the current root
    /// signers (callers add old keys via `publish_root_with`).
    pub fn bump_root(&mut self) -> Vec<u8> {
        let v = self.root["version"].as_u64().unwrap() + 1;
        self.root["version"] = json!(v);
        self.publish_root()
    }

    pub fn publish_targets(&mut self, role: &str) -> Vec<u8> {
        let bytes = sign(&self.targets[role], &self.keys_for(role));
        let v = self.targets[role]["version"].as_u64().unwrap();
        self.put(&format!("metadata/{v}.{}.json", quote(role)), bytes.clone());
        self.put(&format!("metadata/{}.json", quote(role)), bytes.clone());
        self.record(role, &bytes);
        bytes
    }

    fn meta_for(&self, bytes: &[u8], version: u64) -> Value {
        if self.compute_hashes {
            json!({"version": version, "length": bytes.len(), "hashes": {"sha256": hex::encode(Sha256::digest(bytes))}})
        } else {
            json!({"version": version})
        }
    }

    /// New snapshot version listing every targets role's current version,
    /// then a new timestamp.
    pub fn update_snapshot(&mut self) {
        let mut meta = serde_json::Map::new();
        for (role, t) in &self.targets {
            let v = t["version"].as_u64().unwrap();
            let bytes = self
                .published
                .get(role)
                .and_then(|p| p.last())
                .cloned()
                .unwrap_or_default();
            meta.insert(format!("{role}.json"), self.meta_for(&bytes, v));
        }
        self.snapshot["meta"] = Value::Object(meta);
        let v = self.snapshot["version"].as_u64().unwrap() + 1;
        self.snapshot["version"] = json!(v);
        self.publish_snapshot();
        self.update_timestamp();
    }

    pub fn publish_snapshot(&mut self) -> Vec<u8> {
        let bytes = sign(&self.snapshot, &self.keys_for("snapshot"));
        let v = self.snapshot["version"].as_u64().unwrap();
        self.put(&format!("metadata/{v}.snapshot.json"), bytes.clone());
        self.put("metadata/snapshot.json", bytes.clone());
        self.record("snapshot", &bytes);
        bytes
    }

    pub fn update_timestamp(&mut self) {
        let snap = self.published["snapshot"].last().unwrap().clone();
        let v = self.snapshot["version"].as_u64().unwrap();
        self.timestamp["meta"] = json!({"snapshot.json": self.meta_for(&snap, v)});
        let tv = self.timestamp["version"].as_u64().unwrap() + 1;
        self.timestamp["version"] = json!(tv);
        self.publish_timestamp();
    }

    pub fn publish_timestamp(&mut self) -> Vec<u8> {
        let bytes = sign(&self.timestamp, &self.keys_for("timestamp"));
        self.put("metadata/timestamp.json", bytes.clone());
        self.record("timestamp", &bytes);
        bytes
    }

    /// Add a target to `role` (not yet published) and store its file under
    /// its hash-prefixed name.
    pub fn add_target(&mut self, role: &str, name: &str, data: &[u8]) {
        let hash = hex::encode(Sha256::digest(data));
        self.targets.get_mut(role).unwrap()["targets"][name] =
            json!({"length": data.len(), "hashes": {"sha256": hash}});
        let path = match name.rsplit_once('/') {
            Some((d, b)) => format!("targets/{d}/{hash}.{b}"),
            None => format!("targets/{hash}.{name}"),
        };
        self.put(&path, data.to_vec());
    }

    /// Bump `role`'s version, publish it, and publish a new snapshot and
    /// timestamp.
    pub fn commit_targets(&mut self, role: &str) {
        let v = self.targets[role]["version"].as_u64().unwrap() + 1;
        self.targets.get_mut(role).unwrap()["version"] = json!(v);
        self.publish_targets(role);
        self.update_snapshot();
    }

    /// Delegate from `delegator` to a new role `name` with one new key.
    pub fn add_delegation(
        &mut self,
        delegator: &str,
        name: &str,
        paths: &[&str],
        terminating: bool,
    ) {
        let k = new_key();
        let d = self.targets.get_mut(delegator).unwrap();
        if d.get("delegations").is_none() {
            d["delegations"] = json!({"keys": {}, "roles": []});
        }
        d["delegations"]["keys"][keyid(&k)] = public_json(&k);
        d["delegations"]["roles"]
            .as_array_mut()
            .unwrap()
            .push(json!({
                "name": name, "keyids": [keyid(&k)], "threshold": 1,
                "terminating": terminating, "paths": paths,
            }));
        self.signers.insert(name.into(), vec![k]);
        self.targets.insert(
            name.into(),
            json!({"_type": "targets", "spec_version": "1.0.31", "version": 1, "expires": days_from_now(30), "targets": {}}),
        );
        self.publish_targets(name);
    }

    /// Replace `role`'s keys in root with one new key (not yet published).
    pub fn rotate_role_key(&mut self, role: &str) {
        let k = new_key();
        let old: Vec<String> = self.root["roles"][role]["keyids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        for id in &old {
            self.root["keys"].as_object_mut().unwrap().remove(id);
        }
        self.root["keys"][keyid(&k)] = public_json(&k);
        self.root["roles"][role]["keyids"] = json!([keyid(&k)]);
        self.signers.insert(role.into(), vec![k]);
    }

    /// A client metadata dir initialised with root v1.
    pub fn init_client(&self, dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("root.json"), &self.root_versions[0]).unwrap();
    }

    pub fn config(&self, dir: &Path) -> Config {
        Config {
            metadata_dir: dir.to_path_buf(),
            metadata_base_url: format!("{BASE}/metadata"),
            targets_base_url: format!("{BASE}/targets"),
            start_time: SystemTime::now(),
            limits: Limits::default(),
            ..Default::default()
        }
    }

    pub fn updater(&self, dir: &Path) -> cairn_tuf::Result<Updater<SimTransport>> {
        Updater::new(self.config(dir), self.transport())
    }

    pub fn updater_at(
        &self,
        dir: &Path,
        offset: Duration,
    ) -> cairn_tuf::Result<Updater<SimTransport>> {
        let mut c = self.config(dir);
        c.start_time = SystemTime::now() + offset;
        Updater::new(c, self.transport())
    }

    /// Refresh a fresh client session.
    pub fn refresh(&self, dir: &Path) -> cairn_tuf::Result<()> {
        self.updater(dir)?.refresh()
    }

    /// Write every in-memory file under `dir` (percent-decoded names, as a
    /// web server would map them).
    pub fn write_to(&self, dir: &Path) {
        for (path, bytes) in self.files.map.lock().unwrap().iter() {
            let p = dir.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, bytes).unwrap();
        }
    }
}

pub fn version_of(dir: &Path, role: &str) -> u64 {
    let bytes = std::fs::read(dir.join(format!("{}.json", quote(role)))).unwrap();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    v["signed"]["version"].as_u64().unwrap()
}
