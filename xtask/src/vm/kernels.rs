//! The guest kernels: which ones, and fetching them into the cache with a private apt.
//!
//! Each [`KernelSpec`] names a package pattern; the newest matching package the suites offer
//! is downloaded with `apt-get download` (never installed: the host kernel is untouched) and
//! unpacked with `dpkg-deb -x`. From trixie on, `linux-image-X` is an empty meta package whose
//! payload is in `linux-binary-X`, `linux-modules-X` and `linux-base-X`: every dependency of
//! the image package named `…-X` is fetched with it. `depmod -b` then indexes the modules so
//! `modprobe -d` can list the ones the guest needs.
//!
//! apt runs with its own configuration ([`Apt`]): its own sources list, state and cache
//! directories under the cache, and no part of the machine's `/etc/apt`. The machine's apt
//! sources are never edited.
//!
//! A fetched kernel is recorded in `kernels/NAME/current` (written last), so a second run
//! reads that and touches no network. `--refresh` looks for newer packages and replaces a
//! kernel only when a newer one exists.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::process;

/// One guest kernel: a Debian package pattern and what it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelSpec {
    /// Short name: `--kernel NAME`, the table column, the cache directory.
    pub name: &'static str,
    /// The image package's name, with `#` standing for a run of digits; the match with the
    /// largest numbers (compared left to right) is the newest.
    pub package: &'static str,
    /// The suite it is expected from (the one recorded is the one apt really used).
    pub suite: &'static str,
    /// Why this kernel is in the matrix.
    pub why: &'static str,
}

/// The kernels `cargo xtask vm-test` boots, oldest first. To add one, add a line here (and,
/// when it comes from another suite, that suite to [`APT_SOURCES`]); see docs/vm-test.md.
pub const KERNELS: &[KernelSpec] = &[
    KernelSpec {
        name: "6.1",
        package: "linux-image-6.1.0-#-amd64",
        suite: "bookworm",
        why: "Debian 12's kernel: Landlock ABI 2, the oldest kernel supported",
    },
    KernelSpec {
        name: "6.12",
        package: "linux-image-6.12.#+deb12-amd64",
        suite: "bookworm-security",
        why: "the LTS kernel Debian 12 offers next: Landlock ABI 6",
    },
    KernelSpec {
        name: "7.x",
        package: "linux-image-7.#.#+deb13-amd64",
        suite: "trixie-backports",
        why: "the newest kernel Debian offers",
    },
];

/// The apt sources (URI, suite) the private apt configuration reads, all `main`, amd64.
pub const APT_SOURCES: &[(&str, &str)] = &[
    ("http://deb.debian.org/debian", "bookworm"),
    ("http://deb.debian.org/debian-security", "bookworm-security"),
    ("http://deb.debian.org/debian", "trixie-backports"),
];

/// The keyring the sources are checked against (Debian's `debian-archive-keyring`, which on
/// bookworm already holds trixie's keys).
const ARCHIVE_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// A kernel in the cache, ready to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    pub spec: KernelSpec,
    /// `uname -r` of the kernel (the image package's name without `linux-image-`).
    pub release: String,
    /// The Debian package version.
    pub version: String,
    /// The suite apt downloaded it from.
    pub suite: String,
    /// The compressed kernel image for `qemu -kernel`.
    pub vmlinuz: PathBuf,
    /// The directory holding `lib/modules/RELEASE` (for `depmod -b` / `modprobe -d`).
    pub modules_base: PathBuf,
}

impl Kernel {
    /// `lib/modules/RELEASE` under [`Kernel::modules_base`].
    pub fn modules_dir(&self) -> PathBuf {
        self.modules_base.join("lib/modules").join(&self.release)
    }
}

/// The kernel specs named in `wanted` (all when empty); an unknown name lists the known ones.
pub fn select(wanted: &[String]) -> Result<Vec<KernelSpec>> {
    if let Some(unknown) = wanted
        .iter()
        .find(|w| !KERNELS.iter().any(|k| k.name == w.as_str()))
    {
        let known: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
        bail!("no kernel called `{unknown}`; known: {}", known.join(", "));
    }
    Ok(KERNELS
        .iter()
        .filter(|k| wanted.is_empty() || wanted.iter().any(|w| w == k.name))
        .copied()
        .collect())
}

/// Makes sure every kernel in `specs` is in the cache and returns them in the same order.
/// Without `refresh`, a cached kernel is used as it is and nothing is downloaded.
pub fn ensure(cache: &Path, specs: &[KernelSpec], refresh: bool) -> Result<Vec<Kernel>> {
    let mut kernels = Vec::new();
    let mut apt: Option<Apt> = None;
    for spec in specs {
        let cached = load(cache, *spec);
        if let (Some(kernel), false) = (&cached, refresh) {
            println!(
                "vm-test: kernel {:<5} ok ({} {}, cached)",
                spec.name, kernel.release, kernel.suite
            );
            kernels.push(kernel.clone());
            continue;
        }
        let apt = match &mut apt {
            Some(apt) => apt,
            None => apt.insert(Apt::updated(&cache.join("apt"))?),
        };
        let package = apt.newest(spec)?;
        if let Some(kernel) =
            cached.filter(|k| k.version == package.version && k.release == package.release())
        {
            println!(
                "vm-test: kernel {:<5} ok ({} {}, still the newest)",
                spec.name, kernel.release, kernel.suite
            );
            kernels.push(kernel);
            continue;
        }
        let kernel = fetch(cache, apt, *spec, &package)?;
        println!(
            "vm-test: kernel {:<5} installed in the cache ({} {} from {})",
            spec.name, kernel.release, kernel.version, kernel.suite
        );
        kernels.push(kernel);
    }
    Ok(kernels)
}

/// The kernel recorded for `spec` in the cache, if it is complete.
fn load(cache: &Path, spec: KernelSpec) -> Option<Kernel> {
    let dir = cache.join("kernels").join(spec.name);
    let record = fs::read_to_string(dir.join("current")).ok()?;
    let field = |key: &str| {
        record
            .lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_string)
    };
    let kernel = Kernel {
        spec,
        release: field("release")?,
        version: field("version")?,
        suite: field("suite")?,
        vmlinuz: dir.join(field("vmlinuz")?),
        modules_base: dir.join(field("modules_base")?),
    };
    (kernel.vmlinuz.is_file() && kernel.modules_dir().join("modules.dep").is_file())
        .then_some(kernel)
}

/// Downloads, unpacks and indexes `package` for `spec`, then records it as current and
/// removes what an older kernel of the same spec left.
fn fetch(cache: &Path, apt: &Apt, spec: KernelSpec, package: &Package) -> Result<Kernel> {
    let dir = cache.join("kernels").join(spec.name);
    let release = package.release();
    let downloads = cache.join("downloads").join(spec.name);
    reset_dir(&downloads)?;
    println!(
        "vm-test: downloading {} {} ({} from {}) for kernel {}",
        package.name,
        package.version,
        package.payload.join(", "),
        package.suite,
        spec.name
    );
    apt.download(&downloads, &package.payload, &package.version)?;

    let unpacked = dir.join(format!("{release}.partial"));
    reset_dir(&unpacked)?;
    let mut debs: Vec<PathBuf> = fs::read_dir(&downloads)
        .with_context(|| format!("listing {}", downloads.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    debs.sort();
    if debs.len() != package.payload.len() {
        bail!(
            "apt-get download left {} packages in {}, expected {} ({})",
            debs.len(),
            downloads.display(),
            package.payload.len(),
            package.payload.join(", ")
        );
    }
    for deb in &debs {
        process::output(
            Command::new("dpkg-deb").arg("-x").arg(deb).arg(&unpacked),
            "dpkg-deb (package dpkg) unpacks the kernel packages",
        )?;
    }
    let final_dir = dir.join(&release);
    if final_dir.exists() {
        fs::remove_dir_all(&final_dir)
            .with_context(|| format!("removing {}", final_dir.display()))?;
    }
    fs::rename(&unpacked, &final_dir)
        .with_context(|| format!("renaming {} to {}", unpacked.display(), final_dir.display()))?;

    let vmlinuz = find_vmlinuz(&final_dir, &release)?;
    let modules_base = ["", "usr"]
        .iter()
        .map(|sub| final_dir.join(sub))
        .find(|base| base.join("lib/modules").join(&release).is_dir())
        .with_context(|| {
            format!(
                "no lib/modules/{release} or usr/lib/modules/{release} in {}",
                final_dir.display()
            )
        })?;
    println!("vm-test: indexing the modules of {release} (depmod)");
    process::output(
        Command::new("depmod")
            .arg("-b")
            .arg(&modules_base)
            .arg(&release),
        "depmod (package kmod) indexes the guest kernel's modules",
    )?;

    let relative = |path: &Path| -> Result<String> {
        Ok(path
            .strip_prefix(&dir)
            .with_context(|| format!("{} is outside {}", path.display(), dir.display()))?
            .to_string_lossy()
            .into_owned())
    };
    let record = format!(
        "# written by `cargo xtask vm-test` once the kernel below was complete\n\
         release={release}\nversion={}\nsuite={}\npackages={}\nvmlinuz={}\nmodules_base={}\n",
        package.version,
        package.suite,
        package.payload.join(" "),
        relative(&vmlinuz)?,
        relative(&modules_base)?,
    );
    let tmp = dir.join("current.tmp");
    fs::write(&tmp, record).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, dir.join("current")).context("recording the current kernel")?;

    // What older kernels and this download left.
    for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() && path != final_dir {
            fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    fs::remove_dir_all(&downloads).with_context(|| format!("removing {}", downloads.display()))?;
    // The downloads directory itself, once no other kernel is being fetched.
    let _ = fs::remove_dir(cache.join("downloads"));

    load(cache, spec).with_context(|| {
        format!(
            "the kernel just unpacked in {} is incomplete (no image or no modules.dep)",
            dir.display()
        )
    })
}

/// The kernel image in an unpacked tree: `boot/vmlinuz-RELEASE` (bookworm) or
/// `usr/lib/modules/RELEASE/vmlinuz` (trixie's `linux-binary-…`).
fn find_vmlinuz(root: &Path, release: &str) -> Result<PathBuf> {
    [
        format!("boot/vmlinuz-{release}"),
        format!("usr/lib/modules/{release}/vmlinuz"),
        format!("lib/modules/{release}/vmlinuz"),
    ]
    .iter()
    .map(|rel| root.join(rel))
    .find(|p| p.is_file())
    .with_context(|| format!("no kernel image for {release} in {}", root.display()))
}

fn reset_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

// ---------------------------------------------------------------------------------------------
// The private apt

/// apt-get and apt-cache with a configuration of their own (`APT_CONFIG`): sources, state and
/// cache under `dir`, and none of the machine's `/etc/apt`.
struct Apt {
    config: PathBuf,
}

/// An image package chosen for a spec.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Package {
    name: String,
    version: String,
    suite: String,
    /// The packages to download: the image package and its `…-RELEASE` dependencies.
    payload: Vec<String>,
}

impl Package {
    fn release(&self) -> String {
        self.name
            .strip_prefix("linux-image-")
            .unwrap_or(&self.name)
            .to_string()
    }
}

impl Apt {
    /// Writes the private configuration and runs `apt-get update` with it.
    fn updated(dir: &Path) -> Result<Apt> {
        let etc = dir.join("etc");
        let parts = etc.join("apt.conf.d");
        for sub in [
            parts.clone(),
            etc.join("sources.list.d"),
            etc.join("preferences.d"),
            dir.join("state/lists/partial"),
            dir.join("cache/archives/partial"),
        ] {
            fs::create_dir_all(&sub).with_context(|| format!("creating {}", sub.display()))?;
        }
        let sources: String = APT_SOURCES
            .iter()
            .map(|(uri, suite)| {
                format!("deb [arch=amd64 signed-by={ARCHIVE_KEYRING}] {uri} {suite} main\n")
            })
            .collect();
        fs::write(etc.join("sources.list"), sources).context("writing the private sources.list")?;
        let d = |p: &Path| p.display().to_string();
        let config = format!(
            "// Written by `cargo xtask vm-test`: an apt that only fetches guest kernels.\n\
             Dir::Etc::Parts \"{}\";\n\
             Dir::Etc::SourceList \"{}\";\n\
             Dir::Etc::SourceParts \"{}\";\n\
             Dir::Etc::Preferences \"{}\";\n\
             Dir::Etc::PreferencesParts \"{}\";\n\
             Dir::State \"{}\";\n\
             Dir::State::status \"/dev/null\";\n\
             Dir::Cache \"{}\";\n\
             APT::Architecture \"amd64\";\n\
             APT::Architectures {{ \"amd64\"; }};\n\
             Acquire::Languages \"none\";\n\
             APT::Sandbox::User \"root\";\n",
            d(&parts),
            d(&etc.join("sources.list")),
            d(&etc.join("sources.list.d")),
            d(&etc.join("preferences")),
            d(&etc.join("preferences.d")),
            d(&dir.join("state")),
            d(&dir.join("cache")),
        );
        let path = etc.join("apt.conf");
        fs::write(&path, config).context("writing the private apt.conf")?;
        let apt = Apt { config: path };
        println!(
            "vm-test: apt-get update (private configuration in {})",
            dir.display()
        );
        process::output(
            &mut apt.command("apt-get", ["update", "-q"]),
            "the kernels come from deb.debian.org: is it reachable?",
        )?;
        Ok(apt)
    }

    fn command<const N: usize>(&self, program: &str, args: [&str; N]) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(args).env("APT_CONFIG", &self.config);
        cmd
    }

    /// The newest package matching `spec`, with what to download for it.
    fn newest(&self, spec: &KernelSpec) -> Result<Package> {
        let found = process::output(
            &mut self.command(
                "apt-cache",
                ["search", "--names-only", &template_regex(spec.package)],
            ),
            "apt-cache search failed",
        )?;
        let mut candidates: Vec<(Vec<u64>, String)> = found
            .lines()
            .filter_map(|line| line.split_whitespace().next())
            .filter_map(|name| Some((template_numbers(name, spec.package)?, name.to_string())))
            .collect();
        candidates.sort();
        let Some((_, name)) = candidates.pop() else {
            bail!(
                "no package matching {} in {}: has Debian dropped it? Update KERNELS in \
                 xtask/src/vm/kernels.rs",
                spec.package,
                spec.suite
            );
        };
        let show = process::output(
            &mut self.command("apt-cache", ["show", "--no-all-versions", &name]),
            "apt-cache show failed",
        )?;
        let field = |key: &str| {
            show.lines()
                .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
                .map(|v| v.trim().to_string())
        };
        let version = field("Version").with_context(|| format!("{name} has no Version"))?;
        let depends = field("Depends").unwrap_or_default();
        let release = name.strip_prefix("linux-image-").unwrap_or(&name);
        let mut payload = vec![name.clone()];
        payload.extend(payload_dependencies(&depends, release));
        let madison = process::output(
            &mut self.command("apt-cache", ["madison", &name]),
            "apt-cache madison failed",
        )?;
        let suite = suite_of(&madison, &version).unwrap_or_else(|| spec.suite.to_string());
        Ok(Package {
            name,
            version,
            suite,
            payload,
        })
    }

    /// `apt-get download NAME=VERSION…` into `dir`.
    fn download(&self, dir: &Path, names: &[String], version: &str) -> Result<()> {
        let mut cmd = Command::new("apt-get");
        cmd.arg("download")
            .arg("-q")
            .args(names.iter().map(|n| format!("{n}={version}")))
            .env("APT_CONFIG", &self.config)
            .current_dir(dir);
        process::output(&mut cmd, "could not download the kernel packages")?;
        Ok(())
    }
}

/// The dependencies in a `Depends:` field that carry the kernel payload: those named
/// `…-RELEASE` (`linux-binary-R`, `linux-modules-R`, `linux-base-R` from trixie on).
fn payload_dependencies(depends: &str, release: &str) -> Vec<String> {
    let suffix = format!("-{release}");
    depends
        .split(',')
        .flat_map(|alternatives| alternatives.split('|'))
        .filter_map(|dep| dep.split_whitespace().next())
        .filter(|name| name.ends_with(&suffix) && name.starts_with("linux-"))
        .map(str::to_string)
        .fold(Vec::new(), |mut all, name| {
            if !all.contains(&name) {
                all.push(name);
            }
            all
        })
}

/// The suite of `version` in `apt-cache madison` output
/// (`pkg | 6.1.192-2 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages`).
fn suite_of(madison: &str, version: &str) -> Option<String> {
    madison.lines().find_map(|line| {
        let mut columns = line.split('|').map(str::trim);
        let (_, v, source) = (columns.next()?, columns.next()?, columns.next()?);
        (v == version).then(|| {
            source
                .split_whitespace()
                .nth(1)?
                .split('/')
                .next()
                .map(String::from)
        })?
    })
}

/// The numbers `#` stands for in `name`, if `name` matches `template`.
fn template_numbers(name: &str, template: &str) -> Option<Vec<u64>> {
    let mut numbers = Vec::new();
    let mut rest = name;
    let mut parts = template.split('#').peekable();
    while let Some(literal) = parts.next() {
        rest = rest.strip_prefix(literal)?;
        if parts.peek().is_some() {
            let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            if digits == 0 {
                return None;
            }
            numbers.push(rest[..digits].parse().ok()?);
            rest = &rest[digits..];
        }
    }
    rest.is_empty().then_some(numbers)
}

/// The POSIX extended regex `apt-cache search` takes for a template.
fn template_regex(template: &str) -> String {
    let mut regex = String::from("^");
    for c in template.chars() {
        match c {
            '#' => regex.push_str("[0-9]+"),
            '.' | '+' | '*' | '?' | '(' | ')' | '[' | ']' | '{' | '}' | '|' | '\\' | '^' | '$' => {
                regex.push('\\');
                regex.push(c);
            }
            _ => regex.push(c),
        }
    }
    regex.push('$');
    regex
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_match_kernel_package_names_and_order_them() {
        let t = "linux-image-6.1.0-#-amd64";
        assert_eq!(
            template_numbers("linux-image-6.1.0-56-amd64", t),
            Some(vec![56])
        );
        assert_eq!(template_numbers("linux-image-6.1.0-56-amd64-dbg", t), None);
        assert_eq!(
            template_numbers("linux-image-6.1.0-56-cloud-amd64", t),
            None
        );
        assert_eq!(template_numbers("linux-image-6.1.0--amd64", t), None);
        let t7 = "linux-image-7.#.#+deb13-amd64";
        let mut names = [
            "linux-image-7.2.9+deb13-amd64",
            "linux-image-7.10.1+deb13-amd64",
            "linux-image-7.2.12+deb13-amd64",
        ];
        names.sort_by_key(|n| template_numbers(n, t7).unwrap());
        assert_eq!(names.last(), Some(&"linux-image-7.10.1+deb13-amd64"));
        assert_eq!(
            template_regex(t7),
            r"^linux-image-7\.[0-9]+\.[0-9]+\+deb13-amd64$"
        );
    }

    #[test]
    fn payload_is_the_image_and_its_release_named_dependencies() {
        let trixie = "dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, \
                      linux-base-7.2.12+deb13-amd64 (= 7.2.12-1~bpo13+1), \
                      linux-binary-7.2.12+deb13-amd64 (= 7.2.12-1~bpo13+1), \
                      linux-modules-7.2.12+deb13-amd64 (= 7.2.12-1~bpo13+1)";
        assert_eq!(
            payload_dependencies(trixie, "7.2.12+deb13-amd64"),
            [
                "linux-base-7.2.12+deb13-amd64",
                "linux-binary-7.2.12+deb13-amd64",
                "linux-modules-7.2.12+deb13-amd64"
            ]
        );
        let bookworm =
            "kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool";
        assert!(payload_dependencies(bookworm, "6.1.0-56-amd64").is_empty());
    }

    #[test]
    fn suite_comes_from_madison() {
        let madison = "linux-image-6.1.0-56-amd64 |  6.1.192-2 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages\n\
                       linux-image-6.1.0-56-amd64 |  6.1.192-1 | http://deb.debian.org/debian bookworm/main amd64 Packages\n";
        assert_eq!(
            suite_of(madison, "6.1.192-2").as_deref(),
            Some("bookworm-security")
        );
        assert_eq!(suite_of(madison, "6.1.192-1").as_deref(), Some("bookworm"));
        assert_eq!(suite_of(madison, "1"), None);
    }

    #[test]
    fn kernels_are_selected_by_name() {
        assert_eq!(select(&[]).unwrap().len(), KERNELS.len());
        assert_eq!(select(&["6.12".into()]).unwrap()[0].name, "6.12");
        assert!(select(&["5.10".into()])
            .unwrap_err()
            .to_string()
            .contains("6.1, 6.12, 7.x"));
    }

    #[test]
    fn a_cached_kernel_is_loaded_only_when_complete() {
        let dir = std::env::temp_dir().join(format!("xtask-vm-kernels-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let spec = KERNELS[0];
        let kdir = dir.join("kernels").join(spec.name);
        fs::create_dir_all(kdir.join("r/boot")).unwrap();
        fs::create_dir_all(kdir.join("r/lib/modules/6.1.0-1-amd64")).unwrap();
        fs::write(kdir.join("r/boot/vmlinuz-6.1.0-1-amd64"), b"").unwrap();
        fs::write(
            kdir.join("current"),
            "release=6.1.0-1-amd64\nversion=6.1.1-1\nsuite=bookworm\n\
             vmlinuz=r/boot/vmlinuz-6.1.0-1-amd64\nmodules_base=r\n",
        )
        .unwrap();
        assert_eq!(load(&dir, spec), None, "no modules.dep yet");
        fs::write(kdir.join("r/lib/modules/6.1.0-1-amd64/modules.dep"), b"").unwrap();
        let kernel = load(&dir, spec).unwrap();
        assert_eq!(kernel.release, "6.1.0-1-amd64");
        assert_eq!(
            kernel.modules_dir(),
            kdir.join("r/lib/modules/6.1.0-1-amd64")
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
