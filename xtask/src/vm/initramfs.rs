//! The guests' initramfs: busybox, the modules 9p needs, and an `/init` that turns the
//! host's root into the guest's.
//!
//! The generic Debian kernels have 9p as modules, so `/init` inserts them (and what they
//! depend on, as `modprobe --show-depends` lists it on the host; `.ko.xz`/`.ko.zst` are
//! decompressed here because busybox `insmod` reads plain ELF only), mounts the host root
//! read-only over 9p, mounts the kernel filesystems and a tmpfs on every directory tests
//! write to inside it, moves it onto `/` and enters it (as `switch_root` does: in a mere
//! chroot the kernel refuses new user namespaces), and runs the script named by
//! `vmtest.script=` with the host's `sh`. Then it powers off. PID 1 stays busybox `sh`
//! (copied to the tmpfs `/run/vm-test/`), which reaps orphans while it waits for the script
//! (a test that checks a process is gone must not find a zombie).
//!
//! Modules the tests make the kernel load later (e.g. `unix_diag` for sock_diag) come from the
//! cache through the host's `modprobe -d`: `/proc/sys/kernel/modprobe` points at a wrapper.
//!
//! Lines starting with `@@vm-test` on the second serial port (the results port) are for
//! [`super::report`]: `init-failed` says the guest could not start the tests.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};

use super::kernels::Kernel;
use crate::process;

/// The 9p share's mount tag (`-virtfs …,mount_tag=`).
pub const MOUNT_TAG: &str = "hostroot";

/// Modules `/init` inserts (with their dependencies) before it can mount the host root.
/// Built-in ones are skipped (6.12 has virtio_pci built in, 6.1 has it as a module).
const BOOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p"];

/// Where the statically linked busybox comes from (Debian's `busybox-static`).
const BUSYBOX: &str = "/bin/busybox";

/// The guest's `/init` (busybox `sh`). On the kernel command line, `vmtest.script=` names the
/// test script, `vmtest.modules=` the modules base directory (for `modprobe -d`), and
/// `vmtest.keep=` (`:`-separated) the host directories that must stay visible even under the
/// guest's tmpfs mounts (a workspace in /tmp, a cache in /root): all host paths.
const INIT: &str = r#"#!/bin/busybox sh
# /init of the `cargo xtask vm-test` guests (written by xtask/src/vm/initramfs.rs).
export PATH=/bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

# The results port: raw, so nothing rewrites what the tests print.
stty -F /dev/ttyS1 raw -echo
fail() {
    echo "vm-test init: $*"
    echo "@@vm-test init-failed $*" > /dev/ttyS1
    poweroff -f
}
arg() {
    for word in $(cat /proc/cmdline); do
        case "$word" in "vmtest.$1="*) echo "${word#*=}" ;; esac
    done
}

for module in $(cat /modules/order); do
    insmod "/modules/$module" || fail "insmod $module failed"
done

R=/mnt/host
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot "$R" \
    || fail "cannot mount the host root over 9p"
ip link set lo up || fail "cannot bring up lo"
hostname vm-test

mount -t proc proc "$R/proc" || fail "mount proc"
mount -t sysfs sysfs "$R/sys" || fail "mount sysfs"
mount -t devtmpfs devtmpfs "$R/dev" || fail "mount devtmpfs"
mkdir -p "$R/dev/pts" "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts "$R/dev/pts" || fail "mount devpts"
mount -t tmpfs -o mode=1777 tmpfs "$R/dev/shm" || fail "mount /dev/shm"
ln -sfn /proc/self/fd "$R/dev/fd"
ln -sfn /proc/self/fd/0 "$R/dev/stdin"
ln -sfn /proc/self/fd/1 "$R/dev/stdout"
ln -sfn /proc/self/fd/2 "$R/dev/stderr"
mount -t securityfs securityfs "$R/sys/kernel/security" || fail "mount securityfs"
mount -t bpf bpf "$R/sys/fs/bpf" || fail "mount bpffs"
mount -t cgroup2 cgroup2 "$R/sys/fs/cgroup" || fail "mount cgroup2"
mount -t tracefs tracefs "$R/sys/kernel/tracing" || fail "mount tracefs"
# Host paths the guest needs (the workspace, the target directory, the cached modules):
# those under a directory about to get a tmpfs are set aside and put back on top of it.
kept=""
n=0
for path in $(arg keep | tr ':' ' '); do
    case "$path" in
    /tmp/* | /var/* | /root/* | /run/*)
        mkdir -p "/mnt/keep/$n"
        mount --bind "$R$path" "/mnt/keep/$n" || fail "cannot bind $path"
        kept="$kept $n:$path"
        n=$((n + 1))
        ;;
    esac
done
for dir in tmp var root run; do
    mount -t tmpfs -o mode=0755 tmpfs "$R/$dir" || fail "mount a tmpfs on /$dir"
done
for entry in $kept; do
    mkdir -p "$R${entry#*:}"
    mount --move "/mnt/keep/${entry%%:*}" "$R${entry#*:}" || fail "cannot put back ${entry#*:}"
done
chmod 1777 "$R/tmp"
mkdir -p -m 1777 "$R/var/tmp"
mkdir -p "$R/run/lock"
ln -s /run "$R/var/run"
ln -s /run/lock "$R/var/lock"

script=$(arg script)
[ -n "$script" ] || fail "no vmtest.script= on the kernel command line"

# What PID 1 needs once the host root is /: busybox, on the tmpfs /run.
mkdir -p "$R/run/vm-test"
cp /bin/busybox "$R/run/vm-test/busybox"
# Modules the kernel asks for: the host's modprobe on the cached modules. The kernel runs
# this helper in init's root, which is the host root from here on.
printf '#!/run/vm-test/busybox sh\nexec /sbin/modprobe -d %s "$@"\n' "$(arg modules)" \
    > "$R/run/vm-test/modprobe"
chmod 755 "$R/run/vm-test/modprobe"
echo /run/vm-test/modprobe > /proc/sys/kernel/modprobe
cat > "$R/run/vm-test/pid1" <<'PID1'
#!/run/vm-test/busybox sh
# PID 1 in the host root: run the test script with the host's sh, reap orphans while it
# runs (busybox sh waits for any child), power off.
echo "vm-test init: running $1"
/bin/sh "$1"
echo "vm-test init: $1 exited with $?"
exec /run/vm-test/busybox poweroff -f
PID1

# Make the host root the root of the mount namespace, as switch_root does: in a mere chroot
# the kernel refuses new user namespaces (current_chrooted()), which the supervisor needs.
cd "$R" || fail "cd $R"
mount --move . / || fail "cannot move the host root onto /"
exec chroot . /run/vm-test/busybox sh /run/vm-test/pid1 "$script"
"#;

/// Builds the initramfs for `kernel` in `dir` and returns its path.
///
/// Cheap (busybox, a few decompressed modules, an uncompressed cpio), so it is rebuilt on
/// every run and can never be stale.
pub fn build(kernel: &Kernel, dir: &Path) -> Result<PathBuf> {
    let tree = dir.join("initramfs");
    if tree.exists() {
        fs::remove_dir_all(&tree).with_context(|| format!("removing {}", tree.display()))?;
    }
    for sub in ["bin", "dev", "proc", "sys", "mnt/host", "modules"] {
        fs::create_dir_all(tree.join(sub))
            .with_context(|| format!("creating {}", tree.join(sub).display()))?;
    }
    if !Path::new(BUSYBOX).is_file() {
        bail!("{BUSYBOX} is missing: install busybox-static (`cargo xtask setup` does)");
    }
    fs::copy(BUSYBOX, tree.join("bin/busybox")).context("copying busybox")?;
    write_executable(&tree.join("init"), INIT)?;

    let mut order = String::new();
    for module in boot_modules(kernel)? {
        let name = module_file_name(&module)?;
        decompress_module(&module, &tree.join("modules").join(&name))?;
        order.push_str(&name);
        order.push('\n');
    }
    fs::write(tree.join("modules/order"), order).context("writing modules/order")?;

    let image = dir.join("initramfs.cpio");
    pack_cpio(&tree, &image)?;
    Ok(image)
}

/// The module files to insert, dependencies first, each once.
fn boot_modules(kernel: &Kernel) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = Vec::new();
    for module in BOOT_MODULES {
        let listing = process::output(
            Command::new("modprobe")
                .arg("-d")
                .arg(&kernel.modules_base)
                .args(["-S", &kernel.release, "--show-depends", module]),
            "modprobe (package kmod) lists the modules 9p needs",
        )?;
        for path in insmod_paths(&listing) {
            if !files.contains(&path) {
                files.push(path);
            }
        }
    }
    Ok(files)
}

/// The files in `modprobe --show-depends` output (`insmod PATH [options]` lines; `builtin
/// NAME` lines need nothing).
fn insmod_paths(listing: &str) -> Vec<PathBuf> {
    listing
        .lines()
        .filter_map(|line| line.strip_prefix("insmod "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(PathBuf::from)
        .collect()
}

/// `9p.ko.xz` → `9p.ko`.
fn module_file_name(path: &Path) -> Result<String> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("odd module path {}", path.display()))?;
    let plain = [".xz", ".zst", ".gz"]
        .iter()
        .find_map(|ext| name.strip_suffix(ext))
        .unwrap_or(name);
    Ok(plain.to_string())
}

fn decompress_module(from: &Path, to: &Path) -> Result<()> {
    let tool = match from.extension().and_then(|e| e.to_str()) {
        Some("xz") => "xz",
        Some("zst") => "zstd",
        Some("gz") => "gzip",
        _ => {
            fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
            return Ok(());
        }
    };
    let output = Command::new(tool)
        .arg("-dc")
        .arg(from)
        .output()
        .with_context(|| format!("could not run {tool} to decompress {}", from.display()))?;
    if !output.status.success() {
        bail!(
            "{tool} -dc {} failed: {}",
            from.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    fs::write(to, output.stdout).with_context(|| format!("writing {}", to.display()))
}

fn write_executable(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", path.display()))
}

/// `find . | cpio -o -H newc` in `tree`, into `image` (uncompressed: the kernel reads it
/// as is, and it is only a few megabytes).
fn pack_cpio(tree: &Path, image: &Path) -> Result<()> {
    let mut entries = Vec::new();
    collect(tree, Path::new("."), &mut entries)?;
    let out = fs::File::create(image).with_context(|| format!("creating {}", image.display()))?;
    let mut child = Command::new("cpio")
        .args(["-o", "-H", "newc", "--quiet"])
        .current_dir(tree)
        .stdin(Stdio::piped())
        .stdout(out)
        .spawn()
        .context("could not run cpio (package cpio)")?;
    {
        let mut stdin = child.stdin.take().context("cpio's stdin")?;
        for entry in &entries {
            writeln!(stdin, "{}", entry.display()).context("feeding cpio")?;
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("cpio failed ({status}) packing {}", tree.display());
    }
    Ok(())
}

/// Every path under `dir`, relative to the tree root, parents before children.
fn collect(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    out.push(rel.to_path_buf());
    let path = root.join(rel);
    if path.is_dir() && !path.is_symlink() {
        let mut children: Vec<_> = fs::read_dir(&path)
            .with_context(|| format!("listing {}", path.display()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()?;
        children.sort();
        for child in children {
            collect(root, &rel.join(child), out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_depends_output_gives_files_in_order() {
        let listing = "builtin virtio_pci\n\
                       insmod /k/kernel/fs/netfs/netfs.ko.xz \n\
                       insmod /k/kernel/net/9p/9pnet.ko.xz \n\
                       insmod /k/kernel/net/9p/9pnet_virtio.ko.xz debug=1\n";
        assert_eq!(
            insmod_paths(listing),
            [
                PathBuf::from("/k/kernel/fs/netfs/netfs.ko.xz"),
                PathBuf::from("/k/kernel/net/9p/9pnet.ko.xz"),
                PathBuf::from("/k/kernel/net/9p/9pnet_virtio.ko.xz"),
            ]
        );
        assert_eq!(module_file_name(Path::new("/k/9p.ko.xz")).unwrap(), "9p.ko");
        assert_eq!(module_file_name(Path::new("/k/9p.ko")).unwrap(), "9p.ko");
    }

    #[test]
    fn init_mounts_what_the_tests_need() {
        for needed in [
            "securityfs",
            "-t bpf",
            "cgroup2",
            "tracefs",
            "cache=loose",
            "poweroff -f",
            "stty -F /dev/ttyS1 raw",
        ] {
            assert!(INIT.contains(needed), "/init lacks {needed}");
        }
        assert!(INIT.contains(MOUNT_TAG));
    }
}
