//! cairn's policy engine: checks every rendered object, and the fleet's OS
//! update settings, against CEL policies before anything is applied —
//! offline, on the node, with no admission webhook.
//!
//! * Policies are data: YAML files of `kind: Policy` documents (format:
//!   `policies/README.md`). The image bakes a set ([`BAKED_POLICY_DIR`]); a
//!   fleet repository may add rules and raise `warn` to `deny` in
//!   [`REPO_POLICY_DIR`], never remove or weaken a baked rule.
//!   [`PolicySet::load`] enforces that, and compiles every expression once;
//!   a policy that does not compile fails the load.
//! * Expressions are CEL with the variables of Kubernetes'
//!   ValidatingAdmissionPolicy (`object`, `oldObject` — always null here,
//!   `params`, `variables`), so they carry over. `variables.podSpec` and
//!   `variables.containers` are built in: the pod spec of any workload kind
//!   and all of its containers (see [`pod_spec`]).
//! * [`check`] is what the agent calls between render and apply; any `deny`
//!   in the [`Report`] means apply nothing. [`check_tree`] renders a
//!   directory and checks it (`cairnctl policy check DIR [--node NAME]`).
//!
//! The CEL implementation is the `cel` crate (cel-rust, formerly published
//! as `cel-interpreter`).

#![forbid(unsafe_code)]

mod env;
mod error;
mod eval;
mod explain;
mod fast;
mod json_val;
mod objects;
mod report;
mod set;
mod spec;

use std::fmt;
use std::path::Path;

use cairn_render::{render_dir, render_node, Fleet, FleetSettings, Rendered, TemplateContext};

pub use error::PolicyError;
pub use objects::{containers, pod_spec, settings_object, ObjectRef, SETTINGS_KIND};
pub use report::{Report, Violation};
pub use set::{Origin, Policy, PolicySet, BAKED_POLICY_DIR, REPO_POLICY_DIR};
pub use spec::{
    LabelOperator, LabelRequirement, LabelSelector, MatchSpec, PolicySpec, Severity, VariableSpec,
};

/// Check a node's rendered objects and the fleet settings against `policies`.
///
/// Never fails: an expression that cannot be evaluated on an object (a
/// missing field, a type error) is a violation of that policy, with the
/// policy's severity — a `deny` policy fails closed.
pub fn check(rendered: &Rendered, settings: &FleetSettings, policies: &PolicySet) -> Report {
    let settings = settings_object(settings);
    eval::check(policies, &rendered.objects, Some(&settings))
}

/// Check objects, and the fleet settings when given (a plain kustomization
/// directory has none).
pub fn check_objects(
    objects: &[serde_json::Value],
    settings: Option<&FleetSettings>,
    policies: &PolicySet,
) -> Report {
    let settings = settings.map(settings_object);
    eval::check(policies, objects, settings.as_ref())
}

/// The reports of [`check_tree`]: one per node rendered (or one for a plain
/// kustomization directory).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TreeReport {
    /// `(what was rendered, its report)`: `node NAME` or the directory.
    pub targets: Vec<(String, Report)>,
}

impl TreeReport {
    /// True when any target has a `deny` violation.
    pub fn has_deny(&self) -> bool {
        self.targets.iter().any(|(_, r)| r.has_deny())
    }
}

impl fmt::Display for TreeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (label, report)) in self.targets.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            writeln!(f, "== {label}")?;
            write!(f, "{report}")?;
        }
        Ok(())
    }
}

/// What `cairnctl policy check DIR [--node NAME]` does: render and check.
///
/// * `DIR` is a fleet repository (it has `fleet.yaml`, or `node` is given):
///   the policies are `baked_dir`'s, tightened by `DIR/.cairn/policies/`;
///   the named node, or every node entry, is rendered and checked together
///   with the fleet settings.
/// * Otherwise `DIR` is a kustomization directory, rendered without template
///   values and checked against `baked_dir` (plus `DIR/.cairn/policies/` if
///   it exists); there are no fleet settings to check.
///
/// Errors are load and render failures; violations are in the report.
pub fn check_tree(
    dir: &Path,
    node: Option<&str>,
    baked_dir: &Path,
) -> Result<TreeReport, PolicyError> {
    let policies = PolicySet::load(baked_dir, Some(dir))?;
    let mut out = TreeReport::default();
    if node.is_some() || dir.join("fleet.yaml").is_file() {
        let fleet = Fleet::load(dir)?;
        let names: Vec<String> = match node {
            Some(n) => vec![n.to_string()],
            None => fleet.node_names().into_iter().map(str::to_string).collect(),
        };
        for name in names {
            let plan = fleet.plan_for(&name)?;
            let rendered = render_node(dir, &plan)?;
            out.targets.push((
                format!("node {name}"),
                check(&rendered, fleet.settings(), &policies),
            ));
        }
    } else {
        let rendered = render_dir(dir, &TemplateContext::default())?;
        out.targets.push((
            dir.display().to_string(),
            check_objects(&rendered.objects, None, &policies),
        ));
    }
    Ok(out)
}
