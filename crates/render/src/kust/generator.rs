//! `configMapGenerator` / `secretGenerator`, and the content-hash name suffix.
//!
//! The suffix matches kustomize's `hasher` package: SHA-256 over a JSON
//! encoding (Go `encoding/json` rules: sorted keys, HTML-safe escapes) of
//! `{data, kind, name}` (ConfigMap, plus `binaryData` when present) or
//! `{data, kind, name, type}` (Secret, plus `stringData`), of the object as it
//! is at the end of the top-level build; the first 10 hex digits are then
//! made vowel-free (`0→g 1→h 3→k a→m e→t`). As in kustomize v5, `name` is
//! always the empty string (its lookup of `metadata/name` never matches), so
//! the suffix depends on the content only.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::resource::{GenInfo, Resource};
use super::types::{GeneratorArgs, GeneratorOptions, Kustomization};
use super::Loader;
use crate::error::RenderError;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    ConfigMap,
    Secret,
}

impl Kind {
    fn field(self) -> &'static str {
        match self {
            Kind::ConfigMap => "configMapGenerator",
            Kind::Secret => "secretGenerator",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Behavior {
    Create,
    Merge,
    Replace,
}

/// Run both generators of a kustomization, adding to (or merging into) `rm`.
pub(crate) fn run(
    l: &Loader<'_>,
    dir: &Path,
    kfile: &Path,
    k: &Kustomization,
    rm: &mut Vec<Resource>,
) -> Result<(), RenderError> {
    for (kind, list) in [
        (Kind::ConfigMap, &k.config_map_generator),
        (Kind::Secret, &k.secret_generator),
    ] {
        for args in list {
            let gerr = |message: String| RenderError::Generator {
                file: kfile.to_path_buf(),
                generator: kind.field(),
                name: args.name.clone(),
                message,
            };
            let behavior = match args.behavior.as_deref() {
                None | Some("") | Some("create") => Behavior::Create,
                Some("merge") => Behavior::Merge,
                Some("replace") => Behavior::Replace,
                Some(other) => {
                    return Err(gerr(format!(
                        "behavior {other:?}: expected create, merge or replace"
                    )))
                }
            };
            let opts = merge_options(args.options.as_ref(), k.generator_options.as_ref());
            let new = generate(l, dir, kfile, kind, args, &opts).map_err(gerr)?;
            absorb(rm, new, behavior).map_err(gerr)?;
        }
    }
    Ok(())
}

/// Local options win; global booleans can only switch things on.
fn merge_options(
    local: Option<&GeneratorOptions>,
    global: Option<&GeneratorOptions>,
) -> GeneratorOptions {
    let mut o = local.cloned().unwrap_or_default();
    if let Some(g) = global {
        for (k, v) in &g.labels {
            o.labels.entry(k.clone()).or_insert_with(|| v.clone());
        }
        for (k, v) in &g.annotations {
            o.annotations.entry(k.clone()).or_insert_with(|| v.clone());
        }
        if g.disable_name_suffix_hash == Some(true) {
            o.disable_name_suffix_hash = Some(true);
        }
        if g.immutable == Some(true) {
            o.immutable = Some(true);
        }
    }
    o
}

fn generate(
    l: &Loader<'_>,
    dir: &Path,
    kfile: &Path,
    kind: Kind,
    args: &GeneratorArgs,
    opts: &GeneratorOptions,
) -> Result<Resource, String> {
    if args.name.is_empty() {
        return Err("a generator needs a name".into());
    }
    // key -> (is_binary, content)
    let mut data: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut add = |key: String, value: Vec<u8>| -> Result<(), String> {
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(format!(
                "key {key:?} is not a valid ConfigMap/Secret key (letters, digits, '-', '_', '.')"
            ));
        }
        if data.insert(key.clone(), value).is_some() {
            return Err(format!("key {key:?} is defined more than once"));
        }
        Ok(())
    };
    let mut envs = args.envs.clone();
    if let Some(e) = &args.env {
        envs.insert(0, e.clone());
    }
    for env in &envs {
        let path = l
            .file_in(dir, env, kfile, "envs")
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8(l.read_bytes(&path).map_err(|e| e.to_string())?)
            .map_err(|_| format!("{}: env file is not UTF-8", path.display()))?;
        for (n, line) in text.lines().enumerate() {
            let line = if n == 0 {
                line.trim_start_matches('\u{feff}')
            } else {
                line
            };
            let line = line.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(format!(
                    "{}:{}: {line:?} has no '='; taking values from the environment is not supported (the render must be reproducible)",
                    path.display(),
                    n + 1
                ));
            };
            add(key.to_string(), value.as_bytes().to_vec())?;
        }
    }
    for lit in &args.literals {
        let Some((key, value)) = lit.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            return Err(format!("literal {lit:?}: expected KEY=VALUE"));
        };
        add(key.to_string(), remove_quotes(value).as_bytes().to_vec())?;
    }
    for f in &args.files {
        let (key, rel) = match f.split_once('=') {
            Some((k, p)) if !k.is_empty() => (k.to_string(), p),
            Some(_) => return Err(format!("files entry {f:?}: empty key")),
            None => {
                let base = Path::new(f)
                    .file_name()
                    .map(|b| b.to_string_lossy().into_owned())
                    .unwrap_or_default();
                (
                    base.strip_suffix(".j2").unwrap_or(&base).to_string(),
                    f.as_str(),
                )
            }
        };
        let path = l
            .file_in(dir, rel, kfile, "files")
            .map_err(|e| e.to_string())?;
        add(key, l.read_bytes(&path).map_err(|e| e.to_string())?)?;
    }

    let mut meta = Map::new();
    meta.insert("name".into(), Value::String(args.name.clone()));
    if let Some(ns) = args.namespace.as_deref().filter(|n| !n.is_empty()) {
        meta.insert("namespace".into(), Value::String(ns.to_string()));
    }
    if !opts.labels.is_empty() {
        meta.insert("labels".into(), string_map(&opts.labels));
    }
    if !opts.annotations.is_empty() {
        meta.insert("annotations".into(), string_map(&opts.annotations));
    }
    let mut obj = Map::new();
    obj.insert("apiVersion".into(), Value::String("v1".into()));
    obj.insert(
        "kind".into(),
        Value::String(match kind {
            Kind::ConfigMap => "ConfigMap".into(),
            Kind::Secret => "Secret".into(),
        }),
    );
    obj.insert("metadata".into(), Value::Object(meta));
    match kind {
        Kind::ConfigMap => {
            let mut text = Map::new();
            let mut binary = Map::new();
            for (k, v) in data {
                match String::from_utf8(v) {
                    Ok(s) => {
                        text.insert(k, Value::String(s));
                    }
                    Err(e) => {
                        binary.insert(k, Value::String(encode_base64(&e.into_bytes())));
                    }
                }
            }
            if !text.is_empty() {
                obj.insert("data".into(), Value::Object(text));
            }
            if !binary.is_empty() {
                obj.insert("binaryData".into(), Value::Object(binary));
            }
        }
        Kind::Secret => {
            let mut enc = Map::new();
            for (k, v) in data {
                enc.insert(k, Value::String(encode_base64(&v)));
            }
            if !enc.is_empty() {
                obj.insert("data".into(), Value::Object(enc));
            }
            obj.insert(
                "type".into(),
                Value::String(
                    args.type_
                        .clone()
                        .filter(|t| !t.is_empty())
                        .unwrap_or_else(|| "Opaque".into()),
                ),
            );
        }
    }
    if opts.immutable == Some(true) {
        obj.insert("immutable".into(), Value::Bool(true));
    }
    if kind == Kind::ConfigMap && args.type_.is_some() {
        return Err("`type` is only valid for secretGenerator".into());
    }
    let mut r =
        Resource::new(Value::Object(obj), kfile.to_path_buf(), 0).map_err(|e| e.to_string())?;
    r.gen = Some(GenInfo {
        hash: opts.disable_name_suffix_hash != Some(true),
    });
    Ok(r)
}

/// Base64 as kustomize's generators write it: once the encoding is 70
/// characters or longer, it is cut into 70-character lines, each ending in `\n`.
fn encode_base64(data: &[u8]) -> String {
    const LINE: usize = 70;
    let enc = base64::engine::general_purpose::STANDARD.encode(data);
    if enc.len() < LINE {
        return enc;
    }
    let mut out = String::with_capacity(enc.len() + enc.len() / LINE + 1);
    for chunk in enc.as_bytes().chunks(LINE) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out
}

fn string_map(m: &BTreeMap<String, String>) -> Value {
    Value::Object(
        m.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

fn remove_quotes(s: &str) -> &str {
    let b = s.as_bytes();
    if b.len() >= 2 && b[0] == b[b.len() - 1] && (b[0] == b'"' || b[0] == b'\'') {
        &s[1..s.len() - 1]
    } else {
        s
    }
}

/// kustomize's `appendReplaceOrMerge`.
fn absorb(rm: &mut Vec<Resource>, new: Resource, behavior: Behavior) -> Result<(), String> {
    let id = new.id();
    let mut matches: Vec<usize> = rm
        .iter()
        .enumerate()
        .filter(|(_, r)| r.any_id(|x| x.equals(&id)))
        .map(|(i, _)| i)
        .collect();
    if matches.is_empty() && behavior != Behavior::Create {
        // merge/replace may name the object without its namespace.
        matches = rm
            .iter()
            .enumerate()
            .filter(|(_, r)| r.id().gvkn_equals(&id))
            .map(|(i, _)| i)
            .collect();
    }
    match (matches.as_slice(), behavior) {
        ([], Behavior::Create) => {
            rm.push(new);
            Ok(())
        }
        ([], b) => Err(format!(
            "behavior: {}: there is no {} named {:?} to merge into or replace",
            if b == Behavior::Merge {
                "merge"
            } else {
                "replace"
            },
            id.kind,
            id.name
        )),
        ([_], Behavior::Create) => Err(format!(
            "{} {:?} already exists; use behavior: merge or replace",
            id.kind, id.name
        )),
        ([i], b) => {
            let old = &mut rm[*i];
            let new_obj = new.obj;
            let merge_map =
                |key: &str, old_obj: &Value, new_obj: &Value, data: bool| -> Option<Value> {
                    let mut out = Map::new();
                    let o = if data {
                        old_obj.get(key)
                    } else {
                        old_obj.get("metadata").and_then(|m| m.get(key))
                    };
                    let n = if data {
                        new_obj.get(key)
                    } else {
                        new_obj.get("metadata").and_then(|m| m.get(key))
                    };
                    if let Some(Value::Object(o)) = o {
                        out.extend(o.clone());
                    }
                    if let Some(Value::Object(n)) = n {
                        out.extend(n.clone());
                    }
                    (!out.is_empty()).then_some(Value::Object(out))
                };
            let labels = merge_map("labels", &old.obj, &new_obj, false);
            let annotations = merge_map("annotations", &old.obj, &new_obj, false);
            let mut result = new_obj.clone();
            if b == Behavior::Merge {
                for key in ["data", "binaryData"] {
                    match merge_map(key, &old.obj, &new_obj, true) {
                        Some(v) => {
                            result[key] = v;
                        }
                        None => {
                            if let Some(m) = result.as_object_mut() {
                                m.remove(key);
                            }
                        }
                    }
                }
            }
            {
                let md = result
                    .get_mut("metadata")
                    .and_then(Value::as_object_mut)
                    .expect("generated objects have metadata");
                md.insert("name".into(), Value::String(old.name().to_string()));
                if old.namespace().is_empty() {
                    md.remove("namespace");
                } else {
                    md.insert(
                        "namespace".into(),
                        Value::String(old.namespace().to_string()),
                    );
                }
                match labels {
                    Some(l) => md.insert("labels".into(), l),
                    None => md.remove("labels"),
                };
                match annotations {
                    Some(a) => md.insert("annotations".into(), a),
                    None => md.remove("annotations"),
                };
            }
            old.obj = result;
            let old_hash = old.gen.as_ref().is_some_and(|g| g.hash);
            let new_hash = new.gen.as_ref().is_some_and(|g| g.hash);
            old.gen = Some(GenInfo {
                hash: old_hash && new_hash,
            });
            Ok(())
        }
        (many, _) => Err(format!(
            "{} objects could accept the {behavior:?} of {id}",
            many.len()
        )),
    }
}

/// At the end of the top-level build: append `-<hash>` to generated names.
pub(crate) fn add_hash_suffixes(rm: &mut [Resource]) -> Result<(), RenderError> {
    for r in rm.iter_mut() {
        if !r.gen.as_ref().is_some_and(|g| g.hash) {
            continue;
        }
        let h = content_hash(&r.obj);
        let name = format!("{}-{h}", r.name());
        r.set_name(&name);
    }
    Ok(())
}

/// kustomize's hash of a ConfigMap or Secret (other kinds: the whole object).
pub(crate) fn content_hash(obj: &Value) -> String {
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    let field = |k: &str| {
        obj.get(k)
            .cloned()
            .unwrap_or_else(|| Value::String(String::new()))
    };
    // kustomize looks the name up with a one-element path "metadata/name",
    // which finds nothing: the name is always hashed as "". Reproduced here,
    // since the suffix must match kustomize's.
    let name = Value::String(String::new());
    let mut m = BTreeMap::new();
    match kind {
        "ConfigMap" => {
            m.insert("kind", Value::String("ConfigMap".into()));
            m.insert("name", name);
            m.insert("data", field("data"));
            if let Some(b @ Value::Object(_)) = obj.get("binaryData") {
                m.insert("binaryData", b.clone());
            }
        }
        "Secret" => {
            m.insert("kind", Value::String("Secret".into()));
            m.insert("name", name);
            m.insert("type", field("type"));
            m.insert("data", field("data"));
            if let Some(s @ Value::Object(_)) = obj.get("stringData") {
                m.insert("stringData", s.clone());
            }
        }
        _ => {
            let mut out = String::new();
            go_json(obj, &mut out);
            return encode(&hex::encode(Sha256::digest(out.as_bytes())));
        }
    }
    let mut out = String::from("{");
    for (i, (k, v)) in m.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        go_string(k, &mut out);
        out.push(':');
        go_json(v, &mut out);
    }
    out.push('}');
    encode(&hex::encode(Sha256::digest(out.as_bytes())))
}

fn encode(hex: &str) -> String {
    hex.chars()
        .take(10)
        .map(|c| match c {
            '0' => 'g',
            '1' => 'h',
            '3' => 'k',
            'a' => 'm',
            'e' => 't',
            c => c,
        })
        .collect()
}

/// JSON as Go's `json.Marshal` writes it: map keys sorted, HTML-safe.
fn go_json(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => go_string(s, out),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                go_json(x, out);
            }
            out.push(']');
        }
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                go_string(k, out);
                out.push(':');
                go_json(&m[k], out);
            }
            out.push('}');
        }
    }
}

fn go_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn go_json_escapes_html() {
        let mut s = String::new();
        go_json(&json!({"b": "<&>", "a": "x\ny"}), &mut s);
        assert_eq!(s, r#"{"a":"x\ny","b":"\u003c\u0026\u003e"}"#);
    }
}
