//! A fast path for the common case: an object that passes.
//!
//! The `cel` crate's interpreter costs a few microseconds per evaluation
//! (it allocates for every variable binding, field access and optional), too
//! slow for the budget of checking 1,000 objects in a tenth of their render
//! time. So each expression whose constructs are all in a small subset of CEL
//! — field access and `has()`, optional chaining, literals, lists, the
//! comprehension macros, logic, comparison, `in`, `+`, `size` and a few string
//! functions — is also compiled, once, into [`Node`]s that evaluate directly
//! on the borrowed JSON without allocating.
//!
//! The fast path only ever *passes* an object: it answers `Some(true)` or
//! gives up (`None`) — on anything it does not model exactly (an error, a
//! type mix, a non-ASCII string where CEL counts code points, ...). Then the
//! `cel` crate evaluates the expression and has the final word, and explains
//! the failure. Tests check that both agree on every fixture.

use std::borrow::Cow;

use cel::common::ast::{Expr, IdedExpr, LiteralValue};
use serde_json::Value;

/// A compiled expression of the fast subset.
#[derive(Debug)]
pub(crate) enum Node {
    Lit(Lit),
    List(Vec<Node>),
    /// A top-level variable.
    Global(Global),
    /// A comprehension variable: index into the locals stack.
    Local(usize),
    /// `variables.podSpec` / `variables.containers`.
    Builtin(Builtin),
    /// `operand.field`; `test` for `has(operand.field)`.
    Select {
        operand: Box<Node>,
        field: String,
        test: bool,
    },
    /// `operand.?field`.
    OptSelect {
        operand: Box<Node>,
        field: String,
    },
    Index(Box<Node>, Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Not(Box<Node>),
    Neg(Box<Node>),
    Cond(Box<Node>, Box<Node>, Box<Node>),
    Cmp(CmpOp, Box<Node>, Box<Node>),
    Add(Box<Node>, Box<Node>),
    In(Box<Node>, Box<Node>),
    NotStrictlyFalse(Box<Node>),
    Size(Box<Node>),
    Str(StrFn, Box<Node>, Box<Node>),
    OrValue(Box<Node>, Box<Node>),
    HasValue(Box<Node>),
    Comprehension(Box<Comprehension>),
    /// The `all` (`all: true`) and `exists` macros, without the generic
    /// accumulator machinery.
    Quantifier {
        all: bool,
        range: Box<Node>,
        body: Box<Node>,
    },
}

#[derive(Debug)]
pub(crate) enum Lit {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Double(f64),
    Str(String),
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Global {
    Object,
    OldObject,
    Params,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Builtin {
    PodSpec,
    Containers,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum StrFn {
    Contains,
    StartsWith,
    EndsWith,
    IndexOf,
    LastIndexOf,
}

#[derive(Debug)]
pub(crate) struct Comprehension {
    range: Node,
    accu_init: Node,
    loop_cond: Node,
    loop_step: Node,
    result: Node,
}

/// Compile `e` into the fast subset, or `None` if it uses anything else.
/// Expressions that declare their own `variables` are not compiled.
pub(crate) fn compile(e: &IdedExpr) -> Option<Node> {
    compile_in(e, &[])
}

/// Compile `e` as it appears inside comprehensions binding `locals`
/// (outermost first; each comprehension binds its accumulator, then its
/// iteration variable).
pub(crate) fn compile_in(e: &IdedExpr, locals: &[String]) -> Option<Node> {
    Compiler {
        locals: locals.to_vec(),
    }
    .node(e)
}

struct Compiler {
    /// Names of the comprehension variables in scope, innermost last.
    locals: Vec<String>,
}

impl Compiler {
    fn boxed(&mut self, e: &IdedExpr) -> Option<Box<Node>> {
        self.node(e).map(Box::new)
    }

    fn node(&mut self, e: &IdedExpr) -> Option<Node> {
        Some(match &e.expr {
            Expr::Literal(l) => Node::Lit(match l {
                LiteralValue::Null => Lit::Null,
                LiteralValue::Boolean(b) => Lit::Bool(*b.inner()),
                LiteralValue::Int(i) => Lit::Int(*i.inner()),
                LiteralValue::UInt(u) => Lit::UInt(*u.inner()),
                LiteralValue::Double(d) => Lit::Double(*d.inner()),
                LiteralValue::String(s) => Lit::Str(s.inner().to_string()),
                LiteralValue::Bytes(_) => return None,
            }),
            Expr::Ident(name) => {
                if let Some(i) = self.locals.iter().rposition(|l| l == name) {
                    Node::Local(i)
                } else {
                    Node::Global(match name.as_str() {
                        "object" => Global::Object,
                        "oldObject" => Global::OldObject,
                        "params" => Global::Params,
                        _ => return None,
                    })
                }
            }
            Expr::Select(s) => {
                if let Expr::Ident(root) = &s.operand.expr {
                    if root == "variables" && !self.locals.iter().any(|l| l == root) {
                        if s.test {
                            return None;
                        }
                        return Some(Node::Builtin(match s.field.as_str() {
                            "podSpec" => Builtin::PodSpec,
                            "containers" => Builtin::Containers,
                            _ => return None,
                        }));
                    }
                }
                Node::Select {
                    operand: self.boxed(&s.operand)?,
                    field: s.field.clone(),
                    test: s.test,
                }
            }
            Expr::List(l) => {
                if !l.optional_indices.is_empty() {
                    return None;
                }
                Node::List(
                    l.elements
                        .iter()
                        .map(|x| self.node(x))
                        .collect::<Option<Vec<_>>>()?,
                )
            }
            Expr::Call(c) => {
                let args = &c.args;
                match (c.func_name.as_str(), &c.target, args.len()) {
                    ("_&&_", None, 2) => Node::And(self.boxed(&args[0])?, self.boxed(&args[1])?),
                    ("_||_", None, 2) => Node::Or(self.boxed(&args[0])?, self.boxed(&args[1])?),
                    ("!_", None, 1) => Node::Not(self.boxed(&args[0])?),
                    ("-_", None, 1) => Node::Neg(self.boxed(&args[0])?),
                    ("_?_:_", None, 3) => Node::Cond(
                        self.boxed(&args[0])?,
                        self.boxed(&args[1])?,
                        self.boxed(&args[2])?,
                    ),
                    (op @ ("_==_" | "_!=_" | "_<_" | "_<=_" | "_>_" | "_>=_"), None, 2) => {
                        let op = match op {
                            "_==_" => CmpOp::Eq,
                            "_!=_" => CmpOp::Ne,
                            "_<_" => CmpOp::Lt,
                            "_<=_" => CmpOp::Le,
                            "_>_" => CmpOp::Gt,
                            _ => CmpOp::Ge,
                        };
                        Node::Cmp(op, self.boxed(&args[0])?, self.boxed(&args[1])?)
                    }
                    ("_+_", None, 2) => Node::Add(self.boxed(&args[0])?, self.boxed(&args[1])?),
                    ("@in", None, 2) => Node::In(self.boxed(&args[0])?, self.boxed(&args[1])?),
                    ("@not_strictly_false", None, 1) => {
                        Node::NotStrictlyFalse(self.boxed(&args[0])?)
                    }
                    ("_[_]", None, 2) => Node::Index(self.boxed(&args[0])?, self.boxed(&args[1])?),
                    ("_?._", None, 2) => match &args[1].expr {
                        Expr::Literal(LiteralValue::String(f)) => Node::OptSelect {
                            operand: self.boxed(&args[0])?,
                            field: f.inner().to_string(),
                        },
                        _ => return None,
                    },
                    ("size", None, 1) => Node::Size(self.boxed(&args[0])?),
                    ("size", Some(t), 0) => Node::Size(self.boxed(t)?),
                    ("orValue", Some(t), 1) => Node::OrValue(self.boxed(t)?, self.boxed(&args[0])?),
                    ("hasValue", Some(t), 0) => Node::HasValue(self.boxed(t)?),
                    (
                        f @ ("contains" | "startsWith" | "endsWith" | "indexOf" | "lastIndexOf"),
                        Some(t),
                        1,
                    ) => {
                        let f = match f {
                            "contains" => StrFn::Contains,
                            "startsWith" => StrFn::StartsWith,
                            "endsWith" => StrFn::EndsWith,
                            "indexOf" => StrFn::IndexOf,
                            _ => StrFn::LastIndexOf,
                        };
                        Node::Str(f, self.boxed(t)?, self.boxed(&args[0])?)
                    }
                    _ => return None,
                }
            }
            Expr::Comprehension(c) => {
                if c.iter_var2.is_some() {
                    return None;
                }
                let range = self.node(&c.iter_range)?;
                let accu_init = self.node(&c.accu_init)?;
                // Locals: the accumulator, then the iteration variable.
                self.locals.push(c.accu_var.clone());
                self.locals.push(c.iter_var.clone());
                let body = (|| {
                    Some((
                        self.node(&c.loop_cond)?,
                        self.node(&c.loop_step)?,
                        self.node(&c.result)?,
                    ))
                })();
                self.locals.truncate(self.locals.len() - 2);
                let (loop_cond, loop_step, result) = body?;
                if let Some(all) = quantifier(c) {
                    let (Node::And(_, body) | Node::Or(_, body)) = loop_step else {
                        return None;
                    };
                    return Some(Node::Quantifier {
                        all,
                        range: Box::new(range),
                        body,
                    });
                }
                Node::Comprehension(Box::new(Comprehension {
                    range,
                    accu_init,
                    loop_cond,
                    loop_step,
                    result,
                }))
            }
            Expr::Map(_) | Expr::Struct(_) | Expr::Unspecified => return None,
        })
    }
}

/// `Some(true)` for the expansion of `all()`, `Some(false)` for `exists()`.
fn quantifier(c: &cel::common::ast::ComprehensionExpr) -> Option<bool> {
    let accu = |e: &IdedExpr| matches!(&e.expr, Expr::Ident(a) if *a == c.accu_var);
    let Expr::Literal(LiteralValue::Boolean(init)) = &c.accu_init.expr else {
        return None;
    };
    let all = *init.inner();
    let Expr::Call(step) = &c.loop_step.expr else {
        return None;
    };
    let Expr::Call(cond) = &c.loop_cond.expr else {
        return None;
    };
    let cond_ok = cond.func_name == "@not_strictly_false"
        && cond.args.len() == 1
        && if all {
            accu(&cond.args[0])
        } else {
            matches!(&cond.args[0].expr, Expr::Call(n) if n.func_name == "!_" && n.args.len() == 1 && accu(&n.args[0]))
        };
    let step_ok = step.func_name == if all { "_&&_" } else { "_||_" }
        && step.args.len() == 2
        && accu(&step.args[0]);
    (cond_ok && step_ok && accu(&c.result)).then_some(all)
}

/// A value of the fast path. JSON containers stay borrowed.
#[derive(Debug, Clone)]
pub(crate) enum V<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Double(f64),
    Str(Cow<'a, str>),
    /// A JSON array or object.
    Json(&'a Value),
    /// A list built by the expression.
    List(Vec<V<'a>>),
    /// `variables.containers`.
    Refs(&'a [&'a Value]),
    /// An optional; every optional of the fast path is a JSON field that is
    /// there or not.
    Opt(Option<&'a Value>),
}

/// Gave up: the `cel` crate decides.
struct GiveUp;

type R<'a> = Result<V<'a>, GiveUp>;

fn of_json(v: &Value) -> V<'_> {
    match v {
        Value::Null => V::Null,
        Value::Bool(b) => V::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                V::Int(i)
            } else if let Some(u) = n.as_u64() {
                V::UInt(u)
            } else {
                n.as_f64().map_or(V::Null, V::Double)
            }
        }
        Value::String(s) => V::Str(Cow::Borrowed(s)),
        Value::Array(_) | Value::Object(_) => V::Json(v),
    }
}

/// What a fast evaluation sees.
pub(crate) struct Env<'a> {
    pub(crate) object: &'a Value,
    pub(crate) params: &'a Value,
    pub(crate) pod_spec: Option<&'a Value>,
    pub(crate) containers: &'a [&'a Value],
    /// The locals stack, kept between evaluations to allocate it once.
    pub(crate) scratch: std::cell::RefCell<Vec<V<'a>>>,
}

/// The expression's value for this object if the fast path can tell it
/// exactly, `None` if the `cel` crate must decide.
pub(crate) fn eval_bool<'a>(node: &'a Node, env: &Env<'a>, locals: &[V<'a>]) -> Option<bool> {
    match eval(node, env, locals)? {
        V::Bool(b) => Some(b),
        _ => None,
    }
}

/// The expression's string value, if the fast path can tell it.
pub(crate) fn eval_string<'a>(node: &'a Node, env: &Env<'a>, locals: &[V<'a>]) -> Option<String> {
    match eval(node, env, locals)? {
        V::Str(s) => Some(s.into_owned()),
        _ => None,
    }
}

/// The elements a comprehension over the expression's value iterates.
pub(crate) fn eval_items<'a>(
    node: &'a Node,
    env: &Env<'a>,
    locals: &[V<'a>],
) -> Option<Vec<V<'a>>> {
    Range::of(eval(node, env, locals)?)
        .ok()
        .map(Iterator::collect)
}

fn eval<'a>(node: &'a Node, env: &Env<'a>, locals: &[V<'a>]) -> Option<V<'a>> {
    let mut scratch = env.scratch.borrow_mut();
    scratch.clear();
    scratch.extend_from_slice(locals);
    let mut ev = Evaluator {
        env,
        locals: &mut scratch,
    };
    ev.eval(node).ok()
}

impl V<'_> {
    /// How reports name an element (see `explain::element_label`).
    pub(crate) fn label(&self) -> Option<String> {
        match self {
            V::Str(s) => Some(format!("{s:?}")),
            V::Json(Value::Object(m)) => {
                let field = |k: &str| m.get(k).and_then(Value::as_str);
                crate::explain::label_of(field("name"), field("image"))
            }
            _ => None,
        }
    }
}

struct Evaluator<'e, 'a> {
    env: &'e Env<'a>,
    locals: &'e mut Vec<V<'a>>,
}

impl<'a> Evaluator<'_, 'a> {
    fn eval(&mut self, n: &'a Node) -> R<'a> {
        Ok(match n {
            Node::Lit(l) => match l {
                Lit::Null => V::Null,
                Lit::Bool(b) => V::Bool(*b),
                Lit::Int(i) => V::Int(*i),
                Lit::UInt(u) => V::UInt(*u),
                Lit::Double(d) => V::Double(*d),
                Lit::Str(s) => V::Str(Cow::Borrowed(s)),
            },
            Node::List(items) => V::List(
                items
                    .iter()
                    .map(|i| self.eval(i))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            Node::Global(g) => match g {
                Global::Object => of_json(self.env.object),
                Global::Params => of_json(self.env.params),
                Global::OldObject => V::Null,
            },
            Node::Local(i) => self.locals.get(*i).cloned().ok_or(GiveUp)?,
            Node::Builtin(Builtin::PodSpec) => self.env.pod_spec.map_or(V::Null, of_json),
            Node::Builtin(Builtin::Containers) => V::Refs(self.env.containers),
            Node::Select {
                operand,
                field,
                test,
            } => {
                let o = self.eval(operand)?;
                match (o, test) {
                    (V::Json(Value::Object(m)), false) => of_json(m.get(field).ok_or(GiveUp)?),
                    (V::Json(Value::Object(m)), true) => V::Bool(m.contains_key(field)),
                    (V::Opt(None), false) => V::Opt(None),
                    (V::Opt(None), true) => V::Bool(false),
                    (V::Opt(Some(Value::Object(m))), false) => V::Opt(m.get(field)),
                    (V::Opt(Some(Value::Object(m))), true) => V::Bool(m.contains_key(field)),
                    _ => return Err(GiveUp),
                }
            }
            Node::OptSelect { operand, field } => match self.eval(operand)? {
                V::Json(Value::Object(m)) | V::Opt(Some(Value::Object(m))) => V::Opt(m.get(field)),
                V::Opt(None) => V::Opt(None),
                _ => return Err(GiveUp),
            },
            Node::Index(o, i) => {
                let (o, i) = (self.eval(o)?, self.eval(i)?);
                match (o, i) {
                    (V::Json(Value::Object(m)), V::Str(k)) => {
                        of_json(m.get(k.as_ref()).ok_or(GiveUp)?)
                    }
                    (V::Json(Value::Array(a)), V::Int(i)) => of_json(
                        usize::try_from(i)
                            .ok()
                            .and_then(|i| a.get(i))
                            .ok_or(GiveUp)?,
                    ),
                    (V::Refs(r), V::Int(i)) => of_json(
                        usize::try_from(i)
                            .ok()
                            .and_then(|i| r.get(i))
                            .ok_or(GiveUp)?,
                    ),
                    (V::List(l), V::Int(i)) => usize::try_from(i)
                        .ok()
                        .and_then(|i| l.into_iter().nth(i))
                        .ok_or(GiveUp)?,
                    _ => return Err(GiveUp),
                }
            }
            Node::And(a, b) => match self.eval(a)? {
                V::Bool(false) => V::Bool(false),
                V::Bool(true) => match self.eval(b)? {
                    V::Bool(x) => V::Bool(x),
                    _ => return Err(GiveUp),
                },
                _ => return Err(GiveUp),
            },
            Node::Or(a, b) => match self.eval(a)? {
                V::Bool(true) => V::Bool(true),
                V::Bool(false) => match self.eval(b)? {
                    V::Bool(x) => V::Bool(x),
                    _ => return Err(GiveUp),
                },
                _ => return Err(GiveUp),
            },
            Node::Not(a) => match self.eval(a)? {
                V::Bool(x) => V::Bool(!x),
                _ => return Err(GiveUp),
            },
            Node::Neg(a) => match self.eval(a)? {
                V::Int(i) => V::Int(i.checked_neg().ok_or(GiveUp)?),
                V::Double(d) => V::Double(-d),
                _ => return Err(GiveUp),
            },
            Node::NotStrictlyFalse(a) => match self.eval(a) {
                Ok(V::Bool(false)) => V::Bool(false),
                Ok(V::Bool(true)) => V::Bool(true),
                // An error keeps `all()`/`exists()` looping in CEL; the fast
                // path gives up instead.
                _ => return Err(GiveUp),
            },
            Node::Cond(c, t, f) => match self.eval(c)? {
                V::Bool(true) => self.eval(t)?,
                V::Bool(false) => self.eval(f)?,
                _ => return Err(GiveUp),
            },
            Node::Cmp(op, a, b) => {
                let (a, b) = (self.eval(a)?, self.eval(b)?);
                let equality = matches!(op, CmpOp::Eq | CmpOp::Ne);
                let ord = compare(&a, &b, equality)?;
                V::Bool(match op {
                    CmpOp::Eq => ord == std::cmp::Ordering::Equal,
                    CmpOp::Ne => ord != std::cmp::Ordering::Equal,
                    CmpOp::Lt => ord == std::cmp::Ordering::Less,
                    CmpOp::Le => ord != std::cmp::Ordering::Greater,
                    CmpOp::Gt => ord == std::cmp::Ordering::Greater,
                    CmpOp::Ge => ord != std::cmp::Ordering::Less,
                })
            }
            Node::Add(a, b) => match (self.eval(a)?, self.eval(b)?) {
                (V::Str(a), V::Str(b)) => V::Str(Cow::Owned(format!("{a}{b}"))),
                (V::Int(a), V::Int(b)) => V::Int(a.checked_add(b).ok_or(GiveUp)?),
                (
                    a @ (V::List(_) | V::Refs(_) | V::Json(Value::Array(_))),
                    b @ (V::List(_) | V::Refs(_) | V::Json(Value::Array(_))),
                ) => {
                    let mut out = items(a)?;
                    out.extend(items(b)?);
                    V::List(out)
                }
                _ => return Err(GiveUp),
            },
            Node::In(x, c) => {
                let x = self.eval(x)?;
                // A list literal: compare element by element, building nothing.
                if let Node::List(lits) = &**c {
                    let mut found = false;
                    for l in lits {
                        if compare(&x, &self.eval(l)?, true)? == std::cmp::Ordering::Equal {
                            found = true;
                            break;
                        }
                    }
                    return Ok(V::Bool(found));
                }
                match self.eval(c)? {
                    V::Json(Value::Object(m)) => match x {
                        V::Str(k) => V::Bool(m.contains_key(k.as_ref())),
                        _ => return Err(GiveUp),
                    },
                    c @ (V::List(_) | V::Refs(_) | V::Json(Value::Array(_))) => {
                        let mut found = false;
                        for item in items(c)? {
                            if compare(&x, &item, true)? == std::cmp::Ordering::Equal {
                                found = true;
                                break;
                            }
                        }
                        V::Bool(found)
                    }
                    _ => return Err(GiveUp),
                }
            }
            Node::Size(a) => match self.eval(a)? {
                V::Str(s) => V::Int(s.chars().count() as i64),
                V::Json(Value::Array(a)) => V::Int(a.len() as i64),
                V::Json(Value::Object(m)) => V::Int(m.len() as i64),
                V::List(l) => V::Int(l.len() as i64),
                V::Refs(r) => V::Int(r.len() as i64),
                _ => return Err(GiveUp),
            },
            Node::Str(f, s, arg) => {
                let (V::Str(s), V::Str(a)) = (self.eval(s)?, self.eval(arg)?) else {
                    return Err(GiveUp);
                };
                match f {
                    StrFn::Contains => V::Bool(s.contains(a.as_ref())),
                    StrFn::StartsWith => V::Bool(s.starts_with(a.as_ref())),
                    StrFn::EndsWith => V::Bool(s.ends_with(a.as_ref())),
                    // CEL counts code points; byte offsets equal them in ASCII.
                    StrFn::IndexOf | StrFn::LastIndexOf => {
                        if !s.is_ascii() || !a.is_ascii() {
                            return Err(GiveUp);
                        }
                        let pos = match f {
                            StrFn::IndexOf => s.find(a.as_ref()),
                            _ => s.rfind(a.as_ref()),
                        };
                        V::Int(pos.map_or(-1, |p| p as i64))
                    }
                }
            }
            Node::OrValue(o, d) => match self.eval(o)? {
                V::Opt(Some(v)) => of_json(v),
                V::Opt(None) => self.eval(d)?,
                _ => return Err(GiveUp),
            },
            Node::HasValue(o) => match self.eval(o)? {
                V::Opt(v) => V::Bool(v.is_some()),
                _ => return Err(GiveUp),
            },
            Node::Quantifier { all, range, body } => {
                let range = Range::of(self.eval(range)?)?;
                let base = self.locals.len();
                let mut result = *all;
                for item in range {
                    self.locals.truncate(base);
                    self.locals.push(V::Null); // the accumulator, unused
                    self.locals.push(item);
                    match self.eval(body) {
                        Ok(V::Bool(b)) if b == *all => {}
                        Ok(V::Bool(_)) => {
                            result = !*all;
                            break;
                        }
                        _ => {
                            self.locals.truncate(base);
                            return Err(GiveUp);
                        }
                    }
                }
                self.locals.truncate(base);
                V::Bool(result)
            }
            Node::Comprehension(c) => {
                let range = Range::of(self.eval(&c.range)?)?;
                let mut accu = self.eval(&c.accu_init)?;
                let base = self.locals.len();
                for item in range {
                    self.locals.truncate(base);
                    self.locals.push(accu.clone());
                    self.locals.push(item);
                    match self.eval(&c.loop_cond)? {
                        V::Bool(true) => {}
                        V::Bool(false) => break,
                        _ => return Err(GiveUp),
                    }
                    accu = self.eval(&c.loop_step)?;
                }
                self.locals.truncate(base);
                self.locals.push(accu);
                self.locals.push(V::Null); // the iteration variable is out of scope
                let r = self.eval(&c.result);
                self.locals.truncate(base);
                r?
            }
        })
    }
}

/// The elements of a list value.
fn items(v: V<'_>) -> Result<Vec<V<'_>>, GiveUp> {
    match v {
        V::List(l) => Ok(l),
        V::Json(Value::Array(a)) => Ok(a.iter().map(of_json).collect()),
        V::Refs(r) => Ok(r.iter().map(|v| of_json(v)).collect()),
        _ => Err(GiveUp),
    }
}

/// What a comprehension iterates, without collecting it: list elements, or
/// map keys.
enum Range<'a> {
    Json(std::slice::Iter<'a, Value>),
    Refs(std::slice::Iter<'a, &'a Value>),
    List(std::vec::IntoIter<V<'a>>),
    Keys(serde_json::map::Keys<'a>),
}

impl<'a> Range<'a> {
    fn of(v: V<'a>) -> Result<Range<'a>, GiveUp> {
        Ok(match v {
            V::Json(Value::Array(a)) => Range::Json(a.iter()),
            V::Json(Value::Object(m)) => Range::Keys(m.keys()),
            V::Refs(r) => Range::Refs(r.iter()),
            V::List(l) => Range::List(l.into_iter()),
            _ => return Err(GiveUp),
        })
    }
}

impl<'a> Iterator for Range<'a> {
    type Item = V<'a>;

    fn next(&mut self) -> Option<V<'a>> {
        match self {
            Range::Json(i) => i.next().map(of_json),
            Range::Refs(i) => i.next().map(|v| of_json(v)),
            Range::List(i) => i.next(),
            Range::Keys(i) => i.next().map(|k| V::Str(Cow::Borrowed(k))),
        }
    }
}

/// Order (or, with `equality`, equality) of two scalars of the same type;
/// anything else gives up, including the mixed-type comparisons CEL defines.
fn compare(a: &V<'_>, b: &V<'_>, equality: bool) -> Result<std::cmp::Ordering, GiveUp> {
    match (a, b) {
        (V::Bool(a), V::Bool(b)) => Ok(a.cmp(b)),
        (V::Int(a), V::Int(b)) => Ok(a.cmp(b)),
        (V::UInt(a), V::UInt(b)) => Ok(a.cmp(b)),
        (V::Double(a), V::Double(b)) => a.partial_cmp(b).ok_or(GiveUp),
        (V::Str(a), V::Str(b)) => Ok(a.as_ref().cmp(b.as_ref())),
        (V::Null, V::Null) if equality => Ok(std::cmp::Ordering::Equal),
        _ => Err(GiveUp),
    }
}

#[cfg(test)]
mod tests {
    use cel::common::types::CelBool;
    use cel::objects::Value as CelValue;
    use cel::Context;
    use serde_json::json;

    use super::*;
    use crate::env::policy_env;
    use crate::json_val::json_val;

    /// Whatever the fast path answers, the cel crate answers too.
    #[test]
    fn agrees_with_the_cel_crate_on_every_construct() {
        let object = json!({
            "kind": "Pod", "n": 3, "u": u64::MAX, "f": 1.5, "nil": null, "t": true,
            "s": "héllo", "a": "a:b/c:d",
            "labels": {"app": "x", "tier": "web"},
            "list": [{"name": "a", "v": 1}, {"name": "b", "v": 2}],
            "strs": ["x", "y"], "empty": {}
        });
        let params = json!({"allowed": ["x", "z"]});
        let containers_json = [json!({"name": "c", "image": "i:1"})];
        let containers: Vec<&Value> = containers_json.iter().collect();
        let vars = json!({"podSpec": null});
        let cel_env = policy_env();
        let mut ctx = Context::with_env(cel_env.clone());
        ctx.add_variable_as_val("object", json_val(&object));
        ctx.add_variable_as_val("params", json_val(&params));
        let mut decided = 0;
        for src in [
            "object.n == 3",
            "object.n != 3",
            "object.n < 4 && object.n >= 3",
            "object.u == 18446744073709551615u",
            "object.n == 3u",
            "object.f > 1.0",
            "object.nil == null",
            "object.nil < null",
            "object.t",
            "!object.t",
            "-object.n == -3",
            "object.s.size() == 5",
            "size(object.s) == 5",
            "object.s.lastIndexOf('l') == 3",
            "object.a.lastIndexOf(':') == 5",
            "object.a.indexOf('/') == 3",
            "object.a.indexOf('q') == -1",
            "object.a.startsWith('a:') && object.a.endsWith(':d') && object.a.contains('/')",
            "'app' in object.labels",
            "'db' in object.labels",
            "'x' in object.strs",
            "1 in object.strs",
            "'x' in params.allowed",
            "object.labels.app == 'x'",
            "object.labels['tier'] == 'web'",
            "object.list[1].name == 'b'",
            "object.list[5].name == 'b'",
            "object.missing == 1",
            "has(object.missing)",
            "has(object.labels.app)",
            "object.?missing.?x.orValue(1) == 1",
            "object.?labels.?app.orValue('') == 'x'",
            "object.?labels.app.orValue('') == 'x'",
            "has(object.?labels.app)",
            "object.?labels.?app.hasValue()",
            "object.?missing.hasValue()",
            "object.list.all(e, e.v > 0)",
            "object.list.exists(e, e.v > 1)",
            "object.list.exists_one(e, e.v > 1)",
            "object.list.map(e, e.v).size() == 2",
            "object.list.filter(e, e.v > 1).size() == 1",
            "object.labels.all(k, k.size() > 2)",
            "object.list.all(e, e.missing)",
            "object.list.exists(e, e.v == 'x')",
            "variables.containers.all(c, c.image.contains(':'))",
            "variables.podSpec == null",
            "object.n > 2 ? object.t : object.missing",
            "object.n + 1 == 4",
            "object.s + '!' == 'héllo!'",
            "object.strs + ['z'] == ['x', 'y', 'z']",
            "(object.strs + ['z']).size() == 3",
            "[1, 2].all(x, x in [1, 2, 3])",
            "object.strs.all(x, x in params.allowed)",
            "object.empty.size() == 0",
            "oldObject == null",
            "object.t == true || object.missing",
            "object.missing || object.t",
            "false && object.missing",
            "object.missing && false",
        ] {
            let program = cel_env.compile(src).unwrap();
            let Some(node) = compile(program.expression()) else {
                continue;
            };
            let mut scope = ctx.new_inner_scope();
            scope.add_variable_as_val("oldObject", Box::new(cel::common::types::CelNull));
            let list: Vec<Box<dyn cel::common::value::Val>> =
                containers.iter().map(|c| json_val(c)).collect();
            let mut vm = std::collections::HashMap::new();
            vm.insert(
                cel::common::types::CelMapKey::from("containers".to_string()),
                Box::new(cel::common::types::CelList::from(list))
                    as Box<dyn cel::common::value::Val>,
            );
            vm.insert(
                cel::common::types::CelMapKey::from("podSpec".to_string()),
                json_val(&vars["podSpec"]),
            );
            scope.add_variable_as_val("variables", Box::new(cel::common::types::CelMap::from(vm)));
            let slow = CelValue::resolve_val(program.expression(), &scope)
                .ok()
                .and_then(|v| v.downcast_ref::<CelBool>().map(|b| *b.inner()));
            let env = Env {
                object: &object,
                params: &params,
                pod_spec: None,
                containers: &containers,
                scratch: Default::default(),
            };
            if let Some(fast) = eval_bool(&node, &env, &[]) {
                decided += 1;
                assert_eq!(Some(fast), slow, "{src}");
            }
        }
        assert!(
            decided > 40,
            "the fast path decided only {decided} expressions"
        );
    }
}
