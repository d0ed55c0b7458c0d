#!/usr/bin/env node
// memoryd from Node.js: WhoAmI, then CreateMemory and SearchMemories, printed
// as one JSON object on stdout.
//
//   npm ci
//   MEMORYD_API_KEY=ms_live_... node client.js [content] [query]
//
// Environment:
//   MEMORYD_API_KEY       the API key (required)
//   MEMORYD_ADDRESS       host:port of memoryd (default localhost:50051)
//   MEMORYD_END_USER_ID   act for one end user of the tenant (optional)
//   MEMORYD_TLS_CA        PEM file of the CA: use TLS (the key then travels as
//                         call credentials, only over the secure channel)
//   MEMORYD_PROTOS        directory holding memoryd/v1/*.proto
//                         (default: the repository's protos/)
//
// The protos are loaded at run time with @grpc/proto-loader; the googleapis
// protos memory.proto imports (google/rpc/status.proto, and
// google/longrunning/operations.proto with its google/api imports) are vendored
// under ./protos, and the google/protobuf well-known types come with proto-loader.
// On failure it prints {"error": {code, details, metadata}} and exits 1.

'use strict';

const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const protosDir = process.env.MEMORYD_PROTOS || path.join(__dirname, '..', '..', 'protos');
const address = process.env.MEMORYD_ADDRESS || 'localhost:50051';
const apiKey = process.env.MEMORYD_API_KEY || '';
const endUser = process.env.MEMORYD_END_USER_ID || '';

function loadServices() {
  const files = ['memory.proto', 'keys.proto'].map((f) => path.join(protosDir, 'memoryd', 'v1', f));
  const definition = protoLoader.loadSync(files, {
    keepCase: true, // field names as in the .proto (snake_case)
    longs: String, // int64 as strings, as in proto3 JSON
    enums: String,
    defaults: true,
    oneofs: true,
    includeDirs: [protosDir, path.join(__dirname, 'protos')],
  });
  return grpc.loadPackageDefinition(definition).memoryd.v1;
}

// gRPC retries (gRFC A6, supported by grpc-js): RESOURCE_EXHAUSTED is retried
// after the server's grpc-retry-pushback-ms; UNAVAILABLE only for reads.
const serviceConfig = {
  methodConfig: [
    {
      name: [{ service: 'memoryd.v1.MemoryService' }, { service: 'memoryd.v1.KeyService' }],
      retryPolicy: {
        maxAttempts: 4,
        initialBackoff: '0.2s',
        maxBackoff: '5s',
        backoffMultiplier: 2,
        retryableStatusCodes: ['RESOURCE_EXHAUSTED'],
      },
    },
    {
      name: [
        { service: 'memoryd.v1.MemoryService', method: 'SearchMemories' },
        { service: 'memoryd.v1.KeyService', method: 'WhoAmI' },
      ],
      retryPolicy: {
        maxAttempts: 4,
        initialBackoff: '0.2s',
        maxBackoff: '5s',
        backoffMultiplier: 2,
        retryableStatusCodes: ['RESOURCE_EXHAUSTED', 'UNAVAILABLE'],
      },
    },
  ],
};

function authMetadata() {
  const md = new grpc.Metadata();
  md.set('x-api-key', apiKey);
  if (endUser) md.set('x-end-user-id', endUser);
  return md;
}

// TLS: the key as call credentials (grpc-js sends them only on secure
// channels). Plaintext: the same headers on each call.
function connect(v1) {
  const options = { 'grpc.service_config': JSON.stringify(serviceConfig) };
  let creds;
  let perCall;
  if (process.env.MEMORYD_TLS_CA) {
    const callCreds = grpc.credentials.createFromMetadataGenerator((_params, cb) => cb(null, authMetadata()));
    creds = grpc.credentials.combineChannelCredentials(
      grpc.credentials.createSsl(fs.readFileSync(process.env.MEMORYD_TLS_CA)),
      callCreds,
    );
    perCall = () => new grpc.Metadata();
  } else {
    creds = grpc.credentials.createInsecure();
    perCall = authMetadata;
  }
  return {
    keys: new v1.KeyService(address, creds, options),
    memory: new v1.MemoryService(address, creds, options),
    metadata: perCall,
  };
}

// A unary call as a promise of {response, trailers}; memoryd puts
// x-request-id and x-ratelimit-* in the trailing metadata.
function unary(client, method, request, metadata) {
  return new Promise((resolve, reject) => {
    let response;
    let failed = false;
    const deadline = new Date(Date.now() + 10_000);
    const call = client[method](request, metadata, { deadline }, (err, res) => {
      if (err) {
        failed = true;
        reject(err);
      } else {
        response = res;
      }
    });
    call.on('status', (status) => {
      if (!failed) resolve({ response, trailers: status.metadata.getMap() });
    });
  });
}

// google.protobuf.Struct <-> plain objects (proto-loader gives the raw form).
function toValue(v) {
  if (v === null) return { nullValue: 'NULL_VALUE' };
  if (typeof v === 'number') return { numberValue: v };
  if (typeof v === 'string') return { stringValue: v };
  if (typeof v === 'boolean') return { boolValue: v };
  if (Array.isArray(v)) return { listValue: { values: v.map(toValue) } };
  return { structValue: toStruct(v) };
}
function toStruct(obj) {
  return { fields: Object.fromEntries(Object.entries(obj).map(([k, v]) => [k, toValue(v)])) };
}
function fromValue(v) {
  switch (v.kind) {
    case 'numberValue':
    case 'stringValue':
    case 'boolValue':
      return v[v.kind];
    case 'listValue':
      return (v.listValue.values || []).map(fromValue);
    case 'structValue':
      return fromStruct(v.structValue);
    default:
      return null;
  }
}
function fromStruct(s) {
  return Object.fromEntries(Object.entries((s && s.fields) || {}).map(([k, v]) => [k, fromValue(v)]));
}

async function main() {
  if (!apiKey) throw new Error('set MEMORYD_API_KEY');
  const content = process.argv[2] || 'Ana prefers green tea over coffee';
  const query = process.argv[3] || 'what does Ana like to drink';
  const client = connect(loadServices());

  const me = await unary(client.keys, 'WhoAmI', {}, client.metadata());
  const created = await unary(
    client.memory,
    'CreateMemory',
    { memory: { content, tags: ['drinks'], source: 'node-example', metadata: toStruct({ lang: 'en' }) } },
    client.metadata(),
  );
  const found = await unary(client.memory, 'SearchMemories', { query, top_k: 3 }, client.metadata());

  const memory = created.response.memory;
  console.log(
    JSON.stringify(
      {
        whoami: {
          key_id: me.response.key_id,
          organization_id: me.response.organization_id,
          project_id: me.response.project_id,
          environment_id: me.response.environment_id,
          environment_kind: me.response.environment_kind,
          scopes: me.response.scopes,
          end_user_id: me.response.end_user_id,
        },
        created: {
          id: memory.id,
          content: memory.content,
          tags: memory.tags,
          metadata: fromStruct(memory.metadata),
          end_user_id: memory.end_user_id,
          revision: memory.revision,
        },
        results: found.response.results.map((r) => ({
          id: r.memory.id,
          score: r.score,
          content: r.memory.content,
        })),
        trailers: found.trailers,
      },
      null,
      2,
    ),
  );
  client.keys.close();
  client.memory.close();
}

main().catch((err) => {
  const out = { message: err.message };
  if (err.code !== undefined) {
    out.code = grpc.status[err.code];
    out.details = err.details;
    // Text trailers only (x-request-id, x-ratelimit-*, retry-after); the
    // binary grpc-status-details-bin holds the google.rpc.Status details.
    out.metadata = Object.fromEntries(
      Object.entries(err.metadata ? err.metadata.getMap() : {}).filter(([k]) => !k.endsWith('-bin')),
    );
  }
  console.log(JSON.stringify({ error: out }, null, 2));
  process.exit(1);
});
