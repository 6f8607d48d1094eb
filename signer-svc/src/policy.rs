//! Declarative signing policy. Every rule has a stable id and a refusal message; a refusal
//! names its rule (gRPC `PERMISSION_DENIED`). `warn_only` (global or per rule) logs what would
//! have been refused and lets it pass, for rollout.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;
use shared::musig::SignatureFormat;
use shared::wire::SessionContext;

/// `[policy]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Log refusals instead of enforcing them (every rule).
    #[serde(default)]
    pub warn_only: bool,
    /// Rules, all of which must pass.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

/// One `[[policy.rules]]` entry. `kind` selects which other fields apply:
/// `allowed_formats` (`formats`), `allowed_key_sets` (`key_sets` and/or `aggregate_keys`),
/// `rate_limit` (`max_signatures`, `window_secs`), `max_message_length` (`max_bytes`).
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
    /// `rate_limit`: most partial signatures per key per window.
    #[serde(default)]
    pub max_signatures: Option<u32>,
    /// `rate_limit`: window length, seconds.
    #[serde(default)]
    pub window_secs: Option<u64>,
    /// `max_message_length`: longest message, bytes.
    #[serde(default)]
    pub max_bytes: Option<usize>,
}

#[derive(Debug, Clone)]
enum Kind {
    Formats(Vec<SignatureFormat>),
    KeySets {
        sets: Vec<Vec<[u8; 33]>>,
        aggregates: Vec<[u8; 33]>,
    },
    RateLimit {
        max: u32,
        window: Duration,
    },
    MaxMessage(usize),
}

#[derive(Debug, Clone)]
struct Rule {
    id: String,
    message: String,
    warn_only: bool,
    keys: Vec<[u8; 33]>,
    kind: Kind,
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
    /// GenerateNonce: every rule except rate limits.
    Nonce,
    /// PartialSign: every rule; a passing rate limit counts the signature.
    Sign,
}

/// Signature times per (rule index, key), for rate limits.
type Usage = HashMap<(usize, [u8; 33]), VecDeque<Instant>>;

/// The compiled policy with its rate-limit counters.
#[derive(Debug)]
pub struct Policy {
    warn_only: bool,
    rules: Vec<Rule>,
    // Short critical sections only: push/pop of timestamps.
    usage: Mutex<Usage>,
}

fn key_hex(s: &str) -> Option<[u8; 33]> {
    hex::decode(s).ok()?.try_into().ok()
}

impl PolicyConfig {
    /// Every problem, each naming the rule and field.
    pub fn validate(&self) -> Vec<String> {
        match self.compile() {
            Ok(_) => Vec::new(),
            Err(e) => e,
        }
    }

    /// Build the policy.
    ///
    /// # Errors
    /// Every problem found.
    pub fn compile(&self) -> Result<Policy, Vec<String>> {
        let mut errs = Vec::new();
        let mut ids = HashSet::new();
        let mut rules = Vec::new();
        for (i, r) in self.rules.iter().enumerate() {
            let at = format!("policy.rules[{i}] ({})", r.id);
            if r.id.is_empty() {
                errs.push(format!("policy.rules[{i}].id: must not be empty"));
            }
            if !ids.insert(r.id.clone()) {
                errs.push(format!("{at}.id: duplicate rule id"));
            }
            let keys: Vec<[u8; 33]> = r
                .keys
                .iter()
                .filter_map(|k| {
                    let parsed = key_hex(k);
                    if parsed.is_none() {
                        errs.push(format!("{at}.keys: {k:?} is not a 33-byte hex key"));
                    }
                    parsed
                })
                .collect();
            let used = [
                ("formats", r.formats.is_some()),
                ("key_sets", r.key_sets.is_some()),
                ("aggregate_keys", r.aggregate_keys.is_some()),
                ("max_signatures", r.max_signatures.is_some()),
                ("window_secs", r.window_secs.is_some()),
                ("max_bytes", r.max_bytes.is_some()),
            ];
            let allowed: &[&str] = match r.kind.as_str() {
                "allowed_formats" => &["formats"],
                "allowed_key_sets" => &["key_sets", "aggregate_keys"],
                "rate_limit" => &["max_signatures", "window_secs"],
                "max_message_length" => &["max_bytes"],
                other => {
                    errs.push(format!(
                        "{at}.kind: unknown kind {other:?} (allowed_formats, allowed_key_sets, rate_limit, max_message_length)"
                    ));
                    continue;
                }
            };
            for (field, present) in used {
                if present && !allowed.contains(&field) {
                    errs.push(format!("{at}.{field}: not a field of kind {}", r.kind));
                }
            }
            let kind = match r.kind.as_str() {
                "allowed_formats" => {
                    let list = r.formats.clone().unwrap_or_default();
                    if list.is_empty() {
                        errs.push(format!("{at}.formats: list at least one format"));
                    }
                    Kind::Formats(
                        list.iter()
                            .filter_map(|f| {
                                let p = f.parse().ok();
                                if p.is_none() {
                                    errs.push(format!("{at}.formats: unknown format {f:?}"));
                                }
                                p
                            })
                            .collect(),
                    )
                }
                "allowed_key_sets" => {
                    let mut sets = Vec::new();
                    for set in r.key_sets.clone().unwrap_or_default() {
                        let mut parsed: Vec<[u8; 33]> = Vec::new();
                        for k in &set {
                            match key_hex(k) {
                                Some(k) => parsed.push(k),
                                None => errs
                                    .push(format!("{at}.key_sets: {k:?} is not a 33-byte hex key")),
                            }
                        }
                        parsed.sort_unstable();
                        sets.push(parsed);
                    }
                    let mut aggregates = Vec::new();
                    for k in r.aggregate_keys.clone().unwrap_or_default() {
                        match key_hex(&k) {
                            Some(k) => aggregates.push(k),
                            None => errs.push(format!(
                                "{at}.aggregate_keys: {k:?} is not a 33-byte hex key"
                            )),
                        }
                    }
                    if sets.is_empty() && aggregates.is_empty() {
                        errs.push(format!("{at}: give key_sets and/or aggregate_keys"));
                    }
                    Kind::KeySets { sets, aggregates }
                }
                "rate_limit" => match (r.max_signatures, r.window_secs) {
                    (Some(max), Some(w)) if max > 0 && w > 0 => Kind::RateLimit {
                        max,
                        window: Duration::from_secs(w),
                    },
                    _ => {
                        errs.push(format!(
                            "{at}: max_signatures and window_secs must both be positive"
                        ));
                        continue;
                    }
                },
                _ => match r.max_bytes {
                    Some(n) => Kind::MaxMessage(n),
                    None => {
                        errs.push(format!("{at}.max_bytes: required"));
                        continue;
                    }
                },
            };
            let message = r.message.clone().unwrap_or_else(|| match &kind {
                Kind::Formats(f) => format!(
                    "format not allowed (allowed: {})",
                    f.iter().map(|f| f.as_str()).collect::<Vec<_>>().join(", ")
                ),
                Kind::KeySets { .. } => "co-signer set / aggregate key not allowed".into(),
                Kind::RateLimit { max, window } => {
                    format!("more than {max} signatures in {} s", window.as_secs())
                }
                Kind::MaxMessage(n) => format!("message longer than {n} bytes"),
            });
            rules.push(Rule {
                id: r.id.clone(),
                message,
                warn_only: r.warn_only,
                keys,
                kind,
            });
        }
        if errs.is_empty() {
            Ok(Policy {
                warn_only: self.warn_only,
                rules,
                usage: Mutex::new(HashMap::new()),
            })
        } else {
            Err(errs)
        }
    }
}

impl Policy {
    /// A policy with no rules.
    pub fn allow_all() -> Self {
        Policy {
            warn_only: false,
            rules: Vec::new(),
            usage: Mutex::new(HashMap::new()),
        }
    }

    /// Check a request for `key`; at [`Stage::Sign`] a passing rate limit counts the signature.
    ///
    /// # Errors
    /// The first enforced [`Refusal`]. Warn-only refusals are logged and passed.
    pub fn check(
        &self,
        stage: Stage,
        key: &[u8; 33],
        ctx: &SessionContext,
        aggregate_key: &[u8; 33],
    ) -> Result<(), Refusal> {
        let now = Instant::now();
        for (i, rule) in self.rules.iter().enumerate() {
            if !rule.keys.is_empty() && !rule.keys.contains(key) {
                continue;
            }
            let pass = match &rule.kind {
                Kind::Formats(f) => f.contains(&ctx.format),
                Kind::KeySets { sets, aggregates } => {
                    sets.contains(&ctx.signer_keys) || aggregates.contains(aggregate_key)
                }
                Kind::MaxMessage(n) => ctx.message.len() <= *n,
                Kind::RateLimit { max, window } => {
                    if stage == Stage::Nonce {
                        true
                    } else {
                        let mut usage = self
                            .usage
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        let q = usage.entry((i, *key)).or_default();
                        while q.front().is_some_and(|t| now.duration_since(*t) >= *window) {
                            q.pop_front();
                        }
                        let ok = q.len() < *max as usize;
                        if ok || self.warn_only || rule.warn_only {
                            q.push_back(now);
                        }
                        ok
                    }
                }
            };
            if !pass {
                let refusal = Refusal {
                    rule: rule.id.clone(),
                    message: rule.message.clone(),
                };
                if self.warn_only || rule.warn_only {
                    tracing::warn!(rule = %rule.id, key = %hex::encode(key), "policy would refuse (warn-only): {}", rule.message);
                } else {
                    return Err(refusal);
                }
            }
        }
        Ok(())
    }
}
