//! One guest call, guarded from inside and outside. Inside, the guest may run `timeout_ms` of
//! epoch ticks (counted only while it runs) and may not wait. Outside, waiting for (or making)
//! an instance and running the guest are each bounded by wall-clock time; a call past it is
//! abandoned and its instance thrown away. Failures are told apart: the guest's (a trap, a
//! limit, a forbidden wait) move the breaker; the host's (no instance in time, the engine's
//! pool exhausted, an executor too busy to run the guest) are counted apart and do not.

use crate::bindings::wit;
use crate::breaker::Admission;
use crate::compat;
use crate::host::{ClientRef, State};
use crate::runtime::{Guest, InstanceError, Warm, WasmPlugin};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{error, warn};
use wasmtime::Store;

/// An event for the guest.
pub(crate) enum Observed {
    Client(wit::ClientEvent),
    Message(wit::MessageEvent),
}

/// One guest call, with its arguments (the topic of an authorize borrowed: it runs per publish).
pub(crate) enum Call<'a> {
    Event(ClientRef, Observed),
    Authenticate(wit::ConnectRequest),
    Authorize(&'a ClientRef, wit::Access, &'a str, wit::Qos),
    Publish(ClientRef, wit::Message),
}

pub(crate) enum Reply {
    Done,
    Auth(wit::AuthResult),
    Acl(wit::AclResult),
    Message(wit::MessageResult),
}

enum Failure {
    Guest(String),
    Host(String),
}

impl From<InstanceError> for Failure {
    fn from(e: InstanceError) -> Self {
        match e {
            // The pool exhausted, or the component's start failing: nothing `init` said.
            InstanceError::Instantiate(_) => Failure::Host(e.to_string()),
            InstanceError::InitTrapped(_) | InstanceError::InitRefused(_) => {
                Failure::Guest(format!("init: {e}"))
            }
        }
    }
}

impl WasmPlugin {
    /// How long a call may wait for an instance, and then run: each four times the guest's own
    /// budget and half a second, so a busy machine does not fail healthy calls.
    fn wall_deadline(&self) -> Duration {
        let own = Duration::from_millis(self.settings.timeout_ms.saturating_mul(4) + 500);
        // A plugin that may fetch over HTTP waits for it outside its tick budget.
        own + self.http.as_ref().map_or(Duration::ZERO, |h| h.timeout())
    }

    /// Runs one guest call; `None` when it did not answer (the caller applies `on_error`).
    pub(crate) async fn run(&self, call: Call<'_>) -> Option<Reply> {
        let admission = self.breaker.admit();
        if admission == Admission::Reject {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let probe = admission == Admission::Probe;
        self.pool.count_call();
        match self.run_admitted(&call).await {
            Ok(reply) => {
                self.breaker.success(probe);
                Some(reply)
            }
            Err(Failure::Guest(why)) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                warn!(plugin = &*self.name, error = why, "plugin call failed");
                if self.breaker.failure(probe) {
                    error!(plugin = &*self.name, backoff_ms = self.breaker.backoff().as_millis() as u64, on_error = ?self.settings.on_error,
                        "plugin breaker open after repeated failures; its hooks follow on_error until a probe succeeds");
                }
                None
            }
            Err(Failure::Host(why)) => {
                self.host_failures.fetch_add(1, Ordering::Relaxed);
                warn!(
                    plugin = &*self.name,
                    error = why,
                    "plugin call not run (host side; not counted against the plugin)"
                );
                if probe {
                    self.breaker.probe_abandoned();
                }
                None
            }
        }
    }

    async fn run_admitted(&self, call: &Call<'_>) -> Result<Reply, Failure> {
        let mut warm = self.acquire().await?;
        // The run has a deadline of its own: a call that waited long for an instance is not
        // cut short for it (that would be charged to the guest).
        let outcome = {
            let Warm { store, guest, .. } = &mut warm;
            store.data_mut().ticks = 0;
            store.set_epoch_deadline(1);
            within(self.wall_deadline(), invoke(guest, store, call)).await
        };
        match outcome {
            Ok(Ok(reply)) => {
                self.give_back(warm);
                Ok(reply)
            }
            // A trapped or interrupted instance cannot be entered again: `warm` is dropped.
            Ok(Err(e)) => Err(Failure::Guest(self.describe(&e))),
            Err(_) => {
                // Abandoned mid-call. A guest that had run most of its budget is at fault; one
                // that barely ran was starved by a busy executor.
                let ran = warm.store.data().ticks;
                let budget = self.tick_budget(self.settings.timeout_ms);
                let why = format!(
                    "abandoned after {} ms of wall-clock time ({ran} of {budget} ticks run)",
                    self.wall_deadline().as_millis()
                );
                if ran.saturating_mul(2) >= budget {
                    Err(Failure::Guest(why))
                } else {
                    Err(Failure::Host(why))
                }
            }
        }
    }

    fn describe(&self, e: &wasmtime::Error) -> String {
        match e.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => {
                format!("ran past its {} ms budget", self.settings.timeout_ms)
            }
            _ => format!("{e:#}"),
        }
    }

    /// A warm instance, a new one within the instance cap, or — when the cap is reached —
    /// the first one given back within the wall-clock deadline (read from the clock only when
    /// there is no warm instance).
    async fn acquire(&self) -> Result<Warm, Failure> {
        if let Some(w) = self.pool.take() {
            return Ok(w);
        }
        let until = Instant::now() + self.wall_deadline();
        loop {
            if let Some(w) = self.pool.take() {
                return Ok(w);
            }
            if let Ok(permit) = self.permits.clone().try_acquire_owned() {
                return self.fresh(permit, until).await;
            }
            // Announce the wait before looking again, so a `give_back` in between notifies.
            self.waiting.fetch_add(1, Ordering::SeqCst);
            if let Some(w) = self.pool.take() {
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                return Ok(w);
            }
            let woke = tokio::time::timeout_at(until, async {
                tokio::select! {
                    p = self.permits.clone().acquire_owned() => p.ok(),
                    _ = self.returned.notified() => None,
                }
            })
            .await;
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            match woke {
                Err(_) => {
                    return Err(Failure::Host(format!(
                        "no instance free within {} ms ({} in use)",
                        self.wall_deadline().as_millis(),
                        self.settings.max_instances
                    )))
                }
                Ok(Some(permit)) => return self.fresh(permit, until).await,
                Ok(None) => continue,
            }
        }
    }

    async fn fresh(
        &self,
        permit: tokio::sync::OwnedSemaphorePermit,
        until: Instant,
    ) -> Result<Warm, Failure> {
        // `init` has ten times a call's budget: give it the wall-clock time to match.
        let init_wall = Duration::from_millis(self.settings.timeout_ms.saturating_mul(40) + 500);
        let until = until.max(Instant::now() + init_wall);
        match tokio::time::timeout_at(until, self.instantiate(permit)).await {
            Ok(Ok((warm, _))) => Ok(warm),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(Failure::Host("instantiation abandoned: out of time".into())),
        }
    }

    fn give_back(&self, warm: Warm) {
        // Kept or dropped (which frees its permit), a waiter can go on.
        self.pool.put(warm);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.returned.notify_one();
        }
    }
}

/// `fut` bounded by `limit`, the clock read and the timer set only if it does not finish at
/// its first poll (most guest calls finish within one tick, without yielding).
async fn within<F: std::future::Future>(
    limit: Duration,
    fut: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    let mut fut = std::pin::pin!(fut);
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(fut.as_mut().poll(cx))).await;
    match first {
        std::task::Poll::Ready(v) => Ok(v),
        std::task::Poll::Pending => tokio::time::timeout(limit, fut).await,
    }
}

async fn invoke(g: &Guest, s: &mut Store<State>, call: &Call<'_>) -> wasmtime::Result<Reply> {
    // The call's client is what `lookup-client` answers while the call runs.
    s.data_mut().current_client = match call {
        Call::Event(c, _) | Call::Publish(c, _) => Some(c.clone()),
        Call::Authorize(c, ..) => Some((*c).clone()),
        Call::Authenticate(_) => None,
    };
    let reply = match g {
        Guest::V3(b) => match call {
            Call::Event(c, Observed::Client(e)) => b
                .call_on_client_event(&mut *s, c.handle, e)
                .await
                .map(|()| Reply::Done),
            Call::Event(c, Observed::Message(e)) => b
                .call_on_message_event(&mut *s, c.handle, e)
                .await
                .map(|()| Reply::Done),
            Call::Authenticate(req) => b.call_authenticate(&mut *s, req).await.map(Reply::Auth),
            Call::Authorize(c, op, topic, qos) => b
                .call_authorize(&mut *s, c.handle, *op, topic, *qos)
                .await
                .map(Reply::Acl),
            Call::Publish(c, msg) => b
                .call_on_message_publish(&mut *s, c.handle, msg)
                .await
                .map(Reply::Message),
        },
        Guest::V2(b) => match call {
            Call::Event(c, e) => {
                let text = match e {
                    Observed::Client(e) => compat::client_event_v2(e),
                    Observed::Message(e) => compat::message_event_v2(e),
                };
                b.call_on_client_event(&mut *s, c.handle, &text)
                    .await
                    .map(|()| Reply::Done)
            }
            Call::Authenticate(req) => b
                .call_authenticate(&mut *s, &compat::connect_request_v2(req))
                .await
                .map(|r| Reply::Auth(compat::auth_result_v3(r))),
            Call::Authorize(c, op, topic, qos) => match compat::access_v2(*op) {
                Some(op) => b
                    .call_authorize(&mut *s, c.handle, op, topic, compat::qos_v2(*qos))
                    .await
                    .map(|r| Reply::Acl(compat::acl_result_v3(r))),
                None => Ok(Reply::Acl(wit::AclResult::Ignore)),
            },
            Call::Publish(c, msg) => b
                .call_on_message_publish(&mut *s, c.handle, &compat::message_v2(msg))
                .await
                .map(|r| Reply::Message(compat::message_result_v3(r))),
        },
    };
    s.data_mut().current_client = None;
    reply
}
