//! The policy parser and compiler on any text: never a panic, and a policy that parses decides
//! every kind of request without one (the engine must fail closed, not crash).
#![no_main]

use std::path::{Path, PathBuf};

use agent_supervisor_policy::{Access, Policy, Request, Vars};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let vars = Vars {
        workspace: PathBuf::from("/work/ws"),
        home: PathBuf::from("/home/u"),
        tmp: PathBuf::from("/tmp"),
    };
    // `extends` paths resolve in a directory that does not exist: no file is ever read but
    // the built-in presets.
    let Ok(mut policy) = Policy::parse("fuzz.toml", text, Path::new("/nonexistent-fuzz"), &vars)
    else {
        return;
    };
    policy.canonicalize_paths(&|p: &Path| Some(p.to_path_buf()));
    let _ = policy.plan();
    let argv = ["git".to_string(), "push".to_string(), "--force".to_string()];
    let requests = [
        Request::Exec {
            path: Path::new("/usr/bin/git"),
            invoked: Some(Path::new("/bin/git")),
            argv: &argv,
        },
        Request::Open {
            path: Path::new("/home/u/.ssh/id_ed25519"),
            access: Access::READ,
        },
        Request::Open {
            path: Path::new("/work/ws/src/main.rs"),
            access: Access::WRITE,
        },
        Request::Connect {
            ip: "140.82.112.3".parse().expect("ip"),
            port: 443,
            host: Some("github.com"),
        },
        Request::Connect {
            ip: "::1".parse().expect("ip"),
            port: 53,
            host: None,
        },
    ];
    for r in &requests {
        let _ = policy.decide(r);
    }
    let _ = policy.decide_name("registry.npmjs.org");
});
