// {{name}}: a Sluice job handler. Input {"text": "..."}; output a one-sentence summary, the
// model that wrote it and what it cost.

import { handler, models, events, SluiceError } from '@sluice/sdk';

export const handle = handler((job, input) => {
  const text = input?.text;
  if (typeof text !== 'string' || !text.trim()) {
    // Retrying will not help: the job fails at once.
    throw SluiceError.permanent('`text` is empty');
  }
  events.progress('asking the fast model', 0.5);
  // A rate limit or an outage throws a retryable ModelError, a refused budget a permanent
  // one: left uncaught, it fails the job with its class.
  const reply = models.chat('fast')
    .system("Summarize the user's text in one sentence.")
    .user(text)
    .maxTokens(80)
    .send();
  events.info(`job ${job.id} summarized by ${reply.model}`);
  return { summary: reply.content.trim(), model: reply.model, cost_micros: reply.costMicros };
});
