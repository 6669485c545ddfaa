//! History verification: every commit from the recorded one (exclusive) to
//! the tip, oldest first, against the signer set in force before it.

use std::{collections::HashMap, path::Path, rc::Rc};

use git2::{ObjectType, Oid, Repository, Sort};

use crate::{
    parse::{self, SshSigError},
    signers::{AllowedSigners, Lookup},
    CommitId, SourceError,
};

/// Where a repository may carry its own signer set.
pub const SIGNERS_PATH: &str = ".cairn/allowed_signers";

/// Who signed a verified commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedBy {
    principals: String,
    fingerprint: String,
}

impl SignedBy {
    /// The principals of the `allowed_signers` line that allowed the key.
    pub fn principals(&self) -> &str {
        &self.principals
    }
    /// The key's SHA256 fingerprint.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

/// A commit whose whole history since the recorded commit (or whose whole
/// history, on a first pull) was verified. Only this crate's verifying code
/// can build one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCommit {
    id: CommitId,
    tree: Oid,
    committer_time: i64,
    signed_by: Option<SignedBy>,
    newly_verified: usize,
}

impl VerifiedCommit {
    /// The commit id.
    pub fn id(&self) -> CommitId {
        self.id
    }
    /// The commit's committer time, seconds since the epoch.
    pub fn committer_time(&self) -> i64 {
        self.committer_time
    }
    /// Who signed it; `None` when this is the already-recorded commit
    /// returned by an unchanged poll (it was verified when it was recorded).
    pub fn signed_by(&self) -> Option<&SignedBy> {
        self.signed_by.as_ref()
    }
    /// How many commits this verification checked (0 when unchanged).
    pub fn newly_verified(&self) -> usize {
        self.newly_verified
    }
    pub(crate) fn tree(&self) -> Oid {
        self.tree
    }
}

/// The outcome of [`crate::Source::fetch_and_verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// The branch tip is the recorded commit: nothing new.
    Unchanged(VerifiedCommit),
    /// The tip is new and it and every commit since the recorded one
    /// verified.
    New(VerifiedCommit),
}

impl Verified {
    /// The commit, new or not.
    pub fn commit(&self) -> &VerifiedCommit {
        match self {
            Verified::Unchanged(v) | Verified::New(v) => v,
        }
    }
    /// Consume into the commit, new or not.
    pub fn into_commit(self) -> VerifiedCommit {
        match self {
            Verified::Unchanged(v) | Verified::New(v) => v,
        }
    }
}

/// Verify the history of `tip` in the repository at `repo_dir` (bare or
/// not), as [`crate::Source::fetch_and_verify`] does after fetching: this
/// is the code path without the network, for tools and benchmarks.
pub fn verify_local(
    repo_dir: &Path,
    trust: &AllowedSigners,
    recorded: Option<CommitId>,
    tip: CommitId,
) -> Result<Verified, SourceError> {
    let repo = Repository::open(repo_dir).map_err(|source| SourceError::Git {
        path: repo_dir.to_path_buf(),
        context: "opening repository".into(),
        source,
    })?;
    verify_history(&repo, repo_dir, trust, recorded, tip)
}

/// Verify `tip` against the recorded commit:
/// 1. tip == recorded: unchanged;
/// 2. the tip must descend from the recorded commit (no rewinds);
/// 3. list every commit reachable from the tip and not from the recorded
///    commit (all of the tip's history on a first pull), parents first;
/// 4. verify each ([`Verifier::verify_commit`]), stopping at the first
///    refusal.
pub(crate) fn verify_history(
    repo: &Repository,
    repo_path: &Path,
    trust: &AllowedSigners,
    recorded: Option<CommitId>,
    tip: CommitId,
) -> Result<Verified, SourceError> {
    let git_err = |context: &str| {
        let context = context.to_string();
        move |source| SourceError::Git {
            path: repo_path.to_path_buf(),
            context,
            source,
        }
    };
    let mut verifier = Verifier::new(repo, repo_path, trust)?;
    if repo.find_commit(tip.oid()).is_err() {
        return Err(SourceError::MalformedCommit {
            commit: tip,
            reason: "the branch does not point to a commit".into(),
        });
    }

    // Step 1: nothing new.
    if recorded == Some(tip) {
        let (tree, committer_time) = verifier.tree_and_time(tip)?;
        return Ok(Verified::Unchanged(VerifiedCommit {
            id: tip,
            tree,
            committer_time,
            signed_by: None,
            newly_verified: 0,
        }));
    }

    // Step 2: fast-forward only.
    if let Some(rec) = recorded {
        let known = repo.find_commit(rec.oid()).is_ok();
        if !known
            || !repo
                .graph_descendant_of(tip.oid(), rec.oid())
                .map_err(git_err("checking ancestry"))?
        {
            return Err(SourceError::Rewind { recorded: rec, tip });
        }
    }

    // Step 3: the commits to verify, parents before children.
    let mut walk = repo.revwalk().map_err(git_err("starting history walk"))?;
    walk.set_sorting(Sort::TOPOLOGICAL | Sort::REVERSE)
        .map_err(git_err("sorting history walk"))?;
    walk.push(tip.oid()).map_err(git_err("walking from tip"))?;
    if let Some(rec) = recorded {
        walk.hide(rec.oid())
            .map_err(git_err("hiding recorded history"))?;
    }
    let mut commits = Vec::new();
    for id in walk {
        match id {
            Ok(id) => commits.push(id),
            Err(e) if e.code() == git2::ErrorCode::NotFound => {
                return Err(verifier
                    .find_missing_parent(tip.oid())
                    .unwrap_or_else(|| git_err("walking history")(e)));
            }
            Err(e) => return Err(git_err("walking history")(e)),
        }
    }

    // Step 4: every commit, oldest first.
    let mut last = None;
    for id in &commits {
        last = Some(verifier.verify_commit(*id)?);
    }
    let (signed_by, committer_time) = last.ok_or_else(|| {
        git_err("walking history")(git2::Error::from_str(
            "tip is hidden by the recorded commit",
        ))
    })?;
    let (tree, _) = verifier.tree_and_time(tip)?;
    log::debug!(
        "verified {} commit(s) up to {tip} (last signed by {})",
        commits.len(),
        signed_by.principals
    );
    Ok(Verified::New(VerifiedCommit {
        id: tip,
        tree,
        committer_time,
        signed_by: Some(signed_by),
        newly_verified: commits.len(),
    }))
}

/// Per-walk caches: which signers blob each commit carries and the parsed
/// sets, so a long history parses each version of the file once.
struct Verifier<'r> {
    repo: &'r Repository,
    odb: git2::Odb<'r>,
    repo_path: &'r Path,
    root: Rc<AllowedSigners>,
    blob_of: HashMap<Oid, Option<Oid>>,
    sets: HashMap<Oid, Rc<AllowedSigners>>,
}

impl<'r> Verifier<'r> {
    fn new(
        repo: &'r Repository,
        repo_path: &'r Path,
        root: &AllowedSigners,
    ) -> Result<Self, SourceError> {
        let odb = repo.odb().map_err(|source| SourceError::Git {
            path: repo_path.to_path_buf(),
            context: "opening object database".into(),
            source,
        })?;
        Ok(Verifier {
            repo,
            odb,
            repo_path,
            root: Rc::new(root.clone()),
            blob_of: HashMap::new(),
            sets: HashMap::new(),
        })
    }

    fn git_err(&self, context: String, source: git2::Error) -> SourceError {
        SourceError::Git {
            path: self.repo_path.to_path_buf(),
            context,
            source,
        }
    }

    /// Verify one commit. The steps, in order:
    /// 1. read the raw object and split off the `gpgsig` header the way git
    ///    does; cross-check tree and parents with libgit2's parse;
    /// 2. decode the SSHSIG: namespace `git`, ed25519 key;
    /// 3. the signer sets in force before the commit: the set after each
    ///    parent (every parent, so a merge cannot borrow trust from an old
    ///    side of history), or the image-baked set for a root commit;
    /// 4. the key must be allowed by each of them at the committer time;
    /// 5. the ed25519 signature must verify over the SSHSIG signed data;
    /// 6. a commit that changes `.cairn/allowed_signers` must carry a
    ///    parseable file (it becomes the set for its children).
    fn verify_commit(&mut self, id: Oid) -> Result<(SignedBy, i64), SourceError> {
        let commit = CommitId(id);

        // Step 1.
        let parts = {
            let raw = self
                .odb
                .read(id)
                .map_err(|e| self.git_err(format!("reading commit {commit}"), e))?;
            if raw.kind() != ObjectType::Commit {
                return Err(SourceError::MalformedCommit {
                    commit,
                    reason: format!("object is a {}, not a commit", raw.kind()),
                });
            }
            parse::split_signed_commit(raw.data()).map_err(|e| SourceError::MalformedCommit {
                commit,
                reason: e.to_string(),
            })?
        };
        let parents = self.check_headers(commit, &parts)?;
        let Some(armored) = parts.signature.as_deref() else {
            return Err(SourceError::Unsigned { commit });
        };

        // Step 2.
        let sig = parse::parse_sshsig(armored).map_err(|e| match e {
            SshSigError::UnsupportedKey(algorithm) => {
                SourceError::UnsupportedKeyType { commit, algorithm }
            }
            other => SourceError::MalformedSignature {
                commit,
                reason: other.to_string(),
            },
        })?;
        let fingerprint = sig.key.fingerprint(ssh_key::HashAlg::Sha256).to_string();

        // Step 3.
        let own_blob = self.signers_blob(id)?;
        let mut before: Vec<Option<Oid>> = Vec::with_capacity(parents.len().max(1));
        if parents.is_empty() {
            before.push(None);
        }
        for p in &parents {
            if self.repo.find_commit(*p).is_err() {
                return Err(SourceError::IncompleteHistory {
                    commit,
                    parent: CommitId(*p),
                });
            }
            let b = self.signers_blob(*p)?;
            if !before.contains(&b) {
                before.push(b);
            }
        }
        let rotates = before.iter().any(|b| *b != own_blob);

        // Step 4.
        let mut signed_by = None;
        for blob in &before {
            let set = self.set_for(*blob, commit)?;
            match set.lookup(&sig.ed25519_key, parts.committer_time) {
                Lookup::Trusted(s) => {
                    signed_by.get_or_insert_with(|| SignedBy {
                        principals: s.principals().to_string(),
                        fingerprint: s.fingerprint().to_string(),
                    });
                }
                Lookup::NotValid(s, reason) => {
                    return Err(SourceError::KeyNotValidAt {
                        commit,
                        principal: s.principals().to_string(),
                        fingerprint,
                        time: parts.committer_time,
                        reason,
                    })
                }
                // The key is not trusted before the commit, and the commit
                // changes the signers file relative to that parent.
                Lookup::Unknown if *blob != own_blob => {
                    return Err(SourceError::RotationByNonSigner {
                        commit,
                        fingerprint,
                    })
                }
                Lookup::Unknown => {
                    return Err(SourceError::UnknownKey {
                        commit,
                        fingerprint,
                    })
                }
            }
        }
        let signed_by = signed_by.ok_or_else(|| SourceError::UnknownKey {
            commit,
            fingerprint: fingerprint.clone(),
        })?;

        // Step 5.
        let signed_data = parse::sshsig_signed_data(sig.hash_alg, &parts.payload);
        let good = ed25519_dalek::VerifyingKey::from_bytes(&sig.ed25519_key)
            .and_then(|vk| {
                vk.verify_strict(
                    &signed_data,
                    &ed25519_dalek::Signature::from_bytes(&sig.signature),
                )
            })
            .is_ok();
        if !good {
            return Err(SourceError::BadSignature {
                commit,
                fingerprint,
            });
        }

        // Step 6.
        if rotates {
            self.set_for(own_blob, commit)?;
            log::info!(
                "commit {commit} changes {SIGNERS_PATH}, signed by {} ({})",
                signed_by.principals,
                signed_by.fingerprint
            );
        }
        Ok((signed_by, parts.committer_time))
    }

    /// The tree and parents our parser read must be the ones libgit2 will
    /// use (no grafts, no parser differences); returns the parents.
    fn check_headers(
        &self,
        commit: CommitId,
        parts: &parse::SignedCommit,
    ) -> Result<Vec<Oid>, SourceError> {
        let malformed = |reason: String| SourceError::MalformedCommit { commit, reason };
        let c = self
            .repo
            .find_commit(commit.oid())
            .map_err(|e| malformed(e.message().to_string()))?;
        let tree = Oid::from_str(&parts.tree).map_err(|_| malformed("bad tree header".into()))?;
        let parents = parts
            .parents
            .iter()
            .map(|p| Oid::from_str(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| malformed("bad parent header".into()))?;
        if c.tree_id() != tree || !c.parent_ids().eq(parents.iter().copied()) {
            return Err(malformed(
                "tree or parents differ from what libgit2 reads (grafts or a shallow cache?)"
                    .into(),
            ));
        }
        Ok(parents)
    }

    /// The blob id of `.cairn/allowed_signers` in a commit's tree, if any.
    fn signers_blob(&mut self, id: Oid) -> Result<Option<Oid>, SourceError> {
        if let Some(b) = self.blob_of.get(&id) {
            return Ok(*b);
        }
        let commit = CommitId(id);
        let tree = self
            .repo
            .find_commit(id)
            .and_then(|c| c.tree())
            .map_err(|e| self.git_err(format!("reading tree of {commit}"), e))?;
        let blob = match tree.get_path(Path::new(SIGNERS_PATH)) {
            Ok(entry) => {
                let mode = entry.filemode();
                if entry.kind() != Some(ObjectType::Blob) || (mode != 0o100644 && mode != 0o100755)
                {
                    return Err(SourceError::InvalidSignersFile {
                        commit,
                        source: crate::SignersParseError {
                            line: 0,
                            reason: "not a regular file".into(),
                        },
                    });
                }
                Some(entry.id())
            }
            Err(e) if e.code() == git2::ErrorCode::NotFound => None,
            Err(e) => return Err(self.git_err(format!("looking up {SIGNERS_PATH} in {commit}"), e)),
        };
        self.blob_of.insert(id, blob);
        Ok(blob)
    }

    /// The signer set a signers blob stands for (the image-baked set when
    /// the repository carries none). `commit` is the commit blamed for a
    /// file that does not parse.
    fn set_for(
        &mut self,
        blob: Option<Oid>,
        commit: CommitId,
    ) -> Result<Rc<AllowedSigners>, SourceError> {
        let Some(blob) = blob else {
            return Ok(self.root.clone());
        };
        if let Some(s) = self.sets.get(&blob) {
            return Ok(s.clone());
        }
        let content = self
            .repo
            .find_blob(blob)
            .map_err(|e| self.git_err(format!("reading {SIGNERS_PATH} of {commit}"), e))?;
        let text = std::str::from_utf8(content.content()).map_err(|_| {
            SourceError::InvalidSignersFile {
                commit,
                source: crate::SignersParseError {
                    line: 0,
                    reason: "not UTF-8".into(),
                },
            }
        })?;
        let set = Rc::new(
            AllowedSigners::parse(text)
                .map_err(|source| SourceError::InvalidSignersFile { commit, source })?,
        );
        self.sets.insert(blob, set.clone());
        Ok(set)
    }

    fn tree_and_time(&self, id: CommitId) -> Result<(Oid, i64), SourceError> {
        let c = self
            .repo
            .find_commit(id.oid())
            .map_err(|e| self.git_err(format!("reading commit {id}"), e))?;
        let time = c.committer().when().seconds();
        Ok((c.tree_id(), time))
    }

    /// After a walk failed on a missing object: find the commit whose parent
    /// is missing, to name both.
    fn find_missing_parent(&self, tip: Oid) -> Option<SourceError> {
        let mut stack = vec![tip];
        let mut seen = std::collections::HashSet::new();
        while let Some(id) = stack.pop() {
            if !seen.insert(id) {
                continue;
            }
            let c = self.repo.find_commit(id).ok()?;
            for p in c.parent_ids() {
                if self.repo.find_commit(p).is_err() {
                    return Some(SourceError::IncompleteHistory {
                        commit: CommitId(id),
                        parent: CommitId(p),
                    });
                }
                stack.push(p);
            }
        }
        None
    }
}
