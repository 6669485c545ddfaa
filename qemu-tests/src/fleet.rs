//! A local fleet repository made from `gitops/`, signed with the demo key
//! using plain `git commit -S` (gpg.format=ssh), as a user would.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::prepare::DemoKey;

pub struct FleetRepo {
    /// The bare repository `git daemon` serves (`<base>/fleet.git`).
    pub bare: PathBuf,
    /// A working clone to make changes in.
    pub work: PathBuf,
    key: PathBuf,
}

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .output()
        .with_context(|| format!("git {args:?}"))?;
    if !out.status.success() {
        bail!(
            "git {args:?} in {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let dst = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &dst)?;
        } else {
            std::fs::copy(e.path(), dst)?;
        }
    }
    Ok(())
}

impl FleetRepo {
    /// Create `<base>/fleet.git` holding `gitops` as one signed commit on `main`.
    pub fn create(base: &Path, gitops: &Path, key: &DemoKey) -> Result<FleetRepo> {
        let bare = base.join("fleet.git");
        let work = base.join("fleet-work");
        for d in [&bare, &work] {
            if d.exists() {
                std::fs::remove_dir_all(d)?;
            }
        }
        std::fs::create_dir_all(&bare)?;
        git(&bare, &["init", "-q", "--bare", "-b", "main"])?;
        git(
            base,
            &[
                "clone",
                "-q",
                bare.to_str().context("utf-8 path")?,
                "fleet-work",
            ],
        )?;
        git(&work, &["checkout", "-q", "-b", "main"])?;
        for (k, v) in [
            ("user.name", "cairn demo"),
            ("user.email", key.principal.as_str()),
            ("gpg.format", "ssh"),
            (
                "user.signingkey",
                key.private_key.to_str().context("utf-8 path")?,
            ),
        ] {
            git(&work, &["config", k, v])?;
        }
        copy_dir(gitops, &work)?;
        let repo = FleetRepo {
            bare,
            work,
            key: key.private_key.clone(),
        };
        repo.commit(true, "fleet: initial import of gitops/")?;
        Ok(repo)
    }

    /// Commit everything in the work tree and push; returns the commit id.
    pub fn commit(&self, signed: bool, message: &str) -> Result<String> {
        git(&self.work, &["add", "-A"])?;
        let mut args = vec!["commit", "-q", "--allow-empty", "-m", message];
        if signed {
            args.push("-S");
        } else {
            args.push("--no-gpg-sign");
        }
        git(&self.work, &args)?;
        git(&self.work, &["push", "-q", "origin", "main"])?;
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// The signing key's path (for instructions shown to the user).
    pub fn key(&self) -> &Path {
        &self.key
    }
}
