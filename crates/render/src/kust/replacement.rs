//! `replacements:` — copy a field of one object into fields of others.
//!
//! Field paths are dot-separated; `[key=value]` selects list elements by a
//! field, `[=value]` a scalar list element, `*` every element, digits an index.
//! A source must match exactly one object (by current or previous id); a
//! target field that does not exist is an error unless `options.create`.

use std::path::Path;

use serde_json::{Map, Value};

use super::resource::{ResId, Resource};
use super::selector::Compiled;
use super::types::{FieldOptions, Replacement, ReplacementEntry, ReplacementSource, Selector};
use super::Loader;
use crate::error::RenderError;

/// Split a dotted path, keeping `[...]` intact.
fn split_path(p: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut depth = 0;
    for c in p.chars() {
        match c {
            '[' => {
                depth += 1;
                cur.push(c);
            }
            ']' => {
                depth -= 1;
                cur.push(c);
            }
            '.' if depth == 0 => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter().filter(|s| !s.is_empty()).collect()
}

fn matches_elem(elem: &Value, seg: &str) -> Option<bool> {
    let inner = seg.strip_prefix('[')?.strip_suffix(']')?;
    let (k, v) = inner.split_once('=')?;
    Some(if k.is_empty() {
        scalar_string(elem).as_deref() == Some(v)
    } else {
        elem.get(k).and_then(scalar_string).as_deref() == Some(v)
    })
}

fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn lookup<'a>(v: &'a Value, segs: &[String]) -> Option<&'a Value> {
    let Some((first, rest)) = segs.split_first() else {
        return Some(v);
    };
    let next = match v {
        Value::Object(m) => {
            let key = first
                .strip_prefix('[')
                .and_then(|s| s.strip_suffix(']'))
                .filter(|s| !s.contains('='))
                .unwrap_or(first);
            m.get(key)?
        }
        Value::Array(a) => {
            if let Ok(i) = first.parse::<usize>() {
                a.get(i)?
            } else {
                a.iter().find(|e| matches_elem(e, first) == Some(true))?
            }
        }
        _ => return None,
    };
    lookup(next, rest)
}

/// Every node at `segs`, creating missing map fields when `create` is set.
fn targets<'a>(v: &'a mut Value, segs: &[String], create: bool, out: &mut Vec<&'a mut Value>) {
    let Some((first, rest)) = segs.split_first() else {
        out.push(v);
        return;
    };
    match v {
        Value::Object(m) => {
            let key = first
                .strip_prefix('[')
                .and_then(|s| s.strip_suffix(']'))
                .filter(|s| !s.contains('='))
                .unwrap_or(first)
                .to_string();
            if !m.contains_key(&key) {
                if !create {
                    return;
                }
                let list_next = rest.first().is_some_and(|s| {
                    (s.starts_with('[') && s.contains('=')) || s.parse::<usize>().is_ok()
                });
                let fresh = if list_next {
                    Value::Array(Vec::new())
                } else if rest.is_empty() {
                    Value::Null
                } else {
                    Value::Object(Map::new())
                };
                m.insert(key.clone(), fresh);
            }
            if let Some(child) = m.get_mut(&key) {
                targets(child, rest, create, out);
            }
        }
        Value::Array(a) => {
            if first == "*" {
                for e in a.iter_mut() {
                    targets(e, rest, create, out);
                }
            } else if let Ok(i) = first.parse::<usize>() {
                if i == a.len() && create {
                    a.push(if rest.is_empty() {
                        Value::Null
                    } else {
                        Value::Object(Map::new())
                    });
                }
                if let Some(e) = a.get_mut(i) {
                    targets(e, rest, create, out);
                }
            } else {
                let found = a.iter().any(|e| matches_elem(e, first) == Some(true));
                if found {
                    for e in a.iter_mut() {
                        if matches_elem(e, first) == Some(true) {
                            targets(e, rest, create, out);
                        }
                    }
                } else if create {
                    if let Some((k, val)) = first
                        .strip_prefix('[')
                        .and_then(|s| s.strip_suffix(']'))
                        .and_then(|s| s.split_once('='))
                    {
                        let elem = if k.is_empty() {
                            Value::String(val.to_string())
                        } else {
                            let mut m = Map::new();
                            m.insert(k.to_string(), Value::String(val.to_string()));
                            Value::Object(m)
                        };
                        a.push(elem);
                        let last = a.last_mut().expect("just pushed");
                        targets(last, rest, create, out);
                    }
                }
            }
        }
        _ => {}
    }
}

fn source_selected(id: &ResId, s: &ReplacementSource) -> bool {
    let ok = |want: &Option<String>, have: &str| match want.as_deref() {
        None | Some("") => true,
        Some(w) => w == have,
    };
    let ns_ok = match s.namespace.as_deref() {
        None | Some("") => true,
        Some(ns) => {
            let want = ResId {
                namespace: ns.to_string(),
                ..id.clone()
            };
            want.ns_equals(id)
        }
    };
    ok(&s.name, &id.name)
        && ns_ok
        && ok(&s.group, &id.group)
        && ok(&s.version, &id.version)
        && ok(&s.kind, &id.kind)
}

fn describe(s: &ReplacementSource) -> String {
    let mut parts = Vec::new();
    for (k, v) in [
        ("group", &s.group),
        ("version", &s.version),
        ("kind", &s.kind),
        ("name", &s.name),
        ("namespace", &s.namespace),
    ] {
        if let Some(v) = v {
            parts.push(format!("{k}={v}"));
        }
    }
    parts.join(" ")
}

fn source_value(rm: &[Resource], s: &ReplacementSource) -> Result<Value, String> {
    let hits: Vec<&Resource> = rm
        .iter()
        .filter(|r| r.any_id(|id| source_selected(id, s)))
        .collect();
    let src = match hits.as_slice() {
        [] => return Err(format!("source: nothing selected by {}", describe(s))),
        [one] => *one,
        many => {
            return Err(format!(
                "source: {} objects selected by {}: {}",
                many.len(),
                describe(s),
                many.iter()
                    .map(|r| r.id().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
    };
    let fp = s.field_path.as_deref().unwrap_or("metadata.name");
    let v = lookup(&src.obj, &split_path(fp))
        .filter(|v| !v.is_null())
        .ok_or_else(|| format!("source: fieldPath {fp} is missing in {}", src.id()))?;
    match s
        .options
        .as_ref()
        .and_then(|o| o.delimiter.as_deref().filter(|d| !d.is_empty()))
    {
        None => Ok(v.clone()),
        Some(d) => {
            let s_val = scalar_string(v).ok_or("source: delimiter needs a scalar value")?;
            let parts: Vec<&str> = s_val.split(d).collect();
            let idx = s.options.as_ref().map(|o| o.index).unwrap_or(0);
            if idx < 0 || idx as usize >= parts.len() {
                return Err(format!(
                    "source: options.index {idx} is out of range for {s_val:?} split by {d:?}"
                ));
            }
            Ok(Value::String(parts[idx as usize].to_string()))
        }
    }
}

fn set_value(target: &mut Value, value: &Value, opts: Option<&FieldOptions>) -> Result<(), String> {
    let mut value = value.clone();
    if let Some(o) = opts {
        if let Some(d) = o.delimiter.as_deref().filter(|d| !d.is_empty()) {
            let cur = scalar_string(target)
                .ok_or("delimiter option can only be used with scalar target fields")?;
            let v = scalar_string(&value).ok_or("delimiter option needs a scalar source value")?;
            let mut parts: Vec<String> = cur.split(d).map(str::to_string).collect();
            if o.index < 0 {
                parts.insert(0, v);
            } else if o.index as usize >= parts.len() {
                parts.push(v);
            } else {
                parts[o.index as usize] = v;
            }
            value = Value::String(parts.join(d));
        }
    }
    // A scalar target keeps its type (kustomize copies only the text).
    *target = match (&*target, scalar_string(&value)) {
        (Value::String(_), Some(s)) => Value::String(s),
        (Value::Number(_), Some(s)) => match serde_json::from_str::<serde_json::Number>(&s) {
            Ok(n) => Value::Number(n),
            Err(_) => Value::String(s),
        },
        (Value::Bool(_), Some(s)) if s == "true" || s == "false" => Value::Bool(s == "true"),
        _ => value,
    };
    Ok(())
}

fn id_selected(id: &ResId, sel: &Selector) -> Result<bool, String> {
    let re = |p: &Option<String>, have: &str| -> Result<bool, String> {
        match p.as_deref().filter(|s| !s.is_empty()) {
            None => Ok(true),
            Some(p) => regex::Regex::new(&format!("^(?:{p})$"))
                .map(|r| r.is_match(have))
                .map_err(|e| format!("bad regular expression {p:?}: {e}")),
        }
    };
    let eq = |want: &Option<String>, have: &str| match want.as_deref() {
        None | Some("") => true,
        Some(w) => w == have,
    };
    Ok(re(&sel.name, &id.name)?
        && re(&sel.namespace, id.effective_namespace())?
        && eq(&sel.group, &id.group)
        && eq(&sel.version, &id.version)
        && eq(&sel.kind, &id.kind))
}

fn apply_one(rm: &mut [Resource], rep: &Replacement) -> Result<(), String> {
    let source = rep
        .source
        .as_ref()
        .ok_or("a replacement needs a `source`")?;
    let value = source_value(rm, source)?;
    for (ti, t) in rep.targets.iter().enumerate() {
        let select = t
            .select
            .as_ref()
            .ok_or_else(|| format!("target {ti}: needs `select`"))?;
        let label_sel = Compiled::new(&Selector {
            label_selector: select.label_selector.clone(),
            annotation_selector: select.annotation_selector.clone(),
            ..Selector::default()
        })?;
        let paths: Vec<String> = if t.field_paths.is_empty() {
            vec!["metadata.name".into()]
        } else {
            t.field_paths.clone()
        };
        for r in rm.iter_mut() {
            if !label_sel.matches(r) {
                continue;
            }
            let mut ids = vec![r.id()];
            ids.extend(r.prev.iter().cloned());
            let mut selected = false;
            for id in &ids {
                if id_selected(id, select)? {
                    selected = true;
                    break;
                }
            }
            if !selected {
                continue;
            }
            let mut rejected = false;
            for rej in &t.reject {
                for id in &ids {
                    if id_selected(id, rej)? {
                        rejected = true;
                    }
                }
            }
            if rejected {
                continue;
            }
            let create = t.options.as_ref().is_some_and(|o| o.create);
            let object = r.id().to_string();
            for fp in &paths {
                let mut found = Vec::new();
                targets(&mut r.obj, &split_path(fp), create, &mut found);
                if found.is_empty() {
                    return Err(format!(
                        "target {ti}: field {fp} not found in {object} (set options.create to add it)"
                    ));
                }
                for node in found {
                    set_value(node, &value, t.options.as_ref())
                        .map_err(|e| format!("target {ti}: {object}: {fp}: {e}"))?;
                }
            }
        }
    }
    Ok(())
}

/// Run a kustomization's `replacements`, in order.
pub(crate) fn run(
    l: &Loader<'_>,
    dir: &Path,
    kfile: &Path,
    entries: &[ReplacementEntry],
    rm: &mut [Resource],
) -> Result<(), RenderError> {
    for (index, e) in entries.iter().enumerate() {
        let rerr = |message: String| RenderError::Replacement {
            file: kfile.to_path_buf(),
            index,
            message,
        };
        let list: Vec<Replacement> = match &e.path {
            Some(p) => {
                if e.source.is_some() || !e.targets.is_empty() {
                    return Err(rerr(
                        "give either `path` or an inline replacement, not both".into(),
                    ));
                }
                let path = l.file_in(dir, p, kfile, "replacements")?;
                let text = l.read(&path)?;
                let mut out = Vec::new();
                for doc in crate::yaml::parse_stream(&text, &path)? {
                    let items = match doc {
                        Value::Array(a) => a,
                        other => vec![other],
                    };
                    for item in items {
                        out.push(
                            serde_json::from_value(item)
                                .map_err(|err| rerr(format!("{}: {err}", path.display())))?,
                        );
                    }
                }
                out
            }
            None => vec![Replacement {
                source: e.source.clone(),
                targets: e.targets.clone(),
            }],
        };
        for rep in &list {
            apply_one(rm, rep).map_err(rerr)?;
        }
    }
    Ok(())
}
