//! The conformance CLI over real HTTP (127.0.0.1): exit codes, file layout,
//! requests.

mod common;

use std::path::Path;
use std::process::Command;

use common::server::Server;
use common::sim::Sim;

fn client() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cairn-tuf-client"))
}

fn status(cmd: &mut Command) -> i32 {
    let out = cmd.output().expect("run cairn-tuf-client");
    out.status.code().expect("exited normally")
}

struct Setup {
    _tmp: tempfile::TempDir,
    repo: std::path::PathBuf,
    md: std::path::PathBuf,
    tdir: std::path::PathBuf,
    server: Server,
}

fn setup(sim: &Sim) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    sim.write_to(&repo);
    let md = tmp.path().join("metadata");
    let tdir = tmp.path().join("targets");
    std::fs::create_dir_all(&md).unwrap();
    std::fs::create_dir_all(&tdir).unwrap();
    std::fs::write(tmp.path().join("initial_root.json"), &sim.root_versions[0]).unwrap();
    let server = Server::start(&repo);
    Setup {
        _tmp: tmp,
        repo,
        md,
        tdir,
        server,
    }
}

impl Setup {
    fn init(&self) -> i32 {
        let root = self.md.parent().unwrap().join("initial_root.json");
        status(
            client()
                .arg("--metadata-dir")
                .arg(&self.md)
                .arg("init")
                .arg(root),
        )
    }
    fn refresh(&self) -> i32 {
        status(
            client()
                .arg("--metadata-url")
                .arg(self.server.url("metadata"))
                .arg("--metadata-dir")
                .arg(&self.md)
                .arg("refresh"),
        )
    }
    fn download(&self, names: &[&str]) -> i32 {
        let mut c = client();
        c.arg("--metadata-url")
            .arg(self.server.url("metadata"))
            .arg("--metadata-dir")
            .arg(&self.md);
        for n in names {
            c.arg("--target-name").arg(n);
        }
        c.arg("--target-dir")
            .arg(&self.tdir)
            .arg("--target-base-url")
            .arg(self.server.url("targets"))
            .arg("download");
        status(&mut c)
    }
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn init_refresh_download_exit_codes() {
    let mut sim = Sim::new();
    sim.add_target("targets", "target_file.txt", b"target file contents");
    sim.add_target("targets", "path/to/a/file.txt", b"nested");
    sim.commit_targets("targets");
    let s = setup(&sim);

    assert_eq!(s.init(), 0);
    assert_eq!(
        std::fs::read(s.md.join("root.json")).unwrap(),
        sim.root_versions[0],
        "init copies the trusted root"
    );
    assert!(s.server.requests().is_empty(), "init makes no requests");

    assert_eq!(s.refresh(), 0);
    assert_eq!(
        s.server.requests(),
        [
            "/metadata/2.root.json",
            "/metadata/timestamp.json",
            "/metadata/2.snapshot.json",
            "/metadata/2.targets.json"
        ]
    );
    assert_eq!(
        listing(&s.md),
        [
            "root.json",
            "snapshot.json",
            "targets.json",
            "timestamp.json"
        ]
    );
    assert!(listing(&s.tdir).is_empty());

    assert_eq!(s.download(&["target_file.txt", "path/to/a/file.txt"]), 0);
    assert_eq!(
        std::fs::read(s.tdir.join("target_file.txt")).unwrap(),
        b"target file contents"
    );
    assert_eq!(
        std::fs::read(s.tdir.join("path%2Fto%2Fa%2Ffile.txt")).unwrap(),
        b"nested"
    );

    // Cached: not fetched again.
    s.server.clear_requests();
    assert_eq!(s.download(&["target_file.txt"]), 0);
    assert!(!s
        .server
        .requests()
        .iter()
        .any(|r| r.starts_with("/targets/")));
}

#[test]
fn download_stops_at_first_failure() {
    let mut sim = Sim::new();
    sim.add_target("targets", "a", b"a");
    sim.add_target("targets", "c", b"c");
    sim.commit_targets("targets");
    let s = setup(&sim);
    assert_eq!(s.init(), 0);
    assert_eq!(s.download(&["a", "missing", "c"]), 1);
    assert_eq!(listing(&s.tdir), ["a"]);
    // Implicit refresh happened before the failure.
    assert_eq!(
        listing(&s.md),
        [
            "root.json",
            "snapshot.json",
            "targets.json",
            "timestamp.json"
        ]
    );
}

#[test]
fn tampered_target_is_not_stored() {
    let mut sim = Sim::new();
    sim.add_target("targets", "t", b"good");
    sim.commit_targets("targets");
    let s = setup(&sim);
    let hash = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(b"good"))
    };
    std::fs::write(s.repo.join(format!("targets/{hash}.t")), b"evil").unwrap();
    assert_eq!(s.init(), 0);
    assert_eq!(s.download(&["t"]), 1);
    assert!(listing(&s.tdir).is_empty(), "{:?}", listing(&s.tdir));
}

#[test]
fn endless_timestamp_over_http() {
    let sim = Sim::new();
    let s = setup(&sim);
    s.server.make_endless("/metadata/timestamp.json");
    assert_eq!(s.init(), 0);
    assert_eq!(s.refresh(), 1);
    assert_eq!(listing(&s.md), ["root.json"]);
}

#[test]
fn usage_errors_exit_1_never_2() {
    let sim = Sim::new();
    let s = setup(&sim);
    assert_eq!(status(&mut client()), 1, "no arguments");
    assert_eq!(
        status(client().arg("--bogus").arg("refresh")),
        1,
        "unknown flag"
    );
    assert_eq!(
        status(client().arg("--metadata-dir").arg(&s.md).arg("refresh")),
        1,
        "no --metadata-url"
    );
    assert_eq!(
        status(
            client()
                .arg("--metadata-dir")
                .arg(&s.md)
                .arg("init")
                .arg("/nonexistent/root.json")
        ),
        1
    );
    // refresh before init: no trusted root.
    assert_eq!(s.refresh(), 1);
    // Unreachable repository.
    assert_eq!(s.init(), 0);
    assert_eq!(
        status(
            client()
                .args([
                    "--metadata-url",
                    "http://127.0.0.1:9/metadata",
                    "--metadata-dir"
                ])
                .arg(&s.md)
                .arg("refresh")
        ),
        1
    );
    assert_eq!(status(client().arg("--help")), 0);
}

#[test]
fn unsigned_initial_root_makes_no_requests() {
    let sim = Sim::new();
    let s = setup(&sim);
    let mut doc: serde_json::Value = serde_json::from_slice(&sim.root_versions[0]).unwrap();
    doc["signed"].as_object_mut().unwrap().remove("version");
    std::fs::write(
        s.md.parent().unwrap().join("initial_root.json"),
        serde_json::to_vec(&doc).unwrap(),
    )
    .unwrap();
    let _ = s.init();
    assert_eq!(s.refresh(), 1);
    assert!(s.server.requests().is_empty());
}
