//! Blocking storage calls made several at a time: a checkpoint's
//! independent blobs on an object store, where each request spends its
//! time waiting on the network ([`CheckpointStorage::parallel_writes`](super::storage::CheckpointStorage::parallel_writes)).

use std::sync::Mutex;

/// `work` applied to each of `items`, on up to `limit` scoped threads at
/// once (none with a `limit` of 1 or a single item), the results in the
/// items' order. A panic in `work` is raised again here.
pub fn each_at_once<T: Send, R: Send>(items: Vec<T>, limit: usize, work: impl Fn(T) -> R + Sync) -> Vec<R> {
    let threads = limit.min(items.len());
    if threads <= 1 {
        return items.into_iter().map(work).collect();
    }
    let count = items.len();
    let queue = Mutex::new(items.into_iter().enumerate());
    let next = || {
        queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .next()
    };
    let mut done: Vec<(usize, R)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    while let Some((index, item)) = next() {
                        done.push((index, work(item)));
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
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn results_keep_the_items_order_and_calls_overlap_up_to_the_limit() {
        let running = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        let squares = each_at_once((0..12u64).collect(), 4, |n| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(50));
            running.fetch_sub(1, Ordering::SeqCst);
            n * n
        });
        assert_eq!(squares, (0..12u64).map(|n| n * n).collect::<Vec<_>>());
        let most = most.load(Ordering::SeqCst);
        assert!((2..=4).contains(&most), "{most} at once");
    }

    #[test]
    fn a_limit_of_one_runs_on_the_calling_thread() {
        let caller = std::thread::current().id();
        let threads = each_at_once(vec![1, 2, 3], 1, |_| std::thread::current().id());
        assert!(threads.iter().all(|id| *id == caller));
        assert!(each_at_once(Vec::<u8>::new(), 8, |n| n).is_empty());
    }

    #[test]
    #[should_panic(expected = "item 2")]
    fn a_panic_in_the_work_is_raised_again() {
        each_at_once(vec![1, 2, 3], 3, |n| {
            if n == 2 {
                panic!("item 2");
            }
            n
        });
    }
}
