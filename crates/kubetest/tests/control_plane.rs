//! Slow tier (needs etcd and kube-apiserver): `cargo test -- --ignored`.

#[test]
#[ignore = "apiserver tier: starts etcd + kube-apiserver"]
fn starts_serves_and_restarts() {
    let mut cp = cairn_kubetest::ControlPlane::start().expect("control plane");
    let ns = cp.kubectl(&["get", "namespaces", "-o", "name"]).unwrap();
    assert!(ns.contains("namespace/default"), "{ns}");
    cp.kubectl(&["create", "configmap", "survives", "-n", "default"])
        .unwrap();
    cp.stop_apiserver();
    assert!(cp.kubectl(&["get", "configmap", "survives"]).is_err());
    cp.start_apiserver().unwrap();
    let got = cp
        .kubectl(&[
            "get",
            "configmap",
            "survives",
            "-n",
            "default",
            "-o",
            "name",
        ])
        .unwrap();
    assert_eq!(got.trim(), "configmap/survives");
}
