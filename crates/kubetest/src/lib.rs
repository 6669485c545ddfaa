//! A real control plane for tests: Debian's `etcd` and the project's pinned
//! `kube-apiserver` on loopback, with a fresh PKI, in a temporary directory.
//!
//! Binaries: `CAIRN_KUBE_BIN` (a directory holding `kube-apiserver`; the
//! test runner sets it from `image-build/scripts/kubernetes.sh`), otherwise
//! the script's cache. Absent binaries are an error with the command that
//! provides them — never a silent skip.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cairn_image::pki;

/// Where `kube-apiserver` lives.
pub fn kube_bin_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("CAIRN_KUBE_BIN") {
        return Ok(PathBuf::from(d));
    }
    let lock = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../image-build/kubernetes.lock");
    let text = std::fs::read_to_string(&lock).with_context(|| format!("reading {lock:?}"))?;
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("version="))
        .context("kubernetes.lock has no version= line")?;
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    let dir = PathBuf::from(home).join(format!(".cache/cairn/kubernetes/{version}/bin"));
    if !dir.join("kube-apiserver").is_file() {
        bail!(
            "no kube-apiserver in {dir:?}: run `bash image-build/scripts/kubernetes.sh` \
             (or set CAIRN_KUBE_BIN to a directory holding it)"
        );
    }
    Ok(dir)
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn spawn(cmd: &mut Command, log: &Path) -> Result<Child> {
    let f = std::fs::File::create(log)?;
    let shown = format!("{:?}", cmd.get_program());
    cmd.stdin(Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f)
        .spawn()
        .with_context(|| format!("starting {shown}"))
}

fn tail(log: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(log) {
        let _ = f.read_to_string(&mut s);
    }
    let lines: Vec<&str> = s.lines().rev().take(25).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// etcd + kube-apiserver, stopped (killed) on drop.
pub struct ControlPlane {
    dir: tempfile::TempDir,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    apiserver_cmd: Vec<String>,
    bin: PathBuf,
    /// `https://127.0.0.1:PORT`
    pub url: String,
    /// An admin (system:masters) kubeconfig.
    pub kubeconfig: PathBuf,
    /// Another admin identity, for tests of "another field manager".
    pub kubeconfig_other: PathBuf,
}

impl ControlPlane {
    /// Start etcd and the API server and wait until `/readyz` answers and
    /// the `default` namespace exists.
    pub fn start() -> Result<ControlPlane> {
        let bin = kube_bin_dir()?;
        let dir = tempfile::Builder::new()
            .prefix("cairn-kubetest-")
            .tempdir()?;
        let d = dir.path();
        let pki = pki::generate(&pki::PkiSpec {
            node_name: "kubetest",
            api_sans: &[],
        })
        .map_err(|e| anyhow::anyhow!("generating the test PKI: {e}"))?;
        let w = |name: &str, s: &str| std::fs::write(d.join(name), s);
        w("ca.crt", &pki.ca.cert)?;
        w("apiserver.crt", &pki.apiserver.cert)?;
        w("apiserver.key", &pki.apiserver.key)?;
        w("sa.key", &pki.sa_private)?;
        w("sa.pub", &pki.sa_public)?;
        let etcd_client = free_port()?;
        let etcd_peer = free_port()?;
        let port = free_port()?;
        let url = format!("https://127.0.0.1:{port}");
        let kubeconfig = d.join("admin.kubeconfig");
        w(
            "admin.kubeconfig",
            &pki::kubeconfig(&url, &pki.ca.cert, &pki.admin, "cairn-admin"),
        )?;
        let kubeconfig_other = d.join("other.kubeconfig");
        w(
            "other.kubeconfig",
            &pki::kubeconfig(&url, &pki.ca.cert, &pki.agent, "other"),
        )?;
        let etcd = spawn(
            Command::new("etcd")
                .arg(format!("--data-dir={}", d.join("etcd").display()))
                .arg(format!(
                    "--listen-client-urls=http://127.0.0.1:{etcd_client}"
                ))
                .arg(format!(
                    "--advertise-client-urls=http://127.0.0.1:{etcd_client}"
                ))
                .arg(format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"))
                .arg(format!(
                    "--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"
                ))
                .arg(format!(
                    "--initial-cluster=default=http://127.0.0.1:{etcd_peer}"
                ))
                // test data: durability is not the point, speed is
                .arg("--unsafe-no-fsync"),
            &d.join("etcd.log"),
        )?;
        let p = |n: &str| d.join(n).display().to_string();
        let apiserver_cmd = vec![
            format!("--etcd-servers=http://127.0.0.1:{etcd_client}"),
            format!("--secure-port={port}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--cert-dir={}", p("certs")),
            format!("--client-ca-file={}", p("ca.crt")),
            format!("--tls-cert-file={}", p("apiserver.crt")),
            format!("--tls-private-key-file={}", p("apiserver.key")),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            "--service-cluster-ip-range=10.96.0.0/12".into(),
            "--authorization-mode=RBAC".into(),
            "--enable-priority-and-fairness=false".into(),
            // no controller-manager runs: keep the API server from waiting on one
            "--enable-admission-plugins=".into(),
            "--disable-admission-plugins=ServiceAccount".into(),
        ];
        let mut cp = ControlPlane {
            dir,
            etcd: Some(etcd),
            apiserver: None,
            apiserver_cmd,
            bin,
            url,
            kubeconfig,
            kubeconfig_other,
        };
        cp.start_apiserver()?;
        Ok(cp)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Start the API server (after [`ControlPlane::stop_apiserver`]) and wait for readiness.
    pub fn start_apiserver(&mut self) -> Result<()> {
        let log = self.dir.path().join("kube-apiserver.log");
        let child = spawn(
            Command::new(self.bin.join("kube-apiserver")).args(&self.apiserver_cmd),
            &log,
        )?;
        self.apiserver = Some(child);
        self.wait_ready(Duration::from_secs(180))
    }

    /// Kill the API server (etcd keeps running).
    pub fn stop_apiserver(&mut self) {
        if let Some(mut c) = self.apiserver.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn wait_ready(&mut self, deadline: Duration) -> Result<()> {
        let start = Instant::now();
        let log = self.dir.path().join("kube-apiserver.log");
        loop {
            if let Some(c) = self.apiserver.as_mut() {
                if let Some(st) = c.try_wait()? {
                    bail!("kube-apiserver exited ({st}):\n{}", tail(&log));
                }
            }
            // `/readyz` can answer before the API server's bootstrap
            // controller has created the `default` namespace; tests that
            // apply there must not race it, so both are facts to wait on.
            let ok = |path: &str| {
                Command::new("kubectl")
                    .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
                    .args(["get", &format!("--raw={path}")])
                    .output()
                    .is_ok_and(|o| o.status.success())
            };
            if ok("/readyz") && ok("/api/v1/namespaces/default") {
                return Ok(());
            }
            if start.elapsed() > deadline {
                bail!(
                    "kube-apiserver not ready after {:?}:\n{}",
                    start.elapsed(),
                    tail(&log)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// CPU seconds (user + system) etcd and kube-apiserver have used so far
    /// (to tell server-side cost from client-side cost in benchmarks).
    pub fn server_cpu_seconds(&self) -> f64 {
        let ticks = |c: &Option<Child>| -> f64 {
            let Some(c) = c else { return 0.0 };
            let stat =
                std::fs::read_to_string(format!("/proc/{}/stat", c.id())).unwrap_or_default();
            // fields after the parenthesised comm: utime is the 12th, stime the 13th
            let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
            let f: Vec<&str> = rest.split_whitespace().collect();
            let n = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
            n(11) + n(12)
        };
        // USER_HZ is 100 on Linux
        (ticks(&self.etcd) + ticks(&self.apiserver)) / 100.0
    }

    /// A kube client for the admin identity.
    pub async fn client(&self) -> Result<kube::Client> {
        client_for(&self.kubeconfig).await
    }

    /// `kubectl --kubeconfig=… ARGS`, returning stdout; an error carries stderr.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("kubectl")
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .output()
            .context("running kubectl")?;
        if !out.status.success() {
            bail!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// A kube client from a kubeconfig file.
pub async fn client_for(path: &Path) -> Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(path)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await?;
    Ok(kube::Client::try_from(cfg)?)
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop_apiserver();
        if let Some(mut c) = self.etcd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The benchmark set: a Namespace, a shared ConfigMap, and per app a
/// ConfigMap, a Service and a Deployment (that passes cairn's baked
/// policies): `3 * apps + 2` objects.
pub fn sample_objects(namespace: &str, apps: usize) -> Vec<serde_json::Value> {
    use serde_json::json;
    let ns = namespace;
    let mut v = vec![json!({"apiVersion":"v1","kind":"Namespace","metadata":{"name":ns}})];
    v.push(json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"shared","namespace":ns},"data":{"k":"v"}}));
    for i in 0..apps {
        let app = format!("app{i}");
        v.push(json!({"apiVersion":"v1","kind":"ConfigMap",
            "metadata":{"name":format!("{app}-config"),"namespace":ns},
            "data":{"index":i.to_string(),"greeting":format!("hello from {app}")}}));
        v.push(json!({"apiVersion":"v1","kind":"Service",
            "metadata":{"name":app,"namespace":ns},
            "spec":{"selector":{"app":app},"ports":[{"name":"http","port":80,"targetPort":8080,"protocol":"TCP"}]}}));
        v.push(json!({"apiVersion":"apps/v1","kind":"Deployment",
            "metadata":{"name":app,"namespace":ns,"labels":{"app":app}},
            "spec":{"replicas":1,"selector":{"matchLabels":{"app":app}},
              "template":{"metadata":{"labels":{"app":app}},
                "spec":{"containers":[{"name":"web","image":"registry.local/web:1.0",
                  "ports":[{"containerPort":8080,"protocol":"TCP"}],
                  "resources":{"requests":{"cpu":"10m","memory":"16Mi"},"limits":{"cpu":"100m","memory":"64Mi"}},
                  "securityContext":{"runAsNonRoot":true,"runAsUser":1000,"allowPrivilegeEscalation":false,
                    "readOnlyRootFilesystem":true,"capabilities":{"drop":["ALL"]}},
                  "volumeMounts":[{"name":"config","mountPath":"/etc/app"}]}],
                  "volumes":[{"name":"config","configMap":{"name":format!("{app}-config")}}]}}}}));
    }
    v
}
