//! A fault-injecting TCP proxy between node processes on loopback.
//!
//! Every node gets two proxy listeners, one in front of its peer port (Raft RPC) and one
//! in front of its client port (which peers use to forward writes and read-index requests
//! to the leader). The node *advertises* the proxy addresses, so every byte one node sends
//! another goes through here, while the test's own clients talk to the nodes directly.
//!
//! A link is directed: `a → b` means the connections node `a` opens to node `b`. The proxy
//! learns which node opened an accepted connection from the kernel: it finds the client
//! socket's inode in `/proc/net/tcp` and the process holding that inode in
//! `/proc/<pid>/fd` (pids are reported by the harness at every start). No privileges, no
//! network namespaces, nothing to clean up outside this process.
//!
//! Faults:
//! - [`FaultNet::cut`] a link: the connections on it stop forwarding in both directions
//!   and silently swallow what they receive (as a dropped network does: no reset, the
//!   sender times out); new connections on it are accepted and swallowed the same way.
//!   Cutting `a → b` alone is an asymmetric partition: `b` can still reach `a`.
//! - [`FaultNet::heal`] (or [`FaultNet::restore`]): connections that were swallowing are
//!   closed (their byte streams have holes), and new connections forward again.
//! - [`FaultNet::set_delay`]: every chunk on `a → b` connections waits that long, each way.
//!
//! One deviation from a real network: a connection to a node whose process is down is
//! accepted by the proxy and then closed, rather than refused.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::CutLinks;

/// Which of a node's listeners a proxy stands in front of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    Client = 0,
    Peer = 1,
}

/// The state of every link, watched by every connection.
#[derive(Clone, Debug, Default)]
struct Links {
    cut: HashSet<(usize, usize)>,
    delay: HashMap<(usize, usize), Duration>,
    /// The proxy is going away: every connection closes.
    closed: bool,
}

#[derive(Clone, Debug, Default)]
struct Slot {
    pid: Option<u32>,
    /// The node's real client and peer ports (0 until it has started).
    upstream: [u16; 2],
    /// The proxy's ports for it.
    proxy: [u16; 2],
}

/// What the proxy has seen, for the run's report.
#[derive(Clone, Debug, Default)]
pub struct NetStats {
    /// Connections accepted.
    pub connections: u64,
    /// Live connections whose opening process was not a known node (forwarded as if no
    /// link were cut).
    pub unidentified: u64,
    /// Connections whose opener had already closed them (or died) when the proxy got to
    /// them, e.g. an RPC that timed out while the machine was busy; dropped.
    pub abandoned: u64,
    /// Connections that were cut (swallowed) at some point.
    pub swallowed: u64,
    /// Connections reset because the node behind the proxy did not accept.
    pub upstream_down: u64,
}

struct Shared {
    nodes: Mutex<Vec<Slot>>,
    links: watch::Sender<Links>,
    stats: Mutex<NetStats>,
}

/// The proxies of one cluster. Dropping it closes every listener and connection.
pub struct FaultNet {
    shared: Arc<Shared>,
    listeners: Mutex<Vec<JoinHandle<()>>>,
}

impl Default for FaultNet {
    fn default() -> Self {
        Self::new()
    }
}

impl FaultNet {
    pub fn new() -> FaultNet {
        FaultNet {
            shared: Arc::new(Shared {
                nodes: Mutex::new(Vec::new()),
                links: watch::Sender::new(Links::default()),
                stats: Mutex::new(NetStats::default()),
            }),
            listeners: Mutex::new(Vec::new()),
        }
    }

    /// The proxy URLs (client, peer) node `index` advertises, opening its listeners on
    /// first use. Must run inside a Tokio runtime.
    pub fn advertise(&self, index: usize) -> (String, String) {
        let mut nodes = self.shared.nodes.lock().unwrap();
        while nodes.len() <= index {
            nodes.push(Slot::default());
        }
        if nodes[index].proxy[0] == 0 {
            for port in [Port::Client, Port::Peer] {
                let std_listener =
                    std::net::TcpListener::bind("127.0.0.1:0").expect("bind a proxy listener");
                std_listener.set_nonblocking(true).expect("nonblocking");
                let addr = std_listener.local_addr().expect("proxy address");
                let listener = TcpListener::from_std(std_listener).expect("tokio listener");
                nodes[index].proxy[port as usize] = addr.port();
                let shared = self.shared.clone();
                self.listeners
                    .lock()
                    .unwrap()
                    .push(tokio::spawn(accept_loop(shared, listener, index, port)));
            }
        }
        let [client, peer] = nodes[index].proxy;
        (
            format!("http://127.0.0.1:{client}"),
            format!("http://127.0.0.1:{peer}"),
        )
    }

    /// Node `index` (re)started as process `pid`, listening on these real ports.
    pub fn spawned(&self, index: usize, pid: u32, client_port: u16, peer_port: u16) {
        let mut nodes = self.shared.nodes.lock().unwrap();
        while nodes.len() <= index {
            nodes.push(Slot::default());
        }
        nodes[index].pid = Some(pid);
        nodes[index].upstream = [client_port, peer_port];
    }

    /// Restore the directed link `from → to`.
    pub fn restore(&self, from: usize, to: usize) {
        self.shared.links.send_modify(|l| {
            l.cut.remove(&(from, to));
        });
    }

    /// Restore every link and remove every delay.
    pub fn heal(&self) {
        self.shared.links.send_modify(|l| {
            l.cut.clear();
            l.delay.clear();
        });
    }

    /// Delay every chunk on `from → to` connections by `delay`, each way (`ZERO` removes it).
    pub fn set_delay(&self, from: usize, to: usize, delay: Duration) {
        self.shared.links.send_modify(|l| {
            if delay.is_zero() {
                l.delay.remove(&(from, to));
            } else {
                l.delay.insert((from, to), delay);
            }
        });
    }

    /// The directed links cut right now.
    pub fn cut_links(&self) -> Vec<(usize, usize)> {
        let mut v: Vec<_> = self.shared.links.borrow().cut.iter().copied().collect();
        v.sort();
        v
    }

    pub fn stats(&self) -> NetStats {
        self.shared.stats.lock().unwrap().clone()
    }
}

impl CutLinks for FaultNet {
    /// Cut the directed link `from → to`.
    fn cut(&self, from: usize, to: usize) {
        self.shared.links.send_modify(|l| {
            l.cut.insert((from, to));
        });
    }
}

impl Drop for FaultNet {
    fn drop(&mut self) {
        self.shared.links.send_modify(|l| l.closed = true);
        for task in self.listeners.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, dst: usize, port: Port) {
    loop {
        match listener.accept().await {
            Ok((stream, from)) => {
                tokio::spawn(serve(shared.clone(), stream, from.port(), dst, port));
            }
            // Out of file descriptors or similar: wait a little rather than spin.
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Wait until `done` holds for the links (or the proxy is gone).
async fn until(links: &mut watch::Receiver<Links>, done: impl Fn(&Links) -> bool) {
    loop {
        let reached = {
            let l = links.borrow_and_update();
            l.closed || done(&l)
        };
        if reached {
            return;
        }
        if links.changed().await.is_err() {
            return;
        }
    }
}

/// One accepted connection: forward it until it closes or its link is cut, then swallow
/// what arrives until the link is restored, then close it.
async fn serve(shared: Arc<Shared>, stream: TcpStream, src_port: u16, dst: usize, port: Port) {
    let (proxy_port, pids) = {
        let nodes = shared.nodes.lock().unwrap();
        let pids: Vec<(usize, u32)> = nodes
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i, s.pid?)))
            .collect();
        (nodes[dst].proxy[port as usize], pids)
    };
    let opener = tokio::task::spawn_blocking(move || identify(src_port, proxy_port, &pids))
        .await
        .unwrap_or(Opener::Unknown);
    let src = {
        let mut stats = shared.stats.lock().unwrap();
        stats.connections += 1;
        match opener {
            Opener::Node(i) => Some(i),
            Opener::Gone => {
                stats.abandoned += 1;
                return;
            }
            Opener::Unknown => {
                stats.unidentified += 1;
                None
            }
        }
    };
    let _ = stream.set_nodelay(true);
    let link = src.map(|s| (s, dst));
    let is_cut = move |l: &Links| link.is_some_and(|k| l.cut.contains(&k));
    let mut links = shared.links.subscribe();
    let (mut cr, cw) = stream.into_split();
    if links.borrow().closed {
        return;
    }
    if is_cut(&links.borrow_and_update()) {
        shared.stats.lock().unwrap().swallowed += 1;
        swallow(&mut cr, None, &mut links, move |l| !is_cut(l)).await;
        return;
    }
    let upstream = shared.nodes.lock().unwrap()[dst].upstream[port as usize];
    let up = match upstream {
        0 => None,
        p => TcpStream::connect(("127.0.0.1", p)).await.ok(),
    };
    let Some(up) = up else {
        shared.stats.lock().unwrap().upstream_down += 1;
        return;
    };
    let _ = up.set_nodelay(true);
    let (mut ur, mut uw) = up.into_split();
    let mut cw = cw;
    let cut = {
        let forward = pump(&mut cr, &mut uw, links.clone(), link);
        let back = pump(&mut ur, &mut cw, links.clone(), link);
        let mut watcher = links.clone();
        tokio::select! {
            biased;
            _ = until(&mut watcher, is_cut) => true,
            _ = forward => false,
            _ = back => false,
        }
    };
    if cut && !links.borrow().closed {
        shared.stats.lock().unwrap().swallowed += 1;
        swallow(&mut cr, Some(&mut ur), &mut links, move |l| !is_cut(l)).await;
    }
}

/// Copy `r` to `w`, each chunk delayed by the link's current delay.
async fn pump(
    r: &mut OwnedReadHalf,
    w: &mut OwnedWriteHalf,
    links: watch::Receiver<Links>,
    link: Option<(usize, usize)>,
) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let delay = link.and_then(|k| links.borrow().delay.get(&k).copied());
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        w.write_all(&buf[..n]).await?;
    }
}

/// Read and drop whatever arrives on either side, until a side closes or `healed` holds.
async fn swallow(
    a: &mut OwnedReadHalf,
    b: Option<&mut OwnedReadHalf>,
    links: &mut watch::Receiver<Links>,
    healed: impl Fn(&Links) -> bool,
) {
    async fn drain(r: &mut OwnedReadHalf) {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = r.read(&mut buf).await {
            if n == 0 {
                return;
            }
        }
    }
    let b_drain = async {
        match b {
            Some(b) => drain(b).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = drain(a) => {}
        _ = b_drain => {}
        _ = until(links, healed) => {}
    }
}

/// Who opened a connection.
#[derive(Debug, PartialEq, Eq)]
enum Opener {
    Node(usize),
    /// The opening socket is closed already (no process holds it).
    Gone,
    /// An open socket that no known node holds.
    Unknown,
}

/// Who opened the loopback connection from `src_port` to `proxy_port`. The opener may
/// close its socket while we look (an RPC that timed out): when no node holds it, the
/// socket table is read once more to tell a closed socket from a stranger's. A node being
/// killed has an empty fd table for a moment before the kernel closes its sockets (the
/// final close is deferred to the end of its exit), so a socket nobody holds is looked
/// at again a few times, briefly, before it counts as a stranger's.
fn identify(src_port: u16, proxy_port: u16, pids: &[(usize, u32)]) -> Opener {
    let Some(inode) = socket_inode(src_port, proxy_port) else {
        return Opener::Gone;
    };
    let needle = format!("socket:[{inode}]");
    for attempt in 1..=3u64 {
        for &(index, pid) in pids {
            let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
                continue;
            };
            for entry in dir.flatten() {
                if std::fs::read_link(entry.path()).is_ok_and(|t| t.as_os_str() == needle.as_str())
                {
                    return Opener::Node(index);
                }
            }
        }
        match socket_inode(src_port, proxy_port) {
            Some(again) if again == inode => {
                std::thread::sleep(Duration::from_millis(20 * attempt))
            }
            _ => return Opener::Gone,
        }
    }
    Opener::Unknown
}

/// The inode of the established socket 127.0.0.1:`local` → 127.0.0.1:`remote`, from
/// `/proc/net/tcp` (state `01`; a socket its process closed has inode 0 or another state).
fn socket_inode(local: u16, remote: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let want_local = format!("0100007F:{local:04X}");
    let want_remote = format!("0100007F:{remote:04X}");
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 9 && f[1] == want_local && f[2] == want_remote && f[3] == "01")
            .then(|| f[9].parse().ok().filter(|inode| *inode != 0))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    //! The proxy against an echo server, with this test process playing node 0 (its own
    //! connections are identified by its pid) and the echo server playing node 1.
    use super::*;
    use std::time::Instant;

    async fn echo_server() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        port
    }

    async fn setup() -> (FaultNet, u16) {
        let net = FaultNet::new();
        let echo = echo_server().await;
        net.advertise(0);
        let (_, peer) = net.advertise(1);
        net.spawned(0, std::process::id(), 1, 1);
        net.spawned(1, 999_999_999, echo, echo);
        let port = peer.rsplit(':').next().unwrap().parse().unwrap();
        (net, port)
    }

    /// Send `msg` and wait up to `wait` for the echo: `Some(elapsed)` if it came back.
    async fn round_trip(s: &mut TcpStream, msg: &[u8], wait: Duration) -> Option<Duration> {
        let start = Instant::now();
        s.write_all(msg).await.ok()?;
        let mut buf = vec![0u8; msg.len()];
        match tokio::time::timeout(wait, s.read_exact(&mut buf)).await {
            Ok(Ok(_)) if buf == msg => Some(start.elapsed()),
            _ => None,
        }
    }

    #[tokio::test]
    async fn forwards_cuts_swallows_heals_and_delays() {
        let (net, port) = setup().await;
        let short = Duration::from_millis(300);
        let long = Duration::from_secs(5);
        let mut a = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        assert!(round_trip(&mut a, b"hello", long).await.is_some());
        assert_eq!(net.stats().unidentified, 0, "this process is node 0");

        // Cutting the other direction changes nothing for 0 → 1.
        net.cut(1, 0);
        assert!(round_trip(&mut a, b"still", long).await.is_some());

        // Cut 0 → 1: the open connection goes silent, and so does a new one.
        net.cut(0, 1);
        assert!(round_trip(&mut a, b"lost", short).await.is_none());
        let mut b = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        assert!(round_trip(&mut b, b"lost too", short).await.is_none());

        // Heal: the swallowing connections are closed, new ones forward again.
        net.heal();
        for s in [&mut a, &mut b] {
            let mut buf = [0u8; 16];
            let r = tokio::time::timeout(long, s.read(&mut buf)).await;
            assert!(
                matches!(r, Ok(Ok(0)) | Ok(Err(_))),
                "closed after heal: {r:?}"
            );
        }
        let mut c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        assert!(round_trip(&mut c, b"back", long).await.is_some());

        // Delay: 150 ms each way.
        net.set_delay(0, 1, Duration::from_millis(150));
        let took = round_trip(&mut c, b"slow", long)
            .await
            .expect("delayed echo");
        assert!(took >= Duration::from_millis(300), "{took:?}");
        net.set_delay(0, 1, Duration::ZERO);
        let took = round_trip(&mut c, b"fast", long).await.expect("echo");
        assert!(took < Duration::from_millis(300), "{took:?}");
        let stats = net.stats();
        assert_eq!((stats.connections, stats.swallowed), (3, 2), "{stats:?}");
    }

    #[tokio::test]
    async fn a_down_node_closes_and_dropping_the_net_closes_everything() {
        let (net, port) = setup().await;
        let mut a = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        assert!(
            round_trip(&mut a, b"x", Duration::from_secs(5))
                .await
                .is_some()
        );
        // Node 1 "restarts" on a port where nothing listens.
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead_port = dead.local_addr().unwrap().port();
        drop(dead);
        net.spawned(1, 999_999_999, dead_port, dead_port);
        let mut b = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        assert!(
            round_trip(&mut b, b"y", Duration::from_secs(2))
                .await
                .is_none()
        );
        assert_eq!(net.stats().upstream_down, 1);
        drop(net);
        let mut buf = [0u8; 4];
        let r = tokio::time::timeout(Duration::from_secs(5), a.read(&mut buf)).await;
        assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "closed on drop: {r:?}");
    }
}
