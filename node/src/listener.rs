//! Accepting connections on one port: a connection cap, TLS, and timeouts no client can
//! hold open.
//!
//! `axum::serve` gives hyper no timer, which turns off its header read timeout: a client that
//! never finishes its headers held a connection forever. Here every connection:
//! - takes one of `max_connections` permits, or is closed at once (counted);
//! - must finish its TLS handshake, and every request head, within `header_timeout`. hyper
//!   starts that timer whenever it waits for a request head, so a keep-alive connection idle
//!   between requests is closed after the same time;
//! - on a TLS port, that opens with a plaintext HTTP request gets a 400 saying to use
//!   https (not a TLS alert the client shows as garbage), and is closed;
//! - carries a [`ConnInfo`] (port, remote address, verified client certificate) into every
//!   request's extensions.
//!
//! On shutdown the listener stops accepting, lets requests in flight finish for a grace
//! period, and closes the rest (watches never finish on their own).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::metrics::{ListenerLabels, Metrics};
use crate::tls::{ConnInfo, PeerCert, Port, Tls};

/// Limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

/// How long requests in flight may finish after shutdown starts.
const GRACE: Duration = Duration::from_secs(3);

pub struct Listener {
    pub port: Port,
    pub tcp: TcpListener,
    pub tls: Option<Arc<Tls>>,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
}

impl Listener {
    fn label(&self) -> ListenerLabels {
        ListenerLabels {
            listener: match self.port {
                Port::Client => "client".into(),
                Port::Peer => "peer".into(),
            },
        }
    }

    /// Serve `router` until `stop` turns true.
    pub async fn serve(self, router: Router, mut stop: tokio::sync::watch::Receiver<bool>) {
        let permits = Arc::new(Semaphore::new(self.limits.max_connections));
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let label = self.label();
        let open = self.metrics.connections.get_or_create(&label).clone();
        let refused = self
            .metrics
            .connections_refused
            .get_or_create(&label)
            .clone();
        loop {
            let (tcp, remote) = tokio::select! {
                _ = stopped(&mut stop) => break,
                accepted = self.tcp.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, don't spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                refused.inc();
                tracing::debug!(%remote, "connection refused: at the connection cap");
                drop(tcp);
                continue;
            };
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::warn!(error = %e, "cannot set TCP_NODELAY");
            }
            let watcher = graceful.watcher();
            let (router, tls, port, limits, open) = (
                router.clone(),
                self.tls.clone(),
                self.port,
                self.limits,
                open.clone(),
            );
            tokio::spawn(async move {
                let _permit = permit;
                let _open = Open::count(open);
                match tls {
                    None => {
                        let info = ConnInfo {
                            port,
                            remote,
                            cert: None,
                            closer: Arc::default(),
                        };
                        serve_conn(tcp, info, router, limits, watcher).await;
                    }
                    Some(tls) => {
                        let config = match port {
                            Port::Peer => tls.current().peer_server.clone(),
                            Port::Client => tls.current().client_server.clone(),
                        };
                        let deadline = tokio::time::Instant::now() + limits.header_timeout;
                        match tokio::time::timeout_at(deadline, sent_plain_http(&tcp)).await {
                            Ok(Ok(false)) => {}
                            Ok(Ok(true)) => return refuse_plain_http(tcp, port, deadline).await,
                            Ok(Err(_)) | Err(_) => {
                                return tracing::debug!(%remote, "closed or silent before its TLS handshake");
                            }
                        }
                        let acceptor = tokio_rustls::TlsAcceptor::from(config);
                        match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
                            Ok(Ok(stream)) => {
                                let cert = stream
                                    .get_ref()
                                    .1
                                    .peer_certificates()
                                    .and_then(|c| c.first())
                                    .and_then(|c| PeerCert::parse(c).ok())
                                    .map(Arc::new);
                                let info = ConnInfo {
                                    port,
                                    remote,
                                    cert,
                                    closer: Arc::default(),
                                };
                                serve_conn(stream, info, router, limits, watcher).await;
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%remote, error = %e, "TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                        }
                    }
                }
            });
        }
        drop(self.tcp);
        if tokio::time::timeout(GRACE, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::info!(listener = %label.listener, "closing connections still open after the grace period");
        }
    }
}

/// One open connection in the `rstore_connections` gauge, for as long as it lives (whichever
/// way its task ends).
struct Open(prometheus_client::metrics::gauge::Gauge);

impl Open {
    fn count(gauge: prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Whether a client on a TLS port opened with a plaintext HTTP request line (a method in
/// capitals) rather than a TLS ClientHello (a handshake record starts with byte 0x16).
async fn sent_plain_http(tcp: &TcpStream) -> std::io::Result<bool> {
    let mut first = [0u8; 1];
    let n = tcp.peek(&mut first).await?;
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(first[0].is_ascii_uppercase())
}

/// Answer a plaintext HTTP request on a TLS port with a 400 that says what to do, rather
/// than the TLS alert an HTTP client reports as a garbled answer, and close.
async fn refuse_plain_http(mut tcp: TcpStream, port: Port, deadline: tokio::time::Instant) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (what, flags) = match port {
        Port::Client => (
            "client port",
            "--cacert (RSTORE_CACERT) and a token or client certificate",
        ),
        Port::Peer => ("peer port", "a member certificate of the cluster CA"),
    };
    let body = serde_json::json!({"error": {
        "code": "tls_required",
        "message": format!("this {what} speaks HTTPS only: use an https:// URL, with {flags}"),
    }})
    .to_string();
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    // Read (a bounded amount, briefly) what the client sent after the answer: closing with
    // unread bytes would reset the connection, and the client might lose the answer.
    let drain = deadline.min(tokio::time::Instant::now() + Duration::from_secs(1));
    let _ = tokio::time::timeout_at(drain, async {
        tcp.write_all(answer.as_bytes()).await?;
        tcp.shutdown().await?;
        let mut buf = [0u8; 4096];
        let mut read = 0;
        while read < 64 << 10 {
            match tcp.read(&mut buf).await? {
                0 => break,
                n => read += n,
            }
        }
        std::io::Result::Ok(())
    })
    .await;
}

async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

async fn serve_conn<S>(
    io: S,
    info: ConnInfo,
    router: Router,
    limits: Limits,
    watcher: hyper_util::server::graceful::Watcher,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let closer = info.closer.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(info.clone());
        router.clone().oneshot(req)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service);
    tokio::select! {
        r = watcher.watch(conn) => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        // Dropping the connection closes the socket, whatever hyper is waiting on.
        _ = closer.notified() => tracing::debug!("connection closed by the server"),
    }
}
