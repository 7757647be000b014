//! Slow requests leave the session's threads for a pool.
//!
//! The threads that read /dev/fuse answer quick requests themselves (lookups, attributes,
//! directory reads, creates of new files); a request that may take as long as a disk — a
//! copy-up, file I/O the daemon serves, a sync, a rename — is handed to this pool with its
//! reply, so that it never holds up the rest, and so that the readers can be few: every reader
//! more is one more thread the kernel wakes in turn for each request, and on this 2-CPU VM a
//! wake-up on the other CPU costs ten times the request (`scripts/bench-transport`).

use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
pub struct Pool {
    jobs: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    /// `n` threads; with none (or none that could start) every job runs where it is given.
    pub fn start(n: usize) -> Pool {
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let threads: Vec<_> = (0..n)
            .filter_map(|i| {
                let rx = rx.clone();
                std::thread::Builder::new().name(format!("shalefs-slow-{i}")).spawn(move || Self::work(&rx)).ok()
            })
            .collect();
        Pool { jobs: (!threads.is_empty()).then_some(tx), threads }
    }

    fn work(rx: &Mutex<std::sync::mpsc::Receiver<Job>>) {
        loop {
            let job = match rx.lock() {
                Ok(rx) => rx.recv(),
                Err(_) => return,
            };
            match job {
                Ok(job) => job(),
                Err(_) => return,
            }
        }
    }

    /// Run `job` on a pool thread (here, when the pool has none or has stopped).
    pub fn run(&self, job: impl FnOnce() + Send + 'static) {
        match &self.jobs {
            Some(tx) => {
                if let Err(back) = tx.send(Box::new(job)) {
                    (back.0)();
                }
            }
            None => job(),
        }
    }

    /// Let every queued job finish, then the threads go.
    pub fn stop(&mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn jobs_run_on_the_pool_and_all_finish_before_stop_returns() {
        let mut pool = Pool::start(2);
        let done = Arc::new(AtomicUsize::new(0));
        let here = std::thread::current().id();
        let elsewhere = Arc::new(AtomicUsize::new(0));
        for _ in 0..50 {
            let (done, elsewhere) = (done.clone(), elsewhere.clone());
            pool.run(move || {
                if std::thread::current().id() != here {
                    elsewhere.fetch_add(1, Ordering::Relaxed);
                }
                done.fetch_add(1, Ordering::Relaxed);
            });
        }
        pool.stop();
        assert_eq!(done.load(Ordering::Relaxed), 50);
        assert_eq!(elsewhere.load(Ordering::Relaxed), 50);
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        pool.run(move || {
            r.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(ran.load(Ordering::Relaxed), 1, "a stopped pool runs the job in place");
    }

    #[test]
    fn a_pool_without_threads_runs_jobs_in_place() {
        let pool = Pool::start(0);
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        pool.run(move || {
            r.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(ran.load(Ordering::Relaxed), 1);
    }
}
