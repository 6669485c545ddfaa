//! The network transports libgit2 fetches through, registered with
//! `git2::transport::register` in place of its own.
//!
//! - `http://`, `https://`: Git's smart HTTP protocol (stateless RPC) over
//!   `ureq` with rustls — the TLS stack the rest of the agent already uses.
//! - `ssh://`, `git+ssh://`, `ssh+git://` and scp-like `user@host:path`:
//!   the system OpenSSH client (`ssh`), run for each fetch in batch mode
//!   with strict host-key checking, talking to `git-upload-pack`.
//!
//! libgit2 is built without its OpenSSL-based HTTPS stream and without
//! libssh2: with them it initializes OpenSSL in every process that opens a
//! repository (`SSL_CTX_new` and `libssh2_init` in `git_libgit2_init`),
//! about 4 MiB resident in a long-running agent whose fetches mostly never
//! use TLS. `git://` and local paths stay libgit2's own.
//!
//! Fetch settings (timeouts, ssh key and known hosts) are process-global
//! because the transport factories are; [`configure`] sets them under the
//! fetch lock just before each fetch.

use std::{
    io::{self, Read, Write},
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Arc, Mutex, Once},
    time::Duration,
};

use git2::{
    transport::{Service, SmartSubtransport, SmartSubtransportStream, Transport},
    Error, Remote,
};

use crate::SshOptions;

/// What the transports of the next fetch use.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Connect and read timeout (the fetch's time limit).
    pub timeout: Duration,
    pub ssh: SshOptions,
}

static SETTINGS: Mutex<Option<Settings>> = Mutex::new(None);

/// Register cairn's transports (once per process) and set what the next
/// fetch uses. The caller holds the fetch lock.
#[allow(unsafe_code)]
pub(crate) fn configure(settings: Settings) -> Result<(), Error> {
    *SETTINGS.lock().unwrap_or_else(|e| e.into_inner()) = Some(settings);
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        // This runs once per process, under the fetch lock, and every
        // libgit2 network operation in this process is a fetch made by
        // this crate under that lock.
        // SAFETY: so no transport is being created while `register` runs.
        result = unsafe {
            git2::transport::register("http", http_factory)
                .and_then(|()| git2::transport::register("https", http_factory))
                .and_then(|()| git2::transport::register("ssh", ssh_factory))
                .and_then(|()| git2::transport::register("git+ssh", ssh_factory))
                .and_then(|()| git2::transport::register("ssh+git", ssh_factory))
        };
    });
    result
}

fn current() -> Settings {
    SETTINGS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or(Settings {
            timeout: crate::FetchLimits::default().max_duration,
            ssh: SshOptions::default(),
        })
}

fn http_factory(remote: &Remote<'_>) -> Result<Transport, Error> {
    let s = current();
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(s.timeout)
        .timeout_read(s.timeout)
        .timeout_write(s.timeout)
        .try_proxy_from_env(true)
        .user_agent(concat!("git/2.0 (cairn/", env!("CARGO_PKG_VERSION"), ")"))
        .build();
    Transport::smart(
        remote,
        true,
        Http {
            agent,
            base: Arc::new(Mutex::new(None)),
        },
    )
}

fn ssh_factory(remote: &Remote<'_>) -> Result<Transport, Error> {
    Transport::smart(
        remote,
        false,
        Ssh {
            settings: current(),
        },
    )
}

fn fetch_only() -> Error {
    Error::from_str("cairn only fetches: pushing is not supported")
}

// ---------------------------------------------------------------- http(s)

/// Smart HTTP: `GET …/info/refs?service=git-upload-pack`, then one
/// `POST …/git-upload-pack` per negotiation round.
struct Http {
    agent: ureq::Agent,
    /// The repository URL after redirects of the ref advertisement (git
    /// follows them for the POSTs too).
    base: Arc<Mutex<Option<String>>>,
}

const ADVERTISEMENT: &str = "application/x-git-upload-pack-advertisement";
const RESULT: &str = "application/x-git-upload-pack-result";
const REQUEST: &str = "application/x-git-upload-pack-request";
const INFO_REFS: &str = "/info/refs?service=git-upload-pack";

impl SmartSubtransport for Http {
    fn action(
        &self,
        url: &str,
        action: Service,
    ) -> Result<Box<dyn SmartSubtransportStream>, Error> {
        let url = url.trim_end_matches('/');
        match action {
            Service::UploadPackLs => {
                let resp = http_call(
                    self.agent
                        .get(&format!("{url}{INFO_REFS}"))
                        .set("Accept", ADVERTISEMENT),
                    None,
                    ADVERTISEMENT,
                    "the ref advertisement",
                )
                .map_err(|e| Error::from_str(&e.to_string()))?;
                let base = resp
                    .get_url()
                    .strip_suffix(INFO_REFS)
                    .unwrap_or(url)
                    .to_string();
                *self.base.lock().unwrap_or_else(|e| e.into_inner()) = Some(base);
                Ok(Box::new(ResponseStream(resp.into_reader())))
            }
            Service::UploadPack => {
                let base = self
                    .base
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
                    .unwrap_or_else(|| url.to_string());
                Ok(Box::new(PostStream {
                    request: Some(
                        self.agent
                            .post(&format!("{base}/git-upload-pack"))
                            .set("Content-Type", REQUEST)
                            .set("Accept", RESULT),
                    ),
                    body: Vec::new(),
                    response: None,
                }))
            }
            Service::ReceivePackLs | Service::ReceivePack => Err(fetch_only()),
        }
    }

    fn close(&self) -> Result<(), Error> {
        Ok(())
    }
}

/// Send a request and check status and content type. Messages never carry
/// the URL: it may hold credentials (`https://user:token@host/…`), and the
/// caller's error names the remote already.
fn http_call(
    request: ureq::Request,
    body: Option<&[u8]>,
    content_type: &str,
    what: &str,
) -> Result<ureq::Response, io::Error> {
    let sent = match body {
        Some(b) => request.send_bytes(b),
        None => request.call(),
    };
    let resp = match sent {
        Ok(r) => r,
        Err(ureq::Error::Status(code @ (401 | 403), _)) => {
            return Err(io::Error::other(format!(
                "HTTP {code} for {what}: the server wants credentials; put a user and token in the URL (https://USER:TOKEN@host/…) or make the repository readable anonymously"
            )))
        }
        Err(ureq::Error::Status(404, _)) => {
            return Err(io::Error::other(format!(
                "HTTP 404 for {what}: no Git repository at this URL"
            )))
        }
        Err(ureq::Error::Status(code, r)) => {
            return Err(io::Error::other(format!(
                "HTTP {code} {} for {what}",
                r.status_text()
            )))
        }
        // (a timeout is told by the fetch's elapsed time, not by its kind)
        Err(ureq::Error::Transport(t)) => {
            let source = std::error::Error::source(&t)
                .map(|s| format!(": {s}"))
                .unwrap_or_default();
            return Err(io::Error::other(format!(
                "{what}: {}{}{source}",
                t.kind(),
                t.message().map(|m| format!(" ({m})")).unwrap_or_default()
            )));
        }
    };
    if resp.content_type() != content_type {
        return Err(io::Error::other(format!(
            "{what}: the server answered with content type {:?}, not {content_type:?} (not a smart Git HTTP server; the dumb HTTP protocol is not supported)",
            resp.content_type()
        )));
    }
    Ok(resp)
}

/// The ref advertisement: read-only.
struct ResponseStream(Box<dyn Read + Send + Sync + 'static>);

impl Read for ResponseStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for ResponseStream {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::other(
            "the ref advertisement takes no request body",
        ))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One negotiation round: libgit2 writes the request body, then reads;
/// the POST is sent at the first read.
struct PostStream {
    request: Option<ureq::Request>,
    body: Vec<u8>,
    response: Option<Box<dyn Read + Send + Sync + 'static>>,
}

impl Read for PostStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.response.is_none() {
            let request = self
                .request
                .take()
                .ok_or_else(|| io::Error::other("the upload-pack request failed before"))?;
            let body = std::mem::take(&mut self.body);
            let resp = http_call(request, Some(&body), RESULT, "the upload-pack request")?;
            self.response = Some(resp.into_reader());
        }
        match &mut self.response {
            Some(r) => r.read(buf),
            None => Ok(0),
        }
    }
}

impl Write for PostStream {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.response.is_some() {
            return Err(io::Error::other(
                "upload-pack request written after its response was read",
            ));
        }
        self.body.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

// -------------------------------------------------------------------- ssh

/// An ssh remote: `ssh://[user@]host[:port]/path` or scp-like
/// `[user@]host:path`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SshUrl {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    pub path: String,
}

impl SshUrl {
    pub(crate) fn parse(url: &str) -> Result<SshUrl, String> {
        let scheme_rest = ["ssh://", "git+ssh://", "ssh+git://"]
            .iter()
            .find_map(|p| url.strip_prefix(p));
        let (authority, path) = match scheme_rest {
            Some(rest) => {
                let (auth, path) = rest
                    .split_once('/')
                    .ok_or_else(|| format!("{url}: no repository path after the host"))?;
                // ssh://host/~user/repo is relative to a home directory
                let path = if path.starts_with('~') {
                    path.to_string()
                } else {
                    format!("/{path}")
                };
                (auth.to_string(), path)
            }
            None => {
                // scp-like: the first ':' outside [..] separates the path
                let split = if url.starts_with('[') || url.contains("@[") {
                    url.find("]:").map(|i| i + 1)
                } else {
                    url.find(':')
                };
                let i = split.ok_or_else(|| format!("{url}: not an ssh URL"))?;
                (url[..i].to_string(), url[i + 1..].to_string())
            }
        };
        let (user, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u.to_string()), h.to_string()),
            None => (None, authority),
        };
        let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
            let (h, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("{url}: unclosed '[' in the host"))?;
            (h.to_string(), after.strip_prefix(':'))
        } else if scheme_rest.is_some() {
            match hostport.split_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.clone(), None),
            }
        } else {
            (hostport.clone(), None)
        };
        let port = match port {
            Some(p) if !p.is_empty() => Some(
                p.parse::<u16>()
                    .map_err(|_| format!("{url}: port {p:?} is not a number"))?,
            ),
            _ => None,
        };
        // A host or user that starts with '-' would be read by ssh as an
        // option (CVE-2017-1000117).
        if host.is_empty() || host.starts_with('-') {
            return Err(format!("{url}: bad ssh host {host:?}"));
        }
        if user
            .as_deref()
            .is_some_and(|u| u.is_empty() || u.starts_with('-'))
        {
            return Err(format!("{url}: bad ssh user"));
        }
        if path.is_empty() {
            return Err(format!("{url}: no repository path"));
        }
        Ok(SshUrl {
            user,
            host,
            port,
            path,
        })
    }

    /// The ssh command line (without the program) that runs `service` for
    /// this repository.
    pub(crate) fn args(&self, service: &str, ssh: &SshOptions, timeout: Duration) -> Vec<String> {
        let secs = timeout.as_secs().max(1);
        let mut a: Vec<String> = vec![
            "-T".into(),
            "-x".into(),
            "-a".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            format!("ConnectTimeout={secs}"),
            // a stalled server is given up on after about the time limit
            "-o".into(),
            "ServerAliveInterval=15".into(),
            "-o".into(),
            format!("ServerAliveCountMax={}", secs.div_ceil(15).max(1)),
        ];
        if let Some(kh) = &ssh.known_hosts {
            a.push("-o".into());
            a.push(format!("UserKnownHostsFile={}", kh.display()));
            a.push("-o".into());
            a.push("GlobalKnownHostsFile=/dev/null".into());
        }
        if let Some(key) = &ssh.private_key {
            a.push("-i".into());
            a.push(key.display().to_string());
            a.push("-o".into());
            a.push("IdentitiesOnly=yes".into());
        }
        if let Some(p) = self.port {
            a.push("-p".into());
            a.push(p.to_string());
        }
        a.push("-l".into());
        a.push(self.user.clone().unwrap_or_else(|| "git".into()));
        a.push(self.host.clone());
        a.push(format!("{service} {}", shell_quote(&self.path)));
        a
    }
}

/// Quote for the remote shell the way git does: `'…'`, with `'` as `'\''`.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

struct Ssh {
    settings: Settings,
}

impl SmartSubtransport for Ssh {
    fn action(
        &self,
        url: &str,
        action: Service,
    ) -> Result<Box<dyn SmartSubtransportStream>, Error> {
        match action {
            // stateful: git2 hands the same stream to the UploadPack step
            Service::UploadPackLs | Service::UploadPack => {
                let remote = SshUrl::parse(url).map_err(|e| Error::from_str(&e))?;
                let program = self
                    .settings
                    .ssh
                    .command
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("ssh"));
                let args =
                    remote.args("git-upload-pack", &self.settings.ssh, self.settings.timeout);
                log::debug!("running {} {}", program.display(), args.join(" "));
                let mut child = Command::new(&program)
                    .args(&args)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .map_err(|e| {
                        Error::from_str(&format!(
                            "starting the ssh client {}: {e} (the image needs OpenSSH's `ssh`)",
                            program.display()
                        ))
                    })?;
                let stdin = child.stdin.take();
                // stdout is read on a thread too, so a server that stops
                // sending is given up on after the fetch's time limit
                let (tx, stdout) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(4);
                if let Some(mut out) = child.stdout.take() {
                    std::thread::spawn(move || loop {
                        let mut buf = vec![0u8; 64 * 1024];
                        match out.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => {
                                buf.truncate(n);
                                if tx.send(Ok(buf)).is_err() {
                                    break;
                                }
                            }
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => {
                                let _ = tx.send(Err(e));
                                break;
                            }
                        }
                    });
                }
                // stderr is drained on a thread (ssh must never block on
                // it) and kept for the error message, last 4 KiB.
                let stderr = Arc::new(Mutex::new(Vec::new()));
                let mut stderr_thread = None;
                if let Some(mut e) = child.stderr.take() {
                    let sink = Arc::clone(&stderr);
                    stderr_thread = Some(std::thread::spawn(move || {
                        let mut buf = [0u8; 1024];
                        while let Ok(n) = e.read(&mut buf) {
                            if n == 0 {
                                break;
                            }
                            let mut s = sink.lock().unwrap_or_else(|e| e.into_inner());
                            s.extend_from_slice(&buf[..n]);
                            let over = s.len().saturating_sub(4096);
                            s.drain(..over);
                        }
                    }));
                }
                Ok(Box::new(SshStream {
                    child,
                    stdin,
                    stdout: Some(stdout),
                    pending: Vec::new(),
                    taken: 0,
                    timeout: self.settings.timeout,
                    stderr,
                    stderr_thread,
                    host: remote.host,
                }))
            }
            Service::ReceivePackLs | Service::ReceivePack => Err(fetch_only()),
        }
    }

    fn close(&self) -> Result<(), Error> {
        Ok(())
    }
}

struct SshStream {
    child: Child,
    stdin: Option<ChildStdin>,
    /// What ssh wrote to stdout, in chunks; closed at its end.
    stdout: Option<std::sync::mpsc::Receiver<io::Result<Vec<u8>>>>,
    /// The chunk being read, and how much of it was.
    pending: Vec<u8>,
    taken: usize,
    /// How long a read waits for data before ssh is killed.
    timeout: Duration,
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_thread: Option<std::thread::JoinHandle<()>>,
    host: String,
}

impl SshStream {
    /// After stdout ended early: why (ssh's exit status and its stderr).
    fn failure(&mut self) -> Option<io::Error> {
        self.stdin = None;
        let status = self.child.wait().ok()?;
        if status.success() {
            return None;
        }
        // what ssh wrote before it exited: its stderr ends with it (unless
        // a process it started still holds the pipe; then up to 1 s)
        if let Some(t) = self.stderr_thread.take() {
            let deadline = std::time::Instant::now() + Duration::from_secs(1);
            while !t.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let text = String::from_utf8_lossy(&self.stderr.lock().unwrap_or_else(|e| e.into_inner()))
            .trim()
            .to_string();
        Some(io::Error::other(format!(
            "ssh to {} failed ({status}){}",
            self.host,
            if text.is_empty() {
                String::new()
            } else {
                format!(": {text}")
            }
        )))
    }
}

impl Read for SshStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.taken == self.pending.len() {
            let Some(rx) = &self.stdout else { return Ok(0) };
            match rx.recv_timeout(self.timeout) {
                Ok(Ok(chunk)) => {
                    self.pending = chunk;
                    self.taken = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "ssh to {}: no data for {:?}; gave up",
                            self.host, self.timeout
                        ),
                    ));
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    // end of ssh's output
                    self.stdout = None;
                    return match self.failure() {
                        Some(e) => Err(e),
                        None => Ok(0),
                    };
                }
            }
        }
        let n = buf.len().min(self.pending.len() - self.taken);
        buf[..n].copy_from_slice(&self.pending[self.taken..self.taken + n]);
        self.taken += n;
        Ok(n)
    }
}

impl Write for SshStream {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let r = match &mut self.stdin {
            Some(i) => i.write(data),
            None => Err(io::ErrorKind::BrokenPipe.into()),
        };
        match r {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(self.failure().unwrap_or(e)),
            r => r,
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.stdin {
            Some(i) => i.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for SshStream {
    fn drop(&mut self) {
        self.stdin = None;
        self.stdout = None;
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_urls_parse_like_git() {
        let u = SshUrl::parse("ssh://git@example.com:2222/fleet/repo.git").unwrap();
        assert_eq!(
            u,
            SshUrl {
                user: Some("git".into()),
                host: "example.com".into(),
                port: Some(2222),
                path: "/fleet/repo.git".into()
            }
        );
        let u = SshUrl::parse("deploy@example.com:fleet.git").unwrap();
        assert_eq!(u.user.as_deref(), Some("deploy"));
        assert_eq!((u.host.as_str(), u.port), ("example.com", None));
        assert_eq!(u.path, "fleet.git");
        let u = SshUrl::parse("ssh://[::1]:22/~alice/r").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", Some(22)));
        assert_eq!(u.path, "~alice/r");
        let u = SshUrl::parse("git+ssh://h/r").unwrap();
        assert_eq!(
            (u.user, u.host.as_str(), u.path.as_str()),
            (None, "h", "/r")
        );
        let u = SshUrl::parse("[fe80::1]:r.git").unwrap();
        assert_eq!((u.host.as_str(), u.path.as_str()), ("fe80::1", "r.git"));
    }

    #[test]
    fn ssh_urls_that_would_inject_options_are_refused() {
        for bad in [
            "ssh://-oProxyCommand=touch%20x/r",
            "-oProxyCommand=x:r",
            "ssh://-u@h/r",
            "ssh://h:port/r",
            "ssh://h",
            "h:",
        ] {
            assert!(SshUrl::parse(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn ssh_command_line_is_strict_and_quotes_the_path() {
        let u = SshUrl::parse("ssh://h:2200/it's.git").unwrap();
        let opts = SshOptions {
            private_key: Some("/k".into()),
            known_hosts: Some("/kh".into()),
            command: None,
        };
        let a = u.args("git-upload-pack", &opts, Duration::from_secs(60));
        let joined = a.join(" ");
        for want in [
            "BatchMode=yes",
            "StrictHostKeyChecking=yes",
            "UserKnownHostsFile=/kh",
            "GlobalKnownHostsFile=/dev/null",
            "-i /k",
            "IdentitiesOnly=yes",
            "-p 2200",
            "-l git",
            "ConnectTimeout=60",
            "ServerAliveCountMax=4",
        ] {
            assert!(joined.contains(want), "{want} missing from {joined}");
        }
        // host, then the remote command as one argument
        assert_eq!(a[a.len() - 2], "h");
        assert_eq!(a[a.len() - 1], r"git-upload-pack '/it'\''s.git'");
    }

    /// sshd on loopback with a throwaway host key; killed on drop.
    struct Sshd {
        child: Child,
        port: u16,
        dir: tempfile::TempDir,
    }

    impl Drop for Sshd {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn keygen(path: &std::path::Path) -> String {
        let st = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "cairn-test", "-f"])
            .arg(path)
            .status()
            .expect("ssh-keygen (openssh-client)");
        assert!(st.success(), "ssh-keygen: {st}");
        std::fs::read_to_string(path.with_extension("pub")).unwrap()
    }

    fn start_sshd() -> Sshd {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        keygen(&d.join("host_key"));
        let client_pub = keygen(&d.join("client_key"));
        std::fs::write(d.join("authorized_keys"), client_pub).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        std::fs::write(
            d.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\nPidFile {d}/sshd.pid\nStrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n",
                d = d.display()
            ),
        )
        .unwrap();
        // sshd's privilege-separation directory
        std::fs::create_dir_all("/run/sshd").unwrap();
        let log = std::fs::File::create(d.join("sshd.log")).unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("/usr/sbin/sshd (openssh-server, installed by install-deps.sh)");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "sshd did not listen on {port}: {}",
                std::fs::read_to_string(d.join("sshd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Sshd { child, port, dir }
    }

    /// A bare repository with one commit on `main`.
    fn upstream(path: &std::path::Path) -> git2::Oid {
        let repo = git2::Repository::init_bare(path).unwrap();
        let sig = git2::Signature::now("t", "t@example.com").unwrap();
        let blob = repo.blob(b"hello\n").unwrap();
        let mut tb = repo.treebuilder(None).unwrap();
        tb.insert("a", blob, 0o100644).unwrap();
        let tree = repo.find_tree(tb.write().unwrap()).unwrap();
        repo.commit(Some("refs/heads/main"), &sig, &sig, "one", &tree, &[])
            .unwrap()
    }

    fn fetch(url: &str, ssh: SshOptions, into: &std::path::Path) -> Result<git2::Oid, Error> {
        configure(Settings {
            timeout: Duration::from_secs(60),
            ssh,
        })?;
        let repo = git2::Repository::init_bare(into)?;
        repo.remote_anonymous(url)?
            .fetch(&["+refs/heads/main:refs/fetched"], None, None)?;
        let id = repo.refname_to_id("refs/fetched")?;
        Ok(id)
    }

    #[test]
    #[ignore = "root tier: runs OpenSSH's sshd on loopback (as root; openssh-server from install-deps.sh)"]
    fn root_tier_fetch_over_real_openssh_with_pinned_host_key() {
        let sshd = start_sshd();
        let d = sshd.dir.path();
        let tip = upstream(&d.join("upstream.git"));
        let host_pub = std::fs::read_to_string(d.join("host_key.pub")).unwrap();
        let known = d.join("known_hosts");
        std::fs::write(&known, format!("[127.0.0.1]:{} {host_pub}", sshd.port)).unwrap();
        let opts = SshOptions {
            private_key: Some(d.join("client_key")),
            known_hosts: Some(known.clone()),
            command: None,
        };
        let url = format!(
            "ssh://root@127.0.0.1:{}{}/upstream.git",
            sshd.port,
            d.display()
        );
        let got = fetch(&url, opts.clone(), &d.join("local-1.git")).unwrap_or_else(|e| {
            panic!(
                "fetch over ssh: {e}\nsshd log:\n{}",
                std::fs::read_to_string(d.join("sshd.log")).unwrap_or_default()
            )
        });
        assert_eq!(got, tip);

        // a host key that is not the pinned one: ssh refuses, and says so
        let other = keygen(&d.join("other_key"));
        std::fs::write(&known, format!("[127.0.0.1]:{} {other}", sshd.port)).unwrap();
        let err = fetch(&url, opts.clone(), &d.join("local-2.git")).unwrap_err();
        assert!(
            err.message().contains("Host key verification failed"),
            "{}",
            err.message()
        );

        // the right host, a key the server does not know: refused
        std::fs::write(&known, format!("[127.0.0.1]:{} {host_pub}", sshd.port)).unwrap();
        let wrong_client = SshOptions {
            private_key: Some(d.join("other_key")),
            ..opts
        };
        let err = fetch(&url, wrong_client, &d.join("local-3.git")).unwrap_err();
        assert!(
            err.message().contains("Permission denied"),
            "{}",
            err.message()
        );
    }
}
