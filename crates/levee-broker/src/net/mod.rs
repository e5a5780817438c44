//! Network front ends of the broker: what turns sockets into calls on the registry ([`Broker`])
//! and the queue actors.
//!
//! - `listener`: the wire protocol's accept loop ([`Broker::serve`], [`Broker::bind`]) and the
//!   accept back-off (also used by the HTTP listener);
//! - `conn`: one connection speaking the levee-proto wire protocol;
//! - `limits`: the broker-wide bounds every front end shares (connection slots, the frame
//!   budget), owned by the broker and drawn from by each connection.
//!
//! Dependencies point one way: `listener` -> `conn` -> the broker's registry API; `crate::broker`
//! depends on nothing here but `limits` (it owns the budgets). A second protocol front end (AMQP)
//! sits beside `conn` with an accept loop of its own.
//!
//! [`Broker`]: crate::Broker
//! [`Broker::serve`]: crate::Broker::serve
//! [`Broker::bind`]: crate::Broker::bind

mod conn;
pub(crate) mod limits;
pub(crate) mod listener;
