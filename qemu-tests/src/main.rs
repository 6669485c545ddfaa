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
        Cmd::AgentRss => qemu_tests::agent_rss::measure_and_report(),
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
