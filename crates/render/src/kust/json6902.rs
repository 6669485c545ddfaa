//! JSON patches (RFC 6902): `add`, `remove`, `replace`, `move`, `copy`,
//! `test`, with JSON pointers (RFC 6901). Used by `patches` entries whose
//! content is a list of operations, and by `patchesJson6902`.

use std::path::Path;

use serde_json::Value;

use super::resource::Resource;
use super::selector::Compiled;
use super::smp::{as_json6902, patch_text};
use super::types::Kustomization;
use super::Loader;
use crate::error::RenderError;

fn parse_pointer(p: &str) -> Result<Vec<String>, String> {
    if p.is_empty() {
        return Ok(vec![]);
    }
    let rest = p
        .strip_prefix('/')
        .ok_or_else(|| format!("path {p:?} must start with '/'"))?;
    Ok(rest
        .split('/')
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn get<'a>(doc: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = doc;
    for seg in path {
        cur = match cur {
            Value::Object(m) => m.get(seg)?,
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn parent_mut<'a>(doc: &'a mut Value, path: &[String], ptr: &str) -> Result<&'a mut Value, String> {
    let mut cur = doc;
    for seg in &path[..path.len() - 1] {
        cur = match cur {
            Value::Object(m) => m
                .get_mut(seg)
                .ok_or_else(|| format!("path {ptr}: {seg:?} does not exist"))?,
            Value::Array(a) => {
                let i: usize = seg
                    .parse()
                    .map_err(|_| format!("path {ptr}: {seg:?} is not an array index"))?;
                a.get_mut(i)
                    .ok_or_else(|| format!("path {ptr}: index {i} is out of range"))?
            }
            _ => return Err(format!("path {ptr}: {seg:?} is inside a scalar")),
        };
    }
    Ok(cur)
}

fn add(doc: &mut Value, path: &[String], value: Value, ptr: &str) -> Result<(), String> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let last = &path[path.len() - 1];
    match parent_mut(doc, path, ptr)? {
        Value::Object(m) => {
            m.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(a) => {
            if last == "-" {
                a.push(value);
                return Ok(());
            }
            let i: usize = last
                .parse()
                .map_err(|_| format!("path {ptr}: {last:?} is not an array index"))?;
            if i > a.len() {
                return Err(format!("path {ptr}: index {i} is out of range"));
            }
            a.insert(i, value);
            Ok(())
        }
        _ => Err(format!("path {ptr}: parent is not an object or array")),
    }
}

fn remove(doc: &mut Value, path: &[String], ptr: &str) -> Result<Value, String> {
    if path.is_empty() {
        return Err("cannot remove the whole document".into());
    }
    let last = &path[path.len() - 1];
    match parent_mut(doc, path, ptr)? {
        Value::Object(m) => m
            .remove(last)
            .ok_or_else(|| format!("path {ptr} does not exist")),
        Value::Array(a) => {
            let i: usize = last
                .parse()
                .map_err(|_| format!("path {ptr}: {last:?} is not an array index"))?;
            if i >= a.len() {
                return Err(format!("path {ptr}: index {i} is out of range"));
            }
            Ok(a.remove(i))
        }
        _ => Err(format!("path {ptr}: parent is not an object or array")),
    }
}

/// Apply a list of operations to a resource's object.
pub(crate) fn apply_ops(r: &mut Resource, ops: &[Value]) -> Result<(), String> {
    let before = r.id();
    let mut doc = r.obj.clone();
    for (n, op) in ops.iter().enumerate() {
        let field = |k: &str| op.get(k).and_then(Value::as_str);
        let name = field("op").ok_or_else(|| format!("operation {n}: missing `op`"))?;
        let ptr = field("path").ok_or_else(|| format!("operation {n}: missing `path`"))?;
        let path = parse_pointer(ptr).map_err(|e| format!("operation {n}: {e}"))?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| format!("operation {n} ({name} {ptr}): missing `value`"))
        };
        let ctx = |e: String| format!("operation {n} ({name} {ptr}): {e}");
        match name {
            "add" => add(&mut doc, &path, value()?, ptr).map_err(ctx)?,
            "remove" => {
                remove(&mut doc, &path, ptr).map_err(ctx)?;
            }
            "replace" => {
                // As kustomize's JSON patch library: a missing key in an
                // existing object is added; a missing parent or array
                // element is an error.
                if path.is_empty() {
                    doc = value()?;
                } else {
                    let last = &path[path.len() - 1];
                    match parent_mut(&mut doc, &path, ptr).map_err(ctx)? {
                        Value::Object(m) => {
                            m.insert(last.clone(), value()?);
                        }
                        Value::Array(a) => {
                            let slot = last
                                .parse::<usize>()
                                .ok()
                                .and_then(|i| a.get_mut(i))
                                .ok_or_else(|| ctx(format!("index {last} does not exist")))?;
                            *slot = value()?;
                        }
                        _ => return Err(ctx("parent is not an object or array".into())),
                    }
                }
            }
            "move" | "copy" => {
                let from_ptr = field("from").ok_or_else(|| ctx("missing `from`".into()))?;
                let from = parse_pointer(from_ptr).map_err(ctx)?;
                let v = if name == "move" {
                    remove(&mut doc, &from, from_ptr).map_err(ctx)?
                } else {
                    get(&doc, &from)
                        .cloned()
                        .ok_or_else(|| ctx(format!("from {from_ptr} does not exist")))?
                };
                add(&mut doc, &path, v, ptr).map_err(ctx)?;
            }
            "test" => {
                let want = value()?;
                if get(&doc, &path) != Some(&want) {
                    return Err(ctx(format!("test failed: value is not {want}")));
                }
            }
            other => return Err(format!("operation {n}: unknown op {other:?}")),
        }
    }
    if !doc.is_object() {
        return Err("the patched document is not an object".into());
    }
    r.obj = doc;
    if r.id() != before && r.prev.last() != Some(&before) {
        r.prev.push(before);
    }
    Ok(())
}

/// `patchesJson6902:` entries.
pub(crate) fn run_patches_json6902(
    l: &Loader<'_>,
    dir: &Path,
    kfile: &Path,
    k: &Kustomization,
    rm: &mut [Resource],
) -> Result<(), RenderError> {
    for spec in &k.patches_json6902 {
        let (text, label, src) = patch_text(
            l,
            dir,
            kfile,
            spec.path.as_deref(),
            spec.patch.as_deref(),
            "patchesJson6902",
        )?;
        let perr = |message: String| RenderError::Patch {
            file: kfile.to_path_buf(),
            patch: label.clone(),
            message,
        };
        let ops = as_json6902(&text, &src)
            .ok_or_else(|| perr("expected a list of JSON6902 operations".into()))?;
        let sel = Compiled::new(&spec.target).map_err(perr)?;
        for r in rm.iter_mut().filter(|r| sel.matches(r)) {
            apply_ops(r, &ops).map_err(perr)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::PathBuf;

    fn res(v: Value) -> Resource {
        Resource::new(v, PathBuf::from("x"), 0).unwrap()
    }

    #[test]
    fn ops() {
        let mut r = res(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"x": "1"}, "list": [1, 2]}),
        );
        apply_ops(
            &mut r,
            &[
                json!({"op": "add", "path": "/data/y", "value": "2"}),
                json!({"op": "replace", "path": "/data/x", "value": "9"}),
                json!({"op": "add", "path": "/list/-", "value": 3}),
                json!({"op": "add", "path": "/list/0", "value": 0}),
                json!({"op": "remove", "path": "/list/1"}),
                json!({"op": "copy", "from": "/data/x", "path": "/data/z"}),
                json!({"op": "test", "path": "/data/z", "value": "9"}),
            ],
        )
        .unwrap();
        assert_eq!(r.obj["data"], json!({"x": "9", "y": "2", "z": "9"}));
        assert_eq!(r.obj["list"], json!([0, 2, 3]));
        assert!(apply_ops(
            &mut r,
            &[json!({"op": "replace", "path": "/nope/x", "value": 1})]
        )
        .is_err());
        assert!(apply_ops(
            &mut r,
            &[json!({"op": "replace", "path": "/list/7", "value": 1})]
        )
        .is_err());
    }
}
