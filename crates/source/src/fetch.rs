//! Fetching the configured branch into the local cache, with limits.

use std::{
    cell::Cell,
    path::Path,
    sync::Mutex,
    time::{Duration, Instant},
};

use git2::{AutotagOption, FetchOptions, Oid, RemoteCallbacks, Repository};

use crate::{error::FetchLimitKind, SourceConfig, SourceError};

/// The ref in the cache that holds the last fetched tip.
pub(crate) const FETCHED_REF: &str = "refs/cairn/fetched";
/// The tip fetched the time before (kept for negotiation).
const PREVIOUS_REF: &str = "refs/cairn/previous";

/// Serializes fetches in this process: libgit2's socket timeouts are
/// process-global options, set just before each fetch under this lock.
static FETCH_LOCK: Mutex<()> = Mutex::new(());

/// Limits on one fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchLimits {
    /// Abort once more than this many bytes of pack data were received.
    pub max_bytes: u64,
    /// Abort once the fetch has run this long. It is checked whenever data
    /// arrives, and the same value is the socket connect and read timeout,
    /// so a stalled server is given up on too (git://, http(s)://, and
    /// ssh, where ssh is killed after this long without data).
    pub max_duration: Duration,
}

impl Default for FetchLimits {
    /// 256 MiB and 5 minutes: generous for a configuration repository.
    fn default() -> Self {
        FetchLimits {
            max_bytes: 256 * 1024 * 1024,
            max_duration: Duration::from_secs(300),
        }
    }
}

/// ssh transport settings. Fetches over ssh run the system OpenSSH client
/// (`ssh`) in batch mode with strict host-key checking.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SshOptions {
    /// Private key to authenticate with (the user is the one in the URL, or
    /// `git`). Without it, ssh tries its default identities.
    pub private_key: Option<std::path::PathBuf>,
    /// An OpenSSH `known_hosts` file the server's host key must be in.
    /// Without it ssh checks `~/.ssh/known_hosts` and the system's, and
    /// refuses unknown hosts.
    pub known_hosts: Option<std::path::PathBuf>,
    /// The ssh client program (default: `ssh` from `PATH`).
    pub command: Option<std::path::PathBuf>,
}

/// Fetch `refs/heads/<branch>` from the configured URL into
/// [`FETCHED_REF`] of the cache and return the tip.
pub(crate) fn fetch_branch(
    repo: &Repository,
    cache_path: &Path,
    cfg: &SourceConfig,
) -> Result<Oid, SourceError> {
    // errors and logs show the URL without a password or token
    let shown = redact(&cfg.url);
    let url = shown.as_str();
    let fetch_err = |source| SourceError::Fetch {
        url: url.to_string(),
        source,
    };
    let _guard = FETCH_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    set_socket_timeouts(cfg.limits.max_duration);
    durable_writes();
    crate::transport::configure(crate::transport::Settings {
        timeout: cfg.limits.max_duration,
        ssh: cfg.ssh.clone(),
    })
    .map_err(fetch_err)?;

    // A stale ref must not stand in for a branch the remote no longer has:
    // move it aside (it stays a "have" for negotiation, so a poll after a
    // refusal does not download everything again).
    if let Ok(mut r) = repo.find_reference(FETCHED_REF) {
        let git_err = |context: &str| {
            let context = context.to_string();
            move |source| SourceError::Git {
                path: cache_path.to_path_buf(),
                context,
                source,
            }
        };
        if let Some(old) = r.target() {
            repo.reference(PREVIOUS_REF, old, true, "cairn: previous fetch")
                .map_err(git_err("saving the previous fetch"))?;
        }
        r.delete()
            .map_err(git_err("deleting the previous fetch ref"))?;
    }

    let mut remote = repo.remote_anonymous(&cfg.url).map_err(fetch_err)?;
    let start = Instant::now();
    let limits = cfg.limits;
    let hit: Cell<Option<FetchLimitKind>> = Cell::new(None);
    let over_time = || {
        if start.elapsed() > limits.max_duration {
            hit.set(Some(FetchLimitKind::Time(limits.max_duration)));
            true
        } else {
            false
        }
    };
    let mut cbs = RemoteCallbacks::new();
    cbs.transfer_progress(|p| {
        if p.received_bytes() as u64 > limits.max_bytes {
            hit.set(Some(FetchLimitKind::Bytes(limits.max_bytes)));
            return false;
        }
        !over_time()
    });
    cbs.sideband_progress(|_| !over_time());

    let mut fo = FetchOptions::new();
    fo.remote_callbacks(cbs)
        .download_tags(AutotagOption::None)
        .update_fetchhead(false);
    let refspec = format!("+refs/heads/{}:{FETCHED_REF}", cfg.branch);
    log::debug!("fetching {url} branch {}", cfg.branch);
    let result = remote.fetch(&[refspec.as_str()], Some(&mut fo), None);
    drop(fo);
    if let Err(e) = result {
        if let Some(limit) = hit.get() {
            return Err(SourceError::FetchLimit {
                url: url.to_string(),
                limit,
            });
        }
        if e.code() == git2::ErrorCode::Timeout || start.elapsed() >= limits.max_duration {
            return Err(SourceError::FetchLimit {
                url: url.to_string(),
                limit: FetchLimitKind::Time(limits.max_duration),
            });
        }
        return Err(fetch_err(e));
    }
    let stats = remote.stats();
    log::debug!(
        "fetched {url}: {} objects, {} bytes in {:?}",
        stats.received_objects(),
        stats.received_bytes(),
        start.elapsed()
    );

    match repo.find_reference(FETCHED_REF) {
        Ok(r) => r.target().ok_or_else(|| SourceError::BranchNotFound {
            url: url.to_string(),
            branch: cfg.branch.clone(),
        }),
        Err(e) if e.code() == git2::ErrorCode::NotFound => Err(SourceError::BranchNotFound {
            url: url.to_string(),
            branch: cfg.branch.clone(),
        }),
        Err(source) => Err(SourceError::Git {
            path: cache_path.to_path_buf(),
            context: format!("reading {FETCHED_REF}"),
            source,
        }),
    }
}

/// Make libgit2 fsync the objects, packs and refs it writes (off by
/// default). Without it a power cut after a fetch can leave a ref naming
/// objects that never reached the disk ("object not found"), which a node
/// found in a QEMU power-cut test.
#[allow(unsafe_code)]
fn durable_writes() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // libgit2 is initialised (the caller holds an open repository) and
        // this runs once, under FETCH_LOCK, before any write of this fetch.
        // SAFETY: sets one global integer option of an initialised libgit2.
        let rc = unsafe {
            libgit2_sys::git_libgit2_opts(
                libgit2_sys::GIT_OPT_ENABLE_FSYNC_GITDIR as std::os::raw::c_int,
                1 as std::os::raw::c_int,
            )
        };
        if rc != 0 {
            log::warn!("libgit2 refused to enable fsync of the git cache ({rc})");
        }
    });
}

/// Whether a fetch error means the local cache is damaged (objects missing
/// or unreadable, refs broken) rather than the remote or the network.
pub(crate) fn is_cache_damage(e: &git2::Error) -> bool {
    use git2::ErrorClass as C;
    matches!(
        e.class(),
        C::Odb | C::Object | C::Reference | C::Repository | C::Zlib | C::Index | C::Tree
    )
}

/// Set libgit2's socket connect and read timeouts.
#[allow(unsafe_code)]
fn set_socket_timeouts(limit: Duration) {
    let ms = i32::try_from(limit.as_millis()).unwrap_or(i32::MAX).max(1);
    // These write two plain C ints in libgit2's global options that only its
    // socket stream reads, when a network transport connects or reads. In
    // this process every libgit2 network operation is a fetch made by this
    // module while it holds FETCH_LOCK, which the caller holds now. (A program
    // that also uses git2's network functions elsewhere must not run them
    // while a cairn fetch is in progress.)
    // SAFETY: no other thread reads or writes these options concurrently.
    unsafe {
        let _ = git2::opts::set_server_connect_timeout_in_milliseconds(ms);
        let _ = git2::opts::set_server_timeout_in_milliseconds(ms);
    }
}

/// `scheme://user:secret@host/…` with the secret replaced by `***`.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or("");
            if rest[..at].contains(':') {
                format!("{scheme}://{user}:***{}", &rest[at..])
            } else {
                url.to_string()
            }
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn secrets_in_urls_are_not_shown() {
        assert_eq!(
            redact("https://ci:glpat-123@git.example.com/fleet.git"),
            "https://ci:***@git.example.com/fleet.git"
        );
        assert_eq!(
            redact("https://git.example.com/a@b"),
            "https://git.example.com/a@b"
        );
        assert_eq!(redact("ssh://git@h/r"), "ssh://git@h/r");
        assert_eq!(redact("git@h:r"), "git@h:r");
    }
}
