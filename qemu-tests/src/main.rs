//! `qemu-tests demo` boots a cairn node in QEMU; `qemu-tests test` runs every test tier.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "qemu-tests", about = "cairn's demo and test runner")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the image, sign a fleet repo, PXE-boot one QEMU node and wait until it converges.
    Demo {
        /// Exit after convergence, printing one JSON line with the phase timings.
        #[arg(long)]
        headless: bool,
        /// Working directory for artifacts, logs and the fleet repository.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Measure cairn-agent's peak memory while it manages 1,001 objects
    /// against a real API server (one of the test tiers).
    AgentRss,
    /// Run every test tier: lints, unit tests, then the slow tiers (QEMU).
    Test {
        /// Skip the QEMU tier (the run says that it was skipped and why).
        #[arg(long)]
        no_qemu: bool,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let r = match Cli::parse().cmd {
        Cmd::Demo { headless, out } => qemu_tests::demo::run(headless, out).map(|_| true),
        Cmd::Test { no_qemu } => qemu_tests::runner::run_all(no_qemu),
        Cmd::AgentRss => {
            let repo = qemu_tests::repo_root();
            qemu_tests::prepare::guest_binaries(&repo)
                .and_then(|b| qemu_tests::agent_rss::run(&b.agent))
                .map(|(peak, now)| {
                    println!(
                        "cairn-agent managing 1,001 objects: RSS while managing them {:.1} MiB (issue target {} MiB: {}; asserted < {} MiB; first-render peak {:.1} MiB)",
                        now as f64 / 1024.0,
                        qemu_tests::agent_rss::TARGET_RSS_KIB / 1024,
                        if now < qemu_tests::agent_rss::TARGET_RSS_KIB { "met" } else { "NOT MET" },
                        qemu_tests::agent_rss::MAX_RSS_KIB / 1024,
                        peak as f64 / 1024.0,
                    );
                    now < qemu_tests::agent_rss::MAX_RSS_KIB
                })
        }
    };
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
