//! The default policy set (`policies/`) against the scenario fixtures in
//! `tests/data/`, the demo fleet (`gitops/`), and repository policies that
//! try to raise or weaken it.
//!
//! A scenario directory holds `expect.yaml` (exactly the violations the
//! default set must report) and what to check: a kustomization
//! (`kustomization.yaml`, rendered) and/or `fleet-settings.yaml` (the os and
//! update part of a fleet.yaml). `policy-params.yaml`, if present, replaces
//! `policies/params.yaml` for that scenario.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use cairn_policy::{check, check_objects, check_tree, PolicyError, PolicySet, Report, Severity};
use cairn_render::{render_dir, render_node, Fleet, FleetSettings, TemplateContext};
use serde::Deserialize;

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn policies_dir() -> PathBuf {
    crate_dir().join("../../policies")
}

fn gitops_dir() -> PathBuf {
    crate_dir().join("../../gitops")
}

fn data(name: &str) -> PathBuf {
    crate_dir().join("tests/data").join(name)
}

fn defaults() -> PolicySet {
    PolicySet::load(&policies_dir(), None).expect("the default policies load")
}

/// The baked sources, with `params.yaml` replaced by `params` if given.
fn baked_sources(params: Option<&Path>) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(policies_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for f in files {
        if params.is_some() && f.file_name().is_some_and(|n| n == "params.yaml") {
            continue;
        }
        out.push((f.clone(), std::fs::read_to_string(&f).unwrap()));
    }
    if let Some(p) = params {
        out.push((p.to_path_buf(), std::fs::read_to_string(p).unwrap()));
    }
    out
}

#[derive(Debug, Deserialize)]
struct Expect {
    violations: Vec<Expected>,
}

#[derive(Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
struct Expected {
    object: String,
    policy: String,
    severity: Severity,
}

struct Scenario {
    name: String,
    report: Report,
    expect: Vec<Expected>,
}

fn run_scenario(dir: &Path) -> Scenario {
    let name = dir.file_name().unwrap().to_string_lossy().to_string();
    let params = dir.join("policy-params.yaml");
    let set = PolicySet::from_sources(&baked_sources(params.is_file().then_some(&*params)), &[])
        .unwrap_or_else(|e| panic!("{name}: policies: {e}"));
    let objects = if dir.join("kustomization.yaml").is_file() {
        render_dir(dir, &TemplateContext::default())
            .unwrap_or_else(|e| panic!("{name}: render: {e}"))
            .objects
    } else {
        Vec::new()
    };
    let settings: Option<FleetSettings> = std::fs::read_to_string(dir.join("fleet-settings.yaml"))
        .ok()
        .map(|t| serde_yaml::from_str(&t).unwrap_or_else(|e| panic!("{name}: settings: {e}")));
    let report = check_objects(&objects, settings.as_ref(), &set);
    let expect: Expect =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("expect.yaml")).unwrap())
            .unwrap_or_else(|e| panic!("{name}: expect.yaml: {e}"));
    Scenario {
        name,
        report,
        expect: expect.violations,
    }
}

fn scenarios() -> Vec<Scenario> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(crate_dir().join("tests/data"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("expect.yaml").is_file())
        .collect();
    dirs.sort();
    assert!(dirs.len() > 20, "scenario fixtures are missing");
    dirs.iter().map(|d| run_scenario(d)).collect()
}

#[test]
fn every_scenario_reports_exactly_its_expected_violations() {
    let mut failures = Vec::new();
    for s in scenarios() {
        let mut got: Vec<Expected> = s
            .report
            .violations
            .iter()
            .map(|v| Expected {
                object: v.object.to_string(),
                policy: v.policy.clone(),
                severity: v.severity,
            })
            .collect();
        got.sort();
        let mut want = s.expect;
        want.sort();
        if got != want {
            failures.push(format!(
                "{}:\n  expected {want:?}\n  got      {got:?}\n{}",
                s.name, s.report
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Each default rule has a fixture it fails and one where it is evaluated
/// and passes.
#[test]
fn every_default_rule_has_a_failing_and_a_passing_fixture() {
    let mut failed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut passed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in scenarios() {
        for (policy, n) in &s.report.evaluated {
            let violations = s
                .report
                .violations
                .iter()
                .filter(|v| &v.policy == policy)
                .count();
            if violations > 0 {
                failed
                    .entry(policy.clone())
                    .or_default()
                    .insert(s.name.clone());
            }
            if *n > violations {
                passed
                    .entry(policy.clone())
                    .or_default()
                    .insert(s.name.clone());
            }
        }
    }
    let mut missing = Vec::new();
    for p in defaults().policies() {
        if !failed.contains_key(p.name()) {
            missing.push(format!("{}: no failing fixture", p.name()));
        }
        if !passed.contains_key(p.name()) {
            missing.push(format!("{}: no passing fixture", p.name()));
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn demo_app_passes_with_only_the_digest_warning() {
    let report = check_tree(&gitops_dir(), Some("node1"), &policies_dir()).unwrap();
    assert!(!report.has_deny(), "{report}");
    assert_eq!(report.targets.len(), 1);
    let (label, r) = &report.targets[0];
    assert_eq!(label, "node node1");
    let got: Vec<(String, &str, Severity)> = r
        .violations
        .iter()
        .map(|v| (v.object.to_string(), v.policy.as_str(), v.severity))
        .collect();
    assert_eq!(
        got,
        vec![(
            "Deployment/hello/hello".to_string(),
            "image-pinned-by-digest",
            Severity::Warn
        )],
        "{report}"
    );
    // The fleet settings were checked too, and pass.
    assert_eq!(r.evaluated.get("os-version-minimum"), Some(&1));
    let text = report.to_string();
    assert!(
        text.contains("WARN Deployment/hello/hello [image-pinned-by-digest]"),
        "{text}"
    );
    assert!(
        text.contains(
            r#"for c = variables.containers[0] (name "httpd", image "localhost/cairn/hello:demo")"#
        ),
        "{text}"
    );
}

#[test]
fn a_fleet_without_node_checks_every_node() {
    let report = check_tree(&gitops_dir(), None, &policies_dir()).unwrap();
    let labels: Vec<&str> = report.targets.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(labels, vec!["node node1"]);
}

#[test]
fn the_app_base_with_its_latest_tag_is_denied() {
    let report = check_tree(&gitops_dir().join("apps/hello/base"), None, &policies_dir()).unwrap();
    assert!(report.has_deny(), "{report}");
    let r = &report.targets[0].1;
    assert!(r
        .denies()
        .any(|v| v.policy == "image-tag-not-latest"
            && v.object.to_string() == "Deployment/hello/hello"));
}

#[test]
fn the_agent_entry_point_checks_objects_and_settings() {
    let fleet = Fleet::load(&gitops_dir()).unwrap();
    let plan = fleet.plan_for("node1").unwrap();
    let rendered = render_node(&gitops_dir(), &plan).unwrap();
    let mut settings = fleet.settings().clone();
    settings.os.version = "0.0.1".into();
    let report = check(&rendered, &settings, &defaults());
    let denies: Vec<String> = report.denies().map(|v| v.to_string()).collect();
    assert_eq!(denies.len(), 1, "{report}");
    assert!(
        denies[0].starts_with(
            "DENY FleetSettings/fleet.yaml [os-version-minimum] os.version 0.0.1 is below 0.1.0"
        ),
        "{}",
        denies[0]
    );
}

#[test]
fn the_failing_part_names_the_container_and_the_condition() {
    let s = run_scenario(&data("privileged-init-container"));
    let v = &s.report.violations[0];
    assert_eq!(
        v.failing,
        r#"for c = variables.containers[1] (name "init", image "registry.example/app:1.0@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"): !c.?securityContext.?privileged.orValue(false)"#
    );
    let s = run_scenario(&data("host-namespaces"));
    let pid = s
        .report
        .violations
        .iter()
        .find(|v| v.object.name == "pid")
        .unwrap();
    assert_eq!(pid.failing, "!variables.podSpec.?hostPID.orValue(false)");
    let s = run_scenario(&data("added-capability"));
    assert_eq!(
        s.report.violations[0].failing,
        r#"for c = variables.containers[0] (name "app", image "registry.example/app:1.0@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"): for cap = c.?securityContext.?capabilities.?add.orValue([])[1] ("SYS_ADMIN"): cap in params.?allowedCapabilities.orValue(['NET_BIND_SERVICE'])"#
    );
    let s = run_scenario(&data("os-window-too-long"));
    assert_eq!(
        s.report.violations[0].failing,
        "duration(variables.window.duration) <= duration('24h')"
    );
}

// ---- repository policies ---------------------------------------------------

fn load_with_repo(name: &str) -> Result<PolicySet, PolicyError> {
    PolicySet::load(&policies_dir(), Some(&data(name)))
}

#[test]
fn a_repository_cannot_lower_a_baked_severity() {
    let e = load_with_repo("repo-lowers-severity").unwrap_err();
    match &e {
        PolicyError::Weakens {
            path, policy, what, ..
        } => {
            assert!(path.ends_with(".cairn/policies/relax.yaml"), "{e}");
            assert_eq!(policy, "no-privileged-containers");
            assert!(
                what.contains("lowers the severity from deny to warn"),
                "{e}"
            );
        }
        other => panic!("expected Weakens, got {other}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains("relax.yaml") && msg.contains("no-privileged-containers"),
        "{msg}"
    );
}

#[test]
fn a_repository_cannot_narrow_a_baked_match() {
    let e = load_with_repo("repo-narrows-match").unwrap_err();
    assert!(
        matches!(&e, PolicyError::Weakens { what, .. } if what.contains("match")),
        "{e}"
    );
}

#[test]
fn a_repository_cannot_change_a_baked_expression() {
    let e = load_with_repo("repo-changes-expression").unwrap_err();
    assert!(
        matches!(&e, PolicyError::Weakens { what, .. } if what.contains("expression")),
        "{e}"
    );
}

#[test]
fn a_repository_cannot_set_params() {
    let e = load_with_repo("repo-sets-params").unwrap_err();
    assert!(matches!(e, PolicyError::ParamsInRepo { doc: 1, .. }), "{e}");
}

#[test]
fn a_repository_may_raise_a_warning_to_deny_and_add_rules() {
    let set = load_with_repo("repo-raises-and-adds").unwrap();
    let digest = set.get("image-pinned-by-digest").unwrap();
    assert_eq!(digest.severity(), Severity::Deny);
    assert!(digest.raised_by().unwrap().ends_with("stricter.yaml"));
    assert!(set.get("require-app-label").is_some());

    let fleet = Fleet::load(&gitops_dir()).unwrap();
    let rendered = render_node(&gitops_dir(), &fleet.plan_for("node1").unwrap()).unwrap();
    let report = check(&rendered, fleet.settings(), &set);
    assert!(report.has_deny(), "{report}");
    let got: BTreeSet<(&str, Severity)> = report
        .violations
        .iter()
        .map(|v| (v.policy.as_str(), v.severity))
        .collect();
    assert_eq!(
        got,
        BTreeSet::from([("image-pinned-by-digest", Severity::Deny)]),
        "the demo Deployment has app.kubernetes.io/name: {report}"
    );
}

#[test]
fn a_policy_with_a_syntax_error_fails_the_load() {
    let e = PolicySet::load(&data("policy-syntax-error"), None).unwrap_err();
    match &e {
        PolicyError::Expression {
            path,
            policy,
            field,
            message,
        } => {
            assert!(path.ends_with("broken.yaml"));
            assert_eq!(policy, "broken-rule");
            assert_eq!(field, "expression");
            assert!(message.contains("Syntax error"), "{message}");
        }
        other => panic!("expected Expression, got {other}"),
    }
}

#[test]
fn a_policy_with_an_unknown_variable_fails_the_load() {
    let e = PolicySet::load(&data("policy-unknown-variable"), None).unwrap_err();
    assert!(
        matches!(&e, PolicyError::Expression { policy, message, .. }
            if policy == "typo-rule" && message.contains("\"objet\"")),
        "{e}"
    );
}
