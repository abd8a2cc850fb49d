// Module resolution for `@sluice/sdk/testing` under Node (registered by ../testing.js):
// `@sluice/sdk` is this SDK, and the `sluice:plugin` interfaces a handler imports through it
// are ./wit.js, which serves them from the installed FakeHost. Inside a component the bundler
// and componentize-js resolve the same names; Node alone could not.

const SDK = new URL('../sluice.js', import.meta.url).href;
const WIT = new URL('./wit.js', import.meta.url).href;
const INTERFACE = /^sluice:plugin\/(models|state|effects|events|usage)@0\.1\.0$/;

export async function resolve(specifier, context, next) {
  if (specifier === '@sluice/sdk') return { url: SDK, shortCircuit: true };
  if (INTERFACE.test(specifier)) return { url: WIT, shortCircuit: true };
  return next(specifier, context);
}
