//! The console and the browser client (PROTOCOL.md §10), shipped inside the binary:
//! `GET /` (the page), `GET /console.js` (the page's script) and `GET /switchboard.js`
//! (the client the page uses, and that applications may load too).
//!
//! The files are in `src/console/` and compiled in with `include_str!`: no CDN, no
//! build step, nothing to install next to the binary. `CONSOLE=off` leaves these routes
//! out (404), for an application that mounts Switchboard next to its own `/`.

use actix_web::{http::header, web, HttpResponse};

/// The page: markup and style.
const PAGE: &str = include_str!("console/index.html");
/// The page's script: the forms, the event log, the polling of `/health` and `/stats`.
const PAGE_SCRIPT: &str = include_str!("console/console.js");
/// The browser client, `window.Switchboard`.
const CLIENT: &str = include_str!("console/switchboard.js");

/// Where the page may load from and connect to: this server only. Scripts come from
/// files (no inline script can run); the page's own `<style>` is inline.
const PAGE_POLICY: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; \
    frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// Mounts `/`, `/console.js` and `/switchboard.js`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(page))
        .route("/console.js", web::get().to(page_script))
        .route("/switchboard.js", web::get().to(client));
}

async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_SECURITY_POLICY, PAGE_POLICY))
        .insert_header(("referrer-policy", "no-referrer"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .content_type("text/html; charset=utf-8")
        .body(PAGE)
}

async fn page_script() -> HttpResponse {
    script(PAGE_SCRIPT)
}

async fn client() -> HttpResponse {
    script(CLIENT)
}

/// A script, revalidated on every load so a new binary's files are used at once.
fn script(body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .content_type("text/javascript; charset=utf-8")
        .body(body)
}
