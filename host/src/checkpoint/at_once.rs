//! Blocking storage calls made several at a time: a checkpoint's
//! independent blobs on an object store, where each request spends its
//! time waiting on the network ([`CheckpointStorage::parallel_writes`](super::storage::CheckpointStorage::parallel_writes)).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// `work` applied to each of `items`, on up to `limit` scoped threads at
/// once (none with a `limit` of 1 or a single item): the results in the
/// items' order, or the first error in that order. Once an item has
/// failed, no further item is started. A panic in `work` is raised again
/// here.
pub fn try_each_at_once<T: Send, R: Send, E: Send>(
    items: Vec<T>,
    limit: usize,
    work: impl Fn(T) -> Result<R, E> + Sync,
) -> Result<Vec<R>, E> {
    let threads = limit.min(items.len());
    if threads <= 1 {
        return items.into_iter().map(work).collect();
    }
    let count = items.len();
    let queue = Mutex::new(items.into_iter().enumerate());
    let failed = AtomicBool::new(false);
    let next = || {
        if failed.load(Ordering::Relaxed) {
            return None;
        }
        queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .next()
    };
    let mut done: Vec<(usize, Result<R, E>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    while let Some((index, item)) = next() {
                        let result = work(item);
                        if result.is_err() {
                            failed.store(true, Ordering::Relaxed);
                        }
                        done.push((index, result));
                    }
                    done
                })
            })
            .collect();
        let mut done = Vec::with_capacity(count);
        for worker in workers {
            match worker.join() {
                Ok(results) => done.extend(results),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        done
    });
    done.sort_unstable_by_key(|(index, _)| *index);
    done.into_iter().map(|(_, result)| result).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    #[test]
    fn results_keep_the_items_order_and_calls_overlap_up_to_the_limit() {
        let running = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        let squares = try_each_at_once((0..12u64).collect(), 4, |n| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(50));
            running.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, ()>(n * n)
        });
        assert_eq!(squares, Ok((0..12u64).map(|n| n * n).collect::<Vec<_>>()));
        let most = most.load(Ordering::SeqCst);
        assert!((2..=4).contains(&most), "{most} at once");
    }

    #[test]
    fn after_a_failure_no_item_is_started() {
        for limit in [1, 3] {
            let started = AtomicUsize::new(0);
            let result = try_each_at_once((0..100).collect(), limit, |n| {
                started.fetch_add(1, Ordering::SeqCst);
                if n == 1 { Err(format!("item {n}")) } else { Ok(n) }
            });
            assert_eq!(result, Err("item 1".to_owned()));
            // The failing item and at most those already under way.
            assert!(started.load(Ordering::SeqCst) <= 1 + limit, "limit {limit}");
        }
    }

    #[test]
    fn a_limit_of_one_runs_on_the_calling_thread() {
        let caller = std::thread::current().id();
        let threads =
            try_each_at_once(vec![1, 2, 3], 1, |_| Ok::<_, ()>(std::thread::current().id())).unwrap();
        assert!(threads.iter().all(|id| *id == caller));
        assert_eq!(try_each_at_once(Vec::<u8>::new(), 8, Ok::<_, ()>), Ok(Vec::new()));
    }

    #[test]
    #[should_panic(expected = "item 2")]
    fn a_panic_in_the_work_is_raised_again() {
        let _ = try_each_at_once(vec![1, 2, 3], 3, |n| {
            if n == 2 {
                panic!("item 2");
            }
            Ok::<_, ()>(n)
        });
    }
}
