//! The apply engine against a real kube-apiserver + etcd on loopback
//! (`cairn-kubetest`). Slow tier: `cargo test -p cairn-apply -- --ignored`
//! (the README's test command runs it). No controller-manager or kubelet
//! runs here: health waits are exercised with statuses written through the
//! API's status subresource (pods for real run in the QEMU tier).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cairn_apply::lease::{LeaseLock, LeaseState};
use cairn_apply::{Applier, ApplyError, Options, ParentRef, Report};
use cairn_kubetest::ControlPlane;
use serde_json::{json, Value};

fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn cm(ns: &str, name: &str, k: &str) -> Value {
    json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":name,"namespace":ns},"data":{"k":k}})
}

fn ns(name: &str) -> Value {
    json!({"apiVersion":"v1","kind":"Namespace","metadata":{"name":name}})
}

fn deployment(ns: &str, name: &str, replicas: i64) -> Value {
    json!({"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":name,"namespace":ns},
        "spec":{"replicas":replicas,"selector":{"matchLabels":{"app":name}},
        "template":{"metadata":{"labels":{"app":name}},"spec":{"containers":[{"name":"c","image":"pause:3"}]}}}})
}

async fn setup() -> (ControlPlane, Applier) {
    let cp = tokio::task::spawn_blocking(|| ControlPlane::start().expect("control plane"))
        .await
        .unwrap();
    let client = cp.client().await.unwrap();
    let applier = Applier::new(client, ParentRef::new("cairn-fleet", "kube-system"));
    (cp, applier)
}

fn ok(r: Result<Report, ApplyError>) -> Report {
    let r = r.expect("apply");
    assert!(r.ok(), "apply not ok:\n{r}");
    r
}

/// resourceVersion of every object of the set (via kubectl, a second opinion).
fn versions(cp: &ControlPlane) -> BTreeMap<String, String> {
    let out = cp
        .kubectl(&[
            "get",
            "configmaps,deployments,namespaces,secrets",
            "-A",
            "-l",
            "applyset.kubernetes.io/part-of",
            "-o",
            "jsonpath={range .items[*]}{.kind}/{.metadata.namespace}/{.metadata.name}={.metadata.resourceVersion}{\"\\n\"}{end}",
        ])
        .unwrap();
    let mut m: BTreeMap<String, String> = out
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let parent = cp
        .kubectl(&[
            "get",
            "secret",
            "cairn-fleet",
            "-n",
            "kube-system",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ])
        .unwrap();
    m.insert("parent".into(), parent);
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "apiserver tier"]
async fn first_apply_noop_change_and_prune() {
    let (cp, mut a) = setup().await;
    let set = vec![
        ns("web"),
        cm("web", "a", "1"),
        cm("web", "b", "1"),
        deployment("web", "d", 1),
    ];
    let r = ok(a.apply(&set, &Options::default()).await);
    assert_eq!(r.applied.len(), 4, "{r}");
    assert!(cp.kubectl(&["get", "cm", "b", "-n", "web"]).is_ok());

    // kubectl can read the inventory: parent labelled with the id, members with part-of
    let id = a.parent().id();
    let parent = cp
        .kubectl(&[
            "get",
            "secret",
            "-n",
            "kube-system",
            "-l",
            &format!("applyset.kubernetes.io/id={id}"),
            "-o",
            "name",
        ])
        .unwrap();
    assert_eq!(parent.trim(), "secret/cairn-fleet");
    let gks = cp
        .kubectl(&[
            "get",
            "secret",
            "cairn-fleet",
            "-n",
            "kube-system",
            "-o",
            "jsonpath={.metadata.annotations.applyset\\.kubernetes\\.io/contains-group-kinds}",
        ])
        .unwrap();
    assert_eq!(gks, "ConfigMap,Deployment.apps,Namespace");
    let members = cp
        .kubectl(&[
            "get",
            "cm",
            "-n",
            "web",
            "-l",
            &format!("applyset.kubernetes.io/part-of={id}"),
            "-o",
            "name",
        ])
        .unwrap();
    assert_eq!(members.lines().count(), 2, "{members}");

    // no-op: nothing sent, nothing written
    let before = versions(&cp);
    let r = ok(a.apply(&set, &Options::default()).await);
    assert!(r.applied.is_empty(), "{r}");
    assert_eq!(r.unchanged, 4);
    assert!(!r.parent_written);
    assert_eq!(versions(&cp), before, "a no-op apply wrote something");

    // a fresh applier (new process) reads the inventory from the parent: still zero writes
    let mut fresh = Applier::new(
        cp.client().await.unwrap(),
        ParentRef::new("cairn-fleet", "kube-system"),
    );
    let r = ok(fresh.apply(&set, &Options::default()).await);
    assert!(r.applied.is_empty(), "{r}");
    assert_eq!(versions(&cp), before);

    // change one object: only it is sent
    let mut changed = set.clone();
    changed[1] = cm("web", "a", "2");
    let r = ok(a.apply(&changed, &Options::default()).await);
    assert_eq!(r.applied, ["ConfigMap/web/a"], "{r}");
    let v = cp
        .kubectl(&["get", "cm", "a", "-n", "web", "-o", "jsonpath={.data.k}"])
        .unwrap();
    assert_eq!(v, "2");

    // remove one object: pruned
    changed.remove(2);
    let r = ok(a.apply(&changed, &Options::default()).await);
    assert_eq!(r.pruned, ["ConfigMap/web/b"], "{r}");
    assert!(cp.kubectl(&["get", "cm", "b", "-n", "web"]).is_err());
    assert!(cp.kubectl(&["get", "cm", "a", "-n", "web"]).is_ok());

    // without --prune a removed object stays
    let mut keep = changed.clone();
    keep.remove(1);
    let r = ok(a
        .apply(
            &keep,
            &Options {
                prune: false,
                ..Default::default()
            },
        )
        .await);
    assert!(r.pruned.is_empty());
    assert!(cp.kubectl(&["get", "cm", "a", "-n", "web"]).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "apiserver tier"]
async fn failed_or_empty_render_applies_and_prunes_nothing() {
    let (cp, mut a) = setup().await;
    let set = vec![ns("web"), cm("web", "a", "1"), cm("web", "b", "1")];
    ok(a.apply(&set, &Options::default()).await);
    let before = versions(&cp);

    // an empty set is refused unless the repository says so
    let e = a.apply(&[], &Options::default()).await.unwrap_err();
    assert!(matches!(e, ApplyError::EmptySet), "{e}");
    assert!(e.to_string().contains("allowEmpty"), "{e}");
    // an invalid object fails the whole set before anything is sent
    let mut bad = vec![cm("web", "a", "changed")];
    bad.push(json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"namespace":"web"}}));
    let e = a.apply(&bad, &Options::default()).await.unwrap_err();
    assert!(e.to_string().contains("object #1"), "{e}");
    assert_eq!(versions(&cp), before, "a refused set changed the cluster");

    // a kind the server does not serve: that object fails, nothing is pruned
    let mut unknown = vec![ns("web"), cm("web", "a", "1")];
    unknown.push(json!({"apiVersion":"example.com/v1","kind":"Nope","metadata":{"name":"x","namespace":"web"}}));
    let r = a.apply(&unknown, &Options::default()).await.unwrap();
    assert!(!r.ok());
    assert_eq!(r.failed[0].0, "Nope/web/x", "{r}");
    assert!(r.pruned.is_empty());
    assert!(
        cp.kubectl(&["get", "cm", "b", "-n", "web"]).is_ok(),
        "pruned after a failure"
    );

    // explicitly allowed: the empty set prunes everything
    let r = ok(a
        .apply(
            &[],
            &Options {
                allow_empty: true,
                ..Default::default()
            },
        )
        .await);
    assert_eq!(r.pruned.len(), 3, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "apiserver tier"]
async fn crd_and_custom_resource_in_one_set() {
    let (cp, mut a) = setup().await;
    let set = docs(
        r#"
apiVersion: example.com/v1
kind: Widget
metadata: {name: w1, namespace: default}
spec: {size: 3}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#,
    );
    let r = ok(a.apply(&set, &Options::default()).await);
    assert_eq!(r.applied.len(), 2, "{r}");
    let size = cp
        .kubectl(&[
            "get",
            "widgets.example.com",
            "w1",
            "-n",
            "default",
            "-o",
            "jsonpath={.spec.size}",
        ])
        .unwrap();
    assert_eq!(size, "3");
    // and a no-op again (the kind is listed through discovery by group-kind)
    let r = ok(a.apply(&set, &Options::default()).await);
    assert!(r.applied.is_empty(), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "apiserver tier"]
async fn conflicts_refused_unless_forced_and_imperative_drift_corrected() {
    let (cp, mut a) = setup().await;
    let set = vec![
        cm("default", "shared", "ours"),
        deployment("default", "d", 2),
    ];
    ok(a.apply(&set, &Options::default()).await);

    // another declarative owner takes the field
    let other = cairn_kubetest::client_for(&cp.kubeconfig_other)
        .await
        .unwrap();
    let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(other, "default");
    api.patch(
        "shared",
        &kube::api::PatchParams::apply("other-tool").force(),
        &kube::api::Patch::Apply(json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"shared"},"data":{"k":"theirs"}})),
    )
    .await
    .unwrap();
    let mut mine = set.clone();
    mine[0] = cm("default", "shared", "ours-again");
    let r = a.apply(&mine, &Options::default()).await.unwrap();
    assert!(!r.ok());
    let why = &r.failed[0].1;
    assert!(why.contains("other-tool") && why.contains("force"), "{why}");
    let v = cp
        .kubectl(&["get", "cm", "shared", "-o", "jsonpath={.data.k}"])
        .unwrap();
    assert_eq!(v, "theirs", "a refused conflict changed the object");
    assert!(r.pruned.is_empty());
    let r = ok(a
        .apply(
            &mine,
            &Options {
                force: true,
                ..Default::default()
            },
        )
        .await);
    assert_eq!(r.applied, ["ConfigMap/default/shared"]);
    let v = cp
        .kubectl(&["get", "cm", "shared", "-o", "jsonpath={.data.k}"])
        .unwrap();
    assert_eq!(v, "ours-again");

    // imperative edits behind the agent's back (kubectl edit/scale) are drift: corrected
    cp.kubectl(&[
        "patch",
        "cm",
        "shared",
        "--type=merge",
        "-p",
        r#"{"data":{"k":"edited"}}"#,
    ])
    .unwrap();
    cp.kubectl(&["scale", "deployment", "d", "--replicas=5"])
        .unwrap();
    let r = ok(a.apply(&mine, &Options::default()).await);
    // both were sent again; the ConfigMap's field had moved to kubectl's manager
    // (a /scale write in 1.20 leaves ownership with us, so that one is a plain re-apply)
    assert_eq!(r.applied.len(), 2, "{r}");
    assert_eq!(r.drift_corrected, ["ConfigMap/default/shared"], "{r}");
    let v = cp
        .kubectl(&["get", "cm", "shared", "-o", "jsonpath={.data.k}"])
        .unwrap();
    assert_eq!(v, "ours-again");
    let n = cp
        .kubectl(&["get", "deploy", "d", "-o", "jsonpath={.spec.replicas}"])
        .unwrap();
    assert_eq!(n, "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "apiserver tier"]
async fn immutable_field_needs_the_recreate_annotation() {
    let (cp, mut a) = setup().await;
    let svc = |ip: &str, annotate: bool| {
        let mut s = json!({"apiVersion":"v1","kind":"Service","metadata":{"name":"s","namespace":"default"},
            "spec":{"clusterIP":ip,"ports":[{"port":80,"protocol":"TCP"}],"selector":{"app":"x"}}});
        if annotate {
            s["metadata"]["annotations"] = json!({cairn_apply::RECREATE_ANNOTATION: "true"});
        }
        s
    };
    ok(a.apply(&[svc("10.96.0.50", false)], &Options::default())
        .await);
    let uid = cp
        .kubectl(&["get", "svc", "s", "-o", "jsonpath={.metadata.uid}"])
        .unwrap();
    let r = a
        .apply(&[svc("10.96.0.51", false)], &Options::default())
        .await
        .unwrap();
    assert!(!r.ok());
    let why = &r.failed[0].1;
    assert!(
        why.contains("immutable") && why.contains(cairn_apply::RECREATE_ANNOTATION),
        "{why}"
    );
    let r = ok(a
        .apply(&[svc("10.96.0.51", true)], &Options::default())
        .await);
    assert_eq!(r.recreated, ["Service/default/s"], "{r}");
    let ip = cp
        .kubectl(&["get", "svc", "s", "-o", "jsonpath={.spec.clusterIP}"])
        .unwrap();
    assert_eq!(ip, "10.96.0.51");
    let uid2 = cp
        .kubectl(&["get", "svc", "s", "-o", "jsonpath={.metadata.uid}"])
        .unwrap();
    assert_ne!(uid, uid2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "apiserver tier"]
async fn dry_run_and_diff_change_nothing() {
    let (cp, mut a) = setup().await;
    let set = vec![cm("default", "a", "old"), cm("default", "gone", "x")];
    ok(a.apply(&set, &Options::default()).await);
    let before = versions(&cp);
    let next = vec![cm("default", "a", "new"), cm("default", "added", "y")];
    let r = ok(a
        .apply(
            &next,
            &Options {
                diff: true,
                ..Default::default()
            },
        )
        .await);
    let all = r.diffs.join("");
    assert!(
        all.contains("--- live/ConfigMap/default/a")
            && all.contains("-  k: old")
            && all.contains("+  k: new"),
        "{all}"
    );
    assert!(
        all.contains("--- /dev/null") && all.contains("+  name: added"),
        "{all}"
    );
    assert!(
        all.contains("+++ /dev/null") && all.contains("-  name: gone"),
        "{all}"
    );
    assert_eq!(versions(&cp), before, "a diff wrote something");
    assert!(cp.kubectl(&["get", "cm", "added"]).is_err());
    let r = ok(a
        .apply(
            &next,
            &Options {
                dry_run: true,
                ..Default::default()
            },
        )
        .await);
    assert!(r.pruned.is_empty() && r.applied.is_empty());
    assert_eq!(versions(&cp), before, "a dry run wrote something");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "apiserver tier"]
async fn api_server_restart_mid_apply_then_converges() {
    let (mut cp, mut a) = setup().await;
    let mut set = vec![ns("bulk")];
    for i in 0..400 {
        set.push(cm("bulk", &format!("c{i:03}"), "v"));
    }
    let opts = Options {
        concurrency: 4,
        ..Default::default()
    };
    let client = cp.client().await.unwrap();
    let handle = {
        let set = set.clone();
        let opts = opts.clone();
        tokio::spawn(async move {
            let mut a2 = Applier::new(client, ParentRef::new("cairn-fleet", "kube-system"));
            a2.apply(&set, &opts).await
        })
    };
    // wait until some objects exist, then kill the API server
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n = cp
            .kubectl(&["get", "cm", "-n", "bulk", "-o", "name"])
            .unwrap_or_default()
            .lines()
            .count();
        if n >= 20 {
            break;
        }
        assert!(Instant::now() < deadline, "apply never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cp.stop_apiserver();
    let interrupted = handle.await.unwrap();
    match &interrupted {
        Ok(r) => assert!(
            !r.ok(),
            "apply succeeded although the API server died:\n{r}"
        ),
        Err(e) => eprintln!("interrupted apply: {e}"),
    }
    let cp = tokio::task::spawn_blocking(move || {
        cp.start_apiserver().unwrap();
        cp
    })
    .await
    .unwrap();
    // the next reconcile converges
    let r = ok(a.apply(&set, &opts).await);
    assert!(r.failed.is_empty());
    let n = cp
        .kubectl(&["get", "cm", "-n", "bulk", "-o", "name"])
        .unwrap()
        .lines()
        .count();
    assert_eq!(n, 400);
    // and the inventory is whole: removing one object prunes exactly it
    set.pop();
    let r = ok(a.apply(&set, &opts).await);
    assert_eq!(r.pruned, ["ConfigMap/bulk/c399"], "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "apiserver tier"]
async fn health_wait_reads_status_and_fails_fast() {
    let (cp, mut a) = setup().await;
    let client = cp.client().await.unwrap();
    let job = json!({"apiVersion":"batch/v1","kind":"Job","metadata":{"name":"j","namespace":"default"},
        "spec":{"template":{"spec":{"restartPolicy":"Never","containers":[{"name":"c","image":"busybox"}]}}}});
    let set = vec![deployment("default", "d", 1), job];
    ok(a.apply(&set, &Options::default()).await);

    // no controllers here: write the statuses a controller would
    let deploys: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
        kube::Api::namespaced(client.clone(), "default");
    let jobs: kube::Api<k8s_openapi::api::batch::v1::Job> =
        kube::Api::namespaced(client.clone(), "default");
    let pp = kube::api::PatchParams::default();
    deploys
        .patch_status("d", &pp, &kube::api::Patch::Merge(json!({"status":{"observedGeneration":1,"replicas":1,"updatedReplicas":1,"availableReplicas":1,"readyReplicas":1}})))
        .await
        .unwrap();
    // the Job is still running: the wait times out naming it
    let r = a
        .apply(
            &set,
            &Options {
                wait: Some(Duration::from_secs(3)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(r.unhealthy.len(), 1, "{r}");
    assert_eq!(r.unhealthy[0].0, "Job/default/j");
    assert!(r.unhealthy[0].1.contains("timed out"), "{r}");

    // a failed Job fails the wait at once, long before the deadline
    jobs.patch_status("j", &pp, &kube::api::Patch::Merge(json!({"status":{"conditions":[
        {"type":"Failed","status":"True","reason":"BackoffLimitExceeded","message":"Job has reached the specified backoff limit"}]}})))
        .await
        .unwrap();
    let t = Instant::now();
    let r = a
        .apply(
            &set,
            &Options {
                wait: Some(Duration::from_secs(120)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "did not fail fast: {:?}",
        t.elapsed()
    );
    assert!(r.unhealthy[0].1.contains("BackoffLimitExceeded"), "{r}");

    // complete: healthy
    jobs.patch_status(
        "j",
        &pp,
        &kube::api::Patch::Merge(json!({"status":{"conditions":[
        {"type":"Complete","status":"True"}]}})),
    )
    .await
    .unwrap();
    ok(a.apply(
        &set,
        &Options {
            wait: Some(Duration::from_secs(60)),
            ..Default::default()
        },
    )
    .await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "apiserver tier"]
async fn one_lease_holder_at_a_time() {
    let (cp, _a) = setup().await;
    let client = cp.client().await.unwrap();
    let lock = |holder: &str, secs: i32| LeaseLock {
        namespace: "kube-system".into(),
        name: "cairn-cluster".into(),
        holder: holder.into(),
        duration_seconds: secs,
    };
    assert_eq!(
        lock("node1", 2).try_acquire(&client).await.unwrap(),
        LeaseState::Held
    );
    assert_eq!(
        lock("node2", 2).try_acquire(&client).await.unwrap(),
        LeaseState::HeldBy("node1".into())
    );
    // renewing is fine
    assert_eq!(
        lock("node1", 2).try_acquire(&client).await.unwrap(),
        LeaseState::Held
    );
    // expiry hands it over
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        lock("node2", 2).try_acquire(&client).await.unwrap(),
        LeaseState::Held
    );
    assert_eq!(
        lock("node1", 2).try_acquire(&client).await.unwrap(),
        LeaseState::HeldBy("node2".into())
    );
    // release hands it over at once
    lock("node2", 60).release(&client).await.unwrap();
    assert_eq!(
        lock("node1", 60).try_acquire(&client).await.unwrap(),
        LeaseState::Held
    );
}
