//! The mail pipeline: use cases queue mail in the outbox (durably, inside the RPC), and delivery
//! workers on every replica hand it to the transport with retries and backoff.
//!
//! Delivery is at-least-once with a lease: a worker claims a message for `LEASE`, sends it, and
//! marks it sent. Two workers never hold one message at once, so a message goes out twice only
//! if a worker dies (or stalls past its lease) after SMTP accepted the message and before it
//! recorded that.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lettre::message::Mailbox;
use tokio::sync::Notify;

use super::{App, AuditRecord, Caller};
use crate::domain::audit::AuditAction;
use crate::domain::audit::Outcome;
use crate::error::Result;
use crate::mail::{Sealer, Templates, Transport, SMTP_TIMEOUT};
use crate::store::mail_outbox::OutboxDoc;

/// How long a worker holds a claimed message: past any SMTP timeout.
const LEASE: Duration = Duration::from_secs(3 * SMTP_TIMEOUT.as_secs());
/// A message that could not be delivered for this long is given up (and audited).
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 3600);
/// Workers per replica; each delivers one message at a time.
pub const WORKERS: usize = 4;
/// How often an idle worker looks for mail queued by other replicas or due for retry.
const POLL: Duration = Duration::from_millis(500);

/// What queuing mail needs: templates, the sealing key, the sender, and a bell for the local
/// workers.
pub struct Outbox {
    pub templates: Templates,
    pub sealer: Sealer,
    pub from: Mailbox,
    pub wakeup: Notify,
}

/// The wait before attempt `attempts + 1`: base * 2^(attempts-1), capped.
pub fn backoff(attempts: u32, base: Duration, max: Duration) -> Duration {
    let factor = 2u32.saturating_pow(attempts.saturating_sub(1).min(20));
    base.saturating_mul(factor).min(max)
}

/// `wait` spread over 75..125 % of itself, so that messages that failed together (an SMTP
/// outage) do not all come back at the same instant.
fn jittered(wait: Duration) -> Duration {
    use rand::Rng;
    wait.mul_f64(rand::thread_rng().gen_range(0.75..1.25))
}

impl App {
    /// Renders mail of `kind` and queues it. Returns once it is stored: from here on it is
    /// delivered even if SMTP is down or this process dies.
    pub async fn queue_mail(
        &self,
        kind: &str,
        to: &str,
        to_name: &str,
        context: minijinja::Value,
    ) -> Result<()> {
        let mail = self.mail.templates.render(kind, to, to_name, context)?;
        let id = crate::domain::secrets::new_id();
        self.store
            .mail_outbox
            .enqueue(
                &id,
                kind,
                self.mail.sealer.seal(&mail),
                self.now(),
                GIVE_UP_AFTER,
            )
            .await?;
        self.mail.wakeup.notify_one();
        Ok(())
    }

    /// Delivers one due message, if there is one. Returns whether it found one.
    pub async fn deliver_one(&self, transport: &Transport, owner: &str) -> Result<bool> {
        let now = self.now();
        let Some(doc) = self.store.mail_outbox.claim_due(owner, now, LEASE).await? else {
            return Ok(false);
        };
        let outcome = match doc.sealed.as_ref().map(|b| self.mail.sealer.open(&b.bytes)) {
            Some(Ok(mail)) => transport.deliver(&self.mail.from, &mail).await,
            Some(Err(e)) => Err(crate::mail::DeliveryError {
                message: format!("{e:#}"),
                permanent: true,
            }),
            None => Err(crate::mail::DeliveryError {
                message: "message body missing".into(),
                permanent: true,
            }),
        };
        let outbox = &self.store.mail_outbox;
        use crate::metrics::{mail_delivery, MailDelivery};
        match outcome {
            Ok(()) => {
                mail_delivery(MailDelivery::Sent);
                outbox.mark_sent(&doc.id, owner, self.now()).await?;
                self.audit_delivery(&doc, Outcome::Success, None).await;
            }
            Err(e) if e.permanent || self.too_old(&doc, now) => {
                tracing::error!(mail_id = %doc.id, kind = %doc.kind, attempts = doc.attempts, error = %e, "giving up on mail");
                mail_delivery(MailDelivery::Failed);
                outbox.mark_failed(&doc.id, owner, &e.message).await?;
                self.audit_delivery(&doc, Outcome::Failure, Some(&e.message))
                    .await;
            }
            Err(e) => {
                let wait = jittered(backoff(
                    doc.attempts,
                    self.config.mail_retry_base_delay,
                    self.config.mail_retry_max_delay,
                ));
                tracing::warn!(mail_id = %doc.id, kind = %doc.kind, attempts = doc.attempts, retry_in_ms = wait.as_millis() as u64, error = %e, "mail delivery failed; will retry");
                let next = self.now() + chrono::Duration::from_std(wait).unwrap_or_default();
                mail_delivery(MailDelivery::Retry);
                outbox.retry_at(&doc.id, owner, next, &e.message).await?;
            }
        }
        Ok(true)
    }

    fn too_old(&self, doc: &OutboxDoc, now: DateTime<Utc>) -> bool {
        (now - doc.created_at).to_std().unwrap_or_default() >= GIVE_UP_AFTER
    }

    async fn audit_delivery(&self, doc: &OutboxDoc, outcome: Outcome, error: Option<&str>) {
        let system = Caller::default();
        let mut event = AuditRecord::new(AuditAction::MailDelivery, outcome, &system)
            .detail("mail_id", doc.id.as_str())
            .detail("kind", doc.kind.as_str())
            .detail("attempts", doc.attempts as i64);
        if let Some(error) = error {
            event = event.detail("error", error);
        }
        self.audit(event).await;
    }
}

/// Runs `WORKERS` delivery loops until the returned handles are aborted.
pub fn spawn_workers(app: Arc<App>, transport: Arc<Transport>) -> Vec<tokio::task::JoinHandle<()>> {
    let replica = crate::domain::secrets::new_id();
    (0..WORKERS)
        .map(|n| {
            let (app, transport) = (app.clone(), transport.clone());
            let owner = format!("{replica}-{n}");
            tokio::spawn(async move {
                loop {
                    let found = if app.ensure_ready().is_ok() {
                        match app.deliver_one(&transport, &owner).await {
                            Ok(found) => found,
                            Err(e) => {
                                tracing::warn!(error = %e, "mail outbox unavailable");
                                false
                            }
                        }
                    } else {
                        false
                    };
                    if !found {
                        let _ = tokio::time::timeout(POLL, app.mail.wakeup.notified()).await;
                    }
                }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let (base, max) = (Duration::from_secs(5), Duration::from_secs(300));
        let waits: Vec<u64> = (1..=9).map(|n| backoff(n, base, max).as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(backoff(u32::MAX, base, max), max);
    }

    #[test]
    fn jitter_spreads_retries_around_the_backoff() {
        let wait = Duration::from_secs(100);
        let waits: Vec<Duration> = (0..200).map(|_| jittered(wait)).collect();
        assert!(waits
            .iter()
            .all(|w| *w >= Duration::from_secs(75) && *w < Duration::from_secs(125)));
        let distinct: std::collections::HashSet<_> = waits.iter().collect();
        assert!(
            distinct.len() > 150,
            "retries are not spread: {}",
            distinct.len()
        );
    }
}
