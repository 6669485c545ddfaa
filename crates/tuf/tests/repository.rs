//! Repository tooling: signing rules, key handling, and root rotations that
//! cairn's own client follows (through the local-file transport stage-1
//! init uses).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use cairn_tuf::repository::{
    InitOptions, KeySpec, RepoError, Repository, RotateOptions, TargetName,
};
use cairn_tuf::{Config, FilesystemTransport, ImageMetadata, Updater};

const DAY: Duration = Duration::from_secs(86_400);

fn client(public: &Path, md: &Path, now: SystemTime) -> Updater<FilesystemTransport> {
    Updater::new(
        Config {
            metadata_dir: md.to_path_buf(),
            metadata_base_url: format!("file://{}", public.join("metadata").display()),
            targets_base_url: format!("file://{}", public.join("targets").display()),
            start_time: now,
            ..Default::default()
        },
        FilesystemTransport,
    )
    .unwrap()
}

#[test]
fn publish_rotate_and_follow_with_local_files() {
    let tmp = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let repo_dir = tmp.path().join("repo");
    let opts = InitOptions {
        root: KeySpec {
            keys: 3,
            threshold: 2,
        },
        ..Default::default()
    };
    let mut repo = Repository::init(&repo_dir, None, &opts, now).unwrap();
    let image = tmp.path().join("img");
    std::fs::write(&image, b"image bytes").unwrap();
    let custom = ImageMetadata {
        version: Some("0.2.0".into()),
        verity_root_hash: Some("cafe".into()),
        ..Default::default()
    };
    repo.add_target_file(
        &TargetName::new("cairn-0.2.0.rootfs").unwrap(),
        &image,
        Some(cairn_tuf::repository::image_custom(&custom)),
    )
    .unwrap();
    let signed = repo.sign(&[]).unwrap();
    assert_eq!(
        signed
            .iter()
            .map(|s| (s.role.as_str(), s.version))
            .collect::<Vec<_>>(),
        [("targets", 2), ("snapshot", 2), ("timestamp", 2)]
    );
    let public = tmp.path().join("public");
    repo.publish(&public).unwrap();

    // Key files: 0600, keys dir 0700, never published.
    let keys = repo_dir.join("keys");
    assert_eq!(
        std::fs::metadata(&keys).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for e in std::fs::read_dir(&keys).unwrap() {
        let m = e.unwrap().metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(m, 0o600);
    }
    assert!(!public.join("keys").exists());
    // Debug output names key ids only.
    let pem = std::fs::read_to_string(
        std::fs::read_dir(&keys)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path(),
    )
    .unwrap();
    let secret_line = pem.lines().nth(1).unwrap();
    assert!(!format!("{repo:?}").contains(secret_line));

    let md = tmp.path().join("client");
    std::fs::create_dir_all(&md).unwrap();
    std::fs::copy(public.join("metadata/1.root.json"), md.join("root.json")).unwrap();
    let mut up = client(&public, &md, now);
    let info = up.get_target_info("cairn-0.2.0.rootfs").unwrap().unwrap();
    assert_eq!(info.image_metadata().unwrap(), custom);
    up.download_target(&info, &tmp.path().join("dl")).unwrap();
    info.verify_file(&image).unwrap();

    // Rotate the root keys (threshold 2 of 3 → 1 new key) and the snapshot
    // key; a client holding root v1 follows.
    let mut repo = Repository::open(&repo_dir, None, now).unwrap();
    let out = repo
        .rotate_key(
            "root",
            &RotateOptions {
                add: Some(1),
                threshold: Some(1),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(out[0].version, 2);
    repo.rotate_key("snapshot", &RotateOptions::default())
        .unwrap();
    repo.publish(&public).unwrap();
    let mut up = client(&public, &md, now);
    up.refresh().unwrap();
    assert_eq!(up.trusted_root().common.version, 3);
    assert_eq!(up.trusted_root().role("root").threshold, 1);
    assert_eq!(up.trusted_snapshot().unwrap().common.version, 3);
}

#[test]
fn refuses_to_sign_with_missing_keys_or_expired_roles() {
    let tmp = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let dir = tmp.path().join("repo");
    let keys = tmp.path().join("offline-keys");
    Repository::init(&dir, Some(&keys), &InitOptions::default(), now).unwrap();

    // Keys elsewhere (offline): nothing can be signed.
    let mut repo = Repository::open(&dir, Some(&tmp.path().join("empty")), now).unwrap();
    let err = repo.refresh_timestamp().unwrap_err();
    assert!(
        matches!(&err, RepoError::MissingKeys { role, have: 0, need: 1, .. } if role == "timestamp"),
        "{err}"
    );
    let before = std::fs::read(dir.join("metadata/timestamp.json")).unwrap();
    assert!(matches!(
        repo.sign(&["targets"]).unwrap_err(),
        RepoError::MissingKeys { .. }
    ));
    assert_eq!(
        std::fs::read(dir.join("metadata/timestamp.json")).unwrap(),
        before,
        "nothing written"
    );

    // Snapshot (7 days) expired: the timestamp would point at it.
    let mut repo = Repository::open(&dir, Some(&keys), now + 8 * DAY).unwrap();
    let err = repo.refresh_timestamp().unwrap_err();
    assert!(
        matches!(&err, RepoError::ExpiredRole { role, .. } if role == "snapshot"),
        "{err}"
    );
    // Re-signing snapshot first fixes it.
    repo.sign(&["snapshot"]).unwrap();
    repo.refresh_timestamp().unwrap();

    // Targets (90 days) expired: refuse to sign a snapshot over it.
    let mut repo = Repository::open(&dir, Some(&keys), now + 91 * DAY).unwrap();
    let err = repo.sign(&["snapshot"]).unwrap_err();
    assert!(
        matches!(&err, RepoError::ExpiredRole { role, .. } if role == "targets"),
        "{err}"
    );

    // Root (365 days) expired: refuse everything until root is re-signed.
    let mut repo = Repository::open(&dir, Some(&keys), now + 366 * DAY).unwrap();
    let err = repo.sign(&[]).unwrap_err();
    assert!(
        matches!(&err, RepoError::ExpiredRole { role, .. } if role == "root"),
        "{err}"
    );
    let out = repo.sign(&["root", "targets"]).unwrap();
    assert_eq!(
        out.iter().map(|s| s.role.as_str()).collect::<Vec<_>>(),
        ["root", "targets", "snapshot", "timestamp"]
    );

    assert!(matches!(
        repo.sign(&["bogus"]).unwrap_err(),
        RepoError::UnknownRole(_)
    ));
    assert!(matches!(
        Repository::init(&dir, None, &InitOptions::default(), now).unwrap_err(),
        RepoError::AlreadyInitialised(_)
    ));
}

#[test]
fn thresholds_and_target_names_are_validated() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = InitOptions {
        targets: KeySpec {
            keys: 1,
            threshold: 2,
        },
        ..Default::default()
    };
    assert!(matches!(
        Repository::init(tmp.path(), None, &bad, SystemTime::now()).unwrap_err(),
        RepoError::InvalidThreshold { .. }
    ));
    for name in ["", "/abs", "a/../b", "a//b", "./a", "a\\b", "a\nb"] {
        assert!(TargetName::new(name).is_err(), "{name:?}");
    }
    assert!(TargetName::new("images/cairn-0.2.0.rootfs").is_ok());
}

#[derive(clap::Parser)]
struct Image {
    #[command(subcommand)]
    tuf: cairn_tuf::repository::cli::TufCommand,
}

fn tuf(args: &[&str]) -> Result<(), RepoError> {
    use clap::Parser;
    let mut argv = vec!["cairn-image"];
    argv.extend_from_slice(args);
    Image::try_parse_from(argv)
        .unwrap_or_else(|e| panic!("{e}"))
        .tuf
        .run()
}

#[test]
fn cli_commands_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let r = repo.to_str().unwrap();
    let img = tmp.path().join("cairn-0.3.0.rootfs");
    std::fs::write(&img, b"v0.3.0").unwrap();
    tuf(&["init", "--repo", r, "--timestamp-expires-days", "2"]).unwrap();
    tuf(&[
        "add-target",
        "--repo",
        r,
        img.to_str().unwrap(),
        "--image-version",
        "0.3.0",
    ])
    .unwrap();
    tuf(&["sign", "--repo", r]).unwrap();
    tuf(&["refresh-timestamp", "--repo", r]).unwrap();
    tuf(&["rotate-key", "--repo", r, "--role", "root"]).unwrap();
    assert!(matches!(
        tuf(&["sign", "--repo", r, "--role", "nonsense"]).unwrap_err(),
        RepoError::UnknownRole(_)
    ));
    assert!(matches!(
        tuf(&[
            "add-target",
            "--repo",
            r,
            img.to_str().unwrap(),
            "--name",
            "../escape"
        ])
        .unwrap_err(),
        RepoError::InvalidTargetName { .. }
    ));
    let public = tmp.path().join("public");
    std::fs::create_dir_all(&public).unwrap();
    tuf(&["publish", "--repo", r, public.to_str().unwrap()]).unwrap();

    let md = tmp.path().join("client");
    std::fs::create_dir_all(&md).unwrap();
    std::fs::copy(public.join("metadata/1.root.json"), md.join("root.json")).unwrap();
    let mut up = client(&public, &md, SystemTime::now());
    let info = up.get_target_info("cairn-0.3.0.rootfs").unwrap().unwrap();
    assert_eq!(
        info.image_metadata().unwrap().version.as_deref(),
        Some("0.3.0")
    );
    assert_eq!(up.trusted_root().common.version, 2);
    assert_eq!(up.trusted_timestamp().unwrap().common.version, 3);
}

#[test]
fn open_target_streams_verified_bytes_and_fails_the_last_read_on_tampering() {
    use std::io::Read;
    let tmp = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let repo_dir = tmp.path().join("repo");
    let mut repo = Repository::init(&repo_dir, None, &InitOptions::default(), now).unwrap();
    let image = tmp.path().join("img");
    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&image, &bytes).unwrap();
    let name = "cairn/0.2.0/rootfs.erofs";
    repo.add_target_file(&TargetName::new(name).unwrap(), &image, None)
        .unwrap();
    repo.sign(&[]).unwrap();
    let public = tmp.path().join("public");
    repo.publish(&public).unwrap();
    let md = tmp.path().join("client");
    std::fs::create_dir_all(&md).unwrap();
    std::fs::copy(public.join("metadata/1.root.json"), md.join("root.json")).unwrap();
    let mut up = client(&public, &md, now);
    let info = up.get_target_info(name).unwrap().unwrap();

    let mut got = Vec::new();
    up.open_target(&info)
        .unwrap()
        .read_to_end(&mut got)
        .unwrap();
    assert_eq!(got, bytes);

    // Flip one byte of the published file: every byte but the end of the
    // stream reads fine, then the hash check fails it.
    let published: Vec<_> = walk(&public.join("targets"))
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with("rootfs.erofs"))
        .collect();
    assert_eq!(published.len(), 1, "{published:?}");
    let mut evil = bytes.clone();
    evil[100_000] ^= 1;
    std::fs::write(&published[0], &evil).unwrap();
    let mut r = up.open_target(&info).unwrap();
    let mut got = Vec::new();
    let e = r.read_to_end(&mut got).unwrap_err();
    assert_eq!(
        got.len(),
        bytes.len(),
        "all bytes arrive before the verdict"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("rootfs.erofs") && msg.contains("sha256"),
        "{msg}"
    );

    // A longer file is cut off at the signed length + 1 and refused.
    let mut long = bytes.clone();
    long.push(0);
    std::fs::write(&published[0], &long).unwrap();
    let e = up
        .open_target(&info)
        .unwrap()
        .read_to_end(&mut Vec::new())
        .unwrap_err();
    assert!(e.to_string().contains("200000"), "{e}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
