//! A tiny HTTP/1.1 file server for tests and the benchmark: 127.0.0.1 only,
//! GET only, keep-alive, percent-decoded paths, request log, and
//! paths that answer with endless data. Stops when dropped.

#![allow(dead_code)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

pub struct Server {
    addr: String,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    pub requests: Arc<Mutex<Vec<String>>>,
    pub endless: Arc<Mutex<HashSet<String>>>,
}

impl Server {
    /// Serve files under `root`.
    pub fn start(root: &Path) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let addr = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let endless = Arc::new(Mutex::new(HashSet::new()));
        let root = root.to_path_buf();
        let (s, r, e) = (stop.clone(), requests.clone(), endless.clone());
        let handle = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (root, r, e) = (root.clone(), r.clone(), e.clone());
                // One thread per connection: python's urllib3 may hold a
                // connection open while opening another.
                std::thread::spawn(move || {
                    let _ = handle(conn, &root, &r, &e);
                });
            }
        });
        Server {
            addr,
            stop,
            handle: Some(handle),
            requests,
            endless,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    pub fn clear_requests(&self) {
        self.requests.lock().unwrap().clear();
    }

    /// Answer `path` (as requested, e.g. `/metadata/timestamp.json`) with
    /// an endless stream.
    pub fn make_endless(&self, path: &str) {
        self.endless.lock().unwrap().insert(path.to_string());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn handle(
    conn: TcpStream,
    root: &Path,
    requests: &Mutex<Vec<String>>,
    endless: &Mutex<HashSet<String>>,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    // Keep-alive with small responses: no Nagle delays.
    conn.set_nodelay(true)?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut conn = conn;
    // HTTP/1.1 keep-alive: serve requests until the client hangs up.
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut close = false;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
                break;
            }
            if h.to_ascii_lowercase().starts_with("connection:")
                && h.to_ascii_lowercase().contains("close")
            {
                close = true;
            }
        }
        let mut parts = line.split_whitespace();
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
        let path = target.split('?').next().unwrap_or("/").to_string();
        requests.lock().unwrap().push(path.clone());
        if method != "GET" {
            respond(&mut conn, 405, b"")?;
            return Ok(());
        }
        if endless.lock().unwrap().contains(&path) {
            conn.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")?;
            let chunk = vec![b'x'; 1 << 16];
            // Bounded: stop after 1 GiB or when the client hangs up.
            for _ in 0..(1 << 14) {
                conn.write_all(&chunk)?;
            }
            return Ok(());
        }
        let decoded =
            String::from_utf8_lossy(&percent_decode(path.trim_start_matches('/'))).into_owned();
        let rel = PathBuf::from(&decoded);
        let body = if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            None
        } else {
            std::fs::read(root.join(rel)).ok()
        };
        match body {
            Some(body) => respond(&mut conn, 200, &body)?,
            None => respond(&mut conn, 404, b"not found")?,
        }
        if close {
            return Ok(());
        }
    }
}

fn respond(conn: &mut TcpStream, code: u16, body: &[u8]) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        _ => "Error",
    };
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    conn.write_all(&out)?;
    conn.flush()
}
