//! The closed-loop load driver and the two clients it drives.
//!
//! A phase runs `clients` tasks. Each task owns one connection ([`Conn`]) and issues
//! its next request as soon as the previous one returns, on a key drawn uniformly at
//! random from a fixed key space. Requests that start during the warmup, or finish
//! after the measured window closes, are not counted; the rest are recorded in a
//! per-task HDR histogram (microseconds), merged at the end.
//!
//! The driver is generic over [`Target`], with one implementation per system:
//! [`RstoreTarget`] (its HTTP API, one HTTP/1.1 keep-alive connection per client task,
//! through hyper, with the TLS configuration, token and error parser of
//! `rstore_api::client`) and [`EtcdTarget`] (etcd's gRPC API, one HTTP/2 connection per client
//! task). Task `i` talks to member `i % members`, for both systems.

use rstore_api::ReplicationMode;
use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rstore_api::client::kv_path;
use serde::Serialize;

/// Highest latency the histograms can hold: one minute, in microseconds.
const MAX_LATENCY_US: u64 = 60_000_000;
/// How many distinct error messages a phase keeps to show.
const MAX_ERROR_SAMPLES: usize = 5;
/// Clients used to write every key before the first read phase.
const POPULATE_CLIENTS: usize = 64;

/// One request kind of the load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    Put,
    /// rstore `consistency=linearizable`, etcd's default (linearizable) range.
    GetLinearizable,
    /// rstore `consistency=stale`, etcd `serializable`.
    GetStale,
}

impl Op {
    pub fn is_read(self) -> bool {
        !matches!(self, Self::Put)
    }
}

/// One phase of the benchmark: an operation at a number of closed-loop clients.
/// Written as `put<N>`, `get-lin<N>` or `get-stale<N>`, e.g. `put16`, optionally with
/// `@quorum`, `@sync` or `@async`: rstore is switched to that replication mode (live,
/// through its admin API) for the phase; etcd runs the same load as the reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Phase {
    pub op: Op,
    pub clients: usize,
    pub mode: Option<ReplicationMode>,
}

impl Phase {
    /// The phases run when `--phases` is not given.
    pub const DEFAULT_LIST: &'static str =
        "put1,put16,put64,put256,get-lin64,get-stale64,put64@sync,put64@async";
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = match self.op {
            Op::Put => "put",
            Op::GetLinearizable => "get-lin",
            Op::GetStale => "get-stale",
        };
        write!(f, "{prefix}{}", self.clients)?;
        if let Some(m) = self.mode {
            write!(f, "@{}", m.as_str())?;
        }
        Ok(())
    }
}

impl FromStr for Phase {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (s, mode) = match s.split_once('@') {
            None => (s, None),
            Some((p, m)) => (
                p,
                Some(m.parse::<ReplicationMode>().map_err(|_| {
                    format!("phase {s:?}: unknown mode {m:?}; use quorum, sync or async")
                })?),
            ),
        };
        // Longest prefix first: "get-stale" must not be read as "get-s"...
        let (op, rest) = [
            ("get-stale", Op::GetStale),
            ("get-lin", Op::GetLinearizable),
            ("put", Op::Put),
        ]
        .into_iter()
        .find_map(|(p, op)| s.strip_prefix(p).map(|rest| (op, rest)))
        .ok_or_else(|| {
            format!("unknown phase {s:?}: expected put<N>, get-lin<N> or get-stale<N>")
        })?;
        match rest.parse::<usize>() {
            Ok(clients) if clients > 0 => Ok(Self { op, clients, mode }),
            _ => Err(format!(
                "phase {s:?}: expected a positive client count after the operation"
            )),
        }
    }
}

/// What every phase has in common.
#[derive(Clone, Debug)]
pub struct LoadShape {
    /// Keys are `bench-00000` .. `bench-{keys-1}`.
    pub keys: Arc<Vec<String>>,
    pub value: Bytes,
    pub warmup: Duration,
    pub measure: Duration,
    /// A request slower than this counts as an error.
    pub request_timeout: Duration,
}

impl LoadShape {
    pub fn new(keys: usize, value_bytes: usize, warmup: Duration, measure: Duration) -> Self {
        Self {
            keys: Arc::new((0..keys).map(|i| format!("bench-{i:05}")).collect()),
            value: Bytes::from(vec![b'v'; value_bytes]),
            warmup,
            measure,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a single request failed.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The node's answer, read by the shared parser of its JSON error body.
    #[error("HTTP {0}")]
    Api(rstore_api::client::ApiError),
    #[error("transport: {0}")]
    Transport(String),
    #[error("no answer within the request timeout")]
    Timeout,
    #[error("key not found")]
    NotFound,
    #[error("value of {got} bytes read back, {expected} expected")]
    BadValue { expected: usize, got: usize },
}

/// A system under test, as seen by the driver.
pub trait Target: Send + Sync + 'static {
    type Conn: Conn;

    /// Opens (or reuses) the connection for client task `index`. Not timed.
    fn connect(&self, index: usize) -> impl Future<Output = Result<Self::Conn, OpError>> + Send;
}

/// One client task's connection.
pub trait Conn: Send + 'static {
    fn put(&mut self, key: &str, value: &Bytes)
    -> impl Future<Output = Result<(), OpError>> + Send;

    /// Returns the length of the value read.
    fn get(&mut self, key: &str, op: Op) -> impl Future<Output = Result<usize, OpError>> + Send;
}

/// rstore over its HTTP API.
pub struct RstoreTarget {
    /// `host:port` of each node's client listener.
    addrs: Vec<String>,
    /// With TLS: the client configuration and the `Authorization` header value.
    tls: Option<Arc<RstoreTls>>,
}

/// How the rstore load clients connect with TLS and authenticate.
pub struct RstoreTls {
    pub config: Arc<rustls::ClientConfig>,
    pub authorization: hyper::header::HeaderValue,
}

impl RstoreTarget {
    /// `urls` are the nodes' client URLs (`https://host:port`, or `http://` without TLS).
    pub fn new(urls: Vec<String>, tls: Option<Arc<RstoreTls>>) -> Result<Self, OpError> {
        let prefix = if tls.is_some() { "https://" } else { "http://" };
        let addrs = urls
            .iter()
            .map(|u| {
                u.strip_prefix(prefix)
                    .map(|a| a.trim_end_matches('/').to_string())
                    .ok_or_else(|| OpError::Transport(format!("not an {prefix} URL: {u}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { addrs, tls })
    }
}

type Sender = hyper::client::conn::http1::SendRequest<http_body_util::Full<Bytes>>;

/// One client task's own HTTP/1.1 keep-alive connection, driven through hyper directly (no
/// pool, URL parser or redirect layer per request), as lean per request as etcd's gRPC
/// client over its HTTP/2 connection, so that the client's CPU share does not skew the
/// comparison on a small machine.
pub struct RstoreConn {
    addr: String,
    tls: Option<Arc<RstoreTls>>,
    /// `None` after a failed or abandoned request: the next request opens a new connection,
    /// since an HTTP/1.1 connection with an unread answer cannot carry another request.
    sender: Option<Sender>,
}

async fn open_connection(addr: &str, tls: Option<&RstoreTls>) -> Result<Sender, OpError> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| OpError::Transport(format!("connect to {addr}: {e}")))?;
    stream
        .set_nodelay(true)
        .map_err(|e| OpError::Transport(e.to_string()))?;
    let Some(tls) = tls else {
        return handshake(addr, stream).await;
    };
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).to_string();
    let name = rustls::pki_types::ServerName::try_from(host)
        .map_err(|e| OpError::Transport(format!("{addr}: {e}")))?;
    let stream = tokio_rustls::TlsConnector::from(tls.config.clone())
        .connect(name, stream)
        .await
        .map_err(|e| OpError::Transport(format!("TLS handshake with {addr}: {e}")))?;
    handshake(addr, stream).await
}

async fn handshake<S>(addr: &str, stream: S) -> Result<Sender, OpError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| OpError::Transport(format!("handshake with {addr}: {e}")))?;
    tokio::spawn(conn);
    Ok(sender)
}

impl Target for RstoreTarget {
    type Conn = RstoreConn;

    async fn connect(&self, index: usize) -> Result<RstoreConn, OpError> {
        let addr = self.addrs[index % self.addrs.len()].clone();
        let sender = Some(open_connection(&addr, self.tls.as_deref()).await?);
        Ok(RstoreConn {
            addr,
            tls: self.tls.clone(),
            sender,
        })
    }
}

impl RstoreConn {
    /// Sends one request and reads the whole answer; anything but a 2xx is an error.
    async fn call(
        &mut self,
        method: hyper::Method,
        path_and_query: String,
        body: Bytes,
    ) -> Result<Bytes, OpError> {
        let mut sender = match self.sender.take() {
            Some(s) if !s.is_closed() => s,
            _ => open_connection(&self.addr, self.tls.as_deref()).await?,
        };
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(hyper::header::HOST, &self.addr);
        if let Some(tls) = &self.tls {
            req = req.header(hyper::header::AUTHORIZATION, tls.authorization.clone());
        }
        let req = req
            .body(http_body_util::Full::new(body))
            .map_err(|e| OpError::Transport(e.to_string()))?;
        sender
            .ready()
            .await
            .map_err(|e| OpError::Transport(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| OpError::Transport(e.to_string()))?;
        let status = resp.status();
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .map_err(|e| OpError::Transport(e.to_string()))?
            .to_bytes();
        self.sender = Some(sender);
        if status.is_success() {
            Ok(body)
        } else {
            Err(OpError::Api(rstore_api::client::ApiError::from_answer(
                status.as_u16(),
                &body,
            )))
        }
    }
}

impl Conn for RstoreConn {
    async fn put(&mut self, key: &str, value: &Bytes) -> Result<(), OpError> {
        self.call(hyper::Method::PUT, kv_path(key), value.clone())
            .await?;
        Ok(())
    }

    async fn get(&mut self, key: &str, op: Op) -> Result<usize, OpError> {
        let consistency = match op {
            Op::GetStale => "stale",
            _ => "linearizable",
        };
        let path = format!("{}?consistency={consistency}", kv_path(key));
        Ok(self
            .call(hyper::Method::GET, path, Bytes::new())
            .await?
            .len())
    }
}

/// etcd over its gRPC API.
pub struct EtcdTarget {
    urls: Vec<String>,
    options: Option<etcd_client::ConnectOptions>,
    // Connections are made once and reused by later phases: entry `i` belongs to
    // client task `i`, connected to member `i % urls.len()`.
    pool: tokio::sync::Mutex<Vec<etcd_client::KvClient>>,
}

impl EtcdTarget {
    pub fn new(urls: Vec<String>, options: Option<etcd_client::ConnectOptions>) -> Self {
        Self {
            urls,
            options,
            pool: tokio::sync::Mutex::new(Vec::new()),
        }
    }
}

pub struct EtcdConn {
    kv: etcd_client::KvClient,
}

impl Target for EtcdTarget {
    type Conn = EtcdConn;

    async fn connect(&self, index: usize) -> Result<EtcdConn, OpError> {
        let mut pool = self.pool.lock().await;
        while pool.len() <= index {
            let url = &self.urls[pool.len() % self.urls.len()];
            // One endpoint per client: the channel is a single HTTP/2 connection, not
            // etcd-client's balancer over all members.
            let client = etcd_client::Client::connect([url.as_str()], self.options.clone())
                .await
                .map_err(|e| OpError::Transport(format!("connect to {url}: {e}")))?;
            pool.push(client.kv_client());
        }
        Ok(EtcdConn {
            kv: pool[index].clone(),
        })
    }
}

impl Conn for EtcdConn {
    async fn put(&mut self, key: &str, value: &Bytes) -> Result<(), OpError> {
        self.kv
            .put(key, value.to_vec(), None)
            .await
            .map_err(|e| OpError::Transport(e.to_string()))?;
        Ok(())
    }

    async fn get(&mut self, key: &str, op: Op) -> Result<usize, OpError> {
        let options = match op {
            Op::GetStale => Some(etcd_client::GetOptions::new().with_serializable()),
            _ => None,
        };
        let resp = self
            .kv
            .get(key, options)
            .await
            .map_err(|e| OpError::Transport(e.to_string()))?;
        resp.kvs()
            .first()
            .map(|kv| kv.value().len())
            .ok_or(OpError::NotFound)
    }
}

/// Measured outcome of one phase against one system.
#[derive(Clone, Debug, Serialize)]
pub struct PhaseStats {
    /// Successful requests inside the measured window.
    pub ops: u64,
    /// Failed requests that started inside the measured window.
    pub errors: u64,
    pub seconds: f64,
    pub ops_per_sec: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// A few distinct error messages, to see what went wrong.
    pub error_samples: Vec<String>,
}

/// What one client task saw.
struct TaskTally {
    hist: Histogram<u64>,
    ops: u64,
    errors: u64,
    error_samples: Vec<String>,
}

/// Wait for every client task and merge what they saw; a panicking task panics here too.
async fn join_tallies(
    tasks: &mut tokio::task::JoinSet<TaskTally>,
    what: &str,
) -> Result<TaskTally, OpError> {
    let mut total = TaskTally::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(tally) => total.merge(tally),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => return Err(OpError::Transport(format!("{what} task failed: {e}"))),
        }
    }
    Ok(total)
}

impl TaskTally {
    fn new() -> Self {
        Self {
            hist: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("static histogram bounds are valid"),
            ops: 0,
            errors: 0,
            error_samples: Vec::new(),
        }
    }

    fn error(&mut self, e: &OpError) {
        self.errors += 1;
        let msg = e.to_string();
        if self.error_samples.len() < MAX_ERROR_SAMPLES && !self.error_samples.contains(&msg) {
            self.error_samples.push(msg);
        }
    }

    fn merge(&mut self, other: TaskTally) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.hist.add(&other.hist);
        self.ops += other.ops;
        self.errors += other.errors;
        for msg in other.error_samples {
            if self.error_samples.len() < MAX_ERROR_SAMPLES && !self.error_samples.contains(&msg) {
                self.error_samples.push(msg);
            }
        }
    }
}

/// Issues one request of kind `op` and checks what a read returned.
async fn one_request<C: Conn>(
    conn: &mut C,
    op: Op,
    key: &str,
    shape: &LoadShape,
) -> Result<(), OpError> {
    let request = async {
        match op {
            Op::Put => conn.put(key, &shape.value).await,
            Op::GetLinearizable | Op::GetStale => {
                let got = conn.get(key, op).await?;
                if got == shape.value.len() {
                    Ok(())
                } else {
                    Err(OpError::BadValue {
                        expected: shape.value.len(),
                        got,
                    })
                }
            }
        }
    };
    tokio::time::timeout(shape.request_timeout, request)
        .await
        .unwrap_or(Err(OpError::Timeout))
}

/// Runs one phase: connects `phase.clients` tasks, runs them closed-loop for the
/// warmup plus the measured window, and merges what they recorded.
pub async fn run_phase<T: Target>(
    target: &Arc<T>,
    phase: &Phase,
    shape: &LoadShape,
) -> Result<Measured, OpError> {
    let mut conns = Vec::with_capacity(phase.clients);
    for i in 0..phase.clients {
        conns.push(target.connect(i).await?);
    }
    let start = Instant::now();
    let measure_start = start + shape.warmup;
    let end = measure_start + shape.measure;

    let mut tasks = tokio::task::JoinSet::new();
    for mut conn in conns {
        let shape = shape.clone();
        let op = phase.op;
        tasks.spawn(async move {
            let mut rng = StdRng::from_entropy();
            let mut tally = TaskTally::new();
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let key = &shape.keys[rng.gen_range(0..shape.keys.len())];
                let result = one_request(&mut conn, op, key, &shape).await;
                let t1 = Instant::now();
                if t0 < measure_start {
                    continue;
                }
                match result {
                    Ok(()) if t1 <= end => {
                        let us =
                            u64::try_from(t1.duration_since(t0).as_micros()).unwrap_or(u64::MAX);
                        tally.hist.saturating_record(us.max(1));
                        tally.ops += 1;
                    }
                    // Finished after the window closed: neither counted nor timed.
                    Ok(()) => {}
                    Err(e) => tally.error(&e),
                }
            }
            tally
        });
    }

    let tally = join_tallies(&mut tasks, "client").await?;
    Ok(Measured {
        tally,
        window: shape.measure,
    })
}

/// What one or more measured windows of a phase saw, before it is summarized.
pub struct Measured {
    tally: TaskTally,
    window: Duration,
}

impl Measured {
    /// Add a window of a phase (one round) to what `total` holds so far.
    pub fn add(total: &mut Option<Measured>, round: Measured) {
        match total {
            Some(t) => {
                t.tally.merge(round.tally);
                t.window += round.window;
            }
            None => *total = Some(round),
        }
    }

    pub fn stats(self) -> PhaseStats {
        stats(self.tally, self.window)
    }

    /// Operations per second over the window(s) measured.
    pub fn ops_per_sec(&self) -> f64 {
        self.tally.ops as f64 / self.window.as_secs_f64().max(1e-9)
    }
}

fn stats(tally: TaskTally, window: Duration) -> PhaseStats {
    let ms = |us: u64| us as f64 / 1000.0;
    let h = &tally.hist;
    let empty = h.is_empty();
    let q = |quantile: f64| {
        if empty {
            0.0
        } else {
            ms(h.value_at_quantile(quantile))
        }
    };
    let seconds = window.as_secs_f64();
    PhaseStats {
        ops: tally.ops,
        errors: tally.errors,
        seconds,
        ops_per_sec: tally.ops as f64 / seconds,
        mean_ms: if empty { 0.0 } else { h.mean() / 1000.0 },
        p50_ms: q(0.50),
        p90_ms: q(0.90),
        p99_ms: q(0.99),
        p999_ms: q(0.999),
        max_ms: if empty { 0.0 } else { ms(h.max()) },
        error_samples: tally.error_samples,
    }
}

/// Outcome of writing every key once.
#[derive(Clone, Debug, Serialize)]
pub struct Populated {
    pub keys: usize,
    pub errors: u64,
    pub seconds: f64,
    pub error_samples: Vec<String>,
}

/// Writes every key of the key space once, so that reads never miss.
pub async fn populate<T: Target>(target: &Arc<T>, shape: &LoadShape) -> Result<Populated, OpError> {
    let start = Instant::now();
    let clients = POPULATE_CLIENTS.min(shape.keys.len()).max(1);
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..clients {
        let mut conn = target.connect(task).await?;
        let shape = shape.clone();
        tasks.spawn(async move {
            let mut tally = TaskTally::new();
            for key in shape.keys.iter().skip(task).step_by(clients) {
                // A put that fails here is retried a few times: reads of a missing
                // key would otherwise show up as errors in every read phase.
                let mut attempt = 0;
                loop {
                    match one_request(&mut conn, Op::Put, key, &shape).await {
                        Ok(()) => break,
                        Err(e) if attempt >= 3 => {
                            tally.error(&e);
                            break;
                        }
                        Err(_) => {
                            attempt += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
            tally
        });
    }
    let total = join_tallies(&mut tasks, "populate").await?;
    Ok(Populated {
        keys: shape.keys.len(),
        errors: total.errors,
        seconds: start.elapsed().as_secs_f64(),
        error_samples: total.error_samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_parse_and_print_back() {
        for name in Phase::DEFAULT_LIST.split(',') {
            let phase: Phase = name.parse().unwrap();
            assert_eq!(phase.to_string(), name);
        }
        assert_eq!(
            "get-stale64".parse::<Phase>().unwrap(),
            Phase {
                op: Op::GetStale,
                clients: 64,
                mode: None,
            }
        );
        assert_eq!(
            "put64@sync".parse::<Phase>().unwrap(),
            Phase {
                op: Op::Put,
                clients: 64,
                mode: Some(ReplicationMode::Sync),
            }
        );
    }

    #[test]
    fn bad_phases_are_rejected() {
        for bad in [
            "",
            "put",
            "put0",
            "get64",
            "get-lin-1",
            "delete8",
            "put8@eventual",
        ] {
            assert!(bad.parse::<Phase>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn rounds_add_up_to_one_phase() {
        let round = |ops: u64, latency_us: u64| {
            let mut tally = TaskTally::new();
            for _ in 0..ops {
                tally.hist.saturating_record(latency_us);
            }
            tally.ops = ops;
            Measured {
                tally,
                window: Duration::from_secs(1),
            }
        };
        let mut total = None;
        Measured::add(&mut total, round(100, 1_000));
        Measured::add(&mut total, round(300, 3_000));
        let s = total.expect("two rounds").stats();
        assert_eq!(s.ops, 400);
        assert_eq!(s.seconds, 2.0);
        assert_eq!(s.ops_per_sec, 200.0);
        // Percentiles come from the merged histogram, not from either round alone.
        assert!((2.9..=3.1).contains(&s.p50_ms), "{}", s.p50_ms);
        assert!((2.45..=2.55).contains(&s.mean_ms), "{}", s.mean_ms);
    }

    #[test]
    fn stats_of_an_empty_window_are_zero() {
        let s = stats(TaskTally::new(), Duration::from_secs(1));
        assert_eq!(s.ops, 0);
        assert_eq!(s.p99_ms, 0.0);
    }
}
