//! Unified diffs between live objects and what a server-side dry run says
//! they would become, with the fields the server rewrites on every write
//! (resourceVersion, managedFields, timestamps…) left out.

use serde_json::Value;

const NOISE: [&str; 6] = [
    "managedFields",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "uid",
    "selfLink",
];

/// The object without server bookkeeping, and without `status`.
pub fn normalize(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in NOISE {
            m.remove(k);
        }
        if let Some(a) = m.get_mut("annotations").and_then(Value::as_object_mut) {
            a.remove("deployment.kubernetes.io/revision");
            a.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
        if m.get("annotations")
            .and_then(Value::as_object)
            .is_some_and(|a| a.is_empty())
        {
            m.remove("annotations");
        }
    }
    if let Some(o) = v.as_object_mut() {
        o.remove("status");
    }
    v
}

fn yaml(v: Option<&Value>) -> String {
    match v {
        Some(v) => serde_yaml::to_string(&normalize(v)).unwrap_or_default(),
        None => String::new(),
    }
}

/// A unified diff from `live` (None: absent) to `desired` (None: deleted),
/// labelled with `id`; empty when they are equal.
pub fn unified(id: &str, live: Option<&Value>, desired: Option<&Value>) -> String {
    let (a, b) = (yaml(live), yaml(desired));
    if a == b {
        return String::new();
    }
    let from = if live.is_some() {
        format!("live/{id}")
    } else {
        "/dev/null".into()
    };
    let to = if desired.is_some() {
        format!("desired/{id}")
    } else {
        "/dev/null".into()
    };
    similar::TextDiff::from_lines(&a, &b)
        .unified_diff()
        .context_radius(3)
        .header(&from, &to)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn changed_field_shows_and_bookkeeping_does_not() {
        let live = json!({"apiVersion":"v1","kind":"ConfigMap",
            "metadata":{"name":"a","resourceVersion":"5","managedFields":[{"manager":"x"}]},
            "data":{"k":"old"}});
        let desired = json!({"apiVersion":"v1","kind":"ConfigMap",
            "metadata":{"name":"a","resourceVersion":"6"},"data":{"k":"new"}});
        let d = unified("ConfigMap/default/a", Some(&live), Some(&desired));
        assert!(d.contains("--- live/ConfigMap/default/a"), "{d}");
        assert!(d.contains("-  k: old") && d.contains("+  k: new"), "{d}");
        assert!(
            !d.contains("resourceVersion") && !d.contains("manager"),
            "{d}"
        );
        let same = json!({"apiVersion":"v1","kind":"ConfigMap",
            "metadata":{"name":"a","resourceVersion":"9"},"data":{"k":"old"}});
        assert_eq!(unified("x", Some(&live), Some(&same)), "");
    }

    #[test]
    fn creation_and_deletion() {
        let o = json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a"}});
        let c = unified("ConfigMap/default/a", None, Some(&o));
        assert!(c.starts_with("--- /dev/null"), "{c}");
        assert!(c.contains("+kind: ConfigMap"), "{c}");
        let d = unified("ConfigMap/default/a", Some(&o), None);
        assert!(
            d.contains("+++ /dev/null") && d.contains("-kind: ConfigMap"),
            "{d}"
        );
    }
}
