//! Several hosts on one machine: network namespaces joined by veth pairs to a bridge, so a
//! test's control replicas and nodes talk over real interfaces and a test can partition one
//! host from another and heal it.
//!
//! A [`Net`] makes, in the root namespace, a bridge with a unique name and the first address of
//! a private /24 nobody on the machine routes yet (the test process reaches every host through
//! it); each [`Host`] is a namespace with its loopback up and one veth end, named `eth0`
//! inside, on that subnet. Names carry the test process's pid (`cpf<pid>…`), so concurrent
//! test processes never share one, and a new `Net` first deletes what a killed run (a pid no
//! longer alive) left behind. Dropping the `Net` deletes its namespaces, veths and bridge, also
//! when the test panicked.
//!
//! Daemons run in a host with `ip netns exec <netns> <binary>`, which `exec`s the binary: the
//! child's pid is the daemon's, so signals reach it (see [`crate::process::Daemon::spawn_in`]).
//!
//! Faults: [`Net::cut`] sets a host's link down (it reaches nobody, nobody reaches it);
//! [`Net::partition`] cuts only the path between two hosts, with `unreachable` routes on both
//! sides (nft/iptables are not installed on the build machines), so e.g. a node keeps serving
//! its viewers while it cannot reach control.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Prefix of every name (namespace, bridge, veth) this module makes.
const PREFIX: &str = "cpf";

/// One host: a network namespace with an address on the [`Net`]'s subnet.
#[derive(Debug, Clone)]
pub struct Host {
    /// The namespace's name, for `ip netns exec`.
    pub netns: String,
    /// Its address on the subnet.
    pub addr: Ipv4Addr,
    /// The interface inside the namespace (`eth0`): a node's `[webrtc] ice_interfaces`.
    pub interface: String,
    /// The veth end in the root namespace, on the bridge.
    veth: String,
}

/// A bridge in the root namespace and the hosts on it; everything is deleted on drop.
pub struct Net {
    bridge: String,
    /// The subnet's first three octets; the root namespace holds `.1`.
    subnet: [u8; 3],
    /// Distinguishes this process's nets (names) — a single base-36 digit.
    tag: char,
    hosts: Vec<Host>,
}

impl Net {
    /// A fresh bridge on a free private /24, after deleting what dead test processes left.
    pub fn new() -> Self {
        static NETS: AtomicU32 = AtomicU32::new(0);
        remove_leftovers();
        let n = NETS.fetch_add(1, Ordering::Relaxed);
        let tag = std::char::from_digit(n % 36, 36).expect("base 36");
        let pid = std::process::id();
        let bridge = format!("{PREFIX}{pid}b{tag}");
        let subnet = free_subnet(pid, n);
        let net = Self {
            bridge,
            subnet,
            tag,
            hosts: Vec::new(),
        };
        ip(&["link", "add", &net.bridge, "type", "bridge"]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", net.gateway()),
            "dev",
            &net.bridge,
        ]);
        ip(&["link", "set", &net.bridge, "up"]);
        net
    }

    /// The root namespace's address on the subnet (the test process's side).
    pub fn gateway(&self) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, 1)
    }

    /// A new host: a namespace with loopback up and `eth0` on the bridge at the next address.
    pub fn add_host(&mut self) -> Host {
        let index = self.hosts.len() + 2;
        assert!(index < 36, "at most 34 hosts per net");
        let digit = std::char::from_digit(index as u32, 36).expect("base 36");
        let pid = std::process::id();
        let netns = format!("{PREFIX}-{pid}-{}-{index}", self.tag);
        let veth = format!("{PREFIX}{pid}v{}{digit}", self.tag);
        let [a, b, c] = self.subnet;
        let addr = Ipv4Addr::new(a, b, c, index as u8);
        ip(&["netns", "add", &netns]);
        // Registered before anything else can fail, so drop deletes it.
        self.hosts.push(Host {
            netns: netns.clone(),
            addr,
            interface: "eth0".into(),
            veth: veth.clone(),
        });
        ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &netns,
        ]);
        ip(&["link", "set", &veth, "master", &self.bridge]);
        ip(&["link", "set", &veth, "up"]);
        in_ns(&netns, &["link", "set", "lo", "up"]);
        in_ns(
            &netns,
            &["addr", "add", &format!("{addr}/24"), "dev", "eth0"],
        );
        in_ns(&netns, &["link", "set", "eth0", "up"]);
        self.hosts.last().expect("just pushed").clone()
    }

    /// Cuts `host` off the network: its link goes down (nothing reaches it, it reaches nothing).
    pub fn cut(&self, host: &Host) {
        ip(&["link", "set", &host.veth, "down"]);
    }

    /// Undoes [`Net::cut`].
    pub fn heal(&self, host: &Host) {
        ip(&["link", "set", &host.veth, "up"]);
    }

    /// Cuts the path between `a` and `b` only (both directions): each gets an `unreachable`
    /// route to the other, so their packets to each other are dropped with "no route to host"
    /// while both still reach every other host and the test process.
    pub fn partition(&self, a: &Host, b: &Host) {
        in_ns(
            &a.netns,
            &["route", "add", "unreachable", &format!("{}/32", b.addr)],
        );
        in_ns(
            &b.netns,
            &["route", "add", "unreachable", &format!("{}/32", a.addr)],
        );
    }

    /// Undoes [`Net::partition`].
    pub fn heal_partition(&self, a: &Host, b: &Host) {
        in_ns(
            &a.netns,
            &["route", "del", "unreachable", &format!("{}/32", b.addr)],
        );
        in_ns(
            &b.netns,
            &["route", "del", "unreachable", &format!("{}/32", a.addr)],
        );
    }
}

impl Default for Net {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for host in &self.hosts {
            // Deleting the namespace deletes its veth end, and with it the pair.
            let _ = quiet_ip(&["link", "del", &host.veth]);
            let _ = quiet_ip(&["netns", "del", &host.netns]);
        }
        let _ = quiet_ip(&["link", "del", &self.bridge]);
    }
}

/// Runs `ip args…`; panics with its stderr unless it succeeded.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("ip {args:?}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `ip args…` in `netns` (`ip -n <netns> args…`).
fn in_ns(netns: &str, args: &[&str]) {
    let mut all = vec!["-n", netns];
    all.extend_from_slice(args);
    ip(&all);
}

/// Runs `ip args…`, ignoring failure (cleanup of what may already be gone).
fn quiet_ip(args: &[&str]) -> std::io::Result<std::process::ExitStatus> {
    Command::new("ip")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
}

/// The pid a name of ours carries (`cpf<pid>…` or `cpf-<pid>-…`), if it is one of ours.
fn owner_pid(name: &str) -> Option<i32> {
    let rest = name.strip_prefix(PREFIX)?;
    let rest = rest.strip_prefix('-').unwrap_or(rest);
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn pid_alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Deletes namespaces, bridges and veths of ours whose test process is gone (a killed run).
fn remove_leftovers() {
    let namespaces = Command::new("ip").args(["netns", "list"]).output();
    if let Ok(out) = namespaces {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            if owner_pid(name).is_some_and(|pid| !pid_alive(pid)) {
                let _ = quiet_ip(&["netns", "del", name]);
            }
        }
    }
    let links = Command::new("ip").args(["-o", "link", "show"]).output();
    if let Ok(out) = links {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // "12: cpf123b0: <…>" or "13: cpf123v02@if2: <…>"
            let Some(name) = line.split(": ").nth(1) else {
                continue;
            };
            let name = name.split('@').next().unwrap_or(name);
            if owner_pid(name).is_some_and(|pid| !pid_alive(pid)) {
                let _ = quiet_ip(&["link", "del", name]);
            }
        }
    }
}

/// A 10.x.y.0/24 that no route on the machine covers yet, starting from one derived from the
/// pid and the net's number (so concurrent test processes rarely even try the same one).
fn free_subnet(pid: u32, n: u32) -> [u8; 3] {
    let routes = Command::new("ip")
        .args(["-4", "route", "show", "table", "all"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let start = pid.wrapping_mul(31).wrapping_add(n.wrapping_mul(7919));
    for i in 0..10_000u32 {
        let k = start.wrapping_add(i) % (100 * 256);
        // 10.150.0.0 – 10.249.255.0: away from the low 10.x nets hosts and VPNs tend to use.
        let subnet = [10, 150 + (k / 256) as u8, (k % 256) as u8];
        let prefix = format!("{}.{}.{}.", subnet[0], subnet[1], subnet[2]);
        if !routes.contains(&prefix) {
            return subnet;
        }
    }
    panic!("no free 10.x.y.0/24 for a test net");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_pid() {
        assert_eq!(owner_pid("cpf123b0"), Some(123));
        assert_eq!(owner_pid("cpf-4567-0-2"), Some(4567));
        assert_eq!(owner_pid("cpf99v0a"), Some(99));
        assert_eq!(owner_pid("cpv217h"), None);
        assert_eq!(owner_pid("eth0"), None);
    }
}
