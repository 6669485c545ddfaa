//! YAML in and out. Objects are held as `serde_json::Value` (what the apply
//! side sends to the API server); YAML is only the file format.

use std::path::Path;

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::{Map, Number, Value};

use crate::error::RenderError;

/// Parse every document of a YAML stream. Empty documents (`---` with nothing
/// after it, comments only) are dropped. Duplicate mapping keys are errors.
pub(crate) fn parse_stream(text: &str, path: &Path) -> Result<Vec<Value>, RenderError> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let v = doc
            .deserialize_any(JsonVisitor)
            .map_err(|e| yaml_err(path, &e))?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

/// Builds a `serde_json::Value` straight from YAML events (no intermediate
/// `serde_yaml::Value`): scalar keys become strings, duplicate keys and
/// non-finite numbers are errors, tags are dropped.
struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom(format!("number {v} cannot be represented in JSON")))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut v = Vec::new();
        while let Some(x) = seq.next_element_seed(Seed)? {
            v.push(x);
        }
        Ok(Value::Array(v))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut m = Map::new();
        while let Some(k) = map.next_key_seed(KeySeed)? {
            let v = map.next_value_seed(Seed)?;
            if m.contains_key(&k) {
                return Err(de::Error::custom(format!("duplicate mapping key {k:?}")));
            }
            m.insert(k, v);
        }
        Ok(Value::Object(m))
    }
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        // A tagged value (`!Tag value`): keep the value.
        let (_tag, variant): (String, _) = data.variant()?;
        variant.newtype_variant_seed(Seed)
    }
}

struct Seed;

impl<'de> DeserializeSeed<'de> for Seed {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

/// Mapping keys: any scalar, as a string.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = String;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        match d.deserialize_any(JsonVisitor)? {
            Value::String(s) => Ok(s),
            Value::Null => Ok("null".into()),
            Value::Bool(b) => Ok(b.to_string()),
            Value::Number(n) => Ok(n.to_string()),
            other => Err(de::Error::custom(format!(
                "unsupported mapping key {other}"
            ))),
        }
    }
}

/// Parse a file that must hold at most one document.
pub(crate) fn parse_single(text: &str, path: &Path) -> Result<Value, RenderError> {
    let mut docs = parse_stream(text, path)?;
    match docs.len() {
        0 => Ok(Value::Null),
        1 => Ok(docs.remove(0)),
        n => Err(RenderError::Yaml {
            path: path.to_path_buf(),
            line: None,
            message: format!("expected one YAML document, found {n}"),
        }),
    }
}

fn yaml_err(path: &Path, e: &serde_yaml::Error) -> RenderError {
    RenderError::Yaml {
        path: path.to_path_buf(),
        line: e.location().map(|l| l.line()),
        message: e.to_string(),
    }
}

/// Serializes a value with mapping keys sorted, without copying it, so
/// output bytes never depend on insertion order (or on serde_json's
/// `preserve_order` feature being on somewhere in the build).
struct Sorted<'a>(&'a Value);

impl Serialize for Sorted<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                let mut map = s.serialize_map(Some(keys.len()))?;
                for k in keys {
                    map.serialize_entry(k, &Sorted(&m[k]))?;
                }
                map.end()
            }
            Value::Array(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for x in a {
                    seq.serialize_element(&Sorted(x))?;
                }
                seq.end()
            }
            other => other.serialize(s),
        }
    }
}

/// One YAML document, keys sorted, no leading `---`.
pub(crate) fn to_yaml_doc(v: &Value) -> String {
    // serde_yaml cannot fail on a serde_json::Value (string keys only).
    serde_yaml::to_string(&Sorted(v)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_duplicates() {
        let p = Path::new("x.yaml");
        let v = parse_stream("a: 1\n1: x\ntrue: y\n---\n---\nb: !tag [1]\n", p).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0]["1"], "x");
        assert_eq!(v[0]["true"], "y");
        assert_eq!(v[1]["b"], serde_json::json!([1]));
        let err = parse_stream("a: 1\na: 2\n", p).unwrap_err();
        assert!(err.to_string().contains("duplicate mapping key"), "{err}");
    }

    #[test]
    fn output_is_sorted() {
        let v = serde_json::json!({"b": 1, "a": {"d": 1, "c": 2}});
        assert_eq!(to_yaml_doc(&v), "a:\n  c: 2\n  d: 1\nb: 1\n");
    }
}
