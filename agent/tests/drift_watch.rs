//! The drift watch against a real kube-apiserver (apiserver tier:
//! `cargo test -p cairn-agent -- --ignored`): an edit to a managed object
//! wakes the agent at once; a status-only update by a controller does not.

use std::sync::Arc;
use std::time::Duration;

use cairn_apply::{Applier, Options, ParentRef};
use serde_json::json;
use tokio::sync::Notify;

async fn woken(n: &Notify, within: Duration) -> bool {
    tokio::time::timeout(within, n.notified()).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "apiserver tier"]
async fn edits_wake_the_agent_status_updates_do_not() {
    let mut cp = tokio::task::spawn_blocking(|| cairn_kubetest::ControlPlane::start().unwrap())
        .await
        .unwrap();
    let client = cp.client().await.unwrap();
    let parent = ParentRef::new("cairn-demo", "kube-system");
    let objects = vec![
        json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c","namespace":"default"},"data":{"k":"v"}}),
        json!({"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"d","namespace":"default"},
            "spec":{"replicas":1,"selector":{"matchLabels":{"app":"d"}},
            "template":{"metadata":{"labels":{"app":"d"}},"spec":{"containers":[{"name":"c","image":"pause"}]}}}}),
    ];
    let mut a = Applier::new(client.clone(), parent.clone());
    let r = a.apply(&objects, &Options::default()).await.unwrap();
    assert!(r.ok(), "{r}");

    let notify = Arc::new(Notify::new());
    let mut watch = cairn_agent::drift::Watch::new(client.clone(), notify.clone());
    watch.follow(&parent, &objects).await;
    // the initial listing does not count as drift
    assert!(
        !woken(&notify, Duration::from_secs(3)).await,
        "woken by the initial list"
    );

    // a controller's status update: no wake-up
    let deploys: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
        kube::Api::namespaced(client.clone(), "default");
    deploys
        .patch_status(
            "d",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"status":{"observedGeneration":1,"replicas":1}})),
        )
        .await
        .unwrap();
    assert!(
        !woken(&notify, Duration::from_secs(3)).await,
        "woken by a status update"
    );

    // kubectl edit-style change of a managed object: wakes at once
    cp.kubectl(&[
        "patch",
        "cm",
        "c",
        "--type=merge",
        "-p",
        r#"{"data":{"k":"edited"}}"#,
    ])
    .unwrap();
    assert!(
        woken(&notify, Duration::from_secs(20)).await,
        "edit not noticed"
    );
    // the reconcile it triggers puts the object back
    let r = a.apply(&objects, &Options::default()).await.unwrap();
    assert_eq!(r.drift_corrected, ["ConfigMap/default/c"], "{r}");
    let v = cp
        .kubectl(&["get", "cm", "c", "-o", "jsonpath={.data.k}"])
        .unwrap();
    assert_eq!(v, "v");

    // a spec change (generation bump) and a deletion wake it too
    cp.kubectl(&["scale", "deployment", "d", "--replicas=3"])
        .unwrap();
    assert!(
        woken(&notify, Duration::from_secs(20)).await,
        "scale not noticed"
    );
    cp.kubectl(&["delete", "cm", "c"]).unwrap();
    assert!(
        woken(&notify, Duration::from_secs(20)).await,
        "deletion not noticed"
    );
    let r = a.apply(&objects, &Options::default()).await.unwrap();
    assert!(
        r.applied.contains(&"ConfigMap/default/c".to_string()),
        "{r}"
    );

    // The API server goes away: the watches back off instead of retrying
    // in a loop (which spins a core and never yields), and once it is back
    // they resume and notice an edit again.
    cp.stop_apiserver();
    let before = cpu_seconds();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let spent = cpu_seconds() - before;
    assert!(
        spent < 1.5,
        "the drift watch spun while the API server was down: {spent:.2} s of CPU in 5 s"
    );
    tokio::task::block_in_place(|| cp.start_apiserver()).unwrap();
    let _ = woken(&notify, Duration::from_secs(1)).await;
    cp.kubectl(&[
        "patch",
        "cm",
        "c",
        "--type=merge",
        "-p",
        r#"{"data":{"k":"edited again"}}"#,
    ])
    .unwrap();
    assert!(
        woken(&notify, Duration::from_secs(90)).await,
        "edit after the API server came back not noticed"
    );
    drop(watch);
}

/// User + system CPU time of this process so far.
fn cpu_seconds() -> f64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is valid.
    let ru = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr());
        ru.assume_init()
    };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}
