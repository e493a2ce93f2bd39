//! Name resolution for connections to peers: an optional hosts file (`--hosts-file`, in the
//! format of `/etc/hosts`) consulted before the system resolver.
//!
//! Members reach each other by the names their certificates carry (in Kubernetes,
//! `<pod>.<name>-peer.<ns>.svc`), and the peer port checks that the sender's certificate names
//! the peer URL the membership records. Where no DNS knows those names (the local control
//! plane runs every pod on loopback) a hosts file maps them to addresses, as `/etc/hosts`
//! does, without rewriting the URLs the certificates are checked against. The file is read
//! again when it changes, so that pods added later resolve too. It is process-wide, as name
//! resolution is.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::SystemTime;

use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};

static FILE: OnceLock<PathBuf> = OnceLock::new();
/// Names to addresses.
type Map = HashMap<String, Vec<IpAddr>>;
/// The parsed file, with the modification time and length it was read at.
static CACHE: Mutex<Option<(SystemTime, u64, Map)>> = Mutex::new(None);

/// Use `path` for every later peer connection. Only the first call counts.
pub fn set_file(path: PathBuf) {
    let _ = FILE.set(path);
}

/// Parse hosts-file text: `ADDRESS NAME [NAME...]` per line, `#` starts a comment.
pub fn parse(text: &str) -> Map {
    let mut map = Map::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let Some(Ok(ip)) = words.next().map(str::parse::<IpAddr>) else {
            continue;
        };
        for name in words {
            map.entry(name.to_ascii_lowercase()).or_default().push(ip);
        }
    }
    map
}

/// The addresses the hosts file gives `host`, if one is set and names it.
pub fn lookup(host: &str) -> Option<Vec<IpAddr>> {
    let path = FILE.get()?;
    let meta = std::fs::metadata(path).ok()?;
    let stamp = (meta.modified().ok()?, meta.len());
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    let fresh = cache.as_ref().is_some_and(|(m, l, _)| (*m, *l) == stamp);
    if !fresh {
        let text = std::fs::read_to_string(path).ok()?;
        *cache = Some((stamp.0, stamp.1, parse(&text)));
    }
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    cache.as_ref()?.2.get(&host).cloned()
}

/// hyper's resolver: the hosts file first, then the system's (`getaddrinfo`).
#[derive(Clone)]
pub struct Resolver {
    system: GaiResolver,
}

impl Default for Resolver {
    fn default() -> Self {
        Self::new()
    }
}

impl Resolver {
    pub fn new() -> Self {
        Self {
            system: GaiResolver::new(),
        }
    }
}

type Addrs = std::vec::IntoIter<SocketAddr>;

impl tower::Service<Name> for Resolver {
    type Response = Addrs;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Addrs, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        if let Some(ips) = lookup(name.as_str()) {
            // The connector sets the port of the URL on each address.
            let addrs: Vec<SocketAddr> = ips.into_iter().map(|ip| SocketAddr::new(ip, 0)).collect();
            return Box::pin(std::future::ready(Ok(addrs.into_iter())));
        }
        let mut system = self.system.clone();
        Box::pin(async move {
            let addrs = tower::Service::call(&mut system, name).await?;
            Ok(addrs.collect::<Vec<_>>().into_iter())
        })
    }
}

/// The same resolution for `reqwest` clients (the node CLI's `--hosts-file`).
#[derive(Clone, Copy, Default)]
pub struct ReqwestResolver;

impl reqwest::dns::Resolve for ReqwestResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = match lookup(&host) {
                Some(ips) => ips.into_iter().map(|ip| SocketAddr::new(ip, 0)).collect(),
                None => tokio::net::lookup_host((host.as_str(), 0)).await?.collect(),
            };
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_format_is_read_as_etc_hosts() {
        let map = parse(
            "# pods\n127.1.2.3 db-0.db-peer.default.svc  db-0\n\n::1 Six.Example # v6\nnot-an-ip x\n",
        );
        assert_eq!(
            map["db-0.db-peer.default.svc"],
            vec!["127.1.2.3".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(map["db-0"].len(), 1);
        assert_eq!(map["six.example"], vec!["::1".parse::<IpAddr>().unwrap()]);
        assert!(
            !map.contains_key("x"),
            "a line without an address names nothing"
        );
    }
}
