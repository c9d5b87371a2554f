//! The engine's one worker pool: threads that run the partition tasks of
//! every pipeline, fairly.
//!
//! Each pipeline gets a [`PoolClient`] with a weight. Tasks wait in one queue
//! per client; a free worker takes them from the clients in round robin, up
//! to `weight` tasks from a client before it moves on (weighted fair
//! queuing), so a pipeline that submits many tasks cannot starve one that
//! submits few.
//!
//! A task that is inside a long plugin call does not hold its worker either:
//! at every epoch tick the call lends the thread ([`crate::runtime::slicing`])
//! and the pool runs waiting tasks of *other* pipelines on it, nested, with
//! their own instance slots (nesting goes at most [`MAX_NESTING`] deep), for
//! up to [`LEND_BUDGET`] before the call goes on — only tasks that take, on
//! average, no longer than the call has run so far, so that a short call is
//! never stuck under a long task. Tasks queued while no worker is idle
//! *nudge* the calls in progress (an epoch increment), so they are lent a
//! thread within microseconds rather than at the next tick.
//!
//! Each worker owns its [`InstanceSlots`]: warm plugin instances that stay
//! with the thread across batches. A task that panics (an engine bug, never a
//! plugin: plugin failures are values) is reported to its caller, and the
//! worker lives on.

use std::collections::{HashMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::operator::InstanceSlots;

type Job = Box<dyn FnOnce(&mut InstanceSlots) + Send>;

/// A task for one worker.
pub type Task<T> = Box<dyn FnOnce(&mut InstanceSlots) -> T + Send>;

/// How deep tasks may nest inside other pipelines' long calls on one thread.
pub const MAX_NESTING: usize = 2;

/// Longest a long call lends its thread in one go: then it runs for at
/// least one more tick, so a call keeps a share of its worker however busy
/// the other pipelines are.
pub const LEND_BUDGET: Duration = Duration::from_millis(10);

/// Interrupts running plugin calls at their next loop back-edge or function
/// entry (an epoch increment), so that they lend their thread at once.
pub type Nudge = Box<dyn Fn() + Send + Sync>;

/// Stack of each worker thread: room for a plugin call's 1 MiB of Wasm stack
/// at every nesting level, plus the host frames between them.
pub(crate) const WORKER_STACK: usize = 8 << 20;

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

/// Identifies a client of the pool.
type ClientId = u64;

/// A waiting task and the timings of its kind.
struct Queued {
    job: Job,
    times: Arc<TaskTimes>,
}

/// One client's waiting tasks.
struct ClientQueue {
    jobs: VecDeque<Queued>,
    weight: u32,
    /// Tasks taken in the client's current turn.
    taken: u32,
}

/// How long one kind of a client's tasks take (one operator of one stage,
/// say: a pipeline's shuffle tasks and its plugin tasks differ by orders of
/// magnitude): a moving average of those that finished, and the start of
/// those in progress.
#[derive(Debug)]
struct TaskTimes {
    /// Microseconds; `u64::MAX` until a task has finished.
    mean_micros: AtomicU64,
    /// Tasks in progress, by token, with their start.
    running: Mutex<Vec<(u64, Instant)>>,
    next_token: AtomicU64,
}

impl Default for TaskTimes {
    fn default() -> Self {
        Self {
            mean_micros: AtomicU64::new(u64::MAX),
            running: Mutex::new(Vec::new()),
            next_token: AtomicU64::new(0),
        }
    }
}

impl TaskTimes {
    /// A task starts; returns its token for [`TaskTimes::finished`].
    fn started(&self) -> u64 {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((token, Instant::now()));
        token
    }

    /// The task `token` finished after `took`.
    fn finished(&self, token: u64, took: Duration) {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(running, _)| *running != token);
        let took = took.as_micros().min(u128::from(u64::MAX - 1)) as u64;
        let _ = self
            .mean_micros
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |mean| {
                Some(if mean == u64::MAX {
                    took
                } else {
                    mean - mean / 4 + took / 4
                })
            });
    }

    /// The average of the finished tasks, if one has finished.
    fn mean(&self) -> Option<Duration> {
        let mean = self.mean_micros.load(Ordering::Relaxed);
        (mean != u64::MAX).then(|| Duration::from_micros(mean))
    }

    /// How long a task of this client may hold whoever runs it: the average
    /// ([`LEND_BUDGET`] while none has finished), or longer when one in
    /// progress has run longer already (a pipeline whose tasks turned slow).
    fn expected(&self) -> Duration {
        let longest_running = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(_, started)| started.elapsed())
            .max()
            .unwrap_or_default();
        self.mean().unwrap_or(LEND_BUDGET).max(longest_running)
    }
}

/// The queues, under the pool's lock.
#[derive(Default)]
struct Queues {
    clients: HashMap<ClientId, ClientQueue>,
    /// Clients with waiting tasks, in turn order.
    ready: VecDeque<ClientId>,
    shutdown: bool,
}

impl Queues {
    /// The next task in fair order, skipping clients in `busy` (the ones
    /// whose tasks are already running on the asking thread's stack) and,
    /// when `shorter_than` is given, clients whose tasks take longer on
    /// average.
    fn next(&mut self, busy: &[ClientId], shorter_than: Option<Duration>) -> Option<(ClientId, Queued)> {
        let clients = &self.clients;
        let position = self.ready.iter().position(|id| {
            !busy.contains(id)
                && shorter_than.is_none_or(|limit| {
                    clients.get(id).is_some_and(|queue| {
                        queue
                            .jobs
                            .front()
                            .is_some_and(|next| next.times.expected() <= limit)
                    })
                })
        })?;
        let id = self.ready[position];
        let queue = self.clients.get_mut(&id)?;
        let job = queue.jobs.pop_front()?;
        queue.taken += 1;
        self.ready.remove(position);
        if !queue.jobs.is_empty() {
            if queue.taken < queue.weight {
                self.ready.push_front(id);
            } else {
                queue.taken = 0;
                self.ready.push_back(id);
            }
        } else {
            queue.taken = 0;
        }
        Some((id, job))
    }

    /// The next task of client `id`, out of turn (its own caller runs it).
    fn take_own(&mut self, id: ClientId) -> Option<Queued> {
        let queue = self.clients.get_mut(&id)?;
        let job = queue.jobs.pop_front()?;
        if queue.jobs.is_empty() {
            queue.taken = 0;
            self.ready.retain(|ready| *ready != id);
        }
        Some(job)
    }
}

thread_local! {
    /// Instances of the tasks a driver thread runs itself
    /// ([`PoolClient::run`]): they stay with that thread, and go with it.
    static CALLER_SLOTS: std::cell::RefCell<InstanceSlots> = std::cell::RefCell::new(InstanceSlots::new());
}

/// Tasks of a pipeline whose tasks take longer than this on average are
/// never run by its own driver: they wait for the pool's fair turn.
pub const CALLER_RUNS_UP_TO: Duration = Duration::from_millis(2);

struct Shared {
    queues: Mutex<Queues>,
    work: Condvar,
    /// Tasks waiting in all queues: read without the lock at every tick.
    waiting: AtomicUsize,
    next_client: AtomicU64,
    /// Tasks run nested inside another pipeline's long call.
    nested_runs: AtomicU64,
    /// Bumped to make every worker drop the instances of retired plugin uses.
    sweeps: AtomicU64,
    /// Workers waiting for a task.
    idle: AtomicUsize,
    /// Callers running their own tasks (see [`PoolClient::run`]).
    callers_running: AtomicUsize,
    /// Makes busy workers' plugin calls lend their thread now.
    nudge: Option<Nudge>,
}

impl Shared {
    /// Has every worker sweep its instances at its next look at the queues.
    fn sweep(&self) {
        // Under the lock, so that a worker between its look at the counter
        // and its wait cannot miss the wake-up.
        let _queues = self.lock();
        self.sweeps.fetch_add(1, Ordering::Relaxed);
        self.work.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a worker thread knows about itself, for lending it out.
struct WorkerState {
    shared: Arc<Shared>,
    /// Clients whose tasks run on this thread's stack, outermost first.
    running: Vec<ClientId>,
    /// The timings of those tasks' kinds.
    running_times: Vec<Arc<TaskTimes>>,
    /// Instance slots of each nesting level below the outermost.
    nested_slots: Vec<InstanceSlots>,
}

thread_local! {
    static WORKER: std::cell::RefCell<Option<WorkerState>> = const { std::cell::RefCell::new(None) };
}

/// Runs the waiting tasks of pipelines not already on this thread's stack
/// whose tasks take no longer, on average, than the lending call has run
/// (`own_time`), until none is left or [`LEND_BUDGET`] is spent; returns how
/// long that took. Called at the epoch ticks of plugin calls.
///
/// The length limit is what keeps lending fair: a short call never takes on
/// a task that would hold it far longer than itself (another pipeline's
/// looping plugin, say), while a call that has run long takes on anything
/// shorter, in the pipelines' turn order. Lengths are timed per kind of
/// task ([`PoolClient::run`]).
fn lend_thread(own_time: Duration) -> Duration {
    let started = Instant::now();
    let mut lent = false;
    while started.elapsed() < LEND_BUDGET {
        if !lend_one(own_time) {
            break;
        }
        lent = true;
    }
    let caller_running = WORKER.with(|worker| {
        worker
            .borrow()
            .as_ref()
            .is_some_and(|worker| worker.shared.callers_running.load(Ordering::Relaxed) > 0)
    });
    if lent || caller_running {
        // The tasks' results woke their pipelines' drivers, or a driver is
        // running its own short tasks: on busy cores the scheduler lets
        // this (long-running) thread finish its slice first, milliseconds,
        // unless it steps aside.
        std::thread::yield_now();
    }
    started.elapsed()
}

/// Runs one waiting task of a pipeline not already on this thread's stack
/// whose tasks take at most as long on average as the lending call has run
/// (`own_time`) or is expected to run (its pipeline's average task); false
/// when there is none (or nesting is as deep as it may go).
fn lend_one(own_time: Duration) -> bool {
    let taken = WORKER.with(|worker| {
        let mut worker = worker.borrow_mut();
        let worker = worker.as_mut()?;
        let depth = worker.running.len();
        if depth == 0 || depth > MAX_NESTING || worker.shared.waiting.load(Ordering::Relaxed) == 0 {
            return None;
        }
        // A call of a kind of task that takes long lends at once, before its
        // own time has grown: it is expected to run that long.
        let expected = worker
            .running_times
            .last()
            .and_then(|times| times.mean())
            .unwrap_or_default();
        let (client, Queued { job, times }) = worker
            .shared
            .lock()
            .next(&worker.running, Some(own_time.max(expected)))?;
        worker.shared.waiting.fetch_sub(1, Ordering::Relaxed);
        worker.shared.nested_runs.fetch_add(1, Ordering::Relaxed);
        worker.running.push(client);
        worker.running_times.push(times);
        let slots = std::mem::take(&mut worker.nested_slots[depth - 1]);
        Some((job, slots))
    });
    let Some((job, mut slots)) = taken else {
        return false;
    };
    slots.route = Default::default();
    job(&mut slots);
    WORKER.with(|worker| {
        if let Some(worker) = worker.borrow_mut().as_mut() {
            worker.running.pop();
            worker.running_times.pop();
            let depth = worker.running.len();
            worker.nested_slots[depth - 1] = slots;
        }
    });
    true
}

/// The worker threads shared by every pipeline of an engine.
pub struct WorkerPool {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool")
            .field("threads", &self.threads.len())
            .finish_non_exhaustive()
    }
}

impl WorkerPool {
    /// Starts `threads` workers (at least one), named `weir-worker-N`.
    /// When tasks are queued while no worker is idle, `nudge` interrupts the
    /// plugin calls in progress so that they lend their threads to them
    /// without waiting for the next epoch tick.
    pub fn new(threads: usize, nudge: Option<Nudge>) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            queues: Mutex::new(Queues::default()),
            work: Condvar::new(),
            waiting: AtomicUsize::new(0),
            next_client: AtomicU64::new(1),
            nested_runs: AtomicU64::new(0),
            sweeps: AtomicU64::new(0),
            idle: AtomicUsize::new(0),
            callers_running: AtomicUsize::new(0),
            nudge,
        });
        let threads = (0..threads.max(1))
            .map(|index| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("weir-worker-{index}"))
                    .stack_size(WORKER_STACK)
                    .spawn(move || work(shared))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { shared, threads })
    }

    /// A new client whose tasks get up to `weight` turns in a row.
    pub fn client(&self, weight: u32) -> PoolClient {
        let id = self.shared.next_client.fetch_add(1, Ordering::Relaxed);
        self.shared.lock().clients.insert(
            id,
            ClientQueue {
                jobs: VecDeque::new(),
                weight: weight.max(1),
                taken: 0,
            },
        );
        PoolClient {
            id,
            shared: self.shared.clone(),
            kinds: Mutex::default(),
        }
    }

    /// Worker threads.
    pub fn threads(&self) -> usize {
        self.threads.len()
    }

    /// Makes every worker drop the instances of retired plugin uses (a
    /// pipeline ended) now, idle ones included.
    pub fn sweep(&self) {
        self.shared.sweep();
    }

    /// Tasks that ran nested inside another pipeline's long plugin call.
    pub fn nested_runs(&self) -> u64 {
        self.shared.nested_runs.load(Ordering::Relaxed)
    }
}

fn work(shared: Arc<Shared>) {
    WORKER.with(|worker| {
        *worker.borrow_mut() = Some(WorkerState {
            shared: shared.clone(),
            running: Vec::new(),
            running_times: Vec::new(),
            nested_slots: (0..MAX_NESTING).map(|_| InstanceSlots::new()).collect(),
        });
    });
    crate::runtime::slicing::install(Box::new(lend_thread));
    let mut slots = InstanceSlots::new();
    let mut swept = 0;
    loop {
        let (client, Queued { job, times }) = {
            let mut queues = shared.lock();
            loop {
                let sweeps = shared.sweeps.load(Ordering::Relaxed);
                if sweeps != swept {
                    swept = sweeps;
                    drop(queues);
                    sweep(&mut slots);
                    queues = shared.lock();
                    continue;
                }
                if let Some(next) = queues.next(&[], None) {
                    break next;
                }
                if queues.shutdown {
                    return;
                }
                shared.idle.fetch_add(1, Ordering::Relaxed);
                queues = shared.work.wait(queues).unwrap_or_else(|e| e.into_inner());
                shared.idle.fetch_sub(1, Ordering::Relaxed);
            }
        };
        shared.waiting.fetch_sub(1, Ordering::Relaxed);
        set_running(Some((client, times)));
        // A job that panicked inside a fallback or shadow call left its
        // route set: every job starts on the current bindings.
        slots.route = Default::default();
        job(&mut slots);
        set_running(None);
    }
}

/// Drops this worker's instances of retired plugin uses, at every level.
fn sweep(slots: &mut InstanceSlots) {
    slots.sweep();
    WORKER.with(|worker| {
        if let Some(worker) = worker.borrow_mut().as_mut() {
            worker.nested_slots.iter_mut().for_each(InstanceSlots::sweep);
        }
    });
}

fn set_running(task: Option<(ClientId, Arc<TaskTimes>)>) {
    WORKER.with(|worker| {
        if let Some(worker) = worker.borrow_mut().as_mut() {
            worker.running.clear();
            worker.running_times.clear();
            if let Some((client, times)) = task {
                worker.running.push(client);
                worker.running_times.push(times);
            }
        }
    });
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.work.notify_all();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// One pipeline's access to the pool. Dropping it forgets its queue.
pub struct PoolClient {
    id: ClientId,
    shared: Arc<Shared>,
    /// The timings of each kind of task it has run.
    kinds: Mutex<HashMap<u64, Arc<TaskTimes>>>,
}

impl PoolClient {
    /// A handle that changes this client's weight while it runs.
    pub fn weight_control(&self) -> ClientWeight {
        ClientWeight {
            id: self.id,
            shared: Arc::downgrade(&self.shared),
        }
    }
}

/// Changes a [`PoolClient`]'s weight (a server shares a tenant's CPU share
/// among its pipelines); does nothing once the pool is gone.
#[derive(Debug, Clone)]
pub struct ClientWeight {
    id: ClientId,
    shared: std::sync::Weak<Shared>,
}

impl ClientWeight {
    /// Sets the client's turns in a row (at least 1).
    pub fn set(&self, weight: u32) {
        if let Some(shared) = self.shared.upgrade()
            && let Some(queue) = shared.lock().clients.get_mut(&self.id)
        {
            queue.weight = weight.max(1);
        }
    }

    /// The client's weight now (`None` once it is gone).
    pub fn get(&self) -> Option<u32> {
        let shared = self.shared.upgrade()?;
        let queues = shared.lock();
        queues.clients.get(&self.id).map(|queue| queue.weight)
    }
}

impl std::fmt::Debug for PoolClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolClient").field("id", &self.id).finish()
    }
}

impl PoolClient {
    /// Asks every worker to drop its instances of retired or replaced
    /// plugin bindings (after a hot-load), as [`WorkerPool::sweep`].
    pub fn sweep(&self) {
        self.shared.sweep();
    }

    /// Runs `tasks` in parallel and returns their results in task order.
    ///
    /// `kind` names what the tasks do (one operator of one stage, a
    /// shuffle, ...): tasks of a kind are timed together, which decides
    /// whether they may run inside another pipeline's long call and whether
    /// the caller runs them itself when every worker is busy.
    pub fn run<T: Send + 'static>(&self, kind: u64, tasks: Vec<Task<T>>) -> Vec<Result<T, TaskPanicked>> {
        let count = tasks.len();
        let (results, collected) = crossbeam_channel::bounded(count);
        let times = self
            .kinds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(kind)
            .or_default()
            .clone();
        let short_tasks = times.mean().is_some_and(|mean| mean <= CALLER_RUNS_UP_TO);
        {
            let mut queues = self.shared.lock();
            let queue = queues
                .clients
                .get_mut(&self.id)
                .expect("a client's queue lives as long as it");
            let was_idle = queue.jobs.is_empty();
            for (index, task) in tasks.into_iter().enumerate() {
                let (results, task_times) = (results.clone(), times.clone());
                let job: Job = Box::new(move |slots| {
                    let times = task_times;
                    let token = times.started();
                    let started = Instant::now();
                    let result = catch_unwind(AssertUnwindSafe(|| task(slots)))
                        .map_err(|panic| TaskPanicked(panic_message(&*panic)));
                    // Lent time inside the task counts too: it is how long
                    // the task holds whoever runs it.
                    times.finished(token, started.elapsed());
                    let _ = results.send((index, result));
                });
                queue.jobs.push_back(Queued {
                    job,
                    times: times.clone(),
                });
            }
            if was_idle && count > 0 {
                queues.ready.push_back(self.id);
            }
            self.shared.waiting.fetch_add(count, Ordering::Relaxed);
        }
        self.shared.work.notify_all();
        if count > 0 && self.shared.idle.load(Ordering::Relaxed) < count {
            if let Some(nudge) = &self.shared.nudge {
                nudge();
            }
            // Not enough idle workers: the caller (awake already) runs its own
            // short tasks too rather than sleep until the workers are done —
            // waking it again can take milliseconds on busy cores. Long ones
            // wait for their fair turn, so no pipeline gets more than its
            // share of the cores this way.
            if short_tasks {
                self.shared.callers_running.fetch_add(1, Ordering::Relaxed);
                while let Some(Queued { job, .. }) = self.shared.lock().take_own(self.id) {
                    self.shared.waiting.fetch_sub(1, Ordering::Relaxed);
                    CALLER_SLOTS.with(|slots| {
                        let mut slots = slots.borrow_mut();
                        slots.route = Default::default();
                        job(&mut slots)
                    });
                }
                self.shared.callers_running.fetch_sub(1, Ordering::Relaxed);
            }
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

impl Drop for PoolClient {
    fn drop(&mut self) {
        let queued = {
            let mut queues = self.shared.lock();
            queues.ready.retain(|id| *id != self.id);
            queues.clients.remove(&self.id)
        };
        if let Some(queue) = queued {
            self.shared.waiting.fetch_sub(queue.jobs.len(), Ordering::Relaxed);
            // Dropped here, outside the pool's lock.
            drop(queue);
        }
    }
}

/// Drops the calling thread's instances of retired or replaced plugin
/// bindings (those it made running its own tasks, [`PoolClient::run`]).
pub fn sweep_caller_instances() {
    CALLER_SLOTS.with(|slots| slots.borrow_mut().sweep());
}

/// Drops the plugin instances this thread made running its own tasks
/// ([`PoolClient::run`]): a pipeline's driver calls it when its run ends.
pub fn release_caller_instances() {
    CALLER_SLOTS.with(|slots| *slots.borrow_mut() = InstanceSlots::new());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_in_order_and_survives_panics() {
        let pool = WorkerPool::new(2, None).unwrap();
        let client = pool.client(1);
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
        let results = client.run(1, tasks);
        assert_eq!(results.len(), 8);
        assert_eq!(*results[2].as_ref().unwrap(), 20);
        assert!(results[3].as_ref().unwrap_err().0.contains("task three"));
        assert_eq!(*results[7].as_ref().unwrap(), 70);
    }

    /// `job`, of a kind whose tasks took `micros` on average.
    fn queued(job: Job, micros: u64) -> Queued {
        Queued {
            job,
            times: Arc::new(TaskTimes {
                mean_micros: AtomicU64::new(micros),
                ..TaskTimes::default()
            }),
        }
    }

    fn job(log: &Arc<Mutex<Vec<u64>>>, client: u64) -> Job {
        let log = log.clone();
        Box::new(move |_| log.lock().unwrap().push(client))
    }

    #[test]
    fn clients_take_turns_by_weight() {
        let mut queues = Queues::default();
        let log = Arc::new(Mutex::new(Vec::new()));
        for (id, weight, jobs) in [(1, 1, 4), (2, 1, 2), (3, 2, 4)] {
            queues.clients.insert(
                id,
                ClientQueue {
                    jobs: (0..jobs).map(|_| queued(job(&log, id), 0)).collect(),
                    weight,
                    taken: 0,
                },
            );
            queues.ready.push_back(id);
        }
        let mut order = Vec::new();
        while let Some((id, _)) = queues.next(&[], None) {
            order.push(id);
        }
        assert_eq!(order, vec![1, 2, 3, 3, 1, 2, 3, 3, 1, 1]);
    }

    #[test]
    fn a_nested_pick_skips_clients_already_running_and_longer_tasks() {
        let mut queues = Queues::default();
        let log = Arc::new(Mutex::new(Vec::new()));
        for id in [1, 2] {
            queues.clients.insert(
                id,
                ClientQueue {
                    jobs: VecDeque::from([queued(job(&log, id), id * 1000)]),
                    weight: 1,
                    taken: 0,
                },
            );
            queues.ready.push_back(id);
        }
        // Client 2's tasks take 2 ms on average: not lent to a 1 ms call.
        assert!(queues.next(&[1], Some(Duration::from_millis(1))).is_none());
        assert_eq!(
            queues
                .next(&[1], Some(Duration::from_millis(2)))
                .map(|(id, _)| id),
            Some(2)
        );
        assert!(queues.next(&[1], None).is_none());
        assert_eq!(queues.next(&[], None).map(|(id, _)| id), Some(1));
    }

    #[test]
    fn one_heavy_client_does_not_starve_another() {
        let pool = WorkerPool::new(1, None).unwrap();
        let heavy = pool.client(1);
        let light = pool.client(1);
        let log = Arc::new(Mutex::new(Vec::new()));
        let (started_tx, started) = crossbeam_channel::bounded(1);
        let heavy_thread = {
            let log = log.clone();
            std::thread::spawn(move || {
                let tasks: Vec<Task<()>> = (0..50)
                    .map(|i| -> Task<()> {
                        let (log, started_tx) = (log.clone(), started_tx.clone());
                        Box::new(move |_| {
                            log.lock().unwrap().push('h');
                            if i == 0 {
                                let _ = started_tx.send(());
                            }
                            std::thread::sleep(Duration::from_millis(1));
                        })
                    })
                    .collect();
                heavy.run(1, tasks);
            })
        };
        started.recv().unwrap();
        let light_log = log.clone();
        let light_task: Task<()> = Box::new(move |_: &mut InstanceSlots| light_log.lock().unwrap().push('l'));
        light.run(1, vec![light_task]);
        heavy_thread.join().unwrap();
        let log = log.lock().unwrap();
        let position = log.iter().position(|c| *c == 'l').unwrap();
        // Behind the heavy tasks in progress (on the worker, and on the
        // heavy client's own thread, which runs its short tasks too while
        // the worker is busy) and a few more, not behind all 50.
        assert!(
            position <= 10,
            "the light task ran at position {position} of {}",
            log.len()
        );
    }
}
