//! Single flight: concurrent requests for the same missing entries compute
//! them once per instance; the others wait for that one result.
//!
//! The computation is shared, not owned by the request that started it:
//! it goes on while any waiter remains, so a leader that disconnects does
//! not fail its followers; once nobody waits, it is dropped with them.
//! The entry leaves the map when the first waiter gets the result, so a
//! later request with the same key (which can only mean the same cache
//! stamps, see `crate::cache`) starts afresh rather than reading an old
//! answer. Across instances each computes at most once per key: with N
//! instances, at most N times.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt as _;
use futures_util::future::{BoxFuture, Shared};
use prometheus_client::metrics::counter::Counter;

/// Counters of shared computations, exported on `/metrics`.
#[derive(Clone, Default)]
pub struct FlightCounters {
    /// Computations started.
    pub led: Counter,
    /// Requests that waited for another's computation instead.
    pub followed: Counter,
}

pub struct Flights<T: Clone> {
    running: Arc<Mutex<HashMap<String, Shared<BoxFuture<'static, T>>>>>,
    counters: FlightCounters,
}

impl<T: Clone> Clone for Flights<T> {
    fn clone(&self) -> Self {
        Flights {
            running: self.running.clone(),
            counters: self.counters.clone(),
        }
    }
}

impl<T: Clone + Send + Sync + 'static> Flights<T> {
    pub fn new(counters: FlightCounters) -> Self {
        Flights {
            running: Arc::default(),
            counters,
        }
    }

    /// `work`'s result, or that of the computation for `key` already under
    /// way (then `work` is dropped unstarted).
    pub async fn run(&self, key: String, work: impl Future<Output = T> + Send + 'static) -> T {
        let flight = {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            match running.get(&key) {
                Some(flight) => {
                    self.counters.followed.inc();
                    flight.clone()
                }
                None => {
                    self.counters.led.inc();
                    let flight = work.boxed().shared();
                    running.insert(key.clone(), flight.clone());
                    flight
                }
            }
        };
        let out = flight.clone().await;
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if running.get(&key).is_some_and(|f| f.ptr_eq(&flight)) {
            running.remove(&key);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_callers_share_one_computation() {
        let flights = Flights::<usize>::new(FlightCounters::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let calls = (0..10).map(|_| {
            let runs = runs.clone();
            flights.run("k".into(), async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                runs.fetch_add(1, Ordering::SeqCst) + 1
            })
        });
        let results = futures_util::future::join_all(calls).await;
        assert_eq!(results, vec![1; 10]);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(flights.counters.led.get(), 1);
        assert_eq!(flights.counters.followed.get(), 9);
        // Finished: the next call computes again.
        assert_eq!(flights.run("k".into(), async { 7 }).await, 7);
    }

    #[tokio::test]
    async fn a_follower_finishes_what_a_cancelled_leader_started() {
        let flights = Flights::<&'static str>::new(FlightCounters::default());
        let leader = tokio::spawn({
            let flights = flights.clone();
            async move {
                flights
                    .run("k".into(), async {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        "done"
                    })
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let follower = flights.run("k".into(), async { "not run" });
        leader.abort();
        assert_eq!(follower.await, "done");
    }
}
