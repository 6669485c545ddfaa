//! `cairnctl`: operate a cairn node and its fleet repository from the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cairnctl",
    about = "Operate cairn nodes and fleet repositories"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The signed Git source.
    Source {
        #[command(subcommand)]
        cmd: SourceCmd,
    },
    /// Policies over rendered objects.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Render DIR and server-side apply it as one ApplySet (what the agent does).
    Apply(ApplyArgs),
    /// OS updates on this node (A/B slots).
    Update {
        #[command(subcommand)]
        cmd: UpdateCmd,
    },
    /// Install cairn onto this PXE-booted node's disk (slot A: the running
    /// version, from the update repository), seed STATE with the node's
    /// configuration, and optionally reboot into it.
    Install(InstallArgs),
    /// Render a directory (or a node of a fleet repo) and print the objects as YAML.
    Render {
        dir: PathBuf,
        /// Render the fleet repository's entry for this node.
        #[arg(long)]
        node: Option<String>,
        /// Extra values files for templates (later ones win).
        #[arg(long = "values")]
        values: Vec<PathBuf>,
    },
}

#[derive(clap::Args)]
struct ApplyArgs {
    /// A fleet repository (with --node) or any kustomization directory.
    dir: PathBuf,
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Render the fleet repository's entry for this node.
    #[arg(long)]
    node: Option<String>,
    /// Delete objects of the ApplySet that DIR no longer renders.
    #[arg(long)]
    prune: bool,
    /// Wait for every object to become healthy (default 5m; e.g. --wait=90s).
    #[arg(long, num_args = 0..=1, default_missing_value = "5m", value_name = "TIMEOUT")]
    wait: Option<String>,
    /// Server-side dry run: validate everything, write nothing.
    #[arg(long, conflicts_with = "diff")]
    dry_run: bool,
    /// Print a unified diff per object (server-side dry run), write nothing.
    #[arg(long)]
    diff: bool,
    /// Take over fields that another field manager applied.
    #[arg(long)]
    force: bool,
    /// Accept an empty render (with --prune: deletes every object of the set).
    #[arg(long)]
    allow_empty: bool,
    /// ApplySet parent Secret name (default: the agent's, cairn-<cluster>, with
    /// --node; otherwise cairn-<directory name>).
    #[arg(long)]
    applyset: Option<String>,
    /// Namespace of the ApplySet parent Secret.
    #[arg(long, default_value = "kube-system")]
    applyset_namespace: String,
}

#[derive(clap::Args)]
struct InstallArgs {
    /// The whole disk, e.g. /dev/vda or /dev/nvme0n1.
    #[arg(long, required_unless_present = "from_cmdline")]
    disk: Option<PathBuf>,
    /// Take the disk from the kernel command line (`cairn.install=/dev/vda`);
    /// does nothing when it is not there.
    #[arg(long, conflicts_with = "disk")]
    from_cmdline: bool,
    /// The OS version to install (default: the running one).
    #[arg(long)]
    version: Option<String>,
    /// The agent's configuration (its `update:` names the update repository).
    #[arg(long, default_value = "/etc/cairn/agent.yaml")]
    config: PathBuf,
    /// The node configuration tree copied into STATE's /etc.
    #[arg(long, default_value = cairn_agent::os::install::KEPT_CONFIG)]
    seed: PathBuf,
    /// Overwrite a disk that holds other data or a finished cairn install.
    #[arg(long)]
    force: bool,
    /// Reboot into the disk when the install succeeded.
    #[arg(long)]
    reboot: bool,
    #[arg(long, default_value_t = 128)]
    esp_mib: u64,
    #[arg(long, default_value_t = 1024)]
    root_mib: u64,
    #[arg(long, default_value_t = 16)]
    verity_mib: u64,
    /// STATE's size (default: the rest of the disk).
    #[arg(long)]
    state_mib: Option<u64>,
}

fn install(a: InstallArgs) -> Result<(), String> {
    let disk = match (a.disk, a.from_cmdline) {
        (Some(d), _) => d,
        (None, _) => {
            let cmdline = std::fs::read_to_string("/proc/cmdline")
                .map_err(|e| format!("reading /proc/cmdline: {e}"))?;
            match cairn_agent::os::install::disk_from_cmdline(&cmdline) {
                Some(d) => d,
                None => {
                    println!("cairn install: no cairn.install= on the kernel command line; nothing to do");
                    return Ok(());
                }
            }
        }
    };
    let cfg = cairn_agent::AgentConfig::load(&a.config).map_err(|e| e.to_string())?;
    let update = cfg.update.as_ref().ok_or_else(|| {
        format!(
            "{} has no update: section; the install reads the OS image from the update repository named there",
            a.config.display()
        )
    })?;
    let req = cairn_agent::os::install::InstallRequest {
        disk: disk.clone(),
        version: a.version,
        tuf: cairn_agent::os::images::TufSettings {
            metadata_url: update.metadata_url.clone(),
            targets_url: update.targets_url.clone(),
            trusted_root: update.trusted_root.clone(),
            metadata_dir: cairn_agent::os::images::metadata_dir(&cfg.state_dir),
        },
        sizes: cairn_slots::install::Sizes {
            esp_mib: a.esp_mib,
            root_mib: a.root_mib,
            verity_mib: a.verity_mib,
            state_mib: a.state_mib,
        },
        force: a.force,
        config_etc: a.seed,
    };
    let say = |line: String| println!("cairn install: {line}");
    let (version, report) = cairn_agent::os::install::install_disk(&req, say)
        .map_err(|e| format!("cairn install on {} failed: {e}", disk.display()))?;
    println!(
        "cairn install: installed {version} on {} as slot a ({}) in {:.0} s; root-a written at {:.0} MB/s and read back at {:.0} MB/s",
        disk.display(),
        report.entry,
        report.seconds,
        report.root.write_throughput() / 1e6,
        report.root.verify_throughput() / 1e6
    );
    if a.reboot {
        println!("cairn install: rebooting into the disk");
        cairn_agent::os::host::systemctl_reboot(true)?;
    }
    Ok(())
}

#[derive(Subcommand)]
enum UpdateCmd {
    /// Both slots, their versions and tries left, the update in flight and the last result.
    Status {
        /// The agent's state directory.
        #[arg(long, default_value = "/var/lib/cairn")]
        state_dir: PathBuf,
        /// A mounted ESP (default: mount the cairn disk's ESP on /run/cairn/esp).
        #[arg(long)]
        esp: Option<PathBuf>,
    },
    /// Allow a version that failed to be tried again.
    Unblock {
        #[arg(long, default_value = "/var/lib/cairn")]
        state_dir: PathBuf,
    },
    /// Guard a slot on trial independently of the agent: if the health gate
    /// is still undecided GRACE seconds after its deadline (or was never
    /// started UNNOTED seconds after boot), mark the slot bad and reboot.
    /// Runs from boot as cairn-trial-watchdog.service; exits when nothing
    /// is on trial.
    Watchdog {
        /// The agent's configuration (its stateDir is where the state is).
        #[arg(long, default_value = "/etc/cairn/agent.yaml")]
        config: PathBuf,
        #[arg(long, default_value_t = 300)]
        grace: u64,
        #[arg(long, default_value_t = 1800)]
        unnoted: u64,
    },
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Render DIR (a fleet repo: every node, or --node) and check it; exit 1 on any deny.
    Check {
        dir: PathBuf,
        #[arg(long)]
        node: Option<String>,
        /// The baked policy directory (on a node: /usr/share/cairn/policies).
        #[arg(long, default_value = cairn_policy::BAKED_POLICY_DIR)]
        policies: PathBuf,
    },
}

#[derive(Subcommand)]
enum SourceCmd {
    /// Fetch, verify every new commit, record the new tip and print its id.
    Pull {
        #[arg(long)]
        url: String,
        #[arg(long, default_value = "main")]
        branch: String,
        /// allowed_signers file: the trust root.
        #[arg(long)]
        trust: PathBuf,
        #[arg(long)]
        state: PathBuf,
    },
}

fn apply(a: ApplyArgs) -> Result<(), String> {
    let (objects, set_name) = match &a.node {
        Some(name) => {
            let fleet = cairn_render::Fleet::load(&a.dir).map_err(|e| e.to_string())?;
            let plan = fleet.plan_for(name).map_err(|e| e.to_string())?;
            let r = cairn_render::render_node(&a.dir, &plan).map_err(|e| e.to_string())?;
            (r.objects, cairn_agent::applyset_name(&plan.cluster))
        }
        None => {
            let r = cairn_render::render_dir(&a.dir, &cairn_render::TemplateContext::default())
                .map_err(|e| e.to_string())?;
            let base = a
                .dir
                .canonicalize()
                .ok()
                .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "set".into());
            (r.objects, format!("cairn-{base}"))
        }
    };
    let wait = match &a.wait {
        Some(w) => Some(std::time::Duration::from_secs(
            cairn_render::parse_duration_seconds(w)
                .ok_or_else(|| format!("--wait {w:?}: expected a duration like 90s, 5m or 1h"))?,
        )),
        None => None,
    };
    let opts = cairn_apply::Options {
        force: a.force,
        prune: a.prune,
        allow_empty: a.allow_empty,
        dry_run: a.dry_run,
        diff: a.diff,
        wait,
        ..Default::default()
    };
    let parent = cairn_apply::ParentRef::new(
        a.applyset.as_deref().unwrap_or(&set_name),
        &a.applyset_namespace,
    );
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let report = rt.block_on(async {
        let client = cairn_agent::client_from_kubeconfig(&a.kubeconfig)
            .await
            .map_err(|e| e.to_string())?;
        let mut applier = cairn_apply::Applier::new(client, parent);
        applier
            .apply(&objects, &opts)
            .await
            .map_err(|e| e.to_string())
    })?;
    print!("{report}");
    if !report.ok() {
        return Err(format!(
            "{} object(s) failed, {} unhealthy (see above)",
            report.failed.len(),
            report.unhealthy.len()
        ));
    }
    Ok(())
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.cmd {
        Cmd::Apply(a) => apply(a)?,
        Cmd::Install(a) => install(a)?,
        Cmd::Update {
            cmd: UpdateCmd::Status { state_dir, esp },
        } => {
            let booted = cairn_agent::os::host::booted()?;
            let st = cairn_agent::os::status_report(
                &state_dir,
                esp,
                booted,
                std::path::Path::new("/sys/firmware/efi/efivars"),
            )?;
            print!("{st}");
        }
        Cmd::Update {
            cmd:
                UpdateCmd::Watchdog {
                    config,
                    grace,
                    unnoted,
                },
        } => {
            let cfg = cairn_agent::AgentConfig::load(&config).map_err(|e| e.to_string())?;
            println!(
                "{}",
                cairn_agent::os::watchdog(&cfg.state_dir, grace, unnoted)?
            )
        }
        Cmd::Update {
            cmd: UpdateCmd::Unblock { state_dir },
        } => match cairn_agent::os::unblock(&state_dir)? {
            Some(b) => println!("{} may be tried again (it failed: {})", b.version, b.reason),
            None => println!("no version is blocked"),
        },
        Cmd::Policy {
            cmd:
                PolicyCmd::Check {
                    dir,
                    node,
                    policies,
                },
        } => {
            let report = cairn_policy::check_tree(&dir, node.as_deref(), &policies)
                .map_err(|e| e.to_string())?;
            print!("{report}");
            if report.has_deny() {
                return Err(
                    "policy check: at least one deny violation (nothing would be applied)".into(),
                );
            }
        }
        Cmd::Source {
            cmd:
                SourceCmd::Pull {
                    url,
                    branch,
                    trust,
                    state,
                },
        } => {
            let cfg = cairn_source::SourceConfig::from_cli(&url, &branch, &trust, &state)
                .map_err(|e| e.to_string())?;
            let v = cairn_source::pull(cfg).map_err(|e| e.to_string())?;
            println!("{}", v.id());
        }
        Cmd::Render { dir, node, values } => {
            let rendered = match node {
                Some(name) => {
                    let fleet = cairn_render::Fleet::load(&dir).map_err(|e| e.to_string())?;
                    let mut plan = fleet.plan_for(&name).map_err(|e| e.to_string())?;
                    for v in &values {
                        plan.context
                            .overlay_values_file(v)
                            .map_err(|e| e.to_string())?;
                    }
                    cairn_render::render_node(&dir, &plan)
                }
                None => {
                    let mut ctx = cairn_render::TemplateContext::default();
                    for v in &values {
                        ctx.overlay_values_file(v).map_err(|e| e.to_string())?;
                    }
                    cairn_render::render_dir(&dir, &ctx)
                }
            }
            .map_err(|e| e.to_string())?;
            print!("{}", rendered.to_yaml_stream());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairnctl: {e}");
            ExitCode::FAILURE
        }
    }
}
