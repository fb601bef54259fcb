//! From text to [`Policy`]: load the `extends` chain, merge its layers, expand variables,
//! make paths absolute and normalised, and compile the matchers.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::matcher::{CommandMatcher, NetMatcher, PathMatcher, RuleMatcher};
use crate::paths::{escape, has_glob, normalize, normalize_pattern, split_pattern};
use crate::raw::{is_identifier, parse_layer, Layer, LayerRule, LayerTarget};
use crate::source::{Source, Str};
use crate::vars::{Mode, VarTable};
use crate::{
    presets, Decision, Filesystem, OriginDisplay, Policy, PolicyError, Rule, Target, Vars, PRESETS,
};

/// The preset used when a policy has no `extends` key.
pub(crate) const DEFAULT_EXTENDS: &str = "sandboxed";

/// Where a policy file lives, to resolve the paths its `extends` names.
struct Place {
    /// Directory as shown in errors (relative to how the user named the first file).
    display_dir: PathBuf,
    /// Directory to read from.
    fs_dir: PathBuf,
}

/// One entry of the chain being loaded, for cycle detection.
struct Visit {
    id: String,
    display: String,
}

pub(crate) fn preset(name: &str, vars: &Vars) -> Result<Policy, PolicyError> {
    let Some(text) = presets::text(name) else {
        return Err(PolicyError::Invalid {
            origin: OriginDisplay(format!("preset:{name}")),
            message: format!(
                "unknown preset `{name}`, expected {}",
                presets::names_expected()
            ),
        });
    };
    let source = format!("preset:{name}");
    let mut layers = Vec::new();
    let mut stack = vec![Visit {
        id: source.clone(),
        display: source.clone(),
    }];
    load_chain(
        Source::new(source.clone(), text),
        None,
        &mut stack,
        &mut layers,
    )?;
    compile(source, layers, vars)
}

pub(crate) fn parse(
    source_name: &str,
    text: &str,
    base_dir: &Path,
    vars: &Vars,
) -> Result<Policy, PolicyError> {
    let file_name = Path::new(source_name)
        .file_name()
        .map(PathBuf::from)
        .unwrap_or_default();
    let place = Place {
        display_dir: Path::new(source_name)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
        fs_dir: base_dir.to_path_buf(),
    };
    let mut stack = vec![Visit {
        id: identity(&base_dir.join(file_name)),
        display: source_name.to_string(),
    }];
    let mut layers = Vec::new();
    load_chain(
        Source::new(source_name, text),
        Some(place),
        &mut stack,
        &mut layers,
    )?;
    compile(source_name.to_string(), layers, vars)
}

/// The same file reached by two spellings gets the same identity when it exists.
fn identity(path: &Path) -> String {
    std::fs::canonicalize(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

/// Parse `src` and, first, whatever it extends; push the layers base first.
/// `place` is None for presets (which can only extend presets).
fn load_chain(
    src: Arc<Source>,
    place: Option<Place>,
    stack: &mut Vec<Visit>,
    out: &mut Vec<Layer>,
) -> Result<(), PolicyError> {
    let layer = parse_layer(&src)?;
    let extends = layer.extends.clone();
    let name = extends
        .as_ref()
        .map_or(DEFAULT_EXTENDS, |e| e.value.as_str());
    let cycle = |stack: &[Visit], display: &str, at: &Str| {
        let chain: Vec<&str> = stack
            .iter()
            .map(|v| v.display.as_str())
            .chain([display])
            .collect();
        at.pos
            .error(format!("extends cycle: {}", chain.join(" -> ")))
    };
    if name == "none" {
        // Start from nothing.
    } else if PRESETS.contains(&name) {
        let id = format!("preset:{name}");
        if stack.iter().any(|v| v.id == id) {
            if let Some(at) = &extends {
                return Err(cycle(stack, &id, at));
            }
            return Err(src.file_error(format!("extends cycle through {id}")));
        }
        let text = presets::text(name).unwrap_or_default();
        stack.push(Visit {
            id: id.clone(),
            display: id.clone(),
        });
        load_chain(Source::new(id, text), None, stack, out)?;
        stack.pop();
    } else if let (Some(at), true) = (&extends, name.contains('/') || name.ends_with(".toml")) {
        let Some(place) = &place else {
            return Err(at.pos.error("a preset can only extend another preset"));
        };
        let display = place.display_dir.join(name).display().to_string();
        let fs_path = place.fs_dir.join(name);
        let id = identity(&fs_path);
        if stack.iter().any(|v| v.id == id) {
            return Err(cycle(stack, &display, at));
        }
        let text = std::fs::read_to_string(&fs_path).map_err(|e| {
            at.pos
                .error(format!("cannot read `{display}` (extends): {e}"))
        })?;
        let parent = |p: &Path| p.parent().map(Path::to_path_buf).unwrap_or_default();
        let next = Place {
            display_dir: parent(Path::new(&display)),
            fs_dir: parent(&fs_path),
        };
        stack.push(Visit {
            id,
            display: display.clone(),
        });
        load_chain(Source::new(display, text), Some(next), stack, out)?;
        stack.pop();
    } else if let Some(at) = &extends {
        return Err(at.pos.error(format!(
            "unknown preset `{name}`, expected {}, none, or a path to a .toml file",
            crate::PRESETS.join(", ")
        )));
    }
    out.push(layer);
    Ok(())
}

/// Merge the layers (base first) and compile them.
fn compile(source: String, layers: Vec<Layer>, vars: &Vars) -> Result<Policy, PolicyError> {
    let mut default = Decision::Ask;
    let mut approval_timeout = Duration::from_secs(120);
    let mut custom = Vec::new();
    let (mut read, mut write, mut exec) = (Vec::new(), Vec::new(), Vec::new());
    let mut layer_rules = Vec::new();
    let mut limits = crate::Limits::DEFAULT;
    for layer in layers {
        layer.limits.merge_into(&mut limits);
        default = layer.default.unwrap_or(default);
        approval_timeout = layer.approval_timeout.unwrap_or(approval_timeout);
        custom.extend(layer.vars);
        read = layer.read.unwrap_or(read);
        write = layer.write.unwrap_or(write);
        exec = layer.exec.unwrap_or(exec);
        layer_rules.extend(layer.rules);
    }
    let table = VarTable::new(vars, custom);
    let var_list = table.check()?;
    let workspace = var_list
        .iter()
        .find(|(n, _)| n == "workspace")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let filesystem = Filesystem {
        read: trees(&table, &read, "read")?,
        write: trees(&table, &write, "write")?,
        exec: trees(&table, &exec, "exec")?,
    };
    let mut rules = Vec::with_capacity(layer_rules.len());
    let mut matchers = Vec::with_capacity(layer_rules.len());
    for rule in layer_rules {
        let (rule, matcher) = compile_rule(&table, &escape(&workspace), rule)?;
        rules.push(rule);
        matchers.push(matcher);
    }
    Ok(Policy {
        source,
        default,
        approval_timeout,
        filesystem,
        limits,
        rules,
        matchers,
        vars: var_list,
    })
}

fn tilde_error(s: &Str) -> PolicyError {
    s.pos.error(format!(
        "`~` is not expanded in policies, write {{home}} instead (in `{}`)",
        s.value
    ))
}

/// `s` without its `{variable}` references.
fn without_var_refs(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) if is_identifier(&after[..close]) => rest = &after[close + 1..],
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// One `[filesystem]` list: literal absolute paths, normalised, duplicates dropped.
fn trees(table: &VarTable, list: &[Str], key: &str) -> Result<Vec<PathBuf>, PolicyError> {
    let mut out: Vec<PathBuf> = Vec::new();
    for entry in list {
        if entry.value.starts_with('~') {
            return Err(tilde_error(entry));
        }
        if has_glob(&without_var_refs(&entry.value)) {
            return Err(entry.pos.error(format!(
                "[filesystem] {key} entries are literal paths, `{}` has glob characters (use a [[rule]] with `file = ...` for patterns)",
                entry.value
            )));
        }
        let expanded = table.expand(entry, Mode::Literal)?;
        if !expanded.starts_with('/') {
            return Err(entry.pos.error(format!(
                "relative path `{}` in [filesystem] {key}, expected an absolute path (or one starting with {{workspace}}, {{home}} or {{tmp}})",
                entry.value
            )));
        }
        let path = normalize(&expanded);
        if !out.contains(&path) {
            out.push(path);
        }
    }
    Ok(out)
}

fn compile_rule(
    table: &VarTable,
    workspace_glob: &str,
    rule: LayerRule,
) -> Result<(Rule, RuleMatcher), PolicyError> {
    let bad_glob = |s: &Str, e: String| s.pos.error(format!("bad glob `{}`: {e}", s.value));
    let (target, matcher, catch_all) = match rule.target {
        LayerTarget::File { pattern, access } => {
            if pattern.value.trim().is_empty() {
                return Err(pattern.pos.error(
                    "empty file pattern, expected a path or glob such as \"{workspace}/**/.env\"",
                ));
            }
            if pattern.value.starts_with('~') {
                return Err(tilde_error(&pattern));
            }
            let expanded = table.expand(&pattern, Mode::Glob)?;
            let absolute = if expanded.starts_with('/') || expanded.starts_with("**") {
                expanded
            } else {
                format!("{workspace_glob}/{expanded}")
            };
            let normalized = normalize_pattern(&absolute).map_err(|m| {
                pattern
                    .pos
                    .error(format!("{m} in file pattern `{}`", pattern.value))
            })?;
            let matcher = PathMatcher::new(&normalized).map_err(|e| bad_glob(&pattern, e))?;
            let catch_all = normalized == "**" || normalized == "/**";
            (
                Target::File {
                    pattern: normalized,
                    access,
                },
                RuleMatcher::File(matcher),
                catch_all,
            )
        }
        LayerTarget::Command { program, args } => {
            if program.value.trim().is_empty() {
                return Err(program.pos.error("empty command pattern, expected a program name such as \"rm\" or a path such as \"/usr/bin/rm\""));
            }
            if program.value.starts_with('~') {
                return Err(tilde_error(&program));
            }
            let expanded = table.expand(&program, Mode::Glob)?;
            let (program_text, program_matcher) = if expanded.contains('/') {
                if !(expanded.starts_with('/') || expanded.starts_with("**")) {
                    return Err(program.pos.error(format!(
                        "command path `{}` is relative, expected a program name such as `rm` or an absolute path such as `/usr/bin/rm`",
                        program.value
                    )));
                }
                let normalized = normalize_pattern(&expanded).map_err(|m| {
                    program
                        .pos
                        .error(format!("{m} in command pattern `{}`", program.value))
                })?;
                let m = PathMatcher::new(&normalized).map_err(|e| bad_glob(&program, e))?;
                (normalized, crate::matcher::ProgramMatcher::Path(m))
            } else {
                let m =
                    CommandMatcher::basename_glob(&expanded).map_err(|e| bad_glob(&program, e))?;
                (expanded, m)
            };
            let args_text = match &args {
                Some(a) => Some(table.expand(a, Mode::Glob)?),
                None => None,
            };
            let matcher = CommandMatcher::new(program_matcher, args_text.as_deref())
                .map_err(|e| bad_glob(args.as_ref().unwrap_or(&program), e))?;
            let catch_all = (program_text == "*" || program_text == "**") && args_text.is_none();
            (
                Target::Command {
                    program: program_text,
                    args: args_text,
                },
                RuleMatcher::Command(Box::new(matcher)),
                catch_all,
            )
        }
        LayerTarget::Network { spec } => {
            let expanded = table.expand(&spec, Mode::Literal)?;
            let (matcher, catch_all) =
                NetMatcher::parse(&expanded).map_err(|m| spec.pos.error(m))?;
            (
                Target::Network {
                    spec: expanded.trim().to_string(),
                },
                RuleMatcher::Network(matcher),
                catch_all,
            )
        }
    };
    let rule = Rule {
        decision: rule.decision,
        target,
        reason: rule.reason,
        origin: rule.header.origin(),
        catch_all,
    };
    Ok((rule, matcher))
}

/// See [`Policy::canonicalize_paths`].
pub(crate) fn canonicalize(policy: &mut Policy, canon: &dyn Fn(&Path) -> Option<PathBuf>) {
    let canon_path = |p: &PathBuf| -> PathBuf {
        match canon(p) {
            Some(c) if c.is_absolute() => normalize(&c.to_string_lossy()),
            _ => p.clone(),
        }
    };
    for list in [
        &mut policy.filesystem.read,
        &mut policy.filesystem.write,
        &mut policy.filesystem.exec,
    ] {
        let mut out: Vec<PathBuf> = Vec::new();
        for path in list.iter().map(canon_path) {
            if !out.contains(&path) {
                out.push(path);
            }
        }
        *list = out;
    }
    for (rule, matcher) in policy.rules.iter_mut().zip(policy.matchers.iter_mut()) {
        match (&mut rule.target, matcher) {
            (Target::File { pattern, .. }, RuleMatcher::File(m)) => {
                if let Some((new, nm)) = canonical_pattern(pattern, canon) {
                    m.extend(nm);
                    *pattern = new;
                }
            }
            (Target::Command { program, .. }, RuleMatcher::Command(c)) => {
                if let (Some((new, nm)), crate::matcher::ProgramMatcher::Path(m)) =
                    (canonical_pattern(program, canon), &mut c.program)
                {
                    m.extend(nm);
                    *program = new;
                }
            }
            _ => {}
        }
    }
}

/// The pattern with its literal prefix canonicalised, when that changes anything.
fn canonical_pattern(
    pattern: &str,
    canon: &dyn Fn(&Path) -> Option<PathBuf>,
) -> Option<(String, PathMatcher)> {
    if !pattern.starts_with('/') {
        return None;
    }
    let (prefix, rest) = split_pattern(pattern);
    let canonical = canon(&prefix).filter(|c| c.is_absolute())?;
    let canonical = normalize(canonical.to_str()?);
    if canonical == prefix {
        return None;
    }
    let head = escape(canonical.to_str()?);
    let new = match (rest.is_empty(), head == "/") {
        (true, _) => head,
        (false, true) => format!("/{rest}"),
        (false, false) => format!("{head}/{rest}"),
    };
    let matcher = PathMatcher::new(&new).ok()?;
    Some((new, matcher))
}
