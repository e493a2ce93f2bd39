//! A fault-injection network of Linux network namespaces, one per node process.
//!
//! This is the second backend of the fault suite (`tests/faults/README.md`), used instead of
//! the loopback proxy ([`crate::faultnet`]) when the tests run as root and `ip netns` and
//! `nft` work. Each run creates, with `ip` (iproute2) and `nft` (nftables):
//! - a bridge in the root namespace, holding the address `10.X.Y.1/24` of a private subnet
//!   chosen per run (not overlapping any address or route of the host), so that the test
//!   process reaches every node directly;
//! - for node `i`, on first use: a namespace with `lo` up and a veth pair whose root end is
//!   attached to the bridge and whose other end is `eth0` in the namespace, with the
//!   address `10.X.Y.(10+i)`; and an nftables table `inet rstore` in that namespace.
//!
//! Nodes are started with `ip netns exec <ns> <node> ...` ([`NetnsNet::command`]), which
//! execs the node in place: the child's pid is the node's, so SIGKILL and SIGSTOP reach it.
//!
//! Faults are nftables rules in the sending node's namespace:
//! - [`NetnsNet::cut`]`(a, b)`: the connections `a` opens to `b` go silent. In `a`'s
//!   namespace, packets to `b` in the connection's original direction (SYN, requests) and
//!   packets from `b` in its reply direction are dropped, by conntrack direction. New
//!   connections time out; connections `b` opened to `a` are untouched (an asymmetric
//!   partition, at the connection level like the proxy's). Conntrack is active in the
//!   namespace from its creation (the table refers to it), so the direction of every
//!   connection is known from its first packet.
//! - [`NetnsNet::set_loss`]`(a, b, p)`: `p`% of the packets `a` sends to `b` are dropped at
//!   random (`numgen random`), on every connection either side opened.
//! - [`NetnsNet::heal`]: every rule goes; dropped segments are retransmitted by TCP, so the
//!   connections carry on (the proxy closes them instead).
//!
//! Not available: delay. It needs the `netem` queueing discipline (`sch_netem`), which this
//! kernel lacks; [`NetnsNet::delay_unavailable`] says why, for the suite to print.
//!
//! Names are unique per run: namespaces `rstore-<pid>-<n>-n<i>`, interfaces
//! `rs<pid>_<n>b` (bridge) and `…v<i>` (veths), at most 15 characters
//! (`pid` and `n` in a compact base 34).
//! Everything is removed when the [`NetnsNet`] is dropped, also while unwinding from a
//! panic; [`sweep`] (run once per process by [`NetnsNet::new`]) removes what runs whose
//! process is gone left behind.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::CutLinks;

/// Prefix of every namespace this module creates.
pub const NS_PREFIX: &str = "rstore-";
/// Prefix of every interface this module creates in the root namespace.
const IF_PREFIX: &str = "rs";
/// The host part of node `i`'s address is `HOST_BASE + i`.
const HOST_BASE: usize = 10;
/// Second octets the subnets are chosen from: `10.200.0.0` to `10.249.255.0`.
const SUBNET_FIRST: u32 = 200;
const SUBNET_COUNT: u32 = 50 * 256;

/// Runs of this process so far (part of every name).
static RUNS: AtomicU32 = AtomicU32::new(0);
/// One setup at a time in this process: two runs must not pick the same subnet.
static SETUP: Mutex<()> = Mutex::new(());
/// The sweep of leftovers runs once per process.
static SWEPT: std::sync::Once = std::sync::Once::new();

/// Which backend the fault suite uses, from `RSTORE_FAULTS_NET`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Namespaces when they work, else the proxy (the default).
    Auto,
    Proxy,
    Netns,
}

impl Mode {
    /// `RSTORE_FAULTS_NET=proxy|netns|auto` (unset: auto). Panics on anything else.
    pub fn from_env() -> Mode {
        match std::env::var("RSTORE_FAULTS_NET").as_deref() {
            Err(_) | Ok("") | Ok("auto") => Mode::Auto,
            Ok("proxy") => Mode::Proxy,
            Ok("netns") => Mode::Netns,
            Ok(other) => panic!("RSTORE_FAULTS_NET={other:?}: expected proxy, netns or auto"),
        }
    }
}

/// Packets dropped by the rules so far, summed over the run's namespaces.
#[derive(Clone, Debug, Default)]
pub struct NetnsStats {
    /// Packets dropped because their link was cut.
    pub cut_drops: u64,
    /// Packets dropped at random by loss rules.
    pub loss_drops: u64,
    /// Rule updates applied (one `nft` transaction per namespace whose rules changed).
    pub updates: u64,
}

/// One node's namespace.
#[derive(Clone, Debug)]
struct NodeNs {
    ns: String,
    veth: String,
}

#[derive(Debug, Default)]
struct State {
    nodes: BTreeMap<usize, NodeNs>,
    cut: BTreeSet<(usize, usize)>,
    loss: BTreeMap<(usize, usize), u8>,
    updates: u64,
}

/// The namespaces, veths and bridge of one run. Dropping it removes all of them.
pub struct NetnsNet {
    /// `rstore-<pid>-<n>`: every namespace name starts with it.
    run: String,
    /// `rs<pid>_<n>`: every interface name starts with it.
    tag: String,
    bridge: String,
    /// The subnet `10.{0}.{1}.0/24`.
    subnet: (u8, u8),
    state: Mutex<State>,
}

impl NetnsNet {
    /// Set up a run: check privileges and tools, sweep leftovers, create the bridge and the
    /// first node's namespace (which proves `ip netns add`, veths and nftables work here).
    /// Any failure removes what was created and says why.
    pub fn new() -> Result<NetnsNet, String> {
        if !running_as_root() {
            return Err("not running as root (network namespaces need CAP_NET_ADMIN)".into());
        }
        run("ip", &["-V"]).map_err(|e| format!("iproute2 `ip` unavailable: {e}"))?;
        run("nft", &["--version"]).map_err(|e| format!("nftables `nft` unavailable: {e}"))?;
        SWEPT.call_once(|| {
            for line in sweep() {
                eprintln!("netns: swept leftover {line}");
            }
        });
        let pid = std::process::id();
        let n = RUNS.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{IF_PREFIX}{}_{}", compact(pid), compact(n));
        let _setup = SETUP.lock().unwrap_or_else(|e| e.into_inner());
        let subnet = pick_subnet(pid, n)?;
        let net = NetnsNet {
            run: format!("{NS_PREFIX}{pid}-{n}"),
            bridge: format!("{tag}b"),
            tag,
            subnet,
            state: Mutex::new(State::default()),
        };
        // From here on, dropping `net` removes whatever part was created.
        let (a, b) = subnet;
        run("ip", &["link", "add", &net.bridge, "type", "bridge"])?;
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("10.{a}.{b}.1/24"),
                "dev",
                &net.bridge,
            ],
        )?;
        run("ip", &["link", "set", &net.bridge, "up"])?;
        net.try_node(0)?;
        Ok(net)
    }

    /// Why the `SlowLinks` fault cannot run in this backend.
    pub fn delay_unavailable() -> &'static str {
        "delay needs tc netem (the sch_netem kernel module), which this kernel does not have"
    }

    /// `rstore-<pid>-<n>`: the prefix of every namespace of this run.
    pub fn prefix(&self) -> &str {
        &self.run
    }

    /// `rs<pid>_<n>`: the prefix of every interface of this run.
    pub fn if_prefix(&self) -> &str {
        &self.tag
    }

    /// The address node `index` listens on (whether or not its namespace exists yet).
    pub fn ip(&self, index: usize) -> String {
        assert!(index + HOST_BASE < 255, "node index {index} out of range");
        let (a, b) = self.subnet;
        format!("10.{a}.{b}.{}", HOST_BASE + index)
    }

    /// The address of the root namespace on the bridge.
    pub fn root_ip(&self) -> String {
        let (a, b) = self.subnet;
        format!("10.{a}.{b}.1")
    }

    /// The namespace of node `index`, created on first use. Panics if it cannot be.
    pub fn namespace(&self, index: usize) -> String {
        self.try_node(index)
            .unwrap_or_else(|e| panic!("creating the namespace of node {index}: {e}"))
    }

    /// The URLs (client, peer) node `index` advertises: its own, in its namespace.
    pub fn advertise(&self, index: usize, client_port: u16, peer_port: u16) -> (String, String) {
        self.namespace(index);
        let ip = self.ip(index);
        (
            format!("http://{ip}:{client_port}"),
            format!("http://{ip}:{peer_port}"),
        )
    }

    /// A command running `program` in node `index`'s namespace (`ip netns exec` execs it:
    /// the child's pid is the program's).
    pub fn command(&self, index: usize, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.namespace(index)])
            .arg(program);
        cmd
    }

    /// Restore the directed link `from → to`.
    pub fn restore(&self, from: usize, to: usize) {
        self.change(from, |s| {
            s.cut.remove(&(from, to));
        });
    }

    /// Drop `percent`% of the packets `from` sends to `to`, at random (0 removes the rule).
    pub fn set_loss(&self, from: usize, to: usize, percent: u8) {
        assert!(percent <= 100);
        self.change(from, |s| {
            if percent == 0 {
                s.loss.remove(&(from, to));
            } else {
                s.loss.insert((from, to), percent);
            }
        });
    }

    /// Remove every cut and every loss rule.
    pub fn heal(&self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let senders: BTreeSet<usize> = st
            .cut
            .iter()
            .map(|l| l.0)
            .chain(st.loss.keys().map(|l| l.0))
            .collect();
        st.cut.clear();
        st.loss.clear();
        for from in senders {
            self.apply(&mut st, from);
        }
    }

    /// The directed links cut right now.
    pub fn cut_links(&self) -> Vec<(usize, usize)> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.cut.iter().copied().collect()
    }

    /// Packets dropped so far, from the namespaces' nftables counters.
    pub fn stats(&self) -> NetnsStats {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut stats = NetnsStats {
            updates: st.updates,
            ..NetnsStats::default()
        };
        for node in st.nodes.values() {
            stats.cut_drops += counter(&node.ns, "cut_drops");
            stats.loss_drops += counter(&node.ns, "loss_drops");
        }
        stats
    }

    /// Update the link state and rewrite the rules of the sending node `from`.
    fn change(&self, from: usize, f: impl FnOnce(&mut State)) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut st);
        self.apply(&mut st, from);
    }

    /// Replace node `from`'s cut set and loss rules with what the state says, in one
    /// nftables transaction. Panics if `nft` fails: a fault not applied would go unseen.
    fn apply(&self, st: &mut State, from: usize) {
        let Some(node) = st.nodes.get(&from) else {
            panic!("node {from} has no namespace: it was never advertised");
        };
        let mut script = String::from("flush set inet rstore cut\nflush chain inet rstore loss\n");
        let cut: Vec<String> = st
            .cut
            .iter()
            .filter(|l| l.0 == from)
            .map(|l| self.ip(l.1))
            .collect();
        if !cut.is_empty() {
            script += &format!("add element inet rstore cut {{ {} }}\n", cut.join(", "));
        }
        for (&(_, to), &p) in st.loss.iter().filter(|(l, _)| l.0 == from) {
            // `numgen random mod 100` is 0..=99: 100% is every packet.
            let random = if p < 100 {
                format!("numgen random mod 100 < {p} ")
            } else {
                String::new()
            };
            script += &format!(
                "add rule inet rstore loss ip daddr {} {random}counter name loss_drops drop\n",
                self.ip(to)
            );
        }
        nft(&node.ns, &script)
            .unwrap_or_else(|e| panic!("updating the rules of node {from} ({}): {e}", node.ns));
        st.updates += 1;
    }

    /// Create node `index`'s namespace, veth and rules unless they exist.
    fn try_node(&self, index: usize) -> Result<String, String> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(node) = st.nodes.get(&index) {
            return Ok(node.ns.clone());
        }
        let node = NodeNs {
            ns: format!("{}-n{index}", self.run),
            veth: format!("{}v{index}", self.tag),
        };
        assert!(
            node.veth.len() <= 15,
            "interface name {} too long",
            node.veth
        );
        // Recorded first, so that a failure half-way is cleaned up on drop.
        st.nodes.insert(index, node.clone());
        let ns = node.ns.as_str();
        run("ip", &["netns", "add", ns])?;
        run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        run(
            "ip",
            &[
                "link", "add", &node.veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ],
        )?;
        run("ip", &["link", "set", &node.veth, "master", &self.bridge])?;
        run("ip", &["link", "set", &node.veth, "up"])?;
        let addr = format!("{}/24", self.ip(index));
        run("ip", &["-n", ns, "addr", "add", &addr, "dev", "eth0"])?;
        run("ip", &["-n", ns, "link", "set", "eth0", "up"])?;
        nft(ns, BASE_RULES)?;
        Ok(node.ns)
    }

    /// Remove every namespace, veth and the bridge; kill what still runs in a namespace.
    fn teardown(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        let mut failures = Vec::new();
        for node in st.nodes.values() {
            kill_all_in(&node.ns);
            if link_exists(&node.veth) {
                failures.extend(run("ip", &["link", "del", &node.veth]).err());
            }
            if ns_exists(&node.ns) {
                failures.extend(run("ip", &["netns", "del", &node.ns]).err());
            }
        }
        if link_exists(&self.bridge) {
            failures.extend(run("ip", &["link", "del", &self.bridge]).err());
        }
        for f in failures {
            eprintln!("netns cleanup of {}: {f}", self.run);
        }
    }
}

impl CutLinks for NetnsNet {
    /// Cut the directed link `from → to`: the connections `from` opens to `to` go silent.
    fn cut(&self, from: usize, to: usize) {
        self.change(from, |s| {
            s.cut.insert((from, to));
        });
    }
}

impl Drop for NetnsNet {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// The table of every node namespace. Its rules refer to conntrack, which is thereby on
/// from the start; the `cut` set and the `loss` chain are what faults change.
const BASE_RULES: &str = "\
table inet rstore {
  counter cut_drops { }
  counter loss_drops { }
  set cut { type ipv4_addr; }
  chain loss { }
  chain out {
    type filter hook output priority 0; policy accept;
    ct direction original ip daddr @cut counter name cut_drops drop
    jump loss
  }
  chain in {
    type filter hook input priority 0; policy accept;
    ct direction reply ip saddr @cut counter name cut_drops drop
  }
}
";

/// Remove namespaces and interfaces left by runs whose process is gone (a test binary
/// killed before it could clean up). Returns what was removed.
pub fn sweep() -> Vec<String> {
    let mut removed = Vec::new();
    let me = std::process::id();
    let dead = |pid: u32| pid != me && process_gone(pid);
    if let Ok(list) = run("ip", &["netns", "list"]) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            let pid = name
                .strip_prefix(NS_PREFIX)
                .and_then(|rest| rest.split('-').next())
                .and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(dead) {
                kill_all_in(name);
                if run("ip", &["netns", "del", name]).is_ok() {
                    removed.push(format!("namespace {name}"));
                }
            }
        }
    }
    if let Ok(links) = run("ip", &["-o", "link", "show"]) {
        for name in links.lines().filter_map(link_name) {
            if parse_if_name(&name).is_some_and(dead) && run("ip", &["link", "del", &name]).is_ok()
            {
                removed.push(format!("interface {name}"));
            }
        }
    }
    removed
}

/// Whether process `pid` has exited (no longer exists, or is a zombie nobody reaped yet).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `pid (comm) S ...`: the state follows the last `)`.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

/// The interface name of one line of `ip -o link show` (`3: name@peer: <...`).
fn link_name(line: &str) -> Option<String> {
    let name = line.split(": ").nth(1)?;
    Some(name.split('@').next()?.to_string())
}

/// The pid in an interface name of this module (`rs<pid>_<n>b` or `…v<i>`).
fn parse_if_name(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(IF_PREFIX)?;
    let (pid, tail) = rest.split_once('_')?;
    let digits = tail.find(['b', 'v'])?;
    let (n, kind) = tail.split_at(digits);
    let kind_ok = kind == "b" || kind[1..].parse::<usize>().is_ok();
    (from_compact(n).is_some() && kind_ok)
        .then(|| from_compact(pid))
        .flatten()
        .and_then(|p| u32::try_from(p).ok())
}

/// Digits of the compact numbers in interface names: base 34, without `b` and `v`, which
/// mark where the run counter ends.
const DIGITS: &str = "0123456789acdefghijklmnopqrstuwxyz";

fn compact(mut n: u32) -> String {
    let digits = DIGITS.as_bytes();
    let base = digits.len() as u32;
    let mut out = Vec::new();
    loop {
        out.push(digits[(n % base) as usize]);
        n /= base;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ascii")
}

fn from_compact(s: &str) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.chars().try_fold(0u64, |acc, c| {
        let d = DIGITS.find(c)? as u64;
        acc.checked_mul(DIGITS.len() as u64)?.checked_add(d)
    })
}

/// A `10.X.Y.0/24` for this run that overlaps no address or route of the root namespace.
fn pick_subnet(pid: u32, n: u32) -> Result<(u8, u8), String> {
    let mut used = Vec::new();
    for args in [
        &["-4", "-o", "addr", "show"][..],
        &["-4", "route", "show", "table", "all"][..],
    ] {
        let text = run("ip", args)?;
        used.extend(text.split_whitespace().filter_map(parse_net));
    }
    let start = (pid.wrapping_mul(97).wrapping_add(n.wrapping_mul(7919))) % SUBNET_COUNT;
    (0..SUBNET_COUNT)
        .map(|k| (start + k) % SUBNET_COUNT)
        .map(|i| ((SUBNET_FIRST + i / 256) as u8, (i % 256) as u8))
        .find(|&(a, b)| {
            let net = u32::from_be_bytes([10, a, b, 0]);
            !used.iter().any(|&(addr, len)| overlaps(net, 24, addr, len))
        })
        .ok_or_else(|| "no free 10.x.y.0/24 subnet".to_string())
}

/// `a.b.c.d` or `a.b.c.d/len` as (address, prefix length).
fn parse_net(token: &str) -> Option<(u32, u8)> {
    let (addr, len) = match token.split_once('/') {
        Some((a, l)) => (a, l.parse().ok()?),
        None => (token, 32),
    };
    let ip: std::net::Ipv4Addr = addr.parse().ok()?;
    (len <= 32).then_some((u32::from(ip), len))
}

fn overlaps(a: u32, alen: u8, b: u32, blen: u8) -> bool {
    let len = alen.min(blen);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    a & mask == b & mask
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("Uid:"))?;
            // Real, effective, saved, filesystem: the effective one decides.
            line.split_whitespace().nth(2).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

/// Run a command; its stdout, or its stderr as the error.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Run an nftables script in namespace `ns`, as one transaction.
fn nft(ns: &str, script: &str) -> Result<(), String> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("ip netns exec {ns} nft: {e}"))?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .map_err(|e| format!("writing to nft: {e}"))?;
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft in {ns} failed: {}\nscript:\n{script}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The packets a named counter of namespace `ns`'s table has counted (0 if unreadable).
fn counter(ns: &str, name: &str) -> u64 {
    let Ok(text) = run(
        "ip",
        &[
            "netns", "exec", ns, "nft", "list", "counter", "inet", "rstore", name,
        ],
    ) else {
        return 0;
    };
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == "packets" {
            return words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        }
    }
    0
}

/// SIGKILL every process left in namespace `ns` (node processes of this run).
fn kill_all_in(ns: &str) {
    let Ok(pids) = run("ip", &["netns", "pids", ns]) else {
        return;
    };
    for pid in pids.split_whitespace() {
        let _ = run("kill", &["-KILL", pid]);
    }
}

fn link_exists(name: &str) -> bool {
    run("ip", &["link", "show", "dev", name]).is_ok()
}

fn ns_exists(name: &str) -> bool {
    run("ip", &["netns", "list"])
        .is_ok_and(|l| l.lines().any(|l| l.split_whitespace().next() == Some(name)))
}

#[cfg(test)]
mod tests {
    //! The backend against helper processes in the namespaces: this test binary run again
    //! under `ip netns exec`, as an echo server or a client driven over stdin/stdout
    //! ([`helper_process`]). These tests need root; elsewhere they say so and pass, unless
    //! `RSTORE_FAULTS_NET=netns` demands the namespaces.
    use super::*;
    use std::io::{BufRead, BufReader, Read};
    use std::net::{TcpListener, TcpStream};
    use std::process::{Child, ChildStdin, ChildStdout};
    use std::time::{Duration, Instant};

    const HELPER_ENV: &str = "RSTORE_NETNS_HELPER";
    const PORT: u16 = 7100;

    /// A run, or `None` (printed) where namespaces are not available.
    fn net_or_skip(test: &str) -> Option<NetnsNet> {
        match NetnsNet::new() {
            Ok(net) => Some(net),
            Err(why) if Mode::from_env() != Mode::Netns => {
                eprintln!("{test}: skipped, no network namespaces here: {why}");
                None
            }
            Err(why) => panic!("RSTORE_FAULTS_NET=netns but: {why}"),
        }
    }

    /// A helper process in node `index`'s namespace, killed when dropped.
    struct Helper {
        child: Child,
        input: ChildStdin,
        output: BufReader<ChildStdout>,
    }

    impl Helper {
        fn start(net: &NetnsNet, index: usize, role: &str) -> Helper {
            let mut child = net
                .command(index, std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "netns::tests::helper_process",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(HELPER_ENV, role)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn helper");
            let input = child.stdin.take().unwrap();
            let output = BufReader::new(child.stdout.take().unwrap());
            let mut h = Helper {
                child,
                input,
                output,
            };
            assert_eq!(h.answer(), "ready", "helper {role} in node {index}");
            h
        }

        /// The helper's next protocol line (what follows `@`; libtest prints other lines).
        fn answer(&mut self) -> String {
            let mut line = String::new();
            loop {
                line.clear();
                if self.output.read_line(&mut line).unwrap_or(0) == 0 {
                    return "<helper exited>".into();
                }
                // libtest may print `test ... ` in front of the helper's first line.
                if let Some((_, a)) = line.trim_end().split_once('@') {
                    return a.to_string();
                }
            }
        }

        fn ask(&mut self, command: &str) -> String {
            writeln!(self.input, "{command}").unwrap();
            self.input.flush().unwrap();
            self.answer()
        }
    }

    impl Drop for Helper {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Not a test of its own: the body of helper processes, when `RSTORE_NETNS_HELPER` is
    /// set. `echo <ip>`: echo lines on `<ip>:7100`. `client`: commands on stdin, one answer
    /// (`@...`) each: `open <name> <ip>` connects (1 s timeout), `echo <name> <ms>` sends a
    /// fresh token and waits that long for it to come back.
    #[test]
    fn helper_process() {
        let Ok(role) = std::env::var(HELPER_ENV) else {
            return;
        };
        let mut words = role.split_whitespace();
        match words.next() {
            Some("echo") => {
                let ip = words.next().expect("ip");
                let l = TcpListener::bind((ip, PORT)).expect("bind echo");
                println!("@ready");
                for s in l.incoming().flatten() {
                    std::thread::spawn(move || {
                        let mut w = s.try_clone().unwrap();
                        let mut r = s;
                        let mut buf = [0u8; 1024];
                        while let Ok(n) = r.read(&mut buf) {
                            if n == 0 || w.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    });
                }
            }
            Some("client") => {
                println!("@ready");
                let mut conns: BTreeMap<String, (TcpStream, BufReader<TcpStream>)> =
                    BTreeMap::new();
                let mut token = 0u64;
                for line in std::io::stdin().lines() {
                    let line = line.unwrap();
                    let w: Vec<&str> = line.split_whitespace().collect();
                    let answer = match w[..] {
                        ["open", name, ip] => {
                            let addr = format!("{ip}:{PORT}").parse().unwrap();
                            match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                                Ok(s) => {
                                    let r = BufReader::new(s.try_clone().unwrap());
                                    conns.insert(name.to_string(), (s, r));
                                    "ok".to_string()
                                }
                                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                                    "timeout".into()
                                }
                                Err(e) => format!("error {e}"),
                            }
                        }
                        ["echo", name, ms] => {
                            let (s, r) = conns.get_mut(name).expect("open first");
                            token += 1;
                            let deadline =
                                Instant::now() + Duration::from_millis(ms.parse().unwrap());
                            let mut answer = match writeln!(s, "token-{token}") {
                                Ok(()) => "timeout".to_string(),
                                Err(e) => format!("error {e}"),
                            };
                            let mut got = String::new();
                            while answer == "timeout" {
                                let left = deadline.saturating_duration_since(Instant::now());
                                if left.is_zero() {
                                    break;
                                }
                                r.get_ref().set_read_timeout(Some(left)).unwrap();
                                got.clear();
                                match r.read_line(&mut got) {
                                    Ok(0) => answer = "closed".into(),
                                    Ok(_) if got.trim() == format!("token-{token}") => {
                                        answer = "ok".into()
                                    }
                                    // An older token, late: keep reading.
                                    Ok(_) => {}
                                    Err(e)
                                        if matches!(
                                            e.kind(),
                                            std::io::ErrorKind::WouldBlock
                                                | std::io::ErrorKind::TimedOut
                                        ) => {}
                                    Err(e) => answer = format!("error {e}"),
                                }
                            }
                            answer
                        }
                        _ => panic!("unknown command {line}"),
                    };
                    println!("@{answer}");
                }
            }
            other => panic!("unknown helper role {other:?}"),
        }
    }

    /// Connect from the root namespace (the test process) to node `index`'s echo server.
    fn root_reaches(net: &NetnsNet, index: usize) -> bool {
        let addr = format!("{}:{PORT}", net.ip(index)).parse().unwrap();
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
            return false;
        };
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut buf = [0u8; 3];
        s.write_all(b"hi\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"hi\n"
    }

    #[test]
    fn a_cut_is_one_way_and_heals_and_loss_drops_packets() {
        let Some(net) = net_or_skip("a_cut_is_one_way_and_heals") else {
            return;
        };
        let _e0 = Helper::start(&net, 0, &format!("echo {}", net.ip(0)));
        let _e1 = Helper::start(&net, 1, &format!("echo {}", net.ip(1)));
        let mut c0 = Helper::start(&net, 0, "client");
        let mut c1 = Helper::start(&net, 1, "client");
        let (ip0, ip1) = (net.ip(0), net.ip(1));
        assert!(root_reaches(&net, 0) && root_reaches(&net, 1));
        // Connections both ways, opened before the cut.
        assert_eq!(c0.ask(&format!("open old {ip1}")), "ok");
        assert_eq!(c1.ask(&format!("open old {ip0}")), "ok");
        assert_eq!(c0.ask("echo old 2000"), "ok");
        assert_eq!(c1.ask("echo old 2000"), "ok");

        net.cut(0, 1);
        assert_eq!(net.cut_links(), vec![(0, 1)]);
        // 0 → 1: new connections time out, the open one goes silent.
        assert_eq!(c0.ask(&format!("open new {ip1}")), "timeout");
        assert_eq!(c0.ask("echo old 1000"), "timeout");
        // 1 → 0 still works, new and old; the test process still reaches both.
        assert_eq!(c1.ask(&format!("open new {ip0}")), "ok");
        assert_eq!(c1.ask("echo new 2000"), "ok");
        assert_eq!(c1.ask("echo old 2000"), "ok");
        assert!(root_reaches(&net, 0) && root_reaches(&net, 1));
        let cut = net.stats();
        assert!(cut.cut_drops > 0, "{cut:?}");

        // Healed: new connections work, and the silent one carries on (TCP retransmits).
        net.heal();
        assert!(net.cut_links().is_empty());
        assert_eq!(c0.ask(&format!("open new {ip1}")), "ok");
        assert_eq!(c0.ask("echo new 2000"), "ok");
        assert_eq!(c0.ask("echo old 10000"), "ok");

        // Both ways.
        net.cut_both(0, 1);
        assert_eq!(c0.ask(&format!("open x {ip1}")), "timeout");
        assert_eq!(c1.ask(&format!("open x {ip0}")), "timeout");
        net.heal();

        // 100% loss from 0 to 1: nothing gets through, in either side's connections;
        // the drops are counted; without the rule, it works again.
        net.set_loss(0, 1, 100);
        assert_eq!(c0.ask(&format!("open y {ip1}")), "timeout");
        assert_eq!(c1.ask("echo new 1000"), "timeout");
        assert!(net.stats().loss_drops > 0, "{:?}", net.stats());
        net.set_loss(0, 1, 0);
        assert_eq!(c0.ask(&format!("open y {ip1}")), "ok");
        assert_eq!(c0.ask("echo y 2000"), "ok");
    }

    #[test]
    fn the_pid_of_a_process_in_a_namespace_is_its_own() {
        let Some(net) = net_or_skip("the_pid_of_a_process_in_a_namespace_is_its_own") else {
            return;
        };
        let h = Helper::start(&net, 0, "client");
        let exe = std::fs::read_link(format!("/proc/{}/exe", h.child.id())).unwrap();
        assert_eq!(exe, std::env::current_exe().unwrap(), "ip netns exec execs");
        let pids = run("ip", &["netns", "pids", &net.namespace(0)]).unwrap();
        assert!(
            pids.split_whitespace()
                .any(|p| p == h.child.id().to_string()),
            "{pids}"
        );
    }

    fn leftovers(ns_prefix: &str, if_prefix: &str) -> Vec<String> {
        let mut found = Vec::new();
        let namespaces = run("ip", &["netns", "list"]).unwrap();
        found.extend(
            namespaces
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .filter(|n| n.starts_with(&format!("{ns_prefix}-")))
                .map(String::from),
        );
        let links = run("ip", &["-o", "link", "show"]).unwrap();
        found.extend(
            links
                .lines()
                .filter_map(link_name)
                .filter(|n| n.starts_with(if_prefix)),
        );
        found
    }

    #[test]
    fn everything_is_removed_on_drop_and_on_panic() {
        let Some(net) = net_or_skip("everything_is_removed_on_drop_and_on_panic") else {
            return;
        };
        let (ns, ifs) = (net.prefix().to_string(), net.if_prefix().to_string());
        net.namespace(1);
        net.cut(0, 1);
        let helper = Helper::start(&net, 1, "client");
        assert_eq!(
            leftovers(&ns, &ifs).len(),
            2 + 3,
            "{:?}",
            leftovers(&ns, &ifs)
        );
        // The helper still runs when the net goes: it is killed with its namespace.
        let pid = helper.child.id();
        drop(net);
        assert!(
            leftovers(&ns, &ifs).is_empty(),
            "{:?}",
            leftovers(&ns, &ifs)
        );
        let status = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            status.is_empty() || status.contains(") Z "),
            "helper survived: {status}"
        );
        drop(helper);

        let prefixes = std::panic::catch_unwind(|| {
            let net = NetnsNet::new().unwrap();
            net.namespace(2);
            let p = (net.prefix().to_string(), net.if_prefix().to_string());
            assert_eq!(leftovers(&p.0, &p.1).len(), 2 + 3);
            // A panic without the hook's message on stderr: the drop still runs.
            std::panic::resume_unwind(Box::new(p));
        })
        .unwrap_err();
        let (ns, ifs) = prefixes.downcast_ref::<(String, String)>().unwrap();
        assert!(leftovers(ns, ifs).is_empty(), "{:?}", leftovers(ns, ifs));
    }

    #[test]
    fn the_sweep_removes_what_dead_runs_left() {
        let Some(_net) = net_or_skip("the_sweep_removes_what_dead_runs_left") else {
            return;
        };
        // A pid above the kernel's maximum belongs to no process, ever.
        let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let dead = pid_max + 1;
        let ns = format!("{NS_PREFIX}{dead}-0-n0");
        let bridge = format!("{IF_PREFIX}{}_0b", compact(dead));
        let mine = format!("{IF_PREFIX}{}_zzb", compact(std::process::id()));
        run("ip", &["netns", "add", &ns]).unwrap();
        run("ip", &["link", "add", &bridge, "type", "bridge"]).unwrap();
        run("ip", &["link", "add", &mine, "type", "bridge"]).unwrap();
        let removed = sweep();
        let still_mine = link_exists(&mine);
        let _ = run("ip", &["link", "del", &mine]);
        assert!(removed.contains(&format!("namespace {ns}")), "{removed:?}");
        assert!(
            removed.contains(&format!("interface {bridge}")),
            "{removed:?}"
        );
        assert!(!ns_exists(&ns) && !link_exists(&bridge));
        assert!(still_mine, "the sweep removed a live run's interface");
    }

    #[test]
    fn names_and_subnets() {
        for pid in [1, 35, 4_194_304, u32::MAX] {
            for n in [0, 1, 33, 34, 1000] {
                let tag = format!("{IF_PREFIX}{}_{}", compact(pid), compact(n));
                for name in [format!("{tag}b"), format!("{tag}v0"), format!("{tag}v12")] {
                    assert_eq!(parse_if_name(&name), Some(pid), "{name}");
                    if pid <= 4_194_304 && n < 1000 {
                        assert!(name.len() <= 15, "{name}");
                    }
                }
            }
        }
        for other in ["rsyslog", "rs_b", "rs1_", "rs1_2x", "eth0", "rs1_2v"] {
            assert_eq!(parse_if_name(other), None, "{other}");
        }
        assert_eq!(parse_net("10.1.2.3/8"), Some((0x0a01_0203, 8)));
        assert_eq!(parse_net("default"), None);
        let net = |s| parse_net(s).unwrap();
        let ten = net("10.200.3.0/24");
        assert!(overlaps(ten.0, 24, net("10.0.0.0/8").0, 8));
        assert!(overlaps(ten.0, 24, net("10.200.3.77").0, 32));
        assert!(!overlaps(ten.0, 24, net("10.200.4.0/24").0, 24));
        assert!(overlaps(ten.0, 24, 0, 0));
    }
}
