// A real MQTT 5 client (mqtt.js) doing SCRAM-SHA-256 enhanced authentication, as an
// application would: node scram_client.cjs PORT|URL USER PASSWORD CLIENT_ID (a URL such as
// ws://127.0.0.1:PORT/mqtt for a browser's transport)
// Prints one JSON line: {"connected":true,"server_verified":bool} or {"connected":false,"code":N}.
const path = require('path');
const crypto = require('crypto');
const mqtt = require(path.join(__dirname, '../../examples/web/node_modules/mqtt'));

const [port, user, password, clientId] = process.argv.slice(2);
const method = 'SCRAM-SHA-256';
const clientNonce = crypto.randomBytes(18).toString('base64');
const clientFirstBare = `n=${user.replace(/=/g, '=3D').replace(/,/g, '=2C')},r=${clientNonce}`;
const hmac = (key, data) => crypto.createHmac('sha256', key).update(data).digest();
let expectedServerSignature = null;

function done(result) {
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exit(0);
}

const url = /^\d+$/.test(port) ? `mqtt://127.0.0.1:${port}` : port;
const client = mqtt.connect(url, {
  protocolVersion: 5,
  clientId,
  reconnectPeriod: 0,
  connectTimeout: 10000,
  properties: {
    authenticationMethod: method,
    authenticationData: Buffer.from(`n,,${clientFirstBare}`),
  },
});

client.handleAuth = (packet, callback) => {
  const serverFirst = packet.properties.authenticationData.toString();
  const attrs = Object.fromEntries(serverFirst.split(',').map((kv) => [kv[0], kv.slice(2)]));
  if (!attrs.r.startsWith(clientNonce)) {
    return callback(new Error('server nonce does not extend ours'));
  }
  const salted = crypto.pbkdf2Sync(password, Buffer.from(attrs.s, 'base64'), Number(attrs.i), 32, 'sha256');
  const clientKey = hmac(salted, 'Client Key');
  const storedKey = crypto.createHash('sha256').update(clientKey).digest();
  const withoutProof = `c=biws,r=${attrs.r}`;
  const authMessage = `${clientFirstBare},${serverFirst},${withoutProof}`;
  const signature = hmac(storedKey, authMessage);
  const proof = Buffer.from(clientKey.map((b, i) => b ^ signature[i]));
  expectedServerSignature = hmac(hmac(salted, 'Server Key'), authMessage).toString('base64');
  callback(null, {
    cmd: 'auth',
    reasonCode: 0x18,
    properties: {
      authenticationMethod: method,
      authenticationData: Buffer.from(`${withoutProof},p=${proof.toString('base64')}`),
    },
  });
};

client.on('connect', (connack) => {
  const data = connack.properties && connack.properties.authenticationData;
  const verified = !!data && data.toString() === `v=${expectedServerSignature}`;
  client.end(true, () => done({ connected: true, server_verified: verified }));
});
client.on('error', (err) => done({ connected: false, code: err.code === undefined ? null : err.code, message: String(err.message) }));
setTimeout(() => done({ connected: false, code: null, message: 'timeout' }), 15000);
