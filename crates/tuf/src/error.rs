//! The client's error type.
//!
//! One enum for the whole client: every variant names the role, file or URL
//! involved, so a message alone says what failed and where. Attack tests
//! assert the exact variant (CONVENTIONS.md item 3).

use std::io;
use std::path::PathBuf;

use crate::transport::TransportError;

/// Everything the TUF client can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a local file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },

    /// The trusted root is missing from the metadata directory.
    #[error("no trusted root at {path}: initialise the client with a trusted root.json first")]
    NoTrustedRoot {
        /// Where `root.json` was expected.
        path: PathBuf,
    },

    /// Fetching a URL failed (connection, HTTP status, missing file).
    #[error("fetching {url}: {source}")]
    Transport {
        /// The URL that was requested.
        url: String,
        /// What went wrong.
        source: TransportError,
    },

    /// A download went past its byte cap (endless-data attack, or a target
    /// longer than its signed length).
    #[error("{url}: more than the allowed {max} bytes (endless data or oversized file)")]
    LengthExceeded {
        /// The URL being downloaded.
        url: String,
        /// The cap in bytes.
        max: u64,
    },

    /// A file's length differs from the signed length.
    #[error("{what}: length is {actual} bytes, signed metadata says {expected}")]
    LengthMismatch {
        /// The metadata file or target.
        what: String,
        /// The signed length.
        expected: u64,
        /// What was received.
        actual: u64,
    },

    /// A file's hash differs from the signed hash (mix-and-match or a
    /// tampered target).
    #[error("{what}: {algorithm} hash is {actual}, signed metadata says {expected}")]
    HashMismatch {
        /// The metadata file or target.
        what: String,
        /// The hash algorithm (`sha256`, `sha512`).
        algorithm: String,
        /// The signed digest (hex).
        expected: String,
        /// The digest of what was received (hex).
        actual: String,
    },

    /// Signed metadata lists a hash algorithm this client does not implement.
    #[error("{what}: unsupported hash algorithm {algorithm:?} (only sha256 and sha512)")]
    UnsupportedHashAlgorithm {
        /// The metadata file or target.
        what: String,
        /// The algorithm name as listed.
        algorithm: String,
    },

    /// Metadata is not valid JSON or does not have the TUF 1.0 shape.
    #[error("{role} metadata is malformed: {reason}")]
    Malformed {
        /// The role whose metadata was being parsed.
        role: String,
        /// What is wrong with it.
        reason: String,
    },

    /// Two signatures in one metadata file carry the same key id.
    #[error("{role} metadata has more than one signature with key id {keyid}")]
    DuplicateSignature {
        /// The role.
        role: String,
        /// The repeated key id.
        keyid: String,
    },

    /// Fewer valid signatures than the role's threshold (arbitrary-software
    /// attack, or a key rotation below threshold).
    #[error("{role} metadata has {valid} valid signature(s) from its {signer}'s keys, threshold is {threshold}")]
    Threshold {
        /// The role whose metadata was verified.
        role: String,
        /// Which metadata's keys were used: "trusted root", "new root" or
        /// the delegating role's name.
        signer: String,
        /// Distinct valid signatures found.
        valid: usize,
        /// The threshold required.
        threshold: u64,
    },

    /// Metadata expired before the update's fixed start time (freeze attack).
    #[error("{role} metadata expired at {expires}")]
    Expired {
        /// The role.
        role: String,
        /// The `expires` value as signed.
        expires: String,
    },

    /// A version number went backwards (rollback attack).
    #[error("rollback of {role}: version {new} is lower than the trusted version {trusted}")]
    Rollback {
        /// The role (or listed file) whose version went back.
        role: String,
        /// The trusted version.
        trusted: u64,
        /// The version offered.
        new: u64,
    },

    /// A version number differs from the one the referring metadata lists
    /// (root must be exactly N+1; snapshot/targets must match their meta).
    #[error("{role} has version {actual}, but {listed_by} requires version {expected}")]
    VersionMismatch {
        /// The role.
        role: String,
        /// The metadata that fixed the expected version.
        listed_by: String,
        /// Expected version.
        expected: u64,
        /// Version received.
        actual: u64,
    },

    /// A metadata file that must be listed is missing from snapshot or
    /// timestamp metadata (including a file dropped since the trusted snapshot).
    #[error("{listed_by} does not list {file}")]
    MissingMeta {
        /// The file name, e.g. `targets.json`.
        file: String,
        /// The metadata that should list it.
        listed_by: String,
    },

    /// A delegated role was requested from a delegator that does not
    /// delegate to it.
    #[error("{delegator} does not delegate to role {role:?}")]
    UnknownDelegation {
        /// The delegated role name.
        role: String,
        /// The delegating role.
        delegator: String,
    },

    /// The requested target is not listed by any role that may sign it.
    #[error("no trusted targets metadata lists {0:?}")]
    TargetNotFound(String),

    /// The API was used out of order.
    #[error("{0}")]
    State(&'static str),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn malformed(role: &str, reason: impl Into<String>) -> Self {
        Error::Malformed {
            role: role.to_string(),
            reason: reason.into(),
        }
    }
}

/// Short for `Result<T, cairn_tuf::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
