//! The store's credentials: the content of the Secrets the operator issues, keeps and renews,
//! built without IO (reading and writing them is `controller::secrets`).
//!
//! Without `spec.tls.issuerRef` the operator runs a CA per store:
//! - `<name>-ca`: the CA's certificate and key. Only the operator reads it.
//! - `<name>-tls`, which every pod mounts at [`TLS_MOUNT`]: `ca.crt`, one certificate and key
//!   per pod (`<pod>.crt`, `<pod>.key`; a pod picks its own by `$(POD_NAME)`), and `tokens`,
//!   the node's token file, which holds hashes only.
//! - `<name>-operator`: the operator's own `admin` token for the store.
//! - `<name>-credentials`: the user credential, named in status: `ca.crt`, a `write` token,
//!   and the `endpoint` to use it with.
//!
//! A member certificate names the pod's stable DNS name, the client Service (short and
//! qualified names), `localhost` and
//! `127.0.0.1` (for the in-pod CLI and `kubectl port-forward`), and the pod's peer URL, which
//! the peer port checks against the membership. Certificates are valid for
//! [`MEMBER_VALIDITY`] and reissued once less than a third of that is left; the members re-read
//! them from the mounted Secret, so a renewal needs no restart and the old certificate stays
//! valid until every member has the new one. Tokens are made once; deleting
//! `<name>-credentials` makes a new user token and revokes the old one.
//!
//! With `spec.tls.issuerRef`, cert-manager issues the members' certificate
//! ([`super::certmanager`]) and the operator still makes the tokens.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use rstore_api::pki::{self, Ca, Pem};

use super::{CLIENT_PORT, Names, owned_meta};
use crate::crd::ReplicatedStore;

/// Where the pods mount their credentials.
pub const TLS_MOUNT: &str = "/etc/rstore/tls";
/// The CA certificate, in every credential Secret.
pub const CA_FILE: &str = "ca.crt";
/// The node's token file in the pods' Secret.
pub const TOKENS_FILE: &str = "tokens";
/// How long a member certificate the operator issues is valid.
pub const MEMBER_VALIDITY: Duration = Duration::from_secs(90 * 86_400);
/// The name the operator's token has in the token file (and in the node's logs).
pub const OPERATOR_USER: &str = "rstore-operator";
/// The name of the user token in the token file.
pub const USER: &str = "user";

/// What the operator calls a store's members with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The CA the members' certificates chain to (PEM).
    pub ca_pem: String,
    /// The operator's `admin` token.
    pub token: String,
    /// When the member certificate that expires first expires, when known.
    pub expires: Option<SystemTime>,
}

/// When the first of the PEM certificates in `data` under `keys` expires.
pub fn first_expiry<'a>(
    data: &BTreeMap<String, ByteString>,
    keys: impl Iterator<Item = &'a String>,
) -> Option<SystemTime> {
    keys.filter(|k| k.ends_with(".crt") && k.as_str() != CA_FILE)
        .filter_map(|k| pki::validity_of(&text(data, k)?).ok())
        .map(|(not_after, _)| not_after)
        .min()
}

/// The DNS names and addresses member `ordinal`'s certificate names.
pub fn member_hosts(names: &Names, ordinal: u32) -> Vec<String> {
    let pod = names.pod_host(ordinal);
    let mut hosts = vec![format!("{pod}.cluster.local"), pod];
    hosts.extend(names.shared_hosts());
    hosts.push("127.0.0.1".into());
    hosts
}

/// Whether a certificate should be reissued now: less than a third of its lifetime left, or
/// unreadable.
pub fn needs_renewal(cert_pem: &str, now: SystemTime) -> bool {
    match pki::validity_of(cert_pem) {
        Ok((not_after, lifetime)) => not_after
            .duration_since(now)
            .map_or(true, |left| left < lifetime / 3),
        Err(_) => true,
    }
}

pub fn text(data: &BTreeMap<String, ByteString>, key: &str) -> Option<String> {
    String::from_utf8(data.get(key)?.0.clone()).ok()
}

pub fn bytes(s: &str) -> ByteString {
    ByteString(s.as_bytes().to_vec())
}

/// The pods' Secret for `pods` pods: what `existing` holds where it is still good (same CA,
/// not due for renewal), new certificates for the rest, nothing for pods beyond `pods`.
pub fn member_data(
    existing: &BTreeMap<String, ByteString>,
    ca: &Ca,
    names: &Names,
    pods: u32,
    tokens: &str,
    now: SystemTime,
) -> Result<BTreeMap<String, ByteString>, IssueError> {
    let ca_pem = &ca.pem().cert;
    let same_ca = text(existing, CA_FILE).as_deref() == Some(ca_pem.as_str());
    let mut out = BTreeMap::from([
        (CA_FILE.to_owned(), bytes(ca_pem)),
        (TOKENS_FILE.to_owned(), bytes(tokens)),
    ]);
    for ordinal in 0..pods {
        let pod = names.pod(ordinal);
        let (crt, key) = (format!("{pod}.crt"), format!("{pod}.key"));
        let kept = match (text(existing, &crt), existing.get(&key)) {
            (Some(c), Some(k)) if same_ca && !needs_renewal(&c, now) => {
                Some((bytes(&c), k.clone()))
            }
            _ => None,
        };
        let (c, k) = match kept {
            Some(pair) => pair,
            None => {
                let Pem { cert, key } = ca
                    .member(&member_hosts(names, ordinal), &names.peer_url(ordinal))
                    .map_err(|source| IssueError {
                        pod: pod.clone(),
                        source,
                    })?;
                (bytes(&cert), bytes(&key))
            }
        };
        out.insert(crt, c);
        out.insert(key, k);
    }
    Ok(out)
}

/// The token file: the operator's token (`admin`) and the user's (`write`), hashed.
pub fn token_file(operator_token: &str, user_token: &str) -> String {
    format!(
        "# Written by the rstore operator; hashes only.\n{}{}",
        pki::token_line(OPERATOR_USER, "admin", operator_token),
        pki::token_line(USER, "write", user_token)
    )
}

/// A new Secret `name` of `rs` holding `data`.
pub fn secret(rs: &ReplicatedStore, name: &str, data: BTreeMap<String, ByteString>) -> Secret {
    Secret {
        metadata: owned_meta(rs, name),
        data: Some(data),
        type_: Some("Opaque".into()),
        ..Secret::default()
    }
}

/// The data of the user's Secret (`<name>-credentials`): the CA, the user's token, and the
/// endpoint to use them with.
pub fn user_data(names: &Names, ca_pem: &str, user_token: &str) -> BTreeMap<String, ByteString> {
    let endpoint = format!("https://{}:{CLIENT_PORT}", names.client_host());
    BTreeMap::from([
        (CA_FILE.to_owned(), bytes(ca_pem)),
        ("token".to_owned(), bytes(user_token)),
        ("endpoint".to_owned(), bytes(&endpoint)),
    ])
}

/// A member certificate could not be issued.
#[derive(Debug, thiserror::Error)]
#[error("cannot issue a certificate for {pod}: {}", chain(.source))]
pub struct IssueError {
    /// The pod it was for.
    pub pod: String,
    /// Why.
    #[source]
    pub source: anyhow::Error,
}

/// An error with its causes on one line (`anyhow`'s alternate form).
pub fn chain(e: &anyhow::Error) -> String {
    format!("{e:#}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        Names::new("db", "prod")
    }

    #[test]
    fn certificates_are_kept_until_due_then_renewed_and_pruned_past_the_pods() {
        let ca = Ca::generate("t")
            .unwrap()
            .with_leaf_validity(MEMBER_VALIDITY);
        let now = SystemTime::now();
        let first = member_data(&BTreeMap::new(), &ca, &names(), 3, "tok", now).unwrap();
        for k in [
            "ca.crt", "tokens", "db-0.crt", "db-0.key", "db-2.crt", "db-2.key",
        ] {
            assert!(first.contains_key(k), "{k}");
        }
        // Nothing due: the same certificates, byte for byte.
        let again = member_data(&first, &ca, &names(), 3, "tok", now).unwrap();
        assert_eq!(again, first);
        // Scaled in: db-2's credentials go.
        let fewer = member_data(&first, &ca, &names(), 2, "tok", now).unwrap();
        assert!(!fewer.contains_key("db-2.crt") && fewer.contains_key("db-1.key"));
        // Two thirds of the lifetime later, every certificate is reissued.
        let later = now + MEMBER_VALIDITY * 2 / 3 + Duration::from_secs(60);
        let renewed = member_data(&first, &ca, &names(), 3, "tok", later).unwrap();
        assert_ne!(renewed["db-0.crt"], first["db-0.crt"]);
        assert_ne!(renewed["db-0.key"], first["db-0.key"]);
        // Another CA: nothing old is kept.
        let other = Ca::generate("u").unwrap();
        let moved = member_data(&first, &other, &names(), 3, "tok", now).unwrap();
        assert_ne!(moved["db-1.crt"], first["db-1.crt"]);
    }

    #[test]
    fn member_certificates_name_the_pod_the_service_and_the_peer_url() {
        let ca = Ca::generate("t").unwrap();
        let data =
            member_data(&BTreeMap::new(), &ca, &names(), 1, "tok", SystemTime::now()).unwrap();
        let pem = String::from_utf8(data["db-0.crt"].0.clone()).unwrap();
        let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        let cert = p.parse_x509().unwrap();
        let sans = cert.subject_alternative_name().unwrap().unwrap();
        let text = format!("{:?}", sans.value.general_names);
        for want in [
            "db-0.db-peer.prod.svc",
            "db.prod.svc",
            "localhost",
            "https://db-0.db-peer.prod.svc:7380",
        ] {
            assert!(text.contains(want), "{want} missing from {text}");
        }
        let org = cert
            .subject()
            .iter_organization()
            .next()
            .unwrap()
            .as_str()
            .unwrap();
        assert_eq!(org, "rstore:member");
    }

    #[test]
    fn renewal_is_due_at_a_third_of_the_lifetime() {
        let ca = Ca::generate("t")
            .unwrap()
            .with_leaf_validity(Duration::from_secs(3000));
        let pem = ca.member(&["a".into()], "https://a:7380").unwrap().cert;
        // The CA backdates by an hour: lifetime 3000 s + 3600 s.
        let now = SystemTime::now();
        assert!(!needs_renewal(&pem, now));
        assert!(needs_renewal(&pem, now + Duration::from_secs(3000)));
        assert!(needs_renewal("not a certificate", now));
    }
}
