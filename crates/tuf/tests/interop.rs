//! Interop with python-tuf (the reference implementation) in both
//! directions. Needs `pip install -r crates/tuf/tests/interop/requirements.txt`;
//! run with `cargo test -p cairn-tuf --test interop -- --ignored`. The
//! python interpreter is `$CAIRN_TUF_PYTHON` or `python3`. A missing
//! python-tuf fails these tests loudly; it never skips them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use cairn_tuf::repository::cli::TufCommand;
use cairn_tuf::{Config, HttpTransport, Updater};
use clap::Parser;
use common::server::Server;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn python() -> String {
    std::env::var("CAIRN_TUF_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop")
        .join(name)
}

fn require_python_tuf() {
    let out = Command::new(python())
        .args([
            "-c",
            "import tuf.ngclient, securesystemslib.signer; print(tuf.__version__)",
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "python-tuf is not installed for {}: run `pip install -r crates/tuf/tests/interop/requirements.txt`\n{}",
            python(),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("cannot run {}: {e} (set CAIRN_TUF_PYTHON)", python()),
    }
}

fn run_python(args: &[&str]) -> String {
    let out = Command::new(python())
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "python {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[derive(clap::Parser)]
struct Image {
    #[command(subcommand)]
    tuf: TufCommand,
}

/// `cairn-image tuf ARGS...` as the lead's binary will run it.
fn cairn_image_tuf(args: &[&str]) {
    let mut argv = vec!["cairn-image"];
    argv.extend_from_slice(args);
    Image::try_parse_from(argv)
        .unwrap_or_else(|e| panic!("{e}"))
        .tuf
        .run()
        .unwrap_or_else(|e| panic!("tuf {args:?}: {e}"));
}

#[test]
#[ignore = "needs python-tuf (tier run by the test command)"]
fn python_tuf_repository_is_read_by_cairn() {
    require_python_tuf();
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    run_python(&[
        script("make_repo.py").to_str().unwrap(),
        repo.to_str().unwrap(),
    ]);
    let expected: Value =
        serde_json::from_slice(&std::fs::read(repo.join("expected.json")).unwrap()).unwrap();
    let server = Server::start(&repo);

    let md = tmp.path().join("cairn-metadata");
    std::fs::create_dir_all(&md).unwrap();
    std::fs::copy(repo.join("metadata/1.root.json"), md.join("root.json")).unwrap();
    let mut up = Updater::new(
        Config {
            metadata_dir: md.clone(),
            metadata_base_url: server.url("metadata"),
            targets_base_url: server.url("targets"),
            start_time: SystemTime::now(),
            ..Default::default()
        },
        HttpTransport::new(),
    )
    .unwrap();
    up.refresh().unwrap();
    assert_eq!(
        up.trusted_root().common.version,
        expected["root_version"].as_u64().unwrap()
    );

    let mut names = Vec::new();
    for (name, want) in expected["found"].as_object().unwrap() {
        names.push(name.clone());
        let info = up
            .get_target_info(name)
            .unwrap()
            .unwrap_or_else(|| panic!("{name} not found"));
        assert_eq!(info.role(), want["role"].as_str().unwrap(), "{name}");
        assert_eq!(info.length(), want["length"].as_u64().unwrap(), "{name}");
        assert_eq!(
            info.custom(),
            want["custom"].as_object().map(|_| &want["custom"]),
            "{name}"
        );
        let dest = tmp
            .path()
            .join("dl")
            .join(cairn_tuf::transport::quote(name));
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        up.download_target(&info, &dest).unwrap();
        assert_eq!(
            hex::encode(Sha256::digest(std::fs::read(&dest).unwrap())),
            want["sha256"].as_str().unwrap()
        );
    }
    let image = up
        .get_target_info("images/cairn-0.2.0.rootfs")
        .unwrap()
        .unwrap();
    assert_eq!(
        image.image_metadata().unwrap().version.as_deref(),
        Some("0.2.0")
    );
    for name in expected["not_found"].as_array().unwrap() {
        let name = name.as_str().unwrap();
        assert!(
            up.get_target_info(name).unwrap().is_none(),
            "{name} must not be found"
        );
        names.push(name.to_string());
    }

    // python-tuf's ngclient on the same repository, same look-ups: both
    // clients must trust the same files with the same bytes.
    let work = tmp.path().join("ngclient");
    let mut args = vec![
        script("ngclient.py").to_string_lossy().into_owned(),
        server.url("metadata/"),
        server.url("targets/"),
        repo.join("metadata/1.root.json")
            .to_string_lossy()
            .into_owned(),
        work.to_string_lossy().into_owned(),
    ];
    args.extend(names);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_python(&args);
    let list = |d: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap())
            // python-tuf 7 also keeps root_history/ (root.json is a symlink into it).
            .filter(|e| std::fs::metadata(e.path()).unwrap().is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let ours = list(&md);
    assert_eq!(ours, list(&work.join("metadata")));
    for f in ours {
        assert_eq!(
            std::fs::read(md.join(&f)).unwrap(),
            std::fs::read(work.join("metadata").join(&f)).unwrap(),
            "{f} differs from python-tuf's trusted copy"
        );
    }
}

#[test]
#[ignore = "needs python-tuf (tier run by the test command)"]
fn cairn_repository_is_read_by_python_tuf_ngclient() {
    require_python_tuf();
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let keys = tmp.path().join("keys");
    let (r, k) = (repo.to_str().unwrap(), keys.to_str().unwrap());
    let image = tmp.path().join("cairn-0.2.0.rootfs");
    std::fs::write(&image, b"rootfs v0.2.0\n".repeat(1000)).unwrap();
    let (img, img_sha) = (
        image.to_str().unwrap(),
        hex::encode(Sha256::digest(std::fs::read(&image).unwrap())),
    );

    cairn_image_tuf(&[
        "init",
        "--repo",
        r,
        "--keys",
        k,
        "--root-keys",
        "2",
        "--root-threshold",
        "2",
    ]);
    cairn_image_tuf(&[
        "add-target",
        "--repo",
        r,
        "--keys",
        k,
        img,
        "--name",
        "images/cairn-0.2.0.rootfs",
        "--image-version",
        "0.2.0",
        "--rootfs-hash",
        &format!("sha256:{img_sha}"),
        "--verity-root-hash",
        "ab12",
        "--min-agent-version",
        "0.1.0",
    ]);
    cairn_image_tuf(&["sign", "--repo", r, "--keys", k]);
    let trusted_root = tmp.path().join("1.root.json");
    std::fs::copy(repo.join("metadata/1.root.json"), &trusted_root).unwrap();
    // Rotations that clients holding root v1 must follow.
    cairn_image_tuf(&["rotate-key", "--repo", r, "--keys", k, "--role", "root"]);
    cairn_image_tuf(&[
        "rotate-key",
        "--repo",
        r,
        "--keys",
        k,
        "--role",
        "timestamp",
    ]);
    cairn_image_tuf(&["rotate-key", "--repo", r, "--keys", k, "--role", "targets"]);
    let notes = tmp.path().join("notes.txt");
    std::fs::write(&notes, b"release notes").unwrap();
    cairn_image_tuf(&[
        "add-target",
        "--repo",
        r,
        "--keys",
        k,
        notes.to_str().unwrap(),
    ]);
    cairn_image_tuf(&["sign", "--repo", r, "--keys", k]);
    cairn_image_tuf(&["refresh-timestamp", "--repo", r, "--keys", k]);
    let public = tmp.path().join("public");
    std::fs::create_dir_all(&public).unwrap();
    cairn_image_tuf(&[
        "publish",
        "--repo",
        r,
        "--keys",
        k,
        public.to_str().unwrap(),
    ]);
    assert!(!public.join("keys").exists(), "keys are never published");

    let server = Server::start(&public);
    let out = run_python(&[
        script("ngclient.py").to_str().unwrap(),
        &server.url("metadata/"),
        &server.url("targets/"),
        trusted_root.to_str().unwrap(),
        tmp.path().join("ngclient").to_str().unwrap(),
        "images/cairn-0.2.0.rootfs",
        "notes.txt",
        "missing",
    ]);
    let seen: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(seen["root_version"], 4, "v1 + three rotations");
    let t = &seen["targets"]["images/cairn-0.2.0.rootfs"];
    assert_eq!(t["downloaded_sha256"], img_sha.as_str());
    assert_eq!(t["custom"]["version"], "0.2.0");
    assert_eq!(t["custom"]["verity_root_hash"], "ab12");
    assert_eq!(t["custom"]["min_agent_version"], "0.1.0");
    assert_eq!(
        seen["targets"]["notes.txt"]["downloaded_sha256"],
        hex::encode(Sha256::digest(b"release notes")).as_str()
    );
    assert!(seen["targets"]["missing"].is_null());
}
