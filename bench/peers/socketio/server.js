// The Socket.IO peer for scripts/bench.sh: Switchboard's ops as Socket.IO events,
// over @socket.io/redis-adapter so that two nodes share rooms through Redis.
//
//   42["subscribe", room]           -> socket.join(room), emit "subscribed" room
//   42["publish", room, {type,data}] -> io.to(room).emit("event", {room, event}),
//                                       emit "published" room
//   POST /publish/:room {type,data}  -> the same, answered {"ok":true}
//
// Env: PORT (0 picks a free one), REDIS_URL. Prints the same ready line as Switchboard.
"use strict";

const http = require("http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

const serverId = `socketio_${process.pid}`;

function envelope(room, event) {
  return {
    room,
    event: { type: event.type, data: event.data, serverId, timestamp: Date.now() },
  };
}

async function main() {
  const pubClient = createClient({ url: process.env.REDIS_URL });
  const subClient = pubClient.duplicate();
  await Promise.all([pubClient.connect(), subClient.connect()]);

  const httpServer = http.createServer((req, res) => {
    const match = /^\/publish\/([A-Za-z0-9_:.-]{1,200})$/.exec(req.url || "");
    if (req.method !== "POST" || !match) {
      res.writeHead(404).end();
      return;
    }
    let body = "";
    req.on("data", (chunk) => (body += chunk));
    req.on("end", () => {
      try {
        io.to(match[1]).emit("event", envelope(match[1], JSON.parse(body)));
        res.writeHead(200, { "content-type": "application/json" }).end('{"ok":true}');
      } catch (e) {
        res.writeHead(400).end('{"ok":false}');
      }
    });
  });
  const io = new Server(httpServer, {
    adapter: createAdapter(pubClient, subClient),
    transports: ["websocket"],
    serveClient: false,
  });

  io.on("connection", (socket) => {
    socket.on("subscribe", (room) => {
      socket.join(room);
      socket.emit("subscribed", room);
    });
    socket.on("publish", (room, event) => {
      io.to(room).emit("event", envelope(room, event));
      socket.emit("published", room);
    });
  });

  httpServer.listen(Number(process.env.PORT || 0), "127.0.0.1", () => {
    console.log(`switchboard listening on http://127.0.0.1:${httpServer.address().port}`);
  });
  const stop = () => {
    io.close();
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
