//! Fetching over the network (git:// served by a real `git daemon` on
//! loopback) and the fetch limits.

mod common;

use std::{
    net::TcpListener,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use cairn_source::{pull, FetchLimitKind, FetchLimits, SourceError};
use common::{id, Fixture};

/// A `git daemon` serving the fixture's directory; killed on drop.
struct Daemon {
    child: Child,
    port: u16,
}

impl Daemon {
    fn start(f: &Fixture) -> Daemon {
        // Pick a free port; the daemon binds it right after.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = common::git_cmd(f.dir.path(), f.home())
            .args([
                "daemon",
                "--reuseaddr",
                "--export-all",
                "--listen=127.0.0.1",
                &format!("--port={port}"),
                &format!("--base-path={}", f.dir.path().display()),
            ])
            .arg(f.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let d = Daemon { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "git daemon did not start on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn pull_over_git_protocol() {
    let f = Fixture::new();
    let alice = f.key("alice");
    let tip = f.commit(Some(&alice), "one", &[("a", "1")]);
    let d = Daemon::start(&f);
    let mut cfg = f.config(&alice.signer_line(""));
    cfg.url = format!("git://127.0.0.1:{}/upstream", d.port);
    let v = pull(cfg.clone()).unwrap();
    assert_eq!(v.id(), id(&tip));
    // An unchanged poll over the network.
    let v = pull(cfg).unwrap();
    assert_eq!(v.newly_verified(), 0);
}

#[test]
fn size_limit_aborts_the_fetch() {
    let f = Fixture::new();
    let alice = f.key("alice");
    // Incompressible content, well over the limit.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let big: String = (0..200_000)
        .map(|_| {
            // xorshift64: pseudo-random, so zlib cannot shrink it much.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect();
    f.commit(Some(&alice), "big", &[("big.txt", &big)]);
    let d = Daemon::start(&f);
    let mut cfg = f.config(&alice.signer_line(""));
    cfg.url = format!("git://127.0.0.1:{}/upstream", d.port);
    cfg.limits = FetchLimits {
        max_bytes: 10_000,
        ..FetchLimits::default()
    };
    match pull(cfg.clone()) {
        Err(SourceError::FetchLimit { url, limit }) => {
            assert_eq!(url, cfg.url);
            assert_eq!(limit, FetchLimitKind::Bytes(10_000));
        }
        other => panic!("expected FetchLimit, got {other:?}"),
    }
    assert_eq!(f.recorded_file(), None);
    // The same limit over file:// (libgit2's local transport).
    let mut local = f.config(&alice.signer_line(""));
    local.state_dir = f.dir.path().join("state-local");
    local.limits.max_bytes = 10_000;
    let err = pull(local).unwrap_err();
    assert!(
        matches!(
            err,
            SourceError::FetchLimit {
                limit: FetchLimitKind::Bytes(10_000),
                ..
            }
        ),
        "expected FetchLimit over file://, got {err:?}"
    );
}

#[test]
fn stalled_server_hits_the_time_limit() {
    let f = Fixture::new();
    let alice = f.key("alice");
    f.commit(Some(&alice), "one", &[("a", "1")]);
    // Accepts connections, never answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut cfg = f.config(&alice.signer_line(""));
    cfg.url = format!("git://127.0.0.1:{port}/upstream");
    cfg.limits = FetchLimits {
        max_duration: Duration::from_secs(1),
        ..FetchLimits::default()
    };
    let start = Instant::now();
    let err = pull(cfg.clone()).unwrap_err();
    let took = start.elapsed();
    drop(listener);
    match err {
        SourceError::FetchLimit { url, limit } => {
            assert_eq!(url, cfg.url);
            assert_eq!(limit, FetchLimitKind::Time(Duration::from_secs(1)));
        }
        other => panic!("expected FetchLimit, got {other:?}"),
    }
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[test]
fn unreachable_remote_is_a_fetch_error() {
    let f = Fixture::new();
    let alice = f.key("alice");
    let mut cfg = f.config(&alice.signer_line(""));
    cfg.url = format!("file://{}/does-not-exist", f.dir.path().display());
    let err = pull(cfg).unwrap_err();
    assert!(matches!(err, SourceError::Fetch { .. }), "got {err:?}");
    assert!(!err.is_refusal());
}

#[test]
fn shallow_remote_over_git_protocol_is_refused() {
    let f = Fixture::new();
    let alice = f.key("alice");
    f.commit(Some(&alice), "one", &[("a", "1")]);
    f.commit(Some(&alice), "two", &[("a", "2")]);
    common::run(
        common::git_cmd(f.dir.path(), f.home())
            .args(["clone", "-q", "--bare", "--depth", "1"])
            .arg(format!("file://{}", f.upstream.display()))
            .arg(f.dir.path().join("shallow")),
    );
    let d = Daemon::start(&f);
    let mut cfg = f.config(&alice.signer_line(""));
    cfg.url = format!("git://127.0.0.1:{}/shallow", d.port);
    // libgit2 does not take the shallow advertisement of a full fetch
    // ("invalid packet line"); over file:// the same repository gives
    // IncompleteHistory (tests/scenarios.rs). Either way: nothing accepted.
    let err = pull(cfg).unwrap_err();
    assert!(
        matches!(
            err,
            SourceError::Fetch { .. } | SourceError::IncompleteHistory { .. }
        ),
        "expected Fetch or IncompleteHistory, got {err:?}"
    );
    assert_eq!(f.recorded_file(), None);
}
