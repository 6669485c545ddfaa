//! Golden tests: every directory under `tests/data/` that holds a
//! kustomization is rendered with `render_dir` and compared with the
//! committed output of `kubectl kustomize` (see `tests/data/GENERATED.md`),
//! as sets of parsed objects. Directories with `expected-error.txt` must fail
//! with the named `RenderError` variant and a message containing the given text.
//! Fleet fixtures (`fleet-*`) are exercised by `tests/fleet.rs`.

use std::path::{Path, PathBuf};

use cairn_render::{render_dir, Rendered, TemplateContext};
use serde_json::Value;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

fn parse_stream(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let v = Value::deserialize(doc).expect("valid YAML");
        if !v.is_null() {
            out.push(v);
        }
    }
    out
}

fn canonical_set(objs: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = objs
        .iter()
        .map(|o| serde_json::to_string_pretty(&sorted(o)).unwrap())
        .collect();
    v.sort();
    v
}

fn sorted(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), sorted(&m[k])))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
        o => o.clone(),
    }
}

fn context_for(dir: &Path) -> TemplateContext {
    let mut ctx = TemplateContext::default();
    let path = dir.join("context.yaml");
    if path.is_file() {
        let v: Value = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for (key, slot) in [
            ("cluster", &mut ctx.cluster),
            ("node", &mut ctx.node),
            ("values", &mut ctx.values),
        ] {
            if let Some(x) = v.get(key) {
                *slot = x.clone();
            }
        }
    }
    ctx
}

fn cases() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(data_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.is_dir()
                && !p
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("fleet-")
        })
        .collect();
    v.sort();
    v
}

fn check_case(dir: &Path) -> Result<(), String> {
    let ctx = context_for(dir);
    let result = render_dir(dir, &ctx);
    let err_file = dir.join("expected-error.txt");
    if err_file.is_file() {
        let spec = std::fs::read_to_string(&err_file).unwrap();
        let mut lines = spec.lines();
        let variant = lines.next().unwrap_or("").trim();
        let needle = lines.next().unwrap_or("").trim();
        return match result {
            Ok(r) => Err(format!(
                "expected error {variant}, got {} objects",
                r.objects.len()
            )),
            Err(e) => {
                let debug = format!("{e:?}");
                let display = e.to_string();
                if !debug.starts_with(variant) {
                    Err(format!("expected variant {variant}, got {debug}"))
                } else if !display.contains(needle) {
                    Err(format!("error {display:?} does not contain {needle:?}"))
                } else {
                    Ok(())
                }
            }
        };
    }
    let expected_file = dir.join("expected.yaml");
    let expected = std::fs::read_to_string(&expected_file)
        .map_err(|e| format!("{}: {e}", expected_file.display()))?;
    let rendered: Rendered = result.map_err(|e| format!("render failed: {e}"))?;
    // Compare what we print (round trip through our YAML output), not just
    // the in-memory objects.
    let ours = parse_stream(&rendered.to_yaml_stream());
    assert_eq!(ours.len(), rendered.objects.len());
    let want = canonical_set(&parse_stream(&expected));
    let got = canonical_set(&ours);
    if want != got {
        let missing: Vec<&String> = want.iter().filter(|w| !got.contains(w)).collect();
        let extra: Vec<&String> = got.iter().filter(|g| !want.contains(g)).collect();
        return Err(format!(
            "objects differ\n--- expected but not rendered:\n{}\n--- rendered but not expected:\n{}",
            missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n"),
            extra.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n"),
        ));
    }
    // Determinism: a second render prints the same bytes.
    let again = render_dir(dir, &ctx).map_err(|e| format!("second render failed: {e}"))?;
    if again.to_yaml_stream() != rendered.to_yaml_stream() {
        return Err("second render differs".into());
    }
    Ok(())
}

#[test]
fn golden_corpus() {
    let mut failures = Vec::new();
    let cases = cases();
    assert!(!cases.is_empty(), "no cases under {}", data_dir().display());
    for dir in &cases {
        if let Err(e) = check_case(dir) {
            failures.push(format!(
                "{}: {e}",
                dir.file_name().unwrap().to_string_lossy()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} golden cases failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}
