//! Certificates for a cluster: its CA, member certificates and client certificates.
//!
//! Used by `node dev`, `node cert` and the tests; the operator makes the same kinds of
//! certificate for Kubernetes. What a certificate says, and how the node reads it back
//! (`rstore_node::tls::PeerCert`):
//! - a **member** certificate has the organization [`MEMBER_ORG`], a DNS or IP name for every
//!   host it is reached at, and its peer URL as a URI name: the peer port accepts a Raft RPC
//!   only from the member whose peer URL the certificate names;
//! - a **client** certificate has the user's name as common name and its role (`read`,
//!   `write`, `admin`) as organization, as Kubernetes puts groups in client certificates.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// The organization of every member certificate.
pub const MEMBER_ORG: &str = "rstore:member";

/// How long issued certificates are valid: the CA.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
/// Member and client certificates.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 86_400);

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

impl Pem {
    /// Write `<stem>.crt` and `<stem>.key` (the key readable by the owner only).
    pub fn write(&self, dir: &Path, stem: &str) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        write_file(&dir.join(format!("{stem}.crt")), &self.cert, false)?;
        write_file(&dir.join(format!("{stem}.key")), &self.key, true)
    }

    pub fn read(dir: &Path, stem: &str) -> anyhow::Result<Self> {
        let read = |ext: &str| {
            let p = dir.join(format!("{stem}.{ext}"));
            std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))
        };
        Ok(Self {
            cert: read("crt")?,
            key: read("key")?,
        })
    }
}

/// Write a file whole, replacing it atomically (a node re-reading it never sees half).
pub fn write_file(path: &Path, contents: &str, private: bool) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// A cluster's certificate authority.
pub struct Ca {
    pem: Pem,
    cert: rcgen::Certificate,
    key: KeyPair,
    leaf_validity: Duration,
}

fn validity(params: &mut CertificateParams, valid: Duration) {
    let now = time::OffsetDateTime::now_utc();
    // An hour of slack for clocks that disagree a little.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + valid;
}

fn name(cn: &str, org: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    if let Some(o) = org {
        dn.push(DnType::OrganizationName, o);
    }
    dn
}

impl Ca {
    /// A new CA named `name` (e.g. the cluster's name).
    pub fn generate(cn: &str) -> anyhow::Result<Self> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&format!("rstore CA {cn}"), Some("rstore"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut params, CA_VALIDITY);
        let cert = params.self_signed(&key)?;
        Ok(Self {
            pem: Pem {
                cert: cert.pem(),
                key: key.serialize_pem(),
            },
            cert,
            key,
            leaf_validity: LEAF_VALIDITY,
        })
    }

    /// A CA from its PEM certificate and key.
    pub fn from_pem(pem: Pem) -> anyhow::Result<Self> {
        let key = KeyPair::from_pem(&pem.key).context("the CA key is not a PEM private key")?;
        let params = CertificateParams::from_ca_cert_pem(&pem.cert)
            .context("the CA certificate is not a PEM certificate")?;
        // Signing needs the issuer's name and key only: re-signing the parsed parameters
        // gives an issuer equal to the original for that purpose.
        let cert = params.self_signed(&key)?;
        Ok(Self {
            pem,
            cert,
            key,
            leaf_validity: LEAF_VALIDITY,
        })
    }

    /// The same CA issuing certificates valid for `valid` (default [`LEAF_VALIDITY`]).
    pub fn with_leaf_validity(mut self, valid: Duration) -> Self {
        self.leaf_validity = valid;
        self
    }

    pub fn pem(&self) -> &Pem {
        &self.pem
    }

    fn issue(&self, mut params: CertificateParams) -> anyhow::Result<Pem> {
        let key = KeyPair::generate()?;
        validity(&mut params, self.leaf_validity);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }

    /// A member certificate for the member reached at `hosts` (DNS names or IP addresses)
    /// whose peer URL is `peer_url`. It serves both ports and is the member's client
    /// certificate towards its peers.
    pub fn member(&self, hosts: &[String], peer_url: &str) -> anyhow::Result<Pem> {
        self.member_of(hosts, &[peer_url.to_owned()])
    }

    /// A member certificate naming several peer URLs (as one certificate that several
    /// members share, which cert-manager issues for a StatefulSet). `hosts` may hold
    /// wildcard names (`*.db-peer.ns.svc`).
    pub fn member_of(&self, hosts: &[String], peer_urls: &[String]) -> anyhow::Result<Pem> {
        let mut params = CertificateParams::default();
        let cn = peer_urls.first().map_or("rstore member", String::as_str);
        params.distinguished_name = name(cn, Some(MEMBER_ORG));
        params.subject_alt_names = sans(hosts)?;
        for url in peer_urls {
            params.subject_alt_names.push(SanType::URI(
                url.trim_end_matches('/')
                    .try_into()
                    .context("the peer URL is not a valid URI")?,
            ));
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.issue(params)
    }

    /// A server certificate for a service reached at `hosts` (DNS names or IP addresses),
    /// with `cn` as its common name: the real control plane's API server uses one.
    pub fn server(&self, cn: &str, hosts: &[String]) -> anyhow::Result<Pem> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(cn, None);
        params.subject_alt_names = sans(hosts)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A client certificate for user `user` with `role` (`read`, `write` or `admin`).
    pub fn client(&self, user: &str, role: &str) -> anyhow::Result<Pem> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(user, Some(role));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }
}

fn sans(hosts: &[String]) -> anyhow::Result<Vec<SanType>> {
    hosts
        .iter()
        .map(|h| {
            let h = h.trim_start_matches('[').trim_end_matches(']');
            Ok(match h.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    h.try_into()
                        .with_context(|| format!("{h:?} is not a valid DNS name"))?,
                ),
            })
        })
        .collect()
}

/// When a PEM certificate expires, and how long it was issued for.
pub fn validity_of(cert_pem: &str) -> anyhow::Result<(std::time::SystemTime, Duration)> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("not a PEM certificate: {e}"))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| anyhow::anyhow!("not an X.509 certificate: {e}"))?;
    let v = cert.validity();
    let secs = |t: x509_parser::time::ASN1Time| u64::try_from(t.timestamp()).unwrap_or(0);
    let (from, to) = (secs(v.not_before), secs(v.not_after));
    Ok((
        std::time::UNIX_EPOCH + Duration::from_secs(to),
        Duration::from_secs(to.saturating_sub(from)),
    ))
}

/// A new bearer token: 32 random bytes, hex.
pub fn new_token() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The line of a token file for `token` (the node's `auth::Tokens` reads it).
pub fn token_line(name: &str, role: &str, token: &str) -> String {
    format!("{name} {role} sha256:{}\n", token_hash(token))
}

/// The hash a token file stores for `token`: SHA-256, hex.
pub fn token_hash(token: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
