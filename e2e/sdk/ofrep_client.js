// Evaluates flags through the OpenFeature JavaScript server SDK and its OFREP provider, as an
// app would.
//
//   NODE_PATH=<prefix>/node_modules node ofrep_client.js BASE_URL < evaluations.json
//
// stdin: a JSON list of {key, type (boolean|string|number|object), default, context}.
// stdout: one JSON object per evaluation: key, value, reason, variant, errorCode.
const { OpenFeature } = require('@openfeature/server-sdk');
const { OFREPProvider } = require('@openfeature/ofrep-provider');

async function main() {
  const evaluations = JSON.parse(require('fs').readFileSync(0, 'utf8'));
  await OpenFeature.setProviderAndWait(new OFREPProvider({ baseUrl: process.argv[2] }));
  const client = OpenFeature.getClient();
  const byType = {
    boolean: client.getBooleanDetails,
    string: client.getStringDetails,
    number: client.getNumberDetails,
    object: client.getObjectDetails,
  };
  for (const e of evaluations) {
    const d = await byType[e.type].call(client, e.key, e.default, e.context || {});
    console.log(JSON.stringify({
      key: e.key,
      value: d.value,
      reason: d.reason,
      variant: d.variant ?? null,
      errorCode: d.errorCode ?? null,
    }));
  }
  await OpenFeature.close();
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
