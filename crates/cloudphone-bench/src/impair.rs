//! A userspace impaired link between the root network namespace and a "viewer" namespace, for
//! measuring the stream under a network profile per `network_type` (delay, loss, a rate cap).
//!
//! Why userspace: the build machine's kernel has no `sch_netem` (`tc qdisc add … netem` fails
//! with "Specified qdisc kind is unknown" and there are no modules to load), so the classic
//! netns + veth + netem setup is not available. Instead the bench process owns two TUN devices:
//!
//! ```text
//!  viewer netns `cpimpN`                         root netns (the node)
//!  ┌──────────────────────────┐                  ┌──────────────────────────────┐
//!  │ cpimpNv 10.77.N.2/24     │  read ─▶ shaper ─▶│ cpimpNh 10.77.N.1/32         │
//!  │ default route via it     │◀─ shaper ◀─ read │ route 10.77.N.2/32 via it     │
//!  └──────────────────────────┘                  └──────────────────────────────┘
//! ```
//!
//! Every IP packet one side sends leaves through its TUN device, is read by this process,
//! passes a [`Shaper`] (token bucket with a bounded tail-drop queue like `tbf`, then Bernoulli
//! loss, then a fixed one-way delay with order preserved) and is written into the other TUN
//! device, where the kernel receives it as if it came off a wire. Each direction has its own
//! shaper with the same profile. The viewer namespace's default route goes through the link,
//! so a receiver there reaches every address of the root namespace (the node's host candidates
//! on eth0 as well as 10.77.N.1) through it; the root namespace reaches the viewer at
//! 10.77.N.2 through it.
//!
//! The pure parts ([`Profile`], [`TokenBucket`], [`Shaper`], [`SplitMix64`]) do no I/O and are
//! tested here; `tests/it/impair.rs` brings a link up (root only) and measures it.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cloudphone_core::video::NetworkType;
use nix::libc;
use serde::{Deserialize, Serialize};

/// What one direction of the link does to packets. Both directions use the same profile, so
/// `loss` applies on each way (a request/response pair is lost with ≈ 2 × `loss`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Added to every packet, each way (RTT / 2).
    pub one_way_delay: Duration,
    /// Fraction of packets dropped at random, each way, 0.0–1.0.
    pub loss: f64,
    /// Rate cap at the IP layer, bits/s, each way; `None`: no cap.
    pub rate_bps: Option<u64>,
    /// Bytes the token bucket may send back to back at line speed (`tbf burst`).
    pub burst_bytes: usize,
    /// Longest a packet may wait for tokens; beyond it the queue tail-drops (`tbf latency`).
    pub queue: Duration,
}

impl Profile {
    /// Nothing: no delay, no loss, no cap.
    pub fn none() -> Profile {
        Profile {
            one_way_delay: Duration::ZERO,
            loss: 0.0,
            rate_bps: None,
            burst_bytes: 0,
            queue: Duration::ZERO,
        }
    }

    /// `WIFI`: 20 ms RTT, no loss, no cap (the benchmark issue's profile).
    pub fn wifi() -> Profile {
        Profile {
            one_way_delay: Duration::from_millis(10),
            ..Profile::none()
        }
    }

    /// `MOBILE_NETWORK`: 60 ms RTT, 1 % loss each way, 8 Mbit/s each way (the benchmark issue's
    /// profile), with a 100 ms queue in front of the cap.
    pub fn mobile_network() -> Profile {
        Profile::none()
            .with_delay(Duration::from_millis(30))
            .with_loss(0.01)
            .with_rate(8_000_000)
    }

    /// `WIRED`: 4 ms RTT, no loss, no cap. Not from the issue (it names WIFI and
    /// MOBILE_NETWORK only); a metro wired path, so the third network type has a profile too.
    pub fn wired() -> Profile {
        Profile::none().with_delay(Duration::from_millis(2))
    }

    /// The profile for a `network_type` of the video matrix.
    pub fn for_network(network: NetworkType) -> Profile {
        match network {
            NetworkType::Wifi => Profile::wifi(),
            NetworkType::MobileNetwork => Profile::mobile_network(),
            NetworkType::Wired => Profile::wired(),
        }
    }

    pub fn with_delay(mut self, one_way: Duration) -> Profile {
        self.one_way_delay = one_way;
        self
    }

    pub fn with_loss(mut self, loss: f64) -> Profile {
        self.loss = loss.clamp(0.0, 1.0);
        self
    }

    /// Caps the rate; burst 5 ms worth (at least two full-size packets) and a 100 ms queue.
    pub fn with_rate(mut self, bps: u64) -> Profile {
        self.rate_bps = Some(bps);
        self.burst_bytes = ((bps / 8) as f64 * 0.005) as usize;
        self.burst_bytes = self.burst_bytes.max(2 * 1514);
        self.queue = Duration::from_millis(100);
        self
    }

    pub fn rtt(&self) -> Duration {
        self.one_way_delay * 2
    }

    /// Queue limit in bytes: what drains in `queue` at the rate, plus the burst (as `tbf`).
    pub fn queue_limit_bytes(&self) -> usize {
        match self.rate_bps {
            Some(bps) => (bps as f64 / 8.0 * self.queue.as_secs_f64()) as usize + self.burst_bytes,
            None => usize::MAX,
        }
    }

    /// "60 ms RTT, 1 % loss each way, 8 Mbit/s each way".
    pub fn describe(&self) -> String {
        let mut s = format!("{} ms RTT", self.rtt().as_millis());
        if self.loss > 0.0 {
            s += &format!(", {} % loss each way", self.loss * 100.0);
        } else {
            s += ", no loss";
        }
        match self.rate_bps {
            Some(bps) => s += &format!(", {} Mbit/s each way", bps as f64 / 1e6),
            None => s += ", no rate cap",
        }
        s
    }
}

/// SplitMix64: a tiny seeded generator, so loss is reproducible run to run (same seed, same
/// packet sequence, same drops) without depending on a crate's stream staying stable.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A token bucket in front of a FIFO queue of bounded size, computed in virtual time: each
/// admitted packet gets the instant it leaves the bottleneck. Tokens accrue at the rate up to
/// the burst; a packet leaves once the packets before it have left and it has its tokens.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    bytes_per_sec: f64,
    burst: f64,
    limit: usize,
    /// Tokens left right after the last departure, and that departure's instant.
    tokens: f64,
    at: Instant,
    /// Departure and size of packets admitted but not gone yet.
    queue: VecDeque<(Instant, usize)>,
    backlog: usize,
}

impl TokenBucket {
    /// Starts full.
    pub fn new(rate_bps: u64, burst_bytes: usize, limit_bytes: usize, now: Instant) -> Self {
        TokenBucket {
            bytes_per_sec: rate_bps as f64 / 8.0,
            burst: burst_bytes as f64,
            limit: limit_bytes,
            tokens: burst_bytes as f64,
            at: now,
            queue: VecDeque::new(),
            backlog: 0,
        }
    }

    /// Bytes waiting at `now`.
    pub fn backlog(&mut self, now: Instant) -> usize {
        while let Some(&(departs, len)) = self.queue.front() {
            if departs > now {
                break;
            }
            self.queue.pop_front();
            self.backlog -= len;
        }
        self.backlog
    }

    /// When a packet of `len` bytes arriving at `now` leaves the bottleneck; `None` when the
    /// queue has no room for it (tail drop).
    pub fn admit(&mut self, now: Instant, len: usize) -> Option<Instant> {
        if self.backlog(now) + len > self.limit {
            return None;
        }
        let start = now.max(self.at);
        let tokens =
            (self.tokens + (start - self.at).as_secs_f64() * self.bytes_per_sec).min(self.burst);
        // A packet larger than the burst could never gather its tokens; charge it the burst.
        let need = (len as f64).min(self.burst);
        let departs = if tokens >= need {
            self.tokens = tokens - need;
            start
        } else {
            self.tokens = 0.0;
            start + Duration::from_secs_f64((need - tokens) / self.bytes_per_sec)
        };
        self.at = departs;
        if departs > now {
            self.queue.push_back((departs, len));
            self.backlog += len;
        }
        Some(departs)
    }
}

/// What the shaper did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Hand it to the other side at this instant.
    Deliver(Instant),
    /// Dropped at random (`loss`).
    Lost,
    /// Dropped because the rate limiter's queue was full.
    Overflow,
}

/// Counters of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectionStats {
    pub packets: u64,
    pub bytes: u64,
    pub delivered: u64,
    pub lost: u64,
    pub overflowed: u64,
}

/// One direction's impairment: rate limit (bounded queue, tail drop), then random loss, then the
/// fixed delay. Lost packets have used their share of the bottleneck, like packets lost on the
/// air after the base station's queue. Deliveries never go backwards, also across a change of
/// profile, so the link never reorders.
#[derive(Debug, Clone)]
pub struct Shaper {
    profile: Profile,
    rng: SplitMix64,
    bucket: Option<TokenBucket>,
    last_delivery: Option<Instant>,
    stats: DirectionStats,
}

impl Shaper {
    pub fn new(profile: Profile, seed: u64, now: Instant) -> Shaper {
        Shaper {
            bucket: Self::bucket(&profile, now),
            profile,
            rng: SplitMix64::new(seed),
            last_delivery: None,
            stats: DirectionStats::default(),
        }
    }

    fn bucket(profile: &Profile, now: Instant) -> Option<TokenBucket> {
        profile
            .rate_bps
            .map(|bps| TokenBucket::new(bps, profile.burst_bytes, profile.queue_limit_bytes(), now))
    }

    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// Switches profile; the queue starts empty and the bucket full. Packets already scheduled
    /// keep their delivery instant.
    pub fn set_profile(&mut self, profile: Profile, now: Instant) {
        self.bucket = Self::bucket(&profile, now);
        self.profile = profile;
    }

    pub fn stats(&self) -> DirectionStats {
        self.stats
    }

    pub fn admit(&mut self, now: Instant, len: usize) -> Verdict {
        self.stats.packets += 1;
        self.stats.bytes += len as u64;
        let departs = match &mut self.bucket {
            Some(bucket) => match bucket.admit(now, len) {
                Some(at) => at,
                None => {
                    self.stats.overflowed += 1;
                    return Verdict::Overflow;
                }
            },
            None => now,
        };
        if self.profile.loss > 0.0 && self.rng.next_f64() < self.profile.loss {
            self.stats.lost += 1;
            return Verdict::Lost;
        }
        let mut at = departs + self.profile.one_way_delay;
        if let Some(last) = self.last_delivery {
            at = at.max(last);
        }
        self.last_delivery = Some(at);
        self.stats.delivered += 1;
        Verdict::Deliver(at)
    }
}

/// Counters of both directions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStats {
    /// Root namespace (node) → viewer namespace.
    pub to_viewer: DirectionStats,
    /// Viewer namespace → root namespace.
    pub to_node: DirectionStats,
}

// ---------------------------------------------------------------------------------------------
// I/O: TUN devices, namespaces, forwarding threads.

const NETNS_PREFIX: &str = "cpimp";
/// Seed of the `to_viewer` direction; `to_node` uses its complement.
pub const DEFAULT_SEED: u64 = 0x00c1_0dd0_f0e5_0001;

/// Opens `/dev/net/tun` and creates (or attaches to) the TUN device `name`: raw IP packets,
/// no packet-info header, non-blocking. A non-persistent TUN device already held by another
/// process answers EBUSY, which is how a link claims its number.
fn open_tun(name: &str) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    // SAFETY: ifreq is plain data, all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= req.ifr_name.len() {
        return Err(std::io::Error::other(format!(
            "interface name {name} too long"
        )));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    use std::os::fd::AsRawFd;
    // SAFETY: TUNSETIFF reads (and writes the final name into) the ifreq we pass.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file)
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn write_sysctl(path: &str, value: &str) -> Result<()> {
    std::fs::write(path, value).with_context(|| format!("writing {path}"))
}

/// A thread running inside another network namespace; see [`spawn_in_netns`].
pub struct NetnsThread<T>(JoinHandle<Option<T>>);

impl<T> NetnsThread<T> {
    /// Waits for the thread; an error if it panicked.
    pub fn join(self) -> Result<T> {
        match self.0.join() {
            Ok(Some(t)) => Ok(t),
            Ok(None) => bail!("netns thread did not run"),
            Err(_) => bail!("netns thread panicked"),
        }
    }

    pub fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

/// Runs `f` on a new thread inside the named network namespace (`/run/netns/<name>`): sockets
/// it creates, and threads it spawns, live there. The rest of the process stays put.
pub fn spawn_in_netns<T, F>(netns: &str, f: F) -> Result<NetnsThread<T>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let ns = File::open(Path::new("/run/netns").join(netns))
        .with_context(|| format!("network namespace {netns}"))?;
    let (ready_tx, ready_rx) = mpsc::channel();
    let handle = std::thread::Builder::new()
        .name(format!("netns-{netns}"))
        .spawn(move || {
            let entered = nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET);
            drop(ns);
            let ok = entered.is_ok();
            let _ = ready_tx.send(entered);
            // f must not run in the wrong namespace.
            ok.then(f)
        })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(NetnsThread(handle)),
        Ok(Err(e)) => {
            let _ = handle.join();
            bail!("setns into {netns}: {e}")
        }
        Err(_) => bail!("netns thread died"),
    }
}

/// Deletes `cpimpN` namespaces whose root-side device `cpimpNh` is gone: left by a run that
/// was killed (its TUN devices went with its file descriptors, the namespace did not).
fn sweep_leftovers() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(n) = name.strip_prefix(NETNS_PREFIX) else {
            continue;
        };
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if !Path::new(&format!("/sys/class/net/{name}h")).exists() {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

/// A running impaired link; everything it created goes away on drop.
pub struct ImpairedLink {
    n: u8,
    netns: String,
    shapers: [Arc<Mutex<Shaper>>; 2],
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    netns_created: bool,
}

impl std::fmt::Debug for ImpairedLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImpairedLink")
            .field("netns", &self.netns)
            .field("profile", &self.profile())
            .finish()
    }
}

impl ImpairedLink {
    /// Brings a link up with `profile` and the default loss seed. Needs root.
    pub fn up(profile: Profile) -> Result<ImpairedLink> {
        Self::up_seeded(profile, DEFAULT_SEED)
    }

    pub fn up_seeded(profile: Profile, seed: u64) -> Result<ImpairedLink> {
        sweep_leftovers();
        // Claim a number: creating cpimpNh fails with EBUSY while another link holds it.
        let (n, host) = (1..=250u8)
            .find_map(|n| {
                open_tun(&format!("{NETNS_PREFIX}{n}h"))
                    .ok()
                    .map(|file| (n, file))
            })
            .context("no free cpimpN TUN device (is /dev/net/tun there, and are we root?)")?;
        let netns = format!("{NETNS_PREFIX}{n}");
        let (dev_h, dev_v) = (format!("{netns}h"), format!("{netns}v"));
        let now = Instant::now();
        let mut link = ImpairedLink {
            n,
            netns: netns.clone(),
            shapers: [
                Arc::new(Mutex::new(Shaper::new(profile, seed, now))),
                Arc::new(Mutex::new(Shaper::new(profile, !seed, now))),
            ],
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            netns_created: false,
        };
        let viewer = open_tun(&dev_v).with_context(|| format!("creating TUN {dev_v}"))?;
        // A namespace with our name but without our device is a leftover.
        let _ = ip(&["netns", "del", &netns]);
        ip(&["netns", "add", &netns])?;
        link.netns_created = true;
        // IPv6 off in the namespace before the device arrives (it takes the `default` conf), so
        // neither side sends router solicitations or offers link-local candidates.
        spawn_in_netns(&netns, || {
            for conf in ["all", "default"] {
                write_sysctl(&format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6"), "1")?;
            }
            Ok::<_, anyhow::Error>(())
        })?
        .join()??;
        ip(&["link", "set", &dev_v, "netns", &netns])?;
        let (node_ip, viewer_ip) = (link.node_addr().to_string(), link.viewer_addr().to_string());
        ip(&["-n", &netns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{viewer_ip}/24"),
            "dev",
            &dev_v,
        ])?;
        ip(&["-n", &netns, "link", "set", &dev_v, "up"])?;
        ip(&["-n", &netns, "route", "add", "default", "dev", &dev_v])?;
        let _ = write_sysctl(
            &format!("/proc/sys/net/ipv6/conf/{dev_h}/disable_ipv6"),
            "1",
        );
        // Packets from 10.77.N.2 arrive on cpimpNh, which is also the route back: strict
        // reverse-path filtering passes them, but switch it off on this device anyway.
        write_sysctl(&format!("/proc/sys/net/ipv4/conf/{dev_h}/rp_filter"), "0")?;
        ip(&["addr", "add", &format!("{node_ip}/32"), "dev", &dev_h])?;
        ip(&["link", "set", &dev_h, "up"])?;
        ip(&["route", "add", &format!("{viewer_ip}/32"), "dev", &dev_h])?;

        let host = Arc::new(host);
        let viewer = Arc::new(viewer);
        for (from, to, shaper, name) in [
            (&host, &viewer, &link.shapers[0], "to-viewer"),
            (&viewer, &host, &link.shapers[1], "to-node"),
        ] {
            let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
            let (from, shaper, stop) =
                (Arc::clone(from), Arc::clone(shaper), Arc::clone(&link.stop));
            link.threads.push(
                std::thread::Builder::new()
                    .name(format!("impair-{n}-{name}-rx"))
                    .spawn(move || read_loop(&from, &shaper, &stop, tx))?,
            );
            let to = Arc::clone(to);
            link.threads.push(
                std::thread::Builder::new()
                    .name(format!("impair-{n}-{name}-tx"))
                    .spawn(move || write_loop(&to, rx))?,
            );
        }
        Ok(link)
    }

    /// The viewer's network namespace: start a receiver with `ip netns exec <name> …`, or use
    /// [`ImpairedLink::command`] / [`spawn_in_netns`].
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The root namespace's address on the link (10.77.N.1): what a viewer dials to reach a
    /// node that listens on it or on 0.0.0.0. Every other root-namespace address is reachable
    /// through the link as well (the viewer's default route).
    pub fn node_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.n, 1)
    }

    /// The viewer namespace's address (10.77.N.2).
    pub fn viewer_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.n, 2)
    }

    /// `ip netns exec <netns> <program>`.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns]).arg(program);
        c
    }

    /// Runs `f` on a thread inside the viewer namespace.
    pub fn spawn<T, F>(&self, f: F) -> Result<NetnsThread<T>>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        spawn_in_netns(&self.netns, f)
    }

    pub fn profile(&self) -> Profile {
        lock(&self.shapers[0]).profile()
    }

    /// Switches both directions to `profile` (queues restart empty; nothing is reordered).
    pub fn set_profile(&self, profile: Profile) {
        let now = Instant::now();
        for s in &self.shapers {
            lock(s).set_profile(profile, now);
        }
    }

    pub fn stats(&self) -> LinkStats {
        LinkStats {
            to_viewer: lock(&self.shapers[0]).stats(),
            to_node: lock(&self.shapers[1]).stats(),
        }
    }
}

impl Drop for ImpairedLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // The threads held the TUN files; with them closed both devices are gone, and with
        // cpimpNh its address and route. The namespace is what is left.
        if self.netns_created {
            let _ = ip(&["netns", "del", &self.netns]);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads packets off `from` until stopped and sends the delivered ones to the writer.
fn read_loop(
    from: &File,
    shaper: &Mutex<Shaper>,
    stop: &AtomicBool,
    tx: mpsc::Sender<(Instant, Vec<u8>)>,
) {
    use nix::poll::{PollFd, PollFlags, PollTimeout};
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(from.as_fd(), PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, PollTimeout::from(50u16)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(_) => return,
        }
        loop {
            let n = match (&*from).read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            let verdict = lock(shaper).admit(Instant::now(), n);
            if let Verdict::Deliver(at) = verdict
                && tx.send((at, buf[..n].to_vec())).is_err()
            {
                return;
            }
        }
    }
}

/// Writes each packet into `to` at its instant, in order; ends when the reader does.
fn write_loop(to: &File, rx: mpsc::Receiver<(Instant, Vec<u8>)>) {
    for (at, packet) in rx {
        let now = Instant::now();
        if at > now {
            std::thread::sleep(at - now);
        }
        // A full or downed device drops the packet, as a wire would.
        let _ = (&*to).write(&packet);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn profiles_match_the_issue() {
        let wifi = Profile::for_network(NetworkType::Wifi);
        assert_eq!(wifi.rtt(), ms(20));
        assert_eq!((wifi.loss, wifi.rate_bps), (0.0, None));
        let mobile = Profile::for_network(NetworkType::MobileNetwork);
        assert_eq!(mobile.rtt(), ms(60));
        assert_eq!((mobile.loss, mobile.rate_bps), (0.01, Some(8_000_000)));
        assert_eq!(
            mobile.describe(),
            "60 ms RTT, 1 % loss each way, 8 Mbit/s each way"
        );
        // 100 ms at 1 MB/s plus the 5 ms burst.
        assert_eq!(mobile.burst_bytes, 5000);
        assert_eq!(mobile.queue_limit_bytes(), 105_000);
        assert_eq!(Profile::wired().rtt(), ms(4));
    }

    #[test]
    fn token_bucket_sends_the_burst_then_paces_at_the_rate() {
        let t0 = Instant::now();
        // 8 Mbit/s = 1000 bytes per ms; burst 3000 bytes.
        let mut b = TokenBucket::new(8_000_000, 3000, 1_000_000, t0);
        let departs: Vec<Duration> = (0..6).map(|_| b.admit(t0, 1000).unwrap() - t0).collect();
        let micros: Vec<u128> = departs.iter().map(|d| d.as_micros()).collect();
        assert_eq!(micros, [0, 0, 0, 1000, 2000, 3000]);
        assert_eq!(b.backlog(t0), 3000);
        assert_eq!(b.backlog(t0 + ms(2)), 1000);
        // Idle long enough to refill: the bucket holds the burst, not more.
        let later = t0 + ms(100);
        let micros: Vec<u128> = (0..4)
            .map(|_| (b.admit(later, 1000).unwrap() - later).as_micros())
            .collect();
        assert_eq!(micros, [0, 0, 0, 1000]);
    }

    #[test]
    fn token_bucket_long_run_rate_is_the_cap() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(8_000_000, 5000, usize::MAX, t0);
        // 10 000 packets of 1200 bytes offered at once leave over 12 s at 1 MB/s (minus the
        // burst that leaves at t0).
        let mut last = t0;
        for _ in 0..10_000 {
            last = b.admit(t0, 1200).unwrap();
        }
        let secs = (last - t0).as_secs_f64();
        assert!(
            (secs - (12_000_000.0 - 5000.0) / 1e6).abs() < 1e-3,
            "{secs}"
        );
    }

    #[test]
    fn token_bucket_tail_drops_beyond_its_limit() {
        let t0 = Instant::now();
        // 8 Mbit/s, burst 1000, queue 5000 bytes.
        let mut b = TokenBucket::new(8_000_000, 1000, 5000, t0);
        let admitted = (0..10).filter(|_| b.admit(t0, 1000).is_some()).count();
        // One on the burst (never queued), five queued, the rest dropped.
        assert_eq!(admitted, 6);
        // 2 ms later two have left the queue: room for two more.
        let t = t0 + ms(2);
        let admitted = (0..10).filter(|_| b.admit(t, 1000).is_some()).count();
        assert_eq!(admitted, 2);
    }

    #[test]
    fn shaper_delays_by_the_profile_and_keeps_order_across_a_profile_change() {
        let t0 = Instant::now();
        let mut s = Shaper::new(Profile::none().with_delay(ms(30)), 1, t0);
        assert_eq!(s.admit(t0, 100), Verdict::Deliver(t0 + ms(30)));
        assert_eq!(s.admit(t0 + ms(5), 100), Verdict::Deliver(t0 + ms(35)));
        // A shorter delay does not let the next packet overtake the queued ones.
        s.set_profile(Profile::none().with_delay(ms(10)), t0 + ms(6));
        assert_eq!(s.admit(t0 + ms(6), 100), Verdict::Deliver(t0 + ms(35)));
        assert_eq!(s.admit(t0 + ms(40), 100), Verdict::Deliver(t0 + ms(50)));
        assert_eq!(s.stats().delivered, 4);
    }

    #[test]
    fn shaper_adds_the_queueing_delay_of_the_rate_cap() {
        let t0 = Instant::now();
        let mut p = Profile::none().with_delay(ms(30)).with_rate(8_000_000);
        p.burst_bytes = 1000;
        let mut s = Shaper::new(p, 1, t0);
        assert_eq!(s.admit(t0, 1000), Verdict::Deliver(t0 + ms(30)));
        assert_eq!(s.admit(t0, 1000), Verdict::Deliver(t0 + ms(31)));
        assert_eq!(s.admit(t0, 1000), Verdict::Deliver(t0 + ms(32)));
        // Queue limit: 100 ms at 1 MB/s + burst = 101 000 bytes.
        let overflowed = (0..200)
            .filter(|_| s.admit(t0, 1000) == Verdict::Overflow)
            .count();
        assert_eq!(overflowed, 200 - 99);
        assert_eq!(s.stats().overflowed, 101);
    }

    #[test]
    fn loss_is_seeded_and_near_the_profile() {
        let t0 = Instant::now();
        let p = Profile::none().with_loss(0.01);
        let run = |seed| {
            let mut s = Shaper::new(p, seed, t0);
            (0..100_000)
                .map(|_| s.admit(t0, 100) == Verdict::Lost)
                .collect::<Vec<bool>>()
        };
        let a = run(7);
        assert_eq!(a, run(7), "same seed, same drops");
        assert_ne!(a, run(8));
        let lost = a.iter().filter(|l| **l).count();
        // Binomial(100 000, 0.01): σ ≈ 31.
        assert!((850..=1150).contains(&lost), "{lost}");
        let mut none = Shaper::new(Profile::none(), 7, t0);
        assert!((0..10_000).all(|_| matches!(none.admit(t0, 100), Verdict::Deliver(_))));
        let mut all = Shaper::new(Profile::none().with_loss(1.0), 7, t0);
        assert!((0..10_000).all(|_| all.admit(t0, 100) == Verdict::Lost));
    }

    #[test]
    fn splitmix_is_uniform_enough() {
        let mut r = SplitMix64::new(42);
        let mean = (0..100_000).map(|_| r.next_f64()).sum::<f64>() / 100_000.0;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
    }
}
