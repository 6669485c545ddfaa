//! Evaluating a policy set over objects.
//!
//! For each object, only the policies whose `match` selects it run. Each runs
//! first on the fast path ([`crate::fast`]), which can only pass an object;
//! if it does not, the `cel` crate evaluates the expression part by part
//! ([`crate::explain`]) and has the final word. An error while evaluating is
//! a violation (the policy fails closed).

use std::collections::HashMap;

use cel::common::types::{CelList, CelMap, CelMapKey, CelNull, CelString};
use cel::common::value::Val;
use cel::objects::Value as CelValue;
use cel::Context;
use serde_json::Value;

use crate::explain::{explain, explain_fast};
use crate::fast;
use crate::json_val::json_val;
use crate::objects::{containers, pod_spec, ObjectRef};
use crate::report::{Report, Violation};
use crate::set::{Policy, PolicySet};
use crate::spec::{LabelOperator, MatchSpec};

/// Check `objects` (and the fleet settings object, if given) against `set`.
pub(crate) fn check(set: &PolicySet, objects: &[Value], settings: Option<&Value>) -> Report {
    check_with(set, objects, settings, true)
}

/// [`check`], with the fast path on or off (tests compare the two).
fn check_with(
    set: &PolicySet,
    objects: &[Value],
    settings: Option<&Value>,
    use_fast: bool,
) -> Report {
    let mut report = Report {
        policies: set.policies.len(),
        ..Report::default()
    };
    let mut root = Context::with_env(set.env.clone());
    root.add_variable_as_val("params", json_val(&set.params));
    let mut evaluated = vec![0usize; set.policies.len()];
    let mut candidates: Vec<usize> = Vec::new();

    for obj in objects {
        report.objects += 1;
        candidates.clear();
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
        candidates.extend(set.by_kind.get(kind).into_iter().flatten());
        candidates.extend(&set.any_kind);
        if candidates.is_empty() {
            continue;
        }
        candidates.sort_unstable();
        candidates.retain(|&i| {
            let m = &set.policies[i].spec.matcher;
            m.namespaces.is_empty() && m.exclude_namespaces.is_empty() && m.label_selector.is_none()
                || matches(m, obj)
        });
        check_one(
            set,
            &root,
            obj,
            &candidates,
            &mut evaluated,
            &mut report.violations,
            use_fast,
        );
    }
    if let Some(s) = settings {
        report.objects += 1;
        candidates.clear();
        candidates.extend(
            set.policies
                .iter()
                .enumerate()
                .filter(|(_, p)| p.matches_settings && matches(&p.spec.matcher, s))
                .map(|(i, _)| i),
        );
        check_one(
            set,
            &root,
            s,
            &candidates,
            &mut evaluated,
            &mut report.violations,
            use_fast,
        );
    }
    report.evaluated = set
        .policies
        .iter()
        .zip(evaluated)
        .filter(|(_, n)| *n > 0)
        .map(|(p, n)| (p.spec.name.clone(), n))
        .collect();
    report
}

/// Evaluate the `candidates` policies on one object.
fn check_one<'v>(
    set: &'v PolicySet,
    root: &Context<'_, 'v>,
    obj: &'v Value,
    candidates: &[usize],
    evaluated: &mut [usize],
    out: &mut Vec<Violation>,
    use_fast: bool,
) {
    if candidates.is_empty() {
        return;
    }
    let pod = pod_spec(obj);
    let all_containers: Vec<&Value> = pod.map_or_else(Vec::new, |p| containers(p).collect());
    let fast_env = fast::Env {
        object: obj,
        params: &set.params,
        pod_spec: pod,
        containers: &all_containers,
        scratch: Default::default(),
    };
    let builtins = || -> Builtins<'v> {
        let list: Vec<Box<dyn Val + 'v>> = all_containers.iter().map(|c| json_val(c)).collect();
        vec![
            (
                "podSpec".to_string(),
                pod.map_or_else(|| Box::new(CelNull) as Box<dyn Val>, json_val),
            ),
            ("containers".to_string(), Box::new(CelList::from(list))),
        ]
    };
    // The `cel` crate's scope, built only when some policy needs it.
    let mut scope: Option<Context<'_, 'v>> = None;

    for &i in candidates {
        let policy = &set.policies[i];
        evaluated[i] += 1;
        // The fast path, when it can tell; the `cel` crate otherwise.
        if let Some(verdict) = policy
            .fast
            .as_ref()
            .filter(|_| use_fast)
            .and_then(|n| fast::eval_bool(n, &fast_env, &[]))
        {
            if verdict {
                continue;
            }
            if let Some(Some(failing)) = explain_fast(&policy.parts, &fast_env, &[]) {
                let message = match &policy.message_expression {
                    None => None,
                    Some(p) => match policy.message_fast.as_ref() {
                        Some(n) => fast::eval_string(n, &fast_env, &[]),
                        None => None,
                    }
                    .or_else(|| {
                        let scope = scope.get_or_insert_with(|| cel_scope(root, obj, &builtins));
                        message_of(p, scope)
                    }),
                };
                out.push(violation(policy, obj, failing, message));
                continue;
            }
        }
        let scope = scope.get_or_insert_with(|| cel_scope(root, obj, &builtins));
        let failure = if policy.variables.is_empty() {
            evaluate(policy, scope)
        } else {
            // VAP-style variables: each sees the ones before it.
            let mut vars = builtins();
            let mut failed = None;
            for (name, program) in &policy.variables {
                let mut s = scope.new_inner_scope();
                s.add_variable_as_val("variables", Box::new(variables_map(clone_all(&vars))));
                match CelValue::resolve_val(program.expression(), &s) {
                    Ok(v) => vars.push((name.clone(), v.into_owned())),
                    Err(e) => {
                        failed = Some(Failure {
                            failing: format!("variables.{name} -> error: {e}"),
                            message: None,
                        });
                        break;
                    }
                }
            }
            match failed {
                Some(f) => Some(f),
                None => {
                    let mut s = scope.new_inner_scope();
                    s.add_variable_as_val("variables", Box::new(variables_map(vars)));
                    evaluate(policy, &s)
                }
            }
        };
        if let Some(Failure { failing, message }) = failure {
            out.push(violation(policy, obj, failing, message));
        }
    }
}

type Builtins<'v> = Vec<(String, Box<dyn Val + 'v>)>;

/// The `cel` crate's scope for one object.
fn cel_scope<'p, 'v>(
    root: &'p Context<'_, 'v>,
    obj: &'v Value,
    builtins: &dyn Fn() -> Builtins<'v>,
) -> Context<'p, 'v> {
    let mut s = root.new_inner_scope();
    s.add_variable_as_val("object", json_val(obj));
    s.add_variable_as_val("oldObject", Box::new(CelNull));
    s.add_variable_as_val("variables", Box::new(variables_map(builtins())));
    s
}

fn violation(policy: &Policy, obj: &Value, failing: String, message: Option<String>) -> Violation {
    Violation {
        object: ObjectRef::of(obj),
        policy: policy.spec.name.clone(),
        severity: policy.severity,
        origin: policy.origin,
        message: message.unwrap_or_else(|| policy.message_text.clone()),
        failing,
    }
}

fn message_of(p: &cel::Program, ctx: &Context<'_, '_>) -> Option<String> {
    let v = CelValue::resolve_val(p.expression(), ctx).ok()?;
    let s = v.downcast_ref::<CelString>()?;
    Some(s.inner().to_string())
}

fn clone_all<'v>(vars: &[(String, Box<dyn Val + 'v>)]) -> Vec<(String, Box<dyn Val + 'v>)> {
    vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn variables_map<'v>(vars: Vec<(String, Box<dyn Val + 'v>)>) -> CelMap<'v> {
    let map: HashMap<CelMapKey<'v>, Box<dyn Val + 'v>> = vars
        .into_iter()
        .map(|(k, v)| (CelMapKey::from(k), v))
        .collect();
    CelMap::from(map)
}

struct Failure {
    failing: String,
    message: Option<String>,
}

/// `None` if the policy passes in `ctx`.
fn evaluate(policy: &Policy, ctx: &Context<'_, '_>) -> Option<Failure> {
    let failing = explain(policy.expression.expression(), &policy.parts, ctx)?;
    let message = policy
        .message_expression
        .as_ref()
        .and_then(|p| message_of(p, ctx));
    Some(Failure { failing, message })
}

/// Does the policy's `match` select this object?
fn matches(m: &MatchSpec, obj: &Value) -> bool {
    let meta = obj.get("metadata");
    let ns = meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if !m.namespaces.is_empty() && !m.namespaces.iter().any(|n| n == ns) {
        return false;
    }
    if !ns.is_empty() && m.exclude_namespaces.iter().any(|n| n == ns) {
        return false;
    }
    let Some(sel) = &m.label_selector else {
        return true;
    };
    let labels = meta.and_then(|m| m.get("labels"));
    let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    sel.match_labels
        .iter()
        .all(|(k, v)| label(k) == Some(v.as_str()))
        && sel.match_expressions.iter().all(|r| match r.operator {
            LabelOperator::In => label(&r.key).is_some_and(|v| r.values.iter().any(|x| x == v)),
            LabelOperator::NotIn => !label(&r.key).is_some_and(|v| r.values.iter().any(|x| x == v)),
            LabelOperator::Exists => label(&r.key).is_some(),
            LabelOperator::DoesNotExist => label(&r.key).is_none(),
        })
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use cairn_render::{render_dir, TemplateContext};
    use serde_json::json;

    use super::*;

    fn policies_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies")
    }

    /// Objects of every fixture, plus some the fixtures do not have.
    fn corpus() -> Vec<Value> {
        let mut objects = Vec::new();
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&data)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.join("kustomization.yaml").is_file())
            .collect();
        dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../gitops/apps/hello/base"));
        dirs.sort();
        for d in dirs {
            objects.extend(render_dir(&d, &TemplateContext::default()).unwrap().objects);
        }
        objects.extend([
            // Odd shapes: errors and type mixes the fast path must leave to cel.
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "no-image"},
                   "spec": {"containers": [{"name": "a"}]}}),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "wrong-types"},
                   "spec": {"hostNetwork": "yes", "containers": [{"name": "a", "image": 3,
                     "securityContext": {"privileged": "true", "runAsUser": "0",
                       "capabilities": {"add": "SYS_ADMIN", "drop": "ALL"}}}],
                     "volumes": [{"name": "h", "hostPath": {"path": 1}}]}}),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "no-containers"},
                   "spec": {}}),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "unicode"},
                   "spec": {"containers": [{"name": "ü", "image": "régistry/äpp:1"}]}}),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
                   "spec": {"type": 1}}),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "no-spec"}}),
        ]);
        objects
    }

    /// The fast path changes nothing but the speed: same violations, same
    /// failing parts, on every object of the corpus.
    #[test]
    fn fast_path_agrees_with_the_cel_crate() {
        let set = PolicySet::load(&policies_dir(), None).unwrap();
        let objects = corpus();
        assert!(objects.len() > 40);
        let fast = check_with(&set, &objects, None, true);
        let slow = check_with(&set, &objects, None, false);
        assert_eq!(fast, slow);
        assert!(fast.has_deny());
    }

    #[test]
    fn fast_path_covers_the_default_pod_and_service_rules() {
        let set = PolicySet::load(&policies_dir(), None).unwrap();
        // The OS-update rules (semver, regex, duration) run once per check
        // and stay on the cel crate.
        for p in &set.policies {
            assert_eq!(p.fast.is_some(), !p.matches_settings, "{}", p.name());
        }
    }

    #[test]
    fn match_selects_by_kind_namespace_and_labels() {
        let policy = |name: &str, m: &str| {
            format!(
                "kind: Policy\nname: {name}\nseverity: warn\nmatch:\n{m}\nexpression: 'false'\nmessage: m\n---\n"
            )
        };
        let text = [
            policy("any", "  {}"),
            policy("pods", "  kinds: [Pod]"),
            policy("in-a", "  namespaces: [a]"),
            policy("not-b", "  excludeNamespaces: [b]"),
            policy(
                "labelled",
                "  labelSelector:\n    matchLabels: {tier: web}\n    matchExpressions:\n      - {key: team, operator: In, values: [x, y]}\n      - {key: legacy, operator: DoesNotExist}",
            ),
            policy("not-team-z", "  labelSelector:\n    matchExpressions: [{key: team, operator: NotIn, values: [z]}]"),
            policy("has-team", "  labelSelector:\n    matchExpressions: [{key: team, operator: Exists}]"),
        ]
        .concat();
        let set = PolicySet::from_sources(&[(PathBuf::from("m.yaml"), text)], &[]).unwrap();
        let obj = |kind: &str, ns: Option<&str>, labels: Value| {
            let mut o = json!({"apiVersion": "v1", "kind": kind, "metadata": {"name": "o", "labels": labels}});
            if let Some(ns) = ns {
                o["metadata"]["namespace"] = json!(ns);
            }
            o
        };
        let hits = |o: Value| -> Vec<String> {
            let mut v: Vec<String> = check(&set, &[o], None)
                .violations
                .into_iter()
                .map(|v| v.policy)
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            hits(obj("Pod", Some("a"), json!({}))),
            ["any", "in-a", "not-b", "not-team-z", "pods"]
        );
        assert_eq!(
            hits(obj("Service", Some("b"), json!({}))),
            ["any", "not-team-z"]
        );
        assert_eq!(
            hits(obj("Namespace", None, json!({}))),
            ["any", "not-b", "not-team-z"]
        );
        assert_eq!(
            hits(obj(
                "Service",
                Some("c"),
                json!({"tier": "web", "team": "x"})
            )),
            ["any", "has-team", "labelled", "not-b", "not-team-z"]
        );
        assert_eq!(
            hits(obj(
                "Service",
                Some("c"),
                json!({"tier": "web", "team": "z", "legacy": "1"})
            )),
            ["any", "has-team", "not-b"]
        );
        // FleetSettings only for policies that name it.
        let settings = json!({"kind": "FleetSettings", "metadata": {"name": "fleet.yaml"}});
        assert!(check(&set, &[], Some(&settings)).violations.is_empty());
    }
}
