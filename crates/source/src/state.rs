//! The state directory: the recorded commit (written atomically) and
//! materialized trees.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use git2::{ObjectType, Repository, Tree};

use crate::{CommitId, SourceError, VerifiedCommit};

fn state_err(path: &Path) -> impl FnOnce(std::io::Error) -> SourceError + '_ {
    move |source| SourceError::State {
        path: path.to_path_buf(),
        source,
    }
}

/// Read the recorded commit; `None` when nothing was recorded yet.
pub(crate) fn read_recorded(path: &Path) -> Result<Option<CommitId>, SourceError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(state_err(path)(e)),
    };
    let id = text.strip_suffix('\n').unwrap_or(&text);
    id.parse::<CommitId>()
        .map(Some)
        .map_err(|_| SourceError::StateCorrupt {
            path: path.to_path_buf(),
            reason: format!("expected a 40-digit commit id, found {:?}", truncate(id)),
        })
}

fn truncate(s: &str) -> String {
    s.chars().take(60).collect()
}

/// Write the recorded commit: temp file in the same directory, fsync,
/// rename over the old file, fsync the directory. A crash leaves either the
/// old or the new id, never a torn file.
pub(crate) fn write_recorded(path: &Path, id: CommitId) -> Result<(), SourceError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".recorded-")
        .tempfile_in(dir)
        .map_err(state_err(dir))?;
    tmp.write_all(format!("{id}\n").as_bytes())
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(state_err(tmp.path()))?;
    tmp.persist(path).map_err(|e| state_err(path)(e.error))?;
    sync_dir(dir)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), SourceError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(state_err(dir))
}

/// Materialize the verified commit's tree as `trees_dir/<id>`: written to
/// a temporary directory (every file fsynced), then renamed into place, so
/// the directory exists only when complete. Reuses an existing one.
pub(crate) fn checkout(
    repo: &Repository,
    trees_dir: &Path,
    v: &VerifiedCommit,
) -> Result<PathBuf, SourceError> {
    let dest = trees_dir.join(v.id().to_string());
    if dest.is_dir() {
        return Ok(dest);
    }
    fs::create_dir_all(trees_dir).map_err(state_err(trees_dir))?;
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempdir_in(trees_dir)
        .map_err(state_err(trees_dir))?;
    let tree = repo
        .find_tree(v.tree())
        .map_err(|source| SourceError::Git {
            path: repo.path().to_path_buf(),
            context: format!("reading tree of {}", v.id()),
            source,
        })?;
    let mut w = TreeWriter {
        repo,
        commit: v.id(),
    };
    w.write(&tree, tmp.path(), "", 0)?;
    set_mode(tmp.path(), 0o755)?;
    sync_dir(tmp.path())?;
    let tmp_path = tmp.keep();
    match fs::rename(&tmp_path, &dest) {
        Ok(()) => {}
        Err(_) if dest.is_dir() => {
            // Someone else materialized it meanwhile: same content.
            let _ = fs::remove_dir_all(&tmp_path);
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp_path);
            return Err(state_err(&dest)(e));
        }
    }
    sync_dir(trees_dir)?;
    Ok(dest)
}

/// Remove every materialized tree (and leftover temporary directory)
/// except the ones in `keep`. Failures are logged, not returned: pruning
/// is housekeeping.
pub(crate) fn prune_trees(trees_dir: &Path, keep: &[CommitId]) {
    let Ok(entries) = fs::read_dir(trees_dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if keep.iter().any(|k| k.to_string() == name) {
            continue;
        }
        if let Err(err) = fs::remove_dir_all(e.path()) {
            log::warn!("could not prune {}: {err}", e.path().display());
        }
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), SourceError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(state_err(path))
}

struct TreeWriter<'r> {
    repo: &'r Repository,
    commit: CommitId,
}

impl TreeWriter<'_> {
    fn unsafe_entry(&self, path: &str, reason: &str) -> SourceError {
        SourceError::UnsafeTreeEntry {
            commit: self.commit,
            path: path.to_string(),
            reason: reason.to_string(),
        }
    }

    fn git_err(&self, path: &str, source: git2::Error) -> SourceError {
        SourceError::Git {
            path: self.repo.path().to_path_buf(),
            context: format!("reading {path} of {}", self.commit),
            source,
        }
    }

    /// Write `tree` into `dir`; `rel` is its path in the commit, `depth`
    /// its number of components (to keep symlinks inside the tree).
    fn write(
        &mut self,
        tree: &Tree<'_>,
        dir: &Path,
        rel: &str,
        depth: usize,
    ) -> Result<(), SourceError> {
        use std::os::unix::ffi::OsStrExt;
        for entry in tree.iter() {
            let name = entry.name_bytes();
            let shown = String::from_utf8_lossy(name);
            let rel_path = if rel.is_empty() {
                shown.to_string()
            } else {
                format!("{rel}/{shown}")
            };
            if name.is_empty()
                || name == b"."
                || name == b".."
                || name.contains(&b'/')
                || name.contains(&0)
                || name.eq_ignore_ascii_case(b".git")
            {
                return Err(self.unsafe_entry(&rel_path, "invalid file name"));
            }
            let path = dir.join(std::ffi::OsStr::from_bytes(name));
            let mode = entry.filemode();
            match entry.kind() {
                Some(ObjectType::Tree) => {
                    let sub = self
                        .repo
                        .find_tree(entry.id())
                        .map_err(|e| self.git_err(&rel_path, e))?;
                    fs::create_dir(&path).map_err(state_err(&path))?;
                    self.write(&sub, &path, &rel_path, depth + 1)?;
                    sync_dir(&path)?;
                }
                Some(ObjectType::Blob) if mode == 0o120000 => {
                    let blob = self
                        .repo
                        .find_blob(entry.id())
                        .map_err(|e| self.git_err(&rel_path, e))?;
                    let target = blob.content();
                    if !symlink_stays_inside(target, depth) {
                        return Err(self.unsafe_entry(&rel_path, "symlink points outside the tree"));
                    }
                    std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &path)
                        .map_err(state_err(&path))?;
                }
                Some(ObjectType::Blob) => {
                    let blob = self
                        .repo
                        .find_blob(entry.id())
                        .map_err(|e| self.git_err(&rel_path, e))?;
                    let mut f = fs::File::create(&path).map_err(state_err(&path))?;
                    f.write_all(blob.content())
                        .and_then(|()| f.sync_all())
                        .map_err(state_err(&path))?;
                    set_mode(&path, if mode == 0o100755 { 0o755 } else { 0o644 })?;
                }
                Some(ObjectType::Commit) => {
                    log::warn!(
                        "commit {}: submodule {rel_path} is not fetched; left empty",
                        self.commit
                    );
                    fs::create_dir(&path).map_err(state_err(&path))?;
                }
                _ => return Err(self.unsafe_entry(&rel_path, "unknown entry type")),
            }
        }
        Ok(())
    }
}

/// A relative symlink target that, resolved lexically from a directory
/// `depth` levels below the tree root, stays inside the tree.
fn symlink_stays_inside(target: &[u8], depth: usize) -> bool {
    if target.is_empty() || target.starts_with(b"/") || target.contains(&0) {
        return false;
    }
    let mut level = depth as isize;
    for part in target.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                level -= 1;
                if level < 0 {
                    return false;
                }
            }
            _ => level += 1,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_must_stay_inside() {
        assert!(symlink_stays_inside(b"a/b", 0));
        assert!(symlink_stays_inside(b"../x", 1));
        assert!(!symlink_stays_inside(b"../x", 0));
        assert!(!symlink_stays_inside(b"a/../../x", 0));
        assert!(!symlink_stays_inside(b"/etc/passwd", 3));
        assert!(!symlink_stays_inside(b"", 0));
    }

    #[test]
    fn recorded_round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("recorded");
        assert_eq!(read_recorded(&p).unwrap(), None);
        let id: CommitId = "0123456789abcdef0123456789abcdef01234567".parse().unwrap();
        write_recorded(&p, id).unwrap();
        assert_eq!(read_recorded(&p).unwrap(), Some(id));
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        fs::write(&p, "garbage\n").unwrap();
        assert!(matches!(
            read_recorded(&p),
            Err(SourceError::StateCorrupt { .. })
        ));
    }
}
