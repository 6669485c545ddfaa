//! `cairn-image`'s command line: the subcommands and their dispatch into
//! the library (the binary only parses and calls [`run`]).

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum Cmd {
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
        /// The update repository's root.json, baked in as the trust root for OS images.
        #[arg(long)]
        tuf_root: Option<PathBuf>,
        /// The checkout holding mkosi.conf (defaults to the one this tool was built from).
        #[arg(long)]
        repo: Option<PathBuf>,
    },
    /// Sign an OS version into the TUF repository: its rootfs, dm-verity
    /// hash tree and one UKI per slot (targets `cairn/<version>/…`).
    Release {
        /// The TUF repository (`cairn-image tuf init`).
        #[arg(long)]
        repo: PathBuf,
        /// Its private keys (default: REPO/keys).
        #[arg(long)]
        keys: Option<PathBuf>,
        /// A `cairn-image build` output directory.
        #[arg(long)]
        from: PathBuf,
        #[arg(long)]
        version: String,
        /// Kernel argument appended to both UKIs (repeatable).
        #[arg(long = "kernel-arg")]
        kernel_args: Vec<String>,
        /// Where the hash tree and the UKIs are built (default: FROM/release-VERSION).
        #[arg(long)]
        work: Option<PathBuf>,
    },
    /// Build a bootable GPT disk image (`disk.raw`) with slot A holding this
    /// version, plus the per-version update artifacts (`rootfs.erofs`,
    /// `rootfs.verity`, `verity.json`, the slot-A UKI). Either reuses the
    /// output of `cairn-image build` (`--from`) or builds it first into OUT
    /// (then the `build` flags are required).
    Disk {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
        version: String,
        /// Directory holding a `cairn-image build` output (vmlinuz,
        /// initramfs.cpio.gz, rootfs.erofs) of the same version.
        #[arg(long, conflicts_with_all = ["kube_bin", "init", "bins", "allowed_signers", "tuf_root"])]
        from: Option<PathBuf>,
        #[arg(long)]
        kube_bin: Option<PathBuf>,
        #[arg(long)]
        init: Option<PathBuf>,
        #[arg(long = "bin")]
        bins: Vec<PathBuf>,
        #[arg(long)]
        allowed_signers: Option<PathBuf>,
        #[arg(long)]
        tuf_root: Option<PathBuf>,
        #[arg(long)]
        repo: Option<PathBuf>,
        /// EFI system partition size, MiB (FAT32; holds two UKIs during an update).
        #[arg(long, default_value_t = crate::disk::DiskSizes::default().esp_mib)]
        esp_mib: u64,
        /// Size of each root partition (root-a, root-b), MiB.
        #[arg(long, default_value_t = crate::disk::DiskSizes::default().root_mib)]
        root_mib: u64,
        /// Size of each verity partition (verity-a, verity-b), MiB; must hold
        /// the hash tree of a full root partition.
        #[arg(long, default_value_t = crate::disk::DiskSizes::default().verity_mib)]
        verity_mib: u64,
        /// STATE partition size, MiB (blank and formatted ext4 on first
        /// boot, or seeded with --config).
        #[arg(long, default_value_t = crate::disk::DiskSizes::default().state_mib)]
        state_mib: u64,
        /// Node configuration tree (DIR/etc/cairn/agent.yaml, …: what
        /// `config-initrd --tree` packs) written into the STATE partition's
        /// /etc overlay, so the disk boots configured. The disk then holds
        /// the node's private keys (disk.raw is mode 0600).
        #[arg(long, value_name = "DIR")]
        config: Option<PathBuf>,
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
    /// Pack a published TUF repository's metadata (WWW/metadata of `tuf
    /// publish`) as the initrd a PXE boot verifies its rootfs against.
    TufInitrd {
        #[arg(long)]
        metadata: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

/// Run one subcommand.
pub fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Build {
            out,
            version,
            kube_bin,
            init,
            bins,
            allowed_signers,
            tuf_root,
            repo,
        } => {
            let repo = repo.unwrap_or_else(crate::default_repo_root);
            let built = crate::build_image(&crate::BuildInputs {
                repo_root: &repo,
                out: &out,
                version: &version,
                kube_bin: &kube_bin,
                init_binary: &init,
                cairn_bins: bins,
                allowed_signers: &allowed_signers,
                tuf_root: tuf_root.as_deref(),
            })
            .context("image build failed")?;
            println!("{}", serde_json::to_string_pretty(&built.summary())?);
        }
        Cmd::Release {
            repo,
            keys,
            from,
            version,
            kernel_args,
            work,
        } => {
            let r = crate::release::release_command(
                &repo,
                keys.as_deref(),
                &from,
                &version,
                &kernel_args,
                work.as_deref(),
            )
            .context("release failed")?;
            for t in &r.targets {
                println!("signed target {t}");
            }
            println!("dm-verity root hash {}", r.verity_root_hash);
        }
        Cmd::Disk {
            out,
            version,
            from,
            kube_bin,
            init,
            bins,
            allowed_signers,
            tuf_root,
            repo,
            esp_mib,
            root_mib,
            verity_mib,
            state_mib,
            config,
        } => {
            let src = crate::DiskImageSource {
                from,
                kube_bin,
                init,
                bins,
                allowed_signers,
                tuf_root,
                repo,
            };
            let sizes = crate::disk::DiskSizes {
                esp_mib,
                root_mib,
                verity_mib,
                state_mib,
            };
            let disk = crate::disk_command(&version, src, sizes, config.as_deref(), &out)
                .context("disk build failed")?;
            println!("{}", serde_json::to_string_pretty(&disk)?);
        }
        Cmd::Pki { out, node, sans } => {
            let pki = crate::pki::generate(&crate::pki::PkiSpec {
                node_name: &node,
                api_sans: &sans,
            })?;
            crate::pki::write_node_tree(&pki, &out)?;
            println!("{}", out.display());
        }
        Cmd::Tuf(c) => c.run()?,
        Cmd::ConfigInitrd { tree, out } => {
            crate::pxe::config_initrd(&tree, &out)?;
            println!("{}", out.display());
        }
        Cmd::TufInitrd { metadata, out } => {
            crate::pxe::tuf_initrd(&metadata, &out)?;
            println!("{}", out.display());
        }
    }
    Ok(())
}
