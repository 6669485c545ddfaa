//! End-to-end scenarios: fixtures made with the real `git` and
//! `ssh-keygen`, fetched over file:// and verified by the library. Each
//! refusal asserts the exact error variant and that nothing was recorded.

mod common;

use cairn_source::{pull, Source, SourceError, Validity, Verified};
use common::{id, Fixture};

/// Refusals leave the recorded commit (and the materialized trees) as they
/// were.
fn assert_untouched(f: &Fixture, recorded: Option<&str>) {
    assert_eq!(f.recorded_file().as_deref(), recorded);
    let trees: Vec<String> = std::fs::read_dir(f.state.join("trees"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        trees,
        recorded.map(|r| vec![r.to_string()]).unwrap_or_default()
    );
}

#[test]
fn signed_chain_is_pulled_recorded_and_materialized() {
    let f = Fixture::new();
    let alice = f.key("alice");
    let trust = alice.signer_line("");
    f.commit(Some(&alice), "one", &[("apps/a.yaml", "a: 1\n")]);
    f.commit(Some(&alice), "two", &[("apps/b.yaml", "b: 2\n")]);
    let tip = f.commit(Some(&alice), "three", &[("run.sh", "#!/bin/sh\n")]);
    f.git(&["update-index", "--chmod=+x", "run.sh"]);
    let tip2 = f.commit(Some(&alice), "exec", &[]);
    assert_ne!(tip, tip2);

    let v = pull(f.config(&trust)).unwrap();
    assert_eq!(v.id(), id(&tip2));
    assert_eq!(v.newly_verified(), 4);
    assert_eq!(v.signed_by().unwrap().principals(), "alice@example.com");
    assert_eq!(v.signed_by().unwrap().fingerprint(), alice.fingerprint());
    assert_eq!(f.recorded_file().as_deref(), Some(tip2.as_str()));
    let tree = f.state.join("trees").join(&tip2);
    assert_eq!(
        std::fs::read_to_string(tree.join("apps/b.yaml")).unwrap(),
        "b: 2\n"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(tree.join("run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);

    // A poll with nothing new: unchanged, nothing re-verified.
    let mut s = Source::open(f.config(&trust)).unwrap();
    assert_eq!(s.recorded(), Some(id(&tip2)));
    match s.fetch_and_verify().unwrap() {
        Verified::Unchanged(v) => {
            assert_eq!(v.id(), id(&tip2));
            assert_eq!(v.newly_verified(), 0);
        }
        other => panic!("expected unchanged, got {other:?}"),
    }

    // New commits: only those are verified; the old tree is kept as the
    // previous one.
    f.commit(Some(&alice), "four", &[("apps/c.yaml", "c: 3\n")]);
    let tip3 = f.commit(Some(&alice), "five", &[]);
    let v = match s.fetch_and_verify().unwrap() {
        Verified::New(v) => v,
        other => panic!("expected new, got {other:?}"),
    };
    assert_eq!(v.newly_verified(), 2);
    // Verification persists nothing.
    assert_eq!(f.recorded_file().as_deref(), Some(tip2.as_str()));
    let path = s.checkout(&v).unwrap();
    assert!(path.join("apps/c.yaml").is_file());
    s.record(&v).unwrap();
    assert_eq!(f.recorded_file().as_deref(), Some(tip3.as_str()));
    assert_eq!(s.recorded(), Some(id(&tip3)));
    assert!(f.state.join("trees").join(&tip2).is_dir());
}

#[test]
fn git_itself_accepts_the_fixtures() {
    // Cross-check that the fixtures are what git considers good signatures.
    let f = Fixture::new();
    let alice = f.key("alice");
    let tip = f.commit(Some(&alice), "one", &[("a", "1")]);
    let allowed = f.dir.path().join("allowed");
    std::fs::write(&allowed, alice.signer_line("")).unwrap();
    f.git(&[
        "-c",
        &format!("gpg.ssh.allowedSignersFile={}", allowed.display()),
        "verify-commit",
        &tip,
    ]);
}

#[test]
fn unsigned_middle_commit_is_refused() {
    let f = Fixture::new();
    let alice = f.key("alice");
    f.commit(Some(&alice), "one", &[("a", "1")]);
    let unsigned = f.commit(None, "two", &[("a", "2")]);
    f.commit(Some(&alice), "three", &[("a", "3")]);
    match pull(f.config(&alice.signer_line(""))) {
        Err(SourceError::Unsigned { commit }) => assert_eq!(commit, id(&unsigned)),
        other => panic!("expected Unsigned, got {other:?}"),
    }
    assert_untouched(&f, None);
}

#[test]
fn unsigned_commit_after_recorded_one_is_refused_and_recorded_kept() {
    let f = Fixture::new();
    let alice = f.key("alice");
    let good = f.commit(Some(&alice), "one", &[("a", "1")]);
    let trust = alice.signer_line("");
    pull(f.config(&trust)).unwrap();
    let unsigned = f.commit(None, "two", &[("a", "2")]);
    let err = pull(f.config(&trust)).unwrap_err();
    assert!(err.is_refusal());
    assert_eq!(err.commit(), Some(id(&unsigned)));
    assert!(matches!(err, SourceError::Unsigned { commit } if commit == id(&unsigned)));
    assert_untouched(&f, Some(&good));
}

#[test]
fn first_pull_requires_the_whole_history_signed() {
    let f = Fixture::new();
    let alice = f.key("alice");
    let root = f.commit(None, "unsigned root", &[("a", "1")]);
    f.commit(Some(&alice), "signed", &[("a", "2")]);
    match pull(f.config(&alice.signer_line(""))) {
        Err(SourceError::Unsigned { commit }) => assert_eq!(commit, id(&root)),
        other => panic!("expected Unsigned, got {other:?}"),
    }
}

#[test]
fn commit_signed_by_unknown_key_is_refused() {
    let f = Fixture::new();
    let alice = f.key("alice");
    let mallory = f.key("mallory");
    f.commit(Some(&alice), "one", &[("a", "1")]);
    let bad = f.commit(Some(&mallory), "two", &[("a", "2")]);
    match pull(f.config(&alice.signer_line(""))) {
        Err(SourceError::UnknownKey {
            commit,
            fingerprint,
        }) => {
            assert_eq!(commit, id(&bad));
            assert_eq!(fingerprint, mallory.fingerprint());
        }
        other => panic!("expected UnknownKey, got {other:?}"),
    }
    assert_untouched(&f, None);
}

#[test]
fn tampered_commit_object_is_refused() {
    let f = Fixture::new();
    let alice = f.key("alice");
    f.commit(Some(&alice), "one", &[("a", "1")]);
    f.commit(Some(&alice), "deploy v1", &[("a", "2")]);
    // Keep the signature, change the message, write the object back.
    let raw = f.git(&["cat-file", "commit", "HEAD"]);
    let tampered = raw.replace("deploy v1", "deploy v2");
    assert_ne!(raw, tampered);
    let path = f.dir.path().join("tampered");
    std::fs::write(&path, tampered).unwrap();
    let new = f
        .git(&["hash-object", "-t", "commit", "-w", path.to_str().unwrap()])
        .trim()
        .to_string();
    f.git(&["update-ref", "refs/heads/main", &new]);
    match pull(f.config(&alice.signer_line(""))) {
        Err(SourceError::BadSignature {
            commit,
            fingerprint,
        }) => {
            assert_eq!(commit, id(&new));
            assert_eq!(fingerprint, alice.fingerprint());
        }
        other => panic!("expected BadSignature, got {other:?}"),
    }
    assert_untouched(&f, None);
}

#[test]
fn force_push_rewind_is_refused() {
    let f = Fixture::new();
    let alice = f.key("alice");
    let trust = alice.signer_line("");
    let base = f.commit(Some(&alice), "one", &[("a", "1")]);
    let applied = f.commit(Some(&alice), "two", &[("a", "2")]);
    pull(f.config(&trust)).unwrap();

    // Rewrite history: a different, validly signed commit on top of `base`.
    f.git(&["reset", "-q", "--hard", &base]);
    let forked = f.commit(Some(&alice), "two, rewritten", &[("a", "two")]);
    match pull(f.config(&trust)) {
        Err(SourceError::Rewind { recorded, tip }) => {
            assert_eq!(recorded, id(&applied));
            assert_eq!(tip, id(&forked));
        }
        other => panic!("expected Rewind, got {other:?}"),
    }
    assert_untouched(&f, Some(&applied));

    // Moving the branch back to an ancestor is a rewind too.
    f.git(&["reset", "-q", "--hard", &base]);
    match pull(f.config(&trust)) {
        Err(SourceError::Rewind { recorded, tip }) => {
            assert_eq!(recorded, id(&applied));
            assert_eq!(tip, id(&base));
        }
        other => panic!("expected Rewind, got {other:?}"),
    }
    assert_untouched(&f, Some(&applied));

    // The deliberate rollback: a new signed revert on top of what was
    // applied.
    f.git(&["reset", "-q", "--hard", &applied]);
    let signing = format!("user.signingkey={}", alice.private.display());
    f.git(&["-c", &signing, "revert", "--no-edit", "-S", "HEAD"]);
    let v = pull(f.config(&trust)).unwrap();
    assert_eq!(v.id(), id(&f.head()));
}

#[test]
fn merge_of_unsigned_branch_is_refused() {
    let f = Fixture::new();
    let alice = f.key("alice");
    let trust = alice.signer_line("");
    f.commit(Some(&alice), "one", &[("a", "1")]);
    f.git(&["checkout", "-q", "-b", "side"]);
    let unsigned = f.commit(None, "side work", &[("b", "1")]);
    f.git(&["checkout", "-q", "main"]);
    f.commit(Some(&alice), "main work", &[("c", "1")]);
    let signing = format!("user.signingkey={}", alice.private.display());
    f.git(&[
        "-c",
        &signing,
        "merge",
        "-q",
        "-S",
        "--no-ff",
        "-m",
        "merge side",
        "side",
    ]);
    match pull(f.config(&trust)) {
        Err(SourceError::Unsigned { commit }) => assert_eq!(commit, id(&unsigned)),
        other => panic!("expected Unsigned, got {other:?}"),
    }
    assert_untouched(&f, None);
}

#[test]
fn signed_merge_of_signed_branch_is_accepted_and_unsigned_merge_refused() {
    let f = Fixture::new();
    let alice = f.key("alice");
    let trust = alice.signer_line("");
    f.commit(Some(&alice), "one", &[("a", "1")]);
    f.git(&["checkout", "-q", "-b", "side"]);
    f.commit(Some(&alice), "side work", &[("b", "1")]);
    f.git(&["checkout", "-q", "main"]);
    f.commit(Some(&alice), "main work", &[("c", "1")]);
    let signing = format!("user.signingkey={}", alice.private.display());
    f.git(&[
        "-c",
        &signing,
        "merge",
        "-q",
        "-S",
        "--no-ff",
        "-m",
        "merge side",
        "side",
    ]);
    let v = pull(f.config(&trust)).unwrap();
    assert_eq!(v.id(), id(&f.head()));
    assert_eq!(v.newly_verified(), 4);

    f.git(&["checkout", "-q", "side"]);
    f.commit(Some(&alice), "more side work", &[("b", "2")]);
    f.git(&["checkout", "-q", "main"]);
    f.git(&[
        "merge",
        "-q",
        "--no-gpg-sign",
        "--no-ff",
        "-m",
        "unsigned merge",
        "side",
    ]);
    let merge = f.head();
    match pull(f.config(&trust)) {
        Err(SourceError::Unsigned { commit }) => assert_eq!(commit, id(&merge)),
        other => panic!("expected Unsigned, got {other:?}"),
    }
}

#[test]
fn rotation_by_trusted_signer_takes_effect_from_the_next_commit() {
    let f = Fixture::new();
    let alice = f.key("alice");
    let bob = f.key("bob");
    let root = alice.signer_line("");
    f.commit(Some(&alice), "one", &[("a", "1")]);
    // Alice (trusted by the image) adds Bob.
    let both = format!("{}{}", alice.signer_line(""), bob.signer_line(""));
    f.commit(
        Some(&alice),
        "add bob",
        &[(".cairn/allowed_signers", &both)],
    );
    let by_bob = f.commit(Some(&bob), "bob's first", &[("a", "2")]);
    let v = pull(f.config(&root)).unwrap();
    assert_eq!(v.id(), id(&by_bob));
    assert_eq!(v.signed_by().unwrap().principals(), "bob@example.com");

    // Bob removes Alice; his commit is signed by a signer trusted before it.
    f.commit(
        Some(&bob),
        "remove alice",
        &[(".cairn/allowed_signers", &bob.signer_line(""))],
    );
    let v = pull(f.config(&root)).unwrap();
    assert_eq!(v.id(), id(&f.head()));
    // From the next commit on, Alice's key has no power, although the image
    // still trusts it: the repository's file replaces the image set.
    let by_alice = f.commit(Some(&alice), "alice after removal", &[("a", "3")]);
    match pull(f.config(&root)) {
        Err(SourceError::UnknownKey {
            commit,
            fingerprint,
        }) => {
            assert_eq!(commit, id(&by_alice));
            assert_eq!(fingerprint, alice.fingerprint());
        }
        other => panic!("expected UnknownKey, got {other:?}"),
    }
}

#[test]
fn rotation_attempted_by_a_stranger_is_refused() {
    let f = Fixture::new();
    let alice = f.key("alice");
    let mallory = f.key("mallory");
    let root = alice.signer_line("");
    let good = f.commit(Some(&alice), "one", &[("a", "1")]);
    pull(f.config(&root)).unwrap();
    // Mallory adds herself and signs the change herself.
    let both = format!("{}{}", alice.signer_line(""), mallory.signer_line(""));
    let rot = f.commit(
        Some(&mallory),
        "add me",
        &[(".cairn/allowed_signers", &both)],
    );
    f.commit(Some(&mallory), "now trusted?", &[("a", "evil")]);
    match pull(f.config(&root)) {
        Err(SourceError::RotationByNonSigner {
            commit,
            fingerprint,
        }) => {
            assert_eq!(commit, id(&rot));
            assert_eq!(fingerprint, mallory.fingerprint());
        }
        other => panic!("expected RotationByNonSigner, got {other:?}"),
    }
    assert_untouched(&f, Some(&good));
}

#[test]
fn merge_cannot_borrow_trust_from_a_parent_before_the_key_was_removed() {
    let f = Fixture::new();
    let alice = f.key("alice");
    let bob = f.key("bob");
    let root = format!("{}{}", alice.signer_line(""), bob.signer_line(""));
    let old = f.commit(Some(&alice), "one", &[("a", "1")]);
    f.commit(
        Some(&bob),
        "remove alice",
        &[(".cairn/allowed_signers", &bob.signer_line(""))],
    );
    let current = f.commit(Some(&bob), "two", &[("a", "2")]);
    pull(f.config(&root)).unwrap();

    // Alice merges the current tip into a branch forked before her removal,
    // with the old commit as first parent: the result descends from the
    // recorded commit, and her key is trusted after the first parent, but
    // not after the second.
    f.git(&["checkout", "-q", "-b", "evil", &old]);
    let signing = format!("user.signingkey={}", alice.private.display());
    f.git(&[
        "-c", &signing, "merge", "-q", "-S", "--no-ff", "-m", "sneaky", &current,
    ]);
    let sneaky = f.head();
    f.git(&["branch", "-q", "-f", "main", "evil"]);
    match pull(f.config(&root)) {
        Err(SourceError::UnknownKey { commit, .. }) => assert_eq!(commit, id(&sneaky)),
        other => panic!("expected UnknownKey, got {other:?}"),
    }
    assert_untouched(&f, Some(&current));

    // The same with the old tree kept (`-s ours`): the merge also drops
    // the signers file, a rotation by a non-signer.
    f.git(&["checkout", "-q", "-B", "evil2", &old]);
    f.git(&[
        "-c", &signing, "merge", "-q", "-S", "--no-ff", "-s", "ours", "-m", "sneakier", &current,
    ]);
    let sneakier = f.head();
    f.git(&["branch", "-q", "-f", "main", "evil2"]);
    match pull(f.config(&root)) {
        Err(SourceError::RotationByNonSigner {
            commit,
            fingerprint,
        }) => {
            assert_eq!(commit, id(&sneakier));
            assert_eq!(fingerprint, alice.fingerprint());
        }
        other => panic!("expected RotationByNonSigner, got {other:?}"),
    }
    assert_untouched(&f, Some(&current));
}

#[test]
fn expired_key_is_refused_at_the_committer_time() {
    let f = Fixture::new();
    let old = f.key("old");
    let trust = old.signer_line("valid-before=\"20200101\"");
    // Signed while the key was valid (committer time 2019): accepted.
    let in_time = f.commit_at(
        Some(&old),
        "2019",
        &[("a", "1")],
        Some("2019-06-01T00:00:00Z"),
    );
    let v = pull(f.config(&trust)).unwrap();
    assert_eq!(v.id(), id(&in_time));
    // Signed now: the key has expired.
    let late = f.commit(Some(&old), "now", &[("a", "2")]);
    match pull(f.config(&trust)) {
        Err(SourceError::KeyNotValidAt {
            commit,
            principal,
            reason,
            ..
        }) => {
            assert_eq!(commit, id(&late));
            assert_eq!(principal, "old@example.com");
            assert_eq!(
                reason,
                Validity::Expired {
                    valid_before: 1_577_836_800
                }
            );
        }
        other => panic!("expected KeyNotValidAt, got {other:?}"),
    }
    assert_untouched(&f, Some(&in_time));
}

#[test]
fn key_not_yet_valid_and_wrong_namespace_are_refused() {
    let f = Fixture::new();
    let k = f.key("k");
    let c = f.commit_at(
        Some(&k),
        "early",
        &[("a", "1")],
        Some("2019-06-01T00:00:00Z"),
    );
    match pull(f.config(&k.signer_line("valid-after=\"20200101Z\""))) {
        Err(SourceError::KeyNotValidAt { commit, reason, .. }) => {
            assert_eq!(commit, id(&c));
            assert_eq!(
                reason,
                Validity::NotYetValid {
                    valid_after: 1_577_836_800
                }
            );
        }
        other => panic!("expected KeyNotValidAt, got {other:?}"),
    }
    match pull(f.config(&k.signer_line("namespaces=\"file\""))) {
        Err(SourceError::KeyNotValidAt { reason, .. }) => {
            assert_eq!(reason, Validity::NamespaceNotAllowed)
        }
        other => panic!("expected KeyNotValidAt, got {other:?}"),
    }
    // namespaces="git" is fine.
    pull(f.config(&k.signer_line("namespaces=\"git\""))).unwrap();
}

#[test]
fn rsa_signed_commit_is_refused_as_unsupported() {
    let f = Fixture::new();
    let rsa = f.key_of_type("rsa", "rsa");
    let c = f.commit(Some(&rsa), "rsa", &[("a", "1")]);
    match pull(f.config(&rsa.signer_line(""))) {
        Err(SourceError::UnsupportedKeyType { commit, algorithm }) => {
            assert_eq!(commit, id(&c));
            assert_eq!(algorithm, "ssh-rsa");
        }
        other => panic!("expected UnsupportedKeyType, got {other:?}"),
    }
}

#[test]
fn invalid_signers_file_is_refused_at_the_commit_that_adds_it() {
    let f = Fixture::new();
    let alice = f.key("alice");
    f.commit(Some(&alice), "one", &[("a", "1")]);
    let bad = f.commit(
        Some(&alice),
        "broken rotation",
        &[(
            ".cairn/allowed_signers",
            "alice@example.com ssh-ed25519 !!!\n",
        )],
    );
    match pull(f.config(&alice.signer_line(""))) {
        Err(SourceError::InvalidSignersFile { commit, source }) => {
            assert_eq!(commit, id(&bad));
            assert_eq!(source.line, 1);
        }
        other => panic!("expected InvalidSignersFile, got {other:?}"),
    }
}

#[test]
fn shallow_remote_history_is_refused() {
    let f = Fixture::new();
    let alice = f.key("alice");
    f.commit(Some(&alice), "one", &[("a", "1")]);
    f.commit(Some(&alice), "two", &[("a", "2")]);
    let shallow = f.dir.path().join("shallow");
    common::run(
        common::git_cmd(f.dir.path(), f.home())
            .args(["clone", "-q", "--bare", "--depth", "1"])
            .arg(format!("file://{}", f.upstream.display()))
            .arg(&shallow),
    );
    let mut cfg = f.config(&alice.signer_line(""));
    cfg.url = format!("file://{}", shallow.display());
    let err = pull(cfg).unwrap_err();
    assert!(
        matches!(err, SourceError::IncompleteHistory { .. }),
        "expected IncompleteHistory, got {err:?}"
    );
    assert_untouched(&f, None);
}

#[test]
fn missing_branch_and_bad_branch_name() {
    let f = Fixture::new();
    let alice = f.key("alice");
    f.commit(Some(&alice), "one", &[("a", "1")]);
    let mut cfg = f.config(&alice.signer_line(""));
    cfg.branch = "nope".into();
    match pull(cfg.clone()) {
        Err(SourceError::BranchNotFound { branch, .. }) => assert_eq!(branch, "nope"),
        other => panic!("expected BranchNotFound, got {other:?}"),
    }
    cfg.branch = "a..b".into();
    assert!(matches!(pull(cfg), Err(SourceError::InvalidBranch { .. })));
}

#[test]
fn record_refuses_a_commit_that_does_not_descend() {
    let f = Fixture::new();
    let alice = f.key("alice");
    let trust = alice.signer_line("");
    let base = f.commit(Some(&alice), "one", &[("a", "1")]);
    f.git(&["checkout", "-q", "-b", "other"]);
    f.commit(Some(&alice), "other", &[("b", "1")]);
    f.git(&["checkout", "-q", "main"]);
    let main = f.commit(Some(&alice), "main", &[("a", "2")]);

    // Verify `other` in one source, record `main` in another meanwhile.
    let mut cfg = f.config(&trust);
    cfg.branch = "other".into();
    let mut s_other = Source::open(cfg).unwrap();
    let v_other = s_other.fetch_and_verify().unwrap().into_commit();
    pull(f.config(&trust)).unwrap();
    match s_other.record(&v_other) {
        Err(SourceError::Rewind { recorded, tip }) => {
            assert_eq!(recorded, id(&main));
            assert_eq!(tip, v_other.id());
        }
        other => panic!("expected Rewind, got {other:?}"),
    }
    assert_eq!(f.recorded_file().as_deref(), Some(main.as_str()));
    assert_ne!(base, main);
}

#[test]
fn symlink_leaving_the_tree_is_refused_at_checkout() {
    let f = Fixture::new();
    let alice = f.key("alice");
    std::os::unix::fs::symlink("ok.yaml", f.upstream.join("inside")).unwrap();
    f.git(&["add", "inside"]);
    let fine = f.commit(Some(&alice), "inside link", &[("ok.yaml", "x")]);
    let v = pull(f.config(&alice.signer_line(""))).unwrap();
    assert_eq!(v.id(), id(&fine));
    let link = f.state.join("trees").join(&fine).join("inside");
    assert_eq!(std::fs::read_link(link).unwrap().to_str(), Some("ok.yaml"));

    std::os::unix::fs::symlink("../../../etc/passwd", f.upstream.join("escape")).unwrap();
    f.git(&["add", "escape"]);
    let bad = f.commit(Some(&alice), "escaping link", &[]);
    match pull(f.config(&alice.signer_line(""))) {
        Err(SourceError::UnsafeTreeEntry { commit, path, .. }) => {
            assert_eq!(commit, id(&bad));
            assert_eq!(path, "escape");
        }
        other => panic!("expected UnsafeTreeEntry, got {other:?}"),
    }
    assert_untouched(&f, Some(&fine));
}

#[test]
fn types_the_agent_moves_across_threads_are_send() {
    fn send<T: Send + 'static>() {}
    fn send_sync<T: Send + Sync + 'static>() {}
    send::<Source>();
    send::<cairn_source::SourceConfig>();
    send_sync::<cairn_source::VerifiedCommit>();
    // anyhow-compatible.
    send_sync::<SourceError>();
}

#[test]
fn branch_pointing_to_a_non_commit_is_refused() {
    let f = Fixture::new();
    let alice = f.key("alice");
    f.commit(Some(&alice), "one", &[("a", "1")]);
    let blob = f.git(&["rev-parse", "HEAD:a"]).trim().to_string();
    // git refuses to point a branch at a blob; a hostile server need not.
    std::fs::write(f.upstream.join(".git/refs/heads/main"), format!("{blob}\n")).unwrap();
    match pull(f.config(&alice.signer_line(""))) {
        Err(SourceError::MalformedCommit { commit, .. }) => assert_eq!(commit, id(&blob)),
        other => panic!("expected MalformedCommit, got {other:?}"),
    }
}

/// A power cut after a fetch can leave the cache's refs naming objects that
/// never reached the disk. The cache is rebuilt and fetched again; what was
/// recorded stays, and the new commits are verified as usual.
#[test]
fn a_cache_with_lost_objects_is_rebuilt() {
    let f = Fixture::new();
    let alice = f.key("alice");
    let trust = alice.signer_line("");
    f.commit(Some(&alice), "one", &[("apps/a.yaml", "a: 1\n")]);
    let tip = f.commit(Some(&alice), "two", &[("apps/b.yaml", "b: 2\n")]);
    pull(f.config(&trust)).unwrap();
    assert_eq!(f.recorded_file().as_deref(), Some(tip.as_str()));

    // Lose every object, keep the refs.
    let objects = f.state.join("cache.git/objects");
    let mut lost = 0;
    for e in std::fs::read_dir(&objects).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "pack" || (name.len() == 2 && e.path().is_dir()) {
            for o in std::fs::read_dir(e.path()).unwrap().flatten() {
                std::fs::remove_file(o.path()).unwrap();
                lost += 1;
            }
        }
    }
    assert!(lost > 0, "the fixture cache had no objects to lose");

    let tip2 = f.commit(Some(&alice), "three", &[("apps/c.yaml", "c: 3\n")]);
    let mut s = Source::open(f.config(&trust)).unwrap();
    let v = match s.fetch_and_verify().unwrap() {
        Verified::New(v) => v,
        other => panic!("expected new, got {other:?}"),
    };
    assert_eq!(v.id(), id(&tip2));
    assert_eq!(
        v.newly_verified(),
        1,
        "only the commit after the recorded one"
    );
    assert!(s.checkout(&v).unwrap().join("apps/c.yaml").is_file());
    s.record(&v).unwrap();
    assert_eq!(f.recorded_file().as_deref(), Some(tip2.as_str()));
}
