//! The store's credential Secrets, read and written: the IO half of
//! [`crate::resources::credentials`], whose pure builders decide what they hold.
//!
//! Called by the apply stage ([`crate::controller::apply`]). Secrets are created when missing
//! and replaced at the version read otherwise (never server-side applied: their content is
//! made once, such as a CA key or a token, and must be read back rather than overwritten).

use std::collections::BTreeMap;
use std::time::SystemTime;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use kube::{Api, Client};
use rstore_api::pki::{self, Ca, Pem};

use crate::crd::ReplicatedStore;
use crate::resources::Names;
use crate::resources::credentials::{
    CA_FILE, Credentials, IssueError, MEMBER_VALIDITY, TOKENS_FILE, bytes, chain, first_expiry,
    member_data, secret, text, token_file, user_data,
};

/// Why the store's credentials could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a Secret failed at the API server.
    #[error("Kubernetes API: {source}")]
    Kube {
        /// The Secret.
        secret: String,
        /// Cause.
        #[source]
        source: Box<kube::Error>,
    },

    /// A Secret of the store's name exists but is not one the operator wrote.
    #[error(
        "Secret {name} exists but has no `{key}`: it is not one the operator wrote; \
         delete or rename it so that the operator can make the store's own"
    )]
    Foreign {
        /// The Secret.
        name: String,
        /// The key it lacks.
        key: String,
    },

    /// A Secret the operator just created was gone when read back.
    #[error("Secret {name} vanished after it was created")]
    Vanished {
        /// The Secret.
        name: String,
    },

    /// No CA could be made.
    #[error("cannot make a CA: {}", chain(.0))]
    MakeCa(#[source] anyhow::Error),

    /// The CA Secret holds no usable CA.
    #[error(
        "Secret {name} holds no usable CA: {}; delete it to have a new CA made (every member \
         then gets a new certificate)",
        chain(.source)
    )]
    BadCa {
        /// The Secret.
        name: String,
        /// Cause.
        #[source]
        source: anyhow::Error,
    },

    /// A member certificate could not be issued.
    #[error(transparent)]
    Issue(#[from] IssueError),

    /// cert-manager has not issued the members' certificate yet.
    #[error(
        "waiting for cert-manager to issue Secret {secret} (Certificate {certificate}) with a ca.crt"
    )]
    AwaitingCertManager {
        /// The Secret cert-manager writes.
        secret: String,
        /// The Certificate.
        certificate: String,
    },
}

impl Error {
    /// Whether the store waits for its credentials (reported as `CredentialsPending`), as
    /// opposed to a failed API call (retried as a reconcile error).
    pub fn is_pending(&self) -> bool {
        !matches!(self, Self::Kube { .. })
    }
}

type Result<T, E = Error> = std::result::Result<T, E>;

fn kube_err(secret: &str) -> impl FnOnce(kube::Error) -> Error + '_ {
    move |source| Error::Kube {
        secret: secret.to_owned(),
        source: Box::new(source),
    }
}

/// A Secret's data, or `None` when it does not exist.
async fn read(
    api: &Api<Secret>,
    name: &str,
) -> Result<Option<(Secret, BTreeMap<String, ByteString>)>> {
    Ok(api.get_opt(name).await.map_err(kube_err(name))?.map(|s| {
        let data = s.data.clone().unwrap_or_default();
        (s, data)
    }))
}

/// Writes `data` to Secret `name` unless it holds exactly that: created when missing,
/// replaced at the version read otherwise (a concurrent change fails, and the next
/// reconcile starts again from what is there).
async fn write(
    api: &Api<Secret>,
    rs: &ReplicatedStore,
    name: &str,
    current: Option<Secret>,
    data: BTreeMap<String, ByteString>,
) -> Result<()> {
    match current {
        Some(s) if s.data.as_ref() == Some(&data) => Ok(()),
        Some(mut s) => {
            s.data = Some(data);
            s.string_data = None;
            api.replace(name, &PostParams::default(), &s)
                .await
                .map_err(kube_err(name))?;
            Ok(())
        }
        None => {
            api.create(&PostParams::default(), &secret(rs, name, data))
                .await
                .map_err(kube_err(name))?;
            Ok(())
        }
    }
}

/// A value kept in a Secret, made by `make` the first time.
async fn kept(
    api: &Api<Secret>,
    rs: &ReplicatedStore,
    name: &str,
    key: &str,
    make: impl FnOnce() -> Result<BTreeMap<String, ByteString>>,
) -> Result<(Option<Secret>, BTreeMap<String, ByteString>)> {
    if let Some((s, data)) = read(api, name).await? {
        if data.contains_key(key) {
            return Ok((Some(s), data));
        }
        return Err(Error::Foreign {
            name: name.to_owned(),
            key: key.to_owned(),
        });
    }
    let data = make()?;
    write(api, rs, name, None, data).await?;
    // Read back: what is stored is what counts.
    let (s, data) = read(api, name).await?.ok_or_else(|| Error::Vanished {
        name: name.to_owned(),
    })?;
    Ok((Some(s), data))
}

/// The store's tokens, made once and kept in their Secrets.
#[derive(Debug)]
pub struct Tokens {
    /// The operator's `admin` token.
    operator: String,
    /// The user's `write` token.
    user: String,
    /// The user's Secret as read (written again with the CA and endpoint by [`ensure`]).
    user_secret: Option<Secret>,
}

/// Makes sure the operator's and the user's token Secrets of `rs` exist, and reads them.
pub async fn tokens(client: &Client, rs: &ReplicatedStore) -> Result<Tokens> {
    let names = Names::of(rs);
    let api: Api<Secret> = Api::namespaced(client.clone(), &names.namespace);
    let new_token = || {
        Ok(BTreeMap::from([(
            "token".to_owned(),
            bytes(&pki::new_token()),
        )]))
    };
    let (_, op) = kept(&api, rs, &names.operator_secret(), "token", new_token).await?;
    let (user_secret, user) =
        kept(&api, rs, &names.credentials_secret(), "token", new_token).await?;
    Ok(Tokens {
        operator: text(&op, "token").unwrap_or_default(),
        user: text(&user, "token").unwrap_or_default(),
        user_secret,
    })
}

/// Makes sure every other credential Secret of `rs` exists (after [`tokens`]), holds
/// certificates for `pods` pods and nothing due for renewal, and returns what the operator
/// calls the members with. With `spec.tls.issuerRef`, the cert-manager `Certificate` must have
/// been applied before (the apply stage does it, between [`tokens`] and this).
pub async fn ensure(
    client: &Client,
    rs: &ReplicatedStore,
    tokens: Tokens,
    pods: u32,
) -> Result<Credentials> {
    let names = Names::of(rs);
    let api: Api<Secret> = Api::namespaced(client.clone(), &names.namespace);
    let Tokens {
        operator: operator_token,
        user: user_token,
        user_secret,
    } = tokens;
    let tokens = token_file(&operator_token, &user_token);

    let expires;
    let ca_pem = match &rs.spec.tls.issuer_ref {
        None => {
            let ca_name = names.ca_secret();
            let (_, ca_data) = kept(&api, rs, &ca_name, "ca.key", || {
                let ca = Ca::generate(&format!("{}/{}", names.namespace, names.name))
                    .map_err(Error::MakeCa)?;
                Ok(BTreeMap::from([
                    (CA_FILE.to_owned(), bytes(&ca.pem().cert)),
                    ("ca.key".to_owned(), bytes(&ca.pem().key)),
                ]))
            })
            .await?;
            let pem = Pem {
                cert: text(&ca_data, CA_FILE).unwrap_or_default(),
                key: text(&ca_data, "ca.key").unwrap_or_default(),
            };
            let ca = Ca::from_pem(pem)
                .map_err(|source| Error::BadCa {
                    name: ca_name.clone(),
                    source,
                })?
                .with_leaf_validity(MEMBER_VALIDITY);
            let current = read(&api, &names.tls_secret()).await?;
            let existing = current.as_ref().map(|(_, d)| d.clone()).unwrap_or_default();
            let data = member_data(&existing, &ca, &names, pods, &tokens, SystemTime::now())?;
            expires = first_expiry(&data, data.keys());
            write(&api, rs, &names.tls_secret(), current.map(|(s, _)| s), data).await?;
            ca.pem().cert.clone()
        }
        Some(_) => {
            let current = read(&api, &names.tls_secret()).await?;
            let data = BTreeMap::from([(TOKENS_FILE.to_owned(), bytes(&tokens))]);
            write(&api, rs, &names.tls_secret(), current.map(|(s, _)| s), data).await?;
            let issued = names.member_certificate_secret();
            let issued_data = read(&api, &issued).await?.map(|(_, d)| d);
            expires = issued_data
                .as_ref()
                .and_then(|d| pki::validity_of(&text(d, "tls.crt")?).ok())
                .map(|(t, _)| t);
            issued_data
                .and_then(|d| text(&d, CA_FILE))
                .filter(|c| !c.trim().is_empty())
                .ok_or_else(|| Error::AwaitingCertManager {
                    secret: issued,
                    certificate: names.member_certificate(),
                })?
        }
    };
    let user_data = user_data(&names, &ca_pem, &user_token);
    write(
        &api,
        rs,
        &names.credentials_secret(),
        user_secret,
        user_data,
    )
    .await?;
    Ok(Credentials {
        ca_pem,
        token: operator_token,
        expires,
    })
}
