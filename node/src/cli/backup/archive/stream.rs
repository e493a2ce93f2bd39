//! The archiver's inputs besides the store: the lines of one watch, read on a task of their
//! own (so that a tick or a stop never cuts a line in half), and the signals that stop it.

use rstore_api::client::{Watch, WatchLine};
use tokio::sync::mpsc;

/// What the watch task passes on.
pub enum Seen {
    Line(WatchLine),
    /// The stream ended or broke (the error, if any).
    Ended(Option<String>),
}

pub async fn read_lines(mut watch: Watch, tx: mpsc::Sender<Seen>) {
    loop {
        let seen = match watch.next().await {
            Ok(Some(line)) => Seen::Line(line),
            Ok(None) => Seen::Ended(None),
            Err(e) => Seen::Ended(Some(e.to_string())),
        };
        let end = matches!(seen, Seen::Ended(_));
        if tx.send(seen).await.is_err() || end {
            return;
        }
    }
}

/// SIGTERM or SIGINT (Ctrl-C), caught from the start.
pub struct Stop {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Stop {
    pub fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
