//! The host-side servers a PXE-booted node talks to: HTTP for the boot
//! artifacts and a real `git daemon` for the fleet repository. Both listen on
//! 127.0.0.1 only (QEMU's user network maps the guest's 10.0.2.2 there) and
//! stop when dropped.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A static file server for one directory.
pub struct HttpServer {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    pub port: u16,
}

impl HttpServer {
    pub fn start(root: &Path) -> Result<HttpServer> {
        let server = Arc::new(
            tiny_http::Server::http("127.0.0.1:0")
                .map_err(|e| anyhow::anyhow!("http server: {e}"))?,
        );
        let port = server.server_addr().to_ip().context("ip listener")?.port();
        let root: PathBuf = root.to_path_buf();
        let s = server.clone();
        let thread = std::thread::spawn(move || {
            for req in s.incoming_requests() {
                let root = root.clone();
                std::thread::spawn(move || serve(&root, req));
            }
        });
        Ok(HttpServer {
            server,
            thread: Some(thread),
            port,
        })
    }
}

fn serve(root: &Path, req: tiny_http::Request) {
    let rel = req
        .url()
        .split('?')
        .next()
        .unwrap_or("")
        .trim_start_matches('/')
        .to_string();
    let ok_name = !rel.is_empty() && !rel.split('/').any(|c| c == ".." || c.is_empty());
    let path = root.join(&rel);
    let resp = if ok_name && path.is_file() {
        match std::fs::File::open(&path) {
            Ok(f) => {
                log::debug!("http: serving {rel}");
                // A Content-Length response, never chunked: iPXE under TCG
                // reads chunked bodies about 50x slower (measured).
                req.respond(tiny_http::Response::from_file(f).with_chunked_threshold(usize::MAX))
            }
            Err(_) => req.respond(tiny_http::Response::empty(500)),
        }
    } else {
        log::warn!("http: 404 {rel}");
        req.respond(tiny_http::Response::empty(404))
    };
    let _ = resp;
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `git daemon` serving every repository under `base` (push enabled).
pub struct GitDaemon {
    child: Child,
    pub port: u16,
}

impl GitDaemon {
    pub fn start(base: &Path, log: &Path) -> Result<GitDaemon> {
        let port = free_port()?;
        let logf = std::fs::File::create(log)?;
        let child = Command::new("git")
            .arg("daemon")
            .arg("--reuseaddr")
            .arg("--export-all")
            .arg("--enable=receive-pack")
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .arg(base)
            // `git daemon` forks `git-daemon`: kill the whole group on drop
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf)
            .spawn()
            .context("starting git daemon (is git installed?)")?;
        crate::wait_until("git daemon to listen", Duration::from_secs(30), || {
            Ok(std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .map(|_| ()))
        })?;
        Ok(GitDaemon { child, port })
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn get(port: u16, path: &str) -> String {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn serves_files_and_refuses_traversal() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("boot.ipxe"), "#!ipxe\n").unwrap();
        let srv = HttpServer::start(d.path()).unwrap();
        let ok = get(srv.port, "/boot.ipxe");
        assert!(
            ok.starts_with("HTTP/1.0 200") || ok.starts_with("HTTP/1.1 200"),
            "{ok}"
        );
        assert!(ok.contains("Content-Length: 7"), "{ok}");
        assert!(ok.ends_with("#!ipxe\n"));
        assert!(get(srv.port, "/../etc/passwd").contains(" 404"));
        assert!(get(srv.port, "/missing").contains(" 404"));
    }
}
#[cfg(test)]
mod daemon_tests {
    use super::*;

    #[test]
    fn git_daemon_and_its_children_stop_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let d = GitDaemon::start(dir.path(), &dir.path().join("log")).unwrap();
        let port = d.port;
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        drop(d);
        // the forked git-daemon held the socket: it must be gone too
        let closed = (0..50).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
        });
        assert!(closed, "port {port} still accepts connections after drop");
    }
}
