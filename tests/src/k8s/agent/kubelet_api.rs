//! The kubelet's own HTTPS port, as far as `kubectl logs` needs it.
//!
//! The API server answers `kubectl logs` by calling the kubelet of the pod's Node at its
//! InternalIP and `status.daemonEndpoints.kubeletEndpoint.Port`, with its kubelet-client
//! certificate. This server is that port for every Node of the agent: it accepts only
//! clients whose certificate the cluster CA signed, and serves
//! `GET /containerLogs/{namespace}/{pod}/{container}` from the log files the runtime writes
//! (`pods/<ns>/<pod>/<container>.log`, and `.previous.log` for `--previous`), with the
//! `follow`, `tailLines` and `limitBytes` parameters. A followed log ends when the container
//! exits, as the kubelet's does.
//!
//! `exec`, `attach` and `port-forward` need the SPDY streaming protocol towards the API
//! server; they are refused with a message saying so (`kubectl exec` is not supported by the
//! node agent).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use rstore_api::pki::Ca;

type Body = BoxBody<Bytes, std::io::Error>;

/// How often a followed log is checked for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(250);

/// Starts the server on `host:0`; returns its port and its task.
pub async fn serve(host: &str, ca: &Ca, pods_dir: PathBuf) -> Result<(u16, JoinHandle<()>)> {
    let tls = tls_config(host, ca)?;
    let listener = TcpListener::bind((host, 0))
        .await
        .with_context(|| format!("cannot bind the kubelet port on {host}"))?;
    let port = listener.local_addr()?.port();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let pods_dir = Arc::new(pods_dir);
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, peer)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let pods_dir = pods_dir.clone();
            tokio::spawn(async move {
                let tls = match acceptor.accept(tcp).await {
                    Ok(t) => t,
                    Err(e) => {
                        debug!(%peer, error = %e, "kubelet port: TLS handshake refused");
                        return;
                    }
                };
                let svc = hyper::service::service_fn(move |req| {
                    let pods_dir = pods_dir.clone();
                    async move { Ok::<_, Infallible>(handle(&pods_dir, peer, req).await) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await
                {
                    debug!(%peer, error = %e, "kubelet port: connection");
                }
            });
        }
    });
    Ok((port, task))
}

fn tls_config(host: &str, ca: &Ca) -> Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let serving = ca.server("rstore-node-agent", &[host.to_owned()])?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.pem().cert.as_bytes()) {
        roots.add(c.context("the cluster CA")?)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .context("the kubelet port's client verifier")?;
    let chain = CertificateDer::pem_slice_iter(serving.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("the kubelet serving certificate")?;
    let key =
        PrivateKeyDer::from_pem_slice(serving.key.as_bytes()).context("the kubelet serving key")?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut msg = msg.into();
    msg.push('\n');
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(
            Full::new(Bytes::from(msg))
                .map_err(|never| match never {})
                .boxed(),
        )
        .expect("a static response")
}

/// The query parameters of `containerLogs` this server honours.
#[derive(Debug, Default, PartialEq)]
struct LogQuery {
    follow: bool,
    previous: bool,
    tail_lines: Option<usize>,
    limit_bytes: Option<u64>,
}

fn parse_query(q: Option<&str>) -> Result<LogQuery, String> {
    let mut out = LogQuery::default();
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, "true"));
        let flag = |v: &str| v == "true" || v == "1";
        match k {
            "follow" => out.follow = flag(v),
            "previous" => out.previous = flag(v),
            "tailLines" => {
                // kubectl sends -1 for "all".
                let n: i64 = v
                    .parse()
                    .map_err(|_| format!("tailLines={v:?} is not a number"))?;
                out.tail_lines = usize::try_from(n).ok();
            }
            "limitBytes" => {
                let n: u64 = v
                    .parse()
                    .map_err(|_| format!("limitBytes={v:?} is not a positive number"))?;
                out.limit_bytes = Some(n);
            }
            // Accepted, not applied: the log files carry no per-line times.
            "timestamps" | "sinceSeconds" | "sinceTime" | "insecureSkipTLSVerifyBackend" => {}
            _ => {}
        }
    }
    Ok(out)
}

async fn handle(pods_dir: &Path, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    debug!(%peer, %path, "kubelet port");
    match parts.as_slice() {
        ["healthz"] => text(StatusCode::OK, "ok"),
        ["containerLogs", ns, pod, ctr] if req.method() == http::Method::GET => {
            let q = match parse_query(req.uri().query()) {
                Ok(q) => q,
                Err(e) => return text(StatusCode::BAD_REQUEST, e),
            };
            logs(pods_dir, ns, pod, ctr, q).await
        }
        [op, ..] if matches!(*op, "exec" | "attach" | "portForward" | "run") => text(
            StatusCode::NOT_IMPLEMENTED,
            format!(
                "{op} is not supported by the rstore node agent (it serves logs only); \
                 the pod's files are on this machine under the plane's pods/ directory"
            ),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            format!("{path}: not served by the node agent"),
        ),
    }
}

/// A path segment as a file name: no separators, no `..`.
fn segment(s: &str) -> Option<&str> {
    (!s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\\', '\0'])).then_some(s)
}

async fn logs(pods_dir: &Path, ns: &str, pod: &str, ctr: &str, q: LogQuery) -> Response<Body> {
    let (Some(ns), Some(pod), Some(ctr)) = (segment(ns), segment(pod), segment(ctr)) else {
        return text(
            StatusCode::BAD_REQUEST,
            "bad namespace, pod or container name",
        );
    };
    let dir = pods_dir.join(ns).join(pod);
    let file = if q.previous {
        dir.join(format!("{ctr}.previous.log"))
    } else {
        dir.join(format!("{ctr}.log"))
    };
    let mut f = match tokio::fs::File::open(&file).await {
        Ok(f) => f,
        Err(_) if q.previous => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("previous terminated container \"{ctr}\" in pod \"{pod}\" not found"),
            );
        }
        Err(_) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!(
                    "container \"{ctr}\" in pod \"{pod}\" is waiting to start: it has no log yet"
                ),
            );
        }
    };
    let mut all = Vec::new();
    if let Err(e) = f.read_to_end(&mut all).await {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{}: {e}", file.display()),
        );
    }
    let mut start = tail_start(&all, q.tail_lines);
    let mut budget = q.limit_bytes.unwrap_or(u64::MAX);
    let mut first = all.split_off(start);
    clip(&mut first, &mut budget);
    start += first.len();
    if !q.follow || q.previous || budget == 0 {
        return Response::builder()
            .header("content-type", "text/plain; charset=utf-8")
            .body(
                Full::new(Bytes::from(first))
                    .map_err(|n| match n {})
                    .boxed(),
            )
            .expect("a log response");
    }
    // Follow: what is there, then what is appended, until the container exits (its pid
    // file goes) or the log is rotated by a restart.
    let pid_file = dir.join(format!("{ctr}.pid"));
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(16);
    tokio::spawn(async move {
        if tx.send(Ok(Frame::data(Bytes::from(first)))).await.is_err() {
            return;
        }
        let mut pos = start as u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if f.seek(std::io::SeekFrom::Start(pos)).await.is_err() {
                return;
            }
            let n = match f.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    warn!(file = %file.display(), error = %e, "following a log");
                    return;
                }
            };
            if n > 0 {
                let mut chunk = buf[..n].to_vec();
                clip(&mut chunk, &mut budget);
                pos += n as u64;
                if tx.send(Ok(Frame::data(Bytes::from(chunk)))).await.is_err() || budget == 0 {
                    return;
                }
                continue;
            }
            let rotated = match (std::fs::metadata(&file), f.metadata().await) {
                (Ok(now), Ok(open)) => {
                    use std::os::unix::fs::MetadataExt;
                    now.ino() != open.ino()
                }
                _ => true,
            };
            if rotated || !pid_file.exists() || tx.is_closed() {
                return;
            }
            tokio::time::sleep(FOLLOW_POLL).await;
        }
    });
    let stream = tokio_stream_from(rx);
    Response::builder()
        .header("content-type", "text/plain; charset=utf-8")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("a log response")
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Where the last `n` lines of `all` start (a final line without a newline counts).
fn tail_start(all: &[u8], n: Option<usize>) -> usize {
    let Some(n) = n else { return 0 };
    if n == 0 {
        return all.len();
    }
    let body = all.strip_suffix(b"\n").unwrap_or(all);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return i + 1;
            }
        }
    }
    0
}

/// Cuts `chunk` to what is left of the byte budget, and spends it.
fn clip(chunk: &mut Vec<u8>, budget: &mut u64) {
    let keep = usize::try_from(*budget)
        .unwrap_or(usize::MAX)
        .min(chunk.len());
    chunk.truncate(keep);
    *budget -= keep as u64;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_lines_count_from_the_end() {
        let log = b"a\nb\nc\n";
        assert_eq!(&log[tail_start(log, Some(2))..], b"b\nc\n");
        assert_eq!(&log[tail_start(log, Some(9))..], log);
        assert_eq!(&log[tail_start(log, Some(0))..], b"");
        assert_eq!(&log[tail_start(log, None)..], log);
        let open = b"a\nb\nc";
        assert_eq!(&open[tail_start(open, Some(1))..], b"c");
    }

    #[test]
    fn queries_parse_as_kubectl_sends_them() {
        let q = parse_query(Some(
            "follow=true&tailLines=-1&limitBytes=10&timestamps=true",
        ))
        .unwrap();
        assert_eq!(
            q,
            LogQuery {
                follow: true,
                previous: false,
                tail_lines: None,
                limit_bytes: Some(10)
            }
        );
        assert!(
            parse_query(Some("tailLines=x"))
                .unwrap_err()
                .contains("tailLines")
        );
    }

    #[test]
    fn path_segments_cannot_escape_the_pod_directory() {
        assert_eq!(segment(".."), None);
        assert_eq!(segment("a/b"), None);
        assert_eq!(segment("node"), Some("node"));
    }

    #[test]
    fn the_byte_budget_is_spent_across_chunks() {
        let mut budget = 5;
        let mut a = b"abc".to_vec();
        clip(&mut a, &mut budget);
        let mut b = b"defg".to_vec();
        clip(&mut b, &mut budget);
        assert_eq!(
            (a.as_slice(), b.as_slice(), budget),
            (&b"abc"[..], &b"de"[..], 0)
        );
    }
}
