"""{{name}}: a Sluice job handler. Input {"text": "..."}; output a one-sentence summary, the
model that wrote it and what it cost."""

import sluice_sdk as sluice
from sluice_sdk import events, models


@sluice.handler
def handle(job: sluice.Job, input):
    text = (input or {}).get("text", "")
    if not isinstance(text, str) or not text.strip():
        # Retrying will not help: the job fails at once.
        raise sluice.Error.permanent("`text` is empty")
    events.progress("asking the fast model", 0.5)
    # A rate limit or an outage raises a retryable ModelError, a refused budget a permanent
    # one: left uncaught, it fails the job with its class.
    reply = (models.chat("fast")
             .system("Summarize the user's text in one sentence.")
             .user(text)
             .max_tokens(80)
             .send())
    events.info(f"job {job.id} summarized by {reply.model}")
    return {"summary": reply.content.strip(), "model": reply.model,
            "cost_micros": reply.cost_micros}
