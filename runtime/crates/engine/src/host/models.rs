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
        self.next_seq += n;
        first
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
