//! The worker pool: threads that run the partitions of a batch in parallel.
//!
//! Each worker owns its [`InstanceSlots`]: warm plugin instances that stay
//! with the thread across batches, so a plugin call never waits for an
//! instance and never shares one. A task that panics (an engine bug, never a
//! plugin: plugin failures are values) is reported to the caller, and the
//! worker lives on.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::thread::JoinHandle;

use crossbeam_channel::{Sender, unbounded};

use crate::operator::InstanceSlots;

type Job = Box<dyn FnOnce(&mut InstanceSlots) + Send>;

/// A task for one worker.
pub type Task<T> = Box<dyn FnOnce(&mut InstanceSlots) -> T + Send>;

/// A task panicked; carries the panic message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("internal error: a worker task panicked: {0}")]
pub struct TaskPanicked(pub String);

/// The message a panic was raised with (`"unknown panic"` for a payload
/// that is not a string).
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

/// A fixed set of worker threads.
pub struct WorkerPool {
    jobs: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl WorkerPool {
    /// Starts `threads` workers (at least one).
    pub fn new(threads: usize, name: &str) -> std::io::Result<Self> {
        let (jobs, queue) = unbounded::<Job>();
        let threads = (0..threads.max(1))
            .map(|index| {
                let queue = queue.clone();
                std::thread::Builder::new()
                    .name(format!("{name}-worker-{index}"))
                    .spawn(move || {
                        let mut slots = InstanceSlots::new();
                        for job in queue {
                            job(&mut slots);
                        }
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            jobs: Some(jobs),
            threads,
        })
    }

    /// Number of worker threads.
    pub fn size(&self) -> usize {
        self.threads.len()
    }

    /// Runs `tasks` in parallel and returns their results in task order.
    pub fn run<T: Send + 'static>(&self, tasks: Vec<Task<T>>) -> Vec<Result<T, TaskPanicked>> {
        let count = tasks.len();
        let (results, collected) = crossbeam_channel::bounded(count);
        let jobs = self.jobs.as_ref().expect("the pool is running");
        for (index, task) in tasks.into_iter().enumerate() {
            let results = results.clone();
            let job: Job = Box::new(move |slots| {
                let result = catch_unwind(AssertUnwindSafe(|| task(slots)))
                    .map_err(|panic| TaskPanicked(panic_message(&*panic)));
                let _ = results.send((index, result));
            });
            jobs.send(job).expect("workers outlive the pool handle");
        }
        drop(results);
        let mut ordered: Vec<Option<Result<T, TaskPanicked>>> = (0..count).map(|_| None).collect();
        for (index, result) in collected.iter().take(count) {
            ordered[index] = Some(result);
        }
        ordered
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(TaskPanicked("a worker exited".into()))))
            .collect()
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.jobs.take();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_in_order_and_survives_panics() {
        let pool = WorkerPool::new(2, "test").unwrap();
        let tasks: Vec<Task<usize>> = (0..8)
            .map(|i| -> Task<usize> {
                Box::new(move |_| {
                    if i == 3 {
                        panic!("task three");
                    }
                    i * 10
                })
            })
            .collect();
        let results = pool.run(tasks);
        assert_eq!(results.len(), 8);
        assert_eq!(*results[2].as_ref().unwrap(), 20);
        assert!(results[3].as_ref().unwrap_err().0.contains("task three"));
        assert_eq!(*results[7].as_ref().unwrap(), 70);
    }
}
