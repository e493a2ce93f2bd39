//! The `Backup` and `BackupSchedule` custom resources (`rstore.dev/v1alpha1`): a backup of a
//! `ReplicatedStore` taken once, and backups taken on a cron schedule with retention.
//!
//! A `Backup` is a request: its spec is fixed at creation, and its status says how the save
//! went (attempts, then the object, revision, size and duration, or the reason it failed).
//! A `BackupSchedule` creates `Backup`s as a CronJob creates Jobs, applies retention to the
//! objects in the store, and says in its status when the last good backup was taken, and
//! whether that is too long ago (`Stale`: no success for twice the schedule's period).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Attempts a `Backup` makes before it is `Failed`, when the spec does not say.
pub const DEFAULT_BACKUP_ATTEMPTS: u32 = 3;
/// `Backup`s a schedule keeps as history, when the spec does not say.
pub const DEFAULT_HISTORY_LIMIT: u32 = 10;

/// A backup of a ReplicatedStore, taken once, into object storage.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "rstore.dev",
    version = "v1alpha1",
    kind = "Backup",
    plural = "backups",
    shortname = "rsbackup",
    namespaced,
    status = "BackupStatus",
    derive = "PartialEq",
    doc = "A consistent backup of a ReplicatedStore, saved once into object storage.",
    printcolumn(
        name = "Store",
        type_ = "string",
        description = "The ReplicatedStore backed up",
        json_path = ".spec.store"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        description = "Pending, Running, Succeeded or Failed",
        json_path = ".status.phase"
    ),
    printcolumn(
        name = "Revision",
        type_ = "integer",
        description = "The store's revision the backup holds",
        json_path = ".status.revision"
    ),
    printcolumn(
        name = "Size",
        type_ = "string",
        description = "Size of the backup object",
        json_path = ".status.size"
    ),
    printcolumn(
        name = "Duration",
        type_ = "string",
        description = "How long the save took",
        json_path = ".status.duration"
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        priority = 1,
        description = "What is happening, or why it failed",
        json_path = ".status.message"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self == oldSelf").message("a Backup's spec cannot change: create another Backup"))]
pub struct BackupSpec {
    /// Name of the ReplicatedStore to back up, in this namespace.
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new("size(self) > 0").message("store must name a ReplicatedStore"))]
    pub store: String,

    /// Where the backup is written.
    pub destination: BackupDestination,

    /// Attempts before the backup is `Failed` (default 3). A failed attempt leaves a
    /// `failed` manifest in the store, which retention and restores never count; the next
    /// attempt waits longer each time (10 s, 20 s, 40 s, ... at most 5 minutes).
    #[serde(default = "default_attempts")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 20").message("maxAttempts must be between 1 and 20"))]
    pub max_attempts: u32,

    /// Read the backup from the member no faster than this, in bytes per second (`64MiB`,
    /// `500KB`): the member then spends proportionally less CPU on it beside the writes it
    /// serves, and the backup takes longer. Unlimited when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+(B|K|KB|Ki|KiB|M|MB|Mi|MiB|G|GB|Gi|GiB)?$')").message("maxRate must be bytes per second: a number and an optional unit (KB, KiB, MB, MiB, GB, GiB), such as 64MiB"))]
    pub max_rate: Option<String>,

    /// How fast the member streams the backup while it is applying writes (`100MB`,
    /// `64MiB`, or `unlimited`): on an idle member a backup always streams at full speed;
    /// while writes arrive it is paced to this, so that it takes less of the CPU and disk
    /// the writes need. The member's setting (64MiB by default) when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self == 'unlimited' || self.matches('^[0-9]+(B|K|KB|Ki|KiB|M|MB|Mi|MiB|G|GB|Gi|GiB)?$')").message("rateUnderLoad must be unlimited or bytes per second: a number and an optional unit (KB, KiB, MB, MiB, GB, GiB), such as 100MB"))]
    pub rate_under_load: Option<String>,
}

/// An object store location and how to authenticate to it.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BackupDestination {
    /// The store: `s3://BUCKET/PREFIX`, `gs://BUCKET/PREFIX`, `az://CONTAINER/PREFIX` or
    /// `file:///DIRECTORY` (a directory the operator can write). Backups are written once,
    /// under `CLUSTER-ID/backup-TIME-rREVISION.rsb`, each with a manifest beside it.
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new("self.matches('^(s3|s3a|gs|az|azure|abfs|file)://.+')").message("destination.url must be s3://, gs://, az:// or file:// followed by a bucket, container or directory"))]
    pub url: String,

    /// A Secret in this namespace whose keys are the object store's settings: for S3
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, and optionally `AWS_REGION`,
    /// `AWS_ENDPOINT` (an S3-compatible service) and `AWS_ALLOW_HTTP`; for GCS
    /// `GOOGLE_SERVICE_ACCOUNT_KEY`; for Azure `AZURE_STORAGE_ACCOUNT_NAME` and
    /// `AZURE_STORAGE_ACCOUNT_KEY`. Left out, the operator's own environment is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
}

fn default_attempts() -> u32 {
    DEFAULT_BACKUP_ATTEMPTS
}

/// Where a backup stands.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
pub enum BackupPhase {
    /// Waiting for its store to be available, or for the next attempt.
    Pending,
    /// Being streamed from the store's leader into the object store.
    Running,
    /// Saved, checked and recorded with a `complete` manifest.
    Succeeded,
    /// Every attempt failed, or the request cannot be carried out; see `message`.
    Failed,
}

/// How a backup went, written by the operator.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    /// Pending, Running, Succeeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<BackupPhase>,

    /// What is happening now, or why the backup failed, in words that say what to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// Attempts made so far.
    #[serde(default)]
    pub attempts: u32,

    /// When the next attempt is due, after a failed one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<Time>,

    /// The backup object's URL, once saved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,

    /// The store's cluster id, as recorded in the backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,

    /// The revision the backup holds: every write acknowledged at or before it, none after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,

    /// Keys in the backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<u64>,

    /// Size of the backup object in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,

    /// Size of the backup object, for people (`12.5 MiB`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,

    /// SHA-256 of the backup object, as its manifest records it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,

    /// When the successful attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,

    /// When the successful attempt ended (the backup object and its manifest written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,

    /// How long the successful save took (`4.2s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
}

/// Backups of a ReplicatedStore on a cron schedule, with retention by count and by age.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "rstore.dev",
    version = "v1alpha1",
    kind = "BackupSchedule",
    plural = "backupschedules",
    shortname = "rsbs",
    namespaced,
    status = "BackupScheduleStatus",
    derive = "PartialEq",
    doc = "Backups of a ReplicatedStore on a cron schedule, with retention.",
    printcolumn(
        name = "Store",
        type_ = "string",
        description = "The ReplicatedStore backed up",
        json_path = ".spec.store"
    ),
    printcolumn(
        name = "Schedule",
        type_ = "string",
        description = "Cron schedule (UTC)",
        json_path = ".spec.schedule"
    ),
    printcolumn(
        name = "Last Success",
        type_ = "date",
        description = "When the newest successful backup was taken",
        json_path = ".status.lastSuccessful.time"
    ),
    printcolumn(
        name = "Revision",
        type_ = "integer",
        description = "Revision of the newest successful backup",
        json_path = ".status.lastSuccessful.revision"
    ),
    printcolumn(
        name = "Kept",
        type_ = "integer",
        description = "Successful backups kept in the store",
        json_path = ".status.keptBackups"
    ),
    printcolumn(
        name = "Stale",
        type_ = "string",
        description = "True when no backup succeeded for twice the schedule's period",
        json_path = ".status.conditions[?(@.type==\"Stale\")].status"
    ),
    printcolumn(
        name = "Next",
        type_ = "date",
        description = "When the next backup is due",
        json_path = ".status.nextScheduleTime"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BackupScheduleSpec {
    /// Name of the ReplicatedStore to back up, in this namespace.
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new("size(self) > 0").message("store must name a ReplicatedStore"))]
    pub store: String,

    /// When to take a backup: a cron expression of five fields (minute hour day-of-month
    /// month day-of-week), in UTC, such as `0 */6 * * *`. A backup that is due while the
    /// previous one still runs waits for it.
    #[schemars(length(max = 128))]
    #[x_kube(validation = Rule::new("self.matches('^ *[^ ]+( +[^ ]+){4} *$')").message("schedule must be a cron expression of five fields (minute hour day-of-month month day-of-week), such as '0 */6 * * *'"))]
    pub schedule: String,

    /// Where the backups are written.
    pub destination: BackupDestination,

    /// Which backups to keep.
    #[serde(default)]
    pub retention: RetentionSpec,

    /// Take no new backups (retention still applies).
    #[serde(default)]
    pub suspend: bool,

    /// Attempts each backup makes before it is `Failed` (default 3).
    #[serde(default = "default_attempts")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 20").message("maxAttempts must be between 1 and 20"))]
    pub max_attempts: u32,

    /// Read the backup from the member no faster than this, in bytes per second (`64MiB`,
    /// `500KB`): the member then spends proportionally less CPU on it beside the writes it
    /// serves, and the backup takes longer. Unlimited when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+(B|K|KB|Ki|KiB|M|MB|Mi|MiB|G|GB|Gi|GiB)?$')").message("maxRate must be bytes per second: a number and an optional unit (KB, KiB, MB, MiB, GB, GiB), such as 64MiB"))]
    pub max_rate: Option<String>,

    /// How fast the member streams the backup while it is applying writes (`100MB`,
    /// `64MiB`, or `unlimited`): on an idle member a backup always streams at full speed;
    /// while writes arrive it is paced to this, so that it takes less of the CPU and disk
    /// the writes need. The member's setting (64MiB by default) when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self == 'unlimited' || self.matches('^[0-9]+(B|K|KB|Ki|KiB|M|MB|Mi|MiB|G|GB|Gi|GiB)?$')").message("rateUnderLoad must be unlimited or bytes per second: a number and an optional unit (KB, KiB, MB, MiB, GB, GiB), such as 100MB"))]
    pub rate_under_load: Option<String>,

    /// Also archive the store's change stream into the destination, continuously, for
    /// point-in-time recovery (`node backup restore STORE --at-revision R` or a store's
    /// `bootstrap.fromBackup.atRevision`): the operator runs one archiver pod for the
    /// store once the schedule has a successful backup. Left out, no archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<ArchiveSpec>,

    /// `Backup` resources kept as history (default 10); older ones are deleted, never their
    /// objects, which only retention deletes.
    #[serde(default = "default_history")]
    #[x_kube(validation = Rule::new("self >= 1").message("historyLimit must be at least 1"))]
    pub history_limit: u32,
}

fn default_history() -> u32 {
    DEFAULT_HISTORY_LIMIT
}

/// Continuous archiving of the change stream.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveSpec {
    /// A segment is written at least this often while changes come in (default 60): the
    /// most a loss of the whole cluster can lose from the archive.
    #[serde(default = "default_segment_seconds")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 3600").message("archive.segmentSeconds must be between 1 and 3600"))]
    pub segment_seconds: u32,
}

fn default_segment_seconds() -> u32 {
    60
}

/// Retention of a schedule's backups. Only successful backups count; the newest successful
/// backup is never deleted; failed ones are deleted once a newer backup succeeded.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RetentionSpec {
    /// Keep at most this many successful backups (the newest). Left out: no limit by count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("retention.keepLast must be at least 1"))]
    pub keep_last: Option<u32>,

    /// Delete successful backups older than this: a number and a unit, `90m`, `36h` or `30d`.
    /// Left out: no limit by age.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+(m|h|d)$')").message("retention.maxAge must be a number and a unit: m, h or d (such as 30d)"))]
    pub max_age: Option<String>,
}

/// The newest successful backup of a schedule.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastBackup {
    /// The `Backup` resource.
    pub name: String,
    /// When it completed.
    pub time: Time,
    /// The revision it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// Size of its object in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// How long the save took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// Its object's URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
}

/// The newest failed backup of a schedule.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastFailure {
    /// The `Backup` resource.
    pub name: String,
    /// When it was created.
    pub time: Time,
    /// Why it failed.
    pub reason: String,
}

/// How a schedule is doing, written by the operator.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupScheduleStatus {
    /// The `metadata.generation` this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// When the last backup was started by the schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,

    /// When the next backup is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Time>,

    /// The newest successful backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful: Option<LastBackup>,

    /// The newest failed backup, when it is newer than the newest successful one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<LastFailure>,

    /// Successful backups of this store in the destination after retention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_backups: Option<u32>,

    /// What the schedule did last (retention's deletions), or what is wrong with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// `Stale` (True when no backup succeeded for twice the schedule's period), `Ready`
    /// (False when the spec is unusable) and, with `spec.archive`, `Archiving` (True while
    /// the archiver runs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[cfg(test)]
mod tests;
