// A SIP-over-WebSocket phone for the csps tests (RFC 7118): JsSIP's user agent, the stack of
// many browser softphones, over the `ws` package (node 20 has no WebSocket of its own).
// It registers (digest), reports what happens as one JSON object per line on stdout, refuses
// incoming calls with a status after it rang (JsSIP answers calls only with WebRTC media, which
// node lacks), and unregisters before it exits.
//
//   node phone.mjs --url ws://127.0.0.1:8080 --user bob --password secret --domain csps.local
//                  [--ca cert.pem --servername localhost] [--refuse 486] [--seconds 30]
//
// Lines: {"event":"registered"}, {"event":"registration_failed","cause"},
// {"event":"incoming","from","to"}, {"event":"refused","status"}, {"event":"unregistered"},
// {"event":"disconnected"}. It exits after --seconds, or at once on a failed registration.

import fs from 'node:fs';
import { parseArgs } from 'node:util';
import WS from 'ws';
import JsSIP from 'jssip';

const { values: args } = parseArgs({
  options: {
    url: { type: 'string' },
    user: { type: 'string' },
    password: { type: 'string' },
    domain: { type: 'string' },
    ca: { type: 'string' },
    servername: { type: 'string' },
    refuse: { type: 'string', default: '486' },
    seconds: { type: 'string', default: '30' },
  },
});
for (const k of ['url', 'user', 'password', 'domain']) {
  if (!args[k]) {
    console.error(`--${k} is required`);
    process.exit(2);
  }
}

const say = (o) => console.log(JSON.stringify(o));
const ca = args.ca ? fs.readFileSync(args.ca) : undefined;

// JsSIP opens `new WebSocket(url, 'sip')`: the `ws` package, with the gateway's certificate
// trusted for wss (checked against --servername when the URL names an address).
const tls = ca ? { ca, ...(args.servername ? { servername: args.servername } : {}) } : {};
globalThis.WebSocket = class extends WS {
  constructor(url, protocols) {
    super(url, protocols, tls);
  }
};

// JsSIP takes INVITEs only where `window.RTCPeerConnection` exists (else it answers 488 by
// itself). This phone never answers, so a peer connection is never made: one that throws says so.
globalThis.window = globalThis;
globalThis.RTCPeerConnection = class {
  constructor() {
    throw new Error('this test phone has no media: it refuses calls');
  }
};

const ua = new JsSIP.UA({
  sockets: [new JsSIP.WebSocketInterface(args.url)],
  uri: `sip:${args.user}@${args.domain}`,
  password: args.password,
  register: true,
  register_expires: 300,
  session_timers: false,
  connection_recovery_min_interval: 30,
  connection_recovery_max_interval: 30,
});

ua.on('registered', () => say({ event: 'registered' }));
ua.on('unregistered', () => say({ event: 'unregistered' }));
ua.on('disconnected', () => say({ event: 'disconnected' }));
ua.on('registrationFailed', (e) => {
  say({ event: 'registration_failed', cause: e.cause, status: e.response?.status_code ?? null });
  ua.stop();
  setTimeout(() => process.exit(1), 500);
});
ua.on('newRTCSession', ({ originator, session, request }) => {
  if (originator !== 'remote') return;
  say({ event: 'incoming', from: request.from.uri.toString(), to: request.to.uri.toString() });
  const status = Number(args.refuse);
  // Let the 180 reach the caller first.
  setTimeout(() => {
    session.terminate({ status_code: status });
    say({ event: 'refused', status });
  }, 300);
});

ua.start();

setTimeout(() => {
  ua.unregister();
  ua.once('unregistered', () => {
    ua.stop();
    setTimeout(() => process.exit(0), 300);
  });
  // Gone regardless after 5 s more.
  setTimeout(() => process.exit(0), 5000);
}, Number(args.seconds) * 1000);
