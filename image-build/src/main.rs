//! `cairn-image`: build cairn's boot artifacts. See the library for the steps.

use clap::Parser;

#[derive(Parser)]
#[command(name = "cairn-image", about = "Build cairn images and boot artifacts")]
struct Cli {
    #[command(subcommand)]
    cmd: cairn_image::cli::Cmd,
}

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    cairn_image::cli::run(Cli::parse().cmd)
}
