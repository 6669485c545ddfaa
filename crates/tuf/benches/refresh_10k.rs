//! Refresh of a repository with 10,000 targets: cairn's client against
//! python-tuf's ngclient, same repository, same local HTTP server, same run.
//!
//!     cargo bench -p cairn-tuf --bench refresh_10k
//!
//! Prints both times (median and min of fresh-directory refreshes, each
//! `Updater` construction + `refresh()`; python's interpreter start-up and
//! imports are excluded; rounds of the two alternate) and the ratio of the
//! medians. Exits non-zero if cairn is not at
//! most 1/10 of python-tuf's time, or if python-tuf is missing
//! (`pip install -r crates/tuf/tests/interop/requirements.txt`).

#[path = "../tests/common/server.rs"]
mod server;

use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant, SystemTime};

use cairn_tuf::repository::{image_custom, InitOptions, Repository, TargetName};
use cairn_tuf::{Config, HttpTransport, ImageMetadata, Updater};
use sha2::{Digest, Sha256};

const TARGETS: usize = 10_000;
const ROUNDS: usize = 3;
const RUST_PER_ROUND: usize = 8;
const PYTHON_PER_ROUND: usize = 3;
const MAX_RATIO: f64 = 0.1;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> ExitCode {
    let python = std::env::var("CAIRN_TUF_PYTHON").unwrap_or_else(|_| "python3".into());
    let check = Command::new(&python)
        .args(["-c", "import tuf.ngclient"])
        .status();
    if !matches!(check, Ok(s) if s.success()) {
        eprintln!(
            "refresh_10k: python-tuf is missing for {python}: pip install -r crates/tuf/tests/interop/requirements.txt"
        );
        return ExitCode::FAILURE;
    }

    let tmp = tempfile::tempdir().unwrap();
    let repo_dir = tmp.path().join("repo");
    let now = SystemTime::now();
    let mut repo = Repository::init(&repo_dir, None, &InitOptions::default(), now).unwrap();
    let entries = (0..TARGETS).map(|i| {
        let name =
            TargetName::new(&format!("images/cairn-0.{}.{}.rootfs", i / 100, i % 100)).unwrap();
        let sha = hex::encode(Sha256::digest(format!("image {i}")));
        let custom = image_custom(&ImageMetadata {
            version: Some(format!("0.{}.{}", i / 100, i % 100)),
            rootfs_hash: Some(format!("sha256:{sha}")),
            verity_root_hash: Some(sha.clone()),
            min_agent_version: Some("0.1.0".into()),
        });
        (name, 300_000_000 + i as u64, sha, Some(custom))
    });
    repo.add_target_entries(entries).unwrap();
    repo.sign(&[]).unwrap();
    let public = tmp.path().join("public");
    repo.publish(&public).unwrap();
    let targets_size = std::fs::metadata(public.join("metadata/targets.json"))
        .unwrap()
        .len();
    let root = public.join("metadata/1.root.json");
    let server = server::Server::start(&public);

    // Rounds alternate python-tuf and cairn, so both see the same machine
    // load (this machine is shared with builds and VMs).
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/bench_refresh.py");
    let mut py_times = Vec::new();
    let mut times = Vec::new();
    for round in 0..ROUNDS {
        let out = Command::new(&python)
            .arg(&script)
            .arg(server.url("metadata/"))
            .arg(&root)
            .arg(PYTHON_PER_ROUND.to_string())
            .output()
            .expect("run python");
        if !out.status.success() {
            eprintln!(
                "python-tuf refresh failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            return ExitCode::FAILURE;
        }
        let py: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        py_times.extend(
            py["times"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| Duration::from_secs_f64(t.as_f64().unwrap())),
        );
        for i in 0..RUST_PER_ROUND {
            let md = tmp.path().join(format!("cairn-{round}-{i}"));
            std::fs::create_dir_all(&md).unwrap();
            std::fs::copy(&root, md.join("root.json")).unwrap();
            let t0 = Instant::now();
            let mut up = Updater::new(
                Config {
                    metadata_dir: md,
                    metadata_base_url: server.url("metadata"),
                    targets_base_url: server.url("targets"),
                    start_time: SystemTime::now(),
                    ..Default::default()
                },
                HttpTransport::new(),
            )
            .unwrap();
            up.refresh().unwrap();
            times.push(t0.elapsed());
            assert_eq!(
                up.trusted_targets("targets").unwrap().target_count(),
                TARGETS
            );
        }
    }
    let (py_runs, rust_runs) = (py_times.len(), times.len());
    let py_min = *py_times.iter().min().unwrap();
    let our_min = *times.iter().min().unwrap();
    let py_median = median(py_times);
    let ours = median(times);

    let ratio = ours.as_secs_f64() / py_median.as_secs_f64();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("refresh of {TARGETS} targets (targets.json {targets_size} bytes):");
    println!(
        "  python-tuf ngclient: median {:>8.2} ms, min {:>8.2} ms ({py_runs} runs)",
        ms(py_median),
        ms(py_min)
    );
    println!(
        "  cairn-tuf:           median {:>8.2} ms, min {:>8.2} ms ({rust_runs} runs)",
        ms(ours),
        ms(our_min)
    );
    println!("  ratio cairn/python (medians): {ratio:.3} (must be <= {MAX_RATIO})");
    if ratio > MAX_RATIO {
        eprintln!("refresh_10k: cairn-tuf is slower than 1/10 of python-tuf");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
