//! The small validated values every module shares: [`Slot`], [`OsVersion`],
//! [`Sha256`] and [`Expected`] (a length plus a digest that a stream must
//! match), and the one streaming check that uses them.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

/// A value that failed validation; the message names the value and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// Not `a` or `b`.
    #[error("slot {0:?} is not \"a\" or \"b\"")]
    Slot(String),
    /// An OS version that cannot be used in a boot entry file name.
    #[error("OS version {version:?} is not usable in a boot entry name: {reason}")]
    Version {
        /// The rejected version string.
        version: String,
        /// The rule it broke.
        reason: &'static str,
    },
    /// Not 64 lowercase or uppercase hex digits.
    #[error("sha256 {0:?} is not 64 hex digits")]
    Sha256(String),
}

/// One of the two OS slots. Slot `a` owns the partitions `root-a` and
/// `verity-a`, slot `b` owns `root-b` and `verity-b`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    /// Slot `a`.
    A,
    /// Slot `b`.
    B,
}

impl Slot {
    /// Both slots, `a` first.
    pub const ALL: [Slot; 2] = [Slot::A, Slot::B];

    /// The slot that is not `self`.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// `"a"` or `"b"`, as on the kernel command line (`cairn.slot=`).
    pub fn as_str(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    /// GPT partition name of the slot's erofs root.
    pub fn root_label(self) -> &'static str {
        match self {
            Slot::A => "root-a",
            Slot::B => "root-b",
        }
    }

    /// GPT partition name of the slot's dm-verity hash tree.
    pub fn verity_label(self) -> &'static str {
        match self {
            Slot::A => "verity-a",
            Slot::B => "verity-b",
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Slot {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "a" => Ok(Slot::A),
            "b" => Ok(Slot::B),
            other => Err(ValueError::Slot(other.to_string())),
        }
    }
}

/// An OS version that is safe to put in an ESP file name and in a
/// `loader.conf` glob pattern.
///
/// Rules: 1–64 characters from `0-9 a-z . _ ~ -`, starting with a digit or
/// letter. In particular no `+` (it starts the boot counter, and
/// systemd-boot and systemd-bless-boot look for the *last* `+`), no
/// uppercase (systemd-boot lower-cases entry ids and patterns), no glob
/// characters `* ? [ ] \` and no path separators.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OsVersion(String);

impl OsVersion {
    /// Validate `s` (see the type docs for the rules).
    pub fn new(s: &str) -> Result<Self, ValueError> {
        let bad = |reason| ValueError::Version {
            version: s.to_string(),
            reason,
        };
        if s.is_empty() {
            return Err(bad("it is empty"));
        }
        if s.len() > 64 {
            return Err(bad("it is longer than 64 characters"));
        }
        if !s
            .bytes()
            .next()
            .is_some_and(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
        {
            return Err(bad("it must start with a digit or a lowercase letter"));
        }
        if s.contains('+') {
            return Err(bad(
                "'+' is reserved for the boot counter in the entry file name",
            ));
        }
        if s.bytes().any(|c| c.is_ascii_uppercase()) {
            return Err(bad(
                "uppercase letters are not allowed (systemd-boot lower-cases entry ids)",
            ));
        }
        if !s
            .bytes()
            .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase() || b"._~-".contains(&c))
        {
            return Err(bad("only 0-9, a-z, '.', '_', '~' and '-' are allowed"));
        }
        Ok(OsVersion(s.to_string()))
    }

    /// The version string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for OsVersion {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OsVersion::new(s)
    }
}

impl TryFrom<String> for OsVersion {
    type Error = ValueError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        OsVersion::new(&s)
    }
}

impl From<OsVersion> for String {
    fn from(v: OsVersion) -> String {
        v.0
    }
}

/// A SHA-256 digest. Serialized and displayed as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sha256(pub [u8; 32]);

impl Sha256 {
    /// Parse 64 hex digits.
    pub fn from_hex(s: &str) -> Result<Self, ValueError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| ValueError::Sha256(s.to_string()))?;
        Ok(Sha256(out))
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        Sha256(sha2::Sha256::digest(data).into())
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({self})")
    }
}

impl TryFrom<String> for Sha256 {
    type Error = ValueError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Sha256::from_hex(&s)
    }
}

impl From<Sha256> for String {
    fn from(d: Sha256) -> String {
        d.to_string()
    }
}

/// What a stream must be: exactly `len` bytes whose SHA-256 is `sha256`
/// (from the signed TUF target).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expected {
    /// Exact length in bytes.
    pub len: u64,
    /// SHA-256 of those bytes.
    pub sha256: Sha256,
}

impl Expected {
    /// The length and digest of `data` (handy in tests and for small files).
    pub fn of(data: &[u8]) -> Self {
        Expected {
            len: data.len() as u64,
            sha256: Sha256::of(data),
        }
    }
}

/// How a stream failed to be what [`Expected`] said.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Reading the source failed.
    #[error("reading the source failed after {offset} bytes: {source}")]
    Read {
        /// Bytes read before the failure.
        offset: u64,
        /// The I/O error.
        source: io::Error,
    },
    /// Writing the destination failed.
    #[error("writing failed after {offset} bytes: {source}")]
    Write {
        /// Bytes written before the failure.
        offset: u64,
        /// The I/O error.
        source: io::Error,
    },
    /// The source ended early.
    #[error("the source ended after {got} bytes, {expected} were declared")]
    TooShort {
        /// Declared length.
        expected: u64,
        /// Bytes actually delivered.
        got: u64,
    },
    /// The source had more bytes than declared.
    #[error("the source is longer than the declared {expected} bytes")]
    TooLong {
        /// Declared length.
        expected: u64,
    },
    /// The right length but the wrong bytes.
    #[error("sha256 is {actual}, the signed target says {expected}")]
    HashMismatch {
        /// From the target.
        expected: Sha256,
        /// What was streamed.
        actual: Sha256,
    },
}

/// Copy exactly `expected.len` bytes from `src` to `dst`, hashing on the
/// way, and fail if the source is shorter, longer, or hashes differently.
/// Never reads more than `len + 1` bytes. Single-threaded: meant for small
/// files (UKIs, tens of MB); slot partitions use [`crate::write`].
pub(crate) fn copy_verified(
    src: &mut dyn Read,
    dst: &mut dyn Write,
    expected: &Expected,
) -> Result<(), StreamError> {
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done: u64 = 0;
    while done < expected.len {
        let want =
            usize::try_from((expected.len - done).min(buf.len() as u64)).unwrap_or(buf.len());
        let n = match src.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(StreamError::TooShort {
                    expected: expected.len,
                    got: done,
                })
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(StreamError::Read {
                    offset: done,
                    source,
                })
            }
        };
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n])
            .map_err(|source| StreamError::Write {
                offset: done,
                source,
            })?;
        done += n as u64;
    }
    if read_one_more(src).map_err(|source| StreamError::Read {
        offset: done,
        source,
    })? {
        return Err(StreamError::TooLong {
            expected: expected.len,
        });
    }
    let actual = Sha256(hasher.finalize().into());
    if actual != expected.sha256 {
        return Err(StreamError::HashMismatch {
            expected: expected.sha256,
            actual,
        });
    }
    Ok(())
}

/// After the declared length: does the source still have a byte?
pub(crate) fn read_one_more(src: &mut dyn Read) -> io::Result<bool> {
    let mut probe = [0u8; 1];
    loop {
        match src.read(&mut probe) {
            Ok(n) => return Ok(n > 0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_follow_the_file_name_rules() {
        for ok in ["1.2.0", "2026.11.22-1", "1.0~rc1", "a_b", "0"] {
            assert_eq!(OsVersion::new(ok).map(|v| v.to_string()), Ok(ok.into()));
        }
        for (bad, why) in [
            ("", "empty"),
            ("1.2+3", "'+'"),
            ("1.2.0-RC1", "uppercase"),
            ("-1", "start"),
            ("1/2", "only"),
            ("1*", "only"),
            ("1[2]", "only"),
        ] {
            let err = OsVersion::new(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
        assert!(OsVersion::new(&"1".repeat(65)).is_err());
    }

    #[test]
    fn slot_labels_and_round_trip() {
        assert_eq!(Slot::A.other(), Slot::B);
        assert_eq!(Slot::B.root_label(), "root-b");
        assert_eq!(Slot::A.verity_label(), "verity-a");
        assert_eq!("b".parse::<Slot>(), Ok(Slot::B));
        assert_eq!("c".parse::<Slot>(), Err(ValueError::Slot("c".into())));
        assert_eq!(serde_json::to_string(&Slot::A).unwrap(), "\"a\"");
    }

    #[test]
    fn sha256_hex_round_trip() {
        let d = Sha256::of(b"abc");
        assert_eq!(
            d.to_string(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(Sha256::from_hex(&d.to_string()), Ok(d));
        assert!(Sha256::from_hex("zz").is_err());
    }

    #[test]
    fn copy_verified_checks_length_and_hash() {
        let data = b"hello world".to_vec();
        let exp = Expected::of(&data);
        let mut out = Vec::new();
        copy_verified(&mut &data[..], &mut out, &exp).unwrap();
        assert_eq!(out, data);

        let short = &data[..5];
        assert!(matches!(
            copy_verified(&mut &short[..], &mut Vec::new(), &exp),
            Err(StreamError::TooShort {
                expected: 11,
                got: 5
            })
        ));
        let long = b"hello world!".to_vec();
        assert!(matches!(
            copy_verified(&mut &long[..], &mut Vec::new(), &exp),
            Err(StreamError::TooLong { expected: 11 })
        ));
        let other = b"hello_world".to_vec();
        assert!(matches!(
            copy_verified(&mut &other[..], &mut Vec::new(), &exp),
            Err(StreamError::HashMismatch { .. })
        ));
    }
}
