//! How one OS version is published in the TUF repository: the target names
//! `cairn-image release` signs and the agent (and `cairnctl install`) looks
//! up. One version is four targets under `cairn/<version>/`:
//!
//! | target | content |
//! |--------|---------|
//! | `cairn/<version>/rootfs.erofs` | the root filesystem (written to `root-<slot>`) |
//! | `cairn/<version>/rootfs.verity` | its dm-verity hash tree (written to `verity-<slot>`) |
//! | `cairn/<version>/uki-a.efi` | the UKI that boots the version from slot A |
//! | `cairn/<version>/uki-b.efi` | the same for slot B |
//!
//! There is one UKI per slot because the kernel command line inside a UKI
//! (signed with it) names the slot it mounts (`cairn.slot=`) next to the
//! dm-verity root hash. Every target carries the version and the verity
//! root hash in its signed `custom` object, so a client can check that the
//! four belong together before writing anything.

use crate::slot::{OsVersion, Slot};

/// Which artifact of a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Artifact {
    /// The erofs root.
    Root,
    /// The dm-verity hash tree.
    Verity,
    /// The UKI for one slot.
    Uki(Slot),
}

impl Artifact {
    /// The file name inside `cairn/<version>/`.
    pub fn file_name(self) -> String {
        match self {
            Artifact::Root => "rootfs.erofs".into(),
            Artifact::Verity => "rootfs.verity".into(),
            Artifact::Uki(slot) => format!("uki-{}.efi", slot.as_str()),
        }
    }
}

/// The TUF target name of `artifact` of `version`.
pub fn target_name(version: &OsVersion, artifact: Artifact) -> String {
    format!("cairn/{}/{}", version.as_str(), artifact.file_name())
}

/// All four targets of a version, in publishing order.
pub fn all_artifacts() -> [Artifact; 4] {
    [
        Artifact::Root,
        Artifact::Verity,
        Artifact::Uki(Slot::A),
        Artifact::Uki(Slot::B),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let v = OsVersion::new("0.2.0").unwrap();
        let names: Vec<String> = all_artifacts()
            .iter()
            .map(|a| target_name(&v, *a))
            .collect();
        assert_eq!(
            names,
            [
                "cairn/0.2.0/rootfs.erofs",
                "cairn/0.2.0/rootfs.verity",
                "cairn/0.2.0/uki-a.efi",
                "cairn/0.2.0/uki-b.efi"
            ]
        );
    }
}
