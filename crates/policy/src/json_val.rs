//! Kubernetes objects as CEL values, without copying them.
//!
//! Converting a whole `serde_json::Value` into CEL's own map type costs a few
//! microseconds per object, and CEL's comprehensions (`all`, `exists`, ...)
//! then deep-copy every element they bind. [`JsonMap`] instead borrows the JSON
//! object and converts a field only when an expression reads it; copying it is
//! copying a reference. Scalars become CEL's own types (strings borrowed), so
//! every standard function and operator works on them. Lists become CEL's own
//! list type, with their elements converted the same lazy way.

use std::sync::OnceLock;

use cel::common::traits::{Container, Indexer, Iterable, Iterator as CelIterator, Sizer, Zeroer};
use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelNull, CelString, CelUInt, Kind, Type, MAP_TYPE,
};
use cel::common::value::{CowVal, Val};
use cel::ExecutionError;
use serde_json::{Map, Value};

static MAP: Type = MAP_TYPE;

/// A JSON value as a CEL value borrowing from it.
pub(crate) fn json_val(v: &Value) -> Box<dyn Val + '_> {
    match v {
        Value::Null => Box::new(CelNull),
        Value::Bool(b) => Box::new(CelBool::from(*b)),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Box::new(CelInt::from(i))
            } else if let Some(u) = n.as_u64() {
                Box::new(CelUInt::from(u))
            } else {
                Box::new(CelDouble::from(n.as_f64().unwrap_or(f64::NAN)))
            }
        }
        Value::String(s) => Box::new(CelString::from(s.as_str())),
        Value::Array(a) => Box::new(json_list(a)),
        Value::Object(m) => Box::new(JsonMap::new(m)),
    }
}

/// A JSON array as a CEL list (elements converted lazily, see [`json_val`]).
pub(crate) fn json_list(a: &[Value]) -> CelList<'_> {
    CelList::from(a.iter().map(json_val).collect::<Vec<_>>())
}

/// A JSON object as a CEL `map(string, dyn)`, read on access.
#[derive(Debug)]
pub(crate) struct JsonMap<'a> {
    map: &'a Map<String, Value>,
    /// The keys as CEL strings, built the first time the map is iterated.
    keys: OnceLock<Vec<CelString<'a>>>,
}

impl<'a> JsonMap<'a> {
    pub(crate) fn new(map: &'a Map<String, Value>) -> Self {
        JsonMap {
            map,
            keys: OnceLock::new(),
        }
    }

    fn lookup(&self, key: &dyn Val) -> Result<Option<&'a Value>, ExecutionError> {
        if let Some(s) = key.downcast_ref::<CelString>() {
            return Ok(self.map.get(s.inner()));
        }
        match key.get_type().kind() {
            // Valid map key types that no JSON object key can equal.
            Kind::Int | Kind::UInt | Kind::Double | Kind::Boolean => Ok(None),
            _ => Err(ExecutionError::UnexpectedType {
                got: key.get_type().name().to_owned(),
                want: "map key".to_owned(),
            }),
        }
    }
}

fn key_name(key: &dyn Val) -> String {
    match key.downcast_ref::<CelString>() {
        Some(s) => s.inner().to_string(),
        None => format!("{key:?}"),
    }
}

impl Val for JsonMap<'_> {
    fn get_type(&self) -> &Type {
        &MAP
    }

    fn cel_type() -> &'static Type {
        &MAP
    }

    fn as_container(&self) -> Option<&dyn Container> {
        Some(self)
    }

    fn as_indexer<'b, 'v>(&'b self) -> Option<&'b (dyn Indexer + 'v)>
    where
        Self: 'v,
    {
        Some(self)
    }

    fn as_iterable<'b, 'v>(&'b self) -> Option<&'b (dyn Iterable + 'v)>
    where
        Self: 'v,
    {
        Some(self)
    }

    fn as_sizer(&self) -> Option<&dyn Sizer> {
        Some(self)
    }

    fn as_zeroer(&self) -> Option<&dyn Zeroer> {
        Some(self)
    }

    fn equals(&self, other: &dyn Val) -> bool {
        if other.get_type().kind() != Kind::Map {
            return false;
        }
        let (Some(sizer), Some(indexer)) = (other.as_sizer(), other.as_indexer()) else {
            return false;
        };
        *sizer.size().inner() == self.map.len() as i64
            && self.map.iter().all(|(k, v)| {
                indexer
                    .get(&CelString::from(k.as_str()))
                    .is_ok_and(|o| json_val(v).equals(o.as_ref()))
            })
    }

    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v>
    where
        Self: 'v,
    {
        Box::new(JsonMap::new(self.map))
    }
}

impl Container for JsonMap<'_> {
    fn contains(&self, key: &dyn Val) -> Result<bool, ExecutionError> {
        Ok(self.lookup(key)?.is_some())
    }
}

impl Indexer for JsonMap<'_> {
    fn get<'b, 'v>(&'b self, idx: &dyn Val) -> Result<CowVal<'b, 'v>, ExecutionError>
    where
        Self: 'v,
    {
        match self.lookup(idx)? {
            Some(v) => Ok(CowVal::Owned(json_val(v))),
            None => Err(ExecutionError::no_such_key(&key_name(idx))),
        }
    }

    fn steal<'v>(self: Box<Self>, idx: &dyn Val) -> Result<Box<dyn Val + 'v>, ExecutionError>
    where
        Self: 'v,
    {
        match self.lookup(idx)? {
            Some(v) => Ok(json_val(v)),
            None => Err(ExecutionError::no_such_key(&key_name(idx))),
        }
    }
}

struct Keys<'b, 'a> {
    inner: std::slice::Iter<'b, CelString<'a>>,
}

impl<'b, 'v, 'a: 'v> CelIterator<'b, 'v> for Keys<'b, 'a> {
    fn next(&mut self) -> Option<&'b (dyn Val + 'v)> {
        self.inner.next().map(|k| k as &(dyn Val + 'v))
    }
}

impl<'a> Iterable for JsonMap<'a> {
    fn iter<'b, 'v>(&'b self) -> Box<dyn CelIterator<'b, 'v> + 'b>
    where
        Self: 'v,
    {
        let keys = self.keys.get_or_init(|| {
            self.map
                .keys()
                .map(|k| CelString::from(k.as_str()))
                .collect()
        });
        Box::new(Keys { inner: keys.iter() })
    }
}

impl Sizer for JsonMap<'_> {
    fn size(&self) -> CelInt {
        CelInt::from(self.map.len() as i64)
    }
}

impl Zeroer for JsonMap<'_> {
    fn is_zero_value(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use cel::{Context, Env, Value as CelValue};
    use serde_json::json;

    use super::*;

    fn eval(expr: &str, obj: &Value) -> Result<CelValue, ExecutionError> {
        let env = Arc::new(Env::stdlib().with_optional_support(true));
        let program = env.compile(expr).expect("compiles");
        let mut ctx = Context::with_env(env);
        ctx.add_variable_as_val("o", json_val(obj));
        program.execute(&ctx)
    }

    #[test]
    fn fields_lists_and_macros_work_on_borrowed_json() {
        let o = json!({
            "kind": "Pod", "n": 3, "big": u64::MAX, "f": 1.5, "nil": null, "t": true,
            "labels": {"app": "x", "tier": "web"},
            "list": [{"name": "a", "v": 1}, {"name": "b", "v": 2}],
            "empty": {}
        });
        let ok = |e: &str| assert_eq!(eval(e, &o), Ok(CelValue::Bool(true)), "{e}");
        ok("o.kind == 'Pod'");
        ok("o.n == 3 && o.n > 2");
        ok("o.big == 18446744073709551615u");
        ok("o.f > 1.0");
        ok("o.nil == null");
        ok("o.t");
        ok("has(o.labels) && !has(o.missing)");
        ok("'app' in o.labels && !('db' in o.labels)");
        ok("o.labels['tier'] == 'web'");
        ok("o.labels.size() == 2 && size(o.list) == 2");
        ok("o.labels.all(k, k in ['app', 'tier'])");
        ok("o.labels.exists(k, o.labels[k] == 'web')");
        ok("o.list.all(e, e.v > 0) && o.list.exists(e, e.name == 'b')");
        ok("o.list.map(e, e.name) == ['a', 'b']");
        ok("o.list.filter(e, e.v > 1).size() == 1");
        ok("o.?missing.?deeper.orValue('d') == 'd'");
        ok("o.?labels.?app.orValue('') == 'x'");
        ok("o.labels == {'app': 'x', 'tier': 'web'}");
        ok("o.labels != {'app': 'x'}");
        ok("o.empty == {}");
        ok("o.list[1].name == 'b'");
        assert!(matches!(
            eval("o.missing", &o),
            Err(ExecutionError::NoSuchKey(_))
        ));
    }
}
