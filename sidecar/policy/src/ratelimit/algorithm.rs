//! Rate-limit algorithms as pure state machines.
//!
//! One (key, rate) counter is a [`State`]: six `u64` words, `Default` meaning "never seen".
//! [`decide`] maps `(rate, state, now, cost)` to an [`Outcome`] and to the state to store if the
//! caller commits; [`decide_all`] applies every rate of a rule all-or-nothing. Nothing here reads
//! a clock, allocates, locks or panics: products that can exceed `u64` are computed in `u128`,
//! and everything saturates. The local store calls these functions per key; a Redis script must
//! reproduce them (see *Mirroring* below).
//!
//! Notation: `L` = `limit`, `W` = `window_nanos`, `b` = `burst`, `c` = a request's cost,
//! `T = W / L` (the emission interval, a rational number of nanoseconds).
//!
//! # Rules common to all algorithms
//!
//! - Cost 0 is always allowed and consumes nothing: the state comes back unchanged.
//! - A cost above the capacity (`b` for `TokenBucket`, `L` for the windows) can never be
//!   admitted: it is denied with `retry_after_nanos` = [`NEVER`] (`u64::MAX`). So is any cost
//!   ≥ 1 when `L` is 0. A window of 0 is read as 1 ns.
//! - `retry_after_nanos` is exact: if nothing else is admitted meanwhile, the same request is
//!   allowed at `now + retry_after_nanos` and denied at `now + retry_after_nanos - 1`. It is
//!   exact for [`decide_all`] too, because every algorithm's admission is monotone in time.
//! - Time going backwards never panics and never admits more: the windows place a request
//!   whose `now` precedes the state's (sub-)window in that later (sub-)window, i.e. they treat it
//!   as the last seen time, so their bounds hold for the *effective* time
//!   `max(now, latest admitted)`. GCRA needs no special case: an earlier `now` only makes it
//!   stricter, and its bound holds for the raw, unordered timestamps.
//!
//! # `TokenBucket`: GCRA
//!
//! State: the theoretical arrival time `TAT`, held exactly as `at + n[0] / L` ns (whole
//! nanoseconds and a remainder in units of `1/L` ns). `T` is rarely a whole number of
//! nanoseconds (and is below 1 ns for the largest limits, up to 10^15 per window with override
//! multipliers), so rounding it would drift, or for `T < 1 ns` break down entirely; with the
//! remainder there is no rounding at all.
//!
//! Rule: with `base = max(TAT, now)`, admit iff `base + c·T ≤ now + b·T`, then
//! `TAT := base + c·T`. Every comparison is made multiplied by `L`, in `u128`.
//!
//! Guarantee: for every closed interval `[t1, t2]`, the cost admitted with timestamps in it is
//! at most `b + (t2 - t1)·L / W`, exactly (as integers: `Σc·W ≤ b·W + (t2 - t1)·L`, no rounding
//! term), even when timestamps arrive out of order. Proof: `TAT` never decreases. Just before
//! the first admission (in arrival order) stamped in the interval, `base ≥` its stamp `≥ t1`;
//! each admission stamped in the interval then adds its `c·T` (others only add more); just
//! after the last one, `TAT ≤` its stamp `+ b·T ≤ t2 + b·T`. Hence `t1 + Σc·T ≤ t2 + b·T`.
//! In the long run that is `L` per `W`; after `b·T` of silence, `b` at once.
//!
//! Outcome: `remaining = ⌊(now + b·T − TAT)/T⌋`, `reset = ⌈TAT − now⌉` (until the bucket is
//! full again), `retry = ⌈TAT + c·T − b·T⌉ − now` when denied.
//!
//! # `FixedWindow`
//!
//! State: the index `m = ⌊now / W⌋` of the window last counted (`at`) and the cost admitted in
//! it (`n[0]`). Windows are `[m·W, (m+1)·W)`, aligned to the Unix epoch. Admit iff
//! `used + c ≤ L`.
//!
//! Guarantee: every aligned window admits at most `L`. An arbitrary interval of length `W`
//! straddles two windows and can admit `2L` (the documented weakness; the cheapest algorithm).
//! `reset` and `retry` are the time to the window's end.
//!
//! # `SlidingWindow`: five sub-window counts, two checks
//!
//! The usual sliding-window counter (previous window weighted by its remaining overlap) does
//! not prevent double bursts: with `L` admitted in the last nanosecond of a window, the
//! previous-window weight has decayed to `1/W` one nanosecond before the next window ends, so
//! about `L` more are admitted then: `2L − 1` within one window's length. Any scheme that
//! weights a partly expired period by a fraction fails the same way when that period's cost
//! sits at its edge, so this one counts such a period in full, and compensates with a
//! slightly higher ceiling for that check only.
//!
//! State: time is cut into `K` = [`SUB_WINDOWS`] = 4 slots per window, `[i·W/K, (i+1)·W/K)`,
//! aligned to the epoch (so `K` consecutive slots starting at a multiple of `K` form an aligned
//! window). The state is the index `j` of the newest slot (`at`) and the cost admitted in slots
//! `j−K ..= j` (`n[0..=4]`, oldest first). Admit iff both
//!
//! - **(R)** the last `K` slots (`j−K+1 ..= j`) hold at most `L − c`, and
//! - **(A)** the last `K+1` slots (`j−K ..= j`) hold at most `B − c`, with
//!   `B = L + ⌊L/K⌋` ([`sliding_window_bound`]).
//!
//! Guarantees, for effective timestamps:
//!
//! 1. **Every interval of length `W`** (half-open, `[s, s+W)`, anywhere) **admits at most
//!    `B = L + ⌊L/4⌋ ≤ 1.25·L`**; for `L < 4` that is `L`, exactly the sliding-window ideal.
//!    Proof: such an interval meets at most `K+1` consecutive slots (`⌊(s+W−1)·K/W⌋ ≤
//!    ⌊s·K/W⌋ + K`). At the last admission stamped in it, in slot `j`, check (A) covered
//!    slots `j−K ..= j`, which contain every earlier admission stamped in the interval.
//!    The bound is reached: `L` in the last slot of one window, then `⌊L/K⌋` in the last slot
//!    of the next (see the tests).
//! 2. **Every interval of length `W` starting at a slot edge (a multiple of `W/4`), in
//!    particular every aligned window, admits at most `L`.** Proof: it is exactly `K` slots, and
//!    (R) at its last admission covered them.
//!
//! Throughput: a request with `c ≤ L` is admitted once `⌈5W/4⌉` ns have passed since the last
//! admission. Evenly spaced traffic at exactly `L` per `W` is admitted in full
//! when `K` divides `L` (each slot holds `L/K`: (R) sees `L`, (A) sees `B`); otherwise it gets
//! at least `B` per `K+1` slots, i.e. `(L + ⌊L/4⌋)·4/5` per window (80 % for `L < 4`). More
//! slots would tighten the bound to `L(1 + 1/K)` at one word each; four keep the state small.
//!
//! Outcome: `remaining = min(L − (R), B − (A))`; `reset` = until every admitted slot has left
//! both checks; `retry` = until the first slot edge at which both checks pass (at most five
//! candidates are tried).
//!
//! # Mirroring (Redis, eviction)
//!
//! - [`State::to_words`] / [`State::from_words`] give the six words (`[at, n0, n1, n2, n3, n4]`)
//!   for storage; meaning per algorithm as above.
//! - [`is_idle`] is true exactly from [`idle_at`] on; [`idle_at`] is a natural `PEXPIREAT`.
//!   From a request admitted at effective time `t`, `idle_at ≤ t + ⌈b·W/L⌉` (`TokenBucket`),
//!   `≤ t + W` (`FixedWindow`), `≤ t + ⌈5W/4⌉` (`SlidingWindow`).
//! - Redis Lua numbers are doubles (exact integers only below 2^53, while Unix nanoseconds are
//!   about 2^61 and `now·L` needs 128 bits), so a Lua port cannot copy this arithmetic
//!   literally: either keep the decision in Rust and let the script compare-and-set the words,
//!   or port with times relative to the state and accept (and document) rounding.

/// `retry_after_nanos` of a request that can never be admitted (its cost exceeds the burst or
/// the limit, or the limit is 0).
pub const NEVER: u64 = u64::MAX;

/// Slots per window of [`Algorithm::SlidingWindow`] (`K` in the module docs).
pub const SUB_WINDOWS: u64 = 4;

/// Count words of a state: `K + 1` slots for `SlidingWindow`.
const SLOTS: usize = SUB_WINDOWS as usize + 1;

/// Words of a [`State`].
pub const STATE_WORDS: usize = SLOTS + 1;

/// The counting algorithm of a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// GCRA: requests spaced at `window / limit`, up to `burst` at once.
    TokenBucket,
    /// Sub-window counts: at most [`sliding_window_bound`]`(limit)` in any window's length,
    /// at most `limit` per aligned window.
    SlidingWindow,
    /// Epoch-aligned windows, at most `limit` each.
    FixedWindow,
}

/// A limit over a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rate {
    /// Cost units admitted per window.
    pub limit: u64,
    /// The window in nanoseconds.
    pub window_nanos: u64,
    /// `TokenBucket` only: units that may be spent at once (pass `limit` when unset).
    pub burst: u64,
}

/// State of one (key, rate) counter; `Default` = never seen. Six words; see the module docs for
/// their meaning per algorithm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct State {
    /// `TokenBucket`: whole nanoseconds of TAT. `FixedWindow`: window index.
    /// `SlidingWindow`: index of the newest slot.
    at: u64,
    /// `TokenBucket`: `n[0]` = TAT's remainder in `1/L` ns. `FixedWindow`: `n[0]` = cost used.
    /// `SlidingWindow`: costs of slots `at−4 ..= at`, oldest first.
    n: [u64; SLOTS],
}

impl State {
    /// The state as words, `[at, n0, n1, n2, n3, n4]`, for external storage.
    pub fn to_words(self) -> [u64; STATE_WORDS] {
        let mut words = [0; STATE_WORDS];
        words[0] = self.at;
        words[1..].copy_from_slice(&self.n);
        words
    }

    /// True when `algorithm`'s states use `at` and `n[0]` only ([`State::to_pair`] loses
    /// nothing): `TokenBucket` and `FixedWindow`.
    pub fn fits_pair(algorithm: Algorithm) -> bool {
        !matches!(algorithm, Algorithm::SlidingWindow)
    }

    /// `[at, n0]`: the whole state for the algorithms of [`State::fits_pair`].
    pub fn to_pair(self) -> [u64; 2] {
        [self.at, self.n[0]]
    }

    /// The inverse of [`State::to_pair`].
    pub fn from_pair([at, n0]: [u64; 2]) -> Self {
        let mut n = [0; SLOTS];
        n[0] = n0;
        Self { at, n }
    }

    /// The inverse of [`State::to_words`]. Any words are accepted (nothing panics on a corrupt
    /// state; it is merely counted as it reads).
    pub fn from_words(words: [u64; STATE_WORDS]) -> Self {
        let mut n = [0; SLOTS];
        n.copy_from_slice(&words[1..]);
        Self { at: words[0], n }
    }
}

/// The decision on one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub allowed: bool,
    /// Units left after this request (if allowed) — for the IETF `RateLimit` header `r=`.
    /// When denied: units available now (less than the cost).
    pub remaining: u64,
    /// Nanoseconds until the counter is fully replenished / the window resets — header `t=`.
    pub reset_nanos: u64,
    /// When denied: nanoseconds until a request of the same cost could be allowed
    /// (Retry-After); [`NEVER`] if it never can. 0 when allowed.
    pub retry_after_nanos: u64,
}

impl Outcome {
    fn allowed(remaining: u64, reset_nanos: u64) -> Self {
        Self {
            allowed: true,
            remaining,
            reset_nanos,
            retry_after_nanos: 0,
        }
    }

    fn denied(remaining: u64, reset_nanos: u64, retry_after_nanos: u64) -> Self {
        Self {
            allowed: false,
            remaining,
            reset_nanos,
            retry_after_nanos,
        }
    }
}

/// The most cost a [`Algorithm::SlidingWindow`] of `limit` admits in any interval of one
/// window's length: `limit + ⌊limit / 4⌋`.
pub fn sliding_window_bound(limit: u64) -> u64 {
    limit.saturating_add(limit / SUB_WINDOWS)
}

/// Decide one rate without committing: returns the outcome and the state to store if (and only
/// if) the caller commits. A denied or zero-cost request returns `state` unchanged.
#[must_use]
pub fn decide(
    algorithm: Algorithm,
    rate: Rate,
    state: State,
    now_nanos: u64,
    cost: u64,
) -> (Outcome, State) {
    if rate.limit == 0 {
        let outcome = if cost == 0 {
            Outcome::allowed(0, 0)
        } else {
            Outcome::denied(0, 0, NEVER)
        };
        return (outcome, state);
    }
    match algorithm {
        Algorithm::TokenBucket => token_bucket(rate, state, now_nanos, cost),
        Algorithm::SlidingWindow => sliding_window(rate, state, now_nanos, cost),
        Algorithm::FixedWindow => fixed_window(rate, state, now_nanos, cost),
    }
}

/// Decide all rates of a rule at once, all-or-nothing: if every rate allows, `states` are
/// updated and the result is allowed; otherwise `states` are left unchanged. Returns the most
/// restrictive outcome (the denying one with the largest retry_after, or when allowed the one
/// with the least remaining, then the latest reset; the first on ties) and its index in
/// `rates`. Only the first `min(rates.len(), states.len())` pairs are considered; with none,
/// the request is allowed with `remaining = u64::MAX` and index 0.
pub fn decide_all(
    algorithm: Algorithm,
    rates: &[Rate],
    states: &mut [State],
    now_nanos: u64,
    cost: u64,
) -> (Outcome, usize) {
    // New states of the first rates (a rule has at most 4); any further ones are recomputed
    // (no allocation either way).
    let mut pending = [State::default(); 4];
    let mut worst: Option<(Outcome, usize)> = None;
    for (i, (rate, state)) in rates.iter().zip(states.iter()).enumerate() {
        let (outcome, next) = decide(algorithm, *rate, *state, now_nanos, cost);
        if let Some(slot) = pending.get_mut(i) {
            *slot = next;
        }
        if worst.is_none_or(|(w, _)| more_restrictive(&outcome, &w)) {
            worst = Some((outcome, i));
        }
    }
    let Some((outcome, index)) = worst else {
        return (Outcome::allowed(u64::MAX, 0), 0);
    };
    if outcome.allowed {
        for (i, (rate, state)) in rates.iter().zip(states.iter_mut()).enumerate() {
            *state = match pending.get(i) {
                Some(next) => *next,
                None => decide(algorithm, *rate, *state, now_nanos, cost).1,
            };
        }
    }
    (outcome, index)
}

fn more_restrictive(a: &Outcome, b: &Outcome) -> bool {
    match (a.allowed, b.allowed) {
        (false, true) => true,
        (true, false) => false,
        (false, false) => a.retry_after_nanos > b.retry_after_nanos,
        (true, true) => {
            a.remaining < b.remaining
                || (a.remaining == b.remaining && a.reset_nanos > b.reset_nanos)
        }
    }
}

/// Counts `cost` as spent at `now` whether or not the limit allows it: the state after it.
/// Fast global mode uses it to re-apply local admissions on top of the state Redis returned,
/// and Redis's script does the same with the other pods' admissions. Where [`decide`] admits,
/// its new state equals this one.
pub fn consume(algorithm: Algorithm, rate: Rate, state: State, now_nanos: u64, cost: u64) -> State {
    if cost == 0 || rate.limit == 0 {
        return state;
    }
    let window = rate.window_nanos.max(1);
    match algorithm {
        Algorithm::TokenBucket => {
            let limit = u128::from(rate.limit);
            let next = tat_scaled(state, limit)
                .max(u128::from(now_nanos) * limit)
                .saturating_add(u128::from(cost) * u128::from(window));
            State {
                at: sat(next / limit),
                n: [sat(next % limit), 0, 0, 0, 0],
            }
        }
        Algorithm::FixedWindow => {
            let index = (now_nanos / window).max(state.at);
            let used = if index == state.at { state.n[0] } else { 0 };
            State {
                at: index,
                n: [used.saturating_add(cost), 0, 0, 0, 0],
            }
        }
        Algorithm::SlidingWindow => {
            let newest = slot_of(now_nanos, window).max(state.at);
            let mut n = shift(state.n, newest - state.at);
            n[SLOTS - 1] = n[SLOTS - 1].saturating_add(cost);
            State { at: newest, n }
        }
    }
}

/// True when a state has returned to its initial value at `now` (fully replenished / window
/// empty), so the store may evict it: deciding from it then gives exactly what deciding from
/// `State::default()` gives. True exactly when `now_nanos >= idle_at(..)`.
pub fn is_idle(algorithm: Algorithm, rate: Rate, state: State, now_nanos: u64) -> bool {
    now_nanos >= idle_at(algorithm, rate, state)
}

/// The first instant (Unix nanoseconds) from which [`is_idle`] holds if nothing is admitted
/// meanwhile: a natural expiry time for a stored counter.
pub fn idle_at(algorithm: Algorithm, rate: Rate, state: State) -> u64 {
    if rate.limit == 0 {
        return 0;
    }
    let window = rate.window_nanos.max(1);
    match algorithm {
        // TAT is `at + n0/L`; with `n0 < L`, as in every state this module makes, its ceiling
        // is `at` or `at + 1`, without the 128-bit division (a tenth of a decision's compute).
        Algorithm::TokenBucket if state.n[0] < rate.limit => {
            state.at.saturating_add(u64::from(state.n[0] != 0))
        }
        Algorithm::TokenBucket => {
            let limit = u128::from(rate.limit);
            sat(tat_scaled(state, limit).div_ceil(limit))
        }
        Algorithm::FixedWindow => {
            let index = if state.n[0] == 0 {
                state.at
            } else {
                state.at.saturating_add(1)
            };
            sat(u128::from(index) * u128::from(window))
        }
        Algorithm::SlidingWindow => {
            let slot = match state.n.iter().rposition(|&n| n != 0) {
                None => state.at,
                Some(i) => state.at.saturating_add(i as u64 + 1),
            };
            sat(slot_start(slot, window))
        }
    }
}

fn sat(value: u128) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

fn sat_sum(values: &[u64]) -> u64 {
    values.iter().fold(0, |sum, &n| sum.saturating_add(n))
}

/// TAT in units of `1/L` ns.
fn tat_scaled(state: State, limit: u128) -> u128 {
    (u128::from(state.at) * limit).saturating_add(u128::from(state.n[0]))
}

fn token_bucket(rate: Rate, state: State, now: u64, cost: u64) -> (Outcome, State) {
    // Everything in units of 1/L ns: T is then W, and b·T is b·W.
    let limit = u128::from(rate.limit);
    let window = u128::from(rate.window_nanos.max(1));
    let now_scaled = u128::from(now) * limit;
    let base = tat_scaled(state, limit).max(now_scaled);
    let ceiling = now_scaled.saturating_add(u128::from(rate.burst) * window);
    let available = |tat: u128| sat(ceiling.saturating_sub(tat) / window);
    let reset = |tat: u128| sat((tat - now_scaled).div_ceil(limit));
    if cost == 0 {
        return (Outcome::allowed(available(base), reset(base)), state);
    }
    let next = base.saturating_add(u128::from(cost) * window);
    if next <= ceiling {
        let stored = State {
            at: sat(next / limit),
            n: [sat(next % limit), 0, 0, 0, 0],
        };
        return (Outcome::allowed(available(next), reset(next)), stored);
    }
    let retry = if cost > rate.burst {
        NEVER
    } else {
        // Allowed at t iff next ≤ t·L + b·W (here TAT > now, so base = TAT); next > ceiling
        // ≥ b·W, and the first such t is after now.
        let at = (next - u128::from(rate.burst) * window).div_ceil(limit);
        sat(at).saturating_sub(now)
    };
    (Outcome::denied(available(base), reset(base), retry), state)
}

fn fixed_window(rate: Rate, state: State, now: u64, cost: u64) -> (Outcome, State) {
    let window = rate.window_nanos.max(1);
    // A `now` before the state's window counts in that window (time went backwards).
    let index = (now / window).max(state.at);
    let used = if index == state.at { state.n[0] } else { 0 };
    let reset = sat((u128::from(index) + 1) * u128::from(window)).saturating_sub(now);
    let available = rate.limit.saturating_sub(used);
    if cost == 0 {
        return (Outcome::allowed(available, reset), state);
    }
    if cost <= available {
        let stored = State {
            at: index,
            n: [used + cost, 0, 0, 0, 0],
        };
        return (Outcome::allowed(available - cost, reset), stored);
    }
    let retry = if cost > rate.limit { NEVER } else { reset };
    (Outcome::denied(available, reset, retry), state)
}

/// The slot of instant `t`: `⌊t·K/W⌋`.
fn slot_of(t: u64, window: u64) -> u64 {
    sat(u128::from(t) * u128::from(SUB_WINDOWS) / u128::from(window))
}

/// The first instant of slot `i`: `⌈i·W/K⌉` (`t ≥ slot_start(i) ⇔ slot_of(t) ≥ i`).
fn slot_start(i: u64, window: u64) -> u128 {
    (u128::from(i) * u128::from(window)).div_ceil(u128::from(SUB_WINDOWS))
}

/// Counts as seen from `by` slots later: slot `i` moves to `i − by`, slots leave at the front.
fn shift(counts: [u64; SLOTS], by: u64) -> [u64; SLOTS] {
    let mut out = [0; SLOTS];
    if let Ok(by) = usize::try_from(by)
        && by < SLOTS
    {
        out[..SLOTS - by].copy_from_slice(&counts[by..]);
    }
    out
}

fn sliding_window(rate: Rate, state: State, now: u64, cost: u64) -> (Outcome, State) {
    let limit = rate.limit;
    let bound = sliding_window_bound(limit);
    let window = rate.window_nanos.max(1);
    // A `now` before the state's newest slot counts in that slot (time went backwards).
    let newest = slot_of(now, window).max(state.at);
    let mut counts = shift(state.n, newest - state.at);
    // Room left under (R), over the last K slots, and (A), over all K+1, when slots `from..`
    // are still counted (`from` = how many slot edges from now).
    let room = |counts: &[u64; SLOTS], from: usize| {
        let recent = sat_sum(counts.get(from + 1..).unwrap_or_default());
        let all = sat_sum(counts.get(from..).unwrap_or_default());
        limit.saturating_sub(recent).min(bound.saturating_sub(all))
    };
    // Until the newest admitted slot has left check (A), and so (R).
    let reset = |counts: &[u64; SLOTS]| match counts.iter().rposition(|&n| n != 0) {
        None => 0,
        Some(i) => sat(slot_start(newest.saturating_add(i as u64 + 1), window)).saturating_sub(now),
    };
    let available = room(&counts, 0);
    if cost == 0 {
        return (Outcome::allowed(available, reset(&counts)), state);
    }
    if cost <= available {
        counts[SLOTS - 1] = counts[SLOTS - 1].saturating_add(cost);
        let outcome = Outcome::allowed(available - cost, reset(&counts));
        return (
            outcome,
            State {
                at: newest,
                n: counts,
            },
        );
    }
    let retry = if cost > limit {
        NEVER
    } else {
        // Room only grows as slots leave; after SLOTS edges nothing is counted and cost ≤ L ≤ B.
        let edges = (1..SLOTS)
            .find(|&d| cost <= room(&counts, d))
            .unwrap_or(SLOTS);
        sat(slot_start(newest.saturating_add(edges as u64), window)).saturating_sub(now)
    };
    (Outcome::denied(available, reset(&counts), retry), state)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const MS: u64 = 1_000_000;
    const SECOND: u64 = 1_000_000_000;
    const HOUR: u64 = 3600 * SECOND;
    /// A realistic Unix time, a whole number of hours.
    const T0: u64 = 472_222 * HOUR;

    const ALL: [Algorithm; 3] = [
        Algorithm::TokenBucket,
        Algorithm::SlidingWindow,
        Algorithm::FixedWindow,
    ];

    fn rate(limit: u64, window_nanos: u64) -> Rate {
        Rate {
            limit,
            window_nanos,
            burst: limit,
        }
    }

    /// Decides and commits; returns the outcome.
    fn hit(algorithm: Algorithm, rate: Rate, state: &mut State, now: u64, cost: u64) -> Outcome {
        let (outcome, next) = decide(algorithm, rate, *state, now, cost);
        if outcome.allowed {
            *state = next;
        } else {
            assert_eq!(next, *state, "a denied request must not change the state");
        }
        outcome
    }

    /// Asserts that `retry_after` of a request denied at `now` is exact.
    fn assert_retry_exact(algorithm: Algorithm, rate: Rate, state: State, now: u64, cost: u64) {
        let (denied, _) = decide(algorithm, rate, state, now, cost);
        assert!(!denied.allowed, "{algorithm:?}: expected a denial at {now}");
        let retry = denied.retry_after_nanos;
        assert!(retry >= 1 && retry != NEVER, "{algorithm:?}: retry {retry}");
        let at = now + retry;
        assert!(
            decide(algorithm, rate, state, at, cost).0.allowed,
            "{algorithm:?} at +{retry}"
        );
        assert!(
            !decide(algorithm, rate, state, at - 1, cost).0.allowed,
            "{algorithm:?} at +{retry}-1"
        );
    }

    #[test]
    fn gcra_spaces_requests_at_window_over_limit() {
        let r = Rate {
            limit: 10,
            window_nanos: SECOND,
            burst: 1,
        };
        let mut s = State::default();
        for i in 0..50 {
            let o = hit(Algorithm::TokenBucket, r, &mut s, T0 + i * 100 * MS, 1);
            assert!(o.allowed, "request {i}");
            assert_eq!((o.remaining, o.reset_nanos), (0, 100 * MS));
        }
        // TAT is now T0 + 5 s; 50 ms early is too early for burst 1.
        let o = hit(Algorithm::TokenBucket, r, &mut s, T0 + 4950 * MS, 1);
        assert!(!o.allowed);
        assert_eq!(o.retry_after_nanos, 50 * MS);
        assert_retry_exact(Algorithm::TokenBucket, r, s, T0 + 4950 * MS, 1);
        assert!(hit(Algorithm::TokenBucket, r, &mut s, T0 + 5000 * MS, 1).allowed);
    }

    #[test]
    fn gcra_admits_a_burst_then_refills_at_the_rate() {
        let r = Rate {
            limit: 10,
            window_nanos: SECOND,
            burst: 5,
        };
        let mut s = State::default();
        for expected_remaining in [4, 3, 2, 1, 0] {
            let o = hit(Algorithm::TokenBucket, r, &mut s, T0, 1);
            assert!(o.allowed);
            assert_eq!(o.remaining, expected_remaining);
        }
        let o = hit(Algorithm::TokenBucket, r, &mut s, T0, 1);
        assert!(!o.allowed);
        assert_eq!(
            (o.remaining, o.reset_nanos, o.retry_after_nanos),
            (0, 500 * MS, 100 * MS)
        );
        assert!(hit(Algorithm::TokenBucket, r, &mut s, T0 + 100 * MS, 1).allowed);
        assert!(!hit(Algorithm::TokenBucket, r, &mut s, T0 + 100 * MS, 1).allowed);
        // Fully refilled 500 ms after the last admission: a whole burst again, not more.
        assert!(is_idle(Algorithm::TokenBucket, r, s, T0 + 600 * MS));
        assert!(!is_idle(Algorithm::TokenBucket, r, s, T0 + 600 * MS - 1));
        assert!(hit(Algorithm::TokenBucket, r, &mut s, T0 + 600 * MS, 5).allowed);
        assert!(!hit(Algorithm::TokenBucket, r, &mut s, T0 + 600 * MS, 1).allowed);
    }

    #[test]
    fn gcra_is_exact_when_the_interval_is_not_whole_nanoseconds() {
        // 3 per second (T = 333_333_333.3 ns), burst 3, demand 10 per second for 1000 s: the
        // admissions follow ⌊t·3/s⌋ + 3 exactly. Rounding T up would admit one less by then,
        // rounding it down one more (the final request, 1 ns early).
        let r = rate(3, SECOND);
        let mut s = State::default();
        let admitted = (0..10_000)
            .filter(|k| hit(Algorithm::TokenBucket, r, &mut s, T0 + k * 100 * MS, 1).allowed)
            .count();
        assert_eq!(admitted, 3002);
        let o = decide(Algorithm::TokenBucket, r, s, T0 + 1000 * SECOND - 1, 1).0;
        assert_eq!((o.allowed, o.retry_after_nanos), (false, 1));
        assert!(hit(Algorithm::TokenBucket, r, &mut s, T0 + 1000 * SECOND, 1).allowed);
        // 10^15 per millisecond (T = 10^-9 ns): 10^9 units per nanosecond, exactly.
        let huge = rate(1_000_000_000_000_000, MS);
        let mut s = State::default();
        assert!(hit(Algorithm::TokenBucket, huge, &mut s, T0, huge.limit).allowed);
        assert!(!hit(Algorithm::TokenBucket, huge, &mut s, T0 + 1, 1_000_000_001).allowed);
        assert!(hit(Algorithm::TokenBucket, huge, &mut s, T0 + 1, 1_000_000_000).allowed);
        assert!(!hit(Algorithm::TokenBucket, huge, &mut s, T0 + 1, 1).allowed);
    }

    #[test]
    fn fixed_window_resets_at_the_aligned_edge() {
        let r = rate(3, SECOND);
        let mut s = State::default();
        let late = T0 + 999 * MS;
        for remaining in [2, 1, 0] {
            let o = hit(Algorithm::FixedWindow, r, &mut s, late, 1);
            assert!(o.allowed);
            assert_eq!((o.remaining, o.reset_nanos), (remaining, MS));
        }
        let o = hit(Algorithm::FixedWindow, r, &mut s, late, 1);
        assert_eq!(
            (o.allowed, o.retry_after_nanos, o.reset_nanos),
            (false, MS, MS)
        );
        assert_retry_exact(Algorithm::FixedWindow, r, s, late, 1);
        // The documented weakness: a whole new limit one millisecond later.
        for _ in 0..3 {
            assert!(hit(Algorithm::FixedWindow, r, &mut s, T0 + SECOND, 1).allowed);
        }
        assert!(!hit(Algorithm::FixedWindow, r, &mut s, T0 + SECOND, 1).allowed);
        // Windows are aligned to multiples of the window since the epoch, whatever it is.
        let odd = rate(1, 7 * MS);
        let edge = (T0 / (7 * MS) + 1) * 7 * MS;
        let mut s = State::default();
        assert!(hit(Algorithm::FixedWindow, odd, &mut s, edge - 1, 1).allowed);
        assert_eq!(
            decide(Algorithm::FixedWindow, odd, s, edge - 1, 1)
                .0
                .retry_after_nanos,
            1
        );
        assert!(hit(Algorithm::FixedWindow, odd, &mut s, edge, 1).allowed);
    }

    #[test]
    fn sliding_window_blocks_the_edge_double_burst() {
        let r = rate(100, SECOND);
        let bound = sliding_window_bound(100);
        assert_eq!(bound, 125);
        for algorithm in [Algorithm::SlidingWindow, Algorithm::FixedWindow] {
            let mut s = State::default();
            // The whole limit in the last millisecond of an aligned window...
            assert!(hit(algorithm, r, &mut s, T0 + 999 * MS, 100).allowed);
            // ...then one request per millisecond for the next second.
            let mut admitted_within_a_window = 100;
            for ms in 1000..2000 {
                if hit(algorithm, r, &mut s, T0 + ms * MS, 1).allowed && ms < 1999 {
                    admitted_within_a_window += 1;
                }
            }
            // [T0 + 999 ms, T0 + 1999 ms) is one window long.
            match algorithm {
                Algorithm::FixedWindow => assert_eq!(admitted_within_a_window, 200),
                // The stated bound, reached: 25 in the slot [1750 ms, 2000 ms).
                _ => assert_eq!(admitted_within_a_window, bound),
            }
        }
        // At the edge itself, the sliding window refuses and says when to come back: 1750 ms,
        // when the burst's slot has left the last four.
        let mut s = State::default();
        assert!(hit(Algorithm::SlidingWindow, r, &mut s, T0 + 999 * MS, 100).allowed);
        let o = decide(Algorithm::SlidingWindow, r, s, T0 + SECOND, 1).0;
        assert_eq!((o.allowed, o.retry_after_nanos), (false, 750 * MS));
        assert_retry_exact(Algorithm::SlidingWindow, r, s, T0 + SECOND, 1);
        // Small limits are exact: 3 per second never admits 4 within a second.
        let small = rate(3, SECOND);
        let mut s = State::default();
        assert!(hit(Algorithm::SlidingWindow, small, &mut s, T0 + 999 * MS, 3).allowed);
        assert!(!hit(Algorithm::SlidingWindow, small, &mut s, T0 + 1998 * MS, 1).allowed);
        assert!(hit(Algorithm::SlidingWindow, small, &mut s, T0 + 2 * SECOND, 1).allowed);
    }

    #[test]
    fn sliding_window_admits_smooth_traffic_at_the_limit() {
        // 100 per second, one every 10 ms from an arbitrary phase, for 20 s: never throttled.
        let r = rate(100, SECOND);
        let mut s = State::default();
        for i in 0..2000 {
            let o = hit(
                Algorithm::SlidingWindow,
                r,
                &mut s,
                T0 + 3_141_593 + i * 10 * MS,
                1,
            );
            assert!(o.allowed, "request {i}");
        }
        // One more within the same 10 ms is refused.
        assert!(
            !hit(
                Algorithm::SlidingWindow,
                r,
                &mut s,
                T0 + 3_141_593 + 19_995 * MS,
                1
            )
            .allowed
        );
    }

    #[test]
    fn cost_above_the_capacity_is_always_denied() {
        for algorithm in ALL {
            let r = Rate {
                limit: 10,
                window_nanos: SECOND,
                burst: 4,
            };
            let capacity = if algorithm == Algorithm::TokenBucket {
                4
            } else {
                10
            };
            let (o, s) = decide(algorithm, r, State::default(), T0, capacity + 1);
            assert_eq!(
                (o.allowed, o.retry_after_nanos),
                (false, NEVER),
                "{algorithm:?}"
            );
            assert_eq!(s, State::default());
            assert_eq!(o.remaining, capacity, "{algorithm:?}");
            assert!(
                decide(algorithm, r, State::default(), T0, capacity)
                    .0
                    .allowed,
                "{algorithm:?}"
            );
            // Limit 0 denies everything.
            let zero = Rate {
                limit: 0,
                window_nanos: SECOND,
                burst: 0,
            };
            let (o, _) = decide(algorithm, zero, State::default(), T0, 1);
            assert_eq!((o.allowed, o.retry_after_nanos), (false, NEVER));
        }
    }

    #[test]
    fn cost_zero_is_allowed_and_consumes_nothing() {
        for algorithm in ALL {
            let r = rate(2, SECOND);
            let mut s = State::default();
            let (o, next) = decide(algorithm, r, s, T0, 0);
            assert!(o.allowed);
            assert_eq!(
                (o.remaining, o.retry_after_nanos, next),
                (2, 0, State::default())
            );
            assert!(hit(algorithm, r, &mut s, T0, 2).allowed);
            let (o, next) = decide(algorithm, r, s, T0, 0);
            assert_eq!(
                (o.allowed, o.remaining, next),
                (true, 0, s),
                "{algorithm:?}"
            );
            assert!(!decide(algorithm, r, s, T0, 1).0.allowed);
            let zero = rate(0, SECOND);
            assert!(decide(algorithm, zero, State::default(), T0, 0).0.allowed);
        }
    }

    #[test]
    fn retry_after_is_exact() {
        // Windows and limits that do not divide evenly, costs above 1.
        let rates = [
            rate(3, SECOND + 7),
            Rate {
                limit: 7,
                window_nanos: 3 * MS + 1,
                burst: 5,
            },
            rate(1, MS),
        ];
        for algorithm in ALL {
            for r in rates {
                let mut s = State::default();
                let mut now = T0 + 123_456_789;
                let mut denials = 0;
                for step in 0..40u64 {
                    let cost = 1 + step % 2;
                    let o = decide(algorithm, r, s, now, cost).0;
                    if o.allowed {
                        s = decide(algorithm, r, s, now, cost).1;
                    } else if o.retry_after_nanos != NEVER {
                        denials += 1;
                        assert_retry_exact(algorithm, r, s, now, cost);
                    }
                    now += r.window_nanos / 9 + step;
                }
                assert!(denials > 0, "{algorithm:?} {r:?}");
            }
        }
    }

    #[test]
    fn remaining_and_reset_are_sensible() {
        let r = rate(10, SECOND);
        let (o, s) = decide(Algorithm::TokenBucket, r, State::default(), T0, 1);
        assert_eq!((o.remaining, o.reset_nanos), (9, 100 * MS));
        let (o, _) = decide(Algorithm::TokenBucket, r, s, T0 + 50 * MS, 3);
        assert_eq!((o.remaining, o.reset_nanos), (6, 350 * MS));

        let (o, s) = decide(
            Algorithm::FixedWindow,
            r,
            State::default(),
            T0 + 250 * MS,
            4,
        );
        assert_eq!((o.remaining, o.reset_nanos), (6, 750 * MS));
        let (o, _) = decide(Algorithm::FixedWindow, r, s, T0 + SECOND, 1);
        assert_eq!((o.remaining, o.reset_nanos), (9, SECOND));

        // Sliding: a slot is 250 ms; the request's slot [T0, T0+250ms) leaves check (A) 1.25 s
        // after its start.
        let (o, s) = decide(
            Algorithm::SlidingWindow,
            r,
            State::default(),
            T0 + 100 * MS,
            4,
        );
        assert_eq!((o.remaining, o.reset_nanos), (6, 1150 * MS));
        let (o, _) = decide(Algorithm::SlidingWindow, r, s, T0 + 1100 * MS, 1);
        // The first slot has left (R) but not (A) (bound 12): 12 − 4 − 1.
        assert_eq!((o.remaining, o.reset_nanos), (7, 1150 * MS));
        for algorithm in ALL {
            assert_eq!(
                decide(algorithm, r, State::default(), T0, 0).0.reset_nanos == 0,
                algorithm != Algorithm::FixedWindow
            );
        }
    }

    #[test]
    fn decide_all_is_all_or_nothing() {
        let rates = [rate(10, SECOND), rate(1000, HOUR)];
        for algorithm in ALL {
            let mut states = [State::default(); 2];
            let mut now = T0;
            // 10 every 1.5 s: the per-second rate always has room then; the hourly one runs out
            // (after 1000, plus what GCRA refills meanwhile).
            let mut spent = 0;
            let (denial, index) = loop {
                let (o, index) = decide_all(algorithm, &rates, &mut states, now, 10);
                if !o.allowed {
                    break (o, index);
                }
                assert_eq!(
                    o.remaining, 0,
                    "{algorithm:?}: the per-second rate is spent"
                );
                spent += 10;
                assert!(spent <= 1100, "{algorithm:?}");
                now += SECOND + SECOND / 2;
            };
            assert!(spent >= 1000, "{algorithm:?}: {spent}");
            assert_eq!(index, 1, "{algorithm:?}: {denial:?}");
            let before = states;
            assert!(
                !decide_all(algorithm, &rates, &mut states, now, 10)
                    .0
                    .allowed
            );
            assert_eq!(states, before, "{algorithm:?}: the denial consumed nothing");
            // The per-second budget is intact: the whole of it, alone, would pass.
            assert!(
                decide(algorithm, rates[0], states[0], now, 10).0.allowed,
                "{algorithm:?}"
            );

            // And the other way round: a per-second denial does not spend the hourly budget.
            let mut states = [State::default(); 2];
            assert!(decide_all(algorithm, &rates, &mut states, T0, 10).0.allowed);
            let before = states;
            let (o, index) = decide_all(algorithm, &rates, &mut states, T0, 1);
            assert_eq!((o.allowed, index, states), (false, 0, before));
            let (o, _) = decide(algorithm, rates[1], states[1], T0, 990);
            assert_eq!(
                (o.allowed, o.remaining),
                (true, 0),
                "{algorithm:?}: 990 of 1000 left"
            );
        }
        // No rates: allowed.
        let (o, index) = decide_all(Algorithm::TokenBucket, &[], &mut [], T0, 1);
        assert_eq!((o.allowed, index), (true, 0));
    }

    #[test]
    fn time_going_backwards_admits_no_more() {
        for algorithm in ALL {
            let r = rate(5, SECOND);
            let mut s = State::default();
            let later = T0 + 10 * SECOND + 999 * MS;
            assert!(hit(algorithm, r, &mut s, later, 5).allowed);
            for back in [1, MS, SECOND, 10 * SECOND, T0, later] {
                let now = later - back;
                let o = hit(algorithm, r, &mut s, now, 1);
                assert!(!o.allowed, "{algorithm:?} {back} ns back");
                assert_retry_exact(algorithm, r, s, now, 1);
                assert!(!is_idle(algorithm, r, s, now));
            }
        }
    }

    #[test]
    fn degenerate_rates_do_not_panic() {
        let extremes = [0, 1, 2, 3, 4, u64::MAX / 2, u64::MAX - 1, u64::MAX];
        for algorithm in ALL {
            for &limit in &extremes {
                for &window in &extremes {
                    for &now in &extremes {
                        let r = Rate {
                            limit,
                            window_nanos: window,
                            burst: limit,
                        };
                        let mut states = [State::from_words([now; STATE_WORDS]), State::default()];
                        for cost in [0, 1, u64::MAX] {
                            let _ = decide(algorithm, r, states[0], now, cost);
                            let _ = decide_all(algorithm, &[r, r], &mut states, now, cost);
                        }
                        let _ = is_idle(algorithm, r, states[0], now);
                    }
                }
            }
        }
    }

    #[test]
    fn words_round_trip() {
        let s = State {
            at: 7,
            n: [1, 2, 3, 4, 5],
        };
        assert_eq!(s.to_words(), [7, 1, 2, 3, 4, 5]);
        assert_eq!(State::from_words(s.to_words()), s);
    }

    // Property tests. Arrival sequences: gaps mostly forward (around T, up to two windows, or
    // none), sometimes backwards; costs mostly 1, sometimes anything up to the capacity + 1.

    fn config(cases: u32) -> ProptestConfig {
        ProptestConfig {
            cases,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    fn algorithm() -> impl Strategy<Value = Algorithm> {
        prop_oneof![
            Just(Algorithm::TokenBucket),
            Just(Algorithm::SlidingWindow),
            Just(Algorithm::FixedWindow)
        ]
    }

    fn any_rate() -> impl Strategy<Value = Rate> {
        let limit = prop_oneof![1..=8u64, 1..=300u64, 1_000_000..=1_000_000_000_000u64];
        let window = prop_oneof![Just(MS), Just(SECOND), MS..=HOUR];
        (limit, window, 0..3u64, 1..=3u64).prop_map(|(limit, window_nanos, mode, factor)| {
            let burst = match mode {
                0 => limit,
                1 => limit.div_ceil(factor),
                _ => limit * factor,
            };
            Rate {
                limit,
                window_nanos,
                burst,
            }
        })
    }

    fn capacity(algorithm: Algorithm, rate: Rate) -> u64 {
        if algorithm == Algorithm::TokenBucket {
            rate.burst
        } else {
            rate.limit
        }
    }

    /// (signed gap, cost) steps for `rate`.
    fn steps(rate: Rate, cap: u64, len: usize) -> impl Strategy<Value = Vec<(i128, u64)>> {
        let w = rate.window_nanos;
        let t = (w / rate.limit).max(1);
        let gap = prop_oneof![
            4 => (0..=2 * t).prop_map(i128::from),
            3 => (0..=2 * w).prop_map(i128::from),
            2 => Just(0i128),
            1 => (1..=w).prop_map(|g| -i128::from(g)),
        ];
        let small = (cap / 4).max(1);
        let cost = prop_oneof![5 => Just(1u64), 2 => 0..=small, 2 => 0..=cap + 1];
        prop::collection::vec((gap, cost), 1..len)
    }

    fn start() -> impl Strategy<Value = u64> {
        prop_oneof![Just(0u64), Just(T0), 0..=4_000_000_000_000_000_000u64]
    }

    fn advance(now: u64, gap: i128) -> u64 {
        (i128::from(now) + gap).clamp(0, i128::from(u64::MAX)) as u64
    }

    /// A scenario: algorithm, rate, start, steps.
    fn scenario_of(
        algorithm: impl Strategy<Value = Algorithm>,
        len: usize,
    ) -> impl Strategy<Value = (Algorithm, Rate, u64, Vec<(i128, u64)>)> {
        (algorithm, any_rate(), start()).prop_flat_map(move |(a, r, s)| {
            (Just(a), Just(r), Just(s), steps(r, capacity(a, r), len))
        })
    }

    fn scenario(len: usize) -> impl Strategy<Value = (Algorithm, Rate, u64, Vec<(i128, u64)>)> {
        scenario_of(algorithm(), len)
    }

    /// Runs the steps; returns the final state, the final time, and the admissions as
    /// (raw time, effective time, cost).
    fn run(
        algorithm: Algorithm,
        rate: Rate,
        start: u64,
        steps: &[(i128, u64)],
    ) -> (State, u64, Vec<(u64, u64, u64)>) {
        let mut state = State::default();
        let mut now = start;
        let mut latest = 0;
        let mut admitted = Vec::new();
        for &(gap, cost) in steps {
            now = advance(now, gap);
            let (outcome, next) = decide(algorithm, rate, state, now, cost);
            if outcome.allowed {
                assert_eq!(outcome.retry_after_nanos, 0);
                if cost > 0 {
                    latest = latest.max(now);
                    admitted.push((now, latest, cost));
                }
                state = next;
            } else {
                assert_eq!(next, state);
                assert!(cost > 0);
            }
        }
        (state, now, admitted)
    }

    /// Admissions sorted by the chosen time.
    fn by_time(admitted: &[(u64, u64, u64)], effective: bool) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = admitted
            .iter()
            .map(|&(raw, eff, c)| (if effective { eff } else { raw }, c))
            .collect();
        v.sort_unstable();
        v
    }

    /// The most cost admitted in any half-open interval `[s, s + len)`.
    fn max_in_any(sorted: &[(u64, u64)], len: u64) -> u64 {
        let (mut j, mut sum, mut best) = (0, 0u64, 0);
        for i in 0..sorted.len() {
            while j < sorted.len() && sorted[j].0 - sorted[i].0 < len {
                sum += sorted[j].1;
                j += 1;
            }
            best = best.max(sum);
            sum -= sorted[i].1;
        }
        best
    }

    /// The most cost admitted in one aligned bucket `⌊t·per/W⌋`, over `span` consecutive buckets.
    fn max_in_buckets(sorted: &[(u64, u64)], window: u64, per: u64, span: u64) -> u64 {
        let bucket = |t: u64| (u128::from(t) * u128::from(per) / u128::from(window)) as u64;
        let mut best = 0;
        for &(t, _) in sorted {
            let first = bucket(t);
            let sum: u64 = sorted
                .iter()
                .filter(|&&(u, _)| (first..first + span).contains(&bucket(u)))
                .map(|&(_, c)| c)
                .sum();
            best = best.max(sum);
        }
        best
    }

    /// What deciding does: the outcome, and the state stored if it is committed (a denied or
    /// free request stores nothing: its state comes back unchanged).
    fn effect(a: Algorithm, r: Rate, state: State, t: u64, cost: u64) -> (Outcome, Option<State>) {
        let (outcome, next) = decide(a, r, state, t, cost);
        (outcome, (outcome.allowed && cost > 0).then_some(next))
    }

    proptest! {
        #![proptest_config(config(300))]

        /// GCRA: in every closed interval [t1, t2], Σcost·W ≤ burst·W + (t2 − t1)·limit,
        /// exactly, for raw (even out-of-order) timestamps.
        #[test]
        fn token_bucket_interval_bound(
            (_, r, s, steps) in scenario_of(Just(Algorithm::TokenBucket), 120),
        ) {
            let (_, _, admitted) = run(Algorithm::TokenBucket, r, s, &steps);
            let sorted = by_time(&admitted, false);
            for i in 0..sorted.len() {
                let mut sum = 0u128;
                for j in i..sorted.len() {
                    sum += u128::from(sorted[j].1);
                    let d = u128::from(sorted[j].0 - sorted[i].0);
                    let w = u128::from(r.window_nanos);
                    prop_assert!(
                        sum * w <= u128::from(r.burst) * w + d * u128::from(r.limit),
                        "{sum} admitted in {d} ns"
                    );
                }
            }
        }

        /// FixedWindow: at most `limit` per aligned window (effective time).
        #[test]
        fn fixed_window_bound(
            (_, r, s, steps) in scenario_of(Just(Algorithm::FixedWindow), 120),
        ) {
            let (_, _, admitted) = run(Algorithm::FixedWindow, r, s, &steps);
            let sorted = by_time(&admitted, true);
            prop_assert!(max_in_buckets(&sorted, r.window_nanos, 1, 1) <= r.limit);
        }

        /// SlidingWindow: at most `limit + ⌊limit/4⌋` in any interval of one window's length, at
        /// most `limit` per aligned window and per window starting at a slot edge.
        #[test]
        fn sliding_window_bounds(
            (_, r, s, steps) in scenario_of(Just(Algorithm::SlidingWindow), 120),
        ) {
            let (_, _, admitted) = run(Algorithm::SlidingWindow, r, s, &steps);
            let sorted = by_time(&admitted, true);
            let any = max_in_any(&sorted, r.window_nanos);
            prop_assert!(any <= r.limit + r.limit / 4, "{any} in one window");
            prop_assert!(max_in_buckets(&sorted, r.window_nanos, 1, 1) <= r.limit);
            prop_assert!(max_in_buckets(&sorted, r.window_nanos, SUB_WINDOWS, SUB_WINDOWS) <= r.limit);
        }

        /// Not overly strict: a request within the capacity is admitted once the counter has had
        /// time to recover (⌈b·W/L⌉ for GCRA, the window's end, ⌈5W/4⌉ for the slots), and the
        /// counter is idle by then.
        #[test]
        fn recovers_after_the_documented_time(
            (a, r, s, steps) in scenario(60),
            cost in 1..=8u64,
            extra in 0..=1000u64,
        ) {
            let (state, now, admitted) = run(a, r, s, &steps);
            let cost = cost.min(capacity(a, r));
            let last = admitted.iter().map(|&(raw, eff, _)| raw.max(eff)).max().unwrap_or(0);
            let w = u128::from(r.window_nanos);
            let recovered = match a {
                Algorithm::TokenBucket => last + sat((u128::from(r.burst) * w).div_ceil(u128::from(r.limit))),
                Algorithm::FixedWindow => sat((u128::from(last) / w + 1) * w),
                Algorithm::SlidingWindow => last + sat((5 * w).div_ceil(4)),
            };
            if !admitted.is_empty() {
                prop_assert!(idle_at(a, r, state) <= recovered);
            }
            let at = recovered.max(now) + extra;
            prop_assert!(is_idle(a, r, state, at));
            prop_assert!(decide(a, r, state, at, cost).0.allowed);
        }

        /// retry_after is exact after any history: allowed at now + retry, denied 1 ns before;
        /// NEVER only above the capacity.
        #[test]
        fn retry_after_is_honoured(
            (a, r, s, steps) in scenario(80),
            gap in 0..=2_000_000_000u64,
            cost in 1..=10u64,
        ) {
            let (state, now, _) = run(a, r, s, &steps);
            let now = now.saturating_add(gap % (2 * r.window_nanos));
            let cost = cost.min(capacity(a, r) + 1);
            let (o, _) = decide(a, r, state, now, cost);
            if !o.allowed {
                if cost > capacity(a, r) {
                    prop_assert_eq!(o.retry_after_nanos, NEVER);
                } else {
                    prop_assert!(o.retry_after_nanos >= 1 && o.retry_after_nanos < NEVER);
                    let at = now + o.retry_after_nanos;
                    prop_assert!(decide(a, r, state, at, cost).0.allowed);
                    prop_assert!(!decide(a, r, state, at - 1, cost).0.allowed);
                }
            }
        }

        /// is_idle holds exactly from idle_at on, and an idle state decides like a new one.
        #[test]
        fn idle_states_decide_like_new_ones(
            (a, r, s, steps) in scenario(60),
            probes in prop::collection::vec((-1_000i64..=3_000, 0..=10u64), 1..8),
        ) {
            let (state, now, _) = run(a, r, s, &steps);
            let idle = idle_at(a, r, state);
            prop_assert!(is_idle(a, r, state, idle));
            if idle > 0 {
                // idle_at is the first such instant: one nanosecond before, the state still
                // decides differently from a new one.
                let t = idle - 1;
                prop_assert!(!is_idle(a, r, state, t));
                let new = State::default();
                prop_assert!(
                    effect(a, r, state, t, 0) != effect(a, r, new, t, 0)
                        || effect(a, r, state, t, 1) != effect(a, r, new, t, 1)
                );
            }
            for (permille, cost) in probes {
                // Probe around now and idle_at, from a window before to three windows after.
                let offset = i128::from(r.window_nanos) * i128::from(permille) / 1000;
                for t in [advance(now, offset), advance(idle, offset / 10), idle] {
                    if is_idle(a, r, state, t) {
                        prop_assert_eq!(
                            effect(a, r, state, t, cost),
                            effect(a, r, State::default(), t, cost)
                        );
                    }
                }
            }
        }

        /// decide_all over 1 to 4 rates: allowed iff every rate allows; then each state is what
        /// decide gives, else nothing changes; the outcome is the most restrictive; its retry is
        /// exact.
        #[test]
        fn decide_all_matches_the_rates_one_by_one(
            a in algorithm(),
            rates in prop::collection::vec(any_rate(), 1..=4),
            s in start(),
            gaps in prop::collection::vec((0..=3_000u64, 1..=4u64), 1..80),
        ) {
            let mut states = vec![State::default(); rates.len()];
            let shortest = rates.iter().map(|r| r.window_nanos).min().unwrap_or(1);
            let mut now = s;
            for (permille, cost) in gaps {
                now = now.saturating_add(shortest / 1000 * permille);
                let before = states.clone();
                let singles: Vec<_> = rates.iter().zip(&before).map(|(r, st)| decide(a, *r, *st, now, cost)).collect();
                let (o, index) = decide_all(a, &rates, &mut states, now, cost);
                prop_assert_eq!(o, singles[index].0);
                let all = singles.iter().all(|(o, _)| o.allowed);
                prop_assert_eq!(o.allowed, all);
                if all {
                    for (st, (_, next)) in states.iter().zip(&singles) {
                        prop_assert_eq!(st, next);
                    }
                    prop_assert!(singles.iter().all(|(x, _)| x.remaining >= o.remaining));
                } else {
                    prop_assert_eq!(&states, &before);
                    prop_assert!(singles.iter().all(|(x, _)| x.allowed || x.retry_after_nanos <= o.retry_after_nanos));
                    if o.retry_after_nanos != NEVER {
                        let at = now + o.retry_after_nanos;
                        let mut copy = before.clone();
                        prop_assert!(decide_all(a, &rates, &mut copy, at, cost).0.allowed);
                        let mut copy = before.clone();
                        prop_assert!(!decide_all(a, &rates, &mut copy, at - 1, cost).0.allowed);
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(config(2000))]

        /// Any input at all, including corrupt states and absurd rates: no panic.
        #[test]
        fn never_panics(
            a in algorithm(),
            limit in any::<u64>(),
            window_nanos in any::<u64>(),
            burst in any::<u64>(),
            words in any::<[u64; STATE_WORDS]>(),
            now in any::<u64>(),
            cost in any::<u64>(),
        ) {
            let r = Rate { limit, window_nanos, burst };
            let state = State::from_words(words);
            let (o, _) = decide(a, r, state, now, cost);
            prop_assert!(o.allowed || cost > 0);
            let _ = is_idle(a, r, state, now);
            let _ = idle_at(a, r, state);
            let mut states = [state, State::default()];
            let _ = decide_all(a, &[r, r], &mut states, now, cost);
            let _ = consume(a, r, state, now, cost);
        }

        /// `consume` is `decide`'s commit wherever `decide` admits, and otherwise never leaves
        /// more room than before.
        #[test]
        fn consume_agrees_with_decide(
            a in algorithm(),
            r in any_rate(),
            history in proptest::collection::vec((0..=2 * SECOND, 0..=4u64), 0..20),
            cost in 0..=8u64,
        ) {
            let mut state = State::default();
            let mut now = T0;
            for (gap, c) in history {
                now += gap;
                state = consume(a, r, state, now, c);
            }
            let (outcome, next) = decide(a, r, state, now, cost);
            let consumed = consume(a, r, state, now, cost);
            if outcome.allowed {
                prop_assert_eq!(next, consumed);
            } else {
                let before = decide(a, r, state, now, 1).0.remaining;
                prop_assert!(decide(a, r, consumed, now, 1).0.remaining <= before);
            }
        }
    }
}
