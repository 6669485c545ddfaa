//! The walking skeleton end to end: build, sign, serve, PXE-boot, converge.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use serde_json::json;

use crate::cluster::Cluster;
use crate::fleet::FleetRepo;
use crate::guest::{Guest, GuestSpec};
use crate::prepare::{PxeBoot, PxeDir};
use crate::servers::{free_port, GitDaemon, HttpServer};
use crate::{prepare, ui, wait_until};

pub const NODE: &str = "node1";
pub const APP_NAMESPACE: &str = "hello";
pub const APP_DEPLOYMENT: &str = "hello";
/// How often the demo node's agent polls the fleet repository.
pub const POLL_SECONDS: u64 = 10;

/// Deadlines: generous, these machines are slow and noisy.
pub const SWITCH_ROOT_DEADLINE: Duration = Duration::from_secs(600);
pub const NODE_READY_DEADLINE: Duration = Duration::from_secs(1200);
pub const APPLY_DEADLINE: Duration = Duration::from_secs(900);
pub const WORKLOAD_DEADLINE: Duration = Duration::from_secs(900);

pub struct DemoOptions {
    pub out: PathBuf,
    pub version: String,
}

impl DemoOptions {
    pub fn new(out: &Path) -> DemoOptions {
        DemoOptions {
            out: out.to_path_buf(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

/// A booted, converged demo node and everything serving it.
pub struct Demo {
    pub guest: Guest,
    pub cluster: Cluster,
    pub fleet: FleetRepo,
    pub api_port: u16,
    pub git_port: u16,
    pub admin_kubeconfig: PathBuf,
    pub phases: BTreeMap<&'static str, f64>,
    pub image_sizes: BTreeMap<&'static str, u64>,
    pub first_commit: String,
    _http: HttpServer,
    _git: GitDaemon,
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Build everything, boot the node and wait until the example Deployment is Ready.
pub fn boot_and_converge(opts: &DemoOptions) -> Result<Demo> {
    let repo = crate::repo_root();
    let out = &opts.out;
    std::fs::create_dir_all(out)?;
    let mut phases = BTreeMap::new();

    let s = ui::step("host packages (apt)");
    prepare::host_packages(&repo)?;
    s.done();
    let s = ui::step("Kubernetes binaries (pinned; built once per machine)");
    let kube_bin = prepare::kube_binaries(&repo)?;
    s.done();
    let s = ui::step("cairn binaries for the guest");
    let bins = prepare::guest_binaries(&repo)?;
    phases.insert("build_binaries_s", s.done());
    let key = prepare::demo_key()?;
    let s = ui::step("image (mkosi tree, erofs rootfs, initramfs)");
    let image_dir = prepare::shared_image_dir();
    let tuf = prepare::demo_tuf()?;
    let (built, cached) = prepare::image(
        &repo,
        &image_dir,
        &opts.version,
        &kube_bin,
        &bins,
        &key,
        &tuf.root,
    )?;
    if cached {
        s.detail("unchanged, reused");
    }
    phases.insert("image_build_s", s.done());
    let mut image_sizes = BTreeMap::new();
    image_sizes.insert("vmlinuz_bytes", size(&built.vmlinuz));
    image_sizes.insert("initramfs_bytes", size(&built.initramfs));
    image_sizes.insert("rootfs_bytes", size(&image_dir.join("rootfs.erofs")));

    let s = ui::step("fleet repository signed with the demo key, git daemon");
    let git_base = out.join("git");
    std::fs::create_dir_all(&git_base)?;
    let fleet = FleetRepo::create(&git_base, &repo.join("gitops"), &key)?;
    let first_commit = crate::fleet_head(&fleet)?;
    let git = GitDaemon::start(&git_base, &out.join("git-daemon.log"))?;
    s.done();

    let s = ui::step("cluster PKI, node configuration, PXE files, HTTP server");
    let api_port = free_port()?;
    let config = out.join("config");
    let admin_kubeconfig = out.join("admin.kubeconfig");
    node_config(&config, &admin_kubeconfig, git.port, api_port, None)?;
    let PxeDir { dir: pxe, http } = tuf.pxe_dir(
        out,
        &PxeBoot {
            vmlinuz: &built.vmlinuz,
            initramfs: &built.initramfs,
            rootfs_initrd: &built.rootfs_initrd,
            rootfs: &image_dir.join("rootfs.erofs"),
            version: &opts.version,
            config: &config,
            extra_args: &extra_kernel_args(),
        },
    )?;
    s.done();

    let serial = out.join("serial.log");
    eprintln!("  serial console: {}", serial.display());
    let mut spec = GuestSpec::pxe(&pxe, &serial);
    spec.forwards.push((api_port, 6443));
    let s = ui::step("PXE boot → cairn-init → switch_root");
    let mut guest = Guest::start(&spec)?;
    let line = guest
        .wait_for_line("cairn-init:", &["cairn-init: FATAL"], SWITCH_ROOT_DEADLINE)
        .context("iPXE did not hand over to cairn-init")?;
    log::debug!("first stage-1 line: {line}");
    let line = guest
        .wait_for_line(
            "as the signed TUF target",
            &["cairn-init: FATAL", "Kernel panic", "as the image manifest"],
            SWITCH_ROOT_DEADLINE,
        )
        .context("stage 1 did not verify the rootfs against the signed TUF target")?;
    log::info!("{line}");
    let line = guest.wait_for_line(
        "switching root",
        &["cairn-init: FATAL", "Kernel panic"],
        SWITCH_ROOT_DEADLINE,
    )?;
    phases.insert("pxe_to_switch_root_s", guest.elapsed());
    if let Some(up) = guest_uptime(&line) {
        phases.insert("guest_kernel_to_switch_root_s", up);
    }
    s.done();

    let s = ui::step("systemd → etcd, API server, kubelet → node Ready");
    let cluster = Cluster::connect(&admin_kubeconfig)?;
    wait_until("node Ready", NODE_READY_DEADLINE, || {
        guest.check_alive()?;
        Ok(cluster.node_ready(NODE)?.then_some(()))
    })?;
    phases.insert("kubelet_ready_s", guest.elapsed());
    s.done();

    let s = ui::step("cairn-agent: fetch, verify signature, render, apply");
    wait_until(
        "the agent to apply the signed commit",
        APPLY_DEADLINE,
        || {
            guest.check_alive()?;
            Ok((cluster
                .node_annotation(NODE, cairn_agent::status::ANN_APPLIED)?
                .as_deref()
                == Some(first_commit.as_str()))
            .then_some(()))
        },
    )?;
    phases.insert("first_apply_s", guest.elapsed());
    s.done();

    let s = ui::step("example Deployment Ready");
    wait_until("Deployment hello/hello Ready", WORKLOAD_DEADLINE, || {
        guest.check_alive()?;
        Ok(cluster
            .deployment_replicas(APP_NAMESPACE, APP_DEPLOYMENT)?
            .filter(|(want, ready)| ready >= want && *want > 0)
            .map(|_| ()))
    })?;
    phases.insert("workload_ready_s", guest.elapsed());
    s.done();

    Ok(Demo {
        guest,
        cluster,
        fleet,
        api_port,
        git_port: git.port,
        admin_kubeconfig,
        phases,
        image_sizes,
        first_commit,
        _http: http,
        _git: git,
    })
}

/// The `demo` command: converge, then print the JSON line (headless) or
/// keep the node running with instructions until Ctrl-C.
pub fn run(headless: bool, out: Option<PathBuf>) -> Result<()> {
    let out = out.unwrap_or_else(|| crate::repo_root().join("out/demo"));
    let demo = boot_and_converge(&DemoOptions::new(&out))?;
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
        poll = POLL_SECONDS,
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

/// Write node [`NODE`]'s configuration tree into `config` (a fresh cluster
/// PKI, kubeconfigs, `etc/cairn/agent.yaml` polling the fleet repository on
/// the host's `git_port`, optionally with an update repository) and the
/// host's admin kubeconfig for the API server forwarded to `api_port`.
pub fn node_config(
    config: &Path,
    admin_kubeconfig: &Path,
    git_port: u16,
    api_port: u16,
    update: Option<cairn_agent::config::UpdateSettings>,
) -> Result<()> {
    if config.exists() {
        std::fs::remove_dir_all(config)?;
    }
    let pki = cairn_image::pki::generate(&cairn_image::pki::PkiSpec {
        node_name: NODE,
        api_sans: &["10.0.2.15".into(), "10.0.2.2".into()],
    })?;
    cairn_image::pki::write_node_tree(&pki, config)?;
    let agent_cfg = cairn_agent::AgentConfig {
        source: cairn_agent::config::SourceSettings {
            url: format!("git://10.0.2.2:{git_port}/fleet.git"),
            branch: "main".into(),
            interval_seconds: POLL_SECONDS,
            ssh: None,
        },
        kubeconfig: "/etc/cairn/agent.kubeconfig".into(),
        trust: "/run/cairn/trust/allowed_signers".into(),
        state_dir: "/var/lib/cairn".into(),
        node_name: None,
        policies: "/usr/share/cairn/policies".into(),
        update,
    };
    std::fs::create_dir_all(config.join("etc/cairn"))?;
    std::fs::write(
        config.join("etc/cairn/agent.yaml"),
        serde_yaml::to_string(&agent_cfg)?,
    )?;
    std::fs::write(
        admin_kubeconfig,
        cairn_image::pki::kubeconfig(
            &format!("https://127.0.0.1:{api_port}"),
            &pki.ca.cert,
            &pki.admin,
            "admin",
        ),
    )?;
    Ok(())
}

/// The node's kernel arguments; `CAIRN_KERNEL_ARGS` adds more (debugging,
/// e.g. `systemd.journald.max_level_console=info` to see every service's log).
fn extra_kernel_args() -> Vec<String> {
    let mut args = vec![format!("cairn.hostname={NODE}")];
    if let Ok(extra) = std::env::var("CAIRN_KERNEL_ARGS") {
        args.extend(extra.split_whitespace().map(str::to_string));
    }
    args
}

/// `cairn-init: [  12.345] switching root …` → 12.345
fn guest_uptime(line: &str) -> Option<f64> {
    let start = line.find('[')? + 1;
    let end = line[start..].find(']')? + start;
    line[start..end].trim().parse().ok()
}

impl Demo {
    /// The headless result line.
    pub fn report(&self) -> serde_json::Value {
        json!({
            "converged": true,
            "node": NODE,
            "commit": self.first_commit,
            "phases": self.phases,
            "images": self.image_sizes,
            "serial_log": self.guest.serial_log,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn uptime_is_read_from_the_console_line() {
        assert_eq!(
            super::guest_uptime("cairn-init: [  12.345] switching root"),
            Some(12.345)
        );
        assert_eq!(super::guest_uptime("no brackets"), None);
    }
}
