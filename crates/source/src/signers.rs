//! git's `allowed_signers` format (ssh-keygen(1), "ALLOWED SIGNERS").
//!
//! One signer per line: `principals [options] keytype base64-key [comment]`.
//! Supported options: `namespaces="pattern-list"`, `valid-after="time"`,
//! `valid-before="time"` and `cert-authority`. Lines are matched by key, as
//! `ssh-keygen -Y find-principals` does; the principals are reported, not
//! matched against the committer (git does not either).
//!
//! Deviations from OpenSSH, on purpose:
//! - times without a `Z` suffix are read as UTC, not as the local time zone
//!   (cairn nodes run in UTC, and a verdict must not depend on `TZ`);
//! - lines with keys other than ssh-ed25519 (and `cert-authority` lines:
//!   SSH certificates are not supported) are kept out of the set with a
//!   warning: they can never vouch for a commit, because only ed25519
//!   signatures are verified.

use std::{path::Path, str::FromStr};

use ssh_key::{public::KeyData, HashAlg, PublicKey};

use crate::{error::Validity, SourceError};

/// An `allowed_signers` file could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct SignersParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with the line.
    pub reason: String,
}

/// One usable (ed25519, non-CA) line of an `allowed_signers` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    principals: String,
    key: [u8; 32],
    fingerprint: String,
    namespaces: Option<String>,
    valid_after: Option<i64>,
    valid_before: Option<i64>,
}

impl Signer {
    /// The principals field of the line (comma-separated patterns).
    pub fn principals(&self) -> &str {
        &self.principals
    }
    /// The key's SHA256 fingerprint, as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
    /// `valid-after`, seconds since the epoch.
    pub fn valid_after(&self) -> Option<i64> {
        self.valid_after
    }
    /// `valid-before`, seconds since the epoch.
    pub fn valid_before(&self) -> Option<i64> {
        self.valid_before
    }

    /// Whether this line allows a `git` signature made at `time`
    /// (sshsig.c `check_allowed_keys_line`: namespace, then valid-after,
    /// then valid-before; both bounds inclusive).
    fn validity_at(&self, time: i64) -> Result<(), Validity> {
        if let Some(ns) = &self.namespaces {
            if !match_pattern_list(crate::parse::GIT_NAMESPACE, ns) {
                return Err(Validity::NamespaceNotAllowed);
            }
        }
        if let Some(valid_after) = self.valid_after {
            if time < valid_after {
                return Err(Validity::NotYetValid { valid_after });
            }
        }
        if let Some(valid_before) = self.valid_before {
            if time > valid_before {
                return Err(Validity::Expired { valid_before });
            }
        }
        Ok(())
    }
}

/// A set of trusted signers in git's `allowed_signers` format.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedSigners {
    signers: Vec<Signer>,
}

/// The outcome of looking a key up in a signer set.
#[derive(Debug)]
pub(crate) enum Lookup<'a> {
    /// A line with this key allows the signature.
    Trusted(&'a Signer),
    /// Lines with this key exist but none allows the signature; the reason
    /// is the first line's.
    NotValid(&'a Signer, Validity),
    /// No line has this key.
    Unknown,
}

impl AllowedSigners {
    /// Parse the text of an `allowed_signers` file.
    pub fn parse(text: &str) -> Result<Self, SignersParseError> {
        let mut signers = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            if let Some(s) = parse_line(line).map_err(|reason| SignersParseError {
                line: line_no,
                reason,
            })? {
                signers.push(s);
            }
        }
        Ok(AllowedSigners { signers })
    }

    /// Read and parse an `allowed_signers` file (the image-baked root set).
    pub fn from_file(path: &Path) -> Result<Self, SourceError> {
        let text = std::fs::read_to_string(path).map_err(|source| SourceError::State {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|source| SourceError::Trust {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The usable signers, in file order.
    pub fn signers(&self) -> &[Signer] {
        &self.signers
    }

    /// Number of usable signers.
    pub fn len(&self) -> usize {
        self.signers.len()
    }

    /// True when no signer is trusted (every commit will be refused).
    pub fn is_empty(&self) -> bool {
        self.signers.is_empty()
    }

    /// Find the line that allows an ed25519 `key` to sign a commit made at
    /// `time`. Like OpenSSH, the first line that allows it wins.
    pub(crate) fn lookup(&self, key: &[u8; 32], time: i64) -> Lookup<'_> {
        let mut first_refusal = None;
        for s in self.signers.iter().filter(|s| &s.key == key) {
            match s.validity_at(time) {
                Ok(()) => return Lookup::Trusted(s),
                Err(v) => {
                    first_refusal.get_or_insert((s, v));
                }
            }
        }
        match first_refusal {
            Some((s, v)) => Lookup::NotValid(s, v),
            None => Lookup::Unknown,
        }
    }
}

impl FromStr for AllowedSigners {
    type Err = SignersParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Key types ssh-keygen knows but this crate does not verify.
fn is_known_unsupported_key_type(t: &str) -> bool {
    t == "ssh-rsa"
        || t == "ssh-dss"
        || t.starts_with("ecdsa-sha2-")
        || t.starts_with("sk-")
        || t.ends_with("-cert-v01@openssh.com")
}

fn is_key_type(t: &str) -> bool {
    t == "ssh-ed25519" || is_known_unsupported_key_type(t)
}

/// Parse one line; `Ok(None)` for blank, comment and unusable lines.
fn parse_line(line: &str) -> Result<Option<Signer>, String> {
    let rest = line.trim_start_matches([' ', '\t']);
    if rest.is_empty() || rest.starts_with('#') {
        return Ok(None);
    }
    let (principals, rest) = next_token(rest)?;
    if principals.is_empty() {
        return Err("empty principals".into());
    }
    let rest = rest.trim_start_matches([' ', '\t']);
    // The options field is present when the next token is not a key type
    // (sshsig.c tries to read a key first, then options).
    let first = rest.split([' ', '\t']).next().unwrap_or("");
    let (options, rest) = if is_key_type(first) {
        (None, rest)
    } else {
        let (opts, rest) = options_field(rest)?;
        (Some(opts), rest.trim_start_matches([' ', '\t']))
    };
    let opts = match options {
        Some(o) => parse_options(o)?,
        None => Options::default(),
    };
    let mut fields = rest.split([' ', '\t']).filter(|s| !s.is_empty());
    let key_type = fields.next().ok_or("missing key")?;
    let key_b64 = fields.next().ok_or("missing key data")?;
    if key_type != "ssh-ed25519" {
        if is_known_unsupported_key_type(key_type) {
            log::warn!(
                "allowed_signers: ignoring {key_type} key of {principals}: only ssh-ed25519 signers are supported"
            );
            return Ok(None);
        }
        return Err(format!("unknown key type {key_type:?}"));
    }
    if opts.cert_authority {
        log::warn!(
            "allowed_signers: ignoring cert-authority line of {principals}: SSH certificates are not supported"
        );
        return Ok(None);
    }
    let public = PublicKey::from_openssh(&format!("{key_type} {key_b64}"))
        .map_err(|e| format!("invalid {key_type} key: {e}"))?;
    let key = match public.key_data() {
        KeyData::Ed25519(k) => k.0,
        other => {
            return Err(format!(
                "key data is {}, not ssh-ed25519",
                other.algorithm()
            ))
        }
    };
    Ok(Some(Signer {
        principals: principals.to_string(),
        key,
        fingerprint: public.fingerprint(HashAlg::Sha256).to_string(),
        namespaces: opts.namespaces,
        valid_after: opts.valid_after,
        valid_before: opts.valid_before,
    }))
}

/// A whitespace-delimited token, or a double-quoted one (quotes removed).
fn next_token(s: &str) -> Result<(&str, &str), String> {
    if let Some(inner) = s.strip_prefix('"') {
        let end = inner.find('"').ok_or("unterminated quote")?;
        Ok((&inner[..end], &inner[end + 1..]))
    } else {
        let end = s.find([' ', '\t']).ok_or("missing key")?;
        Ok((&s[..end], &s[end..]))
    }
}

/// The options field: up to the first whitespace outside double quotes.
fn options_field(s: &str) -> Result<(&str, &str), String> {
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ' ' | '\t' if !quoted => return Ok((&s[..i], &s[i..])),
            _ => {}
        }
    }
    if quoted {
        Err("unterminated quote in options".into())
    } else {
        Err("missing key".into())
    }
}

#[derive(Default)]
struct Options {
    cert_authority: bool,
    namespaces: Option<String>,
    valid_after: Option<i64>,
    valid_before: Option<i64>,
}

/// sshsig.c `sshsigopt_parse`: comma-separated, names case-insensitive,
/// values double-quoted; unknown options are an error.
fn parse_options(mut s: &str) -> Result<Options, String> {
    let mut o = Options::default();
    loop {
        let lower = s.to_ascii_lowercase();
        if lower.starts_with("cert-authority") {
            o.cert_authority = true;
            s = &s["cert-authority".len()..];
        } else if let Some(name) = ["namespaces", "valid-after", "valid-before"]
            .into_iter()
            .find(|n| lower.starts_with(&format!("{n}=")))
        {
            let (value, rest) = quoted_value(&s[name.len() + 1..])
                .ok_or_else(|| format!("{name} needs a double-quoted value"))?;
            match name {
                "namespaces" => o.namespaces = Some(value.to_string()),
                "valid-after" => {
                    o.valid_after = Some(parse_time(value).ok_or("invalid \"valid-after\" time")?)
                }
                _ => {
                    let t = parse_time(value).ok_or("invalid \"valid-before\" time")?;
                    if t == 0 {
                        return Err("invalid \"valid-before\" time".into());
                    }
                    o.valid_before = Some(t);
                }
            }
            s = rest;
        } else {
            return Err(format!("unknown option in {s:?}"));
        }
        if s.is_empty() {
            break;
        }
        s = s
            .strip_prefix(',')
            .ok_or_else(|| format!("unknown key option {s:?}"))?;
        if s.is_empty() {
            return Err("unexpected end of options".into());
        }
    }
    if let (Some(a), Some(b)) = (o.valid_after, o.valid_before) {
        if b <= a {
            return Err("\"valid-before\" time is before \"valid-after\"".into());
        }
    }
    Ok(o)
}

fn quoted_value(s: &str) -> Option<(&str, &str)> {
    let inner = s.strip_prefix('"')?;
    let end = inner.find('"')?;
    Some((&inner[..end], &inner[end + 1..]))
}

/// `YYYYMMDD[Z]` or `YYYYMMDDHHMM[SS][Z]` (ssh-keygen's format), read as
/// UTC with or without the `Z` (see the module docs), to seconds since the
/// epoch.
pub(crate) fn parse_time(s: &str) -> Option<i64> {
    let digits = s.strip_suffix(['Z', 'z']).unwrap_or(s);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let num = |r: std::ops::Range<usize>| digits[r].parse::<i64>().ok();
    let (y, mo, d) = match digits.len() {
        8 | 12 | 14 => (num(0..4)?, num(4..6)?, num(6..8)?),
        _ => return None,
    };
    let (h, mi, sec) = match digits.len() {
        8 => (0, 0, 0),
        12 => (num(8..10)?, num(10..12)?, 0),
        _ => (num(8..10)?, num(10..12)?, num(12..14)?),
    };
    if !(1..=12).contains(&mo)
        || !(1..=days_in_month(y, mo)).contains(&d)
        || h > 23
        || mi > 59
        || sec > 60
    {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// OpenSSH `match_pattern_list`: comma-separated patterns with `*`/`?`
/// wildcards; a pattern starting with `!` negates. True when some positive
/// pattern matches and no negated one does.
fn match_pattern_list(s: &str, list: &str) -> bool {
    let mut matched = false;
    for p in list.split(',') {
        if let Some(neg) = p.strip_prefix('!') {
            if match_pattern(s.as_bytes(), neg.as_bytes()) {
                return false;
            }
        } else if match_pattern(s.as_bytes(), p.as_bytes()) {
            matched = true;
        }
    }
    matched
}

pub(crate) fn match_pattern(s: &[u8], p: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (None, Some(_)) => false,
        (Some(b'*'), _) => (0..=s.len()).any(|i| match_pattern(&s[i..], &p[1..])),
        (Some(_), None) => false,
        (Some(b'?'), Some(_)) => match_pattern(&s[1..], &p[1..]),
        (Some(a), Some(b)) => a == b && match_pattern(&s[1..], &p[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOpKCNc3LKs7qz2P/B7JEmrQZATwcvvK/L5RLxGLwnTY";

    #[test]
    fn parses_plain_and_optioned_lines() {
        let text = format!(
            "# comment\n\n\
             alice@example.com {KEY} alice\n\
             \"bob@example.com,carol@*\" namespaces=\"git,file\",valid-after=\"20200101\",VALID-BEFORE=\"20300101Z\" {KEY}\n"
        );
        let s = AllowedSigners::parse(&text).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s.signers()[0].principals(), "alice@example.com");
        assert!(s.signers()[0].fingerprint().starts_with("SHA256:"));
        let b = &s.signers()[1];
        assert_eq!(b.principals(), "bob@example.com,carol@*");
        assert_eq!(b.valid_after(), Some(1_577_836_800));
        assert_eq!(b.valid_before(), Some(1_893_456_000));
    }

    #[test]
    fn lookup_honours_time_and_namespace() {
        let text = format!("old valid-before=\"20200101\" {KEY}\nns namespaces=\"file\" {KEY}\n");
        let s = AllowedSigners::parse(&text).unwrap();
        let key = s.signers()[0].key;
        match s.lookup(&key, 1_600_000_000) {
            Lookup::NotValid(sig, Validity::Expired { valid_before }) => {
                assert_eq!(sig.principals(), "old");
                assert_eq!(valid_before, 1_577_836_800);
            }
            other => panic!("unexpected {other:?}"),
        }
        // Before expiry the first line allows it.
        assert!(matches!(s.lookup(&key, 1_500_000_000), Lookup::Trusted(_)));
        assert!(matches!(s.lookup(&[0; 32], 1), Lookup::Unknown));
        let ns_only =
            AllowedSigners::parse(&format!("ns namespaces=\"file,!git\" {KEY}\n")).unwrap();
        assert!(matches!(
            ns_only.lookup(&key, 1),
            Lookup::NotValid(_, Validity::NamespaceNotAllowed)
        ));
    }

    #[test]
    fn unsupported_keys_are_ignored_and_garbage_refused() {
        let s = AllowedSigners::parse(
            "r ssh-rsa AAAAB3NzaC1yc2E=\nca cert-authority ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOpKCNc3LKs7qz2P/B7JEmrQZATwcvvK/L5RLxGLwnTY\n",
        )
        .unwrap();
        assert!(s.is_empty());
        let e = AllowedSigners::parse("x\n").unwrap_err();
        assert_eq!(e.line, 1);
        let e = AllowedSigners::parse(&format!("ok {KEY}\nx bogus=\"1\" {KEY}\n")).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(AllowedSigners::parse(&format!(
            "x valid-after=\"20300101\",valid-before=\"20200101\" {KEY}"
        ))
        .is_err());
        assert!(AllowedSigners::parse("x ssh-ed25519 notbase64").is_err());
    }

    #[test]
    fn time_formats() {
        assert_eq!(parse_time("19700101"), Some(0));
        assert_eq!(parse_time("19700101Z"), Some(0));
        assert_eq!(parse_time("197001010001"), Some(60));
        assert_eq!(parse_time("19700101000102Z"), Some(62));
        assert_eq!(parse_time("20240229"), Some(1_709_164_800));
        assert_eq!(parse_time("20230229"), None);
        assert_eq!(parse_time("2024"), None);
        assert_eq!(parse_time("2024-01-01"), None);
    }

    #[test]
    fn patterns() {
        assert!(match_pattern_list("git", "git"));
        assert!(match_pattern_list("git", "file,g*"));
        assert!(!match_pattern_list("git", "file"));
        assert!(!match_pattern_list("git", "*,!git"));
        assert!(match_pattern_list("git", "g?t"));
    }
}
