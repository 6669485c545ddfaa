//! The node agent daemon. Logs to journald when run by systemd.

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "cairn-agent",
    about = "Converge this node to its signed fleet repository"
)]
struct Cli {
    #[arg(long, default_value = "/etc/cairn/agent.yaml")]
    config: PathBuf,
}

fn init_logging() {
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    if journald {
        if let Ok(j) = systemd_journal_logger::JournalLog::new() {
            if j.with_syslog_identifier("cairn-agent".into())
                .install()
                .is_ok()
            {
                log::set_max_level(log::LevelFilter::Info);
                return;
            }
        }
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    let cli = Cli::parse();
    let cfg = cairn_agent::AgentConfig::load(&cli.config)?;
    let agent = cairn_agent::Agent::new(cfg).await?;
    log::info!(
        "node={} cairn-agent {} started",
        agent.node_name(),
        env!("CARGO_PKG_VERSION")
    );
    agent.run().await;
    Ok(())
}
