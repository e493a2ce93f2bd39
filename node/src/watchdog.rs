//! Election watchdog: a voter that has known no leader for longer than openraft's own
//! retries can explain starts an election at a freshly drawn random moment.
//!
//! Why it exists: openraft 0.9 draws each node's election timeout once, at start-up, and
//! after a refused campaign it backs off by the same fixed amount on every node that saw a
//! longer log. The fault suite's soak found a cluster that never elected a leader because
//! of it (`tests/faults/README.md`): the old leader could receive but not send, so it kept
//! appending client writes and refused every candidate; the follower with the shorter log
//! campaigned first in each round, the follower with the longer log followed in the same
//! term and lost the tie to the larger node id, and both then waited the same period
//! again, so the order repeated forever. Raft relies on drawing a new timeout for every
//! election to break such patterns; this restores that for the rare stall, without
//! touching the normal path, where a leader is elected within one or two timeouts.
//!
//! A watchdog campaign that loses a same-term tie (another candidate asked first in the
//! same term, and its vote came back) is retried once or twice after a short random pause:
//! the retry's term is above the winner of the tie, whose vote it can then get. Without
//! that, the shorter log's candidate, which can never win, keeps setting the term.

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;
use rand::Rng;

use crate::metrics::Metrics;
use crate::types::Raft;

/// How long a voter may know no leader before the watchdog acts: longer than openraft's
/// own slowest retry (the election timeout plus twice the largest timeout, its back-off
/// after seeing a longer log), plus a fresh random share of the largest timeout.
fn patience(election_max: Duration) -> Duration {
    let jitter = rand::thread_rng().gen_range(0..=election_max.as_millis() as u64);
    election_max * 3 + Duration::from_millis(jitter)
}

/// The pause before retrying a campaign that lost a same-term tie: long enough for the
/// round trips of the lost campaign to finish, short against any election timeout.
fn tie_pause(election_max: Duration) -> Duration {
    let max = (election_max.as_millis() as u64 / 20).max(2);
    Duration::from_millis(rand::thread_rng().gen_range(max / 2..=max))
}

/// Quick retries of one watchdog campaign that keeps losing same-term ties.
const TIE_RETRIES: u32 = 2;

/// A campaign the watchdog started from `from_term`.
struct Campaign {
    from_term: u64,
    /// Quick retries left.
    retries: u32,
    /// A tie seen after this is an ordinary election's business again.
    until: Instant,
}

/// Watch `raft` until it shuts down. `election_max` is the largest election timeout.
pub async fn run(raft: Raft, election_max: Duration, metrics: Arc<Metrics>) {
    let mut rx = raft.metrics();
    let poll = (election_max / 20).max(Duration::from_millis(5));
    let mut leaderless_since: Option<Instant> = None;
    let mut due: Option<Instant> = None;
    let mut campaign: Option<Campaign> = None;
    loop {
        // Copy what is needed at once: a held borrow of the metrics blocks the Raft core.
        let (state, leaderless_voter, term, lost_tie_to) = {
            let m = rx.borrow_and_update();
            let voter = m
                .membership_config
                .membership()
                .voter_ids()
                .any(|v| v == m.id);
            let electing = matches!(m.state, ServerState::Follower | ServerState::Candidate);
            let voted_for = m.vote.leader_id().voted_for();
            let lost_tie_to = voted_for.filter(|&v| v != m.id && m.state == ServerState::Follower);
            (
                m.state,
                voter && electing && m.current_leader.is_none(),
                m.current_term,
                lost_tie_to,
            )
        };
        if state == ServerState::Shutdown {
            return;
        }
        if !leaderless_voter {
            leaderless_since = None;
            due = None;
            campaign = None;
            if rx.changed().await.is_err() {
                return;
            }
            continue;
        }
        let now = Instant::now();
        let since = *leaderless_since.get_or_insert(now);
        if let Some(c) = &mut campaign
            && now < c.until
            && term == c.from_term + 1
            && c.retries > 0
            && let Some(winner) = lost_tie_to
        {
            c.retries -= 1;
            c.from_term = term;
            let pause = tie_pause(election_max);
            tracing::info!(
                term,
                winner,
                ?pause,
                "the watchdog's campaign lost a same-term tie; retrying one term higher"
            );
            due = Some(now + pause);
        }
        let at = *due.get_or_insert_with(|| now + patience(election_max));
        if now >= at {
            tracing::warn!(
                term,
                leaderless_ms = since.elapsed().as_millis() as u64,
                "no leader known for longer than elections should take; starting an election at a random moment to break a repeating split vote"
            );
            metrics.election_watchdog.inc();
            if raft.trigger().elect().await.is_err() {
                return;
            }
            let retries = campaign
                .as_ref()
                .filter(|c| c.from_term == term)
                .map_or(TIE_RETRIES, |c| c.retries);
            campaign = Some(Campaign {
                from_term: term,
                retries,
                until: Instant::now() + election_max,
            });
            due = Some(Instant::now() + patience(election_max));
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(poll) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patience_outlasts_openraft_retries_and_varies() {
        let max = Duration::from_millis(2000);
        let draws: Vec<Duration> = (0..200).map(|_| patience(max)).collect();
        assert!(draws.iter().all(|d| *d >= max * 3 && *d <= max * 4));
        let distinct: std::collections::BTreeSet<_> = draws.iter().collect();
        assert!(distinct.len() > 50, "draws barely vary: {distinct:?}");
    }
}
