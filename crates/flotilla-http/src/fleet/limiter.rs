//! Overload protection for the fleet routes: per-route rate limits (GCRA)
//! and concurrency caps, and check-in reservations that keep an admitted
//! agent's slot while it is between two polls.
//!
//! Everything here sheds, never queues: a request over a limit is answered
//! 429 at once with a `Retry-After` computed from the limit it met.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Monotonic time since an origin; tests drive a manual one.
pub trait Clock: Send + Sync {
    fn now(&self) -> Duration;
}

/// The process's monotonic clock.
pub struct SystemClock(Instant);

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock(Instant::now())
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

/// A clock that moves only when told to.
#[derive(Default, Clone)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_nanos() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::SeqCst))
    }
}

/// One route's limits: `rate` admissions per second with bursts of up to
/// `burst`, and at most `max` in flight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouteLimit {
    pub rate: f64,
    pub burst: u32,
    pub max: u32,
}

/// The fleet routes' limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FleetRouteLimits {
    pub enroll: RouteLimit,
    /// Check-ins: `rate`/`burst` apply to check-ins without a reservation;
    /// `max` caps check-ins in flight (long polls included) and reserved.
    pub checkin: RouteLimit,
    pub ack: RouteLimit,
    /// How long a check-in's slot stays its agent's after its poll ended
    /// (answered or dropped): its next check-in within this window passes
    /// the rate limit and takes the same slot.
    pub reserve: Duration,
}

impl FleetRouteLimits {
    /// Defaults sized for a fleet of `agents`: on a 2-core machine the
    /// server enrols about 2,200–2,700 agents/s (group-committed) and
    /// answers a few thousand check-ins/s; a fan-out has every agent ack at
    /// once. At 20,000 the enrolment rate (2,500/s: the fleet in 8 s) is
    /// about what the server does, so only a fleet larger than expected
    /// meets it, and the check-in rate is above what it does.
    pub fn for_agents(agents: u32) -> Self {
        let agents = agents.max(1);
        let headroom = agents + agents / 10 + 16;
        let enroll_rate = (agents / 8).clamp(20, 3000);
        let checkin_rate = (agents / 10).clamp(50, 2000);
        FleetRouteLimits {
            enroll: RouteLimit {
                rate: f64::from(enroll_rate),
                burst: enroll_rate,
                max: (agents / 100).clamp(16, 256),
            },
            checkin: RouteLimit {
                rate: f64::from(checkin_rate),
                burst: checkin_rate,
                max: headroom,
            },
            ack: RouteLimit {
                rate: f64::from(agents.max(1000)),
                burst: headroom.saturating_mul(2),
                max: headroom,
            },
            reserve: Duration::from_secs(15),
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Over the route's rate (429 `RateLimit`).
    Rate,
    /// At the route's concurrency cap (429 `MaxLimit`).
    Concurrency,
}

impl Reason {
    pub fn label(self) -> &'static str {
        match self {
            Reason::Rate => "rate",
            Reason::Concurrency => "concurrency",
        }
    }
}

/// A refusal, with the seconds the client should wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Reason,
    pub retry_after_secs: u64,
}

/// The generic cell rate algorithm: one theoretical arrival time, moved by
/// one emission interval per admission; a request is admitted if it is at
/// most `burst` intervals early.
struct Gcra {
    interval_ns: u64,
    tolerance_ns: u64,
    tat_ns: Mutex<u64>,
}

impl Gcra {
    fn new(rate: f64, burst: u32) -> Self {
        let interval_ns = (1e9 / rate).max(1.0) as u64;
        Gcra {
            interval_ns,
            tolerance_ns: interval_ns.saturating_mul(u64::from(burst.max(1)) - 1),
            tat_ns: Mutex::new(0),
        }
    }

    /// `Ok` and one admission counted, or how long until one would be.
    fn check(&self, now: Duration) -> Result<(), Duration> {
        let now = now.as_nanos() as u64;
        let mut tat = self.tat_ns.lock().expect("gcra lock");
        let t = (*tat).max(now);
        let allow_at = t.saturating_sub(self.tolerance_ns);
        if now < allow_at {
            return Err(Duration::from_nanos(allow_at - now));
        }
        *tat = t + self.interval_ns;
        Ok(())
    }
}

/// One route's rate limit and concurrency cap.
pub struct RouteLimiter {
    route: &'static str,
    gcra: Gcra,
    slots: Arc<Semaphore>,
    jitter: AtomicU64,
}

impl RouteLimiter {
    fn new(route: &'static str, limit: RouteLimit) -> Self {
        RouteLimiter {
            route,
            gcra: Gcra::new(limit.rate, limit.burst),
            slots: Arc::new(Semaphore::new(limit.max as usize)),
            jitter: AtomicU64::new(0x9e37_79b9),
        }
    }

    /// Up to 2 s added to a retry, so refused clients come back spread out.
    fn jitter_secs(&self) -> u64 {
        let x = self
            .jitter
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
        (x >> 32) % 3
    }

    fn refuse(&self, reason: Reason, wait: Duration) -> Refusal {
        metrics::counter!("flotilla_fleet_refused_total",
            "route" => self.route, "reason" => reason.label())
        .increment(1);
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        Refusal {
            reason,
            retry_after_secs: secs.max(1) + self.jitter_secs(),
        }
    }

    /// A slot, or a refusal; the rate is counted only for admissions.
    pub fn admit(
        &self,
        now: Duration,
        rate_limited: bool,
    ) -> Result<OwnedSemaphorePermit, Refusal> {
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            return Err(self.refuse(Reason::Concurrency, Duration::from_secs(1)));
        };
        if rate_limited {
            if let Err(wait) = self.gcra.check(now) {
                return Err(self.refuse(Reason::Rate, wait));
            }
        }
        Ok(permit)
    }

    /// Slots free now.
    pub fn available(&self) -> usize {
        self.slots.available_permits()
    }
}

struct Reservation {
    permit: OwnedSemaphorePermit,
    until: Duration,
}

/// The fleet routes' limiters and the check-in reservations.
pub struct FleetLimiter {
    clock: Arc<dyn Clock>,
    pub enroll: RouteLimiter,
    pub checkin: RouteLimiter,
    pub ack: RouteLimiter,
    reserve: Duration,
    reservations: Mutex<Reservations>,
}

#[derive(Default)]
struct Reservations {
    by_agent: HashMap<String, Reservation>,
    next_sweep: Duration,
}

/// A check-in's slot; dropped (answered or cut off), it stays reserved for
/// its agent for the reserve window if the agent authenticated.
pub struct CheckinSlot {
    limiter: Arc<FleetLimiter>,
    agent_id: String,
    permit: Option<OwnedSemaphorePermit>,
    /// Whether the agent has proven who it is.
    authenticated: bool,
    /// Whether this check-in took a reservation (it goes back if the
    /// request fails to authenticate: a forged id cannot steal it).
    from_reservation: bool,
}

impl std::fmt::Debug for CheckinSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckinSlot")
            .field("agent_id", &self.agent_id)
            .field("authenticated", &self.authenticated)
            .finish()
    }
}

impl CheckinSlot {
    /// The agent authenticated: its slot may be reserved for it.
    pub fn authenticated(&mut self) {
        self.authenticated = true;
    }
}

impl Drop for CheckinSlot {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            if self.authenticated || self.from_reservation {
                self.limiter.reserve(&self.agent_id, permit);
            }
        }
    }
}

impl FleetLimiter {
    pub fn new(limits: FleetRouteLimits, clock: Arc<dyn Clock>) -> Arc<Self> {
        Arc::new(FleetLimiter {
            clock,
            enroll: RouteLimiter::new("enroll", limits.enroll),
            checkin: RouteLimiter::new("checkin", limits.checkin),
            ack: RouteLimiter::new("ack", limits.ack),
            reserve: limits.reserve,
            reservations: Mutex::new(Reservations::default()),
        })
    }

    pub fn now(&self) -> Duration {
        self.clock.now()
    }

    pub fn admit_enroll(&self) -> Result<OwnedSemaphorePermit, Refusal> {
        self.enroll.admit(self.now(), true)
    }

    pub fn admit_ack(&self) -> Result<OwnedSemaphorePermit, Refusal> {
        self.ack.admit(self.now(), true)
    }

    /// A check-in's slot: the agent's reserved one if it has one (no rate
    /// limit: an admitted agent keeps being served), else a new one under
    /// the rate limit and the cap (reserved slots count against the cap, so
    /// newcomers never take an admitted agent's).
    pub fn admit_checkin(self: &Arc<Self>, agent_id: &str) -> Result<CheckinSlot, Refusal> {
        let now = self.now();
        let reserved = {
            let mut r = self.reservations.lock().expect("reservations lock");
            self.sweep(&mut r, now);
            r.by_agent
                .remove(agent_id)
                .filter(|res| res.until >= now)
                .map(|res| res.permit)
        };
        let from_reservation = reserved.is_some();
        let permit = match reserved {
            Some(p) => p,
            None => self.checkin.admit(now, true)?,
        };
        Ok(CheckinSlot {
            limiter: self.clone(),
            agent_id: agent_id.to_owned(),
            permit: Some(permit),
            authenticated: false,
            from_reservation,
        })
    }

    fn reserve(&self, agent_id: &str, permit: OwnedSemaphorePermit) {
        let now = self.now();
        let mut r = self.reservations.lock().expect("reservations lock");
        // One slot per agent: a concurrent check-in of the same agent
        // already holds one; this one's goes back to the pool.
        r.by_agent
            .entry(agent_id.to_owned())
            .and_modify(|res| res.until = now + self.reserve)
            .or_insert(Reservation {
                permit,
                until: now + self.reserve,
            });
        metrics::gauge!("flotilla_fleet_checkin_reserved").set(r.by_agent.len() as f64);
    }

    /// Expired reservations give their slots back, at most once a second
    /// (a pass over the map).
    fn sweep(&self, r: &mut Reservations, now: Duration) {
        if now < r.next_sweep {
            return;
        }
        r.next_sweep = now + Duration::from_secs(1);
        r.by_agent.retain(|_, res| res.until >= now);
        metrics::gauge!("flotilla_fleet_checkin_reserved").set(r.by_agent.len() as f64);
    }

    /// Reserved check-in slots (tests, metrics).
    pub fn reserved(&self) -> usize {
        self.reservations
            .lock()
            .expect("reservations lock")
            .by_agent
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: f64, burst: u32, max: u32) -> FleetRouteLimits {
        let l = RouteLimit { rate, burst, max };
        FleetRouteLimits {
            enroll: l,
            checkin: l,
            ack: l,
            reserve: Duration::from_secs(15),
        }
    }

    fn limiter(rate: f64, burst: u32, max: u32) -> (Arc<FleetLimiter>, ManualClock) {
        let clock = ManualClock::default();
        (
            FleetLimiter::new(limits(rate, burst, max), Arc::new(clock.clone())),
            clock,
        )
    }

    #[test]
    fn a_burst_is_admitted_then_the_rate_applies() {
        let (l, clock) = limiter(10.0, 5, 1000);
        let mut held = Vec::new();
        for _ in 0..5 {
            held.push(l.admit_enroll().expect("within the burst"));
        }
        let refused = l.admit_enroll().expect_err("over the burst");
        assert_eq!(refused.reason, Reason::Rate);
        assert!((1..=3).contains(&refused.retry_after_secs));
        // One interval later, one more.
        clock.advance(Duration::from_millis(100));
        held.push(l.admit_enroll().expect("one token back"));
        assert!(l.admit_enroll().is_err());
        // A long pause refills the burst, no more.
        clock.advance(Duration::from_secs(60));
        for _ in 0..5 {
            held.push(l.admit_enroll().expect("refilled"));
        }
        assert!(l.admit_enroll().is_err());
    }

    #[test]
    fn retry_after_follows_the_bucket() {
        // One per 10 s: the next admission is 10 s away.
        let (l, _) = limiter(0.1, 1, 1000);
        let _p = l.admit_ack().unwrap();
        let r = l.admit_ack().unwrap_err();
        assert!((10..=12).contains(&r.retry_after_secs), "{r:?}");
    }

    #[test]
    fn the_cap_sheds_and_frees_on_drop() {
        let (l, _) = limiter(1e6, 1_000_000, 2);
        let a = l.admit_ack().unwrap();
        let _b = l.admit_ack().unwrap();
        let r = l.admit_ack().unwrap_err();
        assert_eq!(r.reason, Reason::Concurrency);
        drop(a);
        assert!(l.admit_ack().is_ok());
    }

    #[test]
    fn refusals_do_not_consume_the_rate() {
        let (l, clock) = limiter(1.0, 1, 1);
        let p = l.admit_enroll().unwrap();
        // At the cap: refused without counting against the rate.
        assert_eq!(l.admit_enroll().unwrap_err().reason, Reason::Concurrency);
        drop(p);
        clock.advance(Duration::from_secs(1));
        assert!(l.admit_enroll().is_ok());
    }

    #[test]
    fn an_admitted_agent_keeps_its_slot_between_polls() {
        // Two slots, a burst of two, then one per minute.
        let (l, clock) = limiter(1.0 / 60.0, 2, 2);
        let mut a = l.admit_checkin("a").unwrap();
        a.authenticated();
        // A newcomer uses up the burst.
        let mut b = l.admit_checkin("b").unwrap();
        b.authenticated();
        // a's poll ends; a comes back within the window, over the rate.
        drop(a);
        assert_eq!(l.reserved(), 1);
        clock.advance(Duration::from_secs(5));
        // A newcomer is refused: the free slot is a's.
        assert_eq!(
            l.admit_checkin("c").unwrap_err().reason,
            Reason::Concurrency
        );
        let mut a = l.admit_checkin("a").expect("a's reserved slot");
        a.authenticated();
        assert_eq!(l.reserved(), 0);
        drop(a);
        drop(b);
        assert_eq!(l.reserved(), 2);
    }

    #[test]
    fn a_reservation_expires() {
        let (l, clock) = limiter(1.0 / 60.0, 1, 1);
        let mut a = l.admit_checkin("a").unwrap();
        a.authenticated();
        drop(a);
        clock.advance(Duration::from_secs(16));
        // The slot is free again, but the newcomer still meets the rate.
        assert_eq!(l.admit_checkin("c").unwrap_err().reason, Reason::Rate);
        clock.advance(Duration::from_secs(60));
        assert!(l.admit_checkin("c").is_ok());
        assert_eq!(l.reserved(), 0);
    }

    #[test]
    fn an_unauthenticated_check_in_reserves_nothing_and_cannot_steal() {
        let (l, _) = limiter(1e6, 1_000_000, 1);
        // Never authenticated: the slot goes back to the pool.
        drop(l.admit_checkin("x").unwrap());
        assert_eq!(l.reserved(), 0);
        let mut a = l.admit_checkin("a").unwrap();
        a.authenticated();
        drop(a);
        // Someone forging a's id takes the reservation, fails to
        // authenticate: it goes back to a.
        drop(l.admit_checkin("a").unwrap());
        assert_eq!(l.reserved(), 1);
        assert!(l.admit_checkin("a").is_ok());
    }

    #[test]
    fn defaults_admit_a_fan_out_of_acks() {
        for agents in [1, 1000, 2000, 20_000] {
            let d = FleetRouteLimits::for_agents(agents);
            assert!(d.ack.burst >= 2 * agents, "{agents}: {d:?}");
            assert!(d.ack.max > agents && d.checkin.max > agents);
            assert!(d.enroll.rate > 0.0 && d.checkin.rate > 0.0);
        }
        // An expected fleet of 20,000 enrols in 8 s at the rate.
        assert_eq!(FleetRouteLimits::for_agents(20_000).enroll.rate, 2500.0);
    }
}
