//! Resource selectors: patch `target`s and replacement `select`/`reject`.
//! Name and namespace are anchored regular expressions; a resource matches by
//! its original or current name/namespace (as kustomize's `ResMap.Select`).

use regex::Regex;
use serde_json::Value;

use super::resource::{ResId, Resource};
use super::types::Selector;

/// A compiled selector.
pub(crate) struct Compiled {
    sel: Selector,
    name: Option<Regex>,
    namespace: Option<Regex>,
    labels: Vec<Req>,
    annotations: Vec<Req>,
}

fn anchored(p: &Option<String>) -> Result<Option<Regex>, String> {
    match p.as_deref().filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(p) => Regex::new(&format!("^(?:{p})$"))
            .map(Some)
            .map_err(|e| format!("bad regular expression {p:?}: {e}")),
    }
}

impl Compiled {
    pub fn new(sel: &Selector) -> Result<Compiled, String> {
        Ok(Compiled {
            name: anchored(&sel.name)?,
            namespace: anchored(&sel.namespace)?,
            labels: parse_label_selector(sel.label_selector.as_deref().unwrap_or(""))?,
            annotations: parse_label_selector(sel.annotation_selector.as_deref().unwrap_or(""))?,
            sel: sel.clone(),
        })
    }

    fn gvk_ok(&self, id: &ResId) -> bool {
        let ok = |want: &Option<String>, have: &str| match want.as_deref() {
            None | Some("") => true,
            Some(w) => w == have,
        };
        ok(&self.sel.group, &id.group)
            && ok(&self.sel.version, &id.version)
            && ok(&self.sel.kind, &id.kind)
    }

    /// kustomize's `Select`: namespace and name by original or current value.
    pub fn matches(&self, r: &Resource) -> bool {
        let cur = r.id();
        let org = r.orig_id();
        if let Some(ns) = &self.namespace {
            if !ns.is_match(org.effective_namespace()) && !ns.is_match(cur.effective_namespace()) {
                return false;
            }
        }
        if let Some(n) = &self.name {
            if !n.is_match(&org.name) && !n.is_match(&cur.name) {
                return false;
            }
        }
        self.gvk_ok(&cur)
            && reqs_match(
                &self.labels,
                r.obj.get("metadata").and_then(|m| m.get("labels")),
            )
            && reqs_match(
                &self.annotations,
                r.obj.get("metadata").and_then(|m| m.get("annotations")),
            )
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Req {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

fn reqs_match(reqs: &[Req], map: Option<&Value>) -> bool {
    let get = |k: &str| map.and_then(|m| m.get(k)).and_then(Value::as_str);
    reqs.iter().all(|r| match r {
        Req::Eq(k, v) => get(k) == Some(v.as_str()),
        Req::NotEq(k, v) => get(k) != Some(v.as_str()),
        Req::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
        Req::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
        Req::Exists(k) => get(k).is_some(),
        Req::NotExists(k) => get(k).is_none(),
    })
}

/// Kubernetes label selector syntax: `a=b`, `a==b`, `a!=b`, `a in (x,y)`,
/// `a notin (x)`, `a`, `!a`, comma-separated.
fn parse_label_selector(s: &str) -> Result<Vec<Req>, String> {
    let mut out = Vec::new();
    // Split on commas outside parentheses.
    let mut parts = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => {
                depth += 1;
                cur.push(c)
            }
            ')' => {
                depth -= 1;
                cur.push(c)
            }
            ',' if depth == 0 => parts.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    parts.push(cur);
    for p in parts {
        let p = p.trim();
        if p.is_empty() {
            continue;
        }
        let set_values = |rest: &str| -> Result<Vec<String>, String> {
            let rest = rest.trim();
            let inner = rest
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| format!("bad label selector term {p:?}"))?;
            Ok(inner
                .split(',')
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .collect())
        };
        if let Some(k) = p.strip_prefix('!') {
            out.push(Req::NotExists(k.trim().to_string()));
        } else if let Some((k, v)) = p.split_once("!=") {
            out.push(Req::NotEq(k.trim().to_string(), v.trim().to_string()));
        } else if let Some((k, v)) = p.split_once("==") {
            out.push(Req::Eq(k.trim().to_string(), v.trim().to_string()));
        } else if let Some((k, v)) = p.split_once('=') {
            out.push(Req::Eq(k.trim().to_string(), v.trim().to_string()));
        } else if let Some((k, rest)) = p.split_once(" notin ") {
            out.push(Req::NotIn(k.trim().to_string(), set_values(rest)?));
        } else if let Some((k, rest)) = p.split_once(" in ") {
            out.push(Req::In(k.trim().to_string(), set_values(rest)?));
        } else if p
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        {
            out.push(Req::Exists(p.to_string()));
        } else {
            return Err(format!("bad label selector term {p:?}"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors() {
        let reqs = parse_label_selector("app=web, tier in (a,b),!legacy,env").unwrap();
        assert!(reqs_match(
            &reqs,
            Some(&json!({"app": "web", "tier": "b", "env": "x"}))
        ));
        assert!(!reqs_match(
            &reqs,
            Some(&json!({"app": "web", "tier": "c", "env": "x"}))
        ));
        assert!(!reqs_match(
            &reqs,
            Some(&json!({"app": "web", "tier": "a", "env": "x", "legacy": "1"}))
        ));
    }
}
