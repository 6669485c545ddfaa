//! Slow tier: the walking skeleton in QEMU. Run by `cargo run --release -p qemu-tests -- test`.

use std::time::Duration;

use cairn_agent::status::{ANN_APPLIED, ANN_REFUSED};
use qemu_tests::demo::{
    boot_and_converge, DemoOptions, APP_DEPLOYMENT, APP_NAMESPACE, NODE, POLL_SECONDS,
};
use qemu_tests::wait_until;

fn set_replicas(work: &std::path::Path, from: u32, to: u32) {
    let p = work.join("apps/hello/overlays/demo/kustomization.yaml");
    let text = std::fs::read_to_string(&p).unwrap();
    let old = format!("count: {from}");
    assert!(
        text.contains(&old),
        "{} no longer says {old:?}: update this test",
        p.display()
    );
    std::fs::write(&p, text.replace(&old, &format!("count: {to}"))).unwrap();
}

#[test]
#[ignore = "slow tier: builds the image and boots QEMU (run by `cargo run --release -p qemu-tests -- test`)"]
fn pxe_node_converges_applies_signed_and_refuses_unsigned_commits() {
    let out = qemu_tests::repo_root().join("out/test-skeleton");
    let mut demo = boot_and_converge(&DemoOptions::new(&out)).expect("node converges");
    println!("{}", demo.report());
    assert_eq!(
        demo.cluster
            .deployment_replicas(APP_NAMESPACE, APP_DEPLOYMENT)
            .unwrap()
            .map(|r| r.0),
        Some(2)
    );

    // A signed change reaches the cluster within a few poll intervals.
    set_replicas(&demo.fleet.work, 2, 3);
    let signed = demo.fleet.commit(true, "hello: 3 replicas").unwrap();
    let deadline = Duration::from_secs(POLL_SECONDS * 30);
    wait_until("the signed commit to be applied", deadline, || {
        demo.guest.check_alive()?;
        Ok(
            (demo.cluster.node_annotation(NODE, ANN_APPLIED)?.as_deref() == Some(signed.as_str()))
                .then_some(()),
        )
    })
    .unwrap();
    assert_eq!(
        demo.cluster
            .deployment_replicas(APP_NAMESPACE, APP_DEPLOYMENT)
            .unwrap()
            .map(|r| r.0),
        Some(3)
    );

    // An unsigned commit is refused, named, and changes nothing.
    set_replicas(&demo.fleet.work, 3, 1);
    let unsigned = demo
        .fleet
        .commit(false, "hello: 1 replica (unsigned)")
        .unwrap();
    wait_until("the unsigned commit to be refused", deadline, || {
        demo.guest.check_alive()?;
        Ok(
            (demo.cluster.node_annotation(NODE, ANN_REFUSED)?.as_deref()
                == Some(unsigned.as_str()))
            .then_some(()),
        )
    })
    .unwrap();
    let err = demo
        .cluster
        .node_annotation(NODE, cairn_agent::status::ANN_ERROR)
        .unwrap()
        .unwrap_or_default();
    assert!(err.contains("not signed"), "refusal reason: {err}");
    assert_eq!(
        demo.cluster
            .node_annotation(NODE, ANN_APPLIED)
            .unwrap()
            .as_deref(),
        Some(signed.as_str())
    );
    assert_eq!(
        demo.cluster
            .deployment_replicas(APP_NAMESPACE, APP_DEPLOYMENT)
            .unwrap()
            .map(|r| r.0),
        Some(3),
        "the unsigned commit must not reach the cluster"
    );
}
