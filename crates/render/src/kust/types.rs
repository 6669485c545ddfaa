//! The kustomization file: which fields exist, which cairn implements, and
//! their typed form. Unknown or unimplemented fields are errors naming the field.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::error::RenderError;

/// Fields cairn implements, in the order kustomize documents them.
pub(crate) const SUPPORTED_FIELDS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "resources",
    "bases",
    "components",
    "namespace",
    "namePrefix",
    "nameSuffix",
    "labels",
    "commonLabels",
    "commonAnnotations",
    "images",
    "replicas",
    "patches",
    "patchesStrategicMerge",
    "patchesJson6902",
    "configMapGenerator",
    "secretGenerator",
    "generatorOptions",
    "replacements",
];

/// Fields kustomize knows that cairn deliberately does not implement, with why.
const UNSUPPORTED_HINTS: &[(&str, &str)] = &[
    ("vars", "deprecated in kustomize; use `replacements`"),
    (
        "helmCharts",
        "helm is not run on the node; render the chart into the repo",
    ),
    ("helmGlobals", "helm is not run on the node"),
    ("helmChartInflationGenerator", "helm is not run on the node"),
    ("generators", "plugins are not run on the node"),
    ("transformers", "plugins are not run on the node"),
    ("validators", "plugins are not run on the node"),
    (
        "configurations",
        "custom transformer configurations are not implemented",
    ),
    (
        "crds",
        "custom CRD schemas for name references are not implemented",
    ),
    ("openapi", "custom OpenAPI schemas are not implemented"),
    ("sortOptions", "cairn always emits objects in apply order"),
    (
        "buildMetadata",
        "build metadata annotations are not implemented",
    ),
    ("imageTags", "removed from kustomize; use `images`"),
    ("inventory", "removed from kustomize"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KustKind {
    Kustomization,
    Component,
}

/// Strings, numbers and booleans are all accepted as label/annotation values
/// (YAML `version: 1` becomes `"1"`).
fn string_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let m = Option::<BTreeMap<String, Value>>::deserialize(d)?.unwrap_or_default();
    m.into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k, s)),
            Value::Number(n) => Ok((k, n.to_string())),
            Value::Bool(b) => Ok((k, b.to_string())),
            Value::Null => Ok((k, String::new())),
            other => Err(serde::de::Error::custom(format!(
                "value of {k:?} must be a string, not {other}"
            ))),
        })
        .collect()
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct FieldSpec {
    pub path: String,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub create: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct LabelSpec {
    #[serde(default, deserialize_with = "string_map")]
    pub pairs: BTreeMap<String, String>,
    #[serde(default)]
    pub include_selectors: bool,
    #[serde(default)]
    pub include_templates: bool,
    #[serde(default)]
    pub fields: Vec<FieldSpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct ImageSpec {
    pub name: String,
    #[serde(default)]
    pub new_name: Option<String>,
    #[serde(default, deserialize_with = "opt_scalar_string")]
    pub new_tag: Option<String>,
    #[serde(default)]
    pub digest: Option<String>,
}

fn opt_scalar_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(Value::Bool(b)) => Some(b.to_string()),
        Some(other) => {
            return Err(serde::de::Error::custom(format!(
                "expected a string, got {other}"
            )))
        }
    })
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct ReplicaSpec {
    pub name: String,
    pub count: i64,
}

/// A resource selector (patch targets, replacement sources/targets).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct Selector {
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub label_selector: Option<String>,
    #[serde(default)]
    pub annotation_selector: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct PatchOptions {
    #[serde(default)]
    pub allow_name_change: bool,
    #[serde(default)]
    pub allow_kind_change: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct PatchSpec {
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub patch: Option<String>,
    #[serde(default)]
    pub target: Option<Selector>,
    #[serde(default)]
    pub options: Option<PatchOptions>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct GeneratorOptions {
    #[serde(default, deserialize_with = "string_map")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "string_map")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub disable_name_suffix_hash: Option<bool>,
    #[serde(default)]
    pub immutable: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct GeneratorArgs {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub behavior: Option<String>,
    #[serde(default)]
    pub literals: Vec<String>,
    #[serde(default)]
    pub files: Vec<String>,
    #[serde(default)]
    pub envs: Vec<String>,
    #[serde(default)]
    pub env: Option<String>,
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    #[serde(default)]
    pub options: Option<GeneratorOptions>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct FieldOptions {
    #[serde(default)]
    pub delimiter: Option<String>,
    #[serde(default)]
    pub index: i64,
    #[serde(default)]
    pub create: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct ReplacementSource {
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub field_path: Option<String>,
    #[serde(default)]
    pub options: Option<FieldOptions>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct ReplacementTarget {
    #[serde(default)]
    pub select: Option<Selector>,
    #[serde(default)]
    pub reject: Vec<Selector>,
    #[serde(default)]
    pub field_paths: Vec<String>,
    #[serde(default)]
    pub options: Option<FieldOptions>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct Replacement {
    #[serde(default)]
    pub source: Option<ReplacementSource>,
    #[serde(default)]
    pub targets: Vec<ReplacementTarget>,
}

/// An entry of `replacements:`: inline, or `path:` to a file holding one or more.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct ReplacementEntry {
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub source: Option<ReplacementSource>,
    #[serde(default)]
    pub targets: Vec<ReplacementTarget>,
}

/// `patchesJson6902` entries (target required).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct Json6902Spec {
    pub target: Selector,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub patch: Option<String>,
}

/// A parsed kustomization file.
#[derive(Debug, Clone)]
pub(crate) struct Kustomization {
    pub kind: KustKind,
    pub resources: Vec<String>,
    pub components: Vec<String>,
    pub namespace: Option<String>,
    pub name_prefix: Option<String>,
    pub name_suffix: Option<String>,
    pub labels: Vec<LabelSpec>,
    pub common_labels: BTreeMap<String, String>,
    pub common_annotations: BTreeMap<String, String>,
    pub images: Vec<ImageSpec>,
    pub replicas: Vec<ReplicaSpec>,
    pub patches: Vec<PatchSpec>,
    pub patches_strategic_merge: Vec<String>,
    pub patches_json6902: Vec<Json6902Spec>,
    pub config_map_generator: Vec<GeneratorArgs>,
    pub secret_generator: Vec<GeneratorArgs>,
    pub generator_options: Option<GeneratorOptions>,
    pub replacements: Vec<ReplacementEntry>,
}

impl Kustomization {
    /// Parse and check a kustomization document. `file` is for messages.
    pub fn parse(doc: Value, file: &Path) -> Result<Kustomization, RenderError> {
        let map = match doc {
            Value::Object(m) => m,
            Value::Null => serde_json::Map::new(),
            _ => {
                return Err(RenderError::InvalidField {
                    file: file.to_path_buf(),
                    field: "(document)".into(),
                    message: "a kustomization must be a mapping".into(),
                })
            }
        };
        let mut k = Kustomization {
            kind: KustKind::Kustomization,
            resources: vec![],
            components: vec![],
            namespace: None,
            name_prefix: None,
            name_suffix: None,
            labels: vec![],
            common_labels: BTreeMap::new(),
            common_annotations: BTreeMap::new(),
            images: vec![],
            replicas: vec![],
            patches: vec![],
            patches_strategic_merge: vec![],
            patches_json6902: vec![],
            config_map_generator: vec![],
            secret_generator: vec![],
            generator_options: None,
            replacements: vec![],
        };
        let mut keys: Vec<&String> = map.keys().collect();
        keys.sort();
        for key in keys {
            if !SUPPORTED_FIELDS.contains(&key.as_str()) {
                return Err(RenderError::UnsupportedField {
                    file: file.to_path_buf(),
                    field: key.clone(),
                    hint: UNSUPPORTED_HINTS
                        .iter()
                        .find(|(f, _)| f == key)
                        .map(|(_, h)| h.to_string())
                        .or_else(|| Some("not a kustomization field cairn knows".into())),
                });
            }
        }
        for (key, value) in map {
            let field = key.as_str();
            if value.is_null() {
                continue;
            }
            let err = |e: serde_json::Error| RenderError::InvalidField {
                file: file.to_path_buf(),
                field: field.to_string(),
                message: e.to_string(),
            };
            match field {
                "apiVersion" => {
                    let v: String = serde_json::from_value(value).map_err(err)?;
                    if !v.starts_with("kustomize.config.k8s.io/") {
                        return Err(RenderError::InvalidField {
                            file: file.to_path_buf(),
                            field: "apiVersion".into(),
                            message: format!("{v:?} is not a kustomize.config.k8s.io apiVersion"),
                        });
                    }
                }
                "kind" => {
                    let v: String = serde_json::from_value(value).map_err(err)?;
                    k.kind = match v.as_str() {
                        "Kustomization" => KustKind::Kustomization,
                        "Component" => KustKind::Component,
                        _ => {
                            return Err(RenderError::InvalidField {
                                file: file.to_path_buf(),
                                field: "kind".into(),
                                message: format!("{v:?}: expected Kustomization or Component"),
                            })
                        }
                    }
                }
                "metadata" => {}
                "resources" | "bases" => {
                    let v: Vec<String> = serde_json::from_value(value).map_err(err)?;
                    k.resources.extend(v);
                }
                "components" => k.components = serde_json::from_value(value).map_err(err)?,
                "namespace" => k.namespace = serde_json::from_value(value).map_err(err)?,
                "namePrefix" => k.name_prefix = serde_json::from_value(value).map_err(err)?,
                "nameSuffix" => k.name_suffix = serde_json::from_value(value).map_err(err)?,
                "labels" => k.labels = serde_json::from_value(value).map_err(err)?,
                "commonLabels" => k.common_labels = string_map(value).map_err(err)?,
                "commonAnnotations" => k.common_annotations = string_map(value).map_err(err)?,
                "images" => k.images = serde_json::from_value(value).map_err(err)?,
                "replicas" => k.replicas = serde_json::from_value(value).map_err(err)?,
                "patches" => k.patches = serde_json::from_value(value).map_err(err)?,
                "patchesStrategicMerge" => {
                    k.patches_strategic_merge = serde_json::from_value(value).map_err(err)?
                }
                "patchesJson6902" => {
                    k.patches_json6902 = serde_json::from_value(value).map_err(err)?
                }
                "configMapGenerator" => {
                    k.config_map_generator = serde_json::from_value(value).map_err(err)?
                }
                "secretGenerator" => {
                    k.secret_generator = serde_json::from_value(value).map_err(err)?
                }
                "generatorOptions" => {
                    k.generator_options = serde_json::from_value(value).map_err(err)?
                }
                "replacements" => k.replacements = serde_json::from_value(value).map_err(err)?,
                _ => unreachable!("checked against SUPPORTED_FIELDS"),
            }
        }
        Ok(k)
    }
}
