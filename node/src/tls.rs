//! TLS for both ports: the cluster CA, this member's certificate, and what a verified peer
//! certificate says.
//!
//! One member certificate (signed by the cluster CA) serves the client port and the peer
//! port, and is this member's client certificate towards its peers. The peer port requires
//! a client certificate the CA signed; the client port accepts one but does not require it
//! (bearer tokens are the other way in). The three files are re-read when their contents
//! change ([`Tls::reload`], polled every few seconds), so a renewed certificate or a rotated
//! CA needs no restart; connections made before keep their session.
//!
//! rustls is used with ring explicitly: the workspace also builds aws-lc-rs (for kube),
//! and rustls refuses to pick a process-wide provider when both are present.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::auth::Role;

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    Client,
    Peer,
}

/// What the listener knows of a connection; every request carries it as an extension.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub port: Port,
    pub remote: std::net::SocketAddr,
    /// The client certificate, verified against the cluster CA, if one was presented.
    pub cert: Option<Arc<PeerCert>>,
    /// Notified to close the connection at once (a watcher that reads nothing).
    pub closer: Arc<tokio::sync::Notify>,
}

/// The names in a verified certificate that authorization looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerCert {
    pub common_name: Option<String>,
    pub organizations: Vec<String>,
    pub uris: Vec<String>,
}

impl PeerCert {
    pub fn parse(der: &[u8]) -> anyhow::Result<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| anyhow::anyhow!("cannot parse the certificate: {e}"))?;
        let subject = cert.subject();
        let text = |a: &x509_parser::x509::AttributeTypeAndValue| a.as_str().ok().map(String::from);
        let mut out = PeerCert {
            common_name: subject.iter_common_name().next().and_then(text),
            organizations: subject.iter_organization().filter_map(text).collect(),
            uris: Vec::new(),
        };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::URI(u) = name {
                    out.uris.push(u.trim_end_matches('/').to_string());
                }
            }
        }
        Ok(out)
    }

    /// Whether this is a member certificate.
    pub fn is_member(&self) -> bool {
        self.organizations
            .iter()
            .any(|o| o == crate::pki::MEMBER_ORG)
    }

    /// Whether this member certificate was issued for the member at `peer_url`.
    pub fn names_peer(&self, peer_url: &str) -> bool {
        self.is_member()
            && self
                .uris
                .iter()
                .any(|u| u == peer_url.trim_end_matches('/'))
    }

    /// The role a client certificate grants: the strongest role among its organizations.
    /// Member certificates grant none on the client port.
    pub fn role(&self) -> Option<Role> {
        if self.is_member() {
            return None;
        }
        self.organizations
            .iter()
            .filter_map(|o| Role::parse(o))
            .max()
    }
}

/// Where the PEM files are.
#[derive(Debug, Clone)]
pub struct TlsPaths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The configurations built from one reading of the files.
pub struct Loaded {
    pub peer_server: Arc<ServerConfig>,
    pub client_server: Arc<ServerConfig>,
    /// Towards peers: the CA as the only root, this member's certificate as client cert.
    pub peer_client: Arc<ClientConfig>,
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates in a PEM file's text.
pub fn certs_from_pem(pem: &[u8], what: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{what}: not PEM certificates ({e:?})"))?;
    anyhow::ensure!(!certs.is_empty(), "{what} holds no certificate");
    Ok(certs)
}

pub fn roots_from_pem(pem: &[u8], what: &str) -> anyhow::Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for c in certs_from_pem(pem, what)? {
        roots
            .add(c)
            .map_err(|e| anyhow::anyhow!("{what}: not a usable CA certificate ({e})"))?;
    }
    Ok(Arc::new(roots))
}

/// A client configuration trusting `ca_pem`, with a client certificate if given.
pub fn client_config(
    ca_pem: &[u8],
    identity: Option<(&[u8], &[u8])>,
) -> anyhow::Result<ClientConfig> {
    let roots = roots_from_pem(ca_pem, "the CA file")?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    Ok(match identity {
        Some((cert, key)) => builder.with_client_auth_cert(
            certs_from_pem(cert, "the certificate file")?,
            PrivateKeyDer::from_pem_slice(key)
                .map_err(|e| anyhow::anyhow!("the key file: not a PEM private key ({e:?})"))?,
        )?,
        None => builder.with_no_client_auth(),
    })
}

#[derive(PartialEq, Eq)]
struct Contents {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

/// This member's TLS state, re-read when the files change.
pub struct Tls {
    paths: TlsPaths,
    current: RwLock<(Arc<Contents>, Arc<Loaded>)>,
    generation: AtomicU64,
}

impl Tls {
    pub fn load(paths: TlsPaths) -> anyhow::Result<Arc<Self>> {
        let contents = Self::read(&paths)?;
        let loaded = Self::build(&contents)?;
        Ok(Arc::new(Self {
            paths,
            current: RwLock::new((Arc::new(contents), Arc::new(loaded))),
            generation: AtomicU64::new(0),
        }))
    }

    fn read(paths: &TlsPaths) -> anyhow::Result<Contents> {
        let read = |p: &PathBuf, what: &str| {
            std::fs::read(p).with_context(|| format!("cannot read the {what} {}", p.display()))
        };
        Ok(Contents {
            ca: read(&paths.ca, "CA file")?,
            cert: read(&paths.cert, "certificate file")?,
            key: read(&paths.key, "key file")?,
        })
    }

    fn build(c: &Contents) -> anyhow::Result<Loaded> {
        let roots = roots_from_pem(&c.ca, "the CA file")?;
        let chain = certs_from_pem(&c.cert, "the certificate file")?;
        let me = PeerCert::parse(&chain[0])?;
        anyhow::ensure!(
            me.is_member(),
            "the certificate file holds no member certificate (its organization must be {})",
            crate::pki::MEMBER_ORG
        );
        let key = || {
            PrivateKeyDer::from_pem_slice(&c.key)
                .map_err(|e| anyhow::anyhow!("the key file: not a PEM private key ({e:?})"))
        };
        let server = |verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>| {
            let mut cfg = ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()?
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain.clone(), key()?)
                .context("the certificate does not match the key")?;
            cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
            anyhow::Ok(Arc::new(cfg))
        };
        let required = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .context("cannot build the peer certificate verifier")?;
        let optional = WebPkiClientVerifier::builder_with_provider(roots, provider())
            .allow_unauthenticated()
            .build()
            .context("cannot build the client certificate verifier")?;
        Ok(Loaded {
            peer_server: server(required)?,
            client_server: server(optional)?,
            peer_client: Arc::new(client_config(&c.ca, Some((&c.cert, &c.key)))?),
        })
    }

    pub fn current(&self) -> Arc<Loaded> {
        self.current.read().expect("tls lock").1.clone()
    }

    /// Bumped at every reload: clients built from an older one are rebuilt.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Re-read the files; rebuild when they changed. True if they did. Files that do not
    /// load (a rotation half written, a key that does not match) leave the old ones in use.
    pub fn reload(&self) -> anyhow::Result<bool> {
        let contents = Self::read(&self.paths)?;
        if *self.current.read().expect("tls lock").0 == contents {
            return Ok(false);
        }
        let loaded = Self::build(&contents)?;
        *self.current.write().expect("tls lock") = (Arc::new(contents), Arc::new(loaded));
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(true)
    }
}

/// Re-read certificates and tokens every `every`, logging what changed or failed.
pub fn spawn_reloader(
    tls: Option<Arc<Tls>>,
    tokens: Arc<crate::auth::Tokens>,
    every: std::time::Duration,
) {
    tokio::spawn(async move {
        let mut last_err: Option<String> = None;
        loop {
            tokio::time::sleep(every).await;
            let mut errs = Vec::new();
            if let Some(tls) = &tls {
                match tls.reload() {
                    Ok(true) => tracing::info!(
                        generation = tls.generation(),
                        "reloaded the TLS certificates"
                    ),
                    Ok(false) => {}
                    Err(e) => errs.push(format!("{e:#}")),
                }
            }
            match tokens.reload() {
                Ok(true) => tracing::info!("reloaded the token file"),
                Ok(false) => {}
                Err(e) => errs.push(format!("{e:#}")),
            }
            let err = (!errs.is_empty()).then(|| errs.join("; "));
            if err.is_some() && err != last_err {
                tracing::error!(error = %err.as_deref().unwrap_or(""), "cannot reload credentials; still using the previous ones");
            }
            last_err = err;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{Ca, Pem};

    fn der(pem: &str) -> Vec<u8> {
        certs_from_pem(pem.as_bytes(), "test").unwrap()[0].to_vec()
    }

    #[test]
    fn certificates_say_who_they_are() {
        let ca = Ca::generate("t").unwrap();
        let m = ca
            .member(
                &["127.0.0.1".into(), "db-0.db-peer.ns.svc".into()],
                "https://127.0.0.1:7380/",
            )
            .unwrap();
        let c = PeerCert::parse(&der(&m.cert)).unwrap();
        assert!(c.is_member());
        assert!(c.names_peer("https://127.0.0.1:7380"));
        assert!(!c.names_peer("https://127.0.0.1:7381"));
        assert_eq!(c.role(), None, "member certificates grant no client role");
        let u = PeerCert::parse(&der(&ca.client("alice", "write").unwrap().cert)).unwrap();
        assert!(!u.is_member() && !u.names_peer("https://127.0.0.1:7380"));
        assert_eq!(u.role(), Some(Role::Write));
        assert_eq!(u.common_name.as_deref(), Some("alice"));
        let n = PeerCert::parse(&der(&ca.client("bob", "superuser").unwrap().cert)).unwrap();
        assert_eq!(n.role(), None);
        // A CA read back from its PEM files issues certificates that chain to it.
        let again = Ca::from_pem(ca.pem().clone()).unwrap();
        let m2 = again
            .member(&["127.0.0.1".into()], "https://127.0.0.1:1")
            .unwrap();
        let roots = roots_from_pem(ca.pem().cert.as_bytes(), "ca").unwrap();
        let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
            .build()
            .unwrap();
        let now = rustls::pki_types::UnixTime::now();
        let cert = CertificateDer::from(der(&m2.cert));
        assert!(verifier.verify_client_cert(&cert, &[], now).is_ok());
        let stranger = Ca::generate("other").unwrap();
        let foreign = CertificateDer::from(der(&stranger.client("eve", "admin").unwrap().cert));
        assert!(verifier.verify_client_cert(&foreign, &[], now).is_err());
    }

    #[test]
    fn files_are_reloaded_when_they_change_and_kept_when_broken() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate("t").unwrap();
        ca.pem().write(dir.path(), "ca").unwrap();
        ca.member(&["127.0.0.1".into()], "https://127.0.0.1:1")
            .unwrap()
            .write(dir.path(), "node")
            .unwrap();
        let paths = TlsPaths {
            ca: dir.path().join("ca.crt"),
            cert: dir.path().join("node.crt"),
            key: dir.path().join("node.key"),
        };
        let tls = Tls::load(paths).unwrap();
        assert!(!tls.reload().unwrap(), "unchanged files are not rebuilt");
        assert_eq!(tls.generation(), 0);
        let renewed = ca
            .member(&["127.0.0.1".into()], "https://127.0.0.1:1")
            .unwrap();
        renewed.write(dir.path(), "node").unwrap();
        assert!(tls.reload().unwrap());
        assert_eq!(tls.generation(), 1);
        // A key that does not match the certificate (a rotation half done) is refused and
        // the previous certificates stay in use.
        let other = ca
            .member(&["127.0.0.1".into()], "https://127.0.0.1:1")
            .unwrap();
        crate::pki::write_file(&dir.path().join("node.key"), &other.key, true).unwrap();
        assert!(tls.reload().is_err());
        assert_eq!(tls.generation(), 1);
        // A client certificate is not a member certificate.
        let user: Pem = ca.client("u", "admin").unwrap();
        user.write(dir.path(), "node").unwrap();
        let err = tls.reload().unwrap_err().to_string();
        assert!(err.contains("member certificate"), "{err}");
    }
}
