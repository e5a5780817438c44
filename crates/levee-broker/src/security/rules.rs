//! Permission rules: the four actions, the resources they act on, glob patterns over names, and
//! the pure decision "does this user's rule list allow this action on this resource".
//!
//! # Invariants
//! - Deny by default: an action is allowed only if one rule names it (or `admin`) and its
//!   pattern for the resource's kind matches the resource's name.
//! - A rule with neither `queues` nor `exchanges` covers every queue and exchange; a rule with
//!   only `queues` covers no exchange, and the other way round.
//! - [`Resource::Broker`] (broker-wide things: `/metrics`, the dashboard, definitions) is covered
//!   only by a rule whose every given pattern matches every name (`*`).
//!
//! No I/O and no clock here: `authorize` in `security` wraps it with counting and audit logging.

use serde::Deserialize;

/// What a principal wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Action {
    /// Publish to a queue (or an exchange).
    Publish,
    /// Consume from a queue (subscribe, peek).
    Consume,
    /// Declare, delete, purge, bind, redrive, move.
    Manage,
    /// Read statistics, metrics, the dashboard.
    Monitor,
}

impl Action {
    /// The action's name as written in the config file and in audit logs.
    pub const fn name(self) -> &'static str {
        match self {
            Action::Publish => "publish",
            Action::Consume => "consume",
            Action::Manage => "manage",
            Action::Monitor => "monitor",
        }
    }

    const fn bit(self) -> u8 {
        match self {
            Action::Publish => 1,
            Action::Consume => 2,
            Action::Manage => 4,
            Action::Monitor => 8,
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What an action is done on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Resource<'a> {
    /// A queue, by name.
    Queue(&'a str),
    /// An exchange, by name.
    Exchange(&'a str),
    /// The broker as a whole (metrics, dashboard, definitions export/import).
    Broker,
}

impl std::fmt::Display for Resource<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Resource::Queue(q) => write!(f, "queue {q}"),
            Resource::Exchange(x) => write!(f, "exchange {x}"),
            Resource::Broker => f.write_str("the broker"),
        }
    }
}

/// An action as written in the config: one of the four, or `admin` (all four).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionName {
    /// [`Action::Publish`].
    Publish,
    /// [`Action::Consume`].
    Consume,
    /// [`Action::Manage`].
    Manage,
    /// [`Action::Monitor`].
    Monitor,
    /// Every action.
    Admin,
}

impl ActionName {
    fn bits(self) -> u8 {
        match self {
            ActionName::Publish => Action::Publish.bit(),
            ActionName::Consume => Action::Consume.bit(),
            ActionName::Manage => Action::Manage.bit(),
            ActionName::Monitor => Action::Monitor.bit(),
            ActionName::Admin => 0xf,
        }
    }
}

/// One permission entry of a user, as in the config file:
/// `{ queues = "video.*", exchanges = "uploads", actions = ["publish"] }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermissionConfig {
    /// Glob over queue names (`*` any run of characters, `?` one character).
    #[serde(default)]
    pub queues: Option<String>,
    /// Glob over exchange names.
    #[serde(default)]
    pub exchanges: Option<String>,
    /// The actions granted.
    pub actions: Vec<ActionName>,
}

/// A compiled [`PermissionConfig`].
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    queues: Option<String>,
    exchanges: Option<String>,
    actions: u8,
}

impl Rule {
    pub(crate) fn new(p: &PermissionConfig) -> Rule {
        let (queues, exchanges) = match (&p.queues, &p.exchanges) {
            (None, None) => (Some("*".to_string()), Some("*".to_string())),
            (q, x) => (q.clone(), x.clone()),
        };
        Rule {
            queues,
            exchanges,
            actions: p.actions.iter().fold(0, |a, n| a | n.bits()),
        }
    }

    fn allows(&self, action: Action, resource: Resource<'_>) -> bool {
        if self.actions & action.bit() == 0 {
            return false;
        }
        let all = |p: &Option<String>| p.as_deref().is_none_or(|p| p.chars().all(|c| c == '*'));
        match resource {
            Resource::Queue(q) => self.queues.as_deref().is_some_and(|p| glob(p, q)),
            Resource::Exchange(x) => self.exchanges.as_deref().is_some_and(|p| glob(p, x)),
            Resource::Broker => all(&self.queues) && all(&self.exchanges),
        }
    }
}

/// Whether any of `rules` allows `action` on `resource`.
pub(crate) fn allows(rules: &[Rule], action: Action, resource: Resource<'_>) -> bool {
    rules.iter().any(|r| r.allows(action, resource))
}

/// Glob match: `*` matches any run of bytes (also none), `?` exactly one, anything else
/// itself. Linear-time (the classic two-pointer algorithm with one back-track point), so a
/// pattern from the config cannot make a match expensive.
pub(crate) fn glob(pattern: &str, name: &str) -> bool {
    // Bytes, not chars: names are ASCII (queue names are `[A-Za-z0-9._@-]`), and no allocation.
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == b'?' || (p[pi] != b'*' && p[pi] == n[ni])) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(q: Option<&str>, x: Option<&str>, a: &[ActionName]) -> Rule {
        Rule::new(&PermissionConfig {
            queues: q.map(Into::into),
            exchanges: x.map(Into::into),
            actions: a.to_vec(),
        })
    }

    #[test]
    fn globs_match_like_shell_patterns() {
        assert!(glob("video.*", "video.hd"));
        assert!(glob("video.*", "video."));
        assert!(!glob("video.*", "video"));
        assert!(!glob("video.*", "billing"));
        assert!(glob("*", ""));
        assert!(glob("a?c", "abc"));
        assert!(!glob("a?c", "ac"));
        assert!(glob("*.hd.*", "video.hd.eu"));
        assert!(!glob("*.hd.*", "video.sd.eu"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exactly"));
        assert!(glob("a*b*c", "aXbYbZc"));
    }

    #[test]
    fn rules_deny_by_default_and_cover_only_their_kind() {
        let rules = [rule(Some("video.*"), None, &[ActionName::Publish])];
        assert!(allows(&rules, Action::Publish, Resource::Queue("video.hd")));
        assert!(!allows(
            &rules,
            Action::Consume,
            Resource::Queue("video.hd")
        ));
        assert!(!allows(&rules, Action::Publish, Resource::Queue("billing")));
        assert!(!allows(
            &rules,
            Action::Publish,
            Resource::Exchange("video.hd")
        ));
        assert!(!allows(&rules, Action::Publish, Resource::Broker));
        assert!(!allows(&[], Action::Monitor, Resource::Broker));
    }

    #[test]
    fn admin_and_patternless_rules_cover_everything() {
        let rules = [rule(None, None, &[ActionName::Admin])];
        for a in [
            Action::Publish,
            Action::Consume,
            Action::Manage,
            Action::Monitor,
        ] {
            assert!(allows(&rules, a, Resource::Queue("x")));
            assert!(allows(&rules, a, Resource::Exchange("y")));
            assert!(allows(&rules, a, Resource::Broker));
        }
        let monitor = [rule(Some("*"), None, &[ActionName::Monitor])];
        assert!(allows(&monitor, Action::Monitor, Resource::Broker));
        let narrow = [rule(Some("video.*"), None, &[ActionName::Monitor])];
        assert!(!allows(&narrow, Action::Monitor, Resource::Broker));
    }
}
