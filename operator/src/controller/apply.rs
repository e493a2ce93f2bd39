//! Apply stage: the one place where the store's children are written. Owned objects go by
//! server-side apply under [`FIELD_MANAGER`]: the spec-only children (Services, PDB,
//! NetworkPolicy) and the cert-manager Certificate here, and the StatefulSet when the act
//! stage performs a step that changes it ([`statefulset`]). The credential Secrets are
//! created and replaced by [`crate::controller::secrets`], called from here.
//!
//! Spec-only children are applied when what they should be differs from what was last applied
//! for this store, or when [`Settings::reapply_every`] has passed; credentials are re-read
//! after [`Settings::credentials_recheck`]: at steady state a reconcile writes nothing.
//!
//! [`Settings::reapply_every`]: crate::controller::context::Settings::reapply_every
//! [`Settings::credentials_recheck`]: crate::controller::context::Settings::credentials_recheck

use std::time::Instant;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};

use crate::controller::build::{Built, SpecChildren};
use crate::controller::context::Context;
use crate::controller::{bootstrap, secrets};
use crate::crd::ReplicatedStore;
use crate::resources::FIELD_MANAGER;
use crate::resources::certmanager::Certificate;
use crate::resources::credentials::Credentials;

/// Why an owned object could not be written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a server-side apply.
    #[error("Kubernetes API: {source}")]
    Apply {
        /// Kind of the object.
        kind: String,
        /// Its name.
        name: String,
        /// Cause.
        #[source]
        source: Box<kube::Error>,
    },

    /// The children could not be encoded for their digest.
    #[error("JSON: {0}")]
    Digest(#[source] serde_json::Error),

    /// `spec.tls.issuerRef` names cert-manager, which the API server does not serve.
    #[error(
        "spec.tls.issuerRef needs cert-manager, but the API server has no Certificate resource \
         (cert-manager.io/v1): install cert-manager, or create the store without issuerRef to \
         use the operator's own CA"
    )]
    NoCertManager(#[source] Box<kube::Error>),

    /// The credential Secrets.
    #[error(transparent)]
    Secrets(#[from] secrets::Error),

    /// The restore of a store created from a backup.
    #[error(transparent)]
    Bootstrap(#[from] bootstrap::Error),
}

impl Error {
    /// Whether the store waits for its credentials (reported as `CredentialsPending`, not
    /// retried as an error).
    pub fn credentials_pending(&self) -> bool {
        match self {
            Self::NoCertManager(_) => true,
            Self::Secrets(e) => e.is_pending(),
            Self::Apply { .. } | Self::Digest(_) | Self::Bootstrap(_) => false,
        }
    }

    /// Whether the store waits for the backup it starts from (reported as `BackupPending`).
    pub fn bootstrap_pending(&self) -> bool {
        matches!(self, Self::Bootstrap(bootstrap::Error::Pending(_)))
    }
}

/// Applies what `built` holds for `rs` and makes sure its credentials cover `pods` pods;
/// returns what the operator calls the members with (`None` in plaintext).
pub async fn apply(
    ctx: &Context,
    rs: &ReplicatedStore,
    built: &Built,
    key: &str,
    pods: u32,
) -> Result<Option<Credentials>, Error> {
    spec_children(ctx, rs, &built.spec_children, key).await?;
    bootstrap::ensure(ctx, rs, key).await?;
    credentials(ctx, rs, built.certificate.as_ref(), key, pods).await
}

/// The StatefulSet, as a step of the act stage asks for it.
pub async fn statefulset(ctx: &Context, sts: &StatefulSet) -> Result<(), Error> {
    let ns = sts.namespace().unwrap_or_default();
    ssa(
        &Api::<StatefulSet>::namespaced(ctx.client.clone(), &ns),
        sts,
    )
    .await
}

/// The spec-only children, unless the same were applied within [`Settings::reapply_every`].
///
/// [`Settings::reapply_every`]: crate::controller::context::Settings::reapply_every
async fn spec_children(
    ctx: &Context,
    rs: &ReplicatedStore,
    children: &SpecChildren,
    key: &str,
) -> Result<(), Error> {
    let SpecChildren {
        peer,
        client,
        budget,
        policy,
    } = children;
    let encoded = serde_json::to_vec(&(&rs.metadata.uid, peer, client, budget, policy))
        .map_err(Error::Digest)?;
    let digest = crc32fast::hash(&encoded);
    let fresh = ctx
        .applied
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(key)
        .is_some_and(|(d, at)| *d == digest && at.elapsed() < ctx.settings.reapply_every);
    if fresh {
        return Ok(());
    }
    let ns = rs.namespace().unwrap_or_default();
    let services = Api::<Service>::namespaced(ctx.client.clone(), &ns);
    ssa(&services, peer).await?;
    ssa(&services, client).await?;
    ssa(
        &Api::<PodDisruptionBudget>::namespaced(ctx.client.clone(), &ns),
        budget,
    )
    .await?;
    ssa(
        &Api::<NetworkPolicy>::namespaced(ctx.client.clone(), &ns),
        policy,
    )
    .await?;
    ctx.applied
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key.to_owned(), (digest, Instant::now()));
    Ok(())
}

/// The token Secrets, the Certificate (with an issuer), then the other Secrets; `None` in
/// plaintext. Reuses the last answer for this store while it covers the same number of pods
/// and is younger than
/// [`Settings::credentials_recheck`].
///
/// [`Settings::credentials_recheck`]: crate::controller::context::Settings::credentials_recheck
async fn credentials(
    ctx: &Context,
    rs: &ReplicatedStore,
    certificate: Option<&Certificate>,
    key: &str,
    pods: u32,
) -> Result<Option<Credentials>, Error> {
    let memo_key = format!("{key}/{}", rs.metadata.uid.as_deref().unwrap_or_default());
    if let Some((creds, n, at)) = ctx
        .ensured
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&memo_key)
        && *n == pods
        && at.elapsed() < ctx.settings.credentials_recheck
        && rs.spec.tls.insecure_plaintext == creds.is_none()
    {
        return Ok(creds.clone());
    }
    let creds = if rs.spec.tls.insecure_plaintext {
        None
    } else {
        let tokens = secrets::tokens(&ctx.client, rs).await?;
        if let Some(cert) = certificate {
            let ns = rs.namespace().unwrap_or_default();
            let api = Api::<Certificate>::namespaced(ctx.client.clone(), &ns);
            ssa(&api, cert).await.map_err(no_cert_manager)?;
        }
        Some(secrets::ensure(&ctx.client, rs, tokens, pods).await?)
    };
    ctx.ensured
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(memo_key, (creds.clone(), pods, Instant::now()));
    Ok(creds)
}

/// A Certificate apply answered 404: the API server has no cert-manager.
fn no_cert_manager(e: Error) -> Error {
    match e {
        Error::Apply { source, .. } if matches!(&*source, kube::Error::Api(a) if a.code == 404) => {
            Error::NoCertManager(source)
        }
        e => e,
    }
}

/// Server-side apply of a whole owned object under the operator's field manager.
async fn ssa<K>(api: &Api<K>, obj: &K) -> Result<(), Error>
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(|source| Error::Apply {
        kind: K::kind(&()).into_owned(),
        name,
        source: Box::new(source),
    })?;
    Ok(())
}
