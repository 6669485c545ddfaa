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

/// A fetch from `url` with a 1 s time limit gives up with a time
/// `FetchLimit` naming the URL, well before 10 s.
fn gives_up_after_one_second(f: Fixture, url: String, ssh: Option<std::path::PathBuf>) {
    let alice = f.key("alice");
    f.commit(Some(&alice), "one", &[("a", "1")]);
    let mut cfg = f.config(&alice.signer_line(""));
    cfg.url = url;
    cfg.ssh.command = ssh;
    cfg.limits = FetchLimits {
        max_duration: Duration::from_secs(1),
        ..FetchLimits::default()
    };
    let start = Instant::now();
    let err = pull(cfg.clone()).unwrap_err();
    let took = start.elapsed();
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
fn stalled_server_hits_the_time_limit() {
    // Accepts connections, never answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let url = |scheme: &str| format!("{scheme}://127.0.0.1:{port}/upstream");
    gives_up_after_one_second(Fixture::new(), url("git"), None);
    // the same silent server behind smart HTTP
    gives_up_after_one_second(Fixture::new(), url("http"), None);
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

/// Git's smart HTTP served by `git http-backend` (CGI) behind a small
/// loopback HTTP/1.1 server; with `token`, requests without
/// `Authorization: Basic base64(user:token)` get 401. Runs until dropped.
struct HttpBackend {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl HttpBackend {
    fn start(f: &Fixture, auth: Option<&str>) -> HttpBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let root = f.dir.path().to_path_buf();
        let home = f.home().to_path_buf();
        let auth = auth.map(|a| {
            use base64::Engine as _;
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(a)
            )
        });
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                // a broken connection is the client's business, never the server's end
                let _ = serve_cgi(conn, &root, &home, auth.as_deref());
            }
        });
        HttpBackend { port, stop }
    }
}

/// Answer one request on `conn` with `git http-backend` (CGI).
fn serve_cgi(
    mut conn: std::net::TcpStream,
    root: &std::path::Path,
    home: &std::path::Path,
    auth: Option<&str>,
) -> std::io::Result<()> {
    use std::io::{self, BufRead, BufReader, Read, Write};
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end().to_string();
        if h.is_empty() {
            break;
        }
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| io::Error::other("bad header"))?;
        headers.push((k.to_ascii_lowercase(), v.trim().to_string()));
    }
    let header = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let mut body = vec![0u8; header("content-length").map_or(0, |l| l.parse().unwrap_or(0))];
    reader.read_exact(&mut body)?;
    if auth.is_some() && header("authorization").as_deref() != auth {
        return conn.write_all(
                b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut cgi = common::git_cmd(root, home)
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", &method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("CONTENT_TYPE", header("content-type").unwrap_or_default())
        .env("CONTENT_LENGTH", body.len().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    if let Some(mut stdin) = cgi.stdin.take() {
        stdin.write_all(&body)?;
    }
    let out = cgi.wait_with_output()?.stdout;
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| io::Error::other("no CGI header end"))?;
    let cgi_headers = String::from_utf8_lossy(&out[..split]).to_string();
    let status = cgi_headers
        .lines()
        .find_map(|l| l.strip_prefix("Status: "))
        .unwrap_or("200 OK")
        .to_string();
    let payload = &out[split + 4..];
    let mut resp = format!("HTTP/1.1 {status}\r\n");
    for l in cgi_headers.lines().filter(|l| !l.starts_with("Status: ")) {
        resp.push_str(l);
        resp.push_str("\r\n");
    }
    resp.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        payload.len()
    ));
    conn.write_all(resp.as_bytes())?;
    conn.write_all(payload)
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // wake the accept loop
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

#[test]
fn pull_over_smart_http() {
    let f = Fixture::new();
    let alice = f.key("alice");
    let one = f.commit(Some(&alice), "one", &[("a", "1")]);
    let server = HttpBackend::start(&f, None);
    let mut cfg = f.config(&alice.signer_line(""));
    cfg.url = format!("http://127.0.0.1:{}/upstream", server.port);
    let v = pull(cfg.clone()).unwrap();
    assert_eq!(v.id(), id(&one));
    // a new commit arrives over a second negotiation (the cache has `one`)
    let two = f.commit(Some(&alice), "two", &[("a", "2")]);
    let v = pull(cfg.clone()).unwrap();
    assert_eq!(v.id(), id(&two));
    assert_eq!(v.newly_verified(), 1);
    // unchanged poll
    let v = pull(cfg.clone()).unwrap();
    assert_eq!(v.newly_verified(), 0);
    // a path with no repository: a clear 404
    cfg.url = format!("http://127.0.0.1:{}/nothing-here", server.port);
    cfg.state_dir = f.dir.path().join("state-404");
    let err = pull(cfg).unwrap_err().to_string();
    assert!(
        err.contains("HTTP 404") && err.contains("no Git repository"),
        "{err}"
    );
}

#[test]
fn http_credentials_come_from_the_url_and_are_never_shown() {
    let f = Fixture::new();
    let alice = f.key("alice");
    let tip = f.commit(Some(&alice), "one", &[("a", "1")]);
    let server = HttpBackend::start(&f, Some("fleet:s3cret-token"));
    let mut cfg = f.config(&alice.signer_line(""));
    cfg.url = format!(
        "http://fleet:s3cret-token@127.0.0.1:{}/upstream",
        server.port
    );
    assert_eq!(pull(cfg.clone()).unwrap().id(), id(&tip));
    // a wrong token: refused, with advice, and the token is not printed
    cfg.url = format!(
        "http://fleet:wrong-token@127.0.0.1:{}/upstream",
        server.port
    );
    cfg.state_dir = f.dir.path().join("state-wrong");
    let err = pull(cfg).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("HTTP 401") && text.contains("USER:TOKEN"),
        "{text}"
    );
    assert!(!text.contains("wrong-token"), "the token leaked: {text}");
    assert!(text.contains("fleet:***@"), "{text}");
}

/// A stand-in for OpenSSH's `ssh`: logs its arguments, then runs the
/// remote command locally (as sshd would on the server).
fn fake_ssh(f: &Fixture, body: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt as _;
    let log = f.dir.path().join("ssh-args");
    let script = f.dir.path().join("fake-ssh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{}'\n{body}\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script, log)
}

#[test]
fn pull_over_ssh_runs_openssh_strictly() {
    let f = Fixture::new();
    let alice = f.key("alice");
    let tip = f.commit(Some(&alice), "one", &[("a", "1")]);
    // the last argument is the remote command
    let (ssh, log) = fake_ssh(&f, "for last; do :; done\nexec sh -c \"$last\"");
    let mut cfg = f.config(&alice.signer_line(""));
    cfg.url = format!("ssh://deploy@git.example:2222{}", f.upstream.display());
    cfg.ssh.command = Some(ssh);
    cfg.ssh.private_key = Some("/etc/cairn/deploy-key".into());
    cfg.ssh.known_hosts = Some("/etc/cairn/known_hosts".into());
    let v = pull(cfg.clone()).unwrap();
    assert_eq!(v.id(), id(&tip));
    let args: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let pairs = args
        .windows(2)
        .map(|w| (w[0].as_str(), w[1].as_str()))
        .collect::<Vec<_>>();
    for want in [
        ("-o", "BatchMode=yes"),
        ("-o", "StrictHostKeyChecking=yes"),
        ("-o", "UserKnownHostsFile=/etc/cairn/known_hosts"),
        ("-i", "/etc/cairn/deploy-key"),
        ("-p", "2222"),
        ("-l", "deploy"),
    ] {
        assert!(pairs.contains(&want), "{want:?} not in {args:?}");
    }
    assert_eq!(
        &args[args.len() - 2..],
        [
            "git.example".to_string(),
            format!("git-upload-pack '{}'", f.upstream.display())
        ]
    );
    // scp-like URL, default user `git`, unchanged poll
    cfg.url = format!("git.example:{}", f.upstream.display());
    assert_eq!(pull(cfg).unwrap().newly_verified(), 0);
    let args = std::fs::read_to_string(&log).unwrap();
    assert!(args.contains("-l\ngit\ngit.example\n"), "{args}");
}

#[test]
fn ssh_failure_reports_what_ssh_said() {
    let f = Fixture::new();
    let alice = f.key("alice");
    f.commit(Some(&alice), "one", &[("a", "1")]);
    let (ssh, _) = fake_ssh(&f, "echo 'Host key verification failed.' >&2\nexit 255");
    let mut cfg = f.config(&alice.signer_line(""));
    cfg.url = "ssh://git.example/fleet.git".into();
    cfg.ssh.command = Some(ssh);
    let err = pull(cfg).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, SourceError::Fetch { .. }), "{err:?}");
    assert!(
        text.contains("ssh to git.example failed") && text.contains("Host key verification failed"),
        "{text}"
    );
    assert_eq!(f.recorded_file(), None);
}

#[test]
fn stalled_ssh_hits_the_time_limit() {
    let f = Fixture::new();
    // connects, then never says anything
    let (ssh, _) = fake_ssh(&f, "exec sleep 600");
    gives_up_after_one_second(f, "ssh://git.example/fleet.git".into(), Some(ssh));
}
