//! Whole-state work that must not take the CPU from the writes: building a snapshot and
//! encoding a backup each walk the entire state, and each runs on a thread of its own at
//! the lowest CPU priority (nice 19), so that it takes the CPU the member's writes and reads
//! leave idle rather than their share (RocksDB lowers its compaction threads for the same
//! reason). On an idle member such a thread still runs at full speed.

/// The nice value of those threads: the lowest priority.
pub const NICE: i32 = 19;

/// Lower the calling thread's CPU priority to `nice` (Linux keeps a nice value per thread,
/// and `setpriority` on a thread id sets that thread's alone); a failure only costs the
/// writes some CPU, so it is logged, not fatal.
pub fn lower_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice) {
        tracing::warn!(nice, error = %e, "a background thread keeps its CPU priority");
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

/// Starts `job` on a new thread named `name` at the lowest priority.
pub fn spawn(name: &str, job: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            lower_priority(NICE);
            job();
        })
        .map(drop)
}

/// Runs `job` on a new thread named `name` at the lowest priority, and waits for its result
/// without holding up the async runtime.
pub async fn run<T: Send + 'static>(
    name: &str,
    job: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    spawn(name, move || {
        let _ = tx.send(job());
    })?;
    rx.await
        .map_err(|_| std::io::Error::other(format!("the {name} thread stopped without a result")))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    fn my_priority() -> i32 {
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap()
    }

    #[test]
    fn only_the_lowered_thread_runs_at_the_lowest_priority() {
        let before = my_priority();
        let other = std::thread::spawn(move || {
            super::lower_priority(super::NICE);
            my_priority()
        });
        assert_eq!(other.join().unwrap(), super::NICE);
        assert_eq!(
            my_priority(),
            before,
            "the calling thread's priority changed too"
        );
    }

    #[tokio::test]
    async fn a_job_runs_at_the_lowest_priority_and_returns_its_result() {
        let (nice, name) = super::run("rstore-test", || {
            (
                my_priority(),
                std::thread::current().name().map(str::to_owned),
            )
        })
        .await
        .unwrap();
        assert_eq!(nice, super::NICE);
        assert_eq!(name.as_deref(), Some("rstore-test"));
    }
}
