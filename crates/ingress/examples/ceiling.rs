//! The no-storage ceiling of the ingress: the same router and handler as `verdict serve`
//! (signature verification, envelope parsing, the JSON answer), with an appender that stores
//! nothing. Used by the load benchmark to show what durability costs (docs/benchmarks.md).
//!
//! `cargo run --release -p verdict-ingress --example ceiling -- 127.0.0.1:0 SECRET`

use axum::serve::ListenerExt as _;
use verdict_ingress::signature::{Scheme, Verifier};
use verdict_ingress::{Ingress, NullAppender, Source};

// The allocator `verdict serve` runs with (crates/verdict/src/main.rs), so that the ceiling
// differs from the durable server by the storage only.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let secret = args.next().ok_or("usage: ceiling LISTEN SECRET")?;
    let verifier = Verifier::new(Scheme::Seon, Some("X-Seon-Signature"), &[secret], 300)?;
    let ingress = Ingress::new(
        vec![Source::new("seon-idv", verifier)],
        1 << 20,
        NullAppender::default(),
    );
    let app: axum::Router = verdict_ingress::router(ingress);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("ceiling listening on http://{}", listener.local_addr()?);
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await?;
    Ok(())
}
