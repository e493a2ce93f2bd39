//! A `destination` of a Backup or BackupSchedule opened as a [`BackupStore`]: its URL, and
//! the settings in its credentials Secret (each key an object-store setting, such as
//! `AWS_ACCESS_KEY_ID` or `AWS_ENDPOINT`).

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use rstore_backup::store::{BackupStore, StoreOptions};

use crate::crd::backup::BackupDestination;

/// Why a destination cannot be used; the message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    #[error(
        "the credentials Secret {namespace}/{name} does not exist: create it with the object \
         store's settings as keys (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ...)"
    )]
    NoSecret { namespace: String, name: String },
    #[error("reading the credentials Secret {namespace}/{name}: {source}")]
    Kube {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "the credentials Secret {namespace}/{name} has key {key} that is not UTF-8 text; \
         each key must hold one setting as text"
    )]
    NotText {
        namespace: String,
        name: String,
        key: String,
    },
    #[error(transparent)]
    Store(#[from] rstore_backup::store::StoreError),
}

impl DestinationError {
    /// Whether trying again later may help without anyone fixing anything.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Kube { .. } => true,
            Self::Store(e) => e.is_transient(),
            _ => false,
        }
    }
}

/// The store `dest` names, with the settings of its credentials Secret, if any.
pub async fn open(
    client: &Client,
    namespace: &str,
    dest: &BackupDestination,
) -> Result<BackupStore, DestinationError> {
    let mut opts = StoreOptions::default();
    if let Some(name) = &dest.credentials_secret {
        let secret = Api::<Secret>::namespaced(client.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(|source| DestinationError::Kube {
                namespace: namespace.to_owned(),
                name: name.clone(),
                source,
            })?
            .ok_or_else(|| DestinationError::NoSecret {
                namespace: namespace.to_owned(),
                name: name.clone(),
            })?;
        for (key, value) in secret.data.unwrap_or_default() {
            let text = String::from_utf8(value.0).map_err(|_| DestinationError::NotText {
                namespace: namespace.to_owned(),
                name: name.clone(),
                key: key.clone(),
            })?;
            opts = opts.with(&key.to_ascii_lowercase(), text.trim());
        }
        for (key, value) in secret.string_data.unwrap_or_default() {
            opts = opts.with(&key.to_ascii_lowercase(), value.trim());
        }
    }
    Ok(BackupStore::open(&dest.url, &opts)?)
}
