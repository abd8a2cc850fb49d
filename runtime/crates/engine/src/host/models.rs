//! `sluice:plugin/models`: chat, a concurrent batch form, and embeddings.

use futures::future::join_all;

use super::{HostState, convert};
use crate::bindings::models as w;

impl w::Host for HostState {
    async fn chat(
        &mut self,
        request: w::ChatRequest,
    ) -> wasmtime::Result<Result<w::ChatResponse, w::ModelError>> {
        self.check_cancelled()?;
        if let Err(e) = self.admit_model_calls(1) {
            return Ok(Err(e));
        }
        let seq = self.take_seq(1);
        let result = self
            .services
            .models
            .chat(&self.ctx, seq, convert::chat_request(request))
            .await;
        self.check_cancelled()?;
        Ok(result
            .map(convert::chat_response)
            .map_err(convert::model_error))
    }

    async fn chat_batch(
        &mut self,
        requests: Vec<w::ChatRequest>,
    ) -> wasmtime::Result<Vec<Result<w::ChatResponse, w::ModelError>>> {
        self.check_cancelled()?;
        // Both caps are checked before any call runs, and refuse the batch as a whole, so
        // the journal positions of later calls do not depend on where a cap fell.
        let refused = if requests.len() > self.limits.max_chat_batch as usize {
            Some(w::ModelError::InvalidRequest(format!(
                "chat-batch of {} requests exceeds the limit of {} per batch \
                 (job limit max_chat_batch); split it into smaller batches",
                requests.len(),
                self.limits.max_chat_batch
            )))
        } else {
            self.admit_model_calls(requests.len()).err()
        };
        if let Some(e) = refused {
            return Ok(vec![Err(e); requests.len()]);
        }
        // Positions are assigned in request order before anything runs, so a retry replays
        // the same entries from the journal whatever order the calls finish in.
        let first = self.take_seq(requests.len() as u32);
        let models = &self.services.models;
        let ctx = &self.ctx;
        let calls = requests
            .into_iter()
            .enumerate()
            .map(|(i, r)| models.chat(ctx, first + i as u32, convert::chat_request(r)));
        let results = join_all(calls).await;
        self.check_cancelled()?;
        Ok(results
            .into_iter()
            .map(|r| r.map(convert::chat_response).map_err(convert::model_error))
            .collect())
    }

    async fn embed(
        &mut self,
        request: w::EmbedRequest,
    ) -> wasmtime::Result<Result<w::EmbedResponse, w::ModelError>> {
        self.check_cancelled()?;
        if let Err(e) = self.admit_model_calls(1) {
            return Ok(Err(e));
        }
        let seq = self.take_seq(1);
        let request = sluice_types::model::EmbedRequest {
            model: request.model,
            inputs: request.inputs,
        };
        let result = self.services.models.embed(&self.ctx, seq, request).await;
        self.check_cancelled()?;
        Ok(result
            .map(convert::embed_response)
            .map_err(convert::model_error))
    }
}

impl HostState {
    fn take_seq(&mut self, n: u32) -> u32 {
        let first = self.next_seq;
        self.next_seq = self.next_seq.saturating_add(n);
        first
    }

    /// Count `n` model calls against the attempt's cap, or refuse them all with an error
    /// value (never a trap, and no provider is asked).
    fn admit_model_calls(&mut self, n: usize) -> Result<(), w::ModelError> {
        let max = self.limits.max_model_calls;
        match u32::try_from(n)
            .ok()
            .and_then(|n| self.model_calls.checked_add(n))
            .filter(|total| *total <= max)
        {
            Some(total) => {
                self.model_calls = total;
                Ok(())
            }
            None => Err(w::ModelError::InvalidRequest(format!(
                "model call limit reached: this attempt has made {} of its {max} model calls \
                 (job limit max_model_calls) and asked for {n} more",
                self.model_calls
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::testing;

    fn request(model: &str, text: &str) -> w::ChatRequest {
        w::ChatRequest {
            model: model.into(),
            messages: vec![w::Message {
                role: w::Role::User,
                content: text.into(),
            }],
            max_tokens: Some(32),
            temperature: None,
            response_format: w::ResponseFormat::Text,
            no_cache: false,
            stream_events: false,
        }
    }

    #[tokio::test]
    async fn chat_answers_and_counts_positions() {
        let mut host = testing::state();
        let r = w::Host::chat(&mut host, request("fast", "hello there"))
            .await
            .unwrap()
            .unwrap();
        assert!(!r.content.is_empty());
        assert!(r.usage.input_tokens > 0 && r.usage.output_tokens > 0);
        let batch = w::Host::chat_batch(
            &mut host,
            vec![
                request("fast", "a"),
                request("smart", "b"),
                request("fast", "c"),
            ],
        )
        .await
        .unwrap();
        assert_eq!(batch.len(), 3);
        assert!(batch.iter().all(|r| r.is_ok()));
        assert_eq!(host.next_seq, 4);
    }

    #[tokio::test]
    async fn unknown_model_is_an_error_value_not_a_trap() {
        let mut host = testing::state();
        let r = w::Host::chat(&mut host, request("no-such-model", "hi"))
            .await
            .unwrap();
        assert!(matches!(r, Err(w::ModelError::InvalidRequest(m)) if m.contains("no-such-model")));
    }

    #[tokio::test]
    async fn past_the_call_cap_calls_are_refused_as_values() {
        let mut host = testing::state_with(crate::limits::JobLimits {
            max_model_calls: 3,
            ..Default::default()
        });
        for _ in 0..3 {
            assert!(
                w::Host::chat(&mut host, request("fast", "hi"))
                    .await
                    .unwrap()
                    .is_ok()
            );
        }
        let r = w::Host::chat(&mut host, request("fast", "hi"))
            .await
            .unwrap();
        assert!(
            matches!(&r, Err(w::ModelError::InvalidRequest(m)) if m.contains("max_model_calls")),
            "{r:?}"
        );
        let e = w::Host::embed(
            &mut host,
            w::EmbedRequest {
                model: "embed".into(),
                inputs: vec!["x".into()],
            },
        )
        .await
        .unwrap();
        assert!(matches!(e, Err(w::ModelError::InvalidRequest(_))));
        // Refused calls take no journal positions.
        assert_eq!(host.next_seq, 3);
    }

    #[tokio::test]
    async fn a_batch_over_either_cap_is_refused_before_any_call() {
        let mut host = testing::state_with(crate::limits::JobLimits {
            max_chat_batch: 4,
            max_model_calls: 6,
            ..Default::default()
        });
        let batch = |n| (0..n).map(|_| request("fast", "hi")).collect::<Vec<_>>();
        let r = w::Host::chat_batch(&mut host, batch(5)).await.unwrap();
        assert_eq!(r.len(), 5);
        assert!(r.iter().all(
            |r| matches!(r, Err(w::ModelError::InvalidRequest(m)) if m.contains("max_chat_batch"))
        ));
        assert_eq!((host.model_calls, host.next_seq), (0, 0));
        assert!(
            w::Host::chat_batch(&mut host, batch(4))
                .await
                .unwrap()
                .iter()
                .all(|r| r.is_ok())
        );
        // 4 made, 6 allowed: a batch of 3 does not fit and none of it runs.
        let r = w::Host::chat_batch(&mut host, batch(3)).await.unwrap();
        assert!(r.iter().all(
            |r| matches!(r, Err(w::ModelError::InvalidRequest(m)) if m.contains("max_model_calls"))
        ));
        assert_eq!((host.model_calls, host.next_seq), (4, 4));
        let spend = host.services.usage.job_spend(&host.ctx).await;
        assert_eq!(spend.calls, 4, "refused calls never reach the provider");
    }

    #[tokio::test]
    async fn cancelled_job_traps_at_the_next_call() {
        let mut host = testing::state();
        host.ctx
            .cancelled
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let err = w::Host::chat(&mut host, request("fast", "hi"))
            .await
            .unwrap_err();
        assert!(err.downcast_ref::<crate::host::CancelledTrap>().is_some());
    }
}
