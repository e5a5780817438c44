//! Alert rules: their configuration ([`RuleConfig`], the same fields in `[[alerts]]` and over
//! HTTP), and the [`Engine`] that evaluates them, fed with the time and one [`QueueObs`] per
//! queue per tick (the sampler task in `ops::monitor` is the thin shell around it).
//!
//! I/O-free, like the queue core: no clock, no channel, no log line; transitions are returned
//! and the caller logs them, sets the metric and calls the webhook.
//!
//! Conditions (exactly one per rule):
//! - `depth_above = N`: more than N ready messages;
//! - `oldest_above_ms = T`: the next ready message is older than T ms;
//! - `loss_above_pct = X` (`window_ms`, default 60 000): messages lost (dropped, conflation,
//!   purges and deletes excluded) over published messages, both counted over the window, above X %;
//! - `no_consumer_credit = true`: no subscription has credit;
//! - `dead_letter_not_empty = true`: the queue's dead-letter queue holds ready messages (a queue
//!   without one: the queue itself, so a rule may name the dead-letter queue directly);
//! - `above = V` and/or `below = V` with `field = "a.b"` (a JSON field of the payload) or `header =
//!   "name"`, optionally `key = "k"`: the latest message of some key (of that key only, with `key`)
//!   has a value above / below V. Meant for conflated queues, where the ready messages are the
//!   latest per key; the last value seen of a key is kept after it is consumed.
//!
//! A condition must hold for `for_ms` (default 0) before the rule fires; it clears as soon as the
//! condition no longer holds (or its queue is gone).
//!
//! # Invariants
//! - One instance per (rule, queue): at most one fire and then one clear transition for it,
//!   alternating; an instance fires only after its condition held on every tick for `for_ms`.
//! - Memory: [`MAX_RULES`] rules; per instance O(1), plus the loss window (one sample per tick in
//!   `window_ms`, at most [`MAX_WINDOW_SAMPLES`]) and for value rules at most [`MAX_KEYS`] keys.

use std::collections::{BTreeMap, HashMap, VecDeque};

use levee_proto::Message;
use serde::{Deserialize, Serialize};

/// Most rules at once.
pub const MAX_RULES: usize = 256;
/// Most keys a value rule remembers per queue (later keys are not watched).
pub const MAX_KEYS: usize = 1024;
/// Most samples in a loss window (at one sample per second: a window of up to 1 h is exact).
pub const MAX_WINDOW_SAMPLES: usize = 3600;
/// Default loss window.
pub const DEFAULT_WINDOW_MS: u64 = 60_000;

/// A rule as written in the config file (`[[alerts]]`) or sent to `PUT /api/alerts/{name}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Unique name (the `rule` label); taken from the path over HTTP.
    #[serde(default)]
    pub name: String,
    /// The queue watched, or `*` for every queue.
    pub queue: String,
    /// How long the condition must hold before the rule fires, ms.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub for_ms: u64,
    /// Condition: more than this many ready messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth_above: Option<u64>,
    /// Condition: the next ready message is older than this, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_above_ms: Option<u64>,
    /// Condition: lost / published over `window_ms` above this percentage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_above_pct: Option<f64>,
    /// The loss window, ms (default 60 000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
    /// Condition: no subscription with credit.
    #[serde(default, skip_serializing_if = "is_false")]
    pub no_consumer_credit: bool,
    /// Condition: the dead-letter queue holds messages.
    #[serde(default, skip_serializing_if = "is_false")]
    pub dead_letter_not_empty: bool,
    /// Value rules: only messages of this key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Value rules: a JSON field of the payload (dots separate nested objects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Value rules: a header, its value read as a number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Value rules: fires when a value is above this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<f64>,
    /// Value rules: fires when a value is below this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below: Option<f64>,
    /// An `http://` URL sent a JSON POST on every fire and clear (bounded retries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}
fn is_false(v: &bool) -> bool {
    !*v
}

/// Why a rule is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum AlertError {
    /// The rule has no condition.
    #[error(
        "alert rule {rule:?}: no condition (one of depth_above, oldest_above_ms, loss_above_pct, no_consumer_credit, dead_letter_not_empty, above/below)"
    )]
    NoCondition {
        /// The rule.
        rule: String,
    },
    /// The rule has more than one condition.
    #[error("alert rule {rule:?}: one condition per rule, got {conditions}")]
    SeveralConditions {
        /// The rule.
        rule: String,
        /// The conditions it gave.
        conditions: String,
    },
    /// A field is out of range or inconsistent.
    #[error("alert rule {rule:?}: {reason}")]
    Invalid {
        /// The rule.
        rule: String,
        /// What is wrong.
        reason: String,
    },
    /// Two rules share a name.
    #[error("alert rule {0:?} is defined twice")]
    Duplicate(String),
    /// More than [`MAX_RULES`] rules.
    #[error("at most {MAX_RULES} alert rules")]
    TooMany,
}

/// Where a value rule reads its number.
#[derive(Debug, Clone, PartialEq)]
pub enum Selector {
    /// A JSON field of the payload (path of object keys).
    Field(Vec<String>),
    /// A header.
    Header(String),
}

/// A rule's condition, checked.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// More than this many ready messages.
    DepthAbove(u64),
    /// Next ready message older than this, ms.
    OldestAbove(u64),
    /// Loss above `pct` % over `window_ms`.
    LossAbove {
        /// Percentage.
        pct: f64,
        /// Window, ms.
        window_ms: u64,
    },
    /// No subscription with credit.
    NoConsumerCredit,
    /// Dead-letter queue not empty.
    DeadLetterNotEmpty,
    /// A value of the latest message per key.
    Value {
        /// Only this key.
        key: Option<String>,
        /// Where the number is.
        selector: Selector,
        /// Fires above.
        above: Option<f64>,
        /// Fires below.
        below: Option<f64>,
    },
}

/// A checked rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// As configured (what `GET /api/alerts` shows).
    pub config: RuleConfig,
    /// The condition.
    pub condition: Condition,
}

impl RuleConfig {
    /// Checks the rule: a name, a queue, exactly one condition, sane ranges.
    pub fn compile(self) -> Result<Rule, AlertError> {
        let rule = self.name.clone();
        let invalid = |reason: &str| AlertError::Invalid {
            rule: rule.clone(),
            reason: reason.to_string(),
        };
        if self.name.is_empty() || self.name.len() > 200 || self.name.contains(['"', '\\', '\n']) {
            return Err(invalid(
                "name must be 1 to 200 characters, without quotes, backslashes or line feeds",
            ));
        }
        if self.queue.is_empty() {
            return Err(invalid("queue must name a queue, or be \"*\""));
        }
        if let Some(w) = &self.webhook
            && !w.starts_with("http://")
        {
            return Err(invalid("webhook must be an http:// URL"));
        }
        let value = self.above.is_some() || self.below.is_some();
        let given: Vec<&str> = [
            (self.depth_above.is_some(), "depth_above"),
            (self.oldest_above_ms.is_some(), "oldest_above_ms"),
            (self.loss_above_pct.is_some(), "loss_above_pct"),
            (self.no_consumer_credit, "no_consumer_credit"),
            (self.dead_letter_not_empty, "dead_letter_not_empty"),
            (value, "above/below"),
        ]
        .into_iter()
        .filter_map(|(on, n)| on.then_some(n))
        .collect();
        if given.is_empty() {
            return Err(AlertError::NoCondition { rule });
        }
        if given.len() > 1 {
            return Err(AlertError::SeveralConditions {
                rule,
                conditions: given.join(", "),
            });
        }
        if self.window_ms.is_some() && self.loss_above_pct.is_none() {
            return Err(invalid("window_ms applies to loss_above_pct only"));
        }
        if !value && (self.key.is_some() || self.field.is_some() || self.header.is_some()) {
            return Err(invalid(
                "key, field and header apply to above/below rules only",
            ));
        }
        let condition = if let Some(n) = self.depth_above {
            Condition::DepthAbove(n)
        } else if let Some(t) = self.oldest_above_ms {
            Condition::OldestAbove(t)
        } else if let Some(pct) = self.loss_above_pct {
            if !(0.0..=100.0).contains(&pct) {
                return Err(invalid("loss_above_pct must be between 0 and 100"));
            }
            let window_ms = self.window_ms.unwrap_or(DEFAULT_WINDOW_MS);
            if !(1000..=86_400_000).contains(&window_ms) {
                return Err(invalid("window_ms must be between 1000 and 86400000"));
            }
            Condition::LossAbove { pct, window_ms }
        } else if self.no_consumer_credit {
            Condition::NoConsumerCredit
        } else if self.dead_letter_not_empty {
            Condition::DeadLetterNotEmpty
        } else {
            let selector = match (&self.field, &self.header) {
                (Some(f), None) if !f.is_empty() => {
                    Selector::Field(f.split('.').map(str::to_string).collect())
                }
                (None, Some(h)) if !h.is_empty() => Selector::Header(h.clone()),
                _ => return Err(invalid("above/below need exactly one of field or header")),
            };
            if self.above.is_some_and(|v| !v.is_finite())
                || self.below.is_some_and(|v| !v.is_finite())
            {
                return Err(invalid("above and below must be finite numbers"));
            }
            Condition::Value {
                key: self.key.clone(),
                selector,
                above: self.above,
                below: self.below,
            }
        };
        Ok(Rule {
            config: self,
            condition,
        })
    }
}

/// Checks a whole set of rules (the config file's): each one, unique names, at most [`MAX_RULES`].
pub fn compile_all(configs: Vec<RuleConfig>) -> Result<Vec<Rule>, AlertError> {
    if configs.len() > MAX_RULES {
        return Err(AlertError::TooMany);
    }
    let mut rules: Vec<Rule> = Vec::with_capacity(configs.len());
    for c in configs {
        if rules.iter().any(|r| r.config.name == c.name) {
            return Err(AlertError::Duplicate(c.name));
        }
        rules.push(c.compile()?);
    }
    Ok(rules)
}

/// The number `selector` finds in `m` (a JSON number, or a string holding one).
pub fn extract(selector: &Selector, m: &Message) -> Option<f64> {
    let v = match selector {
        Selector::Header(h) => {
            let (_, v) = m.headers.iter().find(|(n, _)| n == h)?;
            std::str::from_utf8(v).ok()?.trim().parse::<f64>().ok()?
        }
        Selector::Field(path) => {
            let doc: serde_json::Value = serde_json::from_slice(&m.payload).ok()?;
            let mut at = &doc;
            for p in path {
                at = at.get(p)?;
            }
            match at {
                serde_json::Value::Number(n) => n.as_f64()?,
                serde_json::Value::String(s) => s.trim().parse::<f64>().ok()?,
                _ => return None,
            }
        }
    };
    v.is_finite().then_some(v)
}

/// One queue, as the engine sees it at one tick.
#[derive(Debug, Clone, Default)]
pub struct QueueObs {
    /// The queue.
    pub queue: String,
    /// Ready messages.
    pub ready: u64,
    /// Age of the next ready message, ms.
    pub oldest_ms: Option<u64>,
    /// Cumulative published messages.
    pub published: u64,
    /// Cumulative lost messages (dropped; conflation, purges and deletes excluded).
    pub lost: u64,
    /// Subscriptions with credit > 0.
    pub consumers_with_credit: usize,
    /// Ready messages of its dead-letter queue (`None`: it has none).
    pub dead_letter_ready: Option<u64>,
    /// The latest messages per key (a conflated queue's ready messages), for value rules.
    pub latest: Vec<Message>,
}

/// A fire or a clear.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transition {
    /// The rule.
    pub rule: String,
    /// The queue.
    pub queue: String,
    /// `true`: fired; `false`: cleared.
    pub firing: bool,
    /// When, ms since the Unix epoch.
    pub at: u64,
    /// The figure the rule watches, at that moment.
    pub value: f64,
    /// A sentence for the log and the dashboard.
    pub detail: String,
    /// Where to POST it.
    #[serde(skip)]
    pub webhook: Option<String>,
}

/// A firing alert.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Firing {
    /// The rule.
    pub rule: String,
    /// The queue.
    pub queue: String,
    /// Firing since, ms since the Unix epoch.
    pub since: u64,
    /// The figure the rule watches, now.
    pub value: f64,
    /// A sentence.
    pub detail: String,
}

#[derive(Debug, Default)]
struct Instance {
    /// Since when the condition holds.
    pending_since: Option<u64>,
    /// Since when it fires.
    firing_since: Option<u64>,
    value: f64,
    detail: String,
    /// Loss rules: (t, published, lost) samples over the window.
    window: VecDeque<(u64, u64, u64)>,
    /// Value rules: latest value per key.
    values: BTreeMap<Vec<u8>, f64>,
}

/// The rules and the state of each of their instances.
#[derive(Debug, Default)]
pub struct Engine {
    rules: Vec<Rule>,
    /// (rule name, queue) → state.
    instances: HashMap<(String, String), Instance>,
}

impl Engine {
    /// An engine with `rules` (checked by [`compile_all`]).
    pub fn new(rules: Vec<Rule>) -> Engine {
        Engine {
            rules,
            instances: HashMap::new(),
        }
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Adds `rule`, or replaces the rule of that name (its instances start over: those firing
    /// are cleared, returned as transitions at `now`).
    pub fn set_rule(&mut self, now: u64, rule: Rule) -> Result<Vec<Transition>, AlertError> {
        let name = rule.config.name.clone();
        match self.rules.iter().position(|r| r.config.name == name) {
            Some(i) => self.rules[i] = rule,
            None if self.rules.len() >= MAX_RULES => return Err(AlertError::TooMany),
            None => self.rules.push(rule),
        }
        Ok(self.drop_instances(now, &name, "its rule changed"))
    }

    /// Removes the rule `name`; `None` if there is none, else the clears of its firing instances.
    pub fn remove_rule(&mut self, now: u64, name: &str) -> Option<Vec<Transition>> {
        let i = self.rules.iter().position(|r| r.config.name == name)?;
        let cleared = self.drop_instances(now, name, "its rule was removed");
        self.rules.remove(i);
        Some(cleared)
    }

    fn drop_instances(&mut self, now: u64, rule: &str, why: &str) -> Vec<Transition> {
        let webhook = self
            .rules
            .iter()
            .find(|r| r.config.name == rule)
            .and_then(|r| r.config.webhook.clone());
        let mut out = Vec::new();
        self.instances.retain(|(r, q), inst| {
            if r != rule {
                return true;
            }
            if inst.firing_since.is_some() {
                out.push(Transition {
                    rule: r.clone(),
                    queue: q.clone(),
                    firing: false,
                    at: now,
                    value: inst.value,
                    detail: format!("cleared: {why}"),
                    webhook: webhook.clone(),
                });
            }
            false
        });
        out.sort_by(|a, b| a.queue.cmp(&b.queue));
        out
    }

    /// Evaluates every rule on this tick's observations (one per existing queue); returns the
    /// fires and clears, in rule then queue order. Instances whose queue is absent are cleared
    /// and forgotten.
    pub fn evaluate(&mut self, now: u64, queues: &[QueueObs]) -> Vec<Transition> {
        let mut out = Vec::new();
        let mut seen: Vec<(String, String)> = Vec::new();
        for rule in &self.rules {
            let name = &rule.config.name;
            for q in queues
                .iter()
                .filter(|q| rule.config.queue == "*" || rule.config.queue == q.queue)
            {
                let id = (name.clone(), q.queue.clone());
                let inst = self.instances.entry(id.clone()).or_default();
                seen.push(id);
                let (holds, value, detail) = check(&rule.condition, now, q, inst);
                inst.value = value;
                if holds {
                    let since = *inst.pending_since.get_or_insert(now);
                    if inst.firing_since.is_none()
                        && now.saturating_sub(since) >= rule.config.for_ms
                    {
                        inst.firing_since = Some(now);
                        inst.detail = detail.clone();
                        out.push(Transition {
                            rule: name.clone(),
                            queue: q.queue.clone(),
                            firing: true,
                            at: now,
                            value,
                            detail,
                            webhook: rule.config.webhook.clone(),
                        });
                    } else if inst.firing_since.is_some() {
                        inst.detail = detail;
                    }
                } else {
                    inst.pending_since = None;
                    if inst.firing_since.take().is_some() {
                        out.push(Transition {
                            rule: name.clone(),
                            queue: q.queue.clone(),
                            firing: false,
                            at: now,
                            value,
                            detail: format!("cleared: {detail}"),
                            webhook: rule.config.webhook.clone(),
                        });
                    }
                }
            }
        }
        // Queues that are gone (or rules that no longer match them).
        let webhooks: HashMap<&str, Option<&String>> = self
            .rules
            .iter()
            .map(|r| (r.config.name.as_str(), r.config.webhook.as_ref()))
            .collect();
        let mut gone: Vec<Transition> = Vec::new();
        self.instances.retain(|id, inst| {
            if seen.contains(id) {
                return true;
            }
            if inst.firing_since.is_some() {
                gone.push(Transition {
                    rule: id.0.clone(),
                    queue: id.1.clone(),
                    firing: false,
                    at: now,
                    value: inst.value,
                    detail: "cleared: the queue is gone".into(),
                    webhook: webhooks.get(id.0.as_str()).copied().flatten().cloned(),
                });
            }
            false
        });
        gone.sort_by(|a, b| (&a.rule, &a.queue).cmp(&(&b.rule, &b.queue)));
        out.extend(gone);
        out
    }

    /// The alerts firing, by rule then queue.
    pub fn firing(&self) -> Vec<Firing> {
        let mut v: Vec<Firing> = self
            .instances
            .iter()
            .filter_map(|((r, q), i)| {
                i.firing_since.map(|since| Firing {
                    rule: r.clone(),
                    queue: q.clone(),
                    since,
                    value: i.value,
                    detail: i.detail.clone(),
                })
            })
            .collect();
        v.sort_by(|a, b| (&a.rule, &a.queue).cmp(&(&b.rule, &b.queue)));
        v
    }

    /// Every instance (rule, queue, firing), sorted: the `levee_alert_firing` series.
    pub fn instances(&self) -> Vec<(String, String, bool)> {
        let mut v: Vec<(String, String, bool)> = self
            .instances
            .iter()
            .map(|((r, q), i)| (r.clone(), q.clone(), i.firing_since.is_some()))
            .collect();
        v.sort();
        v
    }
}

/// Whether `c` holds for `q` now, the figure it watches, and a sentence.
fn check(c: &Condition, now: u64, q: &QueueObs, inst: &mut Instance) -> (bool, f64, String) {
    match c {
        Condition::DepthAbove(n) => (
            q.ready > *n,
            q.ready as f64,
            format!("{} ready messages (limit {n})", q.ready),
        ),
        Condition::OldestAbove(t) => {
            let age = q.oldest_ms.unwrap_or(0);
            (
                q.oldest_ms.is_some_and(|a| a > *t),
                age as f64 / 1000.0,
                format!("oldest ready message {age} ms old (limit {t} ms)"),
            )
        }
        Condition::LossAbove { pct, window_ms } => {
            let w = &mut inst.window;
            w.push_back((now, q.published, q.lost));
            // Keep one sample at or before the window's start, so the window is covered.
            while w.len() > 2 && w[1].0 <= now.saturating_sub(*window_ms) {
                w.pop_front();
            }
            while w.len() > MAX_WINDOW_SAMPLES {
                w.pop_front();
            }
            let (_, p0, l0) = w[0];
            let published = q.published.saturating_sub(p0);
            let lost = q.lost.saturating_sub(l0);
            let loss = if published == 0 {
                0.0
            } else {
                lost as f64 * 100.0 / published as f64
            };
            (
                published > 0 && loss > *pct,
                loss,
                format!(
                    "{loss:.1} % lost ({lost} of {published} published over {} s; limit {pct} %)",
                    window_ms / 1000
                ),
            )
        }
        Condition::NoConsumerCredit => (
            q.consumers_with_credit == 0,
            q.consumers_with_credit as f64,
            "no consumer with credit".into(),
        ),
        Condition::DeadLetterNotEmpty => {
            let n = q.dead_letter_ready.unwrap_or(q.ready);
            (
                n > 0,
                n as f64,
                format!("{n} messages in the dead-letter queue"),
            )
        }
        Condition::Value {
            key,
            selector,
            above,
            below,
        } => {
            for m in &q.latest {
                let k: &[u8] = m.key.as_deref().unwrap_or(b"");
                if key.as_ref().is_some_and(|want| want.as_bytes() != k) {
                    continue;
                }
                let Some(v) = extract(selector, m) else {
                    continue;
                };
                if inst.values.len() < MAX_KEYS || inst.values.contains_key(k) {
                    inst.values.insert(k.to_vec(), v);
                }
            }
            let over = |v: f64| above.is_some_and(|a| v > a) || below.is_some_and(|b| v < b);
            let worst = inst.values.iter().find(|(_, v)| over(**v));
            let what = match selector {
                Selector::Field(p) => p.join("."),
                Selector::Header(h) => format!("header {h}"),
            };
            let limit = match (above, below) {
                (Some(a), Some(b)) => format!("above {a} or below {b}"),
                (Some(a), None) => format!("above {a}"),
                (None, Some(b)) => format!("below {b}"),
                (None, None) => String::new(),
            };
            match worst {
                Some((k, v)) => (
                    true,
                    *v,
                    format!(
                        "{what} of key {} is {v} ({limit})",
                        String::from_utf8_lossy(k)
                    ),
                ),
                None => (
                    false,
                    inst.values.values().next().copied().unwrap_or(0.0),
                    format!("every {what} within limits"),
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rule(toml_like: RuleConfig) -> Rule {
        toml_like.compile().unwrap()
    }

    fn depth(name: &str, n: u64, for_ms: u64) -> Rule {
        rule(RuleConfig {
            name: name.into(),
            queue: "q".into(),
            depth_above: Some(n),
            for_ms,
            ..RuleConfig::default()
        })
    }

    fn obs(ready: u64) -> QueueObs {
        QueueObs {
            queue: "q".into(),
            ready,
            ..QueueObs::default()
        }
    }

    #[test]
    fn depth_fires_after_for_and_clears() {
        let mut e = Engine::new(vec![depth("deep", 10, 2000)]);
        assert!(e.evaluate(0, &[obs(11)]).is_empty());
        assert!(e.evaluate(1000, &[obs(12)]).is_empty());
        let t = e.evaluate(2000, &[obs(12)]);
        assert_eq!(t.len(), 1);
        assert!(t[0].firing);
        assert_eq!(e.firing().len(), 1);
        assert!(e.evaluate(3000, &[obs(12)]).is_empty(), "fires once");
        let t = e.evaluate(4000, &[obs(3)]);
        assert!(!t[0].firing);
        assert!(e.firing().is_empty());
        assert_eq!(e.instances(), vec![("deep".into(), "q".into(), false)]);
    }

    #[test]
    fn a_dip_restarts_the_for_period() {
        let mut e = Engine::new(vec![depth("deep", 10, 2000)]);
        e.evaluate(0, &[obs(11)]);
        e.evaluate(1000, &[obs(1)]);
        assert!(e.evaluate(2000, &[obs(11)]).is_empty());
        assert!(e.evaluate(3000, &[obs(11)]).is_empty());
        assert_eq!(e.evaluate(4000, &[obs(11)]).len(), 1);
    }

    #[test]
    fn a_deleted_queue_clears() {
        let mut e = Engine::new(vec![depth("deep", 0, 0)]);
        assert!(e.evaluate(0, &[obs(1)])[0].firing);
        let t = e.evaluate(1000, &[]);
        assert!(!t[0].firing);
        assert!(e.instances().is_empty());
    }

    #[test]
    fn loss_is_counted_over_the_window() {
        let mut e = Engine::new(vec![rule(RuleConfig {
            name: "loss".into(),
            queue: "*".into(),
            loss_above_pct: Some(10.0),
            window_ms: Some(10_000),
            ..RuleConfig::default()
        })]);
        let at = |published, lost| QueueObs {
            queue: "q".into(),
            published,
            lost,
            ..QueueObs::default()
        };
        // A burst of loss long ago is outside the window once 10 s passed.
        assert!(e.evaluate(0, &[at(100, 50)]).is_empty(), "no delta yet");
        assert!(e.evaluate(1000, &[at(200, 80)])[0].firing, "30 % lost");
        let mut t = 2000;
        let mut cleared = false;
        while t <= 13_000 {
            let p = 200 + (t - 1000) / 10;
            let tr = e.evaluate(t, &[at(p, 80)]);
            cleared |= tr.iter().any(|x| !x.firing);
            t += 1000;
        }
        assert!(cleared);
    }

    #[test]
    fn values_of_the_latest_message_per_key() {
        let temp = rule(RuleConfig {
            name: "hot".into(),
            queue: "sensors".into(),
            field: Some("temperature".into()),
            above: Some(28.0),
            ..RuleConfig::default()
        });
        let humid = rule(RuleConfig {
            name: "humid".into(),
            queue: "sensors".into(),
            key: Some("TEMP_02".into()),
            header: Some("humidity".into()),
            above: Some(75.0),
            ..RuleConfig::default()
        });
        let mut e = Engine::new(vec![temp, humid]);
        let msg = |k: &str, t: f64, h: &str| {
            let mut m = Message::new(format!(r#"{{"sensorId":"{k}","temperature":{t}}}"#))
                .with_key(k.to_string());
            m.headers.push(("humidity".into(), h.to_string().into()));
            m
        };
        let at = |latest| QueueObs {
            queue: "sensors".into(),
            latest,
            ..QueueObs::default()
        };
        let t = e.evaluate(
            0,
            &[at(vec![
                msg("TEMP_01", 21.0, "80"),
                msg("TEMP_02", 29.5, "60"),
            ])],
        );
        assert_eq!(t.len(), 1, "{t:?}");
        assert_eq!(t[0].rule, "hot");
        assert_eq!(t[0].value, 29.5);
        // Consumed: the last value is kept; a newer one clears it.
        assert!(e.evaluate(1000, &[at(vec![])]).is_empty());
        let t = e.evaluate(2000, &[at(vec![msg("TEMP_02", 25.0, "76")])]);
        let names: Vec<(&str, bool)> = t.iter().map(|x| (x.rule.as_str(), x.firing)).collect();
        assert_eq!(names, vec![("hot", false), ("humid", true)]);
    }

    #[test]
    fn bad_rules_are_refused() {
        let base = RuleConfig {
            name: "r".into(),
            queue: "q".into(),
            ..RuleConfig::default()
        };
        assert!(matches!(
            base.clone().compile(),
            Err(AlertError::NoCondition { .. })
        ));
        let two = RuleConfig {
            depth_above: Some(1),
            no_consumer_credit: true,
            ..base.clone()
        };
        assert!(matches!(
            two.compile(),
            Err(AlertError::SeveralConditions { .. })
        ));
        let no_sel = RuleConfig {
            above: Some(1.0),
            ..base.clone()
        };
        assert!(matches!(no_sel.compile(), Err(AlertError::Invalid { .. })));
        let dup = vec![
            RuleConfig {
                depth_above: Some(1),
                ..base.clone()
            },
            RuleConfig {
                depth_above: Some(2),
                ..base
            },
        ];
        assert!(matches!(compile_all(dup), Err(AlertError::Duplicate(_))));
    }

    proptest! {
        /// Fires and clears alternate, and a fire comes only after the condition held for `for_ms`.
        #[test]
        fn transitions_alternate_and_respect_for(
            depths in proptest::collection::vec(0u64..20, 1..200),
            for_s in 0u64..5,
        ) {
            let mut e = Engine::new(vec![depth("d", 10, for_s * 1000)]);
            let mut firing = false;
            let mut run = 0u64; // consecutive ticks above the limit, this one included
            for (i, d) in depths.iter().enumerate() {
                run = if *d > 10 { run + 1 } else { 0 };
                let t = e.evaluate(i as u64 * 1000, &[obs(*d)]);
                prop_assert!(t.len() <= 1);
                if let Some(t) = t.first() {
                    prop_assert_ne!(t.firing, firing);
                    firing = t.firing;
                    if t.firing {
                        prop_assert!(run > for_s);
                    }
                }
                prop_assert_eq!(firing, *d > 10 && run > for_s);
            }
        }
    }
}
