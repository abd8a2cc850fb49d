//! Both wire formats, streaming and not, through the real clients and the simulator.

mod common;

use std::sync::Mutex;

use common::{ctx, env};
use sluice_gateway::tokens;
use sluice_gateway::{Faults, SimConfig, Wire};
use sluice_types::model::{
    ChatRequest, EmbedRequest, Message, ModelError, ResponseFormat, ResponseSource,
};

fn req(model: &str) -> ChatRequest {
    let mut r = ChatRequest::new(
        model,
        vec![
            Message::system("You write short summaries."),
            Message::user("Summarize the warehouse inventory audit findings"),
        ],
    );
    r.no_cache = true;
    r
}

async fn streamed(
    gw: &sluice_gateway::Gateway,
    r: ChatRequest,
) -> (
    Result<sluice_gateway::CallOutcome, sluice_gateway::CallError>,
    String,
) {
    let deltas = Mutex::new(String::new());
    let on_delta = |d: &str| deltas.lock().unwrap().push_str(d);
    let out = gw.chat(&ctx(), r, Some(&on_delta)).await;
    (out, deltas.into_inner().unwrap())
}

#[tokio::test]
async fn streaming_and_plain_agree_for_both_wires() {
    let e = env(
        &[
            (Wire::OpenAi, SimConfig::instant()),
            (Wire::Anthropic, SimConfig::default()),
        ],
        |_| {},
    )
    .await;
    for model in ["p0/m", "p1/m"] {
        let plain = e.gw.chat(&ctx(), req(model), None).await.unwrap();
        let (out, deltas) = streamed(&e.gw, req(model)).await;
        let out = out.unwrap();
        assert_eq!(
            out.response.content, plain.response.content,
            "{model}: deterministic"
        );
        assert_eq!(
            deltas, out.response.content,
            "{model}: deltas add up to the reply"
        );
        assert_eq!(out.response.usage, plain.response.usage, "{model}");
        assert_eq!(
            out.response.usage.output_tokens,
            tokens::text_tokens(&out.response.content)
        );
        assert_eq!(out.response.finish_reason, "stop");
        assert!(
            out.record.ttft_ms.is_some(),
            "{model}: streamed calls report ttft"
        );
        assert!(plain.record.ttft_ms.is_none());
        assert!(out.response.cost_micros > 0);
        assert_eq!(out.response.source, ResponseSource::Provider);
    }
    // OpenAI counts each message: exactly our tokenizer.
    let plain = e.gw.chat(&ctx(), req("p0/m"), None).await.unwrap();
    assert_eq!(
        plain.response.usage.input_tokens,
        tokens::messages_tokens(&req("p0/m").messages)
    );
}

#[tokio::test]
async fn max_tokens_is_honoured_exactly() {
    let e = env(
        &[
            (Wire::OpenAi, SimConfig::instant()),
            (Wire::Anthropic, SimConfig::instant()),
        ],
        |_| {},
    )
    .await;
    for model in ["p0/m", "p1/m"] {
        let mut r = req(model);
        r.max_tokens = Some(5);
        let out = e.gw.chat(&ctx(), r.clone(), None).await.unwrap();
        assert_eq!(out.response.usage.output_tokens, 5, "{model}");
        assert_eq!(out.response.finish_reason, "length", "{model}");
        let (s, _) = streamed(&e.gw, r).await;
        let s = s.unwrap();
        assert_eq!(s.response.usage.output_tokens, 5);
        assert_eq!(s.response.finish_reason, "length");
    }
}

#[tokio::test]
async fn usage_on_the_last_content_chunk_is_read() {
    let sim = SimConfig {
        faults: Faults {
            usage_in_last_content_chunk: true,
            ..Faults::default()
        },
        ..SimConfig::instant()
    };
    let e = env(&[(Wire::OpenAi, sim)], |_| {}).await;
    let (out, deltas) = streamed(&e.gw, req("p0/m")).await;
    let out = out.unwrap();
    assert_eq!(deltas, out.response.content);
    assert_eq!(
        out.response.usage.input_tokens,
        tokens::messages_tokens(&req("p0/m").messages)
    );
    assert_eq!(
        out.response.usage.output_tokens,
        tokens::text_tokens(&out.response.content)
    );
}

#[tokio::test]
async fn an_error_event_after_200_is_a_retryable_failure() {
    let sim = SimConfig {
        faults: Faults {
            stream_error_after: Some(1),
            ..Faults::default()
        },
        ..SimConfig::instant()
    };
    let e = env(
        &[(Wire::OpenAi, sim.clone()), (Wire::Anthropic, sim)],
        |_| {},
    )
    .await;
    for (model, kind) in [("p0/m", "server_error"), ("p1/m", "overloaded")] {
        let (out, deltas) = streamed(&e.gw, req(model)).await;
        let err = out.unwrap_err();
        assert!(
            matches!(err.error, ModelError::Unavailable { .. }),
            "{model}: {err}"
        );
        let kinds: Vec<_> = err
            .record
            .attempts
            .iter()
            .map(|a| a.outcome.as_str())
            .collect();
        assert_eq!(kinds, [kind, kind], "{model}: retried once");
        assert!(
            !deltas.is_empty(),
            "{model}: text before the error was streamed"
        );
    }
    // The stream recovers when the fault is cleared: the retry succeeds.
    e.sim(1).set_faults(Faults::default());
    let (out, _) = streamed(&e.gw, req("p1/m")).await;
    out.unwrap();
}

#[tokio::test]
async fn a_malformed_response_is_unavailable_not_a_panic() {
    let sim = SimConfig {
        faults: Faults {
            malformed: true,
            ..Faults::default()
        },
        ..SimConfig::instant()
    };
    let e = env(
        &[(Wire::OpenAi, sim.clone()), (Wire::Anthropic, sim)],
        |_| {},
    )
    .await;
    for model in ["p0/m", "p1/m"] {
        let err = e.gw.chat(&ctx(), req(model), None).await.unwrap_err();
        assert!(
            matches!(err.error, ModelError::Unavailable { .. }),
            "{model}: {err}"
        );
        assert_eq!(
            err.record.attempts.len(),
            1,
            "malformed bodies are not retried"
        );
        assert_eq!(err.record.attempts[0].outcome, "malformed");
        let (out, _) = streamed(&e.gw, req(model)).await;
        assert!(matches!(
            out.unwrap_err().error,
            ModelError::Unavailable { .. }
        ));
    }
}

#[tokio::test]
async fn anthropic_overload_529_fails_over() {
    let sim = SimConfig {
        faults: Faults {
            overload_rate: 1.0,
            ..Faults::default()
        },
        ..SimConfig::instant()
    };
    let e = env(
        &[(Wire::Anthropic, sim), (Wire::OpenAi, SimConfig::instant())],
        |_| {},
    )
    .await;
    let out = e.gw.chat(&ctx(), req("chain"), None).await.unwrap();
    assert_eq!(out.response.provider, "p1");
    assert_eq!(out.record.attempts[0].status, Some(529));
    assert_eq!(out.record.attempts[0].outcome, "overloaded");
}

#[tokio::test]
async fn json_mode_classifies_among_offered_labels_on_both_wires() {
    let e = env(
        &[
            (Wire::OpenAi, SimConfig::instant()),
            (Wire::Anthropic, SimConfig::instant()),
        ],
        |_| {},
    )
    .await;
    for model in ["p0/m", "p1/m"] {
        let mut r = ChatRequest::new(
            model,
            vec![
                Message::system("Classify the sentiment as one of: positive, negative, neutral."),
                Message::user("The delivery was late and the box was crushed."),
            ],
        );
        r.response_format = ResponseFormat::Json;
        for stream in [false, true] {
            let content = if stream {
                streamed(&e.gw, r.clone()).await.0.unwrap().response.content
            } else {
                e.gw.chat(&ctx(), r.clone(), None)
                    .await
                    .unwrap()
                    .response
                    .content
            };
            let v: serde_json::Value = serde_json::from_str(&content)
                .unwrap_or_else(|err| panic!("{model}: not JSON: {content:?}: {err}"));
            let label = v["label"].as_str().unwrap();
            assert!(
                ["positive", "negative", "neutral"].contains(&label),
                "{model}: {label}"
            );
            let c = v["confidence"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&c));
        }
    }
}

#[tokio::test]
async fn cached_prompt_tokens_are_counted_inclusively_on_both_wires() {
    let sim = SimConfig {
        cached_input_fraction: 0.5,
        ..SimConfig::instant()
    };
    let e = env(
        &[(Wire::OpenAi, sim.clone()), (Wire::Anthropic, sim)],
        |_| {},
    )
    .await;
    for model in ["p0/m", "p1/m"] {
        let u = e.gw.chat(&ctx(), req(model), None).await.unwrap();
        let usage = u.response.usage;
        assert_eq!(
            usage.cached_input_tokens,
            usage.input_tokens / 2,
            "{model}: {usage:?}"
        );
        // $1/Mtok fresh, $0.5/Mtok cached, $2/Mtok out, rounded up to a micro-dollar.
        let fresh = u64::from(usage.input_tokens - usage.cached_input_tokens);
        let expect = (fresh * 1_000_000
            + u64::from(usage.cached_input_tokens) * 500_000
            + u64::from(usage.output_tokens) * 2_000_000)
            .div_ceil(1_000_000);
        assert_eq!(u.response.cost_micros, expect, "{model}");
    }
}

#[tokio::test]
async fn embeddings_are_deterministic_priced_and_cached() {
    let e = env(&[(Wire::OpenAi, SimConfig::instant())], |c| {
        c.aliases.insert("embed".into(), vec!["p0/e".into()]);
    })
    .await;
    let r = EmbedRequest {
        model: "embed".into(),
        inputs: vec!["red apples".into(), "green apples".into()],
    };
    let a = e.gw.embed(&ctx(), r.clone()).await.unwrap();
    assert_eq!(a.response.vectors.len(), 2);
    assert_eq!(a.response.vectors[0].len(), 256);
    assert_eq!(a.response.usage.input_tokens, 3 + 3);
    assert_eq!(
        a.response.cost_micros, 1,
        "6 tokens at $0.1/Mtok rounds up to 1 µ$"
    );
    let b = e.gw.embed(&ctx(), r).await.unwrap();
    assert_eq!(b.response.source, ResponseSource::Cache);
    assert_eq!(b.response.vectors, a.response.vectors);
    assert_eq!(e.sim(0).stats().embed_requests, 1);
    let err =
        e.gw.embed(
            &ctx(),
            EmbedRequest {
                model: "chain".into(),
                inputs: vec!["x".into()],
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err.error, ModelError::InvalidRequest { .. }));
}
