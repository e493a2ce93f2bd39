//! What a cluster must serve, checked the same way everywhere: expected keys and values,
//! acknowledged writes of many keys, and reading metrics and membership out of answers.

use std::collections::BTreeMap;

use futures::StreamExt;
use serde_json::Value;

use super::client::{Consistency, NodeClient, kv_path};

/// What a node's reads must return: key to value.
pub type Expected = BTreeMap<String, Vec<u8>>;

/// Assert that `client` returns every expected value under `consistency`, retrying only
/// through elections (503). 16 reads are in flight at a time.
pub async fn assert_values(client: &NodeClient, expected: &Expected, consistency: Consistency) {
    let mut reads = futures::stream::iter(expected.iter())
        .map(|(key, value)| async move {
            let resp = client.get_through_elections(key, consistency).await;
            (key, value, resp)
        })
        .buffer_unordered(16);
    while let Some((key, value, resp)) = reads.next().await {
        assert_eq!(
            (resp.status, resp.text()),
            (200, String::from_utf8_lossy(value).into_owned()),
            "{consistency:?} read of {key:?} from {}",
            client.url
        );
    }
}

/// How many expected keys `client` already serves with the right value under `stale`
/// reads; for waiting on a node that is still catching up.
pub async fn count_stale_matches(client: &NodeClient, expected: &Expected) -> usize {
    count_matches(client, expected, Consistency::Stale).await
}

/// How many expected keys `client` serves with the right value under `consistency`; any
/// other answer (old value, 404, 503, transport error) counts as not yet.
pub async fn count_matches(
    client: &NodeClient,
    expected: &Expected,
    consistency: Consistency,
) -> usize {
    futures::stream::iter(expected.iter())
        .map(|(key, value)| async move {
            let path = format!("{}?consistency={}", kv_path(key), consistency.as_str());
            matches!(client.try_get(&path).await, Ok(r) if r.status == 200 && r.body == *value)
        })
        .buffer_unordered(16)
        .filter(|ok| futures::future::ready(*ok))
        .count()
        .await
}

/// Acknowledged writes of `count` keys `prefix-0000`… through `client`, `parallel` in
/// flight at a time. Returns what was acknowledged.
pub async fn write_keys(
    client: &NodeClient,
    prefix: &str,
    count: usize,
    parallel: usize,
) -> Expected {
    let mut writes = futures::stream::iter(0..count)
        .map(|i| async move {
            let key = format!("{prefix}-{i:04}");
            let value = format!("value of {key}").into_bytes();
            client.put_acked(&key, &value).await;
            (key, value)
        })
        .buffer_unordered(parallel);
    let mut acked = Expected::new();
    while let Some((key, value)) = writes.next().await {
        acked.insert(key, value);
    }
    acked
}

/// The value of an unlabelled sample `name` in Prometheus text, if present.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|value| value.trim().parse().ok())
}

/// The members of a `/v1/cluster` view as (id, role) pairs, sorted.
pub fn members(view: &Value) -> Vec<(u64, String)> {
    let mut out: Vec<(u64, String)> = view["members"]
        .as_array()
        .unwrap_or_else(|| panic!("no members array in {view}"))
        .iter()
        .map(|m| {
            let id = m["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("member without id: {m}"));
            (id, m["role"].as_str().unwrap_or_default().to_string())
        })
        .collect();
    out.sort();
    out
}
