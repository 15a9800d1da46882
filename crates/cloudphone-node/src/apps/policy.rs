//! Where a tenant's InstallApp may make the node connect: the address classes a package is never
//! fetched from (loopback, link-local, private, ULA, CGNAT, multicast, documentation… and the
//! IPv6 forms that embed them), the operator's `[apps]` allowlist, and the URL rule every
//! request and every redirect passes. Pure: no resolution, no sockets; `apps` applies it to
//! the addresses it actually connects to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Why an address is not one a tenant's package may come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AddressClass {
    Unspecified,
    Loopback,
    LinkLocal,
    /// RFC 1918, and IPv6's deprecated site-local.
    Private,
    /// IPv6 unique local (`fc00::/7`).
    UniqueLocal,
    /// Carrier-grade NAT shared space (`100.64.0.0/10`).
    SharedCgnat,
    Multicast,
    Broadcast,
    Documentation,
    /// Benchmarking, protocol assignments, `240/4`, discard and IPv4-compatible forms: nothing
    /// a public mirror lives at.
    Reserved,
}

/// Why a URL or a connection was refused. The tenant never sees it (see `apps`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("scheme {0:?} is not http or https")]
    Scheme(String),
    #[error("the URL names no host")]
    NoHost,
    #[error("{host} is a {class:?} address")]
    Address { host: String, class: AddressClass },
    #[error("{0} resolves to no address a package may come from")]
    NoUsableAddress(String),
    #[error("more than {0} redirects")]
    TooManyRedirects(usize),
}

/// The class of a refused address, or `None` for a public unicast one.
pub(crate) fn classify(ip: IpAddr) -> Option<AddressClass> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<AddressClass> {
    use AddressClass::*;
    let [a, b, c, _] = ip.octets();
    let class = match (a, b, c) {
        (0, _, _) => Unspecified,
        (127, _, _) => Loopback,
        (169, 254, _) => LinkLocal,
        (10, _, _) | (192, 168, _) => Private,
        (172, 16..=31, _) => Private,
        (100, 64..=127, _) => SharedCgnat,
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => Documentation,
        (192, 0, 0) | (192, 88, 99) | (198, 18..=19, _) => Reserved,
        (224..=239, _, _) => Multicast,
        _ if ip == Ipv4Addr::BROADCAST => Broadcast,
        (240..=255, _, _) => Reserved,
        _ => return None,
    };
    Some(class)
}

fn classify_v6(ip: Ipv6Addr) -> Option<AddressClass> {
    use AddressClass::*;
    // Forms that carry an IPv4 address a host may route to: judged by that address.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    let s = ip.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    match s {
        // NAT64 well-known prefix 64:ff9b::/96.
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => return classify_v4(embedded(hi, lo)),
        // 6to4 2002::/16 carries the IPv4 address in its next 32 bits.
        [0x2002, hi, lo, ..] => return classify_v4(embedded(hi, lo)),
        _ => {}
    }
    let class = if ip.is_unspecified() {
        Unspecified
    } else if ip.is_loopback() {
        Loopback
    } else if s[0] & 0xffc0 == 0xfe80 {
        LinkLocal
    } else if s[0] & 0xffc0 == 0xfec0 {
        Private
    } else if s[0] & 0xfe00 == 0xfc00 {
        UniqueLocal
    } else if s[0] & 0xff00 == 0xff00 {
        Multicast
    } else if s[0] == 0x2001 && s[1] == 0x0db8 {
        Documentation
    } else if s[..6] == [0, 0, 0, 0, 0, 0]
        || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1)
        || s[..4] == [0x100, 0, 0, 0]
        || (s[0] == 0x2001 && s[1] < 0x200)
    {
        // IPv4-compatible, local-use NAT64, discard-only, IETF protocol assignments (Teredo…).
        Reserved
    } else {
        return None;
    };
    Some(class)
}

/// The operator's `[apps]` allowlist: hosts and networks InstallApp may reach although their
/// addresses are refused otherwise (private mirrors, tests on loopback).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Allowlist {
    /// Lowercase host names without a trailing dot; their every address is allowed.
    hosts: Vec<String>,
    /// Networks whose addresses are allowed whatever name led to them (IP literals in
    /// `allow_hosts` land here as single-address networks).
    nets: Vec<IpNet>,
}

impl Allowlist {
    /// From the config's `allow_hosts` and `allow_cidrs`; a malformed CIDR is an error.
    pub(crate) fn new(hosts: &[String], cidrs: &[String]) -> Result<Self, String> {
        let mut list = Allowlist::default();
        for host in hosts {
            let host = normal_host(host);
            match host.trim_matches(['[', ']']).parse::<IpAddr>() {
                Ok(ip) => list.nets.push(IpNet::from(ip)),
                Err(_) => list.hosts.push(host),
            }
        }
        for cidr in cidrs {
            let net = cidr
                .parse::<IpNet>()
                .or_else(|_| cidr.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("apps.allow_cidrs: {cidr:?} is not a CIDR"))?;
            list.nets.push(net.trunc());
        }
        Ok(list)
    }

    fn allows_host(&self, host: &str) -> bool {
        let host = normal_host(host);
        self.hosts.contains(&host)
    }

    fn allows_ip(&self, ip: IpAddr) -> bool {
        // `::ffff:a.b.c.d` is the same peer as `a.b.c.d` to the kernel.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// Whether the node may connect to `ip`, reached through the name `host`.
    pub(crate) fn check_address(&self, host: &str, ip: IpAddr) -> Result<(), Refusal> {
        if self.allows_host(host) || self.allows_ip(ip) {
            return Ok(());
        }
        match classify(ip) {
            None => Ok(()),
            Some(class) => Err(Refusal::Address {
                host: host.to_owned(),
                class,
            }),
        }
    }

    /// The rule every URL passes, the first and each redirect's: http or https, a host, and an
    /// IP-literal host checked here (a name is checked on the addresses it resolves to, when
    /// the connection is made).
    pub(crate) fn check_url(&self, url: &url::Url) -> Result<(), Refusal> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Refusal::Scheme(url.scheme().to_owned()));
        }
        let host = url.host_str().unwrap_or_default();
        match url.host() {
            None => Err(Refusal::NoHost),
            Some(url::Host::Ipv4(ip)) => self.check_address(host, IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.check_address(host, IpAddr::V6(ip)),
            Some(url::Host::Domain(_)) => Ok(()),
        }
    }
}

fn normal_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::AddressClass::*;
    use super::*;

    #[test]
    fn address_classes() {
        // IPv4 inside IPv6 (mapped, NAT64, 6to4) is judged by the IPv4 address.
        let cases: &[(Option<AddressClass>, &[&str])] = &[
            (
                None,
                &["93.184.215.14", "8.8.8.8", "172.32.0.1", "100.128.0.1"],
            ),
            (
                None,
                &["2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"],
            ),
            (Some(Unspecified), &["0.0.0.0", "0.1.2.3", "::"]),
            (
                Some(Loopback),
                &["127.0.0.1", "127.255.0.9", "::1", "::ffff:127.0.0.1"],
            ),
            (Some(Loopback), &["2002:7f00:1::"]),
            (
                Some(LinkLocal),
                &["169.254.169.254", "fe80::1", "::ffff:169.254.169.254"],
            ),
            (Some(LinkLocal), &["64:ff9b::a9fe:a9fe"]),
            (
                Some(Private),
                &["10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1"],
            ),
            (
                Some(Private),
                &["fec0::1", "::ffff:10.0.0.1", "2002:c0a8:101::1"],
            ),
            (Some(UniqueLocal), &["fc00::1", "fd12:3456::1"]),
            (Some(SharedCgnat), &["100.64.0.1", "100.127.255.255"]),
            (
                Some(Documentation),
                &["192.0.2.7", "198.51.100.7", "203.0.113.7", "2001:db8::1"],
            ),
            (
                Some(Multicast),
                &["224.0.0.1", "239.255.255.250", "ff02::1"],
            ),
            (Some(Broadcast), &["255.255.255.255"]),
            (
                Some(Reserved),
                &["198.18.0.1", "192.0.0.8", "240.0.0.1", "2001::1", "100::1"],
            ),
            (Some(Reserved), &["::127.0.0.1", "64:ff9b:1::1"]),
        ];
        for (want, ips) in cases {
            for ip in *ips {
                assert_eq!(classify(ip.parse().unwrap()), *want, "{ip}");
            }
        }
    }

    fn url(s: &str) -> url::Url {
        url::Url::parse(s).unwrap()
    }

    /// The URL rule, then the address rule on what the URL's name resolves to (`None`: an IP
    /// literal, checked by the URL rule alone).
    fn verdict(list: &Allowlist, u: &str, resolved: Option<&str>) -> Result<(), Refusal> {
        let u = url(u);
        list.check_url(&u)?;
        match resolved {
            Some(ip) => list.check_address(u.host_str().unwrap(), ip.parse().unwrap()),
            None => Ok(()),
        }
    }

    #[test]
    fn urls_and_addresses() {
        let open = Allowlist::default();
        let refused: &[(&str, Option<&str>)] = &[
            ("http://127.0.0.1:8080/a.apk", None),
            ("http://127.1/a.apk", None),
            ("http://0x7f000001/a.apk", None),
            ("http://[::1]/a.apk", None),
            ("http://[::ffff:127.0.0.1]/a.apk", None),
            ("http://169.254.169.254/latest/meta-data/", None),
            ("http://10.0.0.5/a.apk", None),
            ("http://localhost/a.apk", Some("127.0.0.1")),
            ("http://rebind.example/a.apk", Some("192.168.0.1")),
            ("file:///etc/passwd", None),
            ("ftp://mirror.example.com/a.apk", None),
        ];
        for (u, resolved) in refused {
            assert!(
                verdict(&open, u, *resolved).is_err(),
                "{u} via {resolved:?}"
            );
        }
        let public = verdict(&open, "https://mirror.example.com/a", Some("93.184.215.14"));
        assert_eq!(public, Ok(()));

        // The allowlist: by name (any address it resolves to), by network, by IP literal.
        // `(allow_hosts entry, allow_cidrs entry, url, resolved, allowed)`; "" lists nothing.
        let listed: &[(&str, &str, &str, Option<&str>, bool)] = &[
            (
                "Mirror.Internal.",
                "",
                "http://mirror.internal/a",
                Some("10.0.0.9"),
                true,
            ),
            (
                "mirror.internal",
                "",
                "http://other.internal/a",
                Some("10.0.0.9"),
                false,
            ),
            (
                "",
                "10.0.0.0/24",
                "http://mirror.internal/a",
                Some("10.0.0.9"),
                true,
            ),
            ("", "10.0.0.0/24", "http://10.0.1.9/a", None, false),
            ("127.0.0.1", "", "http://127.0.0.1:9/a", None, true),
            ("127.0.0.1", "", "http://127.0.0.2:9/a", None, false),
            ("127.0.0.1", "", "http://[::ffff:127.0.0.1]:9/a", None, true),
            ("[::1]", "", "http://[::1]:9/a", None, true),
            (
                "",
                "127.0.0.1/32",
                "http://localhost/a",
                Some("127.0.0.1"),
                true,
            ),
        ];
        for (host, cidr, u, resolved, want) in listed {
            let entry = |e: &str| (!e.is_empty()).then(|| e.to_owned()).into_iter().collect();
            let hosts: Vec<String> = entry(host);
            let list = Allowlist::new(&hosts, &entry(cidr)).unwrap();
            let got = verdict(&list, u, *resolved);
            assert_eq!(got.is_ok(), *want, "{u} via {resolved:?}: {got:?}");
        }
    }

    #[test]
    fn malformed_cidrs_are_config_errors() {
        assert!(Allowlist::new(&[], &["10.0.0.0/33".into()]).is_err());
        assert!(Allowlist::new(&[], &["mirror".into()]).is_err());
        assert!(Allowlist::new(&[], &["10.0.0.7".into()]).is_ok());
    }
}
