//! `.j2` templates: rendered with minijinja, in strict mode, before kustomize
//! processing sees the file.

use std::path::Path;

use minijinja::{Environment, UndefinedBehavior};
use serde_json::{Map, Value};

use crate::error::RenderError;

/// What a `.j2` template can see.
///
/// * `cluster` — the cluster's `cluster.yaml` (without its `values`), plus `name`.
/// * `node` — `name`, `hostname`, `machineId`, `macs`, `role`, `cluster`, `group`, `labels`.
/// * `values` — repo defaults → cluster → node group → node → `--values` files,
///   merged deeply (mappings merge key by key; anything else is replaced).
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateContext {
    pub cluster: Value,
    pub node: Value,
    pub values: Value,
}

impl Default for TemplateContext {
    fn default() -> Self {
        TemplateContext {
            cluster: Value::Object(Map::new()),
            node: Value::Object(Map::new()),
            values: Value::Object(Map::new()),
        }
    }
}

impl TemplateContext {
    /// Merge `layer` over the current `values` (the later layer wins).
    pub fn overlay_values(&mut self, layer: &Value) {
        merge_values(&mut self.values, layer);
    }

    /// Read a YAML mapping from `path` and merge it over `values`
    /// (what `cairnctl render --values FILE` does).
    pub fn overlay_values_file(&mut self, path: &Path) -> Result<(), RenderError> {
        let text = std::fs::read_to_string(path).map_err(|e| RenderError::io(path, e))?;
        let layer = crate::yaml::parse_single(&text, path)?;
        match layer {
            Value::Null => Ok(()),
            Value::Object(_) => {
                self.overlay_values(&layer);
                Ok(())
            }
            _ => Err(RenderError::Yaml {
                path: path.to_path_buf(),
                line: None,
                message: "a values file must be a mapping".into(),
            }),
        }
    }

    fn as_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("cluster".into(), self.cluster.clone());
        m.insert("node".into(), self.node.clone());
        m.insert("values".into(), self.values.clone());
        Value::Object(m)
    }
}

/// Deep merge: mappings merge key by key, everything else in `layer` replaces.
pub fn merge_values(base: &mut Value, layer: &Value) {
    match (base, layer) {
        (Value::Object(b), Value::Object(l)) => {
            for (k, v) in l {
                match b.get_mut(k) {
                    Some(existing) => merge_values(existing, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, l) => *b = l.clone(),
    }
}

/// Render one template. `path` is only used in error messages.
pub(crate) fn render_template(
    source: &str,
    path: &Path,
    ctx: &TemplateContext,
) -> Result<String, RenderError> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // Plain text: minijinja would otherwise JSON-escape every `{{ }}` in
    // files named `*.yaml.j2`, which breaks `name: {{ node.name }}-web`.
    // Templates quote explicitly with `| tojson` where a value may need it.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    // Keep the file's trailing newline: YAML documents care about it less than
    // humans diffing the output do.
    env.set_keep_trailing_newline(true);
    let name = path.display().to_string();
    let to_err = |e: minijinja::Error| {
        let mut message = e.kind().to_string();
        if let Some(detail) = e.detail() {
            message.push_str(": ");
            message.push_str(detail);
        }
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            message.push_str(": ");
            message.push_str(&s.to_string());
            src = s.source();
        }
        RenderError::Template {
            path: path.to_path_buf(),
            line: e.line(),
            message,
        }
    };
    env.add_template(&name, source).map_err(to_err)?;
    let tmpl = env.get_template(&name).map_err(to_err)?;
    tmpl.render(ctx.as_value()).map_err(to_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strict_undefined_is_an_error_with_line() {
        let ctx = TemplateContext::default();
        let err = render_template("a: 1\nb: {{ node.nope }}\n", Path::new("x.yaml.j2"), &ctx)
            .unwrap_err();
        match err {
            RenderError::Template { line, .. } => assert_eq!(line, Some(2)),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn merge_is_deep() {
        let mut a = json!({"a": {"b": 1, "c": [1]}, "d": 1});
        merge_values(&mut a, &json!({"a": {"c": [2], "e": 3}}));
        assert_eq!(a, json!({"a": {"b": 1, "c": [2], "e": 3}, "d": 1}));
    }
}
