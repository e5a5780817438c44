//! Authentication and authorization of AMQP connections: the one function where PLAIN and
//! AMQPLAIN credentials are checked ([`check`]) and the one place where each broker operation a
//! connection asks for could be refused ([`authorize`]).
//!
//! Until the broker has users (the security issue), any user name and password are accepted from
//! a peer on the loopback interface, and every peer elsewhere is refused with 403 ACCESS_REFUSED:
//! an unauthenticated broker is not opened to the network by accident.

use amq_protocol::types::{AMQPValue, FieldTable};

use super::connection::Op;

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
    /// The peer is not on loopback and the broker has no users to check against.
    #[error("user '{0}' may connect only from localhost until users are configured")]
    NotLoopback(String),
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

/// Checks credentials; returns the user name the connection acts as. The only place AMQP logins
/// are decided.
pub(crate) fn check(c: &Credentials, loopback: bool) -> Result<String, AuthError> {
    let _ = &c.password;
    if !loopback {
        return Err(AuthError::NotLoopback(c.user.clone()));
    }
    Ok(c.user.clone())
}

/// Whether `user` may carry out `op`; `Err` is the reason for a 403 ACCESS_REFUSED. The one
/// place where each broker operation of an AMQP connection passes (every operation does).
pub(crate) fn authorize(user: &str, op: &Op) -> Result<(), String> {
    let _ = (user, op);
    Ok(())
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

    #[test]
    fn until_users_exist_only_loopback_peers_get_in() {
        let c = Credentials::parse("PLAIN", b"\0guest\0guest").unwrap();
        assert_eq!(check(&c, true).unwrap(), "guest");
        assert!(matches!(check(&c, false), Err(AuthError::NotLoopback(_))));
    }
}
