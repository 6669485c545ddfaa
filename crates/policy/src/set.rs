//! A loaded, compiled and merged set of policies.
//!
//! Loading follows these steps, in order; any failure rejects the whole set:
//!
//! 1. read the baked files (the image's `policies/` directory) and the
//!    repository's files (`.cairn/policies/`), see [`crate::spec`];
//! 2. reject duplicate names within each origin, and parameters in the
//!    repository;
//! 3. compare every repository policy with the baked policy of the same name,
//!    if any: it may only be identical or raise the severity
//!    ([`PolicyError::Weakens`] otherwise); new names are additions;
//! 4. validate and compile every policy (names, match, CEL expressions and
//!    the names they refer to).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cel::common::ast::{EntryExpr, Expr, IdedExpr};
use cel::{Env, Program};

use crate::env::policy_env;
use crate::error::PolicyError;
use crate::explain::Parts;
use crate::fast;
use crate::spec::{parse_file, read_dir_sources, LabelOperator, MatchSpec, PolicySpec, Severity};

/// Where the image keeps its policy directory (the default for the agent and
/// `cairnctl`).
pub const BAKED_POLICY_DIR: &str = "/usr/share/cairn/policies";

/// Where a fleet repository keeps its own policies, relative to its root.
pub const REPO_POLICY_DIR: &str = ".cairn/policies";

/// Variables every expression sees under `variables.`, computed by cairn.
pub(crate) const BUILTIN_VARIABLES: [&str; 2] = ["podSpec", "containers"];

/// Identifiers an expression may use without binding them itself.
const TOP_LEVEL: [&str; 4] = ["object", "oldObject", "params", "variables"];

/// Names CEL resolves to types or namespaces rather than to variables.
const TYPE_NAMES: [&str; 16] = [
    "bool",
    "bytes",
    "double",
    "dyn",
    "int",
    "list",
    "map",
    "null_type",
    "string",
    "type",
    "uint",
    "optional",
    "optional_type",
    "strings",
    "kubernetes",
    "google",
];

/// Where a policy comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Baked into the image: the floor.
    Baked,
    /// Added by the fleet repository.
    Repo,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Origin::Baked => "baked",
            Origin::Repo => "repo",
        })
    }
}

/// One compiled policy.
#[derive(Debug)]
pub struct Policy {
    pub(crate) spec: PolicySpec,
    pub(crate) origin: Origin,
    pub(crate) file: PathBuf,
    /// The repository file that raised this baked policy's severity.
    pub(crate) raised_by: Option<PathBuf>,
    pub(crate) severity: Severity,
    pub(crate) expression: Program,
    pub(crate) variables: Vec<(String, Program)>,
    pub(crate) message_expression: Option<Program>,
    /// Whether `match.kinds` names `FleetSettings`.
    pub(crate) matches_settings: bool,
    /// The expression on the fast path, if it is in its subset.
    pub(crate) fast: Option<fast::Node>,
    /// The texts of the expression's parts, to report the failing one.
    pub(crate) parts: Parts,
    /// The message expression on the fast path, if it is in its subset.
    pub(crate) message_fast: Option<fast::Node>,
    /// `message` with folded whitespace, as reports show it.
    pub(crate) message_text: String,
}

impl Policy {
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The effective severity (after a repository raised it, if it did).
    pub fn severity(&self) -> Severity {
        self.severity
    }

    pub fn message(&self) -> &str {
        &self.spec.message
    }

    /// The validation expression's source.
    pub fn expression(&self) -> &str {
        &self.spec.expression
    }

    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// The file the policy was defined in.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The repository file that raised this baked policy to `deny`, if any.
    pub fn raised_by(&self) -> Option<&Path> {
        self.raised_by.as_deref()
    }

    /// The policy as written.
    pub fn spec(&self) -> &PolicySpec {
        &self.spec
    }
}

/// A verified policy set: only [`PolicySet::load`] and friends build one, and
/// they refuse anything that does not compile or that would weaken a baked
/// policy.
pub struct PolicySet {
    pub(crate) env: Arc<Env>,
    pub(crate) policies: Vec<Policy>,
    pub(crate) params: serde_json::Value,
    /// Policy indexes by `match.kinds` entry.
    pub(crate) by_kind: HashMap<String, Vec<usize>>,
    /// Policies without `match.kinds` (every Kubernetes object).
    pub(crate) any_kind: Vec<usize>,
}

impl std::fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicySet")
            .field("policies", &self.policies)
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl PolicySet {
    /// The baked policies of `baked_dir`, tightened by the repository's
    /// `<repo_root>/.cairn/policies/` when `repo_root` is given and that
    /// directory exists.
    pub fn load(baked_dir: &Path, repo_root: Option<&Path>) -> Result<PolicySet, PolicyError> {
        let baked = read_dir_sources(baked_dir)?;
        let repo = match repo_root.map(|r| r.join(REPO_POLICY_DIR)) {
            Some(dir) if dir.is_dir() => read_dir_sources(&dir)?,
            _ => Vec::new(),
        };
        Self::from_sources(&baked, &repo)
    }

    /// The same as [`PolicySet::load`], from file contents already read:
    /// `(path, text)` pairs; the paths only name files in errors and reports.
    pub fn from_sources(
        baked: &[(PathBuf, String)],
        repo: &[(PathBuf, String)],
    ) -> Result<PolicySet, PolicyError> {
        // Step 1 and 2: read, reject duplicates and repository parameters.
        let mut params: Option<(PathBuf, serde_json::Map<String, serde_json::Value>)> = None;
        let mut baked_specs: Vec<(PolicySpec, PathBuf)> = Vec::new();
        for (path, text) in baked {
            let contents = parse_file(path, text)?;
            for (_, p) in contents.params {
                if let Some((first, _)) = &params {
                    return Err(PolicyError::DuplicateParams {
                        first: first.clone(),
                        second: path.clone(),
                    });
                }
                params = Some((path.clone(), p.params));
            }
            baked_specs.extend(contents.policies.into_iter().map(|s| (s, path.clone())));
        }
        check_unique(&baked_specs)?;
        let mut repo_specs: Vec<(PolicySpec, PathBuf)> = Vec::new();
        for (path, text) in repo {
            let contents = parse_file(path, text)?;
            if let Some((doc, _)) = contents.params.first() {
                return Err(PolicyError::ParamsInRepo {
                    path: path.clone(),
                    doc: *doc,
                });
            }
            repo_specs.extend(contents.policies.into_iter().map(|s| (s, path.clone())));
        }
        check_unique(&repo_specs)?;

        // Step 3: the repository may raise, never weaken.
        let mut merged: Vec<(PolicySpec, PathBuf, Origin, Severity, Option<PathBuf>)> = baked_specs
            .into_iter()
            .map(|(s, p)| {
                let sev = s.severity;
                (s, p, Origin::Baked, sev, None)
            })
            .collect();
        for (spec, path) in repo_specs {
            match merged.iter_mut().find(|m| m.0.name == spec.name) {
                Some(base) => {
                    if let Some(what) = weakening(&base.0, &spec) {
                        return Err(PolicyError::Weakens {
                            path,
                            policy: spec.name,
                            baked: base.1.clone(),
                            what,
                        });
                    }
                    if spec.severity > base.3 {
                        base.3 = spec.severity;
                        base.4 = Some(path);
                    }
                }
                None => {
                    let sev = spec.severity;
                    merged.push((spec, path, Origin::Repo, sev, None));
                }
            }
        }

        // Step 4: validate and compile.
        let env = policy_env();
        let mut policies = Vec::with_capacity(merged.len());
        for (spec, file, origin, severity, raised_by) in merged {
            policies.push(compile(&env, spec, file, origin, severity, raised_by)?);
        }
        let mut by_kind: HashMap<String, Vec<usize>> = HashMap::new();
        let mut any_kind = Vec::new();
        for (i, p) in policies.iter().enumerate() {
            if p.spec.matcher.kinds.is_empty() {
                any_kind.push(i);
            }
            let kinds: BTreeSet<&String> = p.spec.matcher.kinds.iter().collect();
            for k in kinds {
                by_kind.entry(k.clone()).or_default().push(i);
            }
        }
        Ok(PolicySet {
            env,
            policies,
            params: serde_json::Value::Object(params.map(|p| p.1).unwrap_or_default()),
            by_kind,
            any_kind,
        })
    }

    /// All policies, baked ones first, in file order.
    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    /// The policy named `name`.
    pub fn get(&self, name: &str) -> Option<&Policy> {
        self.policies.iter().find(|p| p.spec.name == name)
    }

    /// What expressions see as `params` (an empty map without a
    /// `PolicyParams` document).
    pub fn params(&self) -> &serde_json::Value {
        &self.params
    }
}

fn check_unique(specs: &[(PolicySpec, PathBuf)]) -> Result<(), PolicyError> {
    let mut seen: BTreeMap<&str, &PathBuf> = BTreeMap::new();
    for (spec, path) in specs {
        if let Some(first) = seen.insert(&spec.name, path) {
            return Err(PolicyError::DuplicateName {
                name: spec.name.clone(),
                first: first.clone(),
                second: path.clone(),
            });
        }
    }
    Ok(())
}

/// How `repo` would weaken `baked`, if it would. Only the severity may
/// differ, and only upwards; `description` is documentation and may differ.
fn weakening(baked: &PolicySpec, repo: &PolicySpec) -> Option<String> {
    if repo.severity < baked.severity {
        return Some(format!(
            "it lowers the severity from {} to {}",
            baked.severity, repo.severity
        ));
    }
    if repo.expression.trim() != baked.expression.trim() {
        return Some("it changes the expression".into());
    }
    if normalized(&repo.matcher) != normalized(&baked.matcher) {
        return Some("it changes `match` (a narrower match would exempt objects)".into());
    }
    if repo.variables != baked.variables {
        return Some("it changes `variables`".into());
    }
    if repo.message != baked.message || repo.message_expression != baked.message_expression {
        return Some("it changes the message".into());
    }
    None
}

fn normalized(m: &MatchSpec) -> MatchSpec {
    let mut m = m.clone();
    for v in [&mut m.kinds, &mut m.namespaces, &mut m.exclude_namespaces] {
        v.sort();
        v.dedup();
    }
    m
}

fn compile(
    env: &Env,
    spec: PolicySpec,
    file: PathBuf,
    origin: Origin,
    severity: Severity,
    raised_by: Option<PathBuf>,
) -> Result<Policy, PolicyError> {
    let invalid = |message: String| PolicyError::Invalid {
        path: file.clone(),
        policy: spec.name.clone(),
        message,
    };
    if spec.kind != "Policy" {
        return Err(invalid(format!("kind {:?} is not Policy", spec.kind)));
    }
    if !valid_name(&spec.name) {
        return Err(invalid(
            "the name must be lowercase letters, digits, '-' and '.', starting and ending \
             with a letter or digit, at most 253 characters"
                .into(),
        ));
    }
    if spec.message.trim().is_empty() {
        return Err(invalid("`message` must not be empty".into()));
    }
    let m = &spec.matcher;
    for k in &m.kinds {
        if k.is_empty() || k.chars().any(|c| !c.is_ascii_alphanumeric()) {
            return Err(invalid(format!(
                "match.kinds: {k:?} is not a kind (like Deployment)"
            )));
        }
    }
    if let Some(sel) = &m.label_selector {
        for r in &sel.match_expressions {
            let needs_values = matches!(r.operator, LabelOperator::In | LabelOperator::NotIn);
            if needs_values == r.values.is_empty() {
                return Err(invalid(format!(
                    "match.labelSelector: {:?} {:?} {}",
                    r.key,
                    r.operator,
                    if needs_values {
                        "needs values"
                    } else {
                        "takes no values"
                    }
                )));
            }
        }
    }

    let compile_one = |field: String, src: &str, defined: &[String]| {
        let expr_err = |message: String| PolicyError::Expression {
            path: file.clone(),
            policy: spec.name.clone(),
            field: field.clone(),
            message,
        };
        if src.trim().is_empty() {
            return Err(expr_err("is empty".into()));
        }
        let program = env
            .compile(src)
            .map_err(|e| expr_err(e.to_string().trim_end().to_string()))?;
        check_names(program.expression(), defined).map_err(expr_err)?;
        Ok(program)
    };

    let mut defined: Vec<String> = BUILTIN_VARIABLES.iter().map(|s| s.to_string()).collect();
    let mut variables = Vec::new();
    for v in &spec.variables {
        let field = format!("variables[{}]", v.name);
        if !is_identifier(&v.name) {
            return Err(invalid(format!(
                "{field}: the name must be a CEL identifier ([A-Za-z_][A-Za-z0-9_]*)"
            )));
        }
        if defined.contains(&v.name) {
            return Err(invalid(format!(
                "{field}: {:?} is already defined (built-in variables: {})",
                v.name,
                BUILTIN_VARIABLES.join(", ")
            )));
        }
        let program = compile_one(field, &v.expression, &defined)?;
        defined.push(v.name.clone());
        variables.push((v.name.clone(), program));
    }
    let expression = compile_one("expression".into(), &spec.expression, &defined)?;
    let message_expression = match &spec.message_expression {
        Some(src) => Some(compile_one("messageExpression".into(), src, &defined)?),
        None => None,
    };
    let matches_settings = spec.matcher.kinds.iter().any(|k| k == "FleetSettings");
    let fast = if variables.is_empty() {
        fast::compile(expression.expression())
    } else {
        None
    };
    let parts = Parts::of(expression.expression(), &spec.expression);
    let message_fast = match (&message_expression, variables.is_empty()) {
        (Some(p), true) => fast::compile(p.expression()),
        _ => None,
    };
    let message_text = spec
        .message
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    Ok(Policy {
        spec,
        origin,
        file,
        raised_by,
        severity,
        expression,
        variables,
        message_expression,
        matches_settings,
        fast,
        parts,
        message_fast,
        message_text,
    })
}

fn valid_name(s: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !s.is_empty()
        && s.len() <= 253
        && s.chars().all(|c| ok_char(c) || c == '-' || c == '.')
        && s.starts_with(ok_char)
        && s.ends_with(ok_char)
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Every free identifier must be a known top-level variable (or a type
/// name), and every `variables.NAME` must be defined before use.
fn check_names(expr: &IdedExpr, defined: &[String]) -> Result<(), String> {
    let mut bound: Vec<String> = Vec::new();
    walk_names(expr, &mut bound, defined)
}

fn walk_names(e: &IdedExpr, bound: &mut Vec<String>, defined: &[String]) -> Result<(), String> {
    match &e.expr {
        Expr::Ident(name) => {
            if !bound.iter().any(|b| b == name)
                && !TOP_LEVEL.contains(&name.as_str())
                && !TYPE_NAMES.contains(&name.as_str())
            {
                return Err(format!(
                    "unknown name {name:?}: expressions see {}",
                    TOP_LEVEL.join(", ")
                ));
            }
            Ok(())
        }
        Expr::Select(s) => {
            if let Expr::Ident(root) = &s.operand.expr {
                if root == "variables"
                    && !bound.iter().any(|b| b == "variables")
                    && !defined.contains(&s.field)
                {
                    return Err(format!(
                        "variables.{} is not defined (defined here: {})",
                        s.field,
                        defined.join(", ")
                    ));
                }
            }
            walk_names(&s.operand, bound, defined)
        }
        Expr::Call(c) => {
            if let Some(t) = &c.target {
                walk_names(t, bound, defined)?;
            }
            c.args
                .iter()
                .try_for_each(|a| walk_names(a, bound, defined))
        }
        Expr::Comprehension(c) => {
            walk_names(&c.iter_range, bound, defined)?;
            walk_names(&c.accu_init, bound, defined)?;
            let before = bound.len();
            bound.push(c.iter_var.clone());
            bound.extend(c.iter_var2.clone());
            bound.push(c.accu_var.clone());
            let r = [&c.loop_cond, &c.loop_step, &c.result]
                .into_iter()
                .try_for_each(|x| walk_names(x, bound, defined));
            bound.truncate(before);
            r
        }
        Expr::List(l) => l
            .elements
            .iter()
            .try_for_each(|x| walk_names(x, bound, defined)),
        Expr::Map(m) => m.entries.iter().try_for_each(|en| match &en.expr {
            EntryExpr::MapEntry(me) => {
                walk_names(&me.key, bound, defined)?;
                walk_names(&me.value, bound, defined)
            }
            EntryExpr::StructField(f) => walk_names(&f.value, bound, defined),
        }),
        Expr::Struct(s) => s.entries.iter().try_for_each(|en| match &en.expr {
            EntryExpr::MapEntry(me) => {
                walk_names(&me.key, bound, defined)?;
                walk_names(&me.value, bound, defined)
            }
            EntryExpr::StructField(f) => walk_names(&f.value, bound, defined),
        }),
        Expr::Literal(_) | Expr::Unspecified => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(name: &str, text: &str) -> (PathBuf, String) {
        (PathBuf::from(name), text.to_string())
    }

    const BASE: &str = r#"
kind: Policy
name: no-privileged
severity: warn
match:
  kinds: [Pod]
expression: "variables.containers.all(c, !c.?securityContext.?privileged.orValue(false))"
message: no privileged containers
"#;

    #[test]
    fn repository_may_raise_severity() {
        let raised = BASE.replace("severity: warn", "severity: deny");
        let set = PolicySet::from_sources(
            &[src("baked/pod.yaml", BASE)],
            &[src(".cairn/policies/p.yaml", &raised)],
        )
        .unwrap();
        let p = set.get("no-privileged").unwrap();
        assert_eq!(p.severity(), Severity::Deny);
        assert_eq!(p.origin(), Origin::Baked);
        assert_eq!(p.raised_by(), Some(Path::new(".cairn/policies/p.yaml")));
    }

    #[test]
    fn repository_may_repeat_a_rule_unchanged() {
        let set = PolicySet::from_sources(&[src("b.yaml", BASE)], &[src("r.yaml", BASE)]).unwrap();
        assert_eq!(set.policies().len(), 1);
        assert_eq!(set.get("no-privileged").unwrap().raised_by(), None);
    }

    #[test]
    fn unknown_names_fail_at_load() {
        let bad = BASE.replace("variables.containers.all", "objet.spec.containers.all");
        let e = PolicySet::from_sources(&[src("b.yaml", &bad)], &[]).unwrap_err();
        assert!(
            matches!(&e, PolicyError::Expression { field, .. } if field == "expression"),
            "{e}"
        );
        assert!(e.to_string().contains("\"objet\""), "{e}");
        let bad = BASE.replace("variables.containers", "variables.container");
        let e = PolicySet::from_sources(&[src("b.yaml", &bad)], &[]).unwrap_err();
        assert!(
            e.to_string().contains("variables.container is not defined"),
            "{e}"
        );
    }

    #[test]
    fn names_and_match_are_validated() {
        let bad = BASE.replace("name: no-privileged", "name: No_Privileged");
        let e = PolicySet::from_sources(&[src("b.yaml", &bad)], &[]).unwrap_err();
        assert!(matches!(e, PolicyError::Invalid { .. }), "{e}");
        let bad = BASE.replace(
            "kinds: [Pod]",
            "kinds: [Pod]\n  labelSelector:\n    matchExpressions: [{key: a, operator: In}]",
        );
        let e = PolicySet::from_sources(&[src("b.yaml", &bad)], &[]).unwrap_err();
        assert!(e.to_string().contains("needs values"), "{e}");
    }

    #[test]
    fn user_variables_see_earlier_ones_only() {
        let ok = BASE.replace(
            "expression:",
            "variables:\n  - name: a\n    expression: \"1\"\n  - name: b\n    expression: \"variables.a + 1\"\nexpression:",
        );
        PolicySet::from_sources(&[src("b.yaml", &ok)], &[]).unwrap();
        let bad = BASE.replace(
            "expression:",
            "variables:\n  - name: a\n    expression: \"variables.b\"\n  - name: b\n    expression: \"1\"\nexpression:",
        );
        let e = PolicySet::from_sources(&[src("b.yaml", &bad)], &[]).unwrap_err();
        assert!(
            matches!(&e, PolicyError::Expression { field, .. } if field == "variables[a]"),
            "{e}"
        );
        let bad = BASE.replace(
            "expression:",
            "variables:\n  - name: podSpec\n    expression: \"1\"\nexpression:",
        );
        let e = PolicySet::from_sources(&[src("b.yaml", &bad)], &[]).unwrap_err();
        assert!(e.to_string().contains("already defined"), "{e}");
    }

    #[test]
    fn duplicate_names_and_repo_params_are_refused() {
        let e =
            PolicySet::from_sources(&[src("a.yaml", BASE), src("b.yaml", BASE)], &[]).unwrap_err();
        assert!(matches!(e, PolicyError::DuplicateName { .. }), "{e}");
        let e = PolicySet::from_sources(
            &[src("a.yaml", BASE)],
            &[src("r.yaml", "kind: PolicyParams\nparams: {}\n")],
        )
        .unwrap_err();
        assert!(matches!(e, PolicyError::ParamsInRepo { doc: 1, .. }), "{e}");
    }

    #[test]
    fn policy_set_is_send_and_sync() {
        fn assert<T: Send + Sync>() {}
        assert::<PolicySet>();
    }
}
