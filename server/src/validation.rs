//! Role validation off the async workers.
//!
//! `role::load` of a pushed role is CPU work bounded by the role format's
//! limits (names, ids, templates, diagnostics), yet it can take a second for a
//! large hostile role. Run on an async worker, two such pushes would hold
//! every worker, and `/healthz` and every other caller would wait. So
//! validations run on tokio's blocking pool, at most one per core at once,
//! with a bounded queue in front: past it, a push is turned away as busy.

use std::num::NonZeroUsize;
use std::sync::Arc;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Semaphore;
use tonic::Status;
use tracing::error;

use crate::metrics::Metrics;

/// Validations that may wait for a turn; one more is refused as busy. The
/// load benchmark's 64 concurrent publishers all fit.
pub const MAX_WAITING: usize = 64;

/// Runs validations a few at a time on the blocking pool.
pub struct Validator {
    /// One permit per validation that may run at once (one per core). The
    /// permit moves into the blocking task, so a push whose caller went away
    /// keeps it until its validation ends: the bound holds for work, not
    /// only for callers.
    running: Arc<Semaphore>,
    /// Validations running or waiting; `try_acquire` failing means busy.
    /// Held as long as `running`'s permit.
    admitted: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl Validator {
    /// One validation per core at once, [`MAX_WAITING`] more waiting.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        Self::with_limits(cores, MAX_WAITING, metrics)
    }

    fn with_limits(running: usize, waiting: usize, metrics: Arc<Metrics>) -> Self {
        Validator {
            running: Arc::new(Semaphore::new(running)),
            admitted: Arc::new(Semaphore::new(running + waiting)),
            metrics,
        }
    }

    /// Runs `work` on the blocking pool once a turn is free; `RESOURCE_EXHAUSTED`
    /// when too many wait already. `what` names the work in the log if it panics.
    pub async fn run<T, F>(&self, what: &'static str, work: F) -> Result<T, Status>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let Ok(admitted) = self.admitted.clone().try_acquire_owned() else {
            return Err(Status::resource_exhausted(
                "the server is busy validating other roles; nothing was stored, retry in a moment",
            ));
        };
        let running = {
            let _waiting = Counted::new(&self.metrics.validations_waiting);
            self.running
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed")
        };
        let gauge = self.metrics.validations_running.clone();
        tokio::task::spawn_blocking(move || {
            let _turn = (admitted, running, Counted::new(&gauge));
            work()
        })
        .await
        .map_err(|e| {
            error!(error = %e, what, "validation did not finish");
            Status::internal(format!("{what} failed inside the server; see its log"))
        })
    }
}

/// Counts itself in a gauge while it lives (also when its future is dropped).
struct Counted(Gauge);

impl Counted {
    fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Counted(gauge.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[tokio::test]
    async fn past_the_queue_a_validation_is_turned_away_busy() {
        let metrics = Arc::new(Metrics::default());
        let v = Arc::new(Validator::with_limits(1, 1, metrics.clone()));
        // The first holds the only turn until told to finish; the second waits.
        let (finish, finished) = mpsc::channel::<()>();
        let (started, running) = mpsc::channel::<()>();
        let first = tokio::spawn({
            let v = v.clone();
            async move {
                v.run("first", move || {
                    started.send(()).unwrap();
                    finished.recv().unwrap();
                    1
                })
                .await
            }
        });
        tokio::task::spawn_blocking(move || running.recv().unwrap())
            .await
            .unwrap();
        let second = tokio::spawn({
            let v = v.clone();
            async move { v.run("second", || 2).await }
        });
        while metrics.validations_waiting.get() != 1 {
            tokio::task::yield_now().await;
        }
        assert_eq!(metrics.validations_running.get(), 1);

        let busy = v.run("third", || 3).await.unwrap_err();
        assert_eq!(busy.code(), tonic::Code::ResourceExhausted);
        assert!(busy.message().contains("retry"), "{busy:?}");

        finish.send(()).unwrap();
        assert_eq!(first.await.unwrap().unwrap(), 1);
        assert_eq!(second.await.unwrap().unwrap(), 2);
        assert_eq!(v.run("fourth", || 4).await.unwrap(), 4);
        assert_eq!(metrics.validations_running.get(), 0);
        assert_eq!(metrics.validations_waiting.get(), 0);
    }
}
