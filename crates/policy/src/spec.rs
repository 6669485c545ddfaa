//! The policy file format (see `policies/README.md`), and reading it.
//!
//! A policy file is a YAML stream; each document is one of
//!
//! * `kind: Policy` — one rule ([`PolicySpec`]);
//! * `kind: PolicyParams` — the parameters expressions see as `params`
//!   (baked into the image only, at most one).
//!
//! Unknown fields are errors, so a typo never silently changes a rule.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::PolicyError;

/// How bad a violation is.
///
/// Ordered: `Warn < Deny`. A `deny` stops the whole apply; a `warn` is
/// reported and the object is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warn,
    Deny,
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Severity::Warn => "warn",
            Severity::Deny => "deny",
        })
    }
}

/// One `kind: Policy` document, as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicySpec {
    /// Always `Policy` (checked by the reader).
    pub kind: String,
    /// Unique name: lowercase letters, digits, `-` and `.`.
    pub name: String,
    /// Free text for people; not compared when a repository raises a rule.
    #[serde(default)]
    pub description: Option<String>,
    pub severity: Severity,
    /// Which objects the rule applies to. Absent: every rendered object.
    #[serde(default, rename = "match")]
    pub matcher: MatchSpec,
    /// Named CEL expressions, visible as `variables.NAME` (as in
    /// ValidatingAdmissionPolicy), evaluated in order.
    #[serde(default)]
    pub variables: Vec<VariableSpec>,
    /// CEL; must evaluate to `true` for the object to pass.
    pub expression: String,
    /// Reported when the expression is not `true`.
    pub message: String,
    /// Optional CEL string expression replacing `message` in reports.
    #[serde(default)]
    pub message_expression: Option<String>,
}

/// `match:` — all given conditions must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MatchSpec {
    /// Object kinds (`Deployment`, `Service`, `FleetSettings`, ...). Empty:
    /// every Kubernetes object (but not `FleetSettings`, which must be named).
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Only objects in these namespaces. Empty: any namespace, and
    /// cluster-scoped objects.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Never objects in these namespaces.
    #[serde(default)]
    pub exclude_namespaces: Vec<String>,
    /// A Kubernetes label selector on the object's own labels.
    #[serde(default)]
    pub label_selector: Option<LabelSelector>,
}

/// A Kubernetes `LabelSelector`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Vec<LabelRequirement>,
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelRequirement {
    pub key: String,
    pub operator: LabelOperator,
    #[serde(default)]
    pub values: Vec<String>,
}

/// The operators of a label selector requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum LabelOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// A `variables:` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VariableSpec {
    pub name: String,
    pub expression: String,
}

/// One `kind: PolicyParams` document.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ParamsSpec {
    pub kind: String,
    /// Any mapping; expressions see it as `params`.
    #[serde(default)]
    pub params: serde_json::Map<String, serde_json::Value>,
}

/// What one file holds.
#[derive(Debug, Default)]
pub(crate) struct FileContents {
    pub(crate) policies: Vec<PolicySpec>,
    /// With the document number, for error messages.
    pub(crate) params: Vec<(usize, ParamsSpec)>,
}

/// Parse one policy file's text. `path` is only used in errors.
pub(crate) fn parse_file(path: &Path, text: &str) -> Result<FileContents, PolicyError> {
    let mut out = FileContents::default();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let n = i + 1;
        let format = |message: String| PolicyError::Format {
            path: path.to_path_buf(),
            doc: n,
            message,
        };
        let value = serde_yaml::Value::deserialize(doc).map_err(|e| format(e.to_string()))?;
        if value.is_null() {
            continue; // an empty document, e.g. after a trailing `---`
        }
        let kind = match value.get("kind") {
            Some(serde_yaml::Value::String(k)) => k.clone(),
            Some(_) => return Err(format("`kind` must be a string".into())),
            None if value.is_mapping() => {
                return Err(format(
                    "missing `kind` (expected `Policy` or `PolicyParams`)".into(),
                ))
            }
            None => return Err(format("a document must be a mapping".into())),
        };
        match kind.as_str() {
            "Policy" => {
                let name = value
                    .get("name")
                    .and_then(|n| n.as_str())
                    .map(str::to_string);
                let spec: PolicySpec = serde_yaml::from_value(value).map_err(|e| match &name {
                    Some(name) => PolicyError::Invalid {
                        path: path.to_path_buf(),
                        policy: name.clone(),
                        message: e.to_string(),
                    },
                    None => format(e.to_string()),
                })?;
                out.policies.push(spec);
            }
            "PolicyParams" => {
                let spec: ParamsSpec =
                    serde_yaml::from_value(value).map_err(|e| format(e.to_string()))?;
                out.params.push((n, spec));
            }
            other => {
                return Err(format(format!(
                    "unknown kind {other:?} (expected `Policy` or `PolicyParams`)"
                )))
            }
        }
    }
    Ok(out)
}

/// The policy files under `dir`, recursively, sorted by path: files ending in
/// `.yaml` or `.yml`. Other files (README.md, ...) are ignored.
pub(crate) fn read_dir_sources(dir: &Path) -> Result<Vec<(PathBuf, String)>, PolicyError> {
    let mut files = Vec::new();
    collect(dir, &mut files)?;
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).map_err(|source| PolicyError::Io {
                path: p.clone(),
                source,
            })?;
            Ok((p, text))
        })
        .collect()
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), PolicyError> {
    let io = |source| PolicyError::Io {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_policies_and_params_from_one_stream() {
        let text = r#"
kind: Policy
name: a
severity: warn
expression: "true"
message: m
---
kind: PolicyParams
params:
  allowedHostPaths: [/var/log]
---
"#;
        let c = parse_file(Path::new("f.yaml"), text).unwrap();
        assert_eq!(c.policies.len(), 1);
        assert_eq!(c.policies[0].severity, Severity::Warn);
        assert_eq!(c.params.len(), 1);
        assert_eq!(c.params[0].0, 2);
    }

    #[test]
    fn unknown_fields_and_kinds_are_errors() {
        let e = parse_file(
            Path::new("f.yaml"),
            "kind: Policy\nname: a\nseverity: deny\nexpression: 'true'\nmessage: m\nexpresion: x\n",
        )
        .unwrap_err();
        assert!(
            matches!(&e, PolicyError::Invalid { policy, .. } if policy == "a"),
            "{e}"
        );
        assert!(e.to_string().contains("expresion"), "{e}");
        let e = parse_file(Path::new("f.yaml"), "kind: Polcy\nname: a\n").unwrap_err();
        assert!(matches!(e, PolicyError::Format { doc: 1, .. }), "{e}");
        let e = parse_file(Path::new("f.yaml"), "name: a\n").unwrap_err();
        assert!(e.to_string().contains("missing `kind`"), "{e}");
        let e = parse_file(
            Path::new("f.yaml"),
            "kind: Policy\nname: a\nseverity: fatal\nexpression: 'true'\nmessage: m\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("fatal"), "{e}");
    }
}
