//! Pod Events, as the kubelet reports them: `Started`, `Failed`, `BackOff`, `Killing`,
//! `Unhealthy`. They are what `kubectl describe pod` and `kubectl get events` show a user
//! who asks why a pod is not running.
//!
//! Events go out through kube's [`Recorder`] (events.k8s.io/v1, repeated events folded into
//! a series), one reporter per Node as the kubelet of that Node, on a spawned task: the
//! agent's loops never wait on them, and a failure to publish is logged, not fatal.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::Client;
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tracing::debug;

/// Where the agent's Events go.
#[derive(Clone)]
pub struct Events {
    client: Client,
    recorders: Arc<Mutex<HashMap<String, Recorder>>>,
}

/// One Event about one pod, ready to publish from anywhere (probe tasks included).
#[derive(Clone)]
pub struct PodEvents {
    recorder: Recorder,
    pod: ObjectReference,
}

impl Events {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            recorders: Arc::default(),
        }
    }

    /// The Events of `pod`, reported by the kubelet of its Node.
    pub fn for_pod(&self, pod: &Pod) -> PodEvents {
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        let recorder = self
            .recorders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(node.clone())
            .or_insert_with(|| {
                Recorder::new(
                    self.client.clone(),
                    Reporter {
                        controller: "kubelet".into(),
                        instance: Some(node),
                    },
                )
            })
            .clone();
        PodEvents {
            recorder,
            pod: pod.object_ref(&()),
        }
    }
}

impl PodEvents {
    pub fn normal(&self, reason: &str, note: String) {
        self.publish(EventType::Normal, reason, note);
    }

    pub fn warning(&self, reason: &str, note: String) {
        self.publish(EventType::Warning, reason, note);
    }

    fn publish(&self, type_: EventType, reason: &str, note: String) {
        let ev = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(truncate(note, 1000)),
            action: reason.to_owned(),
            secondary: None,
        };
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.recorder.publish(&ev, &this.pod).await {
                debug!(pod = ?this.pod.name, reason = %ev.reason, error = %e, "cannot publish an Event");
            }
        });
    }
}

/// At most `max` bytes, cut at a character boundary (the API refuses notes over 1 kB).
fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn notes_are_cut_at_a_character_boundary() {
        assert_eq!(super::truncate("héllo".into(), 2), "h");
        assert_eq!(super::truncate("abc".into(), 10), "abc");
    }
}
