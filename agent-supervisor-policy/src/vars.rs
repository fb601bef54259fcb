//! Variable expansion: `{workspace}`, `{home}`, `{tmp}` and the `[vars]` of the merged
//! `extends` chain.
//!
//! `{name}` with `name` an identifier is a variable; any other braces (`{a,b}`) are glob
//! alternation and left alone, and a `\`-escaped character is copied as is. The path
//! variables (`workspace`, `home`, `tmp`) hold paths: when they are expanded into a glob their
//! glob characters are escaped, so a home directory named `a[1]` still matches literally.

use std::collections::BTreeMap;

use crate::paths::{escape, normalize};
use crate::raw::is_identifier;
use crate::source::{Pos, Str};
use crate::{PolicyError, Vars};

/// How an expanded string will be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A literal path or a network spec: values are inserted as they are.
    Literal,
    /// A glob: the values of the path variables are escaped.
    Glob,
}

const PATH_VARS: [&str; 3] = ["workspace", "home", "tmp"];

/// The built-in values and the merged `[vars]`.
pub(crate) struct VarTable {
    builtins: BTreeMap<&'static str, String>,
    custom: BTreeMap<String, Str>,
}

impl VarTable {
    /// `custom` in merge order: later entries (the extending file's) win.
    pub fn new(vars: &Vars, custom: Vec<(Str, Str)>) -> VarTable {
        let builtins = BTreeMap::from([
            ("workspace", vars.workspace.to_string_lossy().into_owned()),
            ("home", vars.home.to_string_lossy().into_owned()),
            ("tmp", vars.tmp.to_string_lossy().into_owned()),
        ]);
        let custom = custom
            .into_iter()
            .map(|(name, value)| (name.value, value))
            .collect();
        VarTable { builtins, custom }
    }

    /// Check every `[vars]` entry (unknown references, cycles, path variables that are not
    /// absolute) and list the variables in effect: the path variables, then the others by name.
    pub fn check(&self) -> Result<Vec<(String, String)>, PolicyError> {
        let mut out = Vec::new();
        for name in PATH_VARS {
            let at = self.custom.get(name).map(|s| s.pos.clone());
            let value = match &at {
                Some(at) => self.value_of(name, at, Mode::Literal, &mut Vec::new())?,
                None => self.builtins[name].clone(),
            };
            out.push((name.to_string(), value));
        }
        for (name, value) in &self.custom {
            if !PATH_VARS.contains(&name.as_str()) {
                out.push((
                    name.clone(),
                    self.value_of(name, &value.pos, Mode::Literal, &mut Vec::new())?,
                ));
            }
        }
        Ok(out)
    }

    /// Expand the variables of `s`.
    pub fn expand(&self, s: &Str, mode: Mode) -> Result<String, PolicyError> {
        self.expand_in(s, mode, &mut Vec::new())
    }

    fn expand_in(
        &self,
        s: &Str,
        mode: Mode,
        stack: &mut Vec<String>,
    ) -> Result<String, PolicyError> {
        let text = s.value.as_str();
        let mut out = String::with_capacity(text.len());
        let mut i = 0;
        while i < text.len() {
            let rest = &text[i..];
            let c = rest.chars().next().unwrap_or('\0');
            if c == '\\' {
                // Keep the escape and the escaped character for globset.
                let len = 1 + rest[1..].chars().next().map_or(0, char::len_utf8);
                out.push_str(&rest[..len]);
                i += len;
                continue;
            }
            if c == '{' {
                if let Some(end) = rest[1..].find(['{', '}']) {
                    let name = &rest[1..1 + end];
                    if rest[1 + end..].starts_with('}') && is_identifier(name) {
                        out.push_str(&self.value_of(name, &s.pos.inside(i), mode, stack)?);
                        i += end + 2;
                        continue;
                    }
                }
            }
            out.push(c);
            i += c.len_utf8();
        }
        Ok(out)
    }

    /// The value of variable `name`, referenced at `at`.
    fn value_of(
        &self,
        name: &str,
        at: &Pos,
        mode: Mode,
        stack: &mut Vec<String>,
    ) -> Result<String, PolicyError> {
        let is_path = PATH_VARS.contains(&name);
        let in_stack = stack.iter().any(|n| n == name);
        let value = match self.custom.get(name) {
            Some(custom) if !in_stack => {
                stack.push(name.to_string());
                let inner_mode = if is_path { Mode::Literal } else { mode };
                let value = self.expand_in(custom, inner_mode, stack);
                stack.pop();
                let value = value?;
                if is_path {
                    if !value.starts_with('/') {
                        return Err(custom
                            .pos
                            .error(format!("`{name}` must be an absolute path, got `{value}`")));
                    }
                    normalize(&value).to_string_lossy().into_owned()
                } else {
                    value
                }
            }
            Some(_) if !is_path => {
                let mut cycle = stack.clone();
                cycle.push(name.to_string());
                return Err(at.error(format!("variable cycle: {}", cycle.join(" -> "))));
            }
            _ => match self.builtins.get(name) {
                Some(value) => value.clone(),
                None => {
                    let mut known: Vec<String> =
                        PATH_VARS.iter().map(|n| format!("{{{n}}}")).collect();
                    known.extend(
                        self.custom
                            .keys()
                            .filter(|k| !PATH_VARS.contains(&k.as_str()))
                            .map(|k| format!("{{{k}}}")),
                    );
                    return Err(at.error(format!(
                        "unknown variable `{{{name}}}`, expected one of {} (set others in [vars])",
                        known.join(", ")
                    )));
                }
            },
        };
        Ok(if is_path && mode == Mode::Glob {
            escape(&value)
        } else {
            value
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Source;
    use std::path::PathBuf;

    fn table(custom: &[(&str, &str)]) -> (VarTable, std::sync::Arc<Source>) {
        let src = Source::new("t", "");
        let vars = Vars {
            workspace: PathBuf::from("/w"),
            home: PathBuf::from("/h[1]"),
            tmp: PathBuf::from("/t"),
        };
        let custom = custom
            .iter()
            .map(|(n, v)| {
                (
                    Str {
                        value: n.to_string(),
                        pos: src.pos(0..0),
                    },
                    Str {
                        value: v.to_string(),
                        pos: src.pos(0..0),
                    },
                )
            })
            .collect();
        (VarTable::new(&vars, custom), src)
    }

    fn expand(
        t: &VarTable,
        src: &std::sync::Arc<Source>,
        s: &str,
        mode: Mode,
    ) -> Result<String, String> {
        t.expand(
            &Str {
                value: s.to_string(),
                pos: src.pos(0..0),
            },
            mode,
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn builtins_custom_and_alternation() {
        let (t, src) = table(&[
            ("cache", "{home}/.cache"),
            ("workspace", "{workspace}/sub/"),
        ]);
        assert_eq!(
            expand(&t, &src, "{cache}/x", Mode::Literal).unwrap(),
            "/h[1]/.cache/x"
        );
        assert_eq!(
            expand(&t, &src, "{cache}/x", Mode::Glob).unwrap(),
            "/h\\[1\\]/.cache/x"
        );
        assert_eq!(
            expand(&t, &src, "{workspace}/id_{rsa,dsa}", Mode::Glob).unwrap(),
            "/w/sub/id_{rsa,dsa}"
        );
        assert_eq!(
            expand(&t, &src, "/x/{{tmp},{workspace}}", Mode::Literal).unwrap(),
            "/x/{/t,/w/sub}"
        );
        assert_eq!(
            expand(&t, &src, "\\{tmp}", Mode::Literal).unwrap(),
            "\\{tmp}"
        );
        assert_eq!(
            t.check().unwrap()[0],
            ("workspace".to_string(), "/w/sub".to_string())
        );
    }

    #[test]
    fn unknown_variables_and_cycles_are_errors() {
        let (t, src) = table(&[("a", "{b}"), ("b", "x{a}")]);
        assert_eq!(
            expand(&t, &src, "{nope}", Mode::Literal).unwrap_err(),
            "t:1:1: unknown variable `{nope}`, expected one of {workspace}, {home}, {tmp}, {a}, {b} (set others in [vars])"
        );
        assert_eq!(
            expand(&t, &src, "{a}", Mode::Literal).unwrap_err(),
            "t:1:1: variable cycle: a -> b -> a"
        );
    }
}
