//! Which part of an expression failed.
//!
//! The `cel` crate evaluates a whole expression and does not say which
//! sub-expression made it false. cairn finds out itself, on the compiled
//! AST: the expression is split into its top-level `&&` operands, which are
//! evaluated one by one (`Value::resolve_val` on the AST nodes, so nothing is
//! compiled while checking); the first that is not `true` is the failing
//! part. If that part is `RANGE.all(VAR, BODY)`, the first element of RANGE
//! that BODY fails for is found and the search goes on inside BODY.
//!
//! The AST carries no source spans, so the text of each part comes from a
//! lexical scan of the source that splits it the same way ([`Parts::of`],
//! done once at load). When the scan and the AST disagree, the whole
//! expression is shown.

use cel::common::ast::{Expr, IdedExpr, LiteralValue};
use cel::common::types::{CelBool, CelString};
use cel::common::value::{CowVal, Val};
use cel::objects::Value as CelValue;
use cel::{Context, ExecutionError};

use crate::fast;

/// The source texts of an expression's parts, matched to its AST.
#[derive(Debug)]
pub(crate) struct Parts {
    /// False when the text could not be matched up with the AST: then the
    /// expression is a single part.
    split: bool,
    texts: Vec<String>,
    alls: Vec<Option<AllText>>,
    /// Each part on the fast path, if all of them are in its subset.
    fast: Option<Vec<fast::Node>>,
}

/// The texts of `RANGE.all(VAR, BODY)`.
#[derive(Debug)]
struct AllText {
    var: String,
    range: String,
    range_fast: Option<fast::Node>,
    body: Parts,
}

impl Parts {
    /// Match the source `src` of `expr` to its AST.
    pub(crate) fn of(expr: &IdedExpr, src: &str) -> Parts {
        Self::of_in(expr, src, &[])
    }

    /// The same, for an expression inside comprehensions binding `locals`.
    fn of_in(expr: &IdedExpr, src: &str, locals: &[String]) -> Parts {
        let mut nodes = Vec::new();
        flatten_and(expr, &mut nodes);
        let texts = split_and(src);
        let (split, nodes, texts) = if texts.len() == nodes.len() {
            (true, nodes, texts)
        } else {
            (false, vec![expr], vec![src.trim()])
        };
        let alls = nodes
            .iter()
            .zip(&texts)
            .map(|(n, t)| {
                let (c, body) = all_parts(n)?;
                let (range, var, body_text) = parse_all_call(t)?;
                let mut inner = locals.to_vec();
                inner.push(c.accu_var.clone());
                inner.push(c.iter_var.clone());
                (var == c.iter_var).then(|| AllText {
                    var: var.to_string(),
                    range: squash(range),
                    range_fast: fast::compile_in(&c.iter_range, locals),
                    body: Parts::of_in(body, body_text, &inner),
                })
            })
            .collect();
        let fast = nodes
            .iter()
            .map(|n| fast::compile_in(n, locals))
            .collect::<Option<Vec<_>>>();
        Parts {
            split,
            texts: texts.into_iter().map(squash).collect(),
            alls,
            fast,
        }
    }
}

/// [`explain`] on the fast path: `None` if it cannot tell, else `Some` of
/// what `explain` would answer.
pub(crate) fn explain_fast<'a>(
    parts: &'a Parts,
    env: &fast::Env<'a>,
    locals: &[fast::V<'a>],
) -> Option<Option<String>> {
    let nodes = parts.fast.as_ref()?;
    for (i, n) in nodes.iter().enumerate() {
        if fast::eval_bool(n, env, locals)? {
            continue;
        }
        let Some(all) = &parts.alls[i] else {
            return Some(Some(parts.texts[i].clone()));
        };
        let drilled = (|| {
            let items = fast::eval_items(all.range_fast.as_ref()?, env, locals)?;
            for (index, item) in items.into_iter().enumerate() {
                let label = item.label();
                let mut inner = locals.to_vec();
                inner.push(fast::V::Bool(true));
                inner.push(item);
                if let Some(text) = explain_fast(&all.body, env, &inner)? {
                    return Some(format!(
                        "for {} = {}[{index}]{}: {text}",
                        all.var,
                        all.range,
                        label.map_or(String::new(), |n| format!(" ({n})"))
                    ));
                }
            }
            None
        })();
        return Some(Some(drilled.unwrap_or_else(|| parts.texts[i].clone())));
    }
    Some(None)
}

/// `None` if `expr` is `true` in `ctx`; else the failing part, as text.
pub(crate) fn explain(expr: &IdedExpr, parts: &Parts, ctx: &Context<'_, '_>) -> Option<String> {
    let mut nodes = Vec::new();
    if parts.split {
        flatten_and(expr, &mut nodes);
    } else {
        nodes.push(expr);
    }
    // The first part that is false; failing that, the first that is not true
    // (as CEL's `&&` prefers a false operand over an error).
    let mut first_error: Option<(usize, String)> = None;
    let mut first_false = None;
    for (i, n) in nodes.iter().enumerate() {
        match eval_bool(n, ctx) {
            Ok(true) => {}
            Ok(false) => {
                first_false = Some(i);
                break;
            }
            Err(e) => {
                if first_error.is_none() {
                    first_error = Some((i, e));
                }
            }
        }
    }
    if let Some(i) = first_false {
        let drilled = parts.alls[i]
            .as_ref()
            .and_then(|a| explain_all(nodes[i], a, ctx));
        return Some(drilled.unwrap_or_else(|| parts.texts[i].clone()));
    }
    first_error.map(|(i, e)| format!("{} -> {e}", parts.texts[i]))
}

fn eval_bool(e: &IdedExpr, ctx: &Context<'_, '_>) -> Result<bool, String> {
    match CelValue::resolve_val(e, ctx) {
        Ok(v) => match v.downcast_ref::<CelBool>() {
            Some(b) => Ok(*b.inner()),
            None => Err(format!("not a bool but {}", v.get_type().name())),
        },
        Err(e) => Err(format!("error: {}", describe_error(&e))),
    }
}

fn describe_error(e: &ExecutionError) -> String {
    match e {
        ExecutionError::NoSuchKey(k) => format!("no such key: {k} (guard with has() or ?.)"),
        other => other.to_string(),
    }
}

/// The comprehension and body of an `all()` macro.
fn all_parts(e: &IdedExpr) -> Option<(&cel::common::ast::ComprehensionExpr, &IdedExpr)> {
    let Expr::Comprehension(c) = &e.expr else {
        return None;
    };
    if c.iter_var2.is_some()
        || !matches!(&c.accu_init.expr, Expr::Literal(LiteralValue::Boolean(b)) if *b.inner())
    {
        return None;
    }
    let Expr::Call(step) = &c.loop_step.expr else {
        return None;
    };
    let is_and = step.func_name == "_&&_"
        && step.args.len() == 2
        && matches!(&step.args[0].expr, Expr::Ident(a) if *a == c.accu_var);
    is_and.then(|| (c.as_ref(), &step.args[1]))
}

/// The first element of the range that the body fails for, explained.
fn explain_all(part: &IdedExpr, text: &AllText, ctx: &Context<'_, '_>) -> Option<String> {
    let (c, body) = all_parts(part)?;
    let range = CelValue::resolve_val(&c.iter_range, ctx).ok()?;
    let mut items = range.as_iterable()?.iter();
    let mut index = 0usize;
    while let Some(item) = items.next() {
        let mut scope = ctx.new_inner_scope();
        scope.add_variable_as_val(c.iter_var.as_str(), item.clone_as_boxed());
        if let Some(inner) = explain(body, &text.body, &scope) {
            return Some(format!(
                "for {} = {}[{index}]{}: {inner}",
                text.var,
                text.range,
                element_label(item).map_or(String::new(), |n| format!(" ({n})"))
            ));
        }
        index += 1;
    }
    None
}

/// How reports name an element: `"x"` for a string; `name "x"` for an
/// object with a name, plus `image "y"` for a container.
fn element_label(item: &dyn Val) -> Option<String> {
    if let Some(s) = item.downcast_ref::<CelString>() {
        return Some(format!("{:?}", s.inner()));
    }
    let indexer = item.as_indexer()?;
    let field = |k: &str| -> Option<String> {
        let v: CowVal<'_, '_> = indexer.get(&CelString::from(k)).ok()?;
        v.downcast_ref::<CelString>().map(|s| s.inner().to_string())
    };
    label_of(field("name").as_deref(), field("image").as_deref())
}

/// `name "x"`, and `, image "y"` for a container.
pub(crate) fn label_of(name: Option<&str>, image: Option<&str>) -> Option<String> {
    let name = name?;
    Some(match image {
        Some(image) => format!("name {name:?}, image {image:?}"),
        None => format!("name {name:?}"),
    })
}

/// The operands of a chain of `&&`, left to right.
fn flatten_and<'a>(e: &'a IdedExpr, out: &mut Vec<&'a IdedExpr>) {
    match &e.expr {
        Expr::Call(c) if c.func_name == "_&&_" && c.target.is_none() && c.args.len() == 2 => {
            flatten_and(&c.args[0], out);
            flatten_and(&c.args[1], out);
        }
        _ => out.push(e),
    }
}

/// A lexical scan of CEL source: for each byte, its bracket depth outside
/// string literals, or `None` inside a literal.
fn depths(src: &str) -> Vec<Option<usize>> {
    let b = src.as_bytes();
    let mut out = vec![None; b.len()];
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'\'' || c == b'"' {
            let raw = i > 0 && (b[i - 1] == b'r' || b[i - 1] == b'R');
            let triple = b.get(i + 1) == Some(&c) && b.get(i + 2) == Some(&c);
            i += if triple { 3 } else { 1 };
            while i < b.len() {
                if b[i] == b'\\' && !raw {
                    i += 2;
                    continue;
                }
                if b[i] == c && (!triple || (b.get(i + 1) == Some(&c) && b.get(i + 2) == Some(&c)))
                {
                    i += if triple { 3 } else { 1 };
                    break;
                }
                i += 1;
            }
            continue;
        }
        match c {
            b'(' | b'[' | b'{' => {
                out[i] = Some(depth);
                depth += 1;
            }
            b')' | b']' | b'}' => {
                depth = depth.saturating_sub(1);
                out[i] = Some(depth);
            }
            _ => out[i] = Some(depth),
        }
        i += 1;
    }
    out
}

/// The top-level `&&` operands of `src` (parenthesised conjunctions are
/// opened, as the parser flattens them too).
fn split_and(src: &str) -> Vec<&str> {
    let d = depths(src);
    let b = src.as_bytes();
    let mut parts = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + 1 < b.len() {
        if b[i] == b'&' && b[i + 1] == b'&' && d[i] == Some(0) {
            parts.push(&src[start..i]);
            start = i + 2;
            i += 2;
            continue;
        }
        i += 1;
    }
    parts.push(&src[start..]);
    let mut out = Vec::new();
    for p in parts {
        let t = p.trim();
        match strip_parens(t) {
            Some(inner) if split_and(inner).len() > 1 => out.extend(split_and(inner)),
            _ => out.push(t),
        }
    }
    out
}

/// `inner` if `t` is `(inner)` with matching outer parentheses.
fn strip_parens(t: &str) -> Option<&str> {
    if !t.starts_with('(') || !t.ends_with(')') {
        return None;
    }
    let d = depths(t);
    let closes_at = (1..t.len()).find(|&i| t.as_bytes()[i] == b')' && d[i] == Some(0))?;
    (closes_at == t.len() - 1).then(|| &t[1..t.len() - 1])
}

/// Split `RANGE.all(VAR, BODY)` into its three texts.
fn parse_all_call(text: &str) -> Option<(&str, &str, &str)> {
    let t = text.trim();
    let d = depths(t);
    let b = t.as_bytes();
    if !t.ends_with(')') || d[b.len() - 1] != Some(0) {
        return None;
    }
    // The parenthesis that the final one closes.
    let open = (0..b.len() - 1)
        .rev()
        .find(|&i| b[i] == b'(' && d[i] == Some(0))?;
    let range = t[..open].trim_end().strip_suffix(".all")?;
    let args = &t[open + 1..b.len() - 1];
    let ad = depths(args);
    let comma = (0..args.len()).find(|&i| args.as_bytes()[i] == b',' && ad[i] == Some(0))?;
    Some((range.trim(), args[..comma].trim(), args[comma + 1..].trim()))
}

/// Collapse runs of whitespace (folded YAML) into single spaces.
fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_top_level_conjunctions_only() {
        assert_eq!(split_and("a && b"), vec!["a", "b"]);
        assert_eq!(split_and("(a && b) && c"), vec!["a", "b", "c"]);
        assert_eq!(split_and("(a || b) && c"), vec!["(a || b)", "c"]);
        assert_eq!(
            split_and("f(a && b) && 'x && y'"),
            vec!["f(a && b)", "'x && y'"]
        );
        assert_eq!(split_and(r#""a\"&&" && b"#), vec![r#""a\"&&""#, "b"]);
        assert_eq!(
            split_and("x.all(c, c.a && c.b)"),
            vec!["x.all(c, c.a && c.b)"]
        );
        assert_eq!(split_and("(a) || (b)"), vec!["(a) || (b)"]);
    }

    #[test]
    fn parses_all_calls() {
        assert_eq!(
            parse_all_call("variables.containers.all(c, c.a && f(c, 1))"),
            Some(("variables.containers", "c", "c.a && f(c, 1)"))
        );
        assert_eq!(parse_all_call("x.exists(c, c)"), None);
        assert_eq!(parse_all_call("(x.all(c, c)) || y"), None);
    }
}
