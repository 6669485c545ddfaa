//! The `cairn-tuf-client` conformance CLI (tuf-conformance's
//! client-under-test protocol). The binary only calls [`main_with_args`].
//!
//! ```text
//! cairn-tuf-client --metadata-dir DIR init TRUSTED_ROOT
//! cairn-tuf-client --metadata-dir DIR --metadata-url URL refresh
//! cairn-tuf-client --metadata-dir DIR --metadata-url URL --target-name P [--target-name P2 ...] \
//!     --target-dir TDIR --target-base-url TURL download
//! ```
//!
//! Exit status 0 on success, 1 on any failure (including bad arguments).
//! Targets are stored as `TDIR/<quote(target path)>` and not fetched again
//! when that file already matches the signed length and hashes.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::store::write_atomic;
use crate::transport::{quote, HttpTransport};
use crate::{Config, Error, Limits, Updater};

#[derive(Debug, Parser)]
#[command(
    name = "cairn-tuf-client",
    version,
    about = "TUF client (tuf-conformance CLI protocol)"
)]
struct Cli {
    /// Directory of trusted metadata.
    #[arg(long, global = true, value_name = "DIR")]
    metadata_dir: Option<PathBuf>,
    /// Base URL of the repository's metadata.
    #[arg(long, global = true, value_name = "URL")]
    metadata_url: Option<String>,
    /// Target path to download (repeatable; downloaded in order).
    #[arg(long = "target-name", global = true, value_name = "PATH")]
    target_names: Vec<String>,
    /// Directory to store downloaded targets in.
    #[arg(long, global = true, value_name = "DIR")]
    target_dir: Option<PathBuf>,
    /// Base URL of the repository's targets.
    #[arg(long, global = true, value_name = "URL")]
    target_base_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Copy TRUSTED_ROOT into the metadata directory as root.json (no network).
    Init {
        /// The initial trusted root.json.
        trusted_root: PathBuf,
    },
    /// Update top-level metadata following the TUF client workflow.
    Refresh,
    /// Refresh, then download and verify each --target-name.
    Download,
}

/// Run the CLI with `args` (including the program name); returns the exit
/// status: 0 on success, 1 on any failure.
pub fn main_with_args<I, A>(args: I) -> i32
where
    I: IntoIterator<Item = A>,
    A: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
                _ => 1,
            };
        }
    };
    match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("cairn-tuf-client: {e}");
            1
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("missing required option --{0}")]
    Missing(&'static str),
    #[error(transparent)]
    Tuf(#[from] Error),
}

fn run(cli: Cli) -> Result<(), CliError> {
    let metadata_dir = cli.metadata_dir.ok_or(CliError::Missing("metadata-dir"))?;
    match cli.command {
        Command::Init { trusted_root } => {
            let bytes = std::fs::read(&trusted_root).map_err(|e| Error::io(&trusted_root, e))?;
            std::fs::create_dir_all(&metadata_dir).map_err(|e| Error::io(&metadata_dir, e))?;
            write_atomic(&metadata_dir.join("root.json"), &bytes)?;
            Ok(())
        }
        Command::Refresh => {
            let url = cli.metadata_url.ok_or(CliError::Missing("metadata-url"))?;
            let mut updater = Updater::new(
                config(metadata_dir, url, String::new()),
                HttpTransport::new(),
            )?;
            updater.refresh()?;
            Ok(())
        }
        Command::Download => {
            let url = cli.metadata_url.ok_or(CliError::Missing("metadata-url"))?;
            let target_dir = cli.target_dir.ok_or(CliError::Missing("target-dir"))?;
            let base = cli
                .target_base_url
                .ok_or(CliError::Missing("target-base-url"))?;
            if cli.target_names.is_empty() {
                return Err(CliError::Missing("target-name"));
            }
            let mut updater = Updater::new(config(metadata_dir, url, base), HttpTransport::new())?;
            updater.refresh()?;
            std::fs::create_dir_all(&target_dir).map_err(|e| Error::io(&target_dir, e))?;
            for name in &cli.target_names {
                let info = updater
                    .get_target_info(name)?
                    .ok_or_else(|| Error::TargetNotFound(name.clone()))?;
                let dest = target_dir.join(quote(name));
                if updater.is_cached(&info, &dest) {
                    log::info!("{name}: already downloaded");
                    continue;
                }
                updater.download_target(&info, &dest)?;
            }
            Ok(())
        }
    }
}

fn config(metadata_dir: PathBuf, metadata_base_url: String, targets_base_url: String) -> Config {
    Config {
        metadata_dir,
        metadata_base_url,
        targets_base_url,
        start_time: std::time::SystemTime::now(),
        limits: Limits::default(),
        prefix_targets_with_hash: true,
    }
}
