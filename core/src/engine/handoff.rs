//! Hand-off: a task created in a process whose worker idles is claimed for that worker in the
//! creating transaction (issue 13, point 3).
//!
//! A worker loop with room and nothing to claim *offers* its claim ([`Engine::offer`]) before
//! it sleeps. A creation that makes steps ready takes the first offer whose handlers include
//! one of theirs, claims for it in the same transaction (or planned statement) that inserts
//! the task, and delivers the jobs in memory. The worker skips a wake-up and a claim of its
//! own; the task's first step starts when its creation commits.
//!
//! The contract between the two sides:
//!
//! * an offer is taken at most once; whoever takes it answers it exactly once (an empty list
//!   when the creation failed or claimed nothing: [`Handoff`] answers on drop);
//! * a worker that wakes for any other reason withdraws its offer; if it was already taken it
//!   waits for the answer (one statement away) before it claims again, so the room it offered
//!   is never claimed twice;
//! * the claim is an ordinary claim (same lease, same order, same transitions); lost in a crash
//!   it is recovered as any claim is, by lease expiry.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::Engine;
use crate::protocol::{Claim, Job};

/// A worker's standing offer to take jobs claimed for it by a creation.
pub(crate) struct Offer {
    id: u64,
    claim: Claim,
    tx: oneshot::Sender<Vec<Job>>,
}

/// A taken offer: the claim to make, and the promise to answer it.
pub(super) struct Handoff {
    pub(super) claim: Claim,
    tx: Option<oneshot::Sender<Vec<Job>>>,
}

impl Handoff {
    /// Hands the jobs claimed for the offering worker over.
    pub(super) fn deliver(mut self, engine: &Engine, jobs: Vec<Job>) {
        if !jobs.is_empty() {
            engine.inner.handoffs.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(tx) = self.tx.take() {
            // A worker gone since it offered: its jobs' leases expire and they are claimed again.
            let _ = tx.send(jobs);
        }
    }
}

impl Drop for Handoff {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Vec::new());
        }
    }
}

/// A worker's side of an offer: withdraw it, or receive what was claimed for it. Dropped, it
/// withdraws the offer if still open (jobs already claimed for it are recovered by lease
/// expiry: withdraw with [`Engine::withdraw`] to get them).
pub(crate) struct OfferTicket {
    id: u64,
    rx: oneshot::Receiver<Vec<Job>>,
    offers: Arc<Mutex<Vec<Offer>>>,
}

impl OfferTicket {
    /// Withdraws the offer. Returns what a creation claimed for it if it was taken meanwhile
    /// (waiting for that creation's answer), else nothing.
    pub(crate) async fn withdraw(mut self) -> Vec<Job> {
        if self.cancel() {
            return Vec::new();
        }
        self.delivered().await
    }

    /// Removes the offer if no creation took it; true if it was still open.
    fn cancel(&self) -> bool {
        let mut offers = self.offers.lock().unwrap();
        let i = offers.iter().position(|o| o.id == self.id);
        i.map(|i| offers.swap_remove(i)).is_some()
    }
}

impl Drop for OfferTicket {
    fn drop(&mut self) {
        self.cancel();
    }
}

impl OfferTicket {
    /// Resolves with the jobs a creation claimed for this offer (possibly none).
    pub(crate) async fn delivered(&mut self) -> Vec<Job> {
        (&mut self.rx).await.unwrap_or_default()
    }
}

impl Engine {
    /// Offers `claim` to creations in this process until withdrawn (see the module docs).
    pub(crate) fn offer(&self, claim: Claim) -> OfferTicket {
        let id = self.inner.offer_ids.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.inner
            .offers
            .lock()
            .unwrap()
            .push(Offer { id, claim, tx });
        OfferTicket {
            id,
            rx,
            offers: self.inner.offers.clone(),
        }
    }

    /// Creations that claimed steps for an idle worker of this process (for benchmarks and
    /// tests).
    pub fn handoffs(&self) -> u64 {
        self.inner.handoffs.load(Ordering::Relaxed)
    }

    /// Workers of this process idling with an open offer (for tests).
    #[doc(hidden)]
    pub fn idle_workers(&self) -> usize {
        self.inner.offers.lock().unwrap().len()
    }

    /// Takes the first offer whose claim would take a step of one of `handlers`.
    pub(super) fn take_offer(&self, handlers: &[&str]) -> Option<Handoff> {
        if handlers.is_empty() {
            return None;
        }
        let mut offers = self.inner.offers.lock().unwrap();
        let i = offers.iter().position(|o| {
            o.claim.max > 0
                && !o.tx.is_closed()
                && o.claim
                    .handlers
                    .as_ref()
                    .is_none_or(|hs| handlers.iter().any(|h| hs.iter().any(|x| x == h)))
        })?;
        let o = offers.swap_remove(i);
        Some(Handoff {
            claim: o.claim,
            tx: Some(o.tx),
        })
    }
}
