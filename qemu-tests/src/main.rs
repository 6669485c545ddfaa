//! `qemu-tests demo` boots a cairn node in QEMU; `qemu-tests test` runs every test tier.

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
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
    /// Run every test tier: lints, unit tests, then the slow tiers (QEMU).
    Test {
        /// Skip the QEMU tier (the run says that it was skipped and why).
        #[arg(long)]
        no_qemu: bool,
    },
}

fn demo(headless: bool, out: Option<PathBuf>) -> Result<()> {
    let out = out.unwrap_or_else(|| qemu_tests::repo_root().join("out/demo"));
    let demo = qemu_tests::demo::boot_and_converge(&qemu_tests::demo::DemoOptions::new(&out))?;
    if headless {
        println!("{}", serde_json::to_string(&demo.report())?);
        return Ok(());
    }
    eprintln!("\n{}", serde_json::to_string_pretty(&demo.report())?);
    eprintln!(
        "\nThe node is up and converged. While this command runs:\n\
         \n  API server:   kubectl --kubeconfig {kc} get pods -A\
         \n                (https://127.0.0.1:{port}, forwarded to the node's :6443)\
         \n  Change it:    cd {work}\
         \n                edit apps/hello/overlays/demo/kustomization.yaml (e.g. replicas count)\
         \n                git commit -S -am 'scale hello' && git push\
         \n                (signed with {key}; the node applies it within {poll} s)\
         \n  An unsigned commit (git commit --no-gpg-sign) is refused: see\
         \n                kubectl --kubeconfig {kc} get events   and the node's cairn.dev/* annotations\
         \n  Console:      {serial}\
         \n\nCtrl-C stops the node.",
        kc = demo.admin_kubeconfig.display(),
        port = demo.api_port,
        work = demo.fleet.work.display(),
        key = demo.fleet.key().display(),
        poll = qemu_tests::demo::POLL_SECONDS,
        serial = demo.guest.serial_log.display(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    ctrlc::set_handler(move || s.store(true, Ordering::SeqCst))?;
    let mut demo = demo;
    while !stop.load(Ordering::SeqCst) {
        demo.guest.check_alive()?;
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("stopping the node");
    Ok(())
}

/// One tier: a command, and whether its failure fails the run.
fn tier(name: &str, cmd: &mut Command) -> bool {
    eprintln!("\n=== tier: {name}\n    {cmd:?}");
    match cmd.status() {
        Ok(s) if s.success() => {
            eprintln!("=== tier {name}: passed");
            true
        }
        Ok(s) => {
            eprintln!("=== tier {name}: FAILED ({s})");
            false
        }
        Err(e) => {
            eprintln!("=== tier {name}: FAILED to start: {e}");
            false
        }
    }
}

fn test(no_qemu: bool) -> Result<bool> {
    let repo = qemu_tests::repo_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    qemu_tests::prepare::host_packages(&repo)?;
    let mut results = Vec::new();
    let c = |args: &[&str]| {
        let mut cmd = Command::new(&cargo);
        cmd.current_dir(&repo).args(args);
        cmd
    };
    results.push((
        "format",
        tier("format", &mut c(&["fmt", "--all", "--check"])),
    ));
    results.push((
        "clippy",
        tier(
            "clippy",
            &mut c(&[
                "clippy",
                "--workspace",
                "--all-targets",
                "--locked",
                "--",
                "-D",
                "warnings",
            ]),
        ),
    ));
    results.push((
        "unit",
        tier(
            "unit (cargo test)",
            &mut c(&["test", "--workspace", "--locked"]),
        ),
    ));
    for (name, script) in [
        ("fuzz-source", "crates/source/fuzz/run.sh"),
        ("fuzz-tuf", "crates/tuf/fuzz/run.sh"),
    ] {
        let mut fuzz = Command::new("bash");
        fuzz.current_dir(&repo).arg(script).arg("20");
        results.push((name, tier(&format!("fuzz: {script} (20 s)"), &mut fuzz)));
    }
    // python-tuf is the reference peer for the interop tier and the TUF benchmark
    let mut pip = Command::new("python3");
    pip.current_dir(&repo).args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "-r",
        "crates/tuf/tests/interop/requirements.txt",
    ]);
    let have_python_tuf = tier("python-tuf (pip install, pinned)", &mut pip);
    results.push(("python-tuf", have_python_tuf));
    results.push((
        "interop-tuf",
        have_python_tuf
            && tier(
                "TUF interop with python-tuf, both directions",
                &mut c(&[
                    "test",
                    "--locked",
                    "-p",
                    "cairn-tuf",
                    "--test",
                    "interop",
                    "--",
                    "--ignored",
                ]),
            ),
    ));
    for (name, pkg, bench) in [
        ("bench-source", "cairn-source", "verify_1000"),
        ("bench-render", "cairn-render", "render_1000"),
        ("bench-policy", "cairn-policy", "policy_1000"),
        ("bench-tuf", "cairn-tuf", "refresh_10k"),
    ] {
        results.push((
            name,
            tier(
                &format!("benchmark {pkg}/{bench} (ratio against the reference tool)"),
                &mut c(&["bench", "--locked", "-p", pkg, "--bench", bench]),
            ),
        ));
    }
    if no_qemu {
        eprintln!("\n=== tier: qemu SKIPPED: --no-qemu was given");
    } else {
        results.push((
            "qemu",
            tier(
                "qemu (slow: boots a node)",
                &mut c(&[
                    "test",
                    "--release",
                    "--locked",
                    "-p",
                    "qemu-tests",
                    "--test",
                    "skeleton",
                    "--",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ]),
            ),
        ));
    }
    let passed = results.iter().filter(|(_, ok)| *ok).count();
    let failed = results.len() - passed;
    for (name, ok) in &results {
        eprintln!("  {:<14} {}", name, if *ok { "passed" } else { "FAILED" });
    }
    println!("tiers: {passed} passed, {failed} failed");
    Ok(failed == 0)
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let r = match Cli::parse().cmd {
        Cmd::Demo { headless, out } => demo(headless, out).map(|_| true),
        Cmd::Test { no_qemu } => test(no_qemu),
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
