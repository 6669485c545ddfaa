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

/// glibc's allocator keeps one arena per thread that allocates and rarely
/// gives freed pages back: with one arena and a trim after every pass, the
/// agent's resident set follows what it holds (the rendered set and the
/// inventory), not the peak of a render.
fn limit_arenas() {
    // SAFETY: mallopt only sets an allocator parameter; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        // large, short-lived buffers (HTTP bodies, list pages) go to mmap
        // and back to the system on free, instead of growing the heap
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 * 1024);
    }
}

fn release_memory() {
    // SAFETY: malloc_trim is thread-safe and only returns free heap pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn main() -> anyhow::Result<()> {
    limit_arenas();
    // one thread is plenty for a node agent's I/O; render, policy and git
    // work runs on the blocking pool
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(agent_main())
}

async fn agent_main() -> anyhow::Result<()> {
    init_logging();
    let cli = Cli::parse();
    let cfg = cairn_agent::AgentConfig::load(&cli.config)?;
    let agent = cairn_agent::Agent::new(cfg).await?;
    log::info!(
        "node={} cairn-agent {} started",
        agent.node_name(),
        env!("CARGO_PKG_VERSION")
    );
    agent.run_with(release_memory).await;
    Ok(())
}
