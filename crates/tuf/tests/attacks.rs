//! Attack scenarios, one test per scenario, each asserting the exact error
//! variant. Fixtures are generated at test time by the simulator in
//! `common/sim.rs` (in memory; each test's client directory is named after
//! its scenario).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use cairn_tuf::Error;
use common::sim::{days_from_now, new_key, public_json, sign, version_of, Sim};
use serde_json::json;
use tempfile::TempDir;

struct Scenario {
    _tmp: TempDir,
    dir: PathBuf,
}

/// A client metadata directory named after the scenario.
fn scenario(name: &str, sim: &Sim) -> Scenario {
    let tmp = tempfile::Builder::new().prefix(name).tempdir().unwrap();
    let dir = tmp.path().join(name);
    sim.init_client(&dir);
    Scenario { _tmp: tmp, dir }
}

fn files(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn happy_path_persists_bytes_as_received() {
    let mut sim = Sim::new();
    sim.add_target("targets", "cairn-0.2.0.rootfs", b"rootfs bytes");
    sim.commit_targets("targets");
    let s = scenario("happy-path", &sim);
    let mut up = sim.updater(&s.dir).unwrap();
    up.refresh().unwrap();
    assert_eq!(
        sim.requests(),
        [
            "metadata/2.root.json",
            "metadata/timestamp.json",
            "metadata/2.snapshot.json",
            "metadata/2.targets.json"
        ]
    );
    assert_eq!(
        files(&s.dir),
        [
            "root.json",
            "snapshot.json",
            "targets.json",
            "timestamp.json"
        ]
    );
    for role in ["timestamp", "snapshot", "targets"] {
        assert_eq!(
            std::fs::read(s.dir.join(format!("{role}.json"))).unwrap(),
            *sim.published[role].last().unwrap(),
            "{role} stored byte-for-byte"
        );
    }
    let info = up.get_target_info("cairn-0.2.0.rootfs").unwrap().unwrap();
    assert_eq!(info.length(), 12);
    let dest = s.dir.parent().unwrap().join("rootfs.img");
    up.download_target(&info, &dest).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), b"rootfs bytes");
    assert!(up.is_cached(&info, &dest));
    assert!(up.get_target_info("nope").unwrap().is_none());

    // A second session with nothing new: cached snapshot/targets are used.
    sim.clear_requests();
    sim.refresh(&s.dir).unwrap();
    assert_eq!(
        sim.requests(),
        ["metadata/2.root.json", "metadata/timestamp.json"]
    );
}

#[test]
fn expired_timestamp() {
    let mut sim = Sim::new();
    sim.timestamp["expires"] = json!(days_from_now(-1));
    sim.update_timestamp();
    let s = scenario("expired-timestamp", &sim);
    let err = sim.refresh(&s.dir).unwrap_err();
    assert!(
        matches!(&err, Error::Expired { role, .. } if role == "timestamp"),
        "{err}"
    );
    assert_eq!(
        files(&s.dir),
        ["root.json"],
        "expired timestamp not persisted"
    );
}

#[test]
fn expired_root_after_update() {
    let mut sim = Sim::new();
    sim.root["expires"] = json!(days_from_now(-1));
    sim.bump_root();
    let s = scenario("expired-root", &sim);
    let err = sim.refresh(&s.dir).unwrap_err();
    assert!(
        matches!(&err, Error::Expired { role, .. } if role == "root"),
        "{err}"
    );
    // The intermediate root was verified and persisted before the freeze check.
    assert_eq!(version_of(&s.dir, "root"), 2);
}

#[test]
fn expired_snapshot_and_targets_use_the_fixed_start_time() {
    let sim = Sim::new();
    let s = scenario("frozen-clock", &sim);
    // 31 days ahead every role (30-day expiry) has expired.
    let err = sim
        .updater_at(&s.dir, Duration::from_secs(31 * 86_400))
        .unwrap()
        .refresh()
        .unwrap_err();
    assert!(
        matches!(&err, Error::Expired { role, .. } if role == "root"),
        "{err}"
    );
}

#[test]
fn rolled_back_timestamp() {
    let mut sim = Sim::new();
    let s = scenario("rolled-back-timestamp", &sim);
    sim.update_timestamp(); // v2
    sim.refresh(&s.dir).unwrap();
    let v1 = sim.published["timestamp"][0].clone();
    sim.put("metadata/timestamp.json", v1);
    let err = sim.refresh(&s.dir).unwrap_err();
    assert!(
        matches!(&err, Error::Rollback { role, trusted: 2, new: 1 } if role == "timestamp"),
        "{err}"
    );
    assert_eq!(version_of(&s.dir, "timestamp"), 2);
}

#[test]
fn rolled_back_snapshot() {
    let mut sim = Sim::new();
    let s = scenario("rolled-back-snapshot", &sim);
    sim.update_snapshot(); // snapshot v2, timestamp v2
    sim.update_snapshot(); // snapshot v3, timestamp v3
    sim.refresh(&s.dir).unwrap();
    // A newer timestamp that points back at snapshot v2.
    sim.timestamp["meta"]["snapshot.json"]["version"] = json!(2);
    sim.timestamp["version"] = json!(4);
    sim.publish_timestamp();
    let err = sim.refresh(&s.dir).unwrap_err();
    assert!(
        matches!(&err, Error::Rollback { role, trusted: 3, new: 2 } if role == "snapshot"),
        "{err}"
    );
    assert_eq!(version_of(&s.dir, "timestamp"), 3, "trusted timestamp kept");
}

#[test]
fn rolled_back_targets_in_snapshot() {
    let mut sim = Sim::new();
    sim.commit_targets("targets"); // targets v2
    let s = scenario("rolled-back-targets", &sim);
    sim.refresh(&s.dir).unwrap();
    sim.snapshot["meta"]["targets.json"]["version"] = json!(1);
    sim.snapshot["version"] = json!(sim.snapshot["version"].as_u64().unwrap() + 1);
    sim.publish_snapshot();
    sim.update_timestamp();
    let err = sim.refresh(&s.dir).unwrap_err();
    assert!(
        matches!(&err, Error::Rollback { role, trusted: 2, new: 1 } if role == "targets"),
        "{err}"
    );
}

#[test]
fn targets_dropped_from_snapshot() {
    let mut sim = Sim::new();
    sim.add_delegation("targets", "role-a", &["*"], false);
    sim.commit_targets("targets");
    let s = scenario("dropped-from-snapshot", &sim);
    sim.refresh(&s.dir).unwrap();
    sim.snapshot["meta"]
        .as_object_mut()
        .unwrap()
        .remove("role-a.json");
    sim.snapshot["version"] = json!(sim.snapshot["version"].as_u64().unwrap() + 1);
    sim.publish_snapshot();
    sim.update_timestamp();
    let err = sim.refresh(&s.dir).unwrap_err();
    assert!(
        matches!(&err, Error::MissingMeta { file, .. } if file == "role-a.json"),
        "{err}"
    );
}

#[test]
fn mix_and_match_snapshot_hash() {
    let mut sim = Sim::new();
    sim.compute_hashes = true;
    sim.update_snapshot(); // snapshot v2 with hashes in timestamp
    let s = scenario("mix-and-match", &sim);
    // Serve a different, validly signed snapshot v2 at the URL the timestamp
    // lists (e.g. one from another repository state).
    sim.snapshot["expires"] = json!(days_from_now(20));
    let other = sign(&sim.snapshot, &sim.keys_for("snapshot"));
    sim.put("metadata/2.snapshot.json", other);
    let err = sim.refresh(&s.dir).unwrap_err();
    assert!(
        matches!(&err, Error::HashMismatch { what, algorithm, .. } if what == "snapshot.json" && algorithm == "sha256"),
        "{err}"
    );
    assert!(!s.dir.join("snapshot.json").exists());
}

#[test]
fn mix_and_match_targets_version() {
    let mut sim = Sim::new();
    sim.commit_targets("targets"); // targets v2 listed by snapshot v2
    let s = scenario("mix-and-match-version", &sim);
    let v1 = sim.published["targets"][0].clone();
    sim.put("metadata/2.targets.json", v1);
    let err = sim.refresh(&s.dir).unwrap_err();
    assert!(
        matches!(&err, Error::VersionMismatch { role, expected: 2, actual: 1, .. } if role == "targets"),
        "{err}"
    );
}

#[test]
fn key_rotation_below_threshold() {
    let mut sim = Sim::new();
    let s = scenario("key-rotation-below-threshold", &sim);
    let old = sim.signers["root"][0].clone();
    // Root v2 moves to two new root keys with threshold 2 ...
    let (a, b) = (new_key(), new_key());
    for k in [&a, &b] {
        sim.root["keys"][common::sim::keyid(k)] = public_json(k);
    }
    sim.root["roles"]["root"] =
        json!({"keyids": [common::sim::keyid(&a), common::sim::keyid(&b)], "threshold": 2});
    sim.root["version"] = json!(2);
    // ... but only the old key and one of the new keys sign it.
    let bytes = sign(&sim.root, &[&old, &a]);
    sim.put("metadata/2.root.json", bytes);
    let err = sim.refresh(&s.dir).unwrap_err();
    assert!(
        matches!(&err, Error::Threshold { role, signer, valid: 1, threshold: 2 } if role == "root" && signer == "new root"),
        "{err}"
    );
    // Signed only by the new keys: the old root's threshold is missed.
    sim.put("metadata/2.root.json", sign(&sim.root, &[&a, &b]));
    let err = sim.refresh(&s.dir).unwrap_err();
    assert!(
        matches!(&err, Error::Threshold { role, signer, valid: 0, threshold: 1 } if role == "root" && signer == "trusted root"),
        "{err}"
    );
    assert_eq!(version_of(&s.dir, "root"), 1);
    // Properly signed by both: accepted.
    sim.put("metadata/2.root.json", sign(&sim.root, &[&old, &a, &b]));
    sim.signers.insert("root".into(), vec![a, b]);
    sim.refresh(&s.dir).unwrap();
    assert_eq!(version_of(&s.dir, "root"), 2);
}

#[test]
fn root_version_must_be_n_plus_one() {
    let mut sim = Sim::new();
    let s = scenario("root-version-skip", &sim);
    sim.root["version"] = json!(3);
    let bytes = sign(&sim.root, &sim.keys_for("root"));
    sim.put("metadata/2.root.json", bytes);
    let err = sim.refresh(&s.dir).unwrap_err();
    assert!(
        matches!(&err, Error::VersionMismatch { role, expected: 2, actual: 3, .. } if role == "root"),
        "{err}"
    );
}

#[test]
fn root_rotations_are_capped() {
    let mut sim = Sim::new();
    for _ in 0..40 {
        sim.bump_root();
    }
    let s = scenario("root-rotation-cap", &sim);
    sim.refresh(&s.dir).unwrap();
    assert_eq!(
        version_of(&s.dir, "root"),
        33,
        "1 + max_root_rotations (32)"
    );
}

#[test]
fn endless_data() {
    let sim = Sim::new();
    let s = scenario("endless-data", &sim);
    sim.files
        .endless
        .lock()
        .unwrap()
        .insert("metadata/timestamp.json".into());
    let err = sim.refresh(&s.dir).unwrap_err();
    assert!(
        matches!(&err, Error::LengthExceeded { max: 16_384, .. }),
        "{err}"
    );

    sim.files.endless.lock().unwrap().clear();
    sim.files
        .endless
        .lock()
        .unwrap()
        .insert("metadata/2.root.json".into());
    let err = sim.refresh(&s.dir).unwrap_err();
    assert!(
        matches!(&err, Error::LengthExceeded { max: 512_000, .. }),
        "{err}"
    );
}

#[test]
fn endless_target() {
    let mut sim = Sim::new();
    sim.add_target("targets", "image", b"12345");
    sim.commit_targets("targets");
    let s = scenario("endless-target", &sim);
    let mut up = sim.updater(&s.dir).unwrap();
    let info = up.get_target_info("image").unwrap().unwrap();
    let hash = &info.hashes()["sha256"];
    sim.files
        .endless
        .lock()
        .unwrap()
        .insert(format!("targets/{hash}.image"));
    let dest = s.dir.parent().unwrap().join("image");
    let err = up.download_target(&info, &dest).unwrap_err();
    assert!(
        matches!(&err, Error::LengthExceeded { max: 5, .. }),
        "{err}"
    );
    assert!(!dest.exists());
}

#[test]
fn wrong_hash() {
    let mut sim = Sim::new();
    sim.add_target("targets", "dir/image", b"good data");
    sim.commit_targets("targets");
    let s = scenario("wrong-hash", &sim);
    let mut up = sim.updater(&s.dir).unwrap();
    let info = up.get_target_info("dir/image").unwrap().unwrap();
    let hash = info.hashes()["sha256"].clone();
    sim.put(&format!("targets/dir/{hash}.image"), b"evil data".to_vec());
    let dest = s.dir.parent().unwrap().join("image");
    std::fs::write(&dest, b"previous").unwrap();
    let err = up.download_target(&info, &dest).unwrap_err();
    assert!(
        matches!(&err, Error::HashMismatch { what, .. } if what == "target dir/image"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        b"previous",
        "not moved into place"
    );
    let leftovers: Vec<_> = files(dest.parent().unwrap())
        .into_iter()
        .filter(|f| f.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn malicious_target() {
    let mut sim = Sim::new();
    sim.add_target("targets", "image", b"exactly20bytes......");
    sim.commit_targets("targets");
    let s = scenario("malicious-target", &sim);
    let mut up = sim.updater(&s.dir).unwrap();
    let info = up.get_target_info("image").unwrap().unwrap();
    let path = format!("targets/{}.image", info.hashes()["sha256"]);
    let dest = s.dir.parent().unwrap().join("image");
    // Longer than signed: cut off while streaming.
    sim.put(&path, vec![b'A'; 10_000]);
    let err = up.download_target(&info, &dest).unwrap_err();
    assert!(
        matches!(&err, Error::LengthExceeded { max: 20, .. }),
        "{err}"
    );
    // Shorter than signed.
    sim.put(&path, b"short".to_vec());
    let err = up.download_target(&info, &dest).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::LengthMismatch {
                expected: 20,
                actual: 5,
                ..
            }
        ),
        "{err}"
    );
    assert!(!dest.exists());
}

#[test]
fn unknown_hash_algorithm_is_refused() {
    let mut sim = Sim::new();
    sim.targets.get_mut("targets").unwrap()["targets"]["t"] =
        json!({"length": 1, "hashes": {"sha256": "00", "md5": "00"}});
    sim.commit_targets("targets");
    let s = scenario("unknown-hash-algorithm", &sim);
    let mut up = sim.updater(&s.dir).unwrap();
    let info = up.get_target_info("t").unwrap().unwrap();
    sim.clear_requests();
    let err = up.download_target(&info, &s.dir.join("t")).unwrap_err();
    assert!(
        matches!(&err, Error::UnsupportedHashAlgorithm { algorithm, .. } if algorithm == "md5"),
        "{err}"
    );
    assert!(sim.requests().is_empty(), "refused before downloading");
}

#[test]
fn sha512_is_verified_too() {
    use sha2::{Digest, Sha256, Sha512};
    let mut sim = Sim::new();
    let data = b"both hashes";
    sim.add_target("targets", "t", data);
    sim.targets.get_mut("targets").unwrap()["targets"]["t"]["hashes"]["sha512"] =
        json!(hex::encode(Sha512::digest(b"other")));
    sim.commit_targets("targets");
    let s = scenario("sha512", &sim);
    let mut up = sim.updater(&s.dir).unwrap();
    let info = up.get_target_info("t").unwrap().unwrap();
    assert_eq!(info.hashes()["sha256"], hex::encode(Sha256::digest(data)));
    let err = up.download_target(&info, &s.dir.join("t")).unwrap_err();
    assert!(
        matches!(&err, Error::HashMismatch { algorithm, .. } if algorithm == "sha512"),
        "{err}"
    );
}

#[test]
fn fast_forward_recovery() {
    let mut sim = Sim::new();
    let s = scenario("fast-forward-recovery", &sim);
    sim.refresh(&s.dir).unwrap();
    // The timestamp key leaks; the attacker fast-forwards timestamp to v1000.
    let good_version = sim.timestamp["version"].as_u64().unwrap();
    sim.timestamp["version"] = json!(1000);
    sim.publish_timestamp();
    sim.refresh(&s.dir).unwrap();
    assert_eq!(version_of(&s.dir, "timestamp"), 1000);

    // The repository recovers with the old version numbering: the client
    // refuses it as a rollback while the compromised key is still trusted.
    sim.timestamp["version"] = json!(good_version + 1);
    sim.publish_timestamp();
    let err = sim.refresh(&s.dir).unwrap_err();
    assert!(
        matches!(&err, Error::Rollback { role, trusted: 1000, .. } if role == "timestamp"),
        "{err}"
    );

    // After rotating the timestamp key in a new root, the client drops the
    // fast-forwarded timestamp (spec 5.3.11) and accepts the new one.
    sim.rotate_role_key("timestamp");
    sim.bump_root();
    sim.publish_timestamp();
    sim.refresh(&s.dir).unwrap();
    assert_eq!(version_of(&s.dir, "timestamp"), good_version + 1);
}

#[test]
fn fast_forward_recovery_snapshot() {
    let mut sim = Sim::new();
    let s = scenario("fast-forward-recovery-snapshot", &sim);
    sim.refresh(&s.dir).unwrap();
    // Attacker with the snapshot key fast-forwards targets' version.
    sim.snapshot["meta"]["targets.json"]["version"] = json!(999);
    sim.snapshot["version"] = json!(2);
    sim.publish_snapshot();
    sim.update_timestamp();
    let _ = sim.refresh(&s.dir); // targets v999 does not exist: fails after snapshot is trusted
    assert_eq!(version_of(&s.dir, "snapshot"), 2);
    // Recovery: snapshot key rotated, snapshot v3 lists targets v1 again.
    sim.rotate_role_key("snapshot");
    sim.bump_root();
    sim.snapshot["meta"]["targets.json"]["version"] = json!(1);
    sim.snapshot["version"] = json!(3);
    sim.publish_snapshot();
    sim.update_timestamp();
    sim.refresh(&s.dir).unwrap();
    assert_eq!(version_of(&s.dir, "snapshot"), 3);
}

#[test]
fn invalid_and_unknown_signatures_do_not_count_but_do_not_fail() {
    let mut sim = Sim::new();
    let s = scenario("extra-signatures", &sim);
    let bytes = sim.published["timestamp"].last().unwrap().clone();
    let mut doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    doc["signatures"].as_array_mut().unwrap().extend([
        json!({"keyid": "unknown", "sig": "00"}),
        json!({"keyid": "also-unknown", "sig": ""}),
        json!({"keyid": "not-hex", "sig": "zz"}),
    ]);
    sim.put("metadata/timestamp.json", serde_json::to_vec(&doc).unwrap());
    sim.refresh(&s.dir).unwrap();

    // A corrupted signature by the only key: threshold missed.
    sim.update_timestamp();
    let bytes = sim.published["timestamp"].last().unwrap().clone();
    let mut doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    doc["signatures"][0]["sig"] = json!("00".repeat(64));
    sim.put("metadata/timestamp.json", serde_json::to_vec(&doc).unwrap());
    let err = sim.refresh(&s.dir).unwrap_err();
    assert!(
        matches!(&err, Error::Threshold { role, valid: 0, .. } if role == "timestamp"),
        "{err}"
    );
}

#[test]
fn duplicate_signature_keyids() {
    let mut sim = Sim::new();
    let s = scenario("duplicate-signatures", &sim);
    sim.update_timestamp();
    let bytes = sim.published["timestamp"].last().unwrap().clone();
    let mut doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let first = doc["signatures"][0].clone();
    doc["signatures"].as_array_mut().unwrap().push(first);
    sim.put("metadata/timestamp.json", serde_json::to_vec(&doc).unwrap());
    let err = sim.refresh(&s.dir).unwrap_err();
    assert!(
        matches!(&err, Error::DuplicateSignature { role, .. } if role == "timestamp"),
        "{err}"
    );
}

#[test]
fn one_key_under_two_keyids_counts_once() {
    let mut sim = Sim::new();
    let s = scenario("duplicate-key", &sim);
    let k = sim.signers["snapshot"][0].clone();
    // The same public key listed again under a second id, threshold 2.
    sim.root["keys"]["alias"] = public_json(&k);
    sim.root["roles"]["snapshot"] =
        json!({"keyids": [common::sim::keyid(&k), "alias"], "threshold": 2});
    sim.bump_root();
    let canonical = cairn_tuf::canonical::to_canonical_vec(&sim.snapshot).unwrap();
    use ed25519_dalek::Signer;
    let sig = hex::encode(k.sign(&canonical).to_bytes());
    let doc = json!({"signed": sim.snapshot, "signatures": [
        {"keyid": common::sim::keyid(&k), "sig": sig}, {"keyid": "alias", "sig": sig}]});
    sim.put(
        "metadata/1.snapshot.json",
        serde_json::to_vec(&doc).unwrap(),
    );
    let err = sim.refresh(&s.dir).unwrap_err();
    assert!(
        matches!(&err, Error::Threshold { role, valid: 1, threshold: 2, .. } if role == "snapshot"),
        "{err}"
    );
}

#[test]
fn unknown_fields_are_signed_and_kept() {
    let mut sim = Sim::new();
    let s = scenario("unknown-fields", &sim);
    sim.root["custom-field"] = json!({"nested": ["a", 1, null, true]});
    let id = sim.root["roles"]["root"]["keyids"][0]
        .as_str()
        .unwrap()
        .to_string();
    sim.root["keys"][&id]["extra"] = json!("é\"\\");
    let bytes = sim.bump_root();
    sim.refresh(&s.dir).unwrap();
    assert_eq!(std::fs::read(s.dir.join("root.json")).unwrap(), bytes);
}

#[test]
fn equal_timestamp_version_keeps_the_trusted_file() {
    let mut sim = Sim::new();
    let s = scenario("equal-timestamp-version", &sim);
    sim.refresh(&s.dir).unwrap();
    let trusted = std::fs::read(s.dir.join("timestamp.json")).unwrap();
    sim.timestamp["meta"]["snapshot.json"]["version"] = json!(100);
    sim.publish_timestamp(); // same version, different content
    sim.refresh(&s.dir).unwrap();
    assert_eq!(
        std::fs::read(s.dir.join("timestamp.json")).unwrap(),
        trusted
    );
}

#[test]
fn failure_leaves_trusted_metadata_intact() {
    let mut sim = Sim::new();
    let s = scenario("failure-keeps-trusted", &sim);
    sim.refresh(&s.dir).unwrap();
    let before: Vec<_> = ["root", "timestamp", "snapshot", "targets"]
        .iter()
        .map(|r| std::fs::read(s.dir.join(format!("{r}.json"))).unwrap())
        .collect();
    // New timestamp and snapshot, but the targets file they point to is bad.
    sim.commit_targets("targets");
    sim.put("metadata/2.targets.json", b"{not json".to_vec());
    let err = sim.refresh(&s.dir).unwrap_err();
    assert!(
        matches!(&err, Error::Malformed { role, .. } if role == "targets"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(s.dir.join("targets.json")).unwrap(),
        before[3]
    );
    assert_eq!(std::fs::read(s.dir.join("root.json")).unwrap(), before[0]);
    assert_eq!(
        files(&s.dir),
        [
            "root.json",
            "snapshot.json",
            "targets.json",
            "timestamp.json"
        ]
    );
}

#[test]
fn unsigned_initial_root_fails_before_any_request() {
    let sim = Sim::new();
    let s = scenario("unsigned-initial-root", &sim);
    let mut doc: serde_json::Value = serde_json::from_slice(&sim.root_versions[0]).unwrap();
    doc["signatures"][0]["sig"] = json!("00".repeat(64));
    std::fs::write(s.dir.join("root.json"), serde_json::to_vec(&doc).unwrap()).unwrap();
    let err = sim.updater(&s.dir).unwrap_err();
    assert!(
        matches!(&err, Error::Threshold { role, .. } if role == "root"),
        "{err}"
    );
    assert!(sim.requests().is_empty());
    std::fs::remove_file(s.dir.join("root.json")).unwrap();
    assert!(matches!(
        sim.updater(&s.dir).unwrap_err(),
        Error::NoTrustedRoot { .. }
    ));
}

#[test]
fn consistent_snapshot_off_uses_unversioned_names() {
    let mut sim = Sim::new();
    sim.root["consistent_snapshot"] = json!(false);
    sim.bump_root();
    sim.add_target("targets", "a/b.txt", b"plain");
    sim.put("targets/a/b.txt", b"plain".to_vec());
    sim.commit_targets("targets");
    let s = scenario("no-consistent-snapshot", &sim);
    let mut up = sim.updater(&s.dir).unwrap();
    let info = up.get_target_info("a/b.txt").unwrap().unwrap();
    up.download_target(&info, &s.dir.parent().unwrap().join("b"))
        .unwrap();
    let reqs = sim.requests();
    assert!(
        reqs.contains(&"metadata/snapshot.json".to_string()),
        "{reqs:?}"
    );
    assert!(
        reqs.contains(&"metadata/targets.json".to_string()),
        "{reqs:?}"
    );
    assert!(reqs.contains(&"targets/a/b.txt".to_string()), "{reqs:?}");
}

// -- delegations --------------------------------------------------------

#[test]
fn delegation_search_is_preorder_depth_first() {
    let mut sim = Sim::new();
    sim.add_delegation("targets", "a", &["*"], false);
    sim.add_delegation("a", "a1", &["*"], false);
    sim.add_delegation("targets", "b", &["*"], false);
    sim.add_target("b", "file", b"from b");
    for r in ["a1", "a", "b"] {
        sim.publish_targets(r);
    }
    sim.commit_targets("targets");
    let s = scenario("delegation-order", &sim);
    let mut up = sim.updater(&s.dir).unwrap();
    up.refresh().unwrap();
    sim.clear_requests();
    let info = up.get_target_info("file").unwrap().unwrap();
    assert_eq!(info.role(), "b");
    assert_eq!(
        sim.requests(),
        [
            "metadata/1.a.json",
            "metadata/1.a1.json",
            "metadata/1.b.json"
        ]
    );
    assert!(s.dir.join("a1.json").exists());
}

#[test]
fn terminating_delegation_stops_the_search() {
    let mut sim = Sim::new();
    sim.add_delegation("targets", "a", &["images/*"], true);
    sim.add_delegation("targets", "b", &["*/*"], false);
    sim.add_target("b", "images/x", b"x");
    sim.add_target("b", "other/y", b"y");
    sim.publish_targets("b");
    sim.commit_targets("targets");
    let s = scenario("terminating-delegation", &sim);
    let mut up = sim.updater(&s.dir).unwrap();
    assert!(
        up.get_target_info("images/x").unwrap().is_none(),
        "a terminates before b"
    );
    assert_eq!(up.get_target_info("other/y").unwrap().unwrap().role(), "b");
    // `*` does not cross `/`: a does not cover images/sub/z.
    sim.clear_requests();
    assert!(up.get_target_info("images/sub/z").unwrap().is_none());
    assert!(sim.requests().is_empty());
}

#[test]
fn delegation_cycles_and_visit_cap() {
    let mut sim = Sim::new();
    sim.add_delegation("targets", "a", &["*"], false);
    sim.add_delegation("a", "b", &["*"], false);
    // b delegates back to a: a cycle.
    let a_key = sim.signers["a"][0].clone();
    let b = sim.targets.get_mut("b").unwrap();
    b["delegations"] = json!({"keys": {common::sim::keyid(&a_key): public_json(&a_key)},
        "roles": [{"name": "a", "keyids": [common::sim::keyid(&a_key)], "threshold": 1, "terminating": false, "paths": ["*"]}]});
    sim.publish_targets("b");
    sim.publish_targets("a");
    sim.commit_targets("targets");
    let s = scenario("delegation-cycle", &sim);
    let mut up = sim.updater(&s.dir).unwrap();
    assert!(up.get_target_info("missing").unwrap().is_none());

    // A long chain is cut at max_delegations.
    let mut sim = Sim::new();
    let mut parent = "targets".to_string();
    for i in 0..40 {
        let name = format!("r{i}");
        sim.add_delegation(&parent, &name, &["*"], false);
        parent = name;
    }
    for i in (0..40).rev() {
        sim.publish_targets(&format!("r{i}"));
    }
    sim.add_target("r39", "deep", b"d");
    sim.publish_targets("r39");
    sim.commit_targets("targets");
    let s = scenario("delegation-visit-cap", &sim);
    let mut up = sim.updater(&s.dir).unwrap();
    assert!(up.get_target_info("deep").unwrap().is_none());
    let loaded = sim
        .requests()
        .iter()
        .filter(|r| r.contains(".r") && !r.contains("root"))
        .count();
    assert_eq!(loaded, 32, "targets + 32 delegated roles at most");
}

#[test]
fn delegated_role_needs_its_delegators_keys() {
    let mut sim = Sim::new();
    sim.add_delegation("targets", "a", &["*"], false);
    sim.add_target("a", "file", b"f");
    // Signed by the top-level targets key instead of a's own key.
    let wrong = sim.signers["targets"].clone();
    sim.signers.insert("a".into(), wrong);
    sim.publish_targets("a");
    sim.commit_targets("targets");
    let s = scenario("delegation-wrong-key", &sim);
    let mut up = sim.updater(&s.dir).unwrap();
    let err = up.get_target_info("file").unwrap_err();
    assert!(
        matches!(&err, Error::Threshold { role, signer, .. } if role == "a" && signer == "targets"),
        "{err}"
    );
    assert!(!s.dir.join("a.json").exists());
}

#[test]
fn unusual_role_names_are_quoted() {
    for role in ["?", "#", "/delegatedrole", "../delegatedrole"] {
        let mut sim = Sim::new();
        sim.add_delegation("targets", role, &["*"], false);
        sim.commit_targets("targets");
        let s = scenario("unusual-role-name", &sim);
        let mut up = sim.updater(&s.dir).unwrap();
        assert!(up.get_target_info("nonexistent").unwrap().is_none());
        let quoted = cairn_tuf::transport::quote(role);
        assert!(
            sim.requests()
                .contains(&format!("metadata/1.{quoted}.json")),
            "{role}"
        );
        assert!(s.dir.join(format!("{quoted}.json")).is_file(), "{role}");
        assert_eq!(files(&s.dir).len(), 5, "{role}");
    }
}

#[test]
fn succinct_hash_bins() {
    let mut sim = Sim::new();
    let k = new_key();
    let id = common::sim::keyid(&k);
    sim.targets.get_mut("targets").unwrap()["delegations"] = json!({
        "keys": {id.clone(): public_json(&k)},
        "succinct_roles": {"keyids": [id], "threshold": 1, "bit_length": 4, "name_prefix": "bin"}});
    let bins = cairn_tuf::metadata::SuccinctRoles {
        keys: cairn_tuf::metadata::RoleKeys {
            keyids: vec![],
            threshold: 1,
        },
        bit_length: 4,
        name_prefix: "bin".into(),
    };
    let bin = bins.role_for_target("some/target");
    for i in 0..16 {
        let name = format!("bin-{i:x}");
        sim.signers.insert(name.clone(), vec![k.clone()]);
        sim.targets.insert(
            name.clone(),
            json!({"_type": "targets", "spec_version": "1.0.31", "version": 1, "expires": days_from_now(30), "targets": {}}),
        );
    }
    sim.add_target(&bin, "some/target", b"binned");
    for i in 0..16 {
        sim.publish_targets(&format!("bin-{i:x}"));
    }
    sim.commit_targets("targets");
    let s = scenario("succinct-bins", &sim);
    let mut up = sim.updater(&s.dir).unwrap();
    assert_eq!(
        up.get_target_info("some/target").unwrap().unwrap().role(),
        bin
    );
}
