//! Render a 1,000-object overlay with cairn and with `kubectl kustomize`, in
//! the same run, and require cairn to take at most 1/20 of kubectl's time.
//!
//! The tree (generated in a temp dir): a base of 333 Deployments, 333
//! Services and 333 ConfigMaps (each Deployment mounts its ConfigMap), and an
//! overlay with `namePrefix`, `labels` (with selectors), a strategic merge
//! patch on every Deployment and a `configMapGenerator` whose ConfigMap every
//! Deployment reads: 1,000 objects out. Both outputs are also compared as
//! sets of objects.
//!
//! `cargo bench -p cairn-render --bench render_1000`. Without kubectl the
//! bench fails, unless `CAIRN_BENCH_ALLOW_SKIP=1` (then it says why and exits 0).

use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use cairn_render::{render_dir, TemplateContext};

const APPS: usize = 333;
const MAX_RATIO: f64 = 1.0 / 20.0;

fn write_tree(root: &Path) -> std::io::Result<()> {
    let base = root.join("base");
    let overlay = root.join("overlay");
    std::fs::create_dir_all(&base)?;
    std::fs::create_dir_all(&overlay)?;
    let mut objects = String::new();
    for i in 0..APPS {
        objects.push_str(&format!(
            r#"---
apiVersion: v1
kind: ConfigMap
metadata:
  name: app{i}-config
data:
  index: "{i}"
  greeting: hello from app {i}
---
apiVersion: v1
kind: Service
metadata:
  name: app{i}
spec:
  selector:
    app: app{i}
  ports:
    - name: http
      port: 80
      targetPort: 8080
      protocol: TCP
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: app{i}
  labels:
    app: app{i}
spec:
  replicas: 1
  selector:
    matchLabels:
      app: app{i}
  template:
    metadata:
      labels:
        app: app{i}
    spec:
      containers:
        - name: main
          image: example.com/app:{i}
          ports:
            - containerPort: 8080
              protocol: TCP
          env:
            - name: INDEX
              valueFrom:
                configMapKeyRef:
                  name: app{i}-config
                  key: index
          volumeMounts:
            - name: config
              mountPath: /etc/app
      volumes:
        - name: config
          configMap:
            name: app{i}-config
"#
        ));
    }
    std::fs::write(base.join("objects.yaml"), objects)?;
    std::fs::write(
        base.join("kustomization.yaml"),
        "resources:\n  - objects.yaml\n",
    )?;
    std::fs::write(
        overlay.join("kustomization.yaml"),
        r#"namePrefix: prod-
labels:
  - pairs:
      env: prod
      team: platform
    includeSelectors: true
resources:
  - ../base
configMapGenerator:
  - name: shared
    literals:
      - REGION=eu-west
      - TIER=gold
patches:
  - target:
      kind: Deployment
    patch: |-
      apiVersion: apps/v1
      kind: Deployment
      metadata:
        name: any
      spec:
        replicas: 3
        template:
          spec:
            containers:
              - name: main
                envFrom:
                  - configMapRef:
                      name: shared
                resources:
                  limits:
                    memory: 128Mi
"#,
    )?;
    Ok(())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn canonical_set(text: &str) -> Vec<String> {
    use serde::Deserialize;
    let mut out: Vec<String> = serde_yaml::Deserializer::from_str(text)
        .map(|d| serde_json::Value::deserialize(d).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .map(|v| serde_json::to_string(&sorted(&v)).expect("json"))
        .collect();
    out.sort();
    out
}

fn sorted(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), sorted(&m[k])))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
        o => o.clone(),
    }
}

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; nothing to parse.
    let tmp = tempfile::tempdir().expect("temp dir");
    write_tree(tmp.path()).expect("write the tree");
    let overlay = tmp.path().join("overlay");

    let kubectl_ok = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !kubectl_ok {
        if std::env::var("CAIRN_BENCH_ALLOW_SKIP").as_deref() == Ok("1") {
            println!("render_1000: skipped: kubectl not found (CAIRN_BENCH_ALLOW_SKIP=1)");
            return ExitCode::SUCCESS;
        }
        eprintln!(
            "render_1000: kubectl not found: the benchmark compares against `kubectl kustomize`; \
             install kubectl or set CAIRN_BENCH_ALLOW_SKIP=1 to skip"
        );
        return ExitCode::FAILURE;
    }

    let ctx = TemplateContext::default();
    // Warm up (page cache, allocator) and check the object count.
    let rendered = match render_dir(&overlay, &ctx) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("render_1000: cairn render failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let count = rendered.objects.len();
    let ours = rendered.to_yaml_stream();

    let mut cairn_times = Vec::new();
    for _ in 0..15 {
        let t = Instant::now();
        let r = render_dir(&overlay, &ctx).expect("render");
        let _ = r.to_yaml_stream();
        cairn_times.push(t.elapsed());
    }
    let mut kubectl_times = Vec::new();
    let mut theirs = String::new();
    for _ in 0..3 {
        let t = Instant::now();
        let out = Command::new("kubectl")
            .arg("kustomize")
            .arg(&overlay)
            .output()
            .expect("run kubectl");
        kubectl_times.push(t.elapsed());
        if !out.status.success() {
            eprintln!(
                "render_1000: kubectl kustomize failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return ExitCode::FAILURE;
        }
        theirs = String::from_utf8_lossy(&out.stdout).into_owned();
    }
    let cairn = median(cairn_times);
    let kubectl = median(kubectl_times);
    let ratio = cairn.as_secs_f64() / kubectl.as_secs_f64();
    let same = canonical_set(&ours) == canonical_set(&theirs);

    println!("render_1000: {count} objects");
    println!(
        "render_1000: cairn render_dir + YAML output: {:.2} ms (median of 15)",
        cairn.as_secs_f64() * 1e3
    );
    println!(
        "render_1000: kubectl kustomize:              {:.2} ms (median of 3)",
        kubectl.as_secs_f64() * 1e3
    );
    println!(
        "render_1000: ratio {ratio:.4} (1/{:.0}); required <= {MAX_RATIO:.4} (1/20)",
        1.0 / ratio
    );
    println!("render_1000: same objects as kubectl: {same}");

    if count != 1000 {
        eprintln!("render_1000: expected 1000 objects, got {count}");
        return ExitCode::FAILURE;
    }
    if !same {
        eprintln!("render_1000: cairn and kubectl rendered different objects");
        return ExitCode::FAILURE;
    }
    if ratio > MAX_RATIO {
        eprintln!("render_1000: too slow: cairn took {ratio:.4} of kubectl's time (limit 1/20)");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
