//! The base root tree, built by mkosi from the repo's `mkosi.conf` and cached
//! by the sha256 of that file, so it is built once per change of the package set.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::{io, run, Result};

/// Build (or reuse) the tree for `mkosi_conf`; returns the tree's path.
pub fn base_tree(mkosi_conf: &Path, cache: &Path) -> Result<PathBuf> {
    let conf = std::fs::read(mkosi_conf).map_err(io(mkosi_conf))?;
    let key = hex::encode(&Sha256::digest(&conf)[..8]);
    let dir = cache.join("mkosi").join(&key);
    let tree = dir.join("root");
    let done = dir.join("complete");
    if done.exists() && tree.is_dir() {
        log::info!("mkosi tree {key} cached at {}", tree.display());
        return Ok(tree);
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
    }
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let pkgs = cache.join("mkosi-packages");
    std::fs::create_dir_all(&pkgs).map_err(io(&pkgs))?;
    log::info!("building the base tree with mkosi ({key}); this takes a few minutes once");
    run(Command::new("mkosi")
        .arg("--default")
        .arg(mkosi_conf)
        .arg("--output")
        .arg(&tree)
        .arg("--cache")
        .arg(&pkgs)
        .arg("--force")
        .arg("build")
        .current_dir(&dir))?;
    std::fs::write(&done, key.as_bytes()).map_err(io(&done))?;
    Ok(tree)
}
