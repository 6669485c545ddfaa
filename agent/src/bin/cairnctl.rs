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

fn run(cli: Cli) -> Result<(), String> {
    match cli.cmd {
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
