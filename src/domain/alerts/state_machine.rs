//! The alert state machine, as one pure function of the current state, an
//! evaluation's outcome, the alert's timings and the time: no I/O, so every
//! case is a unit test below (the model is Apollo Router's
//! `state_machine.rs`: transitions spelled out, tested case by case).
//!
//! ```text
//!            met, forDuration 0
//!   OK ──────────────────────────────► FIRING ◄─────────── met ──┐
//!   │  met                              ▲   │ clear              │
//!   ▼                                   │   ▼                    │
//!  PENDING ── met for forDuration ──────┘  RECOVERING ───────────┘
//!   │ clear → OK                            │ clear for keepFiringFor → OK
//! ```
//!
//! From any state, a failed query goes to `ERROR`; no data goes to
//! `NO_DATA`, counts as clear, or keeps the state, as the alert says.
//! `NO_DATA` and `ERROR` leave like `OK` does.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    Ok,
    /// The condition holds, not yet for `forDuration`.
    Pending,
    Firing,
    /// The condition cleared, not yet for `keepFiringFor`.
    Recovering,
    NoData,
    /// The query failed.
    Error,
}

impl State {
    pub const ALL: [State; 6] = [
        State::Ok,
        State::Pending,
        State::Firing,
        State::Recovering,
        State::NoData,
        State::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Ok => "OK",
            State::Pending => "PENDING",
            State::Firing => "FIRING",
            State::Recovering => "RECOVERING",
            State::NoData => "NO_DATA",
            State::Error => "ERROR",
        }
    }

    pub fn parse(raw: &str) -> Option<State> {
        State::ALL.into_iter().find(|s| s.as_str() == raw)
    }
}

/// What an alert does when its query has no value to compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoDataPolicy {
    /// Treat it as the condition not holding.
    Ok,
    /// Go to `NO_DATA` (the default).
    NoData,
    /// Stay as it is.
    KeepLast,
}

impl NoDataPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            NoDataPolicy::Ok => "OK",
            NoDataPolicy::NoData => "NO_DATA",
            NoDataPolicy::KeepLast => "KEEP_LAST",
        }
    }

    pub fn parse(raw: &str) -> Option<NoDataPolicy> {
        [
            NoDataPolicy::Ok,
            NoDataPolicy::NoData,
            NoDataPolicy::KeepLast,
        ]
        .into_iter()
        .find(|p| p.as_str() == raw)
    }
}

/// One evaluation's outcome.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The condition holds for this value.
    Met(f64),
    /// It does not.
    Clear(f64),
    /// Nothing to compare (no value, or no baseline for a change).
    NoData,
    /// The query failed; the message is recorded.
    Error(String),
}

impl Outcome {
    /// The value compared, if there was one.
    pub fn value(&self) -> Option<f64> {
        match self {
            Outcome::Met(v) | Outcome::Clear(v) => Some(*v),
            Outcome::NoData | Outcome::Error(_) => None,
        }
    }

    pub fn error(&self) -> Option<&str> {
        match self {
            Outcome::Error(e) => Some(e),
            _ => None,
        }
    }
}

/// The parts of an alert's definition the machine reads.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub for_duration: Duration,
    pub keep_firing_for: Duration,
    pub no_data: NoDataPolicy,
}

/// Where an alert is: its state and since when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub state: State,
    pub since: DateTime<Utc>,
}

/// The position after `outcome` at `now`; `since` moves only when the
/// state changes, so `next.state != current.state` is the transition.
pub fn step(current: Position, outcome: &Outcome, timing: &Timing, now: DateTime<Utc>) -> Position {
    let to = |state: State| {
        if state == current.state {
            current
        } else {
            Position { state, since: now }
        }
    };
    let held = |d: Duration| now - current.since >= d;
    let met = match outcome {
        Outcome::Error(_) => return to(State::Error),
        Outcome::NoData => match timing.no_data {
            NoDataPolicy::NoData => return to(State::NoData),
            NoDataPolicy::KeepLast => return current,
            NoDataPolicy::Ok => false,
        },
        Outcome::Met(_) => true,
        Outcome::Clear(_) => false,
    };
    match (current.state, met) {
        (State::Ok | State::NoData | State::Error, true) if timing.for_duration.is_zero() => {
            to(State::Firing)
        }
        (State::Ok | State::NoData | State::Error, true) => to(State::Pending),
        (State::Pending, true) if held(timing.for_duration) => to(State::Firing),
        (State::Pending, true) => current,
        (State::Firing | State::Recovering, true) => to(State::Firing),
        (State::Ok | State::Pending | State::NoData | State::Error, false) => to(State::Ok),
        (State::Firing, false) if timing.keep_firing_for.is_zero() => to(State::Ok),
        (State::Firing, false) => to(State::Recovering),
        (State::Recovering, false) if held(timing.keep_firing_for) => to(State::Ok),
        (State::Recovering, false) => current,
    }
}

/// Whether a transition is worth a notification: an alert starting to
/// fire, going blind or failing, and its return to `OK` from any of those.
/// The steps inside a firing episode (`PENDING`, `RECOVERING` and back to
/// `FIRING`) are recorded but not sent.
pub fn notifies(from: State, to: State) -> bool {
    match to {
        State::Firing => from != State::Recovering,
        State::NoData | State::Error => true,
        State::Ok => matches!(
            from,
            State::Firing | State::Recovering | State::NoData | State::Error
        ),
        State::Pending | State::Recovering => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).expect("valid")
    }

    fn at(state: State, since: i64) -> Position {
        Position {
            state,
            since: t(since),
        }
    }

    fn timing(for_secs: i64, keep_secs: i64, no_data: NoDataPolicy) -> Timing {
        Timing {
            for_duration: Duration::seconds(for_secs),
            keep_firing_for: Duration::seconds(keep_secs),
            no_data,
        }
    }

    const MET: Outcome = Outcome::Met(10.0);
    const CLEAR: Outcome = Outcome::Clear(1.0);

    #[test]
    fn without_for_duration_a_met_condition_fires_at_once() {
        let next = step(
            at(State::Ok, 0),
            &MET,
            &timing(0, 0, NoDataPolicy::NoData),
            t(30),
        );
        assert_eq!(next, at(State::Firing, 30));
    }

    #[test]
    fn for_duration_holds_the_alert_pending_until_it_has_passed() {
        let tm = timing(60, 0, NoDataPolicy::NoData);
        let pending = step(at(State::Ok, 0), &MET, &tm, t(10));
        assert_eq!(pending, at(State::Pending, 10));
        // 59 s later: still pending, and `since` does not move.
        assert_eq!(step(pending, &MET, &tm, t(69)), pending);
        // 60 s after it began to hold: firing.
        assert_eq!(step(pending, &MET, &tm, t(70)), at(State::Firing, 70));
    }

    #[test]
    fn a_pending_alert_whose_condition_clears_goes_back_to_ok() {
        let tm = timing(60, 0, NoDataPolicy::NoData);
        assert_eq!(
            step(at(State::Pending, 10), &CLEAR, &tm, t(20)),
            at(State::Ok, 20)
        );
    }

    #[test]
    fn firing_stays_firing_while_the_condition_holds() {
        let tm = timing(0, 0, NoDataPolicy::NoData);
        let firing = at(State::Firing, 5);
        assert_eq!(step(firing, &MET, &tm, t(500)), firing);
    }

    #[test]
    fn without_keep_firing_for_a_cleared_condition_resolves_at_once() {
        let tm = timing(0, 0, NoDataPolicy::NoData);
        assert_eq!(
            step(at(State::Firing, 5), &CLEAR, &tm, t(50)),
            at(State::Ok, 50)
        );
    }

    #[test]
    fn keep_firing_for_holds_the_alert_recovering_then_resolves() {
        let tm = timing(0, 120, NoDataPolicy::NoData);
        let recovering = step(at(State::Firing, 0), &CLEAR, &tm, t(100));
        assert_eq!(recovering, at(State::Recovering, 100));
        assert_eq!(step(recovering, &CLEAR, &tm, t(219)), recovering);
        assert_eq!(step(recovering, &CLEAR, &tm, t(220)), at(State::Ok, 220));
    }

    #[test]
    fn a_recovering_alert_whose_condition_returns_fires_again() {
        let tm = timing(300, 120, NoDataPolicy::NoData);
        // Straight back to FIRING: forDuration was served before it fired.
        assert_eq!(
            step(at(State::Recovering, 100), &MET, &tm, t(130)),
            at(State::Firing, 130)
        );
    }

    #[test]
    fn a_failed_query_is_an_error_from_any_state() {
        let tm = timing(60, 60, NoDataPolicy::KeepLast);
        let failed = Outcome::Error("timeout".into());
        for state in State::ALL {
            let next = step(at(state, 0), &failed, &tm, t(10));
            assert_eq!(next.state, State::Error, "from {state:?}");
        }
        // Still failing: no new transition.
        assert_eq!(
            step(at(State::Error, 0), &failed, &tm, t(10)),
            at(State::Error, 0)
        );
    }

    #[test]
    fn an_error_clears_like_ok_when_the_query_works_again() {
        let tm = timing(60, 0, NoDataPolicy::NoData);
        assert_eq!(
            step(at(State::Error, 0), &CLEAR, &tm, t(10)),
            at(State::Ok, 10)
        );
        assert_eq!(
            step(at(State::Error, 0), &MET, &tm, t(10)),
            at(State::Pending, 10)
        );
    }

    #[test]
    fn no_data_follows_the_alerts_policy() {
        let firing = at(State::Firing, 0);
        let no = Outcome::NoData;
        assert_eq!(
            step(firing, &no, &timing(0, 0, NoDataPolicy::NoData), t(10)),
            at(State::NoData, 10)
        );
        assert_eq!(
            step(firing, &no, &timing(0, 0, NoDataPolicy::KeepLast), t(10)),
            firing
        );
        // OK: counts as the condition clearing, keepFiringFor included.
        assert_eq!(
            step(firing, &no, &timing(0, 60, NoDataPolicy::Ok), t(10)),
            at(State::Recovering, 10)
        );
        assert_eq!(
            step(
                at(State::Pending, 0),
                &no,
                &timing(60, 0, NoDataPolicy::KeepLast),
                t(10)
            ),
            at(State::Pending, 0)
        );
    }

    #[test]
    fn data_coming_back_leaves_no_data() {
        let tm = timing(0, 0, NoDataPolicy::NoData);
        assert_eq!(
            step(at(State::NoData, 0), &MET, &tm, t(10)),
            at(State::Firing, 10)
        );
        assert_eq!(
            step(at(State::NoData, 0), &CLEAR, &tm, t(10)),
            at(State::Ok, 10)
        );
    }

    #[test]
    fn notifications_go_out_for_firing_blind_failing_and_resolved() {
        use State::*;
        let sent: Vec<(State, State)> = State::ALL
            .into_iter()
            .flat_map(|from| State::ALL.into_iter().map(move |to| (from, to)))
            .filter(|&(from, to)| from != to && notifies(from, to))
            .collect();
        assert_eq!(
            sent,
            vec![
                (Ok, Firing),
                (Ok, NoData),
                (Ok, Error),
                (Pending, Firing),
                (Pending, NoData),
                (Pending, Error),
                (Firing, Ok),
                (Firing, NoData),
                (Firing, Error),
                (Recovering, Ok),
                (Recovering, NoData),
                (Recovering, Error),
                (NoData, Ok),
                (NoData, Firing),
                (NoData, Error),
                (Error, Ok),
                (Error, Firing),
                (Error, NoData),
            ]
        );
    }

    #[test]
    fn states_round_trip_through_their_names() {
        for s in State::ALL {
            assert_eq!(State::parse(s.as_str()), Some(s));
        }
        assert_eq!(State::parse("firing"), None);
    }
}
