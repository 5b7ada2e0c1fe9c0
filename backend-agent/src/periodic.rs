//! A background pass run on a fixed interval and once more at shutdown (the audit mirror,
//! the audit checkpoints).

use std::future::Future;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::error;

/// Work done on every tick; its errors are its own to log (the next tick retries).
pub trait Pass: Send + 'static {
    /// One pass.
    fn pass(&mut self) -> impl Future<Output = ()> + Send;
}

/// The running task. [`Periodic::finish`] stops it and runs the last pass; dropping it
/// without `finish` aborts at once, as a crash would.
pub struct Periodic<P: Pass> {
    what: &'static str,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<P>>,
}

impl<P: Pass> Periodic<P> {
    /// Runs `work.pass()` now and then every `interval` (a slow pass delays the next tick
    /// instead of bunching them).
    pub fn start(what: &'static str, mut work: P, interval: Duration) -> Self {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut every = tokio::time::interval(interval);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = every.tick() => work.pass().await,
                }
            }
            work
        });
        Periodic {
            what,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the task, then runs one last pass.
    pub async fn finish(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            match task.await {
                Ok(mut work) => work.pass().await,
                Err(e) => error!(task = self.what, error = %e, "background task failed"),
            }
        }
    }
}

impl<P: Pass> Drop for Periodic<P> {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    struct Count(Arc<AtomicU32>);

    impl Pass for Count {
        async fn pass(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn passes_on_each_tick_and_once_more_at_finish() {
        let n = Arc::new(AtomicU32::new(0));
        let task = Periodic::start("count", Count(n.clone()), Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        let ticked = n.load(Ordering::SeqCst);
        assert_eq!(ticked, 3, "at 0 s, 1 s and 2 s");
        task.finish().await;
        assert_eq!(n.load(Ordering::SeqCst), ticked + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_it_stops_without_a_last_pass() {
        let n = Arc::new(AtomicU32::new(0));
        let task = Periodic::start("count", Count(n.clone()), Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(500)).await;
        drop(task);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }
}
