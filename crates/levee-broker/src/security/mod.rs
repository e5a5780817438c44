//! Who may connect and what they may do: the user table, permission rules, logins, the
//! per-user limits, TLS certificates, and reloading all of these without a restart.
//!
//! [`Security`] is the one handle (cheap to clone, owned by the [`Broker`](crate::Broker):
//! [`Broker::security`](crate::Broker::security)); every listener, native, HTTP and AMQP, calls
//! it the same way:
//!
//! 1. accept a socket through [`Acceptor::accept`] (plain or TLS by the config; it runs the TLS
//!    handshake and reads the user named by a client certificate, `Accepted::cert_user`);
//! 2. **one login call** per connection: [`Security::login`] with the credentials the protocol
//!    carries (native `Hello.credentials`, AMQP PLAIN / AMQPLAIN `user`/`password`, HTTP Basic),
//!    the certificate's user and the peer address. It answers a [`Principal`] or an
//!    [`AuthError`] (a failed login is held back by a delay growing per source address, counted
//!    and audit-logged, never with the secret). Connection-oriented front ends then call
//!    [`Security::open_session`] (per-user `max_connections`) and keep the [`Session`] for the
//!    connection's life, selecting on [`Session::revoked`] to close it when a reload removed
//!    its user;
//! 3. **one authorize call** per operation: [`Security::authorize`]`(principal, action,
//!    resource)`; `Err(Forbidden)` is answered with the protocol's "access refused" (native
//!    `AccessDenied`, stable string `forbidden`; AMQP `access-refused` 403 channel close; HTTP
//!    403 `{"error":"forbidden"}`), and the connection goes on. Publishes also call
//!    [`Principal::check_publish`] (per-user publish rate).
//!
//! For AMQP: PLAIN's response is `\0user\0password`, AMQPLAIN's a table with `LOGIN` and
//! `PASSWORD`; on `Err(AuthError)` send `connection.close` 403 `ACCESS_REFUSED` (after
//! advertising the `authentication_failure_close` capability). Map `basic.publish` to
//! `(Publish, Exchange(x))` (the default exchange `""`: `(Publish, Queue(routing_key))`),
//! `basic.consume`/`basic.get` to `(Consume, Queue(q))`, `queue.declare`/`delete`/`purge`/`bind`,
//! `exchange.declare`/`delete` to `(Manage, ...)`.
//!
//! # Invariants
//! - With users configured, nothing but `/healthz` and `/readyz` is reachable without logging
//!   in. With none, every principal is anonymous with every right, and that is allowed only on
//!   loopback addresses or with `allow_anonymous = true` ([`Security::check_exposure`]).
//! - Passwords are kept only as argon2id PHC strings; no password, hash or token is ever written
//!   to a log, a metric, a stats reply or an error message.
//! - A reload ([`Security::reload`]) replaces users, permissions and certificates at once or not
//!   at all (an invalid new config leaves the old one in force). Connections whose user still
//!   exists go on (with the new permissions from their next operation); the others are closed.
//! - Password verification (argon2, CPU-bound) runs on the blocking pool, at most
//!   [`MAX_VERIFYING`] at once, so logins cannot starve the broker's other work.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use serde::Deserialize;
use tokio::sync::{Semaphore, watch};

mod rules;
mod throttle;
mod tls;

pub use rules::{Action, ActionName, PermissionConfig, Resource};
pub use tls::{Accepted, Acceptor, HANDSHAKE_TIMEOUT, MaybeTls, TlsConfig};

/// Most password verifications running at once.
pub const MAX_VERIFYING: usize = 2;

/// The audit log's tracing target: every login, refusal and `manage` operation.
pub const AUDIT_TARGET: &str = "levee::audit";

/// One `[[users]]` entry of the config file.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The user's name.
    pub name: String,
    /// argon2id PHC string (`levee passwd` prints one). Without it the user can log in only
    /// with a client certificate.
    #[serde(default)]
    pub password_hash: Option<String>,
    /// What the user may do.
    #[serde(default)]
    pub permissions: Vec<PermissionConfig>,
    /// Most connections of this user open at once (native and AMQP; unlimited if absent).
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// Most messages per second this user may publish, across its connections (unlimited if
    /// absent).
    #[serde(default)]
    pub publish_rate: Option<u32>,
}

impl std::fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserConfig")
            .field("name", &self.name)
            .field(
                "password_hash",
                &self.password_hash.as_ref().map(|_| "<redacted>"),
            )
            .field("permissions", &self.permissions)
            .field("max_connections", &self.max_connections)
            .field("publish_rate", &self.publish_rate)
            .finish()
    }
}

/// Everything this module reads from the config file (reloaded as a whole on SIGHUP).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecurityConfig {
    /// `[[users]]`.
    pub users: Vec<UserConfig>,
    /// `[tls]`.
    pub tls: Option<TlsConfig>,
    /// `allow_anonymous = true`: no users and a non-loopback listener is allowed (with a
    /// warning).
    pub allow_anonymous: bool,
}

/// A security setting that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecurityError {
    /// A TLS file is missing, unreadable or unusable.
    #[error("TLS {what} file {}: {reason}", path.display())]
    TlsFile {
        /// `certificate`, `key` or `client CA`.
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the TLS settings.
    #[error("TLS settings: {0}")]
    Tls(String),
    /// A user entry is invalid (its hash is not an argon2id PHC string, the name is empty or
    /// given twice). Never contains the hash.
    #[error("user {user:?}: {reason}")]
    User {
        /// The user's name.
        user: String,
        /// What is wrong.
        reason: String,
    },
    /// No users are configured and a listener would be reachable from other machines.
    #[error(
        "refusing to listen on {addr} without users: anyone could use the broker. Add a \
         [[users]] entry to the config file (its password_hash from `levee passwd`), or set \
         allow_anonymous = true"
    )]
    Exposed {
        /// The non-loopback address.
        addr: SocketAddr,
    },
    /// A reload would turn TLS on or off (that needs a restart: listeners are built for one).
    #[error("{0}")]
    NeedsRestart(&'static str),
}

/// Why a login was refused. The text never tells whether the user exists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// Unknown user, wrong password, or a certificate naming an unknown user.
    #[error("authentication failed: unknown user or wrong password")]
    BadCredentials,
    /// Users are configured and the client gave no credentials (nor a client certificate).
    #[error("authentication required: give a user and password")]
    Required,
    /// The user has its `max_connections` open already.
    #[error("user {user} has reached its limit of {max} connections")]
    TooManyConnections {
        /// The user.
        user: String,
        /// Its limit.
        max: u32,
    },
}

/// A refused operation: the principal may not do `action` on `resource`. Stable code
/// `forbidden` (wire `AccessDenied`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("forbidden: user {user} may not {action} on {resource}")]
pub struct Forbidden {
    /// The user (`anonymous` for none).
    pub user: String,
    /// The action refused.
    pub action: Action,
    /// The resource, as text (`queue billing`).
    pub resource: String,
}

/// A publish refused by the user's `publish_rate`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("user {user} is over its publish rate of {rate} messages/s")]
pub struct Throttled {
    /// The user.
    pub user: String,
    /// Its rate.
    pub rate: u32,
}

/// Counters of logins and refusals (for `/metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SecurityCounters {
    /// Successful logins.
    pub logins: u64,
    /// Refused logins.
    pub login_failures: u64,
    /// Refused operations.
    pub forbidden: u64,
}

struct UserEntry {
    hash: Option<String>,
    rules: Vec<rules::Rule>,
}

/// One generation of the user table.
struct Table {
    users: HashMap<String, UserEntry>,
    /// No users: everyone is anonymous, with every right.
    anonymous: bool,
}

/// Per-user state that lives across reloads: open connections and the publish rate limiter.
struct UserState {
    connections: AtomicU32,
    max_connections: AtomicU32,
    limiter: RwLock<Option<(u32, Arc<governor::DefaultDirectRateLimiter>)>>,
}

impl UserState {
    fn configure(&self, u: &UserConfig) {
        self.max_connections
            .store(u.max_connections.unwrap_or(0), Ordering::Release);
        let mut l = self.limiter.write();
        match u.publish_rate.and_then(NonZeroU32::new) {
            Some(rate) if l.as_ref().map(|(r, _)| *r) != Some(rate.get()) => {
                let burst = NonZeroU32::new(rate.get().max(levee_proto::MAX_BATCH as u32))
                    .expect("non-zero");
                let quota = governor::Quota::per_second(rate).allow_burst(burst);
                *l = Some((rate.get(), Arc::new(governor::RateLimiter::direct(quota))));
            }
            Some(_) => {}
            None => *l = None,
        }
    }
}

/// Who is doing an operation: a logged-in user, or anonymous (only when no users exist).
#[derive(Clone)]
pub struct Principal {
    user: Option<Arc<str>>,
    peer: Option<SocketAddr>,
    state: Option<Arc<UserState>>,
}

impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Principal({})", self.name())
    }
}

impl Principal {
    /// The user's name, `anonymous` for none.
    pub fn name(&self) -> &str {
        self.user.as_deref().unwrap_or("anonymous")
    }

    /// Whether this is the anonymous principal.
    pub fn is_anonymous(&self) -> bool {
        self.user.is_none()
    }

    /// The peer address it logged in from.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// Takes `n` messages from the user's publish rate (if it has one).
    pub fn check_publish(&self, n: u32) -> Result<(), Throttled> {
        let Some(state) = &self.state else {
            return Ok(());
        };
        let limiter = state.limiter.read().clone();
        let Some((rate, limiter)) = limiter else {
            return Ok(());
        };
        let Some(n) = NonZeroU32::new(n) else {
            return Ok(());
        };
        match limiter.check_n(n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) | Err(_) => Err(Throttled {
                user: self.name().to_string(),
                rate,
            }),
        }
    }
}

/// A connection's login: holds one of its user's `max_connections` slots until dropped.
pub struct Session {
    principal: Principal,
    security: Security,
    changes: watch::Receiver<u64>,
}

impl Session {
    /// The logged-in principal.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// Resolves when a reload removed this session's user (or turned anonymous access off): the
    /// connection must then be closed.
    ///
    /// # Cancel safety
    /// Cancel-safe: a change seen is checked again by the next call.
    pub async fn revoked(&mut self) {
        loop {
            if !self.security.is_current(&self.principal) {
                return;
            }
            if self.changes.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(s) = &self.principal.state {
            s.connections.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

struct Inner {
    table: RwLock<Arc<Table>>,
    states: Mutex<HashMap<String, Arc<UserState>>>,
    tls: RwLock<Option<Arc<rustls::ServerConfig>>>,
    allow_anonymous: AtomicBool,
    /// Some listener is on a non-loopback address.
    exposed: AtomicBool,
    failed: Mutex<throttle::FailedLogins>,
    verifying: Semaphore,
    logins: AtomicU64,
    login_failures: AtomicU64,
    forbidden: AtomicU64,
    changes: watch::Sender<u64>,
}

/// The reloadable security state of a broker. Cheap to clone.
#[derive(Clone)]
pub struct Security {
    inner: Arc<Inner>,
}

fn build_table(cfg: &SecurityConfig) -> Result<Table, SecurityError> {
    let mut users = HashMap::new();
    for u in &cfg.users {
        let bad = |reason: &str| SecurityError::User {
            user: u.name.clone(),
            reason: reason.to_string(),
        };
        if u.name.is_empty() || u.name.len() > 255 {
            return Err(bad("a user name is 1 to 255 bytes"));
        }
        if let Some(h) = &u.password_hash {
            let parsed = argon2::PasswordHash::new(h).map_err(|_| {
                bad("password_hash is not a PHC string (make one with `levee passwd`)")
            })?;
            if parsed.algorithm != argon2::Algorithm::Argon2id.ident() {
                return Err(bad(
                    "password_hash must be argon2id (make one with `levee passwd`)",
                ));
            }
        }
        let entry = UserEntry {
            hash: u.password_hash.clone(),
            rules: u.permissions.iter().map(rules::Rule::new).collect(),
        };
        if users.insert(u.name.clone(), entry).is_some() {
            return Err(bad("given twice"));
        }
    }
    Ok(Table {
        anonymous: users.is_empty(),
        users,
    })
}

/// Verifies `password` against a PHC string (false on any error).
fn verify(hash: &str, password: &[u8]) -> bool {
    use argon2::PasswordVerifier;
    argon2::PasswordHash::new(hash).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password, &h)
            .is_ok()
    })
}

/// A hash to verify unknown users against, so an unknown user takes as long as a wrong password.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password(b"levee: not a password", &[7u8; 16]).unwrap_or_default())
}

/// The argon2id PHC string of `password` with `salt` (16 random bytes; `levee passwd` draws
/// them), with argon2's default costs.
pub fn hash_password(password: &[u8], salt: &[u8]) -> Result<String, String> {
    use argon2::PasswordHasher;
    let salt = argon2::password_hash::SaltString::encode_b64(salt).map_err(|e| e.to_string())?;
    argon2::Argon2::default()
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

impl Security {
    /// Builds the security state from `cfg`: checks every user entry and loads the TLS files.
    /// With no users and `allow_anonymous`, warns that the broker is open.
    pub fn new(cfg: &SecurityConfig) -> Result<Security, SecurityError> {
        let table = build_table(cfg)?;
        let tls = cfg.tls.as_ref().map(tls::server_config).transpose()?;
        let s = Security {
            inner: Arc::new(Inner {
                table: RwLock::new(Arc::new(Table {
                    users: HashMap::new(),
                    anonymous: true,
                })),
                states: Mutex::new(HashMap::new()),
                tls: RwLock::new(tls),
                allow_anonymous: AtomicBool::new(cfg.allow_anonymous),
                exposed: AtomicBool::new(false),
                failed: Mutex::new(throttle::FailedLogins::default()),
                verifying: Semaphore::new(MAX_VERIFYING),
                logins: AtomicU64::new(0),
                login_failures: AtomicU64::new(0),
                forbidden: AtomicU64::new(0),
                changes: watch::channel(0).0,
            }),
        };
        s.install(cfg, table);
        if cfg.users.is_empty() && cfg.allow_anonymous {
            tracing::warn!(
                "allow_anonymous = true and no users: anyone who can reach a listener can do \
                 anything"
            );
        }
        Ok(s)
    }

    fn install(&self, cfg: &SecurityConfig, table: Table) {
        {
            let mut states = self.inner.states.lock();
            for u in &cfg.users {
                states
                    .entry(u.name.clone())
                    .or_insert_with(|| {
                        Arc::new(UserState {
                            connections: AtomicU32::new(0),
                            max_connections: AtomicU32::new(0),
                            limiter: RwLock::new(None),
                        })
                    })
                    .configure(u);
            }
            states.retain(|name, _| table.users.contains_key(name));
        }
        *self.inner.table.write() = Arc::new(table);
        self.inner
            .allow_anonymous
            .store(cfg.allow_anonymous, Ordering::Release);
        self.inner.changes.send_modify(|g| *g += 1);
    }

    /// Replaces users, permissions and certificates with `cfg`'s, all or nothing. Connections
    /// whose user is gone are closed (their [`Session::revoked`] resolves).
    pub fn reload(&self, cfg: &SecurityConfig) -> Result<(), SecurityError> {
        let table = build_table(cfg)?;
        if table.anonymous && self.inner.exposed.load(Ordering::Acquire) && !cfg.allow_anonymous {
            return Err(SecurityError::NeedsRestart(
                "the new config has no users but a listener is on a public address: keep at \
                 least one user, or set allow_anonymous = true",
            ));
        }
        let tls = match (&cfg.tls, self.tls_enabled()) {
            (Some(t), true) => Some(tls::server_config(t)?),
            (None, false) => None,
            (Some(_), false) => {
                return Err(SecurityError::NeedsRestart(
                    "[tls] was added: restart the broker to turn TLS on",
                ));
            }
            (None, true) => {
                return Err(SecurityError::NeedsRestart(
                    "[tls] was removed: restart the broker to turn TLS off",
                ));
            }
        };
        if tls.is_some() {
            *self.inner.tls.write() = tls;
        }
        let users = table.users.len();
        self.install(cfg, table);
        tracing::info!(target: AUDIT_TARGET, users, "security config reloaded");
        Ok(())
    }

    /// Refuses `addr` if it is not a loopback address and no users are configured (unless
    /// `allow_anonymous`). Every listener checks its address before binding.
    pub fn check_exposure(&self, addr: SocketAddr) -> Result<(), SecurityError> {
        if addr.ip().is_loopback() {
            return Ok(());
        }
        if self.inner.table.read().anonymous && !self.inner.allow_anonymous.load(Ordering::Acquire)
        {
            return Err(SecurityError::Exposed { addr });
        }
        self.inner.exposed.store(true, Ordering::Release);
        Ok(())
    }

    /// Whether listeners speak TLS.
    pub fn tls_enabled(&self) -> bool {
        self.inner.tls.read().is_some()
    }

    pub(crate) fn tls_config(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.inner.tls.read().clone()
    }

    /// Whether users are configured (logins are checked).
    pub fn users_configured(&self) -> bool {
        !self.inner.table.read().anonymous
    }

    /// Login and refusal counters.
    pub fn counters(&self) -> SecurityCounters {
        SecurityCounters {
            logins: self.inner.logins.load(Ordering::Relaxed),
            login_failures: self.inner.login_failures.load(Ordering::Relaxed),
            forbidden: self.inner.forbidden.load(Ordering::Relaxed),
        }
    }

    fn table(&self) -> Arc<Table> {
        self.inner.table.read().clone()
    }

    fn principal(&self, user: &str, peer: SocketAddr) -> Principal {
        Principal {
            user: Some(Arc::from(user)),
            peer: Some(peer),
            state: self.inner.states.lock().get(user).cloned(),
        }
    }

    fn is_current(&self, p: &Principal) -> bool {
        let table = self.table();
        match &p.user {
            None => table.anonymous,
            Some(u) => table.users.contains_key(&**u),
        }
    }

    /// Checks `user`'s `password`. On failure: counted, audit-logged (user and address, never
    /// the password), and answered only after the source address's delay (100 ms doubling per
    /// failure in a row, at most 3.2 s).
    ///
    /// # Cancel safety
    /// Cancel-safe (nothing is changed until the verification finished).
    pub async fn authenticate(
        &self,
        user: &str,
        password: &str,
        peer: SocketAddr,
    ) -> Result<Principal, AuthError> {
        let hash = self.table().users.get(user).and_then(|u| u.hash.clone());
        let ok = {
            let _permit = self.inner.verifying.acquire().await;
            let known = hash.is_some();
            let hash = hash.unwrap_or_else(|| dummy_hash().to_string());
            let password = password.as_bytes().to_vec();
            tokio::task::spawn_blocking(move || verify(&hash, &password))
                .await
                .unwrap_or(false)
                && known
        };
        if ok {
            Ok(self.logged_in(user, peer, "password"))
        } else {
            Err(self.failed(user, peer, AuthError::BadCredentials).await)
        }
    }

    fn logged_in(&self, user: &str, peer: SocketAddr, how: &'static str) -> Principal {
        self.inner.failed.lock().succeeded(peer.ip());
        self.inner.logins.fetch_add(1, Ordering::Relaxed);
        tracing::info!(target: AUDIT_TARGET, user, %peer, how, "login");
        self.principal(user, peer)
    }

    async fn failed(&self, user: &str, peer: SocketAddr, e: AuthError) -> AuthError {
        self.inner.login_failures.fetch_add(1, Ordering::Relaxed);
        let delay = self
            .inner
            .failed
            .lock()
            .failed(peer.ip(), std::time::Instant::now());
        tracing::warn!(
            target: AUDIT_TARGET,
            user,
            %peer,
            reason = %e,
            delay_ms = delay.as_millis() as u64,
            "login refused"
        );
        tokio::time::sleep(delay).await;
        e
    }

    /// The one login call of a front end: anonymous when no users exist; else the client
    /// certificate's user (mTLS; `credentials`, if also given, must name the same user and carry
    /// its password), else `credentials` (user, password) checked by [`Security::authenticate`].
    ///
    /// # Cancel safety
    /// Cancel-safe, as [`Security::authenticate`].
    pub async fn login(
        &self,
        credentials: Option<(&str, &str)>,
        cert_user: Option<&str>,
        peer: SocketAddr,
    ) -> Result<Principal, AuthError> {
        let table = self.table();
        if table.anonymous {
            return Ok(Principal {
                user: None,
                peer: Some(peer),
                state: None,
            });
        }
        match (cert_user, credentials) {
            (Some(cu), None) => {
                if table.users.contains_key(cu) {
                    Ok(self.logged_in(cu, peer, "certificate"))
                } else {
                    Err(self.failed(cu, peer, AuthError::BadCredentials).await)
                }
            }
            (Some(cu), Some((user, _))) if cu != user => {
                Err(self.failed(user, peer, AuthError::BadCredentials).await)
            }
            (_, Some((user, password))) => self.authenticate(user, password, peer).await,
            (None, None) => {
                self.inner.login_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(target: AUDIT_TARGET, %peer, "login refused: no credentials");
                Err(AuthError::Required)
            }
        }
    }

    /// Takes one of the principal's `max_connections` slots for a connection's life.
    pub fn open_session(&self, principal: Principal) -> Result<Session, AuthError> {
        if let Some(s) = &principal.state {
            let max = s.max_connections.load(Ordering::Acquire);
            let now = s.connections.fetch_add(1, Ordering::AcqRel);
            if max > 0 && now >= max {
                s.connections.fetch_sub(1, Ordering::AcqRel);
                tracing::warn!(target: AUDIT_TARGET, user = principal.name(), max, "connection refused: max_connections");
                return Err(AuthError::TooManyConnections {
                    user: principal.name().to_string(),
                    max,
                });
            }
        }
        Ok(Session {
            principal,
            security: self.clone(),
            changes: self.inner.changes.subscribe(),
        })
    }

    /// Whether `principal` may do `action` on `resource`, without counting or logging (to
    /// filter listings).
    pub fn permits(&self, principal: &Principal, action: Action, resource: Resource<'_>) -> bool {
        let table = self.table();
        match &principal.user {
            None => table.anonymous,
            Some(u) => table
                .users
                .get(&**u)
                .is_some_and(|e| rules::allows(&e.rules, action, resource)),
        }
    }

    /// The one authorize call per operation. A refusal is counted and audit-logged; a granted
    /// `manage` operation is audit-logged too.
    pub fn authorize(
        &self,
        principal: &Principal,
        action: Action,
        resource: Resource<'_>,
    ) -> Result<(), Forbidden> {
        let user = principal.name();
        let peer = principal.peer.map(|p| p.to_string()).unwrap_or_default();
        if self.permits(principal, action, resource) {
            if action == Action::Manage {
                tracing::info!(target: AUDIT_TARGET, user, %peer, %action, %resource, "manage");
            }
            return Ok(());
        }
        self.inner.forbidden.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(target: AUDIT_TARGET, user, %peer, %action, %resource, "forbidden");
        Err(Forbidden {
            user: user.to_string(),
            action,
            resource: resource.to_string(),
        })
    }
}

impl Default for Security {
    /// No users, no TLS: anonymous (loopback only).
    fn default() -> Self {
        Security::new(&SecurityConfig::default()).expect("the empty config is valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, password: &str, perms: Vec<PermissionConfig>) -> UserConfig {
        UserConfig {
            name: name.into(),
            password_hash: Some(hash_password(password.as_bytes(), &[1; 16]).unwrap()),
            permissions: perms,
            max_connections: Some(1),
            publish_rate: None,
        }
    }

    fn peer() -> SocketAddr {
        "192.0.2.1:1000".parse().unwrap()
    }

    #[tokio::test]
    async fn logins_sessions_and_reloads() {
        let cfg = SecurityConfig {
            users: vec![user(
                "enc",
                "pw",
                vec![PermissionConfig {
                    queues: Some("video.*".into()),
                    exchanges: None,
                    actions: vec![ActionName::Publish],
                }],
            )],
            ..SecurityConfig::default()
        };
        let s = Security::new(&cfg).unwrap();
        assert!(s.check_exposure("0.0.0.0:1".parse().unwrap()).is_ok());
        assert_eq!(
            s.login(Some(("enc", "bad")), None, peer())
                .await
                .unwrap_err(),
            AuthError::BadCredentials
        );
        assert_eq!(
            s.login(Some(("nobody", "pw")), None, peer())
                .await
                .unwrap_err(),
            AuthError::BadCredentials
        );
        assert_eq!(
            s.login(None, None, peer()).await.unwrap_err(),
            AuthError::Required
        );
        let p = s.login(Some(("enc", "pw")), None, peer()).await.unwrap();
        assert!(
            s.authorize(&p, Action::Publish, Resource::Queue("video.a"))
                .is_ok()
        );
        let f = s
            .authorize(&p, Action::Consume, Resource::Queue("video.a"))
            .unwrap_err();
        assert_eq!(
            f.to_string(),
            "forbidden: user enc may not consume on queue video.a"
        );
        assert_eq!(s.counters().forbidden, 1);
        assert_eq!(s.counters().login_failures, 3);
        let mut session = s.open_session(p.clone()).unwrap();
        assert!(matches!(
            s.open_session(p.clone()),
            Err(AuthError::TooManyConnections { max: 1, .. })
        ));
        // A reload that keeps the user keeps the session; one that removes it revokes it.
        s.reload(&cfg).unwrap();
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), session.revoked())
                .await
                .is_err()
        );
        let other = SecurityConfig {
            users: vec![user("other", "x", vec![])],
            ..SecurityConfig::default()
        };
        s.reload(&other).unwrap();
        session.revoked().await;
        assert!(
            s.authorize(&p, Action::Publish, Resource::Queue("video.a"))
                .is_err()
        );
        // No users on a public address: the reload is refused, the old table stays.
        assert!(s.reload(&SecurityConfig::default()).is_err());
        assert!(s.users_configured());
    }

    #[test]
    fn no_users_is_loopback_only_unless_allowed() {
        let s = Security::default();
        assert!(s.check_exposure("127.0.0.1:5680".parse().unwrap()).is_ok());
        assert!(s.check_exposure("[::1]:5680".parse().unwrap()).is_ok());
        let e = s
            .check_exposure("0.0.0.0:5680".parse().unwrap())
            .unwrap_err();
        assert!(e.to_string().contains("levee passwd"), "{e}");
        let open = Security::new(&SecurityConfig {
            allow_anonymous: true,
            ..SecurityConfig::default()
        })
        .unwrap();
        assert!(open.check_exposure("0.0.0.0:5680".parse().unwrap()).is_ok());
    }

    #[test]
    fn bad_hashes_are_refused_without_echoing_them() {
        let mut u = user("a", "pw", vec![]);
        u.password_hash = Some("secret-not-a-hash".into());
        let e = Security::new(&SecurityConfig {
            users: vec![u],
            ..SecurityConfig::default()
        })
        .err()
        .unwrap();
        assert!(!e.to_string().contains("secret-not-a-hash"), "{e}");
        assert!(format!("{:?}", user("b", "pw", vec![])).contains("<redacted>"));
    }
}
