//! An OS version's signed artifacts, found and streamed through TUF.
//!
//! The version comes from the fleet repository; the TUF repository only
//! proves the bytes. A version without signed targets is refused, and the
//! four targets of a version must agree with each other (their signed
//! `custom.version` and `custom.verity_root_hash`) before anything is
//! written.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use cairn_slots::plan::{ImagePart, ImageSource, Images};
use cairn_slots::release::{target_name, Artifact};
use cairn_slots::{Expected, OsVersion, Sha256, Slot};
use cairn_tuf::{Config, HttpTransport, TargetInfo, Updater};

/// Where the update repository is (`update:` in the agent configuration).
#[derive(Debug, Clone)]
pub struct TufSettings {
    pub metadata_url: String,
    pub targets_url: String,
    /// The trusted root shipped with the image.
    pub trusted_root: PathBuf,
    /// The client's metadata directory (persistent).
    pub metadata_dir: PathBuf,
}

/// A version's artifacts for one target slot, as signed.
#[derive(Debug, Clone)]
pub struct Release {
    pub images: Images,
    pub verity_root_hash: Option<String>,
    root: TargetInfo,
    verity: TargetInfo,
    uki: TargetInfo,
}

/// Open a TUF session: the metadata directory starts from the image's
/// trusted root the first time; after that, from what was verified last
/// (root rotations included).
pub fn updater(s: &TufSettings) -> Result<Updater<HttpTransport>, String> {
    std::fs::create_dir_all(&s.metadata_dir)
        .map_err(|e| format!("creating {}: {e}", s.metadata_dir.display()))?;
    let root = s.metadata_dir.join("root.json");
    if !root.exists() {
        std::fs::copy(&s.trusted_root, &root).map_err(|e| {
            format!(
                "the image's TUF root {} could not be copied to {}: {e}",
                s.trusted_root.display(),
                root.display()
            )
        })?;
    }
    Updater::new(
        Config {
            metadata_dir: s.metadata_dir.clone(),
            metadata_base_url: s.metadata_url.clone(),
            targets_base_url: s.targets_url.clone(),
            start_time: SystemTime::now(),
            ..Default::default()
        },
        HttpTransport::new(),
    )
    .map_err(|e| format!("TUF client: {e}"))
}

fn sha256_of(info: &TargetInfo) -> Result<Sha256, String> {
    let hex = info.hashes().get("sha256").ok_or_else(|| {
        format!(
            "target {} is signed without a sha256 hash; cairn writes slots with sha256 checks: republish it with cairn-image release",
            info.path()
        )
    })?;
    Sha256::from_hex(hex).map_err(|e| format!("target {}: {e}", info.path()))
}

fn expected(info: &TargetInfo) -> Result<Expected, String> {
    Ok(Expected {
        len: info.length(),
        sha256: sha256_of(info)?,
    })
}

/// Find `version`'s root, verity and `slot`'s UKI in the (refreshed)
/// repository, and check that they belong together.
pub fn resolve(
    up: &mut Updater<HttpTransport>,
    version: &OsVersion,
    slot: Slot,
) -> Result<Release, String> {
    up.refresh()
        .map_err(|e| format!("update repository refresh: {e}"))?;
    let mut get = |a: Artifact| -> Result<TargetInfo, String> {
        let name = target_name(version, a);
        up.get_target_info(&name)
            .map_err(|e| format!("update repository: {e}"))?
            .ok_or_else(|| {
                format!(
                    "OS version {version} is not signed by the update repository (no target {name}); publish it with `cairn-image release`, or name a published version in fleet.yaml"
                )
            })
    };
    let root = get(Artifact::Root)?;
    let verity = get(Artifact::Verity)?;
    let uki = get(Artifact::Uki(slot))?;
    let mut hashes = Vec::new();
    for t in [&root, &verity, &uki] {
        let m = t.image_metadata().unwrap_or_default();
        if let Some(v) = &m.version {
            if v != version.as_str() {
                return Err(format!(
                    "target {} is signed as version {v}, not {version}; the repository is inconsistent",
                    t.path()
                ));
            }
        }
        hashes.push(m.verity_root_hash);
    }
    let known: Vec<&String> = hashes.iter().flatten().collect();
    if known.windows(2).any(|w| w[0] != w[1]) {
        return Err(format!(
            "the targets of {version} name different dm-verity root hashes; the repository is inconsistent"
        ));
    }
    Ok(Release {
        images: Images {
            version: version.clone(),
            root: expected(&root)?,
            verity: expected(&verity)?,
            uki: expected(&uki)?,
        },
        verity_root_hash: known.first().map(|s| s.to_string()),
        root,
        verity,
        uki,
    })
}

/// The artifacts streamed from the repository (checked by TUF against the
/// signed length and hashes, and again by the slot writer).
pub struct TufImages<'a> {
    pub updater: &'a Updater<HttpTransport>,
    pub release: &'a Release,
}

impl ImageSource for TufImages<'_> {
    fn open(&mut self, part: ImagePart) -> io::Result<Box<dyn Read + Send + '_>> {
        let info = match part {
            ImagePart::Root => &self.release.root,
            ImagePart::Verity => &self.release.verity,
            ImagePart::Uki => &self.release.uki,
        };
        let r = self
            .updater
            .open_target(info)
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Box::new(r))
    }
}

/// The default place for the client's metadata under the agent's state.
pub fn metadata_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("tuf")
}
