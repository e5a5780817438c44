//! Authentication and authorization of AMQP connections: PLAIN and AMQPLAIN credentials parsed
//! here and checked by the broker's [`Security`] (one login per connection, in the shell: the
//! same users, delays after failures and audit log as the native protocol), and the one place
//! where each broker operation a connection asks for is authorized ([`authorize`]).
//!
//! With no users configured, the broker's safe default applies (loopback listeners only, any
//! user name accepted), as on every listener.

use amq_protocol::types::{AMQPValue, FieldTable};

use super::connection::Op;
use crate::security::{Action, Principal, Resource, Security};

/// Credentials from `connection.start-ok`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub(crate) user: String,
    pub(crate) password: String,
}

/// Why a login is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum AuthError {
    /// A mechanism other than PLAIN and AMQPLAIN.
    #[error("authentication mechanism {0} is not supported: use PLAIN or AMQPLAIN")]
    Mechanism(String),
    /// The response does not parse.
    #[error("malformed {0} response")]
    Malformed(&'static str),
}

impl Credentials {
    /// Parses the `response` of `mechanism`.
    pub(crate) fn parse(mechanism: &str, response: &[u8]) -> Result<Credentials, AuthError> {
        match mechanism {
            "PLAIN" => {
                // authzid NUL authcid NUL password
                let mut parts = response.splitn(3, |b| *b == 0);
                let (Some(_authz), Some(user), Some(password)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    return Err(AuthError::Malformed("PLAIN"));
                };
                Ok(Credentials {
                    user: String::from_utf8(user.to_vec())
                        .map_err(|_| AuthError::Malformed("PLAIN"))?,
                    password: String::from_utf8(password.to_vec())
                        .map_err(|_| AuthError::Malformed("PLAIN"))?,
                })
            }
            "AMQPLAIN" => {
                // A field table without its length prefix.
                let mut framed = Vec::with_capacity(response.len() + 4);
                framed.extend_from_slice(&(response.len() as u32).to_be_bytes());
                framed.extend_from_slice(response);
                let table: FieldTable =
                    amq_protocol::types::parsing::parse_field_table(&framed[..])
                        .map(|(_, t)| t)
                        .map_err(|_| AuthError::Malformed("AMQPLAIN"))?;
                let get = |k: &str| match table.inner().get(k) {
                    Some(AMQPValue::LongString(s)) => String::from_utf8(s.as_bytes().to_vec()).ok(),
                    Some(AMQPValue::ShortString(s)) => Some(s.as_str().to_string()),
                    _ => None,
                };
                Ok(Credentials {
                    user: get("LOGIN").ok_or(AuthError::Malformed("AMQPLAIN"))?,
                    password: get("PASSWORD").ok_or(AuthError::Malformed("AMQPLAIN"))?,
                })
            }
            other => Err(AuthError::Mechanism(other.to_string())),
        }
    }
}

/// Whether `principal` may carry out `op`; `Err` is the reason for a 403 ACCESS_REFUSED. The
/// one place where each broker operation of an AMQP connection passes (every operation does).
/// Rights: declaring, deleting, purging a queue and declaring or deleting an exchange need
/// `manage` on it, binding `manage` on the queue; a passive declare and `basic.get`'s count need
/// any right on the queue (as the native `Inspect`); consuming and settling need `consume`;
/// publishing needs `publish` on the queue (default exchange) or on the exchange, within the
/// user's publish rate (taken here for a routed publish; for a batch of queue publishes the
/// shell takes it, message by message when the batch as a whole exceeds it).
pub(crate) fn authorize(security: &Security, principal: &Principal, op: &Op) -> Result<(), String> {
    let need = |action: Action, resource: Resource<'_>| {
        security
            .authorize(principal, action, resource)
            .map_err(|e| e.to_string())
    };
    let any_right = |queue: &str| {
        let ok = [
            Action::Publish,
            Action::Consume,
            Action::Manage,
            Action::Monitor,
        ]
        .into_iter()
        .any(|a| security.permits(principal, a, Resource::Queue(queue)));
        if ok {
            Ok(())
        } else {
            need(Action::Monitor, Resource::Queue(queue))
        }
    };
    match op {
        Op::Declare {
            queue,
            passive: true,
            ..
        }
        | Op::Inspect { queue, .. } => any_right(queue),
        Op::Declare { queue, .. } | Op::DeleteQueue { queue, .. } | Op::Purge { queue, .. } => {
            need(Action::Manage, Resource::Queue(queue))
        }
        Op::ExchangeDeclare { name, .. } | Op::ExchangeDelete { name, .. } => {
            need(Action::Manage, Resource::Exchange(name))
        }
        Op::Bind { binding, .. } => need(Action::Manage, Resource::Queue(&binding.queue)),
        Op::PublishRouted { exchange, .. } => {
            need(Action::Publish, Resource::Exchange(exchange))?;
            principal.check_publish(1).map_err(|e| e.to_string())
        }
        // The publish rate is taken by the shell, per message of the batch (`throttle`).
        Op::Publish { queue, .. } => need(Action::Publish, Resource::Queue(queue)),
        Op::AddProducer { queue } => need(Action::Publish, Resource::Queue(queue)),
        Op::Subscribe { queue, .. }
        | Op::Credit { queue, .. }
        | Op::Ack { queue, .. }
        | Op::Requeue { queue, .. }
        | Op::Reject { queue, .. } => need(Action::Consume, Resource::Queue(queue)),
        // Ending what was allowed is always allowed.
        Op::RemoveProducer { .. } | Op::Unsubscribe { .. } => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_amqplain_credentials_parse() {
        let c = Credentials::parse("PLAIN", b"\0guest\0secret").unwrap();
        assert_eq!((c.user.as_str(), c.password.as_str()), ("guest", "secret"));
        // LOGIN S <len> guest PASSWORD S <len> secret, without the table's length prefix.
        let mut t = Vec::new();
        for (k, v) in [("LOGIN", "guest"), ("PASSWORD", "secret")] {
            t.push(k.len() as u8);
            t.extend_from_slice(k.as_bytes());
            t.push(b'S');
            t.extend_from_slice(&(v.len() as u32).to_be_bytes());
            t.extend_from_slice(v.as_bytes());
        }
        let c = Credentials::parse("AMQPLAIN", &t).unwrap();
        assert_eq!(c.user, "guest");
        assert!(Credentials::parse("EXTERNAL", b"").is_err());
        assert!(Credentials::parse("PLAIN", b"nonul").is_err());
    }
}
