//! Which network rules of a policy the kernel maps can hold, and in what form.
//!
//! The kernel backstop must never allow what the supervisor would refuse. Its maps hold only
//! allowing entries, looked up by address and port, while [`Policy::decide`] picks the
//! strictest matching *specific* rule, then the strictest catch-all, then the default. So an
//! allow rule goes into the kernel only when no stricter rule could win for any destination it
//! covers:
//! - a specific allow rule, when no specific ask/deny rule with an IP, CIDR or `*` host
//!   overlaps it (same family and nested networks, and the same port or either one any port);
//! - a catch-all allow rule (`*`), when no other IP-matching network rule is stricter at all.
//!
//! Host-name rules are left out on both sides: they match only when the host name is known;
//! the session's DNS resolver writes the addresses of each allowed answer, for the ports of
//! the name's rule, until the answer expires (`crate::dns::answers`). Rules that don't
//! qualify cost nothing in correctness: the supervisor writes an exact entry for each
//! destination it allows before making the call ([`super::network::NetworkMaps::before_connect`]).
//!
//! Addresses in the kernel maps are IPv6, IPv4 ones IPv4-mapped ([`kernel_prefixes`]).
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv6Addr};

use agent_supervisor_policy::{Decision, IpNet, Policy, Target};
use ipnet::Ipv6Net;

/// The IPv4-mapped block `::ffff:0:0/96`, where IPv4 addresses live in the kernel maps.
const V4_MAPPED_BITS: u8 = 96;

/// The networks and port (None: any) of one rule, as [`Policy::network_rule_ips`] gives them.
type RuleIps = (Vec<IpNet>, Option<u16>);

/// The (network, port) pairs of `policy`'s allow rules that the kernel may allow on its own
/// (see the module docs); `None` port: any port.
pub fn kernel_allow_rules(policy: &Policy) -> Vec<(IpNet, Option<u16>)> {
    let network_rules: Vec<(usize, RuleIps)> = policy
        .rules
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(r.target, Target::Network { .. }))
        .filter_map(|(i, _)| Some((i, policy.network_rule_ips(i)?)))
        .collect();
    let stricter = |i: usize| policy.rules[i].decision > Decision::Allow;
    let mut out = Vec::new();
    for (i, (nets, port)) in &network_rules {
        let rule = &policy.rules[*i];
        if rule.decision != Decision::Allow {
            continue;
        }
        let blocked = if rule.catch_all {
            network_rules.iter().any(|(j, _)| stricter(*j))
        } else {
            network_rules.iter().any(|(j, (other_nets, other_port))| {
                stricter(*j)
                    && !policy.rules[*j].catch_all
                    && ports_overlap(*port, *other_port)
                    && nets
                        .iter()
                        .any(|a| other_nets.iter().any(|b| nets_overlap(a, b)))
            })
        };
        if !blocked {
            out.extend(nets.iter().map(|net| (*net, *port)));
        }
    }
    out
}

fn ports_overlap(a: Option<u16>, b: Option<u16>) -> bool {
    a.is_none() || b.is_none() || a == b
}

/// CIDR networks overlap exactly when one contains the other.
fn nets_overlap(a: &IpNet, b: &IpNet) -> bool {
    a.contains(b) || b.contains(a)
}

/// An address as the kernel maps spell it: IPv6, IPv4 as IPv4-mapped.
pub fn kernel_address(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// The IPv6 prefixes that cover exactly the addresses `net` matches in [`Policy::decide`]:
/// an IPv4 network becomes its IPv4-mapped prefix; an IPv6 network loses the IPv4-mapped
/// block (the policy reads a v4-mapped address as IPv4, so `[::]/0` never matches one),
/// which splits a network holding that block into one prefix per level above it.
pub fn kernel_prefixes(net: IpNet) -> Vec<Ipv6Net> {
    let mapped =
        Ipv6Net::new(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), V4_MAPPED_BITS).expect("/96");
    match net {
        IpNet::V4(v4) => vec![Ipv6Net::new(
            v4.network().to_ipv6_mapped(),
            V4_MAPPED_BITS + v4.prefix_len(),
        )
        .expect("an IPv4 prefix plus 96 is at most 128")],
        IpNet::V6(v6) if mapped.contains(&v6) => vec![],
        IpNet::V6(v6) if !v6.contains(&mapped) => vec![v6.trunc()],
        IpNet::V6(v6) => {
            let mut out = Vec::new();
            let mut current = v6.trunc();
            while current.prefix_len() < V4_MAPPED_BITS {
                let mut halves = current
                    .subnets(current.prefix_len() + 1)
                    .expect("a prefix shorter than /96 splits");
                let (first, second) = (
                    halves.next().expect("two halves"),
                    halves.next().expect("two halves"),
                );
                let (keep, descend) = if first.contains(&mapped) {
                    (second, first)
                } else {
                    (first, second)
                };
                out.push(keep);
                current = descend;
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use agent_supervisor_policy::Vars;

    use super::*;

    fn policy(rules: &str) -> Policy {
        let vars = Vars {
            workspace: "/ws".into(),
            home: "/home/u".into(),
            tmp: "/tmp".into(),
        };
        let text = format!("version = 1\ndefault = \"deny\"\n{rules}");
        Policy::parse("test.toml", &text, Path::new("/"), &vars).expect("valid policy")
    }

    fn rule(decision: &str, spec: &str) -> String {
        format!("[[rule]]\ndecision = \"{decision}\"\nnetwork = \"{spec}\"\n")
    }

    fn shown(rules: Vec<(IpNet, Option<u16>)>) -> Vec<String> {
        rules
            .into_iter()
            .map(|(n, p)| format!("{n}:{}", p.map_or("*".into(), |p| p.to_string())))
            .collect()
    }

    #[test]
    fn allow_rules_without_stricter_overlaps_go_to_the_kernel() {
        let p = policy(&[rule("allow", "10.0.0.0/8:443"), rule("allow", "[::1]:*")].concat());
        assert_eq!(
            shown(kernel_allow_rules(&p)),
            ["10.0.0.0/8:443", "::1/128:*"]
        );
    }

    #[test]
    fn an_overlapping_deny_or_ask_keeps_an_allow_rule_out() {
        let p = policy(
            &[
                rule("allow", "10.0.0.0/8:*"),
                rule("deny", "10.1.2.3:22"),
                rule("allow", "192.168.0.0/16:80"),
                rule("ask", "192.168.1.0/24:443"), // other port: no overlap
                rule("allow", "172.16.0.0/12:*"),
                rule("ask", "*:5432"), // any host, one port: overlaps every any-port rule
            ]
            .concat(),
        );
        assert_eq!(shown(kernel_allow_rules(&p)), ["192.168.0.0/16:80"]);
    }

    #[test]
    fn catch_all_allow_only_without_any_stricter_rule() {
        let p = policy(&rule("allow", "*"));
        assert_eq!(shown(kernel_allow_rules(&p)), ["0.0.0.0/0:*", "::/0:*"]);
        let p = policy(&[rule("allow", "*"), rule("deny", "10.0.0.1:80")].concat());
        assert!(kernel_allow_rules(&p).is_empty());
        // A specific allow still goes in under a catch-all deny: it wins where it matches.
        let p = policy(&[rule("deny", "*"), rule("allow", "10.0.0.1:80")].concat());
        assert_eq!(shown(kernel_allow_rules(&p)), ["10.0.0.1/32:80"]);
    }

    #[test]
    fn host_name_rules_are_left_out() {
        let p = policy(
            &[
                rule("allow", "*.example.com:443"),
                rule("allow", "10.0.0.1:80"),
            ]
            .concat(),
        );
        assert_eq!(shown(kernel_allow_rules(&p)), ["10.0.0.1/32:80"]);
    }

    #[test]
    fn ipv4_networks_become_ipv4_mapped_prefixes() {
        let got = kernel_prefixes("10.0.0.0/8".parse().unwrap());
        assert_eq!(got, vec!["::ffff:10.0.0.0/104".parse::<Ipv6Net>().unwrap()]);
        let got = kernel_prefixes("0.0.0.0/0".parse().unwrap());
        assert_eq!(got, vec!["::ffff:0.0.0.0/96".parse::<Ipv6Net>().unwrap()]);
    }

    #[test]
    fn ipv6_networks_never_cover_ipv4_mapped_addresses() {
        let mapped: Ipv6Net = "::ffff:0:0/96".parse().unwrap();
        let fd: Ipv6Net = "fd00::/8".parse().unwrap();
        assert_eq!(kernel_prefixes(IpNet::V6(fd)), vec![fd]);
        assert!(kernel_prefixes("::ffff:10.0.0.0/104".parse().unwrap()).is_empty());

        let all = kernel_prefixes("::/0".parse().unwrap());
        assert_eq!(all.len(), 96);
        let covered = |ip: &str| {
            let ip: Ipv6Addr = ip.parse().unwrap();
            all.iter().filter(|n| n.contains(&ip)).count()
        };
        for ip in [
            "::1",
            "2001:db8::1",
            "fe80::1",
            "ffff::",
            "::fffe:1:1",
            "::1:0:0:0",
        ] {
            assert_eq!(covered(ip), 1, "{ip} must be covered exactly once");
        }
        for ip in [
            "::ffff:127.0.0.1",
            "::ffff:0.0.0.0",
            "::ffff:255.255.255.255",
        ] {
            assert_eq!(covered(ip), 0, "{ip} is IPv4 to the policy");
        }
        assert!(all
            .iter()
            .all(|n| !n.contains(&mapped) && !mapped.contains(n)));
    }

    #[test]
    fn kernel_addresses_are_ipv6_or_ipv4_mapped() {
        assert_eq!(
            kernel_address("127.0.0.1".parse().unwrap()),
            "::ffff:127.0.0.1".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            kernel_address("::ffff:127.0.0.1".parse().unwrap()),
            kernel_address("127.0.0.1".parse().unwrap())
        );
        assert_eq!(
            kernel_address("::1".parse().unwrap()),
            "::1".parse::<Ipv6Addr>().unwrap()
        );
    }
}
