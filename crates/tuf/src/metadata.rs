//! TUF 1.0 metadata: parsing, shape checks and signature threshold
//! verification. Pure: no network, no disk.
//!
//! Parsing keeps the file exactly as received and computes the canonical
//! bytes of its `signed` object once (unknown fields included); signatures
//! are verified over those bytes. The typed views ([`Root`], [`Timestamp`],
//! [`Snapshot`], [`Targets`]) are read out of the same parse, with the checks
//! python-tuf's metadata API makes. JSON is parsed by the crate's flat
//! parser (see `json.rs`), so a 10,000-target file costs one allocation for
//! its nodes rather than one per value; target entries are validated up
//! front and materialised only when looked up.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::crypto::PublicKey;
use crate::error::{Error, Result};
use crate::json::{self, Node, Val};

/// The four top-level role names.
pub const TOP_LEVEL_ROLES: [&str; 4] = ["root", "timestamp", "snapshot", "targets"];

/// One entry of `signatures`.
#[derive(Debug, Clone)]
pub struct Signature {
    /// The key id the signature claims.
    pub keyid: String,
    /// The decoded signature; `None` if `sig` was not valid hex (such a
    /// signature counts as invalid, it does not fail the metadata).
    pub sig: Option<Vec<u8>>,
}

/// A parsed metadata file: the bytes as received, their parse, the
/// canonical bytes of `signed`, and the signatures.
#[derive(Clone)]
pub struct Envelope {
    bytes: Vec<u8>,
    nodes: Vec<Node>,
    signed: usize,
    canonical: Vec<u8>,
    signatures: Vec<Signature>,
}

impl std::fmt::Debug for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envelope")
            .field("bytes", &self.bytes.len())
            .field("signatures", &self.signatures)
            .finish()
    }
}

impl Envelope {
    /// Parse `{"signed": {...}, "signatures": [...]}`. `role` only names the
    /// metadata in errors. Duplicate key ids in `signatures` are refused.
    pub fn parse(bytes: &[u8], role: &str) -> Result<Envelope> {
        Self::from_vec(bytes.to_vec(), role)
    }

    /// [`Envelope::parse`] taking ownership of the bytes (no copy).
    pub fn from_vec(bytes: Vec<u8>, role: &str) -> Result<Envelope> {
        let nodes =
            json::parse(&bytes).map_err(|e| Error::malformed(role, format!("not JSON: {e}")))?;
        let top = Val::root(&bytes, &nodes);
        if !top.is_object() {
            return Err(Error::malformed(role, "top level is not an object"));
        }
        let signed = top
            .get("signed")
            .ok_or_else(|| Error::malformed(role, "no \"signed\" object"))?;
        if !signed.is_object() {
            return Err(Error::malformed(role, "\"signed\" is not an object"));
        }
        let sigs = match top.get("signatures") {
            Some(s) if s.is_array() => s,
            _ => return Err(Error::malformed(role, "no \"signatures\" list")),
        };
        let mut signatures = Vec::with_capacity(sigs.len());
        let mut seen = HashSet::new();
        for s in sigs.items() {
            if !s.is_object() {
                return Err(Error::malformed(role, "a signature is not an object"));
            }
            let keyid = str_field(s, "keyid", role, "signature")?;
            let sig = str_field(s, "sig", role, "signature")?;
            if !seen.insert(keyid.clone()) {
                return Err(Error::DuplicateSignature {
                    role: role.to_string(),
                    keyid,
                });
            }
            signatures.push(Signature {
                keyid,
                sig: hex::decode(sig).ok(),
            });
        }
        let mut canonical = Vec::with_capacity(bytes.len());
        signed.write_canonical(&mut canonical).map_err(|e| {
            Error::malformed(role, format!("canonical JSON has no encoding for {e}"))
        })?;
        let signed = signed.index();
        Ok(Envelope {
            bytes,
            nodes,
            signed,
            canonical,
            signatures,
        })
    }

    fn signed_val(&self) -> Val<'_> {
        Val::at(&self.bytes, &self.nodes, self.signed)
    }

    /// The file as received.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The `signed` object as a `serde_json::Value` (built on request).
    pub fn signed_value(&self) -> serde_json::Value {
        self.signed_val().to_value()
    }

    /// The canonical JSON bytes of `signed` (what signatures cover).
    pub fn canonical(&self) -> &[u8] {
        &self.canonical
    }

    /// The signatures.
    pub fn signatures(&self) -> &[Signature] {
        &self.signatures
    }

    /// Check that at least `threshold` distinct keys from `keyids` (looked
    /// up in `keys`) made valid signatures. Invalid, unknown-key and
    /// unsupported-scheme signatures are ignored; only a missed threshold is
    /// an error. One key listed under several key ids counts once.
    pub fn verify_threshold(
        &self,
        role: &str,
        signer: &str,
        keys: &BTreeMap<String, PublicKey>,
        keyids: &[String],
        threshold: u64,
    ) -> Result<()> {
        let mut counted_ids = HashSet::new();
        let mut counted_keys = HashSet::new();
        for keyid in keyids {
            if !counted_ids.insert(keyid.as_str()) {
                continue;
            }
            let Some(key) = keys.get(keyid) else { continue };
            let Some(sig) = self.signatures.iter().find(|s| &s.keyid == keyid) else {
                continue;
            };
            let Some(bytes) = &sig.sig else { continue };
            if key.verify(&self.canonical, bytes) {
                counted_keys.insert(key.identity());
            }
        }
        if (counted_keys.len() as u64) < threshold {
            return Err(Error::Threshold {
                role: role.to_string(),
                signer: signer.to_string(),
                valid: counted_keys.len(),
                threshold,
            });
        }
        Ok(())
    }
}

/// `expires`, as signed and as seconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expiry {
    /// The string as signed, e.g. `2030-01-01T00:00:00Z`.
    pub text: String,
    /// Seconds since the epoch.
    pub unix: i64,
}

impl Expiry {
    /// Whether this has expired at `now` (seconds since the epoch): the
    /// spec requires expiry to be *higher* than the start time.
    pub fn is_expired(&self, now: i64) -> bool {
        now >= self.unix
    }
}

/// Fields every role's `signed` object has.
#[derive(Debug, Clone)]
pub struct Common {
    /// `version`, at least 1.
    pub version: u64,
    /// `expires`.
    pub expires: Expiry,
    /// `spec_version`.
    pub spec_version: String,
}

/// A role's keys and threshold (top-level roles in root, or a delegation).
#[derive(Debug, Clone)]
pub struct RoleKeys {
    /// Key ids allowed to sign, unique.
    pub keyids: Vec<String>,
    /// Signatures required, at least 1.
    pub threshold: u64,
}

/// `root.json`.
#[derive(Debug, Clone)]
pub struct Root {
    /// Version, expiry, spec version.
    pub common: Common,
    /// `consistent_snapshot` (absent means false).
    pub consistent_snapshot: bool,
    /// `keys`.
    pub keys: BTreeMap<String, PublicKey>,
    /// `roles`: exactly the four top-level roles.
    pub roles: BTreeMap<String, RoleKeys>,
}

impl Root {
    /// The keys and threshold of top-level role `name`.
    pub fn role(&self, name: &str) -> &RoleKeys {
        &self.roles[name]
    }
}

/// One entry of `meta` in timestamp or snapshot metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaFile {
    /// The listed version.
    pub version: u64,
    /// The listed length, if any.
    pub length: Option<u64>,
    /// The listed hashes (algorithm → hex), if any.
    pub hashes: Option<BTreeMap<String, String>>,
}

/// `timestamp.json`.
#[derive(Debug, Clone)]
pub struct Timestamp {
    /// Version, expiry, spec version.
    pub common: Common,
    /// `meta["snapshot.json"]`.
    pub snapshot_meta: MetaFile,
}

/// `snapshot.json`.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Version, expiry, spec version.
    pub common: Common,
    /// `meta`: `targets.json` and every delegated `<role>.json`.
    pub meta: BTreeMap<String, MetaFile>,
}

/// One entry of `targets` in targets metadata.
#[derive(Debug, Clone)]
pub struct TargetFile {
    /// `length`.
    pub length: u64,
    /// `hashes` (algorithm → hex), not empty.
    pub hashes: BTreeMap<String, String>,
    /// `custom`, if any.
    pub custom: Option<serde_json::Value>,
}

/// A delegation in `delegations.roles`.
#[derive(Debug, Clone)]
pub struct DelegatedRole {
    /// `name`.
    pub name: String,
    /// `keyids` and `threshold`.
    pub keys: RoleKeys,
    /// `terminating`.
    pub terminating: bool,
    /// `paths` patterns (exactly one of `paths` and `path_hash_prefixes`).
    pub paths: Option<Vec<String>>,
    /// `path_hash_prefixes`.
    pub path_hash_prefixes: Option<Vec<String>>,
}

impl DelegatedRole {
    /// Whether this delegation covers `target` (spec 5.6.7.2 / 4.5: `*`
    /// matches within one path segment, hash prefixes on SHA-256 of the path).
    pub fn matches(&self, target: &str) -> bool {
        if let Some(paths) = &self.paths {
            return paths.iter().any(|p| path_pattern_matches(p, target));
        }
        if let Some(prefixes) = &self.path_hash_prefixes {
            let digest = hex::encode(Sha256::digest(target.as_bytes()));
            return prefixes.iter().any(|p| digest.starts_with(p.as_str()));
        }
        false
    }
}

/// TAP 15 succinct hash-bin delegation.
#[derive(Debug, Clone)]
pub struct SuccinctRoles {
    /// Keys and threshold shared by every bin.
    pub keys: RoleKeys,
    /// Bits of the path's SHA-256 that pick the bin (1–32).
    pub bit_length: u32,
    /// Bin names are `<name_prefix>-<hex bin number>`.
    pub name_prefix: String,
}

impl SuccinctRoles {
    fn suffix_len(&self) -> usize {
        let bins: u64 = 1 << self.bit_length;
        format!("{:x}", bins - 1).len()
    }

    /// The bin role responsible for `target`.
    pub fn role_for_target(&self, target: &str) -> String {
        let digest = Sha256::digest(target.as_bytes());
        let first = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
        let bin = (first as u64) >> (32 - self.bit_length);
        format!(
            "{}-{:0width$x}",
            self.name_prefix,
            bin,
            width = self.suffix_len()
        )
    }

    /// Whether `name` is one of the bins.
    pub fn is_bin(&self, name: &str) -> bool {
        let Some(suffix) = name
            .strip_prefix(self.name_prefix.as_str())
            .and_then(|s| s.strip_prefix('-'))
        else {
            return false;
        };
        suffix.len() == self.suffix_len()
            && suffix
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && u64::from_str_radix(suffix, 16).is_ok_and(|n| n < (1u64 << self.bit_length))
    }
}

/// `delegations.roles` or `delegations.succinct_roles`.
#[derive(Debug, Clone)]
pub enum DelegationRoles {
    /// An ordered list of delegated roles.
    Roles(Vec<DelegatedRole>),
    /// Hash bins.
    Succinct(SuccinctRoles),
}

/// `delegations` in targets metadata.
#[derive(Debug, Clone)]
pub struct Delegations {
    /// `keys`.
    pub keys: BTreeMap<String, PublicKey>,
    /// The delegated roles.
    pub roles: DelegationRoles,
}

impl Delegations {
    /// Roles responsible for `target`, in order, with their `terminating`
    /// flag (succinct bins are terminating).
    pub fn roles_for_target(&self, target: &str) -> Vec<(String, bool)> {
        match &self.roles {
            DelegationRoles::Roles(roles) => roles
                .iter()
                .filter(|r| r.matches(target))
                .map(|r| (r.name.clone(), r.terminating))
                .collect(),
            DelegationRoles::Succinct(s) => vec![(s.role_for_target(target), true)],
        }
    }

    /// Keys and threshold for delegated role `name`, if delegated here.
    pub fn role_keys(&self, name: &str) -> Option<&RoleKeys> {
        match &self.roles {
            DelegationRoles::Roles(roles) => roles.iter().find(|r| r.name == name).map(|r| &r.keys),
            DelegationRoles::Succinct(s) => s.is_bin(name).then_some(&s.keys),
        }
    }
}

/// `targets.json` or a delegated role's metadata. Every entry of `targets`
/// was validated when parsed; [`Targets::target`] materialises one.
#[derive(Debug, Clone)]
pub struct Targets {
    /// Version, expiry, spec version.
    pub common: Common,
    /// `delegations`, if any.
    pub delegations: Option<Delegations>,
    env: Arc<Envelope>,
    targets_node: usize,
}

impl Targets {
    fn targets_val(&self) -> Val<'_> {
        Val::at(&self.env.bytes, &self.env.nodes, self.targets_node)
    }

    /// The entry for target path `path` (the last one, if repeated).
    pub fn target(&self, path: &str) -> Option<TargetFile> {
        let v = self.targets_val().get(path)?;
        target_file(v, "targets", path).ok()
    }

    /// The metadata file as received.
    pub fn bytes(&self) -> &[u8] {
        self.env.bytes()
    }

    /// Number of entries in `targets`.
    pub fn target_count(&self) -> usize {
        self.targets_val().len()
    }

    /// Target paths, sorted, without duplicates.
    pub fn target_paths(&self) -> Vec<String> {
        self.targets_val()
            .unique_members()
            .into_iter()
            .map(|(k, _)| k.into_owned())
            .collect()
    }
}

/// fnmatch-style match of one `paths` pattern against a target path, with
/// `*` and `?` never crossing `/` (the pattern and the path must have the
/// same number of segments), and `[...]` / `[!...]` classes, as python-tuf.
pub fn path_pattern_matches(pattern: &str, target: &str) -> bool {
    let pat: Vec<&str> = pattern.split('/').collect();
    let tgt: Vec<&str> = target.split('/').collect();
    pat.len() == tgt.len()
        && pat.iter().zip(&tgt).all(|(p, t)| {
            fnmatch(
                &p.chars().collect::<Vec<_>>(),
                &t.chars().collect::<Vec<_>>(),
            )
        })
}

fn fnmatch(p: &[char], t: &[char]) -> bool {
    // Iterative wildcard matching with backtracking to the last `*`.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, ti));
                    pi += 1;
                    continue;
                }
                '?' => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                '[' => {
                    if let Some((matched, next)) = class_match(&p[pi..], t[ti]) {
                        if matched {
                            pi += next;
                            ti += 1;
                            continue;
                        }
                    } else if t[ti] == '[' {
                        pi += 1;
                        ti += 1;
                        continue;
                    }
                }
                c if c == t[ti] => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, st)) => {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Match `c` against the class at the start of `p` (`[...]`). Returns
/// (matched, pattern length) or `None` if the class is not closed (then `[`
/// is literal, as in Python's fnmatch).
fn class_match(p: &[char], c: char) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = p.get(i) == Some(&'!');
    if negate {
        i += 1;
    }
    let start = i;
    let mut matched = false;
    while i < p.len() {
        if p[i] == ']' && i > start {
            return Some((matched != negate, i + 1));
        }
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            if p[i] <= c && c <= p[i + 2] {
                matched = true;
            }
            i += 3;
        } else {
            if p[i] == c {
                matched = true;
            }
            i += 1;
        }
    }
    None
}

// ---------------------------------------------------------------------------
// Typed views.

fn str_field(obj: Val<'_>, key: &str, role: &str, ctx: &str) -> Result<String> {
    match obj.get(key) {
        Some(v) => v
            .as_str()
            .map(|s| s.into_owned())
            .ok_or_else(|| Error::malformed(role, format!("{ctx}: \"{key}\" is not a string"))),
        None => Err(Error::malformed(role, format!("{ctx}: no \"{key}\""))),
    }
}

fn obj_field<'a>(obj: Val<'a>, key: &str, role: &str, ctx: &str) -> Result<Val<'a>> {
    match obj.get(key) {
        Some(v) if v.is_object() => Ok(v),
        Some(_) => Err(Error::malformed(
            role,
            format!("{ctx}: \"{key}\" is not an object"),
        )),
        None => Err(Error::malformed(role, format!("{ctx}: no \"{key}\""))),
    }
}

fn uint(v: Val<'_>, role: &str, what: &str) -> Result<u64> {
    v.as_u64()
        .ok_or_else(|| Error::malformed(role, format!("{what} is not a non-negative integer")))
}

fn uint_field(obj: Val<'_>, key: &str, role: &str, ctx: &str) -> Result<u64> {
    match obj.get(key) {
        Some(v) => uint(v, role, &format!("{ctx}: \"{key}\"")),
        None => Err(Error::malformed(role, format!("{ctx}: no \"{key}\""))),
    }
}

fn string_list(v: Val<'_>, role: &str, what: &str) -> Result<Vec<String>> {
    if !v.is_array() {
        return Err(Error::malformed(role, format!("{what} is not a list")));
    }
    v.items()
        .map(|i| {
            i.as_str()
                .map(|s| s.into_owned())
                .ok_or_else(|| Error::malformed(role, format!("{what} has a non-string entry")))
        })
        .collect()
}

/// Parse `YYYY-MM-DDTHH:MM:SSZ` into seconds since the epoch.
pub fn parse_expiry(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = &text[r];
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let mdays = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&mo)
        || d < 1
        || d > mdays[(mo - 1) as usize]
        || h > 23
        || mi > 59
        || s > 59
    {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s)
}

/// Format seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_expiry(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

// Howard Hinnant's days_from_civil / civil_from_days.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn common(obj: Val<'_>, role: &str, expected_type: &str) -> Result<Common> {
    let ty = str_field(obj, "_type", role, "signed")?;
    if ty != expected_type {
        return Err(Error::malformed(
            role,
            format!("_type is {ty:?}, expected {expected_type:?}"),
        ));
    }
    let spec_version = str_field(obj, "spec_version", role, "signed")?;
    let parts: Vec<&str> = spec_version.split('.').collect();
    if !(2..=3).contains(&parts.len())
        || !parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(Error::malformed(
            role,
            format!("bad spec_version {spec_version:?}"),
        ));
    }
    if parts[0] != "1" {
        return Err(Error::malformed(
            role,
            format!("unsupported spec_version {spec_version:?} (this client implements 1.x)"),
        ));
    }
    let version = uint_field(obj, "version", role, "signed")?;
    if version == 0 {
        return Err(Error::malformed(role, "version must be at least 1"));
    }
    let text = str_field(obj, "expires", role, "signed")?;
    let unix = parse_expiry(&text)
        .ok_or_else(|| Error::malformed(role, format!("bad expires {text:?}")))?;
    Ok(Common {
        version,
        expires: Expiry { text, unix },
        spec_version,
    })
}

fn keys(obj: Val<'_>, role: &str) -> Result<BTreeMap<String, PublicKey>> {
    let mut out = BTreeMap::new();
    for (keyid, key) in obj.unique_members() {
        if !key.is_object() {
            return Err(Error::malformed(
                role,
                format!("key {keyid} is not an object"),
            ));
        }
        let ctx = format!("key {keyid}");
        let keytype = str_field(key, "keytype", role, &ctx)?;
        let scheme = str_field(key, "scheme", role, &ctx)?;
        let keyval = obj_field(key, "keyval", role, &ctx)?;
        let public = str_field(keyval, "public", role, &ctx)?;
        out.insert(
            keyid.into_owned(),
            PublicKey::new(&keytype, &scheme, &public),
        );
    }
    Ok(out)
}

fn role_keys(obj: Val<'_>, role: &str, ctx: &str) -> Result<RoleKeys> {
    let keyids = string_list(
        obj.get("keyids")
            .ok_or_else(|| Error::malformed(role, format!("{ctx}: no \"keyids\"")))?,
        role,
        &format!("{ctx}: keyids"),
    )?;
    if keyids.iter().collect::<BTreeSet<_>>().len() != keyids.len() {
        return Err(Error::malformed(role, format!("{ctx}: duplicate keyids")));
    }
    let threshold = uint_field(obj, "threshold", role, ctx)?;
    if threshold == 0 {
        return Err(Error::malformed(
            role,
            format!("{ctx}: threshold must be at least 1"),
        ));
    }
    Ok(RoleKeys { keyids, threshold })
}

fn meta_file(v: Val<'_>, role: &str, name: &str) -> Result<MetaFile> {
    let ctx = format!("meta {name}");
    if !v.is_object() {
        return Err(Error::malformed(role, format!("{ctx} is not an object")));
    }
    let version = uint_field(v, "version", role, &ctx)?;
    if version == 0 {
        return Err(Error::malformed(
            role,
            format!("{ctx}: version must be at least 1"),
        ));
    }
    let length = v
        .get("length")
        .map(|l| uint(l, role, &format!("{ctx}: length")))
        .transpose()?;
    let hashes = v.get("hashes").map(|h| hashes(h, role, &ctx)).transpose()?;
    Ok(MetaFile {
        version,
        length,
        hashes,
    })
}

fn hashes(v: Val<'_>, role: &str, ctx: &str) -> Result<BTreeMap<String, String>> {
    check_hashes(v, role, ctx)?;
    Ok(v.unique_members()
        .into_iter()
        .map(|(alg, h)| {
            (
                alg.into_owned(),
                h.as_str().unwrap_or_default().into_owned(),
            )
        })
        .collect())
}

/// `hashes` must be a non-empty object of strings (checked without
/// allocating: this runs for every target entry).
fn check_hashes(v: Val<'_>, role: &str, ctx: &str) -> Result<()> {
    if !v.is_object() {
        return Err(Error::malformed(
            role,
            format!("{ctx}: hashes is not an object"),
        ));
    }
    if v.len() == 0 {
        return Err(Error::malformed(role, format!("{ctx}: hashes is empty")));
    }
    if v.members().any(|(_, h)| h.as_str().is_none()) {
        return Err(Error::malformed(
            role,
            format!("{ctx}: a hash is not a string"),
        ));
    }
    Ok(())
}

/// Validate one `targets` entry without allocating.
fn check_target_entry(v: Val<'_>, role: &str) -> Result<()> {
    let bad = |what: &str| Error::malformed(role, format!("a target entry {what}"));
    if !v.is_object() {
        return Err(bad("is not an object"));
    }
    match v.get("length") {
        Some(l) if l.as_u64().is_some() => {}
        _ => return Err(bad("has no non-negative integer length")),
    }
    match v.get("hashes") {
        Some(h) => check_hashes(h, role, "target entry"),
        None => Err(bad("has no hashes")),
    }
}

fn target_file(v: Val<'_>, role: &str, path: &str) -> Result<TargetFile> {
    let ctx = format!("target {path:?}");
    let length = uint_field(v, "length", role, &ctx)?;
    let hashes = hashes(
        v.get("hashes")
            .ok_or_else(|| Error::malformed(role, format!("{ctx}: no hashes")))?,
        role,
        &ctx,
    )?;
    Ok(TargetFile {
        length,
        hashes,
        custom: v.get("custom").map(|c| c.to_value()),
    })
}

impl Root {
    /// Read root metadata out of an envelope.
    pub fn from_envelope(env: &Envelope) -> Result<Root> {
        let role = "root";
        let obj = env.signed_val();
        let common = common(obj, role, "root")?;
        let consistent_snapshot = match obj.get("consistent_snapshot") {
            None => false,
            Some(v) if v.is_null() => false,
            Some(v) => v
                .as_bool()
                .ok_or_else(|| Error::malformed(role, "consistent_snapshot is not a boolean"))?,
        };
        let keys = keys(obj_field(obj, "keys", role, "signed")?, role)?;
        let roles_obj = obj_field(obj, "roles", role, "signed")?;
        let mut roles = BTreeMap::new();
        for (name, r) in roles_obj.unique_members() {
            if !r.is_object() {
                return Err(Error::malformed(
                    role,
                    format!("role {name} is not an object"),
                ));
            }
            let rk = role_keys(r, role, &format!("role {name}"))?;
            roles.insert(name.into_owned(), rk);
        }
        let names: BTreeSet<&str> = roles.keys().map(String::as_str).collect();
        if names != TOP_LEVEL_ROLES.into_iter().collect() {
            return Err(Error::malformed(
                role,
                "roles must be exactly root, timestamp, snapshot and targets",
            ));
        }
        Ok(Root {
            common,
            consistent_snapshot,
            keys,
            roles,
        })
    }
}

impl Timestamp {
    /// Read timestamp metadata out of an envelope.
    pub fn from_envelope(env: &Envelope) -> Result<Timestamp> {
        let role = "timestamp";
        let obj = env.signed_val();
        let common = common(obj, role, "timestamp")?;
        let meta = obj_field(obj, "meta", role, "signed")?;
        let snap = meta
            .get("snapshot.json")
            .ok_or_else(|| Error::malformed(role, "meta does not list snapshot.json"))?;
        Ok(Timestamp {
            common,
            snapshot_meta: meta_file(snap, role, "snapshot.json")?,
        })
    }
}

impl Snapshot {
    /// Read snapshot metadata out of an envelope.
    pub fn from_envelope(env: &Envelope) -> Result<Snapshot> {
        let role = "snapshot";
        let obj = env.signed_val();
        let common = common(obj, role, "snapshot")?;
        let meta_obj = obj_field(obj, "meta", role, "signed")?;
        let mut meta = BTreeMap::new();
        for (name, m) in meta_obj.unique_members() {
            let mf = meta_file(m, role, &name)?;
            meta.insert(name.into_owned(), mf);
        }
        Ok(Snapshot { common, meta })
    }
}

impl Targets {
    /// Read targets metadata (top-level or delegated `role`) out of an
    /// envelope; keeps the envelope for target look-ups.
    pub fn from_envelope(env: Envelope, role: &str) -> Result<Targets> {
        let head = Self::check(&env, role)?;
        Ok(Self::from_head(head, env))
    }

    /// Validate `env` as targets metadata (every target entry included).
    pub(crate) fn check(env: &Envelope, role: &str) -> Result<TargetsHead> {
        let obj = env.signed_val();
        let common = common(obj, role, "targets")?;
        let targets_val = obj_field(obj, "targets", role, "signed")?;
        for (_, t) in targets_val.members() {
            check_target_entry(t, role)?;
        }
        let targets_node = targets_val.index();
        let delegations = match obj.get("delegations") {
            None => None,
            Some(d) if d.is_null() => None,
            Some(d) if d.is_object() => Some(delegations(d, role)?),
            Some(_) => return Err(Error::malformed(role, "delegations is not an object")),
        };
        Ok(TargetsHead {
            common,
            delegations,
            targets_node,
        })
    }

    /// Targets metadata from what [`Targets::check`] read out of `env`.
    pub(crate) fn from_head(head: TargetsHead, env: Envelope) -> Targets {
        Targets {
            common: head.common,
            delegations: head.delegations,
            env: Arc::new(env),
            targets_node: head.targets_node,
        }
    }
}

/// The checked fields of targets metadata, before it owns its envelope.
pub(crate) struct TargetsHead {
    common: Common,
    delegations: Option<Delegations>,
    targets_node: usize,
}

fn delegations(d: Val<'_>, role: &str) -> Result<Delegations> {
    let keys = keys(obj_field(d, "keys", role, "delegations")?, role)?;
    let roles = match (d.get("roles"), d.get("succinct_roles")) {
        (Some(list), None) if list.is_array() => {
            let mut roles = Vec::with_capacity(list.len());
            let mut names = HashSet::new();
            for r in list.items() {
                if !r.is_object() {
                    return Err(Error::malformed(role, "a delegated role is not an object"));
                }
                let name = str_field(r, "name", role, "delegated role")?;
                let ctx = format!("delegated role {name:?}");
                if TOP_LEVEL_ROLES.contains(&name.as_str()) {
                    return Err(Error::malformed(
                        role,
                        format!("{ctx} has a top-level role name"),
                    ));
                }
                if !names.insert(name.clone()) {
                    return Err(Error::malformed(role, format!("{ctx} is delegated twice")));
                }
                let terminating =
                    r.get("terminating")
                        .and_then(|t| t.as_bool())
                        .ok_or_else(|| {
                            Error::malformed(role, format!("{ctx}: terminating is not a boolean"))
                        })?;
                let paths = r
                    .get("paths")
                    .map(|p| string_list(p, role, &format!("{ctx}: paths")))
                    .transpose()?;
                let path_hash_prefixes = r
                    .get("path_hash_prefixes")
                    .map(|p| string_list(p, role, &format!("{ctx}: path_hash_prefixes")))
                    .transpose()?;
                if paths.is_some() == path_hash_prefixes.is_some() {
                    return Err(Error::malformed(
                        role,
                        format!("{ctx} needs exactly one of paths and path_hash_prefixes"),
                    ));
                }
                roles.push(DelegatedRole {
                    keys: role_keys(r, role, &ctx)?,
                    name,
                    terminating,
                    paths,
                    path_hash_prefixes,
                });
            }
            DelegationRoles::Roles(roles)
        }
        (None, Some(s)) if s.is_object() => {
            let ctx = "succinct_roles";
            let bit_length = uint_field(s, "bit_length", role, ctx)?;
            if !(1..=32).contains(&bit_length) {
                return Err(Error::malformed(
                    role,
                    "succinct_roles: bit_length must be 1 to 32",
                ));
            }
            DelegationRoles::Succinct(SuccinctRoles {
                keys: role_keys(s, role, ctx)?,
                bit_length: bit_length as u32,
                name_prefix: str_field(s, "name_prefix", role, ctx)?,
            })
        }
        _ => {
            return Err(Error::malformed(
                role,
                "delegations need exactly one of a roles list and a succinct_roles object",
            ))
        }
    };
    Ok(Delegations { keys, roles })
}

/// Parse any metadata file by its `_type` (what the fuzzer drives).
pub fn parse_any(bytes: &[u8]) -> Result<()> {
    let env = Envelope::parse(bytes, "metadata")?;
    let ty = env
        .signed_val()
        .get("_type")
        .and_then(|t| t.as_str().map(|s| s.into_owned()))
        .unwrap_or_default();
    match ty.as_str() {
        "root" => Root::from_envelope(&env).map(drop),
        "timestamp" => Timestamp::from_envelope(&env).map(drop),
        "snapshot" => Snapshot::from_envelope(&env).map(drop),
        "targets" => Targets::from_envelope(env, "targets").map(|t| {
            for p in t.target_paths() {
                let _ = t.target(&p);
            }
        }),
        _ => Err(Error::malformed(
            "metadata",
            format!("unknown _type {ty:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_round_trip_and_strictness() {
        assert_eq!(parse_expiry("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_expiry("2000-03-01T00:00:00Z"), Some(951_868_800));
        for t in [0, 951_868_800, 1_700_000_000, 4_102_444_800] {
            assert_eq!(parse_expiry(&format_expiry(t)), Some(t));
        }
        for bad in [
            "2030-01-01T00:00:00",
            "2030-01-01 00:00:00Z",
            "2030-02-30T00:00:00Z",
            "2030-01-01T00:00:00.5Z",
            "+030-01-01T00:00:00Z",
        ] {
            assert_eq!(parse_expiry(bad), None, "{bad}");
        }
    }

    #[test]
    fn star_does_not_cross_slash() {
        assert!(path_pattern_matches("images/*", "images/a.img"));
        assert!(!path_pattern_matches("images/*", "images/sub/a.img"));
        assert!(path_pattern_matches("*/*", "images/a"));
        assert!(path_pattern_matches("*", "file.txt"));
        assert!(!path_pattern_matches("*", "dir/file.txt"));
        assert!(path_pattern_matches("a?c/*.tar.gz", "abc/x.tar.gz"));
        assert!(!path_pattern_matches("a?c/*.tar.gz", "abc/x.tar.bz"));
        assert!(path_pattern_matches("file[0-9].txt", "file7.txt"));
        assert!(!path_pattern_matches("file[!0-9].txt", "file7.txt"));
        assert!(path_pattern_matches("*a*b*", "xxaxxbxx"));
        assert!(!path_pattern_matches("*a*b", "xxaxxbxx"));
        assert!(path_pattern_matches("[x", "[x"));
        assert!(path_pattern_matches("", ""));
    }

    #[test]
    fn succinct_bins() {
        let s = SuccinctRoles {
            keys: RoleKeys {
                keyids: vec![],
                threshold: 1,
            },
            bit_length: 8,
            name_prefix: "bin".into(),
        };
        // python-tuf: SuccinctRoles([], 1, 8, "bin").get_role_for_target("a")
        // sha256("a") = ca978112... -> 0xca
        assert_eq!(s.role_for_target("a"), "bin-ca");
        assert!(s.is_bin("bin-00") && s.is_bin("bin-ff"));
        assert!(!s.is_bin("bin-100") && !s.is_bin("bin-f") && !s.is_bin("bin-FF"));
    }

    #[test]
    fn duplicate_signature_keyids_refused() {
        let doc = br#"{"signed":{"_type":"timestamp"},"signatures":[{"keyid":"a","sig":"00"},{"keyid":"a","sig":"11"}]}"#;
        assert!(matches!(
            Envelope::parse(doc, "timestamp"),
            Err(Error::DuplicateSignature { .. })
        ));
    }
}
