import { execSync } from 'node:child_process';
const A = 28091, B = 28093, room = 'd:ahead';
const open = async (port) => { const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`); const q = []; ws.onmessage = m => q.push(JSON.parse(m.data)); await new Promise(r => ws.onopen = r); return {ws, q}; };
const pub = async (port, n) => (await fetch(`http://127.0.0.1:${port}/publish/${room}`, {method:'POST', headers:{'content-type':'application/json'}, body: JSON.stringify({type:'n', data:n})})).json();
const b1 = await open(B); b1.ws.send(JSON.stringify({op:'subscribe', room}));   // B holds the room
await new Promise(r => setTimeout(r, 300));
let p; for (let i = 1; i <= 3; i++) p = await pub(A, i);
await new Promise(r => setTimeout(r, 200));
execSync(`redis-cli -p 26391 CLIENT KILL TYPE pubsub`);
await new Promise(r => setTimeout(r, 100));
for (let i = 4; i <= 6; i++) p = await pub(A, i);
console.log('latest published via A', p);
// A client that got everything up to p (on A) moves to B.
const c = await open(B);
c.ws.send(JSON.stringify({op:'subscribe', room, since:{offset:p.offset, epoch:p.epoch}}));
await new Promise(r => setTimeout(r, 500));
console.log('client on B:', JSON.stringify(c.q));
await new Promise(r => setTimeout(r, 4000));
console.log('b1 got:', b1.q.map(f => f.op === 'event' ? f.event.offset : f.op).join(','));
process.exit(0);
