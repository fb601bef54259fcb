//! Lexical path and pattern handling: normalisation, glob escaping, literal prefixes.
//!
//! Nothing here touches the filesystem: `..` is resolved lexically, symlinks are the
//! supervisor's business ([`crate::Policy::canonicalize_paths`]).

use std::path::{Path, PathBuf};

/// Characters that start a glob construct (`]` and `}` only end one).
fn is_meta(c: char) -> bool {
    matches!(c, '*' | '?' | '[' | '{')
}

/// Does `s` contain an unescaped glob character?
pub(crate) fn has_glob(s: &str) -> bool {
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            chars.next();
        } else if is_meta(c) {
            return true;
        }
    }
    false
}

/// Escape glob characters (and `\`) with a backslash, so that the result matches `s` literally.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if is_meta(c) || matches!(c, ']' | '}' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Undo [`escape`] (and any other backslash escape).
pub(crate) fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Lexically normalise an absolute path: drop `.` and empty components, resolve `..`
/// (never above `/`), no trailing slash.
pub(crate) fn normalize(path: &str) -> PathBuf {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    PathBuf::from(format!("/{}", parts.join("/")))
}

/// Normalise an absolute pattern (`/...`) or an anywhere pattern (`**...`) segment by
/// segment, like [`normalize`]. A `..` may only remove a literal segment.
pub(crate) fn normalize_pattern(pattern: &str) -> Result<String, String> {
    let absolute = pattern.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in pattern.split('/') {
        match part {
            "" | "." => {}
            ".." => match parts.last() {
                Some(last) if !has_glob(last) => {
                    parts.pop();
                }
                Some(_) => return Err("`..` cannot follow a glob segment".to_string()),
                None if absolute => {}
                None => return Err("`..` cannot start a pattern".to_string()),
            },
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    Ok(if absolute {
        format!("/{joined}")
    } else {
        joined
    })
}

/// Split a normalised absolute pattern into its literal (glob-free, unescaped) prefix and the
/// rest, which starts at the first segment holding a glob character (empty when the whole
/// pattern is literal). Anywhere patterns (`**/x`) have the prefix `/`.
pub(crate) fn split_pattern(pattern: &str) -> (PathBuf, String) {
    if !pattern.starts_with('/') {
        return (PathBuf::from("/"), pattern.to_string());
    }
    let segments: Vec<&str> = pattern
        .split('/')
        .skip(1)
        .filter(|s| !s.is_empty())
        .collect();
    let literal = segments.iter().take_while(|s| !has_glob(s)).count();
    let prefix: Vec<String> = segments[..literal].iter().map(|s| unescape(s)).collect();
    (
        PathBuf::from(format!("/{}", prefix.join("/"))),
        segments[literal..].join("/"),
    )
}

/// Is `path` equal to, or under, one of `trees`?
pub(crate) fn under_any(path: &Path, trees: &[PathBuf]) -> bool {
    trees.iter().any(|tree| path.starts_with(tree))
}

/// The first of `trees` that holds `path`.
pub(crate) fn tree_holding<'t>(path: &Path, trees: &'t [PathBuf]) -> Option<&'t PathBuf> {
    trees.iter().find(|tree| path.starts_with(tree))
}

/// Sort-stable dedupe that also drops paths under another path of the list.
pub(crate) fn minimal_cover(paths: Vec<PathBuf>) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for path in paths {
        if out.iter().any(|kept| path.starts_with(kept)) {
            continue;
        }
        out.retain(|kept| !kept.starts_with(&path));
        out.push(path);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_is_lexical() {
        assert_eq!(normalize("/a//b/./c/../d/"), PathBuf::from("/a/b/d"));
        assert_eq!(normalize("/../.."), PathBuf::from("/"));
        assert_eq!(normalize("/"), PathBuf::from("/"));
    }

    #[test]
    fn pattern_normalisation_keeps_globs_and_refuses_dotdot_after_them() {
        assert_eq!(
            normalize_pattern("/w//x/./**/../y/").unwrap_err(),
            "`..` cannot follow a glob segment"
        );
        assert_eq!(normalize_pattern("/w/a/../*.key/").unwrap(), "/w/*.key");
        assert_eq!(normalize_pattern("**/./.env").unwrap(), "**/.env");
        assert!(normalize_pattern("../x").is_err());
    }

    #[test]
    fn literal_prefix_stops_at_the_first_glob_segment() {
        assert_eq!(
            split_pattern("/h/.ssh/**"),
            (PathBuf::from("/h/.ssh"), "**".to_string())
        );
        assert_eq!(
            split_pattern("/etc/ssh/ssh_host_*_key"),
            (PathBuf::from("/etc/ssh"), "ssh_host_*_key".to_string())
        );
        assert_eq!(
            split_pattern("/etc/shadow"),
            (PathBuf::from("/etc/shadow"), String::new())
        );
        assert_eq!(split_pattern("/**"), (PathBuf::from("/"), "**".to_string()));
        assert_eq!(
            split_pattern("**/.env"),
            (PathBuf::from("/"), "**/.env".to_string())
        );
        assert_eq!(
            split_pattern("/a\\[b\\]/x*"),
            (PathBuf::from("/a[b]"), "x*".to_string())
        );
    }

    #[test]
    fn escape_round_trips_and_hides_globs() {
        let nasty = "/home/a[b]{c,d}*?\\";
        assert!(!has_glob(&escape(nasty)));
        assert_eq!(unescape(&escape(nasty)), nasty);
        assert!(has_glob("/x/{a,b}"));
    }

    #[test]
    fn minimal_cover_drops_nested_entries() {
        let got = minimal_cover(vec![
            "/a/b".into(),
            "/a".into(),
            "/c".into(),
            "/a".into(),
            "/ab".into(),
        ]);
        assert_eq!(
            got,
            vec![
                PathBuf::from("/a"),
                PathBuf::from("/c"),
                PathBuf::from("/ab")
            ]
        );
    }
}
