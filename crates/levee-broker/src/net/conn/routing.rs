//! The exchange frames of a native connection (protocol 2): declare / delete exchange, bind /
//! unbind, list, and publishing to an exchange through the connection's [`RoutedPublisher`]
//! (created at its first routed publish, sharing the connection's in-flight limits with its
//! direct publishes; its confirms go out as `RoutedConfirm` frames).
//!
//! Rights (checked before anything else, a refusal answers `forbidden` and the connection goes
//! on): declaring or deleting an exchange needs `manage` on the exchange (a passive declare:
//! `monitor` on it); binding and unbinding need `manage` on the queue; listing bindings of one
//! exchange needs `monitor` on it; publishing needs `publish` on the exchange, or on the queue
//! named by the routing key through the default exchange `""`.

use levee_proto::{ClientFrame, ErrorCode, PublishOutcome, RoutedOutcome, ServerFrame};

use super::{Conn, detach, error_frame};
use crate::security::{Action, Resource};

impl Conn {
    /// Handles an exchange frame (every other frame is the caller's).
    pub(super) async fn handle_exchange(&mut self, frame: ClientFrame) {
        if let Some((req, action, resource)) = needs(&frame)
            && !self.allowed_on(req, action, resource)
        {
            return;
        }
        match frame {
            ClientFrame::DeclareExchange {
                req,
                exchange,
                config,
                passive,
            } => {
                let result = if passive {
                    self.broker.check_exchange(&exchange).map(|_| false)
                } else {
                    self.broker.declare_exchange(&exchange, config).await
                };
                match result {
                    Ok(created) => {
                        if created {
                            tracing::info!(conn = self.id, %exchange, "exchange declared");
                        }
                        let _ = self.tx.send(ServerFrame::ExchangeOk {
                            req,
                            exchange,
                            created,
                        });
                    }
                    Err(e) => self.error(req, &e),
                }
            }
            ClientFrame::DeleteExchange {
                req,
                exchange,
                if_unused,
            } => match self.broker.delete_exchange(&exchange, if_unused).await {
                Ok(()) => {
                    tracing::info!(conn = self.id, %exchange, "exchange deleted");
                    let _ = self.tx.send(ServerFrame::ExchangeOk {
                        req,
                        exchange,
                        created: true,
                    });
                }
                Err(e) => self.error(req, &e),
            },
            ClientFrame::Bind { req, binding } => match self.broker.add_binding(&binding).await {
                Ok(created) => {
                    let _ = self.tx.send(ServerFrame::ExchangeOk {
                        req,
                        exchange: binding.exchange,
                        created,
                    });
                }
                Err(e) => self.error(req, &e),
            },
            ClientFrame::Unbind { req, binding } => {
                match self.broker.remove_binding(&binding).await {
                    Ok(existed) => {
                        let _ = self.tx.send(ServerFrame::ExchangeOk {
                            req,
                            exchange: binding.exchange,
                            created: existed,
                        });
                    }
                    Err(e) => self.error(req, &e),
                }
            }
            ClientFrame::ListExchanges { req } => {
                let mut exchanges = self.broker.exchanges();
                exchanges.truncate(levee_proto::MAX_LIST);
                let _ = self.tx.send(ServerFrame::ExchangeList { req, exchanges });
            }
            ClientFrame::ListBindings { req, exchange } => {
                let frame = match self.broker.bindings(exchange.as_deref()) {
                    Ok(mut bindings) => {
                        bindings.truncate(levee_proto::MAX_LIST);
                        ServerFrame::BindingList { req, bindings }
                    }
                    Err(e) => error_frame(req, &e),
                };
                let _ = self.tx.send(frame);
            }
            ClientFrame::PublishRouted {
                req,
                exchange,
                routing_key,
                messages,
            } => {
                // The user's publish rate applies to routed publishes as to direct ones.
                if let Err(e) = self.principal.check_publish(messages.len() as u32) {
                    let reason = e.to_string();
                    let outcomes = messages
                        .iter()
                        .map(|_| RoutedOutcome::Routed {
                            targets: 0,
                            outcome: PublishOutcome::Rejected {
                                code: ErrorCode::Throttled,
                                reason: reason.clone(),
                            },
                        })
                        .collect();
                    let _ = self.tx.send(ServerFrame::RoutedConfirm { req, outcomes });
                    return;
                }
                let messages = messages.into_iter().map(detach).collect();
                let publisher = self.routed.get_or_insert_with(|| {
                    let tx = self.tx.clone();
                    self.broker.routed_publisher_sharing(
                        self.in_flight.clone(),
                        Box::new(move |c| {
                            let _ = tx.send(ServerFrame::RoutedConfirm {
                                req: c.req,
                                outcomes: c.outcomes,
                            });
                        }),
                    )
                });
                if let Err(e) = publisher.publish(req, &exchange, &routing_key, messages) {
                    self.error(req, &e);
                }
            }
            other => {
                let _ = self.tx.send(ServerFrame::Error {
                    req: other.request_id().unwrap_or(0),
                    code: ErrorCode::ProtocolViolation,
                    message: "not an exchange frame".into(),
                });
            }
        }
    }
}

/// The right an exchange frame needs (`None`: only the login, for listing exchanges).
fn needs(frame: &ClientFrame) -> Option<(u64, Action, Resource<'_>)> {
    match frame {
        ClientFrame::DeclareExchange {
            req,
            exchange,
            passive,
            ..
        } => {
            let action = if *passive {
                Action::Monitor
            } else {
                Action::Manage
            };
            Some((*req, action, Resource::Exchange(exchange)))
        }
        ClientFrame::DeleteExchange { req, exchange, .. } => {
            Some((*req, Action::Manage, Resource::Exchange(exchange)))
        }
        ClientFrame::Bind { req, binding } | ClientFrame::Unbind { req, binding } => {
            Some((*req, Action::Manage, Resource::Queue(&binding.queue)))
        }
        ClientFrame::ListBindings {
            req,
            exchange: Some(exchange),
        } => Some((*req, Action::Monitor, Resource::Exchange(exchange))),
        ClientFrame::PublishRouted {
            req,
            exchange,
            routing_key,
            ..
        } => {
            let resource = if exchange.is_empty() {
                Resource::Queue(routing_key)
            } else {
                Resource::Exchange(exchange)
            };
            Some((*req, Action::Publish, resource))
        }
        _ => None,
    }
}
