//! `sluice:plugin/events`: progress and structured logs, to the event stream and traces.

use sluice_types::{JobEvent, LogLevel};

use super::HostState;
use crate::bindings::events as w;

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
        let message = bounded(message);
        let fields: Vec<_> = fields
            .into_iter()
            .take(MAX_FIELDS)
            .map(|(k, v)| (bounded(k), bounded(v)))
            .collect();
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

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let s = "é".repeat(MAX_MESSAGE_BYTES);
        let b = bounded(s);
        assert!(b.len() <= MAX_MESSAGE_BYTES + '…'.len_utf8());
        assert!(b.ends_with('…'));
    }
}
