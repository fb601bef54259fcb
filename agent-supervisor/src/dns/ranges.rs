//! Address ranges a public name must not point into (DNS rebinding): loopback, private,
//! link-local, carrier-grade NAT, unique-local, unspecified, multicast and the cloud metadata
//! addresses. An answer's address in one of them is dropped unless a policy rule names an IP
//! or CIDR holding it (see [`named_by_policy`]).
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use agent_supervisor_policy::{Decision, IpNet, Policy};

/// The range `ip` falls in, when it is one a host name must not lead to.
pub fn special_range(ip: IpAddr) -> Option<&'static str> {
    match ip.to_canonical() {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    Some(if ip == Ipv4Addr::new(169, 254, 169, 254) {
        "cloud metadata"
    } else if ip.is_loopback() {
        "loopback"
    } else if ip.is_private() {
        "private"
    } else if ip.is_link_local() {
        "link-local"
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        "carrier-grade NAT"
    } else if ip.is_unspecified() || o[0] == 0 {
        "this network"
    } else if ip.is_multicast() || ip.is_broadcast() {
        "multicast or broadcast"
    } else {
        return None;
    })
}

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    Some(
        if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
            "cloud metadata"
        } else if ip.is_loopback() {
            "loopback"
        } else if ip.is_unspecified() {
            "unspecified"
        } else if (s[0] & 0xfe00) == 0xfc00 {
            "unique-local"
        } else if (s[0] & 0xffc0) == 0xfe80 {
            "link-local"
        } else if ip.is_multicast() {
            "multicast"
        } else if let Some(v4) = ip.to_ipv4() {
            // IPv4-compatible (::a.b.c.d) and NAT64-free embeddings still reach IPv4 space.
            return special_v4(v4).filter(|_| s[0..5].iter().all(|&w| w == 0));
        } else {
            return None;
        },
    )
}

/// Does a specific (not catch-all, not `*`) allow or ask rule name an IP or CIDR holding
/// `ip`? Then the user said that range is wanted and a name may lead there.
pub fn named_by_policy(policy: &Policy, ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    policy.rules.iter().enumerate().any(|(i, rule)| {
        rule.decision != Decision::Deny
            && !rule.catch_all
            && policy.network_rule_ips(i).is_some_and(|(nets, _)| {
                nets.iter()
                    .any(|net: &IpNet| net.prefix_len() > 0 && net.contains(&ip))
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebinding_targets_are_special() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "::1",
            "::",
            "fd00:ec2::254",
            "fd12::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
        ] {
            assert!(
                special_range(ip.parse().unwrap()).is_some(),
                "{ip} must be special"
            );
        }
        for ip in [
            "140.82.112.5",
            "198.51.100.7",
            "2001:db8::7",
            "2606:4700::1",
            "::ffff:140.82.112.5",
        ] {
            assert_eq!(special_range(ip.parse().unwrap()), None, "{ip}");
        }
        assert_eq!(
            special_range("169.254.169.254".parse().unwrap()),
            Some("cloud metadata")
        );
        assert_eq!(
            special_range("fd00:ec2::254".parse().unwrap()),
            Some("cloud metadata")
        );
    }

    #[test]
    fn only_a_specific_ip_rule_opens_a_range() {
        let vars = agent_supervisor_policy::Vars {
            workspace: "/ws".into(),
            home: "/h".into(),
            tmp: "/tmp".into(),
        };
        let policy = |rules: &str| {
            Policy::parse(
                "t.toml",
                &format!("version = 1\nextends = \"none\"\n{rules}"),
                std::path::Path::new("/"),
                &vars,
            )
            .unwrap()
        };
        let lan = "10.1.2.3".parse().unwrap();
        let p = policy("[network]\nallow = [\"*\", \"*.corp.test\"]\n");
        assert!(!named_by_policy(&p, lan));
        let p = policy("[network]\nallow = [\"*:443\"]\n");
        assert!(!named_by_policy(&p, lan));
        let p = policy("[network]\ndeny = [\"10.0.0.0/8\"]\n");
        assert!(!named_by_policy(&p, lan));
        let p = policy("[network]\nallow = [\"10.0.0.0/8:443\"]\n");
        assert!(named_by_policy(&p, lan));
        assert!(named_by_policy(&p, "::ffff:10.9.9.9".parse().unwrap()));
    }
}
