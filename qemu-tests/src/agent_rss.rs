//! The agent's memory while it manages 1,000 objects: the real `cairn-agent`
//! binary (release build, as shipped) against a real kube-apiserver + etcd,
//! following a signed fleet repository that renders 1,001 objects. It
//! verifies, renders, applies, then keeps reconciling (every 2 s) and
//! corrects a drifted object. Its resident set while it manages the
//! converged set (sampled every 0.5 s through the drift correction and the
//! passes after it) is compared with the issue's 30 MiB target (printed) and
//! asserted below [`MAX_RSS_KIB`]; the peak of the first render (VmHWM) is
//! reported next to it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// The issue's target (Flux's kustomize-controller: 112 MiB for 1,000).
pub const TARGET_RSS_KIB: u64 = 30 * 1024;

/// What the tier asserts: the issue's target itself (28.8 MiB measured on
/// the reference machine once libgit2 no longer initialized OpenSSL).
pub const MAX_RSS_KIB: u64 = TARGET_RSS_KIB;

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("{field} in /proc/{pid}/status"))
}

/// Resident KiB per mapped file (anonymous mappings as `[anon]`), from
/// `/proc/PID/smaps`, largest first.
fn by_mapping(smaps: &str) -> Vec<(String, u64)> {
    let mut sums: std::collections::BTreeMap<String, u64> = Default::default();
    let mut current = String::new();
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let first = f.next().unwrap_or_default();
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            // address perms offset dev inode [path]
            let path = f.nth(4).unwrap_or("[anon]");
            current = path.rsplit('/').next().unwrap_or(path).to_string();
        } else if first == "Rss:" {
            let kib: u64 = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            *sums.entry(current.clone()).or_default() += kib;
        }
    }
    let mut v: Vec<(String, u64)> = sums.into_iter().filter(|(_, k)| *k > 0).collect();
    v.sort_by_key(|(_, kib)| std::cmp::Reverse(*kib));
    v
}

fn write_fleet(dir: &Path, hostname: &str) -> Result<()> {
    std::fs::create_dir_all(dir.join("clusters/bench"))?;
    std::fs::create_dir_all(dir.join("nodes"))?;
    // no controllers run next to this API server: nothing would become healthy
    std::fs::write(
        dir.join("fleet.yaml"),
        "os:\n  version: \"0.1.0\"\napply:\n  healthTimeout: 0s\n",
    )?;
    std::fs::write(dir.join("clusters/bench/cluster.yaml"), "name: bench\n")?;
    let mut yaml = String::new();
    for o in cairn_kubetest::sample_objects("bench", 333) {
        yaml.push_str("---\n");
        yaml.push_str(&serde_yaml::to_string(&o)?);
    }
    std::fs::write(dir.join("clusters/bench/objects.yaml"), yaml)?;
    std::fs::write(
        dir.join("clusters/bench/kustomization.yaml"),
        "resources:\n  - objects.yaml\n",
    )?;
    std::fs::write(
        dir.join("nodes/bench-node.yaml"),
        format!("cluster: bench\nrole: worker\nmatch:\n  hostname: {hostname}\nlabels:\n  cairn.dev/bench: \"true\"\n"),
    )?;
    Ok(())
}

/// Build the guest binaries, measure, print the numbers against the
/// target and the asserted bound; true when within the bound.
pub fn measure_and_report() -> Result<bool> {
    // CAIRN_RSS_AGENT: measure another build of the agent (e.g. other
    // linker flags) instead of the image's
    let agent = match std::env::var_os("CAIRN_RSS_AGENT") {
        Some(p) => std::path::PathBuf::from(p),
        None => crate::prepare::guest_binaries(&crate::repo_root())?.agent,
    };
    let (peak, now) = run(&agent)?;
    let mib = |k: u64| k as f64 / 1024.0;
    println!(
        "cairn-agent managing 1,001 objects: RSS while managing them {:.1} MiB \
         (issue target {:.0} MiB: {}; asserted < {:.0} MiB; first-render peak {:.1} MiB)",
        mib(now),
        mib(TARGET_RSS_KIB),
        if now < TARGET_RSS_KIB {
            "met"
        } else {
            "NOT MET"
        },
        mib(MAX_RSS_KIB),
        mib(peak),
    );
    Ok(now < MAX_RSS_KIB)
}

/// Run the measurement; returns (VmHWM KiB, highest VmRSS KiB while managing the converged set).
pub fn run(agent_bin: &Path) -> Result<(u64, u64)> {
    let repo = crate::repo_root();
    let cp = cairn_kubetest::ControlPlane::start()?;
    let work = tempfile::tempdir()?;
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")?
        .trim()
        .to_string();
    let gitops = work.path().join("gitops");
    write_fleet(&gitops, &hostname)?;
    let key = crate::prepare::demo_key()?;
    let fleet = crate::fleet::FleetRepo::create(work.path(), &gitops, &key)?;
    let commit = crate::fleet_head(&fleet)?;
    let node = work.path().join("node.yaml");
    std::fs::write(
        &node,
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: bench-node\n",
    )?;
    cp.kubectl(&["create", "-f", node.to_str().context("utf-8")?])?;

    let cfg = cairn_agent::AgentConfig {
        source: cairn_agent::config::SourceSettings {
            url: fleet.bare.display().to_string(),
            branch: "main".into(),
            interval_seconds: 2,
            ssh: None,
        },
        kubeconfig: cp.kubeconfig.clone(),
        trust: key.allowed_signers.clone(),
        state_dir: work.path().join("state"),
        node_name: Some("bench-node".into()),
        policies: repo.join("policies"),
        update: None,
    };
    let cfg_path = work.path().join("agent.yaml");
    std::fs::write(&cfg_path, serde_yaml::to_string(&cfg)?)?;
    let log = std::fs::File::create(work.path().join("agent.log"))?;
    let child = Command::new(agent_bin)
        .arg("--config")
        .arg(&cfg_path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", agent_bin.display()))?;
    let agent = Kill(child);
    let pid = agent.0.id();
    let tail = || {
        let s = std::fs::read_to_string(work.path().join("agent.log")).unwrap_or_default();
        let lines: Vec<&str> = s.lines().rev().take(15).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    };
    let revision = || {
        cp.kubectl(&[
            "get",
            "secret",
            "cairn-bench",
            "-n",
            "kube-system",
            "-o",
            "jsonpath={.metadata.annotations.cairn\\.dev/applied-revision}",
        ])
        .unwrap_or_default()
    };
    let applied = crate::wait_until(
        "the agent to apply 1,001 objects",
        Duration::from_secs(300),
        || Ok((revision() == commit).then_some(())),
    );
    if let Err(e) = applied {
        bail!("{e:#}\nagent log:\n{}", tail());
    }
    let n = cp
        .kubectl(&["get", "deploy,svc,cm", "-n", "bench", "-o", "name"])?
        .lines()
        .count();
    if n < 1000 {
        bail!("only {n} objects in namespace bench after the agent applied");
    }
    // the pass that applied ends (and returns its heap) before the next
    // starts, 2 s later: measure from the second pass on
    std::thread::sleep(Duration::from_secs(5));
    // steady state with a drift to correct
    cp.kubectl(&[
        "patch",
        "cm",
        "shared",
        "-n",
        "bench",
        "--type=merge",
        "-p",
        r#"{"data":{"k":"drifted"}}"#,
    ])?;
    let mut steady = 0u64;
    let fixed = crate::wait_until(
        "the agent to correct the drifted ConfigMap",
        Duration::from_secs(120),
        || {
            steady = steady.max(status_kib(pid, "VmRSS:")?);
            let v = cp.kubectl(&[
                "get",
                "cm",
                "shared",
                "-n",
                "bench",
                "-o",
                "jsonpath={.data.k}",
            ])?;
            Ok((v == "v").then_some(()))
        },
    );
    if let Err(e) = fixed {
        bail!("{e:#}\nagent log:\n{}", tail());
    }
    // a few more no-op passes (every 2 s)
    for _ in 0..16 {
        steady = steady.max(status_kib(pid, "VmRSS:")?);
        std::thread::sleep(Duration::from_millis(500));
    }
    let peak = status_kib(pid, "VmHWM:")?;
    eprintln!(
        "agent-rss: at the end RssAnon {} KiB, RssFile {} KiB (the binary's and shared libraries' pages); by mapping: {}",
        status_kib(pid, "RssAnon:")?,
        status_kib(pid, "RssFile:")?,
        by_mapping(&std::fs::read_to_string(format!("/proc/{pid}/smaps"))?)
            .iter()
            .take(8)
            .map(|(name, kib)| format!("{name} {kib} KiB"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok((peak, steady))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaps_is_summed_per_file_and_anonymous() {
        let smaps = "\
55d0a0000000-55d0a0100000 r-xp 00000000 fe:01 123 /usr/bin/cairn-agent
Size:               1024 kB
Rss:                 600 kB
55d0a0200000-55d0a0300000 r--p 00100000 fe:01 123 /usr/bin/cairn-agent
Rss:                 100 kB
7f0000000000-7f0000400000 rw-p 00000000 00:00 0
Rss:                2048 kB
7f0000400000-7f0000500000 rw-p 00000000 00:00 0 [heap]
Rss:                 300 kB
";
        assert_eq!(
            by_mapping(smaps),
            [
                ("[anon]".to_string(), 2048),
                ("cairn-agent".to_string(), 700),
                ("[heap]".to_string(), 300)
            ]
        );
    }
}
