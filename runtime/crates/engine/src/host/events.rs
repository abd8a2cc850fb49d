//! `sluice:plugin/events`: progress and structured logs, to the event stream and traces.
//!
//! Each attempt has an event budget ([`JobLimits::max_events`] events and
//! [`JobLimits::max_event_bytes`] bytes of text). Past it, events are dropped and counted,
//! not traced, and the attempt's stream ends with one `events_truncated` event
//! ([`HostState::finish_events`]). A guest flooding `events::info` costs the host one lift
//! (bounded by the hostcall fuel) and a counter increment per call, nothing that grows.

use sluice_types::{JobEvent, LogLevel};

use super::HostState;
use crate::bindings::events as w;
use crate::limits::JobLimits;

/// What an attempt has emitted and dropped.
#[derive(Debug, Default)]
pub(crate) struct EventBudget {
    /// Events published.
    pub(crate) emitted: u32,
    /// Bytes of event text published.
    pub(crate) bytes: usize,
    /// Events dropped once the budget ran out.
    pub(crate) dropped: u64,
    /// Bytes of (already cut) event text dropped.
    pub(crate) dropped_bytes: u64,
}

impl EventBudget {
    /// Whether an event of `bytes` fits; counts it as published or dropped. Once one event
    /// is dropped every later one is too, so what was kept is a prefix of what was sent.
    fn admit(&mut self, bytes: usize, limits: &JobLimits) -> bool {
        let fits = self.dropped == 0
            && self.emitted < limits.max_events
            && self
                .bytes
                .checked_add(bytes)
                .is_some_and(|total| total <= limits.max_event_bytes);
        if fits {
            self.emitted += 1;
            self.bytes += bytes;
        } else {
            self.dropped = self.dropped.saturating_add(1);
            self.dropped_bytes = self.dropped_bytes.saturating_add(bytes as u64);
        }
        fits
    }
}

impl HostState {
    /// Publish the one `events_truncated` event if this attempt dropped any. Called once,
    /// when the attempt ends, however it ends.
    pub(crate) fn finish_events(&mut self) {
        if self.events.dropped == 0 {
            return;
        }
        let job = self.ctx.job.id;
        tracing::warn!(
            %job,
            dropped = self.events.dropped,
            dropped_bytes = self.events.dropped_bytes,
            "job events over the limit were dropped"
        );
        self.services.events.emit(
            job,
            JobEvent::EventsTruncated {
                attempt: self.ctx.job.attempt,
                dropped: self.events.dropped,
                dropped_bytes: self.events.dropped_bytes,
                max_events: self.limits.max_events,
                max_bytes: self.limits.max_event_bytes as u64,
            },
        );
        // Exactly once, even if called again.
        self.events = EventBudget {
            emitted: self.events.emitted,
            bytes: self.events.bytes,
            dropped: 0,
            dropped_bytes: 0,
        };
    }
}

/// Guest-supplied text is bounded so a chatty handler cannot flood the event stream.
const MAX_MESSAGE_BYTES: usize = 8 * 1024;
const MAX_FIELDS: usize = 32;

fn bounded(mut s: String) -> String {
    if s.len() > MAX_MESSAGE_BYTES {
        let mut cut = MAX_MESSAGE_BYTES;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

impl w::Host for HostState {
    async fn progress(&mut self, message: String, fraction: Option<f32>) -> wasmtime::Result<()> {
        self.check_cancelled()?;
        let message = bounded(message);
        if !self.events.admit(message.len(), &self.limits) {
            return Ok(());
        }
        let fraction = fraction
            .filter(|f| f.is_finite())
            .map(|f| f.clamp(0.0, 1.0));
        tracing::debug!(job = %self.ctx.job.id, %message, ?fraction, "progress");
        self.services
            .events
            .emit(self.ctx.job.id, JobEvent::Progress { message, fraction });
        Ok(())
    }

    async fn log(
        &mut self,
        level: w::Level,
        message: String,
        fields: Vec<(String, String)>,
    ) -> wasmtime::Result<()> {
        self.check_cancelled()?;
        // Past the budget, drop before any more work (a flood is mostly dropped calls).
        if self.events.dropped > 0 {
            let sent = message.len() + fields.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
            self.events.admit(sent, &self.limits);
            return Ok(());
        }
        let message = bounded(message);
        let fields: Vec<_> = fields
            .into_iter()
            .take(MAX_FIELDS)
            .map(|(k, v)| (bounded(k), bounded(v)))
            .collect();
        let size = message.len() + fields.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        if !self.events.admit(size, &self.limits) {
            return Ok(());
        }
        let job = self.ctx.job.id;
        let plugin = &self.ctx.job.plugin;
        let level = match level {
            w::Level::Trace => {
                tracing::trace!(%job, %plugin, ?fields, "{message}");
                LogLevel::Trace
            }
            w::Level::Debug => {
                tracing::debug!(%job, %plugin, ?fields, "{message}");
                LogLevel::Debug
            }
            w::Level::Info => {
                tracing::info!(%job, %plugin, ?fields, "{message}");
                LogLevel::Info
            }
            w::Level::Warn => {
                tracing::warn!(%job, %plugin, ?fields, "{message}");
                LogLevel::Warn
            }
            w::Level::Error => {
                tracing::error!(%job, %plugin, ?fields, "{message}");
                LogLevel::Error
            }
        };
        self.services.events.emit(
            job,
            JobEvent::Log {
                level,
                message,
                fields,
            },
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::testing;
    use w::Host;

    #[tokio::test]
    async fn past_the_count_cap_events_are_dropped_and_reported_once() {
        let events = std::sync::Arc::new(crate::memory::RecordedEvents::default());
        let mut h = testing::state_with(JobLimits {
            max_events: 3,
            ..JobLimits::default()
        });
        h.services.events = events.clone();
        for i in 0..10 {
            h.log(w::Level::Info, format!("line {i}"), vec![])
                .await
                .unwrap();
        }
        h.progress("late".into(), None).await.unwrap();
        h.finish_events();
        h.finish_events();
        let seen = events.of(h.ctx.job.id);
        assert_eq!(seen.len(), 4, "{seen:?}");
        assert!(matches!(&seen[2], JobEvent::Log { message, .. } if message == "line 2"));
        match &seen[3] {
            JobEvent::EventsTruncated {
                dropped,
                max_events,
                ..
            } => {
                assert_eq!(*dropped, 8);
                assert_eq!(*max_events, 3);
            }
            other => panic!("expected events_truncated, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn past_the_byte_cap_events_are_dropped() {
        let events = std::sync::Arc::new(crate::memory::RecordedEvents::default());
        let mut h = testing::state_with(JobLimits {
            max_event_bytes: 100,
            ..JobLimits::default()
        });
        h.services.events = events.clone();
        h.progress("x".repeat(60), None).await.unwrap();
        // Would take the attempt to 120 bytes: dropped, and so is everything after it.
        h.progress("y".repeat(60), None).await.unwrap();
        h.progress("z".into(), None).await.unwrap();
        h.finish_events();
        let seen = events.of(h.ctx.job.id);
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(matches!(
            &seen[1],
            JobEvent::EventsTruncated {
                dropped: 2,
                dropped_bytes: 61,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn no_truncation_event_when_nothing_was_dropped() {
        let events = std::sync::Arc::new(crate::memory::RecordedEvents::default());
        let mut h = testing::state();
        h.services.events = events.clone();
        h.progress("hello".into(), Some(0.5)).await.unwrap();
        h.finish_events();
        assert_eq!(events.of(h.ctx.job.id).len(), 1);
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let s = "é".repeat(MAX_MESSAGE_BYTES);
        let b = bounded(s);
        assert!(b.len() <= MAX_MESSAGE_BYTES + '…'.len_utf8());
        assert!(b.ends_with('…'));
    }
}
