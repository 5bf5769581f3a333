//! Group commit: concurrent requests that each need a write transaction share one.
//!
//! redb admits one writer at a time and a durable commit costs an fsync, so sixteen clients
//! pushing small images used to queue for sixteen fsyncs in a row. Here a request puts its
//! transaction body in a queue; whoever finds no leader becomes it, takes everything queued,
//! runs the bodies one after another in one write transaction, commits once, and only then
//! answers each of them, so an answer still means the change is on disk (when it asked for
//! durability). Requests that arrive during a commit form the next batch.
//!
//! One body's failure does not fail the others: a body that returns an error (or a refusal,
//! for `write_checked`) may have changed tables half-way, so the transaction is aborted, that
//! body gets its own answer, and the rest run again in a fresh transaction. Bodies are
//! therefore `FnMut` and must do nothing outside the transaction: side effects (stamping a
//! blob as seen, unlinking files) belong to the caller, after the answer.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use redb::{Database, Durability, WriteTransaction};
use tokio::sync::oneshot;

use crate::oci::RegistryError;

/// The most bodies one transaction runs, so one commit's latency stays bounded.
const MAX_BATCH: usize = 256;

/// One request's share of a batch.
pub(super) trait Work: Send {
    /// Runs the body in `tx`. False when its changes must not be committed (it failed or
    /// was refused); its answer is then final whatever happens to the batch.
    fn run(&mut self, tx: &WriteTransaction) -> bool;
    /// Whether the request needs its commit fsynced before it is answered.
    fn durable(&self) -> bool;
    /// Sends the answer, given how the batch's commit went (ignored after a refusal).
    fn answer(self: Box<Self>, committed: Result<(), &str>);
}

/// A transaction body, its result so far and where its caller waits.
pub(super) struct Task<T, F> {
    body: F,
    out: Option<Result<T, RegistryError>>,
    durable: bool,
    /// Whether a successful body's result is still to be committed (`write_checked` refuses
    /// with `Ok(Err(_))`, which must change nothing).
    keep: fn(&T) -> bool,
    reply: oneshot::Sender<Result<T, RegistryError>>,
}

impl<T, F> Task<T, F> {
    pub(super) fn new(
        body: F,
        durable: bool,
        keep: fn(&T) -> bool,
    ) -> (Self, oneshot::Receiver<Result<T, RegistryError>>) {
        let (reply, rx) = oneshot::channel();
        let task = Task {
            body,
            out: None,
            durable,
            keep,
            reply,
        };
        (task, rx)
    }
}

impl<T, F> Work for Task<T, F>
where
    T: Send,
    F: FnMut(&WriteTransaction) -> Result<T, RegistryError> + Send,
{
    fn run(&mut self, tx: &WriteTransaction) -> bool {
        let out = catch_unwind(AssertUnwindSafe(|| (self.body)(tx)))
            .unwrap_or_else(|_| Err(RegistryError::internal("a transaction body panicked")));
        let keep = matches!(&out, Ok(v) if (self.keep)(v));
        self.out = Some(out);
        keep
    }

    fn durable(&self) -> bool {
        self.durable
    }

    fn answer(self: Box<Self>, committed: Result<(), &str>) {
        let out = match (self.out, committed) {
            (Some(Ok(v)), Err(e)) if (self.keep)(&v) => Err(RegistryError::internal(format!(
                "database commit failed: {e}"
            ))),
            (Some(out), _) => out,
            (None, Err(e)) => Err(RegistryError::internal(format!(
                "database commit failed: {e}"
            ))),
            (None, Ok(())) => Err(RegistryError::internal("transaction body never ran")),
        };
        // The caller may have gone (its connection closed); the change stands regardless.
        let _ = self.reply.send(out);
    }
}

/// The queue of bodies waiting for a transaction, and whether someone is committing them.
#[derive(Default)]
pub(super) struct Queue {
    waiting: Mutex<Waiting>,
}

#[derive(Default)]
struct Waiting {
    jobs: VecDeque<Box<dyn Work>>,
    leading: bool,
}

/// What `Queue::push` asks of its caller.
pub(super) enum Role {
    /// Someone else is leading; wait for the answer.
    Follow,
    /// Nobody was: the caller must make sure `lead` runs (the flag is already set).
    Lead,
}

impl Queue {
    pub(super) fn push(&self, job: Box<dyn Work>) -> Role {
        let mut w = self.waiting.lock().expect("commit queue lock");
        w.jobs.push_back(job);
        if w.leading {
            Role::Follow
        } else {
            w.leading = true;
            Role::Lead
        }
    }
}

/// The database and its commit queue, shared by every `Db` handle.
pub(super) struct Shared {
    pub(super) db: Database,
    pub(super) queue: Queue,
    /// Bumped after every commit, before its requests are answered (see `memo`).
    pub(super) commits: AtomicU64,
    pub(super) memo: super::memo::Memo,
}

impl Shared {
    /// Queues `job` for a caller that will await its answer: when nobody is leading, a leader
    /// task starts on the blocking pool.
    pub(super) fn submit(self: &Arc<Self>, job: Box<dyn Work>) {
        if let Role::Lead = self.queue.push(job) {
            Leader::spawn(self.clone());
        }
    }

    /// Queues `job` for a caller on a thread that may block, and waits for its answer. When
    /// nobody is leading, this thread leads until its own answer is in, then hands the lead
    /// to a task if more is queued (so a request never waits on other requests' batches for
    /// longer than its own takes).
    pub(super) fn submit_blocking<T>(
        self: &Arc<Self>,
        job: Box<dyn Work>,
        mut rx: oneshot::Receiver<Result<T, RegistryError>>,
    ) -> Result<T, RegistryError> {
        if let Role::Lead = self.queue.push(job) {
            let mut answer = None;
            Shared::lead(self.clone(), &mut || match rx.try_recv() {
                Ok(a) => {
                    answer = Some(a);
                    true
                }
                Err(oneshot::error::TryRecvError::Empty) => false,
                Err(oneshot::error::TryRecvError::Closed) => true,
            });
            if let Some(a) = answer {
                return a;
            }
        }
        rx.blocking_recv()
            .unwrap_or_else(|_| Err(RegistryError::internal("the commit leader went away")))
    }

    /// Commits batches until the queue is empty, or until `done` says this leader may stop
    /// (it then starts a leader task for what is left), and gives up the lead. The last
    /// batch's answers are sent after this leader's handle on the database is dropped, so a
    /// caller that closes the database after its answer really closes it.
    fn lead(shared: Arc<Shared>, done: &mut dyn FnMut() -> bool) {
        let mut shared = Some(shared);
        while let Some(s) = shared.as_ref() {
            let batch: Vec<Box<dyn Work>> = {
                let mut w = s.queue.waiting.lock().expect("commit queue lock");
                let n = w.jobs.len().min(MAX_BATCH);
                w.jobs.drain(..n).collect()
            };
            let answers = commit_batch(&s.db, batch);
            s.commits.fetch_add(1, Ordering::SeqCst);
            let more = {
                let mut w = s.queue.waiting.lock().expect("commit queue lock");
                if w.jobs.is_empty() {
                    w.leading = false;
                }
                w.leading
            };
            if !more {
                shared = None;
            }
            for (job, committed) in answers {
                job.answer(committed.as_ref().map(|_| ()).map_err(String::as_str));
            }
            if let Some(s) = shared.as_ref() {
                if done() {
                    Leader::spawn(s.clone());
                    return;
                }
            }
        }
    }
}

/// A leader started on the blocking pool. If the runtime drops it unrun (it is shutting
/// down and takes no more blocking tasks), it leads on the thread that drops it: otherwise
/// the queued bodies would never be answered, and a thread blocked on one of them (in
/// `submit_blocking`, say a mirror fetch recording its blob) would keep the runtime's
/// shutdown waiting for ever.
struct Leader(Option<Arc<Shared>>);

impl Leader {
    fn spawn(shared: Arc<Shared>) {
        let leader = Leader(Some(shared));
        tokio::task::spawn_blocking(move || drop(leader));
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            Shared::lead(s, &mut || false);
        }
    }
}

type Answers = Vec<(Box<dyn Work>, Result<(), String>)>;

/// Runs `batch` in one transaction and commits it; a body that fails is answered alone and
/// the others run again without it. Returns every job with the outcome of its commit.
fn commit_batch(db: &Database, mut batch: Vec<Box<dyn Work>>) -> Answers {
    let mut answers = Vec::with_capacity(batch.len());
    while !batch.is_empty() {
        let mut tx = match db.begin_write() {
            Ok(tx) => tx,
            Err(e) => return fail_all(answers, batch, e.to_string()),
        };
        let durable = batch.iter().any(|j| j.durable());
        if !durable {
            if let Err(e) = tx.set_durability(Durability::None) {
                return fail_all(answers, batch, e.to_string());
            }
        }
        match batch.iter_mut().position(|job| !job.run(&tx)) {
            None => {
                let committed = tx.commit().map(|_| ()).map_err(|e| e.to_string());
                answers.extend(batch.into_iter().map(|job| (job, committed.clone())));
                return answers;
            }
            Some(i) => {
                // Its changes are mixed into the transaction: drop them all and run the
                // others again from scratch.
                if let Err(e) = tx.abort() {
                    return fail_all(answers, batch, e.to_string());
                }
                answers.push((batch.remove(i), Ok(())));
            }
        }
    }
    answers
}

fn fail_all(mut answers: Answers, batch: Vec<Box<dyn Work>>, error: String) -> Answers {
    answers.extend(batch.into_iter().map(|job| (job, Err(error.clone()))));
    answers
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    /// SIGTERM drops the runtime while a mirror fetch may still write: the leader task
    /// the write starts is then never run, and the write must be committed anyway (before,
    /// it waited forever, and so did the runtime's drop).
    #[test]
    fn a_write_queued_while_the_runtime_shuts_down_is_still_committed() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::Db::open(&dir.path().join("dockyard.redb")).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let handle = rt.handle().clone();
        // A runtime shut down: its blocking pool runs no new task.
        rt.shutdown_background();
        let _entered = handle.enter();
        let answer = db.write(|_tx| Ok(7)).now_or_never();
        assert_eq!(answer.map(|r| r.ok()), Some(Some(7)));
    }
}
