//! A small JSON reader for cargo's `--message-format=json` lines.
//!
//! xtask deliberately depends on nothing but `anyhow` and `clap` (it must build before
//! `cargo xtask setup` has run), so instead of serde_json this reads the few fields vm-test
//! needs from cargo's messages: strings, booleans, arrays and objects. Numbers are kept as
//! their text. It accepts exactly RFC 8259 JSON, one value per call.

use anyhow::{bail, Context as _, Result};

/// A parsed JSON value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    /// The number's text, unparsed (cargo's numbers are not needed here).
    Number(String),
    String(String),
    Array(Vec<Value>),
    /// Members in document order.
    Object(Vec<(String, Value)>),
}

impl Value {
    /// The member `key` of an object; `None` for a missing key or a non-object.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }
}

/// Parses one JSON document (surrounding whitespace allowed).
pub fn parse(text: &str) -> Result<Value> {
    let mut parser = Parser {
        bytes: text.as_bytes(),
        pos: 0,
    };
    let value = parser.value(0)?;
    parser.skip_whitespace();
    if parser.pos != parser.bytes.len() {
        bail!(
            "unexpected text after the JSON value at byte {}",
            parser.pos
        );
    }
    Ok(value)
}

/// Deeper nesting than this is refused rather than risking the stack.
const MAX_DEPTH: usize = 128;

struct Parser<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn value(&mut self, depth: usize) -> Result<Value> {
        if depth > MAX_DEPTH {
            bail!("JSON nested deeper than {MAX_DEPTH} levels");
        }
        self.skip_whitespace();
        match self.peek() {
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => Ok(Value::String(self.string()?)),
            Some(b't') => self.literal("true", Value::Bool(true)),
            Some(b'f') => self.literal("false", Value::Bool(false)),
            Some(b'n') => self.literal("null", Value::Null),
            Some(b'-' | b'0'..=b'9') => Ok(self.number()),
            Some(other) => bail!("unexpected `{}` at byte {}", other as char, self.pos),
            None => bail!("unexpected end of JSON"),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value> {
        self.pos += 1; // '{'
        let mut members = Vec::new();
        self.skip_whitespace();
        if self.eat(b'}') {
            return Ok(Value::Object(members));
        }
        loop {
            self.skip_whitespace();
            if self.peek() != Some(b'"') {
                bail!("expected an object key at byte {}", self.pos);
            }
            let key = self.string()?;
            self.skip_whitespace();
            if !self.eat(b':') {
                bail!("expected `:` at byte {}", self.pos);
            }
            let value = self.value(depth + 1)?;
            members.push((key, value));
            self.skip_whitespace();
            if self.eat(b',') {
                continue;
            }
            if self.eat(b'}') {
                return Ok(Value::Object(members));
            }
            bail!("expected `,` or `}}` at byte {}", self.pos);
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value> {
        self.pos += 1; // '['
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.eat(b']') {
            return Ok(Value::Array(items));
        }
        loop {
            items.push(self.value(depth + 1)?);
            self.skip_whitespace();
            if self.eat(b',') {
                continue;
            }
            if self.eat(b']') {
                return Ok(Value::Array(items));
            }
            bail!("expected `,` or `]` at byte {}", self.pos);
        }
    }

    fn string(&mut self) -> Result<String> {
        self.pos += 1; // '"'
        let mut out = String::new();
        loop {
            let start = self.pos;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            out.push_str(
                std::str::from_utf8(&self.bytes[start..self.pos])
                    .context("JSON string is not UTF-8")?,
            );
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    self.escape(&mut out)?;
                }
                Some(_) => bail!("control character in a JSON string at byte {}", self.pos),
                None => bail!("unterminated JSON string"),
            }
        }
    }

    fn escape(&mut self, out: &mut String) -> Result<()> {
        let Some(b) = self.peek() else {
            bail!("unterminated escape in a JSON string");
        };
        self.pos += 1;
        match b {
            b'"' => out.push('"'),
            b'\\' => out.push('\\'),
            b'/' => out.push('/'),
            b'b' => out.push('\u{8}'),
            b'f' => out.push('\u{c}'),
            b'n' => out.push('\n'),
            b'r' => out.push('\r'),
            b't' => out.push('\t'),
            b'u' => {
                let first = self.hex4()?;
                let code = if (0xD800..0xDC00).contains(&first) {
                    // A high surrogate must be followed by `\u` and a low surrogate.
                    if !(self.eat(b'\\') && self.eat(b'u')) {
                        bail!("lone surrogate in a JSON string at byte {}", self.pos);
                    }
                    let second = self.hex4()?;
                    if !(0xDC00..0xE000).contains(&second) {
                        bail!(
                            "invalid surrogate pair in a JSON string at byte {}",
                            self.pos
                        );
                    }
                    0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
                } else {
                    first
                };
                out.push(
                    char::from_u32(code)
                        .with_context(|| format!("invalid \\u escape at byte {}", self.pos))?,
                );
            }
            other => bail!("invalid escape `\\{}` at byte {}", other as char, self.pos),
        }
        Ok(())
    }

    fn hex4(&mut self) -> Result<u32> {
        let digits = self
            .bytes
            .get(self.pos..self.pos + 4)
            .context("short \\u escape in a JSON string")?;
        let text = std::str::from_utf8(digits).context("\\u escape is not ASCII")?;
        let code = u32::from_str_radix(text, 16)
            .with_context(|| format!("invalid \\u escape `{text}` at byte {}", self.pos))?;
        self.pos += 4;
        Ok(code)
    }

    fn number(&mut self) -> Value {
        let start = self.pos;
        while let Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        Value::Number(String::from_utf8_lossy(&self.bytes[start..self.pos]).into_owned())
    }

    fn literal(&mut self, word: &str, value: Value) -> Result<Value> {
        if self.bytes[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(value)
        } else {
            bail!("invalid literal at byte {}", self.pos)
        }
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        if self.peek() == Some(byte) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_cargo_artifact_message() {
        let line = r#"{"reason":"compiler-artifact","package_id":"path+file:///w/a#0.1.0","manifest_path":"/w/a/Cargo.toml","target":{"kind":["test"],"crate_types":["bin"],"name":"behaviour","src_path":"/w/tests/behaviour.rs","edition":"2021","doctest":false,"test":true},"profile":{"opt_level":"0","debuginfo":2,"debug_assertions":true,"overflow_checks":true,"test":true},"features":[],"filenames":["/w/target/debug/deps/behaviour-1"],"executable":"/w/target/debug/deps/behaviour-1","fresh":true}"#;
        let v = parse(line).unwrap();
        assert_eq!(
            v.get("reason").and_then(Value::as_str),
            Some("compiler-artifact")
        );
        assert_eq!(
            v.get("profile")
                .and_then(|p| p.get("test"))
                .and_then(Value::as_bool),
            Some(true)
        );
        let kinds = v
            .get("target")
            .and_then(|t| t.get("kind"))
            .and_then(Value::as_array);
        assert_eq!(kinds, Some(&[Value::String("test".into())][..]));
        assert_eq!(
            v.get("profile").and_then(|p| p.get("debuginfo")),
            Some(&Value::Number("2".into()))
        );
        assert_eq!(v.get("missing"), None);
    }

    #[test]
    fn decodes_escapes_and_nulls() {
        let v = parse(r#" {"a": "x\"y\\z\n\u00e9\ud83d\ude00", "b": null, "c": [], "d": {}} "#)
            .unwrap();
        assert_eq!(v.get("a").and_then(Value::as_str), Some("x\"y\\z\né😀"));
        assert_eq!(v.get("b"), Some(&Value::Null));
        assert_eq!(v.get("c").and_then(Value::as_array), Some(&[][..]));
        assert_eq!(v.get("d"), Some(&Value::Object(vec![])));
    }

    #[test]
    fn refuses_malformed_input() {
        for bad in [
            "",
            "{",
            r#"{"a" 1}"#,
            r#"{"a":1,}"#,
            "[1 2]",
            r#""abc"#,
            r#""\x""#,
            r#""\ud800""#,
            "tru",
            "{} x",
        ] {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
        let deep = "[".repeat(MAX_DEPTH + 2) + &"]".repeat(MAX_DEPTH + 2);
        assert!(parse(&deep).is_err());
    }
}
