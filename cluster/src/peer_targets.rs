//! The addresses a node keeps connecting to (seeds and announced peer listen
//! addresses), each with its reconnect backoff.
//!
//! A target is keyed by the address as given (`pdserve-seed:7100`, `10.0.0.5:7100`).
//! A session only knows the socket address it connected to, so each connect attempt
//! resolves the name first and the target remembers what it resolved to: a session
//! to that socket address counts for the target. Names are resolved again on every
//! attempt, so a seed whose name now points elsewhere (a replaced pod) is found.
//!
//! Invariants: a target is in one of three states — idle (waiting for `next_try`),
//! `connecting` (an attempt or its session handshake is under way), `up` (a session
//! with it is authenticated); a failure always returns it to idle with a doubled
//! backoff (capped), and `up` resets the backoff.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// An attempt whose session neither comes up nor closes within this long is
/// given up (the handshake hung), so the target is tried again.
pub(crate) const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub(crate) struct Target {
    /// Not tried before this instant (`None`: due now).
    pub next_try: Option<Instant>,
    pub backoff: Duration,
    /// An attempt started at this instant and has not ended yet.
    pub connecting_since: Option<Instant>,
    /// A session with this address is up (authenticated).
    pub up: bool,
    /// Consecutive failed attempts (only the first is logged).
    pub refusals: u32,
    /// The socket address the latest attempt resolved the name to.
    pub resolved: Option<String>,
}

impl Target {
    fn new() -> Target {
        Target {
            next_try: None,
            backoff: BACKOFF_MIN,
            connecting_since: None,
            up: false,
            refusals: 0,
            resolved: None,
        }
    }

    fn mark_up(&mut self) {
        self.up = true;
        self.connecting_since = None;
        self.backoff = BACKOFF_MIN;
        self.refusals = 0;
    }

    fn mark_failed(&mut self, now: Instant) {
        self.up = false;
        self.connecting_since = None;
        self.next_try = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    /// Whether `addr` (a session's socket address or announced listen address)
    /// is this target, whose key is `key`.
    fn is(&self, key: &str, addr: &str) -> bool {
        key == addr || self.resolved.as_deref() == Some(addr)
    }
}

/// Every address this node keeps a session with.
#[derive(Debug, Default)]
pub(crate) struct Targets {
    map: BTreeMap<String, Target>,
}

impl Targets {
    /// Adds `addr` (idle, due now) unless it is known.
    pub fn add(&mut self, addr: String) {
        self.map.entry(addr).or_insert_with(Target::new);
    }

    /// Adds `addr` as already up (a peer that connected to us announced it).
    pub fn add_up(&mut self, addr: String) {
        self.map.entry(addr).or_insert_with(|| {
            let mut t = Target::new();
            t.up = true;
            t
        });
    }

    /// The targets due for an attempt now; each is marked connecting.
    pub fn start_due(&mut self, now: Instant) -> Vec<String> {
        let mut due = Vec::new();
        for (addr, t) in self.map.iter_mut() {
            if let Some(since) = t.connecting_since {
                if now.duration_since(since) < HANDSHAKE_LIMIT {
                    continue;
                }
                tracing::debug!(peer = %addr, "cluster handshake did not finish; retrying");
                t.mark_failed(now);
            }
            if t.up || t.next_try.is_some_and(|at| now < at) {
                continue;
            }
            t.connecting_since = Some(now);
            due.push(addr.clone());
        }
        due
    }

    /// The attempt for `addr` ended: on success the session handshake goes on
    /// (the target stays connecting until the session is up or closes); on
    /// failure the target backs off. Returns whether to log the failure (first
    /// of a series).
    pub fn attempt_ended(
        &mut self,
        addr: &str,
        resolved: Option<String>,
        ok: bool,
        now: Instant,
    ) -> bool {
        let Some(t) = self.map.get_mut(addr) else {
            return false;
        };
        if resolved.is_some() {
            t.resolved = resolved;
        }
        if ok {
            return false;
        }
        t.refusals += 1;
        t.mark_failed(now);
        t.refusals == 1
    }

    /// A session with `addr` (socket or announced address) is up.
    pub fn session_up(&mut self, addr: &str) {
        for (key, t) in self.map.iter_mut() {
            if t.is(key, addr) {
                t.mark_up();
            }
        }
    }

    /// The last session with `addr` closed: the matching targets back off and
    /// are tried again.
    pub fn session_lost(&mut self, addr: &str, now: Instant) {
        for (key, t) in self.map.iter_mut() {
            if t.is(key, addr) {
                t.mark_failed(now);
            }
        }
    }

    #[cfg(test)]
    pub fn get(&self, addr: &str) -> Option<&Target> {
        self.map.get(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = "pdserve-seed:7100";
    const IP: &str = "10.1.2.3:7100";

    fn connecting(t: &Targets, key: &str) -> bool {
        t.get(key).unwrap().connecting_since.is_some()
    }

    #[test]
    fn a_named_seed_is_up_through_its_resolved_address_and_retried_when_lost() {
        let now = Instant::now();
        let mut t = Targets::default();
        t.add(SEED.into());
        assert_eq!(t.start_due(now), vec![SEED.to_string()]);
        assert!(t.start_due(now).is_empty(), "one attempt at a time");
        assert!(!t.attempt_ended(SEED, Some(IP.into()), true, now));
        assert!(connecting(&t, SEED), "handshake still under way");
        t.session_up(IP);
        let s = t.get(SEED).unwrap();
        assert!(s.up && s.connecting_since.is_none());
        // The seed pod goes away: the session to its address closes.
        t.session_lost(IP, now);
        let s = t.get(SEED).unwrap();
        assert!(!s.up && s.connecting_since.is_none());
        assert_eq!(t.start_due(now + BACKOFF_MIN), vec![SEED.to_string()]);
    }

    #[test]
    fn failures_back_off_exponentially_up_to_the_cap_and_log_once() {
        let mut now = Instant::now();
        let mut t = Targets::default();
        t.add(IP.into());
        let mut logged = 0;
        let mut backoffs = Vec::new();
        for _ in 0..10 {
            let due = t.start_due(now);
            assert_eq!(due, vec![IP.to_string()]);
            logged += t.attempt_ended(IP, None, false, now) as u32;
            let next_try = t.get(IP).unwrap().next_try.unwrap();
            backoffs.push(next_try - now);
            assert!(t.start_due(now).is_empty(), "not due before its backoff");
            now = next_try;
        }
        assert_eq!(logged, 1);
        assert_eq!(backoffs[0], BACKOFF_MIN);
        assert_eq!(backoffs[1], BACKOFF_MIN * 2);
        assert_eq!(*backoffs.last().unwrap(), BACKOFF_MAX);
        t.session_up(IP);
        let tgt = t.get(IP).unwrap();
        assert_eq!((tgt.backoff, tgt.refusals), (BACKOFF_MIN, 0));
    }

    #[test]
    fn a_hung_handshake_is_given_up_and_retried() {
        let now = Instant::now();
        let mut t = Targets::default();
        t.add(SEED.into());
        t.start_due(now);
        t.attempt_ended(SEED, Some(IP.into()), true, now);
        assert!(t.start_due(now + HANDSHAKE_LIMIT / 2).is_empty());
        let later = now + HANDSHAKE_LIMIT + BACKOFF_MIN;
        assert!(t.start_due(later).is_empty(), "backs off first");
        assert_eq!(t.start_due(later + BACKOFF_MIN), vec![SEED.to_string()]);
    }

    #[test]
    fn announced_peers_start_up_and_sessions_of_other_addresses_do_not_count() {
        let now = Instant::now();
        let mut t = Targets::default();
        t.add_up(IP.into());
        assert!(t.start_due(now).is_empty());
        t.add(SEED.into());
        t.start_due(now);
        t.attempt_ended(SEED, Some("10.9.9.9:7100".into()), true, now);
        t.session_up(IP);
        assert!(!t.get(SEED).unwrap().up, "another address's session");
        t.session_lost(IP, now);
        assert!(!t.get(IP).unwrap().up);
    }
}
