//! Signed Git source (issue 3): fetch a branch, verify every new commit's
//! SSH signature, refuse rewinds, rotate signers safely, and record the
//! last applied commit atomically.
//!
//! The agent and `cairnctl source pull` share one code path:
//! [`Source::fetch_and_verify`], [`Source::checkout`], [`Source::record`]
//! (and [`pull`], which chains the three).
//!
//! # Trust model
//!
//! **Signatures.** Commits are signed with git's native SSH signing
//! (`gpg.format=ssh`): an SSHSIG in the `gpgsig` header, namespace `git`.
//! The signed payload is the commit object without that header, split the
//! way `git verify-commit` splits it ([`parse::split_signed_commit`]). Only
//! ssh-ed25519 keys are verified (with `ed25519-dalek`, strict
//! verification); a commit signed with an RSA, ECDSA, security-key or
//! certificate key is refused as [`SourceError::UnsupportedKeyType`].
//! Signers are listed in git's `allowed_signers` format ([`AllowedSigners`]);
//! a key is identified by its public key, and the matching line's
//! `namespaces=` must allow `git`.
//!
//! **Time of validity.** `valid-after`/`valid-before` are checked against
//! the commit's *committer timestamp*, as git does (it passes
//! `-Overify-time=<committer time>` to `ssh-keygen`). The timestamp is part
//! of the signed payload, so it is what the signer asserted; a key that
//! expired yesterday still vouches for the commits it signed before, and
//! cannot sign new ones unless the signer lies about the date — expiry is a
//! rotation aid, removal from the signer set (below) is the revocation.
//! Times in `allowed_signers` without a `Z` suffix are read as UTC.
//!
//! **Every commit.** Every commit between the recorded commit (exclusive)
//! and the new tip is verified, parents before children, merge commits and
//! the commits they merge included. One bad commit refuses the whole
//! update, naming that commit.
//!
//! **First pull.** When nothing is recorded yet, the tip *and its whole
//! history* must verify: every commit back to the root commit(s). The
//! image-baked set ([`SourceConfig::trust`]) is the trust root for root
//! commits, so a fleet repository must be signed from its first commit (a
//! repository with an unsigned past is migrated by starting a new history).
//! This is the strict choice: a node that has never seen the repository
//! cannot tell a legitimate old commit from one forged with a key that was
//! removed later, except by following the chain of rotations from the
//! root. It also means a brand-new node can be shown an *old* signed state
//! (nothing recorded to compare with); baking a recent image, and keeping
//! the state directory, is the defence.
//!
//! **Signer rotation.** A repository may carry `.cairn/allowed_signers`.
//! The set that signs commit C is "the set after each of C's parents": the
//! parent tree's `.cairn/allowed_signers` if it has one, else the
//! image-baked set (also for root commits). So a change to the file takes
//! effect from the commit's *children* on: the commit that makes it must be
//! signed by a signer trusted before it (else
//! [`SourceError::RotationByNonSigner`]), and a key removed by commit C
//! can no longer sign C's descendants. The repository's file *replaces* the
//! image-baked set (deleting the file hands trust back to the image set).
//! A merge commit's key must be trusted after *every* parent: otherwise a
//! removed key could merge the current branch into a side branch started
//! before its removal and make it the first parent.
//!
//! **Rewinds.** The new tip must descend from the recorded commit
//! ([`SourceError::Rewind`] otherwise): force-pushes and branch resets are
//! refused, and a rollback is a new signed commit that reverts. Refusals
//! leave the recorded commit, the materialized trees and (since nothing is
//! rendered) the cluster untouched.
//!
//! **Recording.** [`Source::record`] writes the commit id to
//! `state_dir/recorded` with write-to-temp, fsync, rename, fsync of the
//! directory: after a crash the file holds the old or the new id. Only a
//! [`VerifiedCommit`] can be recorded, and only if it descends from what is
//! recorded now.
//!
//! # Transport
//!
//! libgit2 (git2) for `git://` and local paths; `http://`/`https://` and
//! ssh are this crate's own, registered with libgit2: Git's smart HTTP
//! protocol over `ureq` + rustls (Mozilla's roots; credentials as
//! `https://USER:TOKEN@host/…`; `http(s)_proxy` honoured), and ssh through
//! the system OpenSSH client in batch mode with strict host-key checking
//! ([`SshOptions`]: key, `known_hosts`). libgit2 is built without OpenSSL
//! and libssh2: with them it initializes OpenSSL in every process that
//! opens a repository, ~4 MiB resident in the long-running agent. TLS
//! trust is not what protects the content anyway: signatures do.
//!
//! Fetches are always full-depth into a bare cache (`state_dir/cache.git`),
//! only `refs/heads/<branch>`, no tags. A cache that turned shallow, or a
//! history with a missing parent (a shallow remote), is refused
//! ([`SourceError::IncompleteHistory`], or a fetch error where libgit2
//! rejects a shallow server's advertisement) rather than having the
//! boundary taken for a root commit; tree and parents read by this crate's
//! own parser are cross-checked with libgit2's, so grafts cannot hide
//! history either. Each fetch has a size and a time limit
//! ([`FetchLimits`], [`SourceError::FetchLimit`]). A poll where nothing
//! changed costs one ref negotiation with the remote and no verification.
//!
//! # State directory layout
//!
//! ```text
//! state_dir/cache.git/     bare git cache (refs/cairn/{fetched,previous,recorded})
//! state_dir/recorded       the last applied commit id, one line
//! state_dir/trees/<id>/    materialized trees (the recorded one and the previous are kept)
//! ```
//!
//! One process at a time may use a state directory.
//!
//! All git2 work is synchronous; async callers wrap it in
//! `spawn_blocking`. This crate logs through `log` and installs no logger.

#![deny(unsafe_code)]
#![warn(missing_docs)]

mod error;
mod fetch;
pub mod parse;
mod signers;
mod state;
mod transport;
mod verify;

use std::{
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
};

use git2::{Oid, Repository};

pub use error::{FetchLimitKind, SourceError, Validity};
pub use fetch::{FetchLimits, SshOptions};
pub use signers::{AllowedSigners, Signer, SignersParseError};
pub use verify::{verify_local, SignedBy, Verified, VerifiedCommit, SIGNERS_PATH};

/// A git commit id (SHA-1, 40 hex digits when displayed).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CommitId(Oid);

impl CommitId {
    pub(crate) fn oid(self) -> Oid {
        self.0
    }
}

impl fmt::Display for CommitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for CommitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CommitId({})", self.0)
    }
}

/// A commit id was not 40 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a 40-digit hex commit id: {0:?}")]
pub struct CommitIdParseError(String);

impl FromStr for CommitId {
    type Err = CommitIdParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 40 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(CommitIdParseError(s.chars().take(60).collect()));
        }
        Oid::from_str(s)
            .map(CommitId)
            .map_err(|_| CommitIdParseError(s.to_string()))
    }
}

/// Where to fetch from, what to trust, where to keep state.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Remote URL: `https://`, `ssh://` (or `user@host:path`), `git://`,
    /// `file://` or a local path.
    pub url: String,
    /// Branch name (without `refs/heads/`).
    pub branch: String,
    /// The agent's state directory for this source.
    pub state_dir: PathBuf,
    /// The image-baked signer set: the root of trust.
    pub trust: AllowedSigners,
    /// Size and time limits for each fetch.
    pub limits: FetchLimits,
    /// ssh credentials and host keys.
    pub ssh: SshOptions,
}

impl SourceConfig {
    /// A configuration with default limits and no ssh credentials.
    pub fn new(
        url: impl Into<String>,
        branch: impl Into<String>,
        state_dir: impl Into<PathBuf>,
        trust: AllowedSigners,
    ) -> Self {
        SourceConfig {
            url: url.into(),
            branch: branch.into(),
            state_dir: state_dir.into(),
            trust,
            limits: FetchLimits::default(),
            ssh: SshOptions::default(),
        }
    }

    /// What `cairnctl source pull --url --branch --trust --state` builds:
    /// reads the trusted signers from an `allowed_signers` file.
    pub fn from_cli(
        url: &str,
        branch: &str,
        trust_file: &Path,
        state_dir: &Path,
    ) -> Result<Self, SourceError> {
        let trust = AllowedSigners::from_file(trust_file)?;
        Ok(Self::new(url, branch, state_dir, trust))
    }
}

/// A signed Git source: its cache, its recorded commit, its configuration.
pub struct Source {
    cfg: SourceConfig,
    repo: Repository,
    cache_path: PathBuf,
    recorded: Option<CommitId>,
    /// The last successful verification: (recorded it started from, result).
    last_verified: Option<(Option<CommitId>, VerifiedCommit)>,
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Source")
            .field("url", &self.cfg.url)
            .field("branch", &self.cfg.branch)
            .field("state_dir", &self.cfg.state_dir)
            .field("recorded", &self.recorded)
            .finish()
    }
}

const CACHE_DIR: &str = "cache.git";
const RECORDED_FILE: &str = "recorded";
const TREES_DIR: &str = "trees";
const RECORDED_REF: &str = "refs/cairn/recorded";

impl Source {
    /// Open (creating if needed) the state directory and its git cache, and
    /// read the recorded commit. No network access.
    pub fn open(cfg: SourceConfig) -> Result<Source, SourceError> {
        if cfg.branch.is_empty()
            || !git2::Reference::is_valid_name(&format!("refs/heads/{}", cfg.branch))
        {
            return Err(SourceError::InvalidBranch {
                branch: cfg.branch.clone(),
            });
        }
        if cfg.trust.is_empty() {
            log::warn!("no trusted signers configured: every commit will be refused");
        }
        let state_dir = cfg.state_dir.clone();
        std::fs::create_dir_all(&state_dir).map_err(|source| SourceError::State {
            path: state_dir.clone(),
            source,
        })?;
        let cache_path = state_dir.join(CACHE_DIR);
        let repo = open_cache(&state_dir, &cache_path)?;
        let recorded = state::read_recorded(&state_dir.join(RECORDED_FILE))?;
        Ok(Source {
            cfg,
            repo,
            cache_path,
            recorded,
            last_verified: None,
        })
    }

    /// The configuration this source was opened with.
    pub fn config(&self) -> &SourceConfig {
        &self.cfg
    }

    /// Fetch the branch and verify every commit from the recorded one
    /// (exclusive) to the tip; refuse rewinds. Persists nothing (the cache
    /// aside). [`Verified::Unchanged`] when the tip is the recorded commit.
    pub fn fetch_and_verify(&mut self) -> Result<Verified, SourceError> {
        // Another process (cairnctl) may have recorded since we opened.
        self.recorded = state::read_recorded(&self.recorded_path())?;
        let tip = match fetch::fetch_branch(&self.repo, &self.cache_path, &self.cfg) {
            Err(SourceError::Fetch { source, .. } | SourceError::Git { source, .. })
                if fetch::is_cache_damage(&source) =>
            {
                // The cache is only a cache: what was verified and applied
                // is the recorded commit (fsynced on its own). Start it
                // over and fetch once more; verification runs as usual.
                log::warn!(
                    "the git cache {} is damaged ({source}); rebuilding it",
                    self.cache_path.display()
                );
                self.rebuild_cache()?;
                fetch::fetch_branch(&self.repo, &self.cache_path, &self.cfg)?
            }
            r => r?,
        };
        let tip = CommitId(tip);
        if self.repo.is_shallow() {
            // libgit2 would present the shallow boundary as root commits.
            return Err(SourceError::StateCorrupt {
                path: self.cache_path.clone(),
                reason: "the fetch made the cache shallow; refusing to verify a truncated history"
                    .into(),
            });
        }
        if let Some((base, v)) = &self.last_verified {
            if *base == self.recorded && v.id() == tip {
                return Ok(Verified::New(v.clone()));
            }
        }
        let result = verify::verify_history(
            &self.repo,
            &self.cache_path,
            &self.cfg.trust,
            self.recorded,
            tip,
        );
        match &result {
            Ok(Verified::New(v)) => {
                log::info!(
                    "verified {} new commit(s) up to {} from {} ({})",
                    v.newly_verified(),
                    v.id(),
                    self.cfg.url,
                    self.cfg.branch
                );
                self.last_verified = Some((self.recorded, v.clone()));
            }
            Ok(Verified::Unchanged(_)) => {}
            Err(e) => log::warn!("refused {} ({}): {e}", self.cfg.url, self.cfg.branch),
        }
        result
    }

    /// Materialize the verified commit's tree as `state_dir/trees/<id>`
    /// (complete or absent: written to a temporary directory, then
    /// renamed) and return its path.
    pub fn checkout(&self, v: &VerifiedCommit) -> Result<PathBuf, SourceError> {
        state::checkout(&self.repo, &self.trees_dir(), v)
    }

    /// Atomically persist `v` as the last applied commit, then prune
    /// materialized trees other than `v`'s and the previous one's.
    /// Refuses (as [`SourceError::Rewind`]) a commit that does not descend
    /// from the one recorded now.
    pub fn record(&mut self, v: &VerifiedCommit) -> Result<(), SourceError> {
        let path = self.recorded_path();
        let current = state::read_recorded(&path)?;
        if current == Some(v.id()) {
            self.recorded = current;
            return Ok(());
        }
        if let Some(cur) = current {
            let descends = self
                .repo
                .graph_descendant_of(v.id().oid(), cur.oid())
                .unwrap_or(false);
            if !descends {
                return Err(SourceError::Rewind {
                    recorded: cur,
                    tip: v.id(),
                });
            }
        }
        state::write_recorded(&path, v.id())?;
        self.recorded = Some(v.id());
        log::info!("recorded commit {}", v.id());
        if let Err(e) = self
            .repo
            .reference(RECORDED_REF, v.id().oid(), true, "cairn: record")
        {
            log::warn!("could not update {RECORDED_REF}: {e}");
        }
        let mut keep = vec![v.id()];
        keep.extend(current);
        state::prune_trees(&self.trees_dir(), &keep);
        Ok(())
    }

    /// Replace the cache repository with an empty one (renamed aside
    /// first, then removed, so a crash in between leaves a usable state).
    fn rebuild_cache(&mut self) -> Result<(), SourceError> {
        let aside = self.cfg.state_dir.join(".cache-damaged");
        let _ = std::fs::remove_dir_all(&aside);
        std::fs::rename(&self.cache_path, &aside).map_err(|source| SourceError::State {
            path: self.cache_path.clone(),
            source,
        })?;
        self.repo = open_cache(&self.cfg.state_dir, &self.cache_path)?;
        self.last_verified = None;
        if let Err(e) = std::fs::remove_dir_all(&aside) {
            log::warn!("removing {}: {e}", aside.display());
        }
        Ok(())
    }

    /// The last recorded (applied) commit.
    pub fn recorded(&self) -> Option<CommitId> {
        self.recorded
    }

    fn recorded_path(&self) -> PathBuf {
        self.cfg.state_dir.join(RECORDED_FILE)
    }

    fn trees_dir(&self) -> PathBuf {
        self.cfg.state_dir.join(TREES_DIR)
    }
}

/// Open the bare cache, creating it in a temporary directory and renaming
/// it into place so a crash never leaves a half-made cache.
fn open_cache(state_dir: &Path, cache_path: &Path) -> Result<Repository, SourceError> {
    let git_err = |context: &str| {
        let context = context.to_string();
        move |source| SourceError::Git {
            path: cache_path.to_path_buf(),
            context,
            source,
        }
    };
    if !cache_path.exists() {
        let tmp = tempfile::Builder::new()
            .prefix(".cache-")
            .tempdir_in(state_dir)
            .map_err(|source| SourceError::State {
                path: state_dir.to_path_buf(),
                source,
            })?;
        Repository::init_bare(tmp.path()).map_err(git_err("creating cache"))?;
        let tmp_path = tmp.keep();
        std::fs::rename(&tmp_path, cache_path).map_err(|source| SourceError::State {
            path: cache_path.to_path_buf(),
            source,
        })?;
        state::sync_dir(state_dir)?;
    }
    let repo = Repository::open_bare(cache_path).map_err(git_err("opening cache"))?;
    if repo.is_shallow() {
        return Err(SourceError::StateCorrupt {
            path: cache_path.to_path_buf(),
            reason: "the cache repository is shallow; remove it to refetch full history".into(),
        });
    }
    Ok(repo)
}

/// What `cairnctl source pull` does: open, fetch and verify, materialize
/// the tree, record. Returns the (new or unchanged) recorded commit; on any
/// error the recorded commit is unchanged.
pub fn pull(cfg: SourceConfig) -> Result<VerifiedCommit, SourceError> {
    let mut source = Source::open(cfg)?;
    let v = source.fetch_and_verify()?.into_commit();
    source.checkout(&v)?;
    source.record(&v)?;
    Ok(v)
}
