//! Tests of the public API beyond the golden files: presets, the init template, loading from
//! disk, canonicalisation, descriptions and the small public helpers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use agent_supervisor_policy::*;

fn vars() -> Vars {
    Vars {
        workspace: "/w".into(),
        home: "/h".into(),
        tmp: "/t".into(),
    }
}

fn parse(text: &str) -> Result<Policy, PolicyError> {
    Policy::parse("policy.toml", text, Path::new("/nonexistent"), &vars())
}

fn open(policy: &Policy, path: &str, access: Access) -> Verdict {
    policy.decide(&Request::Open {
        path: Path::new(path),
        access,
    })
}

fn exec(policy: &Policy, path: &str, args: &[&str]) -> Verdict {
    let argv: Vec<String> = std::iter::once(path)
        .chain(args.iter().copied())
        .map(String::from)
        .collect();
    policy.decide(&Request::Exec {
        path: Path::new(path),
        invoked: None,
        argv: &argv,
    })
}

#[test]
fn every_preset_parses_and_sets_its_default() {
    let defaults = [
        ("unrestricted", Decision::Allow),
        ("sandboxed", Decision::Ask),
        ("locked", Decision::Deny),
        ("ci", Decision::Deny),
    ];
    assert_eq!(PRESETS.len(), defaults.len());
    for (name, default) in defaults {
        let p = Policy::preset(name, &vars()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(p.source, format!("preset:{name}"));
        assert_eq!(p.default, default, "{name}");
        assert_eq!(p.approval_timeout, Duration::from_secs(120));
        assert!(
            p.rules.iter().all(|r| r.reason.is_some()),
            "{name}: every preset rule has a reason"
        );
    }
    let err = Policy::preset("strict", &vars()).unwrap_err().to_string();
    assert_eq!(
        err,
        "preset:strict: unknown preset `strict`, expected unrestricted, sandboxed, locked or ci"
    );
}

#[test]
fn no_extends_means_sandboxed_and_none_means_nothing() {
    let sandboxed = Policy::preset("sandboxed", &vars()).unwrap();
    let implicit =
        parse("version = 1\n[[rule]]\ndecision = \"allow\"\nnetwork = \"127.0.0.1:80\"\n").unwrap();
    assert_eq!(implicit.rules.len(), sandboxed.rules.len() + 1);
    assert_eq!(implicit.filesystem.write, sandboxed.filesystem.write);
    let last = implicit.rules.last().unwrap();
    assert_eq!(last.origin.to_string(), "policy.toml:2:1");

    let empty = parse("version = 1\nextends = \"none\"\n").unwrap();
    assert!(empty.rules.is_empty());
    assert!(empty.filesystem.read.is_empty());
    assert_eq!(empty.default, Decision::Ask);
    assert_eq!(empty.approval_timeout, Duration::from_secs(120));
    assert_eq!(open(&empty, "/w/x", Access::READ).decision, Decision::Deny);
}

#[test]
fn init_template_parses_and_means_what_it_says() {
    let text = init_template();
    assert!(text.contains("extends = \"sandboxed\""));
    let p = Policy::parse("agent-supervisor.toml", text, Path::new("."), &vars()).unwrap();
    let sandboxed = Policy::preset("sandboxed", &vars()).unwrap();
    assert_eq!(p.rules.len(), sandboxed.rules.len() + 4);
    let env = open(&p, "/w/deep/er/.env", Access::READ);
    assert_eq!(env.decision, Decision::Deny);
    let connect = p.decide(&Request::Connect {
        ip: "127.0.0.1".parse().unwrap(),
        port: 8080,
        host: None,
    });
    assert_eq!(connect.decision, Decision::Allow);
    assert_eq!(connect.reason.as_deref(), Some("The local dev server"));
    // Every non-empty, non-comment line of the template is preceded by an explanation.
    assert!(text.lines().filter(|l| l.starts_with('#')).count() > 30);
}

#[test]
fn approval_timeout_is_humantime_and_inherited() {
    let p = parse("version = 1\nextends = \"none\"\napproval_timeout = \"1h 30m\"\n").unwrap();
    assert_eq!(p.approval_timeout, Duration::from_secs(5400));
    let p = parse("version = 1\nextends = \"none\"\napproval_timeout = \"500ms\"\n").unwrap();
    assert_eq!(p.approval_timeout, Duration::from_millis(500));
}

#[test]
fn load_reads_files_and_resolves_extends_relative_to_them() {
    let dir = std::env::temp_dir().join(format!("policy-load-test-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(
        dir.join("sub/base.toml"),
        "version = 1\nextends = \"locked\"\napproval_timeout = \"5s\"\n[vars]\nworkspace = \"/proj\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("p.toml"),
        "version = 1\nextends = \"sub/base.toml\"\n[filesystem]\nwrite = [\"{workspace}\"]\n",
    )
    .unwrap();
    let p = Policy::load(&dir.join("p.toml"), &vars()).unwrap();
    assert_eq!(p.approval_timeout, Duration::from_secs(5));
    assert_eq!(
        p.default,
        Decision::Deny,
        "inherited from locked through base.toml"
    );
    assert_eq!(p.filesystem.write, vec![PathBuf::from("/proj")]);
    assert!(p.filesystem.read.contains(&PathBuf::from("/proj")));
    assert_eq!(p.vars()[0], ("workspace".to_string(), "/proj".to_string()));

    std::fs::write(
        dir.join("bad.toml"),
        "version = 1\nextends = \"sub/base.toml\"\ndefault = \"nope\"\n",
    )
    .unwrap();
    let err = Policy::load(&dir.join("bad.toml"), &vars())
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "{}:3:11: unknown decision `nope`, expected allow, deny or ask",
            dir.join("bad.toml").display()
        )
    );

    let missing = Policy::load(&dir.join("missing.toml"), &vars()).unwrap_err();
    assert!(matches!(missing, PolicyError::Read { .. }), "{missing:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn canonicalize_rewrites_trees_and_pattern_prefixes() {
    let mut p = parse(
        "version = 1\nextends = \"none\"\n[filesystem]\nexec = [\"/bin\", \"/usr/bin\"]\nread = [\"/bin\"]\n\
         [[rule]]\ndecision = \"allow\"\ncommand = \"/bin/**\"\n\
         [[rule]]\ndecision = \"deny\"\nfile = \"/bin/secret*\"\n\
         [[rule]]\ndecision = \"deny\"\nfile = \"**/x\"\n",
    )
    .unwrap();
    let canon = |path: &Path| -> Option<PathBuf> {
        path.strip_prefix("/bin")
            .ok()
            .map(|rest| Path::new("/usr/bin").join(rest))
    };
    p.canonicalize_paths(&canon);
    assert_eq!(
        p.filesystem.exec,
        vec![PathBuf::from("/usr/bin")],
        "deduplicated after rewriting"
    );
    assert_eq!(p.filesystem.read, vec![PathBuf::from("/usr/bin")]);
    match &p.rules[0].target {
        Target::Command { program, .. } => assert_eq!(program, "/usr/bin/**"),
        other => panic!("{other:?}"),
    }
    match &p.rules[1].target {
        Target::File { pattern, .. } => assert_eq!(pattern, "/usr/bin/secret*"),
        other => panic!("{other:?}"),
    }
    match &p.rules[2].target {
        Target::File { pattern, .. } => assert_eq!(pattern, "**/x"),
        other => panic!("{other:?}"),
    }
    // Both spellings match.
    assert_eq!(exec(&p, "/usr/bin/ls", &[]).decided_by, DecidedBy::Rule(0));
    assert!(p.file_rule_matches(1, Path::new("/usr/bin/secret-tool")));
    assert!(p.file_rule_matches(1, Path::new("/bin/secret-tool")));
    assert_eq!(p.plan().masks[0].root, PathBuf::from("/usr/bin"));
}

#[test]
fn describe_rule_and_displays() {
    let p = parse(
        "version = 1\nextends = \"none\"\n\n[[rule]]\ndecision = \"deny\"\ncommand = \"rm\"\nargs = \"-rf *\"\n\
         [[rule]]\ndecision = \"ask\"\nfile = \"{home}/.ssh/**\"\naccess = [\"read\", \"write\"]\n",
    )
    .unwrap();
    assert_eq!(
        p.describe_rule(0),
        "rule 0 at policy.toml:4:1: deny command \"rm\" args \"-rf *\""
    );
    assert_eq!(
        p.describe_rule(1),
        "rule 1 at policy.toml:8:1: ask file \"/h/.ssh/**\" access read+write"
    );
    assert!(p.describe_rule(9).contains("no such rule"));
    let v = exec(&p, "/usr/bin/rm", &["-rf", "/"]);
    assert_eq!(
        v.to_string(),
        format!("deny by rule 0 ({})", p.describe_rule(0))
    );
    for d in [Decision::Allow, Decision::Ask, Decision::Deny] {
        assert_eq!(d.to_string().parse::<Decision>(), Ok(d));
    }
    assert_eq!(
        "Allow".parse::<Decision>().unwrap_err().to_string(),
        "unknown decision `Allow`, expected allow, deny or ask"
    );
    assert!(Decision::Allow < Decision::Ask && Decision::Ask < Decision::Deny);
    assert_eq!(Access::ALL.to_string(), "read+write+exec");
    assert_eq!(Access::default().to_string(), "none");
    assert!(Access::ALL.contains(Access::WRITE) && !Access::READ.contains(Access::WRITE));
}

#[test]
fn vars_lists_builtins_then_custom() {
    let p = parse(
        "version = 1\nextends = \"none\"\n[vars]\nzed = \"{tmp}/z\"\ncache = \"{home}/.cache\"\n",
    )
    .unwrap();
    let expected: Vec<(String, String)> = [
        ("workspace", "/w"),
        ("home", "/h"),
        ("tmp", "/t"),
        ("cache", "/h/.cache"),
        ("zed", "/t/z"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(p.vars(), expected);
}

#[test]
fn glob_characters_in_builtin_paths_match_literally() {
    let odd = Vars {
        workspace: "/w[1]".into(),
        home: "/home/a*b".into(),
        tmp: "/t".into(),
    };
    let p = Policy::preset("sandboxed", &odd).unwrap();
    let v = p.decide(&Request::Open {
        path: Path::new("/home/a*b/.ssh/id_rsa"),
        access: Access::READ,
    });
    assert_eq!(v.decided_by, DecidedBy::Rule(0));
    let other = p.decide(&Request::Open {
        path: Path::new("/home/aXb/.ssh/id_rsa"),
        access: Access::READ,
    });
    assert_eq!(
        other.decided_by,
        DecidedBy::Filesystem,
        "`*` in $HOME is not a wildcard"
    );
    let env = p.decide(&Request::Open {
        path: Path::new("/w[1]/x/.env"),
        access: Access::READ,
    });
    assert_eq!(env.decision, Decision::Deny);
    let plan = p.plan();
    assert!(plan
        .masks
        .iter()
        .any(|m| m.root == Path::new("/home/a*b/.ssh") && m.whole_root));
}

#[test]
fn plan_masks_grants_and_notifications() {
    let p = parse(
        "version = 1\nextends = \"none\"\n[filesystem]\nread = [\"/w\"]\n\
         [[rule]]\ndecision = \"deny\"\nfile = \"/w/a/**\"\naccess = [\"write\"]\n\
         [[rule]]\ndecision = \"deny\"\nfile = \"/w/**/b\"\naccess = [\"exec\"]\n\
         [[rule]]\ndecision = \"allow\"\nfile = \"/opt/x/**\"\naccess = [\"read\", \"exec\"]\n",
    )
    .unwrap();
    let plan = p.plan();
    assert_eq!(plan.masks.len(), 2);
    assert_eq!(
        (plan.masks[0].kind, plan.masks[0].whole_root),
        (MaskKind::ReadOnly, true)
    );
    assert_eq!(
        (
            plan.masks[1].kind,
            plan.masks[1].whole_root,
            plan.masks[1].root.as_path()
        ),
        (MaskKind::NoExec, false, Path::new("/w"))
    );
    assert_eq!(
        plan.landlock_read,
        vec![PathBuf::from("/w"), PathBuf::from("/opt/x")]
    );
    assert_eq!(plan.landlock_exec, vec![PathBuf::from("/opt/x")]);
    assert!(!plan.notify_open);
    assert!(
        plan.notify_exec,
        "an allow rule about exec needs the execve check"
    );
    assert!(plan.notify_network);
    assert_eq!(plan.mechanisms.len(), 3);
    assert_eq!(plan.mechanisms[2], "Landlock read+exec grant on /opt/x; exec also checked by the supervisor on execve/execveat");

    let ask =
        parse("version = 1\nextends = \"none\"\n[[rule]]\ndecision = \"ask\"\nfile = \"/w/x\"\n")
            .unwrap();
    assert!(ask.plan().notify_open);
    let catch_all =
        parse("version = 1\nextends = \"none\"\n[[rule]]\ndecision = \"deny\"\nfile = \"/**\"\n")
            .unwrap();
    assert!(catch_all.rules[0].catch_all);
    assert!(catch_all.plan().notify_open);
    assert!(catch_all.plan().masks.is_empty(), "catch-alls get no mask");
}

#[test]
fn the_view_is_read_only_unless_the_supervisor_may_grant_writes_outside_the_write_trees() {
    let plan = |extra: &str| {
        parse(&format!(
            "version = 1\nextends = \"none\"\ndefault = \"deny\"\n[filesystem]\nread = [\"/\"]\nwrite = [\"/w\"]\n{extra}"
        ))
        .unwrap()
        .plan()
    };
    assert_eq!(plan("").writable_view, None);
    // Deny rules, Landlock grants and anchored ask rules keep it read-only.
    assert_eq!(
        plan("[[rule]]\ndecision = \"ask\"\nfile = \"/o/x\"\naccess = [\"write\"]\n").writable_view,
        None,
        "the ask rule's grant (/o/x) is bound writable"
    );
    let anywhere =
        plan("[[rule]]\ndecision = \"allow\"\nfile = \"**/out.log\"\naccess = [\"write\"]\n");
    assert!(
        anywhere
            .writable_view
            .as_deref()
            .is_some_and(|w| w.contains("may grant a write anywhere")),
        "{:?}",
        anywhere.writable_view
    );
    let ask_default = parse(
        "version = 1\nextends = \"none\"\ndefault = \"ask\"\n[filesystem]\nwrite = [\"/w\"]\n\
         [[rule]]\ndecision = \"ask\"\nfile = \"/w/x\"\n",
    )
    .unwrap()
    .plan();
    assert!(ask_default.writable_view.is_some());
    let everything = parse("version = 1\nextends = \"none\"\n[filesystem]\nwrite = [\"/\"]\n")
        .unwrap()
        .plan();
    assert!(everything.writable_view.is_some());
}

#[test]
fn exec_needs_landlock_rights_even_when_a_rule_allows() {
    let p = parse(
        "version = 1\nextends = \"none\"\n[filesystem]\nexec = [\"/usr/bin\"]\n\
         [[rule]]\ndecision = \"allow\"\ncommand = \"tool\"\n",
    )
    .unwrap();
    assert_eq!(
        exec(&p, "/usr/bin/tool", &[]).decided_by,
        DecidedBy::Rule(0)
    );
    let outside = exec(&p, "/opt/tool", &[]);
    assert_eq!(
        (outside.decision, outside.decided_by),
        (Decision::Deny, DecidedBy::Filesystem)
    );
}

#[test]
fn tree_entries_may_be_files_and_are_normalised() {
    let p = parse("version = 1\nextends = \"none\"\n[filesystem]\nexec = [\"/usr/bin/./git/\", \"{workspace}/../bin//x\"]\n").unwrap();
    assert_eq!(
        p.filesystem.exec,
        vec![PathBuf::from("/usr/bin/git"), PathBuf::from("/bin/x")]
    );
    assert_eq!(exec(&p, "/usr/bin/git", &[]).decided_by, DecidedBy::Default);
    assert_eq!(
        exec(&p, "/usr/bin/gitk", &[]).decided_by,
        DecidedBy::Filesystem
    );
}

#[test]
fn limits_default_merge_key_by_key_through_extends_and_describe_themselves() {
    let p = parse("version = 1\nextends = \"none\"\n").unwrap();
    assert_eq!(p.limits, Limits::DEFAULT);
    assert_eq!(p.limits.processes.value, Some(4096));
    assert_eq!(p.limits.memory.value, Some(Memory::HostPercent(50)));
    assert!(!p.limits.processes.is_explicit());
    // The presets keep the defaults, but `ci` ends a hung job after two hours.
    for preset in PRESETS {
        let p = Policy::preset(preset, &vars()).unwrap();
        let mut expected = Limits::DEFAULT;
        if *preset == "ci" {
            assert_eq!(p.limits.timeout.value, Some(Duration::from_secs(7200)));
            assert!(p.limits.timeout.is_explicit());
            expected.timeout = p.limits.timeout.clone();
        }
        assert_eq!(p.limits, expected, "preset {preset} sets other limits");
    }

    let dir = std::env::temp_dir().join(format!("policy-limits-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("base.toml"),
        "version = 1\nextends = \"none\"\n[limits]\nmemory = \"2G\"\nprocesses = 100\ntimeout = \"30m\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("p.toml"),
        "version = 1\nextends = \"base.toml\"\n[limits]\nprocesses = \"none\"\ncpu = 1.5\nfile_size = \"10M\"\n",
    )
    .unwrap();
    let p = Policy::load(&dir.join("p.toml"), &vars()).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let l = &p.limits;
    assert_eq!(l.memory.value, Some(Memory::Bytes(2 << 30)), "inherited");
    assert_eq!(
        l.memory.origin.as_ref().map(|o| (o.line, o.column)),
        Some((4, 10)),
        "the base's position"
    );
    assert!(l
        .memory
        .origin
        .as_ref()
        .unwrap()
        .file
        .ends_with("base.toml"));
    assert_eq!(l.processes.value, None, "\"none\" overrides the base's 100");
    assert!(l.processes.is_explicit());
    assert_eq!(l.cpu.value, Some(1.5));
    assert_eq!(l.timeout.value, Some(Duration::from_secs(1800)));
    assert_eq!(l.file_size.value, Some(10 << 20));
    let lines = l.describe();
    assert_eq!(lines.len(), 5);
    assert!(lines[0].starts_with("memory = 2G ("), "{lines:?}");
    assert!(lines[1].starts_with("processes = none ("), "{lines:?}");
    assert_eq!(lines[2].split(" (").next(), Some("cpu = 1.5 CPUs"));
    assert_eq!(lines[3].split(" (").next(), Some("timeout = 30m"));
    assert_eq!(lines[4].split(" (").next(), Some("file_size = 10M"));
    let d = parse("version = 1\nextends = \"none\"\n")
        .unwrap()
        .limits
        .describe();
    assert_eq!(d[0], "memory = 50% of host RAM (built-in default)");
}
