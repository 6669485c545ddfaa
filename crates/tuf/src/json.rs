//! A small JSON parser that records a flat, pre-order list of nodes over
//! the source bytes (no allocation per value), plus canonical JSON output
//! straight from that list.
//!
//! Why: a targets file with 10,000 entries is ~5 MB; building a
//! `serde_json::Value` tree for it, canonicalising it, reading typed fields
//! out of it and freeing it cost ~130 ms, most of it allocation. Here a
//! metadata file is one `Vec<Node>`; strings are borrowed from the input
//! unless they contain escapes; targets are looked up lazily.
//!
//! Semantics follow Python's `json` module (python-tuf) where JSON leaves
//! room: duplicate object keys → the last one wins; integers are exact;
//! canonical output refuses floats. Unlike Python, lone UTF-16 surrogates
//! are refused (they have no UTF-8 encoding, so no canonical form).

use std::borrow::Cow;
use std::cmp::Ordering;

/// Nesting deeper than this is refused (fuzzed input must not overflow
/// the stack).
const MAX_DEPTH: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Null,
    True,
    False,
    Int,
    Float,
    /// A string without escapes: `start..end` is its value.
    Str,
    /// A string with escapes: `start..end` is its raw text.
    StrEsc,
    Array,
    Object,
}

/// One value. `start..end` is its text (for strings: between the quotes);
/// `next` is the index of the node after its subtree; `len` counts array
/// items or object members.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Node {
    kind: Kind,
    start: u32,
    end: u32,
    next: u32,
    len: u32,
}

/// Parse `src` (a whole document) into nodes; node 0 is the root value.
pub(crate) fn parse(src: &[u8]) -> Result<Vec<Node>, String> {
    if src.len() >= u32::MAX as usize {
        return Err("document too large".into());
    }
    std::str::from_utf8(src).map_err(|e| format!("not UTF-8: {e}"))?;
    let mut p = Parser {
        src,
        pos: 0,
        nodes: Vec::with_capacity(src.len() / 12 + 4),
    };
    p.ws();
    p.value(0)?;
    p.ws();
    if p.pos != src.len() {
        return Err(format!("trailing characters at byte {}", p.pos));
    }
    Ok(p.nodes)
}

struct Parser<'a> {
    src: &'a [u8],
    pos: usize,
    nodes: Vec<Node>,
}

impl Parser<'_> {
    fn err<T>(&self, what: &str) -> Result<T, String> {
        Err(format!("{what} at byte {}", self.pos))
    }

    fn peek(&self) -> Option<u8> {
        self.src.get(self.pos).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn push(&mut self, kind: Kind, start: usize, end: usize) -> usize {
        let idx = self.nodes.len();
        self.nodes.push(Node {
            kind,
            start: start as u32,
            end: end as u32,
            next: idx as u32 + 1,
            len: 0,
        });
        idx
    }

    fn value(&mut self, depth: usize) -> Result<(), String> {
        match self.peek() {
            Some(b'{') => self.container(depth, true),
            Some(b'[') => self.container(depth, false),
            Some(b'"') => self.string(),
            Some(b't') => self.literal(b"true", Kind::True),
            Some(b'f') => self.literal(b"false", Kind::False),
            Some(b'n') => self.literal(b"null", Kind::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => self.err("unexpected character"),
            None => self.err("unexpected end"),
        }
    }

    fn literal(&mut self, text: &[u8], kind: Kind) -> Result<(), String> {
        if self.src[self.pos..].starts_with(text) {
            self.push(kind, self.pos, self.pos + text.len());
            self.pos += text.len();
            Ok(())
        } else {
            self.err("invalid literal")
        }
    }

    fn number(&mut self) -> Result<(), String> {
        let start = self.pos;
        let s = self.src;
        let mut i = self.pos;
        if s.get(i) == Some(&b'-') {
            i += 1;
        }
        match s.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => {
                while let Some(b'0'..=b'9') = s.get(i) {
                    i += 1;
                }
            }
            _ => {
                self.pos = i;
                return self.err("invalid number");
            }
        }
        let mut float = false;
        if s.get(i) == Some(&b'.') {
            float = true;
            i += 1;
            if !matches!(s.get(i), Some(b'0'..=b'9')) {
                self.pos = i;
                return self.err("invalid number");
            }
            while let Some(b'0'..=b'9') = s.get(i) {
                i += 1;
            }
        }
        if let Some(b'e' | b'E') = s.get(i) {
            float = true;
            i += 1;
            if let Some(b'+' | b'-') = s.get(i) {
                i += 1;
            }
            if !matches!(s.get(i), Some(b'0'..=b'9')) {
                self.pos = i;
                return self.err("invalid number");
            }
            while let Some(b'0'..=b'9') = s.get(i) {
                i += 1;
            }
        }
        self.push(if float { Kind::Float } else { Kind::Int }, start, i);
        self.pos = i;
        Ok(())
    }

    fn string(&mut self) -> Result<(), String> {
        let start = self.pos + 1;
        let s = self.src;
        let mut i = start;
        let mut escaped = false;
        loop {
            i = skip_plain(s, i);
            match s.get(i) {
                None => {
                    self.pos = i;
                    return self.err("unterminated string");
                }
                Some(b'"') => break,
                Some(b'\\') => {
                    escaped = true;
                    match s.get(i + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                        Some(b'u') => {
                            if s.len() < i + 6 || !s[i + 2..i + 6].iter().all(u8::is_ascii_hexdigit)
                            {
                                self.pos = i;
                                return self.err("invalid \\u escape");
                            }
                            i += 6;
                        }
                        _ => {
                            self.pos = i;
                            return self.err("invalid escape");
                        }
                    }
                }
                Some(c) if *c < 0x20 => {
                    self.pos = i;
                    return self.err("control character in string");
                }
                Some(_) => i += 1,
            }
        }
        if escaped && decode_escaped(&s[start..i]).is_none() {
            self.pos = start;
            return self.err("string with an unpaired surrogate");
        }
        self.push(if escaped { Kind::StrEsc } else { Kind::Str }, start, i);
        self.pos = i + 1;
        Ok(())
    }

    fn container(&mut self, depth: usize, object: bool) -> Result<(), String> {
        if depth >= MAX_DEPTH {
            return self.err("nesting too deep");
        }
        let idx = self.push(
            if object { Kind::Object } else { Kind::Array },
            self.pos,
            self.pos,
        );
        let close = if object { b'}' } else { b']' };
        self.pos += 1;
        self.ws();
        let mut len = 0u32;
        if self.peek() == Some(close) {
            self.pos += 1;
        } else {
            loop {
                self.ws();
                if object {
                    if self.peek() != Some(b'"') {
                        return self.err("expected a string key");
                    }
                    self.string()?;
                    self.ws();
                    if self.peek() != Some(b':') {
                        return self.err("expected ':'");
                    }
                    self.pos += 1;
                    self.ws();
                }
                self.value(depth + 1)?;
                len += 1;
                self.ws();
                match self.peek() {
                    Some(b',') => self.pos += 1,
                    Some(c) if c == close => {
                        self.pos += 1;
                        break;
                    }
                    _ => return self.err("expected ',' or a closing bracket"),
                }
            }
        }
        let next = self.nodes.len() as u32;
        let n = &mut self.nodes[idx];
        n.end = self.pos as u32;
        n.len = len;
        n.next = next;
        Ok(())
    }
}

/// Index of the first byte at or after `i` that is `"`, `\\` or a control
/// character (or `s.len()`), eight bytes at a time: strings are most of a
/// targets file (hashes, paths).
fn skip_plain(s: &[u8], mut i: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    while let Some(chunk) = s.get(i..i + 8) {
        let x = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        let special = has_zero(x ^ (ONES * b'"' as u64))
            | has_zero(x ^ (ONES * b'\\' as u64))
            // bytes < 0x20 (ASCII only: bytes >= 0x80 never set this)
            | (x.wrapping_sub(ONES * 0x20) & !x & HIGHS);
        if special != 0 {
            break;
        }
        i += 8;
    }
    i
}

/// Decode the raw text of a string with escapes; `None` on an unpaired
/// surrogate. The text was validated by the parser otherwise.
fn decode_escaped(raw: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    let text = std::str::from_utf8(raw).ok()?;
    let mut chars = text.char_indices();
    let hex4 = |at: usize| u32::from_str_radix(&text[at..at + 4], 16).ok();
    while let Some((i, c)) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let (_, e) = chars.next()?;
        match e {
            '"' => out.push('"'),
            '\\' => out.push('\\'),
            '/' => out.push('/'),
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'u' => {
                let hi = hex4(i + 2)?;
                for _ in 0..4 {
                    chars.next();
                }
                let code = if (0xD800..0xDC00).contains(&hi) {
                    // A high surrogate must be followed by \uDC00-\uDFFF.
                    if text.get(i + 6..i + 8) != Some("\\u") {
                        return None;
                    }
                    let lo = hex4(i + 8)?;
                    if !(0xDC00..0xE000).contains(&lo) {
                        return None;
                    }
                    for _ in 0..6 {
                        chars.next();
                    }
                    0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                } else if (0xDC00..0xE000).contains(&hi) {
                    return None;
                } else {
                    hi
                };
                out.push(char::from_u32(code)?);
            }
            _ => return None,
        }
    }
    Some(out)
}

/// A value inside a parsed document.
#[derive(Clone, Copy)]
pub(crate) struct Val<'a> {
    src: &'a [u8],
    nodes: &'a [Node],
    i: usize,
}

impl<'a> Val<'a> {
    /// The root value of `nodes` parsed from `src`.
    pub(crate) fn root(src: &'a [u8], nodes: &'a [Node]) -> Val<'a> {
        Val { src, nodes, i: 0 }
    }

    pub(crate) fn at(src: &'a [u8], nodes: &'a [Node], i: usize) -> Val<'a> {
        Val { src, nodes, i }
    }

    pub(crate) fn index(&self) -> usize {
        self.i
    }

    fn node(&self) -> &'a Node {
        &self.nodes[self.i]
    }

    pub(crate) fn kind(&self) -> Kind {
        self.node().kind
    }

    fn text(&self) -> &'a [u8] {
        let n = self.node();
        &self.src[n.start as usize..n.end as usize]
    }

    /// The value's source text (strings include their quotes).
    pub(crate) fn raw(&self) -> &'a [u8] {
        let n = self.node();
        match n.kind {
            Kind::Str | Kind::StrEsc => &self.src[n.start as usize - 1..n.end as usize + 1],
            _ => self.text(),
        }
    }

    pub(crate) fn as_str(&self) -> Option<Cow<'a, str>> {
        match self.kind() {
            // Validated as UTF-8 by `parse`.
            Kind::Str => std::str::from_utf8(self.text()).ok().map(Cow::Borrowed),
            Kind::StrEsc => decode_escaped(self.text()).map(Cow::Owned),
            _ => None,
        }
    }

    /// Whether this is a string equal to `s`.
    pub(crate) fn str_eq(&self, s: &str) -> bool {
        match self.kind() {
            Kind::Str => self.text() == s.as_bytes(),
            Kind::StrEsc => self.as_str().is_some_and(|v| v == s),
            _ => false,
        }
    }

    pub(crate) fn as_u64(&self) -> Option<u64> {
        (self.kind() == Kind::Int)
            .then(|| std::str::from_utf8(self.text()).ok()?.parse().ok())
            .flatten()
    }

    pub(crate) fn as_bool(&self) -> Option<bool> {
        match self.kind() {
            Kind::True => Some(true),
            Kind::False => Some(false),
            _ => None,
        }
    }

    pub(crate) fn is_null(&self) -> bool {
        self.kind() == Kind::Null
    }

    pub(crate) fn is_object(&self) -> bool {
        self.kind() == Kind::Object
    }

    pub(crate) fn is_array(&self) -> bool {
        self.kind() == Kind::Array
    }

    pub(crate) fn len(&self) -> usize {
        self.node().len as usize
    }

    /// Array items, in order.
    pub(crate) fn items(&self) -> impl Iterator<Item = Val<'a>> + 'a {
        let (src, nodes) = (self.src, self.nodes);
        let count = if self.is_array() { self.len() } else { 0 };
        let mut i = self.i + 1;
        (0..count).map(move |_| {
            let v = Val { src, nodes, i };
            i = nodes[i].next as usize;
            v
        })
    }

    /// Object members in source order (duplicates included).
    pub(crate) fn members(&self) -> impl Iterator<Item = (Val<'a>, Val<'a>)> + 'a {
        let (src, nodes) = (self.src, self.nodes);
        let count = if self.is_object() { self.len() } else { 0 };
        let mut i = self.i + 1;
        (0..count).map(move |_| {
            let k = Val { src, nodes, i };
            let v = Val {
                src,
                nodes,
                i: i + 1,
            };
            i = nodes[i + 1].next as usize;
            (k, v)
        })
    }

    /// The member `key` (the last one, if repeated).
    pub(crate) fn get(&self, key: &str) -> Option<Val<'a>> {
        self.members()
            .filter(|(k, _)| k.str_eq(key))
            .map(|(_, v)| v)
            .last()
    }

    /// Members sorted by key, one per key (the last wins, as in Python).
    pub(crate) fn unique_members(&self) -> Vec<(Cow<'a, str>, Val<'a>)> {
        let mut all: Vec<(Cow<'a, str>, usize, Val<'a>)> = self
            .members()
            .enumerate()
            .map(|(n, (k, v))| (k.as_str().unwrap_or_default(), n, v))
            .collect();
        all.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()).then(a.1.cmp(&b.1)));
        let mut out: Vec<(Cow<'a, str>, Val<'a>)> = Vec::with_capacity(all.len());
        for (k, _, v) in all {
            match out.last_mut() {
                Some(last) if last.0 == k => last.1 = v,
                _ => out.push((k, v)),
            }
        }
        out
    }

    /// Canonical JSON of this value.
    pub(crate) fn write_canonical(&self, out: &mut Vec<u8>) -> Result<(), &'static str> {
        match self.kind() {
            Kind::Null => out.extend_from_slice(b"null"),
            Kind::True => out.extend_from_slice(b"true"),
            Kind::False => out.extend_from_slice(b"false"),
            Kind::Int => {
                let t = self.text();
                out.extend_from_slice(if t == b"-0" { b"0" } else { t });
            }
            Kind::Float => return Err("floating-point numbers"),
            Kind::Str => {
                out.push(b'"');
                out.extend_from_slice(self.text());
                out.push(b'"');
            }
            Kind::StrEsc => write_escaped(&self.as_str().unwrap_or_default(), out),
            Kind::Array => {
                out.push(b'[');
                for (n, item) in self.items().enumerate() {
                    if n > 0 {
                        out.push(b',');
                    }
                    item.write_canonical(out)?;
                }
                out.push(b']');
            }
            Kind::Object => {
                out.push(b'{');
                if self.members_sorted_unique() {
                    for (n, (k, v)) in self.members().enumerate() {
                        if n > 0 {
                            out.push(b',');
                        }
                        k.write_canonical(out)?;
                        out.push(b':');
                        v.write_canonical(out)?;
                    }
                } else {
                    for (n, (k, v)) in self.unique_members().into_iter().enumerate() {
                        if n > 0 {
                            out.push(b',');
                        }
                        write_escaped(&k, out);
                        out.push(b':');
                        v.write_canonical(out)?;
                    }
                }
                out.push(b'}');
            }
        }
        Ok(())
    }

    /// Fast path: keys already strictly increasing without escapes (what
    /// python-tuf and this crate write), so no sorting is needed.
    fn members_sorted_unique(&self) -> bool {
        let mut prev: Option<&[u8]> = None;
        for (k, _) in self.members() {
            if k.kind() != Kind::Str {
                return false;
            }
            let t = k.text();
            if let Some(p) = prev {
                if p.cmp(t) != Ordering::Less {
                    return false;
                }
            }
            prev = Some(t);
        }
        true
    }

    /// This value as a `serde_json::Value` (for `custom` and tools).
    pub(crate) fn to_value(self) -> serde_json::Value {
        serde_json::from_slice(self.raw()).unwrap_or(serde_json::Value::Null)
    }
}

fn write_escaped(s: &str, out: &mut Vec<u8>) {
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

    fn canon(s: &str) -> Result<String, String> {
        let nodes = parse(s.as_bytes())?;
        let mut out = Vec::new();
        Val::root(s.as_bytes(), &nodes)
            .write_canonical(&mut out)
            .map_err(str::to_string)?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn canonical_matches_the_value_based_encoder() {
        for doc in [
            r#"{"b": [1, -2, {"z": null, "a": true}], "a": "x", "c": false}"#,
            r#"{"k": "a\"b\\c\nd\u00e9\ud83d\ude00 \/"}"#,
            r#"{"\u00e9": 1, "z": 2, "Z": 3, "a\u0000": 4}"#,
            r#"[]"#,
            r#"{}"#,
            r#""s""#,
            r#"{"big": 123456789012345678901234567890}"#,
        ] {
            let ours = canon(doc).unwrap();
            if doc.contains("big") {
                assert_eq!(ours, r#"{"big":123456789012345678901234567890}"#);
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(doc).unwrap();
            let theirs = crate::canonical::to_canonical_vec(&v).unwrap();
            assert_eq!(ours.as_bytes(), theirs, "{doc}");
        }
    }

    #[test]
    fn duplicate_keys_last_wins() {
        assert_eq!(
            canon(r#"{"a": 1, "b": 2, "a": 3}"#).unwrap(),
            r#"{"a":3,"b":2}"#
        );
        let src = br#"{"a": 1, "a": 2}"#;
        let nodes = parse(src).unwrap();
        assert_eq!(Val::root(src, &nodes).get("a").unwrap().as_u64(), Some(2));
    }

    #[test]
    fn refuses_bad_input() {
        for bad in [
            "",
            "{",
            "[1,]",
            "{\"a\" 1}",
            "01",
            "1.",
            "-",
            "\"\\x\"",
            "\"\u{1}\"",
            "tru",
            "\"\\ud800\"",
            "\"\\udc00\\ud800\"",
            "{} x",
            "[1 2]",
            "\"\\u12\"",
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert_eq!(canon("-0").unwrap(), "0");
        assert!(canon("1.5").is_err());
        assert!(canon("1e3").is_err());
        for k in 0..20 {
            let pad = "é".repeat(k) + &"a".repeat(k);
            assert!(
                parse(format!("\"{pad}\u{1}{pad}\"").as_bytes()).is_err(),
                "{k}"
            );
            assert!(
                parse(format!("\"{pad}\"{pad}\"").as_bytes()).is_err(),
                "{k}"
            );
            assert_eq!(
                canon(&format!("\"{pad}\\n{pad}\"")).unwrap(),
                format!("\"{pad}\n{pad}\"")
            );
            assert_eq!(
                canon(&format!("\"{pad}\\\"{pad}\"")).unwrap(),
                format!("\"{pad}\\\"{pad}\"")
            );
        }
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(parse(deep.as_bytes()).is_err());
        assert!(parse(b"\"\xff\"").is_err());
    }
}
