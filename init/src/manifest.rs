//! The image manifest the image build writes into the initramfs
//! (`/cairn/image.json`): what stage 1 must find and check.

use serde::{Deserialize, Serialize};

/// Where the manifest lives inside the initramfs.
pub const MANIFEST_PATH: &str = "/cairn/image.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// OS version of this image, e.g. "0.1.0".
    pub version: String,
    /// Kernel release the modules belong to (`uname -r`).
    pub kernel: String,
    pub rootfs: RootfsRef,
    /// Modules stage 1 loads (by name), in addition to their dependencies.
    pub modules: Vec<String>,
    /// Modules stage 1 loads on top of `modules` in disk mode (block
    /// drivers, device-mapper, dm-verity, ext4).
    #[serde(default)]
    pub disk_modules: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootfsRef {
    /// Path of the rootfs image inside the initramfs (PXE mode).
    pub path: String,
    /// Lower-case hex sha256 of the whole image file.
    pub sha256: String,
    /// Exact length in bytes.
    pub size: u64,
    /// Filesystem type to mount it as.
    pub fstype: String,
}

impl Manifest {
    pub fn parse(bytes: &[u8]) -> Result<Manifest, crate::InitError> {
        serde_json::from_slice(bytes)
            .map_err(|e| crate::InitError::Manifest(format!("{MANIFEST_PATH}: {e}")))
    }
}
