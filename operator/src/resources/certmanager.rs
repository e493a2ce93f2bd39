//! The cert-manager `Certificate` of a store's members, when `spec.tls.issuerRef` names an
//! issuer: cert-manager issues and renews it, and writes it to a Secret every pod mounts.
//!
//! A StatefulSet mounts the same Secrets in every pod, so one certificate serves all members:
//! it names every pod of the store (a wildcard under the headless Service), the client
//! Service, `localhost` for the in-pod CLI, and the peer URL of every ordinal a store can
//! have, so that scaling never needs a new certificate. The peer port then tells the
//! store's members from anyone else, though not one member from another.
//!
//! Only the fields the operator sets are typed here (cert-manager's own CRD defines the
//! rest); the operator never reads a `Certificate` back.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Names, owned_meta};
use crate::crd::{IssuerRef, ReplicatedStore};

/// The most pods a store has: 9 voters and 16 read replicas (the CRD's bounds).
pub const MAX_PODS: u32 = 25;

/// cert-manager's `Certificate` (`cert-manager.io/v1`), the fields the operator sets.
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[kube(
    group = "cert-manager.io",
    version = "v1",
    kind = "Certificate",
    namespaced
)]
#[serde(rename_all = "camelCase")]
pub struct CertificateSpec {
    pub secret_name: String,
    pub common_name: String,
    pub dns_names: Vec<String>,
    pub uris: Vec<String>,
    pub ip_addresses: Vec<String>,
    pub duration: String,
    pub renew_before: String,
    pub subject: Subject,
    pub usages: Vec<String>,
    pub private_key: PrivateKey,
    pub issuer_ref: IssuerRef,
}

/// The certificate's subject.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Subject {
    pub organizations: Vec<String>,
}

/// How the private key is made.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrivateKey {
    pub algorithm: String,
    pub rotation_policy: String,
}

/// The members' `Certificate` for `rs`, issued by `issuer`.
pub fn build(rs: &ReplicatedStore, issuer: &IssuerRef) -> Certificate {
    let names = Names::of(rs);
    let meta = owned_meta(rs, &names.member_certificate());
    let peer = format!("{}.{}.svc", names.peer_service(), names.namespace);
    Certificate {
        metadata: meta,
        spec: CertificateSpec {
            secret_name: names.member_certificate_secret(),
            common_name: format!("{}.{}", names.name, names.namespace),
            dns_names: [format!("*.{peer}"), format!("*.{peer}.cluster.local")]
                .into_iter()
                .chain(names.shared_hosts())
                .collect(),
            uris: (0..MAX_PODS).map(|o| names.peer_url(o)).collect(),
            ip_addresses: vec!["127.0.0.1".into()],
            // Renewed a third of the way before expiry; the members re-read it from disk.
            duration: "2160h".into(),
            renew_before: "720h".into(),
            subject: Subject {
                organizations: vec![rstore_api::pki::MEMBER_ORG.into()],
            },
            usages: vec![
                "digital signature".into(),
                "key encipherment".into(),
                "server auth".into(),
                "client auth".into(),
            ],
            private_key: PrivateKey {
                algorithm: "ECDSA".into(),
                rotation_policy: "Always".into(),
            },
            issuer_ref: issuer.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ReplicatedStoreSpec;

    #[test]
    fn one_certificate_names_every_member_the_store_can_have() {
        let mut rs = ReplicatedStore::new("db", ReplicatedStoreSpec::default());
        rs.metadata.namespace = Some("prod".into());
        rs.metadata.uid = Some("u".into());
        let issuer = IssuerRef {
            name: "corp-ca".into(),
            kind: "ClusterIssuer".into(),
            group: "cert-manager.io".into(),
        };
        let c = build(&rs, &issuer);
        assert_eq!(c.spec.secret_name, "db-member-tls");
        assert_eq!(c.spec.issuer_ref, issuer);
        assert!(c.spec.dns_names.contains(&"*.db-peer.prod.svc".to_owned()));
        assert!(c.spec.dns_names.contains(&"db.prod.svc".to_owned()));
        assert_eq!(c.spec.uris.len(), MAX_PODS as usize);
        assert_eq!(c.spec.uris[0], "https://db-0.db-peer.prod.svc:7380");
        assert_eq!(c.spec.subject.organizations, vec!["rstore:member"]);
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["apiVersion"], "cert-manager.io/v1");
        assert_eq!(v["spec"]["issuerRef"]["kind"], "ClusterIssuer");
        assert_eq!(v["spec"]["privateKey"]["rotationPolicy"], "Always");
        assert_eq!(
            v["metadata"]["ownerReferences"][0]["kind"],
            "ReplicatedStore"
        );
    }
}
