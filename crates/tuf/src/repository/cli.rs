//! `cairn-image tuf ...`: the repository commands as a clap subcommand
//! enum. The lead's binary plugs it in with:
//!
//! ```ignore
//! #[derive(clap::Subcommand)]
//! enum Command { /* ... */ #[command(subcommand)] Tuf(cairn_tuf::repository::cli::TufCommand) }
//! // in main: Command::Tuf(cmd) => cmd.run()?,
//! ```
//!
//! Results go to stdout (one line per signed role); private keys are never
//! printed, only key ids and key file paths.

use std::path::PathBuf;
use std::time::SystemTime;

use clap::{Args, Subcommand};

use super::{
    ExpiryDays, InitOptions, KeySpec, RepoError, Repository, RotateOptions, Signed, TargetName,
};
use crate::ImageMetadata;

/// Where the repository and its keys are.
#[derive(Debug, Clone, Args)]
pub struct RepoArgs {
    /// Repository working directory.
    #[arg(long, value_name = "DIR")]
    pub repo: PathBuf,
    /// Directory of private key files (default: REPO/keys).
    #[arg(long, value_name = "DIR")]
    pub keys: Option<PathBuf>,
}

/// Manage the TUF repository that publishes OS images.
#[derive(Debug, Clone, Subcommand)]
pub enum TufCommand {
    /// Create a repository: ed25519 keys for every role, signed v1 metadata.
    Init {
        #[command(flatten)]
        repo: RepoArgs,
        /// Root keys to generate.
        #[arg(long, default_value_t = 1)]
        root_keys: u32,
        /// Root signatures required.
        #[arg(long, default_value_t = 1)]
        root_threshold: u32,
        /// Targets keys to generate.
        #[arg(long, default_value_t = 1)]
        targets_keys: u32,
        /// Targets signatures required.
        #[arg(long, default_value_t = 1)]
        targets_threshold: u32,
        /// Snapshot keys to generate.
        #[arg(long, default_value_t = 1)]
        snapshot_keys: u32,
        /// Snapshot signatures required.
        #[arg(long, default_value_t = 1)]
        snapshot_threshold: u32,
        /// Timestamp keys to generate.
        #[arg(long, default_value_t = 1)]
        timestamp_keys: u32,
        /// Timestamp signatures required.
        #[arg(long, default_value_t = 1)]
        timestamp_threshold: u32,
        /// Days root metadata stays valid.
        #[arg(long, default_value_t = 365)]
        root_expires_days: u32,
        /// Days targets metadata stays valid.
        #[arg(long, default_value_t = 90)]
        targets_expires_days: u32,
        /// Days snapshot metadata stays valid.
        #[arg(long, default_value_t = 7)]
        snapshot_expires_days: u32,
        /// Days timestamp metadata stays valid.
        #[arg(long, default_value_t = 1)]
        timestamp_expires_days: u32,
    },
    /// Copy an OS image artifact into the repository and stage its target
    /// entry (signed by the next `sign`).
    AddTarget {
        #[command(flatten)]
        repo: RepoArgs,
        /// The artifact file.
        file: PathBuf,
        /// Target name (default: the file name).
        #[arg(long)]
        name: Option<String>,
        /// OS version of the image (custom.version).
        #[arg(long)]
        image_version: Option<String>,
        /// Root filesystem hash (custom.rootfs_hash).
        #[arg(long)]
        rootfs_hash: Option<String>,
        /// dm-verity root hash (custom.verity_root_hash).
        #[arg(long)]
        verity_root_hash: Option<String>,
        /// Oldest agent that may install it (custom.min_agent_version).
        #[arg(long)]
        min_agent_version: Option<String>,
    },
    /// Sign staged targets, then snapshot and timestamp; or re-sign the
    /// named roles (with their dependents) with a new version and expiry.
    Sign {
        #[command(flatten)]
        repo: RepoArgs,
        /// Role to re-sign (repeatable): root, targets, snapshot, timestamp.
        #[arg(long = "role")]
        roles: Vec<String>,
    },
    /// Sign a new timestamp version with a fresh expiry.
    RefreshTimestamp {
        #[command(flatten)]
        repo: RepoArgs,
    },
    /// Replace a role's keys through a new root version that clients holding
    /// the previous root follow.
    RotateKey {
        #[command(flatten)]
        repo: RepoArgs,
        /// The role whose keys change.
        #[arg(long)]
        role: String,
        /// Key id to remove (repeatable; default: all of the role's keys).
        #[arg(long = "remove")]
        remove: Vec<String>,
        /// Number of new keys (default: as many as removed).
        #[arg(long)]
        add: Option<u32>,
        /// New threshold (default: unchanged).
        #[arg(long)]
        threshold: Option<u32>,
    },
    /// Copy the published metadata and targets into DIR (timestamp last).
    Publish {
        #[command(flatten)]
        repo: RepoArgs,
        /// Destination (e.g. the web server's document root).
        dir: PathBuf,
    },
}

fn report(signed: &[Signed]) {
    for s in signed {
        println!("signed {} v{}", s.role, s.version);
    }
}

impl TufCommand {
    /// Run the command at the current time.
    pub fn run(self) -> Result<(), RepoError> {
        self.run_at(SystemTime::now())
    }

    /// Run the command as if the time were `now` (tests).
    pub fn run_at(self, now: SystemTime) -> Result<(), RepoError> {
        match self {
            TufCommand::Init {
                repo,
                root_keys,
                root_threshold,
                targets_keys,
                targets_threshold,
                snapshot_keys,
                snapshot_threshold,
                timestamp_keys,
                timestamp_threshold,
                root_expires_days,
                targets_expires_days,
                snapshot_expires_days,
                timestamp_expires_days,
            } => {
                let spec = |keys, threshold| KeySpec { keys, threshold };
                let opts = InitOptions {
                    root: spec(root_keys, root_threshold),
                    targets: spec(targets_keys, targets_threshold),
                    snapshot: spec(snapshot_keys, snapshot_threshold),
                    timestamp: spec(timestamp_keys, timestamp_threshold),
                    expiry: ExpiryDays {
                        root: root_expires_days,
                        targets: targets_expires_days,
                        snapshot: snapshot_expires_days,
                        timestamp: timestamp_expires_days,
                    },
                };
                let r = Repository::init(&repo.repo, repo.keys.as_deref(), &opts, now)?;
                println!(
                    "initialised TUF repository in {} (keys in {})",
                    repo.repo.display(),
                    r.keys_dir.display()
                );
            }
            TufCommand::AddTarget {
                repo,
                file,
                name,
                image_version,
                rootfs_hash,
                verity_root_hash,
                min_agent_version,
            } => {
                let mut r = Repository::open(&repo.repo, repo.keys.as_deref(), now)?;
                let name = match name {
                    Some(n) => n,
                    None => file
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                };
                let name = TargetName::new(&name)?;
                let meta = ImageMetadata {
                    version: image_version,
                    rootfs_hash,
                    verity_root_hash,
                    min_agent_version,
                };
                let custom = (meta != ImageMetadata::default()).then(|| super::image_custom(&meta));
                r.add_target_file(&name, &file, custom)?;
                println!("staged target {} (run `tuf sign`)", name.as_str());
            }
            TufCommand::Sign { repo, roles } => {
                let mut r = Repository::open(&repo.repo, repo.keys.as_deref(), now)?;
                let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
                report(&r.sign(&roles)?);
            }
            TufCommand::RefreshTimestamp { repo } => {
                let mut r = Repository::open(&repo.repo, repo.keys.as_deref(), now)?;
                report(&[r.refresh_timestamp()?]);
            }
            TufCommand::RotateKey {
                repo,
                role,
                remove,
                add,
                threshold,
            } => {
                let mut r = Repository::open(&repo.repo, repo.keys.as_deref(), now)?;
                let opts = RotateOptions {
                    remove,
                    add,
                    threshold,
                };
                report(&r.rotate_key(&role, &opts)?);
            }
            TufCommand::Publish { repo, dir } => {
                let r = Repository::open(&repo.repo, repo.keys.as_deref(), now)?;
                let files = r.publish(&dir)?;
                println!("published {} files to {}", files.len(), dir.display());
            }
        }
        Ok(())
    }
}
