//! Declarative signing policy. Every rule has a stable id and a refusal message; a refusal
//! names its rule (gRPC `PERMISSION_DENIED`). `warn_only` (global or per rule) logs what would
//! have been refused and lets it pass, for rollout.
//!
//! Rate limits count what was *released*: a check that passes returns an [`Admission`] holding a
//! reservation in every rate window it passed; the caller commits it once the partial signature
//! (or attestation) is journaled and about to leave. Dropping an uncommitted admission (a later
//! rule refused, signing failed, the journal failed) gives the reservations back. Reservations
//! count while held, so concurrent requests can never together exceed a limit. After a restart
//! the windows are refilled from the audit journal ([`Policy::replay_released`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::Deserialize;
use shared::musig::{KeyAggContext, SignatureFormat, Tweak};
use shared::wire::SessionContext;

/// `[policy]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Log refusals instead of enforcing them (every rule).
    #[serde(default)]
    pub warn_only: bool,
    /// Refuse nonces and partial signatures for a local key that no session rule names in its
    /// `keys` list (rules without `keys` apply to every key but do not count as naming it).
    #[serde(default)]
    pub default_deny: bool,
    /// Rules, all of which must pass.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

/// One `[[policy.rules]]` entry. `kind` selects which other fields apply:
/// `allowed_formats` (`formats`), `allowed_key_sets` (`key_sets` and/or `aggregate_keys`),
/// `allowed_output_keys` (`output_keys`), `allowed_tweaks` (`tweaks`), `rate_limit`
/// (`max_signatures`, `window_secs`), `max_message_length` (`max_bytes`), `attest_peer`
/// (`max_attestations` with `window_secs`, and/or `max_ttl_secs`), `nonce_pool` (`key_sets`
/// and/or `aggregate_keys`: the only key sets whose nonces may be pooled for one-round signing).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Stable id, quoted in refusals and logs.
    pub id: String,
    /// Rule kind.
    pub kind: String,
    /// Refusal message (a default is derived from the rule otherwise).
    #[serde(default)]
    pub message: Option<String>,
    /// Log instead of refusing.
    #[serde(default)]
    pub warn_only: bool,
    /// Local keys (hex) the rule applies to; empty = every key.
    #[serde(default)]
    pub keys: Vec<String>,
    /// `allowed_formats`: `bip340`, `lotus`.
    #[serde(default)]
    pub formats: Option<Vec<String>>,
    /// `allowed_key_sets`: exact co-signer sets (hex keys, any order).
    #[serde(default)]
    pub key_sets: Option<Vec<Vec<String>>>,
    /// `allowed_key_sets`: allowed aggregate keys (33-byte hex, before tweaks).
    #[serde(default)]
    pub aggregate_keys: Option<Vec<String>>,
    /// `allowed_output_keys`: allowed keys after every tweak — 33-byte hex (exact) or 32-byte
    /// x-only hex (matches either parity, as BIP340 verifiers see it).
    #[serde(default)]
    pub output_keys: Option<Vec<String>>,
    /// `allowed_tweaks`: which tweak kinds a session may carry: `none` (no tweak at all),
    /// `plain`, `xonly`, `taproot`. A session passes when it has no tweak and `none` is listed,
    /// or when every tweak it has is of a listed kind.
    #[serde(default)]
    pub tweaks: Option<Vec<String>>,
    /// `rate_limit`: most partial signatures per key per window.
    #[serde(default)]
    pub max_signatures: Option<u32>,
    /// `rate_limit`, `attest_peer`: window length, seconds.
    #[serde(default)]
    pub window_secs: Option<u64>,
    /// `max_message_length`: longest message, bytes.
    #[serde(default)]
    pub max_bytes: Option<usize>,
    /// `attest_peer`: most attestations per key per window.
    #[serde(default)]
    pub max_attestations: Option<u32>,
    /// `attest_peer`: longest attestation lifetime, seconds.
    #[serde(default)]
    pub max_ttl_secs: Option<u64>,
}

/// Tweak kinds a policy can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TweakKind {
    None,
    Plain,
    XOnly,
    Taproot,
}

impl TweakKind {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "none" => TweakKind::None,
            "plain" => TweakKind::Plain,
            "xonly" | "x_only" => TweakKind::XOnly,
            "taproot" => TweakKind::Taproot,
            _ => return None,
        })
    }
    fn of(t: &Tweak) -> Self {
        match t {
            Tweak::Plain(_) => TweakKind::Plain,
            Tweak::XOnly(_) => TweakKind::XOnly,
            Tweak::Taproot { .. } => TweakKind::Taproot,
        }
    }
    fn as_str(self) -> &'static str {
        match self {
            TweakKind::None => "none",
            TweakKind::Plain => "plain",
            TweakKind::XOnly => "xonly",
            TweakKind::Taproot => "taproot",
        }
    }
}

/// An output-key allow-list entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OutputKey {
    Exact([u8; 33]),
    XOnly([u8; 32]),
}

impl OutputKey {
    fn matches(&self, key: &[u8; 33]) -> bool {
        match self {
            OutputKey::Exact(k) => k == key,
            OutputKey::XOnly(x) => key.get(1..) == Some(x.as_slice()),
        }
    }
}

#[derive(Debug, Clone)]
enum Kind {
    Formats(Vec<SignatureFormat>),
    KeySets {
        sets: Vec<Vec<[u8; 33]>>,
        aggregates: Vec<[u8; 33]>,
    },
    OutputKeys(Vec<OutputKey>),
    Tweaks(Vec<TweakKind>),
    RateLimit {
        max: u32,
        window_ms: i64,
    },
    MaxMessage(usize),
    /// Allows pooled nonces (one-round signing) for these key sets; restricts nothing else.
    NoncePool {
        sets: Vec<Vec<[u8; 33]>>,
        aggregates: Vec<[u8; 33]>,
    },
    Attest {
        rate: Option<(u32, i64)>,
        max_ttl_ms: Option<i64>,
    },
}

#[derive(Debug, Clone)]
struct Rule {
    id: String,
    message: String,
    warn_only: bool,
    keys: Vec<[u8; 33]>,
    kind: Kind,
}

impl Rule {
    fn applies_to(&self, key: &[u8; 33]) -> bool {
        self.keys.is_empty() || self.keys.contains(key)
    }
}

/// A refusal: the rule id and its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy rule {rule}: {message}")]
pub struct Refusal {
    /// Rule id.
    pub rule: String,
    /// Message.
    pub message: String,
}

/// Which call is being checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// GenerateNonce: every session rule except rate limits.
    Nonce,
    /// PartialSign: every session rule; passing rate limits reserve a slot.
    Sign,
    /// GenerateNonce for a nonce pool: as `Nonce`, and a `nonce_pool` rule must allow the key
    /// set.
    PoolNonce,
}

/// What a released item was, for refilling rate windows from the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// A partial signature.
    PartialSignature,
    /// A peer attestation.
    Attestation,
}

/// The built-in limit on attestations per key, which holds with no policy configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttestLimit {
    /// Most attestations per key per window.
    pub max: u32,
    /// Window, ms.
    pub window_ms: i64,
}

impl Default for AttestLimit {
    /// 720 per hour per key: one every 5 s sustained, far above a coordinator renewing well
    /// before expiry, and a bound on journal growth (about 0.3 MB per key per hour at most).
    fn default() -> Self {
        AttestLimit {
            max: 720,
            window_ms: 3_600_000,
        }
    }
}

/// Which rate window an entry belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Window {
    Rule(usize),
    BuiltinAttest,
}

/// Release times (ms) with the id of the admission that holds each entry, per (window, key).
type Usage = HashMap<(Window, [u8; 33]), VecDeque<(i64, u64)>>;

#[derive(Debug, Default)]
struct Counters {
    usage: Usage,
    next_id: u64,
}

/// The compiled policy with its rate-limit counters.
#[derive(Debug)]
pub struct Policy {
    warn_only: bool,
    default_deny: bool,
    rules: Vec<Rule>,
    attest_limit: AttestLimit,
    // Short critical sections only: push/pop of timestamps.
    counters: Mutex<Counters>,
}

/// Reservations in rate windows, held until the guarded item is released ([`Admission::commit`])
/// or given back when dropped uncommitted.
#[derive(Debug)]
#[must_use = "an admission gives its reservations back when dropped; commit it once released"]
pub struct Admission<'p> {
    policy: &'p Policy,
    held: Vec<((Window, [u8; 33]), u64)>,
}

impl Admission<'_> {
    /// The item was released: keep the reservations as counted usage.
    pub fn commit(mut self) {
        self.held.clear();
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let mut c = self.policy.lock();
        for (slot, id) in self.held.drain(..) {
            if let Some(q) = c.usage.get_mut(&slot) {
                q.retain(|(_, i)| *i != id);
            }
        }
    }
}

mod compile;

impl Policy {
    /// A policy with no rules (the built-in attestation limit still holds).
    pub fn allow_all() -> Self {
        Policy {
            warn_only: false,
            default_deny: false,
            rules: Vec::new(),
            attest_limit: AttestLimit::default(),
            counters: Mutex::new(Counters::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn warns(&self, rule: &Rule) -> bool {
        self.warn_only || rule.warn_only
    }

    /// Reserve one entry in a rate window if it has room (or `force`). Returns whether it had
    /// room.
    fn reserve(
        c: &mut Counters,
        adm: &mut Admission<'_>,
        slot: (Window, [u8; 33]),
        max: u32,
        window_ms: i64,
        now: i64,
        force: bool,
    ) -> bool {
        let id = c.next_id;
        let q = c.usage.entry(slot).or_default();
        while q
            .front()
            .is_some_and(|(t, _)| now.saturating_sub(*t) >= window_ms)
        {
            q.pop_front();
        }
        let ok = q.len() < max as usize;
        if ok || force {
            q.push_back((now, id));
            c.next_id += 1;
            adm.held.push((slot, id));
        }
        ok
    }

    /// Turn a failed rule into a refusal, or log it when warn-only.
    fn verdict(&self, rule: &Rule, key: &[u8; 33]) -> Result<(), Refusal> {
        if self.warns(rule) {
            tracing::warn!(rule = %rule.id, key = %hex::encode(key), "policy would refuse (warn-only): {}", rule.message);
            Ok(())
        } else {
            Err(Refusal {
                rule: rule.id.clone(),
                message: rule.message.clone(),
            })
        }
    }

    /// Check a session request for `key`. At [`Stage::Sign`] passing rate limits reserve a slot
    /// in the returned [`Admission`].
    ///
    /// # Errors
    /// The first enforced [`Refusal`]. Warn-only refusals are logged and passed.
    pub fn check_session(
        &self,
        stage: Stage,
        key: &[u8; 33],
        ctx: &SessionContext,
        key_agg: &KeyAggContext,
    ) -> Result<Admission<'_>, Refusal> {
        let mut adm = Admission {
            policy: self,
            held: Vec::new(),
        };
        let session_rules = || {
            self.rules
                .iter()
                .filter(|r| !matches!(r.kind, Kind::Attest { .. } | Kind::NoncePool { .. }))
        };
        if self.default_deny && !session_rules().any(|r| r.keys.contains(key)) {
            return Err(Refusal {
                rule: "default_deny".into(),
                message: format!(
                    "no policy rule names key {} and policy.default_deny is on",
                    hex::encode(key)
                ),
            });
        }
        let aggregate = key_agg.aggregate_key();
        let output = key_agg.output_key();
        let now = crate::journal::now_ms();
        for (i, rule) in self.rules.iter().enumerate() {
            if !rule.applies_to(key) {
                continue;
            }
            let pass = match &rule.kind {
                Kind::Formats(f) => f.contains(&ctx.format),
                Kind::KeySets { sets, aggregates } => {
                    sets.contains(&ctx.signer_keys) || aggregates.contains(&aggregate)
                }
                Kind::OutputKeys(list) => list.iter().any(|k| k.matches(&output)),
                Kind::Tweaks(allowed) => {
                    if ctx.tweaks.is_empty() {
                        allowed.contains(&TweakKind::None)
                    } else {
                        ctx.tweaks
                            .iter()
                            .all(|t| allowed.contains(&TweakKind::of(t)))
                    }
                }
                Kind::MaxMessage(n) => ctx.message.len() <= *n,
                Kind::RateLimit { max, window_ms } => {
                    stage != Stage::Sign || {
                        let mut c = self.lock();
                        Self::reserve(
                            &mut c,
                            &mut adm,
                            (Window::Rule(i), *key),
                            *max,
                            *window_ms,
                            now,
                            self.warns(rule),
                        )
                    }
                }
                Kind::Attest { .. } | Kind::NoncePool { .. } => true,
            };
            if !pass {
                self.verdict(rule, key)?;
            }
        }
        // Pooled nonces are an opt-in, weaker mode: a nonce_pool rule must name the key set,
        // and warn-only never stands in for it.
        if stage == Stage::PoolNonce
            && !self.rules.iter().any(|r| match &r.kind {
                Kind::NoncePool { sets, aggregates } => {
                    r.applies_to(key)
                        && (sets.contains(&ctx.signer_keys) || aggregates.contains(&aggregate))
                }
                _ => false,
            })
        {
            return Err(Refusal {
                rule: "nonce_pool".into(),
                message: "no nonce_pool policy rule allows pooled nonces (one-round signing) for this key set".into(),
            });
        }
        Ok(adm)
    }

    /// Check an attestation request for `key` with lifetime `ttl_ms`: the built-in limit, then
    /// `attest_peer` rules. Passing rate limits reserve a slot in the returned [`Admission`].
    ///
    /// # Errors
    /// The built-in limit (rule id `builtin_attest_rate`) or the first enforced [`Refusal`].
    pub fn check_attestation(&self, key: &[u8; 33], ttl_ms: i64) -> Result<Admission<'_>, Refusal> {
        let mut adm = Admission {
            policy: self,
            held: Vec::new(),
        };
        let now = crate::journal::now_ms();
        {
            let mut c = self.lock();
            let AttestLimit { max, window_ms } = self.attest_limit;
            if !Self::reserve(
                &mut c,
                &mut adm,
                (Window::BuiltinAttest, *key),
                max,
                window_ms,
                now,
                false,
            ) {
                return Err(Refusal {
                    rule: "builtin_attest_rate".into(),
                    message: format!(
                        "more than {max} attestations for this key in {} s",
                        window_ms / 1000
                    ),
                });
            }
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let Kind::Attest { rate, max_ttl_ms } = &rule.kind else {
                continue;
            };
            if !rule.applies_to(key) {
                continue;
            }
            let ttl_ok = max_ttl_ms.is_none_or(|m| ttl_ms <= m);
            let rate_ok = match rate {
                Some((max, window_ms)) => {
                    let mut c = self.lock();
                    Self::reserve(
                        &mut c,
                        &mut adm,
                        (Window::Rule(i), *key),
                        *max,
                        *window_ms,
                        now,
                        self.warns(rule),
                    )
                }
                None => true,
            };
            if !(ttl_ok && rate_ok) {
                self.verdict(rule, key)?;
            }
        }
        Ok(adm)
    }

    /// Count an item released at `time_ms` (read back from the audit journal at start) in every
    /// rate window that covers `key`, so limits survive a restart.
    pub fn replay_released(&self, what: Released, key: &[u8; 33], time_ms: i64) {
        let now = crate::journal::now_ms();
        let mut c = self.lock();
        let push = |c: &mut Counters, slot: (Window, [u8; 33]), window_ms: i64| {
            if now.saturating_sub(time_ms) < window_ms {
                let id = c.next_id;
                c.next_id += 1;
                let q = c.usage.entry(slot).or_default();
                // Journal order is time order; keep the queue sorted regardless.
                let at = q.partition_point(|(t, _)| *t <= time_ms);
                q.insert(at, (time_ms, id));
            }
        };
        if what == Released::Attestation {
            push(
                &mut c,
                (Window::BuiltinAttest, *key),
                self.attest_limit.window_ms,
            );
        }
        for (i, rule) in self.rules.iter().enumerate() {
            if !rule.applies_to(key) {
                continue;
            }
            match (&rule.kind, what) {
                (Kind::RateLimit { window_ms, .. }, Released::PartialSignature)
                | (
                    Kind::Attest {
                        rate: Some((_, window_ms)),
                        ..
                    },
                    Released::Attestation,
                ) => push(&mut c, (Window::Rule(i), *key), *window_ms),
                _ => {}
            }
        }
    }

    /// The longest rate window of any kind, ms: how far back the journal must be replayed.
    pub fn longest_window_ms(&self) -> i64 {
        self.rules
            .iter()
            .filter_map(|r| match r.kind {
                Kind::RateLimit { window_ms, .. }
                | Kind::Attest {
                    rate: Some((_, window_ms)),
                    ..
                } => Some(window_ms),
                _ => None,
            })
            .chain([self.attest_limit.window_ms])
            .max()
            .unwrap_or(0)
    }

    /// Entries currently counted in rate windows (for tests and metrics).
    pub fn counted(&self) -> usize {
        self.lock().usage.values().map(VecDeque::len).sum()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use shared::musig::SecretKey;

    fn session() -> (SessionContext, KeyAggContext, [u8; 33]) {
        let mut keys: Vec<[u8; 33]> = [[1u8; 32], [2u8; 32]]
            .iter()
            .map(|b| SecretKey::from_bytes(b).unwrap().public_key())
            .collect();
        keys.sort_unstable();
        let ctx = SessionContext {
            signer_keys: keys.clone(),
            message: vec![0; 32],
            format: SignatureFormat::Bip340,
            tweaks: vec![],
            batch: Vec::new(),
        };
        let ka = ctx.key_agg().unwrap();
        (ctx, ka, keys[0])
    }

    fn rule(id: &str, max: u32, keys: Vec<String>) -> RuleConfig {
        RuleConfig {
            id: id.into(),
            kind: "rate_limit".into(),
            message: None,
            warn_only: false,
            keys,
            formats: None,
            key_sets: None,
            aggregate_keys: None,
            output_keys: None,
            tweaks: None,
            max_signatures: Some(max),
            window_secs: Some(3600),
            max_bytes: None,
            max_attestations: None,
            max_ttl_secs: None,
        }
    }

    #[test]
    fn a_slot_is_consumed_only_when_the_signature_is_released() {
        let (ctx, ka, key) = session();
        let policy = PolicyConfig {
            warn_only: false,
            default_deny: false,
            rules: vec![
                rule("wide", 3, vec![]),
                rule("narrow", 1, vec![hex::encode(key)]),
            ],
        }
        .compile()
        .unwrap();
        policy
            .check_session(Stage::Sign, &key, &ctx, &ka)
            .unwrap()
            .commit();
        assert_eq!(policy.counted(), 2, "one entry in each window");
        // The narrow rule refuses the next four: the wide rule must not count them.
        for _ in 0..4 {
            let r = policy
                .check_session(Stage::Sign, &key, &ctx, &ka)
                .unwrap_err();
            assert_eq!(r.rule, "narrow");
        }
        assert_eq!(policy.counted(), 2);
        // Signing failed after the checks (admission dropped uncommitted): nothing counted.
        let other = ctx.signer_keys[1];
        drop(
            policy
                .check_session(Stage::Sign, &other, &ctx, &ka)
                .unwrap(),
        );
        assert_eq!(policy.counted(), 2);
        // Held reservations count while held: concurrent requests cannot overshoot.
        let a = policy
            .check_session(Stage::Sign, &other, &ctx, &ka)
            .unwrap();
        let b = policy
            .check_session(Stage::Sign, &other, &ctx, &ka)
            .unwrap();
        let c = policy
            .check_session(Stage::Sign, &other, &ctx, &ka)
            .unwrap();
        assert_eq!(
            policy
                .check_session(Stage::Sign, &other, &ctx, &ka)
                .unwrap_err()
                .rule,
            "wide"
        );
        a.commit();
        drop((b, c));
        assert_eq!(policy.counted(), 3);
        // Nonce requests never count, even against a full window.
        policy
            .check_session(Stage::Nonce, &key, &ctx, &ka)
            .unwrap()
            .commit();
        assert_eq!(policy.counted(), 3);
    }

    #[test]
    fn replayed_releases_fill_only_live_windows() {
        let (_, _, key) = session();
        let policy = PolicyConfig {
            warn_only: false,
            default_deny: false,
            rules: vec![rule("wide", 3, vec![])],
        }
        .compile()
        .unwrap();
        let now = crate::journal::now_ms();
        policy.replay_released(Released::PartialSignature, &key, now - 10_000);
        policy.replay_released(Released::PartialSignature, &key, now - 7_200_000);
        policy.replay_released(Released::Attestation, &key, now - 10_000);
        // One signature in the rule's window, one attestation in the built-in window.
        assert_eq!(policy.counted(), 2);
        assert_eq!(policy.longest_window_ms(), 3_600_000);
    }
}
