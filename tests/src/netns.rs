//! Simulated machines as hosts: each gets its own network namespace (a veth pair to a bridge)
//! and its own mount namespace, where a private copy of `/etc/hosts` is bind-mounted over the
//! real path, so an agent edits `/etc/hosts` as it does on a VM.
//!
//! Everything lives in namespaces this module creates: the bridge sits in a "hub" namespace,
//! each host's veth peer is created directly inside its namespace, and the addresses are a
//! private `10.250.<subnet>.0/24` that exists only there. Nothing is added to the caller's
//! namespaces and no address outside them is touched. A link can be taken down and up (a
//! partition), delayed or lossy (`tc netem`), and every process of a host killed at once.
//! Dropping the [`Network`] (also on panic) kills what still runs in its namespaces, unmounts
//! the mount namespaces and deletes the network namespaces (which deletes the bridge and links).
//!
//! Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN) and iproute2 (`ip`, `tc`) and util-linux
//! (`unshare`, `nsenter`): when the kernel or a tool refuses, [`Network::create`] fails saying
//! which command and why, so the tests that need it fail clearly rather than skip.

use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Where `ip netns` keeps its named namespaces.
const NETNS_DIR: &str = "/run/netns";
/// The hosts file every host's mount namespace shadows.
pub const ETC_HOSTS: &str = "/etc/hosts";
/// The interface of a host on the bridge (inside its namespace).
const HOST_IF: &str = "eth0";
/// The bridge (inside the hub namespace).
const BRIDGE: &str = "br0";

/// What went wrong, with the command that failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// A command failed or could not run.
    #[error(
        "namespaces refused: `{command}` failed: {reason}. The namespace tests need root \
         (CAP_SYS_ADMIN, CAP_NET_ADMIN), a kernel that allows network and mount namespaces, \
         iproute2 (`ip`, `tc`) and util-linux (`unshare`, `nsenter`)"
    )]
    Command {
        /// The command line.
        command: String,
        /// Its stderr or the spawn error.
        reason: String,
    },
    /// A file operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A name this network does not have.
    #[error("no host `{0}` in this network")]
    Unknown(String),
}

/// This module's result type.
pub type Result<T, E = NetnsError> = std::result::Result<T, E>;

/// Runs `program args`; fails with its stderr.
fn run(program: &str, args: &[&str]) -> Result<String> {
    let line = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| NetnsError::Command {
            command: line.clone(),
            reason: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(NetnsError::Command {
            command: line,
            reason: format!(
                "{:?}: {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One host: a network namespace on the bridge, optionally with its own mount namespace.
#[derive(Debug, Clone)]
pub struct Host {
    /// Its name in the cluster (a machine, or `controller`).
    pub name: String,
    /// Its network namespace's name (`ip netns`).
    pub netns: String,
    /// Its address on the bridge.
    pub address: Ipv4Addr,
    /// Its mount namespace (a file bind-mounted on it), when it has one.
    pub mount_ns: Option<PathBuf>,
    /// Its link's name on the hub side (the "switch port").
    hub_port: String,
}

impl Host {
    /// The network namespace's file.
    pub fn netns_path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.netns)
    }

    /// `nsenter` arguments that put a program in this host's namespaces, before `--`.
    pub fn nsenter_args(&self) -> Vec<String> {
        let mut v = vec![format!("--net={}", self.netns_path().display())];
        if let Some(m) = &self.mount_ns {
            v.push(format!("--mount={}", m.display()));
        }
        v
    }
}

/// A host to create: its name and, for its own mount namespace, the file that becomes its
/// `/etc/hosts` there.
#[derive(Debug, Clone)]
pub struct HostDef {
    /// Its name.
    pub name: String,
    /// The private hosts file bind-mounted over `/etc/hosts` in its mount namespace (`None`:
    /// no mount namespace of its own).
    pub hosts_file: Option<PathBuf>,
}

/// A bridge in a hub namespace and its hosts; torn down on drop.
#[derive(Debug)]
pub struct Network {
    hub: String,
    /// `10.250.<subnet>.0/24`.
    pub subnet: u8,
    /// The hosts, in creation order.
    pub hosts: Vec<Host>,
    /// Created namespaces and mounts, undone on drop in reverse.
    netns_made: Vec<String>,
    mounts_made: Vec<PathBuf>,
    /// Left in place on drop ([`Network::persistent`]).
    kept: bool,
}

/// The nftables table of [`Network::lose_packets`] in a host's namespace.
const LOSS_TABLE: &str = "apimctl_loss";

/// `nft ARGS` in the network namespace `ns`.
fn nft(ns: &str, args: &[&str]) -> Result<String> {
    let mut argv = vec!["netns", "exec", ns, "nft"];
    argv.extend_from_slice(args);
    run("ip", &argv)
}

/// Address `index` (1-based, up to 240) of `subnet`: `10.250.<subnet>.<10 + index>`.
pub fn address(subnet: u8, index: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 250, subnet, 10u8.saturating_add(index))
}

/// A namespace-name prefix unique to this process and call.
fn unique_prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "apim{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

impl Network {
    /// Creates the hub with its bridge and one host per `defs` (host `i`, 0-based, gets
    /// [`address`]`(subnet, i + 1)`); mount namespace files go in `dir` (created). On any
    /// failure what was made is undone.
    pub fn create(dir: &Path, subnet: u8, defs: &[HostDef]) -> Result<Network> {
        Self::create_named(dir, &unique_prefix(), subnet, defs)
    }

    /// A network that outlives this process (the quickstart's): its namespaces are called
    /// `<prefix>-hub`, `<prefix>-1`, … so a later run finds them. When all of it is in place
    /// it is adopted as it is (what runs in it keeps running); otherwise what is left of it is
    /// removed and it is made afresh. Dropping it leaves it in place: [`Network::remove`]
    /// takes it down.
    pub fn persistent(dir: &Path, prefix: &str, subnet: u8, defs: &[HostDef]) -> Result<Network> {
        if let Some(net) = Self::adopt(dir, prefix, subnet, defs) {
            return Ok(net);
        }
        Self::remove(dir, prefix)?;
        let mut net = Self::create_named(dir, prefix, subnet, defs)?;
        net.kept = true;
        Ok(net)
    }

    /// The network `prefix` when every namespace, mount, bridge and address of it is there.
    fn adopt(dir: &Path, prefix: &str, subnet: u8, defs: &[HostDef]) -> Option<Network> {
        let hub = format!("{prefix}-hub");
        let mounted = mount_points_under(dir);
        let is_netns = |ns: &str| {
            let p = Path::new(NETNS_DIR).join(ns);
            mount_points_under(&p).contains(&p)
        };
        if !is_netns(&hub) || run("ip", &["-n", &hub, "link", "show", BRIDGE]).is_err() {
            return None;
        }
        let mut net = Network {
            hub: hub.clone(),
            subnet,
            hosts: Vec::new(),
            netns_made: vec![hub],
            mounts_made: Vec::new(),
            kept: true,
        };
        for (i, def) in defs.iter().enumerate() {
            let index = u8::try_from(i + 1).ok()?;
            let ns = format!("{prefix}-{index}");
            let addr = address(subnet, index);
            let shown = run("ip", &["-n", &ns, "-4", "addr", "show", "dev", HOST_IF]).ok()?;
            if !is_netns(&ns) || !shown.contains(&format!("inet {addr}/24")) {
                return None;
            }
            net.netns_made.push(ns.clone());
            let mount_ns = match def.hosts_file {
                Some(_) => {
                    let file = dir.join(format!("{ns}.mnt"));
                    if !mounted.contains(&file) {
                        return None;
                    }
                    net.mounts_made.push(file.clone());
                    Some(file)
                }
                None => None,
            };
            net.hosts.push(Host {
                name: def.name.clone(),
                netns: ns,
                address: addr,
                mount_ns,
                hub_port: format!("p{index}"),
            });
        }
        Some(net)
    }

    /// Takes down the network `prefix` ([`Network::persistent`]) and what is left of it:
    /// SIGKILLs every process in its namespaces, unmounts its mount namespace files in `dir`
    /// and deletes its network namespaces (with them the bridge and every link). Tries it all;
    /// returns how many namespaces it deleted, or the first failure.
    pub fn remove(dir: &Path, prefix: &str) -> Result<usize> {
        let hub = format!("{prefix}-hub");
        let mine = |n: &str| {
            n == hub
                || n.strip_prefix(prefix)
                    .and_then(|r| r.strip_prefix('-'))
                    .is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()))
        };
        let mut names: Vec<String> = std::fs::read_dir(NETNS_DIR)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .filter(|n| mine(n))
            .collect();
        names.sort();
        for ns in &names {
            kill_all_in(&Path::new(NETNS_DIR).join(ns));
        }
        let mut first_err = None;
        let mnt_of = |p: &Path| {
            p.parent() == Some(dir)
                && p.file_name()
                    .and_then(|f| f.to_str()?.strip_suffix(".mnt"))
                    .is_some_and(&mine)
        };
        // A file mounted more than once (an interrupted run) needs as many unmounts.
        while let Some(m) = mount_points_under(dir)
            .into_iter()
            .rev()
            .find(|p| mnt_of(p))
        {
            if let Err(e) = run("umount", &[&m.to_string_lossy()]) {
                first_err.get_or_insert(e);
                break;
            }
        }
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if mnt_of(&e.path()) && !mount_points_under(dir).contains(&e.path()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        for ns in &names {
            if let Err(e) = run("ip", &["netns", "del", ns]) {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(names.len()),
        }
    }

    fn create_named(dir: &Path, prefix: &str, subnet: u8, defs: &[HostDef]) -> Result<Network> {
        std::fs::create_dir_all(dir).map_err(|source| NetnsError::Io {
            what: "create",
            path: dir.to_path_buf(),
            source,
        })?;
        let mut net = Network {
            hub: format!("{prefix}-hub"),
            subnet,
            hosts: Vec::new(),
            netns_made: Vec::new(),
            mounts_made: Vec::new(),
            kept: false,
        };
        let hub = net.hub.clone();
        run("ip", &["netns", "add", &hub])?;
        net.netns_made.push(hub.clone());
        run("ip", &["-n", &hub, "link", "set", "lo", "up"])?;
        run("ip", &["-n", &hub, "link", "add", BRIDGE, "type", "bridge"])?;
        run("ip", &["-n", &hub, "link", "set", BRIDGE, "up"])?;
        for (i, def) in defs.iter().enumerate() {
            let index = u8::try_from(i + 1).unwrap_or(u8::MAX);
            let ns = format!("{prefix}-{index}");
            run("ip", &["netns", "add", &ns])?;
            net.netns_made.push(ns.clone());
            let port = format!("p{index}");
            run(
                "ip",
                &[
                    "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", HOST_IF,
                    "netns", &ns,
                ],
            )?;
            run(
                "ip",
                &["-n", &hub, "link", "set", &port, "master", BRIDGE, "up"],
            )?;
            let addr = address(subnet, index);
            let cidr = format!("{addr}/24");
            run("ip", &["-n", &ns, "addr", "add", &cidr, "dev", HOST_IF])?;
            run("ip", &["-n", &ns, "link", "set", HOST_IF, "up"])?;
            run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
            let mount_ns = match &def.hosts_file {
                Some(h) => Some(net.make_mount_ns(dir, &ns, h)?),
                None => None,
            };
            net.hosts.push(Host {
                name: def.name.clone(),
                netns: ns,
                address: addr,
                mount_ns,
                hub_port: port,
            });
        }
        Ok(net)
    }

    /// A persistent mount namespace (`<dir>/<ns>.mnt`) whose `/etc/hosts` is `hosts_file`.
    /// Mounts arriving from outside propagate in (slave), nothing made inside leaks out.
    fn make_mount_ns(&mut self, dir: &Path, ns: &str, hosts_file: &Path) -> Result<PathBuf> {
        let file = dir.join(format!("{ns}.mnt"));
        std::fs::write(&file, b"").map_err(|source| NetnsError::Io {
            what: "create",
            path: file.clone(),
            source,
        })?;
        let mnt_arg = format!("--mount={}", file.display());
        let hosts = hosts_file.to_string_lossy().into_owned();
        let r = run(
            "unshare",
            &[
                &mnt_arg,
                "--propagation",
                "slave",
                "mount",
                "--bind",
                &hosts,
                ETC_HOSTS,
            ],
        );
        // unshare binds the namespace onto the file before it runs mount: undo it either way
        // (the file is then on nsfs, another device than its folder).
        if std::fs::metadata(&file).is_ok_and(|m| m.dev() != dir_dev(dir)) {
            self.mounts_made.push(file.clone());
        }
        r?;
        Ok(file)
    }

    /// Every network namespace file this network made (the hub's and each host's).
    pub fn netns_paths(&self) -> Vec<PathBuf> {
        self.netns_made
            .iter()
            .map(|n| Path::new(NETNS_DIR).join(n))
            .collect()
    }

    /// The host called `name`.
    pub fn host(&self, name: &str) -> Result<&Host> {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .ok_or_else(|| NetnsError::Unknown(name.to_owned()))
    }

    /// Takes `name`'s link down at the bridge (pulls its cable): nothing reaches it, nothing
    /// leaves it; its processes keep running.
    pub fn link_down(&self, name: &str) -> Result<()> {
        let port = self.host(name)?.hub_port.clone();
        run("ip", &["-n", &self.hub, "link", "set", &port, "down"]).map(|_| ())
    }

    /// Brings `name`'s link back up.
    pub fn link_up(&self, name: &str) -> Result<()> {
        let port = self.host(name)?.hub_port.clone();
        run("ip", &["-n", &self.hub, "link", "set", &port, "up"]).map(|_| ())
    }

    /// `tc netem` on `name`'s interface: `delay_ms` out of it, and `loss_pct` of its packets
    /// dropped (0: none). Replaces an earlier setting. Fails, saying so, on a kernel built
    /// without `sch_netem` (CONFIG_NET_SCH_NETEM).
    pub fn netem(&self, name: &str, delay_ms: u32, loss_pct: u32) -> Result<()> {
        let ns = self.host(name)?.netns.clone();
        let delay = format!("{delay_ms}ms");
        let loss = format!("{loss_pct}%");
        run(
            "tc",
            &[
                "-n", &ns, "qdisc", "replace", "dev", HOST_IF, "root", "netem", "delay", &delay,
                "loss", &loss,
            ],
        )
        .map(|_| ())
        .map_err(|e| match e {
            NetnsError::Command { command, reason } if reason.contains("kind is unknown") => {
                NetnsError::Command {
                    command,
                    reason: format!(
                        "{reason} (this kernel has no netem qdisc: CONFIG_NET_SCH_NETEM)"
                    ),
                }
            }
            other => other,
        })
    }

    /// Shapes `name`'s link to `kbit` kbit/s each way (`tc tbf`, at its interface and at its
    /// bridge port): bulk transfers crawl and everything behind them queues (up to 400 ms).
    /// Replaces an earlier setting.
    pub fn throttle(&self, name: &str, kbit: u32) -> Result<()> {
        let h = self.host(name)?.clone();
        let rate = format!("{kbit}kbit");
        for (ns, dev) in [(&h.netns, HOST_IF), (&self.hub, h.hub_port.as_str())] {
            run(
                "tc",
                &[
                    "-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", &rate,
                    "burst", "4kb", "latency", "400ms",
                ],
            )?;
        }
        Ok(())
    }

    /// Packets the shaping towards `name` (its bridge port) held back so far: the `tc -s`
    /// overlimits count; 0 when nothing was ever over the rate.
    pub fn throttled_packets(&self, name: &str) -> Result<u64> {
        let port = self.host(name)?.hub_port.clone();
        let text = run(
            "tc",
            &["-s", "-n", &self.hub, "qdisc", "show", "dev", &port],
        )?;
        Ok(text
            .split_once("overlimits ")
            .and_then(|(_, r)| r.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
            .unwrap_or(0))
    }

    /// Drops `pct` percent of the packets entering and leaving `name`, at random (nftables in
    /// its namespace, `numgen random`: real loss where `tc netem` is not built into the kernel).
    pub fn lose_packets(&self, name: &str, pct: u32) -> Result<()> {
        let ns = self.host(name)?.netns.clone();
        let _ = nft(&ns, &["delete", "table", "inet", LOSS_TABLE]);
        nft(&ns, &["add", "table", "inet", LOSS_TABLE])?;
        let rule = format!("numgen random mod 100 < {pct} counter drop");
        for (chain, hook) in [("in", "input"), ("out", "output")] {
            let spec = format!("{{ type filter hook {hook} priority 0; policy accept; }}");
            nft(&ns, &["add", "chain", "inet", LOSS_TABLE, chain, &spec])?;
            nft(&ns, &["add", "rule", "inet", LOSS_TABLE, chain, &rule])?;
        }
        Ok(())
    }

    /// Packets [`Network::lose_packets`] dropped so far on `name`, both ways.
    pub fn lost_packets(&self, name: &str) -> Result<u64> {
        let ns = self.host(name)?.netns.clone();
        let text = nft(&ns, &["list", "table", "inet", LOSS_TABLE])?;
        Ok(text
            .split("packets ")
            .skip(1)
            .filter_map(|r| {
                r.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum())
    }

    /// Removes any shaping, netem or loss of `name`'s link, both ways.
    pub fn clear_link(&self, name: &str) -> Result<()> {
        let h = self.host(name)?.clone();
        let _ = run(
            "ip",
            &[
                "netns", "exec", &h.netns, "nft", "delete", "table", "inet", LOSS_TABLE,
            ],
        );
        for (ns, dev) in [(&h.netns, HOST_IF), (&self.hub, h.hub_port.as_str())] {
            let shown = run("tc", &["-n", ns, "qdisc", "show", "dev", dev, "root"])?;
            if shown.contains("tbf") || shown.contains("netem") {
                run("tc", &["-n", ns, "qdisc", "del", "dev", dev, "root"])?;
            }
        }
        Ok(())
    }

    /// The pids of every process in `name`'s network namespace.
    pub fn pids_in(&self, name: &str) -> Result<Vec<i32>> {
        Ok(pids_in_netns(&self.host(name)?.netns_path()))
    }

    /// SIGKILLs every process in `name`'s network namespace at once (the machine dies), and
    /// waits until none is left; returns how many there were.
    pub fn kill_host(&self, name: &str) -> Result<usize> {
        Ok(kill_all_in(&self.host(name)?.netns_path()))
    }
}

/// The mount points at or under `path` in this process's mount namespace, in mount order.
pub fn mount_points_under(path: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .filter(|m| m.starts_with(path))
        .collect()
}

/// A mountinfo field with its octal escapes (`\040` for a space) decoded.
fn unescape_mountinfo(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let code = b
            .get(i + 1..i + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match (b[i], code) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn dir_dev(dir: &Path) -> u64 {
    std::fs::metadata(dir).map(|m| m.dev()).unwrap_or(0)
}

/// Every process whose network namespace is the one `ns_file` names.
fn pids_in_netns(ns_file: &Path) -> Vec<i32> {
    let Ok(target) = std::fs::metadata(ns_file).map(|m| (m.dev(), m.ino())) else {
        return Vec::new();
    };
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|m| (m.dev(), m.ino()) == target)
        })
        .collect()
}

/// SIGKILLs every process in the namespace `ns_file` until none is left (zombies of a parent
/// outside count as gone); bounded, as a failure guard.
fn kill_all_in(ns_file: &Path) -> usize {
    let mut killed = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let live: Vec<i32> = pids_in_netns(ns_file)
            .into_iter()
            .filter(|p| !is_zombie(*p))
            .collect();
        if live.is_empty() || Instant::now() > deadline {
            return killed.len();
        }
        for pid in live {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            killed.insert(pid);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
    })
}

/// Whether a process in the network namespace of `pid` listens on TCP `port` (its
/// `/proc/<pid>/net/tcp`, which shows that namespace's sockets).
pub fn listening(pid: u32, port: u16) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")) else {
        return false;
    };
    let want = format!(":{port:04X}");
    text.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[1].ends_with(&want) && f[3] == "0A"
    })
}

impl Drop for Network {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        for ns in &self.netns_made {
            kill_all_in(&Path::new(NETNS_DIR).join(ns));
        }
        for m in self.mounts_made.drain(..).rev() {
            if let Err(e) = run("umount", &[&m.to_string_lossy()]) {
                eprintln!("apim-e2e netns teardown: {e}");
            }
            let _ = std::fs::remove_file(&m);
        }
        for ns in self.netns_made.drain(..).rev() {
            if let Err(e) = run("ip", &["netns", "del", &ns]) {
                eprintln!("apim-e2e netns teardown: {e}");
            }
        }
    }
}

/// Forwards TCP from `listen`, bound in the network namespace `netns_file`, to `to` in the
/// caller's namespace (a host's database server reached from the machines' bridge). Calls
/// `ready` once listening, then serves until the process ends, saying on stderr where each
/// connection comes from. A socket belongs to the
/// namespace of the thread that creates it: the listener is made by a thread moved into
/// `netns_file`, each outgoing connection by the calling thread, which stays in its own.
pub fn forward_tcp(
    netns_file: &Path,
    listen: std::net::SocketAddr,
    to: std::net::SocketAddr,
    ready: impl FnOnce(),
) -> Result<()> {
    use std::net::{TcpListener, TcpStream};
    let ns = std::fs::File::open(netns_file).map_err(|source| NetnsError::Io {
        what: "open",
        path: netns_file.to_path_buf(),
        source,
    })?;
    let (tx, rx) = std::sync::mpsc::channel::<std::io::Result<TcpStream>>();
    let (bound_tx, bound_rx) = std::sync::mpsc::channel::<Result<()>>();
    std::thread::spawn(move || {
        let bound = nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| NetnsError::Command {
                command: format!("setns {listen}"),
                reason: e.to_string(),
            })
            .and_then(|()| {
                TcpListener::bind(listen).map_err(|e| NetnsError::Command {
                    command: format!("bind {listen}"),
                    reason: e.to_string(),
                })
            });
        let listener = match bound {
            Ok(l) => {
                let _ = bound_tx.send(Ok(()));
                l
            }
            Err(e) => {
                let _ = bound_tx.send(Err(e));
                return;
            }
        };
        for conn in listener.incoming() {
            if tx.send(conn).is_err() {
                return;
            }
        }
    });
    bound_rx.recv().map_err(|e| NetnsError::Command {
        command: format!("bind {listen}"),
        reason: e.to_string(),
    })??;
    ready();
    for conn in rx {
        let inbound = match conn {
            Ok(c) => c,
            Err(e) => {
                eprintln!("forward {listen}: accept: {e}");
                continue;
            }
        };
        if let Ok(peer) = inbound.peer_addr() {
            eprintln!("forward {listen} -> {to}: connection from {peer}");
        }
        let outbound = match TcpStream::connect_timeout(&to, Duration::from_secs(10)) {
            Ok(c) => c,
            Err(e) => {
                // The client sees its connection closed, as with the server down.
                eprintln!("forward {listen} -> {to}: {e}");
                continue;
            }
        };
        for (from, into) in [(&inbound, &outbound), (&outbound, &inbound)] {
            let (Ok(mut r), Ok(mut w)) = (from.try_clone(), into.try_clone()) else {
                continue;
            };
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut r, &mut w);
                let _ = w.shutdown(std::net::Shutdown::Write);
            });
        }
    }
    Ok(())
}
