//! The exchange frames of a native connection (protocol 2): declare / delete exchange, bind /
//! unbind, list, and publishing to an exchange through the connection's [`RoutedPublisher`]
//! (created at its first routed publish, sharing the connection's in-flight limits with its
//! direct publishes; its confirms go out as `RoutedConfirm` frames).

use levee_proto::{ClientFrame, ErrorCode, ServerFrame};

use super::{Conn, detach, error_frame};

impl Conn {
    /// Handles an exchange frame (every other frame is the caller's).
    pub(super) async fn handle_exchange(&mut self, frame: ClientFrame) {
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
