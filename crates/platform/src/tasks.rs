//! Background tasks that must not die silently (the drainer, the replication pullers, the
//! adopter, the ownership exchange): each runs under a supervisor that restarts it when it
//! panics, after a pause, counts the restart, and tells `/readyz` when a task keeps failing.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Pause before a panicked task runs again, so a task that fails at once does not spin.
const RESTART_PAUSE: Duration = Duration::from_millis(500);
/// A task that panicked this many times within `FAILING_WINDOW` makes the node unready.
const FAILURES_TO_UNREADY: usize = 5;
const FAILING_WINDOW: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    pub task: String,
}

/// The node's supervised tasks.
#[derive(Default)]
pub struct Tasks {
    restarts: Family<TaskLabels, Counter>,
    /// Per task, when it last panicked (the last `FAILURES_TO_UNREADY` times).
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl Tasks {
    pub fn new(restarts: Family<TaskLabels, Counter>) -> Arc<Tasks> {
        Arc::new(Tasks { restarts, failures: Mutex::new(HashMap::new()) })
    }

    /// Runs `make()`'s future as the task `name`, again whenever it panics, until it returns.
    pub fn supervise<F, Fut>(self: &Arc<Self>, name: impl Into<String>, make: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let tasks = Arc::clone(self);
        let name = name.into();
        tokio::spawn(async move {
            loop {
                match tokio::spawn(make()).await {
                    Ok(()) => return,
                    Err(error) if error.is_panic() => {
                        let panic = error.into_panic();
                        let message = panic
                            .downcast_ref::<&str>()
                            .map(|text| text.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "a panic without a message".to_string());
                        tracing::error!(task = name, panic = message, "background task panicked; restarting it");
                        tasks.failed(&name);
                        tokio::time::sleep(RESTART_PAUSE).await;
                    }
                    // Cancelled: the runtime is shutting down.
                    Err(_) => return,
                }
            }
        });
    }

    fn failed(&self, name: &str) {
        self.restarts.get_or_create(&TaskLabels { task: name.to_string() }).inc();
        let mut failures = self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let times = failures.entry(name.to_string()).or_default();
        times.push_back(Instant::now());
        while times.len() > FAILURES_TO_UNREADY {
            times.pop_front();
        }
    }

    /// A task that keeps failing (panicked `FAILURES_TO_UNREADY` times within a minute), if any.
    pub fn failing(&self) -> Option<String> {
        let failures = self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        failures
            .iter()
            .find(|(_, times)| {
                times.len() >= FAILURES_TO_UNREADY
                    && times.front().is_some_and(|first| first.elapsed() < FAILING_WINDOW)
            })
            .map(|(name, _)| name.clone())
    }

    /// How often `name` was restarted.
    pub fn restarts(&self, name: &str) -> u64 {
        self.restarts.get_or_create(&TaskLabels { task: name.to_string() }).get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn a_task_that_panics_is_restarted_and_counted() {
        let tasks = Tasks::new(Family::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        let done = Arc::new(Mutex::new(Some(done)));
        let counted = Arc::clone(&runs);
        tasks.supervise("flaky", move || {
            let runs = Arc::clone(&counted);
            let done = Arc::clone(&done);
            async move {
                if runs.fetch_add(1, Ordering::SeqCst) == 0 {
                    panic!("the first run fails");
                }
                if let Some(done) = done.lock().unwrap().take() {
                    let _ = done.send(());
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), finished).await.unwrap().unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert_eq!(tasks.restarts("flaky"), 1);
        assert_eq!(tasks.failing(), None, "one panic is not failing for good");
    }

    #[test]
    fn a_task_that_keeps_panicking_is_reported_failing() {
        let tasks = Tasks::new(Family::default());
        for _ in 0..FAILURES_TO_UNREADY {
            tasks.failed("drain");
        }
        assert_eq!(tasks.failing().as_deref(), Some("drain"));
    }
}
