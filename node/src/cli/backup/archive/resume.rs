//! Where the archive resumes: after the newest complete segment (adopting one an archiver
//! left without its manifest), or after the newest full backup; and what a `compacted`
//! answer says is the oldest revision the cluster still keeps.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::bail;
use rstore_backup::retention::State;
use rstore_backup::store::BackupStore;

/// The revision after the newest complete segment, or after the newest full backup when
/// there is no segment; a segment left without its manifest by an archiver that died is
/// adopted first when it checks out.
pub async fn resume_point(store: &BackupStore, cluster_id: &str) -> anyhow::Result<u64> {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut newest = None::<u64>;
    for s in store.list_segments(cluster_id).await? {
        match s.state() {
            State::Good => newest = newest.max(Some(s.name.last)),
            State::InProgress if s.size.is_some() => {
                let h = store.adopt_segment(&s.object, now_ms).await?;
                tracing::info!(segment = %s.object, "adopted a segment uploaded without its manifest");
                newest = newest.max(Some(h.last_revision));
            }
            _ => {}
        }
    }
    if let Some(last) = newest {
        return Ok(last + 1);
    }
    match newest_backup(store, cluster_id).await? {
        Some(r) => Ok(r + 1),
        None => bail!(
            "{} holds no complete full backup of cluster {cluster_id} and no archived segment: take a full backup first (node backup save --out {} ...); the archive starts after it",
            store.url(),
            store.url()
        ),
    }
}

pub async fn newest_backup(store: &BackupStore, cluster_id: &str) -> anyhow::Result<Option<u64>> {
    Ok(store
        .list_backups(Some(cluster_id))
        .await?
        .iter()
        .filter(|b| b.state() == State::Good && b.name.cluster_id == cluster_id)
        .map(|b| b.name.revision)
        .max())
}

/// "… the oldest revision kept is N …" in a `compacted` message.
pub fn oldest_kept(message: &str) -> Option<u64> {
    let rest = message.split("oldest revision kept is ").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_oldest_revision_kept_is_read_from_the_message() {
        let m = "revision 16 is compacted; the oldest revision kept is 46. Read the current state";
        assert_eq!(super::oldest_kept(m), Some(46));
        assert_eq!(super::oldest_kept("something else"), None);
    }
}
