//! Fleet loading, node resolution and node rendering, against the reference
//! repository `gitops/` and the `tests/data/fleet-*` fixtures.

use std::path::{Path, PathBuf};

use cairn_render::{render_node, Fleet, MatchedBy, NodeIdentity, RenderError};

fn gitops() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../gitops")
}

fn demo_node() -> NodeIdentity {
    NodeIdentity {
        hostname: "localhost".into(),
        machine_id: None,
        macs: vec!["52:54:00:12:34:56".into()],
    }
}

#[test]
fn gitops_demo_node_resolves_by_mac() {
    let fleet = Fleet::load(&gitops()).unwrap();
    let plan = fleet.resolve(&demo_node()).unwrap();
    assert_eq!(plan.name, "node1");
    assert_eq!(plan.cluster, "demo");
    assert_eq!(plan.role, "control-plane");
    assert_eq!(plan.matched_by, MatchedBy::Mac);
    assert_eq!(fleet.settings().os.version, "0.1.0");
}

#[test]
fn gitops_demo_node_resolves_by_hostname() {
    let fleet = Fleet::load(&gitops()).unwrap();
    let id = NodeIdentity {
        hostname: "node1".into(),
        machine_id: None,
        macs: vec!["52:54:00:99:99:99".into()],
    };
    let plan = fleet.resolve(&id).unwrap();
    assert_eq!(plan.name, "node1");
    assert_eq!(plan.matched_by, MatchedBy::Hostname);
}

#[test]
fn unknown_machine_is_an_error() {
    let fleet = Fleet::load(&gitops()).unwrap();
    let id = NodeIdentity {
        hostname: "stranger".into(),
        machine_id: None,
        macs: vec!["52:54:00:99:99:99".into()],
    };
    assert!(matches!(
        fleet.resolve(&id),
        Err(RenderError::NoNodeEntry { .. })
    ));
}

#[test]
fn gitops_demo_node_renders_hello() {
    let fleet = Fleet::load(&gitops()).unwrap();
    let plan = fleet.resolve(&demo_node()).unwrap();
    let rendered = render_node(&gitops(), &plan).unwrap();
    let kinds: Vec<(&str, &str)> = rendered
        .objects
        .iter()
        .map(|o| {
            (
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(kinds[0], ("Namespace", "hello"));
    let deploy = rendered
        .objects
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("a Deployment");
    assert_eq!(deploy["metadata"]["name"], "hello");
    assert_eq!(deploy["metadata"]["namespace"], "hello");
    assert_eq!(deploy["spec"]["replicas"], 2);
    let c = &deploy["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "localhost/cairn/hello:demo");
    assert_eq!(c["imagePullPolicy"], "Never");
    assert_eq!(
        c["command"],
        serde_json::json!(["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"])
    );
    assert_eq!(c["ports"][0]["containerPort"], 8080);
    assert_eq!(c["ports"][0]["protocol"], "TCP");
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["runAsUser"], 65534);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(c["resources"]["requests"]["cpu"], "10m");
    assert_eq!(c["resources"]["limits"]["memory"], "64Mi");
    let info = rendered
        .objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "hello-node")
        .expect("the templated ConfigMap");
    assert_eq!(info["data"]["node"], "node1");
    assert_eq!(info["data"]["logLevel"], "debug");
    assert_eq!(info["data"]["greeting"], "hello from the demo cluster");
}

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn id(hostname: &str, machine_id: Option<&str>, macs: &[&str]) -> NodeIdentity {
    NodeIdentity {
        hostname: hostname.into(),
        machine_id: machine_id.map(str::to_string),
        macs: macs.iter().map(|m| m.to_string()).collect(),
    }
}

#[test]
fn settings_are_parsed() {
    let fleet = Fleet::load(&data("fleet-basic")).unwrap();
    let s = fleet.settings();
    assert_eq!(s.os.version, "1.2.3");
    assert_eq!(s.update.max_unavailable, 2);
    let w = s.update.maintenance_window.as_ref().unwrap();
    assert_eq!(w.start_minutes(), 22 * 60 + 30);
    assert_eq!(w.duration_minutes(), 180);
    assert_eq!(w.day_indexes(), vec![5, 6]);
    assert_eq!(fleet.node_names(), vec!["n1", "n2", "n3"]);
    assert_eq!(fleet.cluster_names(), vec!["edge", "lab"]);
}

#[test]
fn machine_id_beats_mac_beats_hostname() {
    let fleet = Fleet::load(&data("fleet-basic")).unwrap();
    // n1's machine id (any case), n2's MAC, n3's hostname: the machine id wins.
    let p = fleet
        .resolve(&id(
            "lab-3",
            Some("0123456789abcdef0123456789ABCDEF"),
            &["52:54:00:00:00:02"],
        ))
        .unwrap();
    assert_eq!(
        (p.name.as_str(), p.matched_by),
        ("n1", MatchedBy::MachineId)
    );
    // Unknown machine id: the MAC decides (dash or colon, any case).
    let p = fleet
        .resolve(&id(
            "lab-3",
            Some("ffffffffffffffffffffffffffffffff"),
            &["52:54:00:00:00:22"],
        ))
        .unwrap();
    assert_eq!((p.name.as_str(), p.matched_by), ("n2", MatchedBy::Mac));
    let p = fleet
        .resolve(&id("lab-3", None, &["aa:aa:aa:aa:aa:aa"]))
        .unwrap();
    assert_eq!((p.name.as_str(), p.matched_by), ("n3", MatchedBy::Hostname));
}

#[test]
fn two_entries_matching_two_nics_is_ambiguous() {
    let fleet = Fleet::load(&data("fleet-basic")).unwrap();
    let err = fleet
        .resolve(&id("x", None, &["52:54:00:00:00:01", "52:54:00:00:00:02"]))
        .unwrap_err();
    match err {
        RenderError::AmbiguousNode { by, candidates } => {
            assert_eq!(by, "MAC address");
            assert_eq!(candidates, vec!["n1", "n2"]);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn no_entry_is_an_error() {
    let fleet = Fleet::load(&data("fleet-basic")).unwrap();
    let err = fleet.resolve(&id("nobody", None, &[])).unwrap_err();
    assert!(matches!(err, RenderError::NoNodeEntry { .. }), "{err:?}");
    assert!(err.to_string().contains("hostname=\"nobody\""), "{err}");
    let err = fleet.plan_for("n9").unwrap_err();
    assert!(matches!(err, RenderError::UnknownNode { .. }), "{err:?}");
}

#[test]
fn values_are_layered_and_node_facts_reach_templates() {
    let root = data("fleet-basic");
    let fleet = Fleet::load(&root).unwrap();
    let plan = fleet
        .resolve(&id("booted-name", None, &["52:54:00:00:00:01"]))
        .unwrap();
    assert_eq!(plan.group.as_deref(), Some("gpu"));
    assert_eq!(plan.entries, vec![PathBuf::from("clusters/edge")]);
    let r = render_node(&root, &plan).unwrap();
    assert_eq!(r.objects.len(), 1);
    let cm = &r.objects[0];
    assert_eq!(cm["metadata"]["name"], "agent-n1");
    assert_eq!(cm["metadata"]["namespace"], "agent");
    let d = &cm["data"];
    assert_eq!(d["cluster"], "edge");
    assert_eq!(d["domain"], "edge.example.com");
    // The entry declares no hostname: the booting machine's is used.
    assert_eq!(d["hostname"], "booted-name");
    assert_eq!(d["machineId"], "0123456789abcdef0123456789abcdef");
    assert_eq!(d["macs"], "52:54:00:00:00:01");
    assert_eq!(d["role"], "control-plane");
    assert_eq!(d["rack"], "r1");
    // fleet info -> cluster warn -> group debug; node overrides image;
    // lists are replaced, not appended.
    assert_eq!(d["logLevel"], "debug");
    assert_eq!(d["image"], "agent:1.1");
    assert_eq!(d["tags"], "edge");
    assert_eq!(d["gpu"], "yes");

    // n2: no group, no labels.
    let plan = fleet.plan_for("n2").unwrap();
    let r = render_node(&root, &plan).unwrap();
    let d = &r.objects[0]["data"];
    assert_eq!(d["logLevel"], "warn");
    assert_eq!(d["image"], "agent:1.0");
    assert_eq!(d["rack"], "none");
    assert_eq!(d["gpu"], "no");
    assert_eq!(d["hostname"], "n2");
    assert_eq!(d["macs"], "52:54:00:00:00:02,52:54:00:00:00:22");
}

#[test]
fn values_files_override_everything() {
    let root = data("fleet-basic");
    let fleet = Fleet::load(&root).unwrap();
    let mut plan = fleet.plan_for("n1").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("v.yaml");
    std::fs::write(&f, "agent:\n  logLevel: trace\n").unwrap();
    plan.context.overlay_values_file(&f).unwrap();
    let r = render_node(&root, &plan).unwrap();
    assert_eq!(r.objects[0]["data"]["logLevel"], "trace");
    assert_eq!(r.objects[0]["data"]["image"], "agent:1.1");
}

#[test]
fn several_render_entries_are_combined() {
    let root = data("fleet-basic");
    let fleet = Fleet::load(&root).unwrap();
    let plan = fleet.plan_for("n3").unwrap();
    assert_eq!(
        plan.entries,
        vec![PathBuf::from("clusters/lab"), PathBuf::from("apps/extra")]
    );
    let r = render_node(&root, &plan).unwrap();
    assert_eq!(r.objects.len(), 1);
    assert_eq!(r.objects[0]["metadata"]["name"], "extra");
    // lab renders nothing: an empty render is a success, not an error.
    let mut only_lab = plan.clone();
    only_lab.entries.truncate(1);
    let r = render_node(&root, &only_lab).unwrap();
    assert!(r.is_empty());
    assert_eq!(r.to_yaml_stream(), "");
}

fn load_err(case: &str) -> RenderError {
    Fleet::load(&data("fleet-errors").join(case)).unwrap_err()
}

#[test]
fn fleet_load_errors() {
    let e = load_err("duplicate-mac");
    match &e {
        RenderError::DuplicateNodeMatch {
            key,
            value,
            first,
            second,
        } => {
            assert_eq!(
                (*key, value.as_str(), first.as_str(), second.as_str()),
                ("MAC", "52:54:00:00:00:01", "a", "b")
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(
        load_err("duplicate-hostname"),
        RenderError::DuplicateNodeMatch {
            key: "hostname",
            ..
        }
    ));
    assert!(matches!(
        load_err("unknown-cluster"),
        RenderError::UnknownReference {
            what: "cluster",
            ..
        }
    ));
    assert!(matches!(
        load_err("unknown-group"),
        RenderError::UnknownReference { what: "group", .. }
    ));
    for (case, needle) in [
        (
            "bad-role",
            "role \"master\" is not one of control-plane, worker",
        ),
        ("bad-mac", "is not a MAC address"),
        (
            "no-match-keys",
            "give at least one of macs, hostname, machineId",
        ),
        ("unknown-node-field", "unknown field `label`"),
        ("bad-node-name", "must be a DNS label"),
        (
            "render-escapes-repo",
            "must be a relative path inside the repository",
        ),
        ("bad-window", "maintenanceWindow.days: \"Funday\""),
        ("empty-os-version", "os.version must not be empty"),
        ("cluster-name-mismatch", "differs from the directory name"),
    ] {
        let e = load_err(case);
        assert!(matches!(e, RenderError::FleetFile { .. }), "{case}: {e:?}");
        assert!(e.to_string().contains(needle), "{case}: {e}");
    }
    assert!(matches!(
        load_err("missing-fleet-yaml"),
        RenderError::Io { .. }
    ));
}

#[test]
fn fleet_render_errors() {
    let root = data("fleet-render-errors/repo");
    let fleet = Fleet::load(&root).unwrap();
    let e = render_node(&root, &fleet.plan_for("dup").unwrap()).unwrap_err();
    assert!(matches!(e, RenderError::DuplicateObject { .. }), "{e:?}");
    let e = render_node(&root, &fleet.plan_for("escape").unwrap()).unwrap_err();
    assert!(matches!(e, RenderError::BadEntry { .. }), "{e:?}");
    assert!(e.to_string().contains("outside the repository root"), "{e}");
    let e = render_node(&root, &fleet.plan_for("missing").unwrap()).unwrap_err();
    assert!(matches!(e, RenderError::NotAKustomization { .. }), "{e:?}");
}
