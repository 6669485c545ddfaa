//! The one error type of this crate.

use std::path::PathBuf;

use crate::{signers::SignersParseError, CommitId};

/// Which fetch limit was hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchLimitKind {
    /// More than this many bytes were received.
    Bytes(u64),
    /// The fetch took longer than this (or the server stalled that long).
    Time(std::time::Duration),
}

impl std::fmt::Display for FetchLimitKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchLimitKind::Bytes(n) => write!(f, "size limit of {n} bytes"),
            FetchLimitKind::Time(d) => write!(f, "time limit of {} s", d.as_secs_f64()),
        }
    }
}

/// Why a signing key was not valid for a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// The commit's committer time is after the key's `valid-before`.
    Expired {
        /// `valid-before`, seconds since the epoch (UTC).
        valid_before: i64,
    },
    /// The commit's committer time is before the key's `valid-after`.
    NotYetValid {
        /// `valid-after`, seconds since the epoch (UTC).
        valid_after: i64,
    },
    /// The key's `namespaces=` option does not allow the `git` namespace.
    NamespaceNotAllowed,
}

impl std::fmt::Display for Validity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Validity::Expired { valid_before } => {
                write!(f, "key expired (valid-before {valid_before} s since epoch)")
            }
            Validity::NotYetValid { valid_after } => {
                write!(
                    f,
                    "key not yet valid (valid-after {valid_after} s since epoch)"
                )
            }
            Validity::NamespaceNotAllowed => {
                write!(f, "key's namespaces= option does not allow \"git\"")
            }
        }
    }
}

/// Everything that can go wrong while fetching, verifying, materializing or
/// recording a commit.
///
/// Variants that refuse a commit name it; none of them changes the recorded
/// commit. [`SourceError::is_refusal`] tells a refusal (the repository's
/// content is not acceptable) from an operational failure (network, disk).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    // ---- refusals: the content of the repository is not acceptable ----
    /// The commit carries no `gpgsig` header.
    #[error("commit {commit} is not signed")]
    Unsigned {
        /// The refused commit.
        commit: CommitId,
    },
    /// The commit's signature is not a well-formed SSH signature for git.
    #[error("commit {commit} has a malformed signature: {reason}")]
    MalformedSignature {
        /// The refused commit.
        commit: CommitId,
        /// What is wrong with it.
        reason: String,
    },
    /// The commit is signed with a key type this crate does not verify
    /// (only ssh-ed25519 is supported).
    #[error(
        "commit {commit} is signed with an unsupported {algorithm} key; \
         only ssh-ed25519 signing keys are supported"
    )]
    UnsupportedKeyType {
        /// The refused commit.
        commit: CommitId,
        /// The key algorithm named in the signature.
        algorithm: String,
    },
    /// The signing key is not among the signers trusted for this commit.
    #[error("commit {commit} is signed by unknown key {fingerprint}")]
    UnknownKey {
        /// The refused commit.
        commit: CommitId,
        /// SHA256 fingerprint of the signing key.
        fingerprint: String,
    },
    /// The signing key is trusted but not valid for this commit.
    #[error("commit {commit}: key {fingerprint} of {principal} not valid at committer time {time}: {reason}")]
    KeyNotValidAt {
        /// The refused commit.
        commit: CommitId,
        /// The principal(s) of the matching `allowed_signers` line.
        principal: String,
        /// SHA256 fingerprint of the signing key.
        fingerprint: String,
        /// The commit's committer time, seconds since the epoch.
        time: i64,
        /// Expired, not yet valid, or not allowed for git.
        reason: Validity,
    },
    /// The signature does not verify: the commit was altered or the
    /// signature was made over other content.
    #[error("commit {commit} has a bad signature by key {fingerprint}")]
    BadSignature {
        /// The refused commit.
        commit: CommitId,
        /// SHA256 fingerprint of the key named in the signature.
        fingerprint: String,
    },
    /// The new tip does not descend from the recorded commit.
    #[error(
        "refusing to move from recorded commit {recorded} to {tip}: \
         {tip} does not descend from it (history rewrite or rollback; roll back with a new signed revert commit instead)"
    )]
    Rewind {
        /// The last recorded (applied) commit.
        recorded: CommitId,
        /// The branch tip that was fetched.
        tip: CommitId,
    },
    /// The commit changes `.cairn/allowed_signers` but is not signed by a
    /// signer trusted before it.
    #[error(
        "commit {commit} changes .cairn/allowed_signers but its key {fingerprint} \
         was not a trusted signer before that commit"
    )]
    RotationByNonSigner {
        /// The refused commit.
        commit: CommitId,
        /// SHA256 fingerprint of the signing key.
        fingerprint: String,
    },
    /// The `.cairn/allowed_signers` file in a commit cannot be parsed.
    #[error("commit {commit} carries an invalid .cairn/allowed_signers: {source}")]
    InvalidSignersFile {
        /// The refused commit.
        commit: CommitId,
        /// What is wrong with the file.
        source: SignersParseError,
    },
    /// A commit's parent is missing from the local cache (for example a
    /// shallow remote): the history between the recorded commit and the tip
    /// cannot be verified.
    #[error("history incomplete: parent {parent} of commit {commit} is missing (shallow or damaged repository?)")]
    IncompleteHistory {
        /// The commit whose parent is missing.
        commit: CommitId,
        /// The missing parent.
        parent: CommitId,
    },
    /// The raw commit object cannot be parsed.
    #[error("commit {commit} is malformed: {reason}")]
    MalformedCommit {
        /// The refused commit.
        commit: CommitId,
        /// What is wrong with it.
        reason: String,
    },
    /// A tree entry cannot be materialized safely (bad name, symlink that
    /// leaves the tree).
    #[error("commit {commit}: refusing tree entry {path:?}: {reason}")]
    UnsafeTreeEntry {
        /// The commit being checked out.
        commit: CommitId,
        /// Path of the entry inside the tree.
        path: String,
        /// Why it is refused.
        reason: String,
    },

    // ---- configuration ----
    /// The image-baked (or command-line) `allowed_signers` file is invalid.
    #[error("trusted signers file {path}: {source}")]
    Trust {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: SignersParseError,
    },
    /// The branch name is not a valid git branch name.
    #[error("invalid branch name {branch:?}")]
    InvalidBranch {
        /// The configured branch.
        branch: String,
    },

    // ---- operational failures ----
    /// Fetching from the remote failed.
    #[error("fetching {url} failed: {source}")]
    Fetch {
        /// The remote URL.
        url: String,
        /// The libgit2 error.
        source: git2::Error,
    },
    /// A fetch limit was hit; the fetch was aborted.
    #[error("fetching {url} aborted: {limit} exceeded")]
    FetchLimit {
        /// The remote URL.
        url: String,
        /// Which limit.
        limit: FetchLimitKind,
    },
    /// The remote has no such branch.
    #[error("remote {url} has no branch {branch:?}")]
    BranchNotFound {
        /// The remote URL.
        url: String,
        /// The configured branch.
        branch: String,
    },
    /// A local git operation on the cache repository failed.
    #[error("git cache {path}: {context}: {source}")]
    Git {
        /// The cache repository.
        path: PathBuf,
        /// What was being done.
        context: String,
        /// The libgit2 error.
        source: git2::Error,
    },
    /// Reading or writing the state directory failed.
    #[error("state {path}: {source}")]
    State {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The recorded-commit file exists but does not hold a commit id.
    #[error("state file {path} is corrupt: {reason}")]
    StateCorrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

impl SourceError {
    /// True when the repository's content was refused (signature, trust,
    /// rewind, malformed object), false for operational failures (network,
    /// disk, configuration) that may succeed on retry.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            SourceError::Unsigned { .. }
                | SourceError::MalformedSignature { .. }
                | SourceError::UnsupportedKeyType { .. }
                | SourceError::UnknownKey { .. }
                | SourceError::KeyNotValidAt { .. }
                | SourceError::BadSignature { .. }
                | SourceError::Rewind { .. }
                | SourceError::RotationByNonSigner { .. }
                | SourceError::InvalidSignersFile { .. }
                | SourceError::IncompleteHistory { .. }
                | SourceError::MalformedCommit { .. }
                | SourceError::UnsafeTreeEntry { .. }
        )
    }

    /// The commit this error refuses, if it names one.
    pub fn commit(&self) -> Option<CommitId> {
        match self {
            SourceError::Unsigned { commit }
            | SourceError::MalformedSignature { commit, .. }
            | SourceError::UnsupportedKeyType { commit, .. }
            | SourceError::UnknownKey { commit, .. }
            | SourceError::KeyNotValidAt { commit, .. }
            | SourceError::BadSignature { commit, .. }
            | SourceError::RotationByNonSigner { commit, .. }
            | SourceError::InvalidSignersFile { commit, .. }
            | SourceError::IncompleteHistory { commit, .. }
            | SourceError::MalformedCommit { commit, .. }
            | SourceError::UnsafeTreeEntry { commit, .. } => Some(*commit),
            SourceError::Rewind { tip, .. } => Some(*tip),
            _ => None,
        }
    }
}
