//! The built-in presets and the `init` template: the TOML files of `policies/`, embedded.
//!
//! - `unrestricted`: everything allowed, everything audited.
//! - `sandboxed` (the default): the system readable, only the workspace and tmp writable,
//!   secrets hidden, dangerous commands denied, publishing asked, network asked.
//! - `locked`: a few programs, no network, `default = "deny"`.
//! - `ci`: a build-and-test job on a CI runner: workspace and toolchain caches writable,
//!   package registries reachable, secrets hidden, publishing and pushing denied, no `ask`.

/// `policies/init.toml`.
pub(crate) const INIT_TEMPLATE: &str = include_str!("../../policies/init.toml");

const PRESET_TEXTS: [(&str, &str); 4] = [
    (
        "unrestricted",
        include_str!("../../policies/unrestricted.toml"),
    ),
    ("sandboxed", include_str!("../../policies/sandboxed.toml")),
    ("locked", include_str!("../../policies/locked.toml")),
    ("ci", include_str!("../../policies/ci.toml")),
];

/// The TOML text of a preset.
pub(crate) fn text(name: &str) -> Option<&'static str> {
    PRESET_TEXTS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, text)| *text)
}

/// "unrestricted, sandboxed, locked or ci", for error messages.
pub(crate) fn names_expected() -> String {
    match crate::PRESETS.split_last() {
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}
