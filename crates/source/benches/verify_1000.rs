//! Verifying 1,000 signed commits: the library against a shell loop of
//! `git verify-commit` over the same commits. Fails (exit 1) unless the
//! library takes under 1/50 of the loop's time.
//!
//! `cargo bench -p cairn-source --bench verify_1000`
//!
//! The fixture (a repository of 1,000 commits signed by real `git commit-tree
//! -S` with an ssh-keygen ed25519 key, carrying a `.cairn/allowed_signers`)
//! is built once and cached under the target directory.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use cairn_source::{verify_local, AllowedSigners, CommitId, Verified};

const COMMITS: usize = 1000;
const REQUIRED_RATIO: f64 = 50.0;

fn git(dir: &Path) -> Command {
    let mut c = Command::new("git");
    c.current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Bench")
        .env("GIT_AUTHOR_EMAIL", "bench@example.com")
        .env("GIT_COMMITTER_NAME", "Bench")
        .env("GIT_COMMITTER_EMAIL", "bench@example.com");
    c
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Build (or reuse) the fixture; returns (repo dir, allowed_signers path).
fn fixture() -> (PathBuf, PathBuf) {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("verify_1000-fixture");
    let repo = base.join("repo");
    let allowed = base.join("allowed_signers");
    if base.join("complete").exists() {
        return (repo, allowed);
    }
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&repo).unwrap();
    let key = base.join("key");
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f"])
        .arg(&key));
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let line = format!("bench@example.com {}", public.trim());
    std::fs::write(&allowed, format!("{line}\n")).unwrap();

    eprintln!(
        "building a {COMMITS}-commit signed fixture in {} ...",
        repo.display()
    );
    let start = Instant::now();
    run(git(&repo).args(["init", "-q", "-b", "main"]));
    std::fs::create_dir_all(repo.join(".cairn")).unwrap();
    std::fs::write(repo.join(".cairn/allowed_signers"), format!("{line}\n")).unwrap();
    std::fs::write(repo.join("app.yaml"), "replicas: 1\n").unwrap();
    run(git(&repo).args(["add", "."]));
    let tree = run(git(&repo).args(["write-tree"])).trim().to_string();
    // One shell loop: commit-tree -S signs through ssh-keygen, like
    // `git commit -S`.
    let script = format!(
        r#"set -e
parent=""
for i in $(seq 1 {COMMITS}); do
  if [ -z "$parent" ]; then
    parent=$(git -c gpg.format=ssh -c user.signingkey="$KEY" commit-tree -S -m "commit $i" {tree})
  else
    parent=$(git -c gpg.format=ssh -c user.signingkey="$KEY" commit-tree -S -p "$parent" -m "commit $i" {tree})
  fi
done
git update-ref refs/heads/main "$parent"
"#
    );
    run(Command::new("sh")
        .current_dir(&repo)
        .env("KEY", &key)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Bench")
        .env("GIT_AUTHOR_EMAIL", "bench@example.com")
        .env("GIT_COMMITTER_NAME", "Bench")
        .env("GIT_COMMITTER_EMAIL", "bench@example.com")
        .args(["-c", &script]));
    eprintln!("fixture built in {:.1?}", start.elapsed());
    std::fs::write(base.join("complete"), "").unwrap();
    (repo, allowed)
}

fn main() {
    let (repo, allowed) = fixture();
    let tip: CommitId = run(git(&repo).args(["rev-parse", "main"]))
        .trim()
        .parse()
        .unwrap();
    let count: usize = run(git(&repo).args(["rev-list", "--count", "main"]))
        .trim()
        .parse()
        .unwrap();
    assert_eq!(count, COMMITS);
    let trust = AllowedSigners::from_file(&allowed).unwrap();

    // The library: best of 5 full verifications of all 1,000 commits.
    let mut lib = Duration::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        let v = verify_local(&repo, &trust, None, tip).unwrap();
        let took = start.elapsed();
        match v {
            Verified::New(v) => assert_eq!(v.newly_verified(), COMMITS),
            other => panic!("unexpected {other:?}"),
        }
        lib = lib.min(took);
    }

    // git: one `git verify-commit` per commit, as a shell loop.
    let script = format!(
        "set -e; for c in $(git rev-list main); do git -c gpg.ssh.allowedSignersFile={} verify-commit $c 2>/dev/null; done",
        allowed.display()
    );
    let start = Instant::now();
    run(Command::new("sh")
        .current_dir(&repo)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .args(["-c", &script]));
    let shell = start.elapsed();

    let ratio = shell.as_secs_f64() / lib.as_secs_f64();
    println!("verify {COMMITS} signed commits:");
    println!("  git verify-commit loop: {:>10.3} s", shell.as_secs_f64());
    println!("  cairn-source          : {:>10.3} s", lib.as_secs_f64());
    println!("  ratio                 : {ratio:>10.1}x (required: > {REQUIRED_RATIO}x)");
    if ratio <= REQUIRED_RATIO {
        eprintln!("FAIL: library is not 1/{REQUIRED_RATIO} of the git loop");
        std::process::exit(1);
    }
}
