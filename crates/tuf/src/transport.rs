//! How metadata and targets are fetched.
//!
//! [`Transport`] opens a URL as a byte stream; the updater reads it through
//! a cap (metadata limits, a target's signed length) and hashes targets while
//! streaming, so no implementation needs to know about TUF.
//!
//! - [`FilesystemTransport`]: `file://` URLs and plain paths (stage-1 init,
//!   where metadata and the rootfs arrive as initrd files).
//! - [`HttpTransport`]: blocking HTTP(S) with `ureq` + rustls (the agent,
//!   from a `spawn_blocking` task, and the conformance CLI); it also serves
//!   `file://` URLs.

use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
#[cfg(feature = "tools")]
use std::time::Duration;

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The file does not exist (HTTP 403/404, or no such local file). For
    /// `N.root.json` this ends the root update loop instead of failing it.
    #[error("not found")]
    NotFound,
    /// Any other HTTP status.
    #[error("HTTP status {0}")]
    Status(u16),
    /// Connection or read error.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The URL scheme is not handled by this transport.
    #[error("unsupported URL (this transport handles {0})")]
    UnsupportedUrl(&'static str),
}

/// A source of bytes by URL. Implementations must not rewrite the URL's
/// path (role names arrive already percent-encoded).
pub trait Transport {
    /// Open `url` for reading.
    fn fetch(&self, url: &str) -> Result<Box<dyn Read + Send + '_>, TransportError>;
}

impl<T: Transport + ?Sized> Transport for &T {
    fn fetch(&self, url: &str) -> Result<Box<dyn Read + Send + '_>, TransportError> {
        (**self).fetch(url)
    }
}

impl<T: Transport + ?Sized> Transport for Box<T> {
    fn fetch(&self, url: &str) -> Result<Box<dyn Read + Send + '_>, TransportError> {
        (**self).fetch(url)
    }
}

/// Reads `file://` URLs (percent-decoded, as a web server would) and plain
/// absolute or relative paths.
#[derive(Debug, Clone, Copy, Default)]
pub struct FilesystemTransport;

impl FilesystemTransport {
    /// The local path a `file://` URL or plain path names.
    pub fn path_for(url: &str) -> Result<PathBuf, TransportError> {
        if let Some(rest) = url.strip_prefix("file://") {
            // file:///abs/path or file://localhost/abs/path
            let path = rest.strip_prefix("localhost").unwrap_or(rest);
            if !path.starts_with('/') {
                return Err(TransportError::UnsupportedUrl("file:///absolute/paths"));
            }
            Ok(PathBuf::from(percent_decode(path)))
        } else if url.contains("://") {
            Err(TransportError::UnsupportedUrl(
                "file:// URLs and local paths",
            ))
        } else {
            Ok(PathBuf::from(percent_decode(url)))
        }
    }
}

impl Transport for FilesystemTransport {
    fn fetch(&self, url: &str) -> Result<Box<dyn Read + Send + '_>, TransportError> {
        let path = Self::path_for(url)?;
        match File::open(&path) {
            Ok(f) => Ok(Box::new(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(TransportError::NotFound),
            Err(e) => Err(TransportError::Io(e)),
        }
    }
}

#[cfg(feature = "tools")]
pub use http::HttpTransport;

#[cfg(feature = "tools")]
mod http {
    use super::*;

    /// Blocking HTTP(S) transport (ureq, rustls, webpki roots). `file://` URLs
    /// are read from disk. Redirects are followed; reads time out after 30 s
    /// without data (slow-retrieval protection beyond the byte caps).
    pub struct HttpTransport {
        agent: ureq::Agent,
    }

    impl Default for HttpTransport {
        fn default() -> Self {
            Self::new()
        }
    }

    impl std::fmt::Debug for HttpTransport {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("HttpTransport")
        }
    }

    impl HttpTransport {
        /// An agent with a 10 s connect timeout and a 30 s read timeout.
        pub fn new() -> HttpTransport {
            HttpTransport {
                agent: ureq::AgentBuilder::new()
                    .timeout_connect(Duration::from_secs(10))
                    .timeout_read(Duration::from_secs(30))
                    .user_agent(concat!("cairn-tuf/", env!("CARGO_PKG_VERSION")))
                    .build(),
            }
        }
    }

    impl Transport for HttpTransport {
        fn fetch(&self, url: &str) -> Result<Box<dyn Read + Send + '_>, TransportError> {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return FilesystemTransport.fetch(url);
            }
            match self.agent.get(url).call() {
                Ok(resp) => Ok(Box::new(resp.into_reader())),
                Err(ureq::Error::Status(403 | 404, _)) => Err(TransportError::NotFound),
                Err(ureq::Error::Status(code, _)) => Err(TransportError::Status(code)),
                Err(ureq::Error::Transport(t)) => {
                    Err(TransportError::Io(io::Error::other(t.to_string())))
                }
            }
        }
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex_val(b[i + 1]), hex_val(b[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Python's `urllib.parse.quote(s, safe="")`: percent-encode every byte
/// except ASCII letters, digits and `_.-~`. Used for role names in URLs and
/// for local file names of delegated metadata and targets.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_like_python() {
        assert_eq!(quote("?"), "%3F");
        assert_eq!(quote("../delegatedrole"), "..%2Fdelegatedrole");
        assert_eq!(quote("a b/é"), "a%20b%2F%C3%A9");
        assert_eq!(quote("A-z_0.~"), "A-z_0.~");
    }

    #[test]
    fn file_urls_are_decoded() {
        assert_eq!(
            FilesystemTransport::path_for("file:///m/1.%3F.json").unwrap(),
            PathBuf::from("/m/1.?.json")
        );
        assert_eq!(
            FilesystemTransport::path_for("/m/x%2").unwrap(),
            PathBuf::from("/m/x%2")
        );
        assert!(FilesystemTransport::path_for("ftp://x/y").is_err());
    }
}
