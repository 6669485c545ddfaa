//! What `cairnctl policy check DIR [--node NAME]` does, as a standalone
//! example: render DIR (a fleet repository, or any kustomization directory),
//! check it against the baked policies plus the repository's own, print every
//! violation, and exit 1 if any is a `deny` (2 if loading or rendering failed).
//!
//! `cargo run --manifest-path crates/policy/Cargo.toml --example check -- gitops --node node1`
//!
//! `--policies DIR` names the baked policy directory; the default here is the
//! source tree's `policies/` (on a node it is `/usr/share/cairn/policies`).

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut dir: Option<PathBuf> = None;
    let mut node: Option<String> = None;
    let mut policies = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../policies");
    while let Some(a) = args.next() {
        match a.as_str() {
            "--node" => node = args.next(),
            "--policies" => policies = args.next().map(PathBuf::from).unwrap_or(policies),
            _ => dir = Some(PathBuf::from(a)),
        }
    }
    let Some(dir) = dir else {
        eprintln!("usage: check DIR [--node NAME] [--policies DIR]");
        return ExitCode::from(2);
    };
    match cairn_policy::check_tree(&dir, node.as_deref(), &policies) {
        Ok(report) => {
            print!("{report}");
            if report.has_deny() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("policy check: {e}");
            ExitCode::from(2)
        }
    }
}
