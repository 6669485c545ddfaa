//! `cairn-image`: build cairn's boot artifacts. See the library for the steps.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cairn-image", about = "Build cairn images and boot artifacts")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the rootfs (erofs), kernel and initramfs into OUT.
    Build {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
        version: String,
        /// Directory with the pinned Kubernetes binaries (image-build/scripts/kubernetes.sh prints it).
        #[arg(long)]
        kube_bin: PathBuf,
        /// The static cairn-init binary.
        #[arg(long)]
        init: PathBuf,
        /// cairn-agent and cairnctl binaries.
        #[arg(long = "bin", required = true)]
        bins: Vec<PathBuf>,
        /// allowed_signers file baked into the initramfs as the Git trust root.
        #[arg(long)]
        allowed_signers: PathBuf,
        /// The checkout holding mkosi.conf (defaults to the one this tool was built from).
        #[arg(long)]
        repo: Option<PathBuf>,
    },
    /// Generate a cluster PKI as an `etc/` tree for a node's configuration initrd.
    Pki {
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        node: String,
        #[arg(long = "san")]
        sans: Vec<String>,
    },
    /// Manage the TUF repository OS images are published through.
    #[command(subcommand)]
    Tuf(cairn_tuf::repository::cli::TufCommand),
    /// Pack an `etc/` tree as a configuration initrd.
    ConfigInitrd {
        #[arg(long)]
        tree: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match Cli::parse().cmd {
        Cmd::Build {
            out,
            version,
            kube_bin,
            init,
            bins,
            allowed_signers,
            repo,
        } => {
            let repo = repo.unwrap_or_else(cairn_image::default_repo_root);
            let built = cairn_image::build_image(&cairn_image::BuildInputs {
                repo_root: &repo,
                out: &out,
                version: &version,
                kube_bin: &kube_bin,
                init_binary: &init,
                cairn_bins: bins,
                allowed_signers: &allowed_signers,
            })
            .context("image build failed")?;
            println!("{}", serde_json::to_string_pretty(&built.summary())?);
        }
        Cmd::Pki { out, node, sans } => {
            let pki = cairn_image::pki::generate(&cairn_image::pki::PkiSpec {
                node_name: &node,
                api_sans: &sans,
            })?;
            cairn_image::pki::write_node_tree(&pki, &out)?;
            println!("{}", out.display());
        }
        Cmd::Tuf(c) => c.run()?,
        Cmd::ConfigInitrd { tree, out } => {
            cairn_image::pxe::config_initrd(&tree, &out)?;
            println!("{}", out.display());
        }
    }
    Ok(())
}
