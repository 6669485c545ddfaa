//! Test support for the root tier: loop devices over image files.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A loop device over `img` (`losetup --find --show ARGS img`), detached
/// on drop.
pub(crate) struct Loop(pub PathBuf);

impl Loop {
    pub(crate) fn attach(img: &Path, args: &[String]) -> Loop {
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .args(args)
            .arg(img)
            .output()
            .expect("run losetup (util-linux)");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Loop(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}
