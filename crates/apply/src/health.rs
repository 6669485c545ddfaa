//! Health of applied objects, with kstatus semantics
//! (sigs.k8s.io/cli-utils/pkg/kstatus): an object is *Current* when its
//! controller has observed the latest generation and reached the declared
//! state, *InProgress* while it gets there, *Failed* when it cannot (a
//! stalled rollout, a failed Job, a crash-looping Pod) — which fails the
//! wait at once instead of at the deadline.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Current,
    InProgress(String),
    Failed(String),
}

impl Health {
    pub fn is_current(&self) -> bool {
        matches!(self, Health::Current)
    }
}

fn int(v: &Value, ptr: &str) -> Option<i64> {
    v.pointer(ptr).and_then(Value::as_i64)
}

fn s<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

/// `(status, reason, message)` of condition `type_`.
fn condition<'a>(v: &'a Value, type_: &str) -> Option<(&'a str, &'a str, &'a str)> {
    v.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))
        .map(|c| {
            let f = |k| c.get(k).and_then(Value::as_str).unwrap_or("");
            (f("status"), f("reason"), f("message"))
        })
}

/// The health of one live object.
pub fn health(obj: &Value) -> Health {
    if obj.pointer("/metadata/deletionTimestamp").is_some() {
        return Health::InProgress("being deleted".into());
    }
    let generation = int(obj, "/metadata/generation");
    let observed = int(obj, "/status/observedGeneration");
    if let (Some(g), Some(o)) = (generation, observed) {
        if o < g {
            return Health::InProgress(format!("generation {g} not yet observed (observed {o})"));
        }
    }
    let group = s(obj, "/apiVersion")
        .map(|a| a.split_once('/').map(|(g, _)| g).unwrap_or(""))
        .unwrap_or("");
    let kind = s(obj, "/kind").unwrap_or("");
    match (group, kind) {
        ("apps", "Deployment") => deployment(obj, generation, observed),
        ("apps", "StatefulSet") => statefulset(obj, generation, observed),
        ("apps", "DaemonSet") => daemonset(obj, generation, observed),
        ("apps", "ReplicaSet") => replicaset(obj),
        ("batch", "Job") => job(obj),
        ("", "Pod") => pod(obj),
        ("", "PersistentVolumeClaim") => match s(obj, "/status/phase") {
            Some("Bound") => Health::Current,
            Some("Lost") => Health::Failed("claim lost its volume".into()),
            p => Health::InProgress(format!("phase {}", p.unwrap_or("unknown"))),
        },
        ("", "Namespace") => match s(obj, "/status/phase") {
            Some("Terminating") => Health::InProgress("namespace terminating".into()),
            _ => Health::Current,
        },
        ("", "Service") => {
            if s(obj, "/spec/type") == Some("LoadBalancer")
                && obj
                    .pointer("/status/loadBalancer/ingress")
                    .and_then(Value::as_array)
                    .is_none_or(|a| a.is_empty())
            {
                Health::InProgress("load balancer has no ingress yet".into())
            } else {
                Health::Current
            }
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => crd(obj),
        _ => generic(obj),
    }
}

/// Any kind: `Stalled`/`Ready`/`Reconciling` conditions as kstatus reads them.
fn generic(obj: &Value) -> Health {
    if let Some(("True", reason, msg)) = condition(obj, "Stalled") {
        return Health::Failed(format!("stalled: {reason} {msg}").trim().to_string());
    }
    if let Some(("True", reason, msg)) = condition(obj, "Reconciling") {
        return Health::InProgress(format!("reconciling: {reason} {msg}").trim().to_string());
    }
    if let Some((st, reason, msg)) = condition(obj, "Ready") {
        if st != "True" {
            return Health::InProgress(format!("not ready: {reason} {msg}").trim().to_string());
        }
    }
    Health::Current
}

fn not_observed(generation: Option<i64>, observed: Option<i64>) -> Option<Health> {
    // a workload controller that has not written status yet
    if generation.is_some() && observed.is_none() {
        return Some(Health::InProgress("no status observed yet".into()));
    }
    None
}

fn deployment(obj: &Value, generation: Option<i64>, observed: Option<i64>) -> Health {
    if let Some(("False", "ProgressDeadlineExceeded", msg)) = condition(obj, "Progressing") {
        return Health::Failed(format!("rollout stalled (ProgressDeadlineExceeded): {msg}"));
    }
    if let Some(h) = not_observed(generation, observed) {
        return h;
    }
    let want = int(obj, "/spec/replicas").unwrap_or(1);
    let updated = int(obj, "/status/updatedReplicas").unwrap_or(0);
    let total = int(obj, "/status/replicas").unwrap_or(0);
    let available = int(obj, "/status/availableReplicas").unwrap_or(0);
    if updated < want {
        return Health::InProgress(format!("{updated}/{want} replicas updated"));
    }
    if total > updated {
        return Health::InProgress(format!(
            "{} old replicas pending termination",
            total - updated
        ));
    }
    if available < want {
        return Health::InProgress(format!("{available}/{want} replicas available"));
    }
    Health::Current
}

fn statefulset(obj: &Value, generation: Option<i64>, observed: Option<i64>) -> Health {
    if let Some(h) = not_observed(generation, observed) {
        return h;
    }
    if s(obj, "/spec/updateStrategy/type") == Some("OnDelete") {
        return Health::Current;
    }
    let want = int(obj, "/spec/replicas").unwrap_or(1);
    let ready = int(obj, "/status/readyReplicas").unwrap_or(0);
    let current = int(obj, "/status/currentReplicas").unwrap_or(0);
    let updated = int(obj, "/status/updatedReplicas").unwrap_or(0);
    if ready < want {
        return Health::InProgress(format!("{ready}/{want} replicas ready"));
    }
    if let Some(partition) = int(obj, "/spec/updateStrategy/rollingUpdate/partition") {
        if updated < want - partition {
            return Health::InProgress(format!(
                "{updated}/{} replicas updated (partition {partition})",
                want - partition
            ));
        }
        return Health::Current;
    }
    if current < want {
        return Health::InProgress(format!("{current}/{want} replicas at the current revision"));
    }
    if s(obj, "/status/currentRevision") != s(obj, "/status/updateRevision") {
        return Health::InProgress("rolling update in progress".into());
    }
    Health::Current
}

fn daemonset(obj: &Value, generation: Option<i64>, observed: Option<i64>) -> Health {
    if let Some(h) = not_observed(generation, observed) {
        return h;
    }
    let desired = int(obj, "/status/desiredNumberScheduled").unwrap_or(0);
    for (field, what) in [
        ("currentNumberScheduled", "scheduled"),
        ("updatedNumberScheduled", "updated"),
        ("numberAvailable", "available"),
        ("numberReady", "ready"),
    ] {
        let n = int(obj, &format!("/status/{field}")).unwrap_or(0);
        if n < desired {
            return Health::InProgress(format!("{n}/{desired} pods {what}"));
        }
    }
    Health::Current
}

fn replicaset(obj: &Value) -> Health {
    let want = int(obj, "/spec/replicas").unwrap_or(1);
    let available = int(obj, "/status/availableReplicas").unwrap_or(0);
    if available < want {
        return Health::InProgress(format!("{available}/{want} replicas available"));
    }
    Health::Current
}

fn job(obj: &Value) -> Health {
    if let Some(("True", reason, msg)) = condition(obj, "Failed") {
        return Health::Failed(format!("job failed: {reason} {msg}").trim().to_string());
    }
    if let Some(("True", _, _)) = condition(obj, "Complete") {
        return Health::Current;
    }
    let ok = int(obj, "/status/succeeded").unwrap_or(0);
    Health::InProgress(format!("job running ({ok} succeeded)"))
}

/// Container waiting reasons that will not resolve by waiting.
const FATAL_WAITING: [&str; 4] = [
    "CrashLoopBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "ErrImageNeverPull",
];

fn pod(obj: &Value) -> Health {
    match s(obj, "/status/phase") {
        Some("Succeeded") => return Health::Current,
        Some("Failed") => {
            return Health::Failed(format!(
                "pod failed: {}",
                s(obj, "/status/reason").unwrap_or("see its events")
            ))
        }
        _ => {}
    }
    for cs in obj
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(reason) = cs.pointer("/state/waiting/reason").and_then(Value::as_str) {
            if FATAL_WAITING.contains(&reason) {
                let name = cs.get("name").and_then(Value::as_str).unwrap_or("?");
                return Health::Failed(format!("container {name}: {reason}"));
            }
        }
    }
    match condition(obj, "Ready") {
        Some(("True", _, _)) => Health::Current,
        _ => Health::InProgress(format!(
            "pod not ready (phase {})",
            s(obj, "/status/phase").unwrap_or("Pending")
        )),
    }
}

fn crd(obj: &Value) -> Health {
    if let Some(("False", reason, msg)) = condition(obj, "NamesAccepted") {
        return Health::Failed(format!("names not accepted: {reason} {msg}"));
    }
    match condition(obj, "Established") {
        Some(("True", _, _)) => Health::Current,
        _ => Health::InProgress("not established yet".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deploy(status: Value) -> Value {
        json!({"apiVersion":"apps/v1","kind":"Deployment",
            "metadata":{"name":"d","generation":2},"spec":{"replicas":3},"status":status})
    }

    #[test]
    fn deployment_rollout() {
        assert!(matches!(
            health(&deploy(json!({"observedGeneration":1}))),
            Health::InProgress(m) if m.contains("generation 2")
        ));
        assert!(matches!(
            health(&deploy(json!({"observedGeneration":2,"replicas":4,"updatedReplicas":3,"availableReplicas":3}))),
            Health::InProgress(m) if m.contains("old replicas")
        ));
        assert!(matches!(
            health(&deploy(json!({"observedGeneration":2,"replicas":3,"updatedReplicas":3,"availableReplicas":2}))),
            Health::InProgress(m) if m.contains("2/3")
        ));
        assert_eq!(
            health(&deploy(
                json!({"observedGeneration":2,"replicas":3,"updatedReplicas":3,"availableReplicas":3})
            )),
            Health::Current
        );
        assert!(matches!(
            health(&deploy(json!({"observedGeneration":2,"conditions":[
                {"type":"Progressing","status":"False","reason":"ProgressDeadlineExceeded","message":"ReplicaSet d-1 has timed out"}]}))),
            Health::Failed(m) if m.contains("timed out")
        ));
        // no status at all yet
        assert!(!health(&deploy(json!({}))).is_current());
    }

    #[test]
    fn jobs_pods_claims_crds() {
        let job = |c: Value| json!({"apiVersion":"batch/v1","kind":"Job","metadata":{"name":"j"},"status":{"conditions":c}});
        assert_eq!(
            health(&job(json!([{"type":"Complete","status":"True"}]))),
            Health::Current
        );
        assert!(matches!(
            health(&job(json!([{"type":"Failed","status":"True","reason":"BackoffLimitExceeded"}]))),
            Health::Failed(m) if m.contains("BackoffLimitExceeded")
        ));
        assert!(!health(&job(json!([]))).is_current());

        let pod =
            |st: Value| json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},"status":st});
        assert_eq!(
            health(&pod(
                json!({"phase":"Running","conditions":[{"type":"Ready","status":"True"}]})
            )),
            Health::Current
        );
        assert!(matches!(
            health(&pod(json!({"phase":"Running","containerStatuses":[
                {"name":"app","state":{"waiting":{"reason":"CrashLoopBackOff"}}}]}))),
            Health::Failed(m) if m.contains("app") && m.contains("CrashLoopBackOff")
        ));
        assert!(!health(&pod(json!({"phase":"Pending"}))).is_current());

        let pvc = |p: &str| json!({"apiVersion":"v1","kind":"PersistentVolumeClaim","metadata":{"name":"c"},"status":{"phase":p}});
        assert_eq!(health(&pvc("Bound")), Health::Current);
        assert!(!health(&pvc("Pending")).is_current());

        let crd = |c: Value| json!({"apiVersion":"apiextensions.k8s.io/v1","kind":"CustomResourceDefinition","metadata":{"name":"x"},"status":{"conditions":c}});
        assert_eq!(
            health(&crd(json!([{"type":"Established","status":"True"}]))),
            Health::Current
        );
        assert!(matches!(
            health(&crd(
                json!([{"type":"NamesAccepted","status":"False","reason":"ListKindConflict"}])
            )),
            Health::Failed(_)
        ));
        assert!(!health(&crd(json!([]))).is_current());
    }

    #[test]
    fn sets_and_generic_conditions() {
        let sts = json!({"apiVersion":"apps/v1","kind":"StatefulSet","metadata":{"name":"s","generation":1},
            "spec":{"replicas":2},"status":{"observedGeneration":1,"readyReplicas":2,"currentReplicas":2,
            "currentRevision":"a","updateRevision":"b"}});
        assert!(matches!(health(&sts), Health::InProgress(m) if m.contains("rolling")));
        let ds = json!({"apiVersion":"apps/v1","kind":"DaemonSet","metadata":{"name":"d","generation":1},
            "status":{"observedGeneration":1,"desiredNumberScheduled":2,"currentNumberScheduled":2,
            "updatedNumberScheduled":2,"numberAvailable":1,"numberReady":2}});
        assert!(matches!(health(&ds), Health::InProgress(m) if m.contains("1/2 pods available")));
        let cr = |c: Value| json!({"apiVersion":"example.com/v1","kind":"Widget","metadata":{"name":"w"},"status":{"conditions":c}});
        assert_eq!(
            health(&cr(json!([{"type":"Ready","status":"True"}]))),
            Health::Current
        );
        assert!(!health(&cr(json!([{"type":"Ready","status":"False"}]))).is_current());
        assert!(matches!(
            health(&cr(
                json!([{"type":"Stalled","status":"True","reason":"BadConfig"}])
            )),
            Health::Failed(_)
        ));
        // no status: nothing to wait for
        assert_eq!(
            health(&json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"}})),
            Health::Current
        );
        let deleting = json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c","deletionTimestamp":"2026-01-01T00:00:00Z"}});
        assert!(!health(&deleting).is_current());
    }
}
