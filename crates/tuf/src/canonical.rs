//! OLPC canonical JSON, the encoding TUF signatures are computed over.
//!
//! Same output as securesystemslib's `encode_canonical` (python-tuf) and
//! olpc-cjson (tough): object keys sorted by code point, no insignificant
//! whitespace, strings escaped only for `"` and `\`, everything else (including
//! control characters and non-ASCII) written as raw UTF-8, integers only.
//!
//! Why not olpc-cjson: it is a `serde_json::Formatter` that buffers and sorts
//! every object while serialising. Our input is already a
//! [`serde_json::Value`] whose maps are `BTreeMap`s (sorted by byte order,
//! which equals code-point order for UTF-8), so a 60-line writer does the same
//! work without the re-sorting, and it refuses floats explicitly.

use serde_json::Value;

/// Why a value has no canonical form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("canonical JSON has no encoding for {0}")]
pub struct CanonicalError(pub &'static str);

/// Encode `value` as canonical JSON.
pub fn to_canonical_vec(value: &Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::with_capacity(4096);
    write_value(value, &mut out)?;
    Ok(out)
}

fn write_value(value: &Value, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            if let Some(i) = n.as_u64() {
                out.extend_from_slice(i.to_string().as_bytes());
            } else if let Some(i) = n.as_i64() {
                out.extend_from_slice(i.to_string().as_bytes());
            } else {
                return Err(CanonicalError("floating-point numbers"));
            }
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            // serde_json's Map is a BTreeMap<String, _> (no preserve_order):
            // iteration is already in canonical key order.
            out.push(b'{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(k, out);
                out.push(b':');
                write_value(v, out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for &b in s.as_bytes() {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sorts_keys_and_strips_whitespace() {
        let v: Value =
            serde_json::from_str(r#"{ "b": [1, 2, {"z": null, "a": true}], "a": "x" }"#).unwrap();
        assert_eq!(
            to_canonical_vec(&v).unwrap(),
            br#"{"a":"x","b":[1,2,{"a":true,"z":null}]}"#
        );
    }

    #[test]
    fn escapes_only_quote_and_backslash() {
        let v = json!({"k": "a\"b\\c\nd\u{e9}"});
        assert_eq!(
            to_canonical_vec(&v).unwrap(),
            "{\"k\":\"a\\\"b\\\\c\nd\u{e9}\"}".as_bytes()
        );
    }

    #[test]
    fn code_point_order_for_non_ascii_keys() {
        let v = json!({"\u{e9}": 1, "z": 2, "Z": 3});
        assert_eq!(
            to_canonical_vec(&v).unwrap(),
            "{\"Z\":3,\"z\":2,\"\u{e9}\":1}".as_bytes()
        );
    }

    #[test]
    fn refuses_floats() {
        assert!(to_canonical_vec(&json!({"x": 1.5})).is_err());
        assert_eq!(to_canonical_vec(&json!(-3)).unwrap(), b"-3");
    }
}
