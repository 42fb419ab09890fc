//! `switchboard-bare-ws`: the floor for scenario 3. A bare actix-web-actors
//! WebSocket session that answers `subscribe` with `subscribed` and holds nothing
//! else, so `RSS per connection` here is what actix-web and actix-http cost before
//! Switchboard adds anything. Prints the same ready line as the server.

use actix::{Actor, StreamHandler};
use actix_web::{web, App, Error, HttpRequest, HttpResponse, HttpServer};
use actix_web_actors::ws;
use serde::Deserialize;

/// A session that keeps no state.
struct Bare;

impl Actor for Bare {
    type Context = ws::WebsocketContext<Self>;
}

/// The one client frame it understands.
#[derive(Deserialize)]
struct SubscribeFrame {
    room: String,
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for Bare {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        match msg {
            Ok(ws::Message::Text(text)) => {
                if let Ok(frame) = serde_json::from_str::<SubscribeFrame>(&text) {
                    let reply = serde_json::json!({"op": "subscribed", "room": frame.room});
                    ctx.text(reply.to_string());
                }
            }
            Ok(ws::Message::Ping(bytes)) => ctx.pong(&bytes),
            Ok(ws::Message::Close(reason)) => ctx.close(reason),
            _ => {}
        }
    }
}

async fn upgrade(req: HttpRequest, stream: web::Payload) -> Result<HttpResponse, Error> {
    ws::start(Bare, &req, stream)
}

fn main() -> std::io::Result<()> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    actix_web::rt::System::new().block_on(async move {
        let server = HttpServer::new(|| App::new().route("/ws", web::get().to(upgrade)))
            .backlog(4096)
            .bind(("127.0.0.1", port))?;
        let address = server.addrs()[0];
        #[allow(clippy::print_stdout)]
        {
            println!("switchboard listening on http://{address}");
        }
        server.run().await
    })
}
